//! The LLaMA forward graph for T tokens at positions pos..pos+T, writing
//! their keys and values into resident caches. One graph per T: compiled
//! once, it serves every step with that many tokens (the positions are
//! inputs). Every node is named after llama.cpp's intermediates
//! (`blk.{i}.attn_norm`, ...) so a debug run can dump and compare them.

use kiln_engine::{Device, DeviceTensor, Graph, TensorId};
use kiln_kernels::argmax::ArgMax;
use kiln_kernels::attention::{Attention, AttnConfig};
pub use kiln_kernels::attention_split::CHUNK as SPLIT_CHUNK;
use kiln_kernels::attention_split::{AttentionCombine, AttentionPartials};
use kiln_kernels::elementwise::{Add, Mul, Silu};
use kiln_kernels::flash_attn::FlashAttention;
use kiln_kernels::get_rows::GetRows;
use kiln_kernels::kv_append::KvAppend;
use kiln_kernels::qmatmul::{QMatMul, QMatMulVariant};
use kiln_kernels::qmatvec::{Heads, Prologue, QMatVec};
use kiln_kernels::rms_norm::RmsNorm;
use kiln_kernels::rope::{Rope, RopeMode};
use kiln_kernels::softmax::MaxLogProb;
use kiln_kernels::{CpuTensor, DType, TensorDesc};

use crate::error::ModelError;
use crate::llama::config::LlamaConfig;
use crate::llama::lora::LoraStack;
use crate::llama::weights::LlamaWeights;
use kiln_loaders::lora::LoraModule;

/// The key and value caches, one pair per layer, resident on the device
/// for the whole session: `[slots * ctx, n_head_kv, head_dim]` F32 each.
/// Sequence `s` owns rows `s * ctx .. (s + 1) * ctx` (its slot); the
/// kernels see one cache and per-query key ranges.
#[derive(Clone, Debug)]
pub struct Caches {
    /// Positions each slot holds.
    pub ctx: usize,
    /// Sequences the cache holds at once.
    pub slots: usize,
    pub k: Vec<DeviceTensor>,
    pub v: Vec<DeviceTensor>,
}

impl Caches {
    /// Zeroed caches for `slots` sequences of `ctx` positions. An absurd
    /// size is an error, not an abort: the host copy is allocated fallibly
    /// (with Linux's default overcommit, a request beyond RAM + swap fails
    /// there).
    pub fn new(
        config: &LlamaConfig,
        ctx: usize,
        slots: usize,
        device: &Device,
    ) -> Result<Caches, ModelError> {
        let rows = ctx.saturating_mul(slots);
        let shape = [rows, config.n_head_kv, config.head_dim];
        let too_big = || ModelError::Alloc {
            what: format!(
                "a KV cache of {slots} × {ctx} positions ({} layers × 2 × {shape:?} F32)",
                config.n_layer
            ),
            bytes: 8 * config.n_layer as u128 * shape.iter().map(|&d| d as u128).product::<u128>(),
        };
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|n| n.checked_mul(4).is_some())
            .ok_or_else(too_big)?;
        let mut values = Vec::new();
        values.try_reserve_exact(numel).map_err(|_| too_big())?;
        values.resize(numel, 0f32);
        let zeros =
            CpuTensor::from_f32(shape, values).map_err(|source| ModelError::TensorData {
                name: "kv cache".into(),
                desc: TensorDesc::f32(shape),
                source,
            })?;
        let upload = |i: usize, which: &str| {
            device.upload(&zeros).map_err(|source| ModelError::Upload {
                name: format!("cache_{which}.{i}"),
                source,
            })
        };
        let k = (0..config.n_layer)
            .map(|i| upload(i, "k"))
            .collect::<Result<_, _>>()?;
        let v = (0..config.n_layer)
            .map(|i| upload(i, "v"))
            .collect::<Result<_, _>>()?;
        Ok(Caches { ctx, slots, k, v })
    }

    /// Rows of each cache tensor: every slot's positions.
    pub fn rows(&self) -> usize {
        self.ctx * self.slots
    }
}

