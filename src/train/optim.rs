//! Optimizers and learning-rate schedules.
//!
//! [`FlatOptimizer`] applies `torch.optim.SGD`, `Adam` and `AdamW`'s update rules to the
//! whole flat parameter buffer at once (a handful of kernels per step instead of several
//! per tensor), and its state is a few tensors a checkpoint can hold, so a resumed job
//! continues with its moments. [`build`] gives LibTorch's own optimizers, the reference
//! the flat one is tested against.

use std::ops::Range;

use tch::nn::{self, OptimizerConfig};
use tch::{Kind, Tensor};

use super::LayerInfo;
use super::host::{self, WeightSummary};
use crate::spec::{NoDecay, OptimizerKind, OptimizerSpec, Schedule};

/// Names of the state tensors in an optimizer checkpoint.
const STATE_NAMES: [&str; 3] = ["exp_avg", "exp_avg_sq", "momentum_buffer"];

/// SGD (momentum, Nesterov), Adam or AdamW over one flat parameter buffer.
#[derive(Debug)]
pub struct FlatOptimizer {
    spec: OptimizerSpec,
    /// Updates applied so far (Adam's bias correction uses it).
    steps: u64,
    /// First moment (Adam/AdamW) and second moment, created on the first update.
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
    /// SGD momentum buffer.
    momentum_buffer: Option<Tensor>,
    /// Working space of the flat size, so an update allocates nothing.
    scratch: Option<Tensor>,
    /// The (offset, length) runs of the flat buffer that weight decay applies to, adjacent
    /// decayed layers merged; `None` decays the whole buffer.
    decayed: Option<Vec<(i64, i64)>>,
    /// Whether an update of host memory runs as one pass over the buffers ([`host::update`])
    /// rather than as LibTorch operations, each its own pass.
    in_place: bool,
}

impl FlatOptimizer {
    pub fn new(spec: &OptimizerSpec) -> Self {
        Self {
            spec: spec.clone(),
            steps: 0,
            exp_avg: None,
            exp_avg_sq: None,
            momentum_buffer: None,
            scratch: None,
            decayed: None,
            in_place: true,
        }
    }

    /// Updates through LibTorch's operations even on the CPU, as on CUDA: for tests that
    /// hold both ways to the same rule.
    #[cfg(test)]
    pub(crate) fn through_libtorch(mut self) -> Self {
        self.in_place = false;
        self
    }

    /// Whether an update of buffers in host memory measures its change on the way.
    pub fn in_place(&self) -> bool {
        self.in_place
    }

    /// Whether weight decay applies to the elements `range` (one layer's).
    fn decays(&self, range: &Range<usize>) -> bool {
        match &self.decayed {
            None => true,
            Some(runs) => {
                runs.iter().any(|&(start, len)| start as usize <= range.start && range.end <= (start + len) as usize)
            }
        }
    }

    /// Splits the parameters into the decayed and the not-decayed group the spec's
    /// `no_decay` asks for; `layers` is the flat buffer's layout, in order.
    pub fn with_groups(mut self, layers: &[LayerInfo]) -> Self {
        if self.spec.no_decay == NoDecay::None {
            return self;
        }
        let mut runs: Vec<(i64, i64)> = Vec::new();
        let mut offset = 0;
        for layer in layers {
            if layer.shape.len() > 1 {
                match runs.last_mut() {
                    Some((start, len)) if *start + *len == offset => *len += layer.numel,
                    _ => runs.push((offset, layer.numel)),
                }
            }
            offset += layer.numel;
        }
        self.decayed = Some(runs);
        self
    }

    /// Weight decay's part of the gradient, `g + wd·w`, on the decayed runs (SGD, Adam).
    fn with_l2(&self, grads: &Tensor, w: &Tensor, wd: f64) -> anyhow::Result<Tensor> {
        if wd == 0.0 {
            return Ok(grads.shallow_clone());
        }
        let Some(runs) = &self.decayed else { return Ok(grads.f_add(&w.f_mul_scalar(wd)?)?) };
        let mut g = grads.f_empty_like()?;
        g.f_copy_(grads)?;
        for &(start, len) in runs {
            let mut part = g.f_narrow(0, start, len)?;
            let _ = part.f_add_(&w.f_narrow(0, start, len)?.f_mul_scalar(wd)?)?;
        }
        Ok(g)
    }

