//! The language-model task: causal LM training of a GPT or a recurrent LM (or counting an
//! n-gram model), then loading a run to evaluate it over a split or sample from it.
//!
//! One burn-train epoch is `eval_interval` optimiser steps followed by a validation. A counted
//! n-gram run keeps its counts in `ngram.bin` and writes one validation line to the metrics log,
//! as a neural run's validations.

pub mod data;
pub mod model;

use crate::ZooError;
use crate::models::{ModelConfig, NgramConfig};
use crate::recipe::Recipe;
use crate::runtime::budget::{Budget, StepCost};
use crate::runtime::logging::LineRenderer;
use crate::runtime::metrics::Perplexity;
use crate::runtime::run_dir::{
    METRICS_FILE, TOKENIZER_FILE, TRAINED, load_checkpoint, load_run_config, select_checkpoint,
    steps_at_epoch, write_run_recipe,
};
use crate::runtime::session::{Batches, Session, TaskOutcome, TrainingTask};
use crate::runtime::step::GradientStep;
use burn::module::Module;
use burn::prelude::*;
use burn::train::SupervisedTraining;
use data::{Windows, to_tensors};
use model::{Lm, LmModel};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use zoo_blocks::{Sampler, SamplingConfig};
use zoo_text::batcher::WindowBatch;
use zoo_text::{DataDir, DatasetRegistry, KneserNey, RandomWindows, Streams, ZooTokenizer};

/// Trains a language-model recipe (or counts an n-gram one) in `session`'s run directory.
pub fn train(session: &Session) -> Result<TaskOutcome, ZooError> {
    let (recipe, run_dir) = (session.recipe, session.run_dir.as_path());
    if run_dir.join(NGRAM_FILE).exists() {
        return Err(ZooError::run_dir(
            run_dir,
            "already holds a counted n-gram model: use --run-dir to count elsewhere",
        ));
    }
    let registry = DatasetRegistry::builtin();
    let data = &recipe.data;
    let train_text = registry.load_split(&data.dataset, &data.train_split, session.data_dir())?;
    let val_text = registry.load_split(&data.dataset, &data.val_split, session.data_dir())?;

    session.create_run_dir()?;
    let tokenizer = if session.is_fresh() {
        let spec = recipe
            .tokenizer_spec()
            .map_err(|e| session.recipe_error(e))?;
        ZooTokenizer::build(spec, &train_text)?
    } else {
        ZooTokenizer::load(&run_dir.join(TOKENIZER_FILE))?
    };
    let config = session.model_config(|config| {
        if config.vocab_size() == 0 {
            config.set_vocab_size(tokenizer.vocab_size());
        }
        if config.vocab_size() < tokenizer.vocab_size() {
            return Err(format!(
                "[model] vocab_size = {} is smaller than the tokenizer's {} tokens",
                config.vocab_size(),
                tokenizer.vocab_size()
            ));
        }
        Ok(())
    })?;
    if session.is_fresh() {
        tokenizer.save(&run_dir.join(TOKENIZER_FILE))?;
        write_run_recipe(run_dir, recipe, &config, TRAINED)?;
    }

    let train_tokens = Arc::new(tokenizer.encode(&train_text)?);
    let val_tokens = Arc::new(tokenizer.encode(&val_text)?);
    if let ModelConfig::Ngram(ngram) = &config {
        return count_ngrams(
            recipe,
            ngram,
            run_dir,
            &tokenizer,
            [&train_tokens, &val_tokens],
        );
    }
    let t = &recipe.training;
    let seq_len = recipe.sequence_len(&config);
    let micro_batches = t.grad_accumulation;
    let split_error = |split: &str, e: String| session.recipe_error(format!("{split} split: {e}"));
    let (train, valid, steps_per_pass) = match &config {
        ModelConfig::Gpt(_) => {
            let train =
                RandomWindows::new(train_tokens.clone(), seq_len, t.batch_size, recipe.seed)
                    .map_err(|e| split_error("training", e))?;
            // A validation seed of its own, fixed for the run, so every validation sees the
            // same batches.
            let val =
                RandomWindows::new(val_tokens, seq_len, t.batch_size, recipe.seed ^ 0x76_616C)
                    .map_err(|e| split_error("validation", e))?;
            let per_step = t.batch_size * seq_len * micro_batches;
            (
                Windows::Random(train),
                Windows::Random(val),
                train_tokens.len() / per_step,
            )
        }
        ModelConfig::Rnn(_) => {
            let train = Streams::new(train_tokens.clone(), t.batch_size, seq_len)
                .map_err(|e| split_error("training", e))?;
            let val = Streams::new(val_tokens, recipe.eval_batch_size(), seq_len)
                .map_err(|e| split_error("validation", e))?;
            let per_pass = train.windows().div_ceil(micro_batches);
            (Windows::Streams(train), Windows::Streams(val), per_pass)
        }
        _ => unreachable!("validated causal-lm recipes are GPT, RNN or n-gram"),
    };
    let cost = StepCost {
        tokens: (t.batch_size * seq_len * micro_batches) as f64,
        flops_per_token: config.size().train_flops_per_token as f64,
    };
    let task = LmTraining {
        session,
        config: &config,
        seq_len,
        train_tokens: train_tokens.len(),
    };
    let batches = Batches {
        train,
        valid,
        steps_per_pass,
        cost,
    };
    let trained = session.train(task, batches, &config)?;

    let sample = if recipe.sample.tokens > 0 {
        let model = RunModel::Neural(trained.model.model.fork(&session.options.device));
        Some(sample_text(
            &model,
            &tokenizer,
            &recipe.sample.prompt,
            &val_text,
            recipe.sample.tokens,
            recipe.sample.sampling(),
        )?)
    } else {
        None
    };
    Ok(TaskOutcome {
        steps: trained.steps,
        sample,
    })
}

