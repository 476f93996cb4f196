// Batched transpose of F32: x [batch, R, C] -> out [batch, C, R].
//
// One workgroup moves one 32x32 tile through workgroup memory so that both
// the global reads (along C) and the global writes (along R) are
// contiguous. 32x8 invocations each move 4 rows of the tile. The tile row
// is padded to 33 floats so the column-wise reads of the second half hit 32
// different banks.

struct Params {
    rows: u32,    // R
    cols: u32,    // C
    tiles_c: u32, // ceil(C / 32)
    tiles_per_batch: u32,
    tiles: u32,   // all tiles of all batches
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const T: u32 = 32u;
const PITCH: u32 = 33u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

var<workgroup> tile: array<f32, 1056>; // T * PITCH

@compute @workgroup_size(32, 8)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) l: vec3<u32>,
) {
    // Tiles may be spread over x and y (op::grid); uniform per workgroup.
    let t = wg.x + wg.y * nwg.x;
    if t >= p.tiles {
        return;
    }
    // Once per invocation, so plain division is fine here.
    let b = t / p.tiles_per_batch;
    let in_batch = t - b * p.tiles_per_batch;
    let r0 = (in_batch / p.tiles_c) * T;
    let c0 = (in_batch % p.tiles_c) * T;
    let base = b * p.rows * p.cols;
    for (var j = 0u; j < T; j += 8u) {
        let r = r0 + l.y + j;
        let c = c0 + l.x;
        if r < p.rows && c < p.cols {
            tile[(l.y + j) * PITCH + l.x] = x[base + r * p.cols + c];
        }
    }
    workgroupBarrier();
    for (var j = 0u; j < T; j += 8u) {
        let c = c0 + l.y + j; // output row
        let r = r0 + l.x;     // output column
        if r < p.rows && c < p.cols {
            out[base + c * p.rows + r] = tile[l.x * PITCH + l.y + j];
        }
    }
}
