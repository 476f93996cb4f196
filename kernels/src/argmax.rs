//! Argmax over the last dimension of an F32 tensor: `[.., n] -> [..]` I32,
//! the index of each row's largest value, so greedy decoding reads back one
//! token id per step instead of the vocabulary's logits.
//!
//! The rule is the host sampler's (`kiln::sampler::argmax`), exactly: the
//! lowest index wins ties (-0 and +0 are equal), NaN is never the max, and
//! a row with no number (all NaN) gives 0. A row of -inf gives 0 like any
//! row of equal values.

use rayon::prelude::*;

use crate::cases::{Dist, OpCase, Tolerance};
use crate::check;
use crate::dtype::DType;
use crate::op::{grid, params_bytes, Caps, GpuKernel, Op, OpError};
use crate::template::{fill, u};
use crate::tensor::{CpuTensor, TensorDesc};

const WGSL: &str = include_str!("../wgsl/argmax.wgsl");
const NAME: &str = "argmax";

/// Invocations per row at most: 1024 keeps the most loads in flight for
/// the one workgroup that reads a whole vocabulary row (WebGPU guarantees
/// only 256; devices that offer less get the largest power of two they do).
const MAX_WG: u32 = 1024;
/// Fewest invocations per row, for short rows.
const MIN_WG: u32 = 64;
/// Loads in flight per invocation in the kernel's main loop.
const UNROLL: u32 = 4;

/// Mirrors `Params` in `argmax.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    /// Elements of the kernel's element type (f32 or vec4) per row.
    cols: u32,
    _pad: [u32; 2],
}

/// The (key, index) reduction through subgroup max/min: each subgroup
/// reduces in registers, its first invocation leaves the result in a slot,
/// and every invocation folds the slots (never assumes a subgroup size).
const REDUCE_SUBGROUP: &str = "
struct Ids {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(num_subgroups) n_sg: u32,
}

// One slot per subgroup; WG slots cover even a subgroup size of 1.
var<workgroup> red_key: array<u32, WG>;
var<workgroup> red_idx: array<u32, WG>;

// The workgroup's largest key and, among its holders, the lowest index.
// Every invocation must call this (it holds a barrier); all get the index.
fn wg_argmax(k: u32, i: u32, ids: Ids) -> u32 {
    let sk = subgroupMax(k);
    let si = subgroupMin(select(NONE, i, k == sk));
    if ids.sg_lane == 0u {
        red_key[ids.sg_id] = sk;
        red_idx[ids.sg_id] = si;
    }
    workgroupBarrier();
    var bk = red_key[0];
    var bi = red_idx[0];
    for (var s = 1u; s < ids.n_sg; s++) {
        let ok = red_key[s];
        let oi = red_idx[s];
        if ok > bk || (ok == bk && oi < bi) {
            bk = ok;
            bi = oi;
        }
    }
    return bi;
}
";

/// The same through a tree in workgroup memory (WG is a power of two).
const REDUCE_WORKGROUP: &str = "
struct Ids {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
}

var<workgroup> red_key: array<u32, WG>;
var<workgroup> red_idx: array<u32, WG>;

// The workgroup's largest key and, among its holders, the lowest index.
// Every invocation must call this (it holds barriers); all get the index.
fn wg_argmax(k: u32, i: u32, ids: Ids) -> u32 {
    red_key[ids.lid] = k;
    red_idx[ids.lid] = i;
    workgroupBarrier();
    for (var s = WG >> 1u; s > 0u; s = s >> 1u) {
        if ids.lid < s {
            let ok = red_key[ids.lid + s];
            let oi = red_idx[ids.lid + s];
            let mk = red_key[ids.lid];
            if ok > mk || (ok == mk && oi < red_idx[ids.lid]) {
                red_key[ids.lid] = ok;
                red_idx[ids.lid] = oi;
            }
        }
        workgroupBarrier();
    }
    return red_idx[0];
}
";

/// Folds one f32, row element `i`, into the invocation's best.
const VISIT_F32: &str = "
fn visit(v: f32, i: u32) {
    let k = key(v);
    if k > best_key {
        best_key = k;
        best_idx = i;
    }
}
";

/// Folds one vec4, row elements `4i .. 4i + 3`, into the invocation's best:
/// the lanes' max first, so the common case (no new best) is one compare.
const VISIT_VEC4: &str = "
fn visit(v: vec4<f32>, i: u32) {
    let k = key(v);
    let m = max(max(k.x, k.y), max(k.z, k.w));
    if m > best_key {
        best_key = m;
        // The first lane holding m: the lowest index of a tie inside v.
        let lane = select(select(select(3u, 2u, k.z == m), 1u, k.y == m), 0u, k.x == m);
        best_idx = (i << 2u) + lane;
    }
}
";

