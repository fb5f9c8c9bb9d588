//! Encoder (BERT) runs: masked-LM pretraining and fine-tuning on labelled data, starting from a
//! pretraining run's encoder (`init_from`) with optional frozen layers.
//!
//! An encoder run directory holds what a language-model run's does (recipe, tokenizer,
//! checkpoints, metrics) and, for classification, `labels.json`: the label names in id order.
//! Metrics: loss, accuracy (of masked tokens, or of labels), F1 for classification, and
//! next-sentence accuracy when pretraining on pairs.

use crate::ZooError;
use crate::data::{BatchSource, PerPass, StepLoader};
use crate::lm::gradients;
use crate::metrics::{
    Confusion, JsonlMetricLogger, LabelMetric, LabelStatistic, LabelledBatch, LineRenderer,
};
use crate::recipe::{ModelConfig, Recipe, Task};
use crate::run::{
    Budget, METRICS_FILE, Plan, StepCost, TOKENIZER_FILE, TrainOptions, TrainReport,
    build_optimizer, check_checkpoint, checkpoint_epochs, last_val_loss, load_run_recipe,
    model_checkpoint, read_metrics, with_run_settings, write_run_recipe,
};
use crate::schedule::LrSchedule;
use crate::summary::RunSummary;
use burn::module::Module;
use burn::prelude::*;
use burn::train::metric::{Adaptor, LearningRateMetric, LossInput, LossMetric};
use burn::train::{InferenceStep, ItemLazy, Learner, SupervisedTraining, TrainOutput, TrainStep};
use burn_std::ExecutionError;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zoo_bert::{BertConfig, BertModel, BertTask, Prediction, Predictions, Targets};
use zoo_text::{
    DataDir, DatasetRegistry, EncodedInput, LabelledExample, MaskingConfig, PretrainingCorpus,
    SpanExample, SpecialIds, TaggedExample, ZooTokenizer, mask_tokens,
};

/// Label names of a classification run, in id order.
const LABELS_FILE: &str = "labels.json";

/// The model's task for a recipe's.
pub fn bert_task(recipe: &Recipe) -> BertTask {
    match recipe.task {
        Task::MaskedLm => BertTask::MaskedLm {
            next_sentence: recipe.data.next_sentence,
        },
        Task::Classification => BertTask::Classification,
        Task::TokenClassification => BertTask::TokenClassification,
        Task::SpanQa => BertTask::SpanQa,
        Task::CausalLm | Task::Translation | Task::SpanCorruption => {
            unreachable!("validated recipes pair these tasks with other families")
        }
    }
}

/// A BERT model with what training needs beside the weights.
#[derive(Module, Debug)]
pub struct Encoder {
    /// The encoder and its head.
    pub model: BertModel,
    /// `1 / grad_accumulation` (see [`crate::lm::Lm`]).
    #[module(skip)]
    loss_scale: f32,
    /// Global gradient-norm clip (0 = off).
    #[module(skip)]
    grad_clip: f32,
}

impl Encoder {
    /// Wraps a model for training.
    pub fn new(model: BertModel, grad_accumulation: usize, grad_clip: f64) -> Self {
        Self {
            model,
            loss_scale: 1.0 / grad_accumulation as f32,
            grad_clip: grad_clip as f32,
        }
    }
}

/// A padded batch of encoder inputs and its targets.
#[derive(Clone, Debug)]
pub struct EncoderBatch {
    /// Token ids `[batch, len]` (masked, for masked-LM).
    pub tokens: Tensor<2, Int>,
    /// Segment ids `[batch, len]`.
    pub segments: Tensor<2, Int>,
    /// True at padding `[batch, len]`.
    pub padding: Tensor<2, Bool>,
    /// What to predict.
    pub targets: Targets,
}

/// What one step reports to the metrics.
pub struct EncoderOutput {
    /// The task loss.
    pub loss: Tensor<1>,
    /// The main task's predictions.
    pub main: Predictions,
    /// Next-sentence predictions when pretraining on pairs.
    pub next_sentence: Option<Predictions>,
}

impl ItemLazy for EncoderOutput {
    fn sync(self) -> Result<Self, ExecutionError> {
        self.loss.device().flush()?;
        Ok(self)
    }
}

impl Adaptor<LossInput> for EncoderOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

/// The main task's labels of a step.
pub struct MainLabels(Predictions);
/// The next-sentence labels of a step.
pub struct NextSentenceLabels(Option<Predictions>);

impl LabelledBatch for MainLabels {
    fn labels(&self) -> Option<(Tensor<1, Int>, Tensor<1, Int>)> {
        Some((self.0.predicted.clone(), self.0.expected.clone()))
    }
}

impl LabelledBatch for NextSentenceLabels {
    fn labels(&self) -> Option<(Tensor<1, Int>, Tensor<1, Int>)> {
        self.0
            .as_ref()
            .map(|p| (p.predicted.clone(), p.expected.clone()))
    }
}

impl Adaptor<MainLabels> for EncoderOutput {
    fn adapt(&self) -> MainLabels {
        MainLabels(self.main.clone())
    }
}

impl Adaptor<NextSentenceLabels> for EncoderOutput {
    fn adapt(&self) -> NextSentenceLabels {
        NextSentenceLabels(self.next_sentence.clone())
    }
}

impl Encoder {
    fn forward(&self, batch: EncoderBatch) -> EncoderOutput {
        let out = self
            .model
            .loss(batch.tokens, batch.segments, batch.padding, batch.targets);
        EncoderOutput {
            loss: out.loss,
            main: out.main,
            next_sentence: out.next_sentence,
        }
    }
}

impl TrainStep for Encoder {
    type Input = EncoderBatch;
    type Output = EncoderOutput;

    fn step(&self, batch: EncoderBatch) -> TrainOutput<EncoderOutput> {
        let out = self.forward(batch);
        let grads = gradients(self, &out.loss, self.loss_scale, self.grad_clip);
        TrainOutput {
            grads,
            item: EncoderOutput {
                loss: out.loss.detach(),
                ..out
            },
        }
    }
}