/// Most rows a forward runs through the fused matvecs (groups of up to
/// `kiln_kernels::qmatvec::MAX_MR` rows per workgroup, each group reading
/// the weights once) instead of tiled matmuls, for a small model. Past 8
/// rows the matvecs read the weights again per group, which pays only
/// while the weights are small: on an H200, a 21-token SmolLM2 prompt took
/// 13.5 ms through the tiles (a few workgroups per product, each walking
/// all of K) and 4.6 ms through the matvecs, and 16 sequences decoded
/// 2.4x faster; at 7B, 64 rows through the matvecs ran 5x slower than
/// the tiles.
pub const FUSED_ROWS: usize = 64;

/// Weights per layer (parameters) up to which a model counts as small for
/// [`FUSED_ROWS`]: SmolLM2-135M has 3.5 M, a 1B LLaMA 60 M.
const SMALL_LAYER: usize = 16 << 20;

/// The most rows `config`'s forward runs through the fused matvecs:
/// [`FUSED_ROWS`] for a small model, one workgroup's worth otherwise.
pub fn fused_rows(config: &LlamaConfig) -> usize {
    let kv = config.n_head_kv * config.head_dim;
    let attn = config.n_embd * (2 * config.q_dim() + 2 * kv);
    let ffn = 3 * config.n_embd * config.n_ff;
    if attn + ffn <= SMALL_LAYER {
        FUSED_ROWS
    } else {
        kiln_kernels::qmatvec::MAX_MR as usize
    }
}

/// Choices a forward graph leaves open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphOptions {
    /// Decode attention split over key chunks of [`SPLIT_CHUNK`] (parallel
    /// at any length, one dispatch more), or one workgroup per head (best
    /// while every query sees at most one chunk). `Model` picks per step.
    pub split_attention: bool,
    /// Prefill products through f16 cooperative matrices where the device
    /// has them (x and W rounded to f16); f32 tiles otherwise.
    pub f16_prefill: bool,
    /// The T rows are T independent sequences, one token each (a batched
    /// decode step): each row reads and writes its own cache slot, and
    /// attention runs per row at any T.
    pub batched: bool,
    /// End in the greedy pick instead of the logits: the graph's outputs
    /// are each row's argmax id (I32 `[rows]`) and its log-probability
    /// (F32 `[rows]`), so a step reads back two numbers per row.
    pub greedy: bool,
}

/// Which positions' logits a forward returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogitsMode {
    /// The last position only, `[1, vocab]` (generation).
    Last,
    /// Every position, `[T, vocab]` (perplexity).
    All,
}

/// A built forward graph and the handles to feed it.
#[derive(Debug)]
pub struct ForwardGraph {
    pub graph: Graph,
    /// I32 `[T]`: token ids.
    pub tokens: TensorId,
    /// I32 `[T]`: each token's position in its sequence (rope).
    pub positions: TensorId,
    /// I32 `[1, 2]`, or `[T, 2]` when batched: (first cache row of the
    /// sequence, cache row of its first token here), which rows the new
    /// keys land on and which keys each query sees.
    pub seq: TensorId,
    /// F32 `[1, vocab]` or `[T, vocab]`.
    pub logits: TensorId,
    /// F32 `[T, R]` when built with LoRA adapters: each row's multiplier
    /// per stacked rank (`StackLayout::scales`).
    pub lora_scales: Option<TensorId>,
    pub n_tokens: usize,
}

/// The inputs of a forward.
pub struct ForwardInputs {
    pub tokens: CpuTensor,
    pub positions: CpuTensor,
    pub seq: CpuTensor,
    /// F32 `[T, R]`, for a graph built with LoRA adapters.
    pub lora_scales: Option<CpuTensor>,
}

fn i32_tensor(values: &[i32]) -> Result<CpuTensor, ModelError> {
    let desc = TensorDesc::new(DType::I32, [values.len()]);
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    CpuTensor::from_bytes(desc.clone(), bytes).map_err(|source| ModelError::TensorData {
        name: "inputs".into(),
        desc,
        source,
    })
}

