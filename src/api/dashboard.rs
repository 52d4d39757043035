//! The dashboard's files at `/`: built into the binary from `static/` (with the chart
//! library that `scripts/web-deps` copies into `static/vendor/`), so the binary serves the
//! whole dashboard from any working directory. `--static-dir` serves a folder instead, for
//! developing the dashboard (see [`super::router`]).
//!
//! Each file answers with its MIME type, a weak `ETag` from its SHA-256 (weak because the
//! compression layer may re-encode the bytes), `Cache-Control: no-cache` so a browser
//! revalidates and picks up a new binary's files at once, and `304 Not Modified` when the
//! browser's copy is current.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "static/"]
struct Assets;

/// The embedded file a request path names: `/` and any path ending in `/` mean that
/// folder's `index.html`.
fn file_name(path: &str) -> String {
    let path = path.trim_start_matches('/');
    if path.is_empty() || path.ends_with('/') { format!("{path}index.html") } else { path.to_owned() }
}

/// Answers a request for a dashboard file from the embedded copy (the router's fallback:
/// any path that is not a route). GET and HEAD only, as a file server answers.
pub(crate) async fn serve(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET,HEAD")]).into_response();
    }
    let Some(file) = Assets::get(&file_name(uri.path())) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let etag = etag(&file.metadata.sha256_hash());
    let cache = [(header::ETAG, etag.clone()), (header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))];
    if fresh(headers.get(header::IF_NONE_MATCH), &etag) {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    let mime = HeaderValue::from_str(file.metadata.mimetype())
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    (cache, [(header::CONTENT_TYPE, mime)], file.data).into_response()
}

/// A weak entity tag from the first 16 bytes of a file's SHA-256.
fn etag(hash: &[u8; 32]) -> HeaderValue {
    let hex: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("W/\"{hex}\"")).expect("hex digits make a header value")
}

/// Whether an `If-None-Match` header names `etag` (or `*`), compared weakly as RFC 9110
/// says for this header.
fn fresh(if_none_match: Option<&HeaderValue>, etag: &HeaderValue) -> bool {
    let Some(tags) = if_none_match.and_then(|value| value.to_str().ok()) else { return false };
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let ours = opaque(etag.to_str().unwrap_or_default());
    tags.split(',').any(|tag| tag.trim() == "*" || opaque(tag) == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded file a request path names: its bytes and MIME type.
    fn file(path: &str) -> Option<(std::borrow::Cow<'static, [u8]>, String)> {
        let file = Assets::get(&file_name(path))?;
        let mime = file.metadata.mimetype().to_owned();
        Some((file.data, mime))
    }

    #[test]
    fn folders_mean_their_index() {
        assert_eq!(file_name("/"), "index.html");
        assert_eq!(file_name(""), "index.html");
        assert_eq!(file_name("/views/"), "views/index.html");
        assert_eq!(file_name("/app.js"), "app.js");
    }

    #[test]
    fn the_page_and_its_scripts_are_embedded() {
        let (page, mime) = file("/").expect("index.html embedded");
        assert_eq!(mime, "text/html");
        assert!(std::str::from_utf8(&page).expect("utf-8").contains("app.js"));
        assert_eq!(file("/app.js").expect("app.js embedded").1, "text/javascript");
        assert!(file("/nothing-here.js").is_none());
    }

    #[test]
    fn if_none_match_is_compared_weakly() {
        let tag = etag(&[7; 32]);
        let header = |s: &'static str| HeaderValue::from_static(s);
        let hex = "07".repeat(16);
        assert!(fresh(Some(&HeaderValue::from_str(&format!("W/\"{hex}\"")).expect("header")), &tag));
        assert!(fresh(Some(&HeaderValue::from_str(&format!("\"x\", \"{hex}\"")).expect("header")), &tag));
        assert!(fresh(Some(&header("*")), &tag));
        assert!(!fresh(Some(&header("W/\"0707\"")), &tag));
        assert!(!fresh(None, &tag));
    }
}
