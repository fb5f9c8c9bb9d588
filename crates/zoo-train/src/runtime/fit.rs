//! The training loop: burn-train's single-device loop (a training pass, a validation, a
//! checkpoint, epoch after epoch), with what a run needs to survive anything:
//!
//! - **Randomness is a function of the step.** Before each micro-batch the device's generator
//!   is seeded from `(seed, micro-batch number)`, so the dropout masks of step 1,000 are the
//!   same whether the process started at step 0 or resumed at step 900. (Batches, masks and
//!   orders are drawn from `(seed, number)` by the batch sources already.)
//! - **Gradient accumulation sums, then clips once.** The micro-batch gradients of a step are
//!   summed and the global norm of the sum is clipped, as PyTorch and nanoGPT do; burn-train's
//!   own loop applies whatever each step hands it.
//! - **A non-finite step is caught before it is applied.** The step's loss and gradient norm
//!   are read back (one read per optimiser step); when either is NaN or infinite the run stops
//!   there with an error naming the step and the value, or, with `training.on_nonfinite =
//!   "skip"`, leaves weights and optimiser as they were and counts the skip.
//! - **Data parallelism is accumulation spread over devices.** With several devices, each round
//!   of a step's micro-batches runs one per device (`parallel`), and the gradients gathered on
//!   the first are summed in micro-batch order, so the step is the one-device step.
//! - **Checkpoints keep what the model carries** (a recurrent model's state between windows)
//!   and old ones go only once a newer one is complete.
//! - **Early stopping** ends the run after the validation it says to, with a checkpoint there.

use crate::recipe::{OnNonFinite, Recipe};
use crate::runtime::data::stream;
use crate::runtime::early_stop::SharedEarlyStopping;
use crate::runtime::parallel::train_round;
use crate::runtime::run_dir::{CheckpointRule, prune_checkpoints, save_carried};
use crate::runtime::step::{CarriedState, SkippedSteps, StepOutput, clip_to_norm, squared_norm};
use crate::runtime::validations::Validations;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::train::{
    EventProcessorTraining, InferenceStep, Interrupter, Learner, LearnerEvent, LearnerModel,
    SupervisedLearningStrategy, SupervisedTrainingEventProcessor, TrainLoader, TrainStep,
    TrainingComponents, TrainingItem, ValidLoader,
};
use rand::Rng;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The stream the device's generator is seeded from before each micro-batch (dropout).
const DEVICE_STREAM: u64 = 0x64726f70; // "drop"

/// burn-train's training strategy for every zoo run; see the module docs.
pub struct TrainingLoop {
    /// The autodiff device training runs on: the model, the optimiser and validation.
    device: Device,
    /// The autodiff devices a step's micro-batches are spread over, `device` first (only it
    /// when training runs on one).
    devices: Vec<Device>,
    seed: u64,
    /// Micro-batches per optimiser step.
    micro_batches: usize,
    /// Optimiser steps per burn-train epoch (the last epoch of a run may have fewer).
    steps_per_epoch: usize,
    /// Global gradient norm clipping (0: off).
    grad_clip: f32,
    on_nonfinite: OnNonFinite,
    run_dir: PathBuf,
    checkpoints: CheckpointRule,
    skipped: SkippedSteps,
    /// Asked after each validation whether to end the run there.
    early_stopping: Option<SharedEarlyStopping>,
    /// Marked by the metrics logger once it has taken in a validation.
    validations: Validations,
    /// Why the loop stopped the run, if it did.
    failure: Arc<Mutex<Option<Stopped>>>,
}

/// Why the training loop stopped a run, and what the user can do about it.
#[derive(Clone, Debug)]
pub struct Stopped {
    /// What happened, naming the step, value or file.
    pub reason: String,
    /// What to do next.
    pub advice: &'static str,
}

impl TrainingLoop {
    /// The loop of `recipe`'s run in `run_dir`, on the autodiff `devices` (the first holding the
    /// model), `steps_per_epoch` optimiser steps to an epoch, checkpointing by `checkpoints`,
    /// counting skipped steps in `skipped`, waiting after each validation for the metrics logger
    /// to mark it in `validations`.
    pub fn new(
        recipe: &Recipe,
        devices: &[Device],
        run_dir: PathBuf,
        steps_per_epoch: usize,
        checkpoints: CheckpointRule,
        skipped: SkippedSteps,
        validations: Validations,
    ) -> Self {
        Self {
            device: devices[0].clone(),
            devices: devices.to_vec(),
            seed: recipe.seed,
            micro_batches: recipe.training.micro_batches(),
            steps_per_epoch,
            grad_clip: recipe.optimizer.grad_clip as f32,
            on_nonfinite: recipe.training.on_nonfinite,
            run_dir,
            checkpoints,
            skipped,
            early_stopping: None,
            validations,
            failure: Arc::new(Mutex::new(None)),
        }
    }

