//! The spec's schema in the OpenAPI document says what the server does: each published
//! bound is where the server starts refusing, naming the field, and each published
//! default is what an omitted field becomes in the stored spec. Defaults that depend on
//! the model's kind are resolved and stored too.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, tiny_lstm_spec};

/// A property of a component schema; `TaskSpec/copy` names one kind of a tagged enum.
fn property<'a>(doc: &'a Value, schema: &str, name: &str) -> &'a Value {
    let object = match schema.split_once('/') {
        None => &doc["components"]["schemas"][schema],
        Some((tagged, kind)) => doc["components"]["schemas"][tagged]["oneOf"]
            .as_array()
            .and_then(|kinds| kinds.iter().find(|k| k["properties"]["kind"]["enum"][0] == kind))
            .unwrap_or_else(|| panic!("{schema} is in the document")),
    };
    let found = &object["properties"][name];
    assert!(found.is_object(), "{schema}.{name} is in the document");
    found
}

fn number(value: &Value, what: &str) -> f64 {
    value.as_f64().unwrap_or_else(|| panic!("{what} is a number: {value}"))
}

async fn status_and_field(app: &TestApp, spec: &Value) -> (u16, Value) {
    let response = app.post_json("/api/v1/jobs", spec).await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    (status, body["error"]["field"].clone())
}

/// `spec` with `value` at JSON pointer `at` (its parent must exist).
fn with(mut spec: Value, at: &str, value: Value) -> Value {
    let (parent, key) = at.rsplit_once('/').expect("a /path");
    let target = if parent.is_empty() { &mut spec } else { spec.pointer_mut(parent).expect("parent") };
    if let Ok(index) = key.parse::<usize>() {
        target[index] = value;
    } else {
        target[key] = value;
    }
    spec
}

#[tokio::test]
async fn published_bounds_are_where_the_server_refuses() {
    let app = spawn_app().await;
    let doc: Value = app.get("/api/v1/openapi.json").await.json().await.expect("json");
    let base = || {
        let mut spec = tiny_lstm_spec(2, 1.0);
        spec["monitor"] = json!({"every": 1});
        spec
    };
    let copy = || with(base(), "/task", json!({"kind": "copy", "seq_len": 64}));
    let spike = || with(base(), "/policy/grad", json!([{"kind": "skip_spike"}]));
    // (schema, property, a spec holding the field, its pointer, the field the server names)
    let cases: [(&str, &str, Value, &str, &str); 6] = [
        ("JobSpec", "steps", base(), "/steps", "steps"),
        ("JobSpec", "batch_size", base(), "/batch_size", "batch_size"),
        ("ModelSpec", "hidden", base(), "/model/hidden", "model.hidden"),
        ("TaskSpec/copy", "symbols", copy(), "/task/symbols", "task.symbols"),
        ("MonitorSpec", "prometheus_layers", base(), "/monitor/prometheus_layers", "monitor.prometheus_layers"),
        (
            "GradPolicy/skip_spike",
            "max_consecutive",
            spike(),
            "/policy/grad/0/max_consecutive",
            "policy.grad[0].max_consecutive",
        ),
    ];
    for (schema, name, spec, at, field) in cases {
        let published = property(&doc, schema, name);
        let (min, max) = (number(&published["minimum"], "minimum"), number(&published["maximum"], "maximum"));
        for outside in [min - 1.0, max + 1.0] {
            let (status, named) = status_and_field(&app, &with(spec.clone(), at, json!(outside as i64))).await;
            assert_eq!((status, named.as_str()), (422, Some(field)), "{schema}.{name} = {outside}");
        }
    }
    // Open bounds: the learning rate must be above its published exclusive minimum, and
    // may be its maximum.
    let lr = property(&doc, "OptimizerSpec", "lr");
    let above = number(&lr["exclusiveMinimum"], "exclusiveMinimum");
    let (status, named) = status_and_field(&app, &with(base(), "/optimizer/lr", json!(above))).await;
    assert_eq!((status, named.as_str()), (422, Some("optimizer.lr")));
    let (status, _) = status_and_field(&app, &with(base(), "/optimizer/lr", lr["maximum"].clone())).await;
    assert_eq!(status, 201, "the published maximum learning rate is accepted");
    // The closed end of a probability: dropout may be 0 but stays below its bound.
    let dropout = property(&doc, "ModelSpec", "dropout");
    let (status, named) =
        status_and_field(&app, &with(base(), "/model/dropout", dropout["exclusiveMaximum"].clone())).await;
    assert_eq!((status, named.as_str()), (422, Some("model.dropout")));
}

