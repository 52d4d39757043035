//! End to end with a real Prometheus: it scrapes the service every second while a job
//! trains, and its query API returns the job's series with the right values; with the
//! shipped alert rules loaded, a diverging job's alert fires and a healthy job's never does.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{free_port, spawn_app, tiny_lstm_spec};

/// Kills Prometheus when the test ends, however it ends. Its scrape config keeps the
/// service's own `job` label (the job id) with `honor_labels`, as the shipped one does.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Prometheus scraping `target` every second and, with `rules`, evaluating those
/// rules every second.
fn start_prometheus(dir: &std::path::Path, target: &str, rules: Option<&std::path::Path>) -> Prometheus {
    let config = dir.join("prometheus.yml");
    let rule_files = rules.map_or(String::new(), |path| format!("rule_files:\n  - '{}'\n", path.display()));
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rule_files}scrape_configs:\n  - job_name: gradscope\n    honor_labels: true\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("config");
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (make test installs Debian's prometheus package)");
    Prometheus { child, url: format!("http://127.0.0.1:{port}") }
}

/// Runs an instant query until `done` accepts its result vector.
async fn query_until(prom: &Prometheus, query: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        let answer = client.get(format!("{}/api/v1/query", prom.url)).query(&[("query", query)]).send().await;
        if let Ok(answer) = answer
            && let Ok(body) = answer.json::<Value>().await
            && let Some(result) = body["data"]["result"].as_array()
            && done(result)
        {
            return result.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(90), "Prometheus never answered {query} as expected");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn sample_value(series: &Value) -> f64 {
    series["value"][1].as_str().expect("value string").parse().expect("number")
}

#[tokio::test]
async fn prometheus_scrapes_job_and_layer_series() {
    let app = spawn_app().await;
    let dir = tempfile::TempDir::new().expect("temp dir");
    let prom = start_prometheus(dir.path(), app.address.trim_start_matches("http://"), None);

    let steps = 1500;
    let mut spec = tiny_lstm_spec(steps, 1.0);
    spec["monitor"] = json!({"prometheus_layers": 4, "histogram": false});
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    // Scraped while it trains...
    query_until(&prom, &format!("gradscope_job_steps_total{{job=\"{id}\"}}"), |r| {
        r.len() == 1 && sample_value(&r[0]) > 0.0
    })
    .await;
    let done = app.wait_finished(&id).await;
    assert_eq!(done["status"], "succeeded");

    // ...and after it ends, the last scrape holds its final numbers.
    let steps_series = query_until(&prom, &format!("gradscope_job_steps_total{{job=\"{id}\"}}"), |r| {
        r.len() == 1 && sample_value(&r[0]) == steps as f64
    })
    .await;
    assert_eq!(steps_series[0]["metric"]["job"], id.as_str());

    let last: Value = app
        .get(&format!("/api/v1/jobs/{id}/layer-stats?stat=grad_norm&from={steps}"))
        .await
        .json()
        .await
        .expect("json");
    let expected: Vec<(String, f64)> = last["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| (l["name"].as_str().expect("name").to_owned(), l["grad_norm"][0].as_f64().expect("norm")))
        .collect();
    let layers = query_until(&prom, &format!("gradscope_layer_grad_norm{{job=\"{id}\"}}"), |r| {
        r.len() == 4
            && r.iter().all(|s| {
                let name = s["metric"]["layer"].as_str().unwrap_or_default();
                expected.iter().any(|(n, v)| n == name && (sample_value(s) - v).abs() <= 1e-6 * v.abs())
            })
    })
    .await;
    let names: Vec<&str> = layers.iter().map(|s| s["metric"]["layer"].as_str().expect("layer")).collect();
    assert!(names.contains(&"embed.weight") && names.contains(&"head.bias"), "{names:?}");
}

/// The shipped rules (deploy/prometheus/alerts.yml) with every `for:` cut to one second,
/// so that the test sees within seconds what a team would see after minutes.
fn quick_rules(dir: &std::path::Path) -> std::path::PathBuf {
    let shipped =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml"))
            .expect("the shipped rules");
    let mut cut = 0;
    let quick: Vec<String> = shipped
        .lines()
        .map(|line| {
            let body = line.trim_start();
            if body.starts_with("for:") {
                cut += 1;
                format!("{}for: 1s", &line[..line.len() - body.len()])
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert!(cut >= 3, "the rules have `for:` windows to cut: {cut}");
    let path = dir.join("alerts.yml");
    std::fs::write(&path, quick.join("\n") + "\n").expect("rules");
    path
}

/// Prometheus's active alerts (pending and firing), until `done` accepts them.
async fn alerts_until(prom: &Prometheus, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    loop {
        if let Ok(answer) = client.get(format!("{}/api/v1/alerts", prom.url)).send().await
            && let Ok(body) = answer.json::<Value>().await
            && let Some(alerts) = body["data"]["alerts"].as_array()
            && done(alerts)
        {
            return alerts.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(90), "Prometheus's alerts never became as expected");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn the_shipped_rules_fire_for_a_diverging_job_and_not_for_a_healthy_one() {
    let app = spawn_app().await;
    let dir = tempfile::TempDir::new().expect("temp dir");
    let rules = quick_rules(dir.path());
    let prom = start_prometheus(dir.path(), app.address.trim_start_matches("http://"), Some(&rules));
    // Prometheus is up and scraping before the jobs start, so it sees them run.
    query_until(&prom, "up{job=\"gradscope\"}", |r| r.len() == 1 && sample_value(&r[0]) == 1.0).await;

    // A deep ReLU MLP with huge weights and a huge step size overflows within steps and,
    // with `on_nonfinite: stop`, ends diverged.
    let storm = json!({
        "name": "storm", "steps": 30, "batch_size": 16, "device": "cpu",
        "task": {"kind": "classification", "features": 8, "classes": 4},
        "model": {"kind": "mlp", "layers": 6, "hidden": 32, "activation": "relu", "init_scale": 100.0},
        "optimizer": {"kind": "sgd", "lr": 10.0},
        "policy": {"grad": [], "on_nonfinite": "stop"},
    });
    let diverging = app.submit(&storm).await["id"].as_str().expect("id").to_owned();
    assert_eq!(app.wait_finished(&diverging).await["status"], "diverged");

    let mut spec = tiny_lstm_spec(600, 1.0);
    spec["name"] = json!("calm");
    let healthy = app.submit(&spec).await["id"].as_str().expect("id").to_owned();

    let of = |alerts: &[Value], name: &str, job: &str| -> Option<Value> {
        alerts.iter().find(|a| a["labels"]["alertname"] == name && a["labels"]["job"] == job).cloned()
    };
    let alerts = alerts_until(&prom, |alerts| {
        of(alerts, "GradscopeJobDiverged", &diverging).is_some_and(|a| a["state"] == "firing")
    })
    .await;
    let alert = of(&alerts, "GradscopeJobDiverged", &diverging).expect("alert");
    assert_eq!(alert["labels"]["name"], "storm", "{alert}");
    assert_eq!(alert["labels"]["model"], "mlp", "{alert}");
    assert_eq!(alert["labels"]["severity"], "page", "{alert}");
    assert_eq!(alert["annotations"]["summary"], format!("gradscope job storm ({diverging}) diverged"));
    assert!(alert["annotations"]["runbook"].as_str().expect("runbook").contains(&format!("/api/v1/jobs/{diverging}")));

    // The healthy job trains to its end, scraped all along, and no rule ever held for it:
    // Prometheus records every pending or firing alert in its `ALERTS` series.
    assert_eq!(app.wait_finished(&healthy).await["status"], "succeeded");
    query_until(&prom, &format!("gradscope_job_status{{job=\"{healthy}\",status=\"succeeded\"}}"), |r| r.len() == 1)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = query_until(&prom, &format!("count_over_time(ALERTS{{job=\"{healthy}\"}}[10m])"), |_| true).await;
    assert!(seen.is_empty(), "alerts for the healthy job: {seen:?}");
    let fired =
        query_until(&prom, &format!("ALERTS{{job=\"{diverging}\",alertstate=\"firing\"}}"), |r| !r.is_empty()).await;
    assert!(fired.iter().any(|s| s["metric"]["alertname"] == "GradscopeJobDiverged"), "{fired:?}");
    let alerts = alerts_until(&prom, |_| true).await;
    assert!(alerts.iter().all(|a| a["labels"]["job"] != healthy.as_str()), "{alerts:?}");
}
