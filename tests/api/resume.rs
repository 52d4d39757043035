//! Exact resume: a job stopped part-way and resumed through the API reports, step for
//! step, the numbers of the same job run without a stop — losses, global norms, every
//! per-layer statistic and every validation loss — even with batch norm (running
//! statistics), dropout (random masks) and adaptive grad policies (norm histories).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::helpers::{TestApp, column, spawn_app, spawn_app_on_postgres};

/// Every statistic a layer series holds.
const LAYER_STATS: &str = "grad_norm,grad_max,grad_mean,grad_std,zero_frac,nonfinite,weight_norm,update_ratio";

/// A batch-norm MLP with dropout under ZClip then AutoClip, slow enough per step that a
/// cancel lands mid-run.
fn spec() -> Value {
    json!({
        "name": "bn-dropout-resume",
        "seed": 11,
        "steps": 300,
        "batch_size": 256,
        "device": "cpu",
        "task": {"kind": "classification", "features": 64, "classes": 8, "eval_every": 10},
        "model": {"kind": "mlp", "layers": 3, "hidden": 256, "norm": "batch", "dropout": 0.3},
        "optimizer": {"kind": "adamw", "lr": 0.01},
        "policy": {"grad": [
            {"kind": "zclip", "alpha": 0.9, "z_threshold": 1.0, "warmup": 5},
            {"kind": "autoclip", "percentile": 30.0, "history": 50}
        ]},
        "monitor": {"histogram": false},
    })
}

/// A statistic's series, a `null` (a value that does not exist, such as the update ratio of
/// a zero-initialised tensor) read as NaN, the same bits in both runs.
fn nullable(series: &Value, name: &str) -> Vec<f64> {
    series[name]
        .as_array()
        .unwrap_or_else(|| panic!("no column {name}"))
        .iter()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect()
}

/// Everything a job recorded, by name, each a series in step order.
async fn recorded(app: &TestApp, id: &str) -> BTreeMap<String, Vec<f64>> {
    let mut all = BTreeMap::new();
    let steps: Value = app.get(&format!("/api/v1/jobs/{id}/steps?max_points=100000")).await.json().await.expect("json");
    for name in ["step", "loss", "grad_norm", "grad_norm_clipped", "clip_coef"] {
        all.insert(name.to_owned(), column(&steps, name));
    }
    let stats: Value = app
        .get(&format!("/api/v1/jobs/{id}/layer-stats?stat={LAYER_STATS}&max_points=100000"))
        .await
        .json()
        .await
        .expect("json");
    for layer in stats["layers"].as_array().expect("layers") {
        let name = layer["name"].as_str().expect("name");
        all.insert(format!("{name}/step"), column(layer, "step"));
        for stat in LAYER_STATS.split(',') {
            all.insert(format!("{name}/{stat}"), nullable(layer, stat));
        }
    }
    let events: Value =
        app.get(&format!("/api/v1/jobs/{id}/events?kind=validation&limit=1000")).await.json().await.expect("json");
    let (steps, values): (Vec<f64>, Vec<f64>) = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| (e["step"].as_f64().expect("step"), e["value"].as_f64().expect("value")))
        .unzip();
    all.insert("validation/step".to_owned(), steps);
    all.insert("validation/loss".to_owned(), values);
    all
}

#[tokio::test]
async fn a_resumed_job_reports_exactly_what_an_uninterrupted_one_does() {
    a_resumed_job_reports_what_an_uninterrupted_one_does(&spawn_app().await).await;
}

/// The same on PostgreSQL: the numbers it stores and reads back, thinned or not, are
/// those of the uninterrupted job.
#[tokio::test]
async fn a_resumed_job_reports_exactly_what_an_uninterrupted_one_does_on_postgres() {
    a_resumed_job_reports_what_an_uninterrupted_one_does(&spawn_app_on_postgres().await).await;
}

