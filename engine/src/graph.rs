//! The graph models build: inputs, constants and ops, appended in order so
//! the node list is already topologically sorted.

use std::fmt;
use std::sync::Arc;

use kiln_kernels::{CpuTensor, Op, TensorDesc};

use crate::error::EngineError;
use crate::tensor::DeviceTensor;

/// A handle to one node's output.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub(crate) usize);

impl TensorId {
    pub fn index(self) -> usize {
        self.0
    }
}

impl fmt::Debug for TensorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

#[derive(Clone, Debug)]
pub enum NodeKind {
    /// Fed anew on every run.
    Input,
    /// Uploaded once when the plan is compiled (weights).
    Constant(Arc<CpuTensor>),
    /// Already on a device, shared across plans (weights, caches).
    Resident(DeviceTensor),
    /// The input's storage seen with another shape: no copy, no dispatch.
    Reshape,
    Op(Arc<dyn Op>),
}

#[derive(Clone, Debug)]
pub struct Node {
    /// Unique, dumpable name, e.g. `blk.3.attn_norm`.
    pub name: String,
    pub kind: NodeKind,
    pub inputs: Vec<TensorId>,
    pub desc: TensorDesc,
    /// For ops that write into a resident tensor in place (KV-cache
    /// appends): that resident node. The op's output *is* its storage, and
    /// elements the op does not write keep their values across runs.
    pub target: Option<TensorId>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    outputs: Vec<TensorId>,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    pub fn input(&mut self, name: impl Into<String>, desc: TensorDesc) -> TensorId {
        self.push(name.into(), NodeKind::Input, Vec::new(), desc)
    }

    pub fn constant(
        &mut self,
        name: impl Into<String>,
        tensor: impl Into<Arc<CpuTensor>>,
    ) -> TensorId {
        let tensor = tensor.into();
        let desc = tensor.desc().clone();
        self.push(name.into(), NodeKind::Constant(tensor), Vec::new(), desc)
    }

    /// A tensor already uploaded with [`crate::Device::upload`]: plans bind
    /// its storage instead of copying it.
    pub fn resident(&mut self, name: impl Into<String>, tensor: &DeviceTensor) -> TensorId {
        self.push(
            name.into(),
            NodeKind::Resident(tensor.clone()),
            Vec::new(),
            tensor.desc().clone(),
        )
    }

    /// `t` with a new shape of the same element count, sharing its storage.
    pub fn reshape(
        &mut self,
        t: TensorId,
        shape: impl Into<Vec<usize>>,
    ) -> Result<TensorId, EngineError> {
        let from = self.try_desc(t)?.clone();
        let to = TensorDesc::new(from.dtype, shape);
        let rows_whole = to
            .shape
            .last()
            .is_none_or(|&c| c.is_multiple_of(from.dtype.block_size()));
        if to.numel() != from.numel() || !rows_whole {
            return Err(EngineError::Reshape {
                node: self.nodes[t.0].name.clone(),
                from,
                to,
            });
        }
        let name = format!("{}.reshape", self.nodes[t.0].name);
        Ok(self.push(name, NodeKind::Reshape, vec![t], to))
    }

    /// A graph of one op over fresh inputs `in0, in1, ...` of `inputs`'
    /// descs, its result `out` the only output; returns the input ids in
    /// order, for feeding (op tests, kernel benchmarks).
    pub fn single_op(
        op: Arc<dyn Op>,
        inputs: &[TensorDesc],
    ) -> Result<(Graph, Vec<TensorId>), EngineError> {
        let mut g = Graph::new();
        let ids: Vec<TensorId> = inputs
            .iter()
            .enumerate()
            .map(|(i, d)| g.input(format!("in{i}"), d.clone()))
            .collect();
        let out = g.apply("out", op, &ids)?;
        g.output(out);
        Ok((g, ids))
    }

    /// Applies `op` to `inputs`, checking shapes now so a bad model fails at
    /// build time with the node named.
    pub fn op(
        &mut self,
        name: impl Into<String>,
        op: impl Op + 'static,
        inputs: &[TensorId],
    ) -> Result<TensorId, EngineError> {
        self.apply(name, Arc::new(op), inputs)
    }

    pub fn apply(
        &mut self,
        name: impl Into<String>,
        op: Arc<dyn Op>,
        inputs: &[TensorId],
    ) -> Result<TensorId, EngineError> {
        let name = name.into();
        let descs = inputs
            .iter()
            .map(|&t| self.try_desc(t).cloned())
            .collect::<Result<Vec<_>, _>>()?;
        let desc = op.output(&descs).map_err(|source| EngineError::Op {
            node: name.clone(),
            source,
        })?;
        Ok(self.push(name, NodeKind::Op(op), inputs.to_vec(), desc))
    }

