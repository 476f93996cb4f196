//! A compiled GPU plan: buffers allocated with reuse, pipelines and bind
//! groups built once; each run writes the inputs, encodes every dispatch
//! into one compute pass and submits once.

use std::sync::Arc;
use std::time::Instant;

use kiln_kernels::{CpuTensor, TensorDesc};

use crate::error::EngineError;
use crate::executor::{match_feeds, Feed, OpTime, Plan, Timing};
use crate::graph::{Graph, NodeKind};
use crate::tensor::Storage;

use super::pool::Pool;
use super::readback::{mappable, read_buffers};
use super::{gpu_layout, write_padded, GpuContext, STORAGE};

/// One dispatch.
struct Step {
    node: usize,
    key: String,
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
}

struct Output {
    node: usize,
    desc: TensorDesc,
    bytes: u64,
    staging: wgpu::Buffer,
}

pub struct GpuPlan {
    ctx: Arc<GpuContext>,
    graph: Graph,
    /// Storage buffers; nodes point into this list, several nodes may share one.
    buffers: Vec<Arc<wgpu::Buffer>>,
    /// Buffer slot of each live node.
    node_slot: Vec<Option<usize>>,
    /// Exact bytes of each node's tensor.
    node_bytes: Vec<u64>,
    steps: Vec<Step>,
    outputs: Vec<Output>,
    /// Kept alive for the bind groups that point into it.
    _params: wgpu::Buffer,
    timer: Option<Timer>,
    /// The next run's commands, encoded while the last one executed: a
    /// decode step's ~360 dispatches cost ~0.7 ms of host time to encode,
    /// which this hides behind the GPU (the commands do not depend on the
    /// inputs, which are written to their buffers before each submit).
    prepared: Option<wgpu::CommandBuffer>,
}

struct Timer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    staging: wgpu::Buffer,
}

