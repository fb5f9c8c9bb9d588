//! Classification and tagging on ELMo features (Peters et al. 2018): `model.arch = "elmo"`
//! with `init_from` a biLM run (`arch = "rnn"`, `bidirectional = true`). The biLM stays frozen
//! and reads each text with its own tokenizer; the task model ([`zoo_rnn::ElmoModel`]) learns a
//! scalar mix of its layers, and a bidirectional LSTM and a head on each token's embedding and
//! mix side by side. `features = "embeddings"` trains the same task model on the biLM's token
//! embeddings alone.
//!
//! Classification reads a labelled dataset's texts; tagging a tagged dataset's words, each
//! tagged at its last token (the one the forward stack has read the whole word at). A run
//! directory holds what every run's does (the whole model, biLM included, in each checkpoint)
//! and `labels.json`, the label or tag names in id order.

use crate::ZooError;
use crate::models::ModelConfig;
use crate::recipe::{Recipe, Task};
use crate::runtime::budget::Budget;
use crate::runtime::data::{BatchSource, TokenExamples};
use crate::runtime::logging::LineRenderer;
use crate::runtime::metrics::{
    LabelOutput, LabelReport, class_line, label_ids, tag_line, with_label_metrics,
};
use crate::runtime::run_dir::{
    LABELS_FILE, TOKENIZER_FILE, TRAINED, load_run_config, locate_model, read_labels,
    write_run_file, write_run_recipe,
};
use crate::runtime::session::{Batches, Session, TaskOutcome, TrainingTask};
use crate::runtime::step::{CarriedState, GradientStep};
use crate::tasks::lm::LabelledRun;
use crate::tasks::lm::model::LmModel;
use crate::tasks::lm::run::RunModel;
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::train::{InferenceStep, SupervisedTraining, TrainOutput, TrainStep};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use zoo_blocks::decoding::ids_tensor;
use zoo_blocks::loss::cross_entropy;
use zoo_rnn::{ElmoConfig, ElmoModel, RnnConfig, RnnLm};
use zoo_text::{DataDir, DatasetRegistry, LabelledExample, TaggedExample, ZooTokenizer};

/// A split as the task reads it.
enum SplitExamples {
    /// Texts and a label each.
    Labelled(Vec<LabelledExample>),
    /// Words and a tag per word.
    Tagged(Vec<TaggedExample>),
}

impl SplitExamples {
    fn load(task: Task, dataset: &str, split: &str, dir: &DataDir) -> Result<Self, ZooError> {
        let registry = DatasetRegistry::builtin();
        Ok(match task {
            Task::TokenClassification => Self::Tagged(registry.load_tagged(dataset, split)?),
            _ => Self::Labelled(registry.load_labelled(dataset, split, dir)?),
        })
    }

    fn len(&self) -> usize {
        match self {
            Self::Labelled(set) => set.len(),
            Self::Tagged(set) => set.len(),
        }
    }

    /// The label (or tag) names it uses, sorted.
    fn label_names(&self) -> Vec<String> {
        let names: BTreeSet<&String> = match self {
            Self::Labelled(set) => set.iter().map(|e| &e.label).collect(),
            Self::Tagged(set) => set.iter().flat_map(|e| &e.tags).collect(),
        };
        names.into_iter().cloned().collect()
    }

    /// Token ids of every example (at most `max_len` each) and its targets by `labels`.
    fn encode(
        &self,
        tokenizer: &ZooTokenizer,
        labels: &[String],
        max_len: usize,
    ) -> Result<(Vec<Vec<u32>>, Targets), String> {
        let nonempty = |i: usize, ids: &[u32]| {
            if ids.is_empty() {
                Err(format!("example {} has no tokens", i + 1))
            } else {
                Ok(())
            }
        };
        match self {
            Self::Labelled(set) => {
                let mut inputs = Vec::with_capacity(set.len());
                for (i, example) in set.iter().enumerate() {
                    let mut ids = tokenizer.encode(&example.text).map_err(|e| e.to_string())?;
                    ids.truncate(max_len);
                    nonempty(i, &ids)?;
                    inputs.push(ids);
                }
                let classes = label_ids(set.iter().map(|e| e.label.as_str()), labels)?;
                Ok((inputs, Targets::Classes(classes)))
            }
            Self::Tagged(set) => {
                let mut inputs = Vec::with_capacity(set.len());
                let mut tags = Vec::with_capacity(set.len());
                for (i, example) in set.iter().enumerate() {
                    let word_tags = label_ids(example.tags.iter().map(String::as_str), labels)?;
                    let (ids, ends) = encode_words(tokenizer, &example.words, max_len)?;
                    let mut at = vec![None; ids.len()];
                    for (end, tag) in ends.into_iter().zip(word_tags) {
                        if let Some(end) = end {
                            at[end] = Some(tag);
                        }
                    }
                    nonempty(i, &ids)?;
                    inputs.push(ids);
                    tags.push(at);
                }
                Ok((inputs, Targets::Tags(tags)))
            }
        }
    }
}

