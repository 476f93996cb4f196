//! The attention kernels' WGSL (KV append, decode attention split or
//! not, flash attention), every variant on every device description, must parse,
//! validate with naga against exactly that device's capabilities (so a
//! baseline variant that slips in a subgroup op fails), compile to SPIR-V
//! and keep the binding convention. No GPU needed. Besides the registered
//! cases, this covers shapes the harness doesn't run (head_dim 256, tile
//! choices under a 16 KiB workgroup-memory limit).

mod common;

use std::collections::HashMap;

use kiln_kernels::attention::{Attention, AttnConfig};
use kiln_kernels::attention_split::AttentionPartials;
use kiln_kernels::flash_attn::FlashAttention;
use kiln_kernels::kv_append::{self, KvAppend};
use kiln_kernels::{
    attention, attention_split, flash_attn, Caps, DType, GpuKernel, Op, OpError, TensorDesc,
};
use naga::valid::Capabilities;

fn devices() -> Vec<(&'static str, Caps)> {
    let lavapipe = Caps {
        shader_f16: true,
        ..common::lavapipe()
    };
    vec![
        ("baseline", Caps::baseline()),
        ("lavapipe", lavapipe),
        ("nvidia", common::nvidia()),
    ]
}

fn check(kernel: &GpuKernel, n_inputs: usize, caps: &Caps) -> Result<(), String> {
    // Validated without SHADER_FLOAT16 even where the device offers it: the
    // attention kernels keep f16 as packed u32 words (pack2x16float, the F16
    // cache's writes) and must not need `enable f16;`.
    let naga_caps = common::naga_caps(caps).difference(Capabilities::SHADER_FLOAT16);
    common::check(kernel, n_inputs, naga_caps)?;
    common::check_workgroups(kernel, caps)
}

#[test]
fn every_attention_variant_validates() {
    let mut all: Vec<(String, std::sync::Arc<dyn Op>, Vec<TensorDesc>)> = kv_append::cases()
        .into_iter()
        .chain(attention::cases())
        .chain(flash_attn::cases())
        .chain(attention_split::cases())
        .map(|c| (c.label, c.op, c.inputs))
        .collect();
    let f = |s: [usize; 3]| TensorDesc::f32(s);
    let seq = TensorDesc::new(DType::I32, [1, 2]);
    for hd in [80, 256] {
        let inputs = vec![
            f([130, 8, hd]),
            f([300, 2, hd]),
            f([300, 2, hd]),
            seq.clone(),
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
        // F16 caches, llama's GQA (32 heads on 8).
        let h = |s: [usize; 3]| TensorDesc::new(DType::F16, s);
        all.push((
            format!("flash hd {hd} f16 32/8"),
            std::sync::Arc::new(FlashAttention::new(cfg)),
            vec![
                f([130, 32, hd]),
                h([300, 8, hd]),
                h([300, 8, hd]),
                seq.clone(),
            ],
        ));
        // Batched decode over slots of 300 rows in a cache of 8 slots.
        let per_query = TensorDesc::new(DType::I32, [32, 2]);
        all.push((
            format!("partials hd {hd} f16 32/8 slots"),
            std::sync::Arc::new(AttentionPartials::new(cfg).max_len(300)),
            vec![
                f([32, 32, hd]),
                h([2400, 8, hd]),
                h([2400, 8, hd]),
                per_query,
            ],
        ));
    }
    all.push((
        "kv_append f16".into(),
        std::sync::Arc::new(KvAppend::new(64, DType::F16)),
        vec![f([1, 8, 256]), seq],
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
