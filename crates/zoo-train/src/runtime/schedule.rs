//! Learning-rate schedules, as a burn `LrScheduler` so that burn-train steps them and saves
//! their position in checkpoints, and annealing on a plateau of the validation loss.

use crate::recipe::{ScheduleKind, ScheduleSpec};
use burn::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::optim::LearningRate;
use std::sync::{Arc, Mutex};

/// "Divide the learning rate by `divisor` whenever a validation loss is no better than the best
/// so far" (Zaremba et al.; PyTorch's word-language-model example divides by 4). The metrics
/// logger reports each validation loss; the schedule multiplies its rate by `scale`.
#[derive(Clone, Debug)]
pub struct Plateau {
    divisor: f64,
    best: f64,
    scale: f64,
}

impl Plateau {
    /// Annealing by `divisor` (greater than 1).
    pub fn new(divisor: f64) -> Self {
        Self {
            divisor,
            best: f64::INFINITY,
            scale: 1.0,
        }
    }

    /// Takes in one validation loss.
    pub fn observe(&mut self, loss: f64) {
        if loss < self.best {
            self.best = loss;
        } else {
            self.scale /= self.divisor;
        }
    }

    /// What the schedule's rate is multiplied by now.
    pub fn scale(&self) -> f64 {
        self.scale
    }
}

/// A plateau shared by the metrics logger (which observes) and the schedule (which reads).
pub type SharedPlateau = Arc<Mutex<Plateau>>;

/// A schedule and how far along it is.
#[derive(Clone, Debug)]
pub struct LrSchedule {
    kind: ScheduleKind,
    lr: f64,
    min_lr: f64,
    warmup_steps: usize,
    decay_steps: usize,
    model_size: usize,
    /// Optimiser steps taken so far.
    step: usize,
    /// Annealing on a validation plateau, if the recipe asks for it.
    plateau: Option<SharedPlateau>,
}

impl LrSchedule {
    /// The schedule `spec` describes, for a peak rate `lr`, a run of `total_steps` optimiser
    /// steps and a model `model_size` wide (for Noam).
    pub fn new(spec: &ScheduleSpec, lr: f64, total_steps: usize, model_size: usize) -> Self {
        Self {
            kind: spec.kind,
            lr,
            min_lr: spec.min_lr.unwrap_or(lr / 10.0),
            warmup_steps: spec.warmup_steps,
            decay_steps: spec.decay_steps.unwrap_or(total_steps),
            model_size,
            step: 0,
            plateau: None,
        }
    }

    /// The same schedule, its rate scaled by `plateau`.
    pub fn with_plateau(self, plateau: SharedPlateau) -> Self {
        Self {
            plateau: Some(plateau),
            ..self
        }
    }

    /// The rate of optimiser step `it` (counting from 0), nanoGPT's `get_lr`.
    pub fn lr_at(&self, it: usize) -> f64 {
        let warmup = self.warmup_steps;
        match self.kind {
            ScheduleKind::Constant => {
                if it < warmup {
                    self.lr * (it + 1) as f64 / (warmup + 1) as f64
                } else {
                    self.lr
                }
            }
            ScheduleKind::WarmupCosine => {
                if it < warmup {
                    self.lr * (it + 1) as f64 / (warmup + 1) as f64
                } else if it >= self.decay_steps {
                    self.min_lr
                } else {
                    let progress = (it - warmup) as f64 / (self.decay_steps - warmup).max(1) as f64;
                    let coefficient = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                    self.min_lr + coefficient * (self.lr - self.min_lr)
                }
            }
            ScheduleKind::Noam => {
                let step = (it + 1) as f64;
                let warmup = warmup.max(1) as f64;
                self.lr
                    * (self.model_size as f64).powf(-0.5)
                    * (step.powf(-0.5)).min(step * warmup.powf(-1.5))
            }
        }
    }
}

impl LrScheduler for LrSchedule {
    fn step(&mut self) -> LearningRate {
        let scale = self
            .plateau
            .as_ref()
            .map_or(1.0, |p| p.lock().expect("plateau lock").scale());
        let lr = self.lr_at(self.step) * scale;
        self.step += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("step", self.step as u64)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(step) = record.scalar::<u64>("step") {
            self.step = step as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: ScheduleKind, warmup: usize) -> LrSchedule {
        let spec = ScheduleSpec {
            kind,
            warmup_steps: warmup,
            min_lr: Some(1e-4),
            decay_steps: None,
            plateau_divisor: None,
        };
        LrSchedule::new(&spec, 1e-3, 100, 64)
    }

    #[test]
    fn warmup_cosine_matches_nanogpt() {
        let s = schedule(ScheduleKind::WarmupCosine, 10);
        assert!((s.lr_at(0) - 1e-3 / 11.0).abs() < 1e-12);
        assert!((s.lr_at(10) - 1e-3).abs() < 1e-12);
        // Halfway through the decay the cosine is at its midpoint.
        assert!((s.lr_at(55) - (1e-4 + 0.5 * 9e-4)).abs() < 1e-12);
        assert!((s.lr_at(100) - 1e-4).abs() < 1e-12);
        assert!((s.lr_at(500) - 1e-4).abs() < 1e-12);
        assert!((0..99).all(|i| i < 10 || s.lr_at(i + 1) <= s.lr_at(i)));
    }

    #[test]
    fn noam_peaks_at_the_end_of_warmup() {
        let s = schedule(ScheduleKind::Noam, 20);
        let peak = (0..100)
            .max_by(|&a, &b| s.lr_at(a).total_cmp(&s.lr_at(b)))
            .unwrap();
        assert_eq!(peak, 19);
        assert!((s.lr_at(19) - 1e-3 / 8.0 / 20f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn constant_stays_put_after_warmup() {
        let s = schedule(ScheduleKind::Constant, 0);
        assert!((0..50).all(|i| s.lr_at(i) == 1e-3));
    }

    #[test]
    fn the_position_survives_a_checkpoint() {
        let mut a = schedule(ScheduleKind::WarmupCosine, 10);
        for _ in 0..37 {
            a.step();
        }
        let mut b = schedule(ScheduleKind::WarmupCosine, 10);
        b.load_record(a.to_record());
        assert_eq!(a.step(), b.step());
    }

    #[test]
    fn a_plateau_divides_the_rate_each_time_validation_does_not_improve() {
        let plateau: SharedPlateau = Arc::new(Mutex::new(Plateau::new(4.0)));
        let mut s = schedule(ScheduleKind::Constant, 0).with_plateau(plateau.clone());
        assert_eq!(s.step(), 1e-3);
        for loss in [5.0, 4.0, 4.5, 3.9, 3.9] {
            plateau.lock().unwrap().observe(loss);
        }
        // 4.5 and the second 3.9 did not improve on the best: two divisions by 4.
        assert!((s.step() - 1e-3 / 16.0).abs() < 1e-15);
    }
}
