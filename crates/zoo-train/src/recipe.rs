//! The recipe: one TOML file that names everything a run needs. Every section and key is
//! checked; an unknown key or a bad value is an error naming the key and the file.
//!
//! ```toml
//! name = "baby-char"            # run directory name (default: the file's stem)
//! seed = 1337
//!
//! [model]
//! preset = "gpt-baby-char"      # any field of the preset can be overridden below
//! dropout = 0.0
//!
//! [tokenizer]
//! kind = "char"                 # char | word | byte-bpe | file
//!
//! [data]
//! dataset = "tinyshakespeare"   # a name from the dataset registry
//!
//! [optimizer]
//! kind = "adamw"                # adamw | sgd
//! lr = 1e-3
//! weight_decay = 0.1
//! beta2 = 0.99
//! grad_clip = 1.0               # global gradient norm; 0 turns clipping off
//!
//! [schedule]
//! kind = "warmup-cosine"        # constant | warmup-cosine | noam
//! warmup_steps = 100
//! min_lr = 1e-4
//!
//! [training]
//! batch_size = 12
//! steps = 2000                  # or epochs, tokens or flops = N
//! eval_interval = 250
//! ```

use crate::ZooError;
use crate::seq2seq::SENTINELS;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use zoo_bert::BertConfig;
use zoo_blocks::SamplingConfig;
use zoo_gpt::{GptConfig, ModelSize};
use zoo_rnn::RnnConfig;
use zoo_seq2seq::{RnnAttentionConfig, Seq2SeqSize, TransformerConfig};
use zoo_text::TokenizerSpec;
use zoo_text::span_corruption::SpanCorruption;

/// A parsed recipe.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Run name; the run directory is `runs/<name>` unless given.
    #[serde(default)]
    pub name: Option<String>,
    /// Seed of initialisation, batches and dropout.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// What the model learns: `causal-lm` (GPT, RNN, n-gram), or for BERT `masked-lm`
    /// pretraining and the `classification`, `token-classification`, `span-qa` fine-tuning tasks.
    #[serde(default)]
    pub task: Task,
    /// A BERT run directory whose encoder this run starts from (its heads are left behind and
    /// this task's head starts fresh).
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// The model: `arch`, `preset` and overrides of the preset's fields.
    pub model: ModelSpec,
    /// The tokenizer (a run that starts from `init_from` takes that run's and may leave it out).
    /// Encoder-decoders without a `[target_tokenizer]` train this one on both sides: a joint
    /// vocabulary.
    #[serde(default)]
    pub tokenizer: Option<TokenizerSpec>,
    /// Encoder-decoders: a separate tokenizer (and vocabulary) for the target side; the
    /// `[tokenizer]` then covers the source only.
    #[serde(default)]
    pub target_tokenizer: Option<TokenizerSpec>,
    /// The data.
    pub data: DataSpec,
    /// The optimiser.
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    /// The learning-rate schedule.
    #[serde(default)]
    pub schedule: ScheduleSpec,
    /// Budget, batch and intervals (an n-gram model, counted in one pass, needs none).
    #[serde(default)]
    pub training: TrainingSpec,
    /// The sample printed at the end of training.
    #[serde(default)]
    pub sample: SampleSpec,
    /// Encoder-decoders: how outputs are decoded for BLEU and exact match.
    #[serde(default)]
    pub decoding: DecodingSpec,
}

/// `[decoding]`: how an encoder-decoder's outputs are decoded when a run is scored (at the end
/// of training and by `zoo eval`); `zoo translate` takes the same as options.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DecodingSpec {
    /// Beam width; 1 is greedy decoding.
    pub beam: usize,
    /// Beam search ranks finished hypotheses by log-probability / length^length_penalty.
    pub length_penalty: f64,
    /// Targets are at most `max_len_a * source length + max_len_b` tokens (fairseq's).
    pub max_len_a: f64,
    /// See `max_len_a`.
    pub max_len_b: usize,
}

impl Default for DecodingSpec {
    fn default() -> Self {
        Self {
            beam: 1,
            length_penalty: 1.0,
            max_len_a: 1.5,
            max_len_b: 10,
        }
    }
}

fn default_seed() -> u64 {
    1337
}

/// What a run trains the model to do.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Predict the next token (GPT, RNN, n-gram).
    #[default]
    CausalLm,
    /// BERT pretraining: masked tokens, and the next sentence when `data.next_sentence` is set.
    MaskedLm,
    /// A label per sequence (from a labelled dataset).
    Classification,
    /// A label per token.
    TokenClassification,
    /// Answer span start and end.
    SpanQa,
    /// Map a source sequence to a target sequence (translation, synthetic tasks):
    /// encoder-decoders.
    Translation,
    /// T5's pretraining: restore the spans that sentinels replaced in a text.
    SpanCorruption,
}

impl Task {
    /// Whether the task trains an encoder (BERT).
    pub fn is_encoder(self) -> bool {
        matches!(
            self,
            Task::MaskedLm | Task::Classification | Task::TokenClassification | Task::SpanQa
        )
    }

    /// Whether the task trains an encoder-decoder.
    pub fn is_seq2seq(self) -> bool {
        matches!(self, Task::Translation | Task::SpanCorruption)
    }

