//! Every variant of the quantized-weight kernels (qmatmul, get_rows) and
//! rope must parse, validate with naga against exactly the capabilities of
//! the device it was specialised for, and compile to SPIR-V (what Vulkan
//! runs); bindings must follow the op convention. No GPU needed. (The
//! op cases, with qmatmul's other tiles and its coop kernel, go through
//! `wgsl_valid.rs`.)

mod common;

use kiln_kernels::get_rows::{GetRows, TABLE_DTYPES};
use kiln_kernels::qmatmul::{QMatMul, WEIGHT_DTYPES};
use kiln_kernels::rope::{Rope, RopeMode};
use kiln_kernels::{Caps, DType, GpuKernel, Op, TensorDesc};

/// Baseline WebGPU, lavapipe (subgroups of 8) and an NVIDIA H100 (subgroups
/// of 32, f16), as in WGPU.md.
fn devices() -> Vec<(&'static str, Caps)> {
    vec![
        ("baseline", Caps::baseline()),
        ("lavapipe", common::lavapipe()),
        ("nvidia", common::nvidia()),
    ]
}

fn check(kernel: &GpuKernel, n_inputs: usize, caps: &Caps) -> Result<(), String> {
    common::check(kernel, n_inputs, common::naga_caps(caps))?;
    let smem = 4 * 64 * 2 * 8; // qmatmul's reduction buffer at MR = 8
    if smem > caps.max_workgroup_storage_bytes {
        return Err("workgroup memory".into());
    }
    Ok(())
}

#[test]
fn every_quant_kernel_variant_validates() {
    let mut all: Vec<(String, Box<dyn Op>, Vec<TensorDesc>)> = Vec::new();
    for wd in WEIGHT_DTYPES {
        let k = match wd {
            _ if wd.block_size() == 256 => 512,
            // Whole chunks of 4, not of 8.
            DType::F32 => 68,
            _ => 64,
        };
        // 1..8: matvec; 40, 130: tiled.
        for m in [1, 2, 8, 40, 130] {
            for allow_subgroups in [true, false] {
                let op = QMatMul {
                    allow_subgroups,
                    ..QMatMul::default()
                };
                let inputs = vec![TensorDesc::f32([m, k]), TensorDesc::new(wd, [5, k])];
                all.push((format!("{op:?} {inputs:?}"), Box::new(op), inputs));
            }
        }
    }
    for td in TABLE_DTYPES {
        let inputs = vec![
            TensorDesc::new(td, [10, 512]),
            TensorDesc::new(DType::I32, [3]),
        ];
        all.push((format!("get_rows {inputs:?}"), Box::new(GetRows), inputs));
    }
    for mode in [RopeMode::Normal, RopeMode::Neox] {
        let inputs = vec![
            TensorDesc::f32([3, 2, 64]),
            TensorDesc::new(DType::I32, [3]),
        ];
        all.push((
            format!("rope {mode:?}"),
            Box::new(Rope::new(mode, 64, 10_000.0)),
            inputs,
        ));
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for (device, caps) in devices() {
        for (label, op, inputs) in &all {
            let out = op.output(inputs).unwrap_or_else(|e| panic!("{label}: {e}"));
            let kernel = op
                .gpu(inputs, &out, &caps)
                .unwrap_or_else(|e| panic!("{label} on {device}: {e}"));
            checked += 1;
            if let Err(e) = check(&kernel, inputs.len(), &caps) {
                failures.push(format!("{label} on {device} ({}):\n{e}", kernel.key));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
