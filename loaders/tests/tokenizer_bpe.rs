//! Byte-level BPE (`tokenizer.ggml.model = gpt2`) on a small vocabulary built
//! here; the same vocabulary as a HF `tokenizer.json` read by the
//! `tokenizers` crate must tokenize the same; malformed metadata gives typed
//! errors, never a panic.

use std::path::PathBuf;

use kiln_loaders::{EncodeOptions, Metadata, Tokenizer, TokenizerError, Value, ValueType};

/// GPT-2's byte → char alphabet (printable Latin-1 as itself, the rest from U+0100).
fn byte_chars() -> Vec<char> {
    let mut next = 0x100;
    (0u32..256)
        .map(|b| {
            let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
            let cp = if printable {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(cp).expect("char")
        })
        .collect()
}

const MERGES: &[&str] = &[
    "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor ld", "l d", "Ġ t", "Ġt he", "1 2",
];
const ENDOFTEXT: &str = "<|endoftext|>";

/// `<|endoftext|>` (id 0), the 256 byte chars (ids 1..=256), then one token
/// per merge in rule order.
fn vocab() -> Vec<String> {
    let mut v = vec![ENDOFTEXT.to_owned()];
    v.extend(byte_chars().into_iter().map(String::from));
    v.extend(MERGES.iter().map(|m| m.replace(' ', "")));
    v
}

fn id(text: &str) -> u32 {
    vocab().iter().position(|t| t == text).expect("token") as u32
}

fn strings(items: &[String]) -> Value {
    Value::Array(
        ValueType::String,
        items.iter().cloned().map(Value::String).collect(),
    )
}

fn metadata(pre: &str) -> Metadata {
    let vocab = vocab();
    let mut types = vec![Value::I32(1); vocab.len()];
    types[0] = Value::I32(3); // CONTROL
    let mut m = Metadata::new();
    m.insert("tokenizer.ggml.model", Value::String("gpt2".into()));
    m.insert("tokenizer.ggml.pre", Value::String(pre.into()));
    m.insert("tokenizer.ggml.tokens", strings(&vocab));
    m.insert(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, types),
    );
    m.insert(
        "tokenizer.ggml.merges",
        strings(&MERGES.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
    );
    m.insert("tokenizer.ggml.bos_token_id", Value::U32(0));
    m.insert("tokenizer.ggml.eos_token_id", Value::U32(0));
    m.insert("tokenizer.ggml.add_bos_token", Value::Bool(false));
    m
}

const OPTS: EncodeOptions = EncodeOptions {
    add_special: true,
    parse_special: true,
};

#[test]
fn merges_by_rank() {
    let t = Tokenizer::from_gguf(&metadata("gpt-2")).expect("tokenizer");
    assert_eq!(
        t.encode("hello world", OPTS).expect("encode"),
        [id("hello"), id("Ġworld")]
    );
    // "Ġt he" needs "Ġt" first; "the" alone has no rule past "h e".
    assert_eq!(t.encode(" the", OPTS).expect("encode"), [id("Ġthe")]);
    assert_eq!(t.encode("the", OPTS).expect("encode"), [id("t"), id("he")]);
    assert_eq!(
        t.encode("hi<|endoftext|>", OPTS).expect("encode"),
        [id("h"), id("i"), 0]
    );
    assert_eq!(
        t.decode(&t.encode("héllo wörld ✓", OPTS).expect("encode"))
            .expect("decode"),
        "héllo wörld ✓"
    );
}

#[test]
fn pre_tokenizer_matters() {
    // gpt2 keeps "12" one word (merged); smollm splits digits first.
    let gpt2 = Tokenizer::from_gguf(&metadata("gpt-2")).expect("tokenizer");
    let smol = Tokenizer::from_gguf(&metadata("smollm")).expect("tokenizer");
    assert_eq!(gpt2.encode("12", OPTS).expect("encode"), [id("12")]);
    assert_eq!(smol.encode("12", OPTS).expect("encode"), [id("1"), id("2")]);
    // llama3-style: BOS added by default, and the pre-tokenizer is llama3's.
    let mut m = metadata("llama-bpe");
    m.insert("tokenizer.ggml.add_bos_token", Value::Bool(true));
    let l3 = Tokenizer::from_gguf(&m).expect("tokenizer");
    assert_eq!(l3.encode("hello", OPTS).expect("encode"), [0, id("hello")]);
    assert!(l3.is_eog(0));
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-tok-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The same vocabulary and merges as a HF `tokenizer.json`.
fn write_tokenizer_json(dir: &std::path::Path) -> PathBuf {
    let vocab: serde_json::Map<String, serde_json::Value> = vocab()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, serde_json::json!(i)))
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": 0, "content": ENDOFTEXT, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "vocab": vocab, "merges": MERGES,
        }
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).expect("write tokenizer.json");
    let config = serde_json::json!({
        "eos_token": ENDOFTEXT,
        "bos_token": {"content": ENDOFTEXT},
        "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}",
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("write config");
    path
}

#[test]
fn tokenizer_json_agrees_with_gguf() {
    let dir = temp_dir("json");
    let hf = Tokenizer::from_json_file(write_tokenizer_json(&dir)).expect("tokenizer.json");
    let gguf = Tokenizer::from_gguf(&metadata("gpt-2")).expect("tokenizer");
    for text in [
        "hello world",
        " the  world's 12 ",
        "héllo\n\nwörld ✓",
        "a<|endoftext|>b",
        "   ",
    ] {
        let want = gguf.encode(text, OPTS).expect("gguf");
        assert_eq!(hf.encode(text, OPTS).expect("hf"), want, "{text:?}");
        assert_eq!(hf.decode(&want).expect("decode"), text);
    }
    // parse_special off: the special token's text is plain text.
    let plain = EncodeOptions {
        add_special: false,
        parse_special: false,
    };
    assert!(!hf
        .encode("a<|endoftext|>b", plain)
        .expect("hf")
        .contains(&0));
    assert_eq!(hf.special_tokens().eos, Some(0));
    assert_eq!(hf.special_tokens().bos, Some(0));
    assert!(hf.is_eog(0));
    assert_eq!(
        hf.chat_template(),
        Some("{% for m in messages %}{{ m.content }}{% endfor %}")
    );
    assert_eq!(hf.token_text(id("Ġworld")).as_deref(), Some("Ġworld"));
    // Streaming through byte-level pieces rebuilds multibyte characters.
    let ids = hf.encode("wörld ✓", OPTS).expect("hf");
    let mut stream = hf.stream_decoder(Default::default());
    let text: String = ids
        .iter()
        .filter_map(|&i| stream.push(i).expect("push"))
        .collect();
    assert_eq!(text, "wörld ✓");
    assert!(matches!(
        hf.decode(&[9999]),
        Err(TokenizerError::IdOutOfRange { id: 9999, .. })
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tokenizer_json_errors_are_typed() {
    let dir = temp_dir("bad");
    assert!(matches!(
        Tokenizer::from_json_file(dir.join("missing.json")),
        Err(TokenizerError::Hf { .. })
    ));
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, "{ not json").expect("write");
    assert!(matches!(
        Tokenizer::from_json_file(&path),
        Err(TokenizerError::Hf { .. })
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn malformed_metadata_is_a_typed_error() {
    let build = |edit: &dyn Fn(&mut Metadata)| {
        let mut m = metadata("gpt-2");
        edit(&mut m);
        Tokenizer::from_gguf(&m).err()
    };
    let remove = |key: &'static str| {
        move |m: &mut Metadata| {
            let mut out = Metadata::new();
            for (k, v) in m.iter().filter(|(k, _)| *k != key) {
                out.insert(k, v.clone());
            }
            *m = out;
        }
    };
    assert!(matches!(
        build(&remove("tokenizer.ggml.tokens")),
        Some(TokenizerError::MissingKey("tokenizer.ggml.tokens"))
    ));
    assert!(matches!(
        build(&remove("tokenizer.ggml.merges")),
        Some(TokenizerError::MissingKey("tokenizer.ggml.merges"))
    ));
    assert!(matches!(
        build(&remove("tokenizer.ggml.model")),
        Some(TokenizerError::MissingKey("tokenizer.ggml.model"))
    ));
    assert!(matches!(
        build(&|m| {
            m.insert(
                "tokenizer.ggml.tokens",
                Value::Array(ValueType::String, vec![]),
            );
        }),
        Some(TokenizerError::EmptyVocab)
    ));
    assert!(matches!(
        build(&|m| {
            m.insert(
                "tokenizer.ggml.tokens",
                Value::Array(ValueType::U32, vec![Value::U32(1)]),
            );
        }),
        Some(TokenizerError::BadKey {
            key: "tokenizer.ggml.tokens",
            ..
        })
    ));
    assert!(matches!(
        build(&|m| {
            m.insert("tokenizer.ggml.model", Value::String("wordpiece?".into()));
        }),
        Some(TokenizerError::UnknownModel(_))
    ));
    assert!(matches!(
        build(&|m| {
            m.insert("tokenizer.ggml.pre", Value::String("nope".into()));
        }),
        Some(TokenizerError::UnknownPreTokenizer(_))
    ));
    let merges = |rules: &[&str]| {
        let rules: Vec<String> = rules.iter().map(|s| s.to_string()).collect();
        move |m: &mut Metadata| {
            m.insert("tokenizer.ggml.merges", strings(&rules));
        }
    };
    match build(&merges(&["h e", "q zz"])) {
        Some(TokenizerError::MergeUnknownToken {
            index: 1, missing, ..
        }) => assert_eq!(missing, "zz"),
        other => panic!("{other:?}"),
    }
    // Both sides known, the merged token not.
    assert!(matches!(
        build(&merges(&["x y"])),
        Some(TokenizerError::MergeUnknownToken { index: 0, .. })
    ));
    assert!(matches!(
        build(&merges(&["hello"])),
        Some(TokenizerError::MalformedMerge { index: 0, .. })
    ));
    assert!(matches!(
        build(&|m| {
            m.insert(
                "tokenizer.ggml.token_type",
                Value::Array(ValueType::I32, vec![Value::I32(1)]),
            );
        }),
        Some(TokenizerError::LengthMismatch {
            key: "tokenizer.ggml.token_type",
            got: 1,
            ..
        })
    ));
    assert!(matches!(
        build(&|m| {
            let mut v = vocab();
            v[2] = v[1].clone();
            m.insert("tokenizer.ggml.tokens", strings(&v));
        }),
        Some(TokenizerError::DuplicateToken {
            first: 1,
            second: 2,
            ..
        })
    ));
    // add_bos_token with no usable BOS id (gpt2's default, 11, is then a
    // real token here; an out-of-range key keeps it).
    assert!(build(&|m| {
        m.insert("tokenizer.ggml.add_bos_token", Value::Bool(true));
        m.insert("tokenizer.ggml.bos_token_id", Value::U32(1 << 30));
    })
    .is_none());
    assert!(matches!(
        build(&|m| {
            m.insert("tokenizer.ggml.bos_token_id", Value::String("1".into()));
        }),
        Some(TokenizerError::BadKey {
            key: "tokenizer.ggml.bos_token_id",
            ..
        })
    ));
}
