//! Pre-tokenizers of byte-level BPE models: how the text is cut into words
//! before BPE merges run inside each word. Each is llama.cpp's regex list
//! for that `tokenizer.ggml.pre` (`llm_tokenizer_bpe` in llama-vocab.cpp),
//! written as hand-coded splitters like its `unicode_regex_split_custom_*`:
//! the same matches as the regexes, with llama.cpp's character classes.
//!
//! Regexes apply in sequence: each one splits every piece the previous ones
//! produced, and the text between matches stays a piece of its own.

use std::ops::Range;

use super::unicode::{flags, Flags};
use super::TokenizerError;

/// The pre-tokenizer families kiln knows (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// No or unknown-to-the-converter pre-tokenizer: punctuation runs, the
    /// GPT-2 regex, number runs, then ASCII digit triples.
    Default,
    /// GPT-2's regex.
    Gpt2,
    /// StarCoder/SmolLM: every digit alone, then the GPT-2 regex.
    Smollm,
    /// Llama 3: case-insensitive contractions, numbers in groups of 3,
    /// newlines kept with the whitespace before them.
    Llama3,
    /// Qwen 2: Llama 3's regex with single digits.
    Qwen2,
}

/// A `tokenizer.ggml.pre` name resolved: the splitter plus the flags
/// llama.cpp sets along with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PreConfig {
    pub kind: PreTokenizer,
    /// A word that is already a token is not merged (Llama 3 and kin).
    pub ignore_merges: bool,
    /// Default for `add_bos_token` when the file does not say.
    pub add_bos: bool,
    /// Whether decoding tidies " ," → "," and similar, as llama.cpp does.
    pub clean_spaces: bool,
}

impl PreConfig {
    pub fn from_name(name: Option<&str>) -> Result<PreConfig, TokenizerError> {
        use PreTokenizer::*;
        let cfg = |kind, ignore_merges, add_bos, clean_spaces| PreConfig {
            kind,
            ignore_merges,
            add_bos,
            clean_spaces,
        };
        let Some(name) = name else {
            return Ok(cfg(Default, false, false, true));
        };
        Ok(match name {
            "default" => cfg(Default, false, false, true),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => cfg(Llama3, true, true, true),
            "dbrx" | "smaug-bpe" => cfg(Llama3, false, false, true),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open" => {
                cfg(Qwen2, false, false, false)
            }
            "megrez" | "stablelm2" => cfg(Qwen2, false, false, true),
            "smollm" | "command-r" => cfg(Smollm, false, false, false),
            "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
                cfg(Smollm, false, false, true)
            }
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "mpt" | "olmo"
            | "jais" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" => {
                cfg(Gpt2, false, false, true)
            }
            "trillion" | "granite-docling" => cfg(Gpt2, false, false, false),
            other => return Err(TokenizerError::UnknownPreTokenizer(other.to_owned())),
        })
    }
}

/// One regex of a pre-tokenizer's list.
#[derive(Clone, Copy)]
enum Stage {
    /// Runs of chars in a class, cut into chunks of at most `max` chars
    /// (0: no limit): `\p{N}`, `\p{N}+`, `[0-9][0-9][0-9]`, ...
    Runs {
        class: fn(char, Flags) -> bool,
        max: usize,
    },
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}|
    ///  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3 { max_digits: usize },
}

fn is_number(_: char, f: Flags) -> bool {
    f.number
}
fn is_ascii_digit(c: char, _: Flags) -> bool {
    c.is_ascii_digit()
}
/// `[\p{P}\$\+<=>\^~\|]`
fn is_default_punct(c: char, f: Flags) -> bool {
    f.punctuation || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
}

