//! A trained language-model run loaded back from its directory (a network, or n-gram counts),
//! scored over a split and sampled from.

use crate::ZooError;
use crate::models::ModelConfig;
use crate::recipe::Recipe;
use crate::runtime::run_dir::{
    TOKENIZER_FILE, load_checkpoint, load_run_config, select_checkpoint, steps_at_epoch,
};
use crate::runtime::step::GradientStep;
use crate::tasks::lm::data::to_tensors;
use crate::tasks::lm::model::{Lm, LmModel};
use burn::module::Module;
use burn::prelude::*;
use std::path::Path;
use std::sync::Arc;
use zoo_blocks::SamplingConfig;
use zoo_text::batcher::WindowBatch;
use zoo_text::{DataDir, DatasetRegistry, KneserNey, Streams, ZooTokenizer};

/// The counted model of an n-gram run.
pub(crate) const NGRAM_FILE: &str = "ngram.bin";

/// Generates `tokens` tokens after `prompt` (or, if it is empty, after the first token of
/// `fallback`) and returns the text including the prompt.
pub(crate) fn sample_text(
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
    crate::tasks::lm::decode::continue_text(model, tokenizer, &ids, tokens, sampling)
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
    if recipe.task != crate::recipe::Task::CausalLm {
        return Err(run_error(format!(
            "is a {}: `zoo eval` scores it; generating and fine-tuning start from a language model",
            if recipe.model.arch == "elmo" {
                "task model on ELMo features"
            } else {
                "GPT classifier"
            }
        )));
    }
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
    let mut model = LmModel::init(&config, device).map_err(run_error)?;
    if recipe.finetune.lora() {
        model = super::adapted_model(run_dir, &recipe, model, device)?;
    }
    let model = load_checkpoint(run_dir, epoch, Lm::new(model, GradientStep::new(1)))?;
    // A LoRA run's adapters merged into its base's weights (the model a user runs or
    // exports); other models are as they were.
    let model = model.model.materialize();
    let steps = steps_at_epoch(run_dir, epoch).unwrap_or(epoch * recipe.training.eval_interval);
    Ok(LoadedRun {
        recipe,
        config,
        tokenizer,
        model: RunModel::Neural(model),
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

/// Scores every token of a split: the mean of [`token_losses`].
pub fn evaluate(run: &LoadedRun, split: &str, data_dir: &DataDir) -> Result<EvalReport, ZooError> {
    let registry = DatasetRegistry::builtin();
    let text = registry.load_split(&run.recipe.data.dataset, split, data_dir)?;
    let tokens = run.tokenizer.encode(&text)?;
    let losses =
        token_losses(run, &tokens).map_err(|e| ZooError::Usage(format!("split '{split}': {e}")))?;
    let loss = losses.iter().map(|(_, nll)| nll).sum::<f64>() / losses.len().max(1) as f64;
    Ok(EvalReport {
        split: split.to_string(),
        loss,
        perplexity: loss.exp(),
        tokens: losses.len(),
        steps: run.steps,
    })
}

/// Each scored token of `tokens` (in order) with its negative log-likelihood in nats:
/// - a GPT reads them in consecutive windows of `block_size` tokens, each predicting its next
///   tokens, batched by the recipe's batch size, and the tokens after the last whole window in
///   one shorter window (so every token but the first is scored);
/// - a recurrent model reads them as `eval_batch_size` contiguous streams in BPTT windows, as
///   validation does (fewer when the text does not fill a window per stream, one for a short
///   text), its state carried from each window to the next from zeros at the start (the first
///   token of each stream and the few that fill no stream are not scored);
/// - an n-gram model scores every token from the ones before it.
pub(crate) fn token_losses(run: &LoadedRun, tokens: &[u32]) -> Result<Vec<(usize, f64)>, String> {
    let seq_len = run.recipe.sequence_len(&run.config);
    let model = match &run.model {
        RunModel::Neural(model) => model,
        RunModel::Ngram(ngram) => {
            return Ok(ngram.token_nll(tokens).into_iter().enumerate().collect());
        }
    };
    // Each batch, and the position of each of its targets in `tokens` (row-major).
    let batches: Vec<(WindowBatch, Vec<usize>)> = match model {
        LmModel::Gpt(_) => {
            if tokens.len() < 2 {
                return Err(format!(
                    "{} token(s): scoring needs a token and one after it",
                    tokens.len()
                ));
            }
            let predicted = tokens.len() - 1;
            let starts: Vec<usize> = (0..predicted / seq_len).map(|w| w * seq_len).collect();
            // Windows of `len` tokens from each of `starts`, as one batch.
            let windows = |starts: &[usize], len: usize| {
                let mut batch = WindowBatch {
                    inputs: Vec::with_capacity(starts.len() * len),
                    targets: Vec::with_capacity(starts.len() * len),
                    batch_size: starts.len(),
                    block_size: len,
                };
                let mut at = Vec::with_capacity(starts.len() * len);
                for &s in starts {
                    batch.inputs.extend_from_slice(&tokens[s..s + len]);
                    batch.targets.extend_from_slice(&tokens[s + 1..s + 1 + len]);
                    at.extend(s + 1..s + 1 + len);
                }
                (batch, at)
            };
            let mut batches: Vec<_> = starts
                .chunks(run.recipe.training.batch_size)
                .map(|starts| windows(starts, seq_len))
                .collect();
            let tail = predicted % seq_len;
            if tail > 0 {
                batches.push(windows(&[predicted - tail], tail));
            }
            batches
        }
        LmModel::Rnn(_) => {
            let rows = (run.recipe.eval_batch_size())
                .min(tokens.len() / (seq_len + 1))
                .max(1);
            let streams = Streams::new(Arc::new(tokens.to_vec()), rows, seq_len)?;
            (0..streams.windows())
                .map(|w| {
                    let batch = streams.window(w);
                    let at = (0..batch.batch_size)
                        .flat_map(|row| (0..batch.block_size).map(move |column| (row, column)))
                        .map(|(row, column)| streams.target_index(w, row, column))
                        .collect();
                    (batch, at)
                })
                .collect()
        }
    };
    let device = model.devices()[0].clone();
    let mut losses = Vec::with_capacity(tokens.len());
    let mut state = None;
    for (batch, at) in batches {
        let batch = to_tensors(batch, false, &device);
        let (nll, next) = model.token_nll(batch.inputs, batch.targets, state);
        state = next;
        let nll: Vec<f32> = nll
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap_or_default();
        losses.extend(at.into_iter().zip(nll.into_iter().map(f64::from)));
    }
    losses.sort_by_key(|&(position, _)| position);
    Ok(losses)
}
