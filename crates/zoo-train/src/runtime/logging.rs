//! What a run writes as it trains: the metrics log as JSON lines in the run directory, and one
//! line of progress per validation when no terminal is attached (burn-train's TUI takes over on
//! a terminal).

use crate::ZooError;
use crate::runtime::budget::Budget;
use crate::runtime::early_stop::SharedEarlyStopping;
use crate::runtime::run_dir::{append_run_line, write_run_file};
use crate::runtime::schedule::SharedPlateau;
use crate::runtime::step::SkippedSteps;
use crate::runtime::validations::Validations;
use burn::train::logger::{
    EvaluationProgressLogger, InMemoryMetricLogger, MetricLogger, TrainingProgressLogger,
};
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

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
    /// Steps skipped for non-finite values, written on each training line when skipping is on.
    skipped: Option<SkippedSteps>,
    /// Told every validation's metrics, when the run stops early.
    early_stopping: Option<SharedEarlyStopping>,
    /// Marked once each validation has been taken in (the training loop waits for it).
    validations: Validations,
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
        let old = match resume_epoch {
            None => String::new(),
            Some(_) => std::fs::read_to_string(&path).unwrap_or_default(),
        };
        // The kept lines are copied as they were written, not parsed and written again: a
        // float's last digits may not survive the round trip, and a resumed run's log must be
        // the uninterrupted run's. (A torn last line, from a kill, is not kept.)
        let kept: Vec<(&str, serde_json::Value)> = old
            .lines()
            .filter_map(|line| Some((line, serde_json::from_str::<serde_json::Value>(line).ok()?)))
            .filter(|(_, value)| {
                let epoch = value["epoch"].as_u64();
                resume_epoch.is_some_and(|resumed| epoch.is_some_and(|e| e <= resumed as u64))
            })
            .collect();
        let already = kept
            .iter()
            .filter_map(|(_, value)| value["elapsed_s"].as_f64())
            .fold(0.0, f64::max);
        let text: String = kept.iter().map(|(line, _)| format!("{line}\n")).collect();
        write_run_file(&path, text.as_bytes())?;
        Ok(Self {
            path,
            budget,
            started: Instant::now(),
            earlier_seconds: already,
            names: HashMap::new(),
            finals: BTreeMap::new(),
            memory: InMemoryMetricLogger::default(),
            plateau: None,
            skipped: None,
            early_stopping: None,
            validations: Validations::default(),
        })
    }

    /// Marks each validation in `validations` once taken in.
    pub fn with_validations(self, validations: Validations) -> Self {
        Self {
            validations,
            ..self
        }
    }

    /// Also reports each validation's metrics to `early_stopping`.
    pub fn with_early_stopping(self, early_stopping: SharedEarlyStopping) -> Self {
        Self {
            early_stopping: Some(early_stopping),
            ..self
        }
    }

    /// Also writes how many steps of each epoch were `skipped`.
    pub fn with_skips(self, skipped: SkippedSteps) -> Self {
        Self {
            skipped: Some(skipped),
            ..self
        }
    }

    /// Also reports each validation loss to `plateau`.
    pub fn with_plateau(self, plateau: SharedPlateau) -> Self {
        Self {
            plateau: Some(plateau),
            ..self
        }
    }
}

/// A metric's name as `metrics.jsonl` writes it (and early stopping names it): `Loss` is `loss`,
/// `Learning Rate` is `learning_rate`.
fn metric_key(name: &str) -> String {
    name.to_lowercase().replace(' ', "_")
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
        line.insert("split".into(), key.1.clone().into());
        line.insert(
            "elapsed_s".into(),
            (self.earlier_seconds + self.started.elapsed().as_secs_f64()).into(),
        );
        let metrics: BTreeMap<String, f64> = metrics
            .into_iter()
            .map(|(name, value)| (metric_key(&name), value))
            .collect();
        if let (Some(early), "valid") = (&self.early_stopping, key.1.as_str()) {
            early
                .lock()
                .expect("early stopping lock")
                .observe(summary.epoch_number, &metrics);
        }
        for (name, value) in &metrics {
            line.insert(name.clone(), serde_json::json!(value));
        }
        if let (Some(skipped), "train") = (&self.skipped, key.1.as_str()) {
            line.insert(
                "skipped".into(),
                skipped.of_epoch(summary.epoch_number).into(),
            );
        }
        let line = serde_json::Value::Object(line).to_string();
        if let Err(e) = append_run_line(&self.path, &line) {
            // The log is not the run: training goes on (its checkpoints say whether the disk
            // is full), and a resume writes the lines again.
            eprintln!("warning: {e}");
        }
        if key.1 == "valid" {
            self.validations.logged(summary.epoch_number);
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

    /// A renderer for a classifier or tagger: validation accuracy and F1, throughput in
    /// sequences (`batch_size` per micro-batch).
    pub fn for_labels(budget: Budget, batch_size: usize) -> Self {
        Self::with_columns(
            budget,
            batch_size,
            "seq",
            vec![("val acc", "Accuracy", 2), ("val F1", "F1", 2)],
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
