//! Uploaded TorchScript models and safetensors data sets: metadata here, the files in the
//! data folder. Both kinds keep the same columns, so one set of statements serves both.

use super::db::Row;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::db::WriteLock;
use super::{CorpusDeletion, CorpusUsage, Store};

/// One tensor of a model (a parameter or a buffer) or of a data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TensorInfo {
    /// The module's own name (`blocks.0.attn.qkv.weight`), or the file's (`x`, `y_val`).
    pub name: String,
    /// `float32`, `int64`, …
    pub dtype: String,
    pub shape: Vec<i64>,
    pub numel: i64,
}

/// What checking an uploaded TorchScript module found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelDetail {
    /// Trainable parameters, all of them together.
    pub params: i64,
    /// The trainable parameters in the module's order: a job's layers, by the same names.
    pub parameters: Vec<TensorInfo>,
    /// Parameters that do not require gradients: kept in the module, never trained.
    #[serde(default)]
    pub frozen: Vec<TensorInfo>,
    /// The module's registered buffers (batch norm's `running_mean`, `running_var`,
    /// `num_batches_tracked`; anything `register_buffer` kept), as PyTorch's
    /// `named_buffers()` lists them, read from the saved archive; `null` when the archive
    /// could not be read that way (LibTorch still loaded the module). A job checkpoints
    /// them by saving the whole module.
    pub buffers: Option<Vec<TensorInfo>>,
}

/// An uploaded TorchScript module.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserModel {
    /// Use as `model.id` (with `model.kind` `torchscript`) in a job spec.
    pub id: String,
    pub bytes: i64,
    #[serde(flatten)]
    pub detail: ModelDetail,
    pub created_at: DateTime<Utc>,
}

/// What checking an uploaded data set found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DatasetDetail {
    /// Training samples: the first dimension of `x` and `y`.
    pub samples: i64,
    /// Validation samples (`x_val`, `y_val`); 0 without them.
    pub val_samples: i64,
    /// `x`, `y` and, when present, `x_val`, `y_val`.
    pub tensors: Vec<TensorInfo>,
}

impl DatasetDetail {
    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// An uploaded safetensors data set.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Dataset {
    /// Use as `task.id` (with `task.kind` `dataset`) in a job spec.
    pub id: String,
    pub bytes: i64,
    #[serde(flatten)]
    pub detail: DatasetDetail,
    pub created_at: DateTime<Utc>,
}

/// Which uploads a statement reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadKind {
    Model,
    Dataset,
}

impl UploadKind {
    fn table(self) -> &'static str {
        match self {
            Self::Model => "models",
            Self::Dataset => "datasets",
        }
    }
}

/// One stored upload: its row, with `detail` still JSON.
struct Upload {
    id: String,
    bytes: i64,
    detail: String,
    created_at: DateTime<Utc>,
}

