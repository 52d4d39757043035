//! Per-layer statistics, their storage and queries, and the diagnosis events.

use serde_json::{Value, json};

use crate::helpers::{column, spawn_app, tiny_lstm_spec};

/// Column `name` of one layer series, non-finite entries failing the test.
fn series(layer: &Value, name: &str) -> Vec<f64> {
    layer[name].as_array().unwrap_or_else(|| panic!("no {name}")).iter().map(|v| v.as_f64().expect("finite")).collect()
}

#[tokio::test]
async fn every_layer_statistic_is_recorded_and_consistent() {
    let app = spawn_app().await;
    let steps = 30;
    let job = app.submit(&tiny_lstm_spec(steps, 0.25)).await;
    let id = job["id"].as_str().expect("id").to_owned();
    let done = app.wait_finished(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["dropped_reports"], 0);

    let recorded: Value = app.get(&format!("/api/v1/jobs/{id}/steps")).await.json().await.expect("json");
    let global = column(&recorded, "grad_norm");
    let layers_info: Value = app.get(&format!("/api/v1/jobs/{id}/layers")).await.json().await.expect("json");
    let numels: Vec<u64> =
        layers_info["layers"].as_array().expect("layers").iter().map(|l| l["numel"].as_u64().expect("numel")).collect();

    let stats: Value =
        app.get(&format!("/api/v1/jobs/{id}/layer-stats?stat=grad_norm,grad_max,grad_mean,grad_std,zero_frac,nonfinite,weight_norm,update_ratio,hist"))
            .await
            .json()
            .await
            .expect("json");
    let layers = stats["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), numels.len());
    for (i, layer) in layers.iter().enumerate() {
        assert_eq!(layer["index"], i);
        assert_eq!(column(layer, "step"), (1..=steps).map(|s| s as f64).collect::<Vec<_>>());
        let norm = series(layer, "grad_norm");
        let max = series(layer, "grad_max");
        let std = series(layer, "grad_std");
        for s in 0..norm.len() {
            assert!(max[s] <= norm[s] * (1.0 + 1e-5), "max |g| cannot exceed ‖g‖");
            assert!(std[s] >= 0.0);
        }
        assert!(series(layer, "nonfinite").iter().all(|&n| n == 0.0));
        assert!(series(layer, "zero_frac").iter().all(|&z| (0.0..=1.0).contains(&z)));
        assert!(series(layer, "weight_norm").iter().all(|&w| w > 0.0));
        let ratio = series(layer, "update_ratio");
        assert!(ratio.iter().all(|&r| r > 0.0 && r < 1.0), "{}: update ratios {ratio:?}", layer["name"]);
        // Histograms on every tenth recorded step by default (`monitor.histogram_every`),
        // the first included; every element of the layer falls in exactly one bucket.
        let hists = layer["hist"].as_array().expect("hist");
        assert_eq!(hists.len(), steps as usize);
        for (s, hist) in hists.iter().enumerate() {
            if s % 10 != 0 {
                assert!(hist.is_null(), "{}: a histogram at step {}", layer["name"], s + 1);
                continue;
            }
            let counts: Vec<u64> =
                hist.as_array().expect("counts").iter().map(|c| c.as_u64().expect("count")).collect();
            assert_eq!(counts.len(), 51);
            assert_eq!(counts.iter().sum::<u64>(), numels[i]);
        }
    }
    // √Σ layer‖g‖² is the global norm, step by step: the layer norms come from each
    // layer's two-pass sums, the global norm from one norm of the whole gradient buffer,
    // so this holds two separate reductions to each other (the parity tests hold both to
    // float64 NumPy and `clip_grad_norm_` on the same gradients).
    for s in 0..global.len() {
        let sum_sq: f64 = layers.iter().map(|l| l["grad_norm"][s].as_f64().expect("norm").powi(2)).sum();
        assert!(
            (sum_sq.sqrt() - global[s]).abs() <= 1e-5 * global[s],
            "step {}: {} vs {}",
            s + 1,
            sum_sq.sqrt(),
            global[s]
        );
    }

    // Subsets and downsampling.
    let one: Value = app
        .get(&format!("/api/v1/jobs/{id}/layer-stats?layers=2&stat=update_ratio&max_points=10&from=5"))
        .await
        .json()
        .await
        .expect("json");
    let only = &one["layers"][0];
    assert_eq!(one["layers"].as_array().expect("layers").len(), 1);
    assert_eq!(only["name"], "lstm.weight_hh_l0");
    assert!(only.get("grad_norm").is_none());
    let kept = column(only, "step");
    assert!(kept.len() <= 10 && kept[0] >= 5.0);

    for (query, field) in [("stat=gradient", "stat"), ("layers=99", "layers"), ("max_points=2", "max_points")] {
        let bad = app.get(&format!("/api/v1/jobs/{id}/layer-stats?{query}")).await;
        assert_eq!(bad.status(), 422, "{query}");
        let error = bad.json::<Value>().await.expect("json")["error"].clone();
        assert_eq!(error["field"], field);
        if field == "stat" {
            assert_eq!(
                error["message"],
                "stat: unknown statistic \"gradient\"; known: grad_norm, grad_max, grad_mean, grad_std, zero_frac, \
                 nonfinite, underflow, weight_norm, update_ratio, hist"
            );
        }
    }
}

#[tokio::test]
async fn monitor_every_thins_the_layer_statistics_but_not_the_steps() {
    let app = spawn_app().await;
    let mut spec = tiny_lstm_spec(20, 1.0);
    spec["monitor"] = json!({"every": 5, "histogram": false});
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    assert_eq!(app.wait_finished(&id).await["status"], "succeeded");
    let steps: Value = app.get(&format!("/api/v1/jobs/{id}/steps")).await.json().await.expect("json");
    assert_eq!(column(&steps, "step").len(), 20);
    let stats: Value =
        app.get(&format!("/api/v1/jobs/{id}/layer-stats?stat=grad_norm,hist")).await.json().await.expect("json");
    let layer = &stats["layers"][0];
    assert_eq!(column(layer, "step"), vec![1.0, 6.0, 11.0, 16.0]);
    assert!(layer["hist"].as_array().expect("hist").iter().all(Value::is_null), "histograms were off");

    spec["monitor"] = json!({"every": 0});
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    assert_eq!(app.wait_finished(&id).await["status"], "succeeded");
    let stats: Value = app.get(&format!("/api/v1/jobs/{id}/layer-stats")).await.json().await.expect("json");
    assert_eq!(column(&stats["layers"][0], "step").len(), 0);
    let steps: Value = app.get(&format!("/api/v1/jobs/{id}/steps")).await.json().await.expect("json");
    assert_eq!(column(&steps, "grad_norm").len(), 20, "global norms are kept with statistics off");
}

#[tokio::test]
async fn diagnosis_reports_vanishing_layers_and_clipping_once() {
    let app = spawn_app().await;
    let mut spec = tiny_lstm_spec(40, 0.25);
    // A strict threshold: the LSTM biases' gradients are well below 90% of the largest
    // layer's, so they count as vanishing after 5 recorded steps.
    spec["monitor"] = json!({"vanish_ratio": 0.9, "diagnose_window": 5, "summary_every": 10, "histogram": false});
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    let done = app.wait_finished(&id).await;
    assert_eq!(done["status"], "succeeded");

    let events: Value = app.get(&format!("/api/v1/jobs/{id}/events")).await.json().await.expect("json");
    let events = events["events"].as_array().expect("events");
    let vanishing: Vec<&Value> = events.iter().filter(|e| e["kind"] == "vanishing").collect();
    assert!(!vanishing.is_empty(), "{events:?}");
    let mut layers: Vec<i64> = vanishing.iter().map(|e| e["layer"].as_i64().expect("layer")).collect();
    let all = layers.len();
    layers.sort_unstable();
    layers.dedup();
    assert_eq!(layers.len(), all, "each vanishing layer is reported once: {vanishing:?}");
    assert!(vanishing.iter().all(|e| e["step"].as_i64() >= Some(5)));

    let clipped: Vec<&Value> = events.iter().filter(|e| e["kind"] == "clipped").collect();
    // At most one summary per 10-step window, and only for windows with clipping.
    assert!((1..=4).contains(&clipped.len()), "{clipped:?}");
    assert!(clipped.iter().all(|e| e["step"].as_i64().expect("step") % 10 == 0));
    assert!(clipped.iter().all(|e| e["value"].as_f64().expect("fraction") > 0.0));
    let clipped_steps =
        column(&app.get(&format!("/api/v1/jobs/{id}/steps")).await.json::<Value>().await.expect("json"), "clip_coef")
            [..10]
            .iter()
            .filter(|&&c| c < 1.0 - 1e-6)
            .count();
    assert_eq!(clipped[0]["step"], 10);
    assert_eq!(clipped[0]["value"].as_f64(), Some(clipped_steps as f64 / 10.0), "the summary counts the clipped steps");

    let only: Value = app.get(&format!("/api/v1/jobs/{id}/events?kind=clipped")).await.json().await.expect("json");
    assert_eq!(only["events"].as_array().expect("events").len(), clipped.len());
    let unknown = app.get(&format!("/api/v1/jobs/{id}/events?kind=clippped")).await;
    assert_eq!(unknown.status(), 422, "an event kind outside the vocabulary");
    assert_eq!(unknown.json::<Value>().await.expect("json")["error"]["field"], "kind");

    let diagnosis = &done["diagnosis"];
    assert_eq!(diagnosis["status"], "warning", "{diagnosis}");
    assert!(diagnosis["issues"].as_array().expect("issues").iter().any(|i| i["kind"] == "vanishing"));
}

#[tokio::test]
async fn wide_and_narrow_layer_queries_agree() {
    let app = spawn_app().await;
    let mut spec = tiny_lstm_spec(12, 1.0);
    spec["model"]["layers"] = json!(3); // 15 layers: every statistic of every layer is a wide query
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    assert_eq!(app.wait_finished(&id).await["status"], "succeeded");
    let all = "grad_norm,grad_max,grad_mean,grad_std,zero_frac,nonfinite,weight_norm,update_ratio,hist";
    let wide: Value = app.get(&format!("/api/v1/jobs/{id}/layer-stats?stat={all}")).await.json().await.expect("json");
    let narrow: Value =
        app.get(&format!("/api/v1/jobs/{id}/layer-stats?stat={all}&layers=0,7,14")).await.json().await.expect("json");
    assert_eq!(wide["layers"].as_array().map(Vec::len), Some(15));
    for (k, index) in [0, 7, 14].into_iter().enumerate() {
        assert_eq!(narrow["layers"][k], wide["layers"][index], "layer {index}");
    }
}

/// The remedied vanishing preset reads healthy: the linear biases before its batch norms
/// get a zero gradient because the normalisation subtracts them, which the diagnosis
/// reports once each as `redundant` information, not as `vanishing` warnings.
#[tokio::test]
async fn the_batchnorm_remedy_reads_healthy() {
    let app = spawn_app().await;
    let presets: Value = app.get("/api/v1/presets").await.json().await.expect("json");
    let preset = presets["presets"]
        .as_array()
        .expect("presets")
        .iter()
        .find(|p| p["name"] == "vanishing-mlp-batchnorm")
        .expect("the preset");
    let mut spec = preset["spec"].clone();
    spec["device"] = json!("cpu");
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    let done = app.wait_finished(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // A run whose diagnosis never changed from healthy has none stored.
    let status = done["diagnosis"]["status"].as_str().unwrap_or("healthy");
    assert_eq!(status, "healthy", "{}", done["diagnosis"]);

    let layers: Value = app.get(&format!("/api/v1/jobs/{id}/layers")).await.json().await.expect("json");
    let names: Vec<&str> =
        layers["layers"].as_array().expect("layers").iter().map(|l| l["name"].as_str().expect("name")).collect();
    let events: Value = app.get(&format!("/api/v1/jobs/{id}/events?limit=1000")).await.json().await.expect("json");
    let events = events["events"].as_array().expect("events");
    let of = |kind: &str| -> Vec<&str> {
        events
            .iter()
            .filter(|e| e["kind"] == kind)
            .map(|e| names[e["layer"].as_u64().expect("layer") as usize])
            .collect()
    };
    assert!(of("vanishing").is_empty(), "{events:?}");
    let redundant = of("redundant");
    let biases: Vec<&str> = names.iter().copied().filter(|n| n.ends_with(".linear.bias")).collect();
    assert_eq!(biases.len(), 10);
    assert_eq!(redundant, biases, "each bias before a batch norm, once");
}

/// Column `name` of one layer series, `null` as `None`.
fn nullable(layer: &Value, name: &str) -> Vec<Option<f64>> {
    layer[name].as_array().unwrap_or_else(|| panic!("no {name}")).iter().map(Value::as_f64).collect()
}

/// The rows (indices into `rows`) the documented thinning rule keeps: `max_points /
/// (2 × statistics + 1)` buckets of consecutive rows (bucket b holds rows b·n/B up to, not
/// including, (b+1)·n/B), each keeping its rows of each statistic's smallest and largest
/// value (the earliest on ties) and its first row with a null; spread evenly when more
/// than `max_points` remain.
fn thinning_rule(columns: &[Vec<Option<f64>>], rows: &[usize], max_points: usize) -> Vec<usize> {
    let n = rows.len();
    if n <= max_points {
        return rows.to_vec();
    }
    let buckets = (max_points / (2 * columns.len() + 1)).max(1);
    let mut kept = Vec::new();
    for b in 0..buckets {
        let bucket = &rows[b * n / buckets..(b + 1) * n / buckets];
        let mut chosen = Vec::new();
        for column in columns {
            let finite: Vec<usize> = bucket.iter().copied().filter(|&i| column[i].is_some()).collect();
            let pick = |better: &dyn Fn(f64, f64) -> bool| {
                finite
                    .iter()
                    .copied()
                    .reduce(|a, i| if better(column[i].unwrap_or(0.0), column[a].unwrap_or(0.0)) { i } else { a })
            };
            chosen.extend(pick(&|x, best| x < best));
            chosen.extend(pick(&|x, best| x > best));
        }
        chosen.extend(bucket.iter().copied().find(|&i| columns.iter().any(|c| c[i].is_none())));
        chosen.sort_unstable();
        chosen.dedup();
        kept.extend(chosen);
    }
    if kept.len() > max_points {
        kept = (0..max_points).map(|k| kept[k * kept.len() / max_points]).collect();
    }
    kept
}

/// A thinned `/layer-stats` answer (read from the stored blocks) keeps, for every layer,
/// exactly the steps the rule picks from the raw rows, with their raw values.
#[tokio::test]
async fn thinned_layer_statistics_keep_what_the_rule_keeps_of_the_raw_rows() {
    let app = spawn_app().await;
    let id = app.submit(&tiny_lstm_spec(300, 0.25)).await["id"].as_str().expect("id").to_owned();
    assert_eq!(app.wait_finished(&id).await["status"], "succeeded");
    let all = "grad_norm,grad_max,grad_mean,grad_std,zero_frac,nonfinite,weight_norm,update_ratio";
    let raw: Value = app
        .get(&format!("/api/v1/jobs/{id}/layer-stats?stat={all}&max_points=100000"))
        .await
        .json()
        .await
        .expect("json");
    for (stats, range, max_points) in [
        ("grad_norm", "", 10),
        ("grad_norm", "&from=40&to=260", 30),
        ("update_ratio,grad_std", "", 25),
        (all, "&from=17", 40),
    ] {
        let thin: Value = app
            .get(&format!("/api/v1/jobs/{id}/layer-stats?stat={stats}&max_points={max_points}{range}"))
            .await
            .json()
            .await
            .expect("json");
        let (from, to) = match range {
            "" => (0.0, f64::MAX),
            "&from=17" => (17.0, f64::MAX),
            _ => (40.0, 260.0),
        };
        for (layer, got) in
            raw["layers"].as_array().expect("layers").iter().zip(thin["layers"].as_array().expect("layers"))
        {
            let steps = column(layer, "step");
            let rows: Vec<usize> = (0..steps.len()).filter(|&i| (from..=to).contains(&steps[i])).collect();
            let columns: Vec<Vec<Option<f64>>> = stats.split(',').map(|s| nullable(layer, s)).collect();
            let kept = thinning_rule(&columns, &rows, max_points);
            let context = format!("{} {stats}{range} {max_points}", layer["name"]);
            assert_eq!(column(got, "step"), kept.iter().map(|&i| steps[i]).collect::<Vec<_>>(), "{context}");
            for (name, values) in stats.split(',').zip(&columns) {
                assert_eq!(
                    nullable(got, name),
                    kept.iter().map(|&i| values[i]).collect::<Vec<_>>(),
                    "{context} {name}"
                );
            }
        }
    }
    app.stop().await;
}

/// Histograms are recorded on every `monitor.histogram_every`-th recorded step: a thinned
/// answer that asks for them picks among those steps, so every point has its histogram.
#[tokio::test]
async fn a_thinned_histogram_answer_picks_steps_that_have_one() {
    let app = spawn_app().await;
    let mut spec = tiny_lstm_spec(60, 0.25);
    spec["monitor"] = json!({"histogram_every": 2});
    let id = app.submit(&spec).await["id"].as_str().expect("id").to_owned();
    assert_eq!(app.wait_finished(&id).await["status"], "succeeded");
    let raw: Value = app
        .get(&format!("/api/v1/jobs/{id}/layer-stats?layers=2&stat=grad_norm,hist"))
        .await
        .json()
        .await
        .expect("json");
    let raw = &raw["layers"][0];
    let steps = column(raw, "step");
    let hists = raw["hist"].as_array().expect("hist");
    let with_hist: Vec<usize> = (0..steps.len()).filter(|&i| !hists[i].is_null()).collect();
    assert_eq!(
        with_hist.iter().map(|&i| steps[i]).collect::<Vec<_>>(),
        (0..30).map(|k| 1.0 + 2.0 * k as f64).collect::<Vec<_>>()
    );

    // Histograms alone: spread evenly over the steps that have one.
    let thin: Value = app
        .get(&format!("/api/v1/jobs/{id}/layer-stats?layers=2&stat=hist&max_points=10"))
        .await
        .json()
        .await
        .expect("json");
    let thin = &thin["layers"][0];
    let expected: Vec<usize> = (0..10).map(|k| with_hist[k * 29 / 9]).collect();
    assert_eq!(column(thin, "step"), expected.iter().map(|&i| steps[i]).collect::<Vec<_>>());
    assert_eq!(thin["hist"].as_array().expect("hist"), &expected.iter().map(|&i| hists[i].clone()).collect::<Vec<_>>());

    // With a statistic: its extremes among the steps that have a histogram.
    let thin: Value = app
        .get(&format!("/api/v1/jobs/{id}/layer-stats?layers=2&stat=grad_norm,hist&max_points=12"))
        .await
        .json()
        .await
        .expect("json");
    let thin = &thin["layers"][0];
    let kept = thinning_rule(&[nullable(raw, "grad_norm")], &with_hist, 12);
    assert_eq!(column(thin, "step"), kept.iter().map(|&i| steps[i]).collect::<Vec<_>>());
    assert!(thin["hist"].as_array().expect("hist").iter().all(|h| h.as_array().is_some_and(|c| c.len() == 51)));
    app.stop().await;
}

#[tokio::test]
async fn monitor_layers_record_just_the_chosen_layers() {
    let app = spawn_app().await;
    let steps = 12;
    let all = app.submit(&tiny_lstm_spec(steps, 0.25)).await;
    let mut spec = tiny_lstm_spec(steps, 0.25);
    spec["monitor"] = json!({"layers": ["lstm.weight_*", "head.bias"]});
    let chosen = app.submit(&spec).await;
    let (all, chosen) = (all["id"].as_str().expect("id").to_owned(), chosen["id"].as_str().expect("id").to_owned());
    for id in [&all, &chosen] {
        let done = app.wait_finished(id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    let names = |info: &Value| -> Vec<String> {
        info["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| l["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let every: Vec<String> = names(&app.get(&format!("/api/v1/jobs/{all}/layers")).await.json().await.expect("json"));
    let picked: Vec<String> =
        names(&app.get(&format!("/api/v1/jobs/{chosen}/layers")).await.json().await.expect("json"));
    // The patterns, matched here by hand: `*` takes the rest of the name.
    let expected: Vec<String> =
        every.iter().filter(|n| n.starts_with("lstm.weight_") || n.as_str() == "head.bias").cloned().collect();
    assert_eq!(picked, expected, "all layers: {every:?}");
    assert!(expected.len() >= 3 && expected.len() < every.len());

    // Watching fewer layers changes nothing the job computes, and the chosen layers'
    // statistics are those of the same layers in the job that watched every layer.
    let steps_of = |id: &str| format!("/api/v1/jobs/{id}/steps");
    let (a, b): (Value, Value) = (
        app.get(&steps_of(&all)).await.json().await.expect("json"),
        app.get(&steps_of(&chosen)).await.json().await.expect("json"),
    );
    assert_eq!(column(&a, "loss"), column(&b, "loss"));
    assert_eq!(column(&a, "grad_norm"), column(&b, "grad_norm"));
    let stats = |id: &str| format!("/api/v1/jobs/{id}/layer-stats?stat=grad_norm,update_ratio");
    let (a, b): (Value, Value) = (
        app.get(&stats(&all)).await.json().await.expect("json"),
        app.get(&stats(&chosen)).await.json().await.expect("json"),
    );
    for layer in b["layers"].as_array().expect("layers") {
        let twin = a["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .find(|l| l["name"] == layer["name"])
            .unwrap_or_else(|| panic!("{} in the full job", layer["name"]));
        for stat in ["grad_norm", "update_ratio"] {
            assert_eq!(series(layer, stat), series(twin, stat), "{} {stat}", layer["name"]);
        }
    }

    // Patterns that choose nothing, or are not patterns, are refused before queueing.
    for (patterns, field) in [(json!(["decoder.*"]), "monitor.layers"), (json!(["lstm.[w"]), "monitor.layers[0]")] {
        let mut spec = tiny_lstm_spec(steps, 0.25);
        spec["monitor"] = json!({"layers": patterns});
        let refused = app.post_json("/api/v1/jobs", &spec).await;
        assert_eq!(refused.status(), 422, "{patterns}");
        let error = refused.json::<Value>().await.expect("json")["error"].clone();
        assert_eq!(error["field"], field, "{error}");
    }
}
