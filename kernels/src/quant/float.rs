//! Plain float storage: F32, F16, BF16 (little-endian, one value each).

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::{each_block_dequant, each_block_quant};

pub(super) fn dequant_f32(bytes: &[u8], out: &mut [f32]) {
    each_block_dequant(bytes, out, |b: &[u8; 4], y: &mut [f32; 1]| {
        y[0] = f32::from_le_bytes(*b)
    });
}

/// Through half's slice conversion, which uses F16C where the CPU has it
/// (several times the scalar path; F16 weights are common). Exact either way.
pub(super) fn dequant_f16(bytes: &[u8], out: &mut [f32]) {
    const CHUNK: usize = 64;
    let mut buf = [f16::ZERO; CHUNK];
    for (b, o) in bytes.chunks(2 * CHUNK).zip(out.chunks_mut(CHUNK)) {
        let n = o.len().min(b.len() / 2);
        for (h, p) in buf.iter_mut().zip(b.chunks_exact(2)) {
            *h = f16::from_le_bytes([p[0], p[1]]);
        }
        if let (Some(src), Some(dst)) = (buf.get(..n), o.get_mut(..n)) {
            src.convert_to_f32_slice(dst);
        }
    }
}

/// BF16 is the top half of an f32, so widening is a shift (ggml's
/// `GGML_BF16_TO_FP32`); NaN payloads survive.
pub(super) fn dequant_bf16(bytes: &[u8], out: &mut [f32]) {
    each_block_dequant(bytes, out, |b: &[u8; 2], y: &mut [f32; 1]| {
        y[0] = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16);
    });
}

pub(super) fn quant_f32(values: &[f32], out: &mut [u8]) {
    each_block_quant(values, out, |x: &[f32; 1], b: &mut [u8; 4]| {
        *b = x[0].to_le_bytes()
    });
}

/// Round to nearest even, like numpy's `astype(float16)` and ggml.
pub(super) fn quant_f16(values: &[f32], out: &mut [u8]) {
    each_block_quant(values, out, |x: &[f32; 1], b: &mut [u8; 2]| {
        *b = f16::from_f32(x[0]).to_le_bytes()
    });
}

/// ggml's `ggml_compute_fp32_to_bf16` (and gguf-py's `BF16.quantize_blocks`):
/// NaNs are kept but forced quiet, everything else rounds to nearest even.
pub(super) fn quant_bf16(values: &[f32], out: &mut [u8]) {
    each_block_quant(values, out, |x: &[f32; 1], b: &mut [u8; 2]| {
        let u = x[0].to_bits();
        let h = if u & 0x7fff_ffff > 0x7f80_0000 {
            (u >> 16) | 0x40
        } else {
            // Cannot overflow: the largest non-NaN pattern is 0xff80_0000.
            (u + (0x7fff + ((u >> 16) & 1))) >> 16
        };
        *b = (h as u16).to_le_bytes();
    });
}
