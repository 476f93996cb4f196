//! Shape checks, the LoRA epilogue's reference and its variants' keys and
//! bindings. The kernels' numbers are checked by the engine's op tests
//! (`cases`), their WGSL by `tests/wgsl_valid_qmatvec.rs`.

use super::*;

#[test]
fn checks_shapes_of_every_input() {
    let f = |s: &[usize]| TensorDesc::f32(s);
    let q = |n, k| TensorDesc::new(DType::Q4_0, [n, k]);
    let plain = QMatVec::new(Prologue::None, false);
    assert_eq!(
        plain.output(&[f(&[2, 64]), q(5, 64)]).unwrap().shape,
        [2, 5]
    );
    assert!(plain.output(&[f(&[2, 48]), q(5, 48)]).is_err());
    let swiglu = QMatVec::new(Prologue::SwiGlu, true);
    let up = f(&[1, 64]);
    assert!(swiglu
        .output(&[f(&[1, 64]), q(5, 64), up.clone(), f(&[1, 5])])
        .is_ok());
    assert!(swiglu
        .output(&[f(&[1, 64]), q(5, 64), f(&[2, 64]), f(&[1, 5])])
        .is_err());
    assert!(swiglu
        .output(&[f(&[1, 64]), q(5, 64), up, f(&[1, 6])])
        .is_err());
    let norm = QMatVec::new(Prologue::Norm { eps: 1e-5 }, false);
    assert!(norm.output(&[f(&[1, 64]), q(5, 64), f(&[64])]).is_ok());
    assert!(norm.output(&[f(&[1, 64]), q(5, 64), f(&[32])]).is_err());
    assert!(norm.output(&[f(&[1, 64]), q(5, 64)]).is_err());
}

#[test]
fn checks_the_lora_inputs() {
    let f = |s: &[usize]| TensorDesc::f32(s);
    let q = |n, k| TensorDesc::new(DType::Q4_0, [n, k]);
    let op = QMatVec::new(Prologue::Norm { eps: 1e-5 }, true).with_lora();
    let base = || vec![f(&[2, 3, 64]), q(5, 64), f(&[64]), f(&[2, 3, 5])];
    let with = |lu: &[usize], ls: &[usize], lb: &[usize]| {
        let mut v = base();
        v.extend([f(lu), f(ls), f(lb)]);
        op.output(&v)
    };
    assert_eq!(
        with(&[2, 3, 7], &[2, 3, 7], &[5, 7]).unwrap().shape,
        [2, 3, 5]
    );
    assert!(with(&[2, 3, 1], &[2, 3, 1], &[5, 1]).is_ok());
    // R = 0, a wrong M, lead dims or N, ls or lb of another rank.
    assert!(with(&[2, 3, 0], &[2, 3, 0], &[5, 0]).is_err());
    assert!(with(&[2, 4, 7], &[2, 4, 7], &[5, 7]).is_err());
    assert!(with(&[6, 7], &[6, 7], &[5, 7]).is_err());
    assert!(with(&[2, 3, 7], &[2, 3, 8], &[5, 7]).is_err());
    assert!(with(&[2, 3, 7], &[2, 3, 7], &[5, 8]).is_err());
    assert!(with(&[2, 3, 7], &[2, 3, 7], &[4, 7]).is_err());
    // Missing LoRA inputs, and a non-F32 one.
    assert!(matches!(op.output(&base()), Err(OpError::Arity { .. })));
    let mut v = base();
    v.extend([
        f(&[2, 3, 7]),
        f(&[2, 3, 7]),
        TensorDesc::new(DType::F16, [5, 7]),
    ]);
    assert!(matches!(op.output(&v), Err(OpError::DType { .. })));
}

/// Deterministic values in [-1, 1) (the kernels crate has no device;
/// the engine's op tests draw random ones).
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u32) -> CpuTensor {
    let n = shape.iter().product();
    CpuTensor::from_f32(shape.to_vec(), values(n, seed)).unwrap()
}

fn run_cpu(op: &QMatVec, inputs: &[CpuTensor]) -> Vec<f32> {
    let descs: Vec<TensorDesc> = inputs.iter().map(|t| t.desc().clone()).collect();
    let mut out = CpuTensor::zeros(&op.output(&descs).unwrap()).unwrap();
    let refs: Vec<&CpuTensor> = inputs.iter().collect();
    op.cpu(&refs, &mut out).unwrap();
    out.as_f32().unwrap().to_vec()
}

