//! The dataset registry: named datasets, their files, checksums, download addresses, formats
//! and splits, read from a data directory. The manifest is `datasets/registry.toml`, compiled
//! into the binary; the embedded corpus is registered as `embedded` and needs no files.

use crate::TextError;
use crate::corpus::{embedded_corpus, span_task, sums_task, tagging_task};
use crate::synthetic::{SyntheticTask, synthetic_pairs};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The registry manifest shipped with the project.
pub const MANIFEST: &str = include_str!("../../../datasets/registry.toml");

/// The name of the embedded, generated corpus.
pub const EMBEDDED: &str = "embedded";

/// The embedded, generated sequence-classification task (see [`crate::corpus::sums_task`]).
pub const EMBEDDED_SUMS: &str = "embedded-sums";
/// The embedded, generated token-classification task (see [`crate::corpus::tagging_task`]).
pub const EMBEDDED_TAGGING: &str = "embedded-tagging";
/// The embedded, generated span question-answering task (see [`crate::corpus::span_task`]).
pub const EMBEDDED_SPANS: &str = "embedded-spans";

/// The generated task datasets.
const GENERATED_TASKS: [&str; 3] = [EMBEDDED_SUMS, EMBEDDED_TAGGING, EMBEDDED_SPANS];

/// The seed and size of split `split` of a generated task: 20,000 training and 1,000
/// validation examples, each split and task from its own seed.
fn generated_split(dataset: &str, split: &str) -> Result<(u64, usize), TextError> {
    let salt = GENERATED_TASKS
        .iter()
        .position(|t| *t == dataset)
        .unwrap_or(0) as u64;
    match split {
        "train" => Ok((0x5053_0001 + (salt << 8), 20_000)),
        "val" => Ok((0x5053_0002 + (salt << 8), 1_000)),
        _ => Err(unknown_split(dataset, split, ["train", "val"].iter())),
    }
}

/// The generated sequence-to-sequence datasets: `synthetic-<task>` for each
/// [`SyntheticTask`], their two sides named `source` and `target`.
pub const SYNTHETIC_TASKS: [&str; 4] = [
    "synthetic-copy",
    "synthetic-reverse",
    "synthetic-sort",
    "synthetic-addition",
];

/// The two sides of a synthetic dataset.
pub const SYNTHETIC_SIDES: [&str; 2] = ["source", "target"];

/// The task, seed, size and longest sequence of split `split` of a synthetic dataset:
/// 20,000 training pairs, 1,000 validation and 1,000 test, each from its own seed; sequences of
/// 1 to 12 symbols, numbers of 1 to 6 digits.
fn synthetic_spec(
    name: &str,
    split: &str,
) -> Result<(SyntheticTask, u64, usize, usize), TextError> {
    let task = name
        .strip_prefix("synthetic-")
        .and_then(SyntheticTask::named)
        .ok_or_else(|| TextError::UnknownDataset {
            name: name.into(),
            known: SYNTHETIC_TASKS.iter().map(|s| s.to_string()).collect(),
        })?;
    let salt = SYNTHETIC_TASKS.iter().position(|t| *t == name).unwrap_or(0) as u64;
    let (seed, count) = match split {
        "train" => (0x5359_0001 + (salt << 8), 20_000),
        "val" => (0x5359_0002 + (salt << 8), 1_000),
        "test" => (0x5359_0003 + (salt << 8), 1_000),
        _ => return Err(unknown_split(name, split, ["train", "val", "test"].iter())),
    };
    let max_len = if task == SyntheticTask::Addition {
        6
    } else {
        12
    };
    Ok((task, seed, count, max_len))
}

/// The pairs of split `split` of a synthetic dataset (see [`synthetic_spec`]).
pub fn synthetic_split(name: &str, split: &str) -> Result<Vec<(String, String)>, TextError> {
    let (task, seed, count, max_len) = synthetic_spec(name, split)?;
    Ok(synthetic_pairs(task, seed, count, max_len))
}

/// One example of a token-classification dataset: words and a tag per word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaggedExample {
    /// The words.
    pub words: Vec<String>,
    /// One tag per word.
    pub tags: Vec<String>,
}

