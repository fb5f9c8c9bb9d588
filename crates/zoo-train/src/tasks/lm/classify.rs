//! GPT classification, fine-tuned as in the GPT-1 paper (Radford et al. 2018, section 3.2):
//! each text becomes `<|start|> text <|extract|>` (a pair, `<|start|> a <|delimiter|> b
//! <|extract|>`, from a text with a tab between its two parts), three tokens the run adds to
//! the vocabulary of the model it starts from (their embeddings start fresh); a linear head
//! reads the last block's state at the extract token; and with `training.lm_loss_weight`, the
//! language-model loss on the same inputs joins the objective, `L = L_classes + lambda *
//! L_lm`. Validation scores the classes only.
//!
//! A run directory holds what every run's does, and `labels.json`, the label names in id
//! order.

use crate::ZooError;
use crate::models::ModelConfig;
use crate::recipe::Recipe;
use crate::runtime::budget::Budget;
use crate::runtime::data::{BatchSource, TokenExamples};
use crate::runtime::logging::LineRenderer;
use crate::runtime::lora::{self, Base};
use crate::runtime::metrics::{
    LabelOutput, LabelReport, class_line, label_ids, with_label_metrics,
};
use crate::runtime::run_dir::{
    LABELS_FILE, TOKENIZER_FILE, TRAINED, locate_model, read_labels, write_run_file,
    write_run_recipe,
};
use crate::runtime::session::{Batches, Session, TaskOutcome, TrainingTask};
use crate::runtime::step::{CarriedState, GradientStep};
use crate::tasks::lm::LabelledRun;
use crate::tasks::lm::run::{LoadedRun, RunModel};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::train::{InferenceStep, SupervisedTraining, TrainOutput, TrainStep};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use zoo_blocks::decoding::ids_tensor;
use zoo_gpt::{AuxiliaryLm, Gpt, GptClassifier, GptConfig};
use zoo_text::{DataDir, DatasetRegistry, LabelledExample, ZooTokenizer};

/// The tokens that frame a classifier's input.
const START: &str = "<|start|>";
const DELIMITER: &str = "<|delimiter|>";
const EXTRACT: &str = "<|extract|>";

/// The ids of the three framing tokens.
#[derive(Clone, Copy, Debug)]
struct Markers {
    start: u32,
    delimiter: u32,
    extract: u32,
}

impl Markers {
    /// The tokens of `tokenizer`, added to it (after its last id) unless it has them.
    fn add_to(tokenizer: &mut ZooTokenizer) -> Self {
        let ids = tokenizer.add_special_tokens(&[START, DELIMITER, EXTRACT].map(String::from));
        Self {
            start: ids[0],
            delimiter: ids[1],
            extract: ids[2],
        }
    }

    /// The tokens of a classifier run's tokenizer.
    fn of(tokenizer: &ZooTokenizer) -> Result<Self, String> {
        let id = |token: &str| {
            tokenizer
                .token_id(token)
                .ok_or_else(|| format!("the tokenizer has no {token}: it is not a classifier's"))
        };
        Ok(Self {
            start: id(START)?,
            delimiter: id(DELIMITER)?,
            extract: id(EXTRACT)?,
        })
    }

    /// `example`'s input, at most `max_len` tokens: the text (each part of a pair) cut short
    /// to fit.
    fn frame(
        &self,
        tokenizer: &ZooTokenizer,
        text: &str,
        max_len: usize,
    ) -> Result<Vec<u32>, String> {
        let parts: Vec<Vec<u32>> = text
            .splitn(2, '\t')
            .map(|part| tokenizer.encode(part).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        // Start, extract and a delimiter per further part.
        let room = max_len.saturating_sub(1 + parts.len());
        let mut ids = vec![self.start];
        let share = room / parts.len();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                ids.push(self.delimiter);
            }
            ids.extend(&part[..part.len().min(share)]);
        }
        ids.push(self.extract);
        Ok(ids)
    }
}

/// Framed inputs and their labels, served in batches.
#[derive(Clone)]
pub struct ClassifierExamples {
    examples: TokenExamples<Vec<usize>>,
    /// Weight of the auxiliary language-model loss (0: none).
    lm_weight: f64,
}

