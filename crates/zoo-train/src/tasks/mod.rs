//! One module per task, each on the runtime below it and none importing another: a task reads
//! its data, settles its tokenizer and model config, builds its batches and hands a
//! [`TrainingTask`](crate::runtime::session::TrainingTask) to the shared training session; it
//! also loads its runs back to evaluate and apply them.
//!
//! ```text
//! lm        causal language models: GPT and RNN training, n-gram counting, evaluation, sampling
//! encoder   BERT: masked-LM pretraining, classification, tagging, span QA; evaluation, predict
//! seq2seq   encoder-decoders: translation and span corruption; decoding, BLEU
//! ```

pub mod encoder;
pub mod lm;
pub mod seq2seq;
