//! This node among others on one PostgreSQL database: its heartbeat, the leases of the
//! jobs it runs, and the takeover of jobs whose node was lost.
//!
//! Every lease/3 the node renews its row and the leases of its running jobs. A job it
//! runs that it no longer holds (its lease expired, another node took it over) is stopped
//! here, and the end it records is refused (the store's `finish_job` checks the node).
//! On PostgreSQL it also sweeps for running jobs of other nodes whose lease expired,
//! marks them `interrupted` (saying which node was lost) and queues them again: to
//! continue after their last checkpoint in the shared data folder, or from the start
//! when they have none, unless they have started `max_attempts` times already. Between
//! sweeps it looks, every second at most, for queued jobs (a job submitted to another
//! node wakes only that node) and for cancels of its jobs sent to other nodes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::{Inner, Scheduler};
use crate::store::{Backend, TakenOver};
use crate::train::StopReason;

/// How this node takes part among several.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The address its API listens on, recorded in its node row.
    pub addr: Option<String>,
    /// How many times a job may start (its first run included) before a job lost with
    /// its node is left `interrupted` rather than queued again.
    pub max_attempts: i64,
}

/// Most expired jobs one sweep takes over.
const SWEEP_LIMIT: i64 = 100;
/// The longest wait between two looks at the queue when several nodes share it.
const POLL: Duration = Duration::from_secs(1);

/// Starts the heartbeat, the lease renewals and (on PostgreSQL) the sweep for lost
/// nodes' jobs; they run until the service shuts down and its jobs have ended.
pub fn start(scheduler: &Scheduler, settings: NodeSettings) {
    let inner = scheduler.inner.clone();
    let sweep = inner.store.backend() == Backend::Postgres;
    scheduler.inner.tracker.spawn(run(inner, Some(settings), sweep));
}

/// Renews the leases of the jobs of a scheduler that sweeps for no other node's
/// (`gradscope run`).
pub(super) fn keep_leases(inner: &Arc<Inner>) {
    inner.tracker.spawn(run(inner.clone(), None, false));
}

/// `node`: this is a serving node (its row is kept, and removed at the end); `sweep`: it
/// also takes over lost nodes' jobs and looks at the shared queue (PostgreSQL).
async fn run(inner: Arc<Inner>, node: Option<NodeSettings>, sweep: bool) {
    let tick = (inner.store.lease() / 3).max(Duration::from_millis(100));
    let poll = tick.min(POLL);
    let addr = node.as_ref().and_then(|s| s.addr.clone());
    let sweep = node.filter(|_| sweep);
    let serving = addr.is_some() || sweep.is_some();
    let mut renewed: Option<Instant> = None;
    loop {
        let stopping = inner.shutdown.is_cancelled();
        // After shutdown, leases are kept until the node's jobs have ended.
        if stopping && inner.running.lock().await.is_empty() {
            break;
        }
        if renewed.is_none_or(|at| at.elapsed() >= tick) {
            renewed = Some(Instant::now());
            if let Err(err) = beat(&inner, addr.as_deref()).await {
                tracing::warn!("failed to renew this node's leases: {err:#}");
            }
            if let Some(settings) = sweep.as_ref().filter(|_| !stopping) {
                match inner.store.take_over_expired(SWEEP_LIMIT).await {
                    Ok(taken) => {
                        for job in taken {
                            resume_lost(&inner, &job, settings.max_attempts).await;
                        }
                    }
                    Err(err) => tracing::warn!("failed to look for jobs of lost nodes: {err:#}"),
                }
            }
        }
        if sweep.is_some() && !stopping {
            // Jobs queued on other nodes (or just taken over) are claimed here too.
            inner.wake.notify_one();
            // Cancels of this node's jobs sent to other nodes.
            match inner.store.cancels_requested().await {
                Ok(ids) => {
                    let running = inner.running.lock().await;
                    for control in ids.iter().filter_map(|id| running.get(id)) {
                        control.request(StopReason::Cancel);
                    }
                }
                Err(err) => tracing::warn!("failed to look for cancels sent to other nodes: {err:#}"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = inner.shutdown.cancelled(), if !stopping => {}
        }
    }
    if serving && let Err(err) = inner.store.leave().await {
        tracing::warn!("failed to remove this node's row: {err:#}");
    }
}

/// The heartbeat: this node's row and its jobs' leases. A running job this node no longer
/// holds is stopped.
async fn beat(inner: &Inner, addr: Option<&str>) -> anyhow::Result<()> {
    if addr.is_some() {
        inner.store.heartbeat(addr).await?;
    }
    // Held across the renewal: every job in it was claimed (for this node) before.
    let running = inner.running.lock().await;
    let held: HashSet<Uuid> = inner.store.renew_leases().await?.into_iter().collect();
    for (id, control) in running.iter().filter(|(id, _)| !held.contains(id)) {
        if control.flag.requested().is_none() {
            tracing::warn!(job = %id, "this node no longer holds the job (its lease expired): stopping it");
        }
        control.request(StopReason::Shutdown);
    }
    Ok(())
}

/// Queues again a job taken over from a lost node: after its last checkpoint, or from
/// the start when it has none, unless it has started `max_attempts` times.
async fn resume_lost(inner: &Inner, job: &TakenOver, max_attempts: i64) {
    let node = job.node_id.as_deref().unwrap_or("(unrecorded)");
    tracing::warn!(job = %job.id, node, step = job.step, "the job's node was lost: job interrupted");
    let note = match queue_again(inner, job, max_attempts).await {
        Ok(None) => {
            tracing::info!(job = %job.id, "job queued again after its node was lost");
            inner.wake.notify_one();
            return;
        }
        Ok(Some(note)) => note,
        Err(err) => format!("; it could not be queued again: {err:#}"),
    };
    tracing::warn!(job = %job.id, "{}", note.trim_start_matches("; "));
    if let Err(err) = inner.store.explain_interruption(job.id, &note).await {
        tracing::warn!(job = %job.id, "failed to record why the job was not resumed: {err:#}");
    }
}

/// `None` when queued again, else why not (as a note for its error).
async fn queue_again(inner: &Inner, job: &TakenOver, max_attempts: i64) -> anyhow::Result<Option<String>> {
    if job.attempts >= max_attempts {
        return Ok(Some(format!(
            "; not resumed: it has started {} times, the most --max-attempts allows",
            job.attempts
        )));
    }
    let committed = u64::try_from(job.step).unwrap_or(0);
    let queued = match inner.data.resume_step(job.id, committed).await? {
        Some(step) => inner.store.requeue_to_resume(job.id, i64::try_from(step)?, i64::MAX).await?,
        None => inner.store.requeue_from_start(job.id, i64::MAX).await?,
    };
    Ok((!queued).then(|| "; not resumed: it changed state meanwhile".to_owned()))
}
