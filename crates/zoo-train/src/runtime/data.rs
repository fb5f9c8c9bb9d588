//! burn-train data loaders: one loader serves any source of numbered batches (a task's token
//! windows, encoder inputs, sentence pairs), epoch by epoch, resumable; and the seeded random
//! streams sources draw their orders and masks from, so that a batch is a function of the seed
//! and its number.

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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

/// Examples served `batch_size` at a time, pass after pass: in their own order, or (training)
/// shuffled anew each pass from the seed and the pass, the order drawn once per pass.
pub struct ShuffledPasses {
    examples: usize,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    order: PerPass<Vec<usize>>,
}

impl ShuffledPasses {
    /// `examples` examples in batches of `batch_size`, shuffled by `seed` when `shuffle`.
    pub fn new(examples: usize, batch_size: usize, seed: u64, shuffle: bool) -> Self {
        Self {
            examples,
            batch_size,
            seed,
            shuffle,
            order: PerPass::default(),
        }
    }

    /// Batches in one pass (the last may be short).
    pub fn batches_per_pass(&self) -> usize {
        self.examples.div_ceil(self.batch_size)
    }

    /// The examples of batch `g`, counted from 0 across passes.
    pub fn batch(&self, g: usize) -> Vec<usize> {
        let per_pass = self.batches_per_pass();
        let (pass, within) = (g / per_pass, g % per_pass);
        let order = self.order.get(pass, || {
            let mut order: Vec<usize> = (0..self.examples).collect();
            if self.shuffle {
                order.shuffle(&mut stream(self.seed, 1, pass as u64));
            }
            order
        });
        order[within * self.batch_size..((within + 1) * self.batch_size).min(self.examples)]
            .to_vec()
    }
}

/// Inputs of token ids, each with what it asks the model for (in `T`), served in batches pass
/// after pass as [`ShuffledPasses`] orders them: the data of a labelled task. Cheap to clone.
pub struct TokenExamples<T> {
    inputs: Arc<Vec<Vec<u32>>>,
    targets: Arc<T>,
    passes: Arc<ShuffledPasses>,
}

// A clone shares the data: `T` itself need not be `Clone`.
impl<T> Clone for TokenExamples<T> {
    fn clone(&self) -> Self {
        Self {
            inputs: self.inputs.clone(),
            targets: self.targets.clone(),
            passes: self.passes.clone(),
        }
    }
}

impl<T> TokenExamples<T> {
    /// `inputs` and their `targets` in batches of `batch_size`, shuffled by `seed` when
    /// `shuffle`; an empty set is an error.
    pub fn new(
        inputs: Vec<Vec<u32>>,
        targets: T,
        batch_size: usize,
        seed: u64,
        shuffle: bool,
    ) -> Result<Self, String> {
        if inputs.is_empty() {
            return Err("no examples".into());
        }
        Ok(Self {
            passes: Arc::new(ShuffledPasses::new(inputs.len(), batch_size, seed, shuffle)),
            inputs: Arc::new(inputs),
            targets: Arc::new(targets),
        })
    }

    /// Number of inputs (never 0).
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Never true: an empty set is refused.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Batches in one pass (the last may be short).
    pub fn batches_per_pass(&self) -> usize {
        self.passes.batches_per_pass()
    }

    /// Mean tokens per input.
    pub fn mean_tokens(&self) -> f64 {
        let total: usize = self.inputs.iter().map(Vec::len).sum();
        total as f64 / self.len() as f64
    }

    /// Input `i`'s token ids.
    pub fn input(&self, i: usize) -> &[u32] {
        &self.inputs[i]
    }

    /// What the inputs ask for.
    pub fn targets(&self) -> &T {
        &self.targets
    }

    /// The inputs of batch `g` (counted from 0 across passes) and the longest one's length.
    pub fn batch(&self, g: usize) -> (Vec<usize>, usize) {
        let picked = self.passes.batch(g);
        let len = picked
            .iter()
            .map(|&i| self.inputs[i].len())
            .max()
            .expect("batches are never empty");
        (picked, len)
    }
}

