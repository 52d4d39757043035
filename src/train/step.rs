//! One training step, the same for a job and for the step benchmark: forward, backward
//! into the flat gradient buffer, per-layer statistics (when recorded), the grad policies,
//! one device→host copy of everything the step reports, the update and the weight
//! policies. A step's weight statistics exist only after its update, so they travel in
//! the next step's copy and each report is emitted one step late ([`Trainer::finish`]
//! emits the last one after a final copy).

use std::time::Instant;

use anyhow::Context;
use tch::{Kind, Tensor};

use super::diagnose::{Diagnoser, Diagnosis};
use super::host;
use super::model::InputProbe;
use super::optim::FlatOptimizer;
use super::policy::{self, GradPolicies};
use super::precision::Mixed;
use super::spectral::Spectral;
use super::stats::FlatParams;
use super::transfer::{DeviceParts, DeviceScalars, Scalars};
use super::{Event, Probes, StepReport, TrainEvent};
use crate::spec::{GradPolicy, MonitorSpec, PolicySpec, WeightPolicy};
use crate::vocab::EventKind;
use timing::{Clock, Phase};

/// What one step measures besides the loss and the global gradient norms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Monitoring {
    /// Every per-layer statistic (a step `monitor.every` records).
    pub stats: bool,
    /// The per-layer gradient histograms too (with `stats`).
    pub histogram: bool,
    /// The spectral radius of the measured matrices (a step `monitor.spectral_every`
    /// records), when the trainer has any.
    pub spectral: bool,
    /// The temporal gradient profile (a step `monitor.time_every` records), when the
    /// forward traces its input.
    pub time: bool,
}

/// What a step's forward gives: the loss, and the embedded input when it was traced (its
/// gradient is the temporal profile's input).
#[derive(Debug)]
pub struct Forward {
    pub loss: Tensor,
    pub input: Option<InputProbe>,
    /// Each block's output, when traced (a recorded step).
    pub blocks: Vec<Tensor>,
}

impl From<Tensor> for Forward {
    fn from(loss: Tensor) -> Self {
        Self { loss, input: None, blocks: Vec::new() }
    }
}

/// Each of `blocks`' mean and root mean square over all its entries: `[2, blocks]`
/// float32 on the device, means first. `None` for no blocks. In host memory each block is
/// read once in place, in float64 sums; elsewhere by four LibTorch operations a block,
/// whose dispatch on the CPU cost more than the reading.
pub fn signal_stats(blocks: &[Tensor]) -> anyhow::Result<Option<Tensor>> {
    if blocks.is_empty() {
        return Ok(None);
    }
    if let Some(moments) = host::signal_moments(blocks) {
        let means = moments.iter().map(|&(mean, _)| mean as f32);
        let rms = moments.iter().map(|&(_, square)| square.sqrt() as f32);
        let rows: Vec<f32> = means.chain(rms).collect();
        return Ok(Some(Tensor::from_slice(&rows).f_view([2, blocks.len() as i64])?));
    }
    let mut means = Vec::with_capacity(blocks.len());
    let mut squares = Vec::with_capacity(blocks.len());
    for b in blocks {
        let b = b.f_detach()?;
        means.push(b.f_mean(Kind::Float)?);
        squares.push(b.f_square()?.f_mean(Kind::Float)?);
    }
    let rms = Tensor::f_stack(&squares, 0)?.f_sqrt()?;
    Ok(Some(Tensor::f_stack(&[Tensor::f_stack(&means, 0)?, rms], 0)?))
}

/// ‖∂L/∂x_t‖ for each position t of `input` (`[batch, seq, width]`, its gradient kept by
/// the backward pass), averaged over the batch: `[seq]` float32 on the device. `None`
/// when no gradient reached it.
pub fn time_profile(input: &Tensor) -> anyhow::Result<Option<Tensor>> {
    let grad = input.f_grad()?;
    if !grad.defined() || grad.dim() < 2 {
        return Ok(None);
    }
    let per_position = if grad.dim() == 2 { grad.f_abs()? } else { grad.f_norm_scalaropt_dim(2, [2], false)? };
    let per_position = per_position.f_flatten(1, -1)?.f_to_kind(Kind::Float)?;
    Ok(Some(per_position.f_mean_dim([0i64].as_slice(), false, Kind::Float)?))
}

impl Monitoring {
    /// What `monitor` records at 1-based `step`.
    pub fn at(monitor: &MonitorSpec, step: u64) -> Self {
        Self {
            stats: monitor.records(step),
            histogram: monitor.records_histogram(step),
            spectral: monitor.records_spectral(step),
            time: monitor.records_time(step),
        }
    }
}

