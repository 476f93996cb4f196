//! Hot-swapping LoRA adapters: the time to apply, remove and swap between
//! two loaded rank-8 adapters (q, k, v, o of every layer) on SmolLM2-135M,
//! and what one decode step costs right after a swap against one with the
//! adapter already chosen (so any plan rebuilt on a switch shows). Loading
//! an adapter (stack rebuilt and uploaded) is timed beside them for
//! context: that is the cost paid once, not per switch.
//!
//! The default model when it is installed (scripts/fetch-model.sh), else a
//! synthetic model of its shapes; the GPU from `KILN_DEVICE` (or the first
//! adapter), else the CPU executor.
//!
//! `cargo bench --bench lora`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use kiln::loaders::lora::{LoraAdapter, LoraModule};
use kiln::synth::{self, SynthSpec};
use kiln::{Device, Model, ModelOptions};

const RANK: usize = 8;
const MODULES: [LoraModule; 4] = [LoraModule::Q, LoraModule::K, LoraModule::V, LoraModule::O];

fn model(device: &Device) -> Model {
    let options = ModelOptions {
        ctx: 512,
        ..ModelOptions::default()
    };
    if let Some(path) = kiln::loaders::paths::test_model("lora bench") {
        return Model::load(&path, device, options).expect("loads the default model");
    }
    let spec: SynthSpec = "smollm2-135m:q4_1".parse().expect("a preset");
    synth::with_file(
        spec,
        0,
        |path| -> Result<Model, Box<dyn std::error::Error>> {
            Ok(Model::load(path, device, options)?)
        },
    )
    .expect("builds and loads the synthetic model")
}

fn adapter(model: &Model, name: &str, seed: u64) -> LoraAdapter {
    synth::random_adapter(model.config(), name, RANK, &MODULES, seed).expect("an adapter")
}

fn bench(c: &mut Criterion) {
    let device = match Device::from_env() {
        Ok(device) => device,
        Err(e) => {
            eprintln!("lora bench: no GPU ({e}); on the CPU executor");
            Device::Cpu
        }
    };
    let mut model = model(&device);
    let (a, b) = (adapter(&model, "a", 1), adapter(&model, "b", 2));
    let mut group = c.benchmark_group(format!("lora r{RANK} q,k,v,o"));
    group.sample_size(20);

    // Loading restacks every loaded adapter and uploads the stacks.
    group.bench_function("load + unload", |bench| {
        bench.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                model.add_adapter(a.clone()).expect("loads");
                spent += start.elapsed();
                model.unload_adapter("a").expect("unloads");
            }
            spent
        })
    });

    model.add_adapter(a).expect("loads a");
    model.add_adapter(b).expect("loads b");
    group.bench_function("apply + remove", |bench| {
        bench.iter(|| {
            model.apply_adapter("a", 1.0).expect("applies");
            model.remove_adapter("a").expect("removes")
        })
    });
    model.apply_adapter("a", 1.0).expect("applies");
    let mut on_a = true;
    group.bench_function("swap", |bench| {
        bench.iter(|| {
            let (from, to) = if on_a { ("a", "b") } else { ("b", "a") };
            model.swap_adapter(from, to).expect("swaps");
            on_a = !on_a;
        })
    });

    // A decode step at a fixed position (the cache row is overwritten).
    let step = |model: &mut Model| model.greedy_in(0, &[1_000], 16).expect("a step");
    model.greedy_in(0, &[1; 16], 0).expect("a prompt");
    group.bench_function("decode step", |bench| bench.iter(|| step(&mut model)));
    group.bench_function("swap + decode step", |bench| {
        bench.iter(|| {
            let (from, to) = if on_a { ("a", "b") } else { ("b", "a") };
            model.swap_adapter(from, to).expect("swaps");
            on_a = !on_a;
            step(&mut model)
        })
    });
    // Two steps an iteration: one on the base plan, one on the adapter's.
    group.bench_function("remove + step + apply + step", |bench| {
        bench.iter(|| {
            let active = if on_a { "a" } else { "b" };
            if model.remove_adapter(active).expect("removes") {
                step(&mut model);
            }
            model.apply_adapter(active, 1.0).expect("applies");
            step(&mut model)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
