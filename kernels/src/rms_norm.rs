//! RMS norm over the last dimension with the weight multiply fused:
//! `x / sqrt(mean(x^2) + eps) * w` (LLaMA's norm; ggml's `rms_norm` then
//! `mul`). The weight is optional: inputs `[x]` or `[x, w]`.

use rayon::prelude::*;

use crate::cases::{OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::rows;
use crate::template::{fill, u};
use crate::tensor::{CpuTensor, TensorDesc};

const WGSL: &str = include_str!("../wgsl/rms_norm.wgsl");

/// Mirrors `Params` in `rms_norm.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    /// Elements of the kernel's element type (f32 or vec4) per row.
    cols: u32,
    /// Elements per row.
    n: u32,
    eps: f32,
}

/// `x: [.., n]` (and optionally `w: [n]`) `-> [.., n]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsNorm {
    /// Added to the mean square (`rms_norm_eps` in the model's config).
    pub eps: f32,
    /// Use the subgroup reduction when the device has subgroups. Off only
    /// to test the workgroup-memory reduction on such a device.
    pub allow_subgroups: bool,
}

impl RmsNorm {
    pub fn new(eps: f32) -> RmsNorm {
        RmsNorm {
            eps,
            allow_subgroups: true,
        }
    }
}

impl Op for RmsNorm {
    fn name(&self) -> &'static str {
        "rms_norm"
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        let op = self.name();
        if !(1..=2).contains(&inputs.len()) {
            return Err(OpError::Arity {
                op,
                expected: 2,
                got: inputs.len(),
            });
        }
        let x = &inputs[0];
        check::dtype(op, x, &[DType::F32], "its input")?;
        check::numel_u32(op, inputs, x)?;
        if x.shape.is_empty() {
            return Err(check::shape_err(op, inputs, "needs at least one dimension"));
        }
        if let Some(w) = inputs.get(1) {
            check::dtype(op, w, &[DType::F32], "its weight")?;
            if w.rows() != 1 || w.cols() != x.cols() {
                return Err(check::shape_err(
                    op,
                    inputs,
                    "the weight must be one row of x's width",
                ));
            }
        }
        Ok(x.clone())
    }

    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let op = self.name();
        let x = inputs[0]
            .to_f32()
            .map_err(|_| check::not_f32(op, inputs[0].dtype()))?;
        let w = match inputs.get(1) {
            Some(w) => Some(w.to_f32().map_err(|_| check::not_f32(op, w.dtype()))?),
            None => None,
        };
        let cols = inputs[0].desc().cols();
        let o = out.as_f32_mut().ok_or(check::not_f32(op, DType::F32))?;
        if cols == 0 {
            return Ok(());
        }
        o.par_chunks_mut(cols)
            .zip(x.par_chunks(cols))
            .for_each(|(o, x)| {
                let mean =
                    x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / cols as f64;
                let scale = (1.0 / (mean + f64::from(self.eps)).sqrt()) as f32;
                for (i, (o, &v)) in o.iter_mut().zip(x).enumerate() {
                    *o = v * scale * w.as_ref().map_or(1.0, |w| w[i]);
                }
            });
        Ok(())
    }

    fn gpu(
        &self,
        inputs: &[TensorDesc],
        _out: &TensorDesc,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        let op = self.name();
        let x = &inputs[0];
        check::numel_u32(op, inputs, x)?;
        let v = rows::variant(caps, self.allow_subgroups, x.cols());
        let rows = check::dim_u32(op, inputs, x.rows())?;
        let n = check::dim_u32(op, inputs, x.cols())?;
        let weighted = inputs.len() == 2;
        let (w_binding, out_binding, times_w) = if weighted {
            // The row is n / width elements of T, so index i is also w's.
            (
                format!(
                    "@group(0) @binding(2) var<storage, read> w: array<{}>;",
                    v.ty
                ),
                3,
                " * w[i]",
            )
        } else {
            (String::new(), 2, "")
        };
        let source = fill(
            WGSL,
            &[
                ("WG", u(rows::WG)),
                ("T", v.ty.into()),
                ("W_BINDING", w_binding),
                ("OUT_BINDING", out_binding.to_string()),
                ("TIMES_W", times_w.into()),
                ("REDUCE", v.reduce.into()),
                ("HORIZONTAL", v.horizontal.into()),
            ],
        );
        Ok(GpuKernel {
            key: format!("rms_norm.{}{}", v.key, if weighted { ".w" } else { "" }),
            source: source.into(),
            entry: "main",
            params: params_bytes(&Params {
                rows,
                cols: n / v.width,
                n,
                eps: self.eps,
            }),
            workgroups: grid(rows, caps.max_workgroups_per_dimension),
        })
    }
}

/// Rows of 1 to 10k columns, with and without weight, both reductions.
pub fn cases() -> Vec<OpCase> {
    let f = |s: &[usize]| TensorDesc::f32(s);
    // A sum of up to 10k squares in f32 in another order, and inverseSqrt's
    // few ulp; outputs are O(1).
    let tol = Tolerance::new(1e-5, 1e-4);
    let shapes: [&[usize]; 6] = [
        &[1],
        &[7],
        &[5, 33],
        &[2, 3, 256],
        &[64, 4096],
        &[3, 10_001],
    ];
    let mut cases = Vec::new();
    for shape in shapes {
        let w = f(&[shape[shape.len() - 1]]);
        for allow_subgroups in [true, false] {
            let op = RmsNorm {
                eps: 1e-5,
                allow_subgroups,
            };
            cases.push(OpCase::new(op, vec![f(shape), w.clone()], tol));
        }
        cases.push(OpCase::new(RmsNorm::new(1e-6), vec![f(shape)], tol));
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_rms_rows_are_unchanged() {
        let x = CpuTensor::from_f32([1, 4], vec![1.0, -1.0, 1.0, -1.0]).unwrap();
        let w = CpuTensor::from_f32([4], vec![2.0; 4]).unwrap();
        let mut out = CpuTensor::zeros(x.desc()).unwrap();
        RmsNorm::new(0.0).cpu(&[&x, &w], &mut out).unwrap();
        assert_eq!(out.as_f32().unwrap(), &[2.0, -2.0, 2.0, -2.0]);
    }

    #[test]
    fn rejects_a_weight_of_the_wrong_width() {
        let err = RmsNorm::new(1e-5).output(&[TensorDesc::f32([2, 8]), TensorDesc::f32([7])]);
        assert!(matches!(err, Err(OpError::Shape { op: "rms_norm", .. })));
    }
}
