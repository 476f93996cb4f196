//! Every variant of the fused decode matvec (qmatvec: each weight dtype,
//! prologue, residual, LoRA, reduction, row grouping and step) must parse, validate
//! with naga against exactly the capabilities of the device it was
//! specialised for, and compile to SPIR-V. No GPU needed.

mod common;

use kiln_kernels::qmatvec::{Prologue, QMatVec, WEIGHT_DTYPES};
use kiln_kernels::{Caps, Op, TensorDesc};

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
