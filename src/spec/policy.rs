//! Gradient policies (after backward, before the optimizer step), weight policies (after
//! it) and what a non-finite step does, each with its defaults and ranges.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{Ints, Ranged, Reals, SpecError, check, ints, reals};

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
/// Most grad policies, and most weight policies, one spec may list: a few are all any
/// experiment needs, and each stateful one holds memory for the whole run.
pub const MAX_POLICIES: usize = 16;
pub const AUTOCLIP_HISTORY: Ints = Ints::new(1, MAX_AUTOCLIP_HISTORY as i64);
pub const PERCENTILE: Reals = Reals::closed(0.0, 100.0);
pub const Z_WARMUP: Ints = Ints::new(2, MAX_POLICY_WINDOW as i64);
pub const MAX_CONSECUTIVE: Ints = Ints::new(1, MAX_POLICY_WINDOW as i64);
/// `rollback`'s defaults: the PaLM report's recipe, a restart about 100 steps before the
/// spike and a few hundred batches skipped.
pub const DEFAULT_ROLLBACK_Z: f64 = 6.0;
pub const DEFAULT_ROLLBACK_WINDOW: u64 = 100;
pub const DEFAULT_ROLLBACK_EVERY: u64 = 100;
pub const DEFAULT_SKIP_BATCHES: u64 = 200;
pub const DEFAULT_MAX_ROLLBACKS: u64 = 10;
pub const ROLLBACK_WINDOW: Ints = Ints::new(2, MAX_POLICY_WINDOW as i64);
pub const ROLLBACK_EVERY: Ints = Ints::new(1, 1_000_000);
pub const SKIP_BATCHES: Ints = Ints::new(0, 1_000_000);
pub const MAX_ROLLBACKS: Ints = Ints::new(1, 1000);

pub(crate) const RANGES: &[Ranged] = &[
    reals("AgcPolicy", "lambda", Reals::POSITIVE),
    reals("AgcPolicy", "eps", Reals::POSITIVE),
    reals("AutoclipPolicy", "percentile", PERCENTILE),
    ints("AutoclipPolicy", "history", AUTOCLIP_HISTORY),
    reals("ZclipPolicy", "alpha", Reals::FRACTION),
    reals("ZclipPolicy", "z_threshold", Reals::POSITIVE),
    ints("ZclipPolicy", "warmup", Z_WARMUP),
    reals("SkipSpikePolicy", "alpha", Reals::FRACTION),
    reals("SkipSpikePolicy", "z_threshold", Reals::POSITIVE),
    ints("SkipSpikePolicy", "warmup", Z_WARMUP),
    ints("SkipSpikePolicy", "max_consecutive", MAX_CONSECUTIVE),
    reals("RollbackPolicy", "z_threshold", Reals::POSITIVE),
    ints("RollbackPolicy", "window", ROLLBACK_WINDOW),
    ints("RollbackPolicy", "rollback_every", ROLLBACK_EVERY),
    ints("RollbackPolicy", "skip_batches", SKIP_BATCHES),
    ints("RollbackPolicy", "max_rollbacks", MAX_ROLLBACKS),
];

/// The norm `clip_norm` measures: `2` (Euclidean) or `"inf"` (largest absolute element).
/// Any other number parses and is refused by validation, naming the field.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum NormType {
    #[default]
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
        #[serde(default)]
        #[schema(value_type = serde_json::Value, example = 2, default = json!(NormType::default()))]
        norm_type: NormType,
    },
    /// Clamp every gradient element to ±`limit` (`torch.nn.utils.clip_grad_value_`).
    ClipValue { limit: f64 },
    /// Rescale each layer's gradient on its own so its L2 norm is at most `max_norm`.
    ClipLayerNorm { max_norm: f64 },
    /// Adaptive gradient clipping (Brock et al. 2021): each unit's (row's) gradient norm is
    /// held to `lambda` times its weight norm, the latter floored at `eps`.
    Agc(AgcPolicy),
    /// AutoClip (Seetharaman et al. 2020): clip the global L2 norm to the `percentile`-th
    /// percentile of the norms seen so far (the last `history` of them, this step's included).
    Autoclip(AutoclipPolicy),
    /// ZClip (Kumar et al. 2025), as its reference implementation (`bluorion-com/ZClip`,
    /// z-score mode, adaptive scaling) behaves: during the first `warmup` steps the global
    /// norm is only capped at `max_grad_norm` (as `clip_grad_norm_`) while the norms
    /// initialise the statistics; after them, a norm whose z-score against an EMA (factor
    /// `alpha`) of the norm's mean and variance exceeds `z_threshold` is clipped to
    /// `mean + z_threshold²·std / z`, and to `max_grad_norm` if that is lower. The EMA
    /// follows the uncapped clip target.
    Zclip(ZclipPolicy),
    /// Drop the whole update when the global norm's z-score (against an EMA of the
    /// accepted norms, as `zclip` keeps) exceeds `z_threshold`, after `warmup` steps.
    /// After `max_consecutive` skips in a row the next update is accepted and its norm
    /// joins the EMA (a `spike_accepted` event says so), so a run whose norm settles at a
    /// new level keeps training.
    SkipSpike(SkipSpikePolicy),
}

