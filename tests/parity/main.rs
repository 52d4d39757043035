//! Parity with PyTorch: `reference.py` (run with the torch venv's `python`, which
//! `scripts/with-torch` puts first on PATH, or `GRADSCOPE_PYTHON`) builds the equivalent
//! PyTorch modules and policies, draws weights and batches, and writes them with its
//! results as safetensors; these tests load the same weights and batches into gradscope's
//! models and policies and compare.
//!
//! Tolerances: 1e-4 relative (as a norm of the difference) for model losses and gradients,
//! 1e-5 for gradient and weight policies, 1e-6 for the statistics of chosen gradients
//! against float64.

use std::path::{Path, PathBuf};
use std::process::Command;

use gradscope::spec::{GradPolicy, ModelSpec, OptimizerSpec, TaskSpec, WeightPolicy};
use gradscope::train::LayerInfo;
use gradscope::train::model::{self, Input, Io};
use gradscope::train::optim::{FlatOptimizer, learning_rate};
use gradscope::train::policy::{GradPolicies, apply_weight_policies, layer_norms};
use gradscope::train::spectral::Spectral;
use gradscope::train::step::{signal_stats, time_profile};
use gradscope::train::task::Task;
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor, nn};

mod fixtures;
mod user_models;

const MODEL_TOL: f64 = 1e-4;
const POLICY_TOL: f64 = 1e-5;
/// The statistics against float64 NumPy on chosen gradients: float32 rounding leaves
/// about 1e-7, so 1e-6 still catches a sum that loses digits.
const STATS_TOL: f64 = 1e-6;
/// The threshold of the `underflow` statistic here (`TINY` in `reference.py`): float16's
/// smallest normal.
const TINY: f64 = 1.0 / 16384.0;

/// Runs the reference on `cases` and returns the folder it wrote to.
fn reference(cases: &Value) -> tempfile::TempDir {
    tch::set_num_threads(1);
    let dir = tempfile::TempDir::new().expect("temp dir");
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&cases_path, cases.to_string()).expect("write cases");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/parity/reference.py");
    let python = std::env::var("GRADSCOPE_PYTHON").unwrap_or_else(|_| "python".to_owned());
    let output = Command::new(&python)
        .arg(&script)
        .arg(&cases_path)
        .arg(dir.path())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {python} (run the tests through scripts/with-torch): {err}"));
    assert!(output.status.success(), "reference.py failed:\n{}", String::from_utf8_lossy(&output.stderr));
    dir
}

fn load(path: &Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(path).expect("read safetensors").into_iter().collect()
}

/// The policy cases, each given its own seed (`base + i`) and a number of steps.
fn numbered(cases: &Value, base: usize, steps: u64) -> Vec<Value> {
    let cases = cases.as_array().expect("cases");
    cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut c = c.clone();
            c["seed"] = json!(base + i);
            c["steps"] = json!(steps);
            c
        })
        .collect()
}

/// `‖a − b‖ ≤ tol·‖b‖` (plus a hair for all-zero tensors).
fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    assert_eq!(a.size(), b.size(), "{what}: shapes differ");
    let diff = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).norm().double_value(&[]);
    let scale = b.to_kind(Kind::Double).norm().double_value(&[]);
    assert!(diff <= tol * scale + 1e-9, "{what}: ‖a − b‖ = {diff:e}, ‖b‖ = {scale:e}, relative {:e}", diff / scale);
}

/// A model case: the model spec, the task it is scored on, and a corpus for `char_lm`.
fn model_case(name: &str, model: Value, task: Value) -> (String, ModelSpec, TaskSpec, Io) {
    let model: ModelSpec = serde_json::from_value(model).expect("model spec");
    let task_spec: TaskSpec = serde_json::from_value(task).expect("task spec");
    let corpus = "abcdefg".repeat(40);
    let io = Task::new(&task_spec, &corpus, 1, Device::Cpu).expect("task").io();
    (name.to_owned(), model, task_spec, io)
}

fn io_json(io: Io) -> Value {
    let mut v = json!({"output": io.output, "max_len": io.max_len});
    match io.input {
        Input::Tokens(vocab) => v["vocab"] = json!(vocab),
        Input::Features(width) => v["features"] = json!(width),
    }
    v
}