    /// Ends the run after the validation `early_stopping` says to stop at (checkpointed).
    pub fn with_early_stopping(self, early_stopping: SharedEarlyStopping) -> Self {
        Self {
            early_stopping: Some(early_stopping),
            ..self
        }
    }

    /// Whether the run ends at this validation; an error when the metric watched is not one
    /// the run validates with.
    fn stops_early(&self) -> Result<bool, String> {
        let Some(early) = &self.early_stopping else {
            return Ok(false);
        };
        let early = early.lock().expect("early stopping lock");
        match early.missing_metric() {
            Some(error) => Err(error),
            None => Ok(early.should_stop()),
        }
    }

    /// Where the loop says why it stopped the run (read it once training has returned).
    pub fn failure(&self) -> Arc<Mutex<Option<Stopped>>> {
        self.failure.clone()
    }

    /// Seeds the device's generator for micro-batch `number` of the run (0-based).
    fn seed_micro_batch(&self, number: usize) {
        let seed = stream(self.seed, DEVICE_STREAM, number as u64).random::<u64>();
        self.device.seed(seed);
    }

    /// Applies one optimiser step's summed `grads`, whose micro-batch losses sum to `loss`:
    /// checked, clipped, then handed to the optimiser at the step's learning rate (already
    /// taken). `Err` stops the run.
    fn apply<M: LearnerModel>(
        &self,
        learner: &mut Learner<M>,
        mut grads: GradientsParams,
        loss: Tensor<1>,
        step: usize,
        epoch: usize,
    ) -> Result<(), String> {
        let model = learner.model();
        let norm = squared_norm(&model, &grads).unwrap_or_else(|| loss.zeros_like());
        let read = Tensor::cat(vec![loss, norm.clone()], 0)
            .into_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .map_err(|e| format!("step {step}: the loss cannot be read back: {e:?}"))?;
        let (loss, norm_value) = (read[0] / self.micro_batches as f64, read[1].sqrt());
        if !(loss.is_finite() && norm_value.is_finite()) {
            let what = if loss.is_finite() {
                format!("the gradient norm is {norm_value} (loss {loss})")
            } else {
                format!("the loss is {loss}")
            };
            if self.on_nonfinite == OnNonFinite::Stop {
                return Err(format!("step {step}: {what}"));
            }
            // The step is spent (its learning rate taken): the schedule moves on as it would have.
            self.skipped.count(epoch);
            return Ok(());
        }
        if self.grad_clip > 0.0 {
            clip_to_norm(&model, &mut grads, norm, self.grad_clip);
        }
        learner.optimizer_step(grads);
        Ok(())
    }

    /// One training pass: epoch `epoch`'s micro-batches, a step every `micro_batches`, run in
    /// rounds of one micro-batch per device.
    fn train_epoch<M>(
        &self,
        learner: &mut Learner<M>,
        loader: &TrainLoader<M>,
        epoch: usize,
        processor: &mut SupervisedTrainingEventProcessor<M>,
        interrupter: &Interrupter,
    ) -> Result<(), String>
    where
        M: LearnerModel,
        <M as TrainStep>::Output: StepOutput,
    {
        let first_micro_batch = (epoch - 1) * self.steps_per_epoch * self.micro_batches;
        let mut iterator = loader.iter();
        let mut accumulator = GradientsAccumulator::new();
        let mut step_loss: Option<Tensor<1>> = None;
        let mut round = Vec::with_capacity(self.devices.len());
        let mut iteration: usize = 0;
        while let Some(item) = iterator.next() {
            let item = match item {
                Ok(item) => item,
                Err(err) => {
                    interrupter.fail(err);
                    return Ok(());
                }
            };
            iteration += 1;
            let progress = iterator.progress();
            if (iteration - 1).is_multiple_of(self.micro_batches) {
                // The step's learning rate, taken at its first micro-batch so that every
                // micro-batch reports the rate of its own step (a resumed run included).
                learner.lr_step();
            }
            round.push(item);
            let step_ends = iteration.is_multiple_of(self.micro_batches) || progress.is_completed();
            if round.len() < self.devices.len() && !step_ends {
                continue;
            }
            // Micro-batch `first` of the run is the round's first.
            let first = first_micro_batch + iteration - round.len();
            let model = learner.model();
            let outputs = train_round(&model, &self.devices, std::mem::take(&mut round), |i| {
                self.seed_micro_batch(first + i)
            });
            let mut items = Vec::with_capacity(outputs.len());
            for mut output in outputs {
                let loss = output.item.loss_mut().clone();
                step_loss = Some(match step_loss.take() {
                    Some(sum) => sum + loss,
                    None => loss,
                });
                accumulator.accumulate(&model, output.grads);
                items.push(output.item);
            }
            if step_ends {
                let step =
                    (epoch - 1) * self.steps_per_epoch + iteration.div_ceil(self.micro_batches);
                let loss = step_loss.take().expect("a step has a micro-batch");
                self.apply(learner, accumulator.grads(), loss, step, epoch)?;
            }
            let round_start = iteration - items.len();
            for (i, item) in items.into_iter().enumerate() {
                let item = TrainingItem::new(
                    item,
                    progress.clone(),
                    Some(round_start + i + 1),
                    Some(learner.lr_current()),
                );
                interrupter
                    .fail_on_error(processor.process_train(LearnerEvent::ProcessedItem(item)));
            }
            if interrupter.should_stop() {
                break;
            }
        }
        Ok(())
    }

