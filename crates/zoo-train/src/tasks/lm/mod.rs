//! The language-model task: causal LM training of a GPT or a recurrent LM (or counting an
//! n-gram model), then loading a run to evaluate it over a split or sample from it.
//!
//! One burn-train epoch is `eval_interval` optimiser steps followed by a validation. A counted
//! n-gram run keeps its counts in `ngram.bin` and writes one validation line to the metrics log,
//! as a neural run's validations.

pub mod classify;
pub mod data;
pub mod decode;
pub mod elmo;
pub mod hf;
pub mod model;
pub mod run;
pub mod score;

use crate::ZooError;
use crate::models::{ModelConfig, NgramConfig};
use crate::recipe::Recipe;
use crate::runtime::budget::{Budget, StepCost};
use crate::runtime::logging::LineRenderer;
use crate::runtime::lora::{self, Base};
use crate::runtime::metrics::{LabelReport, Perplexity};
use crate::runtime::run_dir::{
    IMPORTED_DATASET, METRICS_FILE, TOKENIZER_FILE, TRAINED, is_hugging_face_dir, load_checkpoint,
    load_run_config, locate_model, read_labels, select_checkpoint, write_run_file,
    write_run_recipe,
};
use crate::runtime::session::{Batches, Session, TaskOutcome, TrainingTask};
use crate::runtime::step::GradientStep;
use burn::module::Module;
use burn::prelude::*;
use burn::train::SupervisedTraining;
use data::Windows;
use decode::continue_text;
use hf::load_hf_lm;
use model::{Lm, LmModel};
use run::{LoadedRun, NGRAM_FILE, RunModel, load_run, sample_text};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use zoo_text::{DataDir, DatasetRegistry, KneserNey, RandomWindows, Streams, ZooTokenizer};

/// A language-model run directory, or a Hugging Face GPT-2 directory, loaded onto `device`
/// (its last checkpoint, or `epoch`'s).
pub fn load(dir: &Path, epoch: Option<usize>, device: &Device) -> Result<LoadedRun, ZooError> {
    if is_hugging_face_dir(dir) {
        return load_hf_lm(dir, IMPORTED_DATASET, device);
    }
    load_run(dir, epoch, device)
}

/// A trained run that predicts labels (a GPT classifier, an ELMo task model), loaded.
pub struct LabelledRun<M> {
    /// Its resolved recipe.
    pub recipe: Recipe,
    /// Its tokenizer.
    pub tokenizer: ZooTokenizer,
    /// The model, on the plain device.
    pub model: M,
    /// Label names in id order.
    pub labels: Vec<String>,
    /// The checkpoint's epoch.
    pub epoch: usize,
}

impl<M> LabelledRun<M> {
    /// The run in `run_dir` from its last checkpoint (or `epoch`'s): the model `build` makes of
    /// the run's recipe, config and label count (an error if the config is not its kind), with
    /// the checkpoint's weights.
    fn load(
        run_dir: &Path,
        epoch: Option<usize>,
        build: impl FnOnce(&Recipe, ModelConfig, usize) -> Result<M, String>,
    ) -> Result<Self, ZooError>
    where
        M: Module,
    {
        let (recipe, config) = load_run_config(run_dir)?;
        let labels = read_labels(run_dir)?;
        let model =
            build(&recipe, config, labels.len()).map_err(|e| ZooError::run_dir(run_dir, e))?;
        let tokenizer = ZooTokenizer::load(&run_dir.join(TOKENIZER_FILE))?;
        let epoch = select_checkpoint(run_dir, epoch)?;
        Ok(Self {
            model: load_checkpoint(run_dir, epoch, model)?,
            recipe,
            tokenizer,
            labels,
            epoch,
        })
    }

    /// The same run with its model mapped (the model out of its training wrapper).
    fn map<N>(self, f: impl FnOnce(M) -> N) -> LabelledRun<N> {
        LabelledRun {
            model: f(self.model),
            recipe: self.recipe,
            tokenizer: self.tokenizer,
            labels: self.labels,
            epoch: self.epoch,
        }
    }
}

/// A run of this task module that predicts labels, loaded.
// One per command, never in a collection: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum LabelRun {
    /// A GPT classifier.
    Gpt(classify::ClassifierRun),
    /// A classifier or tagger on ELMo features.
    Elmo(elmo::ElmoRun),
}

impl LabelRun {
    /// The run in `run_dir` (a GPT classifier or a task model on ELMo features), from its last
    /// checkpoint (or `epoch`'s).
    pub fn load(run_dir: &Path, epoch: Option<usize>, device: &Device) -> Result<Self, ZooError> {
        Ok(match load_run_config(run_dir)?.1 {
            ModelConfig::Elmo(_) => LabelRun::Elmo(elmo::load(run_dir, epoch, device)?),
            _ => LabelRun::Gpt(classify::load(run_dir, epoch, device)?),
        })
    }

