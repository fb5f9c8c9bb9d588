//! BERT from a Hugging Face checkpoint: `config.json` read into a [`BertConfig`] and a task,
//! `model.safetensors` into a [`BertModel`]. Covers the classes people publish BERTs as:
//! `BertModel` (bare encoders, such as the MiniLM sentence encoders), `BertForMaskedLM`,
//! `BertForPreTraining` (masked-LM and next-sentence heads) and
//! `BertForSequenceClassification`.
//!
//! Hugging Face keeps query, key and value as three projections; the zoo's attention has one
//! fused projection, so the three are joined (queries, then keys, then values, each head's
//! columns together, as the zoo's attention splits them).

use crate::model::{BertConfig, BertModel, BertTask};
use burn::tensor::Device;
use serde_json::Value;
use zoo_blocks::hf::{HfTensors, apply_named, concat_last};
use zoo_blocks::{Activation, NormPlacement};

/// A Hugging Face BERT, read from its `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct HfBert {
    /// The shape and options.
    pub config: BertConfig,
    /// What its head does (a bare `BertModel` is given a masked-LM head, kept fresh).
    pub task: BertTask,
    /// The checkpoint's class, as `architectures` names it.
    pub class: String,
    /// Label names in id order (sequence classification).
    pub labels: Vec<String>,
}

