//! The worker process, `gradscope worker`: trains the one job the scheduler sends on its
//! stdin and reports on its stdout, in [`super::wire`]'s frames; its stderr is its log.
//! A LibTorch abort, a segfault or the memory limit ends this process and fails its job,
//! never the service or another job.
//!
//! It applies its memory limit first, before LibTorch allocates anything; it dies with
//! the process that started it (`PR_SET_PDEATHSIG`), and stops as at shutdown when its
//! stdin closes, so no worker outlives its service.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{Signal, raise};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::runner::{TrainingThread, join_training, spawn_training};
use super::wire::{self, FromWorker, StartJob, ToWorker};
use crate::spec::{JobSpec, ValidSpec};
use crate::train::checkpoint::Committed;
use crate::train::user::Check;
use crate::train::{Outcome, RunContext, StopFlag, StopReason, TrainEvent};

/// What `gradscope worker` is given on its command line.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// LibTorch's CPU threads.
    pub torch_threads: Option<i32>,
    /// Address-space limit, in bytes (`RLIMIT_AS`).
    pub memory: Option<u64>,
}

/// How long a worker whose scheduler went away has to write its checkpoint and end.
const ORPHAN_GRACE: Duration = Duration::from_secs(30);
/// Most reports written between two flushes of the pipe.
const WRITE_BATCH: usize = 1024;

/// The test-only fault hook (see [`Fault`]). The scheduler never sets it: only the
/// environment the service itself was started with, or a test's, reaches the worker.
pub const FAULT_VAR: &str = "GRADSCOPE_TEST_FAULT";

/// Runs the worker until its job ends. Returns the process's exit code: the caller exits
/// at once (the blocking read of stdin cannot be cancelled).
pub async fn run(options: &WorkerOptions) -> i32 {
    match serve(options).await {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("gradscope worker: {err:#}");
            1
        }
    }
}

async fn serve(options: &WorkerOptions) -> anyhow::Result<()> {
    if let Some(bytes) = options.memory {
        setrlimit(Resource::RLIMIT_AS, bytes, bytes).context("failed to limit the worker's address space")?;
    }
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("failed to tie the worker to its service")?;
    if let Some(threads) = options.torch_threads {
        tch::set_num_threads(threads);
    }
    let mut input = FramedRead::new(tokio::io::stdin(), wire::codec());
    let mut output = FramedWrite::new(tokio::io::stdout(), wire::codec());
    let Some(frame) = input.next().await else { return Ok(()) };
    let job = match wire::decode(&frame.context("failed to read the job")?)? {
        ToWorker::Start(job) => job,
        ToWorker::Check(check) => return answer_check(check, &mut output).await,
        ToWorker::Stop(_) | ToWorker::Committed(_) => bail!("the first message must be a job or a check"),
    };
    let flag = Arc::new(StopFlag::default());
    let committed = Committed::default();
    tokio::spawn(listen(input, flag.clone(), committed.clone()));
    let ended = train(*job, &flag, committed, &mut output).await.map_err(|err| format!("{err:#}"));
    output.send(wire::encode(&FromWorker::Ended(ended))?).await.context("failed to report the end")?;
    Ok(())
}

/// Runs a check of an uploaded module and answers what it found. A module that makes
/// LibTorch abort ends this process: the service tells the client so.
async fn answer_check<W: AsyncWrite + Unpin>(
    check: Check,
    output: &mut FramedWrite<W, LengthDelimitedCodec>,
) -> anyhow::Result<()> {
    let fault = Fault::from_env_for_check(check.name());
    let checked = tokio::task::spawn_blocking(move || {
        if let Some(fault) = fault {
            fault.fire();
        }
        check.run()
    })
    .await
    .context("the check panicked")?;
    output.send(wire::encode(&FromWorker::Checked(checked))?).await.context("failed to answer the check")
}

/// Applies the scheduler's stop requests and passes on the steps its store committed.
/// When the scheduler goes away (stdin closes), stops as at shutdown, and ends the process
/// if training has not ended in time.
async fn listen<R: AsyncRead + Unpin>(
    mut input: FramedRead<R, LengthDelimitedCodec>,
    flag: Arc<StopFlag>,
    committed: Committed,
) {
    while let Some(frame) = input.next().await {
        match frame.map_err(anyhow::Error::from).and_then(|f| wire::decode::<ToWorker>(&f)) {
            Ok(ToWorker::Stop(reason)) => flag.request(reason),
            Ok(ToWorker::Committed(step)) => committed.advance(step),
            Ok(ToWorker::Start(_) | ToWorker::Check(_)) => {
                tracing::warn!("a worker trains one job: a second was ignored");
            }
            Err(err) => {
                tracing::warn!("the scheduler's messages broke off: {err:#}");
                break;
            }
        }
    }
    flag.request(StopReason::Shutdown);
    tokio::time::sleep(ORPHAN_GRACE).await;
    eprintln!("gradscope worker: the service went away and the job did not stop in time");
    std::process::exit(1);
}

