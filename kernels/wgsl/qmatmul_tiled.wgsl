// Quantized matrix-matrix product for many rows of x (prefill):
// y[m, n] = sum_k x[m, k] * W[n, k], W [N, K] quantized (layout.rs), x and
// y f32, f32 accumulation.
//
// Tiled and register-blocked like matmul_tiled.wgsl: a workgroup computes
// a BM x BN tile of y, each invocation a TM x TN block of it in registers.
// K is walked in steps of BK (a whole number of decoder chunks); each
// step's x tile and W tile are staged in workgroup memory as f32, k-major
// (Xs[k][m], Ws[k][n]), so the inner loop reads whole vec4s along m and n.
// The W tile is decoded on its way in: the workgroup's invocations decode
// its N_DECODE chunks (CHUNK values of one weight row each) with the shared
// decoders, so W is read, and decoded, once per BM rows of x. With NBUF = 2
// the next step's x loads (held in registers) and W decodes (written
// straight to the other buffer) overlap this step's arithmetic, with one
// barrier per step.
//
// K need not be a multiple of BK (F16 weights: K is a multiple of 8; F32:
// of 4); chunks past K decode as zeros, as do rows past N and M.

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

const BM: u32 = {{BM}};
const BN: u32 = {{BN}};
const BK: u32 = {{BK}};
const TM: u32 = {{TM}};
const TN: u32 = {{TN}};
const NBUF: u32 = {{NBUF}};
const TX: u32 = BN / TN; // invocations along n
const TY: u32 = BM / TM; // invocations along m
const TX_SHIFT: u32 = {{TX_SHIFT}};
const WG: u32 = TX * TY;
const CHUNK: u32 = {{CHUNK}};
const CV: u32 = CHUNK / 4u;
// Chunks per row of a W tile (BK / CHUNK), and of the whole tile.
const CPR: u32 = BK / CHUNK;
const BN_SHIFT: u32 = {{BN_SHIFT}};
const N_DECODE: u32 = BN * CPR;
// vec4s of one staged tile; log2 of vec4s per x row of a tile (BK / 4).
const X_VECS: u32 = BM * BK / 4u;
const W_VECS: u32 = BN * BK / 4u;
const BK4_SHIFT: u32 = {{BK4_SHIFT}};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// [buffer][k][m / 4] and [buffer][k][n / 4].
var<workgroup> Xs: array<vec4<f32>, NBUF * X_VECS>;
var<workgroup> Ws: array<vec4<f32>, NBUF * W_VECS>;

// The decoders' output: one chunk of one weight row.
var<private> wv: array<vec4<f32>, CV>;

{{DECODERS}}

// The i-th vec4 this invocation moves for the x tile at (m0, k0): x[m][k..k
// + 4], zeros outside x (K is a multiple of 4, so a vec4 is all in or out).
fn fetch_x(i: u32, lid: u32, m0: u32, k0: u32) -> vec4<f32> {
    let v = lid + i * WG;
    let m = m0 + (v >> BK4_SHIFT);
    let k = k0 + ((v & ((1u << BK4_SHIFT) - 1u)) << 2u);
    if v < X_VECS && m < p.m && k < p.k {
        return x[(m * p.k + k) >> 2u];
    }
    return vec4<f32>(0.0);
}

// Writes it transposed into Xs[buf][k..k + 4][m].
fn stash_x(buf: u32, i: u32, lid: u32, val: vec4<f32>) {
    let v = lid + i * WG;
    if v < X_VECS {
        let row = v >> BK4_SHIFT;
        let k = (v & ((1u << BK4_SHIFT) - 1u)) << 2u;
        let o = buf * X_VECS + k * (BM / 4u) + (row >> 2u);
        let lane = row & 3u;
        Xs[o][lane] = val.x;
        Xs[o + BM / 4u][lane] = val.y;
        Xs[o + BM / 2u][lane] = val.z;
        Xs[o + 3u * BM / 4u][lane] = val.w;
    }
}

// Decodes the W tile at (n0, k0) straight into Ws[buf][k][n] (one lane of
// a vec4 per value): chunk i of the tile is row n0 + (i % BN), chunk
// (i / BN) of the step, so neighbouring invocations take neighbouring rows
// and their stores hit distinct banks. Zeros past N and K. Not staged
// through registers: holding a decoded chunk across the arithmetic (to
// overlap its loads) cost more in registers than it saved (H200).
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
        let o = buf * W_VECS + sub * CHUNK * (BN / 4u) + (r >> 2u);
        let lane = r & 3u;
        for (var v = 0u; v < CV; v++) {
            let ov = o + 4u * v * (BN / 4u);
            Ws[ov][lane] = wv[v].x;
            Ws[ov + BN / 4u][lane] = wv[v].y;
            Ws[ov + BN / 2u][lane] = wv[v].z;
            Ws[ov + 3u * BN / 4u][lane] = wv[v].w;
        }
    }
}

// y[row][col..col + 4] = v, clipped to y.
fn store4(v: vec4<f32>, row: u32, col: u32) {
    if row < p.m {
        let o = row * p.n + col;
        for (var j = 0u; j < 4u; j++) {
            if col + j < p.n {
                y[o + j] = v[j];
            }
        }
    }
}

// The per-invocation parts (DECL, FETCH, STASH, STEP, STORE holes) are
// written out in full by qmatmul.rs, one statement per accumulator or
// staging register, as in matmul_tiled.wgsl.
@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
) {
    let tx = lid & (TX - 1u);
    let ty = lid >> TX_SHIFT;
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;

    // acc_R_H holds y rows m0 + (R / 4 * TY + ty) * 4 + R % 4, columns
    // n0 + (H * TX + tx) * 4 .. + 4; pxI the I-th x vec4 this invocation
    // stages. FETCH loads x into pxI and decodes W into buffer `buf`;
    // STASH stores pxI into buffer `buf`.
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
        var buf = 0u;
        if NBUF == 2u {
            buf = t & 1u;
            if t + 1u < steps {
                let k0 = (t + 1u) * BK;
                let buf = (t + 1u) & 1u;
{{FETCH}}
            }
        } else {
            let k0 = t * BK;
{{FETCH}}
{{STASH}}
            workgroupBarrier();
        }
        let xo = buf * X_VECS + ty;
        let wo = buf * W_VECS + tx;
        for (var kk = 0u; kk < BK; kk++) {
            let xk = xo + kk * (BM / 4u);
            let wk = wo + kk * (BN / 4u);
{{STEP}}
        }
        if NBUF == 2u && t + 1u < steps {
            let buf = (t + 1u) & 1u;
{{STASH}}
        }
        // NBUF = 2: the stash above went to the other buffer, which nobody
        // reads until after this barrier. NBUF = 1: everyone is done with
        // the buffer before the next step overwrites it.
        workgroupBarrier();
    }

{{STORE}}
}
