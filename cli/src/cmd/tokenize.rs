//! `kiln tokenize -m MODEL TEXT`: the token ids (and their pieces) a model's
//! tokenizer gives for a text, exactly as `encode` does in generation.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_loaders::{DecodeOptions, EncodeOptions, GgufFile, Tokenizer};

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a tokenizer.json, or a directory holding tokenizer.json.
    #[arg(short, long)]
    model: PathBuf,
    /// Treat special-token text such as "<|im_start|>" as plain text.
    #[arg(long)]
    no_parse_special: bool,
    /// Do not add BOS/EOS, even where the model asks for them.
    #[arg(long)]
    no_add_special: bool,
    /// Print {"ids": [...], "pieces": [...]} instead of one token per line.
    #[arg(long)]
    json: bool,
    /// The text; several words are joined by single spaces. "-" reads stdin.
    /// Put "--" before a text that starts with a dash.
    #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
    text: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let tok = load(&args.model)?;
    let text = if args.text == ["-"] {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        s
    } else {
        args.text.join(" ")
    };
    let opts = EncodeOptions {
        add_special: !args.no_add_special,
        parse_special: !args.no_parse_special,
    };
    let ids = tok.encode(&text, opts)?;
    // The bytes each token stands for; a piece holding part of a multibyte
    // character shows as U+FFFD.
    let pieces = ids
        .iter()
        .map(|&id| {
            Ok(String::from_utf8_lossy(&tok.piece(id, DecodeOptions::default())?).into_owned())
        })
        .collect::<Result<Vec<String>>>()?;
    if args.json {
        println!("{}", serde_json::json!({ "ids": ids, "pieces": pieces }));
    } else {
        for (id, piece) in ids.iter().zip(&pieces) {
            println!("{id:>8} {piece:?}");
        }
    }
    Ok(())
}

/// The tokenizer of a model file or checkpoint directory.
pub fn load(model: &Path) -> Result<Tokenizer> {
    let json = if model.is_dir() {
        Some(model.join("tokenizer.json"))
    } else {
        None
    };
    let json =
        json.or_else(|| (model.extension().is_some_and(|e| e == "json")).then(|| model.to_owned()));
    if let Some(path) = json {
        return Tokenizer::from_json_file(&path)
            .with_context(|| format!("loading {}", path.display()));
    }
    let file = GgufFile::open(model).with_context(|| format!("opening {}", model.display()))?;
    Tokenizer::from_gguf(file.metadata())
        .with_context(|| format!("tokenizer of {}", model.display()))
}
