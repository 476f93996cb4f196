//! Tiny random LLaMA-family models, written the way real ones are: as a
//! GGUF file (q and k rows permuted for normal rope as llama.cpp's
//! `convert_hf_to_gguf.py` does for LLaMA) with a byte-level BPE tokenizer
//! in its metadata, or as an HF checkpoint directory (`config.json`,
//! `*.safetensors` in HF order, `tokenizer.json`, `tokenizer_config.json`)
//! from the very same values.
//!
//! Every value lies on a grid of 8 significant bits (`k / 2^e`, `|k| <
//! 256`), so F32, F16 and BF16 files hold exactly the same numbers and any
//! difference between their logits is kiln's, not the rounding's.

use std::fmt::Write as _;
use std::path::Path;

use kiln_kernels::{quant, DType};
use kiln_loaders::{GgufWriter, LoadError, Metadata, Value, ValueType};

use crate::llama::{names, Arch};
use crate::testing::naive::NaiveConfig;

/// The dtype of each matrix in the GGUF file (norms and biases are F32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TinyDtypes {
    pub token_embd: DType,
    pub attn_q: DType,
    pub attn_k: DType,
    pub attn_v: DType,
    pub attn_output: DType,
    pub ffn_gate: DType,
    pub ffn_up: DType,
    /// Its rows are `n_ff` long: K-quants need `n_ff % 256 == 0`.
    pub ffn_down: DType,
    /// Only when not tied.
    pub output: DType,
}

impl TinyDtypes {
    /// Every matrix in `dtype`.
    pub fn all(dtype: DType) -> TinyDtypes {
        TinyDtypes {
            token_embd: dtype,
            attn_q: dtype,
            attn_k: dtype,
            attn_v: dtype,
            attn_output: dtype,
            ffn_gate: dtype,
            ffn_up: dtype,
            ffn_down: dtype,
            output: dtype,
        }
    }

    /// The GGUF dtype of the tensor GGUF calls `name`.
    fn of(&self, name: &str) -> DType {
        let what = name.rsplit_once("blk.").map_or(name, |(_, rest)| {
            rest.split_once('.').map_or(rest, |(_, what)| what)
        });
        match what {
            names::TOKEN_EMBD => self.token_embd,
            names::OUTPUT => self.output,
            "attn_q.weight" => self.attn_q,
            "attn_k.weight" => self.attn_k,
            "attn_v.weight" => self.attn_v,
            "attn_output.weight" => self.attn_output,
            "ffn_gate.weight" => self.ffn_gate,
            "ffn_up.weight" => self.ffn_up,
            "ffn_down.weight" => self.ffn_down,
            _ => DType::F32,
        }
    }
}

/// What to build. [`TinySpec::new`] gives a 2-layer GQA model.
#[derive(Clone, Debug, PartialEq)]
pub struct TinySpec {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// At least 257: the tokenizer's 256 bytes and `<|endoftext|>`.
    pub vocab: usize,
    pub n_ctx_train: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    /// Sliding attention window (`{arch}.attention.sliding_window`); 0 = none.
    pub sliding_window: u32,
    /// No `output.weight`: the output projection is the embedding.
    pub tied: bool,
    pub dtypes: TinyDtypes,
    /// Write LLaMA's q and k rows permuted for normal rope, as llama.cpp's
    /// converter does. Off gives a deliberately wrong GGUF (HF order under
    /// normal rope), for tests that must tell the two apart.
    pub permute_qk: bool,
    pub seed: u64,
}

