//! A trained encoder run, loaded back from its directory: its recipe, tokenizer, labels and
//! model.

use crate::ZooError;
use crate::models::ModelConfig;
use crate::recipe::{Recipe, Task};
use crate::runtime::run_dir::{
    TOKENIZER_FILE, load_checkpoint, load_run_config, read_labels, select_checkpoint,
};
use crate::runtime::step::GradientStep;
use crate::tasks::encoder::model::Encoder;
use burn::prelude::*;
use std::path::Path;
use zoo_bert::{BertConfig, BertModel, BertTask};
use zoo_text::ZooTokenizer;

/// The model's task for a recipe's.
pub fn bert_task(recipe: &Recipe) -> BertTask {
    match recipe.task {
        Task::MaskedLm => BertTask::MaskedLm {
            next_sentence: recipe.data.next_sentence,
        },
        Task::Classification => BertTask::Classification,
        Task::TokenClassification => BertTask::TokenClassification,
        Task::SpanQa => BertTask::SpanQa,
        Task::CausalLm | Task::Translation | Task::SpanCorruption => {
            unreachable!("validated recipes pair these tasks with other families")
        }
        Task::Distillation => unreachable!("distillation trains its teacher's task"),
    }
}

/// A trained encoder run, loaded.
pub struct EncoderRun {
    /// Its resolved recipe.
    pub recipe: Recipe,
    /// Its model config.
    pub config: BertConfig,
    /// Its tokenizer.
    pub tokenizer: ZooTokenizer,
    /// The model, on the device it was loaded to.
    pub model: BertModel,
    /// Label names in id order (classification runs).
    pub labels: Vec<String>,
    /// The checkpoint's epoch.
    pub epoch: usize,
}

/// Loads an encoder run's last checkpoint (or `epoch`'s) onto `device`.
pub fn load_encoder_run(
    run_dir: &Path,
    epoch: Option<usize>,
    device: &Device,
) -> Result<EncoderRun, ZooError> {
    let run_error = |message: String| ZooError::run_dir(run_dir, message);
    let (recipe, ModelConfig::Bert(config)) = load_run_config(run_dir)? else {
        return Err(run_error(
            "is not a BERT run (its recipe's model.arch is not \"bert\")".into(),
        ));
    };
    let tokenizer = ZooTokenizer::load(&run_dir.join(TOKENIZER_FILE))?;
    let epoch = select_checkpoint(run_dir, epoch)?;
    let mut model = config.init(bert_task(&recipe), device).map_err(run_error)?;
    if recipe.finetune.lora() {
        model = super::adapted_model(run_dir, &recipe, model, device)?;
    }
    let model = load_checkpoint(run_dir, epoch, Encoder::new(model, GradientStep::new(1)))?;
    // A LoRA run's adapters merged into its base's weights (the model a user runs or
    // exports); other models are as they were.
    let model = model.model.materialize();
    let labels = read_labels(run_dir)?;
    Ok(EncoderRun {
        recipe,
        config,
        tokenizer,
        model,
        labels,
        epoch,
    })
}