    /// The recipe spelling.
    pub fn name(self) -> &'static str {
        match self {
            Task::CausalLm => "causal-lm",
            Task::MaskedLm => "masked-lm",
            Task::Classification => "classification",
            Task::TokenClassification => "token-classification",
            Task::SpanQa => "span-qa",
            Task::Translation => "translation",
            Task::SpanCorruption => "span-corruption",
        }
    }
}

/// `[model]`: an architecture, a preset and field overrides. Stored resolved in a run directory.
/// (Unknown keys are caught when the overrides meet the config's fields.)
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// The family: `gpt`, `rnn` (LSTM/GRU language models), `ngram` (Kneser-Ney counts) or
    /// `bert` (encoders).
    #[serde(default = "default_arch")]
    pub arch: String,
    /// A named shape to start from.
    #[serde(default)]
    pub preset: Option<String>,
    /// Fields that replace the preset's.
    #[serde(flatten)]
    pub overrides: toml::Table,
}

fn default_arch() -> String {
    "gpt".into()
}

/// `[data]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// A dataset registry name (`embedded`, `tinyshakespeare`, `ptb`, ...).
    pub dataset: String,
    /// Split to train on.
    #[serde(default = "train_split")]
    pub train_split: String,
    /// Split to validate on.
    #[serde(default = "val_split")]
    pub val_split: String,
    /// More datasets whose `train` split joins the training text (masked-LM pretraining on
    /// several corpora).
    #[serde(default)]
    pub extra_train: Vec<String>,
    /// Masked-LM: share of tokens selected for prediction (BERT: 0.15).
    #[serde(default = "default_mask_prob")]
    pub mask_prob: f64,
    /// Masked-LM: train on sentence pairs with next-sentence prediction.
    #[serde(default)]
    pub next_sentence: bool,
    /// Masked-LM: a document ends at a blank line, and also every this many lines when set
    /// (corpora with one sentence per line and no document marks).
    #[serde(default)]
    pub document_lines: Option<usize>,
    /// Translation: the source language (default: the dataset's first).
    #[serde(default)]
    pub source: Option<String>,
    /// Translation: the target language (default: the dataset's second).
    #[serde(default)]
    pub target: Option<String>,
    /// Span corruption: share of tokens replaced (T5: 0.15).
    #[serde(default = "default_noise_density")]
    pub noise_density: f64,
    /// Span corruption: mean length of a replaced span (T5: 3).
    #[serde(default = "default_mean_span_length")]
    pub mean_span_length: f64,
}

fn default_noise_density() -> f64 {
    0.15
}

fn default_mean_span_length() -> f64 {
    3.0
}

fn default_mask_prob() -> f64 {
    0.15
}

fn train_split() -> String {
    "train".into()
}
fn val_split() -> String {
    "val".into()
}

/// Which optimiser.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// AdamW (decoupled weight decay).
    #[default]
    Adamw,
    /// SGD with optional momentum.
    Sgd,
}

/// `[optimizer]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerSpec {
    /// AdamW or SGD.
    pub kind: OptimizerKind,
    /// Peak learning rate (for `noam`, the schedule's scale factor).
    pub lr: f64,
    /// Weight decay (decoupled for AdamW, L2 for SGD), on every parameter: burn's optimisers
    /// have no per-parameter groups, so unlike nanoGPT biases and norm gains decay too.
    pub weight_decay: f64,
    /// AdamW's first-moment decay.
    pub beta1: f64,
    /// AdamW's second-moment decay.
    pub beta2: f64,
    /// AdamW's epsilon.
    pub eps: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Clip the global gradient norm to this; 0 disables clipping.
    pub grad_clip: f64,
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Adamw,
            lr: 1e-3,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            momentum: 0.0,
            grad_clip: 1.0,
        }
    }
}

/// Which learning-rate schedule.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// The same rate throughout (after an optional linear warmup).
    #[default]
    Constant,
    /// Linear warmup, then cosine decay to `min_lr` (nanoGPT).
    WarmupCosine,
    /// `lr * d^-0.5 * min(step^-0.5, step * warmup^-1.5)` (Vaswani et al.).
    Noam,
}

/// `[schedule]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSpec {
    /// The schedule.
    pub kind: ScheduleKind,
    /// Steps of linear warmup from 0.
    pub warmup_steps: usize,
    /// Floor of the cosine decay (default: lr / 10).
    pub min_lr: Option<f64>,
    /// Step at which the cosine reaches `min_lr` (default: the run's last step).
    pub decay_steps: Option<usize>,
    /// Divide the rate by this whenever a validation loss is no better than the best so far
    /// (PyTorch's word-language-model example: 4); off when absent.
    pub plateau_divisor: Option<f64>,
}

