//! Decoding the K-quant super-blocks: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K.
//!
//! A super-block holds `QK_K = 256` values in sub-blocks of 16 or 32, each
//! with a small integer scale (and min) that is itself scaled by the block's
//! f16 `d` (and `dmin`). Layouts (`ggml-common.h`), in field order:
//!
//! | type | bytes | fields |
//! |---|---|---|
//! | Q2_K | 84 | `scales: [u8; 16]` (lo nibble scale, hi nibble min), `qs: [u8; 64]`, `d`, `dmin` |
//! | Q3_K | 110 | `hmask: [u8; 32]`, `qs: [u8; 64]`, `scales: [u8; 12]` (16 x 6 bits), `d` |
//! | Q4_K | 144 | `d`, `dmin`, `scales: [u8; 12]` (8 scales + 8 mins, 6 bits), `qs: [u8; 128]` |
//! | Q5_K | 176 | `d`, `dmin`, `scales: [u8; 12]`, `qh: [u8; 32]`, `qs: [u8; 128]` |
//! | Q6_K | 210 | `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d` |
//! | Q8_K | 292 | `d: f32`, `qs: [i8; 256]`, `bsums: [i16; 16]` (sums of 16 qs) |
//!
//! The bit orders are in the functions below, which follow ggml's
//! `dequantize_row_*` operation for operation (same products in the same
//! order, so the f32 results are bit-identical to ggml and gguf-py).

use crate::dtype::DType;

use super::{each_block_dequant, f16_le};

pub(super) const QK_K: usize = 256;
pub(super) const Q2_K: usize = DType::Q2K.block_bytes();
pub(super) const Q3_K: usize = DType::Q3K.block_bytes();
pub(super) const Q4_K: usize = DType::Q4K.block_bytes();
pub(super) const Q5_K: usize = DType::Q5K.block_bytes();
pub(super) const Q6_K: usize = DType::Q6K.block_bytes();
pub(super) const Q8_K: usize = DType::Q8K.block_bytes();

// Field offsets, from the layouts above.
pub(super) const Q2_QS: usize = 16;
pub(super) const Q2_D: usize = Q2_QS + QK_K / 4;
pub(super) const Q3_QS: usize = QK_K / 8;
pub(super) const Q3_SCALES: usize = Q3_QS + QK_K / 4;
pub(super) const Q3_D: usize = Q3_SCALES + 12;
pub(super) const Q4_SCALES: usize = 4;
pub(super) const Q4_QS: usize = Q4_SCALES + 12;
pub(super) const Q5_QH: usize = 16;
pub(super) const Q5_QS: usize = Q5_QH + QK_K / 8;
pub(super) const Q6_QH: usize = QK_K / 2;
pub(super) const Q6_SCALES: usize = Q6_QH + QK_K / 4;
pub(super) const Q6_D: usize = Q6_SCALES + QK_K / 16;
pub(super) const Q8_QS: usize = 4;
pub(super) const Q8_BSUMS: usize = Q8_QS + QK_K;

// The dtype table and the layouts above must agree.
const _: () = {
    assert!(DType::Q2K.block_size() == QK_K && Q2_K == Q2_D + 4);
    assert!(DType::Q3K.block_size() == QK_K && Q3_K == Q3_D + 2);
    assert!(DType::Q4K.block_size() == QK_K && Q4_K == Q4_QS + QK_K / 2);
    assert!(DType::Q5K.block_size() == QK_K && Q5_K == Q5_QS + QK_K / 2);
    assert!(DType::Q6K.block_size() == QK_K && Q6_K == Q6_D + 2);
    assert!(DType::Q8K.block_size() == QK_K && Q8_K == Q8_BSUMS + QK_K / 8);
};

