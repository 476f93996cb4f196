//! [`LoraError`]: what is wrong with an adapter (its [`LoraErrorKind`]) and
//! which file it came from.

use std::fmt;

use crate::error::LoadError;

/// A failure loading, validating or writing a LoRA adapter.
///
/// `kind` says what is wrong and names the tensor(s) involved; `path` says
/// which file or directory, when known. The display form is `path: what`.
/// The kind is boxed: some carry two tensor names and shapes, and a
/// `Result` should stay small on the happy path.
#[derive(Debug)]
pub struct LoraError {
    /// The adapter file or directory; `adapter '<name>'` for validation
    /// errors (an adapter in memory has no path); empty when unknown.
    pub path: String,
    pub kind: Box<LoraErrorKind>,
}

/// What went wrong. Tests match on these, so each failure has its own
/// variant; every message that concerns a tensor names it, and every shape
/// mismatch shows both shapes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoraErrorKind {
    /// The container (GGUF, safetensors) is unreadable or malformed; the
    /// inner error says where.
    #[error(transparent)]
    Load(LoadError),

    // --- files and formats ---
    #[error("{what} not found")]
    MissingFile { what: &'static str },
    #[error(
        "PyTorch pickle adapters (adapter_model.bin) are not supported: loading one can run \
         arbitrary code; kiln reads adapter_model.safetensors only (PEFT writes it by default, \
         or re-save with safe_serialization=True)"
    )]
    PickleNotSupported,
    #[error("not a LoRA adapter: {reason}")]
    NotAnAdapter { reason: String },
    #[error("adapter_config.json is not valid JSON: {message}")]
    ConfigJson { message: String },
    #[error("adapter_config.json: '{field}' must be {expected}")]
    BadConfigField {
        field: String,
        expected: &'static str,
    },
    #[error("{what} is not supported")]
    Unsupported { what: String },
    #[error(
        "{field} key '{pattern}' is not a pattern kiln can match: use a module name or a dotted \
         suffix of one ('q_proj', 'layers.3.self_attn.q_proj'); regular expressions are not \
         supported"
    )]
    UnsupportedPattern {
        field: &'static str,
        pattern: String,
    },
    #[error("{field} keys {patterns:?} all match module '{module}' with different values")]
    AmbiguousPattern {
        field: &'static str,
        module: String,
        patterns: Vec<String>,
    },

    // --- tensors ---
    #[error(
        "{found_in}: LoRA on '{module}' is not supported (kiln adapts the attention and MLP \
         projections: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, in GGUF attn_q \
         attn_k attn_v attn_output ffn_gate ffn_up ffn_down)"
    )]
    UnsupportedModule { module: String, found_in: String },
    #[error("tensor '{tensor}': {reason}")]
    UnexpectedTensor { tensor: String, reason: String },
    #[error("tensor '{tensor}' is {dtype}; LoRA matrices must be {expected}")]
    UnsupportedDtype {
        tensor: String,
        dtype: String,
        expected: &'static str,
    },
    #[error("tensor '{tensor}' has shape {shape:?}, expected a 2-D {expected}")]
    BadShape {
        tensor: String,
        shape: Vec<usize>,
        expected: &'static str,
    },
    #[error("tensor '{present}' has no partner: '{missing}' is missing")]
    MissingHalf { present: String, missing: String },
    #[error("tensor '{tensor}' adapts a module another tensor already adapts")]
    DuplicateTarget { tensor: String },
    #[error("{what} is 0: a LoRA rank must be at least 1")]
    RankZero { what: String },
    #[error(
        "rank mismatch: '{a}' is {a_shape:?} (rank {}) but '{b}' is {b_shape:?} (rank {})",
        a_shape.first().copied().unwrap_or(0),
        b_shape.last().copied().unwrap_or(0)
    )]
    RankMismatch {
        a: String,
        a_shape: Vec<usize>,
        b: String,
        b_shape: Vec<usize>,
    },
    #[error("tensor '{tensor}' {shape:?} has rank {found}, but {rule} gives rank {expected}")]
    ConfigRankMismatch {
        tensor: String,
        shape: Vec<usize>,
        found: usize,
        expected: usize,
        /// Where the expected rank comes from: `r` or a `rank_pattern` key.
        rule: String,
    },
    #[error("{what} is {value}, which is not a finite f32")]
    NonFiniteAlpha { what: String, value: f64 },
    #[error("tensor '{tensor}' cannot be decoded: {message}")]
    Decode { tensor: String, message: String },
    #[error("the adapter holds no LoRA tensors")]
    NoTargets,

    // --- validation against the base model ---
    #[error("'{tensor}' adapts layer {layer}, but the base model has {n_layer} layers")]
    LayerOutOfRange {
        tensor: String,
        layer: usize,
        n_layer: usize,
    },
    #[error("'{tensor}' adapts '{base}', which the base model does not have")]
    ModuleNotInBase { tensor: String, base: String },
    #[error(
        "shape mismatch: '{a}' {a_shape:?} and '{b}' {b_shape:?} map in {} → out {}, but the \
         base weight '{base}' is [out {}, in {}]",
        a_shape.last().copied().unwrap_or(0),
        b_shape.first().copied().unwrap_or(0),
        base_shape.0,
        base_shape.1
    )]
    BaseShapeMismatch {
        a: String,
        a_shape: Vec<usize>,
        b: String,
        b_shape: Vec<usize>,
        base: String,
        /// `(out, in)` of the base weight.
        base_shape: (usize, usize),
    },

    // --- merging into a base model ---
    #[error("nothing to merge: no adapters given")]
    NoAdapters,
    #[error("the multiplier {value} is not a finite number")]
    BadMultiplier { value: f64 },
    #[error(
        "the adapter is for architecture '{adapter}', but the base model is {}",
        base.as_ref().map_or("of no stated architecture (no general.architecture)".to_string(),
            |b| format!("'{b}'"))
    )]
    ArchitectureMismatch {
        adapter: String,
        base: Option<String>,
    },
    #[error("'{tensor}' is {dtype}, which kiln cannot dequantize, so no LoRA can merge into it")]
    NoDequantizer { tensor: String, dtype: String },
    #[error(
        "merged '{tensor}' cannot be written as {dtype}: kiln has no reference quantizer for \
         it; choose the f16 or f32 output type"
    )]
    NoQuantizer { tensor: String, dtype: String },
    #[error("unknown output type '{given}': expected f16, f32 or same")]
    UnknownOutType { given: String },
    #[error("already exists; pass --force (MergeOptions::overwrite) to replace it")]
    OutputExists,

    // --- writing ---
    #[error("cannot write this adapter: {reason}")]
    Unwritable { reason: String },
}

impl LoraError {
    pub fn new(kind: LoraErrorKind) -> LoraError {
        LoraError {
            path: String::new(),
            kind: Box::new(kind),
        }
    }

    /// Sets the path, keeping one set earlier (the innermost wins).
    pub fn in_file(mut self, path: impl Into<String>) -> LoraError {
        if self.path.is_empty() {
            self.path = path.into();
        }
        self
    }

    pub fn kind(&self) -> &LoraErrorKind {
        &self.kind
    }
}

impl From<LoraErrorKind> for LoraError {
    fn from(kind: LoraErrorKind) -> LoraError {
        LoraError::new(kind)
    }
}

impl From<LoadError> for LoraError {
    fn from(err: LoadError) -> LoraError {
        LoraError::new(LoraErrorKind::Load(err))
    }
}

impl fmt::Display for LoraError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A LoadError names its own file; do not say it twice.
        let inner_has_file = matches!(&*self.kind, LoraErrorKind::Load(e) if !e.file.is_empty());
        if !self.path.is_empty() && !inner_has_file {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for LoraError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.kind {
            LoraErrorKind::Load(e) => Some(e),
            _ => None,
        }
    }
}