/// `[training]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    #[serde(default = "one")]
    pub grad_accumulation: usize,
    /// Budget in optimiser steps...
    #[serde(default)]
    pub steps: Option<usize>,
    /// ...or in passes over the training tokens...
    #[serde(default)]
    pub epochs: Option<usize>,
    /// ...or in training tokens (the steps are as many as fit: tokens per step is the batch's
    /// for language models, the mean example's times the batch size for encoders and, counting
    /// target tokens, encoder-decoders)...
    #[serde(default)]
    pub tokens: Option<f64>,
    /// ...or in training FLOPs: as many steps as fit, at the model's training FLOPs per token
    /// (`zoo info` shows them) times the tokens per step. What `zoo compare` equalises.
    #[serde(default)]
    pub flops: Option<f64>,
    /// Steps between validations (each one ends a burn-train epoch).
    #[serde(default = "default_eval_interval")]
    pub eval_interval: usize,
    /// Batches per validation.
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    /// Steps between checkpoints (a multiple of `eval_interval`; default: every validation).
    #[serde(default)]
    pub checkpoint_interval: Option<usize>,
    /// Checkpoints kept (the newest).
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Recurrent models only: tokens per window of truncated backpropagation through time
    /// (default 35). The batch is `batch_size` contiguous streams read in such windows.
    #[serde(default)]
    pub bptt: Option<usize>,
    /// Recurrent models only: streams when validating and evaluating (default 10, as PyTorch's
    /// word-language-model example: fewer streams, longer contexts).
    #[serde(default)]
    pub eval_batch_size: Option<usize>,
    /// Encoders only: longest input in tokens, `[CLS]` and `[SEP]` included (default 128, at
    /// most the model's `max_len`); batches are padded to their longest input.
    #[serde(default)]
    pub seq_len: Option<usize>,
    /// Encoders only: keep the embeddings as they are (fine-tuning).
    #[serde(default)]
    pub freeze_embeddings: bool,
    /// Encoders only: keep the first this many encoder layers as they are (fine-tuning).
    #[serde(default)]
    pub freeze_layers: usize,
    /// Encoder-decoders: label smoothing of the target cross-entropy (the transformer: 0.1).
    #[serde(default)]
    pub label_smoothing: f64,
}

/// Tokens per encoder input unless `training.seq_len` says otherwise.
pub const DEFAULT_ENCODER_SEQ_LEN: usize = 128;

impl Default for TrainingSpec {
    /// No batch and no budget: what an n-gram recipe leaves out. Neural models must give both.
    fn default() -> Self {
        Self {
            batch_size: 0,
            grad_accumulation: 1,
            steps: None,
            epochs: None,
            tokens: None,
            flops: None,
            eval_interval: default_eval_interval(),
            eval_batches: default_eval_batches(),
            checkpoint_interval: None,
            keep_checkpoints: default_keep(),
            bptt: None,
            eval_batch_size: None,
            seq_len: None,
            freeze_embeddings: false,
            freeze_layers: 0,
            label_smoothing: 0.0,
        }
    }
}

fn one() -> usize {
    1
}
fn default_eval_interval() -> usize {
    250
}
fn default_eval_batches() -> usize {
    20
}
fn default_keep() -> usize {
    2
}

/// `[sample]`: the text printed when training ends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SampleSpec {
    /// Prompt (empty: the first token of the validation text).
    pub prompt: String,
    /// Tokens to generate (0: no sample).
    pub tokens: usize,
    /// Softmax temperature (0: greedy).
    pub temperature: f64,
    /// Sample among the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Sample from the nucleus of mass `top_p`.
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Default for SampleSpec {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            tokens: 300,
            temperature: 0.8,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SampleSpec {
    /// The decoding strategy.
    pub fn sampling(&self) -> SamplingConfig {
        SamplingConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        }
    }
}

impl Recipe {
    /// Reads and validates a recipe file.
    pub fn load(path: &Path) -> Result<Self, ZooError> {
        let text = std::fs::read_to_string(path).map_err(|e| ZooError::Recipe {
            path: path.to_path_buf(),
            message: format!("cannot read it: {e}"),
        })?;
        let mut recipe = Self::parse(&text).map_err(|message| ZooError::Recipe {
            path: path.to_path_buf(),
            message,
        })?;
        if recipe.name.is_none() {
            recipe.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        Ok(recipe)
    }

    /// Parses and validates recipe text; the error names the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let recipe: Recipe =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        recipe.validate()?;
        Ok(recipe)
    }

