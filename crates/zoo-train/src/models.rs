//! The model table, at the bottom of `zoo-train`: what a recipe's `[model]` may name. Every
//! architecture with its family, presets and tasks ([`ARCHITECTURES`]), the resolved config of
//! any family ([`ModelConfig`], whose `size()` is the one [`ModelSize`] of every family), and the
//! resolution of `arch` + `preset` + field overrides into a config.
//!
//! Imports only the model crates: recipes, the runtime and the tasks build on it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zoo_bert::BertConfig;
use zoo_blocks::ModelSize;
use zoo_gpt::GptConfig;
use zoo_rnn::{ElmoConfig, RnnConfig};
use zoo_seq2seq::{RnnAttentionConfig, TransformerConfig};

/// What a run trains the model to do.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Predict the next token (GPT, RNN, n-gram).
    #[default]
    CausalLm,
    /// BERT pretraining: masked tokens, and the next sentence when `data.next_sentence` is set.
    MaskedLm,
    /// A label per sequence (from a labelled dataset).
    Classification,
    /// A label per token.
    TokenClassification,
    /// Answer span start and end.
    SpanQa,
    /// Map a source sequence to a target sequence (translation, synthetic tasks):
    /// encoder-decoders.
    Translation,
    /// T5's pretraining: restore the spans that sentinels replaced in a text.
    SpanCorruption,
    /// Train a student encoder on its `teacher`'s task (classification or masked-LM) to match
    /// the teacher's outputs (DistilBERT); the run is then a run of that task.
    Distillation,
}

impl Task {
    /// Whether the task trains an encoder (BERT).
    pub fn is_encoder(self) -> bool {
        matches!(
            self,
            Task::MaskedLm
                | Task::Classification
                | Task::TokenClassification
                | Task::SpanQa
                | Task::Distillation
        )
    }

    /// Whether the task trains an encoder-decoder.
    pub fn is_seq2seq(self) -> bool {
        matches!(self, Task::Translation | Task::SpanCorruption)
    }

    /// The recipe spelling.
    pub fn name(self) -> &'static str {
        match self {
            Task::CausalLm => "causal-lm",
            Task::MaskedLm => "masked-lm",
            Task::Classification => "classification",
            Task::TokenClassification => "token-classification",
            Task::SpanQa => "span-qa",
            Task::Translation => "translation",
            Task::SpanCorruption => "span-corruption",
            Task::Distillation => "distillation",
        }
    }
}

/// `[model]`: an architecture, a preset and field overrides. Stored resolved in a run directory.
/// (Unknown keys are caught when the overrides meet the config's fields.)
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// The family: `gpt`, `rnn` (LSTM/GRU language models), `ngram` (Kneser-Ney counts) or
    /// `bert` (encoders).
    #[serde(default = "default_arch")]
    pub arch: String,
    /// A named shape to start from.
    #[serde(default)]
    pub preset: Option<String>,
    /// Fields that replace the preset's.
    #[serde(flatten)]
    pub overrides: toml::Table,
}

impl ModelSpec {
    /// The fields this `[model]` states (all of a preset's, else the overrides) on which the run's
    /// config `ours` differs from `theirs`, a pretrained one, as `field = ours (the run has
    /// theirs)`. The `own` fields are the new run's to choose, and a vocabulary size of 0 is
    /// left to the tokenizer.
    pub fn mismatches(
        &self,
        ours: &ModelConfig,
        theirs: &ModelConfig,
        own: &[&str],
    ) -> Vec<String> {
        let (ours_arch, theirs_arch) = (ours.architecture().name, theirs.architecture().name);
        if ours_arch != theirs_arch {
            return vec![format!(
                "arch = \"{ours_arch}\" (the run is a \"{theirs_arch}\")"
            )];
        }
        let (ours, theirs) = (ours.to_spec().overrides, theirs.to_spec().overrides);
        let stated = |key: &str, value: &toml::Value| {
            (self.preset.is_some() || self.overrides.contains_key(key))
                && !own.contains(&key)
                && !(key.ends_with("vocab_size") && value.as_integer() == Some(0))
        };
        ours.iter()
            .filter(|(key, value)| stated(key, value) && theirs.get(*key) != Some(*value))
            .map(|(key, value)| {
                let theirs = theirs.get(key).map_or("nothing".into(), |v| v.to_string());
                format!("{key} = {value} (the run has {theirs})")
            })
            .collect()
    }
}

fn default_arch() -> String {
    "gpt".into()
}

