//! Hugging Face checkpoints in and out: a `model.safetensors` read as tensors by name (through
//! burn-store), the correspondence of a checkpoint's tensors and a zoo model's parameters as
//! [`Link`]s that serve both directions (PyTorch's `[out, in]` linear weights, separate
//! query/key/value projections joined into one), tensors named by module path applied to a zoo
//! model with every parameter accounted for, and a model's tensors written back out as a
//! `model.safetensors` that `transformers` loads. Each error names the tensor and the shape
//! expected; nothing here panics on a bad file.

use burn::store::{ModuleSnapshot, ModuleStore, SafetensorsStore, bridge};
use burn::tensor::{DType, TensorData};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The tensors of one `model.safetensors`, by their names in the file.
pub struct HfTensors {
    path: PathBuf,
    tensors: BTreeMap<String, TensorData>,
    taken: BTreeSet<String>,
}

impl HfTensors {
    /// Reads every tensor of the file at `path`.
    pub fn open(path: &Path) -> Result<Self, String> {
        if !path.is_file() {
            return Err(format!("{} does not exist", path.display()));
        }
        let unreadable =
            |e: &dyn std::fmt::Display| format!("{} cannot be read: {e}", path.display());
        let mut store = SafetensorsStore::from_file(path);
        let all = store.get_all_tensors().map_err(|e| unreadable(&e))?;
        let mut tensors = BTreeMap::new();
        for (name, tensor) in all {
            let data = bridge::to_data(tensor).map_err(|e| unreadable(&e))?;
            tensors.insert(name.clone(), data);
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            taken: BTreeSet::new(),
        })
    }

    /// Whether the file holds a tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Every tensor of the file, by name.
    pub fn into_tensors(self) -> BTreeMap<String, TensorData> {
        self.tensors
    }

    /// Tensor `name` as the file holds it, without taking it.
    pub fn get(&self, name: &str) -> Option<&TensorData> {
        self.tensors.get(name)
    }

    /// Tensor `name`, which must have `shape`, as f32 (half-precision and f64 files are
    /// converted); a missing tensor, another shape or integers are errors naming the tensor.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<TensorData, String> {
        let file = self.path.display();
        let data = self
            .tensors
            .get(name)
            .ok_or_else(|| format!("{file} has no tensor {name} (expected shape {shape:?})"))?;
        if data.shape().as_slice() != shape {
            return Err(format!(
                "{file}: tensor {name} has shape {:?}, expected {shape:?}",
                data.shape().as_slice()
            ));
        }
        let data = match data.dtype() {
            DType::F32 => data.clone(),
            DType::F16 | DType::BF16 | DType::F64 => data.clone().convert::<f32>(),
            other => {
                return Err(format!(
                    "{file}: tensor {name} holds {other:?}, not floating-point weights"
                ));
            }
        };
        self.taken.insert(name.to_string());
        Ok(data)
    }

    /// The weight of a PyTorch `nn.Linear` from `d_in` to `d_out` (stored `[d_out, d_in]`), as
    /// Burn's `Linear` holds it: `[d_in, d_out]`.
    pub fn linear(&mut self, name: &str, d_in: usize, d_out: usize) -> Result<TensorData, String> {
        Ok(transpose(self.take(name, &[d_out, d_in])?))
    }

    /// Marks `name` as read without using it (a buffer such as `position_ids`, or a weight tied
    /// to another one), if the file has it.
    pub fn skip(&mut self, name: &str) {
        if self.contains(name) {
            self.taken.insert(name.to_string());
        }
    }

    /// The tensors of the file nobody took: weights the zoo's model has no place for.
    pub fn untaken(&self) -> Vec<&str> {
        self.tensors
            .keys()
            .filter(|name| !self.taken.contains(*name))
            .map(String::as_str)
            .collect()
    }

    /// Checks an export against this file: each of `written` equal to the file's tensor of its
    /// name, and every tensor of the file written but `copies` (tensors that repeat others, such
    /// as a tied head). The error names the first tensor that differs or was not written.
    pub fn check_written(
        mut self,
        written: &[(String, TensorData)],
        copies: &[&str],
    ) -> Result<(), String> {
        for (name, data) in written {
            if &self.take(name, data.shape())? != data {
                return Err(format!("{name} differs from {}'s", self.path.display()));
            }
        }
        for name in copies {
            self.skip(name);
        }
        match self.untaken().as_slice() {
            [] => Ok(()),
            left => Err(format!("not written: {}", left.join(", "))),
        }
    }

    /// An error if any tensor is left untaken, naming them.
    pub fn check_all_taken(&self) -> Result<(), String> {
        let left = self.untaken();
        if left.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} holds tensors the model has no place for: {}",
            self.path.display(),
            left.join(", ")
        ))
    }
}

