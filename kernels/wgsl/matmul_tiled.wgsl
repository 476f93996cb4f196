// C[b, M, N] = A[b, M, K] * B[b', N, K]^T (or * B[b', K, N]), f32 accumulate.
//
// Tiled and register-blocked: a workgroup computes a BM x BN tile of C,
// each invocation a TM x TN block of it held in registers. K is walked in
// steps of BK; each step's A and B tiles are staged in workgroup memory,
// stored k-major (As[k][m], Bs[k][n]) so the inner loop reads whole vec4s
// along m and n. Two staging buffers let the next step's global loads
// (held in registers meanwhile) overlap this step's arithmetic, with one
// barrier per step.
//
// An invocation's TM rows are TM / 4 groups of 4 rows, the groups 4*TY rows
// apart (likewise for columns), so that neighbouring invocations read
// neighbouring vec4s of As/Bs.
//
// Operands are read through `load_a` / `load_b`, filled in per dtype (F32
// or F16 packed in u32) and alignment (vec4 loads when a row holds whole
// vec4s, scalar loads otherwise); they return zeros outside the matrix, so
// ragged M, N, K need no other care until the final store.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_batch_stride: u32, // elements
    b_batch_stride: u32, // elements; 0 when B is shared by every batch
    c_batch_stride: u32, // elements
    _pad0: u32,
    _pad1: u32,
}

const BM: u32 = {{BM}};
const BN: u32 = {{BN}};
const BK: u32 = {{BK}};
const TM: u32 = {{TM}};
const TN: u32 = {{TN}};
const TX: u32 = BN / TN; // invocations along n
const TY: u32 = BM / TM; // invocations along m
const TX_SHIFT: u32 = {{TX_SHIFT}};
const WG: u32 = TX * TY;
// B stored [K, N] (true) or [N, K] (false).
const B_KN: bool = {{B_KN}};

// vec4s of one staged tile.
const A_VECS: u32 = BM * BK / 4u;
const B_VECS: u32 = BN * BK / 4u;
// log2 of vec4s per row of a k-contiguous tile (BK / 4), and of an
// n-contiguous one (BN / 4).
const BK4_SHIFT: u32 = {{BK4_SHIFT}};
const BN4_SHIFT: u32 = {{BN4_SHIFT}};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<{{A_ELEM}}>;
@group(0) @binding(2) var<storage, read> b: array<{{B_ELEM}}>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// [buffer][k][m / 4] and [buffer][k][n / 4].
var<workgroup> As: array<vec4<f32>, 2u * A_VECS>;
var<workgroup> Bs: array<vec4<f32>, 2u * B_VECS>;

// fn load_a(base, row, col, rows, cols) -> vec4<f32>: A[row][col..col + 4].
{{LOAD_A}}
// fn load_b(base, row, col, rows, cols) -> vec4<f32>: B[row][col..col + 4].
{{LOAD_B}}

// The i-th vec4 this invocation moves for the A tile at (m0, k0).
fn fetch_a(i: u32, lid: u32, m0: u32, k0: u32, base: u32) -> vec4<f32> {
    let v = lid + i * WG;
    let row = v >> BK4_SHIFT;
    let k = (v & ((1u << BK4_SHIFT) - 1u)) << 2u;
    return load_a(base, m0 + row, k0 + k, p.m, p.k);
}

// Writes it transposed into As[buf][k..k + 4][row].
fn stash_a(buf: u32, i: u32, lid: u32, val: vec4<f32>) {
    let v = lid + i * WG;
    if v < A_VECS {
        let row = v >> BK4_SHIFT;
        let k = (v & ((1u << BK4_SHIFT) - 1u)) << 2u;
        let o = buf * A_VECS + k * (BM / 4u) + (row >> 2u);
        let lane = row & 3u;
        As[o][lane] = val.x;
        As[o + BM / 4u][lane] = val.y;
        As[o + BM / 2u][lane] = val.z;
        As[o + 3u * BM / 4u][lane] = val.w;
    }
}

// B tile at (n0, k0): along k when B is [N, K] (then like A), along n when
// it is [K, N] (then stored as it comes).
fn fetch_b(i: u32, lid: u32, n0: u32, k0: u32, base: u32) -> vec4<f32> {
    let v = lid + i * WG;
    if B_KN {
        let row = v >> BN4_SHIFT;
        let n = (v & ((1u << BN4_SHIFT) - 1u)) << 2u;
        return load_b(base, k0 + row, n0 + n, p.k, p.n);
    }
    let row = v >> BK4_SHIFT;
    let k = (v & ((1u << BK4_SHIFT) - 1u)) << 2u;
    return load_b(base, n0 + row, k0 + k, p.n, p.k);
}

fn stash_b(buf: u32, i: u32, lid: u32, val: vec4<f32>) {
    let v = lid + i * WG;
    if v < B_VECS {
        if B_KN {
            Bs[buf * B_VECS + v] = val;
        } else {
            let row = v >> BK4_SHIFT;
            let k = (v & ((1u << BK4_SHIFT) - 1u)) << 2u;
            let o = buf * B_VECS + k * (BN / 4u) + (row >> 2u);
            let lane = row & 3u;
            Bs[o][lane] = val.x;
            Bs[o + BN / 4u][lane] = val.y;
            Bs[o + BN / 2u][lane] = val.z;
            Bs[o + 3u * BN / 4u][lane] = val.w;
        }
    }
}

// C[row][col..col + 4] = v, clipped to C.
fn store4(v: vec4<f32>, row: u32, col: u32, c_base: u32) {
    if row < p.m {
        let o = c_base + row * p.n + col;
        for (var j = 0u; j < 4u; j++) {
            if col + j < p.n {
                c[o + j] = v[j];
            }
        }
    }
}

// The per-invocation parts (DECL, FETCH, STASH, STEP, STORE holes) are
// written out in full by matmul.rs, one statement per
// accumulator, staging register or fragment: registers are then plain
// variables, and nothing depends on the driver unrolling loops (which
// wgpu's loop bounding and bounds checks can keep it from doing).
@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
) {
    let tx = lid & (TX - 1u);
    let ty = lid >> TX_SHIFT;
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;
    let a_base = wg.z * p.a_batch_stride;
    let b_base = wg.z * p.b_batch_stride;

    // acc_R_H holds C rows (R / 4 * TY + ty) * 4 + R % 4, columns
    // (H * TX + tx) * 4 .. + 4; paI / pbI the I-th vec4 this invocation
    // stages.
{{DECL}}
    {
        let k0 = 0u;
        let buf = 0u;
{{FETCH}}
{{STASH}}
    }
    workgroupBarrier();

    let steps = (p.k + BK - 1u) / BK;
    for (var t = 0u; t < steps; t++) {
        let more = t + 1u < steps;
        if more {
            let k0 = (t + 1u) * BK;
{{FETCH}}
        }
        let ao = (t & 1u) * A_VECS + ty;
        let bo = (t & 1u) * B_VECS + tx;
        for (var kk = 0u; kk < BK; kk++) {
            let ak = ao + kk * (BM / 4u);
            let bk = bo + kk * (BN / 4u);
{{STEP}}
        }
        if more {
            let buf = (t + 1u) & 1u;
{{STASH}}
        }
        // One barrier per step: the stash above went to the other buffer,
        // which nobody reads until after this barrier.
        workgroupBarrier();
    }

    let c_base = wg.z * p.c_batch_stride;
{{STORE}}
}
