//! The decode-time product by a quantized weight, with what surrounds it in
//! a transformer fused in: `y = x' · Wᵀ (+ r)` for few rows of x (M ≤ 8 per
//! workgroup; more run as more workgroup columns), W `[N, K]` in any of
//! [`WEIGHT_DTYPES`], where x' is x, or `rms_norm(x) * g` ([`Prologue::Norm`],
//! the norm weight g `[K]` an extra input), or `silu(x) * u` with x the
//! gate and u the up projection, both `[.., M, K]` ([`Prologue::SwiGlu`]),
//! and `+ r`
//! (`[.., M, N]`, [`QMatVec::residual`]) adds the residual stream. One
//! dispatch stands for up to five, and each dispatch that depends on the
//! previous costs ~3 µs on a big GPU: that, not bytes, bounds small models.
//!
//! LoRA epilogue ([`QMatVec::lora`], [`QMatVec::with_lora`]): adapters are
//! applied unmerged, `y = x'·Wᵀ + Σ_r B[n, r] · (u[m, r] · s[m, r]) (+ r)`,
//! where `u = x'·Aᵀ` `[.., M, R]` came from an earlier dispatch (the stacked
//! A of every loaded adapter, `[R, K]`), s `[.., M, R]` holds each batch
//! row's scale per rank (the adapter's scale where that row uses it, 0
//! elsewhere: adapters are swapped and chosen per request by rewriting s,
//! with no new pipeline) and B `[N, R]` is the stacked up-projection. R is
//! a uniform, not part of the kernel key; any R ≥ 1.
//!
//! Inputs in order: x, W, g (Norm) or u (SwiGlu), r (residual), then with
//! LoRA lu `[.., M, R]`, ls `[.., M, R]`, lb `[N, R]` (all F32).
//!
//! Kernel: `qmatvec.wgsl`. Invocations stride each weight row by quads (4
//! values) or, for quantized weights, by octets (the two quads whose
//! values share one weight word, decoded together), so x and W loads are
//! coalesced across neighbouring invocations; each quad of x serves ROWS
//! weight rows. Accumulation is f32 on
//! dequantized weights with x never quantized. The LoRA term is spread the
//! same way: invocation i adds ranks i, i + WG, .. of every (weight row, x
//! row) to its partial sums before the reduction, so it costs R
//! multiply-adds per output shared by the workgroup, and no barrier.

use rayon::prelude::*;

use crate::cases::{OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::kv_append;
use crate::layout;
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::quant;
use crate::rope::{Rope, RopeMode, ANGLE_WGSL};
use crate::template::{fill, u};
use crate::tensor::{CpuTensor, TensorDesc};

const WGSL: &str = include_str!("../wgsl/qmatvec.wgsl");
const DECODERS: &str = include_str!("../wgsl/qmatvec_decode.wgsl");
const HELPERS: &str = include_str!("../wgsl/qmatmul_decode.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("../wgsl/qmatmul_reduce_subgroup.wgsl");
const REDUCE_WORKGROUP: &str = include_str!("../wgsl/qmatmul_reduce_workgroup.wgsl");
const NAME: &str = "qmatvec";

/// Weight dtypes the kernel decodes: qmatmul's, so a model's weights run
/// on both.
pub use crate::qmatmul::WEIGHT_DTYPES;

/// Most rows of x one workgroup serves (its quads of x are reused that
/// many times from registers).
pub const MAX_MR: u32 = 8;

/// What x' is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Prologue {
    /// x itself.
    None,
    /// `x / sqrt(mean(x²) + eps) * g`, ggml's rms_norm then mul.
    Norm { eps: f32 },
    /// `silu(x) * u`, u an extra input of x's shape.
    SwiGlu,
}

/// The op; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QMatVec {
    pub prologue: Prologue,
    /// Adds a residual input r `[.., M, N]` to the product.
    pub residual: bool,
    /// Adds the LoRA term `Σ_r lb[n, r] · lu[m, r] · ls[m, r]` from three
    /// inputs after the others (module docs).
    pub lora: bool,
    /// Use the subgroup reduction when the device has subgroups. Off only
    /// to test the workgroup-memory reduction on such a device.
    pub allow_subgroups: bool,
    /// Invocations, weight rows and unrolled steps per workgroup; `None`
    /// picks by shape. For tuning sweeps.
    pub shape: Option<(u32, u32, u32)>,
    /// Step by octets (two quads that share their weight words, each
    /// loaded word decoded whole, once) rather than quads; every quantized
    /// format has them. `None` picks by format: octets for the legacy
    /// blocks (Q4_0 .. Q8_0), where they measured 1.3-1.6x faster at 7B
    /// shapes on the H200, quads for the K-quants, where they did not.
    pub octets: Option<bool>,
    /// y as attention heads: rotated by rope and/or written into a KV
    /// cache (see [`Heads`]). No residual with it.
    pub heads: Option<Heads>,
}

/// The heads epilogue: y `[.., M, N]` is `N / head_dim` heads per row.
/// With `rope` (normal mode: pairs `(2j, 2j + 1)`, [`Rope`]'s arithmetic)
/// each head of row m turns by the position `pos[m]` (an I32 input
/// `[.., M]`); with `cache_rows` y goes into a KV cache `[cache_rows,
/// N / head_dim, head_dim]` (F32) at the rows the seq input names
/// ([`kv_append::KvAppend`]'s rule), through `Graph::write_into`, instead
/// of out as `[.., M, N]`. The q, k and v products of a decode step then
/// need no rope or append dispatches of their own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Heads {
    pub head_dim: usize,
    pub rope: Option<Rope>,
    pub cache_rows: Option<usize>,
}