    /// AdamW's decoupled decay, `w ← w·(1 − lr·wd)`, on the decayed runs.
    fn decay(&self, w: &Tensor, factor: f64) -> anyhow::Result<()> {
        let Some(runs) = &self.decayed else {
            let _ = w.shallow_clone().f_mul_scalar_(factor)?;
            return Ok(());
        };
        for &(start, len) in runs {
            let _ = w.f_narrow(0, start, len)?.f_mul_scalar_(factor)?;
        }
        Ok(())
    }

    /// Updates `weights` in place from `grads` (same flat layout, `layers` each layer's
    /// elements) at learning rate `lr`. In host memory the update is one pass that also
    /// measures each layer's change, returned for `weight_norm` and `update_ratio`; on a
    /// GPU it is LibTorch's operations, and `None`.
    pub fn step(
        &mut self,
        weights: &Tensor,
        grads: &Tensor,
        lr: f64,
        layers: &[Range<usize>],
    ) -> anyhow::Result<Option<Vec<WeightSummary>>> {
        if self.in_place
            && let Some(summaries) = self.step_in_place(weights, grads, lr, layers)?
        {
            return Ok(Some(summaries));
        }
        self.step_through_libtorch(weights, grads, lr)?;
        Ok(None)
    }

    /// [`Self::step`] as one pass over host memory; `None`, with nothing changed, where the
    /// buffers are not host memory.
    fn step_in_place(
        &mut self,
        weights: &Tensor,
        grads: &Tensor,
        lr: f64,
        layers: &[Range<usize>],
    ) -> anyhow::Result<Option<Vec<WeightSummary>>> {
        let wd = self.spec.weight_decay();
        let layers: Vec<(Range<usize>, bool)> = layers.iter().map(|r| (r.clone(), self.decays(r))).collect();
        let summaries = match self.spec.kind {
            OptimizerKind::Sgd => {
                let momentum = self.spec.momentum;
                let initial = momentum != 0.0 && self.momentum_buffer.is_none();
                if initial {
                    self.momentum_buffer = Some(grads.f_zeros_like()?);
                }
                let rule = host::Sgd {
                    lr: lr as f32,
                    wd: wd as f32,
                    momentum: momentum as f32,
                    nesterov: self.spec.nesterov,
                    initial,
                };
                let buffer = self.momentum_buffer.as_ref().filter(|_| momentum != 0.0);
                let summaries = host::update(weights, grads, buffer, None, &layers, host::Rule::Sgd(rule));
                if summaries.is_none() && initial {
                    self.momentum_buffer = None;
                }
                summaries
            }
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let (b1, b2) = (self.spec.beta1, self.spec.beta2);
                let t = (self.steps + 1) as i32;
                let adamw = self.spec.kind == OptimizerKind::Adamw;
                let rule = host::Adam {
                    wd: if adamw { 0.0 } else { wd as f32 },
                    decay: if adamw && wd != 0.0 { (1.0 - lr * wd) as f32 } else { 1.0 },
                    one_minus_beta1: (1.0 - b1) as f32,
                    one_minus_beta2: (1.0 - b2) as f32,
                    bias2_sqrt: (1.0 - b2.powi(t)).sqrt() as f32,
                    eps: self.spec.eps as f32,
                    step_size: (lr / (1.0 - b1.powi(t))) as f32,
                };
                let m = self.exp_avg.get_or_insert_with(|| grads.zeros_like()).shallow_clone();
                let v = self.exp_avg_sq.get_or_insert_with(|| grads.zeros_like()).shallow_clone();
                host::update(weights, grads, Some(&m), Some(&v), &layers, host::Rule::Adam(rule))
            }
        };
        if summaries.is_some() {
            self.steps += 1;
        }
        Ok(summaries)
    }

    /// [`Self::step`] as LibTorch operations on whole buffers.
    fn step_through_libtorch(&mut self, weights: &Tensor, grads: &Tensor, lr: f64) -> anyhow::Result<()> {
        let mut w = weights.shallow_clone();
        let wd = self.spec.weight_decay();
        self.steps += 1;
        match self.spec.kind {
            OptimizerKind::Sgd => {
                let mut d = self.with_l2(grads, &w, wd)?;
                let momentum = self.spec.momentum;
                if momentum != 0.0 {
                    let buf = match &mut self.momentum_buffer {
                        Some(buf) => {
                            let _ = buf.f_mul_scalar_(momentum)?.f_add_(&d)?;
                            buf.shallow_clone()
                        }
                        None => {
                            let buf = copy_of(&d, d.f_empty_like()?)?;
                            self.momentum_buffer = Some(buf.shallow_clone());
                            buf
                        }
                    };
                    d = if self.spec.nesterov { d.f_add(&buf.f_mul_scalar(momentum)?)? } else { buf };
                }
                let _ = w.f_sub_(&d.f_mul_scalar(lr)?)?;
            }
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let (b1, b2, eps) = (self.spec.beta1, self.spec.beta2, self.spec.eps);
                let g = if self.spec.kind == OptimizerKind::Adam {
                    self.with_l2(grads, &w, wd)?
                } else {
                    grads.shallow_clone()
                };
                if self.spec.kind == OptimizerKind::Adamw && wd != 0.0 {
                    self.decay(&w, 1.0 - lr * wd)?;
                }
                // One scratch buffer, reused every step: no allocation per update.
                let scratch = self.scratch.get_or_insert_with(|| g.zeros_like()).shallow_clone();
                let m = self.exp_avg.get_or_insert_with(|| g.zeros_like());
                let _ = m.f_lerp_(&g, 1.0 - b1)?;
                let _ = g.f_mul_out(&scratch, &g)?;
                let v = self.exp_avg_sq.get_or_insert_with(|| g.zeros_like());
                let _ = v.f_lerp_(&scratch, 1.0 - b2)?;
                let t = self.steps as i32;
                let bias1 = 1.0 - b1.powi(t);
                let bias2 = 1.0 - b2.powi(t);
                let mut denom = v.f_sqrt_out(&scratch)?;
                let _ = denom.f_div_scalar_(bias2.sqrt())?.f_add_scalar_(eps)?;
                let mut update = m.f_div_out(&scratch, &denom)?;
                let _ = update.f_mul_scalar_(lr / bias1)?;
                let _ = w.f_sub_(&update)?;
            }
        }
        Ok(())
    }

    /// The state to checkpoint: named tensors, and the update count.
    pub fn state(&self) -> (Vec<(&'static str, &Tensor)>, u64) {
        let tensors = [&self.exp_avg, &self.exp_avg_sq, &self.momentum_buffer]
            .into_iter()
            .zip(STATE_NAMES)
            .filter_map(|(t, name)| t.as_ref().map(|t| (name, t)))
            .collect();
        (tensors, self.steps)
    }

    /// Restores what [`Self::state`] saved; tensors go to `device`.
    pub fn restore(&mut self, tensors: Vec<(String, Tensor)>, steps: u64, device: tch::Device) -> anyhow::Result<()> {
        for (name, tensor) in tensors {
            let tensor = tensor.f_to_kind(Kind::Float)?.f_to_device(device)?;
            match name.as_str() {
                "exp_avg" => self.exp_avg = Some(tensor),
                "exp_avg_sq" => self.exp_avg_sq = Some(tensor),
                "momentum_buffer" => self.momentum_buffer = Some(tensor),
                other => anyhow::bail!("unknown optimizer state {other:?}"),
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// A new tensor holding `src`'s values (`dst` is scratch space of the same shape).
fn copy_of(src: &Tensor, mut dst: Tensor) -> anyhow::Result<Tensor> {
    dst.f_copy_(src)?;
    Ok(dst)
}

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

/// The learning rate for 1-based `step` of `total` steps: what PyTorch's schedulers give
/// the `step`-th `optimizer.step()` (see [`Schedule`]). Warm-up: `LinearLR(start_factor =
/// 1/W, total_iters = W−1)`, i.e. `lr·step/W`; then, chained by `SequentialLR` at
/// milestone `W`, the decay over `T − W` scheduler steps, counted from 0 at step `W + 1`.
/// So the first step after warm-up trains at the base rate and the last at a small
/// positive one (the decay reaches 0 one step after the end, as in PyTorch).
pub fn learning_rate(spec: &OptimizerSpec, step: u64, total: u64) -> f64 {
    let base = spec.lr;
    if step <= spec.warmup_steps {
        return base * step as f64 / spec.warmup_steps as f64;
    }
    let span = total.saturating_sub(spec.warmup_steps).max(1) as f64;
    let elapsed = ((step - 1 - spec.warmup_steps) as f64).min(span);
    match spec.schedule {
        Schedule::Constant => base,
        Schedule::Linear => base * (1.0 - elapsed / span),
        Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * elapsed / span).cos()),
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Ten updates of the flat optimizer match LibTorch's on the same weights and grads.
    #[test]
    fn flat_updates_match_libtorch() {
        let specs = [
            OptimizerSpec { kind: OptimizerKind::Adamw, lr: 0.01, weight_decay: Some(0.1), ..OptimizerSpec::default() },
            OptimizerSpec { kind: OptimizerKind::Adam, lr: 0.01, weight_decay: Some(0.1), ..OptimizerSpec::default() },
            OptimizerSpec { kind: OptimizerKind::Sgd, lr: 0.1, momentum: 0.9, ..OptimizerSpec::default() },
            OptimizerSpec {
                kind: OptimizerKind::Sgd,
                lr: 0.1,
                momentum: 0.9,
                nesterov: true,
                weight_decay: Some(0.01),
                ..OptimizerSpec::default()
            },
            OptimizerSpec { kind: OptimizerKind::Sgd, lr: 0.1, ..OptimizerSpec::default() },
        ];
        // 37 elements: more than one group of vector lanes, and a tail; two layers.
        let layers = [0..21, 21..37];
        for (spec, in_place) in specs.iter().flat_map(|s| [(s, true), (s, false)]) {
            let mut rng = StdRng::seed_from_u64(3);
            let mut draw = |scale: f64| -> Tensor {
                let values: Vec<f32> = (0..37).map(|_| ((rng.random::<f64>() - 0.5) * scale) as f32).collect();
                Tensor::from_slice(&values)
            };
            let init = draw(2.0);
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let reference = vs.root().var_copy("w", &init);
            let mut opt = build(spec, &vs, 100).expect("optimizer");
            let flat = init.copy();
            let ours = FlatOptimizer::new(spec);
            let mut ours = if in_place { ours } else { ours.through_libtorch() };
            let way = if in_place { "in place" } else { "LibTorch operations" };
            for step in 0..10 {
                let grad = draw(step as f64 + 1.0);
                opt.zero_grad();
                (&reference * &grad).sum(Kind::Float).backward();
                opt.set_lr(spec.lr);
                opt.step();
                let before = flat.copy();
                let measured = tch::no_grad(|| ours.step(&flat, &grad, spec.lr, &layers)).expect("step");
                assert_eq!(measured.is_some(), in_place, "{way}: the change is measured in place only");
                for (range, m) in layers.iter().zip(measured.iter().flatten()) {
                    let part = |t: &Tensor| t.narrow(0, range.start as i64, range.len() as i64).to_kind(Kind::Double);
                    let sq = |t: Tensor| t.square().sum(Kind::Double).double_value(&[]);
                    let (after, change, was) = (sq(part(&flat)), sq(part(&flat) - part(&before)), sq(part(&before)));
                    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs() + 1e-30;
                    assert!(close(m.after, after) && close(m.before, was), "{way}: {m:?} vs {after}, {was}");
                    assert!(close(m.change, change), "{way}: change {} vs {change}", m.change);
                }
            }
            let diff = (&flat - &reference).abs().max().double_value(&[]);
            let scale = reference.abs().max().double_value(&[]);
            assert!(diff <= 1e-5 * scale, "{:?} nesterov={} {way}: differs by {diff}", spec.kind, spec.nesterov);
        }
    }

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
        assert!((learning_rate(&lin, 6, 10) - 0.5).abs() < 1e-12);
        assert!((learning_rate(&lin, 10, 10) - 0.1).abs() < 1e-12);
        let cos = spec(Schedule::Cosine, 2);
        assert_eq!(learning_rate(&cos, 3, 10), 1.0);
        assert!((learning_rate(&cos, 7, 10) - 0.5).abs() < 1e-12);
        assert!(learning_rate(&cos, 10, 10) > 0.0);
    }
}
