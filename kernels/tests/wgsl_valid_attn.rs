//! The attention kernels' WGSL (KV append, decode attention, flash
//! attention), every variant on every device description, must parse,
//! validate with naga against exactly that device's capabilities (so a
//! baseline variant that slips in a subgroup op fails), compile to SPIR-V
//! and keep the binding convention. No GPU needed. Besides the registered
//! cases, this covers shapes the harness doesn't run (head_dim 256, tile
//! choices under a 16 KiB workgroup-memory limit).

use std::collections::HashMap;

use kiln_kernels::attention::{Attention, AttnConfig};
use kiln_kernels::flash_attn::FlashAttention;
use kiln_kernels::kv_append::{self, KvAppend};
use kiln_kernels::{attention, flash_attn, Caps, DType, GpuKernel, Op, OpError, TensorDesc};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn devices() -> Vec<(&'static str, Caps)> {
    let lavapipe = Caps {
        shader_f16: true,
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
    // pack2x16float is core WGSL (the F16 cache's writes).
    let mut naga_caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if caps.subgroups {
        naga_caps |= Capabilities::SUBGROUP;
    }
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
    if kernel
        .workgroups
        .iter()
        .any(|&w| w > caps.max_workgroups_per_dimension)
    {
        return Err(format!("workgroups {:?}", kernel.workgroups));
    }
    Ok(())
}

#[test]
fn every_attention_variant_validates() {
    let mut all: Vec<(String, std::sync::Arc<dyn Op>, Vec<TensorDesc>)> = kv_append::cases()
        .into_iter()
        .chain(attention::cases())
        .chain(flash_attn::cases())
        .map(|c| (c.label, c.op, c.inputs))
        .collect();
    let f = |s: [usize; 3]| TensorDesc::f32(s);
    let pos = TensorDesc::new(DType::I32, [1]);
    for hd in [80, 256] {
        let inputs = vec![
            f([130, 8, hd]),
            f([300, 2, hd]),
            f([300, 2, hd]),
            pos.clone(),
        ];
        let cfg = AttnConfig::causal(hd).window(64);
        all.push((
            format!("attention hd {hd}"),
            std::sync::Arc::new(Attention::new(cfg)),
            inputs.clone(),
        ));
        all.push((
            format!("flash hd {hd}"),
            std::sync::Arc::new(FlashAttention::new(cfg)),
            inputs,
        ));
    }
    all.push((
        "kv_append f16".into(),
        std::sync::Arc::new(KvAppend::new(64, DType::F16)),
        vec![f([1, 8, 256]), pos],
    ));

    let mut seen: HashMap<String, String> = HashMap::new();
    let mut failures = Vec::new();
    for (device, caps) in devices() {
        for (label, op, inputs) in &all {
            let out = op.output(inputs).unwrap_or_else(|e| panic!("{label}: {e}"));
            let kernel = match op.gpu(inputs, &out, &caps) {
                Ok(k) => k,
                Err(OpError::Unsupported { what, .. }) => {
                    eprintln!("{label} on {device}: unsupported ({what})");
                    continue;
                }
                Err(e) => panic!("{label} on {device}: {e}"),
            };
            if let Some(src) = seen.get(&kernel.key) {
                assert_eq!(
                    src, &*kernel.source,
                    "{label}: key {} names two sources",
                    kernel.key
                );
                continue;
            }
            if let Err(e) = check(&kernel, inputs.len(), &caps) {
                failures.push(format!("{label} on {device} ({}):\n{e}", kernel.key));
            }
            seen.insert(kernel.key.clone(), kernel.source.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} variants fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{} distinct attention variants validated", seen.len());
}
