//! `cargo bench --bench jobs -- [ARGS]`: what monitoring costs a real job.
//!
//! Starts the service in this process (a temporary SQLite file, the scheduler, the store
//! writer, the metrics, the live stream, validation and checkpoints: everything a job
//! does) and submits the README's MLP through the HTTP API with the default `monitor`,
//! with histograms on every step, with statistics but no histograms, and with
//! `monitor.every: 0` (or the `--variants` named, e.g. `bare`: no monitoring and no
//! clipping; `--device cuda` for a GPU), in interleaved rounds
//! (each round starts with the next variant, so drift on a shared machine hits all
//! alike). Prints steps/s (steps over the job's `started_at`..`finished_at`) min, median
//! and max per variant and the overhead against monitoring off, also as each round's own
//! ratio (wall time and the process's CPU time); then where the time goes:
//! the training thread's wall time per phase of a step (the step's opt-in timing record)
//! and the CPU time of every thread of the process by kind, from `/proc/self/task`.
//! Run without `--bench` (as `cargo test --all-targets` does), it trains each variant
//! once at toy size, to show that it works.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use gradscope::Application;
use gradscope::config::ServeConfig;
use gradscope::train::step::timing::{self, Phase};
use serde_json::{Value, json};

#[path = "common/proc_stat.rs"]
mod proc_stat;

#[derive(Debug, Clone, Parser)]
#[command(name = "jobs", about = "Step rate of real jobs with default, histogram-free and no monitoring")]
struct JobsArgs {
    /// Training steps of each job.
    #[arg(long, default_value_t = 600)]
    pub steps: u64,
    /// Rounds; each runs every variant once.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// MLP width (and input features).
    #[arg(long, default_value_t = 256)]
    pub hidden: i64,
    /// MLP blocks of Linear → LayerNorm → GELU.
    #[arg(long, default_value_t = 12)]
    pub blocks: i64,
    #[arg(long, default_value_t = 128)]
    pub batch_size: i64,
    /// `monitor.layers` patterns for every monitored variant (`--layers 'blocks.[01].*'
    /// --layers 'head.*'`): the cost of statistics of chosen layers only.
    #[arg(long = "layers")]
    pub layers: Vec<String>,
    /// LibTorch CPU threads (the service's `--torch-threads`).
    #[arg(long, default_value_t = 2)]
    pub torch_threads: i32,
    /// Train in worker processes, as the service does by default, rather than on the
    /// server's threads. The phases are then not timed (they run in the worker); the CPU
    /// time of the workers is read when each job's worker exits.
    #[arg(long)]
    pub workers: bool,
    /// The job's device (`cpu`, `cuda`, `cuda:N`, `auto`). On a GPU one short job runs
    /// first, untimed, so that no variant pays for LibTorch's CUDA start-up.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// On CUDA, wait for the device at the end of every phase, so that each phase is
    /// charged with its own GPU time (in the server's process only). The steps are slower
    /// for the waits; the per-phase times, not the rates, are the figures of such a run.
    #[arg(long)]
    pub sync_phases: bool,
    /// The jobs' `precision` (`fp32`, `bf16`, `fp16`).
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// The variants to run, comma-separated; the last one is the baseline the others are
    /// compared with.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Variant::Default, Variant::EveryHistogram, Variant::NoHistogram, Variant::Off])]
    pub variants: Vec<Variant>,
    /// The `gradscope` binary worker processes run (with `--workers`); by default the one
    /// built beside this benchmark.
    #[arg(long, default_value = env!("CARGO_BIN_EXE_gradscope"))]
    pub worker_binary: std::path::PathBuf,
    /// Given by `cargo bench`; without it the benchmark only shows that it runs.
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// The monitoring (and clipping) a job is submitted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Variant {
    /// `monitor` as the spec's defaults leave it.
    Default,
    /// Histograms with every statistic (`histogram_every: 1`).
    EveryHistogram,
    /// Every statistic, no histograms.
    NoHistogram,
    /// `monitor.every: 0`: loss and the global norms only.
    Off,
    /// `monitor.every: 0` and no `clip_norm`: the bare training step.
    Bare,
    /// As `default`, its statistics taken by LibTorch's reductions instead of the CUDA
    /// kernels (the same as `default` off CUDA).
    DefaultLibtorch,
    /// As `no-histogram`, by LibTorch's reductions.
    NoHistogramLibtorch,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Self::Default => "default monitor",
            Self::EveryHistogram => "histograms every step",
            Self::NoHistogram => "statistics, no histograms",
            Self::Off => "monitor.every: 0",
            Self::Bare => "every: 0, no clip_norm",
            Self::DefaultLibtorch => "default, LibTorch reductions",
            Self::NoHistogramLibtorch => "no histograms, LibTorch's",
        }
    }

    /// Whether a CUDA job takes its statistics by the kernels.
    fn kernels(self) -> bool {
        !matches!(self, Self::DefaultLibtorch | Self::NoHistogramLibtorch)
    }

    fn monitor(self) -> Value {
        match self {
            Self::Default | Self::DefaultLibtorch => json!({}),
            Self::EveryHistogram => json!({"histogram_every": 1}),
            Self::NoHistogram | Self::NoHistogramLibtorch => json!({"histogram": false}),
            Self::Off | Self::Bare => json!({"every": 0}),
        }
    }

    fn policy(self) -> Value {
        match self {
            Self::Bare => json!({}),
            _ => json!({"grad": [{"kind": "clip_norm", "max_norm": 1.0}]}),
        }
    }
}

