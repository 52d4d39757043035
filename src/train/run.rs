//! The training loop: one job, start to finish, on the calling thread.

use std::path::PathBuf;

use anyhow::Context;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tch::{Device, Kind, Reduction, Tensor, nn};

use super::data::CharCorpus;
use super::spec::{JobSpec, OnNonfinite, TaskSpec, parse_device};
use super::{Outcome, StepReport, StopFlag, StopReason, TrainEvent, model, optim, policy};

/// What a run needs besides its spec, resolved by the caller.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The text of the `char_lm` corpus.
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
    let TaskSpec::CharLm { seq_len, .. } = &spec.task;
    let corpus = CharCorpus::new(&ctx.corpus, *seq_len)?;
    let vocab = corpus.vocab_size();
    let vs = nn::VarStore::new(device);
    let (model, params) = model::build(&spec.model, &vs, vocab, spec.seed)?;
    let mut opt = optim::build(&spec.optimizer, &vs, spec.steps)?;
    emit(TrainEvent::Started { device: model::device_name(device), layers: params.layers() });

    let weights: Vec<Tensor> = params.tensors().map(Tensor::shallow_clone).collect();
    let mut rng = StdRng::seed_from_u64(spec.seed);
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
        let (xs, ys) = corpus.train_batch(&mut rng, spec.batch_size, *seq_len, device)?;
        let logits = model.forward(&xs, true)?;
        let loss = logits.f_view([-1, vocab])?.f_cross_entropy_loss::<Tensor>(
            &ys.f_view([-1])?,
            None,
            Reduction::Mean,
            -100,
            0.0,
        )?;
        opt.zero_grad();
        loss.f_backward().context("backward failed")?;

        let mut report = tch::no_grad(|| measure_and_clip(spec, &weights, &loss, step, lr))?;
        let finite = report.loss.is_finite() && report.grad_norm.is_finite();
        if finite {
            opt.step();
            tch::no_grad(|| policy::apply_weight_policies(&spec.policy.weight, &weights, step))?;
        } else {
            report.skipped = true;
        }
        emit(TrainEvent::Step(report));
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
    spec: &JobSpec,
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
    let clipped = policy::apply_grad_policies(&spec.policy.grad, &grads, &total)?;
    let packed = Tensor::f_cat(
        &[
            loss.f_detach()?.f_to_kind(Kind::Float)?.f_reshape([1])?,
            total.f_reshape([1])?,
            clipped.f_reshape([1])?,
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
        skipped: false,
        layer_grad_norm: values[3..].iter().map(|&v| f64::from(v)).collect(),
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
