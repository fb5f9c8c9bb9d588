//! End-to-end tests of the `zoo` binary: train, interrupt, resume, evaluate, generate, and the
//! errors a user can run into.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// [`zoo`] with the Hugging Face cache at `hf_home`.
fn zoo_with_hf_home(args: &[&str], dir: &Path, hf_home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zoo"))
        .args(args)
        .current_dir(dir)
        .env("ZOO_OFFLINE", "1")
        .env("HF_HOME", hf_home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("BURN_DEVICE")
        .output()
        .expect("the zoo binary runs")
}

/// A GPT small enough to train a few steps in seconds on the embedded corpus.
const TINY: &str = r#"
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

[schedule]
kind = "warmup-cosine"
warmup_steps = 2

[training]
batch_size = 8
steps = 6
eval_interval = 2
eval_batches = 2

[sample]
prompt = "Ada"
tokens = 20
"#;

#[test]
fn train_resume_eval_and_generate() {
    let dir = scratch("run");
    write(&dir, "tiny.toml", TINY);

    // Uninterrupted: 6 steps, a validation every 2.
    let full = zoo(&["train", "tiny.toml", "--run-dir", "full"], &dir);
    assert!(full.status.success(), "{}", stderr(&full));
    let out = stdout(&full);
    assert!(out.contains("step      6/6"), "{out}");
    assert!(out.contains("--- sample ---\nAda"), "{out}");
    let run = dir.join("full");
    for file in ["recipe.toml", "tokenizer.json", "metrics.jsonl"] {
        assert!(run.join(file).is_file(), "{file}");
    }
    let uninterrupted = val_losses(&run);
    assert_eq!(
        uninterrupted.iter().map(|v| v.0).collect::<Vec<_>>(),
        vec![2, 4, 6]
    );
    assert!(
        uninterrupted[2].1 < uninterrupted[0].1,
        "loss should fall: {uninterrupted:?}"
    );

    // Interrupted after 4 steps, then resumed: the same losses, step for step.
    let first = zoo(
        &[
            "train",
            "tiny.toml",
            "--run-dir",
            "split",
            "--stop-after-steps",
            "4",
        ],
        &dir,
    );
    assert!(first.status.success(), "{}", stderr(&first));
    let again = zoo(&["train", "tiny.toml", "--run-dir", "split"], &dir);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--resume"), "{}", stderr(&again));
    let resumed = zoo(
        &["train", "tiny.toml", "--run-dir", "split", "--resume"],
        &dir,
    );
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stdout(&resumed).contains("resuming at step 4"),
        "{}",
        stdout(&resumed)
    );
    let split = val_losses(&dir.join("split"));
    assert_eq!(split.len(), 3);
    for (a, b) in uninterrupted.iter().zip(&split) {
        assert_eq!(a.0, b.0);
        assert!(
            (a.1 - b.1).abs() < 1e-4,
            "resumed run diverged: {uninterrupted:?} vs {split:?}"
        );
    }

    // Evaluation over the whole validation split.
    let eval = zoo(&["eval", "full"], &dir);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let line = stdout(&eval);
    assert!(
        line.contains("split val") && line.contains("step 6") && line.contains("perplexity"),
        "{line}"
    );
    let loss: f64 = line
        .split("loss ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(loss.is_finite() && loss < uninterrupted[0].1, "{line}");

    // Generation: seeded, starts with the prompt, and reproducible.
    let args = [
        "generate",
        "full",
        "--prompt",
        "Mira",
        "--max-tokens",
        "30",
        "--seed",
        "4",
        "--top-k",
        "10",
    ];
    let a = zoo(&args, &dir);
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(stdout(&a).starts_with("Mira"));
    assert!(stdout(&a).trim_end().chars().count() >= 4 + 20);
    assert_eq!(stdout(&a), stdout(&zoo(&args, &dir)));
    let greedy = zoo(
        &[
            "generate",
            "full",
            "--prompt",
            "Mira",
            "--temperature",
            "0",
            "--max-tokens",
            "10",
        ],
        &dir,
    );
    assert!(greedy.status.success(), "{}", stderr(&greedy));
}

/// A recurrent LM small enough to train in a second on the embedded corpus.
const TINY_RNN: &str = r#"
seed = 7

[model]
arch = "rnn"
preset = "lstm-small"
d_hidden = 48
dropout = 0.0

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
steps = 60
eval_interval = 20

[sample]
prompt = "Ada"
tokens = 20
"#;

#[test]
fn a_recurrent_lm_trains_evaluates_and_generates() {
    let dir = scratch("rnn");
    write(&dir, "rnn.toml", TINY_RNN);
    let trained = zoo(&["train", "rnn.toml"], &dir);
    assert!(trained.status.success(), "{}", stderr(&trained));
    let out = stdout(&trained);
    assert!(out.contains("step     60/60"), "{out}");
    assert!(out.contains("--- sample ---\nAda"), "{out}");
    let run = dir.join("runs/rnn");
    let losses = val_losses(&run);
    assert_eq!(losses.iter().map(|v| v.0).collect::<Vec<_>>(), [20, 40, 60]);
    assert!(losses[2].1 < losses[0].1, "loss should fall: {losses:?}");
    // The resolved recipe names the family and its window.
    let recipe = std::fs::read_to_string(run.join("recipe.toml")).unwrap();
    assert!(
        recipe.contains("arch = \"rnn\"") && recipe.contains("bptt = 16"),
        "{recipe}"
    );

    // Evaluation reads the validation split as training's streams: the same loss.
    let eval = zoo(&["eval", "runs/rnn"], &dir);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let line = stdout(&eval);
    let loss: f64 = line
        .split("loss ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no loss in {line}"));
    assert!(
        (loss - losses[2].1).abs() < 1e-3,
        "{loss} vs {:?}",
        losses[2]
    );

    let args = [
        "generate",
        "runs/rnn",
        "--prompt",
        "Nils",
        "--max-tokens",
        "15",
        "--seed",
        "3",
    ];
    let generated = zoo(&args, &dir);
    assert!(generated.status.success(), "{}", stderr(&generated));
    let text = stdout(&generated);
    assert!(
        text.starts_with("Nils") && text.trim_end().chars().count() >= 15,
        "{text}"
    );
    let again = zoo(&args, &dir);
    assert_eq!(stdout(&again), text, "the same seed samples the same text");

    let no_attention = zoo(&["attention", "runs/rnn", "--input", "Ada"], &dir);
    assert_clean_error(&no_attention, 1, &["runs/rnn", "no attention"]);
}

