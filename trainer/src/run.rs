//! The run directory: what a training run leaves behind and what the exporter reads back.
//!
//! - `config.json`: the [`TrainingConfig`] (model hyper-parameters included), enough to rebuild
//!   the model exactly;
//! - `model.bpk`: the weights in Burn's record format (burnpack);
//! - `metrics.csv`: one row per epoch;
//! - `optimizer-<epoch>.bpk`: Adam's state after that epoch (burnpack), for an exact resume;
//! - `trained-<epoch>.bpk`: with weight averaging (`--ema`), the weights training goes on from
//!   (`model.bpk` then holds their average), for an exact resume.
//!
//! Every file is written atomically ([`machine::write_file`]: a temporary file beside it, then
//! a rename), so an interrupted run never leaves half a file behind. While a run trains it holds
//! a lock on `.train.lock` ([`RunLock`]), so that a second trainer cannot train it at once.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use burn::{module::Module, prelude::*, store::ModuleRecord};

use crate::model::{Model, ModelConfig};

/// Version of the run-directory layout; bumped when `config.json` or the weights change meaning.
pub const RUN_FORMAT: u32 = 2;
/// Name of the configuration file in a run directory.
pub const CONFIG_FILE: &str = "config.json";
/// Name of the weights file in a run directory.
pub const WEIGHTS_FILE: &str = "model.bpk";
/// Name of the metrics file in a run directory.
pub const METRICS_FILE: &str = "metrics.csv";

/// Name of the optimizer checkpoint written after `epoch`.
pub fn optimizer_file(epoch: usize) -> String {
    format!("optimizer-{epoch}.bpk")
}

/// Saves Adam's state after `epoch` into `dir` atomically. Earlier checkpoints stay until the
/// caller has recorded `epoch` as done and calls [`prune_checkpoints`].
pub fn save_optimizer(
    optimizer: &burn::optim::ModuleOptimizer,
    epoch: usize,
    dir: &Path,
) -> anyhow::Result<()> {
    let bytes = optimizer
        .to_record()
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("cannot serialise the optimizer state: {e}"))?;
    machine::write_file(&dir.join(optimizer_file(epoch)), &bytes)?;
    Ok(())
}

/// Name of the weights training goes on from after `epoch`, in a run that saves their average
/// as its weights ([`TrainingConfig::ema_decay`]).
pub fn trained_weights_file(epoch: usize) -> String {
    format!("trained-{epoch}.bpk")
}

/// The epoch of a checkpoint file named `<prefix><epoch>.bpk`.
fn checkpoint_epoch(name: &str, prefix: &str) -> Option<usize> {
    name.strip_prefix(prefix)?
        .strip_suffix(".bpk")?
        .parse()
        .ok()
}

/// The files `<prefix><epoch>.bpk` in `dir`: each one's epoch and path, in no order.
fn checkpoints(dir: &Path, prefix: &str) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let epoch = checkpoint_epoch(&entry.file_name().to_string_lossy(), prefix)?;
            Some((epoch, entry.path()))
        })
        .collect()
}

/// The optimizer checkpoints in `dir` ([`optimizer_file`]): each one's epoch and path, in no
/// order.
pub fn optimizer_checkpoints(dir: &Path) -> Vec<(usize, PathBuf)> {
    checkpoints(dir, "optimizer-")
}

/// The first file of a run (or of what is left of one) found in `dir`: its config, weights,
/// metrics, an optimizer checkpoint, trained weights ([`trained_weights_file`]) or staged weights
/// ([`staged_weights_file`]). `train` refuses such a folder, which it would overwrite.
pub fn file_of_a_run(dir: &Path) -> Option<PathBuf> {
    let named = [CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.exists());
    let numbered = || {
        fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|path| {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                ["optimizer-", "trained-", "model-"]
                    .iter()
                    .any(|prefix| checkpoint_epoch(&name, prefix).is_some())
            })
    };
    named.or_else(numbered)
}

/// Removes optimizer checkpoints and trained weights ([`trained_weights_file`]) of epochs other
/// than `keep`.
pub fn prune_checkpoints(dir: &Path, keep: usize) {
    for prefix in ["optimizer-", "trained-"] {
        for (epoch, path) in checkpoints(dir, prefix) {
            if epoch != keep {
                fs::remove_file(path).ok();
            }
        }
    }
}

