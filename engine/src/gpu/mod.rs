//! The wgpu executor: one device and queue, a pipeline cache shared by all
//! plans, and errors turned into [`EngineError`]s instead of panics.

mod plan;
mod pool;
pub(crate) mod readback;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use std::borrow::Cow;

use kiln_kernels::{Caps, CpuTensor, GpuKernel};

use crate::device::{caps_of, wanted_features};
use crate::error::EngineError;
use crate::executor::{Executor, Plan};
use crate::graph::Graph;

pub use plan::GpuPlan;

pub(crate) const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

/// An opened GPU: device, queue, what it can do, and compiled pipelines.
pub struct GpuContext {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub features: wgpu::Features,
    pub caps: Caps,
    name: String,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    /// Errors wgpu reported outside any error scope (normally none); checked
    /// after each submission so they surface as `EngineError::Device`.
    uncaptured: Arc<Mutex<Vec<String>>>,
}

impl GpuContext {
    /// Opens `adapter` with its own limits and every feature kiln can use.
    pub fn new(adapter: wgpu::Adapter) -> Result<GpuContext, EngineError> {
        let info = adapter.get_info();
        let name = format!("{} ({:?})", info.name, info.backend);
        let features = adapter.features() & wanted_features();
        let limits = adapter.limits();
        let experimental_features =
            if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
                // SAFETY: cooperative matrices are an experimental wgpu feature;
                // kiln only uses them in kernels whose results the op tests check
                // against the CPU reference on the adapters that offer them.
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            };
        let desc = wgpu::DeviceDescriptor {
            label: Some("kiln"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features,
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
            EngineError::RequestDevice {
                device: name.clone(),
                message: e.to_string(),
            }
        })?;
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            tracing::error!("wgpu: {e}");
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(e.to_string());
        }));
        let caps = caps_of(&adapter, features, &limits);
        Ok(GpuContext {
            adapter,
            device,
            queue,
            features,
            caps,
            name,
            pipelines: Mutex::new(HashMap::new()),
            uncaptured,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn has_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// The pipeline for `kernel`, compiled on first use and cached by key.
    /// A shader that fails to compile is an error naming the node.
    /// `trusted` kernels (see `Op::trusted`) are compiled without runtime
    /// bounds checks.
    pub(crate) fn pipeline(
        &self,
        node: &str,
        kernel: &GpuKernel,
        trusted: bool,
    ) -> Result<Arc<wgpu::ComputePipeline>, EngineError> {
        let key = if trusted {
            format!("{}#trusted", kernel.key)
        } else {
            kernel.key.clone()
        };
        let mut cache = self
            .pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(&kernel.key),
            source: wgpu::ShaderSource::Wgsl(kernel.source.clone()),
        };
        let module = if trusted {
            // SAFETY: the op vouches (Op::trusted) that its op tests cover
            // every edge of its indexing, so no access goes out of bounds.
            unsafe {
                self.device
                    .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
            }
        } else {
            self.device.create_shader_module(desc)
        };
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&kernel.key),
                layout: None,
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    zero_initialize_workgroup_memory: false,
                    ..Default::default()
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(EngineError::ShaderCompile {
                node: node.to_string(),
                key: kernel.key.clone(),
                device: self.name.clone(),
                message: e.to_string(),
            });
        }
        let pipeline = Arc::new(pipeline);
        cache.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// A storage buffer, or an out-of-memory error naming what it was for.
    pub(crate) fn create_buffer(
        &self,
        what: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer, EngineError> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: size.max(16).next_multiple_of(16),
            usage,
            mapped_at_creation: false,
        });
        let invalid = pollster::block_on(validation.pop());
        let oom = pollster::block_on(scope.pop());
        if oom.is_some() || invalid.is_some() {
            return Err(EngineError::OutOfMemory {
                device: self.name.clone(),
                bytes: size,
                what: what.to_string(),
            });
        }
        Ok(buffer)
    }

    /// Waits for the queue and reports any error wgpu raised meanwhile.
    pub(crate) fn wait(&self) -> Result<(), EngineError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| EngineError::Device {
                device: self.name.clone(),
                message: e.to_string(),
            })?;
        self.take_uncaptured()
    }

    pub(crate) fn take_uncaptured(&self) -> Result<(), EngineError> {
        let mut errors = self
            .uncaptured
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if errors.is_empty() {
            return Ok(());
        }
        let message = errors.drain(..).collect::<Vec<_>>().join("; ");
        Err(EngineError::Device {
            device: self.name.clone(),
            message,
        })
    }
}

/// Runs graphs on one GPU.
#[derive(Clone)]
pub struct GpuExecutor {
    ctx: Arc<GpuContext>,
}

impl GpuExecutor {
    pub fn new(ctx: Arc<GpuContext>) -> GpuExecutor {
        GpuExecutor { ctx }
    }

    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Compiles without buffer reuse, so every node's output survives the
    /// run (the debug mode reads them all).
    pub fn compile_plan(&self, graph: &Graph, reuse_buffers: bool) -> Result<GpuPlan, EngineError> {
        GpuPlan::new(self.ctx.clone(), graph, reuse_buffers)
    }
}

impl Executor for GpuExecutor {
    fn device_name(&self) -> String {
        self.ctx.name.clone()
    }

    fn compile(&self, graph: &Graph) -> Result<Box<dyn Plan>, EngineError> {
        Ok(Box::new(self.compile_plan(graph, true)?))
    }
}

/// `write_buffer` wants a multiple of 4 bytes; pad the tail with zeros.
pub(crate) fn write_padded(queue: &wgpu::Queue, buffer: &wgpu::Buffer, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    if bytes.len().is_multiple_of(4) {
        queue.write_buffer(buffer, 0, bytes);
    } else {
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().next_multiple_of(4), 0);
        queue.write_buffer(buffer, 0, &padded);
    }
}

/// A host tensor's bytes in the layout GPU kernels read (quantized weights
/// may be repacked; see `kiln_kernels::layout`).
pub(crate) fn gpu_layout(t: &CpuTensor) -> Result<Cow<'_, [u8]>, EngineError> {
    match t.bytes() {
        Cow::Borrowed(b) => Ok(kiln_kernels::layout::to_gpu(t.desc(), b)?),
        Cow::Owned(b) => Ok(Cow::Owned(
            kiln_kernels::layout::to_gpu(t.desc(), &b)?.into_owned(),
        )),
    }
}
