//! The dispatch, at the top of `zoo-train`: which task trains a recipe, and which loads and
//! evaluates a run directory. The only place that maps tasks to their modules.

use crate::ZooError;
use crate::recipe::{Recipe, Task};
use crate::runtime::metrics::LabelReport;
use crate::runtime::parallel::resolve_devices;
use crate::runtime::run_dir::{
    HF_CONFIG_FILE, is_hugging_face_dir, last_val_loss, load_run_recipe, read_hf_config,
    resume_epoch,
};
use crate::runtime::session::Session;
pub use crate::runtime::session::{TrainOptions, TrainReport};
use crate::tasks::encoder::predict::{PredictInput, evaluate_encoder, predict};
use crate::tasks::encoder::run::EncoderRun;
use crate::tasks::lm::run::EvalReport;
use crate::tasks::seq2seq::decode::{DecodingOptions, Seq2SeqEvalReport, evaluate_seq2seq};
use crate::tasks::seq2seq::run::Seq2SeqRun;
use crate::tasks::{encoder, lm, seq2seq};
use burn::tensor::Device;
use std::path::Path;
use std::time::Instant;
use zoo_text::{DataDir, DatasetRegistry};

/// The family of tasks a recipe or run belongs to: which task module trains and loads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// Causal language models (GPT, RNN, n-gram): `tasks::lm`.
    LanguageModel,
    /// BERT encoders: `tasks::encoder`.
    Encoder,
    /// Encoder-decoders: `tasks::seq2seq`.
    EncoderDecoder,
}

impl RunKind {
    /// The kind of run `recipe` trains: by its task, and for a classifier, its architecture (a
    /// GPT classifier is a language model's run).
    pub fn of(recipe: &Recipe) -> Self {
        match recipe.task {
            Task::Classification if recipe.model.arch == "gpt" => RunKind::LanguageModel,
            // A task model on a biLM's features reads a language model's run.
            _ if recipe.model.arch == "elmo" => RunKind::LanguageModel,
            task => Self::of_task(task),
        }
    }

    /// The kind of run that trains with `task` (a BERT's, for classification).
    fn of_task(task: Task) -> Self {
        match task {
            Task::CausalLm => RunKind::LanguageModel,
            Task::MaskedLm
            | Task::Classification
            | Task::TokenClassification
            | Task::SpanQa
            | Task::Distillation => RunKind::Encoder,
            Task::Translation | Task::SpanCorruption => RunKind::EncoderDecoder,
        }
    }

    /// The kind of run `run_dir` holds, from its recipe (or, for a Hugging Face model
    /// directory, its `config.json`).
    pub fn of_run(run_dir: &Path) -> Result<Self, ZooError> {
        if !run_dir.is_dir() {
            return Err(ZooError::run_dir(run_dir, "does not exist"));
        }
        if is_hugging_face_dir(run_dir) {
            return Self::of_hugging_face(run_dir);
        }
        Ok(Self::of(&load_run_recipe(run_dir)?))
    }

    /// The kind of model in a Hugging Face directory, from its `config.json`'s `model_type`.
    pub fn of_hugging_face(dir: &Path) -> Result<Self, ZooError> {
        match read_hf_config(dir)?["model_type"].as_str() {
            Some("bert") => Ok(RunKind::Encoder),
            Some("gpt2" | "llama") => Ok(RunKind::LanguageModel),
            Some("t5" | "bart") => Ok(RunKind::EncoderDecoder),
            other => Err(ZooError::run_dir(
                dir,
                format!(
                    "{HF_CONFIG_FILE} has model_type {}: the zoo imports \"bert\", \"gpt2\", \"llama\", \"t5\" and \"bart\"",
                    other.map_or("missing".into(), |t| format!("\"{t}\""))
                ),
            )),
        }
    }
}

