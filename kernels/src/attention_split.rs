//! Decode attention split over key chunks ("flash decoding"): one query's
//! keys are too few to keep a big GPU busy with one workgroup per head, and
//! at long contexts a head's workgroup walks thousands of keys alone. So
//! [`AttentionPartials`] runs one workgroup per (query, head, chunk of
//! [`CHUNK`] keys), each leaving its chunk's unnormalised output, max score
//! and sum of exponentials, and [`AttentionCombine`] rescales and sums the
//! chunks. Inputs and semantics as [`crate::attention`]'s (q, k cache,
//! v cache, seq with one `(start, row)` pair or one per query).
//!
//! Chunk `c` of a query holds its visible keys `lo + c len ..` (`lo` its
//! first visible key, `len` its visible keys over the chunks, rounded up),
//! not rows `c CHUNK ..` of the cache: when several sequences share the
//! cache (continuous batching), each query's chunks follow its own
//! sequence, and a short context still spreads over every chunk's
//! workgroup. The grid needs only enough chunks for the most keys one
//! query sees ([`AttentionPartials::max_len`], the window) at CHUNK keys
//! each, not for the whole cache.
//!
//! Partials: `[T, n_head, chunks, head_dim + 2]` F32, per chunk `acc[d] =
//! sum_j exp(s_j - m) v_j[d]`, then `m = max_j s_j`, then `l = sum_j
//! exp(s_j - m)` (an empty chunk: acc 0, m the lowest f32, l 0).

use rayon::prelude::*;

use crate::attention::{
    check_inputs, io_hole, lanes_per_key, score_holes, softmax_sum, visible, AttnConfig, Dims,
    Params,
};
use crate::cases::{Dist, OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::kv_append::read_seq;
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

/// The most keys per chunk, = invocations per workgroup: a block of keys
/// scored at once, `CHUNK / head_dim` key splits in p . V (so head_dim <=
/// CHUNK). Chunks per query are sized by it (the most keys a query sees /
/// CHUNK); a query with fewer keys spreads them over all of its chunks.
pub const CHUNK: usize = 256;

/// Per-chunk attention partials; see the module docs. Inputs as
/// [`crate::attention::Attention`]'s: q, k cache, v cache, seq.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionPartials {
    pub cfg: AttnConfig,
    /// The most keys any query sees, e.g. the rows of one sequence's slot
    /// when several sequences share the cache; 0 = the cache's rows. The
    /// output has `ceil(min(max_len, window, cache rows) / CHUNK)` chunks
    /// per (query, head), zeros (unset) left out of the min. A promise:
    /// what a query that sees more keys gets is unspecified.
    pub max_len: usize,
    /// Use subgroup reductions when the device has them.
    pub allow_subgroups: bool,
}

impl AttentionPartials {
    pub fn new(cfg: AttnConfig) -> AttentionPartials {
        AttentionPartials {
            cfg,
            max_len: 0,
            allow_subgroups: true,
        }
    }

    /// Chunks enough for `max_len` keys per query (see the field).
    pub fn max_len(self, max_len: usize) -> AttentionPartials {
        AttentionPartials { max_len, ..self }
    }

    /// The checked sizes of an input set and the chunks per (query, head).
    fn layout(&self, inputs: &[TensorDesc]) -> Result<(Dims, usize), OpError> {
        let op = self.name();
        let d = check_inputs(op, inputs)?;
        if d.head_dim > CHUNK {
            return Err(OpError::Unsupported {
                op,
                what: format!("head_dim {} > {CHUNK}", d.head_dim),
            });
        }
        let mut keys = d.ctx;
        if self.max_len > 0 {
            keys = keys.min(self.max_len);
        }
        if self.cfg.window > 0 {
            keys = keys.min(self.cfg.window as usize);
        }
        Ok((d, keys.div_ceil(CHUNK).max(1)))
    }
}

