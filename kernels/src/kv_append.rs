//! KV-cache append: writes `T` new rows of keys or values into the cache at
//! rows `pos .. pos + T`, in place (the engine's `Graph::write_into` on the
//! resident cache). `pos` is an I32 `[1]` input, so one compiled plan serves
//! every decode step. Rows outside `0..ctx` are not written: the layer above
//! reports context overflow.

use half::f16;

use crate::cases::{OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::template::{fill, u};
use crate::tensor::{CpuTensor, TensorDesc};

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
    _pad: u32,
}

/// `cache[pos + t] = new[t]`: new `[T, n_kv, head_dim]` F32 and pos I32 `[1]`
/// in, the cache `[ctx, n_kv, head_dim]` in `cache` dtype (F32 or F16) out.
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

/// The position input's value: a one-element I32 tensor.
pub(crate) fn read_pos(op: &'static str, t: &CpuTensor) -> Result<i32, OpError> {
    let b = t.bytes();
    match (t.dtype(), b.get(..4)) {
        (DType::I32, Some(&[a, b, c, d])) => Ok(i32::from_le_bytes([a, b, c, d])),
        _ => Err(OpError::DType {
            op,
            dtype: t.dtype(),
            what: "the position (one I32)",
        }),
    }
}

/// Checks that `pos` is an I32 `[1]`.
pub(crate) fn check_pos(
    op: &'static str,
    inputs: &[TensorDesc],
    pos: &TensorDesc,
) -> Result<(), OpError> {
    check::dtype(op, pos, &[DType::I32], "the position")?;
    if pos.shape != [1] {
        return Err(check::shape_err(
            op,
            inputs,
            "the position must have shape [1]",
        ));
    }
    Ok(())
}

impl Op for KvAppend {
    fn name(&self) -> &'static str {
        "kv_append"
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        let op = self.name();
        check::arity(op, inputs, 2)?;
        let (new, pos) = (&inputs[0], &inputs[1]);
        check::dtype(op, new, &[DType::F32], "new keys or values")?;
        check_pos(op, inputs, pos)?;
        if self.cache != DType::F32 && self.cache != DType::F16 {
            return Err(OpError::DType {
                op,
                dtype: self.cache,
                what: "the cache",
            });
        }
        let &[_, n_kv, head_dim] = new.shape.as_slice() else {
            return Err(check::shape_err(
                op,
                inputs,
                "new rows must be [T, n_kv_heads, head_dim]",
            ));
        };
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
        let pos = read_pos(op, inputs[1])?;
        let row = inputs[0].desc().shape[1..].iter().product::<usize>();
        // Which cache rows the new rows land on (the GPU's wrapping i32 math).
        let target = |t: usize| -> Option<usize> {
            usize::try_from(pos.wrapping_add(t as i32))
                .ok()
                .filter(|&r| r < self.ctx)
        };
        let rows = new
            .chunks_exact(row.max(1))
            .enumerate()
            .filter_map(|(t, src)| Some((target(t)?, src)));
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
        let new = &inputs[0];
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
                _pad: 0,
            }),
            workgroups: grid(units.div_ceil(WG), caps.max_workgroups_per_dimension),
        })
    }
}

/// Appends of 1 to 130 rows, at positions that fit, overflow the end, or
/// both; vec4, scalar and f16 units.
pub fn cases() -> Vec<OpCase> {
    let i32_1 = TensorDesc::new(DType::I32, [1]);
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
            let new = TensorDesc::f32([t, n_kv, hd]);
            let case = OpCase::new(
                KvAppend::new(ctx, cache),
                vec![new, i32_1.clone()],
                Tolerance::new(0.0, 0.0),
            );
            // Positions from before the start to past the end.
            cases.push(case.ints(-2, ctx as i32 + 2));
        }
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(p: i32) -> CpuTensor {
        CpuTensor::from_bytes(TensorDesc::new(DType::I32, [1]), p.to_le_bytes().to_vec()).unwrap()
    }

    #[test]
    fn writes_rows_inside_the_cache_only() {
        let op = KvAppend::new(3, DType::F32);
        let new = CpuTensor::from_f32([2, 1, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let mut cache = CpuTensor::from_f32([3, 1, 2], vec![-1.0; 6]).unwrap();
        op.cpu(&[&new, &pos(2)], &mut cache).unwrap();
        assert_eq!(cache.as_f32().unwrap(), &[-1.0, -1.0, -1.0, -1.0, 1.0, 2.0]);
        op.cpu(&[&new, &pos(-1)], &mut cache).unwrap();
        assert_eq!(cache.as_f32().unwrap(), &[3.0, 4.0, -1.0, -1.0, 1.0, 2.0]);
    }

    #[test]
    fn f16_cache_rounds() {
        let op = KvAppend::new(2, DType::F16);
        let new = CpuTensor::from_f32([1, 1, 2], vec![1.0, 0.1]).unwrap();
        let mut cache = CpuTensor::zeros(&TensorDesc::new(DType::F16, [2, 1, 2])).unwrap();
        op.cpu(&[&new, &pos(1)], &mut cache).unwrap();
        let got = cache.to_f32().unwrap();
        assert_eq!(&got[..], &[0.0, 0.0, 1.0, f16::from_f32(0.1).to_f32()]);
    }
}