impl InferenceStep for Encoder {
    type Input = EncoderBatch;
    type Output = EncoderOutput;

    fn step(&self, batch: EncoderBatch) -> EncoderOutput {
        self.forward(batch)
    }
}

/// What each example asks the model to predict.
#[derive(Clone, Debug)]
pub enum ExampleTargets {
    /// Masked-LM on every input (masks drawn per batch), with next-sentence labels for pairs.
    MaskedLm {
        /// Per input: B follows A (pairs only).
        is_next: Vec<Option<bool>>,
        /// Masking rates.
        masking: MaskingConfig,
    },
    /// A label id per input.
    Classes(Vec<u32>),
    /// Per input, a tag id per token (`None`: not scored).
    Tags(Vec<Vec<Option<u32>>>),
    /// Per input, the answer's first and last token.
    Spans(Vec<(u32, u32)>),
}

/// Encoder inputs served in shuffled batches: a [`BatchSource`]. Batch `g` of the run (counted
/// across epochs) belongs to pass `g / batches_per_pass`, whose order is a permutation drawn from
/// the seed and the pass; masks are drawn from the seed and `g`, so each pass masks afresh and a
/// resumed run draws what the uninterrupted one would have.
#[derive(Clone)]
pub struct EncoderExamples {
    inner: Arc<ExamplesInner>,
}

struct ExamplesInner {
    inputs: Vec<EncodedInput>,
    targets: ExampleTargets,
    batching: Batching,
    /// The order of the pass being served, drawn once per pass rather than per batch.
    order: PerPass<Vec<usize>>,
}

/// How [`EncoderExamples`] batch and mask.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    /// Inputs per batch.
    pub batch_size: usize,
    /// Seed of the order and the masks.
    pub seed: u64,
    /// Reshuffle every pass (training) or keep the order (validation, evaluation).
    pub shuffle: bool,
    /// The tokenizer's special tokens (padding, masking).
    pub special: SpecialIds,
    /// Vocabulary size (random replacements when masking).
    pub vocab_size: usize,
}

/// A generator for stream `(a, b)` of `seed` (SplitMix64's finaliser over the three).
pub(crate) fn stream(seed: u64, a: u64, b: u64) -> StdRng {
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

impl EncoderExamples {
    /// Inputs and their targets, served as `batching` says.
    pub fn new(
        inputs: Vec<EncodedInput>,
        targets: ExampleTargets,
        batching: Batching,
    ) -> Result<Self, String> {
        if inputs.is_empty() {
            return Err("no examples".into());
        }
        Ok(Self {
            inner: Arc::new(ExamplesInner {
                inputs,
                targets,
                batching,
                order: PerPass::default(),
            }),
        })
    }

    /// Number of inputs.
    pub fn len(&self) -> usize {
        self.inner.inputs.len()
    }

    /// Never true: an empty set is refused at construction.
    pub fn is_empty(&self) -> bool {
        self.inner.inputs.is_empty()
    }

    /// Batches in one pass (the last may be short).
    pub fn batches_per_pass(&self) -> usize {
        self.len().div_ceil(self.inner.batching.batch_size)
    }

    /// Mean tokens per input (what a token budget counts; padding is not counted).
    pub fn mean_tokens(&self) -> f64 {
        let total: usize = self.inner.inputs.iter().map(|i| i.ids.len()).sum();
        total as f64 / self.len() as f64
    }

    /// The order of the examples in pass `pass`: shuffled from the seed and the pass when
    /// training, as they are otherwise.
    fn order_of(&self, pass: usize) -> Arc<Vec<usize>> {
        self.inner.order.get(pass, || {
            let mut order: Vec<usize> = (0..self.len()).collect();
            if self.inner.batching.shuffle {
                order.shuffle(&mut stream(self.inner.batching.seed, 1, pass as u64));
            }
            order
        })
    }

    /// Batch `g` of the run (counted from 0 across passes).
    pub fn batch_at(&self, g: usize, device: &Device) -> EncoderBatch {
        let inner = &*self.inner;
        let per_pass = self.batches_per_pass();
        let (pass, within) = (g / per_pass, g % per_pass);
        let order = self.order_of(pass);
        let picked = &order[within * inner.batching.batch_size
            ..((within + 1) * inner.batching.batch_size).min(self.len())];
        let batch = picked.len();
        let len = picked
            .iter()
            .map(|&i| inner.inputs[i].ids.len())
            .max()
            .expect("batches are never empty");
        let mut tokens = vec![inner.batching.special.pad as i64; batch * len];
        let mut segments = vec![0i64; batch * len];
        let mut padding = vec![true; batch * len];
        let mut positions = Vec::new();
        let mut originals = Vec::new();
        let mut rng = stream(inner.batching.seed, 2, g as u64);
        for (b, &i) in picked.iter().enumerate() {
            let input = &inner.inputs[i];
            let ids = match &inner.targets {
                ExampleTargets::MaskedLm { masking, .. } => {
                    let masked = mask_tokens(
                        &input.ids,
                        &inner.batching.special,
                        inner.batching.vocab_size,
                        masking,
                        &mut rng,
                    );
                    positions.extend(masked.positions.iter().map(|&p| (b * len + p) as i64));
                    originals.extend(masked.originals.iter().map(|&t| t as i64));
                    masked.ids
                }
                ExampleTargets::Tags(tags) => {
                    for (t, tag) in tags[i].iter().enumerate() {
                        if let Some(tag) = tag {
                            positions.push((b * len + t) as i64);
                            originals.push(*tag as i64);
                        }
                    }
                    input.ids.clone()
                }
                ExampleTargets::Classes(_) | ExampleTargets::Spans(_) => input.ids.clone(),
            };
            for (t, (&id, &segment)) in ids.iter().zip(&input.segments).enumerate() {
                tokens[b * len + t] = id as i64;
                segments[b * len + t] = segment as i64;
                padding[b * len + t] = false;
            }
        }
        let ints = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), device)
        };
        let targets = match &inner.targets {
            ExampleTargets::MaskedLm { is_next, .. } => {
                let labels: Option<Vec<i64>> =
                    picked.iter().map(|&i| is_next[i].map(i64::from)).collect();
                Targets::MaskedLm {
                    positions: ints(positions),
                    tokens: ints(originals),
                    next_sentence: labels.map(ints),
                }
            }
            ExampleTargets::Classes(classes) => {
                Targets::Classification(ints(picked.iter().map(|&i| classes[i] as i64).collect()))
            }
            ExampleTargets::Tags(_) => Targets::TokenClassification {
                positions: ints(positions),
                labels: ints(originals),
            },
            ExampleTargets::Spans(spans) => Targets::SpanQa {
                start: ints(picked.iter().map(|&i| spans[i].0 as i64).collect()),
                end: ints(picked.iter().map(|&i| spans[i].1 as i64).collect()),
            },
        };
        EncoderBatch {
            tokens: Tensor::from_data(TensorData::new(tokens, [batch, len]), device),
            segments: Tensor::from_data(TensorData::new(segments, [batch, len]), device),
            padding: Tensor::from_data(TensorData::new(padding, [batch, len]), device),
            targets,
        }
    }
}

