//! kiln: run large language models on any GPU wgpu reaches.
//!
//! The user-facing API: [`Model::load`] a GGUF model onto a [`Device`],
//! then [`Model::generate`] tokens through the [`Sampler`] chain as a
//! stream of [`StreamToken`]s. It re-exports the engine (devices, graphs,
//! executors) and the loaders (GGUF, safetensors, tokenizers, chat
//! templates) too.

pub mod adapters;
pub mod generate;
pub mod model;
pub mod perplexity;
pub mod sampler;
pub mod stop;
#[cfg(feature = "async")]
pub mod stream;
pub mod synth;

pub use kiln_engine as engine;
pub use kiln_kernels as kernels;
pub use kiln_loaders as loaders;
pub use kiln_models as models;

pub use adapters::{AdapterInfo, AdapterRegistry, AdapterSet};
pub use generate::{
    FinishReason, GenerateOptions, GenerationStats, Generator, Sequence, StreamToken,
};
pub use kiln_engine::{Device, EngineError, Executor, Graph, Plan};
pub use kiln_kernels::{CpuTensor, DType, TensorDesc};
pub use model::{BatchRow, Error, LanguageModel, Model, ModelOptions, MAX_BATCH};
pub use perplexity::{
    perplexity, ChunkScore, Perplexity, PerplexityError, PerplexityOptions, ScoringModel,
};
pub use sampler::{top_logprobs, Sampled, Sampler, SamplerConfig, SamplerError};
pub use stop::{StopMatcher, StopOutput};
