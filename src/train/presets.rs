//! The seed experiments (DESIGN.md §5): for each remedy of the seed article, a failing run
//! beside its remedied twin, identical but for the remedy, each sized to show the
//! difference within about a minute on two CPU cores.

use serde::Serialize;
use serde_json::json;
use tch::Tensor;
use utoipa::ToSchema;

use super::data::builtin_corpus;
use super::{LayerInfo, Outcome, RunContext, StopFlag, TrainEvent, train};
use crate::spec::{JobSpec, ValidSpec};

/// Which side of a comparison a preset is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Shows the problem.
    Failing,
    /// The same run with the remedy.
    Remedied,
}

/// A ready-made job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Preset {
    /// Unique; also the spec's `name`.
    pub name: String,
    /// The experiment it belongs to: `exploding`, `vanishing`, `weight_growth`, `transformer`.
    pub group: String,
    pub role: Role,
    /// What to look at, for people.
    pub description: String,
    #[schema(value_type = JobSpec)]
    pub spec: ValidSpec,
}

fn preset(group: &str, role: Role, description: &str, spec: &serde_json::Value) -> Preset {
    let spec = JobSpec::parse_value(spec).unwrap_or_else(|err| panic!("preset specs are valid: {err}"));
    Preset {
        name: spec.name.clone().expect("presets are named"),
        group: group.to_owned(),
        role,
        description: description.to_owned(),
        spec,
    }
}