impl BatchSource for EncoderExamples {
    type Batch = EncoderBatch;

    fn batch(&self, epoch: usize, index: usize, per_epoch: usize, device: &Device) -> EncoderBatch {
        self.batch_at(epoch * per_epoch + index, device)
    }

    fn validation_batches(&self, requested: usize) -> usize {
        match self.inner.targets {
            ExampleTargets::MaskedLm { .. } => requested.min(self.batches_per_pass()),
            // Labelled sets are small: validate on all of it, so the accuracy is the split's.
            _ => self.batches_per_pass(),
        }
    }
}

/// A trained encoder run, loaded.
pub struct EncoderRun {
    /// Its resolved recipe.
    pub recipe: Recipe,
    /// Its model config.
    pub config: BertConfig,
    /// Its tokenizer.
    pub tokenizer: ZooTokenizer,
    /// The model, on the device it was loaded to.
    pub model: BertModel,
    /// Label names in id order (classification runs).
    pub labels: Vec<String>,
    /// The checkpoint's epoch.
    pub epoch: usize,
}

/// Whether `run_dir` holds a BERT run (false when it holds anything else or nothing readable).
pub fn is_encoder_run(run_dir: &Path) -> bool {
    load_run_recipe(run_dir)
        .ok()
        .and_then(|recipe| recipe.model_config().ok())
        .is_some_and(|config| matches!(config, ModelConfig::Bert(_)))
}

/// Loads an encoder run's last checkpoint onto `device`.
pub fn load_encoder_run(run_dir: &Path, device: &Device) -> Result<EncoderRun, ZooError> {
    let run_error = |message: String| ZooError::RunDir {
        path: run_dir.to_path_buf(),
        message,
    };
    if !run_dir.is_dir() {
        return Err(run_error("does not exist".into()));
    }
    let recipe = load_run_recipe(run_dir)?;
    let ModelConfig::Bert(config) = recipe.model_config().map_err(run_error)? else {
        return Err(run_error(
            "is not a BERT run (its recipe's model.arch is not \"bert\")".into(),
        ));
    };
    let tokenizer = ZooTokenizer::load(&run_dir.join(TOKENIZER_FILE))?;
    let epoch = *checkpoint_epochs(run_dir)
        .last()
        .ok_or_else(|| run_error("has no checkpoint yet".into()))?;
    let path = model_checkpoint(run_dir, epoch);
    let model = Encoder::new(
        config.init(bert_task(&recipe), device).map_err(run_error)?,
        1,
        0.0,
    )
    .try_load_file(&path)
    .map_err(|e| ZooError::Checkpoint {
        path: path.clone(),
        message: format!("cannot be loaded: {e}"),
    })?
    .model;
    let labels = read_labels(run_dir)?;
    Ok(EncoderRun {
        recipe,
        config,
        tokenizer,
        model,
        labels,
        epoch,
    })
}

fn read_labels(run_dir: &Path) -> Result<Vec<String>, ZooError> {
    let path = run_dir.join(LABELS_FILE);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| ZooError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| ZooError::RunDir {
        path: run_dir.to_path_buf(),
        message: format!("{LABELS_FILE} is damaged: {e}"),
    })
}

/// The fields in which a fine-tuning config's shape differs from the run it starts from (all
/// but dropout and the label count), as `field = ours (the run has theirs)`.
fn shape_mismatches(ours: &BertConfig, theirs: &BertConfig) -> Vec<String> {
    let shape = |c: &BertConfig| {
        let c = BertConfig {
            dropout: 0.0,
            num_labels: 0,
            d_ff: c.ff_width(),
            ..c.clone()
        };
        toml::Table::try_from(c).expect("configs serialise to TOML")
    };
    let (ours, theirs) = (shape(ours), shape(theirs));
    ours.iter()
        .filter(|(key, value)| theirs.get(*key) != Some(*value))
        .map(|(key, value)| {
            let theirs = theirs.get(key).map_or("nothing".into(), |v| v.to_string());
            format!("{key} = {value} (the run has {theirs})")
        })
        .collect()
}

/// Stops the embeddings and the first `layers` encoder layers from training.
pub fn freeze(mut model: BertModel, embeddings: bool, layers: usize) -> BertModel {
    if embeddings {
        model.encoder.embeddings = model.encoder.embeddings.no_grad();
    }
    model.encoder.layers = model
        .encoder
        .layers
        .into_iter()
        .enumerate()
        .map(|(i, layer)| if i < layers { layer.no_grad() } else { layer })
        .collect();
    model
}

