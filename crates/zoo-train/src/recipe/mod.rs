//! The recipe: one TOML file that names everything a run needs. Every section and key is
//! checked (in `validate.rs`); an unknown key or a bad value is an error naming the key and the
//! file. Above the model table and below everything else: it imports only `models`.
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
//! on_nonfinite = "stop"         # or "skip": a NaN or infinite loss or gradient skips the batch
//! early_stopping = { metric = "loss", patience = 3 }   # optional; min_delta, mode
//! ```

mod validate;

use crate::ZooError;
use crate::models::resolve_model;
pub use crate::models::{ModelConfig, ModelSpec, Task};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use zoo_blocks::SamplingConfig;
use zoo_text::TokenizerSpec;

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
    /// The run (or Hugging Face directory, or model id) this one starts from: a BERT's encoder
    /// (its heads are left behind and this task's head starts fresh), or a whole encoder-decoder
    /// with its vocabulary.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// Distillation: the run (or Hugging Face directory) of the encoder whose outputs the
    /// student learns to match, on the teacher's task (`task = "distillation"` takes the
    /// teacher's; the run is then a run of that task).
    #[serde(default)]
    pub teacher: Option<PathBuf>,
    /// The model: `arch`, `preset` and overrides of the preset's fields.
    pub model: ModelSpec,
    /// The tokenizer (a run that starts from `init_from`, or learns from a `teacher`, takes
    /// that run's and may leave it out).
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
    /// Parameter-efficient fine-tuning of the model `init_from` names.
    #[serde(default)]
    pub finetune: FinetuneSpec,
    /// How a student learns from its `teacher`.
    #[serde(default)]
    pub distillation: DistillationSpec,
}

/// `[distillation]`: the student's loss is
/// `alpha * T^2 * KL(teacher || student at temperature T) + beta * (the task's own loss)
/// + cosine * (1 - cos(student's, teacher's last hidden states))`, as DistilBERT (Sanh et al.
/// 2019) trains; validation scores the task's own loss.
///
/// ```toml
/// task = "distillation"
/// teacher = "runs/sst2-full"
/// [distillation]
/// temperature = 2.0
/// alpha = 0.5
/// beta = 0.5
/// cosine = 1.0                   # needs the teacher's width
/// init = "every-other-layer"     # the student: the teacher with every other layer
/// ```
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistillationSpec {
    /// Softmax temperature of both distributions in the soft loss.
    pub temperature: f64,
    /// Weight of the soft loss (already scaled by `temperature^2`).
    pub alpha: f64,
    /// Weight of the task's own loss against the data's labels.
    pub beta: f64,
    /// Weight of the cosine loss between the two models' last hidden states (non-padding
    /// tokens); 0 leaves it out.
    pub cosine: f64,
    /// Where the student starts.
    pub init: StudentInit,
}

impl Default for DistillationSpec {
    fn default() -> Self {
        Self {
            temperature: 2.0,
            alpha: 0.5,
            beta: 0.5,
            cosine: 0.0,
            init: StudentInit::Fresh,
        }
    }
}

/// `distillation.init`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StudentInit {
    /// Fresh weights of the `[model]` the recipe gives.
    #[default]
    Fresh,
    /// The teacher's shape with half its layers, starting from its embeddings, its layers
    /// 0, 2, 4, ..., its pooler and its head (DistilBERT).
    EveryOtherLayer,
}

/// `[finetune]`: LoRA (Hu et al. 2021) on the model `init_from` names. Its weights stay
/// frozen, each targeted weight matrix trains a low-rank update, a task head the run adds
/// trains whole, and the run's checkpoints hold only what trains.
///
/// ```toml
/// [finetune]
/// lora_rank = 8
/// lora_alpha = 16                # the update is scaled by alpha / rank
/// lora_targets = ["qkv", "out"]  # module names in the weights' paths (`zoo info` lists them)
/// ```
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneSpec {
    /// LoRA's rank; no LoRA when absent.
    pub lora_rank: Option<usize>,
    /// The update `A B` is scaled by `lora_alpha / lora_rank` (default: the rank, a scale of
    /// 1, as the paper sets it).
    pub lora_alpha: Option<f64>,
    /// Which weight matrices get adapters: each entry is a module name in their paths (`qkv`,
    /// `attn`, `fc`). Default: the architecture's attention projections.
    pub lora_targets: Vec<String>,
}

