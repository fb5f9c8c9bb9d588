//! `summary.json`: what a finished run cost — parameters, FLOPs, tokens, time, memory. Written
//! once, when a run reaches the end of its budget; `zoo compare` reads it, and its presence is
//! what marks a run finished.

use crate::ZooError;
use crate::recipe::Recipe;
use crate::runtime::budget::StepCost;
use crate::runtime::early_stop::EarlyStop;
use crate::runtime::run_dir::{read_metrics, write_run_file};
use serde::{Deserialize, Serialize};
use std::path::Path;
use zoo_blocks::ModelSize;

/// The file in a run directory.
pub const SUMMARY_FILE: &str = "summary.json";

/// What a finished run cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run's name.
    pub name: String,
    /// Its task (`causal-lm`, `classification`, `translation`, ...).
    pub task: String,
    /// Its architecture (`gpt`, `rnn`, `bert`, `transformer`, ...).
    pub arch: String,
    /// Every parameter.
    pub params: usize,
    /// Parameters outside the token (and position) embeddings.
    pub non_embedding_params: usize,
    /// Training FLOPs per token.
    pub flops_per_token: f64,
    /// Training tokens per optimiser step.
    pub tokens_per_step: f64,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Training tokens seen: steps x tokens per step.
    pub tokens: f64,
    /// Training FLOPs spent: tokens x FLOPs per token.
    pub flops: f64,
    /// Seconds spent in training steps, validations excluded, over every invocation.
    pub train_seconds: f64,
    /// Seconds from the first step to the last validation, over every invocation.
    pub wall_seconds: f64,
    /// Training tokens per second of training.
    pub tokens_per_second: f64,
    /// Peak resident memory of the invocation that finished the run (Linux only).
    pub peak_rss_bytes: Option<u64>,
    /// Where early stopping ended the run, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stop: Option<EarlyStop>,
}

impl RunSummary {
    /// The summary of a run that has taken `steps` steps of `cost`, its times read from its
    /// metrics log.
    pub fn new(
        recipe: &Recipe,
        size: ModelSize,
        cost: StepCost,
        steps: usize,
        run_dir: &Path,
    ) -> Self {
        let (train_seconds, wall_seconds) = training_seconds(run_dir);
        let tokens = cost.tokens * steps as f64;
        Self {
            name: recipe.name().to_string(),
            task: recipe.task.name().to_string(),
            arch: recipe.model.arch.clone(),
            params: size.total,
            non_embedding_params: size.non_embedding,
            flops_per_token: cost.flops_per_token,
            tokens_per_step: cost.tokens,
            steps,
            tokens,
            flops: tokens * cost.flops_per_token,
            train_seconds,
            wall_seconds,
            tokens_per_second: if train_seconds > 0.0 {
                tokens / train_seconds
            } else {
                0.0
            },
            peak_rss_bytes: peak_rss_bytes(),
            early_stop: None,
        }
    }

    /// Writes `summary.json` into the run directory and prints its figures.
    pub fn save(&self, run_dir: &Path) -> Result<(), ZooError> {
        let path = run_dir.join(SUMMARY_FILE);
        let text = serde_json::to_string_pretty(self).expect("summaries serialise");
        write_run_file(&path, (text + "\n").as_bytes())?;
        println!(
            "finished {} steps: {:.3e} tokens, {:.3e} training FLOPs, {:.0} tokens/s, {:.0} s training ({:.0} s with validation){}",
            self.steps,
            self.tokens,
            self.flops,
            self.tokens_per_second,
            self.train_seconds,
            self.wall_seconds,
            self.peak_rss_bytes
                .map(|b| format!(", peak memory {:.0} MiB", b as f64 / (1 << 20) as f64))
                .unwrap_or_default()
        );
        Ok(())
    }

    /// The summary of a finished run, or `None` if the run has not finished.
    pub fn load(run_dir: &Path) -> Result<Option<Self>, ZooError> {
        let path = run_dir.join(SUMMARY_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ZooError::io(&path, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ZooError::RunDir {
                path: run_dir.to_path_buf(),
                message: format!(
                    "{SUMMARY_FILE} cannot be read ({e}); delete it to redo the summary"
                ),
            })
    }
}

/// Seconds of training steps and seconds to the last validation, from the metrics log: epoch
/// E's training took from the end of epoch E-1's validation to its own training line.
fn training_seconds(run_dir: &Path) -> (f64, f64) {
    let mut train = 0.0;
    let mut validated_at = 0.0;
    for line in read_metrics(run_dir) {
        let Some(elapsed) = line["elapsed_s"].as_f64() else {
            continue;
        };
        match line["split"].as_str() {
            Some("train") => train += elapsed - validated_at,
            Some("valid") => validated_at = elapsed,
            _ => {}
        }
    }
    (train, validated_at)
}

/// The process's peak resident memory (`VmHWM`), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// The process's resident memory now (`VmRSS`), where the OS reports it.
pub fn rss_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|kib| kib * 1024)
}

/// Resets the peak resident memory to the current one (Linux's `clear_refs`), so a later
/// [`peak_rss_bytes`] measures what came after; false where that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}
