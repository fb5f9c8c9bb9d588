//! Throughput benchmarks: they print figures; nothing here asserts a time. `zoo bench scaling`
//! measures each point in a child process of its own (see [`scaling`]).

use crate::ZooError;
use crate::launcher::Launcher;
use crate::plot::{Axis, Legend, Plot, Series};
use crate::runtime::optim::{AdamW, Sgd};
use crate::runtime::run_dir::write_run_file;
use crate::runtime::step::{clip_global_norm, gradients};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::tensor::Distribution;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};
use zoo_bert::{BertConfig, BertTask, Targets};
use zoo_blocks::CellKind;
use zoo_blocks::PositionKind;
use zoo_blocks::loss::label_smoothed_cross_entropy;
use zoo_blocks::{Sampler, SamplingConfig};
use zoo_gpt::{GptCache, GptConfig};
use zoo_rnn::{RnnConfig, RnnState};
use zoo_seq2seq::decoding::{DecodeTokens, Strategy, decode};
use zoo_seq2seq::{Seq2Seq, TransformerConfig};

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
    let model = config.init(&device)?;
    let params = model.num_params();
    let mut model = Some(model);
    // PyTorch's AdamW defaults, as the reference script uses them.
    let mut optimizer = adamw(0.999, 1e-8, 0.01);
    let shape = [batch, config.block_size];
    let vocab = config.vocab_size;
    time_steps(params, batch * config.block_size, steps, warmup, || {
        let (inputs, targets) = (
            random_ids(shape, vocab, &device),
            random_ids(shape, vocab, &device),
        );
        let times = timed_step(&mut model, &mut optimizer, 1e-3, 0.0, &device, |m| {
            m.loss(inputs, targets)
        })?;
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
    let model = config.init(&device)?;
    let params = model.num_params();
    let mut model = Some(model);
    let mut optimizer: ModuleOptimizer = Sgd::new(0.0, 0.0).into();
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
        let times = timed_step(&mut model, &mut optimizer, 20.0, 0.25, &device, |m| {
            let (loss, next) = m.loss(inputs, targets, carried);
            state = Some(next);
            loss
        })?;
        Ok(times)
    })
}

/// Times BERT on random full-length sequences: `steps` masked-LM training steps (15% of the
/// positions predicted, dropout as configured, AdamW at 1e-4) after `warmup` untimed ones, then
/// inference (encoder, pooler and a two-class head, no autodiff: `BertModel::predict`) over as
/// many batches. Returns the training report and inference sequences per second.
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
    let model = config.init(
        BertTask::MaskedLm {
            next_sentence: false,
        },
        &train_device,
    )?;
    let params = model.encoder.num_params();
    let mut model = Some(model);
    let mut optimizer = adamw(0.999, 1e-6, 0.01);
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
        let times = timed_step(&mut model, &mut optimizer, 1e-4, 0.0, &train_device, |m| {
            m.loss(tokens, segments, padding, targets).loss
        })?;
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
        let padding = tokens.clone().equal_elem(-1);
        let zoo_bert::Prediction::Labels(probabilities) =
            classifier.predict(tokens.clone(), tokens.zeros_like(), padding)
        else {
            unreachable!("a classifier predicts labels");
        };
        let _ = probabilities.into_data();
        if i >= warmup {
            seconds.push(started.elapsed().as_secs_f64());
        }
    }
    Ok((report, batch as f64 / median(&mut seconds)))
}

/// What `zoo bench seq2seq` measures.
#[derive(Clone, Debug)]
pub struct Seq2SeqBench {
    /// Training (teacher forcing, label-smoothed cross-entropy); its tokens are target tokens.
    pub train: BenchReport,
    /// Source sentences per second decoded greedily, `tgt_len` tokens each, with the cache.
    pub greedy_per_s: f64,
    /// The same with beam search of `beam` hypotheses per source.
    pub beam_per_s: f64,
}

