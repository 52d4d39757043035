//! The pre-aggregated blocks of [`super::rollup`] in the database: written as rows
//! arrive, read to thin long ranges, rebuilt for jobs stored before they existed.

use std::collections::HashMap;

use super::Store;
use super::db::Tx;
use super::rollup::{self, Cell, Piece, Width};
use super::steps::NUMBER_BYTES;
use crate::vocab::Statistic;

/// Cells of loose rows, by row number.
pub(super) type RowCells = HashMap<u64, Vec<Cell>>;
/// Stored blocks' cells, by level and block.
pub(super) type Blocks = HashMap<(u32, u64), Vec<u8>>;

/// Numbers in a block row beside its cells: level, block, last row.
pub(super) const ROLLUP_NUMBERS: usize = 3;

/// The row number of the last `table` row of a job (0 for none).
pub(super) async fn last_row(tx: &mut Tx, table: &str, job_id: &str) -> anyhow::Result<u64> {
    let n: i64 = tx
        .query(&format!("SELECT COALESCE(MAX(n), 0) FROM {table} WHERE job_id = ?"))
        .bind(job_id)
        .fetch_scalar()
        .await?;
    Ok(u64::try_from(n)?)
}

/// Row numbers `first..=last` of the job's `table` rows with steps in `from..=to`, if any:
/// found through the index, so a range costs the same whatever its length.
pub(super) async fn row_range(
    tx: &mut Tx,
    table: &str,
    job_id: &str,
    (from, to): (i64, i64),
) -> anyhow::Result<Option<(u64, u64)>> {
    let first: Option<i64> = tx
        .query(&format!("SELECT n FROM {table} WHERE job_id = ? AND step >= ? AND step <= ? ORDER BY step LIMIT 1"))
        .bind(job_id)
        .bind(from)
        .bind(to)
        .fetch_optional_scalar()
        .await?;
    let last: Option<i64> = tx
        .query(&format!(
            "SELECT n FROM {table} WHERE job_id = ? AND step >= ? AND step <= ? ORDER BY step DESC LIMIT 1"
        ))
        .bind(job_id)
        .bind(from)
        .bind(to)
        .fetch_optional_scalar()
        .await?;
    Ok(match (first, last) {
        (Some(a), Some(b)) => Some((u64::try_from(a)?, u64::try_from(b)?)),
        _ => None,
    })
}

/// Stores the blocks that rows `after + 1 ..= upto` complete; returns the bytes written.
/// `rows_of` gives the cells of rows `first..=last` (one per row, each a cell per series),
/// `cells_per_block` how many cells a block holds.
pub(super) async fn store_blocks(
    tx: &mut Tx,
    table: &str,
    job_id: &str,
    (after, upto): (u64, u64),
    width: Width,
    rows: &HashMap<u64, Vec<Cell>>,
) -> anyhow::Result<usize> {
    let mut written = 0;
    let insert = format!("INSERT INTO {table} (job_id, level, block, last_n, cells) VALUES (?, ?, ?, ?, ?)");
    for (level, block) in rollup::completed(after, upto) {
        let first_child = block * rollup::BASE;
        // Merged in place: a block of 100 layers holds 800 cells.
        let mut merged: Vec<Cell> = Vec::new();
        let mut fold = |cells: &mut dyn Iterator<Item = Cell>| {
            if merged.is_empty() {
                merged.extend(cells);
            } else {
                for (acc, cell) in merged.iter_mut().zip(cells) {
                    *acc = acc.then(cell);
                }
            }
        };
        if level == 1 {
            for n in first_child + 1..=first_child + rollup::BASE {
                let cells = rows.get(&n).ok_or_else(|| anyhow::anyhow!("row {n} of {table} is missing"))?;
                fold(&mut cells.iter().copied());
            }
        } else {
            let children = tx
                .query(&format!(
                    "SELECT cells FROM {table} WHERE job_id = ? AND level = ? AND block BETWEEN ? AND ? ORDER BY block"
                ))
                .bind(job_id)
                .bind(i64::from(level - 1))
                .bind(i64::try_from(first_child)?)
                .bind(i64::try_from(first_child + rollup::BASE - 1)?)
                .fetch_all()
                .await?;
            let children: Vec<Vec<u8>> = children.iter().map(|row| row.try_get(0)).collect::<Result<_, _>>()?;
            anyhow::ensure!(children.len() as u64 == rollup::BASE, "a block of {table} lacks children");
            for blob in &children {
                let count = blob.len() / width.cell_bytes();
                fold(&mut (0..count).filter_map(|i| rollup::decode(blob, width, i)));
            }
        }
        let cells = rollup::encode(&merged, width);
        written += job_id.len() + ROLLUP_NUMBERS * NUMBER_BYTES + cells.len();
        tx.query(&insert)
            .bind(job_id)
            .bind(i64::from(level))
            .bind(i64::try_from(block)?)
            .bind(i64::try_from((block + 1) * rollup::block_rows(level))?)
            .bind(cells)
            .execute()
            .await?;
    }
    Ok(written)
}

