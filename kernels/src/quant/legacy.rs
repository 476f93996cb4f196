//! The legacy 32-value block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1.
//!
//! Layouts (`ggml-common.h`), all little-endian:
//!
//! | type | bytes | fields |
//! |---|---|---|
//! | Q4_0 | 18 | `d: f16`, `qs: [u8; 16]` |
//! | Q4_1 | 20 | `d: f16`, `m: f16`, `qs: [u8; 16]` |
//! | Q5_0 | 22 | `d: f16`, `qh: [u8; 4]`, `qs: [u8; 16]` |
//! | Q5_1 | 24 | `d: f16`, `m: f16`, `qh: [u8; 4]`, `qs: [u8; 16]` |
//! | Q8_0 | 34 | `d: f16`, `qs: [i8; 32]` |
//! | Q8_1 | 36 | `d: f16`, `s: f16` (= d * sum(qs)), `qs: [i8; 32]` |
//!
//! Nibble packing: byte `j` of `qs` holds value `j` in its low nibble and
//! value `j + 16` in its high nibble. `qh` is a little-endian u32 whose bit
//! `j` is the fifth bit of value `j`.
//!
//! The quantizers are ggml's `quantize_row_*_ref`; gguf-py reimplements the
//! same arithmetic in numpy (except for Q8_1, which it lacks).

use crate::dtype::DType;

use super::{each_block_dequant, each_block_quant, f16_bytes, f16_le};

const QK: usize = 32;
const Q4_0: usize = DType::Q4_0.block_bytes();
const Q4_1: usize = DType::Q4_1.block_bytes();
const Q5_0: usize = DType::Q5_0.block_bytes();
const Q5_1: usize = DType::Q5_1.block_bytes();
const Q8_0: usize = DType::Q8_0.block_bytes();
const Q8_1: usize = DType::Q8_1.block_bytes();

// The dtype table and the layouts above must agree.
const _: () = {
    assert!(DType::Q4_0.block_size() == QK && Q4_0 == 2 + QK / 2);
    assert!(DType::Q4_1.block_size() == QK && Q4_1 == 4 + QK / 2);
    assert!(DType::Q5_0.block_size() == QK && Q5_0 == 2 + 4 + QK / 2);
    assert!(DType::Q5_1.block_size() == QK && Q5_1 == 4 + 4 + QK / 2);
    assert!(DType::Q8_0.block_size() == QK && Q8_0 == 2 + QK);
    assert!(DType::Q8_1.block_size() == QK && Q8_1 == 4 + QK);
};

// ---- decoding: ggml's dequantize_row_* ----

pub(super) fn dequant_q4_0(bytes: &[u8], out: &mut [f32]) {
    each_block_dequant(bytes, out, |b: &[u8; Q4_0], y: &mut [f32; QK]| {
        let d = f16_le(b[0], b[1]);
        for j in 0..QK / 2 {
            let q = b[2 + j];
            y[j] = f32::from(i16::from(q & 0x0f) - 8) * d;
            y[j + QK / 2] = f32::from(i16::from(q >> 4) - 8) * d;
        }
    });
}

pub(super) fn dequant_q4_1(bytes: &[u8], out: &mut [f32]) {
    each_block_dequant(bytes, out, |b: &[u8; Q4_1], y: &mut [f32; QK]| {
        let (d, m) = (f16_le(b[0], b[1]), f16_le(b[2], b[3]));
        for j in 0..QK / 2 {
            let q = b[4 + j];
            y[j] = f32::from(q & 0x0f) * d + m;
            y[j + QK / 2] = f32::from(q >> 4) * d + m;
        }
    });
}

pub(super) fn dequant_q5_0(bytes: &[u8], out: &mut [f32]) {
    each_block_dequant(bytes, out, |b: &[u8; Q5_0], y: &mut [f32; QK]| {
        let d = f16_le(b[0], b[1]);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for j in 0..QK / 2 {
            let q = b[6 + j];
            let (lo, hi) = five_bit(q, qh, j);
            y[j] = f32::from(i16::from(lo) - 16) * d;
            y[j + QK / 2] = f32::from(i16::from(hi) - 16) * d;
        }
    });
}

pub(super) fn dequant_q5_1(bytes: &[u8], out: &mut [f32]) {
    each_block_dequant(bytes, out, |b: &[u8; Q5_1], y: &mut [f32; QK]| {
        let (d, m) = (f16_le(b[0], b[1]), f16_le(b[2], b[3]));
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        for j in 0..QK / 2 {
            let (lo, hi) = five_bit(b[8 + j], qh, j);
            y[j] = f32::from(lo) * d + m;
            y[j + QK / 2] = f32::from(hi) * d + m;
        }
    });
}

/// Values `j` and `j + 16` of a Q5 block: nibbles of `q` plus bits `j` and
/// `j + 16` of `qh` as the fifth bit.
#[inline]
fn five_bit(q: u8, qh: u32, j: usize) -> (u8, u8) {
    let h0 = ((qh >> j) & 1) as u8;
    let h1 = ((qh >> (j + 16)) & 1) as u8;
    ((q & 0x0f) | (h0 << 4), (q >> 4) | (h1 << 4))
}

pub(super) fn dequant_q8_0(bytes: &[u8], out: &mut [f32]) {
    each_block_dequant(bytes, out, |b: &[u8; Q8_0], y: &mut [f32; QK]| {
        let d = f16_le(b[0], b[1]);
        for (y, &q) in y.iter_mut().zip(&b[2..]) {
            *y = f32::from(q as i8) * d;
        }
    });
}

