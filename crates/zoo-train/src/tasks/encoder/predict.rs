//! Applying an encoder run: scoring it over a whole split (`zoo eval`), reading one input
//! (`zoo predict`: a label, tags, an answer span, or fillers for `[MASK]`), and sentence
//! embeddings (`zoo embed`).

use crate::ZooError;
use crate::models::ModelConfig;
use crate::recipe::Task;
use crate::runtime::data::stream;
use crate::runtime::metrics::{LabelOutput, LabelReport, class_line, tag_line};
use crate::tasks::encoder::data::{Batching, EncoderExamples, SplitData};
use crate::tasks::encoder::run::EncoderRun;
use burn::module::Module;
use burn::prelude::*;
use zoo_bert::Prediction;
use zoo_text::{DataDir, DatasetRegistry, EncodedInput};

/// Scores an encoder run on a whole split: classification accuracy and F1, or masked-LM
/// accuracy with masks drawn from the run's seed.
pub fn evaluate_encoder(
    run: &EncoderRun,
    split: &str,
    data_dir: &DataDir,
) -> Result<LabelReport, ZooError> {
    let registry = DatasetRegistry::builtin();
    let recipe = &run.recipe;
    let special = run.tokenizer.special_ids()?;
    let seq_len = recipe.sequence_len(&ModelConfig::Bert(run.config.clone()));
    let batch_size = recipe.training.batch_size;
    let split_data = SplitData::load(
        recipe.task,
        &registry,
        &recipe.data.dataset,
        split,
        &[],
        data_dir,
    )?;
    let usage = |e: String| ZooError::Usage(format!("split '{split}': {e}"));
    let (inputs, targets) = split_data
        .encode(
            &run.tokenizer,
            &run.labels,
            recipe,
            seq_len,
            &mut stream(recipe.seed, 3, 2),
        )
        .map_err(usage)?;
    let batching = Batching {
        batch_size,
        seed: recipe.seed,
        shuffle: false,
        special,
        vocab_size: run.config.vocab_size,
    };
    let examples = EncoderExamples::new(inputs, targets, batching).map_err(usage)?;
    let device = run.model.devices()[0].clone();
    let outputs = (0..examples.batches_per_pass()).map(|g| {
        let batch = examples.batch_at(g, &device);
        let out = run
            .model
            .loss(batch.tokens, batch.segments, batch.padding, batch.targets);
        LabelOutput {
            loss: out.loss,
            labels: (out.main.predicted, out.main.expected),
        }
    });
    let mut report = LabelReport::of_outputs(split, outputs);
    // F1 is a statistic of labels, not of masked tokens.
    if !matches!(
        recipe.task,
        Task::Classification | Task::TokenClassification
    ) {
        report.f1 = None;
    }
    Ok(report)
}

/// One input to [`predict`]: a text, or for span QA a question and its context.
#[derive(Clone, Debug)]
pub struct PredictInput {
    /// The text (for span QA, the question).
    pub text: String,
    /// Span QA only: the text the answer is taken from.
    pub context: Option<String>,
}

/// Longest answer span [`predict`] considers, in tokens.
const MAX_ANSWER_TOKENS: usize = 30;

/// What the run's model makes of `input`, as one line: the label and its probability (then
/// every label's) for a classifier; `word/TAG` per word for a tagger; the answer for span QA;
/// the five likeliest tokens at each `[MASK]` for masked-LM.
pub fn predict(run: &EncoderRun, input: &PredictInput) -> Result<String, ZooError> {
    let device = run.model.devices()[0].clone();
    let seq_len = run
        .recipe
        .sequence_len(&ModelConfig::Bert(run.config.clone()));
    let tokenizer = &run.tokenizer;
    let words: Vec<String> = input.text.split_whitespace().map(String::from).collect();
    let task = run.recipe.task;
    let (encoded, aligned_words) = match task {
        Task::TokenClassification => {
            let aligned = tokenizer.encode_words(&[&words], seq_len)?.remove(0);
            (aligned.input, aligned.words)
        }
        Task::SpanQa => {
            let context = input.context.as_deref().ok_or_else(|| {
                ZooError::Usage("a span-QA run needs a --context to take the answer from".into())
            })?;
            let context: Vec<String> = context.split_whitespace().map(String::from).collect();
            let aligned = tokenizer
                .encode_question_context(&[(input.text.as_str(), &context)], seq_len)?
                .remove(0);
            let answer = best_span(run, &aligned.input, &aligned.words, &device)
                .map(|(first, last)| context[first..=last].join(" "));
            return Ok(answer.unwrap_or_else(|| "(no answer in the context)".into()));
        }
        _ => {
            let encoded = tokenizer.encode_inputs(&[(input.text.as_str(), None)], seq_len)?;
            (encoded.into_iter().next().expect("one input"), Vec::new())
        }
    };
    let (tokens, segments, padding) = single(&encoded, &device);
    let Prediction::Labels(probs) = run.model.predict(tokens, segments, padding) else {
        unreachable!("only span heads predict spans");
    };
    let [_, len, classes] = probs.dims();
    let probs: Vec<f32> = probs
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap_or_default();
    let row = |t: usize| &probs[t * classes..(t + 1) * classes];
    let ranked = |t: usize| {
        let mut order: Vec<usize> = (0..classes).collect();
        order.sort_by(|&a, &b| row(t)[b].total_cmp(&row(t)[a]));
        order
    };
    let label = |i: usize| run.labels.get(i).cloned().unwrap_or_else(|| i.to_string());
    Ok(match task {
        Task::Classification => class_line(&run.labels, row(0)),
        Task::TokenClassification => {
            let mut tags = vec![String::new(); words.len()];
            let mut previous = None;
            for (t, word) in aligned_words.iter().enumerate().take(len) {
                if let Some(w) = *word
                    && *word != previous
                {
                    tags[w as usize] = label(ranked(t)[0]);
                }
                previous = *word;
            }
            tag_line(&words, &tags)
        }
        _ => {
            let special = tokenizer.special_ids()?;
            let masks: Vec<usize> = (0..encoded.ids.len())
                .filter(|&t| encoded.ids[t] == special.mask)
                .collect();
            if masks.is_empty() {
                return Err(ZooError::Usage(
                    "a masked-LM run fills in [MASK]: put [MASK] in the --input".into(),
                ));
            }
            let mut out = Vec::new();
            for t in masks {
                let best: Vec<String> = ranked(t)
                    .into_iter()
                    .take(5)
                    .map(|id| {
                        let piece = tokenizer.decode(&[id as u32]).unwrap_or_default();
                        format!("{piece} {:.3}", row(t)[id])
                    })
                    .collect();
                out.push(format!("[MASK] -> {}", best.join(", ")));
            }
            out.join("\n")
        }
    })
}

