//! `on_spike: rollback`: a copy of the last good training state in memory, the spike
//! detector that decides when to go back to it, and the restore.

use std::collections::VecDeque;

use tch::Tensor;

use super::precision::LossScaler;
use super::step::{StepOutput, Trainer};
use crate::spec::{RollbackPolicy, SpikeMetric};

/// What a step's measure says.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No spike.
    Good,
    /// A spike: why, in words.
    Spike(String),
}

/// The z-score of a measure against its last `window` good values.
#[derive(Debug, Clone)]
pub struct Detector {
    metric: SpikeMetric,
    z_threshold: f64,
    window: usize,
    recent: VecDeque<f64>,
}

impl Detector {
    pub fn new(policy: &RollbackPolicy) -> Self {
        let window = usize::try_from(policy.window).unwrap_or(usize::MAX);
        Self { metric: policy.metric, z_threshold: policy.z_threshold, window, recent: VecDeque::new() }
    }

    /// Judges one step; a good step's value joins the window. A step whose update the
    /// loss scaler skipped for an overflow says nothing (its gradient norm is infinite by
    /// design) and is judged good without joining.
    pub fn observe(&mut self, out: &StepOutput) -> Verdict {
        let (name, value) = match self.metric {
            SpikeMetric::Loss => ("loss", out.loss),
            SpikeMetric::GradNorm => ("gradient norm", out.grad_norm),
        };
        if out.overflow && self.metric == SpikeMetric::GradNorm {
            return Verdict::Good;
        }
        if !out.loss.is_finite() || !value.is_finite() {
            return Verdict::Spike(format!("non-finite {name}"));
        }
        if self.recent.len() >= self.window {
            let n = self.recent.len() as f64;
            let mean = self.recent.iter().sum::<f64>() / n;
            let var = self.recent.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            let z = (value - mean) / var.sqrt().max(f64::MIN_POSITIVE);
            if z > self.z_threshold {
                return Verdict::Spike(format!(
                    "{name} {value:.4} at z-score {z:.1} over the last {} steps",
                    self.window
                ));
            }
            self.recent.pop_front();
        }
        self.recent.push_back(value);
        Verdict::Good
    }
}

/// The training state at a good step, on the device.
pub struct Snapshot {
    /// The step after which it was taken (0: before the first).
    pub step: u64,
    weights: Tensor,
    buffers: Vec<Tensor>,
    optimizer: Vec<(String, Tensor)>,
    optim_steps: u64,
    policies: Vec<(String, Tensor)>,
    scaler: Option<LossScaler>,
}

impl Snapshot {
    /// Copies `trainer`'s state and `buffers` (batch norm's running statistics).
    pub fn take(step: u64, trainer: &Trainer, buffers: &[(String, Tensor)]) -> anyhow::Result<Self> {
        let copy = deep;
        let (optimizer, optim_steps) = trainer.optimizer().state();
        Ok(Self {
            step,
            weights: copy(trainer.flat().weights())?,
            buffers: buffers.iter().map(|(_, t)| copy(t)).collect::<Result<_, _>>()?,
            optimizer: optimizer
                .into_iter()
                .map(|(n, t)| Ok((n.to_owned(), copy(t)?)))
                .collect::<anyhow::Result<_>>()?,
            optim_steps,
            policies: trainer
                .grad_policies()
                .state()?
                .into_iter()
                .map(|(n, t)| Ok((n, copy(&t)?)))
                .collect::<anyhow::Result<_>>()?,
            scaler: trainer.precision().scaler().cloned(),
        })
    }

    /// Puts the copy back into `trainer` and `buffers`; the copy stays, for another
    /// rollback to it.
    pub fn restore(&self, trainer: &mut Trainer, buffers: &[(String, Tensor)]) -> anyhow::Result<()> {
        let device = self.weights.device();
        tch::no_grad(|| -> anyhow::Result<()> {
            trainer.flat().weights().shallow_clone().f_copy_(&self.weights)?;
            for ((_, buffer), saved) in buffers.iter().zip(&self.buffers) {
                buffer.shallow_clone().f_copy_(saved)?;
            }
            trainer.grad_policies_mut().restore(&self.policies)
        })?;
        let optimizer: Vec<(String, Tensor)> =
            self.optimizer.iter().map(|(n, t)| Ok((n.clone(), deep(t)?))).collect::<anyhow::Result<_>>()?;
        trainer.optimizer_mut().restore(optimizer, self.optim_steps, device)?;
        if let (Some(scaler), Some(saved)) = (trainer.precision_mut().scaler_mut(), &self.scaler) {
            *scaler = saved.clone();
        }
        Ok(())
    }
}

/// A copy of `t`'s data in memory of its own.
fn deep(t: &Tensor) -> Result<Tensor, tch::TchError> {
    let mut copy = t.f_empty_like()?;
    copy.f_copy_(&t.f_detach()?)?;
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(loss: f64) -> StepOutput {
        StepOutput { finite: loss.is_finite(), updated: true, overflow: false, loss, grad_norm: 1.0 }
    }

    #[test]
    fn a_spike_is_judged_against_the_window_and_stays_out_of_it() {
        let policy = RollbackPolicy { window: 4, z_threshold: 3.0, ..RollbackPolicy::default() };
        let mut d = Detector::new(&policy);
        for loss in [1.0, 1.1, 0.9, 1.0] {
            assert_eq!(d.observe(&out(loss)), Verdict::Good, "filling the window");
        }
        // mean 1.0, std √0.005 ≈ 0.0707: 1.2 is at z ≈ 2.8, 1.3 at z ≈ 4.2.
        assert_eq!(d.observe(&out(1.2)), Verdict::Good);
        assert!(matches!(d.observe(&out(10.0)), Verdict::Spike(_)));
        assert!(matches!(d.observe(&out(f64::NAN)), Verdict::Spike(_)));
        assert_eq!(d.recent, [1.1, 0.9, 1.0, 1.2], "spikes never join the window");
    }
}
