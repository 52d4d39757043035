//! The training loop: one job, start to finish, on the calling thread.
//!
//! Per step: forward, backward into the flat gradient buffer, per-layer statistics (on
//! recorded steps), the grad policies, then one device→host copy of everything the step
//! reports. A step's weight statistics exist only after its update, so they travel in
//! the next step's copy and each report is emitted one step late (the last one after a
//! final copy).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use tch::{Device, Kind, Tensor, nn};

use super::checkpoint;
use super::diagnose::{Diagnoser, Diagnosis};
use super::optim::FlatOptimizer;
use super::policy::GradPolicies;
use super::spec::{GradPolicy, JobSpec, OnNonfinite, parse_device};
use super::stats::FlatParams;
use super::task::Task;
use super::transfer::{DeviceParts, DeviceScalars, Scalars};
use super::{Event, Outcome, StepReport, StopFlag, StopReason, TrainEvent, model, optim, policy};
use crate::vocab::EventKind;

/// What a run needs besides its spec, resolved by the caller.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The text of the `char_lm` corpus (empty for generated tasks).
    pub corpus: String,
    /// Where the latest weights are written as safetensors (every `checkpoint_every`
    /// steps, at the end, and when stopped), with a resume file beside it.
    pub checkpoint: Option<PathBuf>,
    /// Continue after this step, from the resume file beside `checkpoint` written at it.
    pub resume: Option<u64>,
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
    let tensors: Vec<Tensor> = params.tensors().map(Tensor::shallow_clone).collect();
    let mut flat = FlatParams::new(&tensors, device)?;
    let layers = params.layers();
    let mut optimizer = FlatOptimizer::new(&spec.optimizer).with_groups(&layers);
    let named: Vec<(String, Tensor)> =
        layers.iter().map(|l| l.name.clone()).zip(flat.params().iter().map(Tensor::shallow_clone)).collect();
    let buffers: Vec<(String, Tensor)> =
        params.buffers().iter().map(|(n, t)| (format!("buffer.{n}"), t.shallow_clone())).collect();
    let mut grad_policies = GradPolicies::new(&spec.policy.grad, device)?.with_head(params.head());
    let first = match (&ctx.checkpoint, ctx.resume) {
        (Some(path), Some(step)) => {
            let mut state = State { named: &named, buffers: &buffers, optimizer: &mut optimizer, device };
            resume(path, step, &mut state, &mut grad_policies, &mut task, spec)? + 1
        }
        _ => 1,
    };
    let names = layers.iter().map(|l| l.name.clone()).collect();
    let mut reporter = Reporter::new(spec, grad_policies, names, params.redundant());
    emit(TrainEvent::Started { device: model::device_name(device), layers });

    for step in first..=spec.steps {
        if let Some(reason) = stop.requested() {
            reporter.finish(emit)?;
            save_checkpoint(ctx, &named, &buffers, &optimizer, &reporter.grad_policies, step - 1)?;
            return Ok(match reason {
                StopReason::Cancel => Outcome::Cancelled,
                StopReason::Shutdown => Outcome::Interrupted,
            });
        }
        let started = Instant::now();
        let lr = optim::learning_rate(&spec.optimizer, step, spec.steps);
        let batch = task.train_batch(spec.batch_size)?;
        model.rng().start_step(step);
        let loss = task.loss(&model.forward(&batch.xs, true)?, &batch.ys)?;
        flat.zero_grads()?;
        loss.f_backward().context("backward failed")?;
        flat.adopt_grads()?;

        let record = spec.monitor.records(step);
        let report = tch::no_grad(|| reporter.measure(&mut flat, &loss, step, lr, record, emit))?;
        let finite = report.loss.is_finite() && report.grad_norm.is_finite();
        let update = finite && !report.skipped;
        tch::no_grad(|| -> anyhow::Result<()> {
            if record {
                flat.snapshot_weights()?;
            }
            if update {
                optimizer.step(flat.weights(), flat.grads(), lr)?;
                policy::apply_weight_policies(&spec.policy.weight, flat.params(), step)?;
            }
            Ok(())
        })?;
        let weight_stats = if record { Some(tch::no_grad(|| flat.weight_stats())?) } else { None };
        reporter
            .hold(StepReport { skipped: !update, seconds: started.elapsed().as_secs_f64(), ..report }, weight_stats);
        if task.eval_due(step, spec.steps)
            && let Some(eval) = task.evaluate(model.as_ref(), step)?
        {
            emit(TrainEvent::Eval(eval));
        }
        if !finite && spec.policy.on_nonfinite == OnNonfinite::Stop {
            reporter.finish(emit)?;
            save_checkpoint(ctx, &named, &buffers, &optimizer, &reporter.grad_policies, step)?;
            return Ok(Outcome::Diverged(format!("non-finite loss or gradient at step {step}")));
        }
        if spec.checkpoint_every > 0 && step.is_multiple_of(spec.checkpoint_every) && step < spec.steps {
            save_checkpoint(ctx, &named, &buffers, &optimizer, &reporter.grad_policies, step)?;
        }
    }
    reporter.finish(emit)?;
    save_checkpoint(ctx, &named, &buffers, &optimizer, &reporter.grad_policies, spec.steps)?;
    Ok(Outcome::Succeeded)
}