#[test]
fn speculative_decoding_and_beam_search_from_the_command_line() {
    let dir = scratch("decoding");
    write(&dir, "tiny.toml", TINY);
    write(&dir, "rnn.toml", TINY_RNN);
    let counted = "[model]\narch = \"ngram\"\norder = 3\n[tokenizer]\nkind = \"char\"\n[data]\ndataset = \"embedded\"\n[sample]\ntokens = 0\n";
    write(&dir, "kn.toml", counted);
    write(
        &dir,
        "words.toml",
        &counted.replace("\"char\"", "\"word\"\nvocab_size = 200"),
    );
    for recipe in ["tiny.toml", "rnn.toml", "kn.toml", "words.toml"] {
        let trained = zoo(&["train", recipe], &dir);
        assert!(trained.status.success(), "{recipe}: {}", stderr(&trained));
    }
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "runs/tiny",
            "--prompt",
            "Ada",
            "--max-tokens",
            "40",
        ];
        args.extend_from_slice(extra);
        zoo(&args, &dir)
    };

    // At temperature 0 a draft changes the speed, never the text: 40 tokens run past the block.
    let greedy = generate(&["--temperature", "0"]);
    assert!(greedy.status.success(), "{}", stderr(&greedy));
    for draft in ["runs/kn", "runs/rnn", "runs/tiny"] {
        let drafted = generate(&[
            "--temperature",
            "0",
            "--draft",
            draft,
            "--draft-tokens",
            "3",
            "--stats",
        ]);
        assert!(drafted.status.success(), "{}", stderr(&drafted));
        assert_eq!(stdout(&drafted), stdout(&greedy), "draft {draft}");
        let stats = stderr(&drafted);
        assert!(
            stats.contains("proposals accepted") && stats.contains("tokens/s"),
            "{stats}"
        );
    }
    let itself = stderr(&generate(&[
        "--temperature",
        "0",
        "--draft",
        "runs/tiny",
        "--stats",
    ]));
    assert!(
        itself.contains("accepted (100.0%)") && itself.contains("5.00 tokens per target read"),
        "{itself}"
    );
    // Sampling with a draft is seeded like sampling without.
    let sampled = ["--draft", "runs/kn", "--seed", "5", "--top-k", "8"];
    let a = generate(&sampled);
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(stdout(&a).starts_with("Ada"));
    assert_eq!(stdout(&a), stdout(&generate(&sampled)));

    // Beam search: width 1 is greedy; wider is deterministic and starts with the prompt.
    let beam = |width: &str, tokens: &str| {
        zoo(
            &[
                "generate",
                "runs/tiny",
                "--prompt",
                "Ada",
                "--max-tokens",
                tokens,
                "--beam",
                width,
            ],
            &dir,
        )
    };
    let greedy_short = zoo(
        &[
            "generate",
            "runs/tiny",
            "--prompt",
            "Ada",
            "--max-tokens",
            "20",
            "--temperature",
            "0",
        ],
        &dir,
    );
    let one = beam("1", "20");
    assert!(one.status.success(), "{}", stderr(&one));
    assert_eq!(stdout(&one), stdout(&greedy_short));
    let four = beam("4", "20");
    assert!(four.status.success(), "{}", stderr(&four));
    assert!(stdout(&four).starts_with("Ada") && stdout(&four) == stdout(&beam("4", "20")));
    let rnn_beam = zoo(
        &[
            "generate",
            "runs/rnn",
            "--prompt",
            "Ada",
            "--max-tokens",
            "12",
            "--beam",
            "3",
        ],
        &dir,
    );
    assert!(rnn_beam.status.success(), "{}", stderr(&rnn_beam));

    // Mistakes are named.
    let cases: [(&[&str], &str); 6] = [
        (
            &["generate", "runs/tiny", "--max-tokens", "40", "--beam", "2"],
            "block of 32",
        ),
        (&["generate", "runs/kn", "--beam", "2"], "n-gram"),
        (
            &["generate", "runs/tiny", "--draft", "runs/words"],
            "tokenizer differs",
        ),
        (
            &[
                "generate",
                "runs/tiny",
                "--draft",
                "runs/kn",
                "--draft-tokens",
                "0",
            ],
            "--draft-tokens",
        ),
        (
            &["generate", "runs/tiny", "--draft", "runs/missing"],
            "runs/missing",
        ),
        (&["generate", "runs/tiny", "--draft-tokens", "3"], "--draft"),
    ];
    for (args, expected) in cases {
        let out = zoo(args, &dir);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

#[test]
fn an_ngram_baseline_counts_evaluates_and_generates() {
    let dir = scratch("ngram");
    let recipe = "[model]\narch = \"ngram\"\norder = 3\n[tokenizer]\nkind = \"char\"\n[data]\ndataset = \"embedded\"\n[sample]\ntokens = 0\n";
    write(&dir, "kn.toml", recipe);
    let counted = zoo(&["train", "kn.toml"], &dir);
    assert!(counted.status.success(), "{}", stderr(&counted));
    assert!(
        stdout(&counted).contains("counted in"),
        "{}",
        stdout(&counted)
    );
    let losses = val_losses(&dir.join("runs/kn"));
    assert_eq!(losses.len(), 1);
    // Characters of the generated stories: a trigram is far better than uniform over ~50.
    assert!(losses[0].1 < 2.5, "{losses:?}");

    let eval = zoo(&["eval", "runs/kn"], &dir);
    assert!(eval.status.success(), "{}", stderr(&eval));
    assert!(
        stdout(&eval).contains(&format!("loss {:.4}", losses[0].1)),
        "{}",
        stdout(&eval)
    );
    let generated = zoo(
        &[
            "generate",
            "runs/kn",
            "--prompt",
            "Ada",
            "--max-tokens",
            "10",
        ],
        &dir,
    );
    assert!(generated.status.success(), "{}", stderr(&generated));
    assert!(
        stdout(&generated).starts_with("Ada"),
        "{}",
        stdout(&generated)
    );

    // Counting again into the same run directory is refused, not silently overwritten.
    let again = zoo(&["train", "kn.toml"], &dir);
    assert_clean_error(&again, 1, &["already holds a counted n-gram model"]);
}

#[test]
fn bad_recipes_name_the_file_and_the_key() {
    let dir = scratch("bad");
    write(
        &dir,
        "typo.toml",
        &TINY.replace("batch_size = 8", "batch_sise = 8"),
    );
    assert_clean_error(
        &zoo(&["train", "typo.toml"], &dir),
        1,
        &["typo.toml", "batch_sise"],
    );
    write(&dir, "value.toml", &TINY.replace("lr = 3e-3", "lr = -1.0"));
    assert_clean_error(
        &zoo(&["train", "value.toml"], &dir),
        1,
        &["value.toml", "optimizer.lr"],
    );
    write(
        &dir,
        "preset.toml",
        &TINY.replace("gpt-nano", "gpt-enormous"),
    );
    assert_clean_error(
        &zoo(&["train", "preset.toml"], &dir),
        1,
        &["preset.toml", "gpt-enormous", "gpt-mini"],
    );
    assert_clean_error(&zoo(&["train", "nowhere.toml"], &dir), 1, &["nowhere.toml"]);
    // A prompt with a character the corpus lacks is refused before training, not after.
    write(
        &dir,
        "prompt.toml",
        &TINY.replace("prompt = \"Ada\"", "prompt = \"Ada\u{263a}\""),
    );
    let refused = zoo(&["train", "prompt.toml"], &dir);
    assert_clean_error(&refused, 1, &["prompt.toml", "[sample] prompt"]);
    assert!(
        !dir.join("runs/prompt/checkpoints").exists(),
        "nothing trained"
    );
    // Next-sentence pairs need a second segment embedding.
    write(
        &dir,
        "segments.toml",
        &TINY_MLM
            .replace("dropout = 0.0", "dropout = 0.0\ntype_vocab_size = 1")
            .replace(
                "dataset = \"embedded\"",
                "dataset = \"embedded\"\nnext_sentence = true",
            ),
    );
    assert_clean_error(
        &zoo(&["train", "segments.toml"], &dir),
        1,
        &["segments.toml", "type_vocab_size = 1", "segment id 1"],
    );
}

#[test]
fn a_missing_dataset_says_which_file_to_put_where() {
    let dir = scratch("missing");
    write(
        &dir,
        "shakespeare.toml",
        &TINY.replace("\"embedded\"", "\"tinyshakespeare\""),
    );
    let empty = dir.join("empty-data");
    let out = zoo(
        &[
            "--data-dir",
            empty.to_str().unwrap(),
            "train",
            "shakespeare.toml",
        ],
        &dir,
    );
    let place = empty.join("tinyshakespeare").display().to_string();
    assert_clean_error(
        &out,
        1,
        &["tinyshakespeare", "input.txt", &place, "--data-dir"],
    );
    assert!(
        !dir.join("runs").exists(),
        "nothing should be written for a run that cannot start"
    );
    write(
        &dir,
        "unknown.toml",
        &TINY.replace("\"embedded\"", "\"wikitext-103\""),
    );
    assert_clean_error(
        &zoo(&["train", "unknown.toml"], &dir),
        1,
        &["wikitext-103", "tinyshakespeare", "ptb"],
    );
}

#[test]
fn a_corrupt_checkpoint_is_reported_by_name() {
    let dir = scratch("corrupt");
    write(&dir, "tiny.toml", &TINY.replace("steps = 6", "steps = 2"));
    let run = zoo(
        &[
            "train",
            "tiny.toml",
            "--run-dir",
            "r",
            "--stop-after-steps",
            "2",
        ],
        &dir,
    );
    assert!(run.status.success(), "{}", stderr(&run));
    write(&dir, "tiny.toml", TINY);
    let checkpoint = dir.join("r/checkpoint/model-1.bpk");
    std::fs::write(&checkpoint, b"not a burnpack").unwrap();
    let out = zoo(&["train", "tiny.toml", "--run-dir", "r", "--resume"], &dir);
    assert_clean_error(&out, 1, &["model-1.bpk"]);
    assert_clean_error(&zoo(&["eval", "r"], &dir), 1, &["model-1.bpk"]);
    assert_clean_error(&zoo(&["eval", "no-such-run"], &dir), 1, &["no-such-run"]);
}

#[test]
fn a_device_that_is_not_compiled_in_exits_2_and_lists_the_ones_that_are() {
    let dir = scratch("device");
    let out = zoo(&["--device", "cuda", "list"], &dir);
    if cfg!(feature = "cuda") {
        return;
    }
    assert_clean_error(&out, 2, &["cuda", "flex"]);
}

#[test]
fn info_reports_parameters_flops_and_memory() {
    let dir = scratch("info");
    let out = zoo(&["info", "gpt2-small"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("124439808 total"), "{text}");
    assert!(
        text.contains("MFLOP per token") && text.contains("AdamW state"),
        "{text}"
    );
    assert_clean_error(&zoo(&["info", "gpt-mini"], &dir), 1, &["--vocab-size"]);
    let out = zoo(&["info", "gpt-mini", "--vocab-size", "65"], &dir);
    assert!(stdout(&out).contains("6 layers"), "{}", stdout(&out));
    // An ELMo task model's frozen biLM takes no gradient and no optimiser state: a 2 x 256
    // biLM of 10,000 words (8.1M parameters in all, 32.6 MB) under 0.9M that train.
    write(
        &dir,
        "elmo.toml",
        "task = \"classification\"\ninit_from = \"runs/bilm\"\n[model]\narch = \"elmo\"\nvocab_size = 10000\n[data]\ndataset = \"sst2\"\n[training]\nbatch_size = 32\nsteps = 10\n",
    );
    let out = zoo(&["info", "elmo.toml"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("weights 32.6 MB + gradients 3.7 MB + AdamW state 7.3 MB"),
        "{}",
        stdout(&out)
    );
}

/// A BERT small enough to pretrain a few steps in seconds on the embedded corpus.
const TINY_MLM: &str = r#"
seed = 11
task = "masked-lm"

[model]
arch = "bert"
preset = "bert-tiny"
n_layer = 2
d_model = 32
max_len = 128
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
steps = 20
eval_interval = 10
eval_batches = 2
seq_len = 32
"#;

/// Fine-tunes the encoder of `runs/mlm` on the embedded sums task, every pretrained weight
/// frozen, so the checkpoint's encoder must equal the pretrained one.
const TINY_FINETUNE: &str = r#"
seed = 12
task = "classification"
init_from = "runs/mlm"

[model]
arch = "bert"
preset = "bert-tiny"
n_layer = 2
d_model = 32
max_len = 128
dropout = 0.0

[data]
dataset = "embedded-sums"

[optimizer]
lr = 2e-3

[training]
batch_size = 32
steps = 12
eval_interval = 6
seq_len = 32
freeze_embeddings = true
freeze_layers = 2
"#;

/// Runs `args` (a `zoo train` command line) for `steps` steps, then resumes it to the end.
fn interrupt_and_resume(args: &[&str], steps: usize, dir: &Path) {
    let steps = steps.to_string();
    let stopped = zoo(&[args, &["--stop-after-steps", &steps]].concat(), dir);
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    let resumed = zoo(&[args, &["--resume"]].concat(), dir);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
}

/// Every float parameter of the embeddings and encoder layers, in visiting order.
fn encoder_weights(run: &Path) -> Vec<Vec<f32>> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::Tensor;
    struct Collect(Vec<Vec<f32>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(
                param
                    .val()
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec()
                    .unwrap(),
            );
        }
    }
    let loaded =
        zoo::train::tasks::encoder::run::load_encoder_run(run, None, &burn::tensor::Device::flex())
            .unwrap();
    let mut collect = Collect(Vec::new());
    loaded.model.encoder.embeddings.visit(&mut collect);
    loaded.model.encoder.layers.visit(&mut collect);
    collect.0
}

#[test]
fn an_encoder_pretrains_then_fine_tunes_from_its_encoder() {
    let dir = scratch("bert");
    write(&dir, "mlm.toml", TINY_MLM);
    write(&dir, "finetune.toml", TINY_FINETUNE);
    let pretrained = zoo(&["train", "mlm.toml"], &dir);
    assert!(pretrained.status.success(), "{}", stderr(&pretrained));
    let out = stdout(&pretrained);
    assert!(
        out.contains("masked-lm") && out.contains("val acc"),
        "{out}"
    );
    let run = dir.join("runs/mlm");
    let losses = val_losses(&run);
    assert_eq!(losses.len(), 2);
    assert!(losses[1].1 < losses[0].1, "loss should fall: {losses:?}");
    let last = metrics(&run).pop().unwrap();
    assert!(last["accuracy"].as_f64().unwrap() > 0.0, "{last}");

    // Interrupted after the first validation and resumed, pretraining draws the same batches
    // and masks and ends where the uninterrupted run does. (Both read one tokenizer file: the
    // tokenizers crate's WordPiece trainer breaks frequency ties in hash order, so two
    // trainings of a vocabulary can differ.)
    write(
        &dir,
        "mlm-file.toml",
        &TINY_MLM.replace(
            "kind = \"wordpiece\"\nvocab_size = 300",
            "kind = \"file\"\npath = \"runs/mlm/tokenizer.json\"",
        ),
    );
    let whole = zoo(&["train", "mlm-file.toml", "--run-dir", "runs/whole"], &dir);
    assert!(whole.status.success(), "{}", stderr(&whole));
    let args = ["train", "mlm-file.toml", "--run-dir", "runs/resumed"];
    interrupt_and_resume(&args, 10, &dir);
    let (whole, again) = (
        val_losses(&dir.join("runs/whole")),
        val_losses(&dir.join("runs/resumed")),
    );
    assert_eq!(again.len(), 2);
    for (a, b) in again.iter().zip(&whole) {
        assert_eq!(a.0, b.0);
        assert!((a.1 - b.1).abs() < 1e-4, "{again:?} vs {whole:?}");
    }

    let tuned = zoo(&["train", "finetune.toml"], &dir);
    assert!(tuned.status.success(), "{}", stderr(&tuned));
    let out = stdout(&tuned);
    assert!(
        out.contains("loaded the encoder from runs/mlm")
            && out.contains("new: the classification head")
            && out.contains("left behind: its masked-LM head")
            && out.contains("frozen: the embeddings and 2 layer(s)"),
        "{out}"
    );
    // The tokenizer came with the encoder.
    assert_eq!(
        std::fs::read_to_string(run.join("tokenizer.json")).unwrap(),
        std::fs::read_to_string(dir.join("runs/finetune/tokenizer.json")).unwrap()
    );
    // Loaded, frozen, trained around: the encoder is the pretrained one, to the bit.
    let before = encoder_weights(&run);
    assert!(!before.is_empty());
    assert_eq!(encoder_weights(&dir.join("runs/finetune")), before);
    // Frozen stays frozen across an interruption.
    let args = ["train", "finetune.toml", "--run-dir", "runs/ft-resumed"];
    interrupt_and_resume(&args, 6, &dir);
    assert_eq!(encoder_weights(&dir.join("runs/ft-resumed")), before);
    let valid: Vec<serde_json::Value> = metrics(&dir.join("runs/finetune"))
        .into_iter()
        .filter(|m| m["split"] == "valid")
        .collect();
    let accuracy = valid.last().unwrap()["accuracy"].as_f64().unwrap();
    assert!(valid.last().unwrap()["f1"].as_f64().is_some());

    // `zoo eval` scores the whole validation split as the last validation did.
    let eval = zoo(&["eval", "runs/finetune", "--split", "val"], &dir);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let line = stdout(&eval);
    assert!(
        line.contains(&format!("accuracy {accuracy:.2}%")) && line.contains("1000 predictions"),
        "{line} vs {accuracy}"
    );

    // The same encoder fine-tunes for tagging and for span question answering.
    for (task, dataset, head) in [
        (
            "token-classification",
            "embedded-tagging",
            "token-classification head",
        ),
        ("span-qa", "embedded-spans", "span-QA head"),
    ] {
        let recipe = TINY_FINETUNE
            .replace("\"classification\"", &format!("\"{task}\""))
            .replace("embedded-sums", dataset)
            .replace("seq_len = 32", "seq_len = 128")
            .replace("freeze_embeddings = true", "freeze_embeddings = false")
            .replace("freeze_layers = 2", "freeze_layers = 0");
        write(&dir, &format!("{task}.toml"), &recipe);
        let tuned = zoo(&["train", &format!("{task}.toml")], &dir);
        assert!(tuned.status.success(), "{task}: {}", stderr(&tuned));
        let out = stdout(&tuned);
        assert!(out.contains(&format!("new: the {head}")), "{out}");
        let run = dir.join("runs").join(task);
        let last = metrics(&run)
            .into_iter()
            .filter(|m| m["split"] == "valid")
            .last()
            .unwrap();
        assert!(last["accuracy"].as_f64().unwrap() >= 0.0, "{last}");
        let eval = zoo(&["eval", &format!("runs/{task}"), "--split", "val"], &dir);
        assert!(eval.status.success(), "{}", stderr(&eval));
        let accuracy = last["accuracy"].as_f64().unwrap();
        assert!(
            stdout(&eval).contains(&format!("accuracy {accuracy:.2}%")),
            "{}",
            stdout(&eval)
        );
    }

    // `zoo predict` applies each head to new text.
    let predict = |args: &[&str]| {
        let out = zoo(&[&["predict"][..], args].concat(), &dir);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let label = predict(&[
        "runs/finetune",
        "--input",
        "Ada had two apples and found one more.",
    ]);
    assert!(
        label.starts_with("right\t") || label.starts_with("wrong\t"),
        "{label}"
    );
    let tags = predict(&[
        "runs/token-classification",
        "--input",
        "Ada saw three foxes .",
    ]);
    assert_eq!(tags.split_whitespace().count(), 5, "{tags}");
    assert!(tags.starts_with("Ada/"), "{tags}");
    let context = "Ada had two pears and found one more , so now Ada has three pears .";
    let answer = predict(&[
        "runs/span-qa",
        "--input",
        "How many pears does Ada have now ?",
        "--context",
        context,
    ]);
    assert!(
        answer
            .split_whitespace()
            .all(|w| context.split_whitespace().any(|c| c == w)),
        "{answer}"
    );
    let filled = predict(&["runs/mlm", "--input", "Ada was a [MASK] fox ."]);
    assert!(filled.starts_with("[MASK] -> "), "{filled}");
    let refused = zoo(&["predict", "runs/mlm", "--input", "no mask here"], &dir);
    assert_clean_error(&refused, 1, &["[MASK]"]);

    // A fine-tuning recipe whose shape differs from the pretrained run's is refused by field.
    write(
        &dir,
        "wide.toml",
        &TINY_FINETUNE.replace("d_model = 32", "d_model = 64"),
    );
    let refused = zoo(&["train", "wide.toml"], &dir);
    assert_clean_error(&refused, 1, &["wide.toml", "init_from", "d_model = 64"]);
}

/// A Hugging Face BERT directory (tests/fixtures/hf, tiny random checkpoints made with
/// `transformers`) imports as a run every command works on, embeds as sentence-transformers
/// pools, and starts a fine-tuning run through `init_from`, directly or once imported.
#[test]
fn a_hugging_face_bert_imports_embeds_predicts_and_fine_tunes() {
    let dir = scratch("hf");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
    let hf = |name: &str| fixtures.join(name).to_str().unwrap().to_string();

    let imported = zoo(
        &["import", &hf("bert-classifier"), "--out", "runs/cls"],
        &dir,
    );
    assert!(imported.status.success(), "{}", stderr(&imported));
    let out = stdout(&imported);
    assert!(
        out.contains("BertForSequenceClassification") && out.contains("LABEL_0, LABEL_1, LABEL_2"),
        "{out}"
    );
    let predicted = zoo(
        &["predict", "runs/cls", "--input", "the cat sat on the mat."],
        &dir,
    );
    assert!(predicted.status.success(), "{}", stderr(&predicted));
    assert!(
        stdout(&predicted).starts_with("LABEL_"),
        "{}",
        stdout(&predicted)
    );
    let again = zoo(
        &["import", &hf("bert-classifier"), "--out", "runs/cls"],
        &dir,
    );
    assert_clean_error(&again, 1, &["runs/cls", "already holds a run"]);
    let not_hf = zoo(&["import", "runs/cls", "--out", "runs/other"], &dir);
    assert_clean_error(&not_hf, 1, &["not a Hugging Face model directory"]);

    // Mean pooling over the real tokens of the reference hidden states, as sentence-transformers
    // pools them; the imported run and the Hugging Face directory itself give it.
    let imported = zoo(&["import", &hf("bert-encoder"), "--out", "runs/enc"], &dir);
    assert!(imported.status.success(), "{}", stderr(&imported));
    let reference = fixtures.join("bert-encoder/reference.safetensors");
    let mut tensors = zoo::blocks::hf::HfTensors::open(&reference).unwrap();
    let hidden: Vec<f32> = tensors
        .take("last_hidden_state", &[3, 12, 32])
        .unwrap()
        .try_to_vec()
        .unwrap();
    // "the cat sat on the mat." is 9 tokens, [CLS] and [SEP] included.
    let expected: Vec<f64> = (0..32)
        .map(|k| (0..9).map(|t| hidden[t * 32 + k] as f64).sum::<f64>() / 9.0)
        .collect();
    let embed = |run: &str, extra: &[&str]| -> Vec<f64> {
        let args = [
            &["embed", run, "--input", "the cat sat on the mat.", "--json"],
            extra,
        ]
        .concat();
        let out = zoo(&args, &dir);
        assert!(out.status.success(), "{}", stderr(&out));
        let vectors: Vec<Vec<f64>> = serde_json::from_str(&stdout(&out)).unwrap();
        vectors.into_iter().next().unwrap()
    };
    for run in ["runs/enc", hf("bert-encoder").as_str()] {
        let mean = embed(run, &[]);
        let diff = mean
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-4, "{run}: mean pooling differs by {diff}");
    }
    let unit = embed("runs/enc", &["--normalize"]);
    let norm = unit.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    let cls = embed("runs/enc", &["--pooling", "cls"]);
    let diff = cls
        .iter()
        .zip(&hidden[..32])
        .map(|(a, b)| (a - *b as f64).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-4, "the [CLS] vector differs by {diff}");

    // Fine-tuning straight from the Hugging Face directory, every pretrained weight frozen: the
    // run takes the pretrained shape (the recipe states none of it), and its encoder is the
    // imported one to the bit.
    let recipe = format!(
        "seed = 3\ntask = \"classification\"\ninit_from = {:?}\n[model]\narch = \"bert\"\ndropout = 0.0\n[data]\ndataset = \"embedded-sums\"\n[training]\nbatch_size = 16\nsteps = 4\neval_interval = 2\nseq_len = 32\nfreeze_embeddings = true\nfreeze_layers = 2\n",
        hf("bert-encoder")
    );
    write(&dir, "tune.toml", &recipe);
    let tuned = zoo(&["train", "tune.toml"], &dir);
    assert!(tuned.status.success(), "{}", stderr(&tuned));
    assert!(
        stdout(&tuned).contains("loaded the encoder from"),
        "{}",
        stdout(&tuned)
    );
    let before = encoder_weights(&dir.join("runs/enc"));
    assert_eq!(encoder_weights(&dir.join("runs/tune")), before);
    let resolved = std::fs::read_to_string(dir.join("runs/tune/recipe.toml")).unwrap();
    assert!(
        resolved.contains("layer_norm_eps = 0.000000000001"),
        "{resolved}"
    );
    // A shape the recipe states and the checkpoint does not have is refused by name.
    write(
        &dir,
        "wide.toml",
        &recipe.replace("dropout = 0.0", "dropout = 0.0\nd_model = 64"),
    );
    let refused = zoo(&["train", "wide.toml"], &dir);
    assert_clean_error(
        &refused,
        1,
        &["wide.toml", "init_from", "d_model = 64 (the run has 32)"],
    );
}

/// A Hugging Face fixture's directory and its `reference.json`.
fn hf_fixture(name: &str) -> (PathBuf, serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name);
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    (dir, serde_json::from_str(&text).unwrap())
}

