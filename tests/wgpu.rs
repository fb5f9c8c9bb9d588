//! The wgpu backend, on a GPU or on Mesa's lavapipe (Vulkan on the CPU): the same weights give
//! the same outputs as flex (the committed reference of tests/backends), and a small run of each
//! family trains with a falling loss, resumes, evaluates and generates, predicts or translates.
//! `.ci/run` builds these with `--no-default-features --features wgpu` in a target directory of
//! their own.
#![cfg(feature = "wgpu")]

mod backends;
mod common;

use backends::{compare, outputs, reference};
use burn::prelude::*;
use common::*;
use std::path::Path;
use std::process::Output;

/// `zoo --device wgpu args` in `dir`.
fn on_wgpu(args: &[&str], dir: &Path) -> Output {
    let mut all = vec!["--device", "wgpu"];
    all.extend_from_slice(args);
    let out = zoo(&all, dir);
    assert!(out.status.success(), "zoo {args:?}: {}", stderr(&out));
    out
}

/// Trains `recipe` as `name.toml` on wgpu, stopped after 4 steps and resumed; its validation
/// losses.
fn interrupted_and_resumed(name: &str, recipe: &str, dir: &Path) -> Vec<(u64, f64)> {
    let file = format!("{name}.toml");
    write(dir, &file, recipe);
    on_wgpu(&["train", &file, "--stop-after-steps", "4"], dir);
    on_wgpu(&["train", &file, "--resume"], dir);
    val_losses(&dir.join("runs").join(name))
}

#[test]
fn the_same_weights_give_the_same_outputs_as_on_flex() {
    let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
    for (model, largest, scale) in compare(&outputs(&device), &reference()) {
        println!("{model}: largest difference from flex {largest:.2e} (values up to {scale:.2})");
        assert!(
            largest <= 1e-4,
            "{model}: wgpu differs from flex by {largest}"
        );
    }
}

#[test]
fn zoo_devices_lists_the_adapter() {
    let out = on_wgpu(&["devices"], &std::env::temp_dir());
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.starts_with("wgpu: ") && !l.contains("no adapter")),
        "{text}"
    );
}

const GPT: &str = r#"
seed = 7
[model]
preset = "gpt-nano"
n_layer = 2
block_size = 32
[tokenizer]
kind = "char"
[data]
dataset = "embedded"
[optimizer]
lr = 3e-3
[training]
batch_size = 8
steps = 12
eval_interval = 4
eval_batches = 2
[sample]
tokens = 0
"#;

#[test]
fn a_gpt_trains_resumes_evaluates_and_generates_on_wgpu() {
    let dir = scratch("wgpu-gpt");
    write(&dir, "gpt.toml", GPT);
    on_wgpu(&["train", "gpt.toml", "--run-dir", "whole"], &dir);
    let whole = val_losses(&dir.join("whole"));
    assert_eq!(whole.len(), 3);
    assert!(whole[2].1 < whole[0].1, "loss should fall: {whole:?}");
    // Interrupted after 4 steps and resumed: the uninterrupted run's losses.
    let split = ["train", "gpt.toml", "--run-dir", "split"];
    on_wgpu(&[&split[..], &["--stop-after-steps", "4"]].concat(), &dir);
    on_wgpu(&[&split[..], &["--resume"]].concat(), &dir);
    let resumed = val_losses(&dir.join("split"));
    for (a, b) in whole.iter().zip(&resumed) {
        assert!(
            a.0 == b.0 && (a.1 - b.1).abs() < 1e-3,
            "{whole:?} vs {resumed:?}"
        );
    }
    let eval = stdout(&on_wgpu(&["eval", "whole"], &dir));
    assert!(eval.contains("perplexity"), "{eval}");
    let args = [
        "generate",
        "whole",
        "--prompt",
        "Ada",
        "--max-tokens",
        "12",
        "--seed",
        "2",
    ];
    let text = stdout(&on_wgpu(&args, &dir));
    assert!(
        text.starts_with("Ada") && text.trim_end().chars().count() >= 12,
        "{text}"
    );
    // Greedy decoding, with and without a draft, and beam search run on the GPU too.
    let greedy = [
        "generate",
        "whole",
        "--prompt",
        "Ada",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
    ];
    let plain = stdout(&on_wgpu(&greedy, &dir));
    let drafted = stdout(&on_wgpu(
        &[&greedy[..], &["--draft", "split"]].concat(),
        &dir,
    ));
    assert_eq!(plain, drafted);
    on_wgpu(
        &[
            "generate",
            "whole",
            "--prompt",
            "Ada",
            "--max-tokens",
            "8",
            "--beam",
            "3",
        ],
        &dir,
    );
}