/// One split of a task's data, as the registry gives it.
enum SplitData {
    /// Unlabelled text, one sentence per line, from one or more datasets.
    Text(Vec<String>),
    /// A label per text.
    Labelled(Vec<LabelledExample>),
    /// A tag per word.
    Tagged(Vec<TaggedExample>),
    /// Questions with an answer span in their context.
    Spans(Vec<SpanExample>),
}

impl SplitData {
    /// Split `split` of `dataset` in the form `task` needs (for masked-LM training, with
    /// the `extra` datasets' training text).
    fn load(
        task: Task,
        registry: &DatasetRegistry,
        dataset: &str,
        split: &str,
        extra: &[String],
        dir: &DataDir,
    ) -> Result<Self, ZooError> {
        Ok(match task {
            Task::MaskedLm => {
                let mut texts = vec![registry.load_split(dataset, split, dir)?];
                for extra in extra {
                    texts.push(registry.load_split(extra, "train", dir)?);
                }
                SplitData::Text(texts)
            }
            Task::Classification => {
                SplitData::Labelled(registry.load_labelled(dataset, split, dir)?)
            }
            Task::TokenClassification => SplitData::Tagged(registry.load_tagged(dataset, split)?),
            Task::SpanQa => SplitData::Spans(registry.load_spans(dataset, split)?),
            Task::CausalLm | Task::Translation | Task::SpanCorruption => {
                unreachable!("encoder tasks only")
            }
        })
    }

    /// All its text, for training a tokenizer.
    fn text(&self) -> String {
        match self {
            SplitData::Text(texts) => texts.concat(),
            SplitData::Labelled(set) => set.iter().map(|e| format!("{}\n", e.text)).collect(),
            SplitData::Tagged(set) => set.iter().map(|e| e.words.join(" ") + "\n").collect(),
            SplitData::Spans(set) => set
                .iter()
                .map(|e| format!("{}\n{}\n", e.question, e.context.join(" ")))
                .collect(),
        }
    }

    /// The label (or tag) names it uses, sorted; empty for tasks without labels.
    fn label_names(&self) -> Vec<String> {
        let names: BTreeSet<&String> = match self {
            SplitData::Labelled(set) => set.iter().map(|e| &e.label).collect(),
            SplitData::Tagged(set) => set.iter().flat_map(|e| &e.tags).collect(),
            SplitData::Text(_) | SplitData::Spans(_) => BTreeSet::new(),
        };
        names.into_iter().cloned().collect()
    }

    /// Encoder inputs and targets of every example. `labels` are the run's label names;
    /// `rng` draws next-sentence pairs.
    fn encode(
        &self,
        tokenizer: &ZooTokenizer,
        labels: &[String],
        recipe: &Recipe,
        seq_len: usize,
        rng: &mut StdRng,
    ) -> Result<(Vec<EncodedInput>, ExampleTargets), String> {
        let special = tokenizer.special_ids().map_err(|e| e.to_string())?;
        let label_id = |name: &str| {
            labels
                .iter()
                .position(|l| l == name)
                .map(|i| i as u32)
                .ok_or_else(|| {
                    format!(
                        "label '{name}' is not among the run's labels ({})",
                        labels.join(", ")
                    )
                })
        };
        let text_error = |e: zoo_text::TextError| e.to_string();
        Ok(match self {
            SplitData::Text(texts) => {
                let mut corpus = PretrainingCorpus::new(Vec::new());
                for text in texts {
                    let lines = tokenizer.encode_lines(text).map_err(text_error)?;
                    corpus.extend(PretrainingCorpus::from_lines(
                        lines,
                        recipe.data.document_lines,
                    ));
                }
                let made = corpus.examples(&special, seq_len, recipe.data.next_sentence, rng)?;
                let is_next = made.iter().map(|e| e.is_next).collect();
                let masking = MaskingConfig {
                    select: recipe.data.mask_prob,
                    ..MaskingConfig::default()
                };
                (
                    made.into_iter().map(|e| e.input).collect(),
                    ExampleTargets::MaskedLm { is_next, masking },
                )
            }
            SplitData::Labelled(set) => {
                let texts: Vec<(&str, Option<&str>)> =
                    set.iter().map(|e| (e.text.as_str(), None)).collect();
                let inputs = tokenizer
                    .encode_inputs(&texts, seq_len)
                    .map_err(text_error)?;
                let classes = set
                    .iter()
                    .map(|e| label_id(&e.label))
                    .collect::<Result<_, _>>()?;
                (inputs, ExampleTargets::Classes(classes))
            }
            SplitData::Tagged(set) => {
                let sentences: Vec<&[String]> = set.iter().map(|e| e.words.as_slice()).collect();
                let aligned = tokenizer
                    .encode_words(&sentences, seq_len)
                    .map_err(text_error)?;
                let mut inputs = Vec::with_capacity(set.len());
                let mut tags = Vec::with_capacity(set.len());
                for (example, aligned) in set.iter().zip(aligned) {
                    // Each word's first piece carries its tag; later pieces are not scored.
                    let mut previous = None;
                    let mut token_tags = Vec::with_capacity(aligned.words.len());
                    for &word in &aligned.words {
                        let first_piece = word.is_some() && word != previous;
                        previous = word;
                        token_tags.push(match word {
                            Some(w) if first_piece => Some(label_id(&example.tags[w as usize])?),
                            _ => None,
                        });
                    }
                    inputs.push(aligned.input);
                    tags.push(token_tags);
                }
                (inputs, ExampleTargets::Tags(tags))
            }
            SplitData::Spans(set) => {
                let pairs: Vec<(&str, &[String])> = set
                    .iter()
                    .map(|e| (e.question.as_str(), e.context.as_slice()))
                    .collect();
                let aligned = tokenizer
                    .encode_question_context(&pairs, seq_len)
                    .map_err(text_error)?;
                let mut inputs = Vec::with_capacity(set.len());
                let mut spans = Vec::with_capacity(set.len());
                for (i, (example, aligned)) in set.iter().zip(aligned).enumerate() {
                    let of = |word: usize| {
                        let at = |t: &usize| aligned.words[*t] == Some(word as u32);
                        let tokens: Vec<usize> = (0..aligned.words.len()).filter(at).collect();
                        tokens
                    };
                    let (start, end) = (of(example.start), of(example.end));
                    let (Some(&start), Some(&end)) = (start.first(), end.last()) else {
                        return Err(format!(
                            "example {i}: the answer was cut off by seq_len = {seq_len}; raise training.seq_len (at most model.max_len)"
                        ));
                    };
                    inputs.push(aligned.input);
                    spans.push((start as u32, end as u32));
                }
                (inputs, ExampleTargets::Spans(spans))
            }
        })
    }
}

