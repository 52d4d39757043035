//! Each preset pair shows what its description claims, asserted on numbers against the
//! task's trivial baseline: the failing run fails the way it says, and every remedy learns
//! the task. The runs are the presets themselves, shortened to what the effect needs, on
//! the CPU; every preset runs.

use std::collections::HashMap;

use gradscope::spec::ValidSpec;
use gradscope::train::data::builtin_corpus;
use gradscope::train::presets::{self, Summary};

/// The adding problem's trivial baseline: answering the mean of the sum of two U(0, 1)
/// values, 1, scores its variance, 2 × 1/12.
const ADDING_BASELINE_MSE: f64 = 1.0 / 6.0;
/// Classification's trivial baseline over 10 balanced classes: accuracy 1/10, and
/// cross-entropy ln 10 for the uniform prediction.
const CHANCE_ACCURACY: f64 = 0.1;

fn preset(name: &str, steps: u64) -> ValidSpec {
    tch::set_num_threads(1);
    let mut spec = presets::all().into_iter().find(|p| p.name == name).expect("preset exists").spec.into_inner();
    spec.steps = steps;
    spec.device = "cpu".to_owned();
    spec.optimizer.warmup_steps = spec.optimizer.warmup_steps.min(steps);
    ValidSpec::try_from(spec).expect("a shortened preset is valid")
}

fn run(name: &str, steps: u64) -> Summary {
    let summary = presets::run(&preset(name, steps)).expect("runs");
    println!("{name} ({steps} steps): {summary:?}");
    summary
}

/// The char-LM baseline: the cross-entropy (nats) of predicting every character by its
/// frequency in the corpus alone, computed here from the text.
fn unigram_entropy(corpus: &str) -> f64 {
    let text = builtin_corpus(corpus).expect("built-in corpus");
    let mut counts: HashMap<char, f64> = HashMap::new();
    for c in text.chars() {
        *counts.entry(c).or_default() += 1.0;
    }
    let n: f64 = counts.values().sum();
    -counts.values().map(|&k| k / n * (k / n).ln()).sum::<f64>()
}

fn valid(summary: &Summary) -> f64 {
    summary.valid_loss.expect("validation ran after the last step")
}

#[test]
fn clipping_keeps_the_exploding_rnn_alive_and_it_learns_the_sum() {
    let failing = run("exploding-rnn", 300);
    // Where the RNN starts to learn the sum depends on the CPU's kernels: between steps
    // 1000 and 1500 on one (validation MSE 0.148 at 1000, 0.055 at 1500, 0.019 at 2000),
    // before 1000 on another.
    let clipped = run("exploding-rnn-clipped", 2000);
    assert!(failing.diverged && failing.steps < 300, "the unclipped RNN diverges: {failing:?}");
    assert!(!clipped.diverged);
    assert!(clipped.max_grad_norm > 5.0, "the clipped twin meets the same spikes");
    assert!(clipped.max_grad_norm_clipped <= 1.0 + 1e-5, "and never steps with a norm above max_norm");
    assert!(
        valid(&clipped) < 0.5 * ADDING_BASELINE_MSE,
        "it learns the sum: validation MSE {} against the baseline {ADDING_BASELINE_MSE}",
        valid(&clipped)
    );
}

#[test]
fn normalisation_and_residuals_let_gradients_reach_the_first_layer() {
    let plain = run("vanishing-mlp", 200);
    let batch = run("vanishing-mlp-batchnorm", 200);
    let residual = run("vanishing-mlp-residual", 200);
    assert!(plain.first_last_ratio < 1e-6, "vanishing: first/last gradient {:e}", plain.first_last_ratio);
    let plain_accuracy = plain.valid_metric.expect("accuracy");
    assert!(plain_accuracy < 2.0 * CHANCE_ACCURACY, "the plain MLP stays near chance: {plain_accuracy}");
    assert!(valid(&plain) > 0.9 * 10f64.ln(), "its loss stays near ln 10: {}", valid(&plain));
    for (name, twin) in [("batchnorm", &batch), ("residual", &residual)] {
        assert!(twin.first_last_ratio > 1e-2, "{name}: first/last gradient {:e}", twin.first_last_ratio);
        let accuracy = twin.valid_metric.expect("accuracy");
        assert!(accuracy > 5.0 * CHANCE_ACCURACY, "{name} learns: accuracy {accuracy}");
        assert!(valid(twin) < 0.5 * 10f64.ln(), "{name}: validation loss {}", valid(twin));
    }
}

