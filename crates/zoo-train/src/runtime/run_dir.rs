//! The run directory: what it holds, its checkpoints, and the files every task reads and writes.
//!
//! ```text
//! runs/NAME/
//!   recipe.toml        the recipe as resolved (preset expanded, vocabulary size filled in)
//!   tokenizer.json     the tokenizer (Hugging Face format)
//!   checkpoint/        model-E.bpk, optim-E.bpk, scheduler-E.bpk after epoch E, and
//!                      carry-E.safetensors when the model carries state between batches
//!   metrics.jsonl      one line per epoch and split: step, losses, metrics, learning rate
//!   summary.json       what the finished run cost (see `summary`)
//!   experiment.log     burn-train's log
//! ```
//!
//! Tasks add their own files beside these (an n-gram model's counts, a classifier's labels, an
//! encoder-decoder's target tokenizer and decoded scores). A LoRA run's checkpoints hold only
//! what it trains, and its `base.json` names the model they adapt (see `lora`).
//!
//! Every file is written whole or not at all ([`write_run_file`]; burn-pack does the same for
//! checkpoints): a kill or a full disk leaves the previous version, never a torn one. A checkpoint is complete
//! when its model, optimiser and scheduler files are all there; older ones are deleted only
//! once a newer one is complete ([`prune_checkpoints`]).

use crate::ZooError;
use crate::models::ModelConfig;
use crate::recipe::{Recipe, Task};
use crate::runtime::lora;
use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::TensorData;
use burn::train::checkpoint::{
    Checkpoint, Checkpointer, CheckpointerError, CheckpointingAction, CheckpointingStrategy,
};
use burn::train::metric::store::EventStoreClient;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use zoo_blocks::hf::HfTensors;
use zoo_text::ZooTokenizer;
use zoo_text::files::{TEMPORARY_SUFFIX, write_atomically};

/// The resolved recipe.
pub const RECIPE_FILE: &str = "recipe.toml";
/// The tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The metrics log.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Label names of a classification run, in id order.
pub const LABELS_FILE: &str = "labels.json";
const CHECKPOINT_DIR: &str = "checkpoint";

/// Writes a run file whole or not at all (see the module docs).
pub fn write_run_file(path: &Path, contents: &[u8]) -> Result<(), ZooError> {
    write_atomically(path, contents).map_err(|e| ZooError::io(path, e))
}

/// Adds `line` to the end of the run's log file `path` (`metrics.jsonl`, `scores.jsonl`), by
/// writing the whole file anew atomically: a kill in the middle leaves the log as it was, never
/// a torn last line. (Logs are small: a line per validation.)
pub fn append_run_line(path: &Path, line: &str) -> Result<(), ZooError> {
    let mut text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(ZooError::io(path, e)),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    write_run_file(path, text.as_bytes())
}

/// Which epochs end with a checkpoint: every `every`-th, and the last.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointRule {
    /// Save every this many epochs...
    pub every: usize,
    /// ...and at this one, the last of the invocation.
    pub last: usize,
    /// Complete checkpoints kept (the newest).
    pub keep: usize,
}

impl CheckpointRule {
    /// Whether epoch `epoch` ends with a checkpoint.
    pub fn saves_at(&self, epoch: usize) -> bool {
        epoch.is_multiple_of(self.every.max(1)) || epoch == self.last
    }
}

/// burn-train's checkpointing strategy when the training loop decides which epochs to save
/// ([`CheckpointRule`]) and deletes old ones itself ([`prune_checkpoints`]): save when asked.
pub struct SaveWhenAsked;

impl CheckpointingStrategy for SaveWhenAsked {
    fn checkpointing(&mut self, _: usize, _: &EventStoreClient) -> Vec<CheckpointingAction> {
        vec![CheckpointingAction::Save]
    }
}

/// burn-train's file checkpointer, whose errors name the file: `KIND-EPOCH.bpk` in the run's
/// checkpoint directory. burn-pack writes each file atomically (a scratch file beside it,
/// flushed to the disk, renamed over it), so a kill or a full disk leaves the file whole or
/// absent; a write that fails (a full disk, a read-only directory) keeps the files already
/// there.
pub struct AtomicCheckpointer {
    dir: PathBuf,
    kind: &'static str,
}

