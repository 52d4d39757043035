//! Uploaded corpora: only a content type that needs a CORS preflight, a count and byte
//! quota that concurrent uploads cannot beat, listing, and deletion (refused while a job
//! uses the corpus).

use serde_json::Value;

use crate::helpers::{TestApp, spawn_app, spawn_app_with, tiny_lstm_spec};

const OCTETS: &str = "application/octet-stream";

fn text(bytes: usize) -> String {
    "the quick brown fox jumps over the lazy dog. ".chars().cycle().take(bytes).collect()
}

async fn upload(app: &TestApp, content_type: Option<&str>, body: String) -> reqwest::Response {
    let mut request = app.client.post(app.url("/api/v1/corpora")).body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    request.send().await.expect("upload")
}

async fn upload_ok(app: &TestApp, bytes: usize) -> String {
    let response = upload(app, Some(OCTETS), text(bytes)).await;
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned()
}

async fn list(app: &TestApp) -> Value {
    let response = app.get("/api/v1/corpora").await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("json")
}

async fn delete(app: &TestApp, id: &str) -> reqwest::Response {
    app.client.delete(app.url(&format!("/api/v1/corpora/{id}"))).send().await.expect("delete")
}

fn file(app: &TestApp, id: &str) -> std::path::PathBuf {
    app.dir.path().join("data").join("corpora").join(format!("{id}.txt"))
}

#[tokio::test]
async fn uploads_a_page_could_send_without_a_preflight_are_refused() {
    let app = spawn_app().await;
    for content_type in [
        None,
        Some("text/plain"),
        Some("text/plain; charset=utf-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let response = upload(&app, content_type, text(200)).await;
        assert_eq!(response.status(), 415, "{content_type:?}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "unsupported_media_type");
        assert!(body["error"]["message"].as_str().expect("message").contains(OCTETS), "{body}");
    }
    assert_eq!(list(&app).await["count"], 0, "nothing was stored");
    upload_ok(&app, 200).await;

    let doc: Value = app.get("/api/v1/openapi.json").await.json().await.expect("json");
    let content = &doc["paths"]["/api/v1/corpora"]["post"]["requestBody"]["content"];
    assert!(content.get(OCTETS).is_some(), "{content}");
    assert!(content.get("text/plain").is_none(), "{content}");
}

#[tokio::test]
async fn corpora_are_listed_and_deleted_with_their_files() {
    let app = spawn_app().await;
    let first = upload_ok(&app, 100).await;
    let second = upload_ok(&app, 300).await;
    let listed = list(&app).await;
    let ids: Vec<&str> =
        listed["corpora"].as_array().expect("corpora").iter().map(|c| c["id"].as_str().expect("id")).collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "newest first");
    assert_eq!(listed["count"], 2);
    assert_eq!(listed["bytes"], 400);
    assert_eq!(listed["max_corpora"], 100);
    assert_eq!(listed["quota_bytes"], 1_i64 << 30);
    let one: Value = app.get("/api/v1/corpora?limit=1").await.json().await.expect("json");
    assert_eq!(one["corpora"].as_array().expect("corpora").len(), 1);
    assert_eq!(one["count"], 2, "the totals cover every corpus");
    assert_eq!(app.get("/api/v1/corpora?limit=0").await.status(), 422);
    assert_eq!(app.get("/api/v1/corpora?limit=1001").await.status(), 422);

    assert!(file(&app, &first).exists());
    assert_eq!(delete(&app, &first).await.status(), 204);
    assert!(!file(&app, &first).exists(), "the file goes with the corpus");
    let after = list(&app).await;
    assert_eq!((after["count"].as_i64(), after["bytes"].as_i64()), (Some(1), Some(300)));
    let again = delete(&app, &first).await;
    assert_eq!(again.status(), 404);
    assert_eq!(again.json::<Value>().await.expect("json")["error"]["code"], "not_found");
    assert_eq!(delete(&app, "not-a-uuid").await.status(), 404);
    assert_eq!(delete(&app, "..%2F..%2Fgradscope.db").await.status(), 404);
    assert!(app.dir.path().join("gradscope.db").exists());

    // A job cannot name a deleted corpus.
    let mut spec = tiny_lstm_spec(5, 1.0);
    spec["task"]["corpus"] = first.clone().into();
    assert_eq!(app.post_json("/api/v1/jobs", &spec).await.status(), 422);
}

#[tokio::test]
async fn uploads_stop_at_the_count_and_the_byte_quota() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| {
        config.max_corpora = 2;
        config.corpus_quota = 1000;
    })
    .await;
    let first = upload_ok(&app, 100).await;
    upload_ok(&app, 100).await;
    let third = upload(&app, Some(OCTETS), text(100)).await;
    assert_eq!(third.status(), 429);
    let body: Value = third.json().await.expect("json");
    assert_eq!(body["error"]["code"], "corpus_quota");
    assert!(body["error"]["message"].as_str().expect("message").contains("at most 2 corpora"), "{body}");
    assert_eq!(delete(&app, &first).await.status(), 204);

    // One slot free, but the bytes would pass 1000.
    let big = upload(&app, Some(OCTETS), text(901)).await;
    assert_eq!(big.status(), 429);
    assert_eq!(big.json::<Value>().await.expect("json")["error"]["code"], "corpus_quota");
    upload_ok(&app, 900).await;
    let full = list(&app).await;
    assert_eq!((full["count"].as_i64(), full["bytes"].as_i64()), (Some(2), Some(1000)));
    let files = std::fs::read_dir(app.dir.path().join("data").join("corpora")).expect("folder").count();
    assert_eq!(files, 2, "a refused upload leaves no file");
}

#[tokio::test]
async fn concurrent_uploads_never_exceed_the_quota() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| config.max_corpora = 5).await;
    let uploads = (0..24).map(|_| upload(&app, Some(OCTETS), text(200)));
    let statuses: Vec<u16> = futures::future::join_all(uploads).await.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 19, "{statuses:?}");
    assert_eq!(list(&app).await["count"], 5);

    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| config.corpus_quota = 1000).await;
    let uploads = (0..24).map(|_| upload(&app, Some(OCTETS), text(300)));
    let created = futures::future::join_all(uploads).await.iter().filter(|r| r.status() == 201).count();
    assert_eq!(created, 3);
    assert_eq!(list(&app).await["bytes"], 900);
}

#[tokio::test]
async fn a_corpus_a_job_waits_for_or_trains_on_cannot_be_deleted() {
    let app = spawn_app().await;
    let id = upload_ok(&app, 2000).await;
    let mut spec = tiny_lstm_spec(1_000_000, 1.0);
    spec["task"]["corpus"] = id.clone().into();
    let job = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    // Whether the job is still queued or already running, the corpus is in use.
    let refused = delete(&app, &id).await;
    assert_eq!(refused.status(), 409);
    assert_eq!(refused.json::<Value>().await.expect("json")["error"]["code"], "conflict");
    assert!(file(&app, &id).exists());

    let cancel = app.client.post(app.url(&format!("/api/v1/jobs/{job}/cancel"))).send().await.expect("cancel");
    assert_eq!(cancel.status(), 202);
    app.wait_finished(&job).await;
    assert_eq!(delete(&app, &id).await.status(), 204, "a finished job does not hold its corpus");
    assert!(!file(&app, &id).exists());
}
