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

/// x `[.., K]` F32 times a weight W `[N, K]` of one of `dtypes` whose rows
/// are whole units of `unit(dtype)` values: returns `(M, N, K)` with M
/// every batch's rows, after checking that x, W's GPU words and y fit the
/// u32 indexing the kernels use.
pub(crate) fn x_by_weight(
    op: &'static str,
    inputs: &[TensorDesc],
    dtypes: &[DType],
    unit: impl Fn(DType) -> usize,
) -> Result<(usize, usize, usize), OpError> {
    let (x, w) = (&inputs[0], &inputs[1]);
    dtype(op, x, &[DType::F32], "x")?;
    dtype(op, w, dtypes, "the weight")?;
    if x.shape.is_empty() || w.shape.len() != 2 {
        return Err(shape_err(
            op,
            inputs,
            "x needs a dimension and W must be [N, K]",
        ));
    }
    let (n, k) = (w.shape[0], w.shape[1]);
    if x.cols() != k {
        return Err(shape_err(
            op,
            inputs,
            format!("x has K = {}, W has K = {k}", x.cols()),
        ));
    }
    let unit = unit(w.dtype);
    if k % unit != 0 || n == 0 {
        return Err(shape_err(
            op,
            inputs,
            format!("K = {k} is not a positive multiple of {unit} ({})", w.dtype),
        ));
    }
    let m = x.rows();
    numel_u32(op, inputs, x)?;
    crate::layout::gpu_bytes(w)
        .and_then(|b| u32::try_from(b / 4).ok())
        .ok_or_else(|| shape_err(op, inputs, "W has more than 2^32 words"))?;
    m.checked_mul(n)
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| shape_err(op, inputs, "y has more than 2^32 elements"))?;
    Ok((m, n, k))
}
