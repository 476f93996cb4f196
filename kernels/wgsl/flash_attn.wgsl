// Flash attention (prefill): the same function as attention.wgsl (causal,
// sliding window, GQA; query t at position pos + t) for any number of
// queries, without a seq x seq matrix (Dao et al. 2022, FlashAttention).
//
// One workgroup per (tile of BQ queries, head). The tile's queries
// (pre-scaled) stay in workgroup memory; keys go by tiles of BK through one
// buffer holding K, then V:
//   1. S = Q K^T for the BQ x BK tile, masked scores = LOWEST;
//   2. each row's new max m_new = max(m, rowmax S) and P = exp(S - m_new)
//      (masked: 0), computed once per score;
//   3. the online softmax update per row: l = l * exp(m - m_new) + rowsum P,
//      acc = acc * exp(m - m_new) + P V. Invocation (r, c) owns row r and
//      dimensions c, c + TPR, ... (TPR invocations per row), so V rows are
//      read across consecutive invocations and acc stays in registers.
// Key tiles cover only the union of what the tile's queries see (causal
// and window skipping). f32 throughout.

// Params and bindings: attn_io.wgsl.
{{IO}}

const WG: u32 = {{WG}};
const BQ: u32 = {{BQ}};
const BK: u32 = {{BK}};
const HD: u32 = {{HD}};
const TPR: u32 = WG / BQ;   // invocations per query row
const DPT: u32 = {{DPT}};   // output dimensions per invocation: ceil(HD / TPR)

// The most negative finite f32 (WGSL has no -inf literal); marks masked scores.
const LOWEST: f32 = -3.40282347e38;

var<workgroup> q_sh: array<f32, BQ * HD>;
var<workgroup> kv_sh: array<f32, BK * HD>;
var<workgroup> s_sh: array<f32, BQ * BK>;
var<workgroup> p_sh: array<f32, BQ * BK>;
// Each row's running max before the current key tile.
var<workgroup> m_sh: array<f32, BQ>;

// Key j (< ctx) is visible from query position pq.
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
    let n_tiles = (p.n_q + BQ - 1u) / BQ;
    if item >= n_tiles * p.n_head {
        return;
    }
    let tile = item / p.n_head;
    let h = item - tile * p.n_head;
    let kvh = h / p.group;
    let t0 = tile * BQ;
    let t_end = min(t0 + BQ, p.n_q);

    // Keys [lo, hi) that some query of the tile sees. i32 wraps like the
    // CPU reference's.
    let p0 = pos[0];
    let first = p0 + i32(t0);
    let last = p0 + i32(t_end - 1u);
    var hi = 0u;
    var lo = 0u;
    if last >= 0 {
        hi = min(u32(last) + 1u, p.ctx);
    }
    if p.window > 0u && first >= 0 && u32(first) + 1u > p.window {
        lo = u32(first) + 1u - p.window;
    }

    for (var i = lid; i < BQ * HD; i += WG) {
        let r = i / HD;
        let t = t0 + r;
        var x = 0.0;
        if t < p.n_q {
            x = q[(t * p.n_head + h) * HD + i - r * HD] * p.scale;
        }
        q_sh[i] = x;
    }
    if lid < BQ {
        m_sh[lid] = LOWEST;
    }

    let r = lid / TPR;
    let c = lid - r * TPR;
    var m = LOWEST;
    var l = 0.0;
    var acc: array<f32, DPT>;
    for (var j0 = lo; j0 < hi; j0 += BK) {
        for (var i = lid; i < BK * HD; i += WG) {
            let kr = i / HD;
            let j = j0 + kr;
            var x = 0.0;
            if j < hi {
                x = k_at((j * p.n_kv + kvh) * HD + i - kr * HD);
            }
            kv_sh[i] = x;
        }
        workgroupBarrier();
        for (var e = lid; e < BQ * BK; e += WG) {
            let qi = e / BK;
            let j = j0 + e - qi * BK;
            var s = LOWEST;
            if t0 + qi < p.n_q && j < hi && sees(p0 + i32(t0 + qi), j) {
                s = 0.0;
                let qb = qi * HD;
                let kb = (e - qi * BK) * HD;
                for (var d = 0u; d < HD; d++) {
                    s += q_sh[qb + d] * kv_sh[kb + d];
                }
            }
            s_sh[e] = s;
        }
        workgroupBarrier();
        for (var i = lid; i < BK * HD; i += WG) {
            let kr = i / HD;
            let j = j0 + kr;
            var x = 0.0;
            if j < hi {
                x = v_at((j * p.n_kv + kvh) * HD + i - kr * HD);
            }
            kv_sh[i] = x;
        }
        for (var e = lid; e < BQ * BK; e += WG) {
            let qi = e / BK;
            var mx = m_sh[qi];
            for (var jj = 0u; jj < BK; jj++) {
                mx = max(mx, s_sh[qi * BK + jj]);
            }
            let s = s_sh[e];
            p_sh[e] = select(0.0, exp(s - mx), s > LOWEST);
        }
        workgroupBarrier();
        // The same max as the P step (same reads, same order), so P, l and
        // acc agree on it.
        var mx = m;
        for (var jj = 0u; jj < BK; jj++) {
            mx = max(mx, s_sh[r * BK + jj]);
        }
        let alpha = exp(m - mx);
        var sum = 0.0;
        for (var jj = 0u; jj < BK; jj++) {
            sum += p_sh[r * BK + jj];
        }
        l = l * alpha + sum;
        m = mx;
        for (var i = 0u; i < DPT; i++) {
            let d = c + i * TPR;
            if d < HD {
                var a = 0.0;
                for (var jj = 0u; jj < BK; jj++) {
                    a += p_sh[r * BK + jj] * kv_sh[jj * HD + d];
                }
                acc[i] = acc[i] * alpha + a;
            }
        }
        // Everyone is done with this tile's kv_sh, s_sh, p_sh and m_sh.
        workgroupBarrier();
        if c == 0u {
            m_sh[r] = m;
        }
    }

    let t = t0 + r;
    if t < p.n_q {
        for (var i = 0u; i < DPT; i++) {
            let d = c + i * TPR;
            if d < HD {
                // No visible key (a position before 0): zeros, like the reference.
                out[(t * p.n_head + h) * HD + d] = select(0.0, acc[i] / l, l > 0.0);
            }
        }
    }
}