/// Trains an encoder recipe; called by [`crate::run::train`] once the run directory is checked.
pub(crate) fn train(
    recipe: &Recipe,
    recipe_path: &Path,
    options: &TrainOptions,
    run_dir: PathBuf,
    resume_epoch: Option<usize>,
) -> Result<TrainReport, ZooError> {
    let recipe_error = |message: String| ZooError::Recipe {
        path: recipe_path.to_path_buf(),
        message,
    };
    let registry = DatasetRegistry::builtin();
    for extra in &recipe.data.extra_train {
        registry
            .check(extra, "train")
            .map_err(|e| recipe_error(format!("data.extra_train: {e}")))?;
    }
    let data = &recipe.data;
    let load = |split: &str, extra: &[String]| {
        SplitData::load(
            recipe.task,
            &registry,
            &data.dataset,
            split,
            extra,
            &options.data_dir,
        )
    };
    let train_data = load(&data.train_split, &data.extra_train)?;
    let val_data = load(&data.val_split, &[])?;
    let device = options.device.clone();
    let autodiff = device.clone().autodiff();
    // The run this one starts from, loaded where training happens.
    let init = match (&recipe.init_from, resume_epoch) {
        (Some(dir), None) => Some(load_encoder_run(dir, &autodiff)?),
        _ => None,
    };

    std::fs::create_dir_all(&run_dir).map_err(|e| ZooError::io(&run_dir, e))?;
    let (tokenizer, config, labels) = match resume_epoch {
        Some(_) => {
            let stored = load_run_recipe(&run_dir)?;
            let Ok(ModelConfig::Bert(config)) = stored.model_config() else {
                return Err(ZooError::RunDir {
                    path: run_dir.clone(),
                    message: "its recipe.toml is not a BERT run's".into(),
                });
            };
            let ModelConfig::Bert(mut wanted) = recipe.model_config().map_err(recipe_error)? else {
                unreachable!("validated encoder recipes are BERT");
            };
            wanted.vocab_size = config.vocab_size;
            if wanted.num_labels == 0 {
                wanted.num_labels = config.num_labels;
            }
            if wanted != config {
                return Err(ZooError::RunDir {
                    path: run_dir.clone(),
                    message: "the recipe's [model] differs from the run's recipe.toml; resume with the run's recipe or start a new run".into(),
                });
            }
            let tokenizer = ZooTokenizer::load(&run_dir.join(TOKENIZER_FILE))?;
            (tokenizer, config, read_labels(&run_dir)?)
        }
        None => {
            let tokenizer = match &init {
                Some(init) => init.tokenizer.clone(),
                None => ZooTokenizer::build(
                    recipe.tokenizer_spec().map_err(recipe_error)?,
                    &train_data.text(),
                )?,
            };
            tokenizer
                .special_ids()
                .map_err(|e| recipe_error(format!("[tokenizer]: {e}")))?;
            let ModelConfig::Bert(mut config) = recipe.model_config().map_err(recipe_error)? else {
                unreachable!("validated encoder recipes are BERT");
            };
            if config.vocab_size == 0 {
                config.vocab_size = tokenizer.vocab_size();
            }
            if config.vocab_size < tokenizer.vocab_size() {
                return Err(recipe_error(format!(
                    "[model] vocab_size = {} is smaller than the tokenizer's {} tokens",
                    config.vocab_size,
                    tokenizer.vocab_size()
                )));
            }
            let labels = train_data.label_names();
            if !labels.is_empty() {
                match config.num_labels {
                    0 => config.num_labels = labels.len(),
                    n if n < labels.len() => {
                        return Err(recipe_error(format!(
                            "model.num_labels = {n} but the training split has {} labels: {}",
                            labels.len(),
                            labels.join(", ")
                        )));
                    }
                    _ => {}
                }
            }
            if let Some(init) = &init {
                let mismatches = shape_mismatches(&config, &init.config);
                if !mismatches.is_empty() {
                    return Err(recipe_error(format!(
                        "[model] does not match init_from = {}: {}",
                        recipe.init_from.as_ref().expect("init").display(),
                        mismatches.join(", ")
                    )));
                }
            }
            config
                .validate()
                .map_err(|e| recipe_error(format!("[model]: {e}")))?;
            tokenizer.save(&run_dir.join(TOKENIZER_FILE))?;
            write_run_recipe(&run_dir, recipe, &ModelConfig::Bert(config.clone()))?;
            if !labels.is_empty() {
                let path = run_dir.join(LABELS_FILE);
                let text = serde_json::to_string(&labels).expect("strings serialise");
                std::fs::write(&path, text).map_err(|e| ZooError::io(&path, e))?;
            }
            (tokenizer, config, labels)
        }
    };

    let special = tokenizer.special_ids()?;
    let t = &recipe.training;
    let seq_len = recipe.sequence_len(&ModelConfig::Bert(config.clone()));
    let examples = |train: bool| -> Result<EncoderExamples, ZooError> {
        let (split, split_data) = if train {
            ("training", &train_data)
        } else {
            ("validation", &val_data)
        };
        let mut rng = stream(recipe.seed, 3, train as u64);
        let (inputs, targets) = split_data
            .encode(&tokenizer, &labels, recipe, seq_len, &mut rng)
            .map_err(|e| recipe_error(format!("{split} split: {e}")))?;
        let seed = recipe.seed ^ if train { 0 } else { 0x76_616C };
        let batching = Batching {
            batch_size: t.batch_size,
            seed,
            shuffle: train,
            special,
            vocab_size: config.vocab_size,
        };
        EncoderExamples::new(inputs, targets, batching)
            .map_err(|e| recipe_error(format!("{split} split: {e}")))
    };
    let train_examples = examples(true)?;
    let val_examples = examples(false)?;

    let micro_batches = t.grad_accumulation;
    let cost = StepCost {
        tokens: train_examples.mean_tokens() * (t.batch_size * micro_batches) as f64,
        flops_per_token: config.encoder_size(seq_len).1 as f64,
    };
    let budget = Budget::of(
        recipe,
        train_examples.batches_per_pass().div_ceil(micro_batches),
        cost,
    )
    .map_err(recipe_error)?;
    let Plan {
        total_steps,
        epochs,
        start_epoch,
    } = budget.plan(options.stop_after_steps, resume_epoch, &run_dir)?;

    device.seed(recipe.seed);
    let task = bert_task(recipe);
    let mut model = config
        .init(task, &autodiff)
        .map_err(|e| recipe_error(format!("[model]: {e}")))?;
    if let Some(init) = init {
        let loaded = init.model.encoder.num_params();
        println!(
            "loaded the encoder from {} (embeddings, {} layers, pooler: {loaded} parameters); new: the {} ({} parameters); left behind: its {}",
            recipe.init_from.as_ref().expect("init").display(),
            init.config.n_layer,
            model.head.describe(),
            model.head.num_params(),
            init.model.head.describe(),
        );
        model.encoder = init.model.encoder;
    }
    let model = freeze(model, t.freeze_embeddings, t.freeze_layers);
    if t.freeze_embeddings || t.freeze_layers > 0 {
        println!(
            "frozen: {}{} encoder layer(s)",
            if t.freeze_embeddings {
                "the embeddings and "
            } else {
                ""
            },
            t.freeze_layers
        );
    }
    let encoder = Encoder::new(model, micro_batches, recipe.optimizer.grad_clip);
    if let Some(epoch) = resume_epoch {
        check_checkpoint(&run_dir, epoch, &encoder)?;
    }

    let schedule = LrSchedule::new(
        &recipe.schedule,
        recipe.optimizer.lr,
        budget.total_steps,
        config.d_model,
    );
    let learner = Learner::new(encoder, build_optimizer(recipe), schedule);
    let train_loader = StepLoader::training(
        train_examples.clone(),
        budget.steps_per_epoch * micro_batches,
        total_steps * micro_batches,
        start_epoch,
        &device,
    );
    let val_loader = StepLoader::validation(val_examples.clone(), t.eval_batches, &device);
    let metric_logger = JsonlMetricLogger::new(run_dir.join(METRICS_FILE), budget, resume_epoch)?;

    let accuracy = || LabelMetric::<MainLabels>::new("Accuracy", LabelStatistic::Accuracy);
    let mut training =
        SupervisedTraining::new(&run_dir, Arc::new(train_loader), Arc::new(val_loader))
            .metric_train_numeric(LossMetric::new())
            .metric_valid_numeric(LossMetric::new())
            .metric_train_numeric(accuracy())
            .metric_valid_numeric(accuracy())
            .metric_train_numeric(LearningRateMetric::new());
    let mut columns = vec![("val acc", "Accuracy", 2)];
    if matches!(
        recipe.task,
        Task::Classification | Task::TokenClassification
    ) {
        training =
            training.metric_valid_numeric(LabelMetric::<MainLabels>::new("F1", LabelStatistic::F1));
        columns.push(("val F1", "F1", 2));
    }
    if recipe.data.next_sentence {
        let nsp =
            || LabelMetric::<NextSentenceLabels>::new("NSP Accuracy", LabelStatistic::Accuracy);
        training = training
            .metric_train_numeric(nsp())
            .metric_valid_numeric(nsp());
        columns.push(("val NSP acc", "NSP Accuracy", 2));
    }
    let training = with_run_settings(
        training,
        recipe,
        &run_dir,
        epochs,
        resume_epoch,
        metric_logger,
        LineRenderer::with_columns(budget, t.batch_size, "seq", columns),
    );
    let (total, _) = config.encoder_size(seq_len);
    println!(
        "training {} ({} encoder parameters, {}) on {} {} of '{}' for {} steps of {} inputs of up to {} tokens; run directory {}",
        recipe.name(),
        total,
        recipe.task.name(),
        train_examples.len(),
        if recipe.task == Task::MaskedLm {
            "inputs"
        } else {
            "examples"
        },
        recipe.data.dataset,
        budget.total_steps,
        t.batch_size * micro_batches,
        seq_len,
        run_dir.display()
    );
    let result = training.launch(learner);
    if let Some(error) = &result.error {
        return Err(ZooError::Training(error.to_string()));
    }
    if total_steps == budget.total_steps {
        let size = ModelConfig::Bert(config.clone()).size();
        RunSummary::new(recipe, size, cost, total_steps, &run_dir).save(&run_dir)?;
    }
    Ok(TrainReport {
        val_loss: last_val_loss(&run_dir),
        run_dir,
        steps: total_steps,
        seconds: 0.0,
        sample: None,
    })
}

