//! CPU (de)quantization: bit-exact against gguf-py fixtures, round-trip
//! error budgets per type, parallel == serial, and errors instead of panics.
//!
//! Fixtures come from `scripts/gen_quant_fixtures.py` (format documented
//! there); no Python runs here.

use std::path::PathBuf;

use half::f16;
use kiln_kernels::quant::{self, QuantError};
use kiln_kernels::{CpuTensor, DType, TensorDesc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Types with a `dequant_<name>.bin` fixture (all gguf-py can decode).
const DEQUANT_FIXTURES: &[DType] = &[
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2K,
    DType::Q3K,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
    DType::IQ4NL,
    DType::IQ4XS,
];

/// Types with a `quant_<name>.bin` fixture (all gguf-py can encode).
const QUANT_FIXTURES: &[DType] = &[
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
];

struct Fixture {
    dtype: DType,
    bytes: Vec<u8>,
    values: Vec<f32>,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn load(kind: &str, dtype: DType) -> Fixture {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "fixtures",
        "quant",
        &format!("{kind}_{}.bin", dtype.name()),
    ]
    .iter()
    .collect();
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&raw[..4], b"KQF1", "{}", path.display());
    assert_eq!(le_u32(&raw, 4), if kind == "dequant" { 0 } else { 1 });
    assert_eq!(DType::from_ggml_id(le_u32(&raw, 8)), Some(dtype));
    let (n_values, n_bytes) = (le_u32(&raw, 12) as usize, le_u32(&raw, 16) as usize);
    let bytes = raw[20..20 + n_bytes].to_vec();
    let values: Vec<f32> = raw[20 + n_bytes..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(values.len(), n_values, "{}", path.display());
    Fixture {
        dtype,
        bytes,
        values,
    }
}

/// Compares f32 bit patterns, so -0.0 vs 0.0 or a changed NaN fails too.
fn assert_bits_eq(dtype: DType, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{dtype}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{dtype} value {i}: got {g:e}, gguf-py {w:e}"
        );
    }
}

#[test]
fn dequantize_is_bit_exact_against_gguf_py() {
    for &dtype in DEQUANT_FIXTURES {
        let fx = load("dequant", dtype);
        let got = quant::dequantize_to_vec(fx.dtype, &fx.bytes).unwrap();
        assert_bits_eq(dtype, &got, &fx.values);

        // The parallel path, rows of one block and of several.
        for blocks_per_row in [1, 2] {
            let row_len = dtype.block_size() * blocks_per_row;
            if !got.len().is_multiple_of(row_len) {
                continue;
            }
            let mut par = vec![f32::NAN; got.len()];
            quant::dequantize_rows(dtype, &fx.bytes, &mut par, row_len).unwrap();
            assert_bits_eq(dtype, &par, &fx.values);
        }
    }
}

#[test]
fn quantize_is_bit_exact_against_gguf_py() {
    for &dtype in QUANT_FIXTURES {
        let fx = load("quant", dtype);
        let got = quant::quantize(dtype, &fx.values).unwrap();
        assert_eq!(got.len(), fx.bytes.len(), "{dtype}");
        let block = dtype.block_bytes();
        for (i, (g, w)) in got.chunks(block).zip(fx.bytes.chunks(block)).enumerate() {
            assert_eq!(g, w, "{dtype} block {i}");
        }
        assert_eq!(
            quant::quantize_rows(dtype, &fx.values, 64).unwrap(),
            fx.bytes,
            "{dtype} rows"
        );
    }
}

/// Standard normal values with a per-row scale, plus a few outliers: the
/// shape of real weights.
fn weights(rng: &mut StdRng, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        let scale = 10f32.powf(rng.random_range(-3.0..1.0));
        for _ in 0..cols {
            // Box-Muller.
            let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
            let mut x = (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos();
            if rng.random_range(0..100) == 0 {
                x *= 8.0;
            }
            out.push(x * scale);
        }
    }
    out
}

/// Normalized mean squared error of each row; the worst row.
fn worst_row_nmse(x: &[f32], y: &[f32], cols: usize) -> f64 {
    x.chunks(cols)
        .zip(y.chunks(cols))
        .map(|(x, y)| {
            let err: f64 = x
                .iter()
                .zip(y)
                .map(|(&a, &b)| f64::from(a - b).powi(2))
                .sum();
            let sig: f64 = x.iter().map(|&a| f64::from(a).powi(2)).sum();
            err / sig
        })
        .fold(0.0, f64::max)
}