async fn a_resumed_job_reports_what_an_uninterrupted_one_does(app: &TestApp) {
    let total = spec()["steps"].as_u64().expect("steps");
    let reference = app.submit(&spec()).await["id"].as_str().expect("id").to_owned();
    assert_eq!(app.wait_finished(&reference).await["status"], "succeeded");

    let id = app.submit(&spec()).await["id"].as_str().expect("id").to_owned();
    app.wait_for(&id, "past its first validations", |j| j["step"].as_u64() > Some(25)).await;
    let cancel = app.client.post(app.url(&format!("/api/v1/jobs/{id}/cancel"))).send().await.expect("cancel");
    assert_eq!(cancel.status(), 202);
    let stopped = app.wait_finished(&id).await;
    assert_eq!(stopped["status"], "cancelled", "the job ended before it could be stopped: {stopped}");
    let resumed = app.client.post(app.url(&format!("/api/v1/jobs/{id}/resume"))).send().await.expect("resume");
    assert_eq!(resumed.status(), 202);
    let from = resumed.json::<Value>().await.expect("json")["resumed_from"].as_u64().expect("resumed_from");
    assert!(from > 25 && from < total, "resumed from {from}");
    assert_eq!(app.wait_finished(&id).await["status"], "succeeded");

    let expected = recorded(app, &reference).await;
    let got = recorded(app, &id).await;
    assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    assert_eq!(got["step"], (1..=total).map(|s| s as f64).collect::<Vec<_>>());
    assert!(got["validation/step"].len() >= 30, "{:?}", got["validation/step"]);
    // Bit for bit: the same weights, moments, running statistics, policy state, batches
    // and dropout masks give the same arithmetic.
    let mut worst: Vec<(f64, &str, usize)> = Vec::new();
    for (name, want) in &expected {
        let have = &got[name];
        assert_eq!(have.len(), want.len(), "{name}");
        for (i, (a, b)) in have.iter().zip(want).enumerate() {
            if a.to_bits() != b.to_bits() {
                worst.push(((a - b).abs(), name, i));
            }
        }
    }
    worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    let losses = worst.iter().filter(|(_, n, _)| *n == "loss").map(|w| w.0).fold(0.0, f64::max);
    assert!(
        worst.is_empty(),
        "resumed after step {from}: {} values differ, max loss difference {losses:e}, largest {:?}",
        worst.len(),
        &worst[..worst.len().min(5)]
    );
    // Thinned answers come from the pre-aggregated blocks: those the resume removed past
    // its checkpoint and wrote again give what the uninterrupted job's give.
    for query in [
        "steps?max_points=40".to_owned(),
        "layer-stats?stat=grad_norm&max_points=20".to_owned(),
        format!("layer-stats?stat={LAYER_STATS}&max_points=60&from=7"),
    ] {
        let resumed: Value = app.get(&format!("/api/v1/jobs/{id}/{query}")).await.json().await.expect("json");
        let uninterrupted: Value =
            app.get(&format!("/api/v1/jobs/{reference}/{query}")).await.json().await.expect("json");
        assert_eq!(resumed, uninterrupted, "{query}");
    }
}

/// A job stored before grad policies gained `max_grad_norm`, `exclude_head` and
/// `max_consecutive` resumes as it was submitted (no norm cap, the head clipped too, no
/// bound on skips), not with the new defaults; a job that names them keeps its values.
#[tokio::test]
async fn specs_stored_before_the_new_policy_fields_keep_their_behaviour() {
    use gradscope::spec::GradPolicy;
    use gradscope::store::Store;

    let dir = tempfile::TempDir::new().expect("temp dir");
    let url = crate::helpers::database_url(&dir);
    let store = Store::connect(&url).await.expect("store");
    store.migrate().await.expect("migrate");
    let old = json!({
        "task": {"kind": "classification"}, "model": {"kind": "mlp"},
        "policy": {"grad": [
            {"kind": "zclip", "alpha": 0.97, "z_threshold": 2.5, "warmup": 25},
            {"kind": "agc", "lambda": 0.01, "eps": 0.001},
            {"kind": "skip_spike", "z_threshold": 6.0, "alpha": 0.97, "warmup": 25},
            {"kind": "zclip", "alpha": 0.97, "z_threshold": 2.5, "warmup": 25, "max_grad_norm": 3.0},
        ]},
    });
    let id = uuid::Uuid::now_v7();
    let pool = sqlx::SqlitePool::connect(&url).await.expect("database");
    sqlx::query(
        "INSERT INTO jobs (id, name, status, spec, created_at, step, total_steps)
         VALUES (?, 'stored-earlier', 'interrupted', ?, ?, 5, 10)",
    )
    .bind(id.to_string())
    .bind(old.to_string())
    .bind(chrono::Utc::now())
    .execute(&pool)
    .await
    .expect("insert");
    sqlx::raw_sql(include_str!("../../migrations/sqlite/0005_policy_defaults_of_stored_specs.sql"))
        .execute(&pool)
        .await
        .expect("migration");
    let job = store.job(id).await.expect("read").expect("job");
    let grad = &job.spec.policy.grad;
    assert!(matches!(&grad[0], GradPolicy::Zclip(p) if p.max_grad_norm.is_none()), "{:?}", grad[0]);
    assert!(matches!(&grad[1], GradPolicy::Agc(p) if !p.exclude_head), "{:?}", grad[1]);
    assert!(matches!(&grad[2], GradPolicy::SkipSpike(p) if p.max_consecutive == 100_000), "{:?}", grad[2]);
    assert!(matches!(&grad[3], GradPolicy::Zclip(p) if p.max_grad_norm == Some(3.0)), "{:?}", grad[3]);
    // A spec stored today already names every field: the migration leaves it alone.
    let today: Value = serde_json::to_value(&job.spec).expect("json");
    assert_eq!(today["policy"]["grad"][1]["exclude_head"], false);
    store.close().await;
}
