//! GPT-2 and Hugging Face checkpoints, both ways (`GPT2LMHeadModel`, `GPT2Model`):
//! `config.json` read into a [`GptConfig`] (and written from one), `model.safetensors` read into
//! a [`Gpt`] (and written from one). GPT-2 is the zoo's default GPT (learned positions, pre-norm
//! LayerNorm, tied output) with GELU's tanh form; its projections are `Conv1D`s stored
//! `[d_in, d_out]` as Burn's `Linear`, and its query, key and value are already one projection,
//! so the weights go across as they are.

use crate::model::{Gpt, GptConfig};
use burn::tensor::{Device, TensorData};
use serde_json::{Value, json};
use zoo_blocks::hf::{HfTensors, Link, apply_named, module_tensors, write_links};
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

    /// The GPT-2 a zoo GPT of `config` exports as; an option GPT-2 does not have (other
    /// positions or norms, post-norm, grouped-query attention, SwiGLU, an untied head) is
    /// refused by name. A GPT without biases is a GPT-2 whose biases are zero.
    pub fn for_export(config: &GptConfig) -> Result<Self, String> {
        let refuse = |what: String| Err(format!("{what}: GPT-2 has no such option"));
        if config.position != PositionKind::Learned {
            return refuse(format!("position = {:?}", config.position));
        }
        if config.norm != NormKind::LayerNorm || config.norm_placement != NormPlacement::Pre {
            return refuse(format!(
                "norm = {:?} ({:?})",
                config.norm, config.norm_placement
            ));
        }
        if config.kv_heads() != config.n_head {
            return refuse(format!("n_kv_head = {}", config.n_kv_head));
        }
        if !config.tie_weights {
            return refuse("tie_weights = false".into());
        }
        if config.activation == Activation::Swiglu {
            return refuse("activation = swiglu".into());
        }
        Ok(Self {
            config: config.clone(),
            class: "GPT2LMHeadModel".into(),
        })
    }

    /// The `config.json` that `transformers` builds this GPT-2 from; `eos_id` is the
    /// tokenizer's end-of-text token, if it has one.
    pub fn to_config(&self, eos_id: Option<u32>) -> Value {
        let c = &self.config;
        let activation = match c.activation {
            Activation::GeluTanh => "gelu_new",
            Activation::Gelu => "gelu",
            Activation::Relu => "relu",
            Activation::Swiglu => unreachable!("refused by for_export"),
        };
        json!({
            "architectures": [self.class],
            "model_type": "gpt2",
            "vocab_size": c.vocab_size,
            "n_positions": c.block_size,
            "n_embd": c.n_embd,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_inner": c.ff_width(),
            "activation_function": activation,
            "resid_pdrop": c.dropout,
            "embd_pdrop": c.dropout,
            "attn_pdrop": c.dropout,
            "layer_norm_epsilon": c.layer_norm_eps,
            "initializer_range": 0.02,
            "scale_attn_weights": true,
            "tie_word_embeddings": true,
            "bos_token_id": eos_id,
            "eos_token_id": eos_id,
        })
    }

    /// How the checkpoint's tensors (the body under `prefix`) and the model's parameters
    /// correspond.
    fn links(&self, prefix: &str) -> Vec<Link> {
        let c = &self.config;
        let (d, ff) = (c.n_embd, c.ff_width());
        let mut links = vec![
            Link::same(
                format!("{prefix}wte.weight"),
                "tokens.weight",
                &[c.vocab_size, d],
            ),
            Link::same(
                format!("{prefix}wpe.weight"),
                "positions.Learned.weight",
                &[c.block_size, d],
            ),
        ];
        for i in 0..c.n_layer {
            let (hf, zoo) = (format!("{prefix}h.{i}."), format!("blocks.{i}."));
            links.extend(Link::layer_norm(
                &format!("{hf}ln_1"),
                &format!("{zoo}attention_norm"),
                d,
            ));
            links.extend(Link::layer_norm(
                &format!("{hf}ln_2"),
                &format!("{zoo}ff_norm"),
                d,
            ));
            // Conv1D: `[d_in, d_out]`, Burn's layout already.
            let projections = [
                ("attn.c_attn", "attention.qkv", d, 3 * d),
                ("attn.c_proj", "attention.proj", d, d),
                ("mlp.c_fc", "feed_forward.fc", d, ff),
                ("mlp.c_proj", "feed_forward.out", ff, d),
            ];
            for (from, to, d_in, d_out) in projections {
                links.push(Link::same(
                    format!("{hf}{from}.weight"),
                    format!("{zoo}{to}.weight"),
                    &[d_in, d_out],
                ));
                links.push(Link::same(
                    format!("{hf}{from}.bias"),
                    format!("{zoo}{to}.bias"),
                    &[d_out],
                ));
            }
        }
        links.extend(Link::layer_norm(&format!("{prefix}ln_f"), "final_norm", d));
        links
    }

    /// The model, on `device`, with the checkpoint's weights; a tensor the file lacks, has in
    /// another shape or has that the model has no place for is an error naming it.
    pub fn load(&self, tensors: &mut HfTensors, device: &Device) -> Result<Gpt, String> {
        // The language-model class keeps the body under `transformer.`; GPT2Model has none.
        let prefix = if tensors.contains("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        let named = tensors.read_links(&self.links(prefix))?;
        // Older checkpoints keep the causal mask as buffers; the head is the token embedding.
        for i in 0..self.config.n_layer {
            tensors.skip(&format!("{prefix}h.{i}.attn.bias"));
            tensors.skip(&format!("{prefix}h.{i}.attn.masked_bias"));
        }
        tensors.skip("lm_head.weight");
        tensors.check_all_taken()?;
        apply_named(self.config.init(device)?, named, &[])
    }

    /// The checkpoint's tensors of `model`, named as `GPT2LMHeadModel` names them.
    pub fn export(&self, model: &Gpt) -> Result<Vec<(String, TensorData)>, String> {
        let links = self.links("transformer.");
        let mut tensors = module_tensors(model)?;
        if !self.config.bias {
            // A layer without a bias is one whose bias is zero.
            for link in &links {
                if let Link::Same { zoo, shape, .. } = link
                    && (zoo.ends_with(".bias") || zoo.ends_with(".beta"))
                {
                    let zeros =
                        TensorData::new(vec![0.0f32; shape.iter().product()], shape.clone());
                    tensors.entry(zoo.clone()).or_insert(zeros);
                }
            }
        }
        write_links(&tensors, &links)
    }
}
