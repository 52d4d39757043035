//! Generated tasks through the service: each model kind trains on its task and the
//! validation results arrive as events.

use serde_json::{Value, json};

use crate::helpers::spawn_app;

#[tokio::test]
async fn generated_tasks_train_and_report_validation() {
    let app = spawn_app().await;
    let specs = [
        json!({"task": {"kind": "adding", "seq_len": 6, "eval_every": 4},
               "model": {"kind": "gru", "layers": 1, "hidden": 8}}),
        json!({"task": {"kind": "copy", "seq_len": 7, "symbols": 3, "length": 2, "eval_every": 4},
               "model": {"kind": "transformer", "layers": 1, "hidden": 8, "heads": 2, "norm": "rms"}}),
        json!({"task": {"kind": "classification", "features": 4, "classes": 3, "eval_every": 4},
               "model": {"kind": "mlp", "layers": 2, "hidden": 8, "norm": "batch"},
               "policy": {"grad": [{"kind": "agc"}, {"kind": "zclip", "warmup": 3}, {"kind": "skip_spike", "warmup": 3}]}}),
    ];
    for mut spec in specs {
        spec["steps"] = json!(10);
        spec["batch_size"] = json!(4);
        spec["device"] = json!("cpu");
        let job = app.submit(&spec).await;
        let id = job["id"].as_str().expect("id");
        let done = app.wait_finished(id).await;
        assert_eq!(done["status"], "succeeded", "{spec}: {done}");
        let events: Value = app.get(&format!("/api/v1/jobs/{id}/events")).await.json().await.expect("json");
        let events = events["events"].as_array().expect("events");
        let of = |kind: &str| -> Vec<u64> {
            events.iter().filter(|e| e["kind"] == kind).map(|e| e["step"].as_u64().expect("step")).collect()
        };
        assert_eq!(of("validation"), [4, 8, 10], "{spec}: validation every 4 steps and after the last");
        assert_eq!(of("validation_accuracy"), [4, 8, 10]);
        for e in events.iter().filter(|e| e["kind"] == "validation_accuracy") {
            assert!((0.0..=1.0).contains(&e["value"].as_f64().expect("value")));
        }
        // /steps carries them as columns, for charts.
        let steps: Value = app.get(&format!("/api/v1/jobs/{id}/steps")).await.json().await.expect("json");
        assert_eq!(steps["eval"]["step"], json!([4, 8, 10]));
        assert_eq!(steps["eval"]["metric"], "accuracy");
        let losses: Vec<f64> =
            events.iter().filter(|e| e["kind"] == "validation").map(|e| e["value"].as_f64().expect("loss")).collect();
        assert_eq!(steps["eval"]["loss"], json!(losses));
    }
    app.stop().await;
}
