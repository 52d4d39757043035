//! Jobs: insert, claim, progress, finish, list, delete.

use super::db::Row;
use chrono::{DateTime, Utc};
use serde::Serialize;
use strum::{IntoStaticStr, VariantArray};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Store;
use super::db::{Backend, WriteLock};
use crate::spec::{JobSpec, ValidSpec};
use crate::train::LayerInfo;
use crate::train::diagnose::Diagnosis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema, IntoStaticStr, VariantArray)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Diverged,
    /// The service stopped (shutdown or crash) while the job was running.
    Interrupted,
}

impl JobStatus {
    /// Every status, in declaration order.
    pub const ALL: &'static [Self] = <Self as VariantArray>::VARIANTS;

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|status| status.as_str() == s)
    }

    /// Finished jobs never run again.
    pub fn is_finished(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

/// A job as clients see it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct Job {
    pub id: Uuid,
    pub name: String,
    pub status: JobStatus,
    #[schema(value_type = JobSpec)]
    pub spec: ValidSpec,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Steps done so far.
    pub step: i64,
    pub total_steps: i64,
    /// Where it trains (`cpu`, `cuda:0`), once started.
    pub device: Option<String>,
    /// The latest recorded loss.
    pub loss: Option<f64>,
    /// Why it failed or diverged. A job whose worker process died says how, e.g.
    /// `worker killed by signal 6 (SIGABRT); its last output: …` (the last lines of the
    /// worker's stderr), or `worker exited with code N before the job ended`.
    pub error: Option<String>,
    /// The latest diagnosis: healthy, or the vanishing/exploding/dead/non-finite issues in
    /// force, by layer.
    pub diagnosis: Option<Diagnosis>,
    /// Step reports dropped because the store could not keep up (0 in a healthy service).
    pub dropped_reports: i64,
    /// When the job was resumed: the checkpoint step it continued after.
    pub resumed_from: Option<i64>,
    /// Bytes of the records the job has stored: its steps, per-layer statistics and
    /// events, counting text and blobs at their length and every number as 8 bytes. The
    /// database file grows by more (pages, indexes): 1.3 to 2 times this.
    pub stored_bytes: i64,
    /// The experiment the job belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment_id: Option<Uuid>,
    /// Its cell in that experiment (the combination of the axes' values it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<i64>,
    /// The node that runs it, or ran it last (`--node-id`); none before it first starts.
    #[serde(default)]
    pub node_id: Option<String>,
    /// How many times it has started: 1 for a job that ran once, one more for each resume
    /// (by hand, or on another node after its node was lost).
    #[serde(default)]
    pub attempts: i64,
}

pub(super) const JOB_COLUMNS: &str = "id, name, status, spec, created_at, started_at, finished_at, step, total_steps, \
    device, loss, error, diagnosis, dropped_reports, resumed_from, stored_bytes, experiment_id, cell, node_id, attempts";

pub(super) fn job_from_row(row: &Row) -> anyhow::Result<Job> {
    let status: String = row.try_get("status")?;
    let spec: String = row.try_get("spec")?;
    let id: String = row.try_get("id")?;
    Ok(Job {
        id: Uuid::parse_str(&id)?,
        name: row.try_get("name")?,
        status: JobStatus::parse(&status).ok_or_else(|| anyhow::anyhow!("unknown job status {status:?}"))?,
        // Read back through the same door it came in by.
        spec: JobSpec::parse(spec.as_bytes())?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        step: row.try_get("step")?,
        total_steps: row.try_get("total_steps")?,
        device: row.try_get("device")?,
        loss: row.try_get("loss")?,
        error: row.try_get("error")?,
        diagnosis: row.try_get::<Option<String>, _>("diagnosis")?.map(|d| serde_json::from_str(&d)).transpose()?,
        dropped_reports: row.try_get("dropped_reports")?,
        resumed_from: row.try_get("resumed_from")?,
        stored_bytes: row.try_get("stored_bytes")?,
        experiment_id: row.try_get::<Option<String>, _>("experiment_id")?.map(|id| Uuid::parse_str(&id)).transpose()?,
        cell: row.try_get("cell")?,
        node_id: row.try_get("node_id")?,
        attempts: row.try_get("attempts")?,
    })
}

