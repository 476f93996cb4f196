// Argmax over the last dimension: out[r] = the lowest index of row r's
// largest value. NaN is never the max; a row of NaNs gives 0 (the host
// sampler's greedy rule, kiln::sampler::argmax).
//
// One workgroup per row. Values are compared through an order-preserving
// u32 key (below), so the whole search is integer max/min: no float
// comparison whose NaN behaviour a driver may relax. Each invocation keeps
// the best (key, index) of its strided elements, visited in increasing
// index with a strict `>`, so it holds its lowest index of a tie; the
// workgroup then takes the largest key and, among its holders, the lowest
// index.

struct Params {
    rows: u32,
    cols: u32, // elements of type T per row
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = {{WG}};
// No candidate yet; larger than any index (rows hold at most 2^31 - 1).
const NONE: u32 = 0xffffffffu;

alias T = {{T}};     // f32 or vec4<f32>
alias K = {{K}};     // u32 or vec4<u32>: T's keys

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> out: array<i32>;

{{REDUCE}}

// The best key and index this invocation has seen.
var<private> best_key: u32;
var<private> best_idx: u32;

// A u32 whose unsigned order is the floats' order: positives get the sign
// bit set, negatives are bit-flipped (so -inf is 0x007fffff). -0 becomes +0
// (they are equal, as `==` on the host says), and NaN becomes 0, below
// -inf, so that it never wins against a number and `best_key = 0` with
// index NONE means "nothing seen yet".
fn key(v: T) -> K {
    let b = bitcast<K>(v);
    let mag = b & K(0x7fffffffu);
    let k = select(b | K(0x80000000u), ~b, b != mag);
    let k0 = select(k, K(0x80000000u), mag == K(0u));
    return select(k0, K(0u), mag > K(0x7f800000u));
}

{{VISIT}}

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    // Rows may be spread over x and y (op::grid); uniform per workgroup.
    let row = ids.wg.x + ids.wg.y * ids.nwg.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    best_key = 0u;
    best_idx = NONE;
    // One workgroup reads the whole row, so its speed is the loads it keeps
    // in flight: four per invocation, all issued before any is compared.
    var i = ids.lid;
    for (; i + 3u * WG < p.cols; i += 4u * WG) {
        let a = x[base + i];
        let b = x[base + i + WG];
        let c = x[base + i + 2u * WG];
        let d = x[base + i + 3u * WG];
        visit(a, i);
        visit(b, i + WG);
        visit(c, i + 2u * WG);
        visit(d, i + 3u * WG);
    }
    for (; i < p.cols; i += WG) {
        visit(x[base + i], i);
    }
    let best = wg_argmax(best_key, best_idx, ids);
    if ids.lid == 0u {
        // NONE: every value of the row was NaN.
        out[row] = i32(select(best, 0u, best == NONE));
    }
}
