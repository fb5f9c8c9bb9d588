//! An encoder-decoder task's examples: sentence pairs (translation) or texts to corrupt (span
//! corruption), served in padded batches of similar source length.

use crate::ZooError;
use crate::recipe::Recipe;
use crate::runtime::data::{BatchSource, PerPass, stream};
use crate::tasks::seq2seq::vocab::Vocabularies;
use burn::prelude::*;
use rand::seq::SliceRandom;
use std::sync::Arc;
use zoo_seq2seq::DecodeTokens;
use zoo_text::span_corruption::SpanCorruption;
use zoo_text::{DataDir, DatasetRegistry};

/// The training examples of a split: token ids, before batching.
#[derive(Clone, Debug)]
pub enum Examples {
    /// Source (with `</s>`) and target (without `<s>` or `</s>`) pairs.
    Pairs(Vec<(Vec<u32>, Vec<u32>)>),
    /// Texts to corrupt afresh in every batch (span corruption).
    Texts(Vec<Vec<u32>>),
}

impl Examples {
    fn len(&self) -> usize {
        match self {
            Examples::Pairs(p) => p.len(),
            Examples::Texts(t) => t.len(),
        }
    }

    /// The encoder's length of example `i` (batches group similar lengths).
    fn source_len(&self, i: usize) -> usize {
        match self {
            Examples::Pairs(p) => p[i].0.len(),
            Examples::Texts(t) => t[i].len(),
        }
    }
}

/// The source and target languages of a translation recipe: `data.source` and `data.target`,
/// else the dataset's first and second.
pub(crate) fn languages(
    registry: &DatasetRegistry,
    recipe: &Recipe,
) -> Result<(String, String), ZooError> {
    let data = &recipe.data;
    let languages = registry.languages(&data.dataset)?;
    let pick = |given: &Option<String>, index: usize| {
        given.clone().unwrap_or_else(|| languages[index].clone())
    };
    Ok((pick(&data.source, 0), pick(&data.target, 1)))
}

/// Source and target sentences of `split` (the recipe's languages).
pub(crate) fn load_pairs(
    registry: &DatasetRegistry,
    recipe: &Recipe,
    split: &str,
    dir: &DataDir,
) -> Result<Vec<(String, String)>, ZooError> {
    let (source, target) = languages(registry, recipe)?;
    Ok(registry.load_parallel(&recipe.data.dataset, split, [&source, &target], dir)?)
}

/// A split as read: sentence pairs (translation) or running text (span corruption).
pub(crate) enum SplitText {
    Pairs(Vec<(String, String)>),
    Text(String),
}

impl SplitText {
    /// The training examples: pairs within `seq_len` (and how many were longer), or for span
    /// corruption the text as one stream of tokens (T5 packs its corpus the same way) cut into
    /// pieces of `seq_len - 1` tokens, so that the corrupted input (shorter: each span becomes
    /// one sentinel) and its `</s>` fit `seq_len`.
    pub(crate) fn examples(
        &self,
        vocab: &Vocabularies,
        seq_len: usize,
    ) -> Result<(Examples, usize), ZooError> {
        match self {
            SplitText::Text(text) => {
                let stream: Vec<u32> = vocab.source.encode_lines(text)?.concat();
                let piece = seq_len.saturating_sub(1).max(2);
                let pieces = stream
                    .chunks(piece)
                    .filter(|piece| piece.len() >= 2)
                    .map(<[u32]>::to_vec)
                    .collect();
                Ok((Examples::Texts(pieces), 0))
            }
            SplitText::Pairs(pairs) => {
                let (sources, targets): (Vec<&str>, Vec<&str>) =
                    pairs.iter().map(|(s, t)| (s.as_str(), t.as_str())).unzip();
                let sources = vocab.encode_sources(&sources)?;
                let targets = vocab.target.encode_each(&targets)?;
                let mut kept = Vec::with_capacity(pairs.len());
                for (source, target) in sources.into_iter().zip(targets) {
                    if source.len() <= seq_len && target.len() < seq_len {
                        kept.push((source, target));
                    }
                }
                let dropped = pairs.len() - kept.len();
                Ok((Examples::Pairs(kept), dropped))
            }
        }
    }
}

/// How a split's examples are batched.
#[derive(Clone, Copy, Debug)]
pub struct Seq2SeqBatching {
    /// Examples per batch.
    pub batch_size: usize,
    /// Seed of the order and of span corruption.
    pub seed: u64,
    /// Shuffle every pass (training) or keep one order (validation).
    pub shuffle: bool,
}