/// `agc`'s settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AgcPolicy {
    pub lambda: f64,
    pub eps: f64,
    /// Leave the output layer (`head.weight` and `head.bias`) unclipped, as the paper
    /// does with the final classifier (and `timm` with its `exclude_head`).
    pub exclude_head: bool,
}

impl Default for AgcPolicy {
    fn default() -> Self {
        Self { lambda: DEFAULT_AGC_LAMBDA, eps: DEFAULT_AGC_EPS, exclude_head: true }
    }
}

/// `autoclip`'s settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AutoclipPolicy {
    pub percentile: f64,
    pub history: u64,
}

impl Default for AutoclipPolicy {
    fn default() -> Self {
        Self { percentile: DEFAULT_AUTOCLIP_PERCENTILE, history: DEFAULT_AUTOCLIP_HISTORY }
    }
}

/// `zclip`'s settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ZclipPolicy {
    pub alpha: f64,
    pub z_threshold: f64,
    pub warmup: u64,
    /// Cap on the global norm at every step, warm-up included; `null` turns it off.
    pub max_grad_norm: Option<f64>,
}

impl Default for ZclipPolicy {
    fn default() -> Self {
        Self {
            alpha: DEFAULT_ZCLIP_ALPHA,
            z_threshold: DEFAULT_ZCLIP_Z,
            warmup: DEFAULT_Z_WARMUP,
            max_grad_norm: Some(DEFAULT_ZCLIP_MAX_GRAD_NORM),
        }
    }
}

/// `skip_spike`'s settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SkipSpikePolicy {
    pub z_threshold: f64,
    pub alpha: f64,
    pub warmup: u64,
    /// Most updates skipped in a row.
    pub max_consecutive: u64,
}

impl Default for SkipSpikePolicy {
    fn default() -> Self {
        Self {
            z_threshold: DEFAULT_SPIKE_Z,
            alpha: DEFAULT_ZCLIP_ALPHA,
            warmup: DEFAULT_Z_WARMUP,
            max_consecutive: DEFAULT_SPIKE_MAX_CONSECUTIVE,
        }
    }
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
        #[schema(default = json!(i64::default()))]
        dim: i64,
    },
    /// Multiply every weight by `factor` every `every` steps (default every step).
    Scale {
        factor: f64,
        #[serde(default = "every_step")]
        #[schema(default = json!(every_step()))]
        every: u64,
    },
}

/// `scale`'s default period. Its `factor` has no default, so the variant keeps its fields
/// inline rather than in a struct with a `Default`.
fn every_step() -> u64 {
    1
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

/// What a loss (or gradient norm) spike does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnSpike {
    /// Nothing: the step stands.
    #[default]
    Ignore,
    /// Restore the last good state kept in memory and skip batches (`policy.rollback`).
    Rollback,
}

/// The measure `rollback` watches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SpikeMetric {
    #[default]
    Loss,
    GradNorm,
}

/// `on_spike: rollback`'s settings, as the PaLM report describes the remedy: every
/// `rollback_every` steps whose measure was no spike, the model, the optimizer, the
/// adaptive grad policies and the loss scaler are copied in memory; a step whose
/// `metric` is non-finite, or whose z-score against the last `window` good steps exceeds
/// `z_threshold` (once `window` of them were seen), restores that copy and skips the next
/// `skip_batches` batches. The step count goes on (the steps since the copy are lost);
/// after `max_rollbacks` rollbacks the next spike ends the job `diverged`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RollbackPolicy {
    pub metric: SpikeMetric,
    pub z_threshold: f64,
    pub window: u64,
    pub rollback_every: u64,
    pub skip_batches: u64,
    pub max_rollbacks: u64,
}