impl FinetuneSpec {
    /// Whether the run trains LoRA adapters.
    pub fn lora(&self) -> bool {
        self.lora_rank.is_some()
    }

    /// The scale numerator.
    pub fn lora_alpha(&self) -> f64 {
        self.lora_alpha
            .unwrap_or_else(|| self.lora_rank.unwrap_or(1) as f64)
    }
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
    /// Translation: text put before every source sentence, in training, evaluation and
    /// `zoo translate` alike (T5's task prefixes: `"translate English to German: "`).
    #[serde(default)]
    pub source_prefix: String,
    /// Encoder-decoders: encode sources with the tokenizer's own special tokens (its
    /// post-processor: BART's `<s> ... </s>`, T5's `... </s>`) rather than appending `</s>`;
    /// set for models imported from Hugging Face, and inherited through `init_from`.
    #[serde(default)]
    pub source_specials: Option<bool>,
    /// Encoder-decoders: the token the decoder starts from (default `<s>`, added to the
    /// vocabulary; T5's is `<pad>`, BART's `</s>`: set by `zoo import`); inherited through
    /// `init_from`.
    #[serde(default)]
    pub decoder_start: Option<String>,
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
    /// Keep the embeddings as they are (fine-tuning; a head tied to them stays too).
    #[serde(default)]
    pub freeze_embeddings: bool,
    /// Keep the first this many layers as they are (fine-tuning): a GPT's blocks, a recurrent
    /// LM's layers, an encoder's or encoder-decoder's encoder layers.
    #[serde(default)]
    pub freeze_layers: usize,
    /// Encoder-decoders: label smoothing of the target cross-entropy (the transformer: 0.1).
    #[serde(default)]
    pub label_smoothing: f64,
    /// GPT classifiers: weight of the auxiliary language-model loss on the same inputs (the
    /// GPT-1 paper's lambda: 0.5); 0 trains on the labels alone.
    #[serde(default)]
    pub lm_loss_weight: f64,
    /// What a step whose loss or gradient is not finite does: `stop` the run there (the last
    /// good checkpoint kept, a non-zero exit), or `skip` the batch (counted in the metrics log).
    #[serde(default)]
    pub on_nonfinite: OnNonFinite,
    /// Stop when a validation metric has stopped improving; off when absent.
    #[serde(default)]
    pub early_stopping: Option<EarlyStoppingSpec>,
    /// Data parallelism: the devices each batch is split across (`zoo train --devices`, which
    /// the run's recipe records), the first holding the model, the optimiser and validation;
    /// one device (`--device`) when empty. `batch_size` must divide evenly between them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

impl TrainingSpec {
    /// What the run keeps out of training, in words (`frozen: the embeddings and 2 layer(s)`),
    /// when it keeps anything.
    pub fn frozen(&self) -> Option<String> {
        (self.freeze_embeddings || self.freeze_layers > 0).then(|| {
            format!(
                "frozen: {}{} layer(s)",
                if self.freeze_embeddings {
                    "the embeddings and "
                } else {
                    ""
                },
                self.freeze_layers
            )
        })
    }

    /// Devices each batch is split across (1 when none is named).
    pub fn device_count(&self) -> usize {
        self.devices.len().max(1)
    }

    /// Sequences in one micro-batch, the part of a batch one device reads: `batch_size` split
    /// across the devices.
    pub fn micro_batch_size(&self) -> usize {
        self.batch_size / self.device_count()
    }

    /// Sequences in a batch a task's loader makes: a micro-batch for training (a batch is split
    /// across the devices), a whole batch for validation.
    pub fn loader_batch_size(&self, train: bool) -> usize {
        if train {
            self.micro_batch_size()
        } else {
            self.batch_size
        }
    }

