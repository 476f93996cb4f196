//! Causal attention for decode (a few queries against the KV cache), and
//! what it shares with [`crate::flash_attn`] (prefill): the inputs, their
//! checks and the naive CPU reference both are tested against.
//!
//! Inputs: q `[T, n_head, head_dim]` F32, the caches k and v
//! `[ctx, n_kv, head_dim]` F32, and pos I32 `[1]`. Query `t` sits at position
//! `pos + t` and sees key `j` iff `j <= pos + t` (causal) and, with a sliding
//! window `w > 0` (Mistral), `pos + t - j < w`. Head `h` reads kv head
//! `h / (n_head / n_kv)` (grouped-query attention). Output
//! `[T, n_head, head_dim]`; a query that sees no key (pos + t < 0) gets zeros.

use rayon::prelude::*;

use crate::cases::{OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::kv_append::{check_pos, read_pos};
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::template::{fill, u};
use crate::tensor::{CpuTensor, TensorDesc};

const WGSL: &str = include_str!("../wgsl/attention.wgsl");
const IO_WGSL: &str = include_str!("../wgsl/attn_io.wgsl");
const REDUCE_WORKGROUP: &str = include_str!("../wgsl/reduce_workgroup.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("../wgsl/reduce_subgroup.wgsl");

/// The end of attention.wgsl unsplit: the normalised output (zeros where
/// no key is visible, a position before 0, like the reference).
const FINISH: &str = "out[item * HD + lid] = select(0.0, o / l, l > 0.0);";

/// Invocations per (query, head): one key each per block, and up to
/// `WG / head_dim` key splits in `p . V`. 256 is WebGPU's guaranteed minimum.
const WG: u32 = 256;

/// What both attention kernels compute, beyond the shapes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnConfig {
    /// Multiplies `q . k`; `1 / sqrt(head_dim)` for LLaMA-family models.
    pub scale: f32,
    /// Sliding window in positions (Mistral); 0 = off.
    pub window: u32,
}

impl AttnConfig {
    /// Plain causal attention scaled by `1 / sqrt(head_dim)`.
    pub fn causal(head_dim: usize) -> AttnConfig {
        AttnConfig {
            scale: 1.0 / (head_dim as f32).sqrt(),
            window: 0,
        }
    }

    pub fn window(self, window: u32) -> AttnConfig {
        AttnConfig { window, ..self }
    }
}

/// The sizes of one attention problem, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dims {
    pub n_q: usize,
    pub n_head: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub ctx: usize,
    /// F32 or F16 caches.
    pub kv_dtype: DType,
}

