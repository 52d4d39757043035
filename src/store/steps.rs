//! Per-step records: written in batches, read back as columns.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use std::collections::HashMap;

use super::Store;
use super::blocks::{
    ROLLUP_NUMBERS, last_row, loose_rows, merge_pieces, read_blocks, row_cells, row_range, store_blocks,
};
use super::db::{Backend, Row, Tx};
#[cfg(doc)]
use super::downsample::keep_extremes;
use super::jobs::finite;
use super::rollup::{self, Cell, Piece, Width};
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
    /// The loss scale each step ran at: `null` for a job without loss scaling (any
    /// precision but fp16).
    pub loss_scale: Vec<Option<f64>>,
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
/// Numbers in a `steps` row: step, its row number, loss, the two norms, clip coefficient,
/// rate, skipped; and the loss scale where there is one.
const STEP_NUMBERS: usize = 8;

/// A job's `stored_bytes` recounted from its rows (binds the job id six times), for
/// when rows are removed.
pub(super) fn stored_bytes_sql(backend: Backend) -> String {
    let stat_lengths: Vec<String> = Statistic::ALL.iter().map(|s| format!("length({s})")).collect();
    let rollup = ROLLUP_NUMBERS * NUMBER_BYTES;
    format!(
        "(SELECT COALESCE(SUM(length(job_id) + {} + CASE WHEN loss_scale IS NULL THEN 0 ELSE {NUMBER_BYTES} END), 0)
            FROM steps WHERE job_id = ?)
        + (SELECT COALESCE(SUM(length(job_id) + 16 + {} + COALESCE(length(hist) + 8, 0)), 0)
            FROM layer_stats WHERE job_id = ?)
        + (SELECT COALESCE(SUM(length(job_id) + 32 + {kind} + {message}), 0)
            FROM events WHERE job_id = ?)
        + (SELECT COALESCE(SUM(length(job_id) + {rollup} + length(cells)), 0) FROM step_rollups WHERE job_id = ?)
        + (SELECT COALESCE(SUM(length(job_id) + {rollup} + length(cells)), 0) FROM layer_rollups WHERE job_id = ?)
        + (SELECT COALESCE(SUM(length(job_id) + {NUMBER_BYTES} + {kind} + length(value)), 0)
            FROM probes WHERE job_id = ?)",
        STEP_NUMBERS * NUMBER_BYTES,
        stat_lengths.join(" + "),
        kind = backend.text_bytes("kind"),
        message = backend.text_bytes("message"),
    )
}

/// Points a step query answers with when it does not say.
pub const DEFAULT_MAX_POINTS: usize = 5_000;
/// The most points a step query may ask for.
pub const MAX_MAX_POINTS: usize = 100_000;
/// Rows a thinned step bucket keeps at most: the minimum and maximum of the loss and of the
/// gradient norm, and the first non-finite row.
const EXTREMES_PER_BUCKET: usize = 5;

/// A `steps` row's cells: the loss and the gradient norm.
fn step_cells(loss: Option<f64>, norm: Option<f64>, n: u64) -> anyhow::Result<Vec<Cell>> {
    let n = u32::try_from(n)?;
    Ok(vec![Cell::of(loss, n), Cell::of(norm, n)])
}

type RawStep = (u64, Option<f64>, Option<f64>);

fn raw_step(row: &Row) -> anyhow::Result<RawStep> {
    Ok((u64::try_from(row.try_get::<i64, _>(0)?)?, row.try_get(1)?, row.try_get(2)?))
}

/// Row number, loss and gradient norm of the job's rows numbered in `ns`.
async fn raw_steps_at(tx: &mut Tx, job_id: &str, ns: &[u64]) -> anyhow::Result<Vec<RawStep>> {
    if ns.is_empty() {
        return Ok(Vec::new());
    }
    let sql =
        format!("SELECT n, loss, grad_norm FROM steps WHERE job_id = ? AND n {}", tx.backend().in_json_integers());
    let rows = tx.query(&sql).bind(job_id).bind(serde_json::to_string(ns)?).fetch_all().await?;
    rows.iter().map(raw_step).collect()
}