    /// Scores the run on a whole split.
    pub fn evaluate(&self, split: &str, data_dir: &DataDir) -> Result<LabelReport, ZooError> {
        match self {
            LabelRun::Gpt(run) => classify::evaluate(run, split, data_dir),
            LabelRun::Elmo(run) => elmo::evaluate(run, split, data_dir),
        }
    }

    /// `zoo predict`'s line for `text`.
    pub fn predict(&self, text: &str) -> Result<String, ZooError> {
        match self {
            LabelRun::Gpt(run) => classify::predict(run, text),
            LabelRun::Elmo(run) => elmo::predict(run, text),
        }
    }
}

/// The config of the GPT or recurrent LM in `dir` (a run, or a Hugging Face GPT-2 or Llama
/// directory), weights unread.
fn pretrained_config(dir: &Path) -> Result<ModelConfig, ZooError> {
    if is_hugging_face_dir(dir) {
        return Ok(ModelConfig::Gpt(hf::read_config(dir)?.config));
    }
    match load_run_config(dir)? {
        (_, config @ (ModelConfig::Gpt(_) | ModelConfig::Rnn(_))) => Ok(config),
        _ => Err(ZooError::run_dir(
            dir,
            "is not a GPT or recurrent language-model run: init_from needs one",
        )),
    }
}

/// `model` (of this run's config, so with its dropout) with the weights of `init`, the run it
/// starts from (found at `from`).
fn start_from(model: LmModel, init: LoadedRun, from: &Path) -> Result<LmModel, ZooError> {
    let RunModel::Neural(weights) = init.model else {
        unreachable!("pretrained_config refuses n-gram runs");
    };
    model
        .try_load_record(weights.into_record())
        .map_err(|e| ZooError::run_dir(from, e.to_string()))
}

/// The weights of a LoRA run's base, which its fingerprint covers.
fn base_weights(base: &LoadedRun) -> burn::store::ModuleRecord {
    match &base.model {
        RunModel::Neural(model) => model.clone().into_record(),
        RunModel::Ngram(_) => unreachable!("pretrained_config refuses n-gram runs"),
    }
}

/// The base of the LoRA run in `run_dir`, loaded onto `device` and checked.
pub(crate) fn load_base(run_dir: &Path, device: &Device) -> Result<(LoadedRun, PathBuf), ZooError> {
    lora::load_base(run_dir, |dir, epoch| load(dir, epoch, device), base_weights)
}

/// `model` of the LoRA run in `run_dir`: its base's weights with the run's adapters attached
/// (loaded from a checkpoint after).
pub(crate) fn adapted_model(
    run_dir: &Path,
    recipe: &Recipe,
    model: LmModel,
    device: &Device,
) -> Result<LmModel, ZooError> {
    let (base, from) = load_base(run_dir, device)?;
    let model = start_from(model, base, &from)?;
    lora::attach(model, &recipe.finetune, &recipe.lora_targets())
        .map_err(|e| ZooError::run_dir(run_dir, e))
}

