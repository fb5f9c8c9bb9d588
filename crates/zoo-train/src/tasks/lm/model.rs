//! The causal language model as burn-train sees it: one training step (loss, then the shared
//! gradient step) and one validation step, for a GPT or a recurrent LM (whose state carries from
//! one window to the next).

use crate::models::ModelConfig;
use crate::runtime::metrics::TokenLoss;
use crate::runtime::step::{CarriedState, GradientStep, StepOutput};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use burn::train::metric::{Adaptor, LossInput};
use burn::train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};
use burn_std::ExecutionError;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use zoo_blocks::RecurrentState;
use zoo_gpt::Gpt;
use zoo_rnn::{RnnLm, RnnState};

/// The model of a language-model run: a GPT or a recurrent LM.
#[derive(Module, Debug)]
// One per run, never in a collection: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum LmModel {
    /// A decoder-only transformer.
    Gpt(Gpt),
    /// An LSTM or GRU language model.
    Rnn(RnnLm),
}

impl LmModel {
    /// Builds the model of `config` with fresh weights.
    pub fn init(config: &ModelConfig, device: &Device) -> Result<Self, String> {
        Ok(match config {
            ModelConfig::Gpt(c) => LmModel::Gpt(c.init(device)?),
            ModelConfig::Rnn(c) => LmModel::Rnn(c.init(device)?),
            ModelConfig::Ngram(_) => return Err("an n-gram model is counted, not trained".into()),
            ModelConfig::Bert(_) => {
                return Err("a BERT encoder is not a language model of next tokens".into());
            }
            ModelConfig::Elmo(_) => {
                return Err("an ELMo task model is not a language model of next tokens".into());
            }
            ModelConfig::Transformer(_) | ModelConfig::RnnAttention(_) => {
                return Err("an encoder-decoder is not a language model of next tokens".into());
            }
        })
    }

    /// Mean next-token cross-entropy of `targets` given `inputs` (`[batch, len]` each). A
    /// recurrent model starts from `state` and returns the state after the window; a biLM's
    /// windows stand alone (its backward stack would need the next window's state).
    pub fn loss(
        &self,
        inputs: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        state: Option<RnnState>,
    ) -> (Tensor<1>, Option<RnnState>) {
        match self {
            LmModel::Gpt(gpt) => (gpt.loss(inputs, targets), None),
            LmModel::Rnn(rnn) if rnn.is_bidirectional() => {
                (rnn.loss(inputs, targets, None).0, None)
            }
            LmModel::Rnn(rnn) => {
                let (loss, state) = rnn.loss(inputs, targets, state);
                (loss, Some(state))
            }
        }
    }

    /// Each target's negative log-likelihood `[batch, len]` given `inputs`, from `state` as
    /// [`loss`](Self::loss) reads them, and the state after; its mean is the loss. A biLM's
    /// is the mean of the forward stack's for target `t` and the backward stack's for input `t`.
    pub fn token_nll(
        &self,
        inputs: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        state: Option<RnnState>,
    ) -> (Tensor<2>, Option<RnnState>) {
        let nll = |logits: Tensor<3>, targets: Tensor<2, Int>| {
            let [batch, len, _] = logits.dims();
            log_softmax(logits, 2)
                .gather(2, targets.unsqueeze_dim::<3>(2))
                .reshape([batch, len])
                .neg()
        };
        match self {
            LmModel::Gpt(gpt) => (nll(gpt.forward(inputs, None), targets), None),
            LmModel::Rnn(rnn) if rnn.is_bidirectional() => {
                let forward = nll(rnn.forward(inputs.clone(), None).0, targets.clone());
                let backward = nll(rnn.backward_logits(targets), inputs);
                ((forward + backward) / 2.0, None)
            }
            LmModel::Rnn(rnn) => {
                let (logits, state) = rnn.forward(inputs, state);
                (nll(logits, targets), Some(state))
            }
        }
    }

    /// This model with its embeddings and its first `layers` layers kept out of training.
    pub fn freeze(self, embeddings: bool, layers: usize) -> Self {
        match self {
            LmModel::Gpt(gpt) => LmModel::Gpt(gpt.freeze(embeddings, layers)),
            LmModel::Rnn(rnn) => LmModel::Rnn(rnn.freeze(embeddings, layers)),
        }
    }
}

/// A language model with what training needs beside the weights.
#[derive(Module, Debug)]
pub struct Lm {
    /// The model.
    pub model: LmModel,
    /// The loss scale of gradient accumulation.
    #[module(skip)]
    step: GradientStep,
    /// A recurrent model's state between windows, kept apart for training and validation.
    #[module(skip)]
    carry: StateCarry,
}

