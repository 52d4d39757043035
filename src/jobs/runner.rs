//! One job from claim to final status: resolve its data, train it on a dedicated OS thread,
//! write what it reports in batches, record how it ended.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, anyhow};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::Inner;
use super::data_dir::UploadFile;
use super::live::LiveMessage;
use super::service::find_corpus;
use crate::spec::TaskSpec;
use crate::store::{Job, JobStatus, Progress};
use crate::train::{self, Event, Outcome, RunContext, StepReport, StopFlag, StopReason, TrainEvent};

/// Most messages written in one transaction.
const WRITE_BATCH: usize = 1024;
/// Messages the training thread may run ahead of the store writer. Past this, step
/// reports are dropped and counted rather than making training wait.
const QUEUE_CAPACITY: usize = 16 * 1024;

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
    // After the store: a subscriber told the job ended finds it ended.
    inner.live.open(id).publish(LiveMessage::Status { status, error });
    inner.live.close(id);
}

async fn train_and_record(inner: &Inner, job: &Job, flag: Arc<StopFlag>) -> anyhow::Result<Outcome> {
    let ctx = RunContext {
        corpus: load_corpus(inner, &job.spec.task).await?,
        checkpoint: Some(inner.data.checkpoint(job.id)),
        resume: job.resumed_from.and_then(|s| u64::try_from(s).ok()),
        model: upload_file(inner, UploadFile::Model, job.spec.model.id.as_deref())?,
        dataset: upload_file(inner, UploadFile::Dataset, job.spec.task.dataset())?,
    };
    let (tx, mut rx) = mpsc::channel(QUEUE_CAPACITY);
    let spec = job.spec.clone();
    let thread_flag = flag.clone();
    let dropped = Arc::new(AtomicU64::new(0));
    let thread_dropped = dropped.clone();
    let thread = std::thread::Builder::new()
        .name(format!("train-{}", &job.id.simple().to_string()[..8]))
        .spawn(move || {
            let mut emit = |event: TrainEvent| match tx.try_send(event) {
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
            };
            catch_unwind(AssertUnwindSafe(|| train::train(&spec, &ctx, &thread_flag, &mut emit)))
                .unwrap_or_else(|panic| Err(anyhow!("training panicked: {}", panic_message(&*panic))))
        })
        .context("failed to start the training thread")?;

    let recorded = record(inner, job, &mut rx, &dropped).await;
    if recorded.is_err() {
        // Nothing more can be kept: stop training, and drain so the thread never blocks.
        flag.request(StopReason::Cancel);
        while rx.recv().await.is_some() {}
    }
    // The job is over only once its thread is: nothing of it may outlive the final status.
    let outcome = tokio::task::spawn_blocking(move || thread.join())
        .await
        .context("failed to wait for the training thread")?
        .map_err(|_| anyhow!("the training thread panicked"))?;
    recorded?;
    outcome
}

/// Writes reports as they come, batching whatever has queued up since the last write.
async fn record(
    inner: &Inner,
    job: &Job,
    rx: &mut mpsc::Receiver<TrainEvent>,
    dropped: &AtomicU64,
) -> anyhow::Result<()> {
    let mut messages = Vec::with_capacity(WRITE_BATCH);
    let mut steps: Vec<StepReport> = Vec::with_capacity(WRITE_BATCH);
    let mut events: Vec<Event> = Vec::new();
    let mut fresh_events: Vec<Event> = Vec::new();
    let live = inner.live.open(job.id);
    while rx.recv_many(&mut messages, WRITE_BATCH).await > 0 {
        let mut diagnosis = None;
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
                    steps.push(report);
                }
                TrainEvent::Event(event) => fresh_events.push(event),
                // Validation results travel as events: live, stored and counted with them.
                TrainEvent::Eval(eval) => fresh_events.extend(eval.events()),
                TrainEvent::Diagnosis(d) => diagnosis = Some(d),
            }
            for event in fresh_events.drain(..) {
                inner.metrics.record_event(job.id, &event);
                live.publish(LiveMessage::Event(event.clone()));
                events.push(event);
            }
        }
        let progress = Progress {
            steps: &steps,
            events: &events,
            diagnosis: diagnosis.as_ref(),
            dropped: dropped.swap(0, Ordering::Relaxed),
        };
        inner.store.record_progress(job.id, &progress).await.context("failed to record progress")?;
        steps.clear();
        events.clear();
    }
    Ok(())
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
