//! Encoder pretraining data: documents of tokenised sentences turned into BERT inputs (packed
//! single segments, or sentence pairs for next-sentence prediction), and masked-LM masking.
//!
//! Everything random here takes its generator from the caller, so a run draws its pairs and
//! masks from its seed and the pass or batch number: a resumed run sees what it would have seen,
//! and each pass over the data gets fresh masks.

use crate::tokenizer::{EncodedInput, SpecialIds};
use rand::Rng;
use rand::rngs::StdRng;

/// BERT's masking rates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaskingConfig {
    /// Share of (non-special) tokens selected for prediction.
    pub select: f64,
    /// Of the selected, the share replaced by `[MASK]`...
    pub mask: f64,
    /// ...and the share replaced by a random token; the rest stay as they were.
    pub random: f64,
}

impl Default for MaskingConfig {
    /// 15% selected; of those 80% `[MASK]`, 10% random, 10% unchanged (Devlin et al.).
    fn default() -> Self {
        Self {
            select: 0.15,
            mask: 0.8,
            random: 0.1,
        }
    }
}

/// A masked sequence: the model's input and what it must predict where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskedTokens {
    /// The input with selected tokens replaced.
    pub ids: Vec<u32>,
    /// Positions selected for prediction, ascending.
    pub positions: Vec<usize>,
    /// The original tokens at those positions.
    pub originals: Vec<u32>,
}

/// Selects tokens of `ids` for masked-LM and replaces them as `config` says. Special tokens are
/// never selected; a random replacement is never a special token. A sequence with a real token
/// always gets at least one selection, so every sequence contributes to the loss.
pub fn mask_tokens(
    ids: &[u32],
    special: &SpecialIds,
    vocab_size: usize,
    config: &MaskingConfig,
    rng: &mut StdRng,
) -> MaskedTokens {
    let candidates: Vec<usize> = (0..ids.len())
        .filter(|&i| !special.contains(ids[i]))
        .collect();
    let mut positions: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|_| rng.random_bool(config.select))
        .collect();
    if positions.is_empty() && !candidates.is_empty() {
        positions.push(candidates[rng.random_range(0..candidates.len())]);
    }
    let mut masked = ids.to_vec();
    let originals = positions.iter().map(|&p| ids[p]).collect();
    for &p in &positions {
        let roll: f64 = rng.random();
        if roll < config.mask {
            masked[p] = special.mask;
        } else if roll < config.mask + config.random {
            masked[p] = loop {
                let id = rng.random_range(0..vocab_size as u32);
                if !special.contains(id) {
                    break id;
                }
            };
        }
    }
    MaskedTokens {
        ids: masked,
        positions,
        originals,
    }
}

/// A pretraining input: the tokens and segments, and for a sentence pair whether B follows A.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PretrainingExample {
    /// `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, with segment ids.
    pub input: EncodedInput,
    /// For pairs: B is A's true continuation.
    pub is_next: Option<bool>,
}

/// Documents of tokenised sentences (no special tokens).
#[derive(Clone, Debug)]
pub struct PretrainingCorpus {
    documents: Vec<Vec<Vec<u32>>>,
}

impl PretrainingCorpus {
    /// A corpus from documents; empty sentences and documents are dropped.
    pub fn new(documents: Vec<Vec<Vec<u32>>>) -> Self {
        let documents = documents
            .into_iter()
            .map(|d| d.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>())
            .filter(|d| !d.is_empty())
            .collect();
        Self { documents }
    }

    /// Documents from tokenised lines: a blank line ends a document, and so does every
    /// `lines_per_document`-th line when given (for corpora such as PTB that have one sentence
    /// per line and no marked document boundaries).
    pub fn from_lines(lines: Vec<Vec<u32>>, lines_per_document: Option<usize>) -> Self {
        let mut documents = vec![Vec::new()];
        for line in lines {
            let current = documents.last_mut().expect("never empty");
            if line.is_empty() {
                documents.push(Vec::new());
                continue;
            }
            current.push(line);
            if lines_per_document.is_some_and(|n| current.len() >= n) {
                documents.push(Vec::new());
            }
        }
        Self::new(documents)
    }

