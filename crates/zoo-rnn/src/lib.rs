//! Recurrent language models (LSTM and GRU): the model in [`model`], named shapes in [`presets`].

pub mod model;
pub mod presets;

pub use model::{RnnConfig, RnnLm, RnnState};
pub use presets::{PRESETS, preset};
