//! Every kernel variant's specialised WGSL must parse, validate with naga
//! (against exactly the capabilities its device description offers, so a
//! baseline variant that slips in a subgroup op fails) and go through
//! naga's SPIR-V backend (which is what runs on Vulkan, and has panicked on
//! valid cooperative-matrix code before). No GPU needed.
//!
//! `KILN_DUMP_WGSL=dir` also writes every variant's source there.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use kiln_kernels::matmul::{BLayout, CoopTile, MatMul, MatMulVariant, TiledTile};
use kiln_kernels::op::{CoopScalar, CoopShape};
use kiln_kernels::{Caps, DType, GpuKernel, Op, TensorDesc, OP_CASES};

/// Device descriptions the kernels choose variants for.
fn devices() -> Vec<(&'static str, Caps)> {
    let coop = |ab, cr| CoopShape {
        m: 16,
        n: 16,
        k: 16,
        ab,
        cr,
    };
    // The H100/H200 with its cooperative-matrix and large-buffer features.
    let nvidia = Caps {
        coop_matrix: vec![
            coop(CoopScalar::F16, CoopScalar::F16),
            coop(CoopScalar::F16, CoopScalar::F32),
        ],
        max_immediate_size: 256,
        max_storage_binding_bytes: (2 << 30) - 4,
        max_buffer_bytes: 4 << 30,
        ..common::nvidia()
    };
    vec![
        ("baseline", Caps::baseline()),
        ("lavapipe", common::lavapipe()),
        ("nvidia", nvidia),
    ]
}

/// Parses, validates and compiles to SPIR-V; checks the binding convention
/// and the dispatch size.
fn check(kernel: &GpuKernel, n_inputs: usize, caps: &Caps) -> Result<(), String> {
    common::check(kernel, n_inputs, common::naga_caps(caps))?;
    common::check_workgroups(kernel, caps)
}

/// Every registered case on every device, plus matmul tile shapes that the
/// defaults don't reach (tuning candidates, the single-buffer coop path).
#[test]
fn every_kernel_variant_validates() {
    let mut all: Vec<(String, Arc<dyn Op>, Vec<TensorDesc>)> = OP_CASES
        .iter()
        .flat_map(|cases| cases())
        .map(|c| (c.label, c.op, c.inputs))
        .collect();
    let h = |s: &[usize]| TensorDesc::new(DType::F16, s);
    let f = |s: &[usize]| TensorDesc::f32(s);
    for coop in [
        CoopTile {
            warps_m: 2,
            warps_n: 2,
            fm: 4,
            fn_: 4,
            bk: 32,
            nbuf: 2,
            vec_smem: false,
        },
        CoopTile {
            warps_m: 2,
            warps_n: 4,
            fm: 4,
            fn_: 2,
            bk: 32,
            nbuf: 1,
            vec_smem: true,
        },
        CoopTile {
            warps_m: 4,
            warps_n: 2,
            fm: 2,
            fn_: 4,
            bk: 16,
            nbuf: 2,
            vec_smem: true,
        },
    ] {
        for layout in [BLayout::NK, BLayout::KN] {
            let mm = MatMul {
                coop: Some(coop),
                ..MatMul::new(layout).with_variant(MatMulVariant::Coop)
            };
            all.push((
                format!("{mm:?}"),
                Arc::new(mm),
                vec![h(&[256, 256]), h(&[256, 256])],
            ));
            all.push((
                format!("{mm:?}"),
                Arc::new(mm),
                vec![f(&[100, 36]), f(&[36, 36])],
            ));
        }
    }
    for tiled in [
        TiledTile {
            bm: 64,
            bn: 64,
            bk: 16,
            tm: 4,
            tn: 4,
        },
        TiledTile {
            bm: 128,
            bn: 64,
            bk: 8,
            tm: 8,
            tn: 4,
        },
    ] {
        let mm = MatMul {
            tiled: Some(tiled),
            ..MatMul::new(BLayout::KN).with_variant(MatMulVariant::Tiled)
        };
        all.push((
            format!("{mm:?}"),
            Arc::new(mm),
            vec![f(&[256, 256]), h(&[256, 256])],
        ));
    }

    let mut seen: HashMap<String, String> = HashMap::new();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (device, caps) in devices() {
        for (label, op, inputs) in &all {
            let out = op.output(inputs).unwrap_or_else(|e| panic!("{label}: {e}"));
            let kernel = match op.gpu(inputs, &out, &caps) {
                Ok(k) => k,
                Err(kiln_kernels::OpError::Unsupported { .. }) => continue,
                Err(e) => panic!("{label} on {device}: {e}"),
            };
            checked += 1;
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
            if let Some(dir) = std::env::var_os("KILN_DUMP_WGSL") {
                // For reading a variant as the GPU gets it.
                let path = std::path::Path::new(&dir).join(format!("{}.wgsl", kernel.key));
                std::fs::write(&path, kernel.source.as_bytes())
                    .unwrap_or_else(|e| panic!("{path:?}: {e}"));
            }
            seen.insert(kernel.key.clone(), kernel.source.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} variants fail:\n{}",
        failures.len(),
        seen.len(),
        failures.join("\n")
    );
    eprintln!(
        "{checked} kernels, {} distinct variants validated",
        seen.len()
    );
}
