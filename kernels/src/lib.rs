//! kiln's kernels: for each op, its params, shape checks, WGSL source and
//! variants, dispatch sizing and plain CPU reference.
//!
//! This is the bottom crate: it holds the dtype table and host tensors too,
//! and knows nothing of wgpu (the engine turns [`op::GpuKernel`]s into
//! pipelines), so loaders can share the dtype table without pulling a GPU
//! stack in.

pub mod cases;
pub mod dtype;
pub mod layout;
pub mod op;
pub mod quant;
pub mod tensor;

pub use dtype::DType;
pub use op::{Caps, GpuKernel, Op, OpError};
pub use tensor::{CpuTensor, TensorDesc, TensorError};

/// Every op's test cases. Adding an op: its module above, and one line here.
pub const OP_CASES: &[fn() -> Vec<cases::OpCase>] = &[
];
