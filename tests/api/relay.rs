//! Live streams between nodes on one PostgreSQL database, through NATS
//! JetStream (the server the development and CI machines run at 127.0.0.1:4222): real
//! `gradscope serve` processes on loopback ports, a fresh scratch database and a NATS
//! subject prefix of their own per test.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use gradscope::config::ServeConfig;
use gradscope::store::scratch::ScratchDatabase;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::helpers::{JOB_TIMEOUT, Served, free_port, parse_exposition, serve, spawn_app_with, tiny_lstm_spec};

const NATS: &str = "nats://127.0.0.1:4222";

/// A node: one `gradscope serve` process.
type Node = Served;

/// A subject prefix no other run uses.
fn unique_prefix() -> String {
    format!("test-{}", uuid::Uuid::now_v7().simple())
}

/// Deletes the stream of `prefix` (what a test left in NATS).
async fn delete_stream(prefix: &str) {
    let client = async_nats::connect(NATS).await.expect("NATS at 127.0.0.1:4222");
    async_nats::jetstream::new(client).delete_stream(format!("{prefix}-live")).await.expect("the test's stream");
}

/// Starts `gradscope serve` on `database` with its files in `data` and `args` besides,
/// and waits until it is ready.
async fn start(database: &str, data: &Path, args: &[&str]) -> Node {
    let configure = |c: &mut Command| {
        c.args(["--database-url", database]).arg("--data-dir").arg(data).args(args).env_remove("GRADSCOPE_NATS_URL");
    };
    serve(configure, Duration::from_secs(30)).await
}

async fn submit(node: &Node, spec: &Value) -> String {
    let response =
        reqwest::Client::new().post(format!("{}/api/v1/jobs", node.url)).json(spec).send().await.expect("post");
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned()
}

async fn job(node: &Node, id: &str) -> Value {
    reqwest::get(format!("{}/api/v1/jobs/{id}", node.url)).await.expect("get").json().await.expect("json")
}

