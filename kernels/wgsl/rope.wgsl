// Rotary position embedding, ggml's rope with ext_factor = 0 and
// attn_factor = 1 (ggml-cpu ops.cpp: ggml_rope_cache_init, rope_yarn):
// pair j of a head (j < n_dims / 2) turns by
//     theta_j = freq_scale * (pos * theta_scale^j),
// theta_scale = freq_base^(-2 / n_dims) computed once on the CPU, and the
// power taken as ggml does, by j f32 multiplications, so angles are
// bit-identical to ggml's. Pairs are (2j, 2j + 1) in normal mode and
// (j, j + n_dims / 2) in neox mode; values past n_dims pass through.
// One invocation per pair slot j < head_dim / 2 of one head of one token.

struct Params {
    t: u32,          // tokens
    heads: u32,
    head_dim: u32,
    n_dims: u32,     // rotated dimensions (even, <= head_dim)
    theta_scale: f32,
    freq_scale: f32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 64;
const NEOX: bool = {{NEOX}};

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<i32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

{{ANGLE}}

@compute @workgroup_size(WG)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let half_dim = p.head_dim >> 1u;
    let i = (wg.x + wg.y * nwg.x) * WG + lid;
    if i >= p.t * p.heads * half_dim {
        return;
    }
    let j = i % half_dim;
    let row = i / half_dim; // token * heads + head
    let tok = row / p.heads;
    let base = row * p.head_dim;
    if 2u * j >= p.n_dims {
        y[base + 2u * j] = x[base + 2u * j];
        y[base + 2u * j + 1u] = x[base + 2u * j + 1u];
        return;
    }
    let cs = rope_cs(pos[tok], j, p.theta_scale, p.freq_scale);
    let c = cs.x;
    let sn = cs.y;
    var i0 = base + 2u * j;
    var i1 = i0 + 1u;
    if NEOX {
        i0 = base + j;
        i1 = i0 + (p.n_dims >> 1u);
    }
    let x0 = x[i0];
    let x1 = x[i1];
    y[i0] = x0 * c - x1 * sn;
    y[i1] = x0 * sn + x1 * c;
}
