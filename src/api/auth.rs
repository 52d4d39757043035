//! Optional bearer tokens. With `--api-token` set (or generated at start-up, see
//! [`crate::startup`]), every `/api` request needs `Authorization: Bearer <token>`; only
//! the WebSocket stream may pass `?token=` instead, since browsers cannot set headers on
//! one. With `--metrics-token` set, `/metrics` needs its own token. Tokens are compared in
//! constant time and never logged: [`loggable_uri`] blanks them out of request logs.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{ErrorBody, ErrorDetail};

/// The query parameter a WebSocket client may carry its token in.
const TOKEN_PARAM: &str = "token";

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

/// The credentials of an `Authorization` header with the `Bearer` scheme, whose name is
/// case-insensitive (RFC 7235 section 2.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
}

/// Whether `path` is a job's WebSocket stream, the one route a token may come in the URL
/// for. Inside the `/api/v1` router the prefix is already gone; outside it is not.
fn is_stream(path: &str) -> bool {
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    matches!(segments.as_slice(), ["", "jobs", id, "stream"] if !id.is_empty())
}

/// The token a request carries: the bearer header, else (on the stream only) a `token`
/// query parameter.
fn presented(req: &Request) -> Option<String> {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(token) = header.and_then(bearer) {
        return Some(token.to_owned());
    }
    if req.method() != Method::GET || !is_stream(req.uri().path()) {
        return None;
    }
    let query = req.uri().query()?;
    query.split('&').find_map(|pair| pair.strip_prefix("token=")).map(|raw| percent_decode(raw).into_owned())
}

/// Decodes a form-encoded query value (`+` is a space, `%XX` a byte); a malformed escape
/// is kept as it is.
fn percent_decode(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['%', '+']) {
        return Cow::Borrowed(raw);
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The request target as request logs show it: the path and query, with the value of any
/// `token` parameter replaced, so a WebSocket's token never reaches a log.
pub fn loggable_uri(uri: &Uri) -> Cow<'_, str> {
    let Some(query) = uri.query() else { return Cow::Borrowed(uri.path()) };
    let query: Vec<&str> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((TOKEN_PARAM, _)) => "token=REDACTED",
            _ => pair,
        })
        .collect();
    Cow::Owned(format!("{}?{}", uri.path(), query.join("&")))
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
            errors: None,
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
        assert!(Tokens::new(&[String::new(), " ".to_owned()]).is_open());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn only_the_stream_takes_a_query_token() {
        assert!(is_stream("/api/v1/jobs/0190/stream"));
        assert!(is_stream("/jobs/0190/stream"));
        assert!(!is_stream("/jobs"));
        assert!(!is_stream("/jobs/0190/checkpoint"));
        assert!(!is_stream("/jobs//stream"));
        assert!(!is_stream("/api/v1/jobs/0190/stream/x"));
    }

    #[test]
    fn query_tokens_are_decoded() {
        assert_eq!(percent_decode("a%2Bb%2f%3D"), "a+b/=");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%41"), "A");
    }

    #[test]
    fn logs_never_show_a_token() {
        let uri: Uri = "/api/v1/jobs/1/stream?every=10&token=s3cret&layers=0,1".parse().expect("uri");
        let logged = loggable_uri(&uri);
        assert_eq!(logged, "/api/v1/jobs/1/stream?every=10&token=REDACTED&layers=0,1");
        assert!(!logged.contains("s3cret"));
        let plain: Uri = "/api/v1/jobs?limit=5".parse().expect("uri");
        assert_eq!(loggable_uri(&plain), "/api/v1/jobs?limit=5");
    }
}
