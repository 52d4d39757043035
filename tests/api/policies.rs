//! Grad policies and optimizers on real runs: monitoring leaves the trajectory alone,
//! `skip_spike` survives a level shift, ZClip follows its reference during warm-up, AGC
//! spares the output layer, and parameter groups and schedules match PyTorch's.
//!
//! These call the training loop and the policies directly (`gradscope::train`): the
//! numbers compared are bit patterns or closed-form values, not anything the HTTP layer
//! adds.

use gradscope::spec::GradPolicy;
use gradscope::spec::{JobSpec, ValidSpec};
use gradscope::train::policy::GradPolicies;
use gradscope::train::{Event, RunContext, StepReport, StopFlag, TrainEvent, train};
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

/// Every grad policy, each set so that it acts on the run below.
fn every_policy() -> Vec<(&'static str, Value)> {
    vec![
        ("clip_norm 2", json!({"kind": "clip_norm", "max_norm": 2.0})),
        ("clip_norm inf", json!({"kind": "clip_norm", "max_norm": 0.05, "norm_type": "inf"})),
        ("clip_value", json!({"kind": "clip_value", "limit": 0.02})),
        ("clip_layer_norm", json!({"kind": "clip_layer_norm", "max_norm": 0.5})),
        ("agc", json!({"kind": "agc", "lambda": 0.02})),
        ("autoclip", json!({"kind": "autoclip", "percentile": 25.0})),
        ("zclip", json!({"kind": "zclip", "alpha": 0.9, "z_threshold": 1.0, "warmup": 5})),
        ("skip_spike", json!({"kind": "skip_spike", "alpha": 0.9, "z_threshold": 1.0, "warmup": 5})),
    ]
}

/// A deep MLP whose gradient norms sit around the clipping thresholds above.
/// The device the trajectory tests train on: the CPU, or `GRADSCOPE_TEST_DEVICE` (e.g.
/// `cuda`) where a GPU is at hand.
fn test_device() -> String {
    std::env::var("GRADSCOPE_TEST_DEVICE").unwrap_or_else(|_| "cpu".to_owned())
}

fn mlp_spec(steps: u64, every: u64, grad: &Value) -> ValidSpec {
    let spec = json!({
        "seed": 11,
        "steps": steps,
        "batch_size": 32,
        "device": test_device(),
        "task": {"kind": "classification", "features": 16, "classes": 6, "eval_every": 0},
        "model": {"kind": "mlp", "layers": 4, "hidden": 48, "init_scale": 1.5},
        "optimizer": {"kind": "adamw", "lr": 0.01},
        "policy": {"grad": [grad]},
        "monitor": {"every": every, "spectral_every": every, "time_every": every},
        "checkpoint_every": 0,
    });
    JobSpec::parse_value(&spec).expect("spec is valid")
}

/// Trains `spec` to the end on one thread; its step reports and events.
fn run(spec: &ValidSpec) -> (Vec<StepReport>, Vec<Event>) {
    tch::set_num_threads(1);
    let ctx = RunContext::default();
    let (mut steps, mut events) = (Vec::new(), Vec::new());
    train(spec, &ctx, &StopFlag::default(), &mut |event| match event {
        TrainEvent::Step(report) => steps.push(report),
        TrainEvent::Event(event) => events.push(event),
        _ => {}
    })
    .expect("trains");
    (steps, events)
}

/// The first step whose loss or pre-policy norm differs in any bit, if one does.
fn first_difference(a: &[StepReport], b: &[StepReport]) -> Option<u64> {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .find(|(x, y)| x.loss.to_bits() != y.loss.to_bits() || x.grad_norm.to_bits() != y.grad_norm.to_bits())
        .map(|(x, _)| x.step)
}

/// An observer must not perturb: the same spec and seed give the same losses, bit for
/// bit, with statistics off, on every step, and on every 7th, under every grad policy.
#[test]
fn monitoring_never_changes_the_trajectory() {
    let steps = 40;
    let mut differences = Vec::new();
    for (name, policy) in every_policy() {
        let (off, _) = run(&mlp_spec(steps, 0, &policy));
        assert!(off.iter().all(|r| r.loss.is_finite() && r.layers.is_none()), "{name}: the baseline trains");
        // The policy acts on this run: otherwise the comparison would prove nothing.
        let acted = off.iter().filter(|r| r.clip_coef < 1.0 - 1e-6 || r.skipped).count();
        assert!(acted > 0, "{name}: the policy never acted");
        for every in [1, 7] {
            let (watched, _) = run(&mlp_spec(steps, every, &policy));
            assert!(watched.iter().any(|r| r.layers.is_some()), "{name}: every {every} records statistics");
            let differs = first_difference(&off, &watched);
            println!("{name}: acted on {acted} of {steps} steps; monitor.every {every}: first difference {differs:?}");
            if let Some(step) = differs {
                differences.push(format!("{name}, monitor.every {every}: from step {step}"));
            }
        }
    }
    assert!(differences.is_empty(), "monitoring changed the trajectory: {differences:#?}");
}

