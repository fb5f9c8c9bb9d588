//! Language models read incrementally: a cache (a GPT's keys and values, a recurrent model's
//! state) holds what the model has read, new tokens extend it, and it can be cut back to an
//! earlier length without reading the prefix again. Plain sampling ([`generate`]) and
//! speculative decoding ([`crate::speculative`]) run on this, for any model.
//!
//! A model with a bounded context reads a window of the text. Which window predicts the token
//! after the first `n` is a function of `n` alone ([`window_start`]), so every decoder built
//! here gives the same output for the same model and text, however it groups its reads.

use crate::decoding::Sampler;
use burn::tensor::Tensor;

/// A causal language model read incrementally; see the module docs.
pub trait IncrementalLm {
    /// What the model keeps of the tokens it has read.
    type Cache;

    /// A cache that has read nothing.
    fn empty_cache(&self) -> Self::Cache;

    /// Tokens the cache has read.
    fn cached_len(&self, cache: &Self::Cache) -> usize;

    /// Reads `tokens` after those in `cache` and returns the next-token logits after each of
    /// the last `rows` of them (oldest first); the cache then holds them all.
    fn extend(&self, tokens: &[u32], rows: usize, cache: &mut Self::Cache) -> Vec<Vec<f32>>;

    /// Cuts the cache back to its first `len` tokens (at most those of its last
    /// [`ROLLBACK`] reads of one token or last read's `rows` tokens, for a model that keeps
    /// only recent states).
    fn truncate(&self, cache: &mut Self::Cache, len: usize);

    /// The most tokens the model reads at once (its positions), if bounded.
    fn context_len(&self) -> Option<usize>;
}

/// How far back a cache must be able to cut: the rows of one read, or this many reads.
pub const ROLLBACK: usize = 64;

/// Where the window that predicts the token after the first `n` tokens starts, for a model
/// reading at most `context` tokens: the whole text while it fits, then windows that start
/// every `context / 2` tokens (so each holds between `context / 2 + 1` and `context` tokens),
/// which lets a cache keep growing for half a context before it starts over.
pub fn window_start(n: usize, context: Option<usize>) -> usize {
    match context {
        Some(context) if n > context => {
            let stride = (context / 2).max(1);
            ((n - context - 1) / stride + 1) * stride
        }
        _ => 0,
    }
}

/// A model's cache and where in the text it starts: reads the text through the windows of
/// [`window_start`], starting the cache over when the window moves.
pub struct Cursor<C> {
    cache: C,
    /// The text position of the cache's first token.
    offset: usize,
}

impl<C> Cursor<C> {
    /// A cursor that has read nothing.
    pub fn new<M: IncrementalLm<Cache = C>>(model: &M) -> Self {
        Self {
            cache: model.empty_cache(),
            offset: 0,
        }
    }

    /// How many tokens of the text the cursor has read (those before its window included).
    pub fn read_len<M: IncrementalLm<Cache = C>>(&self, model: &M) -> usize {
        self.offset + model.cached_len(&self.cache)
    }

    /// The next-token logits after each of the last `rows` tokens of `text` (oldest first),
    /// reading only what the cache lacks. The cache must hold a prefix of `text`: call
    /// [`rewind`](Self::rewind) after replacing tokens it read.
    pub fn logits<M: IncrementalLm<Cache = C>>(
        &mut self,
        model: &M,
        text: &[u32],
        rows: usize,
    ) -> Vec<Vec<f32>> {
        assert!(
            (1..=text.len()).contains(&rows),
            "{rows} rows of a text of {}",
            text.len()
        );
        let context = model.context_len();
        let mut out = Vec::with_capacity(rows);
        // Rows predicting after n tokens, grouped by the window they read.
        let mut n = text.len() - rows + 1;
        while n <= text.len() {
            let start = window_start(n, context);
            let mut last = n;
            while last < text.len() && window_start(last + 1, context) == start {
                last += 1;
            }
            if start != self.offset {
                self.cache = model.empty_cache();
                self.offset = start;
            }
            // The cache must not yet have read the token the first row reads.
            if self.read_len(model) > n - 1 {
                model.truncate(&mut self.cache, n - 1 - self.offset);
            }
            let from = self.read_len(model);
            out.extend(model.extend(&text[from..last], last - n + 1, &mut self.cache));
            n = last + 1;
        }
        out
    }

    /// Forgets every token after the first `len` of the text.
    pub fn rewind<M: IncrementalLm<Cache = C>>(&mut self, model: &M, len: usize) {
        if len < self.offset {
            self.cache = model.empty_cache();
            self.offset = 0;
        } else if len < self.read_len(model) {
            model.truncate(&mut self.cache, len - self.offset);
        }
    }
}

/// The last `rows` positions of logits `[1, len, vocab]` as host rows, oldest first: what
/// [`IncrementalLm::extend`] returns.
pub fn last_rows(logits: Tensor<3>, rows: usize) -> Vec<Vec<f32>> {
    let [_, len, vocab] = logits.dims();
    let values = logits
        .narrow(1, len - rows, rows)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("logits read back as f32");
    values.chunks(vocab).map(<[f32]>::to_vec).collect()
}