    /// Adds another corpus's documents.
    pub fn extend(&mut self, other: PretrainingCorpus) {
        self.documents.extend(other.documents);
    }

    /// Number of documents.
    pub fn documents(&self) -> usize {
        self.documents.len()
    }

    /// Number of sentences.
    pub fn sentences(&self) -> usize {
        self.documents.iter().map(Vec::len).sum()
    }

    /// Inputs of at most `max_len` tokens: consecutive sentences of a document packed into one
    /// segment (RoBERTa's "doc-sentences"), or with `next_sentence`, sentence pairs as BERT's
    /// `create_pretraining_data.py` makes them: A is the first part of a run of sentences, B is
    /// the rest of the run (50%) or sentences from another random document (50%).
    pub fn examples(
        &self,
        special: &SpecialIds,
        max_len: usize,
        next_sentence: bool,
        rng: &mut StdRng,
    ) -> Result<Vec<PretrainingExample>, String> {
        if next_sentence && self.documents.len() < 2 {
            return Err(format!(
                "next-sentence prediction needs at least 2 documents to draw random sentences from, the corpus has {}",
                self.documents.len()
            ));
        }
        let min_len = if next_sentence { 5 } else { 3 };
        if max_len < min_len {
            return Err(format!(
                "sequences of {max_len} tokens are too short for pretraining inputs"
            ));
        }
        let mut examples = Vec::new();
        for (d, document) in self.documents.iter().enumerate() {
            if next_sentence {
                self.pairs_of(d, special, max_len, rng, &mut examples);
            } else {
                pack(document, special, max_len, &mut examples);
            }
        }
        Ok(examples)
    }

    /// BERT's pairing of one document.
    fn pairs_of(
        &self,
        d: usize,
        special: &SpecialIds,
        max_len: usize,
        rng: &mut StdRng,
        out: &mut Vec<PretrainingExample>,
    ) {
        let document = &self.documents[d];
        let target = max_len - 3;
        let mut chunk: Vec<&[u32]> = Vec::new();
        let mut chunk_len = 0;
        let mut i = 0;
        while i < document.len() {
            chunk.push(&document[i]);
            chunk_len += document[i].len();
            if i + 1 == document.len() || chunk_len >= target {
                let a_end = if chunk.len() >= 2 {
                    rng.random_range(1..chunk.len())
                } else {
                    1
                };
                let a: Vec<u32> = chunk[..a_end].concat();
                let random_next = chunk.len() == 1 || rng.random_bool(0.5);
                let b: Vec<u32> = if random_next {
                    // Put the unused sentences of this chunk back for the next one.
                    i -= chunk.len() - a_end;
                    let other = loop {
                        let o = rng.random_range(0..self.documents.len());
                        if o != d {
                            break &self.documents[o];
                        }
                    };
                    let start = rng.random_range(0..other.len());
                    let room = target.saturating_sub(a.len()).max(1);
                    let mut b = Vec::new();
                    for sentence in &other[start..] {
                        b.extend_from_slice(sentence);
                        if b.len() >= room {
                            break;
                        }
                    }
                    b
                } else {
                    chunk[a_end..].concat()
                };
                let (a, b) = truncate_pair(a, b, target);
                out.push(PretrainingExample {
                    input: pair_input(&a, &b, special),
                    is_next: Some(!random_next),
                });
                chunk.clear();
                chunk_len = 0;
            }
            i += 1;
        }
    }
}