/// The state a recurrent model carries from one window to the next. burn-train steps take the
/// model by shared reference, so the state sits behind a lock; it is detached from the graph
/// (truncated backpropagation through time) and restarts from zeros when a pass over the data
/// starts again.
#[derive(Clone, Debug, Default)]
struct StateCarry {
    train: Arc<Mutex<Option<RnnState>>>,
    valid: Arc<Mutex<Option<RnnState>>>,
}

impl StateCarry {
    /// The state to start `batch` from, and a place to put the state after it.
    fn start(slot: &Mutex<Option<RnnState>>, batch: &LmBatch) -> Option<RnnState> {
        let carried = slot.lock().expect("state lock").take();
        if batch.reset { None } else { carried }
    }

    fn keep(slot: &Mutex<Option<RnnState>>, state: Option<RnnState>) {
        let detached = state.map(|s| s.into_iter().map(RecurrentState::detach).collect());
        *slot.lock().expect("state lock") = detached;
    }
}

impl Lm {
    /// Wraps a model for training with `step`'s loss scale.
    pub fn new(model: LmModel, step: GradientStep) -> Self {
        Self {
            model,
            step,
            carry: StateCarry::default(),
        }
    }
}

impl CarriedState for Lm {
    fn carries_between_batches(&self) -> bool {
        matches!(&self.model, LmModel::Rnn(rnn) if !rnn.is_bidirectional())
    }

    fn carried(&self) -> Vec<(String, TensorData)> {
        let slot = self.carry.train.lock().expect("state lock");
        slot.as_ref().map(RnnLm::state_tensors).unwrap_or_default()
    }

    fn carry_on(
        &self,
        tensors: BTreeMap<String, TensorData>,
        device: &Device,
    ) -> Result<(), String> {
        let LmModel::Rnn(rnn) = &self.model else {
            return match tensors.into_keys().next() {
                Some(name) => Err(format!("{name}: a GPT carries no state")),
                None => Ok(()),
            };
        };
        let state = rnn.state_from_tensors(tensors, device)?;
        *self.carry.train.lock().expect("state lock") = Some(state);
        Ok(())
    }
}

/// Input and target token ids, `[batch, len]` each.
#[derive(Clone, Debug)]
pub struct LmBatch {
    /// Tokens fed to the model.
    pub inputs: Tensor<2, Int>,
    /// The next token at every position.
    pub targets: Tensor<2, Int>,
    /// The first window of a pass over contiguous streams: a recurrent model starts from zeros.
    pub reset: bool,
}

/// What one step reports to the metrics.
pub struct LmOutput {
    /// Mean cross-entropy per token.
    pub loss: Tensor<1>,
    /// Tokens the loss averages over.
    pub tokens: usize,
}

impl ItemLazy for LmOutput {
    fn sync(self) -> Result<Self, ExecutionError> {
        self.loss.device().flush()?;
        Ok(LmOutput {
            loss: self.loss.without_autodiff(),
            tokens: self.tokens,
        })
    }
}

impl Adaptor<LossInput> for LmOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

impl Adaptor<TokenLoss> for LmOutput {
    fn adapt(&self) -> TokenLoss {
        TokenLoss {
            loss: self.loss.clone(),
            tokens: self.tokens,
        }
    }
}

impl StepOutput for LmOutput {
    fn loss_mut(&mut self) -> &mut Tensor<1> {
        &mut self.loss
    }
}

impl TrainStep for Lm {
    type Input = LmBatch;
    type Output = LmOutput;

    fn step(&self, batch: LmBatch) -> TrainOutput<LmOutput> {
        let tokens = batch.inputs.shape().num_elements();
        let state = StateCarry::start(&self.carry.train, &batch);
        let (loss, state) = self.model.loss(batch.inputs, batch.targets, state);
        StateCarry::keep(&self.carry.train, state);
        self.step.output(self, LmOutput { loss, tokens })
    }
}

impl InferenceStep for Lm {
    type Input = LmBatch;
    type Output = LmOutput;

    fn step(&self, batch: LmBatch) -> LmOutput {
        let tokens = batch.inputs.shape().num_elements();
        let state = StateCarry::start(&self.carry.valid, &batch);
        let (loss, state) = self.model.loss(batch.inputs, batch.targets, state);
        StateCarry::keep(&self.carry.valid, state);
        LmOutput { loss, tokens }
    }
}
