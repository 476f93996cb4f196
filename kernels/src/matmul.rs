//! Matrix multiplication: `C[b, M, N] = A[b, M, K] · Bᵀ` with `B: [b', N, K]`
//! (ggml's and PyTorch's linear-layer convention: weights stored
//! `[out, in]`), or `C = A · B` with `B: [b', K, N]` ([`BLayout::KN`]).
//! `b'` is `b` or 1 (one B shared by every batch). A and B are each F32 or
//! F16; C is F32, accumulated in f32. Any M, N, K.
//!
//! Two kernels: `matmul_tiled.wgsl` (workgroup-memory tiles, register
//! blocking; runs everywhere) and `matmul_coop.wgsl` (16x16x16 cooperative
//! matrices, f16 in, f32 accumulate; tensor cores). [`MatMulVariant`] picks
//! one or leaves the choice to the device's [`Caps`].

use rayon::prelude::*;

use crate::cases::{OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::op::{params_bytes, Caps, GpuKernel, Op, OpError};
use crate::template::{fill, log2, u};
use crate::tensor::{CpuTensor, TensorDesc};

const WGSL_TILED: &str = include_str!("../wgsl/matmul_tiled.wgsl");
const WGSL_COOP: &str = include_str!("../wgsl/matmul_coop.wgsl");
const NAME: &str = "matmul";

/// Mirrors `Params` in both matmul kernels.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    c_batch_stride: u32,
    _pad: [u32; 2],
}

/// How B is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BLayout {
    /// `[b', N, K]`: rows of B are the output features (linear weights).
    #[default]
    NK,
    /// `[b', K, N]`: a plain right-hand matrix.
    KN,
}

/// Which kernel to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatMulVariant {
    /// Cooperative matrices for F16 inputs where the device has them and M
    /// is large enough to fill their 16 rows; the tiled kernel otherwise.
    #[default]
    Auto,
    Tiled,
    /// Fails with [`OpError::Unsupported`] on devices without f16 x f16 ->
    /// f32 16x16x16 cooperative matrices. F32 inputs are rounded to f16.
    Coop,
}

/// Tile shape of the tiled kernel (powers of two; `tm`, `tn` multiples of
/// 4). Workgroup `(bn / tn) * (bm / tm)` invocations, `2 * bk * (bm + bn)`
/// floats of workgroup memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TiledTile {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
}

/// Tile shape of the cooperative-matrix kernel: `warps_m x warps_n`
/// subgroups, each holding `fm x fn_` 16x16 accumulators; K steps of `bk`
/// (a multiple of 16); `nbuf` staging buffers (1 or 2). Powers of two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoopTile {
    pub warps_m: u32,
    pub warps_n: u32,
    pub fm: u32,
    pub fn_: u32,
    pub bk: u32,
    pub nbuf: u32,
    /// Kept for existing callers; ignored: tiles are always staged as
    /// `vec4<f16>` (a quarter of the shared stores of plain `f16`).
    pub vec_smem: bool,
}

/// The op. `MatMul::default()` is `A · Bᵀ` with B `[N, K]` and automatic
/// kernel choice; `tiled` / `coop` override the tile shapes (for tuning).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MatMul {
    pub b_layout: BLayout,
    pub variant: MatMulVariant,
    pub tiled: Option<TiledTile>,
    pub coop: Option<CoopTile>,
}

/// The dimensions an input pair describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dims {
    batch: usize,
    b_batch: usize,
    m: usize,
    n: usize,
    k: usize,
}

impl MatMul {
    pub fn new(b_layout: BLayout) -> MatMul {
        MatMul {
            b_layout,
            ..MatMul::default()
        }
    }

    pub fn with_variant(self, variant: MatMulVariant) -> MatMul {
        MatMul { variant, ..self }
    }