/// Times a transformer encoder-decoder the way `shared/reference/torch_seq2seq.py` times
/// `nn.Transformer`: `steps` training steps (after `warmup` untimed ones) on random pairs of
/// `src_len` source and `tgt_len` target tokens (no padding), teacher-forced with
/// label-smoothed (0.1) cross-entropy and Adam; then greedy decoding of `batch` random sources
/// to `tgt_len` tokens each (the reference re-decodes its whole prefix at each step: it has no
/// cache), and beam search of width `beam` to the same length. No end token is ever produced,
/// so every target is decoded to its full length.
#[allow(clippy::too_many_arguments)]
pub fn bench_seq2seq(
    config: &TransformerConfig,
    batch: usize,
    src_len: usize,
    tgt_len: usize,
    steps: usize,
    warmup: usize,
    beam: usize,
    device: &Device,
) -> Result<Seq2SeqBench, String> {
    let train_device = device.clone().autodiff();
    train_device.seed(0);
    let model = Seq2Seq::Transformer(config.init(&train_device)?);
    let params = model.num_params();
    let mut model = Some(model);
    // Adam as the transformer paper sets it (the reference also anneals by the Noam schedule).
    let mut optimizer = adamw(0.98, 1e-9, 0.0);
    let vocab = config.tgt_vocab_size;
    let train = time_steps(params, batch * tgt_len, steps, warmup, || {
        let source = random_ids([batch, src_len], vocab, &train_device);
        let target = random_ids([batch, tgt_len + 1], vocab, &train_device);
        let padding = source.clone().equal_elem(-1);
        let times = timed_step(&mut model, &mut optimizer, 1e-4, 0.0, &train_device, |m| {
            let logits = m.forward(source, padding, target.clone().narrow(1, 0, tgt_len));
            let expected = target.narrow(1, 1, tgt_len).reshape([batch * tgt_len]);
            label_smoothed_cross_entropy(logits.reshape([batch * tgt_len, vocab]), expected, 0.1)
        })?;
        Ok(times)
    })?;

    let model = model.expect("the trained model").valid();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let sources: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            (0..src_len)
                .map(|_| rng.random_range(3..vocab as u32))
                .collect()
        })
        .collect();
    // An end token no step can produce: every target runs to `tgt_len`.
    let tokens = DecodeTokens {
        pad: 0,
        bos: 1,
        eos: u32::MAX,
    };
    let per_second = |strategy: &Strategy| {
        let mut seconds = Vec::new();
        for i in 0..warmup.min(1) + steps.min(3) {
            let started = Instant::now();
            let decoded = decode(&model, &sources, tokens, strategy, tgt_len, device);
            debug_assert!(decoded.iter().all(|d| d.len() == tgt_len));
            if i >= warmup.min(1) {
                seconds.push(started.elapsed().as_secs_f64());
            }
        }
        batch as f64 / median(&mut seconds)
    };
    Ok(Seq2SeqBench {
        train,
        greedy_per_s: per_second(&Strategy::Greedy),
        beam_per_s: per_second(&Strategy::Beam {
            width: beam,
            length_penalty: 1.0,
        }),
    })
}

/// What `zoo bench generate` measures.
#[derive(Clone, Debug)]
pub struct GenerateBench {
    /// Parameters of the model.
    pub params: usize,
    /// Bytes of weights one decoding step reads (every parameter, as f32).
    pub weight_bytes: usize,
    /// Median milliseconds to read the prompt (one forward pass filling the cache).
    pub prefill_ms: f64,
    /// Median milliseconds per new token of the batch (one forward pass of one token per row).
    pub token_ms: f64,
    /// New tokens per second over the batch, at the median.
    pub tokens_per_s: f64,
    /// The machine's measured memory read bandwidth, bytes per second.
    pub bandwidth: f64,
}

impl GenerateBench {
    /// Tokens per second if every step did nothing but read the weights once at `bandwidth`:
    /// the bound of decoding that is limited by memory (one step serves the whole batch).
    pub fn bound_tokens_per_s(&self, batch: usize) -> f64 {
        self.bandwidth / self.weight_bytes as f64 * batch as f64
    }
}