/// Saves the weights training goes on from after `epoch` ([`trained_weights_file`]) into `dir`
/// atomically. Earlier ones stay until [`prune_checkpoints`].
pub fn save_trained_weights(model: &Model, epoch: usize, dir: &Path) -> anyhow::Result<()> {
    write_weights(model, &dir.join(trained_weights_file(epoch)))
}

/// Adam's state after `epoch` for `model` (the run's weights), if the run has it.
///
/// # Errors
/// A checkpoint that exists but does not parse, holds the state of other parameters than
/// `model`'s (Burn would drop it without a word and start Adam afresh), or holds a NaN or an
/// infinity (training would stop at a NaN loss and blame the learning rate).
pub fn load_optimizer(
    dir: &Path,
    epoch: usize,
    model: &Model,
) -> Result<Option<burn::optim::OptimizerRecord>, RunError> {
    let path = dir.join(optimizer_file(epoch));
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RunError::Io { path, source }),
    };
    let damaged = |reason: String| RunError::Optimizer {
        path: path.clone(),
        reason,
    };
    check_optimizer_state(&bytes, model).map_err(damaged)?;
    burn::optim::OptimizerRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map(Some)
        .map_err(|e| damaged(e.to_string()))
}

/// Checks that Adam's saved state (burnpack bytes) is `model`'s: states of its parameters only,
/// matched by Burn's parameter ids (which the weights file keeps), and finite.
fn check_optimizer_state(bytes: &[u8], model: &Model) -> Result<(), String> {
    struct Ids(std::collections::BTreeSet<u64>);
    impl burn::module::ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            self.0.insert(param.id.val());
        }
    }
    let mut ids = Ids(Default::default());
    model.visit(&mut ids);
    let reader = burn_pack::Reader::from_bytes(burn_pack::Bytes::from_bytes_vec(bytes.to_vec()))
        .map_err(|e| e.to_string())?;
    // Burn writes each parameter's rank as the scalar `<id>.__rank`.
    let saved: std::collections::BTreeSet<u64> = reader
        .scalars()
        .keys()
        .filter_map(|key| key.strip_suffix(".__rank")?.parse().ok())
        .collect();
    // Adam keeps state only for parameters that had a gradient, so it may hold fewer than the
    // model, never others (another run's parameters have other random ids).
    if saved.is_empty() || !saved.is_subset(&ids.0) {
        let shared = saved.intersection(&ids.0).count();
        return Err(format!(
            "it holds Adam's state for {} parameters, {shared} of them among the {} of \
             {WEIGHTS_FILE}: it is another run's; move it away to resume with Adam afresh",
            saved.len(),
            ids.0.len()
        ));
    }
    for tensor in reader.into_tensors().map_err(|e| e.to_string())? {
        let (name, dtype, _, _, data) = tensor.into_parts().map_err(|e| e.to_string())?;
        if !all_finite(dtype, &data) {
            // Named `<parameter id>.<field>`: the field says which of Adam's moments it is.
            let field = name
                .split_once('.')
                .map_or(name.as_str(), |(_, field)| field);
            return Err(format!("its {field} holds a NaN or an infinity"));
        }
    }
    Ok(())
}

/// Whether every value of a little-endian tensor of `dtype` is finite. Integers are; so, here,
/// are quantized floats (their scales are not read).
fn all_finite(dtype: burn_pack::DType, data: &[u8]) -> bool {
    use burn_pack::DType;
    // A half-precision value is NaN or infinite when its exponent bits are all ones.
    let half = |exponent: u16| {
        data.chunks_exact(2)
            .all(|b| u16::from_le_bytes([b[0], b[1]]) & exponent != exponent)
    };
    match dtype {
        DType::F64 => data
            .chunks_exact(8)
            .all(|b| f64::from_le_bytes(b.try_into().unwrap_or_default()).is_finite()),
        DType::F32 | DType::Flex32 => data
            .chunks_exact(4)
            .all(|b| f32::from_le_bytes(b.try_into().unwrap_or_default()).is_finite()),
        DType::F16 => half(0x7C00),
        DType::BF16 => half(0x7F80),
        _ => true,
    }
}

