//! `zoo compare`: train a set of recipes on one shared budget and report them side by side.
//!
//! ```toml
//! name = "positions"                       # default: the file's stem
//! base = "../gpt/shakespeare-char.toml"    # paths are relative to this file
//! seed = 1337                              # every run's seed (default: each recipe's)
//!
//! [budget]                                 # exactly one of:
//! flops = 2e14                             # steps | tokens | flops | seconds
//!
//! [set]                                    # overrides applied to every run
//! "training.eval_interval" = 100
//!
//! [vary]                                   # one run per value (several keys: every combination)
//! "model.position" = ["learned", "sinusoidal", "rope", "alibi"]
//!
//! [[run]]                                  # or (and) runs named one by one
//! name = "lstm"
//! recipe = "../rnn/tinyshakespeare-char-lstm.toml"   # default: base
//! set = { "model.d_hidden" = 256 }
//!
//! [[prepare]]                              # trained first on their own recipe's budget and
//! name = "mlm"                             # not compared: runs refer to them as "{runs}/mlm"
//! recipe = "../bert/mlm-tiny.toml"
//! ```
//!
//! Each run's recipe is written as `DIR/recipes/NAME.toml` (the base with its overrides and the
//! budget: `training.tokens`/`flops`, or for `steps` and `seconds` a step count) and trained by
//! a child `zoo train` into `DIR/NAME`, so each run has its own process, peak memory and
//! directory, and the command in the report repeats it exactly. A seconds budget is turned into
//! steps by timing a short probe of each run first (steps = seconds / measured seconds per step,
//! validation not counted). A run whose `summary.json` exists has finished and is skipped; one
//! with checkpoints is resumed. `DIR` is `runs/compare/NAME` unless given.
//!
//! The report (`report.md`, `report.json`, three SVG plots) compares the runs on their task's
//! validation metric: loss and perplexity for language models, accuracy for classification and
//! masked-LM, BLEU (decoded at the end) for translation, beside each run's cost.

use crate::ZooError;
use crate::launcher::Launcher;
use crate::plot::{Axis, Legend, Plot, Series};
use crate::recipe::{Recipe, Task};
use crate::runtime::run_dir::{checkpoint_epochs, read_metrics, write_run_file};
use crate::runtime::summary::RunSummary;
use crate::tasks::seq2seq::decode::SCORES_FILE;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A comparison file as written.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ComparisonFile {
    name: Option<String>,
    /// One line on what the comparison asks, printed atop the report.
    description: Option<String>,
    base: Option<PathBuf>,
    seed: Option<u64>,
    budget: BudgetFile,
    #[serde(default)]
    set: toml::Table,
    /// Keys removed from every run's recipe (e.g. a `schedule.decay_steps` fixed for the
    /// recipe's own budget).
    #[serde(default)]
    unset: Vec<String>,
    #[serde(default)]
    vary: toml::Table,
    #[serde(default)]
    run: Vec<RunEntry>,
    #[serde(default)]
    prepare: Vec<RunEntry>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct BudgetFile {
    steps: Option<usize>,
    tokens: Option<f64>,
    flops: Option<f64>,
    seconds: Option<f64>,
    /// Seconds budgets: steps timed per probe (twice: the first epoch warms up).
    #[serde(default = "default_probe_steps")]
    probe_steps: usize,
}

fn default_probe_steps() -> usize {
    10
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RunEntry {
    name: String,
    recipe: Option<PathBuf>,
    #[serde(default)]
    set: toml::Table,
    #[serde(default)]
    unset: Vec<String>,
}

/// The budget every compared run gets.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompareBudget {
    /// Optimiser steps.
    Steps(usize),
    /// Training tokens.
    Tokens(f64),
    /// Training FLOPs.
    Flops(f64),
    /// Seconds of training (validation not counted), turned into steps by a probe.
    Seconds(f64),
}

impl std::fmt::Display for CompareBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CompareBudget::Steps(n) => write!(f, "{n} steps"),
            CompareBudget::Tokens(n) => write!(f, "{n:.3e} training tokens"),
            CompareBudget::Flops(n) => write!(f, "{n:.3e} training FLOPs"),
            CompareBudget::Seconds(n) => write!(f, "{n} s of training"),
        }
    }
}

