//! `kiln run [-m MODEL] PROMPT`: generate text, streaming tokens as they
//! come, as plain text or one JSON object per token.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kiln::loaders::{EncodeOptions, Message};
use kiln::{Device, GenerateOptions, Model, ModelOptions, SamplerConfig};
use kiln_loaders::hub::{Hub, DEFAULT_MODEL};

use crate::cmd::pull::pull_model;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: ModelArgs,
    /// The prompt (or give it as the trailing words).
    #[arg(short, long)]
    prompt: Option<String>,
    /// Most tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    n: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    /// Keep the k most likely tokens; 0 keeps all.
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalise the last 64 tokens; 1 is off.
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Same seed, same output; random when unset.
    #[arg(long)]
    seed: Option<u64>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Keep generating through end-of-generation tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// The prompt, when -p is not given; words are joined by spaces.
    #[arg(allow_hyphen_values = true)]
    words: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// The text as it streams; stats on stderr.
    Text,
    /// One {"id","text","logprob"} per token, then the stats.
    Jsonl,
}

/// Which model to load, where, and with how much context: shared by the
/// commands that run one.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// A .gguf file or a catalog name (`kiln list --catalog`); defaults to
    /// SmolLM2-135M-Instruct Q4_1. A catalog model missing from
    /// $KILN_HOME/models is pulled first.
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// Context length (KV cache positions); 0 = min(model's, 4096).
    #[arg(long, default_value_t = 0)]
    ctx: usize,
    /// A LoRA adapter to apply, unmerged: a PEFT directory or a llama.cpp
    /// LoRA .gguf, optionally with a multiplier on its scale
    /// (`PATH:0.5`). Repeatable: the updates add.
    #[arg(long = "lora", value_name = "PATH[:SCALE]", value_parser = parse_lora)]
    lora: Vec<LoraArg>,
    #[command(flatten)]
    device: DeviceArg,
}

/// `--lora PATH[:SCALE]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraArg {
    pub path: PathBuf,
    pub scale: f32,
}

/// `PATH` or `PATH:SCALE`: the part after the last `:` is the scale when
/// it reads as a number (so `C:\x` or `dir:name` stay paths).
pub fn parse_lora(arg: &str) -> Result<LoraArg, String> {
    if let Some((path, scale)) = arg.rsplit_once(':') {
        if let Ok(scale) = scale.parse::<f32>() {
            if !scale.is_finite() {
                return Err(format!("{arg}: the scale must be a finite number"));
            }
            return Ok(LoraArg {
                path: path.into(),
                scale,
            });
        }
    }
    Ok(LoraArg {
        path: arg.into(),
        scale: 1.0,
    })
}

impl ModelArgs {
    pub fn load(self) -> Result<Model> {
        let mut model = load_model(self.model, &self.device, self.ctx)?;
        apply_loras(&mut model, &self.lora)?;
        Ok(model)
    }
}

/// Loads each `--lora` adapter and applies it (slot 0), named after its
/// file or directory (made unique and valid as a name).
pub fn apply_loras(model: &mut Model, loras: &[LoraArg]) -> Result<()> {
    for (i, lora) in loras.iter().enumerate() {
        let stem = lora
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut name: String = stem
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(100)
            .collect();
        if name.is_empty() || model.adapters().get(&name).is_some() {
            name = format!(
                "{name}{}lora{}",
                if name.is_empty() { "" } else { "-" },
                i + 1
            );
        }
        let info = model
            .load_adapter(&lora.path, Some(&name))
            .with_context(|| format!("loading the LoRA adapter {}", lora.path.display()))?;
        model.apply_adapter(&info.name, lora.scale)?;
        eprintln!(
            "kiln: LoRA {} ({:?}, rank {}, {} targets) x{}",
            info.name, info.format, info.rank, info.targets, lora.scale
        );
    }
    Ok(())
}

/// `--device`, shared by the commands that run a model.
#[derive(clap::Args)]
pub struct DeviceArg {
    /// Where to run: gpu, cpu, an adapter index or part of its name.
    #[arg(long, env = "KILN_DEVICE", default_value = "gpu")]
    device: String,
    /// Prompt processing through f16 tensor cores where the GPU has them:
    /// ~3x faster prefill, x and weights rounded to f16 in those products.
    #[arg(long)]
    pub f16_prefill: bool,
}

