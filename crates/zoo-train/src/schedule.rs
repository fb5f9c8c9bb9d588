//! Learning-rate schedules, as a burn `LrScheduler` so that burn-train steps them and saves
//! their position in checkpoints.

use crate::recipe::{ScheduleKind, ScheduleSpec};
use burn::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::optim::LearningRate;

/// A schedule and how far along it is.
#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    kind: ScheduleKind,
    lr: f64,
    min_lr: f64,
    warmup_steps: usize,
    decay_steps: usize,
    model_size: usize,
    /// Optimiser steps taken so far.
    step: usize,
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
        let lr = self.lr_at(self.step);
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
}
