// Decode attention: out[t, h] = softmax_j(scale * q[t, h] . k[j, g]) v[j, g]
// over the keys j this query sees, g = h / group (GQA). Query t sits at
// cache row r (query_range: row + t of the one seq pair, or row_t of its
// own); it sees key j iff start <= j <= r, j < ctx and, with a sliding
// window, r - j < window. No scores matrix in memory.
//
// One workgroup per (query, head), or per (query, head, chunk of its
// keys) when split. Keys go by blocks of WG:
//   1. each key of the block is scored against q (pre-scaled): with
//      subgroups (LPK > 0), LPK lanes of one subgroup per key, each
//      dotting VPL vec4s of it, so a key row is read coalesced, summed by
//      shuffles, the score left in p_sh; else invocation i scores key
//      j0 + i alone, from q held in workgroup memory. Then the workgroup
//      reduces the block's max and its sum of exp (subgroup or
//      workgroup-memory reduction, REDUCE);
//   2. the online softmax (Milakov & Gimelshein 2018): the running max m,
//      sum l and output acc are rescaled by exp(m_old - m_new) per block;
//   3. for p . V, invocation i owns dimension i % HD of a key split i / HD
//      (WG / HD splits, so V rows are read coalesced), or with HD a
//      multiple of 4 the vec4 i % (HD / 4) of split i / (HD / 4), eight
//      keys loaded per trip; splits are summed at the end through
//      workgroup memory.

// Params and bindings: attn_io.wgsl.
{{IO}}

const WG: u32 = {{WG}};
const HD: u32 = {{HD}};
// Key splits in the p . V step (HD <= WG, checked on the host): each
// invocation owns one dimension of a split, or with HD a multiple of 4
// (V4) one vec4 of dimensions (Q4 of them per key) of a split.
const SPLITS: u32 = WG / HD;
const V4: bool = HD % 4u == 0u;
const Q4: u32 = HD / 4u;
const SPLITS4: u32 = WG / Q4;
// Key chunks per (query, head): 1, or enough for the most keys a query
// sees when split (attention_split.rs).
const CHUNKS: u32 = {{CHUNKS}};
// Lanes per key in the scores (0: one invocation per key).
const LPK: u32 = {{LPK}};

{{REDUCE}}
// The most negative finite f32 (WGSL has no -inf literal).
const LOWEST: f32 = -3.40282347e38;

