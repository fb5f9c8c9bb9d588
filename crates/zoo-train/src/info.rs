//! `zoo info`: what a preset or a recipe's model costs, from its shapes alone: parameters,
//! training FLOPs per token and per step, and the memory of weights, gradients and optimiser
//! state. A recipe whose vocabulary comes from its tokenizer has the tokenizer built as
//! training would build it.

use crate::ZooError;
use crate::dispatch::RunKind;
use crate::models::{ModelConfig, preset};
use crate::recipe::Recipe;
use crate::runtime::run_dir::{RECIPE_FILE, TOKENIZER_FILE, is_hugging_face_dir};
use crate::tasks::encoder;
use crate::tasks::seq2seq::vocab::added_tokens;
use std::path::Path;
use zoo_text::{DataDir, DatasetRegistry, ZooTokenizer};

/// The config of a preset name, a recipe file, a run directory or a Hugging Face model
/// directory, with the vocabulary size resolved, and the tokens per training sequence.
fn resolve(
    model: &str,
    vocab_size: Option<usize>,
    data_dir: &DataDir,
) -> Result<(String, ModelConfig, usize), ZooError> {
    let path = Path::new(model);
    if is_hugging_face_dir(path) {
        // Only BERT is imported so far; the message names the model_type otherwise.
        RunKind::of_hugging_face(path)?;
        let config = ModelConfig::Bert(encoder::hf::read_config(path)?.config);
        let seq_len = config.default_sequence_len();
        return Ok((model.to_string(), config, seq_len));
    }
    if path.is_dir() {
        let recipe = path.join(RECIPE_FILE);
        return resolve(&recipe.to_string_lossy(), vocab_size, data_dir);
    }
    let (label, mut config, recipe) =
        if path.extension().is_some_and(|e| e == "toml") || path.is_file() {
            let recipe = Recipe::load(path)?;
            let config = recipe
                .model_config()
                .map_err(|message| ZooError::recipe(path, message))?;
            (recipe.name().to_string(), config, Some(recipe))
        } else {
            (
                model.to_string(),
                preset(model).map_err(ZooError::Usage)?,
                None,
            )
        };
    if let Some(v) = vocab_size {
        config.set_vocab_size(v);
    }
    if config.vocab_size() == 0 {
        // The tokenizer decides: build it the way training would.
        let vocab = match &recipe {
            Some(recipe) if recipe.init_from.is_some() => {
                // A fine-tuning run takes the tokenizer of the run it starts from.
                let from = recipe.init_from.as_ref().expect("checked");
                ZooTokenizer::load(&from.join(TOKENIZER_FILE))?.vocab_size()
            }
            Some(recipe) => {
                let text = DatasetRegistry::builtin().load_split(
                    &recipe.data.dataset,
                    &recipe.data.train_split,
                    data_dir,
                )?;
                let spec = recipe.tokenizer_spec().map_err(ZooError::Usage)?;
                let added = if recipe.task.is_seq2seq() {
                    added_tokens(recipe.task)
                } else {
                    0
                };
                ZooTokenizer::build(spec, &text)?.vocab_size() + added
            }
            None => {
                return Err(ZooError::Usage(format!(
                    "preset '{model}' takes its vocabulary size from the tokenizer: pass --vocab-size N"
                )));
            }
        };
        config.set_vocab_size(vocab);
    }
    config.validate().map_err(ZooError::Usage)?;
    let seq_len = match &recipe {
        Some(recipe) => recipe.sequence_len(&config),
        None => config.default_sequence_len(),
    };
    Ok((label, config, seq_len))
}