/// Trains `spec` with its final weights written to a checkpoint; the steps and the weights.
fn run_with_weights(spec: &ValidSpec) -> (Vec<StepReport>, Vec<(String, Tensor)>) {
    tch::set_num_threads(1);
    let dir = tempfile::TempDir::new().expect("temp dir");
    let path = dir.path().join("weights.safetensors");
    let ctx = RunContext { checkpoint: Some(path.clone()), ..RunContext::default() };
    let mut steps = Vec::new();
    train(spec, &ctx, &StopFlag::default(), &mut |event| {
        if let TrainEvent::Step(r) = event {
            steps.push(r);
        }
    })
    .expect("trains");
    let mut weights = Tensor::read_safetensors(&path).expect("weights");
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    (steps, weights)
}

/// Every observer (per-layer statistics with the forward signal, the spectral radius, the
/// temporal gradient profile) on or off leaves the losses, the gradient norms and the
/// final weights the same, bit for bit, on recurrent models, a transformer and an MLP,
/// with and without clipping.
#[test]
fn observers_never_change_the_trajectory_or_the_weights() {
    let model_specs = [
        json!({"kind": "rnn", "layers": 2, "hidden": 16, "init_scale": 2.0}),
        json!({"kind": "lstm", "layers": 1, "hidden": 16}),
        json!({"kind": "gru", "layers": 2, "hidden": 12, "dropout": 0.2}),
        json!({"kind": "mlp", "layers": 3, "hidden": 24}),
        json!({"kind": "transformer", "layers": 2, "hidden": 16, "heads": 2, "norm": "layer"}),
    ];
    let spec = |model: &Value, monitor: Value, clip: bool| {
        // Feature inputs (the adding problem) and token inputs through an embedding (copy).
        let task = match model["kind"].as_str() {
            Some("mlp") => json!({"kind": "classification", "features": 24, "classes": 4, "eval_every": 0}),
            Some("gru" | "transformer") => {
                json!({"kind": "copy", "seq_len": 12, "symbols": 4, "length": 3, "eval_every": 0})
            }
            _ => json!({"kind": "adding", "seq_len": 12, "eval_every": 0}),
        };
        let grad = if clip { json!([{"kind": "clip_norm", "max_norm": 0.5}]) } else { json!([]) };
        JobSpec::parse_value(&json!({
            "seed": 5, "steps": 25, "batch_size": 16, "device": test_device(),
            "task": task, "model": model, "optimizer": {"kind": "adam", "lr": 0.01},
            "policy": {"grad": grad}, "monitor": monitor, "checkpoint_every": 0,
        }))
        .expect("spec is valid")
    };
    let off = json!({"every": 0, "spectral_every": 0, "time_every": 0});
    let ons = [
        json!({"every": 0, "spectral_every": 1, "time_every": 1}),
        json!({"every": 3, "spectral_every": 4, "time_every": 5}),
    ];
    for model in &model_specs {
        for clip in [false, true] {
            let (base_steps, base_weights) = run_with_weights(&spec(model, off.clone(), clip));
            for on in &ons {
                let (steps, weights) = run_with_weights(&spec(model, on.clone(), clip));
                let what = format!("{} clip {clip}, monitor {on}", model["kind"]);
                assert_eq!(first_difference(&base_steps, &steps), None, "{what}: the trajectory changed");
                let measured = steps.iter().filter(|r| r.probes != Default::default()).count();
                assert!(measured > 0, "{what}: nothing was measured");
                assert_eq!(base_weights.len(), weights.len());
                for ((name, a), (_, b)) in base_weights.iter().zip(&weights) {
                    assert!(a.equal(b), "{what}: final {name} differs");
                }
            }
        }
    }
}

fn policies(json: Value) -> GradPolicies {
    let policies: Vec<GradPolicy> = serde_json::from_value(json).expect("policies parse");
    GradPolicies::new(&policies, Device::Cpu).expect("policies")
}