    /// The tokenizer the recipe names.
    pub fn tokenizer_spec(&self) -> Result<&TokenizerSpec, String> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| "missing [tokenizer]: name one, e.g. kind = \"char\"".to_string())
    }

    /// The model config: preset, then overrides. The vocabulary size is filled in later from
    /// the tokenizer when the recipe leaves it at 0.
    pub fn model_config(&self) -> Result<ModelConfig, String> {
        resolve_model(&self.model)
    }

    /// Streams a recurrent model validates and evaluates on.
    pub fn eval_batch_size(&self) -> usize {
        self.training
            .eval_batch_size
            .unwrap_or(DEFAULT_EVAL_BATCH_SIZE)
    }

    /// Tokens per training sequence: a GPT's block size, a recurrent model's BPTT window, an
    /// encoder's longest input.
    pub fn sequence_len(&self, config: &ModelConfig) -> usize {
        match config {
            ModelConfig::Gpt(gpt) => gpt.block_size,
            ModelConfig::Rnn(_) => self.training.bptt.unwrap_or(DEFAULT_BPTT),
            ModelConfig::Ngram(ngram) => ngram.order,
            ModelConfig::Bert(bert) => self
                .training
                .seq_len
                .unwrap_or(DEFAULT_ENCODER_SEQ_LEN.min(bert.max_len)),
            ModelConfig::Transformer(_) | ModelConfig::RnnAttention(_) => self
                .training
                .seq_len
                .unwrap_or(DEFAULT_SEQ2SEQ_SEQ_LEN.min(config.max_len())),
        }
    }

    /// The run's name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("run")
    }

    /// Where the run lives unless the command line says otherwise.
    pub fn default_run_dir(&self) -> PathBuf {
        PathBuf::from("runs").join(self.name())
    }

    fn validate(&self) -> Result<(), String> {
        let config = self.model_config()?;
        self.validate_task(&config)?;
        if self.init_from.is_none() {
            self.tokenizer_spec()?;
        }
        if let ModelConfig::Ngram(_) = config {
            // Counted in one pass: no optimiser, schedule or budget to check.
            return Ok(());
        }
        let t = &self.training;
        match (&config, t.bptt) {
            (ModelConfig::Gpt(_), Some(_)) => {
                return Err(
                    "training.bptt is for recurrent models; a GPT reads block_size tokens".into(),
                );
            }
            (ModelConfig::Rnn(_), Some(0)) => return Err("training.bptt must be at least 1".into()),
            _ => {}
        }
        let positive = [
            ("training.batch_size", t.batch_size),
            ("training.grad_accumulation", t.grad_accumulation),
            ("training.eval_interval", t.eval_interval),
            ("training.eval_batches", t.eval_batches),
            ("training.keep_checkpoints", t.keep_checkpoints),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        let budgets = [
            ("steps", t.steps.map(|s| s as f64)),
            ("epochs", t.epochs.map(|e| e as f64)),
            ("tokens", t.tokens),
            ("flops", t.flops),
        ];
        let given: Vec<&str> = budgets
            .iter()
            .filter(|(_, value)| value.is_some())
            .map(|(key, _)| *key)
            .collect();
        match given.as_slice() {
            [] => {
                return Err("training needs a budget: steps, epochs, tokens or flops = N".into());
            }
            [_] => {}
            _ => {
                return Err(format!(
                    "give one training budget, not {}",
                    given
                        .iter()
                        .map(|key| format!("training.{key}"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ));
            }
        }
        for (key, value) in budgets {
            if let Some(value) = value
                && !(value >= 1.0 && value.is_finite())
            {
                return Err(format!("training.{key} must be at least 1, got {value}"));
            }
        }
        if let Some(interval) = t.checkpoint_interval
            && (interval == 0 || interval % t.eval_interval != 0)
        {
            return Err(format!(
                "training.checkpoint_interval ({interval}) must be a positive multiple of training.eval_interval ({})",
                t.eval_interval
            ));
        }
        let o = &self.optimizer;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return Err(format!("optimizer.lr must be positive, got {}", o.lr));
        }
        for (key, value) in [
            ("optimizer.beta1", o.beta1),
            ("optimizer.beta2", o.beta2),
            ("optimizer.momentum", o.momentum),
        ] {
            if !(0.0..1.0).contains(&value) {
                return Err(format!("{key} must be in [0, 1), got {value}"));
            }
        }
        for (key, value) in [
            ("optimizer.weight_decay", o.weight_decay),
            ("optimizer.grad_clip", o.grad_clip),
            ("optimizer.eps", o.eps),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(format!("{key} must be >= 0, got {value}"));
            }
        }
        if let Some(min_lr) = self.schedule.min_lr
            && !(0.0..=o.lr).contains(&min_lr)
        {
            return Err(format!(
                "schedule.min_lr ({min_lr}) must be in [0, optimizer.lr = {}]",
                o.lr
            ));
        }
        if let Some(divisor) = self.schedule.plateau_divisor
            && !(divisor > 1.0 && divisor.is_finite())
        {
            return Err(format!(
                "schedule.plateau_divisor must be greater than 1, got {divisor}"
            ));
        }
        if self.schedule.kind == ScheduleKind::Noam && self.schedule.warmup_steps == 0 {
            return Err("schedule.warmup_steps must be at least 1 for the noam schedule".into());
        }
        self.sample
            .sampling()
            .validate()
            .map_err(|e| format!("sample.{e}"))?;
        Ok(())
    }
}

