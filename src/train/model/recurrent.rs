//! Recurrent stacks: vanilla RNN (tanh or relu), LSTM, GRU, through LibTorch's fused
//! kernels. Token inputs go through an embedding of width `hidden` first; feature inputs
//! feed the first layer directly. Names follow `nn.Embedding` (`embed`), `nn.RNN` /
//! `nn.LSTM` / `nn.GRU` (`rnn`, `lstm`, `gru`: `weight_ih_l0`, …) and `nn.Linear` (`head`).

use anyhow::Context;
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use super::layers::{Linear, StepRng, embed, uniform_fan};
use super::{Input, InputProbe, Io, Model, Params, Trace, Traced};
use crate::spec::{Activation, ModelKind, ModelSpec};

#[derive(Debug, Clone, Copy)]
enum Cell {
    Tanh,
    Relu,
    Lstm,
    Gru,
}

impl Cell {
    /// Gates stacked in each weight matrix.
    fn gates(self) -> i64 {
        match self {
            Self::Tanh | Self::Relu => 1,
            Self::Lstm => 4,
            Self::Gru => 3,
        }
    }
}

#[derive(Debug)]
pub struct Recurrent {
    embed: Option<Tensor>,
    cell: Cell,
    /// Per layer: `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`, LibTorch's flat order.
    flat_weights: Vec<Tensor>,
    head: Linear,
    layers: i64,
    hidden: i64,
    dropout: f64,
    rng: StepRng,
}

impl Recurrent {
    pub fn new(
        root: &nn::Path<'_>,
        params: &mut Params,
        spec: &ModelSpec,
        io: Io,
        rng: StepRng,
    ) -> anyhow::Result<Self> {
        let hidden = spec.hidden;
        let (cell, name) = match (spec.kind, spec.activation()) {
            (ModelKind::Lstm, _) => (Cell::Lstm, "lstm"),
            (ModelKind::Gru, _) => (Cell::Gru, "gru"),
            (_, Activation::Relu) => (Cell::Relu, "rnn"),
            _ => (Cell::Tanh, "rnn"),
        };
        let (embed, mut input) = match io.input {
            Input::Tokens(vocab) => {
                let table =
                    params.var(&(root / "embed"), "weight", &[vocab, hidden], Init::Randn { mean: 0.0, stdev: 1.0 })?;
                (Some(table), hidden)
            }
            Input::Features(width) => (None, width),
        };
        let path = root / name;
        let rows = cell.gates() * hidden;
        let init = uniform_fan(hidden);
        let mut flat_weights = Vec::new();
        for l in 0..spec.layers {
            flat_weights.push(params.var(&path, &format!("weight_ih_l{l}"), &[rows, input], init)?);
            flat_weights.push(params.var(&path, &format!("weight_hh_l{l}"), &[rows, hidden], init)?);
            flat_weights.push(params.var(&path, &format!("bias_ih_l{l}"), &[rows], init)?);
            flat_weights.push(params.var(&path, &format!("bias_hh_l{l}"), &[rows], init)?);
            input = hidden;
        }
        let head = Linear::new(params, &(root / "head"), hidden, io.output)?;
        Ok(Self { embed, cell, flat_weights, head, layers: spec.layers, hidden, dropout: spec.dropout, rng })
    }
}

impl Recurrent {
    /// `layers` stacked layers with weights `w` over `x`, through one fused kernel: the top
    /// layer's outputs and each layer's last hidden state, `[layers, batch, hidden]`.
    fn run(&self, x: &Tensor, w: &[&Tensor], layers: i64, train: bool) -> anyhow::Result<(Tensor, Tensor)> {
        let batch = x.size()[0];
        let h0 = Tensor::f_zeros([layers, batch, self.hidden], (Kind::Float, x.device()))?;
        let out = match self.cell {
            Cell::Lstm => x.f_lstm(&[&h0, &h0], w, true, layers, 0.0, train, false, true).map(|(out, h, _)| (out, h)),
            Cell::Gru => x.f_gru(&h0, w, true, layers, 0.0, train, false, true),
            Cell::Tanh => x.f_rnn_tanh(&h0, w, true, layers, 0.0, train, false, true),
            Cell::Relu => x.f_rnn_relu(&h0, w, true, layers, 0.0, train, false, true),
        }
        .context("recurrent forward failed")?;
        Ok(out)
    }
}

impl Model for Recurrent {
    fn trace(&self, xs: &Tensor, train: bool, trace: Trace) -> anyhow::Result<Traced> {
        let x = match &self.embed {
            Some(table) => embed(table, xs)?,
            None => xs.shallow_clone(),
        };
        let (x, input) = InputProbe::cut(x, trace.input)?;
        let w: Vec<&Tensor> = self.flat_weights.iter().collect();
        let (out, last) = if train && self.dropout > 0.0 && self.layers > 1 {
            // One layer at a time with the dropout between them drawn here: the fused
            // kernels' own dropout (cuDNN's especially) keeps generator state of its own
            // that no seed reaches, so its masks could not be reproduced on resume.
            let mut h = x;
            let mut states = Vec::with_capacity(self.layers as usize);
            for (l, layer) in w.chunks(4).enumerate() {
                let (next, state) = self.run(&h, layer, 1, train)?;
                states.push(state);
                h = next;
                if (l as i64) + 1 < self.layers {
                    h = self.rng.dropout(h, self.dropout, train)?;
                }
            }
            (h, Tensor::f_cat(&states, 0)?)
        } else {
            self.run(&x, &w, self.layers, train)?
        };
        let blocks = if trace.blocks { last.f_unbind(0)? } else { Vec::new() };
        Ok(Traced { out: self.head.forward(&out)?, input, blocks })
    }

    fn rng(&self) -> &StepRng {
        &self.rng
    }
}