/// One run of a comparison: its name and the recipe it trains.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    /// The run's name (its directory under the comparison's).
    pub name: String,
    /// The recipe it starts from.
    pub base: PathBuf,
    /// Dotted keys removed from the recipe first.
    pub removed: Vec<String>,
    /// Its overrides, as dotted keys, in the order they are applied.
    pub overrides: Vec<(String, toml::Value)>,
    /// Trained first and not compared.
    pub prepare: bool,
}

/// A parsed comparison.
#[derive(Debug)]
pub struct Comparison {
    /// Its name.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// What it asks.
    pub description: Option<String>,
    /// The shared budget.
    pub budget: CompareBudget,
    probe_steps: usize,
    /// Runs to prepare, then runs to compare.
    pub runs: Vec<PlannedRun>,
}

/// Options of `zoo compare`.
#[derive(Clone, Debug, Default)]
pub struct CompareOptions {
    /// The comparison's directory (default `runs/compare/NAME`).
    pub out_dir: Option<PathBuf>,
    /// Write the report from the runs already finished, training nothing.
    pub report_only: bool,
}

impl Comparison {
    /// Reads and checks a comparison file.
    pub fn load(path: &Path) -> Result<Self, ZooError> {
        let error = |message: String| ZooError::Recipe {
            path: path.to_path_buf(),
            message,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| error(format!("cannot read it: {e}")))?;
        Self::parse(&text, path).map_err(error)
    }

