//! Downsampling that keeps spikes: the range is cut into buckets and each bucket keeps the
//! rows where a series reaches its minimum or maximum, plus its first non-finite row, so a
//! single exploding step survives any zoom level.

/// Fewest points a downsampled answer may ask for.
pub const MIN_POINTS: usize = 10;

/// Indices (ascending) of at most `max_points` of `len` rows to keep. `series` reads a
/// value of row `i`; `None` means non-finite.
pub fn keep_extremes(len: usize, max_points: usize, series: &[&dyn Fn(usize) -> Option<f64>]) -> Vec<usize> {
    if len <= max_points {
        return (0..len).collect();
    }
    // A bucket keeps up to the min and max of each series and one non-finite row.
    let per_bucket = 2 * series.len() + 1;
    let buckets = (max_points / per_bucket).max(1);
    let mut keep = Vec::with_capacity(buckets * per_bucket);
    for b in 0..buckets {
        let (start, end) = (b * len / buckets, (b + 1) * len / buckets);
        let mut chosen: Vec<usize> = Vec::with_capacity(per_bucket);
        for read in series {
            let mut min: Option<(usize, f64)> = None;
            let mut max: Option<(usize, f64)> = None;
            for i in start..end {
                let Some(v) = read(i) else { continue };
                if min.is_none_or(|(_, m)| v < m) {
                    min = Some((i, v));
                }
                if max.is_none_or(|(_, m)| v > m) {
                    max = Some((i, v));
                }
            }
            chosen.extend(min.map(|(i, _)| i));
            chosen.extend(max.map(|(i, _)| i));
        }
        chosen.extend((start..end).find(|&i| series.iter().any(|read| read(i).is_none())));
        if chosen.is_empty() && start < end {
            chosen.push(start);
        }
        chosen.sort_unstable();
        chosen.dedup();
        keep.extend(chosen);
    }
    if keep.len() > max_points {
        // Many series and few points: not every extreme fits; spread what does evenly.
        keep = (0..max_points).map(|k| keep[k * keep.len() / max_points]).collect();
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ranges_are_kept_whole() {
        assert_eq!(keep_extremes(5, 10, &[&|i| Some(i as f64)]), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_single_spike_survives() {
        let values: Vec<f64> = (0..10_000).map(|i| if i == 7_777 { 1e6 } else { 1.0 + (i % 7) as f64 }).collect();
        let read = |i: usize| Some(values[i]);
        let kept = keep_extremes(values.len(), 100, &[&read]);
        assert!(kept.len() <= 100);
        assert!(kept.contains(&7_777));
        assert!(kept.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn non_finite_rows_survive() {
        let read = |i: usize| if i == 4_321 { None } else { Some(1.0) };
        let kept = keep_extremes(10_000, 50, &[&read]);
        assert!(kept.contains(&4_321));
    }
}