/// Every preset, each failing run followed by its remedied twin(s).
pub fn all() -> Vec<Preset> {
    let exploding = |name: &str, grad: serde_json::Value| {
        json!({
            "name": name, "seed": 1, "steps": 3000, "batch_size": 32, "device": "auto",
            "task": {"kind": "adding", "seq_len": 20, "eval_every": 500},
            "model": {"kind": "rnn", "layers": 1, "hidden": 64, "activation": "tanh", "init_scale": 2.0},
            "optimizer": {"kind": "sgd", "lr": 0.05, "momentum": 0.9},
            "policy": {"grad": grad, "on_nonfinite": "stop"},
        })
    };
    let vanishing = |name: &str, norm: &str, residual: bool| {
        json!({
            "name": name, "seed": 1, "steps": 800, "batch_size": 64, "device": "auto",
            "task": {"kind": "classification", "features": 32, "classes": 10, "eval_every": 100},
            "model": {"kind": "mlp", "layers": 10, "hidden": 64, "activation": "sigmoid", "norm": norm,
                      "residual": residual},
            "optimizer": {"kind": "sgd", "lr": 0.1, "momentum": 0.9},
        })
    };
    let fp16 = |name: &str, scaling: bool| {
        let loss_scale = if scaling { json!({"growth_interval": 50}) } else { json!({"enabled": false}) };
        json!({
            "name": name, "seed": 1, "steps": 400, "batch_size": 64, "device": "auto",
            "precision": "fp16", "loss_scale": loss_scale,
            "task": {"kind": "classification", "features": 32, "classes": 10, "eval_every": 100},
            "model": {"kind": "mlp", "layers": 10, "hidden": 64, "activation": "sigmoid"},
            "optimizer": {"kind": "adam", "lr": 0.001},
        })
    };
    let growth = |name: &str, weight: serde_json::Value| {
        json!({
            "name": name, "seed": 1, "steps": 1500, "batch_size": 32, "device": "auto",
            "task": {"kind": "char_lm", "corpus": "builtin:tiny", "seq_len": 64, "eval_every": 250},
            "model": {"kind": "rnn", "layers": 1, "hidden": 128, "activation": "relu"},
            "optimizer": {"kind": "sgd", "lr": 0.1, "momentum": 0.9},
            "policy": {"weight": weight, "on_nonfinite": "stop"},
        })
    };
    let transformer = |name: &str, position: &str, warmup: u64| {
        json!({
            "name": name, "seed": 1, "steps": 300, "batch_size": 16, "device": "auto",
            "task": {"kind": "char_lm", "corpus": "builtin:tiny", "seq_len": 64, "eval_every": 100},
            "model": {"kind": "transformer", "layers": 8, "hidden": 64, "heads": 4, "norm": "layer",
                      "norm_position": position},
            "optimizer": {"kind": "adam", "lr": 0.01, "warmup_steps": warmup},
        })
    };
    vec![
        preset(
            "exploding",
            Role::Failing,
            "Vanilla tanh RNN on the adding problem, recurrent weights initialised twice too large, \
             momentum SGD: within about a hundred steps a gradient spike throws the weights out \
             and the run diverges.",
            &exploding("exploding-rnn", json!([])),
        ),
        preset(
            "exploding",
            Role::Remedied,
            "The same RNN with the global gradient norm clipped to 1: it survives the spikes and \
             learns the task.",
            &exploding("exploding-rnn-clipped", json!([{"kind": "clip_norm", "max_norm": 1.0}])),
        ),
        preset(
            "vanishing",
            Role::Failing,
            "A 10-layer sigmoid MLP without normalisation: the first layer's gradient is about \
             eight orders of magnitude below the last layer's, and the loss never leaves chance.",
            &vanishing("vanishing-mlp", "none", false),
        ),
        preset(
            "vanishing",
            Role::Remedied,
            "The same MLP with batch normalisation before each sigmoid: gradients reach the first \
             layer at a useful size and it learns.",
            &vanishing("vanishing-mlp-batchnorm", "batch", false),
        ),
        preset(
            "vanishing",
            Role::Remedied,
            "The same MLP with residual connections: each block adds to its input, so the \
             gradient has a path around every sigmoid. (Layer normalisation alone does not \
             rescue this network.)",
            &vanishing("vanishing-mlp-residual", "none", true),
        ),
        preset(
            "mixed_precision",
            Role::Failing,
            "A 10-layer sigmoid MLP trained with Adam in fp16 without loss scaling: the first \
             layers' gradients (about 1e-10 an entry) are below float16's smallest number and \
             round to 0, so their underflow fraction is 1 and they never change. (On the CPU, fp16 \
             is emulated on the gradients: see the README's Mixed precision.)",
            &fp16("fp16-underflow-mlp", false),
        ),
        preset(
            "mixed_precision",
            Role::Remedied,
            "The same with dynamic loss scaling (GradScaler's rule, growing every 50 good steps): \
             scaled, the first layers' gradients survive the rounding and Adam moves them; the \
             scale climbs until a step overflows, then backs off.",
            &fp16("fp16-loss-scaling-mlp", true),
        ),
        preset(
            "weight_growth",
            Role::Failing,
            "A relu RNN character model trained with momentum SGD and no constraint: its weights \
             keep growing, the training loss falls towards memorisation while the validation \
             loss climbs.",
            &growth("growing-weights-rnn", json!([])),
        ),
        preset(
            "weight_growth",
            Role::Remedied,
            "The same RNN with every weight clamped to ±0.1 after each step (weight clipping). \
             A looser clamp (±0.3) leaves room for the recurrent matrix to grow as far as it does \
             unclipped.",
            &growth("growing-weights-rnn-clip", json!([{"kind": "clip", "limit": 0.1}])),
        ),
        preset(
            "weight_growth",
            Role::Remedied,
            "The same RNN with every weight multiplied by 0.99 after each step (weight scaling).",
            &growth("growing-weights-rnn-scale", json!([{"kind": "scale", "factor": 0.99, "every": 1}])),
        ),
        preset(
            "weight_growth",
            Role::Remedied,
            "The same RNN with each unit's incoming weight vector held to norm 1 (max-norm).",
            &growth("growing-weights-rnn-maxnorm", json!([{"kind": "max_norm", "max": 1.0}])),
        ),
        preset(
            "transformer",
            Role::Failing,
            "An 8-block post-LN transformer, Adam at 0.01 with no warm-up: the gradient to the \
             lower blocks collapses and the loss stalls near the unigram entropy.",
            &transformer("transformer-post-ln", "post", 0),
        ),
        preset(
            "transformer",
            Role::Remedied,
            "The same transformer with pre-LN blocks.",
            &transformer("transformer-pre-ln", "pre", 0),
        ),
        preset(
            "transformer",
            Role::Remedied,
            "The same post-LN transformer with 100 steps of learning-rate warm-up.",
            &transformer("transformer-post-ln-warmup", "post", 100),
        ),
    ]
}