/// `argmax(x)` along the last dimension: F32 `[.., n]` -> I32 `[..]`
/// (`[1]` for a vector).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgMax {
    /// Use the subgroup reduction when the device has subgroups. Off only
    /// to test the workgroup-memory reduction on such a device.
    pub allow_subgroups: bool,
}

impl Default for ArgMax {
    fn default() -> ArgMax {
        ArgMax {
            allow_subgroups: true,
        }
    }
}

/// The reference for one row, the host sampler's greedy pick: the largest
/// non-NaN value (`f32::max` skips NaN), then the first index equal to it;
/// 0 when none is (all NaN).
pub fn argmax_row(row: &[f32]) -> u32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    row.iter().position(|&v| v == max).unwrap_or(0) as u32
}

/// Invocations per row: enough for `UNROLL` loads each to cover the row,
/// a power of two between `MIN_WG` and what the device allows.
fn workgroup_size(caps: &Caps, cols: u32) -> u32 {
    let cap = caps.max_invocations_per_workgroup.clamp(1, MAX_WG);
    let cap = 1 << cap.ilog2();
    cols.div_ceil(UNROLL)
        .next_power_of_two()
        .clamp(MIN_WG.min(cap), cap)
}

impl Op for ArgMax {
    fn name(&self) -> &'static str {
        NAME
    }

    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        check::arity(NAME, inputs, 1)?;
        let x = &inputs[0];
        check::dtype(NAME, x, &[DType::F32], "its input")?;
        check::numel_u32(NAME, inputs, x)?;
        let Some((&n, batch)) = x.shape.split_last() else {
            return Err(check::shape_err(
                NAME,
                inputs,
                "needs at least one dimension",
            ));
        };
        if n == 0 || x.rows() == 0 {
            return Err(check::shape_err(
                NAME,
                inputs,
                "every dimension must be non-empty: the max of no values has no index",
            ));
        }
        // Indices are I32, and the kernel keeps u32::MAX for "none yet".
        if i32::try_from(n).is_err() {
            return Err(check::shape_err(
                NAME,
                inputs,
                format!("rows of {n} values have indices past i32"),
            ));
        }
        let shape = if batch.is_empty() {
            vec![1]
        } else {
            batch.to_vec()
        };
        Ok(TensorDesc::new(DType::I32, shape))
    }

    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let x = inputs[0]
            .as_f32()
            .ok_or(check::not_f32(NAME, inputs[0].dtype()))?;
        let cols = inputs[0].desc().cols();
        if cols == 0 {
            return Err(check::shape_err(
                NAME,
                &[inputs[0].desc().clone()],
                "empty rows",
            ));
        }
        let ids: Vec<i32> = x
            .par_chunks(cols)
            .map(|row| argmax_row(row) as i32)
            .collect();
        *out = CpuTensor::from_i32(out.shape().to_vec(), &ids)
            .map_err(|e| check::shape_err(NAME, &[inputs[0].desc().clone()], e.to_string()))?;
        Ok(())
    }

    fn gpu(
        &self,
        inputs: &[TensorDesc],
        _out: &TensorDesc,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        self.output(inputs)?;
        let x = &inputs[0];
        let sg = self.allow_subgroups && caps.subgroups;
        let vec = x.cols().is_multiple_of(4);
        let width = if vec { 4 } else { 1 };
        let rows = check::dim_u32(NAME, inputs, x.rows())?;
        let cols = check::dim_u32(NAME, inputs, x.cols())? / width;
        let wg = workgroup_size(caps, cols);
        let source = fill(
            WGSL,
            &[
                ("WG", u(wg)),
                ("T", if vec { "vec4<f32>" } else { "f32" }.into()),
                ("K", if vec { "vec4<u32>" } else { "u32" }.into()),
                ("VISIT", if vec { VISIT_VEC4 } else { VISIT_F32 }.into()),
                (
                    "REDUCE",
                    if sg {
                        REDUCE_SUBGROUP
                    } else {
                        REDUCE_WORKGROUP
                    }
                    .into(),
                ),
            ],
        );
        Ok(GpuKernel {
            key: format!(
                "argmax.{}.{}.wg{wg}",
                if sg { "sg" } else { "wg" },
                if vec { "vec4" } else { "f32" }
            ),
            source: source.into(),
            entry: "main",
            params: params_bytes(&Params {
                rows,
                cols,
                _pad: [0; 2],
            }),
            workgroups: grid(rows, caps.max_workgroups_per_dimension),
        })
    }

    /// Every index is `row * cols + i` with `i < cols` and `row < rows`,
    /// and the cases cover vec4 and ragged rows shorter and longer than the
    /// workgroup and its unrolled stride.
    fn trusted(&self) -> bool {
        true
    }
}

