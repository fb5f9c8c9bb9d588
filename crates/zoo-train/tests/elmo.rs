//! The ELMo task model learns from its features and leaves its biLM alone: 400 AdamW
//! steps on a task its features make easy (does token 7 occur in the text?) reach near-perfect
//! accuracy, for a classifier on every biLM layer and on the embeddings alone, and every biLM
//! weight comes out bit for bit what it was.

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zoo_blocks::loss::cross_entropy;
use zoo_rnn::{ElmoConfig, ElmoModel, Features};
use zoo_train::runtime::optim::AdamW;

const VOCAB: usize = 30;

/// A batch of 32 texts of 3 to 9 tokens, padded with 0, and their labels: 1 when token 7
/// occurs.
fn batch(rng: &mut StdRng, device: &Device) -> (Tensor<2, Int>, Tensor<2, Bool>, Tensor<1, Int>) {
    let (rows, len) = (32, 9);
    let (mut ids, mut padding, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rows {
        let n = rng.random_range(3..=len);
        let mut text: Vec<i64> = (0..n).map(|_| rng.random_range(1..VOCAB as i64)).collect();
        if rng.random_bool(0.5) {
            text[rng.random_range(0..n)] = 7;
        }
        labels.push(text.contains(&7) as i64);
        for t in 0..len {
            ids.push(text.get(t).copied().unwrap_or(0));
            padding.push(t >= n);
        }
    }
    (
        Tensor::from_data(TensorData::new(ids, [rows, len]), device),
        Tensor::from_data(TensorData::new(padding, [rows, len]), device),
        Tensor::from_data(TensorData::new(labels, [rows]), device),
    )
}

fn bilm_weights(model: &ElmoModel) -> Vec<TensorData> {
    let bilm = &model.bilm;
    let mut all = vec![bilm.embedding.val().into_data()];
    all.extend(bilm.decoder.as_ref().map(|d| d.val().into_data()));
    for layer in bilm.layers.iter().chain(&bilm.backward_layers) {
        all.push(layer.recurrent.val().into_data());
        all.push(layer.input.weight.val().into_data());
    }
    all
}

#[test]
fn the_task_model_learns_and_the_bilm_stays_as_it_was() {
    for features in [Features::Elmo, Features::Embeddings] {
        let device = Device::flex().autodiff();
        device.seed(1);
        let config = ElmoConfig {
            vocab_size: VOCAB,
            n_layer: 2,
            d_hidden: 16,
            d_task: 16,
            dropout: 0.0,
            features,
            ..ElmoConfig::default()
        };
        let mut model = config.init(2, &device).unwrap();
        let before = bilm_weights(&model);
        let mut optimizer: ModuleOptimizer = AdamW {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.1,
        }
        .into();
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..400 {
            let (ids, padding, labels) = batch(&mut rng, &device);
            let loss = cross_entropy(model.class_logits(ids, padding), labels);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(3e-3, model, grads);
        }
        let (ids, padding, labels) = batch(&mut rng, &device);
        let predicted = model
            .class_logits(ids, padding)
            .argmax(1)
            .flatten::<1>(0, 1);
        let right = predicted.equal(labels).int().sum().into_scalar::<i64>();
        assert!(right >= 30, "{features:?}: {right} of 32 right");
        assert_eq!(bilm_weights(&model), before, "{features:?}");
    }
}
