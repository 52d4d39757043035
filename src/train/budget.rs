//! What a spec will cost before it runs, so oversized specs are refused at submission
//! instead of exhausting the machine: parameters, the memory of every allocation the run
//! makes (see [`Memory`]), and the bytes its records take in the store (see [`Disk`]).
//!
//! Each term follows the code that allocates it (`run.rs`, `stats.rs`, `optim.rs`,
//! `policy.rs`, `task.rs`, `data.rs`); activations follow what LibTorch saves for
//! backward, with per-kind constants checked against the measured peak memory of real
//! runs (`tests/api/budget.rs` holds MLP, LSTM and transformer jobs within 2× of their
//! estimates). Estimates are deliberately a little generous, never exact.

use super::stats::HIST_BINS;
use super::task::VALID_SAMPLES;
use crate::spec::{
    AddingTask, CopyTask, GradPolicy, JobSpec, ModelKind, Norm, OnSpike, OptimizerKind, SkipSpikePolicy, TaskSpec,
    ValidSpec, ZclipPolicy,
};
use crate::vocab::Statistic;

/// Bytes per float32 (parameters, activations) and per int64 (token ids, class labels).
const F32: f64 = 4.0;
const I64: f64 = 8.0;
/// Bytes per int32 (the histogram's per-element layer ids and exponents).
const I32: f64 = 4.0;
/// Step reports a running job's live feed may hold: its broadcast channel keeps the last
/// `config::FEED_CAPACITY` messages while anyone subscribes (the ring for late
/// subscribers shares them).
const FEED_REPORTS: f64 = crate::config::FEED_CAPACITY as f64;
/// Bytes per number of a step report: as a Rust value (f64/u64) and as JSON text.
const REPORT_NUMBER: f64 = 8.0 + 12.0;

/// The text a `char_lm` task reads, by size: what its budget depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CorpusSize {
    /// Distinct characters: the model's input and output width.
    pub vocab: u64,
    /// Characters (bytes for an uploaded corpus, which is at least as many).
    pub chars: u64,
}

impl CorpusSize {
    pub fn of_text(text: &str) -> Self {
        Self { vocab: super::data::vocab_size(text) as u64, chars: text.chars().count() as u64 }
    }
}

/// The estimate for a spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub params: u64,
    /// Parameter tensors: the contract's layers.
    pub tensors: u64,
    /// Activation memory of one training step at `batch_size` (what
    /// `--max-activation-bytes` bounds).
    pub activation_bytes: u64,
    pub memory: Memory,
    pub disk: Disk,
}

/// Peak memory of a run, in bytes, by what holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    /// Weights and gradients (the flat buffers), and the optimizer's state.
    pub model: f64,
    /// The weight snapshot for `update_ratio`, the histogram's per-element layer ids, and
    /// the live feed's recent step reports.
    pub monitor: f64,
    /// The task's own data: cluster centres, the corpus as ids, the validation set.
    pub task: f64,
    /// State of the grad policies (AutoClip's norm history, ZClip's warm-up buffer).
    pub policy: f64,
    /// Activations LibTorch keeps for backward in one training step, with the batch.
    pub train_step: f64,
    /// Activations of one validation pass (256 samples, no gradients).
    pub validation: f64,
    /// Scratch space after backward: histogram exponents, the update for `update_ratio`,
    /// optimizer and policy temporaries, a checkpoint's copy of one tensor.
    pub scratch: f64,
}

impl Memory {
    /// What is held all run long plus the largest of the passing peaks (they never overlap:
    /// a training step's activations are freed by backward, before scratch is needed, and
    /// validation runs after the update).
    pub fn total(&self) -> u64 {
        let held = self.model + self.monitor + self.task + self.policy;
        (held + self.train_step.max(self.validation).max(self.scratch)) as u64
    }

