//! What to record, and the thresholds of the diagnosis.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{Ints, Problems, Ranged, Reals, SpecError, check, ints, reals};

pub const DEFAULT_PROMETHEUS_LAYERS: u32 = 32;
pub const DEFAULT_EXPLODE_FACTOR: f64 = 10.0;
pub const DEFAULT_EXPLODE_FLOOR: f64 = 1.0;
pub const DEFAULT_VANISH_RATIO: f64 = 1e-4;
pub const DEFAULT_DEAD_FRAC: f64 = 0.99;
pub const DEFAULT_DIAGNOSE_WINDOW: u64 = 50;
pub const DEFAULT_SUMMARY_EVERY: u64 = 100;
pub const DEFAULT_COOLDOWN: u64 = 100;
/// Histograms on every tenth recorded step: counting every entry's bucket costs a job
/// more than all the other statistics together, and a histogram changes slowly.
pub const DEFAULT_HISTOGRAM_EVERY: u64 = 10;
pub const PROMETHEUS_LAYERS: Ints = Ints::new(0, 1024);
pub const EXPLODE_FACTOR: Reals = Reals { min: 1.0, above: true, max: f64::INFINITY, below: false };
pub const EXPLODE_FLOOR: Reals = Reals { min: 0.0, above: false, max: f64::INFINITY, below: false };
pub const VANISH_RATIO: Reals = Reals { min: 0.0, above: true, max: 1.0, below: true };
pub const DEAD_FRAC: Reals = Reals { min: 0.0, above: true, max: 1.0, below: false };
/// Windows longer than any job are meaningless, and bounding them keeps step arithmetic
/// far from overflow.
pub const EVERY: Ints = Ints::new(0, super::MAX_STEPS as i64);
pub const WINDOW: Ints = Ints::new(1, super::MAX_STEPS as i64);
pub const COOLDOWN: Ints = Ints::new(0, super::MAX_STEPS as i64);
pub const HISTOGRAM_EVERY: Ints = Ints::new(1, super::MAX_STEPS as i64);
/// The spectral radius every hundredth step: the weights change slowly, and on the CPU a
/// measurement of the README's MLP (11 square weights, warm-started subspace iteration)
/// takes about 9 ms, two thirds of a step; every 100th keeps it under 1 % of the job.
pub const DEFAULT_SPECTRAL_EVERY: u64 = 100;
/// The temporal gradient profile every tenth step: one more reduction over the embedded
/// input's gradient, which backward must then keep.
pub const DEFAULT_TIME_EVERY: u64 = 10;

pub(crate) const RANGES: &[Ranged] = &[
    ints("MonitorSpec", "every", EVERY),
    ints("MonitorSpec", "histogram_every", HISTOGRAM_EVERY),
    ints("MonitorSpec", "spectral_every", EVERY),
    ints("MonitorSpec", "time_every", EVERY),
    ints("MonitorSpec", "prometheus_layers", PROMETHEUS_LAYERS),
    reals("MonitorSpec", "explode_factor", EXPLODE_FACTOR),
    reals("MonitorSpec", "explode_floor", EXPLODE_FLOOR),
    reals("MonitorSpec", "vanish_ratio", VANISH_RATIO),
    reals("MonitorSpec", "dead_frac", DEAD_FRAC),
    ints("MonitorSpec", "diagnose_window", WINDOW),
    ints("MonitorSpec", "summary_every", WINDOW),
    ints("MonitorSpec", "cooldown", COOLDOWN),
];

/// What to record, and the thresholds of the diagnosis.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorSpec {
    /// Record per-layer statistics every this many steps (the first step always); 0 turns
    /// them off (loss and the global norms are still recorded every step).
    pub every: u64,
    /// Record per-layer gradient histograms with the statistics.
    pub histogram: bool,
    /// Histograms on every this many recorded steps (the first always): 1 records them
    /// with every statistic.
    pub histogram_every: u64,
    /// Measure the largest singular value of every recurrent weight matrix (each gate's
    /// square block of `weight_hh`) and of every square hidden weight of an MLP every this
    /// many steps (the first step always); 0 turns it off.
    pub spectral_every: u64,
    /// Record the temporal gradient profile of a sequence model, ‖∂L/∂x_t‖ at each input
    /// position t (the gradient reaching the embedded input, averaged over the batch),
    /// every this many steps (the first step always); 0 turns it off.
    pub time_every: u64,
    /// At most this many layers per job get a Prometheus series.
    pub prometheus_layers: u32,
    /// `exploding`: the global gradient norm exceeds this multiple of its recent median.
    pub explode_factor: f64,
    /// `exploding` needs the norm (global, or a layer's) above this too: near convergence
    /// tiny norms jump by large factors harmlessly. The default, 1, is the `max_norm`
    /// most clipping recipes use: a norm a standard clip would pass is no explosion.
    pub explode_floor: f64,
    /// `vanishing`: a layer's gradient norm stays below this fraction of the largest
    /// layer's for `diagnose_window` recorded steps.
    pub vanish_ratio: f64,
    /// `dead`: at least this fraction of a layer's gradient entries are exactly zero for
    /// `diagnose_window` recorded steps.
    pub dead_frac: f64,
    /// Recorded steps a layer condition must last before it is reported.
    pub diagnose_window: u64,
    /// Steps between `clipped`/`skipped` summaries.
    pub summary_every: u64,
    /// Steps before the same kind of event for the same layer is reported again.
    pub cooldown: u64,
    /// Name patterns (globs: `*`, `?`, `[..]`, `{a,b}`; `*` also crosses dots) choosing the
    /// layers that get per-layer statistics and histograms; empty chooses every layer. The
    /// loss, the global norms and every policy still see every layer.
    #[schema(max_items = 64)]
    pub layers: Vec<String>,
}

