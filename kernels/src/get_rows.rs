//! Embedding lookup: `out[.., D] = table[ids[..], :]` with `table: [V, D]`
//! in F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K (GPU
//! layout of [`crate::layout`]), `ids` I32 of any shape, `out` F32 of shape
//! `ids.shape + [D]`. D must be a whole number of blocks (and of 4 values
//! for F32, 8 for F16).
//!
//! An id outside `[0, V)` yields a row of zeros, on the CPU and the GPU
//! alike: reading past the table is never an option, clamping would
//! silently return a real token's embedding, and a zero row is easy to spot
//! when debugging. The model layer validates ids before they get here.
//!
//! Values are decoded with ggml's arithmetic, so the GPU's rows are
//! bit-identical to `dequantize` on the CPU.

use crate::cases::{OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::layout;
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::quant;
use crate::template::{fill, u};
use crate::tensor::{CpuTensor, TensorDesc};

const WGSL: &str = include_str!("../wgsl/get_rows.wgsl");
const NAME: &str = "get_rows";
const WG: u32 = 64;

/// Table dtypes the kernel decodes.
pub const TABLE_DTYPES: [DType; 10] = [
    DType::F32,
    DType::F16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
];

/// Mirrors `Params` in `get_rows.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32,
    v: u32,
    d: u32,
    chunks: u32,
    blocks: u32,
    s1: u32,
    s2: u32,
    s3: u32,
}

/// The op; inputs `[table, ids]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetRows;

/// Values one invocation decodes (the decoders' chunk).
fn chunk_len(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 4,
        DType::F16 => 8,
        _ => 32,
    }
}

impl Op for GetRows {
    fn name(&self) -> &'static str {
        NAME
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        check::arity(NAME, inputs, 2)?;
        let (table, ids) = (&inputs[0], &inputs[1]);
        check::dtype(NAME, table, &TABLE_DTYPES, "the table")?;
        check::dtype(NAME, ids, &[DType::I32], "ids")?;
        if table.shape.len() != 2 {
            return Err(check::shape_err(NAME, inputs, "the table must be [V, D]"));
        }
        let d = table.shape[1];
        let unit = table.dtype.block_size().max(chunk_len(table.dtype));
        if d % unit != 0 {
            return Err(check::shape_err(
                NAME,
                inputs,
                format!("D = {d} is not a multiple of {unit}"),
            ));
        }
        let mut shape = ids.shape.clone();
        shape.push(d);
        let out = TensorDesc::f32(shape);
        check::numel_u32(NAME, inputs, &out)?;
        layout::gpu_bytes(table)
            .and_then(|b| u32::try_from(b / 4).ok())
            .ok_or_else(|| check::shape_err(NAME, inputs, "the table has more than 2^32 words"))?;
        Ok(out)
    }

    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let (table, ids) = (inputs[0], inputs[1]);
        let (v, d) = (table.shape()[0], table.shape()[1]);
        let row_bytes = table
            .dtype()
            .bytes_for(d)
            .ok_or(check::not_f32(NAME, table.dtype()))?;
        let bytes = table.bytes();
        let ids = ids.bytes();
        let o = out.as_f32_mut().ok_or(check::not_f32(NAME, DType::F32))?;
        if d == 0 {
            return Ok(());
        }
        for (row, id) in o.chunks_exact_mut(d).zip(ids.chunks_exact(4)) {
            let id = i32::from_le_bytes([id[0], id[1], id[2], id[3]]);
            match usize::try_from(id) {
                Ok(id) if id < v => {
                    quant::dequantize(table.dtype(), &bytes[id * row_bytes..][..row_bytes], row)
                        .map_err(|_| check::not_f32(NAME, table.dtype()))?;
                }
                _ => row.fill(0.0),
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
        self.output(inputs)?;
        let (table, ids) = (&inputs[0], &inputs[1]);
        let td = table.dtype;
        let chunk = chunk_len(td);
        let (v, d) = (table.shape[0], table.shape[1]);
        let t = ids.numel().unwrap_or(0);
        let offsets = layout::section_offsets(table).unwrap_or_default();
        let off = |i: usize| offsets.get(i).map_or(0, |&o| o as u32);
        let threads = check::numel_u32(NAME, inputs, out)? / chunk as u32;
        let params = Params {
            t: check::dim_u32(NAME, inputs, t)?,
            v: check::dim_u32(NAME, inputs, v)?,
            d: d as u32,
            chunks: (d / chunk) as u32,
            blocks: (d / td.block_size()) as u32,
            s1: off(1),
            s2: off(2),
            s3: off(3),
        };
        let source = fill(
            WGSL,
            &[
                ("WG", u(WG)),
                ("CHUNK", u(chunk as u32)),
                ("DECODERS", crate::qmatmul::decoder_source(td)),
                ("DECODE", format!("decode_{}", td.name())),
            ],
        );
        Ok(GpuKernel {
            key: format!("get_rows.{td}"),
            source: source.into(),
            entry: "main",
            params: params_bytes(&params),
            workgroups: grid(threads.div_ceil(WG), caps.max_workgroups_per_dimension),
        })
    }
}

/// Every table dtype; ids drawn from [-2, V + 2) so out-of-range ids come up.
pub fn cases() -> Vec<OpCase> {
    let mut cases = Vec::new();
    for td in TABLE_DTYPES {
        let d = if td.block_size() == 256 { 512 } else { 576 };
        for (v, ids) in [(1usize, vec![3]), (49, vec![1]), (300, vec![2, 17])] {
            let inputs = vec![
                TensorDesc::new(td, [v, d]),
                TensorDesc::new(DType::I32, ids),
            ];
            // Decoding is exact: the GPU must match bit for bit.
            cases.push(
                OpCase::new(GetRows, inputs, Tolerance::new(0.0, 0.0)).ints(-2, v as i32 + 2),
            );
        }
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_ids_give_zero_rows() {
        let table = CpuTensor::from_f32([2, 4], (1..=8).map(|v| v as f32).collect()).unwrap();
        let ids: Vec<u8> = [1i32, -1, 2, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let ids = CpuTensor::from_bytes(TensorDesc::new(DType::I32, [4]), ids).unwrap();
        let out_desc = GetRows
            .output(&[table.desc().clone(), ids.desc().clone()])
            .unwrap();
        let mut out = CpuTensor::zeros(&out_desc).unwrap();
        GetRows.cpu(&[&table, &ids], &mut out).unwrap();
        let want = [
            5., 6., 7., 8., 0., 0., 0., 0., 0., 0., 0., 0., 1., 2., 3., 4.,
        ];
        assert_eq!(out.as_f32().unwrap(), &want);
    }
}
