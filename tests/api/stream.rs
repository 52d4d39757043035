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

/// Plain or compressed, a client that stops reading holds up neither the job nor a client
/// that reads: that one gets every step or a `lagged` count for what it missed.
#[tokio::test]
async fn a_client_that_stops_reading_stalls_neither_the_job_nor_other_clients() {
    let app = spawn_app().await;
    for query in ["", "?compress=gzip"] {
        let mut spec = tiny_lstm_spec(300, 1.0);
        spec["monitor"] = json!({"histogram": true});
        let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
        let stalled = connect(&app, &id, query).await; // never read
        let mut reader = connect(&app, &id, query).await;
        let read = drain_frames(&mut reader).await;
        assert_eq!(read.code, Some(CloseCode::Normal), "{query}");
        assert_eq!(read.messages.last().expect("status")["status"], "succeeded");
        let steps = steps_of(&read.messages);
        let lagged: u64 =
            read.messages.iter().filter(|m| m["type"] == "lagged").map(|m| m["missed"].as_u64().expect("n")).sum();
        assert_eq!(steps.len() as u64 + lagged, 300, "{query}: every step arrives or is counted as missed");
        assert!(steps.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(app.job(&id).await["status"], "succeeded");
        drop(stalled);
    }
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

/// One frame's messages (`compress=gzip`): a text frame's one, or the newline-ended
/// messages of a binary frame's gzip member (checked against its CRC); with the
/// frame's size on the wire, and whether it was binary.
async fn next_frame(socket: &mut Socket) -> Result<(Vec<Value>, usize, bool), Option<CloseCode>> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                return Ok((vec![serde_json::from_str(&text).expect("JSON message")], text.len(), false));
            }
            Some(Ok(Message::Binary(bytes))) => {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
                    .expect("one gzip member of UTF-8");
                assert!(text.ends_with('\n'), "every message ends with a newline");
                let messages = text.lines().map(|line| serde_json::from_str(line).expect("JSON message")).collect();
                return Ok((messages, bytes.len(), true));
            }
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// What a client read until the server closed.
struct Read {
    messages: Vec<Value>,
    code: Option<CloseCode>,
    /// Bytes of the frames' payloads, as sent.
    bytes: usize,
    binary_frames: usize,
}

async fn drain_frames(socket: &mut Socket) -> Read {
    let mut read = Read { messages: Vec::new(), code: None, bytes: 0, binary_frames: 0 };
    loop {
        match next_frame(socket).await {
            Ok((messages, bytes, binary)) => {
                read.messages.extend(messages);
                read.bytes += bytes;
                read.binary_frames += usize::from(binary);
            }
            Err(code) => {
                read.code = code;
                return read;
            }
        }
    }
}

/// `compress=gzip` clients get exactly the messages a plain client gets, whole or thinned,
/// in fewer frames and fewer bytes; an unknown compression is refused, naming the field.
#[tokio::test]
async fn compressed_clients_get_the_same_messages_in_fewer_frames_and_bytes() {
    let app = spawn_app().await;
    // Queued behind another job until every client is connected: they all see the same
    // feed from its start.
    let blocker = app.submit(&tiny_lstm_spec(1_000_000, 1.0)).await["id"].as_str().expect("id").to_owned();
    let mut spec = tiny_lstm_spec(400, 1.0);
    spec["monitor"] = json!({"histogram": true});
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    let mut plain = connect(&app, &id, "").await;
    let mut sockets = Vec::new();
    for _ in 0..8 {
        sockets.push(connect(&app, &id, "?compress=gzip").await);
    }
    let mut thinned = connect(&app, &id, "?compress=gzip&every=3&layers=1").await;
    let readers: Vec<_> =
        sockets.into_iter().map(|mut s| tokio::spawn(async move { drain_frames(&mut s).await })).collect();
    let thinned = tokio::spawn(async move { drain_frames(&mut thinned).await });
    app.client.post(app.url(&format!("/api/v1/jobs/{blocker}/cancel"))).send().await.expect("cancel");
    let plain = drain_frames(&mut plain).await;
    assert_eq!(plain.code, Some(CloseCode::Normal));
    assert_eq!(plain.binary_frames, 0);
    assert_eq!(steps_of(&plain.messages), (1..=400).collect::<Vec<_>>());
    for reader in readers {
        let read = reader.await.expect("reader");
        assert_eq!(read.code, Some(CloseCode::Normal));
        assert_eq!(read.messages.len(), plain.messages.len());
        // Message for message after the hello (which has the job as each client connected),
        // the same JSON values.
        if let Some(i) = (1..read.messages.len()).find(|&i| read.messages[i] != plain.messages[i]) {
            panic!("message {i}: {} plain, {} compressed", plain.messages[i], read.messages[i]);
        }
        assert!(read.binary_frames < read.messages.len() / 4, "{} frames", read.binary_frames);
        assert!(read.bytes * 2 < plain.bytes, "{} bytes compressed against {} plain", read.bytes, plain.bytes);
    }
    let thinned = thinned.await.expect("reader");
    assert_eq!(thinned.code, Some(CloseCode::Normal));
    let steps: Vec<&Value> = thinned.messages.iter().filter(|m| m["type"] == "step").collect();
    assert!(!steps.is_empty());
    for step in &steps {
        let n = step["step"].as_u64().expect("step");
        assert!(n % 3 == 0 || step.get("spectral").is_some() || step.get("time_profile").is_some(), "step {n}");
        assert_eq!(step["indices"], json!([1]));
        let whole = plain.messages.iter().find(|m| m["type"] == "step" && m["step"] == n).expect("the same step");
        assert_eq!(step["layers"]["grad_norm"][0], whole["layers"]["grad_norm"][1], "step {n}");
        assert_eq!(step["loss"], whole["loss"]);
    }
    assert_eq!(thinned.messages.last(), plain.messages.last(), "the final status");

    let ws = app.address.replace("http://", "ws://");
    match connect_async(format!("{ws}/api/v1/jobs/{id}/stream?compress=br")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 422);
            let body: Value = serde_json::from_slice(response.body().as_deref().expect("a body")).expect("json");
            assert_eq!(body["error"]["field"], "compress", "{body}");
        }
        other => panic!("an unknown compression must be refused, got {other:?}"),
    }
}

