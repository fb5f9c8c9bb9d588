//! Speculative decoding (Leviathan et al. 2023, "Fast inference from transformers via
//! speculative decoding"; Chen et al. 2023, "Accelerating large language model decoding with
//! speculative sampling"): a cheap draft model proposes `k` tokens one at a time, the target
//! model scores all of them in one read, and each proposal is kept with probability
//! `min(1, p(x) / q(x))`; the first one refused is replaced by a draw from `max(0, p - q)`
//! renormalised, and when all are kept the target's own next distribution gives one token more.
//! The tokens follow exactly the target's distribution (after the sampler's temperature, top-k
//! and top-p, applied to both models alike), and at temperature 0 they are the target's greedy
//! tokens. Both models keep their caches across rounds and cut back what was refused.

use crate::decoding::Sampler;
use crate::incremental::{Cursor, IncrementalLm};

/// What a speculative generation did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpeculativeStats {
    /// Rounds: target reads, each scoring up to `k` proposals.
    pub rounds: usize,
    /// Tokens the draft proposed.
    pub drafted: usize,
    /// Proposals the target kept.
    pub accepted: usize,
    /// New tokens produced.
    pub generated: usize,
}

impl SpeculativeStats {
    /// The share of proposals kept.
    pub fn acceptance_rate(&self) -> f64 {
        self.accepted as f64 / self.drafted.max(1) as f64
    }

    /// New tokens per target read (1 for plain decoding).
    pub fn tokens_per_round(&self) -> f64 {
        self.generated as f64 / self.rounds.max(1) as f64
    }
}

