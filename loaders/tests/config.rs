//! HF config.json → ModelConfig → GGUF-style metadata.

mod common;

use kiln_loaders::{ErrorKind, ModelConfig, Value};

/// SmolLM2-135M-Instruct's config.json (the fields that matter).
const SMOLLM2: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 576,
  "initializer_range": 0.041666666666666664,
  "intermediate_size": 1536,
  "max_position_embeddings": 8192,
  "model_type": "llama",
  "num_attention_heads": 9,
  "num_hidden_layers": 30,
  "num_key_value_heads": 3,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 100000,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "vocab_size": 49152
}"#;

#[test]
fn smollm2_config_reads() {
    let c = ModelConfig::from_json(SMOLLM2.as_bytes()).unwrap();
    assert_eq!(c.architecture, "llama");
    assert_eq!(c.hf_class.as_deref(), Some("LlamaForCausalLM"));
    assert_eq!(
        (c.hidden_size, c.num_hidden_layers, c.intermediate_size),
        (576, 30, 1536)
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim()),
        (9, 3, 64)
    );
    assert_eq!((c.rms_norm_eps, c.rope_theta), (1e-5, 100000.0));
    assert_eq!((c.vocab_size, c.max_position_embeddings), (49152, 8192));
    assert!(c.tie_word_embeddings);
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone()),
        (Some(1), vec![2])
    );
    assert_eq!(c.sliding_window, None);
}

/// The metadata matches what the real GGUF (converted by llama.cpp from
/// this very config) says, key for key and type for type.
#[test]
fn metadata_matches_the_gguf_conversion() {
    let md = ModelConfig::from_json(SMOLLM2.as_bytes())
        .unwrap()
        .to_metadata();
    assert_eq!(md.architecture(), Some("llama"));
    assert_eq!(md.get("llama.block_count"), Some(&Value::U32(30)));
    assert_eq!(
        md.get("llama.attention.layer_norm_rms_epsilon"),
        Some(&Value::F32(1e-5))
    );
    let Some(path) = common::test_model() else {
        return;
    };
    let gguf = kiln_loaders::GgufFile::open(path).unwrap();
    for key in [
        "general.architecture",
        "llama.context_length",
        "llama.embedding_length",
        "llama.block_count",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.rope.freq_base",
        "llama.vocab_size",
    ] {
        assert_eq!(md.get(key), gguf.metadata().get(key), "{key}");
    }
}

#[test]
fn defaults_and_variants() {
    // No model_type: derived from the class; no kv heads: MHA; eos list;
    // Mistral maps to llama as in llama.cpp; sliding window carried.
    let json = r#"{"architectures": ["MistralForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100,
        "max_position_embeddings": 256, "eos_token_id": [5, 6], "sliding_window": 4096, "head_dim": 32}"#;
    let c = ModelConfig::from_json(json.as_bytes()).unwrap();
    assert_eq!(c.architecture, "llama");
    assert_eq!(c.num_key_value_heads, 4);
    assert_eq!(c.eos_token_ids, vec![5, 6]);
    assert_eq!(c.head_dim(), 32);
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.rope_theta, 10000.0);
    let md = c.to_metadata();
    assert_eq!(md.get_u64("llama.attention.sliding_window"), Some(4096));
    assert_eq!(md.get_u64("llama.attention.key_length"), Some(32));
    assert_eq!(md.get_u64("tokenizer.ggml.eos_token_id"), Some(5));
    // `sliding_window: null` (Qwen2 style) is no window.
    let json = json.replace("4096", "null").replace("Mistral", "Qwen2");
    let c = ModelConfig::from_json(json.as_bytes()).unwrap();
    assert_eq!((c.architecture.as_str(), c.sliding_window), ("qwen2", None));
}

#[test]
fn bad_configs_are_typed_errors() {
    let err = ModelConfig::from_json(b"{not json").unwrap_err();
    assert!(matches!(err.kind, ErrorKind::ConfigJson(_)), "{err}");
    let err = ModelConfig::from_json(br#"{"model_type": "llama", "hidden_size": 1}"#).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::MissingConfig(_)), "{err}");
    let err = ModelConfig::from_json(br#"{"hidden_size": 1}"#).unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::MissingConfig("model_type")),
        "{err}"
    );
    let err = ModelConfig::from_json(br#"{"model_type": "llama", "hidden_size": -1}"#).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::ConfigJson(_)), "{err}");
    let dir = common::temp_dir("config");
    std::fs::write(dir.join("config.json"), "[]").unwrap();
    let err = ModelConfig::open(dir.join("config.json")).unwrap_err();
    assert!(err.file.ends_with("config.json"), "{err}");
}
