//! What a run reports: a perplexity metric computed from the loss (no second pass over the
//! logits), the metrics log as JSON lines in the run directory, and one line of progress per
//! validation when no terminal is attached (burn-train's TUI takes over on a terminal).

use crate::ZooError;
use crate::run::Budget;
use crate::schedule::SharedPlateau;
use burn::prelude::*;
use burn::tensor::TensorReadError;
use burn::train::logger::{
    EvaluationProgressLogger, InMemoryMetricLogger, MetricLogger, TrainingProgressLogger,
};
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{
    Metric, MetricAttributes, MetricDefinition, MetricId, MetricMetadata, MetricName, Numeric,
    NumericAttributes, NumericEntry, SerializedEntry,
};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// The loss of a batch and how many tokens it averages over.
pub struct LmLossInput {
    /// Mean cross-entropy.
    pub loss: Tensor<1>,
    /// Token count.
    pub tokens: usize,
}

/// Perplexity, `exp` of the token-weighted mean loss: per batch, and over the epoch.
#[derive(Clone)]
pub struct Perplexity {
    name: MetricName,
    nll_sum: f64,
    tokens: usize,
    current: f64,
    current_tokens: usize,
}

impl Default for Perplexity {
    fn default() -> Self {
        Self {
            name: Arc::new("Perplexity".into()),
            nll_sum: 0.0,
            tokens: 0,
            current: f64::NAN,
            current_tokens: 0,
        }
    }
}

impl Perplexity {
    fn epoch_value(&self) -> f64 {
        if self.tokens == 0 {
            f64::NAN
        } else {
            (self.nll_sum / self.tokens as f64).exp()
        }
    }
}

impl Metric for Perplexity {
    type Input = LmLossInput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: false,
        }
        .into()
    }

    fn update(
        &mut self,
        item: &LmLossInput,
        _: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        let loss = item.loss.clone().mean().try_into_scalar::<f64>()?;
        self.nll_sum += loss * item.tokens as f64;
        self.tokens += item.tokens;
        self.current = loss.exp();
        self.current_tokens = item.tokens;
        Ok(SerializedEntry::new(
            format!(
                "epoch {:.3} - batch {:.3}",
                self.epoch_value(),
                self.current
            ),
            NumericEntry::Aggregated {
                aggregated_value: self.current,
                count: self.current_tokens,
            }
            .serialize(),
        ))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        let value = self.epoch_value();
        Ok(SerializedEntry::new(
            format!("{value:.3}"),
            NumericEntry::Final(value).serialize(),
        ))
    }

    fn clear(&mut self) {
        *self = Self {
            name: self.name.clone(),
            ..Self::default()
        };
    }
}

impl Numeric for Perplexity {
    fn value(&self) -> Option<NumericEntry> {
        Some(NumericEntry::Aggregated {
            aggregated_value: self.current,
            count: self.current_tokens,
        })
    }

    fn running_value(&self) -> Option<NumericEntry> {
        Some(NumericEntry::Aggregated {
            aggregated_value: self.epoch_value(),
            count: self.tokens,
        })
    }

    fn final_value(&self) -> NumericEntry {
        NumericEntry::Final(self.epoch_value())
    }
}

/// Predicted and expected labels of a batch, `[n]` each, for [`LabelMetric`]s.
pub trait LabelledBatch: Send + Sync + 'static {
    /// `(predicted, expected)`, or `None` when the batch has no such labels.
    fn labels(&self) -> Option<(Tensor<1, Int>, Tensor<1, Int>)>;
}

/// Which statistic of the labels a [`LabelMetric`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelStatistic {
    /// Share of predictions that are right, in percent.
    Accuracy,
    /// F1 in percent: of class 1 when the labels are 0 and 1 (GLUE's convention for binary
    /// tasks), else the mean of every class's F1 (macro).
    F1,
}

/// Counts of (expected, predicted) label pairs.
#[derive(Clone, Debug, Default)]
pub struct Confusion(BTreeMap<(i64, i64), usize>);

impl Confusion {
    /// Counts a batch of labels.
    pub fn add(&mut self, expected: &[i64], predicted: &[i64]) {
        for (&e, &p) in expected.iter().zip(predicted) {
            *self.0.entry((e, p)).or_default() += 1;
        }
    }

    /// Labels counted.
    pub fn total(&self) -> usize {
        self.0.values().sum()
    }

