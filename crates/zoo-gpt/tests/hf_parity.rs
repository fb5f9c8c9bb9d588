//! Parity with Hugging Face's `transformers` on fixed weights: a tiny random GPT-2 (made by
//! tests/fixtures/hf/make_fixtures.py, committed with its reference outputs) imported and run on
//! a right-padded batch reproduces the reference logits at every real position, and continues a
//! prompt greedily token for token as `generate` did.

use burn::store::{ModuleStore, SafetensorsStore, bridge};
use burn::tensor::{Device, Int, Tensor, TensorData};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use zoo_blocks::hf::HfTensors;
use zoo_blocks::{Sampler, SamplingConfig};
use zoo_gpt::hf::HfGpt2;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hf/gpt2")
}

fn reference() -> BTreeMap<String, TensorData> {
    let mut store = SafetensorsStore::from_file(fixture().join("reference.safetensors"));
    store
        .get_all_tensors()
        .unwrap()
        .iter()
        .map(|(name, t)| (name.clone(), bridge::to_data(t).unwrap()))
        .collect()
}

fn import() -> (HfGpt2, zoo_gpt::Gpt) {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap())
            .unwrap();
    let hf = HfGpt2::from_config(&json).unwrap();
    let mut tensors = HfTensors::open(&fixture().join("model.safetensors")).unwrap();
    let model = hf.load(&mut tensors, &Device::flex()).unwrap();
    (hf, model)
}

#[test]
fn gpt2_reproduces_the_reference_logits_at_every_real_position() {
    let (hf, model) = import();
    let device = Device::flex();
    let reference = reference();
    let ids: Tensor<2, Int> = Tensor::from_data(reference["input_ids"].clone(), &device);
    let logits = model.forward(ids, None);
    let expected: Tensor<3> = Tensor::from_data(reference["logits"].clone(), &device);
    let [batch, len, vocab] = logits.dims();
    assert_eq!(vocab, hf.config.vocab_size);
    let real: Tensor<2> =
        Tensor::<2, Int>::from_data(reference["attention_mask"].clone(), &device).float();
    let real = real.reshape([batch, len, 1]).expand([batch, len, vocab]);
    let diff = ((logits - expected).abs() * real)
        .max()
        .into_scalar::<f32>();
    assert!(diff < 1e-4, "logits differ by {diff}");
}

#[test]
fn gpt2_continues_a_prompt_greedily_as_transformers_does() {
    let (_, model) = import();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap())
            .unwrap();
    let greedy: Vec<u32> = json["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let prompt_len = greedy.len() - 16;
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: 0.0,
        ..SamplingConfig::default()
    });
    let out = model.generate(&greedy[..prompt_len], 16, &mut sampler);
    assert_eq!(out, greedy);
}

#[test]
fn a_gpt2_option_the_zoo_lacks_is_refused_by_name() {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap())
            .unwrap();
    let mut scaled = json.clone();
    scaled["scale_attn_by_inverse_layer_idx"] = true.into();
    let e = HfGpt2::from_config(&scaled).unwrap_err();
    assert!(e.contains("scale_attn_by_inverse_layer_idx"), "{e}");
    let mut wrong = json;
    wrong["n_embd"] = 64.into();
    let hf = HfGpt2::from_config(&wrong).unwrap();
    let mut tensors = HfTensors::open(&fixture().join("model.safetensors")).unwrap();
    let e = hf.load(&mut tensors, &Device::flex()).unwrap_err();
    assert!(
        e.contains("transformer.wte.weight") && e.contains("[320, 64]"),
        "{e}"
    );
}

/// Imported and exported again, every tensor of the checkpoint comes back to the bit.
#[test]
fn import_then_export_gives_back_every_tensor_bit_for_bit() {
    let (hf, model) = import();
    let out = hf.export(&model).unwrap();
    let mut original = HfTensors::open(&fixture().join("model.safetensors")).unwrap();
    for (tensor, data) in &out {
        let theirs = original.take(tensor, data.shape()).unwrap();
        assert_eq!(&theirs, data, "{tensor}");
    }
    assert!(
        original.untaken().is_empty(),
        "not exported: {:?}",
        original.untaken()
    );
    // A GPT with an option GPT-2 lacks is refused by name.
    let llama_like = zoo_gpt::GptConfig {
        position: zoo_blocks::PositionKind::Rope,
        ..hf.config.clone()
    };
    let e = HfGpt2::for_export(&llama_like).unwrap_err();
    assert!(e.contains("Rope"), "{e}");
}
