//! Each preset pair shows its remedy working, asserted on numbers. The runs are the
//! presets themselves, shortened to what the effect needs, on the CPU.

use gradscope::train::JobSpec;
use gradscope::train::presets::{self, Summary};

fn preset(name: &str, steps: u64) -> JobSpec {
    tch::set_num_threads(1);
    let mut spec = presets::all().into_iter().find(|p| p.name == name).expect("preset exists").spec;
    spec.steps = steps;
    spec.device = "cpu".to_owned();
    spec.optimizer.warmup_steps = spec.optimizer.warmup_steps.min(steps);
    spec
}

fn run(name: &str, steps: u64) -> Summary {
    let summary = presets::run(&preset(name, steps)).expect("runs");
    println!("{name} ({steps} steps): {summary:?}");
    summary
}

#[test]
fn clipping_keeps_the_exploding_rnn_alive() {
    let failing = run("exploding-rnn", 300);
    let clipped = run("exploding-rnn-clipped", 300);
    assert!(failing.diverged && failing.steps < 300, "the unclipped RNN diverges: {failing:?}");
    assert!(!clipped.diverged);
    assert!(clipped.max_grad_norm > 5.0, "the clipped twin meets the same spikes");
    assert!(clipped.max_grad_norm_clipped <= 1.0 + 1e-5, "and never steps with a norm above max_norm");
    assert!(clipped.final_loss.is_finite() && clipped.final_loss < clipped.first_loss * 0.5);
}

#[test]
fn normalisation_and_residuals_let_gradients_reach_the_first_layer() {
    let plain = run("vanishing-mlp", 120);
    let batch = run("vanishing-mlp-batchnorm", 120);
    let residual = run("vanishing-mlp-residual", 120);
    assert!(plain.first_last_ratio < 1e-6, "vanishing: first/last gradient {:e}", plain.first_last_ratio);
    for twin in [&batch, &residual] {
        assert!(twin.first_last_ratio > 1e-2, "remedied: first/last gradient {:e}", twin.first_last_ratio);
        assert!(twin.final_loss < plain.final_loss - 0.5, "and it learns: {} vs {}", twin.final_loss, plain.final_loss);
    }
    assert!(plain.valid_metric.expect("accuracy") < 0.2, "the plain MLP stays near chance (0.1)");
}

#[test]
fn weight_policies_stop_the_weights_growing() {
    let free = run("growing-weights-rnn", 120);
    for twin in ["growing-weights-rnn-clip", "growing-weights-rnn-scale", "growing-weights-rnn-maxnorm"] {
        let held = run(twin, 120);
        assert!(
            held.final_weight_norm < 0.8 * free.final_weight_norm,
            "{twin}: weight norm {} vs {}",
            held.final_weight_norm,
            free.final_weight_norm
        );
    }
}

#[test]
fn pre_norm_keeps_the_gradient_flowing_where_post_norm_loses_it() {
    let post = run("transformer-post-ln", 60);
    let pre = run("transformer-pre-ln", 60);
    assert!(
        post.first_last_ratio < 1e-4 * pre.first_last_ratio,
        "post {:e} pre {:e}",
        post.first_last_ratio,
        pre.first_last_ratio
    );
    assert!(pre.final_loss < post.final_loss, "pre {} post {}", pre.final_loss, post.final_loss);
}

#[test]
fn the_same_spec_and_seed_train_the_same_way() {
    let a = run("vanishing-mlp-batchnorm", 20);
    let b = run("vanishing-mlp-batchnorm", 20);
    assert_eq!(a, b);
    assert!(a.valid_loss.is_some() && a.valid_metric.is_some(), "validation ran after the last step");
}
