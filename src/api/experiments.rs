//! `/api/v1/experiments`: grids of job specs × seeds, submitted as one request, with
//! their progress and their results per cell (JSON, and CSV at `/results.csv`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::extract::{ApiQuery, JsonBytes};
use super::jobs::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
use super::{ApiError, AppState};
use crate::jobs::experiments::{Experiment, ExperimentResults};
use crate::jobs::results::csv;
use crate::spec::ExperimentSpec;

/// Ids that are not UUIDs name no experiment.
fn experiment_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound("experiment"))
}

/// Submit an experiment: its grid (every combination of the axes' values) × its seeds,
/// each a job. Every cell is checked as a job would be before any job is queued.
#[utoipa::path(post, operation_id = "create_experiment", path = "/api/v1/experiments", tag = "experiments",
    request_body = ExperimentSpec,
    responses(
        (status = 201, description = "Every job queued", body = Experiment,
            headers(("Location" = String, description = "The experiment's URL"))),
        (status = 400, description = "Malformed JSON", body = super::ErrorBody),
        (status = 413, description = "Body too large", body = super::ErrorBody),
        (status = 415, description = "Not JSON", body = super::ErrorBody),
        (status = 422, description = "Invalid experiment, a cell whose spec is invalid or above the limits (`field` names the axis value, e.g. `axes[1].values[2]`, or the base spec's field, e.g. `base.model.hidden`; the message names the cell), or a grid above --max-experiment-jobs (`field` is `axes` or `seeds`)", body = super::ErrorBody),
        (status = 429, description = "Its jobs do not fit in the queue", body = super::ErrorBody),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    JsonBytes(body): JsonBytes,
) -> Result<(StatusCode, [(header::HeaderName, String); 1], Json<Experiment>), ApiError> {
    let max_jobs = state.jobs.max_experiment_jobs();
    // Expanding and checking up to a few hundred specs is CPU work: off the async workers.
    let valid = tokio::task::spawn_blocking(move || ExperimentSpec::parse(&body, max_jobs))
        .await
        .map_err(anyhow::Error::from)??;
    let experiment = state.jobs.submit_experiment(&valid).await?;
    let location = format!("/api/v1/experiments/{}", experiment.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(experiment)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// How many (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExperimentList {
    pub experiments: Vec<Experiment>,
}

/// List experiments, newest first, with their progress.
#[utoipa::path(get, operation_id = "list_experiments", path = "/api/v1/experiments", tag = "experiments",
    params(ListQuery),
    responses((status = 200, body = ExperimentList),
        (status = 400, description = "A malformed query string, or a parameter the route does not take", body = super::ErrorBody),
        (status = 422, body = super::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ExperimentList>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be 1 to {MAX_LIST_LIMIT}")));
    }
    Ok(Json(ExperimentList { experiments: state.jobs.list_experiments(limit).await? }))
}

/// One experiment with its progress and its jobs.
#[utoipa::path(get, operation_id = "get_experiment", path = "/api/v1/experiments/{id}", tag = "experiments",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Experiment), (status = 404, body = super::ErrorBody)))]
pub(crate) async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Experiment>, ApiError> {
    Ok(Json(state.jobs.experiment(experiment_id(&id)?).await?))
}

/// Cancel every queued or running job of an experiment.
#[utoipa::path(post, operation_id = "cancel_experiment", path = "/api/v1/experiments/{id}/cancel", tag = "experiments",
    params(("id" = Uuid, Path)),
    responses(
        (status = 202, description = "Its queued jobs cancelled, its running ones cancelling", body = Experiment),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "Every job has already ended", body = super::ErrorBody),
    ))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Experiment>), ApiError> {
    let experiment = state.jobs.cancel_experiment(experiment_id(&id)?).await?;
    Ok((StatusCode::ACCEPTED, Json(experiment)))
}

/// Delete an experiment and all its jobs with everything they recorded.
#[utoipa::path(delete, operation_id = "delete_experiment", path = "/api/v1/experiments/{id}", tag = "experiments",
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "Some of its jobs are queued or running: cancel it first", body = super::ErrorBody),
    ))]
pub(crate) async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    state.jobs.delete_experiment(experiment_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Results per cell, over its seeds: final training and validation loss and validation
/// metric (mean and sample standard deviation, over the completed runs that did not
/// diverge), divergence and solved rates, the median step at which the threshold was
/// first met, and steps/s; and each job's own figures. Runs still queued or running count
/// in `jobs` only.
#[utoipa::path(get, operation_id = "get_experiment_results", path = "/api/v1/experiments/{id}/results", tag = "experiments",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ExperimentResults), (status = 404, body = super::ErrorBody)))]
pub(crate) async fn results(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ExperimentResults>, ApiError> {
    Ok(Json(state.jobs.experiment_results(experiment_id(&id)?).await?))
}

/// The results per cell as CSV: `cell`, one column per axis (its path; the cell's labels),
/// then `jobs, completed, train_loss_mean, train_loss_std, val_loss_mean, val_loss_std,
/// val_metric_mean, val_metric_std, divergence_rate, solved_rate, steps_to_threshold,
/// reached, steps_per_second_mean, steps_per_second_std` (empty where there is no value).
#[utoipa::path(get, operation_id = "get_experiment_results_csv", path = "/api/v1/experiments/{id}/results.csv", tag = "experiments",
    params(("id" = Uuid, Path)),
    responses((status = 200, content_type = "text/csv", body = String), (status = 404, body = super::ErrorBody)))]
pub(crate) async fn results_csv(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = experiment_id(&id)?;
    let results = state.jobs.experiment_results(id).await?;
    let disposition = format!("attachment; filename=\"experiment-{id}.csv\"");
    Ok((
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, disposition)],
        csv(&results.axes, &results.cells),
    )
        .into_response())
}
