//! A Hugging Face GPT-2 or Llama directory (`config.json`, `model.safetensors`,
//! `tokenizer.json`) as a language-model run: loaded directly (any command given such a
//! directory) or written out as a zoo run directory by `zoo import`; and a GPT run written as
//! one by `zoo export`.

use crate::ZooError;
use crate::models::ModelConfig;
use crate::recipe::Task;
use crate::runtime::run_dir::{
    HF_CONFIG_FILE, imported_recipe, open_hf_dir, read_hf_config, write_hf_dir, write_imported_run,
};
use crate::runtime::step::GradientStep;
use crate::tasks::lm::model::{Lm, LmModel};
use crate::tasks::lm::run::{LoadedRun, RunModel, load_run};
use burn::prelude::*;
use std::path::Path;
use zoo_gpt::hf::HfGpt;
use zoo_text::END_OF_TEXT;

/// Reads the `config.json` of the GPT-2 or Llama in `dir`.
pub fn read_config(dir: &Path) -> Result<HfGpt, ZooError> {
    HfGpt::from_config(&read_hf_config(dir)?)
        .map_err(|e| ZooError::run_dir(dir, format!("{HF_CONFIG_FILE}: {e}")))
}

/// The GPT-2 or Llama in the Hugging Face directory `dir`, loaded onto `device` as a
/// language-model run whose recipe names `dataset` (what `zoo eval` scores it on).
pub fn load_hf_lm(dir: &Path, dataset: &str, device: &Device) -> Result<LoadedRun, ZooError> {
    let hf = read_config(dir)?;
    let (tokenizer, mut tensors) = open_hf_dir(dir, hf.config.vocab_size)?;
    let gpt = hf
        .load(&mut tensors, device)
        .map_err(|e| ZooError::run_dir(dir, e))?;
    let config = ModelConfig::Gpt(hf.config);
    Ok(LoadedRun {
        recipe: imported_recipe(dir, Task::CausalLm, &config, dataset)?,
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
    let module = Lm::new(model, GradientStep::new(1));
    write_imported_run(
        out,
        hf_dir,
        &run.recipe,
        &run.config,
        &run.tokenizer,
        module,
    )
}

/// Writes the language-model run in `run_dir` (its last checkpoint, or `epoch`'s) as a Hugging
/// Face GPT-2 or Llama directory at `out`; returns the class it is saved as. Recurrent and
/// n-gram runs, and GPTs in shapes neither has, are refused by name.
pub fn export_lm_run(
    run_dir: &Path,
    epoch: Option<usize>,
    out: &Path,
    device: &Device,
) -> Result<String, ZooError> {
    let run = load_run(run_dir, epoch, device)?;
    let refused = |why: String| ZooError::run_dir(run_dir, format!("cannot be exported: {why}"));
    let RunModel::Neural(LmModel::Gpt(gpt)) = &run.model else {
        return Err(refused(format!(
            "model.arch = \"{}\": the zoo exports GPTs",
            run.config.architecture().name
        )));
    };
    let ModelConfig::Gpt(config) = &run.config else {
        unreachable!("a GPT's config");
    };
    let hf = HfGpt::for_export(config).map_err(refused)?;
    let tensors = hf.export(gpt).map_err(|e| ZooError::run_dir(run_dir, e))?;
    let eos = run.tokenizer.token_id(END_OF_TEXT);
    let mut tokenizer_config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config.block_size,
    });
    if eos.is_some() {
        tokenizer_config["eos_token"] = END_OF_TEXT.into();
        tokenizer_config["bos_token"] = END_OF_TEXT.into();
    }
    write_hf_dir(
        out,
        &hf.to_config(eos),
        &tensors,
        &run.tokenizer,
        &tokenizer_config,
    )?;
    Ok(hf.class)
}
