//! The encoder task: BERT's masked-LM pretraining and fine-tuning on labelled data
//! (classification, token classification, span QA), starting from a pretraining run's encoder
//! (`init_from`) with optional frozen layers; then scoring and applying a run (`predict`).
//!
//! An encoder run directory holds what every run's does (recipe, tokenizer, checkpoints,
//! metrics) and, for classification and tagging, `labels.json`: the label names in id order.
//! Metrics: loss, accuracy (of masked tokens, or of labels), F1 for classification and tagging,
//! and next-sentence accuracy when pretraining on pairs.

pub mod data;
pub mod distill;
pub mod hf;
pub mod model;
pub mod predict;
pub mod run;

use crate::ZooError;
use crate::models::{ModelConfig, ModelSpec};
use crate::recipe::{Recipe, Task};
use crate::runtime::budget::Budget;
use crate::runtime::data::stream;
use crate::runtime::logging::LineRenderer;
use crate::runtime::lora::{self, Base};
use crate::runtime::metrics::{LabelMetric, LabelStatistic};
use crate::runtime::run_dir::{
    IMPORTED_DATASET, LABELS_FILE, TOKENIZER_FILE, TRAINED, is_hugging_face_dir, load_run_config,
    locate_model, read_labels, write_run_file, write_run_recipe,
};
use crate::runtime::session::{Batches, Session, TaskOutcome, TrainingTask};
use crate::runtime::step::GradientStep;
use burn::module::Module;
use burn::prelude::*;
use burn::train::SupervisedTraining;
use data::{Batching, EncoderExamples, SplitData};
use hf::{load_hf_encoder, read_config};
use model::{Encoder, MainLabels, NextSentenceLabels};
use run::{EncoderRun, bert_task, load_encoder_run};
use std::path::{Path, PathBuf};
use zoo_bert::{BertConfig, BertModel};
use zoo_text::{DatasetRegistry, ZooTokenizer};

/// Trains an encoder recipe in `session`'s run directory: its task, or with a `teacher`, the
/// teacher's task by distillation.
pub fn train(session: &Session) -> Result<TaskOutcome, ZooError> {
    let Some(teacher) = &session.recipe.teacher else {
        return train_task(session, None);
    };
    let dir = locate_model(teacher)?;
    let autodiff = session.options.device.clone().autodiff();
    let teacher = distill::load_teacher(&dir, |dir| load(dir, None, &autodiff))?;
    let recipe = distill::student_recipe(session.recipe, &teacher);
    recipe
        .check_masked_lm_data()
        .map_err(|e| session.recipe_error(format!("{e} (the teacher's task)")))?;
    let student = Session {
        recipe: &recipe,
        run_dir: session.run_dir.clone(),
        devices: session.devices.clone(),
        ..*session
    };
    train_task(&student, Some((teacher, dir)))
}

