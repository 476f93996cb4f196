//! Kernel benchmarks on the GPU (`KILN_DEVICE`, else the best adapter), timed
//! with the engine's GPU timestamps (`Plan::time`), each printed with its
//! napkin math: FLOPs or bytes moved, the achieved GFLOP/s or GB/s, and the
//! fraction of an H200's datasheet peak.
//!
//! `cargo bench --bench kernels` runs the summary and criterion;
//! `KILN_BENCH_QUICK=1` only the summary lines; `KILN_BENCH_SWEEP=1` also
//! checks and times candidate matmul and qmatmul tile shapes (for tuning on
//! a real GPU; `=qmatmul` for qmatmul only); `KILN_BENCH_ONLY=<text>` times
//! only the rows whose name contains the text; `KILN_BENCH_CPU=1` times the
//! CPU executor's quantized matmul (the perplexity path) and needs no GPU.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_engine::{CpuTensor, DType, Device, Graph, Plan, TensorDesc, TensorId};
use kiln_kernels::argmax::ArgMax;
use kiln_kernels::attention::AttnConfig;
use kiln_kernels::cases::Tolerance;
use kiln_kernels::copy::Copy;
use kiln_kernels::elementwise::{Add, Silu};
use kiln_kernels::flash_attn::{FlashAttention, FlashTile};
use kiln_kernels::matmul::{coop_available, BLayout, CoopTile, MatMul, MatMulVariant, TiledTile};
use kiln_kernels::qmatmul::{QCoopTile, QMatMul, QMatMulVariant, QTiledTile};
use kiln_kernels::qmatvec::{Prologue, QMatVec};
use kiln_kernels::rms_norm::RmsNorm;
use kiln_kernels::softmax::Softmax;
use kiln_kernels::transpose::Transpose;
use kiln_kernels::{quant, Op};
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

/// `x [M, K] · Wᵀ`, W `[N, K]` quantized: 2·M·N·K FLOPs (W's bytes are
/// read once per tile row of x and are not the bound at prefill sizes).
fn qmatmul(name: &str, op: QMatMul, m: usize, k: usize, n: usize, w: DType, peak: f64) -> Bench {
    Bench {
        name: name.into(),
        op: Arc::new(op),
        inputs: vec![f32d(&[m, k]), TensorDesc::new(w, [n, k])],
        work: Work::Flops(2.0 * (m * n * k) as f64, peak),
    }
}

/// Prefill-shaped quantized matmuls (M = 512 tokens): llama-7b's attention
/// projections (K = N = 4096), FFN up/gate (K = 4096, N = 11008) and down
/// (K = 11008, N = 4096) in Q4_0, a 135M model's FFN up (K = 576,
/// N = 1536) in Q4_1; with the tiled kernel (f32) and, where the device has
/// them, cooperative matrices (f16 inputs).
fn qmatmul_benches(coop: bool) -> Vec<Bench> {
    let shapes: [(usize, usize, DType); 5] = [
        (4096, 4096, DType::Q4_0),
        (4096, 11008, DType::Q4_0),
        (11008, 4096, DType::Q4_0),
        (576, 1536, DType::Q4_1),
        (4096, 4096, DType::Q6K),
    ];
    let mut variants = vec![(QMatMulVariant::Tiled, "tiled", H200_F32_FLOPS)];
    if coop {
        variants.push((QMatMulVariant::Coop, "coop", H200_F16_TENSOR_FLOPS));
    }
    let mut v = Vec::new();
    for (variant, label, peak) in variants {
        for (k, n, w) in shapes {
            let name = format!("qmatmul 512x{k}x{n} {w} {label}");
            let op = QMatMul::default().with_variant(variant);
            v.push(qmatmul(&name, op, 512, k, n, w, peak));
        }
    }
    v
}