impl Default for RollbackPolicy {
    fn default() -> Self {
        Self {
            metric: SpikeMetric::default(),
            z_threshold: DEFAULT_ROLLBACK_Z,
            window: DEFAULT_ROLLBACK_WINDOW,
            rollback_every: DEFAULT_ROLLBACK_EVERY,
            skip_batches: DEFAULT_SKIP_BATCHES,
            max_rollbacks: DEFAULT_MAX_ROLLBACKS,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySpec {
    /// At most 16.
    #[schema(max_items = 16)]
    pub grad: Vec<GradPolicy>,
    /// At most 16.
    #[schema(max_items = 16)]
    pub weight: Vec<WeightPolicy>,
    pub on_nonfinite: OnNonfinite,
    /// `ignore` (default) or `rollback`: see `rollback`.
    pub on_spike: OnSpike,
    pub rollback: RollbackPolicy,
}

impl PolicySpec {
    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        let most = format!("at most {MAX_POLICIES} policies");
        check(self.grad.len() <= MAX_POLICIES, "policy.grad", &most)?;
        check(self.weight.len() <= MAX_POLICIES, "policy.weight", most)?;
        for (i, policy) in self.grad.iter().enumerate() {
            policy.validate(&|field| format!("policy.grad[{i}].{field}"))?;
        }
        for (i, policy) in self.weight.iter().enumerate() {
            policy.validate(&|field| format!("policy.weight[{i}].{field}"))?;
        }
        let r = &self.rollback;
        Reals::POSITIVE.check(r.z_threshold, "policy.rollback.z_threshold")?;
        ROLLBACK_WINDOW.check(r.window, "policy.rollback.window")?;
        ROLLBACK_EVERY.check(r.rollback_every, "policy.rollback.rollback_every")?;
        SKIP_BATCHES.check(r.skip_batches, "policy.rollback.skip_batches")?;
        MAX_ROLLBACKS.check(r.max_rollbacks, "policy.rollback.max_rollbacks")?;
        check(
            self.on_spike == OnSpike::Rollback || *r == RollbackPolicy::default(),
            "policy.rollback",
            "rollback settings apply with on_spike: rollback only",
        )
    }
}

impl GradPolicy {
    /// `at` names a field of this policy as clients spell it.
    fn validate(&self, at: &dyn Fn(&str) -> String) -> Result<(), SpecError> {
        match self {
            Self::ClipNorm { max_norm, norm_type } => {
                Reals::POSITIVE.check(*max_norm, at("max_norm"))?;
                check(!matches!(norm_type, NormType::Other(_)), at("norm_type"), "must be 2 or \"inf\"")
            }
            Self::ClipValue { limit } => Reals::POSITIVE.check(*limit, at("limit")),
            Self::ClipLayerNorm { max_norm } => Reals::POSITIVE.check(*max_norm, at("max_norm")),
            Self::Agc(p) => {
                Reals::POSITIVE.check(p.lambda, at("lambda"))?;
                Reals::POSITIVE.check(p.eps, at("eps"))
            }
            Self::Autoclip(p) => {
                PERCENTILE.check(p.percentile, at("percentile"))?;
                AUTOCLIP_HISTORY.check(p.history, at("history"))
            }
            Self::Zclip(p) => {
                z_score(p.alpha, p.z_threshold, p.warmup, at)?;
                match p.max_grad_norm {
                    Some(max) => Reals::POSITIVE.check(max, at("max_grad_norm")),
                    None => Ok(()),
                }
            }
            Self::SkipSpike(p) => {
                z_score(p.alpha, p.z_threshold, p.warmup, at)?;
                MAX_CONSECUTIVE.check(p.max_consecutive, at("max_consecutive"))
            }
        }
    }
}

/// The EMA settings `zclip` and `skip_spike` share.
fn z_score(alpha: f64, z_threshold: f64, warmup: u64, at: &dyn Fn(&str) -> String) -> Result<(), SpecError> {
    Reals::FRACTION.check(alpha, at("alpha"))?;
    Reals::POSITIVE.check(z_threshold, at("z_threshold"))?;
    Z_WARMUP.check(warmup, at("warmup"))
}

impl WeightPolicy {
    fn validate(&self, at: &dyn Fn(&str) -> String) -> Result<(), SpecError> {
        match self {
            Self::Clip { limit } => Reals::POSITIVE.check(*limit, at("limit")),
            Self::MaxNorm { max, dim } => {
                Reals::POSITIVE.check(*max, at("max"))?;
                check((0..=1).contains(dim), at("dim"), "must be 0 (rows) or 1 (columns)")
            }
            Self::Scale { factor, every } => {
                Reals::POSITIVE.check(*factor, at("factor"))?;
                check(*every >= 1, at("every"), "must be at least 1")
            }
        }
    }
}
