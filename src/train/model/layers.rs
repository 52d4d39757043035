//! Building blocks shared by the networks: linear maps, normalisation and activations,
//! each with PyTorch's default initialisation and parameter names.

use std::cell::Cell;

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use super::Params;
use crate::spec::{Activation, Norm};

/// `torch.nn.LayerNorm` and `BatchNorm1d` default epsilon.
pub const NORM_EPS: f64 = 1e-5;
/// `torch.nn.BatchNorm1d` default running-statistics momentum.
pub const BATCH_NORM_MOMENTUM: f64 = 0.1;

/// PyTorch's default for `nn.Linear` and the recurrent cells: U(-1/√fan, 1/√fan).
pub fn uniform_fan(fan: i64) -> Init {
    let bound = 1.0 / (fan as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// `torch.nn.init.xavier_uniform_` for a `[fan_out, fan_in]` matrix.
pub fn xavier_uniform(fan_in: i64, fan_out: i64) -> Init {
    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// `torch.nn.Linear`: `weight [out, in]`, `bias [out]`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(params: &mut Params, path: &nn::Path<'_>, input: i64, output: i64) -> anyhow::Result<Self> {
        let weight = params.var(path, "weight", &[output, input], uniform_fan(input))?;
        let bias = params.var(path, "bias", &[output], uniform_fan(input))?;
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, xs: &Tensor) -> anyhow::Result<Tensor> {
        Ok(xs.f_linear(&self.weight, Some(&self.bias))?)
    }
}

/// A normalisation layer over the last dimension: `torch.nn.BatchNorm1d` (features of a
/// `[batch, dim]` input, with running statistics), `LayerNorm` or `RMSNorm`.
#[derive(Debug)]
pub struct NormLayer {
    kind: Norm,
    dim: i64,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    running_mean: Option<Tensor>,
    running_var: Option<Tensor>,
}

impl NormLayer {
    pub fn new(params: &mut Params, path: &nn::Path<'_>, kind: Norm, dim: i64) -> anyhow::Result<Self> {
        let mut layer = Self { kind, dim, weight: None, bias: None, running_mean: None, running_var: None };
        if kind == Norm::None {
            return Ok(layer);
        }
        layer.weight = Some(params.norm_var(path, "weight", &[dim], Init::Const(1.0))?);
        if kind != Norm::Rms {
            layer.bias = Some(params.norm_var(path, "bias", &[dim], Init::Const(0.0))?);
        }
        if kind == Norm::Batch {
            // Buffers, not parameters: saved with the weights but never trained.
            let mean = path.f_zeros_no_train("running_mean", &[dim])?;
            let var = path.f_ones_no_train("running_var", &[dim])?;
            params.buffer(path, "running_mean", &mean);
            params.buffer(path, "running_var", &var);
            (layer.running_mean, layer.running_var) = (Some(mean), Some(var));
        }
        Ok(layer)
    }

    /// In training, batch norm normalises with the batch's statistics and updates its
    /// running ones; in evaluation it uses the running statistics and leaves them alone.
    pub fn forward(&self, xs: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        let ys = match self.kind {
            Norm::None => xs.shallow_clone(),
            Norm::Batch => xs.f_batch_norm(
                self.weight.as_ref(),
                self.bias.as_ref(),
                self.running_mean.as_ref(),
                self.running_var.as_ref(),
                train,
                BATCH_NORM_MOMENTUM,
                NORM_EPS,
                true,
            )?,
            Norm::Layer => xs.f_layer_norm([self.dim], self.weight.as_ref(), self.bias.as_ref(), NORM_EPS, true)?,
            // `nn.RMSNorm`'s default epsilon: the machine epsilon of the input's dtype.
            Norm::Rms => xs.f_rms_norm([self.dim], self.weight.as_ref(), None)?,
        };
        Ok(ys)
    }
}

/// The element-wise nonlinearity a spec names; GELU is the exact (erf) form, PyTorch's default.
pub fn activate(xs: &Tensor, act: Activation) -> anyhow::Result<Tensor> {
    Ok(match act {
        Activation::Tanh => xs.f_tanh()?,
        Activation::Relu => xs.f_relu()?,
        Activation::Sigmoid => xs.f_sigmoid()?,
        Activation::Gelu => xs.f_gelu("none")?,
    })
}

/// The random draws of a model's training forward (dropout masks). LibTorch's generator
/// is process-wide and tch cannot make another, so a draw holds the process's RNG lock,
/// seeds the generator from (job seed, step, draw within the step) and runs. A draw's
/// masks are then a function of the spec and the step alone: the same whatever else runs
/// in the process, and the same after a resume, with no generator state to save.
#[derive(Debug)]
pub struct StepRng {
    seed: u64,
    step: Cell<u64>,
    draw: Cell<u64>,
}

impl StepRng {
    pub fn new(seed: u64) -> Self {
        Self { seed, step: Cell::new(0), draw: Cell::new(0) }
    }

    /// Starts the draws of 1-based `step`.
    pub fn start_step(&self, step: u64) {
        self.step.set(step);
        self.draw.set(0);
    }

    /// Runs `f`, whose random draws come from the generator seeded for this draw.
    pub fn seeded<T>(&self, f: impl FnOnce() -> T) -> T {
        let draw = self.draw.get();
        self.draw.set(draw + 1);
        super::with_seed(mix(mix(mix(self.seed) ^ self.step.get()) ^ draw), f)
    }

    /// Dropout that is the identity outside training or at probability 0.
    pub fn dropout(&self, xs: Tensor, p: f64, train: bool) -> anyhow::Result<Tensor> {
        if train && p > 0.0 { Ok(self.seeded(|| xs.f_dropout(p, true))?) } else { Ok(xs) }
    }
}

/// SplitMix64's finaliser: neighbouring inputs give unrelated seeds.
fn mix(x: u64) -> u64 {
    let x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Token embedding (`nn.Embedding`, N(0, 1) init) of `[batch, seq]` ids.
pub fn embed(table: &Tensor, ids: &Tensor) -> anyhow::Result<Tensor> {
    anyhow::ensure!(ids.kind() == Kind::Int64, "token inputs must be int64 ids, got {:?}", ids.kind());
    Ok(Tensor::f_embedding(table, ids, -1, false, false)?)
}
