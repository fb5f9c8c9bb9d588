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
}