impl AtomicCheckpointer {
    /// The checkpointer of `kind` (`model`, `optim` or `scheduler`) in `run_dir`.
    pub fn new(run_dir: &Path, kind: &'static str) -> Self {
        Self {
            dir: run_dir.join(CHECKPOINT_DIR),
            kind,
        }
    }

    fn path(&self, epoch: usize) -> PathBuf {
        self.dir.join(format!("{}-{epoch}.bpk", self.kind))
    }
}

impl<R: Checkpoint> Checkpointer<R> for AtomicCheckpointer {
    fn save(&self, epoch: usize, record: R) -> Result<(), CheckpointerError> {
        let path = self.path(epoch);
        let cannot = |e: String| {
            CheckpointerError::Unknown(format!("{} cannot be written: {e}", path.display()))
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| cannot(e.to_string()))?;
        record.save(path.clone()).map_err(|e| match e {
            // burn-pack's message already says which file and why ("cannot create ...: No
            // space left on device"); the layers of wrapping around it say nothing more.
            CheckpointerError::Record(burn::store::RecordError::Io(message)) => {
                cannot(message.trim_start_matches("I/O error: ").to_string())
            }
            other => cannot(other.to_string()),
        })
    }

    fn restore(&self, epoch: usize) -> Result<R, CheckpointerError> {
        R::load(self.path(epoch))
    }

    fn delete(&self, epoch: usize) -> Result<(), CheckpointerError> {
        remove_if_present(&self.path(epoch)).map_err(CheckpointerError::IOError)
    }
}

/// The model's checkpointer: [`AtomicCheckpointer`]'s files, holding every parameter, or for a
/// LoRA run only the ones that train (its base is where `base.json` says).
pub struct ModelCheckpointer {
    files: AtomicCheckpointer,
    /// The parameters a LoRA run's checkpoints hold.
    trainable_only: Option<BTreeSet<String>>,
}

impl ModelCheckpointer {
    /// The model checkpointer of `run_dir` for `model`.
    pub fn new<M: Module>(run_dir: &Path, model: &M) -> Self {
        Self {
            files: AtomicCheckpointer::new(run_dir, "model"),
            trainable_only: lora::is_adapted(model).then(|| lora::trainable_paths(model)),
        }
    }
}

impl Checkpointer<ModuleRecord> for ModelCheckpointer {
    fn save(&self, epoch: usize, record: ModuleRecord) -> Result<(), CheckpointerError> {
        let Some(keep) = &self.trainable_only else {
            return self.files.save(epoch, record);
        };
        let path = self.files.path(epoch);
        let cannot = |e: String| {
            CheckpointerError::Unknown(format!("{} cannot be written: {e}", path.display()))
        };
        let bytes = record.into_bytes().map_err(|e| cannot(e.to_string()))?;
        let tensors = burn_pack::Reader::from_bytes(bytes)
            .and_then(|reader| reader.into_tensors())
            .map_err(|e| cannot(e.to_string()))?
            .into_iter()
            .filter(|t| keep.contains(&t.name))
            .collect();
        std::fs::create_dir_all(&self.files.dir).map_err(|e| cannot(e.to_string()))?;
        // burn-pack writes the file atomically.
        burn_pack::Writer::new(tensors)
            .write_to_file(&path)
            .map_err(|e| cannot(e.to_string()))
    }

    fn restore(&self, epoch: usize) -> Result<ModuleRecord, CheckpointerError> {
        let record: ModuleRecord = self.files.restore(epoch)?;
        Ok(record.allow_partial(self.trainable_only.is_some()))
    }

