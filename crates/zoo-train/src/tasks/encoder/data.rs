//! An encoder task's examples: a split as the registry gives it ([`SplitData`]), encoded into
//! inputs and targets, and served in padded, shuffled, freshly masked batches
//! ([`EncoderExamples`]).

use crate::ZooError;
use crate::recipe::{Recipe, Task};
use crate::runtime::data::{BatchSource, ShuffledPasses, stream};
use crate::tasks::encoder::model::EncoderBatch;
use burn::prelude::*;
use rand::rngs::StdRng;
use std::collections::BTreeSet;
use std::sync::Arc;
use zoo_bert::Targets;
use zoo_text::{
    DataDir, DatasetRegistry, EncodedInput, LabelledExample, MaskingConfig, PretrainingCorpus,
    SpanExample, SpecialIds, TaggedExample, ZooTokenizer, mask_tokens,
};

/// What each example asks the model to predict.
#[derive(Clone, Debug)]
pub enum ExampleTargets {
    /// Masked-LM on every input (masks drawn per batch), with next-sentence labels for pairs.
    MaskedLm {
        /// Per input: B follows A (pairs only).
        is_next: Vec<Option<bool>>,
        /// Masking rates.
        masking: MaskingConfig,
    },
    /// A label id per input.
    Classes(Vec<u32>),
    /// Per input, a tag id per token (`None`: not scored).
    Tags(Vec<Vec<Option<u32>>>),
    /// Per input, the answer's first and last token.
    Spans(Vec<(u32, u32)>),
}

/// Encoder inputs served in shuffled batches: a [`BatchSource`]. Batch `g` of the run (counted
/// across epochs) belongs to pass `g / batches_per_pass`, whose order is a permutation drawn from
/// the seed and the pass; masks are drawn from the seed and `g`, so each pass masks afresh and a
/// resumed run draws what the uninterrupted one would have.
#[derive(Clone)]
pub struct EncoderExamples {
    inner: Arc<ExamplesInner>,
}

struct ExamplesInner {
    inputs: Vec<EncodedInput>,
    targets: ExampleTargets,
    batching: Batching,
    /// Which inputs each batch takes.
    passes: ShuffledPasses,
}

/// How [`EncoderExamples`] batch and mask.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    /// Inputs per batch.
    pub batch_size: usize,
    /// Seed of the order and the masks.
    pub seed: u64,
    /// Reshuffle every pass (training) or keep the order (validation, evaluation).
    pub shuffle: bool,
    /// The tokenizer's special tokens (padding, masking).
    pub special: SpecialIds,
    /// Vocabulary size (random replacements when masking).
    pub vocab_size: usize,
}

impl EncoderExamples {
    /// Inputs and their targets, served as `batching` says.
    pub fn new(
        inputs: Vec<EncodedInput>,
        targets: ExampleTargets,
        batching: Batching,
    ) -> Result<Self, String> {
        if inputs.is_empty() {
            return Err("no examples".into());
        }
        let passes = ShuffledPasses::new(
            inputs.len(),
            batching.batch_size,
            batching.seed,
            batching.shuffle,
        );
        Ok(Self {
            inner: Arc::new(ExamplesInner {
                inputs,
                targets,
                batching,
                passes,
            }),
        })
    }

    /// Number of inputs.
    pub fn len(&self) -> usize {
        self.inner.inputs.len()
    }

    /// Never true: an empty set is refused at construction.
    pub fn is_empty(&self) -> bool {
        self.inner.inputs.is_empty()
    }

    /// Batches in one pass (the last may be short).
    pub fn batches_per_pass(&self) -> usize {
        self.inner.passes.batches_per_pass()
    }

    /// Mean tokens per input (what a token budget counts; padding is not counted).
    pub fn mean_tokens(&self) -> f64 {
        let total: usize = self.inner.inputs.iter().map(|i| i.ids.len()).sum();
        total as f64 / self.len() as f64
    }

