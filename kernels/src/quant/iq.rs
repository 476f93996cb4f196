//! The non-linear 4-bit types IQ4_NL and IQ4_XS.
//!
//! Both map each 4-bit index through ggml's `kvalues_iq4nl` table (a
//! non-uniform grid fitted to normally distributed weights) and scale it.
//! Layouts (`ggml-common.h`):
//!
//! | type | bytes | fields |
//! |---|---|---|
//! | IQ4_NL | 18 | `d: f16`, `qs: [u8; 16]` (32 values, Q4_0's nibble order) |
//! | IQ4_XS | 136 | `d: f16`, `scales_h: u16`, `scales_l: [u8; 4]`, `qs: [u8; 128]` |
//!
//! IQ4_XS has eight 32-value sub-blocks with 6-bit scales biased by 32: the
//! low nibble of scale `i` is nibble `i % 2` of `scales_l[i / 2]`, its top
//! two bits are bits `2 i` of `scales_h`.

use crate::dtype::DType;

use super::{each_block_dequant, f16_le};

/// ggml's `kvalues_iq4nl`.
const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

const QK4_NL: usize = 32;
const QK_K: usize = 256;
const IQ4_NL: usize = DType::IQ4NL.block_bytes();
const IQ4_XS: usize = DType::IQ4XS.block_bytes();
const XS_QS: usize = 8;

const _: () = {
    assert!(DType::IQ4NL.block_size() == QK4_NL && IQ4_NL == 2 + QK4_NL / 2);
    assert!(DType::IQ4XS.block_size() == QK_K && IQ4_XS == XS_QS + QK_K / 2);
};

#[inline]
fn kvalue(nibble: u8) -> f32 {
    f32::from(KVALUES_IQ4NL[usize::from(nibble & 0x0f)])
}

/// 32 values from 16 bytes: low nibbles first, then high nibbles.
#[inline]
fn decode32(dl: f32, qs: &[u8], y: &mut [f32]) {
    let (lo, hi) = y.split_at_mut(y.len() / 2);
    for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(qs) {
        *lo = dl * kvalue(q);
        *hi = dl * kvalue(q >> 4);
    }
}

pub(super) fn dequant_iq4_nl(bytes: &[u8], out: &mut [f32]) {
    each_block_dequant(bytes, out, |b: &[u8; IQ4_NL], y: &mut [f32; QK4_NL]| {
        decode32(f16_le(b[0], b[1]), &b[2..], y);
    });
}

pub(super) fn dequant_iq4_xs(bytes: &[u8], out: &mut [f32]) {
    each_block_dequant(bytes, out, |b: &[u8; IQ4_XS], y: &mut [f32; QK_K]| {
        let d = f16_le(b[0], b[1]);
        let scales_h = u16::from_le_bytes([b[2], b[3]]);
        for (i, (y, qs)) in y
            .chunks_exact_mut(32)
            .zip(b[XS_QS..].chunks_exact(16))
            .enumerate()
        {
            let lo = (b[4 + i / 2] >> (4 * (i % 2))) & 0x0f;
            let hi = ((scales_h >> (2 * i)) & 3) as u8;
            let dl = d * f32::from(i16::from(lo | (hi << 4)) - 32);
            decode32(dl, qs, y);
        }
    });
}
