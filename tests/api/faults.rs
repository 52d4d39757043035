//! Faults inside training end one job with a clear message; the service and the other
//! jobs go on.

use serde_json::{Value, json};

use crate::helpers::{spawn_app, spawn_app_with, tiny_lstm_spec};

#[tokio::test]
async fn a_job_whose_data_vanished_fails_while_another_finishes() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| config.max_jobs = 2).await;
    let text = "a small corpus that will not be there when the job starts. ".repeat(10);
    let corpus: Value = app.upload_corpus(text).await.json().await.expect("json");
    let id = corpus["id"].as_str().expect("id");
    std::fs::remove_file(app.dir.path().join("data").join("corpora").join(format!("{id}.txt"))).expect("remove");
    let mut broken = tiny_lstm_spec(50, 1.0);
    broken["task"]["corpus"] = json!(id);
    let broken = app.submit(&broken).await["id"].as_str().expect("id").to_owned();
    let healthy = app.submit(&tiny_lstm_spec(50, 1.0)).await["id"].as_str().expect("id").to_owned();

    let failed = app.wait_finished(&broken).await;
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"].as_str().expect("error").contains("failed to read corpus"), "{failed}");
    assert_eq!(app.wait_finished(&healthy).await["status"], "succeeded");
    assert_eq!(app.get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn a_checkpoint_that_cannot_be_written_fails_the_job_clearly() {
    let app = spawn_app().await;
    // Where checkpoints go, a file stands: like a full or read-only disk, writes fail.
    std::fs::create_dir_all(app.dir.path().join("data")).expect("data dir");
    std::fs::write(app.dir.path().join("data").join("checkpoints"), b"not a folder").expect("block");
    let id = app.submit(&tiny_lstm_spec(20, 1.0)).await["id"].as_str().expect("id").to_owned();
    let job = app.wait_finished(&id).await;
    assert_eq!(job["status"], "failed");
    assert!(job["error"].as_str().expect("error").contains("checkpoint"), "{job}");
    // Its steps are kept, and the service still takes work.
    let steps: Value = app.get(&format!("/api/v1/jobs/{id}/steps")).await.json().await.expect("json");
    assert_eq!(steps["step"].as_array().map(Vec::len), Some(20));
    assert_eq!(app.get("/api/v1/jobs").await.status(), 200);
}

#[tokio::test]
async fn a_nan_storm_is_skipped_or_stops_the_job_as_asked() {
    let app = spawn_app().await;
    // A deep ReLU MLP with huge weights and a huge step size overflows within steps.
    let mut storm = json!({
        "steps": 30, "batch_size": 16, "device": "cpu",
        "task": {"kind": "classification", "features": 8, "classes": 4},
        "model": {"kind": "mlp", "layers": 6, "hidden": 32, "activation": "relu", "init_scale": 100.0},
        "optimizer": {"kind": "sgd", "lr": 10.0},
        "policy": {"grad": [], "on_nonfinite": "stop"},
    });
    let stopped = app.submit(&storm).await["id"].as_str().expect("id").to_owned();
    let job = app.wait_finished(&stopped).await;
    assert_eq!(job["status"], "diverged", "{job}");
    assert!(job["error"].as_str().expect("error").contains("non-finite"));
    assert_eq!(job["diagnosis"]["status"], "critical");
    let events: Value =
        app.get(&format!("/api/v1/jobs/{stopped}/events?kind=nonfinite")).await.json().await.expect("json");
    assert!(!events["events"].as_array().expect("events").is_empty());

    storm["policy"]["on_nonfinite"] = json!("skip");
    let skipping = app.submit(&storm).await["id"].as_str().expect("id").to_owned();
    let job = app.wait_finished(&skipping).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let steps: Value = app.get(&format!("/api/v1/jobs/{skipping}/steps")).await.json().await.expect("json");
    let skipped = steps["skipped"].as_array().expect("skipped").iter().filter(|s| **s == json!(true)).count();
    assert!(skipped > 0, "non-finite steps were skipped");
    assert_eq!(steps["step"].as_array().map(Vec::len), Some(30), "every step is recorded, skipped or not");
}