/// A batch of a classifier's inputs.
#[derive(Clone, Debug)]
pub struct ClassifierBatch {
    /// Token ids `[batch, len]`, each input padded after its extract token.
    pub ids: Tensor<2, Int>,
    /// Flat position `b * len + t` of each input's extract token.
    pub extract: Tensor<1, Int>,
    /// The labels.
    pub labels: Tensor<1, Int>,
    /// The auxiliary language-model loss's positions and targets, when it is on.
    pub lm: Option<AuxiliaryLm>,
}

impl ClassifierExamples {
    /// Batch `g` of the run (counted from 0 across passes).
    fn batch_at(&self, g: usize, device: &Device) -> ClassifierBatch {
        let (picked, len) = self.examples.batch(g);
        let mut ids = vec![0i64; picked.len() * len];
        let (mut extract, mut positions, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for (b, &i) in picked.iter().enumerate() {
            let input = self.examples.input(i);
            let row = &mut ids[b * len..(b + 1) * len];
            // Padding repeats the extract token; being after it, it changes nothing the head
            // reads.
            row.fill(*input.last().expect("framed inputs are never empty") as i64);
            for (t, &id) in input.iter().enumerate() {
                row[t] = id as i64;
            }
            extract.push((b * len + input.len() - 1) as i64);
            // Every token of the text predicts the next (the extract token is not a target).
            for t in 0..input.len().saturating_sub(2) {
                positions.push((b * len + t) as i64);
                targets.push(input[t + 1] as i64);
            }
        }
        let ints = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), device)
        };
        let labels = picked
            .iter()
            .map(|&i| self.examples.targets()[i] as i64)
            .collect();
        ClassifierBatch {
            ids: Tensor::from_data(TensorData::new(ids, [picked.len(), len]), device),
            extract: ints(extract),
            labels: ints(labels),
            lm: (self.lm_weight > 0.0 && !positions.is_empty()).then(|| AuxiliaryLm {
                positions: ints(positions),
                targets: ints(targets),
                weight: self.lm_weight,
            }),
        }
    }
}

impl BatchSource for ClassifierExamples {
    type Batch = ClassifierBatch;

    fn batch(&self, epoch: usize, index: usize, per_epoch: usize, device: &Device) -> Self::Batch {
        self.batch_at(epoch * per_epoch + index, device)
    }

    /// Labelled sets are small: validation scores all of it.
    fn validation_batches(&self, _requested: usize) -> usize {
        self.examples.batches_per_pass()
    }
}

/// The classifier as burn-train sees it.
#[derive(Module, Debug)]
pub struct Classifier {
    /// The GPT and its head.
    pub model: GptClassifier,
    /// The loss scale of gradient accumulation.
    #[module(skip)]
    step: GradientStep,
}

/// Each batch stands alone: nothing is carried.
impl CarriedState for Classifier {}

impl Classifier {
    /// The loss of `batch`, with its auxiliary term when `training`.
    fn forward(&self, batch: ClassifierBatch, training: bool) -> LabelOutput {
        let expected = batch.labels.clone();
        let lm = if training { batch.lm } else { None };
        let out = self.model.loss(batch.ids, batch.extract, batch.labels, lm);
        LabelOutput {
            loss: out.loss,
            labels: (out.predicted, expected),
        }
    }
}

impl TrainStep for Classifier {
    type Input = ClassifierBatch;
    type Output = LabelOutput;

    fn step(&self, batch: ClassifierBatch) -> TrainOutput<LabelOutput> {
        self.step.output(self, self.forward(batch, true))
    }
}

impl InferenceStep for Classifier {
    type Input = ClassifierBatch;
    type Output = LabelOutput;

    fn step(&self, batch: ClassifierBatch) -> LabelOutput {
        self.forward(batch, false)
    }
}

/// The framed inputs of `examples`.
fn frame_all(
    examples: &[LabelledExample],
    tokenizer: &ZooTokenizer,
    markers: &Markers,
    max_len: usize,
) -> Result<Vec<Vec<u32>>, String> {
    examples
        .iter()
        .map(|e| markers.frame(tokenizer, &e.text, max_len))
        .collect()
}

