//! The data a job trains on: a text corpus or one of the generated tasks, each with its
//! defaults and the sizes it accepts.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{Ints, Ranged, SpecError, check, ints};

pub const DEFAULT_SEQ_LEN: i64 = 128;
pub const MAX_SEQ_LEN: i64 = 8192;
pub const DEFAULT_CORPUS: &str = "builtin:tiny";
/// Validation (loss and, where the task has one, its metric) every this many steps.
pub const DEFAULT_EVAL_EVERY: u64 = 100;
/// Copy task: distinct data symbols, and how many of them are to be remembered.
pub const DEFAULT_COPY_SYMBOLS: i64 = 8;
pub const DEFAULT_COPY_LENGTH: i64 = 10;
pub const COPY_SYMBOLS: Ints = Ints::new(2, 256);
/// Classification task: input features, classes, and Gaussian clusters per class.
pub const DEFAULT_FEATURES: i64 = 32;
pub const DEFAULT_CLASSES: i64 = 10;
pub const DEFAULT_CLUSTERS: i64 = 2;
pub const FEATURES: Ints = Ints::new(1, super::model::MAX_HIDDEN);
pub const CLASSES: Ints = Ints::new(2, 10_000);
pub const CLUSTERS: Ints = Ints::new(1, 64);
/// Standard deviation of the classification task's noise around each cluster centre.
pub const DEFAULT_NOISE: f64 = 1.0;

/// The data a job trains on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskSpec {
    /// Next-character prediction on a text corpus; the last tenth is held out for validation.
    CharLm(CharLmTask),
    /// The adding problem (Hochreiter & Schmidhuber 1997): a sequence of (value, marker)
    /// pairs; predict at the last step the sum of the two marked values. Regression (MSE);
    /// the metric is the fraction of answers within 0.04.
    Adding(AddingTask),
    /// The copy (memory) problem: `length` random symbols, a pause, a delimiter, then the
    /// model must replay the symbols. The metric is the fraction of replayed symbols right.
    Copy(CopyTask),
    /// Synthetic classification for MLPs: Gaussian clusters (`clusters` per class) in
    /// `features` dimensions, drawn from the job's seed. The metric is accuracy.
    Classification(ClassificationTask),
    /// An uploaded safetensors data set (`POST /api/v1/datasets`) for a `torchscript`
    /// model: batches of `x` drawn with the job's seed (shuffled epochs), the module's
    /// output scored against `y` by `loss`; `x_val`/`y_val`, when the file has them, are
    /// the validation set.
    Dataset(DatasetTask),
}

/// How a `dataset` task scores the module's output against `y`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Logits `[B, C]` (or `[B, T, C]`) against int64 classes `[B]` (or `[B, T]`); the
    /// metric is accuracy.
    #[default]
    CrossEntropy,
    /// Float output against float `y` of the same number of elements.
    Mse,
    /// Logits against float 0/1 targets of the same number of elements; the metric is
    /// accuracy at 0.
    BceWithLogits,
}