/// Times incremental decoding of a GPT with its KV cache as `zoo generate` runs it: `batch`
/// random prompts of `prompt_len` tokens read in one pass, then `new_tokens` tokens each, one
/// forward pass of one token per row at a time, each row's next token sampled from its top
/// `top_k` (0: greedy) on the host. `repeats` timed runs after one untimed one; also measures
/// the memory bandwidth that bounds decoding.
pub fn bench_generate(
    config: &GptConfig,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    top_k: usize,
    repeats: usize,
    device: &Device,
) -> Result<GenerateBench, String> {
    if prompt_len + new_tokens > config.block_size {
        return Err(format!(
            "the prompt and the new tokens ({}) do not fit the preset's block of {}",
            prompt_len + new_tokens,
            config.block_size
        ));
    }
    device.seed(0);
    let model = config.init(device)?;
    let params = model.num_params();
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: if top_k == 0 { 0.0 } else { 1.0 },
        top_k,
        ..SamplingConfig::default()
    });
    let vocab = config.vocab_size;
    let (mut prefill, mut per_token) = (Vec::new(), Vec::new());
    for repeat in 0..=repeats {
        let prompt = random_ids([batch, prompt_len], vocab, device);
        let started = Instant::now();
        let mut cache = GptCache::default();
        let mut logits = model.forward(prompt, Some(&mut cache));
        let mut next = sample_rows(&mut sampler, logits, device);
        let prompted = started.elapsed();
        for _ in 1..new_tokens {
            logits = model.forward(next, Some(&mut cache));
            next = sample_rows(&mut sampler, logits, device);
        }
        let decoding = started.elapsed() - prompted;
        if repeat > 0 {
            prefill.push(prompted.as_secs_f64() * 1e3);
            per_token.push(decoding.as_secs_f64() * 1e3 / (new_tokens - 1).max(1) as f64);
        }
    }
    let token_ms = median(&mut per_token);
    Ok(GenerateBench {
        params,
        weight_bytes: params * std::mem::size_of::<f32>(),
        prefill_ms: median(&mut prefill),
        token_ms,
        tokens_per_s: batch as f64 / (token_ms / 1e3),
        bandwidth: memory_bandwidth(),
    })
}

/// Each row's next token from the last position's logits (`[batch, len, vocab]`), as ids
/// `[batch, 1]`.
fn sample_rows(sampler: &mut Sampler, logits: Tensor<3>, device: &Device) -> Tensor<2, Int> {
    let [batch, len, vocab] = logits.dims();
    let last = logits
        .narrow(1, len - 1, 1)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("logits read back as f32");
    let next: Vec<i64> = last
        .chunks(vocab)
        .map(|row| sampler.sample(row) as i64)
        .collect();
    Tensor::from_data(TensorData::new(next, [batch, 1]), device)
}

/// Bytes per second the machine reads from memory: the best of three passes summing a 512 MiB
/// buffer (far past any cache) on every core.
pub fn memory_bandwidth() -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let buffer = vec![1.0f32; 128 << 20];
    let chunk = buffer.len().div_ceil(cores);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let total: f32 = std::thread::scope(|scope| {
            let parts: Vec<_> = buffer
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        // Eight accumulators, so the adds do not wait on each other.
                        let mut sums = [0.0f32; 8];
                        for block in part.chunks_exact(8) {
                            for (sum, v) in sums.iter_mut().zip(block) {
                                *sum += v;
                            }
                        }
                        sums.iter().sum::<f32>()
                    })
                })
                .collect();
            parts
                .into_iter()
                .map(|p| p.join().expect("a summing thread"))
                .sum()
        });
        std::hint::black_box(total);
        best = best.min(started.elapsed().as_secs_f64());
    }
    (buffer.len() * std::mem::size_of::<f32>()) as f64 / best
}

