//! LoRA fine-tuning (Hu et al. 2021) on Burn's own `burn::module::Lora`: the pretrained
//! weights stay as they are and each targeted weight matrix `W` trains a low-rank update,
//! `W + alpha / rank * A B`, with `A` drawn small and `B` zero so the run starts exactly at the
//! pretrained model. Nothing here names a model: targets are picked by their parameter paths.
//!
//! A run's checkpoints hold only what trains (the factors, and a task head a task leaves
//! trainable); its `base.json` says which model they adapt, with a fingerprint of its
//! weights, so a loaded run is the base's weights plus its own and a changed base is refused.

use crate::ZooError;
use crate::recipe::FinetuneSpec;
use burn::module::{Lora, Module, ModuleVisitor, Param, ParamGroup};
use burn::prelude::*;
use burn::store::ModuleRecord;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use zoo_text::files::write_atomically;

/// Where a LoRA run's base is recorded.
pub const BASE_FILE: &str = "base.json";

/// The path component Burn puts between an adapted weight and its factors
/// (`blocks.0.attn.qkv.weight.lora.a`).
const ADAPTER: &str = "lora";

/// One floating-point parameter of a module.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    /// Its path (`blocks.0.attn.qkv.weight`), as checkpoints name it.
    pub path: String,
    /// Its shape.
    pub dims: Vec<usize>,
    /// Whether it trains.
    pub trainable: bool,
}

/// Every floating-point parameter of `module`, in module order.
pub fn parameters<M: Module>(module: &M) -> Vec<ParamInfo> {
    collect(module, true)
}

/// `module`'s floating-point parameters, their values read only when `read` (whether they
/// train is known only then: `trainable` is false otherwise). Paths and shapes alone leave a
/// lazily initialised parameter uninitialised, as a model about to be loaded has them.
fn collect<M: Module>(module: &M, read: bool) -> Vec<ParamInfo> {
    struct Collect {
        read: bool,
        path: Vec<String>,
        found: Vec<ParamInfo>,
    }
    impl ModuleVisitor for Collect {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.found.push(ParamInfo {
                path: self.path.join("."),
                dims: param.lazy_shape().dims::<D>().to_vec(),
                trainable: self.read && param.val().is_require_grad(),
            });
        }
    }
    let mut collect = Collect {
        read,
        path: Vec::new(),
        found: Vec::new(),
    };
    module.visit(&mut collect);
    collect.found
}

/// The paths of `module`'s parameters that train.
pub fn trainable_paths<M: Module>(module: &M) -> BTreeSet<String> {
    parameters(module)
        .into_iter()
        .filter(|p| p.trainable)
        .map(|p| p.path)
        .collect()
}

/// Whether `module` carries LoRA adapters.
pub fn is_adapted<M: Module>(module: &M) -> bool {
    collect(module, false).iter().any(|p| is_factor(&p.path))
}

fn is_factor(path: &str) -> bool {
    path.split('.').any(|part| part == ADAPTER)
}

/// The weight matrices a target names: 2-D parameters with the target as a component of their
/// path (`qkv` names every `blocks.N.attn.qkv.weight`; `attn` every attention matrix).
fn targeted<'a>(params: &'a [ParamInfo], target: &str) -> Vec<&'a ParamInfo> {
    params
        .iter()
        .filter(|p| p.dims.len() == 2 && p.path.split('.').any(|part| part == target))
        .collect()
}

/// What [`attach`] did, in numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapted {
    /// Weight matrices that got adapters.
    pub matrices: usize,
    /// Parameters that train (the factors, and whatever the caller left trainable).
    pub trainable: usize,
    /// Parameters in all, the frozen base's included.
    pub total: usize,
}

impl std::fmt::Display for Adapted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LoRA on {} weight matrices: {} of {} parameters train ({:.2}%)",
            self.matrices,
            self.trainable,
            self.total,
            100.0 * self.trainable as f64 / self.total.max(1) as f64
        )
    }
}

/// `module` with LoRA adapters of `spec` on the matrices `targets` name, and every other
/// parameter of it frozen. A target naming no matrix is an error listing the names there are.
pub fn attach<M: Module>(module: M, spec: &FinetuneSpec, targets: &[String]) -> Result<M, String> {
    let rank = spec.lora_rank.expect("attach is for LoRA runs");
    let params = collect(&module, false);
    let mut paths = Vec::new();
    for target in targets {
        let matched = targeted(&params, target);
        if matched.is_empty() {
            return Err(format!(
                "finetune.lora_targets: \"{target}\" names no weight matrix of this model; its matrices are in {}",
                matrix_names(&params).join(", ")
            ));
        }
        paths.extend(matched.into_iter().map(|p| p.path.clone()));
    }
    let lora = Lora::new(rank, spec.lora_alpha()).set_param_group(ParamGroup::from_paths(paths));
    Ok(module.apply_lora(lora))
}

/// What `module`'s LoRA leaves training, in numbers.
pub fn adapted<M: Module>(module: &M) -> Adapted {
    let params = parameters(module);
    let count = |p: &ParamInfo| p.dims.iter().product::<usize>();
    Adapted {
        matrices: params
            .iter()
            .filter(|p| p.path.ends_with(".lora.a"))
            .count(),
        trainable: params.iter().filter(|p| p.trainable).map(count).sum(),
        total: params
            .iter()
            .filter(|p| !is_factor(&p.path))
            .map(count)
            .sum(),
    }
}

