//! Web pages the user visits cannot use the service through the user's browser: the
//! `Host` check against DNS rebinding when no token is set, the refusal of cross-site
//! state-changing requests, and the token a service listening beyond loopback makes up.

use gradscope::Application;
use gradscope::config::ServeConfig;
use serde_json::Value;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{TestApp, database_url, spawn_app, spawn_app_with, tiny_lstm_spec};

async fn get_with_host(app: &TestApp, path: &str, host: &str) -> reqwest::Response {
    app.client.get(app.url(path)).header("host", host).send().await.expect("request")
}

async fn code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("json error body");
    body["error"]["code"].as_str().expect("code").to_owned()
}

#[tokio::test]
async fn without_a_token_only_addresses_localhost_and_listed_names_are_served() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| config.allowed_hosts = vec!["Dash.Example".to_owned()]).await;
    let port = app.address.rsplit(':').next().expect("port").to_owned();
    let rebound = format!("evil.example:{port}");
    for path in ["/api/v1/jobs", "/", "/index.html", "/metrics", "/api/v1/openapi.json", "/api/v1/nothing"] {
        let response = get_with_host(&app, path, &rebound).await;
        assert_eq!(response.status(), 403, "{path}");
        assert_eq!(code(response).await, "host_not_allowed", "{path}");
    }
    let post = app
        .client
        .post(app.url("/api/v1/jobs"))
        .header("host", rebound.as_str())
        .json(&tiny_lstm_spec(5, 1.0))
        .send()
        .await
        .expect("request");
    assert_eq!(post.status(), 403);
    assert_eq!(app.get("/api/v1/jobs").await.json::<Value>().await.expect("json")["jobs"], serde_json::json!([]));
    // Probes answer whatever the name.
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(get_with_host(&app, probe, &rebound).await.status(), 200, "{probe}");
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "LOCALHOST".to_owned(),
        format!("[::1]:{port}"),
        "10.0.0.7".to_owned(),
        format!("dash.example:{port}"),
    ] {
        assert_eq!(get_with_host(&app, "/api/v1/jobs", &host).await.status(), 200, "{host}");
    }
    for host in ["localhost.evil.example", "127.0.0.1.nip.io", "dash.example.evil", "dash.example:"] {
        assert_eq!(get_with_host(&app, "/api/v1/jobs", host).await.status(), 403, "{host}");
    }
}

#[tokio::test]
async fn with_a_token_any_host_name_is_served() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| config.api_token = vec!["s3cret".to_owned()]).await;
    let host = "gradscope.internal:8080";
    assert_eq!(get_with_host(&app, "/api/v1/jobs", host).await.status(), 401);
    let authorized =
        app.client.get(app.url("/api/v1/jobs")).header("host", host).bearer_auth("s3cret").send().await.expect("req");
    assert_eq!(authorized.status(), 200);
    assert_eq!(get_with_host(&app, "/metrics", host).await.status(), 200, "a scraper may use the service's name");
}

