//! Bounded input: oversized models and steps are refused before they queue, and the
//! queue itself is bounded.

use serde_json::{Value, json};

use crate::helpers::{spawn_app, spawn_app_with, tiny_lstm_spec};

async fn refused(app: &crate::helpers::TestApp, spec: &Value) -> (u16, Value) {
    let response = app.post_json("/api/v1/jobs", spec).await;
    (response.status().as_u16(), response.json::<Value>().await.expect("json")["error"].clone())
}

#[tokio::test]
async fn oversized_specs_are_refused_with_the_reason() {
    let app = spawn_app().await;
    let mut huge_model = tiny_lstm_spec(10, 1.0);
    huge_model["model"] = json!({"kind": "transformer", "layers": 64, "hidden": 8192, "heads": 8, "norm": "layer"});
    let (status, error) = refused(&app, &huge_model).await;
    assert_eq!(status, 422);
    assert_eq!(error["field"], "model");
    assert!(error["message"].as_str().expect("message").contains("parameters"), "{error}");

    let mut huge_step = tiny_lstm_spec(10, 1.0);
    huge_step["batch_size"] = json!(8192);
    huge_step["task"]["seq_len"] = json!(8192);
    huge_step["model"]["hidden"] = json!(256);
    let (status, error) = refused(&app, &huge_step).await;
    assert_eq!(status, 422);
    assert_eq!(error["field"], "batch_size");
    assert!(error["message"].as_str().expect("message").contains("MiB"), "{error}");

    let jobs: Value = app.get("/api/v1/jobs").await.json().await.expect("json");
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn the_queue_is_bounded() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| config.max_queued = 2).await;
    let running = app.submit(&tiny_lstm_spec(1_000_000, 1.0)).await["id"].as_str().expect("id").to_owned();
    app.wait_for(&running, "running", |j| j["status"] == "running").await;
    let mut queued = Vec::new();
    for _ in 0..2 {
        queued.push(app.submit(&tiny_lstm_spec(10, 1.0)).await["id"].as_str().expect("id").to_owned());
    }
    let (status, error) = refused(&app, &tiny_lstm_spec(10, 1.0)).await;
    assert_eq!((status, error["code"].as_str()), (429, Some("too_many_queued")), "{error}");
    for id in queued.iter().chain([&running]) {
        app.client.post(app.url(&format!("/api/v1/jobs/{id}/cancel"))).send().await.expect("cancel");
    }
    app.wait_finished(&running).await;
    // With room again, submissions are accepted.
    let again = app.post_json("/api/v1/jobs", &tiny_lstm_spec(5, 1.0)).await;
    assert_eq!(again.status(), 201);
    app.stop().await;
}
