//! Runs: train a recipe into a run directory (resumable), evaluate a run, sample from a run.
//!
//! A run directory holds everything needed to repeat or continue the run:
//!
//! ```text
//! runs/NAME/
//!   recipe.toml        the recipe as resolved (preset expanded, vocabulary size filled in)
//!   tokenizer.json     the tokenizer (Hugging Face format)
//!   checkpoint/        model-E.bpk, optim-E.bpk, scheduler-E.bpk after epoch E
//!   metrics.jsonl      one line per validation: step, losses, perplexity, learning rate
//!   experiment.log     burn-train's log
//! ```
//!
//! One burn-train epoch is `eval_interval` optimiser steps followed by a validation.

use crate::ZooError;
use crate::data::{WindowLoader, Windows, to_tensors};
use crate::lm::{Lm, LmModel};
use crate::metrics::{JsonlMetricLogger, LineRenderer, Perplexity};
use crate::optim::AdamW;
use crate::recipe::{ModelConfig, NgramConfig, OptimizerKind, Recipe};
use crate::schedule::{LrSchedule, Plateau, SharedPlateau};
use crate::summary::RunSummary;
use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{ModuleOptimizer, SgdConfig};
use burn::prelude::*;
use burn::train::checkpoint::{CheckpointingAction, CheckpointingStrategy};
use burn::train::metric::store::EventStoreClient;
use burn::train::metric::{LearningRateMetric, LossMetric};
use burn::train::renderer::{MetricsRenderer, default_renderer};
use burn::train::{Learner, LearnerModel, SupervisedTraining};
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use zoo_blocks::Sampler;
use zoo_blocks::SamplingConfig;
use zoo_text::batcher::WindowBatch;
use zoo_text::{DataDir, DatasetRegistry, KneserNey, RandomWindows, Streams, ZooTokenizer};

/// Options of `zoo train` beside the recipe.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Run directory (default: `runs/<recipe name>`).
    pub run_dir: Option<PathBuf>,
    /// Continue from the run directory's last checkpoint.
    pub resume: bool,
    /// Where datasets live.
    pub data_dir: DataDir,
    /// The device to train on (its autodiff version is used for training).
    pub device: Device,
    /// Stop after this many optimiser steps even if the recipe's budget is larger (the run
    /// can be resumed). Used to test interruption.
    pub stop_after_steps: Option<usize>,
}

/// What a finished `zoo train` reports.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Optimiser steps done in total (including before a resume).
    pub steps: usize,
    /// Validation loss at the last validation.
    pub val_loss: Option<f64>,
    /// Wall time of this invocation.
    pub seconds: f64,
    /// The sample the recipe asks for.
    pub sample: Option<String>,
}

pub(crate) const RECIPE_FILE: &str = "recipe.toml";
pub(crate) const TOKENIZER_FILE: &str = "tokenizer.json";
pub(crate) const METRICS_FILE: &str = "metrics.jsonl";
const CHECKPOINT_DIR: &str = "checkpoint";

/// Budget arithmetic: how many optimiser steps and burn-train epochs a recipe asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Optimiser steps in the whole run.
    pub total_steps: usize,
    /// Optimiser steps per burn-train epoch (one validation each).
    pub steps_per_epoch: usize,
}

/// What one optimiser step of a run costs: the unit a token or FLOPs budget is counted in.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepCost {
    /// Training tokens per optimiser step: exact for language models (batch x window x
    /// micro-batches), the mean example's tokens times the batch for encoders, its target tokens
    /// for encoder-decoders.
    pub tokens: f64,
    /// The model's training FLOPs per token (6 per weight of every matrix product, plus
    /// attention's scores).
    pub flops_per_token: f64,
}

impl StepCost {
    /// Training FLOPs per optimiser step.
    pub fn flops(&self) -> f64 {
        self.tokens * self.flops_per_token
    }
}

