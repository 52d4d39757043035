//! The WebSocket feed, with a real WebSocket client.

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::helpers::{TestApp, spawn_app, tiny_lstm_spec};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(app: &TestApp, id: &str, query: &str) -> Socket {
    let url = format!("{}/api/v1/jobs/{id}/stream{query}", app.address.replace("http://", "ws://"));
    connect_async(url).await.expect("websocket connects").0
}

/// The next JSON message, or the close frame's code when the server closes.
async fn next(socket: &mut Socket) -> Result<Value, Option<CloseCode>> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).expect("JSON message")),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// Every message until the server closes, and the close code.
async fn drain(socket: &mut Socket) -> (Vec<Value>, Option<CloseCode>) {
    let mut messages = Vec::new();
    loop {
        match next(socket).await {
            Ok(m) => messages.push(m),
            Err(code) => return (messages, code),
        }
    }
}

/// The per-layer statistics DESIGN.md §3 names, in its order, with `underflow` (the
/// README's Statistics) after `nonfinite`.
const DOCUMENTED_STATS: [&str; 9] = [
    "grad_norm",
    "grad_max",
    "grad_mean",
    "grad_std",
    "zero_frac",
    "nonfinite",
    "underflow",
    "weight_norm",
    "update_ratio",
];

/// The histogram's power-of-two buckets as DESIGN.md §3 defines them: 2⁻⁴⁰ … 2⁸.
fn documented_edges() -> Vec<f64> {
    (-40..=8).map(|e| 2f64.powi(e)).collect()
}

fn steps_of(messages: &[Value]) -> Vec<u64> {
    messages.iter().filter(|m| m["type"] == "step").map(|m| m["step"].as_u64().expect("step")).collect()
}

#[tokio::test]
async fn a_running_job_streams_every_step_with_every_layer() {
    let app = spawn_app().await;
    let mut spec = tiny_lstm_spec(60, 0.25);
    spec["monitor"] = json!({"histogram": true, "histogram_every": 1});
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    let connected = std::time::Instant::now();
    let mut socket = connect(&app, &id, "").await;
    let hello = next(&mut socket).await.expect("hello");
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["job"]["id"], id.as_str());
    assert_eq!(hello["statistics"], json!(DOCUMENTED_STATS), "the statistics a step carries, in order");
    let edges: Vec<f64> =
        hello["histogram_edges"].as_array().expect("edges").iter().map(|e| e.as_f64().expect("edge")).collect();
    assert_eq!(edges, documented_edges(), "the lower edges of the power-of-two buckets");

    let (messages, code) = drain(&mut socket).await;
    let elapsed = connected.elapsed().as_secs_f64();
    assert_eq!(code, Some(CloseCode::Normal));
    let last = messages.last().expect("messages");
    assert_eq!((last["type"].as_str(), last["status"].as_str()), (Some("status"), Some("succeeded")));
    // Connected before the first step was reported: every step, in order.
    assert_eq!(steps_of(&messages), (1..=60).collect::<Vec<_>>());
    // Each write to this, the only client, is one observation of the delay histogram: at
    // least one write, at most one per message, none waiting longer than the client did.
    let exposition = app.get("/metrics").await.text().await.expect("metrics");
    let samples = crate::helpers::parse_exposition(&exposition);
    let sample = |name: &str| samples.iter().find(|s| s.metric == name).map(|s| s.value).expect(name);
    let (writes, waited) =
        (sample("gradscope_stream_delay_seconds_count"), sample("gradscope_stream_delay_seconds_sum"));
    assert!((1.0..=messages.len() as f64).contains(&writes), "{writes} writes for {} messages", messages.len());
    assert!((0.0..=writes * elapsed).contains(&waited), "{waited} s waited in {writes} writes over {elapsed} s");
    let layers = app.get(&format!("/api/v1/jobs/{id}/layers")).await.json::<Value>().await.expect("json");
    let n = layers["layers"].as_array().expect("layers").len();
    for step in messages.iter().filter(|m| m["type"] == "step") {
        assert!(step["grad_norm_clipped"].as_f64().expect("norm") <= 0.25 * (1.0 + 1e-5));
        for stat in DOCUMENTED_STATS.iter().chain(&["hist"]) {
            assert_eq!(step["layers"][stat].as_array().map(Vec::len), Some(n), "{stat} at step {}", step["step"]);
        }
        for counts in step["layers"]["hist"].as_array().expect("hist") {
            // Exact zeros, one bucket per edge, then NaN/±Inf.
            assert_eq!(counts.as_array().map(Vec::len), Some(edges.len() + 2));
        }
    }
    // The stream agrees with what was stored.
    let stored: Value = app.get(&format!("/api/v1/jobs/{id}/steps")).await.json().await.expect("json");
    let streamed: Vec<f64> =
        messages.iter().filter(|m| m["type"] == "step").map(|m| m["loss"].as_f64().expect("loss")).collect();
    let stored: Vec<f64> = stored["loss"].as_array().expect("loss").iter().map(|v| v.as_f64().expect("loss")).collect();
    assert_eq!(streamed, stored);
}

