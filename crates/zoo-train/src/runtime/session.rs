//! The training session: the one skeleton every task's training runs through. A task reads its
//! data, settles its tokenizer and model config ([`Session::model_config`], fresh or resumed the
//! same way for every task), and hands [`Session::train`] its batches and a [`TrainingTask`]; the
//! session does the rest: budget and plan, seeding, the checkpoint to resume from (the newest
//! that loads), optimiser and schedule (with annealing on a plateau), loaders, the metrics log
//! and the progress display, burn-train's launch with the zoo's training loop (`fit`) and
//! atomic checkpoints, and the summary of a finished run.

use crate::ZooError;
use crate::models::ModelConfig;
use crate::recipe::OnNonFinite;
use crate::recipe::Recipe;
use crate::runtime::budget::{Budget, Plan, StepCost};
use crate::runtime::data::{BatchSource, StepLoader};
use crate::runtime::early_stop::EarlyStopping;
use crate::runtime::fit::{Stopped, TrainingLoop};
use crate::runtime::logging::{JsonlMetricLogger, LineRenderer};
use crate::runtime::optim::build_optimizer;
use crate::runtime::parallel::DeviceResolver;
use crate::runtime::run_dir::{
    AtomicCheckpointer, CheckpointRule, METRICS_FILE, ModelCheckpointer, SaveWhenAsked,
    checkpoint_epochs, newest_loadable, prune_checkpoints, remove_partial_files, resumed_model,
    steps_at_epoch, validation_losses, validation_metrics,
};
use crate::runtime::schedule::{LrSchedule, Plateau, SharedPlateau};
use crate::runtime::step::{CarriedState, SkippedSteps, StepOutput};
use crate::runtime::summary::{RunSummary, SUMMARY_FILE};
use crate::runtime::validations::Validations;
use burn::prelude::*;
use burn::train::checkpoint::CheckpointerError;
use burn::train::metric::{Adaptor, LearningRateMetric, LossInput, LossMetric};
use burn::train::renderer::{MetricsRenderer, default_renderer};
use burn::train::{
    InferenceStep, Learner, LearnerModel, SupervisedTraining, TrainStep, TrainingError,
    TrainingStrategy,
};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use zoo_text::DataDir;

/// Options of `zoo train` beside the recipe.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Run directory (default: `runs/<recipe name>`).
    pub run_dir: Option<PathBuf>,
    /// Continue from the run directory's last checkpoint.
    pub resume: bool,
    /// Where datasets live.
    pub data_dir: DataDir,
    /// The device to train on (its autodiff version is used for training).
    pub device: Device,
    /// `--devices`: the devices to split each batch across, in place of the recipe's
    /// `training.devices`; the first takes `device`'s place.
    pub devices: Option<Vec<String>>,
    /// The device a name in `devices` (or the recipe's) stands for.
    pub resolve_device: DeviceResolver,
    /// Stop after this many optimiser steps even if the recipe's budget is larger (the run
    /// can be resumed). Used to test interruption.
    pub stop_after_steps: Option<usize>,
}

/// What a finished `zoo train` reports.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Optimiser steps done in total (including before a resume).
    pub steps: usize,
    /// Validation loss at the last validation.
    pub val_loss: Option<f64>,
    /// Wall time of this invocation.
    pub seconds: f64,
    /// The sample the recipe asks for.
    pub sample: Option<String>,
}

/// What a task's training hands back: the step it stopped at and, for language models, the
/// sample the recipe asks for.
#[derive(Clone, Debug)]
pub struct TaskOutcome {
    /// Optimiser steps done in total (0 for a counted n-gram model).
    pub steps: usize,
    /// The sample printed at the end.
    pub sample: Option<String>,
}

/// One invocation of `zoo train`: the recipe, where the run lives, and whether it resumes.
pub struct Session<'a> {
    /// The recipe.
    pub recipe: &'a Recipe,
    /// The recipe's file, which recipe errors name.
    pub recipe_path: &'a Path,
    /// The run directory.
    pub run_dir: PathBuf,
    /// The command line's options (`device` being the main one of `devices`).
    pub options: &'a TrainOptions,
    /// The devices each batch is split across, the main one first (only it when training runs
    /// on one).
    pub devices: Vec<Device>,
    /// The newest complete checkpoint's epoch when this invocation resumes (training falls
    /// back to an older one if it does not load); `None` for a fresh run.
    pub resume_epoch: Option<usize>,
}

