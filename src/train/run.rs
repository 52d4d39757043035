//! The training loop: one job, start to finish, on the calling thread. Each step is
//! [`step::step`]; around it the loop builds the model, resumes, validates, stops and
//! writes checkpoints.

use std::path::PathBuf;
use std::rc::Rc;

use anyhow::Context;
use tch::{Device, Tensor, nn};

use super::checkpoint;
use super::model::torchscript::TorchScript;
use super::optim::FlatOptimizer;
use super::policy::GradPolicies;
use super::precision::Mixed;
use super::rollback::{Detector, Snapshot, Verdict};
use super::spectral::Spectral;
use super::stats::FlatParams;
use super::step::timing::{Clock, Phase};
use super::step::{self, Forward, Monitoring, Trainer};
use super::task::Task;
use super::{Event, LayerInfo, Outcome, StopFlag, StopReason, TrainEvent, model, optim};
use crate::spec::{JobSpec, ModelKind, OnNonfinite, OnSpike, TaskSpec, ValidSpec, chosen_layers, parse_device};
use crate::vocab::EventKind;

/// What a run needs besides its spec, resolved by the caller.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    /// The text of the `char_lm` corpus (empty for generated tasks).
    pub corpus: String,
    /// Where the latest weights are written as safetensors (every `checkpoint_every`
    /// steps, at the end, and when stopped), with a resume file beside it.
    pub checkpoint: Option<PathBuf>,
    /// Continue after this step, from the resume file beside `checkpoint` written at it.
    pub resume: Option<u64>,
    /// The last step the store has committed, as the service tells it: which older resume
    /// file a checkpoint keeps depends on it. `None` when no store records the run.
    pub committed: Option<checkpoint::Committed>,
    /// The TorchScript file of a `torchscript` model.
    pub model: Option<PathBuf>,
    /// The safetensors file of a `dataset` task.
    pub dataset: Option<PathBuf>,
    /// Test hook, never set by the service: these steps' losses (and so their gradients)
    /// are multiplied by [`INJECTED_SPIKE`], spikes at known steps.
    pub spike_at: Vec<u64>,
    /// Test hook, never set by the service: after step `.0`, `.1` batches are drawn and
    /// dropped, as a rollback's `skip_batches` drops them.
    pub drop_batches_after: Option<(u64, u64)>,
}

/// The factor of [`RunContext::spike_at`].
pub const INJECTED_SPIKE: f64 = 1000.0;

