//! The service on PostgreSQL: the same job run on a SQLite file and on a PostgreSQL
//! database records the same numbers and answers every read the same way; listing,
//! counting and deleting work on both.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_on_postgres};

/// A small MLP with per-layer statistics and histograms on every step, validation passes
/// and a clipping policy that records events.
fn spec() -> Value {
    json!({
        "name": "on-both",
        "seed": 5,
        "steps": 70,
        "batch_size": 32,
        "device": "cpu",
        "task": {"kind": "classification", "features": 16, "classes": 4, "eval_every": 10},
        "model": {"kind": "mlp", "layers": 2, "hidden": 32},
        "optimizer": {"kind": "adamw", "lr": 0.01},
        "policy": {"grad": [{"kind": "clip_norm", "max_norm": 0.5}]},
        "monitor": {"every": 1, "histogram": true, "histogram_every": 1},
    })
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).await;
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// Every read of a finished job, by path (the job's own id left out).
async fn reads(app: &TestApp, id: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for query in [
        "steps?max_points=100000",
        "steps?max_points=20",
        "steps?from=10&to=29",
        "layers",
        "layer-stats?stat=grad_norm,grad_max,grad_mean,grad_std,zero_frac,nonfinite,weight_norm,update_ratio",
        "layer-stats?stat=grad_norm,update_ratio&max_points=12",
        "layer-stats?layers=0&stat=grad_norm,hist&max_points=10",
        "events?limit=1000",
        "events?kind=validation&limit=1000",
    ] {
        out.push((query.to_owned(), get_json(app, &format!("/api/v1/jobs/{id}/{query}")).await));
    }
    out
}

#[tokio::test]
async fn a_job_on_postgres_records_and_answers_what_it_does_on_sqlite() {
    let (sqlite, postgres) = (spawn_app().await, spawn_app_on_postgres().await);
    let mut jobs = Vec::new();
    for app in [&sqlite, &postgres] {
        let id = app.submit(&spec()).await["id"].as_str().expect("id").to_owned();
        let done = app.wait_finished(&id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["step"], 70);
        jobs.push((id, done));
    }
    let ((lite, lite_job), (pg, pg_job)) = (&jobs[0], &jobs[1]);
    for field in ["step", "total_steps", "loss", "device", "diagnosis", "dropped_reports", "stored_bytes"] {
        assert_eq!(lite_job[field], pg_job[field], "{field}");
    }
    let (lite_reads, pg_reads) = (reads(&sqlite, lite).await, reads(&postgres, pg).await);
    for ((query, want), (_, got)) in lite_reads.iter().zip(&pg_reads) {
        assert_eq!(got, want, "{query}");
    }
    // The reads hold what the job recorded: every step, histograms, validation events.
    let steps = &lite_reads[0].1;
    assert_eq!(steps["step"].as_array().expect("steps").len(), 70);
    assert!(lite_reads[6].1["layers"][0]["hist"].as_array().is_some_and(|h| !h.is_empty()));
    assert_eq!(lite_reads[8].1["events"].as_array().expect("events").len(), 7);

    // Listing, counting and deleting.
    for (app, id) in [(&sqlite, lite), (&postgres, pg)] {
        let list = get_json(app, "/api/v1/jobs?status=succeeded").await;
        assert_eq!(list["jobs"].as_array().expect("jobs").len(), 1, "{list}");
        let deleted = app.client.delete(app.url(&format!("/api/v1/jobs/{id}"))).send().await.expect("delete");
        assert_eq!(deleted.status(), 204);
        assert_eq!(app.get(&format!("/api/v1/jobs/{id}")).await.status(), 404);
        assert_eq!(app.get(&format!("/api/v1/jobs/{id}/steps")).await.status(), 404);
        let list = get_json(app, "/api/v1/jobs").await;
        assert_eq!(list["jobs"].as_array().expect("jobs").len(), 0, "{list}");
    }
    assert!(postgres.get("/readyz").await.status().is_success());
}
