//! Requests that could multiply work or memory: repeated and overlong list parameters,
//! answers and scans above their bounds, long step histories thinned in the database,
//! oversized WebSocket messages, and a queue that concurrent submissions and resumes
//! cannot overshoot.

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{TestApp, column, spawn_app, spawn_app_with, tiny_lstm_spec};

async fn finished_job(app: &TestApp, steps: u64) -> String {
    let id = app.submit(&tiny_lstm_spec(steps, 0.25)).await["id"].as_str().expect("id").to_owned();
    let job = app.wait_finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    id
}

async fn error_of(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.get(path).await;
    (response.status().as_u16(), response.json::<Value>().await.expect("json")["error"].clone())
}

#[tokio::test]
async fn repeated_list_items_are_answered_once() {
    let app = spawn_app().await;
    let id = finished_job(&app, 12).await;
    let stats = vec!["grad_norm"; 3000].join(",");
    let layers = vec!["1"; 3000].join(",");
    let answer: Value = app
        .get(&format!("/api/v1/jobs/{id}/layer-stats?stat={stats}&layers={layers}"))
        .await
        .json()
        .await
        .expect("json");
    let once: Value =
        app.get(&format!("/api/v1/jobs/{id}/layer-stats?stat=grad_norm&layers=1")).await.json().await.expect("json");
    let series = answer["layers"].as_array().expect("layers");
    assert_eq!(series.len(), 1, "one layer asked for, whatever the repeats");
    assert_eq!(answer, once);
    assert_eq!(column(&series[0], "grad_norm").len(), 12);
    assert!(series[0].get("grad_max").is_none(), "only the statistic asked for");

    // Past the list bound, a clear 422 naming the parameter.
    let long = (0..5000).map(|i| (i % 3).to_string()).collect::<Vec<_>>().join(",");
    let (status, error) = error_of(&app, &format!("/api/v1/jobs/{id}/layer-stats?layers={long}")).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("layers")), "{error}");
    app.stop().await;
}

#[tokio::test]
async fn answers_and_scans_past_their_bounds_are_refused() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| {
        config.max_answer_values = 1_000;
        config.max_scan_values = 2_000;
    })
    .await;
    let id = finished_job(&app, 40).await;
    let layers = app.get(&format!("/api/v1/jobs/{id}/layers")).await.json::<Value>().await.expect("json")["layers"]
        .as_array()
        .expect("layers")
        .len() as u64;
    assert_eq!(layers, 7, "embedding, four LSTM tensors, head weight and bias");
    // Every statistic of every layer over 40 steps answers 7 × 9 × 40 = 2520 values.
    let (status, error) = error_of(&app, &format!("/api/v1/jobs/{id}/layer-stats")).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("max_points")), "{error}");
    assert!(error["message"].as_str().expect("message").contains("2520"), "{error}");
    // Thinned to 10 points it answers 630, but still reads 2520 first.
    let (status, error) = error_of(&app, &format!("/api/v1/jobs/{id}/layer-stats?max_points=10")).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("from")), "{error}");
    // A histogram counts its 51 buckets: every layer's over 40 steps would answer 14280.
    let (status, error) = error_of(&app, &format!("/api/v1/jobs/{id}/layer-stats?stat=hist")).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("max_points")), "{error}");
    // Thinned, histograms come from the 4 steps that have one (1, 11, 21, 31): one layer's
    // reads 204 values.
    let fits: Value = app
        .get(&format!("/api/v1/jobs/{id}/layer-stats?layers=0&stat=hist&max_points=10"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(column(&fits["layers"][0], "step"), vec![1.0, 11.0, 21.0, 31.0]);
    // Within both bounds: answered.
    let fits = app.get(&format!("/api/v1/jobs/{id}/layer-stats?stat=grad_norm")).await;
    assert_eq!(fits.status(), 200);
    let fits: Value = fits.json().await.expect("json");
    assert_eq!(fits["layers"].as_array().map(Vec::len), Some(7));
    app.stop().await;
}

/// The kept steps by the documented rule: rows cut into `max_points / 5` buckets of
/// consecutive rows (bucket b holds rows b·n/B up to, not including, (b+1)·n/B), each keeping its rows of smallest and largest loss and grad norm
/// (the earliest on ties).
fn expected_thinning(steps: &[f64], loss: &[f64], norm: &[f64], max_points: usize) -> Vec<f64> {
    let n = steps.len();
    let buckets = max_points / 5;
    let mut kept = Vec::new();
    for b in 0..buckets {
        let rows: Vec<usize> = (b * n / buckets..(b + 1) * n / buckets).collect();
        let mut chosen = Vec::new();
        for series in [loss, norm] {
            let pick = |better: &dyn Fn(f64, f64) -> bool| {
                rows.iter().copied().reduce(|a, i| if better(series[i], series[a]) { i } else { a })
            };
            chosen.extend(pick(&|x, best| x < best));
            chosen.extend(pick(&|x, best| x > best));
        }
        chosen.sort_unstable();
        chosen.dedup();
        kept.extend(chosen.into_iter().map(|i| steps[i]));
    }
    kept
}

#[tokio::test]
async fn long_step_ranges_are_thinned_keeping_each_buckets_extremes() {
    let app = spawn_app().await;
    let id = finished_job(&app, 150).await;
    let all: Value = app.get(&format!("/api/v1/jobs/{id}/steps")).await.json().await.expect("json");
    let (steps, loss, norm) = (column(&all, "step"), column(&all, "loss"), column(&all, "grad_norm"));
    assert_eq!(steps.len(), 150);
    for max_points in [10, 25, 60] {
        let thin: Value =
            app.get(&format!("/api/v1/jobs/{id}/steps?max_points={max_points}")).await.json().await.expect("json");
        let kept = column(&thin, "step");
        assert!(kept.len() <= max_points, "{} > {max_points}", kept.len());
        assert_eq!(kept, expected_thinning(&steps, &loss, &norm, max_points), "max_points={max_points}");
        // Every column follows the kept steps.
        for (i, step) in kept.iter().enumerate() {
            let at = steps.iter().position(|s| s == step).expect("a stored step");
            assert_eq!(column(&thin, "loss")[i], loss[at]);
            assert_eq!(column(&thin, "grad_norm_clipped")[i], column(&all, "grad_norm_clipped")[at]);
        }
    }
    // The global extremes survive any zoom.
    let thin: Value = app.get(&format!("/api/v1/jobs/{id}/steps?max_points=10")).await.json().await.expect("json");
    let kept = column(&thin, "step");
    let argmax = |xs: &[f64]| xs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).expect("max");
    assert!(kept.contains(&steps[argmax(&loss)]) && kept.contains(&steps[argmax(&norm)]));
    app.stop().await;
}

