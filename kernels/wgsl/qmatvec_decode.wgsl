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

// Octet decoders: where two quads of a row share their weight words (the
// low and high nibbles of one word, or Q6_K's ql/qh), `dq8_<type>(n, o)`
// decodes octet o of row n, both quads at once, and `oq_<type>(o)` says
// which quads of the row (of x) they are. One invocation step then uses
// every bit of each word it loads. Q8_0's octet is two neighbouring words
// of a block. Sections "<dtype>.oct".
//
// An octet comes back as its quants q (a mat2x4, one quad per column) and
// per quad h an affine map, values = q[h] * sm[2h] + sm[2h + 1], so the
// product folds the scales in per quad instead of per value:
// dot(values, x) = sm[2h] * dot(q[h], x) + sm[2h + 1] * sum(x).
struct Oct {
    q: mat2x4<f32>,
    sm: vec4<f32>,
}

// Legacy octets (Q4_0, Q4_1, Q5_0, Q5_1): octet o is word o & 3 of block
// o >> 2, quads (o & 3) and (o & 3) + 4 of the block; its quants, the low
// nibbles then the high ones, and with Q5 the fifth bits from qh (section
// s1 for both).
fn oq_legacy(o: u32) -> vec2<u32> {
    let t = 8u * (o >> 2u) + (o & 3u);
    return vec2<u32>(t, t + 4u);
}

fn legacy_q4(b: u32, o: u32) -> mat2x4<f32> {
    let v = bytes4(word(4u * b + (o & 3u)));
    return mat2x4<f32>(vec4<f32>(v & vec4<u32>(15u)), vec4<f32>(v >> vec4<u32>(4u)));
}

fn legacy_q5(b: u32, o: u32) -> mat2x4<f32> {
    let j = o & 3u;
    let v = bytes4(word(4u * b + j));
    let qh = word(p.s1 + b);
    let lo = (v & vec4<u32>(15u)) | high_bits(qh, 4u * j);
    let hi = (v >> vec4<u32>(4u)) | high_bits(qh, 4u * j + 16u);
    return mat2x4<f32>(vec4<f32>(lo), vec4<f32>(hi));
}

