//! Diagnosis from the step reports, in plain Rust: non-finite values, exploding norms
//! (global, or one layer's while others dominate the global norm), vanishing and dead
//! layers, parameters a batch norm makes redundant, and summaries of what the policies did.
//!
//! Events are de-duplicated: a condition is reported when it starts, not on every step it
//! lasts, and the same kind for the same layer is not reported again within a cool-down.
//! Step arithmetic saturates: a cool-down as long as `u64::MAX` means "never again".
//! Non-finite values are an episode: the issue clears after `diagnose_window` finite steps
//! with a `recovered` event, so the events keep the history and the status the present.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Event, StepReport};
use crate::spec::MonitorSpec;
use crate::vocab::{DiagnosisStatus, EventKind};

/// Finite global norms the exploding check compares against.
pub const NORM_HISTORY: usize = 100;
/// Norms needed before the exploding check starts.
const MIN_HISTORY: usize = 10;
/// A `clip_coef` below this means the step was clipped.
const CLIPPED_BELOW: f64 = 1.0 - 1e-6;

/// How the run looks now: active issues, worst first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Diagnosis {
    /// `healthy`, `warning` (vanishing, dead, exploding spikes) or `critical` (non-finite).
    pub status: DiagnosisStatus,
    pub issues: Vec<Issue>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Issue {
    pub kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// First step of the issue.
    pub since: u64,
    pub message: String,
}

/// A condition that must last a number of recorded steps: how many so far, and the step
/// the run of them began (recorded steps can be `monitor.every` apart).
#[derive(Debug, Clone, Copy, Default)]
struct Streak {
    count: u64,
    since: u64,
}

impl Streak {
    fn observe(&mut self, on: bool, step: u64) {
        if !on {
            self.count = 0;
        } else {
            if self.count == 0 {
                self.since = step;
            }
            self.count = self.count.saturating_add(1);
        }
    }
}

/// A run of non-finite steps, until `diagnose_window` finite steps end it.
#[derive(Debug, Clone, Copy)]
struct NonfiniteEpisode {
    first: u64,
    last: u64,
    steps: u64,
    finite_since: u64,
}

#[derive(Debug)]
pub struct Diagnoser {
    config: MonitorSpec,
    layer_names: Vec<String>,
    norms: VecDeque<f64>,
    /// Each layer's recent finite gradient norms (recorded steps), for the per-layer
    /// exploding rule.
    layer_norms: Vec<VecDeque<f64>>,
    /// Consecutive recorded steps each layer has looked vanishing / dead.
    vanishing_streak: Vec<Streak>,
    dead_streak: Vec<Streak>,
    /// Layers whose gradient a batch norm after them removes (see `Params::redundant`):
    /// tiny by construction, reported once as `redundant`, never as vanishing or dead.
    redundant: Vec<bool>,
    redundant_reported: Vec<bool>,
    nonfinite: Option<NonfiniteEpisode>,
    /// Last step an event of (kind, layer) was emitted, for the cool-down.
    last_emitted: HashMap<(EventKind, Option<usize>), u64>,
    /// Conditions in force, with the step they started.
    active: HashMap<(EventKind, Option<usize>), Issue>,
    clipped: u64,
    skipped: u64,
    window_steps: u64,
    /// The matrices whose spectral radius the reports carry: name and layer.
    matrices: Vec<(String, usize)>,
    /// Each matrix's last finite spectral radius, and the step of its last event.
    radius: Vec<Option<f64>>,
    radius_emitted: Vec<Option<u64>>,
}

impl Diagnoser {
    pub fn new(config: &MonitorSpec, layer_names: Vec<String>) -> Self {
        let n = layer_names.len();
        Self {
            config: config.clone(),
            layer_names,
            norms: VecDeque::with_capacity(NORM_HISTORY),
            layer_norms: vec![VecDeque::new(); n],
            vanishing_streak: vec![Streak::default(); n],
            dead_streak: vec![Streak::default(); n],
            redundant: vec![false; n],
            redundant_reported: vec![false; n],
            nonfinite: None,
            last_emitted: HashMap::new(),
            active: HashMap::new(),
            clipped: 0,
            skipped: 0,
            window_steps: 0,
            matrices: Vec::new(),
            radius: Vec::new(),
            radius_emitted: Vec::new(),
        }
    }

