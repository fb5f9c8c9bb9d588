//! A Hugging Face BERT directory (`config.json`, `model.safetensors`, `tokenizer.json`) as an
//! encoder run: loaded directly (`init_from`, or any command given such a directory) or written
//! out as a zoo run directory by `zoo import`; and an encoder run written as one by
//! `zoo export`.

use crate::ZooError;
use crate::models::ModelConfig;
use crate::recipe::Task;
use crate::runtime::run_dir::{
    HF_CONFIG_FILE, LABELS_FILE, TOKENIZER_FILE, imported_recipe, open_hf_dir, read_hf_config,
    write_hf_dir, write_imported_run, write_run_file,
};
use crate::runtime::step::GradientStep;
use crate::tasks::encoder::model::Encoder;
use crate::tasks::encoder::run::{EncoderRun, bert_task, load_encoder_run};
use burn::prelude::*;
use std::path::Path;
use zoo_bert::BertTask;
use zoo_bert::hf::HfBert;

/// Reads the `config.json` of the BERT in `dir`.
pub fn read_config(dir: &Path) -> Result<HfBert, ZooError> {
    HfBert::from_config(&read_hf_config(dir)?)
        .map_err(|e| ZooError::run_dir(dir, format!("{HF_CONFIG_FILE}: {e}")))
}

/// The BERT in the Hugging Face directory `dir`, loaded onto `device` as an encoder run whose
/// recipe names `dataset` (what `zoo eval` scores it on).
pub fn load_hf_encoder(dir: &Path, dataset: &str, device: &Device) -> Result<EncoderRun, ZooError> {
    let hf = read_config(dir)?;
    let (tokenizer, mut tensors) = open_hf_dir(dir, hf.config.vocab_size)?;
    tokenizer
        .special_ids()
        .map_err(|e| ZooError::run_dir(dir, format!("{TOKENIZER_FILE}: {e}")))?;
    let model = hf
        .load(&mut tensors, device)
        .map_err(|e| ZooError::run_dir(dir, e))?;
    let task = match hf.task {
        BertTask::MaskedLm { .. } => Task::MaskedLm,
        BertTask::Classification => Task::Classification,
        other => unreachable!("{other:?} is not read from config.json"),
    };
    let mut recipe = imported_recipe(dir, task, &ModelConfig::Bert(hf.config.clone()), dataset)?;
    // A pretraining checkpoint's head predicts the next sentence too.
    recipe.data.next_sentence = hf.task
        == BertTask::MaskedLm {
            next_sentence: true,
        };
    Ok(EncoderRun {
        recipe,
        config: hf.config,
        tokenizer,
        model,
        labels: hf.labels,
        epoch: 0,
    })
}

/// Writes `run`, read from `hf_dir`, as a zoo run directory at `out`: its recipe, tokenizer,
/// labels and its weights as the checkpoint of epoch 0.
pub fn write_encoder_run(run: EncoderRun, hf_dir: &Path, out: &Path) -> Result<(), ZooError> {
    let config = ModelConfig::Bert(run.config.clone());
    let module = Encoder::new(run.model, GradientStep::new(1));
    write_imported_run(out, hf_dir, &run.recipe, &config, &run.tokenizer, module)?;
    if !run.labels.is_empty() {
        let text = serde_json::to_string(&run.labels).expect("strings serialise");
        write_run_file(&out.join(LABELS_FILE), text.as_bytes())?;
    }
    Ok(())
}

/// Writes the encoder run in `run_dir` (its last checkpoint, or `epoch`'s) as a Hugging Face
/// BERT directory at `out`; returns the class it is saved as.
pub fn export_encoder_run(
    run_dir: &Path,
    epoch: Option<usize>,
    out: &Path,
    device: &Device,
) -> Result<String, ZooError> {
    let run = load_encoder_run(run_dir, epoch, device)?;
    let hf = HfBert::for_export(&run.config, bert_task(&run.recipe), run.labels.clone())
        .map_err(|e| ZooError::run_dir(run_dir, format!("cannot be exported: {e}")))?;
    let special = run.tokenizer.special_ids()?;
    let tensors = hf
        .export(&run.model)
        .map_err(|e| ZooError::run_dir(run_dir, e))?;
    let token = |id: u32| run.tokenizer.decode(&[id]).unwrap_or_default();
    let tokenizer_config = serde_json::json!({
        "tokenizer_class": "BertTokenizerFast",
        "model_max_length": run.config.max_len,
        "cls_token": token(special.cls),
        "sep_token": token(special.sep),
        "pad_token": token(special.pad),
        "mask_token": token(special.mask),
        "unk_token": token(special.unk),
    });
    write_hf_dir(
        out,
        &hf.to_config(special.pad),
        &tensors,
        &run.tokenizer,
        &tokenizer_config,
    )?;
    Ok(hf.class)
}