/// Trains a language-model recipe (or counts an n-gram one, or fine-tunes a GPT classifier, or
/// trains a task model on a biLM's features) in `session`'s run directory.
pub fn train(session: &Session) -> Result<TaskOutcome, ZooError> {
    let (recipe, run_dir) = (session.recipe, session.run_dir.as_path());
    if recipe.model.arch == "elmo" {
        return elmo::train(session);
    }
    if recipe.task == crate::recipe::Task::Classification {
        return classify::train(session);
    }
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

    // The run this one starts from: its shape and tokenizer always, its weights (loaded where
    // training happens, after the session seeds the device) when starting afresh.
    let init_from = recipe.init_from.as_deref().map(locate_model).transpose()?;
    let pretrained = init_from.as_deref().map(pretrained_config).transpose()?;
    let autodiff = session.options.device.clone().autodiff();
    let init = match (&init_from, session.is_fresh()) {
        (Some(dir), true) => Some(load(dir, None, &autodiff)?),
        // A resumed LoRA run's checkpoints hold its adapters only: the base comes back too.
        (Some(_), false) if recipe.finetune.lora() => Some(load_base(run_dir, &autodiff)?.0),
        _ => None,
    };

    session.create_run_dir()?;
    let tokenizer = if let Some(init) = &init {
        init.tokenizer.clone()
    } else if session.is_fresh() {
        let spec = recipe
            .tokenizer_spec()
            .map_err(|e| session.recipe_error(e))?;
        ZooTokenizer::build(spec, &train_text)?
    } else {
        ZooTokenizer::load(&run_dir.join(TOKENIZER_FILE))?
    };
    let config = session.model_config(|config| {
        if let Some(pretrained) = &pretrained {
            recipe.take_pretrained_shape(config, pretrained)?;
        }
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
    // The sample comes after the whole training: a prompt the tokenizer cannot encode (a
    // character a character vocabulary never saw) is refused before it starts.
    if recipe.sample.tokens > 0 {
        tokenizer
            .encode(&recipe.sample.prompt)
            .map_err(|e| session.recipe_error(format!("[sample] prompt: {e}")))?;
    }
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
    // A training batch is split across the devices; validation reads whole ones.
    let (micro_batch_size, micro_batches) = (t.micro_batch_size(), t.micro_batches());
    let split_error = |split: &str, e: String| session.recipe_error(format!("{split} split: {e}"));
    let (train, valid, steps_per_pass) = match &config {
        ModelConfig::Gpt(_) => {
            let train =
                RandomWindows::new(train_tokens.clone(), seq_len, micro_batch_size, recipe.seed)
                    .map_err(|e| split_error("training", e))?;
            // A validation seed of its own, fixed for the run, so every validation sees the
            // same batches.
            let val =
                RandomWindows::new(val_tokens, seq_len, t.batch_size, recipe.seed ^ 0x76_616C)
                    .map_err(|e| split_error("validation", e))?;
            let per_step = micro_batch_size * seq_len * micro_batches;
            (
                Windows::Random(train),
                Windows::Random(val),
                train_tokens.len() / per_step,
            )
        }
        ModelConfig::Rnn(_) => {
            let train = Streams::new(train_tokens.clone(), micro_batch_size, seq_len)
                .map_err(|e| split_error("training", e))?;
            let val = Streams::new(val_tokens, recipe.eval_batch_size(), seq_len)
                .map_err(|e| split_error("validation", e))?;
            let per_pass = train.windows().div_ceil(micro_batches);
            (Windows::Streams(train), Windows::Streams(val), per_pass)
        }
        _ => unreachable!("validated causal-lm recipes are GPT, RNN or n-gram"),
    };
    let cost = StepCost {
        tokens: (micro_batch_size * seq_len * micro_batches) as f64,
        flops_per_token: config.size().train_flops_per_token as f64,
    };
    let task = LmTraining {
        session,
        config: &config,
        init: init.zip(init_from),
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
    /// The run whose weights this one starts from (fresh runs with `init_from`), and where it
    /// was found.
    init: Option<(LoadedRun, PathBuf)>,
    /// Tokens per training sequence.
    seq_len: usize,
    /// Tokens in the training split.
    train_tokens: usize,
}

impl TrainingTask for LmTraining<'_> {
    type Model = Lm;
    type Source = Windows;

    fn model(&mut self, device: &Device) -> Result<Lm, ZooError> {
        let (session, recipe) = (self.session, self.session.recipe);
        let mut model = LmModel::init(self.config, device)
            .map_err(|e| session.recipe_error(format!("[model]: {e}")))?;
        if let Some((init, from)) = self.init.take() {
            if recipe.finetune.lora() && session.is_fresh() {
                Base::new(&from, Some(init.epoch), base_weights(&init))?.write(&session.run_dir)?;
            }
            let arch = init.config.architecture().name;
            model = start_from(model, init, &from)?;
            println!(
                "loaded the {arch} from {} ({} parameters)",
                from.display(),
                model.num_params()
            );
        }
        if recipe.finetune.lora() {
            model = lora::attach(model, &recipe.finetune, &recipe.lora_targets())
                .map_err(|e| session.recipe_error(e))?;
            println!("{}", lora::adapted(&model));
        }
        let t = &recipe.training;
        if let Some(frozen) = t.frozen() {
            println!("{frozen}");
        }
        let model = model.freeze(t.freeze_embeddings, t.freeze_layers);
        Ok(Lm::new(model, GradientStep::of(recipe)))
    }

    fn metrics(&self, training: SupervisedTraining<Lm>) -> SupervisedTraining<Lm> {
        training
            .metric_train_numeric(Perplexity::default())
            .metric_valid_numeric(Perplexity::default())
    }

    fn progress(&self, budget: Budget) -> LineRenderer {
        LineRenderer::new(
            budget,
            self.session.recipe.training.micro_batch_size() * self.seq_len,
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
    write_run_file(&run_dir.join(METRICS_FILE), format!("{line}\n").as_bytes())?;
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