    fn delete(&self, epoch: usize) -> Result<(), CheckpointerError> {
        Checkpointer::<ModuleRecord>::delete(&self.files, epoch)
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The kinds of file one checkpoint has (the carried state only for models that carry one).
const CHECKPOINT_KINDS: [&str; 4] = ["model", "optim", "scheduler", "carry"];

/// The file of `kind` in epoch `epoch`'s checkpoint.
fn checkpoint_file(run_dir: &Path, kind: &str, epoch: usize) -> PathBuf {
    let extension = if kind == "carry" {
        "safetensors"
    } else {
        "bpk"
    };
    run_dir
        .join(CHECKPOINT_DIR)
        .join(format!("{kind}-{epoch}.{extension}"))
}

/// Deletes the checkpoints older than the newest `keep` complete ones. A checkpoint still
/// being written (newer than the newest complete one) is left alone, so a kill at any moment
/// leaves at least one complete checkpoint once there has been one.
pub fn prune_checkpoints(run_dir: &Path, keep: usize) -> Result<(), ZooError> {
    let complete = checkpoint_epochs(run_dir);
    let Some(&oldest_kept) = complete.get(complete.len().saturating_sub(keep.max(1))) else {
        return Ok(());
    };
    for epoch in model_epochs(run_dir).into_iter().chain(complete) {
        if epoch < oldest_kept {
            for kind in CHECKPOINT_KINDS {
                let path = checkpoint_file(run_dir, kind, epoch);
                remove_if_present(&path).map_err(|e| ZooError::io(&path, e))?;
            }
        }
    }
    Ok(())
}

/// Removes the scratch files a killed writer left in the checkpoint directory: ours
/// (`*.partial`) and burn-pack's (`*.tmp`). They are never read: the rename that would have
/// made them a checkpoint did not happen.
pub fn remove_partial_files(run_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(run_dir.join(CHECKPOINT_DIR)) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(TEMPORARY_SUFFIX) || name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes the state `tensors` a model carries after epoch `epoch` (nothing when it carries
/// none), before the epoch's other checkpoint files: a complete checkpoint always has it.
pub fn save_carried(
    run_dir: &Path,
    epoch: usize,
    tensors: &[(String, TensorData)],
) -> Result<(), ZooError> {
    if tensors.is_empty() {
        return Ok(());
    }
    let path = checkpoint_file(run_dir, "carry", epoch);
    let bytes =
        zoo_blocks::hf::safetensors_bytes(tensors).map_err(|message| ZooError::Checkpoint {
            path: path.clone(),
            message,
        })?;
    std::fs::create_dir_all(run_dir.join(CHECKPOINT_DIR)).map_err(|e| ZooError::io(run_dir, e))?;
    write_run_file(&path, &bytes)
}

/// The state a model carried after epoch `epoch` (empty when it carried none).
pub fn load_carried(
    run_dir: &Path,
    epoch: usize,
) -> Result<BTreeMap<String, TensorData>, ZooError> {
    let path = checkpoint_file(run_dir, "carry", epoch);
    if !path.exists() {
        return Ok(BTreeMap::new());
    }
    let file = HfTensors::open(&path).map_err(|message| ZooError::Checkpoint {
        path: path.clone(),
        message,
    })?;
    Ok(file.into_tensors())
}

/// The epochs that have a complete checkpoint (model, optimiser and scheduler), oldest first:
/// what a run can be resumed from.
pub fn checkpoint_epochs(run_dir: &Path) -> Vec<usize> {
    model_epochs(run_dir)
        .into_iter()
        .filter(|&epoch| {
            ["optim", "scheduler"]
                .iter()
                .all(|kind| checkpoint_file(run_dir, kind, epoch).is_file())
        })
        .collect()
}

/// The epochs that have a model checkpoint, oldest first: what a run can be loaded from (an
/// imported run has a model and no optimiser state).
pub fn model_epochs(run_dir: &Path) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir(run_dir.join(CHECKPOINT_DIR)) else {
        return Vec::new();
    };
    let mut epochs: Vec<usize> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("model-")?
                .strip_suffix(".bpk")?
                .parse()
                .ok()
        })
        .collect();
    epochs.sort_unstable();
    epochs
}

/// The model file of epoch `epoch`'s checkpoint.
pub fn model_checkpoint(run_dir: &Path, epoch: usize) -> PathBuf {
    checkpoint_file(run_dir, "model", epoch)
}

/// The epoch to resume from (`resume`: the last complete checkpoint; `None` when there is none
/// yet, and the run starts from its first step), or `None` for a fresh run (then the directory
/// must hold no checkpoints).
pub fn resume_epoch(run_dir: &Path, resume: bool) -> Result<Option<usize>, ZooError> {
    let existing = checkpoint_epochs(run_dir);
    if resume {
        return Ok(existing.last().copied());
    }
    if !existing.is_empty() {
        return Err(ZooError::run_dir(
            run_dir,
            "already holds checkpoints of a run: pass --resume to continue it, or --run-dir to start a new one elsewhere",
        ));
    }
    Ok(None)
}

/// Loads every file of epoch `epoch`'s checkpoint once, before training, so that a damaged
/// one is found here (and an older checkpoint used) instead of failing inside burn-train.
/// `carry_on` takes the carried state.
pub fn check_checkpoint<M: Module>(
    run_dir: &Path,
    epoch: usize,
    model: &M,
    carry_on: impl FnOnce(BTreeMap<String, TensorData>) -> Result<(), String>,
) -> Result<(), ZooError> {
    let damaged = |kind: &str, message: String| ZooError::Checkpoint {
        path: checkpoint_file(run_dir, kind, epoch),
        message: format!("cannot be loaded: {message}"),
    };
    load_model_file(model.clone(), &checkpoint_file(run_dir, "model", epoch))
        .map_err(|e| damaged("model", e))?;
    burn::optim::OptimizerRecord::load(checkpoint_file(run_dir, "optim", epoch))
        .map_err(|e| damaged("optim", e.to_string()))?;
    burn::lr_scheduler::LrSchedulerRecord::load(checkpoint_file(run_dir, "scheduler", epoch))
        .map_err(|e| damaged("scheduler", e.to_string()))?;
    carry_on(load_carried(run_dir, epoch)?).map_err(|e| damaged("carry", e))
}

/// The newest complete checkpoint of `run_dir` that loads (see [`check_checkpoint`]), and a
/// warning for each newer one that does not. The files of those are renamed `*.damaged`: kept
/// for a look, out of the way of the run that redoes their epochs. None loading is an error
/// naming the newest.
pub fn newest_loadable<M: Module>(
    run_dir: &Path,
    model: &M,
    mut carry_on: impl FnMut(BTreeMap<String, TensorData>) -> Result<(), String>,
) -> Result<(usize, Vec<String>), ZooError> {
    let mut damaged = Vec::new();
    for epoch in checkpoint_epochs(run_dir).into_iter().rev() {
        match check_checkpoint(run_dir, epoch, model, &mut carry_on) {
            Ok(()) => {
                let mut warnings = Vec::new();
                for (newer, error) in damaged {
                    set_aside(run_dir, newer)?;
                    warnings.push(format!(
                        "{error}; its files are renamed *.damaged and the run resumes from epoch {epoch}"
                    ));
                }
                return Ok((epoch, warnings));
            }
            Err(error) => damaged.push((epoch, error)),
        }
    }
    Err(match damaged.into_iter().next() {
        Some((_, ZooError::Checkpoint { path, message })) => ZooError::Checkpoint {
            path,
            message: format!(
                "{message}; the run has no earlier checkpoint that loads: start it again with --run-dir elsewhere"
            ),
        },
        Some((_, other)) => other,
        None => ZooError::run_dir(run_dir, "has no complete checkpoint to resume from"),
    })
}

/// Renames the files of epoch `epoch`'s checkpoint `*.damaged`.
fn set_aside(run_dir: &Path, epoch: usize) -> Result<(), ZooError> {
    for kind in CHECKPOINT_KINDS {
        let path = checkpoint_file(run_dir, kind, epoch);
        if path.exists() {
            let mut aside = path.clone().into_os_string();
            aside.push(".damaged");
            std::fs::rename(&path, &aside).map_err(|e| ZooError::io(&path, e))?;
        }
    }
    Ok(())
}

/// What the first line of a run's `recipe.toml` says about where it came from.
pub const TRAINED: &str = "Resolved by zoo train: the preset is expanded.";

/// Writes the resolved recipe (`config` in place of the recipe's `[model]`), headed by a
/// comment line saying where it came from (`origin`).
pub fn write_run_recipe(
    run_dir: &Path,
    recipe: &Recipe,
    config: &ModelConfig,
    origin: &str,
) -> Result<(), ZooError> {
    let mut resolved = recipe.clone();
    resolved.model = config.to_spec();
    let text = toml::to_string_pretty(&resolved).expect("recipes serialise to TOML");
    write_run_file(
        &run_dir.join(RECIPE_FILE),
        format!("# {origin}\n{text}").as_bytes(),
    )
}

/// The run's resolved recipe.
pub fn load_run_recipe(run_dir: &Path) -> Result<Recipe, ZooError> {
    let path = run_dir.join(RECIPE_FILE);
    if !path.is_file() {
        return Err(ZooError::run_dir(
            run_dir,
            format!("has no {RECIPE_FILE}: is it a run directory made by zoo train?"),
        ));
    }
    Recipe::load(&path)
}

/// The resolved recipe of the run in `run_dir` and its model config.
pub fn load_run_config(run_dir: &Path) -> Result<(Recipe, ModelConfig), ZooError> {
    if !run_dir.is_dir() {
        return Err(ZooError::run_dir(run_dir, "does not exist"));
    }
    let recipe = load_run_recipe(run_dir)?;
    let config = recipe
        .model_config()
        .map_err(|message| ZooError::run_dir(run_dir, message))?;
    Ok((recipe, config))
}

/// The lines of the run's metrics log (none if it has none yet).
pub fn read_metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join(METRICS_FILE))
        .map(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The optimiser step an epoch ended on, from the metrics log.
pub fn steps_at_epoch(run_dir: &Path, epoch: usize) -> Option<usize> {
    read_metrics(run_dir)
        .into_iter()
        .find(|v| v["epoch"].as_u64() == Some(epoch as u64))
        .and_then(|v| v["step"].as_u64())
        .map(|s| s as usize)
}

/// `(epoch, loss)` of every validation in the metrics log, in order.
pub fn validation_losses(run_dir: &Path) -> Vec<(usize, f64)> {
    read_metrics(run_dir)
        .into_iter()
        .filter(|v| v["split"] == "valid")
        .filter_map(|v| Some((v["epoch"].as_u64()? as usize, v["loss"].as_f64()?)))
        .collect()
}

/// `(epoch, metrics)` of every validation in the metrics log, in order: every number on the
/// line but its epoch, step and wall time, by the names the log gives them.
pub fn validation_metrics(run_dir: &Path) -> Vec<(usize, BTreeMap<String, f64>)> {
    read_metrics(run_dir)
        .into_iter()
        .filter(|v| v["split"] == "valid")
        .filter_map(|v| {
            let epoch = v["epoch"].as_u64()? as usize;
            let metrics = v
                .as_object()?
                .iter()
                .filter(|(key, _)| !["epoch", "step", "elapsed_s"].contains(&key.as_str()))
                .filter_map(|(key, value)| Some((key.clone(), value.as_f64()?)))
                .collect();
            Some((epoch, metrics))
        })
        .collect()
}

/// The last validation loss in the metrics log.
pub fn last_val_loss(run_dir: &Path) -> Option<f64> {
    validation_losses(run_dir).last().map(|v| v.1)
}

/// The model config of the run being resumed, after checking that the recipe asks for the same
/// model: `fit` first gives the recipe's config what the run decided itself (vocabulary sizes).
pub fn resumed_model(
    run_dir: &Path,
    recipe: &Recipe,
    recipe_path: &Path,
    fit: impl FnOnce(&mut ModelConfig, &ModelConfig) -> Result<(), String>,
) -> Result<ModelConfig, ZooError> {
    let run_error = |message: String| ZooError::run_dir(run_dir, message);
    let recipe_error = |message: String| ZooError::recipe(recipe_path, message);
    let stored = load_run_recipe(run_dir)?
        .model_config()
        .map_err(run_error)?;
    let mut wanted = recipe.model_config().map_err(recipe_error)?;
    fit(&mut wanted, &stored).map_err(recipe_error)?;
    if wanted != stored {
        return Err(run_error(
            "the recipe's [model] differs from the run's recipe.toml; resume with the run's recipe or start a new run".into(),
        ));
    }
    Ok(stored)
}

/// The epoch of the checkpoint to load: `epoch` if the run has it, else the last one.
pub fn select_checkpoint(run_dir: &Path, epoch: Option<usize>) -> Result<usize, ZooError> {
    let epochs = model_epochs(run_dir);
    let run_error = |message: String| ZooError::run_dir(run_dir, message);
    match epoch {
        Some(e) if epochs.contains(&e) => Ok(e),
        Some(e) => Err(run_error(format!(
            "has no checkpoint for epoch {e}; it has {epochs:?}"
        ))),
        None => epochs
            .last()
            .copied()
            .ok_or_else(|| run_error("has no checkpoint yet".into())),
    }
}

/// Writes `module` as epoch `epoch`'s model checkpoint (how an imported model enters a run
/// directory: with no optimiser state, it can be loaded but not resumed).
pub fn save_checkpoint<M: Module>(run_dir: &Path, epoch: usize, module: M) -> Result<(), ZooError> {
    let dir = run_dir.join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| ZooError::io(&dir, e))?;
    let path = model_checkpoint(run_dir, epoch);
    // burn-pack writes the file atomically.
    module.save_file(&path).map_err(|e| ZooError::io(&path, e))
}

