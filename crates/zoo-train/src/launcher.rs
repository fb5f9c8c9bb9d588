//! Child `zoo` processes: `zoo compare` trains each run in one, and `zoo bench scaling` measures
//! each point in one, so that each has its own peak memory; the commands are also shown to the
//! user, so that any run can be repeated by hand.

use crate::ZooError;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How to start a child `zoo`: the program and the global options to pass.
#[derive(Clone, Debug)]
pub struct Launcher {
    /// The `zoo` executable.
    pub program: PathBuf,
    /// Options before the subcommand (`--device`, `--data-dir`).
    pub global_args: Vec<OsString>,
}

impl Launcher {
    /// A launcher of this very executable with `global_args`.
    pub fn current(global_args: Vec<OsString>) -> Result<Self, ZooError> {
        let program = std::env::current_exe().map_err(|e| {
            ZooError::Usage(format!("cannot find the zoo executable to start runs: {e}"))
        })?;
        Ok(Self {
            program,
            global_args,
        })
    }

    /// A child `zoo` with the global options, then `args`.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.global_args).args(args);
        command
    }

    pub fn train(&self, recipe: &Path, run_dir: &Path, resume: bool) -> Command {
        let mut command = self.command([
            "train".as_ref(),
            recipe.as_os_str(),
            "--run-dir".as_ref(),
            run_dir.as_os_str(),
        ]);
        if resume {
            command.arg("--resume");
        }
        command
    }

    /// The training command as a user would type it.
    pub fn shown(&self, recipe: &Path, run_dir: &Path) -> String {
        self.shown_with(&[
            "train",
            &recipe.display().to_string(),
            "--run-dir",
            &run_dir.display().to_string(),
        ])
    }

    /// The comparison's command as a user would type it.
    pub fn shown_compare(&self, file: &Path, out_dir: &Path) -> String {
        self.shown_with(&[
            "compare",
            &file.display().to_string(),
            "--out",
            &out_dir.display().to_string(),
        ])
    }

    fn shown_with(&self, words: &[&str]) -> String {
        let mut all = vec!["zoo".to_string()];
        all.extend(
            self.global_args
                .iter()
                .map(|a| a.to_string_lossy().into_owned()),
        );
        all.extend(words.iter().map(|w| w.to_string()));
        all.join(" ")
    }
}
