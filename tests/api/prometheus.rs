//! End to end with a real Prometheus: it scrapes the service every second while a job
//! trains, and its query API returns the job's series with the right values.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{spawn_app, tiny_lstm_spec};

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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn start_prometheus(dir: &std::path::Path, target: &str) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: gradscope\n    honor_labels: true\n    static_configs:\n      - targets: ['{target}']\n"
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
    let prom = start_prometheus(dir.path(), app.address.trim_start_matches("http://"));

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
