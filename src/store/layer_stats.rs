//! Per-layer statistics: one row per recorded step, one float32 BLOB per statistic.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::Store;
use super::blocks::{last_row, layer_cells, loose_rows, merge_pieces, read_blocks, row_cells, row_range, store_blocks};
use super::db::{Row, Tx};
use super::downsample::keep_extremes;
use super::rollup::{self, Cell, Piece, Width};
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
    /// Fraction of the elements of g below the smallest normal number of the training
    /// precision (zeros included), as the precision holds them (times the loss scale, for
    /// fp16 with loss scaling); null for steps stored before it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underflow: Option<Vec<Option<f32>>>,
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

    /// Rows a query over `range` reads, at most, to answer `max_points` points: every
    /// row when it answers them all; when thinned, the rows with a histogram if it asks
    /// for histograms, else the blocks and loose rows of its buckets and the rows it keeps.
    pub fn rows_read(&self, range: RangeRows, max_points: usize) -> u64 {
        let rows = range.rows;
        if rows <= max_points as u64 {
            return rows;
        }
        if self.hist {
            // Histograms alone: evenly among them; with statistics: all of them, thinned.
            return if self.statistics.is_empty() { range.with_hist.min(max_points as u64) } else { range.with_hist };
        }
        if self.statistics.is_empty() {
            return rows;
        }
        let buckets = (max_points / (2 * self.statistics.len() + 1)).max(1) as u64;
        rows.min(rollup::read_bound(rows, buckets).saturating_add(max_points as u64))
    }
}

/// Which rows a layer query reads.
enum Rows<'a> {
    /// Those with steps `from..=to`, at most `limit`.
    Steps { from: i64, to: i64, limit: u64 },
    /// Those numbered so.
    Numbered(&'a [u64]),
    /// Those with a histogram, numbered `first..=last` among them.
    Histograms { first: u64, last: u64 },
    /// Those with a histogram, numbered so among them.
    HistogramsNumbered(&'a [u64]),
}

/// How many rows a layer query over a range picks from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeRows {
    /// Recorded steps with per-layer statistics.
    pub rows: u64,
    /// Those with a histogram.
    pub with_hist: u64,
}

/// What a layer query read: per row its step and number; the values of each asked
/// layer's asked statistics (`values[layer][statistic][row]`, NaN where absent) and
/// histograms.
#[derive(Default)]
struct Read {
    steps: Vec<i64>,
    ns: Vec<u64>,
    values: Vec<Vec<Vec<f32>>>,
    hists: Vec<Vec<Option<Vec<u32>>>>,
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
    pub(super) async fn insert_layer_stats(tx: &mut Tx, job_id: &str, steps: &[StepReport]) -> anyhow::Result<usize> {
        // One column per statistic, named as it.
        let columns: Vec<&str> = Statistic::ALL.iter().map(|s| s.as_str()).collect();
        let insert = format!(
            "INSERT INTO layer_stats (job_id, step, n, hn, {}, hist) VALUES (?, ?, ?, ?, {}?)",
            columns.join(", "),
            "?, ".repeat(columns.len())
        );
        let mut written = 0;
        let after = last_row(&mut *tx, "layer_stats", job_id).await?;
        let mut hn: i64 = tx
            .query("SELECT COALESCE(MAX(hn), 0) FROM layer_stats WHERE job_id = ?")
            .bind(job_id)
            .fetch_scalar()
            .await?;
        let mut n = after;
        let mut cells: HashMap<u64, Vec<Cell>> = HashMap::new();
        for report in steps {
            let Some(layers) = &report.layers else { continue };
            n += 1;
            let hist: Option<Vec<u8>> = layers
                .hist
                .as_ref()
                .map(|h| h.iter().flat_map(|&c| u32::try_from(c).unwrap_or(u32::MAX).to_le_bytes()).collect());
            let row_hn = hist.is_some().then(|| {
                hn += 1;
                hn
            });
            written += job_id.len() + 2 * NUMBER_BYTES + hist.as_ref().map_or(0, |h| h.len() + NUMBER_BYTES);
            let mut query =
                tx.query(&insert).bind(job_id).bind(i64::try_from(report.step)?).bind(i64::try_from(n)?).bind(row_hn);
            let mut blobs = Vec::with_capacity(Statistic::ALL.len());
            for &stat in Statistic::ALL {
                let blob = f32_blob(layers.get(stat));
                written += blob.len();
                query = query.bind(blob.clone());
                blobs.push(blob);
            }
            query.bind(hist).execute().await?;
            cells.insert(n, layer_cells(&blobs, u32::try_from(n)?));
        }
        if n / rollup::BASE > after / rollup::BASE {
            // The rows of the block this batch completes that earlier batches wrote.
            let start = after - after % rollup::BASE;
            cells.extend(row_cells(&mut *tx, "layer_stats", job_id, (start + 1, after)).await?);
            written += store_blocks(&mut *tx, "layer_rollups", job_id, (after, n), Width::F32, &cells).await?;
        }
        Ok(written)
    }