    /// The field of `spec` that drives the estimate most, and how to shrink it.
    pub fn driver(&self, spec: &JobSpec) -> (&'static str, &'static str) {
        let parts = [
            (self.model, "model.hidden", "use fewer or narrower layers"),
            (
                self.monitor,
                "monitor.every",
                "turn monitor.histogram off, or per-layer statistics off with monitor.every 0",
            ),
            (self.task, task_field(&spec.task).0, task_field(&spec.task).1),
            (self.policy, "policy.grad", "use a shorter autoclip history"),
            (self.train_step, "batch_size", "use a smaller batch, shorter sequences or a smaller model"),
            (
                self.validation,
                if spec.task.is_sequence() { "task.seq_len" } else { "model.hidden" },
                "validation runs on 256 samples whatever the batch size: use shorter sequences, a smaller model, \
                 or task.eval_every 0 to turn validation off",
            ),
            (self.scratch, "model.hidden", "use fewer or narrower layers"),
        ];
        let (_, field, advice) = parts
            .into_iter()
            .fold((f64::MIN, "model", ""), |best, (v, f, a)| if v > best.0 { (v, f, a) } else { best });
        (field, advice)
    }
}

/// The field that sizes a task's own data, and how to shrink it.
fn task_field(task: &TaskSpec) -> (&'static str, &'static str) {
    match task {
        TaskSpec::CharLm(_) => ("task.corpus", "use a smaller corpus"),
        // Features multiply everything the task holds: centres, validation set, batches.
        TaskSpec::Classification(_) => {
            ("task.features", "the cluster centres are classes × clusters × features floats: use fewer of them")
        }
        TaskSpec::Adding(_) | TaskSpec::Copy(_) => ("task.seq_len", "use shorter sequences"),
        TaskSpec::Dataset(_) => ("task.id", "the data set is held whole on the device: use a smaller one"),
    }
}

/// What a job writes to the store, in bytes as [`crate::store`] counts them (`stored_bytes`:
/// text and blobs at their length, every number 8 bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Disk {
    /// One `steps` row, written every step.
    pub step_row: f64,
    /// One `layer_stats` row (with its histograms when recorded), every recorded step.
    pub stats_row: f64,
    /// Validation and policy-summary events over the whole run.
    pub events: f64,
    /// The measurements on their own schedules over the whole run: spectral radii and
    /// temporal gradient profiles.
    pub probes: f64,
    steps: u64,
}

/// Bytes of a job id as the store keeps it (a hyphenated UUID).
const JOB_ID: f64 = 36.0;
/// A stored block cell (see `store::rollup`): two values and three row numbers.
const ROLLUP_CELL_F32: f64 = 2.0 * 4.0 + 12.0;
const ROLLUP_CELL_F64: f64 = 2.0 * 8.0 + 12.0;

/// A row's share of the stored blocks whose cells take `cells` bytes: blocks of 16, 256, …
/// rows, about one fifteenth of a block per row, each with a job id and three numbers.
fn rollup_share(cells: f64) -> f64 {
    (JOB_ID + 3.0 * 8.0 + cells) / 15.0
}
/// A stored event: job id, four numbers, its kind and message (about 40 bytes of text).
const EVENT_BYTES: f64 = JOB_ID + 4.0 * 8.0 + 12.0 + 40.0;

impl Disk {
    /// Stored bytes of the job's records when it records per-layer statistics every
    /// `every` steps (0: never).
    pub fn records(&self, every: u64) -> u64 {
        let recorded = if every == 0 { 0 } else { self.steps.div_ceil(every) };
        (self.steps as f64 * self.step_row + recorded as f64 * self.stats_row + self.events + self.probes) as u64
    }

    /// The smallest `monitor.every` whose records fit `limit` bytes, if any.
    pub fn smallest_every(&self, limit: u64) -> Option<u64> {
        let fits = |every: u64| self.records(every) <= limit;
        if !fits(self.steps.max(1)) {
            return None;
        }
        // Fewer recorded steps for a larger `every`: the first that fits, by bisection.
        let (mut lo, mut hi) = (1, self.steps.max(1));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) { hi = mid } else { lo = mid + 1 }
        }
        Some(lo)
    }
}

/// Whether the task's inputs are token ids (else float features).
pub fn task_tokens(task: &TaskSpec) -> bool {
    task_shape(task, 2).1
}

