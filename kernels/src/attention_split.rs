//! Decode attention split over key chunks ("flash decoding"): one query's
//! keys are too few to keep a big GPU busy with one workgroup per head, and
//! at long contexts a head's workgroup walks thousands of keys alone. So
//! [`AttentionPartials`] runs one workgroup per (query, head, chunk of
//! `chunk` keys), each leaving its chunk's unnormalised output, max score
//! and sum of exponentials, and [`AttentionCombine`] rescales and sums the
//! chunks. Chunks past the visible keys cost one empty workgroup each.
//!
//! Partials: `[T, n_head, chunks, head_dim + 2]` F32, per chunk `acc[d] =
//! sum_j exp(s_j - m) v_j[d]`, then `m = max_j s_j`, then `l = sum_j
//! exp(s_j - m)` (an empty chunk: acc 0, m the lowest f32, l 0).

use rayon::prelude::*;

use crate::attention::{check_inputs, io_hole, softmax_sum, visible, AttnConfig, Params};
use crate::cases::{Dist, OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::kv_append::read_pos;
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::template::{fill, u};
use crate::tensor::{CpuTensor, TensorDesc};

const WGSL: &str = include_str!("../wgsl/attention.wgsl");
const COMBINE_WGSL: &str = include_str!("../wgsl/attention_combine.wgsl");
const REDUCE_WORKGROUP: &str = include_str!("../wgsl/reduce_workgroup.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("../wgsl/reduce_subgroup.wgsl");

/// The end of attention.wgsl split: the chunk's partials.
const FINISH: &str = "let base = (item * CHUNKS + chunk) * (HD + 2u);
        out[base + lid] = o;
        if lid == 0u {
            out[base + HD] = m;
            out[base + HD + 1u] = l;
        }";

/// Keys per chunk, = invocations per workgroup: one key each in the
/// scores, `CHUNK / head_dim` key splits in p . V (so head_dim <= CHUNK).
/// Smaller chunks give short contexts more workgroups but each one longer
/// serial loops; measured on the H200, 256 wins up to tg1024.
pub const CHUNK: usize = 256;

/// Per-chunk attention partials; see the module docs. Inputs as
/// [`crate::attention::Attention`]'s: q, k cache, v cache, pos.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionPartials {
    pub cfg: AttnConfig,
    /// Use subgroup reductions when the device has them.
    pub allow_subgroups: bool,
}

impl AttentionPartials {
    pub fn new(cfg: AttnConfig) -> AttentionPartials {
        AttentionPartials {
            cfg,
            allow_subgroups: true,
        }
    }
}

/// Chunks, chunk size and head size of an input set.
fn layout(op: &'static str, inputs: &[TensorDesc]) -> Result<(usize, usize, usize), OpError> {
    let d = check_inputs(op, inputs)?;
    if d.head_dim > CHUNK {
        return Err(OpError::Unsupported {
            op,
            what: format!("head_dim {} > {CHUNK}", d.head_dim),
        });
    }
    Ok((d.ctx.div_ceil(CHUNK), CHUNK, d.head_dim))
}

impl Op for AttentionPartials {
    fn name(&self) -> &'static str {
        "attention_partials"
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        let (chunks, _, hd) = layout(self.name(), inputs)?;
        let q = &inputs[0].shape;
        Ok(TensorDesc::f32([q[0], q[1], chunks, hd + 2]))
    }

    /// Per chunk in f64: the max score, the sum of exponentials and the
    /// weighted values relative to that max.
    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let op = self.name();
        let descs: Vec<TensorDesc> = inputs.iter().map(|t| t.desc().clone()).collect();
        let (chunks, chunk, hd) = layout(op, &descs)?;
        let d = check_inputs(op, &descs)?;
        let f32_of = |i: usize| {
            inputs[i]
                .to_f32()
                .map_err(|_| check::not_f32(op, inputs[i].dtype()))
        };
        let (q, k, v) = (f32_of(0)?, f32_of(1)?, f32_of(2)?);
        let pos = read_pos(op, inputs[3])?;
        let group = d.n_head / d.n_kv;
        let o = out.as_f32_mut().ok_or(check::not_f32(op, DType::F32))?;
        o.par_chunks_mut(hd + 2).enumerate().for_each(|(i, o)| {
            let (item, c) = (i / chunks, i % chunks);
            let (t, h) = (item / d.n_head, item % d.n_head);
            let qv = &q[item * hd..(item + 1) * hd];
            let seen = visible(pos.wrapping_add(t as i32), d.ctx, self.cfg.window);
            let keys = seen.start.max(c * chunk)..seen.end.min((c + 1) * chunk);
            let row = |j: usize| (j * d.n_kv + h / group) * hd..(j * d.n_kv + h / group + 1) * hd;
            let (acc, m, l) = softmax_sum(qv, &k, &v, keys, row, self.cfg.scale);
            for (o, a) in o.iter_mut().zip(&acc) {
                *o = *a as f32;
            }
            o[hd] = if l > 0.0 { m as f32 } else { f32::MIN };
            o[hd + 1] = l as f32;
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
        let (chunks, chunk, hd) = layout(op, inputs)?;
        let d = check_inputs(op, inputs)?;
        let params = Params::new(op, inputs, d, self.cfg)?;
        let sg = self.allow_subgroups && caps.subgroups;
        let (io, kv_key) = io_hole(d.kv_dtype);
        let chunks_u = check::dim_u32(op, inputs, chunks)?;
        let source = fill(
            WGSL,
            &[
                io,
                ("WG", u(chunk as u32)),
                ("HD", u(hd as u32)),
                ("CHUNKS", u(chunks_u)),
                ("FINISH", FINISH.into()),
                (
                    "REDUCE",
                    if sg {
                        REDUCE_SUBGROUP
                    } else {
                        REDUCE_WORKGROUP
                    }
                    .into(),
                ),
            ],
        );
        let items = params
            .n_q
            .checked_mul(params.n_head)
            .and_then(|n| n.checked_mul(chunks_u))
            .ok_or_else(|| check::shape_err(op, inputs, "too many (query, head, chunk) items"))?;
        Ok(GpuKernel {
            key: format!(
                "attention_partials.hd{hd}.c{chunk}.n{chunks}.{kv_key}.{}",
                if sg { "sg" } else { "wg" }
            ),
            source: source.into(),
            entry: "main",
            params: params_bytes(&params),
            workgroups: grid(items, caps.max_workgroups_per_dimension),
        })
    }
}

/// Sums [`AttentionPartials`]' chunks into `[T, n_head, head_dim]`:
/// `sum_c acc_c exp(m_c - M) / sum_c l_c exp(m_c - M)`, M the largest m_c;
/// zeros where no chunk saw a key.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AttentionCombine;

/// Mirrors `Params` in `attention_combine.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct CombineParams {
    items: u32,
    chunks: u32,
    hd: u32,
    _pad: u32,
}

