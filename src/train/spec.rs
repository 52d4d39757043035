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
/// Validation (loss and, where the task has one, its metric) every this many steps.
pub const DEFAULT_EVAL_EVERY: u64 = 100;
/// Copy task: distinct data symbols, and how many of them are to be remembered.
pub const DEFAULT_COPY_SYMBOLS: i64 = 8;
pub const DEFAULT_COPY_LENGTH: i64 = 10;
/// Classification task: input features, classes, and Gaussian clusters per class.
pub const DEFAULT_FEATURES: i64 = 32;
pub const DEFAULT_CLASSES: i64 = 10;
pub const DEFAULT_CLUSTERS: i64 = 2;
/// Standard deviation of the classification task's noise around each cluster centre.
pub const DEFAULT_NOISE: f64 = 1.0;
pub const DEFAULT_HEADS: i64 = 4;
/// Adam and AdamW defaults, as in `torch.optim`.
pub const DEFAULT_BETA1: f64 = 0.9;
pub const DEFAULT_BETA2: f64 = 0.999;
pub const DEFAULT_ADAM_EPS: f64 = 1e-8;
/// Adaptive gradient clipping (Brock et al. 2021) defaults.
pub const DEFAULT_AGC_LAMBDA: f64 = 0.01;
pub const DEFAULT_AGC_EPS: f64 = 1e-3;
/// AutoClip (Seetharaman et al. 2020): clip to this percentile of the last `history` norms.
pub const DEFAULT_AUTOCLIP_PERCENTILE: f64 = 10.0;
pub const DEFAULT_AUTOCLIP_HISTORY: u64 = 10_000;
pub const MAX_AUTOCLIP_HISTORY: u64 = 1_000_000;
/// ZClip (Kumar et al. 2025) and spike-skipping defaults: EMA factor, z threshold, warm-up steps.
pub const DEFAULT_ZCLIP_ALPHA: f64 = 0.97;
pub const DEFAULT_ZCLIP_Z: f64 = 2.5;
pub const DEFAULT_SPIKE_Z: f64 = 6.0;
pub const DEFAULT_Z_WARMUP: u64 = 25;
/// ZClip's cap on the global norm, during warm-up and after (the reference's
/// `max_grad_norm`, whose default this is).
pub const DEFAULT_ZCLIP_MAX_GRAD_NORM: f64 = 1.0;
/// `skip_spike` accepts the update after this many consecutive skips: a norm that stays
/// high that long is a new level, not a spike, and skipping it forever would stop training.
pub const DEFAULT_SPIKE_MAX_CONSECUTIVE: u64 = 10;
/// Bounds of `warmup` and `max_consecutive`: longer than any sensible window, and far from
/// overflow in the step arithmetic.
pub const MAX_POLICY_WINDOW: u64 = 100_000;
pub const MAX_NAME_LEN: usize = 200;
/// Most grad policies, and most weight policies, one spec may list: a few are all any
/// experiment needs, and each stateful one holds memory for the whole run.
pub const MAX_POLICIES: usize = 16;

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
    /// Write a checkpoint (weights and optimizer state) every this many steps, so an
    /// interrupted job can resume; 0 writes one only at the end and when stopped.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
}

pub const DEFAULT_CHECKPOINT_EVERY: u64 = 500;

fn default_checkpoint_every() -> u64 {
    DEFAULT_CHECKPOINT_EVERY
}

