//! Kernel benchmarks on the GPU (`KILN_DEVICE`, else the best adapter), timed
//! with the engine's GPU timestamps (`Plan::time`), each printed with its
//! napkin math: FLOPs or bytes moved, the achieved GFLOP/s or GB/s, and the
//! fraction of an H200's datasheet peak.
//!
//! `cargo bench --bench kernels` runs the summary and criterion;
//! `KILN_BENCH_QUICK=1` only the summary lines; `KILN_BENCH_SWEEP=1` also
//! checks and times candidate matmul tile shapes (for tuning on a real GPU).

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_engine::{CpuTensor, DType, Device, Graph, Plan, TensorDesc, TensorId};
use kiln_kernels::cases::Tolerance;
use kiln_kernels::copy::Copy;
use kiln_kernels::elementwise::{Add, Silu};
use kiln_kernels::matmul::{coop_available, BLayout, CoopTile, MatMul, MatMulVariant, TiledTile};
use kiln_kernels::rms_norm::RmsNorm;
use kiln_kernels::softmax::Softmax;
use kiln_kernels::transpose::Transpose;
use kiln_kernels::Op;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// NVIDIA H200 SXM datasheet peaks, the yardstick in the printed ratios:
/// HBM3e bandwidth, FP32 (CUDA cores) and dense FP16 tensor-core throughput.
const H200_BYTES_PER_S: f64 = 4.8e12;
const H200_F32_FLOPS: f64 = 67e12;
const H200_F16_TENSOR_FLOPS: f64 = 989e12;

/// What a benchmark is bound by, with the work it does per run.
#[derive(Clone, Copy)]
enum Work {
    /// FLOPs per run, against this peak.
    Flops(f64, f64),
    /// Bytes moved per run (each input read once, the output written once).
    Bytes(f64),
}

struct Bench {
    name: String,
    op: Arc<dyn Op>,
    inputs: Vec<TensorDesc>,
    work: Work,
}

fn f32d(shape: &[usize]) -> TensorDesc {
    TensorDesc::f32(shape)
}

fn f16d(shape: &[usize]) -> TensorDesc {
    TensorDesc::new(DType::F16, shape)
}

fn matmul(name: &str, op: MatMul, a: TensorDesc, b: TensorDesc, peak: f64) -> Bench {
    let (m, k) = (a.shape[0], a.shape[1]);
    let n = if op.b_layout == BLayout::NK {
        b.shape[0]
    } else {
        b.shape[1]
    };
    let flops = 2.0 * (m * n * k) as f64;
    Bench {
        name: name.into(),
        op: Arc::new(op),
        inputs: vec![a, b],
        work: Work::Flops(flops, peak),
    }
}

/// A memory-bound op: bytes are every input's plus the output's.
fn streaming(name: &str, op: impl Op + 'static, inputs: Vec<TensorDesc>) -> Bench {
    let out = op
        .output(&inputs)
        .map(|d| d.byte_size().unwrap_or(0))
        .unwrap_or(0);
    let bytes = inputs
        .iter()
        .map(|d| d.byte_size().unwrap_or(0))
        .sum::<usize>()
        + out;
    Bench {
        name: name.into(),
        op: Arc::new(op),
        inputs,
        work: Work::Bytes(bytes as f64),
    }
}

fn benches(coop: bool) -> Vec<Bench> {
    let tiled = MatMul::default().with_variant(MatMulVariant::Tiled);
    let auto = MatMul::default();
    let mut v = vec![
        matmul(
            "matmul 4096^3 f32 tiled",
            tiled,
            f32d(&[4096, 4096]),
            f32d(&[4096, 4096]),
            H200_F32_FLOPS,
        ),
        matmul(
            "matmul 1024^3 f32 tiled",
            tiled,
            f32d(&[1024, 1024]),
            f32d(&[1024, 1024]),
            H200_F32_FLOPS,
        ),
        matmul(
            "matmul 4096^3 f32 x f16 tiled",
            tiled,
            f32d(&[4096, 4096]),
            f16d(&[4096, 4096]),
            H200_F32_FLOPS,
        ),
        matmul(
            "matmul 1x4096x4096 f32 x f16 (M=1)",
            auto,
            f32d(&[1, 4096]),
            f16d(&[4096, 4096]),
            H200_F32_FLOPS,
        ),
    ];
    if coop {
        let coop = MatMul::default().with_variant(MatMulVariant::Coop);
        let peak = H200_F16_TENSOR_FLOPS;
        v.push(matmul(
            "matmul 4096^3 f16 coop",
            coop,
            f16d(&[4096, 4096]),
            f16d(&[4096, 4096]),
            peak,
        ));
        v.push(matmul(
            "matmul 1024^3 f16 coop",
            coop,
            f16d(&[1024, 1024]),
            f16d(&[1024, 1024]),
            peak,
        ));
        v.push(matmul(
            "matmul 4096^3 f32 x f16 coop",
            coop,
            f32d(&[4096, 4096]),
            f16d(&[4096, 4096]),
            peak,
        ));
    }
    let rows = |cols: usize| f32d(&[4096, cols]);
    v.extend([
        streaming("softmax 4096x32000", Softmax::default(), vec![rows(32000)]),
        streaming(
            "rms_norm 4096x4096 + weight",
            RmsNorm::new(1e-5),
            vec![rows(4096), f32d(&[4096])],
        ),
        streaming("add 4096x16384", Add, vec![rows(16384), rows(16384)]),
        streaming("silu 4096x16384", Silu, vec![rows(16384)]),
        streaming(
            "copy f32->f16 4096x16384",
            Copy { to: DType::F16 },
            vec![rows(16384)],
        ),
        streaming("transpose 4096x16384 f32", Transpose, vec![rows(16384)]),
    ]);
    v
}

