//! A tokenizer from a Hugging Face `tokenizer.json`, through the
//! `tokenizers` crate, with special tokens and the chat template from the
//! `tokenizer_config.json` (and `generation_config.json`) beside it.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use tokenizers::decoders::DecoderWrapper;

use super::specials::{SpecialTokens, EOG_NAMES};
use super::unicode::ByteLevel;
use super::TokenizerError;

pub(crate) struct HfTokenizer {
    /// Splits special tokens out of the text (`parse_special`).
    parsing: tokenizers::Tokenizer,
    /// The same with special tokens encoded as plain text.
    plain: tokenizers::Tokenizer,
    pub specials: SpecialTokens,
    pub chat_template: Option<String>,
    byte_level: bool,
    path: PathBuf,
}

impl HfTokenizer {
    pub fn from_file(path: &Path) -> Result<HfTokenizer, TokenizerError> {
        let hf_err = |e: tokenizers::Error| TokenizerError::Hf {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let parsing = tokenizers::Tokenizer::from_file(path).map_err(hf_err)?;
        let mut plain = parsing.clone();
        plain.set_encode_special_tokens(true);
        let byte_level = match parsing.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => true,
            Some(DecoderWrapper::Sequence(seq)) => seq
                .get_decoders()
                .iter()
                .any(|d| matches!(d, DecoderWrapper::ByteLevel(_))),
            _ => false,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let config = read_json(&dir.join("tokenizer_config.json"))?;
        let generation = read_json(&dir.join("generation_config.json"))?;
        let token = |key: &str| -> Option<u32> {
            let v = config.as_ref()?.get(key)?;
            // A string, or an AddedToken object `{"content": ...}`.
            let text = v.as_str().or_else(|| v.get("content")?.as_str())?;
            parsing.token_to_id(text)
        };
        let flag = |key: &str| {
            config
                .as_ref()
                .and_then(|c| c.get(key))
                .and_then(|v| v.as_bool())
        };
        let mut specials = SpecialTokens {
            bos: token("bos_token"),
            eos: token("eos_token"),
            unk: token("unk_token"),
            pad: token("pad_token"),
            sep: token("sep_token"),
            add_bos: flag("add_bos_token").unwrap_or(false),
            add_eos: flag("add_eos_token").unwrap_or(false),
            ..SpecialTokens::default()
        };
        specials.eot = ["<|eot_id|>", "<|im_end|>", "<end_of_turn>"]
            .iter()
            .find_map(|t| parsing.token_to_id(t));
        specials.eom = parsing.token_to_id("<|eom_id|>");
        specials.eog.extend(
            [specials.eos, specials.eot, specials.eom]
                .into_iter()
                .flatten(),
        );
        specials
            .eog
            .extend(EOG_NAMES.iter().filter_map(|t| parsing.token_to_id(t)));
        if let Some(ids) = generation.as_ref().and_then(|g| g.get("eos_token_id")) {
            let ids = ids
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_else(|| vec![ids]);
            specials.eog.extend(
                ids.iter()
                    .filter_map(|v| v.as_u64())
                    .filter_map(|v| u32::try_from(v).ok()),
            );
        }
        Ok(HfTokenizer {
            parsing,
            plain,
            specials,
            chat_template: config.as_ref().and_then(chat_template),
            byte_level,
            path: path.to_owned(),
        })
    }

    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let tok = if parse_special {
            &self.parsing
        } else {
            &self.plain
        };
        let enc = tok
            .encode_fast(text, add_special)
            .map_err(|e| self.err(e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.check(ids)?;
        self.parsing
            .decode(ids, skip_special)
            .map_err(|e| self.err(e))
    }

    pub fn vocab_size(&self) -> usize {
        self.parsing.get_vocab_size(true)
    }

    pub fn token_text(&self, id: u32) -> Option<String> {
        self.parsing.id_to_token(id)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.parsing
            .get_added_vocabulary()
            .simple_id_to_token(id)
            .is_some()
            && self
                .parsing
                .get_added_tokens_decoder()
                .get(&id)
                .is_some_and(|t| t.special)
    }

    /// The bytes of one token, for streaming. Byte-level vocabularies map
    /// back through GPT-2's byte alphabet; others take `<0xNN>` as a byte
    /// and `▁` as a space (SentencePiece conventions).
    pub fn piece(&self, id: u32) -> Result<Cow<'_, [u8]>, TokenizerError> {
        let text = self.token_text(id).ok_or(TokenizerError::IdOutOfRange {
            id,
            vocab_size: self.vocab_size(),
        })?;
        if self
            .parsing
            .get_added_vocabulary()
            .simple_id_to_token(id)
            .is_some()
        {
            return Ok(Cow::Owned(text.into_bytes()));
        }
        if self.byte_level {
            return Ok(Cow::Owned(ByteLevel::get().bytes_of(&text)));
        }
        let byte = text
            .strip_prefix("<0x")
            .and_then(|t| t.strip_suffix('>'))
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        Ok(Cow::Owned(match byte {
            Some(b) => vec![b],
            None => text.replace('▁', " ").into_bytes(),
        }))
    }

    fn check(&self, ids: &[u32]) -> Result<(), TokenizerError> {
        let n = self.vocab_size();
        match ids.iter().find(|&&id| self.token_text(id).is_none()) {
            Some(&id) => Err(TokenizerError::IdOutOfRange { id, vocab_size: n }),
            None => Ok(()),
        }
    }

    fn err(&self, e: tokenizers::Error) -> TokenizerError {
        TokenizerError::Hf {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>, TokenizerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| TokenizerError::Hf {
                path: path.to_owned(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenizerError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// `chat_template` is a string, or a list of `{name, template}` of which
/// "default" is the one to use.
fn chat_template(config: &serde_json::Value) -> Option<String> {
    let t = config.get("chat_template")?;
    if let Some(s) = t.as_str() {
        return Some(s.to_owned());
    }
    let list = t.as_array()?;
    let named = |n: &str| {
        list.iter()
            .find(|e| e.get("name").and_then(|v| v.as_str()) == Some(n))
    };
    named("default")
        .or_else(|| list.first())
        .and_then(|e| e.get("template")?.as_str())
        .map(str::to_owned)
}
