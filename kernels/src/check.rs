//! Input checks shared by the kernel modules, so every op words its
//! [`OpError`]s the same way.

use crate::dtype::DType;
use crate::op::OpError;
use crate::tensor::TensorDesc;

/// Exactly `n` inputs.
pub(crate) fn arity(op: &'static str, inputs: &[TensorDesc], n: usize) -> Result<(), OpError> {
    if inputs.len() == n {
        Ok(())
    } else {
        Err(OpError::Arity {
            op,
            expected: n,
            got: inputs.len(),
        })
    }
}

/// `desc` is one of `allowed`.
pub(crate) fn dtype(
    op: &'static str,
    desc: &TensorDesc,
    allowed: &[DType],
    what: &'static str,
) -> Result<(), OpError> {
    if allowed.contains(&desc.dtype) {
        Ok(())
    } else {
        Err(OpError::DType {
            op,
            dtype: desc.dtype,
            what,
        })
    }
}

/// A shape error naming every input's shape.
pub(crate) fn shape_err(
    op: &'static str,
    inputs: &[TensorDesc],
    why: impl Into<String>,
) -> OpError {
    OpError::Shape {
        op,
        shapes: inputs.iter().map(|d| d.shape.clone()).collect(),
        why: why.into(),
    }
}

/// The element count, which must fit the `u32` indices kernels use.
pub(crate) fn numel_u32(
    op: &'static str,
    inputs: &[TensorDesc],
    desc: &TensorDesc,
) -> Result<u32, OpError> {
    desc.numel()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| shape_err(op, inputs, format!("{desc:?} has more than 2^32 elements")))
}

/// `x` as `u32`, for a dimension that must fit a kernel's `u32` indices.
pub(crate) fn dim_u32(op: &'static str, inputs: &[TensorDesc], x: usize) -> Result<u32, OpError> {
    u32::try_from(x)
        .map_err(|_| shape_err(op, inputs, format!("dimension {x} does not fit in u32")))
}

/// The dtype conversion failing on a tensor that passed `output`: a bug in
/// the caller, reported as the op's dtype error.
pub(crate) fn not_f32(op: &'static str, dtype: DType) -> OpError {
    OpError::DType {
        op,
        dtype,
        what: "reading as f32 on the CPU",
    }
}