/// The `{{IO}}` hole of both attention kernels (`attn_io.wgsl`: params,
/// bindings and the `k_at`/`v_at` loaders) for a cache dtype, and a key
/// suffix naming the choice.
pub(crate) fn io_hole(dtype: DType) -> ((&'static str, String), &'static str) {
    let (kv, load, key) = if dtype == DType::F16 {
        let load = "fn k_at(i: u32) -> f32 { return unpack2x16float(k[i >> 1u])[i & 1u]; }\n\
                    fn v_at(i: u32) -> f32 { return unpack2x16float(v[i >> 1u])[i & 1u]; }\n";
        ("u32", load, "f16")
    } else {
        let load = "fn k_at(i: u32) -> f32 { return k[i]; }\n\
                    fn v_at(i: u32) -> f32 { return v[i]; }\n";
        ("f32", load, "f32")
    };
    let io = fill(IO_WGSL, &[("KV", kv.into()), ("KV_LOAD", load.into())]);
    (("IO", io), key)
}

/// Checks q, k, v, pos and returns their sizes.
pub(crate) fn check_inputs(op: &'static str, inputs: &[TensorDesc]) -> Result<Dims, OpError> {
    check::arity(op, inputs, 4)?;
    let (q, k, v, pos) = (&inputs[0], &inputs[1], &inputs[2], &inputs[3]);
    check::dtype(op, q, &[DType::F32], "queries")?;
    check::dtype(op, k, &[DType::F32, DType::F16], "the key cache")?;
    check::dtype(op, v, &[k.dtype], "the value cache (the key cache's dtype)")?;
    check_pos(op, inputs, pos)?;
    let err = |why: &str| check::shape_err(op, inputs, why);
    let (&[n_q, n_head, head_dim], &[ctx, n_kv, kd]) = (q.shape.as_slice(), k.shape.as_slice())
    else {
        return Err(err(
            "q must be [T, n_head, head_dim] and k [ctx, n_kv, head_dim]",
        ));
    };
    if v.shape != k.shape {
        return Err(err("k and v caches must have the same shape"));
    }
    if kd != head_dim || head_dim == 0 {
        return Err(err("q and k must share a non-zero head_dim"));
    }
    // The GPU reads an F16 cache as u32 pairs.
    if k.dtype == DType::F16 && head_dim % 2 == 1 {
        return Err(err("an F16 cache needs an even head_dim"));
    }
    if n_q == 0 || n_kv == 0 || n_head % n_kv != 0 {
        return Err(err("need T > 0 and n_head a multiple of n_kv > 0"));
    }
    for d in [q, k] {
        check::numel_u32(op, inputs, d)?;
    }
    Ok(Dims {
        n_q,
        n_head,
        n_kv,
        head_dim,
        ctx,
        kv_dtype: k.dtype,
    })
}

/// The keys query position `pq` sees: `lo..hi`.
pub(crate) fn visible(pq: i32, ctx: usize, window: u32) -> std::ops::Range<usize> {
    let Ok(pq) = usize::try_from(pq) else {
        return 0..0;
    };
    let hi = (pq + 1).min(ctx);
    let lo = if window > 0 {
        (pq + 1).saturating_sub(window as usize)
    } else {
        0
    };
    lo..hi.max(lo)
}

/// The naive reference: scores, softmax and weighted sum per (query, head),
/// accumulated in f64.
pub(crate) fn naive(
    op: &'static str,
    cfg: AttnConfig,
    inputs: &[&CpuTensor],
    out: &mut CpuTensor,
) -> Result<(), OpError> {
    let f32_of = |i: usize| {
        inputs[i]
            .to_f32()
            .map_err(|_| check::not_f32(op, inputs[i].dtype()))
    };
    let (q, k, v) = (f32_of(0)?, f32_of(1)?, f32_of(2)?);
    let pos = read_pos(op, inputs[3])?;
    let d = check_inputs(
        op,
        &[inputs[0], inputs[1], inputs[2], inputs[3]].map(|t| t.desc().clone()),
    )?;
    let (hd, group) = (d.head_dim, d.n_head / d.n_kv);
    let o = out.as_f32_mut().ok_or(check::not_f32(op, DType::F32))?;
    o.par_chunks_mut(hd).enumerate().for_each(|(item, o)| {
        let (t, h) = (item / d.n_head, item % d.n_head);
        let qv = &q[item * hd..(item + 1) * hd];
        let keys = visible(pos.wrapping_add(t as i32), d.ctx, cfg.window);
        // Row j of kv head h / group in a [ctx, n_kv, hd] cache.
        let row = |j: usize| (j * d.n_kv + h / group) * hd..(j * d.n_kv + h / group + 1) * hd;
        let (acc, _, sum) = softmax_sum(qv, &k, &v, keys, row, cfg.scale);
        for (o, a) in o.iter_mut().zip(acc) {
            *o = if sum > 0.0 { (a / sum) as f32 } else { 0.0 };
        }
    });
    Ok(())
}

/// The f64 attention of one query over `keys` (row `row(j)` of the
/// caches): `(sum_j e^(s_j - m) v_j, m, sum_j e^(s_j - m))` with the scores
/// `s_j = scale q.k_j` and `m` their max (-inf, and zeros, for no key).
pub(crate) fn softmax_sum(
    qv: &[f32],
    k: &[f32],
    v: &[f32],
    keys: std::ops::Range<usize>,
    row: impl Fn(usize) -> std::ops::Range<usize>,
    scale: f32,
) -> (Vec<f64>, f64, f64) {
    let scores: Vec<f64> = keys
        .clone()
        .map(|j| {
            let dot: f64 = qv
                .iter()
                .zip(&k[row(j)])
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            dot * f64::from(scale)
        })
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut acc = vec![0f64; qv.len()];
    let mut sum = 0.0;
    for (j, s) in keys.zip(&scores) {
        let w = (s - max).exp();
        sum += w;
        for (a, &x) in acc.iter_mut().zip(&v[row(j)]) {
            *a += w * f64::from(x);
        }
    }
    (acc, max, sum)
}

/// Decode attention: one workgroup per (query, head), keys by blocks with an
/// online softmax. For any T, but meant for T of 1 to a few; prefill uses
/// [`crate::flash_attn::FlashAttention`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attention {
    pub cfg: AttnConfig,
    /// Use subgroup reductions when the device has them. Off only to test
    /// the workgroup-memory reduction on such a device.
    pub allow_subgroups: bool,
}

impl Attention {
    pub fn new(cfg: AttnConfig) -> Attention {
        Attention {
            cfg,
            allow_subgroups: true,
        }
    }
}

/// Mirrors `Params` in `attention.wgsl` (and `flash_attn.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    pub n_q: u32,
    pub n_head: u32,
    pub n_kv: u32,
    pub ctx: u32,
    pub group: u32,
    pub window: u32,
    pub scale: f32,
    pub _pad: u32,
}

impl Params {
    pub(crate) fn new(
        op: &'static str,
        inputs: &[TensorDesc],
        d: Dims,
        cfg: AttnConfig,
    ) -> Result<Params, OpError> {
        let u = |x| check::dim_u32(op, inputs, x);
        Ok(Params {
            n_q: u(d.n_q)?,
            n_head: u(d.n_head)?,
            n_kv: u(d.n_kv)?,
            ctx: u(d.ctx)?,
            group: u(d.n_head / d.n_kv)?,
            window: cfg.window,
            scale: cfg.scale,
            _pad: 0,
        })
    }
}

