//! Gradient policies (after backward, before the step) and weight policies (after it).
//!
//! Everything stays on the training device: the clip coefficient is a tensor, so clipping
//! adds no host synchronisation.

use tch::{Kind, Tensor};

use super::spec::{GradPolicy, WeightPolicy};

/// `torch.nn.utils.clip_grad_norm_` adds this to the norm before dividing.
const CLIP_EPS: f64 = 1e-6;

/// Per-layer L2 norms of `grads`, as one 1-D tensor.
pub fn layer_norms(grads: &[Tensor]) -> anyhow::Result<Tensor> {
    let norms: Vec<Tensor> = grads.iter().map(|g| g.f_norm()).collect::<Result<_, _>>()?;
    Ok(Tensor::f_stack(&norms, 0)?.f_to_kind(Kind::Float)?)
}

/// Applies `policies` in order to `grads` in place. `total_norm` is the global L2 norm
/// before any policy; returns the global L2 norm after them.
pub fn apply_grad_policies(policies: &[GradPolicy], grads: &[Tensor], total_norm: &Tensor) -> anyhow::Result<Tensor> {
    let mut norm = total_norm.shallow_clone();
    for policy in policies {
        match policy {
            GradPolicy::ClipNorm { max_norm, .. } => {
                let coef = (norm.f_add_scalar(CLIP_EPS)?.f_reciprocal()? * *max_norm).f_clamp_max(1.0)?;
                for g in grads {
                    let _ = g.shallow_clone().f_mul_(&coef)?;
                }
                norm = norm.f_mul(&coef)?;
            }
            GradPolicy::ClipValue { limit } => {
                for g in grads {
                    let _ = g.shallow_clone().f_clamp_(-*limit, *limit)?;
                }
                norm = layer_norms(grads)?.f_norm()?;
            }
        }
    }
    Ok(norm)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_norm_matches_the_pytorch_formula() {
        let grads = [Tensor::from_slice(&[3.0f32, 0.0]), Tensor::from_slice(&[0.0f32, 4.0])];
        let total = layer_norms(&grads).expect("norms").norm();
        assert!((total.double_value(&[]) - 5.0).abs() < 1e-6);
        let policy = [GradPolicy::ClipNorm { max_norm: 1.0, norm_type: 2.0 }];
        let after = apply_grad_policies(&policy, &grads, &total).expect("clip");
        let coef = 1.0 / (5.0 + CLIP_EPS);
        assert!((after.double_value(&[]) - 5.0 * coef).abs() < 1e-6);
        assert!((grads[0].double_value(&[0]) - 3.0 * coef).abs() < 1e-6);
        // Below the threshold nothing changes.
        let loose = [GradPolicy::ClipNorm { max_norm: 10.0, norm_type: 2.0 }];
        let again = apply_grad_policies(&loose, &grads, &after).expect("clip");
        assert!((again.double_value(&[]) - after.double_value(&[])).abs() < 1e-9);
    }

    #[test]
    fn weight_policies_clamp_and_scale() {
        let w = [Tensor::from_slice(&[2.0f32, -3.0, 0.5])];
        apply_weight_policies(&[WeightPolicy::Clip { limit: 1.0 }], &w, 1).expect("clip");
        assert_eq!(Vec::<f32>::try_from(&w[0]).expect("vec"), vec![1.0, -1.0, 0.5]);
        let scale = [WeightPolicy::Scale { factor: 0.5, every: 2 }];
        apply_weight_policies(&scale, &w, 1).expect("scale");
        assert_eq!(Vec::<f32>::try_from(&w[0]).expect("vec"), vec![1.0, -1.0, 0.5]);
        apply_weight_policies(&scale, &w, 2).expect("scale");
        assert_eq!(Vec::<f32>::try_from(&w[0]).expect("vec"), vec![0.5, -0.5, 0.25]);
    }
}