/// Everything a training run was configured with.
#[derive(Config, Debug)]
pub struct TrainingConfig {
    /// Run-directory format this config belongs to ([`RUN_FORMAT`]).
    #[config(default = 2)]
    pub format: u32,
    /// Model family and hyper-parameters.
    pub model: ModelConfig,
    /// Passes over the training images.
    #[config(default = 10)]
    pub epochs: usize,
    /// Images per optimisation step.
    #[config(default = 128)]
    pub batch_size: usize,
    /// Adam learning rate (the first step's, when `final_learning_rate` is set).
    #[config(default = 1e-3)]
    pub learning_rate: f64,
    /// When set, the learning rate falls from `learning_rate` to this value over the run along
    /// a half cosine, step by step (constant when absent).
    #[config(default = "None")]
    pub final_learning_rate: Option<f64>,
    /// The learning rate rises linearly to its schedule's value over this many first steps
    /// (absent or 0: no warm-up), so Adam's first steps, full-sized on moments estimated from a
    /// batch or two, cannot push a model into a dead start.
    #[config(default = "None")]
    pub warmup_steps: Option<usize>,
    /// Weight averaging: when set, the run's weights (`model.bpk`, evaluated after every
    /// epoch) are an exponential moving average of the trained weights, with this decay per
    /// step ([`crate::average`]); training goes on from the trained ones
    /// ([`trained_weights_file`]).
    #[config(default = "None")]
    pub ema_decay: Option<f64>,
    /// Seed of the initialisation, the shuffling and the latent sampling.
    #[config(default = 42)]
    pub seed: u64,
    /// MNIST families: train on the first N training images only (all when absent).
    #[config(default = "None")]
    pub train_subset: Option<usize>,
    /// MNIST families: evaluate on the first N test images only (all when absent).
    #[config(default = "None")]
    pub test_subset: Option<usize>,
    /// The dataset directory the run was trained on (`train --data`, made absolute), which
    /// `resume`, `eval`, `pictures`, `pca --run` and the exporter then use by default; absent:
    /// the family's bundled data.
    #[config(default = "None")]
    pub data: Option<PathBuf>,
}

impl TrainingConfig {
    /// The learning rate of optimisation step `step` of `steps` (counted over the whole run):
    /// `learning_rate`, or with `final_learning_rate` the half-cosine from one to the other;
    /// during the first `warmup_steps` steps that rate times `(step + 1) / warmup_steps`.
    pub fn learning_rate_at(&self, step: usize, steps: usize) -> f64 {
        let rate = match self.final_learning_rate {
            None => self.learning_rate,
            Some(last) => {
                let t = step as f64 / steps.saturating_sub(1).max(1) as f64;
                last + 0.5
                    * (self.learning_rate - last)
                    * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
            }
        };
        match self.warmup_steps {
            Some(warmup) if step < warmup => rate * (step + 1) as f64 / warmup as f64,
            _ => rate,
        }
    }

    /// Checks what the CLI checks of its flags, for a configuration read from a file: learning
    /// rates finite and not negative, at least one epoch, image per batch and subset image, an
    /// averaging decay above 0 and below 1, and the model's own settings
    /// ([`ModelConfig::validate`]).
    ///
    /// # Errors
    /// What is wrong, in words.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("learning_rate", Some(self.learning_rate)),
            ("final_learning_rate", self.final_learning_rate),
        ] {
            if let Some(rate) = rate.filter(|r| !(r.is_finite() && *r >= 0.0)) {
                return Err(format!(
                    "{name} {rate:e} is not a usable learning rate (finite, >= 0)"
                ));
            }
        }
        for (name, n) in [
            ("epochs", Some(self.epochs)),
            ("batch_size", Some(self.batch_size)),
            ("train_subset", self.train_subset),
            ("test_subset", self.test_subset),
        ] {
            if n == Some(0) {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if let Some(decay) = self.ema_decay.filter(|d| !(*d > 0.0 && *d < 1.0)) {
            return Err(format!(
                "ema_decay {decay} is not a decay per step (above 0 and below 1)"
            ));
        }
        if self.batch_size > MAX_BATCH_SIZE {
            return Err(format!(
                "batch_size {} is more than {MAX_BATCH_SIZE} (all of MNIST's 60,000 training \
                 images fit in one batch below it)",
                self.batch_size
            ));
        }
        self.model.validate()
    }
}

/// The largest batch a run may ask for (`TrainingConfig::batch_size`): a batch's tensors are
/// allocated whole, and a larger one only asks the allocator for more than a machine has.
pub const MAX_BATCH_SIZE: usize = 1 << 16;