    /// Accuracy or F1 in percent (NaN before any label).
    pub fn statistic(&self, statistic: LabelStatistic) -> f64 {
        let total = self.total();
        if total == 0 {
            return f64::NAN;
        }
        match statistic {
            LabelStatistic::Accuracy => {
                let right: usize = self
                    .0
                    .iter()
                    .filter(|((e, p), _)| e == p)
                    .map(|(_, n)| n)
                    .sum();
                100.0 * right as f64 / total as f64
            }
            LabelStatistic::F1 => {
                let classes: std::collections::BTreeSet<i64> =
                    self.0.keys().flat_map(|&(e, p)| [e, p]).collect();
                let f1 = |class: i64| {
                    let count = |f: &dyn Fn(i64, i64) -> bool| -> f64 {
                        self.0
                            .iter()
                            .filter(|((e, p), _)| f(*e, *p))
                            .map(|(_, n)| *n as f64)
                            .sum()
                    };
                    let tp = count(&|e, p| e == class && p == class);
                    let fp = count(&|e, p| e != class && p == class);
                    let fn_ = count(&|e, p| e == class && p != class);
                    if tp == 0.0 {
                        0.0
                    } else {
                        2.0 * tp / (2.0 * tp + fp + fn_)
                    }
                };
                let binary = classes.iter().all(|c| *c == 0 || *c == 1);
                if binary {
                    100.0 * f1(1)
                } else {
                    100.0 * classes.iter().map(|&c| f1(c)).sum::<f64>() / classes.len() as f64
                }
            }
        }
    }
}

/// Accuracy or F1 of labels (see [`LabelStatistic`]), over the epoch, counted from every
/// prediction rather than averaged over batches.
pub struct LabelMetric<I> {
    name: MetricName,
    statistic: LabelStatistic,
    epoch: Confusion,
    batch: Confusion,
    _input: std::marker::PhantomData<fn(&I)>,
}

impl<I> LabelMetric<I> {
    /// A metric called `name`.
    pub fn new(name: &str, statistic: LabelStatistic) -> Self {
        Self {
            name: Arc::new(name.into()),
            statistic,
            epoch: Confusion::default(),
            batch: Confusion::default(),
            _input: std::marker::PhantomData,
        }
    }
}

impl<I> Clone for LabelMetric<I> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            statistic: self.statistic,
            epoch: self.epoch.clone(),
            batch: self.batch.clone(),
            _input: std::marker::PhantomData,
        }
    }
}

impl<I: LabelledBatch> Metric for LabelMetric<I> {
    type Input = I;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: Some("%".into()),
            higher_is_better: true,
        }
        .into()
    }

    fn update(&mut self, item: &I, _: &MetricMetadata) -> Result<SerializedEntry, TensorReadError> {
        let read = |t: Tensor<1, Int>| -> Result<Vec<i64>, TensorReadError> {
            Ok(t.try_into_data()?
                .convert::<i64>()
                .try_to_vec::<i64>()
                .unwrap_or_default())
        };
        self.batch = Confusion::default();
        if let Some((predicted, expected)) = item.labels() {
            let (expected, predicted) = (read(expected)?, read(predicted)?);
            self.batch.add(&expected, &predicted);
            self.epoch.add(&expected, &predicted);
        }
        let current = self.batch.statistic(self.statistic);
        Ok(SerializedEntry::new(
            format!(
                "epoch {:.2} - batch {:.2}",
                self.epoch.statistic(self.statistic),
                current
            ),
            NumericEntry::Aggregated {
                aggregated_value: current,
                count: self.batch.total(),
            }
            .serialize(),
        ))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        let value = self.epoch.statistic(self.statistic);
        Ok(SerializedEntry::new(
            format!("{value:.2}"),
            NumericEntry::Final(value).serialize(),
        ))
    }

    fn clear(&mut self) {
        self.epoch = Confusion::default();
        self.batch = Confusion::default();
    }
}

impl<I: LabelledBatch> Numeric for LabelMetric<I> {
    fn value(&self) -> Option<NumericEntry> {
        Some(NumericEntry::Aggregated {
            aggregated_value: self.batch.statistic(self.statistic),
            count: self.batch.total(),
        })
    }

    fn running_value(&self) -> Option<NumericEntry> {
        Some(NumericEntry::Aggregated {
            aggregated_value: self.epoch.statistic(self.statistic),
            count: self.epoch.total(),
        })
    }

    fn final_value(&self) -> NumericEntry {
        NumericEntry::Final(self.epoch.statistic(self.statistic))
    }
}

