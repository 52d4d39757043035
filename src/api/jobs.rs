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

use super::extract::{ApiQuery, SpecJson, large_json};
use super::{ApiError, AppState};
use crate::spec::{FieldError, JobSpec};
use crate::store::downsample::MIN_POINTS;
use crate::store::{DEFAULT_MAX_POINTS, Job, JobFilter, JobSort, JobSortKey, JobStatus, MAX_MAX_POINTS, StepColumns};

pub(crate) const DEFAULT_LIST_LIMIT: i64 = 50;
pub(crate) const MAX_LIST_LIMIT: i64 = 500;

/// Ids that are not UUIDs name no job.
fn job_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound("job"))
}

pub(super) async fn find_job(state: &AppState, raw: &str) -> Result<Job, ApiError> {
    Ok(state.jobs.get(job_id(raw)?).await?)
}

/// Submit a job. It is queued and starts when a slot is free.
#[utoipa::path(post, operation_id = "create_job", path = "/api/v1/jobs", tag = "jobs", request_body = JobSpec,
    responses(
        (status = 201, description = "Queued", body = Job,
            headers(("Location" = String, description = "The job's URL"))),
        (status = 400, description = "Malformed JSON", body = super::ErrorBody),
        (status = 413, description = "Body too large", body = super::ErrorBody),
        (status = 415, description = "Not JSON", body = super::ErrorBody),
        (status = 422, description = "Invalid spec, or above the size limits, or (a torchscript model) a dry run that failed, or whose process died or ran past --check-timeout; `field` names the offending field", body = super::ErrorBody),
        (status = 429, description = "Too many jobs queued", body = super::ErrorBody),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    SpecJson(spec): SpecJson,
) -> Result<(StatusCode, [(header::HeaderName, String); 1], Json<Job>), ApiError> {
    let job = state.jobs.submit(&spec).await?;
    let location = format!("/api/v1/jobs/{}", job.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(job)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only jobs with this status.
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// How many (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// How many of the matching jobs, in this order, to skip first (default 0, at most 1,000,000): page
    /// `p` of `limit` jobs starts at `(p - 1) × limit`.
    #[param(minimum = 0, maximum = 1_000_000)]
    offset: Option<i64>,
    /// Only jobs whose name contains this (ASCII letters in any case; 1 to 200 characters).
    name: Option<String>,
    /// Only jobs of this model kind (`spec.model.kind`: `mlp`, `lstm`, …).
    model: Option<String>,
    /// Only jobs of this task kind (`spec.task.kind`: `classification`, `char_lm`, …).
    task: Option<String>,
    /// The order: `created` (the default), `name`, `status`, `loss` (the last recorded) or `step`.
    sort: Option<String>,
    /// `desc` (the default: newest, or largest, first) or `asc`. Jobs without a value (no loss
    /// yet) come last either way; ties newest first.
    order: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// How many jobs match the filters (all pages).
    pub total: i64,
}

/// Longest `name` a listing searches for.
const MAX_NAME_QUERY: usize = 200;
/// Largest `offset` of a listing.
const MAX_LIST_OFFSET: i64 = 1_000_000;

/// A kind (`model`, `task`) as a listing takes it: 1 to 64 lowercase letters, digits and `_`.
fn kind_param(field: &str, value: Option<String>, errors: &mut Vec<FieldError>) -> Option<String> {
    let value = value?;
    if value.is_empty()
        || value.len() > 64
        || !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        errors.push(FieldError {
            field: field.to_owned(),
            message: "must be a kind: 1 to 64 lowercase letters, digits or `_`".to_owned(),
        });
        return None;
    }
    Some(value)
}

