//! kiln's model architectures, built on the engine's graph API.
//!
//! One definition per architecture family, whatever the weights' dtypes:
//! quantization belongs to the weight and the matmul op dispatches on it.
//! [`llama`] covers LLaMA 2/3, SmolLM, TinyLlama, Mistral and Qwen2 through
//! its config.

pub mod error;
pub mod llama;
pub mod testing;

pub use error::ModelError;
pub use llama::{
    fused_rows, Arch, Caches, ForwardGraph, ForwardInputs, GraphOptions, LlamaConfig, LlamaWeights,
    LogitsMode, LoraStack, StackLayout, TensorNames, FUSED_ROWS, SPLIT_CHUNK,
};
