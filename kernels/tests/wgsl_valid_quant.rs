//! Every variant of the quantized-weight kernels (qmatmul, get_rows) and
//! rope must parse, validate with naga against exactly the capabilities of
//! the device it was specialised for, and compile to SPIR-V (what Vulkan
//! runs); bindings must follow the op convention. No GPU needed.

use kiln_kernels::get_rows::{GetRows, TABLE_DTYPES};
use kiln_kernels::qmatmul::{QMatMul, WEIGHT_DTYPES};
use kiln_kernels::rope::{Rope, RopeMode};
use kiln_kernels::{Caps, DType, GpuKernel, Op, TensorDesc};
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// Baseline WebGPU, lavapipe (subgroups of 8) and an NVIDIA H100 (subgroups
/// of 32, f16), as in WGPU.md.
fn devices() -> Vec<(&'static str, Caps)> {
    let lavapipe = Caps {
        subgroups: true,
        subgroup_min_size: 8,
        subgroup_max_size: 8,
        max_workgroup_storage_bytes: 32 << 10,
        max_invocations_per_workgroup: 1024,
        ..Caps::baseline()
    };
    let nvidia = Caps {
        shader_f16: true,
        subgroups: true,
        subgroup_min_size: 32,
        subgroup_max_size: 32,
        max_workgroup_storage_bytes: 48 << 10,
        max_invocations_per_workgroup: 1024,
        ..Caps::baseline()
    };
    vec![
        ("baseline", Caps::baseline()),
        ("lavapipe", lavapipe),
        ("nvidia", nvidia),
    ]
}

fn check(kernel: &GpuKernel, n_inputs: usize, caps: &Caps) -> Result<(), String> {
    let src = &kernel.source;
    let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
    // unpack2x16float is core WGSL (SHADER_FLOAT16_IN_FLOAT32 in naga).
    let mut c = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if caps.subgroups {
        c |= Capabilities::SUBGROUP;
    }
    if caps.shader_f16 {
        c |= Capabilities::SHADER_FLOAT16;
    }
    let info = Validator::new(ValidationFlags::all(), c)
        .validate(&module)
        .map_err(|e| e.emit_to_string(src))?;
    let options = naga::back::spv::Options {
        lang_version: (1, 3),
        ..Default::default()
    };
    let pipeline = naga::back::spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: kernel.entry.into(),
    };
    naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline))
        .map_err(|e| format!("SPIR-V: {e}"))?;
    let mut bindings: Vec<u32> = module
        .global_variables
        .iter()
        .filter_map(|(_, v)| {
            v.binding
                .as_ref()
                .map(|b| if b.group == 0 { b.binding } else { u32::MAX })
        })
        .collect();
    bindings.sort();
    let want: Vec<u32> = (0..=n_inputs as u32 + 1).collect();
    if bindings != want {
        return Err(format!("bindings {bindings:?}, want {want:?}"));
    }
    if kernel.params.len() < 16 || !kernel.params.len().is_multiple_of(16) {
        return Err(format!("params are {} bytes", kernel.params.len()));
    }
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
        let k = if wd.block_size() == 256 { 512 } else { 64 };
        for m in [1, 2, 8, 40] {
            for allow_subgroups in [true, false] {
                let op = QMatMul { allow_subgroups };
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