impl Loss {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CrossEntropy => "cross_entropy",
            Self::Mse => "mse",
            Self::BceWithLogits => "bce_with_logits",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetTask {
    /// The id `POST /api/v1/datasets` returned.
    #[schema(required = true)]
    pub id: String,
    pub loss: Loss,
    /// Validation on `x_val`/`y_val` every this many steps (and after the last); 0 turns
    /// it off, as does a file without them.
    pub eval_every: u64,
}

impl Default for DatasetTask {
    fn default() -> Self {
        Self { id: String::new(), loss: Loss::default(), eval_every: DEFAULT_EVAL_EVERY }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CharLmTask {
    /// `builtin:<name>` or the id `POST /api/v1/corpora` returned.
    pub corpus: String,
    /// Characters per training sequence.
    pub seq_len: i64,
    /// Validation loss every this many steps (and after the last); 0 turns it off.
    pub eval_every: u64,
}

impl Default for CharLmTask {
    fn default() -> Self {
        Self { corpus: DEFAULT_CORPUS.to_owned(), seq_len: DEFAULT_SEQ_LEN, eval_every: DEFAULT_EVAL_EVERY }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AddingTask {
    /// Sequence length: the distance the two marked values must be carried.
    pub seq_len: i64,
    pub eval_every: u64,
}

impl Default for AddingTask {
    fn default() -> Self {
        Self { seq_len: DEFAULT_SEQ_LEN, eval_every: DEFAULT_EVAL_EVERY }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CopyTask {
    /// Whole sequence length; the pause is `seq_len - 2·length - 1` steps.
    pub seq_len: i64,
    pub symbols: i64,
    pub length: i64,
    pub eval_every: u64,
}

impl Default for CopyTask {
    fn default() -> Self {
        Self {
            seq_len: DEFAULT_SEQ_LEN,
            symbols: DEFAULT_COPY_SYMBOLS,
            length: DEFAULT_COPY_LENGTH,
            eval_every: DEFAULT_EVAL_EVERY,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClassificationTask {
    pub features: i64,
    pub classes: i64,
    pub clusters: i64,
    /// Standard deviation of each sample around its cluster centre (centres are N(0, 1)).
    pub noise: f64,
    pub eval_every: u64,
}

impl Default for ClassificationTask {
    fn default() -> Self {
        Self {
            features: DEFAULT_FEATURES,
            classes: DEFAULT_CLASSES,
            clusters: DEFAULT_CLUSTERS,
            noise: DEFAULT_NOISE,
            eval_every: DEFAULT_EVAL_EVERY,
        }
    }
}

/// The bounds the schema publishes for task fields (the sequence length's lower bound
/// depends on the task and is checked in [`TaskSpec::validate`]).
pub(crate) const RANGES: &[Ranged] = &[
    ints("CharLmTask", "seq_len", Ints::new(2, MAX_SEQ_LEN)),
    ints("AddingTask", "seq_len", Ints::new(2, MAX_SEQ_LEN)),
    ints("CopyTask", "seq_len", Ints::new(3, MAX_SEQ_LEN)),
    ints("CopyTask", "symbols", COPY_SYMBOLS),
    ints("CopyTask", "length", Ints::new(1, MAX_SEQ_LEN / 2)),
    ints("ClassificationTask", "features", FEATURES),
    ints("ClassificationTask", "classes", CLASSES),
    ints("ClassificationTask", "clusters", CLUSTERS),
];

impl TaskSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CharLm(_) => "char_lm",
            Self::Adding(_) => "adding",
            Self::Copy(_) => "copy",
            Self::Classification(_) => "classification",
            Self::Dataset(_) => "dataset",
        }
    }

    /// The corpus a `char_lm` task reads; other tasks generate their data.
    pub fn corpus(&self) -> Option<&str> {
        match self {
            Self::CharLm(t) => Some(&t.corpus),
            _ => None,
        }
    }

    /// The uploaded data set a `dataset` task reads.
    pub fn dataset(&self) -> Option<&str> {
        match self {
            Self::Dataset(t) => Some(&t.id),
            _ => None,
        }
    }

    pub fn eval_every(&self) -> u64 {
        match self {
            Self::CharLm(t) => t.eval_every,
            Self::Adding(t) => t.eval_every,
            Self::Copy(t) => t.eval_every,
            Self::Classification(t) => t.eval_every,
            Self::Dataset(t) => t.eval_every,
        }
    }

    /// Sequence tasks feed recurrent and transformer models; classification feeds MLPs.
    pub fn is_sequence(&self) -> bool {
        !matches!(self, Self::Classification(_))
    }

    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        let seq_len_ok = |seq_len: i64, min: i64| Ints::new(min, MAX_SEQ_LEN).check(seq_len, "task.seq_len");
        match self {
            Self::CharLm(t) => {
                check(!t.corpus.is_empty(), "task.corpus", "must name a corpus")?;
                seq_len_ok(t.seq_len, 2)
            }
            Self::Adding(t) => seq_len_ok(t.seq_len, 2),
            Self::Copy(t) => {
                COPY_SYMBOLS.check(t.symbols, "task.symbols")?;
                Ints::new(1, MAX_SEQ_LEN / 2).check(t.length, "task.length")?;
                seq_len_ok(t.seq_len, 2 * t.length + 1)
            }
            Self::Classification(t) => {
                FEATURES.check(t.features, "task.features")?;
                CLASSES.check(t.classes, "task.classes")?;
                CLUSTERS.check(t.clusters, "task.clusters")?;
                check(t.noise.is_finite() && t.noise >= 0.0, "task.noise", "must be a finite number, at least 0")
            }
            Self::Dataset(t) => check(!t.id.is_empty(), "task.id", "name a data set: an id from POST /api/v1/datasets"),
        }
    }
}
