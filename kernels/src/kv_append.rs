//! KV-cache append: writes `T` new rows of keys or values into the cache,
//! in place (the engine's `Graph::write_into` on the resident cache), at
//! the rows the sequence input names. Rows outside `0..ctx` are not
//! written: the layer above reports context overflow.
//!
//! Also the sequence input every KV op shares ([`check_seq`], [`Seq`]):
//! seq I32 `[R, 2]`, each row `(start, row)`, with R = 1 or R = T.
//! - R = 1, one sequence of T consecutive tokens (prefill, single-sequence
//!   decode): token t sits at cache row `row + t` and sees keys
//!   `start ..= row + t`.
//! - R = T, T sequences of one token each (batched decode): token t sits at
//!   cache row `row_t` and sees keys `start_t ..= row_t`.
//!
//! The append uses the rows only; attention adds the starts (and a sliding
//! window). The pairs are an input, so one compiled plan serves every
//! step; they are i32 and wrap like the GPU's arithmetic (a negative row
//! is not written and sees no key; a negative start bounds nothing).
//! Several sequences share one cache by owning disjoint blocks of its
//! rows; the kernels never know.

use half::f16;

use crate::cases::{OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::template::{fill, u};
use crate::tensor::{CpuTensor, TensorDesc, TensorError};

const WGSL: &str = include_str!("../wgsl/kv_append.wgsl");

/// Invocations per workgroup: one per unit written, so any size works.
const WG: u32 = 256;

/// Mirrors `Params` in `kv_append.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    ctx: u32,
    /// Units (vec4, f32 or f16 pair) per row.
    row_len: u32,
    /// 1 when seq has a row per new row (R = T > 1), else 0.
    per_query: u32,
}

/// `cache[row_t] = new[t]` (see the module docs for `row_t`): new
/// `[T, n_kv, head_dim]` F32 and seq I32 `[1, 2]` or `[T, 2]` in, the cache
/// `[ctx, n_kv, head_dim]` in `cache` dtype (F32 or F16) out. With R = T
/// the rows must be distinct: which of two writes to one row lands is
/// unspecified on the GPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KvAppend {
    /// Rows of the cache.
    pub ctx: usize,
    /// The cache's dtype: F32, or F16 (rounded to nearest, half the bytes).
    pub cache: DType,
}

impl KvAppend {
    pub fn new(ctx: usize, cache: DType) -> KvAppend {
        KvAppend { ctx, cache }
    }
}

/// Checks that `seq` is I32 `[1, 2]` or `[n_q, 2]` and returns whether it
/// has one row per query (R = T > 1).
pub(crate) fn check_seq(
    op: &'static str,
    inputs: &[TensorDesc],
    seq: &TensorDesc,
    n_q: usize,
) -> Result<bool, OpError> {
    check::dtype(op, seq, &[DType::I32], "the sequence ranges")?;
    match seq.shape.as_slice() {
        &[r, 2] if r == 1 || r == n_q => Ok(r > 1),
        _ => Err(check::shape_err(
            op,
            inputs,
            format!("seq must be [1, 2] or [T, 2] (start, row) with T = {n_q}"),
        )),
    }
}

/// The sequence input as the CPU reads it: `(start, row)` per row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Seq(Vec<(i32, i32)>);

impl Seq {
    /// Query (or new row) `t`'s cache row and the first key it may see:
    /// `(row + t, start)` from one row (i32 wrapping, like the GPU),
    /// `(row_t, start_t)` from one row per query. `t` < T.
    pub(crate) fn range(&self, t: usize) -> (i32, i32) {
        match self.0[..] {
            [(start, row)] => (row.wrapping_add(t as i32), start),
            _ => (self.0[t].1, self.0[t].0),
        }
    }

    /// The cache row new row `t` lands on, if inside a cache of `ctx` rows.
    pub(crate) fn cache_row(&self, t: usize, ctx: usize) -> Option<usize> {
        usize::try_from(self.range(t).0).ok().filter(|&r| r < ctx)
    }
}

/// A seq input from `(start, row)` pairs: I32 `[pairs.len(), 2]`.
pub fn seq_tensor(pairs: &[(i32, i32)]) -> Result<CpuTensor, TensorError> {
    let bytes = pairs
        .iter()
        .flat_map(|&(start, row)| [start, row])
        .flat_map(i32::to_le_bytes)
        .collect();
    CpuTensor::from_bytes(TensorDesc::new(DType::I32, [pairs.len(), 2]), bytes)
}

