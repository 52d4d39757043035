//! Per-step records: written in batches, read back as columns.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Store;
#[cfg(doc)]
use super::downsample::keep_extremes;
use super::jobs::finite;
use crate::train::diagnose::Diagnosis;
use crate::train::{Event, StepReport};
use crate::vocab::{EventKind, Statistic};

/// What a running job reported since the last write.
#[derive(Debug, Default)]
pub struct Progress<'a> {
    pub steps: &'a [StepReport],
    pub events: &'a [Event],
    /// The latest diagnosis, when it changed.
    pub diagnosis: Option<&'a Diagnosis>,
    /// Step reports the bounded queue had to drop since the last write.
    pub dropped: u64,
}

/// Per-step scalars as columns: the i-th entry of every array belongs to `step[i]`.
/// Non-finite values are `null`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct StepColumns {
    pub step: Vec<i64>,
    pub loss: Vec<Option<f64>>,
    pub grad_norm: Vec<Option<f64>>,
    pub grad_norm_clipped: Vec<Option<f64>>,
    pub clip_coef: Vec<Option<f64>>,
    pub lr: Vec<f64>,
    pub skipped: Vec<bool>,
    /// Validation passes in the range (never downsampled: they are few), from the
    /// job's `validation` events.
    pub eval: EvalColumns,
}

/// Validation results as columns.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct EvalColumns {
    pub step: Vec<i64>,
    /// The task's loss on its held-out data.
    pub loss: Vec<Option<f64>>,
    /// `accuracy` or `metric`, when the task reports one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    pub value: Vec<Option<f64>>,
}

/// `stored_bytes` counts every stored number (integer, float or flag) as this many bytes,
/// text and blobs at their length.
pub(super) const NUMBER_BYTES: usize = 8;
/// Numbers in a `steps` row: step, loss, the two norms, clip coefficient, rate, skipped.
const STEP_NUMBERS: usize = 7;

/// A job's `stored_bytes` recounted from its rows (binds the job id three times), for
/// when rows are removed.
pub(super) fn stored_bytes_sql() -> String {
    let stat_lengths: Vec<String> = Statistic::ALL.iter().map(|s| format!("length({s})")).collect();
    format!(
        "(SELECT COALESCE(SUM(length(job_id) + 56), 0) FROM steps WHERE job_id = ?)
        + (SELECT COALESCE(SUM(length(job_id) + 8 + {} + COALESCE(length(hist), 0)), 0)
            FROM layer_stats WHERE job_id = ?)
        + (SELECT COALESCE(SUM(length(job_id) + 32 + length(CAST(kind AS BLOB)) + length(CAST(message AS BLOB))), 0)
            FROM events WHERE job_id = ?)",
        stat_lengths.join(" + ")
    )
}

/// Points a step query answers with when it does not say.
pub const DEFAULT_MAX_POINTS: usize = 5_000;
/// The most points a step query may ask for.
pub const MAX_MAX_POINTS: usize = 100_000;
/// Rows a thinned step bucket keeps at most: the minimum and maximum of the loss and of the
/// gradient norm, and the first non-finite row.
const EXTREMES_PER_BUCKET: usize = 5;