/// Consecutive sentences of `document` packed into single segments of at most `max_len`
/// tokens with `[CLS]` and `[SEP]`; a sentence longer than that is cut.
fn pack(
    document: &[Vec<u32>],
    special: &SpecialIds,
    max_len: usize,
    out: &mut Vec<PretrainingExample>,
) {
    let room = max_len - 2;
    let mut current: Vec<u32> = Vec::new();
    let mut flush = |current: &mut Vec<u32>| {
        if current.is_empty() {
            return;
        }
        let mut ids = Vec::with_capacity(current.len() + 2);
        ids.push(special.cls);
        ids.extend_from_slice(current);
        ids.push(special.sep);
        out.push(PretrainingExample {
            input: EncodedInput {
                segments: vec![0; ids.len()],
                ids,
            },
            is_next: None,
        });
        current.clear();
    };
    for sentence in document {
        if !current.is_empty() && current.len() + sentence.len() > room {
            flush(&mut current);
        }
        current.extend_from_slice(&sentence[..sentence.len().min(room)]);
    }
    flush(&mut current);
}

/// Cuts the longer of the two until both fit in `target` tokens (BERT cuts randomly from the
/// front or back; this cuts from the back).
fn truncate_pair(mut a: Vec<u32>, mut b: Vec<u32>, target: usize) -> (Vec<u32>, Vec<u32>) {
    while a.len() + b.len() > target {
        if a.len() > b.len() {
            a.pop();
        } else {
            b.pop();
        }
    }
    (a, b)
}

