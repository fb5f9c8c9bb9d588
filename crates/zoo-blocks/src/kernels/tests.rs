//! Parity of every kernel with Burn's ops (values and gradients) and finite-difference checks.

use super::*;
use crate::testing::{assert_close, check_gradients, erf_reference, test_device, to_vec};
use burn::tensor::{Device, Distribution, TensorData};

#[test]
fn the_rational_erf_is_accurate_to_a_few_ulp() {
    let mut worst = 0.0f64;
    for i in -4000..=4000 {
        let x = i as f64 / 1000.0;
        worst = worst.max((erf_f32(x as f32) as f64 - erf_reference(x)).abs());
    }
    assert!(worst < 5e-7, "max error {worst}");
    // Saturates (to within an ulp of ±1) and stays finite far out.
    assert!((erf_f32(9.0) - 1.0).abs() < 2e-7 && (erf_f32(-1e30) + 1.0).abs() < 2e-7);
}

#[test]
fn gelu_matches_burns_gelu_values_and_gradients() {
    let device = test_device().autodiff();
    let x = Tensor::<2>::random([64, 300], Distribution::Normal(0.0, 3.0), &device).require_grad();
    let ours = gelu(x.clone());
    let theirs = burn::tensor::activation::gelu(x.clone());
    assert_close(ours.clone().inner(), theirs.clone().inner(), 2e-6);
    let weights = Tensor::<2>::random([64, 300], Distribution::Normal(0.0, 1.0), &device);
    let g_ours = x.grad(&(ours * weights.clone()).sum().backward()).unwrap();
    let g_theirs = x.grad(&(theirs * weights).sum().backward()).unwrap();
    assert_close(g_ours, g_theirs, 2e-5);
}

#[test]
fn gelu_handles_non_contiguous_inputs() {
    let device = test_device();
    let x = Tensor::<2>::random([5, 7], Distribution::Normal(0.0, 2.0), &device).transpose();
    assert_close(gelu(x.clone()), burn::tensor::activation::gelu(x), 2e-6);
    let exact = to_vec(gelu(Tensor::<1>::from_data(
        TensorData::from([0.0f32, 1.0]),
        &device,
    )));
    assert!((exact[1] - 0.841_344_7).abs() < 1e-6 && exact[0] == 0.0);
}

#[test]
fn gelu_overwrites_its_input_only_when_nothing_else_holds_it() {
    let device = test_device();
    let x = Tensor::<2>::random([64, 300], Distribution::Normal(0.0, 3.0), &device);
    let expected = burn::tensor::activation::gelu(x.clone());
    let before = to_vec(x.clone());
    // Shared with the caller: a new output, `x` unchanged.
    assert_close(gelu(x.clone()), expected.clone(), 2e-6);
    assert_eq!(to_vec(x.clone()), before);
    // The only handle: computed in place, to the same values.
    assert_close(gelu(x), expected, 2e-6);
}

#[test]
fn gelu_gradients_match_finite_differences() {
    let device = test_device().autodiff();
    let weights = Tensor::<2>::random([3, 5], Distribution::Normal(0.0, 1.0), &device);
    check_gradients([3, 5], |x| (gelu(x) * weights.clone()).sum(), &device);
}

#[test]
fn matmul_matches_burns_for_plain_and_transposed_operands() {
    let device = test_device().autodiff();
    let normal = Distribution::Normal(0.0, 1.0);
    // Inputs `[2, 3, 40]` against a `[40, 30]` weight, held as is or as a transposed view.
    let x0 = Tensor::<3>::random([2, 3, 40], normal, &device);
    let w0 = Tensor::<2>::random([40, 30], normal, &device);
    let probe = Tensor::<3>::random([2, 3, 30], normal, &device);
    for transposed in [false, true] {
        // Output, input gradient and weight gradient, each side on a graph of its own.
        let run = |ours: bool| {
            let x = x0.clone().detach().require_grad();
            let held = if transposed {
                w0.clone().transpose()
            } else {
                w0.clone()
            };
            let held = held.detach().require_grad();
            let weight = if transposed {
                held.clone().transpose()
            } else {
                held.clone()
            };
            let out = if ours {
                matmul_weight(x.clone(), weight)
            } else {
                x.clone().matmul(weight.unsqueeze())
            };
            let grads = (out.clone() * probe.clone()).sum().backward();
            (
                out.inner(),
                x.grad(&grads).unwrap(),
                held.grad(&grads).unwrap(),
            )
        };
        let (ours, theirs) = (run(true), run(false));
        assert_close(ours.0, theirs.0, 1e-5);
        assert_close(ours.1, theirs.1, 1e-5);
        assert_close(ours.2, theirs.2, 1e-5);
    }
}