#[test]
fn models_match_pytorch_losses_and_gradients() {
    let char_lm = json!({"kind": "char_lm", "seq_len": 6});
    let adding = json!({"kind": "adding", "seq_len": 5});
    let copy = json!({"kind": "copy", "seq_len": 8, "symbols": 4, "length": 2});
    let classes = json!({"kind": "classification", "features": 8, "classes": 5});
    let cases = [
        model_case(
            "mlp_relu_residual",
            json!({"kind": "mlp", "layers": 3, "hidden": 16, "residual": true}),
            classes.clone(),
        ),
        model_case(
            "mlp_sigmoid_batch",
            json!({"kind": "mlp", "layers": 2, "hidden": 16, "activation": "sigmoid", "norm": "batch"}),
            classes.clone(),
        ),
        model_case(
            "mlp_gelu_layer",
            json!({"kind": "mlp", "layers": 2, "hidden": 16, "activation": "gelu", "norm": "layer"}),
            classes.clone(),
        ),
        model_case(
            "mlp_tanh_rms",
            json!({"kind": "mlp", "layers": 2, "hidden": 16, "activation": "tanh", "norm": "rms", "residual": true}),
            classes,
        ),
        model_case("rnn_tanh_tokens", json!({"kind": "rnn", "layers": 2, "hidden": 12}), char_lm.clone()),
        model_case(
            "rnn_relu_adding",
            json!({"kind": "rnn", "layers": 1, "hidden": 12, "activation": "relu"}),
            adding.clone(),
        ),
        model_case("lstm_tokens", json!({"kind": "lstm", "layers": 2, "hidden": 12}), char_lm.clone()),
        model_case("lstm_adding", json!({"kind": "lstm", "layers": 1, "hidden": 12}), adding.clone()),
        model_case("gru_copy", json!({"kind": "gru", "layers": 2, "hidden": 12}), copy.clone()),
        model_case(
            "transformer_pre_layer",
            json!({"kind": "transformer", "layers": 2, "hidden": 16, "heads": 4, "norm": "layer"}),
            char_lm,
        ),
        model_case(
            "transformer_post_rms_adding",
            json!({"kind": "transformer", "layers": 2, "hidden": 16, "heads": 2, "norm": "rms", "norm_position": "post"}),
            adding,
        ),
        model_case(
            "transformer_pre_rms_relu_copy",
            json!({"kind": "transformer", "layers": 1, "hidden": 8, "heads": 2, "norm": "rms", "activation": "relu"}),
            copy,
        ),
    ];
    let specs: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (name, model, task, io))| {
            json!({"name": name, "seed": i, "batch": 4, "model": model, "task": task, "io": io_json(*io)})
        })
        .collect();
    let dir = reference(&json!({"models": specs}));
    let corpus = "abcdefg".repeat(40);
    for (name, spec, task_spec, io) in &cases {
        let out = dir.path().join(name);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let (model, params) = model::build(spec, &vs, *io, 0).expect("model");
        let names: Vec<String> =
            serde_json::from_str(&std::fs::read_to_string(out.join("names.json")).expect("names")).expect("names json");
        let ours: Vec<String> = params.layers().into_iter().map(|l| l.name).collect();
        assert_eq!(ours, names, "{name}: parameter names and order");
        vs.load(out.join("weights.safetensors")).expect("load weights");
        let batch = load(&out.join("batch.safetensors"));
        let expected = load(&out.join("expected.safetensors"));
        let task = Task::new(task_spec, &corpus, 1, Device::Cpu).expect("task");
        let loss = task.loss(&model.forward(&batch["xs"], true).expect("forward"), &batch["ys"]).expect("loss");
        loss.backward();
        assert_close(&format!("{name}: loss"), &loss.reshape([1]), &expected["loss"], MODEL_TOL);
        for (param, tensor) in params.named() {
            assert_close(
                &format!("{name}: grad of {param}"),
                &tensor.grad(),
                &expected[&format!("grad.{param}")],
                MODEL_TOL,
            );
        }
        if let Some(eval_loss) = expected.get("eval_loss") {
            let variables = vs.variables();
            for (key, want) in expected.iter().filter(|(k, _)| k.starts_with("buffer.")) {
                let buffer = &variables[key.trim_start_matches("buffer.")];
                assert_close(&format!("{name}: {key} after a training step"), buffer, want, MODEL_TOL);
            }
            let eval = tch::no_grad(|| task.loss(&model.forward(&batch["xs"], false).expect("eval"), &batch["ys"]))
                .expect("eval loss");
            assert_close(&format!("{name}: evaluation-mode loss"), &eval.reshape([1]), eval_loss, MODEL_TOL);
        }
    }
}

/// The spectral radius against `torch.linalg.matrix_norm(W, 2)` of each gate block of a
/// recurrent weight and each square hidden weight of an MLP, at the first (cold) measure
/// and at the warm-started ones that follow a slow drift of the weights, within 1e-3.
#[test]
fn spectral_radius_matches_pytorch_matrix_norm() {
    let char_lm = json!({"kind": "char_lm", "seq_len": 6});
    let adding = json!({"kind": "adding", "seq_len": 5});
    let classes = json!({"kind": "classification", "features": 8, "classes": 5});
    let cases = [
        (model_case("rnn", json!({"kind": "rnn", "layers": 2, "hidden": 32}), char_lm.clone()), 3.0),
        (model_case("lstm", json!({"kind": "lstm", "layers": 2, "hidden": 24}), char_lm), 1.0),
        (model_case("gru", json!({"kind": "gru", "layers": 1, "hidden": 40}), adding), 2.0),
        (model_case("mlp", json!({"kind": "mlp", "layers": 4, "hidden": 48}), classes), 1.0),
    ];
    let rounds = 5;
    let specs: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, ((name, model, _, io), scale))| {
            json!({"name": name, "seed": 50 + i, "model": model, "io": io_json(*io), "rounds": rounds, "scale": scale})
        })
        .collect();
    let dir = reference(&json!({"spectral": specs}));
    for ((name, spec, _, io), _) in &cases {
        let out = dir.path().join(name);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let (_, params) = model::build(spec, &vs, *io, 0).expect("model");
        let layers = params.layers();
        let tensors: Vec<Tensor> = params.tensors().map(Tensor::shallow_clone).collect();
        let mut spectral =
            Spectral::new(&layers, |i| tensors[i].shallow_clone()).expect("spectral").expect("some matrices");
        let expected_count = match spec.kind.as_str() {
            "lstm" => 2 * 4,
            "gru" => 3,
            "rnn" => 2,
            _ => spec.layers as usize - 1,
        };
        assert_eq!(spectral.matrices().len(), expected_count, "{name}: matrices");
        for round in 0..rounds {
            vs.load(out.join(format!("weights.{round}.safetensors"))).expect("load weights");
            let want = load(&out.join(format!("expected.{round}.safetensors")))["radius"].shallow_clone();
            let got = spectral.measure().expect("measure").to_kind(Kind::Double);
            assert_eq!(got.size(), want.size(), "{name}: one value per matrix");
            let worst = (&got - &want).abs().max().double_value(&[]);
            println!("{name} round {round}: largest |σ − torch| = {worst:e}, σ = {:?}", Vec::<f64>::try_from(&want));
            assert!(worst <= 1e-3, "{name} round {round}: {got:?} vs {want:?}");
        }
    }
}

