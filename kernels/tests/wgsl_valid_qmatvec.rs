//! Every variant of the fused decode matvec (qmatvec: each weight dtype,
//! prologue, residual, LoRA, reduction, row grouping and step) must parse, validate
//! with naga against exactly the capabilities of the device it was
//! specialised for, and compile to SPIR-V. No GPU needed.

mod common;

use kiln_kernels::qmatvec::{Heads, Prologue, QMatVec, WEIGHT_DTYPES};
use kiln_kernels::rope::{Rope, RopeMode};
use kiln_kernels::{Caps, DType, Op, TensorDesc};

#[test]
fn every_qmatvec_variant_validates() {
    let devices = [
        ("baseline", Caps::baseline()),
        ("lavapipe", common::lavapipe()),
        ("nvidia", common::nvidia()),
    ];
    let prologues = [
        Prologue::None,
        Prologue::Norm { eps: 1e-5 },
        Prologue::SwiGlu,
    ];
    let mut failures = Vec::new();
    let mut checked = 0;
    for (device, caps) in &devices {
        for wd in WEIGHT_DTYPES {
            let k = if wd.block_size() == 256 { 512 } else { 64 };
            // n = 5 groups one row per workgroup, 8192 eight (four at m = 8).
            for (m, n) in [(1, 5), (1, 8192), (8, 8192)] {
                for prologue in prologues {
                    for (residual, lora) in
                        [(false, false), (true, false), (false, true), (true, true)]
                    {
                        for (allow_subgroups, octets) in [
                            (true, Some(true)),
                            (false, Some(true)),
                            (true, Some(false)),
                            (false, None),
                        ] {
                            let op = QMatVec {
                                prologue,
                                residual,
                                lora,
                                allow_subgroups,
                                shape: None,
                                octets,
                                heads: None,
                            };
                            let mut inputs =
                                vec![TensorDesc::f32([m, k]), TensorDesc::new(wd, [n, k])];
                            match prologue {
                                Prologue::Norm { .. } => inputs.push(TensorDesc::f32([k])),
                                Prologue::SwiGlu => inputs.push(TensorDesc::f32([m, k])),
                                Prologue::None => {}
                            }
                            if residual {
                                inputs.push(TensorDesc::f32([m, n]));
                            }
                            if lora {
                                let r = 20;
                                inputs.push(TensorDesc::f32([m, r]));
                                inputs.push(TensorDesc::f32([m, r]));
                                inputs.push(TensorDesc::f32([n, r]));
                            }
                            let out = op.output(&inputs).expect("valid shapes");
                            let kernel = op
                                .gpu(&inputs, &out, caps)
                                .unwrap_or_else(|e| panic!("{op:?} on {device}: {e}"));
                            checked += 1;
                            if let Err(e) =
                                common::check(&kernel, inputs.len(), common::naga_caps(caps))
                            {
                                failures.push(format!("{} on {device}:\n{e}", kernel.key));
                            }
                        }
                    }
                }
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

/// The heads epilogue (rope, cache store, both; with and without LoRA) on
/// each device's capabilities, for every weight dtype.
#[test]
fn every_heads_variant_validates() {
    let devices = [
        ("baseline", Caps::baseline()),
        ("lavapipe", common::lavapipe()),
        ("nvidia", common::nvidia()),
    ];
    let mut failures = Vec::new();
    for (device, caps) in &devices {
        for wd in WEIGHT_DTYPES {
            let k = if wd.block_size() == 256 { 512 } else { 64 };
            for (rope, cache, lora) in [
                (true, false, false),
                (true, true, false),
                (false, true, true),
                (true, true, true),
            ] {
                let (m, n) = (2, 256);
                let heads = Heads {
                    head_dim: 64,
                    rope: rope.then(|| Rope::new(RopeMode::Normal, 64, 1e4)),
                    cache_rows: cache.then_some(16),
                };
                let mut op = QMatVec::new(Prologue::Norm { eps: 1e-5 }, false).with_heads(heads);
                let mut inputs = vec![
                    TensorDesc::f32([m, k]),
                    TensorDesc::new(wd, [n, k]),
                    TensorDesc::f32([k]),
                ];
                if rope {
                    inputs.push(TensorDesc::new(DType::I32, [m]));
                }
                if cache {
                    inputs.push(TensorDesc::new(DType::I32, [m, 2]));
                }
                if lora {
                    op = op.with_lora();
                    inputs.extend([
                        TensorDesc::f32([m, 8]),
                        TensorDesc::f32([m, 8]),
                        TensorDesc::f32([n, 8]),
                    ]);
                }
                let out = op.output(&inputs).expect("valid shapes");
                let kernel = op
                    .gpu(&inputs, &out, caps)
                    .unwrap_or_else(|e| panic!("{op:?} on {device}: {e}"));
                if let Err(e) = common::check(&kernel, inputs.len(), common::naga_caps(caps)) {
                    failures.push(format!("{} on {device}:\n{e}", kernel.key));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
