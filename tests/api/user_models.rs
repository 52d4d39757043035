//! Uploaded TorchScript models and safetensors data sets: what an upload answers, every
//! bad input refused with the field (or tensor) at fault, the dry run that refuses a
//! model and data set that do not fit, deletion refused while a job uses them, and an
//! exact resume with batch norm's running statistics. The files come from
//! `tests/parity/user_models.py`, run with the torch venv's `python`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::helpers::{TestApp, column, spawn_app, spawn_app_with};

const OCTETS: &str = "application/octet-stream";

/// The files, with a short PyTorch run (these tests do not compare against it).
fn fixtures() -> tempfile::TempDir {
    crate::fixtures::user_models(2, 1.0, 0.01)
}

async fn upload(app: &TestApp, what: &str, bytes: Vec<u8>) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/api/v1/{what}")))
        .header("content-type", OCTETS)
        .body(bytes)
        .send()
        .await
        .expect("upload")
}

async fn upload_file(app: &TestApp, what: &str, file: &Path) -> reqwest::Response {
    upload(app, what, std::fs::read(file).expect("fixture")).await
}

async fn upload_ok(app: &TestApp, what: &str, file: &Path) -> Value {
    let response = upload_file(app, what, file).await;
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_eq!(status, 201, "{body}");
    body
}

/// A 422 answer's field and message.
async fn refused(response: reqwest::Response) -> (String, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_field", "{body}");
    let field = body["error"]["field"].as_str().unwrap_or_default().to_owned();
    (field, body["error"]["message"].as_str().expect("message").to_owned())
}

async fn delete(app: &TestApp, what: &str, id: &str) -> reqwest::StatusCode {
    app.client.delete(app.url(&format!("/api/v1/{what}/{id}"))).send().await.expect("delete").status()
}

fn spec(model: &str, dataset: &str, steps: u64) -> Value {
    json!({
        "seed": 5,
        "steps": steps,
        "batch_size": 8,
        "device": "cpu",
        "model": {"kind": "torchscript", "id": model},
        "task": {"kind": "dataset", "id": dataset, "loss": "cross_entropy", "eval_every": 5},
        "optimizer": {"kind": "adamw", "lr": 0.01},
        "policy": {"grad": [{"kind": "clip_norm", "max_norm": 1.0}]},
    })
}