/// Trains a GPT classifier recipe in `session`'s run directory.
pub fn train(session: &Session) -> Result<TaskOutcome, ZooError> {
    let (recipe, run_dir) = (session.recipe, session.run_dir.as_path());
    let registry = DatasetRegistry::builtin();
    let data = &recipe.data;
    let train_data =
        registry.load_labelled(&data.dataset, &data.train_split, session.data_dir())?;
    let val_data = registry.load_labelled(&data.dataset, &data.val_split, session.data_dir())?;

    // The GPT this one starts from: its shape always, its weights when starting afresh.
    let init_from = recipe.init_from.as_deref().map(locate_model).transpose()?;
    let pretrained = init_from
        .as_deref()
        .map(super::pretrained_config)
        .transpose()?;
    if let (Some(dir), Some(ModelConfig::Rnn(_))) = (&init_from, &pretrained) {
        return Err(ZooError::run_dir(
            dir,
            "is a recurrent language model: a classifier fine-tunes a GPT",
        ));
    }
    let autodiff = session.options.device.clone().autodiff();
    let init = match (&init_from, session.is_fresh()) {
        (Some(dir), true) => Some(super::load(dir, None, &autodiff)?),
        // A resumed LoRA run's checkpoints hold what trains only: the base comes back too.
        (Some(_), false) if recipe.finetune.lora() => Some(super::load_base(run_dir, &autodiff)?.0),
        _ => None,
    };

    session.create_run_dir()?;
    let (tokenizer, labels) = if session.is_fresh() {
        let mut tokenizer = match &init {
            Some(init) => init.tokenizer.clone(),
            None => {
                let text: String = train_data.iter().map(|e| format!("{}\n", e.text)).collect();
                let spec = recipe
                    .tokenizer_spec()
                    .map_err(|e| session.recipe_error(e))?;
                ZooTokenizer::build(spec, &text)?
            }
        };
        Markers::add_to(&mut tokenizer);
        let labels: BTreeSet<&String> = train_data.iter().map(|e| &e.label).collect();
        (tokenizer, labels.into_iter().cloned().collect::<Vec<_>>())
    } else {
        (
            ZooTokenizer::load(&run_dir.join(TOKENIZER_FILE))?,
            read_labels(run_dir)?,
        )
    };
    let markers = Markers::of(&tokenizer).map_err(|e| ZooError::run_dir(run_dir, e))?;
    let config = session.model_config(|config| {
        if let Some(pretrained) = &pretrained {
            recipe.take_pretrained_shape(config, pretrained)?;
        }
        // The pretrained vocabulary and the three framing tokens.
        if config.vocab_size() < tokenizer.vocab_size() {
            config.set_vocab_size(tokenizer.vocab_size());
        }
        Ok(())
    })?;
    let ModelConfig::Gpt(gpt) = &config else {
        unreachable!("validated classification recipes with arch = \"gpt\" are GPTs");
    };
    if session.is_fresh() {
        tokenizer.save(&run_dir.join(TOKENIZER_FILE))?;
        write_run_recipe(run_dir, recipe, &config, TRAINED)?;
        let text = serde_json::to_string(&labels).expect("strings serialise");
        write_run_file(&run_dir.join(LABELS_FILE), text.as_bytes())?;
    }

    let t = &recipe.training;
    let serve = |examples: &[LabelledExample], train: bool| {
        let split = if train { "training" } else { "validation" };
        let error = |e: String| session.recipe_error(format!("{split} split: {e}"));
        let inputs = frame_all(examples, &tokenizer, &markers, gpt.block_size).map_err(error)?;
        let ids = label_ids(examples.iter().map(|e| e.label.as_str()), &labels).map_err(error)?;
        let seed = recipe.seed ^ if train { 0 } else { 0x76_616C };
        Ok::<_, ZooError>(ClassifierExamples {
            examples: TokenExamples::new(inputs, ids, t.loader_batch_size(train), seed, train)
                .map_err(error)?,
            lm_weight: t.lm_loss_weight,
        })
    };
    let train_examples = serve(&train_data, true)?;
    let val_examples = serve(&val_data, false)?;
    let (per_pass, mean_tokens) = (
        train_examples.examples.batches_per_pass(),
        train_examples.examples.mean_tokens(),
    );
    let batches = Batches::of_examples(
        train_examples,
        val_examples,
        per_pass,
        mean_tokens,
        config.size().train_flops_per_token,
        recipe,
    );
    let task = ClassifierTraining {
        session,
        config: gpt,
        init: init.zip(init_from),
        labels: labels.len(),
        examples: train_data.len(),
    };
    let trained = session.train(task, batches, &config)?;
    Ok(TaskOutcome {
        steps: trained.steps,
        sample: None,
    })
}