/// BPTT window of recurrent models when the recipe gives none (Zaremba et al.'s 35).
impl Recipe {
    /// The task fits the architecture, and keys of other families' tasks are not set.
    fn validate_task(&self, config: &ModelConfig) -> Result<(), String> {
        let encoder = matches!(config, ModelConfig::Bert(_));
        let seq2seq = config.is_seq2seq();
        let (fits, tasks) = if encoder {
            (
                self.task.is_encoder(),
                "\"masked-lm\", \"classification\", \"token-classification\" or \"span-qa\"",
            )
        } else if seq2seq {
            (
                self.task.is_seq2seq(),
                "\"translation\" or \"span-corruption\"",
            )
        } else {
            (self.task == Task::CausalLm, "\"causal-lm\"")
        };
        if !fits {
            return Err(format!(
                "task = \"{}\" does not fit model.arch = \"{}\", which trains with task = {tasks}",
                self.task.name(),
                self.model.arch
            ));
        }
        let t = &self.training;
        let d = &self.data;
        let translation = self.task == Task::Translation;
        // (key, set in the recipe, allowed for this task)
        let keys = [
            ("init_from", self.init_from.is_some(), encoder),
            ("training.seq_len", t.seq_len.is_some(), encoder || seq2seq),
            ("training.freeze_embeddings", t.freeze_embeddings, encoder),
            ("training.freeze_layers", t.freeze_layers > 0, encoder),
            ("data.next_sentence", d.next_sentence, encoder),
            ("data.document_lines", d.document_lines.is_some(), encoder),
            (
                "target_tokenizer",
                self.target_tokenizer.is_some(),
                translation,
            ),
            (
                "training.label_smoothing",
                t.label_smoothing != 0.0,
                seq2seq,
            ),
            ("data.source", d.source.is_some(), translation),
            ("data.target", d.target.is_some(), translation),
            (
                "data.noise_density",
                d.noise_density != default_noise_density(),
                self.task == Task::SpanCorruption,
            ),
            (
                "data.mean_span_length",
                d.mean_span_length != default_mean_span_length(),
                self.task == Task::SpanCorruption,
            ),
            (
                "[decoding]",
                self.decoding != DecodingSpec::default(),
                seq2seq,
            ),
        ];
        if let Some((key, _, _)) = keys.iter().find(|(_, set, allowed)| *set && !allowed) {
            return Err(format!(
                "{key} does not apply to task = \"{}\"",
                self.task.name()
            ));
        }
        if seq2seq {
            return self.validate_seq2seq(config);
        }
        if !encoder {
            return Ok(());
        }
        if let ModelConfig::Bert(bert) = config {
            let seq_len = self.sequence_len(config);
            if !(3..=bert.max_len).contains(&seq_len) {
                return Err(format!(
                    "training.seq_len ({seq_len}) must be in 3..={} (the model's max_len)",
                    bert.max_len
                ));
            }
            if t.freeze_layers > bert.n_layer {
                return Err(format!(
                    "training.freeze_layers ({}) is more than the model's {} layers",
                    t.freeze_layers, bert.n_layer
                ));
            }
        }
        if !(d.mask_prob > 0.0 && d.mask_prob < 1.0) {
            return Err(format!(
                "data.mask_prob must be in (0, 1), got {}",
                d.mask_prob
            ));
        }
        if self.task != Task::MaskedLm
            && (d.next_sentence || d.document_lines.is_some() || !d.extra_train.is_empty())
        {
            return Err(format!(
                "data.next_sentence, data.document_lines and data.extra_train are for task = \"masked-lm\", not \"{}\"",
                self.task.name()
            ));
        }
        if d.document_lines == Some(0) {
            return Err("data.document_lines must be at least 1".into());
        }
        Ok(())
    }
}

impl Recipe {
    fn validate_seq2seq(&self, config: &ModelConfig) -> Result<(), String> {
        let (t, d, decoding) = (&self.training, &self.data, &self.decoding);
        let seq_len = self.sequence_len(config);
        let max_len = config.max_len();
        if !(2..=max_len).contains(&seq_len) {
            return Err(format!(
                "training.seq_len ({seq_len}) must be in 2..={max_len} (the model's max_len)"
            ));
        }
        if !(0.0..1.0).contains(&t.label_smoothing) {
            return Err(format!(
                "training.label_smoothing must be in [0, 1), got {}",
                t.label_smoothing
            ));
        }
        if decoding.beam == 0 {
            return Err("decoding.beam must be at least 1 (1 is greedy)".into());
        }
        if !(decoding.length_penalty.is_finite() && decoding.max_len_a >= 0.0) {
            return Err(
                "decoding.length_penalty must be finite and decoding.max_len_a >= 0".into(),
            );
        }
        if self.task == Task::SpanCorruption {
            if !(d.noise_density > 0.0 && d.noise_density < 1.0) {
                return Err(format!(
                    "data.noise_density must be in (0, 1), got {}",
                    d.noise_density
                ));
            }
            if d.mean_span_length < 1.0 {
                return Err(format!(
                    "data.mean_span_length must be at least 1, got {}",
                    d.mean_span_length
                ));
            }
            let corruption = SpanCorruption {
                noise_density: d.noise_density,
                mean_span_length: d.mean_span_length,
            };
            let needed = corruption.sentinels_needed(seq_len - 1);
            if needed > SENTINELS {
                return Err(format!(
                    "inputs of training.seq_len = {seq_len} tokens at data.noise_density = {} and data.mean_span_length = {} need {needed} sentinels, more than the {SENTINELS} there are: shorten seq_len or lengthen the spans",
                    d.noise_density, d.mean_span_length
                ));
            }
        }
        Ok(())
    }
}

pub const DEFAULT_BPTT: usize = 35;

/// Tokens per encoder-decoder source (and target) unless `training.seq_len` says otherwise.
pub const DEFAULT_SEQ2SEQ_SEQ_LEN: usize = 128;

/// Streams a recurrent model is validated on when the recipe gives none (PyTorch's example).
pub const DEFAULT_EVAL_BATCH_SIZE: usize = 10;

/// A resolved `[model]`: one family's config.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    /// A decoder-only transformer.
    Gpt(GptConfig),
    /// An LSTM or GRU language model.
    Rnn(RnnConfig),
    /// An interpolated Kneser-Ney n-gram model.
    Ngram(NgramConfig),
    /// A BERT encoder.
    Bert(BertConfig),
    /// A transformer encoder-decoder (or T5-style).
    Transformer(TransformerConfig),
    /// An RNN encoder-decoder with attention.
    RnnAttention(RnnAttentionConfig),
}

