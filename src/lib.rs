//! kiln: run large language models on any GPU wgpu reaches.
//!
//! The user-facing API. Today it re-exports the engine (devices, graphs,
//! executors) and the loaders (GGUF, safetensors, tokenizers, chat
//! templates); `Model::load` and the `Generator` arrive with the LLaMA
//! end-to-end work (see ROADMAP.md).

pub mod sampler;
pub mod stop;

pub use kiln_engine as engine;
pub use kiln_kernels as kernels;
pub use kiln_loaders as loaders;

pub use kiln_engine::{Device, EngineError, Executor, Graph, Plan};
pub use kiln_kernels::{CpuTensor, DType, TensorDesc};
pub use sampler::{Sampled, Sampler, SamplerConfig, SamplerError};
pub use stop::{StopMatcher, StopOutput};
