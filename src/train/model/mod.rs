//! The networks. Each registers its parameters through [`Params`], which keeps their names
//! in creation order: that order is the layer index everywhere else. Names, order and
//! default initialisation follow the equivalent PyTorch modules (`tests/parity/` checks
//! them against PyTorch itself).
//!
//! - [`mlp`] — deep MLPs with optional normalisation and residual connections.
//! - [`recurrent`] — vanilla RNN, LSTM and GRU stacks.
//! - [`transformer`] — a decoder-only (causal) transformer.
//! - [`layers`] — the shared building blocks.

pub mod layers;
pub mod mlp;
pub mod recurrent;
pub mod transformer;

use std::sync::Mutex;

use tch::nn::{self, Init};
use tch::{Device, Tensor};

use super::LayerInfo;
use super::spec::{ModelKind, ModelSpec};

/// `tch::manual_seed` is process-wide: jobs build their models one at a time so each
/// job's seed alone decides its initial weights.
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Parameters in creation order, with their full names (`lstm.weight_ih_l0`).
#[derive(Debug, Default)]
pub struct Params {
    named: Vec<(String, Tensor)>,
    /// Normalisation gains and biases: `init_scale` leaves them at 1 and 0, so a
    /// normalised and an unnormalised twin differ by the normalisation alone.
    is_norm: Vec<bool>,
}

impl Params {
    fn push(
        &mut self,
        path: &nn::Path<'_>,
        name: &str,
        dims: &[i64],
        init: Init,
        norm: bool,
    ) -> anyhow::Result<Tensor> {
        let tensor = path.f_var(name, dims, init)?;
        self.named.push((path.path(name), tensor.shallow_clone()));
        self.is_norm.push(norm);
        Ok(tensor)
    }

    pub(crate) fn var(&mut self, path: &nn::Path<'_>, name: &str, dims: &[i64], init: Init) -> anyhow::Result<Tensor> {
        self.push(path, name, dims, init, false)
    }

    pub(crate) fn norm_var(
        &mut self,
        path: &nn::Path<'_>,
        name: &str,
        dims: &[i64],
        init: Init,
    ) -> anyhow::Result<Tensor> {
        self.push(path, name, dims, init, true)
    }

    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.named.iter().map(|(_, t)| t)
    }

    pub fn named(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.named.iter().map(|(n, t)| (n.as_str(), t))
    }

    pub fn len(&self) -> usize {
        self.named.len()
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty()
    }

    /// Indices of the output layer's tensors: every model registers it as `head`.
    pub fn head(&self) -> Vec<usize> {
        self.named.iter().enumerate().filter(|(_, (name, _))| name.starts_with("head.")).map(|(i, _)| i).collect()
    }

    pub fn layers(&self) -> Vec<LayerInfo> {
        self.named
            .iter()
            .enumerate()
            .map(|(index, (name, t))| LayerInfo { index, name: name.clone(), shape: t.size(), numel: t.numel() as i64 })
            .collect()
    }

    fn scale_init(&self, factor: f64) -> anyhow::Result<()> {
        tch::no_grad(|| {
            for ((_, t), norm) in self.named.iter().zip(&self.is_norm) {
                if !norm {
                    let _ = t.shallow_clone().f_mul_scalar_(factor)?;
                }
            }
            Ok(())
        })
    }
}

/// What a task feeds a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `[batch, seq]` int64 ids below this vocabulary size.
    Tokens(i64),
    /// Float features of this width: `[batch, seq, width]` for sequence models,
    /// `[batch, width]` for MLPs.
    Features(i64),
}

/// A model's interface to its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Io {
    pub input: Input,
    /// Width of the output: vocabulary, classes, or 1 for regression.
    pub output: i64,
    /// Longest sequence the model will see (sizes transformer positions).
    pub max_len: i64,
}

/// A network. Sequence models map `[batch, seq]` ids or `[batch, seq, features]` to
/// `[batch, seq, output]`; MLPs map `[batch, features]` to `[batch, output]`.
pub trait Model {
    /// `train` selects training behaviour: dropout on, batch statistics (and their running
    /// averages updated) in batch norm.
    fn forward(&self, xs: &Tensor, train: bool) -> anyhow::Result<Tensor>;
}

/// Builds the model a spec names, on `vs`, seeded by `seed`, with its non-normalisation
/// parameters scaled by `init_scale`.
pub fn build(spec: &ModelSpec, vs: &nn::VarStore, io: Io, seed: u64) -> anyhow::Result<(Box<dyn Model>, Params)> {
    let _guard = INIT_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tch::manual_seed(seed as i64);
    let mut params = Params::default();
    let root = vs.root();
    let model: Box<dyn Model> = match spec.kind {
        ModelKind::Mlp => Box::new(mlp::Mlp::new(&root, &mut params, spec, io)?),
        ModelKind::Rnn | ModelKind::Lstm | ModelKind::Gru => {
            Box::new(recurrent::Recurrent::new(&root, &mut params, spec, io)?)
        }
        ModelKind::Transformer => Box::new(transformer::Transformer::new(&root, &mut params, spec, io)?),
    };
    if spec.init_scale != 1.0 {
        params.scale_init(spec.init_scale)?;
    }
    Ok((model, params))
}