/// What a step tells its caller at once (its report follows one step later).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutput {
    /// The loss and the gradient norm were finite (or the loss scaler caught an overflow).
    pub finite: bool,
    /// The optimizer updated the weights (finite, and no policy dropped the update).
    pub updated: bool,
    /// The loss-scaled gradients overflowed and the scaler skipped the update.
    pub overflow: bool,
    pub loss: f64,
    /// The global gradient norm before the grad policies.
    pub grad_norm: f64,
}

/// The state a step reads and changes: the parameters in their flat buffers, the
/// optimizer, the policies, and the reports waiting for their weight statistics.
pub struct Trainer {
    flat: FlatParams,
    optimizer: FlatOptimizer,
    weight_policies: Vec<WeightPolicy>,
    reporter: Reporter,
    /// The matrices whose spectral radius is measured, if any.
    spectral: Option<Spectral>,
    /// The training precision and fp16's loss scaler.
    mixed: Mixed,
}

impl Trainer {
    /// `grad_policies` are built from `policy.grad` (and restored, when resuming);
    /// `layer_names` and `redundant` are in the order of `flat`'s layers.
    pub fn new(
        flat: FlatParams,
        optimizer: FlatOptimizer,
        grad_policies: GradPolicies,
        policy: &PolicySpec,
        monitor: &MonitorSpec,
        layer_names: Vec<String>,
        redundant: &[bool],
    ) -> Self {
        let reporter = Reporter::new(&policy.grad, grad_policies, monitor, layer_names, redundant);
        Self { flat, optimizer, weight_policies: policy.weight.clone(), reporter, spectral: None, mixed: Mixed::fp32() }
    }

    /// Trains in `mixed`'s precision (float32 otherwise).
    pub fn with_precision(mut self, mixed: Mixed) -> Self {
        self.mixed = mixed;
        self
    }

    /// The precision, with the loss scaler's state.
    pub fn precision(&self) -> &Mixed {
        &self.mixed
    }

    pub fn precision_mut(&mut self) -> &mut Mixed {
        &mut self.mixed
    }

    /// Measures the spectral radius of `spectral`'s matrices on the steps that ask for it.
    pub fn with_spectral(mut self, spectral: Option<Spectral>) -> Self {
        if let Some(s) = &spectral {
            self.reporter.diagnoser.set_matrices(s.matrices());
        }
        self.spectral = spectral;
        self
    }

    pub fn flat(&self) -> &FlatParams {
        &self.flat
    }

    pub fn optimizer(&self) -> &FlatOptimizer {
        &self.optimizer
    }

    pub fn optimizer_mut(&mut self) -> &mut FlatOptimizer {
        &mut self.optimizer
    }

    pub fn grad_policies_mut(&mut self) -> &mut GradPolicies {
        &mut self.reporter.grad_policies
    }

    /// The grad policies, with the state the adaptive ones carry between steps.
    pub fn grad_policies(&self) -> &GradPolicies {
        &self.reporter.grad_policies
    }

    /// Emits the last step's report, with one more host copy for its weight statistics.
    pub fn finish(&mut self, emit: &mut dyn FnMut(TrainEvent)) -> anyhow::Result<()> {
        self.reporter.finish(emit)
    }
}

