//! Throughput benchmarks: they print figures; nothing here asserts a time.

use crate::lm::gradients;
use crate::optim::AdamW;
use burn::module::Module;
use burn::optim::{ModuleOptimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use std::time::{Duration, Instant};
use zoo_bert::{BertConfig, BertTask, Targets};
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
        let (next, times) = timed_step(model.clone(), &mut optimizer, 1e-3, 0.0, &device, |m| {
            m.loss(inputs, targets).0
        })?;
        model = next;
        Ok(times)
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
        let carried = state
            .take()
            .map(|s: RnnState| s.into_iter().map(|s| s.detach()).collect());
        let (next, times) = timed_step(model.clone(), &mut optimizer, 20.0, 0.25, &device, |m| {
            let (loss, next) = m.loss(inputs, targets, carried);
            state = Some(next);
            loss
        })?;
        model = next;
        Ok(times)
    })
}

/// Times BERT on random full-length sequences: `steps` masked-LM training steps (15% of the
/// positions predicted, dropout as configured, AdamW at 1e-4) after `warmup` untimed ones, then
/// inference (encoder, pooler and a two-class head, no autodiff) over as many batches. Returns
/// the training report and inference sequences per second.
pub fn bench_bert(
    config: &BertConfig,
    batch: usize,
    seq_len: usize,
    steps: usize,
    warmup: usize,
    device: &Device,
) -> Result<(BenchReport, f64), String> {
    let train_device = device.clone().autodiff();
    train_device.seed(0);
    let mut model = config.init(
        BertTask::MaskedLm {
            next_sentence: false,
        },
        &train_device,
    )?;
    let params = model.encoder.num_params();
    let mut optimizer: ModuleOptimizer = AdamW {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-6,
        weight_decay: 0.01,
    }
    .into();
    let shape = [batch, seq_len];
    let vocab = config.vocab_size;
    // Every sequence predicts its positions 1, 8, 15, ...: 15% of them, none padded.
    let positions: Vec<i64> = (0..batch * seq_len)
        .filter(|i| (i % seq_len) % 7 == 1)
        .map(|i| i as i64)
        .collect();
    let selected = positions.len();
    let report = time_steps(params, batch * seq_len, steps, warmup, || {
        let tokens = random_ids(shape, vocab, &train_device);
        let targets = Targets::MaskedLm {
            positions: Tensor::from_data(
                TensorData::new(positions.clone(), [selected]),
                &train_device,
            ),
            tokens: random_ids([1, selected], vocab, &train_device).reshape([selected]),
            next_sentence: None,
        };
        // No padding: every id is a real token.
        let padding = tokens.clone().equal_elem(-1);
        let segments = tokens.zeros_like();
        let (next, times) = timed_step(
            model.clone(),
            &mut optimizer,
            1e-4,
            0.0,
            &train_device,
            |m| m.loss(tokens, segments, padding, targets).loss,
        )?;
        model = next;
        Ok(times)
    })?;

    let classifier = BertConfig {
        num_labels: 2,
        ..config.clone()
    }
    .init(BertTask::Classification, device)?;
    let mut seconds = Vec::new();
    for i in 0..warmup + steps {
        let tokens = random_ids(shape, vocab, device);
        let started = Instant::now();
        let hidden = classifier
            .encoder
            .forward(tokens.clone(), tokens.zeros_like(), None);
        let pooled = classifier.encoder.pool(hidden);
        let zoo_bert::BertHead::Classification(head) = &classifier.head else {
            unreachable!("a classification model has a classification head");
        };
        let _ = head.logits(pooled).into_data();
        if i >= warmup {
            seconds.push(started.elapsed().as_secs_f64());
        }
    }
    Ok((report, batch as f64 / median(&mut seconds)))
}

/// One timed training step: `loss` (the forward pass), the backward pass with the global
/// gradient norm clipped to `clip` (0: not clipped), the optimiser update at `lr`, and the loss
/// read back as the reference scripts do. Returns the updated model and the time from the start
/// to the end of each of the three phases.
fn timed_step<M: Module>(
    model: M,
    optimizer: &mut ModuleOptimizer,
    lr: f64,
    clip: f32,
    device: &Device,
    loss: impl FnOnce(&M) -> Tensor<1>,
) -> Result<(M, [Duration; 3]), String> {
    let started = Instant::now();
    let loss = loss(&model);
    device.sync().map_err(|e| e.to_string())?;
    let forward = started.elapsed();
    let grads = gradients(&model, &loss, 1.0, clip);
    device.sync().map_err(|e| e.to_string())?;
    let backward = started.elapsed();
    let model = optimizer.step(lr, model, grads);
    let _ = loss.into_scalar::<f32>();
    Ok((model, [forward, backward, started.elapsed()]))
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