    /// The statistics `selection` names of `layers` of job `id` between steps `from` and
    /// `to`, each layer downsampled to at most `max_points` keeping the extremes of its
    /// statistics. A long range of statistics reads the pre-aggregated blocks of each
    /// bucket (see [`rollup`]), the few rows around them and the rows it keeps; a query
    /// for histograms picks among the rows that have one, reading them all (at most
    /// `max_rows`).
    pub async fn layer_stats(
        &self,
        id: Uuid,
        layers: &[LayerInfo],
        selection: &StatSelection,
        (from, to): (i64, i64),
        max_points: usize,
        max_rows: u64,
    ) -> anyhow::Result<Vec<LayerSeries>> {
        let job_id = id.to_string();
        let numeric = selection.statistics.clone();
        // The rows and the blocks from one snapshot: a running job appends meanwhile.
        let mut tx = self.pool.begin().await?;
        let range = row_range(&mut tx, "layer_stats", &job_id, (from, to)).await?;
        let long = range.filter(|&(first, last)| last - first + 1 > max_points as u64);
        let histograms =
            if long.is_some() && selection.hist { hist_range(&mut tx, &job_id, (from, to)).await? } else { None };
        let rows = match (long, histograms) {
            // Every row of the range: no thinning.
            (None, _) => Some(Rows::Steps { from, to, limit: max_rows }),
            // A thinned answer with histograms picks among the rows that have one: evenly
            // for histograms alone, else keeping the extremes of the statistics among them.
            (Some(_), Some((first, last))) if numeric.is_empty() => {
                let count = usize::try_from(last - first + 1)?;
                let at: Vec<u64> = evenly(count, max_points).into_iter().map(|i| first + i as u64).collect();
                let read = read_rows(&mut tx, &job_id, layers, selection, &Rows::HistogramsNumbered(&at)).await?;
                tx.commit().await?;
                let layers = layers.to_vec();
                return Ok(thin_layers(&layers, &numeric, &read.steps, &read.values, read.hists, max_points));
            }
            (Some(_), Some((first, last))) => {
                Some(Rows::Histograms { first, last: last.min(first.saturating_add(max_rows).saturating_sub(1)) })
            }
            (Some(_), None) if selection.hist => Some(Rows::Numbered(&[])),
            (Some(_), None) if numeric.is_empty() => Some(Rows::Steps { from, to, limit: max_rows }),
            (Some(_), None) => None,
        };
        if let Some(rows) = rows {
            let read = read_rows(&mut tx, &job_id, layers, selection, &rows).await?;
            tx.commit().await?;
            // Finding the extremes is CPU work over everything read: off the async workers.
            let layers = layers.to_vec();
            let thin = move || thin_layers(&layers, &numeric, &read.steps, &read.values, read.hists, max_points);
            return Ok(tokio::task::spawn_blocking(thin).await?);
        }
        let Some((first, last)) = long else { anyhow::bail!("a long range has rows") };
        let per_bucket = 2 * numeric.len() + 1;
        let buckets = rollup::buckets(first, last, (max_points / per_bucket).max(1) as u64);
        let pieces: Vec<Vec<Piece>> = buckets.iter().map(|&(a, b)| rollup::pieces(a, b)).collect();
        let flat: Vec<Piece> = pieces.iter().flatten().copied().collect();
        let blocks = read_blocks(&mut tx, "layer_rollups", &job_id, &flat).await?;
        let loose = loose_rows(&flat);
        let loose = read_rows(&mut tx, &job_id, layers, selection, &Rows::Numbered(&loose)).await?;
        let positions: Vec<usize> =
            numeric.iter().map(|s| Statistic::ALL.iter().position(|a| a == s).unwrap_or(0)).collect();
        let owned_layers = layers.to_vec();
        // Merging cells is CPU work: off the async workers.
        // With one statistic, the blocks hold the value of every row they keep (its minimum,
        // its maximum, or null at its first non-finite row): only the steps are read after.
        let single = numeric.len() == 1;
        type Kept = (Vec<u32>, HashMap<u32, Option<f32>>);
        let keep = move || -> anyhow::Result<Vec<Kept>> {
            let mut keep = Vec::with_capacity(owned_layers.len());
            for (l, layer) in owned_layers.iter().enumerate() {
                let mut rows: HashMap<u64, Vec<Cell>> = HashMap::with_capacity(loose.ns.len());
                for (i, &n) in loose.ns.iter().enumerate() {
                    let at = u32::try_from(n)?;
                    rows.insert(n, loose.values[l].iter().map(|col| Cell::of(Some(f64::from(col[i])), at)).collect());
                }
                let row_cells: Vec<usize> = (0..positions.len()).collect();
                let block_cells: Vec<usize> =
                    positions.iter().map(|&p| layer.index * Statistic::ALL.len() + p).collect();
                let mut kept = Vec::new();
                let mut values = HashMap::new();
                for (&(a, _), bucket) in buckets.iter().zip(&pieces) {
                    let cells = merge_pieces(bucket, (&rows, &row_cells), (&blocks, &block_cells), Width::F32);
                    kept.extend(rollup::kept_rows(u32::try_from(a)?, &cells));
                    if single {
                        for cell in &cells {
                            values.extend(cell.bad.map(|n| (n, None)));
                            for (v, n) in cell.min.into_iter().chain(cell.max) {
                                values.insert(n, Some(v as f32));
                            }
                        }
                    }
                }
                keep.push((rollup::spread(kept, max_points), values));
            }
            Ok(keep)
        };
        let keep = tokio::task::spawn_blocking(keep).await??;
        let mut wanted: Vec<u64> = keep.iter().flat_map(|k| &k.0).map(|&n| u64::from(n)).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let steps_only = StatSelection { statistics: Vec::new(), hist: false };
        let reading = if single { &steps_only } else { selection };
        let read = read_rows(&mut tx, &job_id, layers, reading, &Rows::Numbered(&wanted)).await?;
        tx.commit().await?;
        let at: HashMap<u64, usize> = read.ns.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut out = Vec::with_capacity(layers.len());
        for (l, (layer, (kept, values))) in layers.iter().zip(&keep).enumerate() {
            let rows: Vec<(u32, usize)> = kept.iter().filter_map(|&n| Some((n, *at.get(&u64::from(n))?))).collect();
            let mut s = LayerSeries { index: layer.index, name: layer.name.clone(), ..LayerSeries::default() };
            s.step = rows.iter().map(|&(_, i)| read.steps[i]).collect();
            for (c, &stat) in numeric.iter().enumerate() {
                *s.column_mut(stat) = Some(if single {
                    rows.iter().map(|(n, _)| values.get(n).copied().flatten()).collect()
                } else {
                    rows.iter().map(|&(_, i)| finite(read.values[l][c][i])).collect()
                });
            }
            out.push(s);
        }
        Ok(out)
    }

