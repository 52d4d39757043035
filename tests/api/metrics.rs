//! `/metrics`: valid exposition whose values track the jobs exactly.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::helpers::{Sample, TestApp, parse_exposition, spawn_app, tiny_lstm_spec};

struct Scrape {
    samples: Vec<Sample>,
    text: String,
}

/// Scrapes `/metrics` and has Prometheus's own `promtool` check the format.
async fn scrape(app: &TestApp) -> Scrape {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().expect("type").starts_with("text/plain"));
    let text = response.text().await.expect("text");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (make test installs Debian's prometheus package)");
    promtool.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let checked = promtool.wait_with_output().expect("promtool");
    let complaints = String::from_utf8_lossy(&checked.stdout).to_string() + &String::from_utf8_lossy(&checked.stderr);
    // promtool exits 1 for lint remarks too; only format errors ("error while linting") matter.
    assert!(!complaints.contains("error while linting"), "promtool: {complaints}");
    Scrape { samples: parse_exposition(&text), text }
}

fn value(sample: &Sample) -> f64 {
    sample.value
}

fn samples<'a>(scrape: &'a Scrape, metric: &str, job: &str) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && s.labels.get("job").map(String::as_str) == Some(job))
        .collect()
}

#[tokio::test]
async fn metrics_track_a_finished_job_and_vanish_with_it() {
    let app = spawn_app().await;
    let mut spec = tiny_lstm_spec(25, 0.25);
    spec["monitor"] = json!({"prometheus_layers": 3, "histogram": false});
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    let done = app.wait_finished(&id).await;
    assert_eq!(done["status"], "succeeded");

    let m = scrape(&app).await;
    let steps = samples(&m, "gradscope_job_steps_total", &id);
    assert_eq!(steps.len(), 1);
    assert_eq!(value(steps[0]), 25.0);
    let loss = samples(&m, "gradscope_job_loss", &id);
    assert_eq!(Some(value(loss[0])), done["loss"].as_f64(), "job_loss is the last recorded loss");

    let recorded: Value = app.get(&format!("/api/v1/jobs/{id}/steps")).await.json().await.expect("json");
    let pre = recorded["grad_norm"].as_array().expect("norms");
    let norm = samples(&m, "gradscope_job_grad_norm", &id);
    let stage = |s: &str| norm.iter().find(|x| x.labels.get("stage").map(String::as_str) == Some(s)).map(|x| value(x));
    assert_eq!(stage("pre"), pre.last().and_then(Value::as_f64));
    assert!(stage("post").expect("post") <= 0.25 * (1.0 + 1e-5));
    let clipped =
        recorded["clip_coef"].as_array().expect("coefs").iter().filter(|c| c.as_f64() < Some(1.0 - 1e-6)).count();
    assert_eq!(value(samples(&m, "gradscope_job_clipped_steps_total", &id)[0]), clipped as f64);

    // The summaries of the measurements on their own schedules, at their latest (step 21).
    let spectral: Value = app.get(&format!("/api/v1/jobs/{id}/spectral")).await.json().await.expect("json");
    let latest: Vec<f64> = spectral["radius"]
        .as_array()
        .expect("radius")
        .iter()
        .map(|m| m.as_array().and_then(|v| v.last()).and_then(Value::as_f64).expect("a value"))
        .collect();
    assert_eq!(latest.len(), 4, "an LSTM layer's four gate blocks");
    let largest = latest.iter().copied().fold(0.0, f64::max);
    let gauge = value(samples(&m, "gradscope_job_spectral_radius_max", &id)[0]);
    assert!((gauge - largest).abs() <= 1e-6 * largest, "{gauge} vs the stored {largest}");
    let time: Value = app.get(&format!("/api/v1/jobs/{id}/time-profile")).await.json().await.expect("json");
    let ratio = time["first_last_ratio"].as_array().and_then(|r| r.last()).and_then(Value::as_f64).expect("ratio");
    let gauge = value(samples(&m, "gradscope_job_time_first_last_ratio", &id)[0]);
    assert!((gauge - ratio).abs() <= 1e-5 * ratio.abs(), "{gauge} vs the stored {ratio}");

    // Three layers, spread from the first to the last.
    let layers: Vec<&str> =
        samples(&m, "gradscope_layer_grad_norm", &id).iter().map(|s| s.labels["layer"].as_str()).collect();
    assert_eq!(layers.len(), 3, "{layers:?}");
    assert!(layers.contains(&"embed.weight") && layers.contains(&"head.bias"), "{layers:?}");

    // What the alert rules read: its one status series, when it last progressed and ended,
    // no issue in force once ended, no non-finite step and no dropped report.
    let status: Vec<(&str, f64)> =
        samples(&m, "gradscope_job_status", &id).iter().map(|s| (s.labels["status"].as_str(), value(s))).collect();
    assert_eq!(status, [("succeeded", 1.0)]);
    let at = |field: &str| {
        let time = chrono::DateTime::parse_from_rfc3339(done[field].as_str().expect(field)).expect(field);
        time.timestamp_micros() as f64 / 1e6
    };
    let progress = value(samples(&m, "gradscope_job_last_progress_timestamp_seconds", &id)[0]);
    let ended = value(samples(&m, "gradscope_job_ended_timestamp_seconds", &id)[0]);
    // The store's clock is read a moment apart from the metrics', hence a second's slack.
    assert!(at("started_at") - 1.0 <= progress && progress <= ended, "progress {progress}, ended {ended}, {done}");
    assert!((ended - at("finished_at")).abs() <= 1.0, "ended {ended}, {done}");
    let issues = samples(&m, "gradscope_job_diagnosis_issues", &id);
    let mut kinds: Vec<&str> = issues.iter().map(|s| s.labels["kind"].as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["dead", "exploding", "nonfinite", "vanishing"]);
    assert!(issues.iter().all(|s| value(s) == 0.0));
    assert_eq!(value(samples(&m, "gradscope_job_nonfinite_steps_total", &id)[0]), 0.0);
    assert_eq!(
        value(samples(&m, "gradscope_job_dropped_reports_total", &id)[0]),
        done["dropped_reports"].as_f64().expect("dropped")
    );

    let succeeded = m
        .samples
        .iter()
        .find(|s| s.metric == "gradscope_jobs" && s.labels.get("status").map(String::as_str) == Some("succeeded"));
    assert_eq!(succeeded.map(value), Some(1.0));
    // HTTP series are labelled by route, never by a raw path.
    let routes: Vec<&str> = m
        .samples
        .iter()
        .filter(|s| s.metric == "gradscope_http_requests_total")
        .map(|s| s.labels["route"].as_str())
        .collect();
    assert!(routes.contains(&"/api/v1/jobs/{id}"), "{routes:?}");
    assert!(routes.iter().all(|r| !r.contains(&id)), "{routes:?}");
    assert!(m.samples.iter().any(|s| s.metric == "process_resident_memory_bytes"));
    assert!(
        m.text.lines().any(|l| l.starts_with("# HELP gradscope_layer_grad_norm ") && l.contains("prometheus_layers"))
    );

    let delete = app.client.delete(app.url(&format!("/api/v1/jobs/{id}"))).send().await.expect("delete");
    assert_eq!(delete.status(), 204);
    let after = scrape(&app).await;
    let left: Vec<&String> =
        after.samples.iter().filter(|s| s.labels.get("job") == Some(&id)).map(|s| &s.metric).collect();
    assert!(left.is_empty(), "series left after delete: {left:?}");
}

