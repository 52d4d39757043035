//! Budgets: what a spec will cost in memory and in storage is estimated before it runs,
//! the estimates hold against real runs, and specs above the limits are refused by the
//! field that drives their cost.

use std::path::Path;
use std::process::Command;

use gradscope::spec::JobSpec;
use gradscope::train::budget::{self, CorpusSize};
use gradscope::train::data::builtin_corpus;
use serde_json::{Value, json};
use sqlx::Row;
use tempfile::TempDir;

use crate::helpers::{TestApp, database_url, spawn_app, spawn_app_with, tiny_lstm_spec};

async fn refused(app: &TestApp, spec: &Value) -> (u16, Value) {
    let response = app.post_json("/api/v1/jobs", spec).await;
    (response.status().as_u16(), response.json::<Value>().await.expect("json")["error"].clone())
}

fn estimate(spec: &Value, corpus: CorpusSize) -> budget::Estimate {
    let spec = JobSpec::parse_value(spec).expect("spec");
    budget::estimate(&spec, corpus)
}

/// Trains `spec` with `gradscope run` on the database and data folder in `dir`, on one
/// torch thread, and returns the peak resident memory it reports, in MiB.
fn peak_mib(dir: &Path, spec: &Value) -> f64 {
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).expect("write spec");
    let output = Command::new(env!("CARGO_BIN_EXE_gradscope"))
        .env_remove("GRADSCOPE_LOG")
        .args(["run", "--quiet", "--torch-threads", "1", "--database-url"])
        .arg(format!("sqlite://{}", dir.join("gradscope.db").display()))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg(&spec_path)
        .output()
        .expect("gradscope runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr));
    let line = stdout.lines().find_map(|l| l.strip_prefix("memory: peak resident ")).expect("a memory line");
    line.split(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("a peak in {line:?}"))
}

/// A text of about `chars` characters over 40 symbols, the same on every run.
fn corpus_text(chars: usize) -> String {
    let alphabet: Vec<char> = "abcdefghijklmnopqrstuvwxyz .,;ABCDEFGHIJ".chars().collect();
    let mut state: u64 = 12345;
    (0..chars)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            alphabet[(state >> 33) as usize % alphabet.len()]
        })
        .collect()
}

