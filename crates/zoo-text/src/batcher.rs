//! Batchers that turn a token stream into training examples.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// nanoGPT's causal-LM sampling: each example is a window of `block_size` tokens starting at a
/// uniformly random offset, and its targets are the same window shifted by one.
///
/// Batches are a pure function of `(seed, epoch, index)`, so a resumed run draws exactly the
/// batches the interrupted one would have.
#[derive(Clone, Debug)]
pub struct RandomWindows {
    tokens: Arc<Vec<u32>>,
    /// Tokens per example.
    pub block_size: usize,
    /// Examples per batch.
    pub batch_size: usize,
    /// Seed of the window stream.
    pub seed: u64,
}

/// Inputs and targets, each `batch_size * block_size` tokens, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowBatch {
    /// Token ids fed to the model.
    pub inputs: Vec<u32>,
    /// The next token at each position.
    pub targets: Vec<u32>,
    /// Examples in the batch.
    pub batch_size: usize,
    /// Tokens per example.
    pub block_size: usize,
}

impl RandomWindows {
    /// Windows over `tokens`; fails when the stream is too short for one window.
    pub fn new(
        tokens: Arc<Vec<u32>>,
        block_size: usize,
        batch_size: usize,
        seed: u64,
    ) -> Result<Self, String> {
        if tokens.len() <= block_size {
            return Err(format!(
                "the token stream has {} tokens, too few for one window of block_size {block_size} plus its target",
                tokens.len()
            ));
        }
        Ok(Self {
            tokens,
            block_size,
            batch_size,
            seed,
        })
    }

    /// Number of tokens in the stream.
    pub fn stream_len(&self) -> usize {
        self.tokens.len()
    }

    /// Batch number `index` of `epoch`.
    pub fn batch(&self, epoch: usize, index: usize) -> WindowBatch {
        // Mix the three numbers so neighbouring (epoch, index) pairs get unrelated streams.
        let stream = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (epoch as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9)
            ^ (index as u64).wrapping_mul(0x94D0_49BB_1331_11EB);
        let mut rng = StdRng::seed_from_u64(stream);
        let last_start = self.tokens.len() - self.block_size;
        let mut inputs = Vec::with_capacity(self.batch_size * self.block_size);
        let mut targets = Vec::with_capacity(self.batch_size * self.block_size);
        for _ in 0..self.batch_size {
            let start = rng.random_range(0..last_start);
            inputs.extend_from_slice(&self.tokens[start..start + self.block_size]);
            targets.extend_from_slice(&self.tokens[start + 1..start + 1 + self.block_size]);
        }
        WindowBatch {
            inputs,
            targets,
            batch_size: self.batch_size,
            block_size: self.block_size,
        }
    }
}

/// The classic RNN language-model batcher (Zaremba et al.; PyTorch's `word_language_model`):
/// the token stream is cut into `batch_size` contiguous streams laid side by side, and consumed
/// front to back in windows of `bptt` tokens, so that row `b` of window `i + 1` continues row `b`
/// of window `i` and a model's state can carry from one window to the next. The last window of
/// a pass may be shorter; the few tokens that do not fill a whole stream are dropped.
#[derive(Clone, Debug)]
pub struct Streams {
    tokens: Arc<Vec<u32>>,
    /// Parallel streams (rows of every window).
    pub batch_size: usize,
    /// Tokens per window (backpropagation-through-time length).
    pub bptt: usize,
    /// Tokens in each stream.
    stream_len: usize,
}

impl Streams {
    /// Streams over `tokens`; fails when they cannot give every stream a token and its target.
    pub fn new(tokens: Arc<Vec<u32>>, batch_size: usize, bptt: usize) -> Result<Self, String> {
        if batch_size == 0 || bptt == 0 {
            return Err("batch_size and bptt must be at least 1".into());
        }
        let stream_len = tokens.len() / batch_size;
        if stream_len < 2 {
            return Err(format!(
                "the token stream has {} tokens, too few for {batch_size} streams of a token and its target",
                tokens.len()
            ));
        }
        Ok(Self {
            tokens,
            batch_size,
            bptt,
            stream_len,
        })
    }

    /// Windows in one pass over the streams.
    pub fn windows(&self) -> usize {
        (self.stream_len - 1).div_ceil(self.bptt)
    }

    /// Tokens predicted in one pass (every stream position but the last of each stream).
    pub fn targets_per_pass(&self) -> usize {
        self.batch_size * (self.stream_len - 1)
    }

