// Quad decoders of the quantized weight formats for qmatvec.wgsl: each
// `dq_<type>(n, t)` returns values 4t..4t+3 of weight row n as f32, with
// ggml's arithmetic (the same as qmatmul_decode.wgsl's chunk decoders,
// whose helpers `word`, `half_at`, `pair_at`, `bytes4`, `byte_at`,
// `high_bits`, `ibytes4` and `scale_min_k4` these use). Legacy blocks hold
// 8 quads, K-quant blocks 64 (8 sub-blocks j of 8 quads q).
//
// Each "@decoder <dtype>" line starts one decoder; a kernel includes one,
// after the helper below.

// The 4-bit parts of quad q of legacy block b (Q4_0, Q4_1, Q5_0, Q5_1):
// quad q < 4 is the low nibbles of word q, q >= 4 the high nibbles of
// word q - 4 (values 16 + 4 (q - 4) = 4q on).
fn nibbles4(b: u32, q: u32) -> vec4<u32> {
    return (bytes4(word(4u * b + (q & 3u))) >> vec4<u32>((q >> 2u) << 2u)) & vec4<u32>(15u);
}

// @decoder q4_0
fn dq_q4_0(n: u32, t: u32) -> vec4<f32> {
    let b = n * p.blocks + (t >> 3u);
    let q = t & 7u;
    let v = nibbles4(b, q);
    return (vec4<f32>(v) - 8.0) * half_at(p.s1, b);
}

// @decoder q4_1
fn dq_q4_1(n: u32, t: u32) -> vec4<f32> {
    let b = n * p.blocks + (t >> 3u);
    let q = t & 7u;
    let v = nibbles4(b, q);
    let dm = pair_at(p.s1, b);
    return vec4<f32>(v) * dm.x + dm.y;
}

// @decoder q5_0
// The fifth bits of values 4q.. are bits 4q.. of qh.
fn dq_q5_0(n: u32, t: u32) -> vec4<f32> {
    let b = n * p.blocks + (t >> 3u);
    let q = t & 7u;
    let lo = nibbles4(b, q);
    let v = lo | high_bits(word(p.s1 + b), 4u * q);
    return (vec4<f32>(v) - 16.0) * half_at(p.s2, b);
}

// @decoder q5_1
fn dq_q5_1(n: u32, t: u32) -> vec4<f32> {
    let b = n * p.blocks + (t >> 3u);
    let q = t & 7u;
    let lo = nibbles4(b, q);
    let v = lo | high_bits(word(p.s1 + b), 4u * q);
    let dm = pair_at(p.s2, b);
    return vec4<f32>(v) * dm.x + dm.y;
}

// @decoder q8_0
fn dq_q8_0(n: u32, t: u32) -> vec4<f32> {
    let b = n * p.blocks + (t >> 3u);
    return ibytes4(word(8u * b + (t & 7u))) * half_at(p.s1, b);
}

// @decoder q4_k
// Sub-block j: low (j even) or high nibbles of qs[32 (j / 2) ..];
// y = (d * sc) * q - dmin * m.
fn dq_q4_k(n: u32, t: u32) -> vec4<f32> {
    let b = n * p.blocks + (t >> 6u);
    let j = (t >> 3u) & 7u;
    let dm = pair_at(p.s2, b);
    let sm = scale_min_k4(p.s1 + 3u * b, j);
    let qs = word(32u * b + 8u * (j >> 1u) + (t & 7u));
    let v = (bytes4(qs) >> vec4<u32>((j & 1u) << 2u)) & vec4<u32>(15u);
    return vec4<f32>(v) * (dm.x * sm.x) - dm.y * sm.y;
}

// @decoder q5_k
// Q4_K plus bit j of qh[l] as the fifth bit of value l of the sub-block.
fn dq_q5_k(n: u32, t: u32) -> vec4<f32> {
    let b = n * p.blocks + (t >> 6u);
    let j = (t >> 3u) & 7u;
    let q = t & 7u;
    let dm = pair_at(p.s3, b);
    let sm = scale_min_k4(p.s2 + 3u * b, j);
    let lo = (bytes4(word(32u * b + 8u * (j >> 1u) + q)) >> vec4<u32>((j & 1u) << 2u)) & vec4<u32>(15u);
    let hb = ((bytes4(word(p.s1 + 8u * b + q)) >> vec4<u32>(j)) & vec4<u32>(1u)) << vec4<u32>(4u);
    return vec4<f32>(lo | hb) * (dm.x * sm.x) - dm.y * sm.y;
}

// @decoder q6_k
// Sub-block j is quarter k = j & 3 of half hf = j >> 2: low (k < 2) or
// high nibbles of ql[64 hf + 32 (k & 1) ..], bits 2k.. of qh[32 hf ..];
// quads 0..3 take scale 2j, quads 4..7 scale 2j + 1; y = (d * sc) * (q - 32).
fn dq_q6_k(n: u32, t: u32) -> vec4<f32> {
    let b = n * p.blocks + (t >> 6u);
    let j = (t >> 3u) & 7u;
    let q = t & 7u;
    let hf = j >> 2u;
    let k = j & 3u;
    let ql = word(32u * b + 16u * hf + 8u * (k & 1u) + q);
    let qh = word(p.s1 + 16u * b + 8u * hf + q);
    let lo = (bytes4(ql) >> vec4<u32>((k >> 1u) << 2u)) & vec4<u32>(15u);
    let hi = ((bytes4(qh) >> vec4<u32>(2u * k)) & vec4<u32>(3u)) << vec4<u32>(4u);
    let sc = f32(extractBits(bitcast<i32>(byte_at(p.s2 + 4u * b, 2u * j + (q >> 2u))), 0u, 8u));
    return (vec4<f32>(lo | hi) - 32.0) * (half_at(p.s3, b) * sc);
}

// @decoder f16
fn dq_f16(n: u32, t: u32) -> vec4<f32> {
    let i = n * (p.k >> 1u) + 2u * t;
    return vec4<f32>(unpack2x16float(word(i)), unpack2x16float(word(i + 1u)));
}

// @decoder f32
fn dq_f32(n: u32, t: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(w[n * p.quads + t]);
}
