//! What the end-to-end tests share: running the `zoo` binary in a scratch directory, and
//! reading what it wrote.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `zoo args` in `dir`, offline, on the default device.
pub fn zoo(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zoo"))
        .args(args)
        .current_dir(dir)
        .env("ZOO_OFFLINE", "1")
        .env_remove("BURN_DEVICE")
        .output()
        .expect("the zoo binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh directory for one test, removed when the test is done with it, whether it passed or
/// not (with `ZOO_KEEP_SCRATCH` set, kept for a look; its path is in the failure's messages).
pub fn scratch(name: &str) -> Scratch {
    let dir = tempfile::Builder::new()
        .prefix(&format!("zoo-e2e-{name}-"))
        .disable_cleanup(std::env::var_os("ZOO_KEEP_SCRATCH").is_some())
        .tempdir()
        .unwrap();
    Scratch(dir)
}

/// A test's scratch directory (see [`scratch`]), used as the path it is.
pub struct Scratch(tempfile::TempDir);

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.path().as_os_str()
    }
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The lines of a run's metrics log.
pub fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `o` failed with exit status `code` and a message (no panic) naming every one of `needles`.
/// Each validation's step and loss, from a run's metrics log.
pub fn val_losses(run: &Path) -> Vec<(u64, f64)> {
    metrics(run)
        .into_iter()
        .filter(|m| m["split"] == "valid")
        .map(|m| (m["step"].as_u64().unwrap(), m["loss"].as_f64().unwrap()))
        .collect()
}

pub fn assert_clean_error(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    for needle in needles {
        assert!(err.contains(needle), "missing {needle:?} in: {err}");
    }
}

/// Every tensor of a checkpoint file by name, as bytes (parameter ids, which differ from run to
/// run, left out).
pub fn tensors(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let reader = burn_pack::Reader::from_file(path).unwrap();
    reader
        .tensor_names()
        .into_iter()
        .map(|name| (name.to_string(), reader.tensor_data(name).unwrap()))
        .collect()
}

/// The run's last checkpoint epoch.
pub fn last_epoch(run: &Path) -> usize {
    std::fs::read_dir(run.join("checkpoint"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_prefix("model-")?
                .strip_suffix(".bpk")?
                .parse()
                .ok()
        })
        .max()
        .unwrap()
}

/// The metrics log's lines as written, wall times cut out.
pub fn metrics_without_time(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let start = line
                .find("\"elapsed_s\":")
                .expect("every line has a wall time");
            let end = start + line[start..].find([',', '}']).unwrap();
            format!("{}{}", &line[..start], &line[end..])
        })
        .collect()
}

/// Asserts that `other` ended as `whole` did: the same last checkpoint, its weights equal bit
/// for bit, and the same metrics log (wall times aside).
pub fn assert_same_run(whole: &Path, other: &Path, what: &str) {
    let epoch = last_epoch(whole);
    assert_eq!(last_epoch(other), epoch, "{what}");
    let file = format!("checkpoint/model-{epoch}.bpk");
    let (a, b) = (tensors(&whole.join(&file)), tensors(&other.join(&file)));
    assert_eq!(a.len(), b.len(), "{what}");
    for (name, bytes) in &a {
        assert!(b[name] == *bytes, "{what}: {name} differs");
    }
    assert_eq!(
        metrics_without_time(whole),
        metrics_without_time(other),
        "{what}: the metrics logs differ"
    );
}

/// `recipe` for one device, with its batch of `batch` halved and its gradient accumulation
/// (`accum`, 1 when the recipe names none) doubled: the steps that a run of `recipe` split
/// across two devices takes.
pub fn halved_batch_doubled_accumulation(recipe: &str, batch: usize, accum: usize) -> String {
    recipe
        .replace(
            &format!("batch_size = {batch}\n"),
            &format!("batch_size = {}\n", batch / 2),
        )
        .replace(&format!("grad_accumulation = {accum}\n"), "")
        .replace(
            "[training]\n",
            &format!("[training]\ngrad_accumulation = {}\n", accum * 2),
        )
}
