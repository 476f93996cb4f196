//! SentencePiece BPE (`tokenizer.ggml.model = llama`), llama.cpp's
//! `llm_tokenizer_spm_session`: start from single chars, repeatedly merge
//! the adjacent pair whose concatenation is the vocabulary token with the
//! highest score (leftmost on ties); whatever is left that is not a token
//! falls back to `<0xNN>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::vocab::Vocab;
use super::TokenizerError;

struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

// Max-heap order: higher score first, then the smaller left index.
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}

/// Appends the tokens of `text` (spaces already escaped as `▁`).
/// `unk` stands in for a byte that has no `<0xNN>` token.
pub(crate) fn encode(
    vocab: &Vocab,
    text: &str,
    unk: Option<u32>,
    out: &mut Vec<u32>,
) -> Result<(), TokenizerError> {
    let mut session = Session {
        vocab,
        text,
        syms: Vec::new(),
        queue: BinaryHeap::new(),
    };
    for (start, c) in text.char_indices() {
        let i = session.syms.len();
        session.syms.push(Symbol {
            start,
            len: c.len_utf8(),
            prev: i.checked_sub(1),
            next: Some(i + 1),
        });
    }
    if let Some(last) = session.syms.last_mut() {
        last.next = None;
    }
    for i in 1..session.syms.len() {
        session.try_add(Some(i - 1), Some(i));
    }
    session.merge_all();
    let mut i = if session.syms.is_empty() {
        None
    } else {
        Some(0)
    };
    while let Some(idx) = i {
        session.emit(idx, unk, out)?;
        i = session.syms.get(idx).and_then(|s| s.next);
    }
    Ok(())
}

struct Session<'a> {
    vocab: &'a Vocab,
    text: &'a str,
    syms: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
}

impl Session<'_> {
    fn sym_text(&self, idx: usize) -> &str {
        self.syms
            .get(idx)
            .and_then(|s| self.text.get(s.start..s.start + s.len))
            .unwrap_or("")
    }

    fn try_add(&mut self, left: Option<usize>, right: Option<usize>) {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let (Some(ls), Some(rs)) = (self.syms.get(l), self.syms.get(r)) else {
            return;
        };
        let size = ls.len + rs.len;
        // Symbols are contiguous, so the pair's text is one slice.
        let Some(joined) = self.text.get(ls.start..ls.start + size) else {
            return;
        };
        let Some(id) = self.vocab.id(joined) else {
            return;
        };
        let score = self.vocab.scores.get(id as usize).copied().unwrap_or(0.0);
        self.queue.push(Bigram {
            score,
            left: l,
            right: r,
            size,
        });
    }

    fn merge_all(&mut self) {
        while let Some(b) = self.queue.pop() {
            let (Some(ls), Some(rs)) = (self.syms.get(b.left), self.syms.get(b.right)) else {
                continue;
            };
            if ls.len == 0 || rs.len == 0 || ls.len + rs.len != b.size {
                continue; // stale: a side merged with something else first
            }
            let after = rs.next;
            if let Some(s) = self.syms.get_mut(b.left) {
                s.len = b.size;
                s.next = after;
            }
            if let Some(s) = self.syms.get_mut(b.right) {
                s.len = 0;
            }
            if let Some(s) = after.and_then(|a| self.syms.get_mut(a)) {
                s.prev = Some(b.left);
            }
            let before = self.syms.get(b.left).and_then(|s| s.prev);
            self.try_add(before, Some(b.left));
            self.try_add(Some(b.left), after);
        }
    }

    fn emit(&self, idx: usize, unk: Option<u32>, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        let text = self.sym_text(idx);
        if let Some(id) = self.vocab.id(text) {
            out.push(id);
            return Ok(());
        }
        // Only pairs whose text is a token are ever merged, so a symbol that
        // is not a token is a single char (llama.cpp's `rev_merge` walk never
        // finds anything for it): fall back to its bytes.
        for b in text.bytes() {
            out.push(
                byte_token(self.vocab, b)
                    .or(unk)
                    .ok_or(TokenizerError::NoByteToken(b))?,
            );
        }
        Ok(())
    }
}

/// llama.cpp's `byte_to_token` for SentencePiece: `<0xNN>`, else the byte
/// as a one-char token.
pub(crate) fn byte_token(vocab: &Vocab, b: u8) -> Option<u32> {
    vocab.id(&format!("<0x{b:02X}>")).or_else(|| {
        if b.is_ascii() {
            vocab.id(&char::from(b).to_string())
        } else {
            None
        }
    })
}
