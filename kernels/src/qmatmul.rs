//! Matrix multiplication by a quantized weight: `y[.., M, N] = x[.., M, K] ·
//! Wᵀ` with `W: [N, K]` in Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K,
//! F16 or F32 (ggml's linear-layer convention), x and y F32. Batch
//! dimensions of x share W, so they fold into M. Accumulation is f32 on
//! dequantized weights: unlike llama.cpp, x is never quantized to Q8, so
//! results are as close to the exact product as f32 allows.
//!
//! W is read in the GPU layout of [`crate::layout`] (blocks split into
//! aligned sections). K must be a whole number of blocks (32 for the legacy
//! types, 256 for the K-quants) and, for F16, of 8 values, for F32 of 4.
//!
//! Kernels ([`QMatMulVariant`] picks one, by default from M):
//! - `qmatmul_matvec.wgsl` (decode, M <= 8): one workgroup per 2 weight
//!   rows and 8 rows of x, invocations striding K and a subgroup (or
//!   workgroup-memory) reduction; W is read once per 8 rows of x.
//! - `qmatmul_tiled.wgsl` (prefill, M > 8; [`tiled`]): 64 x 128 tiles of
//!   y, W tiles decoded into workgroup memory once per 64 rows of x, a
//!   register-blocked f32 outer product over them (~30 TFLOP/s on an H200
//!   at 512 x 4096 x 4096 Q4_0).
//! - `qmatmul_coop.wgsl` (prefill on tensor cores, on request: [`coop`]):
//!   W tiles decoded to f16, x rounded to f16, 16x16x16 cooperative
//!   matrices accumulating in f32 (~100 TFLOP/s there), at the cost of f16
//!   rounding of both factors (for F32 weights too).
//!
//! Every kernel decodes W with the one set of decoders in
//! `qmatmul_decode.wgsl` ([`decoder_source`]). The CPU reference (`qmatmul/cpu.rs`)
//! decodes a few W rows at a time and sums in f64.

use crate::cases::{OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::layout;
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::template::{fill, u};
use crate::tensor::{CpuTensor, TensorDesc};

pub mod coop;
mod cpu;
pub mod tiled;

pub use coop::QCoopTile;
pub use tiled::QTiledTile;

const WGSL_MATVEC: &str = include_str!("../wgsl/qmatmul_matvec.wgsl");
const WGSL_DECODE: &str = include_str!("../wgsl/qmatmul_decode.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("../wgsl/qmatmul_reduce_subgroup.wgsl");
const REDUCE_WORKGROUP: &str = include_str!("../wgsl/qmatmul_reduce_workgroup.wgsl");
const NAME: &str = "qmatmul";

/// Weight dtypes the kernels decode.
pub const WEIGHT_DTYPES: [DType; 10] = [
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
    DType::F16,
    DType::F32,
];

/// Rows of x up to which [`QMatMulVariant::Auto`] runs the matvec kernel.
pub const MATVEC_MAX_M: usize = 8;
/// Rows of x from which [`QMatMulVariant::AutoF16`] runs the coop kernel.
pub const COOP_MIN_M: usize = 64;

/// Invocations per workgroup of the matvec kernel.
const WG: u32 = 64;
/// Weight rows per workgroup.
const ROWS: u32 = 2;
/// Most rows of x per workgroup (one W chunk serves all of them).
const MAX_MR: u32 = 8;

/// Mirrors `Params` in every qmatmul kernel (`qmatmul_*.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    chunks: u32,
    blocks: u32,
    s1: u32,
    s2: u32,
    s3: u32,
}

/// Which kernel to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QMatMulVariant {
    /// Matvec for M <= [`MATVEC_MAX_M`], tiled above: f32 throughout.
    #[default]
    Auto,
    /// As `Auto`, but the coop kernel for M >= [`COOP_MIN_M`] where the
    /// device has cooperative matrices: ~3x the tiled kernel's speed for
    /// prefill on an H200, with x and W rounded to f16 ([`coop`] says how
    /// far off).
    AutoF16,
    MatVec,
    Tiled,
    /// Fails with [`OpError::Unsupported`] on devices without f16 x f16 ->
    /// f32 16x16x16 cooperative matrices.
    Coop,
}