    fn dims(&self, inputs: &[TensorDesc]) -> Result<Dims, OpError> {
        check::arity(NAME, inputs, 2)?;
        let (a, b) = (&inputs[0], &inputs[1]);
        check::dtype(NAME, a, &[DType::F32, DType::F16], "A")?;
        check::dtype(NAME, b, &[DType::F32, DType::F16], "B")?;
        if a.shape.len() < 2 || b.shape.len() < 2 {
            return Err(check::shape_err(
                NAME,
                inputs,
                "A and B need at least two dimensions",
            ));
        }
        let (ra, rb) = (a.shape.len(), b.shape.len());
        let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
        let (n, kb) = match self.b_layout {
            BLayout::NK => (b.shape[rb - 2], b.shape[rb - 1]),
            BLayout::KN => (b.shape[rb - 1], b.shape[rb - 2]),
        };
        if k != kb {
            return Err(check::shape_err(
                NAME,
                inputs,
                format!("A has K = {k}, B has K = {kb}"),
            ));
        }
        let batch: usize = a.shape[..ra - 2].iter().product();
        let b_batch: usize = b.shape[..rb - 2].iter().product();
        if b_batch != 1 && b_batch != batch {
            return Err(check::shape_err(NAME, inputs, "B's batch must be 1 or A's"));
        }
        // Every index the kernels compute fits u32.
        check::numel_u32(NAME, inputs, a)?;
        check::numel_u32(NAME, inputs, b)?;
        batch
            .checked_mul(m)
            .and_then(|x| x.checked_mul(n))
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| check::shape_err(NAME, inputs, "C has more than 2^32 elements"))?;
        Ok(Dims {
            batch,
            b_batch,
            m,
            n,
            k,
        })
    }

    fn params(d: &Dims) -> Params {
        // dims() checked that every product fits u32.
        Params {
            m: d.m as u32,
            n: d.n as u32,
            k: d.k as u32,
            a_batch_stride: (d.m * d.k) as u32,
            b_batch_stride: if d.b_batch == 1 {
                0
            } else {
                (d.n * d.k) as u32
            },
            c_batch_stride: (d.m * d.n) as u32,
            _pad: [0; 2],
        }
    }
}

/// True when the device runs the coop kernel: f16 x f16 -> f32 16x16x16
/// fragments, f16 in shaders, and a single known subgroup size (the kernel
/// maps subgroups to warp tiles at compile time).
pub fn coop_available(caps: &Caps) -> bool {
    caps.coop_f16_f32(16, 16, 16)
        && caps.shader_f16
        && caps.subgroups
        && caps.subgroup_min_size > 0
        && caps.subgroup_min_size == caps.subgroup_max_size
}

impl Op for MatMul {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Both variants guard every global load and store against M, N and K
    /// themselves, and the op tests run ragged shapes (1, 7, 33, 100, 4097)
    /// through each on every device, so naga's checks only cost time here.
    fn trusted(&self) -> bool {
        true
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        let d = self.dims(inputs)?;
        let a = &inputs[0].shape;
        let mut shape = a[..a.len() - 2].to_vec();
        shape.extend([d.m, d.n]);
        Ok(TensorDesc::f32(shape))
    }

    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let descs = [inputs[0].desc().clone(), inputs[1].desc().clone()];
        let Dims {
            b_batch, m, n, k, ..
        } = self.dims(&descs)?;
        let a = inputs[0]
            .to_f32()
            .map_err(|_| check::not_f32(NAME, inputs[0].dtype()))?;
        let b = inputs[1]
            .to_f32()
            .map_err(|_| check::not_f32(NAME, inputs[1].dtype()))?;
        let c = out.as_f32_mut().ok_or(check::not_f32(NAME, DType::F32))?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let layout = self.b_layout;
        // One C row at a time: row r is row r % m of batch r / m. f64 sums,
        // so the reference's own rounding is negligible next to the GPU's.
        c.par_chunks_mut(n).enumerate().for_each(|(r, c_row)| {
            let bi = r / m;
            let a_row = &a[r * k..(r + 1) * k];
            let b_mat = if b_batch == 1 {
                &b[..n * k]
            } else {
                &b[bi * n * k..(bi + 1) * n * k]
            };
            for (j, out) in c_row.iter_mut().enumerate() {
                let mut sum = 0f64;
                for (kk, &av) in a_row.iter().enumerate() {
                    let bv = match layout {
                        BLayout::NK => b_mat[j * k + kk],
                        BLayout::KN => b_mat[kk * n + j],
                    };
                    sum += f64::from(av) * f64::from(bv);
                }
                *out = sum as f32;
            }
        });
        Ok(())
    }

    fn gpu(
        &self,
        inputs: &[TensorDesc],
        _out: &TensorDesc,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        let d = self.dims(inputs)?;
        let f16_inputs = inputs[0].dtype == DType::F16 && inputs[1].dtype == DType::F16;
        let coop = match self.variant {
            MatMulVariant::Tiled => false,
            MatMulVariant::Coop => {
                if !coop_available(caps) {
                    return Err(OpError::Unsupported {
                        op: NAME,
                        what: "f16 x f16 -> f32 16x16x16 cooperative matrices, shader f16 and one subgroup size"
                            .into(),
                    });
                }
                true
            }
            MatMulVariant::Auto => coop_available(caps) && f16_inputs && d.m > 32,
        };
        if coop {
            self.gpu_coop(inputs, &d, caps)
        } else {
            self.gpu_tiled(inputs, &d, caps)
        }
    }
}

