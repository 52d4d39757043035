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
    for socket in [&mut by_query, &mut by_header] {
        expect_hello(socket).await;
    }
    app.stop().await;
}

/// The stream's first message is its `hello`: the socket was let in.
async fn expect_hello<S>(socket: &mut S)
where
    S: futures::Stream<Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    use futures::StreamExt;
    let Some(Ok(first)) = socket.next().await else { panic!("no hello") };
    let hello: Value = serde_json::from_str(first.to_text().expect("text")).expect("json");
    assert_eq!(hello["type"], "hello");
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
    expect_hello(&mut socket).await;
    app.stop().await;
}

/// The real binary at debug level, its log going to a file the test reads back: a
/// subscriber of the test process would share tracing's per-callsite caches with every
/// other test running beside it.
#[tokio::test]
async fn request_logs_never_show_a_token() {
    use std::process::{Command, Stdio};

    let dir = tempfile::TempDir::new().expect("temp dir");
    let log_path = dir.path().join("server.log");
    let configure = |c: &mut Command| {
        c.args(["--database-url", &crate::helpers::database_url(&dir), "--api-token", "s3cret-in-a-url"])
            .args(["--log", "tower_http=debug,gradscope=debug"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env_remove("GRADSCOPE_API_TOKEN")
            .stdout(Stdio::from(std::fs::File::create(&log_path).expect("log file")))
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("stderr.log")).expect("log file")));
    };
    let server = crate::helpers::serve(configure, std::time::Duration::from_secs(30)).await;
    let url = server.url.clone();
    let id = "0190a000-0000-7000-8000-000000000000";
    reqwest::get(format!("{url}/api/v1/jobs/{id}/stream?every=5&token=s3cret-in-a-url")).await.expect("request");
    reqwest::get(format!("{url}/api/v1/jobs?token=s3cret-in-a-url&limit=3")).await.expect("request");
    drop(server);

    let log = std::fs::read_to_string(&log_path).expect("log")
        + &std::fs::read_to_string(dir.path().join("stderr.log")).expect("log");
    assert!(log.contains(&format!("/api/v1/jobs/{id}/stream?every=5&token=REDACTED")), "{log}");
    assert!(log.contains("/api/v1/jobs?token=REDACTED&limit=3"), "{log}");
    assert!(!log.contains("s3cret"), "the token reached the log:\n{log}");
}