#[test]
fn linear_with_its_bias_in_the_product_matches_burns_linear_with_gradients() {
    use burn::nn::LinearConfig;
    let device = test_device().autodiff();
    let normal = Distribution::Normal(0.0, 1.0);
    // A few rows; more rows than one parallel task fills and sums (16); decoding's single row
    // against a weight large enough that the threads split its columns; and no bias at all.
    // The second and third have outputs wide enough that the bias's gradient comes out of the
    // weight's product (a column of ones beside the input), the first sums its columns.
    for (rows, d_in, d_out, bias) in [
        (6, 40, 30, true),
        (150, 24, 70, true),
        (1, 512, 2100, true),
        (6, 40, 30, false),
    ] {
        // A bias far from zero, so that a bias left out or added twice shows.
        let layer = burn::nn::Linear {
            bias: bias.then(|| {
                let values = Tensor::<1>::random([d_out], Distribution::Normal(3.0, 1.0), &device);
                burn::module::Param::from_tensor(values)
            }),
            ..LinearConfig::new(d_in, d_out).init(&device)
        };
        let x0 = Tensor::<3>::random([1, rows, d_in], normal, &device);
        let probe = Tensor::<3>::random([1, rows, d_out], normal, &device);
        let run = |ours: bool| {
            let x = x0.clone().detach().require_grad();
            let out = if ours {
                linear(&layer, x.clone())
            } else {
                layer.forward(x.clone())
            };
            let grads = (out.clone() * probe.clone()).sum().backward();
            let bias = layer.bias.as_ref().map(|b| b.val().grad(&grads).unwrap());
            (
                out.inner(),
                x.grad(&grads).unwrap(),
                layer.weight.val().grad(&grads).unwrap(),
                bias,
            )
        };
        let (ours, theirs) = (run(true), run(false));
        assert_close(ours.0, theirs.0, 1e-4);
        assert_close(ours.1, theirs.1, 1e-4);
        assert_close(ours.2, theirs.2, 1e-4);
        assert_eq!(ours.3.is_some(), bias);
        if let (Some(ours), Some(theirs)) = (ours.3, theirs.3) {
            assert_close(ours, theirs, 1e-4);
        }
    }
}

#[test]
fn linear_gradients_match_finite_differences() {
    use burn::nn::LinearConfig;
    let device = test_device().autodiff();
    let layer = LinearConfig::new(4, 3).init(&device);
    let probe = Tensor::<2>::random([5, 3], Distribution::Normal(0.0, 1.0), &device);
    check_gradients(
        [5, 4],
        |x| (linear(&layer, x) * probe.clone()).sum(),
        &device,
    );
    // The bias's gradient, through a layer whose bias is the variable.
    let with = |bias: Tensor<1>| burn::nn::Linear {
        weight: layer.weight.clone(),
        bias: Some(burn::module::Param::from_tensor(bias)),
    };
    let x = Tensor::<2>::random([5, 4], Distribution::Normal(0.0, 1.0), &device);
    check_gradients(
        [3],
        |b| (linear(&with(b), x.clone()) * probe.clone()).sum(),
        &device,
    );
}

