//! Gradient policies (after backward, before the step) and weight policies (after it).
//!
//! Everything stays on the training device: coefficients, thresholds, norm histories and
//! the running statistics of the stateful policies are tensors, so no policy adds a host
//! synchronisation. [`GradPolicies`] owns that state for the length of a run.

use tch::{Device, Kind, Tensor};

use crate::spec::{GradPolicy, NormType, WeightPolicy};

/// `torch.nn.utils.clip_grad_norm_` adds this to the norm before dividing; the adaptive
/// policies follow their references in doing the same.
const CLIP_EPS: f64 = 1e-6;
/// AGC floors a unit's gradient norm at this before dividing (as `timm`'s reference does).
const AGC_GRAD_FLOOR: f64 = 1e-6;
/// ZClip's epsilon in the z-score's denominator.
const Z_EPS: f64 = 1e-6;

/// Per-layer L2 norms of `grads`, as one 1-D tensor.
pub fn layer_norms(grads: &[Tensor]) -> anyhow::Result<Tensor> {
    let norms: Vec<Tensor> = grads.iter().map(|g| g.f_norm()).collect::<Result<_, _>>()?;
    Ok(Tensor::f_stack(&norms, 0)?.f_to_kind(Kind::Float)?)
}

fn global_norm(grads: &[Tensor]) -> anyhow::Result<Tensor> {
    Ok(layer_norms(grads)?.f_norm()?)
}

/// Multiplies every gradient by `coef`: the whole buffer at once where the gradients lie
/// in one ([`GradPolicies::apply_flat`]), else layer by layer (the same products).
/// In host memory the buffer is multiplied in place on the training thread: LibTorch's
/// `mul_` would first wake its thread pool, asleep after the in-place statistics, which
/// cost 0.3 ms a step on 2 cores, four times the multiplication.
fn scale_all(grads: &[Tensor], flat: Option<&Tensor>, coef: &Tensor) -> anyhow::Result<()> {
    if let Some(flat) = flat {
        if flat.device() == Device::Cpu && coef.device() == Device::Cpu && coef.kind() == Kind::Float {
            let factor = coef.f_double_value(&[])? as f32;
            if super::host::scale(&mut flat.shallow_clone(), factor) {
                return Ok(());
            }
        }
        let _ = flat.shallow_clone().f_mul_(coef)?;
        return Ok(());
    }
    for g in grads {
        let _ = g.shallow_clone().f_mul_(coef)?;
    }
    Ok(())
}

/// `min(1, max / (norm + eps))`, the coefficient `clip_grad_norm_` multiplies by.
fn clip_coef(max: &Tensor, norm: &Tensor) -> anyhow::Result<Tensor> {
    Ok(max.f_div(&norm.f_add_scalar(CLIP_EPS)?)?.f_clamp_max(1.0)?)
}

/// What the grad policies did to one step's gradients.
#[derive(Debug)]
pub struct GradOutcome {
    /// Global L2 norm after every policy (0-dim, on the device).
    pub norm: Tensor,
    /// A 0-dim boolean, true when a policy drops this step's update; `None` when no
    /// policy can.
    pub skip: Option<Tensor>,
    /// A 0-dim boolean, true when `skip_spike` let a spike through because it had already
    /// skipped `max_consecutive` updates in a row; `None` when no policy can.
    pub forced: Option<Tensor>,
}

/// Running mean and variance of the global norm, an exponential moving average after a
/// warm-up whose norms initialise it (ZClip's estimator). All on the device.
#[derive(Debug)]
struct NormStats {
    alpha: f64,
    z_threshold: f64,
    warmup: u64,
    /// The first `warmup` norms.
    buffer: Tensor,
    /// Steps seen (a host counter: no synchronisation needed to know the phase).
    seen: u64,
    mean: Tensor,
    var: Tensor,
}