#[test]
fn round_trip_error_within_budget() {
    // Worst-row NMSE budgets on outlier-heavy rows: about 2x what these
    // (ggml's) quantizers reach here, so a real regression trips them. Each
    // extra bit cuts the error ~4x; 256-value blocks (Q8_K) see bigger
    // outliers than 32-value ones (Q8_0).
    let budgets: &[(DType, f64)] = &[
        (DType::F32, 0.0),
        (DType::F16, 2e-7),
        (DType::BF16, 1e-5),
        (DType::Q8_0, 2.5e-4),
        (DType::Q8_1, 2.5e-4),
        (DType::Q8K, 1.5e-3),
        (DType::Q6K, 2e-3),
        (DType::Q5_0, 1.5e-2),
        (DType::Q5_1, 7e-3),
        (DType::Q5K, 6e-3),
        (DType::Q4_0, 6e-2),
        (DType::Q4_1, 3e-2),
        (DType::Q4K, 2.5e-2),
        (DType::Q3K, 1e-1),
        (DType::Q2K, 3e-1),
    ];
    let mut rng = StdRng::seed_from_u64(7);
    let cols = 512;
    let x = weights(&mut rng, 48, cols);
    for &(dtype, budget) in budgets {
        let bytes = quant::quantize(dtype, &x).unwrap();
        assert_eq!(bytes.len(), dtype.bytes_for(x.len()).unwrap());
        let y = quant::dequantize_to_vec(dtype, &bytes).unwrap();
        let nmse = worst_row_nmse(&x, &y, cols);
        assert!(
            nmse <= budget,
            "{dtype}: worst-row NMSE {nmse:.3e} over budget {budget:.0e}"
        );
        // Parallel rows give the same bytes.
        assert_eq!(
            quant::quantize_rows(dtype, &x, cols).unwrap(),
            bytes,
            "{dtype}"
        );
    }
}

#[test]
fn quantize_into_overwrites_every_byte() {
    let mut rng = StdRng::seed_from_u64(3);
    let x = weights(&mut rng, 2, 256);
    for dtype in DType::ALL.into_iter().filter(|&d| quant::can_quantize(d)) {
        let clean = quant::quantize(dtype, &x).unwrap();
        let mut dirty = vec![0xa5u8; clean.len()];
        quant::quantize_into(dtype, &x, &mut dirty).unwrap();
        assert_eq!(dirty, clean, "{dtype}");
        // All-zero input encodes to values that decode to zero.
        let zeros = quant::quantize(dtype, &[0.0; 256]).unwrap();
        let back = quant::dequantize_to_vec(dtype, &zeros).unwrap();
        assert!(back.iter().all(|&v| v == 0.0), "{dtype}");
    }
}

#[test]
fn q8_caches_hold_their_sums() {
    let mut rng = StdRng::seed_from_u64(5);
    let x = weights(&mut rng, 1, 256);
    // Q8_1: s = f16(d * sum(qs)) with ggml's unrounded d = amax / 127;
    // d f16 at 0, s at 2, qs from 4.
    let q81 = quant::quantize(DType::Q8_1, &x).unwrap();
    for (b, x) in q81.chunks(36).zip(x.chunks(32)) {
        let d = x.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
        assert_eq!(f16::from_le_bytes([b[0], b[1]]), f16::from_f32(d));
        let sum: i32 = b[4..].iter().map(|&q| i32::from(q as i8)).sum();
        assert_eq!(
            f16::from_le_bytes([b[2], b[3]]),
            f16::from_f32(sum as f32 * d)
        );
    }
    // Q8_K: bsums (i16 at 260) are sums of each 16 qs (from 4).
    let q8k = quant::quantize(DType::Q8K, &x).unwrap();
    for (j, q) in q8k[4..260].chunks(16).enumerate() {
        let sum: i32 = q.iter().map(|&q| i32::from(q as i8)).sum();
        assert_eq!(
            i32::from(i16::from_le_bytes([q8k[260 + 2 * j], q8k[261 + 2 * j]])),
            sum
        );
    }
}

