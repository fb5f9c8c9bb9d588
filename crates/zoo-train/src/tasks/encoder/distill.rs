//! Knowledge distillation of an encoder (Hinton et al. 2015; DistilBERT, Sanh et al. 2019): a
//! student learns its teacher's task from the data's labels and from the teacher's outputs on
//! the same batch, the softened distribution over classes (or, for masked-LM, over the
//! vocabulary at each masked token) and, optionally, the direction of its last hidden states.
//!
//! The teacher stays frozen (no gradient, no dropout) beside the student, outside its record:
//! a distilled run's checkpoints are its student's, and the run is a run of the teacher's task.

use crate::ZooError;
use crate::recipe::{DistillationSpec, Recipe, StudentInit, Task};
use crate::tasks::encoder::model::EncoderBatch;
use crate::tasks::encoder::run::EncoderRun;
use burn::module::Module;
use burn::prelude::*;
use std::path::Path;
use std::sync::{Arc, Mutex};
use zoo_bert::{BertConfig, BertModel, Predictions, TaskLogits, TaskLoss};
use zoo_blocks::loss::{cosine_distance, cross_entropy, soft_target_kl};

/// The frozen teacher and how the student learns from it.
#[derive(Clone, Debug)]
pub struct Teacher {
    /// The teacher, frozen.
    model: BertModel,
    /// Copies of the teacher on the other devices batches come from (data parallelism), made
    /// once each. The teacher is no part of the student's record, so a replica of the student
    /// on another device still holds it where the model was made.
    copies: Arc<Mutex<Vec<BertModel>>>,
    /// The loss's weights and temperature.
    spec: DistillationSpec,
}

impl Teacher {
    /// `model` as the teacher of a student trained by `spec`.
    pub fn new(model: BertModel, spec: &DistillationSpec) -> Self {
        Self {
            model: model.freeze(),
            copies: Arc::default(),
            spec: spec.clone(),
        }
    }

    /// The teacher on `device`: the model itself, or its copy there.
    fn on(&self, device: &Device) -> BertModel {
        let home = self.model.devices();
        if home.first().is_none_or(|d| d == device) {
            return self.model.clone();
        }
        let mut copies = self.copies.lock().expect("the teacher's copies");
        let found = copies.iter().find(|m| m.devices().first() == Some(device));
        if let Some(copy) = found {
            return copy.clone();
        }
        let copy = self.model.clone().fork(device);
        copies.push(copy.clone());
        copy
    }

    /// The student's distillation loss on `batch` (see `DistillationSpec`), and its
    /// predictions.
    pub fn loss(&self, student: &BertModel, batch: EncoderBatch) -> TaskLoss {
        let EncoderBatch {
            tokens,
            segments,
            padding,
            targets,
        } = batch;
        let spec = &self.spec;
        let ours = student.task_logits(
            tokens.clone(),
            segments.clone(),
            padding.clone(),
            targets.clone(),
        );
        let [n, _] = ours.logits.dims();
        let mut loss = cross_entropy(ours.logits.clone(), ours.expected.clone()) * spec.beta;
        // The teacher runs only when a term reads it, on the batch's device.
        let theirs = (spec.alpha > 0.0 || spec.cosine > 0.0).then(|| {
            self.on(&tokens.device())
                .task_logits(tokens, segments, padding.clone(), targets)
        });
        if let Some(theirs) = theirs {
            loss = loss + self.teacher_terms(&ours, theirs, padding);
        }
        let mut scored = TaskLoss {
            loss,
            main: Predictions {
                predicted: ours.logits.detach().argmax(1).reshape([n]),
                expected: ours.expected,
            },
            next_sentence: None,
        };
        // Next-sentence prediction, when the task has it, learns from the labels only.
        if let Some((logits, labels)) = ours.next_sentence {
            let [pairs, _] = logits.dims();
            scored.loss = scored.loss + cross_entropy(logits.clone(), labels.clone());
            scored.next_sentence = Some(Predictions {
                predicted: logits.detach().argmax(1).reshape([pairs]),
                expected: labels,
            });
        }
        scored
    }

