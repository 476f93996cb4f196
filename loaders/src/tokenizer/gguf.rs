//! A tokenizer built from GGUF metadata (`tokenizer.ggml.*`), reproducing
//! llama.cpp's `llama_vocab` token for token: special-token partition, then
//! byte-level BPE with the model's pre-tokenizer, or SentencePiece BPE.

use std::borrow::Cow;

use super::partition::{partition, special_cache, Fragment};
use super::pretokenize::{split, PreConfig};
use super::specials::{self, Defaults, SpecialTokens};
use super::unicode::ByteLevel;
use super::vocab::{attr, string_array, Vocab};
use super::{bpe, spm, TokenizerError};
use crate::Metadata;

/// SentencePiece's visible space.
const SPM_SPACE: char = '▁';

pub(crate) enum Model {
    /// `gpt2`: byte-level BPE.
    Bpe { merges: bpe::Merges, pre: PreConfig },
    /// `llama`: SentencePiece BPE over scores.
    Spm,
}

pub(crate) struct GgufTokenizer {
    pub vocab: Vocab,
    pub specials: SpecialTokens,
    pub model: Model,
    /// SentencePiece: a space goes before text that starts the input or
    /// follows a special token (`tokenizer.ggml.add_space_prefix`).
    add_space_prefix: bool,
    clean_spaces: bool,
    special_cache: Vec<u32>,
}

