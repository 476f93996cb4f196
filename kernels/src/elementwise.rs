//! Elementwise ops on F32 tensors: [`Add`] and [`Mul`] (same shape, or `b`
//! one row broadcast over `a`'s rows), [`Scale`] (`x * s`), [`Silu`] and
//! [`Gelu`] (ggml's tanh approximation). One WGSL template serves them all.

use rayon::prelude::*;

use crate::cases::{Dist, OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::template::fill;
use crate::tensor::{CpuTensor, TensorDesc};

const WGSL: &str = include_str!("../wgsl/elementwise.wgsl");
/// Invocations per workgroup, as in the WGSL's `@workgroup_size`.
const WG: u32 = 256;

/// Mirrors `Params` in `elementwise.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    b_n: u32,
    s: f32,
    _pad: u32,
}

/// `a + b`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Add;

/// `a * b`, elementwise.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Mul;

/// `x * s`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale {
    pub s: f32,
}

/// `x * sigmoid(x)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Silu;

/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, as ggml's `gelu`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Gelu;

/// What distinguishes the five ops; everything else is shared.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Add,
    Mul,
    Scale(f32),
    Silu,
    Gelu,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Add => "add",
            Kind::Mul => "mul",
            Kind::Scale(_) => "scale",
            Kind::Silu => "silu",
            Kind::Gelu => "gelu",
        }
    }

    fn binary(self) -> bool {
        matches!(self, Kind::Add | Kind::Mul)
    }

    /// The reference arithmetic, one element.
    fn apply(self, x: f32, b: f32) -> f32 {
        match self {
            Kind::Add => x + b,
            Kind::Mul => x * b,
            Kind::Scale(s) => x * s,
            Kind::Silu => x / (1.0 + (-x).exp()),
            Kind::Gelu => {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                const GELU_COEF_A: f32 = 0.044_715;
                0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
            }
        }
    }

    fn output(self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        let op = self.name();
        check::arity(op, inputs, if self.binary() { 2 } else { 1 })?;
        let a = &inputs[0];
        check::dtype(op, a, &[DType::F32], "its input")?;
        check::numel_u32(op, inputs, a)?;
        if self.binary() {
            let b = &inputs[1];
            check::dtype(op, b, &[DType::F32], "its second input")?;
            let same = b.shape == a.shape;
            // A broadcast row: [cols] or [1, .., 1, cols].
            let row = b.cols() == a.cols() && b.rows() == 1;
            if !same && !row {
                return Err(check::shape_err(
                    op,
                    inputs,
                    "b must have a's shape or be one row of a's width",
                ));
            }
        }
        Ok(a.clone())
    }

    fn cpu(self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let op = self.name();
        let a = inputs[0]
            .to_f32()
            .map_err(|_| check::not_f32(op, inputs[0].dtype()))?;
        let b = match inputs.get(1) {
            Some(t) => t.to_f32().map_err(|_| check::not_f32(op, t.dtype()))?,
            None => Default::default(),
        };
        let o = out.as_f32_mut().ok_or(check::not_f32(op, DType::F32))?;
        // b is either a's length or one row, repeated.
        o.par_iter_mut().enumerate().for_each(|(i, o)| {
            let bv = if b.is_empty() { 0.0 } else { b[i % b.len()] };
            *o = self.apply(a[i], bv);
        });
        Ok(())
    }

    fn gpu(self, inputs: &[TensorDesc], caps: &Caps) -> Result<GpuKernel, OpError> {
        let op = self.name();
        let n = check::numel_u32(op, inputs, &inputs[0])?;
        let b_n = match inputs.get(1) {
            Some(b) => check::numel_u32(op, inputs, b)?,
            None => n,
        };
        // vec4 when both lengths split into whole vec4s (a broadcast row
        // then starts every a-row on a vec4 boundary too).
        let vec = n.is_multiple_of(4) && b_n.is_multiple_of(4);
        let w = if vec { 4 } else { 1 };
        let (n, b_n) = (n / w, b_n / w);
        let broadcast = b_n != n;
        let b_index = if broadcast { "i % p.b_n" } else { "i" };
        let expr = match self {
            Kind::Add => format!("x + b[{b_index}]"),
            Kind::Mul => format!("x * b[{b_index}]"),
            Kind::Scale(_) => "x * p.s".to_owned(),
            Kind::Silu => "silu(x)".to_owned(),
            Kind::Gelu => "gelu(x)".to_owned(),
        };
        let ty = if vec { "vec4<f32>" } else { "f32" };
        let (b_binding, out_binding) = if self.binary() {
            (
                format!("@group(0) @binding(2) var<storage, read> b: array<{ty}>;"),
                3,
            )
        } else {
            (String::new(), 2)
        };
        let source = fill(
            WGSL,
            &[
                ("T", ty.into()),
                ("B_BINDING", b_binding),
                ("OUT_BINDING", out_binding.to_string()),
                ("EXPR", expr),
            ],
        );
        let s = if let Kind::Scale(s) = self { s } else { 0.0 };
        Ok(GpuKernel {
            key: format!(
                "{op}.{}{}",
                if vec { "vec4" } else { "f32" },
                if broadcast { ".bcast" } else { "" }
            ),
            source: source.into(),
            entry: "main",
            params: params_bytes(&Params { n, b_n, s, _pad: 0 }),
            workgroups: grid(n.div_ceil(WG), caps.max_workgroups_per_dimension),
        })
    }
}