    /// Batch `g` of the run (counted from 0 across passes).
    pub fn batch_at(&self, g: usize, device: &Device) -> EncoderBatch {
        let inner = &*self.inner;
        let picked = &inner.passes.batch(g);
        let batch = picked.len();
        let len = picked
            .iter()
            .map(|&i| inner.inputs[i].ids.len())
            .max()
            .expect("batches are never empty");
        let mut tokens = vec![inner.batching.special.pad as i64; batch * len];
        let mut segments = vec![0i64; batch * len];
        let mut padding = vec![true; batch * len];
        let mut positions = Vec::new();
        let mut originals = Vec::new();
        let mut rng = stream(inner.batching.seed, 2, g as u64);
        for (b, &i) in picked.iter().enumerate() {
            let input = &inner.inputs[i];
            let ids = match &inner.targets {
                ExampleTargets::MaskedLm { masking, .. } => {
                    let masked = mask_tokens(
                        &input.ids,
                        &inner.batching.special,
                        inner.batching.vocab_size,
                        masking,
                        &mut rng,
                    );
                    positions.extend(masked.positions.iter().map(|&p| (b * len + p) as i64));
                    originals.extend(masked.originals.iter().map(|&t| t as i64));
                    masked.ids
                }
                ExampleTargets::Tags(tags) => {
                    for (t, tag) in tags[i].iter().enumerate() {
                        if let Some(tag) = tag {
                            positions.push((b * len + t) as i64);
                            originals.push(*tag as i64);
                        }
                    }
                    input.ids.clone()
                }
                ExampleTargets::Classes(_) | ExampleTargets::Spans(_) => input.ids.clone(),
            };
            for (t, (&id, &segment)) in ids.iter().zip(&input.segments).enumerate() {
                tokens[b * len + t] = id as i64;
                segments[b * len + t] = segment as i64;
                padding[b * len + t] = false;
            }
        }
        let ints = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), device)
        };
        let targets = match &inner.targets {
            ExampleTargets::MaskedLm { is_next, .. } => {
                let labels: Option<Vec<i64>> =
                    picked.iter().map(|&i| is_next[i].map(i64::from)).collect();
                Targets::MaskedLm {
                    positions: ints(positions),
                    tokens: ints(originals),
                    next_sentence: labels.map(ints),
                }
            }
            ExampleTargets::Classes(classes) => {
                Targets::Classification(ints(picked.iter().map(|&i| classes[i] as i64).collect()))
            }
            ExampleTargets::Tags(_) => Targets::TokenClassification {
                positions: ints(positions),
                labels: ints(originals),
            },
            ExampleTargets::Spans(spans) => Targets::SpanQa {
                start: ints(picked.iter().map(|&i| spans[i].0 as i64).collect()),
                end: ints(picked.iter().map(|&i| spans[i].1 as i64).collect()),
            },
        };
        EncoderBatch {
            tokens: Tensor::from_data(TensorData::new(tokens, [batch, len]), device),
            segments: Tensor::from_data(TensorData::new(segments, [batch, len]), device),
            padding: Tensor::from_data(TensorData::new(padding, [batch, len]), device),
            targets,
        }
    }
}

impl BatchSource for EncoderExamples {
    type Batch = EncoderBatch;

    fn batch(&self, epoch: usize, index: usize, per_epoch: usize, device: &Device) -> EncoderBatch {
        self.batch_at(epoch * per_epoch + index, device)
    }

    fn validation_batches(&self, requested: usize) -> usize {
        match self.inner.targets {
            ExampleTargets::MaskedLm { .. } => requested.min(self.batches_per_pass()),
            // Labelled sets are small: validate on all of it, so the accuracy is the split's.
            _ => self.batches_per_pass(),
        }
    }
}

/// One split of a task's data, as the registry gives it.
pub(crate) enum SplitData {
    /// Unlabelled text, one sentence per line, from one or more datasets.
    Text(Vec<String>),
    /// A label per text.
    Labelled(Vec<LabelledExample>),
    /// A tag per word.
    Tagged(Vec<TaggedExample>),
    /// Questions with an answer span in their context.
    Spans(Vec<SpanExample>),
}

impl SplitData {
    /// Split `split` of `dataset` in the form `task` needs (for masked-LM training, with
    /// the `extra` datasets' training text).
    pub(crate) fn load(
        task: Task,
        registry: &DatasetRegistry,
        dataset: &str,
        split: &str,
        extra: &[String],
        dir: &DataDir,
    ) -> Result<Self, ZooError> {
        Ok(match task {
            Task::MaskedLm => {
                let mut texts = vec![registry.load_split(dataset, split, dir)?];
                for extra in extra {
                    texts.push(registry.load_split(extra, "train", dir)?);
                }
                SplitData::Text(texts)
            }
            Task::Classification => {
                SplitData::Labelled(registry.load_labelled(dataset, split, dir)?)
            }
            Task::TokenClassification => SplitData::Tagged(registry.load_tagged(dataset, split)?),
            Task::SpanQa => SplitData::Spans(registry.load_spans(dataset, split)?),
            Task::CausalLm | Task::Translation | Task::SpanCorruption => {
                unreachable!("encoder tasks only")
            }
            Task::Distillation => unreachable!("distillation trains its teacher's task"),
        })
    }

