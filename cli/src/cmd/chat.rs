//! `kiln chat [-m MODEL]`: an interactive conversation through the model's
//! chat template, keeping the history; Ctrl-D (end of input) leaves,
//! `/reset` forgets the history.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use kiln::loaders::{EncodeOptions, Message};
use kiln::{GenerateOptions, SamplerConfig};

use super::run::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: ModelArgs,
    /// A system message to start the conversation with.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
    n: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    /// Same seed, same replies; random when unset.
    #[arg(long)]
    seed: Option<u64>,
}

pub fn run(args: Args) -> Result<()> {
    let mut model = args.target.load()?;
    eprintln!(
        "kiln chat on {} — Ctrl-D to leave, /reset to start over",
        model.device_name()
    );
    let start: Vec<Message> = args
        .system
        .iter()
        .map(|s| Message::new("system", s.clone()))
        .collect();
    let mut history = start.clone();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).context("reading stdin")? == 0 {
            writeln!(out)?;
            return Ok(());
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/reset" {
            history.clone_from(&start);
            continue;
        }
        history.push(Message::new("user", line));
        // The whole conversation is rendered and prefilled each turn: the
        // template may rewrite earlier turns, so reusing the KV cache across
        // turns is only safe once the rendered prefix is checked unchanged.
        let text = model.render_chat(&history, true)?;
        let ids = model.tokenizer().encode(
            &text,
            EncodeOptions {
                add_special: false,
                parse_special: true,
            },
        )?;
        let options = GenerateOptions {
            max_tokens: args.n,
            sampler: SamplerConfig {
                temperature: args.temp,
                seed: args.seed,
                ..SamplerConfig::default()
            },
            stop: Vec::new(),
            ignore_eos: false,
            ..GenerateOptions::default()
        };
        let mut reply = String::new();
        let result = (|| -> Result<()> {
            for token in model.generate(&ids, options)? {
                let token = token?;
                reply.push_str(&token.text);
                out.write_all(token.text.as_bytes())?;
                out.flush()?;
            }
            Ok(())
        })();
        writeln!(out)?;
        if let Err(e) = result {
            // Most often the context is full: say so and let the user reset.
            eprintln!("error: {e:#} (/reset starts over)");
            history.pop();
            continue;
        }
        history.push(Message::new("assistant", reply));
    }
}
