//! The loaders' one error type: what went wrong ([`ErrorKind`]) plus where
//! (file, byte offset, tensor), so a message always points at the bad bytes.

use std::fmt;
use std::path::Path;

use kiln_kernels::DType;

/// A failure reading or writing a model file.
///
/// `kind` says what is wrong; `file`, `offset` and `tensor` say where. The
/// display form is `file: byte N: tensor 'x': what`, each part present only
/// when known.
#[derive(Debug)]
pub struct LoadError {
    /// The file's path (or the name given to `from_bytes`).
    pub file: String,
    /// Byte offset in the file where the bad field starts, when known.
    pub offset: Option<u64>,
    /// The tensor being read, when the error belongs to one.
    pub tensor: Option<String>,
    pub kind: ErrorKind,
}

/// What went wrong. Tests match on these, so each malformed input has its
/// own variant rather than a string.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    #[error("I/O error: {0}")]
    Io(std::io::Error),

    // --- GGUF structure ---
    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: Vec<u8> },
    #[error("unsupported GGUF version {0} (kiln reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("big-endian GGUF (version {0} byte-swapped): kiln reads little-endian files only")]
    BigEndian(u32),
    #[error("truncated: reading {what} needs {needed} bytes, {available} left")]
    Truncated {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    #[error("{what} count {count} cannot fit in the {remaining} bytes left")]
    CountTooLarge {
        what: &'static str,
        count: u64,
        remaining: u64,
    },
    #[error("{what} length {len} runs past the end ({remaining} bytes left)")]
    LengthTooLarge {
        what: &'static str,
        len: u64,
        remaining: u64,
    },
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: &'static str },
    #[error("unknown metadata value type {0}")]
    UnknownValueType(u32),
    #[error("bool value {0} is neither 0 nor 1")]
    BadBool(u8),
    #[error("arrays nested deeper than {max}")]
    NestingTooDeep { max: usize },
    #[error("array declared as {declared:?} holds a {found:?}")]
    MixedArray {
        declared: crate::ValueType,
        found: crate::ValueType,
    },
    #[error("duplicate metadata key '{0}'")]
    DuplicateKey(String),
    #[error("metadata key '{key}' must be {expected}")]
    BadMetadata { key: String, expected: &'static str },
    #[error("alignment {0} is not a power of two between 1 and 65536")]
    BadAlignment(u64),

    // --- tensors (both formats) ---
    #[error("{n_dims} dimensions (at most {max} supported)")]
    TooManyDims { n_dims: u64, max: usize },
    #[error("unknown GGML type id {0}")]
    UnknownGgmlType(u32),
    #[error("shape {shape:?} overflows")]
    ShapeOverflow { shape: Vec<u64> },
    #[error("row length {row} is not a multiple of {dtype}'s block size {block}")]
    RowNotBlockMultiple {
        row: u64,
        dtype: DType,
        block: usize,
    },
    #[error("duplicate tensor name")]
    DuplicateTensor,
    #[error("tensor name is {len} bytes (llama.cpp allows at most {max})")]
    NameTooLong { len: usize, max: usize },
    #[error("data offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor { offset: u64, alignment: u64 },
    #[error("data [{start}, {end}) runs past the end of the data section ({len} bytes)")]
    TensorPastEnd { start: u64, end: u64, len: u64 },
    #[error("data overlaps tensor '{other}'")]
    TensorOverlap { other: String },
    #[error("{expected} bytes expected for its dtype and shape, {got} given")]
    SizeMismatch { expected: u64, got: u64 },
    #[error("tensor '{0}' not found")]
    TensorNotFound(String),
    #[error("declared without data: its bytes must be written through GgufWriter::stream")]
    MissingTensorData,
    #[error(
        "written out of order: {}",
        expected.as_ref().map_or("every declared tensor is already written".to_string(),
            |e| format!("the next declared tensor is '{e}'"))
    )]
    StreamOrder { expected: Option<String> },

    // --- safetensors ---
    #[error("header length {len} runs past the end of the file ({file_len} bytes)")]
    HeaderPastEnd { len: u64, file_len: u64 },
    #[error("header length {len} exceeds the {max}-byte limit")]
    HeaderTooLarge { len: u64, max: u64 },
    #[error("header is not a JSON object")]
    HeaderNotObject,
    #[error("header JSON: {0}")]
    HeaderJson(String),
    #[error("bad header entry: {0}")]
    BadEntry(String),
    #[error("unknown safetensors dtype '{0}'")]
    UnknownDtype(String),
    #[error("dtype {0} has no kiln equivalent")]
    UnsupportedDtype(String),
    #[error("data offsets [{start}, {end}) are out of range (buffer is {len} bytes)")]
    OffsetsOutOfRange { start: u64, end: u64, len: u64 },
    #[error("bytes [{start}, {end}) of the buffer belong to no tensor")]
    DataHole { start: u64, end: u64 },

    // --- sharded safetensors and config.json ---
    #[error("bad index file: {0}")]
    BadIndex(String),
    #[error("config.json: {0}")]
    ConfigJson(String),
    #[error("config.json lacks '{0}'")]
    MissingConfig(&'static str),
}

impl LoadError {
    pub fn new(kind: ErrorKind) -> LoadError {
        LoadError {
            file: String::new(),
            offset: None,
            tensor: None,
            kind,
        }
    }

    /// Sets the byte offset, keeping one set earlier (the innermost wins).
    pub fn at(mut self, offset: u64) -> LoadError {
        self.offset.get_or_insert(offset);
        self
    }

    /// Sets the tensor name, keeping one set earlier.
    pub fn tensor(mut self, name: impl Into<String>) -> LoadError {
        if self.tensor.is_none() {
            self.tensor = Some(name.into());
        }
        self
    }

    /// Sets the file name, keeping one set earlier.
    pub fn in_file(mut self, file: impl Into<String>) -> LoadError {
        if self.file.is_empty() {
            self.file = file.into();
        }
        self
    }

    pub(crate) fn io(path: &Path, err: std::io::Error) -> LoadError {
        LoadError::new(ErrorKind::Io(err)).in_file(path.display().to_string())
    }

    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

impl From<ErrorKind> for LoadError {
    fn from(kind: ErrorKind) -> LoadError {
        LoadError::new(kind)
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.file.is_empty() {
            write!(f, "{}: ", self.file)?;
        }
        if let Some(offset) = self.offset {
            write!(f, "byte {offset}: ")?;
        }
        if let Some(tensor) = &self.tensor {
            write!(f, "tensor '{tensor}': ")?;
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for LoadError {}
