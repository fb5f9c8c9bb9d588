//! Fuzzing everything a user hands the zoo, for panics: recipes and comparison files, a run's
//! `tokenizer.json` and checkpoint files, dataset files (labelled TSV, parallel text, the
//! dataset registry), and Hugging Face `config.json` and `model.safetensors`.
//!
//! Each target starts from real inputs (the repository's recipes, the fixtures' files, a
//! checkpoint written here) and edits their bytes (flips, insertions, deletions, repeats, and
//! splices of the tokens parsers trip on: huge and negative numbers, NaN, brackets, quotes), or
//! makes bytes from scratch. A target holds when every input ends in a value or an error
//! message; a panic fails it, and proptest shrinks the input to the smallest that panics.
//!
//! `FUZZ_CASES` sets the inputs per target: 2,000 in CI, a million for the long run
//! (`FUZZ_CASES=1000000 cargo test --release --test fuzz`).

use burn::tensor::Device;
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use zoo::train::compare::Comparison;
use zoo::train::recipe::Recipe;
use zoo::train::runtime::run_dir::check_checkpoint;

/// Inputs per target.
fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
}

fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

/// One edit of an input's bytes; positions are taken modulo the input's length.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Splice(usize, &'static str),
    Repeat(usize, usize),
    Truncate(usize),
}

