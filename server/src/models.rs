//! The models a server serves: each one's names, what `/api/show` and
//! `/v1/models` tell about it, its tokenizer and chat template (used on
//! the request's side, so prompts are prepared while the worker runs), and
//! its scheduler.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kiln::loaders::hub::Hub;
use kiln::loaders::{BuiltinTemplate, ChatTemplate, EncodeOptions, GgufFile, Message, Tokenizer};
use kiln::Model;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::scheduler::{Generation, Job, Scheduler, SchedulerOptions};

/// What the APIs report about a model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub arch: &'static str,
    /// Positions the server's KV cache holds (`--ctx`).
    pub context_length: usize,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    pub vocab_size: usize,
    pub file_size: u64,
    /// Seconds since the epoch the file was last written.
    pub modified: u64,
    /// Weights, counted from the GGUF's tensors.
    pub parameters: Option<u64>,
    /// The dtype holding most of the weights (`Q4_1`, `F16`, ...).
    pub quantization: Option<String>,
    /// `sha256:...` for catalog models (the pinned hash; never rehashed).
    pub digest: Option<String>,
    /// The model's own chat template, when it ships one.
    pub chat_template: Option<String>,
    pub device: String,
    /// LoRA adapters loaded on the model, by name (requests choose among
    /// them).
    pub adapters: Vec<String>,
}

impl ModelInfo {
    fn read(model: &Model, digest: Option<String>) -> ModelInfo {
        let path = model.path().to_path_buf();
        let config = model.config();
        let meta = std::fs::metadata(&path).ok();
        let modified = meta
            .as_ref()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let (parameters, quantization) = weight_summary(&path);
        ModelInfo {
            arch: config.arch.name(),
            context_length: model.context_length(),
            n_ctx_train: config.n_ctx_train,
            n_embd: config.n_embd,
            n_layer: config.n_layer,
            n_head: config.n_head,
            n_head_kv: config.n_head_kv,
            n_ff: config.n_ff,
            vocab_size: model.vocab_size(),
            file_size: meta.filter(|m| m.is_file()).map_or(0, |m| m.len()),
            modified,
            parameters,
            quantization,
            digest,
            chat_template: model.tokenizer().chat_template().map(str::to_string),
            device: model.device_name(),
            adapters: model
                .adapters()
                .list()
                .into_iter()
                .map(|a| a.name)
                .collect(),
            path,
        }
    }

    /// `135M`, `1.2B`: ollama's `parameter_size`.
    pub fn parameter_size(&self) -> String {
        match self.parameters {
            None => "unknown".to_string(),
            Some(n) if n >= 1_000_000_000 => format!("{:.1}B", n as f64 / 1e9),
            Some(n) => format!("{:.0}M", n as f64 / 1e6),
        }
    }
}

/// Parameter count and main dtype of a GGUF file (`None` for other
/// formats or a file that no longer opens: this is for display only).
fn weight_summary(path: &Path) -> (Option<u64>, Option<String>) {
    let Ok(file) = GgufFile::open(path) else {
        return (None, None);
    };
    let mut by_dtype: Vec<(kiln::DType, u64)> = Vec::new();
    for t in file.tensors() {
        let n = t.numel() as u64;
        match by_dtype.iter_mut().find(|(d, _)| *d == t.dtype) {
            Some(entry) => entry.1 += n,
            None => by_dtype.push((t.dtype, n)),
        }
    }
    let total = by_dtype.iter().map(|(_, n)| n).sum();
    // ollama writes quantization levels in capitals (`Q4_1`).
    let main = by_dtype
        .iter()
        .max_by_key(|(_, n)| *n)
        .map(|(d, _)| d.to_string().to_uppercase());
    (Some(total), main)
}

/// A model being served.
pub struct ServedModel {
    /// Its id in `/v1/models` and `/api/tags`.
    pub name: String,
    /// Other names requests may use (matched ignoring case).
    pub aliases: Vec<String>,
    pub info: ModelInfo,
    tokenizer: Arc<Tokenizer>,
    chat: Result<ChatTemplate, String>,
    scheduler: Scheduler,
}

impl ServedModel {
    /// Names the model (its catalog name when `hub`'s catalog has its file,
    /// else the file name without `.gguf`) and starts its worker.
    pub fn start(
        model: Model,
        hub: &Hub,
        options: SchedulerOptions,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<ServedModel> {
        let path = model.path();
        let file_name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let stem = file_name
            .strip_suffix(".gguf")
            .unwrap_or(&file_name)
            .to_string();
        let entry = hub.catalog().iter().find(|e| e.file_name == file_name);
        let (name, mut aliases, digest) = match entry {
            Some(e) => (
                e.name.clone(),
                e.aliases.clone(),
                Some(format!("sha256:{}", e.sha256)),
            ),
            None => (stem.clone(), Vec::new(), None),
        };
        aliases.extend([file_name, stem]);
        let mut seen = vec![name.to_lowercase()];
        aliases.retain(|a| {
            let key = a.to_lowercase();
            let new = !seen.contains(&key);
            seen.push(key);
            new
        });

        let info = ModelInfo::read(&model, digest);
        let tokenizer = model.tokenizer().clone();
        // The template `Model::render_chat` uses, built again here because
        // the worker owns the model: requests render their prompts on their
        // own threads while it generates.
        let chat = ChatTemplate::for_tokenizer(&tokenizer, BuiltinTemplate::ChatMl)
            .map_err(|e| e.to_string());
        let scheduler = Scheduler::start(model, name.clone(), options, metrics)?;
        Ok(ServedModel {
            name,
            aliases,
            info,
            tokenizer,
            chat,
            scheduler,
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// Token ids of a conversation through the chat template, ending with
    /// the assistant's turn. The template writes BOS itself; control-token
    /// text inside messages stays literal text (`ChatTemplate::encode`).
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<Vec<u32>, ApiError> {
        let template = self.chat.as_ref().map_err(|e| {
            ApiError::internal(format!("the model's chat template could not be used: {e}"))
        })?;
        template
            .encode(&self.tokenizer, messages, true)
            .map_err(|e| ApiError::bad_request(e.to_string()))
    }

    /// Token ids of plain text, with BOS where the model wants one.
    pub fn text_prompt(&self, text: &str) -> Result<Vec<u32>, ApiError> {
        self.encode(text, EncodeOptions::default())
    }

    /// Checks ids a request gave directly.
    pub fn check_ids(&self, ids: &[u32]) -> Result<(), ApiError> {
        let vocab = self.info.vocab_size;
        match ids.iter().find(|&&id| id as usize >= vocab) {
            Some(id) => Err(ApiError::bad_request(format!(
                "token id {id} is outside the vocabulary of {vocab}"
            ))),
            None => Ok(()),
        }
    }

    fn encode(&self, text: &str, options: EncodeOptions) -> Result<Vec<u32>, ApiError> {
        self.tokenizer
            .encode(text, options)
            .map_err(|e| ApiError::bad_request(format!("tokenizing the prompt: {e}")))
    }

    pub fn submit(&self, job: Job) -> Result<Generation, ApiError> {
        self.scheduler.submit(job)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