/// The device a spec's `device` field resolves to here, or why it cannot.
pub fn resolve_device(choice: super::spec::DeviceChoice) -> anyhow::Result<Device> {
    use super::spec::DeviceChoice;
    match choice {
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => {
            let count = tch::Cuda::device_count();
            anyhow::ensure!((n as i64) < count, "cuda:{n} requested but {count} CUDA devices are visible");
            Ok(Device::Cuda(n))
        }
    }
}

/// The contract's spelling of a device: `cpu`, `cuda:0`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        Device::Mps => "mps".to_owned(),
        Device::Vulkan => "vulkan".to_owned(),
        Device::Cpu => "cpu".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use tch::Kind;

    use super::*;

    const TOKENS: Io = Io { input: Input::Tokens(5), output: 5, max_len: 8 };

    fn model(json: &str, io: Io) -> (Box<dyn Model>, Params, nn::VarStore) {
        let spec: ModelSpec = serde_json::from_str(json).expect("spec");
        let vs = nn::VarStore::new(Device::Cpu);
        let (model, params) = build(&spec, &vs, io, 1).expect("model");
        (model, params, vs)
    }

    fn names(params: &Params) -> Vec<String> {
        params.layers().into_iter().map(|l| l.name).collect()
    }

    #[test]
    fn lstm_layers_are_named_in_pytorch_order() {
        let (model, params, _vs) = model(r#"{"kind":"lstm","layers":2,"hidden":8}"#, TOKENS);
        let names = names(&params);
        assert_eq!(names[0], "embed.weight");
        assert_eq!(names[1..5], ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0"]);
        assert_eq!(names.len(), 1 + 8 + 2);
        let logits = model.forward(&Tensor::zeros([3, 4], (Kind::Int64, Device::Cpu)), true).expect("forward");
        assert_eq!(logits.size(), vec![3, 4, 5]);
    }

    #[test]
    fn every_kind_maps_its_input_to_its_output() {
        let features = Io { input: Input::Features(2), output: 1, max_len: 6 };
        let seq = Tensor::randn([3, 6, 2], (Kind::Float, Device::Cpu));
        for kind in ["rnn", "gru", "lstm", "transformer"] {
            let json = format!(
                r#"{{"kind":"{kind}","layers":2,"hidden":8,"heads":2,"norm":"{}"}}"#,
                if kind == "transformer" { "layer" } else { "none" }
            );
            let (m, _, _) = model(&json, features);
            assert_eq!(m.forward(&seq, true).expect("forward").size(), vec![3, 6, 1], "{kind}");
            let (m, _, _) = model(&json, TOKENS);
            let ids = Tensor::zeros([3, 4], (Kind::Int64, Device::Cpu));
            assert_eq!(m.forward(&ids, false).expect("forward").size(), vec![3, 4, 5], "{kind}");
        }
        let io = Io { input: Input::Features(4), output: 3, max_len: 1 };
        let (m, params, _) = model(r#"{"kind":"mlp","layers":3,"hidden":8,"norm":"batch","residual":true}"#, io);
        assert_eq!(
            names(&params)[..4],
            ["blocks.0.linear.weight", "blocks.0.linear.bias", "blocks.0.norm.weight", "blocks.0.norm.bias"]
        );
        let xs = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
        assert_eq!(m.forward(&xs, true).expect("forward").size(), vec![5, 3]);
    }

    #[test]
    fn batch_norm_updates_running_statistics_only_in_training() {
        let io = Io { input: Input::Features(4), output: 3, max_len: 1 };
        let (m, _, vs) = model(r#"{"kind":"mlp","layers":1,"hidden":8,"norm":"batch"}"#, io);
        let running = || vs.variables()["blocks.0.norm.running_mean"].copy();
        let xs = Tensor::randn([16, 4], (Kind::Float, Device::Cpu)) + 3.0;
        let before = running();
        let eval_a = m.forward(&xs, false).expect("eval");
        assert!(running().equal(&before), "evaluation leaves the running statistics alone");
        let _ = m.forward(&xs, true).expect("train");
        assert!(!running().equal(&before), "training updates them");
        let eval_b = m.forward(&xs, false).expect("eval");
        assert!(!eval_a.allclose(&eval_b, 1e-6, 1e-6, false), "evaluation uses the running statistics");
    }

    #[test]
    fn init_scale_multiplies_all_but_normalisation() {
        let io = Io { input: Input::Features(4), output: 3, max_len: 1 };
        let json = r#"{"kind":"mlp","layers":2,"hidden":8,"norm":"layer"}"#;
        let (_, base, _) = model(json, io);
        let (_, scaled, _) = model(r#"{"kind":"mlp","layers":2,"hidden":8,"norm":"layer","init_scale":3.0}"#, io);
        for ((name, a), (_, b)) in base.named().zip(scaled.named()) {
            let factor = if name.contains(".norm.") { 1.0 } else { 3.0 };
            assert!((a * factor).allclose(b, 1e-6, 1e-6, false), "{name}");
        }
    }

    #[test]
    fn same_seed_same_weights() {
        let (_, a, _) = model(r#"{"kind":"transformer","layers":1,"hidden":8,"heads":2,"norm":"rms"}"#, TOKENS);
        let (_, b, _) = model(r#"{"kind":"transformer","layers":1,"hidden":8,"heads":2,"norm":"rms"}"#, TOKENS);
        for (x, y) in a.tensors().zip(b.tensors()) {
            assert!(x.equal(y));
        }
    }
}