/// Sizes of a task: input width (token vocabulary or features), whether inputs are
/// tokens, output width, and sequence length.
fn task_shape(task: &TaskSpec, vocab: u64) -> (u64, bool, u64, u64) {
    let n = |x: i64| x.max(0) as u64;
    match task {
        TaskSpec::CharLm(t) => (vocab, true, vocab, n(t.seq_len)),
        TaskSpec::Adding(t) => (2, false, 1, n(t.seq_len)),
        TaskSpec::Copy(t) => (n(t.symbols) + 2, true, n(t.symbols), n(t.seq_len)),
        TaskSpec::Classification(t) => (n(t.features), false, n(t.classes), 1),
        // Sized by `estimate_user` from the dry run instead.
        TaskSpec::Dataset(_) => (1, false, 1, 1),
    }
}

/// Parameters and parameter tensors, exactly as `model::build` creates them.
fn parameters(spec: &JobSpec, input: u64, tokens: bool, output: u64, seq: u64) -> (u64, u64) {
    let d = spec.model.hidden.max(1) as u64;
    let layers = spec.model.layers.max(1) as u64;
    // A norm layer's gain and bias (RMS norm has no bias).
    let (norm_params, norm_tensors) = match spec.model.norm {
        Norm::None => (0, 0),
        Norm::Rms => (d, 1),
        Norm::Batch | Norm::Layer => (2 * d, 2),
    };
    let head = d * output + output;
    match spec.model.kind {
        ModelKind::Mlp => {
            let first = input * d + d;
            let hidden = (layers - 1) * (d * d + d);
            (first + hidden + layers * norm_params + head, layers * (2 + norm_tensors) + 2)
        }
        ModelKind::Rnn | ModelKind::Gru | ModelKind::Lstm => {
            let gates = gates(spec.model.kind);
            // Token inputs are embedded to the width; features feed the first layer.
            let (embed, first_in) = if tokens { (input * d, d) } else { (0, input) };
            let recurrent = gates * d * (first_in + d + 2) + (layers - 1) * gates * d * (2 * d + 2);
            (embed + recurrent + head, u64::from(tokens) + 4 * layers + 2)
        }
        ModelKind::Transformer => {
            let (embed, embed_tensors) = if tokens { (input * d, 1) } else { (input * d + d, 2) };
            let positions = seq * d;
            // in_proj 3d×d+3d, out_proj d×d+d, linear1 4d×d+4d, linear2 d×4d+d, two norms.
            let block = 3 * d * d + 3 * d + d * d + d + 4 * d * d + 4 * d + 4 * d * d + d + 2 * norm_params;
            let final_norm = if spec.model.norm_position == crate::spec::NormPosition::Pre { norm_params } else { 0 };
            let final_tensors = if final_norm > 0 { norm_tensors } else { 0 };
            (
                embed + positions + layers * block + final_norm + head,
                embed_tensors + 1 + layers * (8 + 2 * norm_tensors) + final_tensors + 2,
            )
        }
        // Counted by the dry run instead (`estimate_user`).
        ModelKind::Torchscript => (0, 0),
    }
}

fn gates(kind: ModelKind) -> u64 {
    match kind {
        ModelKind::Lstm => 4,
        ModelKind::Gru => 3,
        _ => 1,
    }
}

