//! The command line: `gradscope run` trains a spec locally into a database a server reads.

use std::process::Command;

use gradscope::store::{JobStatus, Store};
use serde_json::json;

use crate::helpers::{database_url, tiny_lstm_spec};

fn gradscope() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gradscope"));
    command.env_remove("GRADSCOPE_LOG");
    command
}

#[tokio::test]
async fn run_trains_a_spec_file_and_records_it() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let spec_path = dir.path().join("spec.json");
    let mut spec = tiny_lstm_spec(40, 0.25);
    spec["monitor"] = json!({"summary_every": 20});
    std::fs::write(&spec_path, spec.to_string()).expect("write spec");
    let db = database_url(&dir);
    let output = gradscope()
        .args(["run", "--quiet", "--torch-threads", "1", "--database-url", &db, "--data-dir"])
        .arg(dir.path().join("data"))
        .arg(&spec_path)
        .output()
        .expect("gradscope runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("lstm.weight_hh_l0"), "the per-layer table lists the layers: {stdout}");
    assert!(stdout.contains("update_ratio"));
    assert!(stdout.contains("succeeded after 40 of 40 steps"), "{stdout}");
    assert!(stdout.contains("clipped"), "policy summaries are printed: {stdout}");

    let store = Store::connect(&db).await.expect("store");
    let jobs = store.list_jobs(None, 10).await.expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!((jobs[0].status, jobs[0].step), (JobStatus::Succeeded, 40));
    let steps = store.steps(jobs[0].id, 0, i64::MAX, 1000).await.expect("steps");
    assert_eq!(steps.step.len(), 40);
    store.close().await;
}

#[test]
fn run_explains_a_bad_spec_by_its_field() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let spec_path = dir.path().join("spec.json");
    let mut spec = tiny_lstm_spec(40, 0.25);
    spec["model"]["hidden"] = json!(-3);
    std::fs::write(&spec_path, spec.to_string()).expect("write spec");
    let output = gradscope()
        .args(["run", "--quiet", "--database-url", &database_url(&dir)])
        .arg(&spec_path)
        .output()
        .expect("gradscope runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("model.hidden"), "{stderr}");
}

#[tokio::test]
async fn run_trains_an_experiment_file_and_prints_its_table() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let path = dir.path().join("experiment.json");
    let experiment = json!({
        "name": "cli-grid",
        "base": {
            "steps": 15, "batch_size": 16, "device": "cpu",
            "task": {"kind": "adding", "seq_len": 6, "eval_every": 5},
            "model": {"kind": "rnn", "layers": 1, "hidden": 8},
            "policy": {"grad": [{"kind": "clip_norm", "max_norm": 1.0}]},
        },
        "axes": [{"path": "policy.grad[0].max_norm", "values": [0.5, 2.0]}],
        "seeds": 2,
        "threshold": {"metric": "val_metric", "at_least": 0.9},
    });
    std::fs::write(&path, experiment.to_string()).expect("write experiment");
    let db = database_url(&dir);
    let output = gradscope()
        .args(["run", "--quiet", "--torch-threads", "1", "--database-url", &db, "--data-dir"])
        .arg(dir.path().join("data"))
        .arg(&path)
        .output()
        .expect("gradscope runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr));
    for header in ["policy.grad[0].max_norm", "train loss", "diverged", "solved", "steps/s"] {
        assert!(stdout.contains(header), "the table has a {header} column: {stdout}");
    }
    assert!(stdout.contains("2/2"), "each cell's two runs completed: {stdout}");
    assert!(stdout.contains("4 jobs in"), "{stdout}");

    let store = Store::connect(&db).await.expect("store");
    let jobs = store.list_jobs(None, 10).await.expect("jobs");
    assert_eq!(jobs.len(), 4);
    assert!(jobs.iter().all(|j| j.status == JobStatus::Succeeded && j.experiment_id.is_some()));
    store.close().await;
}

#[test]
fn a_database_url_of_another_kind_is_refused_before_anything_is_created() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    for command in ["migrate", "serve"] {
        let output = gradscope()
            .current_dir(dir.path())
            .args([command, "--database-url", "mysql://gradscope:secret@127.0.0.1:3306/test"])
            .output()
            .expect("gradscope runs");
        assert!(!output.status.success(), "{command} must not start");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("unsupported database URL scheme \"mysql\""), "{command}: {stderr}");
        assert!(!stderr.contains("secret"), "{command}: the password stays out of the message: {stderr}");
    }
    // A PostgreSQL server that does not answer: the message names it, not the password.
    let output = gradscope()
        .current_dir(dir.path())
        .args(["migrate", "--database-url", "postgres://gradscope:secret@127.0.0.1:9/test"])
        .output()
        .expect("gradscope runs");
    assert!(!output.status.success(), "migrate must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("failed to open database postgres://127.0.0.1:9/test"), "{stderr}");
    assert!(!stderr.contains("secret"), "the password stays out of the message: {stderr}");
    // Nothing was made of the URLs: no folder `mysql:`, no database file, no data folder.
    let made: Vec<_> = std::fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
    assert!(made.is_empty(), "{made:?}");
}
