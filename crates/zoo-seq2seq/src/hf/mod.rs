//! Hugging Face encoder-decoders in and out: T5 ([`t5`]) and BART ([`bart`]), each a zoo
//! [`Transformer`] in the shape its config describes. [`HfSeq2Seq`] is either: its family is
//! chosen by `config.json`'s `model_type` on the way in and by the transformer's shape on the
//! way out, and the family's module says how its config and tensors map.

pub mod bart;
pub mod t5;

pub use bart::BART_TOKENS;
pub use t5::T5_TOKENS;

use crate::DecodeTokens;
use crate::transformer::{Positions, Transformer, TransformerConfig};
use burn::tensor::{Device, TensorData};
use serde_json::Value;
use zoo_blocks::hf::{HfTensors, Link, apply_named, module_tensors, write_links};

/// The Hugging Face model types the zoo's transformer expresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfFamily {
    /// `T5ForConditionalGeneration`.
    T5,
    /// `BartForConditionalGeneration`.
    Bart,
}

/// A Hugging Face T5 or BART, read from its `config.json` or made for export.
#[derive(Clone, Debug, PartialEq)]
pub struct HfSeq2Seq {
    /// Which model type.
    pub family: HfFamily,
    /// The shape and options.
    pub config: TransformerConfig,
    /// The checkpoint's class, as `architectures` names it.
    pub class: String,
    /// Padding, the decoder's first input and end of sequence (`pad_token_id`,
    /// `decoder_start_token_id`, `eos_token_id`).
    pub tokens: DecodeTokens,
}

impl HfSeq2Seq {
    /// Reads a `config.json` of a model type the zoo imports (`t5`, `bart`); any option the
    /// zoo's transformer cannot express is refused by name.
    pub fn from_config(json: &Value) -> Result<Self, String> {
        match json["model_type"].as_str() {
            Some("t5") => t5::from_config(json),
            Some("bart") => bart::from_config(json),
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
        let (family, class) = match config.position {
            Positions::Relative => (HfFamily::T5, t5::CLASS),
            Positions::Learned => (HfFamily::Bart, bart::CLASS),
            Positions::Sinusoidal => {
                return Err(
                    "position = sinusoidal: Hugging Face has T5 (relative) and BART (learned)"
                        .into(),
                );
            }
        };
        match family {
            HfFamily::T5 => t5::check_export(config)?,
            HfFamily::Bart => bart::check_export(config)?,
        }
        Ok(Self {
            family,
            config: config.clone(),
            class: class.into(),
            tokens,
        })
    }

    /// The `config.json` that `transformers` builds the model from.
    pub fn to_config(&self) -> Value {
        match self.family {
            HfFamily::T5 => t5::to_config(self),
            HfFamily::Bart => bart::to_config(self),
        }
    }

    /// How the checkpoint's tensors and the model's parameters correspond.
    fn links(&self) -> Vec<Link> {
        match self.family {
            HfFamily::T5 => t5::links(&self.config),
            HfFamily::Bart => bart::links(&self.config),
        }
    }

    /// The model, on `device`, with the checkpoint's weights; a tensor the file lacks, has in
    /// another shape or has that the model has no place for is an error naming it. A T5's config
    /// may learn here that its head is untied: transformers 5 writes `tie_word_embeddings: true`
    /// for every T5 and saves a head of its own apart, as `lm_head.weight`.
    pub fn load(
        &mut self,
        tensors: &mut HfTensors,
        device: &Device,
    ) -> Result<Transformer, String> {
        let copies = match self.family {
            HfFamily::T5 => {
                t5::untie_saved_head(&mut self.config, tensors);
                t5::EMBEDDING_COPIES
            }
            HfFamily::Bart => bart::EMBEDDING_COPIES,
        };
        let named = tensors.read_links(&self.links())?;
        for name in copies {
            tensors.skip(name);
        }
        if self.config.tie_output {
            tensors.skip("lm_head.weight");
        }
        tensors.check_all_taken()?;
        apply_named(self.config.init(device)?, named, &[])
    }

    /// The checkpoint's tensors of `model`, named as the class names them.
    pub fn export(&self, model: &Transformer) -> Result<Vec<(String, TensorData)>, String> {
        write_links(&module_tensors(model)?, &self.links())
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
