//! How tensors are laid out in GPU buffers.
//!
//! Plain dtypes keep their host bytes. Block-quantized weights may be
//! repacked at upload into a GPU-friendly layout (aligned u32 quants,
//! separate scale arrays), since GGUF blocks of 18, 20 or 34 bytes are not
//! 4-aligned. The engine calls [`to_gpu`] on every tensor it uploads and
//! sizes buffers with [`gpu_bytes`]; kernels read the layout this module
//! defines. Until a repacked layout is defined for a dtype it is identity.

use crate::tensor::TensorDesc;

/// Errors converting a tensor to its GPU layout.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum LayoutError {
    #[error("tensor {desc:?}: expected {expected:?} host bytes, got {got}")]
    Size { desc: TensorDesc, expected: Option<usize>, got: usize },
}

/// Bytes the tensor takes on the GPU, or `None` on overflow or a ragged row.
pub fn gpu_bytes(desc: &TensorDesc) -> Option<usize> {
    desc.byte_size()
}

/// The tensor's host bytes (`desc.dtype`'s GGUF layout) in GPU layout.
pub fn to_gpu<'a>(desc: &TensorDesc, host: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>, LayoutError> {
    if desc.byte_size() != Some(host.len()) {
        return Err(LayoutError::Size { desc: desc.clone(), expected: desc.byte_size(), got: host.len() });
    }
    Ok(std::borrow::Cow::Borrowed(host))
}
