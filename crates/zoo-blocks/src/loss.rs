//! Losses every family uses.

use crate::kernels;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// Mean cross-entropy of `logits` (`[n, classes]`) against `targets` (`[n]`): our fused kernel
/// on `flex`, Burn's log-softmax elsewhere.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    if let Some(loss) = kernels::cross_entropy(logits.clone(), targets.clone()) {
        return loss;
    }
    let [n, _] = logits.dims();
    let log_probs = log_softmax(logits, 1);
    -log_probs.gather(1, targets.reshape([n, 1])).mean()
}

/// Cross-entropy against targets smoothed by `epsilon` (Szegedy et al. 2016; the transformer
/// used 0.1): the target distribution puts `1 - epsilon` on the target and spreads `epsilon`
/// evenly over all classes, so the loss is `(1 - epsilon) · nll + epsilon · mean_c(-log p_c)`,
/// as PyTorch's `cross_entropy(..., label_smoothing=epsilon)`. `epsilon = 0` is
/// [`cross_entropy`].
pub fn label_smoothed_cross_entropy(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    epsilon: f64,
) -> Tensor<1> {
    if epsilon == 0.0 {
        return cross_entropy(logits, targets);
    }
    let [n, _] = logits.dims();
    let log_probs = log_softmax(logits, 1);
    let nll = -log_probs.clone().gather(1, targets.reshape([n, 1])).mean();
    let uniform = -log_probs.mean();
    nll * (1.0 - epsilon) + uniform * epsilon
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, test_device};
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn cross_entropy_matches_the_definition() {
        let device = test_device();
        let logits = Tensor::<2>::from_data(
            TensorData::from([[1.0f32, 2.0, 0.0], [0.5, 0.5, 3.0]]),
            &device,
        );
        let targets = Tensor::<1, Int>::from_data(TensorData::from([1i64, 0]), &device);
        let lse = |row: [f64; 3]| row.iter().map(|v| v.exp()).sum::<f64>().ln();
        let expected = ((lse([1.0, 2.0, 0.0]) - 2.0) + (lse([0.5, 0.5, 3.0]) - 0.5)) / 2.0;
        let got = cross_entropy(logits, targets).into_scalar::<f64>();
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    }

    /// Against the definition, computed by hand from the two rows' log-probabilities.
    #[test]
    fn label_smoothing_spreads_epsilon_over_every_class() {
        let device = test_device();
        let rows = [[1.0f64, 2.0, 0.0], [0.5, 0.5, 3.0]];
        let logits =
            Tensor::<2>::from_data(TensorData::from(rows.map(|r| r.map(|v| v as f32))), &device);
        let targets = Tensor::<1, Int>::from_data(TensorData::from([1i64, 0]), &device);
        let epsilon = 0.1;
        let mut expected = 0.0;
        for (row, target) in rows.iter().zip([1usize, 0]) {
            let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            let log_p: Vec<f64> = row.iter().map(|v| v - lse).collect();
            let smoothed: f64 = (0..3)
                .map(|c| {
                    let q = epsilon / 3.0 + if c == target { 1.0 - epsilon } else { 0.0 };
                    -q * log_p[c]
                })
                .sum();
            expected += smoothed / 2.0;
        }
        let got = label_smoothed_cross_entropy(logits.clone(), targets.clone(), epsilon);
        assert!((got.into_scalar::<f64>() - expected).abs() < 1e-6);
        assert_close(
            label_smoothed_cross_entropy(logits.clone(), targets.clone(), 0.0),
            cross_entropy(logits, targets),
            1e-7,
        );
    }

    #[test]
    fn the_fused_kernel_matches_burns_log_softmax_with_gradients() {
        let device = test_device().autodiff();
        let logits0 = Tensor::<2>::random([37, 300], Distribution::Normal(0.0, 3.0), &device);
        let targets = Tensor::<1, Int>::from_data(
            TensorData::new((0..37).map(|i| (i * 53 % 300) as i64).collect(), [37]),
            &device,
        );
        let run = |fused: bool| {
            let logits = logits0.clone().detach().require_grad();
            let loss = if fused {
                cross_entropy(logits.clone(), targets.clone())
            } else {
                let log_probs = log_softmax(logits.clone(), 1);
                -log_probs.gather(1, targets.clone().reshape([37, 1])).mean()
            };
            let grads = (loss.clone() * 1.7).backward();
            (loss.inner(), logits.grad(&grads).unwrap())
        };
        let (fused, composed) = (run(true), run(false));
        assert_close(fused.0, composed.0, 1e-5);
        assert_close(fused.1, composed.1, 1e-6);
    }
}
