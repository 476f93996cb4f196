// Quantized matrix-vector product for decode, with fused prologues and
// epilogues: y[m, n] = sum_k x'[m, k] * W[n, k]
// (+ sum_j lb[n, j] * lu[m, j] * ls[m, j]) (+ r[m, n]), W [N, K]
// quantized (layout.rs), f32 everywhere else, f32 accumulation, where x' is
//   x                                   plain,
//   x * g * 1 / sqrt(mean(x^2) + eps)   NORM (g: the norm weight, [K]),
//   silu(x[m, k]) * u[m, k]             SWIGLU (x the gate, u the up
//                                       projection, both [M, K]).
//
// One workgroup per ROWS weight rows and MR rows of x (workgroup z). Its WG
// invocations stride the row in quads (4 consecutive values), so
// neighbouring invocations read neighbouring 16 bytes of x and neighbouring
// words of W: every load is coalesced. Each quad of x is loaded once and
// used for all ROWS weight rows. SETUP, LOOPS, ACCS and STORE are generated
// by qmatvec.rs for the variant. The LoRA term (LoRA variants: lu, ls
// [M, R], lb [N, R], R = p.rank) is added to the same partial sums, rank j
// by invocation j % WG. The ROWS * MR partial sums are reduced across the
// workgroup at the end (subgroups where the device has them).

struct Params {
    m: u32,      // rows of x (every batch)
    n: u32,      // rows of W
    k: u32,
    quads: u32,  // k / 4
    blocks: u32, // blocks per row of W
    s1: u32,     // section offsets in u32 words (layout.rs)
    s2: u32,
    s3: u32,
    eps: f32,    // NORM
    rank: u32,   // LoRA rank R (0 without LoRA)
}

const WG: u32 = {{WG}};
const ROWS: u32 = {{ROWS}};
const MR: u32 = {{MR}};
const RM: u32 = ROWS * MR;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
{{BINDINGS}}

{{DECODERS}}

{{REDUCE}}

// Quad t of x' row m (before the norm): x, or silu(x) * u.
fn x_quad(m: u32, t: u32) -> vec4<f32> {
    {{X_QUAD}}
}

var<workgroup> norm_red: array<f32, WG>;

// NORM: 1 / rms of x row m (uniform control flow: every invocation calls
// it for the same rows). The sum of squares is reduced by SUM_SQUARES
// (subgroups, or a tree through workgroup memory).
fn inv_rms(m: u32, ids: Ids) -> f32 {
    var ss = 0.0;
    for (var t = ids.lid; t < p.quads; t += WG) {
        let v = x[m * p.quads + t];
        ss += dot(v, v);
    }
    {{SUM_SQUARES}}
    let inv = 1.0 / sqrt(total / f32(p.k) + p.eps);
    workgroupBarrier();
    return inv;
}

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let n0 = (ids.wg.x + ids.wg.y * ids.nwg.x) * ROWS;
    // Uniform across the workgroup, so no barrier is skipped by some only.
    if n0 >= p.n {
        return;
    }
    let m0 = ids.wg.z * MR;
    // Straight-line code per weight row r and x row i (generated, so the
    // accumulators stay in registers): rows past the end are computed on
    // clamped indices and not written, so the loop has no branches.
{{SETUP}}
{{LOOPS}}
    let total = reduce(array<f32, RM>({{ACCS}}), ids);
    // Invocation i < RM holds the sum for (r, mi) = (i / MR, i % MR).
    if ids.lid < RM {
        let n = n0 + ids.lid / MR;
        let m = m0 + ids.lid % MR;
        if n < p.n && m < p.m {
            let o = m * p.n + n;
            {{STORE}}
        }
    }
}
