// Decoders of the quantized weight formats, in the GPU layout of
// kernels/src/layout.rs (each block split into 16-byte-aligned sections:
// quants first, as whole vec4<u32>s per block; then the other fields).
// Each `decode_<type>(n, c)` writes chunk `c` (CHUNK consecutive values) of
// weight row `n` into `wv` as f32, with exactly ggml's arithmetic
// (`dequantize_row_*` in ggml-quants.c, mirrored by kernels/src/quant):
// every scale is an f16 or a small-integer multiple of one, so each value
// is rounded once, as on the CPU.
//
// The including kernel binds `w: array<vec4<u32>>`, the uniform `p` with
// `blocks` (blocks per weight row), `chunks` (chunks per row) and the
// section offsets `s1`, `s2`, `s3` in u32 words, and declares
// `var<private> wv: array<vec4<f32>, CV>`. The helpers come first; each
// "@decoder <dtype>" comment line starts one decoder; a kernel includes the
// helpers and its one decoder only (qmatmul.rs, `decoder_source`).

fn word(i: u32) -> u32 {
    return w[i >> 2u][i & 3u];
}

// The i-th f16 of the section starting at word s.
fn half_at(s: u32, i: u32) -> f32 {
    return unpack2x16float(word(s + (i >> 1u)))[i & 1u];
}

// The f16 pair (d, m) of block i in the section starting at word s.
fn pair_at(s: u32, i: u32) -> vec2<f32> {
    return unpack2x16float(word(s + i));
}

// The 4 little-endian bytes of a word.
fn bytes4(v: u32) -> vec4<u32> {
    return (vec4<u32>(v) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xFFu);
}

// Byte j of the section-relative byte array starting at word s.
fn byte_at(s: u32, j: u32) -> u32 {
    return (word(s + (j >> 2u)) >> ((j & 3u) << 3u)) & 0xFFu;
}

// The fifth bits of values 4i..4i+3 (bits 4i.. of qh), moved to bit 4.
fn high_bits(qh: u32, first: u32) -> vec4<u32> {
    return ((vec4<u32>(qh) >> (vec4<u32>(0u, 1u, 2u, 3u) + first)) & vec4<u32>(1u)) << vec4<u32>(4u);
}