/// The context words of the likeliest answer span: the pair of context tokens (start at or
/// before end, at most [`MAX_ANSWER_TOKENS`] apart) with the largest summed logits.
fn best_span(
    run: &EncoderRun,
    input: &EncodedInput,
    words: &[Option<u32>],
    device: &Device,
) -> Option<(usize, usize)> {
    let (tokens, segments, padding) = single(input, device);
    let Prediction::Span { start, end } = run.model.predict(tokens, segments, padding) else {
        unreachable!("span heads predict spans");
    };
    let read = |t: Tensor<2>| -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap_or_default()
    };
    let (start, end) = (read(start), read(end));
    let mut best: Option<(f32, usize, usize)> = None;
    for s in (0..words.len()).filter(|&t| words[t].is_some()) {
        for e in (s..words.len().min(s + MAX_ANSWER_TOKENS)).filter(|&t| words[t].is_some()) {
            let score = start[s] + end[e];
            if best.is_none_or(|(b, _, _)| score > b) {
                best = Some((score, s, e));
            }
        }
    }
    let (_, s, e) = best?;
    let (first, last) = (words[s]? as usize, words[e]? as usize);
    (first <= last).then_some((first, last))
}

/// One input as a batch of one: token ids, segment ids and (no) padding.
fn single(
    input: &EncodedInput,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2, Bool>) {
    padded(std::slice::from_ref(input), 0, device)
}

/// Inputs as one batch padded with `pad` to the longest: token ids, segment ids, and true at
/// padding.
fn padded(
    inputs: &[EncodedInput],
    pad: u32,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2, Bool>) {
    let len = inputs.iter().map(|i| i.ids.len()).max().unwrap_or(0);
    let batch = inputs.len();
    let mut tokens = vec![pad as i64; batch * len];
    let mut segments = vec![0i64; batch * len];
    let mut padding = vec![true; batch * len];
    for (b, input) in inputs.iter().enumerate() {
        for (t, (&id, &segment)) in input.ids.iter().zip(&input.segments).enumerate() {
            tokens[b * len + t] = id as i64;
            segments[b * len + t] = segment as i64;
            padding[b * len + t] = false;
        }
    }
    (
        Tensor::from_data(TensorData::new(tokens, [batch, len]), device),
        Tensor::from_data(TensorData::new(segments, [batch, len]), device),
        Tensor::from_data(TensorData::new(padding, [batch, len]), device),
    )
}

/// How [`embed`] makes one vector of a text's hidden states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the text's tokens, `[CLS]` and `[SEP]` included, padding left out (as
    /// sentence-transformers pools).
    Mean,
    /// The `[CLS]` token's vector.
    Cls,
}

/// Texts embedded in one batch.
const EMBED_BATCH: usize = 32;

/// One vector per text: the encoder's last hidden states pooled as `pooling` says, scaled to
/// unit length when `normalize` (sentence encoders compare by cosine). Texts longer than the
/// run's input length are cut to it.
pub fn embed(
    run: &EncoderRun,
    texts: &[String],
    pooling: Pooling,
    normalize: bool,
) -> Result<Vec<Vec<f32>>, ZooError> {
    let seq_len = run
        .recipe
        .sequence_len(&ModelConfig::Bert(run.config.clone()));
    let pairs: Vec<(&str, Option<&str>)> = texts.iter().map(|t| (t.as_str(), None)).collect();
    let inputs = run.tokenizer.encode_inputs(&pairs, seq_len)?;
    let pad = run.tokenizer.special_ids()?.pad;
    let device = run.model.devices()[0].clone();
    let mut vectors = Vec::with_capacity(texts.len());
    for chunk in inputs.chunks(EMBED_BATCH) {
        let (tokens, segments, padding) = padded(chunk, pad, &device);
        let encoder = &run.model.encoder;
        let pooled = match pooling {
            // The last layer at [CLS] alone.
            Pooling::Cls => encoder.first_hidden(tokens, segments, Some(padding)),
            Pooling::Mean => {
                let hidden = encoder.forward(tokens, segments, Some(padding.clone()));
                let [batch, len, d] = hidden.dims();
                let real: Tensor<3> = padding.bool_not().float().reshape([batch, len, 1]);
                let counts = real.clone().sum_dim(1).reshape([batch, 1]);
                (hidden * real).sum_dim(1).reshape([batch, d]) / counts
            }
        };
        let width = pooled.dims()[1];
        let pooled = if normalize {
            let norms = pooled.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
            pooled / norms
        } else {
            pooled
        };
        let values: Vec<f32> = pooled
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .map_err(|e| ZooError::Training(format!("reading embeddings: {e:?}")))?;
        vectors.extend(values.chunks(width).map(<[f32]>::to_vec));
    }
    Ok(vectors)
}
