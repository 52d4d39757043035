//! Jobs: what clients may ask of them, and the scheduler that runs them. The scheduler
//! claims queued jobs from the store, runs at most `max_jobs` at once, each in its own
//! worker process (or, for `gradscope run`, on its own OS thread), owns their stop
//! requests and GPUs, and turns what they report into store writes.
//!
//! - [`service`] — [`Jobs`]: submit, cancel, resume, delete, follow; corpora and their
//!   resolution. The HTTP handlers and `gradscope run` call it.
//! - [`experiments`] — experiments: submit, read, results, cancel, delete (on [`Jobs`]).
//! - [`results`] — an experiment's figures per job and per cell, as JSON and CSV.
//! - [`data_dir`] — [`DataDir`]: checkpoints, resume files and corpora on disk.
//! - [`Scheduler`] — claims and runs queued jobs (notify, cancel, shut down).
//! - [`runner`] — one job from claim to final status.
//! - [`check`] — checks of an uploaded model, each in a worker process of its own.
//! - [`worker`] — the worker process: one job, reporting over its stdout.
//! - [`wire`] — the messages between the scheduler and a worker, and their framing.
//! - [`live`] — the live feed of each running job.
//! - [`nodes`] — this node among others: heartbeat, leases, takeover of lost nodes' jobs.

mod check;
pub mod data_dir;
pub mod experiments;
pub mod live;
pub mod nodes;
pub mod relay;
pub mod results;
mod runner;
pub mod service;
pub mod wire;
pub mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use self::data_dir::DataDir;
use self::live::{LiveHub, LiveJob};
pub use self::nodes::NodeSettings;
pub use self::service::{CorpusLimits, JobLimits, Jobs, ServiceError};
use crate::config::DEFAULT_STREAM_BACKLOG;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::spec::{DeviceChoice, parse_device};
use crate::store::{Job, JobStatus, Store};
use crate::train::{StopFlag, StopReason};

/// Where jobs train.
#[derive(Debug, Clone)]
pub enum Execution {
    /// On an OS thread of this process (`gradscope run`): a LibTorch abort ends the
    /// process.
    InProcess,
    /// Each in its own worker process: a worker that dies fails its job alone.
    Workers(WorkerSettings),
}

/// How worker processes are started.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The `gradscope` executable (its `worker` command).
    pub binary: PathBuf,
    /// LibTorch's CPU threads in each worker.
    pub torch_threads: i32,
    /// Whether OpenMP's idle threads sleep (`OMP_WAIT_POLICY=PASSIVE`) rather than spin:
    /// when the workers' threads together outnumber the cores, spinning threads starve the
    /// others; when they fit, spinning is much faster for small operations.
    pub passive_wait: bool,
    /// Each worker's address-space limit, in bytes (`None`: unlimited). Not applied to
    /// CUDA jobs: the CUDA driver reserves far more address space than it uses.
    pub memory: Option<u64>,
    /// The GPUs jobs may use (`CUDA_VISIBLE_DEVICES` entries), one job per GPU.
    pub gpus: Vec<String>,
    /// Extra environment variables for every worker.
    pub env: Vec<(String, String)>,
    /// How long a worker that checks an upload may take before it is killed.
    pub check_timeout: std::time::Duration,
}

/// A running job's stop request, which its runner forwards to the training.
#[derive(Debug, Default)]
pub(crate) struct JobControl {
    flag: Arc<StopFlag>,
    changed: Notify,
}

impl JobControl {
    /// Asks the job to stop. The first reason given wins.
    pub(crate) fn request(&self, reason: StopReason) {
        self.flag.request(reason);
        self.changed.notify_one();
    }

    /// Resolves once a stop has been requested, with its reason.
    pub(crate) async fn requested(&self) -> StopReason {
        loop {
            if let Some(reason) = self.flag.requested() {
                return reason;
            }
            self.changed.notified().await;
        }
    }
}

/// The GPUs no job holds, one job per GPU.
#[derive(Debug, Default)]
struct GpuPool {
    /// Every GPU jobs may use.
    all: Vec<String>,
    free: std::sync::Mutex<Vec<String>>,
}

impl GpuPool {
    fn new(gpus: Vec<String>) -> Self {
        let free = gpus.iter().rev().cloned().collect();
        Self { all: gpus, free: std::sync::Mutex::new(free) }
    }

