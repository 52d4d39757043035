//! Mixed precision over HTTP: fp16's loss scale in `/steps`, the stream's source, the
//! events and `/metrics`, and the `underflow` statistic against the histogram counts.

use serde_json::{Value, json};

use crate::helpers::{parse_exposition, spawn_app, tiny_lstm_spec};

/// An fp16 job starting at a scale of 2^24, far too large for its gradients: it overflows
/// and backs off, then grows every 5 good steps, and `on_nonfinite: stop` does not end it
/// (an overflow is the scaler's business). Each step's scale follows from the previous
/// step's by GradScaler's rule, read from the `skipped` column; each skipped step has its
/// `loss_scale_overflow` event; the gauge holds the last step's scale.
#[tokio::test]
async fn an_fp16_job_records_its_loss_scale_and_overflows() {
    let app = spawn_app().await;
    let steps = 30;
    let mut spec = tiny_lstm_spec(steps, 1.0);
    spec["precision"] = json!("fp16");
    spec["loss_scale"] = json!({"init_scale": 16_777_216.0, "growth_interval": 5});
    spec["policy"]["on_nonfinite"] = json!("stop");
    spec["monitor"] = json!({"histogram_every": 1});
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    let done = app.wait_finished(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["spec"]["precision"], "fp16");

    let recorded: Value = app.get(&format!("/api/v1/jobs/{id}/steps")).await.json().await.expect("json");
    let scales: Vec<f64> = recorded["loss_scale"]
        .as_array()
        .expect("loss_scale column")
        .iter()
        .map(|v| v.as_f64().expect("a scale on every step"))
        .collect();
    let skipped: Vec<bool> =
        recorded["skipped"].as_array().expect("skipped").iter().map(|v| v.as_bool().expect("flag")).collect();
    assert_eq!(scales.len(), steps as usize);
    assert_eq!(scales[0], 16_777_216.0);
    let (mut expected, mut good) = (16_777_216.0, 0);
    for (i, (&scale, &skip)) in scales.iter().zip(&skipped).enumerate() {
        assert_eq!(scale, expected, "the scale of step {}", i + 1);
        if skip {
            expected *= 0.5;
            good = 0;
        } else {
            good += 1;
            if good == 5 {
                expected *= 2.0;
                good = 0;
            }
        }
    }
    let overflows = skipped.iter().filter(|&&s| s).count();
    assert!(overflows >= 2, "2^24 overflows the gradients of the first steps: {skipped:?}");
    assert!(skipped.iter().any(|s| !s), "and a smaller scale trains");

    let events: Value = app.get(&format!("/api/v1/jobs/{id}/events")).await.json().await.expect("json");
    let overflow_steps: Vec<u64> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "loss_scale_overflow")
        .map(|e| e["step"].as_u64().expect("step"))
        .collect();
    let skipped_steps: Vec<u64> = (1..=steps).filter(|&s| skipped[s as usize - 1]).collect();
    assert_eq!(overflow_steps, skipped_steps, "one overflow event per skipped step");
    assert!(
        events["events"].as_array().expect("events").iter().all(|e| e["kind"] != "nonfinite"),
        "an overflow is no non-finite diagnosis"
    );

    let text = app.get("/metrics").await.text().await.expect("text");
    let gauge: Vec<f64> = parse_exposition(&text)
        .into_iter()
        .filter(|s| s.metric == "gradscope_job_loss_scale" && s.labels.get("job") == Some(&id))
        .map(|s| s.value)
        .collect();
    assert_eq!(gauge, [scales[scales.len() - 1]]);

    // `underflow` is the fraction of |g|·scale below 2^-14, zeros included: with a power of
    // two for the scale, whole histogram buckets (exact zeros, then [2^e, 2^(e+1)) from
    // e = -40) up to 2^-14/scale.
    let layers_info: Value = app.get(&format!("/api/v1/jobs/{id}/layers")).await.json().await.expect("json");
    let numels: Vec<f64> =
        layers_info["layers"].as_array().expect("layers").iter().map(|l| l["numel"].as_f64().expect("numel")).collect();
    let stats: Value =
        app.get(&format!("/api/v1/jobs/{id}/layer-stats?stat=underflow,hist")).await.json().await.expect("json");
    let mut checked = 0;
    for (layer, numel) in stats["layers"].as_array().expect("layers").iter().zip(&numels) {
        let underflow = layer["underflow"].as_array().expect("underflow");
        let hists = layer["hist"].as_array().expect("hist");
        for (s, (u, hist)) in underflow.iter().zip(hists).enumerate() {
            if skipped[s] {
                continue;
            }
            let u = u.as_f64().expect("a fraction");
            let below = (-14.0 - scales[s].log2()) as i64;
            let counts: Vec<f64> =
                hist.as_array().expect("counts").iter().map(|c| c.as_f64().expect("count")).collect();
            let buckets = usize::try_from(below + 40).expect("above 2^-40");
            let expected: f64 = counts[..=buckets].iter().sum();
            assert!(
                (u * numel - expected).abs() < 1e-3 * numel.max(1.0),
                "{}: step {}: {u} vs {expected}/{numel}",
                layer["name"],
                s + 1
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}

/// An fp32 job has no loss scale: the column is all `null`, and there is no gauge.
#[tokio::test]
async fn an_fp32_job_has_no_loss_scale() {
    let app = spawn_app().await;
    let id = app.submit(&tiny_lstm_spec(5, 1.0)).await["id"].as_str().expect("id").to_owned();
    assert_eq!(app.wait_finished(&id).await["status"], "succeeded");
    let recorded: Value = app.get(&format!("/api/v1/jobs/{id}/steps")).await.json().await.expect("json");
    assert_eq!(recorded["loss_scale"], json!([null, null, null, null, null]));
    let text = app.get("/metrics").await.text().await.expect("text");
    assert!(!text.lines().any(|l| l.starts_with("gradscope_job_loss_scale{") && l.contains(&id)));
}

/// A loss scale for another precision is refused, naming the field.
#[tokio::test]
async fn a_loss_scale_needs_fp16() {
    let app = spawn_app().await;
    let mut spec = tiny_lstm_spec(5, 1.0);
    spec["precision"] = json!("bf16");
    spec["loss_scale"] = json!({"init_scale": 1024.0});
    let response = app.post_json("/api/v1/jobs", &spec).await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["field"], "loss_scale", "{body}");
}
