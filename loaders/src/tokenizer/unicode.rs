//! Unicode character classes as llama.cpp's `unicode.cpp` sees them, and
//! GPT-2's byte-level alphabet.
//!
//! llama.cpp classifies each code point by its General Category into one
//! flag (letter, number, punctuation, ...) plus a separate White_Space bit;
//! its pre-tokenizers only ever ask these questions, so we do the same.

use std::sync::OnceLock;

use unicode_general_category::{get_general_category, GeneralCategory as G};

/// The classes llama.cpp's splitters test (`unicode_cpt_flags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Flags {
    pub letter: bool,
    pub number: bool,
    pub punctuation: bool,
    pub symbol: bool,
    pub whitespace: bool,
}

pub(crate) fn flags(c: char) -> Flags {
    let cat = get_general_category(c);
    Flags {
        letter: matches!(
            cat,
            G::UppercaseLetter
                | G::LowercaseLetter
                | G::TitlecaseLetter
                | G::ModifierLetter
                | G::OtherLetter
        ),
        number: matches!(cat, G::DecimalNumber | G::LetterNumber | G::OtherNumber),
        punctuation: matches!(
            cat,
            G::ConnectorPunctuation
                | G::DashPunctuation
                | G::OpenPunctuation
                | G::ClosePunctuation
                | G::InitialPunctuation
                | G::FinalPunctuation
                | G::OtherPunctuation
        ),
        symbol: matches!(
            cat,
            G::MathSymbol | G::CurrencySymbol | G::ModifierSymbol | G::OtherSymbol
        ),
        // Rust's `is_whitespace` is the White_Space property, the same set
        // as llama.cpp's `unicode_set_whitespace`.
        whitespace: c.is_whitespace(),
    }
}

/// GPT-2's reversible byte ↔ printable-char map (`bytes_to_unicode` in
/// openai/gpt-2 `encoder.py`): printable Latin-1 bytes map to themselves, the
/// other 68 bytes to U+0100.. in byte order. Every char is below U+0144.
pub(crate) struct ByteLevel {
    to_char: [char; 256],
    from_char: [Option<u8>; 0x144],
}

impl ByteLevel {
    pub(crate) fn get() -> &'static ByteLevel {
        static TABLE: OnceLock<ByteLevel> = OnceLock::new();
        TABLE.get_or_init(ByteLevel::build)
    }

    fn build() -> ByteLevel {
        let mut to_char = ['\0'; 256];
        let mut from_char = [None; 0x144];
        let mut next = 0x100u32;
        for b in 0u8..=255 {
            let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
            let cp = if printable {
                u32::from(b)
            } else {
                next += 1;
                next - 1
            };
            let c = char::from_u32(cp).unwrap_or('\u{FFFD}');
            to_char[usize::from(b)] = c;
            if let Some(slot) = from_char.get_mut(cp as usize) {
                *slot = Some(b);
            }
        }
        ByteLevel { to_char, from_char }
    }

    pub(crate) fn char_of(&self, b: u8) -> char {
        self.to_char[usize::from(b)]
    }

    /// `None` for chars outside the byte-level alphabet.
    pub(crate) fn byte_of(&self, c: char) -> Option<u8> {
        self.from_char.get(c as usize).copied().flatten()
    }

    /// The bytes a byte-level token's text stands for. A char outside the
    /// byte alphabet (a malformed vocab) is kept as its own UTF-8.
    pub(crate) fn bytes_of(&self, text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        for c in text.chars() {
            match self.byte_of(c) {
                Some(b) => out.push(b),
                None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_round_trips() {
        let bl = ByteLevel::get();
        for b in 0u8..=255 {
            assert_eq!(bl.byte_of(bl.char_of(b)), Some(b));
        }
        assert_eq!(bl.char_of(b' '), 'Ġ');
        assert_eq!(bl.char_of(b'\n'), 'Ċ');
        assert_eq!(bl.byte_of('é'), Some(0xE9));
        assert_eq!(bl.byte_of('中'), None);
    }

    #[test]
    fn classes() {
        assert!(flags('a').letter && flags('中').letter);
        assert!(flags('3').number && flags('²').number);
        assert!(flags(' ').whitespace && flags('\u{3000}').whitespace);
        assert!(flags('!').punctuation && flags('+').symbol);
    }
}