#[test]
fn without_loss_scaling_fp16_gradients_underflow_and_the_first_layers_never_change() {
    let plain = run("fp16-underflow-mlp", 300);
    let scaled = run("fp16-loss-scaling-mlp", 300);
    for layer in ["blocks.0.linear.weight", "blocks.1.linear.weight"] {
        let (start, end) = layer_norms(&plain, layer);
        assert_eq!(start, end, "{layer} without scaling: every gradient rounds to 0, the weights never move");
        let (start, end) = layer_norms(&scaled, layer);
        assert!((end - start).abs() > 1e-4 * start, "{layer} with scaling moves: {start} to {end}");
    }
    for summary in [&plain, &scaled] {
        let (start, end) = layer_norms(summary, "head.weight");
        assert!((end - start).abs() > 1e-3 * start, "the last layer learns either way: {start} to {end}");
    }
}

/// The norm of the named layer after the first and the last recorded step.
fn layer_norms(summary: &Summary, name: &str) -> (f64, f64) {
    let i = summary.layer_names.iter().position(|n| n == name).expect("layer");
    (summary.start_layer_weight_norms[i], summary.final_layer_weight_norms[i])
}

#[test]
fn without_a_weight_policy_weights_grow_and_validation_rises_and_each_policy_holds_both() {
    let steps = 1500;
    let baseline = unigram_entropy("builtin:tiny");
    let free = run("growing-weights-rnn", steps);
    for matrix in ["rnn.weight_hh_l0", "rnn.weight_ih_l0"] {
        let (start, end) = layer_norms(&free, matrix);
        assert!(end > 2.0 * start, "{matrix} grows: {start} to {end}");
    }
    let best = free.valid_losses.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(valid(&free) > 1.3 * best, "validation climbs from its best {best} to {}", valid(&free));
    assert!(valid(&free) > 1.5 * baseline, "to well above the unigram baseline {baseline}: {}", valid(&free));
    let (_, free_recurrent) = layer_norms(&free, "rnn.weight_hh_l0");
    for twin in ["growing-weights-rnn-clip", "growing-weights-rnn-scale", "growing-weights-rnn-maxnorm"] {
        let held = run(twin, steps);
        let (_, recurrent) = layer_norms(&held, "rnn.weight_hh_l0");
        assert!(recurrent < 0.75 * free_recurrent, "{twin}: recurrent weight norm {recurrent} vs {free_recurrent}");
        assert!(valid(&held) < 0.5 * valid(&free), "{twin}: validation {} vs {}", valid(&held), valid(&free));
        let best = held.valid_losses.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(best < 0.9 * baseline, "{twin} learns: best validation {best} vs unigram {baseline}");
    }
}

#[test]
fn pre_norm_and_warm_up_keep_the_gradient_flowing_where_post_norm_loses_it() {
    let steps = 300;
    let baseline = unigram_entropy("builtin:tiny");
    let post = run("transformer-post-ln", steps);
    let pre = run("transformer-pre-ln", steps);
    let warm = run("transformer-post-ln-warmup", steps);
    assert!(
        post.first_last_ratio < 1e-4 * pre.first_last_ratio,
        "post {:e} pre {:e}",
        post.first_last_ratio,
        pre.first_last_ratio
    );
    assert!(valid(&post) > 0.97 * baseline, "post-LN stalls at the unigram entropy: {} vs {baseline}", valid(&post));
    assert!(post.final_loss > 0.95 * baseline, "in training too: {} vs {baseline}", post.final_loss);
    for (name, twin) in [("pre-LN", &pre), ("warm-up", &warm)] {
        assert!(
            twin.final_loss < 0.8 * baseline,
            "{name} learns: training loss {} vs unigram {baseline}",
            twin.final_loss
        );
        let best = twin.valid_losses.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(best < 0.9 * baseline, "{name}: best validation {best} vs unigram {baseline}");
        assert!(valid(twin) < valid(&post), "{name}: {} vs post-LN {}", valid(twin), valid(&post));
    }
}

#[test]
fn the_same_spec_and_seed_train_the_same_way() {
    let a = run("vanishing-mlp-batchnorm", 20);
    let b = run("vanishing-mlp-batchnorm", 20);
    assert_eq!(a, b);
    assert!(a.valid_loss.is_some() && a.valid_metric.is_some(), "validation ran after the last step");
}