fn random(rng: &mut StdRng, desc: &TensorDesc) -> CpuTensor {
    let n = desc.numel().unwrap_or(0);
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let t = match desc.dtype {
        DType::F16 => CpuTensor::from_f32_as_f16(desc.shape.clone(), &values),
        _ => CpuTensor::from_f32(desc.shape.clone(), values),
    };
    t.expect("bench shapes are consistent")
}

/// A compiled one-op graph and its random inputs.
struct Ready {
    plan: Box<dyn Plan>,
    ids: Vec<TensorId>,
    inputs: Vec<CpuTensor>,
}

impl Ready {
    fn new(
        device: &Device,
        op: Arc<dyn Op>,
        descs: &[TensorDesc],
        rng: &mut StdRng,
    ) -> Result<Ready, String> {
        let mut g = Graph::new();
        let ids: Vec<TensorId> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| g.input(format!("in{i}"), d.clone()))
            .collect();
        let out = g.apply("out", op, &ids).map_err(|e| e.to_string())?;
        g.output(out);
        let plan = device.executor().compile(&g).map_err(|e| e.to_string())?;
        let inputs = descs.iter().map(|d| random(rng, d)).collect();
        Ok(Ready { plan, ids, inputs })
    }

    fn time(&mut self, iters: u32) -> f64 {
        let feeds: Vec<_> = self.ids.iter().copied().zip(self.inputs.iter()).collect();
        self.plan
            .time(&feeds, iters)
            .map(|t| t.seconds())
            .unwrap_or(f64::NAN)
    }

    fn run(&mut self) -> Result<CpuTensor, String> {
        let feeds: Vec<_> = self.ids.iter().copied().zip(self.inputs.iter()).collect();
        let mut out = self.plan.run(&feeds).map_err(|e| e.to_string())?;
        Ok(out.remove(0))
    }

    /// Median seconds per run over 5 timed batches, after a warm-up; each
    /// batch is sized to take about 50 ms.
    fn median(&mut self) -> f64 {
        let once = self.time(2);
        let iters = ((0.05 / once).ceil() as u32).clamp(1, 200);
        let mut t: Vec<f64> = (0..5).map(|_| self.time(iters)).collect();
        t.sort_by(f64::total_cmp);
        t[2]
    }
}

fn napkin(work: Work, s: f64) -> String {
    match work {
        Work::Flops(f, peak) => format!(
            "{:>9.3} ms  {:>8.2} TFLOP/s  ({:.1} GFLOP; {:.0}% of H200 peak {:.0} TFLOP/s)",
            s * 1e3,
            f / s / 1e12,
            f / 1e9,
            100.0 * f / s / peak,
            peak / 1e12
        ),
        Work::Bytes(b) => format!(
            "{:>9.3} ms  {:>8.1} GB/s     ({:.1} MB moved; {:.0}% of H200 HBM {:.1} TB/s)",
            s * 1e3,
            b / s / 1e9,
            b / 1e6,
            100.0 * b / s / H200_BYTES_PER_S,
            H200_BYTES_PER_S / 1e12
        ),
    }
}