impl HfBert {
    /// Reads a BERT's `config.json`; any option the zoo's BERT cannot express is refused by
    /// name.
    pub fn from_config(json: &Value) -> Result<Self, String> {
        let model_type = json["model_type"].as_str().unwrap_or("");
        if model_type != "bert" {
            return Err(format!("model_type is \"{model_type}\", not \"bert\""));
        }
        let class = json["architectures"][0]
            .as_str()
            .unwrap_or("BertModel")
            .to_string();
        let usize_of = |key: &str| {
            json[key]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| format!("config.json has no {key}"))
        };
        let activation = match json["hidden_act"].as_str().unwrap_or("gelu") {
            "gelu" => Activation::Gelu,
            other => {
                return Err(format!(
                    "hidden_act = \"{other}\": the zoo's BERT uses exact GELU (\"gelu\")"
                ));
            }
        };
        let positions = json["position_embedding_type"]
            .as_str()
            .unwrap_or("absolute");
        if positions != "absolute" {
            return Err(format!(
                "position_embedding_type = \"{positions}\": the zoo's BERT has absolute positions"
            ));
        }
        let mut labels: Vec<(usize, String)> = json["id2label"]
            .as_object()
            .map(|map| {
                map.iter()
                    .filter_map(|(id, name)| Some((id.parse().ok()?, name.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        labels.sort();
        let labels: Vec<String> = labels.into_iter().map(|(_, name)| name).collect();
        let task = match class.as_str() {
            "BertModel" | "BertForMaskedLM" => BertTask::MaskedLm {
                next_sentence: false,
            },
            "BertForPreTraining" => BertTask::MaskedLm {
                next_sentence: true,
            },
            "BertForSequenceClassification" => BertTask::Classification,
            other => {
                return Err(format!(
                    "architectures = [\"{other}\"] is not one the zoo imports; BERT classes: BertModel, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification"
                ));
            }
        };
        let config = BertConfig {
            vocab_size: usize_of("vocab_size")?,
            max_len: usize_of("max_position_embeddings")?,
            type_vocab_size: usize_of("type_vocab_size").unwrap_or(2),
            n_layer: usize_of("num_hidden_layers")?,
            n_head: usize_of("num_attention_heads")?,
            d_model: usize_of("hidden_size")?,
            d_ff: usize_of("intermediate_size")?,
            dropout: json["hidden_dropout_prob"].as_f64().unwrap_or(0.1),
            norm_placement: NormPlacement::Post,
            activation,
            num_labels: if task == BertTask::Classification {
                labels.len().max(2)
            } else {
                0
            },
            layer_norm_eps: json["layer_norm_eps"].as_f64().unwrap_or(1e-12),
        };
        config.validate()?;
        Ok(Self {
            config,
            task,
            class,
            labels,
        })
    }

    /// The model, on `device`, with the checkpoint's weights. A bare encoder's head, and the
    /// pooler of a masked-LM checkpoint (which has none), keep their fresh weights; a tensor the
    /// file lacks, has in another shape, or has that the model has no place for is an error
    /// naming it.
    pub fn load(&self, tensors: &mut HfTensors, device: &Device) -> Result<BertModel, String> {
        let c = &self.config;
        let (d, ff) = (c.d_model, c.ff_width());
        // Task classes keep the encoder under `bert.`; a bare BertModel has no prefix.
        let p = if tensors.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let mut named = Vec::new();
        let mut put = |path: String, data| named.push((path, data));

        let e = format!("{p}embeddings.");
        put(
            "encoder.embeddings.tokens.weight".into(),
            tensors.take(&format!("{e}word_embeddings.weight"), &[c.vocab_size, d])?,
        );
        put(
            "encoder.embeddings.positions.weight".into(),
            tensors.take(&format!("{e}position_embeddings.weight"), &[c.max_len, d])?,
        );
        put(
            "encoder.embeddings.segments.weight".into(),
            tensors.take(
                &format!("{e}token_type_embeddings.weight"),
                &[c.type_vocab_size, d],
            )?,
        );
        for (path, data) in norm(
            tensors,
            &format!("{e}LayerNorm"),
            "encoder.embeddings.norm",
            d,
        )? {
            put(path, data);
        }
        // Buffers, not weights.
        tensors.skip(&format!("{e}position_ids"));
        tensors.skip(&format!("{e}token_type_ids"));

        for i in 0..c.n_layer {
            let hf = format!("{p}encoder.layer.{i}.");
            let zoo = format!("encoder.layers.{i}.");
            let projections = ["query", "key", "value"];
            let weights = projections
                .iter()
                .map(|name| tensors.linear(&format!("{hf}attention.self.{name}.weight"), d, d))
                .collect::<Result<Vec<_>, _>>()?;
            let biases = projections
                .iter()
                .map(|name| tensors.take(&format!("{hf}attention.self.{name}.bias"), &[d]))
                .collect::<Result<Vec<_>, _>>()?;
            put(format!("{zoo}attention.qkv.weight"), concat_last(&weights));
            put(format!("{zoo}attention.qkv.bias"), concat_last(&biases));
            let layers = [
                ("attention.output.dense", "attention.proj", d, d),
                ("intermediate.dense", "feed_forward.fc", d, ff),
                ("output.dense", "feed_forward.out", ff, d),
            ];
            for (from, to, d_in, d_out) in layers {
                for (path, data) in linear(
                    tensors,
                    &format!("{hf}{from}"),
                    &format!("{zoo}{to}"),
                    d_in,
                    d_out,
                )? {
                    put(path, data);
                }
            }
            for (from, to) in [
                ("attention.output.LayerNorm", "attention_norm"),
                ("output.LayerNorm", "ff_norm"),
            ] {
                for (path, data) in norm(tensors, &format!("{hf}{from}"), &format!("{zoo}{to}"), d)?
                {
                    put(path, data);
                }
            }
        }

        let mut fresh = Vec::new();
        if tensors.contains(&format!("{p}pooler.dense.weight")) {
            for (path, data) in
                linear(tensors, &format!("{p}pooler.dense"), "encoder.pooler", d, d)?
            {
                put(path, data);
            }
        } else {
            fresh.push("encoder.pooler".to_string());
        }

        match (self.class.as_str(), self.task) {
            ("BertModel", _) => fresh.push("head.".into()),
            (_, BertTask::MaskedLm { next_sentence }) => {
                let head = "head.MaskedLm.";
                for (path, data) in linear(
                    tensors,
                    "cls.predictions.transform.dense",
                    &format!("{head}transform"),
                    d,
                    d,
                )? {
                    put(path, data);
                }
                for (path, data) in norm(
                    tensors,
                    "cls.predictions.transform.LayerNorm",
                    &format!("{head}norm"),
                    d,
                )? {
                    put(path, data);
                }
                put(
                    format!("{head}bias"),
                    tensors.take("cls.predictions.bias", &[c.vocab_size])?,
                );
                // The decoder is the word embeddings (tied) and its bias the one above.
                tensors.skip("cls.predictions.decoder.weight");
                tensors.skip("cls.predictions.decoder.bias");
                if next_sentence {
                    for (path, data) in linear(
                        tensors,
                        "cls.seq_relationship",
                        &format!("{head}next_sentence"),
                        d,
                        2,
                    )? {
                        put(path, data);
                    }
                }
            }
            (_, BertTask::Classification) => {
                for (path, data) in linear(
                    tensors,
                    "classifier",
                    "head.Classification.out",
                    d,
                    c.num_labels,
                )? {
                    put(path, data);
                }
            }
            (_, task) => unreachable!("{task:?} is not read from config.json"),
        }
        tensors.check_all_taken()?;
        let model = c.init(self.task, device)?;
        apply_named(model, named, &fresh)
    }
}

type Named = Vec<(String, burn::tensor::TensorData)>;

/// A PyTorch `nn.Linear` at `from` as the zoo's `Linear` at `to`.
fn linear(
    tensors: &mut HfTensors,
    from: &str,
    to: &str,
    d_in: usize,
    d_out: usize,
) -> Result<Named, String> {
    Ok(vec![
        (
            format!("{to}.weight"),
            tensors.linear(&format!("{from}.weight"), d_in, d_out)?,
        ),
        (
            format!("{to}.bias"),
            tensors.take(&format!("{from}.bias"), &[d_out])?,
        ),
    ])
}

/// A PyTorch `nn.LayerNorm` at `from` (`weight`, `bias`) as the zoo's LayerNorm at `to`.
fn norm(tensors: &mut HfTensors, from: &str, to: &str, d: usize) -> Result<Named, String> {
    Ok(vec![
        (
            format!("{to}.Layer.gamma"),
            tensors.take(&format!("{from}.weight"), &[d])?,
        ),
        (
            format!("{to}.Layer.beta"),
            tensors.take(&format!("{from}.bias"), &[d])?,
        ),
    ])
}