/// Invocations per (query, head) of the combine.
const COMBINE_WG: u32 = 64;

fn combine_dims(inputs: &[TensorDesc]) -> Result<[usize; 4], OpError> {
    let op = "attention_combine";
    check::arity(op, inputs, 1)?;
    check::dtype(op, &inputs[0], &[DType::F32], "the partials")?;
    match inputs[0].shape.as_slice() {
        &[t, h, c, w] if t * h * c > 0 && w > 2 => {
            check::numel_u32(op, inputs, &inputs[0])?;
            Ok([t, h, c, w - 2])
        }
        _ => Err(check::shape_err(
            op,
            inputs,
            "partials must be [T, n_head, chunks, head_dim + 2]",
        )),
    }
}

impl Op for AttentionCombine {
    fn name(&self) -> &'static str {
        "attention_combine"
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        let [t, h, _, hd] = combine_dims(inputs)?;
        Ok(TensorDesc::f32([t, h, hd]))
    }

    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let [_, _, chunks, hd] = combine_dims(&[inputs[0].desc().clone()])?;
        let part = inputs[0]
            .to_f32()
            .map_err(|_| check::not_f32(self.name(), inputs[0].dtype()))?;
        let o = out
            .as_f32_mut()
            .ok_or(check::not_f32(self.name(), DType::F32))?;
        o.par_chunks_mut(hd)
            .zip(part.par_chunks(chunks * (hd + 2)))
            .for_each(|(o, p)| {
                let rows: Vec<&[f32]> = p.chunks_exact(hd + 2).collect();
                let big = rows
                    .iter()
                    .map(|r| f64::from(r[hd]))
                    .fold(f64::NEG_INFINITY, f64::max);
                let scale: Vec<f64> = rows
                    .iter()
                    .map(|r| (f64::from(r[hd]) - big).exp())
                    .collect();
                let l: f64 = rows
                    .iter()
                    .zip(&scale)
                    .map(|(r, s)| f64::from(r[hd + 1]) * s)
                    .sum();
                for (d, o) in o.iter_mut().enumerate() {
                    let a: f64 = rows
                        .iter()
                        .zip(&scale)
                        .map(|(r, s)| f64::from(r[d]) * s)
                        .sum();
                    *o = if l > 0.0 { (a / l) as f32 } else { 0.0 };
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
        let [t, h, chunks, hd] = combine_dims(inputs)?;
        let u32_of = |x| check::dim_u32(op, inputs, x);
        let params = CombineParams {
            items: u32_of(t * h)?,
            chunks: u32_of(chunks)?,
            hd: u32_of(hd)?,
            _pad: 0,
        };
        Ok(GpuKernel {
            key: "attention_combine".into(),
            source: fill(COMBINE_WGSL, &[("WG", u(COMBINE_WG))]).into(),
            entry: "main",
            params: params_bytes(&params),
            workgroups: grid(params.items, caps.max_workgroups_per_dimension),
        })
    }
}

/// Partials on decode shapes (chunks past, inside and across the visible
/// keys, a window, both cache dtypes and reductions); the combine on
/// partials whose maxima differ, so the rescaling is exercised.
pub fn cases() -> Vec<OpCase> {
    let mut cases = Vec::new();
    let shapes = [(1, 9, 3, 64, 600), (2, 4, 4, 128, 700), (1, 2, 1, 5, 7)];
    for (i, shape) in shapes.into_iter().enumerate() {
        let hd = shape.3;
        for cfg in [AttnConfig::causal(hd), AttnConfig::causal(hd).window(37)] {
            let op = AttentionPartials {
                cfg,
                allow_subgroups: i != 1,
            };
            let dtype = if i == 0 { DType::F16 } else { DType::F32 };
            // Sums of up to a chunk of exponentials <= 1: relative error.
            let mut case = crate::attention::case(op, shape, dtype);
            case.tolerance = Tolerance::new(1e-5, 1e-4);
            cases.push(case);
        }
    }
    for (t, h, c, hd) in [(1, 9, 4, 64), (2, 3, 7, 128), (1, 1, 1, 5)] {
        let case = OpCase::new(
            AttentionCombine,
            vec![TensorDesc::f32([t, h, c, hd + 2])],
            Tolerance::new(1e-5, 1e-5),
        )
        // Positive l; maxima spread over a few units.
        .dist(Dist::uniform(0.25, 4.0));
        cases.push(case);
    }
    cases
}
