//! gradscope: runs LibTorch training jobs under gradient, weight and normalization policies,
//! measures per-layer gradient statistics on every step and serves them over HTTP.
//!
//! # Layout
//! Data flows one way: spec → job → training thread → step reports → sinks.
//!
//! - [`config`] — the command line and `GRADSCOPE_*` settings.
//! - [`telemetry`] — logging set-up and the shutdown signal.
//! - [`metrics`] — the Prometheus registry and the HTTP metrics middleware.
//! - [`startup`] — [`Application`], which wires the store, the scheduler and the router,
//!   binds the listener and runs until a shutdown future resolves.
//! - [`api`] — axum routers, one module per resource, one [`api::ApiError`] type.
//! - [`store`] — the only place with SQL: jobs, layers, per-step records, corpora.
//! - [`jobs`] — the scheduler: claims queued jobs, runs each on its own OS thread, owns
//!   their stop flags and writes what they report to the store.
//! - [`train`] — synchronous `tch` code only: the job spec, data, models, optimizers,
//!   policies and the training loop. Tensors never leave it.
//! - [`healthcheck`] — the `gradscope healthcheck` client.
//! - [`local`] — `gradscope run SPEC.json`, one job from the shell.
//! - [`bench`] — `gradscope bench steps|stream`: what monitoring and streaming cost.
//! - [`vocab`] — the names every layer shares: statistics, event kinds, diagnosis
//!   statuses.

pub mod api;
pub mod bench;
pub mod config;
pub mod healthcheck;
pub mod jobs;
pub mod local;
pub mod metrics;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod train;
pub mod vocab;

pub use startup::Application;
