//! In-place writes into resident tensors — the mechanism the KV cache uses:
//! one compiled plan, run once per step with a new position, appends a row
//! that later runs and other plans see.

use std::borrow::Cow;

use kiln_engine::testing::devices;
use kiln_engine::{CpuTensor, DType, EngineError, Graph, TensorDesc};
use kiln_kernels::op::params_bytes;
use kiln_kernels::{Caps, GpuKernel, Op, OpError};

/// cache[pos, :] = row, leaving every other row as it was.
#[derive(Debug)]
struct WriteRow {
    rows: usize,
}

const WGSL: &str = r#"
struct Params { cols: u32, rows: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> row: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<i32>;
@group(0) @binding(3) var<storage, read_write> cache: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let r = u32(pos[0]);
    if (id.x < p.cols && r < p.rows) { cache[r * p.cols + id.x] = row[id.x]; }
}
"#;

impl Op for WriteRow {
    fn name(&self) -> &'static str {
        "test_write_row"
    }
    fn output(&self, inputs: &[TensorDesc]) -> Result<TensorDesc, OpError> {
        Ok(TensorDesc::f32([self.rows, inputs[0].cols()]))
    }
    fn cpu(&self, inputs: &[&CpuTensor], out: &mut CpuTensor) -> Result<(), OpError> {
        let row = inputs[0].as_f32().expect("f32");
        let pos = i32::from_le_bytes(inputs[1].bytes()[..4].try_into().expect("4 bytes"));
        let cols = row.len();
        if let Ok(r) = usize::try_from(pos) {
            if r < self.rows {
                out.as_f32_mut().expect("f32")[r * cols..(r + 1) * cols].copy_from_slice(row);
            }
        }
        Ok(())
    }
    fn gpu(
        &self,
        inputs: &[TensorDesc],
        _out: &TensorDesc,
        _caps: &Caps,
    ) -> Result<GpuKernel, OpError> {
        let cols = inputs[0].cols() as u32;
        Ok(GpuKernel {
            key: "test_write_row".into(),
            source: Cow::Borrowed(WGSL),
            entry: "main",
            params: params_bytes(&[cols, self.rows as u32]),
            workgroups: [cols.div_ceil(64), 1, 1],
        })
    }
}

fn pos(p: i32) -> CpuTensor {
    CpuTensor::from_bytes(TensorDesc::new(DType::I32, [1]), p.to_le_bytes().to_vec())
        .expect("valid")
}

#[test]
fn one_plan_appends_a_row_per_run() {
    for device in devices("in-place writes") {
        let cache = device
            .upload(&CpuTensor::from_f32([4, 3], vec![-1.0; 12]).expect("valid"))
            .expect("uploads");
        let mut g = Graph::new();
        let row = g.input("row", TensorDesc::f32([3]));
        let p = g.input("pos", TensorDesc::new(DType::I32, [1]));
        let c = g.resident("cache", &cache);
        let written = g
            .write_into("append", WriteRow { rows: 4 }, &[row, p], c)
            .expect("shapes");
        g.output(written);
        let mut plan = device.executor().compile(&g).expect("compiles");
        for step in 0..3 {
            let r = CpuTensor::from_f32([3], vec![step as f32; 3]).expect("valid");
            let out = plan.run(&[(row, &r), (p, &pos(step))]).expect("runs");
            assert_eq!(
                out[0].as_f32().expect("f32")[step as usize * 3],
                step as f32
            );
        }
        let got = cache.download().expect("downloads");
        let want = [
            0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, -1.0, -1.0, -1.0,
        ];
        assert_eq!(got.as_f32().expect("f32"), &want, "on {}", device.name());
    }
}

#[test]
fn writing_into_a_non_resident_is_an_error() {
    let mut g = Graph::new();
    let row = g.input("row", TensorDesc::f32([3]));
    let p = g.input("pos", TensorDesc::new(DType::I32, [1]));
    let not_resident = g.input("x", TensorDesc::f32([4, 3]));
    let err = g
        .write_into("append", WriteRow { rows: 4 }, &[row, p], not_resident)
        .unwrap_err();
    assert!(matches!(err, EngineError::NotResident { .. }), "{err}");
}
