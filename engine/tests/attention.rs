//! Attention as a model uses it: per step, append the new tokens' k and v
//! into resident caches in place, then attend over the caches. One prefill
//! plan (flash attention, T = 17) and one decode plan (T = 1), run on the
//! same residents, against a naive forward written here from scratch
//! (the spec: plain loops, f64). On the CPU executor and the GPU, with F32
//! and F16 caches.

use kiln_engine::testing::devices;
use kiln_engine::{CpuTensor, DType, Device, DeviceTensor, Graph, TensorDesc, TensorId};
use kiln_kernels::attention::{Attention, AttnConfig};
use kiln_kernels::flash_attn::FlashAttention;
use kiln_kernels::kv_append::{seq_tensor, KvAppend};
use kiln_kernels::Op;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const N_HEAD: usize = 9;
const N_KV: usize = 3;
const HD: usize = 64;
const CTX: usize = 40;

fn random(rng: &mut StdRng, shape: [usize; 3]) -> CpuTensor {
    let n = shape.iter().product();
    CpuTensor::from_f32(shape, (0..n).map(|_| rng.random_range(-1.0..1.0)).collect())
        .expect("valid")
}

/// The seq input of one sequence from row 0, its queries from row `p`.
fn seq(p: usize) -> CpuTensor {
    seq_tensor(&[(0, p as i32)]).expect("valid")
}

/// Naive attention of `q` [T, N_HEAD, HD] at positions pos.. over all rows
/// `ks`, `vs` ([N_KV * HD] each) appended so far.
fn naive(q: &[f32], ks: &[Vec<f32>], vs: &[Vec<f32>], pos: usize, cfg: AttnConfig) -> Vec<f32> {
    let t_n = q.len() / (N_HEAD * HD);
    let mut out = vec![0.0; q.len()];
    for t in 0..t_n {
        let pq = pos + t;
        for h in 0..N_HEAD {
            let g = h / (N_HEAD / N_KV);
            let qv = &q[(t * N_HEAD + h) * HD..][..HD];
            let seen: Vec<usize> = (0..=pq)
                .filter(|&j| cfg.window == 0 || pq - j < cfg.window as usize)
                .collect();
            let s: Vec<f64> = seen
                .iter()
                .map(|&j| {
                    let k = &ks[j][g * HD..][..HD];
                    qv.iter()
                        .zip(k)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum::<f64>()
                        * f64::from(cfg.scale)
                })
                .collect();
            let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = s.iter().map(|x| (x - max).exp()).sum();
            for d in 0..HD {
                let o: f64 = seen
                    .iter()
                    .zip(&s)
                    .map(|(&j, x)| (x - max).exp() * f64::from(vs[j][g * HD + d]))
                    .sum();
                out[(t * N_HEAD + h) * HD + d] = (o / sum) as f32;
            }
        }
    }
    out
}

/// append k, v at seq's rows; out = attention(q, caches, seq). Returns the
/// graph and its inputs q, k, v, seq.
fn step_graph(
    t: usize,
    attn: impl Op + 'static,
    kc: &DeviceTensor,
    vc: &DeviceTensor,
) -> (Graph, [TensorId; 4]) {
    let append = KvAppend::new(CTX, kc.desc().dtype);
    let mut g = Graph::new();
    let q = g.input("q", TensorDesc::f32([t, N_HEAD, HD]));
    let k = g.input("k", TensorDesc::f32([t, N_KV, HD]));
    let v = g.input("v", TensorDesc::f32([t, N_KV, HD]));
    let p = g.input("seq", TensorDesc::new(DType::I32, [1, 2]));
    let kc = g.resident("cache.k", kc);
    let vc = g.resident("cache.v", vc);
    let kc = g
        .write_into("append.k", append, &[k, p], kc)
        .expect("shapes");
    let vc = g
        .write_into("append.v", append, &[v, p], vc)
        .expect("shapes");
    let out = g.op("attn", attn, &[q, kc, vc, p]).expect("shapes");
    g.output(out);
    (g, [q, k, v, p])
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 2e-5 + 1e-4 * w.abs(),
            "{what}: at [{i}] got {g}, want {w}"
        );
    }
}