impl NormStats {
    fn new(alpha: f64, z_threshold: f64, warmup: u64, device: Device) -> anyhow::Result<Self> {
        let zero = Tensor::f_zeros([], (Kind::Float, device))?;
        Ok(Self {
            alpha,
            z_threshold,
            warmup,
            buffer: Tensor::f_zeros([warmup as i64], (Kind::Float, device))?,
            seen: 0,
            mean: zero.shallow_clone(),
            var: zero,
        })
    }

    /// During warm-up, records `norm` and returns `None`; at its end initialises the
    /// statistics (mean and population variance of the warm-up norms, NaN ignored).
    fn warming_up(&mut self, norm: &Tensor) -> anyhow::Result<bool> {
        if self.seen >= self.warmup {
            return Ok(false);
        }
        let finite = norm.f_isfinite()?;
        let value = norm.f_where_scalarother(&finite, f64::NAN)?;
        self.buffer.f_narrow(0, self.seen as i64, 1)?.f_copy_(&value.f_reshape([1])?)?;
        self.seen += 1;
        if self.seen == self.warmup {
            self.mean = self.buffer.f_nanmean(None::<&[i64]>, false, Kind::Float)?;
            let dev = self.buffer.f_sub(&self.mean)?.f_square()?;
            self.var = dev.f_nanmean(None::<&[i64]>, false, Kind::Float)?;
        }
        Ok(true)
    }

    /// `(norm - mean) / (std + eps)`.
    fn z_score(&self, norm: &Tensor) -> anyhow::Result<Tensor> {
        Ok(norm.f_sub(&self.mean)?.f_div(&self.var.f_sqrt()?.f_add_scalar(Z_EPS)?)?)
    }

    /// Folds `value` into the averages where `keep` holds (and `value` is finite).
    fn update(&mut self, value: &Tensor, keep: &Tensor) -> anyhow::Result<()> {
        let keep = keep.f_logical_and(&value.f_isfinite()?)?;
        let mean = (&self.mean * self.alpha).f_add(&(value * (1.0 - self.alpha)))?;
        let var = (&self.var * self.alpha).f_add(&(value.f_sub(&mean)?.f_square()? * (1.0 - self.alpha)))?;
        self.mean = mean.f_where_self(&keep, &self.mean)?;
        self.var = var.f_where_self(&keep, &self.var)?;
        Ok(())
    }
}

#[derive(Debug)]
enum Stage {
    ClipNorm { max_norm: f64, inf: bool },
    ClipValue { limit: f64 },
    ClipLayerNorm { max_norm: f64 },
    Agc { lambda: f64, eps: f64, exclude_head: bool },
    Autoclip { quantile: f64, history: Tensor, seen: u64 },
    Zclip { stats: NormStats, max_grad_norm: Option<f64> },
    SkipSpike { stats: NormStats, max_consecutive: u64, streak: Tensor },
}

/// The grad policies of a run, in order, with the state the adaptive ones carry from
/// step to step.
#[derive(Debug)]
pub struct GradPolicies {
    stages: Vec<Stage>,
    /// Indices of the output layer's tensors, which AGC leaves alone when told to.
    head: Vec<usize>,
}

