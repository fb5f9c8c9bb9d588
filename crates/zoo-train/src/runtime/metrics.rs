//! Metrics burn-train does not have: perplexity computed from the loss (no second pass over the
//! logits), and accuracy or F1 counted from every prediction of an epoch; the step output of
//! a model that predicts labels ([`LabelOutput`]).

use crate::runtime::step::StepOutput;
use burn::prelude::*;
use burn::tensor::TensorReadError;
use burn::train::metric::{
    Adaptor, LossInput, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric,
    NumericAttributes, NumericEntry, SerializedEntry,
};
use burn::train::{InferenceStep, ItemLazy, LearnerModel, SupervisedTraining, TrainStep};
use burn_std::ExecutionError;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The loss of a batch and how many tokens it averages over.
pub struct TokenLoss {
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
    type Input = TokenLoss;

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
        item: &TokenLoss,
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

/// What one step of a model that predicts labels (a sequence's class, each token's tag) reports
/// to the metrics.
pub struct LabelOutput {
    /// The loss (in training, with any auxiliary term).
    pub loss: Tensor<1>,
    /// Predicted and true labels, `[n]` each.
    pub labels: (Tensor<1, Int>, Tensor<1, Int>),
}

/// A step's labels, for accuracy and F1.
pub struct StepLabels((Tensor<1, Int>, Tensor<1, Int>));

impl LabelledBatch for StepLabels {
    fn labels(&self) -> Option<(Tensor<1, Int>, Tensor<1, Int>)> {
        Some(self.0.clone())
    }
}

impl ItemLazy for LabelOutput {
    fn sync(self) -> Result<Self, ExecutionError> {
        self.loss.device().flush()?;
        Ok(self)
    }
}

impl Adaptor<LossInput> for LabelOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

impl Adaptor<StepLabels> for LabelOutput {
    fn adapt(&self) -> StepLabels {
        StepLabels(self.labels.clone())
    }
}

impl StepOutput for LabelOutput {
    fn loss_mut(&mut self) -> &mut Tensor<1> {
        &mut self.loss
    }
}

/// `training` with what a classifier's or tagger's run logs: accuracy in training and
/// validation, F1 in validation.
pub fn with_label_metrics<M>(training: SupervisedTraining<M>) -> SupervisedTraining<M>
where
    M: LearnerModel + TrainStep<Output = LabelOutput> + InferenceStep<Output = LabelOutput>,
{
    let accuracy = || LabelMetric::<StepLabels>::new("Accuracy", LabelStatistic::Accuracy);
    training
        .metric_train_numeric(accuracy())
        .metric_valid_numeric(accuracy())
        .metric_valid_numeric(LabelMetric::<StepLabels>::new("F1", LabelStatistic::F1))
}

/// The ids of label `names` by `labels` (a run's names, in id order); an unknown name is an
/// error that lists the known ones.
pub fn label_ids<'a>(
    names: impl IntoIterator<Item = &'a str>,
    labels: &[String],
) -> Result<Vec<usize>, String> {
    names
        .into_iter()
        .map(|name| {
            labels.iter().position(|l| l == name).ok_or_else(|| {
                format!(
                    "label \"{name}\" is not one the run knows ({})",
                    labels.join(", ")
                )
            })
        })
        .collect()
}

/// `zoo predict`'s line for one classified text: the likeliest label and its probability, then
/// every label's, likeliest first (`probs` in label id order).
pub fn class_line(labels: &[String], probs: &[f32]) -> String {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let label = |i: usize| labels.get(i).cloned().unwrap_or_else(|| i.to_string());
    let all: Vec<String> = order
        .iter()
        .map(|&i| format!("{} {:.3}", label(i), probs[i]))
        .collect();
    format!(
        "{}\t{:.3}\t({})",
        label(order[0]),
        probs[order[0]],
        all.join(", ")
    )
}

/// `zoo predict`'s line for one tagged text: `word/TAG` per word (`-` for a word without one).
pub fn tag_line(words: &[String], tags: &[String]) -> String {
    words
        .iter()
        .zip(tags)
        .map(|(word, tag)| format!("{word}/{}", if tag.is_empty() { "-" } else { tag }))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What `zoo eval` reports for a run that predicts labels (an encoder, a GPT classifier).
#[derive(Clone, Debug)]
pub struct LabelReport {
    /// The split.
    pub split: String,
    /// Mean loss over batches, weighted by predictions.
    pub loss: f64,
    /// Accuracy in percent (masked tokens, or labels).
    pub accuracy: f64,
    /// F1 in percent (classification).
    pub f1: Option<f64>,
    /// Predictions scored.
    pub predictions: usize,
}

impl LabelReport {
    /// The report of a split from the outputs of all its batches: the loss weighted by each
    /// batch's predictions, accuracy and F1 over all of them.
    pub fn of_outputs(split: &str, outputs: impl IntoIterator<Item = LabelOutput>) -> Self {
        let ints = |t: Tensor<1, Int>| -> Vec<i64> {
            t.into_data()
                .convert::<i64>()
                .try_to_vec()
                .unwrap_or_default()
        };
        let mut confusion = Confusion::default();
        let (mut loss_sum, mut count) = (0.0, 0usize);
        for out in outputs {
            let (predicted, expected) = out.labels;
            let n = expected.dims()[0];
            loss_sum += out.loss.into_scalar::<f64>() * n as f64;
            count += n;
            confusion.add(&ints(expected), &ints(predicted));
        }
        LabelReport {
            split: split.to_string(),
            loss: loss_sum / count.max(1) as f64,
            accuracy: confusion.statistic(LabelStatistic::Accuracy),
            f1: Some(confusion.statistic(LabelStatistic::F1)),
            predictions: count,
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