/// The data a job trains on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskSpec {
    /// Next-character prediction on a text corpus; the last tenth is held out for validation.
    CharLm {
        /// `builtin:<name>` or the id `POST /api/v1/corpora` returned.
        #[serde(default = "default_corpus")]
        corpus: String,
        /// Characters per training sequence.
        #[serde(default = "default_seq_len")]
        seq_len: i64,
        /// Validation loss every this many steps (and after the last); 0 turns it off.
        #[serde(default = "default_eval_every")]
        eval_every: u64,
    },
    /// The adding problem (Hochreiter & Schmidhuber 1997): a sequence of (value, marker)
    /// pairs; predict at the last step the sum of the two marked values. Regression (MSE);
    /// the metric is the fraction of answers within 0.04.
    Adding {
        /// Sequence length: the distance the two marked values must be carried.
        #[serde(default = "default_seq_len")]
        seq_len: i64,
        #[serde(default = "default_eval_every")]
        eval_every: u64,
    },
    /// The copy (memory) problem: `length` random symbols, a pause, a delimiter, then the
    /// model must replay the symbols. The metric is the fraction of replayed symbols right.
    Copy {
        /// Whole sequence length; the pause is `seq_len - 2·length - 1` steps.
        #[serde(default = "default_seq_len")]
        seq_len: i64,
        #[serde(default = "default_copy_symbols")]
        symbols: i64,
        #[serde(default = "default_copy_length")]
        length: i64,
        #[serde(default = "default_eval_every")]
        eval_every: u64,
    },
    /// Synthetic classification for MLPs: Gaussian clusters (`clusters` per class) in
    /// `features` dimensions, drawn from the job's seed. The metric is accuracy.
    Classification {
        #[serde(default = "default_features")]
        features: i64,
        #[serde(default = "default_classes")]
        classes: i64,
        #[serde(default = "default_clusters")]
        clusters: i64,
        /// Standard deviation of each sample around its cluster centre (centres are N(0, 1)).
        #[serde(default = "default_noise")]
        noise: f64,
        #[serde(default = "default_eval_every")]
        eval_every: u64,
    },
}