/// The last validation's value of `metric` in a run's log.
pub fn last_validation(run_dir: &Path, metric: &str) -> Option<f64> {
    read_metrics(run_dir)
        .into_iter()
        .rev()
        .find(|v| v["split"] == "valid")
        .and_then(|v| v[metric].as_f64())
}

/// What `zoo eval` reports for an encoder run.
#[derive(Clone, Debug)]
pub struct EncoderEvalReport {
    /// The split.
    pub split: String,
    /// Mean loss over batches, weighted by predictions.
    pub loss: f64,
    /// Accuracy in percent (masked tokens, or labels).
    pub accuracy: f64,
    /// F1 in percent (classification).
    pub f1: Option<f64>,
    /// Predictions scored.
    pub predictions: usize,
}

/// Scores an encoder run on a whole split: classification accuracy and F1, or masked-LM
/// accuracy with masks drawn from the run's seed.
pub fn evaluate_encoder(
    run: &EncoderRun,
    split: &str,
    data_dir: &DataDir,
) -> Result<EncoderEvalReport, ZooError> {
    let registry = DatasetRegistry::builtin();
    let recipe = &run.recipe;
    let special = run.tokenizer.special_ids()?;
    let seq_len = recipe.sequence_len(&ModelConfig::Bert(run.config.clone()));
    let batch_size = recipe.training.batch_size;
    let split_data = SplitData::load(
        recipe.task,
        &registry,
        &recipe.data.dataset,
        split,
        &[],
        data_dir,
    )?;
    let usage = |e: String| ZooError::Usage(format!("split '{split}': {e}"));
    let (inputs, targets) = split_data
        .encode(
            &run.tokenizer,
            &run.labels,
            recipe,
            seq_len,
            &mut stream(recipe.seed, 3, 2),
        )
        .map_err(usage)?;
    let batching = Batching {
        batch_size,
        seed: recipe.seed,
        shuffle: false,
        special,
        vocab_size: run.config.vocab_size,
    };
    let examples = EncoderExamples::new(inputs, targets, batching).map_err(usage)?;
    let device = run.model.devices()[0].clone();
    let mut confusion = Confusion::default();
    let (mut loss_sum, mut count) = (0.0, 0usize);
    let ints = |t: Tensor<1, Int>| -> Vec<i64> {
        t.into_data()
            .convert::<i64>()
            .try_to_vec()
            .unwrap_or_default()
    };
    for g in 0..examples.batches_per_pass() {
        let batch = examples.batch_at(g, &device);
        let out = run
            .model
            .loss(batch.tokens, batch.segments, batch.padding, batch.targets);
        let n = out.main.expected.dims()[0];
        loss_sum += out.loss.into_scalar::<f64>() * n as f64;
        count += n;
        confusion.add(&ints(out.main.expected), &ints(out.main.predicted));
    }
    Ok(EncoderEvalReport {
        split: split.to_string(),
        loss: loss_sum / count.max(1) as f64,
        accuracy: confusion.statistic(LabelStatistic::Accuracy),
        f1: matches!(
            recipe.task,
            Task::Classification | Task::TokenClassification
        )
        .then(|| confusion.statistic(LabelStatistic::F1)),
        predictions: count,
    })
}

