//! `cargo bench --bench stream -- [ARGS]`: one job's step rate alone and with many
//! WebSocket subscribers, the messages they got, and how long each step took from
//! publication to a client (step messages carry their publication time). Server, training
//! and clients share this process and machine, as a busy dashboard would share a small
//! server. Run without `--bench` (as `cargo test --all-targets` does), it streams a short
//! job to two clients, to show that it works.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use gradscope::Application;
use gradscope::config::ServeConfig;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Parser)]
#[command(name = "stream", about = "Step rate and delivery latency of one job with many WebSocket subscribers")]
struct StreamArgs {
    /// WebSocket subscribers of the job.
    #[arg(long, default_value_t = 500)]
    pub clients: usize,
    /// Training steps of each run.
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// LSTM width (bigger means slower steps and bigger messages).
    #[arg(long, default_value_t = 64)]
    pub hidden: i64,
    /// LibTorch CPU threads.
    #[arg(long, default_value_t = 1)]
    pub torch_threads: i32,
    /// Train in the server's process instead of a worker process, to measure what the
    /// process boundary costs.
    #[arg(long)]
    pub in_process: bool,
    /// Given by `cargo bench`; without it the benchmark only shows that it runs.
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    steps: u64,
    lagged: u64,
    latencies_ms: Vec<f64>,
}

fn now_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test` passes nothing, and gets a short job.
    let args = if std::env::args().any(|a| a == "--bench") {
        StreamArgs::parse()
    } else {
        StreamArgs::parse_from(["stream", "--clients", "2", "--steps", "20", "--hidden", "8"])
    };
    run(&args).await
}

async fn run(args: &StreamArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("gradscope-bench-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let mut config = ServeConfig::new(
        "127.0.0.1:0".parse()?,
        &format!("sqlite://{}", dir.join("bench.db").display()),
        dir.join("data"),
    );
    config.torch_threads = Some(args.torch_threads);
    config.in_process = args.in_process;
    config.worker_binary = Some(env!("CARGO_BIN_EXE_gradscope").into());
    config.ws_max_per_job = args.clients + 10;
    config.ws_max_total = args.clients + 10;
    let app = Application::build(config).await?;
    let base = format!("127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let spec = json!({
        "name": "stream-bench", "steps": args.steps, "batch_size": 16, "device": "cpu",
        "task": {"kind": "char_lm", "seq_len": 32},
        "model": {"kind": "lstm", "layers": 1, "hidden": args.hidden},
        "policy": {"grad": [{"kind": "clip_norm", "max_norm": 1.0}]},
        "monitor": {"histogram": true},
    });

    println!(
        "bench stream: {} steps of a 1×{} LSTM, {} torch thread(s), {}",
        args.steps,
        args.hidden,
        args.torch_threads,
        if args.in_process { "in the server's process" } else { "in a worker process" }
    );
    let blocker = json!({
        "name": "blocker", "steps": 10_000_000, "batch_size": 1, "device": "cpu",
        "task": {"kind": "char_lm", "seq_len": 2}, "model": {"kind": "lstm", "layers": 1, "hidden": 1},
        "monitor": {"every": 0},
    });
    let alone = train(&http, &base, &spec, 0, &blocker).await?;
    let with = train(&http, &base, &spec, args.clients, &blocker).await?;

    let (rate_alone, _) = alone;
    let (rate_with, seen) = with;
    let expected = args.steps * args.clients as u64;
    let delivered: u64 = seen.iter().map(|s| s.steps).sum();
    let lagged: u64 = seen.iter().map(|s| s.lagged).sum();
    let mut latencies: Vec<f64> = seen.into_iter().flat_map(|s| s.latencies_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
    println!("{:<40} {:>12.1}", "steps/s, no subscribers", rate_alone);
    println!(
        "{:<40} {:>12.1}  ({:+.1}%)",
        format!("steps/s, {} subscribers", args.clients),
        rate_with,
        100.0 * (rate_with / rate_alone - 1.0)
    );
    println!(
        "{:<40} {:>12}  of {expected} ({:.2}%)",
        "step messages delivered",
        delivered,
        100.0 * delivered as f64 / expected as f64
    );
    println!("{:<40} {:>12}", "step messages skipped by lag", lagged);
    println!("{:<40} {:>12.2}", "delivery latency p50 (ms)", pct(0.50));
    println!("{:<40} {:>12.2}", "delivery latency p99 (ms)", pct(0.99));
    println!("{:<40} {:>12.2}", "delivery latency max (ms)", pct(1.0));

    let _ = stop.send(());
    server.await??;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Trains one job with `clients` subscribers; returns its step rate and what they saw.
/// The job waits behind `blocker` until every client is connected, so all of them see it
/// from its first step live.
async fn train(
    http: &reqwest::Client,
    base: &str,
    spec: &Value,
    clients: usize,
    blocker: &Value,
) -> anyhow::Result<(f64, Vec<Seen>)> {
    let submit = |spec: Value| async move {
        let job: Value = http.post(format!("http://{base}/api/v1/jobs")).json(&spec).send().await?.json().await?;
        job["id"].as_str().map(str::to_owned).context("no job id")
    };
    let blocker = submit(blocker.clone()).await?;
    let id = submit(spec.clone()).await?;
    let mut readers = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{base}/api/v1/jobs/{id}/stream")).await?;
        readers.push(tokio::spawn(read(socket)));
    }
    http.post(format!("http://{base}/api/v1/jobs/{blocker}/cancel")).send().await?;
    let job = loop {
        let job: Value = http.get(format!("http://{base}/api/v1/jobs/{id}")).send().await?.json().await?;
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    anyhow::ensure!(job["status"] == "succeeded", "the benchmark job ended {}: {}", job["status"], job["error"]);
    let seconds = |field: &str| -> anyhow::Result<f64> {
        let at = job[field].as_str().context("timestamp")?;
        Ok(chrono::DateTime::parse_from_rfc3339(at)?.timestamp_micros() as f64 / 1e6)
    };
    let rate = job["step"].as_f64().unwrap_or(0.0) / (seconds("finished_at")? - seconds("started_at")?);
    let mut seen = Vec::with_capacity(clients);
    for reader in readers {
        seen.push(reader.await?);
    }
    Ok((rate, seen))
}

/// The number that follows `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = &text[text.find(key)? + key.len()..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

async fn read(
    mut socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Seen {
    let mut seen = Seen::default();
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else { continue };
        let received = now_seconds();
        // Steps are read as a dashboard would skim them, without parsing their layers:
        // the clients share this machine with the server being measured.
        if text.starts_with(r#"{"type":"step""#) {
            seen.steps += 1;
            if let Some(published) = number_after(&text, r#""time":"#) {
                seen.latencies_ms.push((received - published) * 1e3);
            }
            continue;
        }
        let Ok(value) = serde_json::from_str::<Value>(&text) else { continue };
        match value["type"].as_str() {
            Some("lagged") => seen.lagged += value["missed"].as_u64().unwrap_or(0),
            Some("status") => break,
            _ => {}
        }
    }
    seen
}
