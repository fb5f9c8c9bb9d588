//! Recurrent language models (LSTM and GRU): the model in [`model`] (ELMo's biLM too), named
//! shapes in [`presets`], task models on a biLM's features in [`elmo`].

pub mod elmo;
pub mod model;
pub mod presets;

pub use elmo::{ElmoConfig, ElmoModel, Features};
pub use model::{RnnCache, RnnConfig, RnnLm, RnnState};
pub use presets::{PRESETS, preset};
