//! What a spec will cost before it runs: parameter count and activation memory of one
//! training step, estimated from the model's shape so oversized specs are refused at
//! submission instead of exhausting the machine. Estimates are deliberately generous
//! (they round activations up), never exact.

use super::spec::{JobSpec, ModelKind, TaskSpec};

/// Bytes per float32.
const F32: u64 = 4;

/// The estimate for a spec whose task reads `vocab` distinct tokens (char_lm: the
/// corpus's character count; other tasks ignore it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    pub params: u64,
    pub activation_bytes: u64,
}

/// Input width (token vocabulary or features), whether inputs are tokens, output width,
/// and sequence length of a task.
fn task_shape(task: &TaskSpec, vocab: u64) -> (u64, bool, u64, u64) {
    let n = |x: i64| x.max(0) as u64;
    match task {
        TaskSpec::CharLm { seq_len, .. } => (vocab, true, vocab, n(*seq_len)),
        TaskSpec::Adding { seq_len, .. } => (2, false, 1, n(*seq_len)),
        TaskSpec::Copy { seq_len, symbols, .. } => (n(*symbols) + 2, true, n(*symbols), n(*seq_len)),
        TaskSpec::Classification { features, classes, .. } => (n(*features), false, n(*classes), 1),
    }
}

pub fn estimate(spec: &JobSpec, vocab: u64) -> Estimate {
    let (input, tokens, output, seq) = task_shape(&spec.task, vocab);
    let d = spec.model.hidden.max(1) as u64;
    let layers = spec.model.layers.max(1) as u64;
    let batch = spec.batch_size.max(1) as u64;
    // Tokens are embedded to the width; features are projected (or read) at their width.
    let embed = if tokens { input * d } else { input * d + d };
    let head = d * output + output;
    let (params, per_token_floats) = match spec.model.kind {
        ModelKind::Mlp => {
            let first = input * d + d;
            let hidden = (layers - 1) * (d * d + d);
            // Linear, norm and activation outputs per layer, with their gradients.
            (first + hidden + 2 * d * layers + head, layers * d * 8)
        }
        ModelKind::Rnn | ModelKind::Gru | ModelKind::Lstm => {
            let gates: u64 = match spec.model.kind {
                ModelKind::Lstm => 4,
                ModelKind::Gru => 3,
                _ => 1,
            };
            let recurrent = layers * gates * d * (2 * d + 2);
            (embed + recurrent + head, layers * d * (2 * gates + 4))
        }
        ModelKind::Transformer => {
            let heads = spec.model.heads.max(1) as u64;
            let block = 4 * d * d + 4 * d + 8 * d * d + 5 * d + 4 * d;
            let positions = seq * d;
            // Projections, attention and feed-forward outputs per token and block, plus
            // the attention matrices (heads × seq per token).
            (embed + positions + layers * block + 2 * d + head, layers * (d * 20 + heads * seq * 3))
        }
    };
    let tokens_per_step = batch * seq.max(1);
    // Logits and their gradient, besides the per-layer activations.
    let activation_floats = tokens_per_step * (per_token_floats + 2 * output);
    Estimate { params, activation_bytes: activation_floats * F32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> JobSpec {
        serde_json::from_value(json).expect("spec")
    }

    #[test]
    fn an_lstm_estimate_counts_its_parameters_exactly() {
        let s = spec(serde_json::json!({"task": {"kind": "char_lm", "seq_len": 16},
            "model": {"kind": "lstm", "layers": 2, "hidden": 8}}));
        // embed 5×8, per layer 4·8·(8+8+2), head 8·5+5.
        assert_eq!(estimate(&s, 5).params, 40 + 2 * 4 * 8 * 18 + 45);
    }

    #[test]
    fn recurrent_estimates_match_the_built_models() {
        use crate::train::model::{self, Input, Io};
        for kind in ["rnn", "gru", "lstm"] {
            let s = spec(serde_json::json!({"task": {"kind": "char_lm", "seq_len": 16},
                "model": {"kind": kind, "layers": 3, "hidden": 12}}));
            let vs = tch::nn::VarStore::new(tch::Device::Cpu);
            let io = Io { input: Input::Tokens(7), output: 7, max_len: 16 };
            let (_, params) = model::build(&s.model, &vs, io, 0).expect("model");
            let built: i64 = params.layers().iter().map(|l| l.numel).sum();
            assert_eq!(estimate(&s, 7).params, built as u64, "{kind}");
        }
    }

    #[test]
    fn huge_specs_are_huge() {
        let s = spec(serde_json::json!({"task": {"kind": "char_lm", "seq_len": 4096}, "batch_size": 4096,
            "model": {"kind": "transformer", "layers": 64, "hidden": 8192, "heads": 8}}));
        let e = estimate(&s, 100);
        assert!(e.params > 30_000_000_000);
        assert!(e.activation_bytes > 1 << 40);
    }
}
