//! Probes, the OpenAPI document and the static dashboard.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn probes_answer() {
    let app = spawn_app().await;
    let live = app.get("/healthz").await;
    assert_eq!(live.status(), 200);
    assert_eq!(live.json::<Value>().await.expect("json")["status"], "ok");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let app = spawn_app().await;
    let doc: Value = app.get("/api/v1/openapi.json").await.json().await.expect("json");
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    let paths = doc["paths"].as_object().expect("paths");
    let expected = [
        ("/api/v1/jobs", &["get", "post"][..]),
        ("/api/v1/jobs/{id}", &["get", "delete"]),
        ("/api/v1/jobs/{id}/cancel", &["post"]),
        ("/api/v1/jobs/{id}/resume", &["post"]),
        ("/api/v1/jobs/{id}/layers", &["get"]),
        ("/api/v1/jobs/{id}/steps", &["get"]),
        ("/api/v1/jobs/{id}/layer-stats", &["get"]),
        ("/api/v1/jobs/{id}/events", &["get"]),
        ("/api/v1/jobs/{id}/spectral", &["get"]),
        ("/api/v1/jobs/{id}/time-profile", &["get"]),
        ("/api/v1/jobs/{id}/signal", &["get"]),
        ("/api/v1/jobs/{id}/stream", &["get"]),
        ("/api/v1/jobs/{id}/checkpoint", &["get"]),
        ("/api/v1/experiments", &["get", "post"]),
        ("/api/v1/experiments/{id}", &["get", "delete"]),
        ("/api/v1/experiments/{id}/cancel", &["post"]),
        ("/api/v1/experiments/{id}/results", &["get"]),
        ("/api/v1/experiments/{id}/results.csv", &["get"]),
        ("/api/v1/corpora", &["get", "post"]),
        ("/api/v1/corpora/{id}", &["delete"]),
        ("/api/v1/models", &["get", "post"]),
        ("/api/v1/models/{id}", &["get", "delete"]),
        ("/api/v1/datasets", &["get", "post"]),
        ("/api/v1/datasets/{id}", &["get", "delete"]),
        ("/api/v1/presets", &["get"]),
        ("/api/v1/openapi.json", &["get"]),
        ("/api/v1/stream-schema.json", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
    ];
    for (path, methods) in expected {
        for method in methods {
            assert!(paths.get(path).and_then(|p| p.get(*method)).is_some(), "{method} {path} missing");
        }
    }
    assert_eq!(paths.len(), expected.len(), "a documented path is not served or vice versa");
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for name in [
        "JobSpec",
        "Job",
        "StepColumns",
        "ErrorBody",
        "GradPolicy",
        "LayerSeries",
        "Diagnosis",
        "StoredEvent",
        "SpectralResponse",
        "TimeProfileResponse",
        "SignalResponse",
        "ExperimentSpec",
        "Experiment",
        "ExperimentResults",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
}

#[tokio::test]
async fn the_dashboard_is_served_at_the_root() {
    let app = spawn_app().await;
    let page = app.get("/").await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().expect("type").starts_with("text/html"));
    assert!(page.text().await.expect("text").contains("gradscope"));
}
