//! A Hugging Face BERT directory (`config.json`, `model.safetensors`, `tokenizer.json`) as an
//! encoder run: loaded directly (`init_from`, or any command given such a directory) or written
//! out as a zoo run directory by `zoo import`.

use crate::ZooError;
use crate::models::ModelConfig;
use crate::recipe::Recipe;
use crate::runtime::run_dir::{HF_CONFIG_FILE, TOKENIZER_FILE, save_checkpoint, write_run_recipe};
use crate::runtime::step::GradientStep;
use crate::tasks::encoder::model::Encoder;
use crate::tasks::encoder::run::{EncoderRun, LABELS_FILE};
use burn::prelude::*;
use std::path::Path;
use zoo_bert::BertTask;
use zoo_bert::hf::HfBert;
use zoo_blocks::hf::HfTensors;
use zoo_text::ZooTokenizer;

/// What a BERT loaded from a Hugging Face directory is scored on by `zoo eval` unless
/// `zoo import --dataset` says otherwise: the corpus the zoo ships.
pub const IMPORTED_DATASET: &str = "embedded";

/// The weights file of a Hugging Face model directory.
const WEIGHTS_FILE: &str = "model.safetensors";

/// Reads the `config.json` of the BERT in `dir`.
pub fn read_config(dir: &Path) -> Result<HfBert, ZooError> {
    let path = dir.join(HF_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ZooError::io(&path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ZooError::run_dir(dir, format!("{HF_CONFIG_FILE} is not JSON: {e}")))?;
    HfBert::from_config(&json).map_err(|e| ZooError::run_dir(dir, format!("{HF_CONFIG_FILE}: {e}")))
}

/// The BERT in the Hugging Face directory `dir`, loaded onto `device` as an encoder run whose
/// recipe names `dataset` (what `zoo eval` scores it on).
pub fn load_hf_encoder(dir: &Path, dataset: &str, device: &Device) -> Result<EncoderRun, ZooError> {
    let hf = read_config(dir)?;
    let tokenizer = ZooTokenizer::load(&dir.join(TOKENIZER_FILE))?;
    tokenizer
        .special_ids()
        .map_err(|e| ZooError::run_dir(dir, format!("{TOKENIZER_FILE}: {e}")))?;
    if tokenizer.vocab_size() > hf.config.vocab_size {
        return Err(ZooError::run_dir(
            dir,
            format!(
                "{TOKENIZER_FILE} has {} tokens, more than config.json's vocab_size = {}",
                tokenizer.vocab_size(),
                hf.config.vocab_size
            ),
        ));
    }
    let mut tensors =
        HfTensors::open(&dir.join(WEIGHTS_FILE)).map_err(|e| ZooError::run_dir(dir, e))?;
    let model = hf
        .load(&mut tensors, device)
        .map_err(|e| ZooError::run_dir(dir, e))?;
    let name = dir
        .file_name()
        .map_or("imported".into(), |n| n.to_string_lossy().into_owned());
    Ok(EncoderRun {
        recipe: imported_recipe(&name, &hf, dataset)?,
        config: hf.config,
        tokenizer,
        model,
        labels: hf.labels,
        epoch: 0,
    })
}

/// The recipe of an imported BERT: its class's task, its config, its own tokenizer, and
/// `dataset` to evaluate on; `[training]` is what evaluation batches by (the run itself trains
/// nothing: fine-tuning starts a new run with `init_from`).
fn imported_recipe(name: &str, hf: &HfBert, dataset: &str) -> Result<Recipe, ZooError> {
    let (task, pairs) = match hf.task {
        BertTask::MaskedLm { next_sentence } => ("masked-lm", next_sentence),
        BertTask::Classification => ("classification", false),
        other => unreachable!("{other:?} is not read from config.json"),
    };
    let text = format!(
        "name = {name:?}\ntask = \"{task}\"\n[model]\narch = \"bert\"\n[tokenizer]\nkind = \"file\"\npath = \"{TOKENIZER_FILE}\"\n[data]\ndataset = {dataset:?}\nnext_sentence = {pairs}\n[training]\nbatch_size = 32\nepochs = 1\n"
    );
    let mut recipe =
        Recipe::parse(&text).map_err(|e| ZooError::Usage(format!("the imported recipe: {e}")))?;
    recipe.model = ModelConfig::Bert(hf.config.clone()).to_spec();
    Ok(recipe)
}

/// Writes `run`, read from `hf_dir`, as a zoo run directory at `out`: its recipe, tokenizer,
/// labels and its weights as the checkpoint of epoch 0.
pub fn write_encoder_run(run: EncoderRun, hf_dir: &Path, out: &Path) -> Result<(), ZooError> {
    std::fs::create_dir_all(out).map_err(|e| ZooError::io(out, e))?;
    let origin = format!(
        "Imported by zoo import from {}: nothing trained here; [training] is what zoo eval batches by.",
        hf_dir.display()
    );
    write_run_recipe(
        out,
        &run.recipe,
        &ModelConfig::Bert(run.config.clone()),
        &origin,
    )?;
    run.tokenizer.save(&out.join(TOKENIZER_FILE))?;
    if !run.labels.is_empty() {
        let path = out.join(LABELS_FILE);
        let text = serde_json::to_string(&run.labels).expect("strings serialise");
        std::fs::write(&path, text).map_err(|e| ZooError::io(&path, e))?;
    }
    save_checkpoint(out, 0, Encoder::new(run.model, GradientStep::new(1, 0.0)))
}