    /// Micro-batches in one optimiser step: each of the `grad_accumulation` batches is one
    /// micro-batch per device. Their gradients sum to the step's (each loss is scaled by
    /// `1 / micro_batches`), so a step on N devices is a step on one device that accumulates
    /// N times as many batches of a N-th the size.
    pub fn micro_batches(&self) -> usize {
        self.grad_accumulation * self.device_count()
    }
}

/// `training.early_stopping = { metric = "loss", patience = 3, min_delta = 0.0 }`: the run ends
/// (and is summarised as finished) once `patience` validations in a row have not improved on
/// the best value of `metric` by more than `min_delta`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EarlyStoppingSpec {
    /// A validation metric as `metrics.jsonl` names it: `loss`, `perplexity`, `accuracy`,
    /// `f1`, ...
    pub metric: String,
    /// Validations without improvement that end the run.
    pub patience: usize,
    /// How much better than the best a value must be to count as an improvement.
    #[serde(default)]
    pub min_delta: f64,
    /// `min` (lower is better) or `max`; by default `min` for losses and perplexities and
    /// `max` for everything else.
    #[serde(default)]
    pub mode: Option<MetricMode>,
}

/// Which way a metric improves.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MetricMode {
    /// Lower is better.
    Min,
    /// Higher is better.
    Max,
}

impl EarlyStoppingSpec {
    /// Which way the metric improves.
    pub fn mode(&self) -> MetricMode {
        self.mode.unwrap_or_else(|| {
            if self.metric.contains("loss") || self.metric.contains("perplexity") {
                MetricMode::Min
            } else {
                MetricMode::Max
            }
        })
    }
}

/// `training.on_nonfinite`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnNonFinite {
    /// Stop the run at the step, with an error naming the step and the value.
    #[default]
    Stop,
    /// Leave the weights and the optimiser as they were and go on with the next batch.
    Skip,
}

