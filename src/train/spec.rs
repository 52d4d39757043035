//! The job specification: what to train, on what data, with which optimizer and policies,
//! and what to watch. Parsed strictly (unknown fields are errors), then range-checked by
//! [`JobSpec::validate`], which names the offending field the way clients spell it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const DEFAULT_SEED: u64 = 42;
pub const DEFAULT_STEPS: u64 = 2000;
pub const MAX_STEPS: u64 = 10_000_000;
pub const DEFAULT_BATCH_SIZE: i64 = 32;
pub const MAX_BATCH_SIZE: i64 = 8192;
pub const DEFAULT_SEQ_LEN: i64 = 128;
pub const MAX_SEQ_LEN: i64 = 8192;
pub const DEFAULT_CORPUS: &str = "builtin:tiny";
pub const DEFAULT_LAYERS: i64 = 2;
pub const MAX_LAYERS: i64 = 128;
pub const DEFAULT_HIDDEN: i64 = 256;
pub const MAX_HIDDEN: i64 = 16_384;
pub const DEFAULT_LR: f64 = 1e-3;
/// AdamW's decoupled weight decay, as in `torch.optim.AdamW`.
pub const DEFAULT_ADAMW_WEIGHT_DECAY: f64 = 0.01;
pub const DEFAULT_PROMETHEUS_LAYERS: u32 = 32;
pub const MAX_NAME_LEN: usize = 200;

/// A training job as submitted. Everything but `task` and `model` has a default.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A label for people; defaults to `<model>-<task>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Seeds initialisation and batch sampling: the same spec and seed train the same way.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Optimizer steps to run.
    #[serde(default = "default_steps")]
    #[schema(minimum = 1, maximum = 10_000_000)]
    pub steps: u64,
    #[serde(default = "default_batch_size")]
    #[schema(minimum = 1, maximum = 8192)]
    pub batch_size: i64,
    /// `auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    pub task: TaskSpec,
    pub model: ModelSpec,
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub policy: PolicySpec,
    #[serde(default)]
    pub monitor: MonitorSpec,
}

/// The data a job trains on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskSpec {
    /// Next-character prediction on a text corpus.
    CharLm {
        /// `builtin:<name>` or the id `POST /api/v1/corpora` returned.
        #[serde(default = "default_corpus")]
        corpus: String,
        /// Characters per training sequence.
        #[serde(default = "default_seq_len")]
        seq_len: i64,
    },
}

impl TaskSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CharLm { .. } => "char_lm",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Lstm,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lstm => "lstm",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    #[default]
    None,
    Batch,
    Layer,
    Rms,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    Tanh,
    Relu,
    Sigmoid,
    Gelu,
}

/// The network. `layers` and `hidden` size every kind.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub kind: ModelKind,
    /// Hidden layers, recurrent layers or transformer blocks.
    #[serde(default = "default_layers")]
    #[schema(minimum = 1, maximum = 128)]
    pub layers: i64,
    /// Width, hidden state or d_model.
    #[serde(default = "default_hidden")]
    #[schema(minimum = 1, maximum = 16384)]
    pub hidden: i64,
    #[serde(default)]
    pub norm: Norm,
    #[serde(default)]
    pub activation: Activation,
    /// Multiplies the default initialisation: above 1 provokes explosion, below 1 vanishing.
    #[serde(default = "one")]
    pub init_scale: f64,
    /// Dropout probability between layers.
    #[serde(default)]
    pub dropout: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Sgd,
    #[default]
    Adamw,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// The base rate after warm-up.
    #[default]
    Constant,
    /// Linear decay from the base rate to 0 at the last step, after warm-up.
    Linear,
    /// Cosine decay from the base rate to 0 at the last step, after warm-up.
    Cosine,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    #[serde(default)]
    pub kind: OptimizerKind,
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Defaults to 0.01 for AdamW (decoupled) and 0 for SGD (L2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// SGD momentum.
    #[serde(default)]
    pub momentum: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default)]
    pub schedule: Schedule,
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::default(),
            lr: DEFAULT_LR,
            weight_decay: None,
            momentum: 0.0,
            warmup_steps: 0,
            schedule: Schedule::default(),
        }
    }
}