impl Budget {
    /// The budget of `recipe` when one pass over the training data takes `steps_per_pass`
    /// optimiser steps and each step costs `cost`. A token or FLOPs budget buys as many whole
    /// steps as fit in it (so a run stops less than one step short of its budget); one that
    /// does not buy a single step is an error.
    pub fn of(recipe: &Recipe, steps_per_pass: usize, cost: StepCost) -> Result<Self, String> {
        let t = &recipe.training;
        let fit = |budget: f64, per_step: f64, key: &str| {
            let steps = (budget / per_step).floor();
            if steps < 1.0 {
                return Err(format!(
                    "training.{key} = {budget:e} buys no step: one step costs {per_step:e}"
                ));
            }
            Ok(steps as usize)
        };
        let total_steps = match (t.steps, t.epochs, t.tokens, t.flops) {
            (Some(steps), ..) => steps,
            (_, Some(epochs), ..) => epochs * steps_per_pass.max(1),
            (_, _, Some(tokens), _) => fit(tokens, cost.tokens, "tokens")?,
            (_, _, _, Some(flops)) => fit(flops, cost.flops(), "flops")?,
            (None, None, None, None) => unreachable!("validated recipes have a budget"),
        };
        Ok(Self {
            total_steps,
            steps_per_epoch: t.eval_interval.min(total_steps),
        })
    }

    /// Optimiser steps done when burn-train epoch `epoch` ends (the last may be short).
    pub fn steps_at_epoch(&self, epoch: usize) -> usize {
        (epoch * self.steps_per_epoch).min(self.total_steps)
    }
}

/// What this invocation of a run does.
pub(crate) struct Plan {
    /// The step it stops at.
    pub(crate) total_steps: usize,
    /// The burn-train epochs up to there.
    pub(crate) epochs: usize,
    /// Epochs done before it starts (a resumed run's checkpoint).
    pub(crate) start_epoch: usize,
}

impl Budget {
    /// The plan of a run that stops after `stop_after` steps (or at the budget) and resumes
    /// from `resume_epoch`; a run that has nothing left to do is an error.
    pub(crate) fn plan(
        &self,
        stop_after: Option<usize>,
        resume_epoch: Option<usize>,
        run_dir: &Path,
    ) -> Result<Plan, ZooError> {
        let total_steps = stop_after.map_or(self.total_steps, |s| s.min(self.total_steps));
        let epochs = total_steps.div_ceil(self.steps_per_epoch);
        let start_epoch = resume_epoch.unwrap_or(0);
        if start_epoch >= epochs {
            return Err(ZooError::RunDir {
                path: run_dir.to_path_buf(),
                message: format!(
                    "is already complete ({} steps)",
                    start_epoch * self.steps_per_epoch
                ),
            });
        }
        Ok(Plan {
            total_steps,
            epochs,
            start_epoch,
        })
    }
}

/// What every run's training shares beside its metrics: the metrics log, checkpoints (every
/// `training.checkpoint_interval`, always at the end, the newest `keep_checkpoints` kept), the
/// epochs, gradient accumulation, the checkpoint to resume from, and the display: burn-train's
/// dashboard on a terminal, otherwise `lines` (one line per validation).
pub(crate) fn with_run_settings<M: LearnerModel>(
    training: SupervisedTraining<M>,
    recipe: &Recipe,
    run_dir: &Path,
    epochs: usize,
    resume_epoch: Option<usize>,
    metric_logger: JsonlMetricLogger,
    lines: LineRenderer,
) -> SupervisedTraining<M> {
    let t = &recipe.training;
    let checkpoint_every = t.checkpoint_interval.unwrap_or(t.eval_interval) / t.eval_interval;
    let mut training = training
        .with_metric_logger(metric_logger)
        .with_default_checkpointers()
        .with_checkpointing_strategy(EveryNKeepLast {
            every: checkpoint_every.max(1),
            last: epochs,
            keep: t.keep_checkpoints,
            saved: checkpoint_epochs(run_dir),
        })
        .num_epochs(epochs);
    if t.grad_accumulation > 1 {
        training = training.grads_accumulation(t.grad_accumulation);
    }
    if let Some(epoch) = resume_epoch {
        training = training.checkpoint(epoch);
    }
    let renderer: Box<dyn MetricsRenderer> = if std::io::stdout().is_terminal() {
        default_renderer(training.interrupter(), resume_epoch)
    } else {
        Box::new(lines)
    };
    training.renderer(renderer)
}

