//! `/api/v1/jobs`: submit, list, inspect, cancel and delete training jobs, and read what
//! they recorded.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio_util::io::ReaderStream;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::extract::{ApiJson, ApiQuery, large_json};
use super::{ApiError, AppState, Limits};
use crate::jobs::CancelOutcome;
use crate::store::downsample::MIN_POINTS;
use crate::store::{DEFAULT_MAX_POINTS, Job, JobStatus, MAX_MAX_POINTS, StepColumns};
use crate::train::JobSpec;
use crate::train::budget::CorpusSize;
use crate::train::data::builtin_corpus;
use crate::train::{budget, checkpoint};

pub const DEFAULT_LIST_LIMIT: i64 = 50;
pub const MAX_LIST_LIMIT: i64 = 500;

/// Ids that are not UUIDs name no job.
fn job_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound("job"))
}

pub(super) async fn find_job(state: &AppState, raw: &str) -> Result<Job, ApiError> {
    state.store.job(job_id(raw)?).await?.ok_or(ApiError::NotFound("job"))
}

/// Submit a job. It is queued and starts when a slot is free.
#[utoipa::path(post, operation_id = "create_job", path = "/api/v1/jobs", tag = "jobs", request_body = JobSpec,
    responses(
        (status = 201, description = "Queued", body = Job,
            headers(("Location" = String, description = "The job's URL"))),
        (status = 400, description = "Malformed JSON", body = super::ErrorBody),
        (status = 413, description = "Body too large", body = super::ErrorBody),
        (status = 415, description = "Not JSON", body = super::ErrorBody),
        (status = 422, description = "Invalid spec, or above the size limits; `field` names the offending field", body = super::ErrorBody),
        (status = 429, description = "Too many jobs queued", body = super::ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<JobSpec>,
) -> Result<(StatusCode, [(header::HeaderName, String); 1], Json<Job>), ApiError> {
    spec.validate()?;
    let corpus = match spec.task.corpus() {
        None => CorpusSize::default(),
        Some(corpus) => corpus_size(&state, corpus).await?.ok_or_else(|| {
            ApiError::invalid(
                "task.corpus",
                format!("no corpus {corpus:?}: use builtin:tiny or an id from POST /api/v1/corpora"),
            )
        })?,
    };
    check_budget(&spec, corpus, &state.limits)?;
    let Some(job) = state.store.insert_job_within(&spec, state.limits.max_queued).await? else {
        return Err(queue_full(state.limits.max_queued));
    };
    state.scheduler.notify_queued();
    tracing::info!(job = %job.id, name = %job.name, "job queued");
    let location = format!("/api/v1/jobs/{}", job.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(job)))
}

/// The size of corpus `name`, built in or uploaded; `None` when there is no such corpus
/// (any more).
async fn corpus_size(state: &AppState, name: &str) -> Result<Option<CorpusSize>, ApiError> {
    if let Some(text) = builtin_corpus(name) {
        return Ok(Some(CorpusSize::of_text(text)));
    }
    // Characters are at most bytes.
    let uploaded = state.store.corpus(name).await?;
    Ok(uploaded.map(|c| CorpusSize { vocab: c.vocab_size as u64, chars: c.bytes as u64 }))
}

fn queue_full(max_queued: i64) -> ApiError {
    ApiError::TooManyRequests(format!(
        "{max_queued} jobs are already queued (this service's limit): wait for some to start"
    ))
}

