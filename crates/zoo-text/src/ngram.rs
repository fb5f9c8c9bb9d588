//! A count-based n-gram language model with interpolated modified Kneser-Ney smoothing
//! (Chen & Goodman 1998): the baseline every neural LM on PTB is compared against.
//!
//! For an n-gram `h w` of order `k`, with `c` its count (raw counts at the highest order,
//! continuation counts `N1+(• h w)` below it):
//!
//! `p(w | h) = max(c(h w) − D(c(h w)), 0) / c(h) + γ(h) p(w | h')`, where `h'` drops the oldest
//! token of `h`, `c(h) = Σ_w c(h w)`, `γ(h) = (D1 N1(h •) + D2 N2(h •) + D3+ N3+(h •)) / c(h)`,
//! and the discounts come from each order's count-of-counts `n_i`: `Y = n1 / (n1 + 2 n2)`,
//! `D1 = 1 − 2Y n2/n1`, `D2 = 2 − 3Y n3/n2`, `D3+ = 3 − 4Y n4/n3`. A context never seen backs off
//! entirely; below unigrams sits the uniform distribution over the vocabulary, so every token
//! has a probability. The token stream is treated as one sequence (with PTB's `<eos>` tokens
//! marking sentences), the way the neural LMs read it.

use crate::TextError;
use std::collections::HashMap;
use std::path::Path;

/// The first bytes of a saved model.
const MAGIC: &[u8] = b"ZOOKN1\n";

/// Counts of one order: n-gram counts, and per context their total and how many n-grams after
/// it occur once, twice, and three times or more.
#[derive(Debug, Default)]
struct Order {
    counts: HashMap<Box<[u32]>, u32>,
    contexts: HashMap<Box<[u32]>, ContextStats>,
    discounts: [f64; 3],
}

#[derive(Clone, Copy, Debug, Default)]
struct ContextStats {
    total: u64,
    /// How many distinct next tokens have count 1, 2 and 3+.
    by_count: [u32; 3],
}

/// An interpolated modified Kneser-Ney model; see the module docs.
#[derive(Debug)]
pub struct KneserNey {
    /// `orders[k - 1]` holds the n-grams of length `k`.
    orders: Vec<Order>,
    vocab_size: usize,
}

impl KneserNey {
    /// Counts `tokens` (ids below `vocab_size`) up to n-grams of length `order`.
    pub fn train(tokens: &[u32], order: usize, vocab_size: usize) -> Result<Self, String> {
        if order == 0 {
            return Err("the n-gram order must be at least 1".into());
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(format!(
                "token id {bad} is outside the vocabulary of {vocab_size}"
            ));
        }
        let mut orders: Vec<Order> = (0..order).map(|_| Order::default()).collect();
        // The highest order counts occurrences.
        for gram in tokens.windows(order) {
            *orders[order - 1].counts.entry(gram.into()).or_default() += 1;
        }
        // Lower orders count distinct left extensions: N1+(• g) for each g, read off the order
        // above (every g of length k < order with a left neighbour appears as the suffix of a
        // (k+1)-gram; the n-grams at the very start of the stream have none and are not
        // continuation-counted, as in the standard formulation).
        for k in (1..order).rev() {
            let (lower, upper) = orders.split_at_mut(k);
            let target = &mut lower[k - 1].counts;
            for gram in upper[0].counts.keys() {
                *target.entry(gram[1..].into()).or_default() += 1;
            }
        }
        Ok(Self::from_counts(
            orders.into_iter().map(|level| level.counts).collect(),
            vocab_size,
        ))
    }

    /// The model of these counts (`counts[k - 1]`: n-grams of length `k`, raw counts at the
    /// highest order and continuation counts below); discounts and context totals follow.
    fn from_counts(counts: Vec<HashMap<Box<[u32]>, u32>>, vocab_size: usize) -> Self {
        let orders = counts
            .into_iter()
            .map(|counts| {
                let mut contexts: HashMap<Box<[u32]>, ContextStats> = HashMap::new();
                for (gram, &count) in &counts {
                    let stats = contexts.entry(gram[..gram.len() - 1].into()).or_default();
                    stats.total += count as u64;
                    stats.by_count[(count.min(3) - 1) as usize] += 1;
                }
                Order {
                    discounts: discounts(counts.values()),
                    counts,
                    contexts,
                }
            })
            .collect();
        Self { orders, vocab_size }
    }

