//! A real job, end to end: submit, train, read back what it recorded.

use serde_json::Value;

use crate::helpers::{column, mean, spawn_app, tiny_lstm_spec};

#[tokio::test]
async fn a_tiny_lstm_trains_clips_and_records_every_step() {
    let app = spawn_app().await;
    let max_norm = 0.25;
    let steps = 80;
    let job = app.submit(&tiny_lstm_spec(steps, max_norm)).await;
    assert_eq!(job["status"], "queued");
    assert_eq!(job["total_steps"], steps);
    let id = job["id"].as_str().expect("id").to_owned();

    let done = app.wait_finished(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["step"], steps);
    assert_eq!(done["device"], "cpu");
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());

    let recorded: Value = app.get(&format!("/api/v1/jobs/{id}/steps")).await.json().await.expect("json");
    let step = column(&recorded, "step");
    assert_eq!(step, (1..=steps).map(|s| s as f64).collect::<Vec<_>>());
    let loss = column(&recorded, "loss");
    let tenth = loss.len() / 10;
    let (first, last) = (mean(&loss[..tenth]), mean(&loss[loss.len() - tenth..]));
    assert!(last < first, "loss did not fall: first tenth {first}, last tenth {last}");
    assert_eq!(done["loss"].as_f64(), loss.last().copied());

    let pre = column(&recorded, "grad_norm");
    let post = column(&recorded, "grad_norm_clipped");
    let coef = column(&recorded, "clip_coef");
    for i in 0..pre.len() {
        assert!(post[i] <= max_norm * (1.0 + 1e-5), "step {}: clipped norm {} above {max_norm}", i + 1, post[i]);
        // torch.nn.utils.clip_grad_norm_'s coefficient from the recorded pre-clip norm: not
        // the post/pre division the job reports it by.
        let want = (max_norm / (pre[i] + 1e-6)).min(1.0);
        assert!(
            (coef[i] - want).abs() <= 1e-5 * want,
            "step {}: clip_coef {} vs clip_grad_norm_'s {want}",
            i + 1,
            coef[i]
        );
        assert!(coef[i] <= 1.0 + 1e-6);
    }
    assert!(pre.iter().any(|&n| n > max_norm), "max_norm {max_norm} never clipped: {pre:?}");
    assert!(column(&recorded, "lr").iter().all(|&lr| (lr - 0.01).abs() < 1e-12));
    assert!(recorded["skipped"].as_array().expect("skipped").iter().all(|s| s == false));

    // Downsampling keeps the bound and the largest norm.
    let few: Value = app.get(&format!("/api/v1/jobs/{id}/steps?max_points=20")).await.json().await.expect("json");
    let few_pre = column(&few, "grad_norm");
    assert!(few_pre.len() <= 20);
    let max = pre.iter().copied().fold(f64::MIN, f64::max);
    assert!(few_pre.contains(&max));
    let window: Value = app.get(&format!("/api/v1/jobs/{id}/steps?from=10&to=19")).await.json().await.expect("json");
    assert_eq!(column(&window, "step"), (10..=19).map(f64::from).collect::<Vec<_>>());

    // Layers: embedding, 4 LSTM tensors, head weight and bias, in order.
    let layers: Value = app.get(&format!("/api/v1/jobs/{id}/layers")).await.json().await.expect("json");
    let names: Vec<&str> =
        layers["layers"].as_array().expect("layers").iter().map(|l| l["name"].as_str().expect("name")).collect();
    assert_eq!(
        names,
        [
            "embed.weight",
            "lstm.weight_ih_l0",
            "lstm.weight_hh_l0",
            "lstm.bias_ih_l0",
            "lstm.bias_hh_l0",
            "head.weight",
            "head.bias"
        ]
    );
    assert_eq!(layers["layers"][2]["shape"], serde_json::json!([128, 32]));
    assert_eq!(layers["layers"][2]["numel"], 128 * 32);

    // The final weights, as safetensors with the same names.
    let checkpoint = app.get(&format!("/api/v1/jobs/{id}/checkpoint")).await;
    assert_eq!(checkpoint.status(), 200);
    let bytes = checkpoint.bytes().await.expect("bytes");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).expect("safetensors header");
    for name in names {
        assert!(header.get(name).is_some(), "checkpoint lacks {name}");
    }
}