/// One tensor: its GGUF name and dtype, shape `[rows, cols]` (or `[n]`),
/// and its values in HF order.
#[derive(Clone, Debug, PartialEq)]
pub struct TinyTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl TinySpec {
    /// 2 layers, d 64, FFN 256, 4 query heads on 2 kv heads (head_dim 16),
    /// vocabulary 300, F16 matrices, untied.
    pub fn new(arch: Arch) -> TinySpec {
        TinySpec {
            arch,
            n_layer: 2,
            n_embd: 64,
            n_ff: 256,
            n_head: 4,
            n_head_kv: 2,
            vocab: 300,
            n_ctx_train: 256,
            rope_base: 10_000.0,
            rms_eps: 1e-5,
            sliding_window: 0,
            tied: false,
            dtypes: TinyDtypes::all(DType::F16),
            permute_qk: true,
            seed: 1,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Every tensor, random, in file order.
    pub fn tensors(&self) -> Vec<TinyTensor> {
        let (d, hd, ff) = (self.n_embd, self.head_dim(), self.n_ff);
        let (q, kv) = (self.n_head * hd, self.n_head_kv * hd);
        let mut out = Vec::new();
        let mut add = |name: String, shape: Vec<usize>, fill: Fill| {
            let seed = self.seed.wrapping_mul(1000).wrapping_add(out.len() as u64);
            let values = fill.values(seed, shape.iter().product());
            out.push(TinyTensor {
                dtype: self.dtypes.of(&name),
                name,
                shape,
                values,
            });
        };
        // Matrices scaled ~1/sqrt(K) keep activations O(1); q and k four
        // times more, so attention is peaked and which keys a query sees
        // matters.
        add(
            names::TOKEN_EMBD.into(),
            vec![self.vocab, d],
            Fill::Uniform(0),
        );
        add(names::OUTPUT_NORM.into(), vec![d], Fill::NearOne);
        if !self.tied {
            add(names::OUTPUT.into(), vec![self.vocab, d], Fill::Uniform(3));
        }
        for i in 0..self.n_layer {
            let b = |what: &str| names::blk(i, what);
            add(b("attn_norm.weight"), vec![d], Fill::NearOne);
            add(b("attn_q.weight"), vec![q, d], Fill::Uniform(1));
            add(b("attn_k.weight"), vec![kv, d], Fill::Uniform(1));
            add(b("attn_v.weight"), vec![kv, d], Fill::Uniform(3));
            if self.arch == Arch::Qwen2 {
                add(b("attn_q.bias"), vec![q], Fill::Uniform(1));
                add(b("attn_k.bias"), vec![kv], Fill::Uniform(1));
                add(b("attn_v.bias"), vec![kv], Fill::Uniform(1));
            }
            add(b("attn_output.weight"), vec![d, q], Fill::Uniform(3));
            add(b("ffn_norm.weight"), vec![d], Fill::NearOne);
            add(b("ffn_gate.weight"), vec![ff, d], Fill::Uniform(3));
            add(b("ffn_up.weight"), vec![ff, d], Fill::Uniform(3));
            add(b("ffn_down.weight"), vec![d, ff], Fill::Uniform(4));
        }
        out
    }

    /// The GGUF metadata: hyperparameters as llama.cpp's converter writes
    /// them, and the tokenizer.
    pub fn metadata(&self) -> Metadata {
        let arch = self.arch.name();
        let mut m = Metadata::new();
        m.insert("general.architecture", Value::String(arch.into()));
        for (key, v) in [
            ("block_count", self.n_layer),
            ("context_length", self.n_ctx_train),
            ("embedding_length", self.n_embd),
            ("feed_forward_length", self.n_ff),
            ("attention.head_count", self.n_head),
            ("attention.head_count_kv", self.n_head_kv),
        ] {
            m.insert(format!("{arch}.{key}"), Value::U32(v as u32));
        }
        m.insert(format!("{arch}.rope.freq_base"), Value::F32(self.rope_base));
        m.insert(
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(self.rms_eps),
        );
        if self.sliding_window > 0 {
            m.insert(
                format!("{arch}.attention.sliding_window"),
                Value::U32(self.sliding_window),
            );
        }
        let (tokens, merges) = tokenizer_vocab(self.vocab);
        let strings = |v: Vec<String>| {
            Value::Array(
                ValueType::String,
                v.into_iter().map(Value::String).collect(),
            )
        };
        let mut types = vec![Value::I32(1); tokens.len()];
        types[0] = Value::I32(3); // CONTROL
        m.insert("tokenizer.ggml.model", Value::String("gpt2".into()));
        m.insert("tokenizer.ggml.pre", Value::String("gpt-2".into()));
        m.insert("tokenizer.ggml.tokens", strings(tokens));
        m.insert(
            "tokenizer.ggml.token_type",
            Value::Array(ValueType::I32, types),
        );
        m.insert("tokenizer.ggml.merges", strings(merges));
        m.insert("tokenizer.ggml.bos_token_id", Value::U32(0));
        m.insert("tokenizer.ggml.eos_token_id", Value::U32(0));
        m.insert("tokenizer.ggml.add_bos_token", Value::Bool(false));
        m
    }

    /// The GGUF file's bytes.
    pub fn gguf(&self) -> Result<Vec<u8>, LoadError> {
        self.gguf_with(|_, _| {})
    }

    /// The GGUF file after `edit` has had its way with the tensors (values
    /// in HF order; a dtype with no quantizer is written as zero bytes) and
    /// the metadata: for tests of broken files.
    pub fn gguf_with(
        &self,
        edit: impl FnOnce(&mut Vec<TinyTensor>, &mut Metadata),
    ) -> Result<Vec<u8>, LoadError> {
        let mut tensors = self.tensors();
        let mut meta = self.metadata();
        edit(&mut tensors, &mut meta);
        let mut w = GgufWriter::new();
        w.add_metadata(&meta)?;
        for t in &tensors {
            let heads = if t.name.ends_with("attn_q.weight") {
                self.n_head
            } else {
                self.n_head_kv
            };
            let values = if self.arch == Arch::Llama
                && self.permute_qk
                && (t.name.ends_with("attn_q.weight") || t.name.ends_with("attn_k.weight"))
            {
                permute_for_normal_rope(&t.values, heads, t.shape[1])
            } else {
                t.values.clone()
            };
            w.add_tensor(&t.name, t.dtype, &t.shape, encode(t.dtype, &values))?;
        }
        w.to_bytes()
    }

    /// The hyperparameters for the naive forward, from the spec itself.
    pub fn naive_config(&self) -> NaiveConfig {
        NaiveConfig {
            n_layer: self.n_layer,
            n_embd: self.n_embd,
            n_ff: self.n_ff,
            n_head: self.n_head,
            n_head_kv: self.n_head_kv,
            head_dim: self.head_dim(),
            rms_eps: f64::from(self.rms_eps),
            rope_neox: self.arch == Arch::Qwen2,
            rope_dims: self.head_dim(),
            rope_base: f64::from(self.rope_base),
            rope_freq_scale: 1.0,
            window: (self.sliding_window > 0).then_some(self.sliding_window as usize),
            qkv_bias: self.arch == Arch::Qwen2,
        }
    }

    /// An HF checkpoint in `dir`: `config.json`, the tensors in `dtype`
    /// (F32, F16 or BF16) under HF names and in HF order, in one
    /// `model.safetensors` or in `shards` files with
    /// `model.safetensors.index.json`, `tokenizer.json` and
    /// `tokenizer_config.json`.
    pub fn write_hf(&self, dir: &Path, dtype: DType, shards: usize) -> std::io::Result<()> {
        let io = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("config.json"), self.config_json())?;
        std::fs::write(dir.join("tokenizer.json"), tokenizer_json(self.vocab))?;
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
  "chat_template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"}"#,
        )?;
        let all = self.tensors();
        let tensors: Vec<(String, &TinyTensor)> = all
            .iter()
            .map(|t| {
                let hf = names::hf(&t.name).ok_or_else(|| io(format!("no HF name: {}", t.name)));
                hf.map(|n| (n, t))
            })
            .collect::<Result<_, _>>()?;
        let shards = shards.max(1);
        let per = tensors.len().div_ceil(shards);
        let file = |i: usize| {
            if shards == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{shards:05}.safetensors", i + 1)
            }
        };
        let mut index = String::new();
        for (i, chunk) in tensors.chunks(per).enumerate() {
            std::fs::write(dir.join(file(i)), safetensors(chunk, dtype).map_err(io)?)?;
            for (name, _) in chunk {
                let _ = write!(index, "{}\"{name}\": \"{}\"", sep(&index), file(i));
            }
        }
        if shards > 1 {
            std::fs::write(
                dir.join(kiln_loaders::safetensors::INDEX_FILE),
                format!("{{\"metadata\": {{}}, \"weight_map\": {{{index}}}}}"),
            )?;
        }
        Ok(())
    }

    /// `config.json` as transformers writes it for this model.
    pub fn config_json(&self) -> String {
        let (class, model_type) = match self.arch {
            Arch::Llama => ("LlamaForCausalLM", "llama"),
            Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        };
        let window = match self.sliding_window {
            0 => "null".to_string(),
            w => w.to_string(),
        };
        format!(
            r#"{{"architectures": ["{class}"], "model_type": "{model_type}",
  "hidden_size": {}, "intermediate_size": {}, "num_hidden_layers": {},
  "num_attention_heads": {}, "num_key_value_heads": {}, "rms_norm_eps": {:e},
  "rope_theta": {:.1}, "rope_scaling": null, "vocab_size": {}, "max_position_embeddings": {},
  "tie_word_embeddings": {}, "sliding_window": {window}, "use_sliding_window": {},
  "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "silu", "torch_dtype": "bfloat16"}}"#,
            self.n_embd,
            self.n_ff,
            self.n_layer,
            self.n_head,
            self.n_head_kv,
            self.rms_eps,
            self.rope_base,
            self.vocab,
            self.n_ctx_train,
            self.tied,
            self.sliding_window > 0,
        )
    }
}

