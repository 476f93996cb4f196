//! The LLaMA family: LLaMA 2/3, SmolLM, TinyLlama, Mistral (sliding
//! window) and Qwen2 (QKV bias, neox rope), one definition set by
//! [`LlamaConfig`]. As llama.cpp's `src/models/llama.cpp`: a pre-norm
//! decoder with RMS norm, rotary positions, grouped-query attention and a
//! SwiGLU feed-forward.

pub mod config;
pub mod graph;
pub mod lora;
pub mod weights;

pub use config::{Arch, LlamaConfig, RopeConfig};
pub use graph::{
    fused_rows, Caches, ForwardGraph, ForwardInputs, GraphOptions, LogitsMode, FUSED_ROWS,
    SPLIT_CHUNK,
};
pub use lora::{LoraPair, LoraStack, StackLayout};
pub use weights::{names, LayerWeights, LlamaWeights, TensorNames};

#[cfg(test)]
mod tests;
