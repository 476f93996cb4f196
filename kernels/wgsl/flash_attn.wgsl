// Flash attention (prefill): the same function as attention.wgsl (causal,
// sliding window, GQA) for one sequence: seq is one (start, row) pair,
// query t sits at cache row row + t and sees keys from start. For any
// number of queries, without a seq x seq matrix (Dao et al. 2022,
// FlashAttention; the loop order of FlashAttention-2), f32 throughout.
//
// Rows: the query heads that share kv head kvh, T-major: row R is query
// t = R / group of head kvh * group + R % group, so one workgroup's K and V
// tiles serve every head of its group (GQA) and are loaded once.
//
// One workgroup per (tile of BQ rows, kv head), heaviest (latest) tiles
// first so that the short causal tiles fill the tail. 256 invocations as a
// 16 x 16 grid (tx, ty); invocation (tx, ty) owns rows ty + 16 i (i < RQ)
// of the tile: the scores of keys tx + 16 j (j < RK) of each key tile and
// the output vec4s tx + 16 c (c < DV) of those rows (register blocking,
// like the tiled matmul). Per key tile of BK keys (only those some row of
// the tile sees: the tiles start at the sequence's start or the window's,
// and end at the causal diagonal):
//   1. S = Q K^T in registers; Q and K staged in chunks of DC dimensions
//      (pitch LDS vec4s, odd, so the K reads of a quarter warp hit
//      distinct banks); Q is pre-scaled when staged;
//   2. masked scores go to p_sh; invocation r < BQ turns row r into
//      P = exp(S - m_new) (masked: 0) and updates the row's running max m,
//      sum l and rescale factor alpha = exp(m - m_new) (online softmax);
//   3. acc = acc * alpha + P V, V staged by chunks of KC keys.
// Workgroup memory: one vec4 buffer shared by the Q/K chunks and the V
// chunk (never live together), P with an odd pitch, and the row stats.

struct Params {
    n_q: u32,     // T
    n_head: u32,
    n_kv: u32,
    ctx: u32,
    group: u32,   // n_head / n_kv
    window: u32,  // 0 = no sliding window
    scale: f32,
    per_query: u32, // always 0 here: one seq pair (flash_attn.rs)
}

// Layouts: q, out [n_q, n_head, HD]; k, v [ctx, n_kv, HD], f32 or f16
// (f16 read as packed u32 words, so no f16 feature is needed). With HD a
// multiple of 4 they are bound as arrays of 4-element words. seq [1, 2]:
// (start, row).
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<{{Q_T}}>;
@group(0) @binding(2) var<storage, read> k: array<{{KV_T}}>;
@group(0) @binding(3) var<storage, read> v: array<{{KV_T}}>;
@group(0) @binding(4) var<storage, read> seq: array<i32>;
@group(0) @binding(5) var<storage, read_write> out: array<{{Q_T}}>;

// ld_q(i, n), ld_k, ld_v: elements i .. i + 4 of a buffer as f32, of which
// the first n (>= 1) lie in the row, zeros for the others; st_out(i, n, x)
// writes the first n. i is a multiple of 4 within a row of HD elements.
{{LOADERS}}

const WG: u32 = {{WG}};     // 16 x 16
const HD: u32 = {{HD}};
const BQ: u32 = {{BQ}};
const BK: u32 = {{BK}};
const RQ: u32 = BQ / 16u;      // rows per invocation
const RK: u32 = BK / 16u;      // keys per invocation
const DC4: u32 = {{DC4}};      // vec4s of a staged Q/K chunk row (power of two)
const DC4_SHIFT: u32 = {{DC4_SHIFT}};
const DC: u32 = 4u * DC4;
const LDS: u32 = DC4 + 1u;     // pitch of staged Q/K rows in vec4s
const KC: u32 = {{KC}};        // keys per staged V chunk
const DV: u32 = {{DV}};        // output vec4s per row per invocation
const HV: u32 = 16u * DV;      // vec4s of a staged V row (HD padded)
const HV_SHIFT: u32 = {{HV_SHIFT}};
const K_OFF: u32 = BQ * LDS;   // K chunk after Q chunk in u_sh
const LDP: u32 = BK + 1u;      // pitch of p_sh
const NQL: u32 = (BQ * DC4 + WG - 1u) / WG; // Q chunk vec4s per invocation
const NKL: u32 = (BK * DC4 + WG - 1u) / WG; // K chunk vec4s per invocation

