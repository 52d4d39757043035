//! The optimizer, its learning-rate schedule and which parameters weight decay spares.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{Problems, Ranged, Reals, SpecError, check, reals};

pub const DEFAULT_LR: f64 = 1e-3;
/// AdamW's decoupled weight decay, as in `torch.optim.AdamW`.
pub const DEFAULT_ADAMW_WEIGHT_DECAY: f64 = 0.01;
/// Adam and AdamW defaults, as in `torch.optim`.
pub const DEFAULT_BETA1: f64 = 0.9;
pub const DEFAULT_BETA2: f64 = 0.999;
pub const DEFAULT_ADAM_EPS: f64 = 1e-8;
pub const LR: Reals = Reals { min: 0.0, above: true, max: 10.0, below: false };
pub const WEIGHT_DECAY: Reals = Reals::closed(0.0, 1.0);

pub(crate) const RANGES: &[Ranged] = &[
    reals("OptimizerSpec", "lr", LR),
    reals("OptimizerSpec", "weight_decay", WEIGHT_DECAY),
    reals("OptimizerSpec", "momentum", Reals::FRACTION),
    reals("OptimizerSpec", "beta1", Reals::FRACTION),
    reals("OptimizerSpec", "beta2", Reals::FRACTION),
    reals("OptimizerSpec", "eps", Reals::POSITIVE),
];

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
#[serde(default, deny_unknown_fields)]
pub struct OptimizerSpec {
    pub kind: OptimizerKind,
    pub lr: f64,
    /// Defaults to 0.01 for AdamW (decoupled) and 0 for SGD and Adam (L2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// SGD momentum.
    pub momentum: f64,
    /// SGD: Nesterov momentum (needs `momentum` above 0).
    pub nesterov: bool,
    /// Adam/AdamW first- and second-moment decay rates, and the denominator's epsilon.
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Steps of linear warm-up to `lr`: step `t` of the first `warmup_steps` trains at
    /// `lr·t/warmup_steps`.
    pub warmup_steps: u64,
    pub schedule: Schedule,
    /// `none` (default: every parameter decayed) or `bias_and_norm` (1-D tensors get no
    /// weight decay, as two parameter groups in `torch.optim` would).
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

    /// Checks the ranges; warm-up must fit in the job's `steps`.
    pub(crate) fn validate(&self, steps: u64) -> Result<(), SpecError> {
        let mut problems = Problems::default();
        problems.add(LR.check(self.lr, "optimizer.lr"));
        if let Some(wd) = self.weight_decay {
            problems.add(WEIGHT_DECAY.check(wd, "optimizer.weight_decay"));
        }
        problems.add(Reals::FRACTION.check(self.momentum, "optimizer.momentum"));
        let sgd = self.kind == OptimizerKind::Sgd;
        problems.add(check(sgd || self.momentum == 0.0, "optimizer.momentum", "applies to sgd only"));
        problems.add(check(!self.nesterov || sgd, "optimizer.nesterov", "applies to sgd only"));
        problems.add(check(!self.nesterov || self.momentum > 0.0, "optimizer.nesterov", "needs momentum above 0"));
        problems.add(Reals::FRACTION.check(self.beta1, "optimizer.beta1"));
        problems.add(Reals::FRACTION.check(self.beta2, "optimizer.beta2"));
        problems.add(Reals::POSITIVE.check(self.eps, "optimizer.eps"));
        problems.add(check(self.warmup_steps <= steps, "optimizer.warmup_steps", "must not exceed steps"));
        problems.finish()
    }
}