/// How one step of an invocation reads its weight row: a quad through
/// `dq_<type>(n, t)`, or an octet through `dq8_<type>(n, o)` (two quads'
/// quants and the scale and offset of each) and `oq_<type>(o)` (which two
/// quads of x).
enum Decode {
    Quad(String),
    Octet { quads: String, decode: String },
}

impl QMatVec {
    pub fn new(prologue: Prologue, residual: bool) -> QMatVec {
        QMatVec {
            prologue,
            residual,
            lora: false,
            allow_subgroups: true,
            shape: None,
            octets: None,
            heads: None,
        }
    }

    /// The same op with the LoRA epilogue: inputs lu, ls, lb follow.
    pub fn with_lora(mut self) -> QMatVec {
        self.lora = true;
        self
    }

    /// The same op with the heads epilogue.
    pub fn with_heads(mut self, heads: Heads) -> QMatVec {
        self.heads = Some(heads);
        self
    }

    fn rope(&self) -> Option<Rope> {
        self.heads.and_then(|h| h.rope)
    }

    fn cache_rows(&self) -> Option<usize> {
        self.heads.and_then(|h| h.cache_rows)
    }

    /// Where the seq input is (with a cache store).
    fn seq_at(&self) -> usize {
        2 + usize::from(self.prologue != Prologue::None)
            + usize::from(self.residual)
            + usize::from(self.rope().is_some())
    }

    fn arity(&self) -> usize {
        2 + usize::from(self.prologue != Prologue::None)
            + usize::from(self.residual)
            + usize::from(self.rope().is_some())
            + usize::from(self.cache_rows().is_some())
            + 3 * usize::from(self.lora)
    }
}

/// Mirrors `Params` in `qmatvec.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    quads: u32,
    blocks: u32,
    s1: u32,
    s2: u32,
    s3: u32,
    eps: f32,
    /// LoRA rank R (0 without LoRA).
    rank: u32,
    head_dim: u32,
    n_dims: u32,
    theta_scale: f32,
    freq_scale: f32,
    ctx: u32,
    per_query: u32,
}

#[derive(Clone, Copy, Debug)]
struct Dims {
    m: usize,
    n: usize,
    k: usize,
    /// LoRA rank R; 0 without LoRA.
    rank: usize,
}

impl QMatVec {
    fn dims(&self, inputs: &[TensorDesc]) -> Result<Dims, OpError> {
        check::arity(NAME, inputs, self.arity())?;
        let unit = |d: DType| d.block_size().max(4);
        let (m, n, k) = check::x_by_weight(NAME, inputs, &WEIGHT_DTYPES, unit)?;
        let x = &inputs[0];
        let mut extra = 2;
        if matches!(self.prologue, Prologue::Norm { .. }) {
            let g = &inputs[extra];
            check::dtype(NAME, g, &[DType::F32], "the norm weight")?;
            if g.shape != [k] {
                return Err(check::shape_err(
                    NAME,
                    inputs,
                    "the norm weight must be [K]",
                ));
            }
            extra += 1;
        }
        if self.prologue == Prologue::SwiGlu {
            let u = &inputs[extra];
            check::dtype(NAME, u, &[DType::F32], "the up projection")?;
            if u.shape != x.shape {
                return Err(check::shape_err(NAME, inputs, "u must have x's shape"));
            }
            extra += 1;
        }
        let mut y_shape = x.shape[..x.shape.len() - 1].to_vec();
        y_shape.push(n);
        if self.residual {
            let r = &inputs[extra];
            check::dtype(NAME, r, &[DType::F32], "the residual")?;
            if r.shape != y_shape {
                return Err(check::shape_err(
                    NAME,
                    inputs,
                    format!("the residual must be {y_shape:?} like y"),
                ));
            }
            extra += 1;
        }
        if let Some(h) = self.heads {
            self.check_heads(h, inputs, &mut extra, n)?;
        }
        let rank = if self.lora {
            lora_rank(inputs, extra, n)?
        } else {
            0
        };
        Ok(Dims { m, n, k, rank })
    }

    /// The heads epilogue's shape rules and its pos and seq inputs at
    /// `inputs[*extra..]` (moved past them).
    fn check_heads(
        &self,
        h: Heads,
        inputs: &[TensorDesc],
        extra: &mut usize,
        n: usize,
    ) -> Result<(), OpError> {
        let err = |why: String| Err(check::shape_err(NAME, inputs, why));
        let x = &inputs[0];
        let rows = x.shape[..x.shape.len() - 1].iter().product::<usize>();
        if h.head_dim == 0 || !h.head_dim.is_multiple_of(2) || !n.is_multiple_of(h.head_dim) {
            return err(format!(
                "heads of {} values must be even and divide N = {n}",
                h.head_dim
            ));
        }
        if self.residual {
            return err("the heads epilogue takes no residual".into());
        }
        if let Some(rope) = h.rope {
            if rope.mode != RopeMode::Normal {
                return Err(OpError::Unsupported {
                    op: NAME,
                    what: "rope in neox mode (pairs a head apart) as an epilogue".into(),
                });
            }
            if rope.n_dims == 0 || !rope.n_dims.is_multiple_of(2) || rope.n_dims > h.head_dim {
                return err(format!(
                    "rope's n_dims = {} must be even, non-zero and <= head_dim",
                    rope.n_dims
                ));
            }
            let pos = &inputs[*extra];
            check::dtype(NAME, pos, &[DType::I32], "the positions")?;
            if pos.numel() != Some(rows) || pos.shape.len() + 1 != x.shape.len() {
                return err(format!(
                    "the positions must be x's shape but K: {rows} rows"
                ));
            }
            *extra += 1;
        }
        if h.cache_rows.is_some() {
            let seq = &inputs[*extra];
            kv_append::check_seq(NAME, inputs, seq, rows)?;
            *extra += 1;
        }
        Ok(())
    }
}

