// RMS norm over the last dimension, with the weight multiply fused:
// out[r, i] = x[r, i] / sqrt(mean_i(x[r, i]^2) + eps) * w[i]
// (ggml's rms_norm followed by its mul by the norm weight).
//
// One workgroup per row: each invocation sums the squares of its strided
// elements, the workgroup reduces, then each invocation scales its elements.

struct Params {
    rows: u32,
    cols: u32, // elements of type T per row
    n: u32,    // elements per row (the mean's divisor)
    eps: f32,
}

const WG: u32 = {{WG}};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<{{T}}>;
{{W_BINDING}}
@group(0) @binding({{OUT_BINDING}}) var<storage, read_write> out: array<{{T}}>;

{{REDUCE}}
{{HORIZONTAL}}

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    // Rows may be spread over x and y (op::grid); uniform per workgroup.
    let row = ids.wg.x + ids.wg.y * ids.nwg.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var ss = 0.0;
    for (var i = ids.lid; i < p.cols; i += WG) {
        ss += hsq(x[base + i]);
    }
    let total = wg_sum(ss, ids);
    let scale = inverseSqrt(total / f32(p.n) + p.eps);
    for (var i = ids.lid; i < p.cols; i += WG) {
        out[base + i] = x[base + i] * scale{{TIMES_W}};
    }
}
