// Quantized matrix-vector product for few rows of x (decode):
// y[m, n] = sum_k x[m, k] * W[n, k], W [N, K] quantized (layout.rs), x and
// y f32, f32 accumulation.
//
// One workgroup per ROWS weight rows and MR rows of x (workgroup z). Its WG
// invocations stride the row's chunks (CHUNK values: one block of the
// legacy types, one 32-value sub-block of the K-quants, 8 values of f16, 4
// of f32):
// each decodes a chunk once into registers and uses it for all MR rows of
// x, so W, the dominant traffic, is read once per MR rows. The ROWS * MR
// partial sums are then reduced across the workgroup (through subgroups
// where the device has them, else through workgroup memory).

struct Params {
    m: u32,      // rows of x (every batch)
    n: u32,      // rows of W
    k: u32,
    chunks: u32, // chunks per row of W
    blocks: u32, // blocks per row of W
    s1: u32,     // section offsets in u32 words (layout.rs)
    s2: u32,
    s3: u32,
}

const WG: u32 = {{WG}};
const ROWS: u32 = {{ROWS}};
const MR: u32 = {{MR}};
const RM: u32 = ROWS * MR;
const CHUNK: u32 = {{CHUNK}};
const CV: u32 = CHUNK / 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<private> wv: array<vec4<f32>, CV>;

{{DECODERS}}

{{REDUCE}}

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let n0 = (ids.wg.x + ids.wg.y * ids.nwg.x) * ROWS;
    // Uniform across the workgroup, so no barrier is skipped by some only.
    if n0 >= p.n {
        return;
    }
    let m0 = ids.wg.z * MR;
    var acc: array<f32, RM>;
    for (var c = ids.lid; c < p.chunks; c += WG) {
        for (var r = 0u; r < ROWS; r++) {
            let n = n0 + r;
            if n < p.n {
                {{DECODE}}(n, c);
                for (var mi = 0u; mi < MR; mi++) {
                    let m = m0 + mi;
                    if m < p.m {
                        let xo = (m * p.k + c * CHUNK) >> 2u;
                        var s = 0.0;
                        for (var v = 0u; v < CV; v++) {
                            s = fma(x[xo + v].x, wv[v].x, s);
                            s = fma(x[xo + v].y, wv[v].y, s);
                            s = fma(x[xo + v].z, wv[v].z, s);
                            s = fma(x[xo + v].w, wv[v].w, s);
                        }
                        acc[r * MR + mi] += s;
                    }
                }
            }
        }
    }
    let total = reduce(acc, ids);
    // Invocation i < RM holds the sum for (r, mi) = (i / MR, i % MR).
    if ids.lid < RM {
        let n = n0 + ids.lid / MR;
        let m = m0 + ids.lid % MR;
        if n < p.n && m < p.m {
            y[m * p.n + n] = total;
        }
    }
}