/// R, from lu `[.., M, R]`, ls (lu's shape) and lb `[N, R]` at
/// `inputs[at..]`.
fn lora_rank(inputs: &[TensorDesc], at: usize, n: usize) -> Result<usize, OpError> {
    let (x, lu, ls, lb) = (&inputs[0], &inputs[at], &inputs[at + 1], &inputs[at + 2]);
    check::dtype(NAME, lu, &[DType::F32], "the LoRA input u = A·x'")?;
    check::dtype(NAME, ls, &[DType::F32], "the LoRA scales")?;
    check::dtype(NAME, lb, &[DType::F32], "the LoRA B")?;
    let lead = &x.shape[..x.shape.len() - 1];
    let rank = lu.cols();
    if lu.shape.len() != x.shape.len() || lu.shape[..lead.len()] != *lead || rank == 0 {
        return Err(check::shape_err(
            NAME,
            inputs,
            format!("the LoRA u must be {lead:?} + [R] with R >= 1, like x but for K"),
        ));
    }
    if ls.shape != lu.shape {
        return Err(check::shape_err(
            NAME,
            inputs,
            "the LoRA scales must have the LoRA u's shape [.., M, R]",
        ));
    }
    if lb.shape != [n, rank] {
        return Err(check::shape_err(
            NAME,
            inputs,
            format!("the LoRA B must be [N, R] = [{n}, {rank}]"),
        ));
    }
    check::numel_u32(NAME, inputs, lu)?;
    check::numel_u32(NAME, inputs, lb)?;
    Ok(rank)
}

fn f32s(t: &CpuTensor) -> Result<std::borrow::Cow<'_, [f32]>, OpError> {
    t.to_f32().map_err(|_| check::not_f32(NAME, t.dtype()))
}

fn opt_f32s<'a>(t: Option<&'a CpuTensor>) -> Result<Option<std::borrow::Cow<'a, [f32]>>, OpError> {
    t.map(f32s).transpose()
}

/// x' row by row, as f32 (the kernel's arithmetic; the norm's mean in f64
/// as [`crate::rms_norm`]'s reference). `extra` is g or u.
fn prologue_rows(prologue: Prologue, x: &[f32], extra: Option<&[f32]>, k: usize) -> Vec<f32> {
    match (prologue, extra) {
        (Prologue::SwiGlu, Some(u)) => x
            .iter()
            .zip(u)
            .map(|(&a, &b)| a / (1.0 + (-a).exp()) * b)
            .collect(),
        (Prologue::Norm { eps }, g) => x
            .chunks_exact(k)
            .flat_map(|row| {
                let mean = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / k as f64;
                let scale = (1.0 / (mean + f64::from(eps)).sqrt()) as f32;
                row.iter()
                    .enumerate()
                    .map(|(i, &v)| v * scale * g.map_or(1.0, |g| g[i]))
                    .collect::<Vec<_>>()
            })
            .collect(),
        _ => x.to_vec(),
    }
}

