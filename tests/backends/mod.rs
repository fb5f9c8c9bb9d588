//! The same models on every backend: one small model of each family, its weights drawn on the
//! host from a seeded generator (so they are the same whatever the device), run on fixed inputs
//! with padding where the family reads it. `tests/backend_reference.rs` checks flex against the
//! committed outputs (and writes them anew with `ZOO_WRITE_BACKEND_REFERENCE=1`);
//! `tests/wgpu.rs` checks the wgpu backend against the same file.

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use zoo_bert::BertConfig;
use zoo_blocks::{CellKind, PositionKind};
use zoo_gpt::GptConfig;
use zoo_rnn::RnnConfig;
use zoo_seq2seq::{RnnAttentionConfig, TransformerConfig, source_batch};
use zoo_train::runtime::optim::Sgd;
use zoo_train::runtime::step::{clip_global_norm, gradients};

/// One model's output on its inputs.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Output {
    /// The family and variant.
    pub model: String,
    /// The output's shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub values: Vec<f32>,
}

/// The committed outputs of every model, as flex computes them.
pub fn reference_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/backends/outputs.json")
}

/// Replaces every float parameter by values drawn on the host, in the module's own order.
struct HostWeights(StdRng);

impl ModuleMapper for HostWeights {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let rng = &mut self.0;
        param.map(|tensor| {
            let (shape, device) = (tensor.shape(), tensor.device());
            let values: Vec<f32> = (0..shape.num_elements())
                .map(|_| rng.random_range(-0.3f32..0.3))
                .collect();
            Tensor::from_data(TensorData::new(values, shape), &device)
        })
    }
}

/// Marks every float parameter for gradients (host weights are plain tensors).
struct Tracked;

impl ModuleMapper for Tracked {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|tensor| tensor.require_grad())
    }
}

fn with_host_weights<M: Module>(module: M, seed: u64) -> M {
    module.map(&mut HostWeights(StdRng::seed_from_u64(seed)))
}

/// `[rows, len]` ids below `vocab`, the same on every run.
fn ids(rows: usize, len: usize, vocab: usize, device: &Device) -> Tensor<2, Int> {
    let values: Vec<i64> = (0..rows * len)
        .map(|i| ((i * 7 + 3) % vocab) as i64)
        .collect();
    Tensor::from_data(TensorData::new(values, [rows, len]), device)
}

fn output<const D: usize>(model: &str, tensor: Tensor<D>) -> Output {
    Output {
        model: model.into(),
        shape: tensor.dims().to_vec(),
        values: tensor.into_data().convert::<f32>().try_to_vec().unwrap(),
    }
}

const VOCAB: usize = 29;

