//! GPTs and Hugging Face checkpoints, both ways: `config.json` read into a [`GptConfig`] (and
//! written from one), `model.safetensors` read into a [`Gpt`] (and written from one), for the two
//! shapes of decoder the zoo's GPT covers:
//!
//! - GPT-2 (`GPT2LMHeadModel`, `GPT2Model`): learned positions, pre-norm LayerNorm, tied output,
//!   GELU's tanh form. Its projections are `Conv1D`s stored `[d_in, d_out]` as Burn's `Linear`,
//!   and its query, key and value are already one projection, so the weights go across as
//!   they are.
//! - Llama (`LlamaForCausalLM`): rotary positions (the rotate-half layout, base 10000),
//!   RMSNorm, SwiGLU and grouped-query attention. Its separate query, key and value projections
//!   are joined into the zoo's one, its gate and up projections into the zoo's double-width
//!   first feed-forward projection.
//!
//! One table of [`Link`]s per shape says how each parameter and the checkpoint's tensors
//! correspond, and serves import and export alike.

use crate::model::{Gpt, GptConfig};
use burn::tensor::{Device, TensorData};
use serde_json::{Value, json};
use zoo_blocks::hf::{HfTensors, Link, apply_named, module_tensors, write_links};
use zoo_blocks::{Activation, NormKind, NormPlacement, PositionKind};

/// Which Hugging Face decoder a GPT is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfFamily {
    /// `model_type = "gpt2"`.
    Gpt2,
    /// `model_type = "llama"`.
    Llama,
}

/// A Hugging Face decoder, read from its `config.json` or made for export.
#[derive(Clone, Debug, PartialEq)]
pub struct HfGpt {
    /// The shape and options.
    pub config: GptConfig,
    /// GPT-2 or Llama.
    pub family: HfFamily,
    /// The checkpoint's class, as `architectures` names it.
    pub class: String,
}

/// The base of the rotary angles the zoo's RoPE uses (Llama's `rope_theta`).
const ROPE_THETA: f64 = 10000.0;

impl HfGpt {
    /// Reads a GPT-2's or Llama's `config.json`; any option the zoo's GPT cannot express is
    /// refused by name.
    pub fn from_config(json: &Value) -> Result<Self, String> {
        match json["model_type"].as_str().unwrap_or("") {
            "gpt2" => Self::gpt2_from_config(json),
            "llama" => Self::llama_from_config(json),
            other => Err(format!(
                "model_type is \"{other}\"; the zoo's GPT reads \"gpt2\" and \"llama\""
            )),
        }
    }

    fn class_of(json: &Value, default: &str, classes: &[&str]) -> Result<String, String> {
        let class = json["architectures"][0].as_str().unwrap_or(default);
        if !classes.contains(&class) {
            return Err(format!(
                "architectures = [\"{class}\"] is not one the zoo imports; classes: {}",
                classes.join(", ")
            ));
        }
        Ok(class.to_string())
    }

    fn gpt2_from_config(json: &Value) -> Result<Self, String> {
        let class = Self::class_of(json, "GPT2LMHeadModel", &["GPT2LMHeadModel", "GPT2Model"])?;
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
            vocab_size: usize_of(json, "vocab_size")?,
            block_size: usize_of(json, "n_positions")?,
            n_layer: usize_of(json, "n_layer")?,
            n_head: usize_of(json, "n_head")?,
            n_kv_head: 0,
            n_embd: usize_of(json, "n_embd")?,
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
        Ok(Self {
            config,
            family: HfFamily::Gpt2,
            class,
        })
    }

    fn llama_from_config(json: &Value) -> Result<Self, String> {
        let class = Self::class_of(json, "LlamaForCausalLM", &["LlamaForCausalLM"])?;
        let hidden_act = json["hidden_act"].as_str().unwrap_or("silu");
        if hidden_act != "silu" {
            return Err(format!(
                "hidden_act = \"{hidden_act}\": the zoo's gated feed-forward is SwiGLU (\"silu\")"
            ));
        }
        let theta = json["rope_theta"].as_f64().unwrap_or(ROPE_THETA);
        if theta != ROPE_THETA || !json["rope_scaling"].is_null() {
            return Err(format!(
                "rope_theta = {theta} or rope_scaling set: the zoo's RoPE has base {ROPE_THETA} and no scaling"
            ));
        }
        let (d, heads) = (
            usize_of(json, "hidden_size")?,
            usize_of(json, "num_attention_heads")?,
        );
        if let Some(head_dim) = json["head_dim"].as_u64()
            && head_dim as usize * heads != d
        {
            return Err(format!(
                "head_dim = {head_dim} with {heads} heads is not hidden_size = {d}: the zoo's heads split the width"
            ));
        }
        let attention_bias = json["attention_bias"].as_bool().unwrap_or(false);
        if json["mlp_bias"].as_bool().unwrap_or(false) != attention_bias {
            return Err(
                "attention_bias and mlp_bias differ: the zoo's GPT has one bias switch".into(),
            );
        }
        let config = GptConfig {
            vocab_size: usize_of(json, "vocab_size")?,
            block_size: usize_of(json, "max_position_embeddings")?,
            n_layer: usize_of(json, "num_hidden_layers")?,
            n_head: heads,
            n_kv_head: json["num_key_value_heads"].as_u64().unwrap_or(heads as u64) as usize,
            n_embd: d,
            d_ff: usize_of(json, "intermediate_size")?,
            dropout: json["attention_dropout"].as_f64().unwrap_or(0.0),
            bias: attention_bias,
            position: PositionKind::Rope,
            norm: NormKind::RmsNorm,
            norm_placement: NormPlacement::Pre,
            activation: Activation::Swiglu,
            tie_weights: json["tie_word_embeddings"].as_bool().unwrap_or(false),
            layer_norm_eps: json["rms_norm_eps"].as_f64().unwrap_or(1e-6),
        };
        config.validate()?;
        Ok(Self {
            config,
            family: HfFamily::Llama,
            class,
        })
    }