#[test]
fn a_few_rows_against_large_weights_match_burns_product() {
    // Decoding's shape: one row against weights past 4 MB, whose output columns the threads
    // split in blocks (2,100 columns: the last block is partial), the weight held as is or
    // transposed (a tied head); 2 to 8 rows (batched decoding, a draft's proposals), split the
    // same way; and 9 rows, which gemm shares out itself.
    let device = test_device();
    let normal = Distribution::Normal(0.0, 1.0);
    for (inputs, rows) in [(512, 1), (512, 2), (515, 3), (512, 5), (515, 8), (512, 9)] {
        let w0 = Tensor::<2>::random([inputs, 2100], normal, &device);
        let x = Tensor::<3>::random([1, rows, inputs], normal, &device);
        for transposed in [false, true] {
            let weight = if transposed {
                w0.clone().transpose().into_data()
            } else {
                w0.clone().into_data()
            };
            let weight = Tensor::<2>::from_data(weight, &device);
            let weight = if transposed {
                weight.transpose()
            } else {
                weight
            };
            let ours = matmul_weight(x.clone(), weight.clone());
            let theirs = x.clone().matmul(weight.unsqueeze());
            assert_close(ours, theirs, 1e-4);
        }
    }
}

#[test]
fn matmul_gradients_match_finite_differences() {
    let device = test_device().autodiff();
    let weight = Tensor::<2>::random([4, 3], Distribution::Normal(0.0, 1.0), &device);
    let probe = Tensor::<2>::random([5, 3], Distribution::Normal(0.0, 1.0), &device);
    check_gradients(
        [5, 4],
        |x| (matmul_weight(x, weight.clone()) * probe.clone()).sum(),
        &device,
    );
    let x = Tensor::<2>::random([5, 4], Distribution::Normal(0.0, 1.0), &device);
    check_gradients(
        [3, 4],
        |w| (matmul_weight(x.clone(), w.transpose()) * probe.clone()).sum(),
        &device,
    );
}

#[test]
fn layer_norm_matches_burns_values_and_gradients() {
    let device = test_device().autodiff();
    // More rows than one parallel task takes, so the dgamma shares are summed.
    let x0 = Tensor::<3>::random([3, 50, 24], Distribution::Normal(2.0, 3.0), &device);
    let gamma0 = Tensor::<1>::random([24], Distribution::Normal(1.0, 0.5), &device);
    let beta0 = Tensor::<1>::random([24], Distribution::Normal(0.0, 0.5), &device);
    let probe = Tensor::<3>::random([3, 50, 24], Distribution::Normal(0.0, 1.0), &device);
    for with_bias in [true, false] {
        // Output and the gradients of input, gain and bias, each side on its own graph.
        let run = |ours: bool| {
            let x = x0.clone().detach().require_grad();
            let gamma = gamma0.clone().detach().require_grad();
            let beta = beta0.clone().detach().require_grad();
            let bias = with_bias.then(|| beta.clone());
            let out = if ours {
                layer_norm(x.clone(), gamma.clone(), bias, 1e-5)
            } else {
                burn::tensor::module::layer_norm(x.clone(), gamma.clone(), bias, 1e-5)
            };
            let grads = (out.clone() * probe.clone()).sum().backward();
            let beta_grad = beta.grad(&grads).map(to_vec);
            (
                out.inner(),
                x.grad(&grads).unwrap(),
                gamma.grad(&grads).unwrap(),
                beta_grad,
            )
        };
        let (ours, theirs) = (run(true), run(false));
        assert_close(ours.0, theirs.0, 1e-5);
        assert_close(ours.1, theirs.1, 1e-4);
        assert_close(ours.2, theirs.2, 1e-4);
        assert_eq!(ours.3.is_some(), with_bias);
        if let (Some(ours), Some(theirs)) = (ours.3, theirs.3) {
            assert!(ours.iter().zip(&theirs).all(|(a, b)| (a - b).abs() < 1e-4));
        }
    }
}

