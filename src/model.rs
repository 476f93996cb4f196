//! A loaded model: weights and KV cache resident on one device, tokenizer
//! and chat template, and the compiled forward plans (one per distinct
//! token count, compiled on first use and kept).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_engine::{Device, EngineError, Executor, OpTime, Plan};
use kiln_loaders::{
    BuiltinTemplate, ChatError, ChatTemplate, GgufFile, LoadError, Message, ModelConfig,
    SafetensorsModel, Tokenizer, TokenizerError,
};
use kiln_models::llama::names;
use kiln_models::{
    Caches, ForwardGraph, ForwardInputs, GraphOptions, LlamaConfig, LlamaWeights, LogitsMode,
    ModelError, TensorNames, SPLIT_CHUNK,
};

use crate::adapters::{AdapterInfo, AdapterRegistry, AdapterSet};
use crate::sampler::SamplerError;

/// Everything that can go wrong loading a model or generating with it.
/// Large sources are boxed so `Result<_, Error>` stays small on the
/// decode path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Load(Box<LoadError>),
    #[error("{path}: {source}")]
    Model {
        path: String,
        source: Box<ModelError>,
    },
    #[error(transparent)]
    Forward(Box<ModelError>),
    #[error(transparent)]
    Engine(Box<EngineError>),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
    #[error("chat template: {0}")]
    Chat(#[from] ChatError),
    #[error("the model's chat template could not be used: {0}")]
    NoChatTemplate(String),
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error(
        "{needed} positions needed ({what}) but the context holds {ctx}; raise --ctx or shorten the request"
    )]
    ContextOverflow {
        needed: usize,
        ctx: usize,
        what: String,
    },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("no tokens to run")]
    Empty,
    #[error("context length {ctx} is invalid: {why}")]
    BadContext { ctx: usize, why: &'static str },
    #[error("the forward pass returned {got} logits, expected {expected}")]
    BadOutput { got: usize, expected: usize },
    #[error("could not start the generation thread: {0}")]
    Worker(String),
    #[error("bad batch: {0}")]
    BadBatch(String),
    #[error(transparent)]
    Lora(Box<kiln_loaders::lora::LoraError>),
    #[error("no adapter named '{name}' is loaded")]
    UnknownAdapter { name: String },
    #[error("an adapter named '{name}' is already loaded")]
    AdapterExists { name: String },
    #[error("adapter '{name}' is in use (cache slot {slot}); remove it there first")]
    AdapterInUse { name: String, slot: usize },
    #[error("adapter '{name}': scale {scale} is not a finite number")]
    BadAdapterScale { name: String, scale: f32 },
    #[error(
        "adapter name '{name}' is invalid: use 1 to 128 letters, digits, '-', '_', '.' or ':'"
    )]
    BadAdapterName { name: String },
}

impl From<LoadError> for Error {
    fn from(e: LoadError) -> Error {
        Error::Load(Box::new(e))
    }
}

impl From<ModelError> for Error {
    fn from(e: ModelError) -> Error {
        Error::Forward(Box::new(e))
    }
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Error {
        Error::Engine(Box::new(e))
    }
}

/// Load-time choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ModelOptions {
    /// Positions the KV cache holds. 0 picks the smaller of the model's
    /// trained context and [`DEFAULT_CTX`].
    pub ctx: usize,
    /// Prompt processing through f16 tensor cores (cooperative matrices)
    /// where the GPU has them: ~3x faster prefill on an H200, with x and
    /// the weights rounded to f16 in those products (logits move by ~1e-3;
    /// llama.cpp rounds x to 8 bits). Off: f32 everywhere.
    pub f16_prefill: bool,
    /// Sequences the KV cache holds at once, each in its own slot of
    /// `ctx` positions (continuous batching: [`Model::decode_batch`]);
    /// 0 means 1. The cache takes `slots` times the memory.
    pub slots: usize,
}