/// The module names under which `params` has weight matrices (what a target can name).
fn matrix_names(params: &[ParamInfo]) -> Vec<String> {
    let names: BTreeSet<String> = params
        .iter()
        .filter(|p| p.dims.len() == 2)
        .flat_map(|p| {
            p.path
                .split('.')
                .filter(|part| part.parse::<usize>().is_err() && *part != "weight")
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    names.into_iter().collect()
}

/// A record of `module`'s trainable parameters only: what a LoRA run's checkpoint holds.
pub fn trainable_record<M: Module>(module: M) -> ModuleRecord {
    let group = ParamGroup::from_paths(trainable_paths(&module).into_iter().collect());
    module.into_record_group(group)
}

/// `module` (adapted) with what the LoRA checkpoint at `path` holds: every adapter factor,
/// and the parameters the run trained whole (a task's new head). A checkpoint without this
/// module's factors, or with a tensor this module has not, is refused by name.
pub fn load_trainable<M: Module>(module: M, path: &Path) -> Result<M, String> {
    let names: BTreeSet<String> = burn_pack::Reader::from_file(path)
        .map_err(|e| e.to_string())?
        .tensor_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let factors = collect(&module, false)
        .into_iter()
        .map(|p| p.path)
        .filter(|p| is_factor(p));
    for factor in factors {
        if !names.contains(&factor) {
            return Err(format!(
                "holds no {factor}: it is not a checkpoint of this LoRA run (are its lora_targets the run's?)"
            ));
        }
    }
    let record = ModuleRecord::load(path).map_err(|e| e.to_string())?;
    // The base's weights are not in it; a tensor the module has not is still refused.
    module
        .try_load_record(record.allow_partial(true))
        .map_err(|e| e.to_string())
}

/// A LoRA run's `base.json`: the model its adapters adapt.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// The run or Hugging Face directory, absolute.
    pub path: PathBuf,
    /// The run's checkpoint epoch (none for a Hugging Face directory).
    pub epoch: Option<usize>,
    /// SHA-256 of the base's weights as loaded (names and bytes, in order).
    pub fingerprint: String,
}

impl Base {
    /// The base at `path` (its checkpoint of `epoch`), whose weights are `weights`.
    pub fn new(path: &Path, epoch: Option<usize>, weights: ModuleRecord) -> Result<Self, ZooError> {
        Ok(Self {
            path: std::fs::canonicalize(path).map_err(|e| ZooError::io(path, e))?,
            epoch,
            fingerprint: fingerprint(weights)?,
        })
    }

    /// Reads `run_dir`'s base.
    pub fn read(run_dir: &Path) -> Result<Self, ZooError> {
        let path = run_dir.join(BASE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| ZooError::io(&path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| ZooError::run_dir(run_dir, format!("{BASE_FILE} is damaged: {e}")))
    }

    /// Writes it into `run_dir`.
    pub fn write(&self, run_dir: &Path) -> Result<(), ZooError> {
        let text = serde_json::to_string_pretty(self).expect("a base serialises");
        let path = run_dir.join(BASE_FILE);
        write_atomically(&path, text.as_bytes()).map_err(|e| ZooError::io(&path, e))
    }

    /// Checks that `weights` (the base as loaded now) are the ones the run was trained on.
    pub fn check(&self, run_dir: &Path, weights: ModuleRecord) -> Result<(), ZooError> {
        let now = fingerprint(weights)?;
        if now != self.fingerprint {
            return Err(ZooError::run_dir(
                run_dir,
                format!(
                    "adapts {} (epoch {}), whose weights have changed since this run was trained (fingerprint {} in {BASE_FILE}, {now} now): its adapters no longer fit them",
                    self.path.display(),
                    self.epoch.map_or("-".into(), |e| e.to_string()),
                    self.fingerprint
                ),
            ));
        }
        Ok(())
    }
}

/// The base of the LoRA run in `run_dir`, loaded by `load` (from a directory and a checkpoint
/// epoch) after checking that its weights (`weights` of it) are the ones the run was trained
/// on; and where it was.
pub fn load_base<R>(
    run_dir: &Path,
    load: impl FnOnce(&Path, Option<usize>) -> Result<R, ZooError>,
    weights: impl FnOnce(&R) -> ModuleRecord,
) -> Result<(R, PathBuf), ZooError> {
    let base = Base::read(run_dir)?;
    let loaded = load(&base.path, base.epoch).map_err(|e| {
        ZooError::run_dir(
            run_dir,
            format!(
                "adapts {}, which does not load ({e}): put it back where {BASE_FILE} says",
                base.path.display()
            ),
        )
    })?;
    base.check(run_dir, weights(&loaded))?;
    Ok((loaded, base.path))
}

/// SHA-256 over a record's tensor names and bytes (its parameter ids, which differ between
/// loads of the same weights, left out).
pub fn fingerprint(record: ModuleRecord) -> Result<String, ZooError> {
    let bytes = record
        .into_bytes()
        .map_err(|e| ZooError::Training(e.to_string()))?;
    let reader =
        burn_pack::Reader::from_bytes(bytes).map_err(|e| ZooError::Training(e.to_string()))?;
    let mut hash = Sha256::new();
    for tensor in reader
        .into_tensors()
        .map_err(|e| ZooError::Training(e.to_string()))?
    {
        let (name, _, shape, _, data) = tensor
            .into_parts()
            .map_err(|e| ZooError::Training(e.to_string()))?;
        hash.update(name.as_bytes());
        hash.update(format!("{shape:?}").as_bytes());
        hash.update(&data[..]);
    }
    Ok(format!("{:x}", hash.finalize()))
}