/// The temporal gradient profile, ‖∂L/∂x_t‖ per position averaged over the batch, against
/// PyTorch's autograd on the same weights and batch (the embedded input's gradient
/// retained there), within 1e-5 (relative, as a norm of the difference).
#[test]
fn time_profile_matches_pytorch_autograd() {
    let char_lm = json!({"kind": "char_lm", "seq_len": 12});
    let adding = json!({"kind": "adding", "seq_len": 16});
    let copy = json!({"kind": "copy", "seq_len": 10, "symbols": 4, "length": 3});
    let cases = [
        model_case("rnn_adding", json!({"kind": "rnn", "layers": 2, "hidden": 16}), adding.clone()),
        model_case("rnn_tokens", json!({"kind": "rnn", "layers": 1, "hidden": 12}), char_lm.clone()),
        model_case("lstm_adding", json!({"kind": "lstm", "layers": 1, "hidden": 16}), adding.clone()),
        model_case("gru_copy", json!({"kind": "gru", "layers": 2, "hidden": 12}), copy),
        model_case(
            "transformer_tokens",
            json!({"kind": "transformer", "layers": 2, "hidden": 16, "heads": 4, "norm": "layer"}),
            char_lm,
        ),
        model_case(
            "transformer_adding",
            json!({"kind": "transformer", "layers": 1, "hidden": 16, "heads": 2, "norm": "layer", "norm_position": "post"}),
            adding,
        ),
    ];
    let specs: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (name, model, task, io))| {
            json!({"name": name, "seed": 70 + i, "batch": 6, "model": model, "task": task, "io": io_json(*io)})
        })
        .collect();
    let dir = reference(&json!({"time_profile": specs}));
    let corpus = "abcdefg".repeat(40);
    for (name, spec, task_spec, io) in &cases {
        let out = dir.path().join(name);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let (model, _) = model::build(spec, &vs, *io, 0).expect("model");
        vs.load(out.join("weights.safetensors")).expect("load weights");
        let batch = load(&out.join("batch.safetensors"));
        let expected = load(&out.join("expected.safetensors"));
        let task = Task::new(task_spec, &corpus, 1, Device::Cpu).expect("task");
        let traced = model.trace(&batch["xs"], true, model::Trace { input: true, blocks: false }).expect("forward");
        let loss = task.loss(&traced.out, &batch["ys"]).expect("loss");
        loss.backward();
        let input = traced.input.expect("a sequence model traces its input");
        let profile = time_profile(&input.leaf).expect("profile").expect("a gradient reached the input");
        let want = &expected["profile"];
        let ratio = |p: &Tensor| p.double_value(&[0]) / p.double_value(&[-1]);
        println!("{name}: first/last {:e} (torch {:e})", ratio(&profile), ratio(want));
        assert_close(&format!("{name}: loss"), &loss.reshape([1]), &expected["loss"], MODEL_TOL);
        assert_close(&format!("{name}: time profile"), &profile, want, 1e-5);
    }
}

/// The forward signal: each block output's mean and RMS against a training-mode forward in
/// PyTorch on the same weights and batch, within 1e-4 (relative, as a norm of the
/// difference over the blocks, as the model parity's tolerance).
#[test]
fn signal_statistics_match_a_pytorch_forward() {
    let char_lm = json!({"kind": "char_lm", "seq_len": 8});
    let adding = json!({"kind": "adding", "seq_len": 7});
    let classes = json!({"kind": "classification", "features": 8, "classes": 5});
    let cases = [
        (
            model_case(
                "mlp_deep_tanh",
                json!({"kind": "mlp", "layers": 6, "hidden": 32, "activation": "tanh"}),
                classes.clone(),
            ),
            2.0,
        ),
        (
            model_case(
                "mlp_residual_batch",
                json!({"kind": "mlp", "layers": 3, "hidden": 16, "residual": true, "norm": "batch"}),
                classes,
            ),
            1.0,
        ),
        (model_case("rnn_tokens", json!({"kind": "rnn", "layers": 2, "hidden": 12}), char_lm.clone()), 1.5),
        (model_case("lstm_adding", json!({"kind": "lstm", "layers": 3, "hidden": 10}), adding.clone()), 1.0),
        (model_case("gru_adding", json!({"kind": "gru", "layers": 2, "hidden": 10}), adding), 1.0),
        (
            model_case(
                "transformer_post",
                json!({"kind": "transformer", "layers": 2, "hidden": 16, "heads": 4, "norm": "layer", "norm_position": "post"}),
                char_lm,
            ),
            1.0,
        ),
    ];
    let specs: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, ((name, model, task, io), scale))| {
            json!({"name": name, "seed": 90 + i, "batch": 5, "model": model, "task": task, "io": io_json(*io), "scale": scale})
        })
        .collect();
    let dir = reference(&json!({"signal": specs}));
    for ((name, spec, _, io), _) in &cases {
        let out = dir.path().join(name);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let (model, _) = model::build(spec, &vs, *io, 0).expect("model");
        vs.load(out.join("weights.safetensors")).expect("load weights");
        let batch = load(&out.join("batch.safetensors"));
        let expected = load(&out.join("expected.safetensors"));
        let traced = model.trace(&batch["xs"], true, model::Trace { input: false, blocks: true }).expect("forward");
        assert_eq!(traced.blocks.len(), model::block_names(spec).len(), "{name}: one output per named block");
        let stats = signal_stats(&traced.blocks).expect("stats").expect("blocks");
        let rms = stats.get(1);
        println!("{name}: block output RMS {:?}", Vec::<f64>::try_from(&rms));
        assert_close(&format!("{name}: block output means"), &stats.get(0), &expected["mean"], MODEL_TOL);
        assert_close(&format!("{name}: block output RMS"), &rms, &expected["rms"], MODEL_TOL);
    }
}