impl MatMul {
    fn gpu_tiled(
        &self,
        inputs: &[TensorDesc],
        d: &Dims,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        let t = match self.tiled {
            Some(t) => t,
            None => default_tiled(d.m, caps),
        };
        let threads = (t.bm / t.tm.max(1)) * (t.bn / t.tn.max(1));
        let smem = 2 * t.bk * (t.bm + t.bn) * 4;
        let shape_ok = [t.bm, t.bn, t.bk, t.tm, t.tn]
            .iter()
            .all(|x| x.is_power_of_two())
            && t.tm.is_multiple_of(4)
            && t.tn.is_multiple_of(4)
            && t.bk >= 4
            && t.bm >= t.tm
            && t.bn >= t.tn;
        if !shape_ok
            || threads > caps.max_invocations_per_workgroup
            || smem > caps.max_workgroup_storage_bytes
        {
            return Err(OpError::Unsupported {
                op: NAME,
                what: format!("tiled tile {t:?} ({threads} invocations, {smem} bytes)"),
            });
        }
        let (k, n) = (d.k, d.n);
        let (a_elem, load_a) = tiled_loader("a", inputs[0].dtype, k);
        let b_cols = if self.b_layout == BLayout::KN { n } else { k };
        let (b_elem, load_b) = tiled_loader("b", inputs[1].dtype, b_cols);
        let kn = self.b_layout == BLayout::KN;
        let source = fill(
            WGSL_TILED,
            &[
                ("BM", u(t.bm)),
                ("BN", u(t.bn)),
                ("BK", u(t.bk)),
                ("TM", u(t.tm)),
                ("TN", u(t.tn)),
                ("TX_SHIFT", u(log2(t.bn / t.tn))),
                ("BK4_SHIFT", u(log2(t.bk / 4))),
                ("BN4_SHIFT", u(log2(t.bn / 4))),
                ("B_KN", kn.to_string()),
                ("A_ELEM", a_elem.into()),
                ("B_ELEM", b_elem.into()),
                ("LOAD_A", load_a),
                ("LOAD_B", load_b),
            ],
        );
        let source = fill(&source, &tiled_body(&t, threads));
        let key = format!(
            "matmul.tiled.{}x{}x{}.{}x{}.a={}{}.b={}{}.{}",
            t.bm,
            t.bn,
            t.bk,
            t.tm,
            t.tn,
            inputs[0].dtype,
            a_elem,
            inputs[1].dtype,
            b_elem,
            if kn { "kn" } else { "nk" }
        );
        Ok(GpuKernel {
            key,
            source: source.into(),
            entry: "main",
            params: params_bytes(&Self::params(d)),
            workgroups: workgroups(inputs, d, t.bm, t.bn, caps)?,
        })
    }

