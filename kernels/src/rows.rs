//! What the row kernels ([`crate::softmax`], [`crate::rms_norm`]) share:
//! one workgroup per row, a workgroup-wide reduction (through subgroups
//! where the device has them), and `f32` or `vec4<f32>` elements.

use crate::op::Caps;

const REDUCE_WORKGROUP: &str = include_str!("../wgsl/reduce_workgroup.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("../wgsl/reduce_subgroup.wgsl");

/// Invocations per row. 256 is WebGPU's guaranteed minimum
/// (`maxComputeInvocationsPerWorkgroup`), so no device needs a fallback, and
/// it keeps 4 KiB rows (1024 vec4s) at 4 loads per invocation.
pub(crate) const WG: u32 = 256;

/// The pieces a row kernel template is filled with.
pub(crate) struct RowVariant {
    /// WGSL defining `struct Ids`, `wg_sum` and `wg_max`.
    pub reduce: &'static str,
    /// WGSL type of one element.
    pub ty: &'static str,
    /// WGSL defining `hsum(v: T) -> f32`, `hmax`, `hsq` (sum of squares).
    pub horizontal: &'static str,
    /// Elements per `T`.
    pub width: u32,
    /// Key suffix naming the choice.
    pub key: String,
}

/// Picks the reduction (subgroups when allowed and present) and the element
/// width (vec4 when a row splits into whole vec4s).
pub(crate) fn variant(caps: &Caps, allow_subgroups: bool, cols: usize) -> RowVariant {
    let sg = allow_subgroups && caps.subgroups;
    let vec = cols.is_multiple_of(4);
    RowVariant {
        reduce: if sg {
            REDUCE_SUBGROUP
        } else {
            REDUCE_WORKGROUP
        },
        ty: if vec { "vec4<f32>" } else { "f32" },
        horizontal: if vec {
            "fn hsum(v: vec4<f32>) -> f32 { return dot(v, vec4<f32>(1.0)); }\n\
             fn hmax(v: vec4<f32>) -> f32 { return max(max(v.x, v.y), max(v.z, v.w)); }\n\
             fn hsq(v: vec4<f32>) -> f32 { return dot(v, v); }\n"
        } else {
            "fn hsum(v: f32) -> f32 { return v; }\n\
             fn hmax(v: f32) -> f32 { return v; }\n\
             fn hsq(v: f32) -> f32 { return v * v; }\n"
        },
        width: if vec { 4 } else { 1 },
        key: format!(
            "{}.{}",
            if sg { "sg" } else { "wg" },
            if vec { "vec4" } else { "f32" }
        ),
    }
}
