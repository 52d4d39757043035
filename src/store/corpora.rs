//! Uploaded corpora: metadata here, the text itself in the data folder.

use super::db::Row;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::Store;
use super::db::WriteLock;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Corpus {
    /// Use as `task.corpus` in a job spec.
    pub id: String,
    pub bytes: i64,
    /// Distinct characters.
    pub vocab_size: i64,
    pub created_at: DateTime<Utc>,
}

/// How many corpora are stored and how many bytes they take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct CorpusUsage {
    pub count: i64,
    pub bytes: i64,
}

/// What [`Store::delete_corpus`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorpusDeletion {
    Deleted,
    /// A queued or running job names the corpus.
    InUse,
    Missing,
}

const COLUMNS: &str = "id, bytes, vocab_size, created_at";

fn corpus_from_row(row: &Row) -> anyhow::Result<Corpus> {
    Ok(Corpus {
        id: row.try_get("id")?,
        bytes: row.try_get("bytes")?,
        vocab_size: row.try_get("vocab_size")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Stores `corpus` unless that would make more than `max_count` corpora or more than
    /// `max_bytes` in all; returns whether it was stored. The check and the insert are one
    /// statement, which SQLite runs under its write lock (PostgreSQL under the uploads'
    /// lock), so concurrent uploads cannot together exceed the quota.
    pub async fn insert_corpus_within(&self, corpus: &Corpus, max_count: i64, max_bytes: i64) -> anyhow::Result<bool> {
        let mut tx = self.pool.begin().await?;
        tx.lock(WriteLock::Uploads).await?;
        let done = tx
            .query(
                "INSERT INTO corpora (id, bytes, vocab_size, created_at) SELECT ?, ?, ?, ? \
             WHERE (SELECT COUNT(*) FROM corpora) < ? \
               AND (SELECT COALESCE(SUM(bytes), 0) FROM corpora) + ? <= ?",
            )
            .bind(&corpus.id)
            .bind(corpus.bytes)
            .bind(corpus.vocab_size)
            .bind(corpus.created_at)
            .bind(max_count)
            .bind(corpus.bytes)
            .bind(max_bytes)
            .execute()
            .await?;
        tx.commit().await?;
        Ok(done == 1)
    }

    pub async fn corpus(&self, id: &str) -> anyhow::Result<Option<Corpus>> {
        let row =
            self.pool.query(&format!("SELECT {COLUMNS} FROM corpora WHERE id = ?")).bind(id).fetch_optional().await?;
        row.as_ref().map(corpus_from_row).transpose()
    }

    /// The newest `limit` corpora, newest first (ids are UUIDv7, which sort by time).
    pub async fn list_corpora(&self, limit: i64) -> anyhow::Result<Vec<Corpus>> {
        let rows = self
            .pool
            .query(&format!("SELECT {COLUMNS} FROM corpora ORDER BY id DESC LIMIT ?"))
            .bind(limit)
            .fetch_all()
            .await?;
        rows.iter().map(corpus_from_row).collect()
    }

    pub async fn corpus_usage(&self) -> anyhow::Result<CorpusUsage> {
        let row = self
            .pool
            .query("SELECT COUNT(*) AS count, CAST(COALESCE(SUM(bytes), 0) AS BIGINT) AS bytes FROM corpora")
            .fetch_one()
            .await?;
        Ok(CorpusUsage { count: row.try_get("count")?, bytes: row.try_get("bytes")? })
    }

    /// Deletes the corpus `id` unless a queued or running job names it. Job specs are
    /// stored as compact JSON, so a job that trains on the corpus holds the text
    /// `"corpus":"<id>"` (ids are server-made UUIDs: nothing in them needs escaping, and
    /// `LIKE` wildcards cannot occur). The check and the delete are one statement, so a
    /// job resumed meanwhile is seen.
    pub async fn delete_corpus(&self, id: &str) -> anyhow::Result<CorpusDeletion> {
        let done = self
            .pool
            .query(
                "DELETE FROM corpora WHERE id = ? AND NOT EXISTS \
             (SELECT 1 FROM jobs WHERE status IN ('queued', 'running') AND spec LIKE ?)",
            )
            .bind(id)
            .bind(format!("%\"corpus\":\"{id}\"%"))
            .execute()
            .await?;
        if done == 1 {
            return Ok(CorpusDeletion::Deleted);
        }
        Ok(if self.corpus(id).await?.is_some() { CorpusDeletion::InUse } else { CorpusDeletion::Missing })
    }
}