/// The op: `x · Wᵀ` with W quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QMatMul {
    /// Use the subgroup reduction of the matvec kernel when the device has
    /// subgroups. Off only to test the workgroup-memory reduction on such a
    /// device.
    pub allow_subgroups: bool,
    pub variant: QMatMulVariant,
    /// Override the kernels' tile shapes (for tuning).
    pub tiled: Option<QTiledTile>,
    pub coop: Option<QCoopTile>,
}

impl Default for QMatMul {
    fn default() -> QMatMul {
        QMatMul {
            allow_subgroups: true,
            variant: QMatMulVariant::Auto,
            tiled: None,
            coop: None,
        }
    }
}

impl QMatMul {
    pub fn with_variant(self, variant: QMatMulVariant) -> QMatMul {
        QMatMul { variant, ..self }
    }
}

/// The dimensions an input pair describes: `m` counts every batch's rows.
#[derive(Clone, Copy, Debug)]
struct Dims {
    m: usize,
    n: usize,
    k: usize,
}

/// The helpers of `qmatmul_decode.wgsl` and `dtype`'s decoder
/// (`decode_<name>`), alone: a decoder for another chunk size would index
/// `wv` out of bounds. Empty when no decoder exists (callers check dtypes).
pub(crate) fn decoder_source(dtype: DType) -> String {
    let mut parts = WGSL_DECODE.split("// @decoder ");
    let helpers = parts.next().unwrap_or_default();
    let decoder = parts
        .find(|p| p.split_whitespace().next() == Some(dtype.name()))
        .unwrap_or_default();
    format!("{helpers}// {decoder}")
}

/// Values per chunk: what one invocation decodes at a time. One vec4<u32>
/// load for the floats (8 halves, 4 floats), a block or K-quant sub-block
/// of 32 for the rest.
fn chunk_len(dtype: DType) -> usize {
    match dtype {
        DType::F16 => 8,
        DType::F32 => 4,
        _ => 32,
    }
}

fn dims(inputs: &[TensorDesc]) -> Result<Dims, OpError> {
    check::arity(NAME, inputs, 2)?;
    let unit = |d: DType| d.block_size().max(chunk_len(d));
    let (m, n, k) = check::x_by_weight(NAME, inputs, &WEIGHT_DTYPES, unit)?;
    Ok(Dims { m, n, k })
}

impl Op for QMatMul {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Every kernel guards its global reads (x by M and K; W through the
    /// decoders, called only for rows < N and chunks < K / CHUNK) and its
    /// stores (by M and N; coop stores straight to y only for tiles inside
    /// it), and workgroup-memory indices are bounded by the tile constants.
    /// The op cases run ragged M, N and K (K past BK for F16 and F32, and
    /// for F32 K not a multiple of 8, coop's x group) through every kernel
    /// and tile variant, so naga's checks only cost time here.
    fn trusted(&self) -> bool {
        true
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        let d = dims(inputs)?;
        let x = &inputs[0].shape;
        let mut shape = x[..x.len() - 1].to_vec();
        shape.push(d.n);
        Ok(TensorDesc::f32(shape))
    }

    /// Dequantize W (ggml's arithmetic), then an f64-accumulated product:
    /// the reference's own rounding is negligible next to the GPU's. Done
    /// a few W rows at a time, each decoded once for every row of x
    /// (`qmatmul/cpu.rs`).
    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let descs = [inputs[0].desc().clone(), inputs[1].desc().clone()];
        let Dims { m, n, k } = dims(&descs)?;
        let x = inputs[0]
            .to_f32()
            .map_err(|_| check::not_f32(NAME, inputs[0].dtype()))?;
        let wd = inputs[1].dtype();
        let y = out.as_f32_mut().ok_or(check::not_f32(NAME, DType::F32))?;
        cpu::qmatmul(wd, &x, &inputs[1].bytes(), y, (m, n, k)).map_err(|_| check::not_f32(NAME, wd))
    }

