//! Test support shared by this crate's tests and the root crate's: tiny
//! random models written as GGUF or as an HF safetensors checkpoint
//! ([`tiny`]), and the naive f64 reference forward they are checked
//! against ([`naive`]). Like `kiln_engine::testing`, it is part of the
//! library so every test binary can use it; nothing else should.

pub mod naive;
pub mod tiny;

pub use naive::{NaiveConfig, NaiveModel};
pub use tiny::{permute_for_normal_rope, TinyDtypes, TinySpec, TinyTensor};