/// Trains `spec` to the end, or until `stop` is raised, reporting through `emit`.
/// `emit` must not block: the loop never waits for its consumers.
pub fn train(
    spec: &ValidSpec,
    ctx: &RunContext,
    stop: &StopFlag,
    emit: &mut dyn FnMut(TrainEvent),
) -> anyhow::Result<Outcome> {
    let spec: &JobSpec = spec;
    let device = model::resolve_device(parse_device(&spec.device).context("invalid device")?)?;
    let mut task = match &spec.task {
        TaskSpec::Dataset(t) => {
            Task::dataset(t, ctx.dataset.as_deref().context("no data set file")?, spec.seed, device)?
        }
        other => Task::new(other, &ctx.corpus, spec.seed, device)?,
    };
    let vs = nn::VarStore::new(device);
    let (model, params, user): (Box<dyn model::Model>, _, _) = if spec.model.kind == ModelKind::Torchscript {
        // A resumed module comes back with the buffers it had at that step.
        let snapshot = match (&ctx.checkpoint, ctx.resume) {
            (Some(path), Some(step)) => checkpoint::module_snapshot(path, step),
            _ => None,
        };
        let file = snapshot.or_else(|| ctx.model.clone()).context("no module file")?;
        let (module, params) = model::load_torchscript(&file, &vs, spec.seed)?;
        let module = Rc::new(module);
        (Box::new(module.clone()), params, Some(module))
    } else {
        let (model, params) = model::build(&spec.model, &vs, task.io(), spec.seed)?;
        (model, params, None)
    };
    let user = user.as_deref();
    let tensors: Vec<Tensor> = params.tensors().map(Tensor::shallow_clone).collect();
    let mut flat = FlatParams::new(&tensors, device)?;
    let layers = params.layers();
    let mut optimizer = FlatOptimizer::new(&spec.optimizer).with_groups(&layers);
    let named: Vec<(String, Tensor)> =
        layers.iter().map(|l| l.name.clone()).zip(flat.params().iter().map(Tensor::shallow_clone)).collect();
    let buffers: Vec<(String, Tensor)> =
        params.buffers().iter().map(|(n, t)| (format!("buffer.{n}"), t.shallow_clone())).collect();
    let mut grad_policies = GradPolicies::new(&spec.policy.grad, device)?.with_head(params.head());
    let mut mixed = Mixed::new(spec.precision, &spec.loss_scale, device.is_cuda());
    let first = match (&ctx.checkpoint, ctx.resume) {
        (Some(path), Some(step)) => {
            let mut state =
                State { named: &named, buffers: &buffers, optimizer: &mut optimizer, mixed: &mut mixed, device };
            resume(path, step, &mut state, &mut grad_policies, &mut task, spec)? + 1
        }
        _ => 1,
    };
    if let Some(path) = &ctx.checkpoint {
        // What an earlier run wrote past this run's start is no part of its history; the
        // store holds this run's history up to its start.
        checkpoint::discard_after(path, first - 1)?;
        if let Some(committed) = &ctx.committed {
            committed.advance(first - 1);
        }
    }
    // `monitor.layers`: the layers that get statistics, numbered in their own order from
    // here on (the API, the stream, the metrics and the store see just these).
    let all_names: Vec<String> = layers.iter().map(|l| l.name.clone()).collect();
    let chosen = chosen_layers(&spec.monitor.layers, &all_names);
    anyhow::ensure!(!chosen.is_empty(), "monitor.layers matches none of the model's layers");
    flat.choose(chosen.clone())?;
    let measured: Vec<LayerInfo> =
        chosen.iter().enumerate().map(|(index, &i)| LayerInfo { index, ..layers[i].clone() }).collect();
    let names = measured.iter().map(|l| l.name.clone()).collect();
    let redundant: Vec<bool> = chosen.iter().map(|&i| params.redundant().get(i).copied().unwrap_or(false)).collect();
    let spectral = if spec.monitor.spectral_every > 0 {
        Spectral::new(&measured, |i| trainer_param(&flat, chosen[i]))?
    } else {
        None
    };
    let mut trainer = Trainer::new(flat, optimizer, grad_policies, &spec.policy, &spec.monitor, names, &redundant)
        .with_spectral(spectral)
        .with_precision(mixed);
    emit(TrainEvent::Started { device: model::device_name(device), layers: measured });
    // `on_spike: rollback`: the detector, the last good state (from the start on) and the
    // rollbacks so far.
    let rollback = &spec.policy.rollback;
    let mut spikes = match spec.policy.on_spike {
        OnSpike::Rollback => Some((Detector::new(rollback), Snapshot::take(first - 1, &trainer, &buffers)?, 0)),
        OnSpike::Ignore => None,
    };

    for step in first..=spec.steps {
        if let Some(reason) = stop.requested() {
            trainer.finish(emit)?;
            save_checkpoint(ctx, user, &named, &buffers, &trainer, step - 1)?;
            return Ok(match reason {
                StopReason::Cancel => Outcome::Cancelled,
                StopReason::Shutdown => Outcome::Interrupted,
            });
        }
        let lr = optim::learning_rate(&spec.optimizer, step, spec.steps);
        let monitoring = Monitoring::at(&spec.monitor, step);
        let forward = || {
            let batch = task.train_batch(spec.batch_size)?;
            model.rng().start_step(step);
            let trace = model::Trace { input: monitoring.time, blocks: monitoring.stats };
            let traced = model.trace(&batch.xs, true, trace)?;
            let mut loss = task.loss(&traced.out, &batch.ys)?;
            if ctx.spike_at.contains(&step) {
                loss = loss.f_mul_scalar(INJECTED_SPIKE)?;
            }
            Ok(Forward { loss, input: traced.input, blocks: traced.blocks })
        };
        let done = step::step(&mut trainer, step, lr, monitoring, forward, emit)?;
        let mut clock = Clock::start();
        if let Some((after, count)) = ctx.drop_batches_after
            && after == step
        {
            for _ in 0..count {
                task.train_batch(spec.batch_size)?;
            }
        }
        if let Some((detector, snapshot, count)) = spikes.as_mut() {
            match detector.observe(&done) {
                Verdict::Good => {
                    if step.is_multiple_of(rollback.rollback_every) {
                        *snapshot = Snapshot::take(step, &trainer, &buffers)?;
                    }
                }
                Verdict::Spike(why) => {
                    // This step's report goes out first, then what was done about it.
                    trainer.finish(emit)?;
                    if *count >= rollback.max_rollbacks {
                        save_checkpoint(ctx, user, &named, &buffers, &trainer, step)?;
                        return Ok(Outcome::Diverged(format!(
                            "{why} at step {step}, after {count} rollbacks (policy.rollback.max_rollbacks)"
                        )));
                    }
                    snapshot.restore(&mut trainer, &buffers)?;
                    for _ in 0..rollback.skip_batches {
                        task.train_batch(spec.batch_size)?;
                    }
                    *count += 1;
                    let lost = step - snapshot.step;
                    emit(TrainEvent::Event(Event {
                        step,
                        kind: EventKind::Rollback,
                        layer: None,
                        value: Some(lost as f64),
                        message: format!(
                            "{why}: rolled back to the state after step {}, {lost} steps lost; skipping the next {} \
                             batches (rollback {count} of at most {})",
                            snapshot.step, rollback.skip_batches, rollback.max_rollbacks
                        ),
                    }));
                    clock.lap(Phase::Between);
                    continue;
                }
            }
        }
        if task.eval_due(step, spec.steps)
            && let Some(eval) = task.evaluate(model.as_ref(), step)?
        {
            emit(TrainEvent::Eval(eval));
        }
        if !done.finite && spec.policy.on_nonfinite == OnNonfinite::Stop {
            trainer.finish(emit)?;
            save_checkpoint(ctx, user, &named, &buffers, &trainer, step)?;
            return Ok(Outcome::Diverged(format!("non-finite loss or gradient at step {step}")));
        }
        if spec.checkpoint_every > 0 && step.is_multiple_of(spec.checkpoint_every) && step < spec.steps {
            save_checkpoint(ctx, user, &named, &buffers, &trainer, step)?;
        }
        clock.lap(Phase::Between);
    }
    trainer.finish(emit)?;
    save_checkpoint(ctx, user, &named, &buffers, &trainer, spec.steps)?;
    Ok(Outcome::Succeeded)
}