/// Trains `session`'s encoder recipe, as the student of `teacher` (found at its path) when
/// there is one.
fn train_task(
    session: &Session,
    teacher: Option<(EncoderRun, PathBuf)>,
) -> Result<TaskOutcome, ZooError> {
    let (recipe, run_dir) = (session.recipe, session.run_dir.as_path());
    let registry = DatasetRegistry::builtin();
    for extra in &recipe.data.extra_train {
        registry
            .check(extra, "train")
            .map_err(|e| session.recipe_error(format!("data.extra_train: {e}")))?;
    }
    let data = &recipe.data;
    let read_split = |split: &str, extra: &[String]| {
        SplitData::load(
            recipe.task,
            &registry,
            &data.dataset,
            split,
            extra,
            session.data_dir(),
        )
    };
    let train_data = read_split(&data.train_split, &data.extra_train)?;
    let val_data = read_split(&data.val_split, &[])?;
    // The run this one starts from (`init_from`, or for a student of
    // `distillation.init = "every-other-layer"`, half its teacher): its shape always, its
    // weights (loaded where training happens, before the session seeds the device, so loading
    // draws nothing from the run's random stream) when starting afresh.
    // A model id names a snapshot in the local Hugging Face cache.
    let student_start = teacher.as_ref().and_then(|(teacher, dir)| {
        distill::student_start(teacher, &recipe.distillation).map(|start| (start, dir.clone()))
    });
    let init_from = match &student_start {
        Some((_, dir)) => Some(dir.clone()),
        None => recipe.init_from.as_deref().map(locate_model).transpose()?,
    };
    let pretrained = match &student_start {
        Some((start, _)) => Some(start.config.clone()),
        None => init_from.as_deref().map(pretrained_config).transpose()?,
    };
    let autodiff = session.options.device.clone().autodiff();
    let init = match (&init_from, session.is_fresh()) {
        (Some(_), true) if student_start.is_some() => student_start.map(|(start, _)| start),
        (Some(dir), true) => Some(load(dir, None, &autodiff)?),
        // A resumed LoRA run's checkpoints hold its adapters and head only: the base comes
        // back too.
        (Some(_), false) if recipe.finetune.lora() => Some(load_base(run_dir, &autodiff)?.0),
        _ => None,
    };
    let starts_from = match (&teacher, &init_from) {
        (Some((_, dir)), Some(_)) => format!(
            "every other layer of the teacher {} (distillation.init)",
            dir.display()
        ),
        _ => format!(
            "init_from = {}",
            recipe
                .init_from
                .as_deref()
                .unwrap_or(Path::new(""))
                .display()
        ),
    };

    session.create_run_dir()?;
    let (tokenizer, labels) = if session.is_fresh() {
        let tokenizer = match (&init, &teacher) {
            (Some(init), _) => init.tokenizer.clone(),
            // A student reads what its teacher reads.
            (None, Some((teacher, _))) => teacher.tokenizer.clone(),
            (None, None) => ZooTokenizer::build(
                recipe
                    .tokenizer_spec()
                    .map_err(|e| session.recipe_error(e))?,
                &train_data.text(),
            )?,
        };
        tokenizer
            .special_ids()
            .map_err(|e| session.recipe_error(format!("[tokenizer]: {e}")))?;
        let labels = match &teacher {
            Some((teacher, dir)) => {
                distill::teacher_labels(teacher, dir, train_data.label_names())?
            }
            None => train_data.label_names(),
        };
        (tokenizer, labels)
    } else {
        (
            ZooTokenizer::load(&run_dir.join(TOKENIZER_FILE))?,
            read_labels(run_dir)?,
        )
    };
    let config = session.model_config(|config| {
        let ModelConfig::Bert(config) = config else {
            unreachable!("validated encoder recipes are BERT");
        };
        if let Some(pretrained) = &pretrained {
            let mismatches = shape_mismatches(&recipe.model, config, pretrained);
            if !mismatches.is_empty() {
                return Err(format!(
                    "[model] does not match {starts_from}: {}",
                    mismatches.join(", ")
                ));
            }
            // The pretrained shape, with this run's dropout and labels.
            *config = BertConfig {
                dropout: config.dropout,
                num_labels: config.num_labels,
                ..pretrained.clone()
            };
        }
        if config.vocab_size == 0 {
            config.vocab_size = tokenizer.vocab_size();
        }
        if config.vocab_size < tokenizer.vocab_size() {
            return Err(format!(
                "[model] vocab_size = {} is smaller than the tokenizer's {} tokens",
                config.vocab_size,
                tokenizer.vocab_size()
            ));
        }
        if !labels.is_empty() {
            match config.num_labels {
                0 => config.num_labels = labels.len(),
                n if n < labels.len() => {
                    return Err(format!(
                        "model.num_labels = {n} but the training split has {} labels: {}",
                        labels.len(),
                        labels.join(", ")
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    })?;
    let ModelConfig::Bert(bert) = &config else {
        unreachable!("validated encoder recipes are BERT");
    };
    if session.is_fresh() {
        tokenizer.save(&run_dir.join(TOKENIZER_FILE))?;
        write_run_recipe(run_dir, recipe, &config, TRAINED)?;
        if !labels.is_empty() {
            let text = serde_json::to_string(&labels).expect("strings serialise");
            write_run_file(&run_dir.join(LABELS_FILE), text.as_bytes())?;
        }
    }

    let special = tokenizer.special_ids()?;
    let t = &recipe.training;
    let seq_len = recipe.sequence_len(&config);
    let examples = |train: bool| -> Result<EncoderExamples, ZooError> {
        let (split, split_data) = if train {
            ("training", &train_data)
        } else {
            ("validation", &val_data)
        };
        let mut rng = stream(recipe.seed, 3, train as u64);
        let (inputs, targets) = split_data
            .encode(&tokenizer, &labels, recipe, seq_len, &mut rng)
            .map_err(|e| session.recipe_error(format!("{split} split: {e}")))?;
        // Text pairs (next-sentence prediction, span QA, pair classification) need a second
        // segment embedding.
        if let Some(&segment) = inputs.iter().flat_map(|i| &i.segments).max()
            && segment as usize >= bert.type_vocab_size
        {
            return Err(session.recipe_error(format!(
                "model.type_vocab_size = {}, but the {split} split's inputs are text pairs with segment id {segment}: set type_vocab_size = {}",
                bert.type_vocab_size,
                segment + 1
            )));
        }
        let seed = recipe.seed ^ if train { 0 } else { 0x76_616C };
        let batching = Batching {
            batch_size: t.loader_batch_size(train),
            seed,
            shuffle: train,
            special,
            vocab_size: bert.vocab_size,
        };
        EncoderExamples::new(inputs, targets, batching)
            .map_err(|e| session.recipe_error(format!("{split} split: {e}")))
    };
    let train_examples = examples(true)?;
    let val_examples = examples(false)?;

    let size = bert.size(seq_len);
    let (per_pass, mean_tokens) = (
        train_examples.batches_per_pass(),
        train_examples.mean_tokens(),
    );
    let batches = Batches::of_examples(
        train_examples,
        val_examples,
        per_pass,
        mean_tokens,
        size.train_flops_per_token,
        recipe,
    );
    let task = EncoderTraining {
        session,
        config: bert,
        init: init.zip(init_from),
        teacher: teacher
            .map(|(run, dir)| (distill::Teacher::new(run.model, &recipe.distillation), dir)),
        seq_len,
        parameters: size.total,
        examples: batches.train.len(),
    };
    let trained = session.train(task, batches, &config)?;
    Ok(TaskOutcome {
        steps: trained.steps,
        sample: None,
    })
}

/// An encoder's part of a training session.
struct EncoderTraining<'a> {
    session: &'a Session<'a>,
    config: &'a BertConfig,
    /// The run whose encoder this one starts from (fresh runs with `init_from`), and where it
    /// was found.
    init: Option<(EncoderRun, PathBuf)>,
    /// Distillation: the teacher, and where it was found.
    teacher: Option<(distill::Teacher, PathBuf)>,
    /// Longest input in tokens.
    seq_len: usize,
    /// Parameters of the encoder and pooler.
    parameters: usize,
    /// Training examples (inputs, for masked-LM).
    examples: usize,
}

impl EncoderTraining<'_> {
    /// `model` as training takes it: with its gradient step, and its teacher when distilling.
    fn encoder(&self, model: BertModel) -> Encoder {
        let recipe = self.session.recipe;
        let teacher = self.teacher.as_ref().map(|(teacher, dir)| {
            let d = &recipe.distillation;
            println!(
                "distilling {} from {} (frozen): temperature {}, alpha {}, beta {}, cosine {}",
                recipe.task.name(),
                dir.display(),
                d.temperature,
                d.alpha,
                d.beta,
                d.cosine
            );
            teacher.clone()
        });
        Encoder::new(model, GradientStep::of(recipe)).with_teacher(teacher)
    }

    /// Whether the task's labels are scored by F1 as well as accuracy.
    fn scores_f1(&self) -> bool {
        matches!(
            self.session.recipe.task,
            Task::Classification | Task::TokenClassification
        )
    }
}

impl TrainingTask for EncoderTraining<'_> {
    type Model = Encoder;
    type Source = EncoderExamples;

    fn model(&mut self, device: &Device) -> Result<Encoder, ZooError> {
        let recipe = self.session.recipe;
        let t = &recipe.training;
        let mut model = self
            .config
            .init(bert_task(recipe), device)
            .map_err(|e| self.session.recipe_error(format!("[model]: {e}")))?;
        if let Some((init, from)) = self.init.take() {
            if recipe.finetune.lora() && self.session.is_fresh() {
                Base::new(&from, Some(init.epoch), base_weights(&init))?
                    .write(&self.session.run_dir)?;
            }
            if self.teacher.is_some() {
                // Half the teacher, head included: DistilBERT's student.
                println!(
                    "the student starts from {}'s embeddings, layers 0, 2, 4, ..., pooler and {} ({} layers, {} parameters)",
                    from.display(),
                    init.model.head.describe(),
                    init.config.n_layer,
                    init.model.num_params()
                );
                model = model
                    .try_load_record(init.model.into_record())
                    .map_err(|e| ZooError::run_dir(&from, e.to_string()))?;
            } else {
                let loaded = init.model.encoder.num_params();
                println!(
                    "loaded the encoder from {} (embeddings, {} layers, pooler: {loaded} parameters); new: the {} ({} parameters); left behind: its {}",
                    from.display(),
                    init.config.n_layer,
                    model.head.describe(),
                    model.head.num_params(),
                    init.model.head.describe(),
                );
                model = start_from(model, init, &from)?;
            }
        }
        if recipe.finetune.lora() {
            model = adapt(model, recipe).map_err(|e| self.session.recipe_error(e))?;
            println!("{}", lora::adapted(&model));
        }
        let model = freeze(model, t.freeze_embeddings, t.freeze_layers);
        if let Some(frozen) = t.frozen() {
            println!("{frozen}");
        }
        Ok(self.encoder(model))
    }

    fn metrics(&self, training: SupervisedTraining<Encoder>) -> SupervisedTraining<Encoder> {
        let accuracy = || LabelMetric::<MainLabels>::new("Accuracy", LabelStatistic::Accuracy);
        let mut training = training
            .metric_train_numeric(accuracy())
            .metric_valid_numeric(accuracy());
        if self.scores_f1() {
            training = training
                .metric_valid_numeric(LabelMetric::<MainLabels>::new("F1", LabelStatistic::F1));
        }
        if self.session.recipe.data.next_sentence {
            let nsp =
                || LabelMetric::<NextSentenceLabels>::new("NSP Accuracy", LabelStatistic::Accuracy);
            training = training
                .metric_train_numeric(nsp())
                .metric_valid_numeric(nsp());
        }
        training
    }

    fn progress(&self, budget: Budget) -> LineRenderer {
        let mut columns = vec![("val acc", "Accuracy", 2)];
        if self.scores_f1() {
            columns.push(("val F1", "F1", 2));
        }
        if self.session.recipe.data.next_sentence {
            columns.push(("val NSP acc", "NSP Accuracy", 2));
        }
        let batch_size = self.session.recipe.training.micro_batch_size();
        LineRenderer::with_columns(budget, batch_size, "seq", columns)
    }

    fn announce(&self, budget: &Budget) -> String {
        let recipe = self.session.recipe;
        let t = &recipe.training;
        format!(
            "training {} ({} encoder parameters, {}) on {} {} of '{}' for {} steps of {} inputs of up to {} tokens; run directory {}",
            recipe.name(),
            self.parameters,
            recipe.task.name(),
            self.examples,
            if recipe.task == Task::MaskedLm {
                "inputs"
            } else {
                "examples"
            },
            recipe.data.dataset,
            budget.total_steps,
            t.batch_size * t.grad_accumulation,
            self.seq_len,
            self.session.run_dir.display()
        )
    }
}

/// An encoder run directory, or a Hugging Face BERT directory, loaded onto `device` (its last
/// checkpoint, or `epoch`'s).
pub fn load(dir: &Path, epoch: Option<usize>, device: &Device) -> Result<EncoderRun, ZooError> {
    if is_hugging_face_dir(dir) {
        return load_hf_encoder(dir, IMPORTED_DATASET, device);
    }
    load_encoder_run(dir, epoch, device)
}

/// The config of the encoder in `dir` (a run, or a Hugging Face directory), weights unread.
fn pretrained_config(dir: &Path) -> Result<BertConfig, ZooError> {
    if is_hugging_face_dir(dir) {
        return Ok(read_config(dir)?.config);
    }
    match load_run_config(dir)? {
        (_, ModelConfig::Bert(config)) => Ok(config),
        _ => Err(ZooError::run_dir(
            dir,
            "is not a BERT run: init_from needs an encoder",
        )),
    }
}

/// Where the run's config `ours` differs from the pretrained `theirs` in a field `[model]`
/// states; dropout and the label count are the fine-tuning run's own.
fn shape_mismatches(spec: &ModelSpec, ours: &BertConfig, theirs: &BertConfig) -> Vec<String> {
    // A feed-forward width of 0 means 4 x d_model.
    let shape = |c: &BertConfig| {
        ModelConfig::Bert(BertConfig {
            d_ff: c.ff_width(),
            ..c.clone()
        })
    };
    spec.mismatches(&shape(ours), &shape(theirs), &["dropout", "num_labels"])
}

/// `model` (of this run's config, so with its dropout and head) with the encoder of `init`,
/// the run it starts from (found at `from`).
fn start_from(mut model: BertModel, init: EncoderRun, from: &Path) -> Result<BertModel, ZooError> {
    model.encoder = model
        .encoder
        .try_load_record(init.model.encoder.into_record())
        .map_err(|e| ZooError::run_dir(from, e.to_string()))?;
    Ok(model)
}

/// LoRA adapters on the pretrained encoder; the task's head, new, trains whole.
fn adapt(mut model: BertModel, recipe: &Recipe) -> Result<BertModel, String> {
    model.encoder = lora::attach(model.encoder, &recipe.finetune, &recipe.lora_targets())?;
    Ok(model)
}

/// The weights of a LoRA run's base (the encoder it takes), which its fingerprint covers.
fn base_weights(base: &EncoderRun) -> burn::store::ModuleRecord {
    base.model.encoder.clone().into_record()
}

/// The base of the LoRA run in `run_dir`, loaded onto `device` and checked.
fn load_base(run_dir: &Path, device: &Device) -> Result<(EncoderRun, PathBuf), ZooError> {
    lora::load_base(run_dir, |dir, epoch| load(dir, epoch, device), base_weights)
}

/// `model` of the LoRA run in `run_dir`: its base's encoder with the run's adapters attached
/// (loaded from a checkpoint after, with the head).
pub(crate) fn adapted_model(
    run_dir: &Path,
    recipe: &Recipe,
    model: BertModel,
    device: &Device,
) -> Result<BertModel, ZooError> {
    let (base, from) = load_base(run_dir, device)?;
    adapt(start_from(model, base, &from)?, recipe).map_err(|e| ZooError::run_dir(run_dir, e))
}

/// Stops the embeddings and the first `layers` encoder layers from training.
pub fn freeze(mut model: BertModel, embeddings: bool, layers: usize) -> BertModel {
    if embeddings {
        model.encoder.embeddings = model.encoder.embeddings.no_grad();
    }
    model.encoder.layers = zoo_blocks::freeze_first(model.encoder.layers, layers);
    model
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::GradientsParams;
    use zoo_bert::{BertTask, Targets};

    #[test]
    fn frozen_parts_get_no_gradient() {
        let device = Device::flex().autodiff();
        let config = BertConfig {
            vocab_size: 30,
            max_len: 8,
            d_model: 16,
            n_head: 2,
            n_layer: 3,
            num_labels: 2,
            dropout: 0.0,
            ..BertConfig::default()
        };
        let model = freeze(
            config.init(BertTask::Classification, &device).unwrap(),
            true,
            2,
        );
        let tokens = Tensor::<2, Int>::from_data(TensorData::from([[2i64, 7, 9, 3]]), &device);
        let out = model.loss(
            tokens.clone(),
            tokens.zeros_like(),
            tokens.clone().equal_elem(0),
            Targets::Classification(Tensor::from_data(TensorData::from([1i64]), &device)),
        );
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        // Only the last layer (qkv, proj, fc, out: weight and bias each; two norms: gain and
        // bias: 12 tensors), the pooler (2) and the head (2) get gradients.
        assert_eq!(grads.len(), 12 + 2 + 2);
    }
}