/// One padded batch on the device.
#[derive(Clone, Debug)]
pub struct Seq2SeqBatch {
    /// `[batch, src_len]`.
    pub source: Tensor<2, Int>,
    /// `[batch, src_len]`, true at padding.
    pub source_padding: Tensor<2, Bool>,
    /// `<s>` then the target, `[batch, tgt_len]`.
    pub target_in: Tensor<2, Int>,
    /// The target then `</s>`, `[batch, tgt_len]`.
    pub target_out: Tensor<2, Int>,
    /// Flat indices `b * tgt_len + t` of the target tokens that are not padding.
    pub positions: Tensor<1, Int>,
}

/// Examples served in batches of similar source length: a [`BatchSource`]. Pass `p`'s order
/// shuffles the examples from `(seed, p)`, sorts each run of 50 batches' worth by length, cuts
/// batches and shuffles the batches; span corruption draws batch `g`'s noise from `(seed, g)`.
#[derive(Clone)]
pub struct Seq2SeqExamples {
    inner: Arc<ExamplesInner>,
}

struct ExamplesInner {
    examples: Examples,
    batching: Seq2SeqBatching,
    source_tokens: DecodeTokens,
    target_tokens: DecodeTokens,
    corruption: Option<(SpanCorruption, Vec<u32>)>,
    batches: PerPass<Vec<Vec<usize>>>,
}

impl Seq2SeqExamples {
    pub(crate) fn new(
        examples: Examples,
        batching: Seq2SeqBatching,
        vocab: &Vocabularies,
        corruption: Option<SpanCorruption>,
    ) -> Result<Self, String> {
        if examples.len() == 0 {
            return Err("no examples".into());
        }
        Ok(Self {
            inner: Arc::new(ExamplesInner {
                examples,
                batching,
                source_tokens: vocab.source_tokens,
                target_tokens: vocab.target_tokens,
                corruption: corruption.map(|c| (c, vocab.sentinels.clone())),
                batches: PerPass::default(),
            }),
        })
    }

    /// Examples in the split.
    pub fn len(&self) -> usize {
        self.inner.examples.len()
    }

    /// Never true: an empty split is refused at construction.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batches in one pass.
    pub fn batches_per_pass(&self) -> usize {
        self.len().div_ceil(self.inner.batching.batch_size)
    }

    /// Mean target tokens per example, `</s>` included (what a token budget counts): a pair's
    /// target, or a corrupted text's sentinels and noise tokens.
    pub fn mean_target_tokens(&self) -> f64 {
        let inner = &*self.inner;
        let total: usize = match (&inner.examples, &inner.corruption) {
            (Examples::Pairs(pairs), _) => pairs.iter().map(|(_, target)| target.len() + 1).sum(),
            (Examples::Texts(texts), Some((corruption, _))) => texts
                .iter()
                .map(|text| {
                    let (noise, spans) = corruption.counts(text.len());
                    noise + spans + 1
                })
                .sum(),
            (Examples::Texts(_), None) => unreachable!("texts are only served for corruption"),
        };
        total as f64 / self.len() as f64
    }

    fn batches_of(&self, pass: usize) -> Arc<Vec<Vec<usize>>> {
        let inner = &*self.inner;
        inner.batches.get(pass, || {
            let size = inner.batching.batch_size;
            let mut order: Vec<usize> = (0..self.len()).collect();
            if inner.batching.shuffle {
                order.shuffle(&mut stream(inner.batching.seed, 1, pass as u64));
            }
            let by_length = |chunk: &mut [usize]| {
                chunk.sort_by_key(|&i| inner.examples.source_len(i));
            };
            order.chunks_mut(size * 50).for_each(by_length);
            let mut batches: Vec<Vec<usize>> = order.chunks(size).map(<[usize]>::to_vec).collect();
            if inner.batching.shuffle {
                batches.shuffle(&mut stream(inner.batching.seed, 4, pass as u64));
            }
            batches
        })
    }

    /// The source and target ids of the examples of batch `g` of the run.
    fn pairs_at(&self, g: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
        let inner = &*self.inner;
        let per_pass = self.batches_per_pass();
        let batches = self.batches_of(g / per_pass);
        let picked = &batches[g % per_pass];
        match (&inner.examples, &inner.corruption) {
            (Examples::Pairs(pairs), _) => picked.iter().map(|&i| pairs[i].clone()).collect(),
            (Examples::Texts(texts), Some((corruption, sentinels))) => {
                let mut rng = stream(inner.batching.seed, 2, g as u64);
                picked
                    .iter()
                    .map(|&i| {
                        let corrupted = corruption
                            .apply(&texts[i], sentinels, &mut rng)
                            .expect("pieces are short enough for the sentinels");
                        let mut input = corrupted.input;
                        input.push(inner.source_tokens.eos);
                        (input, corrupted.target)
                    })
                    .collect()
            }
            (Examples::Texts(_), None) => unreachable!("texts are corrupted"),
        }
    }

