//! Early stopping: the run ends once a validation metric has gone `patience` validations
//! without improving on its best by more than `min_delta`. The metrics logger tells it each
//! validation; the training loop asks it after each validation whether to stop. A resumed run
//! replays the validations in its metrics log first, so it stops where an uninterrupted run
//! would.

use crate::recipe::{EarlyStoppingSpec, MetricMode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Where a metric stands; see the module docs.
#[derive(Clone, Debug)]
pub struct EarlyStopping {
    spec: EarlyStoppingSpec,
    /// The best value so far and the epoch it came at.
    best: Option<(f64, usize)>,
    /// Validations since the best.
    since_best: usize,
    /// The last epoch observed.
    last_epoch: usize,
    /// The validation metrics there are, when the one asked for is not among them.
    missing: Option<Vec<String>>,
}

/// What `summary.json` records of a run that stopped early.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStop {
    /// The metric watched.
    pub metric: String,
    /// Its best value.
    pub best: f64,
    /// The epoch (validation) the best came at.
    pub best_epoch: usize,
    /// The epoch the run stopped at.
    pub stopped_epoch: usize,
}

/// Early stopping shared by the metrics logger (which observes) and the training loop (which
/// asks).
pub type SharedEarlyStopping = Arc<Mutex<EarlyStopping>>;

impl EarlyStopping {
    /// Watching `spec`'s metric.
    pub fn new(spec: EarlyStoppingSpec) -> Self {
        Self {
            spec,
            best: None,
            since_best: 0,
            last_epoch: 0,
            missing: None,
        }
    }

    /// Takes in epoch `epoch`'s validation `metrics`, by the names `metrics.jsonl` gives them.
    pub fn observe(&mut self, epoch: usize, metrics: &BTreeMap<String, f64>) {
        self.last_epoch = epoch;
        let Some(&value) = metrics.get(&self.spec.metric) else {
            self.missing = Some(metrics.keys().cloned().collect());
            return;
        };
        let improved = match (self.best, self.spec.mode()) {
            (None, _) => value.is_finite(),
            (Some((best, _)), MetricMode::Min) => value < best - self.spec.min_delta,
            (Some((best, _)), MetricMode::Max) => value > best + self.spec.min_delta,
        };
        if improved {
            self.best = Some((value, epoch));
            self.since_best = 0;
        } else {
            self.since_best += 1;
        }
    }

    /// Whether the run should stop now: `patience` validations without improvement.
    pub fn should_stop(&self) -> bool {
        self.since_best >= self.spec.patience
    }

    /// What `summary.json` records when the run has stopped.
    pub fn record(&self) -> Option<EarlyStop> {
        let (best, best_epoch) = self.best?;
        self.should_stop().then(|| EarlyStop {
            metric: self.spec.metric.clone(),
            best,
            best_epoch,
            stopped_epoch: self.last_epoch,
        })
    }

    /// The error when the metric is not one the run validates with, naming those it has.
    pub fn missing_metric(&self) -> Option<String> {
        let available = self.missing.as_ref()?;
        Some(format!(
            "training.early_stopping.metric = \"{}\" is not a validation metric of this run; it has: {}",
            self.spec.metric,
            available.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(metric: &str, patience: usize, min_delta: f64) -> EarlyStopping {
        EarlyStopping::new(EarlyStoppingSpec {
            metric: metric.into(),
            patience,
            min_delta,
            mode: None,
        })
    }

    /// Feeds `values` of `metric` one validation each; returns the epoch it says stop at.
    fn stops_at(early: &mut EarlyStopping, metric: &str, values: &[f64]) -> Option<usize> {
        for (i, &value) in values.iter().enumerate() {
            early.observe(i + 1, &BTreeMap::from([(metric.to_string(), value)]));
            if early.should_stop() {
                return Some(i + 1);
            }
        }
        None
    }

    #[test]
    fn a_loss_stops_after_patience_validations_without_improvement() {
        let mut early = watch("loss", 2, 0.0);
        assert_eq!(
            stops_at(&mut early, "loss", &[3.0, 2.0, 2.5, 1.9, 2.0, 2.0, 1.0]),
            Some(6)
        );
        let record = early.record().unwrap();
        assert_eq!(
            (record.best, record.best_epoch, record.stopped_epoch),
            (1.9, 4, 6)
        );
    }

    #[test]
    fn min_delta_counts_small_gains_as_none_and_accuracy_rises() {
        // Gains of 0.05 are below min_delta 0.1: the third value is not an improvement.
        let mut early = watch("loss", 1, 0.1);
        assert_eq!(stops_at(&mut early, "loss", &[1.0, 0.8, 0.75]), Some(3));
        // Accuracy is better higher; a fall and a tie do not improve it.
        let mut early = watch("accuracy", 2, 0.0);
        assert_eq!(
            stops_at(&mut early, "accuracy", &[50.0, 60.0, 55.0, 60.0]),
            Some(4)
        );
        // The mode can be given: a loss read as higher-is-better stops at once.
        let mut early = EarlyStopping::new(EarlyStoppingSpec {
            metric: "loss".into(),
            patience: 1,
            min_delta: 0.0,
            mode: Some(MetricMode::Max),
        });
        assert_eq!(stops_at(&mut early, "loss", &[2.0, 1.0]), Some(2));
    }

    #[test]
    fn a_run_that_keeps_improving_never_stops_and_an_unknown_metric_is_named() {
        let mut early = watch("loss", 1, 0.0);
        assert_eq!(stops_at(&mut early, "loss", &[5.0, 4.0, 3.0, 2.0]), None);
        assert!(early.record().is_none());
        let mut early = watch("acc", 1, 0.0);
        early.observe(
            1,
            &BTreeMap::from([("loss".into(), 1.0), ("accuracy".into(), 50.0)]),
        );
        let error = early.missing_metric().unwrap();
        assert!(
            error.contains("\"acc\"") && error.contains("accuracy, loss"),
            "{error}"
        );
    }
}
