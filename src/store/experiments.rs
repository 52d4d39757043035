//! Experiments: their rows, their jobs (inserted together), their progress, and what
//! each job's history says about the experiment's threshold.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Store;
use super::db::{Row, WriteLock};
use super::jobs::{JOB_COLUMNS, Job, JobStatus, job_from_row, queued_job};
use crate::spec::{CellInfo, ExperimentSpec, Threshold, ThresholdMetric, ValidSpec};
use crate::vocab::EventKind;

/// An experiment as stored.
#[derive(Debug, Clone)]
pub struct StoredExperiment {
    pub id: Uuid,
    pub name: String,
    pub spec: ExperimentSpec,
    pub cells: Vec<CellInfo>,
    pub created_at: DateTime<Utc>,
}

/// How many of an experiment's jobs have one status, and their steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCount {
    pub status: JobStatus,
    pub jobs: i64,
    /// Steps done, summed over these jobs.
    pub step: i64,
    /// Steps asked for, summed over these jobs.
    pub total_steps: i64,
}

/// What a job's history says beyond its row: its last validation pass and when it first
/// met the experiment's threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JobHistory {
    /// The last validation loss (`None` without one, or when it was not finite).
    pub val_loss: Option<f64>,
    /// The last validation metric (accuracy, or the task's other metric).
    pub val_metric: Option<f64>,
    /// The first step whose value met the threshold.
    pub reached_at: Option<i64>,
}

const EXPERIMENT_COLUMNS: &str = "id, name, spec, cells, created_at";