/// What parsers trip on.
const TOKENS: &[&str] = &[
    "0",
    "-1",
    "-0",
    "1e309",
    "-1e309",
    "nan",
    "inf",
    "1e-45",
    "18446744073709551616",
    "9223372036854775807",
    "4294967296",
    "65536",
    "\"",
    "'",
    "[",
    "]",
    "{",
    "}",
    "=",
    ",",
    ":",
    "\n",
    "\t",
    "\\",
    "[[run]]",
    "true",
    "null",
    "\u{0}",
    "\u{feff}",
    "☺",
    "#",
    "..",
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Flip(at, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        (any::<usize>(), 1usize..64).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), prop::sample::select(TOKENS)).prop_map(|(at, t)| Edit::Splice(at, t)),
        (any::<usize>(), 1usize..32).prop_map(|(at, n)| Edit::Repeat(at, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

/// `seed` with `edits` applied, positions falling in its first `focus` bytes (a binary file's
/// header) or anywhere (`usize::MAX`).
fn apply(seed: &[u8], edits: &[Edit], focus: usize) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for edit in edits {
        let len = bytes.len().min(focus);
        let at = |i: usize| if len == 0 { 0 } else { i % (len + 1) };
        match edit {
            Edit::Flip(i, b) if !bytes.is_empty() => {
                let i = at(*i).min(bytes.len() - 1);
                bytes[i] ^= b | 1;
            }
            Edit::Flip(..) => {}
            Edit::Insert(i, new) => {
                let i = at(*i);
                bytes.splice(i..i, new.iter().copied());
            }
            Edit::Delete(i, n) => {
                let i = at(*i).min(bytes.len());
                bytes.drain(i..(i + n).min(bytes.len()));
            }
            Edit::Splice(i, token) => {
                let i = at(*i);
                bytes.splice(i..i, token.bytes());
            }
            Edit::Repeat(i, n) => {
                let i = at(*i).min(bytes.len());
                let part = bytes[i..(i + n).min(bytes.len())].to_vec();
                bytes.splice(i..i, part);
            }
            Edit::Truncate(i) => bytes.truncate(at(*i)),
        }
    }
    bytes
}

/// Inputs made from `seeds`: edited copies, and now and then bytes from scratch.
fn inputs(seeds: Arc<Vec<Vec<u8>>>, focus: usize) -> impl Strategy<Value = Vec<u8>> {
    let count = seeds.len();
    prop_oneof![
        9 => (0..count, prop::collection::vec(edit(), 1..6))
            .prop_map(move |(i, edits)| apply(&seeds[i], &edits, focus)),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

/// Values that checks after parsing trip on, for the structured edits of TOML and JSON files.
fn odd_json(kind: usize) -> serde_json::Value {
    use serde_json::json;
    [
        json!(0),
        json!(-1),
        json!(1),
        json!(2),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e308),
        json!(-0.0),
        json!(0.5),
        json!(1e-300),
        json!(""),
        json!("x"),
        json!(true),
        json!(null),
        json!([]),
        json!([0]),
        json!({}),
        json!(4097),
        json!(65536),
        json!(1_000_000_007),
    ][kind % 20]
        .clone()
}

/// The dotted paths of every value in `value` (arrays by index), and the value of one.
fn paths(value: &serde_json::Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                prefix.push(key.clone());
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                prefix.push(i.to_string());
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

/// `value` with each `(path, kind)` of `edits` setting a value at one of its paths to an odd one
/// (or removing it, for the last kind).
fn set_values(mut value: serde_json::Value, edits: &[(usize, usize)]) -> serde_json::Value {
    for &(which, kind) in edits {
        let mut all = Vec::new();
        paths(&value, &mut Vec::new(), &mut all);
        let Some(path) = all.get(which % all.len().max(1)) else {
            return value;
        };
        let (last, parents) = path.split_last().unwrap();
        let mut at = &mut value;
        for key in parents {
            at = match at {
                serde_json::Value::Object(map) => map.get_mut(key).unwrap(),
                serde_json::Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
                _ => unreachable!(),
            };
        }
        match at {
            serde_json::Value::Object(map) if kind % 21 == 20 => {
                map.remove(last);
            }
            serde_json::Value::Object(map) => {
                map.insert(last.clone(), odd_json(kind));
            }
            serde_json::Value::Array(items) => {
                items[last.parse::<usize>().unwrap()] = odd_json(kind)
            }
            _ => unreachable!(),
        }
    }
    value
}

/// Structured inputs from TOML `seeds`: a few values set to odd ones, so that inputs get past
/// the parser to the checks after it.
fn toml_inputs(seeds: Arc<Vec<Vec<u8>>>) -> impl Strategy<Value = Vec<u8>> {
    let parsed: Vec<serde_json::Value> = seeds
        .iter()
        .map(|s| serde_json::to_value(toml::from_str::<toml::Table>(&text(s)).unwrap()).unwrap())
        .collect();
    let count = parsed.len();
    (
        0..count,
        prop::collection::vec((any::<usize>(), any::<usize>()), 1..4),
    )
        .prop_map(move |(i, edits)| {
            let value = set_values(parsed[i].clone(), &edits);
            // A value TOML cannot say (null) makes no file: the input is the unedited seed then.
            match toml::to_string(&value) {
                Ok(text) => text.into_bytes(),
                Err(_) => toml::to_string(&parsed[i]).unwrap().into_bytes(),
            }
        })
}

/// Structured inputs from JSON `seeds`, as [`toml_inputs`].
fn json_inputs(seeds: Arc<Vec<Vec<u8>>>) -> impl Strategy<Value = Vec<u8>> {
    let parsed: Vec<serde_json::Value> = seeds
        .iter()
        .map(|s| serde_json::from_slice(s).unwrap())
        .collect();
    let count = parsed.len();
    (
        0..count,
        prop::collection::vec((any::<usize>(), any::<usize>()), 1..4),
    )
        .prop_map(move |(i, edits)| {
            serde_json::to_vec(&set_values(parsed[i].clone(), &edits)).unwrap()
        })
}

/// Byte edits and structured edits of TOML `seeds`, half and half.
fn toml_files(seeds: Arc<Vec<Vec<u8>>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![inputs(seeds.clone(), usize::MAX), toml_inputs(seeds)]
}

/// Byte edits and structured edits of JSON `seeds`, half and half.
fn json_files(seeds: Arc<Vec<Vec<u8>>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![inputs(seeds.clone(), usize::MAX), json_inputs(seeds)]
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir` (recursively) whose name ends with `suffix`.
fn files(dir: &Path, suffix: &str) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path, suffix));
        } else if path.to_string_lossy().ends_with(suffix) {
            found.push(std::fs::read(&path).unwrap());
        }
    }
    assert!(!found.is_empty(), "no {suffix} under {}", dir.display());
    found
}

fn seeds(dir: &str, suffix: &str) -> Arc<Vec<Vec<u8>>> {
    Arc::new(files(&root().join(dir), suffix))
}

/// A fresh scratch directory, removed when the caller drops it.
fn scratch(name: &str) -> tempfile::TempDir {
    let prefix = format!("zoo-fuzz-{name}-");
    tempfile::Builder::new().prefix(&prefix).tempdir().unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn recipes(bytes in toml_files(seeds("recipes", ".toml"))) {
        if let Ok(recipe) = Recipe::parse(&text(&bytes)) {
            let _ = recipe.tokenizer_spec();
            if let Ok(model) = recipe.model_config()
                && model.validate().is_ok()
            {
                let _ = model.size();
            }
        }
    }

    #[test]
    fn comparison_files(bytes in toml_files(seeds("recipes/compare", ".toml"))) {
        let file = root().join("recipes/compare/fuzzed.toml");
        if let Ok(comparison) = Comparison::parse(&text(&bytes), &file) {
            for run in &comparison.runs {
                if let Ok(recipe) = comparison.recipe_text(run, Path::new("runs"), Some(10)) {
                    let _ = Recipe::parse(&recipe);
                }
            }
        }
    }

    #[test]
    fn tokenizer_files(bytes in json_files(seeds("tests/fixtures/hf", "tokenizer.json"))) {
        if let Ok(tokenizer) = zoo::text::ZooTokenizer::from_json(&text(&bytes)) {
            let _ = tokenizer.vocab_size();
            if let Ok(ids) = tokenizer.encode("Hello, world! Ünïcödé 123 ☺") {
                let _ = tokenizer.decode(&ids);
            }
        }
    }

    #[test]
    fn hugging_face_configs(bytes in json_files(seeds("tests/fixtures/hf", "config.json"))) {
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            if let Ok(hf) = zoo::gpt::hf::HfGpt::from_config(&json)
                && hf.config.validate().is_ok()
            {
                let _ = hf.config.size();
            }
            if let Ok(hf) = zoo::bert::hf::HfBert::from_config(&json)
                && hf.config.validate().is_ok()
            {
                let _ = hf.config.size(128);
            }
            if let Ok(hf) = zoo::seq2seq::hf::HfSeq2Seq::from_config(&json)
                && hf.config.validate().is_ok()
            {
                let _ = hf.config.size();
            }
        }
    }

    #[test]
    fn labelled_tsv(bytes in inputs(Arc::new(vec![
        b"sentence\tlabel\nit 's a charming journey .\t1\nunfunny and lame\t0\n".to_vec(),
        b"label\tcontent\n1\ta gorgeous film\n0\t\n\n".to_vec(),
    ]), usize::MAX)) {
        let _ = zoo::text::registry::parse_labelled_tsv(&text(&bytes));
    }

    #[test]
    fn parallel_text(
        sources in inputs(Arc::new(vec![b"Two dogs run .\nA man sleeps .\n".to_vec()]), usize::MAX),
        targets in inputs(Arc::new(vec![b"Zwei Hunde rennen .\nEin Mann schl\xc3\xa4ft .\n".to_vec()]), usize::MAX),
    ) {
        let _ = zoo::text::registry::pair_lines(&text(&sources), &text(&targets), ["en", "de"]);
    }

    #[test]
    fn dataset_registries(bytes in toml_files(seeds("datasets", ".toml"))) {
        let _ = zoo::text::registry::DatasetRegistry::parse(&text(&bytes));
    }
}

/// The Hugging Face fixtures whose weights the safetensors target reads, with what reads them.
fn fixture_loaders() -> &'static Vec<(Vec<u8>, serde_json::Value)> {
    static LOADED: OnceLock<Vec<(Vec<u8>, serde_json::Value)>> = OnceLock::new();
    LOADED.get_or_init(|| {
        ["gpt2", "llama", "bert-masked-lm", "t5-v1_1", "bart"]
            .iter()
            .map(|name| {
                let dir = root().join("tests/fixtures/hf").join(name);
                let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
                let config =
                    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap())
                        .unwrap();
                (weights, config)
            })
            .collect()
    })
}

/// Reads `path` as `config`'s model would be imported: every tensor mapped, shapes checked.
fn import_weights(path: &Path, config: &serde_json::Value) {
    let device = Device::flex();
    let Ok(mut tensors) = zoo_blocks_hf_open(path) else {
        return;
    };
    if let Ok(hf) = zoo::gpt::hf::HfGpt::from_config(config) {
        let _ = hf.load(&mut tensors, &device);
    } else if let Ok(hf) = zoo::bert::hf::HfBert::from_config(config) {
        let _ = hf.load(&mut tensors, &device);
    } else if let Ok(mut hf) = zoo::seq2seq::hf::HfSeq2Seq::from_config(config) {
        let _ = hf.load(&mut tensors, &device);
    } else {
        panic!("a fixture's config.json no longer reads");
    }
}

fn zoo_blocks_hf_open(path: &Path) -> Result<zoo::blocks::hf::HfTensors, String> {
    zoo::blocks::hf::HfTensors::open(path)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn safetensors_files(
        which in 0usize..5,
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let (weights, config) = &fixture_loaders()[which];
        // Mostly the header: its length prefix and JSON come first.
        let header = 8 + u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
        let bytes = apply(weights, &edits, header + 16);
        let dir = scratch("safetensors");
        let path = dir.path().join(format!("model-{which}.safetensors"));
        std::fs::write(&path, &bytes).unwrap();
        import_weights(&path, config);
    }
}

/// A run's checkpoint files: a small GPT's and an LSTM's model, optimiser and scheduler
/// records after one step, and the LSTM's carried state, written by training here.
fn checkpoint_run(name: &str, recipe: &str) -> &'static PathBuf {
    static RUNS: OnceLock<std::sync::Mutex<std::collections::HashMap<String, &'static PathBuf>>> =
        OnceLock::new();
    let runs = RUNS.get_or_init(Default::default);
    let mut runs = runs.lock().unwrap();
    runs.entry(name.to_string()).or_insert_with(|| {
        // It serves every case of the process, so it outlives any guard: Cargo's scratch
        // space for tests holds it, trained afresh (over the last process's) once a process.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-checkpoint-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("r.toml"), recipe).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_zoo"))
            .args(["train", "r.toml", "--run-dir", "run"])
            .current_dir(&dir)
            .env("ZOO_OFFLINE", "1")
            .env_remove("BURN_DEVICE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Box::leak(Box::new(dir.join("run")))
    })
}

const CHECKPOINT_GPT: &str = "seed = 1\n[model]\npreset = \"gpt-nano\"\nn_layer = 1\nblock_size = 16\n[tokenizer]\nkind = \"char\"\n[data]\ndataset = \"embedded\"\n[training]\nbatch_size = 2\nsteps = 1\neval_interval = 1\neval_batches = 1\n";
const CHECKPOINT_LSTM: &str = "seed = 1\n[model]\narch = \"rnn\"\npreset = \"lstm-small\"\nd_hidden = 8\nn_layer = 2\n[tokenizer]\nkind = \"char\"\n[data]\ndataset = \"embedded\"\n[training]\nbatch_size = 2\nbptt = 4\nsteps = 1\neval_interval = 1\neval_batches = 1\n";

/// Checks a run's checkpoint of epoch 1 after replacing its `kind` file with `edits` of it, as
/// `--resume` does before training and as `zoo eval` loads it; puts the file back after.
fn check_edited_checkpoint(run: &Path, kind: &str, edits: &[Edit]) {
    use zoo::train::runtime::run_dir::load_run_config;
    use zoo::train::runtime::step::{CarriedState, GradientStep};
    use zoo::train::tasks::lm::model::{Lm, LmModel};
    let extension = if kind == "carry" {
        "safetensors"
    } else {
        "bpk"
    };
    let path = run.join(format!("checkpoint/{kind}-1.{extension}"));
    let original = std::fs::read(&path).unwrap();
    std::fs::write(&path, apply(&original, edits, 4096)).unwrap();
    let device = Device::flex();
    let (_, config) = load_run_config(run).unwrap();
    let model = Lm::new(
        LmModel::init(&config, &device).unwrap(),
        GradientStep::new(1),
    );
    let _ = check_checkpoint(run, 1, &model, |carried| model.carry_on(carried, &device));
    let _ = zoo::train::tasks::lm::run::load_run(run, Some(1), &device).map(|r| r.steps);
    std::fs::write(&path, &original).unwrap();
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn checkpoint_files(
        lstm in any::<bool>(),
        kind in prop::sample::select(&["model", "optim", "scheduler", "carry"][..]),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let run = if lstm {
            checkpoint_run("lstm", CHECKPOINT_LSTM)
        } else {
            checkpoint_run("gpt", CHECKPOINT_GPT)
        };
        if kind != "carry" || lstm {
            check_edited_checkpoint(run, kind, &edits);
        }
    }
}