/// The token ids of `words` as running text, at most `max_len`, and the position of each word's
/// last token (`None` for a word the tokenizer drops whole or the cut leaves out).
fn encode_words(
    tokenizer: &ZooTokenizer,
    words: &[String],
    max_len: usize,
) -> Result<(Vec<u32>, Vec<Option<usize>>), String> {
    let (mut ids, mut ends) = (Vec::new(), Vec::with_capacity(words.len()));
    for (w, word) in words.iter().enumerate() {
        // Words after the first as they stand in running text.
        let word = if w == 0 {
            word.clone()
        } else {
            format!(" {word}")
        };
        let before = ids.len();
        ids.extend(tokenizer.encode(&word).map_err(|e| e.to_string())?);
        ends.push((ids.len() > before && ids.len() <= max_len).then(|| ids.len() - 1));
    }
    ids.truncate(max_len);
    Ok((ids, ends))
}

/// What each input asks the model to predict.
enum Targets {
    /// A label id per input.
    Classes(Vec<usize>),
    /// Per input, a tag id per token (`None`: not scored).
    Tags(Vec<Vec<Option<usize>>>),
}

/// Inputs and their targets, served in padded batches.
#[derive(Clone)]
pub struct ElmoExamples(TokenExamples<Targets>);

/// A batch of token ids and targets.
#[derive(Clone, Debug)]
pub struct ElmoBatch {
    /// Token ids `[batch, len]`, padded with 0 after each input.
    pub ids: Tensor<2, Int>,
    /// True at the padded positions, `[batch, len]`.
    pub padding: Tensor<2, Bool>,
    /// Classification: empty. Tagging: the flat positions `b * len + t` that carry a tag.
    pub positions: Option<Tensor<1, Int>>,
    /// The labels (or the tags at `positions`).
    pub labels: Tensor<1, Int>,
}

impl ElmoExamples {
    /// Batch `g` of the run (counted from 0 across passes).
    fn batch_at(&self, g: usize, device: &Device) -> ElmoBatch {
        let (picked, len) = self.0.batch(g);
        let mut ids = vec![0i64; picked.len() * len];
        let mut padding = vec![true; picked.len() * len];
        let (mut positions, mut labels) = (Vec::new(), Vec::new());
        for (b, &i) in picked.iter().enumerate() {
            for (t, &id) in self.0.input(i).iter().enumerate() {
                ids[b * len + t] = id as i64;
                padding[b * len + t] = false;
            }
            match self.0.targets() {
                Targets::Classes(classes) => labels.push(classes[i] as i64),
                Targets::Tags(tags) => {
                    for (t, tag) in tags[i].iter().enumerate() {
                        if let Some(tag) = tag {
                            positions.push((b * len + t) as i64);
                            labels.push(*tag as i64);
                        }
                    }
                }
            }
        }
        let ints = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), device)
        };
        let shape = [picked.len(), len];
        ElmoBatch {
            ids: Tensor::from_data(TensorData::new(ids, shape), device),
            padding: Tensor::from_data(TensorData::new(padding, shape), device),
            positions: matches!(self.0.targets(), Targets::Tags(_)).then(|| ints(positions)),
            labels: ints(labels),
        }
    }
}

impl BatchSource for ElmoExamples {
    type Batch = ElmoBatch;

    fn batch(&self, epoch: usize, index: usize, per_epoch: usize, device: &Device) -> ElmoBatch {
        self.batch_at(epoch * per_epoch + index, device)
    }

