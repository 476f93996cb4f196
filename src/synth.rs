//! Synthetic models: LLaMA-shaped GGUF files with random valid weights, so
//! kiln and llama.cpp can be benchmarked on the same file where real
//! weights cannot be fetched. Shapes follow `ANCHORS.md`: vocabulary
//! 49,152 (SmolLM2's), token embedding Q8_0, output Q6_K (tied to the
//! embedding for the 576-wide model), every other matrix in the chosen
//! quant, norms F32. The tokenizer is a byte-level BPE of the same size
//! whose merges pair bytes, valid for both engines.
//!
//! Each matrix is drawn from a pool of quantized random rows (uniform in
//! ±sqrt(3/K), so activations keep their scale through a layer) repeated in
//! a random order: generating and quantizing billions of values would take
//! minutes, and a kernel's speed does not depend on the values.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use kiln_kernels::{quant, DType};
use kiln_loaders::{GgufWriter, LoadError, Value, ValueType};
use rayon::prelude::*;

/// A model shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    pub n_ctx: usize,
    pub rope_base: f32,
    /// The output projection is the token embedding.
    pub tied: bool,
}

/// The presets `--synthetic` and `kiln synth` know.
pub const PRESETS: [Preset; 5] = [
    Preset {
        name: "smollm2-135m",
        n_embd: 576,
        n_layer: 30,
        n_head: 9,
        n_head_kv: 3,
        n_ff: 1536,
        n_ctx: 8192,
        rope_base: 100_000.0,
        tied: true,
    },
    Preset {
        name: "llama-1b",
        n_embd: 2048,
        n_layer: 16,
        n_head: 32,
        n_head_kv: 8,
        n_ff: 8192,
        n_ctx: 8192,
        rope_base: 500_000.0,
        tied: false,
    },
    Preset {
        name: "llama-3b",
        n_embd: 3072,
        n_layer: 28,
        n_head: 24,
        n_head_kv: 8,
        n_ff: 8192,
        n_ctx: 8192,
        rope_base: 500_000.0,
        tied: false,
    },
    Preset {
        name: "llama-7b",
        n_embd: 4096,
        n_layer: 32,
        n_head: 32,
        n_head_kv: 32,
        n_ff: 11008,
        n_ctx: 4096,
        rope_base: 10_000.0,
        tied: false,
    },
    Preset {
        name: "llama-8b",
        n_embd: 4096,
        n_layer: 32,
        n_head: 32,
        n_head_kv: 8,
        n_ff: 14336,
        n_ctx: 8192,
        rope_base: 500_000.0,
        tied: false,
    },
];

/// Quant types a synthetic model's matrices may use.
pub const QUANTS: [DType; 6] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q8_0,
    DType::Q4K,
    DType::Q6K,
    DType::F16,
];

/// SmolLM2's vocabulary size.
pub const VOCAB: usize = 49_152;

/// Distinct random rows per matrix.
const POOL: usize = 32;

/// A bad `PRESET:QUANT`.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("`{0}` is not PRESET:QUANT (e.g. llama-7b:q4_0)")]
    Syntax(String),
    #[error("unknown preset `{0}`; known: {known}", known = preset_names())]
    Preset(String),
    #[error("unknown quant `{0}`; known: {known}", known = quant_names())]
    Quant(String),
    #[error("quantizing {tensor}: {why}")]
    Quantize { tensor: String, why: String },
    #[error(transparent)]
    Write(#[from] LoadError),
}

fn preset_names() -> String {
    PRESETS.map(|p| p.name).join(", ")
}

fn quant_names() -> String {
    QUANTS.map(|q| q.name()).join(", ")
}

/// A preset and the quant of its matrices, e.g. `llama-7b:q4_0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SynthSpec {
    pub preset: Preset,
    pub quant: DType,
}

impl FromStr for SynthSpec {
    type Err = SynthError;

    fn from_str(s: &str) -> Result<SynthSpec, SynthError> {
        let (name, quant) = s
            .split_once(':')
            .ok_or_else(|| SynthError::Syntax(s.into()))?;
        let preset = PRESETS
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| SynthError::Preset(name.into()))?;
        let quant = QUANTS
            .into_iter()
            .find(|q| q.name().eq_ignore_ascii_case(quant))
            .ok_or_else(|| SynthError::Quant(quant.into()))?;
        Ok(SynthSpec {
            preset: *preset,
            quant,
        })
    }
}

impl fmt::Display for SynthSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.preset.name, self.quant.name())
    }
}

