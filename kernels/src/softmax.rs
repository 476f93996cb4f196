//! Softmax over the last dimension of an F32 tensor, numerically stable
//! (the row max is subtracted before `exp`).

use rayon::prelude::*;

use crate::cases::{Dist, OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::rows;
use crate::template::{fill, u};
use crate::tensor::{CpuTensor, TensorDesc};

const WGSL: &str = include_str!("../wgsl/softmax.wgsl");

/// The end of softmax.wgsl for [`Softmax`]: every probability.
const SOFTMAX_FINISH: &str = "let inv = 1.0 / row_sum;
    for (var i = ids.lid; i < p.cols; i += WG) {
        out[base + i] = exp(x[base + i] - row_max) * inv;
    }";

/// The end of softmax.wgsl for [`MaxLogProb`]: one value per row.
const MAX_LOGPROB_FINISH: &str = "if ids.lid == 0u {
        out[row] = -log(row_sum);
    }";

/// Mirrors `Params` in `softmax.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    /// Elements of the kernel's element type (f32 or vec4) per row.
    cols: u32,
    _pad: [u32; 2],
}

/// `softmax(x)` along the last dimension: `[.., n] -> [.., n]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Softmax {
    /// Use the subgroup reduction when the device has subgroups. Off only
    /// to test the workgroup-memory reduction on such a device.
    pub allow_subgroups: bool,
}

impl Default for Softmax {
    fn default() -> Softmax {
        Softmax {
            allow_subgroups: true,
        }
    }
}

impl Op for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        check::arity(self.name(), inputs, 1)?;
        let x = &inputs[0];
        check::dtype(self.name(), x, &[DType::F32], "its input")?;
        check::numel_u32(self.name(), inputs, x)?;
        if x.shape.is_empty() {
            return Err(check::shape_err(
                self.name(),
                inputs,
                "needs at least one dimension",
            ));
        }
        Ok(x.clone())
    }

    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let x = inputs[0]
            .to_f32()
            .map_err(|_| check::not_f32(self.name(), inputs[0].dtype()))?;
        let cols = inputs[0].desc().cols();
        let o = out
            .as_f32_mut()
            .ok_or(check::not_f32(self.name(), DType::F32))?;
        if cols == 0 {
            return Ok(());
        }
        o.par_chunks_mut(cols)
            .zip(x.par_chunks(cols))
            .for_each(|(o, x)| {
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f64 = x.iter().map(|&v| f64::from((v - max).exp())).sum();
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = ((v - max).exp() as f64 / sum) as f32;
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
        let x = &inputs[0];
        check::numel_u32(self.name(), inputs, x)?;
        let v = rows::variant(caps, self.allow_subgroups, x.cols());
        let rows = check::dim_u32(self.name(), inputs, x.rows())?;
        let cols = check::dim_u32(self.name(), inputs, x.cols())? / v.width;
        let source = fill(
            WGSL,
            &[
                ("WG", u(rows::WG)),
                ("T", v.ty.into()),
                ("REDUCE", v.reduce.into()),
                ("HORIZONTAL", v.horizontal.into()),
                ("OUT", v.ty.into()),
                ("FINISH", SOFTMAX_FINISH.into()),
            ],
        );
        Ok(GpuKernel {
            key: format!("softmax.{}", v.key),
            source: source.into(),
            entry: "main",
            params: params_bytes(&Params {
                rows,
                cols,
                _pad: [0; 2],
            }),
            workgroups: grid(rows, caps.max_workgroups_per_dimension),
        })
    }
}

/// `ln softmax(x)[argmax]` per row: `[.., n] -> [..]` (a 1-D input gives
/// `[1]`), i.e. `-ln Σ exp(x - max)`: the log-probability of the token
/// greedy decoding picks ([`crate::argmax::ArgMax`] gives its id), so a
/// greedy step reads back two numbers instead of the vocabulary's logits.
/// Rows are assumed finite (a NaN or infinite logit gives NaN, where the
/// host sampler reports NaN for a non-finite max too).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaxLogProb {
    /// Use the subgroup reduction when the device has subgroups.
    pub allow_subgroups: bool,
}

impl Default for MaxLogProb {
    fn default() -> MaxLogProb {
        MaxLogProb {
            allow_subgroups: true,
        }
    }
}