#[tokio::test]
async fn the_checkpoint_download_is_the_file_on_disk() {
    let app = spawn_app().await;
    let id = finished_job(&app, 5).await;
    let response = app.get(&format!("/api/v1/jobs/{id}/checkpoint")).await;
    assert_eq!(response.status(), 200);
    let length: u64 = response.headers()["content-length"].to_str().expect("ascii").parse().expect("number");
    let body = response.bytes().await.expect("body");
    let on_disk = std::fs::read(app.dir.path().join("data").join("checkpoints").join(format!("{id}.safetensors")))
        .expect("checkpoint on disk");
    assert_eq!(length, on_disk.len() as u64);
    assert_eq!(body.as_ref(), on_disk.as_slice());
    app.stop().await;
}

#[tokio::test]
async fn websocket_messages_and_layer_lists_are_bounded() {
    let app = spawn_app().await;
    let id = app.submit(&tiny_lstm_spec(1_000_000, 1.0)).await["id"].as_str().expect("id").to_owned();
    app.wait_for(&id, "running", |j| j["status"] == "running" && j["step"].as_i64() > Some(0)).await;
    let url = format!("{}/api/v1/jobs/{id}/stream", app.address.replace("http://", "ws://"));

    // A subscribe that repeats a layer gets it once per step message.
    let (mut socket, _) = connect_async(&url).await.expect("connects");
    let repeated = json!({"type": "subscribe", "layers": vec![1; 500]}).to_string();
    assert!(repeated.len() < 4096);
    socket.send(Message::Text(repeated.into())).await.expect("send");
    let mut seen = 0;
    while seen < 40 {
        let Some(Ok(Message::Text(text))) = socket.next().await else { continue };
        let message: Value = serde_json::from_str(&text).expect("json");
        if message["type"] != "step" || message.get("indices").is_none() {
            continue;
        }
        assert_eq!(message["indices"], json!([1]), "{message}");
        assert_eq!(message["layers"]["grad_norm"].as_array().map(Vec::len), Some(1));
        seen += 40;
    }

    // A message past the 4 KiB bound closes the socket with 1009, and the server goes on.
    let huge = json!({"type": "subscribe", "layers": (0..1_500).collect::<Vec<u32>>()}).to_string();
    assert!((4096..60_000).contains(&huge.len()));
    socket.send(Message::Text(huge.into())).await.expect("send");
    let code = loop {
        match socket.next().await {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| f.code),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    assert_eq!(code, Some(CloseCode::Size));
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.client.post(app.url(&format!("/api/v1/jobs/{id}/cancel"))).send().await.expect("cancel");
    app.wait_finished(&id).await;
    app.stop().await;
}

#[tokio::test]
async fn concurrent_submissions_and_resumes_respect_the_queue_bound() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| config.max_queued = 3).await;
    // A job that will be resumable: cancelled while running, so it has a checkpoint.
    let first = app.submit(&tiny_lstm_spec(1_000_000, 1.0)).await["id"].as_str().expect("id").to_owned();
    app.wait_for(&first, "running", |j| j["status"] == "running" && j["step"].as_i64() > Some(0)).await;
    app.client.post(app.url(&format!("/api/v1/jobs/{first}/cancel"))).send().await.expect("cancel");
    app.wait_finished(&first).await;
    // Occupy the only slot, then race 24 submissions for the 3 places.
    let running = app.submit(&tiny_lstm_spec(1_000_000, 1.0)).await["id"].as_str().expect("id").to_owned();
    app.wait_for(&running, "running", |j| j["status"] == "running").await;
    let spec = tiny_lstm_spec(10, 1.0);
    let answers = futures::future::join_all((0..24).map(|_| app.post_json("/api/v1/jobs", &spec))).await;
    let created = answers.iter().filter(|r| r.status() == 201).count();
    let refused = answers.iter().filter(|r| r.status() == 429).count();
    assert_eq!((created, refused), (3, 21));
    let queued: Value = app.get("/api/v1/jobs?status=queued").await.json().await.expect("json");
    assert_eq!(queued["jobs"].as_array().map(Vec::len), Some(3));

    // Resuming would be a fourth queued job: refused the same way.
    let response = app.client.post(app.url(&format!("/api/v1/jobs/{first}/resume"))).send().await.expect("resume");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("too_many_queued")), "{body}");
    assert_eq!(app.job(&first).await["status"], "cancelled");

    for job in queued["jobs"].as_array().expect("jobs") {
        let id = job["id"].as_str().expect("id");
        app.client.post(app.url(&format!("/api/v1/jobs/{id}/cancel"))).send().await.expect("cancel");
    }
    app.client.post(app.url(&format!("/api/v1/jobs/{running}/cancel"))).send().await.expect("cancel");
    app.wait_finished(&running).await;
    app.stop().await;
}
