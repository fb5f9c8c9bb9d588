//! The encoder as burn-train sees it: a BERT model and its head, one training step (task loss,
//! then the shared gradient step) and one validation step, and what each reports to the
//! metrics.

use crate::runtime::metrics::LabelledBatch;
use crate::runtime::step::{CarriedState, GradientStep, StepOutput};
use crate::tasks::encoder::distill::Teacher;
use burn::module::Module;
use burn::prelude::*;
use burn::train::metric::{Adaptor, LossInput};
use burn::train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};
use burn_std::ExecutionError;
use zoo_bert::{BertModel, Predictions, Targets};

/// A BERT model with what training needs beside the weights.
#[derive(Module, Debug)]
pub struct Encoder {
    /// The encoder and its head.
    pub model: BertModel,
    /// The loss scale of gradient accumulation.
    #[module(skip)]
    step: GradientStep,
    /// Distillation: the frozen teacher whose outputs training matches (not part of the
    /// record: checkpoints hold the student).
    #[module(skip)]
    teacher: Option<Teacher>,
}

/// Each batch stands alone: nothing is carried.
impl CarriedState for Encoder {}

impl Encoder {
    /// Wraps a model for training with `step`'s loss scale.
    pub fn new(model: BertModel, step: GradientStep) -> Self {
        Self {
            model,
            step,
            teacher: None,
        }
    }

    /// The same, trained to match `teacher` (validation still scores the task's own loss).
    pub fn with_teacher(self, teacher: Option<Teacher>) -> Self {
        Self { teacher, ..self }
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

impl StepOutput for EncoderOutput {
    fn loss_mut(&mut self) -> &mut Tensor<1> {
        &mut self.loss
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
    /// The task's own loss on `batch`, or with a teacher and `distilling`, the distillation
    /// loss.
    fn forward(&self, batch: EncoderBatch, distilling: bool) -> EncoderOutput {
        let out = match (&self.teacher, distilling) {
            (Some(teacher), true) => teacher.loss(&self.model, batch),
            _ => self
                .model
                .loss(batch.tokens, batch.segments, batch.padding, batch.targets),
        };
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
        self.step.output(self, self.forward(batch, true))
    }
}

impl InferenceStep for Encoder {
    type Input = EncoderBatch;
    type Output = EncoderOutput;

    fn step(&self, batch: EncoderBatch) -> EncoderOutput {
        self.forward(batch, false)
    }
}
