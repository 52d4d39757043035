//! Diagnosis and policy events.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Store;
use super::db::Tx;
use super::jobs::finite;
use super::steps::NUMBER_BYTES;
use crate::train::Event;
use crate::vocab::EventKind;

/// A diagnosis or a policy action, at a step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StoredEvent {
    pub step: i64,
    pub kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub message: String,
}

impl Store {
    /// Appends `events` within `tx`; returns the bytes written, as `stored_bytes` counts them.
    pub(super) async fn insert_events(tx: &mut Tx, job_id: &str, events: &[Event]) -> anyhow::Result<usize> {
        let mut written = 0;
        for event in events {
            // seq, step, layer and value are numbers.
            written += job_id.len() + 4 * NUMBER_BYTES + event.kind.as_str().len() + event.message.len();
            tx.query(
                "INSERT INTO events (job_id, seq, step, kind, layer, value, message)
                 VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?), ?, ?, ?, ?, ?)",
            )
            .bind(job_id)
            .bind(job_id)
            .bind(i64::try_from(event.step)?)
            .bind(event.kind.as_str())
            .bind(event.layer.map(|l| l as i64))
            .bind(event.value.and_then(finite))
            .bind(&event.message)
            .execute()
            .await?;
        }
        Ok(written)
    }

    /// Events of job `id` in order, optionally of one kind, at most `limit`.
    pub async fn events(&self, id: Uuid, kind: Option<EventKind>, limit: i64) -> anyhow::Result<Vec<StoredEvent>> {
        let kind = kind.map(EventKind::as_str);
        let rows = self
            .pool
            .query(
                "SELECT step, kind, layer, value, message FROM events
             WHERE job_id = ? AND (? IS NULL OR kind = ?) ORDER BY seq LIMIT ?",
            )
            .bind(id.to_string())
            .bind(kind)
            .bind(kind)
            .bind(limit)
            .fetch_all()
            .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredEvent {
                    step: row.try_get("step")?,
                    kind: row.try_get::<&str, _>("kind")?.parse()?,
                    layer: row.try_get("layer")?,
                    value: row.try_get("value")?,
                    message: row.try_get("message")?,
                })
            })
            .collect()
    }
}