    fn gpu(
        &self,
        inputs: &[TensorDesc],
        _out: &TensorDesc,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        let d = dims(inputs)?;
        let wd = inputs[1].dtype;
        let offsets = layout::section_offsets(&inputs[1]).unwrap_or_default();
        let off = |i: usize| offsets.get(i).map_or(0, |&o| o as u32);
        // dims() checked that every count fits u32.
        let params = Params {
            m: d.m as u32,
            n: d.n as u32,
            k: d.k as u32,
            chunks: (d.k / chunk_len(wd)) as u32,
            blocks: (d.k / wd.block_size()) as u32,
            s1: off(1),
            s2: off(2),
            s3: off(3),
        };
        let variant = match self.variant {
            QMatMulVariant::AutoF16 if d.m >= COOP_MIN_M && crate::matmul::coop_available(caps) => {
                QMatMulVariant::Coop
            }
            QMatMulVariant::Auto | QMatMulVariant::AutoF16 if d.m <= MATVEC_MAX_M => {
                QMatMulVariant::MatVec
            }
            QMatMulVariant::Auto | QMatMulVariant::AutoF16 => QMatMulVariant::Tiled,
            v => v,
        };
        match variant {
            QMatMulVariant::Coop => {
                let tile = self.coop.unwrap_or_else(coop::default_tile);
                coop::kernel(&d, wd, &params, tile, caps)
            }
            QMatMulVariant::Tiled => {
                let tile = self.tiled.unwrap_or_else(|| tiled::default_tile(caps));
                tiled::kernel(&d, wd, &params, tile, caps)
            }
            _ => self.matvec(inputs, &d, wd, &params, caps),
        }
    }
}

impl QMatMul {
    fn matvec(
        &self,
        inputs: &[TensorDesc],
        d: &Dims,
        wd: DType,
        params: &Params,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        let sg = self.allow_subgroups && caps.subgroups;
        let mr = (d.m as u32).clamp(1, MAX_MR);
        let reduce = if sg {
            REDUCE_SUBGROUP
        } else {
            REDUCE_WORKGROUP
        };
        let source = fill(
            WGSL_MATVEC,
            &[
                ("WG", u(WG)),
                ("ROWS", u(ROWS)),
                ("MR", u(mr)),
                ("CHUNK", u(chunk_len(wd) as u32)),
                ("DECODERS", decoder_source(wd)),
                ("DECODE", format!("decode_{}", wd.name())),
                ("REDUCE", reduce.into()),
            ],
        );
        let wg_rows = (d.n as u32).div_ceil(ROWS);
        let mut workgroups = grid(wg_rows, caps.max_workgroups_per_dimension);
        workgroups[2] = (d.m as u32).div_ceil(mr).max(1);
        if workgroups[2] > caps.max_workgroups_per_dimension {
            return Err(check::shape_err(
                NAME,
                inputs,
                format!("M = {} needs too many workgroups", d.m),
            ));
        }
        Ok(GpuKernel {
            key: format!(
                "qmatmul.matvec.{}.mr{mr}.{}",
                wd,
                if sg { "sg" } else { "wg" }
            ),
            source: source.into(),
            entry: "main",
            params: params_bytes(params),
            workgroups,
        })
    }
}