    fn gpu_coop(&self, inputs: &[TensorDesc], d: &Dims, caps: &Caps) -> Result<GpuKernel, OpError> {
        let sg = caps.subgroup_min_size;
        let t = match self.coop {
            Some(t) => t,
            None => default_coop(sg, caps),
        };
        let (bm, bn) = (t.warps_m * t.fm * 16, t.warps_n * t.fn_ * 16);
        let threads = t.warps_m * t.warps_n * sg;
        let smem = coop_smem(&t);
        let shape_ok = [t.warps_m, t.warps_n, t.fm, t.fn_, t.bk]
            .iter()
            .all(|x| x.is_power_of_two())
            && t.bk >= 16
            && (t.nbuf == 1 || t.nbuf == 2);
        if !shape_ok
            || threads > caps.max_invocations_per_workgroup
            || smem > caps.max_workgroup_storage_bytes
        {
            return Err(OpError::Unsupported {
                op: NAME,
                what: format!("coop tile {t:?} ({threads} invocations, {smem} bytes)"),
            });
        }
        let kn = self.b_layout == BLayout::KN;
        let (a_elem, load_a) = coop_loader("a", inputs[0].dtype, d.k);
        let (b_elem, load_b) = coop_loader("b", inputs[1].dtype, if kn { d.n } else { d.k });
        let mut acc = String::new();
        let mut mma = String::new();
        let mut store = String::new();
        let (mut fetch, mut stash) = (String::new(), String::new());
        let loads = [
            ("a", "m0", (bm * t.bk / 8).div_ceil(threads)),
            ("b", "n0", (bn * t.bk / 8).div_ceil(threads)),
        ];
        for (x, origin, n) in loads {
            for i in 0..n {
                acc += &format!("    var p{x}{i}: Chunk;\n");
                fetch += &format!(
                    "            p{x}{i} = fetch_{x}({i}u, lid, {origin}, k0, {x}_base);\n"
                );
                stash += &format!("            stash_{x}(buf, {i}u, lid, p{x}{i});\n");
            }
        }
        // Accumulators are separate variables, not an array, so no driver
        // is tempted to put them in (slow) indexable memory.
        // Each 16-deep slice of the K step: FM A and FN B fragments from
        // workgroup memory, FM x FN multiply-adds.
        for kk in (0..t.bk).step_by(16) {
            mma += &format!("        {{\n            let kk = {kk}u;\n");
            for i in 0..t.fm {
                mma += &format!(
                    "            let a{i} = coopLoadT<coop_mat16x16<f16, A>>(&S[(ao + {}u * LDA + kk) >> 2u], LDA >> 2u);\n",
                    i * 16
                );
            }
            for j in 0..t.fn_ {
                mma += &if kn {
                    // Bs[k][n]: row-major K x N fragments.
                    format!(
                        "            let b{j} = coopLoadT<coop_mat16x16<f16, B>>(&S[2u * B_OFF + ((bo + kk * LDB + {}u) >> 2u)], LDB >> 2u);\n",
                        j * 16
                    )
                } else {
                    // Bs[n][k]: column-major K x N fragments.
                    format!(
                        "            let b{j} = coopLoad<coop_mat16x16<f16, B>>(&S[2u * B_OFF + ((bo + {}u * LDB + kk) >> 2u)], LDB >> 2u);\n",
                        j * 16
                    )
                };
            }
            for i in 0..t.fm {
                for j in 0..t.fn_ {
                    mma += &format!(
                        "            acc{i}_{j} = coopMultiplyAdd(a{i}, b{j}, acc{i}_{j});\n"
                    );
                }
            }
            mma += "        }\n";
        }
        for i in 0..t.fm {
            for j in 0..t.fn_ {
                acc += &format!("    var acc{i}_{j} = coop_mat16x16<f32, C>();\n");
                store += &format!(
                    "    store_fragment(acc{i}_{j}, row0 + {}u, col0 + {}u, direct, c_base, sg, lane, sg_size);\n",
                    i * 16,
                    j * 16
                );
            }
        }
        let source = fill(
            WGSL_COOP,
            &[
                ("WARPS_M", u(t.warps_m)),
                ("WARPS_N", u(t.warps_n)),
                ("WARPS_N_SHIFT", u(log2(t.warps_n))),
                ("FM", u(t.fm)),
                ("FN", u(t.fn_)),
                ("SG", u(sg)),
                ("BK", u(t.bk)),
                ("NBUF", u(t.nbuf)),
                ("LDB", u(if kn { bn + 8 } else { t.bk + 8 })),
                ("B_ROWS", u(if kn { t.bk } else { bn })),
                ("BK8_SHIFT", u(log2(t.bk / 8))),
                ("BN8_SHIFT", u(log2(bn / 8))),
                ("B_KN", kn.to_string()),
                ("A_ELEM", a_elem.into()),
                ("B_ELEM", b_elem.into()),
                ("LOAD_A", load_a),
                ("LOAD_B", load_b),
                ("DECL", acc),
                ("FETCH", fetch),
                ("STASH", stash),
                ("MMA", mma),
                ("STORE", store),
            ],
        );
        let key = format!(
            "matmul.coop.{}x{}.{}x{}.k{}.buf{}.q.sg{}.a={}{}.b={}{}.{}",
            t.warps_m,
            t.warps_n,
            t.fm,
            t.fn_,
            t.bk,
            t.nbuf,
            sg,
            inputs[0].dtype,
            a_elem,
            inputs[1].dtype,
            b_elem,
            if kn { "kn" } else { "nk" }
        );
        Ok(GpuKernel {
            key,
            source: source.into(),
            entry: "main",
            params: params_bytes(&Self::params(d)),
            workgroups: workgroups(inputs, d, bm, bn, caps)?,
        })
    }
}

