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
        assert!(matches!(
            plan.run(&[(x, &wrong)]),
            Err(EngineError::FeedMismatch { .. })
        ));
        assert!(matches!(
            plan.run(&[]),
            Err(EngineError::MissingFeed { .. })
        ));
        let right = CpuTensor::from_f32([2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).expect("valid");
        let out = plan.run(&[(x, &right)]).expect("runs");
        assert_eq!(
            out[0],
            right,
            "an input marked as output comes back unchanged on {}",
            device.name()
        );
    }
}

#[test]
fn a_graph_without_outputs_is_an_error() {
    let mut g = Graph::new();
    g.input("x", TensorDesc::f32([1]));
    assert!(matches!(
        Device::Cpu.executor().compile(&g),
        Err(EngineError::NoOutputs)
    ));
}

#[test]
fn gpu_reports_its_device() {
    if let Some(Device::Gpu(ctx)) = gpu_or_skip("gpu device report") {
        let caps = &ctx.caps;
        assert!(
            caps.max_storage_binding_bytes >= 128 << 20,
            "kiln requests the adapter's own limits"
        );
        assert!(caps.max_invocations_per_workgroup >= 256);
        eprintln!("GPU: {} caps {caps:?}", ctx.name());
    }
}

#[test]
fn reshapes_share_storage_and_keep_it_alive() {
    use kiln_kernels::elementwise::{Add, Scale};
    // x [2,3] -> s = 2x -> view [3,2] -> y = view + view; s's storage must
    // survive until y reads the view, and the output is a view of y too.
    let mut g = Graph::new();
    let x = g.input("x", TensorDesc::f32([2, 3]));
    let s = g.op("s", Scale { s: 2.0 }, &[x]).expect("shape");
    let v = g.reshape(s, [3, 2]).expect("same numel");
    let filler = g.op("filler", Scale { s: 1.0 }, &[x]).expect("shape");
    let y = g.op("y", Add, &[v, v]).expect("shape");
    let out = g.reshape(y, [6]).expect("same numel");
    g.output(out);
    g.output(filler);
    assert!(matches!(
        g.reshape(x, [5]),
        Err(EngineError::Reshape { .. })
    ));
    let input = CpuTensor::from_f32([2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).expect("valid");
    for device in kiln_engine::testing::devices("reshape") {
        let got = device
            .executor()
            .compile(&g)
            .expect("compiles")
            .run(&[(x, &input)])
            .expect("runs");
        assert_eq!(got[0].shape(), &[6]);
        assert_eq!(
            got[0].as_f32().expect("f32"),
            &[4.0, 8.0, 12.0, 16.0, 20.0, 24.0],
            "on {}",
            device.name()
        );
    }
}

mod bad_kernels {
    use std::borrow::Cow;

    use kiln_engine::testing::gpu_or_skip;
    use kiln_engine::{CpuTensor, EngineError, Graph, TensorDesc};
    use kiln_kernels::op::params_bytes;
    use kiln_kernels::{Caps, GpuKernel, Op, OpError};

    /// An op whose WGSL does not compile.
    #[derive(Debug)]
    struct Broken;

    impl Op for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }
        fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
            Ok(inputs[0].clone())
        }
        fn cpu(&self, _inputs: &[&CpuTensor], _out: &mut CpuTensor) -> Result<(), OpError> {
            Ok(())
        }
        fn gpu(
            &self,
            _inputs: &[TensorDesc],
            _out: &TensorDesc,
            _caps: &Caps,
        ) -> Result<GpuKernel, OpError> {
            Ok(GpuKernel {
                key: "broken".into(),
                source: Cow::Borrowed("@compute @workgroup_size(1) fn main() { let x: f32 = ; }"),
                entry: "main",
                params: params_bytes(&[0u32; 4]),
                workgroups: [1, 1, 1],
            })
        }
    }

    #[test]
    fn a_shader_that_fails_to_compile_is_an_error_naming_the_node() {
        let Some(device) = gpu_or_skip("shader compile errors") else {
            return;
        };
        let mut g = Graph::new();
        let x = g.input("x", TensorDesc::f32([4]));
        let y = g.op("blk.7.broken", Broken, &[x]).expect("shape");
        g.output(y);
        match device.executor().compile(&g) {
            Err(EngineError::ShaderCompile { node, .. }) => assert_eq!(node, "blk.7.broken"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a broken shader compiled"),
        }
    }

    #[test]
    fn a_tensor_past_the_binding_limit_is_an_error_before_allocation() {
        let Some(kiln_engine::Device::Gpu(ctx)) = gpu_or_skip("binding limit") else {
            return;
        };
        let limit = ctx.caps.max_storage_binding_bytes;
        let elems = (limit / 4 + 1024) as usize;
        let mut g = Graph::new();
        let x = g.input("huge", TensorDesc::f32([elems]));
        g.output(x);
        match kiln_engine::Device::Gpu(ctx).executor().compile(&g) {
            Err(EngineError::TooLarge {
                node,
                bytes,
                limit: l,
                ..
            }) => {
                assert_eq!(node, "huge");
                assert!(bytes > l);
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a binding past the limit was accepted"),
        }
    }
}
