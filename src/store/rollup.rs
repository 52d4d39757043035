//! Pre-aggregated levels of a job's history, so that thinning a long range reads about as
//! much as it answers and not every row.
//!
//! Rows of a series (`steps`, `layer_stats`) are numbered 1, 2, 3 … in step order (`n`).
//! A block of level k holds [`BASE`]^k consecutive rows: block b covers rows b·16^k + 1 to
//! (b+1)·16^k. For every series it covers (each statistic of each layer, or the loss and
//! the gradient norm) a block keeps a [`Cell`]: its smallest and largest finite value with
//! the row where each first occurs, and its first row with a non-finite value. That is
//! what the thinning rule of [`super::downsample::keep_extremes`] reads from a bucket, and
//! cells of consecutive pieces merge into the cell of their union, so any bucket is the
//! merge of a few blocks and at most `2·(BASE − 1)` loose rows per level
//! ([`pieces`]).
//!
//! The store writer adds a block when its last row arrives (bounded work per step: a
//! level-1 block reads its 16 rows, a level-k block its 16 children); truncating a job
//! deletes the blocks that reach past its new end, and deleting a job deletes them all.

/// Rows per block of level 1; each level's blocks hold `BASE` of the level below.
pub const BASE: u64 = 16;
/// The highest level: blocks of 16⁵ = 1,048,576 rows (a job has at most 10,000,000 steps).
pub const MAX_LEVEL: u32 = 5;

/// Rows per block of `level`.
pub fn block_rows(level: u32) -> u64 {
    BASE.pow(level)
}

/// What thinning needs of one series over consecutive rows. Row numbers are `n`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cell {
    /// The smallest finite value and the first row holding it.
    pub min: Option<(f64, u32)>,
    /// The largest finite value and the first row holding it.
    pub max: Option<(f64, u32)>,
    /// The first row whose value is not finite (NaN, ±Inf, or none).
    pub bad: Option<u32>,
}

impl Cell {
    /// The cell of one row.
    pub fn of(value: Option<f64>, n: u32) -> Self {
        match value.filter(|v| v.is_finite()) {
            Some(v) => Self { min: Some((v, n)), max: Some((v, n)), bad: None },
            None => Self { min: None, max: None, bad: Some(n) },
        }
    }

    /// The cell of `self`'s rows followed by `later`'s: ties keep the earlier row.
    #[must_use]
    pub fn then(self, later: Self) -> Self {
        let pick = |a: Option<(f64, u32)>, b: Option<(f64, u32)>, better: fn(f64, f64) -> bool| match (a, b) {
            (Some(x), Some(y)) => Some(if better(y.0, x.0) { y } else { x }),
            (x, y) => x.or(y),
        };
        Self {
            min: pick(self.min, later.min, |y, x| y < x),
            max: pick(self.max, later.max, |y, x| y > x),
            bad: self.bad.or(later.bad),
        }
    }
}

/// How wide a cell's stored values are: float32 for per-layer statistics (stored as
/// float32 already), float64 for the per-step scalars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    F32,
    F64,
}

impl Width {
    fn value_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F64 => 8,
        }
    }

    /// Bytes of one stored cell: two values and three row numbers.
    pub fn cell_bytes(self) -> usize {
        2 * self.value_bytes() + 12
    }
}

const NO_ROW: u32 = u32::MAX;

/// Cells as a little-endian BLOB: per cell the minimum, its row, the maximum, its row, the
/// first non-finite row (`u32::MAX` and NaN for none).
pub fn encode(cells: &[Cell], width: Width) -> Vec<u8> {
    let mut out = Vec::with_capacity(cells.len() * width.cell_bytes());
    let value = |out: &mut Vec<u8>, v: f64| match width {
        Width::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
        Width::F64 => out.extend_from_slice(&v.to_le_bytes()),
    };
    for cell in cells {
        for extreme in [cell.min, cell.max] {
            let (v, n) = extreme.unwrap_or((f64::NAN, NO_ROW));
            value(&mut out, v);
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&cell.bad.unwrap_or(NO_ROW).to_le_bytes());
    }
    out
}