/// Row counts 1, 3, 8; vec4 and ragged rows from 5 values to a vocabulary;
/// ties, equal rows, negatives, ±inf, NaN and ±0; both reductions.
pub fn cases() -> Vec<OpCase> {
    const NAN: f32 = f32::NAN;
    const INF: f32 = f32::INFINITY;
    let f = |s: &[usize]| TensorDesc::f32(s);
    // An index is right or wrong.
    let exact = Tolerance::new(0.0, 0.0);
    let named = |mut c: OpCase, what: &str| {
        c.label = format!("{} ({what})", c.label);
        c
    };
    let mut cases = Vec::new();
    for allow_subgroups in [true, false] {
        let op = ArgMax { allow_subgroups };
        let case = |shape: &[usize], dist: Dist, what: &str| {
            named(OpCase::new(op, vec![f(shape)], exact).dist(dist), what)
        };
        let uniform = Dist::uniform(-10.0, 10.0);
        for shape in [
            &[5][..],
            &[1, 4],
            &[3, 33],
            &[8, 256],
            &[2, 3, 101],
            &[1, 4099],
            &[1, 50_000],
            &[3, 50_001],
            &[8, 49_152],
        ] {
            cases.push(case(shape, uniform, "uniform"));
        }
        // Integers in [-4, 4): the max, 3, appears about n/8 times a row.
        let ties = Dist::uniform(-4.0, 4.0).step(1.0);
        for shape in [&[8, 16][..], &[3, 997], &[3, 50_000]] {
            cases.push(case(shape, ties, "ties"));
        }
        let equal = Dist::uniform(2.5, 2.5);
        cases.push(case(&[3, 1001], equal, "all equal"));
        cases.push(case(&[1, 4096], equal, "all equal"));
        // Close together, so the max is a near tie; and huge magnitudes.
        cases.push(case(&[3, 5003], Dist::uniform(-1000.0, -999.0), "negative"));
        cases.push(case(&[8, 300], Dist::uniform(-3e38, -1e38), "negative"));
        let neg_inf: &[(f32, f32)] = &[(-INF, 1.0)];
        cases.push(case(&[3, 1000], uniform.specials(neg_inf), "all -inf"));
        cases.push(case(
            &[8, 37],
            Dist::uniform(-5.0, -1.0).specials(&[(-INF, 0.9)]),
            "mostly -inf",
        ));
        cases.push(case(
            &[8, 4000],
            uniform.specials(&[(NAN, 0.3)]),
            "some NaN",
        ));
        // 0.99^64: about half the rows are all NaN, the rest hold a few numbers.
        cases.push(case(
            &[8, 64],
            uniform.specials(&[(NAN, 0.99)]),
            "mostly NaN",
        ));
        cases.push(case(
            &[3, 50_000],
            uniform.specials(&[(NAN, 1.0)]),
            "all NaN",
        ));
        cases.push(case(&[3, 7], uniform.specials(&[(NAN, 1.0)]), "all NaN"));
        cases.push(case(
            &[8, 37],
            uniform.specials(&[(NAN, 0.5), (-INF, 0.5)]),
            "NaN and -inf",
        ));
        cases.push(case(
            &[8, 10_000],
            uniform.specials(&[(INF, 0.001), (NAN, 0.01), (-INF, 0.01)]),
            "+inf, NaN, -inf",
        ));
        // -0 and +0 are equal: the first of either wins.
        cases.push(case(
            &[8, 64],
            Dist::uniform(-2.0, -1.0).specials(&[(-0.0, 0.1), (0.0, 0.1)]),
            "-0 and +0",
        ));
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference on `rows` of `n` values, as I32 ids.
    fn run(n: usize, values: Vec<f32>) -> Vec<i32> {
        let x = CpuTensor::from_f32([values.len() / n, n], values).unwrap();
        let out = ArgMax::default().output(&[x.desc().clone()]).unwrap();
        let mut got = CpuTensor::zeros(&out).unwrap();
        ArgMax::default().cpu(&[&x], &mut got).unwrap();
        got.to_i32().unwrap()
    }

    #[test]
    fn ties_go_to_the_lowest_index() {
        assert_eq!(argmax_row(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax_row(&[5.0; 9]), 0);
        assert_eq!(argmax_row(&[-1.0, -0.5, -0.5]), 1);
        // -0 == +0: the first zero, whatever its sign.
        assert_eq!(argmax_row(&[-1.0, -0.0, 0.0]), 1);
        assert_eq!(argmax_row(&[-1.0, 0.0, -0.0]), 1);
        assert_eq!(run(4, vec![1.0, 3.0, 3.0, 2.0, 7.0, 7.0, 7.0, 7.0]), [1, 0]);
    }

    #[test]
    fn nan_is_never_the_max_and_infinities_are_values() {
        let nan = f32::NAN;
        let inf = f32::INFINITY;
        assert_eq!(argmax_row(&[nan, 1.0, nan, 1.0]), 1);
        assert_eq!(argmax_row(&[nan, nan, nan]), 0);
        assert_eq!(argmax_row(&[-inf, -inf]), 0);
        assert_eq!(argmax_row(&[nan, -inf, -inf]), 1);
        assert_eq!(argmax_row(&[1.0, inf, nan, inf]), 1);
        assert_eq!(argmax_row(&[f32::MIN, -inf]), 0);
    }

    /// The kernel's u32 key (argmax.wgsl), mirrored.
    fn key(v: f32) -> u32 {
        let b = v.to_bits();
        let mag = b & 0x7fff_ffff;
        if mag > 0x7f80_0000 {
            0
        } else if mag == 0 {
            0x8000_0000
        } else if b != mag {
            !b
        } else {
            b | 0x8000_0000
        }
    }

    /// The kernel's search on the CPU: largest key, lowest index, NaN rows 0.
    #[test]
    fn the_kernels_integer_keys_give_the_reference_answer() {
        let specials = [
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            f32::MIN,
            f32::MAX,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-45,
            -1e-45,
            1.0,
            -1.0,
        ];
        for a in specials {
            for b in specials {
                let (ka, kb) = (key(a), key(b));
                if a.is_nan() || b.is_nan() {
                    assert!(!a.is_nan() || ka == 0, "{a}");
                    assert!(!b.is_nan() || kb == 0, "{b}");
                } else {
                    assert_eq!(ka.cmp(&kb), a.partial_cmp(&b).unwrap(), "{a} vs {b}");
                    assert!(ka > 0);
                }
            }
        }
        let by_key = |row: &[f32]| {
            let best = row.iter().map(|&v| key(v)).max().unwrap_or(0);
            let i = row.iter().position(|&v| best > 0 && key(v) == best);
            i.unwrap_or(0) as u32
        };
        let mut rows: Vec<Vec<f32>> = Vec::new();
        for a in specials {
            for b in specials {
                for c in specials {
                    rows.push(vec![a, b, c]);
                }
            }
        }
        for row in rows {
            assert_eq!(by_key(&row), argmax_row(&row), "{row:?}");
        }
    }

    #[test]
    fn output_drops_the_last_dimension() {
        let out = |s: &[usize]| ArgMax::default().output(&[TensorDesc::f32(s)]).unwrap();
        assert_eq!(out(&[7]), TensorDesc::new(DType::I32, [1]));
        assert_eq!(out(&[2, 3, 5]), TensorDesc::new(DType::I32, [2, 3]));
        assert_eq!(out(&[1, 152_064]), TensorDesc::new(DType::I32, [1]));
    }

    #[test]
    fn rejects_other_dtypes_empty_rows_and_scalars() {
        let op = ArgMax::default();
        let err = op.output(&[TensorDesc::new(DType::F16, [2, 8])]);
        assert!(matches!(
            err,
            Err(OpError::DType {
                op: "argmax",
                dtype: DType::F16,
                ..
            })
        ));
        for shape in [&[3, 0][..], &[0], &[0, 5], &[]] {
            let err = op.output(&[TensorDesc::f32(shape)]);
            assert!(
                matches!(err, Err(OpError::Shape { op: "argmax", .. })),
                "{shape:?}: {err:?}"
            );
        }
        let two = [TensorDesc::f32([4]), TensorDesc::f32([4])];
        assert!(matches!(op.output(&two), Err(OpError::Arity { .. })));
    }

    #[test]
    fn workgroups_fit_the_row_and_the_device() {
        let caps = Caps::baseline();
        assert_eq!(workgroup_size(&caps, 1), MIN_WG);
        assert_eq!(workgroup_size(&caps, 1000), 256);
        let big = Caps {
            max_invocations_per_workgroup: 1024,
            ..Caps::baseline()
        };
        assert_eq!(workgroup_size(&big, 152_064 / 4), 1024);
        let odd = Caps {
            max_invocations_per_workgroup: 48,
            ..Caps::baseline()
        };
        assert_eq!(workgroup_size(&odd, 1000), 32);
    }
}
