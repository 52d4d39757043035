//! Experiments as clients see them, and what they may ask of them: submit (every cell
//! checked as a job would be before any job is queued), read with progress, results,
//! cancel and delete, each acting on all of the experiment's jobs.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::results::{CellResult, JobResult, cell_results};
use super::{Jobs, ServiceError};
use crate::spec::{CellInfo, ExperimentSpec, SpecError, Threshold, ValidExperiment};
use crate::store::{Job, JobStatus, StatusCount, StoredExperiment};

/// Where an experiment stands, from its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentStatus {
    /// No job has started yet.
    Queued,
    /// Some jobs have started or ended, some are still queued or running.
    Running,
    /// Every job has ended.
    Finished,
}

/// How far an experiment's jobs have got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExperimentProgress {
    /// Its jobs (cells × seeds, less any deleted one by one).
    pub jobs: i64,
    /// Those that have ended, whatever the outcome.
    pub finished: i64,
    /// Steps done, over all its jobs.
    pub step: i64,
    /// Steps asked for, over all its jobs.
    pub total_steps: i64,
    /// Its jobs by status (statuses with none left out).
    pub by_status: BTreeMap<String, i64>,
}

impl ExperimentProgress {
    fn of(counts: &[StatusCount]) -> Self {
        let mut p = Self::default();
        for c in counts {
            p.jobs += c.jobs;
            p.step += c.step;
            p.total_steps += c.total_steps;
            if c.status.is_finished() {
                p.finished += c.jobs;
            }
            *p.by_status.entry(c.status.as_str().to_owned()).or_default() += c.jobs;
        }
        p
    }

    fn status(&self) -> ExperimentStatus {
        let running = self.by_status.get(JobStatus::Running.as_str()).copied().unwrap_or(0);
        if self.finished == self.jobs {
            ExperimentStatus::Finished
        } else if running > 0 || self.finished > 0 {
            ExperimentStatus::Running
        } else {
            ExperimentStatus::Queued
        }
    }
}

/// One job of an experiment, in brief.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExperimentJob {
    pub id: Uuid,
    pub cell: i64,
    pub seed: u64,
    pub status: JobStatus,
    pub step: i64,
    pub total_steps: i64,
}

/// An experiment: what was asked, its cells and how far its jobs have got.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Experiment {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub status: ExperimentStatus,
    pub progress: ExperimentProgress,
    /// The experiment as submitted.
    pub spec: ExperimentSpec,
    /// Every combination of the axes' values, the first axis changing slowest.
    pub cells: Vec<CellInfo>,
    /// Its jobs, cell by cell (in `GET /api/v1/experiments/{id}`; left out of lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<Vec<ExperimentJob>>,
}

impl Experiment {
    fn new(stored: StoredExperiment, counts: &[StatusCount], jobs: Option<&[Job]>) -> Self {
        let progress = ExperimentProgress::of(counts);
        Self {
            id: stored.id,
            name: stored.name,
            created_at: stored.created_at,
            status: progress.status(),
            progress,
            spec: stored.spec,
            cells: stored.cells,
            jobs: jobs.map(|jobs| {
                jobs.iter()
                    .map(|j| ExperimentJob {
                        id: j.id,
                        cell: j.cell.unwrap_or_default(),
                        seed: j.spec.seed,
                        status: j.status,
                        step: j.step,
                        total_steps: j.total_steps,
                    })
                    .collect()
            }),
        }
    }
}

/// An experiment's results: per cell and per job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExperimentResults {
    pub experiment: Uuid,
    /// The axes' paths, the columns that name each cell.
    pub axes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Threshold>,
    pub cells: Vec<CellResult>,
    /// Each job's own figures, cell by cell.
    pub jobs: Vec<JobResult>,
}

fn counts_of(jobs: &[Job]) -> Vec<StatusCount> {
    let mut counts: Vec<StatusCount> = Vec::new();
    for job in jobs {
        match counts.iter_mut().find(|c| c.status == job.status) {
            Some(c) => {
                c.jobs += 1;
                c.step += job.step;
                c.total_steps += job.total_steps;
            }
            None => {
                counts.push(StatusCount { status: job.status, jobs: 1, step: job.step, total_steps: job.total_steps });
            }
        }
    }
    counts
}

impl Jobs {
    /// Most jobs one experiment may expand to (cells × seeds).
    pub fn max_experiment_jobs(&self) -> u64 {
        self.limits.max_experiment_jobs
    }