/// A task's batches, and what a step of them costs.
pub struct Batches<S> {
    /// Training batches.
    pub train: S,
    /// Validation batches.
    pub valid: S,
    /// Optimiser steps in one pass over the training data (what an `epochs` budget counts).
    pub steps_per_pass: usize,
    /// What one optimiser step costs (what `tokens` and `flops` budgets count).
    pub cost: StepCost,
}

impl<S> Batches<S> {
    /// Batches of examples (an encoder's, an encoder-decoder's, a classifier's): a pass is
    /// `batches_per_pass` micro-batches, and a step of the recipe's batch costs
    /// `tokens_per_example` tokens per example at `flops_per_token` training FLOPs each.
    pub fn of_examples(
        train: S,
        valid: S,
        batches_per_pass: usize,
        tokens_per_example: f64,
        flops_per_token: usize,
        recipe: &Recipe,
    ) -> Self {
        let t = &recipe.training;
        Self {
            steps_per_pass: batches_per_pass.div_ceil(t.micro_batches()),
            cost: StepCost {
                tokens: tokens_per_example * (t.batch_size * t.grad_accumulation) as f64,
                flops_per_token: flops_per_token as f64,
            },
            train,
            valid,
        }
    }
}

/// What a task brings to [`Session::train`] beside its batches: its model, its metrics and its
/// words. The trait is all the session knows of a task.
pub trait TrainingTask {
    /// The model with what training needs beside its weights (burn-train's training and
    /// validation steps).
    type Model: LearnerModel;
    /// Where its batches come from.
    type Source: BatchSource<Batch = <Self::Model as TrainStep>::Input>;

    /// The model to train, on the autodiff `device`, which the session has just seeded: fresh
    /// weights, or a starting point's (a resumed run's checkpoint is loaded into it later).
    fn model(&mut self, device: &Device) -> Result<Self::Model, ZooError>;

    /// Registers the task's metrics beyond the loss and the learning rate.
    fn metrics(&self, training: SupervisedTraining<Self::Model>)
    -> SupervisedTraining<Self::Model>;

    /// The progress line printed at each validation when no terminal is attached.
    fn progress(&self, budget: Budget) -> LineRenderer;

    /// The line printed when training starts.
    fn announce(&self, budget: &Budget) -> String;
}

/// A task's model as training left it.
pub struct Trained<M> {
    /// The model, on the autodiff device.
    pub model: M,
    /// The step this invocation stopped at.
    pub steps: usize,
    /// Whether the run reached the end of its budget (its summary is written).
    pub finished: bool,
}

