//! Encoding the K-quant super-blocks: ports of ggml's `quantize_row_*_ref`
//! for Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and Q8_K (the deterministic quantizers
//! without importance weights, as `llama-quantize` uses without an imatrix).
//!
//! The shared shape: search a scale (and min) per sub-block
//! (`kscale`), quantize those scales to 4/6/8 bits against a
//! per-block f16 `d` (and `dmin`), then re-derive every level from the
//! *rounded* scales so the levels fit what the decoder will see. Layouts and
//! bit orders are in `kquants`.

use super::kquants::{
    q3_scales, scale_min_k4, Q2_D, Q2_K, Q2_QS, Q3_D, Q3_K, Q3_QS, Q3_SCALES, Q4_K, Q4_QS,
    Q4_SCALES, Q5_K, Q5_QH, Q5_QS, Q6_D, Q6_K, Q6_QH, Q6_SCALES, Q8_BSUMS, Q8_K, Q8_QS, QK_K,
};
use super::kscale::{make_q3_quants, make_qkx2_quants, make_qx_quants, Qkx2};
use super::{each_block_quant, f16_bytes, f16_le, nearest_int};

/// 2-bit levels of `L` into `qs` the Q2_K/Q3_K way: byte `l` of each
/// 32-byte group `h` holds values `128 h + l + 32 k` at bits `2 k`.
fn pack_2bit(levels: &[u8; QK_K], qs: &mut [u8]) {
    for (qs, levels) in qs.chunks_exact_mut(32).zip(levels.chunks_exact(128)) {
        for (l, q) in qs.iter_mut().enumerate() {
            *q = levels[l] | (levels[l + 32] << 2) | (levels[l + 64] << 4) | (levels[l + 96] << 6);
        }
    }
}

pub(super) fn quant_q2_k(values: &[f32], out: &mut [u8]) {
    const Q4SCALE: f32 = 15.0;
    let params = Qkx2 {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    each_block_quant(values, out, |x: &[f32; QK_K], b: &mut [u8; Q2_K]| {
        *b = [0; Q2_K];
        let mut levels = [0u8; QK_K];
        let mut laux = [0u8; 16];
        let mut scales = [0f32; QK_K / 16];
        let mut mins = [0f32; QK_K / 16];
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        for (j, (x, l)) in x
            .chunks_exact(16)
            .zip(levels.chunks_exact_mut(16))
            .enumerate()
        {
            let mut weights = [0f32; 16];
            for (w, v) in weights.iter_mut().zip(x) {
                *w = v.abs();
            }
            let (scale, min) = make_qkx2_quants(params, x, &weights, l, &mut laux);
            (scales[j], mins[j]) = (scale, min);
            if scale > max_scale {
                max_scale = scale;
            }
            if min > max_min {
                max_min = min;
            }
        }
        // Scales in the low nibbles, mins in the high ones, both against
        // the block maximum / 15. `as u8` truncates like ggml's stores.
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (s, &sc) in b.iter_mut().zip(&scales) {
                *s = nearest_int(iscale * sc) as u8;
            }
            b[Q2_D..Q2_D + 2].copy_from_slice(&f16_bytes(max_scale / Q4SCALE));
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (s, &m) in b.iter_mut().zip(&mins) {
                *s |= (nearest_int(iscale * m) << 4) as u8;
            }
            b[Q2_D + 2..Q2_D + 4].copy_from_slice(&f16_bytes(max_min / Q4SCALE));
        }
        let (d_all, m_all) = (
            f16_le(b[Q2_D], b[Q2_D + 1]),
            f16_le(b[Q2_D + 2], b[Q2_D + 3]),
        );
        for ((&sc, x), l) in b
            .iter()
            .zip(x.chunks_exact(16))
            .zip(levels.chunks_exact_mut(16))
        {
            let d = d_all * f32::from(sc & 0x0f);
            if d == 0.0 {
                continue;
            }
            let dm = m_all * f32::from(sc >> 4);
            for (l, &v) in l.iter_mut().zip(x) {
                *l = nearest_int((v + dm) / d).clamp(0, 3) as u8;
            }
        }
        pack_2bit(&levels, &mut b[Q2_QS..Q2_D]);
    });
}

