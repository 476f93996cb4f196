//! `kiln logits -m MODEL -p PROMPT`: the next-token distribution after a
//! prompt: argmax and the top tokens with logit and log-probability, to
//! compare with llama.cpp or the exact references.

use anyhow::{bail, Result};
use kiln::loaders::{DecodeOptions, EncodeOptions};

use crate::cmd::run::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: ModelArgs,
    /// The prompt, tokenized as `kiln tokenize` does (special tokens parsed).
    #[arg(short, long, allow_hyphen_values = true)]
    prompt: String,
    /// How many of the most likely tokens to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Print {"argmax": ID, "top": [{"id","logit","logprob"}...]}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let mut model = args.target.load()?;
    let ids = model
        .tokenizer()
        .encode(&args.prompt, EncodeOptions::default())?;
    if ids.is_empty() {
        bail!("the prompt tokenizes to nothing");
    }
    let logits = model.logits(&ids, 0)?;
    // ln p = logit - logsumexp, in f64 over the whole vocabulary.
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = f64::from(max)
        + logits
            .iter()
            .map(|&l| (f64::from(l) - f64::from(max)).exp())
            .sum::<f64>()
            .ln();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let top = &order[..args.top.min(order.len())];
    let argmax = order.first().copied().unwrap_or(0);
    if args.json {
        let top: Vec<_> = top
            .iter()
            .map(|&i| serde_json::json!({ "id": i, "logit": logits[i], "logprob": f64::from(logits[i]) - lse }))
            .collect();
        println!("{}", serde_json::json!({ "argmax": argmax, "top": top }));
    } else {
        println!(
            "{} prompt tokens on {}; argmax {argmax}",
            ids.len(),
            model.device_name()
        );
        for &i in top {
            let piece = model
                .tokenizer()
                .piece(i as u32, DecodeOptions::default())?;
            let piece = String::from_utf8_lossy(&piece);
            println!(
                "{i:>8} {:>10.4} {:>10.4} {piece:?}",
                logits[i],
                f64::from(logits[i]) - lse
            );
        }
    }
    Ok(())
}