/// Time of llama-7b's matmuls for a prompt of 512 tokens with `op` (32
/// layers of q, k, v, o at 4096 x 4096, gate and up at 4096 -> 11008, down
/// at 11008 -> 4096; the 32000-row output layer once), in Q4_0, and the
/// tokens per second that bounds prefill by.
fn prefill_7b(device: &Device, op: QMatMul, label: &str, rng: &mut StdRng) {
    let m = 512;
    let mut total = 0.0;
    for (k, n, times) in [
        (4096, 4096, 128.0),
        (4096, 11008, 64.0),
        (11008, 4096, 32.0),
        (4096, 32000, 1.0),
    ] {
        let b = qmatmul("", op, m, k, n, DType::Q4_0, H200_F32_FLOPS);
        match Ready::new(device, b.op, &b.inputs, rng) {
            Ok(mut r) => total += times * r.median(),
            Err(e) => {
                println!("prefill 7b {label}: not run: {e}");
                return;
            }
        }
    }
    let flops = 2.0
        * m as f64
        * (32.0 * (4.0 * 4096.0 * 4096.0 + 3.0 * 4096.0 * 11008.0) + 4096.0 * 32000.0);
    println!(
        "prefill llama-7b q4_0 x512 matmuls, {label:<6} {:>9.3} ms  {:>8.0} tok/s  {:>6.2} TFLOP/s effective",
        total * 1e3,
        m as f64 / total,
        flops / total / 1e12
    );
}

/// (N, K, weight dtype) of the decode products timed: llama-7b's q/k/v/o,
/// gate/up and down in Q4_0, llama-8b's 4096² in Q4_K, the 8b output in
/// Q6_K, SmolLM2's tied output in Q8_0 and its gate/up in Q4_1.
const DECODE_SHAPES: [(usize, usize, DType); 7] = [
    (4096, 4096, DType::Q4_0),
    (11008, 4096, DType::Q4_0),
    (4096, 11008, DType::Q4_0),
    (4096, 4096, DType::Q4K),
    (49152, 4096, DType::Q6K),
    (49152, 576, DType::Q8_0),
    (1536, 576, DType::Q4_1),
];

/// `KILN_BENCH_SWEEP=qmatvec`: every step (quad, octet), workgroup size,
/// row grouping and unroll of the fused matvec on each decode shape whose
/// name contains `only` (comma-separated). One set of inputs per shape;
/// the variants are timed round-robin twice and the best kept, so a
/// change of GPU clocks during the sweep hits every variant alike.
fn qmatvec_sweep(device: &Device, only: &str, rng: &mut StdRng) {
    for (n, k, w) in DECODE_SHAPES {
        let shape = format!("1x{k}x{n} {w}");
        if !only.is_empty() && !only.split(',').any(|o| shape.contains(o)) {
            continue;
        }
        let wdesc = TensorDesc::new(w, [n, k]);
        let bytes = kiln_kernels::layout::gpu_bytes(&wdesc).unwrap_or(0) + 4 * (k + n);
        let descs = [f32d(&[1, k]), wdesc];
        let inputs: Vec<CpuTensor> = descs.iter().map(|d| random(rng, d)).collect();
        let mut variants = Vec::new();
        for octets in [false, true] {
            for wg in [32, 64, 128] {
                for rows in [1, 2, 4] {
                    for unroll in [1, 2, 4] {
                        let mut op = QMatVec::new(Prologue::None, false);
                        op.shape = Some((wg, rows, unroll));
                        op.octets = Some(octets);
                        let step = if octets { "oct" } else { "quad" };
                        variants.push((format!("{step} wg{wg} r{rows} u{unroll}"), op));
                    }
                }
            }
        }
        for octets in [false, true] {
            let op = QMatVec {
                octets: Some(octets),
                ..QMatVec::new(Prologue::None, false)
            };
            let step = if octets { "oct" } else { "quad" };
            variants.push((format!("{step} default"), op));
        }
        let mut ready = Vec::new();
        for (name, op) in variants {
            match Ready::with_inputs(device, Arc::new(op), &descs, inputs.clone()) {
                Ok(r) => ready.push((name, r, f64::INFINITY)),
                Err(e) => println!("qmatvec sweep {shape} {name}: not run: {e}"),
            }
        }
        for _ in 0..2 {
            for (_, r, best) in &mut ready {
                *best = best.min(r.median());
            }
        }
        ready.sort_by(|a, b| a.2.total_cmp(&b.2));
        for (name, _, best) in &ready {
            println!(
                "qmatvec sweep {shape} {name:<22} {}",
                napkin(Work::Bytes(bytes as f64), *best)
            );
        }
    }
}