    /// One validation: the validation loader's batches through the model without autodiff.
    fn valid_epoch<M: LearnerModel>(
        &self,
        learner: &Learner<M>,
        loader: &ValidLoader<M>,
        processor: &mut SupervisedTrainingEventProcessor<M>,
        interrupter: &Interrupter,
    ) {
        let model = learner.model().valid();
        let mut iterator = loader.iter();
        let mut iteration = 0;
        while let Some(item) = iterator.next() {
            let item = match item {
                Ok(item) => item,
                Err(err) => {
                    interrupter.fail(err);
                    break;
                }
            };
            iteration += 1;
            let progress = iterator.progress();
            let item = InferenceStep::step(&model, item);
            let item = TrainingItem::new(item, progress, Some(iteration), None);
            interrupter.fail_on_error(processor.process_valid(LearnerEvent::ProcessedItem(item)));
            if interrupter.should_stop() {
                break;
            }
        }
    }
}

impl<M> SupervisedLearningStrategy<M> for TrainingLoop
where
    M: LearnerModel + CarriedState,
    <M as TrainStep>::Output: StepOutput,
{
    fn fit(
        &self,
        components: TrainingComponents<M>,
        mut learner: Learner<M>,
        train_loader: TrainLoader<M>,
        valid_loader: ValidLoader<M>,
        starting_epoch: usize,
    ) -> (M, SupervisedTrainingEventProcessor<M>) {
        // The training loader makes each micro-batch on its device already.
        let valid_loader = valid_loader.to_device(&self.device.clone().inner());
        learner.fork(&self.device);
        let TrainingComponents {
            num_epochs,
            mut checkpointer,
            interrupter,
            event_processor: mut processor,
            event_store,
            ..
        } = components;
        let fail = |reason: String, advice: &'static str| {
            interrupter.stop(Some(&reason));
            *self.failure.lock().expect("failure lock") = Some(Stopped { reason, advice });
        };

        for epoch in starting_epoch..=num_epochs {
            let train_items = train_loader.num_items();
            interrupter.fail_on_error(processor.process_train(LearnerEvent::StartSplit {
                epoch_number: epoch,
                total_items: train_items,
            }));
            let trained = self.train_epoch(
                &mut learner,
                &train_loader,
                epoch,
                &mut processor,
                &interrupter,
            );
            if let Err(message) = trained {
                fail(
                    message,
                    "lower optimizer.lr or set optimizer.grad_clip, or set training.on_nonfinite = \"skip\" to skip such batches",
                );
                break;
            }
            interrupter.fail_on_error(processor.process_train(LearnerEvent::EndSplit(epoch)));
            if interrupter.should_stop() {
                break;
            }

            interrupter.fail_on_error(processor.process_valid(LearnerEvent::StartSplit {
                epoch_number: epoch,
                total_items: valid_loader.num_items(),
            }));
            self.valid_epoch(&learner, &valid_loader, &mut processor, &interrupter);
            interrupter.fail_on_error(processor.process_valid(LearnerEvent::EndSplit(epoch)));
            interrupter.fail_on_error(processor.process_train(LearnerEvent::EndEpoch(epoch)));
            interrupter.fail_on_error(processor.flush());
            if interrupter.should_stop() {
                break;
            }

            // What follows (the next step's rate on a plateau, early stopping) depends on the
            // metrics logger having taken this validation in.
            self.validations.wait_for(epoch);
            let stop_early = match self.stops_early() {
                Ok(stop) => stop,
                Err(message) => {
                    fail(message, "name one of them in the recipe, then --resume");
                    break;
                }
            };
            if (self.checkpoints.saves_at(epoch) || stop_early)
                && let Some(checkpointer) = &mut checkpointer
            {
                // The carried state first: a checkpoint whose model file exists has it.
                let saved = save_carried(&self.run_dir, epoch, &learner.model().carried())
                    .and_then(|()| {
                        checkpointer.checkpoint(&learner, epoch, &event_store);
                        prune_checkpoints(&self.run_dir, self.checkpoints.keep)
                    });
                if let Err(e) = saved {
                    fail(
                        e.to_string(),
                        "free space or make the run directory writable, then --resume",
                    );
                    break;
                }
            }
            if stop_early {
                break;
            }
        }
        // The checkpointer's writer threads finish their files before it is gone.
        drop(checkpointer);
        (learner.model(), processor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::step::GradientStep;
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Distribution;

    #[derive(Module, Debug)]
    struct Net {
        a: Linear,
        b: Linear,
    }

    struct Out(Tensor<1>);

    impl StepOutput for Out {
        fn loss_mut(&mut self) -> &mut Tensor<1> {
            &mut self.0
        }
    }

    /// The mean squared output of `net` over the rows of `x`.
    fn loss(net: &Net, x: Tensor<2>) -> Out {
        Out(net.b.forward(net.a.forward(x)).square().mean())
    }

    /// What the loop does with one step's micro-batches: gradients of losses scaled by 1/k,
    /// summed, then the global norm of the sum clipped.
    fn step_gradient(net: &Net, micro_batches: &[Tensor<2>], max_norm: f32) -> GradientsParams {
        let step = GradientStep::new(micro_batches.len());
        let mut accumulator = GradientsAccumulator::new();
        for x in micro_batches {
            accumulator.accumulate(net, step.output(net, loss(net, x.clone())).grads);
        }
        let mut grads = accumulator.grads();
        let norm = squared_norm(net, &grads).unwrap();
        clip_to_norm(net, &mut grads, norm, max_norm);
        grads
    }

    fn values<const D: usize>(
        grads: &GradientsParams,
        param: &burn::module::Param<Tensor<D>>,
    ) -> Vec<f32> {
        grads
            .get::<D>(param.id)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap()
    }

    #[test]
    fn accumulating_k_micro_batches_is_one_batch_k_times_larger_clipping_included() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let net = Net {
            a: LinearConfig::new(5, 7).init(&device),
            b: LinearConfig::new(7, 3).init(&device),
        };
        let x = Tensor::<2>::random([12, 5], Distribution::Normal(0.0, 3.0), &device);
        let unclipped = step_gradient(&net, std::slice::from_ref(&x), f32::MAX);
        let norm = squared_norm(&net, &unclipped)
            .unwrap()
            .into_scalar::<f32>()
            .sqrt();
        // Clipping must bite for the test to say something about it.
        let max_norm = norm / 4.0;
        let whole = step_gradient(&net, std::slice::from_ref(&x), max_norm);
        for k in [2, 3, 4] {
            let parts: Vec<Tensor<2>> = x.clone().chunk(k, 0);
            let accumulated = step_gradient(&net, &parts, max_norm);
            for layer in [&net.a, &net.b] {
                let pairs = [
                    (
                        values(&whole, &layer.weight),
                        values(&accumulated, &layer.weight),
                    ),
                    (
                        values(&whole, layer.bias.as_ref().unwrap()),
                        values(&accumulated, layer.bias.as_ref().unwrap()),
                    ),
                ];
                for (a, b) in pairs {
                    for (a, b) in a.iter().zip(&b) {
                        assert!(
                            (a - b).abs() <= 1e-6 * (1.0 + a.abs()),
                            "k = {k}: {a} vs {b}"
                        );
                    }
                }
            }
        }
        // Clipping each micro-batch on its own, as before, is not the same step.
        let parts: Vec<Tensor<2>> = x.chunk(2, 0);
        let mut per_micro = GradientsAccumulator::new();
        for part in &parts {
            let mut grads = GradientStep::new(2)
                .output(&net, loss(&net, part.clone()))
                .grads;
            let norm = squared_norm(&net, &grads).unwrap();
            clip_to_norm(&net, &mut grads, norm, max_norm);
            per_micro.accumulate(&net, grads);
        }
        let per_micro = per_micro.grads();
        let differs = values(&whole, &net.a.weight)
            .iter()
            .zip(values(&per_micro, &net.a.weight))
            .any(|(a, b)| (a - b).abs() > 1e-4 * (1.0 + a.abs()));
        assert!(differs, "the test data should tell the two apart");
    }
}
