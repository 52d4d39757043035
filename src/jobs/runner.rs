//! One job from claim to final status: resolve its data, train it on a dedicated OS thread,
//! write what it reports in batches, record how it ended.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use anyhow::{Context, anyhow};
use tokio::sync::{mpsc, oneshot};

use super::{Inner, checkpoint_path, corpus_path};
use crate::store::{Job, JobStatus};
use crate::train::data::builtin_corpus;
use crate::train::spec::TaskSpec;
use crate::train::{self, Outcome, RunContext, StepReport, StopFlag, StopReason, TrainEvent};

/// Most step reports written in one transaction.
const WRITE_BATCH: usize = 1024;

pub(super) async fn run(inner: &Inner, job: Job, flag: Arc<StopFlag>) {
    let id = job.id;
    tracing::info!(job = %id, name = %job.name, "job started");
    let (status, error) = match train_and_record(inner, &job, flag).await {
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
}

async fn train_and_record(inner: &Inner, job: &Job, flag: Arc<StopFlag>) -> anyhow::Result<Outcome> {
    let ctx = RunContext {
        corpus: load_corpus(inner, &job.spec.task).await?,
        checkpoint: Some(checkpoint_path(&inner.data_dir, job.id)),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = oneshot::channel();
    let spec = job.spec.clone();
    let thread_flag = flag.clone();
    std::thread::Builder::new()
        .name(format!("train-{}", &job.id.simple().to_string()[..8]))
        .spawn(move || {
            let mut emit = |event| {
                // The receiver only goes away once the job is over; nothing to do then.
                let _ = tx.send(event);
            };
            let result = catch_unwind(AssertUnwindSafe(|| train::train(&spec, &ctx, &thread_flag, &mut emit)))
                .unwrap_or_else(|panic| Err(anyhow!("training panicked: {}", panic_message(&*panic))));
            let _ = done_tx.send(result);
        })
        .context("failed to start the training thread")?;

    let recorded = record(inner, job, &mut rx).await;
    if recorded.is_err() {
        // Nothing more can be kept: stop training, and drain so the thread never blocks.
        flag.request(StopReason::Cancel);
        while rx.recv().await.is_some() {}
    }
    let outcome = done_rx.await.context("the training thread vanished")?;
    recorded?;
    outcome
}

/// Writes reports as they come, batching whatever has queued up since the last write.
async fn record(inner: &Inner, job: &Job, rx: &mut mpsc::UnboundedReceiver<TrainEvent>) -> anyhow::Result<()> {
    let mut events = Vec::with_capacity(WRITE_BATCH);
    let mut steps: Vec<StepReport> = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut events, WRITE_BATCH).await > 0 {
        for event in events.drain(..) {
            match event {
                TrainEvent::Started { device, layers } => {
                    inner.store.set_job_started(job.id, &device, &layers).await.context("failed to record layers")?;
                }
                TrainEvent::Step(report) => steps.push(report),
                TrainEvent::Eval(eval) => {
                    tracing::info!(job = %job.id, step = eval.step, loss = eval.loss, metric = ?eval.metric, "validation");
                }
            }
        }
        inner.store.insert_steps(job.id, &steps).await.context("failed to record steps")?;
        steps.clear();
    }
    Ok(())
}

async fn load_corpus(inner: &Inner, task: &TaskSpec) -> anyhow::Result<String> {
    let Some(corpus) = task.corpus() else { return Ok(String::new()) };
    if let Some(text) = builtin_corpus(corpus) {
        return Ok(text.to_owned());
    }
    let path = corpus_path(&inner.data_dir, corpus);
    tokio::fs::read_to_string(&path).await.with_context(|| format!("failed to read corpus {corpus}"))
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
