//! The naive reference forward: the LLaMA family written out in f64 with
//! plain loops and no cache, the spec the graph is checked against. Every
//! position is recomputed from the token embeddings; nothing is shared with
//! the kernels but the dequantization of the weights (so a quantized model
//! is compared on the very values the device holds).
//!
//! Conventions, each as llama.cpp (and HF transformers) define them:
//! - RMS norm: `x / sqrt(mean(x²) + eps) * w`.
//! - Rope: the pair `i` of a head turns by `pos * freq_scale *
//!   base^(-2i / n_dims)`; normal mode pairs dims `(2i, 2i + 1)` (GGUF
//!   LLaMA), neox `(i, i + n_dims / 2)` (Qwen2, HF's `rotate_half`).
//! - Attention: scores `q·k / sqrt(head_dim)`, query head `h` reads kv head
//!   `h / (n_head / n_head_kv)`; the query at position `p` sees keys at `j
//!   <= p` and, with a sliding window `w`, `p - j < w` (llama.cpp's
//!   `is_masked_swa` masks `p - j >= w`; HF Mistral keeps `j > p - w`).
//! - FFN: `down(silu(gate(x)) * up(x))`.

use kiln_kernels::quant;
use kiln_loaders::WeightMap;

use crate::error::ModelError;
use crate::llama::names;

/// The hyperparameters, stated by the test rather than read by kiln, so
/// that the reading is under test too.
#[derive(Clone, Debug, PartialEq)]
pub struct NaiveConfig {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    /// Neox pairing `(i, i + n_dims / 2)`, else normal `(2i, 2i + 1)`.
    pub rope_neox: bool,
    pub rope_dims: usize,
    pub rope_base: f64,
    pub rope_freq_scale: f64,
    /// Sliding attention window in positions.
    pub window: Option<usize>,
    /// Biases on q, k and v.
    pub qkv_bias: bool,
}

/// A row-major `[rows, cols]` matrix: `y = W x` maps `cols` to `rows`
/// (ggml's and HF's linear-layer convention).
#[derive(Clone, Debug)]
struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

impl Matrix {
    fn mul(&self, x: &[f64]) -> Vec<f64> {
        assert_eq!(x.len(), self.cols, "matrix [{}, {}]", self.rows, self.cols);
        self.data
            .chunks_exact(self.cols)
            .map(|row| row.iter().zip(x).map(|(w, x)| w * x).sum())
            .collect()
    }

    fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

#[derive(Clone, Debug)]
struct Layer {
    attn_norm: Vec<f64>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    bias: Option<[Vec<f64>; 3]>,
    wo: Matrix,
    ffn_norm: Vec<f64>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// The model in f64.
#[derive(Clone, Debug)]
pub struct NaiveModel {
    pub config: NaiveConfig,
    embd: Matrix,
    layers: Vec<Layer>,
    output_norm: Vec<f64>,
    /// The embedding again when tied.
    output: Matrix,
}

/// The tensor `name` dequantized to f64, its shape checked.
fn tensor(map: &WeightMap, name: &str, shape: &[usize]) -> Result<Vec<f64>, ModelError> {
    let w = map.get(name).ok_or_else(|| ModelError::MissingTensor {
        name: name.to_string(),
    })?;
    if w.shape() != shape {
        return Err(ModelError::TensorShape {
            name: name.to_string(),
            expected: shape.to_vec(),
            got: w.shape().to_vec(),
        });
    }
    let values =
        quant::dequantize_to_vec(w.dtype(), w.bytes()).map_err(|e| ModelError::Convert {
            name: name.to_string(),
            to: kiln_kernels::DType::F64,
            why: e.to_string(),
        })?;
    Ok(values.into_iter().map(f64::from).collect())
}

fn matrix(map: &WeightMap, name: &str, rows: usize, cols: usize) -> Result<Matrix, ModelError> {
    Ok(Matrix {
        rows,
        cols,
        data: tensor(map, name, &[rows, cols])?,
    })
}

impl NaiveModel {
    /// Reads a GGUF-named weight map (tied when `output.weight` is absent).
    pub fn from_gguf(map: &WeightMap, config: NaiveConfig) -> Result<NaiveModel, ModelError> {
        let c = &config;
        let (d, q, kv, ff) = (
            c.n_embd,
            c.n_head * c.head_dim,
            c.n_head_kv * c.head_dim,
            c.n_ff,
        );
        let vocab = map
            .get(names::TOKEN_EMBD)
            .and_then(|w| w.shape().first().copied())
            .ok_or_else(|| ModelError::MissingTensor {
                name: names::TOKEN_EMBD.into(),
            })?;
        let embd = matrix(map, names::TOKEN_EMBD, vocab, d)?;
        let output = if map.contains(names::OUTPUT) {
            matrix(map, names::OUTPUT, vocab, d)?
        } else {
            embd.clone()
        };
        let layers = (0..c.n_layer)
            .map(|i| {
                let b = |what: &str| names::blk(i, what);
                Ok(Layer {
                    attn_norm: tensor(map, &b("attn_norm.weight"), &[d])?,
                    wq: matrix(map, &b("attn_q.weight"), q, d)?,
                    wk: matrix(map, &b("attn_k.weight"), kv, d)?,
                    wv: matrix(map, &b("attn_v.weight"), kv, d)?,
                    bias: if c.qkv_bias {
                        Some([
                            tensor(map, &b("attn_q.bias"), &[q])?,
                            tensor(map, &b("attn_k.bias"), &[kv])?,
                            tensor(map, &b("attn_v.bias"), &[kv])?,
                        ])
                    } else {
                        None
                    },
                    wo: matrix(map, &b("attn_output.weight"), d, q)?,
                    ffn_norm: tensor(map, &b("ffn_norm.weight"), &[d])?,
                    gate: matrix(map, &b("ffn_gate.weight"), ff, d)?,
                    up: matrix(map, &b("ffn_up.weight"), ff, d)?,
                    down: matrix(map, &b("ffn_down.weight"), d, ff)?,
                })
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(NaiveModel {
            embd,
            layers,
            output_norm: tensor(map, names::OUTPUT_NORM, &[d])?,
            output,
            config,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.embd.rows
    }

    /// Logits of every position of `tokens` (at positions 0, 1, ...):
    /// `[T][vocab]`.
    pub fn forward(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let c = &self.config;
        let mut x: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| self.embd.row(t as usize).to_vec())
            .collect(); // [T][n_embd]
        for l in &self.layers {
            let h: Vec<Vec<f64>> = x.iter().map(|r| rms_norm(r, &l.attn_norm, c)).collect();
            let project = |w: &Matrix, b: Option<&Vec<f64>>| -> Vec<Vec<f64>> {
                h.iter()
                    .map(|r| {
                        let mut y = w.mul(r);
                        if let Some(b) = b {
                            y.iter_mut().zip(b).for_each(|(y, b)| *y += b);
                        }
                        y
                    })
                    .collect()
            };
            let bias = |i: usize| l.bias.as_ref().map(|b| &b[i]);
            let mut q = project(&l.wq, bias(0)); // [T][n_head * head_dim]
            let mut k = project(&l.wk, bias(1)); // [T][n_head_kv * head_dim]
            let v = project(&l.wv, bias(2));
            for (p, (q, k)) in q.iter_mut().zip(&mut k).enumerate() {
                rope(q, p, c);
                rope(k, p, c);
            }
            for (p, x) in x.iter_mut().enumerate() {
                let a = attend(&q[p], &k, &v, p, c); // [n_head * head_dim]
                x.iter_mut().zip(l.wo.mul(&a)).for_each(|(x, o)| *x += o);
            }
            for x in x.iter_mut() {
                let h = rms_norm(x, &l.ffn_norm, c);
                let gu: Vec<f64> = l
                    .gate
                    .mul(&h)
                    .into_iter()
                    .zip(l.up.mul(&h))
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect(); // [n_ff]
                x.iter_mut().zip(l.down.mul(&gu)).for_each(|(x, d)| *x += d);
            }
        }
        x.iter()
            .map(|r| self.output.mul(&rms_norm(r, &self.output_norm, c)))
            .collect()
    }
}

fn rms_norm(x: &[f64], w: &[f64], c: &NaiveConfig) -> Vec<f64> {
    let mean_sq = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (mean_sq + c.rms_eps).sqrt();
    x.iter().zip(w).map(|(x, w)| x * inv * w).collect()
}

/// Rotates every head of `x` (`[heads * head_dim]`) for position `pos`.
fn rope(x: &mut [f64], pos: usize, c: &NaiveConfig) {
    for head in x.chunks_exact_mut(c.head_dim) {
        for i in 0..c.rope_dims / 2 {
            let theta = pos as f64
                * c.rope_freq_scale
                * c.rope_base.powf(-2.0 * i as f64 / c.rope_dims as f64);
            let (a, b) = if c.rope_neox {
                (i, i + c.rope_dims / 2)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * theta.cos() - x1 * theta.sin();
            head[b] = x0 * theta.sin() + x1 * theta.cos();
        }
    }
}

/// Attention of the query at position `p` over the keys and values of
/// positions `0..=p` (those in the window): `[n_head * head_dim]`.
fn attend(q: &[f64], k: &[Vec<f64>], v: &[Vec<f64>], p: usize, c: &NaiveConfig) -> Vec<f64> {
    let hd = c.head_dim;
    let group = c.n_head / c.n_head_kv;
    let first = c.window.map_or(0, |w| (p + 1).saturating_sub(w));
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0.0; c.n_head * hd];
    for h in 0..c.n_head {
        let qh = &q[h * hd..(h + 1) * hd];
        let kvh = h / group;
        let head = |rows: &[Vec<f64>], j: usize| rows[j][kvh * hd..(kvh + 1) * hd].to_vec();
        let scores: Vec<f64> = (first..=p)
            .map(|j| qh.iter().zip(head(k, j)).map(|(a, b)| a * b).sum::<f64>() * scale)
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = weights.iter().sum();
        for (j, w) in (first..=p).zip(weights) {
            for (o, v) in out[h * hd..(h + 1) * hd].iter_mut().zip(head(v, j)) {
                *o += w / sum * v;
            }
        }
    }
    out
}