/// A tensor of the file as it holds it, by name; panics if the file has none of that name (use
/// [`HfTensors::get`] or [`HfTensors::take`] on files a user gave).
impl std::ops::Index<&str> for HfTensors {
    type Output = TensorData;

    fn index(&self, name: &str) -> &TensorData {
        self.get(name)
            .unwrap_or_else(|| panic!("{} has no tensor {name}", self.path.display()))
    }
}

/// How a checkpoint's tensors make one of a zoo model's parameters; read one way by
/// [`HfTensors::read_links`] and the other by [`write_links`].
#[derive(Clone, Debug, PartialEq)]
pub enum Link {
    /// The same values under two names, of `shape`.
    Same {
        /// The checkpoint's name.
        hf: String,
        /// The parameter's path in the zoo model.
        zoo: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// PyTorch `nn.Linear` weights `[d_out_i, d_in]`, transposed and side by side as the zoo's
    /// one `[d_in, sum d_out_i]`: one projection, or query, key and value joined.
    Linear {
        /// The checkpoint's names, in the order the zoo's columns take them.
        hf: Vec<String>,
        /// The parameter's path in the zoo model.
        zoo: String,
        /// Input width.
        d_in: usize,
        /// Output width of each.
        d_outs: Vec<usize>,
    },
    /// Vectors one after another as one (the biases of joined projections).
    Vectors {
        /// The checkpoint's names, in order.
        hf: Vec<String>,
        /// The parameter's path in the zoo model.
        zoo: String,
        /// Length of each.
        sizes: Vec<usize>,
    },
}

impl Link {
    /// The same values of `shape` named `hf` and `zoo`.
    pub fn same(hf: impl Into<String>, zoo: impl Into<String>, shape: &[usize]) -> Self {
        Link::Same {
            hf: hf.into(),
            zoo: zoo.into(),
            shape: shape.to_vec(),
        }
    }

    /// The weight of a PyTorch `nn.Linear` (`{hf}.weight`; an output head, a bias-free
    /// projection) as the zoo's `Linear` at `zoo`.
    pub fn weight(hf: &str, zoo: &str, d_in: usize, d_out: usize) -> Self {
        Link::Linear {
            hf: vec![format!("{hf}.weight")],
            zoo: format!("{zoo}.weight"),
            d_in,
            d_outs: vec![d_out],
        }
    }

    /// One PyTorch `nn.Linear` (`{hf}.weight`, `{hf}.bias`) as the zoo's `Linear` at `zoo`.
    pub fn linear(hf: &str, zoo: &str, d_in: usize, d_out: usize) -> [Self; 2] {
        [
            Link::weight(hf, zoo, d_in, d_out),
            Link::same(format!("{hf}.bias"), format!("{zoo}.bias"), &[d_out]),
        ]
    }

    /// PyTorch `nn.Linear`s from `d_in` to `d` each (`{name}.weight`, `{name}.bias` for every
    /// name in `hf`), joined as the zoo's one `Linear` at `zoo`.
    pub fn joined_linear(hf: &[String], zoo: &str, d_in: usize, d: usize) -> [Self; 2] {
        [
            Link::Linear {
                hf: hf.iter().map(|name| format!("{name}.weight")).collect(),
                zoo: format!("{zoo}.weight"),
                d_in,
                d_outs: vec![d; hf.len()],
            },
            Link::Vectors {
                hf: hf.iter().map(|name| format!("{name}.bias")).collect(),
                zoo: format!("{zoo}.bias"),
                sizes: vec![d; hf.len()],
            },
        ]
    }

    /// A PyTorch `nn.LayerNorm` (`{hf}.weight`, `{hf}.bias`) as the zoo's LayerNorm at `zoo`.
    pub fn layer_norm(hf: &str, zoo: &str, d: usize) -> [Self; 2] {
        [
            Link::same(format!("{hf}.weight"), format!("{zoo}.Layer.gamma"), &[d]),
            Link::same(format!("{hf}.bias"), format!("{zoo}.Layer.beta"), &[d]),
        ]
    }