    /// Writes the counts to `path`: the magic `ZOOKN1\n`, then little-endian `u32`s: the order,
    /// the vocabulary size, and per order the number of n-grams followed by each n-gram's ids
    /// and count. Discounts and context totals are derived again on loading.
    pub fn save(&self, path: &Path) -> Result<(), TextError> {
        let mut bytes = MAGIC.to_vec();
        let mut put = |v: u32| bytes.extend_from_slice(&v.to_le_bytes());
        put(self.order() as u32);
        put(self.vocab_size as u32);
        for level in &self.orders {
            put(level.counts.len() as u32);
            for (gram, &count) in &level.counts {
                gram.iter().for_each(|&id| put(id));
                put(count);
            }
        }
        crate::files::write_atomically(path, &bytes).map_err(|e| TextError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads a model [`save`](Self::save) wrote; a damaged file is an error naming it.
    pub fn load(path: &Path) -> Result<Self, TextError> {
        let bytes = std::fs::read(path).map_err(|e| TextError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let corrupt = |what: &str| TextError::Parse {
            path: path.to_path_buf(),
            message: format!("not an n-gram model written by zoo ({what})"),
        };
        let body = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| corrupt("bad header"))?;
        let mut words = body
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let mut next = || words.next().ok_or_else(|| corrupt("truncated"));
        let (order, vocab_size) = (next()? as usize, next()? as usize);
        if order == 0 || order > 16 {
            return Err(corrupt("bad order"));
        }
        let mut counts = Vec::with_capacity(order);
        for k in 1..=order {
            let n = next()? as usize;
            let mut level = HashMap::with_capacity(n);
            for _ in 0..n {
                let gram: Box<[u32]> = (0..k).map(|_| next()).collect::<Result<_, _>>()?;
                if gram.iter().any(|&id| id as usize >= vocab_size) {
                    return Err(corrupt("token id outside the vocabulary"));
                }
                let count = next()?;
                if count == 0 {
                    return Err(corrupt("zero count"));
                }
                level.insert(gram, count);
            }
            counts.push(level);
        }
        if body.len() % 4 != 0 || next().is_ok() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(Self::from_counts(counts, vocab_size))
    }

    /// The distribution over the vocabulary after `context`, as log-probabilities.
    pub fn log_probs(&self, context: &[u32]) -> Vec<f32> {
        (0..self.vocab_size as u32)
            .map(|w| self.probability(context, w).ln() as f32)
            .collect()
    }

    /// Size of the vocabulary it predicts over.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The longest n-gram the model counts.
    pub fn order(&self) -> usize {
        self.orders.len()
    }

    /// `p(token | context)`; only the last `order - 1` tokens of `context` matter.
    pub fn probability(&self, context: &[u32], token: u32) -> f64 {
        let context = &context[context.len().saturating_sub(self.order() - 1)..];
        let mut p = 1.0 / self.vocab_size as f64;
        // From unigrams up: each order interpolates its discounted estimate with the one below.
        for k in 1..=context.len() + 1 {
            let history = &context[context.len() + 1 - k..];
            let level = &self.orders[k - 1];
            let Some(stats) = level.contexts.get(history) else {
                // Never seen this context: all the mass goes to the lower order.
                continue;
            };
            let mut gram = history.to_vec();
            gram.push(token);
            let count = level.counts.get(gram.as_slice()).copied().unwrap_or(0);
            let discount = if count == 0 {
                0.0
            } else {
                level.discounts[(count.min(3) - 1) as usize]
            };
            let total = stats.total as f64;
            let [d1, d2, d3] = level.discounts;
            let [n1, n2, n3] = stats.by_count.map(f64::from);
            let gamma = (d1 * n1 + d2 * n2 + d3 * n3) / total;
            p = (count as f64 - discount).max(0.0) / total + gamma * p;
        }
        p
    }

    /// The negative log-likelihood (nats) of each of `tokens` read as one stream, every token
    /// predicted from the tokens before it.
    pub fn token_nll(&self, tokens: &[u32]) -> Vec<f64> {
        let context = self.order() - 1;
        (0..tokens.len())
            .map(|t| {
                -self
                    .probability(&tokens[t.saturating_sub(context)..t], tokens[t])
                    .ln()
            })
            .collect()
    }

    /// Mean negative log-likelihood (nats per token) of `tokens` read as one stream, every
    /// token predicted from the tokens before it; `exp` of it is the perplexity.
    pub fn cross_entropy(&self, tokens: &[u32]) -> f64 {
        self.token_nll(tokens).iter().sum::<f64>() / tokens.len().max(1) as f64
    }
}

/// Chen & Goodman's modified Kneser-Ney discounts `[D1, D2, D3+]` from the counts of one order.
fn discounts<'a>(counts: impl Iterator<Item = &'a u32>) -> [f64; 3] {
    let mut n = [0f64; 4];
    for &c in counts {
        if (1..=4).contains(&c) {
            n[c as usize - 1] += 1.0;
        }
    }
    let [n1, n2, n3, n4] = n;
    if n1 == 0.0 || n2 == 0.0 || n3 == 0.0 {
        // Too little data for the estimates: absolute discounts of 0.5, 1 and 1.5.
        return [0.5, 1.0, 1.5];
    }
    let y = n1 / (n1 + 2.0 * n2);
    // Natural text gives discounts well inside (0, i]; a count-of-counts far from Zipf's can push
    // the estimates out, and a zero discount would leave unseen tokens no probability at all.
    let clamp = |d: f64, max: f64| d.clamp(0.1, max);
    [
        clamp(1.0 - 2.0 * y * n2 / n1, 1.0),
        clamp(2.0 - 3.0 * y * n3 / n2, 2.0),
        clamp(3.0 - 4.0 * y * n4 / n3, 3.0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small corpus with repeated structure, from a fixed linear congruential stream.
    fn corpus(len: usize, vocab: u32) -> Vec<u32> {
        let mut state = 12345u64;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let word = ((state >> 33) % vocab as u64) as u32;
            // Every word is followed by its "successor" half of the time: learnable structure.
            out.push(word);
            if state >> 63 == 1 {
                out.push((word + 1) % vocab);
            }
        }
        out
    }

    #[test]
    fn probabilities_sum_to_one_in_every_context() {
        let tokens = corpus(5000, 30);
        for order in 1..=4 {
            let model = KneserNey::train(&tokens, order, 32).unwrap();
            // Seen contexts, an unseen one, and the empty one.
            let contexts: [&[u32]; 5] =
                [&tokens[100..103], &tokens[7..10], &[31, 31, 31], &[5], &[]];
            for context in contexts {
                let sum: f64 = (0..32).map(|w| model.probability(context, w)).sum();
                assert!(
                    (sum - 1.0).abs() < 1e-9,
                    "order {order}, context {context:?}: {sum}"
                );
            }
        }
    }

    #[test]
    fn higher_orders_predict_structured_text_better() {
        let tokens = corpus(20000, 30);
        let (train, test) = tokens.split_at(16000);
        let perplexity = |order| {
            let model = KneserNey::train(train, order, 30).unwrap();
            model.cross_entropy(test).exp()
        };
        let (unigram, bigram, trigram) = (perplexity(1), perplexity(2), perplexity(3));
        // A uniform unigram over 30 words is about 30; the successor structure makes bigrams
        // far better, and trigrams at least as good.
        assert!(unigram > 25.0 && unigram < 32.0, "{unigram}");
        assert!(bigram < 0.8 * unigram, "{bigram} vs {unigram}");
        assert!(trigram <= bigram * 1.02, "{trigram} vs {bigram}");
    }

    #[test]
    fn discounts_follow_chen_and_goodman() {
        // n1 = 4, n2 = 2, n3 = 1, n4 = 1: Y = 4 / 8 = 0.5.
        let counts = [1, 1, 1, 1, 2, 2, 3, 4, 9];
        let [d1, d2, d3] = discounts(counts.iter());
        assert!((d1 - (1.0 - 2.0 * 0.5 * 2.0 / 4.0)).abs() < 1e-12);
        assert!((d2 - (2.0 - 3.0 * 0.5 * 1.0 / 2.0)).abs() < 1e-12);
        assert!((d3 - (3.0 - 4.0 * 0.5 * 1.0 / 1.0)).abs() < 1e-12);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(KneserNey::train(&[1, 2, 3], 0, 5).is_err());
        let message = KneserNey::train(&[1, 7, 3], 2, 5).unwrap_err();
        assert!(message.contains("token id 7"), "{message}");
    }

    #[test]
    fn a_saved_model_loads_back_the_same_and_damage_is_an_error() {
        let tokens = corpus(3000, 20);
        let model = KneserNey::train(&tokens, 3, 20).unwrap();
        let path = std::env::temp_dir().join(format!("zoo-kn-{}.bin", std::process::id()));
        model.save(&path).unwrap();
        let loaded = KneserNey::load(&path).unwrap();
        assert_eq!(loaded.order(), 3);
        let held_out = corpus(500, 20);
        assert_eq!(
            loaded.cross_entropy(&held_out),
            model.cross_entropy(&held_out)
        );
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let message = KneserNey::load(&path).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        std::fs::remove_file(path).unwrap();
    }
}
