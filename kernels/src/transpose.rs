//! Swaps the last two dimensions: `[.., R, C] -> [.., C, R]`, batched over
//! the leading dimensions, for F32 (tiled through workgroup memory) and F16.

use rayon::prelude::*;

use crate::cases::{OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::tensor::{CpuTensor, TensorDesc};

const WGSL_F32: &str = include_str!("../wgsl/transpose.wgsl");
const WGSL_F16: &str = include_str!("../wgsl/transpose_f16.wgsl");
/// Tile edge of the F32 kernel.
const T: usize = 32;

/// Mirrors `Params` in `transpose.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct ParamsF32 {
    rows: u32,
    cols: u32,
    tiles_c: u32,
    tiles_per_batch: u32,
    tiles: u32,
    _pad: [u32; 3],
}

/// Mirrors `Params` in `transpose_f16.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct ParamsF16 {
    rows: u32,
    cols: u32,
    n: u32,
    words: u32,
}

/// `x: [.., R, C] -> [.., C, R]`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Transpose;

/// (batch, R, C) of a tensor of rank >= 2.
fn dims(x: &TensorDesc) -> (usize, usize, usize) {
    let n = x.shape.len();
    (
        x.shape[..n - 2].iter().product(),
        x.shape[n - 2],
        x.shape[n - 1],
    )
}

impl Op for Transpose {
    fn name(&self) -> &'static str {
        "transpose"
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        check::arity(self.name(), inputs, 1)?;
        let x = &inputs[0];
        check::dtype(self.name(), x, &[DType::F32, DType::F16], "its input")?;
        check::numel_u32(self.name(), inputs, x)?;
        let n = x.shape.len();
        if n < 2 {
            return Err(check::shape_err(
                self.name(),
                inputs,
                "needs at least two dimensions",
            ));
        }
        let mut shape = x.shape.clone();
        shape.swap(n - 2, n - 1);
        Ok(TensorDesc::new(x.dtype, shape))
    }

    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let (_, r, c) = dims(inputs[0].desc());
        if r * c == 0 {
            return Ok(());
        }
        // Moves elements as bytes, so F16 stays bit-exact.
        let size = inputs[0].dtype().block_bytes();
        let x = inputs[0].bytes();
        let mut o = vec![0u8; x.len()];
        o.par_chunks_mut(r * c * size)
            .zip(x.par_chunks(r * c * size))
            .for_each(|(o, x)| {
                for i in 0..r {
                    for j in 0..c {
                        let (src, dst) = ((i * c + j) * size, (j * r + i) * size);
                        o[dst..dst + size].copy_from_slice(&x[src..src + size]);
                    }
                }
            });
        *out = CpuTensor::from_bytes(out.desc().clone(), o).map_err(|e| {
            check::shape_err(self.name(), &[inputs[0].desc().clone()], e.to_string())
        })?;
        Ok(())
    }

    fn gpu(
        &self,
        inputs: &[TensorDesc],
        _out: &TensorDesc,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        let x = &inputs[0];
        let n = check::numel_u32(self.name(), inputs, x)?;
        let (batch, r, c) = dims(x);
        let (rows, cols) = (
            check::dim_u32(self.name(), inputs, r)?,
            check::dim_u32(self.name(), inputs, c)?,
        );
        if x.dtype == DType::F16 {
            let words = n.div_ceil(2);
            return Ok(GpuKernel {
                key: "transpose.f16".into(),
                source: WGSL_F16.into(),
                entry: "main",
                params: params_bytes(&ParamsF16 {
                    rows,
                    cols,
                    n,
                    words,
                }),
                workgroups: grid(words.div_ceil(256), caps.max_workgroups_per_dimension),
            });
        }
        let tiles_c = check::dim_u32(self.name(), inputs, c.div_ceil(T))?;
        let tiles_per_batch = check::dim_u32(self.name(), inputs, r.div_ceil(T) * c.div_ceil(T))?;
        let tiles = check::dim_u32(self.name(), inputs, batch * tiles_per_batch as usize)?;
        Ok(GpuKernel {
            key: "transpose.f32".into(),
            source: WGSL_F32.into(),
            entry: "main",
            params: params_bytes(&ParamsF32 {
                rows,
                cols,
                tiles_c,
                tiles_per_batch,
                tiles,
                _pad: [0; 3],
            }),
            workgroups: grid(tiles, caps.max_workgroups_per_dimension),
        })
    }
}

/// Square, ragged, single-row and single-column, batched; F32 and F16.
pub fn cases() -> Vec<OpCase> {
    // A transpose moves values: exact.
    let exact = Tolerance::new(0.0, 0.0);
    let shapes: [&[usize]; 8] = [
        &[1, 1],
        &[1, 7],
        &[7, 1],
        &[32, 32],
        &[33, 65],
        &[3, 5, 7],
        &[2, 3, 100, 37],
        &[4096, 129],
    ];
    let mut cases = Vec::new();
    for shape in shapes {
        for dtype in [DType::F32, DType::F16] {
            cases.push(OpCase::new(
                Transpose,
                vec![TensorDesc::new(dtype, shape)],
                exact,
            ));
        }
    }
    cases
}
