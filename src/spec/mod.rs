//! The job specification: what to train, on what data, with which optimizer and policies,
//! and what to watch. Plain data, no `tch`.
//!
//! A spec is read in one step, [`JobSpec::parse`], which parses strictly (unknown fields
//! are errors), fills the defaults that depend on the model's kind and checks every range,
//! naming the offending field the way clients spell it. Its result, [`ValidSpec`], is what
//! training, the budget, the store and the scheduler take, so no unchecked spec reaches
//! them.
//!
//! - [`task`] — the data: a corpus or a generated task.
//! - [`model`] — the network, and its per-kind defaults.
//! - [`optimizer`] — optimizer, schedule and weight decay.
//! - [`policy`] — gradient and weight policies.
//! - [`precision`] — the training precision and fp16's loss scaling.
//! - [`monitor`] — what is recorded and the diagnosis thresholds.
//! - [`notify`] — the job's webhook.
//! - [`device`] — the `device` field.
//! - [`experiment`] — an experiment: a base spec, axes and seeds, expanded into checked
//!   job specs.
//! - [`error`] — [`SpecError`], JSON field paths, and the ranges validation checks.
//! - [`schema`] — writes those ranges into the OpenAPI document.
//!
//! Each type's defaults are its `Default` (read by serde for missing fields and by the
//! OpenAPI schema for its `default`s); its ranges are constants beside it, read by its
//! `validate` and by [`schema::publish_ranges`].

pub mod device;
pub mod error;
pub mod experiment;
pub mod model;
pub mod monitor;
pub mod notify;
pub mod optimizer;
pub mod policy;
pub mod precision;
pub mod schema;
pub mod task;

use std::ops::Deref;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use device::{DeviceChoice, parse_device};
pub use error::{FieldError, SpecError};
pub use experiment::{CellInfo, ExperimentSpec, Threshold, ThresholdMetric, ValidExperiment};
pub use model::{Activation, ModelKind, ModelSpec, Norm, NormPosition};
pub use monitor::{MonitorSpec, chosen_layers};
pub use notify::{NotifyOn, NotifySpec};
pub use optimizer::{NoDecay, OptimizerKind, OptimizerSpec, Schedule};
pub use policy::{
    AgcPolicy, AutoclipPolicy, GradPolicy, NormType, OnNonfinite, OnSpike, PolicySpec, RollbackPolicy, SkipSpikePolicy,
    SpikeMetric, WeightPolicy, ZclipPolicy,
};
pub use precision::{LossScaleSpec, Precision};
pub use task::{AddingTask, CharLmTask, ClassificationTask, CopyTask, DatasetTask, Loss, TaskSpec};

use error::{Ints, Problems, Ranged, check, ints};

pub const DEFAULT_SEED: u64 = 42;
pub const DEFAULT_STEPS: u64 = 2000;
pub const MAX_STEPS: u64 = 10_000_000;
pub const DEFAULT_BATCH_SIZE: i64 = 32;
pub const MAX_BATCH_SIZE: i64 = 8192;
pub const MAX_NAME_LEN: usize = 200;
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 500;
pub const STEPS: Ints = Ints::new(1, MAX_STEPS as i64);
pub const BATCH_SIZE: Ints = Ints::new(1, MAX_BATCH_SIZE);

const RANGES: &[Ranged] = &[ints("JobSpec", "steps", STEPS), ints("JobSpec", "batch_size", BATCH_SIZE)];

/// A training job as submitted. Only `model.kind` is required; the task defaults per
/// model kind (classification for `mlp`, `char_lm` on `builtin:tiny` for the others).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct JobSpec {
    /// A label for people; defaults to `<model>-<task>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Seeds initialisation and batch sampling: the same spec and seed train the same way.
    pub seed: u64,
    /// Optimizer steps to run.
    pub steps: u64,
    pub batch_size: i64,
    /// `auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub task: TaskSpec,
    #[schema(required = true)]
    pub model: ModelSpec,
    pub optimizer: OptimizerSpec,
    pub policy: PolicySpec,
    /// `fp32`, `bf16` or `fp16`: on CUDA, `fp16` runs the forward pass and the loss under
    /// LibTorch's autocast; elsewhere (and for `bf16`) the gradients are rounded to the
    /// precision after the backward pass, as the README describes.
    pub precision: Precision,
    /// fp16's dynamic loss scaling.
    pub loss_scale: LossScaleSpec,
    pub monitor: MonitorSpec,
    /// A webhook told when the job ends and when its diagnosis changes.
    pub notify: NotifySpec,
    /// Write a checkpoint (weights and optimizer state) every this many steps, so an
    /// interrupted job can resume; 0 writes one only at the end and when stopped.
    pub checkpoint_every: u64,
}

