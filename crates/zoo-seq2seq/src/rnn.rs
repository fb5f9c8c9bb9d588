//! The RNN encoder-decoder with attention, top to bottom: config, encoder, attention, decoder
//! step, teacher-forced forward, incremental decoding.
//!
//! Bahdanau et al. (2015): a bidirectional GRU (or LSTM) encoder reads the source both ways and
//! each position's annotation is the two directions' states side by side; the decoder's first
//! state comes from the backward direction's state at the first word. At each step additive
//! attention scores `v · tanh(U h_j + W s_{t-1})` pick a context `c_t` from the annotations,
//! the decoder cell reads the previous word with `c_t`, and the output `tanh(W_o [s_t; c_t;
//! y_{t-1}])` gives the next word's logits. With `attention = "multiplicative"` it is Luong et
//! al. (2015) instead: the cell reads the previous word with the previous attentional vector
//! (input feeding), then scores `s_t · W_a h_j` and outputs `tanh(W_c [s_t; c_t])`.
//!
//! The projections of the annotations (`U h_j`, `W_a h_j`) are computed once per source.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation::{softmax, tanh};
use burn::tensor::{Bool, Device, Int, Tensor};
use serde::{Deserialize, Serialize};
use zoo_blocks::ModelSize;
use zoo_blocks::kernels::linear;
use zoo_blocks::{
    CellKind, Recurrent, RecurrentConfig, RecurrentState, Reversal, TokenEmbedding,
    TokenEmbeddingConfig,
};

use crate::decoding::EncoderDecoder;
use zoo_blocks::beam::StepDecoder;
use zoo_blocks::probe::{self, MapKind};

/// How the decoder scores annotations.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionKind {
    /// Bahdanau's `v · tanh(U h_j + W s_{t-1})`.
    #[default]
    Additive,
    /// Luong's "general" `s_t · W_a h_j`, with input feeding.
    Multiplicative,
}

/// Every shape and option of an RNN encoder-decoder. Recipes override any field by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RnnAttentionConfig {
    /// Source vocabulary size; 0 means "take it from the tokenizer".
    pub src_vocab_size: usize,
    /// Target vocabulary size; 0 means "take it from the tokenizer".
    pub tgt_vocab_size: usize,
    /// Longest target decoded (sources have no limit).
    pub max_len: usize,
    /// GRU (Bahdanau) or LSTM (Luong).
    pub cell: CellKind,
    /// Word embedding width (source and target).
    pub d_embed: usize,
    /// Hidden units of each encoder direction.
    pub d_encoder: usize,
    /// Hidden units of the decoder.
    pub d_decoder: usize,
    /// Hidden width of additive attention.
    pub d_attention: usize,
    /// Additive or multiplicative attention.
    pub attention: AttentionKind,
    /// Dropout on embeddings and on the output vector.
    pub dropout: f64,
    /// The output projection is the target embedding matrix.
    pub tie_output: bool,
}

impl Default for RnnAttentionConfig {
    fn default() -> Self {
        Self {
            src_vocab_size: 0,
            tgt_vocab_size: 0,
            max_len: 256,
            cell: CellKind::Gru,
            d_embed: 256,
            d_encoder: 256,
            d_decoder: 512,
            d_attention: 256,
            attention: AttentionKind::Additive,
            dropout: 0.3,
            tie_output: true,
        }
    }
}

