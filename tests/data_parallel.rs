//! Data parallelism (`zoo train --devices`), tested on two handles of the one flex device: the
//! wiring (a batch cut into one micro-batch per device, each made on its device, run on a
//! replica, the gradients gathered on the first device) is the same as for several GPUs, and on
//! one device the result must be exactly the one-device run that accumulates the same
//! micro-batches.

mod common;

use common::*;
use std::path::Path;

/// A GPT with dropout (seeded per micro-batch), clipping, and two batches of 8 per step.
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
[training]
batch_size = 8
grad_accumulation = 2
steps = 12
eval_interval = 4
eval_batches = 2
[sample]
tokens = 0
"#;

/// A masked-LM BERT (padded batches, masks drawn per example), one batch of 16 per step. Its
/// WordPiece tokenizer is trained once, apart: `tokenizers` breaks ties between equally frequent
/// merges in hash-map order, which differs from process to process.
const MLM: &str = r#"
seed = 11
task = "masked-lm"
[model]
arch = "bert"
preset = "bert-tiny"
n_layer = 2
d_model = 32
max_len = 64
dropout = 0.1
[tokenizer]
kind = "file"
path = "wordpiece.json"
[data]
dataset = "embedded"
[optimizer]
lr = 2e-3
[training]
batch_size = 16
steps = 8
eval_interval = 4
eval_batches = 2
seq_len = 32
"#;

