//! Byte-level BPE (GPT-2 style, `tokenizer.ggml.model = gpt2`): inside each
//! pre-tokenized word, repeatedly merge the adjacent pair with the lowest
//! merge rank, leftmost first — llama.cpp's `llm_tokenizer_bpe_session`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::vocab::Vocab;
use super::TokenizerError;

pub(crate) struct Merges {
    /// (left id, right id) → rank (the rule's index in `tokenizer.ggml.merges`).
    ranks: HashMap<(u32, u32), u32>,
}

impl Merges {
    /// Parses `"left right"` rules. Every side and the merged token must be
    /// in the vocabulary: a rule that names anything else comes from a broken
    /// file, and is refused rather than silently never applied.
    pub fn new(vocab: &Vocab, rules: &[&str]) -> Result<Merges, TokenizerError> {
        let mut ranks = HashMap::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte.
            let split = rule.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
            let (left, right) = match split {
                Some(p) => (rule.get(..p).unwrap_or(""), rule.get(p + 1..).unwrap_or("")),
                None => ("", ""),
            };
            if left.is_empty() || right.is_empty() {
                return Err(TokenizerError::MalformedMerge {
                    index,
                    rule: (*rule).to_owned(),
                });
            }
            let missing = |text: String| TokenizerError::MergeUnknownToken {
                index,
                rule: (*rule).to_owned(),
                missing: text,
            };
            let l = vocab.id(left).ok_or_else(|| missing(left.to_owned()))?;
            let r = vocab.id(right).ok_or_else(|| missing(right.to_owned()))?;
            let merged = format!("{left}{right}");
            if vocab.id(&merged).is_none() {
                return Err(missing(merged));
            }
            let rank = u32::try_from(index).unwrap_or(u32::MAX);
            // A repeated rule keeps its first (best) rank, as llama.cpp does.
            ranks.entry((l, r)).or_insert(rank);
        }
        Ok(Merges { ranks })
    }

    fn rank(&self, vocab: &Vocab, left: &str, right: &str) -> Option<u32> {
        let l = vocab.id(left)?;
        let r = vocab.id(right)?;
        self.ranks.get(&(l, r)).copied()
    }

    /// Appends the tokens of one byte-level-encoded word.
    pub fn encode_word(&self, vocab: &Vocab, word: &str, ignore_merges: bool, out: &mut Vec<u32>) {
        if ignore_merges {
            if let Some(id) = vocab.id(word) {
                out.push(id);
                return;
            }
        }
        // One symbol per char; merged symbols grow to the right, the absorbed
        // one becomes empty. Symbols stay contiguous byte ranges of `word`.
        let mut syms: Vec<Symbol> = Vec::new();
        for (start, c) in word.char_indices() {
            let i = syms.len();
            syms.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: Some(i + 1),
            });
        }
        if let Some(last) = syms.last_mut() {
            last.next = None;
        }
        let text = |s: &Symbol| word.get(s.start..s.start + s.len).unwrap_or("");

        // Min-heap on (rank, left index): the leftmost of the best merges.
        let mut queue = BinaryHeap::new();
        let push =
            |queue: &mut BinaryHeap<_>, syms: &[Symbol], l: Option<usize>, r: Option<usize>| {
                let (Some(l), Some(r)) = (l, r) else { return };
                let (Some(ls), Some(rs)) = (syms.get(l), syms.get(r)) else {
                    return;
                };
                if let Some(rank) = self.rank(vocab, text(ls), text(rs)) {
                    queue.push(Reverse((rank, l, r, ls.len + rs.len)));
                }
            };
        for i in 1..syms.len() {
            push(&mut queue, &syms, Some(i - 1), Some(i));
        }
        while let Some(Reverse((_, l, r, size))) = queue.pop() {
            let (Some(ls), Some(rs)) = (syms.get(l), syms.get(r)) else {
                continue;
            };
            // Stale entry: one side has merged with something since.
            if ls.len == 0 || rs.len == 0 || ls.len + rs.len != size {
                continue;
            }
            let after = rs.next;
            if let Some(s) = syms.get_mut(l) {
                s.len = size;
                s.next = after;
            }
            if let Some(s) = syms.get_mut(r) {
                s.len = 0;
            }
            if let Some(s) = after.and_then(|a| syms.get_mut(a)) {
                s.prev = Some(l);
            }
            let before = syms.get(l).and_then(|s| s.prev);
            push(&mut queue, &syms, before, Some(l));
            push(&mut queue, &syms, Some(l), after);
        }

        for s in syms.iter().filter(|s| s.len > 0) {
            let piece = text(s);
            match vocab.id(piece) {
                Some(id) => out.push(id),
                // Not a token (a char outside the byte alphabet): llama.cpp
                // looks each byte up alone, which only ASCII bytes can match.
                None => out.extend(
                    piece
                        .bytes()
                        .filter(u8::is_ascii)
                        .filter_map(|b| vocab.id(&char::from(b).to_string())),
                ),
            }
        }
    }
}

struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}