impl GgufTokenizer {
    pub fn from_metadata(meta: &Metadata) -> Result<GgufTokenizer, TokenizerError> {
        const MODEL: &str = "tokenizer.ggml.model";
        const MERGES: &str = "tokenizer.ggml.merges";
        let name = match meta.get(MODEL) {
            None => return Err(TokenizerError::MissingKey(MODEL)),
            Some(v) => v.as_str().ok_or_else(|| TokenizerError::BadKey {
                key: MODEL,
                detail: format!("expected a string, got {v:?}"),
            })?,
        };
        let mut vocab = Vocab::from_gguf(meta)?;
        let pre_name = match meta.get("tokenizer.ggml.pre") {
            None => None,
            Some(v) => Some(v.as_str().ok_or_else(|| TokenizerError::BadKey {
                key: "tokenizer.ggml.pre",
                detail: format!("expected a string, got {v:?}"),
            })?),
        };
        // Per-model defaults are llama.cpp's (`llama_vocab::impl::load`).
        let (model, defaults, space_prefix, clean_spaces) = match name {
            "gpt2" => {
                let pre = PreConfig::from_name(pre_name)?;
                let rules =
                    string_array(meta, MERGES)?.ok_or(TokenizerError::MissingKey(MERGES))?;
                let merges = bpe::Merges::new(&vocab, &rules)?;
                let defaults = Defaults {
                    bos: Some(11),
                    eos: Some(11),
                    unk: None,
                    add_bos: pre.add_bos,
                };
                (
                    Model::Bpe { merges, pre },
                    defaults,
                    false,
                    pre.clean_spaces,
                )
            }
            "llama" => {
                let defaults = Defaults {
                    bos: Some(1),
                    eos: Some(2),
                    unk: Some(0),
                    add_bos: true,
                };
                (Model::Spm, defaults, true, false)
            }
            other => return Err(TokenizerError::UnknownModel(other.to_owned())),
        };
        let add_space_prefix =
            specials::flag(meta, "tokenizer.ggml.add_space_prefix", space_prefix)?;
        let specials = specials::resolve(meta, &mut vocab, defaults)?;
        let special_cache = special_cache(&vocab);
        Ok(GgufTokenizer {
            vocab,
            specials,
            model,
            add_space_prefix,
            clean_spaces,
            special_cache,
        })
    }

    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::new();
        if add_special && self.specials.add_bos {
            out.extend(self.specials.bos);
        }
        let mut prev_special = true; // the input start counts as one for SPM
        for frag in partition(text, &self.vocab, &self.special_cache, parse_special) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(range) => {
                    let piece = text.get(range).unwrap_or("");
                    self.encode_text(piece, prev_special, &mut out)?;
                    prev_special = false;
                }
            }
        }
        if add_special && self.specials.add_eos {
            out.extend(self.specials.eos);
        }
        Ok(out)
    }

    fn encode_text(
        &self,
        text: &str,
        prev_special: bool,
        out: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        match &self.model {
            Model::Spm => {
                let mut escaped = String::with_capacity(text.len() + 3);
                if self.add_space_prefix && prev_special {
                    escaped.push(SPM_SPACE);
                }
                escaped.extend(text.chars().map(|c| if c == ' ' { SPM_SPACE } else { c }));
                spm::encode(&self.vocab, &escaped, self.specials.unk, out)
            }
            Model::Bpe { merges, pre } => {
                let chars: Vec<char> = text.chars().collect();
                let bytes = ByteLevel::get();
                let mut word = String::new();
                let mut utf8 = [0u8; 4];
                for range in split(pre.kind, &chars) {
                    word.clear();
                    for c in chars.get(range).unwrap_or_default() {
                        for &b in c.encode_utf8(&mut utf8).as_bytes() {
                            word.push(bytes.char_of(b));
                        }
                    }
                    merges.encode_word(&self.vocab, &word, pre.ignore_merges, out);
                }
                Ok(())
            }
        }
    }

    /// The bytes a token stands for (llama.cpp's `token_to_piece`). Control
    /// and unknown tokens give their text only when `special` is set.
    pub fn piece(&self, id: u32, special: bool) -> Result<Cow<'_, [u8]>, TokenizerError> {
        let text = self.vocab.text(id).ok_or(TokenizerError::IdOutOfRange {
            id,
            vocab_size: self.vocab.len(),
        })?;
        let a = self.vocab.attr(id);
        if a & (attr::CONTROL | attr::UNKNOWN) != 0 && !special {
            return Ok(Cow::Borrowed(&[]));
        }
        if a & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0 {
            return Ok(Cow::Borrowed(text.as_bytes()));
        }
        if a & attr::NORMAL != 0 {
            return Ok(match self.model {
                Model::Spm => Cow::Owned(text.replace(SPM_SPACE, " ").into_bytes()),
                Model::Bpe { .. } => Cow::Owned(ByteLevel::get().bytes_of(text)),
            });
        }
        if a & attr::BYTE != 0 {
            // `<0xNN>`
            let byte = text
                .strip_prefix("<0x")
                .and_then(|t| t.strip_suffix('>'))
                .and_then(|hex| u8::from_str_radix(hex, 16).ok());
            return Ok(Cow::Owned(byte.map(|b| vec![b]).unwrap_or_default()));
        }
        // UNUSED / UNDEFINED tokens render as nothing.
        Ok(Cow::Borrowed(&[]))
    }

    /// llama.cpp's `detokenize`: pieces joined, the SentencePiece prefix
    /// space dropped, and for most BPE models " ," → "," etc.
    pub fn decode(&self, ids: &[u32], special: bool) -> Result<String, TokenizerError> {
        let mut ids = ids;
        // The space encode put before the text goes again (llama.cpp strips
        // one leading space of the first piece)...
        let mut strip_space = self.add_space_prefix;
        if !special {
            // ...but when the BOS that encode added is removed (llama.cpp's
            // `remove_special`), llama.cpp keeps the space: so do we.
            let sp = &self.specials;
            if let ([first, rest @ ..], true) = (ids, sp.add_bos) {
                if Some(*first) == sp.bos {
                    ids = rest;
                    strip_space = false;
                }
            }
            if let ([rest @ .., last], true) = (ids, sp.add_eos) {
                if Some(*last) == sp.eos {
                    ids = rest;
                }
            }
        }
        let mut bytes = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let piece = self.piece(id, special)?;
            let piece: &[u8] = &piece;
            let piece = match piece {
                [b' ', rest @ ..] if i == 0 && strip_space => rest,
                p => p,
            };
            bytes.extend_from_slice(piece);
        }
        if self.clean_spaces {
            bytes = clean_spaces(&bytes);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// llama.cpp's three `clean_spaces` passes (after HF's
/// `clean_up_tokenization`): drop the space before `?!.,`, around a lone
/// `'`, and before `'s 'm 're 've`.
fn clean_spaces(text: &[u8]) -> Vec<u8> {
    let mut a: Vec<u8> = Vec::with_capacity(text.len());
    for &x in text {
        if a.last() == Some(&b' ') && matches!(x, b'?' | b'!' | b'.' | b',') {
            a.pop();
        }
        a.push(x);
    }
    let mut b: Vec<u8> = Vec::with_capacity(a.len());
    let mut i = 0;
    while let Some(&x) = a.get(i) {
        if x == b'\'' && i > 0 && a.get(i - 1) == Some(&b' ') && a.get(i + 1) == Some(&b' ') {
            b.pop();
            b.push(x);
            i += 2;
            continue;
        }
        b.push(x);
        i += 1;
    }
    let mut c: Vec<u8> = Vec::with_capacity(b.len());
    for (i, &x) in b.iter().enumerate() {
        if x == b'\'' && c.last() == Some(&b' ') {
            let next = (b.get(i + 1).copied(), b.get(i + 2).copied());
            if matches!(
                next,
                (Some(b's' | b'm'), _) | (Some(b'r' | b'v'), Some(b'e'))
            ) {
                c.pop();
            }
        }
        c.push(x);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::clean_spaces;

    #[test]
    fn cleans_like_llama_cpp() {
        let t = |s: &str| String::from_utf8(clean_spaces(s.as_bytes())).unwrap_or_default();
        assert_eq!(t("Hello , world !"), "Hello, world!");
        assert_eq!(t("a ' b"), "a'b");
        assert_eq!(t("it 's we 're do 't"), "it's we're do 't");
    }
}
