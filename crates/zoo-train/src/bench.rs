//! Throughput benchmarks: they print figures; nothing here asserts a time.

use crate::lm::{GptLm, LmBatch};
use crate::optim::AdamW;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use std::time::Instant;
use zoo_gpt::GptConfig;

/// Timings of a training benchmark.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Parameters of the model.
    pub params: usize,
    /// Median milliseconds per optimiser step.
    pub step_ms_median: f64,
    /// Mean milliseconds per optimiser step.
    pub step_ms_mean: f64,
    /// Training tokens per second at the median step time.
    pub tokens_per_s: f64,
    /// Median milliseconds of the forward pass and loss, of the backward pass, and of the
    /// optimiser update (the three parts of a step; the CPU backends run eagerly).
    pub phases_ms: [f64; 3],
}

/// Times `steps` forward + backward + AdamW steps of a GPT on random tokens (after `warmup`
/// untimed ones), the way `shared/reference/torch_gpt.py` times PyTorch: batch `batch` of
/// `config.block_size` tokens, learning rate 1e-3, the loss read back every step.
pub fn bench_gpt(
    config: &GptConfig,
    batch: usize,
    steps: usize,
    warmup: usize,
    device: &Device,
) -> Result<BenchReport, String> {
    let device = device.clone().autodiff();
    device.seed(0);
    let mut model = GptLm::new(config.init(&device)?, 1, 0.0);
    let params = model.num_params();
    // PyTorch's AdamW defaults, as the reference script uses them.
    let mut optimizer: ModuleOptimizer = AdamW {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.01,
    }
    .into();
    let block = config.block_size;
    let vocab = config.vocab_size as f64;
    let mut times = Vec::with_capacity(steps);
    let mut phases: [Vec<f64>; 3] = Default::default();
    for step in 0..warmup + steps {
        let random_ids = || {
            Tensor::<2>::random([batch, block], Distribution::Uniform(0.0, vocab), &device).int()
        };
        let batch = LmBatch {
            inputs: random_ids(),
            targets: random_ids(),
        };
        let started = Instant::now();
        let (loss, _) = model.gpt.loss(batch.inputs, batch.targets);
        device.sync().map_err(|e| e.to_string())?;
        let forward = started.elapsed();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        device.sync().map_err(|e| e.to_string())?;
        let backward = started.elapsed();
        model = optimizer.step(1e-3, model, grads);
        let _ = loss.into_scalar::<f32>();
        let total = started.elapsed();
        if step >= warmup {
            times.push(total.as_secs_f64() * 1e3);
            phases[0].push(forward.as_secs_f64() * 1e3);
            phases[1].push((backward - forward).as_secs_f64() * 1e3);
            phases[2].push((total - backward).as_secs_f64() * 1e3);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let median = median(&mut times);
    Ok(BenchReport {
        params,
        step_ms_median: median,
        step_ms_mean: mean,
        tokens_per_s: (batch * block) as f64 / (median / 1e3),
        phases_ms: phases.map(|mut p| self::median(&mut p)),
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
