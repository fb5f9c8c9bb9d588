//! Encoder-only BERT models: the encoder and its task heads in [`model`], named shapes (Google's
//! BERT miniatures) in [`presets`].

pub mod hf;
pub mod model;
pub mod presets;

pub use model::{
    Bert, BertConfig, BertHead, BertModel, BertTask, Embeddings, EncoderLayer, Prediction,
    Predictions, Targets, TaskLogits, TaskLoss,
};
pub use presets::{PRESETS, preset};
