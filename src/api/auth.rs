//! Optional bearer tokens. With `--api-token` set, every `/api` request needs
//! `Authorization: Bearer <token>` (a WebSocket may pass `?token=` instead, since browsers
//! cannot set headers on one); with `--metrics-token` set, so does `/metrics`. Tokens are
//! compared in constant time and never logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{ErrorBody, ErrorDetail};

/// Accepted tokens for one part of the service; empty means open.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Arc<Vec<String>>);

impl Tokens {
    pub fn new(tokens: &[String]) -> Self {
        Self(Arc::new(tokens.iter().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect()))
    }

    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `candidate` is one of the tokens (every token is compared, in constant time).
    fn accepts(&self, candidate: &str) -> bool {
        self.0.iter().fold(false, |found, token| found | bool::from(token.as_bytes().ct_eq(candidate.as_bytes())))
    }
}

/// The token a request carries: the bearer header, else a `token` query parameter.
fn presented(req: &Request) -> Option<String> {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) {
        return Some(token.trim().to_owned());
    }
    let query = req.uri().query()?;
    query.split('&').find_map(|pair| pair.strip_prefix("token=")).map(|t| {
        // Tokens are URL-safe in practice; decode the common escapes anyway.
        t.replace("%2B", "+").replace("%2F", "/").replace("%3D", "=")
    })
}

/// Rejects requests without an accepted token (401 in the contract's error shape).
pub async fn require(State(tokens): State<Tokens>, req: Request, next: Next) -> Response {
    if tokens.is_open() || presented(&req).is_some_and(|t| tokens.accepts(&t)) {
        return next.run(req).await;
    }
    let body = ErrorBody {
        error: ErrorDetail {
            code: "unauthorized",
            message: "missing or wrong token: send Authorization: Bearer <token>".to_owned(),
            field: None,
        },
    };
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly() {
        let tokens = Tokens::new(&["alpha".to_owned(), " beta ".to_owned(), String::new()]);
        assert!(tokens.accepts("alpha") && tokens.accepts("beta"));
        assert!(!tokens.accepts("alph") && !tokens.accepts("alphaa") && !tokens.accepts(""));
        assert!(Tokens::new(&[]).is_open());
    }
}
