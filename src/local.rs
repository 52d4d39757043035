//! `gradscope run SPEC.json`: train one job from the shell, without the server, with a
//! progress bar and a final per-layer table, writing the same history to the database a
//! server would (so `gradscope serve` on that database shows it afterwards). Given an
//! experiment (a file with a `base` spec), it runs every job of its grid in turn and
//! prints the results per cell.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use comfy_table::{Cell, Table, presets::UTF8_BORDERS_ONLY};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::jobs::experiments::ExperimentResults;
use crate::jobs::live::LiveMessage;
use crate::jobs::results::Spread;
use crate::jobs::{CorpusLimits, DataDir, JobLimits, Jobs, Scheduler};
use crate::metrics::Metrics;
use crate::notify::{Notifier, NotifySettings};
use crate::spec::{ExperimentSpec, JobSpec, ValidExperiment, ValidSpec};
use crate::store::{JobStatus, Store};
use crate::train::budget;
use crate::train::{LayerStats, StepReport};
use crate::vocab::{DiagnosisStatus, Statistic};

/// Most jobs an experiment run from the shell may expand to.
pub const MAX_LOCAL_EXPERIMENT_JOBS: u64 = 10_000;

/// What `gradscope run` is given.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The job spec, as JSON (the body `POST /api/v1/jobs` takes), or an experiment (the
    /// body `POST /api/v1/experiments` takes).
    pub spec: PathBuf,
    pub database_url: String,
    /// Folder for checkpoints and uploaded corpora.
    pub data_dir: PathBuf,
    /// Threads LibTorch uses for CPU work.
    pub torch_threads: Option<i32>,
    /// No progress bar.
    pub quiet: bool,
}

/// A file `gradscope run` reads.
enum RunFile {
    Job(Box<ValidSpec>),
    Experiment(ValidExperiment),
}

/// Reads and validates a spec or experiment file (an experiment is an object with a
/// `base`); a bad one is explained with its field.
fn read_file(path: &Path) -> anyhow::Result<RunFile> {
    let bytes = std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    let explain = |err: crate::spec::SpecError| anyhow::anyhow!("{}: {err}", path.display());
    let is_experiment = serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|v| v.get("base").is_some());
    if is_experiment {
        ExperimentSpec::parse(&bytes, MAX_LOCAL_EXPERIMENT_JOBS).map(RunFile::Experiment).map_err(explain)
    } else {
        JobSpec::parse(&bytes).map(|spec| RunFile::Job(Box::new(spec))).map_err(explain)
    }
}

/// The service `gradscope run` trains through: the same as a server's (with no limits:
/// the operator chose the jobs), its scheduler running only what it is given.
struct Local {
    store: Store,
    scheduler: Scheduler,
    jobs: Jobs,
    shutdown: CancellationToken,
}

impl Local {
    async fn start(options: &RunOptions) -> anyhow::Result<Self> {
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
        let scheduler =
            Scheduler::standalone(store.clone(), data.clone(), (metrics.clone(), notifier), shutdown.clone());
        let jobs = Jobs::new(store.clone(), scheduler.clone(), data, metrics, JobLimits::NONE, CorpusLimits::NONE);
        let ctrl_c = shutdown.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                ctrl_c.cancel();
            }
        });
        Ok(Self { store, scheduler, jobs, shutdown })
    }

    /// Stops the scheduler's watch for Ctrl-C and waits for the last writes.
    async fn finish(&self) {
        self.shutdown.cancel();
        self.scheduler.wait().await;
    }
}