#[tokio::test]
async fn every_and_layers_thin_the_stream_and_can_change() {
    let app = spawn_app().await;
    let id = app.submit(&tiny_lstm_spec(1_000_000, 1.0)).await["id"].as_str().expect("id").to_owned();
    let mut socket = connect(&app, &id, "?every=5&layers=0,2").await;
    assert_eq!(next(&mut socket).await.expect("hello")["type"], "hello");
    let (mut seen, mut measured) = (Vec::new(), Vec::new());
    while seen.len() < 4 {
        let m = next(&mut socket).await.expect("message");
        if m["type"] == "step" {
            assert_eq!(m["indices"], json!([0, 2]));
            assert_eq!(m["layers"]["grad_norm"].as_array().map(Vec::len), Some(2));
            // A step that measured the spectral radius or the temporal profile comes through
            // whatever `every` says.
            let step = m["step"].as_u64().expect("step");
            if m.get("spectral").is_some() || m.get("time_profile").is_some() {
                measured.push(step);
            } else {
                seen.push(step);
            }
        }
    }
    assert!(seen.iter().all(|s| s % 5 == 0), "{seen:?}");
    assert!(measured.iter().all(|s| s % 10 == 1), "{measured:?}");

    socket
        .send(Message::Text(json!({"type": "subscribe", "every": 7, "layers": [1]}).to_string().into()))
        .await
        .expect("send");
    let mut after = Vec::new();
    while after.len() < 3 {
        let m = next(&mut socket).await.expect("message");
        if m["type"] == "step"
            && m["indices"] == json!([1])
            && m.get("spectral").is_none()
            && m.get("time_profile").is_none()
        {
            after.push(m["step"].as_u64().expect("step"));
        }
    }
    assert!(after.iter().all(|s| s % 7 == 0), "{after:?}");
    app.client.post(app.url(&format!("/api/v1/jobs/{id}/cancel"))).send().await.expect("cancel");
    let (messages, code) = drain(&mut socket).await;
    assert_eq!(messages.last().expect("status")["status"], "cancelled");
    assert_eq!(code, Some(CloseCode::Normal));
}