/// One example of a span question-answering dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanExample {
    /// The question.
    pub question: String,
    /// The context, as words.
    pub context: Vec<String>,
    /// The answer's first word in the context.
    pub start: usize,
    /// The answer's last word in the context.
    pub end: usize,
}

fn embedded_sums(split: &str) -> Result<Vec<LabelledExample>, TextError> {
    let (seed, count) = generated_split(EMBEDDED_SUMS, split)?;
    Ok(sums_task(seed, count)
        .into_iter()
        .map(|(text, label)| LabelledExample {
            label: label.into(),
            text,
        })
        .collect())
}

/// How a dataset's files turn into text.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// The file as it is.
    Text,
    /// One sentence per line; each line ends with an end-of-sentence token.
    LinesEos,
    /// Tab-separated examples under a header line: a `label` column and a text column. As
    /// text (language modelling, pretraining) a split is its texts, one per line.
    LabelledTsv,
    /// Line-aligned translations: split `S` is the files `S.<language>`, one per language in
    /// the dataset's `languages`. As text a split is all its languages' lines.
    Parallel,
}

/// One labelled example of a [`Format::LabelledTsv`] dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelledExample {
    /// The label as written in the file.
    pub label: String,
    /// The text.
    pub text: String,
}

/// One file of a dataset.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct DatasetFile {
    /// File name inside the dataset's directory.
    pub name: String,
    /// Expected SHA-256, hex.
    pub sha256: String,
    /// Where to download it from.
    pub url: String,
    /// The address serves the file gzipped (the checksum is of the file itself).
    #[serde(default)]
    pub gzip: bool,
}

/// A split: a whole file or a fraction of one.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// The file.
    pub file: String,
    /// Start, as a fraction of the file's characters.
    #[serde(default)]
    pub from: f64,
    /// End, as a fraction of the file's characters.
    #[serde(default = "one")]
    pub to: f64,
}

fn one() -> f64 {
    1.0
}

/// A registered dataset.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// One line about what it is.
    pub description: String,
    /// How its files become text.
    pub format: Format,
    /// Its files.
    pub files: Vec<DatasetFile>,
    /// Its splits by name (`train`, `val`, `test`).
    pub splits: BTreeMap<String, Split>,
    /// Parallel datasets: the languages, each a file suffix.
    #[serde(default)]
    pub languages: Vec<String>,
}

/// All registered datasets.
#[derive(Clone, Debug)]
pub struct DatasetRegistry {
    datasets: BTreeMap<String, Dataset>,
}

/// Where dataset files live, and whether missing ones may be downloaded.
#[derive(Clone, Debug)]
pub struct DataDir {
    /// The directory holding `<dataset>/<file>`.
    pub root: PathBuf,
    /// Try to download missing files.
    pub download: bool,
}

impl DataDir {
    /// `explicit` if given, else `$ZOO_DATA_DIR`, else `~/.cache/zoo/datasets`. Downloads are
    /// allowed unless `$ZOO_OFFLINE` is set.
    pub fn resolve(explicit: Option<&Path>) -> Self {
        let root = explicit
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("ZOO_DATA_DIR").map(PathBuf::from))
            .unwrap_or_else(|| {
                let home =
                    std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
                home.join(".cache").join("zoo").join("datasets")
            });
        Self {
            root,
            download: downloads_allowed(),
        }
    }
}

impl DatasetRegistry {
    /// The registry of the shipped manifest.
    pub fn builtin() -> Self {
        Self::parse(MANIFEST).expect("the shipped dataset manifest parses")
    }

    /// A registry from manifest text.
    pub fn parse(manifest: &str) -> Result<Self, String> {
        let datasets: BTreeMap<String, Dataset> =
            toml::from_str(manifest).map_err(|e| e.to_string())?;
        Ok(Self { datasets })
    }

    /// Every dataset name, the embedded corpus included.
    pub fn names(&self) -> Vec<String> {
        std::iter::once(EMBEDDED)
            .chain(GENERATED_TASKS)
            .chain(SYNTHETIC_TASKS)
            .map(String::from)
            .chain(self.datasets.keys().cloned())
            .collect()
    }

