//! `kiln info MODEL`: what a model file holds, without loading it on a GPU.
//!
//! One [`Report`] is built from either format (GGUF, or a safetensors
//! checkpoint plus its `config.json` and `tokenizer.json`) and printed as
//! text or as one JSON object, so both outputs always say the same things.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_loaders::{GgufFile, Metadata, ModelConfig, SafetensorsModel, Value};
use serde_json::{json, Value as Json};

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a .safetensors file, a safetensors index, or a
    /// checkpoint directory (config.json + *.safetensors).
    model: PathBuf,
    /// List every tensor: name, dtype, shape, bytes.
    #[arg(long)]
    tensors: bool,
    /// Print everything as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let report = if is_gguf(&args.model)? {
        gguf_report(&args.model)?
    } else {
        safetensors_report(&args.model)?
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json(args.tensors))?
        );
    } else {
        report.print(args.tensors);
    }
    Ok(())
}

/// By extension, else by magic: `.gguf`, or a file starting with "GGUF".
fn is_gguf(path: &Path) -> Result<bool> {
    if path.is_dir() {
        return Ok(false);
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("gguf") => Ok(true),
        Some("safetensors" | "json") => Ok(false),
        _ => {
            let mut magic = [0u8; 4];
            let mut f =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let n = std::io::Read::read(&mut f, &mut magic)?;
            Ok(n == 4 && &magic == b"GGUF")
        }
    }
}

/// One tensor's line.
struct TensorRow {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    bytes: u64,
}

/// Hyperparameters, by their GGUF key names.
#[derive(Default)]
struct Hyper {
    context_length: Option<u64>,
    embedding_length: Option<u64>,
    block_count: Option<u64>,
    head_count: Option<u64>,
    head_count_kv: Option<u64>,
    head_dim: Option<u64>,
    feed_forward_length: Option<u64>,
    rope_freq_base: Option<f64>,
    norm_eps: Option<f64>,
    vocab_size: Option<u64>,
}

#[derive(Default)]
struct Tokenizer {
    model: Option<String>,
    pre: Option<String>,
    tokens: Option<u64>,
    merges: Option<u64>,
    bos: Option<u64>,
    eos: Option<u64>,
    /// Token texts, to show what bos/eos are.
    bos_text: Option<String>,
    eos_text: Option<String>,
}

struct Report {
    path: PathBuf,
    format: String,
    files: usize,
    file_size: u64,
    architecture: Option<String>,
    name: Option<String>,
    hyper: Hyper,
    tokenizer: Tokenizer,
    tensors: Vec<TensorRow>,
    parameters: u64,
    tied_output: bool,
}

fn gguf_report(path: &Path) -> Result<Report> {
    let file = GgufFile::open(path)?;
    let md = file.metadata();
    let tensors: Vec<TensorRow> = file
        .tensors()
        .iter()
        .map(|t| TensorRow {
            name: t.name.clone(),
            dtype: t.dtype.name().into(),
            shape: t.shape.clone(),
            bytes: t.byte_size as u64,
        })
        .collect();
    let parameters = file.tensors().iter().map(|t| t.numel() as u64).sum();
    let mut tokenizer = Tokenizer {
        model: md.get_str("tokenizer.ggml.model").map(str::to_string),
        pre: md.get_str("tokenizer.ggml.pre").map(str::to_string),
        tokens: md
            .get_array("tokenizer.ggml.tokens")
            .map(|a| a.len() as u64),
        merges: md
            .get_array("tokenizer.ggml.merges")
            .map(|a| a.len() as u64),
        bos: md.get_u64("tokenizer.ggml.bos_token_id"),
        eos: md.get_u64("tokenizer.ggml.eos_token_id"),
        ..Tokenizer::default()
    };
    let token_text = |id: Option<u64>| {
        let tokens = md.get_array("tokenizer.ggml.tokens")?;
        tokens
            .get(usize::try_from(id?).ok()?)?
            .as_str()
            .map(str::to_string)
    };
    tokenizer.bos_text = token_text(tokenizer.bos);
    tokenizer.eos_text = token_text(tokenizer.eos);
    let mut hyper = hyper(md);
    hyper.vocab_size = hyper.vocab_size.or(tokenizer.tokens);
    Ok(Report {
        path: path.to_path_buf(),
        format: format!("GGUF v{}", file.version()),
        files: 1,
        file_size: file.file_size() as u64,
        architecture: md.architecture().map(str::to_string),
        name: md.get_str("general.name").map(str::to_string),
        hyper,
        tokenizer,
        tied_output: file.tensor("output.weight").is_none(),
        tensors,
        parameters,
    })
}

