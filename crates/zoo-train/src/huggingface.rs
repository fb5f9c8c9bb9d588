//! Hugging Face model directories (`config.json`, `model.safetensors`, `tokenizer.json`) in and
//! out. `zoo import` writes one out as a zoo run directory, so that every command works on it as
//! on a run trained here; `zoo export` writes a run as one that `transformers` loads. The
//! architecture comes from `config.json` (or the run's recipe); the task module of that kind of
//! model maps the weights.

use crate::ZooError;
use crate::dispatch::RunKind;
use crate::recipe::Recipe;
use crate::runtime::run_dir::{
    IMPORTED_DATASET, RECIPE_FILE, is_hugging_face_dir, load_run_recipe, locate_model,
};
use crate::tasks::{encoder, lm, seq2seq};
use burn::module::Module;
use burn::tensor::Device;
use std::path::{Path, PathBuf};

/// What `zoo import` did.
#[derive(Clone, Debug)]
pub struct ImportReport {
    /// Where the model was read from (a model id's snapshot in the Hugging Face cache).
    pub source: PathBuf,
    /// The run directory written.
    pub run_dir: PathBuf,
    /// The checkpoint's class (`BertForMaskedLM`, ...).
    pub class: String,
    /// The zoo task the run has.
    pub task: String,
    /// Parameters read.
    pub parameters: usize,
    /// Label names, for a classifier.
    pub labels: Vec<String>,
}

/// Imports the Hugging Face model in `hf_dir` (a directory, or a model id looked up in the local
/// Hugging Face cache and downloaded there if missing) into the run directory `out`; `dataset`
/// is what `zoo eval` will score the run on (default: the embedded corpus).
pub fn import(
    hf_dir: &Path,
    out: &Path,
    dataset: Option<&str>,
    device: &Device,
) -> Result<ImportReport, ZooError> {
    let hf_dir = &locate_model(hf_dir)?;
    if !is_hugging_face_dir(hf_dir) {
        return Err(ZooError::run_dir(
            hf_dir,
            "is not a Hugging Face model directory (config.json, model.safetensors, tokenizer.json)",
        ));
    }
    if out.join(RECIPE_FILE).exists() {
        return Err(ZooError::run_dir(
            out,
            "already holds a run: import into a new directory",
        ));
    }
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned());
    let report =
        |class: String, recipe: &Recipe, parameters: usize, labels: Vec<String>| ImportReport {
            source: hf_dir.clone(),
            run_dir: out.to_path_buf(),
            class,
            task: recipe.task.name().to_string(),
            parameters,
            labels,
        };
    match RunKind::of_hugging_face(hf_dir)? {
        RunKind::Encoder => {
            let class = encoder::hf::read_config(hf_dir)?.class;
            let dataset = dataset.unwrap_or(IMPORTED_DATASET);
            let mut run = encoder::hf::load_hf_encoder(hf_dir, dataset, device)?;
            run.recipe.name = name;
            let report = report(
                class,
                &run.recipe,
                run.model.num_params(),
                run.labels.clone(),
            );
            encoder::hf::write_encoder_run(run, hf_dir, out)?;
            Ok(report)
        }
        RunKind::LanguageModel => {
            let class = lm::hf::read_config(hf_dir)?.class;
            let dataset = dataset.unwrap_or(IMPORTED_DATASET);
            let mut run = lm::hf::load_hf_lm(hf_dir, dataset, device)?;
            run.recipe.name = name;
            let report = report(class, &run.recipe, run.config.size().total, Vec::new());
            lm::hf::write_lm_run(run, hf_dir, out)?;
            Ok(report)
        }
        RunKind::EncoderDecoder => {
            let class = seq2seq::hf::read_config(hf_dir)?.class;
            let dataset = dataset.unwrap_or(seq2seq::hf::IMPORTED_PAIRS);
            let mut run = seq2seq::hf::load_hf_seq2seq(hf_dir, dataset, device)?;
            run.recipe.name = name;
            let report = report(class, &run.recipe, run.config.size().total, Vec::new());
            seq2seq::hf::write_seq2seq_run(run, hf_dir, out)?;
            Ok(report)
        }
    }
}

/// What `zoo export` wrote.
#[derive(Clone, Debug)]
pub struct ExportReport {
    /// The Hugging Face directory written.
    pub out: PathBuf,
    /// The class `transformers` loads it as.
    pub class: String,
}

/// Writes the run in `run_dir` (its last checkpoint, or `epoch`'s) as a Hugging Face model
/// directory at `out`. A model no Hugging Face class expresses is refused, naming the option.
pub fn export(
    run_dir: &Path,
    epoch: Option<usize>,
    out: &Path,
    device: &Device,
) -> Result<ExportReport, ZooError> {
    if is_hugging_face_dir(run_dir) {
        return Err(ZooError::run_dir(
            run_dir,
            "is a Hugging Face directory already: export a run directory",
        ));
    }
    if out.join(RECIPE_FILE).exists() || out.join(crate::runtime::run_dir::HF_CONFIG_FILE).exists()
    {
        return Err(ZooError::run_dir(
            out,
            "already holds a model: export into a new directory",
        ));
    }
    let class = match RunKind::of(&load_run_recipe(run_dir)?) {
        RunKind::Encoder => encoder::hf::export_encoder_run(run_dir, epoch, out, device)?,
        RunKind::LanguageModel => lm::hf::export_lm_run(run_dir, epoch, out, device)?,
        RunKind::EncoderDecoder => seq2seq::hf::export_seq2seq_run(run_dir, epoch, out, device)?,
    };
    Ok(ExportReport {
        out: out.to_path_buf(),
        class,
    })
}