/// Saves every `every` epochs and at the last one, keeping the newest `keep`.
pub(crate) struct EveryNKeepLast {
    pub(crate) every: usize,
    pub(crate) last: usize,
    pub(crate) keep: usize,
    pub(crate) saved: Vec<usize>,
}

impl CheckpointingStrategy for EveryNKeepLast {
    fn checkpointing(&mut self, epoch: usize, _: &EventStoreClient) -> Vec<CheckpointingAction> {
        if !epoch.is_multiple_of(self.every) && epoch != self.last {
            return Vec::new();
        }
        let mut actions = vec![CheckpointingAction::Save];
        self.saved.push(epoch);
        while self.saved.len() > self.keep {
            actions.push(CheckpointingAction::Delete(self.saved.remove(0)));
        }
        actions
    }
}

/// The epochs that have a complete checkpoint (model, optimiser and scheduler), oldest first.
pub fn checkpoint_epochs(run_dir: &Path) -> Vec<usize> {
    let dir = run_dir.join(CHECKPOINT_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut epochs: Vec<usize> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("model-")?
                .strip_suffix(".bpk")?
                .parse()
                .ok()
        })
        .filter(|epoch| {
            ["optim", "scheduler"]
                .iter()
                .all(|kind| dir.join(format!("{kind}-{epoch}.bpk")).is_file())
        })
        .collect();
    epochs.sort_unstable();
    epochs
}

pub(crate) fn model_checkpoint(run_dir: &Path, epoch: usize) -> PathBuf {
    run_dir
        .join(CHECKPOINT_DIR)
        .join(format!("model-{epoch}.bpk"))
}

/// The epoch to resume from (`resume`: the last complete checkpoint, which must exist), or
/// `None` for a fresh run (then the directory must hold no checkpoints).
pub(crate) fn resume_epoch(run_dir: &Path, resume: bool) -> Result<Option<usize>, ZooError> {
    let existing = checkpoint_epochs(run_dir);
    if resume {
        let epoch = *existing.last().ok_or_else(|| ZooError::RunDir {
            path: run_dir.to_path_buf(),
            message: "has no complete checkpoint to resume from".into(),
        })?;
        return Ok(Some(epoch));
    }
    if !existing.is_empty() {
        return Err(ZooError::RunDir {
            path: run_dir.to_path_buf(),
            message: "already holds checkpoints of a run: pass --resume to continue it, or --run-dir to start a new one elsewhere".into(),
        });
    }
    Ok(None)
}

/// The recipe's optimiser.
pub(crate) fn build_optimizer(recipe: &Recipe) -> ModuleOptimizer {
    let o = &recipe.optimizer;
    match o.kind {
        OptimizerKind::Adamw => AdamW {
            beta_1: o.beta1 as f32,
            beta_2: o.beta2 as f32,
            epsilon: o.eps as f32,
            weight_decay: o.weight_decay as f32,
        }
        .into(),
        OptimizerKind::Sgd => SgdConfig::new()
            .with_weight_decay(
                (o.weight_decay > 0.0).then(|| WeightDecayConfig::new(o.weight_decay as f32)),
            )
            .with_momentum(
                (o.momentum > 0.0).then(|| MomentumConfig::new().with_momentum(o.momentum)),
            )
            .init(),
    }
}