/// Continues `prompt` by `max_new_tokens` tokens picked by `sampler`, one model read per token.
/// Returns the prompt and the new tokens.
pub fn generate<M: IncrementalLm>(
    model: &M,
    prompt: &[u32],
    max_new_tokens: usize,
    sampler: &mut Sampler,
) -> Vec<u32> {
    assert!(
        !prompt.is_empty(),
        "generation needs at least one prompt token"
    );
    let mut text = prompt.to_vec();
    let mut cursor = Cursor::new(model);
    for _ in 0..max_new_tokens {
        let logits = cursor.logits(model, &text, 1);
        text.push(sampler.sample(&logits[0]) as u32);
    }
    text
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::decoding::SamplingConfig;
    use std::cell::Cell;

    /// A toy model over a tiny vocabulary whose logits depend on the window it reads: the last
    /// token, the window's length and its first token, so a wrong window shows. It counts the
    /// tokens it reads.
    pub(crate) struct Table {
        pub vocab: usize,
        pub context: Option<usize>,
        pub salt: u64,
        pub reads: Cell<usize>,
    }

    impl Table {
        pub(crate) fn new(vocab: usize, context: Option<usize>, salt: u64) -> Self {
            Self {
                vocab,
                context,
                salt,
                reads: Cell::new(0),
            }
        }

        /// The logits after reading `window`.
        pub(crate) fn logits_of(&self, window: &[u32]) -> Vec<f32> {
            let last = *window.last().unwrap() as u64;
            let key = last * 31 + (window.len() as u64 % 3) * 7 + window[0] as u64 + self.salt;
            (0..self.vocab as u64)
                .map(|v| {
                    let x = (key * 0x9e37_79b9 + v * 0x85eb_ca6b + self.salt)
                        .wrapping_mul(0x2545_f491_4f6c_dd1d);
                    ((x >> 40) as f32 / (1u64 << 24) as f32) * 3.0 - 1.5
                })
                .collect()
        }
    }

    impl IncrementalLm for Table {
        type Cache = Vec<u32>;

        fn empty_cache(&self) -> Vec<u32> {
            Vec::new()
        }

        fn cached_len(&self, cache: &Vec<u32>) -> usize {
            cache.len()
        }

        fn extend(&self, tokens: &[u32], rows: usize, cache: &mut Vec<u32>) -> Vec<Vec<f32>> {
            assert!(rows <= tokens.len());
            if let Some(context) = self.context {
                assert!(
                    cache.len() + tokens.len() <= context,
                    "read past the context"
                );
            }
            self.reads.set(self.reads.get() + tokens.len());
            let first_row = cache.len() + tokens.len() - rows;
            cache.extend_from_slice(tokens);
            (first_row..cache.len())
                .map(|i| self.logits_of(&cache[..=i]))
                .collect()
        }

        fn truncate(&self, cache: &mut Vec<u32>, len: usize) {
            cache.truncate(len);
        }

        fn context_len(&self) -> Option<usize> {
            self.context
        }
    }

    #[test]
    fn windows_fit_the_context_and_depend_on_the_position_alone() {
        assert_eq!(window_start(5, None), 0);
        assert_eq!(window_start(8, Some(8)), 0);
        for context in [1, 2, 3, 8, 9] {
            for n in 1..100 {
                let start = window_start(n, Some(context));
                assert!(
                    n - start <= context && n - start >= 1,
                    "n {n}, context {context}"
                );
                // Windows only move forwards.
                assert!(window_start(n + 1, Some(context)) >= start);
            }
        }
        assert_eq!(window_start(9, Some(8)), 4);
        assert_eq!(window_start(12, Some(8)), 4);
        assert_eq!(window_start(13, Some(8)), 8);
    }

    #[test]
    fn every_read_gives_the_logits_of_its_window_without_rereading() {
        let model = Table::new(5, Some(8), 1);
        let text: Vec<u32> = (0..40).map(|i| (i * 7 % 5) as u32).collect();
        let expected = |n: usize| model.logits_of(&text[window_start(n, Some(8))..n]);
        let mut cursor = Cursor::new(&model);
        // Reads of several rows at a time, with rewinds, as speculative decoding makes them.
        let mut n = 1;
        for rows in [1, 3, 2, 5, 1, 4, 6, 2, 3, 1, 5, 4] {
            if n + rows - 1 > text.len() {
                break;
            }
            let logits = cursor.logits(&model, &text[..n + rows - 1], rows);
            for (i, row) in logits.iter().enumerate() {
                assert_eq!(row, &expected(n + i), "row after {} tokens", n + i);
            }
            cursor.rewind(&model, n + rows / 2);
            n += rows / 2 + 1;
        }
        // One token at a time reads each token once while the window stays put.
        let model = Table::new(5, None, 1);
        let mut cursor = Cursor::new(&model);
        for n in 1..=text.len() {
            assert_eq!(
                cursor.logits(&model, &text[..n], 1)[0],
                model.logits_of(&text[..n])
            );
        }
        assert_eq!(model.reads.get(), text.len());
    }

    #[test]
    fn generation_samples_from_the_window_logits() {
        let model = Table::new(6, Some(5), 3);
        let mut sampler = Sampler::new(SamplingConfig::greedy());
        let text = generate(&model, &[1, 2], 20, &mut sampler);
        assert_eq!(text.len(), 22);
        for n in 2..text.len() {
            let logits = model.logits_of(&text[window_start(n, Some(5))..n]);
            assert_eq!(
                text[n] as usize,
                crate::decoding::argmax(&logits),
                "token {n}"
            );
        }
    }
}
