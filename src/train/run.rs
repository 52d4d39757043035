//! The training loop: one job, start to finish, on the calling thread.

use std::path::PathBuf;

use anyhow::Context;
use tch::{Device, Kind, Tensor, nn};

use super::policy::GradPolicies;
use super::spec::{JobSpec, OnNonfinite, parse_device};
use super::task::Task;
use super::{Outcome, StepReport, StopFlag, StopReason, TrainEvent, model, optim, policy};

/// What a run needs besides its spec, resolved by the caller.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The text of the `char_lm` corpus (empty for generated tasks).
    pub corpus: String,
    /// Where the latest weights are written as safetensors (at the end, and when stopped).
    pub checkpoint: Option<PathBuf>,
}

/// Trains `spec` to the end, or until `stop` is raised, reporting through `emit`.
/// `emit` must not block: the loop never waits for its consumers.
pub fn train(
    spec: &JobSpec,
    ctx: &RunContext,
    stop: &StopFlag,
    emit: &mut dyn FnMut(TrainEvent),
) -> anyhow::Result<Outcome> {
    let device = model::resolve_device(parse_device(&spec.device).context("invalid device")?)?;
    let mut task = Task::new(&spec.task, &ctx.corpus, spec.seed, device)?;
    let vs = nn::VarStore::new(device);
    let (model, params) = model::build(&spec.model, &vs, task.io(), spec.seed)?;
    let mut opt = optim::build(&spec.optimizer, &vs, spec.steps)?;
    let mut grad_policies = GradPolicies::new(&spec.policy.grad, device)?;
    emit(TrainEvent::Started { device: model::device_name(device), layers: params.layers() });

    let weights: Vec<Tensor> = params.tensors().map(Tensor::shallow_clone).collect();
    for step in 1..=spec.steps {
        if let Some(reason) = stop.requested() {
            save_checkpoint(&vs, ctx)?;
            return Ok(match reason {
                StopReason::Cancel => Outcome::Cancelled,
                StopReason::Shutdown => Outcome::Interrupted,
            });
        }
        let lr = optim::learning_rate(&spec.optimizer, step, spec.steps);
        opt.set_lr(lr);
        let batch = task.train_batch(spec.batch_size)?;
        let loss = task.loss(&model.forward(&batch.xs, true)?, &batch.ys)?;
        opt.zero_grad();
        loss.f_backward().context("backward failed")?;

        let mut report = tch::no_grad(|| measure_and_clip(&mut grad_policies, &weights, &loss, step, lr))?;
        let finite = report.loss.is_finite() && report.grad_norm.is_finite();
        if finite && !report.skipped {
            opt.step();
            tch::no_grad(|| policy::apply_weight_policies(&spec.policy.weight, &weights, step))?;
        } else {
            report.skipped = true;
        }
        emit(TrainEvent::Step(report));
        if task.eval_due(step, spec.steps)
            && let Some(eval) = task.evaluate(model.as_ref(), step)?
        {
            emit(TrainEvent::Eval(eval));
        }
        if !finite && spec.policy.on_nonfinite == OnNonfinite::Stop {
            save_checkpoint(&vs, ctx)?;
            return Ok(Outcome::Diverged(format!("non-finite loss or gradient at step {step}")));
        }
    }
    save_checkpoint(&vs, ctx)?;
    Ok(Outcome::Succeeded)
}

/// Measures the gradients, applies the grad policies, and copies every number the step
/// reports to the host in one transfer.
fn measure_and_clip(
    grad_policies: &mut GradPolicies,
    weights: &[Tensor],
    loss: &Tensor,
    step: u64,
    lr: f64,
) -> anyhow::Result<StepReport> {
    let grads: Vec<Tensor> = weights
        .iter()
        .map(|w| {
            let g = w.grad();
            if g.defined() { Ok(g) } else { w.f_zeros_like() }
        })
        .collect::<Result<_, _>>()?;
    let norms = policy::layer_norms(&grads)?;
    let total = norms.f_norm()?;
    let outcome = grad_policies.apply(&grads, weights, &total)?;
    let skip = match &outcome.skip {
        Some(skip) => skip.f_to_kind(Kind::Float)?,
        None => total.f_zeros_like()?,
    };
    let packed = Tensor::f_cat(
        &[
            loss.f_detach()?.f_to_kind(Kind::Float)?.f_reshape([1])?,
            total.f_reshape([1])?,
            outcome.norm.f_reshape([1])?,
            skip.f_reshape([1])?,
            norms,
        ],
        0,
    )?
    .f_to_device(Device::Cpu)?;
    let values: Vec<f32> = Vec::try_from(&packed)?;
    let (grad_norm, grad_norm_clipped) = (f64::from(values[1]), f64::from(values[2]));
    Ok(StepReport {
        step,
        loss: f64::from(values[0]),
        grad_norm,
        grad_norm_clipped,
        clip_coef: if grad_norm > 0.0 { grad_norm_clipped / grad_norm } else { 1.0 },
        lr,
        skipped: values[3] != 0.0,
        layer_grad_norm: values[4..].iter().map(|&v| f64::from(v)).collect(),
    })
}

fn save_checkpoint(vs: &nn::VarStore, ctx: &RunContext) -> anyhow::Result<()> {
    let Some(path) = &ctx.checkpoint else { return Ok(()) };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    // Write beside the old file and rename, so a reader never sees half a checkpoint.
    let partial = path.with_extension("partial.safetensors");
    vs.save(&partial).with_context(|| format!("failed to write checkpoint {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("failed to move checkpoint to {}", path.display()))?;
    Ok(())
}
