//! Batched decode (continuous batching's forward) against the naive f64
//! reference: several sequences, each prefilled into its own cache slot
//! by the single-sequence graph, then decoded together one token per row
//! in batched graphs (rows in another order than the slots, padding rows
//! among them), on the CPU executor and on the GPU. Every row's logits
//! must match the reference forward over its own sequence alone: a row
//! that read another slot's keys, wrote into another slot, or let a
//! padding row write anywhere would be off by a good fraction of the
//! logits' scale.

use kiln_engine::testing::devices;
use kiln_engine::{Device, Executor};
use kiln_kernels::DType;
use kiln_loaders::GgufFile;
use kiln_models::testing::{NaiveModel, TinyDtypes, TinySpec};
use kiln_models::{
    Arch, Caches, ForwardGraph, ForwardInputs, GraphOptions, LlamaConfig, LlamaWeights, LogitsMode,
    FUSED_ROWS,
};

/// Positions per slot.
const CTX: usize = 24;
/// Prompt length per slot; slot 2 stays empty until the last step.
const PROMPTS: [usize; 4] = [5, 9, 0, 13];
/// Same budget as `reference_forward.rs`, relative to the largest logit.
const TOLERANCE: f64 = 1e-4;

fn tokens(vocab: usize, slot: usize, n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 97 + 13 + 31 * slot as u32) % vocab as u32)
        .collect()
}

struct Run<'a> {
    config: LlamaConfig,
    weights: LlamaWeights,
    caches: Caches,
    executor: Box<dyn Executor>,
    naive: &'a NaiveModel,
    /// Each slot's tokens so far.
    seqs: Vec<Vec<u32>>,
    scale: f64,
}

impl Run<'_> {
    fn vocab(&self) -> usize {
        self.weights.vocab_size()
    }

    /// The reference's last-position logits of slot `s`'s sequence.
    fn want(&self, s: usize) -> Vec<f64> {
        let all = self.naive.forward(&self.seqs[s]);
        all.last().expect("a position").clone()
    }

    fn check_row(&self, what: &str, s: usize, got: &[f32]) {
        let want = self.want(s);
        let err = got
            .iter()
            .zip(&want)
            .map(|(&g, w)| (f64::from(g) - w).abs())
            .fold(0.0, f64::max);
        let tol = TOLERANCE * self.scale;
        assert!(err <= tol, "{what}, slot {s}: {err} > {tol}");
    }

    /// Runs slot `s`'s prompt through the single-sequence graph.
    fn prefill(&mut self, s: usize, prompt: Vec<u32>) {
        let fwd = ForwardGraph::build(
            &self.config,
            &self.weights,
            &self.caches,
            prompt.len(),
            LogitsMode::Last,
        )
        .expect("builds");
        let mut plan = self.executor.compile(&fwd.graph).expect("compiles");
        let inputs = ForwardInputs::new(&prompt, s * CTX, 0).expect("inputs");
        let out = plan.run(&fwd.feeds(&inputs)).expect("runs");
        self.seqs[s] = prompt;
        let logits = out[0].to_f32().expect("f32");
        self.check_row("prefill", s, &logits);
    }

    /// One batched step: `order` lists the slots row by row (`None`: a
    /// padding row); each live row runs a new token of its sequence.
    fn step(&mut self, order: &[Option<usize>], split: bool) {
        let options = GraphOptions {
            split_attention: split,
            f16_prefill: false,
            batched: true,
            greedy: false,
        };
        let fwd = ForwardGraph::build_with(
            &self.config,
            &self.weights,
            &self.caches,
            order.len(),
            LogitsMode::All,
            options,
        )
        .expect("builds");
        let mut plan = self.executor.compile(&fwd.graph).expect("compiles");
        let vocab = self.vocab() as u32;
        let rows: Vec<_> = order
            .iter()
            .map(|slot| {
                slot.map(|s| {
                    let pos = self.seqs[s].len();
                    let token = (pos as u32 * 7 + 3 * s as u32 + 1) % vocab;
                    (s * CTX, token, pos)
                })
            })
            .collect();
        for (slot, row) in order.iter().zip(&rows) {
            if let (Some(s), Some((_, token, _))) = (slot, row) {
                self.seqs[*s].push(*token);
            }
        }
        let inputs = ForwardInputs::batch(&rows).expect("inputs");
        let out = plan.run(&fwd.feeds(&inputs)).expect("runs");
        let logits = out[0].to_f32().expect("f32");
        assert_eq!(logits.len(), order.len() * self.vocab());
        let what = format!("batch of {} (split {split})", order.len());
        for (row, slot) in order.iter().enumerate() {
            if let Some(s) = *slot {
                let v = self.vocab();
                self.check_row(&what, s, &logits[row * v..(row + 1) * v]);
            }
        }
    }
}