    /// Queues every job of an experiment, or none: each distinct cell is checked as a
    /// submitted job is (its corpus, its cost against the limits, its layer patterns),
    /// and the queue must have room for all of them. Wakes the scheduler.
    pub async fn submit_experiment(&self, experiment: &ValidExperiment) -> Result<Experiment, ServiceError> {
        // Seeds change no cost: each cell's first seed stands for the others.
        let mut checked = HashSet::new();
        for (cell, _, spec) in &experiment.jobs {
            if !checked.insert(*cell) {
                continue;
            }
            if let Err(err) = self.check(spec).await {
                return Err(match err {
                    ServiceError::Invalid { field, message } => match experiment.cell_error(*cell, &field, &message) {
                        SpecError::Field { field, message } => ServiceError::Invalid { field, message },
                        SpecError::Syntax(message) => ServiceError::Invalid { field, message },
                        several @ SpecError::Fields(_) => ServiceError::Invalid { field, message: several.to_string() },
                    },
                    other => other,
                });
            }
        }
        let jobs: Vec<(usize, &crate::spec::ValidSpec)> =
            experiment.jobs.iter().map(|(cell, _, spec)| (*cell, spec)).collect();
        let max_queued = self.limits.max_queued;
        // More jobs than the queue can ever hold: waiting would not help (a 429 would say
        // it does).
        if i64::try_from(jobs.len()).unwrap_or(i64::MAX) > max_queued {
            let field = if experiment.spec.axes.is_empty() { "seeds" } else { "axes" };
            return Err(ServiceError::Invalid {
                field: field.to_owned(),
                message: format!(
                    "the experiment has {} jobs and at most {max_queued} may be queued at once (--max-queued)",
                    jobs.len()
                ),
            });
        }
        let Some(stored) = self.store.insert_experiment(&experiment.spec, &experiment.cells, &jobs, max_queued).await?
        else {
            return Err(ServiceError::QueueRoom { jobs: jobs.len(), max_queued });
        };
        self.scheduler.notify_queued();
        tracing::info!(experiment = %stored.id, name = %stored.name, jobs = jobs.len(), "experiment queued");
        self.experiment(stored.id).await
    }

    /// Experiment `id` with its jobs.
    pub async fn experiment(&self, id: Uuid) -> Result<Experiment, ServiceError> {
        let stored = self.store.experiment(id).await?.ok_or(ServiceError::NotFound("experiment"))?;
        let jobs = self.store.experiment_jobs(id).await?;
        Ok(Experiment::new(stored, &counts_of(&jobs), Some(&jobs)))
    }

    /// Experiments newest first, with their progress.
    pub async fn list_experiments(&self, limit: i64) -> Result<Vec<Experiment>, ServiceError> {
        let stored = self.store.list_experiments(limit).await?;
        let ids: Vec<Uuid> = stored.iter().map(|e| e.id).collect();
        let mut progress = self.store.experiment_progress(&ids).await?;
        Ok(stored
            .into_iter()
            .map(|e| {
                let counts = progress.remove(&e.id).unwrap_or_default();
                Experiment::new(e, &counts, None)
            })
            .collect())
    }

    /// Cancels every queued or running job of experiment `id`; a conflict when all have
    /// already ended.
    pub async fn cancel_experiment(&self, id: Uuid) -> Result<Experiment, ServiceError> {
        self.store.experiment(id).await?.ok_or(ServiceError::NotFound("experiment"))?;
        let jobs = self.store.experiment_jobs(id).await?;
        let mut cancelled = 0;
        for job in jobs.iter().filter(|j| !j.status.is_finished()) {
            match self.cancel(job.id).await {
                // Ended or deleted meanwhile: nothing left to cancel.
                Ok(_) => cancelled += 1,
                Err(ServiceError::Conflict(_) | ServiceError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        if cancelled == 0 {
            return Err(ServiceError::Conflict("every job of the experiment has already ended".to_owned()));
        }
        tracing::info!(experiment = %id, cancelled, "experiment cancelled");
        self.experiment(id).await
    }

    /// Deletes experiment `id` and all its jobs with everything they recorded, once every
    /// job has ended (a conflict before).
    pub async fn delete_experiment(&self, id: Uuid) -> Result<(), ServiceError> {
        self.store.experiment(id).await?.ok_or(ServiceError::NotFound("experiment"))?;
        let jobs = self.store.experiment_jobs(id).await?;
        let unfinished = jobs.iter().filter(|j| !j.status.is_finished()).count();
        if unfinished > 0 {
            return Err(ServiceError::Conflict(format!(
                "{unfinished} of its {} jobs are queued or running: cancel it first",
                jobs.len()
            )));
        }
        for job in &jobs {
            match self.delete(job.id).await {
                Ok(()) | Err(ServiceError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        if !self.store.delete_experiment(id).await? {
            return Err(ServiceError::Conflict("the experiment's jobs changed meanwhile; try again".to_owned()));
        }
        tracing::info!(experiment = %id, jobs = jobs.len(), "experiment deleted");
        Ok(())
    }

    /// Experiment `id`'s results, from its jobs' rows and histories.
    pub async fn experiment_results(&self, id: Uuid) -> Result<ExperimentResults, ServiceError> {
        let stored = self.store.experiment(id).await?.ok_or(ServiceError::NotFound("experiment"))?;
        let threshold = stored.spec.threshold;
        let mut results = Vec::new();
        for job in self.store.experiment_jobs(id).await? {
            let history = self.store.job_history(job.id, threshold.as_ref()).await?;
            results.push(JobResult::new(&job, history, threshold.as_ref()));
        }
        Ok(ExperimentResults {
            experiment: stored.id,
            axes: stored.spec.axes.iter().map(|a| a.path.clone()).collect(),
            threshold,
            cells: cell_results(&stored.cells, &results, threshold.as_ref()),
            jobs: results,
        })
    }
}
