//! `cargo bench --bench stream -- [ARGS]`: one job's step rate alone and with many
//! WebSocket subscribers, the messages they got, and how long each step took from
//! publication to a client (step messages carry their publication time), besides the
//! server's own part of it (`gradscope_stream_delay_seconds`: publication to the write to
//! the socket), which a client on another machine would see plus the network.
//!
//! The server (and, with `--in-process`, the training) runs in this process; the clients
//! run in a second process, this program started again with `--connect`, at a low CPU
//! priority (`nice -n 19` by default) to stand in for dashboards on other machines: it
//! gets the cores only when the server and the job leave them idle, so the step rate is
//! what the job pays for serving them (with `SCHED_IDLE` by default, which says "only when
//! idle" more strictly than a niceness does). Their latency is mostly their own wait for a core,
//! which a dashboard on its own machine does not have; so a few of the subscribers
//! (`--probes`) run in a third process at the server's priority, and their latency is what
//! such a dashboard sees, on the same load. Each round runs the job alone and once per `--modes`
//! (plain text frames, gzip'd batches), in an order that turns from round to round, and
//! the figures are min / median / max.
//! Run without `--bench` (as `cargo test --all-targets` does), it streams a short job to
//! two clients once, to show that it works.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use gradscope::Application;
use gradscope::config::ServeConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[path = "common/proc_stat.rs"]
mod proc_stat;
use proc_stat::{own_stat, stat_cpu, stat_field};

#[derive(Debug, Clone, Parser)]
#[command(name = "stream", about = "Step rate and delivery latency of one job with many WebSocket subscribers")]
struct StreamArgs {
    /// WebSocket subscribers of the job.
    #[arg(long, default_value_t = 500)]
    pub clients: usize,
    /// Training steps of each run.
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Rounds; each trains the job alone and with the subscribers.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
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
    /// The niceness of the clients' process (19: the lowest priority; 0: the server's).
    #[arg(long, default_value_t = 19)]
    pub client_nice: i32,
    /// Run the clients' process under Linux's `SCHED_IDLE` policy (`chrt --idle`): it runs
    /// only on a core nothing else wants and never preempts, which a niceness alone does
    /// not promise (a nice 19 thread still takes about 1.5 % of a busy core and may preempt
    /// on waking). `--client-idle false` leaves it at its niceness.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub client_idle: bool,
    /// Of the subscribers, how many run in a process of their own at the server's priority
    /// to measure the latency a dashboard with a core of its own would see (0: none).
    #[arg(long, default_value_t = 5)]
    pub probes: usize,
    /// The server's `--stream-nice`: how much nicer its stream threads are (0: not at all).
    #[arg(long, default_value_t = gradscope::config::DEFAULT_STREAM_NICE)]
    pub stream_nice: i32,
    /// How the subscribers read the stream, one run per round each: `plain` (a text frame
    /// a message) and `gzip` (`compress=gzip`: gzip'd batches, built once for all of them).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "plain,gzip")]
    pub modes: Vec<Mode>,
    /// The `gradscope` binary worker processes run; by default the one built beside this
    /// benchmark.
    #[arg(long, default_value = env!("CARGO_BIN_EXE_gradscope"))]
    pub worker_binary: std::path::PathBuf,
    /// Internal: be the clients' process, reading this stream URL with `--clients` sockets.
    #[arg(long, hide = true)]
    pub connect: Option<String>,
    /// Given by `cargo bench`; without it the benchmark only shows that it runs.
    #[arg(long, hide = true)]
    pub bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Plain,
    Gzip,
}

impl Mode {
    fn query(self) -> &'static str {
        match self {
            Self::Plain => "",
            Self::Gzip => "?compress=gzip",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Gzip => "gzip",
        }
    }
}

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    steps: u64,
    lagged: u64,
    latencies_ms: Vec<f64>,
    /// Payload bytes of the frames it read.
    bytes: u64,
}

/// What the clients' process reports, one JSON line on its standard output.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ClientsReport {
    /// Step messages received, by every client together.
    delivered: u64,
    /// Step messages the server said were skipped (`lagged`).
    lagged: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// CPU seconds the clients' process used.
    cpu_seconds: f64,
    /// Payload bytes a client read, on average.
    bytes_per_client: f64,
}

