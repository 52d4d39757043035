//! One job from claim to final status: resolve its data, train it in a worker process (or,
//! in process, on a dedicated OS thread), write what it reports in batches, record how it
//! ended. A worker that dies ends its job `failed` with the cause, after everything it
//! had sent is recorded.

use std::any::Any;
use std::os::unix::process::ExitStatusExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow};
use futures::{SinkExt, StreamExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::data_dir::UploadFile;
use super::live::LiveMessage;
use super::service::find_corpus;
use super::wire::{self, FromWorker, StartJob, ToWorker};
use super::{Execution, Inner, JobControl, WorkerSettings};
use crate::spec::{TaskSpec, ValidSpec};
use crate::store::{Job, JobStatus, Progress};
use crate::train::checkpoint::Committed;
use crate::train::{self, Event, Outcome, RunContext, StepReport, StopFlag, StopReason, TrainEvent};
use crate::vocab::DiagnosisStatus;

/// Most messages written in one transaction.
const WRITE_BATCH: usize = 1024;
/// How long a report may wait for others to share its transaction. The metrics and the
/// live feed get every report at once; only the store's writes are batched, which spares
/// a transaction's fixed cost (and the SQLite thread's wake-ups, taken from the training's
/// cores) on every step.
const WRITE_INTERVAL: Duration = Duration::from_millis(250);
/// Messages the training thread may run ahead of the store writer. Past this, step
/// reports are dropped and counted rather than making training wait.
pub(crate) const QUEUE_CAPACITY: usize = 16 * 1024;
/// How long a worker asked to stop has to write its checkpoint and end before SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long a worker has after SIGTERM before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Lines of a dead worker's stderr its job's error quotes, and the most characters.
const STDERR_LINES: usize = 12;
const STDERR_CHARS: usize = 2000;

pub(super) async fn run(inner: &Inner, job: Job, control: Arc<JobControl>, gpu: Option<String>) {
    let id = job.id;
    tracing::info!(job = %id, name = %job.name, gpu = gpu.as_deref(), "job started");
    inner.metrics.job_running(id, &job.name, job.spec.model.kind.as_str(), job.spec.task.kind());
    let (status, error) = match train_and_record(inner, &job, &control, gpu).await {
        Ok(Outcome::Succeeded) => (JobStatus::Succeeded, None),
        Ok(Outcome::Cancelled) => (JobStatus::Cancelled, None),
        Ok(Outcome::Interrupted) => {
            (JobStatus::Interrupted, Some("the service shut down while the job was running".to_owned()))
        }
        Ok(Outcome::Diverged(message)) => (JobStatus::Diverged, Some(message)),
        Err(err) => (JobStatus::Failed, Some(format!("{err:#}"))),
    };
    tracing::info!(job = %id, status = status.as_str(), error = error.as_deref(), "job ended");
    if let Err(err) = inner.store.finish_job(id, status, error.as_deref()).await {
        tracing::error!(job = %id, "failed to record the end of the job: {err:#}");
    }
    inner.metrics.job_ended(id, status);
    // After the store: a subscriber told the job ended finds it ended.
    inner.live.open(id).publish(LiveMessage::Status { status, error: error.clone() });
    inner.live.close(id);
    // As recorded (its last step and diagnosis), or as claimed if it cannot be read back.
    let ended = match inner.store.job(id).await {
        Ok(Some(ended)) => ended,
        _ => Job { status, error, ..job },
    };
    inner.notifier.job_ended(&ended);
}

async fn train_and_record(
    inner: &Inner,
    job: &Job,
    control: &Arc<JobControl>,
    gpu: Option<String>,
) -> anyhow::Result<Outcome> {
    let ctx = RunContext {
        corpus: load_corpus(inner, &job.spec.task).await?,
        checkpoint: Some(inner.data.checkpoint(job.id)),
        resume: job.resumed_from.and_then(|s| u64::try_from(s).ok()),
        model: upload_file(inner, UploadFile::Model, job.spec.model.id.as_deref())?,
        dataset: upload_file(inner, UploadFile::Dataset, job.spec.task.dataset())?,
        ..RunContext::default()
    };
    match &inner.execution {
        Execution::InProcess => in_thread(inner, job, ctx, control).await,
        Execution::Workers(settings) => in_worker(inner, job, ctx, control, settings, gpu).await,
    }
}

/// A training thread's reports, as they come; the thread ends with the training.
pub(crate) struct TrainingThread {
    pub thread: std::thread::JoinHandle<anyhow::Result<Outcome>>,
    pub reports: mpsc::Receiver<TrainEvent>,
    /// Step reports dropped because the receiver was behind, not yet told.
    pub dropped: Arc<AtomicU64>,
}

/// Starts `train::train` on its own OS thread. `after_step` runs on that thread after
/// each step report is handed over.
pub(crate) fn spawn_training(
    name: &str,
    spec: ValidSpec,
    ctx: RunContext,
    flag: Arc<StopFlag>,
    mut after_step: impl FnMut(u64) + Send + 'static,
) -> anyhow::Result<TrainingThread> {
    let (tx, reports) = mpsc::channel(QUEUE_CAPACITY);
    let dropped = Arc::new(AtomicU64::new(0));
    let thread_dropped = dropped.clone();
    let thread = std::thread::Builder::new()
        .name(format!("train-{name}"))
        .spawn(move || {
            let mut emit = |event: TrainEvent| {
                let step = if let TrainEvent::Step(report) = &event { Some(report.step) } else { None };
                match tx.try_send(event) {
                    Ok(()) => {}
                    // Steps are many and the writer is behind: count the loss, never wait.
                    Err(TrySendError::Full(TrainEvent::Step(_))) => {
                        thread_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    // Rare and small: worth a short wait.
                    Err(TrySendError::Full(event)) => {
                        let _ = tx.blocking_send(event);
                    }
                    // The receiver only goes away once the job is over; nothing to do then.
                    Err(TrySendError::Closed(_)) => {}
                }
                if let Some(step) = step {
                    after_step(step);
                }
            };
            catch_unwind(AssertUnwindSafe(|| train::train(&spec, &ctx, &flag, &mut emit)))
                .unwrap_or_else(|panic| Err(anyhow!("training panicked: {}", panic_message(&*panic))))
        })
        .context("failed to start the training thread")?;
    Ok(TrainingThread { thread, reports, dropped })
}

/// Trains on a thread of this process.
async fn in_thread(
    inner: &Inner,
    job: &Job,
    mut ctx: RunContext,
    control: &Arc<JobControl>,
) -> anyhow::Result<Outcome> {
    let name = job.id.simple().to_string()[..8].to_owned();
    let committed = Committed::default();
    ctx.committed = Some(committed.clone());
    let TrainingThread { thread, mut reports, dropped } =
        spawn_training(&name, job.spec.clone(), ctx, control.flag.clone(), |_| {})?;
    let recorded = record(inner, job, &mut reports, &dropped, &|step| committed.advance(step)).await;
    if recorded.is_err() {
        // Nothing more can be kept: stop training, and drain so the thread never blocks.
        control.request(StopReason::Cancel);
        while reports.recv().await.is_some() {}
    }
    // The job is over only once its thread is: nothing of it may outlive the final status.
    let outcome = join_training(thread).await?;
    recorded?;
    outcome
}

/// Waits for a training thread off the async workers and gives what it returned.
pub(crate) async fn join_training(
    thread: std::thread::JoinHandle<anyhow::Result<Outcome>>,
) -> anyhow::Result<anyhow::Result<Outcome>> {
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .context("failed to wait for the training thread")?
        .map_err(|_| anyhow!("the training thread panicked"))
}

/// Trains in a worker process: sends it the job, records what it reports until its
/// stdout closes (everything a dying worker had written included), and tells how it ended.
async fn in_worker(
    inner: &Inner,
    job: &Job,
    ctx: RunContext,
    control: &Arc<JobControl>,
    settings: &WorkerSettings,
    gpu: Option<String>,
) -> anyhow::Result<Outcome> {
    let cuda = job.spec.device.starts_with("cuda") || gpu.is_some();
    let (child, stdin, stdout, stderr) = start_worker(inner, settings, gpu.as_deref(), cuda)?;
    let tail = tokio::spawn(stderr_tail(stderr, job.id));
    let mut to_worker = FramedWrite::new(stdin, wire::codec());
    let start = StartJob {
        name: job.name.clone(),
        spec: serde_json::to_string(&job.spec)?,
        corpus: ctx.corpus,
        checkpoint: ctx.checkpoint,
        resume: ctx.resume,
        model: ctx.model,
        dataset: ctx.dataset,
        gpu,
    };
    // A worker that died at once fails the send: its exit status says why.
    let sent = to_worker.send(wire::encode(&ToWorker::Start(Box::new(start)))?).await;
    if let Err(err) = &sent {
        tracing::warn!(job = %job.id, "could not send the job to its worker: {err}");
    }

    let (tx, mut reports) = mpsc::channel(QUEUE_CAPACITY);
    let dropped = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(read_reports(FramedRead::new(stdout, wire::codec()), tx, dropped.clone()));
    // The steps the store committed, passed on to the worker by its supervisor.
    let (commits, told) = watch::channel(0);
    let supervisor = tokio::spawn(supervise(child, to_worker, control.clone(), told));

    let recorded = record(inner, job, &mut reports, &dropped, &|step| {
        commits.send_if_modified(|last| {
            let later = step > *last;
            *last = (*last).max(step);
            later
        });
    })
    .await;
    if recorded.is_err() {
        control.request(StopReason::Cancel);
        while reports.recv().await.is_some() {}
    }
    let ended = reader.await.context("the worker's reader failed")?;
    let (status, forced) = supervisor.await.context("the worker's supervisor failed")??;
    let tail = tokio::time::timeout(Duration::from_secs(2), tail).await.ok().and_then(Result::ok).unwrap_or_default();
    recorded?;
    match ended {
        Some(Ok(outcome)) => Ok(outcome),
        Some(Err(message)) => Err(anyhow!(message)),
        // Stopped by force after a stop request: the request decides, as if it had stopped.
        None if forced => Ok(match control.flag.requested() {
            Some(StopReason::Cancel) => Outcome::Cancelled,
            _ => Outcome::Interrupted,
        }),
        None => Err(anyhow!(death(status, &tail))),
    }
}

/// A worker with its pipes: the spare CPU worker where there is one (a CPU job or a
/// check), else a fresh one; the next spare starts at once, while this one works.
pub(super) fn start_worker(
    inner: &Inner,
    settings: &WorkerSettings,
    gpu: Option<&str>,
    cuda: bool,
) -> anyhow::Result<(Child, ChildStdin, ChildStdout, ChildStderr)> {
    let spare = if cuda { None } else { take_spare(inner) };
    let mut child = match spare {
        Some(child) => child,
        None => worker_command(settings, gpu, cuda)
            .spawn()
            .with_context(|| format!("failed to start a worker ({})", settings.binary.display()))?,
    };
    refill_spare(inner);
    let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        anyhow::bail!("the worker's pipes were not opened");
    };
    Ok((child, stdin, stdout, stderr))
}

/// Starts a spare CPU worker if there is none (workers only, not during shutdown). It
/// loads LibTorch and waits on its stdin for a job.
pub(super) fn refill_spare(inner: &Inner) {
    let Execution::Workers(settings) = &inner.execution else { return };
    // A node that never trains (`--max-jobs 0`) keeps no spare.
    if inner.shutdown.is_cancelled() || inner.max_jobs == 0 {
        return;
    }
    let mut spare = inner.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if spare.is_none() {
        match worker_command(settings, None, false).spawn() {
            Ok(child) => *spare = Some(child),
            Err(err) => tracing::warn!("failed to start a spare worker ({}): {err}", settings.binary.display()),
        }
    }
}

/// The spare worker, if it is still alive.
pub(super) fn take_spare(inner: &Inner) -> Option<Child> {
    let mut child = inner.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()?;
    match child.try_wait() {
        Ok(None) => Some(child),
        // It died idle (the OOM killer, an operator): a fresh one trains the job.
        Ok(Some(_)) | Err(_) => None,
    }
}

/// The `gradscope worker` command for one job.
pub(super) fn worker_command(settings: &WorkerSettings, gpu: Option<&str>, cuda: bool) -> Command {
    let mut command = Command::new(&settings.binary);
    let threads = settings.torch_threads.to_string();
    command.arg("worker").arg("--torch-threads").arg(&threads);
    // The CUDA driver reserves far more address space than it uses.
    if let Some(bytes) = settings.memory.filter(|_| !cuda) {
        command.arg("--memory").arg(bytes.to_string());
    }
    command.env("OMP_NUM_THREADS", &threads).env("MKL_NUM_THREADS", &threads);
    // OpenMP threads that spin while they wait starve other workers' threads on cores
    // they share.
    if settings.passive_wait {
        command.env("OMP_WAIT_POLICY", "PASSIVE");
    }
    // Only its own GPU, or none for a CPU job on a machine with GPUs.
    if let Some(gpu) = gpu {
        command.env("CUDA_VISIBLE_DEVICES", gpu);
    } else if !settings.gpus.is_empty() {
        command.env("CUDA_VISIBLE_DEVICES", "");
    }
    // The service's secrets are none of a job's business.
    command.env_remove("GRADSCOPE_API_TOKEN").env_remove("GRADSCOPE_METRICS_TOKEN");
    command.envs(settings.env.iter().map(|(k, v)| (k, v)));
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    // Its own process group: a terminal's Ctrl-C goes to the service, which stops the job
    // in order, not to the worker, which would die of it.
    command.process_group(0);
    command
}

/// Decodes a worker's reports into the store writer's channel until its stdout closes;
/// returns how the worker said training ended, if it said so.
async fn read_reports<R: AsyncRead + Unpin>(
    mut frames: FramedRead<R, LengthDelimitedCodec>,
    tx: mpsc::Sender<TrainEvent>,
    dropped: Arc<AtomicU64>,
) -> Option<Result<Outcome, String>> {
    let mut ended = None;
    while let Some(frame) = frames.next().await {
        let message = match frame.map_err(anyhow::Error::from).and_then(|f| wire::decode::<FromWorker>(&f)) {
            Ok(message) => message,
            // A worker killed mid-write leaves a partial frame: everything before it counts.
            Err(err) => {
                tracing::warn!("a worker's report stream broke off: {err:#}");
                break;
            }
        };
        let event = match message {
            FromWorker::Started { device, layers } => TrainEvent::Started { device, layers },
            FromWorker::Step(report) => TrainEvent::Step(report),
            FromWorker::Event(event) => TrainEvent::Event(event),
            FromWorker::Diagnosis(json) => match serde_json::from_str(&json) {
                Ok(diagnosis) => TrainEvent::Diagnosis(diagnosis),
                Err(err) => {
                    tracing::warn!("a worker sent an unreadable diagnosis: {err}");
                    continue;
                }
            },
            FromWorker::Dropped(n) => {
                dropped.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            FromWorker::Ended(result) => {
                ended = Some(result);
                continue;
            }
            FromWorker::Checked(_) => {
                tracing::warn!("a training worker answered a check it was never sent");
                continue;
            }
        };
        if tx.send(event).await.is_err() {
            // The writer gave up: read on, so the worker is never blocked on its pipe.
            continue;
        }
    }
    ended
}

/// Waits for the worker to exit, telling it each step the store commits until a stop is
/// requested. A stop request goes to it as a message; if it has not ended after
/// [`STOP_GRACE`] it gets SIGTERM, and [`KILL_GRACE`] later SIGKILL. Returns its exit
/// status and whether it was signalled.
async fn supervise(
    mut child: Child,
    mut to_worker: FramedWrite<ChildStdin, LengthDelimitedCodec>,
    control: Arc<JobControl>,
    mut committed: watch::Receiver<u64>,
) -> anyhow::Result<(ExitStatus, bool)> {
    let pid = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
    let escalate = async {
        let reason = loop {
            tokio::select! {
                reason = control.requested() => break reason,
                Ok(()) = committed.changed() => {
                    let step = *committed.borrow_and_update();
                    // A worker that has gone is seen by its exit.
                    if let Ok(frame) = wire::encode(&ToWorker::Committed(step)) {
                        let _ = to_worker.send(frame).await;
                    }
                }
            }
        };
        if let Ok(frame) = wire::encode(&ToWorker::Stop(reason)) {
            let _ = to_worker.send(frame).await;
        }
        tokio::time::sleep(STOP_GRACE).await;
        if let Some(pid) = pid {
            tracing::warn!(pid = pid.as_raw(), "a worker did not stop when asked: SIGTERM");
            let _ = kill(pid, Signal::SIGTERM);
        }
        tokio::time::sleep(KILL_GRACE).await;
    };
    tokio::select! {
        status = child.wait() => Ok((status.context("failed to wait for a worker")?, false)),
        () = escalate => {
            tracing::warn!("a worker did not end after SIGTERM: SIGKILL");
            child.start_kill().context("failed to kill a worker")?;
            Ok((child.wait().await.context("failed to wait for a worker")?, true))
        }
    }
    .map(|(status, killed)| (status, killed || (control.flag.requested().is_some() && status.signal().is_some())))
}

/// How a worker that never said how training ended died, with the end of its stderr.
pub(super) fn death(status: ExitStatus, tail: &str) -> String {
    let cause = match (status.signal(), status.code()) {
        (Some(signal), _) => {
            let name = Signal::try_from(signal).map_or("unknown signal", Signal::as_str);
            format!("worker killed by signal {signal} ({name})")
        }
        (None, Some(code)) => format!("worker exited with code {code} before the job ended"),
        (None, None) => "worker ended without an exit status".to_owned(),
    };
    if tail.is_empty() { cause } else { format!("{cause}; its last output: {tail}") }
}

/// LibTorch's deprecation warnings for the `at::autocast` calls of the `tch` binding,
/// printed five times a step by an fp16 job on CUDA: nothing a user can act on, so
/// neither logged nor quoted in a job's error, where they would bury what matters.
fn is_binding_noise(line: &str) -> bool {
    line.contains("Warning: at::autocast::") && line.contains(" is deprecated")
}

/// Logs a worker's stderr and keeps its last lines, bounded, for the job's error. Reads
/// to the end whatever it holds, so the worker never blocks on a full pipe. `job` names
/// the job (or check) in the log.
pub(super) async fn stderr_tail<R: AsyncRead + Unpin>(stderr: R, job: impl std::fmt::Display) -> String {
    let mut reader = BufReader::new(stderr);
    let mut last = std::collections::VecDeque::with_capacity(STDERR_LINES);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line: String = String::from_utf8_lossy(&buf).trim_end().chars().take(STDERR_CHARS).collect();
        if line.is_empty() || is_binding_noise(&line) {
            continue;
        }
        tracing::warn!(job = %job, "worker: {line}");
        if last.len() == STDERR_LINES {
            last.pop_front();
        }
        last.push_back(line);
    }
    let joined = last.into_iter().collect::<Vec<_>>().join(" | ");
    // The end matters most: keep the last characters.
    let skip = joined.chars().count().saturating_sub(STDERR_CHARS);
    if skip == 0 { joined } else { format!("…{}", joined.chars().skip(skip).collect::<String>()) }
}

/// Hands each report to the metrics and the live feed as it comes, and writes them to the
/// store in batches: whatever has come in [`WRITE_INTERVAL`] after the first unwritten
/// report, or [`WRITE_BATCH`] messages, in one transaction; the rest once the reports end.
/// The report of a `checkpoint_every` step is written at once, and `committed` told the
/// last step each write holds, so that the training side knows the checkpoint it just
/// wrote is committed well before its next one (see [`crate::train::checkpoint`]).
async fn record(
    inner: &Inner,
    job: &Job,
    rx: &mut mpsc::Receiver<TrainEvent>,
    dropped: &AtomicU64,
    committed: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<()> {
    let mut messages = Vec::with_capacity(WRITE_BATCH);
    let mut pending = Pending::default();
    let live = inner.live.open(job.id);
    // Every run's diagnosis starts healthy; a change of status is notified.
    let mut status = DiagnosisStatus::Healthy;
    let mut step = 0;
    // When the oldest unwritten report must be written; `None` while nothing waits.
    let mut due: Option<Instant> = None;
    let every = job.spec.checkpoint_every;
    loop {
        let received = match due {
            None => Some(rx.recv_many(&mut messages, WRITE_BATCH).await),
            Some(due) => tokio::time::timeout_at(due, rx.recv_many(&mut messages, WRITE_BATCH)).await.ok(),
        };
        let ended = received == Some(0);
        let mut checkpointed = false;
        for message in messages.drain(..) {
            match message {
                TrainEvent::Started { device, layers } => {
                    inner.store.set_job_started(job.id, &device, &layers).await.context("failed to record layers")?;
                    let spec = &job.spec;
                    inner.metrics.job_started(
                        job.id,
                        &job.name,
                        spec.model.kind.as_str(),
                        spec.task.kind(),
                        &layers,
                        spec.monitor.prometheus_layers,
                    );
                }
                TrainEvent::Step(report) => {
                    inner.metrics.record_step(job.id, &report);
                    live.publish(LiveMessage::Step(report.clone()));
                    step = report.step;
                    checkpointed |= every > 0 && step.is_multiple_of(every);
                    pending.steps.push(report);
                }
                TrainEvent::Event(event) => pending.fresh_events.push(event),
                // Validation results travel as events: live, stored and counted with them.
                TrainEvent::Eval(eval) => pending.fresh_events.extend(eval.events()),
                TrainEvent::Diagnosis(d) => {
                    if d.status != status {
                        inner.notifier.diagnosis_changed(job, step, status, &d);
                        status = d.status;
                    }
                    inner.metrics.record_diagnosis(job.id, &d);
                    pending.diagnosis = Some(d);
                }
            }
            for event in pending.fresh_events.drain(..) {
                inner.metrics.record_event(job.id, &event);
                live.publish(LiveMessage::Event(event.clone()));
                pending.events.push(event);
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            inner.metrics.record_dropped(job.id, lost);
            pending.dropped += lost;
        }
        let full = pending.steps.len() + pending.events.len() >= WRITE_BATCH;
        if ended || received.is_none() || full || checkpointed {
            pending.write(inner, job).await?;
            due = None;
            if step > 0 {
                committed(step);
            }
        } else if due.is_none() && !pending.is_empty() {
            due = Some(Instant::now() + WRITE_INTERVAL);
        }
        if ended {
            return Ok(());
        }
    }
}

/// What has come in since the store's last write.
#[derive(Default)]
struct Pending {
    steps: Vec<StepReport>,
    events: Vec<Event>,
    /// Events of the message at hand, before they are counted and published.
    fresh_events: Vec<Event>,
    /// The latest diagnosis, if one came.
    diagnosis: Option<train::diagnose::Diagnosis>,
    dropped: u64,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.events.is_empty() && self.diagnosis.is_none() && self.dropped == 0
    }

    /// Writes it all in one transaction, and starts afresh.
    async fn write(&mut self, inner: &Inner, job: &Job) -> anyhow::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let progress = Progress {
            steps: &self.steps,
            events: &self.events,
            diagnosis: self.diagnosis.as_ref(),
            dropped: self.dropped,
        };
        inner.store.record_progress(job.id, &progress).await.context("failed to record progress")?;
        self.steps.clear();
        self.events.clear();
        self.diagnosis = None;
        self.dropped = 0;
        Ok(())
    }
}

/// The file of the uploaded model or data set `id` names, if it names one.
fn upload_file(inner: &Inner, kind: UploadFile, id: Option<&str>) -> anyhow::Result<Option<std::path::PathBuf>> {
    let Some(id) = id else { return Ok(None) };
    Ok(Some(inner.data.upload(kind, uuid::Uuid::parse_str(id).with_context(|| format!("no upload {id}"))?)))
}

async fn load_corpus(inner: &Inner, task: &TaskSpec) -> anyhow::Result<String> {
    let Some(name) = task.corpus() else { return Ok(String::new()) };
    let corpus = find_corpus(&inner.store, name).await?.with_context(|| format!("no corpus {name}"))?;
    corpus.text(&inner.data).await
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_worker_is_described_by_its_signal_or_exit_code_and_its_last_words() {
        // A wait status: the signal in the low bits, or the exit code in the next byte.
        assert_eq!(death(ExitStatus::from_raw(6), ""), "worker killed by signal 6 (SIGABRT)");
        assert_eq!(
            death(ExitStatus::from_raw(9), "a | b"),
            "worker killed by signal 9 (SIGKILL); its last output: a | b"
        );
        assert_eq!(death(ExitStatus::from_raw(3 << 8), ""), "worker exited with code 3 before the job ended");
    }

    #[tokio::test]
    async fn the_stderr_tail_keeps_the_last_lines_within_bounds() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let tail = stderr_tail(text.as_bytes(), uuid::Uuid::nil()).await;
        assert!(tail.starts_with("line 88 | "), "{tail}");
        assert!(tail.ends_with("line 99"), "{tail}");
        let long = "x".repeat(10 * STDERR_CHARS) + "\n";
        let tail = stderr_tail(long.as_bytes(), uuid::Uuid::nil()).await;
        assert!(tail.chars().count() <= STDERR_CHARS + 1, "{}", tail.len());
        // Bytes that are not UTF-8 neither stop the reading nor hide what follows.
        let tail = stderr_tail(&b"\xff\xfe\nlast words\n"[..], uuid::Uuid::nil()).await;
        assert!(tail.ends_with("last words"), "{tail}");
        // The binding's autocast deprecation warnings, as an fp16 job on CUDA prints them,
        // are left out; LibTorch's other warnings are kept.
        let noise = "[W1127 15:56:26.964636189 autocast_mode.h:39] Warning: at::autocast::set_enabled(enabled) \
                     is deprecated. Please use at::autocast::set_autocast_enabled(at::kCUDA, enabled) instead. \
                     (function set_enabled)";
        let other = "[W1127 15:56:27.000000000 ReduceOps.cpp:1831] Warning: std(): degrees of freedom is <= 0.";
        let text = format!("{other}\n{noise}\n{noise}\n");
        assert_eq!(stderr_tail(text.as_bytes(), uuid::Uuid::nil()).await, other);
    }
}