/// Decode (M = 1) products by quantized weights at model shapes: the fused
/// matvec (`qmatvec`) beside qmatmul's matvec. Bound by W's bytes.
fn decode_benches() -> Vec<Bench> {
    let mut v = Vec::new();
    for (n, k, w) in DECODE_SHAPES {
        let wdesc = TensorDesc::new(w, [n, k]);
        let bytes = kiln_kernels::layout::gpu_bytes(&wdesc).unwrap_or(0) + 4 * (k + n);
        let mut row = |name: String, op: Arc<dyn Op>| {
            v.push(Bench {
                name,
                op,
                inputs: vec![f32d(&[1, k]), wdesc.clone()],
                work: Work::Bytes(bytes as f64),
            })
        };
        let plain = QMatVec::new(Prologue::None, false);
        row(format!("qmatvec 1x{k}x{n} {w}"), Arc::new(plain));
        let quads = QMatVec {
            octets: Some(false),
            ..QMatVec::new(Prologue::None, false)
        };
        row(format!("qmatvec 1x{k}x{n} {w} quad"), Arc::new(quads));
        row(
            format!("qmatmul matvec 1x{k}x{n} {w}"),
            Arc::new(QMatMul::default()),
        );
    }
    v
}

/// Prefill flash attention at llama-7b's shape: T = 512 queries from an
/// empty cache (seq (0, 0), ctx 512), 32 heads of 128 on 32 (MHA) or 8 (GQA) kv
/// heads, F32 cache (the model's), and F16. Causal: q·k and p·v over the
/// T·(T+1)/2 visible pairs, ≈ 2·2·T·(T/2)·hd·heads FLOPs (2.1 GFLOP; the
/// full T² count is twice that). Default tile on each, and each other
/// tile on the MHA shape, for tuning; and a prompt of 2048.
fn flash_benches() -> Vec<Bench> {
    let (hd, heads) = (128, 32);
    let cfg = AttnConfig::causal(hd);
    let row = |t: usize, name: String, op: FlashAttention, kv: usize, cache: DType| {
        let c = TensorDesc::new(cache, [t, kv, hd]);
        Bench {
            name,
            op: Arc::new(op),
            inputs: vec![
                f32d(&[t, heads, hd]),
                c.clone(),
                c,
                TensorDesc::new(DType::I32, [1, 2]),
            ],
            work: Work::Flops(2.0 * 2.0 * (t * t / 2 * hd * heads) as f64, H200_F32_FLOPS),
        }
    };
    let mut v = Vec::new();
    for (kv, cache) in [(32, DType::F32), (8, DType::F32), (8, DType::F16)] {
        let name = format!("flash attn T512 h{heads}/{kv} hd{hd} {cache}");
        v.push(row(512, name, FlashAttention::new(cfg), kv, cache));
    }
    for (bq, bk) in [(64, 32), (32, 64), (32, 32)] {
        let op = FlashAttention {
            tile: Some(FlashTile { bq, bk }),
            ..FlashAttention::new(cfg)
        };
        let name = format!("flash attn T512 h32/32 hd128 q{bq}k{bk}");
        v.push(row(512, name, op, 32, DType::F32));
    }
    // A long prompt: 16 times the pairs.
    let name = "flash attn T2048 h32/8 hd128 f32".to_string();
    v.push(row(2048, name, FlashAttention::new(cfg), 8, DType::F32));
    v
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
    v.extend(qmatmul_benches(coop));
    v.extend(flash_benches());
    v.extend(decode_benches());
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
        // Greedy decode's one token id per step: SmolLM's and Qwen2's
        // vocabularies (196 KB and 608 KB of logits, one workgroup reading
        // each), and a prefill's worth of rows.
        streaming("argmax 1x49152", ArgMax::default(), vec![f32d(&[1, 49152])]),
        streaming(
            "argmax 1x152064",
            ArgMax::default(),
            vec![f32d(&[1, 152_064])],
        ),
        streaming(
            "argmax 512x152064",
            ArgMax::default(),
            vec![f32d(&[512, 152_064])],
        ),
    ]);
    v
}