/// One run of the job.
#[derive(Debug)]
struct Run {
    steps_per_second: f64,
    /// CPU seconds of this process (the server; with `--in-process`, the training too)
    /// while the job ran.
    server_cpu: f64,
    /// Minor page faults of this process while the job ran.
    server_faults: f64,
    /// This process's busiest threads while the job ran, by name, with their CPU seconds.
    busiest: Vec<(String, f64)>,
    clients: Option<ClientsReport>,
    /// What the probes saw (`--probes`).
    probes: Option<ClientsReport>,
    /// The server's side of the delay: p50 and p99 of `gradscope_stream_delay_seconds`
    /// over this run (publication to the write to a socket, oldest message of each
    /// write), in milliseconds, read off its buckets as Prometheus's `histogram_quantile`
    /// would.
    written_ms: Option<(f64, f64)>,
    /// Writes to clients' sockets over this run, per client: the delay histogram's
    /// observations (one a write). More writes of fewer messages each would show here.
    writes_per_client: f64,
}

impl Run {
    /// Step messages received by every subscriber, probes included.
    fn delivered(&self) -> u64 {
        self.clients.iter().chain(&self.probes).map(|c| c.delivered).sum()
    }

    /// Step messages the server said were skipped, probes included.
    fn lagged(&self) -> u64 {
        self.clients.iter().chain(&self.probes).map(|c| c.lagged).sum()
    }
}

/// The cumulative buckets `(upper bound, count)` of the stream delay histogram.
async fn delay_buckets(http: &reqwest::Client, base: &str) -> anyhow::Result<Vec<(f64, f64)>> {
    let text = http.get(format!("http://{base}/metrics")).send().await?.text().await?;
    let mut buckets = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("gradscope_stream_delay_seconds_bucket{le=\"") else { continue };
        let (le, count) = rest.split_once("\"} ").context("a bucket line")?;
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse()? };
        buckets.push((le, count.trim().parse()?));
    }
    Ok(buckets)
}

/// The observations between two readings of the same buckets (the `+Inf` bucket's).
fn observations(before: &[(f64, f64)], after: &[(f64, f64)]) -> f64 {
    let total = |buckets: &[(f64, f64)]| buckets.iter().find(|b| b.0.is_infinite()).map_or(0.0, |b| b.1);
    total(after) - total(before)
}

/// The `q` quantile of the observations between two readings of the same buckets, by
/// linear interpolation within the bucket it falls in (the last finite bound when it
/// falls in the overflow bucket); NaN without observations.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let counts: Vec<(f64, f64)> =
        after.iter().map(|&(le, n)| (le, n - before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1))).collect();
    let total = counts.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, n) in &counts {
        if n >= rank {
            if le.is_infinite() {
                return lower;
            }
            return lower + (le - lower) * (rank - below) / (n - below).max(f64::MIN_POSITIVE);
        }
        (lower, below) = (le, n);
    }
    lower
}