#[test]
fn grad_policies_match_pytorch_and_their_papers() {
    let cases = json!([
        {"name": "clip_norm_2", "policies": [{"kind": "clip_norm", "max_norm": 2.0}]},
        {"name": "clip_norm_inf", "policies": [{"kind": "clip_norm", "max_norm": 0.5, "norm_type": "inf"}]},
        {"name": "clip_value", "policies": [{"kind": "clip_value", "limit": 0.3}]},
        {"name": "clip_layer_norm", "policies": [{"kind": "clip_layer_norm", "max_norm": 1.5}]},
        {"name": "agc", "policies": [{"kind": "agc", "lambda": 0.2, "eps": 1e-3}]},
        {"name": "autoclip", "policies": [{"kind": "autoclip", "percentile": 25.0}], "spikes": [7, 15]},
        {"name": "autoclip_window", "policies": [{"kind": "autoclip", "percentile": 50.0, "history": 5}], "spikes": [9]},
        {"name": "zclip", "policies": [{"kind": "zclip", "alpha": 0.9, "z_threshold": 2.0, "warmup": 5, "max_grad_norm": null}], "spikes": [8, 14, 15]},
        {"name": "zclip_capped", "policies": [{"kind": "zclip", "alpha": 0.9, "z_threshold": 2.0, "warmup": 5, "max_grad_norm": 6.0}], "spikes": [2, 8, 14, 15]},
        {"name": "skip_spike", "policies": [{"kind": "skip_spike", "alpha": 0.9, "z_threshold": 3.0, "warmup": 5}], "spikes": [8, 14, 15]},
        {"name": "skip_spike_bounded", "policies": [{"kind": "skip_spike", "alpha": 0.9, "z_threshold": 3.0, "warmup": 5, "max_consecutive": 2}], "spikes": [8, 9, 10, 11, 14]},
        {"name": "chain", "policies": [{"kind": "clip_value", "limit": 2.0}, {"kind": "zclip", "alpha": 0.8, "warmup": 4}, {"kind": "clip_norm", "max_norm": 3.0}], "spikes": [10]},
    ]);
    let cases = numbered(&cases, 100, 20);
    let dir = reference(&json!({"grad_policies": cases}));
    let mut spikes_skipped = 0;
    for case in &cases {
        let name = case["name"].as_str().expect("name");
        let policies: Vec<GradPolicy> = serde_json::from_value(case["policies"].clone()).expect("policies");
        let mut state = GradPolicies::new(&policies, Device::Cpu).expect("state");
        let data = load(&dir.path().join(name).join("policy.safetensors"));
        let weights: Vec<Tensor> = (0..4).map(|i| data[&format!("weight.{i}")].shallow_clone()).collect();
        let mut changed = 0;
        for step in 0..20 {
            let grads: Vec<Tensor> = (0..4).map(|i| data[&format!("in.{step}.{i}")].copy()).collect();
            let total = layer_norms(&grads).expect("norms").norm();
            let outcome = state.apply(&grads, &weights, &total).expect("apply");
            for (i, g) in grads.iter().enumerate() {
                assert_close(&format!("{name} step {step} grad {i}"), g, &data[&format!("out.{step}.{i}")], POLICY_TOL);
                changed += usize::from(!g.equal(&data[&format!("in.{step}.{i}")]));
            }
            let after = layer_norms(&grads).expect("norms").norm();
            assert_close(&format!("{name} step {step} reported norm"), &outcome.norm, &after, POLICY_TOL);
            let skip = outcome.skip.map(|s| s.int64_value(&[]) == 1).unwrap_or(false);
            let want = data[&format!("skip.{step}")].double_value(&[0]) == 1.0;
            assert_eq!(skip, want, "{name} step {step}: skip decision");
            spikes_skipped += usize::from(skip);
        }
        assert!(changed > 0 || name.starts_with("skip_spike"), "{name}: the policy acted on some step");
    }
    assert!(spikes_skipped >= 2, "the spikes were large enough to be skipped");
}

#[test]
fn weight_policies_match_pytorch() {
    let cases = json!([
        {"name": "w_clip", "policies": [{"kind": "clip", "limit": 0.5}]},
        {"name": "w_max_norm_rows", "policies": [{"kind": "max_norm", "max": 1.0}]},
        {"name": "w_max_norm_cols", "policies": [{"kind": "max_norm", "max": 0.8, "dim": 1}]},
        {"name": "w_scale", "policies": [{"kind": "scale", "factor": 0.9, "every": 2}]},
        {"name": "w_chain", "policies": [{"kind": "scale", "factor": 1.5}, {"kind": "max_norm", "max": 2.0}, {"kind": "clip", "limit": 1.0}]},
    ]);
    let cases = numbered(&cases, 200, 5);
    let dir = reference(&json!({"weight_policies": cases}));
    for case in &cases {
        let name = case["name"].as_str().expect("name");
        let policies: Vec<WeightPolicy> = serde_json::from_value(case["policies"].clone()).expect("policies");
        let data = load(&dir.path().join(name).join("policy.safetensors"));
        let weights: Vec<Tensor> = (0..4).map(|i| data[&format!("in.{i}")].copy()).collect();
        for step in 1..=5 {
            apply_weight_policies(&policies, &weights, step).expect("apply");
        }
        for (i, w) in weights.iter().enumerate() {
            assert_close(&format!("{name} weight {i}"), w, &data[&format!("out.{i}")], POLICY_TOL);
        }
        assert!(weights.iter().enumerate().any(|(i, w)| !w.equal(&data[&format!("in.{i}")])), "{name} acted");
    }
}

/// The statistics engine, fed PyTorch's gradients, gives PyTorch's statistics: each of
/// norm, max, mean, std, zero fraction and non-finite count within 1e-5, histograms exact.
#[test]
fn statistics_match_pytorch_on_the_same_gradients() {
    use gradscope::train::stats::{FlatParams, HIST_BINS};
    use gradscope::vocab::Statistic;
    let cases = [
        model_case(
            "stats_mlp",
            json!({"kind": "mlp", "layers": 3, "hidden": 16, "activation": "relu"}),
            json!({"kind": "classification", "features": 8, "classes": 5}),
        ),
        model_case(
            "stats_lstm",
            json!({"kind": "lstm", "layers": 2, "hidden": 12}),
            json!({"kind": "char_lm", "seq_len": 6}),
        ),
    ];
    let specs: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (name, model, task, io))| {
            json!({"name": name, "seed": 500 + i, "batch": 6, "model": model, "task": task, "io": io_json(*io)})
        })
        .collect();
    let dir = reference(&json!({"models": specs}));
    for (name, ..) in &cases {
        let expected = load(&dir.path().join(name).join("expected.safetensors"));
        let names: Vec<String> =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(name).join("names.json")).expect("names"))
                .expect("json");
        let grads: Vec<Tensor> = names.iter().map(|n| expected[&format!("grad.{n}")].shallow_clone()).collect();
        let params: Vec<Tensor> = grads.iter().map(|g| g.zeros_like().set_requires_grad(true)).collect();
        let mut flat = FlatParams::new(&params, Device::Cpu).expect("flat");
        flat.zero_grads().expect("zero");
        // d/dp Σ p·g = g: the engine sees exactly PyTorch's gradients.
        let loss = flat
            .params()
            .iter()
            .zip(&grads)
            .map(|(p, g)| (p * g).sum(Kind::Float))
            .fold(Tensor::from(0.0f32), |a, b| a + b);
        loss.backward();
        flat.adopt_grads().expect("adopt");
        let (stats, _) = flat.grad_stats(TINY).expect("stats");
        let hist = flat.grad_histogram().expect("hist");
        for (i, n) in names.iter().enumerate() {
            let ours = stats.select(1, i as i64);
            let theirs = &expected[&format!("stats.{n}")];
            for (row, stat) in Statistic::GRAD.iter().enumerate() {
                assert_close(
                    &format!("{name} {n} {stat}"),
                    &ours.get(row as i64).reshape([1]),
                    &theirs.get(row as i64).reshape([1]),
                    POLICY_TOL,
                );
            }
            let ours = hist.narrow(0, (i * HIST_BINS) as i64, HIST_BINS as i64);
            assert!(
                ours.equal(&expected[&format!("hist.{n}")]),
                "{name} {n}: histograms differ: {ours} vs {}",
                expected[&format!("hist.{n}")]
            );
        }
    }
}

