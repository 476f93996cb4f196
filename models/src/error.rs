//! The models' one error type: every failure names the metadata key or the
//! tensor involved.

use kiln_engine::EngineError;
use kiln_kernels::{DType, TensorDesc};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unsupported architecture `{arch}` (kiln runs: {supported})")]
    UnsupportedArchitecture {
        arch: String,
        supported: &'static str,
    },
    #[error("the model metadata has no `general.architecture`")]
    NoArchitecture,
    #[error("metadata key `{key}` is missing")]
    MissingKey { key: String },
    #[error("metadata key `{key}` is invalid: {why}")]
    BadValue { key: String, why: String },
    #[error("tensor `{name}` is missing from the model file")]
    MissingTensor { name: String },
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("tensor `{name}` is {dtype}, which kiln cannot use for {what}")]
    TensorDType {
        name: String,
        dtype: DType,
        what: &'static str,
    },
    #[error(
        "tensor `{name}` is not used by kiln's {arch}: the model needs something kiln \
         does not run, and running without it would give wrong results"
    )]
    UnusedTensor { name: String, arch: &'static str },
    #[error("tensor `{name}` cannot be stored as {to} for the device: {why}")]
    Convert {
        name: String,
        to: DType,
        why: String,
    },
    #[error("cannot allocate {bytes} bytes for {what}; ask for a smaller context")]
    Alloc { what: String, bytes: u128 },
    #[error("tensor `{name}` {desc:?}: {source}")]
    TensorData {
        name: String,
        desc: TensorDesc,
        source: kiln_kernels::TensorError,
    },
    #[error("uploading tensor `{name}`: {source}")]
    Upload { name: String, source: EngineError },
    #[error(transparent)]
    Lora(#[from] kiln_loaders::lora::LoraError),
    #[error("building the forward graph: {0}")]
    Graph(#[from] EngineError),
}
