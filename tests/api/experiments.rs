//! Experiments: a grid of specs × seeds as one request, its jobs, its results per cell
//! (checked against figures computed here from each job's own records), CSV, cancel,
//! delete, and the scheduler's turns between an experiment and single jobs.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{JOB_TIMEOUT, TestApp, column, spawn_app, spawn_app_with};

/// A vanilla tanh RNN on the adding problem that trains in a moment on one CPU thread.
fn tiny_rnn(steps: u64) -> Value {
    json!({
        "seed": 3, "steps": steps, "batch_size": 16, "device": "cpu",
        "task": {"kind": "adding", "seq_len": 8, "eval_every": 10},
        "model": {"kind": "rnn", "layers": 1, "hidden": 16},
        "optimizer": {"kind": "sgd", "lr": 0.1, "momentum": 0.9},
        "policy": {"grad": [{"kind": "clip_norm", "max_norm": 1.0}]},
        "monitor": {"every": 5, "histogram": false},
    })
}

async fn post(app: &TestApp, body: &Value) -> (u16, Value) {
    let response = app.post_json("/api/v1/experiments", body).await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = app.get(path).await;
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.expect("json")
}

async fn wait_experiment(app: &TestApp, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let e = get_json(app, &format!("/api/v1/experiments/{id}")).await;
        if e["status"] == "finished" {
            return e;
        }
        assert!(start.elapsed() < JOB_TIMEOUT, "experiment {id} never finished: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Mean and sample standard deviation (n − 1) of the finite values.
fn spread(xs: &[Option<f64>]) -> (Option<f64>, Option<f64>, usize) {
    let xs: Vec<f64> = xs.iter().flatten().copied().filter(|x| x.is_finite()).collect();
    let n = xs.len();
    if n == 0 {
        return (None, None, 0);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var =
        if n > 1 { Some(xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n as f64 - 1.0)) } else { None };
    (Some(mean), var.map(f64::sqrt), n)
}

fn close(got: &Value, want: Option<f64>, what: &str) {
    match (got.as_f64(), want) {
        (None, None) => {}
        (Some(g), Some(w)) => assert!((g - w).abs() <= 1e-9 * w.abs().max(1.0), "{what}: {g} vs {w}"),
        _ => panic!("{what}: {got} vs {want:?}"),
    }
}

#[tokio::test]
async fn a_grid_runs_as_jobs_and_its_results_match_the_jobs_records() {
    grid_runs_as_jobs(&spawn_app().await).await;
}

/// The same on PostgreSQL: progress, results and thresholds from its queries.
#[tokio::test]
async fn a_grid_runs_as_jobs_and_its_results_match_the_jobs_records_on_postgres() {
    grid_runs_as_jobs(&crate::helpers::spawn_app_on_postgres().await).await;
}

async fn grid_runs_as_jobs(app: &TestApp) {
    let threshold = 0.2;
    let body = json!({
        "name": "clip-by-length",
        "base": tiny_rnn(30),
        "axes": [
            {"path": "policy.grad[0].max_norm", "values": [0.1, 10.0]},
            {"path": "task.seq_len", "values": [4, 8], "labels": ["short", "long"]},
        ],
        "seeds": 2,
        "threshold": {"metric": "loss", "at_most": threshold},
    });
    let (status, created) = post(app, &body).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["progress"]["jobs"], 8);
    assert_eq!(created["cells"].as_array().expect("cells").len(), 4);
    assert_eq!(created["cells"][2]["values"], json!([10.0, 4]));
    assert_eq!(created["cells"][2]["labels"], json!(["10.0", "short"]));

    let done = wait_experiment(app, &id).await;
    assert_eq!(done["progress"]["finished"], 8);
    let jobs = done["jobs"].as_array().expect("jobs").clone();
    assert_eq!(jobs.len(), 8);

    // Each job is an ordinary job with its cell's values, read back through the jobs API.
    let mut per_cell: Vec<Vec<Value>> = vec![Vec::new(); 4];
    for brief in &jobs {
        let job = app.job(brief["id"].as_str().expect("id")).await;
        assert_eq!(job["experiment_id"], id.as_str());
        let cell = job["cell"].as_u64().expect("cell") as usize;
        let spec = &job["spec"];
        assert_eq!(spec["policy"]["grad"][0]["max_norm"], json!([0.1, 10.0][cell / 2]));
        assert_eq!(spec["task"]["seq_len"], json!([4, 8][cell % 2]));
        per_cell[cell].push(job);
    }
    for (cell, jobs) in per_cell.iter().enumerate() {
        let mut seeds: Vec<u64> = jobs.iter().map(|j| j["spec"]["seed"].as_u64().expect("seed")).collect();
        seeds.sort_unstable();
        assert_eq!(seeds, vec![3, 4], "cell {cell}: seeds follow the base seed");
    }

    let results = get_json(app, &format!("/api/v1/experiments/{id}/results")).await;
    assert_eq!(results["axes"], json!(["policy.grad[0].max_norm", "task.seq_len"]));
    for (cell, jobs) in per_cell.iter().enumerate() {
        let got = &results["cells"][cell];
        assert_eq!(got["cell"], cell);
        // Each job's own records: its row and its history.
        let mut train = Vec::new();
        let mut val_loss = Vec::new();
        let mut val_metric = Vec::new();
        let mut reached = Vec::new();
        let mut rates = Vec::new();
        let mut diverged = 0;
        let mut solved = 0;
        for job in jobs {
            let jid = job["id"].as_str().expect("id");
            let steps = get_json(app, &format!("/api/v1/jobs/{jid}/steps?max_points=100000")).await;
            let losses = &steps["loss"];
            let last_loss = f(&job["loss"]);
            assert_eq!(job["status"], "succeeded");
            let is_diverged = last_loss.is_none();
            diverged += usize::from(is_diverged);
            let eval = &steps["eval"];
            let n = eval["step"].as_array().expect("eval steps").len();
            assert!(n >= 3, "validation every 10 steps and at the end");
            // The losses and metric are averaged over the runs that did not diverge.
            if !is_diverged {
                train.push(last_loss);
                val_loss.push(f(&eval["loss"][n - 1]));
                val_metric.push(f(&eval["value"][n - 1]));
            }
            let step = column(&steps, "step");
            let first = losses
                .as_array()
                .expect("loss")
                .iter()
                .zip(&step)
                .find(|(l, _)| l.as_f64().is_some_and(|l| l <= threshold))
                .map(|(_, s)| *s);
            if let Some(s) = first {
                reached.push(s);
            }
            if !is_diverged && last_loss.is_some_and(|l| l <= threshold) {
                solved += 1;
            }
            let started: DateTime<Utc> = job["started_at"].as_str().expect("started").parse().expect("time");
            let finished: DateTime<Utc> = job["finished_at"].as_str().expect("finished").parse().expect("time");
            let seconds = (finished - started).num_nanoseconds().expect("ns") as f64 / 1e9;
            rates.push(Some(job["step"].as_f64().expect("step") / seconds));
        }
        let n = jobs.len() as f64;
        for (name, values) in
            [("train_loss", &train), ("val_loss", &val_loss), ("val_metric", &val_metric), ("steps_per_second", &rates)]
        {
            let (mean, std, count) = spread(values);
            close(&got[name]["mean"], mean, &format!("cell {cell} {name} mean"));
            close(&got[name]["std"], std, &format!("cell {cell} {name} std"));
            assert_eq!(got[name]["n"], count, "cell {cell} {name} n");
        }
        close(&got["divergence_rate"], Some(diverged as f64 / n), "divergence rate");
        close(&got["solved_rate"], Some(f64::from(solved) / n), "solved rate");
        reached.sort_by(f64::total_cmp);
        let median = match reached.len() {
            0 => None,
            k if k % 2 == 1 => Some(reached[k / 2]),
            k => Some((reached[k / 2 - 1] + reached[k / 2]) / 2.0),
        };
        close(&got["steps_to_threshold"], median, "median steps to the threshold");
        assert_eq!(got["reached"], reached.len());
        assert_eq!(got["completed"], 2);
    }
    assert!(
        results["cells"].as_array().expect("cells").iter().any(|c| c["reached"].as_u64() > Some(0)),
        "some run reaches a training loss of {threshold}: {results}"
    );

    // The same cells as CSV.
    let response = app.get(&format!("/api/v1/experiments/{id}/results.csv")).await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("type").to_owned();
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let text = response.text().await.expect("text");
    let rows: Vec<Vec<&str>> = text.split("\r\n").filter(|l| !l.is_empty()).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 5, "a header and one row per cell: {text}");
    let header = &rows[0];
    assert_eq!(&header[..3], ["cell", "policy.grad[0].max_norm", "task.seq_len"]);
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name}"));
    for (cell, row) in rows[1..].iter().enumerate() {
        let got = &results["cells"][cell];
        assert_eq!(row[0], cell.to_string());
        assert_eq!(row[2], ["short", "long"][cell % 2]);
        for (name, json) in [
            ("train_loss_mean", &got["train_loss"]["mean"]),
            ("val_metric_std", &got["val_metric"]["std"]),
            ("divergence_rate", &got["divergence_rate"]),
            ("solved_rate", &got["solved_rate"]),
            ("steps_to_threshold", &got["steps_to_threshold"]),
            ("steps_per_second_mean", &got["steps_per_second"]["mean"]),
        ] {
            let field = row[col(name)];
            match json.as_f64() {
                Some(v) => assert_eq!(field.parse::<f64>().expect("number"), v, "cell {cell} {name}"),
                None => assert_eq!(field, "", "cell {cell} {name}"),
            }
        }
    }

    let list = get_json(app, "/api/v1/experiments").await;
    assert_eq!(list["experiments"][0]["id"], id.as_str());
    assert_eq!(list["experiments"][0]["progress"]["by_status"]["succeeded"], 8);
    assert!(list["experiments"][0].get("jobs").is_none(), "lists leave the jobs out");
}

