//! `cargo bench --bench store -- [ARGS]`: how fast the store keeps a long job's history
//! and answers range queries over it. Fills a temporary SQLite file (or, with `--postgres`,
//! a scratch PostgreSQL database) with a synthetic job
//! (per-step scalars, every per-layer statistic, and histograms on every 10th recorded
//! step as a job with the default `monitor.histogram_every` stores them) through the same
//! writer jobs use, then times the queries behind `/steps` and `/layer-stats`, JSON
//! encoding included, in interleaved rounds: min / median / max.
//! Run without `--bench` (as `cargo test --all-targets` does), it writes and reads a
//! toy history, to show that it works.

use std::time::Instant;

use clap::Parser;
use gradscope::spec::JobSpec;
use gradscope::store::scratch::ScratchDatabase;
use gradscope::store::{Progress, StatSelection, Store};
use gradscope::train::stats::HIST_BINS;
use gradscope::train::{LayerInfo, LayerStats, StepReport};
use gradscope::vocab::Statistic;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Parser)]
#[command(name = "store", about = "Writes and range queries of a long job's history (100k steps × 100 layers)")]
struct StoreArgs {
    /// Steps of the synthetic job.
    #[arg(long, default_value_t = 100_000)]
    pub steps: u64,
    /// Layers of the synthetic job.
    #[arg(long, default_value_t = 100)]
    pub layers: usize,
    /// Steps per write transaction (the runner writes what has queued up, up to 1024).
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    /// Histograms on every this many recorded steps (the default `monitor.histogram_every`).
    #[arg(long, default_value_t = 10)]
    pub histogram_every: u64,
    /// Rounds of the queries, interleaved.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// On a scratch PostgreSQL database (on `GRADSCOPE_TEST_POSTGRES`, by default the local
    /// server) instead of a temporary SQLite file.
    #[arg(long)]
    pub postgres: bool,
    /// Given by `cargo bench`; without it the benchmark only shows that it runs.
    #[arg(long, hide = true)]
    pub bench: bool,
}

fn report(step: u64, layers: usize, histogram_every: u64, rng: &mut StdRng) -> StepReport {
    let mut values = || (0..layers).map(|_| rng.random_range(1e-6..1.0)).collect::<Vec<f64>>();
    let stats = LayerStats {
        grad_norm: values(),
        grad_max: values(),
        grad_mean: values(),
        grad_std: values(),
        zero_frac: values(),
        nonfinite: vec![0.0; layers],
        underflow: values(),
        weight_norm: values(),
        update_ratio: values(),
        hist: (histogram_every > 0 && step.is_multiple_of(histogram_every)).then(|| {
            // Counts of a layer of 4096 elements spread over the buckets.
            (0..layers * HIST_BINS).map(|i| if i % HIST_BINS == 0 { 0 } else { rng.random_range(0..200) }).collect()
        }),
    };
    let loss = 4.0 / (1.0 + step as f64 / 1000.0) + rng.random_range(0.0..0.1);
    StepReport {
        step,
        loss,
        grad_norm: rng.random_range(0.1..10.0),
        grad_norm_clipped: 1.0,
        clip_coef: 1.0,
        lr: 1e-3,
        skipped: false,
        loss_scale: None,
        overflow: false,
        layers: Some(stats),
        probes: Default::default(),
        seconds: 0.01,
    }
}

/// Milliseconds of each round of one query, and its answer's size.
#[derive(Default)]
struct Timing {
    ms: Vec<f64>,
    bytes: usize,
}

impl Timing {
    fn add<T: serde::Serialize>(&mut self, started: Instant, answer: &T) {
        // Encoding is part of answering.
        self.bytes = serde_json::to_vec(answer).map_or(0, |v| v.len());
        self.ms.push(started.elapsed().as_secs_f64() * 1e3);
    }

