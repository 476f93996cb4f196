// C[b, M, N] = A[b, M, K] * B[b', N, K]^T (or * B[b', K, N]) on tensor cores:
// 16x16x16 cooperative matrices, f16 inputs, f32 accumulate.
//
// A workgroup computes a BM x BN tile of C with WARPS_M x WARPS_N
// subgroups; each subgroup owns FM x FN accumulator fragments (16x16 each)
// and keeps them in registers for the whole K loop. Every K step of BK,
// the A tile (row-major, As[m][k]) and the B tile (Bs[n][k] for B [N, K],
// read as column-major fragments; Bs[k][n] for B [K, N], read as row-major
// ones) are staged in workgroup memory as vec4<f16>. Global reads move 8
// halves at a time as one vec4<u32> (16 bytes; naga has no u32 -> f16
// bitcast, so the words go through unpack2x16float and back to f16, which
// is exact and which the driver folds away: 1.6x the speed of two 8-byte
// vec4<f16> loads on an H200). Rows are padded by 8 halves (16 bytes), so
// fragment loads spread over the banks. With NBUF = 2 the next step's
// global loads (held in registers) overlap this step's multiplies, with one
// barrier per step.
//
// (Staging as vec4<u32> and fragment-loading f16 from it, which
// cooperative-matrix loads allow in SPIR-V, makes the NVIDIA driver fail
// the pipeline and lose the device: keep the workgroup array f16.)
//
// Subgroup i of the workgroup takes warp tile (i / WARPS_N, i % WARPS_N):
// the kernel is built for one subgroup size (SG), which the device must
// report as its only one.
//
// Operands are read through `load_a` / `load_b` (8 consecutive halves
// packed in a vec4<u32>, a Chunk; zeros outside the matrix), filled in per
// dtype (F16 as raw bits; F32 rounded to f16 with pack2x16float) and
// alignment.

enable f16;
enable wgpu_cooperative_matrix;

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
const WG: u32 = WARPS_M * WARPS_N * SG;
const B_KN: bool = {{B_KN}};
// Row pitches of As and Bs, in halves (multiples of 8).
const LDA: u32 = BK + 8u;
const LDB: u32 = {{LDB}};
// Rows of one Bs buffer: BN ([n][k]) or BK ([k][n]).
const B_ROWS: u32 = {{B_ROWS}};

// 8-half chunks of one staged tile.
const A_CHUNKS: u32 = BM * BK / 8u;
const B_CHUNKS: u32 = BN * BK / 8u;
// log2 of chunks per row of a k-contiguous tile (BK / 8) and of an
// n-contiguous one (BN / 8).
const BK8_SHIFT: u32 = {{BK8_SHIFT}};
const BN8_SHIFT: u32 = {{BN8_SHIFT}};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<{{A_ELEM}}>;
@group(0) @binding(2) var<storage, read> b: array<{{B_ELEM}}>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

// As and Bs in one array of vec4<f16>: [buffer][m][k] of A, then
// [buffer][row][col] of B from B_OFF on. Offsets below count 8-half
// chunks (AS_Q, BS_Q, B_OFF, put's q) or halves (fragment loads).
const AS_Q: u32 = BM * LDA / 8u;
const BS_Q: u32 = B_ROWS * LDB / 8u;
const B_OFF: u32 = NBUF * AS_Q;
var<workgroup> S: array<vec4<f16>, 2u * NBUF * (AS_Q + BS_Q)>;

// 8 halves, half j in bits 16 * (j & 1) of word j / 2.
alias Chunk = vec4<u32>;

// Chunk q of S.
fn put(q: u32, c: Chunk) {
    S[2u * q] = vec4<f16>(vec2<f16>(unpack2x16float(c.x)), vec2<f16>(unpack2x16float(c.y)));
    S[2u * q + 1u] = vec4<f16>(vec2<f16>(unpack2x16float(c.z)), vec2<f16>(unpack2x16float(c.w)));
}
// One 16x16 fragment per subgroup, to store tiles that overhang C.
var<workgroup> Cs: array<f32, WARPS_M * WARPS_N * 256u>;

// fn load_a(base, row, col, rows, cols) -> Chunk: A[row][col..col + 8].
{{LOAD_A}}
// fn load_b(base, row, col, rows, cols) -> Chunk: B[row][col..col + 8].
{{LOAD_B}}

