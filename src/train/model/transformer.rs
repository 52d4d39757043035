//! A decoder-only transformer: token embedding (or a linear map of feature inputs) plus a
//! learned position embedding, `layers` causal self-attention blocks, and a linear head.
//! Blocks follow `nn.TransformerEncoderLayer(batch_first=True)` with a causal mask:
//! parameter names, order and default initialisation are that module's, inside an
//! `nn.TransformerEncoder` called `encoder` (whose final `norm` exists only for pre-norm).
//! Unlike `nn.TransformerEncoder`, which deep-copies one layer, every block draws its own
//! initial weights.

use anyhow::Context;
use tch::Tensor;
use tch::nn::{self, Init};

use super::layers::{Linear, NormLayer, StepRng, activate, embed, uniform_fan, xavier_uniform};
use super::{Input, InputProbe, Io, Model, Params, Trace, Traced};
use crate::spec::{Activation, ModelSpec, NormPosition};

/// Feed-forward width as a multiple of `hidden` (the original Transformer's 4×).
const FF_MULTIPLE: i64 = 4;

#[derive(Debug)]
struct Block {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: Linear,
    linear1: Linear,
    linear2: Linear,
    norm1: NormLayer,
    norm2: NormLayer,
}

#[derive(Debug)]
enum Embedding {
    Tokens(Tensor),
    Features(Linear),
}

#[derive(Debug)]
pub struct Transformer {
    input: Embedding,
    pos: Tensor,
    blocks: Vec<Block>,
    final_norm: Option<NormLayer>,
    head: Linear,
    heads: i64,
    pre_norm: bool,
    activation: Activation,
    dropout: f64,
    rng: StepRng,
}

impl Transformer {
    pub fn new(
        root: &nn::Path<'_>,
        params: &mut Params,
        spec: &ModelSpec,
        io: Io,
        rng: StepRng,
    ) -> anyhow::Result<Self> {
        let d = spec.hidden;
        let normal = Init::Randn { mean: 0.0, stdev: 1.0 };
        let input = match io.input {
            Input::Tokens(vocab) => Embedding::Tokens(params.var(&(root / "embed"), "weight", &[vocab, d], normal)?),
            Input::Features(width) => Embedding::Features(Linear::new(params, &(root / "input"), width, d)?),
        };
        let pos = params.var(&(root / "pos"), "weight", &[io.max_len, d], normal)?;
        let encoder = root / "encoder";
        let layers = &encoder / "layers";
        let mut blocks = Vec::new();
        for i in 0..spec.layers {
            let path = &layers / i;
            let attn = &path / "self_attn";
            let in_proj_weight = params.var(&attn, "in_proj_weight", &[3 * d, d], xavier_uniform(d, 3 * d))?;
            let in_proj_bias = params.var(&attn, "in_proj_bias", &[3 * d], Init::Const(0.0))?;
            let out_path = &attn / "out_proj";
            let out_proj = Linear {
                weight: params.var(&out_path, "weight", &[d, d], uniform_fan(d))?,
                bias: params.var(&out_path, "bias", &[d], Init::Const(0.0))?,
            };
            let linear1 = Linear::new(params, &(&path / "linear1"), d, FF_MULTIPLE * d)?;
            let linear2 = Linear::new(params, &(&path / "linear2"), FF_MULTIPLE * d, d)?;
            let norm1 = NormLayer::new(params, &(&path / "norm1"), spec.norm, d)?;
            let norm2 = NormLayer::new(params, &(&path / "norm2"), spec.norm, d)?;
            blocks.push(Block { in_proj_weight, in_proj_bias, out_proj, linear1, linear2, norm1, norm2 });
        }
        let pre_norm = spec.norm_position == NormPosition::Pre;
        let final_norm =
            if pre_norm { Some(NormLayer::new(params, &(&encoder / "norm"), spec.norm, d)?) } else { None };
        let head = Linear::new(params, &(root / "head"), d, io.output)?;
        Ok(Self {
            input,
            pos,
            blocks,
            final_norm,
            head,
            heads: spec.heads,
            pre_norm,
            activation: spec.activation(),
            dropout: spec.dropout,
            rng,
        })
    }

    fn attention(&self, block: &Block, x: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        let (b, t, d) = x.size3()?;
        let dh = d / self.heads;
        let qkv = x.f_linear(&block.in_proj_weight, Some(&block.in_proj_bias))?;
        let split = |part: i64| -> anyhow::Result<Tensor> {
            Ok(qkv.f_narrow(-1, part * d, d)?.f_view([b, t, self.heads, dh])?.f_transpose(1, 2)?)
        };
        let p = if train { self.dropout } else { 0.0 };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let attend = || Tensor::f_scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, p, true, None, false);
        // The attention kernels draw their dropout mask from the process's generator.
        let heads = if p > 0.0 { self.rng.seeded(attend) } else { attend() }.context("attention failed")?;
        block.out_proj.forward(&heads.f_transpose(1, 2)?.f_reshape([b, t, d])?)
    }

    fn feed_forward(&self, block: &Block, x: &Tensor, train: bool) -> anyhow::Result<Tensor> {
        let h = self.rng.dropout(activate(&block.linear1.forward(x)?, self.activation)?, self.dropout, train)?;
        block.linear2.forward(&h)
    }
}

impl Model for Transformer {
    fn trace(&self, xs: &Tensor, train: bool, trace: Trace) -> anyhow::Result<Traced> {
        let x = match &self.input {
            Embedding::Tokens(table) => embed(table, xs)?,
            Embedding::Features(linear) => linear.forward(xs)?,
        };
        // The token's embedding, before positions are added (the same gradient reaches both).
        let (mut x, input) = InputProbe::cut(x, trace.input)?;
        let t = x.size()[1];
        anyhow::ensure!(t <= self.pos.size()[0], "sequence of {t} is longer than the model's {}", self.pos.size()[0]);
        x = x.f_add(&self.pos.f_narrow(0, 0, t)?)?;
        let p = self.dropout;
        let mut outputs = Vec::new();
        for block in &self.blocks {
            if self.pre_norm {
                let sa = self.attention(block, &block.norm1.forward(&x, train)?, train)?;
                x = x.f_add(&self.rng.dropout(sa, p, train)?)?;
                let ff = self.feed_forward(block, &block.norm2.forward(&x, train)?, train)?;
                x = x.f_add(&self.rng.dropout(ff, p, train)?)?;
            } else {
                let sa = self.attention(block, &x, train)?;
                x = block.norm1.forward(&x.f_add(&self.rng.dropout(sa, p, train)?)?, train)?;
                let ff = self.feed_forward(block, &x, train)?;
                x = block.norm2.forward(&x.f_add(&self.rng.dropout(ff, p, train)?)?, train)?;
            }
            if trace.blocks {
                outputs.push(x.shallow_clone());
            }
        }
        if let Some(norm) = &self.final_norm {
            x = norm.forward(&x, train)?;
        }
        Ok(Traced { out: self.head.forward(&x)?, input, blocks: outputs })
    }

    fn rng(&self) -> &StepRng {
        &self.rng
    }
}
