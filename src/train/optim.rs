//! Optimizers (LibTorch's own, through tch: the same update rules as `torch.optim.SGD`,
//! `Adam` and `AdamW`) and learning-rate schedules.

use tch::nn::{self, OptimizerConfig};

use super::spec::{OptimizerKind, OptimizerSpec, Schedule};

/// Builds the optimizer over every trainable variable of `vs`, at the schedule's first rate.
pub fn build(spec: &OptimizerSpec, vs: &nn::VarStore, total_steps: u64) -> anyhow::Result<nn::Optimizer> {
    let lr = learning_rate(spec, 1, total_steps);
    let wd = spec.weight_decay();
    let (beta1, beta2, eps) = (spec.beta1, spec.beta2, spec.eps);
    let opt = match spec.kind {
        OptimizerKind::Sgd => {
            nn::Sgd { momentum: spec.momentum, dampening: 0.0, wd, nesterov: spec.nesterov }.build(vs, lr)?
        }
        OptimizerKind::Adam => nn::Adam { beta1, beta2, wd, eps, amsgrad: false }.build(vs, lr)?,
        OptimizerKind::Adamw => nn::AdamW { beta1, beta2, wd, eps, amsgrad: false }.build(vs, lr)?,
    };
    Ok(opt)
}

/// The learning rate for 1-based `step` of `total` steps: linear warm-up from 0 over
/// `warmup_steps`, then the schedule from the base rate.
pub fn learning_rate(spec: &OptimizerSpec, step: u64, total: u64) -> f64 {
    let base = spec.lr;
    if step <= spec.warmup_steps {
        return base * step as f64 / spec.warmup_steps as f64;
    }
    let decay_steps = total.saturating_sub(spec.warmup_steps).max(1) as f64;
    let progress = ((step - spec.warmup_steps) as f64 / decay_steps).min(1.0);
    match spec.schedule {
        Schedule::Constant => base,
        Schedule::Linear => base * (1.0 - progress),
        Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(schedule: Schedule, warmup_steps: u64) -> OptimizerSpec {
        OptimizerSpec { schedule, warmup_steps, lr: 1.0, ..OptimizerSpec::default() }
    }

    #[test]
    fn warmup_then_schedules() {
        let s = spec(Schedule::Constant, 4);
        assert_eq!(learning_rate(&s, 1, 10), 0.25);
        assert_eq!(learning_rate(&s, 4, 10), 1.0);
        assert_eq!(learning_rate(&s, 9, 10), 1.0);
        let lin = spec(Schedule::Linear, 0);
        assert!((learning_rate(&lin, 5, 10) - 0.5).abs() < 1e-12);
        assert_eq!(learning_rate(&lin, 10, 10), 0.0);
        let cos = spec(Schedule::Cosine, 2);
        assert!((learning_rate(&cos, 6, 10) - 0.5).abs() < 1e-12);
        assert!(learning_rate(&cos, 10, 10).abs() < 1e-12);
    }
}
