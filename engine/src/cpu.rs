//! The CPU executor: runs each op's plain reference in graph order. It is
//! both the fallback device and the spec the GPU is checked against.

use std::sync::Arc;
use std::time::Instant;

use kiln_kernels::CpuTensor;

use crate::error::EngineError;
use crate::executor::{match_feeds, Executor, Feed, OpTime, Plan, Timing};
use crate::graph::{Graph, Liveness, NodeKind};
use crate::tensor::Storage;

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuExecutor;

impl CpuExecutor {
    pub fn new() -> CpuExecutor {
        CpuExecutor
    }
}

impl Executor for CpuExecutor {
    fn device_name(&self) -> String {
        format!("cpu (rayon, {} threads)", rayon::current_num_threads())
    }

    fn compile(&self, graph: &Graph) -> Result<Box<dyn Plan>, EngineError> {
        let liveness = graph.liveness()?;
        Ok(Box::new(CpuPlan {
            graph: graph.clone(),
            liveness,
        }))
    }
}

struct CpuPlan {
    graph: Graph,
    liveness: Liveness,
}

impl CpuPlan {
    /// Evaluates the graph. With `keep_all`, every node's value is kept and
    /// returned (the debug mode compares them with the GPU's).
    fn evaluate(
        &self,
        feeds: &[Feed<'_>],
        keep_all: bool,
    ) -> Result<Vec<Option<Arc<CpuTensor>>>, EngineError> {
        evaluate(&self.graph, &self.liveness, feeds, keep_all)
    }
}

pub(crate) fn evaluate(
    graph: &Graph,
    liveness: &Liveness,
    feeds: &[Feed<'_>],
    keep_all: bool,
) -> Result<Vec<Option<Arc<CpuTensor>>>, EngineError> {
    let fed = match_feeds(graph, feeds)?;
    let mut values: Vec<Option<Arc<CpuTensor>>> = vec![None; graph.nodes().len()];
    for (i, node) in graph.nodes().iter().enumerate() {
        if !liveness.live[i] {
            continue;
        }
        let value = match &node.kind {
            NodeKind::Input => {
                let t = fed[i].ok_or_else(|| EngineError::MissingFeed {
                    node: node.name.clone(),
                })?;
                Arc::new(t.clone())
            }
            NodeKind::Constant(t) => t.clone(),
            NodeKind::Resident(t) => Arc::new(t.download()?),
            NodeKind::Reshape => {
                let src = values[node.inputs[0].index()]
                    .as_deref()
                    .ok_or(EngineError::UnknownTensor(i))?;
                Arc::new(src.clone().reshape(node.desc.shape.clone())?)
            }
            NodeKind::Op(op) => {
                let inputs: Vec<&CpuTensor> = node
                    .inputs
                    .iter()
                    .map(|t| {
                        values[t.index()]
                            .as_deref()
                            .ok_or(EngineError::UnknownTensor(t.index()))
                    })
                    .collect::<Result<_, _>>()?;
                // An in-place write starts from the target's current value.
                let mut out = match node.target.map(|t| values[t.index()].as_deref()) {
                    Some(Some(current)) => current.clone(),
                    Some(None) => return Err(EngineError::UnknownTensor(i)),
                    None => CpuTensor::zeros(&node.desc)?,
                };
                op.cpu(&inputs, &mut out)
                    .map_err(|source| EngineError::Op {
                        node: node.name.clone(),
                        source,
                    })?;
                if let Some(t) = node.target {
                    store_resident(graph, t.index(), &out)?;
                }
                Arc::new(out)
            }
        };
        values[i] = Some(value);
        if !keep_all {
            for j in liveness.values_released_after(graph, i) {
                values[j] = None;
            }
        }
    }
    Ok(values)
}

/// Writes `value` back into the resident tensor of node `target`.
fn store_resident(graph: &Graph, target: usize, value: &CpuTensor) -> Result<(), EngineError> {
    let node = &graph.nodes()[target];
    match &node.kind {
        NodeKind::Resident(t) => match t.storage() {
            Storage::Cpu(cell) => {
                *cell
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = value.clone();
                Ok(())
            }
            Storage::Gpu { .. } => Err(EngineError::Device {
                device: "cpu".into(),
                message: format!(
                    "the CPU executor cannot write into `{}`, which lives on a GPU",
                    node.name
                ),
            }),
        },
        _ => Err(EngineError::NotResident {
            node: node.name.clone(),
            target: node.name.clone(),
        }),
    }
}

impl Plan for CpuPlan {
    fn run(&mut self, feeds: &[Feed<'_>]) -> Result<Vec<CpuTensor>, EngineError> {
        let mut values = self.evaluate(feeds, false)?;
        self.graph
            .outputs()
            .iter()
            .map(|o| {
                let v = values[o.index()]
                    .take()
                    .ok_or(EngineError::UnknownTensor(o.index()))?;
                Ok(Arc::try_unwrap(v).unwrap_or_else(|shared| (*shared).clone()))
            })
            .collect()
    }

    fn time(&mut self, feeds: &[Feed<'_>], iters: u32) -> Result<Timing, EngineError> {
        let iters = iters.max(1);
        let start = Instant::now();
        for _ in 0..iters {
            self.evaluate(feeds, false)?;
        }
        let wall_s = start.elapsed().as_secs_f64() / f64::from(iters);
        Ok(Timing {
            device_s: None,
            wall_s,
        })
    }

    fn profile(&mut self, _feeds: &[Feed<'_>]) -> Result<Vec<OpTime>, EngineError> {
        Err(EngineError::Device {
            device: "cpu".into(),
            message: "per-op profiles need GPU timestamps".into(),
        })
    }
}