    /// Labelled sets are small: validation scores all of it.
    fn validation_batches(&self, _requested: usize) -> usize {
        self.0.batches_per_pass()
    }
}

/// The task model as burn-train sees it.
#[derive(Module, Debug)]
pub struct ElmoTask {
    /// The biLM and the task model on it.
    pub model: ElmoModel,
    /// The loss scale of gradient accumulation.
    #[module(skip)]
    step: GradientStep,
}

/// Each batch stands alone: nothing is carried.
impl CarriedState for ElmoTask {}

impl ElmoTask {
    /// The loss of `batch` and its predictions.
    fn forward(&self, batch: ElmoBatch) -> LabelOutput {
        let logits = match batch.positions {
            None => self.model.class_logits(batch.ids, batch.padding),
            Some(positions) => {
                let logits = self.model.tag_logits(batch.ids, batch.padding);
                let [b, len, labels] = logits.dims();
                logits.reshape([b * len, labels]).select(0, positions)
            }
        };
        let predicted = logits.clone().argmax(1).flatten(0, 1);
        LabelOutput {
            loss: cross_entropy(logits, batch.labels.clone()),
            labels: (predicted, batch.labels),
        }
    }
}

impl TrainStep for ElmoTask {
    type Input = ElmoBatch;
    type Output = LabelOutput;

    fn step(&self, batch: ElmoBatch) -> TrainOutput<LabelOutput> {
        self.step.output(self, self.forward(batch))
    }
}

impl InferenceStep for ElmoTask {
    type Input = ElmoBatch;
    type Output = LabelOutput;

    fn step(&self, batch: ElmoBatch) -> LabelOutput {
        self.forward(batch)
    }
}

/// The biLM config of the run at `dir`, or an error saying why it is not one.
fn bilm_config(dir: &Path) -> Result<RnnConfig, ZooError> {
    match load_run_config(dir)? {
        (recipe, ModelConfig::Rnn(config))
            if config.bidirectional && recipe.task == Task::CausalLm =>
        {
            Ok(config)
        }
        _ => Err(ZooError::run_dir(
            dir,
            "is not a biLM run: ELMo features come from a run of arch = \"rnn\" with bidirectional = true",
        )),
    }
}

/// `config`'s biLM fields set to `bilm`'s; a field the recipe states otherwise is an error.
fn take_bilm_shape(
    recipe: &Recipe,
    config: &mut ModelConfig,
    bilm: &RnnConfig,
) -> Result<(), String> {
    let ModelConfig::Elmo(elmo) = config else {
        unreachable!("validated arch = \"elmo\" recipes resolve to ELMo configs");
    };
    let theirs = toml::Table::try_from(bilm).expect("configs serialise to TOML");
    for (key, value) in &recipe.model.overrides {
        if let Some(bilm_value) = theirs.get(key)
            && key != "dropout"
            && bilm_value != value
        {
            return Err(format!(
                "model.{key} = {value}: the biLM has {bilm_value} (its shape comes from init_from)"
            ));
        }
    }
    elmo.take_bilm_shape(bilm);
    Ok(())
}

