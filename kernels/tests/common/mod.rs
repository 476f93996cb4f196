//! What the `wgsl_valid*` tests share: the device descriptions kernels are
//! specialised for, and the check every specialised kernel must pass (naga
//! parse and validation, naga's SPIR-V backend, the binding convention).

#![allow(dead_code)] // each test file uses part of this

use kiln_kernels::{Caps, GpuKernel};
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// Mesa lavapipe, as CI runs it (docs: WGPU.md).
pub fn lavapipe() -> Caps {
    Caps {
        subgroups: true,
        subgroup_min_size: 8,
        subgroup_max_size: 8,
        max_workgroup_storage_bytes: 32 << 10,
        max_invocations_per_workgroup: 1024,
        ..Caps::baseline()
    }
}

/// An NVIDIA H100/H200 through Vulkan (docs: DEVICE.md), with f16 and
/// subgroups but none of the cooperative-matrix and large-buffer features.
pub fn nvidia() -> Caps {
    Caps {
        shader_f16: true,
        subgroups: true,
        subgroup_min_size: 32,
        subgroup_max_size: 32,
        max_workgroup_storage_bytes: 48 << 10,
        max_invocations_per_workgroup: 1024,
        ..Caps::baseline()
    }
}

/// Exactly the naga capabilities a device description offers.
pub fn naga_caps(caps: &Caps) -> Capabilities {
    // pack2x16float / unpack2x16float are core WGSL; wgpu grants them on
    // every Vulkan, Metal and DX12 device (on llvmpipe only with SHADER_F16,
    // which lavapipe has).
    let mut c = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if caps.subgroups {
        c |= Capabilities::SUBGROUP;
    }
    if caps.shader_f16 {
        c |= Capabilities::SHADER_FLOAT16;
    }
    if !caps.coop_matrix.is_empty() {
        c |= Capabilities::COOPERATIVE_MATRIX;
    }
    c
}

/// Parses, validates against `naga_caps` and compiles to SPIR-V; checks the
/// binding convention (binding 0 uniform params, then the inputs, then the
/// output, all in group 0) and that params fill whole 16-byte rows.
pub fn check(kernel: &GpuKernel, n_inputs: usize, naga_caps: Capabilities) -> Result<(), String> {
    let src = &kernel.source;
    let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
    let info = Validator::new(ValidationFlags::all(), naga_caps)
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
        .filter_map(|(_, v)| v.binding.as_ref().map(|b| (b.group, b.binding)))
        .map(|(g, b)| if g == 0 { b } else { u32::MAX })
        .collect();
    bindings.sort();
    let want: Vec<u32> = (0..=n_inputs as u32 + 1).collect();
    if bindings != want {
        return Err(format!("bindings {bindings:?}, want {want:?}"));
    }
    if kernel.params.len() < 16 || !kernel.params.len().is_multiple_of(16) {
        return Err(format!("params are {} bytes", kernel.params.len()));
    }
    Ok(())
}

/// The dispatch fits the device's per-dimension workgroup limit.
pub fn check_workgroups(kernel: &GpuKernel, caps: &Caps) -> Result<(), String> {
    if kernel
        .workgroups
        .iter()
        .any(|&w| w > caps.max_workgroups_per_dimension)
    {
        return Err(format!("workgroups {:?}", kernel.workgroups));
    }
    Ok(())
}
