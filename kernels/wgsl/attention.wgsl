// Decode attention: out[t, h] = softmax_j(scale * q[t, h] . k[j, g]) v[j, g]
// over the keys j this query sees, g = h / group (GQA). Query t sits at
// cache row r (query_range: row + t of the one seq pair, or row_t of its
// own); it sees key j iff start <= j <= r, j < ctx and, with a sliding
// window, r - j < window. No scores matrix in memory.
//
// One workgroup per (query, head). Keys go by blocks of WG:
//   1. invocation i scores key j0 + i against q (held, pre-scaled, in
//      workgroup memory), then the workgroup reduces the block's max and
//      its sum of exp (subgroup or workgroup-memory reduction, REDUCE);
//   2. the online softmax (Milakov & Gimelshein 2018): the running max m,
//      sum l and output acc are rescaled by exp(m_old - m_new) per block;
//   3. for p . V, invocation i owns dimension i % HD of a key split i / HD
//      (WG / HD splits, so V rows are read coalesced); splits are summed at
//      the end through workgroup memory.

// Params and bindings: attn_io.wgsl.
{{IO}}

const WG: u32 = {{WG}};
const HD: u32 = {{HD}};
// Key splits in the p . V step (HD <= WG, checked on the host).
const SPLITS: u32 = WG / HD;
// Key chunks per (query, head): 1, or enough for the most keys a query
// sees when split (attention_split.rs).
const CHUNKS: u32 = {{CHUNKS}};

{{REDUCE}}
// The most negative finite f32 (WGSL has no -inf literal).
const LOWEST: f32 = -3.40282347e38;

var<workgroup> q_sh: array<f32, HD>;
// A block's probabilities, then the key splits' partial outputs.
var<workgroup> p_sh: array<f32, WG>;

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
        // Chunk c: keys lo + c WG .. of the visible ones, so chunks follow
        // each query's sequence wherever it lies in the cache; an empty
        // range leaves l = 0.
        lo += chunk * WG;
        hi = max(lo, min(hi, lo + WG));
    }

    for (var d = lid; d < HD; d += WG) {
        q_sh[d] = q[item * HD + d] * p.scale;
    }
    workgroupBarrier();

    let my_d = lid % HD;
    let my_split = lid / HD;
    var m = LOWEST;
    var l = 0.0;
    var acc = 0.0;
    for (var j0 = lo; j0 < hi; j0 += WG) {
        let j = j0 + lid;
        var s = LOWEST;
        if j < hi {
            let kb = (j * p.n_kv + kvh) * HD;
            // Four independent sums: the loads of a key row overlap
            // instead of waiting on one running sum.
            var s4 = vec4<f32>(0.0);
            var d = 0u;
            for (; d + 3u < HD; d += 4u) {
                let qv = vec4<f32>(q_sh[d], q_sh[d + 1u], q_sh[d + 2u], q_sh[d + 3u]);
                let kv = vec4<f32>(k_at(kb + d), k_at(kb + d + 1u), k_at(kb + d + 2u), k_at(kb + d + 3u));
                s4 = fma(qv, kv, s4);
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
        if my_split < SPLITS {
            let n = min(WG, hi - j0);
            var a = 0.0;
            for (var jj = my_split; jj < n; jj += SPLITS) {
                a += p_sh[jj] * v_at(((j0 + jj) * p.n_kv + kvh) * HD + my_d);
            }
            acc = acc * alpha + a;
        }
        // The next block overwrites p_sh.
        workgroupBarrier();
    }

    if my_split < SPLITS {
        p_sh[lid] = acc;
    }
    workgroupBarrier();
    if lid < HD {
        var o = 0.0;
        for (var s = 0u; s < SPLITS; s++) {
            o += p_sh[s * HD + lid];
        }
        {{FINISH}}
    }
}