    /// How many recorded steps with per-layer statistics, and with histograms, job `id`
    /// has between `from` and `to`: the rows a layer query picks from.
    pub async fn layer_stat_rows(&self, id: Uuid, range: (i64, i64)) -> anyhow::Result<RangeRows> {
        let job_id = id.to_string();
        let mut tx = self.pool.begin().await?;
        let count = |r: Option<(u64, u64)>| r.map_or(0, |(first, last)| last + 1 - first);
        let rows = count(row_range(&mut tx, "layer_stats", &job_id, range).await?);
        let with_hist = count(hist_range(&mut tx, &job_id, range).await?);
        tx.commit().await?;
        Ok(RangeRows { rows, with_hist })
    }
}

/// Numbers `first..=last`, among the rows with a histogram, of those with steps in
/// `from..=to`, if any. Each end is at most `monitor.histogram_every` rows from the
/// range's.
async fn hist_range(tx: &mut Tx, job_id: &str, (from, to): (i64, i64)) -> anyhow::Result<Option<(u64, u64)>> {
    let mut ends = [0_u64; 2];
    for (end, order) in ends.iter_mut().zip(["", "DESC"]) {
        let hn: Option<i64> = tx
            .query(&format!(
                "SELECT hn FROM layer_stats WHERE job_id = ? AND step BETWEEN ? AND ? AND hn IS NOT NULL
             ORDER BY step {order} LIMIT 1"
            ))
            .bind(job_id)
            .bind(from)
            .bind(to)
            .fetch_optional_scalar()
            .await?;
        let Some(hn) = hn else { return Ok(None) };
        *end = u64::try_from(hn)?;
    }
    Ok(Some((ends[0], ends[1])))
}