/// One architecture a recipe can name as `model.arch`: its family, its presets and the tasks it
/// trains with. Recipes, `zoo info` and `zoo list` all read this one table.
pub struct Architecture {
    /// `model.arch` in a recipe.
    pub name: &'static str,
    /// What it is, in words, as messages name it.
    pub family: &'static str,
    /// Its named shapes.
    pub presets: &'static [&'static str],
    /// The tasks it trains with.
    pub tasks: &'static [Task],
    /// The weight matrices LoRA adapts when a recipe names none: the attention projections
    /// (the recurrent families: the input and recurrent matrices).
    pub lora_targets: &'static [&'static str],
    /// The config of one of its presets, by name.
    preset: fn(&str) -> Option<ModelConfig>,
    /// `[model]` resolved: the preset (or the family's defaults) with the overrides applied.
    resolve: fn(&ModelSpec) -> Result<ModelConfig, String>,
}

const ENCODER_TASKS: &[Task] = &[
    Task::MaskedLm,
    Task::Classification,
    Task::TokenClassification,
    Task::SpanQa,
    Task::Distillation,
];
const SEQ2SEQ_TASKS: &[Task] = &[Task::Translation, Task::SpanCorruption];

/// Every architecture, in the order listings show them.
pub const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        name: "gpt",
        family: "GPT",
        presets: zoo_gpt::PRESETS,
        tasks: &[Task::CausalLm, Task::Classification],
        lora_targets: &["qkv", "proj"],
        preset: |name| zoo_gpt::preset(name).map(ModelConfig::Gpt),
        resolve: |spec| {
            resolve_fields(spec, zoo_gpt::preset, zoo_gpt::PRESETS, "GPT").map(ModelConfig::Gpt)
        },
    },
    Architecture {
        name: "rnn",
        family: "recurrent",
        presets: zoo_rnn::PRESETS,
        tasks: &[Task::CausalLm],
        lora_targets: &["input", "recurrent"],
        preset: |name| zoo_rnn::preset(name).map(ModelConfig::Rnn),
        resolve: |spec| {
            resolve_fields(spec, zoo_rnn::preset, zoo_rnn::PRESETS, "recurrent")
                .map(ModelConfig::Rnn)
        },
    },
    Architecture {
        name: "elmo",
        family: "ELMo task model",
        presets: &[],
        tasks: &[Task::Classification, Task::TokenClassification],
        lora_targets: &[],
        preset: |_| None,
        resolve: |spec| {
            resolve_fields(spec, |_| None, &[], "ELMo task model").map(ModelConfig::Elmo)
        },
    },
    Architecture {
        name: "ngram",
        family: "n-gram",
        presets: &[],
        tasks: &[Task::CausalLm],
        lora_targets: &[],
        preset: |_| None,
        resolve: |spec| resolve_fields(spec, |_| None, &[], "n-gram").map(ModelConfig::Ngram),
    },
    Architecture {
        name: "bert",
        family: "BERT",
        presets: zoo_bert::PRESETS,
        tasks: ENCODER_TASKS,
        lora_targets: &["qkv", "proj"],
        preset: |name| zoo_bert::preset(name).map(ModelConfig::Bert),
        resolve: |spec| {
            resolve_fields(spec, zoo_bert::preset, zoo_bert::PRESETS, "BERT").map(ModelConfig::Bert)
        },
    },
    Architecture {
        name: "transformer",
        family: "transformer encoder-decoder",
        presets: zoo_seq2seq::TRANSFORMER_PRESETS,
        tasks: SEQ2SEQ_TASKS,
        lora_targets: &["qkv", "query", "key_value", "proj"],
        preset: |name| zoo_seq2seq::transformer_preset(name).map(ModelConfig::Transformer),
        resolve: |spec| {
            resolve_fields(
                spec,
                zoo_seq2seq::transformer_preset,
                zoo_seq2seq::TRANSFORMER_PRESETS,
                "transformer encoder-decoder",
            )
            .map(ModelConfig::Transformer)
        },
    },
    Architecture {
        name: "rnn-attention",
        family: "RNN encoder-decoder",
        presets: zoo_seq2seq::RNN_ATTENTION_PRESETS,
        tasks: SEQ2SEQ_TASKS,
        lora_targets: &["input", "recurrent"],
        preset: |name| zoo_seq2seq::rnn_attention_preset(name).map(ModelConfig::RnnAttention),
        resolve: |spec| {
            resolve_fields(
                spec,
                zoo_seq2seq::rnn_attention_preset,
                zoo_seq2seq::RNN_ATTENTION_PRESETS,
                "RNN encoder-decoder",
            )
            .map(ModelConfig::RnnAttention)
        },
    },
];

