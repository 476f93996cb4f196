//! The op-test harness: every registered case (kiln_kernels::OP_CASES) runs
//! on every available device — the CPU executor and the GPU, if any — on
//! fresh random inputs, against the op's CPU reference with the case's
//! tolerance. Set KILN_TEST_SEED to replay a failing draw.

use kiln_engine::debug::first_violation;
use kiln_engine::testing::devices;
use kiln_engine::{CpuTensor, DType, Device, EngineError, Graph};
use kiln_kernels::cases::OpCase;
use kiln_kernels::{quant, OpError, TensorDesc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn seed() -> u64 {
    std::env::var("KILN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// Random values in `case.dist` (some exactly 0 where `case.zeros` names
/// input `i`), stored in the input's dtype.
fn random_input(rng: &mut StdRng, i: usize, desc: &TensorDesc, case: &OpCase) -> CpuTensor {
    let n = desc.numel().expect("case shapes are small");
    if desc.dtype == DType::I32 {
        let bytes = (0..n)
            .flat_map(|i| {
                let (lo, hi) = case.ints[i % case.ints.len()];
                rng.random_range(lo..hi).to_le_bytes()
            })
            .collect();
        return CpuTensor::from_bytes(desc.clone(), bytes).expect("shape matches");
    }
    let d = case.dist;
    let mut values: Vec<f32> = (0..n)
        .map(|_| {
            let v = if d.hi > d.lo {
                rng.random_range(d.lo..d.hi)
            } else {
                d.lo
            };
            let pick = if d.specials.is_empty() {
                1.0
            } else {
                rng.random()
            };
            d.value(v, pick)
        })
        .collect();
    // Only inputs with zeros draw more, so other cases replay as before.
    for &(_, fraction) in case.zeros.iter().filter(|(at, _)| *at == i) {
        for v in &mut values {
            if rng.random::<f32>() < fraction {
                *v = 0.0;
            }
        }
    }
    match desc.dtype {
        DType::F32 => CpuTensor::from_f32(desc.shape.clone(), values).expect("shape matches"),
        DType::F16 => {
            CpuTensor::from_f32_as_f16(desc.shape.clone(), &values).expect("shape matches")
        }
        d => {
            let bytes = quant::quantize(d, &values)
                .unwrap_or_else(|e| panic!("{}: cannot make a {d} input: {e}", case.label));
            CpuTensor::from_bytes(desc.clone(), bytes).expect("quantized size matches")
        }
    }
}

fn run_case(
    device: &Device,
    case: &OpCase,
    inputs: &[CpuTensor],
) -> Result<CpuTensor, EngineError> {
    let (g, ids) = Graph::single_op(case.op.clone(), &case.inputs)?;
    let mut plan = device.executor().compile(&g)?;
    let feeds: Vec<_> = ids.iter().copied().zip(inputs.iter()).collect();
    Ok(plan.run(&feeds)?.remove(0))
}

/// How `got` strays from `want`, if it does: float outputs within the
/// case's tolerance, I32 outputs (token ids) exactly.
fn mismatch(got: &CpuTensor, want: &CpuTensor, case: &OpCase) -> Option<String> {
    if want.dtype() == DType::I32 {
        let (Some(got), Some(want)) = (got.to_i32(), want.to_i32()) else {
            return Some(format!("got {:?}, want {:?}", got.desc(), want.desc()));
        };
        if got.len() != want.len() {
            return Some(format!("{} values, want {}", got.len(), want.len()));
        }
        let bad = got.iter().zip(&want).filter(|(g, w)| g != w).count();
        let (i, (g, w)) = got
            .iter()
            .zip(&want)
            .enumerate()
            .find(|(_, (g, w))| g != w)?;
        return Some(format!(
            "at [{i}] got {g}, want {w} ({bad} of {} differ)",
            want.len()
        ));
    }
    let got = got.to_f32().expect("outputs are float or I32");
    let want = want.to_f32().expect("outputs are float or I32");
    let (i, g, w, max) = first_violation(&got, &want, case.tolerance)?;
    Some(format!(
        "at [{i}] got {g}, want {w} (max |diff| {max}, tolerance {:?})",
        case.tolerance
    ))
}

#[test]
fn every_op_on_every_device_matches_the_cpu_reference() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let devices = devices("op tests");
    // KILN_OPS=qmatvec runs only the cases whose label contains it (in
    // any case: labels start with the op's type name, `QMatVec { .. }`).
    let only = std::env::var("KILN_OPS").unwrap_or_default().to_lowercase();
    let cases: Vec<OpCase> = kiln_kernels::OP_CASES
        .iter()
        .flat_map(|f| f())
        .filter(|c| c.label.to_lowercase().contains(&only))
        .collect();
    assert!(!cases.is_empty(), "no op cases registered");
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in &cases {
        let inputs: Vec<CpuTensor> = case
            .inputs
            .iter()
            .enumerate()
            .map(|(i, d)| random_input(&mut rng, i, d, case))
            .collect();
        let want = run_case(&Device::Cpu, case, &inputs)
            .unwrap_or_else(|e| panic!("{}: CPU reference failed: {e}", case.label));
        for device in devices.iter().filter(|d| matches!(d, Device::Gpu(_))) {
            match run_case(device, case, &inputs) {
                Ok(got) => {
                    ran += 1;
                    if let Some(why) = mismatch(&got, &want, case) {
                        failures.push(format!("{} on {}: {why}", case.label, device.name()));
                    }
                }
                Err(EngineError::Op {
                    source: OpError::Unsupported { what, .. },
                    ..
                }) => {
                    eprintln!(
                        "NOT RUN {} on {}: device lacks {what}",
                        case.label,
                        device.name()
                    );
                }
                Err(e) => failures.push(format!("{} on {}: {e}", case.label, device.name())),
            }
        }
    }
    eprintln!(
        "op tests: {} cases, {ran} GPU runs, seed {seed}",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