/// What a resume restores in place besides the grad policies.
struct State<'a> {
    /// The parameters, by layer name.
    named: &'a [(String, Tensor)],
    /// Batch norm's running statistics, by their names in the resume file.
    buffers: &'a [(String, Tensor)],
    optimizer: &'a mut FlatOptimizer,
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
        grad_policies.restore(&saved.state)
    })?;
    state.optimizer.restore(saved.optimizer, saved.optim_steps, state.device)?;
    for _ in 0..saved.job_step {
        task.train_batch(spec.batch_size)?;
    }
    Ok(saved.job_step)
}

/// Turns device tensors into reports: one host copy per step, weight statistics carried
/// over to the next copy, diagnosis on the way out.
struct Reporter<'a> {
    spec: &'a JobSpec,
    /// The grad policies and the state the adaptive ones carry between steps.
    grad_policies: GradPolicies,
    layers: usize,
    /// The previous step's report, waiting for its weight statistics.
    held: Option<(StepReport, Option<Tensor>)>,
    /// Policy events of the held step, emitted after its report.
    held_events: Vec<Event>,
    /// Policy events of the step being measured, held with it.
    pending: Vec<Event>,
    diagnoser: Diagnoser,
    diagnosis: Diagnosis,
}

impl<'a> Reporter<'a> {
    fn new(spec: &'a JobSpec, grad_policies: GradPolicies, layer_names: Vec<String>, redundant: &[bool]) -> Self {
        Self {
            spec,
            grad_policies,
            layers: layer_names.len(),
            held: None,
            held_events: Vec::new(),
            pending: Vec::new(),
            diagnoser: Diagnoser::new(&spec.monitor, layer_names).with_redundant(redundant),
            diagnosis: Diagnosis::default(),
        }
    }