/// The kernel's per-variant code, unrolled: clamped row indices before the
/// loops, then per step t (a quad, or
/// an octet: two quads) each x row's quads loaded once and every weight
/// row's step decoded once, with one scalar accumulator per (weight row,
/// x row). The main loop takes `unroll` steps WG apart per trip, every
/// load issued before any arithmetic, so each invocation keeps rows *
/// unroll loads in flight: a matvec is bound by memory latency as much as
/// by bandwidth. A one-step loop finishes.
/// With the norm, each x row's sum of squares accumulates beside (`ss`).
/// With LoRA, a last loop adds ranks lid, lid + WG, .. of the LoRA term to
/// the same accumulators, or with the norm to its own (`l`): each x row's
/// u·s loaded once for all weight rows. The accumulators are listed in the
/// kernel's sum order: products, squares, LoRA terms.
fn unrolled(
    rows: u32,
    mr: u32,
    norm: bool,
    lora: bool,
    decode: &Decode,
    unroll: u32,
    wg: u32,
) -> (String, String, String) {
    let mut setup = String::new();
    let mut accs = Vec::new();
    for i in 0..mr {
        setup += &format!("    let xm{i} = min(m0 + {i}u, p.m - 1u);\n");
    }
    for r in 0..rows {
        setup += &format!("    let wn{r} = min(n0 + {r}u, p.n - 1u);\n");
        for i in 0..mr {
            setup += &format!("    var a{r}_{i} = 0.0;\n");
            accs.push(format!("a{r}_{i}"));
        }
    }
    if norm {
        for i in 0..mr {
            setup += &format!("    var ss{i} = 0.0;\n");
            accs.push(format!("ss{i}"));
        }
    }
    // With the norm the LoRA term (from x' already normed) sums apart.
    let lora_acc = |r: u32, i: u32| {
        if norm {
            format!("l{r}_{i}")
        } else {
            format!("a{r}_{i}")
        }
    };
    if norm && lora {
        for r in 0..rows {
            for i in 0..mr {
                setup += &format!("    var l{r}_{i} = 0.0;\n");
                accs.push(format!("l{r}_{i}"));
            }
        }
    }
    // One x quad (`x{u}_{i}{h}` for quad `q`) as the prologue makes it:
    // with the norm, x * g, its raw square summed into ss.
    let x_load = |u: u32, i: u32, h: &str, q: &str| {
        if norm {
            format!(
                "        let r{u}_{i}{h} = x_quad(xm{i}, {q});
        ss{i} += dot(r{u}_{i}{h}, r{u}_{i}{h});
        let x{u}_{i}{h} = r{u}_{i}{h} * g[{q}];\n"
            )
        } else {
            format!("        let x{u}_{i}{h} = x_quad(xm{i}, {q});\n")
        }
    };
    let body = |steps: u32| {
        let mut loads = String::new();
        let mut math = String::new();
        for u in 0..steps {
            loads += &format!("        let t{u} = t + {}u;\n", u * wg);
            match decode {
                Decode::Quad(f) => {
                    for i in 0..mr {
                        loads += &x_load(u, i, "", &format!("t{u}"));
                    }
                    for r in 0..rows {
                        loads += &format!("        let w{u}_{r} = {f}(wn{r}, t{u});\n");
                        for i in 0..mr {
                            math += &format!("        a{r}_{i} += dot(w{u}_{r}, x{u}_{i});\n");
                        }
                    }
                }
                Decode::Octet { quads, decode: f } => {
                    loads += &format!("        let q{u} = {quads}(t{u});\n");
                    for i in 0..mr {
                        loads += &x_load(u, i, "a", &format!("q{u}.x"));
                        loads += &x_load(u, i, "b", &format!("q{u}.y"));
                        // Each quad's sum, for the octet's offsets.
                        math += &format!(
                            "        let s{u}_{i} = vec2<f32>(dot(x{u}_{i}a, vec4<f32>(1.0)), dot(x{u}_{i}b, vec4<f32>(1.0)));\n"
                        );
                    }
                    for r in 0..rows {
                        loads += &format!("        let w{u}_{r} = {f}(wn{r}, t{u});\n");
                        for i in 0..mr {
                            math += &format!(
                                "        a{r}_{i} += dot(w{u}_{r}.sm, vec4<f32>(dot(w{u}_{r}.q[0], x{u}_{i}a), s{u}_{i}.x, dot(w{u}_{r}.q[1], x{u}_{i}b), s{u}_{i}.y));\n"
                            );
                        }
                    }
                }
            }
        }
        loads + &math
    };
    let end = match decode {
        Decode::Quad(_) => "p.quads",
        Decode::Octet { .. } => "(p.quads >> 1u)",
    };
    let mut loops = String::from("    var t = ids.lid;\n");
    if unroll > 1 {
        loops += &format!(
            "    for (; t + {}u < {end}; t += {}u) {{\n{}    }}\n",
            (unroll - 1) * wg,
            unroll * wg,
            body(unroll)
        );
    }
    loops += &format!("    for (; t < {end}; t += WG) {{\n{}    }}\n", body(1));
    if lora {
        loops += "    for (var j = ids.lid; j < p.rank; j += WG) {\n";
        for i in 0..mr {
            loops +=
                &format!("        let us{i} = lu[xm{i} * p.rank + j] * ls[xm{i} * p.rank + j];\n");
        }
        for r in 0..rows {
            loops += &format!("        let lb{r} = lb[wn{r} * p.rank + j];\n");
            for i in 0..mr {
                loops += &format!("        {} += lb{r} * us{i};\n", lora_acc(r, i));
            }
        }
        loops += "    }\n";
    }
    (setup, loops, accs.join(", "))
}