/// A GPT's or recurrent LM's part of a training session.
struct LmTraining<'a> {
    session: &'a Session<'a>,
    config: &'a ModelConfig,
    /// Tokens per training sequence.
    seq_len: usize,
    /// Tokens in the training split.
    train_tokens: usize,
}

impl TrainingTask for LmTraining<'_> {
    type Model = Lm;
    type Source = Windows;

    fn model(&mut self, device: &Device) -> Result<Lm, ZooError> {
        let model = LmModel::init(self.config, device)
            .map_err(|e| self.session.recipe_error(format!("[model]: {e}")))?;
        Ok(Lm::new(model, GradientStep::of(self.session.recipe)))
    }

    fn metrics(&self, training: SupervisedTraining<Lm>) -> SupervisedTraining<Lm> {
        training
            .metric_train_numeric(Perplexity::default())
            .metric_valid_numeric(Perplexity::default())
    }

    fn progress(&self, budget: Budget) -> LineRenderer {
        LineRenderer::new(
            budget,
            self.session.recipe.training.batch_size * self.seq_len,
        )
    }

    fn announce(&self, budget: &Budget) -> String {
        let recipe = self.session.recipe;
        let t = &recipe.training;
        let micro_batches = t.grad_accumulation;
        format!(
            "training {} ({} parameters) on {} tokens of '{}' for {} steps of {} x {} tokens{}; run directory {}",
            recipe.name(),
            self.config.size().total,
            self.train_tokens,
            recipe.data.dataset,
            budget.total_steps,
            t.batch_size * micro_batches,
            self.seq_len,
            if micro_batches > 1 {
                format!(" ({micro_batches} micro-batches)")
            } else {
                String::new()
            },
            self.session.run_dir.display()
        )
    }
}

/// The counted model of an n-gram run.
const NGRAM_FILE: &str = "ngram.bin";