/// One input to [`predict`]: a text, or for span QA a question and its context.
#[derive(Clone, Debug)]
pub struct PredictInput {
    /// The text (for span QA, the question).
    pub text: String,
    /// Span QA only: the text the answer is taken from.
    pub context: Option<String>,
}

/// Longest answer span [`predict`] considers, in tokens.
const MAX_ANSWER_TOKENS: usize = 30;

/// What the run's model makes of `input`, as one line: the label and its probability (then
/// every label's) for a classifier; `word/TAG` per word for a tagger; the answer for span QA;
/// the five likeliest tokens at each `[MASK]` for masked-LM.
pub fn predict(run: &EncoderRun, input: &PredictInput) -> Result<String, ZooError> {
    let device = run.model.devices()[0].clone();
    let seq_len = run
        .recipe
        .sequence_len(&ModelConfig::Bert(run.config.clone()));
    let tokenizer = &run.tokenizer;
    let words: Vec<String> = input.text.split_whitespace().map(String::from).collect();
    let task = run.recipe.task;
    let (encoded, aligned_words) = match task {
        Task::TokenClassification => {
            let aligned = tokenizer.encode_words(&[&words], seq_len)?.remove(0);
            (aligned.input, aligned.words)
        }
        Task::SpanQa => {
            let context = input.context.as_deref().ok_or_else(|| {
                ZooError::Usage("a span-QA run needs a --context to take the answer from".into())
            })?;
            let context: Vec<String> = context.split_whitespace().map(String::from).collect();
            let aligned = tokenizer
                .encode_question_context(&[(input.text.as_str(), &context)], seq_len)?
                .remove(0);
            let answer = best_span(run, &aligned.input, &aligned.words, &device)
                .map(|(first, last)| context[first..=last].join(" "));
            return Ok(answer.unwrap_or_else(|| "(no answer in the context)".into()));
        }
        _ => {
            let encoded = tokenizer.encode_inputs(&[(input.text.as_str(), None)], seq_len)?;
            (encoded.into_iter().next().expect("one input"), Vec::new())
        }
    };
    let (tokens, segments, padding) = single(&encoded, &device);
    let Prediction::Labels(probs) = run.model.predict(tokens, segments, padding) else {
        unreachable!("only span heads predict spans");
    };
    let [_, len, classes] = probs.dims();
    let probs: Vec<f32> = probs
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap_or_default();
    let row = |t: usize| &probs[t * classes..(t + 1) * classes];
    let ranked = |t: usize| {
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&a, &b| row(t)[b].total_cmp(&row(t)[a]));
        order
    };
    let label = |i: usize| run.labels.get(i).cloned().unwrap_or_else(|| i.to_string());
    Ok(match task {
        Task::Classification => {
            let order = ranked(0);
            let all: Vec<String> = order
                .iter()
                .map(|&i| format!("{} {:.3}", label(i), row(0)[i]))
                .collect();
            format!(
                "{}\t{:.3}\t({})",
                label(order[0]),
                row(0)[order[0]],
                all.join(", ")
            )
        }
        Task::TokenClassification => {
            let mut tags = vec![String::new(); words.len()];
            let mut previous = None;
            for (t, word) in aligned_words.iter().enumerate().take(len) {
                if let Some(w) = *word
                    && *word != previous
                {
                    tags[w as usize] = label(ranked(t)[0]);
                }
                previous = *word;
            }
            words
                .iter()
                .zip(&tags)
                .map(|(word, tag)| format!("{word}/{}", if tag.is_empty() { "-" } else { tag }))
                .collect::<Vec<_>>()
                .join(" ")
        }
        _ => {
            let special = tokenizer.special_ids()?;
            let masks: Vec<usize> = (0..encoded.ids.len())
                .filter(|&t| encoded.ids[t] == special.mask)
                .collect();
            if masks.is_empty() {
                return Err(ZooError::Usage(
                    "a masked-LM run fills in [MASK]: put [MASK] in the --input".into(),
                ));
            }
            let mut out = Vec::new();
            for t in masks {
                let best: Vec<String> = ranked(t)
                    .into_iter()
                    .take(5)
                    .map(|id| {
                        let piece = tokenizer.decode(&[id as u32]).unwrap_or_default();
                        format!("{piece} {:.3}", row(t)[id])
                    })
                    .collect();
                out.push(format!("[MASK] -> {}", best.join(", ")));
            }
            out.join("\n")
        }
    })
}

