//! SentencePiece BPE (`tokenizer.ggml.model = llama`) on a small vocabulary
//! built here, with ids worked out by hand from the merge rules: pairs merge
//! when their concatenation is a token, highest score first, leftmost on
//! ties; chars that are no token fall back to `<0xNN>` byte tokens.

use kiln_loaders::{
    DecodeOptions, EncodeOptions, Metadata, Tokenizer, TokenizerError, Value, ValueType,
};

const UNK: u32 = 0;
const BOS: u32 = 1;
const EOS: u32 = 2;
/// `<0x00>` .. `<0xFF>` are ids 3 ..= 258.
fn byte(b: u8) -> u32 {
    3 + u32::from(b)
}

/// (text, score) of the normal pieces, ids from 259 on.
const PIECES: &[(&str, f32)] = &[
    ("▁", -10.0),     // 259
    ("h", -11.0),     // 260
    ("e", -12.0),     // 261
    ("l", -13.0),     // 262
    ("o", -14.0),     // 263
    ("w", -15.0),     // 264
    ("r", -16.0),     // 265
    ("d", -17.0),     // 266
    ("ll", -1.0),     // 267
    ("he", -2.0),     // 268
    ("hell", -3.0),   // 269
    ("or", -3.5),     // 270
    ("hello", -4.0),  // 271
    ("▁hello", -5.0), // 272
    ("▁w", -6.0),     // 273
    ("▁wor", -7.0),   // 274
    ("ld", -8.0),     // 275
    ("a", -20.0),     // 276
    ("aa", -9.0),     // 277
];

fn id(text: &str) -> u32 {
    let i = PIECES.iter().position(|(t, _)| *t == text).expect("piece");
    259 + i as u32
}

fn metadata() -> Metadata {
    let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
    let mut scores = vec![0.0f32; 3];
    let mut types = vec![2i32, 3, 3]; // UNKNOWN, CONTROL, CONTROL
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        scores.push(0.0);
        types.push(6); // BYTE
    }
    for (t, s) in PIECES {
        tokens.push((*t).to_owned());
        scores.push(*s);
        types.push(1); // NORMAL
    }
    let mut m = Metadata::new();
    m.insert("tokenizer.ggml.model", Value::String("llama".into()));
    m.insert(
        "tokenizer.ggml.tokens",
        Value::Array(
            ValueType::String,
            tokens.into_iter().map(Value::String).collect(),
        ),
    );
    m.insert(
        "tokenizer.ggml.scores",
        Value::Array(ValueType::F32, scores.into_iter().map(Value::F32).collect()),
    );
    m.insert(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect()),
    );
    m.insert("tokenizer.ggml.bos_token_id", Value::U32(BOS));
    m.insert("tokenizer.ggml.eos_token_id", Value::U32(EOS));
    m.insert("tokenizer.ggml.unknown_token_id", Value::U32(UNK));
    m
}

fn tok() -> Tokenizer {
    Tokenizer::from_gguf(&metadata()).expect("tokenizer")
}

const PLAIN: EncodeOptions = EncodeOptions {
    add_special: false,
    parse_special: false,
};

#[test]
fn merges_by_score() {
    let t = tok();
    // "▁hello▁world": ll, he, hell, or, hello, ▁hello, ▁w, ▁wor, ld in score
    // order; "▁world" is no token, so "▁wor" + "ld" stay apart.
    assert_eq!(
        t.encode("hello world", EncodeOptions::default())
            .expect("encode"),
        [BOS, id("▁hello"), id("▁wor"), id("ld")]
    );
    // Equal scores: the leftmost pair merges first ("aa" + "a", not "a" + "aa").
    assert_eq!(
        t.encode("aaa", PLAIN).expect("encode"),
        [id("▁"), id("aa"), id("a")]
    );
    assert_eq!(
        t.encode("", EncodeOptions::default()).expect("encode"),
        [BOS]
    );
}

#[test]
fn byte_fallback() {
    let t = tok();
    // "é" is no token: its UTF-8 bytes C3 A9 become byte tokens.
    assert_eq!(
        t.encode("hé", PLAIN).expect("encode"),
        [id("▁"), id("h"), byte(0xC3), byte(0xA9)]
    );
}

#[test]
fn special_tokens_in_text() {
    let t = tok();
    let parse = EncodeOptions {
        add_special: false,
        parse_special: true,
    };
    // A special token is split out, and the text after it gets the prefix
    // space again (llama.cpp: text after a special token starts a "word").
    assert_eq!(
        t.encode("<s>hello", parse).expect("encode"),
        [BOS, id("▁hello")]
    );
    assert!(!t.encode("<s>hello", PLAIN).expect("encode").contains(&BOS));
    assert_eq!(
        t.decode(&[BOS, id("▁hello"), EOS]).expect("decode"),
        "<s> hello</s>"
    );
    let skip = DecodeOptions { skip_special: true };
    // llama.cpp keeps the space when it drops the BOS.
    assert_eq!(
        t.decode_with(&[BOS, id("▁hello")], skip).expect("decode"),
        " hello"
    );
    assert!(t.is_eog(EOS) && !t.is_eog(BOS));
}

#[test]
fn round_trips_unicode() {
    let t = tok();
    for text in [
        "hello world",
        "日本語 テキスト ✓ 🎉",
        "  two  spaces\n\ttab",
        "hé aaa",
    ] {
        let ids = t.encode(text, EncodeOptions::default()).expect("encode");
        assert_eq!(ids.first(), Some(&BOS));
        assert_eq!(
            t.decode_with(&ids[1..], DecodeOptions::default())
                .expect("decode"),
            text
        );
        // Streaming joins split multibyte characters before emitting them.
        let mut stream = t.stream_decoder(DecodeOptions { skip_special: true });
        let mut out = String::new();
        for &i in &ids {
            let chunk = stream.push(i).expect("push").unwrap_or_default();
            assert!(!chunk.contains('\u{FFFD}'));
            out.push_str(&chunk);
        }
        assert!(stream.flush().is_none());
        assert_eq!(out, format!(" {text}"));
    }
}

#[test]
fn missing_byte_token_becomes_unk() {
    let mut m = metadata();
    // Same vocabulary without byte tokens: unknown chars become <unk>.
    let Some(Value::Array(_, tokens)) = m.get("tokenizer.ggml.tokens").cloned() else {
        panic!()
    };
    let renamed: Vec<Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if (3..259).contains(&i) {
                Value::String(format!("unused{i}"))
            } else {
                v
            }
        })
        .collect();
    m.insert(
        "tokenizer.ggml.tokens",
        Value::Array(ValueType::String, renamed),
    );
    let t = Tokenizer::from_gguf(&m).expect("tokenizer");
    assert_eq!(t.encode("é", PLAIN).expect("encode"), [id("▁"), UNK, UNK]);
    m.insert("tokenizer.ggml.unknown_token_id", Value::U32(999_999)); // out of range: keeps default 0
    assert!(Tokenizer::from_gguf(&m).is_ok());
}

#[test]
fn decode_rejects_unknown_ids() {
    let t = tok();
    let n = t.vocab_size() as u32;
    assert!(matches!(t.decode(&[n]), Err(TokenizerError::IdOutOfRange { id, .. }) if id == n));
    assert!(matches!(
        t.stream_decoder(DecodeOptions::default()).push(u32::MAX),
        Err(TokenizerError::IdOutOfRange { .. })
    ));
    assert!(t.token_text(n).is_none());
}