impl OptimizerSpec {
    pub fn weight_decay(&self) -> f64 {
        self.weight_decay.unwrap_or(match self.kind {
            OptimizerKind::Adamw => DEFAULT_ADAMW_WEIGHT_DECAY,
            OptimizerKind::Sgd => 0.0,
        })
    }
}

/// A gradient policy, applied in order after backward and before the optimizer step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum GradPolicy {
    /// Rescale all gradients together so their global L2 norm is at most `max_norm`
    /// (`torch.nn.utils.clip_grad_norm_`).
    ClipNorm {
        max_norm: f64,
        /// Only the L2 norm (2) for now.
        #[serde(default = "two")]
        norm_type: f64,
    },
    /// Clamp every gradient element to ±`limit` (`torch.nn.utils.clip_grad_value_`).
    ClipValue { limit: f64 },
}

/// A weight policy, applied after the optimizer step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WeightPolicy {
    /// Clamp every weight to ±`limit`.
    Clip { limit: f64 },
    /// Multiply every weight by `factor` every `every` steps.
    Scale {
        factor: f64,
        #[serde(default = "one_u64")]
        every: u64,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnNonfinite {
    /// Drop the update of a step whose loss or gradient is NaN/Inf and go on.
    #[default]
    Skip,
    /// End the job `diverged`.
    Stop,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default)]
    pub grad: Vec<GradPolicy>,
    #[serde(default)]
    pub weight: Vec<WeightPolicy>,
    #[serde(default)]
    pub on_nonfinite: OnNonfinite,
}

/// What to record, and the thresholds of the diagnosis.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MonitorSpec {
    /// Record per-layer statistics every this many steps (the first step always); 0 turns
    /// them off (loss and the global norms are still recorded every step).
    #[serde(default = "one_u64")]
    pub every: u64,
    /// Record per-layer gradient histograms with the statistics.
    #[serde(default = "yes")]
    pub histogram: bool,
    /// At most this many layers per job get a Prometheus series.
    #[serde(default = "default_prometheus_layers")]
    pub prometheus_layers: u32,
    /// `exploding`: the global gradient norm exceeds this multiple of its recent median.
    #[serde(default = "default_explode_factor")]
    pub explode_factor: f64,
    /// `vanishing`: a layer's gradient norm stays below this fraction of the largest
    /// layer's for `diagnose_window` recorded steps.
    #[serde(default = "default_vanish_ratio")]
    pub vanish_ratio: f64,
    /// `dead`: at least this fraction of a layer's gradient entries are exactly zero for
    /// `diagnose_window` recorded steps.
    #[serde(default = "default_dead_frac")]
    pub dead_frac: f64,
    /// Recorded steps a layer condition must last before it is reported.
    #[serde(default = "default_diagnose_window")]
    pub diagnose_window: u64,
    /// Steps between `clipped`/`skipped` summaries.
    #[serde(default = "default_summary_every")]
    pub summary_every: u64,
    /// Steps before the same kind of event for the same layer is reported again.
    #[serde(default = "default_cooldown")]
    pub cooldown: u64,
}

pub const DEFAULT_EXPLODE_FACTOR: f64 = 10.0;
pub const DEFAULT_VANISH_RATIO: f64 = 1e-4;
pub const DEFAULT_DEAD_FRAC: f64 = 0.99;
pub const DEFAULT_DIAGNOSE_WINDOW: u64 = 50;
pub const DEFAULT_SUMMARY_EVERY: u64 = 100;
pub const DEFAULT_COOLDOWN: u64 = 100;

impl Default for MonitorSpec {
    fn default() -> Self {
        Self {
            every: 1,
            histogram: true,
            prometheus_layers: DEFAULT_PROMETHEUS_LAYERS,
            explode_factor: DEFAULT_EXPLODE_FACTOR,
            vanish_ratio: DEFAULT_VANISH_RATIO,
            dead_frac: DEFAULT_DEAD_FRAC,
            diagnose_window: DEFAULT_DIAGNOSE_WINDOW,
            summary_every: DEFAULT_SUMMARY_EVERY,
            cooldown: DEFAULT_COOLDOWN,
        }
    }
}

impl MonitorSpec {
    /// Whether 1-based `step` records per-layer statistics.
    pub fn records(&self, step: u64) -> bool {
        self.every > 0 && (step - 1).is_multiple_of(self.every)
    }
}

