//! Per-layer statistics: one row per recorded step, one float32 BLOB per statistic.

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Store;
use super::downsample::keep_extremes;
use super::steps::NUMBER_BYTES;
use crate::train::stats::HIST_BINS;
use crate::train::{LayerInfo, StepReport};
use crate::vocab::{Statistic, statistic_field};

/// One layer's statistics over steps, as columns: entry i of each array belongs to
/// `step[i]`. Only the statistics asked for are present. A `null` entry is a value that
/// does not exist at that step (each field says when), never a zero.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct LayerSeries {
    pub index: usize,
    pub name: String,
    pub step: Vec<i64>,
    /// ‖g‖₂ of the layer's gradient before any grad policy; null where g holds a NaN or
    /// ±Inf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<Vec<Option<f32>>>,
    /// max |g|; null where g holds a NaN or an infinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_max: Option<Vec<Option<f32>>>,
    /// Mean of g; null where g holds a NaN or ±Inf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_mean: Option<Vec<Option<f32>>>,
    /// Sample standard deviation of g, √(Σ(g − mean)² / (n − 1)), as `torch.std`
    /// computes it; null for a one-element layer (where `torch.std` gives NaN) and where g
    /// holds a NaN or ±Inf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_std: Option<Vec<Option<f32>>>,
    /// Fraction of the elements of g that are exactly 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_frac: Option<Vec<Option<f32>>>,
    /// Count of NaN, +Inf and −Inf elements in g (stored as a float32: exact up to 2^24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonfinite: Option<Vec<Option<f32>>>,
    /// ‖w‖₂ after the step; null where w holds a NaN or ±Inf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_norm: Option<Vec<Option<f32>>>,
    /// ‖w_after − w_before‖₂ / ‖w_before‖₂ over the step (healthy ≈ 1e-3); null where
    /// ‖w_before‖₂ = 0 (a zero-initialised tensor before its first update), where the ratio
    /// has no value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_ratio: Option<Vec<Option<f32>>>,
    /// Per step, 51 exact counts of |g|: exact zeros, then [2^e, 2^(e+1)) for e = -40..=8
    /// (smaller non-zero values in the first, larger finite ones in the last), then
    /// NaN/±Inf. Present when asked for (`stat=hist`) and recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hist: Option<Vec<Option<Vec<u32>>>>,
}

impl LayerSeries {
    fn column_mut(&mut self, stat: Statistic) -> &mut Option<Vec<Option<f32>>> {
        statistic_field!(stat, &mut self)
    }
}

/// What a layer query reads: some statistics, and the histograms or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatSelection {
    pub statistics: Vec<Statistic>,
    pub hist: bool,
}

impl Default for StatSelection {
    /// Every statistic but the histograms.
    fn default() -> Self {
        Self { statistics: Statistic::ALL.to_vec(), hist: false }
    }
}

impl StatSelection {
    /// Values per layer and step: one per statistic, [`HIST_BINS`] for the histogram.
    pub fn width(&self) -> u64 {
        self.statistics.len() as u64 + if self.hist { HIST_BINS as u64 } else { 0 }
    }
}

/// Up to this many (layer, statistic) cells a query cuts out in SQL.
const NARROW_CELLS: usize = 64;

fn f32_blob(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect()
}

fn blob_value(blob: &[u8], layer: usize) -> Option<f32> {
    let bytes = blob.get(layer * 4..layer * 4 + 4)?;
    let v = f32::from_le_bytes(bytes.try_into().ok()?);
    v.is_finite().then_some(v)
}