/// Writes `metrics.jsonl`: one line per epoch and split, with every metric's epoch value, the
/// optimiser step the epoch ended on, and the wall time. Reads are answered from memory, as
/// burn-train's checkpoint strategies need.
pub struct JsonlMetricLogger {
    path: PathBuf,
    budget: Budget,
    started: Instant,
    /// Seconds the run had already taken before this invocation (resumed runs).
    earlier_seconds: f64,
    names: HashMap<MetricId, String>,
    finals: BTreeMap<(usize, String), BTreeMap<String, f64>>,
    memory: InMemoryMetricLogger,
    /// Told every validation loss, when the schedule anneals on a plateau.
    plateau: Option<SharedPlateau>,
}

impl JsonlMetricLogger {
    /// Writes to `path`. A fresh run (`resume_epoch` None) starts the log afresh; a resumed
    /// one keeps the lines up to its checkpoint's epoch (later ones are about to be redone) and
    /// continues their clock, so `elapsed_s` counts the run's time over every invocation.
    pub fn new(
        path: PathBuf,
        budget: Budget,
        resume_epoch: Option<usize>,
    ) -> Result<Self, ZooError> {
        let kept: Vec<serde_json::Value> = match resume_epoch {
            None => Vec::new(),
            Some(epoch) => std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .filter(|line| line["epoch"].as_u64().is_some_and(|e| e <= epoch as u64))
                .collect(),
        };
        let already = kept
            .iter()
            .filter_map(|line| line["elapsed_s"].as_f64())
            .fold(0.0, f64::max);
        let text: String = kept.iter().map(|line| format!("{line}\n")).collect();
        std::fs::write(&path, text).map_err(|e| ZooError::io(&path, e))?;
        Ok(Self {
            path,
            budget,
            started: Instant::now(),
            earlier_seconds: already,
            names: HashMap::new(),
            finals: BTreeMap::new(),
            memory: InMemoryMetricLogger::default(),
            plateau: None,
        })
    }

    /// Also reports each validation loss to `plateau`.
    pub fn with_plateau(self, plateau: SharedPlateau) -> Self {
        Self {
            plateau: Some(plateau),
            ..self
        }
    }
}

fn split_name(split: &Split) -> String {
    split.to_string()
}

impl MetricLogger for JsonlMetricLogger {
    fn log(&mut self, update: MetricsUpdate, epoch: usize, split: &Split) {
        for numeric in &update.entries_numeric {
            if let Some(NumericEntry::Final(value)) = numeric.numeric_entry
                && let Some(name) = self.names.get(&numeric.entry.metric_id)
            {
                self.finals
                    .entry((epoch, split_name(split)))
                    .or_default()
                    .insert(name.clone(), value);
            }
        }
        self.memory.log(update, epoch, split);
    }

    fn read_numeric(
        &mut self,
        name: &str,
        epoch: usize,
        split: &Split,
    ) -> Result<Vec<NumericEntry>, String> {
        self.memory.read_numeric(name, epoch, split)
    }

    fn log_metric_definition(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id.clone(), definition.name.to_string());
        self.memory.log_metric_definition(definition);
    }

    fn log_epoch_summary(&mut self, summary: EpochSummary) {
        let key = (summary.epoch_number, split_name(&summary.split));
        let metrics = self.finals.remove(&key).unwrap_or_default();
        if let (Some(plateau), "valid", Some(&loss)) =
            (&self.plateau, key.1.as_str(), metrics.get("Loss"))
        {
            plateau.lock().expect("plateau lock").observe(loss);
        }
        let mut line = serde_json::Map::new();
        line.insert("epoch".into(), summary.epoch_number.into());
        line.insert(
            "step".into(),
            self.budget.steps_at_epoch(summary.epoch_number).into(),
        );
        line.insert("split".into(), key.1.into());
        line.insert(
            "elapsed_s".into(),
            (self.earlier_seconds + self.started.elapsed().as_secs_f64()).into(),
        );
        for (name, value) in metrics {
            let key = name.to_lowercase().replace(' ', "_");
            line.insert(key, serde_json::json!(value));
        }
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| writeln!(f, "{}", serde_json::Value::Object(line)));
        if let Err(e) = written {
            eprintln!("warning: cannot append to {}: {e}", self.path.display());
        }
        self.memory.log_epoch_summary(summary);
    }
}