/// A spec that parsed but is out of range, naming the field by its JSON path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn check(ok: bool, field: impl Into<String>, message: impl Into<String>) -> Result<(), FieldError> {
    if ok { Ok(()) } else { Err(FieldError { field: field.into(), message: message.into() }) }
}

fn check_positive(value: f64, field: &str) -> Result<(), FieldError> {
    check(value.is_finite() && value > 0.0, field, "must be a finite number above 0")
}

impl JobSpec {
    /// The job's display name: `name`, or `<model>-<task>`.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("{}-{}", self.model.kind.as_str(), self.task.kind()))
    }

    /// Checks every range the types cannot express.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(name) = &self.name {
            check(!name.trim().is_empty(), "name", "must not be blank")?;
            check(name.len() <= MAX_NAME_LEN, "name", format!("at most {MAX_NAME_LEN} bytes"))?;
        }
        check((1..=MAX_STEPS).contains(&self.steps), "steps", format!("must be 1 to {MAX_STEPS}"))?;
        check((1..=MAX_BATCH_SIZE).contains(&self.batch_size), "batch_size", format!("must be 1 to {MAX_BATCH_SIZE}"))?;
        check(parse_device(&self.device).is_some(), "device", "must be auto, cpu, cuda or cuda:N")?;
        self.validate_task()?;
        self.validate_model()?;
        self.validate_optimizer()?;
        self.validate_policy()?;
        self.validate_monitor()
    }

    fn validate_monitor(&self) -> Result<(), FieldError> {
        let m = &self.monitor;
        check(m.prometheus_layers <= 1024, "monitor.prometheus_layers", "at most 1024")?;
        check(m.explode_factor.is_finite() && m.explode_factor > 1.0, "monitor.explode_factor", "must be above 1")?;
        check(
            m.vanish_ratio.is_finite() && m.vanish_ratio > 0.0 && m.vanish_ratio < 1.0,
            "monitor.vanish_ratio",
            "must be between 0 and 1",
        )?;
        check(m.dead_frac > 0.0 && m.dead_frac <= 1.0, "monitor.dead_frac", "must be above 0 and at most 1")?;
        check(m.diagnose_window >= 1, "monitor.diagnose_window", "must be at least 1")?;
        check(m.summary_every >= 1, "monitor.summary_every", "must be at least 1")
    }

    fn validate_task(&self) -> Result<(), FieldError> {
        match &self.task {
            TaskSpec::CharLm { corpus, seq_len } => {
                check(!corpus.is_empty(), "task.corpus", "must name a corpus")?;
                check((2..=MAX_SEQ_LEN).contains(seq_len), "task.seq_len", format!("must be 2 to {MAX_SEQ_LEN}"))
            }
        }
    }

    fn validate_model(&self) -> Result<(), FieldError> {
        let m = &self.model;
        check((1..=MAX_LAYERS).contains(&m.layers), "model.layers", format!("must be 1 to {MAX_LAYERS}"))?;
        check((1..=MAX_HIDDEN).contains(&m.hidden), "model.hidden", format!("must be 1 to {MAX_HIDDEN}"))?;
        check(
            m.init_scale.is_finite() && m.init_scale > 0.0 && m.init_scale <= 100.0,
            "model.init_scale",
            "must be above 0 and at most 100",
        )?;
        check((0.0..1.0).contains(&m.dropout), "model.dropout", "must be at least 0 and below 1")?;
        match m.kind {
            ModelKind::Lstm => {
                check(m.norm == Norm::None, "model.norm", "lstm supports only none")?;
                check(m.activation == Activation::Tanh, "model.activation", "lstm cells use tanh")
            }
        }
    }

    fn validate_optimizer(&self) -> Result<(), FieldError> {
        let o = &self.optimizer;
        check(o.lr.is_finite() && o.lr > 0.0 && o.lr <= 10.0, "optimizer.lr", "must be above 0 and at most 10")?;
        if let Some(wd) = o.weight_decay {
            check(wd.is_finite() && (0.0..=1.0).contains(&wd), "optimizer.weight_decay", "must be 0 to 1")?;
        }
        check((0.0..1.0).contains(&o.momentum), "optimizer.momentum", "must be at least 0 and below 1")?;
        check(o.kind == OptimizerKind::Sgd || o.momentum == 0.0, "optimizer.momentum", "applies to sgd only")?;
        check(o.warmup_steps <= self.steps, "optimizer.warmup_steps", "must not exceed steps")
    }

    fn validate_policy(&self) -> Result<(), FieldError> {
        for (i, policy) in self.policy.grad.iter().enumerate() {
            let at = |field: &str| format!("policy.grad[{i}].{field}");
            match policy {
                GradPolicy::ClipNorm { max_norm, norm_type } => {
                    check_positive(*max_norm, &at("max_norm"))?;
                    check(*norm_type == 2.0, at("norm_type"), "only 2 is supported")?;
                }
                GradPolicy::ClipValue { limit } => check_positive(*limit, &at("limit"))?,
            }
        }
        for (i, policy) in self.policy.weight.iter().enumerate() {
            let at = |field: &str| format!("policy.weight[{i}].{field}");
            match policy {
                WeightPolicy::Clip { limit } => check_positive(*limit, &at("limit"))?,
                WeightPolicy::Scale { factor, every } => {
                    check_positive(*factor, &at("factor"))?;
                    check(*every >= 1, at("every"), "must be at least 1")?;
                }
            }
        }
        Ok(())
    }
}

