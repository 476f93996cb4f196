//! `kiln synth PRESET:QUANT -o FILE.gguf`: a LLaMA-shaped GGUF with random
//! valid weights (see `kiln::synth`), loadable by kiln and llama.cpp alike,
//! for benchmarks on machines real weights cannot reach.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use kiln::synth::{self, SynthSpec};

#[derive(clap::Args)]
pub struct Args {
    /// Shape and quant, e.g. llama-7b:q4_0. Presets: smollm2-135m, llama-1b,
    /// llama-3b, llama-7b, llama-8b; quants: q4_0, q4_1, q8_0, q4_k, q6_k, f16.
    spec: SynthSpec,
    /// Where to write the file.
    #[arg(short, long)]
    output: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: Args) -> Result<()> {
    let start = Instant::now();
    synth::write(args.spec, args.seed, &args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let size = std::fs::metadata(&args.output)?.len();
    eprintln!(
        "wrote {} ({}, {:.2} GiB) in {:.1} s",
        args.output.display(),
        args.spec,
        size as f64 / (1u64 << 30) as f64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
