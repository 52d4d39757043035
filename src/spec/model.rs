//! The network: its kind, size, normalisation and activation. `norm` and `activation`
//! default per kind; [`super::JobSpec::parse`] writes the resolved values into the spec.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{Ints, Problems, Ranged, Reals, SpecError, check, ints, reals};

pub const DEFAULT_LAYERS: i64 = 2;
pub const MAX_LAYERS: i64 = 128;
pub const DEFAULT_HIDDEN: i64 = 256;
pub const MAX_HIDDEN: i64 = 16_384;
pub const DEFAULT_HEADS: i64 = 4;
pub const DEFAULT_INIT_SCALE: f64 = 1.0;
pub const LAYERS: Ints = Ints::new(1, MAX_LAYERS);
pub const HIDDEN: Ints = Ints::new(1, MAX_HIDDEN);
pub const INIT_SCALE: Reals = Reals { min: 0.0, above: true, max: 100.0, below: false };
pub const DROPOUT: Reals = Reals::FRACTION;

pub(crate) const RANGES: &[Ranged] = &[
    ints("ModelSpec", "layers", LAYERS),
    ints("ModelSpec", "hidden", HIDDEN),
    reals("ModelSpec", "init_scale", INIT_SCALE),
    reals("ModelSpec", "dropout", DROPOUT),
];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Mlp,
    Rnn,
    #[default]
    Lstm,
    Gru,
    Transformer,
    /// A TorchScript module uploaded with `POST /api/v1/models`, named by `id`; it trains
    /// on a `dataset` task.
    Torchscript,
}

impl ModelKind {
    pub const ALL: [Self; 6] = [Self::Mlp, Self::Rnn, Self::Lstm, Self::Gru, Self::Transformer, Self::Torchscript];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mlp => "mlp",
            Self::Rnn => "rnn",
            Self::Lstm => "lstm",
            Self::Gru => "gru",
            Self::Transformer => "transformer",
            Self::Torchscript => "torchscript",
        }
    }

    /// The activation used when the spec names none.
    pub fn default_activation(self) -> Activation {
        match self {
            Self::Mlp | Self::Torchscript => Activation::Relu,
            Self::Rnn | Self::Lstm | Self::Gru => Activation::Tanh,
            Self::Transformer => Activation::Gelu,
        }
    }

    /// The normalisation used when the spec names none: transformers need one (pre-LN
    /// layer norm, the stable arrangement); the others train without.
    pub fn default_norm(self) -> Norm {
        match self {
            Self::Transformer => Norm::Layer,
            Self::Mlp | Self::Rnn | Self::Lstm | Self::Gru | Self::Torchscript => Norm::None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    #[default]
    None,
    Batch,
    Layer,
    Rms,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Tanh,
    Relu,
    Sigmoid,
    Gelu,
}

/// Where a transformer block normalises: before each sub-layer (pre-LN, stable) or after
/// the residual sum (post-LN, the original Transformer, fragile without warm-up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NormPosition {
    #[default]
    Pre,
    Post,
}

/// The network. `layers` and `hidden` size every kind; `kind` is required.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSpec {
    #[schema(required = true)]
    pub kind: ModelKind,
    /// `torchscript` only: the id `POST /api/v1/models` returned. The module's own
    /// parameters and code replace every size field below, which it ignores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Hidden layers, recurrent layers or transformer blocks.
    pub layers: i64,
    /// Width, hidden state or d_model.
    pub hidden: i64,
    /// `none | batch | layer | rms`: MLPs take all four, transformers layer or rms,
    /// recurrent models none. Defaults per kind: `layer` for transformers, else `none`.
    pub norm: Norm,
    /// MLP hidden units (default relu), vanilla RNN cells (tanh or relu, default tanh),
    /// transformer feed-forward (default gelu). LSTM and GRU cells are tanh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation: Option<Activation>,
    /// MLP: add each hidden block's input to its output (where the widths match).
    pub residual: bool,
    /// Transformer attention heads; must divide `hidden`.
    pub heads: i64,
    /// Transformer: `pre` or `post` normalisation.
    pub norm_position: NormPosition,
    /// Multiplies the default initialisation: above 1 provokes explosion, below 1 vanishing.
    pub init_scale: f64,
    /// Dropout probability between layers.
    pub dropout: f64,
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            kind: ModelKind::default(),
            id: None,
            layers: DEFAULT_LAYERS,
            hidden: DEFAULT_HIDDEN,
            norm: Norm::default(),
            activation: None,
            residual: false,
            heads: DEFAULT_HEADS,
            norm_position: NormPosition::default(),
            init_scale: DEFAULT_INIT_SCALE,
            dropout: 0.0,
        }
    }
}

impl ModelSpec {
    pub fn activation(&self) -> Activation {
        self.activation.unwrap_or(self.kind.default_activation())
    }

    /// Checks the model's own ranges and that it fits a task of this shape.
    pub(crate) fn validate(&self, sequence_task: bool, dataset_task: bool) -> Result<(), SpecError> {
        if self.kind == ModelKind::Torchscript {
            let id = self.id.as_deref().unwrap_or_default();
            check(!id.is_empty(), "model.id", "name the module: an id from POST /api/v1/models")?;
            return check(dataset_task, "task.kind", "a torchscript model trains on a dataset task");
        }
        let mut problems = Problems::default();
        problems.add(check(self.id.is_none(), "model.id", "only torchscript models take an id"));
        problems.add(check(!dataset_task, "task.kind", "a dataset task trains a torchscript model"));
        problems.add(LAYERS.check(self.layers, "model.layers"));
        problems.add(HIDDEN.check(self.hidden, "model.hidden"));
        problems.add(INIT_SCALE.check(self.init_scale, "model.init_scale"));
        problems.add(DROPOUT.check(self.dropout, "model.dropout"));
        problems.add(self.validate_kind(sequence_task));
        problems.finish()
    }

    /// What the kind of network needs of the task, its norm, activation and heads.
    fn validate_kind(&self, sequence_task: bool) -> Result<(), SpecError> {
        let act = self.activation();
        match self.kind {
            ModelKind::Mlp => {
                check(!sequence_task, "model.kind", "mlp takes feature vectors: use it with the classification task")
            }
            ModelKind::Rnn | ModelKind::Lstm | ModelKind::Gru => {
                let name = self.kind.as_str();
                check(sequence_task, "model.kind", format!("{name} takes sequences: use char_lm, adding or copy"))?;
                check(self.norm == Norm::None, "model.norm", format!("{name} supports only none"))?;
                if self.kind == ModelKind::Rnn {
                    check(matches!(act, Activation::Tanh | Activation::Relu), "model.activation", "rnn: tanh or relu")
                } else {
                    check(act == Activation::Tanh, "model.activation", format!("{name} cells use tanh"))
                }
            }
            ModelKind::Transformer => {
                check(sequence_task, "model.kind", "transformer takes sequences: use char_lm, adding or copy")?;
                check(matches!(self.norm, Norm::Layer | Norm::Rms), "model.norm", "transformer: layer or rms")?;
                check(
                    self.heads >= 1 && self.hidden % self.heads == 0,
                    "model.heads",
                    "must be at least 1 and divide model.hidden",
                )
            }
            ModelKind::Torchscript => Ok(()),
        }
    }
}