    /// The Hugging Face decoder a zoo GPT of `config` exports as: GPT-2 with learned positions
    /// and LayerNorm, Llama with rotary positions, RMSNorm and SwiGLU. Any other mix (sinusoids,
    /// ALiBi, post-norm, ...) is refused by name. A GPT-2 without biases is one whose biases are
    /// zero.
    pub fn for_export(config: &GptConfig) -> Result<Self, String> {
        let c = config;
        let refuse =
            |what: String, family: &str| Err(format!("{what}: a {family} has no such option"));
        let family = match (c.position, c.norm) {
            (PositionKind::Learned, NormKind::LayerNorm) => HfFamily::Gpt2,
            (PositionKind::Rope, NormKind::RmsNorm) => HfFamily::Llama,
            (position, norm) => {
                return Err(format!(
                    "position = {position:?} with norm = {norm:?}: Hugging Face has GPT-2 (learned, LayerNorm) and Llama (RoPE, RMSNorm)"
                ));
            }
        };
        if c.norm_placement != NormPlacement::Pre {
            return refuse("norm_placement = post".into(), "GPT-2 or Llama");
        }
        match family {
            HfFamily::Gpt2 => {
                if c.kv_heads() != c.n_head {
                    return refuse(format!("n_kv_head = {}", c.n_kv_head), "GPT-2");
                }
                if !c.tie_weights {
                    return refuse("tie_weights = false".into(), "GPT-2");
                }
                if c.activation.is_gated() {
                    return refuse(format!("activation = {:?}", c.activation), "GPT-2");
                }
            }
            HfFamily::Llama => {
                if c.activation != Activation::Swiglu {
                    return refuse(format!("activation = {:?}", c.activation), "Llama");
                }
            }
        }
        let class = match family {
            HfFamily::Gpt2 => "GPT2LMHeadModel",
            HfFamily::Llama => "LlamaForCausalLM",
        };
        Ok(Self {
            config: config.clone(),
            family,
            class: class.into(),
        })
    }