fn from_row(row: &Row) -> anyhow::Result<Upload> {
    Ok(Upload {
        id: row.try_get("id")?,
        bytes: row.try_get("bytes")?,
        detail: row.try_get("detail")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Upload {
    fn model(self) -> anyhow::Result<UserModel> {
        Ok(UserModel {
            id: self.id,
            bytes: self.bytes,
            detail: serde_json::from_str(&self.detail)?,
            created_at: self.created_at,
        })
    }

    fn dataset(self) -> anyhow::Result<Dataset> {
        Ok(Dataset {
            id: self.id,
            bytes: self.bytes,
            detail: serde_json::from_str(&self.detail)?,
            created_at: self.created_at,
        })
    }
}

impl Store {
    /// Stores an upload unless that would make more than `max_count` of its kind or more
    /// than `max_bytes` in all; returns whether it was stored (one statement, as for
    /// corpora, so racing uploads cannot together exceed the quota).
    async fn insert_upload_within(
        &self,
        kind: UploadKind,
        row: (&str, i64, String, DateTime<Utc>),
        max_count: i64,
        max_bytes: i64,
    ) -> anyhow::Result<bool> {
        let table = kind.table();
        let (id, bytes, detail, created_at) = row;
        let mut tx = self.pool.begin().await?;
        tx.lock(WriteLock::Uploads).await?;
        let done = tx
            .query(&format!(
                "INSERT INTO {table} (id, bytes, detail, created_at) SELECT ?, ?, ?, ? \
             WHERE (SELECT COUNT(*) FROM {table}) < ? \
               AND (SELECT COALESCE(SUM(bytes), 0) FROM {table}) + ? <= ?"
            ))
            .bind(id)
            .bind(bytes)
            .bind(detail)
            .bind(created_at)
            .bind(max_count)
            .bind(bytes)
            .bind(max_bytes)
            .execute()
            .await?;
        tx.commit().await?;
        Ok(done == 1)
    }

    pub async fn insert_model_within(&self, model: &UserModel, max_count: i64, max_bytes: i64) -> anyhow::Result<bool> {
        let row = (model.id.as_str(), model.bytes, serde_json::to_string(&model.detail)?, model.created_at);
        self.insert_upload_within(UploadKind::Model, row, max_count, max_bytes).await
    }

    pub async fn insert_dataset_within(&self, set: &Dataset, max_count: i64, max_bytes: i64) -> anyhow::Result<bool> {
        let row = (set.id.as_str(), set.bytes, serde_json::to_string(&set.detail)?, set.created_at);
        self.insert_upload_within(UploadKind::Dataset, row, max_count, max_bytes).await
    }

    async fn upload(&self, kind: UploadKind, id: &str) -> anyhow::Result<Option<Upload>> {
        let row = self
            .pool
            .query(&format!("SELECT id, bytes, detail, created_at FROM {} WHERE id = ?", kind.table()))
            .bind(id)
            .fetch_optional()
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn list_uploads(&self, kind: UploadKind, limit: i64) -> anyhow::Result<Vec<Upload>> {
        let rows = self
            .pool
            .query(&format!("SELECT id, bytes, detail, created_at FROM {} ORDER BY id DESC LIMIT ?", kind.table()))
            .bind(limit)
            .fetch_all()
            .await?;
        rows.iter().map(from_row).collect()
    }

    pub async fn user_model(&self, id: &str) -> anyhow::Result<Option<UserModel>> {
        self.upload(UploadKind::Model, id).await?.map(Upload::model).transpose()
    }

    pub async fn dataset(&self, id: &str) -> anyhow::Result<Option<Dataset>> {
        self.upload(UploadKind::Dataset, id).await?.map(Upload::dataset).transpose()
    }

    /// The newest `limit` models, newest first.
    pub async fn list_models(&self, limit: i64) -> anyhow::Result<Vec<UserModel>> {
        self.list_uploads(UploadKind::Model, limit).await?.into_iter().map(Upload::model).collect()
    }

    /// The newest `limit` data sets, newest first.
    pub async fn list_datasets(&self, limit: i64) -> anyhow::Result<Vec<Dataset>> {
        self.list_uploads(UploadKind::Dataset, limit).await?.into_iter().map(Upload::dataset).collect()
    }

    /// How many uploads of `kind` are stored and how many bytes they take.
    pub async fn upload_usage(&self, kind: UploadKind) -> anyhow::Result<CorpusUsage> {
        let row = self
            .pool
            .query(&format!(
                "SELECT COUNT(*) AS count, CAST(COALESCE(SUM(bytes), 0) AS BIGINT) AS bytes FROM {}",
                kind.table()
            ))
            .fetch_one()
            .await?;
        Ok(CorpusUsage { count: row.try_get("count")?, bytes: row.try_get("bytes")? })
    }

    /// Deletes upload `id` unless a queued or running job names it. Specs are stored as
    /// compact JSON, and a job names a model as `"id":"<id>"` in `model`, a data set the
    /// same way in `task` (ids are server-made UUIDs, unique across both tables, with
    /// nothing to escape). The check and the delete are one statement.
    pub async fn delete_upload(&self, kind: UploadKind, id: &str) -> anyhow::Result<CorpusDeletion> {
        let done = self
            .pool
            .query(&format!(
                "DELETE FROM {} WHERE id = ? AND NOT EXISTS \
             (SELECT 1 FROM jobs WHERE status IN ('queued', 'running') AND spec LIKE ?)",
                kind.table()
            ))
            .bind(id)
            .bind(format!("%\"id\":\"{id}\"%"))
            .execute()
            .await?;
        if done == 1 {
            return Ok(CorpusDeletion::Deleted);
        }
        Ok(if self.upload(kind, id).await?.is_some() { CorpusDeletion::InUse } else { CorpusDeletion::Missing })
    }
}
