//! `GET /api/v1/presets`: the seed experiments, each failing run with a remedied twin, every
//! one accepted by `POST /api/v1/jobs` as it stands.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn presets_come_in_pairs_and_are_accepted_as_jobs() {
    let app = spawn_app().await;
    let response = app.get("/api/v1/presets").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    let presets = body["presets"].as_array().expect("presets");
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for preset in presets {
        groups
            .entry(preset["group"].as_str().expect("group"))
            .or_default()
            .push(preset["role"].as_str().expect("role"));
        assert_eq!(preset["spec"]["name"], preset["name"]);
    }
    assert_eq!(
        groups.keys().copied().collect::<Vec<_>>(),
        ["exploding", "mixed_precision", "transformer", "vanishing", "weight_growth"]
    );
    for (group, roles) in &groups {
        assert_eq!(roles[0], "failing", "{group}: the failing run comes first");
        assert!(roles[1..].iter().all(|r| *r == "remedied") && roles.len() >= 2, "{group}: {roles:?}");
    }
    for preset in presets {
        let mut spec = preset["spec"].clone();
        // Shortened (warm-up included) so the queue drains quickly.
        spec["steps"] = serde_json::json!(1);
        spec["optimizer"]["warmup_steps"] = serde_json::json!(0);
        spec["device"] = serde_json::json!("cpu");
        let response = app.post_json("/api/v1/jobs", &spec).await;
        assert_eq!(response.status(), 201, "{}: {}", preset["name"], response.text().await.expect("text"));
    }
    // Wait for the training threads, which must not outlive the test.
    app.stop().await;
}