impl RnnAttentionConfig {
    /// Checks the shapes; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("src_vocab_size", self.src_vocab_size),
            ("tgt_vocab_size", self.tgt_vocab_size),
            ("max_len", self.max_len),
            ("d_embed", self.d_embed),
            ("d_encoder", self.d_encoder),
            ("d_decoder", self.d_decoder),
            ("d_attention", self.d_attention),
        ] {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// Widths of the decoder cell's input, of the vector `combine` reads, and of the keys.
    fn widths(&self) -> (usize, usize, usize) {
        let annotation = 2 * self.d_encoder;
        match self.attention {
            AttentionKind::Additive => (
                self.d_embed + annotation,
                self.d_decoder + annotation + self.d_embed,
                self.d_attention,
            ),
            AttentionKind::Multiplicative => (
                2 * self.d_embed,
                self.d_decoder + annotation,
                self.d_decoder,
            ),
        }
    }

    /// Parameter counts and training compute, from the shapes alone.
    pub fn size(&self) -> ModelSize {
        let (cell_input, combined, key_width) = self.widths();
        let gates = self.cell.gates();
        let recurrent = |d_in: usize, h: usize| {
            d_in * gates * h
                + gates * h
                + h * gates * h
                + if self.cell == CellKind::Gru {
                    gates * h
                } else {
                    0
                }
        };
        let additive = self.attention == AttentionKind::Additive;
        let attention = 2 * self.d_encoder * key_width
            + if additive {
                self.d_decoder * self.d_attention + self.d_attention + self.d_attention
            } else {
                0
            };
        let encoder = 2 * recurrent(self.d_embed, self.d_encoder);
        let decoder =
            recurrent(cell_input, self.d_decoder) + combined * self.d_embed + self.d_embed;
        let bridge = self.d_encoder * self.d_decoder + self.d_decoder;
        let head = if self.tie_output {
            0
        } else {
            self.d_embed * self.tgt_vocab_size + self.tgt_vocab_size
        };
        let non_embedding = encoder + bridge + attention + decoder + head;
        let embeddings = (self.src_vocab_size + self.tgt_vocab_size) * self.d_embed;
        // Per source token the encoder's weights and the keys' projection; per target token
        // the decoder's weights, attention over the source (taken as 16 tokens) and the output.
        let per_token = encoder
            + 2 * self.d_encoder * key_width
            + decoder
            + 16 * (2 * self.d_encoder + key_width)
            + self.d_embed * self.tgt_vocab_size;
        ModelSize {
            total: non_embedding + embeddings,
            non_embedding,
            train_flops_per_token: 6 * per_token,
        }
    }

    /// Builds the model with freshly initialised weights.
    pub fn init(&self, device: &Device) -> Result<RnnAttention, String> {
        self.validate()?;
        // PyTorch's default for linear layers, U(±1/sqrt(d_in)) (Burn's default too): with
        // N(0, 0.02) the attention starts flat and the run sits on a plateau for longer.
        let dense = |d_in: usize, d_out: usize, bias: bool| {
            LinearConfig::new(d_in, d_out).with_bias(bias).init(device)
        };
        let recurrent = |d_input: usize, d_hidden: usize| {
            RecurrentConfig {
                kind: self.cell,
                d_input,
                d_hidden,
            }
            .init(device)
        };
        // Embeddings from U(-0.1, 0.1), as PyTorch's word-language-model example: GPT-2's
        // N(0, 0.02) gives the recurrent layers' input too weak a signal to start from.
        let embedding = |vocab_size: usize, tie_weights: bool| {
            let mut embedding = TokenEmbeddingConfig {
                vocab_size,
                d_model: self.d_embed,
                tie_weights,
                head_bias: true,
            }
            .init(device);
            embedding.weight = Initializer::Uniform {
                min: -0.1,
                max: 0.1,
            }
            .init([vocab_size, self.d_embed], device);
            embedding
        };
        let annotation = 2 * self.d_encoder;
        let additive = self.attention == AttentionKind::Additive;
        let (cell_input, combined, key_width) = self.widths();
        Ok(RnnAttention {
            source_embedding: embedding(self.src_vocab_size, true),
            target_embedding: embedding(self.tgt_vocab_size, self.tie_output),
            dropout: DropoutConfig::new(self.dropout).init(),
            forward_encoder: recurrent(self.d_embed, self.d_encoder),
            backward_encoder: recurrent(self.d_embed, self.d_encoder),
            bridge: dense(self.d_encoder, self.d_decoder, true),
            keys: dense(annotation, key_width, false),
            query: additive.then(|| dense(self.d_decoder, self.d_attention, true)),
            score: additive.then(|| dense(self.d_attention, 1, false)),
            decoder: recurrent(cell_input, self.d_decoder),
            combine: dense(combined, self.d_embed, true),
            attention: self.attention,
            d_embed: self.d_embed,
            max_len: self.max_len,
        })
    }
}

/// The RNN encoder-decoder with attention.
#[derive(Module, Debug)]
pub struct RnnAttention {
    source_embedding: TokenEmbedding,
    /// Target embeddings, and the output head (tied or not).
    target_embedding: TokenEmbedding,
    dropout: Dropout,
    forward_encoder: Recurrent,
    backward_encoder: Recurrent,
    /// Backward state at the first word -> the decoder's first state.
    bridge: Linear,
    /// Annotations -> attention keys (`U` or `W_a`), once per source.
    keys: Linear,
    /// Additive only: decoder state -> attention space (`W`).
    query: Option<Linear>,
    /// Additive only: `v`.
    score: Option<Linear>,
    decoder: Recurrent,
    /// `[s_t; c_t; y_{t-1}]` (additive) or `[s_t; c_t]` -> the output vector.
    combine: Linear,
    #[module(skip)]
    attention: AttentionKind,
    d_embed: usize,
    max_len: usize,
}