    fn free_count(&self) -> usize {
        self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// A free GPU, lowest first.
    fn take(&self) -> Option<String> {
        self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop()
    }

    fn give_back(&self, gpu: String) {
        let mut free = self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        free.push(gpu);
        // Lowest first again, whatever order jobs end in.
        let order = |g: &String| self.all.iter().position(|a| a == g);
        free.sort_by_key(|g| std::cmp::Reverse(order(g)));
    }

    /// Whether a job on `device` needs a GPU of its own: CUDA always, `auto` when this
    /// machine has GPUs for jobs (it would train on one).
    fn needs_gpu(&self, device: &str) -> bool {
        match parse_device(device) {
            Some(DeviceChoice::Cuda(_)) => true,
            Some(DeviceChoice::Auto) => !self.all.is_empty(),
            Some(DeviceChoice::Cpu) | None => false,
        }
    }

    /// The first of `queued` (oldest first, by device) that can start now: any job while
    /// a GPU is free, else the first that needs none.
    fn first_runnable<'a, T>(&self, queued: &'a [(T, &str)]) -> Option<&'a T> {
        let free = self.free_count() > 0;
        queued.iter().find(|(_, device)| free || !self.needs_gpu(device)).map(|(job, _)| job)
    }
}

/// What a cancel request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelOutcome {
    /// Queued: cancelled at once. Running: it stops before its next step.
    Accepted,
    NotFound,
    AlreadyFinished(JobStatus),
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    /// Where checkpoints and uploaded corpora live.
    data: DataDir,
    /// Most jobs running at once; 0: this node claims none (an API-only node).
    max_jobs: usize,
    /// Workers or threads.
    execution: Execution,
    /// The GPUs jobs may use (none in process).
    gpus: GpuPool,
    /// A CPU worker started ahead of its job (workers only), so that a job need not wait
    /// for a process to start and load LibTorch.
    spare: std::sync::Mutex<Option<tokio::process::Child>>,
    /// The lane (experiment id, or `""` for single jobs) of the job claimed last: the next
    /// claim takes the lane after it, round-robin, so experiments and single jobs take
    /// turns for the slots.
    lane: std::sync::Mutex<String>,
    /// Stop requests of the running jobs. Held across claiming a job and registering it,
    /// so a cancel never finds a job running but unregistered.
    running: Mutex<HashMap<Uuid, Arc<JobControl>>>,
    /// Wakes the dispatcher when a job is queued or a slot frees up.
    wake: Notify,
    /// Cancelled when the service shuts down: running jobs stop and end `interrupted`.
    shutdown: CancellationToken,
    /// Every job task, so shutdown can wait for them to record their final status.
    tracker: TaskTracker,
    /// Live feeds of the running jobs.
    live: LiveHub,
    /// Prometheus series the running jobs feed.
    metrics: Arc<Metrics>,
    /// Bounds the checks of uploaded models that run at once.
    checks: tokio::sync::Semaphore,
    /// Webhook notifications of job ends and diagnosis changes.
    notifier: Notifier,
}

impl Scheduler {
    /// Starts the dispatcher. Jobs stop when `shutdown` is cancelled; [`Self::wait`] waits.
    pub fn start(
        store: Store,
        data: DataDir,
        (max_jobs, execution): (usize, Execution),
        ring: usize,
        (metrics, notifier): (Arc<Metrics>, Notifier),
        shutdown: CancellationToken,
    ) -> Self {
        let inner = Arc::new(Inner::new(store, data, (max_jobs, execution), ring, (metrics, notifier), shutdown));
        runner::refill_spare(&inner);
        inner.tracker.spawn(dispatch(inner.clone()));
        Self { inner }
    }

    /// A scheduler that claims nothing by itself: it runs the jobs given to
    /// [`Self::run_one`] (`gradscope run`). They stop when `shutdown` is cancelled;
    /// [`Self::wait`] waits for them to end.
    pub fn standalone(
        store: Store,
        data: DataDir,
        (metrics, notifier): (Arc<Metrics>, Notifier),
        shutdown: CancellationToken,
    ) -> Self {
        let execution = (1, Execution::InProcess);
        let inner = Arc::new(Inner::new(store, data, execution, DEFAULT_STREAM_BACKLOG, (metrics, notifier), shutdown));
        nodes::keep_leases(&inner);
        let watcher = inner.clone();
        inner.tracker.spawn(async move {
            watcher.shutdown.cancelled().await;
            stop_all(&watcher).await;
        });
        Self { inner }
    }

    /// Claims queued job `id` and runs it, whatever else is queued.
    pub async fn run_one(&self, id: Uuid) -> anyhow::Result<()> {
        let mut running = self.inner.running.lock().await;
        let job = self.inner.store.claim_job(id).await?.ok_or_else(|| anyhow::anyhow!("job {id} is not queued"))?;
        launch(&self.inner, &mut running, job, None);
        Ok(())
    }