fn now_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test` passes nothing, and gets a short job.
    let raw: Vec<String> = std::env::args().collect();
    let args = if raw.iter().any(|a| a == "--bench" || a == "--connect") {
        StreamArgs::parse()
    } else {
        StreamArgs::parse_from([
            "stream",
            "--clients",
            "2",
            "--probes",
            "1",
            "--steps",
            "20",
            "--hidden",
            "8",
            "--rounds",
            "1",
        ])
    };
    if let Some(url) = &args.connect {
        // The clients: one thread, as light as a reader of this many sockets can be.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return runtime.block_on(clients(url, args.clients));
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(&args))
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
    config.stream_nice = args.stream_nice;
    config.worker_binary = Some(args.worker_binary.clone());
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
        "bench stream: {} steps of a 1×{} LSTM, {} torch thread(s), {}; {} subscribers in a separate \
         process at nice {}{} ({} of them probes at nice 0); stream threads at nice +{}; {} interleaved rounds",
        args.steps,
        args.hidden,
        args.torch_threads,
        if args.in_process { "in the server's process" } else { "in a worker process" },
        args.clients,
        args.client_nice,
        if args.client_idle { " under SCHED_IDLE" } else { "" },
        args.probes.min(args.clients),
        args.stream_nice,
        args.rounds,
    );
    // Each round: the job alone and once per mode, in an order that turns each round, so
    // drift on a shared machine hits every kind of run alike.
    let kinds: Vec<Option<Mode>> = std::iter::once(None).chain(args.modes.iter().copied().map(Some)).collect();
    let mut runs: Vec<Vec<Run>> = kinds.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for k in 0..kinds.len() {
            let at = (k + round) % kinds.len();
            let mode = kinds[at];
            let run = train(args, &http, &base, &spec, mode).await?;
            let line = match (&run.clients, mode) {
                (Some(c), Some(mode)) => format!(
                    "{} {} subscribers {:>7.1} steps/s, server {:>5.2} CPU-s, {:.0} page faults, {:.0} writes a client, clients {:>5.2} CPU-s, {:.0} KB each; \
                     delivered {}/{}, lagged {}, latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
                     probes' latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
                     server's write delay p50 {:.1} ms, p99 {:.1} ms; busiest threads {}",
                    args.clients,
                    mode.name(),
                    run.steps_per_second,
                    run.server_cpu,
                    run.server_faults,
                    run.writes_per_client,
                    c.cpu_seconds,
                    c.bytes_per_client / 1e3,
                    run.delivered(),
                    args.steps * args.clients as u64,
                    run.lagged(),
                    c.p50_ms,
                    c.p99_ms,
                    c.max_ms,
                    run.probes.as_ref().map_or(f64::NAN, |p| p.p50_ms),
                    run.probes.as_ref().map_or(f64::NAN, |p| p.p99_ms),
                    run.probes.as_ref().map_or(f64::NAN, |p| p.max_ms),
                    run.written_ms.map_or(f64::NAN, |w| w.0),
                    run.written_ms.map_or(f64::NAN, |w| w.1),
                    run.busiest.iter().map(|(name, cpu)| format!("{name} {cpu:.2}")).collect::<Vec<_>>().join(", "),
                ),
                _ => format!("alone {:>7.1} steps/s, server {:>5.2} CPU-s", run.steps_per_second, run.server_cpu),
            };
            println!("round {}: {line}", round + 1);
            runs[at].push(run);
        }
    }

    let rates = |runs: &[Run]| runs.iter().map(|r| r.steps_per_second).collect::<Vec<_>>();
    println!("\n{:<52} {:>9} {:>9} {:>9}", "", "min", "median", "max");
    let row = |label: &str, values: Vec<f64>| {
        let (min, mid, max) = spread(values);
        println!("{label:<52} {min:>9.1} {mid:>9.1} {max:>9.1}");
    };
    let alone = &runs[0];
    row("steps/s, no subscribers", rates(alone));
    row("server CPU-s, no subscribers", alone.iter().map(|r| r.server_cpu).collect());
    for (mode, with) in kinds.iter().zip(&runs).skip(1) {
        let Some(mode) = mode else { continue };
        let label = |what: &str| format!("{what}, {} {} subscribers", args.clients, mode.name());
        let costs: Vec<f64> =
            alone.iter().zip(with).map(|(a, w)| 100.0 * (w.steps_per_second / a.steps_per_second - 1.0)).collect();
        let reports: Vec<&ClientsReport> = with.iter().filter_map(|r| r.clients.as_ref()).collect();
        let probes: Vec<&ClientsReport> = with.iter().filter_map(|r| r.probes.as_ref()).collect();
        let expected = args.steps * args.clients as u64 * reports.len() as u64;
        let delivered: u64 = with.iter().map(Run::delivered).sum();
        let lagged: u64 = with.iter().map(Run::lagged).sum();
        row(&label("steps/s"), rates(with));
        row(&label("vs alone (%)"), costs);
        row(&label("server CPU-s"), with.iter().map(|r| r.server_cpu).collect());
        row(&label("server's page faults"), with.iter().map(|r| r.server_faults).collect());
        row(&label("writes a client"), with.iter().map(|r| r.writes_per_client).collect());
        row(&label("clients' CPU-s"), reports.iter().map(|c| c.cpu_seconds).collect());
        row(&label("KB read per client"), reports.iter().map(|c| c.bytes_per_client / 1e3).collect());
        row(&label("latency p50 (ms)"), reports.iter().map(|c| c.p50_ms).collect());
        row(&label("latency p99 (ms)"), reports.iter().map(|c| c.p99_ms).collect());
        row(&label("latency max (ms)"), reports.iter().map(|c| c.max_ms).collect());
        row(&label("probes' latency p50 (ms)"), probes.iter().map(|c| c.p50_ms).collect());
        row(&label("probes' latency p99 (ms)"), probes.iter().map(|c| c.p99_ms).collect());
        row(&label("probes' latency max (ms)"), probes.iter().map(|c| c.max_ms).collect());
        row(&label("server's write delay p50 (ms)"), with.iter().filter_map(|r| r.written_ms.map(|w| w.0)).collect());
        row(&label("server's write delay p99 (ms)"), with.iter().filter_map(|r| r.written_ms.map(|w| w.1)).collect());
        println!(
            "{:<52} {delivered} of {expected} ({:.2}%), {lagged} skipped by lag",
            label("steps delivered"),
            100.0 * delivered as f64 / expected.max(1) as f64
        );
    }

    let _ = stop.send(());
    server.await??;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Min, median and max.
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mid = if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
    (values[0], mid, values[n - 1])
}

/// CPU seconds (user + system) of this process's threads, summed by thread name (a
/// thread that ended is no longer counted).
fn threads_cpu() -> std::collections::HashMap<String, f64> {
    let mut names = std::collections::HashMap::new();
    for (_, name, cpu) in proc_stat::threads().unwrap_or_default() {
        *names.entry(name).or_insert(0.0) += cpu;
    }
    names
}

/// CPU seconds (user + system) this process has used.
fn process_cpu() -> f64 {
    stat_cpu(&own_stat())
}

/// Trains the job once with `clients` subscribers in a separate process; returns its step
/// rate, this process's CPU time and what the clients saw. The job waits behind a blocker
/// until every client is connected, so all of them see it from its first step live.
async fn train(
    args: &StreamArgs,
    http: &reqwest::Client,
    base: &str,
    spec: &Value,
    mode: Option<Mode>,
) -> anyhow::Result<Run> {
    let clients = if mode.is_some() { args.clients } else { 0 };
    let blocker = json!({
        "name": "blocker", "steps": 10_000_000, "batch_size": 1, "device": "cpu",
        "task": {"kind": "char_lm", "seq_len": 2}, "model": {"kind": "lstm", "layers": 1, "hidden": 1},
        "monitor": {"every": 0},
    });
    let submit = |spec: Value| async move {
        let job: Value = http.post(format!("http://{base}/api/v1/jobs")).json(&spec).send().await?.json().await?;
        job["id"].as_str().map(str::to_owned).context("no job id")
    };
    let blocker = submit(blocker).await?;
    let id = submit(spec.clone()).await?;
    let (mut bulk, mut probes) = (None, None);
    if let Some(mode) = mode {
        let url = format!("ws://{base}/api/v1/jobs/{id}/stream{}", mode.query());
        let probe_count = args.probes.min(clients);
        bulk = Some(ClientsProcess::start(&url, clients - probe_count, args.client_nice, args.client_idle).await?);
        if probe_count > 0 {
            probes = Some(ClientsProcess::start(&url, probe_count, 0, false).await?);
        }
    }
    let buckets_before = delay_buckets(http, base).await?;
    http.post(format!("http://{base}/api/v1/jobs/{blocker}/cancel")).send().await?;
    // Counted from the blocker's end: the job starts right after it.
    let (stat_before, threads_before) = (own_stat(), threads_cpu());
    let job = loop {
        let job: Value = http.get(format!("http://{base}/api/v1/jobs/{id}")).send().await?.json().await?;
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stat_after = own_stat();
    let server_cpu = stat_cpu(&stat_after) - stat_cpu(&stat_before);
    // Minor page faults: field 10 of stat(5).
    let server_faults = stat_field(&stat_after, 10) - stat_field(&stat_before, 10);
    let mut busiest: Vec<(String, f64)> = threads_cpu()
        .into_iter()
        .map(|(name, cpu)| {
            let before = threads_before.get(&name).copied().unwrap_or(0.0);
            (name, cpu - before)
        })
        .collect();
    busiest.sort_by(|a, b| b.1.total_cmp(&a.1));
    busiest.truncate(3);
    let buckets_after = delay_buckets(http, base).await?;
    let written_ms = (clients > 0).then(|| {
        (1e3 * quantile(&buckets_before, &buckets_after, 0.5), 1e3 * quantile(&buckets_before, &buckets_after, 0.99))
    });
    let writes_per_client = observations(&buckets_before, &buckets_after) / clients.max(1) as f64;
    anyhow::ensure!(job["status"] == "succeeded", "the benchmark job ended {}: {}", job["status"], job["error"]);
    let seconds = |field: &str| -> anyhow::Result<f64> {
        let at = job[field].as_str().context("timestamp")?;
        Ok(chrono::DateTime::parse_from_rfc3339(at)?.timestamp_micros() as f64 / 1e6)
    };
    let steps_per_second = job["step"].as_f64().unwrap_or(0.0) / (seconds("finished_at")? - seconds("started_at")?);
    let clients = match bulk {
        Some(process) => Some(process.report().await?),
        None => None,
    };
    let probes = match probes {
        Some(process) => Some(process.report().await?),
        None => None,
    };
    Ok(Run { steps_per_second, server_cpu, server_faults, busiest, clients, probes, written_ms, writes_per_client })
}

/// A clients' process: this program again with `--connect`, at a given niceness and
/// perhaps under `SCHED_IDLE`.
struct ClientsProcess {
    process: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl ClientsProcess {
    /// Starts it and waits until its `count` sockets are connected.
    async fn start(url: &str, count: usize, nice: i32, idle: bool) -> anyhow::Result<Self> {
        let mut command = tokio::process::Command::new(if idle { "chrt" } else { "nice" });
        if idle {
            command.args(["--idle", "0", "nice"]);
        }
        let mut process = command
            .arg("-n")
            .arg(nice.to_string())
            .arg(std::env::current_exe()?)
            .args(["--connect", url, "--clients", &count.to_string()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("failed to start a clients' process")?;
        let mut lines = BufReader::new(process.stdout.take().context("stdout")?).lines();
        let ready = lines.next_line().await?;
        anyhow::ensure!(ready.as_deref() == Some("connected"), "the clients did not connect: {ready:?}");
        Ok(Self { process, lines })
    }

    /// Its report, once every socket has seen the job end.
    async fn report(mut self) -> anyhow::Result<ClientsReport> {
        let line = self.lines.next_line().await?.context("the clients' process reported nothing")?;
        self.process.wait().await?;
        Ok(serde_json::from_str(&line)?)
    }
}

/// The clients' process: connects `count` sockets to `url`, says `connected`, reads every
/// socket until its final status, then prints a [`ClientsReport`].
async fn clients(url: &str, count: usize) -> anyhow::Result<()> {
    let mut readers = Vec::with_capacity(count);
    for _ in 0..count {
        let (socket, _) = tokio_tungstenite::connect_async(url).await?;
        readers.push(tokio::spawn(read(socket)));
    }
    let cpu_before = process_cpu();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "connected")?;
    stdout.flush()?;
    let mut report = ClientsReport::default();
    let mut latencies = Vec::new();
    for reader in readers {
        let seen = reader.await?;
        report.bytes_per_client += seen.bytes as f64 / count.max(1) as f64;
        report.delivered += seen.steps;
        report.lagged += seen.lagged;
        latencies.extend(seen.latencies_ms);
    }
    report.cpu_seconds = process_cpu() - cpu_before;
    latencies.sort_by(f64::total_cmp);
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
    (report.p50_ms, report.p99_ms, report.max_ms) = (pct(0.50), pct(0.99), pct(1.0));
    writeln!(stdout, "{}", serde_json::to_string(&report)?)?;
    stdout.flush()?;
    Ok(())
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
    let mut inflated = String::new();
    while let Some(Ok(message)) = socket.next().await {
        let received = now_seconds();
        let ended = match message {
            Message::Text(text) => {
                seen.bytes += text.len() as u64;
                take(&mut seen, &text, received)
            }
            Message::Binary(bytes) => {
                seen.bytes += bytes.len() as u64;
                inflated.clear();
                if std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut inflated).is_err()
                {
                    break;
                }
                inflated.lines().any(|line| take(&mut seen, line, received))
            }
            _ => false,
        };
        if ended {
            break;
        }
    }
    seen
}

/// Counts one message received at `received`; true at the final status.
fn take(seen: &mut Seen, text: &str, received: f64) -> bool {
    // Steps are read as a dashboard would skim them, without parsing their layers.
    if text.starts_with(r#"{"type":"step""#) {
        seen.steps += 1;
        if let Some(published) = number_after(text, r#""time":"#) {
            seen.latencies_ms.push((received - published) * 1e3);
        }
        return false;
    }
    let Ok(value) = serde_json::from_str::<Value>(text) else { return false };
    match value["type"].as_str() {
        Some("lagged") => seen.lagged += value["missed"].as_u64().unwrap_or(0),
        Some("status") => return true,
        _ => {}
    }
    false
}