/// Trains an ELMo classifier or tagger recipe in `session`'s run directory.
pub fn train(session: &Session) -> Result<TaskOutcome, ZooError> {
    let (recipe, run_dir) = (session.recipe, session.run_dir.as_path());
    let data = &recipe.data;
    let train_data = SplitExamples::load(
        recipe.task,
        &data.dataset,
        &data.train_split,
        session.data_dir(),
    )?;
    let val_data = SplitExamples::load(
        recipe.task,
        &data.dataset,
        &data.val_split,
        session.data_dir(),
    )?;

    let from = recipe
        .init_from
        .as_deref()
        .map(locate_model)
        .transpose()?
        .expect("validated ELMo recipes have init_from");
    let bilm_shape = bilm_config(&from)?;
    // The biLM's weights, when starting afresh (a resumed run's checkpoints hold them).
    let bilm = if session.is_fresh() {
        let loaded = super::load(&from, None, &session.options.device.clone().autodiff())?;
        let RunModel::Neural(LmModel::Rnn(bilm)) = loaded.model else {
            unreachable!("bilm_config accepts recurrent runs only");
        };
        Some((bilm, loaded.tokenizer))
    } else {
        None
    };

    session.create_run_dir()?;
    let (tokenizer, labels) = match &bilm {
        Some((_, tokenizer)) => (tokenizer.clone(), train_data.label_names()),
        None => (
            ZooTokenizer::load(&run_dir.join(TOKENIZER_FILE))?,
            read_labels(run_dir)?,
        ),
    };
    let config = session.model_config(|config| take_bilm_shape(recipe, config, &bilm_shape))?;
    let ModelConfig::Elmo(elmo) = &config else {
        unreachable!("take_bilm_shape checked the config");
    };
    if session.is_fresh() {
        tokenizer.save(&run_dir.join(TOKENIZER_FILE))?;
        write_run_recipe(run_dir, recipe, &config, TRAINED)?;
        let text = serde_json::to_string(&labels).expect("strings serialise");
        write_run_file(&run_dir.join(LABELS_FILE), text.as_bytes())?;
    }

    let t = &recipe.training;
    let seq_len = recipe.sequence_len(&config);
    let serve = |examples: &SplitExamples, train: bool| {
        let split = if train { "training" } else { "validation" };
        let error = |e: String| session.recipe_error(format!("{split} split: {e}"));
        let (inputs, targets) = examples
            .encode(&tokenizer, &labels, seq_len)
            .map_err(error)?;
        let seed = recipe.seed ^ if train { 0 } else { 0x76_616C };
        TokenExamples::new(inputs, targets, t.loader_batch_size(train), seed, train)
            .map(ElmoExamples)
            .map_err(error)
    };
    let train_examples = serve(&train_data, true)?;
    let val_examples = serve(&val_data, false)?;
    let (per_pass, mean_tokens) = (
        train_examples.0.batches_per_pass(),
        train_examples.0.mean_tokens(),
    );
    let batches = Batches::of_examples(
        train_examples,
        val_examples,
        per_pass,
        mean_tokens,
        config.size().train_flops_per_token,
        recipe,
    );
    let task = ElmoTraining {
        session,
        config: elmo,
        bilm: bilm.map(|(bilm, _)| (bilm, from)),
        labels: labels.len(),
        examples: train_data.len(),
        seq_len,
    };
    let trained = session.train(task, batches, &config)?;
    Ok(TaskOutcome {
        steps: trained.steps,
        sample: None,
    })
}

/// An ELMo task model's part of a training session.
struct ElmoTraining<'a> {
    session: &'a Session<'a>,
    config: &'a ElmoConfig,
    /// The trained biLM (fresh runs), and where it was found.
    bilm: Option<(RnnLm, PathBuf)>,
    /// Label (or tag) count.
    labels: usize,
    /// Training examples.
    examples: usize,
    /// Longest input in tokens.
    seq_len: usize,
}

impl TrainingTask for ElmoTraining<'_> {
    type Model = ElmoTask;
    type Source = ElmoExamples;

    fn model(&mut self, device: &Device) -> Result<ElmoTask, ZooError> {
        let session = self.session;
        let mut model = self
            .config
            .init(self.labels, device)
            .map_err(|e| session.recipe_error(format!("[model]: {e}")))?;
        if let Some((bilm, from)) = self.bilm.take() {
            let params = bilm.num_params();
            model = model.with_bilm(bilm);
            let reads = match self.config.mixed_layers() {
                0 => "its word embeddings".to_string(),
                layers => format!("its word embeddings and a scalar mix of its {layers} layers"),
            };
            println!(
                "loaded the biLM from {} ({params} parameters, frozen); the task model reads {reads} ({} parameters train)",
                from.display(),
                model.num_params() - params
            );
        }
        Ok(ElmoTask {
            model,
            step: GradientStep::of(session.recipe),
        })
    }

    fn metrics(&self, training: SupervisedTraining<ElmoTask>) -> SupervisedTraining<ElmoTask> {
        with_label_metrics(training)
    }

    fn progress(&self, budget: Budget) -> LineRenderer {
        LineRenderer::for_labels(budget, self.session.recipe.training.micro_batch_size())
    }

    fn announce(&self, budget: &Budget) -> String {
        let recipe = self.session.recipe;
        let t = &recipe.training;
        format!(
            "training {} (a {} of {} labels on {:?} features) on {} examples of '{}' for {} steps of {} inputs of up to {} tokens; run directory {}",
            recipe.name(),
            if recipe.task == Task::TokenClassification {
                "tagger"
            } else {
                "classifier"
            },
            self.labels,
            self.config.features,
            self.examples,
            recipe.data.dataset,
            budget.total_steps,
            t.batch_size * t.grad_accumulation,
            self.seq_len,
            self.session.run_dir.display()
        )
    }
}

