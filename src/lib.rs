//! The zoo: train, compare and fine-tune sequence models on Burn.
//!
//! This crate re-exports the family crates and owns the backend features; [`device`] turns a
//! `--device` name into a Burn device among the backends compiled in.

pub use zoo_bert as bert;
pub use zoo_blocks as blocks;
pub use zoo_gpt as gpt;
pub use zoo_rnn as rnn;
pub use zoo_seq2seq as seq2seq;
pub use zoo_text as text;
pub use zoo_train as train;

pub mod device;