impl Op for AttentionPartials {
    fn name(&self) -> &'static str {
        "attention_partials"
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        let (d, chunks) = self.layout(inputs)?;
        Ok(TensorDesc::f32([d.n_q, d.n_head, chunks, d.head_dim + 2]))
    }

    /// Per chunk in f64: the max score, the sum of exponentials and the
    /// weighted values relative to that max.
    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let op = self.name();
        let descs: Vec<TensorDesc> = inputs.iter().map(|t| t.desc().clone()).collect();
        let (d, chunks) = self.layout(&descs)?;
        let hd = d.head_dim;
        let f32_of = |i: usize| {
            inputs[i]
                .to_f32()
                .map_err(|_| check::not_f32(op, inputs[i].dtype()))
        };
        let (q, k, v) = (f32_of(0)?, f32_of(1)?, f32_of(2)?);
        let seq = read_seq(op, inputs[3], d.n_q)?;
        let group = d.n_head / d.n_kv;
        let o = out.as_f32_mut().ok_or(check::not_f32(op, DType::F32))?;
        o.par_chunks_mut(hd + 2).enumerate().for_each(|(i, o)| {
            let (item, c) = (i / chunks, i % chunks);
            let (t, h) = (item / d.n_head, item % d.n_head);
            let qv = &q[item * hd..(item + 1) * hd];
            let (r, start) = seq.range(t);
            let seen = visible(r, start, d.ctx, self.cfg.window);
            // As the kernel: the visible keys / chunks, rounded up, each.
            let len = seen.len().div_ceil(chunks);
            let lo = seen.start + c * len;
            let keys = lo..seen.end.min(lo + len).max(lo);
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
        let (d, chunks) = self.layout(inputs)?;
        let (chunk, hd) = (CHUNK, d.head_dim);
        let params = Params::new(op, inputs, d, self.cfg)?;
        let sg = self.allow_subgroups && caps.subgroups;
        let lpk = lanes_per_key(hd, sg, caps);
        let (io, kv_key) = io_hole(d.kv_dtype, hd.is_multiple_of(4));
        let [h1, h2, h3] = score_holes(lpk, hd);
        let chunks_u = check::dim_u32(op, inputs, chunks)?;
        let source = fill(
            WGSL,
            &[
                io,
                ("WG", u(chunk as u32)),
                ("HD", u(hd as u32)),
                ("CHUNKS", u(chunks_u)),
                h1,
                h2,
                h3,
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
                "attention_partials.hd{hd}.c{chunk}.n{chunks}.{kv_key}.l{lpk}.{}",
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
/// keys, a window, both cache dtypes and reductions), one sequence or one
/// per query, and batched decode over sequences in slots of a shared cache
/// (`max_len` one slot); the combine on partials whose maxima differ, so
/// the rescaling is exercised.
pub fn cases() -> Vec<OpCase> {
    // Sums of up to a chunk of exponentials <= 1: relative error.
    let tolerance = Tolerance::new(1e-5, 1e-4);
    let mut cases = Vec::new();
    let shapes = [
        (1, 9, 3, 64, 600),
        (2, 4, 4, 128, 700),
        (1, 2, 1, 5, 7),
        (5, 9, 3, 64, 600),
    ];
    for (i, shape) in shapes.into_iter().enumerate() {
        let (t, hd, ctx) = (shape.0, shape.3, shape.4);
        // A window over two chunks where the cache has them.
        let window = if ctx > CHUNK { 300 } else { 37 };
        for cfg in [
            AttnConfig::causal(hd),
            AttnConfig::causal(hd).window(window),
        ] {
            let op = AttentionPartials {
                allow_subgroups: i != 1,
                ..AttentionPartials::new(cfg)
            };
            let dtype = if i == 0 { DType::F16 } else { DType::F32 };
            for per_query in [false, true] {
                if per_query && t == 1 {
                    continue;
                }
                let mut case = crate::attention::case(op, shape, dtype, per_query);
                case.tolerance = tolerance;
                cases.push(case);
            }
        }
    }
    // Six queries in three slots of 300 rows, GQA, F16: query i in slot
    // i % 3 sees keys from the slot's first row; query 4 sees none.
    let (slots, len, hd) = (3, 300, 64);
    let seq = (0..6).flat_map(|i| {
        let start = (i % slots * len) as i32;
        let rows = if i == 4 {
            (start - 3, start)
        } else {
            (start, start + len as i32)
        };
        [(start, start + 1), rows]
    });
    let seq: Vec<_> = seq.collect();
    for cfg in [AttnConfig::causal(hd), AttnConfig::causal(hd).window(280)] {
        let op = AttentionPartials::new(cfg).max_len(len);
        let inputs = crate::attention::inputs((6, 9, 3, hd, slots * len), DType::F16, 6);
        cases.push(OpCase::new(op, inputs, tolerance).int_ranges(seq.clone()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{qkv, run};
    use crate::attention::Attention;
    use crate::kv_append::seq_tensor;

    /// Combines the partials `op` gives for `inputs`.
    fn split(op: AttentionPartials, inputs: &[&CpuTensor]) -> Vec<f32> {
        let descs: Vec<_> = inputs.iter().map(|t| t.desc().clone()).collect();
        let part = CpuTensor::from_f32(op.output(&descs).unwrap().shape, run(&op, inputs));
        run(&AttentionCombine, &[&part.unwrap()])
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-5, "{what}: at [{i}] got {g}, want {w}");
        }
    }

    #[test]
    fn chunks_cover_the_most_keys_a_query_sees() {
        let inputs = crate::attention::inputs((2, 4, 2, 8, 1000), DType::F32, 2);
        let chunks = |op: AttentionPartials| op.output(&inputs).unwrap().shape[2];
        let causal = AttentionPartials::new(AttnConfig::causal(8));
        assert_eq!(chunks(causal), 4);
        assert_eq!(chunks(causal.max_len(300)), 2);
        assert_eq!(chunks(causal.max_len(5000)), 4);
        let window = AttentionPartials::new(AttnConfig::causal(8).window(100));
        assert_eq!(chunks(window), 1);
        assert_eq!(chunks(window.max_len(50)), 1);
    }

    #[test]
    fn combined_partials_are_attention_for_sequences_in_slots() {
        // Three slots of 600 rows (chunks of one slot: 3, of the cache: 8);
        // queries at the start of a slot, across chunk edges, at its end,
        // and one that sees nothing.
        let (t, h, hd, len) = (5, 4, 8, 600);
        let [q, k, v] = qkv(3, (t, h, 2, hd, 3 * len));
        let pairs = [(0, 0), (600, 600 + 300), (1200, 1799), (600, 599), (0, 513)];
        let seq = seq_tensor(&pairs).unwrap();
        for cfg in [AttnConfig::causal(hd), AttnConfig::causal(hd).window(260)] {
            let want = run(&Attention::new(cfg), &[&q, &k, &v, &seq]);
            let op = AttentionPartials::new(cfg).max_len(len);
            let got = split(op, &[&q, &k, &v, &seq]);
            assert_close(&got, &want, &format!("{cfg:?}"));
            // Unbounded, the chunks cover the whole cache: the same result.
            let got = split(AttentionPartials::new(cfg), &[&q, &k, &v, &seq]);
            assert_close(&got, &want, &format!("{cfg:?}, max_len 0"));
        }
    }
}
