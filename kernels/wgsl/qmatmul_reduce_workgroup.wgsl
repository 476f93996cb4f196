// RM partial sums reduced across the workgroup through workgroup memory:
// a tree over WG slots (a power of two) per sum; invocation i < RM gets
// sum i.

struct Ids {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
}

var<workgroup> red: array<f32, WG * RM>;

fn reduce(acc: array<f32, RM>, ids: Ids) -> f32 {
    for (var i = 0u; i < RM; i++) {
        red[i * WG + ids.lid] = acc[i];
    }
    workgroupBarrier();
    for (var s = WG >> 1u; s > 0u; s = s >> 1u) {
        if ids.lid < s {
            for (var i = 0u; i < RM; i++) {
                red[i * WG + ids.lid] += red[i * WG + ids.lid + s];
            }
        }
        workgroupBarrier();
    }
    var r = 0.0;
    if ids.lid < RM {
        r = red[ids.lid * WG];
    }
    return r;
}