/// Weight decay in two parameter groups, as PyTorch training scripts set it up: with
/// `no_decay: bias_and_norm` the 1-D tensors (biases, norm gains) are not decayed. Ten
/// updates of the flat optimizer match `torch.optim` given the same groups; decaying
/// everything (the default) does not.
#[test]
fn parameter_groups_match_pytorch() {
    // A linear layer, a norm gain and bias, another linear layer: 2-D and 1-D interleaved.
    let shapes = json!([[6, 4], [6], [6], [6], [3, 6], [3]]);
    let cases = json!([
        {"name": "adamw_groups", "kind": "adamw", "lr": 0.01, "weight_decay": 0.1, "no_decay": "bias_and_norm"},
        {"name": "adamw_all", "kind": "adamw", "lr": 0.01, "weight_decay": 0.1, "no_decay": "none"},
        {"name": "adam_groups", "kind": "adam", "lr": 0.01, "weight_decay": 0.1, "no_decay": "bias_and_norm"},
        {"name": "sgd_groups", "kind": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.1, "no_decay": "bias_and_norm"},
    ]);
    let steps = 10;
    let mut cases = numbered(&cases, 300, steps);
    for case in &mut cases {
        case["shapes"] = shapes.clone();
    }
    let dir = reference(&json!({"optimizers": cases}));
    let layers: Vec<LayerInfo> = shapes
        .as_array()
        .expect("shapes")
        .iter()
        .enumerate()
        .map(|(index, s)| {
            let shape: Vec<i64> = serde_json::from_value(s.clone()).expect("shape");
            LayerInfo { index, name: format!("p{index}"), numel: shape.iter().product(), shape }
        })
        .collect();
    let flat = |tensors: Vec<Tensor>| Tensor::cat(&tensors.iter().map(|t| t.flatten(0, -1)).collect::<Vec<_>>(), 0);
    let replay = |case: &Value, no_decay: &str| -> Vec<Tensor> {
        let name = case["name"].as_str().expect("name");
        let data = load(&dir.path().join(name).join("optimizer.safetensors"));
        let mut spec =
            json!({"kind": case["kind"], "lr": case["lr"], "weight_decay": case["weight_decay"], "no_decay": no_decay});
        if let Some(m) = case.get("momentum") {
            spec["momentum"] = m.clone();
        }
        let spec: OptimizerSpec = serde_json::from_value(spec).expect("optimizer spec");
        let mut opt = FlatOptimizer::new(&spec).with_groups(&layers);
        let weights = flat((0..layers.len()).map(|i| data[&format!("init.{i}")].shallow_clone()).collect());
        let ranges: Vec<std::ops::Range<usize>> = layers
            .iter()
            .scan(0usize, |start, l| {
                let range = *start..*start + l.numel as usize;
                *start = range.end;
                Some(range)
            })
            .collect();
        for step in 0..steps {
            let grads = flat((0..layers.len()).map(|i| data[&format!("grad.{step}.{i}")].shallow_clone()).collect());
            tch::no_grad(|| opt.step(&weights, &grads, spec.lr, &ranges)).expect("step");
        }
        let mut offset = 0;
        layers
            .iter()
            .map(|l| {
                let t = weights.narrow(0, offset, l.numel).view(l.shape.as_slice());
                offset += l.numel;
                t
            })
            .collect()
    };
    for case in &cases {
        let name = case["name"].as_str().expect("name");
        let data = load(&dir.path().join(name).join("optimizer.safetensors"));
        let no_decay = case["no_decay"].as_str().expect("no_decay");
        for (i, w) in replay(case, no_decay).iter().enumerate() {
            assert_close(&format!("{name} param {i}"), w, &data[&format!("final.{i}")], POLICY_TOL);
        }
        if no_decay == "bias_and_norm" {
            // Decaying every tensor lands measurably elsewhere on the 1-D ones.
            let all = replay(case, "none");
            for (i, l) in layers.iter().enumerate().filter(|(_, l)| l.shape.len() == 1) {
                let want = &data[&format!("final.{i}")];
                let rel = (&all[i] - want).norm().double_value(&[]) / want.norm().double_value(&[]);
                println!("{name} {}: decaying every tensor differs from PyTorch's groups by {rel:e}", l.name);
                assert!(rel > 10.0 * POLICY_TOL, "{name} {}: decaying it too differs by only {rel:e}", l.name);
            }
        }
    }
}

/// The learning rate of every step equals what PyTorch's schedulers give the same
/// optimizer step (`LinearLR` warm-up, then `LinearLR` to 0 or `CosineAnnealingLR`,
/// chained by `SequentialLR`), the last step included.
#[test]
fn schedules_match_pytorch() {
    let mut cases = Vec::new();
    for schedule in ["constant", "linear", "cosine"] {
        for (warmup, steps) in [(0, 10), (4, 12), (1, 7), (5, 5), (10, 100)] {
            cases.push(json!({
                "name": format!("{schedule}_{warmup}_{steps}"),
                "schedule": schedule, "warmup_steps": warmup, "steps": steps, "lr": 0.003,
            }));
        }
    }
    let dir = reference(&json!({"schedules": cases}));
    for case in &cases {
        let name = case["name"].as_str().expect("name");
        let rates: Vec<f64> =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(name).join("rates.json")).expect("rates"))
                .expect("json");
        let total = case["steps"].as_u64().expect("steps");
        let spec: OptimizerSpec = serde_json::from_value(json!({
            "lr": case["lr"], "warmup_steps": case["warmup_steps"], "schedule": case["schedule"],
        }))
        .expect("optimizer spec");
        assert_eq!(rates.len() as u64, total);
        for (i, want) in rates.iter().enumerate() {
            let step = i as u64 + 1;
            let ours = learning_rate(&spec, step, total);
            assert!(
                (ours - want).abs() <= 1e-12 * want.abs().max(1e-3),
                "{name}: step {step} of {total}: lr {ours:e}, PyTorch {want:e}"
            );
        }
    }
}