/// The unrolled per-invocation statements of `matmul_tiled.wgsl`.
fn tiled_body(t: &TiledTile, threads: u32) -> Vec<(&'static str, String)> {
    let (rm, rn) = (t.tm / 4, t.tn / 4);
    let a_loads = (t.bm * t.bk / 4).div_ceil(threads);
    let b_loads = (t.bn * t.bk / 4).div_ceil(threads);
    let (mut decl, mut fetch, mut stash, mut step, mut store) = (
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    );
    for r in 0..t.tm {
        for h in 0..rn {
            decl += &format!("    var acc_{r}_{h} = vec4<f32>();\n");
            let row = format!("m0 + ({}u * TY + ty) * 4u + {}u", r / 4, r % 4);
            store +=
                &format!("    store4(acc_{r}_{h}, {row}, n0 + ({h}u * TX + tx) * 4u, c_base);\n");
        }
    }
    for (x, loads) in [("a", a_loads), ("b", b_loads)] {
        let origin = if x == "a" { "m0" } else { "n0" };
        for i in 0..loads {
            decl += &format!("    var p{x}{i} = vec4<f32>();\n");
            fetch +=
                &format!("            p{x}{i} = fetch_{x}({i}u, lid, {origin}, k0, {x}_base);\n");
            stash += &format!("            stash_{x}(buf, {i}u, lid, p{x}{i});\n");
        }
    }
    // One k of the outer product: RM vec4s of A (4 rows each) times RN
    // vec4s of B.
    for g in 0..rm {
        step += &format!("            let a{g} = As[ak + {g}u * TY];\n");
    }
    for h in 0..rn {
        step += &format!("            let b{h} = Bs[bk + {h}u * TX];\n");
    }
    for r in 0..t.tm {
        let lane = ["x", "y", "z", "w"][(r % 4) as usize];
        for h in 0..rn {
            step += &format!(
                "            acc_{r}_{h} = fma(vec4<f32>(a{}.{lane}), b{h}, acc_{r}_{h});\n",
                r / 4
            );
        }
    }
    vec![
        ("DECL", decl),
        ("FETCH", fetch),
        ("STASH", stash),
        ("STEP", step),
        ("STORE", store),
    ]
}

/// Bytes of workgroup memory the coop kernel takes with tile `t`
/// (the larger of B's two layouts: `bn x (bk + 8)` or `bk x (bn + 8)`).
fn coop_smem(t: &CoopTile) -> u32 {
    let (bm, bn) = (t.warps_m * t.fm * 16, t.warps_n * t.fn_ * 16);
    let b = (bn * (t.bk + 8)).max(t.bk * (bn + 8));
    t.nbuf * (bm * (t.bk + 8) + b) * 2 + t.warps_m * t.warps_n * 256 * 4
}