    /// The `config.json` that `transformers` builds this decoder from; `eos_id` is the
    /// tokenizer's end-of-text token, if it has one.
    pub fn to_config(&self, eos_id: Option<u32>) -> Value {
        let c = &self.config;
        match self.family {
            HfFamily::Gpt2 => {
                let activation = match c.activation {
                    Activation::GeluTanh => "gelu_new",
                    Activation::Gelu => "gelu",
                    Activation::Relu => "relu",
                    Activation::Swiglu | Activation::Geglu => unreachable!("refused by for_export"),
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
            HfFamily::Llama => json!({
                "architectures": [self.class],
                "model_type": "llama",
                "vocab_size": c.vocab_size,
                "hidden_size": c.n_embd,
                "intermediate_size": c.ff_width(),
                "num_hidden_layers": c.n_layer,
                "num_attention_heads": c.n_head,
                "num_key_value_heads": c.kv_heads(),
                "head_dim": c.n_embd / c.n_head,
                "hidden_act": "silu",
                "max_position_embeddings": c.block_size,
                "rms_norm_eps": c.layer_norm_eps,
                "rope_theta": ROPE_THETA,
                "attention_bias": c.bias,
                "mlp_bias": c.bias,
                "attention_dropout": c.dropout,
                "tie_word_embeddings": c.tie_weights,
                "initializer_range": 0.02,
                "bos_token_id": eos_id,
                "eos_token_id": eos_id,
            }),
        }
    }

    /// How the checkpoint's tensors (the body under `prefix`) and the model's parameters
    /// correspond.
    fn links(&self, prefix: &str) -> Vec<Link> {
        match self.family {
            HfFamily::Gpt2 => self.gpt2_links(prefix),
            HfFamily::Llama => self.llama_links(prefix),
        }
    }

    fn gpt2_links(&self, prefix: &str) -> Vec<Link> {
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

    fn llama_links(&self, prefix: &str) -> Vec<Link> {
        let c = &self.config;
        let (d, ff) = (c.n_embd, c.ff_width());
        let head_dim = d / c.n_head;
        let (q, kv) = (c.n_head * head_dim, c.kv_heads() * head_dim);
        let rms = |hf: String, zoo: String| {
            Link::same(format!("{hf}.weight"), format!("{zoo}.Rms.gamma"), &[d])
        };
        // A projection without bias, or with one when the model has biases.
        let projection = |hf: Vec<String>, zoo: String, d_in: usize, d_outs: Vec<usize>| {
            let mut links = vec![Link::Linear {
                hf: hf.iter().map(|name| format!("{name}.weight")).collect(),
                zoo: format!("{zoo}.weight"),
                d_in,
                d_outs: d_outs.clone(),
            }];
            if c.bias {
                links.push(Link::Vectors {
                    hf: hf.iter().map(|name| format!("{name}.bias")).collect(),
                    zoo: format!("{zoo}.bias"),
                    sizes: d_outs,
                });
            }
            links
        };
        let mut links = vec![Link::same(
            format!("{prefix}embed_tokens.weight"),
            "tokens.weight",
            &[c.vocab_size, d],
        )];
        for i in 0..c.n_layer {
            let (hf, zoo) = (format!("{prefix}layers.{i}."), format!("blocks.{i}."));
            links.push(rms(
                format!("{hf}input_layernorm"),
                format!("{zoo}attention_norm"),
            ));
            links.push(rms(
                format!("{hf}post_attention_layernorm"),
                format!("{zoo}ff_norm"),
            ));
            let attn = |name: &str| format!("{hf}self_attn.{name}");
            links.extend(projection(
                vec![attn("q_proj"), attn("k_proj"), attn("v_proj")],
                format!("{zoo}attention.qkv"),
                d,
                vec![q, kv, kv],
            ));
            links.extend(projection(
                vec![attn("o_proj")],
                format!("{zoo}attention.proj"),
                q,
                vec![d],
            ));
            let mlp = |name: &str| format!("{hf}mlp.{name}");
            // SwiGLU's first projection: the gate's half, then the value's.
            links.extend(projection(
                vec![mlp("gate_proj"), mlp("up_proj")],
                format!("{zoo}feed_forward.fc"),
                d,
                vec![ff, ff],
            ));
            links.extend(projection(
                vec![mlp("down_proj")],
                format!("{zoo}feed_forward.out"),
                ff,
                vec![d],
            ));
        }
        links.push(rms(format!("{prefix}norm"), "final_norm".into()));
        if !c.tie_weights {
            links.push(Link::weight("lm_head", "tokens.head", d, c.vocab_size));
        }
        links
    }

    /// Where the body's tensors live in a checkpoint of this class.
    fn prefix(&self) -> &'static str {
        match (self.family, self.class.as_str()) {
            (HfFamily::Gpt2, "GPT2Model") => "",
            (HfFamily::Gpt2, _) => "transformer.",
            (HfFamily::Llama, _) => "model.",
        }
    }

    /// The model, on `device`, with the checkpoint's weights; a tensor the file lacks, has in
    /// another shape or has that the model has no place for is an error naming it.
    pub fn load(&self, tensors: &mut HfTensors, device: &Device) -> Result<Gpt, String> {
        let prefix = self.prefix();
        let named = tensors.read_links(&self.links(prefix))?;
        // Older GPT-2 checkpoints keep the causal mask as buffers; a tied head is the token
        // embedding, and older Llamas keep their rotary frequencies.
        for i in 0..self.config.n_layer {
            tensors.skip(&format!("{prefix}h.{i}.attn.bias"));
            tensors.skip(&format!("{prefix}h.{i}.attn.masked_bias"));
            tensors.skip(&format!("{prefix}layers.{i}.self_attn.rotary_emb.inv_freq"));
        }
        if self.config.tie_weights {
            tensors.skip("lm_head.weight");
        }
        tensors.check_all_taken()?;
        apply_named(self.config.init(device)?, named, &[])
    }

    /// The checkpoint's tensors of `model`, named as this class names them.
    pub fn export(&self, model: &Gpt) -> Result<Vec<(String, TensorData)>, String> {
        let links = self.links(self.prefix());
        let mut tensors = module_tensors(model)?;
        if !self.config.bias && self.family == HfFamily::Gpt2 {
            // A GPT-2 layer without a bias is one whose bias is zero.
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

fn usize_of(json: &Value, key: &str) -> Result<usize, String> {
    json[key]
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| format!("config.json has no {key}"))
}