impl Default for JobSpec {
    fn default() -> Self {
        Self {
            name: None,
            seed: DEFAULT_SEED,
            steps: DEFAULT_STEPS,
            batch_size: DEFAULT_BATCH_SIZE,
            device: device::DEFAULT_DEVICE.to_owned(),
            task: TaskSpec::CharLm(CharLmTask::default()),
            model: ModelSpec::default(),
            optimizer: OptimizerSpec::default(),
            policy: PolicySpec::default(),
            precision: Precision::default(),
            loss_scale: LossScaleSpec::default(),
            monitor: MonitorSpec::default(),
            notify: NotifySpec::default(),
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
        }
    }
}

/// Which fields a client wrote, of those that are required or whose default depends on
/// another field: read from the same bytes as the spec, ignoring every value.
#[derive(Deserialize)]
struct Given {
    model: GivenModel,
    task: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct GivenModel {
    #[allow(dead_code)]
    kind: IgnoredAny,
    norm: Option<IgnoredAny>,
    activation: Option<IgnoredAny>,
}

impl JobSpec {
    /// Reads a spec from JSON: parses it, fills the defaults that depend on the model's
    /// kind (writing them into the spec, so a stored spec says what ran) and checks every
    /// range. Specs read back from the store come through here too.
    pub fn parse(bytes: &[u8]) -> Result<ValidSpec, SpecError> {
        let mut spec: JobSpec = error::from_json(bytes)?;
        let given: Given = error::from_json(bytes)?;
        let kind = spec.model.kind;
        if given.task.is_none() {
            spec.task = match kind {
                ModelKind::Mlp => TaskSpec::Classification(ClassificationTask::default()),
                ModelKind::Torchscript => {
                    return Err(SpecError::Field {
                        field: "task".to_owned(),
                        message: "a torchscript model needs a dataset task: {\"kind\": \"dataset\", \"id\": …}"
                            .to_owned(),
                    });
                }
                _ => TaskSpec::CharLm(CharLmTask::default()),
            };
        }
        if given.model.norm.is_none() {
            spec.model.norm = kind.default_norm();
        }
        if given.model.activation.is_none() && kind != ModelKind::Torchscript {
            spec.model.activation = Some(kind.default_activation());
        }
        ValidSpec::try_from(spec)
    }

    /// [`JobSpec::parse`] for a spec already in a JSON value.
    pub fn parse_value(value: &serde_json::Value) -> Result<ValidSpec, SpecError> {
        let bytes = serde_json::to_vec(value).map_err(|err| SpecError::Syntax(err.to_string()))?;
        Self::parse(&bytes)
    }

    /// The job's display name: `name`, or `<model>-<task>`.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("{}-{}", self.model.kind.as_str(), self.task.kind()))
    }

    /// Checks every range the types cannot express, reporting every invalid field at once:
    /// the parts are checked independently of each other, and within the model, the
    /// optimizer and the monitor each range on its own.
    fn validate(&self) -> Result<(), SpecError> {
        let mut problems = Problems::default();
        if let Some(name) = &self.name {
            problems.add(check(!name.trim().is_empty(), "name", "must not be blank"));
            problems.add(check(name.len() <= MAX_NAME_LEN, "name", format!("at most {MAX_NAME_LEN} bytes")));
        }
        problems.add(STEPS.check(self.steps, "steps"));
        problems.add(BATCH_SIZE.check(self.batch_size, "batch_size"));
        problems.add(check(parse_device(&self.device).is_some(), "device", "must be auto, cpu, cuda or cuda:N"));
        problems.add(self.task.validate());
        problems.add(self.model.validate(self.task.is_sequence(), self.task.dataset().is_some()));
        problems.add(self.optimizer.validate(self.steps));
        problems.add(self.policy.validate());
        problems.add(self.loss_scale.validate(self.precision));
        problems.add(self.monitor.validate());
        problems.add(self.notify.validate());
        problems.finish()
    }
}

/// A spec that passed [`JobSpec::parse`] (or, built in code, [`ValidSpec::try_from`]):
/// every range checked, every per-kind default resolved. Read it through `Deref`.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ValidSpec(JobSpec);

impl TryFrom<JobSpec> for ValidSpec {
    type Error = SpecError;

    /// Checks a spec built in code. Unlike [`JobSpec::parse`] it fills nothing in: every
    /// field is taken as written.
    fn try_from(spec: JobSpec) -> Result<Self, SpecError> {
        spec.validate()?;
        Ok(Self(spec))
    }
}

impl Deref for ValidSpec {
    type Target = JobSpec;

    fn deref(&self) -> &JobSpec {
        &self.0
    }
}

impl ValidSpec {
    /// The spec, to change and check again.
    pub fn into_inner(self) -> JobSpec {
        self.0
    }
}

impl<'de> Deserialize<'de> for ValidSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        JobSpec::parse_value(&value).map_err(serde::de::Error::custom)
    }
}

/// Every bound the schema publishes, one list per part.
pub(crate) fn ranges() -> impl Iterator<Item = &'static Ranged> {
    [RANGES, task::RANGES, model::RANGES, optimizer::RANGES, policy::RANGES, precision::RANGES, monitor::RANGES]
        .into_iter()
        .flatten()
}

#[cfg(test)]
mod tests;
