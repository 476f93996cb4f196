//! GGUF: llama.cpp's single-file model format (metadata + tensors).
//!
//! [`GgufFile`] reads v2 and v3 files over an mmap; [`GgufWriter`] writes
//! v3 files llama.cpp loads (tests build small models with it). The layout
//! follows ggml's `docs/gguf.md`; where the spec is loose, we match what
//! llama.cpp's `gguf.cpp` accepts.

mod cursor;
mod reader;
mod values;
mod writer;

pub use reader::{GgufFile, TensorInfo};
pub use values::MAX_ARRAY_DEPTH;
pub use writer::GgufWriter;

/// The first four bytes of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the data section and of each tensor when the file has no
/// `general.alignment` key.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The largest `general.alignment` kiln accepts. The spec allows any power
/// of two, but real files use 32 (sometimes a page, 4096 or 65536); a file
/// asking for gigabyte alignment is broken or hostile, and honouring it
/// would make the writer pad each tensor to that size (found by fuzzing).
pub const MAX_ALIGNMENT: u32 = 1 << 16;
/// ggml tensors have at most four dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// llama.cpp's `GGML_MAX_NAME` is 64 bytes including the terminating NUL.
pub const MAX_NAME_BYTES: usize = 63;