/// What the statistics engine reports for one `statistics` case of the reference, read
/// back the way the training loop reads it: the stats rows (with the NaN/Inf counts of the
/// flagged layers filled in, as `run.rs` does), the histograms, the weight rows after the
/// reference's update, and the global norm; then `clip_norm` applied to the gradients.
struct Engine {
    data: std::collections::HashMap<String, Tensor>,
    layers: usize,
    /// `[Statistic::GRAD.len(), layers]`, f64.
    stats: Vec<Vec<f64>>,
    hist: Vec<i64>,
    /// `[Statistic::WEIGHT.len(), layers]`, f64.
    weights: Vec<Vec<f64>>,
    total: f64,
    flat: gradscope::train::stats::FlatParams,
}

fn engine(dir: &Path, case: &Value) -> Engine {
    use gradscope::train::stats::FlatParams;
    use gradscope::vocab::Statistic;
    let name = case["name"].as_str().expect("name");
    let layers = case["layers"].as_array().expect("layers").len();
    let data = load(&dir.join(name).join("statistics.safetensors"));
    let params: Vec<Tensor> =
        (0..layers).map(|i| data[&format!("before.{i}")].copy().set_requires_grad(true)).collect();
    let mut flat = FlatParams::new(&params, Device::Cpu).expect("flat");
    flat.zero_grads().expect("zero");
    // d/dp Σ p·g = g: the engine sees exactly the reference's gradients, NaN and Inf included.
    let loss = flat
        .params()
        .iter()
        .enumerate()
        .map(|(i, p)| (p * &data[&format!("grad.{i}")]).sum(Kind::Float))
        .fold(Tensor::from(0.0f32), |a, b| a + b);
    loss.backward();
    flat.adopt_grads().expect("adopt");
    let rows = |t: &Tensor, n: usize| -> Vec<Vec<f64>> {
        let all: Vec<f64> = Vec::try_from(t.to_kind(Kind::Double).flatten(0, -1)).expect("rows");
        all.chunks(layers).take(n).map(<[f64]>::to_vec).collect()
    };
    let (stats, total) = tch::no_grad(|| flat.grad_stats(TINY)).expect("stats");
    let mut stats = rows(&stats, Statistic::GRAD.len());
    let hist = Vec::<i64>::try_from(tch::no_grad(|| flat.grad_histogram()).expect("hist")).expect("counts");
    let broken: Vec<usize> = (0..layers).filter(|&i| !stats[5][i].is_finite()).collect();
    for (&i, count) in broken.iter().zip(flat.nonfinite_counts(&broken).expect("counts")) {
        stats[5][i] = count;
    }
    flat.snapshot_weights().expect("snapshot");
    tch::no_grad(|| {
        for (i, p) in flat.params().iter().enumerate() {
            p.shallow_clone().copy_(&data[&format!("after.{i}")]);
        }
    });
    let weights = rows(&tch::no_grad(|| flat.weight_stats()).expect("weights"), Statistic::WEIGHT.len());
    Engine { layers, stats, hist, weights, total: total.double_value(&[]), flat, data }
}

/// `|a − b| ≤ tol·|b|`, or both NaN, or both the same infinity.
fn close(a: f64, b: f64, tol: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= tol * b.abs()
}

/// The statistics case names and their layers: each layer's gradient is drawn by the
/// reference (`draw_layer`), its statistics computed there in float64 NumPy.
fn statistics_cases(cases: Value) -> (tempfile::TempDir, Vec<Value>) {
    let dir = reference(&json!({"statistics": cases}));
    let Value::Array(cases) = cases else { panic!("a list of cases") };
    (dir, cases)
}

