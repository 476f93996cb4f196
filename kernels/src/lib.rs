//! kiln's kernels: for each op, its params, shape checks, WGSL source and
//! variants, dispatch sizing and plain CPU reference.
//!
//! This is the bottom crate: it holds the dtype table and host tensors too,
//! and knows nothing of wgpu (the engine turns [`op::GpuKernel`]s into
//! pipelines), so loaders can share the dtype table without pulling a GPU
//! stack in.

pub mod argmax;
pub mod attention;
pub mod attention_split;
pub mod cases;
mod check;
pub mod copy;
pub mod dtype;
pub mod elementwise;
pub mod flash_attn;
pub mod get_rows;
pub mod kv_append;
pub mod layout;
pub mod matmul;
pub mod op;
pub mod qmatmul;
pub mod qmatvec;
pub mod quant;
pub mod rms_norm;
pub mod rope;
mod rows;
pub mod softmax;
mod template;
pub mod tensor;
pub mod transpose;

pub use dtype::DType;
pub use op::{Caps, GpuKernel, Op, OpError};
pub use tensor::{CpuTensor, TensorDesc, TensorError};

/// Every op's test cases. Adding an op: its module above, and one line here.
pub const OP_CASES: &[fn() -> Vec<cases::OpCase>] = &[
    elementwise::cases,
    softmax::cases,
    rms_norm::cases,
    copy::cases,
    transpose::cases,
    matmul::cases,
    kv_append::cases,
    attention::cases,
    attention_split::cases,
    flash_attn::cases,
    qmatmul::cases,
    qmatvec::cases,
    get_rows::cases,
    rope::cases,
    argmax::cases,
];
