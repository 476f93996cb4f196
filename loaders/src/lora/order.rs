//! The order of q and k rows. llama.cpp's converter permutes the rows of
//! LLaMA's q and k projections so that normal (interleaved) rope pairs
//! them (`convert_hf_to_gguf.py`, `LlamaModel.permute`), and does the same
//! to a LoRA's `lora_b` (`convert_lora_to_gguf.py` runs the model's
//! `modify_tensors`). A PEFT adapter keeps Hugging Face's order. So an
//! adapter's `B` rows for q and k must be put in its base's order before
//! they meet the base's weights: permuted for a PEFT adapter on a LLaMA
//! GGUF, unpermuted for a llama.cpp adapter on an HF checkpoint (which
//! kiln runs unpermuted with neox rope), unchanged otherwise.

use crate::lora::{LoraAdapter, LoraError, LoraErrorKind, LoraFormat, LoraModule};

/// How a base model holds its q and k rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkOrder {
    /// Permuted as llama.cpp's converter writes LLaMA GGUFs.
    pub permuted: bool,
    pub n_head: usize,
    pub n_head_kv: usize,
}

impl LoraAdapter {
    /// Whether this adapter's q/k `B` rows are permuted: a llama.cpp
    /// adapter for a LLaMA (its own architecture, else `base_arch`).
    pub fn qk_permuted(&self, base_arch: &str) -> bool {
        self.format == LoraFormat::Gguf
            && self.architecture.as_deref().unwrap_or(base_arch) == "llama"
    }

    /// This adapter with its q/k `B` rows in `base`'s order; an error when
    /// they must move but `base`'s head counts do not divide them.
    pub fn in_qk_order(mut self, base_arch: &str, base: QkOrder) -> Result<LoraAdapter, LoraError> {
        let from = self.qk_permuted(base_arch);
        if from == base.permuted {
            return Ok(self);
        }
        for t in &mut self.targets {
            let heads = match t.module {
                LoraModule::Q => base.n_head,
                LoraModule::K => base.n_head_kv,
                _ => continue,
            };
            let (out, r) = (t.out_features(), t.rank());
            if heads == 0 || out % (2 * heads) != 0 {
                return Err(LoraError::new(LoraErrorKind::Unsupported {
                    what: format!(
                        "reordering the q/k rows of '{}' ({out} rows) for {heads} heads (the \
                         base's head counts are missing or do not divide them)",
                        self.format
                            .tensor_name(t.layer, t.module, crate::lora::LoraHalf::B)
                    ),
                })
                .in_file(format!("adapter '{}'", self.name)));
            }
            let Some(b) = t.b.as_f32_mut() else { continue };
            let src = b.to_vec();
            for (to, from) in qk_rows(out, heads, base.permuted).into_iter().enumerate() {
                b[to * r..(to + 1) * r].copy_from_slice(&src[from * r..(from + 1) * r]);
            }
        }
        Ok(self)
    }
}

/// For each of `out` rows in the target order (`permuted` or not), the
/// row of the other order it comes from. HF row `(h, j, i)` (head h, half
/// j, index i) is permuted row `(h, i, j)`.
fn qk_rows(out: usize, heads: usize, permuted: bool) -> Vec<usize> {
    let hd = out / heads;
    let mut rows: Vec<usize> = (0..out).collect();
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let hf = h * hd + j * (hd / 2) + i;
                let perm = h * hd + 2 * i + j;
                if permuted {
                    rows[perm] = hf;
                } else {
                    rows[hf] = perm;
                }
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permuting_and_unpermuting_are_inverse() {
        let (out, heads) = (16, 2);
        let there = qk_rows(out, heads, true);
        let back = qk_rows(out, heads, false);
        for r in 0..out {
            assert_eq!(there[back[r]], r);
        }
        // Head 0 of head_dim 8: HF rows 0..4 are the first halves, which
        // normal rope pairs with rows 4..8: permuted, they interleave.
        assert_eq!(&there[..8], &[0, 4, 1, 5, 2, 6, 3, 7]);
    }
}
