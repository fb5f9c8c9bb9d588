//! Parity with Hugging Face's `transformers` on fixed weights: tiny random checkpoints of each
//! BERT class (made by tests/fixtures/hf/make_fixtures.py, committed with the reference outputs),
//! imported and run on a padded batch with a sentence pair, reproduce the reference hidden
//! states, pooled vectors and logits.

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Int, Tensor};
use std::path::{Path, PathBuf};
use zoo_bert::hf::HfBert;
use zoo_bert::{BertHead, Prediction};
use zoo_blocks::hf::HfTensors;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/hf")
        .join(name)
}

/// The reference inputs and outputs `transformers` gave, by name.
fn reference(dir: &Path) -> HfTensors {
    HfTensors::open(&dir.join("reference.safetensors")).unwrap()
}

struct Imported {
    hf: HfBert,
    model: zoo_bert::BertModel,
    reference: HfTensors,
    device: Device,
}

fn import(name: &str) -> Imported {
    let dir = fixture(name);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let hf = HfBert::from_config(&json).unwrap();
    let device = Device::flex();
    let mut tensors = HfTensors::open(&dir.join("model.safetensors")).unwrap();
    let model = hf.load(&mut tensors, &device).unwrap();
    Imported {
        hf,
        model,
        reference: reference(&dir),
        device,
    }
}

impl Imported {
    fn ints(&self, name: &str) -> Tensor<2, Int> {
        Tensor::from_data(self.reference[name].clone(), &self.device)
    }

    fn padding(&self) -> Tensor<2, Bool> {
        self.ints("attention_mask").equal_elem(0)
    }

    fn hidden(&self) -> Tensor<3> {
        let (tokens, segments) = (self.ints("input_ids"), self.ints("token_type_ids"));
        self.model
            .encoder
            .forward(tokens, segments, Some(self.padding()))
    }

    fn expected<const D: usize>(&self, name: &str) -> Tensor<D> {
        Tensor::from_data(self.reference[name].clone(), &self.device)
    }
}

/// The largest absolute difference of `a` and `b` where `keep` (broadcast over the last
/// dimension when it is one shorter) is true.
fn max_difference<const D: usize>(a: Tensor<D>, b: Tensor<D>, keep: Option<Tensor<D>>) -> f32 {
    let diff = (a - b).abs();
    let diff = match keep {
        Some(keep) => diff * keep,
        None => diff,
    };
    diff.max().into_scalar::<f32>()
}

fn real_positions(imported: &Imported, width: usize) -> Tensor<3> {
    let mask: Tensor<2> = imported.ints("attention_mask").float();
    let [batch, len] = mask.dims();
    mask.reshape([batch, len, 1]).expand([batch, len, width])
}

const TOLERANCE: f32 = 1e-4;

#[test]
fn a_bare_encoder_reproduces_hidden_states_and_pooled_vectors() {
    let imported = import("bert-encoder");
    assert_eq!(imported.hf.class, "BertModel");
    assert_eq!(imported.hf.config.layer_norm_eps, 1e-12);
    let hidden = imported.hidden();
    let keep = real_positions(&imported, imported.hf.config.d_model);
    let diff = max_difference(
        hidden.clone(),
        imported.expected("last_hidden_state"),
        Some(keep),
    );
    assert!(diff < TOLERANCE, "hidden states differ by {diff}");
    let pooled = imported.model.encoder.pool(hidden);
    let diff = max_difference(pooled, imported.expected("pooler_output"), None);
    assert!(diff < TOLERANCE, "pooled vectors differ by {diff}");
    // The same from the last layer's [CLS] position alone.
    let (tokens, segments) = (imported.ints("input_ids"), imported.ints("token_type_ids"));
    let pooled = (imported.model.encoder).pooled(tokens, segments, Some(imported.padding()));
    let diff = max_difference(pooled, imported.expected("pooler_output"), None);
    assert!(
        diff < TOLERANCE,
        "pooled vectors differ by {diff} from [CLS] alone"
    );
}

#[test]
fn a_masked_lm_reproduces_its_token_logits() {
    let imported = import("bert-masked-lm");
    let hidden = imported.hidden();
    let [batch, len, d] = hidden.dims();
    let BertHead::MaskedLm(head) = &imported.model.head else {
        panic!("a masked-LM head")
    };
    let vocab = imported.hf.config.vocab_size;
    let logits = head
        .token_logits(
            hidden.reshape([batch * len, d]),
            &imported.model.encoder.embeddings.tokens,
        )
        .reshape([batch, len, vocab]);
    let keep = real_positions(&imported, vocab);
    let diff = max_difference(logits, imported.expected("logits"), Some(keep));
    assert!(diff < TOLERANCE, "masked-LM logits differ by {diff}");
}

#[test]
fn a_classifier_reproduces_its_logits_and_label_names() {
    let imported = import("bert-classifier");
    assert_eq!(imported.hf.labels, ["LABEL_0", "LABEL_1", "LABEL_2"]);
    let pooled = imported.model.encoder.pool(imported.hidden());
    let BertHead::Classification(head) = &imported.model.head else {
        panic!("a classification head")
    };
    let diff = max_difference(head.logits(pooled), imported.expected("logits"), None);
    assert!(diff < TOLERANCE, "class logits differ by {diff}");
    // What inference serves: probabilities, from the last layer's [CLS] position alone.
    let (tokens, segments) = (imported.ints("input_ids"), imported.ints("token_type_ids"));
    let Prediction::Labels(predicted) =
        imported.model.predict(tokens, segments, imported.padding())
    else {
        panic!("a classifier predicts labels")
    };
    let expected = softmax(imported.expected::<2>("logits"), 1).unsqueeze_dim::<3>(1);
    let diff = max_difference(predicted, expected, None);
    assert!(diff < TOLERANCE, "class probabilities differ by {diff}");
}

#[test]
fn a_bad_checkpoint_is_named_not_a_panic() {
    let dir = fixture("bert-classifier");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    // A config that disagrees with the weights: the tensor and both shapes are named.
    let mut wrong = json.clone();
    wrong["intermediate_size"] = 64.into();
    let hf = HfBert::from_config(&wrong).unwrap();
    let mut tensors = HfTensors::open(&dir.join("model.safetensors")).unwrap();
    let e = hf.load(&mut tensors, &Device::flex()).unwrap_err();
    assert!(
        e.contains("bert.encoder.layer.0.intermediate.dense.weight")
            && e.contains("[48, 32]")
            && e.contains("[64, 32]"),
        "{e}"
    );
    // Options the zoo's BERT cannot express are refused by name.
    let mut relative = json.clone();
    relative["position_embedding_type"] = "relative_key".into();
    let e = HfBert::from_config(&relative).unwrap_err();
    assert!(e.contains("position_embedding_type"), "{e}");
    let mut other = json;
    other["architectures"] = serde_json::json!(["BertForQuestionAnswering"]);
    let e = HfBert::from_config(&other).unwrap_err();
    assert!(e.contains("BertForQuestionAnswering"), "{e}");
}

/// Imported and exported again, every tensor of the checkpoint comes back to the bit (the
/// masked-LM class has no pooler, so none goes out).
#[test]
fn import_then_export_gives_back_every_tensor_bit_for_bit() {
    for name in ["bert-masked-lm", "bert-classifier"] {
        let imported = import(name);
        let out = imported.hf.export(&imported.model).unwrap();
        HfTensors::open(&fixture(name).join("model.safetensors"))
            .unwrap()
            .check_written(&out, &[])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