#[tokio::test]
async fn an_uploaded_model_lists_its_parameters_and_can_be_read_listed_and_deleted() {
    let files = fixtures();
    let app = spawn_app().await;
    let model = upload_ok(&app, "models", &files.path().join("mlp.pt")).await;
    let names: Vec<&str> =
        model["parameters"].as_array().expect("parameters").iter().map(|p| p["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]);
    assert_eq!(model["parameters"][0]["shape"], json!([16, 6]));
    assert_eq!(model["parameters"][0]["numel"], 96);
    assert_eq!(model["parameters"][0]["dtype"], "float32");
    assert_eq!(model["params"], 96 + 16 + 16 + 16 + 48 + 3);
    let id = model["id"].as_str().expect("id");

    let one: Value = app.get(&format!("/api/v1/models/{id}")).await.json().await.expect("json");
    assert_eq!(one["parameters"], model["parameters"]);
    let list: Value = app.get("/api/v1/models").await.json().await.expect("json");
    assert_eq!(list["count"], 1);
    assert_eq!(list["models"][0]["id"], id);

    let set = upload_ok(&app, "datasets", &files.path().join("mlp.safetensors")).await;
    assert_eq!((set["samples"].as_i64(), set["val_samples"].as_i64()), (Some(16), Some(4)));
    let x = &set["tensors"][0];
    assert_eq!((x["name"].as_str(), x["dtype"].as_str(), &x["shape"]), (Some("x"), Some("float32"), &json!([16, 6])));
    let set_id = set["id"].as_str().expect("id");
    let sets: Value = app.get("/api/v1/datasets").await.json().await.expect("json");
    assert_eq!(sets["count"], 1);

    assert_eq!(delete(&app, "models", id).await, 204);
    assert_eq!(app.get(&format!("/api/v1/models/{id}")).await.status(), 404);
    assert_eq!(delete(&app, "models", id).await, 404);
    assert_eq!(delete(&app, "datasets", set_id).await, 204);
    assert!(!app.dir.path().join("data/datasets").join(format!("{set_id}.safetensors")).exists());
    assert_eq!(app.get("/api/v1/models/not-an-id").await.status(), 404);
}

#[tokio::test]
async fn bad_uploads_are_refused_with_the_reason() {
    let files = fixtures();
    let app = spawn_app_with(tempfile::TempDir::new().expect("dir"), |c| c.upload_limit = 40_000).await;
    let (field, message) = refused(upload(&app, "models", b"definitely not a zip archive".to_vec()).await).await;
    assert_eq!(field, "body");
    assert!(message.contains("not a TorchScript module"), "{message}");
    let (_, message) = refused(upload_file(&app, "models", &files.path().join("frozen.pt")).await).await;
    assert!(message.contains("no trainable parameters"), "{message}");
    // gpt.pt is about 50 kB: above this service's 40 kB limit.
    let big = upload_file(&app, "models", &files.path().join("gpt.pt")).await;
    assert_eq!(big.status(), 413);
    let plain = app.client.post(app.url("/api/v1/models")).header("content-type", "text/plain").body("x");
    assert_eq!(plain.send().await.expect("send").status(), 415);

    let (field, message) = refused(upload_file(&app, "datasets", &files.path().join("nan.safetensors")).await).await;
    assert_eq!(field, "x");
    assert!(message.contains("NaN"), "{message}");
    let (field, message) =
        refused(upload_file(&app, "datasets", &files.path().join("short_y.safetensors")).await).await;
    assert_eq!(field, "y");
    assert!(message.contains("15 samples but x has 16"), "{message}");
    let (field, _) = refused(upload(&app, "datasets", vec![1, 2, 3]).await).await;
    assert_eq!(field, "body");
    let listed: Value = app.get("/api/v1/datasets").await.json().await.expect("json");
    assert_eq!(listed["count"], 0, "nothing refused was kept");
    assert!(std::fs::read_dir(app.dir.path().join("data/datasets")).map_or(true, |mut d| d.next().is_none()));
}

#[tokio::test]
async fn a_model_and_data_set_that_do_not_fit_are_refused_before_queueing() {
    let files = fixtures();
    let app = spawn_app().await;
    let model = upload_ok(&app, "models", &files.path().join("mlp.pt")).await["id"].as_str().expect("id").to_owned();
    let good =
        upload_ok(&app, "datasets", &files.path().join("mlp.safetensors")).await["id"].as_str().expect("id").to_owned();
    let wide = upload_ok(&app, "datasets", &files.path().join("wide.safetensors")).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let float_y = upload_ok(&app, "datasets", &files.path().join("float_y.safetensors")).await["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // The module's own message: its first linear layer takes 6 features, not 7.
    let (field, message) = refused(app.post_json("/api/v1/jobs", &spec(&model, &wide, 10)).await).await;
    assert_eq!(field, "model");
    assert!(message.contains("mat1 and mat2 shapes cannot be multiplied"), "{message}");
    let (field, message) = refused(app.post_json("/api/v1/jobs", &spec(&model, &float_y, 10)).await).await;
    assert_eq!(field, "task.loss");
    assert!(message.contains("int64"), "{message}");
    let mut mse = spec(&model, &good, 10);
    mse["task"]["loss"] = json!("mse");
    let (field, message) = refused(app.post_json("/api/v1/jobs", &mse).await).await;
    assert_eq!(field, "task.loss", "{message}");

    let unknown = "0190a5f0-0000-7000-8000-000000000000";
    let (field, _) = refused(app.post_json("/api/v1/jobs", &spec(unknown, &good, 10)).await).await;
    assert_eq!(field, "model.id");
    let (field, _) = refused(app.post_json("/api/v1/jobs", &spec(&model, unknown, 10)).await).await;
    assert_eq!(field, "task.id");
    let mut no_task = spec(&model, &good, 10);
    no_task.as_object_mut().expect("object").remove("task");
    let (field, _) = refused(app.post_json("/api/v1/jobs", &no_task).await).await;
    assert_eq!(field, "task");
    let mut builtin = spec(&model, &good, 10);
    builtin["model"] = json!({"kind": "mlp"});
    let (field, _) = refused(app.post_json("/api/v1/jobs", &builtin).await).await;
    assert_eq!(field, "task.kind");

    let job = app.submit(&spec(&model, &good, 20)).await;
    let done = app.wait_finished(job["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
}

#[tokio::test]
async fn uploads_a_queued_or_running_job_uses_cannot_be_deleted() {
    let files = fixtures();
    let app = spawn_app().await;
    let model = upload_ok(&app, "models", &files.path().join("mlp.pt")).await["id"].as_str().expect("id").to_owned();
    let set =
        upload_ok(&app, "datasets", &files.path().join("mlp.safetensors")).await["id"].as_str().expect("id").to_owned();
    let job = app.submit(&spec(&model, &set, 1_000_000)).await;
    let id = job["id"].as_str().expect("id");
    app.wait_for(id, "running", |j| j["status"] == "running").await;
    assert_eq!(delete(&app, "models", &model).await, 409);
    assert_eq!(delete(&app, "datasets", &set).await, 409);
    app.client.post(app.url(&format!("/api/v1/jobs/{id}/cancel"))).send().await.expect("cancel");
    assert_eq!(app.wait_finished(id).await["status"], "cancelled");
    assert_eq!(delete(&app, "models", &model).await, 204);
    assert_eq!(delete(&app, "datasets", &set).await, 204);
    let resume = app.client.post(app.url(&format!("/api/v1/jobs/{id}/resume"))).send().await.expect("resume");
    assert_eq!(resume.status(), 409, "its model is gone");
}

/// Losses and validation losses of a job, by name.
async fn recorded(app: &TestApp, id: &str) -> BTreeMap<String, Vec<f64>> {
    let steps: Value = app.get(&format!("/api/v1/jobs/{id}/steps?max_points=100000")).await.json().await.expect("json");
    let events: Value =
        app.get(&format!("/api/v1/jobs/{id}/events?kind=validation&limit=1000")).await.json().await.expect("json");
    let validation = events["events"].as_array().expect("events").iter().map(|e| e["value"].as_f64().expect("v"));
    BTreeMap::from([
        ("loss".to_owned(), column(&steps, "loss")),
        ("grad_norm".to_owned(), column(&steps, "grad_norm")),
        ("validation".to_owned(), validation.collect()),
    ])
}

/// Batch norm's running statistics live inside the module and reach validation (eval
/// mode) only: a resume that lost them would validate differently.
#[tokio::test]
async fn a_resumed_torchscript_job_reports_exactly_what_an_uninterrupted_one_does() {
    let files = fixtures();
    let app = spawn_app().await;
    let model = upload_ok(&app, "models", &files.path().join("mlp.pt")).await["id"].as_str().expect("id").to_owned();
    let set =
        upload_ok(&app, "datasets", &files.path().join("mlp.safetensors")).await["id"].as_str().expect("id").to_owned();
    let mut run = spec(&model, &set, 3000);
    run["checkpoint_every"] = json!(25);
    run["monitor"] = json!({"every": 10, "histogram": false});
    let reference = app.submit(&run).await["id"].as_str().expect("id").to_owned();
    assert_eq!(app.wait_finished(&reference).await["status"], "succeeded");

    let id = app.submit(&run).await["id"].as_str().expect("id").to_owned();
    app.wait_for(&id, "past some checkpoints", |j| j["step"].as_u64() > Some(100)).await;
    app.client.post(app.url(&format!("/api/v1/jobs/{id}/cancel"))).send().await.expect("cancel");
    let stopped = app.wait_finished(&id).await;
    assert_eq!(stopped["status"], "cancelled", "the job ended before it could be stopped: {stopped}");
    let resumed = app.client.post(app.url(&format!("/api/v1/jobs/{id}/resume"))).send().await.expect("resume");
    assert_eq!(resumed.status(), 202);
    assert_eq!(app.wait_finished(&id).await["status"], "succeeded");
    let (want, got) = (recorded(&app, &reference).await, recorded(&app, &id).await);
    for (name, series) in &want {
        assert_eq!(series.len(), got[name].len(), "{name}");
        let same = series.iter().zip(&got[name]).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{name} differs after the resume");
    }
}

/// The budget of a TorchScript job is sized by its dry run: `batch_size × (I + 3·O) × L`
/// bytes of activations for the MLP fixture's 6 float features (I = 24 bytes), 3 logits
/// (O = 12 bytes) and 6 parameter tensors is 360 bytes a sample, so 8 samples fit in
/// 4 KiB and 16 do not.
#[tokio::test]
async fn the_dry_run_sizes_the_memory_budget() {
    let files = fixtures();
    let app = spawn_app_with(tempfile::TempDir::new().expect("dir"), |c| c.max_activation_bytes = 4096).await;
    let model = upload_ok(&app, "models", &files.path().join("mlp.pt")).await["id"].as_str().expect("id").to_owned();
    let set =
        upload_ok(&app, "datasets", &files.path().join("mlp.safetensors")).await["id"].as_str().expect("id").to_owned();
    let fits = app.post_json("/api/v1/jobs", &spec(&model, &set, 5)).await;
    assert_eq!(fits.status(), 201, "{}", fits.text().await.unwrap_or_default());
    let mut big = spec(&model, &set, 5);
    big["batch_size"] = json!(16);
    let (field, message) = refused(app.post_json("/api/v1/jobs", &big).await).await;
    assert_eq!(field, "batch_size", "{message}");
}

#[tokio::test]
async fn uploads_stop_at_the_quota_and_leave_no_file_behind() {
    let files = fixtures();
    let app = spawn_app_with(tempfile::TempDir::new().expect("dir"), |c| c.max_uploads = 1).await;
    upload_ok(&app, "models", &files.path().join("mlp.pt")).await;
    let over = upload_file(&app, "models", &files.path().join("mlp.pt")).await;
    assert_eq!(over.status(), 429);
    let body: Value = over.json().await.expect("json");
    assert_eq!(body["error"]["code"], "upload_quota", "{body}");
    let kept = std::fs::read_dir(app.dir.path().join("data/models")).expect("models folder").count();
    assert_eq!(kept, 1, "the refused upload's file is gone");
    // Each kind has its own quota.
    upload_ok(&app, "datasets", &files.path().join("mlp.safetensors")).await;
    let list: Value = app.get("/api/v1/models").await.json().await.expect("json");
    assert_eq!((list["count"].as_i64(), list["max_models"].as_i64()), (Some(1), Some(1)));
}

/// Starts the service with the test fault hook set for its workers' checks.
async fn app_with_check_fault(fault: &str, timeout: Option<std::time::Duration>) -> TestApp {
    spawn_app_with(tempfile::TempDir::new().expect("dir"), |config| {
        config.worker_env = vec![(gradscope::worker::FAULT_VAR.to_owned(), fault.to_owned())];
        if let Some(timeout) = timeout {
            config.check_timeout = timeout;
        }
    })
    .await
}

/// After a check's worker died: the service answers, and a job still trains to the end.
async fn the_service_still_trains(app: &TestApp) {
    assert_eq!(app.get("/healthz").await.status(), 200);
    let job = app.submit(&crate::helpers::tiny_lstm_spec(5, 1.0)).await;
    let done = app.wait_finished(job["id"].as_str().expect("id")).await;
    assert_eq!((done["status"].as_str(), done["step"].as_u64()), (Some("succeeded"), Some(5)), "{done}");
}

/// An upload whose check kills the process that loads it (as a hostile module that makes
/// LibTorch segfault would) is refused with the cause, nothing of it is kept, and the
/// service stays up.
#[tokio::test]
async fn a_model_whose_check_crashes_its_process_is_refused_and_the_service_stays_up() {
    let files = fixtures();
    let app = app_with_check_fault("segv@check@model", None).await;
    let (field, message) = refused(upload_file(&app, "models", &files.path().join("mlp.pt")).await).await;
    assert_eq!(field, "body");
    assert!(message.contains("worker killed by signal 11 (SIGSEGV)"), "{message}");
    let listed: Value = app.get("/api/v1/models").await.json().await.expect("json");
    assert_eq!(listed["count"], 0, "nothing refused was kept");
    assert!(std::fs::read_dir(app.dir.path().join("data/models")).map_or(true, |mut d| d.next().is_none()));
    the_service_still_trains(&app).await;
}

/// A dry run that aborts its process refuses the job (field `model`) with the cause.
#[tokio::test]
async fn a_job_whose_dry_run_aborts_its_process_is_refused_and_the_service_stays_up() {
    let files = fixtures();
    let app = app_with_check_fault("abort@check@dry_run", None).await;
    let model = upload_ok(&app, "models", &files.path().join("mlp.pt")).await["id"].as_str().expect("id").to_owned();
    let set =
        upload_ok(&app, "datasets", &files.path().join("mlp.safetensors")).await["id"].as_str().expect("id").to_owned();
    let (field, message) = refused(app.post_json("/api/v1/jobs", &spec(&model, &set, 5)).await).await;
    assert_eq!(field, "model");
    assert!(message.contains("worker killed by signal 6 (SIGABRT)"), "{message}");
    let jobs: Value = app.get("/api/v1/jobs").await.json().await.expect("json");
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(0), "nothing was queued: {jobs}");
    the_service_still_trains(&app).await;
}

/// A check that never ends is stopped at `check_timeout` and the upload refused.
#[tokio::test]
async fn a_model_whose_check_hangs_is_stopped_at_the_time_limit() {
    let files = fixtures();
    let app = app_with_check_fault("hang@check@model", Some(std::time::Duration::from_secs(2))).await;
    let started = std::time::Instant::now();
    let (field, message) = refused(upload_file(&app, "models", &files.path().join("mlp.pt")).await).await;
    assert_eq!(field, "body");
    assert!(message.contains("longer than 2 s"), "{message}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", started.elapsed());
    the_service_still_trains(&app).await;
}

/// An upload lists the module's registered buffers as PyTorch's `named_buffers()` does
/// (batch norm's running statistics, nested ones included; a `None` buffer and a plain
/// tensor attribute not), and its frozen parameters apart.
#[tokio::test]
async fn an_uploaded_model_lists_its_buffers_as_pytorch_does() {
    let files = fixtures();
    let want: Value =
        serde_json::from_slice(&std::fs::read(files.path().join("buffers.json")).expect("buffers.json")).expect("json");
    let app = spawn_app().await;
    for name in ["gpt", "mlp", "buffered"] {
        let model = upload_ok(&app, "models", &files.path().join(format!("{name}.pt"))).await;
        let listed: Vec<Value> = model["buffers"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no buffers listed: {model}"))
            .iter()
            .map(|b| json!({"name": b["name"], "shape": b["shape"], "dtype": b["dtype"]}))
            .collect();
        assert_eq!(Value::from(listed), want[name], "{name}");
        for b in model["buffers"].as_array().expect("buffers") {
            let numel: i64 = b["shape"].as_array().expect("shape").iter().map(|d| d.as_i64().expect("dim")).product();
            assert_eq!(b["numel"], numel, "{name}: {b}");
        }
    }
    let mlp = &want["mlp"];
    assert_eq!(mlp[0]["name"], "1.running_mean", "the fixture has batch norm statistics: {mlp}");
    assert_eq!(want["buffered"].as_array().map(Vec::len), Some(5), "{}", want["buffered"]);
    let buffered = upload_ok(&app, "models", &files.path().join("buffered.pt")).await;
    assert_eq!(buffered["frozen"], json!([{"name": "frozen", "dtype": "float32", "shape": [3], "numel": 3}]));
}

/// With `--in-process`, checks run on a thread of the service, as jobs train there: an
/// upload is listed, a misfit refused with the module's message, a fitting job trains.
#[tokio::test]
async fn in_process_the_checks_run_in_the_service_and_a_job_trains() {
    let files = fixtures();
    let app = spawn_app_with(tempfile::TempDir::new().expect("dir"), |c| c.in_process = true).await;
    let model = upload_ok(&app, "models", &files.path().join("mlp.pt")).await;
    assert_eq!(model["buffers"][0]["name"], "1.running_mean", "{model}");
    let model = model["id"].as_str().expect("id").to_owned();
    let good =
        upload_ok(&app, "datasets", &files.path().join("mlp.safetensors")).await["id"].as_str().expect("id").to_owned();
    let wide = upload_ok(&app, "datasets", &files.path().join("wide.safetensors")).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (field, message) = refused(app.post_json("/api/v1/jobs", &spec(&model, &wide, 10)).await).await;
    assert_eq!(field, "model");
    assert!(message.contains("mat1 and mat2 shapes cannot be multiplied"), "{message}");
    let job = app.submit(&spec(&model, &good, 10)).await;
    let done = app.wait_finished(job["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
}
