//! The engine's errors: every failure names the op, the shapes and the
//! device involved.

use kiln_kernels::layout::LayoutError;
use kiln_kernels::{OpError, TensorDesc, TensorError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("node `{node}`: {source}")]
    Op { node: String, source: OpError },
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("no GPU adapter matches `{spec}` (adapters: {available})")]
    NoAdapter { spec: String, available: String },
    #[error("could not open device {device}: {message}")]
    RequestDevice { device: String, message: String },
    #[error("shader for node `{node}` ({key}) failed to compile on {device}: {message}")]
    ShaderCompile {
        node: String,
        key: String,
        device: String,
        message: String,
    },
    #[error("node `{node}` needs {bytes} bytes in one binding; {device} allows at most {limit}")]
    TooLarge {
        node: String,
        bytes: u64,
        limit: u64,
        device: String,
    },
    #[error("out of memory on {device} allocating {bytes} bytes for `{what}`")]
    OutOfMemory {
        device: String,
        bytes: u64,
        what: String,
    },
    #[error("device error on {device}: {message}")]
    Device { device: String, message: String },
    #[error("input `{node}` expects {expected:?}, was fed {got:?}")]
    FeedMismatch {
        node: String,
        expected: TensorDesc,
        got: TensorDesc,
    },
    #[error("input `{node}` was not fed")]
    MissingFeed { node: String },
    #[error("tensor id {0} does not name an input of this graph")]
    NotAnInput(usize),
    #[error("tensor id {0} is not in this graph")]
    UnknownTensor(usize),
    #[error("node `{node}` writes into `{target}`, which is not a resident tensor")]
    NotResident { node: String, target: String },
    #[error("cannot reshape `{node}` from {from:?} to {to:?}")]
    Reshape {
        node: String,
        from: TensorDesc,
        to: TensorDesc,
    },
    #[error("graph has no outputs")]
    NoOutputs,
}