    /// Names the matrices whose spectral radius the reports carry, in their order.
    pub fn set_matrices(&mut self, matrices: &[super::spectral::Matrix]) {
        self.matrices = matrices.iter().map(|m| (m.name.clone(), m.layer)).collect();
        self.radius = vec![None; matrices.len()];
        self.radius_emitted = vec![None; matrices.len()];
    }

    /// Marks the layers (by index) whose gradient a following batch norm removes.
    pub fn with_redundant(mut self, redundant: &[bool]) -> Self {
        for (flag, &r) in self.redundant.iter_mut().zip(redundant) {
            *flag = r;
        }
        self
    }

    /// Looks at one step; returns the events it gives rise to.
    pub fn observe(&mut self, report: &StepReport) -> Vec<Event> {
        let mut events = Vec::new();
        // An overflow of fp16's scaled gradients: the loss scaler skipped the update and
        // said so; its gradients say nothing about the model's.
        if report.overflow {
            return events;
        }
        self.check_nonfinite(report, &mut events);
        let global_spike = self.check_exploding(report, &mut events);
        if let Some(layers) = &report.layers {
            self.check_layer_spikes(report.step, &layers.grad_norm, global_spike, &mut events);
            self.check_layers(report.step, &layers.grad_norm, &layers.zero_frac, &mut events);
        }
        self.summarize_policies(report, &mut events);
        if let Some(radius) = &report.probes.spectral {
            self.check_spectral(report.step, radius, &mut events);
        }
        events
    }

    /// A matrix whose largest singular value crosses 1.0 between two measurements (not
    /// within `cooldown` steps of its last such event, so one hovering at 1.0 is told once).
    fn check_spectral(&mut self, step: u64, radius: &[f64], events: &mut Vec<Event>) {
        for (i, &now) in radius.iter().enumerate().take(self.matrices.len()) {
            if !now.is_finite() {
                continue;
            }
            let before = self.radius[i].replace(now);
            let Some(before) = before else { continue };
            let (up, down) = (before < 1.0 && now >= 1.0, before >= 1.0 && now < 1.0);
            let cooled = self.radius_emitted[i].is_none_or(|at| step.saturating_sub(at) >= self.config.cooldown);
            if !(up || down) || !cooled {
                continue;
            }
            self.radius_emitted[i] = Some(step);
            let (name, layer) = &self.matrices[i];
            let message = if up {
                format!(
                    "{name}: largest singular value rose through 1.0 ({before:.3} → {now:.3}): gradients through \
                     it can now grow from step to step (exploding is possible)"
                )
            } else {
                format!(
                    "{name}: largest singular value fell through 1.0 ({before:.3} → {now:.3}): with a tanh or \
                     sigmoid, gradients through it now shrink at every step (vanishing is certain)"
                )
            };
            events.push(Event {
                step,
                kind: EventKind::SpectralRadius,
                layer: Some(*layer),
                value: Some(now),
                message,
            });
        }
    }

    /// The issues in force now.
    pub fn diagnosis(&self) -> Diagnosis {
        let mut issues: Vec<Issue> = self.active.values().cloned().collect();
        let rank = |kind: EventKind| match kind {
            EventKind::Nonfinite => 0,
            EventKind::Exploding => 1,
            EventKind::Vanishing => 2,
            _ => 3,
        };
        issues.sort_by_key(|i| (rank(i.kind), i.layer, i.since));
        let status = if issues.iter().any(|i| i.kind == EventKind::Nonfinite) {
            DiagnosisStatus::Critical
        } else if issues.is_empty() {
            DiagnosisStatus::Healthy
        } else {
            DiagnosisStatus::Warning
        };
        Diagnosis { status, issues }
    }

    fn layer_name(&self, layer: usize) -> &str {
        self.layer_names.get(layer).map_or("?", String::as_str)
    }

    /// Emits unless the same (kind, layer) was emitted within the cool-down.
    fn emit(&mut self, events: &mut Vec<Event>, event: Event) {
        let key = (event.kind, event.layer);
        let cooling =
            self.last_emitted.get(&key).is_some_and(|&at| event.step < at.saturating_add(self.config.cooldown));
        if !cooling {
            self.last_emitted.insert(key, event.step);
            events.push(event);
        }
    }