#[tokio::test]
async fn an_uploaded_corpus_trains() {
    let app = spawn_app().await;
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(40);
    let response = app.upload_corpus(text.clone()).await;
    assert_eq!(response.status(), 201);
    let corpus: Value = response.json().await.expect("json");
    assert_eq!(corpus["bytes"], text.len());
    assert_eq!(corpus["vocab_size"], 28); // 26 letters, space and full stop
    let mut spec = tiny_lstm_spec(20, 1.0);
    spec["task"]["corpus"] = corpus["id"].clone();
    spec["optimizer"] = serde_json::json!({"kind": "sgd", "lr": 0.5, "momentum": 0.9});
    let job = app.submit(&spec).await;
    let done = app.wait_finished(job["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["spec"]["optimizer"]["kind"], "sgd");

    let invalid = app.upload_corpus(vec![0xff_u8; 100]).await;
    assert_eq!(invalid.status(), 422);
    let body: Value = invalid.json().await.expect("json");
    assert_eq!(body["error"]["field"], "body");
}

#[tokio::test]
async fn jobs_are_listed_newest_first_and_filtered() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        // Long jobs: with one slot, the first runs and the others wait.
        ids.push(app.submit(&tiny_lstm_spec(1_000_000, 1.0)).await["id"].as_str().expect("id").to_owned());
    }
    let list: Value = app.get("/api/v1/jobs").await.json().await.expect("json");
    let listed: Vec<&str> =
        list["jobs"].as_array().expect("jobs").iter().map(|j| j["id"].as_str().expect("id")).collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]);
    let limited: Value = app.get("/api/v1/jobs?limit=1").await.json().await.expect("json");
    assert_eq!(limited["jobs"].as_array().expect("jobs").len(), 1);
    app.wait_for(&ids[0], "running", |j| j["status"] == "running").await;
    let queued: Value = app.get("/api/v1/jobs?status=queued").await.json().await.expect("json");
    let queued: Vec<&str> =
        queued["jobs"].as_array().expect("jobs").iter().map(|j| j["id"].as_str().expect("id")).collect();
    assert_eq!(queued, [ids[2].as_str(), ids[1].as_str()]);
    for id in &ids {
        assert_eq!(
            app.client.post(app.url(&format!("/api/v1/jobs/{id}/cancel"))).send().await.expect("cancel").status(),
            202
        );
    }
    for id in &ids {
        assert_eq!(app.wait_finished(id).await["status"], "cancelled");
    }
    let bad = app.get("/api/v1/jobs?status=sleeping").await;
    assert_eq!(bad.status(), 422);
    assert_eq!(bad.json::<Value>().await.expect("json")["error"]["field"], "status");
    assert_eq!(app.get("/api/v1/jobs?limit=501").await.status(), 422);
    assert_eq!(app.get("/api/v1/jobs?limit=lots").await.status(), 400);
}

/// The names of a listing's jobs, in order.
fn names(list: &Value) -> Vec<&str> {
    list["jobs"].as_array().expect("jobs").iter().map(|j| j["name"].as_str().expect("name")).collect()
}

#[tokio::test]
async fn jobs_are_searched_filtered_sorted_and_paged() {
    let app = spawn_app().await;
    let mlp = serde_json::json!({
        "steps": 3, "batch_size": 8, "device": "cpu",
        "task": {"kind": "classification", "features": 4, "classes": 2},
        "model": {"kind": "mlp", "layers": 1, "hidden": 8},
    });
    let mut submitted = Vec::new();
    for name in ["alpha-1", "Alpha-2", "beta_1", "beta%2", "gamma"] {
        let mut spec = if name == "gamma" { tiny_lstm_spec(3, 1.0) } else { mlp.clone() };
        spec["name"] = name.into();
        submitted.push(app.submit(&spec).await["id"].as_str().expect("id").to_owned());
    }
    for id in &submitted {
        app.wait_finished(id).await;
    }
    let list = |q: &'static str| {
        let app = &app;
        async move {
            let response = app.get(&format!("/api/v1/jobs?{q}")).await;
            assert_eq!(response.status(), 200, "{q}");
            response.json::<Value>().await.expect("json")
        }
    };
    // Newest first, in pages of two, with the total on each page.
    let mut paged = Vec::new();
    for q in ["limit=2", "limit=2&offset=2", "limit=2&offset=4", "limit=2&offset=6"] {
        let page = list(q).await;
        assert_eq!(page["total"], 5, "{q}: {page}");
        paged.extend(names(&page).into_iter().map(str::to_owned));
    }
    assert_eq!(paged, ["gamma", "beta%2", "beta_1", "Alpha-2", "alpha-1"]);
    // A part of the name, in any case; `%` and `_` are themselves, not wildcards.
    let alpha = list("name=ALPHA").await;
    assert_eq!(names(&alpha), ["Alpha-2", "alpha-1"]);
    assert_eq!(alpha["total"], 2);
    assert_eq!(names(&list("name=%25").await), ["beta%2"]);
    assert_eq!(names(&list("name=t_").await), Vec::<&str>::new());
    assert_eq!(names(&list("name=a_1").await), ["beta_1"]);
    // The model's and the task's kind, with the status and the name.
    assert_eq!(names(&list("model=lstm").await), ["gamma"]);
    assert_eq!(names(&list("task=classification&name=beta").await), ["beta%2", "beta_1"]);
    assert_eq!(list("model=mlp&status=succeeded").await["total"], 4);
    assert_eq!(list("model=transformer").await["total"], 0);
    // Sorted by name (in any case), both ways; by step, ties newest first.
    assert_eq!(names(&list("sort=name&order=asc").await), ["alpha-1", "Alpha-2", "beta%2", "beta_1", "gamma"]);
    assert_eq!(names(&list("sort=name").await), ["gamma", "beta_1", "beta%2", "Alpha-2", "alpha-1"]);
    assert_eq!(names(&list("sort=step&limit=1").await), ["gamma"]);
    // Every invalid parameter at once, each named.
    let bad = app.get("/api/v1/jobs?offset=-1&sort=size&order=up&model=LSTM&name=").await;
    assert_eq!(bad.status(), 422);
    let body: Value = bad.json().await.expect("json");
    let fields: Vec<&str> = body["error"]["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().expect("field"))
        .collect();
    assert_eq!(fields, ["offset", "name", "sort", "order", "model"], "{body}");
    let long = format!("/api/v1/jobs?name={}", "x".repeat(201));
    let bad = app.get(&long).await;
    assert_eq!(bad.status(), 422);
    assert_eq!(bad.json::<Value>().await.expect("json")["error"]["field"], "name");
    assert_eq!(app.get("/api/v1/jobs?offset=1000001").await.status(), 422);
    app.stop().await;
}
