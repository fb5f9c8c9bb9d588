//! The gradient step every task's training step ends with: backward from the loss (scaled for
//! gradient accumulation), the global gradient norm clipped, and the loss detached for the
//! metrics. A task's training module keeps a [`GradientStep`] beside its model and hands it
//! its forward pass's [`StepOutput`].

use crate::recipe::Recipe;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::train::TrainOutput;

/// What a task's forward pass reports: it holds the loss backward starts from, which the
/// gradient step detaches once it has the gradients (the metrics keep the rest as it is).
pub trait StepOutput {
    /// The loss.
    fn loss_mut(&mut self) -> &mut Tensor<1>;
}

/// How a training step turns a loss into gradients.
#[derive(Clone, Copy, Debug)]
pub struct GradientStep {
    /// Multiplies the loss before backward: `1 / grad_accumulation`, so that burn-train's
    /// summed micro-batch gradients are the mean gradient of the whole batch.
    pub loss_scale: f32,
    /// Clip the global gradient norm to this (0 = off). burn-train sums micro-batch gradients
    /// outside the step, so with gradient accumulation each micro-batch is clipped on its own.
    pub grad_clip: f32,
}

impl GradientStep {
    /// The recipe's accumulation and clipping.
    pub fn of(recipe: &Recipe) -> Self {
        Self::new(
            recipe.training.grad_accumulation,
            recipe.optimizer.grad_clip,
        )
    }

    /// One micro-batch in `grad_accumulation`, clipped to `grad_clip` (0: not clipped).
    pub fn new(grad_accumulation: usize, grad_clip: f64) -> Self {
        Self {
            loss_scale: 1.0 / grad_accumulation as f32,
            grad_clip: grad_clip as f32,
        }
    }

    /// burn-train's result of a training step of `module`: the gradients of `output`'s loss,
    /// and `output` with its loss detached.
    pub fn output<M: Module, O: StepOutput>(&self, module: &M, mut output: O) -> TrainOutput<O> {
        let loss = output.loss_mut();
        let grads = gradients(module, loss, self.loss_scale, self.grad_clip);
        *loss = loss.clone().detach();
        TrainOutput {
            grads,
            item: output,
        }
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