    /// Parses and checks the text of the comparison file at `path` (which names it, and which
    /// its recipes are relative to; it is not read); the error names the key.
    pub fn parse(text: &str, path: &Path) -> Result<Self, String> {
        let here = path.parent().unwrap_or(Path::new("."));
        let file: ComparisonFile =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        let b = &file.budget;
        let budget = match (b.steps, b.tokens, b.flops, b.seconds) {
            (Some(n), None, None, None) if n > 0 => CompareBudget::Steps(n),
            (None, Some(n), None, None) if n >= 1.0 => CompareBudget::Tokens(n),
            (None, None, Some(n), None) if n >= 1.0 => CompareBudget::Flops(n),
            (None, None, None, Some(n)) if n > 0.0 => CompareBudget::Seconds(n),
            _ => {
                return Err(
                    "[budget] needs exactly one positive budget: steps, tokens, flops or seconds"
                        .into(),
                );
            }
        };
        if b.probe_steps == 0 {
            return Err("budget.probe_steps must be at least 1".into());
        }
        let base = file.base.as_ref().map(|b| here.join(b));
        let shared: Vec<(String, toml::Value)> = file.set.clone().into_iter().collect();
        let entry = |entry: &RunEntry, prepare: bool| -> Result<PlannedRun, String> {
            check_name(&entry.name)?;
            let recipe = match (&entry.recipe, &base) {
                (Some(recipe), _) => here.join(recipe),
                (None, Some(base)) => base.clone(),
                (None, None) => {
                    return Err(format!(
                        "run '{}' names no recipe and the file has no base",
                        entry.name
                    ));
                }
            };
            let mut overrides = if prepare { Vec::new() } else { shared.clone() };
            overrides.extend(entry.set.clone());
            let mut removed = if prepare {
                Vec::new()
            } else {
                file.unset.clone()
            };
            removed.extend(entry.unset.clone());
            Ok(PlannedRun {
                name: entry.name.clone(),
                base: recipe,
                removed,
                overrides,
                prepare,
            })
        };
        let mut runs = Vec::new();
        for e in &file.prepare {
            runs.push(entry(e, true)?);
        }
        for e in &file.run {
            runs.push(entry(e, false)?);
        }
        if !file.vary.is_empty() {
            let base = base
                .clone()
                .ok_or_else(|| "[vary] needs a base recipe".to_string())?;
            for combination in combinations(&file.vary)? {
                let name = combination
                    .iter()
                    .map(|(_, v)| value_name(v))
                    .collect::<Vec<_>>()
                    .join("-");
                check_name(&name).map_err(|e| format!("[vary]: {e}"))?;
                let mut overrides = shared.clone();
                overrides.extend(combination);
                runs.push(PlannedRun {
                    name,
                    base: base.clone(),
                    removed: file.unset.clone(),
                    overrides,
                    prepare: false,
                });
            }
        }
        if !runs.iter().any(|r| !r.prepare) {
            return Err("no runs to compare: give [[run]] entries or [vary]".into());
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = runs.iter().find(|r| !seen.insert(r.name.as_str())) {
            return Err(format!("two runs are named '{}'", dup.name));
        }
        if let Some(seed) = file.seed {
            for run in &mut runs {
                run.overrides
                    .push(("seed".into(), toml::Value::Integer(seed as i64)));
            }
        }
        Ok(Self {
            name: file.name.clone().unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "comparison".into())
            }),
            file: path.to_path_buf(),
            description: file.description,
            budget,
            probe_steps: b.probe_steps,
            runs,
        })
    }

    fn budget_is_seconds(&self) -> bool {
        matches!(self.budget, CompareBudget::Seconds(_))
    }

    /// The comparison's directory.
    pub fn out_dir(&self, options: &CompareOptions) -> PathBuf {
        options
            .out_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join("compare").join(&self.name))
    }

    /// The recipe text of `run`: its base with the overrides applied, named after the run and
    /// given `budget` (none for a prepared run, which keeps its own).
    pub fn recipe_text(
        &self,
        run: &PlannedRun,
        out_dir: &Path,
        steps: Option<usize>,
    ) -> Result<String, ZooError> {
        let error = |message: String| ZooError::Recipe {
            path: self.file.clone(),
            message: format!("run '{}': {message}", run.name),
        };
        let text = std::fs::read_to_string(&run.base)
            .map_err(|e| error(format!("cannot read {}: {e}", run.base.display())))?;
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| error(format!("{}: {e}", run.base.display())))?;
        let runs = out_dir.display().to_string();
        for key in &run.removed {
            remove_dotted(&mut table, key);
        }
        for (key, value) in &run.overrides {
            set_dotted(&mut table, key, substitute(value, &runs)).map_err(error)?;
        }
        table.insert("name".into(), run.name.clone().into());
        if !run.prepare {
            let training = table
                .entry("training")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| error("training is not a table".into()))?;
            for key in ["steps", "epochs", "tokens", "flops"] {
                training.remove(key);
            }
            let (key, value) = match (self.budget, steps) {
                (_, Some(steps)) => ("steps", toml::Value::Integer(steps as i64)),
                (CompareBudget::Steps(n), None) => ("steps", toml::Value::Integer(n as i64)),
                (CompareBudget::Tokens(n), None) => ("tokens", toml::Value::Float(n)),
                (CompareBudget::Flops(n), None) => ("flops", toml::Value::Float(n)),
                (CompareBudget::Seconds(_), None) => {
                    unreachable!("seconds budgets are probed into steps")
                }
            };
            training.insert(key.into(), value);
        }
        let overrides: Vec<String> = run
            .removed
            .iter()
            .map(|k| format!("{k} removed"))
            .chain(run.overrides.iter().map(|(k, v)| format!("{k} = {v}")))
            .collect();
        Ok(format!(
            "# Run '{}' of the comparison {}: {}{}\n{}",
            run.name,
            self.file.display(),
            run.base.display(),
            if overrides.is_empty() {
                String::new()
            } else {
                format!(" with {}", overrides.join(", "))
            },
            toml::to_string_pretty(&table).expect("TOML tables serialise")
        ))
    }
}

/// What `zoo compare` did.
#[derive(Debug)]
pub struct CompareReport {
    /// The comparison's directory.
    pub out_dir: PathBuf,
    /// Runs trained now.
    pub trained: Vec<String>,
    /// Runs skipped as finished before.
    pub skipped: Vec<String>,
    /// `report.md`.
    pub report: PathBuf,
}