/// Decoding state: the source's annotations and keys, the decoder's recurrent state and, for
/// input feeding, the last output vector.
#[derive(Clone, Debug)]
pub struct RnnAttentionState {
    /// `[batch, src_len, 2 d_encoder]`.
    annotations: Tensor<3>,
    /// `[batch, src_len, key width]`.
    keys: Tensor<3>,
    /// `[batch, src_len]`, true at padding.
    padding: Tensor<2, Bool>,
    recurrent: RecurrentState,
    /// Multiplicative attention: the previous output vector `[batch, d_embed]`.
    feed: Option<Tensor<2>>,
}

impl RnnAttention {
    /// This model with the embeddings, when `embeddings`, and its encoder (its one layer, the
    /// two directions) when `layers` is 1, kept out of training (fine-tuning). An output head
    /// tied to the target embedding is that embedding: it is kept too.
    pub fn freeze(mut self, embeddings: bool, layers: usize) -> Self {
        if embeddings {
            self.source_embedding.weight = self.source_embedding.weight.set_require_grad(false);
            self.target_embedding.weight = self.target_embedding.weight.set_require_grad(false);
        }
        if layers > 0 {
            self.forward_encoder = self.forward_encoder.no_grad();
            self.backward_encoder = self.backward_encoder.no_grad();
        }
        self
    }

    /// Reads `source` (`[batch, src_len]`) both ways: the decoding state for its first step.
    /// Padded positions (`padding` true, after the last word) change nothing.
    pub fn encode(&self, source: Tensor<2, Int>, padding: Tensor<2, Bool>) -> RnnAttentionState {
        let [batch, _] = source.dims();
        let device = source.device();
        let embedded =
            zoo_blocks::kernels::dropout(&self.dropout, self.source_embedding.forward(source));
        let (forward, _) = self.forward_encoder.forward(embedded.clone(), None);
        let backward = self
            .backward_encoder
            .forward_reversed(embedded, &Reversal::within(&padding));
        // The backward direction's state at the first word has read the whole source.
        let first_backward = backward
            .clone()
            .narrow(1, 0, 1)
            .reshape([batch, self.backward_encoder.d_hidden()]);
        let hidden = tanh(linear(&self.bridge, first_backward));
        let annotations = Tensor::cat(vec![forward, backward], 2);
        let cell = (self.decoder.kind() == CellKind::Lstm).then(|| hidden.zeros_like());
        let feed = (self.attention == AttentionKind::Multiplicative)
            .then(|| Tensor::zeros([batch, self.d_embed], &device));
        RnnAttentionState {
            keys: linear(&self.keys, annotations.clone()),
            annotations,
            padding,
            recurrent: RecurrentState { hidden, cell },
            feed,
        }
    }

    /// The context `[batch, 2 d_encoder]`: annotations weighted by the softmax of `scores`
    /// (`[batch, src_len]`) over the unpadded positions.
    fn context(&self, scores: Tensor<2>, state: &RnnAttentionState) -> Tensor<2> {
        let scores = scores.mask_fill(state.padding.clone(), f32::NEG_INFINITY);
        let weights = softmax(scores, 1).unsqueeze_dim::<3>(1);
        // One query per step: `zoo attention` stacks the steps' rows into one map.
        probe::record(MapKind::Cross, weights.clone().unsqueeze_dim(1));
        let context = weights.matmul(state.annotations.clone());
        let [batch, _, width] = context.dims();
        context.reshape([batch, width])
    }