/// How a tensor's values are drawn.
#[derive(Clone, Copy)]
enum Fill {
    /// Uniform in (-2^-e, 2^-e).
    Uniform(i32),
    /// Norm weights: 1 ± 1/4.
    NearOne,
}

impl Fill {
    fn values(self, seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                // k in [-255, 255]: 8 significant bits at most.
                let k = ((s >> 32) % 511) as i32 - 255;
                match self {
                    Fill::Uniform(e) => k as f32 / 256.0 * 2f32.powi(-e),
                    Fill::NearOne => 1.0 + (k / 8) as f32 / 128.0,
                }
            })
            .collect()
    }
}

/// llama.cpp's `LlamaModel.permute`: within each head, HF's row `i` (first
/// half) and `i + head_dim / 2` (second half) become rows `2i` and `2i + 1`,
/// so normal rope's adjacent pairs are `rotate_half`'s pairs.
pub fn permute_for_normal_rope(values: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = values.len() / cols;
    let hd = rows / heads;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let from = h * hd + j * hd / 2 + i;
                let to = h * hd + 2 * i + j;
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&values[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// `values` in `dtype`'s layout; zeros for dtypes with no quantizer (IQ*).
fn encode(dtype: DType, values: &[f32]) -> Vec<u8> {
    if dtype == DType::F32 {
        return values.iter().flat_map(|v| v.to_le_bytes()).collect();
    }
    quant::quantize(dtype, values)
        .unwrap_or_else(|_| vec![0; dtype.bytes_for(values.len()).unwrap_or(0)])
}

/// A safetensors file of `tensors` in `dtype`.
fn safetensors(tensors: &[(String, &TinyTensor)], dtype: DType) -> Result<Vec<u8>, String> {
    let name = match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        other => return Err(format!("safetensors holds no {other}")),
    };
    let mut header = String::new();
    let mut data = Vec::new();
    for (hf, t) in tensors {
        let bytes = encode(dtype, &t.values);
        let shape: Vec<String> = t.shape.iter().map(usize::to_string).collect();
        let _ = write!(
            header,
            "{}\"{hf}\": {{\"dtype\": \"{name}\", \"shape\": [{}], \"data_offsets\": [{}, {}]}}",
            sep(&header),
            shape.join(", "),
            data.len(),
            data.len() + bytes.len()
        );
        data.extend(bytes);
    }
    let mut header = format!("{{{header}}}");
    // The data starts 8-byte aligned, as the reference writer pads it.
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.into_bytes());
    out.extend(data);
    Ok(out)
}