/// Runs the comparison at `path` and writes its report.
pub fn compare(
    path: &Path,
    options: &CompareOptions,
    launcher: &Launcher,
) -> Result<CompareReport, ZooError> {
    let comparison = Comparison::load(path)?;
    let out_dir = comparison.out_dir(options);
    let recipes_dir = out_dir.join("recipes");
    std::fs::create_dir_all(&recipes_dir).map_err(|e| ZooError::io(&recipes_dir, e))?;
    let finished: Vec<bool> = comparison
        .runs
        .iter()
        .map(|run| Ok(RunSummary::load(&out_dir.join(&run.name))?.is_some()))
        .collect::<Result<_, ZooError>>()?;
    // Write and check every recipe before training anything, so a typo in the last run does
    // not surface an hour in.
    for (run, &finished) in comparison.runs.iter().zip(&finished) {
        if comparison.budget_is_seconds() && !run.prepare {
            // Checked with a stand-in step count; the real one comes from the probe.
            let text = comparison.recipe_text(run, &out_dir, Some(1))?;
            check_recipe(&comparison, run, &text)?;
        } else {
            let text = comparison.recipe_text(run, &out_dir, None)?;
            check_recipe(&comparison, run, &text)?;
            let recipe = recipes_dir.join(format!("{}.toml", run.name));
            // A finished run keeps the recipe it was trained with.
            if !(finished && recipe.is_file()) {
                write_file(&recipe, &text)?;
            }
        }
    }
    let mut trained = Vec::new();
    let mut skipped = Vec::new();
    for (run, finished) in comparison.runs.iter().zip(finished) {
        let run_dir = out_dir.join(&run.name);
        if finished {
            println!("== {}: finished before, skipped", run.name);
            skipped.push(run.name.clone());
            continue;
        }
        if options.report_only {
            continue;
        }
        let recipe = recipes_dir.join(format!("{}.toml", run.name));
        if comparison.budget_is_seconds() && !run.prepare && !recipe.is_file() {
            let steps = probe(&comparison, run, &out_dir, launcher)?;
            let text = comparison.recipe_text(run, &out_dir, Some(steps))?;
            write_file(&recipe, &text)?;
        }
        let resume = !checkpoint_epochs(&run_dir).is_empty();
        println!(
            "== {} ({}): {}",
            run.name,
            if resume { "resuming" } else { "training" },
            launcher.shown(&recipe, &run_dir)
        );
        run_child(launcher.train(&recipe, &run_dir, resume), &run.name)?;
        if RunSummary::load(&run_dir)?.is_none() {
            return Err(ZooError::RunDir {
                path: run_dir,
                message: format!("run '{}' ended without its summary", run.name),
            });
        }
        trained.push(run.name.clone());
    }
    let report = write_report(&comparison, &out_dir, launcher)?;
    Ok(CompareReport {
        out_dir,
        trained,
        skipped,
        report,
    })
}

fn check_recipe(comparison: &Comparison, run: &PlannedRun, text: &str) -> Result<(), ZooError> {
    Recipe::parse(text)
        .map(|_| ())
        .map_err(|message| ZooError::Recipe {
            path: comparison.file.clone(),
            message: format!("run '{}' ({}): {message}", run.name, run.base.display()),
        })
}

fn write_file(path: &Path, text: &str) -> Result<(), ZooError> {
    write_run_file(path, text.as_bytes())
}

fn run_child(mut command: Command, name: &str) -> Result<(), ZooError> {
    let status = command
        .status()
        .map_err(|e| ZooError::Training(format!("run '{name}': cannot start zoo train: {e}")))?;
    if !status.success() {
        return Err(ZooError::Training(format!(
            "run '{name}' failed ({status}); run zoo compare again to resume it"
        )));
    }
    Ok(())
}

/// Seconds per training step of `run`, timed by training it for two short epochs in a scratch
/// directory (the second epoch's training is timed: the first pays for warming up).
fn probe(
    comparison: &Comparison,
    run: &PlannedRun,
    out_dir: &Path,
    launcher: &Launcher,
) -> Result<usize, ZooError> {
    let CompareBudget::Seconds(seconds) = comparison.budget else {
        unreachable!("only seconds budgets are probed")
    };
    let k = comparison.probe_steps;
    let probe_dir = out_dir.join("probe").join(&run.name);
    if probe_dir.exists() {
        std::fs::remove_dir_all(&probe_dir).map_err(|e| ZooError::io(&probe_dir, e))?;
    }
    std::fs::create_dir_all(&probe_dir).map_err(|e| ZooError::io(&probe_dir, e))?;
    let mut probe_run = run.clone();
    probe_run.overrides.extend([
        (
            "training.eval_interval".to_string(),
            toml::Value::Integer(k as i64),
        ),
        ("training.eval_batches".to_string(), toml::Value::Integer(1)),
        ("sample.tokens".to_string(), toml::Value::Integer(0)),
    ]);
    let text = comparison.recipe_text(&probe_run, out_dir, Some(2 * k))?;
    let recipe = probe_dir.join("recipe-probe.toml");
    write_file(&recipe, &text)?;
    let run_dir = probe_dir.join("run");
    println!("== {}: timing {} steps to fit {seconds} s", run.name, 2 * k);
    run_child(launcher.train(&recipe, &run_dir, false), &run.name)?;
    let lines = read_metrics(&run_dir);
    let at = |epoch: u64, split: &str| {
        lines
            .iter()
            .find(|l| l["epoch"].as_u64() == Some(epoch) && l["split"] == split)
            .and_then(|l| l["elapsed_s"].as_f64())
    };
    let per_step = match (at(1, "valid"), at(2, "train")) {
        (Some(start), Some(end)) if end > start => (end - start) / k as f64,
        _ => {
            return Err(ZooError::RunDir {
                path: run_dir,
                message: "the probe's metrics log lacks its two epochs".into(),
            });
        }
    };
    let steps = ((seconds / per_step).floor() as usize).max(1);
    println!(
        "== {}: {:.1} ms per step -> {steps} steps",
        run.name,
        per_step * 1e3
    );
    std::fs::remove_dir_all(&probe_dir).map_err(|e| ZooError::io(&probe_dir, e))?;
    Ok(steps)
}