/// Compressed clients joining a running job at different times each get its recent steps
/// and then every later one, without a gap or a duplicate where the two meet.
#[tokio::test]
async fn compressed_late_joiners_get_recent_history_then_live_steps_without_gaps() {
    let app = spawn_app().await;
    let id = app.submit(&tiny_lstm_spec(1_000_000, 1.0)).await["id"].as_str().expect("id").to_owned();
    let mut readers = Vec::new();
    for past in [20u64, 60, 100] {
        app.wait_for(&id, "far enough", |j| j["step"].as_u64() > Some(past)).await;
        let mut socket = connect(&app, &id, "?compress=gzip").await;
        readers.push(tokio::spawn(async move {
            next_frame(&mut socket).await.expect("hello");
            // The recent history comes first, in one frame.
            let history = steps_of(&next_frame(&mut socket).await.expect("history").0);
            let mut steps = history.clone();
            while steps.len() < history.len() + 300 {
                let (messages, _, _) = next_frame(&mut socket).await.expect("messages");
                steps.extend(messages.iter().filter(|m| m["type"] == "step").map(|m| m["step"].as_u64().expect("n")));
            }
            (history.len(), steps)
        }));
    }
    for reader in readers {
        let (history, steps) = reader.await.expect("reader");
        // The whole history, or the 512 steps of the ring when the job went further
        // before the client joined.
        assert!(steps[0] == 1 || history == 512, "history of {history} steps from step {}", steps[0]);
        assert!(history > 20);
        for pair in steps.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "no gap and no duplicate");
        }
    }
    app.client.post(app.url(&format!("/api/v1/jobs/{id}/cancel"))).send().await.expect("cancel");
    app.wait_finished(&id).await;
}