impl TaskSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CharLm { .. } => "char_lm",
            Self::Adding { .. } => "adding",
            Self::Copy { .. } => "copy",
            Self::Classification { .. } => "classification",
        }
    }

    /// The corpus a `char_lm` task reads; other tasks generate their data.
    pub fn corpus(&self) -> Option<&str> {
        match self {
            Self::CharLm { corpus, .. } => Some(corpus),
            _ => None,
        }
    }

    pub fn eval_every(&self) -> u64 {
        match self {
            Self::CharLm { eval_every, .. }
            | Self::Adding { eval_every, .. }
            | Self::Copy { eval_every, .. }
            | Self::Classification { eval_every, .. } => *eval_every,
        }
    }

    /// Sequence tasks feed recurrent and transformer models; classification feeds MLPs.
    pub fn is_sequence(&self) -> bool {
        !matches!(self, Self::Classification { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Mlp,
    Rnn,
    Lstm,
    Gru,
    Transformer,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mlp => "mlp",
            Self::Rnn => "rnn",
            Self::Lstm => "lstm",
            Self::Gru => "gru",
            Self::Transformer => "transformer",
        }
    }

    /// The activation used when the spec names none.
    pub fn default_activation(self) -> Activation {
        match self {
            Self::Mlp => Activation::Relu,
            Self::Rnn | Self::Lstm | Self::Gru => Activation::Tanh,
            Self::Transformer => Activation::Gelu,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Tanh,
    Relu,
    Sigmoid,
    Gelu,
}

/// Where a transformer block normalises: before each sub-layer (pre-LN, stable) or after
/// the residual sum (post-LN, the original Transformer, fragile without warm-up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NormPosition {
    #[default]
    Pre,
    Post,
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
    /// `none | batch | layer | rms`: MLPs take all four, transformers layer or rms,
    /// recurrent models none.
    #[serde(default)]
    pub norm: Norm,
    /// MLP hidden units (default relu), vanilla RNN cells (tanh or relu, default tanh),
    /// transformer feed-forward (default gelu). LSTM and GRU cells are tanh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Activation>,
    /// MLP: add each hidden block's input to its output (where the widths match).
    #[serde(default)]
    pub residual: bool,
    /// Transformer attention heads; must divide `hidden`.
    #[serde(default = "default_heads")]
    pub heads: i64,
    /// Transformer: `pre` or `post` normalisation.
    #[serde(default)]
    pub norm_position: NormPosition,
    /// Multiplies the default initialisation: above 1 provokes explosion, below 1 vanishing.
    #[serde(default = "one")]
    pub init_scale: f64,
    /// Dropout probability between layers.
    #[serde(default)]
    pub dropout: f64,
}

impl ModelSpec {
    pub fn activation(&self) -> Activation {
        self.activation.unwrap_or(self.kind.default_activation())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    #[default]
    Adamw,
}

/// The learning rate after warm-up. Step `t` (1-based) of `T`, with `W` warm-up steps,
/// gets the rate PyTorch's schedulers give the `t`-th `optimizer.step()`: warm-up is
/// `LinearLR(start_factor=1/W, total_iters=W-1)` (`lr·t/W`), then `SequentialLR` at
/// milestone `W` hands over to the decay below, which reaches 0 only one step after the
/// last (the last step trains at a small positive rate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// The base rate after warm-up.
    #[default]
    Constant,
    /// `LinearLR(start_factor=1, end_factor=0, total_iters=T-W)`: `lr·(1 − (t−1−W)/(T−W))`.
    Linear,
    /// `CosineAnnealingLR(T_max=T-W)`: `lr·(1 + cos(π·(t−1−W)/(T−W)))/2`.
    Cosine,
}

/// Which parameters weight decay leaves alone (the two parameter groups of PyTorch
/// training scripts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoDecay {
    /// Every parameter is decayed.
    #[default]
    None,
    /// Biases and normalisation gains and biases, i.e. every 1-D parameter tensor, are not
    /// decayed (HF Trainer's and `timm`'s `no_weight_decay` group); matrices, embeddings
    /// and recurrent weights are.
    BiasAndNorm,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    #[serde(default)]
    pub kind: OptimizerKind,
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Defaults to 0.01 for AdamW (decoupled) and 0 for SGD and Adam (L2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// SGD momentum.
    #[serde(default)]
    pub momentum: f64,
    /// SGD: Nesterov momentum (needs `momentum` above 0).
    #[serde(default)]
    pub nesterov: bool,
    /// Adam/AdamW first- and second-moment decay rates, and the denominator's epsilon.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_adam_eps")]
    pub eps: f64,
    /// Steps of linear warm-up to `lr`: step `t` of the first `warmup_steps` trains at
    /// `lr·t/warmup_steps`.
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default)]
    pub schedule: Schedule,
    /// `none` (default: every parameter decayed) or `bias_and_norm` (1-D tensors get no
    /// weight decay, as two parameter groups in `torch.optim` would).
    #[serde(default)]
    pub no_decay: NoDecay,
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::default(),
            lr: DEFAULT_LR,
            weight_decay: None,
            momentum: 0.0,
            nesterov: false,
            beta1: DEFAULT_BETA1,
            beta2: DEFAULT_BETA2,
            eps: DEFAULT_ADAM_EPS,
            warmup_steps: 0,
            schedule: Schedule::default(),
            no_decay: NoDecay::default(),
        }
    }
}

impl OptimizerSpec {
    pub fn weight_decay(&self) -> f64 {
        self.weight_decay.unwrap_or(match self.kind {
            OptimizerKind::Adamw => DEFAULT_ADAMW_WEIGHT_DECAY,
            OptimizerKind::Sgd | OptimizerKind::Adam => 0.0,
        })
    }
}

/// The norm `clip_norm` measures: `2` (Euclidean) or `"inf"` (largest absolute element).
/// Any other number parses and is refused by validation, naming the field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NormType {
    Two,
    Inf,
    Other(f64),
}

impl Serialize for NormType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Two => serializer.serialize_f64(2.0),
            Self::Inf => serializer.serialize_str("inf"),
            Self::Other(p) => serializer.serialize_f64(*p),
        }
    }
}

impl<'de> Deserialize<'de> for NormType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Name(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(2.0) => Ok(Self::Two),
            Raw::Number(p) => Ok(Self::Other(p)),
            Raw::Name(name) if matches!(name.as_str(), "inf" | "Infinity") => Ok(Self::Inf),
            Raw::Name(name) => Err(serde::de::Error::custom(format!("norm_type must be 2 or \"inf\", not {name:?}"))),
        }
    }
}

