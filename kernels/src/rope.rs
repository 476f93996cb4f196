//! Rotary position embedding on `x: [T, n_heads, head_dim]` (F32) with
//! `positions: [T]` (I32) as an input tensor, so one compiled plan serves
//! every decode step. Matches ggml's `ggml_rope_ext` with `ext_factor = 0`
//! and `attn_factor = 1` (no YaRN), in f32 as ggml computes it: the pair
//! `j` turns by `freq_scale * (pos * theta_scale^j)` with
//! `theta_scale = freq_base^(-2 / n_dims)`, the power accumulated by
//! repeated multiplication (`ggml_rope_cache_init`).
//!
//! [`RopeMode::Normal`] rotates adjacent pairs `(2j, 2j + 1)` (LLaMA,
//! SmolLM2 as stored in GGUF); [`RopeMode::Neox`] rotates `(j, j + n_dims
//! / 2)` (Qwen2, GPT-NeoX). Dimensions from `n_dims` on pass through.

use rayon::prelude::*;

use crate::cases::{OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::tensor::{CpuTensor, TensorDesc};

const WGSL: &str = include_str!("../wgsl/rope.wgsl");
/// The angle of a pair, shared with the fused matvec's rope epilogue.
pub(crate) const ANGLE_WGSL: &str = include_str!("../wgsl/rope_angle.wgsl");
const NAME: &str = "rope";
const WG: u32 = 64;

/// Which dimensions form a rotated pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RopeMode {
    /// `(2j, 2j + 1)`: ggml's mode 0.
    #[default]
    Normal,
    /// `(j, j + n_dims / 2)`: ggml's `GGML_ROPE_TYPE_NEOX` (2).
    Neox,
}

/// The op; inputs `[x, positions]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    pub mode: RopeMode,
    /// Rotated dimensions of each head (even, at most `head_dim`).
    pub n_dims: usize,
    /// `rope.freq_base` (10000 for LLaMA 2, 100000 for SmolLM2, ...).
    pub freq_base: f32,
    /// 1 / linear context scaling factor (1 = none).
    pub freq_scale: f32,
}

impl Rope {
    /// A rope over the first `n_dims` dimensions with no context scaling.
    pub fn new(mode: RopeMode, n_dims: usize, freq_base: f32) -> Rope {
        Rope {
            mode,
            n_dims,
            freq_base,
            freq_scale: 1.0,
        }
    }

    /// ggml's `theta_scale = powf(freq_base, -2.0f / n_dims)`.
    pub(crate) fn theta_scale(&self) -> f32 {
        self.freq_base.powf(-2.0 / self.n_dims as f32)
    }

    /// One head `x` (`head_dim` values) at position `pos` into `y`, as
    /// the kernel computes it (also the fused matvec's reference).
    pub(crate) fn rotate(&self, pos: i32, x: &[f32], y: &mut [f32]) {
        y.copy_from_slice(x);
        let theta_scale = self.theta_scale();
        let mut theta = pos as f32;
        for j in 0..self.n_dims / 2 {
            let a = self.freq_scale * theta;
            let (sin, cos) = (a.sin(), a.cos());
            let (i0, i1) = match self.mode {
                RopeMode::Normal => (2 * j, 2 * j + 1),
                RopeMode::Neox => (j, j + self.n_dims / 2),
            };
            let (x0, x1) = (x[i0], x[i1]);
            y[i0] = x0 * cos - x1 * sin;
            y[i1] = x0 * sin + x1 * cos;
            theta *= theta_scale;
        }
    }
}

/// Mirrors `Params` in `rope.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32,
    heads: u32,
    head_dim: u32,
    n_dims: u32,
    theta_scale: f32,
    freq_scale: f32,
    _pad: [u32; 2],
}

