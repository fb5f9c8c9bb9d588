//! Text for the zoo: tokenizers on the `tokenizers` crate, the dataset registry, the embedded
//! default corpus the project generates itself, batchers that turn token streams into training
//! examples, encoder pretraining data (sentence pairs, masked-LM masking), and the local
//! Hugging Face hub cache pretrained models are found (and downloaded) in.

pub mod batcher;
pub mod bleu;
pub mod corpus;
pub mod files;
pub mod hub;
pub mod ngram;
pub mod pretraining;
pub mod registry;
pub mod span_corruption;
pub mod synthetic;
pub mod tokenizer;

pub use batcher::{RandomWindows, Streams};
pub use ngram::KneserNey;
pub use pretraining::{
    MaskedTokens, MaskingConfig, PretrainingCorpus, PretrainingExample, mask_tokens,
};
pub use registry::{DataDir, DatasetRegistry, LabelledExample, SpanExample, TaggedExample};
pub use tokenizer::{
    END_OF_TEXT, EncodedInput, SpecialIds, TokenizerSpec, WordAligned, ZooTokenizer,
};

use std::path::PathBuf;

/// Everything that can go wrong reading text; each message names the file, dataset or token.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A file that should exist does not.
    #[error("{what} not found: {}", path.display())]
    Missing {
        /// What the file is.
        what: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file exists but could not be parsed.
    #[error("cannot parse {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        message: String,
    },
    /// Reading or writing failed.
    #[error("cannot access {}: {message}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS's complaint.
        message: String,
    },
    /// The `tokenizers` crate failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// A character-level tokenizer met a character its vocabulary lacks.
    #[error("character {0:?} is not in the tokenizer's vocabulary (unknown character)")]
    UnknownCharacter(String),
    /// A dataset name the registry does not know.
    #[error("unknown dataset '{name}'; registered datasets: {}", known.join(", "))]
    UnknownDataset {
        /// The name asked for.
        name: String,
        /// The names it knows.
        known: Vec<String>,
    },
    /// A split the dataset does not have.
    #[error("dataset '{dataset}' has no split '{split}'; it has: {}", known.join(", "))]
    UnknownSplit {
        /// The dataset.
        dataset: String,
        /// The split asked for.
        split: String,
        /// The splits it has.
        known: Vec<String>,
    },
    /// A model id the Hugging Face cache does not have, and that could not be downloaded.
    #[error(
        "model '{id}' is not in the Hugging Face cache at {} ({reason}); download it there (huggingface-cli download {id}), or give the model's directory",
        cache.display()
    )]
    ModelMissing {
        /// The id asked for.
        id: String,
        /// The cache looked in.
        cache: PathBuf,
        /// Why it is not there.
        reason: String,
    },
    /// A dataset file is missing and could not be downloaded.
    #[error(
        "dataset '{dataset}' needs {file} at {}, which is missing, and downloading it from {url} failed ({reason}). \
         Put the file there, or point --data-dir (or ZOO_DATA_DIR) at a directory holding {dataset}/{file}",
        path.display()
    )]
    DatasetFileMissing {
        /// The dataset.
        dataset: String,
        /// The file name.
        file: String,
        /// Where it should be.
        path: PathBuf,
        /// Where it is downloaded from.
        url: String,
        /// Why the download failed.
        reason: String,
    },
    /// Labels asked of a dataset that has none.
    #[error("dataset '{dataset}' has no labels; labelled datasets: {}", labelled.join(", "))]
    NotLabelled {
        /// The dataset.
        dataset: String,
        /// The datasets that have labels.
        labelled: Vec<String>,
    },
    /// A dataset file is not the file the registry expects.
    #[error("checksum mismatch for {}: expected sha256 {expected}, found {actual}", path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The registry's checksum.
        expected: String,
        /// The file's checksum.
        actual: String,
    },
}

impl TextError {
    pub(crate) fn tokenizer(e: impl std::fmt::Display) -> Self {
        TextError::Tokenizer(e.to_string())
    }
}
