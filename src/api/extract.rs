//! Extractors whose rejections are [`ApiError`]s, so bad input gets the contract's error
//! shape: JSON bodies (415 without a JSON content type, 413 over the limit, 400 for
//! malformed JSON, 422 naming the field for a value of the wrong type or range) and
//! query strings (400). Job specs come in through [`SpecJson`], which parses and checks
//! them in one step ([`JobSpec::parse`]); field paths are named by [`crate::spec::error`].

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::spec::{JobSpec, SpecError, ValidSpec};

/// A job spec body, parsed and checked.
#[derive(Debug, Clone)]
pub struct SpecJson(pub ValidSpec);

impl<S: Send + Sync> FromRequest<S> for SpecJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(SpecJson(JobSpec::parse(&json_body(req, state).await?)?))
    }
}

/// The body of a request that says it is JSON (415 when it does not).
async fn json_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    if !is_json(media_type(&req).as_deref()) {
        return Err(ApiError::UnsupportedMediaType("expected Content-Type: application/json"));
    }
    read_body(req, state).await
}

impl From<SpecError> for ApiError {
    fn from(err: SpecError) -> Self {
        match err {
            SpecError::Field { field, message } => Self::Invalid { field, message },
            err @ SpecError::Syntax(_) => {
                Self::BadRequest { code: "invalid_json", message: err.to_string(), field: None }
            }
        }
    }
}

/// The request's media type without parameters, in lower case (`text/plain` for
/// `Text/Plain; charset=utf-8`); `None` without a readable `Content-Type`.
pub fn media_type(req: &Request) -> Option<String> {
    let content_type = req.headers().get(CONTENT_TYPE)?.to_str().ok()?;
    Some(content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

/// The whole body, within the route's size limit: 413 above it, 400 when it cannot be read.
pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest { code: "invalid_body", message: rejection.body_text(), field: None }
        }
    })
}

fn is_json(media_type: Option<&str>) -> bool {
    let Some(essence) = media_type else { return false };
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Most items a comma-separated query parameter may hold, repeats included. Lists name
/// layers or statistics, of which a job has at most a few thousand.
pub const MAX_LIST_ITEMS: usize = 4096;

/// The distinct items of a comma-separated query parameter, in first-seen order: a
/// repeated item is asked for once, so a long URL cannot multiply the work behind it.
pub fn query_list<'a>(raw: &'a str, field: &str) -> Result<Vec<&'a str>, ApiError> {
    let items: Vec<&str> = raw.split(',').take(MAX_LIST_ITEMS + 1).map(str::trim).collect();
    if items.len() > MAX_LIST_ITEMS {
        return Err(ApiError::invalid(field, format!("at most {MAX_LIST_ITEMS} items")));
    }
    Ok(distinct(items))
}

/// `items` with repeats left out, in first-seen order.
pub fn distinct<T: Copy + Eq + std::hash::Hash>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    items.into_iter().filter(|item| seen.insert(*item)).collect()
}

/// `value` as a JSON answer, serialised on a blocking thread: for answers that can run to
/// megabytes, so writing them never holds an async worker that probes and light requests
/// are waiting for.
pub async fn large_json<T: serde::Serialize + Send + 'static>(value: T) -> Result<Response, ApiError> {
    let bytes = tokio::task::spawn_blocking(move || serde_json::to_vec(&value))
        .await
        .map_err(anyhow::Error::from)?
        .map_err(anyhow::Error::from)?;
    Ok(([(CONTENT_TYPE, "application/json")], bytes).into_response())
}

/// A query string; a malformed one is a 400 in the contract's shape.
#[derive(Debug, Clone, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest { code: "invalid_query", message: rejection.body_text(), field: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a request with `content_type` is taken as JSON.
    fn json(content_type: Option<&str>) -> bool {
        let mut request = Request::new(axum::body::Body::empty());
        if let Some(ct) = content_type {
            request.headers_mut().insert(CONTENT_TYPE, ct.parse().expect("header"));
        }
        is_json(media_type(&request).as_deref())
    }

    #[test]
    fn content_types() {
        assert!(json(Some("application/json")));
        assert!(json(Some("Application/JSON; charset=utf-8")));
        assert!(json(Some("application/merge-patch+json")));
        assert!(!json(Some("text/plain")));
        assert!(!json(None));
    }
}