    /// Applies `op` writing in place into `target`, a [`Graph::resident`]
    /// node with exactly the op's output dtype and shape. Later nodes that
    /// read the returned id see the write; the resident keeps it for the
    /// next run and for other plans. Always runs, even if nothing reads it.
    pub fn write_into(
        &mut self,
        name: impl Into<String>,
        op: impl Op + 'static,
        inputs: &[TensorId],
        target: TensorId,
    ) -> Result<TensorId, EngineError> {
        let name = name.into();
        let node = self
            .nodes
            .get(target.0)
            .ok_or(EngineError::UnknownTensor(target.0))?;
        if !matches!(node.kind, NodeKind::Resident(_)) {
            return Err(EngineError::NotResident {
                node: name,
                target: node.name.clone(),
            });
        }
        let target_desc = node.desc.clone();
        let id = self.op(name.clone(), op, inputs)?;
        if self.nodes[id.0].desc != target_desc {
            return Err(EngineError::FeedMismatch {
                node: name,
                expected: target_desc,
                got: self.nodes[id.0].desc.clone(),
            });
        }
        self.nodes[id.0].target = Some(target);
        Ok(id)
    }

    /// Marks a tensor as a result of the graph; runs return outputs in the
    /// order they were marked.
    pub fn output(&mut self, t: TensorId) {
        self.outputs.push(t);
    }

    pub fn desc(&self, t: TensorId) -> &TensorDesc {
        &self.nodes[t.0].desc
    }

    pub fn try_desc(&self, t: TensorId) -> Result<&TensorDesc, EngineError> {
        self.nodes
            .get(t.0)
            .map(|n| &n.desc)
            .ok_or(EngineError::UnknownTensor(t.0))
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, t: TensorId) -> &Node {
        &self.nodes[t.0]
    }

    pub fn outputs(&self) -> &[TensorId] {
        &self.outputs
    }

    /// Ids of every node in order.
    pub fn ids(&self) -> impl Iterator<Item = TensorId> {
        (0..self.nodes.len()).map(TensorId)
    }

    fn push(
        &mut self,
        name: String,
        kind: NodeKind,
        inputs: Vec<TensorId>,
        desc: TensorDesc,
    ) -> TensorId {
        self.nodes.push(Node {
            name,
            kind,
            inputs,
            desc,
            target: None,
        });
        TensorId(self.nodes.len() - 1)
    }

    /// Which nodes the outputs depend on, which storage each node uses, and
    /// when that storage can be released.
    pub(crate) fn liveness(&self) -> Result<Liveness, EngineError> {
        if self.outputs.is_empty() {
            return Err(EngineError::NoOutputs);
        }
        let n = self.nodes.len();
        let mut live = vec![false; n];
        for &o in &self.outputs {
            *live.get_mut(o.0).ok_or(EngineError::UnknownTensor(o.0))? = true;
        }
        // In-place writes have effects beyond the outputs: always run them.
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(t) = node.target {
                live[i] = true;
                live[t.0] = true;
            }
        }
        for i in (0..n).rev() {
            if live[i] {
                for t in &self.nodes[i].inputs {
                    live[t.0] = true;
                }
            }
        }
        // Reshapes and in-place writes use another node's storage.
        let mut root: Vec<usize> = (0..n).collect();
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(t) = node.target {
                root[i] = root[t.0];
            } else if matches!(node.kind, NodeKind::Reshape) {
                root[i] = root[node.inputs[0].0];
            }
        }
        let mut last_use: Vec<Option<usize>> = vec![None; n];
        let mut node_last_use: Vec<Option<usize>> = vec![None; n];
        for i in (0..n).filter(|&i| live[i]) {
            for t in &self.nodes[i].inputs {
                last_use[root[t.0]] = Some(i);
                node_last_use[t.0] = Some(i);
            }
            // A view keeps its root alive as long as the view is read.
            if root[i] != i && last_use[root[i]].is_some() {
                last_use[root[i]] = Some(i);
            }
        }
        let mut is_output = vec![false; n];
        for &o in &self.outputs {
            is_output[root[o.0]] = true;
            last_use[root[o.0]] = None;
            node_last_use[o.0] = None;
        }
        Ok(Liveness {
            live,
            root,
            last_use,
            node_last_use,
            is_output,
        })
    }
}

pub(crate) struct Liveness {
    pub live: Vec<bool>,
    /// The node whose storage each node uses (itself, unless a view or an
    /// in-place write).
    pub root: Vec<usize>,
    /// Last reader of each root's storage; `None` for outputs and unread.
    pub last_use: Vec<Option<usize>>,
    /// Last reader of each node's own value (the CPU executor frees by it).
    pub node_last_use: Vec<Option<usize>>,
    /// Roots whose storage holds an output.
    pub is_output: Vec<bool>,
}

impl Liveness {
    /// Roots whose storage may be released once node `i` has run.
    pub fn released_after<'g>(
        &'g self,
        graph: &'g Graph,
        i: usize,
    ) -> impl Iterator<Item = usize> + 'g {
        let mut seen = Vec::new();
        graph.nodes[i].inputs.iter().filter_map(move |t| {
            let r = self.root[t.0];
            if self.last_use[r] == Some(i) && !seen.contains(&r) {
                seen.push(r);
                Some(r)
            } else {
                None
            }
        })
    }

    /// Nodes whose values the CPU executor may drop once node `i` has run.
    pub fn values_released_after<'g>(
        &'g self,
        graph: &'g Graph,
        i: usize,
    ) -> impl Iterator<Item = usize> + 'g {
        graph.nodes[i]
            .inputs
            .iter()
            .map(|t| t.0)
            .filter(move |&j| self.node_last_use[j] == Some(i))
    }
}
