// Softmax over the last dimension: out[r, i] = exp(x[r, i] - max_r) / sum_r.
//
// One workgroup per row. Pass 1 keeps, per invocation, a running max m and
// the sum s of exp(x - m) over its strided elements (the online softmax of
// Milakov & Gimelshein, 2018), so the row is read twice, not three times;
// the workgroup then reduces max, rescales every s to the global max and
// sums. Pass 2 writes. Subtracting the max keeps exp in range for any input.
// The same first pass serves `MaxLogProb` (one value per row: ln of the
// largest probability, -ln(sum)), whose FINISH writes that instead.

struct Params {
    rows: u32,
    cols: u32, // elements of type T per row
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = {{WG}};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<{{T}}>;
@group(0) @binding(2) var<storage, read_write> out: array<{{OUT}}>;

{{REDUCE}}
{{HORIZONTAL}}
// The most negative finite f32: exp(m - max) of an invocation that saw no
// element is then 0 (WGSL has no -inf literal).
const LOWEST: f32 = -3.40282347e38;

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    // Rows may be spread over x and y (op::grid); uniform per workgroup.
    let row = ids.wg.x + ids.wg.y * ids.nwg.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var m = LOWEST;
    var s = 0.0;
    for (var i = ids.lid; i < p.cols; i += WG) {
        let v = x[base + i];
        let m_new = max(m, hmax(v));
        s = s * exp(m - m_new) + hsum(exp(v - m_new));
        m = m_new;
    }
    let row_max = wg_max(m, ids);
    let row_sum = wg_sum(s * exp(m - row_max), ids);
    {{FINISH}}
}
