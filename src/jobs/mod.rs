//! Jobs: what clients may ask of them, and the scheduler that runs them. The scheduler
//! claims queued jobs from the store, runs at most `max_jobs` at once, each on its own OS
//! thread, owns their stop flags, and turns what they report into store writes.
//!
//! - [`service`] — [`Jobs`]: submit, cancel, resume, delete, follow; corpora and their
//!   resolution. The HTTP handlers and `gradscope run` call it.
//! - [`data_dir`] — [`DataDir`]: checkpoints, resume files and corpora on disk.
//! - [`Scheduler`] — claims and runs queued jobs (notify, cancel, shut down).
//! - [`runner`] — one job from claim to final status.
//! - [`live`] — the live feed of each running job.

pub mod data_dir;
pub mod live;
mod runner;
pub mod service;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use self::data_dir::DataDir;
use self::live::{LiveHub, LiveJob};
pub use self::service::{CorpusLimits, JobLimits, Jobs, ServiceError};
use crate::config::DEFAULT_STREAM_BACKLOG;
use crate::metrics::Metrics;
use crate::store::{Job, JobStatus, Store};
use crate::train::{StopFlag, StopReason};

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
    max_jobs: usize,
    /// Stop flags of the running jobs. Held across claiming a job and registering it, so
    /// a cancel never finds a job running but unregistered.
    running: Mutex<HashMap<Uuid, Arc<StopFlag>>>,
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
}

impl Scheduler {
    /// Starts the dispatcher. Jobs stop when `shutdown` is cancelled; [`Self::wait`] waits.
    pub fn start(
        store: Store,
        data: DataDir,
        max_jobs: usize,
        ring: usize,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        let inner = Arc::new(Inner::new(store, data, max_jobs, ring, metrics, shutdown));
        inner.tracker.spawn(dispatch(inner.clone()));
        Self { inner }
    }

    /// A scheduler that claims nothing by itself: it runs the jobs given to
    /// [`Self::run_one`] (`gradscope run`). They stop when `shutdown` is cancelled;
    /// [`Self::wait`] waits for them to end.
    pub fn standalone(store: Store, data: DataDir, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Self {
        let inner = Arc::new(Inner::new(store, data, 1, DEFAULT_STREAM_BACKLOG, metrics, shutdown));
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
        launch(&self.inner, &mut running, job);
        Ok(())
    }

    /// Tells the dispatcher a job was queued.
    pub fn notify_queued(&self) {
        self.inner.wake.notify_one();
    }

    /// Cancels a queued or running job.
    pub(crate) async fn cancel(&self, id: Uuid) -> anyhow::Result<CancelOutcome> {
        let running = self.inner.running.lock().await;
        if let Some(flag) = running.get(&id) {
            flag.request(StopReason::Cancel);
            return Ok(CancelOutcome::Accepted);
        }
        if self.inner.store.cancel_queued_job(id).await? {
            return Ok(CancelOutcome::Accepted);
        }
        drop(running);
        Ok(match self.inner.store.job(id).await? {
            None => CancelOutcome::NotFound,
            // Between its thread ending and its final status being written.
            Some(job) if !job.status.is_finished() => CancelOutcome::Accepted,
            Some(job) => CancelOutcome::AlreadyFinished(job.status),
        })
    }

    /// The live feed of job `id`, while it runs.
    pub fn live(&self, id: Uuid) -> Option<Arc<LiveJob>> {
        self.inner.live.job(id)
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
        max_jobs: usize,
        ring: usize,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            data,
            max_jobs: max_jobs.max(1),
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            shutdown,
            tracker: TaskTracker::new(),
            live: LiveHub::new(ring),
            metrics,
        }
    }
}

/// Claims queued jobs while slots are free; sleeps until woken; stops at shutdown.
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
    for flag in inner.running.lock().await.values() {
        flag.request(StopReason::Shutdown);
    }
}

async fn fill_slots(inner: &Arc<Inner>) -> anyhow::Result<()> {
    let mut running = inner.running.lock().await;
    while running.len() < inner.max_jobs && !inner.shutdown.is_cancelled() {
        let Some(job) = inner.store.claim_next_job().await? else { break };
        launch(inner, &mut running, job);
    }
    Ok(())
}

/// Starts a claimed job; `running` is the held lock of `inner.running`.
fn launch(inner: &Arc<Inner>, running: &mut HashMap<Uuid, Arc<StopFlag>>, job: Job) {
    let flag = Arc::new(StopFlag::default());
    running.insert(job.id, flag.clone());
    inner.live.open(job.id);
    let task_inner = inner.clone();
    inner.tracker.spawn(async move {
        let id = job.id;
        runner::run(&task_inner, job, flag).await;
        task_inner.running.lock().await.remove(&id);
        task_inner.wake.notify_one();
    });
}