impl Default for MonitorSpec {
    fn default() -> Self {
        Self {
            every: 1,
            histogram: true,
            histogram_every: DEFAULT_HISTOGRAM_EVERY,
            spectral_every: DEFAULT_SPECTRAL_EVERY,
            time_every: DEFAULT_TIME_EVERY,
            prometheus_layers: DEFAULT_PROMETHEUS_LAYERS,
            explode_factor: DEFAULT_EXPLODE_FACTOR,
            explode_floor: DEFAULT_EXPLODE_FLOOR,
            vanish_ratio: DEFAULT_VANISH_RATIO,
            dead_frac: DEFAULT_DEAD_FRAC,
            diagnose_window: DEFAULT_DIAGNOSE_WINDOW,
            summary_every: DEFAULT_SUMMARY_EVERY,
            cooldown: DEFAULT_COOLDOWN,
            layers: Vec::new(),
        }
    }
}

/// Most patterns in `monitor.layers`, and the longest one.
pub const MAX_LAYER_PATTERNS: usize = 64;
pub const MAX_LAYER_PATTERN_LEN: usize = 256;

/// The layers `monitor.layers` chooses, by position in `names` (every layer when it is
/// empty). Patterns are checked by [`MonitorSpec::validate`]; one that does not compile
/// chooses nothing here.
pub fn chosen_layers(patterns: &[String], names: &[String]) -> Vec<usize> {
    if patterns.is_empty() {
        return (0..names.len()).collect();
    }
    let mut set = globset::GlobSetBuilder::new();
    for pattern in patterns {
        if let Ok(glob) = globset::Glob::new(pattern) {
            set.add(glob);
        }
    }
    let Ok(set) = set.build() else { return Vec::new() };
    names.iter().enumerate().filter(|(_, name)| set.is_match(name.as_str())).map(|(i, _)| i).collect()
}

impl MonitorSpec {
    /// Whether 1-based `step` records per-layer statistics.
    pub fn records(&self, step: u64) -> bool {
        self.every > 0 && (step - 1).is_multiple_of(self.every)
    }

    /// Whether 1-based `step` records per-layer histograms: every `histogram_every`-th
    /// recorded step, the first included.
    pub fn records_histogram(&self, step: u64) -> bool {
        self.histogram && self.records(step) && ((step - 1) / self.every).is_multiple_of(self.histogram_every.max(1))
    }

    /// Whether 1-based `step` measures the weights' spectral radius.
    pub fn records_spectral(&self, step: u64) -> bool {
        self.spectral_every > 0 && (step - 1).is_multiple_of(self.spectral_every)
    }

    /// Whether 1-based `step` records the temporal gradient profile.
    pub fn records_time(&self, step: u64) -> bool {
        self.time_every > 0 && (step - 1).is_multiple_of(self.time_every)
    }

    /// The share of recorded steps that record histograms too (0 without histograms).
    pub fn histogram_share(&self) -> f64 {
        if self.histogram { 1.0 / self.histogram_every.max(1) as f64 } else { 0.0 }
    }

    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        let mut problems = Problems::default();
        problems.add(check(
            PROMETHEUS_LAYERS.contains(self.prometheus_layers),
            "monitor.prometheus_layers",
            "at most 1024",
        ));
        problems.add(EXPLODE_FACTOR.check(self.explode_factor, "monitor.explode_factor"));
        problems.add(EXPLODE_FLOOR.check(self.explode_floor, "monitor.explode_floor"));
        problems.add(VANISH_RATIO.check(self.vanish_ratio, "monitor.vanish_ratio"));
        problems.add(DEAD_FRAC.check(self.dead_frac, "monitor.dead_frac"));
        problems.add(WINDOW.check(self.diagnose_window, "monitor.diagnose_window"));
        problems.add(WINDOW.check(self.summary_every, "monitor.summary_every"));
        problems.add(COOLDOWN.check(self.cooldown, "monitor.cooldown"));
        problems.add(HISTOGRAM_EVERY.check(self.histogram_every, "monitor.histogram_every"));
        problems.add(EVERY.check(self.every, "monitor.every"));
        problems.add(EVERY.check(self.spectral_every, "monitor.spectral_every"));
        problems.add(EVERY.check(self.time_every, "monitor.time_every"));
        problems.add(self.validate_layers());
        problems.finish()
    }

    /// The layer patterns: how many, and each one a glob of bounded length.
    fn validate_layers(&self) -> Result<(), SpecError> {
        check(
            self.layers.len() <= MAX_LAYER_PATTERNS,
            "monitor.layers",
            format!("at most {MAX_LAYER_PATTERNS} patterns"),
        )?;
        for (i, pattern) in self.layers.iter().enumerate() {
            let field = format!("monitor.layers[{i}]");
            if pattern.is_empty() || pattern.len() > MAX_LAYER_PATTERN_LEN {
                return Err(SpecError::field(field, format!("a pattern of 1 to {MAX_LAYER_PATTERN_LEN} bytes")));
            }
            globset::Glob::new(pattern).map_err(|e| SpecError::field(field, format!("not a glob pattern: {e}")))?;
        }
        Ok(())
    }
}