impl Op for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        check_inputs(self.name(), inputs)?;
        Ok(inputs[0].clone())
    }

    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        naive(self.name(), self.cfg, inputs, out)
    }

    fn gpu(
        &self,
        inputs: &[TensorDesc],
        _out: &TensorDesc,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        let op = self.name();
        let d = check_inputs(op, inputs)?;
        let params = Params::new(op, inputs, d, self.cfg)?;
        // p . V gives each invocation one output dimension of a key split.
        if d.head_dim > WG as usize {
            return Err(OpError::Unsupported {
                op,
                what: format!("head_dim {} > {WG}", d.head_dim),
            });
        }
        let sg = self.allow_subgroups && caps.subgroups;
        let hd = check::dim_u32(op, inputs, d.head_dim)?;
        let (io, kv_key) = io_hole(d.kv_dtype);
        let source = fill(
            WGSL,
            &[
                io,
                ("WG", u(WG)),
                ("HD", u(hd)),
                ("CHUNKS", u(1)),
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
        Ok(GpuKernel {
            key: format!("attention.hd{hd}.{kv_key}.{}", if sg { "sg" } else { "wg" }),
            source: source.into(),
            entry: "main",
            params: params_bytes(&params),
            workgroups: grid(
                params.n_q * params.n_head,
                caps.max_workgroups_per_dimension,
            ),
        })
    }
}

/// One case: q `[t, h, hd]`, caches `[ctx, kv, hd]` in `cache` dtype, pos in
/// `0..=ctx - t`.
pub(crate) fn case(
    op: impl Op + 'static,
    (t, h, kv, hd, ctx): (usize, usize, usize, usize, usize),
    cache: DType,
) -> OpCase {
    let c = |s: [usize; 3]| TensorDesc::new(cache, s);
    let inputs = vec![
        TensorDesc::f32([t, h, hd]),
        c([ctx, kv, hd]),
        c([ctx, kv, hd]),
        TensorDesc::new(DType::I32, [1]),
    ];
    // f32 accumulation over up to a few hundred keys and head_dim 128,
    // against an f64 reference; outputs are convex mixes of values in [-1, 1).
    // An F16 cache costs nothing here: the reference reads the same f16s.
    OpCase::new(op, inputs, Tolerance::new(2e-5, 1e-4)).ints(0, (ctx - t) as i32 + 1)
}

/// Decode shapes: T of 1 to 17, SmolLM2's GQA (9 heads on 3), MHA, head_dim
/// 64 and 128, contexts longer than one key block, with and without a window.
pub fn cases() -> Vec<OpCase> {
    let mut cases = Vec::new();
    for shape in [
        (1, 9, 3, 64, 40),
        (1, 9, 3, 128, 600),
        (3, 4, 4, 128, 20),
        (17, 9, 3, 64, 300),
        (1, 2, 1, 5, 7),
    ] {
        let hd = shape.3;
        for cfg in [AttnConfig::causal(hd), AttnConfig::causal(hd).window(37)] {
            for allow_subgroups in [true, false] {
                cases.push(case(
                    Attention {
                        cfg,
                        allow_subgroups,
                    },
                    shape,
                    DType::F32,
                ));
            }
        }
    }
    // F16 caches, both reductions.
    for allow_subgroups in [true, false] {
        let cfg = AttnConfig::causal(64).window(37);
        let op = Attention {
            cfg,
            allow_subgroups,
        };
        cases.push(case(op, (1, 9, 3, 64, 300), DType::F16));
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_copies_its_value() {
        // pos 0: the query sees key 0 alone, whatever the scores.
        let q = CpuTensor::from_f32([1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let k = CpuTensor::from_f32([2, 1, 2], vec![5.0, 6.0, 7.0, 8.0]).unwrap();
        let v = CpuTensor::from_f32([2, 1, 2], vec![0.5, -0.5, 9.0, 9.0]).unwrap();
        let pos = CpuTensor::from_bytes(
            TensorDesc::new(DType::I32, [1]),
            0i32.to_le_bytes().to_vec(),
        )
        .unwrap();
        let mut out = CpuTensor::zeros(q.desc()).unwrap();
        Attention::new(AttnConfig::causal(2))
            .cpu(&[&q, &k, &v, &pos], &mut out)
            .unwrap();
        assert_eq!(out.as_f32().unwrap(), &[0.5, -0.5, 0.5, -0.5]);
    }

    #[test]
    fn window_limits_the_keys() {
        assert_eq!(visible(5, 100, 0), 0..6);
        assert_eq!(visible(5, 100, 2), 4..6);
        assert_eq!(visible(5, 3, 0), 0..3);
        assert_eq!(visible(-1, 3, 0), 0..0);
        assert_eq!(visible(10, 3, 2), 9..9);
    }
}
