// RM partial sums reduced across the workgroup through subgroups: each
// subgroup adds in registers, its first invocation leaves RM partials in
// `red`, and invocation i < RM adds the num_subgroups partials of sum i.
// Never assumes a subgroup size (WG slots per sum cover even size 1).

struct Ids {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(num_subgroups) n_sg: u32,
}

var<workgroup> red: array<f32, WG * RM>;

fn reduce(acc: array<f32, RM>, ids: Ids) -> f32 {
    for (var i = 0u; i < RM; i++) {
        let s = subgroupAdd(acc[i]);
        if ids.sg_lane == 0u {
            red[ids.sg_id * RM + i] = s;
        }
    }
    workgroupBarrier();
    var r = 0.0;
    if ids.lid < RM {
        for (var g = 0u; g < ids.n_sg; g++) {
            r += red[g * RM + ids.lid];
        }
    }
    return r;
}
