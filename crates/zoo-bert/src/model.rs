//! BERT, top to bottom: config, embeddings, encoder layer, encoder and pooler, the task heads
//! and their losses.
//!
//! With the defaults this is Devlin et al. (2019) as Google's code and HF's `modeling_bert.py`
//! build it: token + segment + learned position embeddings summed, LayerNorm, dropout; post-norm
//! encoder layers with exact GELU; a pooler (`tanh` of a projection of the `[CLS]` vector); every
//! weight from N(0, 0.02²). Pre-norm (`norm_placement = "pre"`, with a final LayerNorm) is an
//! option. LayerNorm's epsilon is `layer_norm_eps`: PyTorch's 1e-5 unless set (BERT's is 1e-12,
//! which a checkpoint imported from Hugging Face keeps).
//!
//! Padding: every batch comes with a padding mask (true at padded positions). Attention never
//! reads a padded key and every head ignores padded positions, so what a sequence is padded
//! with, and how much, never changes any real position's output.

use burn::module::{Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig,
};
use burn::tensor::activation::{softmax, tanh};
use burn::tensor::{Bool, Device, Int, Tensor};
use serde::{Deserialize, Serialize};
use zoo_blocks::ModelSize;
use zoo_blocks::kernels::gelu;
use zoo_blocks::loss::cross_entropy;
use zoo_blocks::{
    Activation, FeedForward, FeedForwardConfig, Norm, NormKind, NormPlacement, SelfAttention,
    SelfAttentionConfig, TokenEmbedding, TokenEmbeddingConfig,
};

/// Every shape and option of a BERT encoder. Recipes override any field by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BertConfig {
    /// Vocabulary size; 0 means "take it from the tokenizer".
    pub vocab_size: usize,
    /// Longest sequence (learned position embeddings).
    pub max_len: usize,
    /// Number of segment (token type) ids: 2 for sentence pairs.
    pub type_vocab_size: usize,
    /// Encoder layers.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Hidden width.
    pub d_model: usize,
    /// Feed-forward width (0 = `4 * d_model`).
    pub d_ff: usize,
    /// Dropout on embeddings, attention weights and residual branches (BERT: 0.1).
    pub dropout: f64,
    /// Post-norm (BERT) or pre-norm.
    pub norm_placement: NormPlacement,
    /// Feed-forward non-linearity (BERT: exact GELU).
    pub activation: Activation,
    /// Classes of the classification and token-classification heads (0: from the data).
    pub num_labels: usize,
    /// LayerNorm's epsilon (PyTorch's 1e-5; Google's BERT and its checkpoints use 1e-12).
    pub layer_norm_eps: f64,
}

impl Default for BertConfig {
    fn default() -> Self {
        Self {
            vocab_size: 0,
            max_len: 512,
            type_vocab_size: 2,
            n_layer: 2,
            n_head: 2,
            d_model: 128,
            d_ff: 0,
            dropout: 0.1,
            norm_placement: NormPlacement::Post,
            activation: Activation::Gelu,
            num_labels: 0,
            layer_norm_eps: 1e-5,
        }
    }
}

/// The task a model is built for, which decides its head.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BertTask {
    /// Pretraining: masked-LM, plus next-sentence prediction when `next_sentence` is set.
    MaskedLm {
        /// Also predict whether segment B follows segment A.
        next_sentence: bool,
    },
    /// One label per sequence, from the pooled `[CLS]` vector.
    Classification,
    /// One label per token.
    TokenClassification,
    /// Start and end of an answer span.
    SpanQa,
}

/// All BERT initialisation: N(0, 0.02²).
const INIT: Initializer = Initializer::Normal {
    mean: 0.0,
    std: 0.02,
};

/// A large negative logit for positions that must never be chosen (not `-inf`, so a fully
/// masked row still has a finite softmax).
const MASKED_LOGIT: f32 = -1e9;

impl BertConfig {
    /// Feed-forward width after resolving the 0 default.
    pub fn ff_width(&self) -> usize {
        if self.d_ff == 0 {
            4 * self.d_model
        } else {
            self.d_ff
        }
    }

    fn norm(&self, device: &Device) -> Norm {
        Norm::with_epsilon(
            NormKind::LayerNorm,
            self.d_model,
            true,
            self.layer_norm_eps,
            device,
        )
    }

    fn attention(&self) -> SelfAttentionConfig {
        SelfAttentionConfig {
            dropout: self.dropout,
            ..SelfAttentionConfig::bidirectional(self.d_model, self.n_head, self.max_len)
        }
    }

    fn feed_forward(&self) -> FeedForwardConfig {
        FeedForwardConfig {
            activation: self.activation,
            dropout: self.dropout,
            ..FeedForwardConfig::new(self.d_model, self.ff_width())
        }
    }

