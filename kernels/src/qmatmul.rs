//! Matrix multiplication by a quantized weight: `y[.., M, N] = x[.., M, K] ·
//! Wᵀ` with `W: [N, K]` in Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K
//! or F16 (ggml's linear-layer convention), x and y F32. Batch dimensions of
//! x share W, so they fold into M. Accumulation is f32 on dequantized
//! weights: unlike llama.cpp, x is never quantized to Q8, so results are as
//! close to the exact product as f32 allows.
//!
//! W is read in the GPU layout of [`crate::layout`] (blocks split into
//! aligned sections). K must be a whole number of blocks (32 for the legacy
//! types, 256 for the K-quants) and, for F16, of 8 values.
//!
//! Kernel: `qmatmul_matvec.wgsl`, one workgroup per 2 weight rows and 8 rows
//! of x, invocations striding K and a subgroup (or workgroup-memory)
//! reduction. Made for decode (M = 1..8); larger M runs as M / 8 such
//! workgroup columns, correct but re-reading W once per 8 rows.

use rayon::prelude::*;

use crate::cases::{OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::layout;
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::quant;
use crate::template::{fill, u};
use crate::tensor::{CpuTensor, TensorDesc};

const WGSL_MATVEC: &str = include_str!("../wgsl/qmatmul_matvec.wgsl");
const WGSL_DECODE: &str = include_str!("../wgsl/qmatmul_decode.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("../wgsl/qmatmul_reduce_subgroup.wgsl");
const REDUCE_WORKGROUP: &str = include_str!("../wgsl/qmatmul_reduce_workgroup.wgsl");
const NAME: &str = "qmatmul";

/// Weight dtypes the kernels decode.
pub const WEIGHT_DTYPES: [DType; 9] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
    DType::F16,
];

/// Invocations per workgroup of the matvec kernel.
const WG: u32 = 64;
/// Weight rows per workgroup.
const ROWS: u32 = 2;
/// Most rows of x per workgroup (one W chunk serves all of them).
const MAX_MR: u32 = 8;

/// Mirrors `Params` in `qmatmul_matvec.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    chunks: u32,
    blocks: u32,
    s1: u32,
    s2: u32,
    s3: u32,
}

/// The op: `x · Wᵀ` with W quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QMatMul {
    /// Use the subgroup reduction when the device has subgroups. Off only
    /// to test the workgroup-memory reduction on such a device.
    pub allow_subgroups: bool,
}

impl Default for QMatMul {
    fn default() -> QMatMul {
        QMatMul {
            allow_subgroups: true,
        }
    }
}

/// The dimensions an input pair describes: `m` counts every batch's rows.
#[derive(Clone, Copy, Debug)]
struct Dims {
    m: usize,
    n: usize,
    k: usize,
}

/// The helpers of `qmatmul_decode.wgsl` and `dtype`'s decoder
/// (`decode_<name>`), alone: a decoder for another chunk size would index
/// `wv` out of bounds. Empty when no decoder exists (callers check dtypes).
pub(crate) fn decoder_source(dtype: DType) -> String {
    let mut parts = WGSL_DECODE.split("// @decoder ");
    let helpers = parts.next().unwrap_or_default();
    let decoder = parts
        .find(|p| p.split_whitespace().next() == Some(dtype.name()))
        .unwrap_or_default();
    format!("{helpers}// {decoder}")
}

/// Values per chunk: what one invocation decodes at a time.
fn chunk_len(dtype: DType) -> usize {
    if dtype == DType::F16 {
        8
    } else {
        32
    }
}

fn dims(inputs: &[TensorDesc]) -> Result<Dims, OpError> {
    check::arity(NAME, inputs, 2)?;
    let (x, w) = (&inputs[0], &inputs[1]);
    check::dtype(NAME, x, &[DType::F32], "x")?;
    check::dtype(NAME, w, &WEIGHT_DTYPES, "the weight")?;
    if x.shape.is_empty() || w.shape.len() != 2 {
        return Err(check::shape_err(
            NAME,
            inputs,
            "x needs a dimension and W must be [N, K]",
        ));
    }
    let (n, k) = (w.shape[0], w.shape[1]);
    if x.cols() != k {
        return Err(check::shape_err(
            NAME,
            inputs,
            format!("x has K = {}, W has K = {k}", x.cols()),
        ));
    }
    let unit = w.dtype.block_size().max(chunk_len(w.dtype));
    if k % unit != 0 {
        return Err(check::shape_err(
            NAME,
            inputs,
            format!("K = {k} is not a multiple of {unit} ({})", w.dtype),
        ));
    }
    let m = x.rows();
    check::numel_u32(NAME, inputs, x)?;
    layout::gpu_bytes(w)
        .and_then(|b| u32::try_from(b / 4).ok())
        .ok_or_else(|| check::shape_err(NAME, inputs, "W has more than 2^32 words"))?;
    m.checked_mul(n)
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| check::shape_err(NAME, inputs, "y has more than 2^32 elements"))?;
    Ok(Dims { m, n, k })
}

