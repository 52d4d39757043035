//! The networks. Each registers its parameters through [`Params`], which keeps their names
//! in creation order: that order is the layer index everywhere else. Names, order and
//! default initialisation follow the equivalent PyTorch modules (`tests/parity/` checks
//! names and arithmetic against PyTorch itself; the initial distributions, which parity
//! replaces with PyTorch's weights, are held to the formulas of PyTorch's documentation
//! by this module's tests).
//!
//! - [`mlp`] — deep MLPs with optional normalisation and residual connections.
//! - [`recurrent`] — vanilla RNN, LSTM and GRU stacks.
//! - [`transformer`] — a decoder-only (causal) transformer.
//! - [`layers`] — the shared building blocks.

pub mod archive;
pub mod layers;
pub mod mlp;
pub mod recurrent;
pub mod torchscript;
pub mod transformer;

use std::sync::Mutex;

use tch::nn::{self, Init};
use tch::{Device, Tensor};

use super::LayerInfo;
use crate::spec::{ModelKind, ModelSpec};

/// `tch::manual_seed` is process-wide: jobs build their models, and draw their dropout
/// masks ([`layers::StepRng`]), one at a time, so each job's seed alone decides its
/// initial weights and its masks.
static RNG_LOCK: Mutex<()> = Mutex::new(());

/// Runs `f` with LibTorch's process-wide generators seeded by `seed` (its low 63 bits:
/// LibTorch takes a signed seed), holding the lock that keeps jobs' seeded draws apart.
pub fn with_seed<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    let _guard = RNG_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tch::manual_seed((seed >> 1) as i64);
    f()
}

/// Parameters in creation order, with their full names (`lstm.weight_ih_l0`).
#[derive(Debug, Default)]
pub struct Params {
    named: Vec<(String, Tensor)>,
    /// Normalisation gains and biases: `init_scale` leaves them at 1 and 0, so a
    /// normalised and an unnormalised twin differ by the normalisation alone.
    is_norm: Vec<bool>,
    /// Parameters a batch norm right after them makes redundant (a bias whose every
    /// per-feature shift the normalisation subtracts): their gradient is zero by
    /// construction, which the diagnosis must not read as a vanishing gradient.
    redundant: Vec<bool>,
    /// State that is not trained but changes what the model computes (batch norm's
    /// running statistics), with full names: a resume must restore it.
    buffers: Vec<(String, Tensor)>,
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
        self.redundant.push(false);
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

    /// Marks the parameter created last as redundant (see the field).
    pub(crate) fn mark_last_redundant(&mut self) {
        if let Some(last) = self.redundant.last_mut() {
            *last = true;
        }
    }

    /// Which parameters, in layer order, a following batch norm makes redundant.
    pub fn redundant(&self) -> &[bool] {
        &self.redundant
    }

    /// Registers a buffer created under `path` as `name`.
    pub(crate) fn buffer(&mut self, path: &nn::Path<'_>, name: &str, tensor: &Tensor) {
        self.buffers.push((path.path(name), tensor.shallow_clone()));
    }