    /// A dataset's entry.
    pub fn get(&self, name: &str) -> Result<&Dataset, TextError> {
        self.datasets
            .get(name)
            .ok_or_else(|| TextError::UnknownDataset {
                name: name.into(),
                known: self.names(),
            })
    }

    /// Checks that `name` is registered and has `split`, without touching any file.
    pub fn check(&self, name: &str, split: &str) -> Result<(), TextError> {
        if name == EMBEDDED {
            return embedded_range(split).map(|_| ());
        }
        if GENERATED_TASKS.contains(&name) {
            return generated_split(name, split).map(|_| ());
        }
        if SYNTHETIC_TASKS.contains(&name) {
            return synthetic_spec(name, split).map(|_| ());
        }
        let dataset = self.get(name)?;
        if dataset.splits.contains_key(split) {
            Ok(())
        } else {
            Err(unknown_split(name, split, dataset.splits.keys()))
        }
    }

    /// The text of `split` of dataset `name`, fetching and verifying files as needed.
    pub fn load_split(&self, name: &str, split: &str, dir: &DataDir) -> Result<String, TextError> {
        if name == EMBEDDED {
            let (from, to) = embedded_range(split)?;
            return Ok(slice_chars(&embedded_corpus(), from, to).to_string());
        }
        if SYNTHETIC_TASKS.contains(&name) {
            let pairs = synthetic_split(name, split)?;
            return Ok(pairs
                .into_iter()
                .map(|(s, t)| format!("{s}\n{t}\n"))
                .collect());
        }
        if name == EMBEDDED_SUMS {
            let examples = embedded_sums(split)?;
            return Ok(examples.into_iter().map(|e| e.text + "\n").collect());
        }
        if name == EMBEDDED_TAGGING {
            let examples = self.load_tagged(name, split)?;
            return Ok(examples.iter().map(|e| e.words.join(" ") + "\n").collect());
        }
        if name == EMBEDDED_SPANS {
            let examples = self.load_spans(name, split)?;
            return Ok(examples
                .iter()
                .map(|e| e.context.join(" ") + "\n")
                .collect());
        }
        let dataset = self.get(name)?;
        if dataset.format == Format::LabelledTsv {
            let examples = self.load_labelled(name, split, dir)?;
            return Ok(examples.into_iter().map(|e| e.text + "\n").collect());
        }
        if dataset.format == Format::Parallel {
            let mut text = String::new();
            for language in &dataset.languages {
                text.push_str(&self.load_file(name, &format!("{split}.{language}"), dir)?);
            }
            return Ok(text);
        }
        self.load_raw(name, split, dir)
    }

    /// The languages of a parallel dataset (a synthetic one's sides are `source` and
    /// `target`); an error for any other dataset.
    pub fn languages(&self, name: &str) -> Result<Vec<String>, TextError> {
        if SYNTHETIC_TASKS.contains(&name) {
            return Ok(SYNTHETIC_SIDES.iter().map(|s| s.to_string()).collect());
        }
        let dataset = self.get(name)?;
        if dataset.format != Format::Parallel {
            return Err(TextError::Parse {
                path: PathBuf::from("datasets/registry.toml"),
                message: format!("dataset '{name}' is not a parallel corpus"),
            });
        }
        Ok(dataset.languages.clone())
    }

