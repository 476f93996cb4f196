//! Debug mode: run a graph on the GPU one dispatch at a time and compare
//! every node with the CPU executor, naming the first node that differs.

use std::borrow::Cow;

use kiln_kernels::cases::Tolerance;
use kiln_kernels::CpuTensor;

use crate::cpu;
use crate::error::EngineError;
use crate::executor::Feed;
use crate::gpu::GpuExecutor;
use crate::graph::Graph;

/// The first node whose GPU value strays from the CPU reference.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    pub node: String,
    pub op: String,
    /// Flat index of the worst element, and the two values there.
    pub index: usize,
    pub gpu: f32,
    pub cpu: f32,
    pub max_abs_diff: f32,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node `{}` ({}) differs first: at [{}] gpu {} vs cpu {} (max |diff| {})",
            self.node, self.op, self.index, self.gpu, self.cpu, self.max_abs_diff
        )
    }
}

/// Worst element of `got` against `want` under `tol`, if any is out of it.
pub fn first_violation(
    got: &[f32],
    want: &[f32],
    tol: Tolerance,
) -> Option<(usize, f32, f32, f32)> {
    let mut worst: Option<(usize, f32, f32, f32)> = None;
    let mut max_diff = 0.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let diff = (g - w).abs();
        // NaN differences are failures unless both sides are NaN.
        let within = diff <= tol.abs + tol.rel * w.abs();
        let bad = !(within || (g.is_nan() && w.is_nan()));
        max_diff = max_diff.max(if diff.is_nan() { f32::INFINITY } else { diff });
        if bad && worst.is_none_or(|(_, _, _, d)| diff > d || diff.is_nan()) {
            worst = Some((i, g, w, diff));
        }
    }
    if got.len() != want.len() {
        return Some((got.len().min(want.len()), f32::NAN, f32::NAN, f32::INFINITY));
    }
    worst.map(|(i, g, w, _)| (i, g, w, max_diff))
}

/// A node's values as f32 for comparing: float outputs as they are, I32
/// ones (token ids from argmax, positions) converted, exactly below 2^24.
fn comparable(t: &CpuTensor) -> Result<Cow<'_, [f32]>, EngineError> {
    match t.to_i32() {
        Some(ids) => Ok(Cow::Owned(ids.into_iter().map(|i| i as f32).collect())),
        None => Ok(t.to_f32()?),
    }
}

/// Runs `graph` op by op on the GPU and returns the first node whose output
/// differs from the CPU executor's by more than `tol`.
pub fn compare_with_cpu(
    gpu: &GpuExecutor,
    graph: &Graph,
    feeds: &[Feed<'_>],
    tol: Tolerance,
) -> Result<Option<Mismatch>, EngineError> {
    let liveness = graph.liveness()?;
    let reference = cpu::evaluate(graph, &liveness, feeds, true)?;
    let mut plan = gpu.compile_plan(graph, false)?;
    let mut found = None;
    plan.run_step_by_step(feeds, |i, value| {
        let node = &graph.nodes()[i];
        let Some(want) = reference[i].as_deref() else {
            return Ok(true);
        };
        let got = comparable(&value)?;
        let want = comparable(want)?;
        if let Some((index, g, c, max_abs_diff)) = first_violation(&got, &want, tol) {
            let op = match &node.kind {
                crate::graph::NodeKind::Op(op) => op.name().to_string(),
                _ => "input".into(),
            };
            found = Some(Mismatch {
                node: node.name.clone(),
                op,
                index,
                gpu: g,
                cpu: c,
                max_abs_diff,
            });
            return Ok(false);
        }
        Ok(true)
    })?;
    Ok(found)
}