/// `[model]` of an n-gram baseline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NgramConfig {
    /// Longest n-gram counted (5: the classic KN5).
    pub order: usize,
    /// Vocabulary size; 0 means "take it from the tokenizer".
    pub vocab_size: usize,
}

impl Default for NgramConfig {
    fn default() -> Self {
        Self {
            order: 5,
            vocab_size: 0,
        }
    }
}

impl ModelConfig {
    /// Vocabulary size (0 until the tokenizer fills it in).
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Gpt(c) => c.vocab_size,
            ModelConfig::Rnn(c) => c.vocab_size,
            ModelConfig::Ngram(c) => c.vocab_size,
            ModelConfig::Bert(c) => c.vocab_size,
            ModelConfig::Transformer(c) => c.tgt_vocab_size,
            ModelConfig::RnnAttention(c) => c.tgt_vocab_size,
        }
    }

    /// Whether this is an encoder-decoder.
    pub fn is_seq2seq(&self) -> bool {
        matches!(
            self,
            ModelConfig::Transformer(_) | ModelConfig::RnnAttention(_)
        )
    }

    /// Longest sequence the model takes (a recurrent LM has no limit).
    pub fn max_len(&self) -> usize {
        match self {
            ModelConfig::Gpt(c) => c.block_size,
            ModelConfig::Rnn(_) | ModelConfig::Ngram(_) => usize::MAX,
            ModelConfig::Bert(c) => c.max_len,
            ModelConfig::Transformer(c) => c.max_len,
            ModelConfig::RnnAttention(c) => c.max_len,
        }
    }

    /// Sets the vocabulary size.
    pub fn set_vocab_size(&mut self, vocab_size: usize) {
        match self {
            ModelConfig::Gpt(c) => c.vocab_size = vocab_size,
            ModelConfig::Rnn(c) => c.vocab_size = vocab_size,
            ModelConfig::Ngram(c) => c.vocab_size = vocab_size,
            ModelConfig::Bert(c) => c.vocab_size = vocab_size,
            ModelConfig::Transformer(c) => {
                (c.src_vocab_size, c.tgt_vocab_size) = (vocab_size, vocab_size)
            }
            ModelConfig::RnnAttention(c) => {
                (c.src_vocab_size, c.tgt_vocab_size) = (vocab_size, vocab_size)
            }
        }
    }

    /// Checks that the shapes fit together.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ModelConfig::Gpt(c) => c.validate(),
            ModelConfig::Rnn(c) => c.validate(),
            ModelConfig::Ngram(c) if !(1..=10).contains(&c.order) => {
                Err(format!("order must be in 1..=10, got {}", c.order))
            }
            ModelConfig::Ngram(_) => Ok(()),
            ModelConfig::Bert(c) => c.validate(),
            ModelConfig::Transformer(c) => c.validate(),
            ModelConfig::RnnAttention(c) => c.validate(),
        }
    }

    /// Parameter counts and training FLOPs per token (a GPT's at full context).
    pub fn size(&self) -> ModelSize {
        match self {
            ModelConfig::Gpt(c) => c.size(),
            ModelConfig::Rnn(c) => {
                let s = c.size();
                ModelSize {
                    total: s.total,
                    non_embedding: s.non_embedding,
                    train_flops_per_token: s.train_flops_per_token,
                }
            }
            // Counts, not parameters.
            ModelConfig::Ngram(_) => ModelSize {
                total: 0,
                non_embedding: 0,
                train_flops_per_token: 0,
            },
            ModelConfig::Bert(c) => {
                let (total, flops) = c.encoder_size(DEFAULT_ENCODER_SEQ_LEN.min(c.max_len));
                ModelSize {
                    total,
                    non_embedding: total
                        - (c.vocab_size + c.max_len + c.type_vocab_size) * c.d_model,
                    train_flops_per_token: flops,
                }
            }
            ModelConfig::Transformer(c) => seq2seq_size(c.size()),
            ModelConfig::RnnAttention(c) => seq2seq_size(c.size()),
        }
    }

    /// Width of the model's hidden states (what the Noam schedule scales by).
    pub fn width(&self) -> usize {
        match self {
            ModelConfig::Gpt(c) => c.n_embd,
            ModelConfig::Rnn(c) => c.d_hidden,
            ModelConfig::Ngram(_) => 1,
            ModelConfig::Bert(c) => c.d_model,
            ModelConfig::Transformer(c) => c.d_model,
            ModelConfig::RnnAttention(c) => c.d_decoder,
        }
    }

    /// The `[model]` table that resolves to this config (`arch` and every field).
    pub fn to_spec(&self) -> ModelSpec {
        let (arch, overrides) = match self {
            ModelConfig::Gpt(c) => ("gpt", toml::Table::try_from(c)),
            ModelConfig::Rnn(c) => ("rnn", toml::Table::try_from(c)),
            ModelConfig::Ngram(c) => ("ngram", toml::Table::try_from(c)),
            ModelConfig::Bert(c) => ("bert", toml::Table::try_from(c)),
            ModelConfig::Transformer(c) => ("transformer", toml::Table::try_from(c)),
            ModelConfig::RnnAttention(c) => ("rnn-attention", toml::Table::try_from(c)),
        };
        ModelSpec {
            arch: arch.into(),
            preset: None,
            overrides: overrides.expect("configs serialise to TOML"),
        }
    }
}