/// Reads GGUF-style keys, whichever format they came from.
fn hyper(md: &Metadata) -> Hyper {
    let key = |s: &str| md.arch_get(s);
    let u = |s: &str| key(s).and_then(|v| v.as_u64());
    // An f32 widened to f64 prints as 9.999999747378752e-6; going through
    // its shortest decimal form keeps the 1e-5 the file means.
    let f = |s: &str| match key(s)? {
        Value::F32(x) => x.to_string().parse().ok(),
        v => v.as_f64(),
    };
    let embedding_length = u("embedding_length");
    let head_count = u("attention.head_count");
    Hyper {
        context_length: u("context_length"),
        embedding_length,
        block_count: u("block_count"),
        head_count,
        head_count_kv: u("attention.head_count_kv").or(head_count),
        // Explicit key length, else the usual d_model / heads.
        head_dim: u("attention.key_length").or_else(|| embedding_length?.checked_div(head_count?)),
        feed_forward_length: u("feed_forward_length"),
        rope_freq_base: f("rope.freq_base"),
        norm_eps: f("attention.layer_norm_rms_epsilon")
            .or_else(|| f("attention.layer_norm_epsilon")),
        vocab_size: u("vocab_size"),
    }
}

fn safetensors_report(path: &Path) -> Result<Report> {
    let model = SafetensorsModel::open(path)?;
    let mut tensors = Vec::new();
    let mut parameters = 0u64;
    for f in model.files() {
        for t in f.tensors() {
            parameters += t.numel() as u64;
            tensors.push(TensorRow {
                name: t.name.clone(),
                dtype: t.dtype.name().into(),
                shape: t.shape.clone(),
                bytes: t.byte_size() as u64,
            });
        }
    }
    let config_path = model.dir().join("config.json");
    let config = if config_path.is_file() {
        Some(ModelConfig::open(&config_path)?)
    } else {
        None
    };
    let md = config
        .as_ref()
        .map(ModelConfig::to_metadata)
        .unwrap_or_default();
    let mut tokenizer = hf_tokenizer(&model.dir().join("tokenizer.json"))?;
    if let Some(c) = &config {
        tokenizer.bos = c.bos_token_id;
        tokenizer.eos = c.eos_token_ids.first().copied();
    }
    let has = |name: &str| tensors.iter().any(|t| t.name == name);
    Ok(Report {
        path: path.to_path_buf(),
        format: "safetensors".into(),
        files: model.files().len(),
        file_size: model.file_size(),
        architecture: md.architecture().map(str::to_string),
        name: None,
        hyper: hyper(&md),
        tokenizer,
        // HF names the output projection `lm_head.weight`.
        tied_output: !has("lm_head.weight"),
        tensors,
        parameters,
    })
}

/// Counts from a `tokenizer.json`, when there is one.
fn hf_tokenizer(path: &Path) -> Result<Tokenizer> {
    if !path.is_file() {
        return Ok(Tokenizer::default());
    }
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let json: Json =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    let model = &json["model"];
    let added = json["added_tokens"].as_array().map_or(0, Vec::len) as u64;
    let vocab = model["vocab"].as_object().map(|v| v.len() as u64);
    Ok(Tokenizer {
        model: model["type"].as_str().map(str::to_string),
        pre: json["pre_tokenizer"]["type"].as_str().map(str::to_string),
        // Added tokens outside the model vocab count too (ids past it).
        tokens: vocab.map(|v| v.max(added)),
        merges: model["merges"].as_array().map(|m| m.len() as u64),
        ..Tokenizer::default()
    })
}

impl Report {
    /// Tensor count per dtype, most common first.
    fn census(&self) -> Vec<(String, usize)> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for t in &self.tensors {
            *counts.entry(&t.dtype).or_default() += 1;
        }
        let mut out: Vec<_> = counts
            .into_iter()
            .map(|(d, n)| (d.to_string(), n))
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    fn to_json(&self, with_tensors: bool) -> Json {
        let h = &self.hyper;
        let t = &self.tokenizer;
        let census: serde_json::Map<String, Json> = self
            .census()
            .into_iter()
            .map(|(d, n)| (d, json!(n)))
            .collect();
        let mut out = json!({
            "path": self.path.display().to_string(),
            "format": self.format,
            "files": self.files,
            "file_size": self.file_size,
            "architecture": self.architecture,
            "name": self.name,
            "hyperparameters": {
                "context_length": h.context_length,
                "embedding_length": h.embedding_length,
                "block_count": h.block_count,
                "head_count": h.head_count,
                "head_count_kv": h.head_count_kv,
                "head_dim": h.head_dim,
                "feed_forward_length": h.feed_forward_length,
                "rope_freq_base": h.rope_freq_base,
                "norm_eps": h.norm_eps,
                "vocab_size": h.vocab_size,
            },
            "tokenizer": {
                "model": t.model, "pre": t.pre, "tokens": t.tokens, "merges": t.merges,
                "bos_token_id": t.bos, "eos_token_id": t.eos,
            },
            "tensor_count": self.tensors.len(),
            "dtypes": census,
            "parameters": self.parameters,
            "tied_output": self.tied_output,
        });
        if with_tensors {
            out["tensors"] = self
                .tensors
                .iter()
                .map(|t| json!({"name": t.name, "dtype": t.dtype, "shape": t.shape, "bytes": t.bytes}))
                .collect();
        }
        out
    }