impl DeviceArg {
    pub fn open(&self) -> Result<Device> {
        Device::open(&self.device)
            .with_context(|| format!("opening device `{}` (try --device cpu)", self.device))
    }
}

/// The model to load: a path that exists, else a catalog name, else the
/// default model; a catalog model not yet installed is pulled (progress on
/// stderr).
pub fn model_path(given: Option<PathBuf>) -> Result<PathBuf> {
    let hub = Hub::from_env();
    let name = match given {
        Some(path) if path.exists() => return Ok(path),
        Some(path) => {
            let entry = path.to_str().and_then(|name| hub.find(name).ok());
            let Some(entry) = entry else {
                bail!(
                    "{}: no such file, and not a model name in the catalog (`kiln list --catalog`)",
                    path.display()
                );
            };
            entry.name.clone()
        }
        None => DEFAULT_MODEL.to_string(),
    };
    if let Some(path) = hub.installed(&name)? {
        return Ok(path);
    }
    eprintln!(
        "kiln: {name} is not in {}: pulling it",
        hub.models_dir().display()
    );
    pull_model(&hub, &name)
}

/// Loads the model named by `-m` (or the default) on the chosen device.
pub fn load_model(model: Option<PathBuf>, device: &DeviceArg, ctx: usize) -> Result<Model> {
    let options = ModelOptions {
        ctx,
        f16_prefill: device.f16_prefill,
        ..ModelOptions::default()
    };
    let path = model_path(model)?;
    let device = device.open()?;
    Model::load(&path, &device, options).with_context(|| format!("loading {}", path.display()))
}

pub fn run(args: Args) -> Result<()> {
    let prompt = match (&args.prompt, args.words.is_empty()) {
        (Some(p), true) => p.clone(),
        (None, false) => args.words.join(" "),
        (Some(_), false) => bail!("give the prompt either with -p or as trailing words, not both"),
        (None, true) => bail!("no prompt: kiln run -p \"...\" or kiln run \"...\""),
    };
    let mut model = args.target.load()?;
    let (text, encode) = if args.chat {
        // The template writes any BOS itself.
        let text = model.render_chat(&[Message::new("user", prompt)], true)?;
        (
            text,
            EncodeOptions {
                add_special: false,
                parse_special: true,
            },
        )
    } else {
        (prompt, EncodeOptions::default())
    };
    let ids = model.tokenizer().encode(&text, encode)?;
    let options = GenerateOptions {
        max_tokens: args.n,
        sampler: SamplerConfig {
            temperature: args.temp,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repeat_penalty: args.repeat_penalty,
            seed: args.seed,
            ..SamplerConfig::default()
        },
        stop: args.stop,
        ignore_eos: args.ignore_eos,
        ..GenerateOptions::default()
    };
    let device_name = model.device_name();
    let mut out = std::io::stdout().lock();
    let mut generator = model.generate(&ids, options)?;
    // The iterator rather than the callback, so a closed stdout (`| head`)
    // stops generation at once.
    for token in generator.by_ref() {
        let token = token?;
        match args.format {
            Format::Text => out.write_all(token.text.as_bytes()),
            Format::Jsonl => writeln!(
                out,
                "{}",
                serde_json::json!({ "id": token.id, "text": token.text, "logprob": token.logprob })
            ),
        }
        .and_then(|()| out.flush())
        .context("writing to stdout")?;
    }
    let stats = generator.stats();
    match args.format {
        Format::Text => {
            writeln!(out)?;
            eprintln!(
                "prompt: {} tokens, {:.1} tok/s; generated: {} tokens, {:.1} tok/s ({})",
                stats.prompt_tokens,
                stats.prefill_tok_s(),
                stats.gen_tokens,
                stats.decode_tok_s(),
                device_name
            );
        }
        Format::Jsonl => writeln!(
            out,
            "{}",
            serde_json::json!({
                "prompt_tokens": stats.prompt_tokens,
                "gen_tokens": stats.gen_tokens,
                "prefill_tok_s": stats.prefill_tok_s(),
                "decode_tok_s": stats.decode_tok_s(),
            })
        )?,
    }
    Ok(())
}