fn train(dir: &Path, args: &[&str]) -> String {
    let out = zoo(&[&["train"], args].concat(), dir);
    assert!(out.status.success(), "zoo train {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// `recipe` on two handles of flex, against the same recipe on one device with the batch
/// halved and twice the accumulation: the same run, bit for bit.
fn split_matches_accumulation(dir: &Path, name: &str, recipe: &str, batch: usize, accum: usize) {
    write(dir, &format!("{name}.toml"), recipe);
    let single = halved_batch_doubled_accumulation(recipe, batch, accum);
    write(dir, &format!("{name}-single.toml"), &single);

    let (split_run, single_run) = (format!("{name}-split"), format!("{name}-single"));
    let shown = train(
        dir,
        &[
            &format!("{name}.toml"),
            "--devices",
            "flex,flex",
            "--run-dir",
            &split_run,
        ],
    );
    assert!(
        shown.contains(&format!(
            "each batch of {batch} is split into 2 micro-batches of {}, one on each of flex, flex",
            batch / 2
        )),
        "{shown}"
    );
    train(
        dir,
        &[&format!("{name}-single.toml"), "--run-dir", &single_run],
    );
    // The same weights, bit for bit, and the same training losses (validation reads whole
    // batches of the recipe's size, so the one-device run validates on other batches).
    let (split_run, single_run) = (dir.join(split_run), dir.join(single_run));
    let what = format!("{name} on flex,flex against one device");
    let epoch = last_epoch(&split_run);
    assert_eq!(last_epoch(&single_run), epoch, "{what}");
    let file = format!("checkpoint/model-{epoch}.bpk");
    let (split_weights, single_weights) = (
        tensors(&split_run.join(&file)),
        tensors(&single_run.join(&file)),
    );
    assert_eq!(split_weights.len(), single_weights.len(), "{what}");
    for (name, bytes) in &split_weights {
        assert!(single_weights[name] == *bytes, "{what}: {name} differs");
    }
    let training = |run: &Path| -> Vec<String> {
        metrics_without_time(run)
            .into_iter()
            .filter(|line| line.contains("\"split\":\"train\""))
            .collect()
    };
    assert_eq!(training(&split_run), training(&single_run), "{what}");
    assert!(!training(&split_run).is_empty());
    // The run records where it trained.
    let recorded = std::fs::read_to_string(split_run.join("recipe.toml")).unwrap();
    assert!(
        recorded.contains("devices = [\n    \"flex\",\n    \"flex\",\n]")
            || recorded.contains("devices = [\"flex\", \"flex\"]"),
        "{recorded}"
    );
    assert!(
        recorded.contains(&format!("batch_size = {batch}")),
        "{recorded}"
    );
}

#[test]
fn a_batch_split_across_two_devices_is_the_one_device_step_that_accumulates_its_halves() {
    let dir = scratch("data-parallel");
    let wordpiece = MLM.replace(
        "kind = \"file\"\npath = \"wordpiece.json\"",
        "kind = \"wordpiece\"\nvocab_size = 300",
    );
    write(
        &dir,
        "wordpiece.toml",
        &wordpiece.replace("steps = 8", "steps = 1"),
    );
    train(&dir, &["wordpiece.toml", "--run-dir", "wordpiece"]);
    std::fs::copy(
        dir.join("wordpiece/tokenizer.json"),
        dir.join("wordpiece.json"),
    )
    .unwrap();
    split_matches_accumulation(&dir, "gpt", GPT, 8, 2);
    split_matches_accumulation(&dir, "mlm", MLM, 16, 1);

    // The losses fall: the split run learns.
    let losses = val_losses(&dir.join("gpt-split"));
    assert!(losses.last().unwrap().1 < losses[0].1, "{losses:?}");

    // Interrupted and resumed on the same devices, the run ends as the uninterrupted one did.
    let stopped = [
        "gpt.toml",
        "--devices",
        "flex,flex",
        "--run-dir",
        "gpt-resumed",
    ];
    train(&dir, &[&stopped[..], &["--stop-after-steps", "4"]].concat());
    let resumed = train(&dir, &[&stopped[..], &["--resume"]].concat());
    assert!(!resumed.contains("resumes on"), "{resumed}");
    assert_same_run(
        &dir.join("gpt-split"),
        &dir.join("gpt-resumed"),
        "gpt on flex,flex, stopped at step 4 and resumed",
    );

    // The recipe's own training.devices is what --devices overrides.
    write(
        &dir,
        "gpt-recipe-devices.toml",
        &GPT.replace(
            "[training]\n",
            "[training]\ndevices = [\"flex\", \"flex\"]\n",
        ),
    );
    train(
        &dir,
        &["gpt-recipe-devices.toml", "--run-dir", "gpt-from-recipe"],
    );
    assert_same_run(
        &dir.join("gpt-split"),
        &dir.join("gpt-from-recipe"),
        "gpt with training.devices in its recipe",
    );

    // Resumed on one device: told, and it goes on to the end.
    let moved = ["gpt.toml", "--run-dir", "gpt-moved"];
    train(
        &dir,
        &[
            &moved[..],
            &["--devices", "flex,flex", "--stop-after-steps", "4"],
        ]
        .concat(),
    );
    let resumed = train(&dir, &[&moved[..], &["--resume"]].concat());
    assert!(
        resumed.contains("the run trained on flex,flex and resumes on one device"),
        "{resumed}"
    );
    assert_eq!(val_losses(&dir.join("gpt-moved")).len(), 3);
}

#[test]
fn devices_that_cannot_split_a_batch_are_refused_by_name() {
    let dir = scratch("data-parallel-errors");
    write(&dir, "gpt.toml", GPT);
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["--devices", "flex,flex,flex"],
            &["--devices flex,flex,flex", "batch_size of 8", "3 devices"],
        ),
        (
            &["--devices", "flex,cuda:0"],
            &["'flex' and 'cuda:0'", "two backends"],
        ),
        (
            &["--devices", "flex,flex:1"],
            &["flex has one device", "flex,flex"],
        ),
        (&["--devices", "tpu:0,tpu:1"], &["unknown device 'tpu'"]),
    ];
    for (args, needles) in cases {
        let out = zoo(&[&["train", "gpt.toml"], args].concat(), &dir);
        assert_clean_error(&out, 1, needles);
        assert!(!dir.join("runs/gpt").exists(), "{args:?} left a run behind");
    }
    // A recipe's own devices are named as the recipe's.
    write(
        &dir,
        "odd.toml",
        &GPT.replace(
            "[training]\n",
            "[training]\ndevices = [\"flex\", \"flex\", \"flex\"]\n",
        ),
    );
    let out = zoo(&["train", "odd.toml"], &dir);
    assert_clean_error(
        &out,
        1,
        &["odd.toml", "training.devices", "does not split evenly"],
    );

    // A recurrent LM carries its state from window to window: its windows cannot run apart.
    write(
        &dir,
        "lstm.toml",
        r#"
[model]
arch = "rnn"
preset = "lstm-small"
n_layer = 1
[tokenizer]
kind = "char"
[data]
dataset = "embedded"
[training]
batch_size = 4
steps = 2
eval_interval = 2
[sample]
tokens = 0
"#,
    );
    let out = zoo(&["train", "lstm.toml", "--devices", "flex,flex"], &dir);
    assert_clean_error(&out, 1, &["lstm.toml", "cannot run side by side", "one"]);
}
