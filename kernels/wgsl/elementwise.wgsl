// Elementwise ops on F32: out = f(a), out = a * s, or out = a (+|*) b where b
// has a's shape or is one row broadcast over a's rows.
//
// Each invocation handles one element of type T, `f32` or `vec4<f32>` (the
// vec4 variant is picked when every length is a multiple of 4; it moves the
// same bytes in a quarter of the instructions). Workgroups may be spread
// over x and y (`op::grid`) when there are more than 65535.

struct Params {
    n: u32,   // elements of type T in `a` and `out`
    b_n: u32, // elements of type T in `b`: n, or one row when broadcasting
    s: f32,   // the factor of `scale`
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<{{T}}>;
{{B_BINDING}}
@group(0) @binding({{OUT_BINDING}}) var<storage, read_write> out: array<{{T}}>;

// ggml's tanh approximation of GELU (`ggml_gelu_f32`):
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
const SQRT_2_OVER_PI: f32 = 0.7978845608028654;
const GELU_COEF_A: f32 = 0.044715;

// tanh through exp, written so that it saturates to +-1 instead of giving
// inf/inf = NaN for large |y| (some drivers build tanh that way).
fn tanh_sat(y: {{T}}) -> {{T}} {
    return 1.0 - 2.0 / (exp(2.0 * y) + 1.0);
}

fn gelu(x: {{T}}) -> {{T}} {
    return 0.5 * x * (1.0 + tanh_sat(SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)));
}

// x * sigmoid(x); exp(-x) overflowing to inf gives -0, the right limit.
fn silu(x: {{T}}) -> {{T}} {
    return x / (1.0 + exp(-x));
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * nwg.x) * 256u + lid;
    if i >= p.n {
        return;
    }
    let x = a[i];
    out[i] = {{EXPR}};
}