/// Cell `i` of a BLOB written by [`encode`]; `None` past its end.
pub fn decode(blob: &[u8], width: Width, i: usize) -> Option<Cell> {
    let bytes = blob.get(i * width.cell_bytes()..(i + 1) * width.cell_bytes())?;
    let w = width.value_bytes();
    let row = |at: usize| {
        let n = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0xff; 4]));
        (n != NO_ROW).then_some(n)
    };
    let value = |at: usize| match width {
        Width::F32 => f64::from(f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]))),
        Width::F64 => f64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8])),
    };
    let extreme = |at: usize| row(at + w).map(|n| (value(at), n));
    Some(Cell { min: extreme(0), max: extreme(w + 4), bad: row(2 * w + 8) })
}

/// A part of a range of rows: loose rows `first..=last`, or a whole block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    Rows { first: u64, last: u64 },
    Block { level: u32, block: u64 },
}

/// Rows `first..=last` (1-based) as the fewest whole blocks and loose rows, in order: at
/// each point the largest block that starts there and ends within the range. At most
/// `2·(BASE − 1)` pieces of each level and of loose rows, plus whole top-level blocks.
pub fn pieces(first: u64, last: u64) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    // `p` rows come before the next piece.
    let mut p = first.saturating_sub(1);
    while p < last {
        let level = (1..=MAX_LEVEL).rev().find(|&k| p.is_multiple_of(block_rows(k)) && p + block_rows(k) <= last);
        match level {
            Some(level) => {
                out.push(Piece::Block { level, block: p / block_rows(level) });
                p += block_rows(level);
            }
            None => {
                if let Some(Piece::Rows { last: end, .. }) = out.last_mut()
                    && *end == p
                {
                    *end = p + 1;
                } else {
                    out.push(Piece::Rows { first: p + 1, last: p + 1 });
                }
                p += 1;
            }
        }
    }
    out
}

/// The blocks that the rows `after + 1 ..= upto` complete, lowest level first (so that each
/// block's children exist when it is built).
pub fn completed(after: u64, upto: u64) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    for level in 1..=MAX_LEVEL {
        let size = block_rows(level);
        // Blocks whose last row (b + 1)·size lies in (after, upto].
        for block in after / size..upto / size {
            out.push((level, block));
        }
    }
    out
}

/// Rows a thinned query reads at most, loose or as blocks, for `buckets` buckets over
/// `rows` rows, before it reads the rows it keeps: the bound its cost checks use.
pub fn read_bound(rows: u64, buckets: u64) -> u64 {
    let levels = u64::from((1..=MAX_LEVEL).take_while(|&k| block_rows(k) <= rows).count() as u32);
    let per_bucket = 2 * (BASE - 1) * (levels + 1) + rows / block_rows(MAX_LEVEL) + 1;
    rows.min(buckets.saturating_mul(per_bucket))
}

/// The rows a thinned bucket keeps, from the cells of its series (`None` for a series with
/// no cell): the rows of each series' minimum and maximum and the first row where any is
/// not finite, ascending; the bucket's first row when it has none of these.
pub fn kept_rows(first: u32, cells: &[Cell]) -> Vec<u32> {
    let mut chosen: Vec<u32> = Vec::with_capacity(2 * cells.len() + 1);
    for cell in cells {
        chosen.extend(cell.min.map(|(_, n)| n));
        chosen.extend(cell.max.map(|(_, n)| n));
    }
    chosen.extend(cells.iter().filter_map(|c| c.bad).min());
    if chosen.is_empty() {
        chosen.push(first);
    }
    chosen.sort_unstable();
    chosen.dedup();
    chosen
}

