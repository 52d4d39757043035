//! `/api/v1/models` and `/api/v1/datasets`: upload, list, read and delete the TorchScript
//! models and safetensors data sets of `torchscript` jobs, within a count and byte quota
//! per kind.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::corpora::{DEFAULT_LIST_LIMIT, ListQuery, MAX_LIST_LIMIT, is_cors_simple};
use super::extract::{ApiQuery, media_type, read_body};
use super::{ApiError, AppState};
use crate::store::{Dataset, UploadKind, UserModel};

/// The body of an upload, sent as `application/octet-stream` (the types a page may send
/// unasked are refused, as for corpora), buffered within `--upload-limit`.
async fn body(state: &AppState, req: Request) -> Result<Vec<u8>, ApiError> {
    if is_cors_simple(media_type(&req).as_deref()) {
        return Err(ApiError::UnsupportedMediaType(
            "send the file with Content-Type: application/octet-stream (text/plain and form types are refused)",
        ));
    }
    Ok(Vec::from(read_body(req, state).await?))
}

/// A list's `limit`, checked.
fn limit(q: &ListQuery) -> Result<i64, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be 1 to {MAX_LIST_LIMIT}")));
    }
    Ok(limit)
}

/// Only server-made ids name an upload (and its file).
fn id(raw: &str, what: &'static str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(what))
}

/// Upload a TorchScript module (`torch.jit.script(model).save(path)` or
/// `torch.jit.trace(...)`), as `Content-Type: application/octet-stream`. LibTorch loads
/// it, in a worker process of its own, before it is kept; the answer lists its
/// parameters, which become a job's layers, its frozen parameters and its buffers.
/// Use the returned `id` as `model.id` with `model.kind` `torchscript`.
#[utoipa::path(post, operation_id = "upload_model", path = "/api/v1/models", tag = "models",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "A TorchScript file; the upload limit is set by --upload-limit"),
    responses(
        (status = 201, body = UserModel),
        (status = 413, description = "Larger than the upload limit", body = super::ErrorBody),
        (status = 415, description = "Not sent as application/octet-stream", body = super::ErrorBody),
        (status = 422, description = "Not TorchScript, no trainable parameters, or parameters that are not float32; or the process checking the module died or ran past --check-timeout (the message says why)", body = super::ErrorBody),
        (status = 429, description = "Over --max-uploads or --upload-quota: delete some models first", body = super::ErrorBody),
    ))]
pub(crate) async fn create_model(
    State(state): State<AppState>,
    req: Request,
) -> Result<(StatusCode, Json<UserModel>), ApiError> {
    let _permit = state.uploads.acquire().await.map_err(anyhow::Error::from)?;
    let bytes = body(&state, req).await?;
    Ok((StatusCode::CREATED, Json(state.jobs.upload_model(bytes).await?)))
}

/// Upload a data set: a safetensors file holding `x` and `y` (and optionally `x_val`,
/// `y_val`), as `Content-Type: application/octet-stream`. Each tensor is checked (dtype,
/// shape, matching samples, finite values); a refusal names the tensor in `field`. Use
/// the returned `id` as `task.id` with `task.kind` `dataset`.
#[utoipa::path(post, operation_id = "upload_dataset", path = "/api/v1/datasets", tag = "datasets",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "A safetensors file; the upload limit is set by --upload-limit"),
    responses(
        (status = 201, body = Dataset),
        (status = 413, description = "Larger than the upload limit", body = super::ErrorBody),
        (status = 415, description = "Not sent as application/octet-stream", body = super::ErrorBody),
        (status = 422, description = "Not safetensors, or a tensor missing, of an unsupported dtype, mismatched or not finite (`field` names it)", body = super::ErrorBody),
        (status = 429, description = "Over --max-uploads or --upload-quota: delete some data sets first", body = super::ErrorBody),
    ))]