/// The recipe of a model imported from a Hugging Face directory: `task`, its `config`, its own
/// tokenizer, and `dataset` for `zoo eval` to score it on. `[training]` is what evaluation
/// batches by; the imported run itself trains nothing (fine-tuning starts a new run from it
/// with `init_from`).
pub fn imported_recipe(
    dir: &Path,
    task: Task,
    config: &ModelConfig,
    dataset: &str,
) -> Result<Recipe, ZooError> {
    let name = dir
        .file_name()
        .map_or("imported".into(), |n| n.to_string_lossy().into_owned());
    let text = format!(
        "name = {name:?}\ntask = \"{}\"\n[model]\narch = \"{}\"\n[tokenizer]\nkind = \"file\"\npath = \"{TOKENIZER_FILE}\"\n[data]\ndataset = {dataset:?}\n[training]\nbatch_size = 8\nepochs = 1\n",
        task.name(),
        config.architecture().name,
    );
    let mut recipe = Recipe::parse(&text)
        .map_err(|e| ZooError::Usage(format!("the recipe of an imported model: {e}")))?;
    recipe.model = config.to_spec();
    Ok(recipe)
}

/// Writes an imported model as the run directory `out`: its recipe (saying it came from
/// `hf_dir`), its tokenizer, and `module` as the checkpoint of epoch 0, which loads but does
/// not resume (there is no optimiser state).
pub fn write_imported_run<M: Module>(
    out: &Path,
    hf_dir: &Path,
    recipe: &Recipe,
    config: &ModelConfig,
    tokenizer: &ZooTokenizer,
    module: M,
) -> Result<(), ZooError> {
    std::fs::create_dir_all(out).map_err(|e| ZooError::io(out, e))?;
    let origin = format!(
        "Imported by zoo import from {}: nothing trained here; [training] is what zoo eval batches by.",
        hf_dir.display()
    );
    write_run_recipe(out, recipe, config, &origin)?;
    tokenizer.save(&out.join(TOKENIZER_FILE))?;
    save_checkpoint(out, 0, module)
}