fn blob_hist(blob: &[u8], layer: usize) -> Option<Vec<u32>> {
    let start = layer * HIST_BINS * 4;
    let bytes = blob.get(start..start + HIST_BINS * 4)?;
    Some(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

impl Store {
    /// Adds the per-layer rows of the reports that carry statistics, within `tx`; returns
    /// the bytes written, as `stored_bytes` counts them.
    pub(super) async fn insert_layer_stats(
        tx: &mut sqlx::SqliteConnection,
        job_id: &str,
        steps: &[StepReport],
    ) -> anyhow::Result<usize> {
        // One column per statistic, named as it.
        let columns: Vec<&str> = Statistic::ALL.iter().map(|s| s.as_str()).collect();
        let insert = format!(
            "INSERT INTO layer_stats (job_id, step, {}, hist) VALUES (?, ?, {}?)",
            columns.join(", "),
            "?, ".repeat(columns.len())
        );
        let mut written = 0;
        for report in steps {
            let Some(layers) = &report.layers else { continue };
            let hist: Option<Vec<u8>> = layers
                .hist
                .as_ref()
                .map(|h| h.iter().flat_map(|&c| u32::try_from(c).unwrap_or(u32::MAX).to_le_bytes()).collect());
            written += job_id.len() + NUMBER_BYTES + hist.as_ref().map_or(0, Vec::len);
            let mut query = sqlx::query(&insert).bind(job_id).bind(i64::try_from(report.step)?);
            for &stat in Statistic::ALL {
                let blob = f32_blob(layers.get(stat));
                written += blob.len();
                query = query.bind(blob);
            }
            query.bind(hist).execute(&mut *tx).await?;
        }
        Ok(written)
    }

    /// The statistics `selection` names of `layers` of job `id` between steps `from` and
    /// `to`, each layer downsampled to at most `max_points` keeping the extremes of its
    /// statistics.
    pub async fn layer_stats(
        &self,
        id: Uuid,
        layers: &[LayerInfo],
        selection: &StatSelection,
        (from, to): (i64, i64),
        max_points: usize,
        max_rows: u64,
    ) -> anyhow::Result<Vec<LayerSeries>> {
        let (numeric, want_hist) = (selection.statistics.as_slice(), selection.hist);
        // A few layers: cut their 4 bytes out of each blob in SQL rather than copying
        // every layer's values out of the database.
        let narrow = layers.len() * (numeric.len() + usize::from(want_hist)) <= NARROW_CELLS;
        let mut columns: Vec<String> = Vec::new();
        if narrow {
            for layer in layers {
                for stat in numeric {
                    columns.push(format!("substr({stat}, {}, 4)", layer.index * 4 + 1));
                }
                if want_hist {
                    columns.push(format!("substr(hist, {}, {})", layer.index * HIST_BINS * 4 + 1, HIST_BINS * 4));
                }
            }
        } else {
            columns.extend(numeric.iter().map(|s| s.as_str().to_owned()));
            if want_hist {
                columns.push("hist".to_owned());
            }
        }
        // Column names and offsets come from the statistics' names and layer indices, never
        // from text in the request.
        let sql = format!(
            "SELECT step{}{} FROM layer_stats WHERE job_id = ? AND step BETWEEN ? AND ? ORDER BY step LIMIT ?",
            if columns.is_empty() { "" } else { ", " },
            columns.join(", ")
        );
        let per_layer = numeric.len() + usize::from(want_hist);
        // Where (layer position, statistic position) lives: its column and its offset in it.
        let cell = |l: usize, c: usize, layer: &LayerInfo| {
            if narrow { (l * per_layer + c, 0) } else { (c, layer.index) }
        };
        // Rows are read one at a time and only the asked-for cells are kept, so a query
        // holds what it asked for, not every layer's blobs.
        let mut steps: Vec<i64> = Vec::new();
        // Absent values as NaN (as stored): an `Option<f32>` would take 8 bytes, not 4.
        let mut values: Vec<Vec<Vec<f32>>> = vec![vec![Vec::new(); numeric.len()]; layers.len()];
        let mut hists: Vec<Vec<Option<Vec<u32>>>> = vec![Vec::new(); if want_hist { layers.len() } else { 0 }];
        // At most the rows the caller counted and checked against its bounds, even while
        // a running job appends more.
        let limit = i64::try_from(max_rows).unwrap_or(i64::MAX);
        let mut rows = sqlx::query(&sql).bind(id.to_string()).bind(from).bind(to).bind(limit).fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            steps.push(row.try_get::<i64, _>(0)?);
            for (l, layer) in layers.iter().enumerate() {
                for (c, column_values) in values[l].iter_mut().enumerate() {
                    let (column, at) = cell(l, c, layer);
                    let blob: Option<&[u8]> = row.try_get(column + 1)?;
                    column_values.push(blob.and_then(|b| blob_value(b, at)).unwrap_or(f32::NAN));
                }
                if want_hist {
                    let (column, at) = cell(l, numeric.len(), layer);
                    let blob: Option<&[u8]> = row.try_get(column + 1)?;
                    hists[l].push(blob.and_then(|b| blob_hist(b, at)));
                }
            }
        }
        drop(rows);

        // Finding the extremes is CPU work over everything read: off the async workers.
        let layers = layers.to_vec();
        let numeric = numeric.to_vec();
        let thin = move || thin_layers(&layers, &numeric, &steps, &values, hists, max_points);
        Ok(tokio::task::spawn_blocking(thin).await?)
    }

    /// How many recorded steps with per-layer statistics job `id` has between `from` and
    /// `to`: what a layer query would read before thinning.
    pub async fn layer_stat_rows(&self, id: Uuid, (from, to): (i64, i64)) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM layer_stats WHERE job_id = ? AND step BETWEEN ? AND ?")
            .bind(id.to_string())
            .bind(from)
            .bind(to)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// Each layer's series thinned to at most `max_points`, keeping the extremes of its
/// statistics (`values[layer][statistic][row]`, `hists[layer][row]`).
fn thin_layers(
    layers: &[LayerInfo],
    numeric: &[Statistic],
    steps: &[i64],
    values: &[Vec<Vec<f32>>],
    mut hists: Vec<Vec<Option<Vec<u32>>>>,
    max_points: usize,
) -> Vec<LayerSeries> {
    let mut out = Vec::with_capacity(layers.len());
    for (l, layer) in layers.iter().enumerate() {
        let columns = &values[l];
        let reads: Vec<Box<dyn Fn(usize) -> Option<f64> + '_>> = columns
            .iter()
            .map(|col| Box::new(move |i: usize| finite(col[i]).map(f64::from)) as Box<dyn Fn(usize) -> Option<f64>>)
            .collect();
        let series: Vec<&dyn Fn(usize) -> Option<f64>> = reads.iter().map(|r| r.as_ref()).collect();
        let keep = if series.is_empty() {
            evenly(steps.len(), max_points)
        } else {
            keep_extremes(steps.len(), max_points, &series)
        };
        let mut s = LayerSeries { index: layer.index, name: layer.name.clone(), ..LayerSeries::default() };
        s.step = keep.iter().map(|&i| steps[i]).collect();
        for (c, &stat) in numeric.iter().enumerate() {
            *s.column_mut(stat) = Some(keep.iter().map(|&i| finite(columns[c][i])).collect());
        }
        if let Some(layer_hists) = hists.get_mut(l) {
            s.hist = Some(keep.iter().map(|&i| layer_hists[i].take()).collect());
        }
        out.push(s);
    }
    out
}

fn finite(v: f32) -> Option<f32> {
    v.is_finite().then_some(v)
}

/// At most `max_points` indices spread evenly over `len`, first and last included.
fn evenly(len: usize, max_points: usize) -> Vec<usize> {
    if len <= max_points {
        return (0..len).collect();
    }
    let mut keep: Vec<usize> = (0..max_points).map(|k| k * (len - 1) / (max_points - 1).max(1)).collect();
    keep.dedup();
    keep
}
