//! Cancel, delete, shutdown and crash recovery.

use std::time::{Duration, Instant};

use gradscope::store::Store;
use serde_json::Value;

use crate::helpers::{database_url, spawn_app, spawn_app_in, tiny_lstm_spec};

#[tokio::test]
async fn cancel_stops_a_running_job_and_delete_removes_it() {
    let app = spawn_app().await;
    let id = app.submit(&tiny_lstm_spec(1_000_000, 1.0)).await["id"].as_str().expect("id").to_owned();
    app.wait_for(&id, "training", |j| j["status"] == "running" && j["step"].as_i64() > Some(0)).await;

    let delete_running = app.client.delete(app.url(&format!("/api/v1/jobs/{id}"))).send().await.expect("delete");
    assert_eq!(delete_running.status(), 409);
    assert_eq!(delete_running.json::<Value>().await.expect("json")["error"]["code"], "conflict");

    let cancel = app.client.post(app.url(&format!("/api/v1/jobs/{id}/cancel"))).send().await.expect("cancel");
    assert_eq!(cancel.status(), 202);
    let done = app.wait_finished(&id).await;
    assert_eq!(done["status"], "cancelled");
    let stopped_at = done["step"].as_i64().expect("step");
    assert!(stopped_at > 0 && stopped_at < 1_000_000);

    let again = app.client.post(app.url(&format!("/api/v1/jobs/{id}/cancel"))).send().await.expect("cancel");
    assert_eq!(again.status(), 409);

    let delete = app.client.delete(app.url(&format!("/api/v1/jobs/{id}"))).send().await.expect("delete");
    assert_eq!(delete.status(), 204);
    for path in ["", "/steps", "/layers", "/checkpoint"] {
        let gone = app.get(&format!("/api/v1/jobs/{id}{path}")).await;
        assert_eq!(gone.status(), 404, "{path}");
        assert_eq!(gone.json::<Value>().await.expect("json")["error"]["code"], "not_found");
    }
    let delete_again = app.client.delete(app.url(&format!("/api/v1/jobs/{id}"))).send().await.expect("delete");
    assert_eq!(delete_again.status(), 404);
}

#[tokio::test]
async fn a_queued_job_cancels_at_once() {
    let app = spawn_app().await;
    let first = app.submit(&tiny_lstm_spec(1_000_000, 1.0)).await["id"].as_str().expect("id").to_owned();
    let second = app.submit(&tiny_lstm_spec(10, 1.0)).await["id"].as_str().expect("id").to_owned();
    app.wait_for(&first, "running", |j| j["status"] == "running").await;
    let cancel = app.client.post(app.url(&format!("/api/v1/jobs/{second}/cancel"))).send().await.expect("cancel");
    assert_eq!(cancel.status(), 202);
    let body: Value = cancel.json().await.expect("json");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["step"], 0);
    app.client.post(app.url(&format!("/api/v1/jobs/{first}/cancel"))).send().await.expect("cancel");
    assert_eq!(app.wait_finished(&first).await["status"], "cancelled");
    let unknown = app.client.post(app.url("/api/v1/jobs/0190a000-0000-7000-8000-000000000000/cancel")).send().await;
    assert_eq!(unknown.expect("cancel").status(), 404);
}

#[tokio::test]
async fn shutdown_interrupts_running_jobs_within_a_step_and_keeps_their_steps() {
    let app = spawn_app().await;
    let id = app.submit(&tiny_lstm_spec(1_000_000, 1.0)).await["id"].as_str().expect("id").to_owned();
    app.wait_for(&id, "training", |j| j["step"].as_i64() > Some(3)).await;

    let start = Instant::now();
    let dir = app.stop().await;
    assert!(start.elapsed() < Duration::from_secs(10), "shutdown took {:?}", start.elapsed());

    let app = spawn_app_in(dir).await;
    let job = app.job(&id).await;
    assert_eq!(job["status"], "interrupted");
    assert!(job["finished_at"].is_string());
    let steps: Value = app.get(&format!("/api/v1/jobs/{id}/steps")).await.json().await.expect("json");
    let recorded = steps["step"].as_array().expect("steps").len() as i64;
    assert!(recorded > 3);
    assert_eq!(Some(recorded), job["step"].as_i64(), "every reported step is kept");
    // The weights at the moment it stopped are there.
    assert_eq!(app.get(&format!("/api/v1/jobs/{id}/checkpoint")).await.status(), 200);
}

#[tokio::test]
async fn jobs_a_crash_left_running_are_marked_interrupted() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let store = Store::connect(&database_url(&dir)).await.expect("store");
    store.migrate().await.expect("migrations");
    let spec = serde_json::from_value(tiny_lstm_spec(100, 1.0)).expect("spec");
    let queued = store.insert_job(&spec).await.expect("insert");
    let claimed = store.claim_next_job().await.expect("claim").expect("a queued job");
    assert_eq!(claimed.id, queued.id);
    store.close().await;

    let app = spawn_app_in(dir).await;
    let job = app.job(&queued.id.to_string()).await;
    assert_eq!(job["status"], "interrupted");
    assert!(job["error"].as_str().expect("error").contains("stopped"));
}
