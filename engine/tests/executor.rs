//! The executors' own contract: plans reuse buffers, reject bad feeds with
//! typed errors, and the debug mode names the first node that differs.

use kiln_engine::testing::gpu_or_skip;
use kiln_engine::{CpuTensor, Device, EngineError, Graph, TensorDesc};

#[test]
fn bad_feeds_are_typed_errors() {
    let mut g = Graph::new();
    let x = g.input("x", TensorDesc::f32([2, 3]));
    g.output(x);
    for device in kiln_engine::testing::devices("bad feeds") {
        let mut plan = device.executor().compile(&g).expect("compiles");
        let wrong = CpuTensor::from_f32([3, 2], vec![0.0; 6]).expect("valid");
        assert!(matches!(plan.run(&[(x, &wrong)]), Err(EngineError::FeedMismatch { .. })));
        assert!(matches!(plan.run(&[]), Err(EngineError::MissingFeed { .. })));
        let right = CpuTensor::from_f32([2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).expect("valid");
        let out = plan.run(&[(x, &right)]).expect("runs");
        assert_eq!(out[0], right, "an input marked as output comes back unchanged on {}", device.name());
    }
}

#[test]
fn a_graph_without_outputs_is_an_error() {
    let mut g = Graph::new();
    g.input("x", TensorDesc::f32([1]));
    assert!(matches!(Device::Cpu.executor().compile(&g), Err(EngineError::NoOutputs)));
}

#[test]
fn gpu_reports_its_device() {
    if let Some(Device::Gpu(ctx)) = gpu_or_skip("gpu device report") {
        let caps = &ctx.caps;
        assert!(caps.max_storage_binding_bytes >= 128 << 20, "kiln requests the adapter's own limits");
        assert!(caps.max_invocations_per_workgroup >= 256);
        eprintln!("GPU: {} caps {caps:?}", ctx.name());
    }
}
