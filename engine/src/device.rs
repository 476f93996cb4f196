//! Choosing a device: `gpu` (the best adapter), `cpu` (the rayon executor),
//! an adapter index, or a substring of an adapter's name — from `--device`
//! or `KILN_DEVICE`.

use std::sync::Arc;

use kiln_kernels::op::{CoopScalar, CoopShape};
use kiln_kernels::Caps;

use crate::cpu::CpuExecutor;
use crate::error::EngineError;
use crate::executor::Executor;
use crate::gpu::{GpuContext, GpuExecutor};

/// Features kiln uses when the adapter has them.
pub fn wanted_features() -> wgpu::Features {
    wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::SUBGROUP_BARRIER
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
        | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
        | wgpu::Features::IMMEDIATES
        | wgpu::Features::SHADER_INT64
        | wgpu::Features::PIPELINE_CACHE
}

/// Where graphs run.
#[derive(Clone)]
pub enum Device {
    Cpu,
    Gpu(Arc<GpuContext>),
}

impl Device {
    /// Opens the device named by `spec`: `gpu`, `cpu`, an adapter index as
    /// listed by `kiln devices`, or a case-insensitive substring of its name.
    pub fn open(spec: &str) -> Result<Device, EngineError> {
        let spec = spec.trim();
        if spec.eq_ignore_ascii_case("cpu") {
            return Ok(Device::Cpu);
        }
        let adapters = enumerate_adapters();
        let chosen = if spec.is_empty() || spec.eq_ignore_ascii_case("gpu") {
            best_adapter(&adapters)
        } else if let Ok(index) = spec.parse::<usize>() {
            adapters.get(index).cloned()
        } else {
            let needle = spec.to_lowercase();
            adapters
                .iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&needle))
                .cloned()
        };
        let adapter = chosen.ok_or_else(|| EngineError::NoAdapter {
            spec: spec.to_string(),
            available: describe_all(&adapters),
        })?;
        Ok(Device::Gpu(Arc::new(GpuContext::new(adapter)?)))
    }

    /// Opens the device named by `KILN_DEVICE`, or the best GPU when unset.
    pub fn from_env() -> Result<Device, EngineError> {
        Device::open(&std::env::var("KILN_DEVICE").unwrap_or_else(|_| "gpu".into()))
    }

    pub fn executor(&self) -> Box<dyn Executor> {
        match self {
            Device::Cpu => Box::new(CpuExecutor::new()),
            Device::Gpu(ctx) => Box::new(GpuExecutor::new(ctx.clone())),
        }
    }

    pub fn name(&self) -> String {
        self.executor().device_name()
    }
}

/// Every adapter wgpu finds on the primary backends (Vulkan, Metal, DX12);
/// `WGPU_BACKEND` overrides the set.
pub fn enumerate_adapters() -> Vec<wgpu::Adapter> {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    pollster::block_on(instance.enumerate_adapters(backends))
}

/// Discrete before integrated before virtual before software.
fn best_adapter(adapters: &[wgpu::Adapter]) -> Option<wgpu::Adapter> {
    let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    adapters.iter().min_by_key(|a| rank(a)).cloned()
}

fn describe_all(adapters: &[wgpu::Adapter]) -> String {
    if adapters.is_empty() {
        return "none".into();
    }
    adapters
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let info = a.get_info();
            format!("{i}: {} ({:?})", info.name, info.backend)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What kernels read from an adapter: features, limits and subgroup sizes.
pub fn caps_of(adapter: &wgpu::Adapter, features: wgpu::Features, limits: &wgpu::Limits) -> Caps {
    let info = adapter.get_info();
    let coop_matrix = if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
        adapter
            .cooperative_matrix_properties()
            .iter()
            .map(coop_shape)
            .collect()
    } else {
        Vec::new()
    };
    Caps {
        shader_f16: features.contains(wgpu::Features::SHADER_F16),
        subgroups: features.contains(wgpu::Features::SUBGROUP),
        subgroup_min_size: info.subgroup_min_size,
        subgroup_max_size: info.subgroup_max_size,
        coop_matrix,
        max_immediate_size: if features.contains(wgpu::Features::IMMEDIATES) {
            limits.max_immediate_size
        } else {
            0
        },
        max_workgroup_storage_bytes: limits.max_compute_workgroup_storage_size,
        max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        max_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
        max_storage_binding_bytes: limits.max_storage_buffer_binding_size,
        max_buffer_bytes: limits.max_buffer_size,
        min_uniform_offset_alignment: limits.min_uniform_buffer_offset_alignment,
    }
}

fn coop_scalar(t: wgpu::CooperativeScalarType) -> CoopScalar {
    match t {
        wgpu::CooperativeScalarType::F16 => CoopScalar::F16,
        wgpu::CooperativeScalarType::F32 => CoopScalar::F32,
        _ => CoopScalar::Other,
    }
}

fn coop_shape(p: &wgpu::CooperativeMatrixProperties) -> CoopShape {
    CoopShape {
        m: p.m_size,
        n: p.n_size,
        k: p.k_size,
        ab: coop_scalar(p.ab_type),
        cr: coop_scalar(p.cr_type),
    }
}

/// Everything `kiln devices` prints about one adapter.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    /// kiln's wanted features this adapter has, by name.
    pub features: Vec<String>,
    pub caps: Caps,
}

/// Describes every adapter, in `Device::open` index order.
pub fn adapter_reports() -> Vec<AdapterReport> {
    enumerate_adapters()
        .iter()
        .enumerate()
        .map(|(index, a)| {
            let info = a.get_info();
            let features = a.features() & wanted_features();
            AdapterReport {
                index,
                name: info.name.clone(),
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                driver: info.driver.clone(),
                driver_info: info.driver_info.clone(),
                features: features.iter_names().map(|(n, _)| n.to_string()).collect(),
                caps: caps_of(a, features, &a.limits()),
            }
        })
        .collect()
}