/// An opt-in record of where a training thread's time goes, by phase, for the job
/// benchmark. Off (the default) it costs one relaxed atomic load per step; on, every
/// phase of every step adds its wall time to a process-wide total.
pub mod timing {
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    /// A part of a step, in the order a step runs them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Phase {
        /// Drawing the batch and the forward pass to the loss.
        Forward,
        /// Zeroing the gradients and the backward pass into the flat buffer.
        Backward,
        /// Per-layer gradient statistics (or the global norm alone), histograms, and the
        /// weight statistics after the update.
        Statistics,
        /// The grad policies (clipping, skipping).
        Policies,
        /// The weight snapshot, the optimizer and the weight policies.
        Update,
        /// The one device→host copy.
        HostCopy,
        /// Building the report from the copy (and counting non-finite values).
        Report,
        /// The diagnosis of the report.
        Diagnosis,
        /// Handing the report, its events and the diagnosis to the job's channel.
        Emit,
        /// Validation and checkpoints, between steps.
        Between,
    }

    impl Phase {
        pub const ALL: [Self; 10] = [
            Self::Forward,
            Self::Backward,
            Self::Statistics,
            Self::Policies,
            Self::Update,
            Self::HostCopy,
            Self::Report,
            Self::Diagnosis,
            Self::Emit,
            Self::Between,
        ];

        pub fn as_str(self) -> &'static str {
            match self {
                Self::Forward => "forward",
                Self::Backward => "backward",
                Self::Statistics => "statistics",
                Self::Policies => "grad policies",
                Self::Update => "update",
                Self::HostCopy => "host copy",
                Self::Report => "report building",
                Self::Diagnosis => "diagnosis",
                Self::Emit => "emit",
                Self::Between => "validation, checkpoints",
            }
        }
    }

    static ENABLED: AtomicBool = AtomicBool::new(false);
    /// The CUDA device each lap waits for, or -1.
    static SYNC: AtomicI64 = AtomicI64::new(-1);
    static NANOS: [AtomicU64; Phase::ALL.len()] = [const { AtomicU64::new(0) }; Phase::ALL.len()];

    /// Starts (or stops) recording, process-wide.
    pub fn enable(on: bool) {
        ENABLED.store(on, Ordering::Relaxed);
    }

    /// Makes every lap wait for CUDA device `index` to finish what was queued (`None`: not
    /// to wait). A GPU runs a step's work after the host queued it, so without waiting a
    /// phase is charged with the host's time to queue its kernels, and a later phase that
    /// reads a result back with the time of everything before it; waiting charges each
    /// phase with its own device time, at the cost of the overlap the waits take away.
    pub fn sync_cuda(index: Option<usize>) {
        SYNC.store(index.and_then(|i| i64::try_from(i).ok()).unwrap_or(-1), Ordering::Relaxed);
    }

    /// The time recorded per phase since the last call, and resets it.
    pub fn take() -> Vec<(Phase, Duration)> {
        Phase::ALL.iter().map(|&p| (p, Duration::from_nanos(NANOS[p as usize].swap(0, Ordering::Relaxed)))).collect()
    }

    /// Charges the time between laps to phases; inert when recording is off.
    pub(crate) struct Clock(Option<Instant>);

    impl Clock {
        pub(crate) fn start() -> Self {
            Self(ENABLED.load(Ordering::Relaxed).then(Instant::now))
        }

        /// Charges the time since the last lap (or the start) to `phase`.
        pub(crate) fn lap(&mut self, phase: Phase) {
            if let Some(last) = &mut self.0 {
                let device = SYNC.load(Ordering::Relaxed);
                if device >= 0 {
                    tch::Cuda::synchronize(device);
                }
                let now = Instant::now();
                let nanos = u64::try_from((now - *last).as_nanos()).unwrap_or(u64::MAX);
                NANOS[phase as usize].fetch_add(nanos, Ordering::Relaxed);
                *last = now;
            }
        }
    }
}

