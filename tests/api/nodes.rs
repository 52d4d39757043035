//! Several nodes on one PostgreSQL database and one data folder, each a real `gradscope
//! serve` process on a loopback port: queued jobs spread over the nodes and each runs
//! once; a node killed mid-job has its job finished by another, the step count continuous;
//! a job whose node was lost is resumed until it has started `--max-attempts` times.

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gradscope::store::Store;
use gradscope::store::scratch::ScratchDatabase;
use serde_json::{Value, json};

use crate::helpers::{Served, alive, children_of, column, serve, spawn_app_on_database, tiny_lstm_spec};

/// The lease the nodes run with when one is killed: it is taken over after this.
const LEASE_SECS: u64 = 2;

/// A node: its id and its `gradscope serve` process.
struct Node {
    id: String,
    served: Served,
}

async fn start_node(id: &str, database: &str, data: &std::path::Path, lease_secs: u64) -> Node {
    let configure = |c: &mut Command| {
        c.args(["--database-url", database, "--max-jobs", "1", "--node-id", id])
            .args(["--lease-secs", &lease_secs.to_string()])
            .arg("--data-dir")
            .arg(data);
        if std::env::var_os("GRADSCOPE_TEST_NODE_LOGS").is_some() {
            c.stderr(Stdio::inherit());
        }
    };
    Node { id: id.to_owned(), served: serve(configure, Duration::from_secs(60)).await }
}

/// Three nodes `node-a`, `node-b`, `node-c` on `database`, sharing the data folder in `dir`.
async fn three_nodes(database: &str, dir: &std::path::Path, lease_secs: u64) -> Vec<Node> {
    let data = dir.join("data");
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b", "node-c"] {
        nodes.push(start_node(id, database, &data, lease_secs).await);
    }
    nodes
}

async fn get(url: &str) -> Value {
    let response = reqwest::get(url).await.expect("request");
    assert!(response.status().is_success(), "{url}: {}", response.status());
    response.json().await.expect("json")
}

async fn submit(node: &Node, spec: &Value) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/jobs", node.served.url))
        .json(spec)
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned()
}

async fn wait(node: &Node, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let job = get(&format!("{}/api/v1/jobs/{id}", node.served.url)).await;
        if done(&job) {
            return job;
        }
        assert!(start.elapsed() < Duration::from_secs(240), "job {id} never became {what}: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The steps job `id` stored, as read through `node`.
async fn steps(node: &Node, id: &str) -> Vec<f64> {
    column(&get(&format!("{}/api/v1/jobs/{id}/steps?max_points=100000", node.served.url)).await, "step")
}

fn one_to(n: u64) -> Vec<f64> {
    (1..=n).map(|s| s as f64).collect()
}

#[tokio::test]
async fn twelve_jobs_submitted_to_one_node_spread_over_three_and_each_runs_once() {
    let database = ScratchDatabase::create().await.expect("a scratch PostgreSQL database");
    let dir = tempfile::TempDir::new().expect("temp dir");
    // No node is killed: the default lease.
    let nodes = three_nodes(database.url(), dir.path(), 15).await;
    let total = 40;
    let mut ids = Vec::new();
    for i in 0..12 {
        let mut spec = tiny_lstm_spec(total, 1.0);
        spec["name"] = json!(format!("spread-{i}"));
        spec["monitor"] = json!({"histogram": false});
        ids.push(submit(&nodes[0], &spec).await);
    }
    let mut ran_on: BTreeMap<String, usize> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        // Any node answers for every job.
        let reader = &nodes[i % 3];
        let job = wait(reader, id, "finished", |j| !matches!(j["status"].as_str(), Some("queued" | "running"))).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 1, "claimed once: {job}");
        assert_eq!(steps(reader, id).await, one_to(total), "each step stored once: {job}");
        *ran_on.entry(job["node_id"].as_str().expect("a node ran it").to_owned()).or_default() += 1;
    }
    let names: HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ran_on.keys().map(String::as_str).collect::<HashSet<_>>(), names, "every node ran a job: {ran_on:?}");
    assert_eq!(ran_on.values().sum::<usize>(), 12);

    // The database's figures are exported by one node (the smallest live id), the
    // running jobs by each node itself.
    let mut exported = Vec::new();
    for node in &nodes {
        let text =
            reqwest::get(format!("{}/metrics", node.served.url)).await.expect("metrics").text().await.expect("text");
        let samples = crate::helpers::parse_exposition(&text);
        let find = |metric: &str, status: Option<&str>| {
            samples
                .iter()
                .find(|s| {
                    s.metric == metric && status.is_none_or(|st| s.labels.get("status").map(String::as_str) == Some(st))
                })
                .map(|s| s.value)
        };
        exported.push((node.id.clone(), find("gradscope_jobs", Some("succeeded")), find("gradscope_nodes", None)));
    }
    assert_eq!(
        exported,
        vec![
            ("node-a".to_owned(), Some(12.0), Some(3.0)),
            ("node-b".to_owned(), None, None),
            ("node-c".to_owned(), None, None),
        ]
    );
}