    /// Tells the dispatcher a job was queued.
    pub fn notify_queued(&self) {
        self.inner.wake.notify_one();
    }

    /// Cancels a queued or running job.
    pub(crate) async fn cancel(&self, id: Uuid) -> anyhow::Result<CancelOutcome> {
        let running = self.inner.running.lock().await;
        if let Some(control) = running.get(&id) {
            control.request(StopReason::Cancel);
            return Ok(CancelOutcome::Accepted);
        }
        if self.inner.store.cancel_queued_job(id).await? {
            return Ok(CancelOutcome::Accepted);
        }
        drop(running);
        // Running on another node sharing the database: that node sees the request within
        // a second (`nodes::run`) and stops the job.
        if self.inner.store.request_cancel(id).await? {
            return Ok(CancelOutcome::Accepted);
        }
        Ok(match self.inner.store.job(id).await? {
            None => CancelOutcome::NotFound,
            // Between its training ending and its final status being written.
            Some(job) if !job.status.is_finished() => CancelOutcome::Accepted,
            Some(job) => CancelOutcome::AlreadyFinished(job.status),
        })
    }

    /// The live feed of job `id`, while it runs.
    pub fn live(&self, id: Uuid) -> Option<Arc<LiveJob>> {
        self.inner.live.job(id)
    }

    /// Publishes the live feeds of the jobs this node runs to other nodes too.
    pub fn relay_to(&self, relay: relay::Relay) {
        self.inner.live.relay_to(relay);
    }

    /// The relay to other nodes, if any (`--nats-url`).
    pub fn relay(&self) -> Option<&relay::Relay> {
        self.inner.live.relay()
    }

    /// Resolves when any job's feed opens after the call.
    pub fn feed_opened(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.live.opened()
    }