    fn print(&mut self, label: &str) {
        self.ms.sort_by(f64::total_cmp);
        let (min, median, max) = (self.ms[0], self.ms[self.ms.len() / 2], self.ms[self.ms.len() - 1]);
        println!("{label:<58} {min:>8.1} / {median:>8.1} / {max:>8.1} ms {:>8} KiB", self.bytes / 1024);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test` passes nothing, and gets a toy history.
    let args = if std::env::args().any(|a| a == "--bench") {
        StoreArgs::parse()
    } else {
        StoreArgs::parse_from(["store", "--steps", "300", "--layers", "4", "--batch", "100", "--rounds", "1"])
    };
    run(&args).await
}

async fn run(args: &StoreArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("gradscope-bench-store-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let postgres = if args.postgres { Some(ScratchDatabase::create().await?) } else { None };
    let url = match &postgres {
        Some(database) => database.url().to_owned(),
        None => format!("sqlite://{}", dir.join("bench.db").display()),
    };
    let store = Store::connect(&url).await?;
    store.migrate().await?;
    let spec = JobSpec::parse_value(&serde_json::json!({
        "steps": args.steps, "task": {"kind": "char_lm"}, "model": {"kind": "lstm"}
    }))?;
    let job = store.insert_job(&spec).await?;
    let layers: Vec<LayerInfo> = (0..args.layers)
        .map(|i| LayerInfo { index: i, name: format!("layer{i}.weight"), shape: vec![64, 64], numel: 4096 })
        .collect();
    store.set_job_started(job.id, "cpu", &layers).await?;

    println!(
        "bench store ({:?}): {} steps × {} layers, every statistic on every step, histograms on every {}th",
        store.backend(),
        args.steps,
        args.layers,
        args.histogram_every
    );
    let mut rng = StdRng::seed_from_u64(1);
    let started = Instant::now();
    let mut step = 1;
    while step <= args.steps {
        let batch: Vec<StepReport> = (step..(step + args.batch as u64).min(args.steps + 1))
            .map(|s| report(s, args.layers, args.histogram_every, &mut rng))
            .collect();
        step += batch.len() as u64;
        store.record_progress(job.id, &Progress { steps: &batch, ..Progress::default() }).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{:<58} {:>9.0} steps/s ({:.1} s)",
        "write (steps with every layer statistic)",
        args.steps as f64 / seconds,
        seconds
    );
    if postgres.is_none() {
        let size = std::fs::metadata(dir.join("bench.db")).map_or(0, |m| m.len())
            + std::fs::metadata(dir.join("bench.db-wal")).map_or(0, |m| m.len());
        println!("{:<58} {:>9} MiB", "database size", size >> 20);
    }

    let all = (0, i64::MAX);
    let tenth = (0, i64::try_from(args.steps / 10)?);
    let norms = StatSelection { statistics: vec![Statistic::GradNorm], hist: false };
    let hist = StatSelection { statistics: vec![], hist: true };
    let every = StatSelection::default();
    let labels = [
        "/steps, whole range, 5000 points",
        "/steps, first tenth of the range, 5000 points",
        "/steps, 1000-step window",
        "/layer-stats, grad_norm of every layer, 1000 points",
        "/layer-stats, every statistic of one layer, 2000 points",
        "/layer-stats, every statistic of every layer, 500 points",
        "/layer-stats, hist of one layer, 300 points",
    ];
    let mut timings: Vec<Timing> = labels.iter().map(|_| Timing::default()).collect();
    println!("{:<58} {:>30}", "query (min / median / max of interleaved rounds)", "");
    for _ in 0..args.rounds.max(1) {
        let t = Instant::now();
        timings[0].add(t, &store.steps(job.id, all.0, all.1, 5000).await?);
        let t = Instant::now();
        timings[1].add(t, &store.steps(job.id, tenth.0, tenth.1, 5000).await?);
        let t = Instant::now();
        timings[2].add(t, &store.steps(job.id, 50_000, 51_000, 5000).await?);
        let t = Instant::now();
        timings[3].add(t, &store.layer_stats(job.id, &layers, &norms, all, 1000, u64::MAX).await?);
        let t = Instant::now();
        timings[4].add(t, &store.layer_stats(job.id, &layers[..1], &every, all, 2000, u64::MAX).await?);
        let t = Instant::now();
        timings[5].add(t, &store.layer_stats(job.id, &layers, &every, all, 500, u64::MAX).await?);
        let t = Instant::now();
        timings[6].add(t, &store.layer_stats(job.id, &layers[..1], &hist, all, 300, u64::MAX).await?);
    }
    for (timing, label) in timings.iter_mut().zip(labels) {
        timing.print(label);
    }
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