impl Store {
    /// Appends what a job reported since the last call, moves the job's progress to the
    /// last step, and adds the bytes written to the job's `stored_bytes`, in one
    /// transaction.
    pub async fn record_progress(&self, id: Uuid, progress: &Progress<'_>) -> anyhow::Result<()> {
        let job_id = id.to_string();
        let mut tx = self.pool.begin().await?;
        let mut written = 0;
        for s in progress.steps {
            sqlx::query(
                "INSERT INTO steps (job_id, step, loss, grad_norm, grad_norm_clipped, clip_coef, lr, skipped)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&job_id)
            .bind(i64::try_from(s.step)?)
            .bind(finite(s.loss))
            .bind(finite(s.grad_norm))
            .bind(finite(s.grad_norm_clipped))
            .bind(finite(s.clip_coef))
            .bind(s.lr)
            .bind(s.skipped)
            .execute(&mut *tx)
            .await?;
            written += job_id.len() + STEP_NUMBERS * NUMBER_BYTES;
        }
        written += Self::insert_layer_stats(&mut tx, &job_id, progress.steps).await?;
        written += Self::insert_events(&mut tx, &job_id, progress.events).await?;
        if written > 0 {
            sqlx::query("UPDATE jobs SET stored_bytes = stored_bytes + ? WHERE id = ?")
                .bind(i64::try_from(written)?)
                .bind(&job_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(last) = progress.steps.last() {
            let last_loss = progress.steps.iter().rev().find_map(|s| finite(s.loss));
            sqlx::query("UPDATE jobs SET step = ?, loss = COALESCE(?, loss) WHERE id = ?")
                .bind(i64::try_from(last.step)?)
                .bind(last_loss)
                .bind(&job_id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(diagnosis) = progress.diagnosis {
            sqlx::query("UPDATE jobs SET diagnosis = ? WHERE id = ?")
                .bind(serde_json::to_string(diagnosis)?)
                .bind(&job_id)
                .execute(&mut *tx)
                .await?;
        }
        if progress.dropped > 0 {
            sqlx::query("UPDATE jobs SET dropped_reports = dropped_reports + ? WHERE id = ?")
                .bind(i64::try_from(progress.dropped)?)
                .bind(&job_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The steps of job `id` from `from` to `to` (inclusive), downsampled to at most
    /// `max_points`. Long ranges are thinned in SQL, so a query holds what it answers and
    /// never every row of a long job: the range is cut into buckets of consecutive rows
    /// and each keeps the rows with the smallest and largest loss and gradient norm and its
    /// first non-finite row (the rule of [`keep_extremes`]).
    pub async fn steps(&self, id: Uuid, from: i64, to: i64, max_points: usize) -> anyhow::Result<StepColumns> {
        let job_id = id.to_string();
        // The count and the rows from one snapshot: a running job appends meanwhile.
        let mut tx = self.pool.begin().await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM steps WHERE job_id = ? AND step BETWEEN ? AND ?")
            .bind(&job_id)
            .bind(from)
            .bind(to)
            .fetch_one(&mut *tx)
            .await?;
        let count = usize::try_from(count).unwrap_or(0);
        let rows = if count <= max_points {
            sqlx::query(
                "SELECT step, loss, grad_norm, grad_norm_clipped, clip_coef, lr, skipped
                 FROM steps WHERE job_id = ? AND step BETWEEN ? AND ? ORDER BY step",
            )
            .bind(&job_id)
            .bind(from)
            .bind(to)
            .fetch_all(&mut *tx)
            .await?
        } else {
            // Two series (loss, grad_norm), a minimum and a maximum each, plus a non-finite row.
            // Row r (1-based) of `count` falls in bucket b when b·count/buckets < r ≤
            // (b+1)·count/buckets, rounded down as in `keep_extremes`: b = ⌊(r·buckets − 1)/count⌋.
            let buckets = i64::try_from((max_points / EXTREMES_PER_BUCKET).max(1))?;
            sqlx::query(
                "WITH numbered AS (
                     SELECT step, loss, grad_norm, grad_norm_clipped, clip_coef, lr, skipped,
                            (ROW_NUMBER() OVER (ORDER BY step) * ? - 1) / ? AS bucket
                     FROM steps WHERE job_id = ? AND step BETWEEN ? AND ?
                 ), ranked AS (
                     SELECT *,
                         ROW_NUMBER() OVER (PARTITION BY bucket ORDER BY loss IS NULL, loss, step) AS loss_min,
                         ROW_NUMBER() OVER (PARTITION BY bucket ORDER BY loss IS NULL, loss DESC, step) AS loss_max,
                         ROW_NUMBER() OVER (PARTITION BY bucket ORDER BY grad_norm IS NULL, grad_norm, step) AS norm_min,
                         ROW_NUMBER() OVER (PARTITION BY bucket ORDER BY grad_norm IS NULL, grad_norm DESC, step) AS norm_max,
                         ROW_NUMBER() OVER (PARTITION BY bucket
                             ORDER BY (loss IS NULL OR grad_norm IS NULL) DESC, step) AS first_bad
                     FROM numbered
                 )
                 SELECT step, loss, grad_norm, grad_norm_clipped, clip_coef, lr, skipped FROM ranked
                 WHERE (loss_min = 1 AND loss IS NOT NULL) OR (loss_max = 1 AND loss IS NOT NULL)
                    OR (norm_min = 1 AND grad_norm IS NOT NULL) OR (norm_max = 1 AND grad_norm IS NOT NULL)
                    OR (first_bad = 1 AND (loss IS NULL OR grad_norm IS NULL))
                 ORDER BY step",
            )
            .bind(buckets)
            .bind(i64::try_from(count)?)
            .bind(&job_id)
            .bind(from)
            .bind(to)
            .fetch_all(&mut *tx)
            .await?
        };
        tx.commit().await?;
        let mut all = StepColumns::default();
        for row in &rows {
            all.step.push(row.try_get("step")?);
            all.loss.push(row.try_get("loss")?);
            all.grad_norm.push(row.try_get("grad_norm")?);
            all.grad_norm_clipped.push(row.try_get("grad_norm_clipped")?);
            all.clip_coef.push(row.try_get("clip_coef")?);
            all.lr.push(row.try_get("lr")?);
            all.skipped.push(row.try_get("skipped")?);
        }
        all.eval = self.evals(id, from, to).await?;
        Ok(all)
    }

    /// The validation passes between `from` and `to`, from their events.
    async fn evals(&self, id: Uuid, from: i64, to: i64) -> anyhow::Result<EvalColumns> {
        let [loss_kind, accuracy, metric] = EventKind::VALIDATION;
        let rows = sqlx::query(
            "SELECT step, kind, value FROM events
             WHERE job_id = ? AND step BETWEEN ? AND ? AND kind IN (?, ?, ?) ORDER BY step, seq",
        )
        .bind(id.to_string())
        .bind(from)
        .bind(to)
        .bind(loss_kind.as_str())
        .bind(accuracy.as_str())
        .bind(metric.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut eval = EvalColumns::default();
        for row in &rows {
            let (step, kind, value): (i64, &str, Option<f64>) =
                (row.try_get("step")?, row.try_get("kind")?, row.try_get("value")?);
            let kind: EventKind = kind.parse()?;
            if kind == EventKind::Validation {
                eval.step.push(step);
                eval.loss.push(value);
                eval.value.push(None);
            } else if eval.step.last() == Some(&step)
                && let Some(last) = eval.value.last_mut()
            {
                eval.metric = kind.validation_metric().map(str::to_owned);
                *last = value;
            }
        }
        Ok(eval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::downsample::keep_extremes;

    fn report(step: u64, loss: f64, grad_norm: f64) -> StepReport {
        StepReport {
            step,
            loss,
            grad_norm,
            grad_norm_clipped: grad_norm.min(1.0),
            clip_coef: 1.0,
            lr: 1e-3,
            skipped: !loss.is_finite(),
            layers: None,
            seconds: 0.01,
        }
    }

    /// The database's thinning keeps exactly the rows the in-memory rule keeps, non-finite
    /// rows, spikes and ties included.
    #[tokio::test]
    async fn thinning_in_sql_keeps_what_the_rule_keeps() {
        let dir = tempfile::TempDir::new().expect("dir");
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("db.sqlite").display())).await.expect("db");
        store.migrate().await.expect("migrate");
        let spec = serde_json::from_str(r#"{"task":{"kind":"classification"},"model":{"kind":"mlp"}}"#).expect("spec");
        let job = store.insert_job(&spec).await.expect("job");
        let n = 2_345_u64;
        let reports: Vec<StepReport> = (1..=n)
            .map(|s| {
                let loss = match s {
                    777 | 1_500 => f64::NAN,
                    1_501 => f64::INFINITY,
                    _ => 2.0 + ((s * 7919) % 101) as f64 / 100.0,
                };
                let norm = if s == 2_000 { 1e6 } else { ((s * 104_729) % 37) as f64 };
                report(s, loss, norm)
            })
            .collect();
        store.record_progress(job.id, &Progress { steps: &reports, ..Progress::default() }).await.expect("write");
        for max_points in [10, 55, 500, 2_344] {
            let thin = store.steps(job.id, 0, i64::MAX, max_points).await.expect("steps");
            let finite = |x: f64| x.is_finite().then_some(x);
            let loss = |i: usize| finite(reports[i].loss);
            let norm = |i: usize| finite(reports[i].grad_norm);
            let expected: Vec<i64> =
                keep_extremes(reports.len(), max_points, &[&loss, &norm]).iter().map(|&i| i as i64 + 1).collect();
            assert_eq!(thin.step, expected, "max_points={max_points}");
            assert!(thin.step.len() <= max_points);
            assert_eq!(thin.loss.len(), thin.step.len());
        }
        let thin = store.steps(job.id, 0, i64::MAX, 10).await.expect("steps");
        assert!(thin.step.contains(&777) && thin.step.contains(&2_000), "{:?}", thin.step);
        // A range that fits is answered whole.
        let whole = store.steps(job.id, 100, 199, 100).await.expect("steps");
        assert_eq!(whole.step, (100..=199).collect::<Vec<i64>>());
    }
}
