//! The crate's layers, read from its sources: every `crate::` path a module names points to a
//! lower layer (inside the runtime, to a lower runtime module; inside a task, to its own task),
//! so there is no import circle and no task knows another.

use std::path::{Path, PathBuf};

/// The layer of a module path under `src/` (`runtime/session.rs` -> `runtime`), lower first.
fn layer(module: &str) -> usize {
    match module {
        "models" | "plot" => 0,
        "recipe" => 1,
        "runtime" => 2,
        "tasks" => 3,
        "launcher" => 4,
        "dispatch" => 5,
        "attention" | "bench" | "compare" | "huggingface" | "info" => 6,
        "lib" => 7,
        other => panic!("module {other} has no layer: add it to tests/layers.rs"),
    }
}

/// The order inside the runtime: the session on top, the loop, the display, the summary and the
/// metrics (whose label output is a step output) below it, then the data-parallel round the
/// loop runs its steps in, the rest lower, LoRA (which checkpoints ask about) at the bottom.
fn runtime_layer(module: &str) -> usize {
    match module {
        "session" => 4,
        "fit" | "logging" | "metrics" | "summary" => 3,
        "parallel" => 2,
        "budget" | "data" | "early_stop" | "optim" | "run_dir" | "schedule" | "step"
        | "validations" | "mod" => 1,
        "lora" => 0,
        other => panic!("runtime module {other} has no layer: add it to tests/layers.rs"),
    }
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::a::b` path in `text`, as `[a, b]` (`b` empty when there is none).
fn crate_paths(text: &str) -> Vec<[String; 2]> {
    let mut paths = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let mut words = rest
            .split("::")
            .map(|w| w.chars().take_while(|c| c.is_alphanumeric() || *c == '_'));
        let first: String = words.next().map(Iterator::collect).unwrap_or_default();
        let second: String = words.next().map(Iterator::collect).unwrap_or_default();
        if first.chars().next().is_some_and(char::is_lowercase) {
            paths.push([first, second]);
        }
    }
    paths
}

#[test]
fn imports_point_down_and_tasks_never_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let parts: Vec<String> = relative
            .with_extension("")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let (module, inner_module) = (parts[0].as_str(), parts.get(1).map(String::as_str));
        let text = std::fs::read_to_string(file).unwrap();
        // `crate::ZooError` and the crate's other root items sit below everything.
        for [target, inner] in crate_paths(&text) {
            let allowed = match (module, target.as_str()) {
                // A task's files may name their own task only.
                ("tasks", "tasks") => inner_module == Some(inner.as_str()),
                ("runtime", "runtime") => {
                    runtime_layer(&inner) < runtime_layer(inner_module.unwrap_or("mod"))
                }
                (module, target) => module == target || layer(target) < layer(module),
            };
            if !allowed {
                wrong.push(format!(
                    "{} imports crate::{target}::{inner}",
                    relative.display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}