#[test]
fn adamw_kernel_matches_the_formula() {
    let device = test_device();
    let normal = Distribution::Normal(0.0, 1.0);
    // More elements than one parallel chunk, so chunk offsets are exercised.
    let n = 3 * (1 << 14) + 5;
    let [p, g, m] = [0; 3].map(|_| Tensor::<1>::random([n], normal, &device));
    let v = Tensor::<1>::random([n], Distribution::Uniform(0.0, 2.0), &device);
    let step = AdamWStep {
        lr: 0.01,
        beta_1: 0.9,
        beta_2: 0.95,
        epsilon: 1e-8,
        weight_decay: 0.1,
        time: 3,
    };
    let (p2, m2, v2) = adamw(p.clone(), g.clone(), m.clone(), v.clone(), step);
    let m_ref = m * 0.9 + g.clone() * 0.1;
    let v_ref = v * 0.95 + g.square() * 0.05;
    let (bias_1, bias_2) = (1.0 - 0.9f32.powi(3), 1.0 - 0.95f32.powi(3));
    let delta = (m_ref.clone() / bias_1) / ((v_ref.clone() / bias_2).sqrt() + 1e-8);
    let p_ref = p * (1.0 - 0.01 * 0.1) - delta * 0.01;
    assert_close(p2, p_ref, 1e-6);
    assert_close(m2, m_ref, 1e-6);
    assert_close(v2, v_ref, 1e-6);
}

#[test]
fn the_polynomial_exp_is_accurate_to_a_few_ulp() {
    let mut worst = 0.0f64;
    for i in -870_000..=880_000 {
        let x = i as f32 / 10_000.0;
        let exact = (x as f64).exp();
        worst = worst.max(((exp_f32(x) as f64) - exact).abs() / exact);
    }
    assert!(worst < 3e-7, "max relative error {worst}");
    assert_eq!(exp_f32(0.0), 1.0);
    assert!(exp_f32(-1e4) < 1.2e-38 && exp_f32(-1e4) >= 0.0 && exp_f32(1e4).is_finite());
    assert!(exp_f32(f32::NAN).is_nan());
}

#[test]
fn dropout_keeps_one_minus_p_scaled_and_its_gradient_takes_the_same_mask() {
    let device = test_device().autodiff();
    device.seed(7);
    let layer = burn::nn::DropoutConfig::new(0.3).init();
    // Spread over several of the kernel's chunks, not contiguous.
    let x = Tensor::<2>::random([300, 200], Distribution::Normal(0.0, 1.0), &device)
        .transpose()
        .require_grad();
    let out = dropout(&layer, x.clone());
    let (xs, outs) = (to_vec(x.clone().inner()), to_vec(out.clone().inner()));
    let kept = outs.iter().filter(|&&o| o != 0.0).count() as f64 / outs.len() as f64;
    assert!((kept - 0.7).abs() < 0.01, "kept {kept}");
    for (&v, &o) in xs.iter().zip(&outs) {
        assert!(
            o == 0.0 || (o - v / 0.7).abs() <= 1e-6 * (1.0 + v.abs()),
            "{v} -> {o}"
        );
    }
    // d(sum(dropout(x) w))/dx = mask w / (1 - p): zero exactly where the output is.
    let weights = Tensor::<2>::random([200, 300], Distribution::Normal(0.0, 1.0), &device);
    let grad = to_vec(x.grad(&(out * weights.clone()).sum().backward()).unwrap());
    let ws = to_vec(weights.inner());
    for ((&g, &o), &w) in grad.iter().zip(&outs).zip(&ws) {
        let expected = if o == 0.0 { 0.0 } else { w / 0.7 };
        assert!(
            (g - expected).abs() <= 1e-5 * (1.0 + expected.abs()),
            "{g} vs {expected}"
        );
    }
    // A mask is a function of the seed alone: the same seed draws it again, another does not.
    let plain = x.inner();
    let first = to_vec(dropout_with_seed(plain.clone(), 0.3, 11));
    assert_eq!(to_vec(dropout_with_seed(plain.clone(), 0.3, 11)), first);
    assert_ne!(to_vec(dropout_with_seed(plain, 0.3, 12)), first);
}

#[test]
fn dropout_is_off_outside_training() {
    let device = test_device();
    let layer = burn::nn::DropoutConfig::new(0.5).init();
    let x = Tensor::<2>::random([8, 8], Distribution::Normal(0.0, 1.0), &device);
    // Not an autodiff device: inference.
    assert_eq!(to_vec(dropout(&layer, x.clone())), to_vec(x.clone()));
    // A rate of 0 draws nothing, on the training device too.
    let off = burn::nn::DropoutConfig::new(0.0).init();
    let y = Tensor::<2>::from_data(x.to_data(), &device.autodiff());
    assert_eq!(to_vec(dropout(&off, y).inner()), to_vec(x));
}

