//! End-to-end tests of runs that meet faults: killed at random moments and resumed, stopped by
//! a non-finite loss, resumed past a damaged checkpoint.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A GPT with dropout, two micro-batches per step, and gradient clipping.
const GPT: &str = r#"
seed = 7
[model]
preset = "gpt-nano"
n_layer = 2
block_size = 32
dropout = 0.1
[tokenizer]
kind = "char"
[data]
dataset = "embedded"
[optimizer]
lr = 3e-3
grad_clip = 0.5
[schedule]
kind = "warmup-cosine"
warmup_steps = 4
[training]
batch_size = 8
grad_accumulation = 2
steps = 120
eval_interval = 6
eval_batches = 2
"#;

/// An LSTM with dropout whose state carries from one window to the next.
const RNN: &str = r#"
seed = 7
[model]
arch = "rnn"
preset = "lstm-small"
d_hidden = 48
dropout = 0.2
[tokenizer]
kind = "char"
[data]
dataset = "embedded"
[optimizer]
kind = "sgd"
lr = 1.0
weight_decay = 0.0
grad_clip = 0.5
[training]
batch_size = 8
bptt = 16
steps = 240
eval_interval = 15
"#;

/// A BERT pretrained with masks, with dropout; the tokenizer is a file so that every run reads
/// the same one (WordPiece training breaks frequency ties in hash order).
const MLM: &str = r#"
seed = 11
task = "masked-lm"
[model]
arch = "bert"
preset = "bert-tiny"
n_layer = 2
d_model = 32
max_len = 128
dropout = 0.1
[tokenizer]
kind = "file"
path = "tokenizer.json"
[data]
dataset = "embedded"
[optimizer]
lr = 2e-3
[training]
batch_size = 16
steps = 100
eval_interval = 5
eval_batches = 2
seq_len = 32
"#;

/// The pretrained BERT fine-tuned to classify, with dropout.
const FINETUNE: &str = r#"
seed = 12
task = "classification"
init_from = "pretrained"
[model]
arch = "bert"
preset = "bert-tiny"
n_layer = 2
d_model = 32
max_len = 128
dropout = 0.1
[data]
dataset = "embedded-sums"
[optimizer]
lr = 2e-3
[training]
batch_size = 32
steps = 60
eval_interval = 4
seq_len = 32
"#;

/// A transformer encoder-decoder with dropout.
const SEQ2SEQ: &str = r#"
seed = 5
task = "translation"
[model]
arch = "transformer"
preset = "transformer-tiny"
max_len = 32
d_model = 32
d_ff = 48
dropout = 0.1
[tokenizer]
kind = "word"
vocab_size = 64
[data]
dataset = "synthetic-reverse"
[training]
batch_size = 16
steps = 160
eval_interval = 8
eval_batches = 2
seq_len = 16
"#;

/// Uniform numbers in [0, 1) from `state` (xorshift64*).
fn uniform(state: &mut u64) -> f64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

/// Trains `recipe` as run `run`, killing the process with SIGKILL up to four times, each at a
/// moment drawn from `seed` within the first `reach` of `duration` (how long an uninterrupted
/// run takes) after it started, resuming after each kill. When fewer than two kills land (the
/// machine got faster than when `duration` was measured), the run starts over with half the
/// reach. Then it is let finish. Returns how many kills landed before the run had finished.
fn train_with_kills(dir: &Path, recipe: &str, run: &str, duration: Duration, seed: u64) -> usize {
    let mut state = seed;
    let mut reach = 0.5;
    loop {
        let _ = std::fs::remove_dir_all(dir.join(run));
        let mut landed = 0;
        for attempt in 0..4 {
            let wait = duration.mul_f64(reach * (0.1 + 0.9 * uniform(&mut state)));
            let mut args = vec!["train", recipe, "--run-dir", run];
            if attempt > 0 {
                args.push("--resume");
            }
            let mut child = Command::new(env!("CARGO_BIN_EXE_zoo"))
                .args(&args)
                .current_dir(dir)
                .env("ZOO_OFFLINE", "1")
                .env_remove("BURN_DEVICE")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(wait);
            if child.try_wait().unwrap().is_some() {
                break;
            }
            child.kill().unwrap();
            child.wait().unwrap();
            landed += 1;
        }
        if landed >= 2 || reach < 0.05 {
            if !dir.join(run).join("summary.json").exists() {
                let finished = zoo(&["train", recipe, "--run-dir", run, "--resume"], dir);
                assert!(finished.status.success(), "{}", stderr(&finished));
            }
            return landed;
        }
        reach /= 2.0;
    }
}