impl Op for Rope {
    fn name(&self) -> &'static str {
        NAME
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        check::arity(NAME, inputs, 2)?;
        let (x, pos) = (&inputs[0], &inputs[1]);
        check::dtype(NAME, x, &[DType::F32], "x")?;
        check::dtype(NAME, pos, &[DType::I32], "positions")?;
        if x.shape.len() != 3 || pos.shape.len() != 1 || pos.shape[0] != x.shape[0] {
            return Err(check::shape_err(
                NAME,
                inputs,
                "x must be [T, n_heads, head_dim] and positions [T]",
            ));
        }
        let head_dim = x.shape[2];
        if !head_dim.is_multiple_of(2)
            || !self.n_dims.is_multiple_of(2)
            || self.n_dims == 0
            || self.n_dims > head_dim
        {
            return Err(check::shape_err(
                NAME,
                inputs,
                format!(
                    "n_dims = {} must be even, non-zero and <= head_dim = {head_dim} (even)",
                    self.n_dims
                ),
            ));
        }
        check::numel_u32(NAME, inputs, x)?;
        Ok(x.clone())
    }

    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let x = inputs[0]
            .to_f32()
            .map_err(|_| check::not_f32(NAME, inputs[0].dtype()))?;
        let heads = inputs[0].shape()[1];
        let head_dim = inputs[0].shape()[2];
        let pos: Vec<i32> = inputs[1]
            .bytes()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let y = out.as_f32_mut().ok_or(check::not_f32(NAME, DType::F32))?;
        if head_dim == 0 || heads == 0 {
            return Ok(());
        }
        y.par_chunks_mut(head_dim)
            .zip(x.par_chunks(head_dim))
            .enumerate()
            .for_each(|(row, (y, x))| self.rotate(pos[row / heads], x, y));
        Ok(())
    }

    fn gpu(
        &self,
        inputs: &[TensorDesc],
        _out: &TensorDesc,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        self.output(inputs)?;
        let x = &inputs[0];
        let threads = check::numel_u32(NAME, inputs, x)? / 2;
        let params = Params {
            t: x.shape[0] as u32,
            heads: x.shape[1] as u32,
            head_dim: x.shape[2] as u32,
            n_dims: self.n_dims as u32,
            theta_scale: self.theta_scale(),
            freq_scale: self.freq_scale,
            _pad: [0; 2],
        };
        let neox = self.mode == RopeMode::Neox;
        Ok(GpuKernel {
            key: format!("rope.{}", if neox { "neox" } else { "normal" }),
            source: WGSL
                .replace("{{NEOX}}", &neox.to_string())
                .replace("{{ANGLE}}", ANGLE_WGSL)
                .into(),
            entry: "main",
            params: params_bytes(&params),
            workgroups: grid(threads.div_ceil(WG), caps.max_workgroups_per_dimension),
        })
    }
}

/// SmolLM2 (64-dim heads, base 1e5), LLaMA-2 (128, 1e4), Qwen2-style neox,
/// partial rotation, a scaled context; positions up to 8192.
pub fn cases() -> Vec<OpCase> {
    let f = |s: &[usize]| TensorDesc::f32(s);
    let i = |t: usize| TensorDesc::new(DType::I32, [t]);
    // Angles are bit-identical to ggml's; only sin/cos differ, by a few ulp
    // on [-pi, pi] after the reduction, on values of magnitude <= 1.
    let tol = Tolerance::new(2e-6, 1e-5);
    let ropes = [
        (Rope::new(RopeMode::Normal, 64, 100_000.0), [1, 9, 64]),
        (Rope::new(RopeMode::Normal, 128, 10_000.0), [7, 4, 128]),
        (Rope::new(RopeMode::Neox, 64, 1_000_000.0), [33, 3, 64]),
        (Rope::new(RopeMode::Neox, 32, 10_000.0), [5, 2, 80]),
        (Rope::new(RopeMode::Normal, 16, 10_000.0), [3, 2, 24]),
        (
            Rope {
                freq_scale: 0.25,
                ..Rope::new(RopeMode::Normal, 64, 10_000.0)
            },
            [4, 2, 64],
        ),
    ];
    ropes
        .into_iter()
        .map(|(op, s)| OpCase::new(op, vec![f(&s), i(s[0])], tol).ints(0, 8192))
        .collect()
}