/// The job's spec as this worker trains it: with a GPU of its own, the spec's CUDA device
/// is the only one the worker sees.
fn worker_spec(job: &StartJob) -> anyhow::Result<ValidSpec> {
    let mut value: serde_json::Value = serde_json::from_str(&job.spec).context("the job's spec is not JSON")?;
    if job.gpu.is_some()
        && let Some(device) = value.get_mut("device")
        && device.as_str().is_some_and(|d| d.starts_with("cuda"))
    {
        *device = serde_json::Value::from("cuda");
    }
    JobSpec::parse_value(&value).map_err(|err| anyhow::anyhow!("invalid spec: {err}"))
}

async fn train<W: AsyncWrite + Unpin>(
    job: StartJob,
    flag: &Arc<StopFlag>,
    committed: Committed,
    output: &mut FramedWrite<W, LengthDelimitedCodec>,
) -> anyhow::Result<Outcome> {
    let spec = worker_spec(&job)?;
    // This process trains this job alone: its seed is the only one LibTorch sees.
    tch::manual_seed(spec.seed as i64);
    // A resumed job runs clean, so a test can resume what a fault stopped.
    let fault = if job.resume.is_none() { Fault::from_env(&job.name) } else { None };
    let ctx = RunContext {
        corpus: job.corpus,
        checkpoint: job.checkpoint,
        resume: job.resume,
        committed: Some(committed),
        model: job.model,
        dataset: job.dataset,
        ..RunContext::default()
    };
    let written = Arc::new(AtomicU64::new(0));
    let hook_written = written.clone();
    let TrainingThread { thread, mut reports, dropped } =
        spawn_training("worker", spec, ctx, flag.clone(), move |step| {
            if let Some(fault) = &fault {
                fault.fire_at(step, &hook_written);
            }
        })?;
    let sent = forward(&mut reports, &dropped, output, &written, job.gpu.as_deref()).await;
    if sent.is_err() {
        // No one to report to: stop, and drain so the training thread never blocks.
        flag.request(StopReason::Shutdown);
        while reports.recv().await.is_some() {}
    }
    let outcome = join_training(thread).await?;
    sent?;
    outcome
}

/// Writes the training thread's reports to stdout as they come, flushing after each
/// batch; `written` is the last step flushed.
async fn forward<W: AsyncWrite + Unpin>(
    reports: &mut mpsc::Receiver<TrainEvent>,
    dropped: &AtomicU64,
    output: &mut FramedWrite<W, LengthDelimitedCodec>,
    written: &AtomicU64,
    gpu: Option<&str>,
) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let write_err = "failed to write to the scheduler";
    while reports.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let mut last_step = None;
        for event in batch.drain(..) {
            let messages = match event {
                TrainEvent::Started { device, layers } => {
                    // The device as the service names it: the GPU it gave this worker.
                    let device = match gpu {
                        Some(gpu) if device.starts_with("cuda") => format!("cuda:{gpu}"),
                        _ => device,
                    };
                    vec![FromWorker::Started { device, layers }]
                }
                TrainEvent::Step(report) => {
                    last_step = Some(report.step);
                    vec![FromWorker::Step(report)]
                }
                TrainEvent::Event(event) => vec![FromWorker::Event(event)],
                TrainEvent::Eval(eval) => eval.events().into_iter().map(FromWorker::Event).collect(),
                TrainEvent::Diagnosis(diagnosis) => vec![FromWorker::diagnosis(&diagnosis)?],
            };
            for message in messages {
                output.feed(wire::encode(&message)?).await.context(write_err)?;
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            output.feed(wire::encode(&FromWorker::Dropped(lost))?).await.context(write_err)?;
        }
        SinkExt::<bytes::Bytes>::flush(output).await.context(write_err)?;
        if let Some(step) = last_step {
            written.store(step, Ordering::SeqCst);
        }
    }
    Ok(())
}