    fn set_active(&mut self, kind: EventKind, layer: Option<usize>, step: u64, message: &str, on: bool) {
        let key = (kind, layer);
        if on {
            self.active.entry(key).or_insert_with(|| Issue { kind, layer, since: step, message: message.to_owned() });
        } else {
            self.active.remove(&key);
        }
    }

    fn check_nonfinite(&mut self, report: &StepReport, events: &mut Vec<Event>) {
        let bad_layers: Vec<usize> = report.layers.as_ref().map_or_else(Vec::new, |l| {
            l.nonfinite.iter().enumerate().filter(|(_, n)| **n > 0.0).map(|(i, _)| i).collect()
        });
        let bad = !report.loss.is_finite() || !report.grad_norm.is_finite() || !bad_layers.is_empty();
        if bad {
            let first = bad_layers.first().copied();
            let message = match first {
                Some(layer) => format!(
                    "NaN/Inf gradients in {} layer(s), first {}{}",
                    bad_layers.len(),
                    self.layer_name(layer),
                    if report.skipped { "; update skipped" } else { "" }
                ),
                None => {
                    format!("non-finite loss or gradient norm{}", if report.skipped { "; update skipped" } else { "" })
                }
            };
            let value = report.layers.as_ref().zip(first).map(|(l, i)| l.nonfinite[i]);
            self.emit(
                events,
                Event { step: report.step, kind: EventKind::Nonfinite, layer: first, value, message: message.clone() },
            );
            self.set_active(EventKind::Nonfinite, None, report.step, &message, true);
            let episode = self.nonfinite.get_or_insert(NonfiniteEpisode {
                first: report.step,
                last: report.step,
                steps: 0,
                finite_since: 0,
            });
            episode.last = report.step;
            episode.steps += 1;
            episode.finite_since = 0;
        } else if let Some(episode) = self.nonfinite.as_mut() {
            if episode.finite_since == 0 {
                episode.finite_since = report.step;
            }
            if report.step.saturating_sub(episode.finite_since) + 1 >= self.config.diagnose_window {
                let episode = *episode;
                self.nonfinite = None;
                // A new episode is news, whatever the cool-down.
                self.last_emitted.retain(|(kind, _), _| *kind != EventKind::Nonfinite);
                self.set_active(EventKind::Nonfinite, None, report.step, "", false);
                events.push(Event {
                    step: report.step,
                    kind: EventKind::Recovered,
                    layer: None,
                    value: Some(episode.steps as f64),
                    message: format!(
                        "finite for {} steps: {} non-finite step(s) between steps {} and {}",
                        self.config.diagnose_window, episode.steps, episode.first, episode.last
                    ),
                });
            }
        }
    }

    /// The global rule; returns whether this step's global norm spiked.
    fn check_exploding(&mut self, report: &StepReport, events: &mut Vec<Event>) -> bool {
        let norm = report.grad_norm;
        if !norm.is_finite() {
            return false;
        }
        let mut spiked = false;
        if self.norms.len() >= MIN_HISTORY {
            let median = median(&self.norms);
            let spike = norm > self.config.explode_floor && median > 0.0 && norm > self.config.explode_factor * median;
            spiked = spike;
            if spike {
                let message =
                    format!("gradient norm {norm:.3e} is {:.0}× its recent median {median:.3e}", norm / median);
                self.emit(
                    events,
                    Event {
                        step: report.step,
                        kind: EventKind::Exploding,
                        layer: None,
                        value: Some(norm),
                        message: message.clone(),
                    },
                );
                self.set_active(EventKind::Exploding, None, report.step, &message, true);
            } else if self
                .active
                .get(&(EventKind::Exploding, None))
                .is_some_and(|i| report.step > i.since.saturating_add(self.config.cooldown))
            {
                self.set_active(EventKind::Exploding, None, report.step, "", false);
            }
        }
        if self.norms.len() == NORM_HISTORY {
            self.norms.pop_front();
        }
        self.norms.push_back(norm);
        spiked
    }