/// One timed training step: `loss` (the forward pass), the backward pass with the global
/// gradient norm clipped to `clip` (0: not clipped), the optimiser update at `lr`, and the loss
/// read back as the reference scripts do. The model in `slot` is replaced by the updated one;
/// returns the time from the start to the end of each of the three phases.
fn timed_step<M: Module>(
    slot: &mut Option<M>,
    optimizer: &mut ModuleOptimizer,
    lr: f64,
    clip: f32,
    device: &Device,
    loss: impl FnOnce(&M) -> Tensor<1>,
) -> Result<[Duration; 3], String> {
    // The optimiser gets the model itself, not a clone, so that its parameters are nothing
    // else's and our updates write over them (see `runtime::optim`).
    let model = slot.take().expect("a model to step");
    let started = Instant::now();
    let loss = loss(&model);
    device.sync().map_err(|e| e.to_string())?;
    let forward = started.elapsed();
    let mut grads = gradients(&model, &loss, 1.0);
    if clip > 0.0 {
        clip_global_norm(&model, &mut grads, clip);
    }
    device.sync().map_err(|e| e.to_string())?;
    let backward = started.elapsed();
    *slot = Some(optimizer.step(lr, model, grads));
    let _ = loss.into_scalar::<f32>();
    Ok([forward, backward, started.elapsed()])
}

/// The zoo's AdamW with beta1 0.9 and these settings, as a reference script configures its
/// optimiser.
fn adamw(beta_2: f32, epsilon: f32, weight_decay: f32) -> ModuleOptimizer {
    AdamW {
        beta_1: 0.9,
        beta_2,
        epsilon,
        weight_decay,
    }
    .into()
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

/// The families `zoo bench scaling` compares, at about 3M parameters each over a 256-symbol
/// vocabulary: a GPT of 4 layers of 256 (4 heads, rotary positions), an LSTM of 2 layers of 448 and a GRU of 2
/// layers of 512, both over a 256-wide embedding. No dropout.
pub const SCALING_ARCHS: [&str; 3] = ["lstm", "gru", "gpt"];

const SCALING_VOCAB: usize = 256;

/// One point of the cost-against-length curve: one family at one sequence length.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScalingPoint {
    /// `lstm`, `gru` or `gpt`.
    pub arch: String,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Sequences per batch.
    pub batch: usize,
    /// Parameters of the model.
    pub params: usize,
    /// Median milliseconds of a forward pass (loss included, no autodiff) per sequence.
    pub forward_ms_per_seq: f64,
    /// Median milliseconds of a training step (forward, backward, optimiser) per sequence.
    pub train_ms_per_seq: f64,
    /// Peak resident memory above the process's at the start over the forward passes of a
    /// batch (MiB; the weights included).
    pub forward_mib: Option<f64>,
    /// The same over the training steps: activations kept for the backward pass, and the
    /// weights, gradients and optimiser state, which do not grow with the length.
    pub train_mib: Option<f64>,
}

