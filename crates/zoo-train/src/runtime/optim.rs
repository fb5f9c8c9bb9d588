//! AdamW as PyTorch applies it and nanoGPT configures it, on our fused update.
//!
//! Two differences from `burn::optim::AdamW`: the update of each parameter is one parallel pass
//! (`zoo_blocks::kernels::adamw`) instead of a dozen whole-tensor ops on one thread, and weight
//! decay only touches parameters of rank 2 and up (weight matrices and embeddings), never gains
//! and biases: nanoGPT's `configure_optimizers` rule, which HF transformers follows too.
//! The state is Burn's `AdaptiveMomentumState`, so checkpoints keep their layout.
//!
//! [`build_optimizer`] makes a recipe's `[optimizer]`: this AdamW, or [`Sgd`]: Burn's SGD with
//! its plain update (no momentum) in one pass too.

use crate::recipe::{OptimizerKind, Recipe};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer, SgdConfig, SgdState,
};
use burn::tensor::{Device, Tensor};
use zoo_blocks::kernels::{AdamWStep, adamw, sgd};

/// AdamW; see the module docs.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    /// Applied to parameters of rank 2 and up only.
    pub weight_decay: f32,
}

impl Optimizer for AdamW {
    type State<const D: usize> = AdaptiveMomentumState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (moment_1, moment_2, time) = match state {
            Some(state) => (state.moment_1, state.moment_2, state.time + 1),
            None => (grad.zeros_like(), grad.zeros_like(), 1),
        };
        let step = AdamWStep {
            lr: lr as f32,
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: if D >= 2 { self.weight_decay } else { 0.0 },
            time: time as i32,
        };
        let (tensor, moment_1, moment_2) = adamw(tensor, grad, moment_1, moment_2, step);
        let state = AdaptiveMomentumState::new(time, moment_1, moment_2);
        (tensor, Some(state))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.moment_1 = state.moment_1.to_device(device);
        state.moment_2 = state.moment_2.to_device(device);
        state
    }
}

/// Burn's SGD, with the update of a run without momentum in one parallel pass
/// (`zoo_blocks::kernels::sgd`) instead of two or three whole-tensor ops on one thread. With
/// momentum, Burn's `Sgd` steps. The state is Burn's `SgdState` either way, so checkpoints keep
/// their layout.
#[derive(Clone)]
pub struct Sgd {
    burn: burn::optim::Sgd,
    weight_decay: f32,
    momentum: bool,
}

impl Sgd {
    /// SGD with this L2 penalty (0 for none) and momentum (0 for none; dampening 0.1, Burn's
    /// default).
    pub fn new(weight_decay: f64, momentum: f64) -> Self {
        let burn = SgdConfig::new()
            .with_weight_decay(
                (weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32)),
            )
            .with_momentum((momentum > 0.0).then(|| MomentumConfig::new().with_momentum(momentum)))
            .build();
        Self {
            burn,
            weight_decay: weight_decay as f32,
            momentum: momentum > 0.0,
        }
    }
}

impl Optimizer for Sgd {
    type State<const D: usize> = SgdState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        if self.momentum {
            return self.burn.step(lr, tensor, grad, state);
        }
        let tensor = sgd(tensor, grad, lr as f32, self.weight_decay);
        (tensor, Some(SgdState::new(None)))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        burn::optim::Sgd::to_device(state, device)
    }
}