/// One line per validation: step, train and validation loss, perplexity, learning rate,
/// throughput and elapsed time. For logs and pipes, where a TUI would be noise.
pub struct LineRenderer {
    names: HashMap<MetricId, String>,
    latest: HashMap<(bool, String), f64>,
    budget: Budget,
    /// Epochs finished, counting those before a resume.
    epoch: usize,
    tokens_per_batch: usize,
    /// What `tokens_per_batch` counts ("tok" or "seq").
    unit: &'static str,
    /// Validation metrics printed after the loss: (label, metric name, precision).
    columns: Vec<(&'static str, &'static str, usize)>,
    train_batches: usize,
    split: String,
    started: Instant,
    train_started: Instant,
    train_seconds: f64,
}

impl LineRenderer {
    /// A renderer for a run of `budget`, of micro-batches of `tokens_per_batch` tokens,
    /// showing the validation perplexity.
    pub fn new(budget: Budget, tokens_per_batch: usize) -> Self {
        Self::with_columns(
            budget,
            tokens_per_batch,
            "tok",
            vec![("val ppl", "Perplexity", 3)],
        )
    }

    /// A renderer showing the validation metrics `columns` (label, metric name, decimals) and
    /// throughput in `unit`s (`tokens_per_batch` of them per micro-batch).
    pub fn with_columns(
        budget: Budget,
        tokens_per_batch: usize,
        unit: &'static str,
        columns: Vec<(&'static str, &'static str, usize)>,
    ) -> Self {
        Self {
            names: HashMap::new(),
            latest: HashMap::new(),
            budget,
            epoch: 0,
            tokens_per_batch,
            unit,
            columns,
            train_batches: 0,
            split: String::new(),
            started: Instant::now(),
            train_started: Instant::now(),
            train_seconds: f64::NAN,
        }
    }

    fn record(&mut self, valid: bool, state: MetricState) {
        if let MetricState::Numeric(entry, Some(NumericEntry::Final(value))) = state
            && let Some(name) = self.names.get(&entry.metric_id)
        {
            self.latest.insert((valid, name.clone()), value);
        }
    }

    fn get(&self, valid: bool, name: &str) -> f64 {
        self.latest
            .get(&(valid, name.to_string()))
            .copied()
            .unwrap_or(f64::NAN)
    }
}

impl MetricsRendererTraining for LineRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.record(false, state);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(true, state);
    }
}

impl MetricsRendererEvaluation for LineRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl MetricsRenderer for LineRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id, definition.name.to_string());
    }
}

impl TrainingProgressLogger for LineRenderer {
    fn start(
        &mut self,
        _total_epochs: usize,
        starting_epoch: usize,
        _: Option<usize>,
        _: Option<&str>,
    ) {
        self.epoch = starting_epoch.saturating_sub(1);
        if starting_epoch > 1 {
            println!(
                "resuming at step {} of {}",
                self.budget.steps_at_epoch(starting_epoch - 1),
                self.budget.total_steps
            );
        }
    }

    fn update_epoch(&mut self, _epoch: usize) {}

    fn start_split(&mut self, split: &str, _total_items: usize) {
        if split == "train" {
            self.train_started = Instant::now();
        }
        self.split = split.to_string();
    }

    fn update_split(&mut self, items_processed: usize) {
        if self.split == "train" {
            self.train_batches = items_processed;
        }
    }

    fn end_split(&mut self) {
        if self.split == "train" {
            self.train_seconds = self.train_started.elapsed().as_secs_f64();
        }
        if self.split != "valid" {
            return;
        }
        // burn-train counts epochs from 1; the line reports optimiser steps.
        self.epoch += 1;
        let step = self.budget.steps_at_epoch(self.epoch);
        let columns: String = self
            .columns
            .iter()
            .map(|&(label, name, decimals)| {
                format!(" | {label} {:.decimals$}", self.get(true, name))
            })
            .collect();
        println!(
            "step {step:>6}/{} | train loss {:.4} | val loss {:.4}{columns} | lr {:.2e} | {:.0} train {}/s | {:.0}s",
            self.budget.total_steps,
            self.get(false, "Loss"),
            self.get(true, "Loss"),
            self.get(false, "Learning Rate"),
            (self.train_batches * self.tokens_per_batch) as f64 / self.train_seconds,
            self.unit,
            self.started.elapsed().as_secs_f64(),
        );
    }

    fn end(&mut self) {}

    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for LineRenderer {
    fn start_global_progress(&mut self, _: usize) {}
    fn start_test(&mut self, _: &str, _: usize) {}
    fn update_test_progress(&mut self, _: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _: String) {}
}