/// The architecture `name` (`model.arch`), if there is one.
pub fn architecture(name: &str) -> Option<&'static Architecture> {
    ARCHITECTURES.iter().find(|arch| arch.name == name)
}

impl Architecture {
    /// Its tasks as a recipe spells them: `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
    pub fn task_names(&self) -> String {
        let quoted: Vec<String> = self
            .tasks
            .iter()
            .map(|t| format!("\"{}\"", t.name()))
            .collect();
        match quoted.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

/// BPTT window of recurrent models when the recipe gives none (Zaremba et al.'s 35).
pub const DEFAULT_BPTT: usize = 35;

/// Tokens per encoder input unless `training.seq_len` says otherwise.
pub const DEFAULT_ENCODER_SEQ_LEN: usize = 128;

/// Tokens per encoder-decoder source (and target) unless `training.seq_len` says otherwise.
pub const DEFAULT_SEQ2SEQ_SEQ_LEN: usize = 128;

/// A resolved `[model]`: one family's config.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    /// A decoder-only transformer.
    Gpt(GptConfig),
    /// An LSTM or GRU language model.
    Rnn(RnnConfig),
    /// An interpolated Kneser-Ney n-gram model.
    Ngram(NgramConfig),
    /// A BERT encoder.
    Bert(BertConfig),
    /// A transformer encoder-decoder (or T5-style).
    Transformer(TransformerConfig),
    /// An RNN encoder-decoder with attention.
    RnnAttention(RnnAttentionConfig),
    /// A classifier or tagger on a frozen biLM's features.
    Elmo(ElmoConfig),
}

/// `[model]` of an n-gram baseline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NgramConfig {
    /// Longest n-gram counted (5: the classic KN5).
    pub order: usize,
    /// Vocabulary size; 0 means "take it from the tokenizer".
    pub vocab_size: usize,
}

impl Default for NgramConfig {
    fn default() -> Self {
        Self {
            order: 5,
            vocab_size: 0,
        }
    }
}

