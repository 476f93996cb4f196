//! The vocabulary of a GGUF tokenizer: token texts, scores and attributes
//! from `tokenizer.ggml.tokens`, `.scores` and `.token_type`.

use std::collections::HashMap;

use super::TokenizerError;
use crate::{Metadata, Value, ValueType};

/// Token attributes, bit for bit llama.cpp's `llama_token_attr`: a token can
/// gain bits after loading (an end-of-turn token named like one becomes
/// CONTROL even when the file says NORMAL), so a bit set, not an enum.
pub(crate) mod attr {
    pub const UNKNOWN: u32 = 1 << 0;
    pub const UNUSED: u32 = 1 << 1;
    pub const NORMAL: u32 = 1 << 2;
    pub const CONTROL: u32 = 1 << 3;
    pub const USER_DEFINED: u32 = 1 << 4;
    pub const BYTE: u32 = 1 << 5;
    /// Tokens that `parse_special` may split out of the text.
    pub const SPECIAL: u32 = CONTROL | USER_DEFINED | UNKNOWN;
}

/// GGUF `token_type` values (llama.cpp's `llama_token_type`) → attributes.
/// Without a `token_type` array every token is NORMAL.
fn attr_of_type(token_type: i64) -> u32 {
    match token_type {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => 0, // UNDEFINED: decodes to nothing, never matched as special
    }
}

pub(crate) struct Vocab {
    pub texts: Vec<String>,
    pub scores: Vec<f32>,
    pub attrs: Vec<u32>,
    pub ids: HashMap<String, u32>,
}

impl Vocab {
    pub fn from_gguf(meta: &Metadata) -> Result<Vocab, TokenizerError> {
        const TOKENS: &str = "tokenizer.ggml.tokens";
        const SCORES: &str = "tokenizer.ggml.scores";
        const TYPES: &str = "tokenizer.ggml.token_type";

        let raw = string_array(meta, TOKENS)?.ok_or(TokenizerError::MissingKey(TOKENS))?;
        if raw.is_empty() {
            return Err(TokenizerError::EmptyVocab);
        }
        // Ids are u32 everywhere; a vocabulary this large is a corrupt file.
        if u32::try_from(raw.len()).is_err() {
            return Err(TokenizerError::BadKey {
                key: TOKENS,
                detail: "too many tokens".into(),
            });
        }
        let n = raw.len();
        let scores = match meta.get(SCORES) {
            None => vec![0.0; n],
            Some(v) => {
                let s = number_array(v, SCORES)?;
                check_len(SCORES, s.len(), n)?;
                s.into_iter().take(n).map(|x| x as f32).collect()
            }
        };
        let attrs = match meta.get(TYPES) {
            None => vec![attr::NORMAL; n],
            Some(v) => {
                let t = int_array(v, TYPES)?;
                check_len(TYPES, t.len(), n)?;
                t.into_iter().take(n).map(attr_of_type).collect()
            }
        };

        let mut texts = Vec::with_capacity(n);
        let mut ids = HashMap::with_capacity(n);
        for (i, text) in raw.into_iter().enumerate() {
            let id = i as u32; // fits: checked above
                               // llama.cpp renames empty tokens so every token has a text.
            let text = if text.is_empty() {
                format!("[EMPTY_{id}]")
            } else {
                text.to_owned()
            };
            if let Some(&first) = ids.get(&text) {
                return Err(TokenizerError::DuplicateToken {
                    text,
                    first,
                    second: id,
                });
            }
            ids.insert(text.clone(), id);
            texts.push(text);
        }
        Ok(Vocab {
            texts,
            scores,
            attrs,
            ids,
        })
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub fn attr(&self, id: u32) -> u32 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }

    pub fn text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }

    pub fn add_attr(&mut self, id: u32, bits: u32) {
        if let Some(a) = self.attrs.get_mut(id as usize) {
            *a |= bits;
        }
    }

    pub fn set_attr(&mut self, id: u32, bits: u32) {
        if let Some(a) = self.attrs.get_mut(id as usize) {
            *a = bits;
        }
    }
}

fn check_len(key: &'static str, got: usize, want: usize) -> Result<(), TokenizerError> {
    // llama.cpp accepts longer arrays and reads the first n entries.
    if got < want {
        return Err(TokenizerError::LengthMismatch { key, got, want });
    }
    Ok(())
}

/// A string array, or `None` when the key is absent.
pub(crate) fn string_array<'m>(
    meta: &'m Metadata,
    key: &'static str,
) -> Result<Option<Vec<&'m str>>, TokenizerError> {
    let Some(value) = meta.get(key) else {
        return Ok(None);
    };
    let bad = |detail: &str| TokenizerError::BadKey {
        key,
        detail: detail.into(),
    };
    let Value::Array(ValueType::String, items) = value else {
        return Err(bad("expected an array of strings"));
    };
    items
        .iter()
        .map(|v| v.as_str().ok_or_else(|| bad("non-string element")))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn int_array(value: &Value, key: &'static str) -> Result<Vec<i64>, TokenizerError> {
    array_of(value, key, "non-integer", Value::as_i64)
}

fn number_array(value: &Value, key: &'static str) -> Result<Vec<f64>, TokenizerError> {
    array_of(value, key, "non-numeric", Value::as_f64)
}

/// Every element of an array through `get`; `what` names an element `get`
/// refuses.
fn array_of<T>(
    value: &Value,
    key: &'static str,
    what: &str,
    get: impl Fn(&Value) -> Option<T>,
) -> Result<Vec<T>, TokenizerError> {
    let items = value.as_array().ok_or_else(|| TokenizerError::BadKey {
        key,
        detail: "expected an array".into(),
    })?;
    items
        .iter()
        .map(|v| {
            get(v).ok_or_else(|| TokenizerError::BadKey {
                key,
                detail: format!("{what} element {v:?}"),
            })
        })
        .collect()
}