    fn print(&self, with_tensors: bool) {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let num = |v: Option<u64>| opt(v.map(|v| v.to_string()));
        let h = &self.hyper;
        let t = &self.tokenizer;
        println!("file          {}", self.path.display());
        let files = if self.files > 1 {
            format!(", {} files", self.files)
        } else {
            String::new()
        };
        println!("format        {}{files}", self.format);
        println!(
            "size          {} ({} bytes)",
            human(self.file_size as f64, "B"),
            self.file_size
        );
        let name = self
            .name
            .as_ref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        println!("architecture  {}{name}", opt(self.architecture.clone()));
        println!(
            "parameters    {} ({})",
            human(self.parameters as f64, ""),
            self.parameters
        );
        println!("hyperparameters");
        println!("  context length    {}", num(h.context_length));
        println!("  embedding length  {}", num(h.embedding_length));
        println!("  block count       {}", num(h.block_count));
        println!("  heads             {}", num(h.head_count));
        println!("  kv heads          {}", num(h.head_count_kv));
        println!("  head dim          {}", num(h.head_dim));
        println!("  ffn length        {}", num(h.feed_forward_length));
        println!(
            "  rope base         {}",
            opt(h.rope_freq_base.map(|v| v.to_string()))
        );
        println!(
            "  norm eps          {}",
            opt(h.norm_eps.map(|v| format!("{v:e}")))
        );
        println!("  vocab size        {}", num(h.vocab_size));
        println!("tokenizer");
        println!("  model             {}", opt(t.model.clone()));
        println!("  pre-tokenizer     {}", opt(t.pre.clone()));
        println!("  tokens            {}", num(t.tokens));
        println!("  merges            {}", num(t.merges));
        let with_text = |id: Option<u64>, text: &Option<String>| match text {
            Some(s) => format!("{} {s:?}", num(id)),
            None => num(id),
        };
        println!("  bos id            {}", with_text(t.bos, &t.bos_text));
        println!("  eos id            {}", with_text(t.eos, &t.eos_text));
        let census: Vec<String> = self
            .census()
            .iter()
            .map(|(d, n)| format!("{d} {n}"))
            .collect();
        println!(
            "tensors       {} ({})",
            self.tensors.len(),
            census.join(", ")
        );
        println!("tied output   {}", self.tied_output);
        if with_tensors {
            let width = self.tensors.iter().map(|t| t.name.len()).max().unwrap_or(0);
            for r in &self.tensors {
                println!(
                    "  {:width$}  {:<6} {:<20} {}",
                    r.name,
                    r.dtype,
                    format!("{:?}", r.shape),
                    r.bytes
                );
            }
        }
    }
}

/// 98362432 → "98.36 M" (decimal units, as file sizes are usually quoted).
fn human(v: f64, unit: &str) -> String {
    let (scaled, prefix) = match v {
        v if v >= 1e12 => (v / 1e12, "T"),
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => return format!("{v} {unit}").trim_end().to_string(),
    };
    format!("{scaled:.2} {prefix}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(98_362_432.0, "B"), "98.36 MB");
        assert_eq!(human(9.0, ""), "9");
        assert_eq!(human(327.0, "B"), "327 B");
    }

    /// The real model, when fetched (skipped visibly when missing, a failure
    /// under KILN_REQUIRE_MODEL=1).
    #[test]
    fn smollm2_report() {
        let Some(path) = kiln_loaders::paths::test_model("kiln info") else {
            return;
        };
        assert!(is_gguf(&path).unwrap());
        let r = gguf_report(&path).unwrap();
        let j = r.to_json(false);
        assert_eq!(j["architecture"], "llama");
        assert_eq!(j["hyperparameters"]["block_count"], 30);
        assert_eq!(j["hyperparameters"]["head_dim"], 64);
        assert_eq!(j["hyperparameters"]["norm_eps"], 1e-5);
        assert_eq!(j["tensor_count"], 272);
        assert_eq!(j["dtypes"], json!({"q4_1": 210, "f32": 61, "q8_0": 1}));
        assert_eq!(j["tied_output"], true);
        assert_eq!(j["tokenizer"]["pre"], "smollm");
        assert_eq!(
            r.to_json(true)["tensors"].as_array().map(Vec::len),
            Some(272)
        );
    }
}