    /// The sentence pairs of `split` of a parallel dataset, `source` and `target` naming two
    /// of its languages.
    pub fn load_parallel(
        &self,
        name: &str,
        split: &str,
        [source, target]: [&str; 2],
        dir: &DataDir,
    ) -> Result<Vec<(String, String)>, TextError> {
        if SYNTHETIC_TASKS.contains(&name) {
            if [source, target] != SYNTHETIC_SIDES {
                return Err(TextError::Parse {
                    path: PathBuf::from("datasets/registry.toml"),
                    message: format!(
                        "dataset '{name}' translates 'source' to 'target', not '{source}' to '{target}'"
                    ),
                });
            }
            return synthetic_split(name, split);
        }
        let dataset = self.get(name)?;
        let bad = |message: String| TextError::Parse {
            path: PathBuf::from("datasets/registry.toml"),
            message,
        };
        if dataset.format != Format::Parallel {
            return Err(bad(format!("dataset '{name}' is not a parallel corpus")));
        }
        for language in [source, target] {
            if !dataset.languages.iter().any(|l| l == language) {
                return Err(bad(format!(
                    "dataset '{name}' has no language '{language}'; it has: {}",
                    dataset.languages.join(", ")
                )));
            }
        }
        let part = dataset
            .splits
            .get(split)
            .ok_or_else(|| unknown_split(name, split, dataset.splits.keys()))?;
        let side = |language: &str| self.load_file(name, &format!("{}.{language}", part.file), dir);
        let (sources, targets) = (side(source)?, side(target)?);
        pair_lines(&sources, &targets, [source, target])
            .map_err(|e| bad(format!("split '{split}' of '{name}': {e}")))
    }

    /// One listed file of a dataset, fetched and verified, as text.
    fn load_file(&self, name: &str, file_name: &str, dir: &DataDir) -> Result<String, TextError> {
        let dataset = self.get(name)?;
        let file = dataset
            .files
            .iter()
            .find(|f| f.name == file_name)
            .ok_or_else(|| TextError::Parse {
                path: PathBuf::from("datasets/registry.toml"),
                message: format!("dataset '{name}' lists no file {file_name}"),
            })?;
        let path = fetch(name, file, dir)?;
        std::fs::read_to_string(&path).map_err(|e| TextError::Io {
            path,
            message: e.to_string(),
        })
    }

    /// The examples of `split` of a labelled dataset.
    pub fn load_labelled(
        &self,
        name: &str,
        split: &str,
        dir: &DataDir,
    ) -> Result<Vec<LabelledExample>, TextError> {
        if name == EMBEDDED_SUMS {
            return embedded_sums(split);
        }
        let dataset = if name == EMBEDDED {
            None
        } else {
            Some(self.get(name)?)
        };
        if dataset.is_none_or(|d| d.format != Format::LabelledTsv) {
            return Err(TextError::NotLabelled {
                dataset: name.into(),
                labelled: std::iter::once(EMBEDDED_SUMS.to_string())
                    .chain(
                        self.datasets
                            .iter()
                            .filter(|(_, d)| d.format == Format::LabelledTsv)
                            .map(|(n, _)| n.clone()),
                    )
                    .collect(),
            });
        }
        let text = self.load_raw(name, split, dir)?;
        let file = PathBuf::from(name).join(split);
        parse_labelled_tsv(&text).map_err(|message| TextError::Parse {
            path: file,
            message,
        })
    }

    /// The examples of `split` of a token-classification dataset.
    pub fn load_tagged(&self, name: &str, split: &str) -> Result<Vec<TaggedExample>, TextError> {
        if name != EMBEDDED_TAGGING {
            return Err(TextError::NotLabelled {
                dataset: name.into(),
                labelled: vec![EMBEDDED_TAGGING.into()],
            });
        }
        let (seed, count) = generated_split(name, split)?;
        Ok(tagging_task(seed, count)
            .into_iter()
            .map(|(words, tags)| TaggedExample {
                words,
                tags: tags.into_iter().map(String::from).collect(),
            })
            .collect())
    }

    /// The examples of `split` of a span question-answering dataset.
    pub fn load_spans(&self, name: &str, split: &str) -> Result<Vec<SpanExample>, TextError> {
        if name != EMBEDDED_SPANS {
            return Err(TextError::NotLabelled {
                dataset: name.into(),
                labelled: vec![EMBEDDED_SPANS.into()],
            });
        }
        let (seed, count) = generated_split(name, split)?;
        Ok(span_task(seed, count)
            .into_iter()
            .map(|(question, context, start, end)| SpanExample {
                question,
                context,
                start,
                end,
            })
            .collect())
    }