/// The recipe's optimiser.
pub fn build_optimizer(recipe: &Recipe) -> ModuleOptimizer {
    let o = &recipe.optimizer;
    match o.kind {
        OptimizerKind::Adamw => AdamW {
            beta_1: o.beta1 as f32,
            beta_2: o.beta2 as f32,
            epsilon: o.eps as f32,
            weight_decay: o.weight_decay as f32,
        }
        .into(),
        OptimizerKind::Sgd => Sgd::new(o.weight_decay, o.momentum).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
    use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
    use burn::tensor::Distribution;

    #[derive(Module, Debug)]
    struct Net {
        linear: Linear,
        norm: LayerNorm,
    }

    /// A small net and a regression problem for it. Tests run in parallel on one device RNG, so
    /// everything random is drawn here once and shared by the runs a test compares.
    fn problem() -> (Net, [Tensor<2>; 2]) {
        let device = Device::flex().autodiff();
        let net = Net {
            linear: LinearConfig::new(6, 5).init(&device),
            norm: LayerNormConfig::new(5).init(&device),
        };
        values(&net); // initialises the lazily created parameters, once for every clone
        let x = Tensor::<2>::random([4, 6], Distribution::Normal(0.0, 1.0), &device);
        let target = Tensor::<2>::random([4, 5], Distribution::Normal(0.0, 1.0), &device);
        (net, [x, target])
    }

    /// `steps` updates of `net` on the regression loss of `x` against `target`.
    fn train(
        mut net: Net,
        mut optimizer: ModuleOptimizer,
        steps: usize,
        [x, target]: &[Tensor<2>; 2],
    ) -> Net {
        for _ in 0..steps {
            let y = net.norm.forward(net.linear.forward(x.clone()));
            let loss = (y - target.clone()).square().mean();
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optimizer.step(3e-2, net, grads);
        }
        net
    }

    fn values(net: &Net) -> Vec<Vec<f32>> {
        let flat = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
        vec![
            flat(net.linear.weight.val().flatten(0, 1)),
            flat(net.linear.bias.as_ref().unwrap().val()),
            flat(net.norm.gamma.val()),
        ]
    }

    fn ours(weight_decay: f32) -> ModuleOptimizer {
        AdamW {
            beta_1: 0.9,
            beta_2: 0.95,
            epsilon: 1e-8,
            weight_decay,
        }
        .into()
    }

    #[test]
    fn without_decay_it_follows_burns_adamw() {
        let (start, data) = problem();
        let theirs = AdamWConfig::new()
            .with_beta_2(0.95)
            .with_epsilon(1e-8)
            .with_weight_decay(0.0)
            .init();
        let a = values(&train(start.clone(), ours(0.0), 5, &data));
        let b = values(&train(start, theirs, 5, &data));
        for (a, b) in a.iter().flatten().zip(b.iter().flatten()) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    /// Our SGD makes Burn's updates to the last bit, with weight decay or without, and with
    /// momentum (which Burn's steps).
    #[test]
    fn sgd_follows_burns_sgd() {
        let (start, data) = problem();
        for (weight_decay, momentum) in [(0.0, 0.0), (0.1, 0.0), (0.1, 0.9)] {
            let theirs = SgdConfig::new()
                .with_weight_decay(
                    (weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32)),
                )
                .with_momentum(
                    (momentum > 0.0).then(|| MomentumConfig::new().with_momentum(momentum)),
                )
                .init();
            let ours = Sgd::new(weight_decay, momentum).into();
            let a = values(&train(start.clone(), ours, 4, &data));
            let b = values(&train(start.clone(), theirs, 4, &data));
            assert_eq!(a, b, "weight decay {weight_decay}, momentum {momentum}");
            assert_ne!(a, values(&start), "nothing moved");
        }
    }

    /// The fused updates write over a parameter's buffer only when nothing else holds it: a
    /// tensor the caller keeps is left as it was, and both give the same update.
    #[test]
    fn updates_leave_a_parameter_the_caller_holds_untouched() {
        let device = Device::flex();
        let param = Tensor::<2>::random([70, 300], Distribution::Normal(0.0, 1.0), &device);
        let grad = Tensor::<2>::random([70, 300], Distribution::Normal(0.0, 1.0), &device);
        let before = param.to_data();
        let step = AdamWStep {
            lr: 0.1,
            beta_1: 0.9,
            beta_2: 0.99,
            epsilon: 1e-8,
            weight_decay: 0.1,
            time: 1,
        };
        let held = sgd(param.clone(), grad.clone(), 0.5, 0.1);
        param.to_data().assert_eq(&before, true);
        let (held_adamw, _, _) = adamw(
            param.clone(),
            grad.clone(),
            grad.zeros_like(),
            grad.zeros_like(),
            step,
        );
        param.to_data().assert_eq(&before, true);
        // Now nothing else holds the parameter (a copy of its values does), so it is
        // overwritten, to the same values.
        let own = || Tensor::<2>::from_data(before.clone(), &device);
        sgd(own(), grad.clone(), 0.5, 0.1)
            .to_data()
            .assert_eq(&held.to_data(), true);
        let (own_adamw, _, _) = adamw(
            own(),
            grad.clone(),
            grad.zeros_like(),
            grad.zeros_like(),
            step,
        );
        own_adamw.to_data().assert_eq(&held_adamw.to_data(), true);
        let expected = own() - (grad + own() * 0.1) * 0.5;
        held.to_data().assert_eq(&expected.to_data(), true);
    }

    #[test]
    fn weight_decay_shrinks_matrices_but_not_gains_and_biases() {
        let (start, data) = problem();
        // One step, so both runs see the same gradients: the weight matrix shrinks; the bias and
        // the LayerNorm gain move exactly as without decay.
        let plain = values(&train(start.clone(), ours(0.0), 1, &data));
        let decayed = values(&train(start, ours(0.5), 1, &data));
        let moved = plain[0]
            .iter()
            .zip(&decayed[0])
            .any(|(a, b)| (a - b).abs() > 1e-4);
        assert!(moved, "the weight matrix was not decayed");
        for i in [1, 2] {
            assert_eq!(plain[i], decayed[i], "parameter {i} was decayed");
        }
    }
}
