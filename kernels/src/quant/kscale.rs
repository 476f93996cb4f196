//! The scale searches behind ggml's K-quant reference quantizers
//! (`make_qx_quants`, `make_q3_quants`, `make_qkx2_quants` in
//! `ggml-quants.c`).
//!
//! Each picks a scale (and min) for one sub-block and its integer levels
//! `L`. They are ports, not redesigns: the sums run in the same order with
//! the same int-to-float conversions, so the chosen levels match ggml's bit
//! for bit (a different summation order can flip a near-tie and change a
//! whole sub-block).

use super::nearest_int;

/// ggml's `GROUP_MAX_EPS`: below this a sub-block counts as all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// The value of largest magnitude (the first on ties) and that magnitude.
#[inline]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

/// Symmetric levels `l + nmax` in `0..2 nmax` for `x`, weighted by `x^2`
/// (ggml's `make_qx_quants` with `rmse_type = 1` and no importance
/// weights). Tries 18 scales around `nmax / max` and keeps the
/// least-squares-best one; returns that scale.
pub(super) fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let store = |iscale: f32, levels: &mut [i8]| {
        for (o, &v) in levels.iter_mut().zip(x) {
            *o = (nmax + level(iscale, v)) as i8;
        }
    };

    let iscale = -(nmax as f32) / max;
    store(iscale, levels);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            store(iscale, levels);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Q3_K's levels `l + nmax` in `0..2 nmax` (ggml's `make_q3_quants` with
/// `do_rmse`): start from `nmax / max`, then up to five passes that move
/// single levels while the `x^2`-weighted fit improves. Returns the scale.
pub(super) fn make_q3_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (o, &v) in levels.iter_mut().zip(x) {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *o = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (o, &v) in levels.iter_mut().zip(x) {
            let w = v * v;
            let old = f32::from(*o);
            let mut slx = sumlx - w * v * old;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * old * old;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != i32::from(*o) {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *o = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for o in levels.iter_mut() {
        *o += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Search knobs of [`make_qkx2_quants`]: scales `(nmax + rmin + rdelta i)
/// / (max - min)` for `i in 0..=nstep` are tried; `use_mad` scores by
/// weighted absolute instead of squared error.
#[derive(Clone, Copy)]
pub(super) struct Qkx2 {
    pub nmax: i32,
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    pub use_mad: bool,
}

/// Asymmetric levels `0..=nmax` with a scale and a min (ggml's
/// `make_qkx2_quants`): value ~ `scale * l - min_out`. Each trial scale's
/// levels get a weighted least-squares (scale, min) refit; the trial with
/// the smallest weighted error wins. Returns `(scale, min_out)` with
/// `min_out >= 0` (it is subtracted). `laux` is scratch of `x.len()`.
pub(super) fn make_qkx2_quants(
    p: Qkx2,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    laux: &mut [u8],
) -> (f32, f32) {
    let (Some(&x0), Some(&w0)) = (x.first(), weights.first()) else {
        return (0.0, 0.0);
    };
    let (mut min, mut max) = (x0, x0);
    let mut sum_w = w0;
    let mut sum_x = sum_w * x0;
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let nmax = p.nmax;
    let err = |d: f32| if p.use_mad { d.abs() } else { d * d };

    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for ((o, &v), &w) in levels.iter_mut().zip(x).zip(weights) {
        let l = nearest_int(iscale * (v - min)).clamp(0, nmax);
        *o = l as u8;
        best_error += w * err(scale * l as f32 + min - v);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=p.nstep {
        let iscale = (p.rmin + p.rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for ((o, &v), &w) in laux.iter_mut().zip(x).zip(weights) {
            let l = nearest_int(iscale * (v - min)).clamp(0, nmax);
            *o = l as u8;
            let l = l as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for ((&l, &v), &w) in laux.iter().zip(x).zip(weights) {
                cur_error += w * err(this_scale * f32::from(l) + this_min - v);
            }
            if cur_error < best_error {
                for (o, &l) in levels.iter_mut().zip(laux.iter()) {
                    *o = l;
                }
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}