/// The context words of the likeliest answer span: the pair of context tokens (start at or
/// before end, at most [`MAX_ANSWER_TOKENS`] apart) with the largest summed logits.
fn best_span(
    run: &EncoderRun,
    input: &EncodedInput,
    words: &[Option<u32>],
    device: &Device,
) -> Option<(usize, usize)> {
    let (tokens, segments, padding) = single(input, device);
    let Prediction::Span { start, end } = run.model.predict(tokens, segments, padding) else {
        unreachable!("span heads predict spans");
    };
    let read = |t: Tensor<2>| -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap_or_default()
    };
    let (start, end) = (read(start), read(end));
    let mut best: Option<(f32, usize, usize)> = None;
    for s in (0..words.len()).filter(|&t| words[t].is_some()) {
        for e in (s..words.len().min(s + MAX_ANSWER_TOKENS)).filter(|&t| words[t].is_some()) {
            let score = start[s] + end[e];
            if best.is_none_or(|(b, _, _)| score > b) {
                best = Some((score, s, e));
            }
        }
    }
    let (_, s, e) = best?;
    let (first, last) = (words[s]? as usize, words[e]? as usize);
    (first <= last).then_some((first, last))
}

/// One input as a batch of one: token ids, segment ids and (no) padding.
fn single(
    input: &EncodedInput,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2, Bool>) {
    let len = input.ids.len();
    let ints = |v: &[u32]| {
        let v: Vec<i64> = v.iter().map(|&x| x as i64).collect();
        Tensor::<2, Int>::from_data(TensorData::new(v, [1, len]), device)
    };
    let tokens = ints(&input.ids);
    let padding = tokens.clone().equal_elem(-1);
    (tokens, ints(&input.segments), padding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::GradientsParams;

    const SPECIAL: SpecialIds = SpecialIds::WORDPIECE;

    fn batching(batch_size: usize, seed: u64, shuffle: bool) -> Batching {
        Batching {
            batch_size,
            seed,
            shuffle,
            special: SPECIAL,
            vocab_size: 50,
        }
    }

    fn inputs(n: usize) -> Vec<EncodedInput> {
        (0..n)
            .map(|i| {
                let ids: Vec<u32> = std::iter::once(2)
                    .chain((0..1 + i % 5).map(|t| 10 + t as u32))
                    .chain([3])
                    .collect();
                EncodedInput {
                    segments: vec![0; ids.len()],
                    ids,
                }
            })
            .collect()
    }

    fn ids_of(t: Tensor<2, Int>) -> Vec<i64> {
        t.into_data().convert::<i64>().try_to_vec().unwrap()
    }

    #[test]
    fn batches_pad_to_their_longest_input_and_mark_the_padding() {
        let examples = EncoderExamples::new(
            inputs(10),
            ExampleTargets::Classes((0..10).map(|i| i % 2).collect()),
            batching(4, 1, false),
        )
        .unwrap();
        assert_eq!(examples.batches_per_pass(), 3);
        let batch = examples.batch_at(0, &Device::flex());
        // Inputs 0..4 have 1..=4 words: 3..=6 tokens, padded to 6.
        assert_eq!(batch.tokens.dims(), [4, 6]);
        let tokens = ids_of(batch.tokens);
        let padding: Vec<bool> = batch.padding.into_data().try_to_vec().unwrap();
        for (token, pad) in tokens.iter().zip(&padding) {
            assert_eq!(*pad, *token == 0);
        }
        assert_eq!(&tokens[..6], &[2, 10, 3, 0, 0, 0]);
        // The last batch of the pass is short.
        assert_eq!(examples.batch_at(2, &Device::flex()).tokens.dims()[0], 2);
    }

    #[test]
    fn each_pass_reshuffles_and_remasks_and_a_run_repeats_under_its_seed() {
        let make = || {
            EncoderExamples::new(
                inputs(40),
                ExampleTargets::MaskedLm {
                    is_next: vec![None; 40],
                    masking: MaskingConfig::default(),
                },
                batching(8, 7, true),
            )
            .unwrap()
        };
        let device = Device::flex();
        let (a, b) = (make(), make());
        let first_pass: Vec<Vec<i64>> = (0..5)
            .map(|g| ids_of(a.batch_at(g, &device).tokens))
            .collect();
        let again: Vec<Vec<i64>> = (0..5)
            .map(|g| ids_of(b.batch_at(g, &device).tokens))
            .collect();
        assert_eq!(first_pass, again);
        let second_pass: Vec<Vec<i64>> = (5..10)
            .map(|g| ids_of(a.batch_at(g, &device).tokens))
            .collect();
        assert_ne!(first_pass, second_pass);
        // Masked positions point at real tokens.
        let batch = a.batch_at(3, &device);
        let Targets::MaskedLm { positions, .. } = batch.targets else {
            unreachable!()
        };
        let padding: Vec<bool> = batch.padding.into_data().try_to_vec().unwrap();
        let positions: Vec<i64> = positions.into_data().convert::<i64>().try_to_vec().unwrap();
        assert!(!positions.is_empty());
        assert!(positions.iter().all(|&p| !padding[p as usize]));
    }

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