/// The buckets of the thinning rule over rows `first..=last`: `buckets` runs of
/// consecutive rows, bucket b holding positions b·count/buckets up to, not including,
/// (b+1)·count/buckets, as row numbers `(first, last)`; empty buckets left out.
pub fn buckets(first: u64, last: u64, buckets: u64) -> Vec<(u64, u64)> {
    let count = last + 1 - first;
    (0..buckets)
        .filter_map(|b| {
            let (start, end) = (b * count / buckets, (b + 1) * count / buckets);
            (start < end).then(|| (first + start, first + end - 1))
        })
        .collect()
}

/// `keep` (ascending) spread evenly down to `max_points` when it has more, as
/// [`super::downsample::keep_extremes`] does.
pub fn spread(keep: Vec<u32>, max_points: usize) -> Vec<u32> {
    if keep.len() <= max_points {
        return keep;
    }
    (0..max_points).map(|k| keep[k * keep.len() / max_points]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::downsample::keep_extremes;

    fn covered(pieces: &[Piece]) -> Vec<u64> {
        pieces
            .iter()
            .flat_map(|p| match *p {
                Piece::Rows { first, last } => (first..=last).collect::<Vec<_>>(),
                Piece::Block { level, block } => {
                    let size = block_rows(level);
                    (block * size + 1..=(block + 1) * size).collect()
                }
            })
            .collect()
    }

    #[test]
    fn pieces_cover_the_range_once_in_order_with_few_loose_rows() {
        for (first, last) in [(1, 1), (1, 16), (1, 17), (5, 300), (16, 4097), (17, 1_000_000), (3, 2_500_123)] {
            let p = pieces(first, last);
            assert_eq!(covered(&p), (first..=last).collect::<Vec<_>>(), "{first}..={last}");
            let loose: u64 =
                p.iter().map(|x| if let Piece::Rows { first, last } = x { last - first + 1 } else { 0 }).sum();
            assert!(loose <= 2 * (BASE - 1), "{first}..={last}: {loose} loose rows");
            for level in 1..MAX_LEVEL {
                let n = p.iter().filter(|x| matches!(x, Piece::Block { level: l, .. } if *l == level)).count();
                assert!(n as u64 <= 2 * (BASE - 1), "{first}..={last}: {n} blocks of level {level}");
            }
            assert!(p.len() as u64 <= read_bound(last - first + 1, 1).max(1), "{first}..={last}");
        }
    }

    #[test]
    fn completed_blocks_are_built_children_first() {
        assert_eq!(completed(0, 15), vec![]);
        assert_eq!(completed(0, 16), vec![(1, 0)]);
        assert_eq!(completed(250, 260), vec![(1, 15), (2, 0)]);
        let all = completed(0, 70_000);
        assert_eq!(all.iter().filter(|b| b.0 == 1).count(), 70_000 / 16);
        assert_eq!(all.iter().filter(|b| b.0 == 4).count(), 1);
        // Appending in batches completes the same blocks as appending at once.
        let batched: Vec<_> =
            [(0, 1000), (1000, 1023), (1023, 70_000)].iter().flat_map(|&(a, b)| completed(a, b)).collect();
        let mut sorted = batched.clone();
        sorted.sort_unstable();
        let mut once = all.clone();
        once.sort_unstable();
        assert_eq!(sorted, once);
    }

    #[test]
    fn cells_merge_to_the_cell_of_their_rows_and_survive_encoding() {
        let values: Vec<Option<f64>> = (0..500)
            .map(|i| match i {
                77 | 300 => None,
                123 => Some(f64::INFINITY),
                _ => Some(((i * 7919) % 13) as f64 - 6.0),
            })
            .collect();
        let row = |i: usize| Cell::of(values[i], i as u32 + 1);
        let all = (1..values.len()).fold(row(0), |acc, i| acc.then(row(i)));
        // Independently: the first minimum, the first maximum, the first non-finite.
        let finite: Vec<(usize, f64)> = values.iter().enumerate().filter_map(|(i, v)| v.map(|v| (i, v))).collect();
        let finite: Vec<_> = finite.into_iter().filter(|(_, v)| v.is_finite()).collect();
        let min = finite.iter().fold(f64::INFINITY, |m, &(_, v)| m.min(v));
        let max = finite.iter().fold(f64::NEG_INFINITY, |m, &(_, v)| m.max(v));
        let first = |x: f64| finite.iter().find(|&&(_, v)| v == x).map(|&(i, _)| i as u32 + 1).expect("present");
        assert_eq!(all.min, Some((min, first(min))));
        assert_eq!(all.max, Some((max, first(max))));
        assert_eq!(all.bad, Some(78));
        // Merging blocks gives the same cell as merging rows.
        let blocks: Vec<Cell> = values
            .chunks(16)
            .enumerate()
            .map(|(b, c)| (1..c.len()).fold(row(b * 16), |a, i| a.then(row(b * 16 + i))))
            .collect();
        let merged = blocks[1..].iter().fold(blocks[0], |a, &c| a.then(c));
        assert_eq!(merged, all);
        for width in [Width::F32, Width::F64] {
            let blob = encode(&blocks, width);
            assert_eq!(blob.len(), blocks.len() * width.cell_bytes());
            for (i, cell) in blocks.iter().enumerate() {
                assert_eq!(decode(&blob, width, i), Some(*cell));
            }
            assert_eq!(decode(&blob, width, blocks.len()), None);
        }
        assert_eq!(Cell::of(None, 5).then(Cell::default()), Cell { min: None, max: None, bad: Some(5) });
    }

    /// Thinning from blocks keeps exactly what the in-memory rule keeps over the rows.
    #[test]
    fn thinning_from_blocks_keeps_what_the_rule_keeps() {
        let len = 5_000_usize;
        let a: Vec<Option<f64>> =
            (0..len).map(|i| if i % 997 == 5 { None } else { Some(((i * 31) % 101) as f64) }).collect();
        let b: Vec<Option<f64>> =
            (0..len).map(|i| Some(((i * 17) % 7) as f64 * if i == 4_321 { 1e9 } else { 1.0 })).collect();
        let level1 = |s: &[Option<f64>], k: usize| {
            (k * 16..(k + 1) * 16).map(|i| Cell::of(s[i], i as u32 + 1)).reduce(Cell::then).expect("rows")
        };
        let cell_of = |s: &[Option<f64>], piece: Piece| match piece {
            Piece::Rows { first, last } => {
                (first..=last).map(|n| Cell::of(s[n as usize - 1], n as u32)).reduce(Cell::then).expect("rows")
            }
            Piece::Block { level, block } => {
                // Its level-1 blocks, built from their rows.
                let per = block_rows(level - 1) as usize;
                (block as usize * per..(block as usize + 1) * per)
                    .map(|k| level1(s, k))
                    .reduce(Cell::then)
                    .expect("rows")
            }
        };
        for (first, last) in [(1_u64, len as u64), (37, 4_999), (1_000, 1_700)] {
            for max_points in [10, 55, 600] {
                let rows = (last - first + 1) as usize;
                let ra = |i: usize| a[first as usize - 1 + i];
                let rb = |i: usize| b[first as usize - 1 + i];
                let expected: Vec<u32> =
                    keep_extremes(rows, max_points, &[&ra, &rb]).iter().map(|&i| (i as u64 + first) as u32).collect();
                let mut keep = Vec::new();
                for (s, e) in buckets(first, last, (max_points / 5).max(1) as u64) {
                    let cells: Vec<Cell> = [&a, &b]
                        .iter()
                        .map(|series| {
                            pieces(s, e).into_iter().map(|p| cell_of(series, p)).reduce(Cell::then).expect("cell")
                        })
                        .collect();
                    keep.extend(kept_rows(s as u32, &cells));
                }
                assert_eq!(spread(keep, max_points), expected, "{first}..={last}, {max_points} points");
            }
        }
    }
}