impl GradPolicies {
    pub fn new(policies: &[GradPolicy], device: Device) -> anyhow::Result<Self> {
        let stages = policies
            .iter()
            .map(|policy| {
                Ok(match policy {
                    &GradPolicy::ClipNorm { max_norm, norm_type } => {
                        Stage::ClipNorm { max_norm, inf: norm_type == NormType::Inf }
                    }
                    &GradPolicy::ClipValue { limit } => Stage::ClipValue { limit },
                    &GradPolicy::ClipLayerNorm { max_norm } => Stage::ClipLayerNorm { max_norm },
                    GradPolicy::Agc(p) => Stage::Agc { lambda: p.lambda, eps: p.eps, exclude_head: p.exclude_head },
                    GradPolicy::Autoclip(p) => Stage::Autoclip {
                        quantile: p.percentile / 100.0,
                        history: Tensor::f_full([p.history as i64], f64::NAN, (Kind::Float, device))?,
                        seen: 0,
                    },
                    GradPolicy::Zclip(p) => Stage::Zclip {
                        stats: NormStats::new(p.alpha, p.z_threshold, p.warmup, device)?,
                        max_grad_norm: p.max_grad_norm,
                    },
                    GradPolicy::SkipSpike(p) => Stage::SkipSpike {
                        stats: NormStats::new(p.alpha, p.z_threshold, p.warmup, device)?,
                        max_consecutive: p.max_consecutive,
                        streak: Tensor::f_zeros([], (Kind::Float, device))?,
                    },
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { stages, head: Vec::new() })
    }

    /// Names the output layer's tensors (by layer index), for AGC's `exclude_head`.
    pub fn with_head(mut self, head: Vec<usize>) -> Self {
        self.head = head;
        self
    }

    /// Applies the policies in order to `grads` in place. `weights` are the parameters
    /// the gradients belong to (AGC reads them); `total_norm` is the global L2 norm of
    /// `grads` before any policy.
    pub fn apply(&mut self, grads: &[Tensor], weights: &[Tensor], total_norm: &Tensor) -> anyhow::Result<GradOutcome> {
        self.apply_in(None, grads, weights, total_norm)
    }

    /// [`Self::apply`] to gradients that are views laid end to end over `flat`, which
    /// holds them and nothing else: a policy that scales every gradient (clipping by the
    /// global norm) then does it in one operation instead of one a layer.
    pub fn apply_flat(
        &mut self,
        flat: &Tensor,
        grads: &[Tensor],
        weights: &[Tensor],
        total_norm: &Tensor,
    ) -> anyhow::Result<GradOutcome> {
        let numel: i64 = grads.iter().map(Tensor::numel).map(|n| n as i64).sum();
        anyhow::ensure!(flat.numel() as i64 == numel, "the flat buffer does not hold exactly the gradients");
        self.apply_in(Some(flat), grads, weights, total_norm)
    }

    fn apply_in(
        &mut self,
        flat: Option<&Tensor>,
        grads: &[Tensor],
        weights: &[Tensor],
        total_norm: &Tensor,
    ) -> anyhow::Result<GradOutcome> {
        let mut norm = total_norm.shallow_clone();
        let mut skip: Option<Tensor> = None;
        let mut forced: Option<Tensor> = None;
        for stage in &mut self.stages {
            match stage {
                Stage::ClipNorm { max_norm, inf } => {
                    let measured = if *inf { max_abs(grads)? } else { norm.shallow_clone() };
                    let coef = clip_coef(&measured.f_full_like(*max_norm)?, &measured)?;
                    scale_all(grads, flat, &coef)?;
                    norm = norm.f_mul(&coef)?;
                }
                Stage::ClipValue { limit } => {
                    for g in grads {
                        let _ = g.shallow_clone().f_clamp_(-*limit, *limit)?;
                    }
                    norm = global_norm(grads)?;
                }
                Stage::ClipLayerNorm { max_norm } => {
                    let norms = layer_norms(grads)?;
                    let coefs = clip_coef(&norms.f_full_like(*max_norm)?, &norms)?;
                    for (i, g) in grads.iter().enumerate() {
                        let _ = g.shallow_clone().f_mul_(&coefs.f_get(i as i64)?)?;
                    }
                    norm = norms.f_mul(&coefs)?.f_norm()?;
                }
                Stage::Agc { lambda, eps, exclude_head } => {
                    for (i, (g, w)) in grads.iter().zip(weights).enumerate() {
                        if !(*exclude_head && self.head.contains(&i)) {
                            agc(g, w, *lambda, *eps)?;
                        }
                    }
                    norm = global_norm(grads)?;
                }
                Stage::Autoclip { quantile, history, seen } => {
                    let capacity = history.size()[0];
                    let slot = (*seen % capacity as u64) as i64;
                    let finite = norm.f_isfinite()?;
                    let value = norm.f_where_scalarother(&finite, f64::NAN)?.f_reshape([1])?;
                    history.f_narrow(0, slot, 1)?.f_copy_(&value)?;
                    *seen += 1;
                    let filled = (*seen).min(capacity as u64) as i64;
                    let threshold =
                        history.f_narrow(0, 0, filled)?.f_nanquantile_scalar(*quantile, None, false, "linear")?;
                    let coef = clip_coef(&threshold, &norm)?;
                    scale_all(grads, flat, &coef)?;
                    norm = norm.f_mul(&coef)?;
                }
                Stage::Zclip { stats, max_grad_norm } => {
                    if stats.warming_up(&norm)? {
                        // The reference caps the norm during warm-up too, the way
                        // `clip_grad_norm_` does.
                        if let Some(max) = max_grad_norm {
                            let coef = clip_coef(&norm.f_full_like(*max)?, &norm)?;
                            scale_all(grads, flat, &coef)?;
                            norm = norm.f_mul(&coef)?;
                        }
                        continue;
                    }
                    let z = stats.z_score(&norm)?;
                    let spike = z.f_gt(stats.z_threshold)?;
                    // mean + z_t·std/(z/z_t): the further out the spike, the harder the clip.
                    let std = stats.var.f_sqrt()?;
                    let threshold = stats.mean.f_add(&(std * (stats.z_threshold * stats.z_threshold)).f_div(&z)?)?;
                    let clip_to = threshold.f_where_self(&spike, &norm)?;
                    let effective = match max_grad_norm {
                        Some(max) => clip_to.f_clamp_max(*max)?,
                        None => clip_to.shallow_clone(),
                    };
                    let coef = effective
                        .f_div(&norm.f_add_scalar(CLIP_EPS)?)?
                        .f_where_self(&norm.f_gt_tensor(&effective)?, &norm.f_ones_like()?)?;
                    scale_all(grads, flat, &coef)?;
                    // The EMA follows the adaptive target, not the cap (as the reference).
                    stats.update(&clip_to, &spike.f_ones_like()?)?;
                    norm = norm.f_mul(&coef)?;
                }
                Stage::SkipSpike { stats, max_consecutive, streak } => {
                    if stats.warming_up(&norm)? {
                        continue;
                    }
                    let spike = stats.z_score(&norm)?.f_gt(stats.z_threshold)?;
                    // After `max_consecutive` skips in a row a spike is let through and
                    // joins the EMA: the norm has moved to a new level.
                    let exhausted = spike.f_logical_and(&streak.f_ge(*max_consecutive as f64)?)?;
                    let skipped = spike.f_logical_and(&exhausted.f_logical_not()?)?;
                    stats.update(&norm, &skipped.f_logical_not()?)?;
                    *streak = streak.f_add_scalar(1.0)?.f_where_self(&skipped, &streak.f_zeros_like()?)?;
                    skip = Some(match skip {
                        Some(earlier) => earlier.f_logical_or(&skipped)?,
                        None => skipped,
                    });
                    forced = Some(match forced {
                        Some(earlier) => earlier.f_logical_or(&exhausted)?,
                        None => exhausted,
                    });
                }
            }
        }
        Ok(GradOutcome { norm, skip, forced })
    }
}

/// The largest absolute gradient element over all layers (the inf-norm).
fn max_abs(grads: &[Tensor]) -> anyhow::Result<Tensor> {
    let maxima: Vec<Tensor> = grads.iter().map(|g| g.f_abs()?.f_max()).collect::<Result<_, _>>()?;
    Ok(Tensor::f_stack(&maxima, 0)?.f_max()?.f_to_kind(Kind::Float)?)
}

/// Unit-wise adaptive clipping of one layer: a unit is a row (output unit) of a matrix, or
/// the whole of a vector. Each unit's gradient norm is held to `lambda · max(‖w‖, eps)`.
fn agc(g: &Tensor, w: &Tensor, lambda: f64, eps: f64) -> anyhow::Result<()> {
    let unit_norm = |t: &Tensor| -> anyhow::Result<Tensor> {
        if t.dim() <= 1 {
            Ok(t.f_norm()?)
        } else {
            let dims: Vec<i64> = (1..t.dim() as i64).collect();
            Ok(t.f_norm_scalaropt_dim(2.0, dims.as_slice(), true)?)
        }
    };
    let max = unit_norm(w)?.f_clamp_min(eps)? * lambda;
    let gn = unit_norm(g)?;
    let coef = max.f_div(&gn.f_clamp_min(AGC_GRAD_FLOOR)?)?.f_where_self(&gn.f_ge_tensor(&max)?, &gn.f_ones_like()?)?;
    let _ = g.shallow_clone().f_mul_(&coef)?;
    Ok(())
}

/// Applies `policies` to the weights after 1-based step `step`.
pub fn apply_weight_policies(policies: &[WeightPolicy], weights: &[Tensor], step: u64) -> anyhow::Result<()> {
    for policy in policies {
        match policy {
            WeightPolicy::Clip { limit } => {
                for w in weights {
                    let _ = w.shallow_clone().f_clamp_(-*limit, *limit)?;
                }
            }
            WeightPolicy::MaxNorm { max, dim } => {
                for w in weights.iter().filter(|w| w.dim() >= 2 && (*dim as usize) < w.dim()) {
                    let _ = w.shallow_clone().f_renorm_(2.0, *dim, *max)?;
                }
            }
            WeightPolicy::Scale { factor, every } => {
                if step.is_multiple_of(*every) {
                    for w in weights {
                        let _ = w.shallow_clone().f_mul_scalar_(*factor)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Saving and restoring what the adaptive policies carry between steps, so a resumed run
/// clips exactly as the uninterrupted one would.
impl GradPolicies {
    /// Their state as named tensors, `policy.<index>.<kind>.<field>` (counters as one
    /// int64); nothing for the stateless policies.
    pub fn state(&self) -> anyhow::Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            match stage {
                Stage::Autoclip { history, seen, .. } => {
                    out.push((format!("policy.{i}.autoclip.history"), history.shallow_clone()));
                    out.push((format!("policy.{i}.autoclip.seen"), counter(*seen)?));
                }
                Stage::Zclip { stats, .. } => stats.save(&format!("policy.{i}.zclip"), &mut out)?,
                Stage::SkipSpike { stats, streak, .. } => {
                    stats.save(&format!("policy.{i}.skip_spike"), &mut out)?;
                    out.push((format!("policy.{i}.skip_spike.streak"), streak.shallow_clone()));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Restores what [`GradPolicies::state`] saved. A policy with nothing saved (a file
    /// from before the policies' state was kept) starts afresh, as resumes used to.
    pub fn restore(&mut self, saved: &[(String, Tensor)]) -> anyhow::Result<()> {
        let find = |name: String| saved.iter().find(|(n, _)| *n == name).map(|(_, t)| t);
        for (i, stage) in self.stages.iter_mut().enumerate() {
            match stage {
                Stage::Autoclip { history, seen, .. } => {
                    let prefix = format!("policy.{i}.autoclip");
                    if let (Some(h), Some(s)) = (find(format!("{prefix}.history")), find(format!("{prefix}.seen"))) {
                        anyhow::ensure!(h.size() == history.size(), "{prefix}: the saved history has another length");
                        history.f_copy_(h)?;
                        *seen = read_counter(s)?;
                    }
                }
                Stage::Zclip { stats, .. } => stats.restore(&format!("policy.{i}.zclip"), &find)?,
                Stage::SkipSpike { stats, streak, .. } => {
                    stats.restore(&format!("policy.{i}.skip_spike"), &find)?;
                    if let Some(saved) = find(format!("policy.{i}.skip_spike.streak")) {
                        streak.f_copy_(saved)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl NormStats {
    fn save(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) -> anyhow::Result<()> {
        out.push((format!("{prefix}.buffer"), self.buffer.shallow_clone()));
        out.push((format!("{prefix}.seen"), counter(self.seen)?));
        out.push((format!("{prefix}.mean"), self.mean.shallow_clone()));
        out.push((format!("{prefix}.var"), self.var.shallow_clone()));
        Ok(())
    }

    fn restore<'t>(&mut self, prefix: &str, find: &impl Fn(String) -> Option<&'t Tensor>) -> anyhow::Result<()> {
        let field = |name: &str| find(format!("{prefix}.{name}"));
        let (Some(buffer), Some(seen), Some(mean), Some(var)) =
            (field("buffer"), field("seen"), field("mean"), field("var"))
        else {
            return Ok(());
        };
        anyhow::ensure!(buffer.size() == self.buffer.size(), "{prefix}: the saved warm-up has another length");
        let device = self.buffer.device();
        self.buffer.f_copy_(buffer)?;
        self.seen = read_counter(seen)?;
        self.mean = mean.f_to_kind(Kind::Float)?.f_to_device(device)?.f_reshape([])?;
        self.var = var.f_to_kind(Kind::Float)?.f_to_device(device)?.f_reshape([])?;
        Ok(())
    }
}

fn counter(value: u64) -> anyhow::Result<Tensor> {
    Ok(Tensor::from_slice(&[i64::try_from(value)?]))
}

fn read_counter(tensor: &Tensor) -> anyhow::Result<u64> {
    Ok(u64::try_from(tensor.f_to_kind(Kind::Int64)?.f_int64_value(&[0])?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{AutoclipPolicy, SkipSpikePolicy, ZclipPolicy};

    fn cpu(policies: &[GradPolicy]) -> GradPolicies {
        GradPolicies::new(policies, Device::Cpu).expect("policies")
    }

    #[test]
    fn clip_norm_matches_the_pytorch_formula() {
        let grads = [Tensor::from_slice(&[3.0f32, 0.0]), Tensor::from_slice(&[0.0f32, 4.0])];
        let total = layer_norms(&grads).expect("norms").norm();
        assert!((total.double_value(&[]) - 5.0).abs() < 1e-6);
        let mut policy = cpu(&[GradPolicy::ClipNorm { max_norm: 1.0, norm_type: NormType::Two }]);
        let after = policy.apply(&grads, &grads, &total).expect("clip");
        assert!(after.skip.is_none());
        let coef = 1.0 / (5.0 + CLIP_EPS);
        assert!((after.norm.double_value(&[]) - 5.0 * coef).abs() < 1e-6);
        assert!((grads[0].double_value(&[0]) - 3.0 * coef).abs() < 1e-6);
        // Below the threshold nothing changes.
        let mut loose = cpu(&[GradPolicy::ClipNorm { max_norm: 10.0, norm_type: NormType::Two }]);
        let again = loose.apply(&grads, &grads, &after.norm).expect("clip");
        assert!((again.norm.double_value(&[]) - after.norm.double_value(&[])).abs() < 1e-9);
    }

    /// Clipping the flat buffer the layers are views of leaves them as clipping each
    /// layer does, bit for bit; a buffer that does not hold exactly the layers is refused.
    #[test]
    fn clipping_the_flat_buffer_equals_clipping_each_layer() {
        let flat = Tensor::from_slice(&[3.0f32, 0.5, -7.0, 0.0, 4.0, 1e-3, 2.5]);
        let layers = |t: &Tensor| vec![t.narrow(0, 0, 3), t.narrow(0, 3, 4)];
        let per_layer = flat.copy();
        let total = per_layer.norm();
        let clip = [GradPolicy::ClipNorm { max_norm: 1.0, norm_type: NormType::Two }];
        let by_layer = cpu(&clip).apply(&layers(&per_layer), &layers(&per_layer), &total).expect("clip");
        let at_once = cpu(&clip).apply_flat(&flat, &layers(&flat), &layers(&flat), &total).expect("clip");
        assert!(flat.equal(&per_layer), "{flat} vs {per_layer}");
        assert!(at_once.norm.equal(&by_layer.norm));
        assert!(flat.double_value(&[0]) < 3.0, "it clipped");
        let short = flat.narrow(0, 0, 5);
        assert!(cpu(&clip).apply_flat(&short, &layers(&flat), &layers(&flat), &total).is_err());
    }

    #[test]
    fn skip_spike_skips_only_outliers_after_warmup() {
        let mut policy = cpu(&[GradPolicy::SkipSpike(SkipSpikePolicy {
            z_threshold: 3.0,
            alpha: 0.9,
            warmup: 4,
            max_consecutive: 10,
        })]);
        let g = [Tensor::from_slice(&[1.0f32])];
        let mut skipped = Vec::new();
        for norm in [1.0f32, 1.1, 0.9, 1.0, 1.05, 50.0, 1.0] {
            let outcome = policy.apply(&g, &g, &Tensor::from(norm)).expect("apply");
            skipped.push(outcome.skip.is_some_and(|s| s.int64_value(&[]) == 1));
        }
        assert_eq!(skipped, [false, false, false, false, false, true, false]);
    }

    #[test]
    fn weight_policies_clamp_renorm_and_scale() {
        let w = [Tensor::from_slice(&[2.0f32, -3.0, 0.5])];
        apply_weight_policies(&[WeightPolicy::Clip { limit: 1.0 }], &w, 1).expect("clip");
        assert_eq!(Vec::<f32>::try_from(&w[0]).expect("vec"), vec![1.0, -1.0, 0.5]);
        let scale = [WeightPolicy::Scale { factor: 0.5, every: 2 }];
        apply_weight_policies(&scale, &w, 1).expect("scale");
        assert_eq!(Vec::<f32>::try_from(&w[0]).expect("vec"), vec![1.0, -1.0, 0.5]);
        apply_weight_policies(&scale, &w, 2).expect("scale");
        assert_eq!(Vec::<f32>::try_from(&w[0]).expect("vec"), vec![0.5, -0.5, 0.25]);
        let m = [Tensor::from_slice(&[3.0f32, 4.0, 0.3, 0.4]).view([2, 2])];
        apply_weight_policies(&[WeightPolicy::MaxNorm { max: 1.0, dim: 0 }], &m, 1).expect("max_norm");
        let rows = m[0].norm_scalaropt_dim(2.0, [1].as_slice(), false);
        assert!(rows.allclose(&Tensor::from_slice(&[1.0f32, 0.5]), 1e-5, 1e-5, false));
    }

    #[test]
    fn adaptive_policy_state_round_trips() {
        let specs = [
            GradPolicy::Autoclip(AutoclipPolicy { percentile: 50.0, history: 8 }),
            GradPolicy::Zclip(ZclipPolicy { alpha: 0.9, z_threshold: 2.5, warmup: 3, max_grad_norm: None }),
            GradPolicy::SkipSpike(SkipSpikePolicy { z_threshold: 3.0, alpha: 0.9, warmup: 3, max_consecutive: 2 }),
        ];
        let g = [Tensor::from_slice(&[1.0f32])];
        let norms = [1.0f32, 1.2, 0.8, 1.1, 0.9, 1.3, 5.0, 1.0, 0.7, 1.05];
        let run = |policy: &mut GradPolicies, norms: &[f32]| -> Vec<f64> {
            norms
                .iter()
                .map(|&n| {
                    let g = [g[0].copy()];
                    policy.apply(&g, &g, &Tensor::from(n)).expect("apply").norm.double_value(&[])
                })
                .collect()
        };
        let mut whole = cpu(&specs);
        let expected = run(&mut whole, &norms);
        let mut first = cpu(&specs);
        let _ = run(&mut first, &norms[..5]);
        let state = first.state().expect("state");
        assert_eq!(state.len(), 2 + 4 + 5);
        let mut resumed = cpu(&specs);
        resumed.restore(&state).expect("restore");
        assert_eq!(run(&mut resumed, &norms[5..]), expected[5..]);
        // Without the state, the policies start afresh and clip differently.
        assert_ne!(run(&mut cpu(&specs), &norms[5..]), expected[5..]);
    }
}