/// Refuses a spec whose model, step, peak memory or storage would not fit the configured
/// limits, naming the field that drives the cost most.
fn check_budget(spec: &JobSpec, corpus: CorpusSize, limits: &Limits) -> Result<(), ApiError> {
    let estimate = budget::estimate(spec, corpus);
    if estimate.params > limits.max_params {
        return Err(ApiError::invalid(
            "model",
            format!(
                "about {} parameters, above this service's limit of {}: use fewer or narrower layers",
                estimate.params, limits.max_params
            ),
        ));
    }
    if estimate.activation_bytes > limits.max_activation_bytes {
        return Err(ApiError::invalid(
            "batch_size",
            format!(
                "one step needs about {} MiB of activations, above this service's limit of {} MiB: use a smaller batch, shorter sequences or a smaller model",
                estimate.activation_bytes >> 20,
                limits.max_activation_bytes >> 20
            ),
        ));
    }
    let memory = estimate.memory.total();
    if memory > limits.max_job_memory {
        let (field, advice) = estimate.memory.driver(spec);
        return Err(ApiError::invalid(
            field,
            format!(
                "the job would need about {} MiB of memory, above this service's limit of {} MiB; {field} costs the most: {advice}",
                memory >> 20,
                limits.max_job_memory >> 20
            ),
        ));
    }
    let stored = estimate.disk.records(spec.monitor.every);
    if stored > limits.max_job_disk {
        let (field, remedy) = match estimate.disk.smallest_every(limits.max_job_disk) {
            Some(every) => {
                ("monitor.every", format!("record statistics less often: monitor.every {every} or more fits"))
            }
            None => {
                ("steps", "even without per-layer statistics the step records do not fit: use fewer steps".to_owned())
            }
        };
        let histogram =
            if field == "monitor.every" && spec.monitor.histogram { ", or turn monitor.histogram off" } else { "" };
        return Err(ApiError::invalid(
            field,
            format!(
                "the job would store about {} MiB of records, above this service's limit of {} MiB: {remedy}{histogram}",
                stored >> 20,
                limits.max_job_disk >> 20
            ),
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs with this status.
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// How many (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
}

/// List jobs, newest first.
#[utoipa::path(get, operation_id = "list_jobs", path = "/api/v1/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, description = "A malformed query string", body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
pub async fn list(State(state): State<AppState>, ApiQuery(q): ApiQuery<ListQuery>) -> Result<Json<JobList>, ApiError> {
    let status = q
        .status
        .as_deref()
        .map(|s| {
            JobStatus::parse(s).ok_or_else(|| {
                let known: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::invalid("status", format!("must be one of {}", known.join(", ")))
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be 1 to {MAX_LIST_LIMIT}")));
    }
    Ok(Json(JobList { jobs: state.store.list_jobs(status, limit).await? }))
}

/// One job.
#[utoipa::path(get, operation_id = "get_job", path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 200, body = Job), (status = 404, body = super::ErrorBody)))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Job>, ApiError> {
    Ok(Json(find_job(&state, &id).await?))
}

/// Cancel a queued or running job. A running job stops before its next step.
#[utoipa::path(post, operation_id = "cancel_job", path = "/api/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = Uuid, Path)),
    responses(
        (status = 202, description = "Cancelled or cancelling", body = Job),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "Already finished", body = super::ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let id = job_id(&id)?;
    match state.scheduler.cancel(id).await? {
        CancelOutcome::Accepted => {}
        CancelOutcome::NotFound => return Err(ApiError::NotFound("job")),
        CancelOutcome::AlreadyFinished(status) => {
            return Err(ApiError::Conflict(format!("the job already ended {}", status.as_str())));
        }
    }
    let job = state.store.job(id).await?.ok_or(ApiError::NotFound("job"))?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// Resume an interrupted (or cancelled or failed) job from its last checkpoint: it is
/// queued again and continues the step count, the optimizer state and the loss curve.
#[utoipa::path(post, operation_id = "resume_job", path = "/api/v1/jobs/{id}/resume", tag = "jobs", params(("id" = Uuid, Path)),
    responses(
        (status = 202, description = "Queued to continue after its last checkpoint", body = Job),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "Not resumable: running, queued, succeeded, diverged, or no checkpoint", body = super::ErrorBody),
        (status = 429, description = "Too many jobs queued", body = super::ErrorBody),
    ))]
pub async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let job = find_job(&state, &id).await?;
    if !matches!(job.status, JobStatus::Interrupted | JobStatus::Cancelled | JobStatus::Failed) {
        return Err(ApiError::Conflict(format!(
            "only interrupted, cancelled or failed jobs resume; this one is {}",
            job.status.as_str()
        )));
    }
    if let Some(corpus) = job.spec.task.corpus()
        && corpus_size(&state, corpus).await?.is_none()
    {
        return Err(ApiError::Conflict(format!("its corpus {corpus} has been deleted, so the job cannot resume")));
    }
    let committed = u64::try_from(job.step).unwrap_or(0);
    // Reading the resume files' headers is blocking file I/O: off the async workers.
    let weights = state.scheduler.checkpoint_path(job.id);
    let found = tokio::task::spawn_blocking(move || checkpoint::resume_step(&weights, committed))
        .await
        .map_err(anyhow::Error::from)?;
    let Some(step) = found else {
        return Err(ApiError::Conflict("the job has no checkpoint to resume from".to_owned()));
    };
    let max_queued = state.limits.max_queued;
    if !state.store.requeue_to_resume(job.id, i64::try_from(step).map_err(anyhow::Error::from)?, max_queued).await? {
        let now = state.store.job(job.id).await?.ok_or(ApiError::NotFound("job"))?;
        if now.status == job.status {
            return Err(queue_full(max_queued));
        }
        return Err(ApiError::Conflict("the job changed state; try again".to_owned()));
    }
    state.scheduler.notify_queued();
    tracing::info!(job = %job.id, step, "job queued to resume");
    let job = state.store.job(job.id).await?.ok_or(ApiError::NotFound("job"))?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// Delete a finished job with everything it recorded.
#[utoipa::path(delete, operation_id = "delete_job", path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "Queued or running: cancel it first", body = super::ErrorBody),
    ))]
