// The params (mirroring `attention::Params`, as flash_attn.wgsl's do) and
// bindings of attention.wgsl. {{K}} and {{V}} are the caches' element
// types (vectors of them where head_dim is a multiple of 4).
// Layouts: q, out [n_q, n_head, HD]; k, v [ctx, n_kv, HD], f32 or f16;
// seq [1 or n_q, 2] (start, row) pairs (kv_append.rs).

struct Params {
    n_q: u32,     // T
    n_head: u32,
    n_kv: u32,
    ctx: u32,
    group: u32,   // n_head / n_kv
    window: u32,  // 0 = no sliding window
    scale: f32,
    per_query: u32, // 1: a seq pair per query; 0: one pair for all
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<{{K}}>;
@group(0) @binding(3) var<storage, read> v: array<{{V}}>;

// k_at(i), v_at(i): element i of a cache as f32 (an F16 cache is read as
// u32 pairs, so no f16 feature is needed); k4_at(i), v4_at(i): elements
// i..i + 3, one load where the caches are bound as vectors (then i is a
// multiple of 4).
{{KV_LOAD}}
@group(0) @binding(4) var<storage, read> seq: array<i32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

// Query t's cache row and the first key its sequence may see: (row + t,
// start) from one pair, (row_t, start_t) from a pair per query. i32
// arithmetic wraps, like the CPU reference's.
fn query_range(t: u32) -> vec2<i32> {
    let one = p.per_query == 0u;
    let s = select(2u * t, 0u, one);
    return vec2<i32>(seq[s + 1u] + select(0, i32(t), one), seq[s]);
}
