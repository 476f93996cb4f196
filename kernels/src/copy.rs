//! Copy with an optional cast between F32 and F16 (`[..] -> [..]`, same
//! shape): F32 -> F32, F32 -> F16 (round to nearest, as the WGSL spec's
//! `pack2x16float` allows), F16 -> F32 (exact), F16 -> F16.

use rayon::prelude::*;

use crate::cases::{Dist, OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::template::fill;
use crate::tensor::{CpuTensor, TensorDesc};

const WGSL: &str = include_str!("../wgsl/copy.wgsl");
const WG: u32 = 256;

/// Mirrors `Params` in `copy.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    items: u32,
    _pad: [u32; 2],
}

/// Copies its input into a new tensor of dtype `to`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Copy {
    pub to: DType,
}

const FLOATS: [DType; 2] = [DType::F32, DType::F16];

/// The kernel bodies (`i` is the invocation's item), by (from, to).
const F32_TO_F16: &str = "    // One output word: elements 2i and 2i + 1 (if it exists).
    let e = 2u * i;
    var hi = 0.0;
    if e + 1u < p.n {
        hi = x[e + 1u];
    }
    out[i] = pack2x16float(vec2<f32>(x[e], hi));";
const F16_TO_F32: &str = "    // One input word: elements 2i and 2i + 1 (if it exists).
    let v = unpack2x16float(x[i]);
    out[2u * i] = v.x;
    if 2u * i + 1u < p.n {
        out[2u * i + 1u] = v.y;
    }";
const SAME: &str = "    out[i] = x[i];";

impl Op for Copy {
    fn name(&self) -> &'static str {
        "copy"
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        check::arity(self.name(), inputs, 1)?;
        check::dtype(self.name(), &inputs[0], &FLOATS, "its input")?;
        if !FLOATS.contains(&self.to) {
            return Err(OpError::DType {
                op: self.name(),
                dtype: self.to,
                what: "its output",
            });
        }
        check::numel_u32(self.name(), inputs, &inputs[0])?;
        Ok(TensorDesc::new(self.to, inputs[0].shape.clone()))
    }

    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let x = inputs[0]
            .to_f32()
            .map_err(|_| check::not_f32(self.name(), inputs[0].dtype()))?;
        match self.to {
            DType::F32 => {
                let o = out
                    .as_f32_mut()
                    .ok_or(check::not_f32(self.name(), DType::F32))?;
                o.par_iter_mut()
                    .zip(x.par_iter())
                    .for_each(|(o, &v)| *o = v);
            }
            _ => {
                // f32 -> f16 rounds to nearest even; f16 -> f32 -> f16 is exact.
                *out = CpuTensor::from_f32_as_f16(out.shape().to_vec(), &x).map_err(|e| {
                    check::shape_err(self.name(), &[inputs[0].desc().clone()], e.to_string())
                })?;
            }
        }
        Ok(())
    }

    fn gpu(
        &self,
        inputs: &[TensorDesc],
        _out: &TensorDesc,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        let n = check::numel_u32(self.name(), inputs, &inputs[0])?;
        let from = inputs[0].dtype;
        let words = n.div_ceil(2);
        let (in_ty, out_ty, body, items, key) = match (from, self.to) {
            (DType::F32, DType::F32) if n.is_multiple_of(4) => {
                ("vec4<f32>", "vec4<f32>", SAME, n / 4, "f32.f32.vec4")
            }
            (DType::F32, DType::F32) => ("f32", "f32", SAME, n, "f32.f32"),
            (DType::F32, _) => ("f32", "u32", F32_TO_F16, words, "f32.f16"),
            (_, DType::F32) => ("u32", "f32", F16_TO_F32, words, "f16.f32"),
            _ => ("u32", "u32", SAME, words, "f16.f16"),
        };
        let source = fill(
            WGSL,
            &[
                ("IN", in_ty.into()),
                ("OUT", out_ty.into()),
                ("BODY", body.into()),
            ],
        );
        Ok(GpuKernel {
            key: format!("copy.{key}"),
            source: source.into(),
            entry: "main",
            params: params_bytes(&Params {
                n,
                items,
                _pad: [0; 2],
            }),
            workgroups: grid(items.div_ceil(WG), caps.max_workgroups_per_dimension),
        })
    }
}

/// Every pair of F32/F16, odd element counts (a half-filled last word).
pub fn cases() -> Vec<OpCase> {
    let exact = Tolerance::new(0.0, 0.0);
    // pack2x16float may round either way (WGSL spec): one f16 ulp is
    // 2^-10 relative; below 2^-14 f16 is subnormal with a 2^-24 step.
    let to_f16 = Tolerance::new(6e-8, 1e-3);
    let shapes: [&[usize]; 5] = [&[1], &[7], &[3, 5], &[64, 1000], &[1 << 20, 3]];
    let mut cases = Vec::new();
    for shape in shapes {
        for (from, to, tol) in [
            (DType::F32, DType::F32, exact),
            (DType::F32, DType::F16, to_f16),
            (DType::F16, DType::F32, exact),
            (DType::F16, DType::F16, exact),
        ] {
            cases.push(OpCase::new(
                Copy { to },
                vec![TensorDesc::new(from, shape)],
                tol,
            ));
        }
    }
    // Most of f16's range (65504 is its largest finite value: beyond it
    // pack2x16float's result is undefined).
    let wide = Dist::uniform(-65_000.0, 65_000.0);
    cases.push(
        OpCase::new(
            Copy { to: DType::F16 },
            vec![TensorDesc::f32([999])],
            to_f16,
        )
        .dist(wide),
    );
    cases.push(
        OpCase::new(
            Copy { to: DType::F32 },
            vec![TensorDesc::new(DType::F16, [999])],
            exact,
        )
        .dist(wide),
    );
    cases
}
