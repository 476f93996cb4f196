//! Causal attention for decode (a few queries against the KV cache), and
//! what it shares with [`crate::flash_attn`] (prefill): the inputs, their
//! checks and the naive CPU reference both are tested against.
//!
//! Inputs: q `[T, n_head, head_dim]` F32, the caches k and v
//! `[ctx, n_kv, head_dim]` F32 or F16, and seq I32 `[1, 2]` or `[T, 2]` of
//! `(start, row)` pairs ([`crate::kv_append`]). Query `t` sits at cache row
//! `r_t` (`row + t` for one pair, `row_t` for a pair per query: batched
//! decode, each query its own sequence) and sees key `j` iff
//! `start_t <= j <= r_t` (its sequence, causal), `0 <= j < ctx` and, with a
//! sliding window `w > 0` (Mistral), `r_t - j < w`. Head `h` reads kv head
//! `h / (n_head / n_kv)` (grouped-query attention). Output
//! `[T, n_head, head_dim]`; a query that sees no key (`r_t < start_t` or
//! `r_t < 0`) gets zeros.

use rayon::prelude::*;

use crate::cases::{OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::kv_append::{check_seq, read_seq};
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::template::{fill, u};
use crate::tensor::{CpuTensor, TensorDesc};

const WGSL: &str = include_str!("../wgsl/attention.wgsl");
const IO_WGSL: &str = include_str!("../wgsl/attn_io.wgsl");
const REDUCE_WORKGROUP: &str = include_str!("../wgsl/reduce_workgroup.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("../wgsl/reduce_subgroup.wgsl");

/// The end of attention.wgsl unsplit: the normalised output (zeros where
/// no key is visible, like the reference).
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
    /// seq has a `(start, row)` pair per query (R = T > 1), not one for all.
    pub per_query: bool,
}

/// The `{{IO}}` hole of both attention kernels (`attn_io.wgsl`: params,
/// bindings and the loaders `k_at`/`v_at` of one element and
/// `k4_at`/`v4_at` of four) for a cache dtype, and a key suffix naming the
/// choice. `vec4` (head_dim a multiple of 4) binds the caches as vectors
/// (vec4 of f32, or two u32s of f16 pairs) so four elements are one load.
pub(crate) fn io_hole(dtype: DType, vec4: bool) -> ((&'static str, String), &'static str) {
    let f16 = dtype == DType::F16;
    let (ty, load, key) = match (f16, vec4) {
        (true, false) => (
            "u32",
            "fn k_at(i: u32) -> f32 { return unpack2x16float(k[i >> 1u])[i & 1u]; }
fn v_at(i: u32) -> f32 { return unpack2x16float(v[i >> 1u])[i & 1u]; }",
            "f16",
        ),
        (true, true) => (
            "vec2<u32>",
            "fn k_at(i: u32) -> f32 { return unpack2x16float(k[i >> 2u][(i >> 1u) & 1u])[i & 1u]; }
fn v_at(i: u32) -> f32 { return unpack2x16float(v[i >> 2u][(i >> 1u) & 1u])[i & 1u]; }
fn k4_at(i: u32) -> vec4<f32> {
    let w = k[i >> 2u];
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}
fn v4_at(i: u32) -> vec4<f32> {
    let w = v[i >> 2u];
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}",
            "f16.v",
        ),
        (false, false) => (
            "f32",
            "fn k_at(i: u32) -> f32 { return k[i]; }
fn v_at(i: u32) -> f32 { return v[i]; }",
            "f32",
        ),
        (false, true) => (
            "vec4<f32>",
            "fn k_at(i: u32) -> f32 { return k[i >> 2u][i & 3u]; }
fn v_at(i: u32) -> f32 { return v[i >> 2u][i & 3u]; }
fn k4_at(i: u32) -> vec4<f32> { return k[i >> 2u]; }
fn v4_at(i: u32) -> vec4<f32> { return v[i >> 2u]; }",
            "f32.v",
        ),
    };
    // Scalar bindings compose the four-element loads.
    let composed = "
fn k4_at(i: u32) -> vec4<f32> { return vec4<f32>(k_at(i), k_at(i + 1u), k_at(i + 2u), k_at(i + 3u)); }
fn v4_at(i: u32) -> vec4<f32> { return vec4<f32>(v_at(i), v_at(i + 1u), v_at(i + 2u), v_at(i + 3u)); }";
    let load = if vec4 {
        load.to_string()
    } else {
        format!("{load}{composed}")
    };
    let io = fill(
        IO_WGSL,
        &[("K", ty.into()), ("V", ty.into()), ("KV_LOAD", load + "\n")],
    );
    (("IO", io), key)
}

/// Lanes per key in the scores of attention.wgsl for `head_dim` on a
/// device: the largest power of two that divides head_dim / 4, fits the
/// smallest subgroup and is at most 32, or 0 (one invocation scores a key
/// alone) without subgroups, with a head_dim not a multiple of 4 or an
/// unknown subgroup size.
pub(crate) fn lanes_per_key(head_dim: usize, sg: bool, caps: &Caps) -> u32 {
    if !sg || !head_dim.is_multiple_of(4) || caps.subgroup_min_size == 0 {
        return 0;
    }
    let quads = (head_dim / 4) as u32;
    let mut lpk = 1u32;
    while lpk * 2 <= caps.subgroup_min_size.min(32) && quads.is_multiple_of(lpk * 2) {
        lpk *= 2;
    }
    lpk
}

/// Keys each lane group scores per trip of the lane-per-key scores.
const SCORE_KEYS: u32 = 4;

/// attention.wgsl's LPK, Q_LANES and SCORE holes for `lpk` lanes per key
/// ([`lanes_per_key`]; 0 leaves the one-invocation-per-key scores): each
/// lane holds its `head_dim / 4 / lpk` vec4s of q in registers; keys
/// `j0 + slot + k * slots` of the block (`slots = WG / lpk`, every lane
/// running the same trips so the shuffles see whole subgroups) are dotted
/// and summed across the key's lanes by xor shuffles, and the score is
/// left in `p_sh` for invocation `key - j0` to read after a barrier.
pub(crate) fn score_holes(lpk: u32, head_dim: usize) -> [(&'static str, String); 3] {
    if lpk == 0 {
        return [
            ("LPK", u(0)),
            ("Q_LANES", String::new()),
            ("SCORE", String::new()),
        ];
    }
    let vpl = head_dim as u32 / 4 / lpk;
    let q_lanes = format!(
        "    let part = ids.sg_lane % LPK;
    var qr: array<vec4<f32>, {vpl}>;
    for (var c = 0u; c < {vpl}u; c++) {{
        let d = 4u * (part + c * LPK);
        qr[c] = vec4<f32>(q_sh[d], q_sh[d + 1u], q_sh[d + 2u], q_sh[d + 3u]);
    }}
    let slot = ids.sg_id * (ids.sg_size / LPK) + ids.sg_lane / LPK;
    let slots = ids.n_sg * (ids.sg_size / LPK);"
    );
    // SCORE_KEYS keys per trip, every load issued before the first dot.
    let mut loads = String::new();
    let mut sums = String::new();
    for u in 0..SCORE_KEYS {
        loads += &format!(
            "                let jj{u} = base + slot + {u}u * slots;
                let kb{u} = (min(j0 + jj{u}, hi - 1u) * p.n_kv + kvh) * HD + 4u * part;\n"
        );
        for c in 0..vpl {
            loads += &format!(
                "                let k{u}_{c} = k4_at(kb{u} + {}u * LPK);\n",
                4 * c
            );
        }
        let dots: Vec<String> = (0..vpl)
            .map(|c| format!("dot(qr[{c}], k{u}_{c})"))
            .collect();
        sums += &format!(
            "                var sc{u} = {};
                for (var o = LPK / 2u; o > 0u; o >>= 1u) {{
                    sc{u} += subgroupShuffleXor(sc{u}, o);
                }}
                if part == 0u && jj{u} < n {{
                    p_sh[jj{u}] = sc{u};
                }}\n",
            dots.join(" + ")
        );
    }
    let score = format!(
        "let n = min(WG, hi - j0);
            for (var base = 0u; base < n; base += {SCORE_KEYS}u * slots) {{
{loads}{sums}            }}
            workgroupBarrier();
            if j < hi {{
                s = p_sh[lid];
            }}"
    );
    [("LPK", u(lpk)), ("Q_LANES", q_lanes), ("SCORE", score)]
}

/// Checks q, k, v, seq and returns their sizes.
pub(crate) fn check_inputs(op: &'static str, inputs: &[TensorDesc]) -> Result<Dims, OpError> {
    check::arity(op, inputs, 4)?;
    let (q, k, v, seq) = (&inputs[0], &inputs[1], &inputs[2], &inputs[3]);
    check::dtype(op, q, &[DType::F32], "queries")?;
    check::dtype(op, k, &[DType::F32, DType::F16], "the key cache")?;
    check::dtype(op, v, &[k.dtype], "the value cache (the key cache's dtype)")?;
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
    let per_query = check_seq(op, inputs, seq, n_q)?;
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
        per_query,
    })
}

/// The keys a query at cache row `row` whose sequence starts at `start`
/// sees: `lo..hi` (empty for a negative row; a negative start is no bound).
pub(crate) fn visible(row: i32, start: i32, ctx: usize, window: u32) -> std::ops::Range<usize> {
    let Ok(row) = usize::try_from(row) else {
        return 0..0;
    };
    let hi = (row + 1).min(ctx);
    let mut lo = usize::try_from(start).unwrap_or(0);
    if window > 0 {
        lo = lo.max((row + 1).saturating_sub(window as usize));
    }
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
    let d = check_inputs(
        op,
        &[inputs[0], inputs[1], inputs[2], inputs[3]].map(|t| t.desc().clone()),
    )?;
    let seq = read_seq(op, inputs[3], d.n_q)?;
    let (hd, group) = (d.head_dim, d.n_head / d.n_kv);
    let o = out.as_f32_mut().ok_or(check::not_f32(op, DType::F32))?;
    o.par_chunks_mut(hd).enumerate().for_each(|(item, o)| {
        let (t, h) = (item / d.n_head, item % d.n_head);
        let qv = &q[item * hd..(item + 1) * hd];
        let (r, start) = seq.range(t);
        let keys = visible(r, start, d.ctx, cfg.window);
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
    /// 1: seq has a `(start, row)` pair per query; 0: one for all.
    pub per_query: u32,
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
            per_query: u32::from(d.per_query),
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
        let lpk = lanes_per_key(d.head_dim, sg, caps);
        let (io, kv_key) = io_hole(d.kv_dtype, d.head_dim.is_multiple_of(4));
        let [h1, h2, h3] = score_holes(lpk, d.head_dim);
        let source = fill(
            WGSL,
            &[
                io,
                ("WG", u(WG)),
                ("HD", u(hd)),
                ("CHUNKS", u(1)),
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
        Ok(GpuKernel {
            key: format!(
                "attention.hd{hd}.{kv_key}.l{lpk}.{}",
                if sg { "sg" } else { "wg" }
            ),
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

/// The inputs of one case: q `[t, h, hd]`, caches `[ctx, kv, hd]` in
/// `cache` dtype, seq `[r, 2]`.
pub(crate) fn inputs(
    (t, h, kv, hd, ctx): (usize, usize, usize, usize, usize),
    cache: DType,
    r: usize,
) -> Vec<TensorDesc> {
    let c = |s: [usize; 3]| TensorDesc::new(cache, s);
    vec![
        TensorDesc::f32([t, h, hd]),
        c([ctx, kv, hd]),
        c([ctx, kv, hd]),
        TensorDesc::new(DType::I32, [r, 2]),
    ]
}

/// Draws for seq (ranges of its elements, [`OpCase::int_ranges`]) over a
/// cache of `ctx >= 4` rows. One sequence (`t` queries): a start in the
/// first half of the rows that fit, the row anywhere they fit (mostly
/// after the start; before it, the first queries see nothing). One per
/// query, by turns: a sequence from about row 0 ending in the second half,
/// one from the second quarter ending anywhere up to 2 rows past the cache,
/// and one that sees no key (its row before its start, or negative).
pub(crate) fn seq_ranges(t: usize, ctx: usize, per_query: bool) -> Vec<(i32, i32)> {
    let c = ctx as i32;
    if !per_query {
        let room = (ctx - t) as i32;
        return vec![(0, room / 2 + 1), (0, room + 1)];
    }
    let kinds = [
        [(0, 3), (c / 2, c)],
        [(c / 4, c / 2), (c / 2, c + 2)],
        [(c / 2, c), (-2, c / 2)],
    ];
    (0..t).flat_map(|i| kinds[i % 3]).collect()
}

/// One case: q `[t, h, hd]`, caches `[ctx, kv, hd]` in `cache` dtype, seq
/// one pair or one per query, drawn by [`seq_ranges`].
pub(crate) fn case(
    op: impl Op + 'static,
    shape: (usize, usize, usize, usize, usize),
    cache: DType,
    per_query: bool,
) -> OpCase {
    let (t, ctx) = (shape.0, shape.4);
    let r = if per_query { t } else { 1 };
    // f32 accumulation over up to a few hundred keys and head_dim 128,
    // against an f64 reference; outputs are convex mixes of values in [-1, 1).
    // An F16 cache costs nothing here: the reference reads the same f16s.
    OpCase::new(op, inputs(shape, cache, r), Tolerance::new(2e-5, 1e-4))
        .int_ranges(seq_ranges(t, ctx, per_query))
}

/// Decode shapes: T of 1 to 17, SmolLM2's GQA (9 heads on 3), MHA, head_dim
/// 64 and 128, contexts longer than one key block, with and without a
/// window; one sequence, and (T > 1) one per query; F16 caches.
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
                let op = Attention {
                    cfg,
                    allow_subgroups,
                };
                cases.push(case(op, shape, DType::F32, false));
                // Batched decode; each reduction once.
                if shape.0 > 1 && allow_subgroups == (cfg.window == 0) {
                    cases.push(case(op, shape, DType::F32, true));
                }
            }
        }
    }
    // F16 caches, both reductions, one sequence and one per query.
    for allow_subgroups in [true, false] {
        let cfg = AttnConfig::causal(64).window(37);
        let op = Attention {
            cfg,
            allow_subgroups,
        };
        cases.push(case(op, (1, 9, 3, 64, 300), DType::F16, false));
        cases.push(case(op, (5, 9, 3, 64, 300), DType::F16, true));
    }
    cases
}

/// What the attention ops' unit tests share.
#[cfg(test)]
pub(crate) mod testing {
    use rand::{Rng, SeedableRng};

    use crate::op::Op;
    use crate::tensor::CpuTensor;

    /// Random q `[t, h, hd]` and F32 caches k, v `[ctx, kv, hd]`.
    pub(crate) fn qkv(
        seed: u64,
        (t, h, kv, hd, ctx): (usize, usize, usize, usize, usize),
    ) -> [CpuTensor; 3] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut f = |s: [usize; 3]| {
            let n = s.iter().product();
            CpuTensor::from_f32(s, (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()).unwrap()
        };
        [f([t, h, hd]), f([ctx, kv, hd]), f([ctx, kv, hd])]
    }

    /// `op`'s CPU reference on `inputs`.
    pub(crate) fn run(op: &dyn Op, inputs: &[&CpuTensor]) -> Vec<f32> {
        let descs: Vec<_> = inputs.iter().map(|t| t.desc().clone()).collect();
        let mut out = CpuTensor::zeros(&op.output(&descs).unwrap()).unwrap();
        op.cpu(inputs, &mut out).unwrap();
        out.to_f32().unwrap().to_vec()
    }

    /// Rows `rows` of a `[n, ..]` F32 tensor.
    pub(crate) fn rows(x: &CpuTensor, rows: std::ops::Range<usize>) -> CpuTensor {
        let shape = x.desc().shape.clone();
        let row: usize = shape[1..].iter().product();
        let data = x.as_f32().unwrap()[rows.start * row..rows.end * row].to_vec();
        let mut shape = shape;
        shape[0] = rows.len();
        CpuTensor::from_f32(shape, data).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{qkv, rows, run};
    use super::*;
    use crate::kv_append::seq_tensor;

    fn seq(pairs: &[(i32, i32)]) -> CpuTensor {
        seq_tensor(pairs).unwrap()
    }

    #[test]
    fn one_key_copies_its_value() {
        // Row 0: the query sees key 0 alone, whatever the scores.
        let q = CpuTensor::from_f32([1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let k = CpuTensor::from_f32([2, 1, 2], vec![5.0, 6.0, 7.0, 8.0]).unwrap();
        let v = CpuTensor::from_f32([2, 1, 2], vec![0.5, -0.5, 9.0, 9.0]).unwrap();
        let op = Attention::new(AttnConfig::causal(2));
        let out = run(&op, &[&q, &k, &v, &seq(&[(0, 0)])]);
        assert_eq!(out, &[0.5, -0.5, 0.5, -0.5]);
        // Row 1 of a sequence starting at 1: key 1 alone.
        let out = run(&op, &[&q, &k, &v, &seq(&[(1, 1)])]);
        assert_eq!(out, &[9.0, 9.0, 9.0, 9.0]);
    }

    #[test]
    fn start_and_window_limit_the_keys() {
        assert_eq!(visible(5, 0, 100, 0), 0..6);
        assert_eq!(visible(5, 0, 100, 2), 4..6);
        assert_eq!(visible(5, 0, 3, 0), 0..3);
        assert_eq!(visible(-1, 0, 3, 0), 0..0);
        assert_eq!(visible(10, 0, 3, 2), 9..9);
        assert_eq!(visible(5, 3, 100, 0), 3..6);
        assert_eq!(visible(5, 3, 100, 4), 3..6);
        assert_eq!(visible(5, 3, 100, 2), 4..6);
        assert_eq!(visible(2, 3, 100, 0), 3..3);
        assert_eq!(visible(5, -4, 100, 0), 0..6);
    }

    #[test]
    fn start_hides_the_keys_before_it() {
        // Three queries at rows 7.. of a sequence starting at row 4 attend
        // like queries at rows 3.. of a cache that begins at row 4.
        let shape = (3, 4, 2, 8, 12);
        let [q, k, v] = qkv(1, shape);
        for cfg in [AttnConfig::causal(8), AttnConfig::causal(8).window(3)] {
            let op = Attention::new(cfg);
            let got = run(&op, &[&q, &k, &v, &seq(&[(4, 7)])]);
            let (k4, v4) = (rows(&k, 4..12), rows(&v, 4..12));
            let want = run(&op, &[&q, &k4, &v4, &seq(&[(0, 3)])]);
            assert_eq!(got, want, "{cfg:?}");
            let all = run(&op, &[&q, &k, &v, &seq(&[(0, 7)])]);
            assert_eq!(got != all, cfg.window == 0, "{cfg:?}");
        }
    }

    #[test]
    fn a_pair_per_query_gives_each_query_its_own_sequence() {
        let (t, h, hd, ctx) = (5, 4, 8, 12);
        let [q, k, v] = qkv(2, (t, h, 2, hd, ctx));
        // A long one, a later one, one that sees nothing (row before start),
        // one past the cache's end, one at a negative row.
        let pairs = [(0, 9), (3, 5), (7, 2), (2, 40), (0, -1)];
        let op = Attention::new(AttnConfig::causal(hd));
        let got = run(&op, &[&q, &k, &v, &seq(&pairs)]);
        for (i, &pair) in pairs.iter().enumerate() {
            let want = run(&op, &[&rows(&q, i..i + 1), &k, &v, &seq(&[pair])]);
            assert_eq!(&got[i * h * hd..(i + 1) * h * hd], want, "query {i}");
        }
        assert!(got[2 * h * hd..3 * h * hd].iter().all(|&x| x == 0.0));
        assert!(got[4 * h * hd..].iter().all(|&x| x == 0.0));
        // Consecutive rows of one sequence: the same as one pair.
        let q3 = rows(&q, 0..3);
        let one = run(&op, &[&q3, &k, &v, &seq(&[(2, 5)])]);
        let each = run(&op, &[&q3, &k, &v, &seq(&[(2, 5), (2, 6), (2, 7)])]);
        assert_eq!(one, each);
    }

    #[test]
    fn seq_must_be_one_pair_or_one_per_query() {
        let [q, k, v] = [[3, 4, 8], [12, 2, 8], [12, 2, 8]].map(TensorDesc::f32);
        let op = Attention::new(AttnConfig::causal(8));
        let with = |s: TensorDesc| op.output(&[q.clone(), k.clone(), v.clone(), s]);
        assert!(with(TensorDesc::new(DType::I32, [1, 2])).is_ok());
        assert!(with(TensorDesc::new(DType::I32, [3, 2])).is_ok());
        for bad in [vec![1], vec![2, 2], vec![3, 1], vec![3]] {
            let err = with(TensorDesc::new(DType::I32, bad.clone())).unwrap_err();
            assert!(matches!(err, OpError::Shape { .. }), "{bad:?}: {err}");
        }
        let err = with(TensorDesc::f32([1, 2])).unwrap_err();
        assert!(matches!(err, OpError::DType { .. }), "{err}");
    }
}
