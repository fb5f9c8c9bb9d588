//! Decoder-only GPT language models: the model in [`model`], named shapes in [`presets`].

pub mod classifier;
pub mod hf;
pub mod model;
pub mod presets;

pub use classifier::{AuxiliaryLm, ClassifierLoss, GptClassifier};
pub use model::{Gpt, GptCache, GptConfig};
pub use presets::{PRESETS, preset};