impl Op for QMatMul {
    fn name(&self) -> &'static str {
        NAME
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        let d = dims(inputs)?;
        let x = &inputs[0].shape;
        let mut shape = x[..x.len() - 1].to_vec();
        shape.push(d.n);
        Ok(TensorDesc::f32(shape))
    }

    /// Dequantize W (ggml's arithmetic), then an f64-accumulated product:
    /// the reference's own rounding is negligible next to the GPU's.
    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let descs = [inputs[0].desc().clone(), inputs[1].desc().clone()];
        let Dims { n, k, .. } = dims(&descs)?;
        let x = inputs[0]
            .to_f32()
            .map_err(|_| check::not_f32(NAME, inputs[0].dtype()))?;
        let w = quant::dequantize_to_vec(inputs[1].dtype(), &inputs[1].bytes())
            .map_err(|_| check::not_f32(NAME, inputs[1].dtype()))?;
        let y = out.as_f32_mut().ok_or(check::not_f32(NAME, DType::F32))?;
        if n == 0 || k == 0 {
            y.iter_mut().for_each(|v| *v = 0.0);
            return Ok(());
        }
        y.par_chunks_mut(n)
            .zip(x.par_chunks(k))
            .for_each(|(y_row, x_row)| {
                for (out, w_row) in y_row.iter_mut().zip(w.chunks_exact(k)) {
                    let sum: f64 = x_row
                        .iter()
                        .zip(w_row)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum();
                    *out = sum as f32;
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
        let d = dims(inputs)?;
        let wd = inputs[1].dtype;
        let sg = self.allow_subgroups && caps.subgroups;
        let mr = (d.m as u32).clamp(1, MAX_MR);
        let chunk = chunk_len(wd);
        let offsets = layout::section_offsets(&inputs[1]).unwrap_or_default();
        let off = |i: usize| offsets.get(i).map_or(0, |&o| o as u32);
        // dims() checked that every count fits u32.
        let params = Params {
            m: d.m as u32,
            n: d.n as u32,
            k: d.k as u32,
            chunks: (d.k / chunk) as u32,
            blocks: (d.k / wd.block_size()) as u32,
            s1: off(1),
            s2: off(2),
            s3: off(3),
        };
        let reduce = if sg {
            REDUCE_SUBGROUP
        } else {
            REDUCE_WORKGROUP
        };
        let source = fill(
            WGSL_MATVEC,
            &[
                ("WG", u(WG)),
                ("ROWS", u(ROWS)),
                ("MR", u(mr)),
                ("CHUNK", u(chunk as u32)),
                ("DECODERS", decoder_source(wd)),
                ("DECODE", format!("decode_{}", wd.name())),
                ("REDUCE", reduce.into()),
            ],
        );
        let wg_rows = (d.n as u32).div_ceil(ROWS);
        let mut workgroups = grid(wg_rows, caps.max_workgroups_per_dimension);
        workgroups[2] = (d.m as u32).div_ceil(mr).max(1);
        if workgroups[2] > caps.max_workgroups_per_dimension {
            return Err(check::shape_err(
                NAME,
                inputs,
                format!("M = {} needs too many workgroups", d.m),
            ));
        }
        Ok(GpuKernel {
            key: format!(
                "qmatmul.matvec.{}.mr{mr}.{}",
                wd,
                if sg { "sg" } else { "wg" }
            ),
            source: source.into(),
            entry: "main",
            params: params_bytes(&params),
            workgroups,
        })
    }
}

/// Every weight type on decode shapes (M = 1, 2, 7), a batched x, and
/// prefill-sized M (33, 64); K from one block to 1536; ragged N.
pub fn cases() -> Vec<OpCase> {
    let f = |s: &[usize]| TensorDesc::f32(s);
    let mut cases = Vec::new();
    for wd in WEIGHT_DTYPES {
        let ks: [usize; 3] = if wd.block_size() == 256 {
            [256, 768, 1536]
        } else {
            [32, 576, 1536]
        };
        let shapes: [(&[usize], usize, usize); 6] = [
            (&[1], ks[0], 1),
            (&[1], ks[2], 49),
            (&[2], ks[1], 3),
            (&[7], ks[1], 576),
            (&[2, 3], ks[0], 1000),
            (&[33], ks[2], 49),
        ];
        for (i, (m, k, n)) in shapes.into_iter().enumerate() {
            let mut x = m.to_vec();
            x.push(k);
            let op = QMatMul {
                allow_subgroups: i % 2 == 0,
            };
            cases.push(OpCase::new(
                op,
                vec![f(&x), TensorDesc::new(wd, [n, k])],
                tolerance(k),
            ));
        }
        let op = QMatMul::default();
        cases.push(OpCase::new(
            op,
            vec![f(&[64, ks[1]]), TensorDesc::new(wd, [576, ks[1]])],
            tolerance(ks[1]),
        ));
    }
    cases
}

/// With x and the dequantized W of magnitude <= 1, a K-term dot product has
/// magnitude ~sqrt(K) (random signs) and its partial sums too; f32
/// accumulation in any order errs by ~eps * sqrt(K) * sqrt(K) on the
/// pessimistic side. 8 eps * K covers it with room, and stays far below
/// the error of a wrongly decoded value (>= 1/16 of a scale).
fn tolerance(k: usize) -> Tolerance {
    Tolerance::new(8.0 * f32::EPSILON * k as f32, 1e-5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_ragged_k_and_bad_dtypes() {
        let f = |s: &[usize]| TensorDesc::f32(s);
        let op = QMatMul::default();
        assert!(op
            .output(&[f(&[1, 48]), TensorDesc::new(DType::Q8_0, [3, 48])])
            .is_err());
        assert!(op
            .output(&[f(&[1, 32]), TensorDesc::new(DType::Q4K, [3, 32])])
            .is_err());
        assert!(op
            .output(&[f(&[1, 32]), TensorDesc::new(DType::Q8_1, [3, 32])])
            .is_err());
        let out = op
            .output(&[f(&[2, 5, 64]), TensorDesc::new(DType::Q4_1, [7, 64])])
            .unwrap();
        assert_eq!(out.shape, vec![2, 5, 7]);
    }
}