    /// Checks that the shapes fit together; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.vocab_size == 0 {
            return Err("vocab_size is 0: set it or let the tokenizer decide".into());
        }
        for (name, value) in [
            ("max_len", self.max_len),
            ("type_vocab_size", self.type_vocab_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("d_model", self.d_model),
        ] {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        self.attention().validate()
    }

    /// The encoder with fresh weights.
    pub fn init_encoder(&self, device: &Device) -> Result<Bert, String> {
        self.validate()?;
        let norm = || self.norm(device);
        let table = |rows: usize| {
            EmbeddingConfig::new(rows, self.d_model)
                .with_initializer(INIT)
                .init(device)
        };
        Ok(Bert {
            embeddings: Embeddings {
                tokens: TokenEmbeddingConfig {
                    vocab_size: self.vocab_size,
                    d_model: self.d_model,
                    tie_weights: true,
                    head_bias: false,
                }
                .init(device),
                segments: table(self.type_vocab_size),
                positions: table(self.max_len),
                norm: norm(),
                dropout: DropoutConfig::new(self.dropout).init(),
            },
            layers: (0..self.n_layer)
                .map(|_| EncoderLayer {
                    attention: self.attention().init(device),
                    attention_norm: norm(),
                    feed_forward: self.feed_forward().init(device),
                    ff_norm: norm(),
                    placement: self.norm_placement,
                })
                .collect(),
            final_norm: (self.norm_placement == NormPlacement::Pre).then(norm),
            pooler: self.linear(self.d_model, device),
            max_len: self.max_len,
        })
    }

    /// A fresh head for `task`.
    pub fn init_head(&self, task: BertTask, device: &Device) -> Result<BertHead, String> {
        let labels = || match self.num_labels {
            0 => Err("num_labels is 0: set it or let the data decide".to_string()),
            n => Ok(n),
        };
        Ok(match task {
            BertTask::MaskedLm { next_sentence } => BertHead::MaskedLm(MaskedLmHead {
                transform: self.linear(self.d_model, device),
                norm: self.norm(device),
                bias: Param::from_tensor(Tensor::zeros([self.vocab_size], device)),
                next_sentence: next_sentence.then(|| self.linear(2, device)),
            }),
            BertTask::Classification => BertHead::Classification(LabelHead {
                dropout: DropoutConfig::new(self.dropout).init(),
                out: self.linear(labels()?, device),
            }),
            BertTask::TokenClassification => BertHead::TokenClassification(LabelHead {
                dropout: DropoutConfig::new(self.dropout).init(),
                out: self.linear(labels()?, device),
            }),
            BertTask::SpanQa => BertHead::SpanQa(SpanHead {
                out: self.linear(2, device),
            }),
        })
    }

    /// Encoder and a fresh head for `task`.
    pub fn init(&self, task: BertTask, device: &Device) -> Result<BertModel, String> {
        Ok(BertModel {
            encoder: self.init_encoder(device)?,
            head: self.init_head(task, device)?,
        })
    }

    fn linear(&self, d_out: usize, device: &Device) -> Linear {
        LinearConfig::new(self.d_model, d_out)
            .with_initializer(INIT)
            .init(device)
    }

    /// Parameters of the encoder and pooler (HF's `BertModel`; bert-base: 109,482,240; no task
    /// head), and the FLOPs to train on one token of a `seq_len`-token sequence.
    pub fn size(&self, seq_len: usize) -> ModelSize {
        let d = self.d_model;
        let ff = self.ff_width();
        let norm = 2 * d;
        let per_layer = (d * 3 * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * norm;
        let embedding_matrices = (self.vocab_size + self.max_len + self.type_vocab_size) * d;
        let embeddings = embedding_matrices + norm;
        let final_norm = if self.norm_placement == NormPlacement::Pre {
            norm
        } else {
            0
        };
        let pooler = d * d + d;
        let total = embeddings + self.n_layer * per_layer + final_norm + pooler;
        ModelSize {
            total,
            non_embedding: total - embedding_matrices,
            // 6 FLOPs per matmul parameter per token, plus scores and weighted sums (12 L d T).
            train_flops_per_token: 6 * self.n_layer * per_layer + 12 * self.n_layer * d * seq_len,
        }
    }
}

/// Token + segment + position embeddings, summed, normalised, dropped out.
#[derive(Module, Debug)]
pub struct Embeddings {
    /// Token embeddings; the masked-LM head scores tokens against them.
    pub tokens: TokenEmbedding,
    /// Segment (token type) embeddings: sentence A or B.
    pub segments: Embedding,
    /// Learned position embeddings.
    pub positions: Embedding,
    norm: Norm,
    dropout: Dropout,
}

impl Embeddings {
    fn forward(&self, tokens: Tensor<2, Int>, segments: Tensor<2, Int>) -> Tensor<3> {
        let [batch, len] = tokens.dims();
        let device = tokens.device();
        let positions = Tensor::<1, Int>::arange(0..len as i64, &device)
            .reshape([1, len])
            .expand([batch, len]);
        let x = self.tokens.forward(tokens)
            + self.segments.forward(segments)
            + self.positions.forward(positions);
        zoo_blocks::kernels::dropout(&self.dropout, self.norm.forward(x))
    }
}

/// One encoder layer: bidirectional self-attention then feed-forward, each a residual branch.
#[derive(Module, Debug)]
pub struct EncoderLayer {
    attention: SelfAttention,
    attention_norm: Norm,
    feed_forward: FeedForward,
    ff_norm: Norm,
    #[module(skip)]
    placement: NormPlacement,
}

impl EncoderLayer {
    fn forward(&self, x: Tensor<3>, padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
        match self.placement {
            NormPlacement::Post => {
                let x = self
                    .attention_norm
                    .forward(x.clone() + self.attention.forward(x, padding, None));
                self.ff_norm
                    .forward(x.clone() + self.feed_forward.forward(x))
            }
            NormPlacement::Pre => {
                let attended =
                    self.attention
                        .forward(self.attention_norm.forward(x.clone()), padding, None);
                let x = x + attended;
                x.clone() + self.feed_forward.forward(self.ff_norm.forward(x))
            }
        }
    }

    /// [`forward`](Self::forward) at the first position alone (`[batch, 1, d_model]`): that
    /// token attends over every token, and only it goes through the feed-forward and norms.
    fn forward_first(&self, x: Tensor<3>, padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
        let [batch, _, d_model] = x.dims();
        let first = |x: Tensor<3>| x.narrow(1, 0, 1).reshape([batch, 1, d_model]);
        match self.placement {
            NormPlacement::Post => {
                let attended = self.attention.forward_first(x.clone(), padding);
                let x = self.attention_norm.forward(first(x) + attended);
                self.ff_norm
                    .forward(x.clone() + self.feed_forward.forward(x))
            }
            NormPlacement::Pre => {
                let attended = self
                    .attention
                    .forward_first(self.attention_norm.forward(x.clone()), padding);
                let x = first(x) + attended;
                x.clone() + self.feed_forward.forward(self.ff_norm.forward(x))
            }
        }
    }
}

/// The encoder: embeddings, layers and the pooler. What a fine-tuning run loads from a
/// pretraining run.
#[derive(Module, Debug)]
pub struct Bert {
    /// Token, segment and position embeddings.
    pub embeddings: Embeddings,
    /// The encoder layers, bottom first.
    pub layers: Vec<EncoderLayer>,
    /// Pre-norm only: the LayerNorm after the last layer.
    pub final_norm: Option<Norm>,
    /// Projects the `[CLS]` vector before `tanh`.
    pub pooler: Linear,
    max_len: usize,
}

impl Bert {
    /// Hidden states `[batch, len, d_model]` of token ids and segment ids (`[batch, len]` each);
    /// `padding` is true at padded positions.
    pub fn forward(
        &self,
        tokens: Tensor<2, Int>,
        segments: Tensor<2, Int>,
        padding: Option<Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let mut x = self.embed(tokens, segments);
        for layer in &self.layers {
            x = layer.forward(x, padding.clone());
        }
        self.finish(x)
    }

    /// The final hidden state of the first token, `[CLS]` (`[batch, d_model]`): `forward(..)`
    /// at position 0, with the last layer computing that position alone (a quarter less work
    /// for a 4-layer encoder), as a classifier or a `[CLS]` embedding needs nothing else.
    pub fn first_hidden(
        &self,
        tokens: Tensor<2, Int>,
        segments: Tensor<2, Int>,
        padding: Option<Tensor<2, Bool>>,
    ) -> Tensor<2> {
        let mut x = self.embed(tokens, segments);
        let [batch, _, d_model] = x.dims();
        let last = match self.layers.split_last() {
            Some((last, below)) => {
                for layer in below {
                    x = layer.forward(x, padding.clone());
                }
                last.forward_first(x, padding)
            }
            None => x.narrow(1, 0, 1),
        };
        self.finish(last).reshape([batch, d_model])
    }

    /// The pooled sequence vector `[batch, d_model]` of token ids and segment ids:
    /// `pool(forward(..))`, through [`first_hidden`](Self::first_hidden).
    pub fn pooled(
        &self,
        tokens: Tensor<2, Int>,
        segments: Tensor<2, Int>,
        padding: Option<Tensor<2, Bool>>,
    ) -> Tensor<2> {
        tanh(
            self.pooler
                .forward(self.first_hidden(tokens, segments, padding)),
        )
    }

    /// The pooled sequence vector `[batch, d_model]` of hidden states: `tanh(W h_[CLS] + b)`.
    pub fn pool(&self, hidden: Tensor<3>) -> Tensor<2> {
        let [batch, _, d_model] = hidden.dims();
        let cls = hidden.narrow(1, 0, 1).reshape([batch, d_model]);
        tanh(self.pooler.forward(cls))
    }

    /// The embeddings of a batch, after checking that the position table covers it.
    fn embed(&self, tokens: Tensor<2, Int>, segments: Tensor<2, Int>) -> Tensor<3> {
        let [_, len] = tokens.dims();
        assert!(
            len <= self.max_len,
            "sequence of {len} tokens exceeds max_len {}",
            self.max_len
        );
        self.embeddings.forward(tokens, segments)
    }

    /// The last layer's output, through the final norm of a pre-norm encoder.
    fn finish(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.final_norm {
            Some(norm) => norm.forward(x),
            None => x,
        }
    }

    /// Longest sequence the position table covers.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

/// The head of a [`BertModel`].
#[derive(Module, Debug)]
pub enum BertHead {
    /// Masked-LM (and next-sentence prediction).
    MaskedLm(MaskedLmHead),
    /// A label per sequence.
    Classification(LabelHead),
    /// A label per token.
    TokenClassification(LabelHead),
    /// Answer span start and end.
    SpanQa(SpanHead),
}

impl BertHead {
    /// What the head is, for messages.
    pub fn describe(&self) -> &'static str {
        match self {
            BertHead::MaskedLm(head) if head.next_sentence.is_some() => {
                "masked-LM and next-sentence heads"
            }
            BertHead::MaskedLm(_) => "masked-LM head",
            BertHead::Classification(_) => "classification head",
            BertHead::TokenClassification(_) => "token-classification head",
            BertHead::SpanQa(_) => "span-QA head",
        }
    }
}

/// Masked-LM: a transform (dense, GELU, LayerNorm), then scores against the token embeddings
/// (tied) plus a bias per token; optionally next-sentence prediction from the pooled vector.
#[derive(Module, Debug)]
pub struct MaskedLmHead {
    transform: Linear,
    norm: Norm,
    bias: Param<Tensor<1>>,
    next_sentence: Option<Linear>,
}

/// A dropout and a projection to labels (of the pooled vector, or of every token).
#[derive(Module, Debug)]
pub struct LabelHead {
    dropout: Dropout,
    out: Linear,
}

/// Start and end logits of every token.
#[derive(Module, Debug)]
pub struct SpanHead {
    out: Linear,
}

/// A model for one task: the encoder and its head.
#[derive(Module, Debug)]
pub struct BertModel {
    /// The encoder.
    pub encoder: Bert,
    /// The task head.
    pub head: BertHead,
}

/// Predicted and true labels of the positions a loss covered (`[n]` each), for metrics.
#[derive(Clone, Debug)]
pub struct Predictions {
    /// The model's choice.
    pub predicted: Tensor<1, Int>,
    /// The truth.
    pub expected: Tensor<1, Int>,
}

/// A task loss and what it predicted.
#[derive(Clone, Debug)]
pub struct TaskLoss {
    /// Mean loss (for masked-LM with next-sentence prediction, the sum of both means).
    pub loss: Tensor<1>,
    /// The main task's predictions (masked tokens, labels, tags, or spans as `start * len + end`).
    pub main: Predictions,
    /// Next-sentence predictions, when the head makes them.
    pub next_sentence: Option<Predictions>,
}

impl TaskLoss {
    /// The mean cross-entropy of `logits` (`[n, classes]`) against `expected` (`[n]`), and the
    /// classes they pick.
    fn of(logits: Tensor<2>, expected: Tensor<1, Int>) -> Self {
        let [n, _] = logits.dims();
        // The predictions first, so that the loss gets the logits to itself: on flex their
        // gradient then takes over their buffer (a masked-LM's [masked tokens, vocabulary])
        // instead of a copy.
        let predicted = logits.clone().detach().argmax(1).reshape([n]);
        Self {
            loss: cross_entropy(logits, expected.clone()),
            main: Predictions {
                predicted,
                expected,
            },
            next_sentence: None,
        }
    }
}

/// The targets of one batch, by task.
#[derive(Clone, Debug)]
pub enum Targets {
    /// Masked-LM: which positions were selected (flat indices into `batch * len`) and their
    /// original tokens; next-sentence labels (1 = B follows A) when pairs were made.
    MaskedLm {
        /// Flat positions `b * len + t` of the selected tokens.
        positions: Tensor<1, Int>,
        /// The tokens that were there.
        tokens: Tensor<1, Int>,
        /// One label per pair.
        next_sentence: Option<Tensor<1, Int>>,
    },
    /// One label per sequence.
    Classification(Tensor<1, Int>),
    /// Labels of the tagged positions (flat indices, as for masked-LM).
    TokenClassification {
        /// Flat positions `b * len + t` that carry a label.
        positions: Tensor<1, Int>,
        /// Their labels.
        labels: Tensor<1, Int>,
    },
    /// Answer start and end positions, one each per sequence.
    SpanQa {
        /// First answer token.
        start: Tensor<1, Int>,
        /// Last answer token.
        end: Tensor<1, Int>,
    },
}

/// What a head with one matrix of logits makes of a batch, before any loss: the encoder's
/// hidden states, the logits of the positions (or sequences) its targets cover with what they
/// should pick, and for masked-LM on pairs the next-sentence logits and labels. What
/// distillation compares between a teacher and its student.
#[derive(Clone, Debug)]
pub struct TaskLogits {
    /// The encoder's last hidden states `[batch, len, d_model]`.
    pub hidden: Tensor<3>,
    /// Logits `[n, classes]`: of the masked tokens, the sequences, or the tagged tokens.
    pub logits: Tensor<2>,
    /// What each row should pick `[n]`.
    pub expected: Tensor<1, Int>,
    /// Next-sentence logits `[batch, 2]` and labels, when the head makes them.
    pub next_sentence: Option<(Tensor<2>, Tensor<1, Int>)>,
}

impl BertModel {
    /// The loss of a batch for this model's head, and its predictions.
    ///
    /// Panics when `targets` are for another task than the head's: the runtime pairs them.
    pub fn loss(
        &self,
        tokens: Tensor<2, Int>,
        segments: Tensor<2, Int>,
        padding: Tensor<2, Bool>,
        targets: Targets,
    ) -> TaskLoss {
        if let (BertHead::Classification(head), Targets::Classification(labels)) =
            (&self.head, &targets)
        {
            let pooled = self.encoder.pooled(tokens, segments, Some(padding));
            return TaskLoss::of(head.logits(pooled), labels.clone());
        }
        let (BertHead::SpanQa(head), Targets::SpanQa { start, end }) = (&self.head, &targets)
        else {
            let out = self.task_logits(tokens, segments, padding, targets);
            let mut scored = TaskLoss::of(out.logits, out.expected);
            if let Some((logits, labels)) = out.next_sentence {
                let next = TaskLoss::of(logits, labels);
                scored.loss = scored.loss + next.loss;
                scored.next_sentence = Some(next.main);
            }
            return scored;
        };
        let [batch, len] = tokens.dims();
        let hidden = self
            .encoder
            .forward(tokens, segments, Some(padding.clone()));
        let [start_logits, end_logits] = head.logits(hidden, padding);
        let flat = |starts: Tensor<1, Int>, ends: Tensor<1, Int>| starts * len as i64 + ends;
        // Predictions before the loss, which then has the logits to itself (see `TaskLoss::of`).
        let predicted = flat(
            start_logits.clone().detach().argmax(1).reshape([batch]),
            end_logits.clone().detach().argmax(1).reshape([batch]),
        );
        let loss = (cross_entropy(start_logits, start.clone())
            + cross_entropy(end_logits, end.clone()))
            / 2.0;
        TaskLoss {
            loss,
            main: Predictions {
                predicted,
                expected: flat(start.clone(), end.clone()),
            },
            next_sentence: None,
        }
    }

    /// The logits of a batch for a head with one matrix of them (masked-LM, classification,
    /// tagging), and their targets.
    ///
    /// Panics for a span head, or when `targets` are for another task than the head's: the
    /// runtime pairs them.
    pub fn task_logits(
        &self,
        tokens: Tensor<2, Int>,
        segments: Tensor<2, Int>,
        padding: Tensor<2, Bool>,
        targets: Targets,
    ) -> TaskLogits {
        let [batch, len] = tokens.dims();
        let hidden = self.encoder.forward(tokens, segments, Some(padding));
        let d_model = hidden.dims()[2];
        let rows = |hidden: Tensor<3>, positions: Tensor<1, Int>| {
            hidden.reshape([batch * len, d_model]).select(0, positions)
        };
        let (logits, expected, next_sentence) = match (&self.head, targets) {
            (
                BertHead::MaskedLm(head),
                Targets::MaskedLm {
                    positions,
                    tokens: originals,
                    next_sentence,
                },
            ) => {
                let selected = rows(hidden.clone(), positions);
                let logits = head.token_logits(selected, &self.encoder.embeddings.tokens);
                let next = match (&head.next_sentence, next_sentence) {
                    (Some(nsp), Some(labels)) => {
                        Some((nsp.forward(self.encoder.pool(hidden.clone())), labels))
                    }
                    _ => None,
                };
                (logits, originals, next)
            }
            (BertHead::Classification(head), Targets::Classification(labels)) => {
                (head.logits(self.encoder.pool(hidden.clone())), labels, None)
            }
            (
                BertHead::TokenClassification(head),
                Targets::TokenClassification { positions, labels },
            ) => (head.logits(rows(hidden.clone(), positions)), labels, None),
            (head, _) => panic!("targets do not fit the {}", head.describe()),
        };
        TaskLogits {
            hidden,
            logits,
            expected,
            next_sentence,
        }
    }
}

impl BertModel {
    /// Inference with the task head (no loss): class probabilities `[batch, labels]` for a
    /// classifier, tag probabilities `[batch, len, labels]` for a tagger (as a 3-D tensor in
    /// both cases, `len` 1 for the classifier), or start and end logits for a span head.
    pub fn predict(
        &self,
        tokens: Tensor<2, Int>,
        segments: Tensor<2, Int>,
        padding: Tensor<2, Bool>,
    ) -> Prediction {
        let hidden = || {
            self.encoder
                .forward(tokens.clone(), segments.clone(), Some(padding.clone()))
        };
        match &self.head {
            BertHead::Classification(head) => {
                let pooled =
                    self.encoder
                        .pooled(tokens.clone(), segments.clone(), Some(padding.clone()));
                let logits = head.logits(pooled);
                Prediction::Labels(softmax(logits.unsqueeze_dim::<3>(1), 2))
            }
            BertHead::TokenClassification(head) => {
                Prediction::Labels(softmax(head.logits(hidden()), 2))
            }
            BertHead::SpanQa(head) => {
                let [start, end] = head.logits(hidden(), padding.clone());
                Prediction::Span { start, end }
            }
            BertHead::MaskedLm(head) => {
                let hidden = hidden();
                let [batch, len, d_model] = hidden.dims();
                let logits = head.token_logits(
                    hidden.reshape([batch * len, d_model]),
                    &self.encoder.embeddings.tokens,
                );
                let vocab = logits.dims()[1];
                Prediction::Labels(softmax(logits.reshape([batch, len, vocab]), 2))
            }
        }
    }
}

/// What [`BertModel::predict`] returns.
#[derive(Clone, Debug)]
pub enum Prediction {
    /// Probabilities over labels (or, for masked-LM, tokens): `[batch, len, classes]`.
    Labels(Tensor<3>),
    /// Start and end logits `[batch, len]` of an answer span (padding at `-1e9`).
    Span {
        /// Logit of each token starting the answer.
        start: Tensor<2>,
        /// Logit of each token ending it.
        end: Tensor<2>,
    },
}

impl MaskedLmHead {
    /// Vocabulary logits `[n, vocab]` of hidden states `[n, d_model]`.
    pub fn token_logits(&self, hidden: Tensor<2>, tokens: &TokenEmbedding) -> Tensor<2> {
        let [n, d_model] = hidden.dims();
        let h = self
            .norm
            .forward(gelu(self.transform.forward(hidden)))
            .reshape([1, n, d_model]);
        let vocab = tokens.vocab_size();
        tokens.logits(h).reshape([n, vocab]) + self.bias.val().reshape([1, vocab])
    }

    /// Whether the head also predicts the next sentence.
    pub fn predicts_next_sentence(&self) -> bool {
        self.next_sentence.is_some()
    }
}

impl LabelHead {
    /// Label logits of pooled vectors `[batch, d]` or of tokens `[batch, len, d]`.
    pub fn logits<const D: usize>(&self, hidden: Tensor<D>) -> Tensor<D> {
        self.out
            .forward(zoo_blocks::kernels::dropout(&self.dropout, hidden))
    }
}

impl SpanHead {
    /// Start and end logits `[batch, len]` each; padded positions can never be chosen.
    pub fn logits(&self, hidden: Tensor<3>, padding: Tensor<2, Bool>) -> [Tensor<2>; 2] {
        let [batch, len, _] = hidden.dims();
        let both = self.out.forward(hidden);
        let pick = |i: usize| {
            both.clone()
                .narrow(2, i, 1)
                .reshape([batch, len])
                .mask_fill(padding.clone(), MASKED_LOGIT)
        };
        [pick(0), pick(1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    fn device() -> Device {
        Device::flex()
    }

    fn tiny(vocab_size: usize) -> BertConfig {
        BertConfig {
            vocab_size,
            max_len: 16,
            n_layer: 2,
            n_head: 2,
            d_model: 16,
            dropout: 0.0,
            num_labels: 3,
            ..BertConfig::default()
        }
    }

    fn ids(rows: &[&[i64]], device: &Device) -> Tensor<2, Int> {
        let len = rows[0].len();
        let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), len]), device)
    }

    fn mask(rows: &[&[bool]], device: &Device) -> Tensor<2, Bool> {
        let len = rows[0].len();
        let flat: Vec<bool> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), len]), device)
    }

    fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// Padding changes nothing real: the same sentence alone (length 4) and padded to 9 with
    /// arbitrary tokens and segment ids gives the same hidden states, pooled vector and head
    /// outputs at its real positions, for post- and pre-norm encoders.
    #[test]
    fn padded_positions_never_change_real_outputs() {
        let device = device();
        for placement in [NormPlacement::Post, NormPlacement::Pre] {
            let config = BertConfig {
                norm_placement: placement,
                ..tiny(20)
            };
            let model = config.init(BertTask::SpanQa, &device).unwrap();
            let alone = model.encoder.forward(
                ids(&[&[1, 5, 6, 2]], &device),
                ids(&[&[0, 0, 0, 0]], &device),
                Some(mask(&[&[false; 4]], &device)),
            );
            let padding = mask(
                &[&[false, false, false, false, true, true, true, true, true]],
                &device,
            );
            for filler in [0i64, 7, 19] {
                let padded = model.encoder.forward(
                    ids(&[&[1, 5, 6, 2, filler, filler, 3, 4, filler]], &device),
                    ids(&[&[0, 0, 0, 0, 1, 1, 0, 1, 1]], &device),
                    Some(padding.clone()),
                );
                let real = padded.clone().narrow(1, 0, 4);
                assert!(max_abs_diff(real, alone.clone()) < 1e-5, "{placement:?}");
                assert!(
                    max_abs_diff(
                        model.encoder.pool(padded.clone()),
                        model.encoder.pool(alone.clone())
                    ) < 1e-5
                );
                let BertHead::SpanQa(head) = &model.head else {
                    unreachable!()
                };
                let [start, _] = head.logits(padded, padding.clone());
                let [start_alone, _] = head.logits(alone.clone(), mask(&[&[false; 4]], &device));
                assert!(max_abs_diff(start.clone().narrow(1, 0, 4), start_alone) < 1e-5);
                // Padded positions are never chosen.
                let worst = start.narrow(1, 4, 5).max().into_scalar::<f32>();
                assert!(worst <= MASKED_LOGIT / 2.0);
            }
        }
    }

    /// `pooled`, whose last layer computes `[CLS]` alone, is `pool(forward(..))`: values and
    /// every parameter's gradient, for post- and pre-norm encoders with padding.
    #[test]
    fn pooling_from_the_first_position_alone_matches_the_full_forward() {
        let device = device().autodiff();
        for placement in [NormPlacement::Post, NormPlacement::Pre] {
            let encoder = BertConfig {
                norm_placement: placement,
                ..tiny(20)
            }
            .init_encoder(&device)
            .unwrap();
            let tokens = ids(&[&[1, 5, 6, 2, 0, 0], &[1, 7, 8, 9, 3, 2]], &device);
            let segments = ids(&[&[0, 0, 0, 0, 0, 0], &[0, 0, 0, 1, 1, 1]], &device);
            let padding = mask(
                &[&[false, false, false, false, true, true], &[false; 6]],
                &device,
            );
            let weights = Tensor::<2>::random([2, 16], Distribution::Normal(0.0, 1.0), &device);
            // Every parameter's gradient, flattened, in the module's order (0s where none).
            struct Collect(burn::optim::GradientsParams, Vec<Tensor<1>>);
            impl burn::module::ModuleVisitor for Collect {
                fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
                    let n = param.shape().num_elements();
                    let grad = self
                        .0
                        .get::<D>(param.id)
                        .map_or_else(|| Tensor::zeros([n], &param.device()), |g| g.reshape([n]));
                    self.1.push(grad);
                }
            }
            let run = |pooled: Tensor<2>| {
                let grads = (pooled.clone() * weights.clone()).sum().backward();
                let grads = burn::optim::GradientsParams::from_grads(grads, &encoder);
                let mut collect = Collect(grads, Vec::new());
                encoder.visit(&mut collect);
                (pooled, collect.1)
            };
            let (full, full_grads) = run(encoder.pool(encoder.forward(
                tokens.clone(),
                segments.clone(),
                Some(padding.clone()),
            )));
            let (first, first_grads) = run(encoder.pooled(tokens, segments, Some(padding)));
            assert!(max_abs_diff(first, full) < 1e-5, "{placement:?}");
            assert_eq!(first_grads.len(), full_grads.len());
            for (ours, theirs) in first_grads.into_iter().zip(full_grads) {
                assert!(max_abs_diff(ours, theirs) < 1e-5, "{placement:?}");
            }
        }
    }

    /// Changing a token changes every real position's output: the encoder is bidirectional.
    #[test]
    fn every_position_sees_the_whole_sentence() {
        let device = device();
        let model = tiny(20).init_encoder(&device).unwrap();
        let segments = ids(&[&[0; 5]], &device);
        let a = model.forward(ids(&[&[1, 5, 6, 7, 2]], &device), segments.clone(), None);
        let b = model.forward(ids(&[&[1, 5, 6, 8, 2]], &device), segments, None);
        let first = max_abs_diff(a.narrow(1, 0, 1), b.narrow(1, 0, 1));
        assert!(first > 1e-4);
    }

    #[test]
    fn bert_base_has_the_published_parameter_count() {
        // HF's BertModel (encoder + pooler) for bert-base-uncased.
        let config = BertConfig {
            vocab_size: 30522,
            ..crate::preset("bert-base").unwrap()
        };
        assert_eq!(config.size(128).total, 109_482_240);
        let small = tiny(50);
        let model = small.init_encoder(&device()).unwrap();
        assert_eq!(model.num_params(), small.size(16).total);
    }

    #[test]
    fn the_masked_lm_head_is_tied_to_the_token_embeddings() {
        let config = tiny(30);
        let model = config
            .init(
                BertTask::MaskedLm {
                    next_sentence: true,
                },
                &device(),
            )
            .unwrap();
        let head = model.head.num_params();
        // transform + LayerNorm + per-token bias + next-sentence classifier; no vocab matrix.
        let d = config.d_model;
        assert_eq!(head, (d * d + d) + 2 * d + 30 + (2 * d + 2));
    }

    /// Each head learns a small task it must solve through the encoder: the mean accuracy of
    /// the last 20 batches.
    fn train_to<F>(task: BertTask, config: BertConfig, steps: usize, batch: F) -> f32
    where
        F: Fn(usize, &Device) -> (Tensor<2, Int>, Tensor<2, Bool>, Targets),
    {
        use burn::optim::{AdamConfig, GradientsParams};
        let device = device().autodiff();
        device.seed(7);
        let mut model = config.init(task, &device).unwrap();
        let mut optim = AdamConfig::new().init();
        let mut accuracies = Vec::new();
        for step in 0..steps {
            let (tokens, padding, targets) = batch(step, &device);
            let segments = tokens.zeros_like();
            let out = model.loss(tokens, segments, padding, targets);
            let right = out
                .main
                .predicted
                .equal(out.main.expected.clone())
                .int()
                .sum()
                .into_scalar::<i64>();
            accuracies.push(right as f32 / out.main.expected.dims()[0] as f32);
            let grads = GradientsParams::from_grads(out.loss.backward(), &model);
            model = optim.step(3e-3, model, grads);
        }
        accuracies[steps - 20..].iter().sum::<f32>() / 20.0
    }

    /// A deterministic pseudo-random source for the synthetic tasks.
    fn lcg(seed: usize) -> impl FnMut() -> usize {
        let mut state = seed as u64 * 6364136223846793005 + 1442695040888963407;
        move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        }
    }

    /// Tag digits (ids 10..20) as 1 and letters (ids 20..30) as 2 in sentences of random length,
    /// right-padded; [CLS] (1) and padding carry no tag.
    #[test]
    fn the_token_classification_head_learns_to_tag_digits_and_letters() {
        let (batch, len) = (16, 10);
        let accuracy = train_to(
            BertTask::TokenClassification,
            tiny(30),
            150,
            |step, device| {
                let mut next = lcg(step);
                let (mut tokens, mut pads, mut positions, mut labels) =
                    (vec![], vec![], vec![], vec![]);
                for b in 0..batch {
                    let real = 3 + next() % (len - 3);
                    for t in 0..len {
                        let (token, pad) = match t {
                            0 => (1, false),
                            t if t < real => {
                                let token = 10 + next() % 20;
                                positions.push((b * len + t) as i64);
                                labels.push(if token < 20 { 1 } else { 2 });
                                (token as i64, false)
                            }
                            _ => (0, true),
                        };
                        tokens.push(token);
                        pads.push(pad);
                    }
                }
                let n = positions.len();
                (
                    Tensor::from_data(TensorData::new(tokens, [batch, len]), device),
                    Tensor::from_data(TensorData::new(pads, [batch, len]), device),
                    Targets::TokenClassification {
                        positions: Tensor::from_data(TensorData::new(positions, [n]), device),
                        labels: Tensor::from_data(TensorData::new(labels, [n]), device),
                    },
                )
            },
        );
        assert!(accuracy > 0.97, "tagging accuracy {accuracy}");
    }

    /// Find the span between two markers (ids 3 and 4) in a sequence of filler tokens: the answer
    /// starts just after 3 and ends just before 4.
    #[test]
    fn the_span_head_learns_to_find_the_span_between_markers() {
        let (batch, len) = (16, 12);
        let accuracy = train_to(BertTask::SpanQa, tiny(30), 1000, |step, device| {
            let mut next = lcg(1000 + step);
            let (mut tokens, mut starts, mut ends) = (vec![], vec![], vec![]);
            for _ in 0..batch {
                let open = 1 + next() % (len - 4);
                let close = open + 2 + next() % (len - open - 2);
                for t in 0..len {
                    tokens.push(match t {
                        t if t == open => 3,
                        t if t == close => 4,
                        _ => 10 + (next() % 20) as i64,
                    });
                }
                starts.push(open as i64 + 1);
                ends.push(close as i64 - 1);
            }
            (
                Tensor::from_data(TensorData::new(tokens, [batch, len]), device),
                Tensor::from_data(
                    TensorData::new(vec![false; batch * len], [batch, len]),
                    device,
                ),
                Targets::SpanQa {
                    start: Tensor::from_data(TensorData::new(starts, [batch]), device),
                    end: Tensor::from_data(TensorData::new(ends, [batch]), device),
                },
            )
        });
        // Chance is about 1 in 20; the initialisation draws from the device's seed, which
        // tests running in parallel share, so the figure varies a little run to run (0.88 seen).
        assert!(accuracy > 0.85, "exact-span accuracy {accuracy}");
    }

    /// Sequence classification through the pooler: is token 5 in the sequence?
    #[test]
    fn the_classification_head_learns_whether_a_token_occurs() {
        let (batch, len) = (16, 8);
        let accuracy = train_to(BertTask::Classification, tiny(30), 300, |step, device| {
            let mut next = lcg(5000 + step);
            let (mut tokens, mut labels) = (vec![], vec![]);
            for _ in 0..batch {
                let mut label = 0;
                for t in 0..len {
                    let token = if t == 0 { 1 } else { 5 + next() % 20 };
                    label |= (token == 5) as i64;
                    tokens.push(token as i64);
                }
                labels.push(label);
            }
            (
                Tensor::from_data(TensorData::new(tokens, [batch, len]), device),
                Tensor::from_data(
                    TensorData::new(vec![false; batch * len], [batch, len]),
                    device,
                ),
                Targets::Classification(Tensor::from_data(
                    TensorData::new(labels, [batch]),
                    device,
                )),
            )
        });
        assert!(accuracy > 0.9, "classification accuracy {accuracy}");
    }

    #[test]
    fn masked_lm_loss_covers_only_the_selected_positions() {
        let device = device();
        let model = tiny(30)
            .init(
                BertTask::MaskedLm {
                    next_sentence: false,
                },
                &device,
            )
            .unwrap();
        let tokens = Tensor::<2, Int>::random([2, 6], Distribution::Uniform(5.0, 30.0), &device);
        let positions = Tensor::<1, Int>::from_data(TensorData::from([1i64, 8]), &device);
        let originals = Tensor::<1, Int>::from_data(TensorData::from([7i64, 9]), &device);
        let out = model.loss(
            tokens.clone(),
            tokens.zeros_like(),
            mask(&[&[false; 6], &[false; 6]], &device),
            Targets::MaskedLm {
                positions,
                tokens: originals,
                next_sentence: None,
            },
        );
        assert_eq!(out.main.predicted.dims(), [2]);
        let loss = out.loss.into_scalar::<f32>();
        // Near-uniform predictions at init: about ln(30).
        assert!((loss - 30f32.ln()).abs() < 0.5, "{loss}");
    }
}
