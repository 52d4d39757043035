//! Measurements on schedules of their own: the spectral radius of the recurrent and square
//! weights, stored, served, streamed, diagnosed and bounded.

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::spawn_app;

/// A vanilla RNN on the adding problem, its recurrent weight scaled by `init_scale`.
fn rnn_spec(steps: u64, init_scale: f64, spectral_every: u64) -> Value {
    json!({
        "name": "rnn-spectral",
        "seed": 3,
        "steps": steps,
        "batch_size": 16,
        "device": "cpu",
        "task": {"kind": "adding", "seq_len": 10, "eval_every": 0},
        "model": {"kind": "rnn", "layers": 1, "hidden": 16, "init_scale": init_scale},
        "optimizer": {"kind": "sgd", "lr": 0.05},
        "monitor": {"every": 0, "spectral_every": spectral_every},
    })
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("a number")).collect()
}

#[tokio::test]
async fn the_spectral_radius_is_stored_served_and_thinned() {
    let app = spawn_app().await;
    let id = app.submit(&rnn_spec(30, 1.0, 5)).await["id"].as_str().expect("id").to_owned();
    assert_eq!(app.wait_finished(&id).await["status"], "succeeded");
    let answer: Value = app.get(&format!("/api/v1/jobs/{id}/spectral")).await.json().await.expect("json");
    assert_eq!(answer["matrices"], json!([{"index": 0, "name": "rnn.weight_hh_l0", "layer": 1, "side": 16}]));
    assert_eq!(floats(&answer["step"]), [1.0, 6.0, 11.0, 16.0, 21.0, 26.0]);
    let radius = floats(&answer["radius"][0]);
    assert_eq!(radius.len(), 6);
    // PyTorch's U(−1/√16, 1/√16) start: about 2/√3 for a square matrix, and it moves slowly.
    assert!(radius.iter().all(|&r| (0.7..1.6).contains(&r)), "{radius:?}");
    let ranged: Value = app.get(&format!("/api/v1/jobs/{id}/spectral?from=6&to=16")).await.json().await.expect("json");
    assert_eq!(floats(&ranged["step"]), [6.0, 11.0, 16.0]);
    assert_eq!(floats(&ranged["radius"][0]), radius[1..4]);

    // Every step measured, thinned to every k-th measurement.
    let id = app.submit(&rnn_spec(30, 1.0, 1)).await["id"].as_str().expect("id").to_owned();
    app.wait_finished(&id).await;
    let thinned: Value =
        app.get(&format!("/api/v1/jobs/{id}/spectral?max_points=10")).await.json().await.expect("json");
    assert_eq!(floats(&thinned["step"]), (0..10).map(|k| f64::from(1 + 3 * k)).collect::<Vec<_>>());
    for (query, field) in [("max_points=5", "max_points"), ("from=9&to=2", "from"), ("bogus=1", "")] {
        let response = app.get(&format!("/api/v1/jobs/{id}/spectral?{query}")).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("json");
        if field.is_empty() {
            assert_eq!(status, 400, "{query}: {body}");
        } else {
            assert_eq!((status, body["error"]["field"].as_str()), (422, Some(field)), "{query}: {body}");
        }
    }
    // Off: nothing measured; a model without such weights: no matrices.
    let off = app.submit(&rnn_spec(5, 1.0, 0)).await["id"].as_str().expect("id").to_owned();
    app.wait_finished(&off).await;
    let none: Value = app.get(&format!("/api/v1/jobs/{off}/spectral")).await.json().await.expect("json");
    assert_eq!((none["step"].clone(), none["radius"].clone()), (json!([]), json!([[]])));
    for bad in [json!(-1), json!(u64::MAX), json!("ten")] {
        let mut spec = rnn_spec(5, 1.0, 0);
        spec["monitor"]["spectral_every"] = bad.clone();
        let response = app.post_json("/api/v1/jobs", &spec).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("json");
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(body["error"]["field"], "monitor.spectral_every", "{bad}: {body}");
    }
    app.stop().await;
}

/// A recurrent weight scaled well above 1 that training pulls back down through 1.0: the
/// crossing is an event, and the stream carries the measurements on the measured steps.
#[tokio::test]
async fn a_crossing_of_1_is_an_event_and_measurements_are_streamed() {
    let app = spawn_app().await;
    let mut spec = rnn_spec(2000, 1.0, 2);
    // Weight decay shrinks every weight by 1 − lr·wd a step: 0.98^n from about 1.15.
    spec["optimizer"] = json!({"kind": "sgd", "lr": 0.1, "weight_decay": 0.2});
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    let url = format!("{}/api/v1/jobs/{id}/stream", app.address.replace("http://", "ws://"));
    let (mut socket, _) = connect_async(url).await.expect("websocket connects");
    let mut hello = None;
    let mut streamed = Vec::new();
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else { continue };
        let m: Value = serde_json::from_str(&text).expect("json");
        match m["type"].as_str() {
            Some("hello") => hello = Some(m),
            Some("step") => {
                if let Some(values) = m.get("spectral") {
                    streamed.push((m["step"].as_u64().expect("step"), floats(values)[0]));
                }
            }
            Some("status") if m["status"] != "running" => break,
            _ => {}
        }
    }
    // A subscriber before the start learns the layers, and so the matrices, from the API.
    let hello = hello.expect("a hello");
    let stored: Value = app.get(&format!("/api/v1/jobs/{id}/spectral")).await.json().await.expect("json");
    assert!(hello["matrices"] == json!([]) || hello["matrices"] == stored["matrices"], "{hello}");
    assert_eq!(stored["matrices"][0]["name"], "rnn.weight_hh_l0");
    let steps = floats(&stored["step"]);
    let radius = floats(&stored["radius"][0]);
    assert_eq!(steps.len(), 1000);
    // What was streamed is what was stored (float32 in the store).
    for (step, value) in &streamed {
        let i = steps.iter().position(|&s| s == *step as f64).expect("a stored step");
        assert!((radius[i] - value).abs() <= 1e-6 * value, "step {step}: {} vs {value}", radius[i]);
    }
    assert!(!streamed.is_empty());
    assert!(radius[0] > 1.0 && *radius.last().expect("last") < 1.0, "{radius:?}");
    let events: Value =
        app.get(&format!("/api/v1/jobs/{id}/events?kind=spectral_radius")).await.json().await.expect("json");
    let events = events["events"].as_array().expect("events");
    let first_below = steps[radius.iter().position(|&r| r < 1.0).expect("a fall below 1")];
    assert_eq!(events[0]["step"].as_f64(), Some(first_below), "{events:?}");
    assert_eq!(events[0]["layer"], 1);
    assert!(
        events[0]["message"].as_str().expect("message").starts_with("rnn.weight_hh_l0: largest singular value fell")
    );
    app.stop().await;
}