/// The metric a task's runs are compared on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MetricSpec {
    /// Its key in the metrics log (or in `scores.jsonl` for BLEU).
    pub key: &'static str,
    /// How the report names it, with its unit.
    pub label: &'static str,
    /// Whether larger is better.
    pub higher_is_better: bool,
}

/// The headline metric of a task and the validation curve it is plotted from.
fn metrics_of(task: Task) -> (MetricSpec, MetricSpec) {
    let loss = MetricSpec {
        key: "loss",
        label: "validation loss (nats/token)",
        higher_is_better: false,
    };
    let accuracy = MetricSpec {
        key: "accuracy",
        label: "validation accuracy (%)",
        higher_is_better: true,
    };
    match task {
        Task::CausalLm | Task::SpanCorruption => (loss, loss),
        Task::MaskedLm
        | Task::Classification
        | Task::TokenClassification
        | Task::SpanQa
        | Task::Distillation => (accuracy, accuracy),
        // BLEU is decoded once, at the end of training; the curve is the validation loss.
        Task::Translation => (
            MetricSpec {
                key: "bleu",
                label: "validation BLEU",
                higher_is_better: true,
            },
            loss,
        ),
    }
}

/// One compared run in the report.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// Its name.
    pub name: String,
    /// The command that repeats it.
    pub command: String,
    /// Its recipe as trained.
    pub recipe: PathBuf,
    /// Its directory.
    pub run_dir: PathBuf,
    /// What it cost.
    pub summary: RunSummary,
    /// The validation curve: `(step, seconds, training FLOPs, value)` of the curve metric.
    pub curve: Vec<CurvePoint>,
    /// The best and the final value of the headline metric.
    pub best: Option<f64>,
    /// See `best`.
    pub final_value: Option<f64>,
}

/// One validation.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CurvePoint {
    /// Optimiser steps.
    pub step: usize,
    /// Seconds since the run started (validations included).
    pub seconds: f64,
    /// Training FLOPs spent.
    pub flops: f64,
    /// The curve metric.
    pub value: f64,
}

fn run_result(
    run: &PlannedRun,
    out_dir: &Path,
    launcher: &Launcher,
    metric: MetricSpec,
    curve_metric: MetricSpec,
) -> Result<Option<RunResult>, ZooError> {
    let run_dir = out_dir.join(&run.name);
    let Some(summary) = RunSummary::load(&run_dir)? else {
        return Ok(None);
    };
    let flops_per_step = summary.flops_per_token * summary.tokens_per_step;
    // The log holds each validation once (a resumed run's log drops what it redoes).
    let curve: Vec<CurvePoint> = read_metrics(&run_dir)
        .iter()
        .filter(|line| line["split"] == "valid")
        .filter_map(|line| {
            let step = line["step"].as_u64()? as usize;
            Some(CurvePoint {
                step,
                seconds: line["elapsed_s"].as_f64()?,
                flops: step as f64 * flops_per_step,
                value: line[curve_metric.key].as_f64()?,
            })
        })
        .collect();
    let recipe = out_dir.join("recipes").join(format!("{}.toml", run.name));
    let (best, final_value) = if metric.key == "bleu" {
        let bleu = final_bleu(&run_dir, &Recipe::load(&recipe)?);
        (bleu, bleu)
    } else {
        let values = curve.iter().map(|p| p.value);
        let best = if metric.higher_is_better {
            values.fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.max(v))))
        } else {
            values.fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.min(v))))
        };
        (best, curve.last().map(|p| p.value))
    };
    Ok(Some(RunResult {
        name: run.name.clone(),
        command: launcher.shown(&recipe, &run_dir),
        recipe,
        run_dir,
        summary,
        curve,
        best,
        final_value,
    }))
}

