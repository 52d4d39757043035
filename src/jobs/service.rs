//! What a client may ask of jobs and corpora, with every rule that applies, whoever asks:
//! the HTTP handlers and `gradscope run` both call [`Jobs`]. Reads that change nothing
//! (lists, histories) go to the store directly.

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::Scheduler;
use super::data_dir::{DataDir, UploadFile};
use super::live::LiveMessage;
use crate::metrics::Metrics;
use crate::spec::{ModelKind, ValidSpec};
use crate::store::{Corpus, CorpusDeletion, Dataset, Job, JobStatus, Store, UploadKind, UserModel};
use crate::train::budget::{self, CorpusSize, Estimate, UserSize};
use crate::train::data::{builtin_corpus, vocab_size};
use crate::train::user::{self, Check, Checked, Refusal};

/// Fewest characters a corpus may have: a char LM needs room for a few sequences.
pub const MIN_CORPUS_CHARS: usize = 64;

/// Bounds on submissions, so one request cannot exhaust the machine.
#[derive(Debug, Clone, Copy)]
pub struct JobLimits {
    /// Most jobs waiting in the queue.
    pub max_queued: i64,
    /// Largest model, in parameters.
    pub max_params: u64,
    /// Largest estimated activation memory of one step, in bytes.
    pub max_activation_bytes: u64,
    /// Largest estimated peak memory of one job, in bytes.
    pub max_job_memory: u64,
    /// Largest estimated storage of one job, in bytes.
    pub max_job_disk: u64,
    /// Most jobs one experiment may expand to (cells × seeds).
    pub max_experiment_jobs: u64,
}

impl JobLimits {
    /// No bounds: a job run from the shell is the operator's own choice.
    pub const NONE: Self = Self {
        max_queued: i64::MAX,
        max_params: u64::MAX,
        max_activation_bytes: u64::MAX,
        max_job_memory: u64::MAX,
        max_job_disk: u64::MAX,
        max_experiment_jobs: u64::MAX,
    };
}

/// How many corpora may be kept, and how many bytes they may take together.
#[derive(Debug, Clone, Copy)]
pub struct CorpusLimits {
    pub max_count: i64,
    pub quota_bytes: i64,
}

impl CorpusLimits {
    /// No bounds.
    pub const NONE: Self = Self { max_count: i64::MAX, quota_bytes: i64::MAX };
}