/// Floats of activations per sample (MLP) or per token (sequence models): what one
/// training step keeps for backward (with backward's own temporaries), and the peak of a
/// forward pass without gradients. The constants, in units of the width, were measured
/// as the peak resident memory of CPU runs with LibTorch 2.11 (oneDNN's LSTM, the native
/// GRU and RNN, flash attention that never forms the sequence × sequence matrix) and
/// rounded up.
fn activations_per_token(spec: &JobSpec, input: u64, tokens: bool, output: u64) -> (f64, f64) {
    let m = &spec.model;
    let d = m.hidden.max(1) as f64;
    let layers = m.layers.max(1) as f64;
    let (i, o) = (input as f64, output as f64);
    let dropout = if m.dropout > 0.0 { 2.0 } else { 0.0 };
    // Logits, their log-softmax (kept by the cross-entropy) and the gradient of the logits.
    let head = 3.0 * o;
    match m.kind {
        ModelKind::Mlp => {
            let norm = match m.norm {
                Norm::None => 0.0,
                Norm::Batch | Norm::Layer => 1.0,
                Norm::Rms => 3.0,
            };
            let residual = if m.residual { 1.0 } else { 0.0 };
            // Linear output, norm output, activation output, per block; backward's
            // gradients of the widest of them.
            let block = d * (2.0 + norm + dropout + residual);
            let wide = d.max(i).max(o);
            (i + layers * block + head + 4.0 * wide, i + 3.0 * wide + head)
        }
        ModelKind::Rnn | ModelKind::Gru | ModelKind::Lstm => {
            // (fixed, per layer) in training, (first layer, each further layer) without
            // gradients: oneDNN's LSTM keeps its gates and states in a workspace, the
            // native GRU and RNN keep their per-step outputs and gates as autograd nodes
            // and precompute the input projection of the whole sequence.
            let ((fixed, per_layer), (first, further)) = match m.kind {
                ModelKind::Lstm => ((9.5, 7.5), (3.0, 0.7)),
                ModelKind::Gru => ((4.5, 8.0), (6.0, 0.7)),
                _ => ((1.0, 3.5), (3.2, 0.7)),
            };
            let x = if tokens { d } else { i };
            let train = x + head + d * (fixed + layers * (per_layer + dropout));
            let eval = x + head + d * (first + (layers - 1.0) * further);
            (train, eval)
        }
        ModelKind::Transformer => {
            // Per block: qkv 3d, attention output and its transpose 2d, out_proj d, two
            // residual sums 2d, two norm outputs and their statistics, feed-forward 4d
            // in and 4d out, d out, and backward's gradients of them. Without gradients
            // the peak is one block's feed-forward beside its input.
            let x = if tokens { 0.0 } else { i };
            let train = x + head + d * (10.0 + layers * (21.5 + 3.0 * dropout));
            let eval = x + head + d * (10.5 + 0.5 * (layers - 1.0));
            (train, eval)
        }
        ModelKind::Torchscript => (0.0, 0.0),
    }
}

/// The validation set's samples and their length: 256 generated samples, or up to 256
/// windows of the held-out tenth of a corpus.
fn validation_shape(task: &TaskSpec, corpus: CorpusSize) -> (f64, f64) {
    let valid = VALID_SAMPLES as f64;
    match task {
        TaskSpec::CharLm(t) => {
            if t.eval_every == 0 {
                return (0.0, 0.0);
            }
            let held_out = corpus.chars - corpus.chars * 9 / 10;
            let len = (t.seq_len as u64).min(held_out.saturating_sub(1));
            if len == 0 {
                return (0.0, 0.0);
            }
            ((((held_out - 1) / len).min(VALID_SAMPLES as u64)) as f64, len as f64)
        }
        TaskSpec::Adding(AddingTask { seq_len, eval_every }) | TaskSpec::Copy(CopyTask { seq_len, eval_every, .. }) => {
            if *eval_every == 0 {
                (0.0, 0.0)
            } else {
                (valid, *seq_len as f64)
            }
        }
        TaskSpec::Classification(t) => {
            if t.eval_every == 0 {
                (0.0, 0.0)
            } else {
                (valid, 1.0)
            }
        }
        TaskSpec::Dataset(_) => (0.0, 0.0),
    }
}

/// Bytes of the task's own data, held all run: cluster centres, the corpus, the
/// validation set's tensors.
fn task_bytes(task: &TaskSpec, corpus: CorpusSize, valid: (f64, f64)) -> f64 {
    let (samples, len) = valid;
    match task {
        // The text itself, its ids split into training and held-out parts, and while they
        // are made the ids once more.
        TaskSpec::CharLm(_) => corpus.chars as f64 * (1.0 + 2.0 * I64) + samples * len * 2.0 * I64,
        TaskSpec::Adding(_) => samples * (len * 2.0 + 1.0) * F32,
        TaskSpec::Copy(t) => samples * (len + t.length as f64) * I64,
        TaskSpec::Classification(t) => {
            let centres = (t.classes * t.clusters * t.features) as f64 * F32;
            centres + samples * (t.features as f64 * F32 + I64)
        }
        TaskSpec::Dataset(_) => 0.0,
    }
}