/// Merges the cells of `pieces` in order, one per series: series `i` is cell
/// `row_cells[i]` of a loose row in `rows` and cell `block_cells[i]` of a block in `blocks`.
pub(super) fn merge_pieces(
    pieces: &[Piece],
    (rows, row_cells): (&RowCells, &[usize]),
    (blocks, block_cells): (&Blocks, &[usize]),
    width: Width,
) -> Vec<Cell> {
    let mut out = vec![Cell::default(); row_cells.len()];
    let mut started = false;
    let mut add = |cell_at: &dyn Fn(usize) -> Cell| {
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = if started { slot.then(cell_at(i)) } else { cell_at(i) };
        }
        started = true;
    };
    for piece in pieces {
        match *piece {
            Piece::Rows { first, last } => {
                for n in first..=last {
                    let row = rows.get(&n);
                    add(&|i| row.and_then(|r| r.get(row_cells[i]).copied()).unwrap_or_default());
                }
            }
            Piece::Block { level, block } => {
                let blob = blocks.get(&(level, block));
                add(&|i| blob.and_then(|b| rollup::decode(b, width, block_cells[i])).unwrap_or_default());
            }
        }
    }
    out
}

/// The blocks that `pieces` name, read from `table` in one query per level.
pub(super) async fn read_blocks(
    tx: &mut Tx,
    table: &str,
    job_id: &str,
    pieces: &[Piece],
) -> anyhow::Result<HashMap<(u32, u64), Vec<u8>>> {
    let mut out = HashMap::new();
    for level in 1..=rollup::MAX_LEVEL {
        let wanted: Vec<u64> = pieces
            .iter()
            .filter_map(|p| match *p {
                Piece::Block { level: l, block } if l == level => Some(block),
                _ => None,
            })
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let rows = tx
            .query(&format!(
                "SELECT block, cells FROM {table} WHERE job_id = ? AND level = ? AND block {}",
                tx.backend().in_json_integers()
            ))
            .bind(job_id)
            .bind(i64::from(level))
            .bind(serde_json::to_string(&wanted)?)
            .fetch_all()
            .await?;
        for row in &rows {
            let block: i64 = row.try_get(0)?;
            out.insert((level, u64::try_from(block)?), row.try_get::<Vec<u8>, _>(1)?);
        }
    }
    Ok(out)
}

/// Loose rows of `pieces`, as row numbers.
pub(super) fn loose_rows(pieces: &[Piece]) -> Vec<u64> {
    pieces
        .iter()
        .flat_map(|p| match *p {
            Piece::Rows { first, last } => (first..=last).collect(),
            Piece::Block { .. } => Vec::new(),
        })
        .collect()
}