impl Op for QMatVec {
    fn name(&self) -> &'static str {
        NAME
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        let d = self.dims(inputs)?;
        if let Some(Heads {
            head_dim,
            cache_rows: Some(ctx),
            ..
        }) = self.heads
        {
            return Ok(TensorDesc::f32([ctx, d.n / head_dim, head_dim]));
        }
        let x = &inputs[0].shape;
        let mut shape = x[..x.len() - 1].to_vec();
        shape.push(d.n);
        Ok(TensorDesc::f32(shape))
    }

    /// x' as the kernel computes it, then each W row dequantized once
    /// (ggml's arithmetic) and dotted with every row of x' in f64; the LoRA
    /// term, also in f64, is added to that sum, the residual after.
    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let descs: Vec<TensorDesc> = inputs.iter().map(|t| t.desc().clone()).collect();
        let Dims { m, n, k, rank } = self.dims(&descs)?;
        let x = f32s(inputs[0])?;
        // Inputs after x and W, in order: g or u, r, pos, seq, lu, ls, lb
        // (dims checked the arity: each present one is there).
        let mut at = 2;
        let mut take = |on: bool| {
            let t = on.then(|| inputs[at]);
            at += usize::from(on);
            t
        };
        let extra = opt_f32s(take(self.prologue != Prologue::None))?;
        let r = opt_f32s(take(self.residual))?;
        let pos = match take(self.rope().is_some()) {
            Some(t) => Some(t.to_i32().ok_or(OpError::DType {
                op: NAME,
                dtype: t.dtype(),
                what: "the positions",
            })?),
            None => None,
        };
        let seq = match take(self.cache_rows().is_some()) {
            Some(t) => Some(kv_append::read_seq(NAME, t, m)?),
            None => None,
        };
        let mut next = |on: bool| opt_f32s(take(on));
        let (lu, ls, lb) = (next(self.lora)?, next(self.lora)?, next(self.lora)?);
        let xp = prologue_rows(self.prologue, &x, extra.as_deref(), k);
        // [M, R]: each row's u scaled per rank, 0 where the adapter is off.
        let us: Vec<f64> = match (&lu, &ls) {
            (Some(lu), Some(ls)) => lu
                .iter()
                .zip(ls.iter())
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .collect(),
            _ => Vec::new(),
        };
        let wd = inputs[1].dtype();
        let w = inputs[1].bytes();
        let row_bytes = wd.bytes_for(k).ok_or(check::not_f32(NAME, wd))?;
        // y transposed: one chunk of m values per weight row.
        let mut yt = vec![0f32; n * m];
        yt.par_chunks_mut(m)
            .zip(w.par_chunks(row_bytes))
            .enumerate()
            .try_for_each_init(
                || vec![0f32; k],
                |row, (ni, (ys, wb))| {
                    quant::dequantize(wd, wb, row).map_err(|_| check::not_f32(NAME, wd))?;
                    for (mi, y) in ys.iter_mut().enumerate() {
                        let xr = &xp[mi * k..][..k];
                        let mut s: f64 = xr
                            .iter()
                            .zip(row.iter())
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum();
                        if let Some(lb) = &lb {
                            let b = &lb[ni * rank..][..rank];
                            let su = &us[mi * rank..][..rank];
                            s += b
                                .iter()
                                .zip(su)
                                .map(|(&b, &v)| f64::from(b) * v)
                                .sum::<f64>();
                        }
                        *y = s as f32;
                    }
                    Ok::<(), OpError>(())
                },
            )?;
        // y row by row, then the heads epilogue.
        let mut rows = vec![0f32; m * n];
        for (ni, ys) in yt.chunks_exact(m).enumerate() {
            for (mi, &v) in ys.iter().enumerate() {
                let o = mi * n + ni;
                rows[o] = v + r.as_ref().map_or(0.0, |r| r[o]);
            }
        }
        let y = out.as_f32_mut().ok_or(check::not_f32(NAME, DType::F32))?;
        let Some(h) = self.heads else {
            y.copy_from_slice(&rows);
            return Ok(());
        };
        if let (Some(rope), Some(pos)) = (h.rope, &pos) {
            for (mi, row) in rows.chunks_exact_mut(n).enumerate() {
                for head in row.chunks_exact_mut(h.head_dim) {
                    let x = head.to_vec();
                    rope.rotate(pos[mi], &x, head);
                }
            }
        }
        match (h.cache_rows, &seq) {
            (Some(ctx), Some(seq)) => {
                for (mi, row) in rows.chunks_exact(n).enumerate() {
                    if let Some(t) = seq.cache_row(mi, ctx) {
                        y[t * n..(t + 1) * n].copy_from_slice(row);
                    }
                }
            }
            _ => y.copy_from_slice(&rows),
        }
        Ok(())
    }

    fn gpu(
        &self,
        inputs: &[TensorDesc],
        _out: &TensorDesc,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        let d = self.dims(inputs)?;
        let wd = inputs[1].dtype;
        let sg = self.allow_subgroups && caps.subgroups;
        let mr = (d.m as u32).clamp(1, MAX_MR);
        let quads = (d.k / 4) as u32;
        let helpers = HELPERS.split("// @decoder ").next().unwrap_or_default();
        let mut parts = DECODERS.split("// @decoder ");
        let quad_helpers = parts.next().unwrap_or_default();
        let parts: Vec<&str> = parts.collect();
        let section = |name: &str| {
            parts
                .iter()
                .find(|p| p.split_whitespace().next() == Some(name))
                .copied()
        };
        let legacy = wd.block_size() == 32;
        let octet_section =
            section(&format!("{}.oct", wd.name())).filter(|_| self.octets.unwrap_or(legacy));
        let octets = octet_section.is_some();
        // Octets at K >= 2048: one subgroup-sized workgroup, four steps in
        // flight (the H200's best at every 7B shape); else 128 or 64
        // invocations, two steps.
        let big = quads >= 512;
        let mut wg: u32 = match (big, octets) {
            (true, true) => 32,
            (true, false) => 128,
            (false, _) => 64,
        };
        // Two weight rows per workgroup where that still leaves 1024
        // workgroups: on the H200, more rows per workgroup (fewer, longer
        // workgroups) measured slower at every 7B shape.
        let mut rows = if d.n as u32 / 2 >= 1024 || self.rope().is_some() {
            2
        } else {
            1
        };
        let mut unroll = if big && octets { 4 } else { 2 };
        if let Some((w, r, u)) = self.shape {
            (wg, rows, unroll) = (
                w.next_power_of_two().clamp(32, 256),
                r.clamp(1, 8),
                u.clamp(1, 8),
            );
        }
        // Both reductions keep WG slots per partial sum: the products',
        // with the norm each x row's squares, with the norm and LoRA the
        // LoRA terms apart.
        let norm = matches!(self.prologue, Prologue::Norm { .. });
        let sums = |rows: u32| {
            let norm_sums = if norm {
                mr + rows * mr * u32::from(self.lora)
            } else {
                0
            };
            rows * mr + norm_sums
        };
        let shared = |rows: u32, wg: u32| 4 * (wg * sums(rows) + mr + rows * mr);
        // Invocation i ends with sum i, so there must be one for every sum;
        // and the slots must fit the device's workgroup memory.
        loop {
            if sums(rows) > wg && wg < 256 {
                wg *= 2;
            } else if rows > 1
                && (sums(rows) > wg || shared(rows, wg) > caps.max_workgroup_storage_bytes)
            {
                rows /= 2;
            } else {
                break;
            }
        }
        if self.rope().is_some() && rows % 2 == 1 {
            return Err(OpError::Unsupported {
                op: NAME,
                what: format!("rope over {rows} weight rows per workgroup (needs pairs)"),
            });
        }
        let offsets = layout::section_offsets(&inputs[1]).unwrap_or_default();
        let off = |i: usize| offsets.get(i).map_or(0, |&o| o as u32);
        let eps = match self.prologue {
            Prologue::Norm { eps } => eps,
            _ => 0.0,
        };
        let params = Params {
            m: d.m as u32,
            n: d.n as u32,
            k: d.k as u32,
            quads,
            blocks: (d.k / wd.block_size()) as u32,
            s1: off(1),
            s2: off(2),
            s3: off(3),
            eps,
            rank: d.rank as u32,
            head_dim: self.heads.map_or(0, |h| h.head_dim as u32),
            n_dims: self.rope().map_or(0, |r| r.n_dims as u32),
            theta_scale: self.rope().map_or(0.0, |r| r.theta_scale()),
            freq_scale: self.rope().map_or(0.0, |r| r.freq_scale),
            ctx: self.cache_rows().map_or(0, |c| c as u32),
            per_query: u32::from(self.cache_rows().is_some() && inputs[self.seq_at()].shape[0] > 1),
        };
        let mut bindings = String::new();
        let mut b = 3;
        if norm {
            bindings +=
                &format!("@group(0) @binding({b}) var<storage, read> g: array<vec4<f32>>;\n");
            b += 1;
        }
        let swiglu = self.prologue == Prologue::SwiGlu;
        if swiglu {
            bindings +=
                &format!("@group(0) @binding({b}) var<storage, read> u: array<vec4<f32>>;\n");
            b += 1;
        }
        if self.residual {
            bindings += &format!("@group(0) @binding({b}) var<storage, read> res: array<f32>;\n");
            b += 1;
        }
        for (on, name) in [
            (self.rope().is_some(), "pos"),
            (self.cache_rows().is_some(), "seq"),
        ] {
            if on {
                bindings +=
                    &format!("@group(0) @binding({b}) var<storage, read> {name}: array<i32>;\n");
                b += 1;
            }
        }
        if self.lora {
            for name in ["lu", "ls", "lb"] {
                bindings +=
                    &format!("@group(0) @binding({b}) var<storage, read> {name}: array<f32>;\n");
                b += 1;
            }
        }
        bindings += &format!("@group(0) @binding({b}) var<storage, read_write> y: array<f32>;\n");
        let (decoder, decode) = match octet_section {
            Some(oct) => (
                oct,
                Decode::Octet {
                    quads: format!("oq_{}", wd.name()),
                    decode: format!("dq8_{}", wd.name()),
                },
            ),
            None => (
                section(wd.name()).ok_or(OpError::DType {
                    op: NAME,
                    dtype: wd,
                    what: "the weight",
                })?,
                Decode::Quad(format!("dq_{}", wd.name())),
            ),
        };
        let reduce = if sg {
            REDUCE_SUBGROUP
        } else {
            REDUCE_WORKGROUP
        };
        let (setup, loops, accs) = unrolled(rows, mr, norm, self.lora, &decode, unroll, wg);
        let source = fill(
            WGSL,
            &[
                ("WG", u(wg)),
                ("ROWS", u(rows)),
                ("MR", u(mr)),
                (
                    "X_QUAD",
                    if swiglu {
                        "let v = x[m * p.quads + t];\n    return v / (1.0 + exp(-v)) * u[m * p.quads + t];"
                            .into()
                    } else {
                        "return x[m * p.quads + t];".into()
                    },
                ),
                ("SETUP", setup),
                ("LOOPS", loops),
                ("SUMS", u(sums(rows))),
                ("NORM_FINISH", norm_finish(norm, self.lora)),
                ("ACCS", accs),
                ("VALUE", value(norm, self.lora)),
                ("ROPE", rope_hole(self.rope().is_some())),
                ("STORE", store(self.residual, self.cache_rows().is_some())),
                ("BINDINGS", bindings),
                (
                    "DECODERS",
                    format!(
                        "{helpers}{quad_helpers}// {decoder}{}",
                        if self.rope().is_some() {
                            ANGLE_WGSL
                        } else {
                            ""
                        }
                    ),
                ),
                ("REDUCE", reduce.into()),
            ],
        );
        let mut workgroups = grid(
            (d.n as u32).div_ceil(rows),
            caps.max_workgroups_per_dimension,
        );
        workgroups[2] = (d.m as u32).div_ceil(mr).max(1);
        if workgroups[2] > caps.max_workgroups_per_dimension {
            return Err(check::shape_err(
                NAME,
                inputs,
                format!("M = {} needs too many workgroups", d.m),
            ));
        }
        let pro = match self.prologue {
            Prologue::None => "",
            Prologue::Norm { .. } => ".norm",
            Prologue::SwiGlu => ".swiglu",
        };
        Ok(GpuKernel {
            key: format!(
                "qmatvec.{wd}{pro}{}{}{}{}{}.wg{wg}.r{rows}.u{unroll}.mr{mr}.{}",
                if self.residual { ".res" } else { "" },
                if self.lora { ".lora" } else { "" },
                if self.rope().is_some() { ".rope" } else { "" },
                if self.cache_rows().is_some() {
                    ".cache"
                } else {
                    ""
                },
                if matches!(decode, Decode::Octet { .. }) {
                    ".oct"
                } else {
                    ""
                },
                if sg { "sg" } else { "wg" }
            ),
            source: source.into(),
            entry: "main",
            params: params_bytes(&params),
            workgroups,
        })
    }

    /// Every index is clamped into its row and the op cases cover every
    /// dtype, ragged N and M, and each prologue.
    fn trusted(&self) -> bool {
        true
    }
}