/// Candidate tile shapes, each checked against the CPU on a ragged shape and
/// then timed at 4096^3.
fn sweep(device: &Device, coop: bool, rng: &mut StdRng) {
    let mut candidates: Vec<(String, MatMul, DType)> = Vec::new();
    let tiled = |t: TiledTile| MatMul {
        tiled: Some(t),
        ..MatMul::default().with_variant(MatMulVariant::Tiled)
    };
    for t in [
        TiledTile {
            bm: 128,
            bn: 128,
            bk: 16,
            tm: 8,
            tn: 8,
        },
        TiledTile {
            bm: 128,
            bn: 128,
            bk: 8,
            tm: 8,
            tn: 8,
        },
        TiledTile {
            bm: 64,
            bn: 128,
            bk: 16,
            tm: 8,
            tn: 8,
        },
        TiledTile {
            bm: 128,
            bn: 64,
            bk: 16,
            tm: 8,
            tn: 4,
        },
    ] {
        candidates.push((format!("{t:?}"), tiled(t), DType::F32));
    }
    if coop {
        let c = |t: CoopTile| MatMul {
            coop: Some(t),
            ..MatMul::default().with_variant(MatMulVariant::Coop)
        };
        let ct = |warps_m, warps_n, fm, fn_, bk, nbuf, vec_smem| CoopTile {
            warps_m,
            warps_n,
            fm,
            fn_,
            bk,
            nbuf,
            vec_smem,
        };
        for t in [
            ct(2, 4, 4, 4, 16, 2, true),
            ct(2, 4, 4, 4, 32, 1, true),
            ct(4, 2, 4, 4, 16, 2, true),
            ct(4, 4, 2, 2, 16, 2, true),
            ct(4, 4, 2, 2, 32, 1, true),
        ] {
            candidates.push((format!("{t:?}"), c(t), DType::F16));
        }
    }
    for (name, op, dtype) in candidates {
        // Ragged in every dimension, several tiles in each.
        let (m, n, k) = (333, 517, 1000);
        let check = [
            TensorDesc::new(dtype, [m, k]),
            TensorDesc::new(dtype, [n, k]),
        ];
        let verdict = Ready::new(device, Arc::new(op), &check, rng).and_then(|mut r| {
            let got = r.run()?;
            let refs: Vec<&CpuTensor> = r.inputs.iter().collect();
            let mut want = CpuTensor::zeros(&TensorDesc::f32([m, n])).map_err(|e| e.to_string())?;
            op.cpu(&refs, &mut want).map_err(|e| e.to_string())?;
            let tol = Tolerance::new(1e-5 + 2e-6 * k as f32, 1e-4);
            let (g, w) = (
                got.to_f32().map_err(|e| e.to_string())?,
                want.to_f32().map_err(|e| e.to_string())?,
            );
            let bad = g
                .iter()
                .zip(w.iter())
                .filter(|(g, w)| {
                    // NaN counts as off.
                    let d = (*g - *w).abs();
                    d.is_nan() || d > tol.abs + tol.rel * w.abs()
                })
                .count();
            if bad > 0 {
                return Err(format!("{bad} of {} elements off", g.len()));
            }
            Ok(())
        });
        let size = [
            TensorDesc::new(dtype, [4096, 4096]),
            TensorDesc::new(dtype, [4096, 4096]),
        ];
        let timing = match Ready::new(device, Arc::new(op), &size, rng) {
            Ok(mut r) => {
                let peak = if dtype == DType::F16 {
                    H200_F16_TENSOR_FLOPS
                } else {
                    H200_F32_FLOPS
                };
                napkin(Work::Flops(2.0 * 4096f64.powi(3), peak), r.median())
            }
            Err(e) => e,
        };
        let ok = match verdict {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("WRONG: {e}"),
        };
        println!("sweep {name:<70} check {ok:<8} 4096^3 {timing}");
    }
}

fn kernels(c: &mut Criterion) {
    let device = match Device::from_env() {
        Ok(d @ Device::Gpu(_)) => d,
        Ok(Device::Cpu) | Err(_) => {
            eprintln!("kernels bench: no GPU (KILN_DEVICE picks one); nothing to measure");
            return;
        }
    };
    let caps = match &device {
        Device::Gpu(ctx) => ctx.caps.clone(),
        Device::Cpu => return,
    };
    // `cargo test --all-targets` runs this binary without `--bench`: the
    // 4096-wide shapes would take many minutes on a software adapter, and
    // timing is not a test, so only say how to run it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("kernels bench: not timed under cargo test; run `cargo bench --bench kernels`");
        return;
    }
    let coop = coop_available(&caps);
    println!("device: {}", device.name());
    let mut rng = StdRng::seed_from_u64(7);
    if std::env::var_os("KILN_BENCH_SWEEP").is_some() {
        sweep(&device, coop, &mut rng);
    }
    let mut ready = Vec::new();
    for b in benches(coop) {
        match Ready::new(&device, b.op.clone(), &b.inputs, &mut rng) {
            Ok(mut r) => {
                println!("{:<40} {}", b.name, napkin(b.work, r.median()));
                ready.push((b, r));
            }
            Err(e) => println!("{:<40} not run: {e}", b.name),
        }
    }
    if std::env::var_os("KILN_BENCH_QUICK").is_some() {
        return;
    }
    let mut group = c.benchmark_group("kernels");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (b, r) in &mut ready {
        group.throughput(match b.work {
            Work::Flops(f, _) => Throughput::Elements(f as u64),
            Work::Bytes(bytes) => Throughput::Bytes(bytes as u64),
        });
        group.bench_function(b.name.as_str(), |bench| {
            bench.iter_custom(|iters| {
                Duration::from_secs_f64(r.time(iters.clamp(1, 1000) as u32) * iters as f64)
            })
        });
    }
    group.finish();
}

criterion_group!(benches_group, kernels);
criterion_main!(benches_group);