impl GpuPlan {
    pub(crate) fn new(
        ctx: Arc<GpuContext>,
        graph: &Graph,
        reuse_buffers: bool,
    ) -> Result<GpuPlan, EngineError> {
        let liveness = graph.liveness()?;
        let caps = &ctx.caps;
        let n = graph.nodes().len();
        let mut buffers: Vec<Arc<wgpu::Buffer>> = Vec::new();
        let mut capacity: Vec<u64> = Vec::new();
        let mut pooled: Vec<bool> = Vec::new();
        let mut node_slot: Vec<Option<usize>> = vec![None; n];
        let mut node_bytes = vec![0u64; n];
        let mut pool = Pool::default();
        let mut kernels = Vec::new();
        let mut params_bytes: Vec<u8> = Vec::new();
        let align = u64::from(caps.min_uniform_offset_alignment.max(16));

        for (i, node) in graph.nodes().iter().enumerate() {
            if !liveness.live[i] {
                continue;
            }
            let bytes = kiln_kernels::layout::gpu_bytes(&node.desc)
                .map(|b| b as u64)
                .ok_or_else(|| EngineError::TooLarge {
                    node: node.name.clone(),
                    bytes: u64::MAX,
                    limit: caps.max_storage_binding_bytes,
                    device: ctx.name().to_string(),
                })?;
            if mappable(bytes) > caps.max_storage_binding_bytes {
                return Err(EngineError::TooLarge {
                    node: node.name.clone(),
                    bytes,
                    limit: caps.max_storage_binding_bytes,
                    device: ctx.name().to_string(),
                });
            }
            node_bytes[i] = bytes;
            if let NodeKind::Resident(t) = &node.kind {
                match t.storage() {
                    Storage::Gpu {
                        ctx: owner, buffer, ..
                    } if Arc::ptr_eq(owner, &ctx) => {
                        buffers.push(buffer.clone());
                        capacity.push(mappable(bytes));
                        pooled.push(false);
                        node_slot[i] = Some(buffers.len() - 1);
                        continue;
                    }
                    _ => {
                        return Err(EngineError::Device {
                            device: ctx.name().to_string(),
                            message: format!(
                                "resident tensor `{}` lives on another device ({t:?})",
                                node.name
                            ),
                        })
                    }
                }
            }
            if matches!(node.kind, NodeKind::Reshape) || node.target.is_some() {
                node_slot[i] = node_slot[liveness.root[i]];
            }
            if matches!(node.kind, NodeKind::Reshape) {
                continue;
            }
            let reusable = reuse_buffers
                && matches!(node.kind, NodeKind::Op(_))
                && !liveness.is_output[i]
                && node.target.is_none();
            let slot = match node_slot[i].or_else(|| reusable.then(|| pool.take(bytes)).flatten()) {
                Some(slot) => slot,
                None => {
                    buffers.push(Arc::new(ctx.create_buffer(
                        &node.name,
                        mappable(bytes),
                        STORAGE,
                    )?));
                    capacity.push(mappable(bytes));
                    pooled.push(reusable);
                    buffers.len() - 1
                }
            };
            node_slot[i] = Some(slot);
            match &node.kind {
                NodeKind::Input | NodeKind::Resident(_) | NodeKind::Reshape => {}
                NodeKind::Constant(t) => write_padded(&ctx.queue, &buffers[slot], &gpu_layout(t)?),
                NodeKind::Op(op) => {
                    let descs: Vec<TensorDesc> =
                        node.inputs.iter().map(|t| graph.desc(*t).clone()).collect();
                    let kernel =
                        op.gpu(&descs, &node.desc, caps)
                            .map_err(|source| EngineError::Op {
                                node: node.name.clone(),
                                source,
                            })?;
                    let offset = (params_bytes.len() as u64).next_multiple_of(align);
                    params_bytes.resize(offset as usize, 0);
                    params_bytes.extend_from_slice(&kernel.params);
                    kernels.push((i, kernel, offset, op.trusted()));
                }
            }
            for j in liveness.released_after(graph, i) {
                if let Some(s) = node_slot[j] {
                    if pooled[s] {
                        pool.give(s, capacity[s]);
                    }
                }
            }
        }

        let params = ctx.create_buffer(
            "params",
            params_bytes.len().max(16) as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;
        write_padded(&ctx.queue, &params, &params_bytes);

        let mut steps = Vec::with_capacity(kernels.len());
        for (i, kernel, offset, trusted) in kernels {
            let node = &graph.nodes()[i];
            let pipeline = ctx.pipeline(&node.name, &kernel, trusted)?;
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &params,
                    offset,
                    size: wgpu::BufferSize::new(kernel.params.len().max(16) as u64),
                }),
            }];
            for (b, t) in node.inputs.iter().map(|t| t.index()).chain([i]).enumerate() {
                let slot = node_slot[t].ok_or(EngineError::UnknownTensor(t))?;
                entries.push(wgpu::BindGroupEntry {
                    binding: b as u32 + 1,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &buffers[slot],
                        offset: 0,
                        size: wgpu::BufferSize::new(mappable(node_bytes[t])),
                    }),
                });
            }
            let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&node.name),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            if let Some(e) = pollster::block_on(scope.pop()) {
                return Err(EngineError::ShaderCompile {
                    node: node.name.clone(),
                    key: kernel.key.clone(),
                    device: ctx.name().to_string(),
                    message: format!("bind group: {e}"),
                });
            }
            steps.push(Step {
                node: i,
                key: kernel.key.clone(),
                pipeline,
                bind_group,
                workgroups: kernel.workgroups,
            });
        }

        let mut outputs = Vec::new();
        for &o in graph.outputs() {
            let i = o.index();
            let staging = ctx.create_buffer(
                "readback",
                mappable(node_bytes[i]),
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )?;
            outputs.push(Output {
                node: i,
                desc: graph.desc(o).clone(),
                bytes: node_bytes[i],
                staging,
            });
        }

        let timer = ctx.has_timestamps().then(|| make_timer(&ctx)).transpose()?;
        ctx.take_uncaptured()?;
        Ok(GpuPlan {
            ctx,
            graph: graph.clone(),
            buffers,
            node_slot,
            node_bytes,
            steps,
            outputs,
            _params: params,
            timer,
            prepared: None,
        })
    }

    fn write_feeds(&self, feeds: &[Feed<'_>]) -> Result<(), EngineError> {
        let fed = match_feeds(&self.graph, feeds)?;
        for (i, node) in self.graph.nodes().iter().enumerate() {
            if let (NodeKind::Input, Some(slot)) = (&node.kind, self.node_slot[i]) {
                let t = fed[i].ok_or_else(|| EngineError::MissingFeed {
                    node: node.name.clone(),
                })?;
                write_padded(&self.ctx.queue, &self.buffers[slot], &gpu_layout(t)?);
            }
        }
        Ok(())
    }

    fn encode_steps(&self, pass: &mut wgpu::ComputePass<'_>, steps: &[Step]) {
        for step in steps {
            pass.set_pipeline(&step.pipeline);
            pass.set_bind_group(0, &step.bind_group, &[]);
            let [x, y, z] = step.workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
    }

    /// Runs one dispatch at a time, reading every node's output back after
    /// its dispatch: slow, for finding the first node that goes wrong.
    /// Calls `visit(node_index, value)` for each op node in order.
    pub fn run_step_by_step(
        &mut self,
        feeds: &[Feed<'_>],
        mut visit: impl FnMut(usize, CpuTensor) -> Result<bool, EngineError>,
    ) -> Result<(), EngineError> {
        self.write_feeds(feeds)?;
        for step in &self.steps {
            let bytes = self.node_bytes[step.node];
            let slot = self.node_slot[step.node].ok_or(EngineError::UnknownTensor(step.node))?;
            let staging = self.ctx.create_buffer(
                "debug readback",
                mappable(bytes),
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )?;
            let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                self.encode_steps(&mut pass, std::slice::from_ref(step));
            }
            encoder.copy_buffer_to_buffer(&self.buffers[slot], 0, &staging, 0, mappable(bytes));
            self.ctx.queue.submit([encoder.finish()]);
            let data = read_buffers(&self.ctx, &[(&staging, bytes)])?.remove(0);
            let desc = self.graph.nodes()[step.node].desc.clone();
            if !visit(step.node, CpuTensor::from_bytes(desc, data)?)? {
                break;
            }
        }
        Ok(())
    }

    /// Dispatches per run.
    pub fn dispatch_count(&self) -> usize {
        self.steps.len()
    }

    /// Distinct storage buffers the plan allocated (reuse makes this smaller
    /// than the node count).
    pub fn buffer_count(&self) -> usize {
        self.buffers.len()
    }
}

impl Plan for GpuPlan {
    fn run(&mut self, feeds: &[Feed<'_>]) -> Result<Vec<CpuTensor>, EngineError> {
        self.write_feeds(feeds)?;
        let commands = match self.prepared.take() {
            Some(c) => c,
            None => self.encode_run()?,
        };
        self.ctx.queue.submit([commands]);
        self.prepared = Some(self.encode_run()?);
        let staged: Vec<(&wgpu::Buffer, u64)> =
            self.outputs.iter().map(|o| (&o.staging, o.bytes)).collect();
        let data = read_buffers(&self.ctx, &staged)?;
        self.outputs
            .iter()
            .zip(data)
            .map(|(o, bytes)| {
                CpuTensor::from_bytes(o.desc.clone(), bytes).map_err(EngineError::from)
            })
            .collect()
    }

    fn time(&mut self, feeds: &[Feed<'_>], iters: u32) -> Result<Timing, EngineError> {
        let iters = iters.max(1);
        self.write_feeds(feeds)?;
        // Finish the uploads first so they are not timed.
        self.ctx.queue.submit([]);
        self.ctx.wait()?;
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        {
            let timestamp_writes = self
                .timer
                .as_ref()
                .map(|t| wgpu::ComputePassTimestampWrites {
                    query_set: &t.queries,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                });
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("timed"),
                timestamp_writes,
            });
            for _ in 0..iters {
                self.encode_steps(&mut pass, &self.steps);
            }
        }
        if let Some(t) = &self.timer {
            encoder.resolve_query_set(&t.queries, 0..2, &t.resolve, 0);
            encoder.copy_buffer_to_buffer(&t.resolve, 0, &t.staging, 0, 16);
        }
        let start = Instant::now();
        self.ctx.queue.submit([encoder.finish()]);
        let device_s = match &self.timer {
            Some(t) => {
                let raw = read_buffers(&self.ctx, &[(&t.staging, 16)])?.remove(0);
                let ticks: &[u64] = bytemuck::cast_slice(&raw);
                let period_ns = f64::from(self.ctx.queue.get_timestamp_period());
                Some(ticks[1].saturating_sub(ticks[0]) as f64 * period_ns * 1e-9 / f64::from(iters))
            }
            None => {
                self.ctx.wait()?;
                None
            }
        };
        let wall_s = start.elapsed().as_secs_f64() / f64::from(iters);
        Ok(Timing { device_s, wall_s })
    }

    fn profile(&mut self, feeds: &[Feed<'_>]) -> Result<Vec<OpTime>, EngineError> {
        self.profile_steps(feeds)
    }
}

impl GpuPlan {
    /// One run's commands: every dispatch in one pass, then the outputs
    /// copied to their readback buffers.
    fn encode_run(&self) -> Result<wgpu::CommandBuffer, EngineError> {
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("forward"),
                timestamp_writes: None,
            });
            self.encode_steps(&mut pass, &self.steps);
        }
        for out in &self.outputs {
            let slot = self.node_slot[out.node].ok_or(EngineError::UnknownTensor(out.node))?;
            encoder.copy_buffer_to_buffer(
                &self.buffers[slot],
                0,
                &out.staging,
                0,
                mappable(out.bytes),
            );
        }
        Ok(encoder.finish())
    }

    /// [`Plan::profile`]: one pass per dispatch with timestamps at its
    /// beginning and end, in one submission, at most `MAX_PROFILED` steps.
    fn profile_steps(&mut self, feeds: &[Feed<'_>]) -> Result<Vec<OpTime>, EngineError> {
        const MAX_PROFILED: usize = 2048;
        if !self.ctx.has_timestamps() {
            return Err(EngineError::Device {
                device: self.ctx.name().to_string(),
                message: "this adapter has no timestamp queries".into(),
            });
        }
        let steps = &self.steps[..self.steps.len().min(MAX_PROFILED)];
        let count = (2 * steps.len()).max(2) as u32;
        let bytes = u64::from(count) * 8;
        let queries = self.ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("kiln profile"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let resolve = self.ctx.create_buffer(
            "profile resolve",
            bytes,
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        )?;
        let staging = self.ctx.create_buffer(
            "profile readback",
            bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        self.write_feeds(feeds)?;
        let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
        for (i, step) in steps.iter().enumerate() {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("profiled"),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &queries,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            self.encode_steps(&mut pass, std::slice::from_ref(step));
        }
        encoder.resolve_query_set(&queries, 0..count, &resolve, 0);
        encoder.copy_buffer_to_buffer(&resolve, 0, &staging, 0, bytes);
        self.ctx.queue.submit([encoder.finish()]);
        let raw = read_buffers(&self.ctx, &[(&staging, bytes)])?.remove(0);
        let ticks: &[u64] = bytemuck::cast_slice(&raw);
        let period_s = f64::from(self.ctx.queue.get_timestamp_period()) * 1e-9;
        Ok(steps
            .iter()
            .enumerate()
            .map(|(i, step)| OpTime {
                node: self.graph.nodes()[step.node].name.clone(),
                kernel: step.key.clone(),
                seconds: ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period_s,
            })
            .collect())
    }
}

fn make_timer(ctx: &GpuContext) -> Result<Timer, EngineError> {
    let queries = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("kiln timer"),
        ty: wgpu::QueryType::Timestamp,
        count: 2,
    });
    let resolve = ctx.create_buffer(
        "timer resolve",
        16,
        wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
    )?;
    let staging = ctx.create_buffer(
        "timer readback",
        16,
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    )?;
    Ok(Timer {
        queries,
        resolve,
        staging,
    })
}