/// Why a request was refused. Each maps to one HTTP answer (`api::ApiError`).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No such job or corpus (the name says which).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A field of the request is invalid, or asks for more than the limits allow.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The job's state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// `max_queued` jobs already wait.
    #[error("{max_queued} jobs are already queued (this service's limit): wait for some to start")]
    QueueFull { max_queued: i64 },
    /// An experiment's jobs would take the queue past `max_queued`.
    #[error(
        "the experiment's {jobs} jobs do not fit in the queue (at most {max_queued} jobs wait at once): wait for some to start, or use fewer values or seeds"
    )]
    QueueRoom { jobs: usize, max_queued: i64 },
    /// The corpus would exceed the count or byte quota.
    #[error("{0}")]
    CorpusQuota(String),
    /// The model or data set would exceed the count or byte quota of its kind.
    #[error("{0}")]
    UploadQuota(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ServiceError {
    fn invalid(field: &str, message: String) -> Self {
        Self::Invalid { field: field.to_owned(), message }
    }
}

impl From<Refusal> for ServiceError {
    fn from(Refusal { field, message }: Refusal) -> Self {
        Self::Invalid { field, message }
    }
}

/// Runs a check of an uploaded data set on a blocking thread (file parsing must not hold
/// the async workers; no LibTorch, which runs where [`crate::jobs::Scheduler::check`]
/// puts it); its refusal is the client's error.
async fn off_runtime<T: Send + 'static>(
    check: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, ServiceError> {
    Ok(tokio::task::spawn_blocking(check).await.map_err(anyhow::Error::from)??)
}

/// A corpus a spec names, found.
#[derive(Debug, Clone)]
pub enum FoundCorpus {
    /// Shipped with the binary (`builtin:<name>`).
    Builtin(&'static str),
    /// Uploaded: its row (the text is in the data folder).
    Uploaded(Corpus),
}

impl FoundCorpus {
    /// Its vocabulary and length, for the budget (characters are at most bytes).
    pub fn size(&self) -> CorpusSize {
        match self {
            Self::Builtin(text) => CorpusSize::of_text(text),
            Self::Uploaded(c) => CorpusSize { vocab: c.vocab_size as u64, chars: c.bytes as u64 },
        }
    }

    /// Its text.
    pub async fn text(&self, data: &DataDir) -> anyhow::Result<String> {
        match self {
            Self::Builtin(text) => Ok((*text).to_owned()),
            Self::Uploaded(c) => data.read_corpus(Uuid::parse_str(&c.id)?).await,
        }
    }
}

/// Corpus `name`, built in or uploaded; `None` when there is no such corpus (any more).
pub(crate) async fn find_corpus(store: &Store, name: &str) -> anyhow::Result<Option<FoundCorpus>> {
    if let Some(text) = builtin_corpus(name) {
        return Ok(Some(FoundCorpus::Builtin(text)));
    }
    Ok(store.corpus(name).await?.map(FoundCorpus::Uploaded))
}

/// Submitting, cancelling, resuming and deleting jobs; uploading and deleting corpora.
#[derive(Debug, Clone)]
pub struct Jobs {
    pub(super) store: Store,
    pub(super) scheduler: Scheduler,
    data: DataDir,
    metrics: Arc<Metrics>,
    pub(super) limits: JobLimits,
    corpora: CorpusLimits,
    models: CorpusLimits,
    datasets: CorpusLimits,
}

impl Jobs {
    pub fn new(
        store: Store,
        scheduler: Scheduler,
        data: DataDir,
        metrics: Arc<Metrics>,
        limits: JobLimits,
        corpora: CorpusLimits,
    ) -> Self {
        Self {
            store,
            scheduler,
            data,
            metrics,
            limits,
            corpora,
            models: CorpusLimits::NONE,
            datasets: CorpusLimits::NONE,
        }
    }

    /// With at most `models` uploaded models and `datasets` data sets (count and bytes).
    pub fn with_upload_limits(self, models: CorpusLimits, datasets: CorpusLimits) -> Self {
        Self { models, datasets, ..self }
    }

    /// The limits on uploads of `kind`.
    pub fn upload_limits(&self, kind: UploadKind) -> CorpusLimits {
        match kind {
            UploadKind::Model => self.models,
            UploadKind::Dataset => self.datasets,
        }
    }

    /// The data folder.
    pub fn data(&self) -> &DataDir {
        &self.data
    }

    /// The corpus limits.
    pub fn corpus_limits(&self) -> CorpusLimits {
        self.corpora
    }

    /// Job `id`.
    pub async fn get(&self, id: Uuid) -> Result<Job, ServiceError> {
        self.store.job(id).await?.ok_or(ServiceError::NotFound("job"))
    }

    /// The size of the corpus `spec` trains on (zero for generated tasks); invalid
    /// `task.corpus` when there is no such corpus.
    pub async fn corpus_size(&self, spec: &ValidSpec) -> Result<CorpusSize, ServiceError> {
        let Some(name) = spec.task.corpus() else { return Ok(CorpusSize::default()) };
        match find_corpus(&self.store, name).await? {
            Some(corpus) => Ok(corpus.size()),
            None => Err(ServiceError::invalid(
                "task.corpus",
                format!("no corpus {name:?}: use builtin:tiny or an id from POST /api/v1/corpora"),
            )),
        }
    }

    /// Queues a validated spec: its corpus must exist, its estimated cost must fit the
    /// limits and the queue must have room. Wakes the scheduler.
    pub async fn submit(&self, spec: &ValidSpec) -> Result<Job, ServiceError> {
        self.check(spec).await?;
        let max_queued = self.limits.max_queued;
        let job =
            self.store.insert_job_within(spec, max_queued).await?.ok_or(ServiceError::QueueFull { max_queued })?;
        self.scheduler.notify_queued();
        tracing::info!(job = %job.id, name = %job.name, "job queued");
        Ok(job)
    }

    /// What a spec must pass before it queues: its corpus (or model and data set) must
    /// exist, its estimated cost must fit the limits, and its layer patterns must choose
    /// some layer.
    pub(super) async fn check(&self, spec: &ValidSpec) -> Result<(), ServiceError> {
        let estimate = if spec.model.kind == ModelKind::Torchscript {
            budget::estimate_user(spec, self.dry_run(spec).await?)
        } else {
            budget::estimate(spec, self.corpus_size(spec).await?)
        };
        check_budget(spec, &estimate, &self.limits)?;
        self.check_chosen_layers(spec).await
    }

    /// Cancels a queued job at once, or asks a running one to stop before its next step.
    pub async fn cancel(&self, id: Uuid) -> Result<Job, ServiceError> {
        match self.scheduler.cancel(id).await? {
            super::CancelOutcome::Accepted => {}
            super::CancelOutcome::NotFound => return Err(ServiceError::NotFound("job")),
            super::CancelOutcome::AlreadyFinished(status) => {
                return Err(ServiceError::Conflict(format!("the job already ended {}", status.as_str())));
            }
        }
        self.get(id).await
    }

    /// Queues an interrupted, cancelled or failed job again, to continue after its last
    /// checkpoint that the store's history reaches.
    pub async fn resume(&self, id: Uuid) -> Result<Job, ServiceError> {
        let job = self.get(id).await?;
        if !matches!(job.status, JobStatus::Interrupted | JobStatus::Cancelled | JobStatus::Failed) {
            return Err(ServiceError::Conflict(format!(
                "only interrupted, cancelled or failed jobs resume; this one is {}",
                job.status.as_str()
            )));
        }
        if let Some(corpus) = job.spec.task.corpus()
            && find_corpus(&self.store, corpus).await?.is_none()
        {
            return Err(ServiceError::Conflict(format!(
                "its corpus {corpus} has been deleted, so the job cannot resume"
            )));
        }
        if let Some(id) = job.spec.model.id.as_deref()
            && self.store.user_model(id).await?.is_none()
        {
            return Err(ServiceError::Conflict(format!("its model {id} has been deleted, so the job cannot resume")));
        }
        if let Some(id) = job.spec.task.dataset()
            && self.store.dataset(id).await?.is_none()
        {
            return Err(ServiceError::Conflict(format!(
                "its data set {id} has been deleted, so the job cannot resume"
            )));
        }
        let committed = u64::try_from(job.step).unwrap_or(0);
        let Some(step) = self.data.resume_step(job.id, committed).await? else {
            return Err(ServiceError::Conflict("the job has no checkpoint to resume from".to_owned()));
        };
        let max_queued = self.limits.max_queued;
        if !self.store.requeue_to_resume(job.id, i64::try_from(step).map_err(anyhow::Error::from)?, max_queued).await? {
            let now = self.get(job.id).await?;
            if now.status == job.status {
                return Err(ServiceError::QueueFull { max_queued });
            }
            return Err(ServiceError::Conflict("the job changed state; try again".to_owned()));
        }
        self.scheduler.notify_queued();
        tracing::info!(job = %job.id, step, "job queued to resume");
        self.get(job.id).await
    }

    /// Deletes a finished job: its rows, its metrics and its files.
    pub async fn delete(&self, id: Uuid) -> Result<(), ServiceError> {
        let job = self.get(id).await?;
        if !job.status.is_finished() {
            return Err(ServiceError::Conflict(format!("the job is {}: cancel it first", job.status.as_str())));
        }
        if !self.store.delete_finished_job(job.id).await? {
            return Err(ServiceError::NotFound("job"));
        }
        self.metrics.remove_job(job.id, job.spec.model.kind.as_str(), job.spec.task.kind());
        self.data.remove_checkpoints(job.id).await;
        tracing::info!(job = %job.id, "job deleted");
        Ok(())
    }

    /// Follows job `id`'s live feed until the job ends, handing each message to `on`
    /// (steps a slow follower missed are skipped). Returns at once when the job is not
    /// running.
    pub async fn follow(&self, id: Uuid, mut on: impl FnMut(&LiveMessage)) {
        let Some(feed) = self.scheduler.live(id) else { return };
        let mut sub = feed.subscribe();
        drop(feed);
        for shared in sub.backlog.drain(..) {
            on(&shared.message);
        }
        loop {
            match sub.rx.recv().await {
                Ok(shared) => {
                    on(&shared.message);
                    if matches!(shared.message, LiveMessage::Status { .. }) {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Stores an uploaded corpus: UTF-8 text of at least [`MIN_CORPUS_CHARS`] characters,
    /// within the count and byte quota.
    pub async fn upload_corpus(&self, body: Vec<u8>) -> Result<Corpus, ServiceError> {
        // Checking and counting tens of megabytes is CPU work: off the async workers.
        let (body, vocab) = tokio::task::spawn_blocking(move || {
            let text = std::str::from_utf8(&body)
                .map_err(|err| ServiceError::invalid("body", format!("the corpus must be UTF-8 text: {err}")))?;
            let chars = text.chars().count();
            if chars < MIN_CORPUS_CHARS {
                return Err(ServiceError::invalid(
                    "body",
                    format!("at least {MIN_CORPUS_CHARS} characters, got {chars}"),
                ));
            }
            let vocab = vocab_size(text);
            Ok((body, vocab))
        })
        .await
        .map_err(anyhow::Error::from)??;
        let id = Uuid::now_v7();
        let corpus =
            Corpus { id: id.to_string(), bytes: body.len() as i64, vocab_size: vocab as i64, created_at: Utc::now() };
        // The file first, under its fresh id, then the row that makes it visible: the quota
        // statement decides however many uploads race, and a listed corpus always has its
        // file (a delete can never leave an unlisted file behind). A refused or failed
        // insert removes the file again.
        self.data.write_corpus(id, &body).await?;
        let limits = self.corpora;
        let inserted = self.store.insert_corpus_within(&corpus, limits.max_count, limits.quota_bytes).await;
        if !matches!(inserted, Ok(true)) {
            self.data.remove_corpus(id).await;
        }
        if !inserted? {
            let usage = self.store.corpus_usage().await?;
            return Err(ServiceError::CorpusQuota(format!(
                "{} corpora take {} bytes; this service keeps at most {} corpora and {} bytes, and this one has {} bytes: delete some with DELETE /api/v1/corpora/{{id}}",
                usage.count, usage.bytes, limits.max_count, limits.quota_bytes, corpus.bytes
            )));
        }
        tracing::info!(corpus = %corpus.id, bytes = corpus.bytes, "corpus uploaded");
        Ok(corpus)
    }

    /// Deletes an uploaded corpus and its file, unless a queued or running job uses it.
    pub async fn delete_corpus(&self, id: Uuid) -> Result<(), ServiceError> {
        match self.store.delete_corpus(&id.to_string()).await? {
            CorpusDeletion::Deleted => {}
            CorpusDeletion::Missing => return Err(ServiceError::NotFound("corpus")),
            CorpusDeletion::InUse => {
                return Err(ServiceError::Conflict(format!(
                    "corpus {id} is used by a queued or running job: cancel the job or wait for it to finish"
                )));
            }
        }
        self.data.remove_corpus(id).await;
        tracing::info!(corpus = %id, "corpus deleted");
        Ok(())
    }

    /// The uploaded model and data set a `torchscript` spec names (422 on `model.id` or
    /// `task.id` when either is unknown), checked together by a dry run off the async
    /// workers: two samples through the module, the loss and backward.
    async fn dry_run(&self, spec: &ValidSpec) -> Result<UserSize, ServiceError> {
        let (Some(model_id), Some(set_id)) = (spec.model.id.as_deref(), spec.task.dataset()) else {
            return Err(ServiceError::invalid(
                "model.id",
                "a torchscript model needs an id and a dataset task".to_owned(),
            ));
        };
        let (model, set) = (self.find_model(model_id).await?, self.find_dataset(set_id).await?);
        let loss = match &spec.task {
            crate::spec::TaskSpec::Dataset(t) => t.loss,
            _ => {
                return Err(ServiceError::invalid(
                    "task.kind",
                    "a torchscript model trains on a dataset task".to_owned(),
                ));
            }
        };
        let y = set.detail.tensor("y").map(|t| t.dtype.clone()).unwrap_or_default();
        let integer = y.starts_with("int") || y == "uint8";
        match loss {
            crate::spec::Loss::CrossEntropy if y != "int64" => {
                return Err(ServiceError::invalid(
                    "task.loss",
                    format!("cross_entropy needs int64 class ids in y, and y is {y}"),
                ));
            }
            crate::spec::Loss::Mse | crate::spec::Loss::BceWithLogits if integer => {
                return Err(ServiceError::invalid(
                    "task.loss",
                    format!("{} needs float targets in y, and y is {y}", loss.as_str()),
                ));
            }
            _ => {}
        }
        let model_file = self.data.upload(UploadFile::Model, Uuid::parse_str(&model.id).map_err(anyhow::Error::from)?);
        let set_file = self.data.upload(UploadFile::Dataset, Uuid::parse_str(&set.id).map_err(anyhow::Error::from)?);
        let check = Check::DryRun { model: model_file, dataset: set_file, loss };
        let Checked::DryRun(measured) = self.scheduler.check(check).await?? else {
            return Err(anyhow::anyhow!("a dry run answered something else").into());
        };
        Ok(UserSize {
            params: measured.params,
            tensors: measured.tensors,
            input_bytes: measured.input_bytes,
            output_bytes: measured.output_bytes,
            data_bytes: set.bytes as f64,
            val_samples: u64::try_from(set.detail.val_samples).unwrap_or(0),
        })
    }

    /// Refuses `monitor.layers` patterns that choose none of the model's layers: a user
    /// model's names are its upload's parameters; a built-in model's come from a narrow
    /// twin built where LibTorch runs checks.
    async fn check_chosen_layers(&self, spec: &ValidSpec) -> Result<(), ServiceError> {
        if spec.monitor.layers.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = if spec.model.kind == ModelKind::Torchscript {
            let id = spec.model.id.as_deref().unwrap_or_default();
            self.find_model(id).await?.detail.parameters.into_iter().map(|p| p.name).collect()
        } else {
            let model = serde_json::to_string(&spec.model).map_err(anyhow::Error::from)?;
            let check = Check::LayerNames { model, tokens: budget::task_tokens(&spec.task) };
            let Checked::LayerNames(names) = self.scheduler.check(check).await?? else {
                return Err(anyhow::anyhow!("a layer listing answered something else").into());
            };
            names
        };
        if crate::spec::chosen_layers(&spec.monitor.layers, &names).is_empty() {
            let some: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
            return Err(ServiceError::invalid(
                "monitor.layers",
                format!(
                    "the patterns match none of the model's {} layers (they are named like {})",
                    names.len(),
                    some.join(", ")
                ),
            ));
        }
        Ok(())
    }

    async fn find_model(&self, id: &str) -> Result<UserModel, ServiceError> {
        match self.store.user_model(id).await? {
            Some(model) => Ok(model),
            None => {
                Err(ServiceError::invalid("model.id", format!("no model {id:?}: use an id from POST /api/v1/models")))
            }
        }
    }

    async fn find_dataset(&self, id: &str) -> Result<Dataset, ServiceError> {
        match self.store.dataset(id).await? {
            Some(set) => Ok(set),
            None => Err(ServiceError::invalid(
                "task.id",
                format!("no data set {id:?}: use an id from POST /api/v1/datasets"),
            )),
        }
    }

    /// Stores an uploaded TorchScript module once LibTorch has loaded it (in a worker
    /// process, or off the async workers in process) and found trainable float32
    /// parameters, within the models' quota. The file is written under its fresh id first,
    /// for the worker to load, and removed again when the module is refused.
    pub async fn upload_model(&self, body: Vec<u8>) -> Result<UserModel, ServiceError> {
        let id = Uuid::now_v7();
        self.data.write_upload(UploadFile::Model, id, &body).await?;
        let checked = self.scheduler.check(Check::Model { file: self.data.upload(UploadFile::Model, id) }).await;
        let detail = match checked {
            Ok(Ok(Checked::Model(detail))) => detail,
            refused => {
                self.data.remove_upload(UploadFile::Model, id).await;
                return Err(match refused {
                    Ok(Err(refusal)) => refusal.into(),
                    Err(err) => err.into(),
                    Ok(Ok(_)) => anyhow::anyhow!("a model check answered something else").into(),
                });
            }
        };
        let model = UserModel { id: id.to_string(), bytes: body.len() as i64, detail, created_at: Utc::now() };
        let limits = self.models;
        let inserted = self.store.insert_model_within(&model, limits.max_count, limits.quota_bytes).await;
        self.refuse_over_quota(UploadKind::Model, id, inserted, model.bytes).await?;
        tracing::info!(model = %model.id, bytes = model.bytes, params = model.detail.params, "model uploaded");
        Ok(model)
    }

    /// Stores an uploaded safetensors data set once its tensors are checked (off the async
    /// workers), within the data sets' quota.
    pub async fn upload_dataset(&self, body: Vec<u8>) -> Result<Dataset, ServiceError> {
        let (body, detail) = off_runtime(move || user::inspect_dataset(&body).map(|d| (body, d))).await?;
        let id = Uuid::now_v7();
        let set = Dataset { id: id.to_string(), bytes: body.len() as i64, detail, created_at: Utc::now() };
        self.data.write_upload(UploadFile::Dataset, id, &body).await?;
        let limits = self.datasets;
        let inserted = self.store.insert_dataset_within(&set, limits.max_count, limits.quota_bytes).await;
        self.refuse_over_quota(UploadKind::Dataset, id, inserted, set.bytes).await?;
        tracing::info!(dataset = %set.id, bytes = set.bytes, samples = set.detail.samples, "data set uploaded");
        Ok(set)
    }

    /// After an insert within the quota: removes the file again when the row was not
    /// stored, and says why.
    async fn refuse_over_quota(
        &self,
        kind: UploadKind,
        id: Uuid,
        inserted: anyhow::Result<bool>,
        bytes: i64,
    ) -> Result<(), ServiceError> {
        let file = file_kind(kind);
        if !matches!(inserted, Ok(true)) {
            self.data.remove_upload(file, id).await;
        }
        if !inserted? {
            let usage = self.store.upload_usage(kind).await?;
            let limits = self.upload_limits(kind);
            let (what, path) = match kind {
                UploadKind::Model => ("models", "models"),
                UploadKind::Dataset => ("data sets", "datasets"),
            };
            return Err(ServiceError::UploadQuota(format!(
                "{} {what} take {} bytes; this service keeps at most {} {what} and {} bytes, and this one has {bytes} bytes: delete some with DELETE /api/v1/{path}/{{id}}",
                usage.count, usage.bytes, limits.max_count, limits.quota_bytes
            )));
        }
        Ok(())
    }

    /// Deletes an uploaded model or data set and its file, unless a queued or running job
    /// uses it (409). Finished jobs keep their records but can no longer resume.
    pub async fn delete_upload(&self, kind: UploadKind, id: Uuid) -> Result<(), ServiceError> {
        let what = match kind {
            UploadKind::Model => "model",
            UploadKind::Dataset => "data set",
        };
        match self.store.delete_upload(kind, &id.to_string()).await? {
            CorpusDeletion::Deleted => {}
            CorpusDeletion::Missing => {
                return Err(ServiceError::NotFound(if kind == UploadKind::Model { "model" } else { "dataset" }));
            }
            CorpusDeletion::InUse => {
                return Err(ServiceError::Conflict(format!(
                    "{what} {id} is used by a queued or running job: cancel the job or wait for it to finish"
                )));
            }
        }
        self.data.remove_upload(file_kind(kind), id).await;
        tracing::info!(upload = %id, "{what} deleted");
        Ok(())
    }
}

/// Refuses a spec whose model, step, peak memory or storage would not fit `limits`,
/// naming the field that drives the cost most.
fn check_budget(spec: &ValidSpec, estimate: &Estimate, limits: &JobLimits) -> Result<(), ServiceError> {
    if estimate.params > limits.max_params {
        return Err(ServiceError::invalid(
            "model",
            format!(
                "about {} parameters, above this service's limit of {}: use fewer or narrower layers",
                estimate.params, limits.max_params
            ),
        ));
    }
    if estimate.activation_bytes > limits.max_activation_bytes {
        return Err(ServiceError::invalid(
            "batch_size",
            format!(
                "one step needs about {} MiB of activations, above this service's limit of {} MiB: use a smaller batch, shorter sequences or a smaller model",
                estimate.activation_bytes >> 20,
                limits.max_activation_bytes >> 20
            ),
        ));
    }
    let memory = estimate.memory.total();
    if memory > limits.max_job_memory {
        let (field, advice) = estimate.memory.driver(spec);
        return Err(ServiceError::invalid(
            field,
            format!(
                "the job would need about {} MiB of memory, above this service's limit of {} MiB; {field} costs the most: {advice}",
                memory >> 20,
                limits.max_job_memory >> 20
            ),
        ));
    }
    let stored = estimate.disk.records(spec.monitor.every);
    if stored > limits.max_job_disk {
        let (field, remedy) = match estimate.disk.smallest_every(limits.max_job_disk) {
            Some(every) => {
                ("monitor.every", format!("record statistics less often: monitor.every {every} or more fits"))
            }
            None if estimate.disk.records(0).saturating_sub(estimate.disk.probes as u64) <= limits.max_job_disk => (
                "monitor.time_every",
                "the temporal gradient profiles and spectral radii alone do not fit: record them less often \
                 (monitor.time_every, monitor.spectral_every)"
                    .to_owned(),
            ),
            None => {
                ("steps", "even without per-layer statistics the step records do not fit: use fewer steps".to_owned())
            }
        };
        let histogram =
            if field == "monitor.every" && spec.monitor.histogram { ", or turn monitor.histogram off" } else { "" };
        return Err(ServiceError::invalid(
            field,
            format!(
                "the job would store about {} MiB of records, above this service's limit of {} MiB: {remedy}{histogram}",
                stored >> 20,
                limits.max_job_disk >> 20
            ),
        ));
    }
    Ok(())
}

fn file_kind(kind: UploadKind) -> UploadFile {
    match kind {
        UploadKind::Model => UploadFile::Model,
        UploadKind::Dataset => UploadFile::Dataset,
    }
}