/// A GPT classifier's part of a training session.
struct ClassifierTraining<'a> {
    session: &'a Session<'a>,
    config: &'a GptConfig,
    /// The GPT this one starts from (fresh runs with `init_from`), and where it was found.
    init: Option<(LoadedRun, PathBuf)>,
    /// Label count.
    labels: usize,
    /// Training examples.
    examples: usize,
}

impl TrainingTask for ClassifierTraining<'_> {
    type Model = Classifier;
    type Source = ClassifierExamples;

    fn model(&mut self, device: &Device) -> Result<Classifier, ZooError> {
        let recipe = self.session.recipe;
        let mut gpt = self
            .config
            .init(device)
            .map_err(|e| self.session.recipe_error(format!("[model]: {e}")))?;
        if let Some((init, from)) = self.init.take() {
            if recipe.finetune.lora() && self.session.is_fresh() {
                Base::new(&from, Some(init.epoch), super::base_weights(&init))?
                    .write(&self.session.run_dir)?;
            }
            let RunModel::Neural(crate::tasks::lm::model::LmModel::Gpt(pretrained)) = init.model
            else {
                unreachable!("train refuses other language models");
            };
            let known = pretrained.vocab_size();
            gpt = gpt
                .with_weights_of(pretrained)
                .map_err(|e| ZooError::run_dir(&from, e))?;
            println!(
                "loaded the gpt from {} ({} parameters); new: {} token(s) ({START}, {DELIMITER}, {EXTRACT} as needed) and the classification head of {} labels",
                from.display(),
                gpt.num_params(),
                self.config.vocab_size - known,
                self.labels
            );
        }
        if recipe.finetune.lora() {
            gpt = adapt(gpt, recipe).map_err(|e| self.session.recipe_error(e))?;
            println!(
                "{}; the token embedding trains whole (its new rows have nothing to adapt)",
                lora::adapted(&gpt)
            );
        }
        let t = &recipe.training;
        if let Some(frozen) = t.frozen() {
            println!("{frozen}");
        }
        let gpt = gpt.freeze(t.freeze_embeddings, t.freeze_layers);
        Ok(Classifier {
            model: GptClassifier::new(gpt, self.labels, device),
            step: GradientStep::of(recipe),
        })
    }

    fn metrics(&self, training: SupervisedTraining<Classifier>) -> SupervisedTraining<Classifier> {
        with_label_metrics(training)
    }

    fn progress(&self, budget: Budget) -> LineRenderer {
        LineRenderer::for_labels(budget, self.session.recipe.training.micro_batch_size())
    }

    fn announce(&self, budget: &Budget) -> String {
        let recipe = self.session.recipe;
        let t = &recipe.training;
        format!(
            "training {} (a GPT classifier of {} labels{}) on {} examples of '{}' for {} steps of {} inputs of up to {} tokens; run directory {}",
            recipe.name(),
            self.labels,
            if t.lm_loss_weight > 0.0 {
                format!(", auxiliary language-model loss x {}", t.lm_loss_weight)
            } else {
                String::new()
            },
            self.examples,
            recipe.data.dataset,
            budget.total_steps,
            t.batch_size * t.grad_accumulation,
            self.config.block_size,
            self.session.run_dir.display()
        )
    }
}

