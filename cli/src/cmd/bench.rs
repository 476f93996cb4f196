//! `kiln bench`: prefill (ppN) and decode (tgN) speed like `llama-bench`.
//! ppN runs one forward of N random tokens from an empty cache; tgN runs N
//! single-token forwards at positions 0..N, each reading its logits back,
//! as llama-bench's tests do. Each is repeated `-r` times after a warm-up
//! (which compiles the plans) and reported as mean ± sd of tokens/second.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kiln::engine::OpTime;
use kiln::kernels::copy::Copy;
use kiln::kernels::matmul::{coop_available, MatMul, MatMulVariant};
use kiln::kernels::Op;
use kiln::loaders::GgufFile;
use kiln::synth::{self, SynthSpec};
use kiln::{CpuTensor, DType, Graph, TensorDesc};
use kiln::{Model, ModelOptions};
use serde_json::json;

use crate::cmd::run::{apply_loras, model_path, parse_lora, DeviceArg, LoraArg};
use kiln::loaders::lora::LoraModule;

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf model; defaults to the default model.
    #[arg(short, long, conflicts_with = "synthetic")]
    model: Option<PathBuf>,
    /// Random weights in a preset shape instead of a file, e.g.
    /// llama-7b:q4_0 (see `kiln synth --help`).
    #[arg(long)]
    synthetic: Option<SynthSpec>,
    /// Prompt tokens of the prefill test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Generated tokens of the decode test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Sequences decoded together (continuous batching's forward): the
    /// decode test runs this many sequences, each in its own cache slot,
    /// one batched forward per step, and reports their aggregate tok/s.
    #[arg(short = 'b', long = "batch", default_value_t = 1)]
    batch: usize,
    /// Decode test steps make the greedy pick on the device and read back
    /// the token id and its log-probability, not the logits (what `kiln
    /// run --temp 0` does).
    #[arg(long)]
    greedy: bool,
    /// Repetitions of each test.
    #[arg(short, long, default_value_t = 5)]
    repetitions: usize,
    /// Measure the device's ceilings instead of a model: copy bandwidth
    /// (256 MiB of f32) and matmul peak (4096^3; f16 cooperative matrices
    /// where the device has them, else tiled f32), the yardsticks the
    /// model figures are read against.
    #[arg(long, conflicts_with_all = ["model", "synthetic"])]
    roofline: bool,
    /// Also time every dispatch of one prefill and one decode step (GPU
    /// timestamps) and print the totals per kernel.
    #[arg(long)]
    profile: bool,
    #[arg(long, value_enum, default_value_t = Format::Md)]
    format: Format,
    /// Run with this LoRA adapter applied (repeatable; PATH[:SCALE]).
    #[arg(long = "lora", value_name = "PATH[:SCALE]", value_parser = parse_lora)]
    lora: Vec<LoraArg>,
    /// Run with a random LoRA adapter of this rank applied, in the
    /// model's shapes (no file needed).
    #[arg(long)]
    lora_rank: Option<usize>,
    /// The modules the random adapter adapts: `all`, or a comma list of
    /// q, k, v, o, gate, up, down.
    #[arg(long, default_value = "q,v", value_parser = parse_modules)]
    lora_modules: Modules,
    #[command(flatten)]
    device: DeviceArg,
}

/// `--lora-modules`.
#[derive(Clone, Debug)]
struct Modules(Vec<LoraModule>);