/// A Hugging Face model directory's configuration.
pub const HF_CONFIG_FILE: &str = "config.json";

/// A Hugging Face model directory's weights.
pub const HF_WEIGHTS_FILE: &str = "model.safetensors";

/// The `config.json` of the Hugging Face directory `dir`, parsed.
pub fn read_hf_config(dir: &Path) -> Result<serde_json::Value, ZooError> {
    let path = dir.join(HF_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ZooError::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| ZooError::run_dir(dir, format!("{HF_CONFIG_FILE} is not JSON: {e}")))
}

/// The tokenizer and the weights of the Hugging Face directory `dir`, whose model has
/// `vocab_size` tokens (the tokenizer may have fewer, never more).
pub fn open_hf_dir(dir: &Path, vocab_size: usize) -> Result<(ZooTokenizer, HfTensors), ZooError> {
    let tokenizer = ZooTokenizer::load(&dir.join(TOKENIZER_FILE))?;
    if tokenizer.vocab_size() > vocab_size {
        return Err(ZooError::run_dir(
            dir,
            format!(
                "{TOKENIZER_FILE} has {} tokens, more than config.json's vocab_size = {vocab_size}",
                tokenizer.vocab_size()
            ),
        ));
    }
    let tensors =
        HfTensors::open(&dir.join(HF_WEIGHTS_FILE)).map_err(|e| ZooError::run_dir(dir, e))?;
    Ok((tokenizer, tensors))
}

