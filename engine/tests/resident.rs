//! Resident tensors: uploaded once, bound by several plans, downloaded intact.

use kiln_engine::testing::devices;
use kiln_engine::{CpuTensor, Graph, TensorDesc};
use kiln_kernels::elementwise::Add;

#[test]
fn a_resident_tensor_serves_two_plans() {
    let w = CpuTensor::from_f32([2, 4], (0..8).map(|i| i as f32 * 0.5).collect()).expect("valid");
    for device in devices("resident tensors") {
        let resident = device.upload(&w).expect("uploads");
        assert_eq!(
            resident.download().expect("downloads"),
            w,
            "round trip on {}",
            device.name()
        );
        let mut plans = Vec::new();
        for rows in [1usize, 2] {
            let mut g = Graph::new();
            let x = g.input("x", TensorDesc::f32([rows, 4]));
            let wt = g.resident("w", &resident);
            // [rows, 4] + w's first rows, broadcasting one row when rows = 1.
            let y = if rows == 2 {
                g.op("y", Add, &[x, wt])
            } else {
                g.op("y", Add, &[wt, x])
            }
            .expect("shapes");
            g.output(y);
            plans.push((rows, x, device.executor().compile(&g).expect("compiles")));
        }
        for (rows, x, plan) in &mut plans {
            let input = CpuTensor::from_f32([*rows, 4], vec![1.0; *rows * 4]).expect("valid");
            let out = plan.run(&[(*x, &input)]).expect("runs");
            let got = out[0].as_f32().expect("f32");
            let want: Vec<f32> = (0..8).map(|i| i as f32 * 0.5 + 1.0).collect();
            assert_eq!(got, &want[..], "{rows} rows on {}", device.name());
        }
    }
}