fn i32_of(v: usize, what: &str) -> Result<i32, ModelError> {
    i32::try_from(v).map_err(|_| ModelError::BadValue {
        key: what.into(),
        why: "does not fit in an i32".into(),
    })
}

impl ForwardInputs {
    /// One sequence: `tokens` at positions `pos..` of the sequence whose
    /// slot starts at cache row `start`. The caller has checked that ids
    /// are in the vocabulary and that the tokens fit the slot; here only
    /// the I32 range is checked.
    pub fn new(tokens: &[u32], start: usize, pos: usize) -> Result<ForwardInputs, ModelError> {
        let ids = tokens
            .iter()
            .map(|&t| i32_of(t as usize, "token id"))
            .collect::<Result<Vec<_>, _>>()?;
        let positions = (0..tokens.len())
            .map(|t| i32_of(pos + t, "position"))
            .collect::<Result<Vec<_>, _>>()?;
        let seq = [
            i32_of(start, "cache row")?,
            i32_of(start + pos, "cache row")?,
        ];
        Ok(ForwardInputs {
            tokens: i32_tensor(&ids)?,
            positions: i32_tensor(&positions)?,
            seq: i32_tensor(&seq)?
                .reshape([1, 2])
                .map_err(|source| ModelError::TensorData {
                    name: "inputs".into(),
                    desc: TensorDesc::new(DType::I32, [1, 2]),
                    source,
                })?,
            lora_scales: None,
        })
    }

    /// A batched decode step: row `i` runs `token` at position `pos` of
    /// the sequence whose slot starts at cache row `start`; `None` is a
    /// padding row, which writes no cache row and sees no key.
    pub fn batch(rows: &[Option<(usize, u32, usize)>]) -> Result<ForwardInputs, ModelError> {
        let (mut ids, mut positions, mut seq) = (Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            let (id, p, s) = match *row {
                Some((start, token, pos)) => (
                    i32_of(token as usize, "token id")?,
                    i32_of(pos, "position")?,
                    [
                        i32_of(start, "cache row")?,
                        i32_of(start + pos, "cache row")?,
                    ],
                ),
                None => (0, 0, [0, -1]),
            };
            ids.push(id);
            positions.push(p);
            seq.extend(s);
        }
        let n = rows.len();
        Ok(ForwardInputs {
            tokens: i32_tensor(&ids)?,
            positions: i32_tensor(&positions)?,
            seq: i32_tensor(&seq)?
                .reshape([n, 2])
                .map_err(|source| ModelError::TensorData {
                    name: "inputs".into(),
                    desc: TensorDesc::new(DType::I32, [n, 2]),
                    source,
                })?,
            lora_scales: None,
        })
    }
}

impl ForwardInputs {
    /// The same inputs with LoRA scales: `rows` rows of R values each.
    pub fn with_lora_scales(mut self, rows: Vec<Vec<f32>>) -> Result<ForwardInputs, ModelError> {
        let r = rows.first().map_or(0, Vec::len);
        let shape = [rows.len(), r];
        let values: Vec<f32> = rows.into_iter().flatten().collect();
        let scales =
            CpuTensor::from_f32(shape, values).map_err(|source| ModelError::TensorData {
                name: "lora_scales".into(),
                desc: TensorDesc::f32(shape),
                source,
            })?;
        self.lora_scales = Some(scales);
        Ok(self)
    }
}

/// One product's LoRA side path: the stacked A `[R, in]` and B `[out, R]`,
/// and the scales `[T, R]`.
#[derive(Clone, Copy)]
struct Side {
    a: TensorId,
    b: TensorId,
    s: TensorId,
}