fn sep(list: &str) -> &'static str {
    if list.is_empty() {
        ""
    } else {
        ", "
    }
}

/// GPT-2's byte → char alphabet: printable Latin-1 as itself, the rest
/// from U+0100 on.
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
            char::from_u32(cp).unwrap_or('?')
        })
        .collect()
}

/// The tiny models' byte-level BPE vocabulary of `n` tokens: `<|endoftext|>`
/// (id 0), the 256 byte characters, then merges of two lowercase letters
/// (`"a b"` → `ab`) in order. Returns (tokens, merges).
pub fn tokenizer_vocab(n: usize) -> (Vec<String>, Vec<String>) {
    let mut tokens = vec!["<|endoftext|>".to_string()];
    tokens.extend(byte_chars().into_iter().map(String::from));
    let mut merges = Vec::new();
    'outer: for a in 'a'..='z' {
        for b in 'a'..='z' {
            if tokens.len() >= n {
                break 'outer;
            }
            tokens.push(format!("{a}{b}"));
            merges.push(format!("{a} {b}"));
        }
    }
    tokens.truncate(n.max(1));
    (tokens, merges)
}

/// The same vocabulary as an HF `tokenizer.json`.
pub fn tokenizer_json(n: usize) -> String {
    let (tokens, merges) = tokenizer_vocab(n);
    let mut vocab = String::new();
    for (i, t) in tokens.iter().enumerate() {
        let _ = write!(vocab, "{}{}: {i}", sep(&vocab), json_string(t));
    }
    let merges: Vec<String> = merges.iter().map(|m| json_string(m)).collect();
    format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [{{"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
    "rstrip": false, "normalized": false, "special": true}}],
  "normalizer": null,
  "pre_tokenizer": {{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}},
  "post_processor": null,
  "decoder": {{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}},
  "model": {{"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
    "vocab": {{{vocab}}}, "merges": [{}]}}}}"#,
        merges.join(", ")
    )
}

fn json_string(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
