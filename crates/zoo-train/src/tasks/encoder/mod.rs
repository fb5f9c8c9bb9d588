//! The encoder task: BERT's masked-LM pretraining and fine-tuning on labelled data
//! (classification, token classification, span QA), starting from a pretraining run's encoder
//! (`init_from`) with optional frozen layers; then scoring and applying a run (`predict`).
//!
//! An encoder run directory holds what every run's does (recipe, tokenizer, checkpoints,
//! metrics) and, for classification and tagging, `labels.json`: the label names in id order.
//! Metrics: loss, accuracy (of masked tokens, or of labels), F1 for classification and tagging,
//! and next-sentence accuracy when pretraining on pairs.

pub mod data;
pub mod hf;
pub mod model;
pub mod predict;
pub mod run;

use crate::ZooError;
use crate::models::{ModelConfig, ModelSpec};
use crate::recipe::Task;
use crate::runtime::budget::{Budget, StepCost};
use crate::runtime::data::stream;
use crate::runtime::logging::LineRenderer;
use crate::runtime::metrics::{LabelMetric, LabelStatistic};
use crate::runtime::run_dir::{
    IMPORTED_DATASET, TOKENIZER_FILE, TRAINED, is_hugging_face_dir, load_run_config, locate_model,
    write_run_file, write_run_recipe,
};
use crate::runtime::session::{Batches, Session, TaskOutcome, TrainingTask};
use crate::runtime::step::GradientStep;
use burn::module::Module;
use burn::prelude::*;
use burn::train::SupervisedTraining;
use data::{Batching, EncoderExamples, SplitData};
use hf::{load_hf_encoder, read_config};
use model::{Encoder, MainLabels, NextSentenceLabels};
use run::{EncoderRun, LABELS_FILE, bert_task, load_encoder_run, read_labels};
use std::path::{Path, PathBuf};
use zoo_bert::{BertConfig, BertModel};
use zoo_text::{DatasetRegistry, ZooTokenizer};

/// Trains an encoder recipe in `session`'s run directory.
pub fn train(session: &Session) -> Result<TaskOutcome, ZooError> {
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
    // The run this one starts from: its shape always, its weights (loaded where training
    // happens, before the session seeds the device, so loading draws nothing from the run's
    // random stream) when starting afresh.
    // A model id names a snapshot in the local Hugging Face cache.
    let init_from = recipe.init_from.as_deref().map(locate_model).transpose()?;
    let pretrained = init_from.as_deref().map(pretrained_config).transpose()?;
    let init = match (&init_from, session.is_fresh()) {
        (Some(dir), true) => Some(load(dir, None, &session.options.device.clone().autodiff())?),
        _ => None,
    };

    session.create_run_dir()?;
    let (tokenizer, labels) = if session.is_fresh() {
        let tokenizer = match &init {
            Some(init) => init.tokenizer.clone(),
            None => ZooTokenizer::build(
                recipe
                    .tokenizer_spec()
                    .map_err(|e| session.recipe_error(e))?,
                &train_data.text(),
            )?,
        };
        tokenizer
            .special_ids()
            .map_err(|e| session.recipe_error(format!("[tokenizer]: {e}")))?;
        (tokenizer, train_data.label_names())
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
                    "[model] does not match init_from = {}: {}",
                    recipe.init_from.as_ref().expect("init").display(),
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
            batch_size: t.batch_size,
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

    let micro_batches = t.grad_accumulation;
    let size = bert.size(seq_len);
    let batches = Batches {
        steps_per_pass: train_examples.batches_per_pass().div_ceil(micro_batches),
        cost: StepCost {
            tokens: train_examples.mean_tokens() * (t.batch_size * micro_batches) as f64,
            flops_per_token: size.train_flops_per_token as f64,
        },
        train: train_examples,
        valid: val_examples,
    };
    let task = EncoderTraining {
        session,
        config: bert,
        init: init.zip(init_from),
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
    /// Longest input in tokens.
    seq_len: usize,
    /// Parameters of the encoder and pooler.
    parameters: usize,
    /// Training examples (inputs, for masked-LM).
    examples: usize,
}

impl EncoderTraining<'_> {
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
            let loaded = init.model.encoder.num_params();
            println!(
                "loaded the encoder from {} (embeddings, {} layers, pooler: {loaded} parameters); new: the {} ({} parameters); left behind: its {}",
                from.display(),
                init.config.n_layer,
                model.head.describe(),
                model.head.num_params(),
                init.model.head.describe(),
            );
            // The weights into this run's encoder, so that its dropout is this run's.
            model.encoder = model
                .encoder
                .try_load_record(init.model.encoder.into_record())
                .map_err(|e| ZooError::run_dir(&from, e.to_string()))?;
        }
        let model = freeze(model, t.freeze_embeddings, t.freeze_layers);
        if let Some(frozen) = t.frozen() {
            println!("{frozen}");
        }
        Ok(Encoder::new(model, GradientStep::of(recipe)))
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
        let batch_size = self.session.recipe.training.batch_size;
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