/// SplitMix64: small, fast, and good enough for weights.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn seed_for(seed: u64, name: &str) -> u64 {
    name.bytes().fold(seed ^ 0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// The type llama.cpp's quantizer falls back to where a K-quant's 256-value
/// blocks do not fit a row (e.g. 576-wide SmolLM2).
pub fn fit(dtype: DType, cols: usize) -> DType {
    match dtype {
        DType::Q4K if !cols.is_multiple_of(256) => DType::Q5_0,
        DType::Q6K if !cols.is_multiple_of(256) => DType::Q8_0,
        other => other,
    }
}

/// `[rows, cols]` in `dtype`: rows drawn from a pool of `POOL` quantized
/// random rows of amplitude `amp`.
fn matrix(
    name: &str,
    dtype: DType,
    rows: usize,
    cols: usize,
    amp: f32,
    seed: u64,
) -> Result<Vec<u8>, SynthError> {
    let mut rng = Rng(seed_for(seed, name));
    let pool_rows = POOL.min(rows);
    let values: Vec<f32> = (0..pool_rows * cols).map(|_| amp * rng.uniform()).collect();
    let pool = quant::quantize_rows(dtype, &values, cols).map_err(|e| SynthError::Quantize {
        tensor: name.into(),
        why: e.to_string(),
    })?;
    let row_bytes = pool.len() / pool_rows;
    let picks: Vec<usize> = (0..rows)
        .map(|_| (rng.next_u64() % pool_rows as u64) as usize)
        .collect();
    let mut data = vec![0u8; rows * row_bytes];
    data.par_chunks_mut(row_bytes)
        .zip(picks.par_iter())
        .for_each(|(row, &p)| row.copy_from_slice(&pool[p * row_bytes..(p + 1) * row_bytes]));
    Ok(data)
}

/// Norm weights near 1.
fn norm(name: &str, n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed_for(seed, name));
    (0..n)
        .flat_map(|_| (1.0 + 0.1 * rng.uniform()).to_le_bytes())
        .collect()
}

/// GPT-2's byte-to-character map: printable bytes stand for themselves,
/// the others for characters from U+0100 on.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap_or('?')
            }
        })
        .collect()
}

/// A byte-level BPE vocabulary of [`VOCAB`] tokens: three control tokens
/// (SmolLM2's `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`), the 256 byte
/// characters, then two-character tokens each made by one merge.
fn tokenizer_metadata(w: &mut GgufWriter) -> Result<(), LoadError> {
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let bytes = byte_chars();
    let n_merges = VOCAB - specials.len() - bytes.len();
    let pairs = (0..n_merges).map(|i| (bytes[i / 256], bytes[i % 256]));
    let mut tokens: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    tokens.extend(bytes.iter().map(char::to_string));
    tokens.extend(pairs.clone().map(|(a, b)| format!("{a}{b}")));
    let merges = pairs.map(|(a, b)| Value::String(format!("{a} {b}")));
    let types = (0..VOCAB).map(|i| Value::I32(if i < specials.len() { 3 } else { 1 }));
    let strings = |v: Vec<String>| {
        Value::Array(
            ValueType::String,
            v.into_iter().map(Value::String).collect(),
        )
    };
    w.add("tokenizer.ggml.model", Value::String("gpt2".into()))?;
    w.add("tokenizer.ggml.pre", Value::String("smollm".into()))?;
    w.add("tokenizer.ggml.tokens", strings(tokens))?;
    w.add(
        "tokenizer.ggml.token_type",
        Value::Array(ValueType::I32, types.collect()),
    )?;
    w.add(
        "tokenizer.ggml.merges",
        Value::Array(ValueType::String, merges.collect()),
    )?;
    w.add("tokenizer.ggml.bos_token_id", Value::U32(1))?;
    w.add("tokenizer.ggml.eos_token_id", Value::U32(2))?;
    w.add("tokenizer.ggml.padding_token_id", Value::U32(2))?;
    w.add("tokenizer.ggml.add_bos_token", Value::Bool(false))?;
    Ok(())
}

/// llama.cpp's `general.file_type` for a model whose matrices are `quant`.
fn file_type(quant: DType) -> u32 {
    match quant {
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q4_1 => 3,
        DType::Q8_0 => 7,
        DType::Q4K => 15,
        DType::Q6K => 18,
        _ => 0,
    }
}