/// A new queued job of `spec`, not yet stored.
pub(super) fn queued_job(spec: &ValidSpec) -> anyhow::Result<Job> {
    Ok(Job {
        id: Uuid::now_v7(),
        name: spec.display_name(),
        status: JobStatus::Queued,
        spec: spec.clone(),
        created_at: Utc::now(),
        started_at: None,
        finished_at: None,
        step: 0,
        total_steps: i64::try_from(spec.steps)?,
        device: None,
        loss: None,
        error: None,
        diagnosis: None,
        dropped_reports: 0,
        resumed_from: None,
        stored_bytes: 0,
        experiment_id: None,
        cell: None,
        node_id: None,
        attempts: 0,
    })
}

/// Non-finite floats are stored as NULL: JSON and SQL have no NaN.
pub(super) fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl Job {
    /// The job's lane in round-robin scheduling: its experiment, or `""` for single jobs.
    pub fn lane(&self) -> String {
        self.experiment_id.map(|id| id.to_string()).unwrap_or_default()
    }
}

impl Store {
    /// What a claim sets besides the status and start time: the claiming node, the lease
    /// (from the database's clock), one more attempt, no cancel asked of this run yet.
    /// Binds the node id, then the lease in milliseconds.
    fn claimed(&self) -> String {
        format!(
            "node_id = ?, lease_until = {} + ?, attempts = attempts + 1, cancel_requested = 0",
            self.pool.backend().now_ms()
        )
    }

    /// Asks the node that runs job `id` to cancel it (a cancel sent to another node); false
    /// when the job is not running.
    pub async fn request_cancel(&self, id: Uuid) -> anyhow::Result<bool> {
        let done = self
            .pool
            .query("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'")
            .bind(id.to_string())
            .execute()
            .await?;
        Ok(done > 0)
    }

    /// The running jobs of this node whose cancel another node was asked for.
    pub async fn cancels_requested(&self) -> anyhow::Result<Vec<Uuid>> {
        let rows = self
            .pool
            .query("SELECT id FROM jobs WHERE node_id = ? AND status = 'running' AND cancel_requested = 1 LIMIT 10000")
            .bind(self.node_id())
            .fetch_all()
            .await?;
        rows.iter().map(|row| Ok(Uuid::parse_str(&row.try_get::<String, _>("id")?)?)).collect()
    }

    /// Stores a new queued job.
    pub async fn insert_job(&self, spec: &ValidSpec) -> anyhow::Result<Job> {
        self.insert_job_within(spec, i64::MAX).await?.ok_or_else(|| anyhow::anyhow!("the queue is full"))
    }

    /// Stores a new queued job unless `max_queued` jobs already wait: `None` then. The
    /// count and the insert are one statement (on PostgreSQL under the queue's lock), so
    /// concurrent submissions cannot overshoot.
    pub async fn insert_job_within(&self, spec: &ValidSpec, max_queued: i64) -> anyhow::Result<Option<Job>> {
        let job = queued_job(spec)?;
        let mut tx = self.pool.begin().await?;
        tx.lock(WriteLock::Queue).await?;
        let inserted = tx
            .query(
                "INSERT INTO jobs (id, name, status, spec, created_at, step, total_steps)
             SELECT ?, ?, ?, ?, ?, 0, ? WHERE (SELECT COUNT(*) FROM jobs WHERE status = 'queued') < ?",
            )
            .bind(job.id.to_string())
            .bind(&job.name)
            .bind(job.status.as_str())
            .bind(serde_json::to_string(spec)?)
            .bind(job.created_at)
            .bind(job.total_steps)
            .bind(max_queued)
            .execute()
            .await?;
        tx.commit().await?;
        Ok((inserted == 1).then_some(job))
    }

