//! Synchronous `tch` code only: no async, no HTTP. It receives a [`ValidSpec`](crate::spec::ValidSpec), a
//! stop flag and a channel, trains, and emits plain-float reports. Tensors never leave
//! this module (`tch::Tensor` is `Send` but not `Sync`).
//!
//! - [`budget`] — what a spec costs: parameters, peak memory, stored bytes.
//! - [`checkpoint`] — weights and resumable optimizer state on disk.
//! - [`data`] — batches, corpora and batch sampling.
//! - [`task`] — tasks: where batches come from, losses, validation and metrics.
//! - [`model`] — the networks, with named parameters in a stable order.
//! - [`optim`] — optimizers and learning-rate schedules.
//! - [`policy`] — gradient and weight policies.
//! - [`precision`] — fp16/bf16 training and the loss scaler.
//! - [`stats`] — per-layer statistics from one flat gradient buffer.
//! - [`transfer`] — the layout of the one device→host copy a step makes.
//! - [`spectral`] — the largest singular value of the recurrent and square weights.
//! - [`user`] — checks of uploaded models and data sets, and their dry run.
//! - [`diagnose`] — vanishing/exploding/dead/non-finite diagnosis from the reports.
//! - [`step`] — one training step, shared by the loop and the step benchmark.
//! - [`rollback`] — `on_spike: rollback`'s snapshot, spike detector and restore.
//! - [`run`] — the training loop.
//! - [`presets`] — the seed experiments, failing runs beside their remedied twins.

pub mod budget;
pub mod checkpoint;
pub mod data;
pub mod diagnose;
pub mod fused;
pub mod host;
pub mod model;
pub mod optim;
pub mod policy;
pub mod precision;
pub mod presets;
pub mod rollback;
pub mod run;
pub mod spectral;
pub mod stats;
pub mod step;
pub mod task;
pub mod transfer;
pub mod user;

use std::sync::atomic::{AtomicU8, Ordering};

use serde::{Deserialize, Serialize};

use crate::vocab::EventKind;

pub use run::{RunContext, train};
pub use stats::LayerStats;

/// One layer = one named parameter tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerInfo {
    pub index: usize,
    pub name: String,
    pub shape: Vec<i64>,
    pub numel: i64,
}

/// What one optimizer step measured, as plain floats. Non-finite values stay non-finite.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    /// 1-based: after step `n`, `n` updates have been attempted.
    pub step: u64,
    pub loss: f64,
    /// Global L2 norm of the gradients before any grad policy.
    pub grad_norm: f64,
    /// Global L2 norm after the grad policies.
    pub grad_norm_clipped: f64,
    /// `grad_norm_clipped / grad_norm` (1 when nothing was clipped).
    pub clip_coef: f64,
    pub lr: f64,
    /// The update was dropped (non-finite loss or gradient).
    pub skipped: bool,
    /// The loss scale the step ran at (fp16 with loss scaling), before its update.
    #[serde(default)]
    pub loss_scale: Option<f64>,
    /// The loss-scaled gradients held an infinity or a NaN: the update was skipped and the
    /// scale backed off.
    #[serde(default)]
    pub overflow: bool,
    /// Every per-layer statistic, on the steps `monitor.every` records.
    pub layers: Option<LayerStats>,
    /// What the step measured on its own schedules besides the per-layer statistics.
    pub probes: Probes,
    /// Wall time of the step, from its batch to its update, statistics included.
    pub seconds: f64,
}

/// Measurements a step makes on schedules of their own (`monitor.spectral_every`, …).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Probes {
    /// The largest singular value of each matrix [`spectral::matrices`] finds among the
    /// job's layers, in that order, of the weights the step's gradient was taken at.
    pub spectral: Option<Vec<f64>>,
    /// The temporal gradient profile of a sequence model: at each input position t, the
    /// norm of the gradient reaching the embedded input, ‖∂L/∂x_t‖, averaged over the batch.
    pub time: Option<Vec<f64>>,
    /// On recorded steps (`monitor.every`), the mean of each block's output (see
    /// [`model::block_names`]) over all its entries, then each one's root mean square,
    /// √(mean of the squares): twice as many values as blocks.
    pub signal: Option<Vec<f64>>,
}

/// A validation pass: the task's loss on its held-out data, in evaluation mode.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// The optimizer step after which validation ran.
    pub step: u64,
    pub loss: f64,
    /// The task's metric (name, value), e.g. `("accuracy", 0.93)`.
    pub metric: Option<(&'static str, f64)>,
}

impl EvalReport {
    /// As events: `validation` (the loss), and `validation_<metric>` when the task has one.
    pub fn events(&self) -> Vec<Event> {
        let mut events = vec![Event {
            step: self.step,
            kind: EventKind::Validation,
            layer: None,
            value: Some(self.loss),
            message: format!("validation loss {:.4}", self.loss),
        }];
        if let Some((name, value)) = self.metric {
            events.push(Event {
                step: self.step,
                kind: if name == "accuracy" { EventKind::ValidationAccuracy } else { EventKind::ValidationMetric },
                layer: None,
                value: Some(value),
                message: format!("validation {name} {value:.4}"),
            });
        }
        events
    }
}

/// Messages from a training thread, in order.
// Steps are nearly every message: boxing them would cost an allocation per step to save
// bytes on the rare others.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// The model is built: where it trains and what its layers are.
    Started {
        device: String,
        layers: Vec<LayerInfo>,
    },
    Step(StepReport),
    /// Validation results, every `task.eval_every` steps and after the last step.
    Eval(EvalReport),
    /// A diagnosis or a policy action.
    Event(Event),
    /// The run's diagnosis changed.
    Diagnosis(diagnose::Diagnosis),
}

/// Something worth telling a person about a run, at a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub step: u64,
    pub kind: EventKind,
    pub layer: Option<usize>,
    pub value: Option<f64>,
    pub message: String,
}

/// How a training run ended without an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded,
    Cancelled,
    Interrupted,
    /// A non-finite loss or gradient under `on_nonfinite: stop`, or a spike after
    /// `max_rollbacks` rollbacks.
    Diverged(String),
}

/// Why a run was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum StopReason {
    /// A user cancelled the job.
    Cancel = 1,
    /// The service is shutting down.
    Shutdown = 2,
}

/// Checked by the training loop before every step; set from any thread.
#[derive(Debug, Default)]
pub struct StopFlag(AtomicU8);

impl StopFlag {
    /// Asks the run to stop. The first reason given wins.
    pub fn request(&self, reason: StopReason) {
        let _ = self.0.compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn requested(&self) -> Option<StopReason> {
        match self.0.load(Ordering::SeqCst) {
            1 => Some(StopReason::Cancel),
            2 => Some(StopReason::Shutdown),
            _ => None,
        }
    }
}