/// Trains the spec in `options.spec` here, through the same service a server uses (with
/// no limits: the operator chose the job), and prints what it recorded; or, given an
/// experiment, each of its jobs in turn and then its results per cell.
pub async fn run(options: &RunOptions) -> anyhow::Result<ExitCode> {
    let spec = match read_file(&options.spec)? {
        RunFile::Job(spec) => *spec,
        RunFile::Experiment(experiment) => return run_experiment(options, &experiment).await,
    };
    let Local { store, scheduler, jobs, shutdown } = Local::start(options).await?;
    let corpus = jobs.corpus_size(&spec).await?;
    let job = jobs.submit(&spec).await?;
    eprintln!("job {} ({}) → {}", job.id, job.name, options.database_url);

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

/// Runs every job of `experiment` here, one after another, then prints its results per
/// cell. Succeeds when every job ended `succeeded` or `diverged` (a verdict either way).
async fn run_experiment(options: &RunOptions, experiment: &ValidExperiment) -> anyhow::Result<ExitCode> {
    let local = Local::start(options).await?;
    let started = std::time::Instant::now();
    let queued = local.jobs.submit_experiment(experiment).await?;
    let total = queued.jobs.as_ref().map_or(0, Vec::len);
    eprintln!(
        "experiment {} ({}): {} cells × {} seeds = {total} jobs → {}",
        queued.id,
        queued.name,
        queued.cells.len(),
        experiment.spec.seeds,
        options.database_url
    );
    for (i, job) in queued.jobs.iter().flatten().enumerate() {
        if local.shutdown.is_cancelled() {
            // Stopped: what has not started is cancelled, not left for a server to run.
            local.jobs.cancel(job.id).await.ok();
            continue;
        }
        local.scheduler.run_one(job.id).await?;
        let bar = progress_bar(u64::try_from(job.total_steps).unwrap_or(0), options.quiet);
        bar.set_prefix(format!("[{}/{total}] cell {} seed {}", i + 1, job.cell, job.seed));
        let mut last = None;
        local
            .jobs
            .follow(job.id, |message| {
                if let LiveMessage::Step(report) = message {
                    show(&bar, report, &mut last);
                }
            })
            .await;
        bar.finish_and_clear();
        if let Some(done) = local.store.job(job.id).await? {
            eprintln!("[{}/{total}] cell {} seed {}: {}", i + 1, job.cell, job.seed, done.status.as_str());
        }
    }
    local.finish().await;
    let results = local.jobs.experiment_results(queued.id).await?;
    println!("{}", results_table(&results));
    if let Some(t) = &results.threshold {
        println!("solved: {}; steps to threshold: median over the runs that reached it", t.describe());
    }
    println!("{total} jobs in {:.1} s", started.elapsed().as_secs_f64());
    local.store.close().await;
    let verdicts = results.jobs.iter().all(|j| j.completed);
    Ok(if verdicts { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// An experiment's results, one row per cell, its axes' labels first.
fn results_table(results: &ExperimentResults) -> Table {
    let mut table = Table::new();
    let figures =
        ["runs", "train loss", "val loss", "val metric", "diverged", "solved", "steps to threshold", "steps/s"];
    let header = std::iter::once("cell").chain(results.axes.iter().map(String::as_str)).chain(figures);
    table.load_style(UTF8_BORDERS_ONLY).set_header(header);
    let spread = |s: Spread| match (s.mean, s.std) {
        (Some(m), Some(sd)) => format!("{} ± {}", figure(m), figure(sd)),
        (Some(m), None) => figure(m),
        _ => "-".to_owned(),
    };
    let rate = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{:.0}%", 100.0 * r));
    for c in &results.cells {
        let mut row = vec![Cell::new(c.cell)];
        row.extend(c.labels.iter().map(Cell::new));
        row.extend([
            Cell::new(format!("{}/{}", c.completed, c.jobs)),
            Cell::new(spread(c.train_loss)),
            Cell::new(spread(c.val_loss)),
            Cell::new(spread(c.val_metric)),
            Cell::new(rate(c.divergence_rate)),
            Cell::new(rate(c.solved_rate)),
            Cell::new(c.steps_to_threshold.map_or_else(|| "-".to_owned(), |s| format!("{s:.0} ({})", c.reached))),
            Cell::new(c.steps_per_second.mean.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}"))),
        ]);
        table.add_row(row);
    }
    table
}

/// A figure in four decimals, or in scientific notation when it is very large or small.
fn figure(x: f64) -> String {
    if x != 0.0 && (x.abs() >= 1e4 || x.abs() < 1e-3) { format!("{x:.3e}") } else { format!("{x:.4}") }
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
    let style = ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} steps  {per_sec}  ETA {eta}  {msg}")
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
