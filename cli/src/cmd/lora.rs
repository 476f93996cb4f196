//! `kiln lora`: LoRA adapter tools.
//!
//! - `kiln lora merge BASE.gguf ADAPTER[:SCALE]... -o OUT.gguf
//!   [--outtype f16|f32|same] [--force]` bakes adapters into a base model
//!   (`kiln_loaders::lora::merge_gguf`; llama.cpp's `llama-export-lora`).
//! - `kiln lora info ADAPTER` says what an adapter holds: format, rank,
//!   alpha, scale, targets per module, base model.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{Context, Result};
use kiln_loaders::lora::{merge_gguf, MergeOptions, MergeOutType, MergeSource};
use kiln_loaders::{LoraAdapter, LoraFormat, LoraModule, LoraTarget};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Merge LoRA adapters into a base GGUF and write a new GGUF.
    Merge(MergeArgs),
    /// Describe a LoRA adapter: format, rank, alpha, scale, targets.
    Info(InfoArgs),
}

#[derive(clap::Args)]
struct MergeArgs {
    /// The base model (.gguf).
    base: PathBuf,
    /// Adapters (PEFT directories or llama.cpp LoRA .gguf files), each
    /// optionally with a multiplier on its own scale: `path:0.5`
    /// (llama.cpp's --lora-scaled). Default 1.
    #[arg(required = true, value_name = "ADAPTER[:SCALE]")]
    adapters: Vec<AdapterSpec>,
    /// Where to write the merged model.
    #[arg(short, long)]
    output: PathBuf,
    /// Type of the merged tensors: f16 (F32 ones stay F32, as llama.cpp's
    /// export-lora writes), f32, or same (requantize to the base's type).
    /// Other tensors are copied as they are.
    #[arg(long, default_value_t = MergeOutType::F16)]
    outtype: MergeOutType,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
struct InfoArgs {
    /// A PEFT directory (adapter_config.json + adapter_model.safetensors)
    /// or a llama.cpp LoRA .gguf.
    adapter: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// `PATH` or `PATH:SCALE`.
#[derive(Clone, Debug)]
struct AdapterSpec {
    path: PathBuf,
    multiplier: f32,
}

impl FromStr for AdapterSpec {
    type Err = String;