    pub async fn job(&self, id: Uuid) -> anyhow::Result<Option<Job>> {
        let row = self
            .pool
            .query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional()
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Jobs newest first, optionally only those with `status`.
    pub async fn list_jobs(&self, status: Option<JobStatus>, limit: i64) -> anyhow::Result<Vec<Job>> {
        let rows = match status {
            Some(status) => {
                self.pool
                    .query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE status = ? ORDER BY id DESC LIMIT ?"))
                    .bind(status.as_str())
                    .bind(limit)
                    .fetch_all()
                    .await?
            }
            None => {
                self.pool
                    .query(&format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?"))
                    .bind(limit)
                    .fetch_all()
                    .await?
            }
        };
        rows.iter().map(job_from_row).collect()
    }

    /// One page of the jobs that pass `filter`, in `sort` order, and how many pass it.
    pub async fn list_jobs_page(
        &self,
        filter: &JobFilter,
        sort: JobSort,
        limit: i64,
        offset: i64,
    ) -> anyhow::Result<(Vec<Job>, i64)> {
        let (clause, values) = filter.clause(self.pool.backend());
        let count_sql = format!("SELECT COUNT(*) AS n FROM jobs{clause}");
        let mut count = self.pool.query(&count_sql);
        for value in &values {
            count = count.bind(value.as_str());
        }
        let total: i64 = count.fetch_one().await?.try_get("n")?;
        let column = match sort.key {
            JobSortKey::Created => "id",
            JobSortKey::Name => "lower(name)",
            JobSortKey::Status => "status",
            JobSortKey::Loss => "loss",
            JobSortKey::Step => "step",
        };
        let dir = if sort.descending { "DESC" } else { "ASC" };
        // Jobs without a value (no loss yet) last either way; ties newest first.
        let page_sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs{clause} ORDER BY ({column}) IS NULL, {column} {dir}, id DESC LIMIT ? OFFSET ?"
        );
        let mut page = self.pool.query(&page_sql);
        for value in &values {
            page = page.bind(value.as_str());
        }
        let rows = page.bind(limit).bind(offset).fetch_all().await?;
        Ok((rows.iter().map(job_from_row).collect::<anyhow::Result<_>>()?, total))
    }

    /// How many jobs have each status (statuses with none are left out).
    pub async fn count_jobs(&self) -> anyhow::Result<Vec<(JobStatus, i64)>> {
        let rows = self.pool.query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetch_all().await?;
        rows.iter()
            .filter_map(|row| {
                let status: String = row.try_get("status").ok()?;
                Some(Ok((JobStatus::parse(&status)?, row.try_get("n").ok()?)))
            })
            .collect()
    }

    /// Marks the oldest queued job running and returns it. Concurrent claimers (on
    /// PostgreSQL, several nodes) each get a different job.
    pub async fn claim_next_job(&self) -> anyhow::Result<Option<Job>> {
        let row = self
            .pool
            .query(&format!(
                "UPDATE jobs SET status = 'running', started_at = ?, {CLAIMED}
             WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1{})
               AND status = 'queued'
             RETURNING {JOB_COLUMNS}",
                self.pool.backend().skip_locked(),
                CLAIMED = self.claimed()
            ))
            .bind(Utc::now())
            .bind(&self.node.id)
            .bind(self.node.lease_ms)
            .fetch_optional()
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Marks the next queued job running in round-robin between lanes and returns it: each
    /// experiment is a lane (its id) and single jobs are one more (`""`). The lane after
    /// `after` (in lane order, wrapping round) that has a queued job gives its oldest, so a
    /// big experiment takes turns with single jobs and other experiments instead of
    /// holding every slot until it is done. Concurrent claimers (on PostgreSQL, several
    /// nodes) each get a different job.
    pub async fn claim_next_fair(&self, after: &str) -> anyhow::Result<Option<Job>> {
        let row = self
            .pool
            .query(&format!(
                "UPDATE jobs SET status = 'running', started_at = ?, {CLAIMED}
             WHERE id = (SELECT id FROM jobs WHERE status = 'queued'
                         ORDER BY COALESCE(experiment_id, '') <= ?, COALESCE(experiment_id, ''), id LIMIT 1{})
               AND status = 'queued'
             RETURNING {JOB_COLUMNS}",
                self.pool.backend().skip_locked(),
                CLAIMED = self.claimed()
            ))
            .bind(Utc::now())
            .bind(&self.node.id)
            .bind(self.node.lease_ms)
            .bind(after)
            .fetch_optional()
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Marks queued job `id` running and returns it; `None` if it is not queued.
    pub async fn claim_job(&self, id: Uuid) -> anyhow::Result<Option<Job>> {
        let row = self.pool.query(&format!(
            "UPDATE jobs SET status = 'running', started_at = ?, {CLAIMED} WHERE id = ? AND status = 'queued' RETURNING {JOB_COLUMNS}",
            CLAIMED = self.claimed()
        ))
        .bind(Utc::now())
        .bind(&self.node.id)
        .bind(self.node.lease_ms)
        .bind(id.to_string())
        .fetch_optional()
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Records where a started job trains and what its layers are.
    pub async fn set_job_started(&self, id: Uuid, device: &str, layers: &[LayerInfo]) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        tx.query("UPDATE jobs SET device = ? WHERE id = ?").bind(device).bind(id.to_string()).execute().await?;
        for layer in layers {
            // A resumed job reports its layers again.
            tx.query(
                "INSERT INTO layers (job_id, idx, name, shape, numel) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (job_id, idx) DO UPDATE SET name = excluded.name, shape = excluded.shape,
                     numel = excluded.numel",
            )
            .bind(id.to_string())
            .bind(layer.index as i64)
            .bind(&layer.name)
            .bind(serde_json::to_string(&layer.shape)?)
            .bind(layer.numel)
            .execute()
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn layers(&self, id: Uuid) -> anyhow::Result<Vec<LayerInfo>> {
        let rows = self
            .pool
            .query("SELECT idx, name, shape, numel FROM layers WHERE job_id = ? ORDER BY idx")
            .bind(id.to_string())
            .fetch_all()
            .await?;
        rows.iter()
            .map(|row| {
                let shape: String = row.try_get("shape")?;
                Ok(LayerInfo {
                    index: usize::try_from(row.try_get::<i64, _>("idx")?)?,
                    name: row.try_get("name")?,
                    shape: serde_json::from_str(&shape)?,
                    numel: row.try_get("numel")?,
                })
            })
            .collect()
    }

    /// Ends a job with `status`. Only a job not already finished changes, and only while
    /// this node holds it: a job another node took over (this node's lease had expired)
    /// is that node's to end.
    pub async fn finish_job(&self, id: Uuid, status: JobStatus, error: Option<&str>) -> anyhow::Result<bool> {
        let done = self
            .pool
            .query(
                "UPDATE jobs SET status = ?, error = ?, finished_at = ?, lease_until = NULL
             WHERE id = ? AND status IN ('queued', 'running') AND (node_id IS NULL OR node_id = ?)",
            )
            .bind(status.as_str())
            .bind(error)
            .bind(Utc::now())
            .bind(id.to_string())
            .bind(&self.node.id)
            .execute()
            .await?;
        Ok(done == 1)
    }

    /// Queues an ended job again to continue after `step`, its last checkpoint: what it
    /// recorded after that step is removed (it will be recorded again). False if the job
    /// is not interrupted, cancelled or failed, or when `max_queued` jobs already wait.
    pub async fn requeue_to_resume(&self, id: Uuid, step: i64, max_queued: i64) -> anyhow::Result<bool> {
        self.requeue(id, Some(step), max_queued).await
    }

    /// Queues an ended job again to start afresh (it has no checkpoint to continue
    /// from): everything it recorded is removed. False as for [`Self::requeue_to_resume`].
    pub async fn requeue_from_start(&self, id: Uuid, max_queued: i64) -> anyhow::Result<bool> {
        self.requeue(id, None, max_queued).await
    }

    /// Queues an ended job again, to continue after checkpoint step `resume` or (`None`)
    /// from the start.
    async fn requeue(&self, id: Uuid, resume: Option<i64>, max_queued: i64) -> anyhow::Result<bool> {
        let job_id = id.to_string();
        // Rows after this step go: every row when starting afresh.
        let step = resume.unwrap_or(-1);
        let mut tx = self.pool.begin().await?;
        tx.lock(WriteLock::Queue).await?;
        let done = tx
            .query(
                "UPDATE jobs SET status = 'queued', step = ?, resumed_from = ?, finished_at = NULL, error = NULL,
                 diagnosis = CASE WHEN ? THEN diagnosis ELSE NULL END
             WHERE id = ? AND status IN ('interrupted', 'cancelled', 'failed')
               AND (SELECT COUNT(*) FROM jobs WHERE status = 'queued') < ?",
            )
            .bind(step.max(0))
            .bind(resume)
            .bind(resume.is_some())
            .bind(&job_id)
            .bind(max_queued)
            .execute()
            .await?;
        if done == 0 {
            return Ok(false);
        }
        for table in ["steps", "layer_stats", "events", "probes"] {
            tx.query(&format!("DELETE FROM {table} WHERE job_id = ? AND step > ?"))
                .bind(&job_id)
                .bind(step)
                .execute()
                .await?;
        }
        // Blocks that reach past what is left are rebuilt as the rows arrive again.
        for (table, rows) in [("step_rollups", "steps"), ("layer_rollups", "layer_stats")] {
            tx.query(&format!(
                "DELETE FROM {table} WHERE job_id = ?
                   AND last_n > (SELECT COALESCE(MAX(n), 0) FROM {rows} WHERE job_id = ?)"
            ))
            .bind(&job_id)
            .bind(&job_id)
            .execute()
            .await?;
        }
        tx.query("UPDATE jobs SET loss = (SELECT loss FROM steps WHERE job_id = ? AND step = ?) WHERE id = ?")
            .bind(&job_id)
            .bind(step)
            .bind(&job_id)
            .execute()
            .await?;
        tx.query(&format!(
            "UPDATE jobs SET stored_bytes = ({}) WHERE id = ?",
            super::steps::stored_bytes_sql(tx.backend())
        ))
        .bind(&job_id)
        .bind(&job_id)
        .bind(&job_id)
        .bind(&job_id)
        .bind(&job_id)
        .bind(&job_id)
        .bind(&job_id)
        .execute()
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Cancels a job that has not started. False if it is not queued.
    pub async fn cancel_queued_job(&self, id: Uuid) -> anyhow::Result<bool> {
        let done = self
            .pool
            .query("UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ? AND status = 'queued'")
            .bind(Utc::now())
            .bind(id.to_string())
            .execute()
            .await?;
        Ok(done == 1)
    }

    /// Deletes a finished job with its layers and steps. False if there was none to delete.
    pub async fn delete_finished_job(&self, id: Uuid) -> anyhow::Result<bool> {
        let done = self
            .pool
            .query("DELETE FROM jobs WHERE id = ? AND status NOT IN ('queued', 'running')")
            .bind(id.to_string())
            .execute()
            .await?;
        Ok(done == 1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::store::{Backend, test_store};

    /// Eight claimers at once over 40 queued jobs: every job is claimed, each by one of
    /// them only, and each claimed job is running.
    async fn concurrent_claimers_take_each_job_once(store: &Store) {
        let spec: ValidSpec =
            serde_json::from_str(r#"{"task":{"kind":"classification"},"model":{"kind":"mlp"}}"#).expect("spec");
        let mut queued = HashSet::new();
        for _ in 0..40 {
            queued.insert(store.insert_job(&spec).await.expect("job").id);
        }
        let claimers: Vec<_> = (0..8)
            .map(|c| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    loop {
                        // Half the claimers take the oldest, half take turns between lanes.
                        let job =
                            if c % 2 == 0 { store.claim_next_job().await } else { store.claim_next_fair("").await };
                        match job.expect("claim") {
                            Some(job) => mine.push(job),
                            None => return mine,
                        }
                    }
                })
            })
            .collect();
        let mut claimed = Vec::new();
        for claimer in claimers {
            claimed.extend(claimer.await.expect("claimer"));
        }
        assert!(claimed.iter().all(|job| job.status == JobStatus::Running));
        let ids: Vec<Uuid> = claimed.iter().map(|job| job.id).collect();
        assert_eq!(ids.len(), 40, "claimed {} times for 40 jobs", ids.len());
        assert_eq!(ids.into_iter().collect::<HashSet<_>>(), queued);
        assert_eq!(store.count_jobs().await.expect("count"), vec![(JobStatus::Running, 40)]);
    }

    /// Five jobs, two of them LSTMs: a page of a filtered, sorted listing and its total.
    async fn a_listing_is_filtered_sorted_and_paged(store: &Store) {
        for (name, model) in
            [("Alpha_1", "lstm"), ("beta", "gru"), ("alphabet", "lstm"), ("gamma%", "gru"), ("ALPHA", "gru")]
        {
            let spec: ValidSpec = serde_json::from_value(serde_json::json!({
                "name": name, "task": {"kind": "char_lm"}, "model": {"kind": model}
            }))
            .expect("spec");
            store.insert_job(&spec).await.expect("job");
        }
        let names = |jobs: &[Job]| jobs.iter().map(|j| j.name.clone()).collect::<Vec<_>>();
        let by_name = JobSort { key: JobSortKey::Name, descending: false };
        let filter = JobFilter { name: Some("alpha".into()), ..JobFilter::default() };
        let (page, total) = store.list_jobs_page(&filter, by_name, 2, 1).await.expect("page");
        assert_eq!(total, 3, "any case");
        assert_eq!(names(&page), ["Alpha_1", "alphabet"], "the second and third of ALPHA, Alpha_1, alphabet");
        let filter = JobFilter { model: Some("lstm".into()), ..JobFilter::default() };
        let (page, total) =
            store.list_jobs_page(&filter, JobSort { descending: true, ..by_name }, 10, 0).await.expect("page");
        assert_eq!((names(&page), total), (vec!["alphabet".to_owned(), "Alpha_1".to_owned()], 2));
        // `%` and `_` are matched as themselves.
        for (part, found) in [("a%", vec!["gamma%"]), ("a_", vec!["Alpha_1"]), ("%", vec!["gamma%"])] {
            let filter = JobFilter { name: Some(part.into()), ..JobFilter::default() };
            let (page, _) = store.list_jobs_page(&filter, by_name, 10, 0).await.expect("page");
            assert_eq!(names(&page), found, "{part}");
        }
    }

    #[tokio::test]
    async fn a_listing_is_filtered_sorted_and_paged_on_sqlite() {
        let (store, _dir) = test_store(Backend::Sqlite).await;
        a_listing_is_filtered_sorted_and_paged(&store).await;
    }

    #[tokio::test]
    async fn a_listing_is_filtered_sorted_and_paged_on_postgres() {
        let (store, _db) = test_store(Backend::Postgres).await;
        a_listing_is_filtered_sorted_and_paged(&store).await;
    }

    #[tokio::test]
    async fn concurrent_claimers_take_each_job_once_on_sqlite() {
        let (store, _dir) = test_store(Backend::Sqlite).await;
        concurrent_claimers_take_each_job_once(&store).await;
    }

    #[tokio::test]
    async fn concurrent_claimers_take_each_job_once_on_postgres() {
        let (store, _db) = test_store(Backend::Postgres).await;
        concurrent_claimers_take_each_job_once(&store).await;
    }
}

/// Which jobs a listing keeps: every condition given must hold.
#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    /// Part of the name, in any case.
    pub name: Option<String>,
    /// The model's kind (`spec.model.kind`).
    pub model: Option<String>,
    /// The task's kind (`spec.task.kind`).
    pub task: Option<String>,
}

impl JobFilter {
    /// The `WHERE` clause (empty without a filter) and the values of its `?`s, in order.
    fn clause(&self, backend: Backend) -> (String, Vec<String>) {
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        if let Some(status) = self.status {
            conditions.push("status = ?".to_owned());
            values.push(status.as_str().to_owned());
        }
        if let Some(name) = &self.name {
            let escaped = name.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            conditions.push("lower(name) LIKE lower(?) ESCAPE '\\'".to_owned());
            values.push(format!("%{escaped}%"));
        }
        if let Some(model) = &self.model {
            conditions.push(format!("{} = ?", backend.json_text("spec", &["model", "kind"])));
            values.push(model.clone());
        }
        if let Some(task) = &self.task {
            conditions.push(format!("{} = ?", backend.json_text("spec", &["task", "kind"])));
            values.push(task.clone());
        }
        let clause = if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) };
        (clause, values)
    }
}

/// What a listing is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobSortKey {
    Created,
    Name,
    Status,
    Loss,
    Step,
}

impl JobSortKey {
    pub const ALL: [(&'static str, Self); 5] = [
        ("created", Self::Created),
        ("name", Self::Name),
        ("status", Self::Status),
        ("loss", Self::Loss),
        ("step", Self::Step),
    ];
}

/// A listing's order.
#[derive(Debug, Clone, Copy)]
pub struct JobSort {
    pub key: JobSortKey,
    pub descending: bool,
}