fn experiment_from_row(row: &Row) -> anyhow::Result<StoredExperiment> {
    let id: String = row.try_get("id")?;
    let spec: String = row.try_get("spec")?;
    let cells: String = row.try_get("cells")?;
    Ok(StoredExperiment {
        id: Uuid::parse_str(&id)?,
        name: row.try_get("name")?,
        spec: serde_json::from_str(&spec)?,
        cells: serde_json::from_str(&cells)?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Stores an experiment and its jobs (`(cell, spec)`, queued in this order) in one
    /// transaction, unless the queue would then hold more than `max_queued` jobs: `None`
    /// then, and nothing is stored.
    pub async fn insert_experiment(
        &self,
        spec: &ExperimentSpec,
        cells: &[CellInfo],
        jobs: &[(usize, &ValidSpec)],
        max_queued: i64,
    ) -> anyhow::Result<Option<StoredExperiment>> {
        let experiment = StoredExperiment {
            id: Uuid::now_v7(),
            name: spec.name.trim().to_owned(),
            spec: spec.clone(),
            cells: cells.to_vec(),
            created_at: Utc::now(),
        };
        // The count and the inserts under one write lock: concurrent submissions cannot
        // overshoot the queue.
        let mut tx = self.pool.begin_write().await?;
        tx.lock(WriteLock::Queue).await?;
        let queued: i64 = tx.query("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetch_scalar().await?;
        if queued.saturating_add(i64::try_from(jobs.len())?) > max_queued {
            tx.rollback().await?;
            return Ok(None);
        }
        let id = experiment.id.to_string();
        tx.query("INSERT INTO experiments (id, name, spec, cells, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(&id)
            .bind(&experiment.name)
            .bind(serde_json::to_string(&experiment.spec)?)
            .bind(serde_json::to_string(&experiment.cells)?)
            .bind(experiment.created_at)
            .execute()
            .await?;
        for &(cell, spec) in jobs {
            let job = queued_job(spec)?;
            tx.query(
                "INSERT INTO jobs (id, name, status, spec, created_at, step, total_steps, experiment_id, cell)
                 VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)",
            )
            .bind(job.id.to_string())
            .bind(&job.name)
            .bind(job.status.as_str())
            .bind(serde_json::to_string(spec)?)
            .bind(job.created_at)
            .bind(job.total_steps)
            .bind(&id)
            .bind(i64::try_from(cell)?)
            .execute()
            .await?;
        }
        tx.commit().await?;
        Ok(Some(experiment))
    }

    pub async fn experiment(&self, id: Uuid) -> anyhow::Result<Option<StoredExperiment>> {
        let row = self
            .pool
            .query(&format!("SELECT {EXPERIMENT_COLUMNS} FROM experiments WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional()
            .await?;
        row.as_ref().map(experiment_from_row).transpose()
    }

    /// Experiments newest first, at most `limit`.
    pub async fn list_experiments(&self, limit: i64) -> anyhow::Result<Vec<StoredExperiment>> {
        let rows = self
            .pool
            .query(&format!("SELECT {EXPERIMENT_COLUMNS} FROM experiments ORDER BY id DESC LIMIT ?"))
            .bind(limit)
            .fetch_all()
            .await?;
        rows.iter().map(experiment_from_row).collect()
    }

    /// The jobs of experiment `id`, cell by cell, each cell's in the order they were queued.
    pub async fn experiment_jobs(&self, id: Uuid) -> anyhow::Result<Vec<Job>> {
        let rows = self
            .pool
            .query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE experiment_id = ? ORDER BY cell, id"))
            .bind(id.to_string())
            .fetch_all()
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// How many jobs of each of `ids` have each status (statuses with none left out).
    pub async fn experiment_progress(&self, ids: &[Uuid]) -> anyhow::Result<HashMap<Uuid, Vec<StatusCount>>> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let sql = format!(
            "SELECT experiment_id, status, COUNT(*) AS jobs, CAST(SUM(step) AS BIGINT) AS step,
                 CAST(SUM(total_steps) AS BIGINT) AS total_steps
             FROM jobs WHERE experiment_id {}
             GROUP BY experiment_id, status ORDER BY experiment_id, status",
            self.pool.backend().in_json_strings()
        );
        let rows = self.pool.query(&sql).bind(serde_json::to_string(&ids)?).fetch_all().await?;
        let mut progress: HashMap<Uuid, Vec<StatusCount>> = HashMap::new();
        for row in &rows {
            let id = Uuid::parse_str(row.try_get("experiment_id")?)?;
            let status: &str = row.try_get("status")?;
            let status = JobStatus::parse(status).ok_or_else(|| anyhow::anyhow!("unknown job status {status:?}"))?;
            progress.entry(id).or_default().push(StatusCount {
                status,
                jobs: row.try_get("jobs")?,
                step: row.try_get("step")?,
                total_steps: row.try_get("total_steps")?,
            });
        }
        Ok(progress)
    }

    /// Deletes experiment `id` once it has no jobs left. False if there was none to delete
    /// (or it still has jobs).
    pub async fn delete_experiment(&self, id: Uuid) -> anyhow::Result<bool> {
        let done = self
            .pool
            .query("DELETE FROM experiments WHERE id = ? AND NOT EXISTS (SELECT 1 FROM jobs WHERE experiment_id = ?)")
            .bind(id.to_string())
            .bind(id.to_string())
            .execute()
            .await?;
        Ok(done == 1)
    }

    /// Job `id`'s last validation pass and the first step where `threshold` was met.
    pub async fn job_history(&self, id: Uuid, threshold: Option<&Threshold>) -> anyhow::Result<JobHistory> {
        let job_id = id.to_string();
        let [loss_kind, accuracy, metric] = EventKind::VALIDATION.map(EventKind::as_str);
        let val_loss: Option<Option<f64>> = self
            .pool
            .query("SELECT value FROM events WHERE job_id = ? AND kind = ? ORDER BY seq DESC LIMIT 1")
            .bind(&job_id)
            .bind(loss_kind)
            .fetch_optional_scalar()
            .await?;
        let val_metric: Option<Option<f64>> = self
            .pool
            .query("SELECT value FROM events WHERE job_id = ? AND kind IN (?, ?) ORDER BY seq DESC LIMIT 1")
            .bind(&job_id)
            .bind(accuracy)
            .bind(metric)
            .fetch_optional_scalar()
            .await?;
        let reached_at: Option<i64> = match threshold {
            None => None,
            Some(t) => {
                let (level, compare) = match (t.at_least, t.at_most) {
                    (Some(low), _) => (low, ">="),
                    (None, Some(high)) => (high, "<="),
                    (None, None) => return Err(anyhow::anyhow!("a threshold without a level")),
                };
                let events = "SELECT MIN(step) FROM events WHERE job_id = ? AND value";
                match t.metric {
                    ThresholdMetric::Loss => {
                        // In step order, stopping at the first: the index on (job_id,
                        // step) makes this read up to that row, not the whole history.
                        self.pool
                            .query(&format!(
                                "SELECT step FROM steps WHERE job_id = ? AND loss {compare} ? ORDER BY step LIMIT 1"
                            ))
                            .bind(&job_id)
                            .bind(level)
                            .fetch_optional_scalar()
                            .await?
                    }
                    ThresholdMetric::ValLoss => {
                        self.pool
                            .query(&format!("{events} {compare} ? AND kind = ?"))
                            .bind(&job_id)
                            .bind(level)
                            .bind(loss_kind)
                            .fetch_scalar()
                            .await?
                    }
                    ThresholdMetric::ValMetric => {
                        self.pool
                            .query(&format!("{events} {compare} ? AND kind IN (?, ?)"))
                            .bind(&job_id)
                            .bind(level)
                            .bind(accuracy)
                            .bind(metric)
                            .fetch_scalar()
                            .await?
                    }
                }
            }
        };
        Ok(JobHistory { val_loss: val_loss.flatten(), val_metric: val_metric.flatten(), reached_at })
    }
}