/// Burn's composed attention, the reference for the fused kernels: `q` `[batch, heads, len,
/// dim]` over `k`, `v` `[batch, heads, k_len, dim]`, masked as `mask` says, the probabilities
/// dropped out by our dropout kernel seeded as `weights` says (the same mask as the fused
/// kernels draw).
fn composed_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &AttentionMask,
    weights: AttentionWeights,
) -> Tensor<4> {
    use crate::attention::causal_mask;
    use burn::tensor::activation::softmax;
    let [batch, heads, len, _] = q.dims();
    let k_len = k.dims()[2];
    let device = q.device();
    let mut scores = q.matmul(k.swap_dims(2, 3)) * weights.scale;
    let full = [batch, heads, len, k_len];
    if mask.causal {
        let hidden = causal_mask(len, k_len, &device).reshape([1, 1, len, k_len]);
        scores = scores.mask_fill(hidden.expand(full), f32::NEG_INFINITY);
    }
    if let Some(padding) = &mask.padding {
        let hidden = padding.clone().reshape([batch, 1, 1, k_len]).expand(full);
        scores = scores.mask_fill(hidden, f32::NEG_INFINITY);
    }
    let mut probs = softmax(scores, 3);
    if weights.dropout > 0.0 {
        probs = dropout_with_seed(probs, weights.dropout, weights.seed);
    }
    probs.matmul(v)
}

/// `[batch, k_len]` padding that hides a different scatter of keys in each batch row (never
/// key 0, which a causal mask leaves as the first query's only key).
fn scattered_padding(batch: usize, k_len: usize, device: &Device) -> Tensor<2, Bool> {
    let hidden: Vec<bool> = (0..batch * k_len)
        .map(|i| {
            let (b, j) = (i / k_len, i % k_len);
            j > 0 && (j + b) % 3 == 2
        })
        .collect();
    Tensor::from_data(TensorData::new(hidden, [batch, k_len]), device)
}

/// The masks the fused kernels serve: causal or not, with padding or without.
fn masks(batch: usize, k_len: usize, device: &Device) -> Vec<AttentionMask> {
    let padding = scattered_padding(batch, k_len, device);
    [true, false]
        .into_iter()
        .flat_map(|causal| {
            [None, Some(padding.clone())]
                .into_iter()
                .map(move |padding| AttentionMask { causal, padding })
        })
        .collect()
}

