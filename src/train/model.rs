//! The networks. Each registers its parameters through [`Params`], which keeps their names
//! in creation order: that order is the layer index everywhere else.

use std::sync::Mutex;

use anyhow::Context;
use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

use super::LayerInfo;
use super::spec::{ModelKind, ModelSpec};

/// `tch::manual_seed` is process-wide: jobs build their models one at a time so each
/// job's seed alone decides its initial weights.
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Parameters in creation order, with their full names (`lstm.weight_ih_l0`).
#[derive(Debug, Default)]
pub struct Params {
    named: Vec<(String, Tensor)>,
}

impl Params {
    fn var(&mut self, path: &nn::Path<'_>, name: &str, dims: &[i64], init: Init) -> anyhow::Result<Tensor> {
        let tensor = path.f_var(name, dims, init)?;
        self.named.push((path.path(name), tensor.shallow_clone()));
        Ok(tensor)
    }

    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.named.iter().map(|(_, t)| t)
    }

    pub fn len(&self) -> usize {
        self.named.len()
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty()
    }

    pub fn layers(&self) -> Vec<LayerInfo> {
        self.named
            .iter()
            .enumerate()
            .map(|(index, (name, t))| LayerInfo { index, name: name.clone(), shape: t.size(), numel: t.numel() as i64 })
            .collect()
    }
}

/// A sequence model: token ids `[batch, seq]` to logits `[batch, seq, vocab]`.
pub trait Model {
    fn forward(&self, xs: &Tensor, train: bool) -> anyhow::Result<Tensor>;
}

/// Builds the model a spec names, on `vs`, seeded by `seed`, with its parameters scaled by
/// `init_scale`.
pub fn build(spec: &ModelSpec, vs: &nn::VarStore, vocab: i64, seed: u64) -> anyhow::Result<(Box<dyn Model>, Params)> {
    let _guard = INIT_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tch::manual_seed(seed as i64);
    let mut params = Params::default();
    let model: Box<dyn Model> = match spec.kind {
        ModelKind::Lstm => Box::new(LstmLm::new(&vs.root(), &mut params, spec, vocab)?),
    };
    if spec.init_scale != 1.0 {
        tch::no_grad(|| -> anyhow::Result<()> {
            for t in params.tensors() {
                let _ = t.shallow_clone().f_mul_scalar_(spec.init_scale)?;
            }
            Ok(())
        })?;
    }
    Ok((model, params))
}

/// PyTorch's default for `nn.Linear` and the recurrent cells: U(-1/√fan, 1/√fan).
fn uniform_fan(fan: i64) -> Init {
    let bound = 1.0 / (fan as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// Embedding → multi-layer LSTM → linear head, the classic character language model.
/// Parameter names and initialisation follow `torch.nn.Embedding`, `nn.LSTM`, `nn.Linear`.
#[derive(Debug)]
pub struct LstmLm {
    embed: Tensor,
    flat_weights: Vec<Tensor>,
    head_weight: Tensor,
    head_bias: Tensor,
    layers: i64,
    hidden: i64,
    dropout: f64,
}

impl LstmLm {
    fn new(root: &nn::Path<'_>, params: &mut Params, spec: &ModelSpec, vocab: i64) -> anyhow::Result<Self> {
        let hidden = spec.hidden;
        let embed = params.var(&(root / "embed"), "weight", &[vocab, hidden], Init::Randn { mean: 0.0, stdev: 1.0 })?;
        let lstm = root / "lstm";
        let mut flat_weights = Vec::new();
        for l in 0..spec.layers {
            let init = uniform_fan(hidden);
            flat_weights.push(params.var(&lstm, &format!("weight_ih_l{l}"), &[4 * hidden, hidden], init)?);
            flat_weights.push(params.var(&lstm, &format!("weight_hh_l{l}"), &[4 * hidden, hidden], init)?);
            flat_weights.push(params.var(&lstm, &format!("bias_ih_l{l}"), &[4 * hidden], init)?);
            flat_weights.push(params.var(&lstm, &format!("bias_hh_l{l}"), &[4 * hidden], init)?);
        }
        let head = root / "head";
        let head_weight = params.var(&head, "weight", &[vocab, hidden], uniform_fan(hidden))?;
        let head_bias = params.var(&head, "bias", &[vocab], uniform_fan(hidden))?;
        Ok(Self { embed, flat_weights, head_weight, head_bias, layers: spec.layers, hidden, dropout: spec.dropout })
    }
}

impl Model for LstmLm {
    fn forward(&self, xs: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        let batch = xs.size()[0];
        let emb = Tensor::f_embedding(&self.embed, xs, -1, false, false)?;
        let zeros = Tensor::f_zeros([self.layers, batch, self.hidden], (Kind::Float, xs.device()))?;
        let weights: Vec<&Tensor> = self.flat_weights.iter().collect();
        let (out, _, _) = emb
            .f_lstm(&[&zeros, &zeros], &weights, true, self.layers, self.dropout, train, false, true)
            .context("LSTM forward failed")?;
        Ok(out.f_linear(&self.head_weight, Some(&self.head_bias))?)
    }
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
    use super::*;

    #[test]
    fn lstm_layers_are_named_in_pytorch_order() {
        let spec: ModelSpec = serde_json::from_str(r#"{"kind":"lstm","layers":2,"hidden":8}"#).expect("spec");
        let vs = nn::VarStore::new(Device::Cpu);
        let (model, params) = build(&spec, &vs, 5, 1).expect("model");
        let names: Vec<String> = params.layers().into_iter().map(|l| l.name).collect();
        assert_eq!(names[0], "embed.weight");
        assert_eq!(names[1..5], ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0"]);
        assert_eq!(names.len(), 1 + 8 + 2);
        let logits = model.forward(&Tensor::zeros([3, 4], (Kind::Int64, Device::Cpu)), true).expect("forward");
        assert_eq!(logits.size(), vec![3, 4, 5]);
    }

    #[test]
    fn same_seed_same_weights() {
        let spec: ModelSpec = serde_json::from_str(r#"{"kind":"lstm","layers":1,"hidden":4}"#).expect("spec");
        let first = nn::VarStore::new(Device::Cpu);
        let (_, a) = build(&spec, &first, 5, 7).expect("model");
        let second = nn::VarStore::new(Device::Cpu);
        let (_, b) = build(&spec, &second, 5, 7).expect("model");
        for (x, y) in a.tensors().zip(b.tensors()) {
            assert!(x.equal(y));
        }
    }
}
