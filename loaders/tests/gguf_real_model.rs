//! The real model (SmolLM2-135M-Instruct Q4_1) read with our GGUF reader,
//! checked against the facts in /work/shared/refs/README.md.

mod common;

use std::collections::BTreeMap;

use kiln_kernels::DType;
use kiln_loaders::GgufFile;

#[test]
fn smollm2_header_and_tensors() {
    let Some(path) = common::test_model() else {
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    let md = file.metadata();
    assert_eq!(md.architecture(), Some("llama"));
    assert_eq!(md.get_u64("llama.block_count"), Some(30));
    assert_eq!(md.get_u64("llama.embedding_length"), Some(576));
    assert_eq!(md.get_u64("llama.attention.head_count"), Some(9));
    assert_eq!(md.get_u64("llama.attention.head_count_kv"), Some(3));
    assert_eq!(md.get_u64("llama.feed_forward_length"), Some(1536));
    assert_eq!(md.get_u64("llama.context_length"), Some(8192));
    assert_eq!(md.get_f64("llama.rope.freq_base"), Some(100000.0));
    assert_eq!(md.get_str("tokenizer.ggml.model"), Some("gpt2"));
    assert_eq!(md.get_str("tokenizer.ggml.pre"), Some("smollm"));
    assert_eq!(
        md.get_array("tokenizer.ggml.tokens").map(|a| a.len()),
        Some(49152)
    );
    assert_eq!(
        md.get_array("tokenizer.ggml.merges").map(|a| a.len()),
        Some(48900)
    );

    assert_eq!(file.tensors().len(), 272);
    let mut census = BTreeMap::new();
    for t in file.tensors() {
        *census.entry(t.dtype).or_insert(0) += 1;
    }
    assert_eq!(census.get(&DType::Q4_1), Some(&210));
    assert_eq!(census.get(&DType::F32), Some(&61));
    assert_eq!(census.get(&DType::Q8_0), Some(&1));
    assert!(
        file.tensor("output.weight").is_none(),
        "output is tied to token_embd"
    );

    // Shapes are in kiln order: GGUF ne = [576, 49152] is [49152, 576].
    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.dtype, DType::Q8_0);
    assert_eq!(embd.shape, vec![49152, 576]);
    assert_eq!(embd.byte_size, 49152 * 576 / 32 * 34);
    assert_eq!(
        file.tensor_data("token_embd.weight").unwrap().len(),
        embd.byte_size
    );

    // Zero-copy views survive the file object.
    let weights = file.weights();
    drop(file);
    assert_eq!(weights.len(), 272);
    let q = weights.get("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.dtype(), q.shape()), (DType::Q4_1, &[576usize, 576][..]));
    assert_eq!(q.bytes().len(), 576 * 576 / 32 * 20);
    assert_eq!(weights.parameter_count(), 134_515_008);
}
