//! A Hugging Face GPT-2 directory (`config.json`, `model.safetensors`, `tokenizer.json`) as a
//! language-model run: loaded directly (any command given such a directory) or written out as a
//! zoo run directory by `zoo import`.

use crate::ZooError;
use crate::models::ModelConfig;
use crate::recipe::Task;
use crate::runtime::run_dir::{
    HF_CONFIG_FILE, imported_recipe, open_hf_dir, read_hf_config, write_imported_run,
};
use crate::runtime::step::GradientStep;
use crate::tasks::lm::model::{Lm, LmModel};
use crate::tasks::lm::run::{LoadedRun, RunModel};
use burn::prelude::*;
use std::path::Path;
use zoo_gpt::hf::HfGpt2;

/// Reads the `config.json` of the GPT-2 in `dir`.
pub fn read_config(dir: &Path) -> Result<HfGpt2, ZooError> {
    HfGpt2::from_config(&read_hf_config(dir)?)
        .map_err(|e| ZooError::run_dir(dir, format!("{HF_CONFIG_FILE}: {e}")))
}

/// The GPT-2 in the Hugging Face directory `dir`, loaded onto `device` as a language-model run
/// whose recipe names `dataset` (what `zoo eval` scores it on).
pub fn load_hf_lm(dir: &Path, dataset: &str, device: &Device) -> Result<LoadedRun, ZooError> {
    let hf = read_config(dir)?;
    let (tokenizer, mut tensors) = open_hf_dir(dir, hf.config.vocab_size)?;
    let gpt = hf
        .load(&mut tensors, device)
        .map_err(|e| ZooError::run_dir(dir, e))?;
    let name = dir
        .file_name()
        .map_or("imported".into(), |n| n.to_string_lossy().into_owned());
    let config = ModelConfig::Gpt(hf.config);
    Ok(LoadedRun {
        recipe: imported_recipe(&name, Task::CausalLm, &config, dataset)?,
        config,
        tokenizer,
        model: RunModel::Neural(LmModel::Gpt(gpt)),
        epoch: 0,
        steps: 0,
    })
}

/// Writes `run`, read from `hf_dir`, as a zoo run directory at `out`: its recipe, tokenizer and
/// its weights as the checkpoint of epoch 0.
pub fn write_lm_run(run: LoadedRun, hf_dir: &Path, out: &Path) -> Result<(), ZooError> {
    let RunModel::Neural(model) = run.model else {
        unreachable!("imported language models are networks");
    };
    let module = Lm::new(model, GradientStep::new(1, 0.0));
    write_imported_run(
        out,
        hf_dir,
        &run.recipe,
        &run.config,
        &run.tokenizer,
        module,
    )
}
