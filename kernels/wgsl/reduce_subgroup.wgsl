// Workgroup-wide sum and max through subgroup operations: each subgroup
// reduces in registers, its first invocation leaves the partial in `red`,
// and every invocation then folds the partials (num_subgroups of them:
// WG / 32 on NVIDIA, WG / 8 on lavapipe). Never assumes a subgroup size.
// The kernel defines `const WG` and takes `ids: Ids` as its entry input.
//
// Every invocation of the workgroup must call these (they hold barriers).

struct Ids {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(num_subgroups) n_sg: u32,
    @builtin(subgroup_size) sg_size: u32,
}

// One slot per subgroup; WG slots cover even a subgroup size of 1.
var<workgroup> red: array<f32, WG>;

fn wg_sum(x: f32, ids: Ids) -> f32 {
    let s = subgroupAdd(x);
    if ids.sg_lane == 0u {
        red[ids.sg_id] = s;
    }
    workgroupBarrier();
    var r = 0.0;
    for (var i = 0u; i < ids.n_sg; i++) {
        r += red[i];
    }
    // The next reduction overwrites red: everyone must have read it first.
    workgroupBarrier();
    return r;
}

fn wg_max(x: f32, ids: Ids) -> f32 {
    let s = subgroupMax(x);
    if ids.sg_lane == 0u {
        red[ids.sg_id] = s;
    }
    workgroupBarrier();
    var r = red[0];
    for (var i = 1u; i < ids.n_sg; i++) {
        r = max(r, red[i]);
    }
    workgroupBarrier();
    return r;
}
