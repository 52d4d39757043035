//! Training in a precision below float32: where the forward pass runs, what happens to the
//! gradients, and fp16's dynamic loss scaling.
//!
//! On CUDA, `fp16` runs the forward pass and the loss under LibTorch's autocast (through
//! `tch::autocast`, which picks float16); the backward pass follows the autocast graph.
//! LibTorch's autocast is not reachable through `tch` on the CPU, and `tch` cannot pick
//! bfloat16 for it, so there (and for `bf16` everywhere) the precision is emulated where
//! it bites the gradients: after the backward pass every gradient entry (multiplied by the
//! loss scale, for fp16) is rounded to the precision and back, `g → float32(half(g))`.
//! Entries below the precision's subnormals become 0, entries past its largest finite
//! number become ±Inf, the rest keep its mantissa bits: what the gradients of an fp16
//! model hold. The forward pass and the activations' gradients stay float32 in the
//! emulation. Master weights, optimizer state and the flat buffers are float32 always.

use tch::{Kind, Tensor};

use crate::spec::{LossScaleSpec, Precision};

/// How a job's precision acts on its steps.
#[derive(Debug, Clone)]
pub struct Mixed {
    precision: Precision,
    /// Run the forward pass and the loss under autocast.
    autocast: bool,
    /// Round the (scaled) gradients to this kind and back after the backward pass.
    round: Option<Kind>,
    /// fp16's loss scaler, when enabled.
    scaler: Option<LossScaler>,
}

impl Mixed {
    /// The precision of a job on CUDA (`cuda`) or elsewhere.
    pub fn new(precision: Precision, loss_scale: &LossScaleSpec, cuda: bool) -> Self {
        let (autocast, round) = match precision {
            Precision::Fp32 => (false, None),
            Precision::Fp16 if cuda => (true, None),
            Precision::Fp16 => (false, Some(Kind::Half)),
            Precision::Bf16 => (false, Some(Kind::BFloat16)),
        };
        let scaler = (precision == Precision::Fp16 && loss_scale.enabled).then(|| LossScaler::new(loss_scale));
        Self { precision, autocast, round, scaler }
    }

    /// Float32 throughout.
    pub fn fp32() -> Self {
        Self::new(Precision::Fp32, &LossScaleSpec::default(), false)
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn autocast(&self) -> bool {
        self.autocast
    }

    pub fn scaler(&self) -> Option<&LossScaler> {
        self.scaler.as_ref()
    }

    pub fn scaler_mut(&mut self) -> Option<&mut LossScaler> {
        self.scaler.as_mut()
    }

    /// The loss the backward pass starts from: multiplied by the scale, when scaling.
    pub fn scaled_loss(&self, loss: &Tensor) -> Result<Option<Tensor>, tch::TchError> {
        self.scaler.as_ref().map(|s| loss.f_mul_scalar(s.scale)).transpose()
    }

    /// After the backward pass, on the flat gradient buffer: rounds it to the precision
    /// (when emulated), then divides it by the scale. Returns, when scaling, a one-element
    /// float32 tensor: 1 where the scaled gradients held an infinity or a NaN.
    pub fn after_backward(&self, grads: &mut Tensor) -> Result<Option<Tensor>, tch::TchError> {
        if let Some(kind) = self.round {
            let rounded = grads.f_to_kind(kind)?.f_to_kind(Kind::Float)?;
            grads.f_copy_(&rounded)?;
        }
        let Some(scaler) = &self.scaler else { return Ok(None) };
        let found_inf = grads.f_isfinite()?.f_all()?.f_logical_not()?.f_to_kind(Kind::Float)?;
        let _ = grads.f_mul_scalar_(scaler.inv_scale())?;
        Ok(Some(found_inf))
    }

    /// The threshold below which an entry of the unscaled gradient counts as underflowed:
    /// the precision's smallest normal number divided by the loss scale.
    pub fn underflow_threshold(&self) -> f64 {
        self.precision.smallest_normal() / self.scaler.as_ref().map_or(1.0, |s| s.scale)
    }
}

/// `torch.amp.GradScaler`'s state and its update rule: the scale (a float32 value) and the
/// count of steps since the last overflow or growth.
#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    scale: f64,
    growth_tracker: u64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u64,
}

