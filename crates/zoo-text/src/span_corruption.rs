//! T5's span corruption (Raffel et al. 2020, section 3.1.4): about `noise_density` of the
//! tokens, in spans of mean length `mean_span_length`, are dropped from the input, each span
//! replaced by a sentinel; the target lists the sentinels with the spans they stand for and
//! ends with one more sentinel:
//!
//! ```text
//! input:  Thank you <X> me to your party <Y> week .
//! target: <X> for inviting <Y> last <Z>
//! ```
//!
//! Span boundaries are drawn as T5's `random_spans_noise_mask` draws them: the noise and
//! non-noise token counts are fixed by the length, and each is split into the same number of
//! non-empty runs at random, the runs alternating and starting with non-noise.

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Sentinels a span-corruption vocabulary carries (`<extra_id_0>` to `<extra_id_99>`, as T5's).
pub const SENTINELS: usize = 100;

/// The objective's rates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpanCorruption {
    /// Share of tokens dropped (T5: 0.15).
    pub noise_density: f64,
    /// Mean length of a dropped span (T5: 3).
    pub mean_span_length: f64,
}

impl Default for SpanCorruption {
    fn default() -> Self {
        Self {
            noise_density: 0.15,
            mean_span_length: 3.0,
        }
    }
}

/// An input and its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corrupted {
    /// The tokens with each dropped span replaced by its sentinel.
    pub input: Vec<u32>,
    /// Each sentinel followed by its span, then one closing sentinel.
    pub target: Vec<u32>,
}

impl SpanCorruption {
    /// Corrupts `tokens`; `sentinels` are the ids of `<extra_id_0>`, `<extra_id_1>`, ... in
    /// order. An error when there are more spans than sentinels (one more is needed to close
    /// the target) or when the rates are out of range.
    pub fn apply(
        &self,
        tokens: &[u32],
        sentinels: &[u32],
        rng: &mut StdRng,
    ) -> Result<Corrupted, String> {
        let mask = self.noise_mask(tokens.len(), rng)?;
        corrupt(tokens, &mask, sentinels)
    }

    /// How many of `len` (at least 2) tokens are noise, and in how many runs before the roll
    /// (the roll may split one run in two).
    pub fn counts(&self, len: usize) -> (usize, usize) {
        let noise = ((len as f64 * self.noise_density).round() as usize).clamp(1, len - 1);
        let spans = ((noise as f64 / self.mean_span_length).round() as usize)
            .max(1)
            .min(noise)
            .min(len - noise);
        (noise, spans)
    }

    /// Sentinels a text of `len` tokens may need: one per span (one more if the roll splits
    /// a span) and one to close the target.
    pub fn sentinels_needed(&self, len: usize) -> usize {
        if len < 2 {
            return 1;
        }
        self.counts(len).1 + 2
    }

    /// Which of `len` tokens are noise: T5's `random_spans_noise_mask`, rotated by a random
    /// offset (seqio's `random_roll`). Without the roll the runs alternate kept, noise, kept,
    /// noise, ... and the last token is always noise: on short texts with one span the task
    /// would always be "finish the sentence". Rolled, a span may wrap from the end to the
    /// start, making one more span.
    pub fn noise_mask(&self, len: usize, rng: &mut StdRng) -> Result<Vec<bool>, String> {
        if !(self.noise_density > 0.0 && self.noise_density < 1.0) {
            return Err(format!(
                "noise_density must be in (0, 1), got {}",
                self.noise_density
            ));
        }
        if self.mean_span_length < 1.0 {
            return Err(format!(
                "mean_span_length must be at least 1, got {}",
                self.mean_span_length
            ));
        }
        if len < 2 {
            return Ok(vec![false; len]);
        }
        let (noise, spans) = self.counts(len);
        let noise_lengths = random_segmentation(noise, spans, rng);
        let kept_lengths = random_segmentation(len - noise, spans, rng);
        let mut mask = Vec::with_capacity(len);
        for (kept, dropped) in kept_lengths.into_iter().zip(noise_lengths) {
            mask.extend(std::iter::repeat_n(false, kept));
            mask.extend(std::iter::repeat_n(true, dropped));
        }
        mask.rotate_right(rng.random_range(0..len));
        Ok(mask)
    }
}

/// `items` split into `segments` non-empty runs of random lengths (summing to `items`).
fn random_segmentation(items: usize, segments: usize, rng: &mut StdRng) -> Vec<usize> {
    // A boundary after each of `segments - 1` distinct positions among the first items - 1.
    let mut boundaries: Vec<bool> = (0..items - 1).map(|i| i < segments - 1).collect();
    boundaries.shuffle(rng);
    let mut lengths = vec![0; segments];
    let mut segment = 0;
    for i in 0..items {
        lengths[segment] += 1;
        if i < items - 1 && boundaries[i] {
            segment += 1;
        }
    }
    lengths
}

