//! An experiment's results: each job's final figures, and per cell their mean and
//! standard deviation over the seeds, divergence and solved rates, the median step at
//! which the threshold was first met, and the training rate. Plain arithmetic over what
//! the store returns; served as JSON and as CSV.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::spec::{CellInfo, Threshold, ThresholdMetric};
use crate::store::{Job, JobHistory, JobStatus};

/// A figure over a cell's seeds: the mean and the sample standard deviation (divisor
/// n − 1, as NumPy's `std(ddof=1)`) of its finite values, and how many there were.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Spread {
    /// `null` when no seed has a value.
    pub mean: Option<f64>,
    /// `null` with fewer than two values.
    pub std: Option<f64>,
    pub n: usize,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = Option<f64>>) -> Self {
        let xs: Vec<f64> = values.into_iter().flatten().filter(|x| x.is_finite()).collect();
        let n = xs.len();
        if n == 0 {
            return Self::default();
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
        Self { mean: Some(mean), std, n }
    }
}

/// One job's final figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobResult {
    pub id: Uuid,
    pub cell: usize,
    pub seed: u64,
    pub status: JobStatus,
    /// Steps done.
    pub step: i64,
    /// The last training loss (`null` when it was not finite, or before the first step).
    pub train_loss: Option<f64>,
    /// The last validation loss.
    pub val_loss: Option<f64>,
    /// The last validation metric (accuracy for the generated tasks).
    pub val_metric: Option<f64>,
    /// The first step at which the experiment's threshold was met.
    pub reached_at: Option<i64>,
    /// Steps since it started (or resumed) over the time from then to its end.
    pub steps_per_second: Option<f64>,
    /// Ended `succeeded` or `diverged`: the runs the rates count.
    pub completed: bool,
    /// Ended `diverged`, or succeeded with a final training loss that is not finite.
    pub diverged: bool,
    /// Completed without diverging, its final value meeting the threshold (`null` when the
    /// experiment states none).
    pub solved: Option<bool>,
}

impl JobResult {
    pub fn new(job: &Job, history: JobHistory, threshold: Option<&Threshold>) -> Self {
        let completed = matches!(job.status, JobStatus::Succeeded | JobStatus::Diverged);
        let diverged = job.status == JobStatus::Diverged
            || (job.status == JobStatus::Succeeded && job.step > 0 && job.loss.is_none_or(|l| !l.is_finite()));
        let steps_per_second = match (job.started_at, job.finished_at) {
            (Some(start), Some(end)) if job.status.is_finished() => {
                let seconds = (end - start).as_seconds_f64();
                let steps = job.step - job.resumed_from.unwrap_or(0);
                (seconds > 0.0 && steps > 0).then(|| steps as f64 / seconds)
            }
            _ => None,
        };
        let solved = threshold.map(|t| {
            let last = match t.metric {
                ThresholdMetric::Loss => job.loss,
                ThresholdMetric::ValLoss => history.val_loss,
                ThresholdMetric::ValMetric => history.val_metric,
            };
            completed && !diverged && t.met(last)
        });
        Self {
            id: job.id,
            cell: job.cell.and_then(|c| usize::try_from(c).ok()).unwrap_or_default(),
            seed: job.spec.seed,
            status: job.status,
            step: job.step,
            train_loss: job.loss.filter(|l| l.is_finite()),
            val_loss: history.val_loss,
            val_metric: history.val_metric,
            reached_at: history.reached_at,
            steps_per_second,
            completed,
            diverged,
            solved,
        }
    }
}

/// One cell's figures over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CellResult {
    pub cell: usize,
    /// Each axis's label for this cell's value, in axis order.
    pub labels: Vec<String>,
    pub values: Vec<Value>,
    /// Its jobs, whatever their state.
    pub jobs: usize,
    /// Those that ended `succeeded` or `diverged`: the rates' denominator.
    pub completed: usize,
    /// The final training loss, over the completed runs that did not diverge (a diverged
    /// run's last finite loss says only how far it blew up: its divergence is counted in
    /// `divergence_rate` instead).
    pub train_loss: Spread,
    /// The last validation loss, over the same runs.
    pub val_loss: Spread,
    /// The last validation metric, over the same runs.
    pub val_metric: Spread,
    /// Diverged runs over completed runs (`null` before any completed).
    pub divergence_rate: Option<f64>,
    /// Solved runs over completed runs (`null` without a threshold or a completed run).
    pub solved_rate: Option<f64>,
    /// The median over the completed runs that met the threshold of the step where each
    /// first met it (the mean of the middle two for an even count).
    pub steps_to_threshold: Option<f64>,
    /// How many completed runs met the threshold at some step.
    pub reached: usize,
    /// Training rate, over the completed runs.
    pub steps_per_second: Spread,
}

