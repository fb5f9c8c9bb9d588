//! Encoder-decoder models: the transformer (with a T5-style configuration) in [`transformer`],
//! the RNN encoder-decoder with attention in [`rnn`], their decoding (greedy, sampling, beam
//! search) in [`decoding`] and named shapes in [`presets`].

pub mod decoding;
pub mod hf;
pub mod presets;
pub mod rnn;
pub mod transformer;

use burn::module::Module;
use burn::tensor::{Bool, Int, Tensor};
use zoo_blocks::beam::StepDecoder;

pub use decoding::{DecodeTokens, EncoderDecoder, Strategy, decode, source_batch};
pub use presets::{
    RNN_ATTENTION_PRESETS, TRANSFORMER_PRESETS, rnn_attention_preset, transformer_preset,
};
pub use rnn::{AttentionKind, RnnAttention, RnnAttentionConfig, RnnAttentionState};
pub use transformer::{Positions, Transformer, TransformerConfig, TransformerState};

/// Either encoder-decoder family, as a training run holds it.
#[derive(Module, Debug)]
pub enum Seq2Seq {
    /// The transformer (or T5-style) encoder-decoder.
    Transformer(Transformer),
    /// The RNN encoder-decoder with attention.
    Rnn(RnnAttention),
}

/// The decoding state of either family.
#[derive(Clone, Debug)]
pub enum Seq2SeqState {
    /// A transformer's.
    Transformer(TransformerState),
    /// An RNN's.
    Rnn(RnnAttentionState),
}

impl Seq2Seq {
    /// This model with its embeddings and its first `layers` encoder layers kept out of
    /// training (see each family's `freeze`).
    pub fn freeze(self, embeddings: bool, layers: usize) -> Self {
        match self {
            Seq2Seq::Transformer(model) => Seq2Seq::Transformer(model.freeze(embeddings, layers)),
            Seq2Seq::Rnn(model) => Seq2Seq::Rnn(model.freeze(embeddings, layers)),
        }
    }

    /// Teacher-forced logits `[batch, tgt_len, tgt_vocab]` for `target_in` (the target shifted
    /// right, starting with the begin token).
    pub fn forward(
        &self,
        source: Tensor<2, Int>,
        source_padding: Tensor<2, Bool>,
        target_in: Tensor<2, Int>,
    ) -> Tensor<3> {
        match self {
            Seq2Seq::Transformer(m) => m.forward(source, source_padding, target_in),
            Seq2Seq::Rnn(m) => m.forward(source, source_padding, target_in),
        }
    }
}

impl StepDecoder for Seq2Seq {
    type State = Seq2SeqState;

    fn step(&self, previous: Tensor<2, Int>, state: &mut Seq2SeqState) -> Tensor<2> {
        match (self, state) {
            (Seq2Seq::Transformer(m), Seq2SeqState::Transformer(s)) => m.step(previous, s),
            (Seq2Seq::Rnn(m), Seq2SeqState::Rnn(s)) => m.step(previous, s),
            _ => unreachable!("a state comes from its own model's start"),
        }
    }

    fn select(&self, state: &Seq2SeqState, rows: Tensor<1, Int>) -> Seq2SeqState {
        match (self, state) {
            (Seq2Seq::Transformer(m), Seq2SeqState::Transformer(s)) => {
                Seq2SeqState::Transformer(m.select(s, rows))
            }
            (Seq2Seq::Rnn(m), Seq2SeqState::Rnn(s)) => Seq2SeqState::Rnn(m.select(s, rows)),
            _ => unreachable!("a state comes from its own model's start"),
        }
    }
}

impl EncoderDecoder for Seq2Seq {
    fn start(&self, source: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Seq2SeqState {
        match self {
            Seq2Seq::Transformer(m) => Seq2SeqState::Transformer(m.start(source, padding)),
            Seq2Seq::Rnn(m) => Seq2SeqState::Rnn(m.start(source, padding)),
        }
    }

    fn max_target_len(&self) -> usize {
        match self {
            Seq2Seq::Transformer(m) => m.max_target_len(),
            Seq2Seq::Rnn(m) => m.max_target_len(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use burn::tensor::{Device, Int, Tensor, TensorData};

    /// Rows of token ids as a `[batch, len]` tensor.
    pub fn ids(rows: &[&[i64]], device: &Device) -> Tensor<2, Int> {
        let len = rows[0].len();
        let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), len]), device)
    }

    /// Element-wise `|a - b| <= tolerance`, with the worst offender in the message.
    pub fn assert_close<const D: usize>(a: Tensor<D>, b: Tensor<D>, tolerance: f32) {
        assert_eq!(a.dims(), b.dims());
        let worst = (a - b).abs().max().into_scalar::<f32>();
        assert!(worst <= tolerance, "differ by {worst} > {tolerance}");
    }
}