/// The BLEU the run's end-of-training decoding gave on its validation split.
fn final_bleu(run_dir: &Path, recipe: &Recipe) -> Option<f64> {
    let text = std::fs::read_to_string(run_dir.join(SCORES_FILE)).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|l| l["split"] == recipe.data.val_split.as_str())
        .and_then(|l| l["bleu"].as_f64())
}

/// Everything the report says, as `report.json` holds it.
#[derive(Debug, Serialize)]
struct ReportData<'a> {
    comparison: &'a str,
    file: &'a Path,
    description: Option<&'a str>,
    budget: CompareBudget,
    metric: MetricSpec,
    curve_metric: MetricSpec,
    prepared: Vec<RunResult>,
    runs: Vec<RunResult>,
    plots: Vec<String>,
    compare_command: String,
}

const PLOT_FILES: [&str; 3] = [
    "metric-vs-step.svg",
    "metric-vs-time.svg",
    "metric-vs-flops.svg",
];

/// Writes `report.md`, `report.json` and the plots for the finished runs; returns the path of
/// `report.md`.
fn write_report(
    comparison: &Comparison,
    out_dir: &Path,
    launcher: &Launcher,
) -> Result<PathBuf, ZooError> {
    let compared: Vec<&PlannedRun> = comparison.runs.iter().filter(|r| !r.prepare).collect();
    let first_recipe = out_dir
        .join("recipes")
        .join(format!("{}.toml", compared[0].name));
    let task = Recipe::load(&first_recipe)?.task;
    let (metric, curve_metric) = metrics_of(task);
    let mut runs = Vec::new();
    let mut prepared = Vec::new();
    for run in &comparison.runs {
        let result = run_result(run, out_dir, launcher, metric, curve_metric)?;
        match (result, run.prepare) {
            (Some(result), true) => prepared.push(result),
            (Some(result), false) => runs.push(result),
            (None, _) => println!("== {}: not finished, left out of the report", run.name),
        }
    }
    let plots = draw_plots(comparison, &runs, curve_metric, out_dir)?;
    let data = ReportData {
        comparison: &comparison.name,
        file: &comparison.file,
        description: comparison.description.as_deref(),
        budget: comparison.budget,
        metric,
        curve_metric,
        prepared,
        runs,
        plots,
        compare_command: launcher.shown_compare(&comparison.file, out_dir),
    };
    let json_path = out_dir.join("report.json");
    write_file(
        &json_path,
        &(serde_json::to_string_pretty(&data).expect("reports serialise") + "\n"),
    )?;
    let md_path = out_dir.join("report.md");
    let markdown = report_markdown(&data, task);
    write_file(&md_path, &markdown)?;
    println!("\n{markdown}");
    Ok(md_path)
}

fn draw_plots(
    comparison: &Comparison,
    runs: &[RunResult],
    curve_metric: MetricSpec,
    out_dir: &Path,
) -> Result<Vec<String>, ZooError> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let series = |x: fn(&CurvePoint) -> f64| -> Vec<Series> {
        runs.iter()
            .map(|r| Series {
                label: r.name.clone(),
                points: r.curve.iter().map(|p| (x(p), p.value)).collect(),
            })
            .collect()
    };
    let title = format!("{}: {}", comparison.name, curve_metric.label);
    let plots = [
        ("optimiser step", Axis::Linear, series(|p| p.step as f64)),
        (
            "wall time (s, validation included)",
            Axis::Linear,
            series(|p| p.seconds),
        ),
        ("training FLOPs", Axis::Scientific, series(|p| p.flops)),
    ];
    for ((x_label, x_axis, series), file) in plots.into_iter().zip(PLOT_FILES) {
        Plot {
            title: &title,
            x_label,
            y_label: curve_metric.label,
            x_axis,
            y_axis: Axis::Linear,
            legend: if curve_metric.higher_is_better {
                Legend::LowerRight
            } else {
                Legend::UpperRight
            },
        }
        .draw(&series, &out_dir.join(file))?;
    }
    Ok(PLOT_FILES.iter().map(|f| f.to_string()).collect())
}

