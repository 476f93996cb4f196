// Workgroup-wide sum and max through workgroup memory (a tree over WG
// slots; WG is a power of two). Used by row kernels (softmax, rms_norm) on
// devices without subgroup operations. The kernel defines `const WG` and
// takes `ids: Ids` as its entry-point input.
//
// Every invocation of the workgroup must call these (they hold barriers),
// and every one gets the result.

struct Ids {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
}

var<workgroup> red: array<f32, WG>;

fn wg_sum(x: f32, ids: Ids) -> f32 {
    red[ids.lid] = x;
    workgroupBarrier();
    for (var s = WG >> 1u; s > 0u; s = s >> 1u) {
        if ids.lid < s {
            red[ids.lid] = red[ids.lid] + red[ids.lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    // The next reduction overwrites red: everyone must have read it first.
    workgroupBarrier();
    return r;
}

fn wg_max(x: f32, ids: Ids) -> f32 {
    red[ids.lid] = x;
    workgroupBarrier();
    for (var s = WG >> 1u; s > 0u; s = s >> 1u) {
        if ids.lid < s {
            red[ids.lid] = max(red[ids.lid], red[ids.lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}