/// `y = x'·Wᵀ (+ r)` through the fused matvec (`inputs` = x, W, then the
/// prologue's g or u, then r or the heads epilogue's pos and seq), plus the
/// LoRA term when `side` is given: `u = x'·Aᵀ` by the same matvec over A,
/// added by the product's epilogue. With `into` (a resident KV cache, the
/// op storing into it) the product is written there in place.
fn fused_product(
    g: &mut Graph,
    name: String,
    op: QMatVec,
    inputs: &[TensorId],
    side: Option<Side>,
    into: Option<TensorId>,
) -> Result<TensorId, ModelError> {
    let apply = |g: &mut Graph, op: QMatVec, inputs: &[TensorId]| match into {
        Some(target) => g.write_into(name.clone(), op, inputs, target),
        None => g.op(name.clone(), op, inputs),
    };
    let Some(side) = side else {
        return Ok(apply(g, op, inputs)?);
    };
    let extra = usize::from(op.prologue != Prologue::None);
    let mut u_inputs = vec![inputs[0], side.a];
    u_inputs.extend_from_slice(&inputs[2..2 + extra]);
    let u_op = QMatVec::new(op.prologue, false);
    let u = g.op(format!("{name}_lora_u"), u_op, &u_inputs)?; // [T, R]
    let mut all = inputs.to_vec();
    all.extend([u, side.s, side.b]);
    Ok(apply(g, op.with_lora(), &all)?)
}

/// `y = h·Wᵀ` through the tiled product, plus `((h·Aᵀ) ⊙ s)·Bᵀ` when
/// `side` is given (f32 tiles: A and B are thin).
fn tiled_product(
    g: &mut Graph,
    name: String,
    mm: QMatMul,
    h: TensorId,
    w: TensorId,
    side: Option<Side>,
) -> Result<TensorId, ModelError> {
    let y = g.op(name.clone(), mm, &[h, w])?;
    let Some(side) = side else {
        return Ok(y);
    };
    let thin = QMatMul::default();
    let u = g.op(format!("{name}_lora_u"), thin, &[h, side.a])?; // [T, R]
    let us = g.op(format!("{name}_lora_us"), Mul, &[u, side.s])?; // [T, R]
    let d = g.op(format!("{name}_lora"), thin, &[us, side.b])?; // [T, out]
    Ok(g.op(format!("{name}_lora_add"), Add, &[y, d])?)
}

impl ForwardGraph {
    /// The forward for `n_tokens` tokens. Decode-sized T uses the fused
    /// matvecs and split attention, larger T tiled matmuls and flash
    /// attention.
    pub fn build(
        config: &LlamaConfig,
        weights: &LlamaWeights,
        caches: &Caches,
        n_tokens: usize,
        mode: LogitsMode,
    ) -> Result<ForwardGraph, ModelError> {
        let options = GraphOptions {
            split_attention: true,
            f16_prefill: false,
            batched: false,
            greedy: false,
        };
        Self::build_with(config, weights, caches, n_tokens, mode, options)
    }

    /// [`ForwardGraph::build`] with the choices of [`GraphOptions`].
    pub fn build_with(
        config: &LlamaConfig,
        weights: &LlamaWeights,
        caches: &Caches,
        n_tokens: usize,
        mode: LogitsMode,
        options: GraphOptions,
    ) -> Result<ForwardGraph, ModelError> {
        Self::build_lora(config, weights, caches, n_tokens, mode, options, None)
    }