/// `zoo info`: the shape, parameters, training FLOPs and training memory of `model` (a preset
/// name, a recipe file, a run directory or a Hugging Face directory), per step of `batch_size` sequences; the vocabulary size comes from
/// `vocab_size`, the model, or the tokenizer training would build.
pub fn describe(
    model: &str,
    vocab_size: Option<usize>,
    batch_size: usize,
    data_dir: &DataDir,
) -> Result<String, ZooError> {
    let (label, config, seq_len) = resolve(model, vocab_size, data_dir)?;
    let mut lines = Vec::new();
    let size = config.size();
    let mb = |bytes: usize| bytes as f64 / 1e6;
    let weights = 4 * size.total;
    lines.push(format!("model                {label}"));
    let flops_formula = match &config {
        ModelConfig::Gpt(config) => {
            lines.push(format!(
                "shape                {} layers, {} heads ({} kv), width {}, ff {}, block {}, vocab {}",
                config.n_layer,
                config.n_head,
                config.kv_heads(),
                config.n_embd,
                config.ff_width(),
                config.block_size,
                config.vocab_size
            ));
            lines.push(format!(
                "options              positions {:?}, norm {:?} ({:?}), activation {:?}, bias {}, tied {}, dropout {}",
                config.position,
                config.norm,
                config.norm_placement,
                config.activation,
                config.bias,
                config.tie_weights,
                config.dropout
            ));
            "6N + 12·L·d·T"
        }
        ModelConfig::Rnn(config) => {
            lines.push(format!(
                "shape                {:?}, {} layers x {} units, embedding {}, vocab {}",
                config.cell,
                config.n_layer,
                config.d_hidden,
                config.embed_width(),
                config.vocab_size
            ));
            lines.push(format!(
                "options              tied {}, dropout {}, bidirectional {}",
                config.tie_weights, config.dropout, config.bidirectional
            ));
            "6 x matrix parameters"
        }
        ModelConfig::Elmo(config) => {
            lines.push(format!(
                "shape                biLM {:?}, {} layers x {} units each way, embedding {}, vocab {}; task LSTM {} units each way",
                config.cell,
                config.n_layer,
                config.d_hidden,
                config.bilm().embed_width(),
                config.vocab_size,
                config.d_task
            ));
            lines.push(format!(
                "options              features {:?}, dropout {}; size counts no head",
                config.features, config.dropout
            ));
            "2 x frozen biLM matrix parameters + 6 x task matrix parameters"
        }
        ModelConfig::Bert(config) => {
            lines.push(format!(
                "shape                {} layers, {} heads, width {}, ff {}, max_len {}, vocab {}, {} segment types",
                config.n_layer,
                config.n_head,
                config.d_model,
                config.ff_width(),
                config.max_len,
                config.vocab_size,
                config.type_vocab_size
            ));
            lines.push(format!(
                "options              norm {:?}, activation {:?}, dropout {}; size counts the encoder and pooler (no head)",
                config.norm_placement, config.activation, config.dropout
            ));
            "6N + 12·L·d·T"
        }
        ModelConfig::Transformer(config) => {
            lines.push(format!(
                "shape                {} + {} layers, {} heads, width {}, ff {}, max_len {}, vocab {} -> {}",
                config.n_encoder_layers,
                config.n_decoder_layers,
                config.n_head,
                config.d_model,
                config.d_ff,
                config.max_len,
                config.src_vocab_size,
                config.tgt_vocab_size
            ));
            lines.push(format!(
                "options              positions {:?}, norm {:?} ({:?}), activation {:?}, bias {}, shared embeddings {}, tied output {}, dropout {}",
                config.position,
                config.norm,
                config.norm_placement,
                config.activation,
                config.bias,
                config.share_embeddings,
                config.tie_output,
                config.dropout
            ));
            "6 x matrix parameters, per source + target token"
        }
        ModelConfig::RnnAttention(config) => {
            lines.push(format!(
                "shape                bidirectional {:?} encoder 2 x {}, decoder {}, embeddings {}, {:?} attention, vocab {} -> {}",
                config.cell,
                config.d_encoder,
                config.d_decoder,
                config.d_embed,
                config.attention,
                config.src_vocab_size,
                config.tgt_vocab_size
            ));
            lines.push(format!(
                "options              tied output {}, dropout {}",
                config.tie_output, config.dropout
            ));
            "6 x matrix parameters, per source + target token"
        }
        ModelConfig::Ngram(config) => {
            lines.push(format!(
                "shape                interpolated modified Kneser-Ney, order {}, vocab {}",
                config.order, config.vocab_size
            ));
            lines.push(
                "training             one counting pass over the training split; no parameters"
                    .into(),
            );
            return Ok(lines.join("\n"));
        }
    };
    lines.push(format!(
        "parameters           {} total, {} non-embedding",
        size.total, size.non_embedding
    ));
    lines.push(format!(
        "training FLOPs       {:.3} MFLOP per token ({flops_formula}), {:.2} GFLOP per step of {} x {}",
        size.train_flops_per_token as f64 / 1e6,
        (size.train_flops_per_token * batch_size * seq_len) as f64 / 1e9,
        batch_size,
        seq_len
    ));
    // Gradients and optimiser state exist for what trains: an ELMo task model's biLM is frozen.
    let trained = 4 * match &config {
        ModelConfig::Elmo(c) => size.total - c.bilm().size().total,
        _ => size.total,
    };
    lines.push(format!(
        "training memory      weights {:.1} MB + gradients {:.1} MB + AdamW state {:.1} MB = {:.1} MB (f32, before activations)",
        mb(weights),
        mb(trained),
        mb(2 * trained),
        mb(weights + 3 * trained)
    ));
    Ok(lines.join("\n"))
}
