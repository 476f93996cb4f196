//! Tokenizers: text ↔ token ids.
//!
//! Two sources: GGUF metadata (`tokenizer.ggml.*`), where we reproduce
//! llama.cpp's tokenizer exactly (byte-level BPE with the model's
//! pre-tokenizer, or SentencePiece BPE), and a Hugging Face
//! `tokenizer.json`, read by the `tokenizers` crate.

mod bpe;
mod error;
mod gguf;
mod hf;
mod partition;
mod pretokenize;
mod specials;
mod spm;
mod stream;
mod unicode;
mod vocab;

use std::borrow::Cow;
use std::path::Path;

pub use error::TokenizerError;
pub use pretokenize::PreTokenizer;
pub use specials::SpecialTokens;
pub use stream::StreamDecoder;

use crate::Metadata;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Add BOS/EOS as the model asks (`add_bos_token`, `add_eos_token`).
    pub add_special: bool,
    /// Match special tokens written in the text (`<|im_start|>`) as single
    /// tokens. Off for untrusted text, so it cannot forge control tokens.
    pub parse_special: bool,
}

impl Default for EncodeOptions {
    fn default() -> EncodeOptions {
        EncodeOptions {
            add_special: true,
            parse_special: true,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Leave control tokens (BOS, `<|im_end|>`, ...) out of the text.
    pub skip_special: bool,
}

/// Which tokenizer family a [`Tokenizer`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// GGUF `gpt2`: byte-level BPE with this pre-tokenizer.
    ByteLevelBpe(PreTokenizer),
    /// GGUF `llama`: SentencePiece BPE.
    SentencePiece,
    /// A Hugging Face `tokenizer.json`.
    HuggingFace,
}

pub struct Tokenizer {
    inner: Inner,
    chat_template: Option<String>,
}

enum Inner {
    Gguf(Box<gguf::GgufTokenizer>),
    Hf(Box<hf::HfTokenizer>),
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes in its metadata.
    pub fn from_gguf(meta: &Metadata) -> Result<Tokenizer, TokenizerError> {
        let inner = gguf::GgufTokenizer::from_metadata(meta)?;
        let chat_template = meta.get_str("tokenizer.chat_template").map(str::to_owned);
        Ok(Tokenizer {
            inner: Inner::Gguf(Box::new(inner)),
            chat_template,
        })
    }

    /// Reads a Hugging Face `tokenizer.json`; special tokens and the chat
    /// template come from `tokenizer_config.json` beside it, if present.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Tokenizer, TokenizerError> {
        let hf = hf::HfTokenizer::from_file(path.as_ref())?;
        let chat_template = hf.chat_template.clone();
        Ok(Tokenizer {
            inner: Inner::Hf(Box::new(hf)),
            chat_template,
        })
    }

    pub fn kind(&self) -> TokenizerKind {
        match &self.inner {
            Inner::Gguf(g) => match &g.model {
                gguf::Model::Bpe { pre, .. } => TokenizerKind::ByteLevelBpe(pre.kind),
                gguf::Model::Spm => TokenizerKind::SentencePiece,
            },
            Inner::Hf(_) => TokenizerKind::HuggingFace,
        }
    }

    pub fn encode(&self, text: &str, opts: EncodeOptions) -> Result<Vec<u32>, TokenizerError> {
        match &self.inner {
            Inner::Gguf(g) => g.encode(text, opts.add_special, opts.parse_special),
            Inner::Hf(h) => h.encode(text, opts.add_special, opts.parse_special),
        }
    }

    /// The text of `ids`, special tokens included as written.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.decode_with(ids, DecodeOptions::default())
    }

    pub fn decode_with(&self, ids: &[u32], opts: DecodeOptions) -> Result<String, TokenizerError> {
        match &self.inner {
            Inner::Gguf(g) => g.decode(ids, !opts.skip_special),
            Inner::Hf(h) => h.decode(ids, opts.skip_special),
        }
    }

    /// The bytes one token stands for (may be part of a character).
    pub fn piece(&self, id: u32, opts: DecodeOptions) -> Result<Cow<'_, [u8]>, TokenizerError> {
        match &self.inner {
            Inner::Gguf(g) => g.piece(id, !opts.skip_special),
            Inner::Hf(h) if opts.skip_special && h.is_special(id) => Ok(Cow::Borrowed(&[])),
            Inner::Hf(h) => h.piece(id),
        }
    }

    /// The token as the vocabulary spells it (`Ġworld`, `▁world`, `<0x0A>`).
    pub fn token_text(&self, id: u32) -> Option<Cow<'_, str>> {
        match &self.inner {
            Inner::Gguf(g) => g.vocab.text(id).map(Cow::Borrowed),
            Inner::Hf(h) => h.token_text(id).map(Cow::Owned),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Gguf(g) => g.vocab.len(),
            Inner::Hf(h) => h.vocab_size(),
        }
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        match &self.inner {
            Inner::Gguf(g) => &g.specials,
            Inner::Hf(h) => &h.specials,
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.special_tokens().bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.special_tokens().eos
    }

    /// Whether generation stops at this token.
    pub fn is_eog(&self, id: u32) -> bool {
        self.special_tokens().eog.contains(&id)
    }

    /// The Jinja chat template the model ships (`tokenizer.chat_template`).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The text of a token (by its bytes), for `bos_token`/`eos_token` in
    /// chat templates.
    pub fn token_string(&self, id: Option<u32>) -> String {
        id.and_then(|id| self.token_text(id))
            .map(Cow::into_owned)
            .unwrap_or_default()
    }

    pub fn stream_decoder(&self, opts: DecodeOptions) -> StreamDecoder<&Tokenizer> {
        StreamDecoder::new(self, opts)
    }
}
