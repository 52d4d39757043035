//! Measurements taken on schedules of their own, one row per job, kind and step: the
//! spectral radius of the measured weight matrices (`spectral`) and the temporal gradient
//! profile (`time`), and each block output's mean and RMS (`signal`).

use uuid::Uuid;

use super::Store;
use super::db::Tx;
use super::steps::NUMBER_BYTES;
use crate::train::StepReport;

/// What a probe row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// The largest singular value of each measured matrix.
    Spectral,
    /// The gradient's norm at each input position.
    Time,
    /// Each block output's mean, then each one's root mean square.
    Signal,
}

impl ProbeKind {
    pub const ALL: [Self; 3] = [Self::Spectral, Self::Time, Self::Signal];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spectral => "spectral",
            Self::Time => "time",
            Self::Signal => "signal",
        }
    }

    fn values(self, report: &StepReport) -> Option<&[f64]> {
        match self {
            Self::Spectral => report.probes.spectral.as_deref(),
            Self::Time => report.probes.time.as_deref(),
            Self::Signal => report.probes.signal.as_deref(),
        }
    }
}

/// Measured steps and, per step, one value per series (null where not finite).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeRows {
    pub step: Vec<i64>,
    pub values: Vec<Vec<Option<f32>>>,
}

impl ProbeRows {
    /// The values as one column per series of `width`, the i-th entry of each belonging to
    /// `step[i]` (null where a row is shorter).
    pub fn columns(&self, width: usize) -> Vec<Vec<Option<f32>>> {
        (0..width).map(|s| self.values.iter().map(|row| row.get(s).copied().flatten()).collect()).collect()
    }
}

/// A job's probe rows in a step range: how many, and the width of the widest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeRange {
    pub rows: u64,
    pub width: u64,
}

impl Store {
    /// Adds the probe rows of `steps` within `tx`; returns the bytes written, as
    /// `stored_bytes` counts them.
    pub(super) async fn insert_probes(tx: &mut Tx, job_id: &str, steps: &[StepReport]) -> anyhow::Result<usize> {
        let mut written = 0;
        for report in steps {
            for kind in ProbeKind::ALL {
                let Some(values) = kind.values(report) else { continue };
                let blob: Vec<u8> = values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect();
                written += job_id.len() + NUMBER_BYTES + kind.as_str().len() + blob.len();
                tx.query(
                    "INSERT INTO probes (job_id, kind, step, value) VALUES (?, ?, ?, ?)
                     ON CONFLICT (job_id, kind, step) DO UPDATE SET value = excluded.value",
                )
                .bind(job_id)
                .bind(kind.as_str())
                .bind(i64::try_from(report.step)?)
                .bind(blob)
                .execute()
                .await?;
            }
        }
        Ok(written)
    }

    /// How many `kind` rows job `id` has from `from` to `to` (inclusive), and the widest.
    pub async fn probe_range(&self, id: Uuid, kind: ProbeKind, (from, to): (i64, i64)) -> anyhow::Result<ProbeRange> {
        let row = self
            .pool
            .query(
                "SELECT COUNT(*), CAST(COALESCE(MAX(length(value)), 0) AS BIGINT) FROM probes
             WHERE job_id = ? AND kind = ? AND step BETWEEN ? AND ?",
            )
            .bind(id.to_string())
            .bind(kind.as_str())
            .bind(from)
            .bind(to)
            .fetch_one()
            .await?;
        let (rows, bytes): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        Ok(ProbeRange { rows: u64::try_from(rows)?, width: u64::try_from(bytes)? / 4 })
    }

    /// Job `id`'s `kind` rows from `from` to `to` (inclusive), at most `max_points` of
    /// them: every row when they are that few, else every k-th row (the first included),
    /// with k the smallest that keeps `max_points`.
    pub async fn probes(
        &self,
        id: Uuid,
        kind: ProbeKind,
        (from, to): (i64, i64),
        max_points: usize,
    ) -> anyhow::Result<ProbeRows> {
        let range = self.probe_range(id, kind, (from, to)).await?;
        let stride = range.rows.div_ceil(max_points.max(1) as u64).max(1);
        let rows = self
            .pool
            .query(
                "SELECT p.step, p.value FROM probes p JOIN (
                 SELECT step FROM (
                     SELECT step, ROW_NUMBER() OVER (ORDER BY step) - 1 AS r FROM probes
                     WHERE job_id = ? AND kind = ? AND step BETWEEN ? AND ?
                 ) AS numbered WHERE r % ? = 0
             ) k ON p.step = k.step
             WHERE p.job_id = ? AND p.kind = ? ORDER BY p.step",
            )
            .bind(id.to_string())
            .bind(kind.as_str())
            .bind(from)
            .bind(to)
            .bind(i64::try_from(stride)?)
            .bind(id.to_string())
            .bind(kind.as_str())
            .fetch_all()
            .await?;
        let mut out = ProbeRows::default();
        for row in &rows {
            out.step.push(row.try_get("step")?);
            let blob: Vec<u8> = row.try_get("value")?;
            out.values.push(
                blob.chunks_exact(4)
                    .map(|c| Some(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).filter(|v| v.is_finite()))
                    .collect(),
            );
        }
        Ok(out)
    }
}