/// 128x128 tiles of 8x8 per invocation (256 invocations: WebGPU's
/// guaranteed minimum) with BK = 8: 28 TFLOP/s at 4096^3 on an H200, ahead
/// of BK = 16 (23) and of 64-wide tiles (25); its 16 KiB of double-buffered
/// workgroup memory fits every device. 32x128 tiles for small M, where a
/// 128-row tile would be mostly empty (BK = 16 there: 20 KiB where it fits).
fn default_tiled(m: usize, caps: &Caps) -> TiledTile {
    if m <= 32 {
        let bk = if 2 * 16 * (32 + 128) * 4 <= caps.max_workgroup_storage_bytes {
            16
        } else {
            8
        };
        return TiledTile {
            bm: 32,
            bn: 128,
            bk,
            tm: 4,
            tn: 8,
        };
    }
    TiledTile {
        bm: 128,
        bn: 128,
        bk: 8,
        tm: 8,
        tn: 8,
    }
}

/// The first of these that the device holds. Measured on an H200 at
/// 4096^3 f16 (`KILN_BENCH_SWEEP=1 cargo bench --bench kernels`, and each
/// tile as the default): with 16-byte global loads, 2x4 subgroups of 4x4
/// fragments, BK 32, single-buffered: 145 TFLOP/s (38 KiB of workgroup
/// memory); the same with BK 16 double-buffered: 134 (45 KiB); 4x2
/// subgroups, BK 16, double-buffered: 128; 2x2 subgroups, BK 32,
/// double-buffered: 101 (but 59 at 1024^3, against 34). With the earlier
/// 8-byte loads these were 76-82; 4x2 fragments (fits 32 KiB): 55.
const COOP_TILES: [CoopTile; 3] = [
    CoopTile {
        warps_m: 2,
        warps_n: 4,
        fm: 4,
        fn_: 4,
        bk: 32,
        nbuf: 1,
        vec_smem: true,
    },
    CoopTile {
        warps_m: 2,
        warps_n: 4,
        fm: 4,
        fn_: 4,
        bk: 16,
        nbuf: 2,
        vec_smem: true,
    },
    CoopTile {
        warps_m: 2,
        warps_n: 4,
        fm: 4,
        fn_: 2,
        bk: 32,
        nbuf: 1,
        vec_smem: true,
    },
];

fn default_coop(sg: u32, caps: &Caps) -> CoopTile {
    let fits = |t: &CoopTile| {
        coop_smem(t) <= caps.max_workgroup_storage_bytes
            && t.warps_m * t.warps_n * sg <= caps.max_invocations_per_workgroup
    };
    // The last is the smallest; gpu_coop reports it Unsupported if even it
    // does not fit.
    COOP_TILES
        .iter()
        .copied()
        .find(fits)
        .unwrap_or(COOP_TILES[2])
}

/// One workgroup per BM x BN tile of C, batches along z.
fn workgroups(
    inputs: &[TensorDesc],
    d: &Dims,
    bm: u32,
    bn: u32,
    caps: &Caps,
) -> Result<[u32; 3], OpError> {
    let g = [
        d.n.div_ceil(bn as usize),
        d.m.div_ceil(bm as usize),
        d.batch,
    ];
    let max = caps.max_workgroups_per_dimension as usize;
    if g.iter().any(|&x| x > max) {
        return Err(check::shape_err(
            NAME,
            inputs,
            format!("needs {g:?} workgroups, more than {max} in one dimension"),
        ));
    }
    Ok(g.map(|x| x as u32))
}

/// The WGSL element type and `load_<x>` function of the tiled kernel for
/// operand `x` (a row-major matrix with `cols` columns): A[row][col..col+4]
/// as vec4<f32>, zeros outside. Whole vec4 loads when a row is a whole
/// number of vec4s (rows then start aligned); element loads otherwise.
fn tiled_loader(x: &str, dtype: DType, cols: usize) -> (&'static str, String) {
    let sig =
        format!("fn load_{x}(base: u32, row: u32, col: u32, rows: u32, cols: u32) -> vec4<f32>");
    let vec = cols.is_multiple_of(4);
    match (dtype, vec) {
        (DType::F16, true) => (
            "vec2<u32>",
            format!(
                "{sig} {{
    if row < rows && col < cols {{
        let w = {x}[(base + row * cols + col) >> 2u];
        return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    }}
    return vec4<f32>(0.0);
}}"
            ),
        ),
        (DType::F16, false) => (
            "u32",
            format!(
                "{sig} {{
    var v = vec4<f32>(0.0);
    if row < rows {{
        let i = base + row * cols + col;
        for (var j = 0u; j < 4u; j++) {{
            if col + j < cols {{
                let e = i + j;
                v[j] = unpack2x16float({x}[e >> 1u] >> ((e & 1u) << 4u)).x;
            }}
        }}
    }}
    return v;
}}"
            ),
        ),
        (_, true) => (
            "vec4<f32>",
            format!(
                "{sig} {{
    if row < rows && col < cols {{
        return {x}[(base + row * cols + col) >> 2u];
    }}
    return vec4<f32>(0.0);
}}"
            ),
        ),
        (_, false) => (
            "f32",
            format!(
                "{sig} {{
    var v = vec4<f32>(0.0);
    if row < rows {{
        let i = base + row * cols + col;
        for (var j = 0u; j < 4u; j++) {{
            if col + j < cols {{
                v[j] = {x}[i + j];
            }}
        }}
    }}
    return v;
}}"
            ),
        ),
    }
}