fn stages(kind: PreTokenizer) -> &'static [Stage] {
    match kind {
        PreTokenizer::Default => &[
            Stage::Runs {
                class: is_default_punct,
                max: 0,
            },
            Stage::Gpt2,
            Stage::Runs {
                class: is_number,
                max: 0,
            },
            Stage::Runs {
                class: is_ascii_digit,
                max: 3,
            },
        ],
        PreTokenizer::Gpt2 => &[Stage::Gpt2],
        PreTokenizer::Smollm => &[
            Stage::Runs {
                class: is_number,
                max: 1,
            },
            Stage::Gpt2,
        ],
        PreTokenizer::Llama3 => &[Stage::Llama3 { max_digits: 3 }],
        PreTokenizer::Qwen2 => &[Stage::Llama3 { max_digits: 1 }],
    }
}

/// Cuts `text` into words, as ranges of char indices into `chars`.
pub(crate) fn split(kind: PreTokenizer, chars: &[char]) -> Vec<Range<usize>> {
    let mut pieces: Vec<Range<usize>> = std::iter::once(0..chars.len()).collect();
    for stage in stages(kind) {
        let mut next = Vec::with_capacity(pieces.len() * 2);
        for piece in pieces {
            let mut cut = Cutter {
                chars,
                end: piece.end,
                prev: piece.start,
                out: &mut next,
            };
            match *stage {
                Stage::Runs { class, max } => cut.runs(class, max),
                Stage::Gpt2 => cut.gpt2(),
                Stage::Llama3 { max_digits } => cut.llama3(max_digits),
            }
        }
        pieces = next;
    }
    pieces
}

/// Walks one piece `[prev, end)` and emits words; `prev` is where the next
/// word starts. Positions past `end` read as "no char" (the regexes never
/// look beyond the piece they split).
struct Cutter<'a> {
    chars: &'a [char],
    end: usize,
    prev: usize,
    out: &'a mut Vec<Range<usize>>,
}

