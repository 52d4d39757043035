//! Extractors whose rejections are [`ApiError`]s, so bad input gets the contract's error
//! shape: JSON bodies (415 without a JSON content type, 413 over the limit, 400 for
//! malformed JSON, 422 naming the field for a value of the wrong type or range) and
//! query strings (400: malformed, or naming a parameter the route does not take). Job specs come in through [`SpecJson`], which parses and checks
//! them in one step ([`JobSpec::parse`]); field paths are named by [`crate::spec::error`].

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use serde::de::DeserializeOwned;
use utoipa::IntoParams;
use utoipa::openapi::path::ParameterIn;

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

/// A JSON body's bytes, within the size limit, for a handler that parses them itself
/// (an experiment, whose checks need the service's limits).
#[derive(Debug, Clone)]
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(JsonBytes(json_body(req, state).await?))
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
            SpecError::Fields(all) => Self::InvalidFields(all),
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

/// A query string of the parameters `T` documents ([`IntoParams`], which the OpenAPI
/// document lists too): a parameter the route does not take is a 400 naming it (a client
/// paging with an `offset` the route ignores would loop on the first page), and so is a
/// malformed value.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + IntoParams, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let known: Vec<String> =
            T::into_params(|| Some(ParameterIn::Query)).into_iter().map(|param| param.name).collect();
        only_known(parts.uri.query().unwrap_or_default(), &known)?;
        let Query(value) = Query::try_from_uri(&parts.uri)?;
        Ok(Self(value))
    }
}

/// Most unknown parameters one refusal names; the rest are counted.
pub const MAX_NAMED_UNKNOWN: usize = 5;
/// Most characters of a parameter's name a refusal repeats.
const MAX_NAME_CHARS: usize = 64;

/// Refuses a query string with a parameter not in `known`, naming the first few (each cut
/// to [`MAX_NAME_CHARS`]) and counting the rest, so the answer stays small however many
/// there are.
fn only_known(query: &str, known: &[String]) -> Result<(), ApiError> {
    let mut unknown: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (name, _) in form_urlencoded::parse(query.as_bytes()) {
        if known.iter().any(|k| *k == name) || !seen.insert(name.clone()) {
            continue;
        }
        if unknown.len() < MAX_NAMED_UNKNOWN {
            unknown.push(shorten(&name));
        }
    }
    let Some(first) = unknown.first().cloned() else { return Ok(()) };
    let quoted = |names: &[String]| names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    let more = seen.len() - unknown.len();
    let names = match (unknown.len(), more) {
        (1, _) => format!("unknown query parameter {}", quoted(&unknown)),
        (_, 0) => format!("unknown query parameters {}", quoted(&unknown)),
        _ => format!("unknown query parameters {} and {more} more", quoted(&unknown)),
    };
    let message = if known.is_empty() {
        format!("{names}: this route takes none")
    } else {
        format!("{names}: this route takes {}", quoted(known))
    };
    Err(ApiError::BadRequest { code: "invalid_query", message, field: Some(first) })
}

/// `name` cut to [`MAX_NAME_CHARS`] characters, with `…` when cut.
fn shorten(name: &str) -> String {
    match name.char_indices().nth(MAX_NAME_CHARS) {
        Some((at, _)) => format!("{}…", &name[..at]),
        None => name.to_owned(),
    }
}

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

    fn known(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    /// The `field` and message of a refused query string.
    fn refusal(query: &str, names: &[&str]) -> (String, String) {
        match only_known(query, &known(names)) {
            Err(ApiError::BadRequest { code: "invalid_query", message, field: Some(field) }) => (field, message),
            other => panic!("expected an invalid_query refusal, got {other:?}"),
        }
    }

    #[test]
    fn known_parameters_pass() {
        assert!(only_known("", &known(&["limit"])).is_ok());
        assert!(only_known("limit=3&status=running", &known(&["status", "limit"])).is_ok());
        // Repeats of a known name are the deserializer's business (it refuses them).
        assert!(only_known("limit=3&limit=4", &known(&["limit"])).is_ok());
    }

    #[test]
    fn unknown_parameters_are_named() {
        let (field, message) = refusal("limit=3&offset=50", &["status", "limit"]);
        assert_eq!(field, "offset");
        assert_eq!(message, "unknown query parameter `offset`: this route takes `status`, `limit`");
        let (field, message) = refusal("a=1&b=2&a=3", &["limit"]);
        assert_eq!(field, "a");
        assert_eq!(message, "unknown query parameters `a`, `b`: this route takes `limit`");
        // Names are decoded as a form decodes them.
        assert_eq!(refusal("my%20param=1", &["limit"]).0, "my param");
        assert_eq!(refusal("x=1", &[]).1, "unknown query parameter `x`: this route takes none");
    }

    #[test]
    fn a_refusal_stays_small() {
        let query: Vec<String> = (0..5000).map(|i| format!("p{i}=1")).collect();
        let (field, message) = refusal(&query.join("&"), &["limit"]);
        assert_eq!(field, "p0");
        assert_eq!(
            message,
            "unknown query parameters `p0`, `p1`, `p2`, `p3`, `p4` and 4995 more: this route takes `limit`"
        );
        let long = "n".repeat(10_000);
        let (field, message) = refusal(&format!("{long}=1"), &["limit"]);
        assert_eq!(field, format!("{}…", "n".repeat(MAX_NAME_CHARS)));
        assert!(message.len() < 200, "{message}");
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
