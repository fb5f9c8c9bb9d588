//! `zoo import`: a Hugging Face model directory (`config.json`, `model.safetensors`,
//! `tokenizer.json`) written out as a zoo run directory, so that every command works on it as on
//! a run trained here. The architecture comes from `config.json`; the task module of that kind
//! of model reads the weights.

use crate::ZooError;
use crate::dispatch::RunKind;
use crate::runtime::run_dir::{IMPORTED_DATASET, RECIPE_FILE, is_hugging_face_dir};
use crate::tasks::{encoder, lm};
use burn::module::Module;
use burn::tensor::Device;
use std::path::{Path, PathBuf};

/// What `zoo import` did.
#[derive(Clone, Debug)]
pub struct ImportReport {
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

/// Imports the Hugging Face model in `hf_dir` into the run directory `out`; `dataset` is what
/// `zoo eval` will score the run on (default: the embedded corpus).
pub fn import(
    hf_dir: &Path,
    out: &Path,
    dataset: Option<&str>,
    device: &Device,
) -> Result<ImportReport, ZooError> {
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
    match RunKind::of_hugging_face(hf_dir)? {
        RunKind::Encoder => {
            let class = encoder::hf::read_config(hf_dir)?.class;
            let dataset = dataset.unwrap_or(IMPORTED_DATASET);
            let mut run = encoder::hf::load_hf_encoder(hf_dir, dataset, device)?;
            run.recipe.name = out.file_name().map(|n| n.to_string_lossy().into_owned());
            let report = ImportReport {
                run_dir: out.to_path_buf(),
                class,
                task: run.recipe.task.name().to_string(),
                parameters: run.model.num_params(),
                labels: run.labels.clone(),
            };
            encoder::hf::write_encoder_run(run, hf_dir, out)?;
            Ok(report)
        }
        RunKind::LanguageModel => {
            let class = lm::hf::read_config(hf_dir)?.class;
            let dataset = dataset.unwrap_or(IMPORTED_DATASET);
            let mut run = lm::hf::load_hf_lm(hf_dir, dataset, device)?;
            run.recipe.name = out.file_name().map(|n| n.to_string_lossy().into_owned());
            let parameters = run.config.size().total;
            let report = ImportReport {
                run_dir: out.to_path_buf(),
                class,
                task: run.recipe.task.name().to_string(),
                parameters,
                labels: Vec::new(),
            };
            lm::hf::write_lm_run(run, hf_dir, out)?;
            Ok(report)
        }
        kind => Err(ZooError::Usage(format!(
            "importing {kind:?} checkpoints is not supported yet"
        ))),
    }
}