/// A prefill of 17 tokens at position 0, then 3 decode steps, on caches of
/// dtype `cache` (F32 or F16).
fn prefill_then_decode(device: &Device, cfg: AttnConfig, cache: DType) {
    let mut rng = StdRng::seed_from_u64(7);
    let zeros = CpuTensor::zeros(&TensorDesc::new(cache, [CTX, N_KV, HD])).expect("valid");
    let kc = device.upload(&zeros).expect("uploads");
    let vc = device.upload(&zeros).expect("uploads");
    let (pre_graph, pre_ids) = step_graph(17, FlashAttention::new(cfg), &kc, &vc);
    let (dec_graph, dec_ids) = step_graph(1, Attention::new(cfg), &kc, &vc);
    let mut prefill = device.executor().compile(&pre_graph).expect("compiles");
    let mut decode = device.executor().compile(&dec_graph).expect("compiles");

    let (mut ks, mut vs) = (Vec::new(), Vec::new());
    let mut at = 0;
    for (step, t) in [17, 1, 1, 1].into_iter().enumerate() {
        let (q, k, v) = (
            random(&mut rng, [t, N_HEAD, HD]),
            random(&mut rng, [t, N_KV, HD]),
            random(&mut rng, [t, N_KV, HD]),
        );
        // The rows as the cache stores them (rounded to f16 for F16).
        let rows = |x: &CpuTensor| {
            let mut x = x.as_f32().expect("f32").to_vec();
            if cache == DType::F16 {
                x = CpuTensor::from_f32_as_f16([x.len()], &x)
                    .expect("valid")
                    .to_f32()
                    .expect("f16")
                    .to_vec();
            }
            x.chunks(N_KV * HD).map(<[f32]>::to_vec).collect::<Vec<_>>()
        };
        ks.extend(rows(&k));
        vs.extend(rows(&v));
        let p = seq(at);
        let (plan, id) = if t == 17 {
            (&mut prefill, &pre_ids)
        } else {
            (&mut decode, &dec_ids)
        };
        let feeds = [(id[0], &q), (id[1], &k), (id[2], &v), (id[3], &p)];
        let got = plan.run(&feeds).expect("runs").remove(0);
        let want = naive(q.as_f32().expect("f32"), &ks, &vs, at, cfg);
        assert_close(
            got.as_f32().expect("f32"),
            &want,
            &format!("{} {cache} {cfg:?} step {step}", device.name()),
        );
        at += t;
    }
    // The caches hold exactly the appended rows, zeros after.
    let kc = kc.download().expect("downloads");
    let kc = kc.to_f32().expect("f32 or f16");
    assert_eq!(&kc[..at * N_KV * HD], ks.concat().as_slice());
    assert!(kc[at * N_KV * HD..].iter().all(|&x| x == 0.0));
}

#[test]
fn prefill_then_three_decode_steps_match_naive_attention() {
    for device in devices("attention prefill + decode") {
        for cfg in [AttnConfig::causal(HD), AttnConfig::causal(HD).window(8)] {
            for cache in [DType::F32, DType::F16] {
                prefill_then_decode(&device, cfg, cache);
            }
        }
    }
}

#[test]
fn decode_and_flash_attention_agree_for_one_query() {
    let mut rng = StdRng::seed_from_u64(11);
    let (ctx, hd) = (300, 128);
    let q = random(&mut rng, [1, N_HEAD, hd]);
    let k = random(&mut rng, [ctx, N_KV, hd]);
    let v = random(&mut rng, [ctx, N_KV, hd]);
    for device in devices("decode vs flash attention") {
        for cfg in [AttnConfig::causal(hd), AttnConfig::causal(hd).window(100)] {
            let mut g = Graph::new();
            let ids = [
                g.input("q", q.desc().clone()),
                g.input("k", k.desc().clone()),
                g.input("v", v.desc().clone()),
                g.input("seq", TensorDesc::new(DType::I32, [1, 2])),
            ];
            let a = g.op("decode", Attention::new(cfg), &ids).expect("shapes");
            let b = g
                .op("flash", FlashAttention::new(cfg), &ids)
                .expect("shapes");
            g.output(a);
            g.output(b);
            let mut plan = device.executor().compile(&g).expect("compiles");
            for p in [0, 5, 250, 299] {
                let p = seq(p);
                let out = plan
                    .run(&[(ids[0], &q), (ids[1], &k), (ids[2], &v), (ids[3], &p)])
                    .expect("runs");
                let (a, b) = (out[0].as_f32().expect("f32"), out[1].as_f32().expect("f32"));
                assert_close(a, b, &format!("{} {cfg:?}", device.name()));
            }
        }
    }
}