fn report_markdown(data: &ReportData, task: Task) -> String {
    let mut md = format!("# Comparison: {}\n\n", data.comparison);
    if let Some(description) = data.description {
        md += &format!("{description}\n\n");
    }
    md += &format!(
        "From `{}`. Budget: **{}** per run. Metric: {} ({} is better).\n\n",
        data.file.display(),
        data.budget,
        data.metric.label,
        if data.metric.higher_is_better {
            "higher"
        } else {
            "lower"
        }
    );
    let language_model = task == Task::CausalLm;
    let pick = |values: Vec<Option<f64>>| -> Option<f64> {
        let values = values.into_iter().flatten();
        if data.metric.higher_is_better {
            values.reduce(f64::max)
        } else {
            values.reduce(f64::min)
        }
    };
    let best_of_best = pick(data.runs.iter().map(|r| r.best).collect());
    let best_of_final = pick(data.runs.iter().map(|r| r.final_value).collect());
    let mark = |value: Option<f64>, winner: Option<f64>, digits: usize| match value {
        Some(v) if Some(v) == winner => format!("**{v:.digits$}**"),
        Some(v) => format!("{v:.digits$}"),
        None => "-".into(),
    };
    md += "| run | params | non-embedding | FLOPs/token | steps | tokens | training FLOPs | tokens/s | peak RSS (MiB) | training (s) | wall (s) | best | final |";
    if language_model {
        md += " best ppl | final ppl |";
    }
    md += "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";
    if language_model {
        md += "---:|---:|";
    }
    md += "\n";
    for r in &data.runs {
        let s = &r.summary;
        md += &format!(
            "| {} | {} | {} | {:.3e} | {} | {:.3e} | {:.3e} | {:.0} | {} | {:.0} | {:.0} | {} | {} |",
            r.name,
            thousands(s.params),
            thousands(s.non_embedding_params),
            s.flops_per_token,
            s.steps,
            s.tokens,
            s.flops,
            s.tokens_per_second,
            s.peak_rss_bytes
                .map(|b| format!("{:.0}", b as f64 / (1 << 20) as f64))
                .unwrap_or_else(|| "-".into()),
            s.train_seconds,
            s.wall_seconds,
            mark(r.best, best_of_best, 4),
            mark(r.final_value, best_of_final, 4),
        );
        if language_model {
            let ppl = |v: Option<f64>| v.map(f64::exp);
            md += &format!(
                " {} | {} |",
                mark(ppl(r.best), best_of_best.map(f64::exp), 3),
                mark(ppl(r.final_value), best_of_final.map(f64::exp), 3)
            );
        }
        md += "\n";
    }
    md += "\nBest value of each column in bold. tokens/s counts training steps only; peak RSS is \
           the training process's; wall includes validation.\n";
    if !data.prepared.is_empty() {
        md += "\nPrepared first (own budgets, not compared):\n\n";
        for r in &data.prepared {
            md += &format!(
                "- {}: {} steps, {:.3e} training FLOPs, {:.0} s training\n",
                r.name, r.summary.steps, r.summary.flops, r.summary.train_seconds
            );
        }
    }
    if !data.plots.is_empty() {
        md += "\n## Plots\n\n";
        for plot in &data.plots {
            md += &format!("![{plot}]({plot})\n");
        }
    }
    md += "\n## Repeat\n\n```sh\n";
    for r in data.prepared.iter().chain(&data.runs) {
        md += &format!("{}\n", r.command);
    }
    md += &format!(
        "# or all of it, skipping finished runs:\n{}\n```\n",
        data.compare_command
    );
    md
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A run name usable as a directory name.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(format!(
            "run name '{name}' must be letters, digits, '-', '_' or '.' (it names a directory)"
        ));
    }
    Ok(())
}

/// Every combination of the `[vary]` values, the first key varying slowest.
fn combinations(vary: &toml::Table) -> Result<Vec<Vec<(String, toml::Value)>>, String> {
    let mut out: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
    for (key, values) in vary {
        let values = values
            .as_array()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("vary.\"{key}\" must be a non-empty list of values"))?;
        out = out
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut next = prefix.clone();
                    next.push((key.clone(), v.clone()));
                    next
                })
            })
            .collect();
    }
    Ok(out)
}