const BERT: &str = r#"
seed = 11
task = "masked-lm"
[model]
arch = "bert"
preset = "bert-tiny"
n_layer = 2
d_model = 32
max_len = 64
dropout = 0.0
[tokenizer]
kind = "wordpiece"
vocab_size = 300
[data]
dataset = "embedded"
[optimizer]
lr = 2e-3
[training]
batch_size = 16
steps = 12
eval_interval = 4
eval_batches = 2
seq_len = 32
"#;

#[test]
fn a_batch_split_between_two_handles_of_the_gpu_trains_as_doubled_accumulation() {
    let dir = scratch("wgpu-data-parallel");
    write(&dir, "gpt.toml", GPT);
    let single = halved_batch_doubled_accumulation(GPT, 8, 1);
    write(&dir, "single.toml", &single);
    let shown = stdout(&on_wgpu(
        &[
            "train",
            "gpt.toml",
            "--devices",
            "wgpu,wgpu",
            "--stop-after-steps",
            "8",
        ],
        &dir,
    ));
    assert!(shown.contains("one on each of wgpu, wgpu"), "{shown}");
    on_wgpu(&["train", "single.toml", "--stop-after-steps", "8"], &dir);
    // The same steps: the training losses agree (validation reads batches of another size).
    let train_losses = |run: &str| -> Vec<f64> {
        metrics(&dir.join("runs").join(run))
            .into_iter()
            .filter(|m| m["split"] == "train")
            .map(|m| m["loss"].as_f64().unwrap())
            .collect()
    };
    let (split, one) = (train_losses("gpt"), train_losses("single"));
    assert_eq!(split.len(), 2, "{split:?}");
    for (a, b) in split.iter().zip(&one) {
        assert!((a - b).abs() < 1e-4, "{split:?} vs {one:?}");
    }
}

#[test]
fn an_encoder_pretrains_resumes_evaluates_and_fills_masks_on_wgpu() {
    let dir = scratch("wgpu-bert");
    let losses = interrupted_and_resumed("bert", BERT, &dir);
    assert_eq!(losses.iter().map(|l| l.0).collect::<Vec<_>>(), [4, 8, 12]);
    assert!(losses[2].1 < losses[0].1, "loss should fall: {losses:?}");
    let eval = stdout(&on_wgpu(&["eval", "runs/bert"], &dir));
    assert!(eval.contains("acc"), "{eval}");
    let predicted = stdout(&on_wgpu(
        &["predict", "runs/bert", "--input", "the [MASK] sat"],
        &dir,
    ));
    assert!(predicted.starts_with("[MASK] -> "), "{predicted}");
}

const SEQ2SEQ: &str = r#"
seed = 5
task = "translation"
[model]
arch = "transformer"
preset = "transformer-tiny"
max_len = 32
d_model = 32
d_ff = 48
[tokenizer]
kind = "word"
vocab_size = 64
[data]
dataset = "synthetic-reverse"
[optimizer]
lr = 3e-3
[training]
batch_size = 16
steps = 12
eval_interval = 4
eval_batches = 2
seq_len = 16
"#;

#[test]
fn an_encoder_decoder_trains_resumes_and_translates_on_wgpu() {
    let dir = scratch("wgpu-seq2seq");
    let losses = interrupted_and_resumed("reverse", SEQ2SEQ, &dir);
    assert_eq!(losses.len(), 3);
    assert!(losses[2].1 < losses[0].1, "loss should fall: {losses:?}");
    // Twelve steps teach little: that it decodes on the GPU is what counts here.
    on_wgpu(&["translate", "runs/reverse", "--input", "a b c"], &dir);
    let eval = stdout(&on_wgpu(&["eval", "runs/reverse"], &dir));
    assert!(eval.contains("BLEU"), "{eval}");
    on_wgpu(
        &[
            "translate",
            "runs/reverse",
            "--input",
            "a b c",
            "--beam",
            "3",
        ],
        &dir,
    );
}