/// The coop kernel's `load_<x>`: A[row][col..col+8] as 8 f16 packed in a
/// `vec4<u32>` (half j in bits 16 * (j & 1) of word j / 2), zeros outside;
/// `col` is a multiple of 8. F16 is copied as raw bits (one 16-byte load
/// when a row is a whole number of 8-half chunks, two 8-byte ones for
/// whole vec4s); F32 is rounded to f16.
fn coop_loader(x: &str, dtype: DType, cols: usize) -> (&'static str, String) {
    let sig = format!("fn load_{x}(base: u32, row: u32, col: u32, rows: u32, cols: u32) -> Chunk");
    let (elem, body) = match dtype {
        DType::F16 if cols.is_multiple_of(8) => (
            "vec4<u32>",
            format!(
                "    if row < rows && col < cols {{
        return {x}[(base + row * cols + col) >> 3u];
    }}
    return vec4<u32>(0u);"
            ),
        ),
        DType::F16 if cols.is_multiple_of(4) => (
            "vec2<u32>",
            format!(
                "    var w = vec4<u32>(0u);
    if row < rows {{
        let i = (base + row * cols + col) >> 2u;
        if col < cols {{
            let v = {x}[i];
            w.x = v.x;
            w.y = v.y;
        }}
        if col + 4u < cols {{
            let v = {x}[i + 1u];
            w.z = v.x;
            w.w = v.y;
        }}
    }}
    return w;"
            ),
        ),
        DType::F16 => (
            "u32",
            format!(
                "    var w = vec4<u32>(0u);
    if row < rows {{
        let i = base + row * cols + col;
        for (var j = 0u; j < 8u; j++) {{
            if col + j < cols {{
                let e = i + j;
                let h = ({x}[e >> 1u] >> ((e & 1u) << 4u)) & 0xffffu;
                w[j >> 1u] |= h << ((j & 1u) << 4u);
            }}
        }}
    }}
    return w;"
            ),
        ),
        _ if cols.is_multiple_of(4) => (
            "vec4<f32>",
            format!(
                "    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    if row < rows {{
        let i = (base + row * cols + col) >> 2u;
        if col < cols {{
            lo = {x}[i];
        }}
        if col + 4u < cols {{
            hi = {x}[i + 1u];
        }}
    }}
    return vec4<u32>(pack2x16float(lo.xy), pack2x16float(lo.zw), pack2x16float(hi.xy), pack2x16float(hi.zw));"
            ),
        ),
        _ => (
            "f32",
            format!(
                "    var v = array<f32, 8>();
    if row < rows {{
        let i = base + row * cols + col;
        for (var j = 0u; j < 8u; j++) {{
            if col + j < cols {{
                v[j] = {x}[i + j];
            }}
        }}
    }}
    return vec4<u32>(
        pack2x16float(vec2<f32>(v[0], v[1])),
        pack2x16float(vec2<f32>(v[2], v[3])),
        pack2x16float(vec2<f32>(v[4], v[5])),
        pack2x16float(vec2<f32>(v[6], v[7])),
    );"
            ),
        ),
    };
    (elem, format!("{sig} {{\n{body}\n}}"))
}