/// A trained ELMo task model, loaded.
pub type ElmoRun = LabelledRun<ElmoModel>;

/// Loads an ELMo task run's last checkpoint (or `epoch`'s) onto `device`.
pub fn load(run_dir: &Path, epoch: Option<usize>, device: &Device) -> Result<ElmoRun, ZooError> {
    LabelledRun::load(run_dir, epoch, |_, config, labels| {
        let ModelConfig::Elmo(config) = config else {
            return Err("is not an ELMo task run".into());
        };
        Ok(ElmoTask {
            model: config.init(labels, device)?,
            step: GradientStep::new(1),
        })
    })
    .map(|run| run.map(|task| task.model))
}

/// `zoo predict`'s line for `text`: for a classifier, the likeliest label and its probability,
/// then every label's; for a tagger, `word/TAG` per word (of the text split at whitespace).
pub fn predict(run: &ElmoRun, text: &str) -> Result<String, ZooError> {
    let device = run.model.devices()[0].clone();
    let config = run.recipe.model_config().map_err(ZooError::Usage)?;
    let max_len = run.recipe.sequence_len(&config);
    let usage = |e: String| ZooError::Usage(format!("--input: {e}"));
    let words: Vec<String> = text.split_whitespace().map(String::from).collect();
    let (ids, ends) = if run.recipe.task == Task::TokenClassification {
        encode_words(&run.tokenizer, &words, max_len).map_err(usage)?
    } else {
        let mut ids = run.tokenizer.encode(text)?;
        ids.truncate(max_len);
        (ids, Vec::new())
    };
    if ids.is_empty() {
        return Err(usage("no tokens".into()));
    }
    let padding = Tensor::full([1, ids.len()], false, &device);
    let read = |t: Tensor<2>| -> Vec<f32> {
        softmax(t, 1)
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap_or_default()
    };
    let tensor = ids_tensor(&ids, &device);
    if run.recipe.task != Task::TokenClassification {
        let probs = read(run.model.class_logits(tensor, padding));
        return Ok(class_line(&run.labels, &probs));
    }
    let labels = run.labels.len();
    let probs = read(
        run.model
            .tag_logits(tensor, padding)
            .reshape([ids.len(), labels]),
    );
    // Each word's tag, read at its last token (none for a word without one).
    let tags: Vec<String> = ends
        .iter()
        .map(|end| {
            end.map_or_else(String::new, |t| {
                let row = &probs[t * labels..(t + 1) * labels];
                let best = (0..labels).max_by(|&a, &b| row[a].total_cmp(&row[b]));
                run.labels[best.unwrap_or(0)].clone()
            })
        })
        .collect();
    Ok(tag_line(&words, &tags))
}

/// Scores an ELMo task run on a whole split: loss, accuracy and F1 (of labels, or of tags).
pub fn evaluate(run: &ElmoRun, split: &str, data_dir: &DataDir) -> Result<LabelReport, ZooError> {
    let recipe = &run.recipe;
    let usage = |e: String| ZooError::Usage(format!("split '{split}': {e}"));
    let examples = SplitExamples::load(recipe.task, &recipe.data.dataset, split, data_dir)?;
    let config = recipe.model_config().map_err(usage)?;
    let (inputs, targets) = examples
        .encode(&run.tokenizer, &run.labels, recipe.sequence_len(&config))
        .map_err(usage)?;
    let served = TokenExamples::new(
        inputs,
        targets,
        recipe.training.batch_size,
        recipe.seed,
        false,
    )
    .map_err(usage)?;
    let device = run.model.devices()[0].clone();
    let task = ElmoTask {
        model: run.model.clone(),
        step: GradientStep::new(1),
    };
    let served = ElmoExamples(served);
    let outputs =
        (0..served.0.batches_per_pass()).map(|g| task.forward(served.batch_at(g, &device)));
    Ok(LabelReport::of_outputs(split, outputs))
}