/// Trains the recipe at `recipe_path` (or resumes it, with `options.resume`).
pub fn train(recipe_path: &Path, options: &TrainOptions) -> Result<TrainReport, ZooError> {
    let started = Instant::now();
    let mut recipe = Recipe::load(recipe_path)?;
    let (options, devices) = &split_across_devices(&mut recipe, recipe_path, options)?;
    let run_dir = options
        .run_dir
        .clone()
        .unwrap_or_else(|| recipe.default_run_dir());
    let registry = DatasetRegistry::builtin();
    let data = &recipe.data;
    registry
        .check(&data.dataset, &data.train_split)
        .and_then(|_| registry.check(&data.dataset, &data.val_split))
        .map_err(|e| ZooError::recipe(recipe_path, format!("[data]: {e}")))?;
    let session = Session {
        recipe: &recipe,
        recipe_path,
        resume_epoch: resume_epoch(&run_dir, options.resume)?,
        run_dir,
        options,
        devices: devices.clone(),
    };
    if session.resume_epoch.is_some()
        && let Ok(run_recipe) = load_run_recipe(&session.run_dir)
        && run_recipe.training.devices != recipe.training.devices
    {
        let shown = |d: &[String]| match d {
            [] => "one device".to_string(),
            d => d.join(","),
        };
        println!(
            "note: the run trained on {} and resumes on {}: its steps stay the same size, but its batches are cut differently from here on",
            shown(&run_recipe.training.devices),
            shown(&recipe.training.devices)
        );
    }
    let outcome = match RunKind::of(&recipe) {
        RunKind::LanguageModel => lm::train(&session)?,
        RunKind::Encoder => encoder::train(&session)?,
        RunKind::EncoderDecoder => seq2seq::train(&session)?,
    };
    Ok(TrainReport {
        val_loss: last_val_loss(&session.run_dir),
        run_dir: session.run_dir,
        steps: outcome.steps,
        seconds: started.elapsed().as_secs_f64(),
        sample: outcome.sample,
    })
}

/// The devices `recipe` trains on: `--devices` (recorded in the recipe in place of its own
/// `training.devices`), else the recipe's, else `--device` alone; and the options with the
/// first of them as the device. An error names a device that does not resolve, or a batch that
/// does not split evenly.
fn split_across_devices(
    recipe: &mut Recipe,
    recipe_path: &Path,
    options: &TrainOptions,
) -> Result<(TrainOptions, Vec<Device>), ZooError> {
    let named = |names: &[String], e: String| match &options.devices {
        Some(_) => ZooError::Usage(format!("--devices {}: {e}", names.join(","))),
        None => ZooError::recipe(recipe_path, format!("training.devices: {e}")),
    };
    if let Some(names) = &options.devices {
        recipe.training.devices = names.clone();
    }
    let names = &recipe.training.devices;
    if names.is_empty() {
        return Ok((options.clone(), vec![options.device.clone()]));
    }
    recipe.check_batch_split().map_err(|e| named(names, e))?;
    let devices = resolve_devices(names, options.resolve_device).map_err(|e| named(names, e))?;
    let options = TrainOptions {
        device: devices[0].clone(),
        ..options.clone()
    };
    Ok((options, devices))
}

/// What `zoo eval` found, by kind of run.
pub enum Evaluation {
    /// Loss and perplexity over every token of the split.
    LanguageModel(EvalReport),
    /// Loss, accuracy (and F1) over the split: encoders, GPT classifiers.
    Labels(LabelReport),
    /// BLEU and exact match of the split's decoded outputs (recorded in `scores.jsonl`).
    EncoderDecoder(Seq2SeqEvalReport),
}

