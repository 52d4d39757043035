//! The one error type at the HTTP boundary. Every error answers
//! `{"error":{"code","message","field"?,"errors"?}}`: a 422 lists every invalid field in
//! `errors`, the first also in `field` and `message`. A 500 says nothing about its cause,
//! which is logged instead.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::jobs::ServiceError;
use crate::spec::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// The request parsed but a field is invalid (422).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The request parsed but several fields are invalid (422): every one, at least two.
    #[error("{}", crate::spec::SpecError::Fields(.0.clone()))]
    InvalidFields(Vec<FieldError>),
    /// The body or query could not be parsed at all (400).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String, field: Option<String> },
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    #[error("{0}")]
    TooManyRequests(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
    /// A refusal with its own status and code (`host_not_allowed`, `cross_origin`,
    /// `corpus_quota`, …), for checks that have no variant of their own.
    #[error("{message}")]
    Refused { status: StatusCode, code: &'static str, message: String },
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `not_found`, `conflict`, `invalid_field`, `invalid_json`,
    /// `invalid_query`, `payload_too_large`, `unsupported_media_type`, `too_many_queued`,
    /// `unauthorized`, `host_not_allowed`, `cross_origin`, `corpus_quota`, `internal`.
    pub code: &'static str,
    pub message: String,
    /// The offending field as a JSON path (`model.hidden`, `policy.grad[0].max_norm`), or
    /// the query parameter a route does not take (`offset`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// With `invalid_field`: every invalid field at once, in the order the checks ran (the
    /// first is the one `field` names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<&str>) {
        match self {
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict", None),
            Self::Invalid { field, .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", Some(field)),
            Self::InvalidFields(all) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", all.first().map(|f| f.field.as_str()))
            }
            Self::BadRequest { code, field, .. } => (StatusCode::BAD_REQUEST, code, field.as_deref()),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None),
            Self::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", None),
            Self::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_queued", None),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
            Self::Refused { status, code, .. } => (*status, code, None),
        }
    }
}

/// The one place where the service's refusals become HTTP answers.
impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::NotFound(what) => Self::NotFound(what),
            ServiceError::Invalid { field, message } => Self::Invalid { field, message },
            ServiceError::Conflict(message) => Self::Conflict(message),
            queue @ (ServiceError::QueueFull { .. } | ServiceError::QueueRoom { .. }) => {
                Self::TooManyRequests(queue.to_string())
            }
            ServiceError::CorpusQuota(message) => {
                Self::Refused { status: StatusCode::TOO_MANY_REQUESTS, code: "corpus_quota", message }
            }
            ServiceError::UploadQuota(message) => {
                Self::Refused { status: StatusCode::TOO_MANY_REQUESTS, code: "upload_quota", message }
            }
            ServiceError::Internal(err) => Self::Internal(err),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, field) = self.parts();
        let message = match &self {
            Self::Internal(err) => {
                tracing::error!("internal error: {err:#}");
                "internal server error".to_owned()
            }
            other => other.to_string(),
        };
        let errors = match &self {
            Self::Invalid { field, message } => {
                Some(vec![FieldError { field: field.clone(), message: message.clone() }])
            }
            Self::InvalidFields(all) => Some(all.clone()),
            _ => None,
        };
        let body = ErrorBody { error: ErrorDetail { code, message, field: field.map(str::to_owned), errors } };
        (status, Json(body)).into_response()
    }
}
