//! Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus)
//! sampling, reproducible under a seed. Works on host-side logits of one position, which is all
//! incremental decoding reads back per step.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How to pick tokens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` (1 = no limit).
    pub top_p: f64,
    /// Seed of the sampler's random stream.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks ranges; the message names the option.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

/// A seeded token sampler; see the module docs.
pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    /// A sampler whose random stream starts from `config.seed`.
    pub fn new(config: SamplingConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self { config, rng }
    }

    /// Picks the token after the last position of `logits` (`[1, len, vocab]`), as the models'
    /// generation loops need.
    pub fn sample_last(&mut self, logits: Tensor<3>) -> u32 {
        let [_, len, vocab] = logits.dims();
        let last = logits
            .narrow(1, len - 1, 1)
            .reshape([vocab])
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("logits read back as f32");
        self.sample(&last) as u32
    }

    /// Picks a token id from one position's logits.
    pub fn sample(&mut self, logits: &[f32]) -> usize {
        assert!(!logits.is_empty(), "no logits to sample from");
        if self.config.temperature == 0.0 {
            return argmax(logits);
        }
        let probs = self.distribution(logits);
        let mut r = self.rng.random::<f64>();
        for &(token, p) in &probs {
            if r < p {
                return token;
            }
            r -= p;
        }
        // Rounding left a sliver of mass: the last kept token takes it.
        probs
            .last()
            .expect("top-k and top-p keep at least one token")
            .0
    }

    /// What [`sample`](Self::sample) draws from, as one probability per token of the
    /// vocabulary (zero outside top-k / top-p; all mass on the argmax at temperature 0).
    pub fn probabilities(&self, logits: &[f32]) -> Vec<f64> {
        let mut dense = vec![0.0; logits.len()];
        if self.config.temperature == 0.0 {
            dense[argmax(logits)] = 1.0;
        } else {
            for (token, p) in self.distribution(logits) {
                dense[token] = p;
            }
        }
        dense
    }

    /// A token drawn from `probabilities` (non-negative, summing to one or near it) with this
    /// sampler's random stream.
    pub fn draw(&mut self, probabilities: &[f64]) -> usize {
        let total: f64 = probabilities.iter().sum();
        let mut r = self.uniform() * total;
        let mut last = 0;
        for (token, &p) in probabilities.iter().enumerate() {
            if p > 0.0 {
                if r < p {
                    return token;
                }
                r -= p;
                last = token;
            }
        }
        // Rounding left a sliver of mass: the last token with any takes it.
        last
    }

    /// A number drawn uniformly from `[0, 1)` with this sampler's random stream.
    pub fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    /// The renormalised distribution sampling draws from: `(token, probability)` pairs, most
    /// likely first, after temperature, top-k and top-p.
    pub fn distribution(&self, logits: &[f32]) -> Vec<(usize, f64)> {
        let t = self.config.temperature.max(f64::MIN_POSITIVE);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        let likelier = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]);
        // Top-k picks its k first and sorts only those: a GPT-2 vocabulary's full sort costs
        // about as much as a small model's decoding step.
        let k = self.config.top_k;
        if k > 0 && k < order.len() {
            order.select_nth_unstable_by(k - 1, likelier);
            order.truncate(k);
        }
        order.sort_by(likelier);
        let max = logits[order[0]] as f64;
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i] as f64 - max) / t).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut kept = Vec::with_capacity(order.len());
        let mut mass = 0.0;
        for (&token, w) in order.iter().zip(weights) {
            let p = w / total;
            kept.push((token, p));
            mass += p;
            if mass >= self.config.top_p {
                break;
            }
        }
        let kept_mass: f64 = kept.iter().map(|(_, p)| p).sum();
        kept.iter_mut().for_each(|(_, p)| *p /= kept_mass);
        kept
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

/// Token ids as the `[1, len]` batch a model's forward takes.
pub fn ids_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(
        TensorData::new(ids.iter().map(|&t| t as i64).collect(), [1, ids.len()]),
        device,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGITS: [f32; 5] = [1.0, 3.0, 0.5, 2.5, -1.0];

    fn sampler(temperature: f64, top_k: usize, top_p: f64, seed: u64) -> Sampler {
        Sampler::new(SamplingConfig {
            temperature,
            top_k,
            top_p,
            seed,
        })
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplingConfig::greedy());
        assert!((0..10).all(|_| s.sample(&LOGITS) == 1));
    }

    #[test]
    fn top_k_only_ever_picks_the_k_best() {
        let mut s = sampler(1.0, 2, 1.0, 3);
        let picks: Vec<usize> = (0..500).map(|_| s.sample(&LOGITS)).collect();
        assert!(picks.iter().all(|&t| t == 1 || t == 3));
        assert!(picks.contains(&1) && picks.contains(&3));
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        let s = sampler(1.0, 0, 0.9, 0);
        let dist = s.distribution(&LOGITS);
        // softmax: p(1)=.543, p(3)=.329, p(0)=.073, p(2)=.045: 1 and 3 make .872 < .9, so the
        // nucleus needs token 0 as well, and no more.
        let tokens: Vec<usize> = dist.iter().map(|d| d.0).collect();
        assert_eq!(tokens, vec![1, 3, 0]);
        let total: f64 = dist.iter().map(|d| d.1).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }

    #[test]
    fn sampling_frequencies_follow_the_tempered_softmax() {
        let mut s = sampler(0.5, 0, 1.0, 11);
        let n = 20_000;
        let mut counts = [0usize; 5];
        (0..n).for_each(|_| counts[s.sample(&LOGITS)] += 1);
        let weights: Vec<f64> = LOGITS.iter().map(|&l| (l as f64 / 0.5).exp()).collect();
        let z: f64 = weights.iter().sum();
        for (c, w) in counts.iter().zip(&weights) {
            let expected = w / z;
            assert!((*c as f64 / n as f64 - expected).abs() < 0.015);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens() {
        let draw = |seed| {
            let mut s = sampler(1.0, 0, 1.0, seed);
            (0..50).map(|_| s.sample(&LOGITS)).collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }
}