/// One gradient tensor whose norm is `norm`, and that norm as the loop passes it.
fn gradient(norm: f64) -> (Vec<Tensor>, Tensor) {
    let g = Tensor::from_slice(&[0.6 * norm as f32, 0.8 * norm as f32]);
    let total = g.norm();
    (vec![g], total)
}

/// A norm level that doubles for good is not a spike: after `max_consecutive` skips the
/// update is taken and the new level joins the statistics, so training goes on.
#[test]
fn skip_spike_survives_a_level_shift() {
    let mut state = policies(json!([{"kind": "skip_spike", "alpha": 0.97, "z_threshold": 6.0, "warmup": 25}]));
    let mut skipped_after_shift = Vec::new();
    for step in 0..200u32 {
        // A small, deterministic wobble around 1, then around 2 from step 100 on.
        let level = if step < 100 { 1.0 } else { 2.0 };
        let norm = level * (1.0 + 0.01 * f64::from(step % 5));
        let (grads, total) = gradient(norm);
        let outcome = state.apply(&grads, &grads, &total).expect("apply");
        let skipped = outcome.skip.is_some_and(|s| s.int64_value(&[]) == 1);
        assert!(!skipped || step >= 100, "step {step}: nothing to skip before the shift");
        if step >= 100 && skipped {
            skipped_after_shift.push(step);
        }
    }
    let default_bound = gradscope::spec::policy::DEFAULT_SPIKE_MAX_CONSECUTIVE as usize;
    assert!(
        skipped_after_shift.len() <= default_bound,
        "{} of the 100 updates after the shift skipped (first {:?}); at most {default_bound} may be",
        skipped_after_shift.len(),
        skipped_after_shift.first()
    );
    assert_eq!(skipped_after_shift, (100..100 + default_bound as u32).collect::<Vec<_>>());
}

/// The bound holds in a real run, and the run says when it let a spike through. A weight
/// policy doubles every weight once, at step 30, which moves the gradient norm up for good.
#[test]
fn skip_spike_accepts_and_reports_after_its_bound() {
    let spec = json!({
        "seed": 3,
        "steps": 80,
        "batch_size": 32,
        "device": "cpu",
        "task": {"kind": "classification", "features": 16, "classes": 6, "eval_every": 0},
        "model": {"kind": "mlp", "layers": 2, "hidden": 32},
        "optimizer": {"kind": "sgd", "lr": 0.01},
        "policy": {
            "grad": [{"kind": "skip_spike", "z_threshold": 4.0, "warmup": 10, "max_consecutive": 5}],
            "weight": [{"kind": "scale", "factor": 3.0, "every": 30}],
        },
        "monitor": {"every": 0},
        "checkpoint_every": 0,
    });
    let spec = JobSpec::parse_value(&spec).expect("valid");
    let (steps, events) = run(&spec);
    let skipped: Vec<u64> = steps.iter().filter(|r| r.skipped).map(|r| r.step).collect();
    let mut longest = 0;
    let mut streak = 0;
    for r in &steps {
        streak = if r.skipped { streak + 1 } else { 0 };
        longest = longest.max(streak);
    }
    assert!(!skipped.is_empty(), "the shift is seen as a spike at first");
    assert_eq!(longest, 5, "skips in a row are bounded by max_consecutive: skipped {skipped:?}");
    let accepted: Vec<&Event> = events.iter().filter(|e| e.kind.as_str() == "spike_accepted").collect();
    assert!(!accepted.is_empty(), "a spike_accepted event: {events:?}");
    let first = accepted[0];
    assert!(skipped.contains(&(first.step - 1)) && !skipped.contains(&first.step), "{first:?} after {skipped:?}");
    let at = &steps[(first.step - 1) as usize];
    assert_eq!(first.value, Some(at.grad_norm));
}

