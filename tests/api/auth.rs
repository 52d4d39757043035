//! Bearer tokens on the API, the stream and the metrics.

use serde_json::Value;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{spawn_app_with, tiny_lstm_spec};

#[tokio::test]
async fn tokens_are_required_where_configured() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| {
        config.api_token = vec!["s3cret".to_owned(), "second".to_owned()];
        config.metrics_token = vec!["scraper".to_owned()];
    })
    .await;

    let bare = app.get("/api/v1/jobs").await;
    assert_eq!(bare.status(), 401);
    assert_eq!(bare.headers()["www-authenticate"], "Bearer");
    assert_eq!(bare.json::<Value>().await.expect("json")["error"]["code"], "unauthorized");
    let wrong = app.client.get(app.url("/api/v1/jobs")).bearer_auth("s3cre").send().await.expect("request");
    assert_eq!(wrong.status(), 401);
    let unknown_route = app.get("/api/v1/nothing").await;
    assert_eq!(unknown_route.status(), 401, "even unknown API routes need the token");
    for token in ["s3cret", "second"] {
        let ok = app.client.get(app.url("/api/v1/jobs")).bearer_auth(token).send().await.expect("request");
        assert_eq!(ok.status(), 200);
    }
    let created = app
        .client
        .post(app.url("/api/v1/jobs"))
        .bearer_auth("s3cret")
        .json(&tiny_lstm_spec(5, 1.0))
        .send()
        .await
        .expect("request");
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();

    // Probes and the page stay open; metrics have their own token.
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
    assert_eq!(app.get("/").await.status(), 200);
    assert_eq!(app.get("/metrics").await.status(), 401);
    let api_token_on_metrics = app.client.get(app.url("/metrics")).bearer_auth("s3cret").send().await.expect("request");
    assert_eq!(api_token_on_metrics.status(), 401);
    let metrics = app.client.get(app.url("/metrics")).bearer_auth("scraper").send().await.expect("request");
    assert_eq!(metrics.status(), 200);

    // WebSockets: refused without a token, accepted with the query parameter or the header.
    let ws = app.address.replace("http://", "ws://");
    let stream = format!("{ws}/api/v1/jobs/{id}/stream");
    assert!(connect_async(stream.clone()).await.is_err(), "no token, no stream");
    let (mut by_query, _) = connect_async(format!("{stream}?token=s3cret")).await.expect("query token");
    let mut request = stream.into_client_request().expect("request");
    request.headers_mut().insert("authorization", "Bearer second".parse().expect("header"));
    let (mut by_header, _) = connect_async(request).await.expect("header token");
    use futures::StreamExt;
    for socket in [&mut by_query, &mut by_header] {
        let Some(Ok(first)) = socket.next().await else { panic!("no hello") };
        let hello: Value = serde_json::from_str(first.to_text().expect("text")).expect("json");
        assert_eq!(hello["type"], "hello");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_token_in_the_url_is_taken_on_the_stream_only_and_the_scheme_in_any_case() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| config.api_token = vec!["s3cret".to_owned()]).await;
    for path in
        ["/api/v1/jobs?token=s3cret", "/api/v1/presets?token=s3cret", "/api/v1/openapi.json?limit=1&token=s3cret"]
    {
        let response = app.get(path).await;
        assert_eq!(response.status(), 401, "{path}");
    }
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let response = app
            .client
            .get(app.url("/api/v1/jobs"))
            .header("authorization", format!("{scheme} s3cret"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{scheme}");
    }
    let basic = app.client.get(app.url("/api/v1/jobs")).header("authorization", "Basic s3cret").send().await;
    assert_eq!(basic.expect("request").status(), 401);

    let created = app
        .client
        .post(app.url("/api/v1/jobs"))
        .header("authorization", "bearer s3cret")
        .json(&tiny_lstm_spec(5, 1.0))
        .send()
        .await
        .expect("request");
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    let checkpoint = app.get(&format!("/api/v1/jobs/{id}/checkpoint?token=s3cret")).await;
    assert_eq!(checkpoint.status(), 401, "a download link must not carry the token");
    let ws = app.address.replace("http://", "ws://");
    let (mut socket, _) =
        connect_async(format!("{ws}/api/v1/jobs/{id}/stream?every=1&token=s3cret")).await.expect("query token");
    use futures::StreamExt;
    let Some(Ok(first)) = socket.next().await else { panic!("no hello") };
    let hello: Value = serde_json::from_str(first.to_text().expect("text")).expect("json");
    assert_eq!(hello["type"], "hello");
    app.stop().await;
}

/// A log sink the test can read back.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// A current-thread runtime runs the server on this thread, so the subscriber set for this
// thread sees every request span and no other test's.
#[tokio::test(flavor = "current_thread")]
async fn request_logs_never_show_a_token() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("tower_http=debug,gradscope=debug"))
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| config.api_token = vec!["s3cret-in-a-url".to_owned()]).await;
    let id = "0190a000-0000-7000-8000-000000000000";
    app.get(&format!("/api/v1/jobs/{id}/stream?every=5&token=s3cret-in-a-url")).await;
    app.get("/api/v1/jobs?token=s3cret-in-a-url&limit=3").await;
    app.stop().await;

    let log = String::from_utf8(captured.0.lock().expect("log buffer").clone()).expect("utf-8");
    assert!(log.contains(&format!("/api/v1/jobs/{id}/stream?every=5&token=REDACTED")), "{log}");
    assert!(log.contains("/api/v1/jobs?token=REDACTED&limit=3"), "{log}");
    assert!(!log.contains("s3cret"), "the token reached the log:\n{log}");
}