impl Op for MaxLogProb {
    fn name(&self) -> &'static str {
        "max_logprob"
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        let x = Softmax::default().output(inputs)?;
        if x.cols() == 0 || x.rows() == 0 {
            return Err(check::shape_err(self.name(), inputs, "empty rows"));
        }
        let (_, batch) = x.shape.split_last().unwrap_or((&0, &[]));
        let shape = if batch.is_empty() {
            vec![1]
        } else {
            batch.to_vec()
        };
        Ok(TensorDesc::f32(shape))
    }

    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let x = inputs[0]
            .to_f32()
            .map_err(|_| check::not_f32(self.name(), inputs[0].dtype()))?;
        let cols = inputs[0].desc().cols().max(1);
        let o = out
            .as_f32_mut()
            .ok_or(check::not_f32(self.name(), DType::F32))?;
        o.par_iter_mut().zip(x.par_chunks(cols)).for_each(|(o, x)| {
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = x.iter().map(|&v| f64::from(v - max).exp()).sum();
            *o = -sum.ln() as f32;
        });
        Ok(())
    }

    fn gpu(
        &self,
        inputs: &[TensorDesc],
        out: &TensorDesc,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        self.output(inputs)?;
        let mut kernel = Softmax {
            allow_subgroups: self.allow_subgroups,
        }
        .gpu(inputs, out, caps)?;
        let x = &inputs[0];
        let v = rows::variant(caps, self.allow_subgroups, x.cols());
        kernel.source = fill(
            WGSL,
            &[
                ("WG", u(rows::WG)),
                ("T", v.ty.into()),
                ("REDUCE", v.reduce.into()),
                ("HORIZONTAL", v.horizontal.into()),
                ("OUT", "f32".into()),
                ("FINISH", MAX_LOGPROB_FINISH.into()),
            ],
        )
        .into();
        kernel.key = format!("max_logprob.{}", v.key);
        Ok(kernel)
    }
}

/// Rows of 1 to 50k columns, vec4 and ragged widths, both reductions.
pub fn cases() -> Vec<OpCase> {
    let f = |s: &[usize]| TensorDesc::f32(s);
    // exp differs by a few ulp between GPU and CPU; outputs are <= 1, and a
    // sum of up to 50k terms in f32 adds ~1e-5 relative.
    let tol = Tolerance::new(1e-6, 1e-4);
    let shapes: [&[usize]; 7] = [
        &[1],
        &[7],
        &[3, 1],
        &[5, 33],
        &[2, 3, 256],
        &[64, 4096],
        &[3, 50_001],
    ];
    let mut cases = Vec::new();
    for shape in shapes {
        for allow_subgroups in [true, false] {
            let op = Softmax { allow_subgroups };
            cases.push(OpCase::new(op, vec![f(shape)], tol).dist(Dist::uniform(-10.0, 10.0)));
            let op = MaxLogProb { allow_subgroups };
            cases.push(OpCase::new(op, vec![f(shape)], tol).dist(Dist::uniform(-10.0, 10.0)));
        }
    }
    // A vocabulary-sized row of logits as a model gives them.
    let logits = || OpCase::new(MaxLogProb::default(), vec![f(&[8, 49_152])], tol);
    cases.push(logits().dist(Dist::uniform(-20.0, 30.0)));
    // Without the max subtracted, exp(90) would overflow f32.
    cases.push(
        OpCase::new(Softmax::default(), vec![f(&[4, 1000])], tol).dist(Dist::uniform(50.0, 90.0)),
    );
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_logprob_is_ln_of_the_largest_probability() {
        let x = CpuTensor::from_f32([2, 3], vec![1.0, 2.0, 3.0, 0.5, 0.5, 0.5]).unwrap();
        let op = MaxLogProb::default();
        assert_eq!(
            op.output(&[x.desc().clone()]).unwrap(),
            TensorDesc::f32([2])
        );
        let mut out = CpuTensor::zeros(&TensorDesc::f32([2])).unwrap();
        op.cpu(&[&x], &mut out).unwrap();
        let o = out.as_f32().unwrap();
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        assert!((f64::from(o[0]) - (3f64.exp() / z).ln()).abs() < 1e-6);
        assert!((f64::from(o[1]) + 3f64.ln()).abs() < 1e-6);
        assert!(op.output(&[TensorDesc::f32([2, 0])]).is_err());
    }

    #[test]
    fn rows_sum_to_one() {
        let x = CpuTensor::from_f32([2, 3], vec![1.0, 2.0, 3.0, 1000.0, 1000.0, -5.0]).unwrap();
        let mut out = CpuTensor::zeros(x.desc()).unwrap();
        Softmax::default().cpu(&[&x], &mut out).unwrap();
        let o = out.as_f32().unwrap();
        assert!((o[0..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((o[3] - 0.5).abs() < 1e-6 && o[5] == 0.0);
    }
}
