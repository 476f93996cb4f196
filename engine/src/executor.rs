//! The one trait both executors implement.

use kiln_kernels::CpuTensor;

use crate::error::EngineError;
use crate::graph::{Graph, TensorId};

/// A value for one graph input on one run.
pub type Feed<'a> = (TensorId, &'a CpuTensor);

/// Compiles graphs into plans. Models hold a `&dyn Executor` and never learn
/// which device is behind it.
pub trait Executor: Send + Sync {
    /// Names the device, e.g. `cpu (rayon, 16 threads)` or `NVIDIA H200 (Vulkan)`.
    fn device_name(&self) -> String;

    /// Compiles once: order, buffer lifetimes and reuse, pipelines and
    /// bind groups. The plan then runs many times.
    fn compile(&self, graph: &Graph) -> Result<Box<dyn Plan>, EngineError>;
}

/// A compiled graph, ready to run with new inputs.
pub trait Plan: Send {
    /// Feeds the inputs, runs every op once and returns the outputs in the
    /// order the graph marked them.
    fn run(&mut self, feeds: &[Feed<'_>]) -> Result<Vec<CpuTensor>, EngineError>;

    /// Runs the plan `iters` times back to back (one submission on the GPU)
    /// without reading outputs back, and reports the time per run.
    fn time(&mut self, feeds: &[Feed<'_>], iters: u32) -> Result<Timing, EngineError>;

    /// Runs once with every dispatch timed on its own (GPU timestamps
    /// around one pass per dispatch, so the sum exceeds a normal run by the
    /// passes' barriers). Executors without timestamps say so in an error.
    fn profile(&mut self, feeds: &[Feed<'_>]) -> Result<Vec<OpTime>, EngineError>;
}

/// One dispatch's device time in a profiled run.
#[derive(Clone, Debug, PartialEq)]
pub struct OpTime {
    /// The graph node, e.g. `blk.3.attn_q`.
    pub node: String,
    /// The kernel's cache key, e.g. `qmatmul.matvec.q4_0.mr1.sg`.
    pub kernel: String,
    pub seconds: f64,
}

/// Time per run of a plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// Seconds per run on the device clock (GPU timestamps) when available.
    pub device_s: Option<f64>,
    /// Seconds per run measured on the host around submit and wait.
    pub wall_s: f64,
}

impl Timing {
    /// The best figure available: device time, else wall time.
    pub fn seconds(&self) -> f64 {
        self.device_s.unwrap_or(self.wall_s)
    }
}

/// Checks that every input of `graph` is fed exactly once with its own desc,
/// returning the feed for each input node index.
pub(crate) fn match_feeds<'a>(
    graph: &Graph,
    feeds: &[Feed<'a>],
) -> Result<Vec<Option<&'a CpuTensor>>, EngineError> {
    let mut by_node: Vec<Option<&CpuTensor>> = vec![None; graph.nodes().len()];
    for &(id, tensor) in feeds {
        let node = graph
            .nodes()
            .get(id.index())
            .ok_or(EngineError::UnknownTensor(id.index()))?;
        if !matches!(node.kind, crate::graph::NodeKind::Input) {
            return Err(EngineError::NotAnInput(id.index()));
        }
        if tensor.desc() != &node.desc {
            return Err(EngineError::FeedMismatch {
                node: node.name.clone(),
                expected: node.desc.clone(),
                got: tensor.desc().clone(),
            });
        }
        by_node[id.index()] = Some(tensor);
    }
    Ok(by_node)
}
