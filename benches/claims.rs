//! `cargo bench --bench claims -- [ARGS]`: how fast nodes sharing one PostgreSQL database
//! claim queued jobs. Queues `--jobs` tiny jobs in a scratch database (on
//! `GRADSCOPE_TEST_POSTGRES`, by default the local server), then `--nodes` claimers, each
//! with a pool of its own standing in for a node, claim them as the scheduler does
//! (round-robin between lanes, `FOR UPDATE SKIP LOCKED`, recording the node and its lease)
//! until none is left. Prints each claim's latency (min / median / p99 / max) and the
//! claims per second of all the claimers together, and checks that every job was claimed
//! exactly once. Run without `--bench` (as `cargo test --all-targets` does), it claims a
//! few jobs, to show that it works.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use clap::Parser;
use gradscope::spec::JobSpec;
use gradscope::store::Store;
use gradscope::store::scratch::ScratchDatabase;

#[derive(Debug, Clone, Parser)]
#[command(name = "claims", about = "Claim latency and throughput of several nodes on one PostgreSQL database")]
struct ClaimArgs {
    /// Queued jobs to claim.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// Concurrent claimers, each with its own connection pool (a node).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Given by `cargo bench`; without it the benchmark only shows that it runs.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = if std::env::args().any(|a| a == "--bench") {
        ClaimArgs::parse()
    } else {
        ClaimArgs::parse_from(["claims", "--jobs", "30", "--nodes", "3"])
    };
    let database = ScratchDatabase::create().await?;
    let queue = Store::connect(database.url()).await?;
    queue.migrate().await?;
    let spec = JobSpec::parse_value(&serde_json::json!({
        "steps": 10, "task": {"kind": "classification"}, "model": {"kind": "mlp"}
    }))?;
    for _ in 0..args.jobs {
        queue.insert_job(&spec).await?;
    }
    let mut nodes = Vec::new();
    for n in 0..args.nodes {
        let store = Store::connect(database.url()).await?.for_node(&format!("bench-{n}"), Duration::from_secs(15));
        // Each pool's connection opened before the clock starts.
        store.live_nodes().await?;
        nodes.push(store);
    }
    let started = Instant::now();
    let claimers: Vec<_> = nodes
        .into_iter()
        .map(|store| {
            tokio::spawn(async move {
                let mut claimed = Vec::new();
                let mut latencies = Vec::new();
                loop {
                    let t = Instant::now();
                    let job = store.claim_next_fair("").await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    match job {
                        Some(job) => claimed.push(job.id),
                        None => return anyhow::Ok((claimed, latencies)),
                    }
                }
            })
        })
        .collect();
    let mut claimed = Vec::new();
    let mut latencies = Vec::new();
    let mut per_node = Vec::new();
    for claimer in claimers {
        let (ids, times) = claimer.await??;
        per_node.push(ids.len());
        claimed.extend(ids);
        latencies.extend(times);
    }
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(claimed.len() == args.jobs, "{} claims for {} jobs", claimed.len(), args.jobs);
    anyhow::ensure!(claimed.iter().collect::<HashSet<_>>().len() == args.jobs, "a job was claimed twice");
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!("bench claims (PostgreSQL): {} queued jobs, {} nodes claiming at once", args.jobs, args.nodes);
    println!(
        "claim latency: min {:.2} / median {:.2} / p99 {:.2} / max {:.2} ms ({} claims, the last empty one of each node included)",
        at(0.0),
        at(0.5),
        at(0.99),
        at(1.0),
        latencies.len()
    );
    println!("throughput: {:.0} claims/s ({:.2} s); jobs per node: {per_node:?}", args.jobs as f64 / seconds, seconds);
    Ok(())
}
