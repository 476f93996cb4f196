// Quantized matrix-matrix product on tensor cores (prefill):
// y[m, n] = sum_k x[m, k] * W[n, k], W [N, K] quantized (layout.rs), x and
// y f32; 16x16x16 cooperative matrices with f16 inputs and f32
// accumulation. x and the decoded W are rounded to f16 on their way into
// workgroup memory (the price of the tensor cores: see qmatmul.rs).
//
// The structure of matmul_coop.wgsl: a workgroup computes a BM x BN tile of
// y with WARPS_M x WARPS_N subgroups, each owning FM x FN 16x16
// accumulator fragments for the whole K loop. Every K step of BK, the x
// tile (row-major, Xs[m][k]) and the W tile (Ws[n][k], read as
// column-major K x N fragments) are staged in workgroup memory as
// vec4<f16>, rows padded by 8 halves. x moves 8 values per load (two
// vec4<f32>); W is decoded chunk by chunk (CHUNK consecutive k of one row,
// the shared decoders of qmatmul_decode.wgsl), and a chunk is contiguous in
// Ws. With NBUF = 2 the next step's x loads (held in registers) and W
// decodes (written straight to the other buffer) overlap this step's
// multiplies, with one barrier per step.
//
// Subgroup i takes warp tile (i / WARPS_N, i % WARPS_N): the kernel is
// built for one subgroup size (SG), which the device must report as its
// only one. K need not be a multiple of BK (F16: a multiple of 8; F32: of
// 4); chunks past K, rows past M and N are zeros.

enable f16;
enable wgpu_cooperative_matrix;

struct Params {
    m: u32,      // rows of x (every batch)
    n: u32,      // rows of W
    k: u32,
    chunks: u32, // chunks per row of W
    blocks: u32, // blocks per row of W
    s1: u32,     // section offsets in u32 words (layout.rs)
    s2: u32,
    s3: u32,
}

const WARPS_M: u32 = {{WARPS_M}};
const WARPS_N: u32 = {{WARPS_N}};
const WARPS_N_SHIFT: u32 = {{WARPS_N_SHIFT}};
const FM: u32 = {{FM}};
const FN: u32 = {{FN}};
const SG: u32 = {{SG}};
const BK: u32 = {{BK}};
const NBUF: u32 = {{NBUF}};
const BM: u32 = WARPS_M * FM * 16u;
const BN: u32 = WARPS_N * FN * 16u;
const BN_SHIFT: u32 = {{BN_SHIFT}};
const WG: u32 = WARPS_M * WARPS_N * SG;
const CHUNK: u32 = {{CHUNK}};
const CV: u32 = CHUNK / 4u;
// Chunks of the W tile per step.
const N_DECODE: u32 = BN * (BK / CHUNK);
// Row pitch of Xs and Ws, in halves (a multiple of 8).
const LD: u32 = BK + 8u;
// 8-half groups of one staged x tile; log2 of them per tile row (BK / 8).
const X_GROUPS: u32 = BM * BK / 8u;
const BK8_SHIFT: u32 = {{BK8_SHIFT}};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// Xs and Ws in one array of vec4<f16>: [buffer][m][k] of x, then
// [buffer][n][k] of W from W_OFF on. Offsets count vec4<f16>s (4 halves).
const XS_Q: u32 = BM * LD / 4u;
const WS_Q: u32 = BN * LD / 4u;
const W_OFF: u32 = NBUF * XS_Q;
var<workgroup> S: array<vec4<f16>, NBUF * (XS_Q + WS_Q)>;
// One 16x16 fragment per subgroup, to store tiles that overhang y.
var<workgroup> Cs: array<f32, WARPS_M * WARPS_N * 256u>;

// The decoders' output: one chunk of one weight row.
var<private> wv: array<vec4<f32>, CV>;

{{DECODERS}}