    /// One decoder step from the previous target word (`[batch, 1]`): the output vector
    /// `[batch, d_embed]`, before the vocabulary projection.
    fn step_output(&self, previous: Tensor<2, Int>, state: &mut RnnAttentionState) -> Tensor<2> {
        let [batch, _] = previous.dims();
        let embedded = self
            .dropout
            .forward(self.target_embedding.forward(previous))
            .reshape([batch, self.d_embed]);
        let advance = |input: Tensor<2>, state: &mut RnnAttentionState| {
            let recurrent = state.recurrent.clone();
            let (_, next) = self
                .decoder
                .forward(input.unsqueeze_dim(1), Some(recurrent));
            state.recurrent = next;
        };
        let output = match self.attention {
            AttentionKind::Additive => {
                let (query, score) = (
                    self.query.as_ref().expect("additive attention has W"),
                    self.score.as_ref().expect("additive attention has v"),
                );
                let query = linear(query, state.recurrent.hidden.clone()).unsqueeze_dim(1);
                let energies = linear(score, tanh(state.keys.clone() + query));
                let [_, len, _] = energies.dims();
                let context = self.context(energies.reshape([batch, len]), state);
                advance(
                    Tensor::cat(vec![embedded.clone(), context.clone()], 1),
                    state,
                );
                let hidden = state.recurrent.hidden.clone();
                tanh(linear(
                    &self.combine,
                    Tensor::cat(vec![hidden, context, embedded], 1),
                ))
            }
            AttentionKind::Multiplicative => {
                let feed = state.feed.clone().expect("input feeding state");
                advance(Tensor::cat(vec![embedded, feed], 1), state);
                let hidden = state.recurrent.hidden.clone();
                let scores = state.keys.clone().matmul(hidden.clone().unsqueeze_dim(2));
                let [_, len, _] = scores.dims();
                let context = self.context(scores.reshape([batch, len]), state);
                let output = tanh(linear(&self.combine, Tensor::cat(vec![hidden, context], 1)));
                state.feed = Some(output.clone());
                output
            }
        };
        zoo_blocks::kernels::dropout(&self.dropout, output)
    }

    /// Teacher-forced logits `[batch, tgt_len, tgt_vocab]`: `target_in` is the target shifted
    /// right (starting with the begin token).
    pub fn forward(
        &self,
        source: Tensor<2, Int>,
        source_padding: Tensor<2, Bool>,
        target_in: Tensor<2, Int>,
    ) -> Tensor<3> {
        let mut state = self.encode(source, source_padding);
        let [_, len] = target_in.dims();
        let outputs: Vec<Tensor<3>> = (0..len)
            .map(|t| {
                self.step_output(target_in.clone().narrow(1, t, 1), &mut state)
                    .unsqueeze_dim(1)
            })
            .collect();
        // One projection to the vocabulary for every step at once.
        self.target_embedding.logits(Tensor::cat(outputs, 1))
    }
}

impl StepDecoder for RnnAttention {
    type State = RnnAttentionState;

    fn step(&self, previous: Tensor<2, Int>, state: &mut RnnAttentionState) -> Tensor<2> {
        let output = self.step_output(previous, state).unsqueeze_dim(1);
        let logits = self.target_embedding.logits(output);
        let [rows, _, vocab] = logits.dims();
        logits.reshape([rows, vocab])
    }

    fn select(&self, state: &RnnAttentionState, rows: Tensor<1, Int>) -> RnnAttentionState {
        RnnAttentionState {
            annotations: state.annotations.clone().select(0, rows.clone()),
            keys: state.keys.clone().select(0, rows.clone()),
            padding: state.padding.clone().select(0, rows.clone()),
            recurrent: state.recurrent.select(rows.clone()),
            feed: state.feed.as_ref().map(|f| f.clone().select(0, rows)),
        }
    }
}

impl EncoderDecoder for RnnAttention {
    fn start(&self, source: Tensor<2, Int>, padding: Tensor<2, Bool>) -> RnnAttentionState {
        self.encode(source, padding)
    }