fn check(name: &str, spec: &TinySpec) {
    let bytes = spec.gguf().expect("writes");
    let file = GgufFile::from_bytes(bytes, format!("{name}.gguf")).expect("parses");
    let naive = NaiveModel::from_gguf(&file.weights(), spec.naive_config()).expect("reference");
    for device in devices(name) {
        run_on(&device, &file, &naive, spec);
        eprintln!("{name}: batched decode matches on {}", device.name());
    }
}

fn run_on(device: &Device, file: &GgufFile, naive: &NaiveModel, spec: &TinySpec) {
    let config = LlamaConfig::from_metadata(file.metadata()).expect("config");
    let weights = LlamaWeights::load(&file.weights(), &config, device).expect("weights");
    let caches = Caches::new(&config, CTX, PROMPTS.len(), device).expect("caches");
    let mut run = Run {
        config,
        weights,
        caches,
        executor: device.executor(),
        naive,
        seqs: vec![Vec::new(); PROMPTS.len()],
        scale: 0.0,
    };
    let probe = tokens(spec.vocab, 0, 8);
    run.scale = naive
        .forward(&probe)
        .iter()
        .flatten()
        .fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(run.scale > 1.0, "degenerate logits");
    for (s, &n) in PROMPTS.iter().enumerate().filter(|(_, &n)| n > 0) {
        run.prefill(s, tokens(spec.vocab, s, n));
    }
    // Rows out of slot order, padding among them, both attention kernels,
    // the fused matvecs (T <= FUSED_ROWS, up to 8 rows per workgroup and
    // more groups past that) and the batched matmuls (T > FUSED_ROWS).
    run.step(&[Some(3), Some(0), None, Some(1)], false);
    run.step(&[Some(1), Some(3), Some(0), None], true);
    let wide: Vec<Option<usize>> = [Some(0), None, Some(3), None, None, Some(1)]
        .into_iter()
        .chain([None; 6])
        .collect();
    run.step(&wide, false);
    let widest: Vec<Option<usize>> = [Some(3), Some(1)]
        .into_iter()
        .chain([None; FUSED_ROWS])
        .chain([Some(0)])
        .collect();
    run.step(&widest, true);
    // A sequence joins the batch with one token at position 0.
    run.step(&[Some(2), Some(0), Some(1), Some(3)], true);
}

#[test]
fn llama_batched_decode_matches_each_sequence_alone() {
    let spec = TinySpec {
        dtypes: TinyDtypes {
            attn_q: DType::Q4_1,
            ffn_down: DType::Q4K,
            ..TinyDtypes::all(DType::Q8_0)
        },
        ..TinySpec::new(Arch::Llama)
    };
    check("llama batched", &spec);
}

#[test]
fn sliding_window_batched_decode_matches_each_sequence_alone() {
    let spec = TinySpec {
        sliding_window: 6,
        seed: 5,
        ..TinySpec::new(Arch::Qwen2)
    };
    check("windowed qwen2 batched", &spec);
}