/// Why a run directory could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The directory or one of its files is missing or unreadable.
    // The I/O error is the source: anyhow prints it below ("Caused by"), not twice.
    #[error("cannot read {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `config.json` does not parse.
    #[error("{path} is not a valid training config: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// The run was written by another version of the run format.
    #[error("{path} has run format {found}; this build reads format {RUN_FORMAT}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its format.
        found: u32,
    },
    /// A model family this build does not know.
    #[error("{path}: unknown model family {family:?}")]
    Family {
        /// The file.
        path: PathBuf,
        /// The family named there.
        family: String,
    },
    /// An optimizer checkpoint is corrupt or not the run's.
    #[error("cannot resume Adam from {path}: {reason}")]
    Optimizer {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The weights file is corrupt or does not fit the model.
    #[error("cannot load weights {path}: {reason}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// Burn's message.
        reason: String,
    },
}

/// Name of the lock file a training run holds ([`RunLock`]).
pub const LOCK_FILE: &str = ".train.lock";

/// Why a trainer cannot take a run directory: another process is training it (for `train` and
/// `resume`), or it holds a run already (for `train`).
#[derive(Debug, thiserror::Error)]
pub enum Occupied {
    /// Another process holds the directory's [`RunLock`].
    #[error(
        "{} is being trained by another process, which holds its {LOCK_FILE}; wait for that \
         one to end",
        dir.display()
    )]
    Busy {
        /// The run directory.
        dir: PathBuf,
    },
    /// The directory holds a file of a run ([`file_of_a_run`]), which a new run would replace.
    #[error(
        "{} holds {file}, a file of a run: to start over, delete it or give another --out",
        dir.display()
    )]
    Holds {
        /// The run directory.
        dir: PathBuf,
        /// The file's name.
        file: String,
    },
}

impl Occupied {
    /// [`Occupied::Holds`] when `dir` holds a file of a run.
    pub fn check(dir: &Path) -> Result<(), Occupied> {
        match file_of_a_run(dir) {
            Some(file) => Err(Occupied::Holds {
                dir: dir.to_path_buf(),
                file: file
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            }),
            None => Ok(()),
        }
    }
}

/// The right to write a run directory, held while a run trains: an advisory lock on its
/// [`LOCK_FILE`], which the operating system releases when the process ends, even by `kill -9`,
/// so an interrupted run never leaves its directory locked. Two trainers on one run would
/// otherwise write each other's checkpoints and metrics.
#[derive(Debug)]
pub struct RunLock {
    _file: fs::File,
}

impl RunLock {
    /// Locks the existing directory `dir`, without waiting.
    ///
    /// # Errors
    /// [`Occupied::Busy`] when another process (or another `RunLock` of this one) holds it; an
    /// I/O error when the lock file cannot be opened or locked.
    pub fn take(dir: &Path) -> anyhow::Result<RunLock> {
        let path = dir.join(LOCK_FILE);
        let file = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(Occupied::Busy {
                dir: dir.to_path_buf(),
            }
            .into()),
            Err(fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }
}

/// Name of the weights after `epoch` while they wait for the epoch's metrics row.
pub fn staged_weights_file(epoch: usize) -> String {
    format!("model-{epoch}.bpk")
}

/// Saves the weights after `epoch` into `dir` atomically, beside the run's current ones
/// ([`staged_weights_file`]): [`commit_weights`] makes them the run's once `metrics.csv` records
/// the epoch as done, so the weights and the metrics never disagree about the epochs done.
pub fn stage_weights(model: &Model, epoch: usize, dir: &Path) -> anyhow::Result<()> {
    write_weights(model, &dir.join(staged_weights_file(epoch)))
}

/// The weights training goes on from after `epoch` ([`trained_weights_file`]), if the run has
/// them.
///
/// # Errors
/// A file that is there but does not load as `model`'s weights.
pub fn load_trained_weights(
    dir: &Path,
    epoch: usize,
    model: &ModelConfig,
    device: &Device,
) -> Result<Option<Model>, RunError> {
    let path = dir.join(trained_weights_file(epoch));
    if !path.exists() {
        return Ok(None);
    }
    load_weights(&path, model, device).map(Some)
}

/// Writes `model`'s weights to `path` atomically.
fn write_weights(model: &Model, path: &Path) -> anyhow::Result<()> {
    let bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| anyhow::anyhow!("cannot serialise weights: {e}"))?;
    machine::write_file(path, &bytes)?;
    Ok(())
}

