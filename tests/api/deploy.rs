//! The shipped stack files: valid, and the Grafana dashboard asks only for what the
//! service exports.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::{parse_exposition, spawn_app, tiny_lstm_spec};

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn check(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .current_dir(repo(""))
        .output()
        .unwrap_or_else(|err| panic!("{program} is installed (make test installs it): {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn compose_and_prometheus_configs_are_valid() {
    check("docker-compose", &["-f", "docker-compose.yml", "config", "-q"]);
    check("promtool", &["check", "config", "deploy/prometheus/prometheus.yml"]);
    check("amtool", &["check-config", "deploy/alertmanager/alertmanager.yml"]);
}

/// The standard output of a command that must succeed.
fn output(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(repo(""))
        .output()
        .unwrap_or_else(|err| panic!("{program} is installed (make test installs it): {err}"));
    assert!(output.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// The lines of service `name` in `docker-compose config`'s resolved file (two-space
/// indented service keys, their contents deeper).
fn service<'a>(config: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("  {name}:");
    let mut lines = config.lines().skip_while(|line| *line != header);
    assert!(lines.next().is_some(), "no service {name} in {config}");
    lines.take_while(|line| line.starts_with("    ")).map(str::trim).collect()
}

#[test]
fn compose_runs_two_nodes_on_postgres_and_nats_behind_one_prometheus() {
    let services = output("docker-compose", &["-f", "docker-compose.yml", "config", "--services"]);
    let services: BTreeSet<&str> = services.lines().collect();
    for name in ["gradscope", "gradscope-2", "postgres", "nats", "prometheus", "alertmanager", "grafana"] {
        assert!(services.contains(name), "no service {name}: {services:?}");
    }
    let config = output("docker-compose", &["-f", "docker-compose.yml", "config"]);
    let postgres = service(&config, "postgres");
    for line in ["POSTGRES_USER: gradscope", "POSTGRES_PASSWORD: gradscope", "POSTGRES_DB: gradscope"] {
        assert!(postgres.contains(&line), "postgres lacks {line}: {postgres:?}");
    }
    assert!(service(&config, "nats").contains(&"- --jetstream"), "NATS runs with JetStream");
    for node in ["gradscope", "gradscope-2"] {
        let lines = service(&config, node);
        for line in [
            "GRADSCOPE_DATABASE_URL: postgres://gradscope:gradscope@postgres:5432/gradscope",
            "GRADSCOPE_NATS_URL: nats://nats:4222",
            "- gradscope-data:/data:rw",
        ] {
            assert!(lines.contains(&line), "{node} lacks {line}: {lines:?}");
        }
    }
    // One Prometheus scrapes both nodes.
    let prometheus = std::fs::read_to_string(repo("deploy/prometheus/prometheus.yml")).expect("read");
    assert!(prometheus.contains(r#"targets: ["gradscope:8080", "gradscope-2:8080"]"#), "{prometheus}");
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    check("promtool", &["check", "rules", "deploy/prometheus/alerts.yml"]);
    check("promtool", &["test", "rules", "deploy/prometheus/alerts.test.yml"]);
}

/// Every `expr` in a Grafana dashboard, panels and template queries alike.
fn expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => expressions(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_grafana_dashboard_names_only_exported_metrics() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("deploy/grafana/dashboards/gradscope.json")).expect("read"))
            .expect("dashboard JSON");
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for (at, _) in expr.match_indices("gradscope_") {
            let name: String = expr[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            used.insert(name);
        }
    }

    // A job that produces every kind of series: steps, clipping, events, HTTP traffic.
    let app = spawn_app().await;
    let mut spec = tiny_lstm_spec(20, 0.25);
    spec["monitor"] = json!({"summary_every": 10});
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    app.wait_finished(&id).await;
    let text = app.get("/metrics").await.text().await.expect("metrics");
    let exported: BTreeSet<String> = parse_exposition(&text).into_iter().map(|s| s.metric).collect();
    for name in &used {
        assert!(exported.contains(name), "the dashboard queries {name}, which the service does not export");
    }
    for must in ["gradscope_layer_grad_norm", "gradscope_job_grad_norm", "gradscope_job_loss", "gradscope_ws_clients"] {
        assert!(used.contains(must), "the dashboard should show {must}");
    }
}