/// Trains step `step` (1-based) at learning rate `lr`: `forward` draws the batch and
/// returns the loss; the rest is the same for every caller. Emits the previous step's
/// report (and its events); this step's waits for its weight statistics. Its wall time
/// runs from the call to the update, batch and statistics included.
pub fn step<F: Into<Forward>>(
    trainer: &mut Trainer,
    step: u64,
    lr: f64,
    monitoring: Monitoring,
    forward: impl FnOnce() -> anyhow::Result<F>,
    emit: &mut dyn FnMut(TrainEvent),
) -> anyhow::Result<StepOutput> {
    let started = Instant::now();
    let Trainer { flat, optimizer, weight_policies, reporter, spectral, mixed } = trainer;
    reporter.clock = Clock::start();
    let forwarded = if mixed.autocast() { tch::autocast(true, forward) } else { forward() };
    let Forward { loss, input, blocks } = forwarded?.into();
    reporter.clock.lap(Phase::Forward);
    flat.zero_grads()?;
    match mixed.scaled_loss(&loss)? {
        Some(scaled) => scaled.f_backward(),
        None => loss.f_backward(),
    }
    .context("backward failed")?;
    if let Some(probe) = &input {
        probe.carry_back().context("backward before the traced input failed")?;
    }
    flat.adopt_grads()?;
    // Rounded to the precision where it is emulated, and unscaled: everything after this
    // (statistics, policies, the update) sees the gradients at their true size.
    let found_inf = tch::no_grad(|| mixed.after_backward(&mut flat.grads().shallow_clone()))?;
    reporter.clock.lap(Phase::Backward);

    let record = monitoring.stats;
    let probes = DeviceProbes {
        spectral: spectral.as_mut().filter(|_| monitoring.spectral),
        input: input.as_ref().map(|p| &p.leaf).filter(|_| monitoring.time),
        blocks: if monitoring.stats { &blocks } else { &[] },
    };
    let measured = Measured { loss: &loss, found_inf: found_inf.as_ref() };
    let (report, held_weight_rows) =
        tch::no_grad(|| reporter.measure(flat, probes, measured, mixed, step, lr, monitoring))?;
    drop((input, blocks));
    // An overflow the loss scaler caught is no divergence: the scaler skips the update and
    // backs off.
    let finite = report.loss.is_finite() && (report.grad_norm.is_finite() || report.overflow);
    let update = finite && !report.skipped && !report.overflow;
    // In host memory the update measures each layer's change as it writes it; with weight
    // policies after it (or no update, or on a GPU) a snapshot before and a pass after do.
    let measured = record && update && weight_policies.is_empty() && flat.in_place() && optimizer.in_place();
    let change = tch::no_grad(|| -> anyhow::Result<_> {
        if record && !measured {
            flat.snapshot_weights()?;
        }
        let mut change = None;
        if update {
            change = optimizer.step(flat.weights(), flat.grads(), lr, flat.ranges())?;
            policy::apply_weight_policies(weight_policies, flat.params(), step)?;
        }
        Ok(change)
    })?;
    reporter.clock.lap(Phase::Update);
    // The held step's report goes out now, while a GPU runs the update just queued: its
    // diagnosis and hand-over are host work that would otherwise leave the device idle.
    reporter.release(held_weight_rows.as_deref(), emit);
    let weight_stats = match (record, change) {
        (false, _) => None,
        (true, Some(change)) if measured => Some(flat.measured_weight_stats(&change)?),
        (true, _) => {
            anyhow::ensure!(!measured, "an update in host memory did not measure its change");
            Some(tch::no_grad(|| flat.weight_stats())?)
        }
    };
    reporter.clock.lap(Phase::Statistics);
    let (overflow, loss, grad_norm) = (report.overflow, report.loss, report.grad_norm);
    reporter.hold(StepReport { skipped: !update, seconds: started.elapsed().as_secs_f64(), ..report }, weight_stats);
    Ok(StepOutput { finite, updated: update, overflow, loss, grad_norm })
}

/// The step's loss (unscaled) and, when the loss is scaled, whether its scaled gradients
/// overflowed.
#[derive(Clone, Copy)]
struct Measured<'a> {
    loss: &'a Tensor,
    found_inf: Option<&'a Tensor>,
}

/// What a step measures on its own schedules, on the device.
struct DeviceProbes<'a> {
    spectral: Option<&'a mut Spectral>,
    /// The traced input, its gradient filled by the backward pass.
    input: Option<&'a Tensor>,
    /// The traced blocks' outputs.
    blocks: &'a [Tensor],
}

/// Turns device tensors into reports: one host copy per step, weight statistics carried
/// over to the next copy, diagnosis on the way out.
struct Reporter {
    /// The most updates `skip_spike` drops in a row, when it is on.
    spike_max_consecutive: Option<u64>,
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
    /// The opt-in timing record of the step under way.
    clock: Clock,
}

impl Reporter {
    fn new(
        grad: &[GradPolicy],
        grad_policies: GradPolicies,
        monitor: &MonitorSpec,
        layer_names: Vec<String>,
        redundant: &[bool],
    ) -> Self {
        let spike_max_consecutive = grad.iter().find_map(|p| match p {
            GradPolicy::SkipSpike(p) => Some(p.max_consecutive),
            _ => None,
        });
        Self {
            spike_max_consecutive,
            grad_policies,
            layers: layer_names.len(),
            held: None,
            held_events: Vec::new(),
            pending: Vec::new(),
            diagnoser: Diagnoser::new(monitor, layer_names).with_redundant(redundant),
            diagnosis: Diagnosis::default(),
            clock: Clock::start(),
        }
    }

