//! BERT and Hugging Face checkpoints, both ways: `config.json` read into a [`BertConfig`] and a
//! task (and written from them), `model.safetensors` read into a [`BertModel`] (and written from
//! one). Covers the classes people publish BERTs as: `BertModel` (bare encoders, such as the
//! MiniLM sentence encoders), `BertForMaskedLM`, `BertForPreTraining` (masked-LM and
//! next-sentence heads) and `BertForSequenceClassification`.
//!
//! Hugging Face keeps query, key and value as three projections; the zoo's attention has one
//! fused projection, so the three are joined (queries, then keys, then values, each head's
//! columns together, as the zoo's attention splits them). One table of [`Link`]s says how each
//! parameter and the checkpoint's tensors correspond, and serves import and export alike.

use crate::model::{BertConfig, BertModel, BertTask};
use burn::tensor::{Device, TensorData};
use serde_json::{Value, json};
use zoo_blocks::hf::{HfTensors, Link, apply_named, module_tensors, write_links};
use zoo_blocks::{Activation, NormPlacement};

/// A Hugging Face BERT: its shape, task and class.
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

    /// The Hugging Face class a zoo BERT of `config` trained for `task` exports as; an option
    /// no Hugging Face BERT class expresses is refused by name.
    pub fn for_export(
        config: &BertConfig,
        task: BertTask,
        labels: Vec<String>,
    ) -> Result<Self, String> {
        if config.norm_placement != NormPlacement::Post {
            return Err(
                "norm_placement = \"pre\": Hugging Face's BERT normalises after each block".into(),
            );
        }
        if config.activation != Activation::Gelu {
            return Err(format!(
                "activation = {:?}: Hugging Face's BERT heads use exact GELU",
                config.activation
            ));
        }
        let class = match task {
            BertTask::MaskedLm {
                next_sentence: false,
            } => "BertForMaskedLM",
            BertTask::MaskedLm {
                next_sentence: true,
            } => "BertForPreTraining",
            BertTask::Classification => "BertForSequenceClassification",
            BertTask::TokenClassification | BertTask::SpanQa => {
                return Err(format!(
                    "a {task:?} head: the zoo exports masked-LM and sequence-classification BERTs"
                ));
            }
        };
        Ok(Self {
            config: config.clone(),
            task,
            class: class.into(),
            labels,
        })
    }

    /// The `config.json` that `transformers` builds this BERT from; `pad_id` is the
    /// tokenizer's `[PAD]`.
    pub fn to_config(&self, pad_id: u32) -> Value {
        let c = &self.config;
        let mut config = json!({
            "architectures": [self.class],
            "model_type": "bert",
            "vocab_size": c.vocab_size,
            "hidden_size": c.d_model,
            "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head,
            "intermediate_size": c.ff_width(),
            "hidden_act": "gelu",
            "hidden_dropout_prob": c.dropout,
            "attention_probs_dropout_prob": c.dropout,
            "max_position_embeddings": c.max_len,
            "type_vocab_size": c.type_vocab_size,
            "layer_norm_eps": c.layer_norm_eps,
            "initializer_range": 0.02,
            "position_embedding_type": "absolute",
            "pad_token_id": pad_id,
            "tie_word_embeddings": true,
        });
        if self.task == BertTask::Classification {
            let names: Vec<String> = (0..c.num_labels)
                .map(|i| {
                    self.labels
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("LABEL_{i}"))
                })
                .collect();
            config["id2label"] = names
                .iter()
                .enumerate()
                .map(|(i, name)| (i.to_string(), Value::from(name.clone())))
                .collect::<serde_json::Map<_, _>>()
                .into();
            config["label2id"] = names
                .iter()
                .enumerate()
                .map(|(i, name)| (name.clone(), Value::from(i)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        config
    }

    /// How the checkpoint's tensors (the encoder under `prefix`) and the model's parameters
    /// correspond; `pooler` says whether the checkpoint has one, `head` whether it has the
    /// task's head.
    fn links(&self, prefix: &str, pooler: bool, head: bool) -> Vec<Link> {
        let c = &self.config;
        let (d, ff) = (c.d_model, c.ff_width());
        let e = format!("{prefix}embeddings.");
        let mut links = vec![
            Link::same(
                format!("{e}word_embeddings.weight"),
                "encoder.embeddings.tokens.weight",
                &[c.vocab_size, d],
            ),
            Link::same(
                format!("{e}position_embeddings.weight"),
                "encoder.embeddings.positions.weight",
                &[c.max_len, d],
            ),
            Link::same(
                format!("{e}token_type_embeddings.weight"),
                "encoder.embeddings.segments.weight",
                &[c.type_vocab_size, d],
            ),
        ];
        links.extend(Link::layer_norm(
            &format!("{e}LayerNorm"),
            "encoder.embeddings.norm",
            d,
        ));
        for i in 0..c.n_layer {
            let hf = format!("{prefix}encoder.layer.{i}.");
            let zoo = format!("encoder.layers.{i}.");
            let qkv: Vec<String> = ["query", "key", "value"]
                .iter()
                .map(|name| format!("{hf}attention.self.{name}"))
                .collect();
            links.extend(Link::joined_linear(
                &qkv,
                &format!("{zoo}attention.qkv"),
                d,
                d,
            ));
            let layers = [
                ("attention.output.dense", "attention.proj", d, d),
                ("intermediate.dense", "feed_forward.fc", d, ff),
                ("output.dense", "feed_forward.out", ff, d),
            ];
            for (from, to, d_in, d_out) in layers {
                links.extend(Link::linear(
                    &format!("{hf}{from}"),
                    &format!("{zoo}{to}"),
                    d_in,
                    d_out,
                ));
            }
            links.extend(Link::layer_norm(
                &format!("{hf}attention.output.LayerNorm"),
                &format!("{zoo}attention_norm"),
                d,
            ));
            links.extend(Link::layer_norm(
                &format!("{hf}output.LayerNorm"),
                &format!("{zoo}ff_norm"),
                d,
            ));
        }
        if pooler {
            links.extend(Link::linear(
                &format!("{prefix}pooler.dense"),
                "encoder.pooler",
                d,
                d,
            ));
        }
        if !head {
            return links;
        }
        match self.task {
            BertTask::MaskedLm { next_sentence } => {
                let zoo = "head.MaskedLm.";
                links.extend(Link::linear(
                    "cls.predictions.transform.dense",
                    &format!("{zoo}transform"),
                    d,
                    d,
                ));
                links.extend(Link::layer_norm(
                    "cls.predictions.transform.LayerNorm",
                    &format!("{zoo}norm"),
                    d,
                ));
                links.push(Link::same(
                    "cls.predictions.bias",
                    format!("{zoo}bias"),
                    &[c.vocab_size],
                ));
                if next_sentence {
                    links.extend(Link::linear(
                        "cls.seq_relationship",
                        &format!("{zoo}next_sentence"),
                        d,
                        2,
                    ));
                }
            }
            BertTask::Classification => links.extend(Link::linear(
                "classifier",
                "head.Classification.out",
                d,
                c.num_labels,
            )),
            task => unreachable!("{task:?} is neither read from nor written to config.json"),
        }
        links
    }

    /// The model, on `device`, with the checkpoint's weights. A bare encoder's head, and the
    /// pooler of a masked-LM checkpoint (which has none), keep their fresh weights; a tensor the
    /// file lacks, has in another shape, or has that the model has no place for is an error
    /// naming it.
    pub fn load(&self, tensors: &mut HfTensors, device: &Device) -> Result<BertModel, String> {
        // Task classes keep the encoder under `bert.`; a bare BertModel has no prefix.
        let prefix = if tensors.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let pooler = tensors.contains(&format!("{prefix}pooler.dense.weight"));
        let head = self.class != "BertModel";
        let named = tensors.read_links(&self.links(prefix, pooler, head))?;
        // Buffers, not weights; and the masked-LM decoder is the word embeddings (tied), its
        // bias the one read above.
        for name in [
            format!("{prefix}embeddings.position_ids"),
            format!("{prefix}embeddings.token_type_ids"),
            "cls.predictions.decoder.weight".into(),
            "cls.predictions.decoder.bias".into(),
        ] {
            tensors.skip(&name);
        }
        tensors.check_all_taken()?;
        let mut fresh = Vec::new();
        if !pooler {
            fresh.push("encoder.pooler".to_string());
        }
        if !head {
            fresh.push("head.".to_string());
        }
        apply_named(self.config.init(self.task, device)?, named, &fresh)
    }

    /// The checkpoint's tensors of `model`, named as this class names them. A masked-LM
    /// model's pooler is left out: `BertForMaskedLM` has none (masked-LM training never
    /// reaches it).
    pub fn export(&self, model: &BertModel) -> Result<Vec<(String, TensorData)>, String> {
        let pooler = self.class != "BertForMaskedLM";
        write_links(&module_tensors(model)?, &self.links("bert.", pooler, true))
    }
}