/// grad_std against float64 on ill-conditioned layers (large mean, small spread, up to
/// 2^20 elements), the one-element edge, update_ratio of a zero-initialised tensor, and
/// the global norm and clip coefficient against `torch.nn.utils.clip_grad_norm_`.
#[test]
fn statistics_hold_on_ill_conditioned_gradients() {
    use gradscope::vocab::Statistic;
    let (dir, cases) = statistics_cases(json!([{
        "name": "ill_conditioned", "seed": 700, "max_norm": 5.0,
        "layers": [
            {"n": 1 << 20, "mean": 1.0, "std": 1e-4},
            {"n": 4096, "mean": -1.0, "std": 1e-4},
            {"n": 1 << 20, "mean": 3e-3, "std": 1e-6},
            {"n": 1 << 20, "mean": 0.0, "std": 1e-3, "zeros": 1000},
            {"n": 1},
            {"n": 64, "std": 0.1, "weight": "zero"},
            {"n": 300, "mean": 0.5, "std": 0.2, "zeros": 7}
        ]
    }]));
    let e = engine(dir.path(), &cases[0]);
    for layer in 0..e.layers {
        let want = &e.data[&format!("stats.{layer}")];
        for (row, stat) in Statistic::GRAD.iter().enumerate() {
            let (ours, theirs) = (e.stats[row][layer], want.double_value(&[row as i64]));
            assert!(close(ours, theirs, STATS_TOL), "layer {layer} {stat}: {ours:e} vs float64 {theirs:e}");
        }
    }
    // The one-element layer: the sample standard deviation of one value does not exist.
    let one = 4;
    assert!(e.data[&format!("stats.{one}")].double_value(&[3]).is_nan(), "the reference's std of one value");
    assert!(e.stats[3][one].is_nan(), "grad_std of a one-element layer is NaN (null), as torch.std");
    assert!(e.stats[0][one].is_finite() && e.stats[2][one].is_finite(), "its norm and mean are defined");
    // update_ratio: ‖Δw‖/‖w_before‖ against float64, null where ‖w_before‖ = 0.
    for layer in 0..e.layers {
        let want = &e.data[&format!("weights.{layer}")];
        for (row, stat) in ["weight_norm", "update_ratio"].iter().enumerate() {
            let (ours, theirs) = (e.weights[row][layer], want.double_value(&[row as i64]));
            assert!(close(ours, theirs, STATS_TOL), "layer {layer} {stat}: {ours:e} vs float64 {theirs:e}");
        }
    }
    assert!(e.weights[1][5].is_nan(), "a zero-initialised tensor's update_ratio is NaN (null)");
    assert!(e.weights[1].iter().enumerate().all(|(i, r)| i == 5 || (r.is_finite() && *r > 0.0)));

    // The global norm against float64 and torch.nn.utils.clip_grad_norm_'s total, and
    // √Σ layer grad_norm² against the same float64 norm.
    let global = &e.data["global"];
    let (total64, torch_total, post64, coef64) =
        (global.double_value(&[0]), global.double_value(&[1]), global.double_value(&[2]), global.double_value(&[3]));
    assert!(close(e.total, total64, STATS_TOL), "global norm {} vs float64 {total64}", e.total);
    assert!(close(e.total, torch_total, STATS_TOL), "global norm {} vs clip_grad_norm_ {torch_total}", e.total);
    let layered = e.stats[0].iter().map(|n| n * n).sum::<f64>().sqrt();
    assert!(close(layered, total64, STATS_TOL), "√Σ layer grad_norm² {layered} vs float64 {total64}");

    // clip_norm on the same gradients: what it leaves, the norm it reports and
    // grad_norm_clipped / grad_norm (the reported clip_coef) against the clipped
    // gradients of torch.nn.utils, measured in float64.
    assert!(total64 > 5.0, "the case clips");
    let clip: Vec<GradPolicy> =
        serde_json::from_value(json!([{"kind": "clip_norm", "max_norm": 5.0}])).expect("policies");
    let mut policy = GradPolicies::new(&clip, Device::Cpu).expect("policy");
    let total = Tensor::from(e.total as f32);
    // As a job clips: the whole flat buffer at once.
    let outcome = tch::no_grad(|| policy.apply_flat(e.flat.grads(), &e.flat.layer_grads(), e.flat.params(), &total))
        .expect("clip");
    for (i, g) in e.flat.layer_grads().iter().enumerate() {
        assert_close(&format!("clipped grad {i}"), &g.flatten(0, -1), &e.data[&format!("clipped.{i}")], STATS_TOL);
    }
    let post = outcome.norm.double_value(&[]);
    assert!(close(post, post64, STATS_TOL), "grad_norm_clipped {post} vs float64 ‖clipped‖ {post64}");
    assert!(close(post / e.total, coef64, STATS_TOL), "clip_coef {} vs float64 {coef64}", post / e.total);
}

/// NaN, +Inf and −Inf gradients: the exact count of each layer's non-finite elements,
/// the histogram's non-finite bucket, and what the other statistics report then (the
/// layer's norm, mean and std NaN, so null; its max NaN or Inf, so null; its zero
/// fraction and histogram exact; the global norm non-finite, as PyTorch's).
#[test]
fn nonfinite_gradients_are_counted_exactly() {
    use gradscope::train::stats::HIST_BINS;
    let (dir, cases) = statistics_cases(json!([{
        "name": "nonfinite", "seed": 701, "max_norm": 1.0,
        "layers": [
            {"n": 1000, "nan": 3, "zeros": 5},
            {"n": 1000, "posinf": 2, "neginf": 1},
            {"n": 1000, "posinf": 5},
            {"n": 1000, "nan": 1, "posinf": 1, "neginf": 1},
            {"n": 1000}
        ]
    }]));
    let e = engine(dir.path(), &cases[0]);
    let want: Vec<f64> = (0..e.layers).map(|i| e.data[&format!("stats.{i}")].double_value(&[5])).collect();
    assert_eq!(want, [3.0, 3.0, 5.0, 3.0, 0.0], "the reference drew the specials it was asked for");
    assert_eq!(e.stats[5], want, "nonfinite counts");
    for (layer, &count) in want.iter().enumerate() {
        let theirs = |row: i64| e.data[&format!("stats.{layer}")].double_value(&[row]);
        let broken = count > 0.0;
        for (row, stat) in [(0, "grad_norm"), (2, "grad_mean"), (3, "grad_std")] {
            let ours = e.stats[row][layer];
            if broken {
                assert!(!ours.is_finite(), "layer {layer} {stat}: {ours} (null on a layer with NaN/Inf)");
            } else {
                assert!(
                    close(ours, theirs(row as i64), STATS_TOL),
                    "layer {layer} {stat}: {ours} vs {}",
                    theirs(row as i64)
                );
            }
        }
        // max |g|: NaN where a NaN is present, +Inf where only infinities are.
        assert!(
            close(e.stats[1][layer], theirs(1), STATS_TOL),
            "layer {layer} grad_max: {} vs {}",
            e.stats[1][layer],
            theirs(1)
        );
        assert!(close(e.stats[4][layer], theirs(4), STATS_TOL), "layer {layer} zero_frac");
        let hist = &e.hist[layer * HIST_BINS..(layer + 1) * HIST_BINS];
        let expected = Vec::<i64>::try_from(&e.data[&format!("hist.{layer}")]).expect("hist");
        assert_eq!(hist, expected.as_slice(), "layer {layer}: histogram");
        assert_eq!(hist[HIST_BINS - 1] as f64, count, "layer {layer}: the non-finite bucket");
    }
    assert!(close(e.stats[4][0], 5.0 / 1000.0, STATS_TOL), "zero_frac counts exact zeros beside NaN");
    assert!(e.stats[1][2].is_infinite(), "max |g| of a layer with only +Inf is +Inf");
    let global = &e.data["global"];
    assert!(!e.total.is_finite() && !global.double_value(&[0]).is_finite() && !global.double_value(&[1]).is_finite());
}