async fn wait_status(node: &Node, id: &str, done: impl Fn(&str) -> bool) -> Value {
    let begun = Instant::now();
    loop {
        let job = job(node, id).await;
        if done(job["status"].as_str().unwrap_or("")) {
            return job;
        }
        assert!(begun.elapsed() < JOB_TIMEOUT, "job {id} never reached the status: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(node: &Node, id: &str) -> Socket {
    let url = format!("{}/api/v1/jobs/{id}/stream", node.url.replace("http://", "ws://"));
    let (mut socket, _) = connect_async(url).await.expect("websocket connects");
    let (_, hello) = next(&mut socket).await.expect("hello");
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["job"]["id"], id);
    socket
}

/// The next text message (as sent and parsed), or the close code when the server closes.
async fn next(socket: &mut Socket) -> Result<(String, Value), Option<CloseCode>> {
    loop {
        let message = tokio::time::timeout(JOB_TIMEOUT, socket.next()).await.expect("a message in time");
        match message {
            Some(Ok(Message::Text(text))) => {
                let value = serde_json::from_str(&text).expect("JSON message");
                return Ok((text.to_string(), value));
            }
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// Every message until the server closes, and the close code.
async fn drain(socket: &mut Socket) -> (Vec<(String, Value)>, Option<CloseCode>) {
    let mut messages = Vec::new();
    loop {
        match next(socket).await {
            Ok(m) => messages.push(m),
            Err(code) => return (messages, code),
        }
    }
}

fn steps_of(messages: &[(String, Value)]) -> Vec<u64> {
    messages.iter().filter(|(_, m)| m["type"] == "step").map(|(_, m)| m["step"].as_u64().expect("step")).collect()
}

/// `metric{labels}` as node `node` exports it (0 when absent).
async fn sample(node: &Node, metric: &str, label: (&str, &str)) -> f64 {
    let text = reqwest::get(format!("{}/metrics", node.url)).await.expect("metrics").text().await.expect("text");
    parse_exposition(&text)
        .into_iter()
        .filter(|s| s.metric == metric && s.labels.get(label.0).map(String::as_str) == Some(label.1))
        .map(|s| s.value)
        .sum()
}

/// A job that takes a few seconds: histograms of every layer at every step make each
/// message a few kilobytes.
fn spec(steps: u64) -> Value {
    let mut spec = tiny_lstm_spec(steps, 1.0);
    spec["monitor"] = json!({"histogram": true, "histogram_every": 1});
    spec
}

#[tokio::test]
async fn a_client_on_an_api_only_node_follows_a_job_running_on_another_node() {
    const STEPS: u64 = 600;
    const BACKLOG: u64 = 200;
    let database = ScratchDatabase::create().await.expect("a scratch PostgreSQL database");
    let data = TempDir::new().expect("temp dir");
    let prefix = unique_prefix();
    let backlog = BACKLOG.to_string();
    let relay = ["--nats-url", NATS, "--nats-prefix", &prefix, "--stream-backlog", &backlog];
    // Both started before anything is submitted.
    let a = start(database.url(), data.path(), &[&relay[..], &["--max-jobs", "0"]].concat()).await;
    let c = start(database.url(), data.path(), &relay).await;

    // A job C runs first, so that the test's job waits in the queue while the clients join.
    let first = submit(&a, &tiny_lstm_spec(100, 1.0)).await;
    let id = submit(&a, &spec(STEPS)).await;
    let mut on_a = connect(&a, &id).await;
    let mut on_c = connect(&c, &id).await;
    assert_eq!(job(&a, &id).await["status"], "queued", "the clients joined before the job started");

    // A late client on A joins once the job is halfway.
    let mut early = Vec::new();
    let mut joined_at = None;
    let mut late = None;
    loop {
        match next(&mut on_a).await {
            Ok(message) => {
                if joined_at.is_none() && message.1["type"] == "step" && message.1["step"].as_u64() >= Some(STEPS / 2) {
                    joined_at = message.1["step"].as_u64();
                    late = Some(connect(&a, &id).await);
                }
                early.push(message);
            }
            Err(code) => {
                assert_eq!(code, Some(CloseCode::Normal));
                break;
            }
        }
    }
    let (late_messages, late_code) = drain(&mut late.expect("the late client joined")).await;
    let (local, local_code) = drain(&mut on_c).await;

    // Every step, in order, without gap or duplicate, then the final status.
    assert_eq!(steps_of(&early), (1..=STEPS).collect::<Vec<_>>());
    assert!(early.iter().all(|(_, m)| m["type"] != "lagged" && m["type"] != "error"));
    let last = &early.last().expect("messages").1;
    assert_eq!((last["type"].as_str(), last["status"].as_str()), (Some("status"), Some("succeeded")));
    // The late client: the backlog (steps from before it joined), then the rest.
    let joined_at = joined_at.expect("joined");
    let late_steps = steps_of(&late_messages);
    assert_eq!(late_code, Some(CloseCode::Normal));
    let from = *late_steps.first().expect("steps");
    assert!(from > 1 && from <= joined_at, "backlog from {from}, joined at step {joined_at}");
    assert!(joined_at - from < BACKLOG, "at most the backlog: from {from}, joined at {joined_at}");
    assert_eq!(late_steps, (from..=STEPS).collect::<Vec<_>>());
    assert_eq!(late_messages.last().expect("messages").1["status"], "succeeded");
    // The same messages, to the byte, as a client of the node that runs the job gets.
    assert_eq!(local_code, Some(CloseCode::Normal));
    assert_eq!(steps_of(&local), (1..=STEPS).collect::<Vec<_>>());
    let texts = |messages: &[(String, Value)]| messages.iter().map(|(text, _)| text.clone()).collect::<Vec<_>>();
    assert_eq!(texts(&early), texts(&local));

    // C trained both jobs and published every message; A trained nothing.
    let metric = "gradscope_job_steps_total";
    assert_eq!(sample(&c, metric, ("job", &id)).await, STEPS as f64);
    assert_eq!(sample(&c, metric, ("job", &first)).await, 100.0);
    assert_eq!(sample(&a, metric, ("job", &id)).await, 0.0);
    let relayed = "gradscope_live_relay_messages_total";
    assert_eq!(sample(&c, relayed, ("outcome", "dropped")).await, 0.0);
    assert!(sample(&c, relayed, ("outcome", "published")).await >= (STEPS + 100 + 2) as f64);
    // A finished job: its status, from either node.
    for node in [&a, &c] {
        let (messages, code) = drain(&mut connect(node, &id).await).await;
        assert_eq!(code, Some(CloseCode::Normal));
        assert_eq!(messages.iter().map(|(_, m)| m["type"].as_str()).collect::<Vec<_>>(), [Some("status")]);
    }
    delete_stream(&prefix).await;
}

#[tokio::test]
async fn with_nats_unreachable_jobs_train_and_remote_clients_are_told_why() {
    let dead = format!("nats://127.0.0.1:{}", free_port());
    // A node alone: it starts, and its jobs train and stream as without NATS.
    let alone = spawn_app_with(TempDir::new().expect("temp dir"), |config: &mut ServeConfig| {
        config.nats_url = Some(dead.clone());
    })
    .await;
    let id = alone.submit(&tiny_lstm_spec(40, 1.0)).await["id"].as_str().expect("id").to_owned();
    let url = format!("{}/api/v1/jobs/{id}/stream", alone.address.replace("http://", "ws://"));
    let (mut socket, _) = connect_async(url).await.expect("websocket connects");
    let (messages, code) = drain(&mut socket).await;
    assert_eq!(code, Some(CloseCode::Normal));
    assert_eq!(steps_of(&messages[1..]), (1..=40).collect::<Vec<_>>());
    assert_eq!(alone.wait_finished(&id).await["status"], "succeeded");

    // A node that cannot reach NATS, asked for a job running on another: an error that
    // names the cause, then a close.
    let database = ScratchDatabase::create().await.expect("a scratch PostgreSQL database");
    let data = TempDir::new().expect("temp dir");
    let prefix = unique_prefix();
    let c = start(database.url(), data.path(), &["--nats-url", NATS, "--nats-prefix", &prefix]).await;
    let a =
        start(database.url(), data.path(), &["--nats-url", &dead, "--nats-prefix", &prefix, "--max-jobs", "0"]).await;
    let id = submit(&a, &tiny_lstm_spec(1_000_000, 1.0)).await;
    wait_status(&a, &id, |s| s == "running").await;
    let mut socket = connect(&a, &id).await;
    let (messages, code) = drain(&mut socket).await;
    assert_eq!(code, Some(CloseCode::Error));
    let (_, error) = messages.last().expect("an error message");
    assert_eq!(error["type"], "error", "{messages:?}");
    let text = error["message"].as_str().expect("message");
    assert!(text.contains("NATS") && text.contains(&dead), "{text}");
    // Cancelled where it runs.
    let cancelled =
        reqwest::Client::new().post(format!("{}/api/v1/jobs/{id}/cancel", c.url)).send().await.expect("cancel");
    assert!(cancelled.status().is_success());
    wait_status(&c, &id, |s| s == "cancelled").await;
    delete_stream(&prefix).await;
}
