//! The tiled kernel of [`super::QMatMul`] (`qmatmul_tiled.wgsl`): for many
//! rows of x, W tiles decoded into workgroup memory once per BM rows of x,
//! a register-blocked f32 outer product over them.

use crate::dtype::DType;
use crate::op::{params_bytes, Caps, GpuKernel, OpError};
use crate::template::{fill, log2, u};

use super::{chunk_len, decoder_source, Dims, Params, NAME};

const WGSL: &str = include_str!("../../wgsl/qmatmul_tiled.wgsl");

/// Tile shape of the tiled kernel: a `bm x bn` block of y per workgroup,
/// `tm x tn` per invocation, K steps of `bk` (a multiple of 32: one decoder
/// chunk of every type, four of F16, eight of F32), `nbuf` staging buffers
/// (1 or 2).
/// Powers of two, `tm` and `tn` multiples of 4. Workgroup
/// `(bm / tm) * (bn / tn)` invocations, which share the `bn * bk / chunk`
/// chunk decodes of a step; `nbuf * bk * (bm + bn)` floats of workgroup
/// memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QTiledTile {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
    pub nbuf: u32,
}

impl QTiledTile {
    fn threads(&self) -> u32 {
        (self.bm / self.tm.max(1)) * (self.bn / self.tn.max(1))
    }

    fn smem(&self) -> u32 {
        self.nbuf * self.bk * (self.bm + self.bn) * 4
    }
}

/// 64 x 128 tiles, 8 x 4 per invocation (256 invocations, WebGPU's
/// guaranteed minimum), BK 32, one staging buffer (24 KiB); 64 x 64 (4 x 4,
/// 16 KiB) where that does not fit. Measured on an H200 at M = 512,
/// K = 4096, N = 4096 / 11008 Q4_0 (`KILN_BENCH_SWEEP=qmatmul cargo bench
/// --bench kernels`, TFLOP/s): 64 x 128 (8 x 4) 33.1 / 29.7; 64 x 128
/// (4 x 8) 31.8 / 28.5; 128 x 128 (8 x 8) 25.9 / 22.8; 64 x 64 25.3 /
/// 25.5. Two staging buffers were slower for every tile (by a third at
/// 64 x 64): twice the workgroup memory, fewer resident workgroups. One
/// tile for every M: fewer pipelines to build (~0.5 s each on lavapipe).
pub(super) fn default_tile(caps: &Caps) -> QTiledTile {
    let t = |bm, bn, tm, tn| QTiledTile {
        bm,
        bn,
        bk: 32,
        tm,
        tn,
        nbuf: 1,
    };
    let best = t(64, 128, 8, 4);
    if best.smem() <= caps.max_workgroup_storage_bytes
        && best.threads() <= caps.max_invocations_per_workgroup
    {
        best
    } else {
        t(64, 64, 4, 4)
    }
}

pub(super) fn kernel(
    d: &Dims,
    wd: DType,
    params: &Params,
    t: QTiledTile,
    caps: &Caps,
) -> Result<GpuKernel, OpError> {
    let chunk = chunk_len(wd) as u32;
    let threads = t.threads();
    let shape_ok = [t.bm, t.bn, t.bk, t.tm, t.tn]
        .iter()
        .all(|x| x.is_power_of_two())
        && t.tm.is_multiple_of(4)
        && t.tn.is_multiple_of(4)
        && t.bk.is_multiple_of(32)
        && t.bm >= t.tm
        && t.bn >= t.tn
        && (t.nbuf == 1 || t.nbuf == 2);
    if !shape_ok
        || threads > caps.max_invocations_per_workgroup
        || t.smem() > caps.max_workgroup_storage_bytes
    {
        return Err(OpError::Unsupported {
            op: NAME,
            what: format!(
                "tiled tile {t:?} ({threads} invocations, {} bytes)",
                t.smem()
            ),
        });
    }
    let source = fill(
        WGSL,
        &[
            ("BM", u(t.bm)),
            ("BN", u(t.bn)),
            ("BK", u(t.bk)),
            ("TM", u(t.tm)),
            ("TN", u(t.tn)),
            ("NBUF", u(t.nbuf)),
            ("TX_SHIFT", u(log2(t.bn / t.tn))),
            ("BN_SHIFT", u(log2(t.bn))),
            ("BK4_SHIFT", u(log2(t.bk / 4))),
            ("CHUNK", u(chunk)),
            ("DECODERS", decoder_source(wd)),
            ("DECODE", format!("decode_{}", wd.name())),
        ],
    );
    let source = fill(&source, &body(&t, threads));
    let max = caps.max_workgroups_per_dimension;
    let groups = [(d.n as u32).div_ceil(t.bn), (d.m as u32).div_ceil(t.bm), 1];
    if groups.iter().any(|&g| g > max) {
        return Err(OpError::Unsupported {
            op: NAME,
            what: format!("{groups:?} workgroups (at most {max} per dimension)"),
        });
    }
    Ok(GpuKernel {
        key: format!(
            "qmatmul.tiled.{wd}.{}x{}x{}.{}x{}.buf{}",
            t.bm, t.bn, t.bk, t.tm, t.tn, t.nbuf
        ),
        source: source.into(),
        entry: "main",
        params: params_bytes(params),
        workgroups: groups,
    })
}

/// The unrolled per-invocation statements of `qmatmul_tiled.wgsl`:
/// accumulators and staging registers are plain variables, so nothing
/// depends on the driver unrolling loops.
fn body(t: &QTiledTile, threads: u32) -> Vec<(&'static str, String)> {
    let (rm, rn) = (t.tm / 4, t.tn / 4);
    let x_loads = (t.bm * t.bk / 4).div_ceil(threads);
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
            store += &format!("    store4(acc_{r}_{h}, {row}, n0 + ({h}u * TX + tx) * 4u);\n");
        }
    }
    for i in 0..x_loads {
        decl += &format!("    var px{i} = vec4<f32>();\n");
        fetch += &format!("            px{i} = fetch_x({i}u, lid, m0, k0);\n");
        stash += &format!("            stash_x(buf, {i}u, lid, px{i});\n");
    }
    fetch += "            load_w(buf, lid, n0, k0);\n";
    // One k of the outer product: RM vec4s of x (4 rows each) times RN
    // vec4s of W.
    for g in 0..rm {
        step += &format!("            let a{g} = Xs[xk + {g}u * TY];\n");
    }
    for h in 0..rn {
        step += &format!("            let b{h} = Ws[wk + {h}u * TX];\n");
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
