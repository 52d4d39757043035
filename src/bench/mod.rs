//! Benchmarks that print figures (never asserted in tests).
//!
//! - [`steps`] — `gradscope bench steps`: the step-time cost of monitoring.
//! - [`stream`] — `gradscope bench stream`: a job's step rate and delivery latency with
//!   hundreds of WebSocket subscribers.

pub mod steps;
pub mod stream;

use clap::Subcommand;

#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Step time bare, with full per-layer statistics, and with clipping.
    Steps(steps::StepsArgs),
    /// Step rate and delivery latency of one job with many WebSocket subscribers.
    Stream(stream::StreamArgs),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Steps(args) => tokio::task::spawn_blocking(move || steps::run(&args)).await?,
        BenchCommand::Stream(args) => stream::run(&args).await,
    }
}