/// For each kind of spec, the memory a real run adds over a tiny twin of the same kind
/// is within 2× of what the estimate adds: an MLP whose task data dominate, an LSTM
/// whose 256-window validation pass dominates a batch of 4, a transformer whose
/// training step dominates, and a model whose weights and optimizer state dominate.
#[tokio::test]
async fn memory_estimates_hold_within_2x_of_measured_peaks() {
    // An uploaded corpus long enough for 256 validation windows of 128 characters.
    let text = corpus_text(400_000);
    let app = spawn_app().await;
    let response = app.upload_corpus(text.clone()).await;
    assert_eq!(response.status(), 201);
    let corpus_id = response.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    let dir = app.stop().await;
    let uploaded = CorpusSize::of_text(&text);
    let tiny = CorpusSize::of_text(builtin_corpus("builtin:tiny").expect("tiny"));

    let base = json!({"steps": 3, "seed": 1, "device": "cpu"});
    let with = |extra: Value| {
        let mut spec = base.clone();
        for (k, v) in extra.as_object().expect("object") {
            spec[k] = v.clone();
        }
        spec
    };
    let cases = [
        (
            "mlp, classification centres",
            with(json!({"task": {"kind": "classification", "features": 4096, "classes": 1000, "clusters": 16},
                "model": {"kind": "mlp", "layers": 1, "hidden": 16}})),
            with(json!({"task": {"kind": "classification", "features": 16, "classes": 10, "clusters": 1},
                "model": {"kind": "mlp", "layers": 1, "hidden": 16}})),
            CorpusSize::default(),
        ),
        (
            "lstm char_lm, validation",
            with(json!({"batch_size": 4, "task": {"kind": "char_lm", "corpus": corpus_id, "seq_len": 128},
                "model": {"kind": "lstm", "layers": 2, "hidden": 512}})),
            with(
                json!({"batch_size": 4, "task": {"kind": "char_lm", "corpus": corpus_id, "seq_len": 128, "eval_every": 0},
                "model": {"kind": "lstm", "layers": 2, "hidden": 8}}),
            ),
            uploaded,
        ),
        (
            "transformer char_lm, training step",
            with(json!({"batch_size": 32, "task": {"kind": "char_lm", "seq_len": 128, "eval_every": 0},
                "model": {"kind": "transformer", "layers": 4, "hidden": 256, "heads": 4, "norm": "layer"}})),
            with(json!({"batch_size": 2, "task": {"kind": "char_lm", "seq_len": 16, "eval_every": 0},
                "model": {"kind": "transformer", "layers": 4, "hidden": 16, "heads": 4, "norm": "layer"}})),
            tiny,
        ),
        (
            "mlp, weights and optimizer state",
            with(json!({"batch_size": 8, "task": {"kind": "classification", "features": 64, "eval_every": 0},
                "model": {"kind": "mlp", "layers": 4, "hidden": 2048}})),
            with(json!({"batch_size": 8, "task": {"kind": "classification", "features": 64, "eval_every": 0},
                "model": {"kind": "mlp", "layers": 4, "hidden": 16}})),
            CorpusSize::default(),
        ),
    ];
    let mut report = Vec::new();
    for (name, big, twin, corpus) in &cases {
        let estimated = (estimate(big, *corpus).memory.total() as f64 - estimate(twin, *corpus).memory.total() as f64)
            / f64::from(1 << 20);
        assert!(estimated > 150.0, "{name}: size the case to a few hundred MiB, not {estimated:.0}");
        let measured = peak_mib(dir.path(), big) - peak_mib(dir.path(), twin);
        let ratio = measured / estimated;
        report.push(format!("{name}: measured {measured:.0} MiB, estimated {estimated:.0} MiB, ratio {ratio:.2}"));
        eprintln!("{}", report.last().expect("line"));
        assert!((0.5..=2.0).contains(&ratio), "{report:#?}");
    }
}

/// The spec: 10 000 classes × 64 clusters × 16 384 features of centres (40 GiB)
/// got 201 and then aborted the process. It is refused, and the service goes on.
#[tokio::test]
async fn a_task_larger_than_memory_is_refused_by_its_field() {
    let app = spawn_app().await;
    let spec = json!({"device": "cpu", "task": {"kind": "classification", "features": 16384, "classes": 10000,
        "clusters": 64}, "model": {"kind": "mlp"}});
    let (status, error) = refused(&app, &spec).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("task.features")), "{error}");
    let message = error["message"].as_str().expect("message");
    assert!(message.contains("MiB") && message.contains("8192 MiB"), "{message}");
    assert_eq!(app.get("/healthz").await.status(), 200);
    let jobs: Value = app.get("/api/v1/jobs").await.json().await.expect("json");
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(0));
    let ok = app.submit(&tiny_lstm_spec(3, 1.0)).await;
    app.wait_finished(ok["id"].as_str().expect("id")).await;
    app.stop().await;
}

/// The validation pass runs on 256 samples whatever the batch size, and is counted.
#[tokio::test]
async fn a_validation_pass_larger_than_memory_names_the_sequence_length() {
    let dir = TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| config.max_job_memory = 512 << 20).await;
    let spec = json!({"device": "cpu", "batch_size": 1, "task": {"kind": "adding", "seq_len": 4000},
        "model": {"kind": "gru", "layers": 2, "hidden": 256}});
    let (status, error) = refused(&app, &spec).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("task.seq_len")), "{error}");
    let mut off = spec.clone();
    off["task"]["eval_every"] = json!(0);
    off["steps"] = json!(1);
    let job = app.submit(&off).await;
    app.wait_finished(job["id"].as_str().expect("id")).await;
    app.stop().await;
}