/// Scores the run in `run_dir` (its last checkpoint, or `checkpoint`'s) over `split`; an
/// encoder-decoder decodes as its `[decoding]` says, changed by `decoding`.
pub fn evaluate(
    run_dir: &Path,
    split: &str,
    checkpoint: Option<usize>,
    decoding: DecodingOptions,
    data_dir: &DataDir,
    device: &Device,
) -> Result<Evaluation, ZooError> {
    Ok(match RunKind::of_run(run_dir)? {
        // A GPT classifier or an ELMo task model (a Hugging Face directory is a language
        // model).
        RunKind::LanguageModel
            if !is_hugging_face_dir(run_dir)
                && load_run_recipe(run_dir)?.task != Task::CausalLm =>
        {
            let run = lm::LabelRun::load(run_dir, checkpoint, device)?;
            Evaluation::Labels(run.evaluate(split, data_dir)?)
        }
        RunKind::LanguageModel => {
            let run = lm::load(run_dir, checkpoint, device)?;
            Evaluation::LanguageModel(lm::run::evaluate(&run, split, data_dir)?)
        }
        RunKind::Encoder => {
            let run = encoder::load(run_dir, checkpoint, device)?;
            Evaluation::Labels(evaluate_encoder(&run, split, data_dir)?)
        }
        RunKind::EncoderDecoder => {
            let run = seq2seq::load(run_dir, checkpoint, device)?;
            let spec = decoding.apply(&run.recipe.decoding)?;
            let report = evaluate_seq2seq(&run, split, data_dir, &spec)?;
            report.record(run_dir)?;
            Evaluation::EncoderDecoder(report)
        }
    })
}

/// A run `zoo predict` applies: an encoder, or a language-model run that predicts labels.
pub enum Predictor {
    /// A BERT run (or Hugging Face BERT directory): labels, tags, spans or masked tokens.
    Encoder(EncoderRun),
    /// A GPT classifier, or a classifier or tagger on ELMo features.
    Labels(lm::LabelRun),
}

impl Predictor {
    /// The run in `run_dir`, for `zoo predict`.
    pub fn load(run_dir: &Path, device: &Device) -> Result<Self, ZooError> {
        if let Ok(RunKind::LanguageModel) = RunKind::of_run(run_dir)
            && !is_hugging_face_dir(run_dir)
            && load_run_recipe(run_dir)?.task != Task::CausalLm
        {
            return Ok(Predictor::Labels(lm::LabelRun::load(
                run_dir, None, device,
            )?));
        }
        encoder_run(run_dir, device).map(Predictor::Encoder)
    }

    /// What the run makes of `input`, as `zoo predict` prints it.
    pub fn predict(&self, input: &PredictInput) -> Result<String, ZooError> {
        match self {
            Predictor::Encoder(run) => predict(run, input),
            // A GPT classifier reads a pair as its two parts joined by a tab.
            Predictor::Labels(run) => match &input.context {
                Some(second) => run.predict(&format!("{}\t{second}", input.text)),
                None => run.predict(&input.text),
            },
        }
    }
}

/// The encoder run in `run_dir` (or a Hugging Face BERT directory), for `zoo predict` and
/// `zoo embed`.
pub fn encoder_run(run_dir: &Path, device: &Device) -> Result<EncoderRun, ZooError> {
    match RunKind::of_run(run_dir) {
        Ok(RunKind::Encoder) => encoder::load(run_dir, None, device),
        // A Hugging Face directory the zoo cannot read says why.
        Err(e) if is_hugging_face_dir(run_dir) => Err(e),
        _ => Err(ZooError::Usage(format!(
            "{} is not a BERT run: `zoo predict` and `zoo embed` apply encoders; use `zoo generate` for language models",
            run_dir.display()
        ))),
    }
}

/// The encoder-decoder run in `run_dir` (its last checkpoint, or `checkpoint`'s), for
/// `zoo translate`.
pub fn seq2seq_run(
    run_dir: &Path,
    checkpoint: Option<usize>,
    device: &Device,
) -> Result<Seq2SeqRun, ZooError> {
    match RunKind::of_run(run_dir) {
        Ok(RunKind::EncoderDecoder) => seq2seq::load(run_dir, checkpoint, device),
        Err(e) if is_hugging_face_dir(run_dir) => Err(e),
        _ => Err(ZooError::Usage(format!(
            "{} is not an encoder-decoder run: `zoo translate` needs one (task = \"translation\" or \"span-corruption\")",
            run_dir.display()
        ))),
    }
}
