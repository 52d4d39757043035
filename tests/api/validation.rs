//! Bad input gets the contract's error shape, with the status and the field.

use serde_json::{Value, json};

use crate::helpers::{spawn_app, tiny_lstm_spec};

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error body is JSON");
    (status, body["error"].clone())
}

#[tokio::test]
async fn invalid_specs_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let with = |pointer: &str, value: Value| {
        let mut spec = tiny_lstm_spec(10, 1.0);
        let (parent, key) = pointer.rsplit_once('/').expect("a /path");
        let target = if parent.is_empty() { &mut spec } else { spec.pointer_mut(parent).expect("parent") };
        target[key] = value;
        spec
    };
    let mut missing_model = tiny_lstm_spec(10, 1.0);
    missing_model.as_object_mut().expect("object").remove("model");
    let mut unknown = tiny_lstm_spec(10, 1.0);
    unknown["colour"] = json!("blue");
    let mut unknown_nested = tiny_lstm_spec(10, 1.0);
    unknown_nested["model"]["widht"] = json!(3);
    let cases = [
        ("wrong type", with("/steps", json!("many")), "steps"),
        ("negative count", with("/batch_size", json!(-4)), "batch_size"),
        ("unknown field", unknown, "colour"),
        ("unknown nested field", unknown_nested, "model.widht"),
        ("out of range", with("/model/hidden", json!(0)), "model.hidden"),
        ("too many steps", with("/steps", json!(10_000_000_000_u64)), "steps"),
        ("missing model", missing_model, "model"),
        ("unknown model", with("/model/kind", json!("cnn")), "model.kind"),
        ("unknown task", with("/task/kind", json!("poetry")), "task.kind"),
        ("bad device", with("/device", json!("tpu")), "device"),
        ("negative clip", with("/policy/grad/0/max_norm", json!(-1.0)), "policy.grad[0].max_norm"),
        ("unknown corpus", with("/task/corpus", json!("builtin:shakespeare")), "task.corpus"),
        ("bad lr", with("/optimizer/lr", json!(0)), "optimizer.lr"),
        ("dropout of 1", with("/model/dropout", json!(1.0)), "model.dropout"),
        ("negative exploding floor", with("/monitor", json!({"explode_floor": -1.0})), "monitor.explode_floor"),
        ("mlp on a sequence task", with("/model/kind", json!("mlp")), "model.kind"),
        ("unsupported norm type", with("/policy/grad/0/norm_type", json!(3)), "policy.grad[0].norm_type"),
        (
            "zero spike bound",
            with("/policy/grad", json!([{"kind": "skip_spike", "max_consecutive": 0}])),
            "policy.grad[0].max_consecutive",
        ),
        ("unknown precision", with("/precision", json!("fp8")), "precision"),
        ("unknown spike remedy", with("/policy/on_spike", json!("restart")), "policy.on_spike"),
        ("rollback without on_spike", with("/policy/rollback", json!({"skip_batches": 10})), "policy.rollback"),
        (
            "rollback every 0 steps",
            with("/policy", json!({"on_spike": "rollback", "rollback": {"rollback_every": 0}})),
            "policy.rollback.rollback_every",
        ),
        (
            "no rollbacks allowed",
            with("/policy", json!({"on_spike": "rollback", "rollback": {"max_rollbacks": 0}})),
            "policy.rollback.max_rollbacks",
        ),
        (
            "a window of one",
            with("/policy", json!({"on_spike": "rollback", "rollback": {"window": 1}})),
            "policy.rollback.window",
        ),
        ("loss scale of zero", with("/loss_scale", json!({"init_scale": 0.0})), "loss_scale.init_scale"),
        ("no growth", with("/loss_scale", json!({"growth_factor": 1.0})), "loss_scale.growth_factor"),
        ("backoff of one", with("/loss_scale", json!({"backoff_factor": 1.0})), "loss_scale.backoff_factor"),
        ("zero growth interval", with("/loss_scale", json!({"growth_interval": 0})), "loss_scale.growth_interval"),
        (
            "negative zclip cap",
            with("/policy/grad", json!([{"kind": "zclip", "max_grad_norm": -1.0}])),
            "policy.grad[0].max_grad_norm",
        ),
    ];
    for (what, spec, field) in cases {
        let (status, error) = error_of(app.post_json("/api/v1/jobs", &spec).await).await;
        assert_eq!(status, 422, "{what}: {error}");
        assert_eq!(error["field"], field, "{what}: {error}");
        assert_eq!(error["code"], "invalid_field");
        assert!(!error["message"].as_str().expect("message").is_empty());
    }
    let list: Value = app.get("/api/v1/jobs").await.json().await.expect("json");
    assert_eq!(list["jobs"].as_array().expect("jobs").len(), 0, "no invalid job was queued");
}