    /// The split's text as the file has it.
    fn load_raw(&self, name: &str, split: &str, dir: &DataDir) -> Result<String, TextError> {
        let dataset = self.get(name)?;
        let part = dataset
            .splits
            .get(split)
            .ok_or_else(|| unknown_split(name, split, dataset.splits.keys()))?;
        let file = dataset
            .files
            .iter()
            .find(|f| f.name == part.file)
            .ok_or_else(|| TextError::Parse {
                path: PathBuf::from("datasets/registry.toml"),
                message: format!(
                    "split '{split}' of '{name}' names unlisted file {}",
                    part.file
                ),
            })?;
        let path = fetch(name, file, dir)?;
        let text = std::fs::read_to_string(&path).map_err(|e| TextError::Io {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let text = slice_chars(&text, part.from, part.to);
        Ok(match dataset.format {
            Format::Text | Format::LabelledTsv | Format::Parallel => text.to_string(),
            Format::LinesEos => text
                .lines()
                .map(|line| format!("{} <eos>\n", line.trim()))
                .collect(),
        })
    }
}

/// The sentence pairs of a parallel corpus: line `i` of `sources` with line `i` of `targets`,
/// trimmed; the two sides (named by `languages`) must have as many lines.
pub fn pair_lines(
    sources: &str,
    targets: &str,
    [source, target]: [&str; 2],
) -> Result<Vec<(String, String)>, String> {
    let (sources, targets): (Vec<&str>, Vec<&str>) =
        (sources.lines().collect(), targets.lines().collect());
    if sources.len() != targets.len() {
        return Err(format!(
            "{} {source} lines but {} {target} lines",
            sources.len(),
            targets.len()
        ));
    }
    Ok(sources
        .into_iter()
        .zip(targets)
        .map(|(s, t)| (s.trim().to_string(), t.trim().to_string()))
        .collect())
}

/// Examples of a TSV with a header naming a `label` column and one text column (its name is
/// free: SST-2 says `sentence` in train and `content` in dev and test).
pub fn parse_labelled_tsv(text: &str) -> Result<Vec<LabelledExample>, String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().ok_or("empty file")?.split('\t').collect();
    if header.len() != 2 {
        return Err(format!(
            "the header has {} columns, expected 2 (label and text)",
            header.len()
        ));
    }
    let label_column = header
        .iter()
        .position(|c| c.trim() == "label")
        .ok_or_else(|| format!("the header {header:?} has no 'label' column"))?;
    lines
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let fields: Vec<&str> = line.split('\t').collect();
            if fields.len() != 2 {
                return Err(format!(
                    "line {}: {} fields, expected 2",
                    i + 2,
                    fields.len()
                ));
            }
            Ok(LabelledExample {
                label: fields[label_column].trim().to_string(),
                text: fields[1 - label_column].trim().to_string(),
            })
        })
        .collect()
}

fn embedded_range(split: &str) -> Result<(f64, f64), TextError> {
    match split {
        "train" => Ok((0.0, 0.9)),
        "val" => Ok((0.9, 1.0)),
        _ => Err(unknown_split(EMBEDDED, split, ["train", "val"].iter())),
    }
}

fn unknown_split<'a>(
    dataset: &str,
    split: &str,
    known: impl Iterator<Item = &'a (impl AsRef<str> + 'a + ?Sized)>,
) -> TextError {
    TextError::UnknownSplit {
        dataset: dataset.into(),
        split: split.into(),
        known: known.map(|k| k.as_ref().to_string()).collect(),
    }
}

/// The characters from `from` to `to` (fractions of the character count), as nanoGPT splits.
fn slice_chars(text: &str, from: f64, to: f64) -> &str {
    let n = text.chars().count();
    let byte_at = |fraction: f64| {
        let index = ((n as f64) * fraction) as usize;
        text.char_indices()
            .nth(index)
            .map_or(text.len(), |(b, _)| b)
    };
    &text[byte_at(from)..byte_at(to)]
}

/// Whether missing files may be downloaded: unless `$ZOO_OFFLINE` is set (to anything but `0`).
pub fn downloads_allowed() -> bool {
    std::env::var_os("ZOO_OFFLINE").is_none_or(|v| v.is_empty() || v == "0")
}