#[tokio::test]
async fn a_late_joiner_gets_recent_history_then_live_steps_without_gaps() {
    let app = spawn_app().await;
    let id = app.submit(&tiny_lstm_spec(1_000_000, 1.0)).await["id"].as_str().expect("id").to_owned();
    app.wait_for(&id, "past step 100", |j| j["step"].as_u64() > Some(100)).await;
    let mut socket = connect(&app, &id, "").await;
    next(&mut socket).await.expect("hello");
    let mut steps = Vec::new();
    while steps.len() < 200 {
        let m = next(&mut socket).await.expect("message");
        if m["type"] == "step" {
            steps.push(m["step"].as_u64().expect("step"));
        }
    }
    // Joined after step 100 with a 512-step ring: the whole history comes first.
    assert_eq!(steps[0], 1, "history starts at the ring's oldest step");
    for pair in steps.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "no gap and no duplicate");
    }
    app.client.post(app.url(&format!("/api/v1/jobs/{id}/cancel"))).send().await.expect("cancel");
    app.wait_finished(&id).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_stalls_neither_the_job_nor_other_clients() {
    let app = spawn_app().await;
    let mut spec = tiny_lstm_spec(300, 1.0);
    spec["monitor"] = json!({"histogram": true});
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    let stalled = connect(&app, &id, "").await; // never read
    let mut reader = connect(&app, &id, "").await;
    let (messages, code) = drain(&mut reader).await;
    assert_eq!(code, Some(CloseCode::Normal));
    assert_eq!(messages.last().expect("status")["status"], "succeeded");
    let steps = steps_of(&messages);
    let lagged: u64 = messages.iter().filter(|m| m["type"] == "lagged").map(|m| m["missed"].as_u64().expect("n")).sum();
    assert_eq!(steps.len() as u64 + lagged, 300, "every step arrives or is counted as missed");
    assert!(steps.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(app.job(&id).await["status"], "succeeded");
    drop(stalled);
}

#[tokio::test]
async fn a_finished_job_gives_hello_and_its_final_status() {
    let app = spawn_app().await;
    let id = app.submit(&tiny_lstm_spec(5, 1.0)).await["id"].as_str().expect("id").to_owned();
    app.wait_finished(&id).await;
    let mut socket = connect(&app, &id, "").await;
    let (messages, code) = drain(&mut socket).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["type"], "hello");
    assert_eq!(messages[0]["layers"].as_array().map(Vec::len), Some(7));
    assert_eq!(messages[0]["statistics"], json!(DOCUMENTED_STATS));
    assert_eq!(messages[0]["histogram_edges"].as_array().map(Vec::len), Some(documented_edges().len()));
    assert_eq!((messages[1]["type"].as_str(), messages[1]["status"].as_str()), (Some("status"), Some("succeeded")));
    assert_eq!(code, Some(CloseCode::Normal));

    let unknown = app.get("/api/v1/jobs/0190a000-0000-7000-8000-000000000000/stream").await;
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn shutdown_closes_sockets_with_a_close_frame() {
    let app = spawn_app().await;
    let id = app.submit(&tiny_lstm_spec(1_000_000, 1.0)).await["id"].as_str().expect("id").to_owned();
    let mut socket = connect(&app, &id, "?every=1000000").await;
    next(&mut socket).await.expect("hello");
    app.wait_for(&id, "running", |j| j["status"] == "running").await;
    let stopping = tokio::spawn(app.stop());
    let (messages, code) = drain(&mut socket).await;
    assert!(
        code == Some(CloseCode::Away) || messages.last().is_some_and(|m| m["status"] == "interrupted"),
        "closed with {code:?} after {messages:?}"
    );
    assert!(code.is_some(), "the server sent a close frame");
    stopping.await.expect("stopped");
}

#[tokio::test]
async fn client_limits_close_with_a_reason_and_clients_are_counted() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = crate::helpers::spawn_app_with(dir, |config| config.ws_max_per_job = 1).await;
    let id = app.submit(&tiny_lstm_spec(1_000_000, 1.0)).await["id"].as_str().expect("id").to_owned();
    app.wait_for(&id, "running", |j| j["status"] == "running").await;
    let mut first = connect(&app, &id, "?every=1000000").await;
    next(&mut first).await.expect("hello");
    let mut second = connect(&app, &id, "").await;
    next(&mut second).await.expect("hello");
    let refused = loop {
        match second.next().await {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close frame"),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(refused.code, CloseCode::Again);
    assert!(refused.reason.contains("too many"), "{}", refused.reason);

    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    let clients = crate::helpers::parse_exposition(&metrics)
        .into_iter()
        .find(|s| s.metric == "gradscope_ws_clients")
        .map(|s| s.value);
    assert_eq!(clients, Some(1.0), "the refused client is not counted");
    app.client.post(app.url(&format!("/api/v1/jobs/{id}/cancel"))).send().await.expect("cancel");
    app.wait_finished(&id).await;
    drop(first);
    app.stop().await;
}

/// Every message a running job's stream sends (hello, steps with every layer and with a
/// subset, events, an error, the final status) is valid against the JSON Schema the
/// service publishes, checked by an independent validator; and the schema is strict
/// enough to refuse a message that breaks it.
#[tokio::test]
async fn real_messages_match_the_published_schema() {
    let app = spawn_app().await;
    let schema_response = app.get("/api/v1/stream-schema.json").await;
    assert_eq!(schema_response.status(), 200);
    let schema: Value = schema_response.json().await.expect("json");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");

    let mut spec = tiny_lstm_spec(1_000_000, 0.25);
    spec["monitor"] = json!({"histogram": true, "summary_every": 10});
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    let mut whole = connect(&app, &id, "").await;
    let mut subset = connect(&app, &id, "?every=3&layers=1,99").await;
    subset.send(Message::Text(json!({"type": "unsubscribe"}).to_string().into())).await.expect("send");
    let mut messages = Vec::new();
    // Steps and a policy summary (clipped, every 10 steps), then the end.
    while steps_of(&messages).len() < 20 || !messages.iter().any(|m| m["type"] == "event") {
        messages.push(next(&mut whole).await.expect("message"));
    }
    app.client.post(app.url(&format!("/api/v1/jobs/{id}/cancel"))).send().await.expect("cancel");
    for socket in [&mut whole, &mut subset] {
        let (rest, code) = drain(socket).await;
        assert_eq!(code, Some(CloseCode::Normal));
        messages.extend(rest);
    }

    let mut types: Vec<&str> = messages.iter().filter_map(|m| m["type"].as_str()).collect();
    types.sort_unstable();
    types.dedup();
    assert_eq!(types, ["error", "event", "hello", "status", "step"], "every kind of message is checked");
    assert!(messages.iter().any(|m| m["indices"] == json!([1, 99])), "a subset step is checked");
    let variants = schema["components"]["schemas"]["ServerMessage"]["oneOf"].as_array().expect("one of");
    for message in &messages {
        if validator.is_valid(message) {
            continue;
        }
        // Say why, against the variant of the message's type.
        let at = variants.iter().position(|v| v["properties"]["type"]["enum"][0] == message["type"]);
        let mut variant = schema.clone();
        variant["$ref"] = json!(format!("#/components/schemas/ServerMessage/oneOf/{}", at.unwrap_or_default()));
        let variant = jsonschema::validator_for(&variant).expect("schema");
        let errors: Vec<String> = variant.iter_errors(message).map(|e| format!("{}: {e}", e.instance_path())).collect();
        panic!("{} message invalid: {errors:?}", message["type"]);
    }

    let step = messages.iter().find(|m| m["type"] == "step" && m["indices"].is_null()).expect("a step");
    let mut without_loss = step.clone();
    without_loss.as_object_mut().expect("object").remove("loss");
    assert!(!validator.is_valid(&without_loss), "a step without its loss is refused");
    let mut renamed = step.clone();
    renamed["layers"]["grad_nrom"] = renamed["layers"]["grad_norm"].take();
    renamed["layers"].as_object_mut().expect("layers").remove("grad_norm");
    assert!(!validator.is_valid(&renamed), "a step missing a statistic is refused");
    let hello = messages.iter().find(|m| m["type"] == "hello").expect("hello");
    let mut unknown = hello.clone();
    unknown["statistics"][0] = json!("grad_nrom");
    assert!(!validator.is_valid(&unknown), "a statistic outside the vocabulary is refused");
    assert!(!validator.is_valid(&json!({"type": "welcome"})), "an unknown message type is refused");
}

/// Many clients of a job that steps faster than a client's writes (several steps go out
/// in one write): each gets every step once, in order, then the final status.
#[tokio::test]
async fn many_clients_of_a_fast_job_each_get_every_step_in_order() {
    let app = spawn_app().await;
    let id = app.submit(&tiny_lstm_spec(400, 1.0)).await["id"].as_str().expect("id").to_owned();
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(connect(&app, &id, "").await);
    }
    let readers: Vec<_> = sockets.into_iter().map(|mut s| tokio::spawn(async move { drain(&mut s).await })).collect();
    for reader in readers {
        let (messages, code) = reader.await.expect("reader");
        assert_eq!(code, Some(CloseCode::Normal));
        assert_eq!(messages.first().expect("hello")["type"], "hello");
        assert!(messages.iter().all(|m| m["type"] != "lagged"), "no client fell behind");
        // Whether it joined before the first step or after some: the ring holds them all.
        assert_eq!(steps_of(&messages), (1..=400).collect::<Vec<_>>());
        assert_eq!(messages.last().expect("status")["status"], "succeeded");
    }
}
