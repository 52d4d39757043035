//! The service's words: the per-layer statistics, the kinds of event a run reports and
//! the statuses of its diagnosis. Each is an enum whose wire name (JSON, SQL column,
//! query parameter, Prometheus label) is written once, here; everything else matches on
//! the enum, so a new name cannot be missed in one of the places that list them.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use strum::{Display, IntoStaticStr, VariantArray};
use utoipa::ToSchema;

/// A name none of a vocabulary's values has, as `FromStr` reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}; known: {known}")]
pub struct UnknownName {
    /// What was looked up (`statistic`, `event kind`).
    pub what: &'static str,
    pub name: String,
    /// The known names, comma-separated, in order.
    pub known: String,
}

/// A set of wire names: a unit enum whose variants serialize (serde) and print (strum)
/// as the same snake_case names, listed in declaration order by `VARIANTS`.
pub trait Vocabulary: Copy + VariantArray + Into<&'static str> + 'static {
    /// What one value is called in an error (`statistic`, `event kind`).
    const WHAT: &'static str;

    /// The value named `name`, or an error that lists the known names.
    fn lookup(name: &str) -> Result<Self, UnknownName> {
        let wire = |v: &Self| -> &'static str { (*v).into() };
        Self::VARIANTS.iter().find(|v| wire(v) == name).copied().ok_or_else(|| UnknownName {
            what: Self::WHAT,
            name: name.to_owned(),
            known: Self::VARIANTS.iter().map(wire).collect::<Vec<_>>().join(", "),
        })
    }
}

/// `ALL`, `as_str` and `FromStr` for a [`Vocabulary`], so callers need no trait in scope.
macro_rules! wire_names {
    ($name:ident, $what:literal) => {
        impl Vocabulary for $name {
            const WHAT: &'static str = $what;
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = <Self as VariantArray>::VARIANTS;

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(name: &str) -> Result<Self, UnknownName> {
                Self::lookup(name)
            }
        }
    };
}

/// A per-layer statistic (DESIGN.md §3), in storage order: the order of the store's
/// columns, of a step message's `layers` and of `hello.statistics`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ToSchema,
    Display,
    IntoStaticStr,
    VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Statistic {
    /// ‖g‖₂ before any grad policy.
    GradNorm,
    /// max |g|.
    GradMax,
    /// Mean of g.
    GradMean,
    /// Sample standard deviation of g.
    GradStd,
    /// Fraction of the elements of g exactly 0.
    ZeroFrac,
    /// Count of NaN and ±Inf in g.
    Nonfinite,
    /// Fraction of the elements of g below the smallest normal number of the training
    /// precision (zeros included), as the precision holds them: times the loss scale for
    /// fp16 with loss scaling.
    Underflow,
    /// ‖w‖₂ after the step.
    WeightNorm,
    /// ‖w_after − w_before‖₂ / ‖w_before‖₂.
    UpdateRatio,
}

wire_names!(Statistic, "statistic");

/// `$access.<field>` for the field named after statistic `$stat`, where `$access` is
/// `&value` or `&mut value` of a struct with one field per statistic (`LayerStats`,
/// `LayerSeries`): the one place that pairs each statistic with its field.
macro_rules! statistic_field {
    ($stat:expr, $($access:tt)+) => {
        match $stat {
            $crate::vocab::Statistic::GradNorm => $($access)+.grad_norm,
            $crate::vocab::Statistic::GradMax => $($access)+.grad_max,
            $crate::vocab::Statistic::GradMean => $($access)+.grad_mean,
            $crate::vocab::Statistic::GradStd => $($access)+.grad_std,
            $crate::vocab::Statistic::ZeroFrac => $($access)+.zero_frac,
            $crate::vocab::Statistic::Nonfinite => $($access)+.nonfinite,
            $crate::vocab::Statistic::Underflow => $($access)+.underflow,
            $crate::vocab::Statistic::WeightNorm => $($access)+.weight_norm,
            $crate::vocab::Statistic::UpdateRatio => $($access)+.update_ratio,
        }
    };
}
pub(crate) use statistic_field;

impl Statistic {
    /// The statistics of the gradients, the rows of `FlatParams::grad_stats`, in order.
    pub const GRAD: [Self; 7] = [
        Self::GradNorm,
        Self::GradMax,
        Self::GradMean,
        Self::GradStd,
        Self::ZeroFrac,
        Self::Nonfinite,
        Self::Underflow,
    ];
    /// The statistics of the weights after the update, the rows of
    /// `FlatParams::weight_stats`, in order.
    pub const WEIGHT: [Self; 2] = [Self::WeightNorm, Self::UpdateRatio];
}

