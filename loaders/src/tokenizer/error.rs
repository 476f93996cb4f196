//! Everything that can go wrong building or using a tokenizer.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required `tokenizer.ggml.*` key is absent.
    #[error("tokenizer metadata: missing key {0}")]
    MissingKey(&'static str),
    /// A key is present but holds the wrong type (or an array of the wrong
    /// element type, or an element that is not what it should be).
    #[error("tokenizer metadata: {key} has the wrong type: {detail}")]
    BadKey { key: &'static str, detail: String },
    #[error("tokenizer metadata: unknown tokenizer model {0:?}")]
    UnknownModel(String),
    #[error("tokenizer metadata: unknown pre-tokenizer {0:?}")]
    UnknownPreTokenizer(String),
    #[error("tokenizer metadata: the vocabulary is empty")]
    EmptyVocab,
    #[error("tokenizer metadata: token {text:?} appears twice (ids {first} and {second})")]
    DuplicateToken {
        text: String,
        first: u32,
        second: u32,
    },
    #[error("tokenizer metadata: {key} has {got} entries, fewer than the {want} tokens")]
    LengthMismatch {
        key: &'static str,
        got: usize,
        want: usize,
    },
    /// A merge rule `a b` where `a`, `b` or `ab` is not in the vocabulary.
    #[error(
        "tokenizer merges: rule {index} {rule:?} names {missing:?}, which is not in the vocabulary"
    )]
    MergeUnknownToken {
        index: usize,
        rule: String,
        missing: String,
    },
    #[error("tokenizer merges: rule {index} {rule:?} is not two tokens separated by one space")]
    MalformedMerge { index: usize, rule: String },
    /// `add_bos_token` is true but the model names no BOS token.
    #[error("tokenizer metadata: {0} is requested but no such token exists")]
    MissingSpecial(&'static str),
    /// SentencePiece byte fallback needed a `<0xNN>` token the vocabulary lacks.
    #[error("tokenizer: no token for byte 0x{0:02X} (byte fallback) and no unknown token")]
    NoByteToken(u8),
    #[error("token id {id} is out of range (vocabulary of {vocab_size})")]
    IdOutOfRange { id: u32, vocab_size: usize },
    #[error("tokenizer file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An error reported by the HF `tokenizers` crate.
    #[error("tokenizer.json {path}: {message}")]
    Hf { path: PathBuf, message: String },
}