    /// Whether the service is shutting down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Waits until the dispatcher and every job task have ended (after shutdown).
    pub async fn wait(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

impl Inner {
    fn new(
        store: Store,
        data: DataDir,
        (max_jobs, execution): (usize, Execution),
        ring: usize,
        (metrics, notifier): (Arc<Metrics>, Notifier),
        shutdown: CancellationToken,
    ) -> Self {
        let gpus = match &execution {
            Execution::Workers(settings) => GpuPool::new(settings.gpus.clone()),
            Execution::InProcess => GpuPool::default(),
        };
        Self {
            store,
            data,
            max_jobs,
            execution,
            gpus,
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            shutdown,
            tracker: TaskTracker::new(),
            live: LiveHub::new(ring),
            spare: std::sync::Mutex::new(None),
            lane: std::sync::Mutex::new(String::new()),
            metrics,
            checks: check::permits(),
            notifier,
        }
    }
}

/// Claims queued jobs while slots are free; sleeps until woken (a submission, a freed slot,
/// or on PostgreSQL the node loop's look at the shared queue every second, `nodes::run`);
/// stops at shutdown.
async fn dispatch(inner: Arc<Inner>) {
    loop {
        if let Err(err) = fill_slots(&inner).await {
            tracing::error!("scheduler: failed to claim a job: {err:#}");
        }
        tokio::select! {
            () = inner.wake.notified() => {}
            () = inner.shutdown.cancelled() => break,
        }
    }
    stop_all(&inner).await;
}

async fn stop_all(inner: &Inner) {
    // Dropped, the spare is killed (it holds no job).
    drop(inner.spare.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
    for control in inner.running.lock().await.values() {
        control.request(StopReason::Shutdown);
    }
}

/// Most queued jobs looked through for one that needs no GPU while every GPU is busy.
const GPU_QUEUE_SCAN: i64 = 1000;

async fn fill_slots(inner: &Arc<Inner>) -> anyhow::Result<()> {
    let mut running = inner.running.lock().await;
    while running.len() < inner.max_jobs && !inner.shutdown.is_cancelled() {
        let after = inner.lane.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let job = if inner.gpus.all.is_empty() {
            inner.store.claim_next_fair(&after).await?
        } else {
            claim_runnable(inner, &after).await?
        };
        let Some(job) = job else { break };
        *inner.lane.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = job.lane();
        let gpu = if inner.gpus.needs_gpu(&job.spec.device) { inner.gpus.take() } else { None };
        launch(inner, &mut running, job, gpu);
    }
    Ok(())
}

/// Claims the first queued job in round-robin order after lane `after` that can start
/// now: with every GPU busy, jobs that need one wait in the queue and jobs that do not go
/// ahead of them.
async fn claim_runnable(inner: &Inner, after: &str) -> anyhow::Result<Option<Job>> {
    let mut queued = inner.store.list_jobs(Some(JobStatus::Queued), GPU_QUEUE_SCAN).await?;
    queued.reverse();
    round_robin(&mut queued, after, Job::lane);
    let devices: Vec<(Uuid, &str)> = queued.iter().map(|job| (job.id, job.spec.device.as_str())).collect();
    match inner.gpus.first_runnable(&devices) {
        Some(&id) => inner.store.claim_job(id).await,
        None => Ok(None),
    }
}

/// Orders `queued` (oldest first) as round-robin takes them after lane `after`: the lanes
/// after it in lane order, then (wrapping round) the others, each lane's jobs oldest first.
/// The store's `claim_next_fair` orders the same way.
fn round_robin<T>(queued: &mut [T], after: &str, lane: impl Fn(&T) -> String) {
    queued.sort_by_cached_key(|job| {
        let lane = lane(job);
        (lane.as_str() <= after, lane)
    });
}

/// Starts a claimed job on `gpu`; `running` is the held lock of `inner.running`.
fn launch(inner: &Arc<Inner>, running: &mut HashMap<Uuid, Arc<JobControl>>, job: Job, gpu: Option<String>) {
    let control = Arc::new(JobControl::default());
    running.insert(job.id, control.clone());
    inner.live.open_run(job.id, relay::run_of(&job));
    let task_inner = inner.clone();
    inner.tracker.spawn(async move {
        let id = job.id;
        runner::run(&task_inner, job, control, gpu.clone()).await;
        if let Some(gpu) = gpu {
            task_inner.gpus.give_back(gpu);
        }
        task_inner.running.lock().await.remove(&id);
        task_inner.wake.notify_one();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(gpus: &[&str]) -> GpuPool {
        GpuPool::new(gpus.iter().map(|g| (*g).to_owned()).collect())
    }

    #[test]
    fn each_gpu_goes_to_one_job_at_a_time_lowest_first() {
        let pool = pool(&["0", "1"]);
        assert_eq!(pool.take().as_deref(), Some("0"));
        assert_eq!(pool.take().as_deref(), Some("1"));
        assert_eq!(pool.take(), None);
        pool.give_back("1".to_owned());
        pool.give_back("0".to_owned());
        assert_eq!(pool.take().as_deref(), Some("0"));
        assert_eq!(pool.free_count(), 1);
    }

    #[test]
    fn cuda_jobs_wait_for_a_free_gpu_and_cpu_jobs_go_ahead() {
        let pool = pool(&["3"]);
        let queued = [(1, "cuda:0"), (2, "auto"), (3, "cpu"), (4, "cuda")];
        assert_eq!(pool.first_runnable(&queued), Some(&1), "a free GPU: the oldest job starts");
        let held = pool.take().expect("gpu");
        assert_eq!(pool.first_runnable(&queued), Some(&3), "no free GPU: the first CPU job starts");
        assert_eq!(pool.first_runnable(&[(1, "cuda"), (2, "auto")]), None, "GPU jobs wait");
        pool.give_back(held);
        assert_eq!(pool.first_runnable(&[(2, "auto")]), Some(&2));
    }

    #[test]
    fn lanes_take_turns_after_the_last_one_served() {
        // (lane, job), oldest first: single jobs are lane "".
        let queued = [("b", 1), ("", 2), ("a", 3), ("b", 4), ("", 5)];
        let order = |after: &str| {
            let mut q = queued.to_vec();
            round_robin(&mut q, after, |(lane, _)| (*lane).to_owned());
            q.iter().map(|(_, job)| *job).collect::<Vec<_>>()
        };
        assert_eq!(order("")[0], 3, "after the single jobs, the first experiment");
        assert_eq!(order("a")[0], 1, "then the next one");
        assert_eq!(order("b")[0], 2, "then, wrapping round, the single jobs, oldest first");
        assert_eq!(order("b"), vec![2, 5, 3, 1, 4], "within a lane, oldest first");
    }

    #[test]
    fn without_gpus_auto_and_cpu_jobs_need_none() {
        let pool = pool(&[]);
        assert!(!pool.needs_gpu("auto"));
        assert!(!pool.needs_gpu("cpu"));
        // Nothing to wait for: it starts, and fails in the worker if there is no CUDA.
        assert_eq!(pool.first_runnable(&[(1, "cpu")]), Some(&1));
        assert!(pool.needs_gpu("cuda:1"));
    }
}
