//! kiln-engine: devices, the graph of ops, and the two executors that run
//! it — [`GpuExecutor`] on wgpu and [`CpuExecutor`] on rayon — behind one
//! [`Executor`] trait, so models never know which one runs them.

pub mod cpu;
pub mod debug;
pub mod device;
pub mod error;
pub mod executor;
pub mod gpu;
pub mod graph;
pub mod tensor;
pub mod testing;

pub use cpu::CpuExecutor;
pub use device::{AdapterReport, Device};
pub use error::EngineError;
pub use executor::{Executor, Feed, OpTime, Plan, Timing};
pub use gpu::{GpuContext, GpuExecutor};
pub use graph::{Graph, NodeKind, TensorId};
pub use kiln_kernels::{Caps, CpuTensor, DType, TensorDesc};
pub use tensor::DeviceTensor;
