//! Crash recovery with the real binary: SIGKILL mid-training loses no finished job and no
//! committed step, the database opens cleanly, and the interrupted job resumes from its
//! checkpoint, continuing its step count and loss curve, even when the store was several
//! checkpoints behind training.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Served, alive, children_of, column, serve, tiny_lstm_spec};

/// The service on the database and data folder in `dir`, with `args` added to `serve`.
async fn start(dir: &std::path::Path, args: &[&str]) -> Served {
    let db = database_url_at(dir);
    let configure = |c: &mut Command| {
        c.args(["--database-url", &db]).arg("--data-dir").arg(dir.join("data")).args(args);
    };
    serve(configure, Duration::from_secs(30)).await
}

fn database_url_at(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("gradscope.db").display())
}

async fn post_job(client: &reqwest::Client, base: String, spec: Value) -> Value {
    let url = format!("{base}/api/v1/jobs");
    client.post(url).json(&spec).send().await.expect("submit").json::<Value>().await.expect("json")
}

/// Kills the service with SIGKILL, and waits until its workers have died with it (fails
/// if one outlives it by 10 s).
fn kill(mut server: Served) {
    let workers = children_of(server.child.id());
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    drop(server);
    let killed = Instant::now();
    while workers.iter().any(|&pid| alive(pid)) {
        assert!(killed.elapsed() < Duration::from_secs(10), "a worker outlived its service: {workers:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn get(server: &Served, path: &str) -> Value {
    reqwest::get(format!("{}{path}", server.url)).await.expect("request").json().await.expect("json")
}

async fn wait(server: &Served, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let job = get(server, &format!("/api/v1/jobs/{id}")).await;
        if done(&job) {
            return job;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "job {id} stuck: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigkill_loses_nothing_committed_and_the_job_resumes() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let server = start(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let submit = |base: String, spec: Value| post_job(&client, base, spec);
    let finished = submit(server.url.clone(), tiny_lstm_spec(20, 1.0)).await["id"].as_str().expect("id").to_owned();
    wait(&server, &finished, |j| j["status"] == "succeeded").await;

    let total = 400;
    let mut spec = tiny_lstm_spec(total, 1.0);
    spec["checkpoint_every"] = json!(50);
    spec["monitor"] = json!({"histogram": false});
    let id = submit(server.url.clone(), spec).await["id"].as_str().expect("id").to_owned();
    wait(&server, &id, |j| j["step"].as_u64() > Some(130)).await;
    let committed = column(&get(&server, &format!("/api/v1/jobs/{id}/steps")).await, "step").len();
    // The job's worker, and a spare one waiting for the next job.
    let workers = children_of(server.child.id());
    assert_eq!(workers.len(), 2, "the job's worker and a spare: {workers:?}");
    // No orphan trains on: the workers die with their service.
    kill(server);

    let server = start(dir.path(), &[]).await;
    assert_eq!(get(&server, &format!("/api/v1/jobs/{finished}")).await["status"], "succeeded");
    let job = get(&server, &format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "interrupted", "{job}");
    let steps = get(&server, &format!("/api/v1/jobs/{id}/steps")).await;
    let kept = column(&steps, "step");
    assert!(kept.len() >= committed, "committed steps were lost: {} < {committed}", kept.len());
    assert_eq!(kept, (1..=kept.len()).map(|s| s as f64).collect::<Vec<_>>());
    let loss_before = column(&steps, "loss");
    let checkpoint = reqwest::get(format!("{}/api/v1/jobs/{id}/checkpoint", server.url)).await.expect("checkpoint");
    assert_eq!(checkpoint.status(), 200);

    let resumed = client.post(format!("{}/api/v1/jobs/{id}/resume", server.url)).send().await.expect("resume");
    assert_eq!(resumed.status(), 202);
    let resumed: Value = resumed.json().await.expect("json");
    let from = resumed["resumed_from"].as_u64().expect("resumed_from");
    assert!(from >= 100 && from.is_multiple_of(50) && from as usize <= kept.len(), "resumed from {from}");
    let done = wait(&server, &id, |j| j["status"] == "succeeded").await;
    assert_eq!(done["step"], total);
    let after = get(&server, &format!("/api/v1/jobs/{id}/steps")).await;
    assert_eq!(column(&after, "step"), (1..=total).map(|s| s as f64).collect::<Vec<_>>(), "the count continues");
    let loss_after = column(&after, "loss");
    assert_eq!(loss_after[..from as usize], loss_before[..from as usize], "the curve up to the checkpoint is kept");
    // Continuing with the optimizer's state, the loss carries on from where it was
    // rather than jumping back up to an untrained model's.
    let tenth = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    assert!(tenth(&loss_after[from as usize..from as usize + 20]) < tenth(&loss_after[..20]));

    // Exactly so: the same spec run without interruption gives the same losses after the
    // checkpoint (same weights, same optimizer moments, same batches).
    let mut spec = tiny_lstm_spec(total, 1.0);
    spec["checkpoint_every"] = json!(50);
    spec["monitor"] = json!({"histogram": false});
    let reference = submit(server.url.clone(), spec).await["id"].as_str().expect("id").to_owned();
    wait(&server, &reference, |j| j["status"] == "succeeded").await;
    let uninterrupted = column(&get(&server, &format!("/api/v1/jobs/{reference}/steps")).await, "loss");
    for s in from as usize..total as usize {
        let (a, b) = (loss_after[s], uninterrupted[s]);
        assert!((a - b).abs() <= 1e-5 * b.abs(), "step {}: resumed {a} vs uninterrupted {b}", s + 1);
    }

    let again = client.post(format!("{}/api/v1/jobs/{id}/resume", server.url)).send().await.expect("resume");
    assert_eq!(again.status(), 409, "a succeeded job does not resume");
}

/// Checkpoints every 5 steps of a job that runs hundreds of steps a second, while the store
/// commits reports in batches: when the service dies, training is ahead of the store by
/// more than one checkpoint, and the job resumes all the same from a checkpoint the store's
/// history reaches, trained in a worker or in the service's own process.
#[tokio::test]
async fn a_store_checkpoints_behind_training_still_resumes_after_sigkill() {
    let client = reqwest::Client::new();
    for args in [&[][..], &["--in-process"][..]] {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let server = start(dir.path(), args).await;
        let total = 600;
        let mut spec = tiny_lstm_spec(total, 1.0);
        spec["checkpoint_every"] = json!(5);
        spec["monitor"] = json!({"histogram": false});
        let id = post_job(&client, server.url.clone(), spec).await["id"].as_str().expect("id").to_owned();
        wait(&server, &id, |j| j["step"].as_u64() > Some(100)).await;
        kill(server);

        let server = start(dir.path(), args).await;
        let job = get(&server, &format!("/api/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "interrupted", "{args:?}: {job}");
        let kept = column(&get(&server, &format!("/api/v1/jobs/{id}/steps")).await, "step").len();
        let resumed = client.post(format!("{}/api/v1/jobs/{id}/resume", server.url)).send().await.expect("resume");
        let status = resumed.status();
        let resumed: Value = resumed.json().await.expect("json");
        assert_eq!(status, 202, "{args:?}: {resumed}");
        let from = resumed["resumed_from"].as_u64().expect("resumed_from");
        assert!(from > 0 && from.is_multiple_of(5) && from as usize <= kept, "{args:?}: {from} of {kept}");
        let done = wait(&server, &id, |j| j["status"] == "succeeded").await;
        assert_eq!(done["step"], total, "{args:?}");
        let steps = column(&get(&server, &format!("/api/v1/jobs/{id}/steps")).await, "step");
        assert_eq!(steps, (1..=total).map(|s| s as f64).collect::<Vec<_>>(), "{args:?}: the count continues");
        kill(server);
    }
}
