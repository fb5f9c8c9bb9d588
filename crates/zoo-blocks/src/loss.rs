//! Losses every family uses.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// Mean cross-entropy of `logits` (`[n, classes]`) against `targets` (`[n]`).
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [n, _] = logits.dims();
    let log_probs = log_softmax(logits, 1);
    -log_probs.gather(1, targets.reshape([n, 1])).mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test_device;
    use burn::tensor::TensorData;

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
}
