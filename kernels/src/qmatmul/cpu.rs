//! The CPU reference of [`super::QMatMul`], made fast enough for the CPU
//! executor's perplexity runs without giving up its exactness.
//!
//! The plain version (`naive` in the tests below, the spec) dequantizes the
//! whole of W and walks all of it for every row of x: for a 49152 x 576
//! output matrix and M = 128 that is ~14 GB of memory traffic. Here a task
//! takes [`NC`] rows of W, decodes them once (ggml's arithmetic, through
//! [`quant::dequantize`]) into a per-task f64 scratch, and runs every row of
//! x past them; x is converted to f64 once per call. The products are done
//! by a register-blocked micro-kernel: an outer product of [`MR`] x values
//! and [`NR`] W values per k, which LLVM keeps in vector registers.
//!
//! Accumulation stays f64 and in the plain loop's order: an f32 x f32
//! product is exact in f64, and each output is summed over k from 0 up, so
//! the result equals the plain loop's (the tests check it).

use rayon::prelude::*;

use crate::dtype::DType;
use crate::quant::{self, QuantError};

/// W rows a task decodes and keeps: 24 x K f64 (108 KiB at K = 576) stays
/// in L2 while x streams by.
const NC: usize = 24;
/// W rows and x rows of one micro-kernel call: an outer product per k,
/// 6 x 4 f64 accumulators (12 of the 16 SSE2 registers of the baseline
/// x86-64 target). Measured at M = 128, K = 576, N = 49152 on 2 cores,
/// NR x MR: 4 x 6 ran 0.23-0.24 s, 4 x 4 0.29, 8 x 2 0.30, 2 x 8 0.32,
/// 6 x 4 0.40.
const NR: usize = 4;
const MR: usize = 6;

/// `y[m, n] = sum_k x[m, k] * W[n, k]`, x `[M, K]` f32, W `[N, K]` in
/// `dtype`'s ggml bytes, y `[M, N]`, each sum in f64.
pub(super) fn qmatmul(
    dtype: DType,
    x: &[f32],
    w: &[u8],
    y: &mut [f32],
    (m, n, k): (usize, usize, usize),
) -> Result<(), QuantError> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        y.iter_mut().for_each(|v| *v = 0.0);
        return Ok(());
    }
    let row_bytes = dtype.bytes_for(k).unwrap_or(0);
    let xp = pack(x, k, MR);
    let mp = m.next_multiple_of(MR);
    // yt[n][m]: y transposed, one contiguous [NC][mp] block per task.
    let mut yt = vec![0f32; n.next_multiple_of(NC) * mp];
    yt.par_chunks_mut(NC * mp)
        .zip(w.par_chunks(NC * row_bytes))
        .try_for_each_init(
            || (vec![0f32; NC * k], vec![0f64; NC * k]),
            |(rows, wp), (yt, w)| {
                let nr = w.len() / row_bytes;
                quant::dequantize(dtype, w, &mut rows[..nr * k])?;
                // Rows past N (the last task's) are zeros.
                rows[nr * k..].iter_mut().for_each(|v| *v = 0.0);
                pack_into(rows, k, NR, wp);
                for (i, xs) in xp.chunks_exact(MR * k).enumerate() {
                    for (g, ws) in wp.chunks_exact(NR * k).enumerate() {
                        let acc = micro(ws, xs);
                        for (r, o) in yt[g * NR * mp..].chunks_mut(mp).take(NR).enumerate() {
                            for (o, a) in o[i * MR..(i + 1) * MR].iter_mut().zip(&acc) {
                                *o = a[r] as f32;
                            }
                        }
                    }
                }
                Ok::<(), QuantError>(())
            },
        )?;
    y.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (j, v) in row.iter_mut().enumerate() {
            *v = yt[j * mp + i];
        }
    });
    Ok(())
}

/// Rows of `k` values as f64, in groups of `g` rows stored k-major
/// (`[rows / g][k][g]`), so a micro-kernel step reads one group's `g`
/// values of one k together; the last group is padded with zero rows.
fn pack(v: &[f32], k: usize, g: usize) -> Vec<f64> {
    let rows = v.len() / k;
    let mut out = vec![0f64; rows.next_multiple_of(g) * k];
    out.par_chunks_mut(g * k)
        .zip(v.par_chunks(g * k))
        .for_each(|(dst, src)| pack_group(src, k, g, dst));
    out
}

/// [`pack`] into `out`, whose length is a whole number of groups.
fn pack_into(v: &[f32], k: usize, g: usize, out: &mut [f64]) {
    for (dst, src) in out.chunks_exact_mut(g * k).zip(v.chunks(g * k)) {
        pack_group(src, k, g, dst);
    }
}

fn pack_group(src: &[f32], k: usize, g: usize, dst: &mut [f64]) {
    for (r, row) in src.chunks_exact(k).enumerate() {
        for (kk, &v) in row.iter().enumerate() {
            dst[kk * g + r] = f64::from(v);
        }
    }
}

/// `acc[i][r]`: the dot product of x row i and W row r of packed groups,
/// summed over k in order (as the plain loop does: f32 x f32 products are
/// exact in f64, so the results equal the plain loop's).
fn micro(w: &[f64], x: &[f64]) -> [[f64; NR]; MR] {
    let mut acc = [[0f64; NR]; MR];
    for (wk, xk) in w.chunks_exact(NR).zip(x.chunks_exact(MR)) {
        // Always Ok (chunks_exact); the arrays let LLVM drop bounds checks.
        let (Ok(wk), Ok(xk)) = (<&[f64; NR]>::try_from(wk), <&[f64; MR]>::try_from(xk)) else {
            continue;
        };
        for (a, &xv) in acc.iter_mut().zip(xk) {
            for (a, &wv) in a.iter_mut().zip(wk) {
                *a += xv * wv;
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The spec: dequantize all of W, one f64 dot product per output.
    fn naive(dtype: DType, x: &[f32], w: &[u8], (m, n, k): (usize, usize, usize)) -> Vec<f32> {
        let w = quant::dequantize_to_vec(dtype, w).unwrap();
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|kk| f64::from(x[i * k + kk]) * f64::from(w[j * k + kk]))
                    .sum();
                y[i * n + j] = s as f32;
            }
        }
        y
    }

    #[test]
    fn matches_the_naive_product_on_ragged_shapes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (dtype, k) in [
            (DType::Q4_0, 64),
            (DType::Q8_0, 96),
            (DType::Q4K, 256),
            (DType::Q6K, 512),
            (DType::F16, 8),
            (DType::F16, 40),
            (DType::F32, 4),
            (DType::F32, 36),
        ] {
            for (m, n) in [(1, 1), (3, 17), (2, 16), (7, 33), (16, 5)] {
                let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
                let wv: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
                let w = quant::quantize(dtype, &wv).unwrap();
                let want = naive(dtype, &x, &w, (m, n, k));
                let mut got = vec![f32::NAN; m * n];
                qmatmul(dtype, &x, &w, &mut got, (m, n, k)).unwrap();
                assert_eq!(got, want, "{dtype} {m}x{n}x{k}");
            }
        }
    }
}
