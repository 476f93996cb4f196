//! What an adapter is checked against: the base model's layer count and
//! the `[out, in]` of each weight a LoRA may target.

use std::collections::BTreeMap;

use crate::lora::error::{LoraError, LoraErrorKind};
use crate::lora::{LoraAdapter, LoraFormat, LoraHalf, LoraModule};
use crate::weights::WeightMap;

/// The base model's shapes, as far as LoRA cares: `n_layer` blocks, and per
/// block the `(out, in)` of each targetable weight (kiln's weight shape
/// `[out, in]`, e.g. `blk.3.attn_q.weight` `[n_head·head_dim, n_embd]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BaseShapes {
    pub n_layer: usize,
    shapes: BTreeMap<(usize, LoraModule), (usize, usize)>,
}

impl BaseShapes {
    /// `n_layer` blocks with no weights yet; add them with [`set`](Self::set).
    pub fn new(n_layer: usize) -> BaseShapes {
        BaseShapes {
            n_layer,
            shapes: BTreeMap::new(),
        }
    }

    /// Every block alike: `shapes` lists `(module, (out, in))`.
    pub fn uniform(n_layer: usize, shapes: &[(LoraModule, (usize, usize))]) -> BaseShapes {
        let mut base = BaseShapes::new(n_layer);
        for layer in 0..n_layer {
            for &(module, out_in) in shapes {
                base.set(layer, module, out_in);
            }
        }
        base
    }

    /// Sets one weight's `(out, in)`.
    pub fn set(&mut self, layer: usize, module: LoraModule, out_in: (usize, usize)) -> &mut Self {
        self.shapes.insert((layer, module), out_in);
        self
    }

    /// `(out, in)` of `module` in block `layer`, if the model has it.
    pub fn get(&self, layer: usize, module: LoraModule) -> Option<(usize, usize)> {
        self.shapes.get(&(layer, module)).copied()
    }

    /// Reads the shapes off a model's weights, named either way: GGUF
    /// (`blk.3.attn_q.weight`) or Hugging Face
    /// (`model.layers.3.self_attn.q_proj.weight`). `n_layer` is one past the
    /// highest block index any tensor names. Quantized weights report their
    /// logical shape, so any dtype works.
    pub fn from_weights(weights: &WeightMap) -> BaseShapes {
        let mut base = BaseShapes::default();
        for (name, w) in weights.iter() {
            let Some((layer, rest)) = block_of(name) else {
                continue;
            };
            base.n_layer = base.n_layer.max(layer + 1);
            let module = LoraModule::ALL.into_iter().find(|m| {
                rest == format!("{}.weight", m.gguf_name())
                    || rest == format!("{}.{}.weight", m.hf_parent(), m.hf_name())
            });
            if let (Some(module), [out, n_in]) = (module, w.shape()) {
                base.set(layer, module, (*out, *n_in));
            }
        }
        base
    }
}

/// `blk.{i}.rest` or `model.layers.{i}.rest` → `(i, rest)`.
fn block_of(name: &str) -> Option<(usize, &str)> {
    let tail = name
        .strip_prefix("blk.")
        .or_else(|| name.strip_prefix("model.layers."))?;
    let (index, rest) = tail.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

pub(super) fn validate(
    adapter: &LoraAdapter,
    n_layer: usize,
    base: impl Fn(usize, LoraModule) -> Option<(usize, usize)>,
) -> Result<(), LoraError> {
    // The fields are public, so re-check what loading established.
    let mut seen = std::collections::BTreeSet::new();
    for t in &adapter.targets {
        let name = |half| adapter.format.tensor_name(t.layer, t.module, half);
        t.check(adapter.format)?;
        if !seen.insert((t.layer, t.module)) {
            return Err(LoraErrorKind::DuplicateTarget {
                tensor: name(LoraHalf::A),
            }
            .into());
        }
        if t.layer >= n_layer {
            return Err(LoraErrorKind::LayerOutOfRange {
                tensor: name(LoraHalf::A),
                layer: t.layer,
                n_layer,
            }
            .into());
        }
        let base_name = match adapter.format {
            LoraFormat::Peft => format!("{}.weight", t.module.hf_key(t.layer)),
            LoraFormat::Gguf => t.module.gguf_weight(t.layer),
        };
        let Some((out, n_in)) = base(t.layer, t.module) else {
            return Err(LoraErrorKind::ModuleNotInBase {
                tensor: name(LoraHalf::A),
                base: base_name,
            }
            .into());
        };
        if t.in_features() != n_in || t.out_features() != out {
            return Err(LoraErrorKind::BaseShapeMismatch {
                a: name(LoraHalf::A),
                a_shape: t.a.shape().to_vec(),
                b: name(LoraHalf::B),
                b_shape: t.b.shape().to_vec(),
                base: base_name,
                base_shape: (out, n_in),
            }
            .into());
        }
    }
    Ok(())
}