/// Token ids written as a JSON array.
fn json_ids(value: &serde_json::Value) -> Vec<u32> {
    let ids = value.as_array().unwrap();
    ids.iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

/// Hugging Face GPT-2 and Llama directories import as language-model runs; `zoo generate` at
/// temperature 0 continues the reference prompt as `transformers`' greedy `generate` did, from
/// the imported run and from the directory itself.
#[test]
fn hugging_face_decoders_import_and_generate_as_transformers_does() {
    let dir = scratch("hf-decoders");
    for (name, class) in [("gpt2", "GPT2LMHeadModel"), ("llama", "LlamaForCausalLM")] {
        let (hf, reference) = hf_fixture(name);
        let greedy = json_ids(&reference["greedy"]);
        let tokenizer = zoo::text::ZooTokenizer::load(&hf.join("tokenizer.json")).unwrap();
        let expected = tokenizer.decode(&greedy).unwrap();
        let hf = hf.to_str().unwrap();
        let run = format!("runs/{name}");
        let imported = zoo(&["import", hf, "--out", &run], &dir);
        assert!(imported.status.success(), "{}", stderr(&imported));
        assert!(stdout(&imported).contains(class), "{}", stdout(&imported));
        for source in [run.as_str(), hf] {
            let prompt = reference["prompt"].as_str().unwrap();
            let args = [
                "generate",
                source,
                "--prompt",
                prompt,
                "--max-tokens",
                "16",
                "--temperature",
                "0",
            ];
            let out = zoo(&args, &dir);
            assert!(out.status.success(), "{}", stderr(&out));
            assert_eq!(stdout(&out).trim_end_matches('\n'), expected, "{source}");
        }
        let evaluated = zoo(&["eval", &run], &dir);
        assert!(evaluated.status.success(), "{}", stderr(&evaluated));
        assert!(
            stdout(&evaluated).contains("perplexity"),
            "{}",
            stdout(&evaluated)
        );
    }
}

/// The T5 fixtures (v1.0: ReLU, tied and scaled output; v1.1: gated GELU, a head of its own)
/// and the BART one import, translate as `generate` did (from the run and from the directory
/// itself), go back out to the same tensors, and start a fine-tuning run with `init_from`: its
/// weights are the pretrained ones, moved a little.
#[test]
fn hugging_face_encoder_decoders_import_translate_export_and_fine_tune() {
    let dir = scratch("hf-seq2seq");
    for (name, class) in [
        ("t5-v1_0", "T5ForConditionalGeneration"),
        ("t5-v1_1", "T5ForConditionalGeneration"),
        ("bart", "BartForConditionalGeneration"),
    ] {
        let (hf, reference) = hf_fixture(name);
        // `generate`'s tokens after the decoder's start (BART's last is a forced </s>).
        let mut greedy = json_ids(&reference["greedy"])[1..].to_vec();
        if name == "bart" {
            greedy.pop();
        }
        let tokenizer = zoo::text::ZooTokenizer::load(&hf.join("tokenizer.json")).unwrap();
        let expected = tokenizer.decode_text(&greedy).unwrap();
        let hf = hf.to_str().unwrap();
        let run = format!("runs/{name}");
        let imported = zoo(&["import", hf, "--out", &run], &dir);
        assert!(imported.status.success(), "{}", stderr(&imported));
        assert!(stdout(&imported).contains(class), "{}", stdout(&imported));
        let source = reference["sources"][0].as_str().unwrap();
        for from in [run.as_str(), hf] {
            let out = zoo(&["translate", from, "--input", source], &dir);
            assert!(out.status.success(), "{}", stderr(&out));
            assert!(
                stdout(&out).starts_with(&expected),
                "{from}: {} does not start with {expected}",
                stdout(&out)
            );
        }
        let exported = format!("{run}-hf");
        let nan = zoo(
            &[
                "translate",
                hf,
                "--input",
                source,
                "--length-penalty",
                "NaN",
            ],
            &dir,
        );
        assert_clean_error(&nan, 1, &["--length-penalty", "NaN"]);
        let out = zoo(&["export", &run, "--out", &exported], &dir);
        assert!(out.status.success(), "{}", stderr(&out));
        let back = format!("{run}-back");
        let out = zoo(&["import", &exported, "--out", &back], &dir);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(run_tensors(&dir.join(&run)), run_tensors(&dir.join(&back)));
    }
    let recipe = format!(
        "seed = 3\ntask = \"translation\"\ninit_from = {:?}\n[model]\narch = \"transformer\"\ndropout = 0.0\n[data]\ndataset = \"synthetic-reverse\"\n[optimizer]\nlr = 1e-4\n[training]\nbatch_size = 8\nsteps = 2\neval_interval = 2\neval_batches = 1\nseq_len = 16\n",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/t5-v1_1")
    );
    write(&dir, "tune.toml", &recipe);
    let tuned = zoo(&["train", "tune.toml", "--run-dir", "runs/tuned"], &dir);
    assert!(tuned.status.success(), "{}", stderr(&tuned));
    assert!(stdout(&tuned).contains("loaded the transformer from"));
    let (pretrained, tuned) = (
        run_tensors(&dir.join("runs/t5-v1_1")),
        run_tensors(&dir.join("runs/tuned")),
    );
    assert_eq!(
        pretrained.keys().collect::<Vec<_>>(),
        tuned.keys().collect::<Vec<_>>()
    );
    let moved = pretrained
        .iter()
        .flat_map(|(path, values)| values.iter().zip(&tuned[path]))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 0.0 && moved < 1e-2, "moved by {moved}");
    // BART's decoder start (</s>) and source format (<s> ... </s>) carry over to the
    // fine-tuning run.
    let bart = recipe.replace("t5-v1_1", "bart");
    write(&dir, "tune-bart.toml", &bart);
    let tuned = zoo(
        &["train", "tune-bart.toml", "--run-dir", "runs/tuned-bart"],
        &dir,
    );
    assert!(tuned.status.success(), "{}", stderr(&tuned));
    let kept = std::fs::read_to_string(dir.join("runs/tuned-bart/recipe.toml")).unwrap();
    assert!(kept.contains("decoder_start = \"</s>\""), "{kept}");
    assert!(kept.contains("source_specials = true"), "{kept}");
    // A shape the recipe states must be the pretrained one.
    write(
        &dir,
        "bad.toml",
        &recipe.replace("dropout = 0.0", "d_model = 64"),
    );
    let bad = zoo(&["train", "bad.toml", "--run-dir", "runs/bad"], &dir);
    assert_clean_error(&bad, 1, &["does not match init_from", "d_model = 64"]);
}