/// A gradient policy, applied in order after backward and before the optimizer step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum GradPolicy {
    /// Rescale all gradients together so their global norm is at most `max_norm`
    /// (`torch.nn.utils.clip_grad_norm_`).
    ClipNorm {
        max_norm: f64,
        /// `2` or `"inf"`.
        #[serde(default = "norm_two")]
        #[schema(value_type = serde_json::Value, example = 2)]
        norm_type: NormType,
    },
    /// Clamp every gradient element to ±`limit` (`torch.nn.utils.clip_grad_value_`).
    ClipValue { limit: f64 },
    /// Rescale each layer's gradient on its own so its L2 norm is at most `max_norm`.
    ClipLayerNorm { max_norm: f64 },
    /// Adaptive gradient clipping (Brock et al. 2021): each unit's (row's) gradient norm is
    /// held to `lambda` times its weight norm, the latter floored at `eps`.
    Agc {
        #[serde(default = "default_agc_lambda")]
        lambda: f64,
        #[serde(default = "default_agc_eps")]
        eps: f64,
        /// Leave the output layer (`head.weight` and `head.bias`) unclipped, as the paper
        /// does with the final classifier (and `timm` with its `exclude_head`). Default true.
        #[serde(default = "yes")]
        exclude_head: bool,
    },
    /// AutoClip (Seetharaman et al. 2020): clip the global L2 norm to the `percentile`-th
    /// percentile of the norms seen so far (the last `history` of them, this step's included).
    Autoclip {
        #[serde(default = "default_autoclip_percentile")]
        percentile: f64,
        #[serde(default = "default_autoclip_history")]
        history: u64,
    },
    /// ZClip (Kumar et al. 2025), as its reference implementation (`bluorion-com/ZClip`,
    /// z-score mode, adaptive scaling) behaves: during the first `warmup` steps the global
    /// norm is only capped at `max_grad_norm` (as `clip_grad_norm_`) while the norms
    /// initialise the statistics; after them, a norm whose z-score against an EMA (factor
    /// `alpha`) of the norm's mean and variance exceeds `z_threshold` is clipped to
    /// `mean + z_threshold²·std / z`, and to `max_grad_norm` if that is lower. The EMA
    /// follows the uncapped clip target.
    Zclip {
        #[serde(default = "default_zclip_alpha")]
        alpha: f64,
        #[serde(default = "default_zclip_z")]
        z_threshold: f64,
        #[serde(default = "default_z_warmup")]
        warmup: u64,
        /// Cap on the global norm at every step, warm-up included; `null` turns it off.
        /// Default 1.0, the reference's.
        #[serde(default = "default_zclip_max_grad_norm")]
        max_grad_norm: Option<f64>,
    },
    /// Drop the whole update when the global norm's z-score (against an EMA of the
    /// accepted norms, as `zclip` keeps) exceeds `z_threshold`, after `warmup` steps.
    /// After `max_consecutive` skips in a row the next update is accepted and its norm
    /// joins the EMA (a `spike_accepted` event says so), so a run whose norm settles at a
    /// new level keeps training.
    SkipSpike {
        #[serde(default = "default_spike_z")]
        z_threshold: f64,
        #[serde(default = "default_zclip_alpha")]
        alpha: f64,
        #[serde(default = "default_z_warmup")]
        warmup: u64,
        /// Most updates skipped in a row (1 to 100000, default 10).
        #[serde(default = "default_spike_max_consecutive")]
        max_consecutive: u64,
    },
}

