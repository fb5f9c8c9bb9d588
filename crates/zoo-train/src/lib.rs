//! The zoo's training runtime: recipes (TOML files naming model, tokenizer, data, optimiser,
//! schedule and budget), training on burn-train's `SupervisedTraining` with checkpoints that
//! resume, evaluation, generation, model summaries and throughput benchmarks.

pub mod bench;
pub mod compare;
pub mod data;
pub mod encoder;
pub mod lm;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod recipe;
pub mod run;
pub mod schedule;
pub mod seq2seq;
pub mod summary;

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
}
