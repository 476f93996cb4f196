// What attention.wgsl and flash_attn.wgsl share: the params (mirroring
// `attention::Params`) and the bindings. {{KV}} is the cache's element type.
// Layouts: q, out [n_q, n_head, HD]; k, v [ctx, n_kv, HD], f32 or f16.

struct Params {
    n_q: u32,     // T
    n_head: u32,
    n_kv: u32,
    ctx: u32,
    group: u32,   // n_head / n_kv
    window: u32,  // 0 = no sliding window
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<{{KV}}>;
@group(0) @binding(3) var<storage, read> v: array<{{KV}}>;

// k_at(i), v_at(i): element i of a cache as f32 (an F16 cache is read as
// u32 pairs, so no f16 feature is needed).
{{KV_LOAD}}
@group(0) @binding(4) var<storage, read> pos: array<i32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