/// Self-attention through the fused kernels (heads split, and packed with key/value heads
/// shared) against Burn's composed ops, under every mask, without dropout and with our dropout
/// kernel on the probabilities seeded alike (the same mask): the same values and gradients.
#[test]
fn fused_attention_matches_composed_ops_under_every_mask_with_and_without_dropout() {
    let device = test_device().autodiff();
    let normal = Distribution::Normal(0.0, 1.0);
    // [batch, len, query heads, key/value heads, head dim]. The kernel works in blocks of 64
    // query rows: 150 makes two full blocks and a partial one.
    let shapes = [
        [2, 9, 4, 2, 6],
        [1, 5, 3, 3, 4],
        [2, 1, 2, 1, 2],
        [2, 7, 3, 3, 12],
        [1, 150, 4, 2, 8],
    ];
    for [batch, len, heads, kv_heads, dim] in shapes {
        let width = (heads + 2 * kv_heads) * dim;
        let qkv0 = Tensor::<3>::random([batch, len, width], normal, &device);
        let probe = Tensor::<3>::random([batch, len, heads * dim], normal, &device);
        // Each key/value head serves `heads / kv_heads` query heads in turn.
        let split = |qkv: &Tensor<3>, start: usize, count: usize, repeat: bool| {
            let x = qkv
                .clone()
                .narrow(2, start * dim, count * dim)
                .reshape([batch, len, count, dim])
                .swap_dims(1, 2);
            if !repeat {
                return x;
            }
            x.unsqueeze_dim::<5>(2)
                .repeat_dim(2, heads / count)
                .reshape([batch, heads, len, dim])
        };
        let merge = |y: Tensor<4>| y.swap_dims(1, 2).reshape([batch, len, heads * dim]);
        for mask in masks(batch, len, &device) {
            // The output and the packed projection's gradient, each way on a graph of its own.
            let run = |way: usize, weights: AttentionWeights| {
                let qkv = qkv0.clone().detach().require_grad();
                // The split kernel shares key/value heads itself; the composed ops need them
                // repeated.
                let repeat = way == 2;
                let (q, k, v) = (
                    split(&qkv, 0, heads, repeat),
                    split(&qkv, heads, kv_heads, repeat),
                    split(&qkv, heads + kv_heads, kv_heads, repeat),
                );
                let out = match way {
                    0 => fused_attention_packed(qkv.clone(), heads, kv_heads, &mask, weights),
                    1 => merge(fused_attention(q, k, v, &mask, weights)),
                    _ => merge(composed_attention(q, k, v, &mask, weights)),
                };
                let grads = (out.clone() * probe.clone()).sum().backward();
                (out.inner(), qkv.grad(&grads).unwrap())
            };
            let mut outputs = Vec::new();
            for dropout in [0.0, 0.3] {
                let weights = AttentionWeights {
                    scale: 0.37,
                    causal: mask.causal,
                    dropout,
                    seed: 11,
                };
                let composed = run(2, weights);
                for way in [0, 1] {
                    let fused = run(way, weights);
                    assert_close(fused.0, composed.0.clone(), 1e-5);
                    assert_close(fused.1, composed.1.clone(), 1e-4);
                }
                outputs.push(composed.0);
            }
            // The dropout acted (a single position has too few weights to be sure of a drop).
            if len > 1 {
                let moved = (outputs[0].clone() - outputs[1].clone()).abs().max();
                let moved = moved.into_scalar::<f32>();
                assert!(moved > 1e-3, "{len} positions: dropout changed nothing");
            }
        }
    }
}

/// Cross-attention's shape (queries of one length over keys of another) and a decoder's cached
/// step (few queries at the end of a longer causal sequence), through the split kernel against
/// the composed ops, under every mask: the same values and gradients of `q`, `k` and `v`.
#[test]
fn fused_attention_over_keys_of_another_length_matches_composed_ops() {
    let device = test_device().autodiff();
    let normal = Distribution::Normal(0.0, 1.0);
    // [batch, query length, key length, query heads, key/value heads, head dim]
    for [batch, len, k_len, heads, kv_heads, dim] in [
        [2, 5, 9, 4, 2, 6],
        [2, 1, 7, 2, 2, 4],
        [1, 70, 3, 2, 1, 8],
        [1, 3, 130, 2, 2, 4],
    ] {
        let q0 = Tensor::<4>::random([batch, heads, len, dim], normal, &device);
        let kv0 = Tensor::<4>::random([batch, 2 * kv_heads, k_len, dim], normal, &device);
        let probe = Tensor::<4>::random([batch, heads, len, dim], normal, &device);
        // A causal mask places the queries at the end of the keys' sequence: no longer than it.
        let masks = masks(batch, k_len, &device);
        for mask in masks
            .into_iter()
            .filter(|mask| !mask.causal || len <= k_len)
        {
            let run = |fused: bool, weights: AttentionWeights| {
                let q = q0.clone().detach().require_grad();
                let kv = kv0.clone().detach().require_grad();
                let (k, v) = (
                    kv.clone().narrow(1, 0, kv_heads),
                    kv.clone().narrow(1, kv_heads, kv_heads),
                );
                let out = if fused {
                    fused_attention(q.clone(), k, v, &mask, weights)
                } else {
                    let repeat = |x: Tensor<4>| {
                        x.unsqueeze_dim::<5>(2)
                            .repeat_dim(2, heads / kv_heads)
                            .reshape([batch, heads, k_len, dim])
                    };
                    composed_attention(q.clone(), repeat(k), repeat(v), &mask, weights)
                };
                let grads = (out.clone() * probe.clone()).sum().backward();
                (
                    out.inner(),
                    q.grad(&grads).unwrap(),
                    kv.grad(&grads).unwrap(),
                )
            };
            for dropout in [0.0, 0.3] {
                let weights = AttentionWeights {
                    scale: 0.5,
                    causal: mask.causal,
                    dropout,
                    seed: 5,
                };
                let (ours, theirs) = (run(true, weights), run(false, weights));
                assert_close(ours.0, theirs.0, 1e-5);
                assert_close(ours.1, theirs.1, 1e-4);
                assert_close(ours.2, theirs.2, 1e-4);
            }
        }
    }
}

