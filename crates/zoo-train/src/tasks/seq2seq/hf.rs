//! A Hugging Face T5 or BART directory (`config.json`, `model.safetensors`, `tokenizer.json`)
//! as an encoder-decoder run: loaded directly (`init_from`, or any command given such a
//! directory) or written out as a zoo run directory by `zoo import`; and a transformer run in
//! T5's or BART's shape written as one by `zoo export`.

use crate::ZooError;
use crate::models::ModelConfig;
use crate::recipe::{Recipe, Task};
use crate::runtime::run_dir::{
    HF_CONFIG_FILE, TOKENIZER_FILE, imported_recipe, open_hf_dir, read_hf_config, write_hf_dir,
    write_imported_run,
};
use crate::tasks::seq2seq::data::languages;
use crate::tasks::seq2seq::model::Seq2SeqTrainer;
use crate::tasks::seq2seq::run::{Seq2SeqRun, load_seq2seq_run};
use crate::tasks::seq2seq::vocab::Vocabularies;
use burn::prelude::*;
use std::path::Path;
use zoo_seq2seq::Seq2Seq;
use zoo_seq2seq::hf::HfSeq2Seq;
use zoo_text::DatasetRegistry;

/// What an encoder-decoder loaded from a Hugging Face directory translates in `zoo eval`
/// unless `zoo import --dataset` says otherwise: Multi30k, English to German (T5's own
/// translation direction).
pub const IMPORTED_PAIRS: &str = "multi30k";

/// Reads the `config.json` of the T5 or BART in `dir`.
pub fn read_config(dir: &Path) -> Result<HfSeq2Seq, ZooError> {
    HfSeq2Seq::from_config(&read_hf_config(dir)?)
        .map_err(|e| ZooError::run_dir(dir, format!("{HF_CONFIG_FILE}: {e}")))
}

/// The T5 or BART in the Hugging Face directory `dir`, loaded onto `device` as a translation
/// run whose recipe names `dataset`. Sources are encoded as the model's tokenizer says (its
/// post-processor), and the decoder starts from the model's `decoder_start_token_id`. When
/// `config.json` gives a prefix for the dataset's direction
/// (`task_specific_params.translation_en_to_de.prefix`, as t5-small's does), the run puts it
/// before every source sentence.
pub fn load_hf_seq2seq(dir: &Path, dataset: &str, device: &Device) -> Result<Seq2SeqRun, ZooError> {
    let json = read_hf_config(dir)?;
    let mut hf = HfSeq2Seq::from_config(&json)
        .map_err(|e| ZooError::run_dir(dir, format!("{HF_CONFIG_FILE}: {e}")))?;
    let (tokenizer, mut tensors) = open_hf_dir(dir, hf.config.tgt_vocab_size)?;
    let tokens = hf.tokens;
    let model = hf
        .load(&mut tensors, device)
        .map_err(|e| ZooError::run_dir(dir, e))?;
    // After loading, which may find a T5's head untied (see `HfSeq2Seq::load`).
    let config = ModelConfig::Transformer(hf.config.clone());
    let mut recipe = imported_recipe(dir, Task::Translation, &config, dataset)?;
    recipe.data.source_specials = Some(tokenizer.has_post_processor());
    recipe.data.decoder_start = tokenizer.id_token(tokens.bos);
    let key = direction_key(&recipe)?;
    if let Some(prefix) = json["task_specific_params"][key]["prefix"].as_str() {
        recipe.data.source_prefix = prefix.to_string();
    }
    let vocab = Vocabularies::new(tokenizer, None, 0, recipe.data.decoder_start.as_deref())
        .map_err(|e| ZooError::run_dir(dir, e))?
        .configured(&recipe.data);
    if vocab.target_tokens != tokens {
        let ids = |t: zoo_seq2seq::DecodeTokens| format!("{}/{}/{}", t.pad, t.bos, t.eos);
        return Err(ZooError::run_dir(
            dir,
            format!(
                "{HF_CONFIG_FILE} gives pad/decoder start/end ids {}, but {TOKENIZER_FILE} has <pad>/{}/</s> at {}",
                ids(tokens),
                recipe.data.decoder_start.as_deref().unwrap_or("?"),
                ids(vocab.target_tokens)
            ),
        ));
    }
    Ok(Seq2SeqRun {
        vocab,
        recipe,
        config,
        model: Seq2Seq::Transformer(model),
        epoch: 0,
        run_dir: dir.to_path_buf(),
    })
}

/// The recipe's translation direction as `transformers` names a task: `translation_en_to_de`.
fn direction_key(recipe: &Recipe) -> Result<String, ZooError> {
    let (source, target) = languages(&DatasetRegistry::builtin(), recipe)?;
    Ok(format!("translation_{source}_to_{target}"))
}

/// Writes `run`, read from `hf_dir`, as a zoo run directory at `out`: its recipe, tokenizer and
/// its weights as the checkpoint of epoch 0.
pub fn write_seq2seq_run(run: Seq2SeqRun, hf_dir: &Path, out: &Path) -> Result<(), ZooError> {
    let module = Seq2SeqTrainer::new(run.model, &run.recipe);
    write_imported_run(
        out,
        hf_dir,
        &run.recipe,
        &run.config,
        &run.vocab.source,
        module,
    )
}

/// Writes the encoder-decoder run in `run_dir` (its last checkpoint, or `epoch`'s) as a Hugging
/// Face T5 (relative positions) or BART (learned positions) directory at `out`; returns the
/// class it is saved as. RNN runs, runs with separate source and target vocabularies and
/// transformers in shapes neither has are refused by name.
pub fn export_seq2seq_run(
    run_dir: &Path,
    epoch: Option<usize>,
    out: &Path,
    device: &Device,
) -> Result<String, ZooError> {
    let run = load_seq2seq_run(run_dir, epoch, device)?;
    let refused = |why: String| ZooError::run_dir(run_dir, format!("cannot be exported: {why}"));
    let (Seq2Seq::Transformer(model), ModelConfig::Transformer(config)) = (&run.model, &run.config)
    else {
        return Err(refused(format!(
            "model.arch = \"{}\": the zoo exports transformers in T5's or BART's shape",
            run.config.architecture().name
        )));
    };
    if !run.vocab.joint {
        return Err(refused(
            "separate source and target vocabularies: T5 and BART have one (share_embeddings = true)".into(),
        ));
    }
    let hf = HfSeq2Seq::for_export(config, run.vocab.target_tokens).map_err(refused)?;
    let tensors = hf
        .export(model)
        .map_err(|e| ZooError::run_dir(run_dir, e))?;
    let mut hf_config = hf.to_config();
    if !run.recipe.data.source_prefix.is_empty() {
        hf_config["task_specific_params"] = serde_json::json!({
            direction_key(&run.recipe)?: { "prefix": run.recipe.data.source_prefix }
        });
    }
    let token = |id: u32| run.vocab.source.id_token(id).unwrap_or_default();
    let (pad, eos) = (token(hf.tokens.pad), token(hf.tokens.eos));
    let tokenizer_config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config.max_len,
        "pad_token": pad,
        "eos_token": eos,
    });
    // transformers' tokenizer ends each input with </s> itself, as the zoo does (a tokenizer
    // that came with a model keeps its own special tokens).
    let tokenizer = run.vocab.source.clone().ending_with(&eos)?;
    write_hf_dir(out, &hf_config, &tensors, &tokenizer, &tokenizer_config)?;
    Ok(hf.class)
}