#[tokio::test]
async fn cross_site_writes_are_refused() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| config.cors_origins = vec!["https://notebook.example".to_owned()]).await;
    let spec = tiny_lstm_spec(5, 1.0);
    let post = |headers: &[(&'static str, &str)]| {
        let mut request = app.client.post(app.url("/api/v1/jobs")).json(&spec);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    let own = app.address.clone();
    let port: u16 = app.address.rsplit(':').next().expect("port").parse().expect("port");
    let other_port = format!("http://127.0.0.1:{}", port.wrapping_add(1));
    for headers in [
        vec![("origin", "http://evil.example")],
        vec![("origin", "null")],
        vec![("origin", other_port.as_str())],
        vec![("sec-fetch-site", "cross-site")],
        vec![("origin", "http://evil.example"), ("sec-fetch-site", "cross-site")],
    ] {
        let response = post(&headers).await.expect("request");
        assert_eq!(response.status(), 403, "{headers:?}");
        assert_eq!(code(response).await, "cross_origin", "{headers:?}");
    }
    assert_eq!(app.get("/api/v1/jobs").await.json::<Value>().await.expect("json")["jobs"], serde_json::json!([]));

    // A text/plain corpus is the request a page can send without a preflight.
    let corpus = app
        .client
        .post(app.url("/api/v1/corpora"))
        .header("origin", "http://evil.example")
        .header("content-type", "application/octet-stream")
        .body("x".repeat(100))
        .send()
        .await
        .expect("request");
    assert_eq!(corpus.status(), 403);
    let delete = app
        .client
        .delete(app.url("/api/v1/jobs/0190a000-0000-7000-8000-000000000000"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .expect("request");
    assert_eq!(delete.status(), 403);

    // The dashboard's own requests, a listed origin and clients that are not browsers pass.
    let same = post(&[("origin", own.as_str()), ("sec-fetch-site", "same-origin")]).await.expect("request");
    assert_eq!(same.status(), 201);
    let listed =
        post(&[("origin", "https://notebook.example"), ("sec-fetch-site", "cross-site")]).await.expect("request");
    assert_eq!(listed.status(), 201);
    assert_eq!(post(&[]).await.expect("request").status(), 201);
    // Reads are left to CORS (the browser hides the answer from the page).
    let read = app.client.get(app.url("/api/v1/jobs")).header("origin", "http://evil.example").send().await;
    assert_eq!(read.expect("request").status(), 200);

    // A WebSocket handshake is never preflighted: a foreign page may not open the stream.
    let id = app.submit(&tiny_lstm_spec(5, 1.0)).await["id"].as_str().expect("id").to_owned();
    let stream = format!("{}/api/v1/jobs/{id}/stream", app.address.replace("http://", "ws://"));
    let mut foreign = stream.as_str().into_client_request().expect("request");
    foreign.headers_mut().insert("origin", "http://evil.example".parse().expect("header"));
    match connect_async(foreign).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(refused)) => {
            assert_eq!(refused.status(), 403, "a foreign page's handshake is refused as cross-origin");
            let body: Value = serde_json::from_slice(refused.body().as_deref().unwrap_or_default()).expect("json");
            assert_eq!(body["error"]["code"], "cross_origin", "{body}");
        }
        other => panic!("a foreign page's handshake must get 403, got {other:?}"),
    }
    let mut own_page = stream.as_str().into_client_request().expect("request");
    own_page.headers_mut().insert("origin", own.parse().expect("header"));
    connect_async(own_page).await.expect("the dashboard opens the stream");
}

#[tokio::test]
async fn a_service_listening_beyond_loopback_makes_up_a_token() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut config =
        ServeConfig::new("0.0.0.0:0".parse().expect("address"), &database_url(&dir), dir.path().join("data"));
    config.torch_threads = Some(1);
    config.worker_binary = Some(env!("CARGO_BIN_EXE_gradscope").into());
    config.api_token = vec![String::new()]; // as an empty GRADSCOPE_API_TOKEN gives it
    let app = Application::build(config).await.expect("application builds");
    let token = app.generated_token().expect("a token is made up").to_owned();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let bare = client.get(format!("{base}/api/v1/jobs")).send().await.expect("request");
    assert_eq!(bare.status(), 401);
    let with = client.get(format!("{base}/api/v1/jobs")).bearer_auth(&token).send().await.expect("request");
    assert_eq!(with.status(), 200);
    // The container's probes and Prometheus's scrape by service name still work.
    assert_eq!(client.get(format!("{base}/readyz")).send().await.expect("request").status(), 200);
    let scrape = client.get(format!("{base}/metrics")).header("host", "gradscope:8080").send().await;
    assert_eq!(scrape.expect("request").status(), 200);
    let _ = stop.send(());
    server.await.expect("server task").expect("server ran cleanly");

    // A configured token, or loopback, makes none.
    let other = tempfile::TempDir::new().expect("temp dir");
    let mut config =
        ServeConfig::new("0.0.0.0:0".parse().expect("address"), &database_url(&other), other.path().join("data"));
    config.api_token = vec!["chosen".to_owned()];
    assert!(Application::build(config).await.expect("builds").generated_token().is_none());
    let loopback = spawn_app().await;
    let open = loopback.get("/api/v1/jobs").await;
    assert_eq!(open.status(), 200, "loopback without a token stays open");
}
