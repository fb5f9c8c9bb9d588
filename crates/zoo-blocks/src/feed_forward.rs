//! The position-wise feed-forward block: `out(act(fc(x)))`, or SwiGLU's gated form.

use crate::kernels::{self, gelu};
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation::{gelu_approximate, relu, silu};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// The non-linearity between the two projections.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// `max(0, x)` (the original transformer).
    Relu,
    /// Exact GELU, `x * Phi(x)` (BERT, nanoGPT's `nn.GELU()`).
    #[default]
    Gelu,
    /// GELU's tanh approximation (GPT-2's `gelu_new`).
    GeluTanh,
    /// `silu(x W) * (x V)` (PaLM, LLaMA): the first projection is twice as wide.
    Swiglu,
    /// `gelu_tanh(x W) * (x V)` (T5 v1.1's "gated-gelu"): the first projection is twice as
    /// wide.
    Geglu,
}

impl Activation {
    /// Whether the first projection feeds a gate and a value side by side.
    pub fn is_gated(self) -> bool {
        matches!(self, Activation::Swiglu | Activation::Geglu)
    }
}

/// Shapes and options of a [`FeedForward`].
#[derive(Clone, Debug)]
pub struct FeedForwardConfig {
    /// Width of the residual stream.
    pub d_model: usize,
    /// Hidden width (for the gated activations, the width of each of the two branches).
    pub d_ff: usize,
    /// The non-linearity.
    pub activation: Activation,
    /// Whether the projections carry a bias.
    pub bias: bool,
    /// Dropout after the output projection.
    pub dropout: f64,
    /// Standard deviation of the output projection's initial weights; the input one uses 0.02.
    pub out_init_std: f64,
}

impl FeedForwardConfig {
    /// A GELU block with bias and no dropout.
    pub fn new(d_model: usize, d_ff: usize) -> Self {
        Self {
            d_model,
            d_ff,
            activation: Activation::Gelu,
            bias: true,
            dropout: 0.0,
            out_init_std: 0.02,
        }
    }

    /// Initialises the block.
    pub fn init(&self, device: &Device) -> FeedForward {
        let branches = if self.activation.is_gated() { 2 } else { 1 };
        let normal = |std| Initializer::Normal { mean: 0.0, std };
        FeedForward {
            fc: LinearConfig::new(self.d_model, branches * self.d_ff)
                .with_bias(self.bias)
                .with_initializer(normal(0.02))
                .init(device),
            out: LinearConfig::new(self.d_ff, self.d_model)
                .with_bias(self.bias)
                .with_initializer(normal(self.out_init_std))
                .init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            activation: self.activation,
        }
    }
}

/// See the module docs.
#[derive(Module, Debug)]
pub struct FeedForward {
    /// Input projection (for SwiGLU, gate and value side by side).
    pub fc: Linear,
    /// Output projection.
    pub out: Linear,
    dropout: Dropout,
    #[module(skip)]
    activation: Activation,
}

impl FeedForward {
    /// Applies the block to `[..., d_model]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let h = kernels::linear(&self.fc, x);
        let h = match self.activation {
            Activation::Relu => relu(h),
            Activation::Gelu => gelu(h),
            Activation::GeluTanh => gelu_approximate(h),
            Activation::Swiglu => {
                let [gate, value] = h.chunk(2, D - 1).try_into().expect("two halves");
                silu(gate) * value
            }
            Activation::Geglu => {
                let [gate, value] = h.chunk(2, D - 1).try_into().expect("two halves");
                gelu_approximate(gate) * value
            }
        };
        crate::kernels::dropout(&self.dropout, kernels::linear(&self.out, h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradients, erf_reference, normal, test_device};
    use burn::module::Param;
    use burn::tensor::{Distribution, TensorData};

    const ALL: [Activation; 4] = [
        Activation::Relu,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Swiglu,
    ];

    #[test]
    fn activations_match_their_formulas() {
        let device = test_device();
        let values = [-2.0f32, -0.5, 0.0, 0.7, 3.0];
        let x = Tensor::<1>::from_data(TensorData::from(values), &device);
        let exact: Vec<f32> = values
            .iter()
            .map(|&v| {
                let v = v as f64;
                (0.5 * v * (1.0 + erf_reference(v / 2f64.sqrt()))) as f32
            })
            .collect();
        let tanh: Vec<f32> = values
            .iter()
            .map(|&v| {
                let v = v as f64;
                let inner = (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3));
                (0.5 * v * (1.0 + inner.tanh())) as f32
            })
            .collect();
        assert_close(
            gelu(x.clone()),
            Tensor::from_data(TensorData::from(exact.as_slice()), &device),
            1e-5,
        );
        assert_close(
            gelu_approximate(x),
            Tensor::from_data(TensorData::from(tanh.as_slice()), &device),
            1e-5,
        );
    }

    #[test]
    fn swiglu_doubles_the_input_projection() {
        let device = test_device();
        let block = FeedForwardConfig {
            activation: Activation::Swiglu,
            ..FeedForwardConfig::new(8, 12)
        }
        .init(&device);
        assert_eq!(block.fc.weight.dims(), [8, 24]);
        assert_eq!(block.out.weight.dims(), [12, 8]);
        let y = block.forward(Tensor::<3>::random(
            [2, 3, 8],
            Distribution::Default,
            &device,
        ));
        assert_eq!(y.dims(), [2, 3, 8]);
    }

    #[test]
    fn feed_forward_gradients_match_finite_differences() {
        let device = test_device().autodiff();
        for activation in ALL {
            let block = FeedForwardConfig {
                activation,
                ..FeedForwardConfig::new(6, 10)
            }
            .init(&device);
            // Weights of a generator of its own: the device's is shared by tests running in
            // parallel, and a draw that sets many ReLU kinks near the probed input fails.
            let mut block = block;
            block.fc.weight = Param::from_tensor(normal(block.fc.weight.dims(), 2, &device) * 0.3);
            block.out.weight =
                Param::from_tensor(normal(block.out.weight.dims(), 3, &device) * 0.3);
            let weights = normal([2, 3, 6], 1, &device);
            check_gradients(
                [2, 3, 6],
                |x| (block.forward(x) * weights.clone()).sum(),
                &device,
            );
        }
    }
}
