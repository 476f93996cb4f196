//! Incremental detokenization for streaming output: tokens arrive one at a
//! time and a multibyte character may be split across them (byte-level BPE
//! and byte fallback both do this), so bytes are held back until they form
//! whole characters.

use super::{DecodeOptions, Tokenizer, TokenizerError};

pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    opts: DecodeOptions,
    /// Bytes of an incomplete UTF-8 sequence (at most 3).
    pending: Vec<u8>,
}

impl<'t> StreamDecoder<'t> {
    pub fn new(tokenizer: &'t Tokenizer, opts: DecodeOptions) -> StreamDecoder<'t> {
        StreamDecoder {
            tokenizer,
            opts,
            pending: Vec::new(),
        }
    }

    /// Adds one token; returns the text it completes, if any. Never splits
    /// a character: an incomplete one waits for the next token. Bytes that
    /// can never form a character come out as U+FFFD.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        let piece = self.tokenizer.piece(id, self.opts)?;
        self.pending.extend_from_slice(&piece);
        let mut text = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    text.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete sequence at the end: keep it for later.
                        None => {
                            rest = after;
                            break;
                        }
                        Some(n) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = after.get(n..).unwrap_or_default();
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        Ok(if text.is_empty() { None } else { Some(text) })
    }

    /// Ends the stream: whatever is still held back, as U+FFFD.
    pub fn flush(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(text)
    }
}