/// Renames the weights staged after `epoch` to the run's weights ([`WEIGHTS_FILE`]).
pub fn commit_weights(dir: &Path, epoch: usize) -> anyhow::Result<()> {
    let staged = dir.join(staged_weights_file(epoch));
    fs::rename(&staged, dir.join(WEIGHTS_FILE))
        .with_context(|| format!("renaming {}", staged.display()))
}

/// Settles the weights of a run stopped between saving an epoch's weights and renaming them:
/// the staged weights of the last epoch `metrics.csv` records (`done`) become the run's, any
/// other staged weights (an epoch not recorded as done) are deleted, and so are the temporary
/// files of writes killed processes left ([`machine::remove_stale_temporaries`]); a live
/// process's (a `trainer sample` writing into the run) are left to it.
///
/// # Errors
/// Staged weights of epoch `done` that do not load as the run's model (written whole by
/// [`stage_weights`], so damaged since): the run's weights are left as they are.
pub fn settle_staged_weights(dir: &Path, done: usize) -> anyhow::Result<()> {
    let staged = dir.join(staged_weights_file(done));
    if done > 0 && staged.exists() {
        let config = load_config(dir)?;
        if let Err(e) = load_weights(&staged, &config.model, &Device::flex()) {
            // The cause below it (anyhow's chain keeps the I/O error under a read error).
            return Err(anyhow::Error::new(e).context(format!(
                "the staged weights of epoch {done}, {}, were to replace {}; nothing was changed",
                staged.display(),
                dir.join(WEIGHTS_FILE).display()
            )));
        }
    }
    machine::remove_stale_temporaries(dir);
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let epoch = name
            .strip_prefix("model-")
            .and_then(|rest| rest.strip_suffix(".bpk"))
            .and_then(|n| n.parse::<usize>().ok());
        match epoch {
            Some(epoch) if epoch == done => commit_weights(dir, epoch)?,
            Some(_) => fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?,
            None => {}
        }
    }
    Ok(())
}

/// Saves the configuration into `dir` atomically.
pub fn save_config(config: &TrainingConfig, dir: &Path) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(config)?;
    machine::write_file(&dir.join(CONFIG_FILE), json.as_bytes())?;
    Ok(())
}