/// "Trains" an n-gram recipe: counts the training tokens, saves the counts, scores the
/// validation split (one line in the metrics log, as a neural run's validations) and samples.
fn count_ngrams(
    recipe: &Recipe,
    config: &NgramConfig,
    run_dir: &Path,
    tokenizer: &ZooTokenizer,
    [train, val]: [&[u32]; 2],
) -> Result<TaskOutcome, ZooError> {
    println!(
        "counting {}-grams of {} tokens of '{}'; run directory {}",
        config.order,
        train.len(),
        recipe.data.dataset,
        run_dir.display()
    );
    let started = Instant::now();
    let model =
        KneserNey::train(train, config.order, config.vocab_size).map_err(ZooError::Usage)?;
    model.save(&run_dir.join(NGRAM_FILE))?;
    let loss = model.cross_entropy(val);
    let line = serde_json::json!({
        "epoch": 1,
        "step": 0,
        "split": "valid",
        "elapsed_s": started.elapsed().as_secs_f64(),
        "loss": loss,
        "perplexity": loss.exp(),
    });
    let path = run_dir.join(METRICS_FILE);
    std::fs::write(&path, format!("{line}\n")).map_err(|e| ZooError::io(&path, e))?;
    println!("validation loss {loss:.4} | perplexity {:.3}", loss.exp());
    let sample = (recipe.sample.tokens > 0)
        .then(|| {
            let mut ids = tokenizer.encode(&recipe.sample.prompt)?;
            if ids.is_empty() {
                ids = val.iter().copied().take(1).collect();
            }
            let run_model = RunModel::Ngram(model);
            continue_text(
                &run_model,
                tokenizer,
                &ids,
                recipe.sample.tokens,
                recipe.sample.sampling(),
            )
        })
        .transpose()?;
    Ok(TaskOutcome { steps: 0, sample })
}

/// Generates `tokens` tokens after `prompt` (or, if it is empty, after the first token of
/// `fallback`) and returns the text including the prompt.
fn sample_text(
    model: &RunModel,
    tokenizer: &ZooTokenizer,
    prompt: &str,
    fallback: &str,
    tokens: usize,
    sampling: SamplingConfig,
) -> Result<String, ZooError> {
    let mut ids = tokenizer.encode(prompt)?;
    if ids.is_empty() {
        ids = tokenizer.encode(fallback)?.into_iter().take(1).collect();
    }
    continue_text(model, tokenizer, &ids, tokens, sampling)
}

/// The text of `ids` followed by `tokens` sampled tokens.
fn continue_text(
    model: &RunModel,
    tokenizer: &ZooTokenizer,
    ids: &[u32],
    tokens: usize,
    sampling: SamplingConfig,
) -> Result<String, ZooError> {
    let mut sampler = Sampler::new(sampling);
    let out = match model {
        RunModel::Neural(model) => model.generate(ids, tokens, &mut sampler),
        RunModel::Ngram(model) => {
            let mut out = ids.to_vec();
            for _ in 0..tokens {
                let context = &out[out.len().saturating_sub(model.order() - 1)..];
                let next = sampler.sample(&model.log_probs(context)) as u32;
                out.push(next);
            }
            out
        }
    };
    Ok(tokenizer.decode(&out)?)
}

/// A run's model: a network, or n-gram counts.
// One per run, never in a collection: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum RunModel {
    /// A GPT or a recurrent LM.
    Neural(LmModel),
    /// An interpolated Kneser-Ney model.
    Ngram(KneserNey),
}

/// A trained run, loaded for evaluation or generation.
pub struct LoadedRun {
    /// The run's resolved recipe.
    pub recipe: Recipe,
    /// Its model config.
    pub config: ModelConfig,
    /// Its tokenizer.
    pub tokenizer: ZooTokenizer,
    /// The model, on the plain (non-autodiff) device.
    pub model: RunModel,
    /// The checkpoint's epoch.
    pub epoch: usize,
    /// Optimiser steps the checkpoint had taken.
    pub steps: usize,
}

/// Loads `run_dir`'s model from its last checkpoint (or `epoch`).
pub fn load_run(
    run_dir: &Path,
    epoch: Option<usize>,
    device: &Device,
) -> Result<LoadedRun, ZooError> {
    let run_error = |message: String| ZooError::run_dir(run_dir, message);
    let (recipe, config) = load_run_config(run_dir)?;
    let tokenizer = ZooTokenizer::load(&run_dir.join(TOKENIZER_FILE))?;
    if let ModelConfig::Ngram(_) = config {
        let path = run_dir.join(NGRAM_FILE);
        if !path.is_file() {
            return Err(run_error(format!(
                "has no {NGRAM_FILE}: the counting did not finish"
            )));
        }
        let model = KneserNey::load(&path)?;
        return Ok(LoadedRun {
            recipe,
            config,
            tokenizer,
            model: RunModel::Ngram(model),
            epoch: 1,
            steps: 0,
        });
    }
    let epoch = select_checkpoint(run_dir, epoch)?;
    let model = LmModel::init(&config, device).map_err(run_error)?;
    let model = load_checkpoint(run_dir, epoch, Lm::new(model, GradientStep::new(1, 0.0)))?;
    let steps = steps_at_epoch(run_dir, epoch).unwrap_or(epoch * recipe.training.eval_interval);
    Ok(LoadedRun {
        recipe,
        config,
        tokenizer,
        model: RunModel::Neural(model.model),
        epoch,
        steps,
    })
}

