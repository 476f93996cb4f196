//! Tensors that live on a device across runs and plans: weights uploaded
//! once and shared by the prefill and decode plans, later the KV cache.

use std::sync::{Arc, PoisonError, RwLock};

use kiln_kernels::{CpuTensor, TensorDesc};

use crate::device::Device;
use crate::error::EngineError;
use crate::gpu::readback::{mappable, read_buffers};
use crate::gpu::GpuContext;

/// A tensor resident on a device. Cloning shares the storage.
#[derive(Clone)]
pub struct DeviceTensor {
    desc: TensorDesc,
    storage: Storage,
}

#[derive(Clone)]
pub(crate) enum Storage {
    /// Host residents are written in place by the CPU executor.
    Cpu(Arc<RwLock<CpuTensor>>),
    Gpu {
        ctx: Arc<GpuContext>,
        buffer: Arc<wgpu::Buffer>,
        bytes: u64,
    },
}

impl std::fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match &self.storage {
            Storage::Cpu(_) => "cpu".to_string(),
            Storage::Gpu { ctx, .. } => ctx.name().to_string(),
        };
        write!(f, "DeviceTensor({:?} on {place})", self.desc)
    }
}

impl DeviceTensor {
    pub fn desc(&self) -> &TensorDesc {
        &self.desc
    }

    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Copies the tensor back to the host.
    pub fn download(&self) -> Result<CpuTensor, EngineError> {
        match &self.storage {
            Storage::Cpu(t) => Ok(t.read().unwrap_or_else(PoisonError::into_inner).clone()),
            Storage::Gpu { ctx, buffer, bytes } => {
                let staging = ctx.create_buffer(
                    "download",
                    mappable(*bytes),
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                )?;
                let mut encoder = ctx.device.create_command_encoder(&Default::default());
                encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, mappable(*bytes));
                ctx.queue.submit([encoder.finish()]);
                let data = read_buffers(ctx, &[(&staging, *bytes)])?.remove(0);
                Ok(CpuTensor::from_bytes(self.desc.clone(), data)?)
            }
        }
    }
}

impl Device {
    /// Puts `tensor` on this device, once; graphs reference it with
    /// [`crate::Graph::resident`] from any number of plans.
    pub fn upload(&self, tensor: &CpuTensor) -> Result<DeviceTensor, EngineError> {
        let desc = tensor.desc().clone();
        let storage = match self {
            Device::Cpu => Storage::Cpu(Arc::new(RwLock::new(tensor.clone()))),
            Device::Gpu(ctx) => {
                let bytes = crate::gpu::gpu_layout(tensor)?;
                let size = bytes.len() as u64;
                if mappable(size) > ctx.caps.max_storage_binding_bytes {
                    return Err(EngineError::TooLarge {
                        node: "upload".into(),
                        bytes: size,
                        limit: ctx.caps.max_storage_binding_bytes,
                        device: ctx.name().to_string(),
                    });
                }
                let buffer = ctx.create_buffer("resident", mappable(size), crate::gpu::STORAGE)?;
                crate::gpu::write_padded(&ctx.queue, &buffer, &bytes);
                Storage::Gpu {
                    ctx: ctx.clone(),
                    buffer: Arc::new(buffer),
                    bytes: size,
                }
            }
        };
        Ok(DeviceTensor { desc, storage })
    }
}
