//! `kiln serve [-m MODEL ...]`: serve models over HTTP with OpenAI- and
//! ollama-compatible APIs (the `kiln-server` crate) until SIGINT/SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use kiln::{Model, ModelOptions};
use kiln_loaders::hub::Hub;
use kiln_server::{Config, SchedulerOptions};

use crate::cmd::run::{model_path, DeviceArg};

/// Serve models over HTTP: OpenAI- and ollama-compatible APIs.
#[derive(clap::Args)]
pub struct Args {
    /// A model to serve: a .gguf file or a catalog name (repeatable; the
    /// first answers requests that name no model). Defaults to
    /// SmolLM2-135M-Instruct Q4_1, pulled if missing.
    #[arg(short, long = "model")]
    models: Vec<PathBuf>,
    /// Context length of each model (KV cache positions); 0 = min(model's, 4096).
    #[arg(long, default_value_t = 0)]
    ctx: usize,
    #[command(flatten)]
    device: DeviceArg,
    /// Address to listen on. Loopback by default: anything else exposes the
    /// models to the network (set --api-key).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, default_value_t = 11435)]
    port: u16,
    /// Requests served at once by continuous batching: their decode steps
    /// run as one batched forward, each with its own KV-cache slot of --ctx
    /// positions (the cache takes N times the memory).
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Requests that may wait beyond --parallel; more get 429 and Retry-After.
    #[arg(long, default_value_t = 16)]
    queue: usize,
    /// Require `Authorization: Bearer KEY` on every route but /, /health,
    /// /api/health and /api/version.
    #[arg(long, env = "KILN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Most tokens one request may generate; larger max_tokens are cut to it.
    #[arg(long, default_value_t = 4096)]
    max_tokens: usize,
    /// Seconds one request may take, queue wait included (504 after).
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 4 << 20)]
    body_limit: usize,
    /// Allow cross-origin requests from this origin (repeatable; `*` allows
    /// any). Off by default.
    #[arg(long = "cors")]
    cors: Vec<String>,
    /// Log lines as text, or as one JSON object each. RUST_LOG filters.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Load a LoRA adapter (a PEFT directory or a llama.cpp LoRA .gguf)
    /// on the first model under NAME (repeatable). Requests choose it by
    /// `"adapter": "NAME"` or the model name `MODEL+NAME`; others run the
    /// base model, in the same batches.
    #[arg(long = "lora", value_name = "NAME=PATH", value_parser = parse_named_lora)]
    lora: Vec<(String, PathBuf)>,
}

/// `NAME=PATH`.
fn parse_named_lora(arg: &str) -> Result<(String, PathBuf), String> {
    match arg.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), path.into()))
        }
        _ => Err(format!("{arg}: expected NAME=PATH")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

pub fn run(args: Args) -> Result<()> {
    init_logging(args.log_format);
    if args.parallel == 0 || args.parallel > kiln::MAX_BATCH {
        anyhow::bail!(
            "--parallel {} is out of range: 1 to {} sequences",
            args.parallel,
            kiln::MAX_BATCH
        );
    }
    let device = args.device.open()?;
    let options = ModelOptions {
        ctx: args.ctx,
        f16_prefill: args.device.f16_prefill,
        slots: args.parallel.max(1),
    };
    let wanted: Vec<Option<PathBuf>> = if args.models.is_empty() {
        vec![None]
    } else {
        args.models.into_iter().map(Some).collect()
    };
    let mut models = Vec::new();
    for given in wanted {
        let path = model_path(given)?;
        tracing::info!(path = %path.display(), "loading");
        let model = Model::load(&path, &device, options)
            .with_context(|| format!("loading {}", path.display()))?;
        models.push(model);
    }
    if let Some(first) = models.first_mut() {
        for (name, path) in &args.lora {
            let info = first
                .load_adapter(path, Some(name))
                .with_context(|| format!("loading the LoRA adapter {}", path.display()))?;
            tracing::info!(adapter = %info.name, rank = info.rank, targets = info.targets, "adapter loaded");
        }
    }
    if !args.host.is_loopback() && args.api_key.is_none() {
        tracing::warn!(host = %args.host, "listening beyond loopback without --api-key: anyone who reaches the port can use the models");
    }
    let config = Config {
        api_key: args.api_key,
        scheduler: SchedulerOptions {
            parallel: args.parallel,
            queue: args.queue,
        },
        max_tokens: args.max_tokens,
        body_limit: args.body_limit,
        request_timeout: Duration::from_secs(args.timeout),
        cors_origins: args.cors,
        hub: Hub::from_env(),
    };
    let addr = SocketAddr::new(args.host, args.port);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let app = kiln_server::router(config, models)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "listening");
        kiln_server::serve(listener, app, async {
            kiln_server::shutdown_signal().await;
            tracing::info!(
                "shutting down: finishing requests in flight (signal again to quit now)"
            );
            tokio::spawn(async {
                kiln_server::shutdown_signal().await;
                std::process::exit(130);
            });
        })
        .await
        .context("serving")
    })?;
    tracing::info!("stopped");
    Ok(())
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}
