// Sums attention partials over key chunks (attention_split.rs): for item i
// (a query and head) with chunks c of [acc_c (HD values), m_c, l_c],
// out[i] = sum_c acc_c exp(m_c - M) / sum_c l_c exp(m_c - M), M = max_c m_c;
// zeros when no chunk saw a key (every l_c = 0). One workgroup per item;
// every invocation computes M and the denominator (chunks are few), then
// invocations stride the output dimensions.

struct Params {
    items: u32,
    chunks: u32,
    hd: u32,
    _pad: u32,
}

const WG: u32 = {{WG}};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// The most negative finite f32 (WGSL has no -inf literal).
const LOWEST: f32 = -3.40282347e38;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = wg.x + wg.y * nwg.x;
    if item >= p.items {
        return;
    }
    let row = p.hd + 2u;
    let base = item * p.chunks * row;
    var big = LOWEST;
    for (var c = 0u; c < p.chunks; c++) {
        big = max(big, part[base + c * row + p.hd]);
    }
    var l = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        l += part[base + c * row + p.hd + 1u] * exp(part[base + c * row + p.hd] - big);
    }
    for (var d = lid; d < p.hd; d += WG) {
        var a = 0.0;
        for (var c = 0u; c < p.chunks; c++) {
            a += part[base + c * row + d] * exp(part[base + c * row + p.hd] - big);
        }
        out[item * p.hd + d] = select(0.0, a / l, l > 0.0);
    }
}