var<workgroup> q_sh: array<f32, HD>;
// A block's probabilities, then the key splits' partial outputs (pv_sh
// with V4).
var<workgroup> p_sh: array<f32, WG>;
var<workgroup> pv_sh: array<vec4<f32>, WG>;

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    // Items spread over x and y (op::grid); uniform per workgroup. Split
    // into key chunks (attention_split.rs), workgroup `flat` takes chunk
    // `flat % CHUNKS` of item `flat / CHUNKS`.
    let flat = ids.wg.x + ids.wg.y * ids.nwg.x;
    let item = flat / CHUNKS;
    let chunk = flat - item * CHUNKS;
    if item >= p.n_q * p.n_head {
        return;
    }
    let t = item / p.n_head;
    let h = item - t * p.n_head;
    let kvh = h / p.group;
    let lid = ids.lid;

    // Visible keys [lo, hi) (empty when lo >= hi), once per workgroup.
    let range = query_range(t);
    let pq = range.x;
    var hi = 0u;
    var lo = u32(max(range.y, 0));
    if pq >= 0 {
        hi = min(u32(pq) + 1u, p.ctx);
        if p.window > 0u && u32(pq) + 1u > p.window {
            lo = max(lo, u32(pq) + 1u - p.window);
        }
    }

    if CHUNKS > 1u {
        // Chunk c: keys lo + c len .. of the visible ones, len = the
        // visible keys / CHUNKS rounded up (at most WG: attention_split.rs
        // sizes CHUNKS so), so chunks follow each query's sequence
        // wherever it lies in the cache and short ones still spread over
        // every chunk's workgroup; an empty range leaves l = 0.
        let len = (max(hi, lo) - lo + CHUNKS - 1u) / CHUNKS;
        lo += chunk * len;
        hi = max(lo, min(hi, lo + len));
    }

    for (var d = lid; d < HD; d += WG) {
        q_sh[d] = q[item * HD + d] * p.scale;
    }
    workgroupBarrier();
{{Q_LANES}}

    let my_d = lid % HD;
    let my_split = lid / HD;
    let my_q = lid % Q4;
    let my_split4 = lid / Q4;
    var acc4 = vec4<f32>(0.0);
    var m = LOWEST;
    var l = 0.0;
    var acc = 0.0;
    for (var j0 = lo; j0 < hi; j0 += WG) {
        let j = j0 + lid;
        var s = LOWEST;
        if LPK > 0u {
            {{SCORE}}
        } else if j < hi {
            let kb = (j * p.n_kv + kvh) * HD;
            // Four independent sums: the loads of a key row overlap
            // instead of waiting on one running sum.
            var s4 = vec4<f32>(0.0);
            var d = 0u;
            for (; d + 3u < HD; d += 4u) {
                let qv = vec4<f32>(q_sh[d], q_sh[d + 1u], q_sh[d + 2u], q_sh[d + 3u]);
                s4 = fma(qv, k4_at(kb + d), s4);
            }
            s = (s4.x + s4.y) + (s4.z + s4.w);
            for (; d < HD; d++) {
                s += q_sh[d] * k_at(kb + d);
            }
        }
        let m_new = max(m, wg_max(s, ids));
        var e = 0.0;
        if j < hi {
            e = exp(s - m_new);
        }
        p_sh[lid] = e;
        // wg_sum's barrier also publishes p_sh.
        let alpha = exp(m - m_new);
        l = l * alpha + wg_sum(e, ids);
        m = m_new;
        let n = min(WG, hi - j0);
        if V4 && my_split4 < SPLITS4 {
            // Eight keys' loads in flight per trip: a lone load per trip
            // would wait out the memory latency once per key.
            let stride = SPLITS4 * p.n_kv * HD;
            var a = vec4<f32>(0.0);
            var jj = my_split4;
            var r = ((j0 + jj) * p.n_kv + kvh) * HD + 4u * my_q;
            for (; jj + 7u * SPLITS4 < n; jj += 8u * SPLITS4) {
                var vs: array<vec4<f32>, 8>;
                for (var u = 0u; u < 8u; u++) {
                    vs[u] = v4_at(r + u * stride);
                }
                for (var u = 0u; u < 8u; u++) {
                    a += p_sh[jj + u * SPLITS4] * vs[u];
                }
                r += 8u * stride;
            }
            for (; jj < n; jj += SPLITS4) {
                a += p_sh[jj] * v4_at(r);
                r += stride;
            }
            acc4 = acc4 * alpha + a;
        } else if !V4 && my_split < SPLITS {
            var a = 0.0;
            for (var jj = my_split; jj < n; jj += SPLITS) {
                a += p_sh[jj] * v_at(((j0 + jj) * p.n_kv + kvh) * HD + my_d);
            }
            acc = acc * alpha + a;
        }
        // The next block overwrites p_sh.
        workgroupBarrier();
    }

    if V4 {
        pv_sh[lid] = acc4;
    } else if my_split < SPLITS {
        p_sh[lid] = acc;
    }
    workgroupBarrier();
    if lid < HD {
        var o = 0.0;
        if V4 {
            for (var s = 0u; s < SPLITS4; s++) {
                o += pv_sh[s * Q4 + lid / 4u][lid % 4u];
            }
        } else {
            for (var s = 0u; s < SPLITS; s++) {
                o += p_sh[s * HD + lid];
            }
        }
        {{FINISH}}
    }
}
