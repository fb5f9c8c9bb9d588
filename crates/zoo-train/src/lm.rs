//! The causal language model as burn-train sees it: one training step (loss, backward, global
//! gradient-norm clipping) and one validation step, for a GPT or a recurrent LM (whose state
//! carries from one window to the next).

use crate::metrics::LmLossInput;
use crate::recipe::ModelConfig;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::train::metric::{Adaptor, LossInput};
use burn::train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};
use burn_std::ExecutionError;
use std::sync::{Arc, Mutex};
use zoo_blocks::{RecurrentState, Sampler};
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
            ModelConfig::Transformer(_) | ModelConfig::RnnAttention(_) => {
                return Err("an encoder-decoder is not a language model of next tokens".into());
            }
        })
    }

    /// Mean next-token cross-entropy of `targets` given `inputs` (`[batch, len]` each). A
    /// recurrent model starts from `state` and returns the state after the window.
    pub fn loss(
        &self,
        inputs: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        state: Option<RnnState>,
    ) -> (Tensor<1>, Option<RnnState>) {
        match self {
            LmModel::Gpt(gpt) => (gpt.loss(inputs, targets).0, None),
            LmModel::Rnn(rnn) => {
                let (loss, state) = rnn.loss(inputs, targets, state);
                (loss, Some(state))
            }
        }
    }

    /// Continues `prompt` by `max_new_tokens` sampled tokens.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        sampler: &mut Sampler,
    ) -> Vec<u32> {
        match self {
            LmModel::Gpt(gpt) => gpt.generate(prompt, max_new_tokens, sampler),
            LmModel::Rnn(rnn) => rnn.generate(prompt, max_new_tokens, sampler),
        }
    }
}

/// A language model with what training needs beside the weights.
#[derive(Module, Debug)]
pub struct Lm {
    /// The model.
    pub model: LmModel,
    /// Multiplies the loss before backward: `1 / grad_accumulation`, so that burn-train's
    /// summed micro-batch gradients are the mean gradient of the whole batch.
    #[module(skip)]
    pub loss_scale: f32,
    /// Clip the global gradient norm to this (0 = off). burn-train sums micro-batch gradients
    /// outside the step, so with gradient accumulation each micro-batch is clipped on its own.
    #[module(skip)]
    pub grad_clip: f32,
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
    /// Wraps a model for training.
    pub fn new(model: LmModel, grad_accumulation: usize, grad_clip: f64) -> Self {
        Self {
            model,
            loss_scale: 1.0 / grad_accumulation as f32,
            grad_clip: grad_clip as f32,
            carry: StateCarry::default(),
        }
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

impl Adaptor<LmLossInput> for LmOutput {
    fn adapt(&self) -> LmLossInput {
        LmLossInput {
            loss: self.loss.clone(),
            tokens: self.tokens,
        }
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
        let grads = gradients(self, &loss, self.loss_scale, self.grad_clip);
        TrainOutput {
            grads,
            item: LmOutput {
                loss: loss.detach(),
                tokens,
            },
        }
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

/// The gradients of `loss * loss_scale` with respect to `module`'s parameters, their global
/// norm clipped to `grad_clip` (0: not clipped).
pub fn gradients<M: Module>(
    module: &M,
    loss: &Tensor<1>,
    loss_scale: f32,
    grad_clip: f32,
) -> GradientsParams {
    let scaled = if loss_scale == 1.0 {
        loss.clone()
    } else {
        loss.clone() * loss_scale
    };
    let mut grads = GradientsParams::from_grads(scaled.backward(), module);
    if grad_clip > 0.0 {
        clip_global_norm(module, &mut grads, grad_clip);
    }
    grads
}

/// Scales every gradient by `min(1, max_norm / ‖g‖)`, where `‖g‖` is the norm of all gradients
/// together (PyTorch's `clip_grad_norm_`). Burn's own clipping works per parameter tensor.
pub fn clip_global_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f32) {
    struct SumSquares<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.get::<D>(param.id) {
                let s = grad.square().sum();
                self.total = Some(match self.total.take() {
                    Some(total) => total + s,
                    None => s,
                });
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: Tensor<1>,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.remove::<D>(param.id) {
                let factor = self.factor.clone().reshape([1; D]);
                self.grads.register::<D>(param.id, grad * factor);
            }
        }
    }

    let mut sum = SumSquares { grads, total: None };
    module.visit(&mut sum);
    let Some(total) = sum.total else { return };
    // Stays on the device: no read-back, so clipping does not stall the step.
    let factor = (total.sqrt().add_scalar(1e-6).recip() * max_norm).clamp_max(1.0);
    module.visit(&mut Scale { grads, factor });
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    #[derive(Module, Debug)]
    struct Two {
        a: Linear,
        b: Linear,
    }

    fn norm_of(model: &Two, grads: &GradientsParams) -> f32 {
        let mut total = 0.0;
        for layer in [&model.a, &model.b] {
            total += grads
                .get::<2>(layer.weight.id)
                .unwrap()
                .square()
                .sum()
                .into_scalar::<f32>();
            total += grads
                .get::<1>(layer.bias.as_ref().unwrap().id)
                .unwrap()
                .square()
                .sum()
                .into_scalar::<f32>();
        }
        total.sqrt()
    }

    fn setup() -> (Two, GradientsParams) {
        let device = Device::flex().autodiff();
        let model = Two {
            a: LinearConfig::new(3, 4).init(&device),
            b: LinearConfig::new(4, 2).init(&device),
        };
        let x = Tensor::<2>::ones([5, 3], &device) * 10.0;
        let loss = model.b.forward(model.a.forward(x)).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        (model, grads)
    }

    #[test]
    fn clipping_scales_all_gradients_to_the_global_norm() {
        let (model, mut grads) = setup();
        let before = norm_of(&model, &grads);
        assert!(before > 1.0);
        let weight_before = grads.get::<2>(model.a.weight.id).unwrap();
        clip_global_norm(&model, &mut grads, 1.0);
        assert!((norm_of(&model, &grads) - 1.0).abs() < 1e-4);
        // One common factor: directions are unchanged.
        let ratio = (grads.get::<2>(model.a.weight.id).unwrap() / weight_before)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        assert!(ratio.iter().all(|r| (r - 1.0 / before).abs() < 1e-4));
    }

    #[test]
    fn small_gradients_are_left_alone() {
        let (model, mut grads) = setup();
        let before = norm_of(&model, &grads);
        clip_global_norm(&model, &mut grads, before * 2.0);
        assert!((norm_of(&model, &grads) - before).abs() < 1e-3);
    }
}