// The 4 signed bytes of a word.
fn ibytes4(v: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(v) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

// K-quants: chunk c is sub-block (c & 7) of block (c >> 3) of the row.
// Scale and min of sub-block j from the 12 packed bytes (ggml's
// get_scale_min_k4).
fn scale_min_k4(s: u32, j: u32) -> vec2<f32> {
    if j < 4u {
        return vec2<f32>(f32(byte_at(s, j) & 63u), f32(byte_at(s, j + 4u) & 63u));
    }
    let a = byte_at(s, j + 4u);
    let sc = (a & 15u) | ((byte_at(s, j - 4u) >> 6u) << 4u);
    let m = (a >> 4u) | ((byte_at(s, j) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(m));
}

// @decoder q4_0
// Q4_0 (chunk = block of 32): byte j holds value j (low nibble) and j + 16
// (high nibble); y = (q - 8) * d.
fn decode_q4_0(n: u32, c: u32) {
    let b = n * p.blocks + c;
    let q = w[b];
    let d = half_at(p.s1, b);
    for (var i = 0u; i < 4u; i++) {
        let v = bytes4(q[i]);
        wv[i] = (vec4<f32>(v & vec4<u32>(15u)) - 8.0) * d;
        wv[i + 4u] = (vec4<f32>(v >> vec4<u32>(4u)) - 8.0) * d;
    }
}

// @decoder q4_1
// Q4_1: y = q * d + m.
fn decode_q4_1(n: u32, c: u32) {
    let b = n * p.blocks + c;
    let q = w[b];
    let dm = pair_at(p.s1, b);
    for (var i = 0u; i < 4u; i++) {
        let v = bytes4(q[i]);
        wv[i] = vec4<f32>(v & vec4<u32>(15u)) * dm.x + dm.y;
        wv[i + 4u] = vec4<f32>(v >> vec4<u32>(4u)) * dm.x + dm.y;
    }
}


// @decoder q5_0
// Q5_0: bit j of qh is the fifth bit of value j; y = (q - 16) * d.
fn decode_q5_0(n: u32, c: u32) {
    let b = n * p.blocks + c;
    let q = w[b];
    let qh = word(p.s1 + b);
    let d = half_at(p.s2, b);
    for (var i = 0u; i < 4u; i++) {
        let v = bytes4(q[i]);
        let lo = (v & vec4<u32>(15u)) | high_bits(qh, 4u * i);
        let hi = (v >> vec4<u32>(4u)) | high_bits(qh, 4u * i + 16u);
        wv[i] = (vec4<f32>(lo) - 16.0) * d;
        wv[i + 4u] = (vec4<f32>(hi) - 16.0) * d;
    }
}

// @decoder q5_1
// Q5_1: y = q * d + m.
fn decode_q5_1(n: u32, c: u32) {
    let b = n * p.blocks + c;
    let q = w[b];
    let qh = word(p.s1 + b);
    let dm = pair_at(p.s2, b);
    for (var i = 0u; i < 4u; i++) {
        let v = bytes4(q[i]);
        let lo = (v & vec4<u32>(15u)) | high_bits(qh, 4u * i);
        let hi = (v >> vec4<u32>(4u)) | high_bits(qh, 4u * i + 16u);
        wv[i] = vec4<f32>(lo) * dm.x + dm.y;
        wv[i + 4u] = vec4<f32>(hi) * dm.x + dm.y;
    }
}


// @decoder q8_0
// Q8_0: 32 signed bytes, two vec4<u32>; y = q * d.
fn decode_q8_0(n: u32, c: u32) {
    let b = n * p.blocks + c;
    let d = half_at(p.s1, b);
    for (var h = 0u; h < 2u; h++) {
        let q = w[2u * b + h];
        for (var i = 0u; i < 4u; i++) {
            wv[4u * h + i] = ibytes4(q[i]) * d;
        }
    }
}


// @decoder q4_k
// Q4_K: sub-block j takes the low (j even) or high nibbles of
// qs[32 (j / 2) ..][..32]; y = (d * sc) * q - dmin * m.
fn decode_q4_k(n: u32, c: u32) {
    let b = n * p.blocks + (c >> 3u);
    let j = c & 7u;
    let dm = pair_at(p.s2, b);
    let sm = scale_min_k4(p.s1 + 3u * b, j);
    let dl = dm.x * sm.x;
    let ml = dm.y * sm.y;
    let shift = vec4<u32>((j & 1u) << 2u);
    for (var h = 0u; h < 2u; h++) {
        let q = w[8u * b + 2u * (j >> 1u) + h];
        for (var i = 0u; i < 4u; i++) {
            wv[4u * h + i] = vec4<f32>((bytes4(q[i]) >> shift) & vec4<u32>(15u)) * dl - ml;
        }
    }
}

// @decoder q5_k
// Q5_K: Q4_K plus bit j of qh[l] as the fifth bit of value l.
fn decode_q5_k(n: u32, c: u32) {
    let b = n * p.blocks + (c >> 3u);
    let j = c & 7u;
    let dm = pair_at(p.s3, b);
    let sm = scale_min_k4(p.s2 + 3u * b, j);
    let dl = dm.x * sm.x;
    let ml = dm.y * sm.y;
    let shift = vec4<u32>((j & 1u) << 2u);
    for (var h = 0u; h < 2u; h++) {
        let q = w[8u * b + 2u * (j >> 1u) + h];
        for (var i = 0u; i < 4u; i++) {
            let hb = ((bytes4(word(p.s1 + 8u * b + 4u * h + i)) >> vec4<u32>(j)) & vec4<u32>(1u)) << vec4<u32>(4u);
            let v = ((bytes4(q[i]) >> shift) & vec4<u32>(15u)) | hb;
            wv[4u * h + i] = vec4<f32>(v) * dl - ml;
        }
    }
}

// @decoder q6_k
// Q6_K: sub-block j of 32 is quarter k = j & 3 of half hf = j >> 2: low
// (k < 2) or high nibbles of ql[64 hf + 32 (k & 1) ..], bits 2k.. of
// qh[32 hf ..]; its two 16-value halves have scales 2j and 2j + 1;
// y = (d * sc) * (q - 32).
fn decode_q6_k(n: u32, c: u32) {
    let b = n * p.blocks + (c >> 3u);
    let j = c & 7u;
    let hf = j >> 2u;
    let k = j & 3u;
    let d = half_at(p.s3, b);
    let shift = vec4<u32>((k >> 1u) << 2u);
    let hshift = vec4<u32>(2u * k);
    for (var h = 0u; h < 2u; h++) {
        let sc = f32(extractBits(bitcast<i32>(byte_at(p.s2 + 4u * b, 2u * j + h)), 0u, 8u));
        let dl = d * sc;
        let ql = w[8u * b + 4u * hf + 2u * (k & 1u) + h];
        let qh = w[(p.s1 >> 2u) + 4u * b + 2u * hf + h];
        for (var i = 0u; i < 4u; i++) {
            let lo = (bytes4(ql[i]) >> shift) & vec4<u32>(15u);
            let hi = ((bytes4(qh[i]) >> hshift) & vec4<u32>(3u)) << vec4<u32>(4u);
            wv[4u * h + i] = (vec4<f32>(lo | hi) - 32.0) * dl;
        }
    }
}

// @decoder f16
// F16 (chunk = 8 values, one vec4<u32>; no repacking).
fn decode_f16(n: u32, c: u32) {
    let q = w[n * p.chunks + c];
    wv[0] = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
    wv[1] = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
}

// @decoder f32
// F32 (chunk = 4 values, one vec4; no repacking).
fn decode_f32(n: u32, c: u32) {
    wv[0] = bitcast<vec4<f32>>(w[n * p.chunks + c]);
}