/// Q2_K: value `32 j + l` of each 128-value half `h` is bits `2 j .. 2 j + 2`
/// of `qs[32 h + l]`; sub-block `i` (16 values) is `d * (sc & 15) * q -
/// dmin * (sc >> 4)` with `sc = scales[i]`.
pub(super) fn dequant_q2_k(bytes: &[u8], out: &mut [f32]) {
    each_block_dequant(bytes, out, |b: &[u8; Q2_K], y: &mut [f32; QK_K]| {
        let d = f16_le(b[Q2_D], b[Q2_D + 1]);
        let dmin = f16_le(b[Q2_D + 2], b[Q2_D + 3]);
        for (i, y) in y.chunks_exact_mut(16).enumerate() {
            let sc = b[i];
            let dl = d * f32::from(sc & 0x0f);
            let ml = dmin * f32::from(sc >> 4);
            let (half, j, upper) = (i / 8, (i / 2) % 4, i % 2);
            let qs = &b[Q2_QS + 32 * half + 16 * upper..][..16];
            for (y, &q) in y.iter_mut().zip(qs) {
                *y = dl * f32::from((q >> (2 * j)) & 3) - ml;
            }
        }
    });
}

/// The sixteen 6-bit Q3_K scales, biased by -32. Scale `j`'s low nibble is
/// the low (j < 8) or high (j >= 8) nibble of byte `j % 8`; its top two
/// bits are bits `2 (j / 4)` of byte `8 + j % 4`.
pub(super) fn q3_scales(s: &[u8; 12]) -> [i8; 16] {
    std::array::from_fn(|j| {
        let lo = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        (lo | (hi << 4)) as i8 - 32
    })
}

/// Q3_K: the low two bits are laid out like Q2_K's; the third bit of value
/// `32 j + l` of half `h` is bit `4 h + j` of `hmask[l]`, and a *clear* bit
/// subtracts 4 (so stored values run -4..=3).
pub(super) fn dequant_q3_k(bytes: &[u8], out: &mut [f32]) {
    each_block_dequant(bytes, out, |b: &[u8; Q3_K], y: &mut [f32; QK_K]| {
        let d = f16_le(b[Q3_D], b[Q3_D + 1]);
        let scales = q3_scales(&bytes_at(b, Q3_SCALES));
        for (i, (y, &sc)) in y.chunks_exact_mut(16).zip(&scales).enumerate() {
            let dl = d * f32::from(sc);
            let (half, j, upper) = (i / 8, (i / 2) % 4, i % 2);
            let qs = &b[Q3_QS + 32 * half + 16 * upper..][..16];
            let hm = &b[16 * upper..][..16];
            let bit = 4 * half + j;
            for ((y, &q), &h) in y.iter_mut().zip(qs).zip(hm) {
                let lo = ((q >> (2 * j)) & 3) as i8;
                let q = lo - if (h >> bit) & 1 != 0 { 0 } else { 4 };
                *y = dl * f32::from(q);
            }
        }
    });
}

/// ggml's `get_scale_min_k4`: scale and min `j` (j < 8) from Q4_K/Q5_K's
/// 12 packed bytes. The first four are the low 6 bits of bytes 0..4 / 4..8;
/// the last four take their low nibbles from bytes 8..12 and their top two
/// bits from the spare top bits of bytes 0..8.
#[inline]
pub(super) fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// `N` bytes of a block starting at `off` (zero-padded past its end, which
/// the const layout checks above rule out).
#[inline]
fn bytes_at<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, &v) in out.iter_mut().zip(b.iter().skip(off)) {
        *o = v;
    }
    out
}

