//! LoRA on every family's model, through the zoo's own kernels: after a few optimiser steps
//! the pretrained weights are bit for bit what they were and only the adapter factors moved;
//! the adapters change what the model computes (so no fused kernel reads past them); and the
//! merged model (`materialize`, what a loaded LoRA run is) computes what the adapted one does.

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use std::collections::BTreeMap;
use zoo_train::recipe::FinetuneSpec;
use zoo_train::runtime::lora::{adapted, attach, parameters};
use zoo_train::runtime::optim::AdamW;

const VOCAB: usize = 40;

/// Every parameter's values by path.
fn values<M: Module>(module: &M) -> BTreeMap<String, Vec<f32>> {
    #[derive(Default)]
    struct Read {
        path: Vec<String>,
        out: BTreeMap<String, Vec<f32>>,
    }
    impl burn::module::ModuleVisitor for Read {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.into());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let data = param.val().into_data().convert::<f32>();
            self.out
                .insert(self.path.join("."), data.try_to_vec::<f32>().unwrap());
        }
    }
    let mut read = Read::default();
    module.visit(&mut read);
    read.out
}

fn max_difference(a: Tensor<3>, b: Tensor<3>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// `t` on the autodiff device, or on the plain one (`plain`) for a model made `valid`.
fn at<const D: usize, K: burn::tensor::kind::Autodiff>(
    t: &Tensor<D, K>,
    plain: bool,
) -> Tensor<D, K>
where
    Tensor<D, K>: Clone,
{
    if plain { t.clone().inner() } else { t.clone() }
}

/// Trains `model` with LoRA of rank 4 on `targets` for three AdamW steps on the mean square
/// of `forward`'s output, then checks the properties above with `forward` (`true`: on the
/// plain device).
fn check<M: Module + Clone>(
    family: &str,
    targets: &[&str],
    model: M,
    forward: impl Fn(&M, bool) -> Tensor<3>,
) {
    let spec = FinetuneSpec {
        lora_rank: Some(4),
        lora_alpha: Some(8.0),
        lora_targets: Vec::new(),
    };
    let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    let before = values(&model);
    let base_output = forward(&model.clone().valid(), true);
    let mut model = attach(model, &spec, &targets).unwrap();
    let report = adapted(&model);
    assert!(report.matrices >= 2, "{family}: {report}");
    // Only the factors train.
    for p in parameters(&model) {
        assert_eq!(
            p.trainable,
            p.path.contains(".lora."),
            "{family}: {}",
            p.path
        );
    }
    let mut optimizer: ModuleOptimizer = AdamW {
        beta_1: 0.9,
        beta_2: 0.99,
        epsilon: 1e-8,
        weight_decay: 0.1,
    }
    .into();
    for _ in 0..3 {
        let loss = forward(&model, false).square().mean().reshape([1]);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(1e-2, model, grads);
    }
    let after = values(&model);
    let mut moved = 0;
    for (path, value) in &after {
        match before.get(path) {
            // A base weight (`x.weight`) is stored under its own path, the factors beside it.
            Some(original) => assert!(original == value, "{family}: the base's {path} moved"),
            None => moved += usize::from(value.iter().any(|v| *v != 0.0)),
        }
    }
    assert!(moved >= report.matrices, "{family}: {moved} factors moved");

    let adapted_model = model.valid();
    let adapted_output = forward(&adapted_model, true);
    let merged_output = forward(&adapted_model.clone().materialize(), true);
    let changed = max_difference(adapted_output.clone(), base_output);
    let merged = max_difference(adapted_output, merged_output);
    eprintln!("{family}: {report}; output moved by {changed}, merged differs by {merged}");
    assert!(
        changed > 1e-4,
        "{family}: the adapters change nothing ({changed})"
    );
    assert!(merged < 1e-4, "{family}: merged differs by {merged}");
}

fn ids(device: &Device, batch: usize, len: usize) -> Tensor<2, Int> {
    Tensor::<2>::random(
        [batch, len],
        Distribution::Uniform(1.0, VOCAB as f64),
        device,
    )
    .int()
}

#[test]
fn lora_trains_only_its_factors_and_merges_exactly_in_every_family() {
    let device = Device::flex().autodiff();
    let x = ids(&device, 2, 12);
    let y = ids(&device, 2, 12);

    let mut gpt = zoo_gpt::preset("gpt-nano").unwrap();
    gpt.vocab_size = VOCAB;
    gpt.dropout = 0.0;
    check(
        "gpt",
        &["qkv", "proj"],
        gpt.init(&device).unwrap(),
        |m, plain| m.forward(at(&x, plain), None),
    );

    let mut rnn = zoo_rnn::preset("lstm-small").unwrap();
    rnn.vocab_size = VOCAB;
    rnn.d_hidden = 24;
    rnn.dropout = 0.0;
    check(
        "lstm",
        &["input", "recurrent"],
        rnn.init(&device).unwrap(),
        |m, plain| m.forward(at(&x, plain), None).0,
    );

    let mut bert = zoo_bert::preset("bert-tiny").unwrap();
    bert.vocab_size = VOCAB;
    bert.d_model = 32;
    bert.dropout = 0.0;
    let padding = x.clone().equal_elem(0);
    check(
        "bert",
        &["qkv", "proj"],
        bert.init_encoder(&device).unwrap(),
        |m, plain| {
            let tokens = at(&x, plain);
            m.forward(
                tokens.clone(),
                tokens.zeros_like(),
                Some(at(&padding, plain)),
            )
        },
    );

    for (family, preset, targets) in [
        (
            "transformer",
            "transformer-tiny",
            &["qkv", "query", "key_value", "proj"][..],
        ),
        (
            "rnn-attention",
            "rnn-attention-tiny",
            &["input", "recurrent"][..],
        ),
    ] {
        let config = zoo_train::models::resolve_model(
            &toml::from_str(&format!(
                "arch = \"{family}\"\npreset = \"{preset}\"\nsrc_vocab_size = {VOCAB}\ntgt_vocab_size = {VOCAB}\ndropout = 0.0\n"
            ))
            .unwrap(),
        )
        .unwrap();
        let model = match config {
            zoo_train::models::ModelConfig::Transformer(c) => {
                zoo_seq2seq::Seq2Seq::Transformer(c.init(&device).unwrap())
            }
            zoo_train::models::ModelConfig::RnnAttention(c) => {
                zoo_seq2seq::Seq2Seq::Rnn(c.init(&device).unwrap())
            }
            other => panic!("{other:?}"),
        };
        check(family, targets, model, |m, plain| {
            m.forward(at(&x, plain), at(&padding, plain), at(&y, plain))
        });
    }
}