/// A fault the test suite injects into a worker, through [`FAULT_VAR`]:
/// `KIND@stepN` or `KIND@stepN@JOB_NAME` (only the job of that name), `KIND` one of
/// `abort` (SIGABRT, as a LibTorch assert), `segv` (SIGSEGV), `oom` (allocates without
/// bound until the allocator fails) or `hang` (sleeps for ever). It fires once step `N`
/// has been sent to the scheduler, so the test knows which steps must have been kept, and
/// only in a job's first run, not when it is resumed. `KIND@check` fires instead in a
/// worker that checks an upload, before the check runs; `KIND@check@model` or
/// `KIND@check@dry_run` only in that check. For tests only: the API cannot set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fault {
    kind: FaultKind,
    /// The step it fires after; `None`: it fires in a check.
    step: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    Abort,
    Segv,
    Oom,
    Hang,
}

impl Fault {
    fn from_env(job: &str) -> Option<Self> {
        Self::announce(Self::parse(&std::env::var(FAULT_VAR).ok()?, job).filter(|f| f.step.is_some()))
    }

    fn from_env_for_check(check: &str) -> Option<Self> {
        Self::announce(Self::parse(&std::env::var(FAULT_VAR).ok()?, check).filter(|f| f.step.is_none()))
    }

    fn announce(fault: Option<Self>) -> Option<Self> {
        if fault.is_some() {
            tracing::warn!("{FAULT_VAR} is set: this worker will fail on purpose");
        }
        fault
    }

    /// `value` for the job or check called `name`.
    fn parse(value: &str, name: &str) -> Option<Self> {
        let mut parts = value.splitn(3, '@');
        let kind = match parts.next()? {
            "abort" => FaultKind::Abort,
            "segv" => FaultKind::Segv,
            "oom" => FaultKind::Oom,
            "hang" => FaultKind::Hang,
            _ => return None,
        };
        let step = match parts.next()? {
            "check" => None,
            at => Some(at.strip_prefix("step")?.parse().ok()?),
        };
        match parts.next() {
            Some(only) if only != name => None,
            _ => Some(Self { kind, step }),
        }
    }

    /// On the training thread, after step `step` was handed over.
    fn fire_at(&self, step: u64, written: &AtomicU64) {
        if self.step != Some(step) {
            return;
        }
        let start = Instant::now();
        while written.load(Ordering::SeqCst) < step && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.fire();
    }

    /// Fails the process now, as the fault's kind says.
    fn fire(&self) {
        match self.kind {
            FaultKind::Abort => std::process::abort(),
            FaultKind::Segv => {
                // No core file for a fault made on purpose.
                let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
                // The first may be taken by the standard library's stack-overflow
                // handler, which restores the default action and returns.
                let _ = raise(Signal::SIGSEGV);
                let _ = raise(Signal::SIGSEGV);
                std::process::abort();
            }
            FaultKind::Oom => {
                let mut held: Vec<Vec<u8>> = Vec::new();
                loop {
                    held.push(vec![0u8; 64 << 20]);
                    std::hint::black_box(&held);
                }
            }
            FaultKind::Hang => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_name_their_job() {
        assert_eq!(Fault::parse("abort@step5", "any"), Some(Fault { kind: FaultKind::Abort, step: Some(5) }));
        assert_eq!(Fault::parse("segv@step2@victim", "victim"), Some(Fault { kind: FaultKind::Segv, step: Some(2) }));
        assert_eq!(Fault::parse("oom@step2@victim", "bystander"), None);
        assert_eq!(Fault::parse("oom@5", "any"), None);
        assert_eq!(Fault::parse("explode@step5", "any"), None);
        assert_eq!(Fault::parse("segv@check", "model"), Some(Fault { kind: FaultKind::Segv, step: None }));
        assert_eq!(Fault::parse("hang@check@dry_run", "dry_run"), Some(Fault { kind: FaultKind::Hang, step: None }));
        assert_eq!(Fault::parse("abort@check@dry_run", "model"), None);
    }

    #[test]
    fn a_gpu_worker_trains_on_its_only_device() {
        let spec = serde_json::json!({"model": {"kind": "mlp"}, "device": "cuda:3", "steps": 2});
        let job = |gpu: Option<&str>| StartJob {
            name: "j".to_owned(),
            spec: spec.to_string(),
            corpus: String::new(),
            checkpoint: None,
            resume: None,
            model: None,
            dataset: None,
            gpu: gpu.map(str::to_owned),
        };
        assert_eq!(worker_spec(&job(Some("3"))).expect("spec").device, "cuda");
        assert_eq!(worker_spec(&job(None)).expect("spec").device, "cuda:3");
    }
}