/// Every family's outputs on `device`.
pub fn outputs(device: &Device) -> Vec<Output> {
    let mut out = Vec::new();
    for (name, position) in [
        ("gpt learned", PositionKind::Learned),
        ("gpt rope", PositionKind::Rope),
        ("gpt alibi", PositionKind::Alibi),
    ] {
        let config = GptConfig {
            vocab_size: VOCAB,
            block_size: 16,
            n_layer: 2,
            n_head: 4,
            n_kv_head: 2,
            n_embd: 32,
            position,
            ..GptConfig::default()
        };
        let gpt = with_host_weights(config.init(device).unwrap(), 1);
        out.push(output(name, gpt.forward(ids(2, 11, VOCAB, device), None)));
    }
    for (name, cell) in [("lstm", CellKind::Lstm), ("gru", CellKind::Gru)] {
        let config = RnnConfig {
            vocab_size: VOCAB,
            cell,
            n_layer: 2,
            d_embed: 24,
            d_hidden: 24,
            ..RnnConfig::default()
        };
        let rnn = with_host_weights(config.init(device).unwrap(), 2);
        out.push(output(name, rnn.forward(ids(2, 9, VOCAB, device), None).0));
    }
    // The second row is padded after 5 of its 8 tokens.
    let lengths = [8usize, 5];
    let padded: Vec<Vec<u32>> = lengths
        .iter()
        .enumerate()
        .map(|(row, &len)| {
            (0..len)
                .map(|i| ((row * 5 + i * 3 + 4) % VOCAB) as u32)
                .collect()
        })
        .collect();
    let (tokens, padding) = source_batch(&padded, 0, device);
    let bert = BertConfig {
        vocab_size: VOCAB,
        max_len: 16,
        n_layer: 2,
        n_head: 4,
        d_model: 32,
        d_ff: 48,
        ..BertConfig::default()
    };
    let bert = with_host_weights(bert.init_encoder(device).unwrap(), 3);
    let segments = tokens.zeros_like();
    let hidden = bert.forward(tokens.clone(), segments.clone(), Some(padding.clone()));
    out.push(output("bert", hidden));
    // The classifier's path: the last layer at [CLS] alone (flex's fused kernel; elsewhere the
    // full layer, narrowed).
    let pooled = bert.pooled(tokens.clone(), segments, Some(padding.clone()));
    out.push(output("bert pooled", pooled));
    let transformer = TransformerConfig {
        src_vocab_size: VOCAB,
        tgt_vocab_size: VOCAB,
        ..zoo_seq2seq::transformer_preset("transformer-tiny").unwrap()
    };
    let transformer = with_host_weights(transformer.init(device).unwrap(), 4);
    let target_in = ids(2, 6, VOCAB, device);
    let logits = transformer.forward(tokens.clone(), padding.clone(), target_in.clone());
    out.push(output("transformer", logits));
    let rnn_attention = RnnAttentionConfig {
        src_vocab_size: VOCAB,
        tgt_vocab_size: VOCAB,
        ..zoo_seq2seq::rnn_attention_preset("rnn-attention-tiny").unwrap()
    };
    let rnn_attention = with_host_weights(rnn_attention.init(device).unwrap(), 5);
    out.push(output(
        "rnn-attention",
        rnn_attention.forward(tokens, padding, target_in),
    ));
    out.push(output(
        "lstm after a clipped sgd step",
        after_sgd_step(device),
    ));
    out
}

/// An LSTM LM's logits after one SGD step (weight decay 0.01, learning rate 1) on gradients
/// clipped to norm 0.1: the clipping's norm and scale and the update, which flex runs through
/// the zoo's own kernels and other backends through Burn's ops.
fn after_sgd_step(device: &Device) -> Tensor<3> {
    let train_device = device.clone().autodiff();
    let config = RnnConfig {
        vocab_size: VOCAB,
        cell: CellKind::Lstm,
        n_layer: 1,
        d_embed: 16,
        d_hidden: 16,
        dropout: 0.0,
        ..RnnConfig::default()
    };
    let rnn = with_host_weights(config.init(&train_device).unwrap(), 6).map(&mut Tracked);
    let (inputs, targets) = (
        ids(2, 7, VOCAB, &train_device),
        ids(2, 7, 23, &train_device),
    );
    let (loss, _) = rnn.loss(inputs.clone(), targets, None);
    let mut grads = gradients(&rnn, &loss, 1.0);
    clip_global_norm(&rnn, &mut grads, 0.1);
    let mut optimizer: ModuleOptimizer = Sgd::new(0.01, 0.0).into();
    let rnn = optimizer.step(1.0, rnn, grads);
    rnn.forward(inputs, None).0
}

/// The largest absolute difference between `ours` and the reference, per model, and the
/// reference's largest magnitude (what the difference is relative to).
pub fn compare(ours: &[Output], reference: &[Output]) -> Vec<(String, f32, f32)> {
    assert_eq!(
        ours.len(),
        reference.len(),
        "the models differ from the reference's"
    );
    ours.iter()
        .zip(reference)
        .map(|(a, b)| {
            assert_eq!((&a.model, &a.shape), (&b.model, &b.shape));
            let largest = a
                .values
                .iter()
                .zip(&b.values)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            let scale = b.values.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
            (a.model.clone(), largest, scale)
        })
        .collect()
}

/// The committed reference.
pub fn reference() -> Vec<Output> {
    let text = std::fs::read_to_string(reference_path()).expect("the reference outputs exist");
    serde_json::from_str(&text).expect("the reference outputs parse")
}