fn fetch_a(i: u32, lid: u32, m0: u32, k0: u32, base: u32) -> Chunk {
    let v = lid + i * WG;
    let row = v >> BK8_SHIFT;
    let k = (v & ((1u << BK8_SHIFT) - 1u)) << 3u;
    return load_a(base, m0 + row, k0 + k, p.m, p.k);
}

fn stash_a(buf: u32, i: u32, lid: u32, val: Chunk) {
    let v = lid + i * WG;
    if v < A_CHUNKS {
        let row = v >> BK8_SHIFT;
        let k = (v & ((1u << BK8_SHIFT) - 1u)) << 3u;
        put(buf * AS_Q + ((row * LDA + k) >> 3u), val);
    }
}

fn fetch_b(i: u32, lid: u32, n0: u32, k0: u32, base: u32) -> Chunk {
    let v = lid + i * WG;
    if B_KN {
        let row = v >> BN8_SHIFT;
        let n = (v & ((1u << BN8_SHIFT) - 1u)) << 3u;
        return load_b(base, k0 + row, n0 + n, p.k, p.n);
    }
    let row = v >> BK8_SHIFT;
    let k = (v & ((1u << BK8_SHIFT) - 1u)) << 3u;
    return load_b(base, n0 + row, k0 + k, p.n, p.k);
}

fn stash_b(buf: u32, i: u32, lid: u32, val: Chunk) {
    let v = lid + i * WG;
    if v < B_CHUNKS {
        var row: u32;
        var col: u32;
        if B_KN {
            // 8 consecutive n of one k: part of row k of Bs.
            row = v >> BN8_SHIFT;
            col = (v & ((1u << BN8_SHIFT) - 1u)) << 3u;
        } else {
            row = v >> BK8_SHIFT;
            col = (v & ((1u << BK8_SHIFT) - 1u)) << 3u;
        }
        put(B_OFF + buf * BS_Q + ((row * LDB + col) >> 3u), val);
    }
}

// Stores one accumulator fragment whose top-left is C[row][col]: straight
// to C when the workgroup's tile lies inside C and rows are 16-byte
// aligned, else through Cs with bounds checks. `direct` is uniform over the
// workgroup, so the barriers are too.
fn store_fragment(
    f: coop_mat16x16<f32, C>,
    row: u32,
    col: u32,
    direct: bool,
    c_base: u32,
    sg: u32,
    lane: u32,
    sg_size: u32,
) {
    if direct {
        // Both bound first: naga's SPIR-V backend panics on an expression
        // computed inside coopStore's arguments (the index, or p.n).
        let o = c_base + row * p.n + col;
        let stride = p.n;
        coopStoreT(f, &c[o], stride);
    } else {
        let s = sg * 256u;
        coopStoreT(f, &Cs[s], 16u);
        workgroupBarrier();
        for (var e = lane; e < 256u; e += sg_size) {
            let r = row + (e >> 4u);
            let cc = col + (e & 15u);
            if r < p.m && cc < p.n {
                c[c_base + r * p.n + cc] = Cs[s + e];
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
    let a_base = wg.z * p.a_batch_stride;
    let b_base = wg.z * p.b_batch_stride;
    let wm = sg >> WARPS_N_SHIFT;
    let wn = sg & (WARPS_N - 1u);

    // The per-invocation parts (DECL, FETCH, STASH, MMA, STORE holes)
    // are written out in full by matmul.rs: accumulators and
    // staging registers (paI, pbI) are plain variables, and nothing depends
    // on the driver unrolling loops.
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
        let buf = t & (NBUF - 1u);
        let more = t + 1u < steps;
        if more {
            let k0 = (t + 1u) * BK;
{{FETCH}}
        }
        // First half of this subgroup's rows of As, and of its part of Bs
        // (B_OFF not included).
        let ao = (buf * BM + wm * FM * 16u) * LDA;
        var bo: u32;
        if B_KN {
            bo = buf * BK * LDB + wn * FN * 16u;
        } else {
            bo = (buf * BN + wn * FN * 16u) * LDB;
        }
{{MMA}}
        if NBUF == 1u {
            // Single buffer: everyone must be done reading it.
            workgroupBarrier();
        }
        if more {
            let buf = (t + 1u) & (NBUF - 1u);
{{STASH}}
        }
        workgroupBarrier();
    }

    let direct = m0 + BM <= p.m && n0 + BN <= p.n && (p.n & 3u) == 0u;
    let c_base = wg.z * p.c_batch_stride;
    let row0 = m0 + wm * FM * 16u;
    let col0 = n0 + wn * FN * 16u;
{{STORE}}
}