/// `gpt` with the LoRA adapters `recipe` asks for, and its token embedding trained whole: the
/// framing tokens the run adds have no pretrained rows for an adapter to adapt (PEFT trains an
/// embedding whole, as `modules_to_save`, when tokens are added). The head, made after, trains
/// whole too.
fn adapt(gpt: Gpt, recipe: &Recipe) -> Result<Gpt, String> {
    lora::attach(gpt, &recipe.finetune, &recipe.lora_targets()).map(Gpt::with_trainable_embeddings)
}

/// A trained GPT classifier, loaded.
pub type ClassifierRun = LabelledRun<GptClassifier>;

/// Loads a GPT classifier run's last checkpoint (or `epoch`'s) onto `device`.
pub fn load(
    run_dir: &Path,
    epoch: Option<usize>,
    device: &Device,
) -> Result<ClassifierRun, ZooError> {
    LabelledRun::load(run_dir, epoch, |recipe, config, labels| {
        let ModelConfig::Gpt(config) = config else {
            return Err("is not a GPT classifier run".into());
        };
        let mut gpt = config.init(device)?;
        if recipe.finetune.lora() {
            // The base's weights, the adapters (and the embedding and head) from a checkpoint.
            let (base, _) = super::load_base(run_dir, device).map_err(|e| e.to_string())?;
            let RunModel::Neural(crate::tasks::lm::model::LmModel::Gpt(base)) = base.model else {
                return Err("adapts a model that is not a GPT".into());
            };
            gpt = adapt(gpt.with_weights_of(base)?, recipe)?;
        }
        Ok(Classifier {
            model: GptClassifier::new(gpt, labels, device),
            step: GradientStep::new(1),
        })
    })
    // A LoRA run's adapters merged into its base's weights; other models are as they were.
    .map(|run| run.map(|model| model.model.materialize()))
}

/// `zoo predict`'s line for `text` (a pair: its two parts joined by a tab): the likeliest
/// label and its probability, then every label's.
pub fn predict(run: &ClassifierRun, text: &str) -> Result<String, ZooError> {
    let markers = Markers::of(&run.tokenizer).map_err(ZooError::Usage)?;
    let ids = markers
        .frame(&run.tokenizer, text, run.model.gpt.block_size())
        .map_err(ZooError::Usage)?;
    let device = run.model.devices()[0].clone();
    let extract =
        Tensor::<1, Int>::from_data(TensorData::new(vec![ids.len() as i64 - 1], [1]), &device);
    let (logits, _) = run.model.logits(ids_tensor(&ids, &device), extract);
    let probs: Vec<f32> = softmax(logits, 1)
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap_or_default();
    Ok(class_line(&run.labels, &probs))
}

/// Scores a GPT classifier run on a whole split: loss, accuracy and F1.
pub fn evaluate(
    run: &ClassifierRun,
    split: &str,
    data_dir: &DataDir,
) -> Result<LabelReport, ZooError> {
    let recipe = &run.recipe;
    let usage = |e: String| ZooError::Usage(format!("split '{split}': {e}"));
    let examples =
        DatasetRegistry::builtin().load_labelled(&recipe.data.dataset, split, data_dir)?;
    let markers = Markers::of(&run.tokenizer).map_err(usage)?;
    let inputs = frame_all(
        &examples,
        &run.tokenizer,
        &markers,
        run.model.gpt.block_size(),
    )
    .map_err(usage)?;
    let ids = label_ids(examples.iter().map(|e| e.label.as_str()), &run.labels).map_err(usage)?;
    let served = ClassifierExamples {
        examples: TokenExamples::new(inputs, ids, recipe.training.batch_size, recipe.seed, false)
            .map_err(usage)?,
        lm_weight: 0.0,
    };
    let device = run.model.devices()[0].clone();
    let outputs = (0..served.examples.batches_per_pass()).map(|g| {
        let batch = served.batch_at(g, &device);
        let expected = batch.labels.clone();
        let out = run.model.loss(batch.ids, batch.extract, batch.labels, None);
        LabelOutput {
            loss: out.loss,
            labels: (out.predicted, expected),
        }
    });
    Ok(LabelReport::of_outputs(split, outputs))
}
