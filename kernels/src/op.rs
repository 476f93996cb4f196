//! The contract between an op and the executors.
//!
//! An op checks its inputs and names its output ([`Op::output`]), computes
//! the plain CPU reference ([`Op::cpu`]), and describes its GPU kernel for
//! given shapes on a given device ([`Op::gpu`]). The engine's graph, plan and
//! executors know nothing else about it.
//!
//! GPU binding convention, shared by every WGSL kernel:
//! `@group(0) @binding(0)` is the op's params uniform (`var<uniform>`),
//! bindings `1..=n` are the `n` inputs (`var<storage, read>`), and binding
//! `n + 1` is the output (`var<storage, read_write>`). Every binding must be
//! used by the entry point (the engine derives the layout from the shader).

use std::borrow::Cow;
use std::fmt;

use crate::dtype::DType;
use crate::tensor::{CpuTensor, TensorDesc};

/// What a device can do, as kernels see it when choosing a variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    /// `enable f16;` works (`Features::SHADER_F16`).
    pub shader_f16: bool,
    /// `subgroupAdd` and friends work (`Features::SUBGROUP`).
    pub subgroups: bool,
    /// Smallest and largest subgroup size the adapter reports (0 if unknown).
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    /// Cooperative-matrix shapes usable from WGSL (`Features::EXPERIMENTAL_COOPERATIVE_MATRIX`).
    pub coop_matrix: Vec<CoopShape>,
    /// Push-constant style immediates (`Features::IMMEDIATES`), in bytes (0 = none).
    pub max_immediate_size: u32,
    pub max_workgroup_storage_bytes: u32,
    pub max_invocations_per_workgroup: u32,
    pub max_workgroups_per_dimension: u32,
    pub max_storage_binding_bytes: u64,
    pub max_buffer_bytes: u64,
    pub min_uniform_offset_alignment: u32,
}

impl Caps {
    /// A conservative device: WebGPU's default limits, no optional features.
    /// Useful for validating shaders and for tests that need no adapter.
    pub fn baseline() -> Caps {
        Caps {
            shader_f16: false,
            subgroups: false,
            subgroup_min_size: 0,
            subgroup_max_size: 0,
            coop_matrix: Vec::new(),
            max_immediate_size: 0,
            max_workgroup_storage_bytes: 16 * 1024,
            max_invocations_per_workgroup: 256,
            max_workgroups_per_dimension: 65535,
            max_storage_binding_bytes: 128 << 20,
            max_buffer_bytes: 256 << 20,
            min_uniform_offset_alignment: 256,
        }
    }

    /// The f16 × f16 → f32 cooperative-matrix shape `m×n×k`, if offered.
    pub fn coop_f16_f32(&self, m: u32, n: u32, k: u32) -> bool {
        self.coop_matrix.iter().any(|s| {
            s.m == m && s.n == n && s.k == k && s.ab == CoopScalar::F16 && s.cr == CoopScalar::F32
        })
    }
}

/// Scalar types that cooperative matrices hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoopScalar {
    F16,
    F32,
    Other,
}

/// One cooperative-matrix configuration: A is m×k, B is k×n, C/R are m×n.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoopShape {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub ab: CoopScalar,
    pub cr: CoopScalar,
}

/// A GPU kernel ready to compile and dispatch.
#[derive(Clone, Debug)]
pub struct GpuKernel {
    /// Identifies the specialised source: kernels with equal keys share a pipeline.
    pub key: String,
    /// WGSL after specialisation.
    pub source: Cow<'static, str>,
    pub entry: &'static str,
    /// Bytes of the params uniform (binding 0); at least 16, a multiple of 16.
    pub params: Vec<u8>,
    /// Workgroups to dispatch in x, y, z.
    pub workgroups: [u32; 3],
}

/// Everything that can be wrong with an op's inputs or the device for it.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum OpError {
    #[error("{op}: expected {expected} inputs, got {got}")]
    Arity {
        op: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{op}: shapes {shapes:?} do not fit: {why}")]
    Shape {
        op: &'static str,
        shapes: Vec<Vec<usize>>,
        why: String,
    },
    #[error("{op}: dtype {dtype} is not supported for {what}")]
    DType {
        op: &'static str,
        dtype: DType,
        what: &'static str,
    },
    #[error("{op}: needs {what}, which this device lacks")]
    Unsupported { op: &'static str, what: String },
}

/// One operation of the graph: shape rule, CPU reference and GPU kernel.
pub trait Op: fmt::Debug + Send + Sync {
    /// Short name, e.g. `"matmul"`; errors and debug dumps use it.
    fn name(&self) -> &'static str;

    /// Checks the inputs and returns the output's dtype and shape.
    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError>;

    /// The plain reference: computes the output from the inputs on the CPU.
    /// `inputs` have passed [`Op::output`]; `out` was allocated from its result.
    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError>;

    /// The GPU kernel for these inputs on a device with `caps`.
    fn gpu(
        &self,
        inputs: &[TensorDesc],
        out: &TensorDesc,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError>;

    /// True when every index the kernel computes is proven in range by its
    /// op tests (ragged shapes included), so the engine may compile it
    /// without the bounds checks naga inserts on every array access. Only
    /// hot kernels whose tests cover their edges should say yes.
    fn trusted(&self) -> bool {
        false
    }
}

/// Pads params to a multiple of 16 bytes, as uniform buffers want.
pub fn params_bytes<T: bytemuck::Pod>(p: &T) -> Vec<u8> {
    let mut v = bytemuck::bytes_of(p).to_vec();
    let padded = v.len().div_ceil(16).max(1) * 16;
    v.resize(padded, 0);
    v
}

/// Spreads `n` workgroups over x and y so that neither exceeds `max_per_dim`.
/// Kernels recover the linear index as `wg.x + wg.y * num_workgroups.x` and
/// must ignore indices `>= n`.
pub fn grid(n: u32, max_per_dim: u32) -> [u32; 3] {
    if n <= max_per_dim {
        [n.max(1), 1, 1]
    } else {
        let y = n.div_ceil(max_per_dim);
        [n.div_ceil(y), y, 1]
    }
}