    /// The zoo parameter's path.
    pub fn zoo(&self) -> &str {
        match self {
            Link::Same { zoo, .. } | Link::Linear { zoo, .. } | Link::Vectors { zoo, .. } => zoo,
        }
    }
}

impl HfTensors {
    /// The zoo parameters `links` make, read from the file.
    pub fn read_links(&mut self, links: &[Link]) -> Result<Vec<(String, TensorData)>, String> {
        links
            .iter()
            .map(|link| {
                let data = match link {
                    Link::Same { hf, shape, .. } => self.take(hf, shape)?,
                    Link::Linear {
                        hf, d_in, d_outs, ..
                    } => {
                        let parts = hf
                            .iter()
                            .zip(d_outs)
                            .map(|(name, &d_out)| self.linear(name, *d_in, d_out))
                            .collect::<Result<Vec<_>, _>>()?;
                        concat_last(&parts)
                    }
                    Link::Vectors { hf, sizes, .. } => {
                        let parts = hf
                            .iter()
                            .zip(sizes)
                            .map(|(name, &n)| self.take(name, &[n]))
                            .collect::<Result<Vec<_>, _>>()?;
                        concat_last(&parts)
                    }
                };
                Ok((link.zoo().to_string(), data))
            })
            .collect()
    }
}

/// The checkpoint's tensors that `links` make of the zoo parameters `zoo` (by path): the
/// inverse of [`HfTensors::read_links`].
pub fn write_links(
    zoo: &BTreeMap<String, TensorData>,
    links: &[Link],
) -> Result<Vec<(String, TensorData)>, String> {
    let mut out = Vec::new();
    for link in links {
        let data = zoo
            .get(link.zoo())
            .ok_or_else(|| format!("the model has no parameter {}", link.zoo()))?;
        match link {
            Link::Same { hf, .. } => out.push((hf.clone(), data.clone())),
            Link::Linear { hf, d_outs, .. } => {
                for (name, part) in hf.iter().zip(split_last(data, d_outs)) {
                    out.push((name.clone(), transpose(part)));
                }
            }
            Link::Vectors { hf, sizes, .. } => {
                for (name, part) in hf.iter().zip(split_last(data, sizes)) {
                    out.push((name.clone(), part));
                }
            }
        }
    }
    Ok(out)
}

/// Every parameter of `module`, by its path.
pub fn module_tensors<M: ModuleSnapshot>(
    module: &M,
) -> Result<BTreeMap<String, TensorData>, String> {
    module
        .collect(None, None, false)
        .into_iter()
        .map(|t| {
            let name = t.name.clone();
            let data = bridge::into_data(t).map_err(|e| format!("reading {name}: {e}"))?;
            Ok((name, data.convert::<f32>()))
        })
        .collect()
}

/// `tensors` (f32) as the bytes of a `model.safetensors`, with the metadata `transformers`
/// expects of a PyTorch checkpoint.
pub fn safetensors_bytes(tensors: &[(String, TensorData)]) -> Result<Vec<u8>, String> {
    use safetensors::tensor::{Dtype, TensorView};
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, data)| {
            let values = f32_values(data);
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), data.shape().to_vec(), bytes)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| format!("{name}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}

/// `data` (`[..., sum widths]`) cut along its last dimension into parts of `widths`.
fn split_last(data: &TensorData, widths: &[usize]) -> Vec<TensorData> {
    let shape = data.shape().to_vec();
    let rank = shape.len();
    let total = shape[rank - 1];
    let rows: usize = shape[..rank - 1].iter().product();
    let values = f32_values(data);
    let mut start = 0;
    widths
        .iter()
        .map(|&width| {
            let mut part = Vec::with_capacity(rows * width);
            for r in 0..rows {
                part.extend_from_slice(&values[r * total + start..r * total + start + width]);
            }
            start += width;
            let mut part_shape = shape.clone();
            part_shape[rank - 1] = width;
            TensorData::new(part, part_shape)
        })
        .collect()
}

/// A matrix `[rows, cols]` as `[cols, rows]`.
pub fn transpose(data: TensorData) -> TensorData {
    let [rows, cols] = [data.shape()[0], data.shape()[1]];
    let values = f32_values(&data);
    let mut out = vec![0.0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    TensorData::new(out, [cols, rows])
}

/// Matrices `[rows, a]`, `[rows, b]`, ... side by side as `[rows, a + b + ...]`, or vectors
/// one after the other: how separate query, key and value projections become one.
pub fn concat_last(parts: &[TensorData]) -> TensorData {
    let rank = parts[0].shape().len();
    let rows: usize = parts[0].shape()[..rank - 1].iter().product();
    let widths: Vec<usize> = parts.iter().map(|p| p.shape()[rank - 1]).collect();
    let values: Vec<Vec<f32>> = parts.iter().map(f32_values).collect();
    let mut out = Vec::with_capacity(rows * widths.iter().sum::<usize>());
    for r in 0..rows {
        for (part, &width) in values.iter().zip(&widths) {
            out.extend_from_slice(&part[r * width..(r + 1) * width]);
        }
    }
    let mut shape = parts[0].shape().to_vec();
    shape[rank - 1] = widths.iter().sum();
    TensorData::new(out, shape)
}

fn f32_values(data: &TensorData) -> Vec<f32> {
    data.clone()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32")
}

/// `module` with `tensors` (named by their paths in the module, as burn-store names them)
/// loaded into its parameters. Every tensor must name a parameter and have its shape, and every
/// parameter must be given unless its path starts with one of `fresh` (parts the checkpoint does
/// not have, kept as initialised); each error names the path and the shapes.
pub fn apply_named<M: ModuleSnapshot>(
    mut module: M,
    tensors: Vec<(String, TensorData)>,
    fresh: &[String],
) -> Result<M, String> {
    let shapes: BTreeMap<String, Vec<usize>> = module
        .collect(None, None, false)
        .into_iter()
        .map(|t| (t.name.clone(), t.shape.to_vec()))
        .collect();
    let mut given = BTreeSet::new();
    for (path, data) in &tensors {
        let expected = shapes
            .get(path)
            .ok_or_else(|| format!("the model has no parameter {path}"))?;
        if data.shape().as_slice() != expected.as_slice() {
            return Err(format!(
                "parameter {path} has shape {expected:?}, the checkpoint gives {:?}",
                data.shape().as_slice()
            ));
        }
        given.insert(path.clone());
    }
    let missing: Vec<&str> = shapes
        .keys()
        .filter(|path| !given.contains(*path) && !fresh.iter().any(|f| path.starts_with(f)))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the checkpoint has nothing for the model's {}",
            missing.join(", ")
        ));
    }
    let packs = tensors
        .into_iter()
        .map(|(path, data)| bridge::from_data(data, path, None))
        .collect();
    let result = module.apply(packs, None, None, false);
    if !result.errors.is_empty() {
        return Err(format!("loading the weights failed: {:?}", result.errors));
    }
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposing_and_joining_keep_every_value_in_place() {
        let m = TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]);
        let t = transpose(m);
        assert_eq!(t.shape().as_slice(), &[3, 2]);
        assert_eq!(f32_values(&t), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let a = TensorData::new(vec![1.0f32, 2.0], [2, 1]);
        let b = TensorData::new(vec![3.0f32, 4.0, 5.0, 6.0], [2, 2]);
        let joined = concat_last(&[a, b]);
        assert_eq!(joined.shape().as_slice(), &[2, 3]);
        assert_eq!(f32_values(&joined), [1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);
        let v = concat_last(&[
            TensorData::new(vec![1.0f32], [1]),
            TensorData::new(vec![2.0f32, 3.0], [2]),
        ]);
        assert_eq!(f32_values(&v), [1.0, 2.0, 3.0]);
    }

    #[test]
    fn an_export_is_checked_against_the_file_tensor_by_tensor() {
        let path =
            std::env::temp_dir().join(format!("zoo-check-{}.safetensors", std::process::id()));
        let a = TensorData::new(vec![1.0f32, 2.0], [2]);
        let b = TensorData::new(vec![3.0f32], [1]);
        let head = TensorData::new(vec![1.0f32, 2.0], [2]);
        let file = [
            ("a".to_string(), a.clone()),
            ("b".to_string(), b.clone()),
            ("head".to_string(), head),
        ];
        std::fs::write(&path, safetensors_bytes(&file).unwrap()).unwrap();
        let open = || HfTensors::open(&path).unwrap();
        let all = [("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        open().check_written(&all, &["head"]).unwrap();
        let e = open().check_written(&all, &[]).unwrap_err();
        assert!(e.contains("not written: head"), "{e}");
        let changed = [
            ("a".to_string(), a),
            ("b".to_string(), TensorData::new(vec![4.0f32], [1])),
        ];
        let e = open().check_written(&changed, &["head"]).unwrap_err();
        assert!(e.starts_with("b differs"), "{e}");
        std::fs::remove_file(path).unwrap();
    }
}