impl Session<'_> {
    /// An error in the recipe, naming its file.
    pub fn recipe_error(&self, message: impl Into<String>) -> ZooError {
        ZooError::recipe(self.recipe_path, message)
    }

    /// Whether this invocation starts the run (rather than resuming it): it then writes the
    /// run's recipe and tokenizer.
    pub fn is_fresh(&self) -> bool {
        self.resume_epoch.is_none()
    }

    /// Where datasets live.
    pub fn data_dir(&self) -> &DataDir {
        &self.options.data_dir
    }

    /// Creates the run directory.
    pub fn create_run_dir(&self) -> Result<(), ZooError> {
        std::fs::create_dir_all(&self.run_dir).map_err(|e| ZooError::io(&self.run_dir, e))
    }

    /// The run's model config: the recipe's, after `fit` has filled in what the data decides
    /// (vocabulary sizes, label counts) and checked what the recipe gives. A fresh run validates
    /// it; a resumed one checks that it is the config the run was started with.
    pub fn model_config(
        &self,
        fit: impl FnOnce(&mut ModelConfig) -> Result<(), String>,
    ) -> Result<ModelConfig, ZooError> {
        if self.resume_epoch.is_some() {
            return resumed_model(&self.run_dir, self.recipe, self.recipe_path, |wanted, _| {
                fit(wanted)
            });
        }
        let mut config = self
            .recipe
            .model_config()
            .map_err(|e| self.recipe_error(e))?;
        fit(&mut config).map_err(|e| self.recipe_error(e))?;
        config
            .validate()
            .map_err(|e| self.recipe_error(format!("[model]: {e}")))?;
        self.recipe
            .check_frozen_layers(&config)
            .map_err(|e| self.recipe_error(e))?;
        Ok(config)
    }

    /// Trains `task`'s model of `config` on `batches` for the recipe's budget (or up to
    /// `--stop-after-steps`), from the checkpoint it resumes from, with checkpoints and metrics
    /// written to the run directory; writes the summary if the run finished.
    pub fn train<T>(
        &self,
        mut task: T,
        batches: Batches<T::Source>,
        config: &ModelConfig,
    ) -> Result<Trained<T::Model>, ZooError>
    where
        T: TrainingTask,
        T::Model: InferenceStep<Input = <T::Source as BatchSource>::Batch> + CarriedState,
        <T::Model as TrainStep>::Output: Adaptor<LossInput> + StepOutput,
        <T::Model as InferenceStep>::Output: Adaptor<LossInput>,
    {
        let (recipe, run_dir) = (self.recipe, self.run_dir.as_path());
        let t = &recipe.training;
        let micro_batches = t.micro_batches();
        let budget = Budget::of(recipe, batches.steps_per_pass, batches.cost)
            .map_err(|e| self.recipe_error(e))?;

        let device = self.options.device.clone();
        let autodiff = device.clone().autodiff();
        let devices: Vec<Device> = self.devices.iter().map(|d| d.clone().autodiff()).collect();
        device.seed(recipe.seed);
        // Parameters must be created on the autodiff device to be tracked.
        let model = task.model(&autodiff)?;
        if devices.len() > 1 && model.carries_between_batches() {
            return Err(self.recipe_error(format!(
                "training.devices: each window of this model starts from the state the one before left, so a step's windows cannot run side by side on {} devices; train it on one",
                devices.len()
            )));
        }
        remove_partial_files(run_dir);
        let resume_epoch = match self.resume_epoch {
            Some(_) => {
                let (epoch, warnings) = newest_loadable(run_dir, &model, |carried| {
                    model.carry_on(carried, &autodiff)
                })?;
                for warning in warnings {
                    eprintln!("warning: {warning}");
                }
                Some(epoch)
            }
            None if self.options.resume => {
                println!(
                    "{} has no complete checkpoint yet: the run starts from its first step",
                    run_dir.display()
                );
                None
            }
            None => None,
        };
        // A resumed run replays its validations, so it stops where an uninterrupted one would.
        let early_stopping = t.early_stopping.clone().map(|spec| {
            let mut early = EarlyStopping::new(spec);
            for (epoch, metrics) in validation_metrics(run_dir) {
                if resume_epoch.is_some_and(|resumed| epoch <= resumed) {
                    early.observe(epoch, &metrics);
                }
            }
            Arc::new(Mutex::new(early))
        });
        let ended_early = early_stopping
            .as_ref()
            .is_some_and(|early| early.lock().expect("early stopping lock").should_stop());
        let Plan {
            total_steps,
            epochs,
            start_epoch,
        } = budget.plan(
            self.options.stop_after_steps,
            resume_epoch,
            run_dir.join(SUMMARY_FILE).exists(),
            ended_early,
            run_dir,
        )?;
        if let Some(asked) = self.options.stop_after_steps
            && asked < total_steps
        {
            println!(
                "--stop-after-steps {asked}: stopping at step {total_steps}, where that evaluation interval ends, so that --resume continues exactly"
            );
        }

        let mut schedule = LrSchedule::new(
            &recipe.schedule,
            recipe.optimizer.lr,
            budget.total_steps,
            config.width(),
        );
        let skipped = SkippedSteps::default();
        let validations = Validations::default();
        let mut metric_logger =
            JsonlMetricLogger::new(run_dir.join(METRICS_FILE), budget, resume_epoch)?
                .with_validations(validations.clone());
        if t.on_nonfinite == OnNonFinite::Skip {
            metric_logger = metric_logger.with_skips(skipped.clone());
        }
        if let Some(early) = &early_stopping {
            metric_logger = metric_logger.with_early_stopping(early.clone());
        }
        if let Some(divisor) = recipe.schedule.plateau_divisor {
            let mut plateau = Plateau::new(divisor);
            // A resumed run replays the validations it has had, so it anneals exactly as an
            // uninterrupted one.
            for (epoch, loss) in validation_losses(run_dir) {
                if epoch <= start_epoch {
                    plateau.observe(loss);
                }
            }
            let plateau: SharedPlateau = Arc::new(Mutex::new(plateau));
            schedule = schedule.with_plateau(plateau.clone());
            metric_logger = metric_logger.with_plateau(plateau);
        }
        let model_checkpointer = ModelCheckpointer::new(run_dir, &model);
        let learner = Learner::new(model, build_optimizer(recipe), schedule);

        let train_loader = StepLoader::training(
            batches.train,
            budget.steps_per_epoch * micro_batches,
            total_steps * micro_batches,
            start_epoch,
            &devices,
        );
        let val_loader = StepLoader::validation(batches.valid, t.eval_batches, &device);
        let checkpoints = CheckpointRule {
            every: (t.checkpoint_interval.unwrap_or(t.eval_interval) / t.eval_interval).max(1),
            last: epochs,
            keep: t.keep_checkpoints,
        };
        let training_loop = TrainingLoop::new(
            recipe,
            &devices,
            run_dir.to_path_buf(),
            budget.steps_per_epoch,
            checkpoints,
            skipped,
            validations,
        );
        let training_loop = match &early_stopping {
            Some(early) => training_loop.with_early_stopping(early.clone()),
            None => training_loop,
        };
        let stopped = training_loop.failure();
        let training =
            SupervisedTraining::new(run_dir, Arc::new(train_loader), Arc::new(val_loader))
                .metric_train_numeric(LossMetric::new())
                .metric_valid_numeric(LossMetric::new())
                .metric_train_numeric(LearningRateMetric::new())
                .with_training_strategy(TrainingStrategy::Custom(Arc::new(training_loop)));
        let training = with_run_settings(
            task.metrics(training),
            model_checkpointer,
            run_dir,
            epochs,
            resume_epoch,
            metric_logger,
            task.progress(budget),
        );
        println!("{}", task.announce(&budget));
        if devices.len() > 1 {
            println!(
                "data parallel: each batch of {} is split into {} micro-batches of {}, one on each of {}; gradients are summed on the first",
                t.batch_size,
                devices.len(),
                t.micro_batch_size(),
                t.devices.join(", ")
            );
        }
        let result = training.launch(learner);
        if let Some(why) = stopped.lock().expect("failure lock").take() {
            return Err(self.stopped_at(&why, &budget));
        }
        if let Some(error) = &result.error {
            return Err(ZooError::Training(match error.as_ref() {
                TrainingError::Checkpoint(CheckpointerError::Unknown(message)) => message.clone(),
                other => other.to_string(),
            }));
        }
        prune_checkpoints(run_dir, t.keep_checkpoints)?;
        let early_stop =
            early_stopping.and_then(|early| early.lock().expect("early stopping lock").record());
        let steps = early_stop.as_ref().map_or(total_steps, |stop| {
            budget.steps_at_epoch(stop.stopped_epoch)
        });
        if let Some(stop) = &early_stop {
            println!(
                "early stopping: {} has not improved on {} (step {}) in {} validations; the run ends at step {steps}",
                stop.metric,
                stop.best,
                budget.steps_at_epoch(stop.best_epoch),
                stop.stopped_epoch - stop.best_epoch,
            );
        }
        let finished = total_steps == budget.total_steps || early_stop.is_some();
        if finished {
            let mut summary = RunSummary::new(recipe, config.size(), batches.cost, steps, run_dir);
            summary.early_stop = early_stop;
            summary.save(run_dir)?;
        }
        Ok(Trained {
            model: result.model,
            steps,
            finished,
        })
    }

    /// The error of a run the training loop `stopped`, saying what was kept and what to do.
    fn stopped_at(&self, stopped: &Stopped, budget: &Budget) -> ZooError {
        let run_dir = self.run_dir.as_path();
        let kept = match checkpoint_epochs(run_dir).last() {
            Some(&epoch) => format!(
                "its last checkpoint (step {}) is kept",
                steps_at_epoch(run_dir, epoch).unwrap_or(budget.steps_at_epoch(epoch))
            ),
            None => "it has no checkpoint yet".into(),
        };
        ZooError::Training(format!(
            "{}: the run stops here and {kept}; {}",
            stopped.reason, stopped.advice
        ))
    }
}