/// A weight policy, applied after the optimizer step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WeightPolicy {
    /// Clamp every weight to ±`limit`.
    Clip { limit: f64 },
    /// Rescale every unit whose L2 norm exceeds `max` back to `max` (`torch.renorm`): the
    /// units are the slices along `dim` (0: the rows, one per output unit) of every weight
    /// tensor with at least two dimensions.
    MaxNorm {
        max: f64,
        #[serde(default)]
        dim: i64,
    },
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
    /// At most 16.
    #[serde(default)]
    #[schema(max_items = 16)]
    pub grad: Vec<GradPolicy>,
    /// At most 16.
    #[serde(default)]
    #[schema(max_items = 16)]
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
    #[schema(maximum = 10_000_000)]
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
    /// `exploding` needs the norm (global, or a layer's) above this too: near convergence
    /// tiny norms jump by large factors harmlessly. The default, 1, is the `max_norm`
    /// most clipping recipes use: a norm a standard clip would pass is no explosion.
    #[serde(default = "default_explode_floor")]
    pub explode_floor: f64,
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
    #[schema(maximum = 10_000_000)]
    pub diagnose_window: u64,
    /// Steps between `clipped`/`skipped` summaries.
    #[serde(default = "default_summary_every")]
    #[schema(maximum = 10_000_000)]
    pub summary_every: u64,
    /// Steps before the same kind of event for the same layer is reported again.
    #[serde(default = "default_cooldown")]
    #[schema(maximum = 10_000_000)]
    pub cooldown: u64,
}

