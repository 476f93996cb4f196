//! The `kiln` command-line tool.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Run large language models on any GPU wgpu reaches"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter with its features and limits.
    Devices(cmd::devices::Args),
    /// Describe a model file: architecture, hyperparameters, tokenizer, tensors.
    Info(cmd::info::Args),
    /// Turn text into token ids with a model's tokenizer.
    Tokenize(cmd::tokenize::Args),
    /// Generate text from a prompt.
    Run(cmd::run::Args),
    /// Talk with a model through its chat template; Ctrl-D leaves.
    Chat(cmd::chat::Args),
    /// The next-token logits after a prompt: argmax and top tokens.
    Logits(cmd::logits::Args),
    /// Perplexity of a text file, llama.cpp's method (`PPL = x +/- y`).
    Perplexity(cmd::perplexity::Args),
    /// Fetch a model from the catalog (the default one if none is named).
    Pull(cmd::pull::Args),
    /// The models in $KILN_HOME/models, or with --catalog those kiln can pull.
    List(cmd::list::Args),
    /// Delete a model from $KILN_HOME/models.
    Rm(cmd::rm::Args),
    /// Prefill and decode speed (tokens/s), like llama-bench.
    Bench(cmd::bench::Args),
    /// Write a GGUF with random weights in a preset shape (benchmarks).
    Synth(cmd::synth::Args),
    /// LoRA adapters: merge into a base GGUF, or describe one.
    Lora(cmd::lora::Args),
    Serve(cmd::serve::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Devices(args) => cmd::devices::run(args),
        Command::Info(args) => cmd::info::run(args),
        Command::Tokenize(args) => cmd::tokenize::run(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Chat(args) => cmd::chat::run(args),
        Command::Logits(args) => cmd::logits::run(args),
        Command::Perplexity(args) => cmd::perplexity::run(args),
        Command::Pull(args) => cmd::pull::run(args),
        Command::List(args) => cmd::list::run(args),
        Command::Rm(args) => cmd::rm::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Synth(args) => cmd::synth::run(args),
        Command::Lora(args) => cmd::lora::run(args),
        Command::Serve(args) => cmd::serve::run(args),
    }
}
