//! Parity with Hugging Face's `transformers` on fixed weights: tiny random T5s of both
//! generations (v1.0: ReLU, tied and scaled output; v1.1: gated GELU, an output head of its own,
//! heads narrower than the width) and a BART (made by tests/fixtures/hf/make_fixtures.py,
//! committed with their reference outputs) imported and run on a padded batch reproduce the
//! reference encoder states and teacher-forced logits, decode greedily as `generate` did, and
//! export back to the same tensors and an equivalent config.

use burn::tensor::{Bool, Device, Int, Tensor};
use std::path::{Path, PathBuf};
use zoo_blocks::hf::HfTensors;
use zoo_seq2seq::hf::{HfSeq2Seq, T5_TOKENS};
use zoo_seq2seq::{Strategy, decode};

const FIXTURES: [&str; 3] = ["t5-v1_0", "t5-v1_1", "bart"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/hf")
        .join(name)
}

/// The reference inputs and outputs `transformers` gave, by name.
fn reference(name: &str) -> HfTensors {
    HfTensors::open(&fixture(name).join("reference.safetensors")).unwrap()
}

fn config(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap())
        .unwrap()
}

fn import(name: &str) -> (HfSeq2Seq, zoo_seq2seq::Transformer) {
    let mut hf = HfSeq2Seq::from_config(&config(name)).unwrap();
    let mut tensors = HfTensors::open(&fixture(name).join("model.safetensors")).unwrap();
    let model = hf.load(&mut tensors, &Device::flex()).unwrap();
    (hf, model)
}

/// The largest difference of `a` and `b` where `mask` (`[batch, len]`, 1 at real positions) is
/// set.
fn masked_difference(a: Tensor<3>, b: Tensor<3>, mask: Tensor<2, Int>) -> f32 {
    let [batch, len, width] = a.dims();
    let keep = mask
        .float()
        .reshape([batch, len, 1])
        .expand([batch, len, width]);
    ((a - b).abs() * keep).max().into_scalar::<f32>()
}

#[test]
fn imports_reproduce_encoder_states_and_logits() {
    let device = Device::flex();
    for name in FIXTURES {
        let (_, model) = import(name);
        let reference = reference(name);
        let data = |key: &str| reference[key].clone();
        let ints = |key: &str| Tensor::<2, Int>::from_data(data(key), &device);
        let check = |what: &str, ours: Tensor<3>, key: &str, mask: &str| {
            let expected = Tensor::from_data(data(key), &device);
            let diff = masked_difference(ours, expected, ints(mask));
            assert!(diff < 1e-4, "{name}: {what} differ by {diff}");
        };
        let padding: Tensor<2, Bool> = ints("attention_mask").equal_elem(0);
        let encoded = model.encode(ints("input_ids"), padding.clone());
        check(
            "encoder states",
            encoded,
            "encoder_last_hidden_state",
            "attention_mask",
        );
        let logits = model.forward(ints("input_ids"), padding, ints("decoder_input_ids"));
        check("logits", logits, "logits", "decoder_attention_mask");
    }
}

#[test]
fn imports_decode_greedily_as_transformers_does() {
    for name in FIXTURES {
        let (hf, model) = import(name);
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(name).join("reference.json")).unwrap(),
        )
        .unwrap();
        let ids = |value: &serde_json::Value| -> Vec<u32> {
            value
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        let source = ids(&json["input_ids"][0]);
        // `generate` starts with the decoder's start token and stops after </s> (which BART's
        // forces as the 8th token).
        let mut expected = ids(&json["greedy"])[1..].to_vec();
        if expected.last() == Some(&hf.tokens.eos) {
            expected.pop();
        }
        let out = decode(
            &zoo_seq2seq::Seq2Seq::Transformer(model),
            &[source],
            hf.tokens,
            &Strategy::Greedy,
            expected.len(),
            &Device::flex(),
        );
        assert_eq!(out[0], expected, "{name}");
    }
}

#[test]
fn imports_export_back_to_every_tensor_bit_for_bit() {
    for name in FIXTURES {
        let (hf, model) = import(name);
        let exported = HfSeq2Seq::for_export(&hf.config, hf.tokens).unwrap();
        assert_eq!(exported.class, hf.class);
        let out = exported.export(&model).unwrap();
        let copies: &[&str] = if hf.config.tie_output {
            &["lm_head.weight"]
        } else {
            &[]
        };
        HfTensors::open(&fixture(name).join("model.safetensors"))
            .unwrap()
            .check_written(&out, copies)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // The zoo's own T5-style preset scales its attention scores, which T5 does not.
    let preset = zoo_seq2seq::transformer_preset("t5-small").unwrap();
    let e = HfSeq2Seq::for_export(&preset, T5_TOKENS).unwrap_err();
    assert!(e.contains("scaled_attention"), "{e}");
}

#[test]
fn configs_round_trip_through_export() {
    for name in FIXTURES {
        let (hf, _) = import(name);
        let written = HfSeq2Seq::for_export(&hf.config, hf.tokens)
            .unwrap()
            .to_config();
        assert_eq!(HfSeq2Seq::from_config(&written).unwrap(), hf, "{name}");
    }
}

#[test]
fn t5_head_saved_apart_under_a_tied_config_is_kept() {
    // What transformers 5 writes for a v1.1 it saved: `tie_word_embeddings: true`,
    // `scale_decoder_outputs: false`, and the head as its own tensor.
    let mut json = config("t5-v1_1");
    json["tie_word_embeddings"] = true.into();
    json["scale_decoder_outputs"] = false.into();
    let mut hf = HfSeq2Seq::from_config(&json).unwrap();
    assert!(hf.config.tie_output && !hf.config.scale_output);
    let mut tensors = HfTensors::open(&fixture("t5-v1_1").join("model.safetensors")).unwrap();
    let model = hf.load(&mut tensors, &Device::flex()).unwrap();
    assert!(!hf.config.tie_output, "the head in the file is kept");
    let (_, untied) = import("t5-v1_1");
    let device = Device::flex();
    let ids = Tensor::<2, Int>::from_data([[4, 13, 29, 1]], &device);
    let padding = ids.clone().equal_elem(-1);
    let decoder = Tensor::<2, Int>::from_data([[0, 4, 9]], &device);
    let a = model.forward(ids.clone(), padding.clone(), decoder.clone());
    let b = untied.forward(ids, padding, decoder);
    assert_eq!(a.into_data(), b.into_data());
}