/// Policy lists are capped; within the cap, stateful policies count in the budget (an
/// AutoClip history is allocated whole at the start).
#[tokio::test]
async fn policy_lists_are_capped_and_their_state_counted() {
    let dir = TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| config.max_job_memory = 48 << 20).await;
    let autoclip = json!({"kind": "autoclip", "history": 1_000_000});
    let mut many = tiny_lstm_spec(3, 1.0);
    many["policy"] = json!({"grad": vec![autoclip.clone(); 17]});
    let (status, error) = refused(&app, &many).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("policy.grad")), "{error}");
    assert!(error["message"].as_str().expect("message").contains("16"), "{error}");
    let mut weights = tiny_lstm_spec(3, 1.0);
    weights["policy"] = json!({"weight": vec![json!({"kind": "clip", "limit": 1.0}); 17]});
    let (status, error) = refused(&app, &weights).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("policy.weight")), "{error}");

    // Sixteen histories of a million norms: 64 MiB before the first step.
    let mut heavy = tiny_lstm_spec(3, 1.0);
    heavy["policy"] = json!({"grad": vec![autoclip; 16]});
    let (status, error) = refused(&app, &heavy).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("policy.grad")), "{error}");
    let mut light = tiny_lstm_spec(3, 1.0);
    light["policy"] = json!({"grad": vec![json!({"kind": "autoclip", "history": 1000}); 16]});
    let job = app.submit(&light).await;
    assert_eq!(app.wait_finished(job["id"].as_str().expect("id")).await["status"], "succeeded");
    app.stop().await;
}

/// A job whose records would exceed the storage limit is refused on `monitor.every`, with
/// the smallest value that fits; that value is accepted and one less is not.
#[tokio::test]
async fn a_job_storing_too_much_is_told_the_monitor_every_that_fits() {
    let dir = TempDir::new().expect("temp dir");
    let app = spawn_app_with(dir, |config| config.max_job_disk = 16 << 20).await;
    let spec = tiny_lstm_spec(100_000, 1.0);
    let (status, error) = refused(&app, &spec).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("monitor.every")), "{error}");
    let message = error["message"].as_str().expect("message");
    assert!(message.contains("monitor.histogram"), "{message}");
    let every: u64 = message
        .split("monitor.every ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no monitor.every value in {message}"));
    assert!(every > 1, "{message}");
    let mut short = spec.clone();
    short["monitor"] = json!({"every": every - 1});
    let (status, _) = refused(&app, &short).await;
    assert_eq!(status, 422);
    let mut fits = spec.clone();
    fits["monitor"] = json!({"every": every});
    let job = app.submit(&fits).await;
    let id = job["id"].as_str().expect("id");
    app.client.post(app.url(&format!("/api/v1/jobs/{id}/cancel"))).send().await.expect("cancel");
    app.wait_finished(id).await;
    // Even one recorded step a run is too much when the step rows alone do not fit.
    let mut endless = tiny_lstm_spec(10_000_000, 1.0);
    endless["monitor"] = json!({"every": 0});
    let (status, error) = refused(&app, &endless).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("steps")), "{error}");
    app.stop().await;
}