    /// Measures the gradients, applies the grad policies, and copies this step's numbers
    /// (and the held step's weight statistics) to the host in one transfer. Returns this
    /// step's report and the held step's weight rows, for [`Self::release`].
    #[allow(clippy::too_many_arguments)]
    fn measure(
        &mut self,
        flat: &mut FlatParams,
        probes: DeviceProbes<'_>,
        measured: Measured<'_>,
        mixed: &mut Mixed,
        step: u64,
        lr: f64,
        monitoring: Monitoring,
    ) -> anyhow::Result<(StepReport, Option<Vec<f64>>)> {
        let record = monitoring.stats;
        let Measured { loss, found_inf } = measured;
        // The policies' input is `grad_norm()` on every step: `grad_stats` returns that same
        // value, bit for bit, so recording statistics cannot change what the policies see.
        let (grad_stats, total) = if record {
            let (stats, total) = flat.grad_stats(mixed.underflow_threshold())?;
            (Some(stats), total)
        } else {
            (None, flat.grad_norm()?)
        };
        let hist = if record && monitoring.histogram { Some(flat.grad_histogram()?) } else { None };
        // Of the weights this step's gradient was taken at, before any update.
        let radius = probes.spectral.map(Spectral::measure).transpose()?;
        let time = match probes.input {
            Some(input) => time_profile(input)?,
            None => None,
        };
        let signal = signal_stats(probes.blocks)?;
        self.clock.lap(Phase::Statistics);
        let outcome = self.grad_policies.apply_flat(flat.grads(), &flat.layer_grads(), flat.params(), &total)?;
        let flag = |t: &Option<Tensor>| -> anyhow::Result<Tensor> {
            Ok(match t {
                Some(t) => t.f_to_kind(Kind::Float)?,
                None => total.f_zeros_like()?,
            })
        };
        let (skip, forced) = (flag(&outcome.skip)?, flag(&outcome.forced)?);
        self.clock.lap(Phase::Policies);

        let held_weights = self.held.as_ref().and_then(|(_, w)| w.as_ref().map(Tensor::shallow_clone));
        let copy = DeviceParts {
            scalars: Some(DeviceScalars {
                loss,
                grad_norm: &total,
                grad_norm_clipped: &outcome.norm,
                skip: &skip,
                forced: &forced,
                overflow: found_inf,
            }),
            grad_stats: grad_stats.as_ref(),
            weight_stats: held_weights.as_ref(),
            hist: hist.as_ref(),
            spectral: radius.as_ref(),
            time: time.as_ref(),
            signal: signal.as_ref(),
        }
        .copy_to_host(self.layers)?;
        self.clock.lap(Phase::HostCopy);

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
        self.clock.lap(Phase::Report);
        let held_weight_rows = copy.weight_rows().map(<[f64]>::to_vec);
        let Scalars { loss, grad_norm, grad_norm_clipped, skip, forced, overflow } = scalars;
        let loss_scale = mixed.scaler().map(|s| s.scale());
        if let Some(scaler) = mixed.scaler_mut() {
            scaler.update(overflow);
            if overflow {
                self.pending.push(Event {
                    step,
                    kind: EventKind::LossScaleOverflow,
                    layer: None,
                    value: loss_scale,
                    message: format!(
                        "inf/NaN in the gradients scaled by {}: update skipped, loss scale now {}",
                        loss_scale.unwrap_or_default(),
                        scaler.scale()
                    ),
                });
            }
        }
        if forced {
            let most = self.spike_max_consecutive;
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
        let report = StepReport {
            step,
            loss,
            grad_norm,
            grad_norm_clipped,
            clip_coef: if grad_norm > 0.0 { grad_norm_clipped / grad_norm } else { 1.0 },
            lr,
            // A policy (skip_spike) dropped the update.
            skipped: skip,
            loss_scale,
            overflow,
            layers,
            probes: Probes { spectral: copy.spectral(), time: copy.time(), signal: copy.signal() },
            seconds: 0.0,
        };
        Ok((report, held_weight_rows))
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
        self.clock.lap(Phase::Report);
        let mut events = std::mem::take(&mut self.held_events);
        events.extend(self.diagnoser.observe(&report));
        let diagnosis = self.diagnoser.diagnosis();
        self.clock.lap(Phase::Diagnosis);
        emit(TrainEvent::Step(report));
        for event in events {
            emit(TrainEvent::Event(event));
        }
        if diagnosis != self.diagnosis {
            self.diagnosis = diagnosis.clone();
            emit(TrainEvent::Diagnosis(diagnosis));
        }
        self.clock.lap(Phase::Emit);
    }

    /// Emits the last held report, with one more host copy for its weight statistics.
    fn finish(&mut self, emit: &mut dyn FnMut(TrainEvent)) -> anyhow::Result<()> {
        self.clock = Clock::start();
        let weights = self.held.as_ref().and_then(|(_, w)| w.as_ref().map(Tensor::shallow_clone));
        let copy =
            DeviceParts { weight_stats: weights.as_ref(), ..DeviceParts::default() }.copy_to_host(self.layers)?;
        self.release(copy.weight_rows(), emit);
        Ok(())
    }
}