/// What every run's training shares beside its metrics: the metrics log, checkpoints written
/// atomically (when the training loop asks), the epochs, the checkpoint to resume from, and
/// the display: burn-train's dashboard on a terminal, otherwise `lines` (one line per
/// validation).
fn with_run_settings<M: LearnerModel>(
    training: SupervisedTraining<M>,
    model_checkpointer: ModelCheckpointer,
    run_dir: &Path,
    epochs: usize,
    resume_epoch: Option<usize>,
    metric_logger: JsonlMetricLogger,
    lines: LineRenderer,
) -> SupervisedTraining<M> {
    let mut training = training
        .with_metric_logger(metric_logger)
        .with_custom_checkpointers(
            model_checkpointer,
            AtomicCheckpointer::new(run_dir, "optim"),
            AtomicCheckpointer::new(run_dir, "scheduler"),
        )
        .with_checkpointing_strategy(SaveWhenAsked)
        .num_epochs(epochs);
    if let Some(epoch) = resume_epoch {
        training = training.checkpoint(epoch);
    }
    let renderer: Box<dyn MetricsRenderer> = if std::io::stdout().is_terminal() {
        default_renderer(training.interrupter(), resume_epoch)
    } else {
        Box::new(lines)
    };
    training.renderer(renderer)
}