    /// The per-layer rule: one layer's norm jumps while the global norm, dominated by
    /// other layers, barely moves. A step whose global norm spiked is reported once, by
    /// the global rule, not again per layer.
    fn check_layer_spikes(&mut self, step: u64, grad_norm: &[f64], global_spike: bool, events: &mut Vec<Event>) {
        let (floor, factor) = (self.config.explode_floor, self.config.explode_factor);
        for (layer, &norm) in grad_norm.iter().enumerate().take(self.layer_norms.len()) {
            if !norm.is_finite() {
                continue;
            }
            let key = (EventKind::Exploding, Some(layer));
            let history = &self.layer_norms[layer];
            // The median only for norms above the floor: most layers, most steps, cost nothing.
            let median = if norm > floor && history.len() >= MIN_HISTORY { median(history) } else { f64::INFINITY };
            let spike = median > 0.0 && norm > factor * median;
            if spike && !global_spike {
                let message = format!(
                    "{}: gradient norm {norm:.3e} is {:.0}× its recent median {median:.3e}",
                    self.layer_name(layer),
                    norm / median
                );
                self.emit(
                    events,
                    Event {
                        step,
                        kind: EventKind::Exploding,
                        layer: Some(layer),
                        value: Some(norm),
                        message: message.clone(),
                    },
                );
                self.set_active(EventKind::Exploding, Some(layer), step, &message, true);
            } else if !spike
                && self.active.get(&key).is_some_and(|i| step > i.since.saturating_add(self.config.cooldown))
            {
                self.set_active(EventKind::Exploding, Some(layer), step, "", false);
            }
            let history = &mut self.layer_norms[layer];
            if history.len() == NORM_HISTORY {
                history.pop_front();
            }
            history.push_back(norm);
        }
    }

    fn check_layers(&mut self, step: u64, grad_norm: &[f64], zero_frac: &[f64], events: &mut Vec<Event>) {
        let largest = grad_norm.iter().copied().filter(|n| n.is_finite()).fold(0.0, f64::max);
        let window = self.config.diagnose_window;
        for layer in 0..grad_norm.len().min(self.vanishing_streak.len()) {
            let norm = grad_norm[layer];
            let vanishing = largest > 0.0 && norm.is_finite() && norm < self.config.vanish_ratio * largest;
            let dead = zero_frac[layer] >= self.config.dead_frac;
            if self.redundant[layer] {
                self.check_redundant(step, layer, norm, largest, vanishing || dead, events);
                continue;
            }
            self.vanishing_streak[layer].observe(vanishing, step);
            let streak = self.vanishing_streak[layer];
            if streak.count == window {
                let message = format!(
                    "{}: gradient norm {norm:.2e} is {:.1} orders of magnitude below the largest layer's ({largest:.2e}) for {window} recorded steps",
                    self.layer_name(layer),
                    (largest / norm.max(f64::MIN_POSITIVE)).log10()
                );
                self.emit(
                    events,
                    Event {
                        step,
                        kind: EventKind::Vanishing,
                        layer: Some(layer),
                        value: Some(norm),
                        message: message.clone(),
                    },
                );
                self.set_active(EventKind::Vanishing, Some(layer), streak.since, &message, true);
            } else if !vanishing {
                self.set_active(EventKind::Vanishing, Some(layer), step, "", false);
            }

            self.dead_streak[layer].observe(dead, step);
            let streak = self.dead_streak[layer];
            if streak.count == window {
                let message = format!(
                    "{}: {:.1}% of gradient entries are exactly zero for {window} recorded steps (dead units)",
                    self.layer_name(layer),
                    100.0 * zero_frac[layer]
                );
                self.emit(
                    events,
                    Event {
                        step,
                        kind: EventKind::Dead,
                        layer: Some(layer),
                        value: Some(zero_frac[layer]),
                        message: message.clone(),
                    },
                );
                self.set_active(EventKind::Dead, Some(layer), streak.since, &message, true);
            } else if !dead {
                self.set_active(EventKind::Dead, Some(layer), step, "", false);
            }
        }
    }

    /// A redundant layer whose gradient stays (near) zero for the window is told about
    /// once, as information: it is what the architecture implies, not a training problem.
    fn check_redundant(
        &mut self,
        step: u64,
        layer: usize,
        norm: f64,
        largest: f64,
        tiny: bool,
        events: &mut Vec<Event>,
    ) {
        self.vanishing_streak[layer].observe(tiny, step);
        if self.redundant_reported[layer] || self.vanishing_streak[layer].count < self.config.diagnose_window {
            return;
        }
        self.redundant_reported[layer] = true;
        events.push(Event {
            step,
            kind: EventKind::Redundant,
            layer: Some(layer),
            value: Some(norm),
            message: format!(
                "{}: gradient norm {norm:.2e} (largest layer {largest:.2e}) because the batch norm after it subtracts \
                 every per-feature shift: a redundant parameter, not a vanishing gradient",
                self.layer_name(layer)
            ),
        });
    }