pub(crate) async fn create_dataset(
    State(state): State<AppState>,
    req: Request,
) -> Result<(StatusCode, Json<Dataset>), ApiError> {
    let _permit = state.uploads.acquire().await.map_err(anyhow::Error::from)?;
    let bytes = body(&state, req).await?;
    Ok((StatusCode::CREATED, Json(state.jobs.upload_dataset(bytes).await?)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Newest first.
    pub models: Vec<UserModel>,
    /// Models stored, all of them (the list may be cut at `limit`).
    pub count: i64,
    /// Bytes they take together.
    pub bytes: i64,
    /// This service's limits: `--max-uploads` and `--upload-quota`.
    pub max_models: i64,
    pub quota_bytes: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DatasetList {
    /// Newest first.
    pub datasets: Vec<Dataset>,
    pub count: i64,
    pub bytes: i64,
    /// This service's limits: `--max-uploads` and `--upload-quota`.
    pub max_datasets: i64,
    pub quota_bytes: i64,
}

/// List uploaded models, newest first, with the space they use and the quota.
#[utoipa::path(get, operation_id = "list_models", path = "/api/v1/models", tag = "models", params(ListQuery),
    responses(
        (status = 200, body = ModelList),
        (status = 400, description = "A malformed query string, or a parameter the route does not take", body = super::ErrorBody),
        (status = 422, body = super::ErrorBody),
    ))]
pub(crate) async fn list_models(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ModelList>, ApiError> {
    let models = state.store.list_models(limit(&q)?).await?;
    let usage = state.store.upload_usage(UploadKind::Model).await?;
    let limits = state.jobs.upload_limits(UploadKind::Model);
    Ok(Json(ModelList {
        models,
        count: usage.count,
        bytes: usage.bytes,
        max_models: limits.max_count,
        quota_bytes: limits.quota_bytes,
    }))
}

/// List uploaded data sets, newest first, with the space they use and the quota.
#[utoipa::path(get, operation_id = "list_datasets", path = "/api/v1/datasets", tag = "datasets", params(ListQuery),
    responses(
        (status = 200, body = DatasetList),
        (status = 400, description = "A malformed query string, or a parameter the route does not take", body = super::ErrorBody),
        (status = 422, body = super::ErrorBody),
    ))]
pub(crate) async fn list_datasets(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<DatasetList>, ApiError> {
    let datasets = state.store.list_datasets(limit(&q)?).await?;
    let usage = state.store.upload_usage(UploadKind::Dataset).await?;
    let limits = state.jobs.upload_limits(UploadKind::Dataset);
    Ok(Json(DatasetList {
        datasets,
        count: usage.count,
        bytes: usage.bytes,
        max_datasets: limits.max_count,
        quota_bytes: limits.quota_bytes,
    }))
}

/// An uploaded model: its parameters and buffers.
#[utoipa::path(get, operation_id = "get_model", path = "/api/v1/models/{id}", tag = "models",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = UserModel), (status = 404, body = super::ErrorBody)))]
pub(crate) async fn get_model(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<UserModel>, ApiError> {
    let id = id(&raw, "model")?;
    state.store.user_model(&id.to_string()).await?.map(Json).ok_or(ApiError::NotFound("model"))
}

/// An uploaded data set: its tensors and samples.
#[utoipa::path(get, operation_id = "get_dataset", path = "/api/v1/datasets/{id}", tag = "datasets",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Dataset), (status = 404, body = super::ErrorBody)))]
pub(crate) async fn get_dataset(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Dataset>, ApiError> {
    let id = id(&raw, "dataset")?;
    state.store.dataset(&id.to_string()).await?.map(Json).ok_or(ApiError::NotFound("dataset"))
}

/// Delete an uploaded model and its file. Finished jobs that trained it keep their
/// records, but can no longer be resumed.
#[utoipa::path(delete, operation_id = "delete_model", path = "/api/v1/models/{id}", tag = "models",
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "A queued or running job uses it: cancel the job or wait for it", body = super::ErrorBody),
    ))]
pub(crate) async fn delete_model(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.jobs.delete_upload(UploadKind::Model, id(&raw, "model")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete an uploaded data set and its file. Finished jobs that trained on it keep their
/// records, but can no longer be resumed.
#[utoipa::path(delete, operation_id = "delete_dataset", path = "/api/v1/datasets/{id}", tag = "datasets",
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "A queued or running job uses it: cancel the job or wait for it", body = super::ErrorBody),
    ))]
pub(crate) async fn delete_dataset(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.jobs.delete_upload(UploadKind::Dataset, id(&raw, "dataset")?).await?;
    Ok(StatusCode::NO_CONTENT)
}