/// What `zoo eval` reports.
#[derive(Clone, Debug)]
pub struct EvalReport {
    /// The split evaluated.
    pub split: String,
    /// Mean cross-entropy per token (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Tokens scored.
    pub tokens: usize,
    /// Optimiser steps of the checkpoint.
    pub steps: usize,
}

/// Scores every token of a split. A GPT reads it in consecutive windows of `block_size`
/// tokens, each predicting its next tokens, batched by the recipe's batch size; a recurrent
/// model reads it as `eval_batch_size` contiguous streams in BPTT windows, as validation does,
/// its state carried from each window to the next from zeros at the start.
pub fn evaluate(run: &LoadedRun, split: &str, data_dir: &DataDir) -> Result<EvalReport, ZooError> {
    let registry = DatasetRegistry::builtin();
    let text = registry.load_split(&run.recipe.data.dataset, split, data_dir)?;
    let tokens = run.tokenizer.encode(&text)?;
    let seq_len = run.recipe.sequence_len(&run.config);
    let batch_size = run.recipe.training.batch_size;
    let too_short = |e: String| ZooError::Usage(format!("split '{split}': {e}"));
    let model = match &run.model {
        RunModel::Neural(model) => model,
        RunModel::Ngram(ngram) => {
            let loss = ngram.cross_entropy(&tokens);
            return Ok(EvalReport {
                split: split.to_string(),
                loss,
                perplexity: loss.exp(),
                tokens: tokens.len(),
                steps: run.steps,
            });
        }
    };
    let batches: Vec<WindowBatch> = match model {
        LmModel::Gpt(_) => {
            if tokens.len() <= seq_len {
                return Err(too_short(format!(
                    "{} tokens, fewer than one window of {seq_len}",
                    tokens.len()
                )));
            }
            let starts: Vec<usize> = (0..(tokens.len() - 1) / seq_len)
                .map(|w| w * seq_len)
                .collect();
            starts
                .chunks(batch_size)
                .map(|starts| {
                    let mut batch = WindowBatch {
                        inputs: Vec::with_capacity(starts.len() * seq_len),
                        targets: Vec::with_capacity(starts.len() * seq_len),
                        batch_size: starts.len(),
                        block_size: seq_len,
                    };
                    for &s in starts {
                        batch.inputs.extend_from_slice(&tokens[s..s + seq_len]);
                        batch
                            .targets
                            .extend_from_slice(&tokens[s + 1..s + 1 + seq_len]);
                    }
                    batch
                })
                .collect()
        }
        LmModel::Rnn(_) => {
            let streams = Streams::new(Arc::new(tokens), run.recipe.eval_batch_size(), seq_len)
                .map_err(too_short)?;
            (0..streams.windows()).map(|w| streams.window(w)).collect()
        }
    };
    let device = model.devices()[0].clone();
    let (mut nll, mut count) = (0.0f64, 0usize);
    let mut state = None;
    for batch in batches {
        let n = batch.batch_size * batch.block_size;
        let batch = to_tensors(batch, false, &device);
        let (loss, next) = model.loss(batch.inputs, batch.targets, state);
        state = next;
        nll += loss.into_scalar::<f64>() * n as f64;
        count += n;
    }
    let loss = nll / count as f64;
    Ok(EvalReport {
        split: split.to_string(),
        loss,
        perplexity: loss.exp(),
        tokens: count,
        steps: run.steps,
    })
}

/// Samples from a loaded run.
pub fn generate(
    run: &LoadedRun,
    prompt: &str,
    max_tokens: usize,
    sampling: SamplingConfig,
) -> Result<String, ZooError> {
    sampling.validate().map_err(ZooError::Usage)?;
    let ids = run.tokenizer.encode(prompt)?;
    if ids.is_empty() {
        return Err(ZooError::Usage(
            "the prompt is empty after tokenisation; give --prompt some text".into(),
        ));
    }
    continue_text(&run.model, &run.tokenizer, &ids, max_tokens, sampling)
}