/// ZClip during warm-up, as its reference (`bluorion-com/ZClip`) does: the norm is capped
/// at `max_grad_norm` by `clip_grad_norm_`'s coefficient `min(1, max / (norm + 1e-6))`;
/// after warm-up the adaptive threshold and the cap both apply, the lower winning.
#[test]
fn zclip_caps_at_max_grad_norm_during_warmup() {
    let mut state = policies(json!([{"kind": "zclip", "warmup": 4, "alpha": 0.9, "z_threshold": 2.0}]));
    let norms = [3.0, 0.5, 2.0, 1.5];
    for (step, norm) in norms.iter().enumerate() {
        let (grads, total) = gradient(*norm);
        let outcome = state.apply(&grads, &grads, &total).expect("apply");
        let total = total.double_value(&[]);
        let expected = total * (1.0f64 / (total + 1e-6)).min(1.0);
        let after = grads[0].norm().double_value(&[]);
        assert!((after - expected).abs() <= 1e-6 * expected, "warm-up step {step}: ‖g‖ {after} vs {expected}");
        assert!((outcome.norm.double_value(&[]) - expected).abs() <= 1e-6 * expected);
    }
    // The warm-up norms (uncapped) set mean 1.75 and population variance 0.8125; a norm of
    // 1.5 is no spike, and 1.5 > max_grad_norm = 1 is capped.
    let (grads, total) = gradient(1.5);
    state.apply(&grads, &grads, &total).expect("apply");
    let after = grads[0].norm().double_value(&[]);
    let total = total.double_value(&[]);
    let expected = total * 1.0 / (total + 1e-6);
    assert!((after - expected).abs() <= 1e-6, "after warm-up the cap still holds: {after} vs {expected}");

    // `max_grad_norm: null` is the reference's None: warm-up leaves the gradients alone.
    let mut free = policies(json!([{"kind": "zclip", "warmup": 4, "max_grad_norm": null}]));
    let (grads, total) = gradient(3.0);
    free.apply(&grads, &grads, &total).expect("apply");
    assert!((grads[0].norm().double_value(&[]) - 3.0).abs() < 1e-5);
}

/// AGC leaves the output layer unclipped by default, as the paper does with the final
/// classifier, and clips it when told to.
#[test]
fn agc_spares_the_head() {
    use gradscope::spec::{ModelSpec, TaskSpec};
    use gradscope::train::model;
    use gradscope::train::task::Task;

    tch::set_num_threads(1);
    let model_spec: ModelSpec =
        serde_json::from_value(json!({"kind": "mlp", "layers": 2, "hidden": 16, "init_scale": 0.5})).expect("model");
    let task_spec: TaskSpec =
        serde_json::from_value(json!({"kind": "classification", "features": 8, "classes": 4})).expect("task");
    let task = Task::new(&task_spec, "", 5, Device::Cpu).expect("task");
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let (net, params) = model::build(&model_spec, &vs, task.io(), 5).expect("model");
    let names: Vec<String> = params.layers().into_iter().map(|l| l.name).collect();
    let weights: Vec<Tensor> = params.tensors().map(Tensor::shallow_clone).collect();
    let xs = Tensor::randn([64, 8], (Kind::Float, Device::Cpu)) * 10.0;
    let ys = Tensor::randint(4, [64], (Kind::Int64, Device::Cpu));
    task.loss(&net.forward(&xs, true).expect("forward"), &ys).expect("loss").backward();
    let fresh = || -> Vec<Tensor> { weights.iter().map(|w| w.grad().copy()).collect() };

    for (exclude_head, spec) in [
        (true, json!([{"kind": "agc", "lambda": 0.001}])),
        (false, json!([{"kind": "agc", "lambda": 0.001, "exclude_head": false}])),
    ] {
        let grads = fresh();
        let before: Vec<Tensor> = grads.iter().map(Tensor::copy).collect();
        let mut state = policies(spec).with_head(params.head());
        let total = grads.iter().map(|g| g.norm().square()).fold(Tensor::from(0.0f32), |a, b| a + b).sqrt();
        tch::no_grad(|| state.apply(&grads, &weights, &total)).expect("agc");
        for (i, name) in names.iter().enumerate() {
            let ratio = grads[i].norm().double_value(&[]) / before[i].norm().double_value(&[]);
            // Independent of the policy: each unit's gradient norm against 0.001·max(‖w‖, 1e-3).
            let unit = |t: &Tensor| {
                if t.dim() <= 1 { t.norm().reshape([1]) } else { t.norm_scalaropt_dim(2.0, [1].as_slice(), false) }
            };
            let limit = unit(&weights[i]).clamp_min(1e-3) * 0.001;
            let over = unit(&before[i]).gt_tensor(&limit).any().int64_value(&[]) == 1;
            if name.starts_with("head.") {
                println!("exclude_head {exclude_head}: {name} gradient norm after/before {ratio}");
            }
            if name.starts_with("head.") && exclude_head {
                assert!(grads[i].equal(&before[i]), "{name}: untouched (ratio {ratio})");
            } else {
                assert!(over, "{name}: the test's λ makes every layer clip");
                assert!(ratio < 0.999, "{name}: clipped (ratio {ratio}, exclude_head {exclude_head})");
                let units = unit(&grads[i]);
                assert!(units.le_tensor(&(limit * (1.0 + 1e-5))).all().int64_value(&[]) == 1, "{name}: within λ‖w‖");
            }
        }
    }
}