// Q4_K and Q5_K octets: octet o of block o >> 5, r = o & 31, is word
// r & 7 of the qs run of sub-blocks 2i, 2i + 1 (i = r >> 3), their low and
// high nibbles.
fn oq_k(o: u32) -> vec2<u32> {
    let r = o & 31u;
    let t = 64u * (o >> 5u) + 16u * (r >> 3u) + (r & 7u);
    return vec2<u32>(t, t + 8u);
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

// @decoder q4_0.oct
// Values (q - 8) * d.
fn oq_q4_0(o: u32) -> vec2<u32> {
    return oq_legacy(o);
}

fn dq8_q4_0(n: u32, o: u32) -> Oct {
    let b = n * p.blocks + (o >> 2u);
    let d = half_at(p.s1, b);
    return Oct(legacy_q4(b, o), vec4<f32>(d, -8.0 * d, d, -8.0 * d));
}

// @decoder q4_1.oct
// Values q * d + m.
fn oq_q4_1(o: u32) -> vec2<u32> {
    return oq_legacy(o);
}

fn dq8_q4_1(n: u32, o: u32) -> Oct {
    let b = n * p.blocks + (o >> 2u);
    let dm = pair_at(p.s1, b);
    return Oct(legacy_q4(b, o), vec4<f32>(dm, dm));
}

// @decoder q5_0.oct
// Values (q - 16) * d.
fn oq_q5_0(o: u32) -> vec2<u32> {
    return oq_legacy(o);
}

fn dq8_q5_0(n: u32, o: u32) -> Oct {
    let b = n * p.blocks + (o >> 2u);
    let d = half_at(p.s2, b);
    return Oct(legacy_q5(b, o), vec4<f32>(d, -16.0 * d, d, -16.0 * d));
}

// @decoder q5_1.oct
// Values q * d + m.
fn oq_q5_1(o: u32) -> vec2<u32> {
    return oq_legacy(o);
}

fn dq8_q5_1(n: u32, o: u32) -> Oct {
    let b = n * p.blocks + (o >> 2u);
    let dm = pair_at(p.s2, b);
    return Oct(legacy_q5(b, o), vec4<f32>(dm, dm));
}

// @decoder q8_0.oct
// Octet o: words 2 (o & 3), + 1 of block o >> 2 = quads 2o, 2o + 1;
// values q * d.
fn oq_q8_0(o: u32) -> vec2<u32> {
    return vec2<u32>(2u * o, 2u * o + 1u);
}

fn dq8_q8_0(n: u32, o: u32) -> Oct {
    let b = n * p.blocks + (o >> 2u);
    let i = 8u * b + 2u * (o & 3u);
    let d = half_at(p.s1, b);
    return Oct(mat2x4<f32>(ibytes4(word(i)), ibytes4(word(i + 1u))), vec4<f32>(d, 0.0, d, 0.0));
}

// @decoder q4_k.oct
// Values q * (d * sc) - dmin * m per sub-block.
fn oq_q4_k(o: u32) -> vec2<u32> {
    return oq_k(o);
}

fn dq8_q4_k(n: u32, o: u32) -> Oct {
    let b = n * p.blocks + (o >> 5u);
    let r = o & 31u;
    let j = 2u * (r >> 3u);
    let dm = pair_at(p.s2, b);
    let s0 = scale_min_k4(p.s1 + 3u * b, j);
    let s1 = scale_min_k4(p.s1 + 3u * b, j + 1u);
    let v = bytes4(word(32u * b + 4u * j + (r & 7u)));
    let q = mat2x4<f32>(vec4<f32>(v & vec4<u32>(15u)), vec4<f32>(v >> vec4<u32>(4u)));
    return Oct(q, vec4<f32>(dm.x * s0.x, -dm.y * s0.y, dm.x * s1.x, -dm.y * s1.y));
}

// @decoder q5_k.oct
// Q4_K plus bit j of qh as each value's fifth bit.
fn oq_q5_k(o: u32) -> vec2<u32> {
    return oq_k(o);
}

fn dq8_q5_k(n: u32, o: u32) -> Oct {
    let b = n * p.blocks + (o >> 5u);
    let r = o & 31u;
    let q = r & 7u;
    let j = 2u * (r >> 3u);
    let dm = pair_at(p.s3, b);
    let s0 = scale_min_k4(p.s2 + 3u * b, j);
    let s1 = scale_min_k4(p.s2 + 3u * b, j + 1u);
    let v = bytes4(word(32u * b + 4u * j + q));
    let h = bytes4(word(p.s1 + 8u * b + q));
    let lo = (v & vec4<u32>(15u)) | (((h >> vec4<u32>(j)) & vec4<u32>(1u)) << vec4<u32>(4u));
    let hi = (v >> vec4<u32>(4u)) | (((h >> vec4<u32>(j + 1u)) & vec4<u32>(1u)) << vec4<u32>(4u));
    return Oct(
        mat2x4<f32>(vec4<f32>(lo), vec4<f32>(hi)),
        vec4<f32>(dm.x * s0.x, -dm.y * s0.y, dm.x * s1.x, -dm.y * s1.y),
    );
}

// @decoder q6_k.oct
// Octet o of block o >> 5: r = o & 31 is half hf = r >> 4, ql run
// k1 = (r >> 3) & 1, word q = r & 7: its low nibbles are sub-block
// j = 4 hf + k1, its high ones j + 2 (qh bits 2 k1 and 2 k1 + 4); values
// (q - 32) * (d * sc).
fn oq_q6_k(o: u32) -> vec2<u32> {
    let r = o & 31u;
    let t = 64u * (o >> 5u) + 32u * (r >> 4u) + 8u * ((r >> 3u) & 1u) + (r & 7u);
    return vec2<u32>(t, t + 16u);
}

fn dq8_q6_k(n: u32, o: u32) -> Oct {
    let b = n * p.blocks + (o >> 5u);
    let r = o & 31u;
    let hf = r >> 4u;
    let k1 = (r >> 3u) & 1u;
    let q = r & 7u;
    let j = 4u * hf + k1;
    let ql = bytes4(word(32u * b + 16u * hf + 8u * k1 + q));
    let qh = bytes4(word(p.s1 + 16u * b + 8u * hf + q));
    let lo = (ql & vec4<u32>(15u)) | (((qh >> vec4<u32>(2u * k1)) & vec4<u32>(3u)) << vec4<u32>(4u));
    let hi = (ql >> vec4<u32>(4u)) | (((qh >> vec4<u32>(2u * k1 + 4u)) & vec4<u32>(3u)) << vec4<u32>(4u));
    let d = half_at(p.s3, b);
    let sc0 = d * f32(extractBits(bitcast<i32>(byte_at(p.s2 + 4u * b, 2u * j + (q >> 2u))), 0u, 8u));
    let sc1 = d * f32(extractBits(bitcast<i32>(byte_at(p.s2 + 4u * b, 2u * j + 4u + (q >> 2u))), 0u, 8u));
    return Oct(mat2x4<f32>(vec4<f32>(lo), vec4<f32>(hi)), vec4<f32>(sc0, -32.0 * sc0, sc1, -32.0 * sc1));
}