#[tokio::test]
async fn a_bad_cell_or_a_grid_too_big_is_refused_before_any_job_exists() {
    let app = spawn_app_with(TempDir::new().expect("dir"), |c| {
        c.max_experiment_jobs = 6;
        c.max_params = 10_000;
    })
    .await;
    let refused = |body: Value, field: &'static str, says: &'static str| {
        let app = &app;
        async move {
            let (status, answer) = post(app, &body).await;
            assert_eq!(status, 422, "{answer}");
            assert_eq!(answer["error"]["code"], "invalid_field");
            assert_eq!(answer["error"]["field"], field, "{answer}");
            let message = answer["error"]["message"].as_str().expect("message");
            assert!(message.contains(says), "{message}");
        }
    };
    // The second cell's sequence length is out of range: named by its axis value and cell.
    refused(
        json!({"name": "x", "base": tiny_rnn(10), "seeds": 1,
               "axes": [{"path": "task.seq_len", "values": [8, 0]}]}),
        "axes[0].values[1]",
        "cell 1 (0): task.seq_len",
    )
    .await;
    // A cell above the service's size limits (here 10,000 parameters), found by the same
    // checks as a job's.
    refused(
        json!({"name": "x", "base": tiny_rnn(10), "seeds": 1,
               "axes": [{"path": "model.hidden", "values": [16, 128]}]}),
        "base.model",
        "cell 1 (128): model: about",
    )
    .await;
    refused(
        json!({"name": "x", "base": tiny_rnn(10), "seeds": 2,
               "axes": [{"path": "task.seq_len", "values": [4, 8, 16, 32]}]}),
        "axes",
        "4 cells × 2 seeds",
    )
    .await;
    refused(
        json!({"name": "x", "base": tiny_rnn(10), "axes": [{"path": "policy.grad[1].max_norm", "values": [1]}]}),
        "axes[0].path",
        "no policy.grad[1]",
    )
    .await;
    refused(json!({"name": "x", "base": tiny_rnn(10), "seeds": 0}), "seeds", "1 to 100").await;
    refused(json!({"name": "x", "base": tiny_rnn(10), "sedes": 2}), "sedes", "unknown field").await;
    let mut base = tiny_rnn(10);
    base["optimizer"]["lr"] = json!(-1);
    refused(json!({"name": "x", "base": base, "seeds": 1}), "base.optimizer.lr", "cell 0").await;

    let jobs = get_json(&app, "/api/v1/jobs").await;
    assert_eq!(jobs["jobs"], json!([]), "no job was created");
    let experiments = get_json(&app, "/api/v1/experiments").await;
    assert_eq!(experiments["experiments"], json!([]));
    let response = app.get("/api/v1/experiments?offset=5").await;
    assert_eq!(response.status(), 400);
    let response = app.get("/api/v1/experiments/not-a-uuid").await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn cancel_and_delete_act_on_every_job() {
    cancel_and_delete(&spawn_app().await).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn cancel_and_delete_act_on_every_job_on_postgres() {
    cancel_and_delete(&crate::helpers::spawn_app_on_postgres().await).await;
}

async fn cancel_and_delete(app: &TestApp) {
    let (status, created) = post(
        app,
        &json!({"name": "long", "base": tiny_rnn(100_000), "seeds": 3,
                           "axes": [{"path": "model.hidden", "values": [8, 16]}]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    let first = created["jobs"][0]["id"].as_str().expect("job").to_owned();
    app.wait_for(&first, "running", |j| j["status"] == "running").await;

    let response = app.client.delete(app.url(&format!("/api/v1/experiments/{id}"))).send().await.expect("delete");
    assert_eq!(response.status(), 409, "running jobs keep it");

    let response = app.client.post(app.url(&format!("/api/v1/experiments/{id}/cancel"))).send().await.expect("cancel");
    assert_eq!(response.status(), 202);
    let done = wait_experiment(app, &id).await;
    assert_eq!(done["progress"]["by_status"], json!({"cancelled": 6}), "{done}");
    let response = app.client.post(app.url(&format!("/api/v1/experiments/{id}/cancel"))).send().await.expect("cancel");
    assert_eq!(response.status(), 409, "nothing left to cancel");

    let response = app.client.delete(app.url(&format!("/api/v1/experiments/{id}"))).send().await.expect("delete");
    assert_eq!(response.status(), 204);
    assert_eq!(app.get(&format!("/api/v1/experiments/{id}")).await.status(), 404);
    assert_eq!(app.get(&format!("/api/v1/jobs/{first}")).await.status(), 404);
    let jobs = get_json(app, "/api/v1/jobs").await;
    assert_eq!(jobs["jobs"], json!([]), "its jobs went with it");
}

#[tokio::test]
async fn an_experiment_takes_turns_with_single_jobs() {
    // One slot: without turns the experiment's four jobs would all run before the two
    // single jobs submitted just after it.
    let app = spawn_app().await;
    let (status, created) = post(&app, &json!({"name": "big", "base": tiny_rnn(20), "seeds": 4})).await;
    assert_eq!(status, 201, "{created}");
    let experiment = created["id"].as_str().expect("id").to_owned();
    let mut single = tiny_rnn(20);
    single["name"] = json!("single");
    let singles = [app.submit(&single).await, app.submit(&single).await];
    let mut all: Vec<Value> = Vec::new();
    for job in created["jobs"].as_array().expect("jobs").iter().chain(&singles) {
        all.push(app.wait_finished(job["id"].as_str().expect("id")).await);
    }
    all.sort_by_key(|j| j["started_at"].as_str().expect("started").parse::<DateTime<Utc>>().expect("time"));
    let order: Vec<&str> =
        all.iter().map(|j| if j["experiment_id"] == experiment.as_str() { "experiment" } else { "single" }).collect();
    assert_eq!(order, ["experiment", "single", "experiment", "single", "experiment", "experiment"]);
}
