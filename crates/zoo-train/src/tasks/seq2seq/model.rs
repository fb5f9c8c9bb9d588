//! The encoder-decoder as burn-train sees it: teacher-forced target cross-entropy (label
//! smoothed) over the target tokens, then the shared gradient step; token accuracy for the
//! metrics.

use crate::recipe::Recipe;
use crate::runtime::metrics::LabelledBatch;
use crate::runtime::step::{CarriedState, GradientStep, StepOutput};
use crate::tasks::seq2seq::data::Seq2SeqBatch;
use burn::module::Module;
use burn::prelude::*;
use burn::train::metric::{Adaptor, LossInput};
use burn::train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};
use burn_std::ExecutionError;
use zoo_blocks::loss::label_smoothed_cross_entropy;
use zoo_seq2seq::Seq2Seq;

/// An encoder-decoder with what training needs beside the weights.
#[derive(Module, Debug)]
pub struct Seq2SeqTrainer {
    /// The model.
    pub model: Seq2Seq,
    /// The loss scale of gradient accumulation.
    #[module(skip)]
    step: GradientStep,
    /// Label smoothing of the target cross-entropy.
    #[module(skip)]
    label_smoothing: f64,
}

/// Each batch stands alone: nothing is carried.
impl CarriedState for Seq2SeqTrainer {}

impl Seq2SeqTrainer {
    /// Wraps a model for training.
    pub fn new(model: Seq2Seq, recipe: &Recipe) -> Self {
        Self {
            model,
            step: GradientStep::of(recipe),
            label_smoothing: recipe.training.label_smoothing,
        }
    }

    fn forward(&self, batch: Seq2SeqBatch) -> Seq2SeqOutput {
        let logits = self
            .model
            .forward(batch.source, batch.source_padding, batch.target_in);
        let [rows, len, vocab] = logits.dims();
        let scored = logits
            .reshape([rows * len, vocab])
            .select(0, batch.positions.clone());
        let expected = batch
            .target_out
            .reshape([rows * len])
            .select(0, batch.positions);
        let predicted = scored.clone().detach().argmax(1).flatten(0, 1);
        Seq2SeqOutput {
            loss: label_smoothed_cross_entropy(scored, expected.clone(), self.label_smoothing),
            predicted,
            expected,
        }
    }
}

/// What one step reports: the (smoothed) loss and each target token's prediction.
pub struct Seq2SeqOutput {
    /// Mean loss per target token.
    pub loss: Tensor<1>,
    /// The most likely token at each target position.
    pub predicted: Tensor<1, Int>,
    /// The target token there.
    pub expected: Tensor<1, Int>,
}

impl ItemLazy for Seq2SeqOutput {
    fn sync(self) -> Result<Self, ExecutionError> {
        self.loss.device().flush()?;
        Ok(self)
    }
}

impl Adaptor<LossInput> for Seq2SeqOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

impl StepOutput for Seq2SeqOutput {
    fn loss_mut(&mut self) -> &mut Tensor<1> {
        &mut self.loss
    }
}

/// Target tokens predicted and expected, for token accuracy.
pub struct TargetTokens(Tensor<1, Int>, Tensor<1, Int>);

impl LabelledBatch for TargetTokens {
    fn labels(&self) -> Option<(Tensor<1, Int>, Tensor<1, Int>)> {
        Some((self.0.clone(), self.1.clone()))
    }
}

impl Adaptor<TargetTokens> for Seq2SeqOutput {
    fn adapt(&self) -> TargetTokens {
        TargetTokens(self.predicted.clone(), self.expected.clone())
    }
}

impl TrainStep for Seq2SeqTrainer {
    type Input = Seq2SeqBatch;
    type Output = Seq2SeqOutput;

    fn step(&self, batch: Seq2SeqBatch) -> TrainOutput<Seq2SeqOutput> {
        self.step.output(self, self.forward(batch))
    }
}

impl InferenceStep for Seq2SeqTrainer {
    type Input = Seq2SeqBatch;
    type Output = Seq2SeqOutput;

    fn step(&self, batch: Seq2SeqBatch) -> Seq2SeqOutput {
        self.forward(batch)
    }
}