fn pair_input(a: &[u32], b: &[u32], special: &SpecialIds) -> EncodedInput {
    let mut ids = Vec::with_capacity(a.len() + b.len() + 3);
    ids.push(special.cls);
    ids.extend_from_slice(a);
    ids.push(special.sep);
    let first = ids.len();
    ids.extend_from_slice(b);
    ids.push(special.sep);
    let mut segments = vec![0; first];
    segments.resize(ids.len(), 1);
    EncodedInput { ids, segments }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const SPECIAL: SpecialIds = SpecialIds::WORDPIECE;

    /// On a large sample: 15% of ordinary tokens selected; of those 80% `[MASK]`, 10% random,
    /// 10% unchanged; specials never selected nor drawn as replacements.
    #[test]
    fn masking_follows_bert_rates_and_never_touches_special_tokens() {
        let mut rng = StdRng::seed_from_u64(1);
        let vocab = 1000;
        let (mut ordinary, mut selected, mut masked, mut random, mut kept) = (0, 0, 0, 0, 0);
        for _ in 0..2000 {
            let mut ids = vec![SPECIAL.cls];
            ids.extend((0..60).map(|_| rng.random_range(5..vocab as u32)));
            ids.push(SPECIAL.sep);
            ids.extend([SPECIAL.pad, SPECIAL.unk]);
            let out = mask_tokens(&ids, &SPECIAL, vocab, &MaskingConfig::default(), &mut rng);
            ordinary += 60;
            selected += out.positions.len();
            for (&p, &original) in out.positions.iter().zip(&out.originals) {
                assert!(!SPECIAL.contains(ids[p]), "a special token was selected");
                assert_eq!(original, ids[p]);
                match out.ids[p] {
                    id if id == SPECIAL.mask => masked += 1,
                    id if id == original => kept += 1,
                    id => {
                        assert!(!SPECIAL.contains(id), "random replacement {id} is special");
                        random += 1;
                    }
                }
            }
            // Nothing outside the selection changes.
            for p in (0..ids.len()).filter(|p| !out.positions.contains(p)) {
                assert_eq!(out.ids[p], ids[p]);
            }
        }
        let rate = |n: usize, of: usize| n as f64 / of as f64;
        assert!((rate(selected, ordinary) - 0.15).abs() < 0.005);
        assert!((rate(masked, selected) - 0.8).abs() < 0.01);
        // A random draw equal to the original counts as kept: 1 in 995, within tolerance.
        assert!((rate(random, selected) - 0.1).abs() < 0.01);
        assert!((rate(kept, selected) - 0.1).abs() < 0.01);
    }

    #[test]
    fn masks_differ_between_draws_and_repeat_under_a_seed() {
        let ids: Vec<u32> = (5..105).collect();
        let draw = |seed| {
            mask_tokens(
                &ids,
                &SPECIAL,
                200,
                &MaskingConfig::default(),
                &mut StdRng::seed_from_u64(seed),
            )
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3).positions, draw(4).positions);
        // A sequence of one real token still gets a prediction.
        let short = mask_tokens(
            &[2, 9, 3],
            &SPECIAL,
            200,
            &MaskingConfig::default(),
            &mut StdRng::seed_from_u64(0),
        );
        assert_eq!(short.positions, [1]);
    }

    /// Documents of sentences whose tokens name their document and sentence: 100 * d + s.
    fn corpus(documents: usize, sentences: usize, len: usize) -> PretrainingCorpus {
        PretrainingCorpus::new(
            (0..documents)
                .map(|d| {
                    (0..sentences)
                        .map(|s| vec![(1000 + 100 * d + s) as u32; len])
                        .collect()
                })
                .collect(),
        )
    }

    #[test]
    fn next_sentence_pairs_are_half_true_continuations_and_half_from_other_documents() {
        let documents = corpus(20, 30, 6);
        let mut rng = StdRng::seed_from_u64(9);
        let examples = documents.examples(&SPECIAL, 32, true, &mut rng).unwrap();
        let mut next = 0;
        for example in &examples {
            let ids = &example.input.ids;
            assert!(ids.len() <= 32);
            assert_eq!(ids[0], SPECIAL.cls);
            assert_eq!(*ids.last().unwrap(), SPECIAL.sep);
            let split = ids.iter().position(|&t| t == SPECIAL.sep).unwrap();
            assert!(example.input.segments[..=split].iter().all(|&s| s == 0));
            assert!(example.input.segments[split + 1..].iter().all(|&s| s == 1));
            let (a, b) = (&ids[1..split], &ids[split + 1..ids.len() - 1]);
            let doc = |t: u32| (t - 1000) / 100;
            let same_document = doc(a[0]) == doc(b[0]);
            let follows = b[0] == a[a.len() - 1] + 1;
            if example.is_next == Some(true) {
                next += 1;
                assert!(same_document && follows, "a true pair must continue A");
            } else {
                assert!(!same_document, "a random B must come from another document");
            }
        }
        let share = next as f64 / examples.len() as f64;
        assert!(
            (0.4..0.6).contains(&share),
            "{share} of {} pairs are true",
            examples.len()
        );
        assert!(
            corpus(1, 5, 3)
                .examples(&SPECIAL, 32, true, &mut rng)
                .is_err()
        );
    }

    #[test]
    fn without_pairs_sentences_are_packed_within_documents() {
        let documents = corpus(2, 10, 7);
        let examples = documents
            .examples(&SPECIAL, 24, false, &mut StdRng::seed_from_u64(0))
            .unwrap();
        // 22 tokens of room: three 7-token sentences per input, never across documents.
        assert_eq!(examples.len(), 2 * 4);
        assert_eq!(examples[0].input.ids.len(), 23);
        assert_eq!(examples[3].input.ids.len(), 9);
        for e in &examples {
            assert!(e.is_next.is_none() && e.input.segments.iter().all(|&s| s == 0));
        }
    }

    #[test]
    fn documents_end_at_blank_lines_or_every_n_lines() {
        let lines = vec![vec![5], vec![6], vec![], vec![7], vec![8], vec![9]];
        assert_eq!(
            PretrainingCorpus::from_lines(lines.clone(), None).documents(),
            2
        );
        let every_two = PretrainingCorpus::from_lines(lines, Some(2));
        assert_eq!(every_two.documents(), 3);
        assert_eq!(every_two.sentences(), 5);
    }
}