/// Bytes of the grad policies' state, and of their largest temporary.
fn policy_bytes(spec: &JobSpec, largest_tensor: f64) -> (f64, f64) {
    let mut held = 0.0;
    let mut scratch: f64 = 0.0;
    for policy in &spec.policy.grad {
        match policy {
            GradPolicy::Autoclip(p) => {
                held += p.history as f64 * F32;
                // `nanquantile` sorts a copy: values and int64 indices.
                scratch = scratch.max(p.history as f64 * (F32 + I64 + F32));
            }
            GradPolicy::Zclip(ZclipPolicy { warmup, .. }) | GradPolicy::SkipSpike(SkipSpikePolicy { warmup, .. }) => {
                held += *warmup as f64 * F32;
            }
            GradPolicy::ClipNorm { .. } | GradPolicy::Agc(_) => scratch = scratch.max(largest_tensor * F32),
            GradPolicy::ClipValue { .. } | GradPolicy::ClipLayerNorm { .. } => {}
        }
    }
    (held, scratch)
}

/// The estimate for `spec`; `corpus` sizes a `char_lm` task (other tasks ignore it).
pub fn estimate(spec: &ValidSpec, corpus: CorpusSize) -> Estimate {
    let (input, tokens, output, seq) = task_shape(&spec.task, corpus.vocab);
    let (params, tensors) = parameters(spec, input, tokens, output, seq);
    let (per_token_train, per_token_eval) = activations_per_token(spec, input, tokens, output);
    let batch = spec.batch_size.max(1) as f64;
    let seq_f = seq.max(1) as f64;
    let train_step = batch * seq_f * per_token_train * F32;
    let valid = validation_shape(&spec.task, corpus);
    let validation = valid.0 * valid.1 * per_token_eval * F32;
    let task = task_bytes(&spec.task, corpus, valid);
    complete(spec, params, tensors, train_step, validation, task)
}

/// What a TorchScript model's dry run (`user::dry_run`) measured, and its data set's size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UserSize {
    /// Trainable parameters and their tensors.
    pub params: u64,
    pub tensors: u64,
    /// Bytes of one sample of `x`, and of the module's output for one sample.
    pub input_bytes: f64,
    pub output_bytes: f64,
    /// Bytes of the data set file (it is held on the device whole), and its validation
    /// samples.
    pub data_bytes: f64,
    pub val_samples: u64,
}

/// The estimate for a `torchscript` model on a `dataset` task. The module's inside is
/// opaque, so its activations are scaled from what the dry run measured: per sample,
/// the input `I` and the output `O` (in bytes), and `L` parameter tensors. A training
/// step keeps `B × (I + 3·O) × L` bytes (each parameter tensor's operation saving about
/// one input- or output-sized activation, and the loss keeping the output, its
/// log-softmax and its gradient); validation `V × (I + O) × 2` for `V` validation
/// samples (at most 256) without gradients. Everything else (flat buffers, optimizer,
/// statistics, policies) is counted as for the built-ins.
pub fn estimate_user(spec: &ValidSpec, user: UserSize) -> Estimate {
    let batch = spec.batch_size.max(1) as f64;
    let layers = user.tensors.max(1) as f64;
    let train_step = batch * (user.input_bytes + 3.0 * user.output_bytes) * layers;
    let valid = if spec.task.eval_every() > 0 { user.val_samples.min(VALID_SAMPLES as u64) as f64 } else { 0.0 };
    let validation = valid * (user.input_bytes + user.output_bytes) * 2.0;
    complete(spec, user.params, user.tensors, train_step, validation, user.data_bytes)
}