/// A bucket of 2^24 + 1 elements, where float32 stops counting by one: the histogram and
/// the other statistics of a 2^24 + 4-element layer (64 MiB) against NumPy.
#[test]
fn histogram_counts_are_exact_past_two_to_the_24() {
    use gradscope::train::stats::HIST_BINS;
    let big = (1 << 24) + 4;
    let (dir, cases) = statistics_cases(json!([{
        "name": "big_bucket", "seed": 702, "max_norm": 1.0,
        // Every value in [1, 2) but for 3 zeros: 2^24 + 1 in one bucket, an odd count.
        "layers": [{"n": big, "low": 1.0, "high": 1.999, "zeros": 3}, {"n": 10, "low": 0.25, "high": 0.5}]
    }]));
    let e = engine(dir.path(), &cases[0]);
    let expected = Vec::<i64>::try_from(&e.data["hist.0"]).expect("hist");
    let bin = |exp: i64| (exp + 41) as usize;
    assert_eq!(expected[bin(0)], (1 << 24) + 1, "NumPy counts 2^24 + 1 values in [1, 2)");
    assert_eq!(expected[0], 3);
    assert_eq!(&e.hist[..HIST_BINS], expected.as_slice(), "histogram of the large layer");
    assert_eq!(e.hist[HIST_BINS + bin(-2)], 10);
    assert_eq!(e.hist[..HIST_BINS].iter().sum::<i64>(), big);
    let zero_frac = e.data["stats.0"].double_value(&[4]);
    assert!(close(e.stats[4][0], zero_frac, STATS_TOL), "zero_frac {} vs {zero_frac}", e.stats[4][0]);
    for (row, stat) in [(0, "grad_norm"), (2, "grad_mean"), (3, "grad_std")] {
        let (ours, theirs) = (e.stats[row][0], e.data["stats.0"].double_value(&[row as i64]));
        assert!(close(ours, theirs, STATS_TOL), "{stat}: {ours:e} vs float64 {theirs:e}");
    }
}

/// The loss scaler against `torch.amp.GradScaler` on the CPU: a linear-plus-quadratic loss
/// trained by SGD in fp16 (the gradients stored in float16, as gradscope emulates it on the
/// CPU), whose scaled gradients overflow at the start (the scale of 2^16 is too large for
/// them), at spiked steps, and after growths. The same scale at every step (exactly), the
/// same skipped steps, the same unscaled gradients and final weights to 1e-6.
#[test]
fn loss_scaler_matches_torch_grad_scaler() {
    use gradscope::spec::{LossScaleSpec, Precision};
    use gradscope::train::precision::Mixed;

    let steps = 40;
    let lr = 0.01;
    let spec = LossScaleSpec { growth_interval: 4, ..LossScaleSpec::default() };
    let case = json!({
        "name": "scaler", "seed": 7, "steps": steps, "lr": lr, "spikes": [12, 13, 25],
        "loss_scale": {
            "init_scale": spec.init_scale, "growth_factor": spec.growth_factor,
            "backoff_factor": spec.backoff_factor, "growth_interval": spec.growth_interval,
        },
    });
    let dir = reference(&json!({"grad_scaler": [case]}));
    let t = load(&dir.path().join("scaler/scaler.safetensors"));
    let shapes: Vec<Vec<i64>> = (0..4).map(|i| t[&format!("init.{i}")].size()).collect();
    let params: Vec<Tensor> = (0..4).map(|i| t[&format!("init.{i}")].copy().set_requires_grad(true)).collect();
    let mut mixed = Mixed::new(Precision::Fp16, &spec, false);
    let (mut skips, mut growths) = (0, 0);
    let mut last_scale = spec.init_scale;
    for step in 0..steps {
        let scale = mixed.scaler().expect("fp16 scales its loss").scale();
        assert_eq!(scale, t[&format!("scale.{step}")].double_value(&[0]), "the scale at step {step}");
        growths += usize::from(scale > last_scale);
        last_scale = scale;
        for p in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let loss = params
            .iter()
            .enumerate()
            .map(|(i, p)| (&t[&format!("coef.{step}.{i}")] * p).sum(Kind::Float) + (p * p).sum(Kind::Float) * 0.5)
            .reduce(|a, b| a + b)
            .expect("terms");
        mixed.scaled_loss(&loss).expect("scale").expect("scaled").backward();
        // The flat gradient buffer, as a job holds it.
        let mut flat = Tensor::cat(&params.iter().map(|p| p.grad().flatten(0, -1)).collect::<Vec<_>>(), 0);
        let found_inf = tch::no_grad(|| mixed.after_backward(&mut flat)).expect("unscale").expect("found_inf");
        let overflow = found_inf.double_value(&[]) != 0.0;
        let expected_skip = t[&format!("skip.{step}")].double_value(&[0]) != 0.0;
        assert_eq!(overflow, expected_skip, "overflow at step {step}");
        skips += usize::from(overflow);
        let grads = flat.split_with_sizes(shapes.iter().map(|s| s.iter().product::<i64>()).collect::<Vec<_>>(), 0);
        for (i, (g, shape)) in grads.iter().zip(&shapes).enumerate() {
            let expected = &t[&format!("grad.{step}.{i}")];
            let g = g.view(shape.as_slice());
            if overflow {
                // Both hold the same infinities; the finite entries are unscaled alike.
                assert!(g.isfinite().eq_tensor(&expected.isfinite()).all().int64_value(&[]) != 0, "step {step}");
                let finite = expected.isfinite();
                assert_close(
                    &format!("finite unscaled gradient {i} at step {step}"),
                    &g.masked_select(&finite),
                    &expected.masked_select(&finite),
                    STATS_TOL,
                );
            } else {
                assert_close(&format!("unscaled gradient {i} at step {step}"), &g, expected, STATS_TOL);
                tch::no_grad(|| {
                    let _ = params[i].shallow_clone().g_add_(&(&g * -lr));
                });
            }
        }
        mixed.scaler_mut().expect("scaler").update(overflow);
    }
    assert!(skips >= 5 && growths >= 3, "the pattern exercises both: {skips} skips, {growths} growths");
    assert_eq!(mixed.scaler().expect("scaler").scale(), t["final_scale"].double_value(&[0]));
    for (i, p) in params.iter().enumerate() {
        assert_close(&format!("final weight {i}"), &p.detach(), &t[&format!("final.{i}")], STATS_TOL);
    }
}
