//! The zoo's training runtime: recipes (TOML files naming model, tokenizer, data, optimiser,
//! schedule and budget), training on burn-train's `SupervisedTraining` with checkpoints that
//! resume, evaluation, generation, comparisons on equal budgets and throughput benchmarks.
//!
//! The crate is built in layers. Each layer imports only the layers below it, never one above
//! and never a sibling of its own layer (a task never imports another task):
//!
//! ```text
//! 6  huggingface  Hugging Face model directories in (`zoo import`) and out (`zoo export`)
//!    attention  attention maps of any run with attention, as heatmaps and numbers
//!    compare    recipes on one shared budget, reports and plots
//!    bench      throughput and scaling benchmarks
//!    info       what a preset, recipe or run's model costs
//! 5  dispatch   train / evaluate: picks the task module from the recipe or run directory
//! 4  launcher   child `zoo` processes (compare's runs, the scaling benchmark's points)
//! 3  tasks/     one module per task, each on the runtime: lm (GPT, RNN, n-gram), encoder
//!               (BERT pretraining and fine-tuning), seq2seq (encoder-decoders)
//! 2  runtime/   what every task's training shares and no task names: budget and plan, the run
//!               directory and its checkpoints, optimiser, schedules, the gradient step, batch
//!               loaders, metrics, logging, the summary, and the training session
//! 1  recipe/    the recipe: its schema (mod.rs) and its validation (validate.rs)
//! 0  models     the model table: architectures, presets and tasks, `ModelConfig`, `ModelSize`
//!    plot       SVG line plots, attention heatmaps (SVG and PNG)
//! ```
//!
//! Adding a task means one module under `tasks/` and one match arm in `dispatch`.

pub mod attention;
pub mod bench;
pub mod compare;
pub mod dispatch;
pub mod huggingface;
pub mod info;
pub mod launcher;
pub mod models;
pub mod plot;
pub mod recipe;
pub mod runtime;
pub mod tasks;

pub use recipe::Recipe;

use std::path::PathBuf;

/// Everything a run can fail with; each message names the file, key or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ZooError {
    /// A recipe that cannot be read or does not validate.
    #[error("recipe {}: {message}", path.display())]
    Recipe {
        /// The recipe file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// Text, tokenizer or dataset trouble.
    #[error(transparent)]
    Text(#[from] zoo_text::TextError),
    /// A run directory that is missing pieces or holds something unexpected.
    #[error("run directory {}: {message}", path.display())]
    RunDir {
        /// The run directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint that cannot be loaded.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// Why it cannot be loaded.
        message: String,
    },
    /// A bad command-line value.
    #[error("{0}")]
    Usage(String),
    /// Training stopped with an error.
    #[error("training failed: {0}")]
    Training(String),
    /// File system trouble.
    #[error("cannot access {}: {message}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS's complaint.
        message: String,
    },
}

impl ZooError {
    pub(crate) fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        ZooError::Io {
            path: path.into(),
            message: e.to_string(),
        }
    }

    /// A problem with the recipe at `path`.
    pub(crate) fn recipe(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ZooError::Recipe {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A problem with the run directory at `path`.
    pub(crate) fn run_dir(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ZooError::RunDir {
            path: path.into(),
            message: message.into(),
        }
    }
}
