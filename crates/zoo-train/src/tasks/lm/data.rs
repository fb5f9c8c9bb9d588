//! A language model's batches: nanoGPT-style random windows for a GPT, contiguous streams read
//! front to back for a recurrent model (its state carries from one window to the next).

use crate::runtime::data::BatchSource;
use crate::tasks::lm::model::LmBatch;
use burn::prelude::*;
use zoo_text::batcher::WindowBatch;
use zoo_text::{RandomWindows, Streams};

/// Where a loader's windows come from.
#[derive(Clone)]
pub enum Windows {
    /// nanoGPT-style random windows (GPT).
    Random(RandomWindows),
    /// Contiguous streams read front to back (recurrent models); the state carries across.
    Streams(Streams),
}

impl BatchSource for Windows {
    type Batch = LmBatch;

    fn batch(&self, epoch: usize, index: usize, per_epoch: usize, device: &Device) -> LmBatch {
        match self {
            Windows::Random(windows) => to_tensors(windows.batch(epoch, index), false, device),
            Windows::Streams(streams) => {
                // Count windows through the whole run and wrap around at the end of each pass.
                let window = (epoch * per_epoch + index) % streams.windows();
                to_tensors(streams.window(window), window == 0, device)
            }
        }
    }

    fn validation_batches(&self, requested: usize) -> usize {
        match self {
            Windows::Random(_) => requested,
            Windows::Streams(streams) => streams.windows(),
        }
    }
}

/// Moves a host batch onto `device` as `[batch, block]` id tensors.
pub fn to_tensors(batch: WindowBatch, reset: bool, device: &Device) -> LmBatch {
    let shape = [batch.batch_size, batch.block_size];
    let ids = |v: Vec<u32>| {
        Tensor::<2, Int>::from_data(
            TensorData::new(v.into_iter().map(|t| t as i64).collect::<Vec<_>>(), shape),
            device,
        )
    };
    LmBatch {
        inputs: ids(batch.inputs),
        targets: ids(batch.targets),
        reset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::data::StepLoader;
    use burn::data::dataloader::DataLoader;
    use std::sync::Arc;

    #[test]
    fn streams_continue_across_epochs_and_reset_at_each_pass() {
        // 2 streams of 50 tokens in windows of 10: 5 windows per pass.
        let streams = Streams::new(Arc::new((0..100).collect()), 2, 10).unwrap();
        let loader = StepLoader::training(Windows::Streams(streams), 3, 12, 0, &[Device::flex()]);
        let mut resets = Vec::new();
        let mut firsts = Vec::new();
        for _ in 0..4 {
            for batch in loader.iter() {
                let batch = batch.unwrap();
                resets.push(batch.reset);
                let inputs = batch
                    .inputs
                    .into_data()
                    .convert::<i64>()
                    .try_into_vec::<i64>();
                firsts.push(inputs.unwrap()[0]);
            }
        }
        assert_eq!(firsts, [0, 10, 20, 30, 40, 0, 10, 20, 30, 40, 0, 10]);
        let expected: Vec<bool> = firsts.iter().map(|&f| f == 0).collect();
        assert_eq!(resets, expected);
    }
}
