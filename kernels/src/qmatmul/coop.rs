//! The cooperative-matrix kernel of [`super::QMatMul`]
//! (`qmatmul_coop.wgsl`): W tiles decoded into workgroup memory as f16,
//! x rounded to f16, 16x16x16 tensor-core multiplies accumulating in f32.
//!
//! Not exact like the other kernels: each x value and each decoded weight
//! is rounded to f16 (11 significant bits; a Q4_0 weight `(q - 8) * d`
//! needs up to 15, an F32 weight 24), a relative error of at most 2^-11 per
//! factor, so a K-term sum errs by ~2^-11 * sqrt(K) * |x| |w| (random
//! signs). Values outside f16's normal range fare worse: below 2^-14 they
//! lose relative precision (absolute error <= 2^-25), from 65520 on they
//! become ±inf. x is never quantized to 8 bits, as llama.cpp does, but it
//! is rounded: the variant is chosen only on request
//! ([`super::QMatMulVariant`]).

use crate::dtype::DType;
use crate::matmul::coop_available;
use crate::op::{params_bytes, Caps, GpuKernel, OpError};
use crate::template::{fill, log2, u};

use super::{chunk_len, decoder_source, Dims, Params, NAME};

const WGSL: &str = include_str!("../../wgsl/qmatmul_coop.wgsl");

/// Tile shape of the coop kernel: `warps_m x warps_n` subgroups, each
/// holding `fm x fn_` 16x16 accumulators; K steps of `bk` (a multiple of
/// 32); `nbuf` staging buffers (1 or 2). Powers of two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QCoopTile {
    pub warps_m: u32,
    pub warps_n: u32,
    pub fm: u32,
    pub fn_: u32,
    pub bk: u32,
    pub nbuf: u32,
}

impl QCoopTile {
    fn bm(&self) -> u32 {
        self.warps_m * self.fm * 16
    }

    fn bn(&self) -> u32 {
        self.warps_n * self.fn_ * 16
    }

    /// Bytes of workgroup memory: f16 tiles with rows padded by 8 halves,
    /// and one f32 fragment per subgroup for ragged stores.
    fn smem(&self) -> u32 {
        self.nbuf * (self.bm() + self.bn()) * (self.bk + 8) * 2
            + self.warps_m * self.warps_n * 256 * 4
    }
}

/// 2 x 2 subgroups of 4 x 4 fragments (128 x 128 of y, 128 invocations),
/// BK 32, one staging buffer: 24 KiB. Measured on an H200 at M = 512,
/// K = 4096, N = 11008 Q4_0 (`KILN_BENCH_SWEEP=qmatmul cargo bench --bench
/// kernels`, TFLOP/s): this 105.8; double-buffered 90.1; 2 x 4 of 4 x 2
/// 94.5; 4 x 2 of 2 x 4 95.5; 4 x 4 of 2 x 2 91.7; matmul's default, 2 x 4
/// of 4 x 4 (128 x 256), 95.8; BK 64 75.9; 2 x 2 of 2 x 4 (64 x 128)
/// 55.8 before the op was compiled without bounds checks (this tile 71.9).
pub(super) fn default_tile() -> QCoopTile {
    QCoopTile {
        warps_m: 2,
        warps_n: 2,
        fm: 4,
        fn_: 4,
        bk: 32,
        nbuf: 1,
    }
}