    /// The terms of the loss that read the teacher (`theirs`): the soft loss and the cosine
    /// loss over the real (non-`padding`) tokens.
    fn teacher_terms(
        &self,
        ours: &TaskLogits,
        theirs: TaskLogits,
        padding: Tensor<2, Bool>,
    ) -> Tensor<1> {
        let spec = &self.spec;
        let soft =
            soft_target_kl(ours.logits.clone(), theirs.logits, spec.temperature) * spec.alpha;
        if spec.cosine == 0.0 {
            return soft;
        }
        let [batch, len, d_model] = ours.hidden.dims();
        let tokens = padding
            .bool_not()
            .reshape([batch * len])
            .nonzero()
            .remove(0);
        let rows = |hidden: Tensor<3>| {
            hidden
                .reshape([batch * len, d_model])
                .select(0, tokens.clone())
        };
        soft + cosine_distance(rows(ours.hidden.clone()), rows(theirs.hidden)) * spec.cosine
    }
}

/// The teacher `dir` names, loaded by `load` onto the training device, after checking that it
/// is one a student can learn from.
pub fn load_teacher(
    dir: &Path,
    load: impl FnOnce(&Path) -> Result<EncoderRun, ZooError>,
) -> Result<EncoderRun, ZooError> {
    let run = load(dir)?;
    if !matches!(run.recipe.task, Task::Classification | Task::MaskedLm) {
        return Err(ZooError::run_dir(
            dir,
            format!(
                "is a {} run: a teacher is a classifier or a masked-LM",
                run.recipe.task.name()
            ),
        ));
    }
    Ok(run)
}

/// `recipe` as the student's run keeps it: the teacher's task (and, for masked-LM, its
/// sentence pairs), with `teacher` and `[distillation]` saying how it was trained.
pub fn student_recipe(recipe: &Recipe, teacher: &EncoderRun) -> Recipe {
    let mut student = recipe.clone();
    student.task = teacher.recipe.task;
    if teacher.recipe.task == Task::MaskedLm {
        student.data.next_sentence = teacher.recipe.data.next_sentence;
    }
    student
}

/// The run a student of `spec.init = "every-other-layer"` starts from: the teacher with its
/// layers 0, 2, 4, ... (its embeddings, pooler and head as they are); `None` for a fresh
/// student.
pub fn student_start(teacher: &EncoderRun, spec: &DistillationSpec) -> Option<EncoderRun> {
    if spec.init != StudentInit::EveryOtherLayer {
        return None;
    }
    let mut model = teacher.model.clone();
    model.encoder.layers = model.encoder.layers.into_iter().step_by(2).collect();
    Some(EncoderRun {
        recipe: teacher.recipe.clone(),
        config: BertConfig {
            n_layer: model.encoder.layers.len(),
            ..teacher.config.clone()
        },
        tokenizer: teacher.tokenizer.clone(),
        model,
        labels: teacher.labels.clone(),
        epoch: teacher.epoch,
    })
}