/// Reads `rows` of a job: their steps and numbers, and the cells `selection` names of
/// `layers`. Only the asked-for cells are kept, so a read holds what it asked for, not
/// every layer's blobs.
async fn read_rows(
    tx: &mut Tx,
    job_id: &str,
    layers: &[LayerInfo],
    selection: &StatSelection,
    rows: &Rows<'_>,
) -> anyhow::Result<Read> {
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
    let mut out = Read {
        values: vec![vec![Vec::new(); numeric.len()]; layers.len()],
        hists: vec![Vec::new(); if want_hist { layers.len() } else { 0 }],
        ..Read::default()
    };
    let listed = tx.backend().in_json_integers();
    let filter = match rows {
        Rows::Steps { .. } => "step BETWEEN ? AND ? ORDER BY step LIMIT ?".to_owned(),
        Rows::Numbered([]) | Rows::HistogramsNumbered([]) => return Ok(out),
        Rows::Numbered(_) => format!("n {listed} ORDER BY n"),
        Rows::Histograms { .. } => "hn BETWEEN ? AND ? ORDER BY hn".to_owned(),
        Rows::HistogramsNumbered(_) => format!("hn {listed} ORDER BY hn"),
    };
    // Column names and offsets come from the statistics' names and layer indices, never
    // from text in the request.
    let sql = format!(
        "SELECT step, n{}{} FROM layer_stats WHERE job_id = ? AND {filter}",
        if columns.is_empty() { "" } else { ", " },
        columns.join(", ")
    );
    let mut query = tx.query(&sql).bind(job_id);
    query = match rows {
        Rows::Steps { from, to, limit } => query.bind(*from).bind(*to).bind(i64::try_from(*limit).unwrap_or(i64::MAX)),
        Rows::Numbered(ns) | Rows::HistogramsNumbered(ns) => query.bind(serde_json::to_string(ns)?),
        Rows::Histograms { first, last } => query.bind(i64::try_from(*first)?).bind(i64::try_from(*last)?),
    };
    let per_layer = numeric.len() + usize::from(want_hist);
    // Where (layer position, statistic position) lives: its column and its offset in it.
    let cell = |l: usize, c: usize, layer: &LayerInfo| {
        if narrow { (l * per_layer + c, 0) } else { (c, layer.index) }
    };
    query
        .for_each(|row: &Row| {
            out.steps.push(row.try_get::<i64, _>(0)?);
            out.ns.push(u64::try_from(row.try_get::<Option<i64>, _>(1)?.unwrap_or(0))?);
            // Each column once per row, not once per layer.
            let blobs: Vec<Option<&[u8]>> = (0..columns.len()).map(|c| row.try_get(c + 2)).collect::<Result<_, _>>()?;
            for (l, layer) in layers.iter().enumerate() {
                for (c, column_values) in out.values[l].iter_mut().enumerate() {
                    let (column, at) = cell(l, c, layer);
                    // Absent values as NaN (as stored): an `Option<f32>` would take 8 bytes, not 4.
                    column_values.push(blobs[column].and_then(|b| blob_value(b, at)).unwrap_or(f32::NAN));
                }
                if want_hist {
                    let (column, at) = cell(l, numeric.len(), layer);
                    out.hists[l].push(blobs[column].and_then(|b| blob_hist(b, at)));
                }
            }
            Ok(())
        })
        .await?;
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Backend, JobStatus, Progress, test_store};
    use crate::train::LayerStats;

    const LAYERS: usize = 3;

    /// Statistic `c` of layer `l` at step `s`, written as a job would report it: NaN and
    /// ±Inf here and there, and spikes.
    fn value(s: u64, l: usize, c: usize, salt: u64) -> f64 {
        match (s + salt) % 613 {
            17 if l == 1 => f64::NAN,
            300 if c == 0 => f64::INFINITY,
            _ if s == 1_234 && l == 2 => 1e7,
            x => ((x * 7_919 + l as u64 * 31 + c as u64 * 101) % 97) as f64 / 9.0,
        }
    }

    fn report(s: u64, salt: u64) -> StepReport {
        // Statistic `stat` is column c, its place in `Statistic::ALL`.
        let column = |stat: Statistic| {
            let c = Statistic::ALL.iter().position(|&x| x == stat).expect("listed");
            (0..LAYERS).map(|l| value(s, l, c, salt)).collect::<Vec<f64>>()
        };
        let stats = LayerStats {
            grad_norm: column(Statistic::GradNorm),
            grad_max: column(Statistic::GradMax),
            grad_mean: column(Statistic::GradMean),
            grad_std: column(Statistic::GradStd),
            zero_frac: column(Statistic::ZeroFrac),
            nonfinite: column(Statistic::Nonfinite),
            underflow: column(Statistic::Underflow),
            weight_norm: column(Statistic::WeightNorm),
            update_ratio: column(Statistic::UpdateRatio),
            hist: (s % 7 == 1).then(|| vec![1; LAYERS * HIST_BINS]),
        };
        StepReport {
            step: s,
            loss: 1.0,
            grad_norm: 1.0,
            grad_norm_clipped: 1.0,
            clip_coef: 1.0,
            lr: 1e-3,
            skipped: false,
            loss_scale: None,
            overflow: false,
            layers: Some(stats),
            probes: Default::default(),
            seconds: 0.01,
        }
    }

    /// What the rule keeps of `layer` over `reports` (the recorded steps in range, in
    /// order), computed from the values as written.
    fn expected(reports: &[StepReport], layer: usize, stats: &[Statistic], max_points: usize) -> Vec<i64> {
        let columns: Vec<Vec<Option<f64>>> = stats
            .iter()
            .map(|&stat| {
                reports
                    .iter()
                    .map(|r| {
                        let v = r.layers.as_ref().expect("stats").get(stat)[layer] as f32;
                        v.is_finite().then_some(f64::from(v))
                    })
                    .collect()
            })
            .collect();
        let reads: Vec<Box<dyn Fn(usize) -> Option<f64> + '_>> =
            columns.iter().map(|c| Box::new(move |i: usize| c[i]) as Box<dyn Fn(usize) -> Option<f64>>).collect();
        let series: Vec<&dyn Fn(usize) -> Option<f64>> = reads.iter().map(|r| r.as_ref()).collect();
        keep_extremes(reports.len(), max_points, &series).iter().map(|&i| reports[i].step as i64).collect()
    }

    async fn check(store: &Store, id: Uuid, reports: &[StepReport], layers: &[LayerInfo]) {
        for (stats, range, max_points) in [
            (vec![Statistic::GradNorm], (0, i64::MAX), 30),
            (Statistic::ALL.to_vec(), (0, i64::MAX), 100),
            (vec![Statistic::GradMean, Statistic::UpdateRatio], (37, 2_900), 55),
            (vec![Statistic::GradMax], (100, 140), 10),
        ] {
            let selection = StatSelection { statistics: stats.clone(), hist: false };
            let answer = store.layer_stats(id, layers, &selection, range, max_points, u64::MAX).await.expect("stats");
            let in_range: Vec<StepReport> =
                reports.iter().filter(|r| (range.0..=range.1).contains(&(r.step as i64))).cloned().collect();
            for (l, series) in answer.iter().enumerate() {
                let want = expected(&in_range, l, &stats, max_points);
                assert_eq!(series.step, want, "layer {l}, {stats:?}, {range:?}, {max_points} points");
                // Each kept value is the one written at its step.
                let kept = series.clone().column_mut(stats[0]).clone().expect("column");
                for (&step, got) in series.step.iter().zip(kept) {
                    let written = reports.iter().find(|r| r.step as i64 == step).expect("a written step");
                    let v = written.layers.as_ref().expect("stats").get(stats[0])[l] as f32;
                    assert_eq!(got, v.is_finite().then_some(v), "layer {l} step {step}");
                }
            }
        }
    }

    /// Thinning from the stored blocks keeps exactly what the rule keeps over the rows,
    /// written in batches of any size, and again after a resume removed the rows past its
    /// checkpoint and wrote different ones.
    #[tokio::test]
    async fn layer_thinning_from_blocks_keeps_what_the_rule_keeps_across_a_resume_on_sqlite() {
        let (store, _dir) = test_store(Backend::Sqlite).await;
        layer_thinning_from_blocks_keeps_what_the_rule_keeps_across_a_resume(&store).await;
    }

    #[tokio::test]
    async fn layer_thinning_from_blocks_keeps_what_the_rule_keeps_across_a_resume_on_postgres() {
        let (store, _db) = test_store(Backend::Postgres).await;
        layer_thinning_from_blocks_keeps_what_the_rule_keeps_across_a_resume(&store).await;
    }

    async fn layer_thinning_from_blocks_keeps_what_the_rule_keeps_across_a_resume(store: &Store) {
        let spec = serde_json::from_str(r#"{"task":{"kind":"classification"},"model":{"kind":"mlp"}}"#).expect("spec");
        let job = store.insert_job(&spec).await.expect("job");
        let layers: Vec<LayerInfo> =
            (0..LAYERS).map(|i| LayerInfo { index: i, name: format!("l{i}"), shape: vec![4], numel: 4 }).collect();
        store.set_job_started(job.id, "cpu", &layers).await.expect("started");
        let mut reports: Vec<StepReport> = (1..=3_000).map(|s| report(s, 0)).collect();
        for batch in reports.chunks(97) {
            store.record_progress(job.id, &Progress { steps: batch, ..Progress::default() }).await.expect("write");
        }
        check(store, job.id, &reports, &layers).await;

        // Resume after step 2,000: later rows go, and so do the blocks that reach past them.
        store.finish_job(job.id, JobStatus::Cancelled, None).await.expect("cancel");
        assert!(store.requeue_to_resume(job.id, 2_000, 10).await.expect("resume"));
        let blocks: i64 = store
            .pool
            .query("SELECT COUNT(*) FROM layer_rollups WHERE job_id = ? AND last_n > 2000")
            .bind(job.id.to_string())
            .fetch_scalar()
            .await
            .expect("count");
        assert_eq!(blocks, 0);
        reports.truncate(2_000);
        let later: Vec<StepReport> = (2_001..=3_100).map(|s| report(s, 5)).collect();
        for batch in later.chunks(250) {
            store.record_progress(job.id, &Progress { steps: batch, ..Progress::default() }).await.expect("write");
        }
        reports.extend(later);
        check(store, job.id, &reports, &layers).await;
        // As many blocks as whole 16^k runs of rows, no more.
        let per_level: Vec<(i64, i64)> = store
            .pool
            .query("SELECT level, COUNT(*) FROM layer_rollups WHERE job_id = ? GROUP BY level ORDER BY level")
            .bind(job.id.to_string())
            .fetch_all()
            .await
            .expect("blocks")
            .iter()
            .map(|row| (row.try_get(0).expect("level"), row.try_get(1).expect("count")))
            .collect();
        assert_eq!(per_level, vec![(1, 3_100 / 16), (2, 3_100 / 256)]);
    }
}
