//! Hugging Face encoder-decoders in and out: T5 ([`t5`]) and BART ([`bart`]), each a zoo
//! [`Transformer`] in the shape its config describes. [`HfSeq2Seq`] is either, chosen by
//! `config.json`'s `model_type` on the way in and by the transformer's shape on the way out.

pub mod bart;
pub mod t5;

pub use bart::{BART_TOKENS, HfBart};
pub use t5::{HfT5, T5_TOKENS};

use crate::DecodeTokens;
use crate::transformer::{Positions, Transformer, TransformerConfig};
use burn::tensor::{Device, TensorData};
use serde_json::Value;
use zoo_blocks::hf::{HfTensors, Link, apply_named};

/// A Hugging Face encoder-decoder the zoo's transformer expresses.
#[derive(Clone, Debug, PartialEq)]
pub enum HfSeq2Seq {
    /// `T5ForConditionalGeneration`.
    T5(HfT5),
    /// `BartForConditionalGeneration`.
    Bart(HfBart),
}

impl HfSeq2Seq {
    /// Reads a `config.json` of a model type the zoo imports (`t5`, `bart`).
    pub fn from_config(json: &Value) -> Result<Self, String> {
        match json["model_type"].as_str() {
            Some("t5") => HfT5::from_config(json).map(Self::T5),
            Some("bart") => HfBart::from_config(json).map(Self::Bart),
            other => Err(format!(
                "model_type {}: the zoo's encoder-decoders import \"t5\" and \"bart\"",
                other.map_or("missing".into(), |t| format!("\"{t}\""))
            )),
        }
    }

    /// What a zoo transformer of `config`, whose vocabulary has `tokens`, exports as: T5 when
    /// its positions are relative, BART when they are learned; an option the class does not
    /// have is refused by name.
    pub fn for_export(config: &TransformerConfig, tokens: DecodeTokens) -> Result<Self, String> {
        match config.position {
            Positions::Relative => HfT5::for_export(config, tokens).map(Self::T5),
            Positions::Learned => HfBart::for_export(config, tokens).map(Self::Bart),
            Positions::Sinusoidal => Err(
                "position = sinusoidal: Hugging Face has T5 (relative) and BART (learned)".into(),
            ),
        }
    }

    /// The transformer's config.
    pub fn config(&self) -> &TransformerConfig {
        match self {
            Self::T5(hf) => &hf.config,
            Self::Bart(hf) => &hf.config,
        }
    }

    /// Padding, the decoder's first input and end of sequence.
    pub fn tokens(&self) -> DecodeTokens {
        match self {
            Self::T5(hf) => hf.tokens,
            Self::Bart(hf) => hf.tokens,
        }
    }

    /// The checkpoint's class.
    pub fn class(&self) -> &str {
        match self {
            Self::T5(hf) => &hf.class,
            Self::Bart(hf) => &hf.class,
        }
    }

    /// The `config.json` that `transformers` builds the model from.
    pub fn to_config(&self) -> Value {
        match self {
            Self::T5(hf) => hf.to_config(),
            Self::Bart(hf) => hf.to_config(),
        }
    }

    /// The model, on `device`, with the checkpoint's weights (the config may learn that the
    /// head is untied: see [`HfT5::load`]).
    pub fn load(
        &mut self,
        tensors: &mut HfTensors,
        device: &Device,
    ) -> Result<Transformer, String> {
        match self {
            Self::T5(hf) => hf.load(tensors, device),
            Self::Bart(hf) => hf.load(tensors, device),
        }
    }

    /// The checkpoint's tensors of `model`.
    pub fn export(&self, model: &Transformer) -> Result<Vec<(String, TensorData)>, String> {
        match self {
            Self::T5(hf) => hf.export(model),
            Self::Bart(hf) => hf.export(model),
        }
    }
}

/// An error naming the first of `checks` (does the config fit, and the option with the value
/// `family` needs) that fails.
fn refuse_misfits(checks: &[(bool, &str)], family: &str) -> Result<(), String> {
    match checks.iter().find(|(fits, _)| !fits) {
        Some((_, what)) => Err(format!("{what}: the config is not a {family}'s")),
        None => Ok(()),
    }
}

/// A transformer of `config` with the weights `links` read from `tensors`; `copies` are
/// tensors a file may hold that repeat others (the stacks' copies of the shared embeddings, a
/// tied head), skipped; any other tensor left over is an error naming it.
fn load_links(
    config: &TransformerConfig,
    links: &[Link],
    tensors: &mut HfTensors,
    copies: &[&str],
    device: &Device,
) -> Result<Transformer, String> {
    let named = tensors.read_links(links)?;
    for name in copies {
        tensors.skip(name);
    }
    tensors.check_all_taken()?;
    apply_named(config.init(device)?, named, &[])
}

/// The class `config.json`'s `architectures` names, which must be `class` of `model_type`.
fn check_class(json: &Value, model_type: &str, class: &str) -> Result<String, String> {
    let found = json["model_type"].as_str().unwrap_or("");
    if found != model_type {
        return Err(format!("model_type is \"{found}\", not \"{model_type}\""));
    }
    let named = json["architectures"][0].as_str().unwrap_or(class);
    if named != class {
        return Err(format!(
            "architectures = [\"{named}\"] is not one the zoo imports; the {model_type} class it reads: {class}"
        ));
    }
    Ok(class.to_string())
}

/// A whole number `config.json` must give.
fn usize_of(json: &Value, key: &str) -> Result<usize, String> {
    json[key]
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| format!("config.json has no {key}"))
}

/// `pad_token_id`, `decoder_start_token_id` and `eos_token_id` of a `config.json`, with
/// `defaults` for those it leaves out.
fn decode_tokens(json: &Value, defaults: DecodeTokens) -> DecodeTokens {
    let id = |key: &str, default: u32| json[key].as_u64().map_or(default, |v| v as u32);
    let pad = id("pad_token_id", defaults.pad);
    DecodeTokens {
        pad,
        bos: id("decoder_start_token_id", defaults.bos),
        eos: id("eos_token_id", defaults.eos),
    }
}
