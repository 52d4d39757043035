//! A deep MLP: `layers` hidden blocks of Linear → norm → activation (→ dropout), each
//! optionally residual, then a linear head. The equivalent PyTorch module has a
//! `blocks` `ModuleList` whose items hold `linear` and `norm`, and a `head`.

use tch::{Tensor, nn};

use super::layers::{Linear, NormLayer, StepRng, activate};
use super::{Input, Io, Model, Params, Trace, Traced};
use crate::spec::{Activation, ModelSpec, Norm};

#[derive(Debug)]
struct Block {
    linear: Linear,
    norm: NormLayer,
}

#[derive(Debug)]
pub struct Mlp {
    blocks: Vec<Block>,
    head: Linear,
    activation: Activation,
    residual: bool,
    dropout: f64,
    rng: StepRng,
}

impl Mlp {
    pub fn new(
        root: &nn::Path<'_>,
        params: &mut Params,
        spec: &ModelSpec,
        io: Io,
        rng: StepRng,
    ) -> anyhow::Result<Self> {
        let Input::Features(mut width) = io.input else { anyhow::bail!("an mlp takes feature vectors, not tokens") };
        let blocks_path = root / "blocks";
        let mut blocks = Vec::new();
        for i in 0..spec.layers {
            let path = &blocks_path / i;
            let linear = Linear::new(params, &(&path / "linear"), width, spec.hidden)?;
            if spec.norm == Norm::Batch {
                // Batch norm subtracts each feature's batch mean: the bias cancels.
                params.mark_last_redundant();
            }
            let norm = NormLayer::new(params, &(&path / "norm"), spec.norm, spec.hidden)?;
            blocks.push(Block { linear, norm });
            width = spec.hidden;
        }
        let head = Linear::new(params, &(root / "head"), width, io.output)?;
        Ok(Self { blocks, head, activation: spec.activation(), residual: spec.residual, dropout: spec.dropout, rng })
    }
}

impl Model for Mlp {
    fn trace(&self, xs: &Tensor, train: bool, trace: Trace) -> anyhow::Result<Traced> {
        let mut blocks = Vec::new();
        let out = self.run(xs, train, trace.blocks.then_some(&mut blocks))?;
        Ok(Traced { out, input: None, blocks })
    }

    fn rng(&self) -> &StepRng {
        &self.rng
    }
}

impl Mlp {
    /// The forward; each block's output is pushed onto `blocks` when given.
    fn run(&self, xs: &Tensor, train: bool, mut blocks: Option<&mut Vec<Tensor>>) -> anyhow::Result<Tensor> {
        let mut x = xs.shallow_clone();
        for block in &self.blocks {
            let h = block.norm.forward(&block.linear.forward(&x)?, train)?;
            let h = self.rng.dropout(activate(&h, self.activation)?, self.dropout, train)?;
            x = if self.residual && h.size() == x.size() { x.f_add(&h)? } else { h };
            if let Some(blocks) = blocks.as_mut() {
                blocks.push(x.shallow_clone());
            }
        }
        self.head.forward(&x)
    }
}