impl ModelConfig {
    /// Vocabulary size (0 until the tokenizer fills it in).
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Gpt(c) => c.vocab_size,
            ModelConfig::Rnn(c) => c.vocab_size,
            ModelConfig::Ngram(c) => c.vocab_size,
            ModelConfig::Bert(c) => c.vocab_size,
            ModelConfig::Transformer(c) => c.tgt_vocab_size,
            ModelConfig::RnnAttention(c) => c.tgt_vocab_size,
            ModelConfig::Elmo(c) => c.vocab_size,
        }
    }

    /// Whether this is an encoder-decoder.
    pub fn is_seq2seq(&self) -> bool {
        matches!(
            self,
            ModelConfig::Transformer(_) | ModelConfig::RnnAttention(_)
        )
    }

    /// Longest sequence the model takes (a recurrent LM has no limit).
    pub fn max_len(&self) -> usize {
        match self {
            ModelConfig::Gpt(c) => c.block_size,
            ModelConfig::Rnn(_) | ModelConfig::Ngram(_) | ModelConfig::Elmo(_) => usize::MAX,
            ModelConfig::Bert(c) => c.max_len,
            ModelConfig::Transformer(c) => c.max_len,
            ModelConfig::RnnAttention(c) => c.max_len,
        }
    }

    /// The dropout probability (an n-gram model has none).
    pub fn dropout_mut(&mut self) -> Option<&mut f64> {
        match self {
            ModelConfig::Gpt(c) => Some(&mut c.dropout),
            ModelConfig::Rnn(c) => Some(&mut c.dropout),
            ModelConfig::Ngram(_) => None,
            ModelConfig::Bert(c) => Some(&mut c.dropout),
            ModelConfig::Transformer(c) => Some(&mut c.dropout),
            ModelConfig::RnnAttention(c) => Some(&mut c.dropout),
            ModelConfig::Elmo(c) => Some(&mut c.dropout),
        }
    }

    /// Layers `training.freeze_layers` counts: a GPT's blocks, a recurrent LM's or encoder's
    /// layers, an encoder-decoder's encoder layers (an RNN encoder-decoder has one).
    pub fn freezable_layers(&self) -> usize {
        match self {
            ModelConfig::Gpt(c) => c.n_layer,
            ModelConfig::Rnn(c) => c.n_layer,
            ModelConfig::Ngram(_) => 0,
            ModelConfig::Bert(c) => c.n_layer,
            ModelConfig::Transformer(c) => c.n_encoder_layers,
            ModelConfig::RnnAttention(_) => 1,
            // The biLM is frozen whole; the task model trains whole.
            ModelConfig::Elmo(_) => 0,
        }
    }

    /// Sets the vocabulary size.
    pub fn set_vocab_size(&mut self, vocab_size: usize) {
        match self {
            ModelConfig::Gpt(c) => c.vocab_size = vocab_size,
            ModelConfig::Rnn(c) => c.vocab_size = vocab_size,
            ModelConfig::Ngram(c) => c.vocab_size = vocab_size,
            ModelConfig::Bert(c) => c.vocab_size = vocab_size,
            ModelConfig::Transformer(c) => {
                (c.src_vocab_size, c.tgt_vocab_size) = (vocab_size, vocab_size)
            }
            ModelConfig::RnnAttention(c) => {
                (c.src_vocab_size, c.tgt_vocab_size) = (vocab_size, vocab_size)
            }
            ModelConfig::Elmo(c) => c.vocab_size = vocab_size,
        }
    }

    /// Checks that the shapes fit together.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ModelConfig::Gpt(c) => c.validate(),
            ModelConfig::Rnn(c) => c.validate(),
            ModelConfig::Ngram(c) if !(1..=10).contains(&c.order) => {
                Err(format!("order must be in 1..=10, got {}", c.order))
            }
            ModelConfig::Ngram(_) => Ok(()),
            ModelConfig::Bert(c) => c.validate(),
            ModelConfig::Transformer(c) => c.validate(),
            ModelConfig::RnnAttention(c) => c.validate(),
            ModelConfig::Elmo(c) => c.validate(),
        }
    }

    /// Parameter counts and training FLOPs per token (a GPT's at full context).
    pub fn size(&self) -> ModelSize {
        match self {
            ModelConfig::Gpt(c) => c.size(),
            ModelConfig::Rnn(c) => c.size(),
            // Counts, not parameters.
            ModelConfig::Ngram(_) => ModelSize {
                total: 0,
                non_embedding: 0,
                train_flops_per_token: 0,
            },
            ModelConfig::Bert(c) => c.size(self.default_sequence_len()),
            ModelConfig::Transformer(c) => c.size(),
            ModelConfig::RnnAttention(c) => c.size(),
            ModelConfig::Elmo(c) => c.size(),
        }
    }

    /// Width of the model's hidden states (what the Noam schedule scales by).
    pub fn width(&self) -> usize {
        match self {
            ModelConfig::Gpt(c) => c.n_embd,
            ModelConfig::Rnn(c) => c.d_hidden,
            ModelConfig::Ngram(_) => 1,
            ModelConfig::Bert(c) => c.d_model,
            ModelConfig::Transformer(c) => c.d_model,
            ModelConfig::RnnAttention(c) => c.d_decoder,
            ModelConfig::Elmo(c) => c.d_task,
        }
    }

    /// Its entry in [`ARCHITECTURES`].
    pub fn architecture(&self) -> &'static Architecture {
        let name = match self {
            ModelConfig::Gpt(_) => "gpt",
            ModelConfig::Rnn(_) => "rnn",
            ModelConfig::Ngram(_) => "ngram",
            ModelConfig::Bert(_) => "bert",
            ModelConfig::Transformer(_) => "transformer",
            ModelConfig::RnnAttention(_) => "rnn-attention",
            ModelConfig::Elmo(_) => "elmo",
        };
        architecture(name).expect("every config has a row in the table")
    }

    /// Tokens per training sequence when the recipe does not say: a GPT's block size, a
    /// recurrent model's BPTT window ([`DEFAULT_BPTT`]), an encoder's or encoder-decoder's
    /// default input length (at most its `max_len`), an n-gram model's order.
    pub fn default_sequence_len(&self) -> usize {
        match self {
            ModelConfig::Gpt(c) => c.block_size,
            ModelConfig::Rnn(_) => DEFAULT_BPTT,
            ModelConfig::Ngram(c) => c.order,
            ModelConfig::Bert(c) => DEFAULT_ENCODER_SEQ_LEN.min(c.max_len),
            ModelConfig::Elmo(_) => DEFAULT_ENCODER_SEQ_LEN,
            ModelConfig::Transformer(_) | ModelConfig::RnnAttention(_) => {
                DEFAULT_SEQ2SEQ_SEQ_LEN.min(self.max_len())
            }
        }
    }

    /// The `[model]` table that resolves to this config (`arch` and every field).
    pub fn to_spec(&self) -> ModelSpec {
        let overrides = match self {
            ModelConfig::Gpt(c) => toml::Table::try_from(c),
            ModelConfig::Rnn(c) => toml::Table::try_from(c),
            ModelConfig::Ngram(c) => toml::Table::try_from(c),
            ModelConfig::Bert(c) => toml::Table::try_from(c),
            ModelConfig::Transformer(c) => toml::Table::try_from(c),
            ModelConfig::RnnAttention(c) => toml::Table::try_from(c),
            ModelConfig::Elmo(c) => toml::Table::try_from(c),
        };
        ModelSpec {
            arch: self.architecture().name.into(),
            preset: None,
            overrides: overrides.expect("configs serialise to TOML"),
        }
    }
}