/// One sequence's row in a batched decode step: the token to run, in the
/// sequence whose cache is `slot`, at position `pos` of that sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRow {
    pub slot: usize,
    pub token: u32,
    pub pos: usize,
}

/// Most rows one [`Model::decode_batch`] step runs.
pub const MAX_BATCH: usize = 256;

/// The context when none is asked for: enough for chat, small enough that
/// the cache of a large model still fits a laptop GPU.
pub const DEFAULT_CTX: usize = 4096;

/// What the generator needs from a model; [`Model`] is the real one, tests
/// may bring their own.
pub trait LanguageModel {
    fn vocab_size(&self) -> usize;
    /// Positions the KV cache holds.
    fn context_length(&self) -> usize;
    /// Runs `tokens` at positions `pos..`, appending them to the cache, and
    /// returns the last position's logits (`vocab_size` values).
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, Error>;
    /// [`LanguageModel::forward`] with the greedy pick made by the model
    /// itself: the argmax id of the last position's logits and its
    /// log-probability. `None` when the model cannot (the caller then
    /// samples from [`LanguageModel::forward`]'s logits).
    fn forward_greedy(&mut self, tokens: &[u32], pos: usize) -> Result<Option<(u32, f32)>, Error> {
        let _ = (tokens, pos);
        Ok(None)
    }
    /// Makes `set` the LoRA adapters later forwards use. Models without
    /// adapters accept only the empty set.
    fn set_adapters(&mut self, set: &AdapterSet) -> Result<(), Error> {
        match set.iter().next() {
            None => Ok(()),
            Some((name, _)) => Err(Error::UnknownAdapter {
                name: name.to_string(),
            }),
        }
    }
}

pub struct Model {
    path: PathBuf,
    config: LlamaConfig,
    weights: LlamaWeights,
    caches: Caches,
    executor: Box<dyn Executor>,
    plans: HashMap<PlanKey, Compiled>,
    tokenizer: Arc<Tokenizer>,
    chat: Result<ChatTemplate, String>,
    f16_prefill: bool,
    device: Device,
    adapters: AdapterRegistry,
}

/// What a compiled forward is for: its token count, which logits it
/// returns, whether attention is split over key chunks, and whether its
/// rows are independent sequences (a batched decode step).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    n: usize,
    mode: LogitsMode,
    split: bool,
    batched: bool,
    /// The graph ends in the greedy pick (id and log-probability) instead
    /// of returning logits.
    greedy: bool,
    /// The graph carries the LoRA side paths of the loaded adapters.
    lora: bool,
}

struct Compiled {
    graph: ForwardGraph,
    plan: Box<dyn Plan>,
}

/// A model on disk: its hyperparameters, tokenizer, and how to get its
/// weights onto a device.
enum Source {
    Gguf(GgufFile),
    /// An HF checkpoint; `tied` is `config.json`'s `tie_word_embeddings`.
    Hf {
        weights: SafetensorsModel,
        tied: bool,
    },
}

impl Source {
    /// Opens `path`: an HF checkpoint when [`hf_dir`] finds one, else GGUF.
    fn open(path: &Path) -> Result<(Source, LlamaConfig, Tokenizer), Error> {
        let in_file = |source| Error::Model {
            path: path.display().to_string(),
            source: Box::new(source),
        };
        if let Some(dir) = hf_dir(path) {
            let hf = ModelConfig::open(dir.join("config.json"))?;
            let config = LlamaConfig::from_model_config(&hf).map_err(in_file)?;
            let tokenizer = Tokenizer::from_json_file(dir.join("tokenizer.json"))?;
            let weights = SafetensorsModel::open(dir)?;
            let tied = hf.tie_word_embeddings;
            return Ok((Source::Hf { weights, tied }, config, tokenizer));
        }
        let file = GgufFile::open(path)?;
        let config = LlamaConfig::from_metadata(file.metadata()).map_err(in_file)?;
        let tokenizer = Tokenizer::from_gguf(file.metadata())?;
        Ok((Source::Gguf(file), config, tokenizer))
    }