fn parse_modules(arg: &str) -> Result<Modules, String> {
    if arg == "all" {
        return Ok(Modules(LoraModule::ALL.to_vec()));
    }
    // The short name is HF's without `_proj`: q_proj is q, gate_proj gate.
    let named = |m: LoraModule, name: &str| {
        m.hf_name().strip_suffix("_proj") == Some(name) || m.hf_name() == name
    };
    arg.split(',')
        .map(|name| {
            LoraModule::ALL
                .into_iter()
                .find(|&m| named(m, name))
                .or_else(|| LoraModule::from_gguf_name(name))
                .ok_or_else(|| format!("unknown module '{name}': use all or q,k,v,o,gate,up,down"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Modules)
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Md,
    Json,
}

/// One test's figures.
struct Row {
    test: String,
    samples: Vec<f64>,
}

impl Row {
    fn mean(&self) -> f64 {
        self.samples.iter().sum::<f64>() / self.samples.len().max(1) as f64
    }

    fn sd(&self) -> f64 {
        let n = self.samples.len();
        if n < 2 {
            return 0.0;
        }
        let m = self.mean();
        (self.samples.iter().map(|s| (s - m).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    }
}

/// What the table says about the model.
struct ModelInfo {
    name: String,
    bytes: u64,
    params: u64,
}

fn describe(path: &Path, name: String) -> Result<ModelInfo> {
    let file = GgufFile::open(path)?;
    let (bytes, params) = file.tensors().iter().fold((0, 0), |(b, p), t| {
        let desc = t.desc();
        (
            b + desc.byte_size().unwrap_or(0) as u64,
            p + t.numel() as u64,
        )
    });
    Ok(ModelInfo {
        name,
        bytes,
        params,
    })
}

pub fn run(args: Args) -> Result<()> {
    if args.repetitions == 0 {
        bail!("-r must be at least 1");
    }
    if args.roofline {
        return roofline(&args.device.open()?, args.repetitions);
    }
    if args.n_prompt == 0 && args.n_gen == 0 {
        bail!("nothing to run: -p and -n are both 0");
    }
    if args.batch == 0 || args.batch > kiln::MAX_BATCH {
        bail!("-b must be 1 to {}", kiln::MAX_BATCH);
    }
    if args.lora_rank == Some(0) {
        bail!("--lora-rank must be at least 1");
    }
    let device = args.device.open()?;
    let options = ModelOptions {
        ctx: args.n_prompt.max(args.n_gen + 1),
        f16_prefill: args.device.f16_prefill,
        slots: args.batch,
    };
    let (mut model, info) = match args.synthetic {
        Some(spec) => load_synthetic(spec, &device, options)?,
        None => {
            let path = model_path(args.model.clone())?;
            let name = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into(),
            );
            let info = describe(&path, name)?;
            let model = Model::load(&path, &device, options)
                .with_context(|| format!("loading {}", path.display()))?;
            (model, info)
        }
    };
    apply_loras(&mut model, &args.lora)?;
    let mut lora_label = String::new();
    if let Some(rank) = args.lora_rank {
        let modules = &args.lora_modules.0;
        let adapter = synth::random_adapter(model.config(), "random", rank, modules, 1)?;
        model.add_adapter(adapter)?;
        model.apply_adapter("random", 1.0)?;
        let names: Vec<&str> = modules.iter().map(|m| m.hf_name()).collect();
        lora_label = format!(" +lora r{rank} {}", names.join(","));
    }
    if !args.lora.is_empty() {
        lora_label += &format!(" +{} lora", args.lora.len());
    }
    // Every slot uses what slot 0 has applied.
    let active = model.active_adapters();
    for slot in 1..args.batch {
        model.set_adapters_in(slot, &active)?;
    }
    let vocab = model.vocab_size() as u64;
    // Fixed pseudo-random ids: the same work on every run.
    let tokens: Vec<u32> = (0..args.n_prompt.max(1) as u64)
        .map(|i| ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) % vocab) as u32)
        .collect();

    let mut rows = Vec::new();
    if args.n_prompt > 0 {
        model.logits(&tokens[..args.n_prompt], 0)?;
        let mut samples = Vec::new();
        for _ in 0..args.repetitions {
            let start = Instant::now();
            model.logits(&tokens[..args.n_prompt], 0)?;
            samples.push(args.n_prompt as f64 / start.elapsed().as_secs_f64());
        }
        rows.push(Row {
            test: format!(
                "pp{}{}{lora_label}",
                args.n_prompt,
                if args.device.f16_prefill { " f16" } else { "" }
            ),
            samples,
        });
    }
    if args.n_gen > 0 && args.batch > 1 {
        let mut row = batched_decode(&mut model, &args, &tokens)?;
        row.test += &lora_label;
        rows.push(row);
    } else if args.n_gen > 0 {
        if args.greedy {
            model.greedy_in(0, &tokens[..1], 0)?;
        } else {
            model.logits(&tokens[..1], 0)?;
        }
        let mut samples = Vec::new();
        for _ in 0..args.repetitions {
            let start = Instant::now();
            for pos in 0..args.n_gen {
                let token = &tokens[pos % tokens.len()..][..1];
                if args.greedy {
                    model.greedy_in(0, token, pos)?;
                } else {
                    model.logits(token, pos)?;
                }
            }
            samples.push(args.n_gen as f64 / start.elapsed().as_secs_f64());
        }
        rows.push(Row {
            test: format!(
                "tg{}{}{lora_label}",
                args.n_gen,
                if args.greedy { " greedy" } else { "" }
            ),
            samples,
        });
    }
    print(&args, &info, &model.device_name(), &rows);
    if args.profile {
        if args.n_gen > 0 {
            // The GPU's time for a decode step alone, against the wall
            // time per token above: the difference is the host's share.
            let pos = args.n_gen - 1;
            let t = model.time_forward(&tokens[..1], pos, 32)?;
            println!();
            println!(
                "decode step at position {pos}: {:.1} µs on the device per step (32 back to back, no readback; wall {:.1} µs)",
                t.device_s.unwrap_or(f64::NAN) * 1e6,
                t.wall_s * 1e6
            );
        }
        if args.n_prompt > 0 {
            let times = model.profile(&tokens[..args.n_prompt], 0)?;
            print_profile(&format!("pp{}", args.n_prompt), &times);
        }
        if args.n_gen > 0 {
            let pos = args.n_gen - 1;
            let times = model.profile(&tokens[..1], pos)?;
            print_profile(&format!("tg step at position {pos}"), &times);
        }
    }
    Ok(())
}

/// The decode test over `-b` sequences: each slot gets one token, then
/// `-n` batched steps; tokens/second counts every sequence's tokens.
fn batched_decode(model: &mut Model, args: &Args, tokens: &[u32]) -> Result<Row> {
    let b = args.batch;
    for slot in 0..b {
        model.logits_in(slot, &tokens[slot % tokens.len()..][..1], 0)?;
    }
    let step = |model: &mut Model, i: usize| {
        let rows: Vec<kiln::BatchRow> = (0..b)
            .map(|slot| kiln::BatchRow {
                slot,
                token: tokens[(slot + i) % tokens.len()],
                pos: 1 + i,
            })
            .collect();
        model.decode_batch(&rows)
    };
    step(model, 0)?;
    let mut samples = Vec::new();
    for _ in 0..args.repetitions {
        let start = Instant::now();
        for i in 0..args.n_gen {
            step(model, i)?;
        }
        samples.push((b * args.n_gen) as f64 / start.elapsed().as_secs_f64());
    }
    Ok(Row {
        test: format!("tg{} x{b}", args.n_gen),
        samples,
    })
}

/// Times a one-op graph on `device`: seconds per run (best of `reps`
/// batches of 20 back-to-back runs, device timestamps where available).
fn time_op(
    device: &kiln::Device,
    op: impl Op + 'static,
    inputs: &[TensorDesc],
    reps: usize,
) -> Result<f64> {
    let (g, ids) = Graph::single_op(std::sync::Arc::new(op), inputs)?;
    let mut plan = device.executor().compile(&g)?;
    let data: Vec<CpuTensor> = inputs
        .iter()
        .map(CpuTensor::zeros)
        .collect::<Result<_, _>>()?;
    let feeds: Vec<_> = ids.iter().copied().zip(data.iter()).collect();
    plan.time(&feeds, 2)?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        best = best.min(plan.time(&feeds, 20)?.seconds());
    }
    Ok(best)
}

/// `--roofline`: the device's copy bandwidth and matmul peak.
fn roofline(device: &kiln::Device, reps: usize) -> Result<()> {
    // 256 MiB, or the largest binding the device allows.
    let (coop, binding) = match device {
        kiln::Device::Gpu(ctx) => (
            coop_available(&ctx.caps),
            ctx.caps.max_storage_binding_bytes,
        ),
        kiln::Device::Cpu => bail!("--roofline measures a GPU; the CPU executor has none"),
    };
    let n = (256u64 << 20).min(binding) as usize / 4;
    let input = TensorDesc::f32([n]);
    let copy = time_op(device, Copy { to: DType::F32 }, &[input], reps)?;
    let bytes = 2.0 * 4.0 * n as f64;
    println!("roofline of {}", device.name());
    println!(
        "  copy {} MiB f32:   {:.3} ms, {:.1} GB/s (read + write)",
        (n * 4) >> 20,
        copy * 1e3,
        bytes / copy / 1e9
    );
    let (dtype, variant, what) = if coop {
        (
            DType::F16,
            MatMulVariant::Coop,
            "f16 cooperative matrices, f32 accumulate",
        )
    } else {
        (DType::F32, MatMulVariant::Tiled, "tiled f32")
    };
    let m = 4096;
    let ab = TensorDesc::new(dtype, [m, m]);
    let op = MatMul::default().with_variant(variant);
    let mm = time_op(device, op, &[ab.clone(), ab], reps)?;
    let flops = 2.0 * (m as f64).powi(3);
    println!(
        "  matmul 4096^3:      {:.3} ms, {:.1} TFLOP/s ({what})",
        mm * 1e3,
        flops / mm / 1e12
    );
    Ok(())
}

/// Per-kernel totals of one profiled forward, largest first.
fn print_profile(what: &str, times: &[OpTime]) {
    let total: f64 = times.iter().map(|t| t.seconds).sum();
    let mut by_kernel: Vec<(String, usize, f64)> = Vec::new();
    for t in times {
        match by_kernel.iter_mut().find(|(k, ..)| *k == t.kernel) {
            Some((_, n, s)) => {
                *n += 1;
                *s += t.seconds;
            }
            None => by_kernel.push((t.kernel.clone(), 1, t.seconds)),
        }
    }
    by_kernel.sort_by(|a, b| b.2.total_cmp(&a.2));
    println!();
    println!(
        "profile of {what}: {} dispatches, {:.1} µs (one pass each)",
        times.len(),
        total * 1e6
    );
    println!("| kernel | calls | µs | share |");
    println!("| --- | ---: | ---: | ---: |");
    for (kernel, n, s) in by_kernel {
        println!(
            "| {kernel} | {n} | {:.1} | {:.1} % |",
            s * 1e6,
            100.0 * s / total.max(f64::MIN_POSITIVE)
        );
    }
}

/// Builds the synthetic model into a temporary file, loads it, and removes
/// the file (the loaded weights no longer need it).
fn load_synthetic(
    spec: SynthSpec,
    device: &kiln::Device,
    options: ModelOptions,
) -> Result<(Model, ModelInfo)> {
    let start = Instant::now();
    let loaded = synth::with_file(spec, 0, |path| -> Result<_> {
        let info = describe(path, format!("synth {spec}"))?;
        let model = Model::load(path, device, options)?;
        Ok((model, info))
    })
    .with_context(|| format!("building the synthetic model {spec}"));
    eprintln!("built {spec} in {:.1} s", start.elapsed().as_secs_f64());
    loaded
}

fn print(args: &Args, info: &ModelInfo, device: &str, rows: &[Row]) {
    match args.format {
        Format::Md => {
            println!("| model | size | params | device | test | t/s |");
            println!("| --- | ---: | ---: | --- | ---: | ---: |");
            for row in rows {
                println!(
                    "| {} | {:.2} MiB | {:.2} M | {} | {} | {:.2} ± {:.2} |",
                    info.name,
                    info.bytes as f64 / (1u64 << 20) as f64,
                    info.params as f64 / 1e6,
                    device,
                    row.test,
                    row.mean(),
                    row.sd()
                );
            }
        }
        Format::Json => {
            let out: Vec<_> = rows
                .iter()
                .map(|row| {
                    json!({
                        "model": info.name,
                        "size_bytes": info.bytes,
                        "params": info.params,
                        "device": device,
                        "test": row.test,
                        "n_prompt": args.n_prompt,
                        "n_gen": args.n_gen,
                        "repetitions": args.repetitions,
                        "avg_ts": row.mean(),
                        "stddev_ts": row.sd(),
                        "samples_ts": row.samples,
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(out));
        }
    }
}