    /// A path that exists is taken whole (it may contain ':'); otherwise a
    /// suffix after the last ':' that reads as a number is the multiplier.
    fn from_str(s: &str) -> Result<AdapterSpec, String> {
        let whole = AdapterSpec {
            path: s.into(),
            multiplier: 1.0,
        };
        if Path::new(s).exists() {
            return Ok(whole);
        }
        match s.rsplit_once(':') {
            Some((path, scale)) if !path.is_empty() => match scale.parse::<f32>() {
                Ok(m) if m.is_finite() => Ok(AdapterSpec {
                    path: path.into(),
                    multiplier: m,
                }),
                Ok(_) => Err(format!("the scale in '{s}' is not a finite number")),
                // Not a number: a path with a ':' that does not exist yet;
                // opening it says so.
                Err(_) => Ok(whole),
            },
            _ => Ok(whole),
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Merge(args) => merge(args),
        Command::Info(args) => info(args),
    }
}

fn merge(args: MergeArgs) -> Result<()> {
    let start = Instant::now();
    let mut sources = Vec::with_capacity(args.adapters.len());
    for spec in &args.adapters {
        let adapter = LoraAdapter::open(&spec.path)
            .with_context(|| format!("opening adapter {}", spec.path.display()))?;
        eprintln!(
            "adapter {} ({}, rank {}, {} targets) x {}",
            spec.path.display(),
            format_name(adapter.format),
            adapter.rank,
            adapter.targets.len(),
            spec.multiplier
        );
        sources.push(MergeSource::new(adapter, spec.multiplier));
    }
    let options = MergeOptions {
        outtype: args.outtype,
        overwrite: args.force,
    };
    let report = merge_gguf(&args.base, &sources, &args.output, &options).with_context(|| {
        format!(
            "merging into {} -> {}",
            args.base.display(),
            args.output.display()
        )
    })?;
    // "12 x q4_0 -> f16", per conversion.
    let mut conversions: BTreeMap<(String, String), usize> = BTreeMap::new();
    for t in &report.merged {
        *conversions
            .entry((t.from.to_string(), t.to.to_string()))
            .or_default() += 1;
    }
    let conversions: Vec<String> = conversions
        .iter()
        .map(|((from, to), n)| format!("{n} x {from} -> {to}"))
        .collect();
    eprintln!(
        "merged {} tensors ({}), copied {}; wrote {} ({:.2} GiB) in {:.1} s",
        report.merged.len(),
        conversions.join(", "),
        report.copied,
        args.output.display(),
        report.bytes as f64 / (1u64 << 30) as f64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn format_name(format: LoraFormat) -> &'static str {
    match format {
        LoraFormat::Peft => "PEFT",
        LoraFormat::Gguf => "llama.cpp GGUF",
    }
}

/// The targets of one module, for `info`.
struct ModuleRow {
    module: LoraModule,
    layers: Vec<usize>,
    ranks: Vec<usize>,
    scales: Vec<f32>,
}

fn modules(targets: &[LoraTarget]) -> Vec<ModuleRow> {
    LoraModule::ALL
        .into_iter()
        .filter_map(|module| {
            let ts: Vec<&LoraTarget> = targets.iter().filter(|t| t.module == module).collect();
            if ts.is_empty() {
                return None;
            }
            let mut ranks: Vec<usize> = ts.iter().map(|t| t.rank()).collect();
            ranks.sort_unstable();
            ranks.dedup();
            let mut scales: Vec<f32> = Vec::new();
            for t in &ts {
                if !scales.contains(&t.scale) {
                    scales.push(t.scale);
                }
            }
            Some(ModuleRow {
                module,
                layers: ts.iter().map(|t| t.layer).collect(),
                ranks,
                scales,
            })
        })
        .collect()
}

/// `0-3,7,9-11` from sorted layer indices.
fn ranges(layers: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while let Some(&first) = layers.get(i) {
        let mut last = first;
        while layers.get(i + 1) == Some(&(last + 1)) {
            last += 1;
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        let _ = if last == first {
            write!(out, "{first}")
        } else {
            write!(out, "{first}-{last}")
        };
        i += 1;
    }
    out
}

fn list<T: ToString>(values: &[T]) -> String {
    values
        .iter()
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn info(args: InfoArgs) -> Result<()> {
    let a = LoraAdapter::open(&args.adapter)
        .with_context(|| format!("opening adapter {}", args.adapter.display()))?;
    let rows = modules(&a.targets);
    let parameters: usize = a
        .targets
        .iter()
        .map(|t| t.a.shape().iter().product::<usize>() + t.b.shape().iter().product::<usize>())
        .sum();
    let n_layers = {
        let mut l: Vec<usize> = a.targets.iter().map(|t| t.layer).collect();
        l.dedup();
        l.len()
    };
    if args.json {
        let modules: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "module": r.module.gguf_name(),
                    "hf_module": r.module.hf_name(),
                    "layers": r.layers,
                    "ranks": r.ranks,
                    "scales": r.scales,
                })
            })
            .collect();
        let report = json!({
            "path": args.adapter.display().to_string(),
            "name": a.name,
            "format": match a.format { LoraFormat::Peft => "peft", LoraFormat::Gguf => "gguf" },
            "rank": a.rank,
            "alpha": a.alpha,
            "scale": a.scale,
            "base_model": a.base_model,
            "architecture": a.architecture,
            "targets": a.targets.len(),
            "parameters": parameters,
            "modules": modules,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("adapter       {}", args.adapter.display());
    println!("name          {}", a.name);
    println!("format        {}", format_name(a.format));
    println!("base model    {}", opt(&a.base_model));
    println!("architecture  {}", opt(&a.architecture));
    println!("rank          {}", a.rank);
    println!("alpha         {}", a.alpha);
    println!("scale         {}", a.scale);
    println!(
        "targets       {} in {} layers, {} parameters",
        a.targets.len(),
        n_layers,
        parameters
    );
    for r in &rows {
        println!(
            "  {:<12} layers {:<10} rank {:<6} scale {}",
            r.module.gguf_name(),
            ranges(&r.layers),
            list(&r.ranks),
            list(&r.scales)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_specs_split_a_numeric_scale() {
        let s: AdapterSpec = "dir/a.gguf:0.5".parse().unwrap();
        assert_eq!((s.path, s.multiplier), ("dir/a.gguf".into(), 0.5));
        let s: AdapterSpec = "dir/a.gguf".parse().unwrap();
        assert_eq!((s.path, s.multiplier), ("dir/a.gguf".into(), 1.0));
        let s: AdapterSpec = "a:-2".parse().unwrap();
        assert_eq!((s.path, s.multiplier), ("a".into(), -2.0));
        // Not a number after the ':': all of it is the path.
        let s: AdapterSpec = "c:/x/a.gguf".parse().unwrap();
        assert_eq!((s.path, s.multiplier), ("c:/x/a.gguf".into(), 1.0));
        assert!("a.gguf:nan".parse::<AdapterSpec>().is_err());
        assert!("a.gguf:inf".parse::<AdapterSpec>().is_err());
    }

    #[test]
    fn layer_ranges_are_compact() {
        assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10, 11]), "0-3,7,9-11");
        assert_eq!(ranges(&[5]), "5");
        assert_eq!(ranges(&[]), "");
    }
}
