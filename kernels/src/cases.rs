//! Op-test cases: each kernel module lists the shapes it must get right,
//! and the engine's harness runs every case on every device against the CPU
//! reference with fresh random inputs.

use std::sync::Arc;

use crate::op::Op;
use crate::tensor::TensorDesc;

/// How far a device's result may stray from the CPU reference: an element
/// passes when `|got - want| <= abs + rel * |want|`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    pub abs: f32,
    pub rel: f32,
}

impl Tolerance {
    pub const fn new(abs: f32, rel: f32) -> Tolerance {
        Tolerance { abs, rel }
    }
}

/// The distribution random inputs are drawn from: uniform in `[lo, hi)`
/// (just `lo` when `hi <= lo`), optionally rounded down to a multiple of
/// `step` so that equal values (ties) are common, and each value replaced
/// with probability `p` by a `(value, p)` of `specials`: what no range
/// yields (NaN, ±inf).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dist {
    pub lo: f32,
    pub hi: f32,
    /// 0 for no rounding.
    pub step: f32,
    pub specials: &'static [(f32, f32)],
}

impl Dist {
    pub const fn uniform(lo: f32, hi: f32) -> Dist {
        Dist {
            lo,
            hi,
            step: 0.0,
            specials: &[],
        }
    }

    /// Values rounded down to a multiple of `step`.
    pub const fn step(mut self, step: f32) -> Dist {
        self.step = step;
        self
    }

    /// Each value replaced by `value` with probability `p`, for each
    /// `(value, p)` in turn (the `p`s should sum to at most 1).
    pub const fn specials(mut self, specials: &'static [(f32, f32)]) -> Dist {
        self.specials = specials;
        self
    }

    /// The input value, from `v` drawn uniformly in `[lo, hi)` (or `lo`)
    /// and an independent `pick` uniform in `[0, 1)` that chooses a special.
    pub fn value(&self, v: f32, pick: f32) -> f32 {
        let mut acc = 0.0;
        for &(special, p) in self.specials {
            acc += p;
            if pick < acc {
                return special;
            }
        }
        if self.step > 0.0 {
            (v / self.step).floor() * self.step
        } else {
            v
        }
    }
}

/// One op applied to inputs of given shapes and dtypes.
#[derive(Clone, Debug)]
pub struct OpCase {
    /// Human-readable: op name plus shapes, e.g. `"matmul 17x33x9 f16"`.
    pub label: String,
    pub op: Arc<dyn Op>,
    pub inputs: Vec<TensorDesc>,
    pub dist: Dist,
    /// Where I32 inputs (positions, lengths) are drawn from: element `i` of
    /// each I32 input uniformly from `ints[i % ints.len()]`, each `[lo, hi)`.
    /// They must be valid for the op, unlike random floats; cycling lets a
    /// case give each column of a `[R, 2]` input, or each element, its own
    /// range.
    pub ints: Vec<(i32, i32)>,
    /// `(input, fraction)`: about that fraction of the input's values is
    /// exactly 0 (masks, scales of an adapter that some rows do not use).
    pub zeros: Vec<(usize, f32)>,
    pub tolerance: Tolerance,
}

impl OpCase {
    pub fn new(op: impl Op + 'static, inputs: Vec<TensorDesc>, tolerance: Tolerance) -> OpCase {
        let shapes: Vec<String> = inputs.iter().map(|d| format!("{d:?}")).collect();
        let op: Arc<dyn Op> = Arc::new(op);
        OpCase {
            label: format!("{:?} on {}", op, shapes.join(", ")),
            op,
            inputs,
            dist: Dist::uniform(-1.0, 1.0),
            ints: vec![(0, 1)],
            zeros: Vec::new(),
            tolerance,
        }
    }

    pub fn dist(mut self, dist: Dist) -> OpCase {
        self.dist = dist;
        self
    }

    /// Draws I32 inputs uniformly from `[lo, hi)`.
    pub fn ints(self, lo: i32, hi: i32) -> OpCase {
        self.int_ranges(vec![(lo, hi)])
    }

    /// Draws element `i` of each I32 input from `ranges[i % ranges.len()]`.
    pub fn int_ranges(mut self, ranges: Vec<(i32, i32)>) -> OpCase {
        assert!(
            !ranges.is_empty() && ranges.iter().all(|&(lo, hi)| lo < hi),
            "{}: an empty int range in {ranges:?}",
            self.label
        );
        self.ints = ranges;
        self
    }

    /// Sets about `fraction` of input `input`'s values to exactly 0.
    pub fn zeros(mut self, input: usize, fraction: f32) -> OpCase {
        self.zeros.push((input, fraction));
        self
    }
}