/// Writes a Hugging Face model directory at `out`: `config.json`, `model.safetensors` of
/// `tensors`, the tokenizer as `tokenizer.json` and `tokenizer_config` as
/// `tokenizer_config.json`.
pub fn write_hf_dir(
    out: &Path,
    config: &serde_json::Value,
    tensors: &[(String, burn::tensor::TensorData)],
    tokenizer: &ZooTokenizer,
    tokenizer_config: &serde_json::Value,
) -> Result<(), ZooError> {
    std::fs::create_dir_all(out).map_err(|e| ZooError::io(out, e))?;
    let write_json = |name: &str, value: &serde_json::Value| {
        let text = serde_json::to_string_pretty(value).expect("JSON serialises");
        write_run_file(&out.join(name), (text + "\n").as_bytes())
    };
    write_json(HF_CONFIG_FILE, config)?;
    write_json("tokenizer_config.json", tokenizer_config)?;
    let weights =
        zoo_blocks::hf::safetensors_bytes(tensors).map_err(|e| ZooError::run_dir(out, e))?;
    write_run_file(&out.join(HF_WEIGHTS_FILE), &weights)?;
    tokenizer.save(&out.join(TOKENIZER_FILE))?;
    Ok(())
}

/// What a model loaded from a Hugging Face directory is scored on by `zoo eval` unless
/// `zoo import --dataset` says otherwise: the corpus the zoo ships.
pub const IMPORTED_DATASET: &str = "embedded";

