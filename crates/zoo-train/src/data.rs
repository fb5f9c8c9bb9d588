//! burn-train data loaders: one loader serves any source of numbered batches (token windows
//! for language models, encoder inputs for BERT), epoch by epoch, resumable.

use crate::lm::LmBatch;
use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

/// Where a loader's batches come from: batch `index` of `epoch` is a pure function of the
/// numbers, so a resumed run draws what it would have drawn.
pub trait BatchSource: Clone + Send + Sync + 'static {
    /// What a batch is on the device.
    type Batch: Send + 'static;

    /// Micro-batch `index` of `epoch`, `per_epoch` micro-batches to an epoch (epochs of a run
    /// are eval intervals, not passes over the data).
    fn batch(&self, epoch: usize, index: usize, per_epoch: usize, device: &Device) -> Self::Batch;

    /// Batches in one validation when the recipe asks for `requested`.
    fn validation_batches(&self, requested: usize) -> usize;
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

/// What a batch source derives for one pass over its examples (their order, its batches),
/// computed when the pass's first batch is asked for and kept while the pass is served, so
/// batches of one pass do not redo it.
pub struct PerPass<T>(Mutex<Option<(usize, Arc<T>)>>);

impl<T> Default for PerPass<T> {
    fn default() -> Self {
        Self(Mutex::new(None))
    }
}

impl<T> PerPass<T> {
    /// Pass `pass`'s value, made by `make` unless it is the one kept.
    pub fn get(&self, pass: usize, make: impl FnOnce() -> T) -> Arc<T> {
        let mut kept = self.0.lock().expect("per-pass lock");
        if let Some((kept_pass, value)) = kept.as_ref()
            && *kept_pass == pass
        {
            return value.clone();
        }
        let value = Arc::new(make());
        *kept = Some((pass, value.clone()));
        value
    }
}

/// A loader of token windows.
pub type WindowLoader = StepLoader<Windows>;

/// Serves a [`BatchSource`] to burn-train, `batches_per_epoch` micro-batches per epoch.
///
/// Training loaders count epochs from where the run starts (or resumes), so a resumed run sees
/// the same data it would have seen uninterrupted (random windows drawn from `(seed, epoch)`,
/// streams continued where the previous epoch stopped, ...). Validation loaders serve the same
/// batches every time, so validation losses compare.
#[derive(Clone)]
pub struct StepLoader<S: BatchSource> {
    source: S,
    batches_per_epoch: usize,
    /// Micro-batches in the whole run; the last epoch is cut short to match.
    total_batches: Option<usize>,
    /// The next epoch to draw (training) or `None` (validation: always epoch 0).
    next_epoch: Option<Arc<AtomicUsize>>,
    device: Device,
}

impl<S: BatchSource> StepLoader<S> {
    /// A training loader whose first `iter()` is epoch `start_epoch` (0-based).
    pub fn training(
        source: S,
        batches_per_epoch: usize,
        total_batches: usize,
        start_epoch: usize,
        device: &Device,
    ) -> Self {
        Self {
            source,
            batches_per_epoch,
            total_batches: Some(total_batches),
            next_epoch: Some(Arc::new(AtomicUsize::new(start_epoch))),
            device: device.clone(),
        }
    }

    /// A validation loader of the same batches every time: as many as the source says for a
    /// request of `batches` (random windows: that many; streams: one whole pass).
    pub fn validation(source: S, batches: usize, device: &Device) -> Self {
        Self {
            batches_per_epoch: source.validation_batches(batches),
            source,
            total_batches: None,
            next_epoch: None,
            device: device.clone(),
        }
    }

    fn batches_in(&self, epoch: usize) -> usize {
        match self.total_batches {
            Some(total) => total
                .saturating_sub(epoch * self.batches_per_epoch)
                .min(self.batches_per_epoch),
            None => self.batches_per_epoch,
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

struct StepIter<'a, S: BatchSource> {
    loader: &'a StepLoader<S>,
    epoch: usize,
    index: usize,
    count: usize,
}

impl<S: BatchSource> Iterator for StepIter<'_, S> {
    type Item = Result<S::Batch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let loader = self.loader;
        let batch = loader.source.batch(
            self.epoch,
            self.index,
            loader.batches_per_epoch,
            &loader.device,
        );
        self.index += 1;
        Some(Ok(batch))
    }
}

impl<S: BatchSource> DataLoaderIterator<S::Batch> for StepIter<'_, S> {
    fn progress(&self) -> Progress {
        Progress::new(self.index, self.count, Some("batches".into()))
    }
}

impl<S: BatchSource> DataLoader<S::Batch> for StepLoader<S> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<S::Batch> + 'a> {
        let epoch = match &self.next_epoch {
            Some(next) => next.fetch_add(1, Ordering::SeqCst),
            None => 0,
        };
        Box::new(StepIter {
            loader: self,
            epoch,
            index: 0,
            count: self.batches_in(epoch),
        })
    }

    fn num_items(&self) -> usize {
        match &self.next_epoch {
            Some(next) => self.batches_in(next.load(Ordering::SeqCst)),
            None => self.batches_per_epoch,
        }
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<S::Batch>> {
        Arc::new(Self {
            device: device.clone(),
            ..self.clone()
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<S::Batch>> {
        Arc::new(Self {
            batches_per_epoch: end.saturating_sub(start).min(self.batches_per_epoch),
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows() -> Windows {
        Windows::Random(RandomWindows::new(Arc::new((0..500).collect()), 8, 2, 1).unwrap())
    }

    fn first_inputs(loader: &WindowLoader) -> Vec<Vec<i64>> {
        loader
            .iter()
            .map(|b| {
                b.unwrap()
                    .inputs
                    .into_data()
                    .convert::<i64>()
                    .try_into_vec::<i64>()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn a_resumed_loader_continues_the_same_stream() {
        let device = Device::flex();
        let fresh = WindowLoader::training(windows(), 3, 100, 0, &device);
        let _epoch0 = first_inputs(&fresh);
        let epoch1 = first_inputs(&fresh);
        let resumed = WindowLoader::training(windows(), 3, 100, 1, &device);
        assert_eq!(first_inputs(&resumed), epoch1);
    }

    #[test]
    fn the_last_epoch_is_cut_to_the_budget() {
        let loader = WindowLoader::training(windows(), 4, 10, 0, &Device::flex());
        let sizes: Vec<usize> = (0..3).map(|_| loader.iter().count()).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
    }

    #[test]
    fn validation_batches_are_the_same_every_time() {
        let loader = WindowLoader::validation(windows(), 3, &Device::flex());
        assert_eq!(first_inputs(&loader), first_inputs(&loader));
    }

    #[test]
    fn streams_continue_across_epochs_and_reset_at_each_pass() {
        // 2 streams of 50 tokens in windows of 10: 5 windows per pass.
        let streams = Streams::new(Arc::new((0..100).collect()), 2, 10).unwrap();
        let loader = WindowLoader::training(Windows::Streams(streams), 3, 12, 0, &Device::flex());
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