pub(super) fn quant_q3_k(values: &[f32], out: &mut [u8]) {
    each_block_quant(values, out, |x: &[f32; QK_K], b: &mut [u8; Q3_K]| {
        *b = [0; Q3_K];
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
        for ((s, x), l) in scales
            .iter_mut()
            .zip(x.chunks_exact(16))
            .zip(levels.chunks_exact_mut(16))
        {
            *s = make_q3_quants(4, x, l);
            if s.abs() > amax {
                amax = s.abs();
                max_scale = *s;
            }
        }
        // Sixteen 6-bit scales against d = max_scale / -32, packed as
        // `q3_scales` unpacks them.
        let mut packed = [0u8; 12];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &s) in scales.iter().enumerate() {
                let l = ((nearest_int(iscale * s) as i8).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    packed[j] = l & 0x0f;
                } else {
                    packed[j - 8] |= (l & 0x0f) << 4;
                }
                packed[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
            }
            b[Q3_D..Q3_D + 2].copy_from_slice(&f16_bytes(1.0 / iscale));
        }
        b[Q3_SCALES..Q3_D].copy_from_slice(&packed);
        let d_all = f16_le(b[Q3_D], b[Q3_D + 1]);
        for ((&sc, x), l) in q3_scales(&packed)
            .iter()
            .zip(x.chunks_exact(16))
            .zip(levels.chunks_exact_mut(16))
        {
            let d = d_all * f32::from(sc);
            if d == 0.0 {
                continue;
            }
            for (l, &v) in l.iter_mut().zip(x) {
                *l = (nearest_int(v / d).clamp(-4, 3) + 4) as i8;
            }
        }
        // The third bit of value j goes to bit j / 32 of hmask[j % 32].
        let mut low = [0u8; QK_K];
        for (j, (lo, &l)) in low.iter_mut().zip(&levels).enumerate() {
            let mut l = l as u8;
            if l > 3 {
                b[j % 32] |= 1 << (j / 32);
                l -= 4;
            }
            *lo = l;
        }
        pack_2bit(&low, &mut b[Q3_QS..Q3_SCALES]);
    });
}