impl Store {
    /// Appends what a job reported since the last call, moves the job's progress to the
    /// last step, and adds the bytes written to the job's `stored_bytes`, in one
    /// transaction.
    pub async fn record_progress(&self, id: Uuid, progress: &Progress<'_>) -> anyhow::Result<()> {
        let job_id = id.to_string();
        // Takes the write lock at once: it reads the last row number before it writes, and a
        // read transaction that another writer overtook could not become a write one.
        let mut tx = self.pool.begin_write().await?;
        tx.lock_job(&job_id).await?;
        let mut written = 0;
        let after = last_row(&mut tx, "steps", &job_id).await?;
        let mut n = after;
        let mut cells: HashMap<u64, Vec<Cell>> = HashMap::new();
        for s in progress.steps {
            n += 1;
            let scale = s.loss_scale.and_then(finite);
            tx.query(
                "INSERT INTO steps (job_id, step, n, loss, grad_norm, grad_norm_clipped, clip_coef, lr, skipped, loss_scale)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&job_id)
            .bind(i64::try_from(s.step)?)
            .bind(i64::try_from(n)?)
            .bind(finite(s.loss))
            .bind(finite(s.grad_norm))
            .bind(finite(s.grad_norm_clipped))
            .bind(finite(s.clip_coef))
            .bind(s.lr)
            .bind(s.skipped)
            .bind(scale)
            .execute()
            .await?;
            written += job_id.len() + STEP_NUMBERS * NUMBER_BYTES + scale.map_or(0, |_| NUMBER_BYTES);
            cells.insert(n, step_cells(finite(s.loss), finite(s.grad_norm), n)?);
        }
        if n / rollup::BASE > after / rollup::BASE {
            // The rows of the block this batch completes that earlier batches wrote.
            let start = after - after % rollup::BASE;
            cells.extend(row_cells(&mut tx, "steps", &job_id, (start + 1, after)).await?);
            written += store_blocks(&mut tx, "step_rollups", &job_id, (after, n), Width::F64, &cells).await?;
        }
        written += Self::insert_layer_stats(&mut tx, &job_id, progress.steps).await?;
        written += Self::insert_probes(&mut tx, &job_id, progress.steps).await?;
        written += Self::insert_events(&mut tx, &job_id, progress.events).await?;
        if written > 0 {
            tx.query("UPDATE jobs SET stored_bytes = stored_bytes + ? WHERE id = ?")
                .bind(i64::try_from(written)?)
                .bind(&job_id)
                .execute()
                .await?;
        }
        if let Some(last) = progress.steps.last() {
            let last_loss = progress.steps.iter().rev().find_map(|s| finite(s.loss));
            tx.query("UPDATE jobs SET step = ?, loss = COALESCE(?, loss) WHERE id = ?")
                .bind(i64::try_from(last.step)?)
                .bind(last_loss)
                .bind(&job_id)
                .execute()
                .await?;
        }
        if let Some(diagnosis) = progress.diagnosis {
            tx.query("UPDATE jobs SET diagnosis = ? WHERE id = ?")
                .bind(serde_json::to_string(diagnosis)?)
                .bind(&job_id)
                .execute()
                .await?;
        }
        if progress.dropped > 0 {
            tx.query("UPDATE jobs SET dropped_reports = dropped_reports + ? WHERE id = ?")
                .bind(i64::try_from(progress.dropped)?)
                .bind(&job_id)
                .execute()
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The steps of job `id` from `from` to `to` (inclusive), downsampled to at most
    /// `max_points`. The range is cut into buckets of consecutive rows and each keeps the
    /// rows with the smallest and largest loss and gradient norm and its first non-finite
    /// row (the rule of [`keep_extremes`]). A long range reads the pre-aggregated blocks
    /// that make up each bucket (see [`rollup`]) and the few rows around them, then the
    /// rows it keeps: what it reads follows `max_points`, not the length of the job.
    pub async fn steps(&self, id: Uuid, from: i64, to: i64, max_points: usize) -> anyhow::Result<StepColumns> {
        let job_id = id.to_string();
        // The rows and the blocks from one snapshot: a running job appends meanwhile.
        let mut tx = self.pool.begin().await?;
        let mut all = StepColumns::default();
        let Some((first, last)) = row_range(&mut tx, "steps", &job_id, (from, to)).await? else {
            tx.commit().await?;
            all.eval = self.evals(id, from, to).await?;
            return Ok(all);
        };
        let count = usize::try_from(last - first + 1)?;
        let kept: Vec<u64> = if count <= max_points {
            Vec::new()
        } else {
            // Two series (loss, grad_norm), a minimum and a maximum each, plus a non-finite row.
            let buckets = rollup::buckets(first, last, (max_points / EXTREMES_PER_BUCKET).max(1) as u64);
            let pieces: Vec<Vec<Piece>> = buckets.iter().map(|&(a, b)| rollup::pieces(a, b)).collect();
            let flat: Vec<Piece> = pieces.iter().flatten().copied().collect();
            let blocks = read_blocks(&mut tx, "step_rollups", &job_id, &flat).await?;
            let loose = loose_rows(&flat);
            let mut rows: HashMap<u64, Vec<Cell>> = HashMap::with_capacity(loose.len());
            for (n, loss, norm) in raw_steps_at(&mut tx, &job_id, &loose).await? {
                rows.insert(n, step_cells(loss, norm, n)?);
            }
            let mut keep = Vec::new();
            for (&(a, _), bucket) in buckets.iter().zip(&pieces) {
                let cells = merge_pieces(bucket, (&rows, &[0, 1]), (&blocks, &[0, 1]), Width::F64);
                keep.extend(rollup::kept_rows(u32::try_from(a)?, &cells));
            }
            rollup::spread(keep, max_points).into_iter().map(u64::from).collect()
        };
        let rows = if count <= max_points {
            tx.query(
                "SELECT step, loss, grad_norm, grad_norm_clipped, clip_coef, lr, skipped, loss_scale FROM steps
                 WHERE job_id = ? AND n BETWEEN ? AND ? ORDER BY n",
            )
            .bind(&job_id)
            .bind(i64::try_from(first)?)
            .bind(i64::try_from(last)?)
            .fetch_all()
            .await?
        } else {
            let sql = format!(
                "SELECT step, loss, grad_norm, grad_norm_clipped, clip_coef, lr, skipped, loss_scale FROM steps
                 WHERE job_id = ? AND n {} ORDER BY n",
                tx.backend().in_json_integers()
            );
            tx.query(&sql).bind(&job_id).bind(serde_json::to_string(&kept)?).fetch_all().await?
        };
        tx.commit().await?;
        for row in &rows {
            all.step.push(row.try_get("step")?);
            all.loss.push(row.try_get("loss")?);
            all.grad_norm.push(row.try_get("grad_norm")?);
            all.grad_norm_clipped.push(row.try_get("grad_norm_clipped")?);
            all.clip_coef.push(row.try_get("clip_coef")?);
            all.lr.push(row.try_get("lr")?);
            all.skipped.push(row.try_get("skipped")?);
            all.loss_scale.push(row.try_get("loss_scale")?);
        }
        all.eval = self.evals(id, from, to).await?;
        Ok(all)
    }

    /// The validation passes between `from` and `to`, from their events.
    async fn evals(&self, id: Uuid, from: i64, to: i64) -> anyhow::Result<EvalColumns> {
        let [loss_kind, accuracy, metric] = EventKind::VALIDATION;
        let rows = self
            .pool
            .query(
                "SELECT step, kind, value FROM events
             WHERE job_id = ? AND step BETWEEN ? AND ? AND kind IN (?, ?, ?) ORDER BY step, seq",
            )
            .bind(id.to_string())
            .bind(from)
            .bind(to)
            .bind(loss_kind.as_str())
            .bind(accuracy.as_str())
            .bind(metric.as_str())
            .fetch_all()
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
    use crate::store::test_store;

    fn report(step: u64, loss: f64, grad_norm: f64) -> StepReport {
        StepReport {
            step,
            loss,
            grad_norm,
            grad_norm_clipped: grad_norm.min(1.0),
            clip_coef: 1.0,
            lr: 1e-3,
            skipped: !loss.is_finite(),
            loss_scale: None,
            overflow: false,
            layers: None,
            probes: Default::default(),
            seconds: 0.01,
        }
    }

    /// The database's thinning keeps exactly the rows the in-memory rule keeps, non-finite
    /// rows, spikes and ties included.
    #[tokio::test]
    async fn thinning_in_sql_keeps_what_the_rule_keeps_on_sqlite() {
        let (store, _dir) = test_store(Backend::Sqlite).await;
        thinning_in_sql_keeps_what_the_rule_keeps(&store).await;
    }

    #[tokio::test]
    async fn thinning_in_sql_keeps_what_the_rule_keeps_on_postgres() {
        let (store, _db) = test_store(Backend::Postgres).await;
        thinning_in_sql_keeps_what_the_rule_keeps(&store).await;
    }

    async fn thinning_in_sql_keeps_what_the_rule_keeps(store: &Store) {
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

        // A job stored before the blocks existed gets them at start-up, the same ones.
        let before = store.steps(job.id, 0, i64::MAX, 55).await.expect("steps");
        let blocks = |store: &Store| {
            let pool = store.pool.clone();
            async move {
                let rows = pool
                    .query("SELECT level, block, cells FROM step_rollups WHERE job_id = ? ORDER BY level, block")
                    .bind(job.id.to_string())
                    .fetch_all()
                    .await
                    .expect("blocks");
                rows.iter()
                    .map(|row| {
                        (row.try_get(0).expect("level"), row.try_get(1).expect("block"), row.try_get(2).expect("cells"))
                    })
                    .collect::<Vec<(i64, i64, Vec<u8>)>>()
            }
        };
        let written = blocks(store).await;
        assert_eq!(written.len(), 2_345 / 16 + 2_345 / 256);
        store.pool.query("DELETE FROM step_rollups").execute().await.expect("delete");
        store.migrate().await.expect("migrate again");
        assert_eq!(blocks(store).await, written);
        assert_eq!(store.steps(job.id, 0, i64::MAX, 55).await.expect("steps").step, before.step);
    }
}
