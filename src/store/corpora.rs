//! Uploaded corpora: metadata here, the text itself in the data folder.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;

use super::Store;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Corpus {
    /// Use as `task.corpus` in a job spec.
    pub id: String,
    pub bytes: i64,
    /// Distinct characters.
    pub vocab_size: i64,
    pub created_at: DateTime<Utc>,
}

impl Store {
    pub async fn insert_corpus(&self, corpus: &Corpus) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO corpora (id, bytes, vocab_size, created_at) VALUES (?, ?, ?, ?)")
            .bind(&corpus.id)
            .bind(corpus.bytes)
            .bind(corpus.vocab_size)
            .bind(corpus.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn corpus(&self, id: &str) -> anyhow::Result<Option<Corpus>> {
        let row = sqlx::query("SELECT id, bytes, vocab_size, created_at FROM corpora WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(Corpus {
                id: row.try_get("id")?,
                bytes: row.try_get("bytes")?,
                vocab_size: row.try_get("vocab_size")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .transpose()
    }
}