/// The whole model, ready to write or load.
pub fn build(spec: SynthSpec, seed: u64) -> Result<GgufWriter, SynthError> {
    let p = spec.preset;
    let head_dim = p.n_embd / p.n_head;
    let (d, q, kv, ff) = (
        p.n_embd,
        p.n_head * head_dim,
        p.n_head_kv * head_dim,
        p.n_ff,
    );
    let mut w = GgufWriter::new();
    w.add("general.architecture", Value::String("llama".into()))?;
    w.add("general.name", Value::String(format!("kiln synth {spec}")))?;
    w.add("general.file_type", Value::U32(file_type(spec.quant)))?;
    let count = |v: usize| Value::U32(v as u32);
    for (key, v) in [
        ("context_length", p.n_ctx),
        ("embedding_length", d),
        ("block_count", p.n_layer),
        ("feed_forward_length", ff),
        ("attention.head_count", p.n_head),
        ("attention.head_count_kv", p.n_head_kv),
        ("rope.dimension_count", head_dim),
        ("vocab_size", VOCAB),
    ] {
        w.add(format!("llama.{key}"), count(v))?;
    }
    w.add("llama.rope.freq_base", Value::F32(p.rope_base))?;
    w.add("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))?;
    tokenizer_metadata(&mut w)?;

    let amp = |k: usize| (3.0 / k as f32).sqrt();
    let add_matrix = |w: &mut GgufWriter, name: String, dtype, rows, cols, a| {
        let dtype = fit(dtype, cols);
        let data = matrix(&name, dtype, rows, cols, a, seed)?;
        w.add_tensor(name, dtype, &[rows, cols], data)?;
        Ok::<(), SynthError>(())
    };
    add_matrix(
        &mut w,
        "token_embd.weight".into(),
        DType::Q8_0,
        VOCAB,
        d,
        1.0,
    )?;
    w.add_tensor(
        "output_norm.weight",
        DType::F32,
        &[d],
        norm("output_norm", d, seed),
    )?;
    if !p.tied {
        add_matrix(&mut w, "output.weight".into(), DType::Q6K, VOCAB, d, amp(d))?;
    }
    for i in 0..p.n_layer {
        let blk = |what: &str| format!("blk.{i}.{what}");
        w.add_tensor(
            blk("attn_norm.weight"),
            DType::F32,
            &[d],
            norm(&blk("an"), d, seed),
        )?;
        w.add_tensor(
            blk("ffn_norm.weight"),
            DType::F32,
            &[d],
            norm(&blk("fn"), d, seed),
        )?;
        let qd = spec.quant;
        add_matrix(&mut w, blk("attn_q.weight"), qd, q, d, amp(d))?;
        add_matrix(&mut w, blk("attn_k.weight"), qd, kv, d, amp(d))?;
        add_matrix(&mut w, blk("attn_v.weight"), qd, kv, d, amp(d))?;
        add_matrix(&mut w, blk("attn_output.weight"), qd, d, q, amp(q))?;
        add_matrix(&mut w, blk("ffn_gate.weight"), qd, ff, d, amp(d))?;
        add_matrix(&mut w, blk("ffn_up.weight"), qd, ff, d, amp(d))?;
        add_matrix(&mut w, blk("ffn_down.weight"), qd, d, ff, amp(ff))?;
    }
    Ok(w)
}

/// Builds the model and writes it at `path` as GGUF v3.
pub fn write(spec: SynthSpec, seed: u64, path: impl AsRef<Path>) -> Result<(), SynthError> {
    Ok(build(spec, seed)?.write(path)?)
}

/// Writes the model to a temporary GGUF, hands its path to `f` (to load
/// it, to describe it) and removes the file afterwards, whatever `f`
/// returns: a synthetic model run without leaving a file behind.
pub fn with_file<T, E: From<SynthError>>(
    spec: SynthSpec,
    seed: u64,
    f: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    let name = format!(
        "kiln-synth-{}-{}-{seed}.gguf",
        std::process::id(),
        spec.to_string().replace(':', "-")
    );
    let path = std::env::temp_dir().join(name);
    let result = write(spec, seed, &path)
        .map_err(E::from)
        .and_then(|()| f(&path));
    let _ = std::fs::remove_file(&path);
    result
}

/// A random LoRA adapter for a model of `config`'s shapes: `rank` over
/// `modules` of every layer, alpha = rank (scale 1), A uniform in
/// ±1/sqrt(in) and B in ±0.1/sqrt(rank), so the update is a few percent of
/// a layer's output, as a trained adapter's. For benchmarks and tests of
/// adapters where no real one can be fetched.
pub fn random_adapter(
    config: &kiln_models::LlamaConfig,
    name: &str,
    rank: usize,
    modules: &[kiln_loaders::lora::LoraModule],
    seed: u64,
) -> Result<kiln_loaders::lora::LoraAdapter, kiln_loaders::lora::LoraError> {
    use kiln_loaders::lora::{LoraAdapter, LoraFormat, LoraTarget};
    let decode = |e: kiln_kernels::TensorError| {
        kiln_loaders::lora::LoraError::new(kiln_loaders::lora::LoraErrorKind::Decode {
            tensor: name.to_string(),
            message: e.to_string(),
        })
    };
    let mut targets = Vec::new();
    for layer in 0..config.n_layer {
        for &module in modules {
            let (out, n_in) = kiln_models::llama::lora::base_shape(config, module);
            let mut rng = Rng(seed_for(seed, &module.gguf_weight(layer)));
            let amp_a = 1.0 / (n_in as f32).sqrt();
            let amp_b = 0.1 / (rank as f32).sqrt();
            let a = (0..rank * n_in).map(|_| amp_a * rng.uniform()).collect();
            let b = (0..out * rank).map(|_| amp_b * rng.uniform()).collect();
            let a = kiln_kernels::CpuTensor::from_f32([rank, n_in], a).map_err(decode)?;
            let b = kiln_kernels::CpuTensor::from_f32([out, rank], b).map_err(decode)?;
            targets.push(LoraTarget::new(layer, module, a, b, 1.0)?);
        }
    }
    LoraAdapter::new(name, LoraFormat::Peft, rank as f32, targets)
}