    /// The untrained state a resume restores, by full name.
    pub fn buffers(&self) -> &[(String, Tensor)] {
        &self.buffers
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

/// What a traced forward keeps besides the output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trace {
    /// The embedded input of a sequence model, `[batch, seq, width]`, cut so that the
    /// backward pass leaves the gradient reaching the input at each position.
    pub input: bool,
    /// Each block's output (see [`block_names`]), for the forward signal's statistics.
    pub blocks: bool,
}

/// A forward's output and what its [`Trace`] asked to keep.
#[derive(Debug)]
pub struct Traced {
    pub out: Tensor,
    /// The embedded input's probe (sequence models).
    pub input: Option<InputProbe>,
    /// Each block's output, in the order of [`block_names`] (empty unless asked).
    pub blocks: Vec<Tensor>,
}

impl Traced {
    pub fn plain(out: Tensor) -> Self {
        Self { out, input: None, blocks: Vec::new() }
    }
}

/// The blocks whose output a traced forward keeps, by name: an MLP's hidden blocks
/// (`blocks.<i>`: Linear → norm → activation, plus the residual), a transformer's
/// (`encoder.layers.<i>`, after both residual additions), a recurrent stack's layers
/// (`lstm.l<k>`: the layer's state at the last position, h_T, which the fused kernel
/// returns beside the top layer's sequence). None for a user's module.
pub fn block_names(spec: &ModelSpec) -> Vec<String> {
    let n = spec.layers.max(0);
    match spec.kind {
        ModelKind::Mlp => (0..n).map(|i| format!("blocks.{i}")).collect(),
        ModelKind::Transformer => (0..n).map(|i| format!("encoder.layers.{i}")).collect(),
        ModelKind::Rnn => (0..n).map(|k| format!("rnn.l{k}")).collect(),
        ModelKind::Lstm => (0..n).map(|k| format!("lstm.l{k}")).collect(),
        ModelKind::Gru => (0..n).map(|k| format!("gru.l{k}")).collect(),
        ModelKind::Torchscript => Vec::new(),
    }
}

/// The embedded input of a traced forward, cut from what produced it: `leaf` is what the
/// rest of the model reads, so the backward pass leaves ∂L/∂x in its `.grad()`; `upstream`
/// is the tensor it was cut from when that came from parameters (an embedding's lookup, an
/// input projection), to carry the gradient on to them with [`InputProbe::carry_back`].
#[derive(Debug)]
pub struct InputProbe {
    pub leaf: Tensor,
    upstream: Option<Tensor>,
}

impl InputProbe {
    /// Cuts `x` when `wanted` (the trace asks for the input's gradient): the tensor for the
    /// rest of the forward to read, and the probe; otherwise `x` as it is and no probe.
    pub(crate) fn cut(x: Tensor, wanted: bool) -> anyhow::Result<(Tensor, Option<Self>)> {
        if !wanted {
            return Ok((x, None));
        }
        let leaf = x.f_detach()?.f_set_requires_grad(true)?;
        let upstream = x.requires_grad().then_some(x);
        Ok((leaf.shallow_clone(), Some(Self { leaf, upstream })))
    }

    /// After the backward pass: carries the leaf's gradient on through the part before the
    /// cut (a lookup or a projection), so each parameter there gets exactly the gradient
    /// one uncut backward gives it (the seed is ∂L/∂x times ones, unchanged).
    pub fn carry_back(&self) -> anyhow::Result<()> {
        let Some(upstream) = &self.upstream else { return Ok(()) };
        let grad = self.leaf.f_grad()?;
        if grad.defined() {
            upstream.f_mul(&grad)?.f_sum(tch::Kind::Float)?.f_backward()?;
        }
        Ok(())
    }
}

/// A network. Sequence models map `[batch, seq]` ids or `[batch, seq, features]` to
/// `[batch, seq, output]`; MLPs map `[batch, features]` to `[batch, output]`.
pub trait Model {
    /// `train` selects training behaviour: dropout on, batch statistics (and their running
    /// averages updated) in batch norm.
    fn forward(&self, xs: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        Ok(self.trace(xs, train, Trace::default())?.out)
    }

    /// The forward, keeping what `trace` asks for where the model has it (a model without
    /// a sequence input keeps no input).
    fn trace(&self, xs: &Tensor, train: bool, trace: Trace) -> anyhow::Result<Traced>;

    /// The source of the training forward's random draws; the loop starts each step on it.
    fn rng(&self) -> &layers::StepRng;
}

/// Loads the TorchScript module at `file` on `vs` (see [`torchscript::TorchScript::load`]).
pub fn load_torchscript(
    file: &std::path::Path,
    vs: &nn::VarStore,
    seed: u64,
) -> anyhow::Result<(torchscript::TorchScript, Params)> {
    let mut params = Params::default();
    let module = torchscript::TorchScript::load(file, vs, &mut params, seed)?;
    Ok((module, params))
}

/// Builds the built-in model a spec names, on `vs`, seeded by `seed`, with its
/// non-normalisation parameters scaled by `init_scale`. A `torchscript` model is loaded
/// with [`load_torchscript`] instead.
pub fn build(spec: &ModelSpec, vs: &nn::VarStore, io: Io, seed: u64) -> anyhow::Result<(Box<dyn Model>, Params)> {
    let _guard = RNG_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tch::manual_seed(seed as i64);
    let mut params = Params::default();
    let root = vs.root();
    let rng = layers::StepRng::new(seed);
    let model: Box<dyn Model> = match spec.kind {
        ModelKind::Mlp => Box::new(mlp::Mlp::new(&root, &mut params, spec, io, rng)?),
        ModelKind::Rnn | ModelKind::Lstm | ModelKind::Gru => {
            Box::new(recurrent::Recurrent::new(&root, &mut params, spec, io, rng)?)
        }
        ModelKind::Transformer => Box::new(transformer::Transformer::new(&root, &mut params, spec, io, rng)?),
        ModelKind::Torchscript => anyhow::bail!("a torchscript model is loaded from its file, not built"),
    };
    if spec.init_scale != 1.0 {
        params.scale_init(spec.init_scale)?;
    }
    Ok((model, params))
}

/// The device a spec's `device` field resolves to here, or why it cannot.
pub fn resolve_device(choice: crate::spec::DeviceChoice) -> anyhow::Result<Device> {
    use crate::spec::DeviceChoice;
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
        let seq = with_seed(1, || Tensor::randn([3, 6, 2], (Kind::Float, Device::Cpu)));
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
        let xs = with_seed(2, || Tensor::randn([5, 4], (Kind::Float, Device::Cpu)));
        assert_eq!(m.forward(&xs, true).expect("forward").size(), vec![5, 3]);
    }

