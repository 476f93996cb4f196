// Batched transpose of F16: x [batch, R, C] -> out [batch, C, R].
//
// F16 is read and written as packed u32 words (no SHADER_F16 needed), and
// WGSL cannot store 16 bits, so each invocation owns one output word: the
// output elements 2i and 2i + 1, whose sources are found by division (once
// per element; F16 transposes are rare and small next to the matmuls).

struct Params {
    rows: u32,  // R
    cols: u32,  // C
    n: u32,     // elements
    words: u32, // ceil(n / 2)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

// The f16 bits of element `e` of x, in the low half.
fn half_at(e: u32) -> u32 {
    return (x[e >> 1u] >> ((e & 1u) * 16u)) & 0xffffu;
}

// The source element of output element `o`.
fn source_of(o: u32) -> u32 {
    let rc = p.rows * p.cols;
    let b = o / rc;
    let in_batch = o - b * rc;
    let c = in_batch / p.rows; // output row
    let r = in_batch - c * p.rows;
    return b * rc + r * p.cols + c;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * nwg.x) * 256u + lid;
    if i >= p.words {
        return;
    }
    let lo = half_at(source_of(2u * i));
    var hi = 0u;
    if 2u * i + 1u < p.n {
        hi = half_at(source_of(2u * i + 1u));
    }
    out[i] = lo | (hi << 16u);
}
