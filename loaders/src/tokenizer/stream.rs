//! Incremental detokenization for streaming output: tokens arrive one at a
//! time and a multibyte character may be split across them (byte-level BPE
//! and byte fallback both do this), so bytes are held back until they form
//! whole characters.

use std::ops::Deref;

use super::{DecodeOptions, Tokenizer, TokenizerError};

/// `T` holds the tokenizer: `&Tokenizer` from [`Tokenizer::stream_decoder`],
/// or an `Arc<Tokenizer>` where the decoder must own its share (a generator
/// that outlives the borrow).
pub struct StreamDecoder<T: Deref<Target = Tokenizer>> {
    tokenizer: T,
    opts: DecodeOptions,
    utf8: Utf8Pending,
}

impl<T: Deref<Target = Tokenizer>> StreamDecoder<T> {
    pub fn new(tokenizer: T, opts: DecodeOptions) -> StreamDecoder<T> {
        StreamDecoder {
            tokenizer,
            opts,
            utf8: Utf8Pending::default(),
        }
    }

    /// Adds one token; returns the text it completes, if any. Never splits
    /// a character: an incomplete one waits for the next token. Bytes that
    /// can never form a character come out as U+FFFD.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        let piece = self.tokenizer.piece(id, self.opts)?;
        let text = self.utf8.push(&piece);
        Ok(if text.is_empty() { None } else { Some(text) })
    }

    /// Ends the stream: whatever is still held back, as U+FFFD.
    pub fn flush(&mut self) -> Option<String> {
        let text = self.utf8.flush();
        if text.is_empty() {
            None
        } else {
            Some(text)
        }
    }
}

/// Holds bytes until they form whole UTF-8 characters; bytes that never
/// can become U+FFFD.
#[derive(Clone, Debug, Default)]
struct Utf8Pending {
    /// Bytes of an incomplete UTF-8 sequence (at most 3).
    pending: Vec<u8>,
}

impl Utf8Pending {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
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
        text
    }

    fn flush(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::Utf8Pending;

    #[test]
    fn utf8_pending_waits_for_whole_characters() {
        let mut b = Utf8Pending::default();
        let e = "é".as_bytes();
        assert_eq!(b.push(&[b'a', e[0]]), "a");
        assert_eq!(b.push(&e[1..]), "é");
        assert_eq!(b.push(&[0xff, b'x']), "\u{fffd}x");
        assert_eq!(b.push(&e[..1]), "");
        assert_eq!(b.flush(), "\u{fffd}");
    }
}