/// Streams a recurrent model is validated on when the recipe gives none (PyTorch's example).
pub const DEFAULT_EVAL_BATCH_SIZE: usize = 10;

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
            lm_loss_weight: 0.0,
            on_nonfinite: OnNonFinite::Stop,
            early_stopping: None,
            devices: Vec::new(),
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

    /// `config` (this recipe's) made the shape of `pretrained`, the model `init_from` names,
    /// after checking that every field the recipe's `[model]` states agrees with it; the run
    /// keeps its own dropout.
    pub fn take_pretrained_shape(
        &self,
        config: &mut ModelConfig,
        pretrained: &ModelConfig,
    ) -> Result<(), String> {
        let mismatches = self.model.mismatches(config, pretrained, &["dropout"]);
        if !mismatches.is_empty() {
            return Err(format!(
                "[model] does not match init_from = {}: {}",
                self.init_from
                    .as_ref()
                    .map_or("?".into(), |p| p.display().to_string()),
                mismatches.join(", ")
            ));
        }
        let dropout = config.dropout_mut().copied();
        *config = pretrained.clone();
        if let (Some(ours), Some(dropout)) = (config.dropout_mut(), dropout) {
            *ours = dropout;
        }
        Ok(())
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
    /// encoder's or encoder-decoder's longest input (`training.bptt` / `training.seq_len`, else
    /// the model's default).
    pub fn sequence_len(&self, config: &ModelConfig) -> usize {
        let given = match config {
            ModelConfig::Rnn(_) => self.training.bptt,
            ModelConfig::Bert(_)
            | ModelConfig::Elmo(_)
            | ModelConfig::Transformer(_)
            | ModelConfig::RnnAttention(_) => self.training.seq_len,
            ModelConfig::Gpt(_) | ModelConfig::Ngram(_) => None,
        };
        given.unwrap_or_else(|| config.default_sequence_len())
    }

    /// The weight matrices LoRA adapts: the recipe's `finetune.lora_targets`, else the
    /// architecture's attention projections.
    pub fn lora_targets(&self) -> Vec<String> {
        if !self.finetune.lora_targets.is_empty() {
            return self.finetune.lora_targets.clone();
        }
        crate::models::architecture(&self.model.arch).map_or_else(Vec::new, |arch| {
            arch.lora_targets.iter().map(|t| t.to_string()).collect()
        })
    }

    /// The run's name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("run")
    }

    /// Where the run lives unless the command line says otherwise.
    pub fn default_run_dir(&self) -> PathBuf {
        PathBuf::from("runs").join(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::DEFAULT_BPTT;

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
    fn lora_settings_are_checked() {
        let lora = |finetune: &str, extra: &str| {
            Recipe::parse(&format!(
                "init_from = \"runs/base\"\n{MINIMAL}{extra}\n[finetune]\n{finetune}"
            ))
        };
        let recipe = lora("lora_rank = 8", "").unwrap();
        assert_eq!(recipe.finetune.lora_alpha(), 8.0);
        assert_eq!(recipe.lora_targets(), ["qkv", "proj"]);
        let recipe = lora(
            "lora_rank = 4\nlora_alpha = 16\nlora_targets = [\"fc\"]",
            "",
        )
        .unwrap();
        assert_eq!(
            (recipe.finetune.lora_alpha(), recipe.lora_targets()),
            (16.0, vec!["fc".to_string()])
        );
        for (finetune, extra, named) in [
            ("lora_rank = 0", "", "finetune.lora_rank must be at least 1"),
            ("lora_rank = 4\nlora_alpha = -1", "", "finetune.lora_alpha"),
            ("lora_alpha = 4", "", "need finetune.lora_rank"),
            ("lora_rank = 4\nlora_dropout = 0.1", "", "lora_dropout"),
            (
                "lora_rank = 4",
                "freeze_layers = 1",
                "do not combine with finetune.lora_rank",
            ),
        ] {
            let err = lora(finetune, extra).unwrap_err();
            assert!(err.contains(named), "{finetune}: {err}");
        }
        let err = Recipe::parse(&format!("{MINIMAL}\n[finetune]\nlora_rank = 4")).unwrap_err();
        assert!(err.contains("set init_from"), "{err}");
        let classifier = MINIMAL
            .replace("[model]", "task = \"classification\"\n[model]")
            .replace("dataset = \"embedded\"", "dataset = \"embedded-sums\"");
        // A GPT classifier adapts its language model as any GPT run does.
        Recipe::parse(&format!(
            "init_from = \"runs/base\"\n{classifier}\n[finetune]\nlora_rank = 4"
        ))
        .unwrap();
    }

    #[test]
    fn distillation_settings_are_checked() {
        let encoder = "task = \"distillation\"\nteacher = \"runs/teacher\"\n[model]\narch = \"bert\"\n[data]\ndataset = \"sst2\"\n[training]\nbatch_size = 4\nsteps = 10\n";
        let recipe = Recipe::parse(encoder).unwrap();
        assert_eq!(recipe.distillation, DistillationSpec::default());
        let with = |section: &str| Recipe::parse(&format!("{encoder}[distillation]\n{section}"));
        let recipe = with("init = \"every-other-layer\"\ncosine = 1.0").unwrap();
        assert_eq!(recipe.distillation.init, StudentInit::EveryOtherLayer);
        for (section, named) in [
            (
                "temperature = 0.0",
                "distillation.temperature must be positive",
            ),
            ("alpha = -1.0", "distillation.alpha must be 0 or more"),
            ("alpha = 0.0\nbeta = 0.0", "nothing to learn"),
            ("init = \"half\"", "init"),
        ] {
            let err = with(section).unwrap_err();
            assert!(err.contains(named), "{section}: {err}");
        }
        for (text, named) in [
            (
                encoder.replace("teacher = \"runs/teacher\"\n", ""),
                "needs teacher",
            ),
            (
                encoder.replace("task = \"distillation\"", "task = \"span-qa\""),
                "teacher does not apply to task = \"span-qa\"",
            ),
            (
                format!("init_from = \"runs/x\"\n{encoder}"),
                "init_from does not combine with teacher",
            ),
            (
                format!("{MINIMAL}[distillation]\nalpha = 1.0\n"),
                "[distillation] needs a teacher",
            ),
        ] {
            let err = Recipe::parse(&text).unwrap_err();
            assert!(err.contains(named), "{text}: {err}");
        }
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