fn random(rng: &mut StdRng, desc: &TensorDesc) -> CpuTensor {
    let n = desc.numel().unwrap_or(0);
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let t = match desc.dtype {
        // Flash attention's seq (start, row): (0, 0), a prompt from an empty
        // cache.
        DType::I32 => CpuTensor::from_bytes(desc.clone(), vec![0; 4 * n]),
        DType::F16 => CpuTensor::from_f32_as_f16(desc.shape.clone(), &values),
        DType::F32 => CpuTensor::from_f32(desc.shape.clone(), values),
        d => {
            let k = desc.shape.last().copied().unwrap_or(1);
            let bytes = quant::quantize_rows(d, &values, k).expect("bench rows are whole blocks");
            CpuTensor::from_bytes(desc.clone(), bytes)
        }
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
        let inputs = descs.iter().map(|d| random(rng, d)).collect();
        Ready::with_inputs(device, op, descs, inputs)
    }

    /// [`Ready::new`] on given inputs (a sweep's variants share one set).
    fn with_inputs(
        device: &Device,
        op: Arc<dyn Op>,
        descs: &[TensorDesc],
        inputs: Vec<CpuTensor>,
    ) -> Result<Ready, String> {
        let (g, ids) = Graph::single_op(op, descs).map_err(|e| e.to_string())?;
        let plan = device.executor().compile(&g).map_err(|e| e.to_string())?;
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
    /// batch is sized to take about 50 ms. The warm-up is two such batches:
    /// after the CPU work of building inputs the GPU's clocks are down, and
    /// a few milliseconds of work did not bring them up (on an H200 the
    /// first shape timed after a check ran at a fifth of the speed).
    fn median(&mut self) -> f64 {
        let once = self.time(2);
        let iters = ((0.05 / once).ceil() as u32).clamp(1, 200);
        self.time(2 * iters);
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

/// Runs `op` on `device` and on the CPU reference; an error names how many
/// elements stray beyond `tol`.
fn check_op(
    device: &Device,
    op: Arc<dyn Op>,
    descs: &[TensorDesc],
    tol: Tolerance,
    rng: &mut StdRng,
) -> Result<(), String> {
    let mut r = Ready::new(device, op.clone(), descs, rng)?;
    let got = r.run()?;
    let refs: Vec<&CpuTensor> = r.inputs.iter().collect();
    let out = op.output(descs).map_err(|e| e.to_string())?;
    let mut want = CpuTensor::zeros(&out).map_err(|e| e.to_string())?;
    op.cpu(&refs, &mut want).map_err(|e| e.to_string())?;
    let (g, w) = (
        got.to_f32().map_err(|e| e.to_string())?,
        want.to_f32().map_err(|e| e.to_string())?,
    );
    let bad = g
        .iter()
        .zip(w.iter())
        .filter(|(g, w)| {
            let d = (*g - *w).abs();
            d.is_nan() || d > tol.abs + tol.rel * w.abs()
        })
        .count();
    if bad > 0 {
        return Err(format!("{bad} of {} elements off", g.len()));
    }
    Ok(())
}

/// Candidate qmatmul tiles (tiled, and coop where the device has it), each
/// checked against the CPU on ragged Q4_0, Q6_K and F16 shapes, then timed
/// at 512x4096x4096 and 512x4096x11008 Q4_0; then the 7b prefill estimate
/// with each kernel's default tile.
/// A qmatmul sweep entry: name, op, tolerance for a given K, peak FLOP/s.
type QCandidate = (String, QMatMul, fn(usize) -> Tolerance, f64);

fn qsweep(device: &Device, coop: bool, rng: &mut StdRng) {
    let t = |bm, bn, bk, tm, tn, nbuf| QTiledTile {
        bm,
        bn,
        bk,
        tm,
        tn,
        nbuf,
    };
    let c = |warps_m, warps_n, fm, fn_, bk, nbuf| QCoopTile {
        warps_m,
        warps_n,
        fm,
        fn_,
        bk,
        nbuf,
    };
    let tiled = QMatMul::default().with_variant(QMatMulVariant::Tiled);
    let exact = |k: usize| Tolerance::new(8.0 * f32::EPSILON * k as f32, 1e-5);
    let mut candidates: Vec<QCandidate> = [
        t(64, 128, 32, 8, 4, 1),
        t(64, 128, 32, 4, 8, 1),
        t(128, 128, 32, 8, 8, 1),
        t(64, 256, 32, 8, 8, 1),
        t(32, 128, 32, 4, 4, 1),
    ]
    .into_iter()
    .map(|tile| {
        let op = QMatMul {
            tiled: Some(tile),
            ..tiled
        };
        (
            format!("{tile:?}"),
            op,
            exact as fn(usize) -> Tolerance,
            H200_F32_FLOPS,
        )
    })
    .collect();
    if coop {
        let coop_op = QMatMul::default().with_variant(QMatMulVariant::Coop);
        let loose = |k: usize| Tolerance::new(2e-3 * (k as f32).sqrt(), 1e-5);
        for tile in [
            c(2, 2, 4, 4, 32, 1),
            c(2, 4, 4, 2, 32, 1),
            c(4, 4, 2, 2, 32, 1),
            c(4, 2, 2, 4, 32, 1),
            c(2, 4, 4, 4, 32, 1),
        ] {
            let op = QMatMul {
                coop: Some(tile),
                ..coop_op
            };
            candidates.push((format!("{tile:?}"), op, loose, H200_F16_TENSOR_FLOPS));
        }
    }
    for (name, op, tol, peak) in candidates {
        let mut verdict = Ok(());
        for (w, k) in [(DType::Q4_0, 1024), (DType::Q6K, 1024), (DType::F16, 1000)] {
            let (m, n) = (333, 517);
            let descs = [f32d(&[m, k]), TensorDesc::new(w, [n, k])];
            if let Err(e) = check_op(device, Arc::new(op), &descs, tol(k), rng) {
                verdict = Err(format!("{w}: {e}"));
                break;
            }
        }
        let ok = match verdict {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("WRONG: {e}"),
        };
        let mut line = format!("qsweep {name:<75} check {ok:<8}");
        for n in [4096, 11008] {
            let b = qmatmul("", op, 512, 4096, n, DType::Q4_0, peak);
            let timing = match Ready::new(device, b.op, &b.inputs, rng) {
                Ok(mut r) => {
                    let s = r.median();
                    let Work::Flops(f, _) = b.work else { continue };
                    format!("{:.3} ms {:.2} TFLOP/s", s * 1e3, f / s / 1e12)
                }
                Err(e) => e,
            };
            line += &format!("  N={n}: {timing}");
        }
        println!("{line}");
    }
    prefill_7b(device, tiled, "tiled", rng);
    if coop {
        let op = QMatMul::default().with_variant(QMatMulVariant::Coop);
        prefill_7b(device, op, "coop", rng);
    }
}

/// The CPU executor's quantized matmul at a 135M model's output-layer
/// shape (M = 128 tokens, K = 576, N = 49152): what a perplexity run
/// spends its time in.
fn cpu_qmatmul(rng: &mut StdRng) {
    let (m, k, n) = (128, 576, 49152);
    for w in [DType::Q8_0, DType::Q4_1] {
        let descs = [f32d(&[m, k]), TensorDesc::new(w, [n, k])];
        let flops = 2.0 * (m * n * k) as f64;
        match Ready::new(&Device::Cpu, Arc::new(QMatMul::default()), &descs, rng) {
            Ok(mut r) => {
                let mut t: Vec<f64> = (0..3).map(|_| r.time(1)).collect();
                t.sort_by(f64::total_cmp);
                println!(
                    "cpu qmatmul {m}x{k}x{n} {w:<5} {:>9.3} s  {:>6.2} GFLOP/s  ({:.2} GFLOP)",
                    t[1],
                    flops / t[1] / 1e9,
                    flops / 1e9
                );
            }
            Err(e) => println!("cpu qmatmul {w}: not run: {e}"),
        }
    }
}

fn kernels(c: &mut Criterion) {
    if std::env::var_os("KILN_BENCH_CPU").is_some() && std::env::args().any(|a| a == "--bench") {
        cpu_qmatmul(&mut StdRng::seed_from_u64(7));
    }
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
    // KILN_BENCH_ONLY=qmatmul times only the rows whose name contains it
    // (or any of several, comma-separated).
    let only = std::env::var("KILN_BENCH_ONLY").unwrap_or_default();
    // KILN_BENCH_SWEEP=qmatmul sweeps qmatmul tiles only; =qmatvec the
    // fused matvec's variants (qmatvec_sweep) only; anything else both
    // matmuls'.
    match std::env::var("KILN_BENCH_SWEEP").ok().as_deref() {
        None => {}
        Some("qmatvec") => return qmatvec_sweep(&device, &only, &mut rng),
        Some(which) => {
            if which != "qmatmul" {
                sweep(&device, coop, &mut rng);
            }
            qsweep(&device, coop, &mut rng);
        }
    }
    let wanted = |name: &str| only.split(',').any(|o| name.contains(o));
    let mut ready = Vec::new();
    for b in benches(coop).into_iter().filter(|b| wanted(&b.name)) {
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