/// Implements [`Op`] for an elementwise op by handing each method to [`Kind`].
macro_rules! elementwise_op {
    ($ty:ty, |$self:ident| $kind:expr) => {
        impl Op for $ty {
            fn name(&self) -> &'static str {
                let $self = self;
                $kind.name()
            }
            fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
                let $self = self;
                $kind.output(inputs)
            }
            fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
                let $self = self;
                $kind.cpu(inputs, out)
            }
            fn gpu(
                &self,
                inputs: &[TensorDesc],
                _out: &TensorDesc,
                caps: &Caps,
            ) -> Result<GpuKernel, OpError> {
                let $self = self;
                $kind.gpu(inputs, caps)
            }
        }
    };
}

elementwise_op!(Add, |_s| Kind::Add);
elementwise_op!(Mul, |_s| Kind::Mul);
elementwise_op!(Scale, |s| Kind::Scale(s.s));
elementwise_op!(Silu, |_s| Kind::Silu);
elementwise_op!(Gelu, |_s| Kind::Gelu);

/// Shapes: vec4 and scalar paths, a single element, ragged lengths, more
/// workgroups than one grid dimension holds on small devices, broadcasts.
pub fn cases() -> Vec<OpCase> {
    let f = |s: &[usize]| TensorDesc::f32(s);
    // Plain f32 arithmetic: the GPU computes the same single operation.
    let exact = Tolerance::new(1e-6, 1e-6);
    // exp and tanh differ by a few ulp between the GPU and Rust's libm.
    let transcendental = Tolerance::new(1e-5, 1e-4);
    let unary_shapes: [&[usize]; 5] = [&[1], &[7], &[3, 1000], &[4096, 4], &[1 << 10, 17]];
    let mut cases = Vec::new();
    for shape in unary_shapes {
        cases.push(OpCase::new(Scale { s: -1.75 }, vec![f(shape)], exact));
        cases.push(
            OpCase::new(Silu, vec![f(shape)], transcendental).dist(Dist::uniform(-12.0, 12.0)),
        );
        cases.push(
            OpCase::new(Gelu, vec![f(shape)], transcendental).dist(Dist::uniform(-12.0, 12.0)),
        );
    }
    let binary_shapes: [(&[usize], &[usize]); 7] = [
        (&[1], &[1]),
        (&[7], &[7]),
        (&[3, 1000], &[3, 1000]),
        (&[5, 17], &[17]),
        (&[2, 3, 64], &[1, 64]),
        (&[33, 4096], &[4096]),
        (&[1 << 12, 20], &[1 << 12, 20]),
    ];
    for (a, b) in binary_shapes {
        cases.push(OpCase::new(Add, vec![f(a), f(b)], exact));
        cases.push(OpCase::new(Mul, vec![f(a), f(b)], exact));
    }
    // 65794 workgroups: more than one grid dimension holds (op::grid).
    cases.push(OpCase::new(Add, vec![f(&[1 << 16, 257]), f(&[257])], exact));
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_shapes_and_dtypes() {
        let f = |s: &[usize]| TensorDesc::f32(s);
        assert!(matches!(
            Add.output(&[f(&[3, 4]), f(&[4, 3])]),
            Err(OpError::Shape { .. })
        ));
        assert!(matches!(
            Add.output(&[f(&[3, 4])]),
            Err(OpError::Arity { .. })
        ));
        let h = TensorDesc::new(DType::F16, [4]);
        assert!(matches!(Silu.output(&[h]), Err(OpError::DType { .. })));
        assert_eq!(Mul.output(&[f(&[3, 4]), f(&[1, 4])]), Ok(f(&[3, 4])));
    }

    #[test]
    fn gelu_matches_known_values() {
        // gelu(1) with the tanh approximation, as ggml computes it.
        assert!((Kind::Gelu.apply(1.0, 0.0) - 0.841_192).abs() < 1e-5);
        assert_eq!(Kind::Silu.apply(0.0, 0.0), 0.0);
    }
}
