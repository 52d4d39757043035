//! The scheduler: claims queued jobs from the store, runs at most `max_jobs` at once, each on
//! its own OS thread, owns their stop flags, and turns what they report into store writes.
//!
//! - [`Scheduler`] — the handle the API holds (notify, cancel, shut down).
//! - [`runner`] — one job from claim to final status.
//! - [`live`] — the live feed of each running job.

pub mod live;
mod runner;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use self::live::{LiveHub, LiveJob};
use crate::metrics::Metrics;
use crate::store::{Job, JobStatus, Store};
use crate::train::{StopFlag, StopReason};

/// What a cancel request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
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
    data_dir: PathBuf,
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
        data_dir: PathBuf,
        max_jobs: usize,
        ring: usize,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        let inner = Arc::new(Inner {
            store,
            data_dir,
            max_jobs: max_jobs.max(1),
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            shutdown,
            tracker: TaskTracker::new(),
            live: LiveHub::new(ring),
            metrics,
        });
        inner.tracker.spawn(dispatch(inner.clone()));
        Self { inner }
    }

    /// Runs queued job `id` alone, without claiming any other (`gradscope run`). It stops
    /// when `shutdown` is cancelled; [`Self::wait`] waits for it to end.
    pub async fn run_one(
        store: Store,
        data_dir: PathBuf,
        id: Uuid,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let inner = Arc::new(Inner {
            store,
            data_dir,
            max_jobs: 1,
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            shutdown,
            tracker: TaskTracker::new(),
            live: LiveHub::new(live::DEFAULT_RING),
            metrics: Arc::new(Metrics::new()?),
        });
        let mut running = inner.running.lock().await;
        let job = inner.store.claim_job(id).await?.ok_or_else(|| anyhow::anyhow!("job {id} is not queued"))?;
        launch(&inner, &mut running, job);
        drop(running);
        let watcher = inner.clone();
        inner.tracker.spawn(async move {
            watcher.shutdown.cancelled().await;
            stop_all(&watcher).await;
        });
        Ok(Self { inner })
    }

    /// Tells the dispatcher a job was queued.
    pub fn notify_queued(&self) {
        self.inner.wake.notify_one();
    }

    /// Cancels a queued or running job.
    pub async fn cancel(&self, id: Uuid) -> anyhow::Result<CancelOutcome> {
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

    /// Whether the service is shutting down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// The checkpoint file of job `id`.
    pub fn checkpoint_path(&self, id: Uuid) -> PathBuf {
        checkpoint_path(&self.inner.data_dir, id)
    }

    /// The file an uploaded corpus is kept in.
    pub fn corpus_path(&self, id: &str) -> PathBuf {
        corpus_path(&self.inner.data_dir, id)
    }

    /// Waits until the dispatcher and every job task have ended (after shutdown).
    pub async fn wait(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

fn checkpoint_path(data_dir: &std::path::Path, id: Uuid) -> PathBuf {
    data_dir.join("checkpoints").join(format!("{id}.safetensors"))
}

fn corpus_path(data_dir: &std::path::Path, id: &str) -> PathBuf {
    data_dir.join("corpora").join(format!("{id}.txt"))
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