#[test]
fn hand_built_blocks_decode_as_ggml_defines() {
    // Q8_1: d = 0.5, s ignored, qs = -3, 100, ...
    let mut b = vec![0u8; 36];
    b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
    b[2..4].copy_from_slice(&f16::from_f32(123.0).to_le_bytes());
    b[4] = (-3i8) as u8;
    b[5] = 100;
    let y = quant::dequantize_to_vec(DType::Q8_1, &b).unwrap();
    assert_eq!(&y[..3], &[-1.5, 50.0, 0.0]);
    // Q8_K: f32 d = -0.25, qs[0] = 8, qs[255] = -128.
    let mut b = vec![0u8; 292];
    b[..4].copy_from_slice(&(-0.25f32).to_le_bytes());
    b[4] = 8;
    b[259] = 0x80;
    let y = quant::dequantize_to_vec(DType::Q8K, &b).unwrap();
    assert_eq!((y[0], y[1], y[255]), (-2.0, -0.0, 32.0));
}

#[test]
fn bad_lengths_and_types_are_errors() {
    let mut out = vec![0.0; 32];
    assert_eq!(
        quant::dequantize(DType::Q4_0, &[0; 17], &mut out),
        Err(QuantError::RaggedBytes {
            dtype: DType::Q4_0,
            len: 17,
            block_bytes: 18
        })
    );
    assert_eq!(
        quant::dequantize(DType::Q4_0, &[0; 36], &mut out),
        Err(QuantError::ValueCount {
            dtype: DType::Q4_0,
            bytes: 36,
            expected: 64,
            got: 32
        })
    );
    assert!(matches!(
        quant::dequantize(DType::IQ2XXS, &[0; 66], &mut out),
        Err(QuantError::Unsupported { .. })
    ));
    assert!(matches!(
        quant::dequantize_to_vec(DType::I32, &[0; 4]),
        Err(QuantError::Unsupported { .. })
    ));
    assert!(matches!(
        quant::quantize(DType::IQ4NL, &[0.0; 32]),
        Err(QuantError::Unsupported { .. })
    ));
    assert_eq!(
        quant::quantize(DType::Q4K, &[0.0; 255]),
        Err(QuantError::RaggedValues {
            dtype: DType::Q4K,
            len: 255,
            block_size: 256
        })
    );
    assert!(matches!(
        quant::quantize_into(DType::Q8_0, &[0.0; 32], &mut [0; 35]),
        Err(QuantError::ByteCount {
            expected: 34,
            got: 35,
            ..
        })
    ));
    for row_len in [0, 16, 48] {
        assert!(matches!(
            quant::dequantize_rows(DType::Q4_0, &[0; 36], &mut [0.0; 64], row_len),
            Err(QuantError::RowLen { .. })
        ));
    }
    assert!(matches!(
        quant::quantize_rows(DType::Q8_0, &[0.0; 64], 0),
        Err(QuantError::RowLen { .. })
    ));
    // Empty input is fine.
    assert_eq!(
        quant::dequantize_to_vec(DType::Q6K, &[]).unwrap(),
        Vec::<f32>::new()
    );
    assert_eq!(quant::quantize(DType::Q6K, &[]).unwrap(), Vec::<u8>::new());
}

#[test]
fn arbitrary_input_never_panics() {
    let mut rng = StdRng::seed_from_u64(11);
    for dtype in DType::ALL.into_iter().filter(|&d| quant::can_dequantize(d)) {
        // Random bytes include NaN and infinite scales.
        let bytes: Vec<u8> = (0..dtype.block_bytes() * 8).map(|_| rng.random()).collect();
        let y = quant::dequantize_to_vec(dtype, &bytes).unwrap();
        assert_eq!(y.len(), dtype.block_size() * 8);
    }
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN_POSITIVE,
        -0.0,
        1e-40,
    ];
    for dtype in DType::ALL.into_iter().filter(|&d| quant::can_quantize(d)) {
        let n = dtype.block_size().max(256);
        let x: Vec<f32> = (0..n)
            .map(|i| specials[i % specials.len()] * if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let bytes = quant::quantize(dtype, &x).unwrap();
        quant::dequantize_to_vec(dtype, &bytes).unwrap();
    }
}

#[test]
fn tensor_dequantizes_to_same_shape() {
    let mut rng = StdRng::seed_from_u64(13);
    let x = weights(&mut rng, 6, 64);
    let bytes = quant::quantize(DType::Q8_0, &x).unwrap();
    let t =
        CpuTensor::from_bytes(TensorDesc::new(DType::Q8_0, vec![2, 3, 64]), bytes.clone()).unwrap();
    let f = quant::dequantize_tensor(&t).unwrap();
    assert_eq!(f.shape(), &[2, 3, 64]);
    assert_eq!(
        f.as_f32().unwrap(),
        quant::dequantize_to_vec(DType::Q8_0, &bytes)
            .unwrap()
            .as_slice()
    );
}
