// KV-cache append: cache[row_t, :] = src[t, :] for t in 0..rows, in place
// in the resident cache (rows at or past ctx, or before 0, are skipped: the
// layer above reports context overflow). seq holds (start, row) pairs
// (kv_append.rs): one for all rows, row_t = row + t, or one per row,
// row_t = row of pair t. Starts matter to attention only.
//
// Rows are [n_kv_heads, head_dim] flattened: `row_len` units of S, where a
// unit is a vec4<f32> (F32 cache, row divisible by 4), an f32, or a pair of
// f32 packed into one u32 of two f16s (F16 cache; core WGSL, no f16 feature).
// One invocation per unit; workgroups spread over x and y (op::grid).

struct Params {
    rows: u32,      // T, rows of src
    ctx: u32,       // rows of the cache
    row_len: u32,   // units per row
    per_query: u32, // 1: a seq pair per row; 0: one pair for all
}

const WG: u32 = {{WG}};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<{{SRC}}>;
@group(0) @binding(2) var<storage, read> seq: array<i32>;
@group(0) @binding(3) var<storage, read_write> cache: array<{{DST}}>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if i >= p.rows * p.row_len {
        return;
    }
    let t = i / p.row_len;
    let c = i - t * p.row_len;
    // i32 arithmetic wraps in WGSL; the CPU reference wraps the same way.
    let one = p.per_query == 0u;
    let r = seq[select(2u * t, 0u, one) + 1u] + select(0, i32(t), one);
    if r < 0 || u32(r) >= p.ctx {
        return;
    }
    cache[u32(r) * p.row_len + c] = {{CONVERT}}(src[i]);
}