/// The parts of an estimate every model shares, around its activations and task data.
fn complete(spec: &ValidSpec, params: u64, tensors: u64, train_step: f64, validation: f64, task: f64) -> Estimate {
    let p = params as f64;

    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    let o = &spec.optimizer;
    // Adam's two moments and the update's scratch buffer, or SGD's momentum buffer.
    let optimizer = match o.kind {
        OptimizerKind::Adam | OptimizerKind::Adamw => 3.0 * p,
        OptimizerKind::Sgd => flag(o.momentum > 0.0) * p,
    };
    // `on_spike: rollback` keeps a copy of the weights and the optimizer's state.
    let snapshot = if spec.policy.on_spike == OnSpike::Rollback { p + optimizer } else { 0.0 };
    // The flat weights and gradients.
    let model = (2.0 * p + optimizer + snapshot) * F32;
    let recorded = spec.monitor.every > 0;
    let histogram = recorded && spec.monitor.histogram;
    let report_numbers =
        tensors as f64 * (Statistic::ALL.len() as f64 + flag(spec.monitor.histogram) * HIST_BINS as f64);
    // The weight snapshot, the histogram's per-element layer ids, the feed.
    // The diagnosis keeps each layer's recent gradient norms (f64) to find one layer's
    // blow-up.
    let diagnosis = flag(recorded) * tensors as f64 * crate::train::diagnose::NORM_HISTORY as f64 * 8.0;
    let monitor = flag(recorded) * p * F32
        + flag(histogram) * p * I32
        + FEED_REPORTS * report_numbers * REPORT_NUMBER
        + diagnosis;
    let (policy, policy_scratch) = policy_bytes(spec, p);
    // Temporaries of the update: Adam's L2 term, SGD's decayed gradient, Nesterov's
    // look-ahead and the scaled step.
    let optimizer_scratch = match o.kind {
        OptimizerKind::Adamw => 0.0,
        OptimizerKind::Adam => 2.0 * flag(o.weight_decay() > 0.0) * p,
        OptimizerKind::Sgd => p * (1.0 + flag(o.weight_decay() > 0.0) + 2.0 * flag(o.nesterov)),
    } * F32;
    // The first backward's own gradients (before they move into the flat buffer), or a
    // checkpoint's copy of one flat tensor; the histogram's exponents beside the change
    // of the weights for `update_ratio`; the optimizer's and the policies' temporaries.
    let recording = flag(histogram) * 2.0 * p * I32 + flag(recorded) * p * F32;
    let scratch = [p * F32, recording, optimizer_scratch, policy_scratch].into_iter().fold(0.0, f64::max);
    let memory = Memory { model, monitor, task, policy, train_step, validation, scratch };
    Estimate { params, tensors, activation_bytes: train_step as u64, memory, disk: disk(spec, tensors) }
}

fn disk(spec: &JobSpec, tensors: u64) -> Disk {
    let k = tensors as f64;
    // Histograms on a share of the recorded steps: their bytes spread over every row.
    let hist = spec.monitor.histogram_share() * k * HIST_BINS as f64 * 4.0;
    let steps = spec.steps;
    let evals = match spec.task.eval_every() {
        0 => 0,
        every => steps / every + 1,
    };
    // A loss and, for all tasks but char_lm, a metric.
    let per_eval = if matches!(spec.task, TaskSpec::CharLm(_)) { 1.0 } else { 2.0 };
    let summaries = steps / spec.monitor.summary_every.max(1);
    let statistics = Statistic::ALL.len() as f64;
    Disk {
        // Job id, step, row number, five floats and the skipped flag; and its share of the
        // pre-aggregated blocks (one block per 16 rows, one per 256, …: a fifteenth of a
        // block per row), each two cells of float64.
        step_row: JOB_ID + 8.0 * 8.0 + rollup_share(2.0 * ROLLUP_CELL_F64),
        // Job id, step, row number, one float32 per layer for each statistic, the histogram
        // counts and their row number; and the share of blocks of a float32 cell per layer
        // and statistic.
        stats_row: JOB_ID
            + 2.0 * 8.0
            + k * statistics * 4.0
            + hist
            + spec.monitor.histogram_share() * 8.0
            + rollup_share(k * statistics * ROLLUP_CELL_F32)
            + signal_row(spec),
        // Each summary is `clipped` or `skipped`; count one of them.
        events: (evals as f64 * per_eval + summaries as f64) * EVENT_BYTES,
        probes: probe_bytes(spec),
        steps,
    }
}