    #[test]
    fn batch_norm_updates_running_statistics_only_in_training() {
        let io = Io { input: Input::Features(4), output: 3, max_len: 1 };
        let (m, _, vs) = model(r#"{"kind":"mlp","layers":1,"hidden":8,"norm":"batch"}"#, io);
        let running = || vs.variables()["blocks.0.norm.running_mean"].copy();
        let xs = with_seed(3, || Tensor::randn([16, 4], (Kind::Float, Device::Cpu))) + 3.0;
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

    /// Sample statistics of a tensor, in f64.
    fn moments(t: &Tensor) -> (f64, f64, f64, usize) {
        let v: Vec<f64> = Vec::try_from(t.flatten(0, -1).to_kind(Kind::Double)).expect("values");
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let max = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        (mean, std, max, v.len())
    }

    /// U(−bound, bound): inside the bound, reaching near it, with std bound/√3, all within
    /// what sampling allows for this many draws.
    fn assert_uniform(name: &str, t: &Tensor, bound: f64) {
        let (mean, std, max, n) = moments(t);
        let sd = bound / 3f64.sqrt();
        assert!(max <= bound * (1.0 + 1e-6), "{name}: |w| up to {max}, bound {bound}");
        // The largest of n draws falls short of the bound by about bound/n.
        assert!(max >= bound * (1.0 - 20.0 / n as f64), "{name}: |w| only up to {max}, bound {bound}");
        // The sample std's relative error is about 0.45/√n for a uniform; 6 of those.
        assert!((std / sd - 1.0).abs() < 2.7 / (n as f64).sqrt(), "{name}: std {std}, expected {sd}");
        assert!(mean.abs() < 6.0 * sd / (n as f64).sqrt(), "{name}: mean {mean}");
    }

    /// N(0, sd²).
    fn assert_normal(name: &str, t: &Tensor, sd: f64) {
        let (mean, std, max, n) = moments(t);
        // The sample std's relative error is about 0.71/√n for a normal; 6 of those.
        assert!((std / sd - 1.0).abs() < 4.3 / (n as f64).sqrt(), "{name}: std {std}, expected {sd}");
        assert!(mean.abs() < 6.0 * sd / (n as f64).sqrt(), "{name}: mean {mean}");
        assert!(max > 2.5 * sd, "{name}: a normal's tail reaches past 2.5 sd, got {max}");
    }

    fn assert_const(name: &str, t: &Tensor, value: f64) {
        assert!(t.equal(&t.full_like(value)), "{name}: not all {value}");
    }

    /// Each parameter against the formula of the PyTorch module it mirrors (the PyTorch
    /// docs' "Variables" sections), scaled by `init_scale` except normalisation.
    fn check_init(json: &str, io: Io, scale: f64, hidden: i64) {
        let (_, params, vs) = model(json, io);
        let mut seen = 0;
        for (name, t) in params.named() {
            let fan_in = t.size().last().copied().unwrap_or(1);
            let leaf = name.rsplit('.').next().unwrap_or(name);
            if name.contains("norm") {
                // LayerNorm / BatchNorm1d / RMSNorm: weight ones, bias zeros, whatever the scale.
                assert_const(name, t, if leaf == "weight" { 1.0 } else { 0.0 });
            } else if name.starts_with("embed.") || name.starts_with("pos.") {
                // nn.Embedding (token and learned position tables): N(0, 1).
                assert_normal(name, t, scale);
            } else if ["rnn.", "lstm.", "gru."].iter().any(|p| name.starts_with(p)) {
                // nn.RNN / LSTM / GRU: every weight and bias U(−1/√hidden, 1/√hidden).
                assert_uniform(name, t, scale / (hidden as f64).sqrt());
            } else if leaf == "in_proj_weight" {
                // nn.MultiheadAttention: xavier_uniform_, bound √(6 / (fan_in + fan_out)).
                let (rows, cols) = (t.size()[0], t.size()[1]);
                assert_uniform(name, t, scale * (6.0 / (rows + cols) as f64).sqrt());
            } else if leaf == "in_proj_bias" || name.ends_with("out_proj.bias") {
                // nn.MultiheadAttention: constant_(0.).
                assert_const(name, t, 0.0);
            } else if leaf == "weight" {
                // nn.Linear: kaiming_uniform_(a=√5), i.e. U(−1/√fan_in, 1/√fan_in).
                assert_uniform(name, t, scale / (fan_in as f64).sqrt());
            } else if leaf == "bias" {
                // nn.Linear: U(−1/√fan_in, 1/√fan_in), fan_in from the weight.
                let weight = params.named().find(|(n, _)| *n == name.replace(".bias", ".weight")).expect("weight").1;
                let fan_in = weight.size()[1];
                assert_uniform(name, t, scale / (fan_in as f64).sqrt());
            } else {
                panic!("{name}: no PyTorch formula checked");
            }
            seen += 1;
        }
        assert_eq!(seen, params.len());
        // BatchNorm1d's running statistics start at zeros and ones.
        for (name, t) in vs.variables() {
            if name.ends_with("running_mean") {
                assert_const(&name, &t, 0.0);
            } else if name.ends_with("running_var") {
                assert_const(&name, &t, 1.0);
            }
        }
    }

    #[test]
    fn initialisation_follows_pytorch_formulas_per_layer_kind() {
        let features = Io { input: Input::Features(48), output: 512, max_len: 64 };
        let tokens = Io { input: Input::Tokens(300), output: 300, max_len: 64 };
        for scale in [1.0, 3.0] {
            for norm in ["batch", "layer", "rms"] {
                let json = format!(r#"{{"kind":"mlp","layers":2,"hidden":256,"norm":"{norm}","init_scale":{scale}}}"#);
                check_init(&json, features, scale, 256);
            }
            for kind in ["rnn", "lstm", "gru"] {
                // Feature inputs narrower than the hidden state: PyTorch bounds the input
                // weights by the hidden size too.
                let json = format!(r#"{{"kind":"{kind}","layers":2,"hidden":256,"init_scale":{scale}}}"#);
                check_init(&json, features, scale, 256);
                check_init(&json, tokens, scale, 256);
            }
            for (norm, position) in [("layer", "post"), ("rms", "pre")] {
                let json = format!(
                    r#"{{"kind":"transformer","layers":2,"hidden":128,"heads":4,"norm":"{norm}","norm_position":"{position}","init_scale":{scale}}}"#
                );
                check_init(&json, tokens, scale, 128);
                check_init(&json, features, scale, 128);
            }
        }
    }

    /// Dropout masks (MLP, between recurrent layers, in attention) depend on the seed and
    /// the step alone: the same step draws the same masks whatever ran in between, and
    /// another step draws others. On every device present.
    #[test]
    fn dropout_masks_are_a_function_of_seed_and_step() {
        let mut devices = vec![Device::Cpu];
        if tch::Cuda::is_available() {
            devices.push(Device::Cuda(0));
        }
        let features = Io { input: Input::Features(6), output: 3, max_len: 8 };
        let specs = [
            r#"{"kind":"mlp","layers":2,"hidden":16,"norm":"batch","dropout":0.5}"#,
            r#"{"kind":"lstm","layers":3,"hidden":16,"dropout":0.5}"#,
            r#"{"kind":"gru","layers":2,"hidden":16,"dropout":0.5}"#,
            r#"{"kind":"transformer","layers":2,"hidden":16,"heads":2,"norm":"layer","dropout":0.5}"#,
        ];
        for device in devices {
            for json in specs {
                let spec: ModelSpec = serde_json::from_str(json).expect("spec");
                let vs = nn::VarStore::new(device);
                let (m, _) = build(&spec, &vs, features, 5).expect("model");
                let shape: &[i64] = if json.contains("mlp") { &[8, 6] } else { &[4, 8, 6] };
                let xs = with_seed(4, || Tensor::randn(shape, (Kind::Float, device)));
                let at = |step: u64| {
                    m.rng().start_step(step);
                    m.forward(&xs, true).expect("forward")
                };
                let first = at(7);
                // Anything else drawing from the process's generator in between (under the
                // lock, as every draw in this process: tests run in parallel threads).
                let _ = with_seed(123, || Tensor::rand([100], (Kind::Float, device)));
                assert!(at(7).equal(&first), "{json} on {device:?}: same step, same masks");
                assert!(!at(8).equal(&first), "{json} on {device:?}: another step, other masks");
            }
        }
    }
}
