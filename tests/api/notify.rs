//! Webhook notifications: a real receiver on a local port gets the POSTs, retries reach a
//! receiver that fails at first, and a receiver that is down costs the job nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use gradscope::spec::notify::{MAX_ON, MAX_URL_LEN};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{TestApp, parse_exposition, spawn_app, spawn_app_with, tiny_lstm_spec};

/// A webhook receiver: answers 500 to its first `fail_first` POSTs, then 200, and keeps
/// the bodies it accepted.
#[derive(Default)]
struct Receiver {
    fail_first: AtomicUsize,
    hits: AtomicUsize,
    bodies: Mutex<Vec<Value>>,
}

async fn receive(State(receiver): State<Arc<Receiver>>, Json(body): Json<Value>) -> StatusCode {
    receiver.hits.fetch_add(1, Ordering::SeqCst);
    let failing = receiver.fail_first.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if failing {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    receiver.bodies.lock().expect("lock").push(body);
    StatusCode::OK
}

/// Starts a receiver on 127.0.0.1; returns it and its URL.
async fn start_receiver(fail_first: usize) -> (Arc<Receiver>, String) {
    let receiver = Arc::new(Receiver { fail_first: AtomicUsize::new(fail_first), ..Receiver::default() });
    let router = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (receiver, url)
}

impl Receiver {
    /// Waits until `count` bodies have arrived and returns them.
    async fn wait_for(&self, count: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let bodies = self.bodies.lock().expect("lock").clone();
            if bodies.len() >= count {
                return bodies;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "only {} of {count} notifications: {bodies:?}",
                bodies.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `gradscope_notifications_total{outcome}` as scraped.
async fn outcomes(app: &TestApp, outcome: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.expect("text");
    parse_exposition(&text)
        .into_iter()
        .find(|s| {
            s.metric == "gradscope_notifications_total" && s.labels.get("outcome").map(String::as_str) == Some(outcome)
        })
        .map_or_else(|| panic!("no notifications_total{{outcome={outcome}}} in {text}"), |s| s.value)
}

/// A deep ReLU MLP with huge weights and a huge step size: non-finite within steps, so its
/// diagnosis turns critical and it ends diverged.
fn storm(name: &str) -> Value {
    json!({
        "name": name,
        "steps": 30, "batch_size": 16, "device": "cpu",
        "task": {"kind": "classification", "features": 8, "classes": 4},
        "model": {"kind": "mlp", "layers": 6, "hidden": 32, "activation": "relu", "init_scale": 100.0},
        "optimizer": {"kind": "sgd", "lr": 10.0},
        "policy": {"grad": [], "on_nonfinite": "stop"},
    })
}

#[tokio::test]
async fn the_end_and_the_diagnosis_change_of_a_job_are_posted_to_both_receivers() {
    let (server, server_url) = start_receiver(0).await;
    let (own, own_url) = start_receiver(0).await;
    let app = spawn_app_with(TempDir::new().expect("dir"), |c| c.notify_url = Some(server_url)).await;
    let mut spec = storm("storm <&>");
    spec["notify"] = json!({"url": own_url, "on": ["failed"]});
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    let job = app.wait_finished(&id).await;
    assert_eq!(job["status"], "diverged", "{job}");

    // The service's receiver hears of everything (the default `on`), in any order.
    let mut bodies = server.wait_for(2).await;
    bodies.sort_by_key(|b| b["event"].as_str().map(str::to_owned));
    let [diagnosis, finished] = &bodies[..] else { panic!("{bodies:?}") };
    assert_eq!(diagnosis["event"], "diagnosis");
    assert_eq!(diagnosis["job"]["id"], id.as_str());
    assert_eq!(diagnosis["previous_status"], "healthy");
    assert_eq!(diagnosis["diagnosis"]["status"], "critical");
    assert!(diagnosis["diagnosis"]["issues"].as_array().expect("issues").iter().any(|i| i["kind"] == "nonfinite"));
    let step = diagnosis["job"]["step"].as_i64().expect("step");
    assert!(step >= 1 && step <= job["step"].as_i64().expect("step"), "{diagnosis}");
    let text = diagnosis["text"].as_str().expect("text");
    assert!(text.contains("healthy → critical"), "{text}");

    assert_eq!(finished["event"], "finished");
    for field in ["id", "name", "status", "step", "total_steps", "error"] {
        assert_eq!(finished["job"][field], job[field], "job.{field} as the API says: {finished}");
    }
    assert_eq!(finished["diagnosis"]["status"], "critical");
    let text = finished["text"].as_str().expect("text");
    // Slack's markup characters are escaped; no --public-url: the link is a path.
    assert!(text.contains("storm &lt;&amp;&gt;") && text.contains(&id), "{text}");
    assert!(text.contains("diverged"), "{text}");
    assert!(text.ends_with(&format!(" /#/jobs/{id}")), "{text}");

    // The job's own receiver asked for failures only: the end, not the diagnosis.
    let mine = own.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(own.bodies.lock().expect("lock").len(), 1);
    assert_eq!(mine[0], *finished, "both receivers get the same body");
    assert_eq!(outcomes(&app, "delivered").await, 3.0);
    assert_eq!(outcomes(&app, "failed").await, 0.0);
}

#[tokio::test]
async fn a_receiver_that_fails_twice_gets_the_notification_on_the_third_try() {
    let (receiver, url) = start_receiver(2).await;
    let app = spawn_app_with(TempDir::new().expect("dir"), |c| {
        c.notify_retry_base = Duration::from_millis(50);
        c.public_url = Some("https://gradscope.example.com/".to_owned());
    })
    .await;
    let mut spec = tiny_lstm_spec(5, 1.0);
    spec["notify"] = json!({"url": url, "on": ["finished"]});
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    let job = app.wait_finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let bodies = receiver.wait_for(1).await;
    assert_eq!(receiver.hits.load(Ordering::SeqCst), 3, "two refusals, then the delivery");
    assert_eq!(bodies[0]["job"]["status"], "succeeded");
    assert_eq!(bodies[0]["job"]["step"], 5);
    let link = format!("https://gradscope.example.com/#/jobs/{id}");
    assert_eq!(bodies[0]["job"]["url"], link.as_str());
    assert!(bodies[0]["text"].as_str().expect("text").ends_with(&link));
    assert_eq!(outcomes(&app, "delivered").await, 1.0);
    assert_eq!(outcomes(&app, "failed").await, 0.0);
}

#[tokio::test]
async fn a_receiver_that_is_down_neither_delays_nor_fails_the_job_and_is_counted() {
    // A port that was free a moment ago: connections to it are refused.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", closed.local_addr().expect("address"));
    drop(closed);
    let app = spawn_app_with(TempDir::new().expect("dir"), |c| {
        c.notify_retry_base = Duration::from_millis(200);
    })
    .await;
    let mut spec = tiny_lstm_spec(5, 1.0);
    spec["notify"] = json!({"url": url, "on": ["finished"]});
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    let job = app.wait_finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["error"], Value::Null);
    // The tries take 0.2 + 0.4 + 0.8 s after the job ended: the job did not wait for them.
    assert_eq!(outcomes(&app, "failed").await, 0.0, "still trying when the job had ended");
    let start = Instant::now();
    while outcomes(&app, "failed").await < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(30), "the failure was never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(outcomes(&app, "failed").await, 1.0);
    assert_eq!(outcomes(&app, "delivered").await, 0.0);
    // The service goes on taking work.
    assert_eq!(app.get("/api/v1/jobs").await.status(), 200);
}

#[tokio::test]
async fn webhook_urls_and_kinds_are_checked_naming_the_field() {
    let app = spawn_app().await;
    let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
    let cases = [
        (json!({"url": "ftp://example.com/hook"}), "notify.url"),
        (json!({"url": "file:///etc/passwd"}), "notify.url"),
        (json!({"url": "https://user:secret@example.com/hook"}), "notify.url"),
        (json!({"url": "not a url"}), "notify.url"),
        (json!({"url": long}), "notify.url"),
        (json!({"url": 7}), "notify.url"),
        (json!({"on": ["finished", "finished"]}), "notify.on"),
        (json!({"on": ["finished", "failed", "diagnosis", "finished"]}), "notify.on"),
        (json!({"on": ["started"]}), "notify.on[0]"),
        (json!({"secret": "x"}), "notify.secret"),
    ];
    for (notify, field) in cases {
        let mut spec = tiny_lstm_spec(5, 1.0);
        spec["notify"] = notify.clone();
        let response = app.post_json("/api/v1/jobs", &spec).await;
        assert_eq!(response.status(), 422, "{notify}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["field"], field, "{notify}: {body}");
    }
    // The OpenAPI document publishes the same bounds.
    let doc: Value = app.get("/api/v1/openapi.json").await.json().await.expect("json");
    let schema = &doc["components"]["schemas"]["NotifySpec"]["properties"];
    assert_eq!(schema["url"]["maxLength"], json!(MAX_URL_LEN), "{schema}");
    assert_eq!(schema["on"]["maxItems"], json!(MAX_ON), "{schema}");
    assert_eq!(schema["on"]["default"], json!(["finished", "diagnosis"]), "{schema}");
    // Left out, `on` is the end and the diagnosis; a stored spec says so.
    let mut spec = tiny_lstm_spec(1, 1.0);
    spec["notify"] = json!({"url": "http://127.0.0.1:9/hook"});
    let job = app.submit(&spec).await;
    assert_eq!(job["spec"]["notify"]["on"], json!(["finished", "diagnosis"]));
}
