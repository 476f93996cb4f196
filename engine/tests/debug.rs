//! The debug mode runs a GPU plan op by op and names the first node whose
//! value differs from the CPU executor's. A test op whose WGSL disagrees with
//! its own CPU reference on purpose must be caught, by name.

use std::borrow::Cow;

use kiln_engine::debug::compare_with_cpu;
use kiln_engine::testing::gpu_or_skip;
use kiln_engine::{CpuTensor, Device, GpuExecutor, Graph, TensorDesc};
use kiln_kernels::cases::Tolerance;
use kiln_kernels::op::{grid, params_bytes};
use kiln_kernels::{Caps, GpuKernel, Op, OpError};

/// y = x * factor on the CPU; on the GPU, x * gpu_factor.
#[derive(Debug)]
struct Scale {
    factor: f32,
    gpu_factor: f32,
}

const WGSL: &str = r#"
struct Params { n: u32, factor: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < p.n) { y[id.x] = x[id.x] * p.factor; }
}
"#;

impl Op for Scale {
    fn name(&self) -> &'static str {
        "test_scale"
    }
    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        Ok(inputs[0].clone())
    }
    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let x = inputs[0].as_f32().expect("f32");
        for (o, v) in out.as_f32_mut().expect("f32").iter_mut().zip(x) {
            *o = v * self.factor;
        }
        Ok(())
    }
    fn gpu(
        &self,
        inputs: &[TensorDesc],
        _out: &TensorDesc,
        caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        let n = inputs[0].numel().unwrap_or(0) as u32;
        Ok(GpuKernel {
            key: "test_scale".into(),
            source: Cow::Borrowed(WGSL),
            entry: "main",
            params: params_bytes(&[n, self.gpu_factor.to_bits()]),
            workgroups: grid(n.div_ceil(64), caps.max_workgroups_per_dimension),
        })
    }
}

#[test]
fn debug_mode_names_the_first_node_that_differs() {
    let Some(Device::Gpu(ctx)) = gpu_or_skip("debug mode") else {
        return;
    };
    let mut g = Graph::new();
    let x = g.input("x", TensorDesc::f32([100]));
    let a = g
        .op(
            "blk.0.good",
            Scale {
                factor: 2.0,
                gpu_factor: 2.0,
            },
            &[x],
        )
        .expect("shape");
    let b = g
        .op(
            "blk.0.bad",
            Scale {
                factor: 3.0,
                gpu_factor: 4.0,
            },
            &[a],
        )
        .expect("shape");
    let c = g
        .op(
            "blk.0.after",
            Scale {
                factor: 1.0,
                gpu_factor: 1.0,
            },
            &[b],
        )
        .expect("shape");
    g.output(c);
    let input = CpuTensor::from_f32([100], (0..100).map(|i| i as f32).collect()).expect("valid");
    let gpu = GpuExecutor::new(ctx);
    let mismatch = compare_with_cpu(&gpu, &g, &[(x, &input)], Tolerance::new(1e-5, 1e-5))
        .expect("runs")
        .expect("the bad node is found");
    assert_eq!(mismatch.node, "blk.0.bad");
    assert_eq!(mismatch.op, "test_scale");
    eprintln!("{mismatch}");

    // A graph that agrees everywhere reports nothing.
    let mut g = Graph::new();
    let x = g.input("x", TensorDesc::f32([100]));
    let y = g
        .op(
            "ok",
            Scale {
                factor: 2.0,
                gpu_factor: 2.0,
            },
            &[x],
        )
        .expect("shape");
    g.output(y);
    assert_eq!(
        compare_with_cpu(&gpu, &g, &[(x, &input)], Tolerance::new(1e-5, 1e-5)).expect("runs"),
        None
    );
}

#[test]
fn plans_reuse_intermediate_buffers_and_agree_with_cpu() {
    // A chain of 10 ops needs only a few distinct buffers once freed
    // intermediates are reused, and reuse must not corrupt results.
    let mut g = Graph::new();
    let x = g.input("x", TensorDesc::f32([1000]));
    let mut t = x;
    for i in 0..10 {
        t = g
            .op(
                format!("s{i}"),
                Scale {
                    factor: 1.5,
                    gpu_factor: 1.5,
                },
                &[t],
            )
            .expect("shape");
    }
    g.output(t);
    let input =
        CpuTensor::from_f32([1000], (0..1000).map(|i| (i as f32).sin()).collect()).expect("valid");
    let want = Device::Cpu
        .executor()
        .compile(&g)
        .expect("compiles")
        .run(&[(x, &input)])
        .expect("runs");
    let Some(Device::Gpu(ctx)) = gpu_or_skip("buffer reuse") else {
        return;
    };
    let gpu = GpuExecutor::new(ctx);
    let mut plan = gpu.compile_plan(&g, true).expect("compiles");
    assert_eq!(plan.dispatch_count(), 10);
    assert!(
        plan.buffer_count() <= 4,
        "10 chained ops took {} buffers",
        plan.buffer_count()
    );
    use kiln_engine::Plan;
    for _ in 0..3 {
        let got = plan.run(&[(x, &input)]).expect("runs");
        let (g, w) = (
            got[0].as_f32().expect("f32"),
            want[0].as_f32().expect("f32"),
        );
        assert!(g
            .iter()
            .zip(w)
            .all(|(a, b)| (a - b).abs() <= 1e-4 * b.abs().max(1.0)));
    }
    let timing = plan.time(&[(x, &input)], 5).expect("times");
    assert!(timing.wall_s > 0.0);
}