/// qmatvec.wgsl's NORM_FINISH: with the norm, invocation RW + mi turns x
/// row mi's reduced sum of squares into 1 / rms for every store (a barrier
/// all invocations pass), and with LoRA too, invocation i < RW fetches the
/// LoRA term of its sum from slot RW + MR + i through the same memory.
fn norm_finish(norm: bool, lora: bool) -> String {
    if !norm {
        return String::new();
    }
    let mut s = String::from(
        "    if ids.lid >= RW && ids.lid < RW + MR {
        inv_sh[ids.lid - RW] = 1.0 / sqrt(total / f32(p.k) + p.eps);
    }\n",
    );
    if lora {
        s += "    if ids.lid >= RW + MR && ids.lid < RM {
        lora_sh[ids.lid - RW - MR] = total;
    }\n";
    }
    s + "    workgroupBarrier();"
}

/// qmatvec.wgsl's VALUE: sum lid, scaled by 1 / rms with the norm, plus
/// the LoRA term kept apart then (clamped: invocations past RW compute a
/// value they never store).
fn value(norm: bool, lora: bool) -> String {
    let mut v = String::from("total");
    if norm {
        v += " * inv_sh[ids.lid % MR]";
        if lora {
            v += " + lora_sh[min(ids.lid, RW - 1u)]";
        }
    }
    v
}