/// Ragged and aligned M, N, K (1, 7, 33, 100, 4097 ...), batches and a
/// broadcast B, both layouts, every dtype pair, and each kernel forced.
pub fn cases() -> Vec<OpCase> {
    use DType::{F16, F32};
    // (A shape, N): B is [N, K] or [K, N] with A's K, batch 1 unless given.
    let shapes: [(&[usize], usize, usize); 10] = [
        (&[1, 1], 1, 1),
        (&[1, 64], 4097, 1),
        (&[7, 100], 33, 1),
        (&[33, 4097], 100, 1),
        (&[128, 128], 128, 1),
        (&[100, 64], 257, 1),
        (&[19, 37], 21, 1),
        (&[3, 17, 40], 23, 3),
        (&[2, 3, 50, 64], 70, 1),
        (&[256, 256], 256, 1),
    ];
    let mut cases = Vec::new();
    for (a_shape, n, b_batch) in shapes {
        let k = a_shape[a_shape.len() - 1];
        // f32 sums of K products in another order; products of f16 values
        // are exact in f32, so F16 inputs need no more. |terms| <= 1.
        let tol = Tolerance::new(1e-5 + 2e-6 * k as f32, 1e-4);
        for layout in [BLayout::NK, BLayout::KN] {
            let b_dims = match layout {
                BLayout::NK => [n, k],
                BLayout::KN => [k, n],
            };
            let mut b_shape = if b_batch > 1 { vec![b_batch] } else { vec![] };
            b_shape.extend(b_dims);
            let pairs: &[(DType, DType)] = if layout == BLayout::NK {
                &[(F32, F32), (F16, F16), (F32, F16), (F16, F32)]
            } else {
                &[(F32, F32), (F16, F16)]
            };
            for &(da, db) in pairs {
                let inputs = vec![
                    TensorDesc::new(da, a_shape),
                    TensorDesc::new(db, b_shape.clone()),
                ];
                cases.push(OpCase::new(MatMul::new(layout), inputs.clone(), tol));
                if da == F16 && db == F16 {
                    // Auto picks coop only for M > 32: force both ways.
                    for v in [MatMulVariant::Tiled, MatMulVariant::Coop] {
                        cases.push(OpCase::new(
                            MatMul::new(layout).with_variant(v),
                            inputs.clone(),
                            tol,
                        ));
                    }
                }
            }
        }
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_errors() {
        let f = |s: &[usize]| TensorDesc::f32(s);
        let mm = MatMul::default();
        assert_eq!(mm.output(&[f(&[2, 5, 3]), f(&[7, 3])]), Ok(f(&[2, 5, 7])));
        assert_eq!(
            MatMul::new(BLayout::KN).output(&[f(&[5, 3]), f(&[3, 7])]),
            Ok(f(&[5, 7]))
        );
        assert!(matches!(
            mm.output(&[f(&[5, 3]), f(&[7, 4])]),
            Err(OpError::Shape { op: "matmul", .. })
        ));
        assert!(matches!(
            mm.output(&[f(&[2, 5, 3]), f(&[3, 7, 3])]),
            Err(OpError::Shape { .. })
        ));
        let forced = mm.with_variant(MatMulVariant::Coop);
        let err = forced.gpu(&[f(&[5, 3]), f(&[7, 3])], &f(&[5, 7]), &Caps::baseline());
        assert!(matches!(err, Err(OpError::Unsupported { .. })));
    }

    #[test]
    fn cpu_reference_small() {
        // [[1, 2], [3, 4]] · [[5, 6], [7, 8]]ᵀ = [[17, 23], [39, 53]]
        let a = CpuTensor::from_f32([2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let b = CpuTensor::from_f32([2, 2], vec![5.0, 6.0, 7.0, 8.0]).unwrap();
        let mut c = CpuTensor::zeros(&TensorDesc::f32([2, 2])).unwrap();
        MatMul::default().cpu(&[&a, &b], &mut c).unwrap();
        assert_eq!(c.as_f32().unwrap(), &[17.0, 23.0, 39.0, 53.0]);
        MatMul::new(BLayout::KN).cpu(&[&a, &b], &mut c).unwrap();
        assert_eq!(c.as_f32().unwrap(), &[19.0, 22.0, 43.0, 50.0]);
    }
}