pub async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let job = find_job(&state, &id).await?;
    if !job.status.is_finished() {
        return Err(ApiError::Conflict(format!("the job is {}: cancel it first", job.status.as_str())));
    }
    if !state.store.delete_finished_job(job.id).await? {
        return Err(ApiError::NotFound("job"));
    }
    state.metrics.remove_job(job.id, job.spec.model.kind.as_str(), job.spec.task.kind());
    let weights = state.scheduler.checkpoint_path(job.id);
    for file in [checkpoint::resume_path(&weights), checkpoint::previous_resume_path(&weights), weights] {
        if let Err(err) = tokio::fs::remove_file(&file).await
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(job = %job.id, "failed to remove {}: {err}", file.display());
        }
    }
    tracing::info!(job = %job.id, "job deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Layer {
    pub index: usize,
    /// The parameter's name, as in the checkpoint (`lstm.weight_hh_l0`).
    pub name: String,
    pub shape: Vec<i64>,
    pub numel: i64,
}

impl From<crate::train::LayerInfo> for Layer {
    fn from(l: crate::train::LayerInfo) -> Self {
        Self { index: l.index, name: l.name, shape: l.shape, numel: l.numel }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LayerList {
    pub layers: Vec<Layer>,
}

/// The job's layers (one per named parameter tensor), in their stable order. Empty until
/// the job has started.
#[utoipa::path(get, operation_id = "list_layers", path = "/api/v1/jobs/{id}/layers", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 200, body = LayerList), (status = 404, body = super::ErrorBody)))]
pub async fn layers(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<LayerList>, ApiError> {
    let job = find_job(&state, &id).await?;
    let layers = state.store.layers(job.id).await?;
    Ok(Json(LayerList { layers: layers.into_iter().map(Layer::from).collect() }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// First step (inclusive; default the first).
    from: Option<i64>,
    /// Last step (inclusive; default the last).
    to: Option<i64>,
    /// At most this many points (default 5000, 10 to 100000); longer ranges are downsampled
    /// keeping each bucket's minimum and maximum, so spikes survive.
    #[param(minimum = 10, maximum = 100000)]
    max_points: Option<usize>,
}

/// Per-step scalars, as columns.
#[utoipa::path(get, operation_id = "get_steps", path = "/api/v1/jobs/{id}/steps", tag = "jobs", params(("id" = Uuid, Path), RangeQuery),
    responses((status = 200, body = StepColumns), (status = 400, description = "A malformed query string", body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 422, body = super::ErrorBody)))]
pub async fn steps(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> Result<Response, ApiError> {
    let job = find_job(&state, &id).await?;
    let (from, to, max_points) = range(q.from, q.to, q.max_points)?;
    let _permit = state.heavy_reads.acquire().await.map_err(anyhow::Error::from)?;
    let steps = state.store.steps(job.id, from, to, max_points).await?;
    large_json(steps).await
}

/// Checks a step range query and fills in its defaults.
pub(super) fn range(
    from: Option<i64>,
    to: Option<i64>,
    max_points: Option<usize>,
) -> Result<(i64, i64, usize), ApiError> {
    let (from, to) = (from.unwrap_or(0), to.unwrap_or(i64::MAX));
    if from > to {
        return Err(ApiError::invalid("from", "must not exceed to"));
    }
    let max_points = max_points.unwrap_or(DEFAULT_MAX_POINTS);
    if !(MIN_POINTS..=MAX_MAX_POINTS).contains(&max_points) {
        return Err(ApiError::invalid("max_points", format!("must be {MIN_POINTS} to {MAX_MAX_POINTS}")));
    }
    Ok((from, to, max_points))
}

/// The latest weights as safetensors, with the tensor names of `/layers`.
#[utoipa::path(get, operation_id = "get_checkpoint", path = "/api/v1/jobs/{id}/checkpoint", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "Unknown job, or no checkpoint yet", body = super::ErrorBody)))]
pub async fn checkpoint(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = find_job(&state, &id).await?;
    // Streamed from the file: a checkpoint can be as large as the model, and a burst of
    // downloads must not hold whole copies in memory.
    let file = match tokio::fs::File::open(state.scheduler.checkpoint_path(job.id)).await {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(ApiError::NotFound("checkpoint")),
        Err(err) => return Err(anyhow::Error::from(err).context("failed to open checkpoint").into()),
    };
    let length = file.metadata().await.map_err(anyhow::Error::from)?.len();
    let disposition = format!("attachment; filename=\"{}.safetensors\"", job.id);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        Body::from_stream(ReaderStream::new(file)),
    )
        .into_response())
}