/// qmatvec.wgsl's ROPE: `out`, the value turned with its pair's mate
/// (rows 2j and 2j + 1 are sums lid and lid + MR of one workgroup: ROWS is
/// even) by the angle of x row m's position; or the value itself.
fn rope_hole(rope: bool) -> String {
    if !rope {
        return "    let out = v;".into();
    }
    "    var out = v;
    if ids.lid < RW {
        rope_sh[ids.lid] = v;
    }
    workgroupBarrier();
    if ids.lid < RW {
        let j = ((n0 + ids.lid / MR) % p.head_dim) >> 1u;
        if 2u * j < p.n_dims {
            let cs = rope_cs(pos[min(m0 + ids.lid % MR, p.m - 1u)], j, p.theta_scale, p.freq_scale);
            if ((ids.lid / MR) & 1u) == 0u {
                out = v * cs.x - rope_sh[ids.lid + MR] * cs.y;
            } else {
                out = rope_sh[ids.lid - MR] * cs.y + v * cs.x;
            }
        }
    }"
    .into()
}

/// qmatvec.wgsl's STORE: `out` (plus the residual) at y[m, n], or into the
/// cache row seq names for x row m (kv_append.wgsl's rule; rows outside
/// the cache are not written).
fn store(residual: bool, cache: bool) -> String {
    if cache {
        return "let one = p.per_query == 0u;
            let r = seq[select(2u * m, 0u, one) + 1u] + select(0, i32(m), one);
            if r >= 0 && u32(r) < p.ctx {
                y[u32(r) * p.n + n] = out;
            }"
        .into();
    }
    if residual {
        "let o = m * p.n + n;
            y[o] = out + res[o];"
            .into()
    } else {
        "y[m * p.n + n] = out;".into()
    }
}

/// Every weight type on decode shapes (M = 1, 3, 8, 11), each prologue and
/// the residual; N from 1 to past the row-grouping thresholds.
pub fn cases() -> Vec<OpCase> {
    let f = |s: &[usize]| TensorDesc::f32(s);
    let mut cases = Vec::new();
    for wd in WEIGHT_DTYPES {
        let (k1, k2) = if wd.block_size() == 256 {
            (256, 1536)
        } else {
            (64, 576)
        };
        let shapes: [(usize, usize, usize, Prologue, bool); 6] = [
            (1, k1, 1, Prologue::None, false),
            (1, k2, 2100, Prologue::Norm { eps: 1e-5 }, true),
            (3, k2, 49, Prologue::SwiGlu, false),
            (8, k1, 4100, Prologue::None, true),
            (11, k2, 33, Prologue::Norm { eps: 1e-6 }, false),
            (2, k1, 1030, Prologue::SwiGlu, true),
        ];
        for (i, (m, k, n, prologue, residual)) in shapes.into_iter().enumerate() {
            let mut inputs = vec![f(&[m, k]), TensorDesc::new(wd, [n, k])];
            match prologue {
                Prologue::Norm { .. } => inputs.push(f(&[k])),
                Prologue::SwiGlu => inputs.push(f(&[m, k])),
                Prologue::None => {}
            }
            if residual {
                inputs.push(f(&[m, n]));
            }
            let op = QMatVec {
                prologue,
                residual,
                lora: false,
                allow_subgroups: i % 3 != 2,
                shape: None,
                octets: Some(i % 2 == 0),
                heads: None,
            };
            cases.push(OpCase::new(op, inputs, tolerance(k, prologue)));
        }
    }
    cases.extend(lora_cases());
    cases.extend(heads_cases());
    cases
}

