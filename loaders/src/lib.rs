//! kiln's loaders: everything between a model file and the engine.

pub mod chat;
pub mod config;
pub mod error;
pub mod gguf;
pub mod hub;
pub mod lora;
pub mod metadata;
pub mod paths;
pub mod safetensors;
pub mod tokenizer;
pub mod weights;

pub use chat::{BuiltinTemplate, ChatError, ChatTemplate, Message};
pub use config::{ModelConfig, RopeScaling};
pub use error::{ErrorKind, LoadError};
pub use gguf::{GgufFile, GgufWriter, TensorInfo};
pub use hub::{Hub, HubError};
pub use lora::{
    BaseShapes, LoraAdapter, LoraError, LoraErrorKind, LoraFormat, LoraHalf, LoraModule,
    LoraTarget, PeftConfig,
};
pub use metadata::{Metadata, Value, ValueType};
pub use safetensors::{SafetensorsFile, SafetensorsModel};
pub use tokenizer::{
    DecodeOptions, EncodeOptions, SpecialTokens, StreamDecoder, Tokenizer, TokenizerError,
};
pub use weights::{Weight, WeightMap};