pub const DEFAULT_EXPLODE_FACTOR: f64 = 10.0;
pub const DEFAULT_EXPLODE_FLOOR: f64 = 1.0;
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
            explode_floor: DEFAULT_EXPLODE_FLOOR,
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
            m.explode_floor.is_finite() && m.explode_floor >= 0.0,
            "monitor.explode_floor",
            "must be a finite number, at least 0",
        )?;
        check(
            m.vanish_ratio.is_finite() && m.vanish_ratio > 0.0 && m.vanish_ratio < 1.0,
            "monitor.vanish_ratio",
            "must be between 0 and 1",
        )?;
        check(m.dead_frac > 0.0 && m.dead_frac <= 1.0, "monitor.dead_frac", "must be above 0 and at most 1")?;
        // Windows longer than any job are meaningless, and bounding them keeps step
        // arithmetic far from overflow.
        let steps_range = |field: &str, value: u64, min: u64| {
            check((min..=MAX_STEPS).contains(&value), field, format!("must be {min} to {MAX_STEPS}"))
        };
        steps_range("monitor.diagnose_window", m.diagnose_window, 1)?;
        steps_range("monitor.summary_every", m.summary_every, 1)?;
        steps_range("monitor.cooldown", m.cooldown, 0)?;
        steps_range("monitor.every", m.every, 0)
    }

    fn validate_task(&self) -> Result<(), FieldError> {
        let seq_len_ok = |seq_len: i64, min: i64| {
            check((min..=MAX_SEQ_LEN).contains(&seq_len), "task.seq_len", format!("must be {min} to {MAX_SEQ_LEN}"))
        };
        match &self.task {
            TaskSpec::CharLm { corpus, seq_len, .. } => {
                check(!corpus.is_empty(), "task.corpus", "must name a corpus")?;
                seq_len_ok(*seq_len, 2)
            }
            TaskSpec::Adding { seq_len, .. } => seq_len_ok(*seq_len, 2),
            TaskSpec::Copy { seq_len, symbols, length, .. } => {
                check((2..=256).contains(symbols), "task.symbols", "must be 2 to 256")?;
                check((1..=MAX_SEQ_LEN / 2).contains(length), "task.length", "must be at least 1")?;
                seq_len_ok(*seq_len, 2 * length + 1)
            }
            TaskSpec::Classification { features, classes, clusters, noise, .. } => {
                check((1..=MAX_HIDDEN).contains(features), "task.features", format!("must be 1 to {MAX_HIDDEN}"))?;
                check((2..=10_000).contains(classes), "task.classes", "must be 2 to 10000")?;
                check((1..=64).contains(clusters), "task.clusters", "must be 1 to 64")?;
                check(noise.is_finite() && *noise >= 0.0, "task.noise", "must be a finite number, at least 0")
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
        let sequence = self.task.is_sequence();
        let act = m.activation();
        match m.kind {
            ModelKind::Mlp => {
                check(!sequence, "model.kind", "mlp takes feature vectors: use it with the classification task")?;
            }
            ModelKind::Rnn | ModelKind::Lstm | ModelKind::Gru => {
                let name = m.kind.as_str();
                check(sequence, "model.kind", format!("{name} takes sequences: use char_lm, adding or copy"))?;
                check(m.norm == Norm::None, "model.norm", format!("{name} supports only none"))?;
                if m.kind == ModelKind::Rnn {
                    check(matches!(act, Activation::Tanh | Activation::Relu), "model.activation", "rnn: tanh or relu")?;
                } else {
                    check(act == Activation::Tanh, "model.activation", format!("{name} cells use tanh"))?;
                }
            }
            ModelKind::Transformer => {
                check(sequence, "model.kind", "transformer takes sequences: use char_lm, adding or copy")?;
                check(matches!(m.norm, Norm::Layer | Norm::Rms), "model.norm", "transformer: layer or rms")?;
                check(
                    m.heads >= 1 && m.hidden % m.heads == 0,
                    "model.heads",
                    "must be at least 1 and divide model.hidden",
                )?;
            }
        }
        Ok(())
    }

    fn validate_optimizer(&self) -> Result<(), FieldError> {
        let o = &self.optimizer;
        check(o.lr.is_finite() && o.lr > 0.0 && o.lr <= 10.0, "optimizer.lr", "must be above 0 and at most 10")?;
        if let Some(wd) = o.weight_decay {
            check(wd.is_finite() && (0.0..=1.0).contains(&wd), "optimizer.weight_decay", "must be 0 to 1")?;
        }
        check((0.0..1.0).contains(&o.momentum), "optimizer.momentum", "must be at least 0 and below 1")?;
        check(o.kind == OptimizerKind::Sgd || o.momentum == 0.0, "optimizer.momentum", "applies to sgd only")?;
        check(!o.nesterov || o.kind == OptimizerKind::Sgd, "optimizer.nesterov", "applies to sgd only")?;
        check(!o.nesterov || o.momentum > 0.0, "optimizer.nesterov", "needs momentum above 0")?;
        check((0.0..1.0).contains(&o.beta1), "optimizer.beta1", "must be at least 0 and below 1")?;
        check((0.0..1.0).contains(&o.beta2), "optimizer.beta2", "must be at least 0 and below 1")?;
        check_positive(o.eps, "optimizer.eps")?;
        check(o.warmup_steps <= self.steps, "optimizer.warmup_steps", "must not exceed steps")
    }

    fn validate_policy(&self) -> Result<(), FieldError> {
        let most = format!("at most {MAX_POLICIES} policies");
        check(self.policy.grad.len() <= MAX_POLICIES, "policy.grad", &most)?;
        check(self.policy.weight.len() <= MAX_POLICIES, "policy.weight", most)?;
        for (i, policy) in self.policy.grad.iter().enumerate() {
            let at = |field: &str| format!("policy.grad[{i}].{field}");
            match policy {
                GradPolicy::ClipNorm { max_norm, norm_type } => {
                    check_positive(*max_norm, &at("max_norm"))?;
                    check(!matches!(norm_type, NormType::Other(_)), at("norm_type"), "must be 2 or \"inf\"")?;
                }
                GradPolicy::ClipValue { limit } => check_positive(*limit, &at("limit"))?,
                GradPolicy::ClipLayerNorm { max_norm } => check_positive(*max_norm, &at("max_norm"))?,
                GradPolicy::Agc { lambda, eps, .. } => {
                    check_positive(*lambda, &at("lambda"))?;
                    check_positive(*eps, &at("eps"))?;
                }
                GradPolicy::Autoclip { percentile, history } => {
                    check((0.0..=100.0).contains(percentile), at("percentile"), "must be 0 to 100")?;
                    check(
                        (1..=MAX_AUTOCLIP_HISTORY).contains(history),
                        at("history"),
                        format!("must be 1 to {MAX_AUTOCLIP_HISTORY}"),
                    )?;
                }
                GradPolicy::Zclip { alpha, z_threshold, warmup, .. }
                | GradPolicy::SkipSpike { alpha, z_threshold, warmup, .. } => {
                    check((0.0..1.0).contains(alpha), at("alpha"), "must be at least 0 and below 1")?;
                    check_positive(*z_threshold, &at("z_threshold"))?;
                    check(
                        (2..=MAX_POLICY_WINDOW).contains(warmup),
                        at("warmup"),
                        format!("must be 2 to {MAX_POLICY_WINDOW}"),
                    )?;
                    match policy {
                        GradPolicy::Zclip { max_grad_norm: Some(max), .. } => {
                            check_positive(*max, &at("max_grad_norm"))?;
                        }
                        GradPolicy::SkipSpike { max_consecutive, .. } => check(
                            (1..=MAX_POLICY_WINDOW).contains(max_consecutive),
                            at("max_consecutive"),
                            format!("must be 1 to {MAX_POLICY_WINDOW}"),
                        )?,
                        _ => {}
                    }
                }
            }
        }
        for (i, policy) in self.policy.weight.iter().enumerate() {
            let at = |field: &str| format!("policy.weight[{i}].{field}");
            match policy {
                WeightPolicy::Clip { limit } => check_positive(*limit, &at("limit"))?,
                WeightPolicy::MaxNorm { max, dim } => {
                    check_positive(*max, &at("max"))?;
                    check((0..=1).contains(dim), at("dim"), "must be 0 (rows) or 1 (columns)")?;
                }
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
fn default_eval_every() -> u64 {
    DEFAULT_EVAL_EVERY
}
fn default_copy_symbols() -> i64 {
    DEFAULT_COPY_SYMBOLS
}
fn default_copy_length() -> i64 {
    DEFAULT_COPY_LENGTH
}
fn default_features() -> i64 {
    DEFAULT_FEATURES
}
fn default_classes() -> i64 {
    DEFAULT_CLASSES
}
fn default_clusters() -> i64 {
    DEFAULT_CLUSTERS
}
fn default_noise() -> f64 {
    DEFAULT_NOISE
}
fn default_heads() -> i64 {
    DEFAULT_HEADS
}
fn default_beta1() -> f64 {
    DEFAULT_BETA1
}
fn default_beta2() -> f64 {
    DEFAULT_BETA2
}
fn default_adam_eps() -> f64 {
    DEFAULT_ADAM_EPS
}
fn default_agc_lambda() -> f64 {
    DEFAULT_AGC_LAMBDA
}
fn default_agc_eps() -> f64 {
    DEFAULT_AGC_EPS
}
fn default_autoclip_percentile() -> f64 {
    DEFAULT_AUTOCLIP_PERCENTILE
}
fn default_autoclip_history() -> u64 {
    DEFAULT_AUTOCLIP_HISTORY
}
fn default_zclip_alpha() -> f64 {
    DEFAULT_ZCLIP_ALPHA
}
fn default_zclip_z() -> f64 {
    DEFAULT_ZCLIP_Z
}
fn default_spike_z() -> f64 {
    DEFAULT_SPIKE_Z
}
fn default_z_warmup() -> u64 {
    DEFAULT_Z_WARMUP
}
fn default_zclip_max_grad_norm() -> Option<f64> {
    Some(DEFAULT_ZCLIP_MAX_GRAD_NORM)
}
fn default_spike_max_consecutive() -> u64 {
    DEFAULT_SPIKE_MAX_CONSECUTIVE
}
fn norm_two() -> NormType {
    NormType::Two
}
fn default_prometheus_layers() -> u32 {
    DEFAULT_PROMETHEUS_LAYERS
}
fn default_explode_floor() -> f64 {
    DEFAULT_EXPLODE_FLOOR
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
    fn models_must_fit_their_task() {
        let field = |json: &str| parse(json).validate().map_err(|e| e.field);
        assert_eq!(field(r#"{"task":{"kind":"adding"},"model":{"kind":"mlp"}}"#), Err("model.kind".to_owned()));
        assert_eq!(field(r#"{"task":{"kind":"classification"},"model":{"kind":"gru"}}"#), Err("model.kind".to_owned()));
        assert_eq!(
            field(r#"{"task":{"kind":"copy"},"model":{"kind":"transformer","norm":"layer","hidden":30,"heads":4}}"#),
            Err("model.heads".to_owned())
        );
        assert_eq!(field(r#"{"task":{"kind":"copy"},"model":{"kind":"transformer"}}"#), Err("model.norm".to_owned()));
        assert_eq!(
            field(r#"{"task":{"kind":"adding"},"model":{"kind":"lstm","activation":"relu"}}"#),
            Err("model.activation".to_owned())
        );
        assert_eq!(
            field(r#"{"task":{"kind":"copy","seq_len":20,"length":10},"model":{"kind":"gru"}}"#),
            Err("task.seq_len".to_owned())
        );
        assert_eq!(
            field(r#"{"task":{"kind":"classification"},"model":{"kind":"mlp","norm":"batch","activation":"sigmoid"}}"#),
            Ok(())
        );
        let mlp = parse(r#"{"task":{"kind":"classification"},"model":{"kind":"mlp"}}"#);
        assert_eq!(mlp.model.activation(), Activation::Relu);
        assert!(mlp.task.corpus().is_none());
    }

    #[test]
    fn grad_policies_parse_with_their_defaults() {
        let spec = parse(
            r#"{"task":{"kind":"char_lm"},"model":{"kind":"lstm"},"policy":{"grad":[
                {"kind":"clip_norm","max_norm":1,"norm_type":"inf"},{"kind":"agc"},{"kind":"autoclip"},
                {"kind":"zclip"},{"kind":"skip_spike","z_threshold":4}],
                "weight":[{"kind":"max_norm","max":2}]}}"#,
        );
        assert_eq!(spec.validate(), Ok(()));
        assert!(matches!(spec.policy.grad[0], GradPolicy::ClipNorm { norm_type: NormType::Inf, .. }));
        assert!(
            matches!(spec.policy.grad[3], GradPolicy::Zclip { alpha, warmup: DEFAULT_Z_WARMUP, .. } if alpha == DEFAULT_ZCLIP_ALPHA)
        );
        assert!(matches!(spec.policy.grad[1], GradPolicy::Agc { exclude_head: true, .. }));
        assert!(matches!(spec.policy.grad[3], GradPolicy::Zclip { max_grad_norm: Some(m), .. } if m == 1.0));
        assert!(matches!(
            spec.policy.grad[4],
            GradPolicy::SkipSpike { max_consecutive: DEFAULT_SPIKE_MAX_CONSECUTIVE, .. }
        ));
        assert_eq!(spec.optimizer.no_decay, NoDecay::None);
        // An explicit `null` cap survives a round trip (a stored spec is parsed again on resume).
        let uncapped: GradPolicy = serde_json::from_str(r#"{"kind":"zclip","max_grad_norm":null}"#).expect("parses");
        let again: GradPolicy =
            serde_json::from_value(serde_json::to_value(&uncapped).expect("serialise")).expect("parses");
        assert!(matches!(again, GradPolicy::Zclip { max_grad_norm: None, .. }));
        // Norm types round-trip as clients write them.
        let json = serde_json::to_value(&spec.policy.grad[0]).expect("serialise");
        assert_eq!(json["norm_type"], "inf");
        let bad = parse(
            r#"{"task":{"kind":"char_lm"},"model":{"kind":"lstm"},"policy":{"grad":[{"kind":"zclip","warmup":1}]}}"#,
        );
        assert_eq!(bad.validate().map_err(|e| e.field), Err("policy.grad[0].warmup".to_owned()));
    }

    #[test]
    fn devices_parse() {
        assert_eq!(parse_device("cuda:3"), Some(DeviceChoice::Cuda(3)));
        assert_eq!(parse_device("gpu"), None);
        assert_eq!(parse_device("cuda:x"), None);
    }
}
