//! kiln's loaders: everything between a model file and the engine.

pub mod metadata;

pub use metadata::{Metadata, Value, ValueType};