/// Trains `recipe` uninterrupted and again under kills, and checks both end with the same
/// weights, bit for bit, and the same metrics log. Returns the kills that landed.
fn killed_run_matches(dir: &Path, recipe: &str, seed: u64) -> usize {
    let name = recipe.trim_end_matches(".toml");
    let (whole, killed) = (format!("{name}-whole"), format!("{name}-killed"));
    let started = Instant::now();
    let out = zoo(&["train", recipe, "--run-dir", &whole], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let landed = train_with_kills(dir, recipe, &killed, started.elapsed(), seed);

    let what = format!("{recipe} after {landed} kills");
    assert_same_run(&dir.join(whole), &dir.join(killed), &what);
    landed
}

#[test]
fn every_family_killed_at_random_moments_resumes_to_the_same_weights() {
    let dir = scratch("kills");
    write(&dir, "gpt.toml", GPT);
    write(&dir, "rnn.toml", RNN);
    write(&dir, "seq2seq.toml", SEQ2SEQ);
    // The tokenizer the masked-LM runs share, and the encoder fine-tuning starts from.
    write(&dir, "mlm.toml", MLM);
    let pretrain = MLM.replace(
        "kind = \"file\"\npath = \"tokenizer.json\"",
        "kind = \"wordpiece\"\nvocab_size = 300",
    );
    write(
        &dir,
        "pretrain.toml",
        &pretrain.replace("steps = 100", "steps = 10"),
    );
    let out = zoo(&["train", "pretrain.toml", "--run-dir", "pretrained"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::copy(
        dir.join("pretrained/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    write(&dir, "finetune.toml", FINETUNE);

    let mut landed = Vec::new();
    for (i, recipe) in [
        "gpt.toml",
        "rnn.toml",
        "mlm.toml",
        "finetune.toml",
        "seq2seq.toml",
    ]
    .into_iter()
    .enumerate()
    {
        landed.push((recipe, killed_run_matches(&dir, recipe, 0x5eed + i as u64)));
    }
    // Kills that land while the run trains are the point of the test.
    println!("kills that landed: {landed:?}");
    assert!(
        landed.iter().all(|(_, n)| *n >= 2),
        "too few kills landed: {landed:?}"
    );
}

/// A GPT whose intervals are short enough to have checkpoints after a few steps.
fn short_gpt(extra_training: &str) -> String {
    GPT.replace(
        "steps = 120\neval_interval = 6",
        &format!("steps = 12\neval_interval = 2\nkeep_checkpoints = 3\n{extra_training}"),
    )
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let dir = scratch("nonfinite");
    // A learning rate of 1e6 overflows the weights within a few steps.
    let exploding =
        short_gpt("").replace("lr = 3e-3\ngrad_clip = 0.5", "lr = 1e6\ngrad_clip = 0.0");
    write(&dir, "boom.toml", &exploding);
    let out = zoo(&["train", "boom.toml"], &dir);
    assert_clean_error(&out, 1, &["step ", "is NaN", "on_nonfinite"]);
    let message = stderr(&out);
    let step: usize = message
        .split("step ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step in: {message}"));
    // The checkpoint of the last interval before the bad step is kept; none after it exists.
    let run = dir.join("runs/boom");
    let last_good = (step - 1) / 2;
    for epoch in 1..=6 {
        let exists = run.join(format!("checkpoint/model-{epoch}.bpk")).exists();
        if epoch == last_good {
            assert!(exists, "no checkpoint of epoch {epoch} before step {step}");
        }
        assert!(
            !(exists && epoch > last_good),
            "epoch {epoch} after step {step}"
        );
    }
    assert!(!run.join("summary.json").exists());

    // Skipping instead: the run ends, and the metrics log counts the skipped steps.
    write(
        &dir,
        "skip.toml",
        &exploding.replace("[training]", "[training]\non_nonfinite = \"skip\""),
    );
    let out = zoo(&["train", "skip.toml"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let skipped: u64 = metrics(&dir.join("runs/skip"))
        .iter()
        .filter(|line| line["split"] == "train")
        .map(|line| line["skipped"].as_u64().unwrap())
        .sum();
    assert!(skipped > 0 && skipped <= 12, "{skipped}");
}

#[test]
fn a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before() {
    let dir = scratch("damaged");
    write(&dir, "gpt.toml", &short_gpt(""));
    for run in ["whole", "damaged"] {
        let out = zoo(&["train", "gpt.toml", "--run-dir", run], &dir);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // A torn last checkpoint: the run is complete, but its newest model file is cut short.
    let newest = dir.join("damaged/checkpoint/model-6.bpk");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let out = zoo(
        &["train", "gpt.toml", "--run-dir", "damaged", "--resume"],
        &dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let warning = stderr(&out);
    assert!(
        warning.contains("warning: checkpoint")
            && warning.contains("model-6.bpk")
            && warning.contains("resumes from epoch 5"),
        "{warning}"
    );
    assert!(dir.join("damaged/checkpoint/model-6.bpk.damaged").exists());
    // Redoing the last interval from epoch 5 ends where the run had ended.
    assert_same_run(&dir.join("whole"), &dir.join("damaged"), "damaged");

    // With no loadable checkpoint left the error names the newest, and nothing is renamed.
    write(
        &dir,
        "one.toml",
        &short_gpt("").replace("steps = 12", "steps = 2"),
    );
    let out = zoo(&["train", "one.toml", "--run-dir", "one"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(dir.join("one/checkpoint/optim-1.bpk"), b"not a burnpack").unwrap();
    let out = zoo(&["train", "one.toml", "--run-dir", "one", "--resume"], &dir);
    assert_clean_error(&out, 1, &["optim-1.bpk", "no earlier checkpoint"]);
    assert!(dir.join("one/checkpoint/optim-1.bpk").exists());
}

#[test]
fn a_stop_inside_an_interval_resumes_to_the_uninterrupted_run() {
    let dir = scratch("midstop");
    write(&dir, "gpt.toml", &short_gpt(""));
    let out = zoo(&["train", "gpt.toml", "--run-dir", "whole"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = zoo(
        &[
            "train",
            "gpt.toml",
            "--run-dir",
            "stopped",
            "--stop-after-steps",
            "5",
        ],
        &dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("stopping at step 6"),
        "{}",
        stdout(&out)
    );
    let out = zoo(
        &["train", "gpt.toml", "--run-dir", "stopped", "--resume"],
        &dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_run(&dir.join("whole"), &dir.join("stopped"), "stopped");
}

#[test]
fn a_run_killed_between_its_last_checkpoint_and_its_summary_finishes_on_resume() {
    let dir = scratch("nosummary");
    write(&dir, "gpt.toml", &short_gpt(""));
    let out = zoo(&["train", "gpt.toml", "--run-dir", "run"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = dir.join("run/summary.json");
    let checkpoint = std::fs::read(dir.join("run/checkpoint/model-6.bpk")).unwrap();
    std::fs::remove_file(&summary).unwrap();
    let out = zoo(&["train", "gpt.toml", "--run-dir", "run", "--resume"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(summary.exists());
    assert_eq!(
        std::fs::read(dir.join("run/checkpoint/model-6.bpk")).unwrap(),
        checkpoint
    );
    // Once summarised, there is nothing left to resume.
    let out = zoo(&["train", "gpt.toml", "--run-dir", "run", "--resume"], &dir);
    assert_clean_error(&out, 1, &["is already complete (12 steps)"]);
}

/// Runs `zoo args` in `dir` under a shell `limits` line (`ulimit -f 64`), with SIGXFSZ ignored
/// so that an oversized write fails with an error rather than killing the process.
fn zoo_limited(limits: &str, args: &[&str], dir: &Path) -> std::process::Output {
    let command = format!("trap '' XFSZ; {limits}; exec \"$0\" \"$@\"");
    Command::new("sh")
        .arg("-c")
        .arg(command)
        .arg(env!("CARGO_BIN_EXE_zoo"))
        .args(args)
        .current_dir(dir)
        .env("ZOO_OFFLINE", "1")
        .env_remove("BURN_DEVICE")
        .output()
        .unwrap()
}

#[test]
fn a_full_disk_is_a_clear_error_and_the_run_resumes_once_there_is_room() {
    let dir = scratch("fulldisk");
    write(&dir, "gpt.toml", &short_gpt(""));
    let out = zoo(&["train", "gpt.toml", "--run-dir", "whole"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = zoo(
        &[
            "train",
            "gpt.toml",
            "--run-dir",
            "full",
            "--stop-after-steps",
            "4",
        ],
        &dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Files may grow to 64 KiB: the recipe and the metrics log fit, a checkpoint does not.
    let out = zoo_limited(
        "ulimit -f 64",
        &["train", "gpt.toml", "--run-dir", "full", "--resume"],
        &dir,
    );
    // Whichever of the epoch's files was written first is the one named.
    assert_clean_error(&out, 1, &["-3.bpk", "cannot be written", "File too large"]);
    // Nothing written before is lost: the run resumes from epoch 2 and ends as it would have.
    let out = zoo(
        &["train", "gpt.toml", "--run-dir", "full", "--resume"],
        &dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_run(&dir.join("whole"), &dir.join("full"), "full");
}

#[test]
fn a_read_only_run_directory_is_a_clear_error_and_keeps_its_files() {
    let dir = scratch("readonly");
    write(&dir, "gpt.toml", &short_gpt(""));
    let out = zoo(
        &[
            "train",
            "gpt.toml",
            "--run-dir",
            "ro",
            "--stop-after-steps",
            "4",
        ],
        &dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let checkpoints = dir.join("ro/checkpoint");
    let before: BTreeMap<String, Vec<u8>> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    // Read-only even for root: the immutable attribute (ext4 and most Linux file systems).
    let immutable = |on: bool| {
        Command::new("chattr")
            .arg(if on { "+i" } else { "-i" })
            .arg(&checkpoints)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !immutable(true) {
        eprintln!("chattr is not available here: the read-only case is not tried");
        return;
    }
    let out = zoo(&["train", "gpt.toml", "--run-dir", "ro", "--resume"], &dir);
    assert!(immutable(false));
    // Whichever of the epoch's files was written first is the one named.
    assert_clean_error(
        &out,
        1,
        &["-3.bpk", "cannot be written", "Operation not permitted"],
    );
    let after: BTreeMap<String, Vec<u8>> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    assert_eq!(before, after);
}