/// A query that sees no key (every key padded) attends to nothing: its output is 0, not the
/// NaN of a softmax over nothing, and the other batch rows are untouched.
#[test]
fn a_query_with_every_key_padded_attends_to_nothing() {
    let device = test_device();
    let normal = Distribution::Normal(0.0, 1.0);
    let (q, k, v) = (
        Tensor::<4>::random([2, 2, 3, 4], normal, &device),
        Tensor::<4>::random([2, 2, 5, 4], normal, &device),
        Tensor::<4>::random([2, 2, 5, 4], normal, &device),
    );
    let padding = Tensor::<2, Bool>::from_data(
        TensorData::new([[true; 5], [false; 5]].concat(), [2, 5]),
        &device,
    );
    let no_dropout = burn::nn::DropoutConfig::new(0.0).init();
    let mask = AttentionMask {
        causal: false,
        padding: Some(padding),
    };
    let out = attention(q.clone(), k.clone(), v.clone(), &mask, 0.5, &no_dropout).unwrap();
    let hidden = to_vec(out.clone().narrow(0, 0, 1));
    assert!(hidden.iter().all(|&x| x == 0.0), "{hidden:?}");
    let open = AttentionMask {
        causal: false,
        padding: None,
    };
    let weights = AttentionWeights {
        scale: 0.5,
        causal: false,
        dropout: 0.0,
        seed: 0,
    };
    let reference = composed_attention(q, k, v, &open, weights).narrow(0, 1, 1);
    assert_close(out.narrow(0, 1, 1), reference, 1e-5);
}

#[test]
fn embedding_matches_burns_embedding_with_gradients_for_repeated_ids() {
    let device = test_device().autodiff();
    let weight0 = Tensor::<2>::random([11, 7], Distribution::Normal(0.0, 1.0), &device);
    // Id 3 twice in one row, id 1 in both rows: their rows' gradients must add up. Rows 2, 4-9
    // are never looked up: their gradient is zero.
    let ids = Tensor::<2, Int>::from_data(TensorData::from([[1i64, 3, 3], [0, 10, 1]]), &device);
    let probe = Tensor::<3>::random([2, 3, 7], Distribution::Normal(0.0, 1.0), &device);
    let run = |ours: bool| {
        let weight = weight0.clone().detach().require_grad();
        let out = if ours {
            embedding(weight.clone(), ids.clone())
        } else {
            burn::tensor::module::embedding(weight.clone(), ids.clone())
        };
        let grads = (out.clone() * probe.clone()).sum().backward();
        (out.inner(), weight.grad(&grads).unwrap())
    };
    let (ours, theirs) = (run(true), run(false));
    assert_close(ours.0, theirs.0, 0.0);
    assert_close(ours.1, theirs.1, 1e-6);
    // Without autodiff: the plain lookup.
    let plain = weight0.clone().inner();
    assert_close(
        embedding(plain.clone(), ids.clone().inner()),
        burn::tensor::module::embedding(plain, ids.inner()),
        0.0,
    );
}

#[cfg(feature = "flex")]
#[test]
fn the_sum_of_squares_matches_burns_and_does_not_change_with_the_threads() {
    let device = test_device();
    // Several parallel chunks and a partial last one.
    let x = Tensor::<2>::random([37, 1500], Distribution::Normal(0.0, 2.0), &device);
    let expected: f64 = to_vec(x.clone())
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum();
    let got = sum_of_squares(x.clone()).into_scalar::<f64>();
    assert!(
        (got - expected).abs() < 1e-5 * expected,
        "{got} vs {expected}"
    );
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let alone = one_thread.install(|| sum_of_squares(x.clone()).into_scalar::<f32>());
    assert_eq!(
        alone.to_bits(),
        sum_of_squares(x).into_scalar::<f32>().to_bits()
    );
}