    /// Checks the weights against `config` and uploads them.
    fn weights(&self, config: &LlamaConfig, device: &Device) -> Result<LlamaWeights, Error> {
        match self {
            Source::Gguf(file) => Ok(LlamaWeights::load(&file.weights(), config, device)?),
            Source::Hf { weights, tied } => {
                let map = weights.weights()?;
                let naming = TensorNames::HuggingFace;
                // HF ties by a flag, GGUF by absence: no lm_head without the
                // flag is a missing tensor, not a tie.
                let lm_head = naming.file_name(names::OUTPUT);
                if !tied && !map.contains(&lm_head) {
                    return Err(ModelError::MissingTensor { name: lm_head }.into());
                }
                Ok(LlamaWeights::load_named(&map, config, naming, device)?)
            }
        }
    }
}

/// The checkpoint directory when `path` is an HF checkpoint: a directory
/// (holding `config.json`, `tokenizer.json` and the safetensors), or a
/// `.safetensors` or `.json` file inside one. GGUF otherwise.
fn hf_dir(path: &Path) -> Option<&Path> {
    if path.is_dir() {
        return Some(path);
    }
    let ext = path.extension()?;
    if ext != "safetensors" && ext != "json" {
        return None;
    }
    Some(match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    })
}

impl Model {
    /// Opens a model, checks and uploads its weights to `device`, and
    /// allocates the KV cache. `path` is a GGUF file, or an HF checkpoint:
    /// a directory (or a `.safetensors`/`.json` file in it) with
    /// `config.json`, the weights in `model.safetensors` or in the shards
    /// `model.safetensors.index.json` lists (F32, F16 or BF16; F32 stays
    /// F32, BF16 matrices become F16, exact within F16's range),
    /// `tokenizer.json`, and optionally
    /// `tokenizer_config.json` (special tokens, chat template).
    ///
    /// HF keeps LLaMA's q and k rows in the order its `rotate_half` rope
    /// pairs them, where GGUF files hold them permuted for normal rope
    /// (llama.cpp's converter does it). kiln keeps the HF order and runs
    /// such models with neox rope, which pairs the same dimensions: one
    /// graph, no reshuffling at load (`LlamaConfig::from_model_config`).
    pub fn load(
        path: impl AsRef<Path>,
        device: &Device,
        options: ModelOptions,
    ) -> Result<Model, Error> {
        let path = path.as_ref();
        // A model error while loading (`From<ModelError>` gives `Forward`)
        // names the file.
        let in_file = |e: Error| match e {
            Error::Forward(source) => Error::Model {
                path: path.display().to_string(),
                source,
            },
            other => other,
        };
        let (source, config, tokenizer) = Source::open(path)?;
        let ctx = match options.ctx {
            0 => config.n_ctx_train.clamp(1, DEFAULT_CTX),
            n => n,
        };
        if i32::try_from(ctx).is_err() {
            return Err(Error::BadContext {
                ctx,
                why: "positions are i32 on the device",
            });
        }
        let weights = source.weights(&config, device).map_err(in_file)?;
        let slots = options.slots.max(1);
        let caches = Caches::new(&config, ctx, slots, device).map_err(|e| in_file(e.into()))?;
        let chat = ChatTemplate::for_tokenizer(&tokenizer, BuiltinTemplate::ChatMl)
            .map_err(|e| e.to_string());
        Ok(Model {
            path: path.to_path_buf(),
            config,
            weights,
            caches,
            executor: device.executor(),
            plans: HashMap::new(),
            tokenizer: Arc::new(tokenizer),
            chat,
            f16_prefill: options.f16_prefill,
            device: device.clone(),
            adapters: AdapterRegistry::new(slots),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// Where the forward runs, e.g. `cpu (rayon, 2 threads)`.
    pub fn device_name(&self) -> String {
        self.executor.device_name()
    }

    /// The model's chat template (ChatML when it ships none), or why it
    /// cannot be used.
    pub fn chat_template(&self) -> Result<&ChatTemplate, Error> {
        self.chat
            .as_ref()
            .map_err(|e| Error::NoChatTemplate(e.clone()))
    }

    /// Renders chat messages with the model's template (ChatML when it has
    /// none), ending with the assistant's turn when `add_generation_prompt`.
    pub fn render_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, Error> {
        Ok(self
            .chat_template()?
            .render(messages, add_generation_prompt)?)
    }

    /// Last-position logits after running `tokens` at positions `pos..`.
    /// The cache keeps their keys and values, so the next call continues
    /// from `pos + tokens.len()`. The sequence is the one in slot 0.
    pub fn logits(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, Error> {
        self.run(0, tokens, pos, LogitsMode::Last)
    }

    /// [`Model::logits`] for the sequence in cache slot `slot`.
    pub fn logits_in(
        &mut self,
        slot: usize,
        tokens: &[u32],
        pos: usize,
    ) -> Result<Vec<f32>, Error> {
        self.run(slot, tokens, pos, LogitsMode::Last)
    }

    /// Logits for every position, `tokens.len() * vocab_size` values, row
    /// by row (perplexity).
    pub fn logits_all(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, Error> {
        self.run(0, tokens, pos, LogitsMode::All)
    }

    /// The greedy pick after running `tokens` at `pos..` in `slot`: the
    /// argmax id of the last position's logits (lowest id on ties) and its
    /// log-probability, chosen on the device, so a step reads back two
    /// numbers instead of the vocabulary's logits.
    pub fn greedy_in(
        &mut self,
        slot: usize,
        tokens: &[u32],
        pos: usize,
    ) -> Result<(u32, f32), Error> {
        let (compiled, inputs) = self.prepare(slot, tokens, pos, LogitsMode::Last, true)?;
        let out = compiled.plan.run(&compiled.graph.feeds(&inputs))?;
        let bad = |got| Error::BadOutput { got, expected: 2 };
        let [id, logprob] = out.as_slice() else {
            return Err(bad(out.len()));
        };
        let id = id.to_i32().and_then(|v| v.first().copied());
        let logprob = logprob
            .to_f32()
            .map_err(EngineError::from)?
            .first()
            .copied();
        match (id.and_then(|id| u32::try_from(id).ok()), logprob) {
            (Some(id), Some(lp)) => Ok((id, lp)),
            _ => Err(bad(1)),
        }
    }

    /// Sequences the cache holds at once ([`ModelOptions::slots`]).
    pub fn slots(&self) -> usize {
        self.caches.slots
    }

    /// One decode step for several sequences at once: each row runs its
    /// token in its own slot at its own position, all through one forward
    /// (the products batched, attention per row over its own slot).
    /// Returns `rows.len() * vocab_size` logits, row by row. Each slot may
    /// appear once.
    pub fn decode_batch(&mut self, rows: &[BatchRow]) -> Result<Vec<f32>, Error> {
        self.check_batch(rows)?;
        // Batches run padded to a few sizes, so a handful of plans serve
        // every batch; padding rows write nothing and see no key.
        let n = batch_size(rows.len());
        let split = rows.iter().any(|r| r.pos + 1 > SPLIT_CHUNK);
        let scales: Vec<Option<Vec<f32>>> =
            rows.iter().map(|r| self.adapters.scales(r.slot)).collect();
        let lora = scales.iter().any(Option::is_some);
        let key = PlanKey {
            n,
            mode: LogitsMode::All,
            split,
            batched: true,
            greedy: false,
            lora,
        };
        let ctx = self.caches.ctx;
        let padded: Vec<_> = rows
            .iter()
            .map(|r| Some((r.slot * ctx, r.token, r.pos)))
            .chain(std::iter::repeat(None))
            .take(n)
            .collect();
        let mut inputs = ForwardInputs::batch(&padded)?;
        if lora {
            let zeros = vec![0f32; self.adapters.rank()];
            let rows = scales
                .into_iter()
                .map(|s| s.unwrap_or_else(|| zeros.clone()))
                .chain(std::iter::repeat(zeros.clone()))
                .take(n)
                .collect();
            inputs = inputs.with_lora_scales(rows)?;
        }
        let compiled = self.compiled(key)?;
        let out = compiled.plan.run(&compiled.graph.feeds(&inputs))?;
        let mut logits = read_logits(out, n * self.vocab_size())?;
        logits.truncate(rows.len() * self.vocab_size());
        Ok(logits)
    }

    /// Compiles ahead the decode plans a server steps through: batches of
    /// every padded size up to `max_batch` rows, with one-pass and split
    /// attention, so no request waits on a compile mid-stream.
    pub fn warm_up(&mut self, max_batch: usize) -> Result<(), Error> {
        let mut n = 1;
        let loras: &[bool] = if self.adapters.is_empty() {
            &[false]
        } else {
            &[false, true]
        };
        loop {
            for split in [false, true] {
                for &lora in loras {
                    let key = PlanKey {
                        n: batch_size(n),
                        mode: LogitsMode::All,
                        split,
                        batched: true,
                        greedy: false,
                        lora,
                    };
                    self.compiled(key)?;
                }
            }
            if batch_size(n) >= max_batch.min(MAX_BATCH) {
                return Ok(());
            }
            n = batch_size(n) + 1;
        }
    }

    /// Device time of every dispatch of one forward over `tokens` at
    /// `pos` (last-position logits), in graph order (GPU only).
    pub fn profile(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<OpTime>, Error> {
        let (compiled, inputs) = self.prepare(0, tokens, pos, LogitsMode::Last, false)?;
        Ok(compiled.plan.profile(&compiled.graph.feeds(&inputs))?)
    }

    /// Device time of one forward over `tokens` at `pos` (last-position
    /// logits), averaged over `iters` back-to-back runs in one submission
    /// with no readback: the GPU's share of a step, without the host's
    /// encoding, submission and readback.
    pub fn time_forward(
        &mut self,
        tokens: &[u32],
        pos: usize,
        iters: u32,
    ) -> Result<kiln_engine::Timing, Error> {
        let (compiled, inputs) = self.prepare(0, tokens, pos, LogitsMode::Last, false)?;
        Ok(compiled.plan.time(&compiled.graph.feeds(&inputs), iters)?)
    }

    /// A forward over `tokens` at `pos` in `slot`, checked: its plan and
    /// its inputs.
    fn prepare(
        &mut self,
        slot: usize,
        tokens: &[u32],
        pos: usize,
        mode: LogitsMode,
        greedy: bool,
    ) -> Result<(&mut Compiled, ForwardInputs), Error> {
        self.check(slot, tokens, pos)?;
        let start = slot * self.caches.ctx;
        let mut inputs = ForwardInputs::new(tokens, start, pos)?;
        let scales = self.adapters.scales(slot);
        let lora = scales.is_some();
        if let Some(row) = scales {
            inputs = inputs.with_lora_scales(vec![row; tokens.len()])?;
        }
        // Steps that reach past one chunk of keys use the split attention,
        // which stays parallel at any length; shorter ones the one-pass
        // kernel.
        let key = PlanKey {
            n: tokens.len(),
            mode,
            split: pos + tokens.len() > SPLIT_CHUNK,
            batched: false,
            greedy,
            lora,
        };
        Ok((self.compiled(key)?, inputs))
    }

    /// The plan for `key`, compiled on first use.
    fn compiled(&mut self, key: PlanKey) -> Result<&mut Compiled, Error> {
        if !self.plans.contains_key(&key) {
            let (c, w, k) = (&self.config, &self.weights, &self.caches);
            let options = GraphOptions {
                split_attention: key.split,
                f16_prefill: self.f16_prefill,
                batched: key.batched,
                greedy: key.greedy,
            };
            let lora = if key.lora {
                self.adapters.stack()
            } else {
                None
            };
            let graph = ForwardGraph::build_lora(c, w, k, key.n, key.mode, options, lora)?;
            let plan = self.executor.compile(&graph.graph)?;
            self.plans.insert(key, Compiled { graph, plan });
        }
        self.plans.get_mut(&key).ok_or(Error::Empty)
    }

    fn run(
        &mut self,
        slot: usize,
        tokens: &[u32],
        pos: usize,
        mode: LogitsMode,
    ) -> Result<Vec<f32>, Error> {
        let (compiled, inputs) = self.prepare(slot, tokens, pos, mode, false)?;
        let out = compiled.plan.run(&compiled.graph.feeds(&inputs))?;
        let rows = if mode == LogitsMode::Last {
            1
        } else {
            tokens.len()
        };
        read_logits(out, rows * self.vocab_size())
    }

    /// Ids in the vocabulary, an existing slot and positions within it.
    fn check(&self, slot: usize, tokens: &[u32], pos: usize) -> Result<(), Error> {
        if tokens.is_empty() {
            return Err(Error::Empty);
        }
        if slot >= self.caches.slots {
            return Err(Error::BadBatch(format!(
                "slot {slot} does not exist: the cache has {} slot(s)",
                self.caches.slots
            )));
        }
        let vocab = self.vocab_size();
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::BadToken { id, vocab });
        }
        let needed = pos.saturating_add(tokens.len());
        if needed > self.caches.ctx {
            return Err(Error::ContextOverflow {
                needed,
                ctx: self.caches.ctx,
                what: format!("{} tokens at position {pos}", tokens.len()),
            });
        }
        Ok(())
    }

    /// Every row as [`Model::check`] wants it, at most [`MAX_BATCH`] rows,
    /// and no slot twice (two rows would write the same cache row).
    fn check_batch(&self, rows: &[BatchRow]) -> Result<(), Error> {
        if rows.is_empty() {
            return Err(Error::Empty);
        }
        if rows.len() > MAX_BATCH {
            return Err(Error::BadBatch(format!(
                "{} rows; at most {MAX_BATCH} run in one step",
                rows.len()
            )));
        }
        let mut seen = vec![false; self.caches.slots];
        for r in rows {
            self.check(r.slot, &[r.token], r.pos)?;
            if std::mem::replace(&mut seen[r.slot], true) {
                return Err(Error::BadBatch(format!(
                    "slot {} appears twice in one step",
                    r.slot
                )));
            }
        }
        Ok(())
    }
}

/// The padded size a batch of `n` rows runs at: a power of two up to 64,
/// then multiples of 64.
fn batch_size(n: usize) -> usize {
    if n <= 64 {
        n.next_power_of_two()
    } else {
        n.div_ceil(64) * 64
    }
}

/// The logits a plan returned, `expected` values.
fn read_logits(mut out: Vec<kiln_kernels::CpuTensor>, expected: usize) -> Result<Vec<f32>, Error> {
    let logits = out
        .pop()
        .map(|t| t.to_f32().map(|v| v.into_owned()))
        .transpose()
        .map_err(EngineError::from)?;
    match logits {
        Some(v) if v.len() == expected => Ok(v),
        other => Err(Error::BadOutput {
            got: other.map_or(0, |v| v.len()),
            expected,
        }),
    }
}

impl LanguageModel for Model {
    fn vocab_size(&self) -> usize {
        self.weights.vocab_size()
    }

    fn context_length(&self) -> usize {
        self.caches.ctx
    }

    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, Error> {
        self.logits(tokens, pos)
    }

    fn forward_greedy(&mut self, tokens: &[u32], pos: usize) -> Result<Option<(u32, f32)>, Error> {
        self.greedy_in(0, tokens, pos).map(Some)
    }

    fn set_adapters(&mut self, set: &AdapterSet) -> Result<(), Error> {
        Model::set_adapters(self, set)
    }
}

impl Model {
    pub fn vocab_size(&self) -> usize {
        self.weights.vocab_size()
    }

    /// Positions the KV cache holds.
    pub fn context_length(&self) -> usize {
        self.caches.ctx
    }
}

/// LoRA adapters ([`crate::adapters`]): loaded by name, kept on the device,
/// and chosen per cache slot. The single-sequence API (`logits`,
/// `generate`) runs slot 0, so `apply_adapter`, `remove_adapter`,
/// `swap_adapter` and `set_adapters` act there; the `_in` forms take a slot.
impl Model {
    /// Loads the adapter at `path` (a PEFT directory or a llama.cpp LoRA
    /// GGUF) under `name` (the directory or file name when `None`), checks
    /// it against this model and stacks it on the device. It is not
    /// applied yet.
    pub fn load_adapter(
        &mut self,
        path: impl AsRef<Path>,
        name: Option<&str>,
    ) -> Result<AdapterInfo, Error> {
        let adapter = AdapterRegistry::open(path.as_ref(), name)?;
        self.add_adapter(adapter)
    }

    /// [`Model::load_adapter`] for an adapter already in memory.
    pub fn add_adapter(
        &mut self,
        adapter: kiln_loaders::lora::LoraAdapter,
    ) -> Result<AdapterInfo, Error> {
        let info = self.adapters.load(adapter, &self.config, &self.device)?;
        self.plans.retain(|k, _| !k.lora);
        Ok(info)
    }

    /// Unloads `name` from the device; refused while a slot uses it.
    pub fn unload_adapter(&mut self, name: &str) -> Result<(), Error> {
        self.adapters.unload(name, &self.config, &self.device)?;
        self.plans.retain(|k, _| !k.lora);
        Ok(())
    }

    /// The loaded adapters, in load order.
    pub fn adapters(&self) -> &AdapterRegistry {
        &self.adapters
    }

    /// Makes `set` slot 0's adapters (empty: the base model).
    pub fn set_adapters(&mut self, set: &AdapterSet) -> Result<(), Error> {
        self.adapters.set(0, set)
    }

    /// Makes `set` the adapters of the sequence in cache slot `slot`.
    pub fn set_adapters_in(&mut self, slot: usize, set: &AdapterSet) -> Result<(), Error> {
        self.adapters.set(slot, set)
    }

    /// The adapters slot 0 uses.
    pub fn active_adapters(&self) -> AdapterSet {
        self.adapters.active(0)
    }

    /// The adapters slot `slot` uses.
    pub fn active_adapters_in(&self, slot: usize) -> AdapterSet {
        self.adapters.active(slot)
    }

    /// Applies loaded adapter `name` at `scale` in slot 0, beside any
    /// already applied (their updates add).
    pub fn apply_adapter(&mut self, name: &str, scale: f32) -> Result<(), Error> {
        let set = self.active_adapters().with(name, scale);
        self.set_adapters(&set)
    }

    /// Stops applying `name` in slot 0 (it stays loaded); whether it was
    /// applied.
    pub fn remove_adapter(&mut self, name: &str) -> Result<bool, Error> {
        let mut set = self.active_adapters();
        let was = set.remove(name);
        self.set_adapters(&set)?;
        Ok(was)
    }

    /// Replaces applied adapter `from` with loaded adapter `to` in slot 0,
    /// at `from`'s scale.
    pub fn swap_adapter(&mut self, from: &str, to: &str) -> Result<(), Error> {
        let set = self.active_adapters();
        let Some(scale) = set.iter().find(|(n, _)| *n == from).map(|(_, s)| s) else {
            return Err(Error::UnknownAdapter {
                name: from.to_string(),
            });
        };
        let swapped = set
            .iter()
            .map(|(n, s)| if n == from { (to, scale) } else { (n, s) })
            .collect();
        self.set_adapters(&swapped)
    }
}