// The most negative finite f32 (WGSL has no -inf literal); marks masked scores.
const LOWEST: f32 = -3.40282347e38;

var<workgroup> u_sh: array<vec4<f32>, {{U_LEN}}>;
var<workgroup> p_sh: array<f32, BQ * LDP>;
var<workgroup> m_sh: array<f32, BQ>;
var<workgroup> l_sh: array<f32, BQ>;
var<workgroup> a_sh: array<f32, BQ>;

// Key j (< ctx, >= the sequence's start: the tiles begin there) is visible
// from the query at cache row pq.
fn sees(pq: i32, j: u32) -> bool {
    if pq < 0 {
        return false;
    }
    let uq = u32(pq);
    return j <= uq && (p.window == 0u || uq - j < p.window);
}

@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    // Items spread over x and y (op::grid); uniform per workgroup.
    let item = wg.x + wg.y * nwg.x;
    let rows = p.n_q * p.group;
    let n_tiles = (rows + BQ - 1u) / BQ;
    if item >= n_tiles * p.n_kv {
        return;
    }
    let back = item / p.n_kv;
    let kvh = item - back * p.n_kv;
    let r0 = (n_tiles - 1u - back) * BQ;

    // Keys [lo, hi) that some row of the tile sees: none before the
    // sequence's start, so no tile below it is loaded. i32 wraps like the
    // CPU reference's.
    let p0 = seq[1];
    let first = p0 + i32(r0 / p.group);
    let last = p0 + i32((min(r0 + BQ, rows) - 1u) / p.group);
    var hi = 0u;
    var lo = u32(max(seq[0], 0));
    if last >= 0 {
        hi = min(u32(last) + 1u, p.ctx);
    }
    if p.window > 0u && first >= 0 && u32(first) + 1u > p.window {
        lo = max(lo, u32(first) + 1u - p.window);
    }

    let tx = lid & 15u;
    let ty = lid >> 4u;

    // Positions of this invocation's rows; rows past the end see nothing.
    var pq: array<i32, RQ>;
    for (var i = 0u; i < RQ; i++) {
        let r = r0 + ty + 16u * i;
        pq[i] = select(-1, p0 + i32(r / p.group), r < rows);
    }
    // The q row (element offset) and chunk column of each Q vec4 this
    // invocation stages; qrow = HD * rows marks none.
    var qrow: array<u32, NQL>;
    for (var n = 0u; n < NQL; n++) {
        let e = lid + WG * n;
        let r = r0 + (e >> DC4_SHIFT);
        qrow[n] = 0xffffffffu;
        if e < BQ * DC4 && r < rows {
            let t = r / p.group;
            let h = kvh * p.group + r - t * p.group;
            qrow[n] = (t * p.n_head + h) * HD;
        }
    }
    if lid < BQ {
        m_sh[lid] = LOWEST;
        l_sh[lid] = 0.0;
    }

    var acc: array<array<vec4<f32>, DV>, RQ>;
    for (var j0 = lo; j0 < hi; j0 += BK) {
        // 1. S = (scale Q) K^T.
        var s: array<array<f32, RK>, RQ>;
        for (var d0 = 0u; d0 < HD; d0 += DC) {
            for (var n = 0u; n < NQL; n++) {
                let e = lid + WG * n;
                if e < BQ * DC4 {
                    let c = e & (DC4 - 1u);
                    let d = d0 + 4u * c;
                    var x = vec4<f32>(0.0);
                    if qrow[n] != 0xffffffffu && d < HD {
                        x = ld_q(qrow[n] + d, HD - d) * p.scale;
                    }
                    u_sh[(e >> DC4_SHIFT) * LDS + c] = x;
                }
            }
            for (var n = 0u; n < NKL; n++) {
                let e = lid + WG * n;
                if e < BK * DC4 {
                    let c = e & (DC4 - 1u);
                    let kr = e >> DC4_SHIFT;
                    let j = j0 + kr;
                    let d = d0 + 4u * c;
                    var x = vec4<f32>(0.0);
                    if j < hi && d < HD {
                        x = ld_k((j * p.n_kv + kvh) * HD + d, HD - d);
                    }
                    u_sh[K_OFF + kr * LDS + c] = x;
                }
            }
            workgroupBarrier();
            for (var c = 0u; c < DC4; c++) {
                var kv: array<vec4<f32>, RK>;
                for (var j = 0u; j < RK; j++) {
                    kv[j] = u_sh[K_OFF + (tx + 16u * j) * LDS + c];
                }
                for (var i = 0u; i < RQ; i++) {
                    let qv = u_sh[(ty + 16u * i) * LDS + c];
                    for (var j = 0u; j < RK; j++) {
                        s[i][j] += dot(qv, kv[j]);
                    }
                }
            }
            workgroupBarrier();
        }
        for (var i = 0u; i < RQ; i++) {
            for (var j = 0u; j < RK; j++) {
                let key = j0 + tx + 16u * j;
                let seen = key < hi && sees(pq[i], key);
                p_sh[(ty + 16u * i) * LDP + tx + 16u * j] = select(LOWEST, s[i][j], seen);
            }
        }
        workgroupBarrier();

        // 2. Online softmax, one invocation per row.
        if lid < BQ {
            let b = lid * LDP;
            let m_old = m_sh[lid];
            var mx = m_old;
            for (var j = 0u; j < BK; j++) {
                mx = max(mx, p_sh[b + j]);
            }
            var sum = 0.0;
            for (var j = 0u; j < BK; j++) {
                let x = p_sh[b + j];
                let e = select(0.0, exp(x - mx), x > LOWEST);
                p_sh[b + j] = e;
                sum += e;
            }
            let alpha = exp(m_old - mx);
            a_sh[lid] = alpha;
            m_sh[lid] = mx;
            l_sh[lid] = l_sh[lid] * alpha + sum;
        }

        // 3. acc = acc * alpha + P V.
        for (var k0 = 0u; k0 < BK; k0 += KC) {
            for (var e = lid; e < KC * HV; e += WG) {
                let kr = e >> HV_SHIFT;
                let j = j0 + k0 + kr;
                let d = 4u * (e & (HV - 1u));
                var x = vec4<f32>(0.0);
                if j < hi && d < HD {
                    x = ld_v((j * p.n_kv + kvh) * HD + d, HD - d);
                }
                u_sh[e] = x;
            }
            workgroupBarrier();
            if k0 == 0u {
                for (var i = 0u; i < RQ; i++) {
                    let alpha = a_sh[ty + 16u * i];
                    for (var c = 0u; c < DV; c++) {
                        acc[i][c] *= alpha;
                    }
                }
            }
            for (var kk = 0u; kk < KC; kk++) {
                var vv: array<vec4<f32>, DV>;
                for (var c = 0u; c < DV; c++) {
                    vv[c] = u_sh[kk * HV + tx + 16u * c];
                }
                for (var i = 0u; i < RQ; i++) {
                    let pv = p_sh[(ty + 16u * i) * LDP + k0 + kk];
                    for (var c = 0u; c < DV; c++) {
                        acc[i][c] += pv * vv[c];
                    }
                }
            }
            workgroupBarrier();
        }
    }
    // l_sh's last writes (or its initial zeros) before everyone reads it.
    workgroupBarrier();

    for (var i = 0u; i < RQ; i++) {
        let rr = ty + 16u * i;
        let r = r0 + rr;
        if r < rows {
            let t = r / p.group;
            let h = kvh * p.group + r - t * p.group;
            let l = l_sh[rr];
            // No visible key (a row before 0 or before start): zeros, like
            // the reference.
            let inv = select(0.0, 1.0 / l, l > 0.0);
            for (var c = 0u; c < DV; c++) {
                let d = 4u * (tx + 16u * c);
                if d < HD {
                    st_out((t * p.n_head + h) * HD + d, HD - d, acc[i][c] * inv);
                }
            }
        }
    }
}
