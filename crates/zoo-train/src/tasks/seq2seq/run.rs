//! A trained encoder-decoder run, loaded back from its directory for decoding.

use crate::ZooError;
use crate::models::ModelConfig;
use crate::recipe::Recipe;
use crate::runtime::run_dir::{load_checkpoint, load_run_config, select_checkpoint};
use crate::tasks::seq2seq::model::Seq2SeqTrainer;
use crate::tasks::seq2seq::vocab::Vocabularies;
use burn::prelude::*;
use std::path::{Path, PathBuf};
use zoo_seq2seq::Seq2Seq;

/// Builds the model of `config` with fresh weights.
pub fn init_model(config: &ModelConfig, device: &Device) -> Result<Seq2Seq, String> {
    Ok(match config {
        ModelConfig::Transformer(c) => Seq2Seq::Transformer(c.init(device)?),
        ModelConfig::RnnAttention(c) => Seq2Seq::Rnn(c.init(device)?),
        _ => return Err("not an encoder-decoder".into()),
    })
}

/// A trained encoder-decoder run, loaded on the plain device.
pub struct Seq2SeqRun {
    /// Its resolved recipe.
    pub recipe: Recipe,
    /// Its model config.
    pub config: ModelConfig,
    /// Its tokenizers.
    pub vocab: Vocabularies,
    /// The model.
    pub model: Seq2Seq,
    /// The checkpoint's epoch.
    pub epoch: usize,
    /// The run directory.
    pub run_dir: PathBuf,
}

/// Loads an encoder-decoder run's last checkpoint (or `epoch`'s).
pub fn load_seq2seq_run(
    run_dir: &Path,
    epoch: Option<usize>,
    device: &Device,
) -> Result<Seq2SeqRun, ZooError> {
    let run_error = |message: String| ZooError::run_dir(run_dir, message);
    let (recipe, config) = load_run_config(run_dir)?;
    let vocab = Vocabularies::load(run_dir, &recipe)?;
    let epoch = select_checkpoint(run_dir, epoch)?;
    let mut model = init_model(&config, device).map_err(run_error)?;
    if recipe.finetune.lora() {
        model = super::adapted_model(run_dir, &recipe, model, device)?;
    }
    let trainer = load_checkpoint(run_dir, epoch, Seq2SeqTrainer::new(model, &recipe))?;
    // A LoRA run's adapters merged into its base's weights (the model a user runs or
    // exports); other models are as they were.
    let model = trainer.model.materialize();
    Ok(Seq2SeqRun {
        recipe,
        config,
        vocab,
        model,
        epoch,
        run_dir: run_dir.to_path_buf(),
    })
}