/// List jobs, newest first unless `sort` and `order` say otherwise; a page of them at a time
/// (`limit`, `offset`), with how many match (`total`).
#[utoipa::path(get, operation_id = "list_jobs", path = "/api/v1/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, description = "A malformed query string, or a parameter the route does not take", body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    // Every invalid parameter at once.
    let mut errors = Vec::new();
    let mut invalid = |field: &str, message: String| errors.push(FieldError { field: field.to_owned(), message });
    let status = q.status.as_deref().and_then(|s| {
        let parsed = JobStatus::parse(s);
        if parsed.is_none() {
            let known: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
            invalid("status", format!("must be one of {}", known.join(", ")));
        }
        parsed
    });
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        invalid("limit", format!("must be 1 to {MAX_LIST_LIMIT}"));
    }
    let offset = q.offset.unwrap_or(0);
    if !(0..=MAX_LIST_OFFSET).contains(&offset) {
        invalid("offset", format!("must be 0 to {MAX_LIST_OFFSET}"));
    }
    if let Some(name) = &q.name
        && (name.is_empty() || name.chars().count() > MAX_NAME_QUERY)
    {
        invalid("name", format!("must be 1 to {MAX_NAME_QUERY} characters"));
    }
    let key = match q.sort.as_deref() {
        None => JobSortKey::Created,
        Some(s) => JobSortKey::ALL.iter().find(|(n, _)| *n == s).map(|(_, k)| *k).unwrap_or_else(|| {
            let known: Vec<&str> = JobSortKey::ALL.iter().map(|(n, _)| *n).collect();
            invalid("sort", format!("must be one of {}", known.join(", ")));
            JobSortKey::Created
        }),
    };
    let descending = match q.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => {
            invalid("order", "must be asc or desc".to_owned());
            true
        }
    };
    let model = kind_param("model", q.model, &mut errors);
    let task = kind_param("task", q.task, &mut errors);
    match errors.len() {
        0 => {}
        1 => {
            let FieldError { field, message } = errors.remove(0);
            return Err(ApiError::Invalid { field, message });
        }
        _ => return Err(ApiError::InvalidFields(errors)),
    }
    let filter = JobFilter { status, name: q.name, model, task };
    let (jobs, total) = state.store.list_jobs_page(&filter, JobSort { key, descending }, limit, offset).await?;
    Ok(Json(JobList { jobs, total }))
}

/// One job.
#[utoipa::path(get, operation_id = "get_job", path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 200, body = Job), (status = 404, body = super::ErrorBody)))]
pub(crate) async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Job>, ApiError> {
    Ok(Json(find_job(&state, &id).await?))
}

/// Cancel a queued or running job. A running job stops before its next step.
#[utoipa::path(post, operation_id = "cancel_job", path = "/api/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = Uuid, Path)),
    responses(
        (status = 202, description = "Cancelled or cancelling", body = Job),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "Already finished", body = super::ErrorBody),
    ))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let job = state.jobs.cancel(job_id(&id)?).await?;
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
pub(crate) async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let job = state.jobs.resume(job_id(&id)?).await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// Delete a finished job with everything it recorded.
#[utoipa::path(delete, operation_id = "delete_job", path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "Queued or running: cancel it first", body = super::ErrorBody),
    ))]
pub(crate) async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    state.jobs.delete(job_id(&id)?).await?;
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
pub(crate) async fn layers(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<LayerList>, ApiError> {
    let job = find_job(&state, &id).await?;
    let layers = state.store.layers(job.id).await?;
    Ok(Json(LayerList { layers: layers.into_iter().map(Layer::from).collect() }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RangeQuery {
    /// First step (inclusive; default the first).
    from: Option<i64>,
    /// Last step (inclusive; default the last).
    to: Option<i64>,
    /// At most this many points (default 5000, 10 to 100000); longer ranges are downsampled
    /// keeping each bucket's minimum and maximum, so spikes survive: `max_points / 5`
    /// buckets of consecutive steps, each keeping its steps of the smallest and largest
    /// loss and gradient norm and its first step with a null. Every point is a recorded
    /// step; a thinned range is read from pre-aggregated blocks of 16^k steps, so its cost
    /// follows `max_points`, not the job's length.
    #[param(minimum = 10, maximum = 100000)]
    max_points: Option<usize>,
}

/// Per-step scalars, as columns.
#[utoipa::path(get, operation_id = "get_steps", path = "/api/v1/jobs/{id}/steps", tag = "jobs", params(("id" = Uuid, Path), RangeQuery),
    responses((status = 200, body = StepColumns), (status = 400, description = "A malformed query string, or a parameter the route does not take", body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 422, body = super::ErrorBody)))]
pub(crate) async fn steps(
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
pub(crate) async fn checkpoint(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = find_job(&state, &id).await?;
    // Streamed from the file: a checkpoint can be as large as the model, and a burst of
    // downloads must not hold whole copies in memory.
    let Some((file, length)) = state.jobs.data().open_checkpoint(job.id).await? else {
        return Err(ApiError::NotFound("checkpoint"));
    };
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
