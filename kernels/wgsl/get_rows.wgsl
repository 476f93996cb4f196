// Embedding lookup: out[t, :] = table[ids[t], :], the table in any dtype
// qmatmul_decode.wgsl decodes (GPU layout of kernels/src/layout.rs), out
// f32. One invocation per CHUNK values of one output row. An id outside
// [0, V) gives a zero row (get_rows.rs documents why).

struct Params {
    t: u32,      // ids
    v: u32,      // rows of the table
    d: u32,      // values per row
    chunks: u32, // chunks per row
    blocks: u32, // blocks per row
    s1: u32,     // section offsets in u32 words (layout.rs)
    s2: u32,
    s3: u32,
}

const WG: u32 = {{WG}};
const CHUNK: u32 = {{CHUNK}};
const CV: u32 = CHUNK / 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;

var<private> wv: array<vec4<f32>, CV>;

{{DECODERS}}

@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if i >= p.t * p.chunks {
        return;
    }
    let t = i / p.chunks;
    let c = i - t * p.chunks;
    let id = ids[t];
    if id >= 0 && u32(id) < p.v {
        {{DECODE}}(u32(id), c);
    } else {
        for (var v = 0u; v < CV; v++) {
            wv[v] = vec4<f32>(0.0);
        }
    }
    let o = (t * p.d + c * CHUNK) >> 2u;
    for (var v = 0u; v < CV; v++) {
        out[o + v] = wv[v];
    }
}