/// A parsed `device` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

pub fn parse_device(s: &str) -> Option<DeviceChoice> {
    match s {
        "auto" => Some(DeviceChoice::Auto),
        "cpu" => Some(DeviceChoice::Cpu),
        "cuda" => Some(DeviceChoice::Cuda(0)),
        _ => s.strip_prefix("cuda:")?.parse().ok().map(DeviceChoice::Cuda),
    }
}

fn default_seed() -> u64 {
    DEFAULT_SEED
}
fn default_steps() -> u64 {
    DEFAULT_STEPS
}
fn default_batch_size() -> i64 {
    DEFAULT_BATCH_SIZE
}
fn default_device() -> String {
    "auto".to_owned()
}
fn default_corpus() -> String {
    DEFAULT_CORPUS.to_owned()
}
fn default_seq_len() -> i64 {
    DEFAULT_SEQ_LEN
}
fn default_layers() -> i64 {
    DEFAULT_LAYERS
}
fn default_hidden() -> i64 {
    DEFAULT_HIDDEN
}
fn default_lr() -> f64 {
    DEFAULT_LR
}
fn default_prometheus_layers() -> u32 {
    DEFAULT_PROMETHEUS_LAYERS
}
fn default_explode_factor() -> f64 {
    DEFAULT_EXPLODE_FACTOR
}
fn default_vanish_ratio() -> f64 {
    DEFAULT_VANISH_RATIO
}
fn default_dead_frac() -> f64 {
    DEFAULT_DEAD_FRAC
}
fn default_diagnose_window() -> u64 {
    DEFAULT_DIAGNOSE_WINDOW
}
fn default_summary_every() -> u64 {
    DEFAULT_SUMMARY_EVERY
}
fn default_cooldown() -> u64 {
    DEFAULT_COOLDOWN
}
fn one() -> f64 {
    1.0
}
fn two() -> f64 {
    2.0
}
fn one_u64() -> u64 {
    1
}
fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> JobSpec {
        serde_json::from_str(json).expect("spec parses")
    }

    #[test]
    fn defaults_fill_everything_but_task_and_model() {
        let spec = parse(r#"{"task":{"kind":"char_lm"},"model":{"kind":"lstm"}}"#);
        assert_eq!(spec.steps, DEFAULT_STEPS);
        assert_eq!(spec.model.hidden, DEFAULT_HIDDEN);
        assert_eq!(spec.optimizer.weight_decay(), DEFAULT_ADAMW_WEIGHT_DECAY);
        assert_eq!(spec.display_name(), "lstm-char_lm");
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn validation_names_nested_fields() {
        let spec = parse(
            r#"{"task":{"kind":"char_lm"},"model":{"kind":"lstm"},
                "policy":{"grad":[{"kind":"clip_norm","max_norm":1},{"kind":"clip_norm","max_norm":-1}]}}"#,
        );
        assert_eq!(spec.validate().map_err(|e| e.field), Err("policy.grad[1].max_norm".to_owned()));
    }

    #[test]
    fn devices_parse() {
        assert_eq!(parse_device("cuda:3"), Some(DeviceChoice::Cuda(3)));
        assert_eq!(parse_device("gpu"), None);
        assert_eq!(parse_device("cuda:x"), None);
    }
}