/// The heads epilogue: rope alone (q), rope into the cache (k), the cache
/// alone (v), over a few weight types and each step; partial rotation;
/// one seq pair and one per row (distinct rows, from bands as KvAppend's
/// cases); rows outside the cache; with LoRA; N past the row grouping.
fn heads_cases() -> Vec<OpCase> {
    // (M, K, heads, head_dim, n_dims (0 = no rope), cache rows (0 = none),
    // per-row seq, LoRA rank (0 = none))
    type HeadsCase = (usize, usize, usize, usize, usize, usize, bool, usize);
    let f = |s: &[usize]| TensorDesc::f32(s);
    let shapes: [HeadsCase; 7] = [
        (1, 576, 9, 64, 64, 0, false, 0),
        (1, 576, 3, 64, 64, 40, false, 0),
        (3, 576, 3, 64, 0, 40, false, 0),
        (5, 256, 2, 64, 32, 30, true, 0),
        (2, 256, 4, 16, 16, 20, false, 8),
        (1, 256, 32, 128, 128, 0, false, 0),
        (4, 256, 2, 128, 128, 12, true, 4),
    ];
    let mut cases = Vec::new();
    for (di, wd) in [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q8_0,
        DType::Q4K,
        DType::F32,
    ]
    .into_iter()
    .enumerate()
    {
        for (i, (m, k, heads, hd, n_dims, ctx, per_row, rank)) in shapes.into_iter().enumerate() {
            let k = if wd.block_size() == 256 {
                256 * k.div_ceil(256)
            } else {
                k
            };
            let n = heads * hd;
            let mut inputs = vec![f(&[m, k]), TensorDesc::new(wd, [n, k]), f(&[k])];
            let rope = (n_dims > 0).then(|| Rope::new(RopeMode::Normal, n_dims, 10000.0));
            if rope.is_some() {
                inputs.push(TensorDesc::new(DType::I32, [m]));
            }
            let cache_rows = (ctx > 0).then_some(ctx);
            if ctx > 0 {
                inputs.push(TensorDesc::new(
                    DType::I32,
                    [if per_row { m } else { 1 }, 2],
                ));
            }
            let mut op = QMatVec {
                octets: Some((i + di) % 2 == 0),
                ..QMatVec::new(Prologue::Norm { eps: 1e-5 }, false).with_heads(Heads {
                    head_dim: hd,
                    rope,
                    cache_rows,
                })
            };
            let mut zeros = None;
            if rank > 0 {
                zeros = Some(inputs.len() + 1);
                inputs.extend([f(&[m, rank]), f(&[m, rank]), f(&[n, rank])]);
                op = op.with_lora();
            }
            let tol = tolerance(k + rank, op.prologue);
            // Positions (and starts) small and large; rows from before the
            // cache to past it, one band per row when each has its own.
            let (lo, hi) = (-2, ctx as i32 + 2);
            let ranges = if per_row {
                let w = (hi - lo) / m as i32;
                (0..m as i32)
                    .rev()
                    .flat_map(|r| [(-3, 4), (lo + r * w, lo + (r + 1) * w)])
                    .collect()
            } else if ctx > 0 {
                vec![(-3, 4), (lo, hi)]
            } else {
                vec![(0, 8192)]
            };
            let mut case = OpCase::new(op, inputs, tol).int_ranges(ranges);
            if let Some(z) = zeros {
                case = case.zeros(z, 0.35);
            }
            cases.push(case);
        }
    }
    cases
}

/// The LoRA epilogue over a few weight types, each prologue, with and
/// without the residual; M = 1, 3, 8 (one as [2, 4]), and 11 for a second
/// workgroup of x rows; R = 4, 16, 20, and 136 for ranks past WG; N past
/// the row-grouping threshold. About a third of the scales are 0: an
/// adapter off for that row.
fn lora_cases() -> Vec<OpCase> {
    type LoraCase = (&'static [usize], usize, usize, Prologue, bool, usize);
    let f = |s: &[usize]| TensorDesc::f32(s);
    let mut cases = Vec::new();
    for wd in [DType::Q4_1, DType::Q8_0, DType::F32, DType::Q4K] {
        let (k1, k2) = if wd.block_size() == 256 {
            (256, 1536)
        } else {
            (64, 576)
        };
        // (x's dims but K, K, N, prologue, residual, R)
        let shapes: [LoraCase; 7] = [
            (&[1], k1, 5, Prologue::None, false, 4),
            (&[3], k2, 2100, Prologue::Norm { eps: 1e-5 }, true, 16),
            (&[8], k1, 33, Prologue::SwiGlu, false, 20),
            (&[1], k2, 49, Prologue::SwiGlu, true, 20),
            (&[3], k1, 1030, Prologue::None, true, 4),
            (&[2, 4], k2, 4100, Prologue::Norm { eps: 1e-6 }, false, 16),
            (&[11], k1, 70, Prologue::SwiGlu, true, 136),
        ];
        for (i, (lead, k, n, prologue, residual, rank)) in shapes.into_iter().enumerate() {
            let shape = |last: usize| [lead, &[last]].concat();
            let mut inputs = vec![f(&shape(k)), TensorDesc::new(wd, [n, k])];
            match prologue {
                Prologue::Norm { .. } => inputs.push(f(&[k])),
                Prologue::SwiGlu => inputs.push(f(&shape(k))),
                Prologue::None => {}
            }
            if residual {
                inputs.push(f(&shape(n)));
            }
            let ls = inputs.len() + 1;
            inputs.extend([f(&shape(rank)), f(&shape(rank)), f(&[n, rank])]);
            let op = QMatVec {
                allow_subgroups: i % 3 != 2,
                octets: Some(i % 2 == 1),
                ..QMatVec::new(prologue, residual).with_lora()
            };
            let tol = tolerance(k + rank, prologue);
            cases.push(OpCase::new(op, inputs, tol).zeros(ls, 0.35));
        }
    }
    cases
}

/// As qmatmul's: 8 eps * K covers f32 accumulation in any order for
/// magnitudes <= 1 (LoRA cases pass K + R: R more such terms). The norm scales x by up to ~sqrt(3) (uniform inputs
/// have mean square 1/3), so its budget is wider.
fn tolerance(k: usize, prologue: Prologue) -> Tolerance {
    let scale = if matches!(prologue, Prologue::Norm { .. }) {
        4.0
    } else {
        1.0
    };
    Tolerance::new(scale * 8.0 * f32::EPSILON * k as f32, 1e-5)
}

#[cfg(test)]
mod tests;