#[test]
fn every_preset_is_exercised() {
    let exercised = [
        "exploding-rnn",
        "exploding-rnn-clipped",
        "vanishing-mlp",
        "vanishing-mlp-batchnorm",
        "vanishing-mlp-residual",
        "growing-weights-rnn",
        "growing-weights-rnn-clip",
        "growing-weights-rnn-scale",
        "growing-weights-rnn-maxnorm",
        "transformer-post-ln",
        "transformer-pre-ln",
        "transformer-post-ln-warmup",
        "fp16-underflow-mlp",
        "fp16-loss-scaling-mlp",
    ];
    let mut all: Vec<String> = presets::all().into_iter().map(|p| p.name).collect();
    all.sort();
    let mut named: Vec<String> = exercised.iter().map(|n| (*n).to_owned()).collect();
    named.sort();
    assert_eq!(all, named, "a new preset needs its behaviour test");
}

/// Trains a vanilla tanh RNN (recurrent weights at 1.5× PyTorch's scale, SGD with
/// momentum, as the exploding preset but a gentler rate) on the adding problem of
/// `seq_len`, non-finite updates skipped, and returns, for each profiled step (every 30th),
/// the first input position's gradient norm over the last's.
fn adding_time_ratios(seq_len: i64, clip: bool, steps: u64) -> Vec<(u64, f64)> {
    tch::set_num_threads(1);
    let grad = if clip { serde_json::json!([{"kind": "clip_norm", "max_norm": 1.0}]) } else { serde_json::json!([]) };
    let spec = gradscope::spec::JobSpec::parse_value(&serde_json::json!({
        "seed": 1,
        "steps": steps,
        "batch_size": 32,
        "device": "cpu",
        "task": {"kind": "adding", "seq_len": seq_len, "eval_every": 0},
        "model": {"kind": "rnn", "layers": 1, "hidden": 64, "activation": "tanh", "init_scale": 1.5},
        "optimizer": {"kind": "sgd", "lr": 0.02, "momentum": 0.9},
        "policy": {"grad": grad, "on_nonfinite": "skip"},
        "monitor": {"every": 0, "spectral_every": 0, "time_every": 30},
        "checkpoint_every": 0,
    }))
    .expect("valid");
    let mut ratios = Vec::new();
    gradscope::train::train(&spec, &Default::default(), &Default::default(), &mut |event| {
        if let gradscope::train::TrainEvent::Step(r) = event
            && let Some(profile) = &r.probes.time
        {
            ratios.push((r.step, profile[0] / profile[profile.len() - 1]));
        }
    })
    .expect("trains");
    let shown: Vec<String> = ratios.iter().map(|(s, r)| format!("{s}: {r:.1e}")).collect();
    println!("adding, seq_len {seq_len}, clip {clip}: first/last position gradient {}", shown.join(", "));
    ratios
}

/// The temporal gradient profile shows the gradient through time vanish: on the adding
/// problem of 50 and 100 steps without clipping, the first position's gradient against
/// the last's falls by orders of magnitude as training goes (to exactly 0: the saturated
/// units pass nothing back), while the clipped twin's stays lit. At 20 steps neither run
/// loses it; its numbers are printed beside the others.
#[test]
fn on_the_adding_problem_without_clipping_the_early_positions_go_dark() {
    let late = |r: &[(u64, f64)]| r[r.len() - 5..].iter().map(|(_, x)| *x).collect::<Vec<f64>>();
    for seq_len in [20, 50, 100] {
        let free = adding_time_ratios(seq_len, false, 600);
        let clipped = adding_time_ratios(seq_len, true, 600);
        assert_eq!((free.len(), clipped.len()), (20, 20), "a profile every 30 steps");
        if seq_len == 20 {
            continue;
        }
        let (start, free_late, clipped_late) = (free[0].1, late(&free), late(&clipped));
        let darkest_free = free_late.iter().copied().fold(0.0, f64::max);
        let dimmest_clipped = clipped_late.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(darkest_free <= 1e-3 * start, "seq_len {seq_len}: unclipped {free_late:?} from {start:e} at the start");
        assert!(dimmest_clipped > 0.0, "seq_len {seq_len}: the clipped run stays lit: {clipped_late:?}");
        assert!(darkest_free <= 1e-3 * dimmest_clipped, "seq_len {seq_len}: {free_late:?} vs clipped {clipped_late:?}");
    }
}