/// All-zero scales (no adapter on any row) give exactly the plain op.
#[test]
fn lora_with_zero_scales_is_the_plain_op_exactly() {
    let (m, k, n, rank) = (3, 64, 9, 5);
    for wd in [DType::Q4_1, DType::F32] {
        for (prologue, residual) in [
            (Prologue::None, false),
            (Prologue::Norm { eps: 1e-5 }, true),
            (Prologue::SwiGlu, true),
        ] {
            let w = quant::quantize(wd, &values(n * k, 7)).unwrap();
            let mut inputs = vec![
                tensor(&[m, k], 1),
                CpuTensor::from_bytes(TensorDesc::new(wd, [n, k]), w).unwrap(),
            ];
            match prologue {
                Prologue::Norm { .. } => inputs.push(tensor(&[k], 2)),
                Prologue::SwiGlu => inputs.push(tensor(&[m, k], 3)),
                Prologue::None => {}
            }
            if residual {
                inputs.push(tensor(&[m, n], 4));
            }
            let plain = QMatVec::new(prologue, residual);
            let want = run_cpu(&plain, &inputs);
            let zeros = CpuTensor::zeros(&TensorDesc::f32([m, rank])).unwrap();
            let mut with = inputs.clone();
            with.extend([tensor(&[m, rank], 5), zeros, tensor(&[n, rank], 6)]);
            assert_eq!(
                run_cpu(&plain.with_lora(), &with),
                want,
                "{wd} {prologue:?}"
            );
            // And non-zero scales do change it.
            with[inputs.len() + 1] = tensor(&[m, rank], 8);
            assert_ne!(run_cpu(&plain.with_lora(), &with), want);
        }
    }
}

/// One row's LoRA term by hand: lb · (lu ⊙ ls), added before r.
#[test]
fn lora_term_by_hand() {
    let w = CpuTensor::from_f32(vec![2, 4], vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
    let inputs = [
        CpuTensor::from_f32(vec![1, 4], vec![2.0, 3.0, 0.0, 0.0]).unwrap(),
        w.unwrap(),
        CpuTensor::from_f32(vec![1, 2], vec![10.0, 20.0]).unwrap(),
        CpuTensor::from_f32(vec![1, 3], vec![1.0, 2.0, 4.0]).unwrap(),
        CpuTensor::from_f32(vec![1, 3], vec![0.5, 0.0, 2.0]).unwrap(),
        CpuTensor::from_f32(vec![2, 3], vec![1.0, 1.0, 1.0, 0.0, 5.0, -1.0]).unwrap(),
    ];
    let op = QMatVec::new(Prologue::None, true).with_lora();
    // y0 = 2 + (0.5 + 0 + 8) + 10, y1 = 3 + (0 + 0 - 8) + 20.
    assert_eq!(run_cpu(&op, &inputs), [20.5, 15.0]);
}

/// The flag is in the pipeline key, and only LoRA variants bind (and
/// so pay for) the three extra inputs.
#[test]
fn lora_is_keyed_and_bound_only_when_on() {
    let f = |s: &[usize]| TensorDesc::f32(s);
    let plain = QMatVec::new(Prologue::SwiGlu, true);
    let mut inputs = vec![
        f(&[3, 64]),
        TensorDesc::new(DType::Q8_0, [40, 64]),
        f(&[3, 64]),
        f(&[3, 40]),
    ];
    let out = plain.output(&inputs).unwrap();
    let a = plain.gpu(&inputs, &out, &Caps::baseline()).unwrap();
    inputs.extend([f(&[3, 20]), f(&[3, 20]), f(&[40, 20])]);
    let lora = plain.with_lora();
    let b = lora.gpu(&inputs, &out, &Caps::baseline()).unwrap();
    assert_ne!(a.key, b.key);
    assert!(b.key.contains(".lora"));
    let bound = "var<storage, read> lb";
    assert!(!a.source.contains(bound) && b.source.contains(bound));
    assert!(!a.source.contains("j < p.rank") && b.source.contains("j < p.rank"));
    assert!(a.source.contains("@binding(5) var<storage, read_write> y"));
    assert!(b.source.contains("@binding(8) var<storage, read_write> y"));
    // R lives in the params, not the source: any rank, one pipeline.
    inputs.truncate(4);
    inputs.extend([f(&[3, 7]), f(&[3, 7]), f(&[40, 7])]);
    let c = lora.gpu(&inputs, &out, &Caps::baseline()).unwrap();
    assert_eq!((b.key, b.source), (c.key, c.source));
    assert_ne!(b.params, c.params);
}
