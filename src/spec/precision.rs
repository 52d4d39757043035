//! The training precision and the dynamic loss scaling of `fp16`, with their defaults and
//! ranges.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{Ints, Ranged, Reals, SpecError, check, ints, reals};

/// `torch.amp.GradScaler`'s defaults.
pub const DEFAULT_INIT_SCALE: f64 = 65536.0;
pub const DEFAULT_GROWTH_FACTOR: f64 = 2.0;
pub const DEFAULT_BACKOFF_FACTOR: f64 = 0.5;
pub const DEFAULT_GROWTH_INTERVAL: u64 = 2000;
/// The scale starts between 2^-24 and 2^64: far inside float32 either way, so neither a
/// long run of backoffs nor of growths reaches 0 or infinity before the run notices.
pub const INIT_SCALE: Reals = Reals::closed(1.0 / 16_777_216.0, 18_446_744_073_709_551_616.0);
/// Growth above 1 (a factor of 1 would never grow), at most 2^10 per growth.
pub const GROWTH_FACTOR: Reals = Reals { min: 1.0, above: true, max: 1024.0, below: false };
/// Backoff strictly between 0 and 1.
pub const BACKOFF_FACTOR: Reals = Reals { min: 0.0, above: true, max: 1.0, below: true };
pub const GROWTH_INTERVAL: Ints = Ints::new(1, 1_000_000);

pub(crate) const RANGES: &[Ranged] = &[
    reals("LossScaleSpec", "init_scale", INIT_SCALE),
    reals("LossScaleSpec", "growth_factor", GROWTH_FACTOR),
    reals("LossScaleSpec", "backoff_factor", BACKOFF_FACTOR),
    ints("LossScaleSpec", "growth_interval", GROWTH_INTERVAL),
];

/// The precision the forward pass and the gradients are held in. Master weights,
/// optimizer state and the flat gradient buffer stay float32 in every precision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in float32.
    #[default]
    Fp32,
    /// bfloat16: float32's range, 8 bits of mantissa. No loss scaling.
    Bf16,
    /// float16: 11 bits of mantissa, finite up to 65504, normal down to 2^-14. Trained
    /// with dynamic loss scaling (`loss_scale`).
    Fp16,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Bf16 => "bf16",
            Self::Fp16 => "fp16",
        }
    }

    /// The smallest positive normal number of the precision: 2^-126 for float32 and
    /// bfloat16, 2^-14 for float16. A gradient entry below it has underflowed (to a
    /// subnormal with fewer bits, or to 0).
    pub fn smallest_normal(self) -> f64 {
        match self {
            Self::Fp32 | Self::Bf16 => f64::from(f32::MIN_POSITIVE),
            Self::Fp16 => 2f64.powi(-14),
        }
    }
}

/// Dynamic loss scaling, as `torch.amp.GradScaler`: the loss is multiplied by the scale
/// before the backward pass and the gradients divided by it after; a step whose scaled
/// gradients hold an infinity or a NaN is skipped and the scale multiplied by
/// `backoff_factor`; after `growth_interval` steps in a row without one it is multiplied
/// by `growth_factor`. Read only when `precision` is `fp16`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LossScaleSpec {
    /// `false` trains fp16 without any scaling (a scale of 1, never changed, and no step
    /// skipped for an overflow): the small gradients underflow.
    pub enabled: bool,
    pub init_scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u64,
}

impl Default for LossScaleSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            init_scale: DEFAULT_INIT_SCALE,
            growth_factor: DEFAULT_GROWTH_FACTOR,
            backoff_factor: DEFAULT_BACKOFF_FACTOR,
            growth_interval: DEFAULT_GROWTH_INTERVAL,
        }
    }
}

impl LossScaleSpec {
    pub(crate) fn validate(&self, precision: Precision) -> Result<(), SpecError> {
        INIT_SCALE.check(self.init_scale, "loss_scale.init_scale")?;
        GROWTH_FACTOR.check(self.growth_factor, "loss_scale.growth_factor")?;
        BACKOFF_FACTOR.check(self.backoff_factor, "loss_scale.backoff_factor")?;
        GROWTH_INTERVAL.check(self.growth_interval, "loss_scale.growth_interval")?;
        check(
            precision == Precision::Fp16 || *self == Self::default(),
            "loss_scale",
            "loss scaling applies to precision fp16 only",
        )
    }
}