/// Each cell's figures, from its jobs' results (jobs of cells not in `cells` are left out).
pub fn cell_results(cells: &[CellInfo], jobs: &[JobResult], threshold: Option<&Threshold>) -> Vec<CellResult> {
    cells
        .iter()
        .map(|cell| {
            let all: Vec<&JobResult> = jobs.iter().filter(|j| j.cell == cell.index).collect();
            let done: Vec<&JobResult> = all.iter().copied().filter(|j| j.completed).collect();
            let kept: Vec<&JobResult> = done.iter().copied().filter(|j| !j.diverged).collect();
            let rate = |count: usize| (!done.is_empty()).then(|| count as f64 / done.len() as f64);
            let mut reached: Vec<f64> = done.iter().filter_map(|j| j.reached_at).map(|s| s as f64).collect();
            reached.sort_by(f64::total_cmp);
            CellResult {
                cell: cell.index,
                labels: cell.labels.clone(),
                values: cell.values.clone(),
                jobs: all.len(),
                completed: done.len(),
                train_loss: Spread::of(kept.iter().map(|j| j.train_loss)),
                val_loss: Spread::of(kept.iter().map(|j| j.val_loss)),
                val_metric: Spread::of(kept.iter().map(|j| j.val_metric)),
                divergence_rate: rate(done.iter().filter(|j| j.diverged).count()),
                solved_rate: threshold.and_then(|_| rate(done.iter().filter(|j| j.solved == Some(true)).count())),
                steps_to_threshold: median(&reached),
                reached: reached.len(),
                steps_per_second: Spread::of(done.iter().map(|j| j.steps_per_second)),
            }
        })
        .collect()
}

/// The median of sorted `xs`.
fn median(xs: &[f64]) -> Option<f64> {
    let n = xs.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(xs[n / 2]),
        _ => Some((xs[n / 2 - 1] + xs[n / 2]) / 2.0),
    }
}

/// The CSV header's figure columns, after `cell` and one column per axis.
pub const CSV_FIGURES: [&str; 14] = [
    "jobs",
    "completed",
    "train_loss_mean",
    "train_loss_std",
    "val_loss_mean",
    "val_loss_std",
    "val_metric_mean",
    "val_metric_std",
    "divergence_rate",
    "solved_rate",
    "steps_to_threshold",
    "reached",
    "steps_per_second_mean",
    "steps_per_second_std",
];

/// The cells as CSV (RFC 4180, CRLF line ends): a header of `cell`, the axes' paths and
/// [`CSV_FIGURES`], then one row per cell with each axis's label; an empty field where a
/// figure has no value.
pub fn csv(axes: &[String], cells: &[CellResult]) -> String {
    let mut out = String::new();
    let header: Vec<String> = std::iter::once("cell".to_owned())
        .chain(axes.iter().map(|a| field(a)))
        .chain(CSV_FIGURES.map(String::from))
        .collect();
    out.push_str(&header.join(","));
    out.push_str("\r\n");
    let num = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for c in cells {
        let mut row = vec![c.cell.to_string()];
        row.extend(c.labels.iter().map(|l| field(l)));
        row.extend([c.jobs.to_string(), c.completed.to_string()]);
        for s in [c.train_loss, c.val_loss, c.val_metric] {
            row.extend([num(s.mean), num(s.std)]);
        }
        row.extend([num(c.divergence_rate), num(c.solved_rate), num(c.steps_to_threshold), c.reached.to_string()]);
        row.extend([num(c.steps_per_second.mean), num(c.steps_per_second.std)]);
        out.push_str(&row.join(","));
        out.push_str("\r\n");
    }
    out
}

/// A text field of the CSV: quoted when it holds a comma, a quote or a line break, and
/// kept from being read as a formula by a spreadsheet (a leading `=`, `+`, `-` or `@`
/// on something that is not a number gets a `'`).
fn field(text: &str) -> String {
    let formula = text.starts_with(['=', '+', '-', '@']) && text.parse::<f64>().is_err();
    let text = if formula { format!("'{text}") } else { text.to_owned() };
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_use_the_sample_deviation_of_the_finite_values() {
        let s = Spread::of([Some(1.0), Some(2.0), None, Some(f64::NAN), Some(4.0)]);
        assert_eq!(s.n, 3);
        assert!((s.mean.expect("mean") - 7.0 / 3.0).abs() < 1e-12);
        // NumPy: np.std([1, 2, 4], ddof=1) = 1.5275252316519468
        assert!((s.std.expect("std") - 1.527_525_231_651_946_8).abs() < 1e-12);
        assert_eq!(Spread::of([Some(3.0)]), Spread { mean: Some(3.0), std: None, n: 1 });
        assert_eq!(Spread::of([None]), Spread::default());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[5.0]), Some(5.0));
        assert_eq!(median(&[1.0, 3.0, 10.0, 20.0]), Some(6.5));
    }

    #[test]
    fn csv_fields_are_quoted_and_kept_from_formulas() {
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(field("-0.5"), "-0.5");
        let cell = CellResult {
            cell: 0,
            labels: vec!["clip, 1".to_owned()],
            values: vec![],
            jobs: 2,
            completed: 1,
            train_loss: Spread { mean: Some(0.5), std: None, n: 1 },
            val_loss: Spread::default(),
            val_metric: Spread::default(),
            divergence_rate: Some(0.0),
            solved_rate: None,
            steps_to_threshold: None,
            reached: 0,
            steps_per_second: Spread::default(),
        };
        let text = csv(&["policy.grad".to_owned()], &[cell]);
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0].split(',').count(), 2 + CSV_FIGURES.len());
        assert_eq!(lines[1], "0,\"clip, 1\",2,1,0.5,,,,,,0,,,0,,");
        assert_eq!(lines[2], "");
    }
}