/// Times one family at one sequence length: `steps` forward passes then `steps` training
/// steps (one untimed warm-up each) on batches of `batch` random sequences. Memory is the
/// process's peak, so each point should run in a process of its own (`zoo bench scaling`
/// does that).
pub fn scaling_point(
    arch: &str,
    seq_len: usize,
    batch: usize,
    steps: usize,
    device: &Device,
) -> Result<ScalingPoint, String> {
    use crate::runtime::summary::{peak_rss_bytes, reset_peak_rss, rss_bytes};
    let start_rss = rss_bytes();
    let measured = reset_peak_rss();
    let above_start = || -> Option<f64> {
        let (peak, start) = (peak_rss_bytes()?, start_rss?);
        measured.then(|| peak.saturating_sub(start) as f64 / (1 << 20) as f64)
    };
    let shape = [batch, seq_len];
    let ids = || random_ids(shape, SCALING_VOCAB, device);
    let time_forward = |forward: &dyn Fn() -> Tensor<1>| -> Result<f64, String> {
        let mut times = Vec::with_capacity(steps);
        for i in 0..=steps {
            let started = Instant::now();
            let _ = forward().into_scalar::<f32>();
            device.sync().map_err(|e| e.to_string())?;
            if i > 0 {
                times.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(median(&mut times) / batch as f64)
    };
    let (params, forward_ms, forward_mib, train) = match arch {
        "gpt" => {
            let config = GptConfig {
                vocab_size: SCALING_VOCAB,
                block_size: seq_len,
                n_layer: 4,
                n_head: 4,
                n_embd: 256,
                // Rotary positions: no table that grows with the length, so the parameters
                // are the same at every length.
                position: PositionKind::Rope,
                ..GptConfig::default()
            };
            let model = config.init(device)?;
            let (inputs, targets) = (ids(), ids());
            let forward_ms = time_forward(&|| model.loss(inputs.clone(), targets.clone()))?;
            let forward_mib = above_start();
            drop(model);
            let train = bench_gpt(&config, batch, steps, 1, device)?;
            (train.params, forward_ms, forward_mib, train)
        }
        "lstm" | "gru" => {
            let config = RnnConfig {
                vocab_size: SCALING_VOCAB,
                cell: if arch == "lstm" {
                    CellKind::Lstm
                } else {
                    CellKind::Gru
                },
                n_layer: 2,
                d_hidden: if arch == "lstm" { 448 } else { 512 },
                d_embed: 256,
                dropout: 0.0,
                tie_weights: false,
                bidirectional: false,
            };
            let model = config.init(device)?;
            let (inputs, targets) = (ids(), ids());
            let forward_ms = time_forward(&|| model.loss(inputs.clone(), targets.clone(), None).0)?;
            let forward_mib = above_start();
            drop(model);
            let train = bench_rnn(&config, batch, seq_len, steps, 1, device)?;
            (train.params, forward_ms, forward_mib, train)
        }
        other => {
            return Err(format!(
                "unknown architecture '{other}' (choose among {})",
                SCALING_ARCHS.join(", ")
            ));
        }
    };
    Ok(ScalingPoint {
        arch: arch.to_string(),
        seq_len,
        batch,
        params,
        forward_ms_per_seq: forward_ms,
        train_ms_per_seq: train.step_ms_median / batch as f64,
        forward_mib,
        train_mib: above_start(),
    })
}

/// Writes `scaling.json`, `scaling.md` and three plots (forward and training time per sequence
/// and the training batch's peak memory against length, both axes in powers of two: a cost
/// linear in the length is a line of slope 1, a quadratic one bends up to slope 2) into `out_dir`; returns the table.
pub fn scaling_report(points: &[ScalingPoint], out_dir: &Path) -> Result<String, ZooError> {
    std::fs::create_dir_all(out_dir).map_err(|e| ZooError::io(out_dir, e))?;
    let json = out_dir.join("scaling.json");
    write_run_file(
        &json,
        (serde_json::to_string_pretty(points).expect("points serialise") + "\n").as_bytes(),
    )?;
    let mut archs: Vec<&str> = points.iter().map(|p| p.arch.as_str()).collect();
    archs.dedup();
    let series = |value: fn(&ScalingPoint) -> Option<f64>| -> Vec<Series> {
        archs
            .iter()
            .map(|arch| Series {
                label: format!(
                    "{arch} ({:.1}M params)",
                    points
                        .iter()
                        .find(|p| p.arch == *arch)
                        .map_or(0, |p| p.params) as f64
                        / 1e6
                ),
                points: points
                    .iter()
                    .filter(|p| p.arch == *arch)
                    .filter_map(|p| Some((p.seq_len as f64, value(p)?)))
                    .collect(),
            })
            .collect()
    };
    let plots: [(&str, &str, &str, Vec<Series>); 3] = [
        (
            "scaling-forward-time.svg",
            "Forward pass cost against sequence length",
            "forward time per sequence (ms)",
            series(|p| Some(p.forward_ms_per_seq)),
        ),
        (
            "scaling-train-time.svg",
            "Training step cost against sequence length",
            "training step time per sequence (ms)",
            series(|p| Some(p.train_ms_per_seq)),
        ),
        (
            "scaling-train-memory.svg",
            "Training memory against sequence length",
            "peak training memory of a batch (MiB)",
            series(|p| p.train_mib.filter(|m| *m > 0.0)),
        ),
    ];
    for (file, title, y_label, series) in plots {
        Plot {
            title,
            x_label: "sequence length (tokens, log scale)",
            y_label,
            x_axis: Axis::Log2,
            y_axis: Axis::Log2,
            legend: Legend::UpperLeft,
        }
        .draw(&series, &out_dir.join(file))?;
    }
    let mut table = String::from(
        "| arch | params | seq len | batch | forward ms/seq | train ms/seq | forward MiB | train MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mib = |m: Option<f64>| m.map_or("-".into(), |m| format!("{m:.2}"));
    for p in points {
        table += &format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {} |\n",
            p.arch,
            p.params,
            p.seq_len,
            p.batch,
            p.forward_ms_per_seq,
            p.train_ms_per_seq,
            mib(p.forward_mib),
            mib(p.train_mib)
        );
    }
    let md = out_dir.join("scaling.md");
    write_run_file(
        &md,
        format!(
            "# Cost against sequence length\n\n{table}\nPlots: scaling-forward-time.svg, scaling-train-time.svg, scaling-train-memory.svg\n"
        )
        .as_bytes(),
    )?;
    Ok(table)
}

/// `zoo bench scaling`: every point of `archs` at `seq_lens` (batches of `batch` sequences,
/// `steps` timed passes and steps each), each measured by a child `zoo bench scaling-point` so
/// that its peak memory is its own, then the report in `out_dir` (see [`scaling_report`]).
/// Prints a line per point as it goes; returns the table.
pub fn scaling(
    archs: &[String],
    seq_lens: &[usize],
    batch: usize,
    steps: usize,
    out_dir: &Path,
    launcher: &Launcher,
) -> Result<String, ZooError> {
    for arch in archs {
        if !SCALING_ARCHS.contains(&arch.as_str()) {
            return Err(ZooError::Usage(format!(
                "--archs: unknown architecture '{arch}' (choose among {})",
                SCALING_ARCHS.join(", ")
            )));
        }
    }
    if seq_lens.contains(&0) || steps == 0 {
        return Err(ZooError::Usage(
            "--seq-lens and --steps must be positive".into(),
        ));
    }
    let mut points = Vec::new();
    for arch in archs {
        for &seq_len in seq_lens {
            let output = launcher
                .command(["bench", "scaling-point", "--arch", arch])
                .args([
                    "--seq-len",
                    &seq_len.to_string(),
                    "--batch",
                    &batch.to_string(),
                ])
                .args(["--steps", &steps.to_string()])
                .output()
                .map_err(|e| ZooError::Usage(format!("cannot start a benchmark process: {e}")))?;
            let text = String::from_utf8_lossy(&output.stdout);
            let point: ScalingPoint = text
                .lines()
                .last()
                .and_then(|line| serde_json::from_str(line).ok())
                .filter(|_| output.status.success())
                .ok_or_else(|| {
                    ZooError::Training(format!(
                        "{arch} at length {seq_len} failed: {}",
                        String::from_utf8_lossy(&output.stderr).trim()
                    ))
                })?;
            println!(
                "{arch:>4} len {seq_len:>5} x {batch:>3}: forward {:>9.2} ms/seq, training {:>9.2} ms/seq, training memory {} MiB",
                point.forward_ms_per_seq,
                point.train_ms_per_seq,
                point.train_mib.map_or("-".into(), |m| format!("{m:.2}"))
            );
            points.push(point);
        }
    }
    scaling_report(&points, out_dir)
}

/// The scaling report redrawn from `out_dir`'s `scaling.json`, measuring nothing; returns the
/// table.
pub fn scaling_report_again(out_dir: &Path) -> Result<String, ZooError> {
    let path = out_dir.join("scaling.json");
    let points: Vec<ScalingPoint> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .ok_or_else(|| ZooError::Usage(format!("{} is missing or unreadable", path.display())))?;
    scaling_report(&points, out_dir)
}