/// Every weight type on decode shapes (M = 1, 2, 7; the matvec kernel),
/// prefill shapes (M = 9, 33, 64, 130 and a batched x folding into M = 66;
/// the tiled kernel), K from one block to 1536, ragged N (1, 3, 49, 576,
/// 1000). Each kernel is also forced where Auto would not pick it, and
/// (for Q4_0, Q6_K, F16 and F32) the tiled kernel runs with 8 x 8 per
/// invocation, and with two staging buffers and BK = 64 (overhanging
/// K = 32); for F16, K = 200 overhangs both BKs, for F32 K = 196 (not a
/// multiple of 8) too.
pub fn cases() -> Vec<OpCase> {
    let mut cases = tiled_cases();
    cases.extend(coop_cases());
    cases
}

/// x's shape without K, K, N, the variant and a tile override.
type CaseShape<T> = (&'static [usize], usize, usize, QMatMulVariant, Option<T>);

fn tiled_cases() -> Vec<OpCase> {
    use QMatMulVariant::{Auto, MatVec, Tiled};
    let f = |s: &[usize]| TensorDesc::f32(s);
    // 8 x 8 per invocation (32 KiB).
    let single = QTiledTile {
        bm: 128,
        bn: 128,
        bk: 32,
        tm: 8,
        tn: 8,
        nbuf: 1,
    };
    // Two chunks per row and step (eight for F16): each of the 64
    // invocations decodes one or more.
    let deep = QTiledTile {
        bm: 32,
        bn: 32,
        bk: 64,
        tm: 4,
        tn: 4,
        nbuf: 2,
    };
    let mut cases = Vec::new();
    for wd in WEIGHT_DTYPES {
        let ks: [usize; 3] = if wd.block_size() == 256 {
            [256, 768, 1536]
        } else {
            [32, 576, 1536]
        };
        let mut shapes: Vec<CaseShape<QTiledTile>> = vec![
            (&[1], ks[0], 1, Auto, None),
            (&[1], ks[2], 49, Auto, None),
            (&[2], ks[1], 3, Auto, None),
            (&[7], ks[1], 576, Auto, None),
            (&[2, 3], ks[0], 1000, Auto, None),
            (&[33], ks[2], 49, MatVec, None),
            (&[9], ks[1], 49, Auto, None),
            (&[33], ks[2], 49, Auto, None),
            (&[64], ks[1], 576, Auto, None),
            (&[130], ks[1], 1000, Auto, None),
            (&[2, 33], ks[0], 1000, Auto, None),
            (&[3], ks[1], 49, Tiled, None),
        ];
        // Other tile shapes on one type of each family (each distinct
        // kernel costs a pipeline build, ~0.5 s on lavapipe).
        if matches!(wd, DType::Q4_0 | DType::Q6K | DType::F16 | DType::F32) {
            shapes.push((&[9], ks[1], 576, Tiled, Some(single)));
            shapes.push((&[130], ks[0], 49, Tiled, Some(deep)));
        }
        if let Some(k) = ragged_k(wd) {
            // K a whole number of chunks but not of BK.
            shapes.push((&[2], k, 49, Auto, None));
            shapes.push((&[40], k, 49, Auto, None));
            shapes.push((&[40], k, 49, Tiled, Some(deep)));
        }
        for (i, (m, k, n, variant, tiled)) in shapes.into_iter().enumerate() {
            let mut x = m.to_vec();
            x.push(k);
            let op = QMatMul {
                allow_subgroups: i % 2 == 0,
                variant,
                tiled,
                coop: None,
            };
            cases.push(OpCase::new(
                op,
                vec![f(&x), TensorDesc::new(wd, [n, k])],
                tolerance(k),
            ));
        }
    }
    cases
}

/// The coop kernel (run only where the device has cooperative matrices):
/// ragged and aligned (direct-store) tiles, a batched x, a second tile
/// shape with one staging buffer, F16 with K = 200 and F32 with K = 196
/// (overhanging BK; for F32 also the last 8-value x group), and `AutoF16`
/// choosing it.
fn coop_cases() -> Vec<OpCase> {
    use QMatMulVariant::{AutoF16, Coop};
    let f = |s: &[usize]| TensorDesc::f32(s);
    let big = QCoopTile {
        warps_m: 2,
        warps_n: 4,
        fm: 4,
        fn_: 4,
        bk: 32,
        nbuf: 1,
    };
    let mut cases = Vec::new();
    for wd in WEIGHT_DTYPES {
        let ks: [usize; 3] = if wd.block_size() == 256 {
            [256, 768, 1536]
        } else {
            [32, 576, 1536]
        };
        let mut shapes: Vec<CaseShape<QCoopTile>> = vec![
            (&[64], ks[1], 576, AutoF16, None),
            (&[130], ks[2], 1000, Coop, None),
            (&[128], ks[1], 256, Coop, None),
            (&[2, 33], ks[0], 49, Coop, None),
            (&[9], ks[1], 49, Coop, None),
            (&[130], ks[1], 1000, Coop, Some(big)),
            (&[256], ks[0], 512, Coop, Some(big)),
        ];
        if let Some(k) = ragged_k(wd) {
            shapes.push((&[70], k, 130, Coop, None));
        }
        for (m, k, n, variant, coop) in shapes {
            let mut x = m.to_vec();
            x.push(k);
            let op = QMatMul {
                variant,
                coop,
                ..QMatMul::default()
            };
            cases.push(OpCase::new(
                op,
                vec![f(&x), TensorDesc::new(wd, [n, k])],
                coop_tolerance(k),
            ));
        }
    }
    cases
}

/// For the float types, a K that is a whole number of chunks (8 values of
/// F16, 4 of F32) but not of any tile's BK (32 or 64), nor for F32 of the
/// coop kernel's 8-value x groups.
fn ragged_k(wd: DType) -> Option<usize> {
    match wd {
        DType::F16 => Some(200),
        DType::F32 => Some(196),
        _ => None,
    }
}

/// x and W rounded to f16 (relative error <= 2^-11 each): with both of
/// magnitude <= 1, the K-term sum errs by ~4e-4 * sqrt(K) at most over
/// 10^5 random outputs (simulated in float64 for K = 32 .. 1536); 2e-3 *
/// sqrt(K) leaves room, and is still below a wrongly decoded block's error.
fn coop_tolerance(k: usize) -> Tolerance {
    Tolerance::new(2e-3 * (k as f32).sqrt(), 1e-5)
}

/// With x and the dequantized W of magnitude <= 1, a K-term dot product has
/// magnitude ~sqrt(K) (random signs) and its partial sums too; f32
/// accumulation in any order errs by ~eps * sqrt(K) * sqrt(K) on the
/// pessimistic side. 8 eps * K covers it with room, and stays far below
/// the error of a wrongly decoded value (>= 1/16 of a scale).
fn tolerance(k: usize) -> Tolerance {
    Tolerance::new(8.0 * f32::EPSILON * k as f32, 1e-5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_ragged_k_and_bad_dtypes() {
        let f = |s: &[usize]| TensorDesc::f32(s);
        let op = QMatMul::default();
        assert!(op
            .output(&[f(&[1, 48]), TensorDesc::new(DType::Q8_0, [3, 48])])
            .is_err());
        assert!(op
            .output(&[f(&[1, 32]), TensorDesc::new(DType::Q4K, [3, 32])])
            .is_err());
        assert!(op
            .output(&[f(&[1, 32]), TensorDesc::new(DType::Q8_1, [3, 32])])
            .is_err());
        assert!(op
            .output(&[f(&[1, 12]), TensorDesc::new(DType::F16, [3, 12])])
            .is_err());
        assert!(op
            .output(&[f(&[1, 6]), TensorDesc::new(DType::F32, [3, 6])])
            .is_err());
        assert!(op
            .output(&[f(&[1, 12]), TensorDesc::new(DType::F32, [3, 12])])
            .is_ok());
        let out = op
            .output(&[f(&[2, 5, 64]), TensorDesc::new(DType::Q4_1, [7, 64])])
            .unwrap();
        assert_eq!(out.shape, vec![2, 5, 7]);
    }
}
