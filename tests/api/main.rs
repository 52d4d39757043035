//! Integration tests: the real server on a random port with its own SQLite file, driven
//! over real HTTP, training real (tiny) LibTorch models on the CPU.

mod auth;
mod bounds;
mod budget;
mod cli;
mod corpora;
mod crash;
mod dashboard;
mod deploy;
mod experiments;
mod faults;
#[path = "../parity/fixtures.rs"]
mod fixtures;
mod helpers;
mod jobs;
mod lifecycle;
mod limits;
mod metrics;
mod nodes;
mod notify;
mod origin;
mod policies;
mod postgres;
mod precision;
mod presets;
mod probes;
mod prometheus;
mod queries;
mod relay;
mod resume;
mod service;
mod spec_schema;
mod stats;
mod stream;
mod tasks;
mod user_models;
mod validation;
mod workers;