pub(super) fn kernel(
    d: &Dims,
    wd: DType,
    params: &Params,
    t: QCoopTile,
    caps: &Caps,
) -> Result<GpuKernel, OpError> {
    if !coop_available(caps) {
        return Err(OpError::Unsupported {
            op: NAME,
            what:
                "f16 x f16 -> f32 16x16x16 cooperative matrices, shader f16 and one subgroup size"
                    .into(),
        });
    }
    let sg = caps.subgroup_min_size;
    let threads = t.warps_m * t.warps_n * sg;
    let shape_ok = [t.warps_m, t.warps_n, t.fm, t.fn_, t.bk]
        .iter()
        .all(|x| x.is_power_of_two())
        && t.bk.is_multiple_of(32)
        && (t.nbuf == 1 || t.nbuf == 2);
    if !shape_ok
        || threads > caps.max_invocations_per_workgroup
        || t.smem() > caps.max_workgroup_storage_bytes
    {
        return Err(OpError::Unsupported {
            op: NAME,
            what: format!(
                "coop tile {t:?} ({threads} invocations, {} bytes)",
                t.smem()
            ),
        });
    }
    let (bm, bn) = (t.bm(), t.bn());
    let source = fill(
        WGSL,
        &[
            ("WARPS_M", u(t.warps_m)),
            ("WARPS_N", u(t.warps_n)),
            ("WARPS_N_SHIFT", u(log2(t.warps_n))),
            ("FM", u(t.fm)),
            ("FN", u(t.fn_)),
            ("SG", u(sg)),
            ("BK", u(t.bk)),
            ("NBUF", u(t.nbuf)),
            ("BN_SHIFT", u(log2(bn))),
            ("BK8_SHIFT", u(log2(t.bk / 8))),
            ("CHUNK", u(chunk_len(wd) as u32)),
            ("DECODERS", decoder_source(wd)),
            ("DECODE", format!("decode_{}", wd.name())),
        ],
    );
    let source = fill(&source, &body(&t, threads));
    let max = caps.max_workgroups_per_dimension;
    let groups = [(d.n as u32).div_ceil(bn), (d.m as u32).div_ceil(bm), 1];
    if groups.iter().any(|&g| g > max) {
        return Err(OpError::Unsupported {
            op: NAME,
            what: format!("{groups:?} workgroups (at most {max} per dimension)"),
        });
    }
    Ok(GpuKernel {
        key: format!(
            "qmatmul.coop.{wd}.{}x{}.{}x{}.k{}.buf{}.sg{sg}",
            t.warps_m, t.warps_n, t.fm, t.fn_, t.bk, t.nbuf
        ),
        source: source.into(),
        entry: "main",
        params: params_bytes(params),
        workgroups: groups,
    })
}

/// The unrolled per-invocation statements of `qmatmul_coop.wgsl`.
fn body(t: &QCoopTile, threads: u32) -> Vec<(&'static str, String)> {
    let x_loads = (t.bm() * t.bk / 8).div_ceil(threads);
    let (mut decl, mut fetch, mut stash, mut mma, mut store) = (
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    );
    for i in 0..t.fm {
        for j in 0..t.fn_ {
            decl += &format!("    var acc{i}_{j} = coop_mat16x16<f32, C>();\n");
            store += &format!(
                "    store_fragment(acc{i}_{j}, row0 + {}u, col0 + {}u, direct, sg, lane, sg_size);\n",
                i * 16,
                j * 16
            );
        }
    }
    for i in 0..x_loads {
        decl += &format!("    var px{i} = Eight(vec4<f32>(0.0), vec4<f32>(0.0));\n");
        fetch += &format!("            px{i} = fetch_x({i}u, lid, m0, k0);\n");
        stash += &format!("            stash_x(buf, {i}u, lid, px{i});\n");
    }
    fetch += "            load_w(buf, lid, n0, k0);\n";
    // Each 16-deep slice of the step: FM x fragments (row-major from
    // Xs[m][k]) and FN W fragments (column-major K x N from Ws[n][k]).
    for kk in (0..t.bk).step_by(16) {
        mma += &format!("        {{\n            let kk = {kk}u;\n");
        for i in 0..t.fm {
            mma += &format!(
                "            let a{i} = coopLoadT<coop_mat16x16<f16, A>>(&S[(xo + {}u * LD + kk) >> 2u], LD >> 2u);\n",
                i * 16
            );
        }
        for j in 0..t.fn_ {
            mma += &format!(
                "            let b{j} = coopLoad<coop_mat16x16<f16, B>>(&S[W_OFF + ((wo + {}u * LD + kk) >> 2u)], LD >> 2u);\n",
                j * 16
            );
        }
        for i in 0..t.fm {
            for j in 0..t.fn_ {
                mma +=
                    &format!("            acc{i}_{j} = coopMultiplyAdd(a{i}, b{j}, acc{i}_{j});\n");
            }
        }
        mma += "        }\n";
    }
    vec![
        ("DECL", decl),
        ("FETCH", fetch),
        ("STASH", stash),
        ("MMA", mma),
        ("STORE", store),
    ]
}
