//! Starting and stopping the real application, and small request helpers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gradscope::Application;
use gradscope::config::ServeConfig;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for a job to reach a status before failing.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(180);

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// Holds the database and the data folder; survives a restart through [`TestApp::stop`].
    pub dir: TempDir,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<anyhow::Result<()>>,
}

pub fn database_url(dir: &TempDir) -> String {
    format!("sqlite://{}", dir.path().join("gradscope.db").display())
}

/// Starts the application on port 0 with a fresh temporary database.
pub async fn spawn_app() -> TestApp {
    spawn_app_in(TempDir::new().expect("temp dir")).await
}

/// Starts the application on the database and data folder in `dir`.
pub async fn spawn_app_in(dir: TempDir) -> TestApp {
    let mut config =
        ServeConfig::new("127.0.0.1:0".parse().expect("address"), &database_url(&dir), dir.path().join("data"));
    config.torch_threads = Some(1);
    config.static_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("static");
    let app = Application::build(config).await.expect("application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (shutdown, signal) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = signal.await;
    }));
    TestApp { address, client: reqwest::Client::new(), dir, shutdown, server }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Shuts the service down as SIGTERM would and hands back its folder.
    pub async fn stop(self) -> TempDir {
        let _ = self.shutdown.send(());
        self.server.await.expect("server task").expect("server ran cleanly");
        self.dir
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(body).send().await.expect("request")
    }

    /// Submits `spec` and returns the created job.
    pub async fn submit(&self, spec: &Value) -> Value {
        let response = self.post_json("/api/v1/jobs", spec).await;
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert_eq!(status, 201, "submit failed: {body}");
        body
    }

    pub async fn job(&self, id: &str) -> Value {
        let response = self.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("json")
    }

    /// Polls the job until `done` holds for it.
    pub async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let job = self.job(id).await;
            if done(&job) {
                return job;
            }
            assert!(start.elapsed() < JOB_TIMEOUT, "job {id} never became {what}: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the job until it has finished, whatever the outcome.
    pub async fn wait_finished(&self, id: &str) -> Value {
        self.wait_for(id, "finished", |job| !matches!(job["status"].as_str(), Some("queued" | "running"))).await
    }
}

/// A char-LM LSTM job that trains in a few seconds on one CPU thread.
pub fn tiny_lstm_spec(steps: u64, max_norm: f64) -> Value {
    json!({
        "name": "tiny-lstm",
        "seed": 7,
        "steps": steps,
        "batch_size": 16,
        "device": "cpu",
        "task": {"kind": "char_lm", "corpus": "builtin:tiny", "seq_len": 32},
        "model": {"kind": "lstm", "layers": 1, "hidden": 32},
        "optimizer": {"kind": "adamw", "lr": 0.01},
        "policy": {"grad": [{"kind": "clip_norm", "max_norm": max_norm}]},
    })
}

/// Column `name` of a `/steps` answer as floats (nulls fail the test).
pub fn column(steps: &Value, name: &str) -> Vec<f64> {
    steps[name]
        .as_array()
        .unwrap_or_else(|| panic!("no column {name}"))
        .iter()
        .map(|v| v.as_f64().unwrap_or_else(|| panic!("{name} has a non-number: {v}")))
        .collect()
}

pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}