    fn summarize_policies(&mut self, report: &StepReport, events: &mut Vec<Event>) {
        self.window_steps += 1;
        self.clipped += u64::from(report.clip_coef < CLIPPED_BELOW);
        self.skipped += u64::from(report.skipped);
        if self.window_steps < self.config.summary_every {
            return;
        }
        let n = self.window_steps;
        for (kind, count) in [(EventKind::Clipped, self.clipped), (EventKind::Skipped, self.skipped)] {
            if count > 0 {
                let fraction = count as f64 / n as f64;
                let message = format!("{kind} {count} of the last {n} steps ({:.0}%)", 100.0 * fraction);
                events.push(Event { step: report.step, kind, layer: None, value: Some(fraction), message });
            }
        }
        (self.window_steps, self.clipped, self.skipped) = (0, 0, 0);
    }
}

/// The upper median, by selection rather than a sort (it runs per layer).
fn median(values: &VecDeque<f64>) -> f64 {
    let mut values: Vec<f64> = values.iter().copied().collect();
    let middle = values.len() / 2;
    *values.select_nth_unstable_by(middle, f64::total_cmp).1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::LayerStats;

    fn report(step: u64, grad_norm: f64, layer_norms: &[f64]) -> StepReport {
        StepReport {
            step,
            loss: 1.0,
            grad_norm,
            grad_norm_clipped: grad_norm.min(1.0),
            clip_coef: (1.0 / grad_norm).min(1.0),
            lr: 0.1,
            skipped: false,
            loss_scale: None,
            overflow: false,
            probes: Default::default(),
            seconds: 0.01,
            layers: Some(LayerStats {
                grad_norm: layer_norms.to_vec(),
                zero_frac: vec![0.0; layer_norms.len()],
                nonfinite: vec![0.0; layer_norms.len()],
                ..LayerStats::default()
            }),
        }
    }

    fn diagnoser() -> Diagnoser {
        Diagnoser::new(&MonitorSpec::default(), vec!["first".into(), "last".into()])
    }

    #[test]
    fn a_spectral_radius_crossing_1_is_an_event_once_per_cooldown() {
        let mut d = Diagnoser::new(&MonitorSpec { cooldown: 100, ..MonitorSpec::default() }, vec!["w".into()]);
        let matrix = |name: &str| super::super::spectral::Matrix { layer: 0, name: name.into(), block: 0, side: 4 };
        d.set_matrices(&[matrix("rnn.weight_hh_l0"), matrix("other")]);
        let mut crossings = Vec::new();
        for (step, radius) in
            [(1, [0.9, 1.5]), (11, [0.99, 1.4]), (21, [1.02, 1.3]), (31, [0.98, 0.8]), (201, [1.1, 0.7])]
        {
            let mut r = report(step, 1.0, &[1.0]);
            r.probes.spectral = Some(radius.to_vec());
            for e in d.observe(&r).into_iter().filter(|e| e.kind == EventKind::SpectralRadius) {
                crossings.push((e.step, e.message.split(':').next().unwrap_or_default().to_owned(), e.value));
            }
        }
        let expected = [
            (21, "rnn.weight_hh_l0".to_owned(), Some(1.02)),
            (31, "other".to_owned(), Some(0.8)),
            // Step 31's fall of the first matrix came within the cool-down of its rise.
            (201, "rnn.weight_hh_l0".to_owned(), Some(1.1)),
        ];
        assert_eq!(crossings, expected);
    }

    #[test]
    fn a_spike_is_reported_once() {
        let mut d = diagnoser();
        let mut events = Vec::new();
        for step in 1..=50 {
            let norm = if step == 30 || step == 31 { 100.0 } else { 0.5 };
            events.extend(d.observe(&report(step, norm, &[0.3, 0.4])));
        }
        let exploding: Vec<_> = events.iter().filter(|e| e.kind == EventKind::Exploding).collect();
        assert_eq!(exploding.len(), 1, "{events:?}");
        assert_eq!(exploding[0].step, 30);
        assert_eq!(exploding[0].value, Some(100.0));
    }

    /// A cool-down too long to add to a step means "never again", not "no cool-down".
    #[test]
    fn an_endless_cooldown_reports_once() {
        let config = MonitorSpec { cooldown: u64::MAX, ..MonitorSpec::default() };
        let mut d = Diagnoser::new(&config, vec!["first".into(), "last".into()]);
        let mut events = Vec::new();
        for step in 1..=200 {
            let norm = if step % 40 == 0 { 100.0 } else { 0.5 };
            events.extend(d.observe(&report(step, norm, &[0.3, 0.4])));
        }
        let exploding: Vec<u64> = events.iter().filter(|e| e.kind == EventKind::Exploding).map(|e| e.step).collect();
        assert_eq!(exploding, [40], "{events:?}");
        let mut bad = report(201, f64::NAN, &[0.3, 0.4]);
        bad.loss = f64::NAN;
        assert_eq!(d.observe(&bad).len(), 1);
        assert!(d.observe(&report(202, f64::NAN, &[0.3, 0.4])).is_empty(), "the same kind is not repeated");
    }

    #[test]
    fn a_layer_that_stays_tiny_is_vanishing_after_the_window() {
        let mut d = diagnoser();
        let window = MonitorSpec::default().diagnose_window;
        let mut events = Vec::new();
        for step in 1..=window + 20 {
            events.extend(d.observe(&report(step, 1.0, &[1e-9, 1.0])));
        }
        let vanishing: Vec<_> = events.iter().filter(|e| e.kind == EventKind::Vanishing).collect();
        assert_eq!(vanishing.len(), 1);
        assert_eq!((vanishing[0].step, vanishing[0].layer), (window, Some(0)));
        let diagnosis = d.diagnosis();
        assert_eq!(diagnosis.status, DiagnosisStatus::Warning);
        assert_eq!(diagnosis.issues[0].kind, EventKind::Vanishing);
        assert_eq!(diagnosis.issues[0].since, 1);
        // It recovers: the issue clears.
        d.observe(&report(window + 21, 1.0, &[0.5, 1.0]));
        assert_eq!(d.diagnosis().status, DiagnosisStatus::Healthy);
    }

    #[test]
    fn nan_is_critical_and_clipping_is_summarized() {
        let mut d = diagnoser();
        let mut events = Vec::new();
        for step in 1..=100 {
            let norm = if step % 4 == 0 { 2.0 } else { 0.5 };
            events.extend(d.observe(&report(step, norm, &[0.3, 0.4])));
        }
        let clipped: Vec<_> = events.iter().filter(|e| e.kind == EventKind::Clipped).collect();
        assert_eq!(clipped.len(), 1);
        assert_eq!(clipped[0].value, Some(0.25));
        let mut bad = report(101, f64::NAN, &[0.3, 0.4]);
        bad.skipped = true;
        let events = d.observe(&bad);
        assert_eq!(events[0].kind, EventKind::Nonfinite);
        assert_eq!(d.diagnosis().status, DiagnosisStatus::Critical);
    }

    fn kinds(events: &[Event], kind: &str) -> Vec<(u64, Option<usize>)> {
        events.iter().filter(|e| e.kind.as_str() == kind).map(|e| (e.step, e.layer)).collect()
    }

    #[test]
    fn nonfinite_clears_after_a_healthy_window_and_the_events_keep_it() {
        let mut d = diagnoser();
        let window = MonitorSpec::default().diagnose_window;
        let mut events = Vec::new();
        for step in 1..=20 {
            events.extend(d.observe(&report(step, 0.5, &[0.3, 0.4])));
        }
        let mut bad = report(21, f64::NAN, &[f64::NAN, 0.4]);
        bad.layers.as_mut().expect("layers").nonfinite[0] = 3.0;
        bad.skipped = true;
        events.extend(d.observe(&bad));
        assert_eq!(d.diagnosis().status, DiagnosisStatus::Critical);
        for step in 22..21 + window {
            events.extend(d.observe(&report(step, 0.5, &[0.3, 0.4])));
        }
        assert_eq!(d.diagnosis().status, DiagnosisStatus::Critical, "one step short of the window");
        events.extend(d.observe(&report(21 + window, 0.5, &[0.3, 0.4])));
        assert_eq!(d.diagnosis().status, DiagnosisStatus::Healthy, "{:?}", d.diagnosis());
        assert_eq!(kinds(&events, "nonfinite"), [(21, Some(0))]);
        let recovered: Vec<&Event> = events.iter().filter(|e| e.kind == EventKind::Recovered).collect();
        assert_eq!(recovered.len(), 1);
        assert_eq!((recovered[0].step, recovered[0].value), (21 + window, Some(1.0)));
        // A later episode is critical again, and reported although the cool-down of the
        // first has not run out.
        let again = d.observe(&report(22 + window, f64::INFINITY, &[0.3, 0.4]));
        assert_eq!(kinds(&again, "nonfinite"), [(22 + window, None)]);
        assert_eq!(d.diagnosis().status, DiagnosisStatus::Critical);
    }

    #[test]
    fn tiny_norms_jumping_below_the_floor_are_not_exploding() {
        let mut d = diagnoser();
        let mut events = Vec::new();
        for step in 1..=50 {
            let norm = if step == 30 { 5e-3 } else { 1e-4 };
            events.extend(d.observe(&report(step, norm, &[norm * 0.6, norm * 0.8])));
        }
        assert!(kinds(&events, "exploding").is_empty(), "{events:?}");
        assert_eq!(d.diagnosis().status, DiagnosisStatus::Healthy);
        // The same jump above the floor is.
        let config = MonitorSpec { explode_floor: 1e-3, ..MonitorSpec::default() };
        let mut d = Diagnoser::new(&config, vec!["first".into(), "last".into()]);
        let mut events = Vec::new();
        for step in 1..=50 {
            let norm = if step == 30 { 5e-3 } else { 1e-4 };
            events.extend(d.observe(&report(step, norm, &[norm * 0.6, norm * 0.8])));
        }
        assert_eq!(kinds(&events, "exploding"), [(30, None)], "reported once, globally: {events:?}");
    }

    #[test]
    fn one_layer_blowing_up_under_a_dominant_other_is_exploding() {
        let mut d = diagnoser();
        let mut events = Vec::new();
        for step in 1..=50 {
            let small: f64 = if step == 30 { 2.0 } else { 0.01 };
            let layers = [5.0, small];
            let global = (25.0 + small * small).sqrt();
            events.extend(d.observe(&report(step, global, &layers)));
        }
        assert_eq!(kinds(&events, "exploding"), [(30, Some(1))], "{events:?}");
        let diagnosis = d.diagnosis();
        assert_eq!(diagnosis.status, DiagnosisStatus::Warning);
        assert_eq!((diagnosis.issues[0].kind.as_str(), diagnosis.issues[0].layer), ("exploding", Some(1)));
    }

    /// With statistics every 10th step, a condition that began at step 1 began at step 1.
    #[test]
    fn since_is_the_first_step_when_statistics_skip_steps() {
        let config = MonitorSpec { every: 10, ..MonitorSpec::default() };
        let window = config.diagnose_window;
        let mut d = Diagnoser::new(&config, vec!["first".into(), "last".into()]);
        let mut events = Vec::new();
        for step in 1..=window * 10 {
            let mut r = report(step, 1.0, &[1e-9, 1.0]);
            if !config.records(step) {
                r.layers = None;
            }
            events.extend(d.observe(&r));
        }
        assert_eq!(kinds(&events, "vanishing"), [(1 + (window - 1) * 10, Some(0))]);
        assert_eq!(d.diagnosis().issues[0].since, 1);
    }

    #[test]
    fn a_bias_before_batch_norm_is_redundant_not_vanishing() {
        let window = MonitorSpec::default().diagnose_window;
        let mut d = diagnoser().with_redundant(&[true, false]);
        let mut events = Vec::new();
        for step in 1..=window + 20 {
            events.extend(d.observe(&report(step, 1.0, &[1e-9, 1.0])));
        }
        assert!(kinds(&events, "vanishing").is_empty(), "{events:?}");
        assert_eq!(kinds(&events, "redundant"), [(window, Some(0))], "told once");
        assert_eq!(d.diagnosis().status, DiagnosisStatus::Healthy);
        // The same layer without the flag is vanishing.
        let mut d = diagnoser();
        for step in 1..=window {
            d.observe(&report(step, 1.0, &[1e-9, 1.0]));
        }
        assert_eq!(d.diagnosis().issues[0].kind, EventKind::Vanishing);
    }
}