/// The figures a preset comparison is read by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub steps: u64,
    /// Mean training loss over the last tenth of the steps (non-finite when it diverged).
    pub final_loss: f64,
    pub first_loss: f64,
    /// The last validation loss and metric, when the task has them.
    pub valid_loss: Option<f64>,
    pub valid_metric: Option<f64>,
    pub diverged: bool,
    /// Largest global gradient norm before and after the grad policies.
    pub max_grad_norm: f64,
    pub max_grad_norm_clipped: f64,
    pub skipped_steps: u64,
    /// Median over steps of the gradient norm of the first weight matrix over the last's.
    pub first_last_ratio: f64,
    /// Global L2 norm of the trained weights (parameters only).
    pub final_weight_norm: f64,
    /// Global L2 norm of the weights after the first step, from its per-layer
    /// `weight_norm` statistics: where the weights started.
    pub start_weight_norm: f64,
    /// Every validation loss, in order.
    pub valid_losses: Vec<f64>,
    /// Each layer's name, and its weight norm after the first and the last recorded step.
    pub layer_names: Vec<String>,
    pub start_layer_weight_norms: Vec<f64>,
    pub final_layer_weight_norms: Vec<f64>,
}

/// Trains `spec` here, on the calling thread, and summarises it.
pub fn run(spec: &ValidSpec) -> anyhow::Result<Summary> {
    let corpus = spec.task.corpus().and_then(builtin_corpus).unwrap_or_default().to_owned();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let checkpoint = std::env::temp_dir().join(format!("gradscope-preset-{}-{nanos}.safetensors", std::process::id()));
    let ctx = RunContext { corpus, checkpoint: Some(checkpoint.clone()), ..RunContext::default() };
    let mut layers: Vec<LayerInfo> = Vec::new();
    let mut losses = Vec::new();
    let mut ratios = Vec::new();
    let mut summary = Summary::default();
    let mut emit = |event: TrainEvent| match event {
        TrainEvent::Started { layers: l, .. } => {
            summary.layer_names = l.iter().map(|layer| layer.name.clone()).collect();
            layers = l;
        }
        TrainEvent::Step(r) => {
            losses.push(r.loss);
            summary.max_grad_norm = summary.max_grad_norm.max(r.grad_norm);
            summary.max_grad_norm_clipped = summary.max_grad_norm_clipped.max(r.grad_norm_clipped);
            summary.skipped_steps += u64::from(r.skipped);
            let matrices: Vec<usize> = layers.iter().filter(|l| l.shape.len() >= 2).map(|l| l.index).collect();
            if let (Some(&first), Some(&last), Some(stats)) = (matrices.first(), matrices.last(), &r.layers) {
                ratios.push(stats.grad_norm[first] / stats.grad_norm[last]);
            }
            if let Some(stats) = &r.layers {
                if summary.start_layer_weight_norms.is_empty() {
                    summary.start_layer_weight_norms.clone_from(&stats.weight_norm);
                    summary.start_weight_norm = stats.weight_norm.iter().map(|w| w * w).sum::<f64>().sqrt();
                }
                summary.final_layer_weight_norms.clone_from(&stats.weight_norm);
            }
        }
        TrainEvent::Eval(e) => {
            summary.valid_losses.push(e.loss);
            summary.valid_loss = Some(e.loss);
            summary.valid_metric = e.metric.map(|(_, v)| v);
        }
        TrainEvent::Event(_) | TrainEvent::Diagnosis(_) => {}
    };
    let outcome = train(spec, &ctx, &StopFlag::default(), &mut emit);
    let weights = Tensor::read_safetensors(&checkpoint);
    let _ = std::fs::remove_file(&checkpoint);
    let outcome = outcome?;
    // Summed in layer order, so the same run always gives the same figure.
    let weights: std::collections::HashMap<String, Tensor> = weights?.into_iter().collect();
    let squares: f64 = layers
        .iter()
        .filter_map(|l| weights.get(&l.name))
        .map(|w| w.f_norm().and_then(|n| n.f_double_value(&[])).map(|n| n * n))
        .sum::<Result<f64, _>>()?;
    summary.final_weight_norm = squares.sqrt();
    summary.steps = losses.len() as u64;
    summary.diverged = matches!(outcome, Outcome::Diverged(_)) || losses.iter().any(|l| !l.is_finite());
    summary.first_loss = losses.first().copied().unwrap_or(f64::NAN);
    let tail = &losses[losses.len() - (losses.len() / 10).max(1)..];
    summary.final_loss = tail.iter().sum::<f64>() / tail.len() as f64;
    ratios.retain(|r| r.is_finite());
    ratios.sort_by(f64::total_cmp);
    summary.first_last_ratio = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_unique_and_paired() {
        // Each is valid by construction: `all` parses every spec.
        let presets = all();
        let mut names: Vec<&str> = presets.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), presets.len());
        for p in &presets {
            let twins = presets.iter().filter(|q| q.group == p.group && q.role != p.role).count();
            assert!(twins >= 1, "{} has a twin", p.name);
        }
    }
}