/// A model id is looked up in the local Hugging Face cache (`$HF_HOME/hub`, laid out as the
/// hub's own tools lay it out), by `zoo import` and by `init_from`; an id the cache lacks, with
/// downloads off, is a clean error naming the cache. (The download itself is tested against a
/// loopback server in zoo-text.)
/// `zoo attention --json`'s weights as `[layer][head][query][key]`, and its token labels.
fn attention_json(out: &Output) -> (Vec<Vec<Vec<Vec<f64>>>>, Vec<String>, Vec<String>) {
    assert!(out.status.success(), "{}", stderr(out));
    let json: serde_json::Value = serde_json::from_str(&stdout(out)).unwrap();
    let labels = |key: &str| -> Vec<String> {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    };
    let layers = json["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| serde_json::from_value(layer["heads"].clone()).unwrap())
        .collect();
    (layers, labels("queries"), labels("keys"))
}

/// Every row of every map is a probability distribution over the keys.
fn assert_rows_are_distributions(layers: &[Vec<Vec<Vec<f64>>>]) {
    for (l, heads) in layers.iter().enumerate() {
        for (h, rows) in heads.iter().enumerate() {
            for (q, row) in rows.iter().enumerate() {
                let sum: f64 = row.iter().sum();
                assert!(
                    (sum - 1.0).abs() < 1e-5 && row.iter().all(|&w| w >= 0.0),
                    "layer {l} head {h} row {q} sums to {sum}"
                );
            }
        }
    }
}

/// The maps of a GPT-2 and a BERT checkpoint are the weights transformers returns with
/// `output_attentions=True` (tests/fixtures/hf/make_attention_reference.py); the GPT's are
/// lower-triangular, BERT's see both ways; the figures are written as asked; mistakes are named.
#[test]
fn attention_maps_are_the_weights_transformers_computes_and_are_drawn() {
    let dir = scratch("attention");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
    for (name, causal) in [("gpt2", true), ("bert-encoder", false)] {
        let fixture = fixtures.join(name);
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture.join("attention.json")).unwrap())
                .unwrap();
        let text = reference["text"].as_str().unwrap();
        let expected: Vec<Vec<Vec<Vec<f64>>>> =
            serde_json::from_value(reference["attentions"].clone()).unwrap();
        let fixture = fixture.to_str().unwrap();
        let out = zoo(&["attention", fixture, "--input", text, "--json"], &dir);
        let (layers, queries, keys) = attention_json(&out);
        assert_eq!(queries, keys);
        assert_eq!(
            queries.len(),
            reference["ids"].as_array().unwrap().len(),
            "{queries:?}"
        );
        if !causal {
            assert_eq!(
                (queries[0].as_str(), queries.last().unwrap().as_str()),
                ("[CLS]", "[SEP]")
            );
        }
        assert_eq!(layers.len(), expected.len());
        let mut largest = 0.0f64;
        for (ours, theirs) in layers
            .iter()
            .flatten()
            .flatten()
            .zip(expected.iter().flatten().flatten())
        {
            for (a, b) in ours.iter().zip(theirs) {
                largest = largest.max((a - b).abs());
            }
        }
        assert!(largest < 1e-5, "{name}: largest difference {largest}");
        assert_rows_are_distributions(&layers);
        let above_diagonal: f64 = layers
            .iter()
            .flatten()
            .flat_map(|rows| {
                rows.iter()
                    .enumerate()
                    .flat_map(|(q, row)| row[q + 1..].to_vec())
            })
            .sum();
        assert_eq!(
            above_diagonal == 0.0,
            causal,
            "{name}: {above_diagonal} above the diagonal"
        );

        // One layer, one head.
        let one = zoo(
            &[
                "attention",
                fixture,
                "--input",
                text,
                "--json",
                "--layer",
                "1",
                "--head",
                "2",
            ],
            &dir,
        );
        let (only, _, _) = attention_json(&one);
        assert_eq!(only, vec![vec![layers[1][2].clone()]]);
    }

    // Figures: every layer with a panel per head, or one layer's one head.
    let gpt2 = fixtures.join("gpt2");
    let gpt2 = gpt2.to_str().unwrap();
    let drawn = zoo(
        &[
            "attention",
            gpt2,
            "--input",
            "the cat sat",
            "--out",
            "figures",
        ],
        &dir,
    );
    assert!(drawn.status.success(), "{}", stderr(&drawn));
    for stem in ["layer0", "layer1"] {
        let png = std::fs::read(dir.join("figures").join(format!("{stem}.png"))).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(dir.join("figures").join(format!("{stem}.svg"))).unwrap();
        assert!(
            svg.contains("head 3") && svg.contains("␣c"),
            "{stem}.svg lacks its labels"
        );
    }
    let head = zoo(
        &[
            "attention",
            gpt2,
            "--input",
            "the cat",
            "--out",
            "one",
            "--layer",
            "1",
            "--head",
            "0",
        ],
        &dir,
    );
    assert!(head.status.success(), "{}", stderr(&head));
    let mut files: Vec<String> = std::fs::read_dir(dir.join("one"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["layer1-head0.png", "layer1-head0.svg"]);

    let too_deep = zoo(&["attention", gpt2, "--input", "the", "--layer", "2"], &dir);
    assert_clean_error(&too_deep, 1, &["--layer 2", "2 attention layers"]);
    let too_wide = zoo(&["attention", gpt2, "--input", "the", "--head", "4"], &dir);
    assert_clean_error(&too_wide, 1, &["--head 4", "4 heads"]);
}

/// Output piped into a reader that stops early (`zoo ... | head`) ends the process quietly.
#[test]
fn a_closed_output_pipe_ends_quietly() {
    use std::io::Read;
    let gpt2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/gpt2");
    // About 200 KB of JSON: more than a pipe holds.
    let input = "the cat sat on the mat. ".repeat(4);
    let mut child = Command::new(env!("CARGO_BIN_EXE_zoo"))
        .args([
            "attention",
            gpt2.to_str().unwrap(),
            "--input",
            &input,
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut start = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut start).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
}

#[test]
fn a_model_id_is_found_in_the_hugging_face_cache() {
    let dir = scratch("hf-cache");
    let hf_home = dir.join("hf-home");
    let snapshot = hf_home.join("hub/models--zoo-test--tiny-bert/snapshots/c0ffee");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(hf_home.join("hub/models--zoo-test--tiny-bert/refs")).unwrap();
    std::fs::write(
        hf_home.join("hub/models--zoo-test--tiny-bert/refs/main"),
        "c0ffee",
    )
    .unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/bert-encoder");
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture.join(file), snapshot.join(file)).unwrap();
    }
    let imported = zoo_with_hf_home(
        &["import", "zoo-test/tiny-bert", "--out", "runs/enc"],
        &dir,
        &hf_home,
    );
    assert!(imported.status.success(), "{}", stderr(&imported));
    assert!(
        stdout(&imported).contains("c0ffee"),
        "{}",
        stdout(&imported)
    );
    let recipe = "seed = 3\ntask = \"classification\"\ninit_from = \"zoo-test/tiny-bert\"\n[model]\narch = \"bert\"\n[data]\ndataset = \"embedded-sums\"\n[training]\nbatch_size = 16\nsteps = 2\neval_interval = 2\nseq_len = 32\n";
    write(&dir, "tune.toml", recipe);
    let tuned = zoo_with_hf_home(&["train", "tune.toml"], &dir, &hf_home);
    assert!(tuned.status.success(), "{}", stderr(&tuned));
    assert!(stdout(&tuned).contains("c0ffee"), "{}", stdout(&tuned));
    let missing = zoo_with_hf_home(
        &["import", "zoo-test/absent", "--out", "runs/x"],
        &dir,
        &hf_home,
    );
    assert_clean_error(
        &missing,
        1,
        &["zoo-test/absent", "Hugging Face cache", "hf-home"],
    );
}

/// Every parameter of the run in `run`, by path, as loaded by its task.
fn run_tensors(run: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let device = burn::tensor::Device::flex();
    let kind = zoo::train::dispatch::RunKind::of_run(run).unwrap();
    let tensors = if kind == zoo::train::dispatch::RunKind::Encoder {
        let loaded = zoo::train::tasks::encoder::load(run, None, &device).unwrap();
        zoo::blocks::hf::module_tensors(&loaded.model).unwrap()
    } else if kind == zoo::train::dispatch::RunKind::EncoderDecoder {
        let loaded = zoo::train::tasks::seq2seq::load(run, None, &device).unwrap();
        zoo::blocks::hf::module_tensors(&loaded.model).unwrap()
    } else {
        let loaded = zoo::train::tasks::lm::load(run, None, &device).unwrap();
        let zoo::train::tasks::lm::run::RunModel::Neural(model) = loaded.model else {
            panic!("a network")
        };
        zoo::blocks::hf::module_tensors(&model).unwrap()
    };
    tensors
        .into_iter()
        .map(|(path, data)| (path, data.try_to_vec().unwrap()))
        .collect()
}

/// A run exported as a Hugging Face directory and imported back is the same run to the bit
/// (but for a masked-LM's pooler, which `BertForMaskedLM` has no place for and masked-LM
/// training never reaches); what no Hugging Face class expresses is refused by name.
#[test]
fn a_run_exported_and_imported_back_is_the_same_to_the_bit() {
    let dir = scratch("export");
    let biased = TINY.replace("block_size = 32", "block_size = 32\nbias = true");
    write(&dir, "gpt.toml", &biased);
    // Llama's shape: rotary positions, RMSNorm, SwiGLU, one key/value head, an untied head.
    let llama = TINY.replace(
        "block_size = 32",
        "block_size = 32\nposition = \"rope\"\nnorm = \"rms-norm\"\nactivation = \"swiglu\"\nn_kv_head = 1\ntie_weights = false",
    );
    write(&dir, "llama.toml", &llama);
    write(&dir, "mlm.toml", TINY_MLM);
    write(&dir, "t5.toml", &tiny_seq2seq(T5_SHAPE));
    write(&dir, "bart.toml", &tiny_seq2seq(BART_SHAPE));
    for (recipe, run) in [
        ("gpt.toml", "runs/gpt"),
        ("llama.toml", "runs/llama"),
        ("mlm.toml", "runs/mlm"),
        ("t5.toml", "runs/t5"),
        ("bart.toml", "runs/bart"),
    ] {
        let trained = zoo(&["train", recipe], &dir);
        assert!(trained.status.success(), "{}", stderr(&trained));
        let hf = format!("{run}-hf");
        let exported = zoo(&["export", run, "--out", &hf], &dir);
        assert!(exported.status.success(), "{}", stderr(&exported));
        for file in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            assert!(dir.join(&hf).join(file).is_file(), "{hf}/{file}");
        }
        let back = format!("{run}-back");
        let imported = zoo(&["import", &hf, "--out", &back], &dir);
        assert!(imported.status.success(), "{}", stderr(&imported));
        let (ours, theirs) = (run_tensors(&dir.join(run)), run_tensors(&dir.join(&back)));
        assert_eq!(ours.len(), theirs.len(), "{run}");
        for (path, values) in &ours {
            if path.starts_with("encoder.pooler") {
                continue;
            }
            assert_eq!(Some(values), theirs.get(path), "{run}: {path}");
        }
        let again = zoo(&["export", run, "--out", &hf], &dir);
        assert_clean_error(&again, 1, &["already holds a model"]);
    }
    // Rotary positions with LayerNorm are neither GPT-2 nor Llama.
    write(
        &dir,
        "rope.toml",
        &TINY.replace("block_size = 32", "block_size = 32\nposition = \"rope\""),
    );
    let trained = zoo(&["train", "rope.toml"], &dir);
    assert!(trained.status.success(), "{}", stderr(&trained));
    let refused = zoo(&["export", "runs/rope", "--out", "runs/rope-hf"], &dir);
    assert_clean_error(
        &refused,
        1,
        &["runs/rope", "cannot be exported", "position = Rope"],
    );
    // T5 does not scale its attention scores.
    write(
        &dir,
        "scaled.toml",
        &tiny_seq2seq(&T5_SHAPE.replace("scaled_attention = false\n", "")),
    );
    let trained = zoo(&["train", "scaled.toml"], &dir);
    assert!(trained.status.success(), "{}", stderr(&trained));
    let refused = zoo(&["export", "runs/scaled", "--out", "runs/scaled-hf"], &dir);
    assert_clean_error(&refused, 1, &["cannot be exported", "scaled_attention"]);
}

/// A tiny encoder-decoder recipe on synthetic-reverse whose `[model]` adds `model` to the
/// transformer-tiny preset.
fn tiny_seq2seq(model: &str) -> String {
    format!(
        "seed = 5\ntask = \"translation\"\n[model]\narch = \"transformer\"\npreset = \"transformer-tiny\"\nmax_len = 32\nd_model = 32\nd_ff = 48\n{model}[tokenizer]\nkind = \"word\"\nvocab_size = 64\n[data]\ndataset = \"synthetic-reverse\"\n[training]\nbatch_size = 16\nsteps = 4\neval_interval = 4\neval_batches = 2\nseq_len = 16\n"
    )
}

/// A transformer encoder-decoder in BART's shape (as `BartForConditionalGeneration` computes it).
const BART_SHAPE: &str = "position = \"learned\"\nseparate_positions = true\nposition_offset = 2\nembedding_norm = true\noutput_bias = true\nnorm_placement = \"post\"\n";

