//! Parity with Hugging Face's `transformers` on fixed weights: a tiny random GPT-2 and Llama
//! (grouped-query attention, SwiGLU, RMSNorm, RoPE, an untied head; made by
//! tests/fixtures/hf/make_fixtures.py, committed with their reference outputs) imported and run
//! on a right-padded batch reproduce the reference logits at every real position, and continue a
//! prompt greedily token for token as `generate` did.

use burn::tensor::{Device, Int, Tensor};
use std::path::{Path, PathBuf};
use zoo_blocks::hf::HfTensors;
use zoo_blocks::{Sampler, SamplingConfig};
use zoo_gpt::hf::HfGpt;

/// The decoders the fixtures hold.
const FIXTURES: [&str; 2] = ["gpt2", "llama"];

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

fn import(name: &str) -> (HfGpt, zoo_gpt::Gpt) {
    let hf = HfGpt::from_config(&config(name)).unwrap();
    let mut tensors = HfTensors::open(&fixture(name).join("model.safetensors")).unwrap();
    let model = hf.load(&mut tensors, &Device::flex()).unwrap();
    (hf, model)
}

#[test]
fn decoders_reproduce_the_reference_logits_at_every_real_position() {
    for name in FIXTURES {
        let (hf, model) = import(name);
        let device = Device::flex();
        let reference = reference(name);
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
        assert!(diff < 1e-4, "{name}: logits differ by {diff}");
    }
}

#[test]
fn decoders_continue_a_prompt_greedily_as_transformers_does() {
    for name in FIXTURES {
        let (_, model) = import(name);
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(name).join("reference.json")).unwrap(),
        )
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
        assert_eq!(out, greedy, "{name}");
    }
}

#[test]
fn an_option_the_zoo_lacks_is_refused_by_name() {
    let json = config("gpt2");
    let mut scaled = json.clone();
    scaled["scale_attn_by_inverse_layer_idx"] = true.into();
    let e = HfGpt::from_config(&scaled).unwrap_err();
    assert!(e.contains("scale_attn_by_inverse_layer_idx"), "{e}");
    let mut wrong = json;
    wrong["n_embd"] = 64.into();
    let hf = HfGpt::from_config(&wrong).unwrap();
    let mut tensors = HfTensors::open(&fixture("gpt2").join("model.safetensors")).unwrap();
    let e = hf.load(&mut tensors, &Device::flex()).unwrap_err();
    assert!(
        e.contains("transformer.wte.weight") && e.contains("[320, 64]"),
        "{e}"
    );
    let mut scaled = config("llama");
    scaled["rope_theta"] = 500000.0.into();
    let e = HfGpt::from_config(&scaled).unwrap_err();
    assert!(e.contains("rope_theta"), "{e}");
}

/// Imported and exported again, every tensor of each checkpoint comes back to the bit.
#[test]
fn import_then_export_gives_back_every_tensor_bit_for_bit() {
    for name in FIXTURES {
        let (hf, model) = import(name);
        let exported = HfGpt::for_export(&hf.config).unwrap();
        assert_eq!(exported.class, hf.class);
        let out = exported.export(&model).unwrap();
        HfTensors::open(&fixture(name).join("model.safetensors"))
            .unwrap()
            .check_written(&out, &[])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // A GPT in a shape neither GPT-2 nor Llama has is refused by name.
    let (hf, _) = import("gpt2");
    let mixed = zoo_gpt::GptConfig {
        position: zoo_blocks::PositionKind::Rope,
        ..hf.config
    };
    let e = HfGpt::for_export(&mixed).unwrap_err();
    assert!(e.contains("Rope") && e.contains("LayerNorm"), "{e}");
}