/// One job's measurements.
#[derive(Debug, Default)]
struct Run {
    steps_per_second: f64,
    /// Training-thread wall seconds per phase.
    phases: Vec<(Phase, f64)>,
    /// CPU seconds per kind of thread.
    cpu: HashMap<String, f64>,
}

impl Run {
    /// Training-thread wall seconds over every phase: the steps' own time, without the
    /// job's set-up and end.
    fn training_thread(&self) -> f64 {
        self.phases.iter().map(|(_, s)| s).sum()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test` passes nothing, and gets a toy run.
    let args = if std::env::args().any(|a| a == "--bench") {
        JobsArgs::parse()
    } else {
        JobsArgs::parse_from([
            "jobs",
            "--steps",
            "12",
            "--rounds",
            "1",
            "--hidden",
            "8",
            "--blocks",
            "2",
            "--batch-size",
            "4",
            "--torch-threads",
            "1",
        ])
    };
    run(&args).await
}

async fn run(args: &JobsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.variants.is_empty(), "--variants: name at least one");
    let dir = tempfile::TempDir::new()?;
    let mut config = ServeConfig::new(
        "127.0.0.1:0".parse()?,
        &format!("sqlite://{}", dir.path().join("bench.db").display()),
        dir.path().join("data"),
    );
    config.torch_threads = Some(args.torch_threads);
    // By default the per-phase timing and the per-thread CPU times are read in this
    // process, so the jobs train on the server's threads (`--in-process`); `--workers`
    // measures the default path, a worker process a job.
    config.in_process = !args.workers;
    config.worker_binary = Some(args.worker_binary.clone());
    let app = Application::build(config).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    println!(
        "bench jobs: MLP {} × {} blocks (LayerNorm, GELU), batch {}, AdamW, {} steps on {} in {}, \
         {} torch thread(s), {} rounds, {}{}",
        args.hidden,
        args.blocks,
        args.batch_size,
        args.steps,
        args.device,
        args.precision,
        args.torch_threads,
        args.rounds,
        if args.workers { "worker processes" } else { "in the server's process" },
        if args.layers.is_empty() { String::new() } else { format!(", monitor.layers {:?}", args.layers) }
    );

    if args.device != "cpu" {
        let warm_up = JobsArgs { steps: args.steps.min(50), ..args.clone() };
        job(&http, &base, &warm_up, Variant::Bare).await?;
    }
    timing::enable(true);
    if args.sync_phases {
        anyhow::ensure!(!args.workers, "--sync-phases times the phases in the server's process: leave out --workers");
        let index = match args.device.as_str() {
            "cuda" | "auto" => 0,
            other => other
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .context("--sync-phases needs a CUDA device (--device cuda or cuda:N)")?,
        };
        timing::sync_cuda(Some(index));
        println!("each phase waits for CUDA device {index}: its time is its own GPU time");
    }
    let variants = &args.variants;
    anyhow::ensure!(
        !args.workers || variants.iter().all(|v| v.kernels()),
        "the LibTorch variants switch the server's process: leave out --workers"
    );
    let mut runs: Vec<Vec<Run>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for k in 0..variants.len() {
            let v = (round + k) % variants.len();
            let variant = variants[v];
            let run = job(&http, &base, args, variant).await?;
            let per_step = 1e3 / args.steps as f64;
            let phases: Vec<String> =
                run.phases.iter().map(|(p, s)| format!("{} {:.2}", p.as_str(), s * per_step)).collect();
            println!(
                "  round {} {:<28} {:>8.1} steps/s; training thread, ms a step: {:.2} ({})",
                round + 1,
                variant.label(),
                run.steps_per_second,
                run.training_thread() * per_step,
                phases.join(", ")
            );
            runs[v].push(run);
        }
    }
    timing::enable(false);
    timing::sync_cuda(None);
    report(args, &runs);

    let _ = stop.send(());
    server.await??;
    Ok(())
}

/// Submits one job of `variant`, waits for it, and measures it.
async fn job(http: &reqwest::Client, base: &str, args: &JobsArgs, variant: Variant) -> anyhow::Result<Run> {
    let spec = json!({
        "name": format!("bench-{}", variant.label()), "steps": args.steps, "batch_size": args.batch_size,
        "device": args.device, "precision": args.precision, "seed": 1,
        "task": {"kind": "classification", "features": args.hidden, "classes": 10},
        "model": {"kind": "mlp", "layers": args.blocks, "hidden": args.hidden, "norm": "layer", "activation": "gelu"},
        "optimizer": {"kind": "adamw", "lr": 0.001},
        "policy": variant.policy(),
        "monitor": variant.monitor(),
    });
    let mut spec = spec;
    if !matches!(variant, Variant::Off | Variant::Bare) && !args.layers.is_empty() {
        spec["monitor"]["layers"] = json!(args.layers);
    }
    let _ = timing::take();
    // Read when the job builds its flat buffers: in this process, jobs run one at a time.
    gradscope::train::fused::enable(variant.kernels());
    let mut threads = Threads::sample()?;
    let response = http.post(format!("{base}/api/v1/jobs")).json(&spec).send().await?;
    let created: Value = response.json().await?;
    let id = created["id"].as_str().with_context(|| format!("no job id: {created}"))?.to_owned();
    let job = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Sampled while the job runs: its training thread is gone once it ends.
        threads.update()?;
        let job: Value = http.get(format!("{base}/api/v1/jobs/{id}")).send().await?.json().await?;
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            break job;
        }
    };
    threads.update()?;
    if args.workers {
        // The job's worker has exited once the job is over; its CPU time is among the
        // children's when it has been waited for.
        tokio::time::sleep(Duration::from_millis(200)).await;
        threads.children()?;
    }
    anyhow::ensure!(job["status"] == "succeeded", "the benchmark job ended {}: {}", job["status"], job["error"]);
    anyhow::ensure!(job["dropped_reports"] == 0, "the store dropped reports: {job}");
    let seconds = |field: &str| -> anyhow::Result<f64> {
        let at = job[field].as_str().context("timestamp")?;
        Ok(chrono::DateTime::parse_from_rfc3339(at)?.timestamp_micros() as f64 / 1e6)
    };
    let wall = seconds("finished_at")? - seconds("started_at")?;
    Ok(Run {
        steps_per_second: args.steps as f64 / wall,
        phases: timing::take().into_iter().map(|(p, d)| (p, d.as_secs_f64())).collect(),
        cpu: threads.by_kind(),
    })
}

/// Per-thread CPU seconds (user + system) of this process, from `/proc/self/task`.
struct Threads {
    pid: u32,
    /// CPU seconds of this process's waited-for children (worker processes) when sampled.
    children_start: f64,
    children: f64,
    /// Each thread's kind and CPU seconds when first seen.
    start: HashMap<u32, (String, f64)>,
    /// Each thread's kind and CPU seconds when last seen.
    last: HashMap<u32, (String, f64)>,
}

impl Threads {
    fn sample() -> anyhow::Result<Self> {
        let pid = std::process::id();
        let now = read_threads(pid)?;
        let children = children_cpu()?;
        Ok(Self { pid, children_start: children, children, start: now.clone(), last: now })
    }

    fn children(&mut self) -> anyhow::Result<()> {
        self.children = children_cpu()?;
        Ok(())
    }

    fn update(&mut self) -> anyhow::Result<()> {
        for (tid, value) in read_threads(self.pid)? {
            self.last.insert(tid, value);
        }
        Ok(())
    }

    /// CPU seconds since [`Self::sample`], summed by kind of thread.
    fn by_kind(&self) -> HashMap<String, f64> {
        let mut kinds = HashMap::new();
        for (tid, (kind, cpu)) in &self.last {
            let before = self.start.get(tid).map_or(0.0, |(_, c)| *c);
            *kinds.entry(kind.clone()).or_insert(0.0) += cpu - before;
        }
        if self.children > self.children_start {
            kinds.insert("worker processes (training)".to_owned(), self.children - self.children_start);
        }
        kinds
    }
}

/// User + system CPU seconds of the children this process has waited for.
fn children_cpu() -> anyhow::Result<f64> {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
}

fn read_threads(pid: u32) -> anyhow::Result<HashMap<u32, (String, f64)>> {
    let process = std::fs::read_to_string("/proc/self/comm")?.trim().to_owned();
    let mut threads = HashMap::new();
    for (tid, name, cpu) in proc_stat::threads()? {
        let kind = if tid == pid {
            "main thread (HTTP client, polling)".to_owned()
        } else if name.starts_with("train-") {
            // LibTorch's OpenMP workers take the name of the thread that started them.
            "training thread and its LibTorch workers".to_owned()
        } else if name.starts_with("tokio-r") {
            "tokio workers (HTTP, store writer, metrics, stream)".to_owned()
        } else if name.starts_with("sqlx-sqlite") {
            "SQLite worker".to_owned()
        } else if name == process {
            "other threads of this program".to_owned()
        } else {
            name
        };
        threads.insert(tid, (kind, cpu));
    }
    Ok(threads)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Prints the rates and the costs against the last variant, the phases and the threads.
fn report(args: &JobsArgs, runs: &[Vec<Run>]) {
    let variants = &args.variants;
    let last = variants.len() - 1;
    let baseline = variants[last].label();
    let rates: Vec<Vec<f64>> = runs.iter().map(|r| r.iter().map(|r| r.steps_per_second).collect()).collect();
    let off = median(&mut rates[last].clone());
    println!("\nsteps/s through the API ({} rounds)", args.rounds);
    println!("{:<28} {:>8} {:>8} {:>8} {:>22}", "variant", "min", "median", "max", "time vs last (median)");
    for (variant, rates) in variants.iter().zip(&rates) {
        let mut sorted = rates.clone();
        let mid = median(&mut sorted);
        println!(
            "{:<28} {:>8.1} {:>8.1} {:>8.1} {:>+21.1}%",
            variant.label(),
            sorted[0],
            mid,
            sorted[sorted.len() - 1],
            100.0 * (off / mid - 1.0)
        );
    }

    // Each round runs every variant back to back, so a round's ratios share its load: on a
    // shared machine they vary far less than the rates do.
    println!("\ncost against {baseline} in the same round (min / median / max over rounds)");
    println!(
        "{:<28} {:>30} {:>30} {:>30}",
        "variant", "wall time per step", "CPU time of the process", "training thread per step"
    );
    let off_runs = &runs[last];
    for (variant, variant_runs) in variants.iter().zip(runs).take(last) {
        let spread = |values: &mut Vec<f64>| {
            let mid = median(values);
            format!("{:+.1} / {:+.1} / {:+.1} %", values[0], mid, values[values.len() - 1])
        };
        let mut wall: Vec<f64> = variant_runs
            .iter()
            .zip(off_runs)
            .map(|(r, off)| 100.0 * (off.steps_per_second / r.steps_per_second - 1.0))
            .collect();
        let mut cpu: Vec<f64> = variant_runs
            .iter()
            .zip(off_runs)
            .map(|(r, off)| 100.0 * (r.cpu.values().sum::<f64>() / off.cpu.values().sum::<f64>() - 1.0))
            .collect();
        // Without worker processes: the steps' own time, without the job's set-up and end.
        let mut steps: Vec<f64> = variant_runs
            .iter()
            .zip(off_runs)
            .map(|(r, off)| 100.0 * (r.training_thread() / off.training_thread() - 1.0))
            .collect();
        let steps = if args.workers { "-".to_owned() } else { spread(&mut steps) };
        println!("{:<28} {:>30} {:>30} {:>30}", variant.label(), spread(&mut wall), spread(&mut cpu), steps);
    }

    // The phases are timed on the training thread, which is in this process only without
    // worker processes.
    if !args.workers {
        println!("\ntraining thread, ms per step by phase (median over rounds)");
        print!("{:<28}", "phase");
        for variant in variants {
            print!(" {:>26}", variant.label());
        }
        println!();
        let per_step = 1e3 / args.steps as f64;
        for (i, phase) in Phase::ALL.iter().enumerate() {
            print!("{:<28}", phase.as_str());
            for variant_runs in runs {
                let mut values: Vec<f64> = variant_runs.iter().map(|r| r.phases[i].1 * per_step).collect();
                print!(" {:>26.3}", median(&mut values));
            }
            println!();
        }
        // Every phase together: the step's time on the training thread, without the
        // job's set-up and end, which the rates above include.
        print!("{:<28}", "all phases");
        for variant_runs in runs {
            let mut values: Vec<f64> = variant_runs.iter().map(|r| r.training_thread() * per_step).collect();
            print!(" {:>26.3}", median(&mut values));
        }
        println!();
    }

    println!("\nCPU seconds per job by thread (median over rounds)");
    let mut kinds: Vec<String> = runs.iter().flatten().flat_map(|r| r.cpu.keys().cloned()).collect();
    kinds.sort();
    kinds.dedup();
    print!("{:<52}", "threads");
    for variant in variants {
        print!(" {:>26}", variant.label());
    }
    println!();
    for kind in kinds.iter().chain(std::iter::once(&"all".to_owned())) {
        print!("{kind:<52}");
        for variant_runs in runs {
            let mut values: Vec<f64> = variant_runs
                .iter()
                .map(|r| if kind == "all" { r.cpu.values().sum() } else { r.cpu.get(kind).copied().unwrap_or(0.0) })
                .collect();
            print!(" {:>26.2}", median(&mut values));
        }
        println!();
    }
}
