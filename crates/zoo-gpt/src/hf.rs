//! GPT-2 from a Hugging Face checkpoint (`GPT2LMHeadModel`, `GPT2Model`): `config.json` read
//! into a [`GptConfig`], `model.safetensors` into a [`Gpt`]. GPT-2 is the zoo's default GPT
//! (learned positions, pre-norm LayerNorm, tied output) with GELU's tanh form; its projections
//! are `Conv1D`s stored `[d_in, d_out]` as Burn's `Linear`, and its query, key and value are
//! already one projection, so the weights go in as they are.

use crate::model::{Gpt, GptConfig};
use burn::tensor::Device;
use serde_json::Value;
use zoo_blocks::hf::{HfTensors, apply_named};
use zoo_blocks::{Activation, NormKind, NormPlacement, PositionKind};

/// A Hugging Face GPT-2, read from its `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct HfGpt2 {
    /// The shape and options.
    pub config: GptConfig,
    /// The checkpoint's class, as `architectures` names it.
    pub class: String,
}

impl HfGpt2 {
    /// Reads a GPT-2's `config.json`; any option the zoo's GPT cannot express is refused by
    /// name.
    pub fn from_config(json: &Value) -> Result<Self, String> {
        let model_type = json["model_type"].as_str().unwrap_or("");
        if model_type != "gpt2" {
            return Err(format!("model_type is \"{model_type}\", not \"gpt2\""));
        }
        let class = json["architectures"][0]
            .as_str()
            .unwrap_or("GPT2LMHeadModel")
            .to_string();
        if !matches!(class.as_str(), "GPT2LMHeadModel" | "GPT2Model") {
            return Err(format!(
                "architectures = [\"{class}\"] is not one the zoo imports; GPT-2 classes: GPT2LMHeadModel, GPT2Model"
            ));
        }
        let usize_of = |key: &str| {
            json[key]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| format!("config.json has no {key}"))
        };
        let activation = match json["activation_function"].as_str().unwrap_or("gelu_new") {
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "relu" => Activation::Relu,
            other => {
                return Err(format!(
                    "activation_function = \"{other}\": the zoo's GPT has gelu_new, gelu and relu"
                ));
            }
        };
        for key in ["scale_attn_by_inverse_layer_idx", "add_cross_attention"] {
            if json[key].as_bool() == Some(true) {
                return Err(format!("{key} = true: the zoo's GPT has no such option"));
            }
        }
        if json["scale_attn_weights"].as_bool() == Some(false) {
            return Err("scale_attn_weights = false: the zoo's attention scales its scores".into());
        }
        if json["tie_word_embeddings"].as_bool() == Some(false) {
            return Err("tie_word_embeddings = false: GPT-2's output head is its embedding".into());
        }
        let config = GptConfig {
            vocab_size: usize_of("vocab_size")?,
            block_size: usize_of("n_positions")?,
            n_layer: usize_of("n_layer")?,
            n_head: usize_of("n_head")?,
            n_kv_head: 0,
            n_embd: usize_of("n_embd")?,
            d_ff: json["n_inner"].as_u64().unwrap_or(0) as usize,
            dropout: json["resid_pdrop"].as_f64().unwrap_or(0.1),
            bias: true,
            position: PositionKind::Learned,
            norm: NormKind::LayerNorm,
            norm_placement: NormPlacement::Pre,
            activation,
            tie_weights: true,
            layer_norm_eps: json["layer_norm_epsilon"].as_f64().unwrap_or(1e-5),
        };
        config.validate()?;
        Ok(Self { config, class })
    }

    /// The model, on `device`, with the checkpoint's weights; a tensor the file lacks, has in
    /// another shape or has that the model has no place for is an error naming it.
    pub fn load(&self, tensors: &mut HfTensors, device: &Device) -> Result<Gpt, String> {
        let c = &self.config;
        let (d, ff) = (c.n_embd, c.ff_width());
        // The language-model class keeps the body under `transformer.`; GPT2Model has none.
        let p = if tensors.contains("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        let mut named = vec![
            (
                "tokens.weight".to_string(),
                tensors.take(&format!("{p}wte.weight"), &[c.vocab_size, d])?,
            ),
            (
                "positions.Learned.weight".to_string(),
                tensors.take(&format!("{p}wpe.weight"), &[c.block_size, d])?,
            ),
        ];
        let mut norm = |from: &str, to: &str, named: &mut Vec<_>| -> Result<(), String> {
            named.push((
                format!("{to}.Layer.gamma"),
                tensors.take(&format!("{from}.weight"), &[d])?,
            ));
            named.push((
                format!("{to}.Layer.beta"),
                tensors.take(&format!("{from}.bias"), &[d])?,
            ));
            Ok(())
        };
        for i in 0..c.n_layer {
            let (hf, zoo) = (format!("{p}h.{i}."), format!("blocks.{i}."));
            norm(
                &format!("{hf}ln_1"),
                &format!("{zoo}attention_norm"),
                &mut named,
            )?;
            norm(&format!("{hf}ln_2"), &format!("{zoo}ff_norm"), &mut named)?;
        }
        norm(&format!("{p}ln_f"), "final_norm", &mut named)?;
        for i in 0..c.n_layer {
            let (hf, zoo) = (format!("{p}h.{i}."), format!("blocks.{i}."));
            // Conv1D: `[d_in, d_out]`, Burn's layout already.
            let projections = [
                ("attn.c_attn", "attention.qkv", d, 3 * d),
                ("attn.c_proj", "attention.proj", d, d),
                ("mlp.c_fc", "feed_forward.fc", d, ff),
                ("mlp.c_proj", "feed_forward.out", ff, d),
            ];
            for (from, to, d_in, d_out) in projections {
                named.push((
                    format!("{zoo}{to}.weight"),
                    tensors.take(&format!("{hf}{from}.weight"), &[d_in, d_out])?,
                ));
                named.push((
                    format!("{zoo}{to}.bias"),
                    tensors.take(&format!("{hf}{from}.bias"), &[d_out])?,
                ));
            }
            // Older checkpoints keep the causal mask as buffers.
            tensors.skip(&format!("{hf}attn.bias"));
            tensors.skip(&format!("{hf}attn.masked_bias"));
        }
        // The head is the token embedding (tied).
        tensors.skip("lm_head.weight");
        tensors.check_all_taken()?;
        apply_named(c.init(device)?, named, &[])
    }
}
