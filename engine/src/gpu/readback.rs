//! Mapping staging buffers back to the host after a submission.

use std::sync::{Arc, Mutex, PoisonError};

use crate::error::EngineError;

use super::GpuContext;

/// `None` until the map callback runs, then its outcome.
type MapStatus = Option<Result<(), String>>;

/// Maps each `(buffer, bytes)` for reading, waits for the queue, and copies
/// the first `bytes` of each out. The buffers must have `MAP_READ` usage and
/// already hold the data (their copies submitted).
pub(crate) fn read_buffers(
    ctx: &GpuContext,
    buffers: &[(&wgpu::Buffer, u64)],
) -> Result<Vec<Vec<u8>>, EngineError> {
    let status: Arc<Mutex<Vec<MapStatus>>> = Arc::new(Mutex::new(vec![None; buffers.len()]));
    for (i, &(buffer, bytes)) in buffers.iter().enumerate() {
        let status = status.clone();
        buffer.map_async(wgpu::MapMode::Read, 0..mappable(bytes), move |r| {
            status.lock().unwrap_or_else(PoisonError::into_inner)[i] =
                Some(r.map_err(|e| e.to_string()));
        });
    }
    ctx.wait()?;
    let status = std::mem::take(&mut *status.lock().unwrap_or_else(PoisonError::into_inner));
    let device_error = |message: String| EngineError::Device {
        device: ctx.name().to_string(),
        message,
    };
    let mut out = Vec::with_capacity(buffers.len());
    for (&(buffer, bytes), st) in buffers.iter().zip(status) {
        match st {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                return Err(device_error(format!(
                    "mapping a readback buffer failed: {e}"
                )))
            }
            None => return Err(device_error("a readback buffer never mapped".into())),
        }
        let data = {
            let view = buffer
                .get_mapped_range(0..mappable(bytes))
                .map_err(|e| device_error(format!("reading a mapped buffer failed: {e}")))?;
            let len = usize::try_from(bytes)
                .map_err(|_| device_error("readback larger than memory".into()))?;
            view[..len].to_vec()
        };
        buffer.unmap();
        out.push(data);
    }
    Ok(out)
}

/// Map and copy ranges must be multiples of 4 bytes.
pub(crate) fn mappable(bytes: u64) -> u64 {
    bytes.max(4).next_multiple_of(4)
}
