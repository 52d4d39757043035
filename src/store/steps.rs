//! Per-step records: written in batches, read back as columns.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Store;
use super::downsample::keep_extremes;
use super::jobs::finite;
use crate::train::diagnose::Diagnosis;
use crate::train::{Event, StepReport};

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
pub(super) const STORED_BYTES_SQL: &str = "
    (SELECT COALESCE(SUM(length(job_id) + 56), 0) FROM steps WHERE job_id = ?)
    + (SELECT COALESCE(SUM(length(job_id) + 8 + length(grad_norm) + length(grad_max) + length(grad_mean)
        + length(grad_std) + length(zero_frac) + length(nonfinite) + length(weight_norm) + length(update_ratio)
        + COALESCE(length(hist), 0)), 0) FROM layer_stats WHERE job_id = ?)
    + (SELECT COALESCE(SUM(length(job_id) + 32 + length(CAST(kind AS BLOB)) + length(CAST(message AS BLOB))), 0)
        FROM events WHERE job_id = ?)";

/// Points a step query answers with when it does not say.
pub const DEFAULT_MAX_POINTS: usize = 5_000;
/// The most points a step query may ask for.
pub const MAX_MAX_POINTS: usize = 100_000;

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

    /// The steps of job `id` from `from` to `to` (inclusive), downsampled to at most `max_points`.
    pub async fn steps(&self, id: Uuid, from: i64, to: i64, max_points: usize) -> anyhow::Result<StepColumns> {
        let rows = sqlx::query(
            "SELECT step, loss, grad_norm, grad_norm_clipped, clip_coef, lr, skipped
             FROM steps WHERE job_id = ? AND step BETWEEN ? AND ? ORDER BY step",
        )
        .bind(id.to_string())
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
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
        let keep = keep_extremes(all.step.len(), max_points, &[&|i| all.loss[i], &|i| all.grad_norm[i]]);
        if keep.len() == all.step.len() {
            return Ok(all);
        }
        Ok(StepColumns {
            step: keep.iter().map(|&i| all.step[i]).collect(),
            loss: keep.iter().map(|&i| all.loss[i]).collect(),
            grad_norm: keep.iter().map(|&i| all.grad_norm[i]).collect(),
            grad_norm_clipped: keep.iter().map(|&i| all.grad_norm_clipped[i]).collect(),
            clip_coef: keep.iter().map(|&i| all.clip_coef[i]).collect(),
            lr: keep.iter().map(|&i| all.lr[i]).collect(),
            skipped: keep.iter().map(|&i| all.skipped[i]).collect(),
            eval: all.eval,
        })
    }

    /// The validation passes between `from` and `to`, from their events.
    async fn evals(&self, id: Uuid, from: i64, to: i64) -> anyhow::Result<EvalColumns> {
        let rows = sqlx::query(
            "SELECT step, kind, value FROM events
             WHERE job_id = ? AND step BETWEEN ? AND ? AND kind LIKE 'validation%' ORDER BY step, seq",
        )
        .bind(id.to_string())
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let mut eval = EvalColumns::default();
        for row in &rows {
            let (step, kind, value): (i64, String, Option<f64>) =
                (row.try_get("step")?, row.try_get("kind")?, row.try_get("value")?);
            if kind == "validation" {
                eval.step.push(step);
                eval.loss.push(value);
                eval.value.push(None);
            } else if eval.step.last() == Some(&step)
                && let Some(last) = eval.value.last_mut()
            {
                eval.metric = Some(kind.trim_start_matches("validation_").to_owned());
                *last = value;
            }
        }
        Ok(eval)
    }
}
