//! `kiln perplexity [-m MODEL] -f FILE [-c CTX]`: perplexity of a text file,
//! llama.cpp's method and output (`PPL = x +/- y`), to compare with
//! `llama-perplexity -f FILE -c CTX` and the references in shared/refs.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kiln::loaders::EncodeOptions;
use kiln::perplexity::{perplexity, ChunkScore, PerplexityOptions, MIN_CTX};

use crate::cmd::run::{load_model, DeviceArg};

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf model; defaults to the model scripts/fetch-model.sh fetches.
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// The text to score.
    #[arg(short, long)]
    file: PathBuf,
    /// Tokens per chunk; the model's KV cache is sized to it.
    #[arg(short, long, default_value_t = 512)]
    ctx: usize,
    #[command(flatten)]
    device: DeviceArg,
}

pub fn run(args: Args) -> Result<()> {
    // Checked before loading, which would otherwise size the cache first.
    if args.ctx < MIN_CTX {
        bail!(
            "-c {} is too small: at least {MIN_CTX} tokens per chunk",
            args.ctx
        );
    }
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let mut model = load_model(args.model, &args.device, args.ctx)?;
    // As llama.cpp: BOS only if the model asks for it, and special tokens
    // written in the text are plain text.
    let tokenizer = model.tokenizer().clone();
    let ids = tokenizer.encode(
        &text,
        EncodeOptions {
            add_special: true,
            parse_special: false,
        },
    )?;
    let specials = tokenizer.special_tokens();
    let options = PerplexityOptions {
        ctx: args.ctx,
        bos: specials.bos.filter(|_| specials.add_bos),
    };
    let device = model.device_name();
    eprintln!(
        "{}: {} tokens, {} chunks of {} on {device}",
        args.file.display(),
        ids.len(),
        ids.len() / args.ctx,
        args.ctx
    );
    let start = Instant::now();
    let progress = |c: &ChunkScore| {
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "[{}/{}] chunk NLL {:.4}, PPL so far {:.4}, {:.1} tok/s",
            c.index + 1,
            c.chunks,
            c.nll(),
            c.running_ppl,
            ((c.index + 1) * args.ctx) as f64 / secs
        );
    };
    let result = perplexity(&mut model, &ids, options, progress)?;
    let secs = start.elapsed().as_secs_f64();
    println!("PPL = {:.4} +/- {:.5}", result.ppl, result.ppl_stderr());
    eprintln!(
        "{} chunks of {} tokens, {} scored, mean NLL {:.5} ± {:.5}; {:.1} s, {:.1} tok/s ({device})",
        result.chunks,
        args.ctx,
        result.scored,
        result.nll,
        result.stderr,
        secs,
        (result.chunks * args.ctx) as f64 / secs
    );
    Ok(())
}