/// The labels a student of `teacher` (found at `dir`) learns, in the teacher's order: its
/// training data's (`ours`) must all be the teacher's.
pub fn teacher_labels(
    teacher: &EncoderRun,
    dir: &Path,
    ours: Vec<String>,
) -> Result<Vec<String>, ZooError> {
    if let Some(unknown) = ours.iter().find(|label| !teacher.labels.contains(label)) {
        return Err(ZooError::run_dir(
            dir,
            format!(
                "has no label \"{unknown}\", which the student's data has: its labels are {}",
                teacher.labels.join(", ")
            ),
        ));
    }
    Ok(teacher.labels.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zoo_bert::{BertTask, Targets};

    fn encoder(n_layer: usize, device: &Device) -> BertModel {
        BertConfig {
            vocab_size: 30,
            max_len: 8,
            d_model: 16,
            n_head: 2,
            n_layer,
            num_labels: 3,
            dropout: 0.0,
            ..BertConfig::default()
        }
        .init(BertTask::Classification, device)
        .unwrap()
    }

    fn batch(device: &Device) -> EncoderBatch {
        let tokens = Tensor::<2, Int>::from_data(
            TensorData::from([[2i64, 7, 9, 3, 0], [2, 11, 4, 5, 3]]),
            device,
        );
        EncoderBatch {
            segments: tokens.zeros_like(),
            padding: tokens.clone().equal_elem(0),
            tokens,
            targets: Targets::Classification(Tensor::from_data(
                TensorData::from([1i64, 2]),
                device,
            )),
        }
    }

    fn rows(t: Tensor<2>) -> Vec<Vec<f64>> {
        let [_, width] = t.dims();
        let flat = t.into_data().convert::<f64>().try_to_vec::<f64>().unwrap();
        flat.chunks(width).map(<[f64]>::to_vec).collect()
    }

    /// The loss against its definition, computed here in f64 from the two models' logits and
    /// hidden states: beta * CE + alpha * T^2 * KL(teacher || student at T) + cosine * mean over
    /// real tokens of (1 - cos).
    #[test]
    fn the_distillation_loss_is_its_definition() {
        let device = Device::flex().autodiff();
        let (student, teacher_model) = (encoder(1, &device), encoder(2, &device));
        let spec = DistillationSpec {
            temperature: 3.0,
            alpha: 0.7,
            beta: 0.4,
            cosine: 0.9,
            init: StudentInit::Fresh,
        };
        let teacher = Teacher::new(teacher_model.clone(), &spec);
        let b = batch(&device);
        let got = teacher.loss(&student, b.clone()).loss.into_scalar::<f64>();

        let logits = |m: &BertModel| {
            m.task_logits(
                b.tokens.clone(),
                b.segments.clone(),
                b.padding.clone(),
                b.targets.clone(),
            )
        };
        let (ours, theirs) = (logits(&student), logits(&teacher_model));
        let log_softmax = |row: &[f64], t: f64| {
            let max = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = row.iter().map(|v| ((v - max) / t).exp()).sum::<f64>().ln();
            row.iter()
                .map(|v| (v - max) / t - lse)
                .collect::<Vec<f64>>()
        };
        let labels = [1usize, 2];
        let (s, t) = (rows(ours.logits), rows(theirs.logits));
        let mut hard = 0.0;
        let mut kl = 0.0;
        for i in 0..2 {
            hard -= log_softmax(&s[i], 1.0)[labels[i]] / 2.0;
            let (q, p) = (log_softmax(&s[i], 3.0), log_softmax(&t[i], 3.0));
            kl += (0..3).map(|c| p[c].exp() * (p[c] - q[c])).sum::<f64>() / 2.0;
        }
        let flat = |h: Tensor<3>| rows(h.reshape([10, 16]));
        let (hs, ht) = (flat(ours.hidden), flat(theirs.hidden));
        // The padded position is the first sequence's last.
        let real: Vec<usize> = (0..10).filter(|&i| i != 4).collect();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let cosine = real
            .iter()
            .map(|&i| {
                1.0 - dot(&hs[i], &ht[i]) / (dot(&hs[i], &hs[i]) * dot(&ht[i], &ht[i])).sqrt()
            })
            .sum::<f64>()
            / real.len() as f64;
        let expected = 0.4 * hard + 0.7 * 9.0 * kl + 0.9 * cosine;
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    }

    /// Temperature 1, no soft loss and no cosine: the task's own loss, bit for bit, and the
    /// same gradients.
    #[test]
    fn without_the_teacher_terms_it_is_plain_training() {
        let device = Device::flex().autodiff();
        let student = encoder(1, &device);
        let spec = DistillationSpec {
            temperature: 1.0,
            alpha: 0.0,
            beta: 1.0,
            cosine: 0.0,
            init: StudentInit::Fresh,
        };
        let teacher = Teacher::new(encoder(2, &device), &spec);
        let b = batch(&device);
        let distilled = teacher.loss(&student, b.clone()).loss;
        let plain = student
            .loss(b.tokens, b.segments, b.padding, b.targets)
            .loss;
        let value = |t: &Tensor<1>| t.clone().into_scalar::<f64>();
        assert_eq!(value(&distilled), value(&plain));
        let grad = |loss: Tensor<1>| {
            let grads = loss.backward();
            let weight = student.encoder.pooler.weight.val();
            weight.grad(&grads).unwrap().into_data()
        };
        assert_eq!(grad(distilled), grad(plain));
    }
}