    /// Batch `g` of the run (counted from 0 across passes), on `device`.
    pub fn batch_at(&self, g: usize, device: &Device) -> Seq2SeqBatch {
        let pairs = self.pairs_at(g);
        let (source_pad, target) = (self.inner.source_tokens.pad, self.inner.target_tokens);
        let batch = pairs.len();
        let src_len = pairs.iter().map(|(s, _)| s.len()).max().unwrap_or(1);
        let tgt_len = pairs.iter().map(|(_, t)| t.len() + 1).max().unwrap_or(1);
        let mut source = vec![source_pad as i64; batch * src_len];
        let mut padding = vec![true; batch * src_len];
        let mut target_in = vec![target.pad as i64; batch * tgt_len];
        let mut target_out = vec![target.pad as i64; batch * tgt_len];
        let mut positions = Vec::new();
        for (b, (src, tgt)) in pairs.iter().enumerate() {
            for (t, &id) in src.iter().enumerate() {
                source[b * src_len + t] = id as i64;
                padding[b * src_len + t] = false;
            }
            let shifted = std::iter::once(target.bos).chain(tgt.iter().copied());
            let ended = tgt.iter().copied().chain(std::iter::once(target.eos));
            for (t, (input, output)) in shifted.zip(ended).enumerate() {
                target_in[b * tgt_len + t] = input as i64;
                target_out[b * tgt_len + t] = output as i64;
                positions.push((b * tgt_len + t) as i64);
            }
        }
        let n = positions.len();
        Seq2SeqBatch {
            source: Tensor::from_data(TensorData::new(source, [batch, src_len]), device),
            source_padding: Tensor::from_data(TensorData::new(padding, [batch, src_len]), device),
            target_in: Tensor::from_data(TensorData::new(target_in, [batch, tgt_len]), device),
            target_out: Tensor::from_data(TensorData::new(target_out, [batch, tgt_len]), device),
            positions: Tensor::from_data(TensorData::new(positions, [n]), device),
        }
    }
}

impl BatchSource for Seq2SeqExamples {
    type Batch = Seq2SeqBatch;

    fn batch(&self, epoch: usize, index: usize, per_epoch: usize, device: &Device) -> Seq2SeqBatch {
        self.batch_at(epoch * per_epoch + index, device)
    }

    fn validation_batches(&self, requested: usize) -> usize {
        requested.min(self.batches_per_pass())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zoo_text::span_corruption::SENTINELS;
    use zoo_text::{TokenizerSpec, ZooTokenizer};

    fn vocab(sentinels: usize) -> Vocabularies {
        let text = "the cat sat on the mat\nthe dog ate the red fish\n".repeat(10);
        let tokenizer =
            ZooTokenizer::build(&TokenizerSpec::Word { vocab_size: 50 }, &text).unwrap();
        Vocabularies::new(tokenizer, None, sentinels, None).unwrap()
    }

    #[test]
    fn span_corruption_batches_restore_the_text_and_draw_noise_per_batch() {
        let vocab = vocab(SENTINELS);
        let texts: Vec<Vec<u32>> = (0..8)
            .map(|i| {
                vocab
                    .source
                    .encode(&"the cat sat on the mat the dog ate the red fish ".repeat(1 + i % 3))
                    .unwrap()
            })
            .collect();
        let batching = Seq2SeqBatching {
            batch_size: 4,
            seed: 9,
            shuffle: true,
        };
        let examples = Seq2SeqExamples::new(
            Examples::Texts(texts.clone()),
            batching,
            &vocab,
            Some(SpanCorruption::default()),
        )
        .unwrap();
        let sentinel = |id: u32| vocab.sentinels.iter().position(|&s| s == id);
        for g in 0..4 {
            for (input, target) in examples.pairs_at(g) {
                assert_eq!(input.last(), Some(&vocab.source_tokens.eos));
                // Put each span back in place of its sentinel.
                let mut restored = Vec::new();
                for &id in &input[..input.len() - 1] {
                    match sentinel(id) {
                        Some(k) => {
                            let start =
                                target.iter().position(|&t| sentinel(t) == Some(k)).unwrap();
                            restored.extend(
                                target[start + 1..]
                                    .iter()
                                    .take_while(|&&t| sentinel(t).is_none()),
                            );
                        }
                        None => restored.push(id),
                    }
                }
                assert!(texts.contains(&restored));
                let noise = target.iter().filter(|&&t| sentinel(t).is_none()).count();
                assert!(
                    noise >= 1 && noise * 4 <= restored.len(),
                    "{noise} of {}",
                    restored.len()
                );
            }
        }
        // The same batch number draws the same noise; the next pass draws other noise.
        assert_eq!(examples.pairs_at(1), examples.pairs_at(1));
        assert_ne!(examples.pairs_at(0), examples.pairs_at(2));
    }
}
