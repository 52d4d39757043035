//! `/api/v1/corpora`: upload, list and delete the text corpora of `char_lm` jobs, within a
//! count and byte quota.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::extract::{ApiQuery, media_type, read_body};
use super::{ApiError, AppState};
use crate::store::Corpus;

/// Corpora a list answers with when `limit` is not given.
pub(crate) const DEFAULT_LIST_LIMIT: i64 = 100;
/// Most corpora one list answers with.
pub(crate) const MAX_LIST_LIMIT: i64 = 1000;

/// Content types a browser may send cross-site without a CORS preflight. A corpus upload
/// with one of them (or with none) could come from any web page the user visits, so it is
/// refused: a client must say `application/octet-stream`, which needs a preflight.
const CORS_SIMPLE_TYPES: [&str; 3] = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"];

pub(crate) fn is_cors_simple(media_type: Option<&str>) -> bool {
    let Some(essence) = media_type else { return true };
    essence.is_empty() || CORS_SIMPLE_TYPES.contains(&essence)
}

/// Upload a UTF-8 text corpus: the body is the text, sent as
/// `Content-Type: application/octet-stream` (`text/plain` and the form types are refused
/// with 415, since a web page can send those to this service without asking). Use the
/// returned `id` as `task.corpus`.
#[utoipa::path(post, operation_id = "upload_corpus", path = "/api/v1/corpora", tag = "corpora",
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The corpus as UTF-8 text; the upload limit is set by --corpus-limit"),
    responses(
        (status = 201, body = Corpus),
        (status = 413, description = "Larger than the corpus limit", body = super::ErrorBody),
        (status = 415, description = "Not sent as application/octet-stream", body = super::ErrorBody),
        (status = 422, description = "Not UTF-8, or too short", body = super::ErrorBody),
        (status = 429, description = "Over --max-corpora or --corpus-quota: delete some corpora first", body = super::ErrorBody),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    req: Request,
) -> Result<(StatusCode, Json<Corpus>), ApiError> {
    if is_cors_simple(media_type(&req).as_deref()) {
        return Err(ApiError::UnsupportedMediaType(
            "send the corpus with Content-Type: application/octet-stream (text/plain and form types are refused)",
        ));
    }
    // A body is buffered whole (up to the corpus limit): uploads take turns, so a burst of
    // them cannot hold many at once.
    let _permit = state.uploads.acquire().await.map_err(anyhow::Error::from)?;
    let body = read_body(req, &state).await?;
    let corpus = state.jobs.upload_corpus(Vec::from(body)).await?;
    Ok((StatusCode::CREATED, Json(corpus)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// How many (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CorpusList {
    /// Newest first.
    pub corpora: Vec<Corpus>,
    /// Corpora stored, all of them (the list may be cut at `limit`).
    pub count: i64,
    /// Bytes they take together.
    pub bytes: i64,
    /// This service's limits: `--max-corpora` and `--corpus-quota`.
    pub max_corpora: i64,
    pub quota_bytes: i64,
}

/// List uploaded corpora, newest first, with the space they use and the quota.
#[utoipa::path(get, operation_id = "list_corpora", path = "/api/v1/corpora", tag = "corpora", params(ListQuery),
    responses(
        (status = 200, body = CorpusList),
        (status = 400, description = "A malformed query string, or a parameter the route does not take", body = super::ErrorBody),
        (status = 422, body = super::ErrorBody),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<CorpusList>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be 1 to {MAX_LIST_LIMIT}")));
    }
    let corpora = state.store.list_corpora(limit).await?;
    let usage = state.store.corpus_usage().await?;
    Ok(Json(CorpusList {
        corpora,
        count: usage.count,
        bytes: usage.bytes,
        max_corpora: state.jobs.corpus_limits().max_count,
        quota_bytes: state.jobs.corpus_limits().quota_bytes,
    }))
}

/// Delete an uploaded corpus and its file. Finished jobs that trained on it keep their
/// records, but can no longer be resumed.
#[utoipa::path(delete, operation_id = "delete_corpus", path = "/api/v1/corpora/{id}", tag = "corpora",
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = super::ErrorBody),
        (status = 409, description = "A queued or running job uses it: cancel the job or wait for it", body = super::ErrorBody),
    ))]
pub(crate) async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    // Only server-made ids name a corpus (and its file).
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound("corpus"))?;
    state.jobs.delete_corpus(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use axum::http::header::CONTENT_TYPE;

    use super::*;

    /// Whether an upload with `content_type` is refused as one a page may send unasked.
    fn simple(content_type: Option<&str>) -> bool {
        let mut request = Request::new(axum::body::Body::empty());
        if let Some(ct) = content_type {
            request.headers_mut().insert(CONTENT_TYPE, ct.parse().expect("header"));
        }
        is_cors_simple(media_type(&request).as_deref())
    }

    #[test]
    fn simple_content_types_are_refused() {
        for ct in [
            None,
            Some(""),
            Some("text/plain"),
            Some("Text/Plain; charset=utf-8"),
            Some("multipart/form-data; boundary=x"),
        ] {
            assert!(simple(ct), "{ct:?}");
        }
        assert!(simple(Some("application/x-www-form-urlencoded")));
        assert!(!simple(Some("application/octet-stream")));
        assert!(!simple(Some("text/markdown; charset=utf-8")));
    }
}
