//! LoRA adapters on the device, unmerged: every loaded adapter's `A` and
//! `B` stacked per (layer, module) into one pair, so one side path per
//! product serves any mix of adapters, and which adapters a row uses (and
//! how strongly) is an input of the forward, not part of its graph.
//!
//! Adapter `j` owns ranks `offset_j .. offset_j + rank_j` of every stack
//! ([`StackLayout`]); a module it does not target (or targets with a
//! smaller rank) has zeros there. For a product `y = x'·Wᵀ` the graph adds
//!
//! ```text
//! y += Σ_r B[n, r] · (A·x')[m, r] · s[m, r]     A [R, in], B [out, R], s [T, R]
//! ```
//!
//! where `B` already carries each target's own scale (`alpha / r`, with
//! PEFT's rank and alpha patterns), and `s[m, r]` is the multiplier row m
//! gives adapter j (0 when the row does not use it). Applying, removing or
//! swapping loaded adapters rewrites `s` only; loading or unloading one
//! rebuilds the stacks (and the plans that read them). Each adapter's q/k
//! rows are put in the model's order first (`QkOrder`: PEFT adapters on
//! LLaMA GGUFs are permuted as the base is).

use kiln_engine::{Device, DeviceTensor};
use kiln_kernels::rope::RopeMode;
use kiln_kernels::{CpuTensor, TensorDesc};
use kiln_loaders::lora::{LoraAdapter, LoraError, LoraErrorKind, LoraModule, QkOrder};

use crate::error::ModelError;
use crate::llama::config::LlamaConfig;

/// One product's stacked pair.
#[derive(Clone, Debug)]
pub struct LoraPair {
    /// F32 `[R, in]`.
    pub a: DeviceTensor,
    /// F32 `[out, R]`, each target's scale folded in.
    pub b: DeviceTensor,
}

/// Where each adapter's ranks sit in the stacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackLayout {
    /// First rank of each adapter, in the order given.
    pub offsets: Vec<usize>,
    /// Ranks of each adapter (its largest target's).
    pub ranks: Vec<usize>,
    /// R: every adapter's ranks, padded to a multiple of 4 (the tiled
    /// products read K in quads).
    pub rank: usize,
}

impl StackLayout {
    pub fn new(adapters: &[&LoraAdapter]) -> StackLayout {
        let ranks: Vec<usize> = adapters.iter().map(|a| a.rank).collect();
        let mut offsets = Vec::with_capacity(ranks.len());
        let mut next = 0;
        for r in &ranks {
            offsets.push(next);
            next += r;
        }
        StackLayout {
            offsets,
            ranks,
            rank: next.div_ceil(4) * 4,
        }
    }

    /// The scales row for a row using `uses` (adapter index, multiplier):
    /// `[R]`, the multiplier over each used adapter's ranks, 0 elsewhere.
    pub fn scales(&self, uses: &[(usize, f32)]) -> Vec<f32> {
        let mut row = vec![0f32; self.rank];
        for &(j, scale) in uses {
            if let (Some(&o), Some(&r)) = (self.offsets.get(j), self.ranks.get(j)) {
                for v in &mut row[o..o + r] {
                    *v += scale;
                }
            }
        }
        row
    }
}

/// Every loaded adapter's pairs, stacked, resident on one device.
#[derive(Clone, Debug)]
pub struct LoraStack {
    pub layout: StackLayout,
    /// Per layer, per [`LoraModule::ALL`] entry: the stacked pair, or
    /// `None` where no loaded adapter targets that module (no side path).
    pub layers: Vec<[Option<LoraPair>; 7]>,
}

