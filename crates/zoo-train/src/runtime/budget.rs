//! Budget arithmetic: how many optimiser steps a recipe buys (in steps, passes, tokens or FLOPs),
//! how they fall into burn-train epochs (one validation each), and what one invocation of a run
//! does when it starts fresh, resumes or stops early.

use crate::ZooError;
use crate::recipe::Recipe;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Budget arithmetic: how many optimiser steps and burn-train epochs a recipe asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Optimiser steps in the whole run.
    pub total_steps: usize,
    /// Optimiser steps per burn-train epoch (one validation each).
    pub steps_per_epoch: usize,
}

/// What one optimiser step of a run costs: the unit a token or FLOPs budget is counted in.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepCost {
    /// Training tokens per optimiser step: exact for language models (batch x window x
    /// micro-batches), the mean example's tokens times the batch for encoders, its target tokens
    /// for encoder-decoders.
    pub tokens: f64,
    /// The model's training FLOPs per token (6 per weight of every matrix product, plus
    /// attention's scores).
    pub flops_per_token: f64,
}

impl StepCost {
    /// Training FLOPs per optimiser step.
    pub fn flops(&self) -> f64 {
        self.tokens * self.flops_per_token
    }
}

impl Budget {
    /// The budget of `recipe` when one pass over the training data takes `steps_per_pass`
    /// optimiser steps and each step costs `cost`. A token or FLOPs budget buys as many whole
    /// steps as fit in it (so a run stops less than one step short of its budget); one that
    /// does not buy a single step is an error.
    pub fn of(recipe: &Recipe, steps_per_pass: usize, cost: StepCost) -> Result<Self, String> {
        let t = &recipe.training;
        let fit = |budget: f64, per_step: f64, key: &str| {
            let steps = (budget / per_step).floor();
            if steps < 1.0 {
                return Err(format!(
                    "training.{key} = {budget:e} buys no step: one step costs {per_step:e}"
                ));
            }
            Ok(steps as usize)
        };
        let total_steps = match (t.steps, t.epochs, t.tokens, t.flops) {
            (Some(steps), ..) => steps,
            (_, Some(epochs), ..) => epochs * steps_per_pass.max(1),
            (_, _, Some(tokens), _) => fit(tokens, cost.tokens, "tokens")?,
            (_, _, _, Some(flops)) => fit(flops, cost.flops(), "flops")?,
            (None, None, None, None) => unreachable!("validated recipes have a budget"),
        };
        Ok(Self {
            total_steps,
            steps_per_epoch: t.eval_interval.min(total_steps),
        })
    }

    /// Optimiser steps done when burn-train epoch `epoch` ends (the last may be short).
    pub fn steps_at_epoch(&self, epoch: usize) -> usize {
        (epoch * self.steps_per_epoch).min(self.total_steps)
    }
}

/// What this invocation of a run does.
pub struct Plan {
    /// The step it stops at.
    pub total_steps: usize,
    /// The burn-train epochs up to there.
    pub epochs: usize,
    /// Epochs done before it starts (a resumed run's checkpoint).
    pub start_epoch: usize,
}

impl Budget {
    /// The plan of a run that stops after `stop_after` steps (at the end of the evaluation
    /// interval that step falls in, or at the budget) and resumes from `resume_epoch`. A run
    /// that has nothing left to do is an error, unless it was stopped (killed) between its last
    /// checkpoint and its summary (`summarised` false): then the plan trains nothing and the
    /// run is finished. `ended_early`: early stopping has ended the run at `resume_epoch`.
    pub fn plan(
        &self,
        stop_after: Option<usize>,
        resume_epoch: Option<usize>,
        summarised: bool,
        ended_early: bool,
        run_dir: &Path,
    ) -> Result<Plan, ZooError> {
        let start_epoch = resume_epoch.unwrap_or(0);
        // A stop inside an evaluation interval moves to its end: checkpoints are taken where
        // intervals end, and one there resumes exactly as if the run had never stopped.
        let total_steps = match stop_after {
            _ if ended_early => self.steps_at_epoch(start_epoch),
            Some(s) => s
                .next_multiple_of(self.steps_per_epoch)
                .min(self.total_steps),
            None => self.total_steps,
        };
        let epochs = total_steps.div_ceil(self.steps_per_epoch);
        let only_summary_left = start_epoch == epochs
            && (total_steps == self.total_steps || ended_early)
            && !summarised;
        if start_epoch >= epochs && !only_summary_left {
            return Err(ZooError::run_dir(
                run_dir,
                format!(
                    "is already complete ({} steps)",
                    self.steps_at_epoch(start_epoch)
                ),
            ));
        }
        Ok(Plan {
            total_steps,
            epochs,
            start_epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(budget: &str) -> Recipe {
        Recipe::parse(&format!(
            "[model]\npreset = \"gpt-nano\"\n[tokenizer]\nkind = \"char\"\n[data]\ndataset = \"embedded\"\n[training]\nbatch_size = 4\neval_interval = 10\n{budget}\n"
        ))
        .unwrap()
    }

    #[test]
    fn token_and_flops_budgets_buy_the_whole_steps_that_fit() {
        let cost = StepCost {
            tokens: 1000.0,
            flops_per_token: 3.0,
        };
        // 3,000 FLOPs per step: 10,000 buys 3 steps (9,000), not 4.
        let b = Budget::of(&recipe("flops = 1e4"), 0, cost).unwrap();
        assert_eq!((b.total_steps, b.steps_per_epoch), (3, 3));
        let b = Budget::of(&recipe("flops = 3e4"), 0, cost).unwrap();
        assert_eq!(b.total_steps, 10);
        let b = Budget::of(&recipe("tokens = 25999"), 0, cost).unwrap();
        assert_eq!((b.total_steps, b.steps_per_epoch), (25, 10));
        assert_eq!((b.steps_at_epoch(2), b.steps_at_epoch(3)), (20, 25));
        let e = Budget::of(&recipe("flops = 2999"), 0, cost).unwrap_err();
        assert!(
            e.contains("training.flops") && e.contains("buys no step"),
            "{e}"
        );
        let b = Budget::of(&recipe("epochs = 2"), 7, cost).unwrap();
        assert_eq!(b.total_steps, 14);
    }
}
