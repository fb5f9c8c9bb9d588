//! The training runtime: everything a task's training shares, none of it naming a task. It
//! imports the recipe and the model table below it, Burn and the model-free parts of the zoo's
//! crates, and never `tasks` or anything above.
//!
//! ```text
//! session    the skeleton every task's training runs through (TrainingTask, Session)
//! budget     steps a recipe buys, burn-train epochs, the plan of one invocation
//! run_dir    the run directory's files and checkpoints: list, select, check, load, resume
//! data       the resumable loader of numbered batches (BatchSource), seeded random streams
//! early_stop stopping once a validation metric stops improving
//! fit        the training loop: seeded per step, accumulation then clipping, non-finite
//!            steps stopped or skipped, checkpoints with the carried state
//! parallel   data parallelism: a step's micro-batches on several devices, gathered
//! lora       LoRA adapters on a pretrained model, checkpoints of what trains, the base
//! step       the gradient step: backward, accumulation scale, global-norm arithmetic
//! optim      AdamW on the fused update, and the recipe's optimiser
//! schedule   learning-rate schedules and annealing on a plateau
//! metrics    perplexity, accuracy and F1
//! logging    metrics.jsonl and the one-line-per-validation display
//! summary    summary.json: what a finished run cost
//! validations the loop waits for the metrics logger to have taken in each validation
//! ```

pub mod budget;
pub mod data;
pub mod early_stop;
pub mod fit;
pub mod logging;
pub mod lora;
pub mod metrics;
pub mod optim;
pub mod parallel;
pub mod run_dir;
pub mod schedule;
pub mod session;
pub mod step;
pub mod summary;
pub mod validations;