impl LoraStack {
    /// Stacks `adapters` (checked against `config` first) and uploads the
    /// pairs.
    pub fn build(
        config: &LlamaConfig,
        adapters: &[&LoraAdapter],
        device: &Device,
    ) -> Result<LoraStack, ModelError> {
        for a in adapters {
            validate(config, a).map_err(ModelError::Lora)?;
        }
        let layout = StackLayout::new(adapters);
        let order = QkOrder {
            permuted: config.rope.mode == RopeMode::Normal,
            n_head: config.n_head,
            n_head_kv: config.n_head_kv,
        };
        let adapters: Vec<LoraAdapter> = adapters
            .iter()
            .map(|a| (*a).clone().in_qk_order(config.arch.name(), order))
            .collect::<Result<_, _>>()?;
        let r_total = layout.rank;
        let mut layers = Vec::with_capacity(config.n_layer);
        for layer in 0..config.n_layer {
            let mut pairs: [Option<LoraPair>; 7] = Default::default();
            for (slot, module) in LoraModule::ALL.into_iter().enumerate() {
                let (out, n_in) = base_shape(config, module);
                let mut a_all = vec![0f32; r_total * n_in]; // [R, in]
                let mut b_all = vec![0f32; out * r_total]; // [out, R]
                let mut any = false;
                for (j, adapter) in adapters.iter().enumerate() {
                    let Some(t) = adapter.target(layer, module) else {
                        continue;
                    };
                    any = true;
                    let (r, off) = (t.rank(), layout.offsets[j]);
                    let a = t.a.as_f32().unwrap_or_default(); // [r, in]
                    let b = t.b.as_f32().unwrap_or_default(); // [out, r]
                    a_all[off * n_in..(off + r) * n_in].copy_from_slice(&a[..r * n_in]);
                    for o in 0..out {
                        for k in 0..r {
                            b_all[o * r_total + off + k] = b[o * r + k] * t.scale;
                        }
                    }
                }
                if !any {
                    continue;
                }
                let name = |half: &str| format!("blk.{layer}.{}.lora_{half}", module.gguf_name());
                let upload = |name: String, shape: [usize; 2], values: Vec<f32>| {
                    let t = CpuTensor::from_f32(shape, values).map_err(|source| {
                        ModelError::TensorData {
                            name: name.clone(),
                            desc: TensorDesc::f32(shape),
                            source,
                        }
                    })?;
                    device
                        .upload(&t)
                        .map_err(|source| ModelError::Upload { name, source })
                };
                pairs[slot] = Some(LoraPair {
                    a: upload(name("a"), [r_total, n_in], a_all)?,
                    b: upload(name("b"), [out, r_total], b_all)?,
                });
            }
            layers.push(pairs);
        }
        Ok(LoraStack { layout, layers })
    }

    /// The stacked pair of `(layer, module)`, if any adapter targets it.
    pub fn pair(&self, layer: usize, module: LoraModule) -> Option<&LoraPair> {
        let slot = LoraModule::ALL.iter().position(|&m| m == module)?;
        self.layers.get(layer)?[slot].as_ref()
    }
}

/// The base weight's `(out, in)` for `module`.
pub fn base_shape(config: &LlamaConfig, module: LoraModule) -> (usize, usize) {
    let (d, q, kv, ff) = (config.n_embd, config.q_dim(), config.kv_dim(), config.n_ff);
    match module {
        LoraModule::Q => (q, d),
        LoraModule::K | LoraModule::V => (kv, d),
        LoraModule::O => (d, q),
        LoraModule::Gate | LoraModule::Up => (ff, d),
        LoraModule::Down => (d, ff),
    }
}

/// Checks `adapter` fits a model of `config`: shapes, layers, modules, and
/// its architecture when it names one (llama.cpp refuses a mismatch too).
pub fn validate(config: &LlamaConfig, adapter: &LoraAdapter) -> Result<(), LoraError> {
    adapter.validate_with(config.n_layer, |layer, module| {
        (layer < config.n_layer).then(|| base_shape(config, module))
    })?;
    if let Some(arch) = &adapter.architecture {
        let ours = config.arch.name();
        if arch != ours {
            return Err(LoraError::new(LoraErrorKind::ArchitectureMismatch {
                adapter: arch.clone(),
                base: Some(ours.to_string()),
            })
            .in_file(format!("adapter '{}'", adapter.name)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_pads_and_scales_by_rank_range() {
        let layout = StackLayout {
            offsets: vec![0, 3],
            ranks: vec![3, 2],
            rank: 8,
        };
        assert_eq!(
            layout.scales(&[(1, 0.5)]),
            [0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0]
        );
        assert_eq!(
            layout.scales(&[(0, 2.0), (1, 1.0)]),
            [2.0, 2.0, 2.0, 1.0, 1.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(layout.scales(&[]), [0.0; 8]);
    }
}