    /// Measures the gradients, applies the grad policies, and copies this step's numbers
    /// (and the held step's weight statistics) to the host in one transfer. Emits the held
    /// report.
    fn measure(
        &mut self,
        flat: &mut FlatParams,
        loss: &Tensor,
        step: u64,
        lr: f64,
        record: bool,
        emit: &mut dyn FnMut(TrainEvent),
    ) -> anyhow::Result<StepReport> {
        // The policies' input is `grad_norm()` on every step: `grad_stats` returns that same
        // value, bit for bit, so recording statistics cannot change what the policies see.
        let (grad_stats, total) = if record {
            let (stats, total) = flat.grad_stats()?;
            (Some(stats), total)
        } else {
            (None, flat.grad_norm()?)
        };
        let hist = if record && self.spec.monitor.histogram { Some(flat.grad_histogram()?) } else { None };
        let outcome = self.grad_policies.apply(&flat.layer_grads(), flat.params(), &total)?;
        let flag = |t: &Option<Tensor>| -> anyhow::Result<Tensor> {
            Ok(match t {
                Some(t) => t.f_to_kind(Kind::Float)?,
                None => total.f_zeros_like()?,
            })
        };
        let (skip, forced) = (flag(&outcome.skip)?, flag(&outcome.forced)?);

        let held_weights = self.held.as_ref().and_then(|(_, w)| w.as_ref().map(Tensor::shallow_clone));
        let copy = DeviceParts {
            scalars: Some(DeviceScalars {
                loss,
                grad_norm: &total,
                grad_norm_clipped: &outcome.norm,
                skip: &skip,
                forced: &forced,
            }),
            grad_stats: grad_stats.as_ref(),
            weight_stats: held_weights.as_ref(),
            hist: hist.as_ref(),
        }
        .copy_to_host(self.layers)?;

        let scalars = copy.scalars().context("the copy holds the step's scalars")?;
        let mut layers = copy.grad_stats();
        if let Some(stats) = layers.as_mut() {
            // Counting NaN/Inf costs a pass: only for layers whose norm came back broken.
            let broken: Vec<usize> = (0..self.layers).filter(|&i| !stats.nonfinite[i].is_finite()).collect();
            for (i, count) in broken.iter().zip(flat.nonfinite_counts(&broken)?) {
                stats.nonfinite[*i] = count;
            }
            stats.hist = copy.hist();
        }
        self.release(copy.weight_rows(), emit);
        let Scalars { loss, grad_norm, grad_norm_clipped, skip, forced } = scalars;
        if forced {
            let most = self.spec.policy.grad.iter().find_map(|p| match p {
                GradPolicy::SkipSpike { max_consecutive, .. } => Some(*max_consecutive),
                _ => None,
            });
            self.pending.push(Event {
                step,
                kind: EventKind::SpikeAccepted,
                layer: None,
                value: Some(grad_norm),
                message: format!(
                    "skip_spike: update accepted after {} skipped in a row; the gradient norm {grad_norm:.4} \
                     joins the running statistics as a new level",
                    most.unwrap_or_default()
                ),
            });
        }
        Ok(StepReport {
            step,
            loss,
            grad_norm,
            grad_norm_clipped,
            clip_coef: if grad_norm > 0.0 { grad_norm_clipped / grad_norm } else { 1.0 },
            lr,
            // A policy (skip_spike) dropped the update.
            skipped: skip,
            layers,
            seconds: 0.0,
        })
    }

    /// Holds a finished step until its weight statistics reach the host.
    fn hold(&mut self, report: StepReport, weight_stats: Option<Tensor>) {
        self.held = Some((report, weight_stats));
        self.held_events = std::mem::take(&mut self.pending);
    }

    /// Emits the held report with its weight rows, its events and, when the diagnosis
    /// changed, the new diagnosis.
    fn release(&mut self, weight_rows: Option<&[f64]>, emit: &mut dyn FnMut(TrainEvent)) {
        let Some((mut report, _)) = self.held.take() else { return };
        if let (Some(layers), Some(rows)) = (report.layers.as_mut(), weight_rows) {
            layers.set_weight_rows(rows, self.layers);
        }
        let mut events = std::mem::take(&mut self.held_events);
        events.extend(self.diagnoser.observe(&report));
        emit(TrainEvent::Step(report));
        for event in events {
            emit(TrainEvent::Event(event));
        }
        let diagnosis = self.diagnoser.diagnosis();
        if diagnosis != self.diagnosis {
            self.diagnosis = diagnosis.clone();
            emit(TrainEvent::Diagnosis(diagnosis));
        }
    }

    /// Emits the last held report, with one more host copy for its weight statistics.
    fn finish(&mut self, emit: &mut dyn FnMut(TrainEvent)) -> anyhow::Result<()> {
        let weights = self.held.as_ref().and_then(|(_, w)| w.as_ref().map(Tensor::shallow_clone));
        let copy =
            DeviceParts { weight_stats: weights.as_ref(), ..DeviceParts::default() }.copy_to_host(self.layers)?;
        self.release(copy.weight_rows(), emit);
        Ok(())
    }
}

fn save_checkpoint(
    ctx: &RunContext,
    named: &[(String, Tensor)],
    buffers: &[(String, Tensor)],
    optimizer: &FlatOptimizer,
    grad_policies: &GradPolicies,
    step: u64,
) -> anyhow::Result<()> {
    let Some(path) = &ctx.checkpoint else { return Ok(()) };
    let mut state: Vec<(String, Tensor)> = buffers.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    state.extend(grad_policies.state()?);
    checkpoint::save(path, named, optimizer, &state, step)
}
