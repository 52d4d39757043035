//! Integration tests: the real server on a random port with its own SQLite file, driven
//! over real HTTP, training real (tiny) LibTorch models on the CPU.

mod helpers;
mod jobs;
mod lifecycle;
mod presets;
mod service;
mod validation;