    /// [`ForwardGraph::build_with`] with LoRA side paths from `lora` on
    /// every product it has a stacked pair for; the graph then takes the
    /// scales input [`ForwardGraph::lora_scales`].
    pub fn build_lora(
        config: &LlamaConfig,
        weights: &LlamaWeights,
        caches: &Caches,
        n_tokens: usize,
        mode: LogitsMode,
        options: GraphOptions,
        lora: Option<&LoraStack>,
    ) -> Result<ForwardGraph, ModelError> {
        let split_attention = options.split_attention;
        if n_tokens == 0 {
            return Err(ModelError::BadValue {
                key: "n_tokens".into(),
                why: "a forward needs at least one token".into(),
            });
        }
        let c = config;
        let t = n_tokens;
        let mut g = Graph::new();
        let tokens = g.input("tokens", TensorDesc::new(DType::I32, [t]));
        let positions = g.input("positions", TensorDesc::new(DType::I32, [t]));
        let seq_rows = if options.batched { t } else { 1 };
        let seq = g.input("seq", TensorDesc::new(DType::I32, [seq_rows, 2]));
        let lora_scales = lora.map(|l| g.input("lora_scales", TensorDesc::f32([t, l.layout.rank])));
        let norm = RmsNorm::new(c.rms_eps);
        let rope = Rope {
            mode: c.rope.mode,
            n_dims: c.rope.n_dims,
            freq_base: c.rope.freq_base,
            freq_scale: c.rope.freq_scale,
        };
        let attn_cfg = AttnConfig::causal(c.head_dim).window(c.sliding_window);
        let mm = if options.f16_prefill {
            QMatMul::default().with_variant(QMatMulVariant::AutoF16)
        } else {
            QMatMul::default()
        };
        // Decode steps, and for small models batches and short prompts
        // (`fused_rows`), run the fused matvec: the norms, SwiGLU and residual
        // adds ride along in the products, so a layer is 11 dispatches in
        // 7 dependent steps instead of 18 (each dependent dispatch costs
        // ~3 us on a big GPU: what bounds small models).
        let fused_max = fused_rows(c);
        let fused = t <= fused_max;
        // Decode attention (per query) for decode-sized steps and for
        // batches of independent sequences at any size; flash attention
        // (tiles of consecutive queries) for prompts.
        let per_query = fused || options.batched;
        let mv = |prologue, residual| QMatVec::new(prologue, residual);
        let normed = Prologue::Norm { eps: c.rms_eps };

        let embd = g.resident("token_embd.weight", &weights.token_embd);
        let mut x = g.op("inp_embd", GetRows, &[embd, tokens])?; // [T, n_embd]
        for (i, (l, (kc, vc))) in weights
            .layers
            .iter()
            .zip(caches.k.iter().zip(&caches.v))
            .enumerate()
        {
            let name = |what: &str| format!("blk.{i}.{what}");
            let w = |g: &mut Graph, what: &str, t: &DeviceTensor| g.resident(name(what), t);
            let side = |g: &mut Graph, module: LoraModule| {
                let (stack, s) = (lora?, lora_scales?);
                let pair = stack.pair(i, module)?;
                let what = module.gguf_name();
                Some(Side {
                    a: g.resident(name(&format!("{what}.lora_a")), &pair.a),
                    b: g.resident(name(&format!("{what}.lora_b")), &pair.b),
                    s,
                })
            };

            // Attention: x + o(attn(rope(q), rope(k), v)).
            let wn = w(&mut g, "attn_norm.weight", &l.attn_norm);
            let (wq, wk, wv) = (
                w(&mut g, "attn_q.weight", &l.wq),
                w(&mut g, "attn_k.weight", &l.wk),
                w(&mut g, "attn_v.weight", &l.wv),
            );
            let (sq, sk, sv) = (
                side(&mut g, LoraModule::Q),
                side(&mut g, LoraModule::K),
                side(&mut g, LoraModule::V),
            );
            let kc = g.resident(name("cache_k"), kc);
            let vc = g.resident(name("cache_v"), vc);
            // Decode steps with normal-mode rope and no biases: rope and
            // the KV append ride in the q/k/v products' epilogue (4
            // dispatches and 2 dependent steps a layer fewer).
            let heads_fused = fused && l.bias.is_none() && c.rope.mode == RopeMode::Normal;
            let (q, kc, vc) = if heads_fused {
                let heads = |rope: Option<Rope>, cache: bool| Heads {
                    head_dim: c.head_dim,
                    rope,
                    cache_rows: cache.then_some(caches.rows()),
                };
                let qkv = mv(normed, false);
                let (rq, rk, rv) = (
                    qkv.with_heads(heads(Some(rope), false)),
                    qkv.with_heads(heads(Some(rope), true)),
                    qkv.with_heads(heads(None, true)),
                );
                let q = fused_product(
                    &mut g,
                    name("attn_q"),
                    rq,
                    &[x, wq, wn, positions],
                    sq,
                    None,
                )?; // [T, q_dim], roped
                let k_in = [x, wk, wn, positions, seq];
                let kc = fused_product(&mut g, name("cache_k_append"), rk, &k_in, sk, Some(kc))?;
                let v_in = [x, wv, wn, seq];
                let vc = fused_product(&mut g, name("cache_v_append"), rv, &v_in, sv, Some(vc))?;
                (g.reshape(q, [t, c.n_head, c.head_dim])?, kc, vc)
            } else {
                let (mut q, mut k, mut v) = if fused {
                    let qkv = mv(normed, false);
                    (
                        fused_product(&mut g, name("attn_q"), qkv, &[x, wq, wn], sq, None)?,
                        fused_product(&mut g, name("attn_k"), qkv, &[x, wk, wn], sk, None)?,
                        fused_product(&mut g, name("attn_v"), qkv, &[x, wv, wn], sv, None)?,
                    )
                } else {
                    let h = g.op(name("attn_norm"), norm, &[x, wn])?; // [T, n_embd]
                    (
                        tiled_product(&mut g, name("attn_q"), mm, h, wq, sq)?, // [T, q_dim]
                        tiled_product(&mut g, name("attn_k"), mm, h, wk, sk)?, // [T, kv_dim]
                        tiled_product(&mut g, name("attn_v"), mm, h, wv, sv)?, // [T, kv_dim]
                    )
                };
                if let Some([bq, bk, bv]) = &l.bias {
                    let (bq, bk, bv) = (
                        w(&mut g, "attn_q.bias", bq),
                        w(&mut g, "attn_k.bias", bk),
                        w(&mut g, "attn_v.bias", bv),
                    );
                    q = g.op(name("attn_q_b"), Add, &[q, bq])?;
                    k = g.op(name("attn_k_b"), Add, &[k, bk])?;
                    v = g.op(name("attn_v_b"), Add, &[v, bv])?;
                }
                let q = g.reshape(q, [t, c.n_head, c.head_dim])?;
                let k = g.reshape(k, [t, c.n_head_kv, c.head_dim])?;
                let v = g.reshape(v, [t, c.n_head_kv, c.head_dim])?;
                let q = g.op(name("q_rope"), rope, &[q, positions])?; // [T, n_head, head_dim]
                let k = g.op(name("k_rope"), rope, &[k, positions])?; // [T, n_head_kv, head_dim]
                let append = KvAppend::new(caches.rows(), DType::F32);
                let kc = g.write_into(name("cache_k_append"), append, &[k, seq], kc)?; // [rows, n_head_kv, head_dim]
                let vc = g.write_into(name("cache_v_append"), append, &[v, seq], vc)?;
                (q, kc, vc)
            };
            let a = if per_query && !split_attention {
                g.op(name("attn"), Attention::new(attn_cfg), &[q, kc, vc, seq])?
            } else if per_query {
                // Key chunks of one slot in parallel, then their
                // softmax-weighted sum.
                let parts = AttentionPartials::new(attn_cfg).max_len(caches.ctx);
                let part = g.op(name("attn_part"), parts, &[q, kc, vc, seq])?;
                g.op(name("attn"), AttentionCombine, &[part])?
            } else {
                g.op(
                    name("attn"),
                    FlashAttention::new(attn_cfg),
                    &[q, kc, vc, seq],
                )?
            }; // [T, n_head, head_dim]
            let a = g.reshape(a, [t, c.q_dim()])?;
            let wo = w(&mut g, "attn_output.weight", &l.wo);
            let so = side(&mut g, LoraModule::O);
            x = if fused {
                let op = mv(Prologue::None, true);
                fused_product(&mut g, name("ffn_inp"), op, &[a, wo, x], so, None)?
            } else {
                let o = tiled_product(&mut g, name("attn_out"), mm, a, wo, so)?; // [T, n_embd]
                g.op(name("ffn_inp"), Add, &[x, o])?
            };

            // Feed-forward: x + down(silu(gate(h)) * up(h)).
            let wn = w(&mut g, "ffn_norm.weight", &l.ffn_norm);
            let (wg, wu, wd) = (
                w(&mut g, "ffn_gate.weight", &l.gate),
                w(&mut g, "ffn_up.weight", &l.up),
                w(&mut g, "ffn_down.weight", &l.down),
            );
            let (sg, su, sd) = (
                side(&mut g, LoraModule::Gate),
                side(&mut g, LoraModule::Up),
                side(&mut g, LoraModule::Down),
            );
            x = if fused {
                let gate = fused_product(
                    &mut g,
                    name("ffn_gate"),
                    mv(normed, false),
                    &[x, wg, wn],
                    sg,
                    None,
                )?;
                let up = fused_product(
                    &mut g,
                    name("ffn_up"),
                    mv(normed, false),
                    &[x, wu, wn],
                    su,
                    None,
                )?;
                let down = mv(Prologue::SwiGlu, true);
                fused_product(&mut g, name("l_out"), down, &[gate, wd, up, x], sd, None)?
            } else {
                let h = g.op(name("ffn_norm"), norm, &[x, wn])?;
                let gate = tiled_product(&mut g, name("ffn_gate"), mm, h, wg, sg)?; // [T, n_ff]
                let up = tiled_product(&mut g, name("ffn_up"), mm, h, wu, su)?; // [T, n_ff]
                let gate = g.op(name("ffn_silu"), Silu, &[gate])?;
                let gu = g.op(name("ffn_gate_par"), Mul, &[gate, up])?;
                let down = tiled_product(&mut g, name("ffn_out"), mm, gu, wd, sd)?; // [T, n_embd]
                g.op(name("l_out"), Add, &[x, down])?
            };
        }

        // Only the last row feeds the head when generating: a [1, n_embd]
        // gather instead of T rows of vocab-wide logits.
        if mode == LogitsMode::Last && t > 1 {
            let last = i32::try_from(t - 1).map_err(|_| ModelError::BadValue {
                key: "n_tokens".into(),
                why: "does not fit in an i32".into(),
            })?;
            let last = g.constant("last_row", i32_tensor(&[last])?);
            x = g.op("inp_out_ids", GetRows, &[x, last])?; // [1, n_embd]
        }
        let wn = g.resident("output_norm.weight", &weights.output_norm);
        let wout = g.resident(
            if weights.tied {
                "output.weight (tied token_embd)"
            } else {
                "output.weight"
            },
            &weights.output,
        );
        let rows = g.desc(x).rows();
        let logits = if rows <= fused_max {
            g.op("result_output", mv(normed, false), &[x, wout, wn])?
        } else {
            let x = g.op("result_norm", norm, &[x, wn])?;
            g.op("result_output", mm, &[x, wout])?
        }; // [rows, vocab]
        if options.greedy {
            let id = g.op("result_argmax", ArgMax::default(), &[logits])?; // [rows]
            let logprob = g.op("result_logprob", MaxLogProb::default(), &[logits])?; // [rows]
            g.output(id);
            g.output(logprob);
        } else {
            g.output(logits);
        }
        Ok(ForwardGraph {
            graph: g,
            tokens,
            positions,
            seq,
            logits,
            lora_scales,
            n_tokens: t,
        })
    }

    /// The feeds for one run: the scales too when both the graph and the
    /// inputs have them (a graph with LoRA fed none fails as a missing
    /// input).
    pub fn feeds<'a>(&self, inputs: &'a ForwardInputs) -> Vec<(TensorId, &'a CpuTensor)> {
        let mut feeds = vec![
            (self.tokens, &inputs.tokens),
            (self.positions, &inputs.positions),
            (self.seq, &inputs.seq),
        ];
        if let (Some(id), Some(s)) = (self.lora_scales, &inputs.lora_scales) {
            feeds.push((id, s));
        }
        feeds
    }
}