#[tokio::test]
async fn made_up_methods_and_paths_make_no_series() {
    let app = spawn_app().await;
    // Label values anyone could choose: methods and paths that no route knows.
    let methods = ["ZZZ2", "QWERTY", "PROPFIND", "M-0193"];
    let paths = ["/healthz", "/api/v1/jobs", "/api/v1/zz-nothing-here", "/zz-static-nothing", "/metrics", "/"];
    for method in methods {
        for path in paths {
            let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            app.client.request(method, app.url(path)).send().await.expect("request");
        }
    }
    for path in ["/zz-a", "/zz-b/c", "/api/v1/zz-d", "/api/v1/jobs/zz-e/zz-f", "/index.html", "/app.js"] {
        app.get(path).await;
        app.client.post(app.url(path)).send().await.expect("request");
    }

    let m = scrape(&app).await;
    let http: Vec<&Sample> = m.samples.iter().filter(|s| s.metric.starts_with("gradscope_http_")).collect();
    let known_methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"];
    for sample in &http {
        let method = sample.labels.get("method").expect("method label");
        assert!(known_methods.contains(&method.as_str()), "method label {method:?} in {sample:?}");
        let route = sample.labels.get("route").expect("route label");
        assert!(!route.contains("zz") && route != "/" && route != "/index.html" && route != "/app.js", "{sample:?}");
    }
    let other_healthz = http.iter().find(|s| {
        s.metric == "gradscope_http_requests_total"
            && s.labels["method"] == "OTHER"
            && s.labels["route"] == "/healthz"
            && s.labels["status"] == "405"
    });
    assert_eq!(other_healthz.map(|s| s.value), Some(4.0), "the four made-up methods share one series");
    assert!(!m.text.contains("ZZZ2") && !m.text.contains("zz-"), "a made-up label value was exported");
}
