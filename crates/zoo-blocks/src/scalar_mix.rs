//! ELMo's scalar mix (Peters et al. 2018, equation 1): a task's view of a frozen network's
//! layers, `gamma * sum_k s_k h_k`, where `s = softmax(w)` and `w` (one weight per layer) and
//! the scale `gamma` are what the task learns. The weights start equal (`w = 0`) and the scale
//! at 1, so the mix starts as the layers' mean.
//!
//! With `normalize`, each layer is first normalised at every position to zero mean and unit
//! variance over its width (the paper's optional layer normalisation, without a learned affine):
//! layers of different scales (a word embedding beside saturated LSTM states) then weigh what
//! their weights say.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};

/// Softmax-normalised layer weights and a scale; see the module docs.
#[derive(Module, Debug)]
pub struct ScalarMix {
    /// One unnormalised weight per layer, `[layers]`.
    pub weights: Param<Tensor<1>>,
    /// `gamma`, `[1]`.
    pub scale: Param<Tensor<1>>,
    /// Normalise each layer before mixing.
    #[module(skip)]
    normalize: bool,
}

impl ScalarMix {
    /// A mix of `layers` layers, each normalised first when `normalize`: equal weights, scale 1.
    pub fn new(layers: usize, normalize: bool, device: &Device) -> Self {
        assert!(layers > 0, "a scalar mix needs at least one layer");
        Self {
            weights: Initializer::Zeros.init([layers], device),
            scale: Initializer::Ones.init([1], device),
            normalize,
        }
    }

    /// Layers mixed.
    pub fn layers(&self) -> usize {
        self.weights.dims()[0]
    }

    /// The normalised weights `s = softmax(w)`: positive, summing to one.
    pub fn normalized_weights(&self) -> Tensor<1> {
        softmax(self.weights.val(), 0)
    }

    /// `gamma * sum_k s_k layers[k]` over layers of one shape, `[batch, len, width]` each.
    pub fn forward(&self, layers: Vec<Tensor<3>>) -> Tensor<3> {
        assert_eq!(
            layers.len(),
            self.layers(),
            "the mix was made for {} layers",
            self.layers()
        );
        let layers = if self.normalize {
            layers.into_iter().map(normalized).collect()
        } else {
            layers
        };
        mix(self.weights.val(), self.scale.val(), layers)
    }
}

/// `x` at every position shifted and scaled to zero mean and unit variance over its width.
fn normalized(x: Tensor<3>) -> Tensor<3> {
    let mean = x.clone().mean_dim(2);
    let centred = x - mean;
    let variance = centred.clone().square().mean_dim(2);
    centred / (variance + 1e-5).sqrt()
}

/// `scale * sum_k softmax(weights)_k layers[k]`.
fn mix(weights: Tensor<1>, scale: Tensor<1>, layers: Vec<Tensor<3>>) -> Tensor<3> {
    let weights = softmax(weights, 0) * scale;
    layers
        .into_iter()
        .enumerate()
        .map(|(k, layer)| layer * weights.clone().narrow(0, k, 1).unsqueeze::<3>())
        .reduce(|sum, term| sum + term)
        .expect("at least one layer")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradients, test_device, to_vec};
    use burn::tensor::{Distribution, TensorData};

    fn mix_with(raw: &[f32], scale: f32, device: &Device) -> ScalarMix {
        ScalarMix {
            weights: Param::from_tensor(Tensor::from_data(
                TensorData::new(raw.to_vec(), [raw.len()]),
                device,
            )),
            scale: Param::from_tensor(Tensor::from_data(TensorData::new(vec![scale], [1]), device)),
            normalize: false,
        }
    }

    #[test]
    fn the_weights_are_positive_and_sum_to_one() {
        let device = test_device();
        for raw in [
            vec![0.0, 0.0, 0.0],
            vec![3.0, -2.0, 0.5],
            vec![40.0, -40.0, 1.0, 7.5],
        ] {
            let weights = to_vec(mix_with(&raw, 2.0, &device).normalized_weights());
            let sum: f32 = weights.iter().sum();
            assert!((sum - 1.0).abs() < 1e-6, "{raw:?}: sum {sum}");
            assert!(weights.iter().all(|&w| w >= 0.0), "{weights:?}");
        }
        let fresh = to_vec(ScalarMix::new(3, false, &device).normalized_weights());
        assert_eq!(fresh, vec![1.0 / 3.0; 3]);
    }

    #[test]
    fn the_mix_is_the_scaled_weighted_sum() {
        let device = test_device();
        let raw = [0.3f32, -1.2, 2.0];
        let mix = mix_with(&raw, 1.7, &device);
        let layers: Vec<Tensor<3>> = (0..3)
            .map(|_| Tensor::random([2, 4, 5], Distribution::Normal(0.0, 1.0), &device))
            .collect();
        let exp: Vec<f64> = raw.iter().map(|&w| (w as f64).exp()).collect();
        let total: f64 = exp.iter().sum();
        let expected = layers
            .iter()
            .zip(&exp)
            .map(|(layer, e)| layer.clone() * (1.7 * e / total))
            .reduce(|a, b| a + b)
            .unwrap();
        assert_close(mix.forward(layers), expected, 1e-5);
    }

    /// Normalised layers weigh what their weights say whatever their scale and offset.
    #[test]
    fn normalised_layers_lose_their_scale() {
        let device = test_device();
        let mix = ScalarMix::new(2, true, &device);
        let layers: Vec<Tensor<3>> = (0..2)
            .map(|_| Tensor::random([2, 3, 8], Distribution::Normal(0.0, 1.0), &device))
            .collect();
        let shifted = vec![layers[0].clone() * 50.0 + 3.0, layers[1].clone() * 0.5];
        assert_close(mix.forward(layers.clone()), mix.forward(shifted), 1e-3);
        let out = to_vec(mix.forward(layers));
        // The mean of two unit-variance layers: each position's values have mean zero.
        for row in out.chunks(8) {
            assert!(row.iter().sum::<f32>().abs() < 1e-4, "{row:?}");
        }
    }

    #[test]
    fn weight_and_scale_gradients_match_finite_differences() {
        let device = test_device().autodiff();
        let layers: Vec<Tensor<3>> = (0..4)
            .map(|_| Tensor::random([2, 3, 5], Distribution::Normal(0.0, 1.0), &device))
            .collect();
        let probe = Tensor::<3>::random([2, 3, 5], Distribution::Normal(0.0, 1.0), &device);
        // The layer weights and the scale as one input of five.
        check_gradients(
            [5],
            |x| {
                let (weights, scale) = (x.clone().narrow(0, 0, 4), x.narrow(0, 4, 1));
                (mix(weights, scale, layers.clone()) * probe.clone()).sum()
            },
            &device,
        );
    }
}