fn seq2seq_size(size: Seq2SeqSize) -> ModelSize {
    ModelSize {
        total: size.total,
        non_embedding: size.non_embedding,
        train_flops_per_token: size.train_flops_per_token,
    }
}

/// Applies `[model]` to its family's preset and checks every key against the config's fields.
pub fn resolve_model(spec: &ModelSpec) -> Result<ModelConfig, String> {
    let config = match spec.arch.as_str() {
        "gpt" => ModelConfig::Gpt(resolve(spec, zoo_gpt::preset, zoo_gpt::PRESETS, "GPT")?),
        "rnn" => ModelConfig::Rnn(resolve(
            spec,
            zoo_rnn::preset,
            zoo_rnn::PRESETS,
            "recurrent",
        )?),
        "ngram" => ModelConfig::Ngram(resolve(spec, |_| None, &[], "n-gram")?),
        "bert" => ModelConfig::Bert(resolve(spec, zoo_bert::preset, zoo_bert::PRESETS, "BERT")?),
        "transformer" => ModelConfig::Transformer(resolve(
            spec,
            zoo_seq2seq::transformer_preset,
            zoo_seq2seq::TRANSFORMER_PRESETS,
            "transformer encoder-decoder",
        )?),
        "rnn-attention" => ModelConfig::RnnAttention(resolve(
            spec,
            zoo_seq2seq::rnn_attention_preset,
            zoo_seq2seq::RNN_ATTENTION_PRESETS,
            "RNN encoder-decoder",
        )?),
        other => {
            return Err(format!(
                "model.arch = \"{other}\" is not available; architectures: gpt, rnn, ngram, bert, transformer, rnn-attention"
            ));
        }
    };
    // The shapes must fit even before the tokenizer fills in a vocabulary size of 0.
    let mut placeholder = config.clone();
    placeholder.set_vocab_size(config.vocab_size().max(1));
    placeholder
        .validate()
        .map_err(|e| format!("[model]: {e}"))?;
    Ok(config)
}

