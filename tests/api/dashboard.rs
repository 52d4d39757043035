//! One binary: the real binary, started with an empty folder as its working directory,
//! serves the whole dashboard from the copy built into it, byte for byte the files of
//! `static/`, with their types, revalidation and compression; `--static-dir` serves a
//! folder instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::helpers::{Served, serve, spawn_app_with};

/// The binary serving from `cwd`, its database and data in `data` (elsewhere, so `cwd`
/// stays empty).
async fn start(cwd: &Path, data: &Path) -> Served {
    let configure = |c: &mut Command| {
        c.current_dir(cwd)
            .arg("--database-url")
            .arg(format!("sqlite://{}", data.join("gradscope.db").display()))
            .arg("--data-dir")
            .arg(data.join("data"))
            .env_remove("GRADSCOPE_STATIC_DIR");
    };
    serve(configure, Duration::from_secs(30)).await
}

fn static_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("static")
}

/// Every file under `dir`, as paths relative to it.
fn files(dir: &Path, under: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read static/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, under, out);
        } else {
            out.push(path.strip_prefix(under).expect("under static/").to_path_buf());
        }
    }
}

/// The type a browser needs for a dashboard file, by its extension.
fn expected_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html",
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        other => panic!("static/{}: no type known for {other:?}; add it here", path.display()),
    }
}

#[tokio::test]
async fn the_binary_serves_the_whole_dashboard_from_an_empty_folder() {
    let cwd = tempfile::TempDir::new().expect("temp dir");
    let data = tempfile::TempDir::new().expect("temp dir");
    let server = start(cwd.path(), data.path()).await;
    let client = reqwest::Client::new();
    let get = |path: String| {
        let request = client.get(format!("{}{path}", server.url));
        async move { request.send().await.expect("request") }
    };

    // The page at `/`, and the scripts and styles it names.
    let index = std::fs::read(static_dir().join("index.html")).expect("static/index.html");
    let page = get("/".to_owned()).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html");
    assert_eq!(page.bytes().await.expect("body").as_ref(), index.as_slice());
    let html = String::from_utf8(index).expect("utf-8");
    let named: Vec<&str> = html
        .split(['"', '\''])
        .filter(|s| s.starts_with('/') && !s.starts_with("//") && (s.ends_with(".js") || s.ends_with(".css")))
        .collect();
    assert!(named.contains(&"/app.js"), "index.html names its script: {named:?}");
    for path in named {
        let local = static_dir().join(path.trim_start_matches('/'));
        if path.starts_with("/vendor/") && !local.exists() {
            continue; // the chart library is copied in by scripts/web-deps
        }
        assert_eq!(get(path.to_owned()).await.status(), 200, "{path}, named by index.html");
    }

    // Every file of static/, byte for byte, with its type.
    let mut all = Vec::new();
    files(&static_dir(), &static_dir(), &mut all);
    assert!(all.len() > 10, "{all:?}");
    for file in &all {
        let path = format!("/{}", file.display());
        let response = get(path.clone()).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], expected_type(file), "{path}");
        let expected = std::fs::read(static_dir().join(file)).expect("static file");
        assert_eq!(response.bytes().await.expect("body").as_ref(), expected.as_slice(), "{path}: other bytes");
    }

    // A browser's copy is revalidated: the same tag is 304 with no body, another is 200.
    let script = get("/app.js".to_owned()).await;
    let etag = script.headers()["etag"].clone();
    assert_eq!(script.headers()["cache-control"], "no-cache");
    let again = client.get(format!("{}/app.js", server.url)).header("if-none-match", &etag).send().await.expect("get");
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag);
    assert!(again.bytes().await.expect("body").is_empty());
    let stale = client.get(format!("{}/app.js", server.url)).header("if-none-match", "W/\"0\"").send().await;
    assert_eq!(stale.expect("get").status(), 200);
    assert_ne!(get("/style.css".to_owned()).await.headers()["etag"], etag, "each file has its own tag");

    // Compressed for a client that accepts gzip.
    let gzipped =
        client.get(format!("{}/app.js", server.url)).header("accept-encoding", "gzip").send().await.expect("get");
    assert_eq!(gzipped.status(), 200);
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    assert_eq!(gzipped.headers()["content-type"], "text/javascript");

    // What is not a file: 404; what is not a read: 405, as a file server answers.
    assert_eq!(get("/no-such-file.js".to_owned()).await.status(), 404);
    assert_eq!(get("/views".to_owned()).await.status(), 404);
    let post = client.post(format!("{}/", server.url)).send().await.expect("post");
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET,HEAD");
    // The API is still the API.
    assert_eq!(get("/api/v1/jobs".to_owned()).await.status(), 200);

    drop(server);
    let left: Vec<_> = std::fs::read_dir(cwd.path()).expect("cwd").collect();
    assert!(left.is_empty(), "the working directory was written to: {left:?}");
}

#[tokio::test]
async fn static_dir_serves_a_folder_instead() {
    let dev = tempfile::TempDir::new().expect("temp dir");
    std::fs::write(dev.path().join("index.html"), "<p>edited, not rebuilt</p>").expect("write");
    let folder = dev.path().to_path_buf();
    let app =
        spawn_app_with(tempfile::TempDir::new().expect("temp dir"), move |config| config.static_dir = Some(folder))
            .await;
    let page = app.get("/").await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.text().await.expect("text"), "<p>edited, not rebuilt</p>");
    assert_eq!(app.get("/app.js").await.status(), 404, "only the folder is served");
    app.stop().await;

    let missing = dev.path().join("no-such-folder");
    let config = {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let mut config = gradscope::config::ServeConfig::new(
            "127.0.0.1:0".parse().expect("address"),
            &crate::helpers::database_url(&dir),
            dir.path().join("data"),
        );
        config.static_dir = Some(missing.clone());
        (config, dir)
    };
    let err = gradscope::Application::build(config.0).await.err().expect("a missing folder is refused");
    assert!(err.to_string().contains("not a folder"), "{err}");
}
