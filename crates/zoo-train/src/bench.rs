//! Throughput benchmarks: they print figures; nothing here asserts a time.

use crate::lm::clip_global_norm;
use crate::optim::AdamW;
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use std::time::{Duration, Instant};
use zoo_gpt::GptConfig;
use zoo_rnn::{RnnConfig, RnnState};

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

impl BenchReport {
    /// `params=… step_ms=… (mean …; forward …, backward …, optimizer …) tokens_per_s=…`.
    pub fn summary(&self) -> String {
        let [forward, backward, optimizer] = self.phases_ms;
        format!(
            "params={} step_ms={:.2} (mean {:.2}; forward {forward:.1}, backward {backward:.1}, optimizer {optimizer:.1}) tokens_per_s={:.0}",
            self.params, self.step_ms_median, self.step_ms_mean, self.tokens_per_s
        )
    }
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
    let mut model = config.init(&device)?;
    let params = model.num_params();
    // PyTorch's AdamW defaults, as the reference script uses them.
    let mut optimizer: ModuleOptimizer = AdamW {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.01,
    }
    .into();
    let shape = [batch, config.block_size];
    let vocab = config.vocab_size;
    time_steps(params, batch * config.block_size, steps, warmup, || {
        let (inputs, targets) = (
            random_ids(shape, vocab, &device),
            random_ids(shape, vocab, &device),
        );
        let started = Instant::now();
        let (loss, _) = model.loss(inputs, targets);
        device.sync().map_err(|e| e.to_string())?;
        let forward = started.elapsed();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        device.sync().map_err(|e| e.to_string())?;
        let backward = started.elapsed();
        model = optimizer.step(1e-3, model.clone(), grads);
        let _ = loss.into_scalar::<f32>();
        Ok([forward, backward, started.elapsed()])
    })
}

/// Times `steps` training steps of a recurrent LM on random tokens (after `warmup` untimed ones),
/// the way `shared/reference/torch_lstm.py` times PyTorch's word-language-model example: windows
/// of `bptt` tokens in `batch` streams, the state carried (detached) from one step to the next,
/// dropout as configured, SGD at learning rate 20 after clipping the gradient norm to 0.25.
pub fn bench_rnn(
    config: &RnnConfig,
    batch: usize,
    bptt: usize,
    steps: usize,
    warmup: usize,
    device: &Device,
) -> Result<BenchReport, String> {
    let device = device.clone().autodiff();
    device.seed(0);
    let mut model = config.init(&device)?;
    let params = model.num_params();
    let mut optimizer: ModuleOptimizer = SgdConfig::new().init();
    let mut state: Option<RnnState> = None;
    let shape = [batch, bptt];
    let vocab = config.vocab_size;
    time_steps(params, batch * bptt, steps, warmup, || {
        let (inputs, targets) = (
            random_ids(shape, vocab, &device),
            random_ids(shape, vocab, &device),
        );
        let started = Instant::now();
        let carried = state
            .take()
            .map(|s: RnnState| s.into_iter().map(|s| s.detach()).collect());
        let (loss, next) = model.loss(inputs, targets, carried);
        state = Some(next);
        device.sync().map_err(|e| e.to_string())?;
        let forward = started.elapsed();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        clip_global_norm(&model, &mut grads, 0.25);
        device.sync().map_err(|e| e.to_string())?;
        let backward = started.elapsed();
        model = optimizer.step(20.0, model.clone(), grads);
        let _ = loss.into_scalar::<f32>();
        Ok([forward, backward, started.elapsed()])
    })
}

/// Uniformly random token ids.
fn random_ids(shape: [usize; 2], vocab: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::<2>::random(shape, Distribution::Uniform(0.0, vocab as f64), device).int()
}

/// Runs `warmup + steps` steps, each returning the time since its start at the end of the
/// forward pass, of the backward pass and of the update, and reports the timed ones.
fn time_steps(
    params: usize,
    tokens_per_step: usize,
    steps: usize,
    warmup: usize,
    mut step: impl FnMut() -> Result<[Duration; 3], String>,
) -> Result<BenchReport, String> {
    let mut times = Vec::with_capacity(steps);
    let mut phases: [Vec<f64>; 3] = Default::default();
    for i in 0..warmup + steps {
        let [forward, backward, total] = step()?;
        if i >= warmup {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            times.push(ms(total));
            phases[0].push(ms(forward));
            phases[1].push(ms(backward - forward));
            phases[2].push(ms(total - backward));
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let median = median(&mut times);
    Ok(BenchReport {
        params,
        step_ms_median: median,
        step_ms_mean: mean,
        tokens_per_s: tokens_per_step as f64 / (median / 1e3),
        phases_ms: phases.map(|mut p| self::median(&mut p)),
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