/// Rows read at a time when rebuilding a job's blocks: a whole number of level-2 blocks.
const REBUILD_ROWS: u64 = 256;

impl Store {
    /// Builds the blocks of jobs stored before blocks existed (their rows were numbered by
    /// the migration that added them), once, at start-up.
    pub(super) async fn build_missing_blocks(&self) -> anyhow::Result<()> {
        for (table, rows, width) in
            [("step_rollups", "steps", Width::F64), ("layer_rollups", "layer_stats", Width::F32)]
        {
            let jobs = self
                .pool
                .query(&format!(
                    "SELECT id FROM jobs WHERE EXISTS (SELECT 1 FROM {rows} WHERE job_id = jobs.id AND n = ?)
                   AND NOT EXISTS (SELECT 1 FROM {table} WHERE job_id = jobs.id)"
                ))
                .bind(i64::try_from(rollup::BASE)?)
                .fetch_all()
                .await?;
            let jobs: Vec<String> = jobs.iter().map(|row| row.try_get(0)).collect::<Result<_, _>>()?;
            for job_id in jobs {
                // Reads, then writes: the write lock from the start.
                let mut tx = self.pool.begin_write().await?;
                tx.lock_job(&job_id).await?;
                let last = last_row(&mut tx, rows, &job_id).await?;
                let mut written = 0;
                for after in (0..last).step_by(REBUILD_ROWS as usize) {
                    let upto = (after + REBUILD_ROWS).min(last);
                    let cells = row_cells(&mut tx, rows, &job_id, (after + 1, upto)).await?;
                    written += store_blocks(&mut tx, table, &job_id, (after, upto), width, &cells).await?;
                }
                tx.query("UPDATE jobs SET stored_bytes = stored_bytes + ? WHERE id = ?")
                    .bind(i64::try_from(written)?)
                    .bind(&job_id)
                    .execute()
                    .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

/// The cells of a job's `table` rows `first..=last` (`steps`: loss and gradient norm;
/// `layer_stats`: each statistic of each layer, layer-major).
pub(super) async fn row_cells(
    tx: &mut Tx,
    table: &str,
    job_id: &str,
    (first, last): (u64, u64),
) -> anyhow::Result<HashMap<u64, Vec<Cell>>> {
    let columns = if table == "steps" {
        "loss, grad_norm".to_owned()
    } else {
        Statistic::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    };
    let rows = tx
        .query(&format!("SELECT n, {columns} FROM {table} WHERE job_id = ? AND n BETWEEN ? AND ?"))
        .bind(job_id)
        .bind(i64::try_from(first)?)
        .bind(i64::try_from(last)?)
        .fetch_all()
        .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in &rows {
        let n = u64::try_from(row.try_get::<i64, _>(0)?)?;
        let at = u32::try_from(n)?;
        let cells = if table == "steps" {
            vec![Cell::of(row.try_get(1)?, at), Cell::of(row.try_get(2)?, at)]
        } else {
            let blobs: Vec<Vec<u8>> = (1..=Statistic::ALL.len()).map(|i| row.try_get(i)).collect::<Result<_, _>>()?;
            layer_cells(&blobs, at)
        };
        out.insert(n, cells);
    }
    Ok(out)
}

/// The cells of a `layer_stats` row from its statistic blobs (float32 per layer, NaN
/// where absent): layer-major, statistics in [`Statistic::ALL`] order.
pub(super) fn layer_cells(blobs: &[Vec<u8>], n: u32) -> Vec<Cell> {
    let value =
        |b: &[u8], l: usize| b.get(l * 4..l * 4 + 4).map(|x| f64::from(f32::from_le_bytes([x[0], x[1], x[2], x[3]])));
    let layers = blobs.first().map_or(0, |b| b.len() / 4);
    (0..layers).flat_map(|l| blobs.iter().map(move |b| Cell::of(value(b, l), n))).collect()
}