/// Continues `prompt` by `max_new_tokens` tokens of `target`'s distribution (as `sampler`
/// shapes it), with `draft` proposing `draft_tokens` at a time. Returns the prompt and the new
/// tokens, and what happened. The two models must share a vocabulary.
pub fn speculative_generate<T: IncrementalLm, D: IncrementalLm>(
    target: &T,
    draft: &D,
    prompt: &[u32],
    max_new_tokens: usize,
    draft_tokens: usize,
    sampler: &mut Sampler,
) -> (Vec<u32>, SpeculativeStats) {
    assert!(
        !prompt.is_empty(),
        "generation needs at least one prompt token"
    );
    assert!(draft_tokens >= 1, "a draft proposes at least one token");
    let mut text = prompt.to_vec();
    let end = prompt.len() + max_new_tokens;
    let mut stats = SpeculativeStats::default();
    let (mut target_cursor, mut draft_cursor) = (Cursor::new(target), Cursor::new(draft));
    while text.len() < end {
        // Never propose past the end: the last round may be shorter.
        let k = draft_tokens.min(end - text.len() - 1);
        let known = text.len();
        let mut proposals = Vec::with_capacity(k);
        for _ in 0..k {
            let logits = draft_cursor.logits(draft, &text, 1);
            let q = sampler.probabilities(&logits[0]);
            let token = sampler.draw(&q);
            text.push(token as u32);
            proposals.push((token, q));
        }
        let verdicts = target_cursor.logits(target, &text, k + 1);
        text.truncate(known);
        stats.rounds += 1;
        stats.drafted += k;
        let mut next = None;
        for ((token, q), logits) in proposals.iter().zip(&verdicts) {
            let p = sampler.probabilities(logits);
            if sampler.uniform() < p[*token] / q[*token] {
                text.push(*token as u32);
                stats.accepted += 1;
                continue;
            }
            let residual: Vec<f64> = p.iter().zip(q).map(|(p, q)| (p - q).max(0.0)).collect();
            // p = q on every token would have kept the proposal: the residual has mass unless
            // rounding ate it, when p itself is the fair draw.
            let from = if residual.iter().sum::<f64>() > 0.0 {
                &residual
            } else {
                &p
            };
            next = Some(sampler.draw(from) as u32);
            break;
        }
        let next = next.unwrap_or_else(|| {
            let p = sampler.probabilities(&verdicts[k]);
            sampler.draw(&p) as u32
        });
        text.push(next);
        // Both caches keep what was accepted and forget the rest; neither has read `next`.
        target_cursor.rewind(target, text.len() - 1);
        draft_cursor.rewind(draft, text.len() - 1);
    }
    stats.generated = text.len() - prompt.len();
    (text, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoding::SamplingConfig;
    use crate::incremental::generate;
    use crate::incremental::tests::Table;
    use std::collections::HashMap;

    /// Draws `runs` continuations of 3 tokens with speculative decoding and compares their
    /// frequencies with the target's exact probabilities (computed by enumeration, through the
    /// same sampler shaping) by a chi-square test.
    fn chi_square_against_target(config: SamplingConfig, draft_salt: u64, k: usize) -> f64 {
        let vocab = 4;
        let (target, draft) = (
            Table::new(vocab, None, 11),
            Table::new(vocab, None, draft_salt),
        );
        let prompt = [2u32];
        let shaping = Sampler::new(config.clone());
        let mut exact: HashMap<Vec<u32>, f64> = HashMap::new();
        let mut frontier = vec![(prompt.to_vec(), 1.0)];
        while let Some((text, p)) = frontier.pop() {
            if text.len() == prompt.len() + 3 {
                exact.insert(text, p);
                continue;
            }
            let probs = shaping.probabilities(&target.logits_of(&text));
            for (token, &q) in probs.iter().enumerate().filter(|(_, q)| **q > 0.0) {
                let mut longer = text.clone();
                longer.push(token as u32);
                frontier.push((longer, p * q));
            }
        }
        let runs = 40_000;
        let mut sampler = Sampler::new(config);
        let mut counts: HashMap<Vec<u32>, usize> = HashMap::new();
        for _ in 0..runs {
            let (text, _) = speculative_generate(&target, &draft, &prompt, 3, k, &mut sampler);
            *counts.entry(text).or_default() += 1;
        }
        for text in counts.keys() {
            assert!(exact.contains_key(text), "{text:?} has no probability");
        }
        exact
            .iter()
            .map(|(text, p)| {
                let expected = p * runs as f64;
                let observed = counts.get(text).copied().unwrap_or(0) as f64;
                (observed - expected).powi(2) / expected
            })
            .sum()
    }

    #[test]
    fn speculative_samples_follow_the_target_distribution() {
        // 64 sequences (63 degrees of freedom): the 99.9th percentile of chi-square is 103.4;
        // sampling the draft's distribution instead scores in the thousands.
        let plain = SamplingConfig {
            seed: 5,
            ..SamplingConfig::default()
        };
        // Three new tokens: the first round proposes at most two.
        for k in [1, 2] {
            let chi2 = chi_square_against_target(plain.clone(), 23, k);
            assert!(chi2 < 103.4, "k {k}: chi-square {chi2:.1}");
        }
        // Temperature and top-k shape both models' distributions alike: 3 kept tokens of 4
        // leave 27 sequences (26 degrees of freedom; 99.9th percentile 54.1).
        let shaped = SamplingConfig {
            temperature: 0.7,
            top_k: 3,
            seed: 9,
            ..SamplingConfig::default()
        };
        let chi2 = chi_square_against_target(shaped, 23, 2);
        assert!(chi2 < 54.1, "shaped: chi-square {chi2:.1}");
    }

    #[test]
    fn the_test_tells_a_wrong_sampler_apart() {
        // The draft's own distribution is far from the target's: a decoder that kept every
        // proposal would fail the test above. A draft identical to the target keeps them all.
        let config = SamplingConfig {
            seed: 5,
            ..SamplingConfig::default()
        };
        let (target, draft) = (Table::new(4, None, 11), Table::new(4, None, 23));
        let mut sampler = Sampler::new(config.clone());
        let runs = 40_000;
        let mut counts: HashMap<Vec<u32>, usize> = HashMap::new();
        for _ in 0..runs {
            let text = generate(&draft, &[2], 3, &mut sampler);
            *counts.entry(text).or_default() += 1;
        }
        let mut same = Sampler::new(config);
        let (_, stats) = speculative_generate(&target, &target, &[2], 50, 4, &mut same);
        assert_eq!(stats.accepted, stats.drafted);
        assert_eq!(stats.generated, 50);
        // The draft's sequence frequencies against the target's probabilities.
        let shaping = Sampler::new(SamplingConfig::default());
        let chi2: f64 = counts
            .iter()
            .map(|(text, &n)| {
                let mut p = 1.0;
                for i in 1..text.len() {
                    p *= shaping.probabilities(&target.logits_of(&text[..i]))[text[i] as usize];
                }
                (n as f64 - p * runs as f64).powi(2) / (p * runs as f64)
            })
            .sum();
        assert!(chi2 > 1000.0, "chi-square {chi2:.1}");
    }

    #[test]
    fn at_temperature_zero_the_output_is_the_targets_greedy_output() {
        for (context, k) in [
            (None, 1),
            (None, 3),
            (Some(7), 4),
            (Some(5), 2),
            (Some(6), 8),
        ] {
            let (target, draft) = (Table::new(7, context, 1), Table::new(7, context, 4));
            let mut greedy = Sampler::new(SamplingConfig::greedy());
            let expected = generate(&target, &[3, 1], 40, &mut greedy);
            let (text, stats) = speculative_generate(&target, &draft, &[3, 1], 40, k, &mut greedy);
            assert_eq!(text, expected, "context {context:?}, k {k}");
            assert_eq!(stats.generated, 40);
            assert!(stats.rounds <= 40 && stats.drafted <= 40 * k);
        }
        // A draft that is the target is always right: one target read per k + 1 tokens.
        let target = Table::new(7, None, 1);
        let mut greedy = Sampler::new(SamplingConfig::greedy());
        let (_, stats) = speculative_generate(&target, &target, &[3], 40, 4, &mut greedy);
        assert_eq!(stats.rounds, 8);
        assert_eq!(stats.acceptance_rate(), 1.0);
    }

    #[test]
    fn rejected_tokens_are_cut_back_not_reread() {
        // Tokens read by the target: each round reads its k proposals plus the token the
        // previous round added, so the prompt is read once and no accepted token twice.
        let (target, draft) = (Table::new(7, None, 1), Table::new(7, None, 4));
        let mut greedy = Sampler::new(SamplingConfig::greedy());
        let (_, stats) = speculative_generate(&target, &draft, &[3, 1, 4], 30, 3, &mut greedy);
        assert_eq!(target.reads.get(), 3 + stats.drafted + stats.rounds - 1);
    }
}