/// Reads a run's configuration, checking its format version and family.
pub fn load_config(dir: &Path) -> Result<TrainingConfig, RunError> {
    let path = dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&path).map_err(|source| RunError::Io {
        path: path.clone(),
        source,
    })?;
    // Look at the version first, so an old or new layout gets the right message.
    let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| RunError::Config {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if !raw.is_object() {
        return Err(RunError::Config {
            path,
            reason: "not a JSON object".into(),
        });
    }
    // No `format` at all: a run from before the field.
    let found = match raw.get("format") {
        None => 0,
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => n,
            None => {
                return Err(RunError::Config {
                    path,
                    reason: format!("`format` is {v}, not a run format number"),
                });
            }
        },
    };
    if found != RUN_FORMAT {
        return Err(RunError::Version { path, found });
    }
    let family = raw
        .get("model")
        .and_then(|m| m.get("family"))
        .and_then(|f| f.as_str());
    if let Some(family) = family.filter(|f| !ModelConfig::FAMILIES.contains(f)) {
        return Err(RunError::Family {
            path,
            family: family.into(),
        });
    }
    let config: TrainingConfig = serde_json::from_value(raw.clone()).map_err(|e| {
        // serde names no path for a wrong value inside the model's settings: say it is there,
        // and for which family (a hand-edited family whose fields are another's, say).
        let in_model = raw
            .get("model")
            .is_some_and(|model| serde_json::from_value::<ModelConfig>(model.clone()).is_err());
        let reason = match (in_model, family) {
            (true, Some(family)) => format!("model ({family}): {e}"),
            (true, None) => format!("model: {e}"),
            _ => e.to_string(),
        };
        RunError::Config {
            path: path.clone(),
            reason,
        }
    })?;
    // A field this build does not know (a newer trainer's setting) would otherwise be dropped
    // without a word, and the run resumed or evaluated without it.
    let known = serde_json::to_value(&config).map_err(|e| RunError::Config {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if let Some(field) = unknown_field(&raw, &known) {
        return Err(RunError::Config {
            path,
            reason: format!("unknown field `{field}` (written by a newer trainer?)"),
        });
    }
    config
        .validate()
        .map_err(|reason| RunError::Config { path, reason })?;
    Ok(config)
}

/// The first key of `raw` (as a dotted path) that `known`, the same config as this build
/// writes it, does not have.
fn unknown_field(raw: &serde_json::Value, known: &serde_json::Value) -> Option<String> {
    let (serde_json::Value::Object(raw), serde_json::Value::Object(known)) = (raw, known) else {
        return None;
    };
    raw.iter().find_map(|(key, value)| match known.get(key) {
        None => Some(key.clone()),
        Some(known) => unknown_field(value, known).map(|inner| format!("{key}.{inner}")),
    })
}

/// Rebuilds the trained model of the run in `dir` on `device`.
pub fn load_run(dir: &Path, device: &Device) -> Result<(TrainingConfig, Model), RunError> {
    let config = load_config(dir)?;
    let model = load_weights(&dir.join(WEIGHTS_FILE), &config.model, device)?;
    Ok((config, model))
}

/// The `model` with the weights in the file at `path`, on `device`.
pub fn load_weights(path: &Path, model: &ModelConfig, device: &Device) -> Result<Model, RunError> {
    let bytes = fs::read(path).map_err(|source| RunError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let weights = |reason: String| RunError::Weights {
        path: path.to_path_buf(),
        reason,
    };
    let record = ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| weights(e.to_string()))?;
    let model = model
        .init(device)
        .try_load_record(record)
        .map_err(|e| weights(e.to_string()))?;
    // Training stops at a non-finite loss, so such weights were damaged or written elsewhere:
    // every figure and picture made from them would be NaN.
    let mut finite = AllFinite(true);
    model.visit(&mut finite);
    if !finite.0 {
        return Err(weights("a weight is NaN or infinite".into()));
    }
    Ok(model)
}

/// A [`burn::module::ModuleVisitor`] that finds whether every float parameter is finite.
struct AllFinite(bool);

impl burn::module::ModuleVisitor for AllFinite {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        if self.0 {
            self.0 = param.val().is_finite().all().into_scalar();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_or_an_infinity_is_found_in_every_float_width() {
        use burn_pack::DType;
        let f64s = |v: f64| v.to_le_bytes().to_vec();
        let f32s = |v: f32| v.to_le_bytes().to_vec();
        // f16 and bf16 by their bit patterns: 1.0, infinity, a NaN.
        let bits = |v: u16| v.to_le_bytes().to_vec();
        let cases = [
            (
                DType::F64,
                f64s(1.5),
                f64s(f64::NAN),
                f64s(f64::NEG_INFINITY),
            ),
            (DType::F32, f32s(1.5), f32s(f32::NAN), f32s(f32::INFINITY)),
            (DType::F16, bits(0x3C00), bits(0x7E00), bits(0x7C00)),
            (DType::BF16, bits(0x3F80), bits(0x7FC0), bits(0xFF80)),
        ];
        for (dtype, finite, nan, infinite) in cases {
            let with = |bad: &[u8]| [finite.clone(), bad.to_vec(), finite.clone()].concat();
            assert!(all_finite(dtype, &with(&finite)), "{dtype:?}");
            assert!(!all_finite(dtype, &with(&nan)), "{dtype:?} NaN");
            assert!(!all_finite(dtype, &with(&infinite)), "{dtype:?} infinity");
        }
        assert!(
            all_finite(DType::I32, &f32s(f32::NAN)),
            "integers are finite"
        );
    }

    #[test]
    fn the_learning_rate_falls_along_a_half_cosine_when_asked() {
        let config = TrainingConfig::new(ModelConfig::FcVae(crate::model::FcVaeConfig::new()));
        assert_eq!(config.learning_rate_at(0, 100), 1e-3);
        assert_eq!(config.learning_rate_at(99, 100), 1e-3);
        let config = config
            .with_learning_rate(2e-3)
            .with_final_learning_rate(Some(1e-5));
        let at = |step| config.learning_rate_at(step, 101);
        assert!((at(0) - 2e-3).abs() < 1e-15);
        assert!((at(50) - (1e-5 + 2e-3) / 2.0).abs() < 1e-12, "{}", at(50));
        assert!((at(100) - 1e-5).abs() < 1e-15);
        assert!((1..=100).all(|s| at(s) < at(s - 1)), "not falling");
        // An old config.json (no field) still reads as a constant rate.
        let json = r#"{"model":{"family":"fc-vae","latent":2,"hidden":512},"format":2,
            "epochs":50,"batch_size":128,"learning_rate":0.001,"seed":42,
            "train_subset":null,"test_subset":null}"#;
        let old: TrainingConfig = serde_json::from_str(json).expect("parses");
        assert_eq!(old.final_learning_rate, None);
    }

    #[test]
    fn a_warm_up_raises_the_learning_rate_linearly_to_the_schedules_value() {
        let config = TrainingConfig::new(ModelConfig::FcVae(crate::model::FcVaeConfig::new()))
            .with_learning_rate(2e-3)
            .with_warmup_steps(Some(4));
        let rates: Vec<f64> = (0..6).map(|s| config.learning_rate_at(s, 100)).collect();
        assert_eq!(rates, [0.5e-3, 1e-3, 1.5e-3, 2e-3, 2e-3, 2e-3]);
        // With the cosine: the warm-up scales the schedule's own value, then leaves it alone.
        let cosine = config
            .clone()
            .with_warmup_steps(None)
            .with_final_learning_rate(Some(1e-5));
        let both = cosine.clone().with_warmup_steps(Some(10));
        for step in 0..100 {
            let scale = ((step + 1) as f64 / 10.0).min(1.0);
            let (got, want) = (
                both.learning_rate_at(step, 100),
                cosine.learning_rate_at(step, 100),
            );
            assert!(
                (got - scale * want).abs() < 1e-18,
                "step {step}: {got} vs {want}"
            );
        }
        // A config.json from before the option has no warm-up.
        let json = r#"{"model":{"family":"fc-vae","latent":2,"hidden":512},"format":2,
            "epochs":50,"batch_size":128,"learning_rate":0.001,"seed":42,
            "train_subset":null,"test_subset":null}"#;
        let old: TrainingConfig = serde_json::from_str(json).expect("parses");
        assert_eq!(old.warmup_steps, None);
    }

    #[test]
    fn a_conv_vae_config_from_before_its_width_options_reads_as_the_lessons_model() {
        use crate::model::{ConvVaeConfig, LossKind, Reconstruction};
        let json = r#"{"model":{"family":"conv-vae","latent":2},"format":2,"epochs":5,
            "batch_size":128,"learning_rate":0.001,"seed":42,"train_subset":null,
            "test_subset":null}"#;
        let old: TrainingConfig = serde_json::from_str(json).expect("parses");
        assert_eq!(old.model, ModelConfig::ConvVae(ConvVaeConfig::new()));
        assert_eq!(old.model.loss_kind(), LossKind::BceKl);
        let ModelConfig::ConvVae(lesson) = &old.model else {
            unreachable!("parsed as a conv VAE above")
        };
        assert_eq!(lesson.channels(), 8);

        let wide = ConvVaeConfig::new()
            .with_channels(Some(16))
            .with_hidden(Some(512))
            .with_reconstruction(Some(Reconstruction::Sse));
        let json = serde_json::to_string(&TrainingConfig::new(ModelConfig::ConvVae(wide.clone())))
            .expect("serialises");
        assert!(json.contains(r#""reconstruction":"sse""#), "{json}");
        let back: TrainingConfig = serde_json::from_str(&json).expect("parses");
        assert_eq!(back.model, ModelConfig::ConvVae(wide));
        assert_eq!(back.model.loss_kind(), LossKind::SseKl);
    }

    #[test]
    fn a_wrong_value_in_the_model_settings_is_said_to_be_there() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A conv VAE's settings under another family's name (edited by hand).
        let mut config = serde_json::to_value(TrainingConfig::new(ModelConfig::ConvVae(
            crate::model::ConvVaeConfig::new(),
        )))
        .expect("serialises");
        config["model"]["family"] = "dense-ae".into();
        fs::write(dir.path().join(CONFIG_FILE), config.to_string()).expect("write");
        let err = load_config(dir.path()).expect_err("not a dense AE's settings");
        assert!(err.to_string().contains(": model (dense-ae): "), "{err}");
    }
}
