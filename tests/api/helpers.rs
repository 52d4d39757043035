//! Starting and stopping the real application, and small request helpers.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gradscope::Application;
use gradscope::config::ServeConfig;
use gradscope::store::scratch::ScratchDatabase;
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
    /// The PostgreSQL database the service runs on, if not a SQLite file in `dir`: dropped
    /// with the app.
    _postgres: Option<ScratchDatabase>,
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
    spawn_app_with(dir, |_| {}).await
}

/// Starts the application in `dir` with settings changed by `configure`.
pub async fn spawn_app_with(dir: TempDir, configure: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let url = database_url(&dir);
    spawn_app_on(dir, &url, None, configure).await
}

/// Starts the application on a fresh PostgreSQL database (the test server, see
/// [`ScratchDatabase`]), its data folder in a temporary folder.
pub async fn spawn_app_on_postgres() -> TestApp {
    let database = ScratchDatabase::create().await.expect("a scratch PostgreSQL database");
    let url = database.url().to_owned();
    spawn_app_on(TempDir::new().expect("temp dir"), &url, Some(database), |_| {}).await
}

/// Starts the application on `database` (a scratch PostgreSQL database, dropped with the
/// app) with settings changed by `configure`, its data folder in a temporary folder.
pub async fn spawn_app_on_database(database: ScratchDatabase, configure: impl FnOnce(&mut ServeConfig)) -> TestApp {
    let url = database.url().to_owned();
    spawn_app_on(TempDir::new().expect("temp dir"), &url, Some(database), configure).await
}

/// Starts the application on the database at `url`, its data folder in `dir`.
async fn spawn_app_on(
    dir: TempDir,
    url: &str,
    postgres: Option<ScratchDatabase>,
    configure: impl FnOnce(&mut ServeConfig),
) -> TestApp {
    let mut config = ServeConfig::new("127.0.0.1:0".parse().expect("address"), url, dir.path().join("data"));
    config.torch_threads = Some(1);
    // Jobs train in workers of the real binary (this test program cannot be one).
    config.worker_binary = Some(PathBuf::from(env!("CARGO_BIN_EXE_gradscope")));
    configure(&mut config);
    let app = Application::build(config).await.expect("application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (shutdown, signal) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = signal.await;
    }));
    TestApp { address, client: reqwest::Client::new(), dir, _postgres: postgres, shutdown, server }
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

    /// Uploads `body` as a corpus, the way clients must: `application/octet-stream`.
    pub async fn upload_corpus(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/corpora"))
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .expect("upload")
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

    /// Every step job `id` recorded (`/steps`, unthinned).
    pub async fn job_steps(&self, id: &str) -> Value {
        let response = self.get(&format!("/api/v1/jobs/{id}/steps?max_points=100000")).await;
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

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub metric: String,
    pub labels: std::collections::HashMap<String, String>,
    pub value: f64,
}

/// Reads the samples of a Prometheus text exposition (label values may hold any
/// character, braces included).
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (metric, rest) = match line.find('{') {
            Some(open) => (&line[..open], &line[open + 1..]),
            None => {
                let (metric, value) = line.split_once(' ').expect("metric and value");
                samples.push(Sample {
                    metric: metric.to_owned(),
                    labels: Default::default(),
                    value: parse_value(value),
                });
                continue;
            }
        };
        let mut labels = std::collections::HashMap::new();
        let mut chars = rest.char_indices().peekable();
        let end;
        loop {
            let name: String = chars.by_ref().take_while(|(_, c)| *c != '=').map(|(_, c)| c).collect();
            let name = name.trim_start_matches(',').trim().to_owned();
            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "quoted label value in {line}");
            let mut value = String::new();
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => value.push(chars.next().map_or('\\', |(_, c)| if c == 'n' { '\n' } else { c })),
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.insert(name, value);
            match chars.next() {
                Some((_, ',')) if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    end = chars.next().expect("brace").0;
                    break;
                }
                Some((_, ',')) => {}
                Some((i, '}')) => {
                    end = i;
                    break;
                }
                other => panic!("unexpected {other:?} in {line}"),
            }
        }
        let value = rest[end + 1..].trim().split(' ').next().expect("value");
        samples.push(Sample { metric: metric.to_owned(), labels, value: parse_value(value) });
    }
    samples
}

fn parse_value(s: &str) -> f64 {
    match s.trim() {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().unwrap_or_else(|_| panic!("bad sample value {v:?}")),
    }
}

/// The processes whose parent is `parent`, from `/proc`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let entries = std::fs::read_dir("/proc").expect("/proc");
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_field(pid, 1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(parent))
        .collect()
}

/// Field `n` (0 = state) after the command name of `/proc/PID/stat`.
pub fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(n).map(str::to_owned)
}

/// Whether `pid` still runs (a zombie waiting to be reaped does not).
pub fn alive(pid: u32) -> bool {
    stat_field(pid, 0).is_some_and(|state| state != "Z")
}

/// A loopback port nothing listens on (as of the call).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A `gradscope serve` process of the real binary on a loopback port, killed (and reaped)
/// when dropped.
pub struct Served {
    pub child: Child,
    pub url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `gradscope serve --addr 127.0.0.1:PORT --torch-threads 1` on a free port, with
/// what `configure` adds (arguments, environment, working folder; its output goes nowhere
/// unless `configure` says otherwise; `GRADSCOPE_LOG` is unset), and waits until it
/// answers `/readyz`, failing after `ready_within`.
pub async fn serve(configure: impl FnOnce(&mut Command), ready_within: Duration) -> Served {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_gradscope"));
    command
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--torch-threads", "1"])
        .env_remove("GRADSCOPE_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    configure(&mut command);
    let served = Served { child: command.spawn().expect("gradscope starts"), url: format!("http://127.0.0.1:{port}") };
    let start = Instant::now();
    while reqwest::get(format!("{}/readyz", served.url)).await.map(|r| r.status().is_success()).ok() != Some(true) {
        assert!(start.elapsed() < ready_within, "the server never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    served
}