    /// All its text, for training a tokenizer.
    pub(crate) fn text(&self) -> String {
        match self {
            SplitData::Text(texts) => texts.concat(),
            SplitData::Labelled(set) => set.iter().map(|e| format!("{}\n", e.text)).collect(),
            SplitData::Tagged(set) => set.iter().map(|e| e.words.join(" ") + "\n").collect(),
            SplitData::Spans(set) => set
                .iter()
                .map(|e| format!("{}\n{}\n", e.question, e.context.join(" ")))
                .collect(),
        }
    }

    /// The label (or tag) names it uses, sorted; empty for tasks without labels.
    pub(crate) fn label_names(&self) -> Vec<String> {
        let names: BTreeSet<&String> = match self {
            SplitData::Labelled(set) => set.iter().map(|e| &e.label).collect(),
            SplitData::Tagged(set) => set.iter().flat_map(|e| &e.tags).collect(),
            SplitData::Text(_) | SplitData::Spans(_) => BTreeSet::new(),
        };
        names.into_iter().cloned().collect()
    }

    /// Encoder inputs and targets of every example. `labels` are the run's label names;
    /// `rng` draws next-sentence pairs.
    pub(crate) fn encode(
        &self,
        tokenizer: &ZooTokenizer,
        labels: &[String],
        recipe: &Recipe,
        seq_len: usize,
        rng: &mut StdRng,
    ) -> Result<(Vec<EncodedInput>, ExampleTargets), String> {
        let special = tokenizer.special_ids().map_err(|e| e.to_string())?;
        let label_id = |name: &str| {
            labels
                .iter()
                .position(|l| l == name)
                .map(|i| i as u32)
                .ok_or_else(|| {
                    format!(
                        "label '{name}' is not among the run's labels ({})",
                        labels.join(", ")
                    )
                })
        };
        let text_error = |e: zoo_text::TextError| e.to_string();
        Ok(match self {
            SplitData::Text(texts) => {
                let mut corpus = PretrainingCorpus::new(Vec::new());
                for text in texts {
                    let lines = tokenizer.encode_lines(text).map_err(text_error)?;
                    corpus.extend(PretrainingCorpus::from_lines(
                        lines,
                        recipe.data.document_lines,
                    ));
                }
                let made = corpus.examples(&special, seq_len, recipe.data.next_sentence, rng)?;
                let is_next = made.iter().map(|e| e.is_next).collect();
                let masking = MaskingConfig {
                    select: recipe.data.mask_prob,
                    ..MaskingConfig::default()
                };
                (
                    made.into_iter().map(|e| e.input).collect(),
                    ExampleTargets::MaskedLm { is_next, masking },
                )
            }
            SplitData::Labelled(set) => {
                let texts: Vec<(&str, Option<&str>)> =
                    set.iter().map(|e| (e.text.as_str(), None)).collect();
                let inputs = tokenizer
                    .encode_inputs(&texts, seq_len)
                    .map_err(text_error)?;
                let classes = set
                    .iter()
                    .map(|e| label_id(&e.label))
                    .collect::<Result<_, _>>()?;
                (inputs, ExampleTargets::Classes(classes))
            }
            SplitData::Tagged(set) => {
                let sentences: Vec<&[String]> = set.iter().map(|e| e.words.as_slice()).collect();
                let aligned = tokenizer
                    .encode_words(&sentences, seq_len)
                    .map_err(text_error)?;
                let mut inputs = Vec::with_capacity(set.len());
                let mut tags = Vec::with_capacity(set.len());
                for (example, aligned) in set.iter().zip(aligned) {
                    // Each word's first piece carries its tag; later pieces are not scored.
                    let mut previous = None;
                    let mut token_tags = Vec::with_capacity(aligned.words.len());
                    for &word in &aligned.words {
                        let first_piece = word.is_some() && word != previous;
                        previous = word;
                        token_tags.push(match word {
                            Some(w) if first_piece => Some(label_id(&example.tags[w as usize])?),
                            _ => None,
                        });
                    }
                    inputs.push(aligned.input);
                    tags.push(token_tags);
                }
                (inputs, ExampleTargets::Tags(tags))
            }
            SplitData::Spans(set) => {
                let pairs: Vec<(&str, &[String])> = set
                    .iter()
                    .map(|e| (e.question.as_str(), e.context.as_slice()))
                    .collect();
                let aligned = tokenizer
                    .encode_question_context(&pairs, seq_len)
                    .map_err(text_error)?;
                let mut inputs = Vec::with_capacity(set.len());
                let mut spans = Vec::with_capacity(set.len());
                for (i, (example, aligned)) in set.iter().zip(aligned).enumerate() {
                    let of = |word: usize| {
                        let at = |t: &usize| aligned.words[*t] == Some(word as u32);
                        let tokens: Vec<usize> = (0..aligned.words.len()).filter(at).collect();
                        tokens
                    };
                    let (start, end) = (of(example.start), of(example.end));
                    let (Some(&start), Some(&end)) = (start.first(), end.last()) else {
                        return Err(format!(
                            "example {i}: the answer was cut off by seq_len = {seq_len}; raise training.seq_len (at most model.max_len)"
                        ));
                    };
                    inputs.push(aligned.input);
                    spans.push((start as u32, end as u32));
                }
                (inputs, ExampleTargets::Spans(spans))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECIAL: SpecialIds = SpecialIds::WORDPIECE;

    fn batching(batch_size: usize, seed: u64, shuffle: bool) -> Batching {
        Batching {
            batch_size,
            seed,
            shuffle,
            special: SPECIAL,
            vocab_size: 50,
        }
    }

    fn inputs(n: usize) -> Vec<EncodedInput> {
        (0..n)
            .map(|i| {
                let ids: Vec<u32> = std::iter::once(2)
                    .chain((0..1 + i % 5).map(|t| 10 + t as u32))
                    .chain([3])
                    .collect();
                EncodedInput {
                    segments: vec![0; ids.len()],
                    ids,
                }
            })
            .collect()
    }

    fn ids_of(t: Tensor<2, Int>) -> Vec<i64> {
        t.into_data().convert::<i64>().try_to_vec().unwrap()
    }

    #[test]
    fn batches_pad_to_their_longest_input_and_mark_the_padding() {
        let examples = EncoderExamples::new(
            inputs(10),
            ExampleTargets::Classes((0..10).map(|i| i % 2).collect()),
            batching(4, 1, false),
        )
        .unwrap();
        assert_eq!(examples.batches_per_pass(), 3);
        let batch = examples.batch_at(0, &Device::flex());
        // Inputs 0..4 have 1..=4 words: 3..=6 tokens, padded to 6.
        assert_eq!(batch.tokens.dims(), [4, 6]);
        let tokens = ids_of(batch.tokens);
        let padding: Vec<bool> = batch.padding.into_data().try_to_vec().unwrap();
        for (token, pad) in tokens.iter().zip(&padding) {
            assert_eq!(*pad, *token == 0);
        }
        assert_eq!(&tokens[..6], &[2, 10, 3, 0, 0, 0]);
        // The last batch of the pass is short.
        assert_eq!(examples.batch_at(2, &Device::flex()).tokens.dims()[0], 2);
    }

    #[test]
    fn each_pass_reshuffles_and_remasks_and_a_run_repeats_under_its_seed() {
        let make = || {
            EncoderExamples::new(
                inputs(40),
                ExampleTargets::MaskedLm {
                    is_next: vec![None; 40],
                    masking: MaskingConfig::default(),
                },
                batching(8, 7, true),
            )
            .unwrap()
        };
        let device = Device::flex();
        let (a, b) = (make(), make());
        let first_pass: Vec<Vec<i64>> = (0..5)
            .map(|g| ids_of(a.batch_at(g, &device).tokens))
            .collect();
        let again: Vec<Vec<i64>> = (0..5)
            .map(|g| ids_of(b.batch_at(g, &device).tokens))
            .collect();
        assert_eq!(first_pass, again);
        let second_pass: Vec<Vec<i64>> = (5..10)
            .map(|g| ids_of(a.batch_at(g, &device).tokens))
            .collect();
        assert_ne!(first_pass, second_pass);
        // Masked positions point at real tokens.
        let batch = a.batch_at(3, &device);
        let Targets::MaskedLm { positions, .. } = batch.targets else {
            unreachable!()
        };
        let padding: Vec<bool> = batch.padding.into_data().try_to_vec().unwrap();
        let positions: Vec<i64> = positions.into_data().convert::<i64>().try_to_vec().unwrap();
        assert!(!positions.is_empty());
        assert!(positions.iter().all(|&p| !padding[p as usize]));
    }
}