/// ggml has no `dequantize_row_q8_1` (Q8_1 only feeds dot products); the
/// values are `d * qs` like Q8_0, and `s` is a cached sum that adds nothing.
pub(super) fn dequant_q8_1(bytes: &[u8], out: &mut [f32]) {
    each_block_dequant(bytes, out, |b: &[u8; Q8_1], y: &mut [f32; QK]| {
        let d = f16_le(b[0], b[1]);
        for (y, &q) in y.iter_mut().zip(&b[4..]) {
            *y = f32::from(q as i8) * d;
        }
    });
}

// ---- encoding: ggml's quantize_row_*_ref ----

/// The value of largest magnitude, the first one on ties (ggml's strict
/// `amax < fabsf(v)` scan; numpy's `argmax` picks the first too). An all-zero
/// block gives +0, as in ggml (numpy would return the block's first zero).
#[inline]
fn signed_absmax(x: &[f32; QK]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

#[inline]
fn min_max(x: &[f32; QK]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// `d = max / -8` maps the extreme value to -8 exactly, so its sign uses the
/// one extra negative level; `trunc(x / d + 8.5)` rounds half up.
pub(super) fn quant_q4_0(values: &[f32], out: &mut [u8]) {
    each_block_quant(values, out, |x: &[f32; QK], b: &mut [u8; Q4_0]| {
        let d = signed_absmax(x) / -8.0;
        let id = inverse(d);
        b[..2].copy_from_slice(&f16_bytes(d));
        for j in 0..QK / 2 {
            // `as u8` truncates toward zero like ggml's `(int8_t)` cast for
            // these in-range values, and saturates instead of wrapping.
            let q0 = ((x[j] * id + 8.5) as u8).min(15);
            let q1 = ((x[j + QK / 2] * id + 8.5) as u8).min(15);
            b[2 + j] = q0 | (q1 << 4);
        }
    });
}

pub(super) fn quant_q4_1(values: &[f32], out: &mut [u8]) {
    each_block_quant(values, out, |x: &[f32; QK], b: &mut [u8; Q4_1]| {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inverse(d);
        b[..2].copy_from_slice(&f16_bytes(d));
        b[2..4].copy_from_slice(&f16_bytes(min));
        for j in 0..QK / 2 {
            let q0 = (((x[j] - min) * id + 0.5) as u8).min(15);
            let q1 = (((x[j + QK / 2] - min) * id + 0.5) as u8).min(15);
            b[4 + j] = q0 | (q1 << 4);
        }
    });
}

pub(super) fn quant_q5_0(values: &[f32], out: &mut [u8]) {
    each_block_quant(values, out, |x: &[f32; QK], b: &mut [u8; Q5_0]| {
        let d = signed_absmax(x) / -16.0;
        let id = inverse(d);
        b[..2].copy_from_slice(&f16_bytes(d));
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let q0 = ((x[j] * id + 16.5) as u8).min(31);
            let q1 = ((x[j + QK / 2] * id + 16.5) as u8).min(31);
            b[6 + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
            qh |= u32::from(q0 >> 4) << j;
            qh |= u32::from(q1 >> 4) << (j + QK / 2);
        }
        b[2..6].copy_from_slice(&qh.to_le_bytes());
    });
}

pub(super) fn quant_q5_1(values: &[f32], out: &mut [u8]) {
    each_block_quant(values, out, |x: &[f32; QK], b: &mut [u8; Q5_1]| {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inverse(d);
        b[..2].copy_from_slice(&f16_bytes(d));
        b[2..4].copy_from_slice(&f16_bytes(min));
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            // ggml does not clamp here ((max - min) * id rounds to <= 31);
            // gguf-py clips to 31. The clamp only matters for NaN/inf input.
            let q0 = (((x[j] - min) * id + 0.5) as u8).min(31);
            let q1 = (((x[j + QK / 2] - min) * id + 0.5) as u8).min(31);
            b[8 + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
            qh |= u32::from(q0 >> 4) << j;
            qh |= u32::from(q1 >> 4) << (j + QK / 2);
        }
        b[4..8].copy_from_slice(&qh.to_le_bytes());
    });
}

/// Symmetric 8-bit: `d = amax / 127`, values `roundf(x / d)` (half away from
/// zero, which `f32::round` is, and gguf-py's `np_roundf` emulates).
fn q8_block(x: &[f32; QK], qs: &mut [u8]) -> (f32, i32) {
    // ggml's `MAX(amax, fabsf(v))`, NaN-propagating like numpy's max.
    let amax = x
        .iter()
        .fold(0.0f32, |a, v| if a > v.abs() { a } else { v.abs() });
    let d = amax / 127.0;
    let id = inverse(d);
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        let l = (v * id).round() as i8;
        sum += i32::from(l);
        *q = l as u8;
    }
    (d, sum)
}

pub(super) fn quant_q8_0(values: &[f32], out: &mut [u8]) {
    each_block_quant(values, out, |x: &[f32; QK], b: &mut [u8; Q8_0]| {
        let (d, _) = q8_block(x, &mut b[2..]);
        b[..2].copy_from_slice(&f16_bytes(d));
    });
}

/// Q8_0 plus `s = sum(qs) * d` in f32, rounded to f16 (ggml's `sum*d`).
pub(super) fn quant_q8_1(values: &[f32], out: &mut [u8]) {
    each_block_quant(values, out, |x: &[f32; QK], b: &mut [u8; Q8_1]| {
        let (d, sum) = q8_block(x, &mut b[4..]);
        b[..2].copy_from_slice(&f16_bytes(d));
        b[2..4].copy_from_slice(&f16_bytes(sum as f32 * d));
    });
}
