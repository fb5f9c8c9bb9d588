//! Normalisation layers (LayerNorm, RMSNorm) and where a block puts them (pre- or post-norm).

use crate::kernels;
use burn::module::{Module, Param};
use burn::nn::{Initializer, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Which normalisation a model uses.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NormKind {
    /// LayerNorm: centre and scale each vector, then a learned gain (and optional bias).
    #[default]
    LayerNorm,
    /// RMSNorm: scale by the root mean square only, a learned gain, no bias.
    RmsNorm,
}

/// Where a residual block normalises.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NormPlacement {
    /// `x + f(norm(x))` (GPT-2 and later): stable without warmup, needs a final norm.
    #[default]
    Pre,
    /// `norm(x + f(x))` (the original transformer, BERT).
    Post,
}

/// LayerNorm's and RMSNorm's epsilon unless a model says otherwise (PyTorch's and Burn's
/// default; BERT uses 1e-12, T5 1e-6).
pub const DEFAULT_EPSILON: f64 = 1e-5;

/// LayerNorm over the last dimension, `(x - mean) / sqrt(var + epsilon) * gamma + beta`, on our
/// fused kernel. Burn's `LayerNorm` keeps its epsilon private, where the kernel cannot read it;
/// this one has the same parameters under the same names, so checkpoints load either way.
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// The gain, `[d_model]`.
    pub gamma: Param<Tensor<1>>,
    /// The bias, `[d_model]` (absent in bias-free models).
    pub beta: Option<Param<Tensor<1>>>,
    /// Added to the variance.
    pub epsilon: f64,
}

/// A LayerNorm or an RMSNorm, chosen at construction.
#[derive(Module, Debug)]
pub enum Norm {
    /// LayerNorm.
    Layer(LayerNorm),
    /// RMSNorm.
    Rms(RmsNorm),
}

impl Norm {
    /// A norm over the last dimension of size `d_model`, with the default epsilon. `bias` only
    /// matters for LayerNorm.
    pub fn new(kind: NormKind, d_model: usize, bias: bool, device: &Device) -> Self {
        Self::with_epsilon(kind, d_model, bias, DEFAULT_EPSILON, device)
    }

    /// [`Norm::new`] with `epsilon` added to the variance (or mean square).
    pub fn with_epsilon(
        kind: NormKind,
        d_model: usize,
        bias: bool,
        epsilon: f64,
        device: &Device,
    ) -> Self {
        match kind {
            NormKind::LayerNorm => Norm::Layer(LayerNorm {
                gamma: Initializer::Ones.init([d_model], device),
                beta: bias.then(|| Initializer::Zeros.init([d_model], device)),
                epsilon,
            }),
            NormKind::RmsNorm => Norm::Rms(
                RmsNormConfig::new(d_model)
                    .with_epsilon(epsilon)
                    .init(device),
            ),
        }
    }

    /// Normalises over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Norm::Layer(norm) => kernels::layer_norm(
                x,
                norm.gamma.val(),
                norm.beta.as_ref().map(|beta| beta.val()),
                norm.epsilon,
            ),
            Norm::Rms(norm) => norm.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradients, normal, test_device};
    use burn::tensor::Distribution;

    #[test]
    fn layer_norm_output_has_zero_mean_unit_variance() {
        let device = test_device();
        let norm = Norm::new(NormKind::LayerNorm, 16, true, &device);
        let x = Tensor::<2>::random([4, 16], Distribution::Normal(3.0, 2.0), &device);
        let y = norm.forward(x);
        let mean = y.clone().mean_dim(1);
        let var = y.var_bias(1);
        assert_close(mean, Tensor::zeros([4, 1], &device), 1e-5);
        assert_close(var, Tensor::ones([4, 1], &device), 1e-3);
    }

    #[test]
    fn rms_norm_output_has_unit_root_mean_square() {
        let device = test_device();
        let norm = Norm::new(NormKind::RmsNorm, 16, false, &device);
        let x = Tensor::<2>::random([4, 16], Distribution::Normal(1.0, 2.0), &device);
        let ms = norm.forward(x).square().mean_dim(1);
        assert_close(ms, Tensor::ones([4, 1], &device), 1e-3);
    }

    #[test]
    fn norm_gradients_match_finite_differences() {
        for kind in [NormKind::LayerNorm, NormKind::RmsNorm] {
            let device = test_device().autodiff();
            let norm = Norm::new(kind, 6, true, &device);
            // A fixed random projection makes the scalar depend on every output unevenly.
            let weights = normal([2, 3, 6], 1, &device);
            check_gradients(
                [2, 3, 6],
                |x| (norm.forward(x) * weights.clone()).sum(),
                &device,
            );
        }
    }
}