impl Cutter<'_> {
    fn at(&self, pos: usize) -> Option<char> {
        if pos < self.end {
            self.chars.get(pos).copied()
        } else {
            None
        }
    }

    fn flags_at(&self, pos: usize) -> Option<Flags> {
        self.at(pos).map(flags)
    }

    /// Emits the word `[prev, to)`, if not empty.
    fn emit(&mut self, to: usize) {
        if to > self.prev {
            self.out.push(self.prev..to);
        }
        self.prev = to;
    }

    fn is(&self, pos: usize, test: impl Fn(Flags) -> bool) -> bool {
        self.flags_at(pos).is_some_and(test)
    }

    fn runs(&mut self, class: fn(char, Flags) -> bool, max: usize) {
        let in_class = |c: char| class(c, flags(c));
        let mut pos = self.prev;
        while let Some(c) = self.at(pos) {
            let want = in_class(c);
            let start = pos;
            while self.at(pos).is_some_and(|c| in_class(c) == want)
                && !(want && max > 0 && pos - start >= max)
            {
                pos += 1;
            }
            self.emit(pos);
        }
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d` (case-insensitive or not): the word's end.
    fn contraction(&self, pos: usize, fold: bool) -> Option<usize> {
        if self.at(pos) != Some('\'') {
            return None;
        }
        let low = |p: usize| {
            self.at(p).map(|c| {
                if fold {
                    c.to_lowercase().next().unwrap_or(c)
                } else {
                    c
                }
            })
        };
        match (low(pos + 1), low(pos + 2)) {
            (Some('s' | 't' | 'm' | 'd'), _) => Some(pos + 2),
            (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => {
                Some(pos + 3)
            }
            _ => None,
        }
    }

    /// Counts whitespace from `pos`; also returns one past the last \r or \n.
    fn whitespace_run(&self, pos: usize) -> (usize, Option<usize>) {
        let mut n = 0;
        let mut last_newline = None;
        while let Some(c) = self.at(pos + n).filter(|&c| flags(c).whitespace) {
            if c == '\r' || c == '\n' {
                last_newline = Some(pos + n + 1);
            }
            n += 1;
        }
        (n, last_newline)
    }

    fn gpt2(&mut self) {
        let not_word = |f: Flags| !(f.whitespace || f.letter || f.number);
        while let Some(c) = self.at(self.prev) {
            let pos = self.prev;
            if let Some(end) = self.contraction(pos, false) {
                self.emit(end);
                continue;
            }
            // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
            let body = pos + usize::from(c == ' ');
            let classes: [&dyn Fn(Flags) -> bool; 3] = [&|f| f.letter, &|f| f.number, &not_word];
            if let Some(class) = classes.iter().find(|class| self.is(body, class)) {
                let mut end = body;
                while self.is(end, class) {
                    end += 1;
                }
                self.emit(end);
                continue;
            }
            let (n, _) = self.whitespace_run(pos);
            if n > 1 && self.at(pos + n).is_some() {
                // `\s+(?!\S)`: leave the last space to prefix the next word.
                self.emit(pos + n - 1);
            } else if n > 0 {
                self.emit(pos + n);
            } else {
                self.emit(pos + 1);
            }
        }
    }

    fn llama3(&mut self, max_digits: usize) {
        while let Some(c) = self.at(self.prev) {
            let pos = self.prev;
            let f = flags(c);
            if let Some(end) = self.contraction(pos, true) {
                self.emit(end);
                continue;
            }
            // `[^\r\n\p{L}\p{N}]?\p{L}+`
            if !(c == '\r' || c == '\n' || f.number) && (f.letter || self.is(pos + 1, |f| f.letter))
            {
                let mut end = pos + 1;
                while self.is(end, |f| f.letter) {
                    end += 1;
                }
                self.emit(end);
                continue;
            }
            // `\p{N}{1,max}`
            if f.number {
                let mut end = pos;
                while self.is(end, |f| f.number) {
                    end += 1;
                    if end - self.prev >= max_digits {
                        self.emit(end);
                    }
                }
                self.emit(end);
                continue;
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
            let body = pos + usize::from(c == ' ');
            let not_word = |f: Flags| !(f.whitespace || f.letter || f.number);
            if self.is(body, not_word) {
                let mut end = body;
                while self.is(end, not_word) {
                    end += 1;
                }
                while matches!(self.at(end), Some('\r' | '\n')) {
                    end += 1;
                }
                self.emit(end);
                continue;
            }
            let (n, last_newline) = self.whitespace_run(pos);
            if let Some(end) = last_newline {
                // `\s*[\r\n]+`
                self.emit(end);
            } else if n > 1 && self.at(pos + n).is_some() {
                // `\s+(?!\S)`
                self.emit(pos + n - 1);
            } else if n > 0 {
                self.emit(pos + n);
            } else {
                self.emit(pos + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(kind: PreTokenizer, text: &str) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        split(kind, &chars)
            .into_iter()
            .map(|r| chars.get(r).unwrap_or_default().iter().collect())
            .collect()
    }

    #[test]
    fn gpt2_regex() {
        assert_eq!(
            words(PreTokenizer::Gpt2, "Hello world's   x 123!?  \n"),
            ["Hello", " world", "'s", "  ", " x", " 123", "!?", "  \n"]
        );
    }

    #[test]
    fn smollm_splits_digits() {
        assert_eq!(
            words(PreTokenizer::Smollm, "pi 3.14"),
            ["pi", " ", "3", ".", "1", "4"]
        );
    }

    #[test]
    fn llama3_regex() {
        assert_eq!(
            words(PreTokenizer::Llama3, "I'M 12345 ok.\n\nnext  x"),
            ["I", "'M", " ", "123", "45", " ok", ".\n\n", "next", " ", " x"]
        );
        assert_eq!(words(PreTokenizer::Qwen2, "ab 12"), ["ab", " ", "1", "2"]);
    }

    #[test]
    fn default_regexes() {
        assert_eq!(
            words(PreTokenizer::Default, "a+b 12345"),
            ["a", "+", "b", " ", "123", "45"]
        );
    }
}