impl LossScaler {
    pub fn new(spec: &LossScaleSpec) -> Self {
        Self {
            scale: f64::from(spec.init_scale as f32),
            growth_tracker: 0,
            growth_factor: spec.growth_factor,
            backoff_factor: spec.backoff_factor,
            growth_interval: spec.growth_interval,
        }
    }

    /// The scale the next step multiplies its loss by.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Steps in a row without an overflow since the last growth.
    pub fn growth_tracker(&self) -> u64 {
        self.growth_tracker
    }

    /// 1/scale, as GradScaler takes it: in float64, then rounded to float32.
    fn inv_scale(&self) -> f64 {
        f64::from((1.0 / self.scale) as f32)
    }

    /// `torch._amp_update_scale_`: an overflow multiplies the scale by the backoff and
    /// restarts the count; `growth_interval` steps in a row without one multiply it by the
    /// growth factor (unless that would make it infinite) and restart the count. The
    /// product is taken in float64 and rounded to float32, where the scale is kept.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale = f64::from((self.scale * self.backoff_factor) as f32);
            self.growth_tracker = 0;
            return;
        }
        let successful = self.growth_tracker + 1;
        if successful == self.growth_interval {
            let grown = (self.scale * self.growth_factor) as f32;
            if grown.is_finite() {
                self.scale = f64::from(grown);
            }
            self.growth_tracker = 0;
        } else {
            self.growth_tracker = successful;
        }
    }

    /// The state a checkpoint keeps: `[scale, growth_tracker]`.
    pub fn state(&self) -> Tensor {
        Tensor::from_slice(&[self.scale, self.growth_tracker as f64])
    }

    /// Restores what [`Self::state`] returned.
    pub fn restore(&mut self, state: &Tensor) -> anyhow::Result<()> {
        let values: Vec<f64> = Vec::try_from(&state.f_to_kind(Kind::Double)?.f_flatten(0, -1)?)?;
        let &[scale, tracker] = values.as_slice() else { anyhow::bail!("a loss scaler state holds two numbers") };
        anyhow::ensure!(scale.is_finite() && scale > 0.0, "a loss scale must be finite and positive");
        self.scale = scale;
        self.growth_tracker = tracker as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_backs_off_on_overflow_and_grows_after_the_interval() {
        let spec = LossScaleSpec { growth_interval: 3, ..LossScaleSpec::default() };
        let mut s = LossScaler::new(&spec);
        assert_eq!(s.scale(), 65536.0);
        s.update(true);
        assert_eq!((s.scale(), s.growth_tracker()), (32768.0, 0));
        s.update(false);
        s.update(false);
        assert_eq!((s.scale(), s.growth_tracker()), (32768.0, 2));
        s.update(false);
        assert_eq!((s.scale(), s.growth_tracker()), (65536.0, 0));
    }

    #[test]
    fn fp16_rounding_flushes_small_and_overflows_large_gradients() {
        let spec = LossScaleSpec { enabled: false, ..LossScaleSpec::default() };
        let mixed = Mixed::new(Precision::Fp16, &spec, false);
        let mut g = Tensor::from_slice(&[1e-9f32, 1e-6, 1.0, 1e5]);
        assert!(mixed.after_backward(&mut g).expect("round").is_none());
        let back: Vec<f32> = Vec::try_from(&g).expect("host");
        assert_eq!(back[0], 0.0, "below fp16's subnormals");
        assert!(back[1] > 0.0 && (back[1] - 1e-6).abs() > 1e-9, "a subnormal, few bits left: {}", back[1]);
        assert_eq!(back[2], 1.0);
        assert_eq!(back[3], f32::INFINITY, "past 65504");
    }
}
