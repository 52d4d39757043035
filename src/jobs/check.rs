//! Checks that run a user's TorchScript module: loading an upload and listing its
//! parameters, and the dry run before a job is queued. With worker processes each check
//! runs in a `gradscope worker` of its own, under the jobs' memory limit and
//! `check_timeout`: a module that makes LibTorch abort or segfault, or that never
//! finishes, ends that process, and the client is told why; the service stays up. In
//! process (`gradscope run`, `--in-process`) a check runs on a blocking thread, as jobs
//! train there.

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::runner::{death, start_worker, stderr_tail};
use super::wire::{self, FromWorker, ToWorker};
use super::{Execution, Inner, Scheduler, WorkerSettings};
use crate::train::user::{Check, Checked, Refusal, refuse};

/// Checks that may run at once; more wait. Each is a process that loads LibTorch and the
/// module, so they are bounded however many requests arrive.
pub(super) const MAX_CHECKS: usize = 2;

/// The permits of [`MAX_CHECKS`].
pub(super) fn permits() -> Semaphore {
    Semaphore::new(MAX_CHECKS)
}

impl Scheduler {
    /// Runs `check` where jobs train: its refusal is the client's error, and so is a worker
    /// that died or ran out of time on it; the outer error is the service's own failure.
    pub(crate) async fn check(&self, check: Check) -> anyhow::Result<Result<Checked, Refusal>> {
        let inner = &self.inner;
        let _permit = inner.checks.acquire().await.context("the checks were closed")?;
        match &inner.execution {
            Execution::InProcess => {
                tokio::task::spawn_blocking(move || check.run()).await.context("the check panicked")
            }
            Execution::Workers(settings) => in_worker(inner, settings, check).await,
        }
    }
}

/// Runs `check` in a worker process: the spare CPU worker if there is one, else a fresh
/// one; the worker answers and ends.
async fn in_worker(inner: &Inner, settings: &WorkerSettings, check: Check) -> anyhow::Result<Result<Checked, Refusal>> {
    let (field, name) = (check.field(), check.name());
    let (mut child, stdin, stdout, stderr) = start_worker(inner, settings, None, false)?;
    let tail = tokio::spawn(stderr_tail(stderr, format!("{name} check")));
    let mut to_worker = FramedWrite::new(stdin, wire::codec());
    // A worker that died at once fails the send: its exit status says why.
    if let Err(err) = to_worker.send(wire::encode(&ToWorker::Check(check))?).await {
        tracing::warn!("could not send a check to its worker: {err}");
    }
    let mut from_worker = FramedRead::new(stdout, wire::codec());
    let answer = async {
        let answer = match from_worker.next().await {
            Some(Ok(frame)) => match wire::decode::<FromWorker>(&frame) {
                Ok(FromWorker::Checked(answer)) => Some(answer),
                Ok(_) => anyhow::bail!("a checking worker answered something else"),
                Err(err) => anyhow::bail!("a checking worker's answer is unreadable: {err:#}"),
            },
            // It died before it answered (a partial frame included).
            Some(Err(_)) | None => None,
        };
        drop(to_worker);
        let status = child.wait().await.context("failed to wait for a worker")?;
        Ok((answer, status))
    };
    let timeout = settings.check_timeout;
    let (answer, status) = match tokio::time::timeout(timeout, answer).await {
        Ok(ended) => ended?,
        // Dropped, the worker is killed (`kill_on_drop`).
        Err(_) => {
            tracing::warn!(check = name, "a check ran out of time: its worker is killed");
            return Ok(Err(refuse(
                field,
                format!(
                    "checking the module took longer than {} s (this service's --check-timeout), so it was stopped",
                    timeout.as_secs()
                ),
            )));
        }
    };
    if let Some(answer) = answer {
        return Ok(answer);
    }
    let tail = tokio::time::timeout(std::time::Duration::from_secs(2), tail)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let cause = death(status, &tail);
    tracing::warn!(check = name, "a check's worker died: {cause}");
    Ok(Err(refuse(
        field,
        format!("LibTorch failed on the module and the process checking it ended ({cause}); the service is unaffected"),
    )))
}