/// Reads a seq input for `n_q` queries (checked as [`check_seq`] does).
pub(crate) fn read_seq(op: &'static str, t: &CpuTensor, n_q: usize) -> Result<Seq, OpError> {
    let desc = t.desc().clone();
    check_seq(op, std::slice::from_ref(&desc), &desc, n_q)?;
    let ints: Vec<i32> = t
        .bytes()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Seq(ints.chunks_exact(2).map(|p| (p[0], p[1])).collect()))
}

impl Op for KvAppend {
    fn name(&self) -> &'static str {
        "kv_append"
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        let op = self.name();
        check::arity(op, inputs, 2)?;
        let (new, seq) = (&inputs[0], &inputs[1]);
        check::dtype(op, new, &[DType::F32], "new keys or values")?;
        if self.cache != DType::F32 && self.cache != DType::F16 {
            return Err(OpError::DType {
                op,
                dtype: self.cache,
                what: "the cache",
            });
        }
        let &[t, n_kv, head_dim] = new.shape.as_slice() else {
            return Err(check::shape_err(
                op,
                inputs,
                "new rows must be [T, n_kv_heads, head_dim]",
            ));
        };
        check_seq(op, inputs, seq, t)?;
        // An F16 cache is written as u32 pairs, so rows must hold whole pairs.
        if self.cache == DType::F16 && (n_kv * head_dim) % 2 == 1 {
            return Err(check::shape_err(
                op,
                inputs,
                "an F16 cache needs an even n_kv_heads * head_dim",
            ));
        }
        let out = TensorDesc::new(self.cache, [self.ctx, n_kv, head_dim]);
        check::numel_u32(op, inputs, new)?;
        check::numel_u32(op, inputs, &out)?;
        Ok(out)
    }

    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let op = self.name();
        let new = inputs[0]
            .to_f32()
            .map_err(|_| check::not_f32(op, inputs[0].dtype()))?;
        let seq = read_seq(op, inputs[1], inputs[0].desc().shape[0])?;
        let row = inputs[0].desc().shape[1..].iter().product::<usize>();
        let rows = new
            .chunks_exact(row.max(1))
            .enumerate()
            .filter_map(|(t, src)| Some((seq.cache_row(t, self.ctx)?, src)));
        match self.cache {
            DType::F32 => {
                let o = out.as_f32_mut().ok_or(check::not_f32(op, DType::F32))?;
                for (r, src) in rows {
                    o[r * row..(r + 1) * row].copy_from_slice(src);
                }
            }
            _ => {
                let mut bytes = out.bytes().into_owned();
                for (r, src) in rows {
                    for (i, &x) in src.iter().enumerate() {
                        let at = 2 * (r * row + i);
                        bytes[at..at + 2].copy_from_slice(&f16::from_f32(x).to_le_bytes());
                    }
                }
                *out = CpuTensor::from_bytes(out.desc().clone(), bytes).map_err(|_| {
                    OpError::DType {
                        op,
                        dtype: out.dtype(),
                        what: "the cache",
                    }
                })?;
            }
        }
        Ok(())
    }

    fn gpu(
        &self,
        inputs: &[TensorDesc],
        out: &TensorDesc,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        let op = self.name();
        let (new, seq) = (&inputs[0], &inputs[1]);
        let per_query = check_seq(op, inputs, seq, new.shape[0])?;
        let row = new.shape[1..].iter().product::<usize>();
        // (unit width, src type, dst type, conversion, key)
        let (width, src, dst, convert, key) = match out.dtype {
            DType::F16 => (2, "vec2<f32>", "u32", "pack2x16float", "f16"),
            _ if row % 4 == 0 => (4, "vec4<f32>", "vec4<f32>", "", "f32.vec4"),
            _ => (1, "f32", "f32", "", "f32"),
        };
        let rows = check::dim_u32(op, inputs, new.shape[0])?;
        let row_len = check::dim_u32(op, inputs, row / width)?;
        let ctx = check::dim_u32(op, inputs, self.ctx)?;
        let units = check::numel_u32(op, inputs, new)? / width as u32;
        let source = fill(
            WGSL,
            &[
                ("WG", u(WG)),
                ("SRC", src.into()),
                ("DST", dst.into()),
                ("CONVERT", convert.into()),
            ],
        );
        Ok(GpuKernel {
            key: format!("kv_append.{key}"),
            source: source.into(),
            entry: "main",
            params: params_bytes(&Params {
                rows,
                ctx,
                row_len,
                per_query: u32::from(per_query),
            }),
            workgroups: grid(units.div_ceil(WG), caps.max_workgroups_per_dimension),
        })
    }
}