/// Applies `[model]` to its family's preset and checks every key against the config's fields.
pub fn resolve_model(spec: &ModelSpec) -> Result<ModelConfig, String> {
    let arch = architecture(&spec.arch).ok_or_else(|| {
        let names: Vec<&str> = ARCHITECTURES.iter().map(|a| a.name).collect();
        format!(
            "model.arch = \"{}\" is not available; architectures: {}",
            spec.arch,
            names.join(", ")
        )
    })?;
    let config = (arch.resolve)(spec)?;
    // The shapes must fit even before the tokenizer fills in a vocabulary size of 0.
    let mut placeholder = config.clone();
    placeholder.set_vocab_size(config.vocab_size().max(1));
    placeholder
        .validate()
        .map_err(|e| format!("[model]: {e}"))?;
    Ok(config)
}

/// The config of preset `name` of any architecture.
pub fn preset(name: &str) -> Result<ModelConfig, String> {
    ARCHITECTURES
        .iter()
        .find_map(|arch| (arch.preset)(name))
        .ok_or_else(|| {
            let all: Vec<&str> = ARCHITECTURES
                .iter()
                .flat_map(|arch| arch.presets.iter().copied())
                .collect();
            format!("unknown preset '{name}'; presets: {}", all.join(", "))
        })
}

/// `spec`'s preset of one family (or the family's default config), with the overrides applied;
/// an override that is not a field of the config, or has the wrong type, is named.
fn resolve_fields<C>(
    spec: &ModelSpec,
    preset: fn(&str) -> Option<C>,
    presets: &[&str],
    family: &str,
) -> Result<C, String>
where
    C: Serialize + DeserializeOwned + Default,
{
    let base = match &spec.preset {
        Some(name) => preset(name).ok_or_else(|| {
            format!(
                "model.preset = \"{name}\" is not a {family} preset; presets: {}",
                presets.join(", ")
            )
        })?,
        None => C::default(),
    };
    let base_table = toml::Table::try_from(&base).expect("configs serialise to TOML");
    let with = |overrides: &mut dyn Iterator<Item = (&String, &toml::Value)>| {
        let mut table = base_table.clone();
        for (key, value) in overrides {
            table.insert(key.clone(), value.clone());
        }
        table.try_into::<C>()
    };
    with(&mut spec.overrides.iter()).map_err(|e| {
        // Serde's message may not say which key; find the override that fails on its own.
        let culprit = spec
            .overrides
            .iter()
            .find(|(key, value)| with(&mut std::iter::once((*key, *value))).is_err());
        match culprit {
            Some((key, _)) => format!("model.{key}: {}", e.message()),
            None => format!("[model]: {}", e.message()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_resolves_to_a_config_of_its_own_row() {
        for arch in ARCHITECTURES {
            for name in arch.presets {
                let config = preset(name).unwrap();
                assert_eq!(config.architecture().name, arch.name, "{name}");
                let spec = ModelSpec {
                    arch: arch.name.into(),
                    preset: Some(name.to_string()),
                    overrides: toml::Table::new(),
                };
                assert_eq!(resolve_model(&spec).unwrap(), config, "{name}");
            }
            // The family's defaults, with no preset, belong to the row too.
            let spec = ModelSpec {
                arch: arch.name.into(),
                preset: None,
                overrides: toml::Table::new(),
            };
            let config = resolve_model(&spec).unwrap();
            assert_eq!(config.architecture().name, arch.name);
            assert_eq!(resolve_model(&config.to_spec()).unwrap(), config);
        }
        let e = preset("gpt-giant").unwrap_err();
        assert!(e.contains("gpt-nano") && e.contains("bert-tiny"), "{e}");
    }

    #[test]
    fn task_names_read_as_a_list() {
        let names = |arch: &str| architecture(arch).unwrap().task_names();
        assert_eq!(names("gpt"), "\"causal-lm\" or \"classification\"");
        assert_eq!(
            names("transformer"),
            "\"translation\" or \"span-corruption\""
        );
        assert_eq!(
            names("bert"),
            "\"masked-lm\", \"classification\", \"token-classification\", \"span-qa\" or \"distillation\""
        );
    }
}
