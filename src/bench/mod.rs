//! Benchmarks that print figures (never asserted in tests).
//!
//! - [`steps`] — `gradscope bench steps`: the step-time cost of monitoring.
//! - [`stream`] — `gradscope bench stream`: a job's step rate and delivery latency with
//!   hundreds of WebSocket subscribers.
//! - [`store`] — `gradscope bench store`: writing and querying a 100k-step history.

pub mod steps;
pub mod store;
pub mod stream;

use clap::Subcommand;

#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Step time bare, with full per-layer statistics, and with clipping.
    Steps(steps::StepsArgs),
    /// Step rate and delivery latency of one job with many WebSocket subscribers.
    Stream(stream::StreamArgs),
    /// Writes and range queries of a long job's history (100k steps × 100 layers).
    Store(store::StoreArgs),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Steps(args) => tokio::task::spawn_blocking(move || steps::run(&args)).await?,
        BenchCommand::Stream(args) => stream::run(&args).await,
        BenchCommand::Store(args) => store::run(&args).await,
    }
}