/// The local path of `file`, downloading it if it is missing; always checksummed.
pub fn fetch(dataset: &str, file: &DatasetFile, dir: &DataDir) -> Result<PathBuf, TextError> {
    let path = dir.root.join(dataset).join(&file.name);
    if !path.is_file() {
        let missing = |reason: String| TextError::DatasetFileMissing {
            dataset: dataset.into(),
            file: file.name.clone(),
            path: path.clone(),
            url: file.url.clone(),
            reason,
        };
        if !dir.download {
            return Err(missing("downloads are disabled by ZOO_OFFLINE".into()));
        }
        download(&file.url, file.gzip, &path).map_err(missing)?;
    }
    verify(&path, &file.sha256)?;
    Ok(path)
}

/// Checks the SHA-256 of `path`.
pub fn verify(path: &Path, expected: &str) -> Result<(), TextError> {
    let bytes = std::fs::read(path).map_err(|e| TextError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let actual = hex(&Sha256::digest(&bytes));
    if actual != expected.to_ascii_lowercase() {
        return Err(TextError::Checksum {
            path: path.to_path_buf(),
            expected: expected.into(),
            actual,
        });
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Downloads `url` to `path` through a temporary file, so an interrupted download leaves nothing
/// that looks complete.
pub(crate) fn download(url: &str, gzip: bool, path: &Path) -> Result<(), String> {
    eprintln!("downloading {url} -> {}", path.display());
    let (mut bytes, _) = get(url, None)?;
    if gzip {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut plain)
            .map_err(|e| format!("cannot decompress: {e}"))?;
        bytes = plain;
    }
    write_into_place(path, &bytes)
}

/// The body of `url`, and the value of its response header `header` when asked for.
pub(crate) fn get(url: &str, header: Option<&str>) -> Result<(Vec<u8>, Option<String>), String> {
    let response = ureq::get(url).call().map_err(|e| e.to_string())?;
    let value = header.and_then(|name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let mut bytes = Vec::new();
    response
        .into_body()
        .into_reader()
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok((bytes, value))
}

/// Writes `bytes` to `path` whole or not at all (see [`crate::files`]), creating its directory.
pub(crate) fn write_into_place(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let parent = path.parent().expect("files live in a directory");
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    crate::files::write_atomically(path, bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("zoo-registry-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Serves `body` once on a loopback port and returns the URL.
    fn serve_once(body: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/file.txt", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(header.as_bytes()).unwrap();
            stream.write_all(body).unwrap();
        });
        url
    }

    fn registry_for(url: &str, sha: &str) -> DatasetRegistry {
        DatasetRegistry::parse(&format!(
            r#"[toy]
description = "a toy"
format = "lines-eos"
files = [{{ name = "toy.txt", sha256 = "{sha}", url = "{url}" }}]
splits.train = {{ file = "toy.txt", to = 0.5 }}
splits.val = {{ file = "toy.txt", from = 0.5 }}
"#
        ))
        .unwrap()
    }

    const TOY: &[u8] = b"a b c\nd e f\n";
    const WRONG_SHA: &str = "cb1a7c7c9ab8bd1c29b5ae2be3a8ea79a1bc1b80b8da3ee9e7e81bb0a52c8dfe";

    fn toy_sha() -> String {
        hex(&Sha256::digest(TOY))
    }

    #[test]
    fn labelled_tsv_reads_the_label_column_wherever_it_is() {
        let label_first = "label\tsentence\n0\tdull , dull\n1\ta joy \n\n";
        let text_first = "content\tlabel\ndull , dull\t0\n";
        let examples = parse_labelled_tsv(label_first).unwrap();
        assert_eq!(
            examples,
            [
                LabelledExample {
                    label: "0".into(),
                    text: "dull , dull".into()
                },
                LabelledExample {
                    label: "1".into(),
                    text: "a joy".into()
                },
            ]
        );
        assert_eq!(parse_labelled_tsv(text_first).unwrap()[0], examples[0]);
        assert!(
            parse_labelled_tsv("text\tscore\nx\t1\n")
                .unwrap_err()
                .contains("label")
        );
        assert!(
            parse_labelled_tsv("label\ttext\n1\n")
                .unwrap_err()
                .contains("line 2")
        );
    }

    #[test]
    fn labelled_datasets_read_as_text_give_their_sentences() {
        let dir = scratch("sst");
        std::fs::create_dir_all(dir.join("toy")).unwrap();
        let body = "label\tsentence\n0\tbad film\n1\tgood film\n";
        std::fs::write(dir.join("toy/train.tsv"), body).unwrap();
        let registry = DatasetRegistry::parse(&format!(
            r#"
[toy]
description = "toy"
format = "labelled-tsv"
files = [{{ name = "train.tsv", sha256 = "{}", url = "http://127.0.0.1:9/none" }}]
splits.train = {{ file = "train.tsv" }}
"#,
            hex(&Sha256::digest(body.as_bytes()))
        ))
        .unwrap();
        let data = DataDir {
            root: dir.clone(),
            download: false,
        };
        assert_eq!(
            registry.load_split("toy", "train", &data).unwrap(),
            "bad film\ngood film\n"
        );
        assert_eq!(
            registry.load_labelled("toy", "train", &data).unwrap()[1].label,
            "1"
        );
        let err = DatasetRegistry::builtin()
            .load_labelled("ptb", "train", &data)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sst2"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_shipped_manifest_registers_its_datasets() {
        let registry = DatasetRegistry::builtin();
        assert_eq!(
            registry.names(),
            vec![
                "embedded",
                "embedded-sums",
                "embedded-tagging",
                "embedded-spans",
                "synthetic-copy",
                "synthetic-reverse",
                "synthetic-sort",
                "synthetic-addition",
                "multi30k",
                "ptb",
                "sst2",
                "tinyshakespeare"
            ]
        );
        assert!(registry.check("sst2", "dev").is_ok());
        assert!(registry.check("synthetic-sort", "test").is_ok());
        assert!(registry.check("synthetic-sort", "dev").is_err());
        assert_eq!(registry.languages("multi30k").unwrap(), ["en", "de"]);
        assert_eq!(
            registry.languages("synthetic-copy").unwrap(),
            ["source", "target"]
        );
        assert!(registry.languages("ptb").is_err());
        let pairs = registry
            .load_parallel(
                "synthetic-addition",
                "val",
                SYNTHETIC_SIDES,
                &DataDir::resolve(None),
            )
            .unwrap();
        assert_eq!(pairs.len(), 1_000);
        assert_eq!(
            pairs,
            registry
                .load_parallel(
                    "synthetic-addition",
                    "val",
                    SYNTHETIC_SIDES,
                    &DataDir::resolve(None)
                )
                .unwrap()
        );
        assert_eq!(registry.get("sst2").unwrap().format, Format::LabelledTsv);
        assert!(registry.check("ptb", "test").is_ok());
        assert!(registry.check("tinyshakespeare", "val").is_ok());
        let err = registry.check("wikitext", "train").unwrap_err().to_string();
        assert!(
            err.contains("wikitext") && err.contains("tinyshakespeare"),
            "{err}"
        );
        let err = registry
            .check("tinyshakespeare", "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no split 'test'"), "{err}");
    }

    #[test]
    fn embedded_splits_need_no_files() {
        let registry = DatasetRegistry::builtin();
        let nowhere = DataDir {
            root: PathBuf::from("/nonexistent"),
            download: false,
        };
        let train = registry.load_split(EMBEDDED, "train", &nowhere).unwrap();
        let val = registry.load_split(EMBEDDED, "val", &nowhere).unwrap();
        assert!(train.len() > 8 * val.len() && val.len() > 10_000);
    }

    /// A gzipped download is unpacked and checked; the parallel splits pair their lines, and
    /// read as text give every language's lines.
    #[test]
    fn a_parallel_corpus_downloads_gzipped_and_pairs_its_lines() {
        use flate2::Compression;
        use flate2::write::GzEncoder;
        use std::io::Write as _;
        let (english, german) = (b"a cat .\ntwo dogs .\n", b"eine Katze .\nzwei Hunde .\n");
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(english).unwrap();
        let body: &'static [u8] = Box::leak(gz.finish().unwrap().into_boxed_slice());
        let url = serve_once(body);
        let dir = scratch("parallel");
        std::fs::create_dir_all(dir.join("pair")).unwrap();
        std::fs::write(dir.join("pair/train.de"), german).unwrap();
        let sha = |b: &[u8]| hex(&Sha256::digest(b));
        let registry = DatasetRegistry::parse(&format!(
            r#"[pair]
description = "toy"
format = "parallel"
languages = ["en", "de"]
files = [
  {{ name = "train.en", sha256 = "{}", url = "{url}", gzip = true }},
  {{ name = "train.de", sha256 = "{}", url = "http://127.0.0.1:9/none" }},
]
splits.train = {{ file = "train" }}
"#,
            sha(english),
            sha(german)
        ))
        .unwrap();
        let data = DataDir {
            root: dir.clone(),
            download: true,
        };
        let pairs = registry
            .load_parallel("pair", "train", ["en", "de"], &data)
            .unwrap();
        assert_eq!(
            pairs,
            [
                ("a cat .".to_string(), "eine Katze .".to_string()),
                ("two dogs .".to_string(), "zwei Hunde .".to_string()),
            ]
        );
        assert_eq!(std::fs::read(dir.join("pair/train.en")).unwrap(), english);
        let text = registry.load_split("pair", "train", &data).unwrap();
        assert_eq!(text.lines().count(), 4);
        let err = registry
            .load_parallel("pair", "train", ["en", "fr"], &data)
            .unwrap_err()
            .to_string();
        assert!(err.contains("'fr'") && err.contains("en, de"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_file_is_downloaded_checked_and_split() {
        let root = scratch("download");
        let url = serve_once(TOY);
        let registry = registry_for(&url, &toy_sha());
        let dir = DataDir {
            root: root.clone(),
            download: true,
        };
        let train = registry.load_split("toy", "train", &dir).unwrap();
        assert_eq!(train, "a b c <eos>\n");
        assert!(root.join("toy/toy.txt").is_file());
        // Now present: no server needed.
        let val = registry.load_split("toy", "val", &dir).unwrap();
        assert_eq!(val, "d e f <eos>\n");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_failed_download_says_which_file_to_put_where() {
        let root = scratch("missing");
        // Nothing listens on port 9 of loopback (the discard port is closed on test machines).
        let registry = registry_for("http://127.0.0.1:9/toy.txt", &toy_sha());
        let err = registry
            .load_split(
                "toy",
                "train",
                &DataDir {
                    root: root.clone(),
                    download: true,
                },
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("toy.txt") && err.contains(&root.join("toy").display().to_string()),
            "{err}"
        );
        assert!(err.contains("--data-dir"), "{err}");
        assert!(!root.join("toy/toy.txt").exists());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_checksum_mismatch_is_an_error() {
        let root = scratch("checksum");
        std::fs::create_dir_all(root.join("toy")).unwrap();
        std::fs::write(root.join("toy/toy.txt"), b"something else\n").unwrap();
        let registry = registry_for("http://127.0.0.1:9/", WRONG_SHA);
        let err = registry
            .load_split(
                "toy",
                "train",
                &DataDir {
                    root: root.clone(),
                    download: false,
                },
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn shared_datasets_match_their_registered_checksums() {
        // The development copies beside the project, when present.
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets");
        if !shared.is_dir() {
            return;
        }
        let registry = DatasetRegistry::builtin();
        let dir = DataDir {
            root: shared,
            download: false,
        };
        let val = registry.load_split("tinyshakespeare", "val", &dir).unwrap();
        assert_eq!(val.chars().count(), 1_115_394 - 1_003_854);
        let test = registry.load_split("ptb", "test", &dir).unwrap();
        assert_eq!(test.lines().count(), 3761);
        assert!(test.lines().all(|l| l.ends_with(" <eos>")));
    }
}