/// The step reports and events of a run of `spec` with test hooks `ctx`, and how it ended.
fn trace(
    spec: &serde_json::Value,
    ctx: &gradscope::train::RunContext,
) -> (Vec<gradscope::train::StepReport>, Vec<gradscope::train::Event>, gradscope::train::Outcome) {
    use gradscope::train::{StopFlag, TrainEvent};
    tch::set_num_threads(1);
    let spec = gradscope::spec::JobSpec::parse_value(spec).expect("valid spec");
    let (mut steps, mut events) = (Vec::new(), Vec::new());
    let outcome = gradscope::train::train(&spec, ctx, &StopFlag::default(), &mut |e| match e {
        TrainEvent::Step(s) => steps.push(s),
        TrainEvent::Event(e) => events.push(e),
        _ => {}
    })
    .expect("trains");
    (steps, events, outcome)
}

/// An MLP trained by Adam at a constant rate, no dropout: what a step computes depends on
/// the state and the batch alone.
fn rollback_spec(steps: u64, on_spike: &str, max_rollbacks: u64) -> serde_json::Value {
    let rollback = if on_spike == "rollback" {
        serde_json::json!({"window": 10, "rollback_every": 10, "skip_batches": 7, "max_rollbacks": max_rollbacks})
    } else {
        serde_json::json!({})
    };
    serde_json::json!({
        "seed": 11, "steps": steps, "batch_size": 16, "device": "cpu",
        "task": {"kind": "classification"},
        "model": {"kind": "mlp", "layers": 2, "hidden": 32},
        "optimizer": {"kind": "adam", "lr": 0.003},
        "policy": {"on_spike": on_spike, "rollback": rollback},
    })
}

/// A loss spike injected at step 35 (its loss × 1000) is caught, the state after step 30
/// comes back and the next 7 batches are skipped: from there the run's losses are those
/// of a run that trained 30 steps, never saw batches 31 to 42 (the 5 the spike's
/// stretch drew, and the 7 skipped), and trained on.
#[test]
fn a_rolled_back_spike_trains_on_as_a_run_that_never_saw_the_skipped_batches() {
    use gradscope::train::RunContext;
    let ctx = RunContext { spike_at: vec![35], ..RunContext::default() };
    let (rolled, events, outcome) = trace(&rollback_spec(60, "rollback", 3), &ctx);
    assert_eq!(outcome, gradscope::train::Outcome::Succeeded);
    let rollbacks: Vec<_> = events.iter().filter(|e| e.kind == gradscope::vocab::EventKind::Rollback).collect();
    assert_eq!(rollbacks.len(), 1, "{events:?}");
    assert_eq!((rollbacks[0].step, rollbacks[0].value), (35, Some(5.0)), "{}", rollbacks[0].message);
    assert!(
        rolled[34].loss > 100.0 * rolled[33].loss,
        "the injected spike: {} after {}",
        rolled[34].loss,
        rolled[33].loss
    );

    let never = RunContext { drop_batches_after: Some((30, 5 + 7)), ..RunContext::default() };
    let (clean, ..) = trace(&rollback_spec(55, "ignore", 3), &never);
    assert_eq!((rolled.len(), clean.len()), (60, 55));
    for (a, b) in rolled[35..].iter().zip(&clean[30..]) {
        assert!(
            (a.loss - b.loss).abs() <= 1e-6 * b.loss.abs(),
            "step {} after the rollback: loss {} vs {} at step {} of the run without those batches",
            a.step,
            a.loss,
            b.loss,
            b.step
        );
    }
    // And the spike's stretch is not what the clean run saw: the comparison has teeth.
    assert!((rolled[31].loss - clean[31].loss).abs() > 1e-6 * clean[31].loss.abs());
}

/// After `max_rollbacks` rollbacks the next spike ends the run `diverged`.
#[test]
fn a_spike_past_the_most_rollbacks_ends_the_run_diverged() {
    use gradscope::train::{Outcome, RunContext};
    let ctx = RunContext { spike_at: vec![25, 45], ..RunContext::default() };
    let (steps, events, outcome) = trace(&rollback_spec(60, "rollback", 1), &ctx);
    assert!(matches!(&outcome, Outcome::Diverged(why) if why.contains("max_rollbacks")), "{outcome:?}");
    assert_eq!(steps.last().map(|s| s.step), Some(45));
    assert_eq!(events.iter().filter(|e| e.kind == gradscope::vocab::EventKind::Rollback).count(), 1);
}
