//! Losses every family uses.

use crate::kernels;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// Mean cross-entropy of `logits` (`[n, classes]`) against `targets` (`[n]`): our fused kernel
/// on `flex`, Burn's log-softmax elsewhere.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    label_smoothed_cross_entropy(logits, targets, 0.0)
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
    let (logits, targets) = match kernels::cross_entropy(logits, targets, epsilon as f32) {
        Ok(loss) => return loss,
        Err(inputs) => *inputs,
    };
    let [n, _] = logits.dims();
    let log_probs = log_softmax(logits, 1);
    let nll = -log_probs.clone().gather(1, targets.reshape([n, 1])).mean();
    if epsilon == 0.0 {
        return nll;
    }
    let uniform = -log_probs.mean();
    nll * (1.0 - epsilon) + uniform * epsilon
}

/// Knowledge distillation's soft loss (Hinton et al. 2015): the KL divergence from the
/// teacher's distribution at temperature `T` to the student's, `KL(softmax(t/T) || softmax(s/T))`,
/// averaged over the rows of `[n, classes]` logits and scaled by `T^2` so that its gradients
/// keep their size as `T` changes (DistilBERT's `KLDivLoss(...) * T^2`). The teacher's logits
/// are taken as constants.
pub fn soft_target_kl(
    student_logits: Tensor<2>,
    teacher_logits: Tensor<2>,
    temperature: f64,
) -> Tensor<1> {
    let [n, _] = student_logits.dims();
    let student = log_softmax(student_logits / temperature, 1);
    let teacher = log_softmax(teacher_logits.detach() / temperature, 1);
    let kl = (teacher.clone().exp() * (teacher - student)).sum() / n as f64;
    kl * (temperature * temperature)
}

/// DistilBERT's cosine loss: `1 - cos(a_i, b_i)` averaged over the rows of two `[n, d]`
/// matrices (`b`, the teacher's, taken as constant): it pulls the student's hidden states to
/// point where the teacher's do.
pub fn cosine_distance(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    let b = b.detach();
    let norm = |x: Tensor<2>| x.square().sum_dim(1).sqrt().clamp_min(1e-8);
    let cos = (a.clone() * b.clone()).sum_dim(1) / (norm(a) * norm(b));
    (cos.neg() + 1.0).mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, test_device};
    use burn::tensor::{Distribution, TensorData};

    /// Against the definition, by hand: KL(p || q) * T^2 with p and q the two rows' softmaxes
    /// at temperature T.
    #[test]
    fn the_soft_loss_is_the_kl_divergence_at_temperature_times_its_square() {
        let device = test_device();
        let student = [[1.0f64, 2.0, 0.0], [0.5, -0.5, 3.0]];
        let teacher = [[2.0f64, 0.5, -1.0], [0.0, 1.0, 2.5]];
        let tensor = |rows: [[f64; 3]; 2]| {
            Tensor::<2>::from_data(TensorData::from(rows.map(|r| r.map(|v| v as f32))), &device)
        };
        let softmax = |row: [f64; 3], t: f64| {
            let z: f64 = row.iter().map(|v| (v / t).exp()).sum();
            row.map(|v| (v / t).exp() / z)
        };
        for temperature in [1.0, 2.0, 4.0] {
            let mut expected = 0.0;
            for (s, t) in student.iter().zip(&teacher) {
                let (q, p) = (softmax(*s, temperature), softmax(*t, temperature));
                expected += (0..3).map(|c| p[c] * (p[c] / q[c]).ln()).sum::<f64>() / 2.0;
            }
            expected *= temperature * temperature;
            let got =
                soft_target_kl(tensor(student), tensor(teacher), temperature).into_scalar::<f64>();
            assert!(
                (got - expected).abs() < 1e-5,
                "T = {temperature}: {got} vs {expected}"
            );
        }
        // A student that agrees with its teacher has nothing to learn.
        let same = soft_target_kl(tensor(teacher), tensor(teacher), 2.0).into_scalar::<f64>();
        assert!(same.abs() < 1e-6, "{same}");
    }

    #[test]
    fn the_cosine_loss_is_one_minus_the_mean_cosine() {
        let device = test_device();
        let a = Tensor::<2>::from_data(TensorData::from([[1.0f32, 0.0], [1.0, 1.0]]), &device);
        let b = Tensor::<2>::from_data(TensorData::from([[0.0f32, 2.0], [3.0, 3.0]]), &device);
        // cos = 0 and 1: the mean of 1 - cos is 0.5.
        let got = cosine_distance(a, b).into_scalar::<f64>();
        assert!((got - 0.5).abs() < 1e-6, "{got}");
    }

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

    /// The fused kernel against Burn's log-softmax, plain and label-smoothed: the loss and the
    /// logits' gradient.
    #[test]
    fn the_fused_kernel_matches_burns_log_softmax_with_gradients() {
        let device = test_device().autodiff();
        let logits0 = Tensor::<2>::random([37, 300], Distribution::Normal(0.0, 3.0), &device);
        let targets = Tensor::<1, Int>::from_data(
            TensorData::new((0..37).map(|i| (i * 53 % 300) as i64).collect(), [37]),
            &device,
        );
        let before = crate::testing::to_vec(logits0.clone());
        // The logits held by the caller (the kernel must leave them be, and their gradient waits
        // for the backward), or the output of an op that nothing else holds (the recorded
        // forward overwrites them with their gradient).
        // The loss reaches the backward as it is (an upstream gradient of 1) or scaled.
        let cases = [
            (0.0, true, 1.7),
            (0.1, true, 1.0),
            (0.0, false, 1.0),
            (0.1, false, 1.7),
        ];
        for (epsilon, held, upstream) in cases {
            let run = |fused: bool| {
                let logits = logits0.clone().detach().require_grad();
                let input = if held {
                    logits.clone()
                } else {
                    logits.clone() * 2.0
                };
                let loss = if fused {
                    label_smoothed_cross_entropy(input, targets.clone(), epsilon)
                } else {
                    let log_probs = log_softmax(input, 1);
                    let nll = -log_probs
                        .clone()
                        .gather(1, targets.clone().reshape([37, 1]));
                    nll.mean() * (1.0 - epsilon) - log_probs.mean() * epsilon
                };
                let grads = (loss.clone() * upstream).backward();
                (loss.inner(), logits.grad(&grads).unwrap())
            };
            let (fused, composed) = (run(true), run(false));
            assert_close(fused.0, composed.0, 1e-5);
            assert_close(fused.1, composed.1, 1e-6);
        }
        assert_eq!(crate::testing::to_vec(logits0), before);
    }
}