/// Q4_K/Q5_K's first half: per 32-value sub-block scale/min search with
/// `x`-dependent weights, 6-bit scales and mins against block maxima / 63
/// (written into `head`: d, dmin, 12 scale bytes), then levels `0..=nmax`
/// re-derived from the rounded scales.
fn quant_k4_head(x: &[f32; QK_K], params: Qkx2, head: &mut [u8], levels: &mut [u8; QK_K]) {
    let mut laux = [0u8; 32];
    let mut scales = [0f32; QK_K / 32];
    let mut mins = [0f32; QK_K / 32];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for (j, (x, l)) in x
        .chunks_exact(32)
        .zip(levels.chunks_exact_mut(32))
        .enumerate()
    {
        let sum_x2 = x.iter().fold(0.0f32, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut weights = [0f32; 32];
        for (w, v) in weights.iter_mut().zip(x) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(params, x, &weights, l, &mut laux);
        (scales[j], mins[j]) = (scale, min);
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // The packing `scale_min_k4` undoes: j < 4 in the low 6 bits of bytes
    // j and j + 4; j >= 4 as nibbles of byte j + 4 plus the top 2 bits of
    // bytes j - 4 and j.
    let mut s = [0u8; 12];
    for j in 0..QK_K / 32 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            s[j] = ls;
            s[j + 4] = lm;
        } else {
            s[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            s[j - 4] |= (ls >> 4) << 6;
            s[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16_bytes(max_scale / 63.0);
    let dmin = f16_bytes(max_min / 63.0);
    for (o, v) in head.iter_mut().zip(d.iter().chain(&dmin).chain(&s)) {
        *o = *v;
    }
    let (d_all, m_all) = (f16_le(d[0], d[1]), f16_le(dmin[0], dmin[1]));
    let nmax = params.nmax;
    for (j, (x, l)) in x
        .chunks_exact(32)
        .zip(levels.chunks_exact_mut(32))
        .enumerate()
    {
        let (sc, m) = scale_min_k4(j, &s);
        let d = d_all * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let dm = m_all * f32::from(m);
        for (l, &v) in l.iter_mut().zip(x) {
            *l = nearest_int((v + dm) / d).clamp(0, nmax) as u8;
        }
    }
}

pub(super) fn quant_q4_k(values: &[f32], out: &mut [u8]) {
    let params = Qkx2 {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    each_block_quant(values, out, |x: &[f32; QK_K], b: &mut [u8; Q4_K]| {
        *b = [0; Q4_K];
        let mut levels = [0u8; QK_K];
        quant_k4_head(x, params, &mut b[..Q4_QS], &mut levels);
        // Each 64-value chunk: low nibbles hold its first 32 values.
        for (q, l) in b[Q4_QS..].chunks_exact_mut(32).zip(levels.chunks_exact(64)) {
            for (i, q) in q.iter_mut().enumerate() {
                *q = l[i] | (l[i + 32] << 4);
            }
        }
    });
}

pub(super) fn quant_q5_k(values: &[f32], out: &mut [u8]) {
    let params = Qkx2 {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    each_block_quant(values, out, |x: &[f32; QK_K], b: &mut [u8; Q5_K]| {
        *b = [0; Q5_K];
        let mut levels = [0u8; QK_K];
        quant_k4_head(x, params, &mut b[..Q4_SCALES + 12], &mut levels);
        // Q4_K's nibbles plus the fifth bits: chunk c's low/high nibble
        // values set bits 2c / 2c + 1 of qh[i].
        let (qh, ql) = b[Q5_QH..].split_at_mut(Q5_QS - Q5_QH);
        for (c, (q, l)) in ql
            .chunks_exact_mut(32)
            .zip(levels.chunks_exact(64))
            .enumerate()
        {
            for (i, (q, h)) in q.iter_mut().zip(qh.iter_mut()).enumerate() {
                let (l1, l2) = (l[i], l[i + 32]);
                *h |= ((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1));
                *q = (l1 & 0x0f) | ((l2 & 0x0f) << 4);
            }
        }
    });
}

pub(super) fn quant_q6_k(values: &[f32], out: &mut [u8]) {
    each_block_quant(values, out, |x: &[f32; QK_K], b: &mut [u8; Q6_K]| {
        *b = [0; Q6_K];
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for ((s, x), l) in scales
            .iter_mut()
            .zip(x.chunks_exact(16))
            .zip(levels.chunks_exact_mut(16))
        {
            *s = make_qx_quants(32, x, l);
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = *s;
            }
        }
        if max_abs_scale < 1e-15 {
            return; // ggml's GROUP_MAX_EPS: an all-zero block
        }
        // 8-bit signed sub-block scales against d = max_scale / -128.
        let iscale = -128.0 / max_scale;
        b[Q6_D..Q6_D + 2].copy_from_slice(&f16_bytes(1.0 / iscale));
        let d_all = f16_le(b[Q6_D], b[Q6_D + 1]);
        let chunks = b[Q6_SCALES..Q6_D]
            .iter_mut()
            .zip(&scales)
            .zip(x.chunks_exact(16));
        for (((o, &s), x), l) in chunks.zip(levels.chunks_exact_mut(16)) {
            // ggml stores `MIN(127, nearest_int(..))` into an int8_t.
            let sc = nearest_int(iscale * s).min(127) as i8;
            *o = sc as u8;
            let d = d_all * f32::from(sc);
            if d == 0.0 {
                continue;
            }
            for (l, &v) in l.iter_mut().zip(x) {
                *l = (nearest_int(v / d).clamp(-32, 31) + 32) as i8;
            }
        }
        // Per 128-value half: low nibbles of values k = 0, 1 (of 4 groups
        // of 32) in ql[l], ql[l + 32]; k = 2, 3 in their high nibbles; the
        // top two bits of group k at bits 2k of qh[l].
        let (ql, qh) = b[..Q6_SCALES].split_at_mut(Q6_QH);
        for ((ql, qh), l) in ql
            .chunks_exact_mut(64)
            .zip(qh.chunks_exact_mut(32))
            .zip(levels.chunks_exact(128))
        {
            let (ql0, ql1) = ql.split_at_mut(32);
            for (i, ((q0, q1), h)) in ql0.iter_mut().zip(ql1).zip(qh.iter_mut()).enumerate() {
                let [a, b2, c, d] = [l[i], l[i + 32], l[i + 64], l[i + 96]].map(|v| v as u8);
                *q0 = (a & 0x0f) | ((c & 0x0f) << 4);
                *q1 = (b2 & 0x0f) | ((d & 0x0f) << 4);
                *h = (a >> 4) | ((b2 >> 4) << 2) | ((c >> 4) << 4) | ((d >> 4) << 6);
            }
        }
    });
}

/// Q8_K (ggml's `quantize_row_q8_K_ref`): `d = max / -127` in f32 (no f16
/// rounding), levels `min(127, round(x / d))`, and `bsums` the sums of each
/// 16 levels. An all-zero block is all zero bytes.
pub(super) fn quant_q8_k(values: &[f32], out: &mut [u8]) {
    each_block_quant(values, out, |x: &[f32; QK_K], b: &mut [u8; Q8_K]| {
        *b = [0; Q8_K];
        let (mut max, mut amax) = (0.0f32, 0.0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            return;
        }
        let iscale = -127.0 / max;
        let (qs, bsums) = b[Q8_QS..].split_at_mut(Q8_BSUMS - Q8_QS);
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8 as u8;
        }
        for (s, q) in bsums.chunks_exact_mut(2).zip(qs.chunks_exact(16)) {
            let sum: i32 = q.iter().map(|&q| i32::from(q as i8)).sum();
            s.copy_from_slice(&(sum as i16).to_le_bytes());
        }
        b[..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    });
}