/// The forward signal's row of a recorded step: job id, step, kind, a mean and an RMS
/// (float32) per block of a built-in model.
fn signal_row(spec: &JobSpec) -> f64 {
    let blocks = super::model::block_names(&spec.model).len() as f64;
    if blocks > 0.0 { JOB_ID + 8.0 + 6.0 + 8.0 * blocks } else { 0.0 }
}

/// The stored spectral radii and temporal profiles of a built-in model over the run: a
/// row (job id, step, kind, a float32 per value) per measured step.
fn probe_bytes(spec: &JobSpec) -> f64 {
    let m = &spec.model;
    let layers = m.layers.max(0) as f64;
    let matrices = match m.kind {
        ModelKind::Rnn => layers,
        ModelKind::Gru => 3.0 * layers,
        ModelKind::Lstm => 4.0 * layers,
        ModelKind::Mlp => layers,
        ModelKind::Transformer | ModelKind::Torchscript => 0.0,
    };
    let sequence = matches!(m.kind, ModelKind::Rnn | ModelKind::Gru | ModelKind::Lstm | ModelKind::Transformer);
    let positions = if sequence { task_shape(&spec.task, 1).3 as f64 } else { 0.0 };
    let rows = |every: u64| if every == 0 { 0.0 } else { spec.steps.div_ceil(every) as f64 };
    let row = |values: f64, kind: f64| JOB_ID + 8.0 + kind + 4.0 * values;
    let spectral = if matrices > 0.0 { rows(spec.monitor.spectral_every) * row(matrices, 8.0) } else { 0.0 };
    let time = if positions > 0.0 { rows(spec.monitor.time_every) * row(positions, 4.0) } else { 0.0 };
    spectral + time
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &serde_json::Value) -> ValidSpec {
        JobSpec::parse_value(json).expect("spec")
    }

    fn vocab(n: u64) -> CorpusSize {
        CorpusSize { vocab: n, chars: 5000 }
    }

    #[test]
    fn an_lstm_estimate_counts_its_parameters_exactly() {
        let s = spec(&serde_json::json!({"task": {"kind": "char_lm", "seq_len": 16},
            "model": {"kind": "lstm", "layers": 2, "hidden": 8}}));
        // embed 5×8, per layer 4·8·(8+8+2), head 8·5+5.
        assert_eq!(estimate(&s, vocab(5)).params, 40 + 2 * 4 * 8 * 18 + 45);
    }

    /// Parameter and tensor counts of every kind, norm and input match the built models.
    #[test]
    fn estimates_match_the_built_models() {
        use crate::train::model::{self, Input, Io};
        let specs = [
            (r#"{"kind":"rnn","layers":3,"hidden":12}"#, r#"{"kind":"char_lm","seq_len":16}"#),
            (r#"{"kind":"gru","layers":3,"hidden":12}"#, r#"{"kind":"adding","seq_len":16}"#),
            (r#"{"kind":"lstm","layers":2,"hidden":12}"#, r#"{"kind":"copy","seq_len":24}"#),
            (r#"{"kind":"mlp","layers":3,"hidden":12,"norm":"rms"}"#, r#"{"kind":"classification","features":7}"#),
            (r#"{"kind":"mlp","layers":2,"hidden":12,"norm":"batch"}"#, r#"{"kind":"classification"}"#),
            (
                r#"{"kind":"transformer","layers":2,"hidden":12,"heads":3,"norm":"layer"}"#,
                r#"{"kind":"char_lm","seq_len":16}"#,
            ),
            (
                r#"{"kind":"transformer","layers":2,"hidden":12,"heads":3,"norm":"rms","norm_position":"post"}"#,
                r#"{"kind":"adding","seq_len":16}"#,
            ),
        ];
        for (model_json, task_json) in specs {
            let s =
                spec(&serde_json::json!({"task": serde_json::from_str::<serde_json::Value>(task_json).expect("task"),
                "model": serde_json::from_str::<serde_json::Value>(model_json).expect("model")}));
            let (input, tokens, output, seq) = task_shape(&s.task, 7);
            let io = Io {
                input: if tokens { Input::Tokens(input as i64) } else { Input::Features(input as i64) },
                output: output as i64,
                max_len: seq as i64,
            };
            let vs = tch::nn::VarStore::new(tch::Device::Cpu);
            let (_, params) = model::build(&s.model, &vs, io, 0).expect("model");
            let built: i64 = params.layers().iter().map(|l| l.numel).sum();
            let e = estimate(&s, vocab(7));
            assert_eq!((e.params, e.tensors), (built as u64, params.len() as u64), "{model_json} on {task_json}");
        }
    }

    #[test]
    fn huge_specs_are_huge() {
        let s = spec(&serde_json::json!({"task": {"kind": "char_lm", "seq_len": 4096}, "batch_size": 4096,
            "model": {"kind": "transformer", "layers": 64, "hidden": 8192, "heads": 8, "norm": "layer"}}));
        let e = estimate(&s, vocab(100));
        assert!(e.params > 30_000_000_000);
        assert!(e.activation_bytes > 1 << 40);
        assert!(e.memory.total() > e.activation_bytes);
    }

    /// The classification task's centres alone can exceed any budget; they name the field.
    #[test]
    fn task_data_counts_and_names_its_field() {
        let s = spec(&serde_json::json!({"task": {"kind": "classification", "features": 16384, "classes": 10000,
            "clusters": 64}, "model": {"kind": "mlp", "layers": 1, "hidden": 8}}));
        let e = estimate(&s, CorpusSize::default());
        assert!(e.memory.task >= 41_943_040_000.0, "{:?}", e.memory);
        assert_eq!(e.memory.driver(&s).0, "task.features");
    }

    #[test]
    fn validation_can_dominate_a_small_batch() {
        let s = spec(&serde_json::json!({"batch_size": 1, "task": {"kind": "adding", "seq_len": 2000},
            "model": {"kind": "lstm", "layers": 1, "hidden": 256}}));
        let e = estimate(&s, CorpusSize::default());
        assert!(e.memory.validation > 10.0 * e.memory.train_step, "{:?}", e.memory);
        assert_eq!(e.memory.driver(&s).0, "task.seq_len");
    }

    #[test]
    fn disk_grows_with_recorded_steps() {
        let s = spec(&serde_json::json!({"steps": 1000, "task": {"kind": "adding"}, "model": {"kind": "lstm"}}));
        let e = estimate(&s, CorpusSize::default());
        // No embedding for feature inputs: four tensors per layer and the head's two.
        assert_eq!(e.tensors, 10);
        // The forward signal (a mean and an RMS of each of the two layers) on every recorded
        // step, the spectral radius (2 layers × 4 gates) every hundredth step and the
        // temporal profile every tenth.
        let signal = 1000.0 * signal_row(&s);
        assert_eq!(signal, 1000.0 * (36.0 + 8.0 + 6.0 + 2.0 * 8.0));
        let seq = task_shape(&s.task, 1).3 as f64;
        assert_eq!(e.disk.probes, 10.0 * (36.0 + 8.0 + 8.0 + 8.0 * 4.0) + 100.0 * (36.0 + 8.0 + 4.0 + 4.0 * seq));
        let every_step = e.disk.records(1) - (e.disk.probes + signal) as u64;
        // Eight statistics a layer every step, a histogram every tenth (the default), and
        // the blocks: a 20-byte cell per layer and statistic for every 15 rows or so.
        assert!(every_step > 1000 * (10 * (8 * 4 + 51 * 4 / 10 + 8 * 20 / 15)) as u64);
        assert!(every_step < 1000 * (10 * (8 * 4 + 51 * 4 / 5 + 8 * 20 / 10)) as u64);
        assert!(e.disk.records(10) < every_step / 3);
        assert_eq!(e.disk.smallest_every(e.disk.records(10)), Some(10));
        assert_eq!(e.disk.smallest_every(1), None);
    }
}