/// What an event reports: a diagnosis, a policy summary or action, or a validation
/// result.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ToSchema,
    Display,
    IntoStaticStr,
    VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum EventKind {
    /// NaN or ±Inf in the loss or a gradient.
    Nonfinite,
    /// A non-finite episode ended.
    Recovered,
    /// The global norm, or one layer's, jumped far above its recent median.
    Exploding,
    /// A layer's gradient norm stayed orders of magnitude below the largest layer's.
    Vanishing,
    /// Most of a layer's gradient entries stayed exactly zero.
    Dead,
    /// Information: a parameter a following batch norm makes redundant.
    Redundant,
    /// How many recent steps the grad policies scaled down.
    Clipped,
    /// How many recent steps had their update dropped.
    Skipped,
    /// `skip_spike` took an update after skipping its maximum in a row.
    SpikeAccepted,
    /// fp16's loss-scaled gradients held an infinity or a NaN: the update was skipped and
    /// the scale backed off.
    LossScaleOverflow,
    /// `on_spike: rollback` restored the last good state and skipped batches; its value
    /// is the steps lost.
    Rollback,
    /// A measured weight matrix's largest singular value crossed 1.0, up or down.
    SpectralRadius,
    /// A validation pass: its loss.
    Validation,
    /// A validation pass: the task's accuracy.
    ValidationAccuracy,
    /// A validation pass: the task's other metric.
    ValidationMetric,
}

wire_names!(EventKind, "event kind");

impl EventKind {
    /// The validation kinds, the loss first.
    pub const VALIDATION: [Self; 3] = [Self::Validation, Self::ValidationAccuracy, Self::ValidationMetric];

    /// For a validation metric's kind, the metric's name (`accuracy`, `metric`).
    pub fn validation_metric(self) -> Option<&'static str> {
        match self {
            Self::ValidationAccuracy => Some("accuracy"),
            Self::ValidationMetric => Some("metric"),
            _ => None,
        }
    }
}

/// How a run looks now.
#[derive(
    Debug,
    Default,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ToSchema,
    Display,
    IntoStaticStr,
    VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum DiagnosisStatus {
    /// No issue in force.
    #[default]
    Healthy,
    /// Vanishing, dead or exploding layers.
    Warning,
    /// Non-finite values.
    Critical,
}

wire_names!(DiagnosisStatus, "diagnosis status");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_through_serde_and_from_str() {
        for &s in Statistic::ALL {
            assert_eq!(serde_json::to_value(s).expect("json"), s.as_str());
            assert_eq!(s.as_str().parse::<Statistic>(), Ok(s));
        }
        for &k in EventKind::ALL {
            assert_eq!(serde_json::from_value::<EventKind>(k.as_str().into()).expect("kind"), k);
        }
        assert_eq!(serde_json::to_string(&DiagnosisStatus::default()).expect("json"), r#""healthy""#);
    }

    #[test]
    fn the_documented_names_in_their_order() {
        let names: Vec<&str> = Statistic::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "grad_norm",
                "grad_max",
                "grad_mean",
                "grad_std",
                "zero_frac",
                "nonfinite",
                "underflow",
                "weight_norm",
                "update_ratio"
            ]
        );
        let rows: Vec<Statistic> = Statistic::GRAD.iter().chain(&Statistic::WEIGHT).copied().collect();
        assert_eq!(rows, Statistic::ALL, "the gradient rows then the weight rows are every statistic, in order");
    }

    #[test]
    fn the_schemas_list_the_wire_names() {
        fn listed<T: utoipa::PartialSchema>() -> serde_json::Value {
            serde_json::to_value(T::schema()).expect("json")["enum"].clone()
        }
        fn wire<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> serde_json::Value {
            all.iter().map(|&v| name(v)).collect()
        }
        assert_eq!(listed::<Statistic>(), wire(Statistic::ALL, Statistic::as_str));
        assert_eq!(listed::<EventKind>(), wire(EventKind::ALL, EventKind::as_str));
        assert_eq!(listed::<DiagnosisStatus>(), wire(DiagnosisStatus::ALL, DiagnosisStatus::as_str));
    }

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        let err = "grad_nrom".parse::<Statistic>().expect_err("unknown");
        assert_eq!(
            err.to_string(),
            r#"unknown statistic "grad_nrom"; known: grad_norm, grad_max, grad_mean, grad_std, zero_frac, nonfinite, underflow, weight_norm, update_ratio"#
        );
        assert!("exploded".parse::<EventKind>().is_err());
    }
}
