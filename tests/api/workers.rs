//! Jobs train in worker processes: a worker that aborts, segfaults or runs out of its
//! memory fails its own job with the cause, after every step it had sent is recorded,
//! keeps its checkpoint for a resume, and touches nothing else; each worker seeds its own
//! process, so concurrent jobs train exactly as a job alone does.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{JOB_TIMEOUT, TestApp, column, spawn_app_with, tiny_lstm_spec};

/// The step after which the faulty worker dies.
const FAULT_STEP: u64 = 7;
/// The faulty job's checkpoint interval: the last checkpoint before the fault is at 5.
const CHECKPOINT_EVERY: u64 = 5;

async fn id_of(app: &TestApp, spec: &Value) -> String {
    app.submit(spec).await["id"].as_str().expect("id").to_owned()
}

/// Polls the job until it has finished, checking that the service answers meanwhile.
async fn finished_while_answering(app: &TestApp, id: &str) -> Value {
    let start = Instant::now();
    loop {
        assert_eq!(app.get("/readyz").await.status(), 200, "the service stopped answering");
        let job = app.job(id).await;
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            return job;
        }
        assert!(start.elapsed() < JOB_TIMEOUT, "job {id} never finished: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn steps_of(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/api/v1/jobs/{id}/steps?max_points=100000")).await.json().await.expect("json")
}

fn one_to(n: u64) -> Vec<f64> {
    (1..=n).map(|s| s as f64).collect()
}

/// A worker killed by `fault` ends its job `failed` with `causes` in the error; the job
/// beside it succeeds; every step sent before the death is kept, and the job resumes from
/// its last checkpoint to the end.
async fn a_dying_worker_fails_its_job_alone(fault: &str, causes: &[&str]) {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| {
        config.max_jobs = 2;
        // A tiny job's worker reserves about 3 GiB of address space: room for it, and a
        // bound the unbounded allocation meets fast.
        config.job_memory = Some(5 << 30);
        config.worker_env = vec![(gradscope::worker::FAULT_VAR.to_owned(), format!("{fault}@step{FAULT_STEP}@victim"))];
    })
    .await;
    let total = 40;
    let mut victim = tiny_lstm_spec(total, 1.0);
    victim["name"] = json!("victim");
    victim["checkpoint_every"] = json!(CHECKPOINT_EVERY);
    let mut bystander = tiny_lstm_spec(60, 1.0);
    bystander["name"] = json!("bystander");
    let victim = id_of(&app, &victim).await;
    let bystander = id_of(&app, &bystander).await;

    let failed = finished_while_answering(&app, &victim).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().expect("an error");
    for cause in causes {
        assert!(error.contains(cause), "the error does not say {cause:?}: {error}");
    }
    // The fault fires once step 7 has left the worker: steps 1..=7, no more, no fewer.
    assert_eq!(column(&steps_of(&app, &victim).await, "step"), one_to(FAULT_STEP), "committed steps were lost");
    assert_eq!(failed["step"], FAULT_STEP);

    let other = finished_while_answering(&app, &bystander).await;
    assert_eq!(other["status"], "succeeded", "{other}");
    assert_eq!(other["step"], 60);

    let resumed = app.client.post(app.url(&format!("/api/v1/jobs/{victim}/resume"))).send().await.expect("resume");
    assert_eq!(resumed.status(), 202);
    assert_eq!(resumed.json::<Value>().await.expect("json")["resumed_from"], CHECKPOINT_EVERY);
    let done = finished_while_answering(&app, &victim).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(column(&steps_of(&app, &victim).await, "step"), one_to(total));
}

#[tokio::test]
async fn a_worker_that_aborts_fails_its_job_alone() {
    a_dying_worker_fails_its_job_alone("abort", &["worker killed by signal 6 (SIGABRT)"]).await;
}

#[tokio::test]
async fn a_worker_that_segfaults_fails_its_job_alone() {
    a_dying_worker_fails_its_job_alone("segv", &["worker killed by signal 11 (SIGSEGV)"]).await;
}

#[tokio::test]
async fn a_worker_past_its_memory_limit_fails_its_job_alone() {
    // The allocator's own message, from the end of the worker's stderr, says why.
    a_dying_worker_fails_its_job_alone("oom", &["worker killed by signal 6 (SIGABRT)", "memory allocation of"]).await;
}

/// An MLP with dropout: its masks are random draws, which the job's seed alone must decide.
fn dropout_spec(name: &str) -> Value {
    json!({
        "name": name,
        "seed": 5,
        "steps": 40,
        "batch_size": 32,
        "device": "cpu",
        "task": {"kind": "classification", "features": 16, "classes": 4, "eval_every": 20},
        "model": {"kind": "mlp", "layers": 3, "hidden": 64, "dropout": 0.5},
        "optimizer": {"kind": "adamw", "lr": 0.01},
        "monitor": {"histogram": false},
    })
}

#[tokio::test]
async fn concurrent_jobs_with_dropout_train_exactly_as_one_alone() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| config.max_jobs = 2).await;
    let solo = id_of(&app, &dropout_spec("solo")).await;
    assert_eq!(app.wait_finished(&solo).await["status"], "succeeded");
    // Two at once, and a third of another seed beside them.
    let first = id_of(&app, &dropout_spec("first")).await;
    let second = id_of(&app, &dropout_spec("second")).await;
    let mut other = dropout_spec("other");
    other["seed"] = json!(6);
    let other = id_of(&app, &other).await;
    for id in [&first, &second, &other] {
        assert_eq!(app.wait_finished(id).await["status"], "succeeded");
    }
    let bits = |steps: &Value| column(steps, "loss").into_iter().map(f64::to_bits).collect::<Vec<_>>();
    let alone = bits(&steps_of(&app, &solo).await);
    assert_eq!(alone.len(), 40);
    assert_eq!(bits(&steps_of(&app, &first).await), alone, "a concurrent run differs from the solo run");
    assert_eq!(bits(&steps_of(&app, &second).await), alone, "a concurrent run differs from the solo run");
    assert_ne!(bits(&steps_of(&app, &other).await), alone, "another seed trains differently");
}

#[tokio::test]
async fn a_cancelled_job_stops_its_worker_and_keeps_its_checkpoint() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |_| {}).await;
    let id = id_of(&app, &tiny_lstm_spec(100_000, 1.0)).await;
    app.wait_for(&id, "past step 10", |job| job["step"].as_u64() > Some(10)).await;
    let cancel = app.client.post(app.url(&format!("/api/v1/jobs/{id}/cancel"))).send().await.expect("cancel");
    assert_eq!(cancel.status(), 202);
    let job = app.wait_finished(&id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let step = job["step"].as_u64().expect("step");
    assert_eq!(column(&steps_of(&app, &id).await, "step"), one_to(step));
    assert_eq!(app.get(&format!("/api/v1/jobs/{id}/checkpoint")).await.status(), 200);
}