/// A value as a piece of a run name.
fn value_name(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `{runs}` in string values becomes the comparison's directory.
fn substitute(value: &toml::Value, runs: &str) -> toml::Value {
    match value {
        toml::Value::String(s) => toml::Value::String(s.replace("{runs}", runs)),
        other => other.clone(),
    }
}

/// Sets `a.b.c = value` in `table`, creating tables on the way.
fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    let (last, path) = parts.split_last().expect("split yields at least one part");
    let mut here = table;
    for part in path {
        here = here
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("cannot set {key}: {part} is not a table"))?;
    }
    here.insert(last.to_string(), value);
    Ok(())
}

/// Removes `a.b.c` from `table` if it is there.
fn remove_dotted(table: &mut toml::Table, key: &str) {
    let parts: Vec<&str> = key.split('.').collect();
    let (last, path) = parts.split_last().expect("split yields at least one part");
    let mut here = table;
    for part in path {
        match here.get_mut(*part).and_then(toml::Value::as_table_mut) {
            Some(next) => here = next,
            None => return,
        }
    }
    here.remove(*last);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/compare");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn every_shipped_comparison_plans_runs_whose_recipes_validate() {
        let files = shipped();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        for wanted in ["char-lm", "norms", "positions", "pretraining"] {
            assert!(
                names.iter().any(|n| n == wanted),
                "{wanted} missing from {names:?}"
            );
        }
        for file in files {
            let comparison = Comparison::load(&file).unwrap();
            let compared = comparison.runs.iter().filter(|r| !r.prepare).count();
            assert!(compared >= 2, "{}", file.display());
            for run in &comparison.runs {
                let steps = comparison.budget_is_seconds().then_some(1);
                let text = comparison
                    .recipe_text(run, Path::new("runs/compare/x"), steps)
                    .unwrap();
                check_recipe(&comparison, run, &text)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                let recipe = Recipe::parse(&text).unwrap();
                assert_eq!(recipe.name(), run.name);
                if !run.prepare {
                    let t = &recipe.training;
                    let budgets = [
                        t.steps.is_some(),
                        t.epochs.is_some(),
                        t.tokens.is_some(),
                        t.flops.is_some(),
                    ];
                    assert_eq!(budgets.iter().filter(|b| **b).count(), 1, "{text}");
                }
            }
        }
    }

    #[test]
    fn vary_makes_every_combination_named_by_its_values() {
        let vary: toml::Table = toml::from_str(
            "\"model.norm_placement\" = [\"pre\", \"post\"]\n\"schedule.warmup_steps\" = [0, 200]",
        )
        .unwrap();
        let names: Vec<String> = combinations(&vary)
            .unwrap()
            .iter()
            .map(|c| {
                c.iter()
                    .map(|(_, v)| value_name(v))
                    .collect::<Vec<_>>()
                    .join("-")
            })
            .collect();
        assert_eq!(names, ["pre-0", "pre-200", "post-0", "post-200"]);
        let empty: toml::Table = toml::from_str("\"model.position\" = []").unwrap();
        assert!(combinations(&empty).unwrap_err().contains("model.position"));
    }

    #[test]
    fn dotted_keys_set_and_remove_nested_values() {
        let mut table: toml::Table =
            toml::from_str("[schedule]\ndecay_steps = 5\nkind = \"constant\"").unwrap();
        remove_dotted(&mut table, "schedule.decay_steps");
        remove_dotted(&mut table, "nothing.here");
        set_dotted(&mut table, "training.steps", toml::Value::Integer(3)).unwrap();
        set_dotted(&mut table, "seed", toml::Value::Integer(9)).unwrap();
        assert_eq!(
            table,
            toml::from_str::<toml::Table>(
                "seed = 9\n[schedule]\nkind = \"constant\"\n[training]\nsteps = 3"
            )
            .unwrap()
        );
        assert!(set_dotted(&mut table, "seed.x", toml::Value::Integer(1)).is_err());
        assert_eq!(
            substitute(&toml::Value::String("{runs}/mlm".into()), "out/c"),
            toml::Value::String("out/c/mlm".into())
        );
    }
}
