//! gradscope: runs LibTorch training jobs under gradient, weight and normalization policies,
//! measures per-layer gradient statistics on every step and serves them over HTTP.
//!
//! # Layout
//! Data flows one way: spec → job → worker process → step reports → sinks.
//!
//! - [`config`] — the service's settings as plain values, with their defaults (the binary's
//!   `src/cli.rs` fills them from flags and `GRADSCOPE_*` variables).
//! - [`telemetry`] — logging set-up and the shutdown signal.
//! - [`metrics`] — the Prometheus registry and the HTTP metrics middleware.
//! - [`startup`] — [`Application`], which wires the store, the scheduler and the router,
//!   binds the listener and runs until a shutdown future resolves.
//! - [`api`] — axum routers, one module per resource, one [`api::ApiError`] type.
//! - [`store`] — the only place with SQL: jobs, layers, per-step records and the
//!   pre-aggregated blocks that thin long histories, corpora.
//! - [`jobs`] — the service layer ([`jobs::Jobs`]: submit, cancel, resume, delete,
//!   corpora), the data folder ([`jobs::DataDir`]) and the scheduler: claims queued jobs,
//!   runs each in its own worker process (`gradscope worker`, [`worker`]), owns their stop
//!   requests and GPUs and writes what they report to the store.
//! - [`spec`] — the job specification: plain data, its defaults and ranges, and
//!   `JobSpec::parse`, the one way in, which yields a checked `ValidSpec`.
//! - [`train`] — synchronous `tch` code only: data, models, optimizers, policies and the
//!   training loop. Tensors never leave it.
//! - [`healthcheck`] — the `gradscope healthcheck` client.
//! - [`local`] — `gradscope run SPEC.json`, one job from the shell, through [`jobs::Jobs`].
//!
//! - [`vocab`] — the names every layer shares: statistics, event kinds, diagnosis
//!   statuses.
//!
//! The benchmarks (`benches/`) use only this public API.

pub(crate) mod api;
pub mod config;
pub mod healthcheck;
pub(crate) mod jobs;
pub mod local;
pub mod metrics;
pub mod notify;
pub mod spec;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod train;
pub mod vocab;

/// The worker process's entry point (`gradscope worker`).
pub mod worker {
    pub use crate::jobs::worker::{FAULT_VAR, WorkerOptions, run};
}

pub use startup::Application;