/// `stored_bytes` is exactly what the job's rows hold, counted here from the database
/// itself, and the storage estimate is within 2× of it.
#[tokio::test]
async fn stored_bytes_count_what_a_job_wrote() {
    let app = spawn_app().await;
    let spec = tiny_lstm_spec(60, 0.25);
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    let job = app.wait_finished(&id).await;
    assert_eq!(job["status"], "succeeded");
    let stored = job["stored_bytes"].as_u64().expect("stored_bytes");

    let pool = sqlx::SqlitePool::connect(&database_url(&app.dir)).await.expect("database");
    let mut counted = 0;
    for row in sqlx::query("SELECT job_id FROM steps WHERE job_id = ?").bind(&id).fetch_all(&pool).await.expect("steps")
    {
        // The job id, and eight numbers (with the row number) at 8 bytes.
        counted += row.get::<String, _>(0).len() + 8 * 8;
    }
    let stats = sqlx::query(
        "SELECT job_id, grad_norm, grad_max, grad_mean, grad_std, zero_frac, nonfinite, underflow,
             weight_norm, update_ratio, hist FROM layer_stats WHERE job_id = ?",
    )
    .bind(&id)
    .fetch_all(&pool)
    .await
    .expect("layer stats");
    assert_eq!(stats.len(), 60);
    for row in &stats {
        // Step and row number; a histogram's row number beside it.
        counted += row.get::<String, _>(0).len() + 2 * 8;
        for column in 1..=10 {
            counted += row.get::<Option<Vec<u8>>, _>(column).map_or(0, |b| b.len());
        }
        counted += row.get::<Option<Vec<u8>>, _>(10).map_or(0, |_| 8);
    }
    // The pre-aggregated blocks: one per 16 rows of each table (60 rows: three), each with
    // its level, index and last row, and a cell of 2 values and 3 row numbers per series
    // (float64 for the loss and gradient norm, float32 for each statistic of 7 layers).
    for (table, cell_bytes) in [("step_rollups", 2 * (2 * 8 + 12)), ("layer_rollups", 7 * 9 * (2 * 4 + 12))] {
        let blocks = sqlx::query(&format!("SELECT job_id, level, cells FROM {table} WHERE job_id = ?"))
            .bind(&id)
            .fetch_all(&pool)
            .await
            .expect("blocks");
        assert_eq!(blocks.len(), 3, "{table}");
        for row in &blocks {
            assert_eq!(row.get::<i64, _>(1), 1, "{table}");
            assert_eq!(row.get::<Vec<u8>, _>(2).len(), cell_bytes, "{table}");
            counted += row.get::<String, _>(0).len() + 3 * 8 + cell_bytes;
        }
    }
    let events = sqlx::query("SELECT job_id, kind, message FROM events WHERE job_id = ?")
        .bind(&id)
        .fetch_all(&pool)
        .await
        .expect("events");
    assert!(!events.is_empty());
    for row in &events {
        let text: usize = (0..3).map(|c| row.get::<String, _>(c).len()).sum();
        counted += text + 4 * 8;
    }
    // Measurements besides the per-layer statistics: by default the spectral radius every
    // 100 steps (step 1 only), the temporal profile every 10 (steps 1, 11, …, 51), the
    // forward signal on every recorded step.
    let probes = sqlx::query("SELECT job_id, kind, value FROM probes WHERE job_id = ?")
        .bind(&id)
        .fetch_all(&pool)
        .await
        .expect("probes");
    let count = |kind: &str| probes.iter().filter(|r| r.get::<String, _>(1) == kind).count();
    assert_eq!((count("spectral"), count("time"), count("signal")), (1, 6, 60));
    for row in &probes {
        counted += row.get::<String, _>(0).len() + 8 + row.get::<String, _>(1).len() + row.get::<Vec<u8>, _>(2).len();
    }
    pool.close().await;
    assert_eq!(stored, counted as u64);

    let corpus = CorpusSize::of_text(builtin_corpus("builtin:tiny").expect("tiny"));
    let estimated = estimate(&spec, corpus).disk.records(1) as f64;
    let ratio = stored as f64 / estimated;
    assert!((0.5..=2.0).contains(&ratio), "stored {stored}, estimated {estimated}");
    app.stop().await;
}

/// Step windows are bounded: a cool-down of `u64::MAX` used to wrap and turn the
/// cool-down off.
#[tokio::test]
async fn monitor_windows_are_bounded() {
    let app = spawn_app().await;
    for field in ["cooldown", "diagnose_window", "summary_every", "every", "spectral_every"] {
        let mut spec = tiny_lstm_spec(10, 1.0);
        let mut monitor = serde_json::Map::new();
        monitor.insert(field.to_owned(), json!(u64::MAX));
        spec["monitor"] = Value::Object(monitor);
        let (status, error) = refused(&app, &spec).await;
        assert_eq!((status, error["field"].as_str()), (422, Some(format!("monitor.{field}").as_str())), "{error}");
    }
    let mut longest = tiny_lstm_spec(3, 1.0);
    longest["monitor"] = json!({"cooldown": 10_000_000});
    let job = app.submit(&longest).await;
    app.wait_finished(job["id"].as_str().expect("id")).await;
    app.stop().await;
}