fn resolve<C>(
    spec: &ModelSpec,
    preset: fn(&str) -> Option<C>,
    presets: &[&str],
    family: &str,
) -> Result<C, String>
where
    C: Serialize + DeserializeOwned + Default,
{
    let base = match &spec.preset {
        Some(name) => preset(name).ok_or_else(|| {
            format!(
                "model.preset = \"{name}\" is not a {family} preset; presets: {}",
                presets.join(", ")
            )
        })?,
        None => C::default(),
    };
    let base_table = toml::Table::try_from(&base).expect("configs serialise to TOML");
    let with = |overrides: &mut dyn Iterator<Item = (&String, &toml::Value)>| {
        let mut table = base_table.clone();
        for (key, value) in overrides {
            table.insert(key.clone(), value.clone());
        }
        table.try_into::<C>()
    };
    with(&mut spec.overrides.iter()).map_err(|e| {
        // Serde's message may not say which key; find the override that fails on its own.
        let culprit = spec
            .overrides
            .iter()
            .find(|(key, value)| with(&mut std::iter::once((*key, *value))).is_err());
        match culprit {
            Some((key, _)) => format!("model.{key}: {}", e.message()),
            None => format!("[model]: {}", e.message()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[model]
preset = "gpt-nano"
n_layer = 2
[tokenizer]
kind = "char"
[data]
dataset = "embedded"
[training]
batch_size = 4
steps = 10
"#;

    #[test]
    fn a_minimal_recipe_fills_in_defaults_and_applies_overrides() {
        let recipe = Recipe::parse(MINIMAL).unwrap();
        let ModelConfig::Gpt(config) = recipe.model_config().unwrap() else {
            panic!("a GPT recipe")
        };
        assert_eq!((config.n_layer, config.n_head, config.n_embd), (2, 3, 48));
        assert_eq!(recipe.optimizer.kind, OptimizerKind::Adamw);
        assert_eq!(recipe.training.eval_interval, 250);
        assert_eq!(recipe.seed, 1337);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Recipe::parse(&MINIMAL.replace("[data]", "[data]\nshuffle = true")).unwrap_err();
        assert!(err.contains("shuffle"), "{err}");
        let err = Recipe::parse(&MINIMAL.replace("n_layer = 2", "n_layers = 2")).unwrap_err();
        assert!(err.contains("n_layers"), "{err}");
        let err = Recipe::parse(&format!("{MINIMAL}\n[optimiser]\nlr = 1.0\n")).unwrap_err();
        assert!(err.contains("optimiser"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        for (from, to, key) in [
            (
                "steps = 10",
                "steps = 0",
                "training.steps must be at least 1",
            ),
            (
                "steps = 10",
                "steps = 10\nflops = 1e9",
                "not training.steps and training.flops",
            ),
            ("batch_size = 4", "batch_size = 0", "training.batch_size"),
            (
                "preset = \"gpt-nano\"",
                "preset = \"gpt-giant\"",
                "gpt-giant",
            ),
            ("n_layer = 2", "n_layer = \"two\"", "n_layer"),
            ("n_layer = 2", "n_head = 5", "n_head"),
            (
                "kind = \"char\"",
                "kind = \"sentencepiece\"",
                "sentencepiece",
            ),
        ] {
            let err = Recipe::parse(&MINIMAL.replace(from, to)).unwrap_err();
            assert!(err.contains(key), "{to}: {err}");
        }
        let err = Recipe::parse(&format!("{MINIMAL}\n[optimizer]\nlr = -1.0\n")).unwrap_err();
        assert!(err.contains("optimizer.lr"), "{err}");
    }

    #[test]
    fn a_recipe_file_error_names_the_file() {
        let path = std::env::temp_dir().join(format!("zoo-bad-recipe-{}.toml", std::process::id()));
        std::fs::write(&path, MINIMAL.replace("steps = 10", "stepz = 10")).unwrap();
        let err = Recipe::load(&path).unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("stepz"),
            "{err}"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn the_name_defaults_to_the_file_stem() {
        let path = std::env::temp_dir().join(format!("zoo-stem-{}.toml", std::process::id()));
        std::fs::write(&path, MINIMAL).unwrap();
        let recipe = Recipe::load(&path).unwrap();
        assert!(recipe.name().starts_with("zoo-stem-"));
        std::fs::remove_file(path).unwrap();
    }

    const RNN: &str = r#"
[model]
arch = "rnn"
preset = "gru-small"
n_layer = 1
[tokenizer]
kind = "char"
[data]
dataset = "embedded"
[training]
batch_size = 4
steps = 10
"#;

    #[test]
    fn a_recurrent_recipe_resolves_its_preset_and_window() {
        let recipe = Recipe::parse(RNN).unwrap();
        let config = recipe.model_config().unwrap();
        let ModelConfig::Rnn(rnn) = &config else {
            panic!("a recurrent recipe")
        };
        assert_eq!(
            (rnn.cell, rnn.n_layer, rnn.d_hidden),
            (zoo_blocks::CellKind::Gru, 1, 200)
        );
        assert_eq!(recipe.sequence_len(&config), DEFAULT_BPTT);
        let windowed = Recipe::parse(&RNN.replace("steps = 10", "steps = 10\nbptt = 70")).unwrap();
        assert_eq!(windowed.sequence_len(&windowed.model_config().unwrap()), 70);
    }

    #[test]
    fn encoder_decoder_recipes_check_task_keys_and_values() {
        let base = r#"
task = "translation"
[model]
arch = "transformer"
preset = "transformer-tiny"
[tokenizer]
kind = "word"
vocab_size = 50
[data]
dataset = "synthetic-copy"
[training]
batch_size = 8
steps = 10
"#;
        let recipe = Recipe::parse(base).unwrap();
        assert_eq!(recipe.sequence_len(&recipe.model_config().unwrap()), 128);
        assert_eq!(recipe.decoding, DecodingSpec::default());
        let err = |text: &str| Recipe::parse(text).unwrap_err();
        let e = err(&base.replace("task = \"translation\"", "task = \"causal-lm\""));
        assert!(
            e.contains("translation") && e.contains("transformer"),
            "{e}"
        );
        let e = err(&base
            .replace("arch = \"transformer\"", "arch = \"gpt\"")
            .replace("preset = \"transformer-tiny\"", ""));
        assert!(e.contains("causal-lm"), "{e}");
        let e = err(&format!("{base}label_smoothing = 1.5\n"));
        assert!(e.contains("training.label_smoothing"), "{e}");
        let e = err(&format!("{base}seq_len = 500\n"));
        assert!(e.contains("training.seq_len") && e.contains("128"), "{e}");
        let e = err(&format!("{base}[decoding]\nbeam = 0\n"));
        assert!(e.contains("decoding.beam"), "{e}");
        let e = err(&base.replace("[data]", "[data]\nnoise_density = 0.3"));
        assert!(e.contains("data.noise_density"), "{e}");
        let e = err(&base
            .replace("[model]", "[target_tokenizer]\nkind = \"char\"\n[model]")
            .replace("task = \"translation\"", "task = \"span-corruption\""));
        assert!(e.contains("target_tokenizer"), "{e}");
        let gpt = r#"
[model]
preset = "gpt-nano"
[tokenizer]
kind = "char"
[data]
dataset = "embedded"
[training]
batch_size = 8
steps = 10
[decoding]
beam = 4
"#;
        assert!(err(gpt).contains("[decoding]"));
    }

    #[test]
    fn recurrent_and_transformer_keys_do_not_mix() {
        let err = Recipe::parse(&RNN.replace("n_layer = 1", "n_head = 4")).unwrap_err();
        assert!(err.contains("n_head"), "{err}");
        let err = Recipe::parse(&RNN.replace("gru-small", "gpt-nano")).unwrap_err();
        assert!(
            err.contains("gpt-nano") && err.contains("gru-small"),
            "{err}"
        );
        let err =
            Recipe::parse(&MINIMAL.replace("steps = 10", "steps = 10\nbptt = 35")).unwrap_err();
        assert!(err.contains("training.bptt"), "{err}");
        let err = Recipe::parse(&RNN.replace("arch = \"rnn\"", "arch = \"mamba\"")).unwrap_err();
        assert!(err.contains("mamba") && err.contains("rnn"), "{err}");
    }
}