#[tokio::test]
async fn every_invalid_field_is_reported_at_once() {
    let app = spawn_app().await;
    let mut spec = tiny_lstm_spec(10, 1.0);
    spec["steps"] = json!(0);
    spec["device"] = json!("tpu");
    spec["model"]["hidden"] = json!(0);
    spec["model"]["dropout"] = json!(1.0);
    spec["optimizer"]["lr"] = json!(-1.0);
    spec["monitor"] = json!({"explode_floor": -1.0, "cooldown": -3});
    spec["policy"]["grad"][0]["max_norm"] = json!(-1.0);
    // `cooldown` is a whole number: -3 is refused while reading, before any range is
    // checked, so it stands alone.
    let (status, error) = error_of(app.post_json("/api/v1/jobs", &spec).await).await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["errors"].as_array().map(Vec::len), Some(1), "{error}");
    assert_eq!(error["field"], "monitor.cooldown", "{error}");

    spec["monitor"] = json!({"explode_floor": -1.0});
    let (status, error) = error_of(app.post_json("/api/v1/jobs", &spec).await).await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["code"], "invalid_field");
    let fields: Vec<&str> =
        error["errors"].as_array().expect("errors").iter().map(|e| e["field"].as_str().expect("field")).collect();
    // In the order of the checks: the run, the model, the optimizer, the policies, the monitor.
    assert_eq!(
        fields,
        [
            "steps",
            "device",
            "model.hidden",
            "model.dropout",
            "optimizer.lr",
            "policy.grad[0].max_norm",
            "monitor.explode_floor"
        ],
        "{error}"
    );
    for e in error["errors"].as_array().expect("errors") {
        assert!(!e["message"].as_str().expect("message").is_empty(), "{e}");
    }
    assert_eq!(error["errors"][2]["message"], "must be 1 to 16384");
    // Clients that read one field see the first, and the message says there are more.
    assert_eq!(error["field"], "steps");
    let message = error["message"].as_str().expect("message");
    assert!(message.starts_with("steps: ") && message.ends_with("(and 6 more invalid fields)"), "{message}");

    // One invalid field: the list holds just it.
    let mut one = tiny_lstm_spec(10, 1.0);
    one["model"]["hidden"] = json!(0);
    let (status, error) = error_of(app.post_json("/api/v1/jobs", &one).await).await;
    assert_eq!(status, 422);
    assert_eq!(error["field"], "model.hidden");
    assert_eq!(error["errors"], json!([{"field": "model.hidden", "message": "must be 1 to 16384"}]));

    // The OpenAPI document describes the list.
    let doc: Value = app.get("/api/v1/openapi.json").await.json().await.expect("json");
    let detail = &doc["components"]["schemas"]["ErrorDetail"]["properties"]["errors"];
    assert_eq!(detail["items"]["$ref"], "#/components/schemas/FieldError", "ErrorDetail documents `errors`");
    let item = &doc["components"]["schemas"]["FieldError"];
    assert_eq!(item["required"], json!(["field", "message"]), "{item}");
    let list: Value = app.get("/api/v1/jobs").await.json().await.expect("json");
    assert_eq!(list["jobs"].as_array().expect("jobs").len(), 0, "no invalid job was queued");
}

#[tokio::test]
async fn malformed_bodies_get_400_413_and_415() {
    let app = spawn_app().await;
    let post = |body: Vec<u8>, content_type: &'static str| {
        app.client.post(app.url("/api/v1/jobs")).header("content-type", content_type).body(body).send()
    };
    let (status, error) = error_of(post(b"{\"task\": ".to_vec(), "application/json").await.expect("post")).await;
    assert_eq!((status, error["code"].as_str()), (400, Some("invalid_json")));

    let spec = serde_json::to_vec(&tiny_lstm_spec(10, 1.0)).expect("json");
    let (status, error) = error_of(post(spec.clone(), "text/plain").await.expect("post")).await;
    assert_eq!((status, error["code"].as_str()), (415, Some("unsupported_media_type")));

    let mut huge = tiny_lstm_spec(10, 1.0);
    huge["name"] = json!("x".repeat(400 * 1024));
    let huge = serde_json::to_vec(&huge).expect("json");
    let (status, error) = error_of(post(huge, "application/json").await.expect("post")).await;
    assert_eq!((status, error["code"].as_str()), (413, Some("payload_too_large")));

    // With a charset the same spec is fine.
    let ok = post(spec, "application/json; charset=utf-8").await.expect("post");
    assert_eq!(ok.status(), 201);
    app.stop().await;
}

#[tokio::test]
async fn unknown_things_are_404_in_the_error_shape() {
    let app = spawn_app().await;
    for path in ["/api/v1/jobs/not-a-uuid", "/api/v1/jobs/0190a000-0000-7000-8000-000000000000", "/api/v1/nothing"] {
        let (status, error) = error_of(app.get(path).await).await;
        assert_eq!((status, error["code"].as_str()), (404, Some("not_found")), "{path}");
    }
}
