//! Hugging Face checkpoints: a `model.safetensors` read as tensors by name (through burn-store),
//! the layout changes every family's import needs (PyTorch's `[out, in]` linear weights, half
//! precision, separate query/key/value projections joined into one), and tensors named by
//! module path applied to a zoo model with every parameter accounted for. Each error names the
//! tensor and the shape expected; nothing here panics on a bad file.

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
}