/// A transformer encoder-decoder in T5's shape (as `T5ForConditionalGeneration` computes it).
const T5_SHAPE: &str = "position = \"relative\"\nrelative_buckets = 8\nrelative_max_distance = 16\nnorm = \"rms-norm\"\nbias = false\nscale_embeddings = false\nscaled_attention = false\nscale_output = true\n";

/// `schedule.plateau_divisor` anneals every task's learning rate, not only a language model's.
/// Here a masked-LM encoder whose rate (1e-30, everything but the head frozen, no weight decay)
/// is too small to move any weight by a float's step: every validation loss after the first is
/// no better than the best, so each divides the next interval's rate by 4.
#[test]
fn a_plateau_divides_an_encoders_learning_rate() {
    let dir = scratch("plateau");
    let recipe = TINY_MLM
        .replace(
            "lr = 2e-3",
            "lr = 1e-30\nweight_decay = 0.0\n\n[schedule]\nplateau_divisor = 4.0",
        )
        .replace(
            "steps = 20",
            "steps = 40\nfreeze_embeddings = true\nfreeze_layers = 2",
        );
    write(&dir, "still.toml", &recipe);
    let out = zoo(&["train", "still.toml"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = dir.join("runs/still");
    let losses = val_losses(&run);
    assert_eq!(losses.len(), 4, "{losses:?}");
    assert!(
        losses.iter().all(|(_, loss)| *loss == losses[0].1),
        "the weights should not move: {losses:?}"
    );
    let rates: Vec<f64> = metrics(&run)
        .into_iter()
        .filter(|m| m["split"] == "train")
        .map(|m| m["learning_rate"].as_f64().unwrap())
        .collect();
    // The first validation sets the best; the second and third divide.
    let ratios: Vec<f64> = rates.windows(2).map(|w| w[1] / w[0]).collect();
    assert_eq!(rates.len(), 4, "{rates:?}");
    for (ratio, expected) in ratios.iter().zip([1.0, 0.25, 0.25]) {
        assert!((ratio - expected).abs() < 1e-9, "{rates:?}");
    }
}

/// A language model starts from another run (GPT and LSTM) or a Hugging Face GPT-2 with
/// `init_from`: at a learning rate too small to move a weight, its validations score the
/// pretrained weights exactly as the pretrained run's last validation did; a `[model]` that
/// disagrees with the run it starts from is refused naming the field.
#[test]
fn a_language_model_fine_tunes_from_a_run_or_a_hugging_face_gpt2() {
    let dir = scratch("lm-init");
    for (name, pretrain) in [("gpt", TINY), ("lstm", TINY_RNN)] {
        write(&dir, &format!("{name}.toml"), pretrain);
        let out = zoo(&["train", &format!("{name}.toml")], &dir);
        assert!(out.status.success(), "{}", stderr(&out));
        let pretrained = val_losses(&dir.join("runs").join(name)).pop().unwrap().1;
        // The same seed and batches: the validation windows are the pretrained run's.
        let arch = if name == "gpt" { "gpt" } else { "rnn" };
        let still = pretrain
            .replace("[tokenizer]\nkind = \"char\"\n", "")
            .replace(
                "[model]\n",
                &format!("init_from = \"runs/{name}\"\n\n[model]\narch = \"{arch}\"\n#"),
            )
            .replace("lr = 3e-3", "lr = 1e-30\nweight_decay = 0.0")
            .replace("lr = 1.0", "lr = 1e-30");
        write(&dir, &format!("{name}-still.toml"), &still);
        let out = zoo(&["train", &format!("{name}-still.toml")], &dir);
        assert!(out.status.success(), "{still}\n{}", stderr(&out));
        assert!(
            stdout(&out).contains(&format!("loaded the {arch} from runs/{name}")),
            "{}",
            stdout(&out)
        );
        let first = val_losses(&dir.join(format!("runs/{name}-still")))[0].1;
        assert!(
            (first - pretrained).abs() < 1e-6,
            "{name}: {first} vs {pretrained}"
        );
    }
    let bad = TINY.replace(
        "[model]\n",
        "init_from = \"runs/gpt\"\n[model]\nn_head = 8\n",
    );
    write(&dir, "bad.toml", &bad);
    assert_clean_error(
        &zoo(&["train", "bad.toml"], &dir),
        1,
        &[
            "bad.toml",
            "does not match init_from = runs/gpt",
            "n_head = 8",
        ],
    );
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/gpt2");
    let from_hf = format!(
        "init_from = {:?}\n[model]\narch = \"gpt\"\n[data]\ndataset = \"embedded\"\n[training]\nbatch_size = 4\nsteps = 2\neval_interval = 2\neval_batches = 1\n",
        fixture.display().to_string()
    );
    write(&dir, "gpt2.toml", &from_hf);
    let out = zoo(&["train", "gpt2.toml"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("loaded the gpt from"),
        "{}",
        stdout(&out)
    );
}

/// `freeze_embeddings` and `freeze_layers` keep those parts of a GPT, an LSTM and a transformer
/// encoder-decoder bit for bit as the run they start from has them, while the rest trains.
#[test]
fn frozen_parts_of_every_family_stay_as_they_were() {
    let dir = scratch("freeze");
    let seq2seq = tiny_seq2seq("dropout = 0.1\n");
    let families: [(&str, &str, &str, fn(&str) -> bool); 3] = [
        ("gpt", TINY, "gpt", |name| {
            name.starts_with("model.Gpt.tokens.")
                || name.starts_with("model.Gpt.positions.")
                || name.starts_with("model.Gpt.blocks.0.")
        }),
        ("lstm", TINY_RNN, "rnn", |name| {
            name == "model.Rnn.embedding" || name.starts_with("model.Rnn.layers.0.")
        }),
        ("s2s", &seq2seq, "transformer", |name| {
            name.contains("_embedding.weight")
                || name.starts_with("model.Transformer.positions.")
                || name.starts_with("model.Transformer.encoder.0.")
        }),
    ];
    for (name, recipe, arch, frozen) in families {
        write(&dir, &format!("{name}.toml"), recipe);
        let out = zoo(&["train", &format!("{name}.toml")], &dir);
        assert!(out.status.success(), "{}", stderr(&out));
        let task = if arch == "transformer" {
            "task = \"translation\"\n"
        } else {
            ""
        };
        let fine_tune = format!(
            "{task}init_from = \"runs/{name}\"\n[model]\narch = \"{arch}\"\n[data]\ndataset = \"{}\"\n[training]\nbatch_size = 8\nsteps = 4\neval_interval = 2\neval_batches = 1\nfreeze_embeddings = true\nfreeze_layers = 1\n",
            if arch == "transformer" {
                "synthetic-reverse"
            } else {
                "embedded"
            }
        );
        write(&dir, &format!("{name}-frozen.toml"), &fine_tune);
        // Interrupted and resumed: what is frozen stays frozen in the resumed process too.
        let recipe = format!("{name}-frozen.toml");
        let out = zoo(&["train", &recipe, "--stop-after-steps", "2"], &dir);
        assert!(out.status.success(), "{fine_tune}\n{}", stderr(&out));
        assert!(
            stdout(&out).contains("frozen: the embeddings and 1 layer(s)"),
            "{}",
            stdout(&out)
        );
        let out = zoo(&["train", &recipe, "--resume"], &dir);
        assert!(out.status.success(), "{}", stderr(&out));
        let last = |run: &str| last_checkpoint(&dir.join("runs").join(run));
        let (before, after) = (last(name), last(&format!("{name}-frozen")));
        let (mut kept, mut moved) = (0, 0);
        for (tensor, bytes) in &before {
            if frozen(tensor) {
                assert!(after[tensor] == *bytes, "{name}: the frozen {tensor} moved");
                kept += 1;
            } else if after[tensor] != *bytes {
                moved += 1;
            }
        }
        assert!(
            kept >= 2 && moved >= 2,
            "{name}: {kept} frozen, {moved} trained"
        );
    }
    write(
        &dir,
        "deep.toml",
        &TINY.replace("steps = 6", "steps = 6\nfreeze_layers = 3"),
    );
    assert_clean_error(
        &zoo(&["train", "deep.toml"], &dir),
        1,
        &["freeze_layers (3) is more than the model's 2 layers"],
    );
    // Starting from a run, the depth is the run's.
    write(
        &dir,
        "deeper.toml",
        "init_from = \"runs/gpt\"\n[model]\narch = \"gpt\"\n[data]\ndataset = \"embedded\"\n[training]\nbatch_size = 8\nsteps = 2\nfreeze_layers = 3\n",
    );
    assert_clean_error(
        &zoo(&["train", "deeper.toml"], &dir),
        1,
        &[
            "deeper.toml",
            "freeze_layers (3) is more than the model's 2 layers",
        ],
    );
}

/// The newest model checkpoint of `run`, tensor by tensor.
fn last_checkpoint(run: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let dir = run.join("checkpoint");
    let epoch = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let file = e.unwrap().file_name().to_string_lossy().into_owned();
            file.strip_prefix("model-")?
                .strip_suffix(".bpk")?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap();
    tensors(&dir.join(format!("model-{epoch}.bpk")))
}

/// LoRA (`[finetune] lora_rank`) on a GPT and on a BERT classifier: the checkpoints hold the
/// adapters only (and the classifier's new head), `base.json` names the base; an interrupted
/// run resumes to the same validations as an uninterrupted one; the loaded run is the base
/// with the adapters merged (only the targeted matrices differ from the base), and exports as
/// such; a base whose weights have changed is refused by name.
#[test]
fn lora_runs_keep_only_their_adapters_resume_merge_and_export() {
    let dir = scratch("lora");
    let base = TINY.replace("block_size = 32", "block_size = 32\nbias = true");
    write(&dir, "gpt.toml", &base);
    let out = zoo(&["train", "gpt.toml"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let lora = base
        .replace("[tokenizer]\nkind = \"char\"\n", "")
        .replace(
            "[model]\n",
            "init_from = \"runs/gpt\"\n\n[finetune]\nlora_rank = 4\nlora_alpha = 8\n\n[model]\narch = \"gpt\"\n#",
        );
    write(&dir, "lora.toml", &lora);
    write(&dir, "lora-resumed.toml", &lora);
    let out = zoo(&["train", "lora.toml"], &dir);
    assert!(out.status.success(), "{lora}\n{}", stderr(&out));
    assert!(
        stdout(&out).contains("LoRA on 4 weight matrices: 2304 of "),
        "{}",
        stdout(&out)
    );
    write(
        &dir,
        "nowhere.toml",
        &lora.replace("lora_alpha = 8", "lora_targets = [\"attn\"]"),
    );
    assert_clean_error(
        &zoo(&["train", "nowhere.toml"], &dir),
        1,
        &["nowhere.toml", "\"attn\" names no weight matrix", "qkv"],
    );
    interrupt_and_resume(&["train", "lora-resumed.toml"], 2, &dir);
    let run = dir.join("runs/lora");
    assert_eq!(val_losses(&run), val_losses(&dir.join("runs/lora-resumed")));
    assert!(run.join("base.json").is_file());
    let saved = last_checkpoint(&run);
    assert_eq!(saved.len(), 8, "{:?}", saved.keys());
    assert!(
        saved.keys().all(|name| name.contains(".lora.")),
        "{saved:?}"
    );

    // Loaded, the run is its base with the adapters merged into qkv and proj.
    let (merged, pretrained) = (run_tensors(&run), run_tensors(&dir.join("runs/gpt")));
    assert_eq!(merged.len(), pretrained.len());
    for (path, values) in &merged {
        let targeted = path.ends_with("qkv.weight") || path.ends_with("proj.weight");
        assert_eq!(targeted, pretrained[path] != *values, "{path}");
    }
    let out = zoo(&["export", "runs/lora", "--out", "runs/lora-hf"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = zoo(&["import", "runs/lora-hf", "--out", "runs/lora-back"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(run_tensors(&dir.join("runs/lora-back")) == merged);

    // A BERT classifier: LoRA on the pretrained encoder, its new head trained whole.
    write(&dir, "mlm.toml", TINY_MLM);
    let out = zoo(&["train", "mlm.toml"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    write(
        &dir,
        "classify.toml",
        "seed = 3\ntask = \"classification\"\ninit_from = \"runs/mlm\"\n[finetune]\nlora_rank = 2\n[model]\narch = \"bert\"\ndropout = 0.0\n[data]\ndataset = \"embedded-sums\"\n[training]\nbatch_size = 16\nsteps = 4\neval_interval = 2\nseq_len = 32\n",
    );
    let out = zoo(&["train", "classify.toml"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let saved = last_checkpoint(&dir.join("runs/classify"));
    let (adapters, head): (Vec<&String>, Vec<&String>) =
        saved.keys().partition(|name| name.contains(".lora."));
    assert_eq!(adapters.len(), 8, "{saved:?}");
    assert!(
        !head.is_empty() && head.iter().all(|name| name.contains(".head.")),
        "{head:?}"
    );
    let out = zoo(&["eval", "runs/classify"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));

    // A GPT classifier: LoRA on the language model; the token embedding (three new tokens'
    // rows in it) and the new head train whole. Loaded, it scores what training validated.
    write(
        &dir,
        "gpt-classify.toml",
        "seed = 3\ntask = \"classification\"\ninit_from = \"runs/gpt\"\n[finetune]\nlora_rank = 2\n[model]\narch = \"gpt\"\ndropout = 0.0\n[data]\ndataset = \"embedded-sums\"\n[training]\nbatch_size = 16\nsteps = 4\neval_interval = 2\n",
    );
    let out = zoo(&["train", "gpt-classify.toml"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("the token embedding trains whole"),
        "{}",
        stdout(&out)
    );
    let saved = last_checkpoint(&dir.join("runs/gpt-classify"));
    let (adapters, whole): (Vec<&String>, Vec<&String>) =
        saved.keys().partition(|name| name.contains(".lora."));
    assert_eq!(adapters.len(), 8, "{saved:?}");
    assert!(
        whole
            .iter()
            .all(|name| name.starts_with("model.head.") || name.contains(".tokens.")),
        "{whole:?}"
    );
    assert!(
        whole.iter().any(|name| name.contains(".tokens.")),
        "{whole:?}"
    );
    let validated = metrics(&dir.join("runs/gpt-classify"))
        .into_iter()
        .rfind(|m| m["split"] == "valid")
        .unwrap()["accuracy"]
        .as_f64()
        .unwrap();
    let out = zoo(&["eval", "runs/gpt-classify"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("accuracy {validated:.2}%")),
        "{validated} vs {}",
        stdout(&out)
    );
    let out = zoo(
        &[
            "predict",
            "runs/gpt-classify",
            "--input",
            "Ada had two apples and found three more, so now Ada has five apples.",
        ],
        &dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_label_probabilities(&stdout(&out), &["right", "wrong"]);

    // The base's weights replaced by another run's of the same shape.
    write(&dir, "other.toml", &base.replace("seed = 7", "seed = 8"));
    let out = zoo(&["train", "other.toml"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let epoch = |base: &str| {
        let text = std::fs::read_to_string(dir.join(base).join("base.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["epoch"].clone()
    };
    let pinned = format!("model-{}.bpk", epoch("runs/lora"));
    std::fs::copy(
        dir.join("runs/other/checkpoint").join(&pinned),
        dir.join("runs/gpt/checkpoint").join(&pinned),
    )
    .unwrap();
    assert_clean_error(
        &zoo(&["eval", "runs/lora"], &dir),
        1,
        &["runs/lora", "weights have changed", "base.json"],
    );
}

/// A GPT classifies as the GPT-1 paper fine-tunes it: from a language-model run, with three
/// framing tokens added to its vocabulary and a new head, with and without the auxiliary
/// language-model loss (which adds lambda times the LM loss to the training loss and nothing
/// to validation); `zoo eval` scores it, and what it cannot be is refused by name.
#[test]
fn a_gpt_classifies_with_an_auxiliary_language_model_loss() {
    let dir = scratch("gpt-classify");
    write(&dir, "gpt.toml", TINY);
    let out = zoo(&["train", "gpt.toml"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let classifier = |lambda: &str| {
        format!(
            "seed = 3\ntask = \"classification\"\ninit_from = \"runs/gpt\"\n[model]\narch = \"gpt\"\ndropout = 0.0\n[data]\ndataset = \"embedded-sums\"\n[training]\nbatch_size = 16\nsteps = 4\neval_interval = 2\nlm_loss_weight = {lambda}\n"
        )
    };
    write(&dir, "plain.toml", &classifier("0.0"));
    write(&dir, "aux.toml", &classifier("0.5"));
    for recipe in ["plain.toml", "aux.toml"] {
        let out = zoo(&["train", recipe], &dir);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("new: 3 token(s)"), "{}", stdout(&out));
    }
    let first = |run: &str, split: &str| {
        metrics(&dir.join("runs").join(run))
            .into_iter()
            .find(|m| m["split"] == split)
            .unwrap()["loss"]
            .as_f64()
            .unwrap()
    };
    // The same start and batches: the auxiliary term is what the training losses differ by
    // (half a character-level LM loss of about 3), and validation leaves it out.
    let extra = first("aux", "train") - first("plain", "train");
    assert!(extra > 1.0, "{extra}");
    assert!((first("aux", "valid") - first("plain", "valid")).abs() < 0.5);
    let recipe = std::fs::read_to_string(dir.join("runs/aux/recipe.toml")).unwrap();
    let base = std::fs::read_to_string(dir.join("runs/gpt/recipe.toml")).unwrap();
    let vocab = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("vocab_size = "))
            .unwrap()
            .parse::<usize>()
            .unwrap()
    };
    assert_eq!(vocab(&recipe), vocab(&base) + 3);
    let out = zoo(&["eval", "runs/aux"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("accuracy"), "{}", stdout(&out));
    let out = zoo(
        &[
            "predict",
            "runs/aux",
            "--input",
            "Ada had two apples and found three more, so now Ada has five apples.",
        ],
        &dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_label_probabilities(&stdout(&out), &["right", "wrong"]);
    assert_clean_error(
        &zoo(&["generate", "runs/aux"], &dir),
        1,
        &["runs/aux", "is a GPT classifier"],
    );
    write(
        &dir,
        "lm.toml",
        &TINY.replace("steps = 6", "steps = 6\nlm_loss_weight = 0.5"),
    );
    assert_clean_error(
        &zoo(&["train", "lm.toml"], &dir),
        1,
        &["lm.toml", "training.lm_loss_weight does not apply"],
    );
}

/// ELMo features: a biLM trains with `zoo train` (both directions' loss, perplexity by
/// `zoo eval`); classifiers and a tagger on its frozen layers train, report what they load and
/// evaluate; what cannot give features is refused by name.
#[test]
fn elmo_features_classify_and_tag() {
    let dir = scratch("elmo");
    let bilm = TINY_RNN
        .replace("d_hidden = 48", "d_hidden = 24\nbidirectional = true")
        .replace("kind = \"char\"", "kind = \"byte-bpe\"\nvocab_size = 400")
        .replace(
            "steps = 60\neval_interval = 20",
            "steps = 8\neval_interval = 4",
        );
    write(&dir, "bilm.toml", &bilm);
    write(
        &dir,
        "lm.toml",
        &TINY_RNN.replace(
            "steps = 60\neval_interval = 20",
            "steps = 2\neval_interval = 2",
        ),
    );
    for recipe in ["bilm.toml", "lm.toml"] {
        let out = zoo(&["train", recipe], &dir);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // The sample comes from the forward stack; the loss falls.
    let losses: Vec<f64> = metrics(&dir.join("runs/bilm"))
        .iter()
        .filter(|m| m["split"] == "valid")
        .map(|m| m["loss"].as_f64().unwrap())
        .collect();
    assert!(losses[1] < losses[0], "{losses:?}");
    let out = zoo(&["eval", "runs/bilm"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("perplexity"), "{}", stdout(&out));

    let task = |task: &str, dataset: &str, extra: &str| {
        format!(
            "seed = 3\ntask = \"{task}\"\ninit_from = \"runs/bilm\"\n[model]\narch = \"elmo\"\nd_task = 16\ndropout = 0.1\n{extra}[data]\ndataset = \"{dataset}\"\n[training]\nbatch_size = 16\nsteps = 6\neval_interval = 3\n"
        )
    };
    write(
        &dir,
        "elmo.toml",
        &task("classification", "embedded-sums", ""),
    );
    write(
        &dir,
        "plain.toml",
        &task(
            "classification",
            "embedded-sums",
            "features = \"embeddings\"\n",
        ),
    );
    write(
        &dir,
        "tagger.toml",
        &task("token-classification", "embedded-tagging", ""),
    );
    let mixed = "word embeddings and a scalar mix of its 3 layers";
    for (recipe, reads) in [
        ("elmo.toml", mixed),
        ("plain.toml", "word embeddings ("),
        ("tagger.toml", mixed),
    ] {
        let out = zoo(&["train", recipe], &dir);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("loaded the biLM from runs/bilm"), "{text}");
        assert!(text.contains(&format!("reads its {reads}")), "{text}");
        let run = format!("runs/{}", recipe.trim_end_matches(".toml"));
        let out = zoo(&["eval", &run], &dir);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("accuracy"), "{}", stdout(&out));
        // The last validation is what `zoo eval` finds on the same split.
        let last = metrics(&dir.join(&run))
            .into_iter()
            .rfind(|m| m["split"] == "valid")
            .unwrap();
        let accuracy = last["accuracy"].as_f64().unwrap();
        assert!(
            stdout(&out).contains(&format!("{accuracy:.2}")),
            "{accuracy} vs {}",
            stdout(&out)
        );
    }
    // `zoo predict`: a label with every label's probability (summing to one), a tag per word.
    for run in ["runs/elmo", "runs/plain"] {
        let out = zoo(
            &[
                "predict",
                run,
                "--input",
                "Ada had two apples and found three more, so now Ada has five apples.",
            ],
            &dir,
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_label_probabilities(&stdout(&out), &["right", "wrong"]);
    }
    let out = zoo(
        &[
            "predict",
            "runs/tagger",
            "--input",
            "Ada saw a cat in Paris",
        ],
        &dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let tagged = stdout(&out);
    let words: Vec<&str> = tagged.split_whitespace().collect();
    assert_eq!(words.len(), 6, "{tagged}");
    assert!(
        words[0].starts_with("Ada/") && words[5].starts_with("Paris/"),
        "{tagged}"
    );
    assert!(
        words
            .iter()
            .all(|w| ["NAME", "ANIMAL", "NUMBER", "PLACE", "O"]
                .contains(&w.split_once('/').unwrap().1)),
        "{tagged}"
    );
    assert_clean_error(
        &zoo(
            &["score", "runs/bilm", "--input", "Ada had two apples"],
            &dir,
        ),
        1,
        &["a biLM predicts every token both ways"],
    );
    assert_clean_error(
        &zoo(&["generate", "runs/elmo"], &dir),
        1,
        &["runs/elmo", "task model on ELMo features"],
    );
    write(
        &dir,
        "unidirectional.toml",
        &task("classification", "embedded-sums", "").replace("runs/bilm", "runs/lm"),
    );
    assert_clean_error(
        &zoo(&["train", "unidirectional.toml"], &dir),
        1,
        &["runs/lm", "is not a biLM run"],
    );
    write(
        &dir,
        "reshaped.toml",
        &task("classification", "embedded-sums", "d_hidden = 32\n"),
    );
    assert_clean_error(
        &zoo(&["train", "reshaped.toml"], &dir),
        1,
        &["reshaped.toml", "model.d_hidden = 32: the biLM has 24"],
    );
    write(
        &dir,
        "alone.toml",
        &task("classification", "embedded-sums", "").replace("init_from = \"runs/bilm\"\n", ""),
    );
    assert_clean_error(
        &zoo(&["train", "alone.toml"], &dir),
        1,
        &["alone.toml", "reads a trained biLM: set init_from"],
    );
}

/// `zoo predict`'s line for a classified text: the likeliest label and its probability, then
/// each of `labels` with its probability, the probabilities summing to one.
fn assert_label_probabilities(line: &str, labels: &[&str]) {
    let fields: Vec<&str> = line.trim().split('\t').collect();
    assert_eq!(fields.len(), 3, "{line}");
    assert!(labels.contains(&fields[0]), "{line}");
    let all = fields[2].trim_matches(|c| c == '(' || c == ')');
    let probs: Vec<(&str, f64)> = all
        .split(", ")
        .map(|pair| {
            let (label, p) = pair.split_once(' ').unwrap();
            (label, p.parse().unwrap())
        })
        .collect();
    assert_eq!(probs.len(), labels.len(), "{line}");
    assert_eq!(probs[0].0, fields[0], "{line}");
    let total: f64 = probs.iter().map(|(_, p)| p).sum();
    assert!((total - 1.0).abs() < 0.003, "{line}");
}

/// `zoo score`: a language model's per-token log-probabilities of a text, and its perplexity,
/// which is `zoo eval`'s over the same text, for a GPT, a recurrent LM and an n-gram model; as
/// a table, as JSON and coloured.
#[test]
fn token_scores_give_the_perplexity_eval_gives() {
    let dir = scratch("score");
    let val = zoo_text::DatasetRegistry::builtin()
        .load_split("embedded", "val", &zoo_text::DataDir::resolve(None))
        .unwrap();
    write(&dir, "val.txt", &val);
    write(&dir, "gpt.toml", TINY);
    write(
        &dir,
        "rnn.toml",
        &TINY_RNN.replace(
            "steps = 60\neval_interval = 20",
            "steps = 4\neval_interval = 2",
        ),
    );
    write(
        &dir,
        "ngram.toml",
        "[model]\narch = \"ngram\"\norder = 3\n[tokenizer]\nkind = \"char\"\n[data]\ndataset = \"embedded\"\n[sample]\ntokens = 0\n",
    );
    let perplexity = |text: &str| -> String {
        let at = text.find("perplexity ").expect("a perplexity") + "perplexity ".len();
        text[at..].split_whitespace().next().unwrap().to_string()
    };
    for run in ["gpt", "rnn", "ngram"] {
        let out = zoo(&["train", &format!("{run}.toml")], &dir);
        assert!(out.status.success(), "{}", stderr(&out));
        let run_dir = format!("runs/{run}");
        let eval = zoo(&["eval", &run_dir, "--split", "val"], &dir);
        assert!(eval.status.success(), "{}", stderr(&eval));
        let table = zoo(&["score", &run_dir, "--file", "val.txt"], &dir);
        assert!(table.status.success(), "{}", stderr(&table));
        let (eval, table) = (stdout(&eval), stdout(&table));
        assert_eq!(
            perplexity(&eval),
            perplexity(&table),
            "{run}: {eval} vs {table}"
        );
        let json = zoo(&["score", &run_dir, "--file", "val.txt", "--json"], &dir);
        assert!(json.status.success(), "{}", stderr(&json));
        let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        let tokens = report["tokens"].as_array().unwrap();
        let log_probs: Vec<f64> = tokens
            .iter()
            .map(|t| t["log_prob"].as_f64().unwrap())
            .collect();
        assert!(log_probs.iter().all(|&p| p <= 0.0), "{run}");
        // Its perplexity is the exponent of the mean negative log-probability.
        let mean = -log_probs.iter().sum::<f64>() / log_probs.len() as f64;
        let reported = report["perplexity"].as_f64().unwrap();
        assert!((mean.exp() - reported).abs() < 1e-9 * reported, "{run}");
        // A character model's tokens are the text's characters, in order.
        let first = tokens[0]["position"].as_u64().unwrap() as usize;
        let chars: Vec<char> = val.chars().collect();
        assert_eq!(
            tokens[0]["token"].as_str().unwrap(),
            chars[first].to_string(),
            "{run}"
        );
        let coloured = zoo(
            &[
                "score",
                &run_dir,
                "--input",
                "Ada had two apples and found three more.",
                "--color",
            ],
            &dir,
        );
        assert!(coloured.status.success(), "{}", stderr(&coloured));
        assert!(stdout(&coloured).contains("\x1b[3"), "{run}");
    }
    // A text shorter than a window is scored whole; one token is nothing to score.
    let short = zoo(&["score", "runs/rnn", "--input", "Ada had"], &dir);
    assert!(
        stdout(&short).contains("over 6 of the text's 7 tokens"),
        "{}",
        stdout(&short)
    );
    assert_clean_error(
        &zoo(&["score", "runs/gpt", "--input", "A"], &dir),
        1,
        &[
            "the text",
            "1 token(s): scoring needs a token and one after it",
        ],
    );
}

/// A tiny BERT classifier of `layers` layers on embedded-sums.
fn tiny_classifier(layers: usize) -> String {
    format!(
        "seed = 3\ntask = \"classification\"\n[model]\narch = \"bert\"\npreset = \"bert-tiny\"\nn_layer = {layers}\nd_model = 32\nmax_len = 64\ndropout = 0.0\n[tokenizer]\nkind = \"wordpiece\"\nvocab_size = 300\n[data]\ndataset = \"embedded-sums\"\n[training]\nbatch_size = 16\nsteps = 10\neval_interval = 5\neval_batches = 4\nseq_len = 32\n"
    )
}

/// Distillation (`task = "distillation"`, `teacher = RUN`): a student of
/// `init = "every-other-layer"` is the teacher's embeddings, layers 0 and 2 of 3, pooler and
/// head (at a rate too small to move a weight it stays so), and its run is an ordinary
/// classification run; a fresh student with alpha 0, cosine 0 and temperature 1 trains exactly
/// as the same recipe without a teacher; what cannot teach is refused by name.
#[test]
fn a_student_learns_from_its_teacher() {
    let dir = scratch("distil");
    write(&dir, "teacher.toml", &tiny_classifier(3));
    let out = zoo(&["train", "teacher.toml"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let student = |distillation: &str, model: &str, optimizer: &str| {
        tiny_classifier(1)
            .replace(
                "task = \"classification\"",
                "task = \"distillation\"\nteacher = \"runs/teacher\"",
            )
            .replace("[tokenizer]\nkind = \"wordpiece\"\nvocab_size = 300\n", "")
            .replace(
                "[model]\n",
                &format!("[distillation]\n{distillation}[optimizer]\n{optimizer}[model]\n"),
            )
            .replace(
                "preset = \"bert-tiny\"\nn_layer = 1\nd_model = 32\nmax_len = 64\n",
                model,
            )
    };
    write(
        &dir,
        "still.toml",
        &student(
            "init = \"every-other-layer\"\ncosine = 1.0\n",
            "",
            "lr = 1e-30\nweight_decay = 0.0\n",
        ),
    );
    let out = zoo(&["train", "still.toml"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("the student starts from runs/teacher's embeddings, layers 0, 2, 4"),
        "{}",
        stdout(&out)
    );
    let (teacher, still) = (
        last_checkpoint(&dir.join("runs/teacher")),
        last_checkpoint(&dir.join("runs/still")),
    );
    assert_eq!(
        teacher.len() - still.len(),
        12,
        "one layer of 12 tensors fewer"
    );
    for (name, bytes) in &still {
        let theirs = name.replace("layers.1.", "layers.2.");
        assert!(
            teacher[&theirs] == *bytes,
            "{name} is not the teacher's {theirs}"
        );
    }
    let recipe = std::fs::read_to_string(dir.join("runs/still/recipe.toml")).unwrap();
    assert!(
        recipe.contains("task = \"classification\"\nteacher = \"runs/teacher\""),
        "{recipe}"
    );
    let out = zoo(&["eval", "runs/still"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));

    // Nothing from the teacher: plain training.
    let plain_student = student(
        "temperature = 1.0\nalpha = 0.0\nbeta = 1.0\n",
        "preset = \"bert-tiny\"\nn_layer = 1\nd_model = 32\nmax_len = 64\n",
        "",
    );
    write(&dir, "untaught.toml", &plain_student);
    write(
        &dir,
        "plain.toml",
        &tiny_classifier(1).replace("[model]\n", "[optimizer]\n[model]\n"),
    );
    for recipe in ["untaught.toml", "plain.toml"] {
        let out = zoo(&["train", recipe], &dir);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let (untaught, plain) = (
        val_losses(&dir.join("runs/untaught")),
        val_losses(&dir.join("runs/plain")),
    );
    // Equal up to the last bits: flex's parallel reductions on this path are not bit for bit
    // reproducible from one process to the next (the same recipe twice differs by ~1e-7).
    assert_eq!(untaught.len(), 2);
    for ((step, a), (other, b)) in untaught.iter().zip(&plain) {
        assert_eq!(step, other);
        assert!((a - b).abs() < 1e-6 * b.abs(), "step {step}: {a} vs {b}");
    }

    write(&dir, "gpt.toml", TINY);
    let out = zoo(&["train", "gpt.toml"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    write(
        &dir,
        "bad.toml",
        &plain_student.replace("runs/teacher", "runs/gpt"),
    );
    assert_clean_error(
        &zoo(&["train", "bad.toml"], &dir),
        1,
        &["runs/gpt", "not a BERT run"],
    );
    write(
        &dir,
        "cold.toml",
        &plain_student
            .replace(
                "alpha = 0.0\n",
                "alpha = 0.0\ninit = \"every-other-layer\"\ncosine = 0.0\n",
            )
            .replace("n_layer = 1\n", "n_layer = 3\n"),
    );
    assert_clean_error(
        &zoo(&["train", "cold.toml"], &dir),
        1,
        &[
            "cold.toml",
            "does not match every other layer of the teacher runs/teacher",
            "n_layer = 3 (the run has 2)",
        ],
    );
    // Masked-LM data keys follow the teacher's task, known once it is read.
    write(
        &dir,
        "extra.toml",
        &plain_student.replace("[training]", "extra_train = [\"embedded\"]\n[training]"),
    );
    assert_clean_error(
        &zoo(&["train", "extra.toml"], &dir),
        1,
        &[
            "extra.toml",
            "data.extra_train are for task = \"masked-lm\", not \"classification\" (the teacher's task)",
        ],
    );
}

/// A masked-LM encoder whose weights cannot move (rate 1e-30, everything but the head frozen):
/// its validation metrics repeat, so early stopping on them ends the run after `patience`
/// validations without improvement.
fn still_encoder(early_stopping: &str) -> String {
    TINY_MLM
        .replace("lr = 2e-3", "lr = 1e-30\nweight_decay = 0.0")
        .replace(
            "steps = 20",
            &format!("steps = 60\nfreeze_embeddings = true\nfreeze_layers = 2\nearly_stopping = {early_stopping}"),
        )
}

/// Early stopping ends a run where its metric stopped improving, records it in summary.json,
/// stops a resumed run at the same place, and names the metrics a run has when asked for one
/// it lacks.
#[test]
fn early_stopping_ends_a_run_when_its_metric_stops_improving() {
    let dir = scratch("early");
    write(
        &dir,
        "loss.toml",
        &still_encoder("{ metric = \"loss\", patience = 2 }"),
    );
    let out = zoo(&["train", "loss.toml"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("early stopping: loss has not improved"),
        "{}",
        stdout(&out)
    );
    let run = dir.join("runs/loss");
    assert_eq!(
        val_losses(&run).len(),
        3,
        "the best at the first validation, then two more: {:?}",
        val_losses(&run)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 30);
    assert_eq!(summary["early_stop"]["best_epoch"], 1);
    assert_eq!(summary["early_stop"]["stopped_epoch"], 3);
    assert!(run.join("checkpoint/model-3.bpk").exists());
    assert_clean_error(
        &zoo(&["train", "loss.toml", "--resume"], &dir),
        1,
        &["is already complete (30 steps)"],
    );

    // Interrupted after the second validation, the run resumes and stops at the third, as the
    // uninterrupted run did: the validations before the interruption count.
    let out = zoo(
        &[
            "train",
            "loss.toml",
            "--run-dir",
            "split",
            "--stop-after-steps",
            "20",
        ],
        &dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = zoo(
        &["train", "loss.toml", "--run-dir", "split", "--resume"],
        &dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let resumed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("split/summary.json")).unwrap())
            .unwrap();
    // (Each run trains its own WordPiece vocabulary, whose ties fall in hash order, so the
    // values may differ in their last digits; where the runs stop may not.)
    for key in ["best_epoch", "stopped_epoch"] {
        assert_eq!(
            resumed["early_stop"][key], summary["early_stop"][key],
            "{key}"
        );
    }
    assert_eq!(resumed["steps"], 30);

    // Accuracy is watched as higher-is-better; a metric the run does not have is named.
    write(
        &dir,
        "accuracy.toml",
        &still_encoder("{ metric = \"accuracy\", patience = 1 }"),
    );
    let out = zoo(&["train", "accuracy.toml"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(val_losses(&dir.join("runs/accuracy")).len(), 2);
    write(
        &dir,
        "typo.toml",
        &still_encoder("{ metric = \"acc\", patience = 1 }"),
    );
    assert_clean_error(
        &zoo(&["train", "typo.toml"], &dir),
        1,
        &["early_stopping.metric = \"acc\"", "accuracy", "loss"],
    );
    write(
        &dir,
        "zero.toml",
        &still_encoder("{ metric = \"loss\", patience = 0 }"),
    );
    assert_clean_error(
        &zoo(&["train", "zero.toml"], &dir),
        1,
        &["zero.toml", "early_stopping.patience must be at least 1"],
    );
}

fn scores(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("scores.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The shipped reverse recipe, interrupted and resumed: the decoded validation split comes out
/// reversed (exact match), `zoo eval` reproduces the figure, `zoo translate` reverses a sentence
/// and a file, beam search included.
#[test]
fn an_encoder_decoder_learns_to_reverse_and_translates() {
    let dir = scratch("reverse");
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/seq2seq/reverse.toml");
    let recipe = recipe.to_str().unwrap();
    interrupt_and_resume(&["train", recipe, "--run-dir", "run"], 400, &dir);
    let run = dir.join("run");
    let trained = scores(&run);
    assert_eq!(trained.len(), 1, "scored once, at the end");
    let exact = trained[0]["exact_match"].as_f64().unwrap();
    assert!(exact >= 95.0, "exact match {exact}");
    assert_eq!(trained[0]["strategy"], "greedy");

    let eval = zoo(&["eval", "run", "--beam", "1"], &dir);
    assert!(eval.status.success(), "{}", stderr(&eval));
    assert!(stdout(&eval).contains("exact match"), "{}", stdout(&eval));
    assert_eq!(scores(&run)[1]["exact_match"], trained[0]["exact_match"]);

    let one = zoo(&["translate", "run", "--input", "a b c d e"], &dir);
    assert!(one.status.success(), "{}", stderr(&one));
    assert_eq!(stdout(&one).trim(), "e d c b a");
    write(&dir, "in.txt", "a b\nc d e f\nl k j\n");
    let file = zoo(
        &[
            "translate",
            "run",
            "--file",
            "in.txt",
            "--output",
            "out.txt",
            "--beam",
            "3",
        ],
        &dir,
    );
    assert!(file.status.success(), "{}", stderr(&file));
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).unwrap(),
        "b a\nf e d c\nj k l\n"
    );

    // Cross-attention: from each output token (and the end) to each source token.
    let maps = zoo(
        &["attention", "run", "--input", "a b c d e", "--json"],
        &dir,
    );
    let (layers, queries, keys) = attention_json(&maps);
    assert_eq!(queries, ["e", "d", "c", "b", "a", "</s>"]);
    assert_eq!(keys, ["a", "b", "c", "d", "e", "</s>"]);
    assert_eq!(layers.len(), 2, "one map per decoder layer");
    assert_rows_are_distributions(&layers);

    let not_seq2seq = zoo(&["translate", "nowhere", "--input", "a"], &dir);
    assert_clean_error(&not_seq2seq, 1, &["not an encoder-decoder run"]);
    let no_split = zoo(&["eval", "run", "--split", "dev"], &dir);
    assert_clean_error(&no_split, 1, &["dev", "train, val, test"]);
}

/// Separate source and target vocabularies train and are saved apart; sharing one embedding
/// matrix between them is refused by name.
#[test]
fn separate_vocabularies_need_separate_embeddings() {
    let dir = scratch("separate");
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/seq2seq/reverse.toml"),
    )
    .unwrap()
    .replace("steps = 1200", "steps = 4")
    .replace("[data]", "[target_tokenizer]\nkind = \"char\"\n\n[data]");
    let shared = write(&dir, "shared.toml", &base);
    let refused = zoo(&["train", shared.to_str().unwrap(), "--run-dir", "a"], &dir);
    assert_clean_error(&refused, 1, &["share_embeddings", "src_vocab_size"]);
    let separate = write(
        &dir,
        "separate.toml",
        &base.replace(
            "max_len = 32",
            "max_len = 32\nshare_embeddings = false\ntie_output = false",
        ),
    );
    let trained = zoo(
        &["train", separate.to_str().unwrap(), "--run-dir", "b"],
        &dir,
    );
    assert!(trained.status.success(), "{}", stderr(&trained));
    assert!(dir.join("b/target_tokenizer.json").is_file());
    let out = zoo(&["translate", "b", "--input", "a b"], &dir);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The RNN encoder-decoder (bidirectional GRU, additive attention) learns the reverse task too.
#[test]
fn an_rnn_encoder_decoder_learns_to_reverse() {
    let dir = scratch("reverse-rnn");
    let recipe = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/seq2seq/reverse.toml"),
    )
    .unwrap()
    .replace("arch = \"transformer\"", "arch = \"rnn-attention\"")
    .replace(
        "preset = \"transformer-tiny\"",
        "preset = \"rnn-attention-tiny\"",
    );
    let recipe = write(&dir, "reverse-rnn.toml", &recipe);
    let trained = zoo(
        &["train", recipe.to_str().unwrap(), "--run-dir", "run"],
        &dir,
    );
    assert!(trained.status.success(), "{}", stderr(&trained));
    let exact = scores(&dir.join("run"))[0]["exact_match"].as_f64().unwrap();
    assert!(exact >= 95.0, "exact match {exact}");

    // Its one attention map, a row per decoding step, aligns each output word with the source
    // word it copies: the anti-diagonal.
    let maps = zoo(
        &["attention", "run", "--input", "a b c d e f", "--json"],
        &dir,
    );
    let (layers, queries, _) = attention_json(&maps);
    assert_eq!(queries, ["f", "e", "d", "c", "b", "a", "</s>"]);
    assert_eq!((layers.len(), layers[0].len()), (1, 1));
    assert_rows_are_distributions(&layers);
    for (q, row) in layers[0][0].iter().take(6).enumerate() {
        let focus = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        assert_eq!(
            focus,
            5 - q,
            "output {q} attends most to source {focus}: {row:?}"
        );
    }
}

const TWO_TINY_RUNS: &str = r#"
description = "two tiny runs"
seed = 3

[budget]
flops = 2.5e9

[set]
"training.eval_interval" = 4
"sample.tokens" = 0

[[run]]
name = "gpt"
recipe = "gpt.toml"

[[run]]
name = "gru"
recipe = "gru.toml"
"#;

fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn compare_spends_equal_flops_reports_and_skips_finished_runs_on_restart() {
    let dir = scratch("compare");
    write(&dir, "gpt.toml", TINY);
    write(
        &dir,
        "gru.toml",
        &TINY_RNN.replace("lstm-small", "gru-small"),
    );
    write(&dir, "cmp.toml", TWO_TINY_RUNS);
    let out = zoo(&["compare", "cmp.toml"], &dir);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let root = dir.join("runs/compare/cmp");

    // Budget accounting: each run stops within one step of the FLOPs budget, never past it,
    // and its log ends at the step its summary reports.
    let budget = 2.5e9;
    let mut steps = Vec::new();
    for name in ["gpt", "gru"] {
        let s = summary(&root.join(name));
        let per_step =
            s["flops_per_token"].as_f64().unwrap() * s["tokens_per_step"].as_f64().unwrap();
        let spent = s["flops"].as_f64().unwrap();
        assert!(spent <= budget && budget - spent < per_step, "{name}: {s}");
        let n = s["steps"].as_u64().unwrap();
        assert!(n > 4, "{name} should take several steps: {s}");
        let last = metrics(&root.join(name)).last().unwrap()["step"].as_u64();
        assert_eq!(last, Some(n), "{name}");
        for key in [
            "params",
            "non_embedding_params",
            "tokens_per_second",
            "wall_seconds",
            "peak_rss_bytes",
        ] {
            assert!(
                s[key].as_f64().is_some_and(|v| v > 0.0),
                "{name}: {key} in {s}"
            );
        }
        steps.push(n);
    }
    assert_ne!(
        steps[0], steps[1],
        "the two models cost different FLOPs per step"
    );

    // The report: the promised columns, the best value marked, the commands, the plots.
    let report = std::fs::read_to_string(root.join("report.md")).unwrap();
    for column in [
        "| run | params | non-embedding | FLOPs/token | steps | tokens | training FLOPs | tokens/s | peak RSS (MiB) | training (s) | wall (s) | best | final | best ppl | final ppl |",
        "| gpt |",
        "| gru |",
        "**",
        "zoo --device flex train runs/compare/cmp/recipes/gru.toml --run-dir runs/compare/cmp/gru",
    ] {
        assert!(
            report.contains(column),
            "report lacks {column:?}:\n{report}"
        );
    }
    for plot in [
        "metric-vs-step.svg",
        "metric-vs-time.svg",
        "metric-vs-flops.svg",
    ] {
        assert!(report.contains(plot), "{report}");
        let svg = std::fs::read_to_string(root.join(plot)).unwrap();
        // plotters writes each label on a line of its own inside its <text> element.
        for text in ["<svg", "\ngpt\n", "\ngru\n", "validation loss (nats/token)"] {
            assert!(svg.contains(text), "{plot} lacks {text}");
        }
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("report.json")).unwrap()).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        assert!(!run["curve"].as_array().unwrap().is_empty(), "{run}");
        assert!(run["best"].as_f64().unwrap() <= run["final_value"].as_f64().unwrap());
    }

    // Restart: the finished run is skipped untouched; an interrupted one resumes and finishes
    // on the same budget.
    let gpt_summary = std::fs::read_to_string(root.join("gpt/summary.json")).unwrap();
    std::fs::remove_dir_all(root.join("gru")).unwrap();
    let partial = zoo(
        &[
            "train",
            "runs/compare/cmp/recipes/gru.toml",
            "--run-dir",
            "runs/compare/cmp/gru",
            "--stop-after-steps",
            "4",
        ],
        &dir,
    );
    assert!(partial.status.success(), "{}", stderr(&partial));
    assert!(
        !root.join("gru/summary.json").exists(),
        "a stopped run is not finished"
    );
    let again = zoo(&["compare", "cmp.toml"], &dir);
    assert!(
        again.status.success(),
        "{}{}",
        stdout(&again),
        stderr(&again)
    );
    let log = stdout(&again);
    assert!(log.contains("== gpt: finished before, skipped"), "{log}");
    assert!(log.contains("== gru (resuming)"), "{log}");
    assert_eq!(
        std::fs::read_to_string(root.join("gpt/summary.json")).unwrap(),
        gpt_summary
    );
    assert_eq!(summary(&root.join("gru"))["steps"].as_u64(), Some(steps[1]));
    let epochs: Vec<u64> = metrics(&root.join("gru"))
        .iter()
        .filter(|l| l["split"] == "valid")
        .map(|l| l["epoch"].as_u64().unwrap())
        .collect();
    let mut unique = epochs.clone();
    unique.dedup();
    assert_eq!(epochs, unique, "a resumed run logs each validation once");
    let third = zoo(&["compare", "cmp.toml"], &dir);
    assert!(stdout(&third).contains("== gru: finished before, skipped"));
}

/// Runs `zoo compare cmp.toml` in a scratch directory holding `comparison` as cmp.toml and
/// the tiny GPT recipe as gpt.toml.
fn compare_tiny_gpt(name: &str, comparison: &str) -> (Scratch, Output) {
    let dir = scratch(name);
    write(&dir, "gpt.toml", TINY);
    write(&dir, "cmp.toml", comparison);
    let out = zoo(&["compare", "cmp.toml"], &dir);
    (dir, out)
}

#[test]
fn compare_turns_a_seconds_budget_into_steps_by_timing_a_probe() {
    let (dir, out) = compare_tiny_gpt(
        "compare-seconds",
        "base = \"gpt.toml\"\n[budget]\nseconds = 1.5\nprobe_steps = 2\n[set]\n\"sample.tokens\" = 0\n[vary]\n\"model.position\" = [\"rope\"]\n",
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let root = dir.join("runs/compare/cmp");
    assert!(stdout(&out).contains("ms per step ->"), "{}", stdout(&out));
    let recipe = std::fs::read_to_string(root.join("recipes/rope.toml")).unwrap();
    assert!(recipe.contains("steps = "), "{recipe}");
    assert!(
        !root.join("probe/rope").exists(),
        "the probe's scratch run is removed"
    );
    let s = summary(&root.join("rope"));
    assert!(s["train_seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn compare_names_a_bad_override_and_trains_nothing() {
    let (dir, out) = compare_tiny_gpt(
        "compare-bad",
        "base = \"gpt.toml\"\n[budget]\nsteps = 4\n[vary]\n\"model.positon\" = [\"rope\", \"alibi\"]\n",
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cmp.toml") && err.contains("run 'rope'") && err.contains("positon"),
        "{err}"
    );
    assert!(!dir.join("runs/compare/cmp/rope").exists());
    let no_budget = write(
        &dir,
        "none.toml",
        "base = \"gpt.toml\"\n[budget]\nsteps = 4\nflops = 1e9\n[vary]\n\"model.position\" = [\"rope\"]\n",
    );
    let out = zoo(&["compare", no_budget.to_str().unwrap()], &dir);
    assert!(
        stderr(&out).contains("exactly one positive budget"),
        "{}",
        stderr(&out)
    );
}

/// Each benchmark prints its one line of figures on a tiny shape, and refuses a preset of
/// another family by name.
#[test]
fn benchmarks_print_their_figures() {
    let dir = scratch("bench");
    for (args, figures) in [
        (
            &[
                "bench",
                "gpt",
                "--preset",
                "gpt-nano",
                "--batch-size",
                "2",
                "--steps",
                "1",
                "--warmup",
                "0",
            ][..],
            &["zoo-gpt", "tokens_per_s="][..],
        ),
        (
            &[
                "bench",
                "rnn",
                "--batch-size",
                "2",
                "--bptt",
                "5",
                "--vocab-size",
                "50",
                "--steps",
                "1",
                "--warmup",
                "0",
            ],
            &["tokens_per_s="],
        ),
        (
            &[
                "bench",
                "bert",
                "--preset",
                "bert-tiny",
                "--batch-size",
                "2",
                "--seq-len",
                "8",
                "--vocab-size",
                "50",
                "--steps",
                "1",
                "--warmup",
                "0",
            ],
            &["tokens_per_s=", "inference_seq_per_s="],
        ),
        (
            &[
                "bench",
                "generate",
                "--preset",
                "gpt-nano",
                "--batch-size",
                "2",
                "--prompt-len",
                "3",
                "--new-tokens",
                "4",
                "--repeats",
                "1",
            ],
            &[
                "zoo-generate preset=gpt-nano",
                "tokens_per_s=",
                "bound_tokens_per_s=",
            ],
        ),
        (
            &[
                "bench",
                "seq2seq",
                "--preset",
                "transformer-tiny",
                "--batch-size",
                "3",
                "--src-len",
                "6",
                "--tgt-len",
                "5",
                "--vocab-size",
                "40",
                "--beam",
                "2",
                "--steps",
                "1",
                "--warmup",
                "0",
            ],
            &[
                "zoo-seq2seq preset=transformer-tiny",
                "tokens_per_s=",
                "greedy_sent_per_s=",
                "beam2_sent_per_s=",
            ],
        ),
    ] {
        let out = zoo(args, &dir);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        for figure in figures {
            assert!(stdout(&out).contains(figure), "{args:?}: {}", stdout(&out));
        }
    }
    assert_clean_error(
        &zoo(&["bench", "seq2seq", "--preset", "gpt-nano"], &dir),
        1,
        &["unknown preset 'gpt-nano'", "transformer-small"],
    );
}