// 8 values of x as f16, in two vec4<f32> (rounded when stashed).
struct Eight {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// The i-th 8-value group this invocation moves for the x tile at (m0, k0):
// x[m][k..k + 8], zeros outside x. K is a multiple of 4, so each half of a
// group is all in or all out; only with F32 weights (CHUNK = 4) can K end
// between the halves.
fn fetch_x(i: u32, lid: u32, m0: u32, k0: u32) -> Eight {
    let v = lid + i * WG;
    let m = m0 + (v >> BK8_SHIFT);
    let k = k0 + ((v & ((1u << BK8_SHIFT) - 1u)) << 3u);
    var e = Eight(vec4<f32>(0.0), vec4<f32>(0.0));
    if v < X_GROUPS && m < p.m && k < p.k {
        let o = (m * p.k + k) >> 2u;
        e.lo = x[o];
        if CHUNK >= 8u || k + 4u < p.k {
            e.hi = x[o + 1u];
        }
    }
    return e;
}

fn stash_x(buf: u32, i: u32, lid: u32, e: Eight) {
    let v = lid + i * WG;
    if v < X_GROUPS {
        let row = v >> BK8_SHIFT;
        let k = (v & ((1u << BK8_SHIFT) - 1u)) << 3u;
        let q = buf * XS_Q + ((row * LD + k) >> 2u);
        S[q] = vec4<f16>(e.lo);
        S[q + 1u] = vec4<f16>(e.hi);
    }
}

// Decodes the W tile at (n0, k0) straight into Ws[buf][n][k] as f16: chunk
// i of the tile is row n0 + (i % BN), chunk (i / BN) of the step. Zeros
// past N and K.
fn load_w(buf: u32, lid: u32, n0: u32, k0: u32) {
    for (var i = lid; i < N_DECODE; i += WG) {
        let r = i & (BN - 1u);
        let sub = i >> BN_SHIFT;
        let n = n0 + r;
        let c = k0 / CHUNK + sub;
        if n < p.n && c < p.chunks {
            {{DECODE}}(n, c);
        } else {
            for (var v = 0u; v < CV; v++) {
                wv[v] = vec4<f32>(0.0);
            }
        }
        let q = W_OFF + buf * WS_Q + ((r * LD + sub * CHUNK) >> 2u);
        for (var v = 0u; v < CV; v++) {
            S[q + v] = vec4<f16>(wv[v]);
        }
    }
}

// Stores one accumulator fragment whose top-left is y[row][col]: straight
// to y when the workgroup's tile lies inside y and rows are 16-byte
// aligned, else through Cs with bounds checks. `direct` is uniform over the
// workgroup, so the barriers are too.
fn store_fragment(
    f: coop_mat16x16<f32, C>,
    row: u32,
    col: u32,
    direct: bool,
    sg: u32,
    lane: u32,
    sg_size: u32,
) {
    if direct {
        // Both bound first: naga's SPIR-V backend panics on an expression
        // computed inside coopStore's arguments.
        let o = row * p.n + col;
        let stride = p.n;
        coopStoreT(f, &y[o], stride);
    } else {
        let s = sg * 256u;
        coopStoreT(f, &Cs[s], 16u);
        workgroupBarrier();
        for (var e = lane; e < 256u; e += sg_size) {
            let r = row + (e >> 4u);
            let cc = col + (e & 15u);
            if r < p.m && cc < p.n {
                y[r * p.n + cc] = Cs[s + e];
            }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    let wm = sg >> WARPS_N_SHIFT;
    let wn = sg & (WARPS_N - 1u);

    // Accumulators accI_J and staging registers pxI are plain variables
    // (DECL); FETCH loads x into pxI and decodes W into buffer `buf`;
    // STASH stores pxI into buffer `buf`; MMA is one step's multiplies.
{{DECL}}
    let steps = (p.k + BK - 1u) / BK;
    if NBUF == 2u {
        let k0 = 0u;
        let buf = 0u;
{{FETCH}}
{{STASH}}
        workgroupBarrier();
    }
    for (var t = 0u; t < steps; t++) {
        var cur = 0u;
        if NBUF == 2u {
            cur = t & 1u;
            if t + 1u < steps {
                let k0 = (t + 1u) * BK;
                let buf = (t + 1u) & 1u;
{{FETCH}}
            }
        } else {
            let k0 = t * BK;
            let buf = 0u;
{{FETCH}}
{{STASH}}
            workgroupBarrier();
        }
        // This subgroup's first row of Xs and of Ws, in halves.
        let xo = (cur * BM + wm * FM * 16u) * LD;
        let wo = (cur * BN + wn * FN * 16u) * LD;
{{MMA}}
        if NBUF == 2u && t + 1u < steps {
            let buf = (t + 1u) & 1u;
{{STASH}}
        }
        // NBUF = 2: the stash above went to the other buffer, which nobody
        // reads until after this barrier. NBUF = 1: everyone is done with
        // the buffer before the next step overwrites it.
        workgroupBarrier();
    }

    let direct = m0 + BM <= p.m && n0 + BN <= p.n && (p.n & 3u) == 0u;
    let row0 = m0 + wm * FM * 16u;
    let col0 = n0 + wn * FN * 16u;
{{STORE}}
}