/// Trains the recipe at `recipe_path`.
pub fn train(recipe_path: &Path, options: &TrainOptions) -> Result<TrainReport, ZooError> {
    let started = Instant::now();
    let recipe = Recipe::load(recipe_path)?;
    let run_dir = options
        .run_dir
        .clone()
        .unwrap_or_else(|| recipe.default_run_dir());
    let registry = DatasetRegistry::builtin();
    let data = &recipe.data;
    let recipe_error = |message: String| ZooError::Recipe {
        path: recipe_path.to_path_buf(),
        message,
    };
    registry
        .check(&data.dataset, &data.train_split)
        .and_then(|_| registry.check(&data.dataset, &data.val_split))
        .map_err(|e| recipe_error(format!("[data]: {e}")))?;

    if run_dir.join(NGRAM_FILE).exists() {
        return Err(ZooError::RunDir {
            path: run_dir.clone(),
            message: "already holds a counted n-gram model: use --run-dir to count elsewhere"
                .into(),
        });
    }
    let resume_epoch = resume_epoch(&run_dir, options.resume)?;
    if recipe.task.is_seq2seq() {
        return crate::seq2seq::train(&recipe, recipe_path, options, run_dir, resume_epoch);
    }
    if recipe.task.is_encoder() {
        return crate::encoder::train(&recipe, recipe_path, options, run_dir, resume_epoch).map(
            |report| TrainReport {
                seconds: started.elapsed().as_secs_f64(),
                ..report
            },
        );
    }

    let train_text = registry.load_split(&data.dataset, &data.train_split, &options.data_dir)?;
    let val_text = registry.load_split(&data.dataset, &data.val_split, &options.data_dir)?;

    std::fs::create_dir_all(&run_dir).map_err(|e| ZooError::io(&run_dir, e))?;
    let (tokenizer, config) = match resume_epoch {
        Some(_) => {
            let config = resumed_model(&run_dir, &recipe, recipe_path, |wanted, stored| {
                wanted.set_vocab_size(stored.vocab_size());
                Ok(())
            })?;
            let tokenizer = ZooTokenizer::load(&run_dir.join(TOKENIZER_FILE))?;
            (tokenizer, config)
        }
        None => {
            let spec = recipe.tokenizer_spec().map_err(recipe_error)?;
            let tokenizer = ZooTokenizer::build(spec, &train_text)?;
            let mut config = recipe.model_config().map_err(recipe_error)?;
            if config.vocab_size() == 0 {
                config.set_vocab_size(tokenizer.vocab_size());
            }
            if config.vocab_size() < tokenizer.vocab_size() {
                return Err(recipe_error(format!(
                    "[model] vocab_size = {} is smaller than the tokenizer's {} tokens",
                    config.vocab_size(),
                    tokenizer.vocab_size()
                )));
            }
            config
                .validate()
                .map_err(|e| recipe_error(format!("[model]: {e}")))?;
            tokenizer.save(&run_dir.join(TOKENIZER_FILE))?;
            write_run_recipe(&run_dir, &recipe, &config)?;
            (tokenizer, config)
        }
    };

    let train_tokens = Arc::new(tokenizer.encode(&train_text)?);
    let val_tokens = Arc::new(tokenizer.encode(&val_text)?);
    let train_tokens_count = train_tokens.len();
    if let ModelConfig::Ngram(ngram) = &config {
        return count_ngrams(
            &recipe,
            ngram,
            &run_dir,
            &tokenizer,
            [&train_tokens, &val_tokens],
        )
        .map(|report| TrainReport {
            seconds: started.elapsed().as_secs_f64(),
            ..report
        });
    }
    let t = &recipe.training;
    let seq_len = recipe.sequence_len(&config);
    let micro_batches = t.grad_accumulation;
    let (train_windows, val_windows, steps_per_pass) = match &config {
        ModelConfig::Gpt(_) => {
            let train =
                RandomWindows::new(train_tokens.clone(), seq_len, t.batch_size, recipe.seed)
                    .map_err(|e| recipe_error(format!("training split: {e}")))?;
            // A validation seed of its own, fixed for the run, so every validation sees the
            // same batches.
            let val =
                RandomWindows::new(val_tokens, seq_len, t.batch_size, recipe.seed ^ 0x76_616C)
                    .map_err(|e| recipe_error(format!("validation split: {e}")))?;
            let per_step = t.batch_size * seq_len * micro_batches;
            (
                Windows::Random(train),
                Windows::Random(val),
                train_tokens.len() / per_step,
            )
        }
        ModelConfig::Ngram(_) => unreachable!("n-gram models are counted above"),
        ModelConfig::Bert(_) | ModelConfig::Transformer(_) | ModelConfig::RnnAttention(_) => {
            unreachable!("encoder and encoder-decoder tasks train in their own modules")
        }
        ModelConfig::Rnn(_) => {
            let train = Streams::new(train_tokens.clone(), t.batch_size, seq_len)
                .map_err(|e| recipe_error(format!("training split: {e}")))?;
            let val = Streams::new(val_tokens, recipe.eval_batch_size(), seq_len)
                .map_err(|e| recipe_error(format!("validation split: {e}")))?;
            let per_pass = train.windows().div_ceil(micro_batches);
            (Windows::Streams(train), Windows::Streams(val), per_pass)
        }
    };
    let cost = StepCost {
        tokens: (t.batch_size * seq_len * micro_batches) as f64,
        flops_per_token: config.size().train_flops_per_token as f64,
    };
    let budget = Budget::of(&recipe, steps_per_pass, cost).map_err(recipe_error)?;

    let Plan {
        total_steps,
        epochs,
        start_epoch,
    } = budget.plan(options.stop_after_steps, resume_epoch, &run_dir)?;

    let device = options.device.clone();
    device.seed(recipe.seed);
    // Parameters must be created on the autodiff device to be tracked.
    let model = Lm::new(
        LmModel::init(&config, &device.clone().autodiff())
            .map_err(|e| recipe_error(format!("[model]: {e}")))?,
        micro_batches,
        recipe.optimizer.grad_clip,
    );
    if let Some(epoch) = resume_epoch {
        check_checkpoint(&run_dir, epoch, &model)?;
    }

    let optimizer = build_optimizer(&recipe);
    let mut schedule = LrSchedule::new(
        &recipe.schedule,
        recipe.optimizer.lr,
        budget.total_steps,
        config.width(),
    );
    let mut metric_logger =
        JsonlMetricLogger::new(run_dir.join(METRICS_FILE), budget, resume_epoch)?;
    if let Some(divisor) = recipe.schedule.plateau_divisor {
        let mut plateau = Plateau::new(divisor);
        // A resumed run replays the validations it has had, so it anneals exactly as an
        // uninterrupted one.
        for (epoch, loss) in validation_losses(&run_dir) {
            if epoch <= start_epoch {
                plateau.observe(loss);
            }
        }
        let plateau: SharedPlateau = Arc::new(Mutex::new(plateau));
        schedule = schedule.with_plateau(plateau.clone());
        metric_logger = metric_logger.with_plateau(plateau);
    }
    let learner = Learner::new(model, optimizer, schedule);

    let train_loader = WindowLoader::training(
        train_windows,
        budget.steps_per_epoch * micro_batches,
        total_steps * micro_batches,
        start_epoch,
        &device,
    );
    let val_loader = WindowLoader::validation(val_windows, t.eval_batches, &device);

    let training = SupervisedTraining::new(&run_dir, Arc::new(train_loader), Arc::new(val_loader))
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .metric_train_numeric(Perplexity::default())
        .metric_valid_numeric(Perplexity::default())
        .metric_train_numeric(LearningRateMetric::new());
    let training = with_run_settings(
        training,
        &recipe,
        &run_dir,
        epochs,
        resume_epoch,
        metric_logger,
        LineRenderer::new(budget, t.batch_size * seq_len),
    );
    println!(
        "training {} ({} parameters) on {} tokens of '{}' for {} steps of {} x {} tokens{}; run directory {}",
        recipe.name(),
        config.size().total,
        train_tokens_count,
        data.dataset,
        budget.total_steps,
        t.batch_size * micro_batches,
        seq_len,
        if micro_batches > 1 {
            format!(" ({micro_batches} micro-batches)")
        } else {
            String::new()
        },
        run_dir.display()
    );
    let result = training.launch(learner);
    if let Some(error) = &result.error {
        return Err(ZooError::Training(error.to_string()));
    }
    if total_steps == budget.total_steps {
        RunSummary::new(&recipe, config.size(), cost, total_steps, &run_dir).save(&run_dir)?;
    }

    let sample = if recipe.sample.tokens > 0 {
        let model = RunModel::Neural(result.model.model.clone().fork(&device));
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
    Ok(TrainReport {
        val_loss: last_val_loss(&run_dir),
        run_dir,
        steps: total_steps,
        seconds: started.elapsed().as_secs_f64(),
        sample,
    })
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
) -> Result<TrainReport, ZooError> {
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
    Ok(TrainReport {
        val_loss: Some(loss),
        run_dir: run_dir.to_path_buf(),
        steps: 0,
        seconds: started.elapsed().as_secs_f64(),
        sample,
    })
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

/// Loads the last model checkpoint once, before training, so a damaged file is reported
/// clearly instead of failing inside burn-train.
pub(crate) fn check_checkpoint<M: Module>(
    run_dir: &Path,
    epoch: usize,
    model: &M,
) -> Result<(), ZooError> {
    let path = model_checkpoint(run_dir, epoch);
    model
        .clone()
        .try_load_file(&path)
        .map_err(|e| ZooError::Checkpoint {
            path: path.clone(),
            message: format!(
                "cannot be loaded ({e}); delete it to resume from an earlier checkpoint"
            ),
        })?;
    for kind in ["optim", "scheduler"] {
        let path = run_dir
            .join(CHECKPOINT_DIR)
            .join(format!("{kind}-{epoch}.bpk"));
        let valid = match kind {
            "optim" => burn::optim::OptimizerRecord::load(&path).is_ok(),
            _ => burn::lr_scheduler::LrSchedulerRecord::load(&path).is_ok(),
        };
        if !valid {
            return Err(ZooError::Checkpoint {
                path,
                message: "cannot be loaded; delete this epoch's files to resume from an earlier checkpoint".into(),
            });
        }
    }
    Ok(())
}

pub(crate) fn write_run_recipe(
    run_dir: &Path,
    recipe: &Recipe,
    config: &ModelConfig,
) -> Result<(), ZooError> {
    let mut resolved = recipe.clone();
    resolved.model = config.to_spec();
    let text = toml::to_string_pretty(&resolved).expect("recipes serialise to TOML");
    let path = run_dir.join(RECIPE_FILE);
    std::fs::write(
        &path,
        format!("# Resolved by zoo train: the preset is expanded.\n{text}"),
    )
    .map_err(|e| ZooError::io(&path, e))
}

pub(crate) fn load_run_recipe(run_dir: &Path) -> Result<Recipe, ZooError> {
    let path = run_dir.join(RECIPE_FILE);
    if !path.is_file() {
        return Err(ZooError::RunDir {
            path: run_dir.to_path_buf(),
            message: format!("has no {RECIPE_FILE}: is it a run directory made by zoo train?"),
        });
    }
    Recipe::load(&path)
}

/// The lines of the run's metrics log (none if it has none yet).
pub fn read_metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join(METRICS_FILE))
        .map(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The optimiser step an epoch ended on, from the metrics log.
pub(crate) fn steps_at_epoch(run_dir: &Path, epoch: usize) -> Option<usize> {
    read_metrics(run_dir)
        .into_iter()
        .find(|v| v["epoch"].as_u64() == Some(epoch as u64))
        .and_then(|v| v["step"].as_u64())
        .map(|s| s as usize)
}

/// `(epoch, loss)` of every validation in the metrics log, in order.
fn validation_losses(run_dir: &Path) -> Vec<(usize, f64)> {
    read_metrics(run_dir)
        .into_iter()
        .filter(|v| v["split"] == "valid")
        .filter_map(|v| Some((v["epoch"].as_u64()? as usize, v["loss"].as_f64()?)))
        .collect()
}

pub(crate) fn last_val_loss(run_dir: &Path) -> Option<f64> {
    validation_losses(run_dir).last().map(|v| v.1)
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

/// The model config of the run being resumed, after checking that the recipe asks for the same
/// model: `fit` first gives the recipe's config what the run decided itself (vocabulary sizes).
pub(crate) fn resumed_model(
    run_dir: &Path,
    recipe: &Recipe,
    recipe_path: &Path,
    fit: impl FnOnce(&mut ModelConfig, &ModelConfig) -> Result<(), String>,
) -> Result<ModelConfig, ZooError> {
    let run_error = |message: String| ZooError::RunDir {
        path: run_dir.to_path_buf(),
        message,
    };
    let recipe_error = |message: String| ZooError::Recipe {
        path: recipe_path.to_path_buf(),
        message,
    };
    let stored = load_run_recipe(run_dir)?
        .model_config()
        .map_err(run_error)?;
    let mut wanted = recipe.model_config().map_err(recipe_error)?;
    fit(&mut wanted, &stored).map_err(recipe_error)?;
    if wanted != stored {
        return Err(run_error(
            "the recipe's [model] differs from the run's recipe.toml; resume with the run's recipe or start a new run".into(),
        ));
    }
    Ok(stored)
}

/// The epoch of the checkpoint to load: `epoch` if the run has it, else the last one.
pub(crate) fn select_checkpoint(run_dir: &Path, epoch: Option<usize>) -> Result<usize, ZooError> {
    let epochs = checkpoint_epochs(run_dir);
    let run_error = |message: String| ZooError::RunDir {
        path: run_dir.to_path_buf(),
        message,
    };
    match epoch {
        Some(e) if epochs.contains(&e) => Ok(e),
        Some(e) => Err(run_error(format!(
            "has no checkpoint for epoch {e}; it has {epochs:?}"
        ))),
        None => epochs
            .last()
            .copied()
            .ok_or_else(|| run_error("has no checkpoint yet".into())),
    }
}

/// Loads `run_dir`'s model from its last checkpoint (or `epoch`).
pub fn load_run(
    run_dir: &Path,
    epoch: Option<usize>,
    device: &Device,
) -> Result<LoadedRun, ZooError> {
    if !run_dir.is_dir() {
        return Err(ZooError::RunDir {
            path: run_dir.to_path_buf(),
            message: "does not exist".into(),
        });
    }
    let recipe = load_run_recipe(run_dir)?;
    let config = recipe.model_config().map_err(|message| ZooError::RunDir {
        path: run_dir.to_path_buf(),
        message,
    })?;
    let tokenizer = ZooTokenizer::load(&run_dir.join(TOKENIZER_FILE))?;
    if let ModelConfig::Ngram(_) = config {
        let path = run_dir.join(NGRAM_FILE);
        if !path.is_file() {
            return Err(ZooError::RunDir {
                path: run_dir.to_path_buf(),
                message: format!("has no {NGRAM_FILE}: the counting did not finish"),
            });
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
    let path = model_checkpoint(run_dir, epoch);
    let model = Lm::new(
        LmModel::init(&config, device).map_err(|message| ZooError::RunDir {
            path: run_dir.to_path_buf(),
            message,
        })?,
        1,
        0.0,
    )
    .try_load_file(&path)
    .map_err(|e| ZooError::Checkpoint {
        path: path.clone(),
        message: format!("cannot be loaded: {e}"),
    })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(budget: &str) -> Recipe {
        Recipe::parse(&format!(
            "[model]\npreset = \"gpt-nano\"\n[tokenizer]\nkind = \"char\"\n[data]\ndataset = \"embedded\"\n[training]\nbatch_size = 4\neval_interval = 10\n{budget}\n"
        ))
        .unwrap()
    }

    #[test]
    fn token_and_flops_budgets_buy_the_whole_steps_that_fit() {
        let cost = StepCost {
            tokens: 1000.0,
            flops_per_token: 3.0,
        };
        // 3,000 FLOPs per step: 10,000 buys 3 steps (9,000), not 4.
        let b = Budget::of(&recipe("flops = 1e4"), 0, cost).unwrap();
        assert_eq!((b.total_steps, b.steps_per_epoch), (3, 3));
        let b = Budget::of(&recipe("flops = 3e4"), 0, cost).unwrap();
        assert_eq!(b.total_steps, 10);
        let b = Budget::of(&recipe("tokens = 25999"), 0, cost).unwrap();
        assert_eq!((b.total_steps, b.steps_per_epoch), (25, 10));
        assert_eq!((b.steps_at_epoch(2), b.steps_at_epoch(3)), (20, 25));
        let e = Budget::of(&recipe("flops = 2999"), 0, cost).unwrap_err();
        assert!(
            e.contains("training.flops") && e.contains("buys no step"),
            "{e}"
        );
        let b = Budget::of(&recipe("epochs = 2"), 7, cost).unwrap();
        assert_eq!(b.total_steps, 14);
    }
}