#[tokio::test]
async fn omitted_fields_get_the_published_defaults() {
    let app = spawn_app().await;
    let doc: Value = app.get("/api/v1/openapi.json").await.json().await.expect("json");
    // Only what keeps the run tiny is given; everything checked below is omitted.
    let job = app
        .submit(&json!({
            "steps": 2, "device": "cpu", "batch_size": 4,
            "task": {"kind": "char_lm"},
            "model": {"kind": "gru", "layers": 1, "hidden": 16},
            "policy": {"grad": [{"kind": "zclip"}, {"kind": "agc"}]},
        }))
        .await;
    let stored = app.job(job["id"].as_str().expect("id")).await["spec"].clone();
    let cases = [
        ("JobSpec", "seed", "/seed"),
        ("JobSpec", "checkpoint_every", "/checkpoint_every"),
        ("TaskSpec/char_lm", "seq_len", "/task/seq_len"),
        ("TaskSpec/char_lm", "corpus", "/task/corpus"),
        ("TaskSpec/char_lm", "eval_every", "/task/eval_every"),
        ("ModelSpec", "init_scale", "/model/init_scale"),
        ("ModelSpec", "norm_position", "/model/norm_position"),
        ("OptimizerSpec", "lr", "/optimizer/lr"),
        ("OptimizerSpec", "beta2", "/optimizer/beta2"),
        ("OptimizerSpec", "no_decay", "/optimizer/no_decay"),
        ("MonitorSpec", "explode_floor", "/monitor/explode_floor"),
        ("MonitorSpec", "diagnose_window", "/monitor/diagnose_window"),
        ("GradPolicy/zclip", "max_grad_norm", "/policy/grad/0/max_grad_norm"),
        ("GradPolicy/zclip", "alpha", "/policy/grad/0/alpha"),
        ("GradPolicy/agc", "exclude_head", "/policy/grad/1/exclude_head"),
    ];
    for (schema, name, at) in cases {
        let published = &property(&doc, schema, name)["default"];
        assert!(!published.is_null(), "{schema}.{name} publishes a default");
        assert_eq!(stored.pointer(at), Some(published), "{schema}.{name}: stored {stored}");
    }
    // A default that depends on the model's kind is not published as one value.
    assert!(property(&doc, "ModelSpec", "norm").get("default").is_none());
    assert!(property(&doc, "JobSpec", "task").get("default").is_none());
}

#[tokio::test]
async fn a_transformer_alone_is_a_valid_spec_and_trains() {
    let app = spawn_app().await;
    let job = app.submit(&json!({"model": {"kind": "transformer"}, "steps": 2})).await;
    let finished = app.wait_finished(job["id"].as_str().expect("id")).await;
    assert_eq!(finished["status"], "succeeded", "{finished}");
    assert_eq!(finished["step"], 2);
    // The defaults that depend on the kind are written into the stored spec.
    let model = &finished["spec"]["model"];
    assert_eq!((model["norm"].as_str(), model["norm_position"].as_str()), (Some("layer"), Some("pre")));
    assert_eq!(model["activation"], "gelu");
    assert_eq!(finished["spec"]["task"]["kind"], "char_lm");
    // An mlp alone gets the task it can train on.
    let mlp = app.submit(&json!({"model": {"kind": "mlp"}, "steps": 1})).await;
    assert_eq!(mlp["spec"]["task"]["kind"], "classification");
    assert_eq!(
        (mlp["spec"]["model"]["norm"].as_str(), mlp["spec"]["model"]["activation"].as_str()),
        (Some("none"), Some("relu"))
    );
    // What the client writes still wins.
    let rms = app.submit(&json!({"model": {"kind": "transformer", "norm": "rms"}, "steps": 1})).await;
    assert_eq!(rms["spec"]["model"]["norm"], "rms");
    // And the model's kind stays required.
    let (status, field) = status_and_field(&app, &json!({"model": {"layers": 2}})).await;
    assert_eq!((status, field.as_str()), (422, Some("model.kind")));
    let (status, field) = status_and_field(&app, &json!({"steps": 2})).await;
    assert_eq!((status, field.as_str()), (422, Some("model")));
}
