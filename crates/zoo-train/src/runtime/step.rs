//! The gradient step every task's training step ends with: backward from the loss (scaled for
//! gradient accumulation) and the loss detached for the metrics. A task's training module keeps
//! a [`GradientStep`] beside its model and hands it its forward pass's [`StepOutput`]. What
//! happens to the gradients next (summed over micro-batches, checked, clipped to a global norm,
//! applied) is the training loop's, in `fit`; the norm arithmetic is here.
//!
//! [`CarriedState`] is the other thing a task's model tells the runtime: what it carries from
//! one batch to the next, which a checkpoint must keep.

use crate::recipe::Recipe;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::train::TrainOutput;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What a task's forward pass reports: it holds the loss backward starts from, which the
/// gradient step detaches once it has the gradients (the metrics keep the rest as it is).
pub trait StepOutput {
    /// The loss.
    fn loss_mut(&mut self) -> &mut Tensor<1>;
}

/// State a model carries from one training batch to the next (a recurrent model's hidden
/// state under truncated backpropagation through time). A checkpoint keeps it, so a resumed
/// run continues from it and not from zeros. Models that carry nothing keep the defaults.
pub trait CarriedState {
    /// The carried tensors by name; none when nothing is carried (yet).
    fn carried(&self) -> Vec<(String, TensorData)> {
        Vec::new()
    }

    /// Whether each training batch starts from the state the one before left, so that batches
    /// must run one after the other (never split across devices).
    fn carries_between_batches(&self) -> bool {
        false
    }

    /// Carries on from `tensors` (what [`carried`](Self::carried) gave), on `device`; a
    /// tensor that does not fit the model is an error naming it.
    fn carry_on(
        &self,
        tensors: BTreeMap<String, TensorData>,
        device: &Device,
    ) -> Result<(), String> {
        let _ = device;
        match tensors.into_keys().next() {
            Some(name) => Err(format!("{name}: this model carries no state")),
            None => Ok(()),
        }
    }
}

/// Optimiser steps skipped for a non-finite loss or gradient (`training.on_nonfinite =
/// "skip"`), by epoch: the training loop counts them, the metrics log reports them.
#[derive(Clone, Debug, Default)]
pub struct SkippedSteps(Arc<Mutex<BTreeMap<usize, usize>>>);

impl SkippedSteps {
    /// One more step of epoch `epoch` skipped.
    pub fn count(&self, epoch: usize) {
        *self.0.lock().expect("skips lock").entry(epoch).or_default() += 1;
    }

    /// The steps of epoch `epoch` skipped.
    pub fn of_epoch(&self, epoch: usize) -> usize {
        self.0
            .lock()
            .expect("skips lock")
            .get(&epoch)
            .copied()
            .unwrap_or_default()
    }
}

/// How a training step turns a loss into gradients.
#[derive(Clone, Copy, Debug)]
pub struct GradientStep {
    /// Multiplies the loss before backward: `1 / grad_accumulation`, so that the micro-batch
    /// gradients the training loop sums are the mean gradient of the whole batch.
    pub loss_scale: f32,
}

impl GradientStep {
    /// The recipe's accumulation.
    pub fn of(recipe: &Recipe) -> Self {
        Self::new(recipe.training.micro_batches())
    }

    /// One micro-batch in `grad_accumulation`.
    pub fn new(grad_accumulation: usize) -> Self {
        Self {
            loss_scale: 1.0 / grad_accumulation as f32,
        }
    }

    /// burn-train's result of a training step of `module`: the gradients of `output`'s loss,
    /// and `output` with its loss detached.
    pub fn output<M: Module, O: StepOutput>(&self, module: &M, mut output: O) -> TrainOutput<O> {
        let loss = output.loss_mut();
        let grads = gradients(module, loss, self.loss_scale);
        *loss = loss.clone().detach();
        TrainOutput {
            grads,
            item: output,
        }
    }
}

/// The gradients of `loss * loss_scale` with respect to `module`'s parameters.
pub fn gradients<M: Module>(module: &M, loss: &Tensor<1>, loss_scale: f32) -> GradientsParams {
    let scaled = if loss_scale == 1.0 {
        loss.clone()
    } else {
        loss.clone() * loss_scale
    };
    GradientsParams::from_grads(scaled.backward(), module)
}

/// The squared norm of all of `module`'s gradients together, on the device (`None`: no
/// parameter has a gradient). Not finite exactly when some gradient is not (or overflows).
pub fn squared_norm<M: Module>(module: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    struct SumSquares<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.get::<D>(param.id) {
                // In a fixed order, so that a resumed run clips as the first did.
                let s = zoo_blocks::kernels::sum_of_squares(grad);
                self.total = Some(match self.total.take() {
                    Some(total) => total + s,
                    None => s,
                });
            }
        }
    }
    let mut sum = SumSquares { grads, total: None };
    module.visit(&mut sum);
    sum.total
}

/// Scales every gradient by `min(1, max_norm / ‖g‖)`, given `‖g‖²` (PyTorch's
/// `clip_grad_norm_`). Burn's own clipping works per parameter tensor.
pub fn clip_to_norm<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    squared_norm: Tensor<1>,
    max_norm: f32,
) {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: Tensor<1>,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.remove::<D>(param.id) {
                let scaled = zoo_blocks::kernels::scale(grad, self.factor.clone());
                self.grads.register::<D>(param.id, scaled);
            }
        }
    }
    // Stays on the device: no read-back, so clipping does not stall the step.
    let factor = (squared_norm.sqrt().add_scalar(1e-6).recip() * max_norm).clamp_max(1.0);
    module.visit(&mut Scale { grads, factor });
}

/// Clips the global norm of `module`'s gradients to `max_norm` (see [`clip_to_norm`]).
pub fn clip_global_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f32) {
    if let Some(norm) = squared_norm(module, grads) {
        clip_to_norm(module, grads, norm, max_norm);
    }
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