/// The input and target of `tokens` with the `mask`ed runs dropped.
pub fn corrupt(tokens: &[u32], mask: &[bool], sentinels: &[u32]) -> Result<Corrupted, String> {
    assert_eq!(tokens.len(), mask.len(), "one mask bit per token");
    let spans = (0..mask.len())
        .filter(|&i| mask[i] && (i == 0 || !mask[i - 1]))
        .count();
    if spans + 1 > sentinels.len() {
        return Err(format!(
            "{spans} noise spans need {} sentinels, {} given",
            spans + 1,
            sentinels.len()
        ));
    }
    let mut input = Vec::with_capacity(tokens.len());
    let mut target = Vec::with_capacity(mask.iter().filter(|&&m| m).count() + spans + 1);
    let mut sentinel = 0;
    for (i, (&token, &noise)) in tokens.iter().zip(mask).enumerate() {
        if !noise {
            input.push(token);
            continue;
        }
        if i == 0 || !mask[i - 1] {
            input.push(sentinels[sentinel]);
            target.push(sentinels[sentinel]);
            sentinel += 1;
        }
        target.push(token);
    }
    target.push(sentinels[sentinel]);
    Ok(Corrupted { input, target })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The paper's example, with words as ids and sentinels <X>, <Y>, <Z> as 100, 101, 102.
    #[test]
    fn the_format_is_t5s() {
        let words = "Thank you for inviting me to your party last week .";
        let vocab: Vec<&str> = words.split(' ').collect();
        let tokens: Vec<u32> = (0..vocab.len() as u32).collect();
        // "for inviting" and "last" are noise.
        let mask: Vec<bool> = vocab
            .iter()
            .map(|w| ["for", "inviting", "last"].contains(w))
            .collect();
        let out = corrupt(&tokens, &mask, &[100, 101, 102, 103]).unwrap();
        let show = |ids: &[u32]| -> String {
            ids.iter()
                .map(|&id| match id {
                    100 => "<X>",
                    101 => "<Y>",
                    102 => "<Z>",
                    id => vocab[id as usize],
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            show(&out.input),
            "Thank you <X> me to your party <Y> week ."
        );
        assert_eq!(show(&out.target), "<X> for inviting <Y> last <Z>");
        assert!(corrupt(&tokens, &mask, &[100, 101]).is_err());
    }

    #[test]
    fn noise_is_fifteen_percent_in_spans_of_three_and_repeats_under_a_seed() {
        let objective = SpanCorruption::default();
        let mut rng = StdRng::seed_from_u64(4);
        let (mut noise, mut spans, mut tokens, mut last_noise) = (0, 0, 0, 0);
        for _ in 0..200 {
            let mask = objective.noise_mask(100, &mut rng).unwrap();
            tokens += mask.len();
            noise += mask.iter().filter(|&&m| m).count();
            // Counted around the circle, so a span the roll wrapped counts once.
            let circular = (0..100)
                .filter(|&i| mask[i] && !mask[(i + 99) % 100])
                .count();
            assert_eq!(circular, 5, "15 noise tokens in round(15 / 3) = 5 spans");
            spans += circular;
            last_noise += mask[99] as usize;
        }
        assert_eq!(noise, 200 * 15);
        assert_eq!(spans, 200 * 5);
        assert_eq!(tokens, 200 * 100);
        // The roll puts noise at the end about 15% of the time, not always.
        assert!((10..=60).contains(&last_noise), "{last_noise} of 200");
        let draw = |seed| {
            SpanCorruption::default()
                .noise_mask(60, &mut StdRng::seed_from_u64(seed))
                .unwrap()
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
    }

    /// Putting each target span back in place of its sentinel gives the original tokens.
    #[test]
    fn input_and_target_together_restore_the_text() {
        let sentinels: Vec<u32> = (1000..1100).collect();
        let mut rng = StdRng::seed_from_u64(1);
        for len in [2, 3, 7, 50, 333] {
            let tokens: Vec<u32> = (0..len).collect();
            let out = SpanCorruption::default()
                .apply(&tokens, &sentinels, &mut rng)
                .unwrap();
            let mut restored = Vec::new();
            for &id in &out.input {
                if id < 1000 {
                    restored.push(id);
                    continue;
                }
                let at = out.target.iter().position(|&t| t == id).unwrap();
                restored.extend(out.target[at + 1..].iter().take_while(|&&t| t < 1000));
            }
            assert_eq!(restored, tokens, "length {len}");
        }
    }
}