/// The directory of a pretrained model named by `name`: the path itself when it exists, else,
/// when it reads as a Hugging Face model id (`bert-base-uncased`, `ORG/NAME`), its snapshot in
/// the local Hugging Face cache, downloaded there first if it is missing and downloads are on.
pub fn locate_model(name: &Path) -> Result<PathBuf, ZooError> {
    let text = name.to_string_lossy();
    if name.exists() || !zoo_text::hub::is_model_id(&text) {
        return Ok(name.to_path_buf());
    }
    let cache = zoo_text::hub::cache_dir();
    Ok(zoo_text::hub::model_dir(
        &text,
        &cache,
        zoo_text::registry::downloads_allowed(),
    )?)
}

/// Whether `dir` is a Hugging Face model directory (a `config.json`, no zoo recipe).
pub fn is_hugging_face_dir(dir: &Path) -> bool {
    dir.join(HF_CONFIG_FILE).is_file() && !dir.join(RECIPE_FILE).is_file()
}

/// `module` with the weights of epoch `epoch`'s model checkpoint.
pub fn load_checkpoint<M: Module>(run_dir: &Path, epoch: usize, module: M) -> Result<M, ZooError> {
    let path = model_checkpoint(run_dir, epoch);
    load_model_file(module, &path).map_err(|e| ZooError::Checkpoint {
        path: path.clone(),
        message: format!("cannot be loaded: {e}"),
    })
}

/// `module` with the weights of the model checkpoint at `path`: all of them, or for a LoRA
/// model (adapters attached to its base) the ones that train.
fn load_model_file<M: Module>(module: M, path: &Path) -> Result<M, String> {
    if lora::is_adapted(&module) {
        return lora::load_trainable(module, path);
    }
    module.try_load_file(path).map_err(|e| e.to_string())
}

/// The label names of a classification run (none for other runs).
pub fn read_labels(run_dir: &Path) -> Result<Vec<String>, ZooError> {
    let path = run_dir.join(LABELS_FILE);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| ZooError::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| ZooError::run_dir(run_dir, format!("{LABELS_FILE} is damaged: {e}")))
}