#[tokio::test]
async fn a_job_on_a_killed_node_resumes_on_another_and_its_steps_continue() {
    let database = ScratchDatabase::create().await.expect("a scratch PostgreSQL database");
    let dir = tempfile::TempDir::new().expect("temp dir");
    let mut nodes = three_nodes(database.url(), dir.path(), LEASE_SECS).await;
    let total = 400;
    let mut spec = tiny_lstm_spec(total, 1.0);
    spec["checkpoint_every"] = json!(50);
    spec["monitor"] = json!({"histogram": false});
    let id = submit(&nodes[0], &spec).await;
    let running = wait(&nodes[0], &id, "past its second checkpoint", |j| j["step"].as_u64() > Some(130)).await;
    let lost = running["node_id"].as_str().expect("the node running it").to_owned();
    let at = nodes.iter().position(|n| n.id == lost).expect("one of the three");
    let mut killed = nodes.remove(at);
    let workers = children_of(killed.served.child.id());
    killed.served.child.kill().expect("SIGKILL");
    killed.served.child.wait().expect("reaped");
    let when = Instant::now();
    drop(killed);
    // Its workers die with it: no orphan trains on and writes the job's steps.
    while workers.iter().any(|&pid| alive(pid)) {
        assert!(when.elapsed() < Duration::from_secs(10), "a worker outlived its node: {workers:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resumed = wait(&nodes[0], &id, "running on another node", |j| {
        j["status"] == "running" && j["node_id"].as_str().is_some_and(|n| n != lost)
    })
    .await;
    // Within the lease and a sweep, generously.
    assert!(when.elapsed() < Duration::from_secs(60), "taken over after {:?}", when.elapsed());
    let from = resumed["resumed_from"].as_u64().expect("resumed from a checkpoint");
    assert!(from >= 100 && from.is_multiple_of(50), "resumed from {from}");
    assert_eq!(resumed["attempts"], 2);
    let done = wait(&nodes[1], &id, "finished", |j| !matches!(j["status"].as_str(), Some("queued" | "running"))).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["step"], total);
    assert_ne!(done["node_id"].as_str(), Some(lost.as_str()));
    for node in &nodes {
        assert_eq!(steps(node, &id).await, one_to(total), "no step missing or twice");
    }
}

/// The job a node claimed before it vanished (a store claiming for node `ghost`, which
/// never renews): the live node takes it over and starts it again from the start (no
/// checkpoint), unless it has started `--max-attempts` times already.
#[tokio::test]
async fn a_lost_nodes_job_is_resumed_until_the_attempts_run_out() {
    let database = ScratchDatabase::create().await.expect("a scratch PostgreSQL database");
    let ghost = Store::connect(database.url()).await.expect("connect").for_node("ghost", Duration::from_millis(1));
    ghost.migrate().await.expect("migrate");
    let spec = |name: &str| {
        let mut spec = tiny_lstm_spec(30, 1.0);
        spec["name"] = json!(name);
        gradscope::spec::JobSpec::parse(spec.to_string().as_bytes()).expect("spec")
    };
    // Started twice already, the most `--max-attempts 2` allows: left interrupted.
    let twice = ghost.insert_job(&spec("twice")).await.expect("job").id;
    ghost.claim_job(twice).await.expect("claim").expect("claimed");
    let sweeper = ghost.clone().for_node("sweeper", Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let taken = sweeper.take_over_expired(100).await.expect("sweep");
    assert_eq!(taken.iter().map(|t| t.id).collect::<Vec<_>>(), [twice]);
    assert!(sweeper.requeue_from_start(twice, i64::MAX).await.expect("requeue"));
    assert_eq!(ghost.claim_job(twice).await.expect("claim").map(|j| j.attempts), Some(2));
    // Started once: resumed.
    let once = ghost.insert_job(&spec("once")).await.expect("job").id;
    assert_eq!(ghost.claim_job(once).await.expect("claim").map(|j| j.attempts), Some(1));

    let app = spawn_app_on_database(database, |config| {
        config.max_attempts = 2;
        config.lease = Duration::from_secs(LEASE_SECS);
    })
    .await;
    // Interrupted for a moment, then queued again.
    let settled =
        |j: &Value| j["status"] == "succeeded" || j["error"].as_str().is_some_and(|e| e.contains("not resumed"));
    let done = app.wait_for(&once.to_string(), "succeeded", settled).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["resumed_from"], Value::Null, "from the start: it had no checkpoint");
    assert_eq!(column(&app.job_steps(&once.to_string()).await, "step"), one_to(30));
    let left = app.wait_for(&twice.to_string(), "left interrupted", settled).await;
    assert_eq!(left["status"], "interrupted");
    assert_eq!(
        left["error"],
        "node ghost stopped renewing its lease (lost) while the job was running; \
         not resumed: it has started 2 times, the most --max-attempts allows"
    );
}

/// A cancel sent to a node that does not run the job reaches the node that does: the job
/// ends `cancelled` on its own node, well before its last step.
#[tokio::test]
async fn a_cancel_sent_to_another_node_stops_the_job() {
    let database = ScratchDatabase::create().await.expect("a scratch PostgreSQL database");
    let dir = tempfile::TempDir::new().expect("temp dir");
    let data = dir.path().join("data");
    let nodes = [
        start_node("node-a", database.url(), &data, LEASE_SECS).await,
        start_node("node-b", database.url(), &data, LEASE_SECS).await,
    ];
    let id = submit(&nodes[0], &tiny_lstm_spec(1_000_000, 1.0)).await;
    let running = wait(&nodes[0], &id, "running", |j| j["status"] == "running" && j["step"].as_i64() > Some(0)).await;
    let runner = running["node_id"].as_str().expect("the running node").to_owned();
    let other = nodes.iter().find(|n| n.id != runner).expect("a node that does not run it");
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/jobs/{id}/cancel", other.served.url))
        .send()
        .await
        .expect("cancel");
    assert!(response.status().is_success(), "cancel answered {}", response.status());
    let ended = wait(other, &id, "cancelled", |j| j["status"].as_str().is_some_and(|s| s != "running")).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert_eq!(ended["node_id"].as_str(), Some(runner.as_str()), "it ended on the node that ran it");
    assert!(ended["step"].as_i64().is_some_and(|s| s < 1_000_000), "{ended}");
}