/// Serves a [`BatchSource`] to burn-train, `batches_per_epoch` micro-batches per epoch.
///
/// Training loaders count epochs from where the run starts (or resumes), so a resumed run sees
/// the same data it would have seen uninterrupted (random windows drawn from `(seed, epoch)`,
/// streams continued where the previous epoch stopped, ...). Validation loaders serve the same
/// batches every time, so validation losses compare. A training loader for data parallelism
/// makes micro-batch `i` of an epoch on device `i mod N` of its N devices, so that each round of
/// N micro-batches has one on each.
#[derive(Clone)]
pub struct StepLoader<S: BatchSource> {
    source: S,
    batches_per_epoch: usize,
    /// Micro-batches in the whole run; the last epoch is cut short to match.
    total_batches: Option<usize>,
    /// The next epoch to draw (training) or `None` (validation: always epoch 0).
    next_epoch: Option<Arc<AtomicUsize>>,
    /// Where batches are made, in turn (one device but for data-parallel training).
    devices: Vec<Device>,
}

impl<S: BatchSource> StepLoader<S> {
    /// A training loader whose first `iter()` is epoch `start_epoch` (0-based), making its
    /// batches on `devices` in turn.
    pub fn training(
        source: S,
        batches_per_epoch: usize,
        total_batches: usize,
        start_epoch: usize,
        devices: &[Device],
    ) -> Self {
        assert!(!devices.is_empty(), "a loader makes batches on a device");
        Self {
            source,
            batches_per_epoch,
            total_batches: Some(total_batches),
            next_epoch: Some(Arc::new(AtomicUsize::new(start_epoch))),
            devices: devices.to_vec(),
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
            devices: vec![device.clone()],
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
        let device = &loader.devices[self.index % loader.devices.len()];
        let batch = loader
            .source
            .batch(self.epoch, self.index, loader.batches_per_epoch, device);
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
            devices: vec![device.clone()],
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

/// A generator for stream `(a, b)` of `seed` (SplitMix64's finaliser over the three).
pub fn stream(seed: u64, a: u64, b: u64) -> StdRng {
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batch `(pass-wide number, epoch, index)`: what a loader asked for.
    #[derive(Clone)]
    struct Numbered;

    impl BatchSource for Numbered {
        type Batch = (usize, usize, usize);

        fn batch(&self, epoch: usize, index: usize, per_epoch: usize, _: &Device) -> Self::Batch {
            (epoch * per_epoch + index, epoch, index)
        }

        fn validation_batches(&self, requested: usize) -> usize {
            requested
        }
    }

    fn epoch(loader: &StepLoader<Numbered>) -> Vec<(usize, usize, usize)> {
        loader.iter().map(|b| b.unwrap()).collect()
    }

    #[test]
    fn a_resumed_loader_continues_the_same_stream() {
        let device = Device::flex();
        let fresh = StepLoader::training(Numbered, 3, 100, 0, std::slice::from_ref(&device));
        let _epoch0 = epoch(&fresh);
        let epoch1 = epoch(&fresh);
        assert_eq!(epoch1, [(3, 1, 0), (4, 1, 1), (5, 1, 2)]);
        let resumed = StepLoader::training(Numbered, 3, 100, 1, std::slice::from_ref(&device));
        assert_eq!(epoch(&resumed), epoch1);
    }

    #[test]
    fn the_last_epoch_is_cut_to_the_budget() {
        let loader = StepLoader::training(Numbered, 4, 10, 0, &[Device::flex()]);
        let sizes: Vec<usize> = (0..3).map(|_| loader.iter().count()).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
    }

    #[test]
    fn validation_batches_are_the_same_every_time() {
        let loader = StepLoader::validation(Numbered, 3, &Device::flex());
        assert_eq!(epoch(&loader), epoch(&loader));
        assert_eq!(epoch(&loader).len(), 3);
    }

    #[test]
    fn streams_of_different_numbers_differ_and_repeat() {
        use rand::Rng;
        let draw = |a, b| stream(7, a, b).random::<u64>();
        assert_eq!(draw(1, 2), draw(1, 2));
        assert_ne!(draw(1, 2), draw(2, 1));
        assert_ne!(draw(1, 2), draw(1, 3));
    }
}
