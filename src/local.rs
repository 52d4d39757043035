//! `gradscope run SPEC.json`: train one job from the shell, without the server, with a
//! progress bar and a final per-layer table, writing the same history to the database a
//! server would (so `gradscope serve` on that database shows it afterwards).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use comfy_table::{Cell, Table, presets::UTF8_BORDERS_ONLY};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::jobs::live::LiveMessage;
use crate::jobs::{CorpusLimits, DataDir, JobLimits, Jobs, Scheduler};
use crate::metrics::Metrics;
use crate::notify::{Notifier, NotifySettings};
use crate::spec::{JobSpec, ValidSpec};
use crate::store::{JobStatus, Store};
use crate::train::budget;
use crate::train::{LayerStats, StepReport};
use crate::vocab::{DiagnosisStatus, Statistic};

/// What `gradscope run` is given.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The job spec, as JSON (the body `POST /api/v1/jobs` takes).
    pub spec: PathBuf,
    pub database_url: String,
    /// Folder for checkpoints and uploaded corpora.
    pub data_dir: PathBuf,
    /// Threads LibTorch uses for CPU work.
    pub torch_threads: Option<i32>,
    /// No progress bar.
    pub quiet: bool,
}

/// Reads and validates a spec file; a bad one is explained with its field.
fn read_spec(path: &Path) -> anyhow::Result<ValidSpec> {
    let bytes = std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    JobSpec::parse(&bytes).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))
}

/// Trains the spec in `options.spec` here, through the same service a server uses (with
/// no limits: the operator chose the job), and prints what it recorded.
pub async fn run(options: &RunOptions) -> anyhow::Result<ExitCode> {
    let spec = read_spec(&options.spec)?;
    if let Some(threads) = options.torch_threads {
        tch::set_num_threads(threads);
    }
    let store = Store::connect(&options.database_url).await?;
    store.migrate().await?;
    let shutdown = CancellationToken::new();
    let data = DataDir::new(&options.data_dir);
    let metrics = Arc::new(Metrics::new()?);
    // A job's own webhook is told too, while the command runs.
    let notifier = Notifier::start(NotifySettings::default(), metrics.clone())?;
    let scheduler = Scheduler::standalone(store.clone(), data.clone(), (metrics.clone(), notifier), shutdown.clone());
    let jobs = Jobs::new(store.clone(), scheduler.clone(), data, metrics, JobLimits::NONE, CorpusLimits::NONE);
    let corpus = jobs.corpus_size(&spec).await?;
    let job = jobs.submit(&spec).await?;
    eprintln!("job {} ({}) → {}", job.id, job.name, options.database_url);

    let ctrl_c = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            ctrl_c.cancel();
        }
    });
    scheduler.run_one(job.id).await?;
    let bar = progress_bar(spec.steps, options.quiet);
    // The last step that had layer statistics.
    let mut last = None;
    jobs.follow(job.id, |message| match message {
        LiveMessage::Step(report) => show(&bar, report, &mut last),
        LiveMessage::Event(event) => {
            bar.println(format!("step {:>6}  {:<9} {}", event.step, event.kind, event.message));
        }
        LiveMessage::Status { .. } => {}
    })
    .await;
    // The job has ended: stop the scheduler's watch for Ctrl-C and wait for its last write.
    shutdown.cancel();
    scheduler.wait().await;
    bar.finish_and_clear();

    let finished = store.job(job.id).await?.context("the job vanished")?;
    let layers = store.layers(job.id).await?;
    let names: Vec<String> = layers.into_iter().map(|l| l.name).collect();
    if let Some(stats) = last.as_ref().and_then(|s: &StepReport| s.layers.as_ref()) {
        println!("{}", layer_table(&names, stats, finished.diagnosis.as_ref()));
    }
    for event in store.events(job.id, None, 20).await? {
        println!("step {:>6}  {:<9} {}", event.step, event.kind, event.message);
    }
    let diagnosis = finished.diagnosis.as_ref().map_or(DiagnosisStatus::Healthy, |d| d.status);
    println!(
        "{} after {} of {} steps; loss {}; diagnosis {diagnosis}{}",
        finished.status.as_str(),
        finished.step,
        finished.total_steps,
        finished.loss.map_or_else(|| "-".to_owned(), |l| format!("{l:.4}")),
        finished.error.as_deref().map(|e| format!("; {e}")).unwrap_or_default(),
    );
    if let Some(peak) = peak_resident() {
        // The same estimate a server checks at submission, beside what this process used
        // (the service itself and LibTorch's libraries included).
        let estimate = budget::estimate(&spec, corpus).memory.total();
        println!("memory: peak resident {:.1} MiB; the job's estimate {:.1} MiB", mib(peak), mib(estimate));
    }
    store.close().await;
    Ok(if finished.status == JobStatus::Succeeded { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// This process's peak resident memory so far, in bytes (Linux `VmHWM`).
fn peak_resident() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

fn progress_bar(steps: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps);
    let style = ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {per_sec}  ETA {eta}  {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn show(bar: &ProgressBar, report: &StepReport, last: &mut Option<StepReport>) {
    bar.set_position(report.step);
    bar.set_message(format!(
        "loss {:.4}  |g| {:.3} → {:.3}{}",
        report.loss,
        report.grad_norm,
        report.grad_norm_clipped,
        if report.skipped { "  skipped" } else { "" }
    ));
    if report.layers.is_some() {
        *last = Some(report.clone());
    }
}

/// The statistics the final table shows, in its order (the mean says little beside the
/// standard deviation, and the table must fit a terminal).
const TABLE_STATS: [Statistic; 7] = [
    Statistic::GradNorm,
    Statistic::GradMax,
    Statistic::GradStd,
    Statistic::ZeroFrac,
    Statistic::Nonfinite,
    Statistic::WeightNorm,
    Statistic::UpdateRatio,
];

/// The last recorded statistics of every layer, with its diagnosis.
fn layer_table(names: &[String], stats: &LayerStats, diagnosis: Option<&crate::train::diagnose::Diagnosis>) -> Table {
    let mut table = Table::new();
    let header = ["#", "layer"].into_iter().chain(TABLE_STATS.map(Statistic::as_str)).chain(["diagnosis"]);
    table.load_style(UTF8_BORDERS_ONLY).set_header(header);
    for (i, name) in names.iter().enumerate() {
        let issues: Vec<&str> = diagnosis
            .map(|d| d.issues.iter().filter(|issue| issue.layer == Some(i)).map(|issue| issue.kind.as_str()).collect())
            .unwrap_or_default();
        let mut row = vec![Cell::new(i), Cell::new(name)];
        row.extend(TABLE_STATS.map(|stat| {
            Cell::new(stats.get(stat).get(i).map_or_else(
                || "-".to_owned(),
                |v| match stat {
                    Statistic::ZeroFrac => format!("{:.1}%", 100.0 * v),
                    Statistic::Nonfinite => format!("{v}"),
                    _ => format!("{v:.3e}"),
                },
            ))
        }));
        row.push(Cell::new(if issues.is_empty() { "ok".to_owned() } else { issues.join(", ") }));
        table.add_row(row);
    }
    table
}
