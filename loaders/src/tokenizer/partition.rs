//! Splitting special tokens out of the text before the tokenizer model runs,
//! as llama.cpp's `tokenizer_st_partition` does.
//!
//! Every CONTROL, USER_DEFINED and UNKNOWN token is looked for, longest
//! first; each occurrence becomes its own fragment and the text between is
//! tokenized normally. Without `parse_special` only USER_DEFINED tokens are
//! split out (so "<|im_start|>" typed by a user stays plain text), matching
//! HF `tokenizers`, which always splits added non-special tokens.

use std::ops::Range;

use super::vocab::{attr, Vocab};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// A byte range of the input, never empty.
    Text(Range<usize>),
    Token(u32),
}

/// Ids of the tokens that may be split out, longest text first (llama.cpp's
/// `cache_special_tokens`; ties by id so the order is deterministic).
pub(crate) fn special_cache(vocab: &Vocab) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..vocab.len() as u32)
        .filter(|&id| vocab.attr(id) & attr::SPECIAL != 0)
        .collect();
    ids.sort_by_key(|&id| (std::cmp::Reverse(vocab.text(id).map_or(0, str::len)), id));
    ids
}

pub(crate) fn partition(
    text: &str,
    vocab: &Vocab,
    cache: &[u32],
    parse_special: bool,
) -> Vec<Fragment> {
    if text.is_empty() {
        return Vec::new();
    }
    let mut frags = vec![Fragment::Text(0..text.len())];
    for &id in cache {
        if !parse_special && vocab.attr(id) & (attr::CONTROL | attr::UNKNOWN) != 0 {
            continue;
        }
        let Some(needle) = vocab.text(id).filter(|t| !t.is_empty()) else {
            continue;
        };
        // Ranges always sit on char boundaries (they come from `find` of a
        // whole string), so `get` never fails; it just keeps slicing panic-free.
        let slice = |r: Range<usize>| text.get(r).unwrap_or_default();
        if !frags
            .iter()
            .any(|f| matches!(f, Fragment::Text(r) if slice(r.clone()).contains(needle)))
        {
            continue;
        }
        let mut next = Vec::with_capacity(frags.len() + 2);
        for frag in frags {
            let Fragment::Text(range) = frag else {
                next.push(frag);
                continue;
            };
            let mut start = range.start;
            while let Some(found) = slice(start..range.end).find(needle) {
                let at = start + found;
                if at > start {
                    next.push(Fragment::Text(start..at));
                }
                next.push(Fragment::Token(id));
                start = at + needle.len();
            }
            if start < range.end {
                next.push(Fragment::Text(start..range.end));
            }
        }
        frags = next;
    }
    frags
}