    /// Where the target at `column` of row `row` of window `index` sits in the token stream.
    pub fn target_index(&self, index: usize, row: usize, column: usize) -> usize {
        row * self.stream_len + index * self.bptt + column + 1
    }

    /// Window number `index` (`0..windows()`): row `b` holds stream `b`'s tokens from
    /// `index * bptt` on, and its targets are the same tokens shifted by one.
    pub fn window(&self, index: usize) -> WindowBatch {
        assert!(
            index < self.windows(),
            "window {index} of {}",
            self.windows()
        );
        let start = index * self.bptt;
        let len = self.bptt.min(self.stream_len - 1 - start);
        let mut inputs = Vec::with_capacity(self.batch_size * len);
        let mut targets = Vec::with_capacity(self.batch_size * len);
        for b in 0..self.batch_size {
            let stream = &self.tokens[b * self.stream_len..(b + 1) * self.stream_len];
            inputs.extend_from_slice(&stream[start..start + len]);
            targets.extend_from_slice(&stream[start + 1..start + 1 + len]);
        }
        WindowBatch {
            inputs,
            targets,
            batch_size: self.batch_size,
            block_size: len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(seed: u64) -> RandomWindows {
        RandomWindows::new(Arc::new((0..1000).collect()), 8, 4, seed).unwrap()
    }

    #[test]
    fn targets_are_inputs_shifted_by_one() {
        let batch = windows(1).batch(0, 0);
        assert_eq!(batch.inputs.len(), 32);
        for row in 0..4 {
            let x = &batch.inputs[row * 8..row * 8 + 8];
            let y = &batch.targets[row * 8..row * 8 + 8];
            // The stream is 0..1000, so a window is consecutive integers.
            assert!(x.windows(2).all(|w| w[1] == w[0] + 1));
            assert!(x.iter().zip(y).all(|(a, b)| *b == a + 1));
        }
    }

    #[test]
    fn batches_are_a_function_of_seed_epoch_and_index() {
        assert_eq!(windows(1).batch(3, 5), windows(1).batch(3, 5));
        assert_ne!(windows(1).batch(3, 5), windows(1).batch(3, 6));
        assert_ne!(windows(1).batch(3, 5), windows(1).batch(4, 5));
        assert_ne!(windows(1).batch(3, 5), windows(2).batch(3, 5));
    }

    #[test]
    fn windows_cover_the_stream_uniformly() {
        let w = windows(9);
        let mut first_half = 0;
        for i in 0..200 {
            first_half += w
                .batch(0, i)
                .inputs
                .chunks(8)
                .filter(|x| x[0] < 496)
                .count();
        }
        assert!(
            (first_half as f64 / 800.0 - 0.5).abs() < 0.06,
            "{first_half}"
        );
    }

    #[test]
    fn a_stream_shorter_than_a_window_is_refused() {
        let err = RandomWindows::new(Arc::new(vec![1, 2, 3]), 8, 2, 0).unwrap_err();
        assert!(err.contains("block_size 8"), "{err}");
    }

    #[test]
    fn streams_are_contiguous_and_windows_continue_each_other() {
        // 0..23 in 3 streams of 7 (the last 2 tokens dropped), windows of 4 then 2.
        let tokens: Arc<Vec<u32>> = Arc::new((0..23).collect());
        let streams = Streams::new(tokens, 3, 4).unwrap();
        assert_eq!(streams.windows(), 2);
        assert_eq!(streams.targets_per_pass(), 18);
        let first = streams.window(0);
        assert_eq!(first.block_size, 4);
        assert_eq!(first.inputs, [0, 1, 2, 3, 7, 8, 9, 10, 14, 15, 16, 17]);
        assert_eq!(first.targets, [1, 2, 3, 4, 8, 9, 10, 11, 15, 16, 17, 18]);
        let second = streams.window(1);
        assert_eq!(second.block_size, 2);
        assert_eq!(second.inputs, [4, 5, 11, 12, 18, 19]);
        assert_eq!(second.targets, [5, 6, 12, 13, 19, 20]);
        // Every target of the pass, each once.
        let mut seen: Vec<u32> = (0..streams.windows())
            .flat_map(|i| streams.window(i).targets)
            .collect();
        seen.sort();
        let expected: Vec<u32> = (0..21).filter(|t| t % 7 != 0).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn too_few_tokens_for_the_streams_is_an_error() {
        let message = Streams::new(Arc::new(vec![1, 2, 3]), 2, 4).unwrap_err();
        assert!(message.contains("too few"), "{message}");
        assert!(Streams::new(Arc::new(vec![1, 2, 3, 4]), 2, 0).is_err());
    }
}