/// Appends of 1 to 130 rows: one sequence at rows that fit, overflow the
/// end, or both, and (T > 1) one row per new row, distinct, some outside the
/// cache; vec4, scalar and f16 units.
pub fn cases() -> Vec<OpCase> {
    let mut cases = Vec::new();
    for (t, n_kv, hd, ctx) in [
        (1, 3, 64, 40),
        (3, 1, 5, 8),
        (17, 2, 128, 20),
        (130, 3, 64, 150),
        (1, 1, 3, 1),
    ] {
        for cache in [DType::F32, DType::F16] {
            if cache == DType::F16 && (n_kv * hd) % 2 == 1 {
                continue;
            }
            // Copies are exact; f16 rounding happens identically on both sides.
            let case = |r: usize| {
                let inputs = vec![
                    TensorDesc::f32([t, n_kv, hd]),
                    TensorDesc::new(DType::I32, [r, 2]),
                ];
                OpCase::new(KvAppend::new(ctx, cache), inputs, Tolerance::new(0.0, 0.0))
            };
            // Starts are ignored; rows from before the start to past the end.
            let (lo, hi) = (-2, ctx as i32 + 2);
            cases.push(case(1).int_ranges(vec![(-3, 4), (lo, hi)]));
            if t > 1 {
                // Row t from its own band of [lo, hi), so rows never collide,
                // the bands in reverse so rows never run consecutively.
                let w = (hi - lo) / t as i32;
                let bands = (0..t as i32)
                    .rev()
                    .flat_map(|i| [(-3, 4), (lo + i * w, lo + (i + 1) * w)]);
                cases.push(case(t).int_ranges(bands.collect()));
            }
        }
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(pairs: &[(i32, i32)]) -> CpuTensor {
        seq_tensor(pairs).unwrap()
    }

    #[test]
    fn writes_rows_inside_the_cache_only() {
        let op = KvAppend::new(3, DType::F32);
        let new = CpuTensor::from_f32([2, 1, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let mut cache = CpuTensor::from_f32([3, 1, 2], vec![-1.0; 6]).unwrap();
        op.cpu(&[&new, &seq(&[(0, 2)])], &mut cache).unwrap();
        assert_eq!(cache.as_f32().unwrap(), &[-1.0, -1.0, -1.0, -1.0, 1.0, 2.0]);
        // The start does not move the append.
        op.cpu(&[&new, &seq(&[(2, -1)])], &mut cache).unwrap();
        assert_eq!(cache.as_f32().unwrap(), &[3.0, 4.0, -1.0, -1.0, 1.0, 2.0]);
    }

    #[test]
    fn one_row_per_new_row() {
        let op = KvAppend::new(4, DType::F32);
        let new = CpuTensor::from_f32([3, 1, 1], vec![1.0, 2.0, 3.0]).unwrap();
        let mut cache = CpuTensor::from_f32([4, 1, 1], vec![0.0; 4]).unwrap();
        // Rows 3, 0 and 9 (outside: not written), in that order.
        op.cpu(&[&new, &seq(&[(2, 3), (0, 0), (8, 9)])], &mut cache)
            .unwrap();
        assert_eq!(cache.as_f32().unwrap(), &[2.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn seq_must_be_one_row_or_one_per_query() {
        let op = KvAppend::new(4, DType::F32);
        let new = TensorDesc::f32([3, 1, 2]);
        let i32s = |s: &[usize]| TensorDesc::new(DType::I32, s.to_vec());
        for good in [[1, 2], [3, 2]] {
            assert!(op.output(&[new.clone(), i32s(&good)]).is_ok(), "{good:?}");
        }
        for bad in [&[1][..], &[2], &[2, 2], &[3, 1], &[1, 2, 1]] {
            let err = op.output(&[new.clone(), i32s(bad)]).unwrap_err();
            assert!(matches!(err, OpError::Shape { .. }), "{bad:?}: {err}");
        }
        let f32_seq = TensorDesc::f32([1, 2]);
        let err = op.output(&[new, f32_seq]).unwrap_err();
        assert!(matches!(err, OpError::DType { .. }), "{err}");
    }

    #[test]
    fn f16_cache_rounds() {
        let op = KvAppend::new(2, DType::F16);
        let new = CpuTensor::from_f32([1, 1, 2], vec![1.0, 0.1]).unwrap();
        let mut cache = CpuTensor::zeros(&TensorDesc::new(DType::F16, [2, 1, 2])).unwrap();
        op.cpu(&[&new, &seq(&[(0, 1)])], &mut cache).unwrap();
        let got = cache.to_f32().unwrap();
        assert_eq!(&got[..], &[0.0, 0.0, 1.0, f16::from_f32(0.1).to_f32()]);
    }
}