/// The loss scaler's state in a resume file.
const LOSS_SCALER_STATE: &str = "loss_scaler";

/// Parameter `i` of `flat` (its data a view into the flat weights).
fn trainer_param(flat: &FlatParams, i: usize) -> Tensor {
    flat.params()[i].shallow_clone()
}

/// What a resume restores in place besides the grad policies.
struct State<'a> {
    /// The parameters, by layer name.
    named: &'a [(String, Tensor)],
    /// Batch norm's running statistics, by their names in the resume file.
    buffers: &'a [(String, Tensor)],
    optimizer: &'a mut FlatOptimizer,
    /// The loss scaler's scale and growth count.
    mixed: &'a mut Mixed,
    device: Device,
}

/// Loads the resume file into the parameters, the buffers, the optimizer and the grad
/// policies, and moves the task's batch stream past the steps already done, so the run
/// continues as if never stopped. Returns the step it continues after.
fn resume(
    path: &std::path::Path,
    step: u64,
    state: &mut State<'_>,
    grad_policies: &mut GradPolicies,
    task: &mut Task,
    spec: &JobSpec,
) -> anyhow::Result<u64> {
    let saved = checkpoint::load(path, step)?;
    tch::no_grad(|| -> anyhow::Result<()> {
        for (name, param) in state.named {
            let (_, value) = saved
                .weights
                .iter()
                .find(|(n, _)| n == name)
                .with_context(|| format!("the checkpoint has no {name}"))?;
            param.shallow_clone().f_copy_(value)?;
        }
        // A file from before buffers were saved leaves them as built, as resumes used to.
        for (name, buffer) in state.buffers {
            if let Some((_, value)) = saved.state.iter().find(|(n, _)| n == name) {
                buffer.shallow_clone().f_copy_(value)?;
            }
        }
        if let Some(scaler) = state.mixed.scaler_mut()
            && let Some((_, value)) = saved.state.iter().find(|(n, _)| n == LOSS_SCALER_STATE)
        {
            scaler.restore(value)?;
        }
        grad_policies.restore(&saved.state)
    })?;
    state.optimizer.restore(saved.optimizer, saved.optim_steps, state.device)?;
    for _ in 0..saved.job_step {
        task.train_batch(spec.batch_size)?;
    }
    Ok(saved.job_step)
}

fn save_checkpoint(
    ctx: &RunContext,
    user: Option<&TorchScript>,
    named: &[(String, Tensor)],
    buffers: &[(String, Tensor)],
    trainer: &Trainer,
    step: u64,
) -> anyhow::Result<()> {
    let Some(path) = &ctx.checkpoint else { return Ok(()) };
    let mut state: Vec<(String, Tensor)> = buffers.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    state.extend(trainer.grad_policies().state()?);
    if let Some(scaler) = trainer.precision().scaler() {
        state.push((LOSS_SCALER_STATE.to_owned(), scaler.state()));
    }
    let write_module = user.map(|module| move |file: &std::path::Path| module.save(file));
    let module = write_module.as_ref().map(|write| write as &checkpoint::WriteModule<'_>);
    let extra = checkpoint::Extra { state: &state, module };
    checkpoint::save(path, named, trainer.optimizer(), &extra, step, ctx.committed.as_ref())
}