    fn max_target_len(&self) -> usize {
        self.max_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::rnn_attention_preset;
    use crate::tests::{assert_close, ids};
    use burn::tensor::TensorData;

    fn configs() -> Vec<RnnAttentionConfig> {
        let tiny = RnnAttentionConfig {
            src_vocab_size: 17,
            tgt_vocab_size: 13,
            ..rnn_attention_preset("rnn-attention-tiny").unwrap()
        };
        vec![
            tiny.clone(),
            RnnAttentionConfig {
                cell: CellKind::Lstm,
                attention: AttentionKind::Multiplicative,
                tie_output: false,
                ..tiny
            },
        ]
    }

    #[test]
    fn the_size_from_shapes_counts_every_parameter() {
        let device = Device::flex();
        for config in configs() {
            let model = config.init(&device).unwrap();
            assert_eq!(config.size().total, model.num_params(), "{config:?}");
        }
    }

    /// Padding after a source changes nothing: the backward direction starts at each
    /// source's own last word and attention never looks at padding.
    #[test]
    fn source_padding_never_changes_outputs() {
        for device in [Device::flex(), Device::flex().autodiff()] {
            device.seed(5);
            for config in configs() {
                let model = config.init(&device).unwrap();
                let padding = Tensor::<2, Bool>::from_data(
                    TensorData::from([[false, false, false, true, true], [false; 5]]),
                    &device,
                );
                let target = ids(&[&[1, 4, 2, 7], &[1, 3, 3, 5]], &device);
                let padded = |fill: i64| ids(&[&[4, 7, 2, fill, fill], &[3, 5, 6, 8, 2]], &device);
                let a = model.forward(padded(0), padding.clone(), target.clone());
                let b = model.forward(padded(16), padding.clone(), target.clone());
                assert_close(a.clone(), b, 1e-5);
                let alone = model.forward(
                    ids(&[&[4, 7, 2]], &device),
                    Tensor::from_data(TensorData::from([[false; 3]]), &device),
                    ids(&[&[1, 4, 2, 7]], &device),
                );
                assert_close(a.narrow(0, 0, 1), alone, 1e-5);
            }
        }
    }

    /// Step-by-step decoding from a selected (reordered) state equals the teacher-forced
    /// forward of the reordered batch.
    #[test]
    fn stepping_a_reordered_state_equals_the_forward() {
        let device = Device::flex();
        device.seed(6);
        for config in configs() {
            let model = config.init(&device).unwrap();
            let source = ids(&[&[4, 7, 2, 0], &[3, 5, 6, 2]], &device);
            let padding = Tensor::<2, Bool>::from_data(
                TensorData::from([[false, false, false, true], [false; 4]]),
                &device,
            );
            let target = ids(&[&[1, 4, 2], &[1, 3, 5]], &device);
            let rows = Tensor::<1, Int>::from_data(TensorData::from([1i64, 0, 1]), &device);
            let full = model.forward(
                source.clone().select(0, rows.clone()),
                padding.clone().select(0, rows.clone()),
                target.clone().select(0, rows.clone()),
            );
            let mut state = model.select(&model.start(source, padding), rows.clone());
            let target = target.select(0, rows);
            let steps: Vec<Tensor<3>> = (0..3)
                .map(|t| {
                    model
                        .step(target.clone().narrow(1, t, 1), &mut state)
                        .unsqueeze_dim(1)
                })
                .collect();
            assert_close(Tensor::cat(steps, 1), full, 1e-5);
        }
    }
}

#[cfg(test)]
mod gradient_tests {
    use super::*;
    use crate::presets::rnn_attention_preset;
    use crate::tests::ids;
    use burn::tensor::Distribution;
    use burn::tensor::TensorData;

    /// The gradient of a fixed projection of the logits with respect to source embeddings,
    /// the encoders' and decoder's weights matches finite differences.
    #[test]
    fn gradients_match_finite_differences() {
        for attention in [AttentionKind::Additive, AttentionKind::Multiplicative] {
            let device = Device::flex().autodiff();
            device.seed(8);
            let config = RnnAttentionConfig {
                src_vocab_size: 9,
                tgt_vocab_size: 7,
                attention,
                d_embed: 8,
                d_encoder: 6,
                d_decoder: 10,
                d_attention: 5,
                ..rnn_attention_preset("rnn-attention-tiny").unwrap()
            };
            let model = config.init(&device).unwrap();
            let source = ids(&[&[1, 4, 2, 0], &[3, 5, 6, 2]], &device);
            let padding = Tensor::<2, Bool>::from_data(
                TensorData::from([[false, false, false, true], [false; 4]]),
                &device,
            );
            let target = ids(&[&[1, 4, 2], &[1, 3, 5]], &device);
            let projection =
                Tensor::<3>::random([2, 3, 7], Distribution::Normal(0.0, 1.0), &device);
            let loss = |m: &RnnAttention| {
                (m.forward(source.clone(), padding.clone(), target.clone()) * projection.clone())
                    .sum()
            };
            let grads = loss(&model).backward();
            let weight = model.source_embedding.weight.val();
            let analytic = weight
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let eps = 1e-2;
            for index in [4 * 8, 4 * 8 + 3, 5 * 8 + 1, 2 * 8 + 7] {
                let bump = |delta: f32| {
                    let mut m = model.clone();
                    let mut values = m
                        .source_embedding
                        .weight
                        .val()
                        .inner()
                        .into_data()
                        .try_to_vec::<f32>()
                        .unwrap();
                    values[index] += delta;
                    m.source_embedding.weight = burn::module::Param::from_tensor(
                        Tensor::from_data(TensorData::new(values, [9, 8]), &device),
                    );
                    loss(&m).into_scalar::<f64>()
                };
                let numeric = (bump(eps) - bump(-eps)) / (2.0 * eps as f64);
                assert!(
                    (numeric - analytic[index] as f64).abs() < 2e-2 * (1.0 + numeric.abs()),
                    "{attention:?} entry {index}: numeric {numeric} analytic {}",
                    analytic[index]
                );
            }
        }
    }
}
