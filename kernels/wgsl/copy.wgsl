// Copy with a dtype cast: F32 -> F32, F32 <-> F16, F16 -> F16.
//
// F16 tensors are read and written as packed u32 words (two halves per
// word, the lower element in the low bits: little-endian storage) with
// `pack2x16float` / `unpack2x16float`, so no `SHADER_F16` is needed. An
// invocation that writes F16 owns one whole output word, since WGSL cannot
// store 16 bits; an odd element count leaves a zero half in the last word
// (the engine rounds buffer sizes up to 4 bytes).

struct Params {
    n: u32,     // elements
    items: u32, // invocations with work: elements, vec4s or words
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<{{IN}}>;
@group(0) @binding(2) var<storage, read_write> out: array<{{OUT}}>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wg.x + wg.y * nwg.x) * 256u + lid;
    if i >= p.items {
        return;
    }
{{BODY}}
}