/// Q4_K: 64-value chunk `c` takes the low nibbles of `qs[32 c ..][..32]`
/// with scale/min `2 c`, then the high nibbles with `2 c + 1`; each value is
/// `d * sc * q - dmin * m`.
pub(super) fn dequant_q4_k(bytes: &[u8], out: &mut [f32]) {
    each_block_dequant(bytes, out, |b: &[u8; Q4_K], y: &mut [f32; QK_K]| {
        let (d, dmin) = (f16_le(b[0], b[1]), f16_le(b[2], b[3]));
        let scales = bytes_at(b, Q4_SCALES);
        for (c, y) in y.chunks_exact_mut(64).enumerate() {
            let qs = &b[Q4_QS + 32 * c..][..32];
            let (lo, hi) = y.split_at_mut(32);
            for (y, shift, j) in [(lo, 0, 2 * c), (hi, 4, 2 * c + 1)] {
                let (sc, m) = scale_min_k4(j, &scales);
                let (dl, ml) = (d * f32::from(sc), dmin * f32::from(m));
                for (y, &q) in y.iter_mut().zip(qs) {
                    *y = dl * f32::from((q >> shift) & 0x0f) - ml;
                }
            }
        }
    });
}

/// Q5_K: Q4_K plus a fifth bit: for chunk `c`, bit `2 c` (low nibbles) or
/// `2 c + 1` (high nibbles) of `qh[l]`.
pub(super) fn dequant_q5_k(bytes: &[u8], out: &mut [f32]) {
    each_block_dequant(bytes, out, |b: &[u8; Q5_K], y: &mut [f32; QK_K]| {
        let (d, dmin) = (f16_le(b[0], b[1]), f16_le(b[2], b[3]));
        let scales = bytes_at(b, Q4_SCALES);
        let qh = &b[Q5_QH..Q5_QS];
        for (c, y) in y.chunks_exact_mut(64).enumerate() {
            let qs = &b[Q5_QS + 32 * c..][..32];
            let (lo, hi) = y.split_at_mut(32);
            for (y, shift, j) in [(lo, 0, 2 * c), (hi, 4, 2 * c + 1)] {
                let (sc, m) = scale_min_k4(j, &scales);
                let (dl, ml) = (d * f32::from(sc), dmin * f32::from(m));
                for ((y, &q), &h) in y.iter_mut().zip(qs).zip(qh) {
                    let q = ((q >> shift) & 0x0f) | (((h >> j) & 1) << 4);
                    *y = dl * f32::from(q) - ml;
                }
            }
        }
    });
}

/// Q6_K: in each 128-value half `h`, value `32 k + l` (k = 0..4) has its low
/// nibble in `ql[64 h + l + 32 (k % 2)]` (low nibble for k < 2, high for
/// k >= 2) and its top two bits at bits `2 k` of `qh[32 h + l]`; stored
/// biased by 32. Value = `(d * scales[i]) * q` for its 16-value sub-block i.
pub(super) fn dequant_q6_k(bytes: &[u8], out: &mut [f32]) {
    each_block_dequant(bytes, out, |b: &[u8; Q6_K], y: &mut [f32; QK_K]| {
        let d = f16_le(b[Q6_D], b[Q6_D + 1]);
        for (i, y) in y.chunks_exact_mut(16).enumerate() {
            let dl = d * f32::from(b[Q6_SCALES + i] as i8);
            let (half, k, upper) = (i / 8, (i / 2) % 4, i % 2);
            let ql = &b[64 * half + 32 * (k % 2) + 16 * upper..][..16];
            let qh = &b[Q6_QH + 32 * half + 16 * upper..][..16];
            let shift = 4 * (k / 2) as u32;
            for ((y, &l), &h) in y.iter_mut().zip(ql).zip(qh) {
                let q = ((l >> shift) & 0x0f) | (((h >> (2 * k)) & 3) << 4);
                *y = dl * f32::from(q as i8 - 32);
            }
        }
    });
}

/// Q8_K: `d * qs` with an f32 `d`; `bsums` are a cache for dot products.
pub(super) fn dequant_q8_k(bytes: &[u8], out: &mut [f32]) {
    each_block_dequant(bytes, out, |b: &[u8; Q8_K], y: &mut [f32; QK_K]| {
        let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        for (y, &q) in y.iter_mut().zip(&b[Q8_QS..Q8_BSUMS]) {
            *y = d * f32::from(q as i8);
        }
    });
}
