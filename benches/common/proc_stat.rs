//! This process's and its threads' counters from Linux's `/proc` (`stat(5)`), for the
//! benchmarks that include this file (`#[path]`; a folder under `benches/` is no benchmark
//! of its own). Each benchmark uses a part.
#![allow(dead_code)]

/// The kernel's clock ticks per second for `/proc` times (USER_HZ, 100 on Linux).
pub const TICKS: f64 = 100.0;

/// This process's `stat(5)` line (empty where it cannot be read, so every field is NaN).
pub fn own_stat() -> String {
    std::fs::read_to_string("/proc/self/stat").unwrap_or_default()
}

/// Field `field` of a `stat(5)` line, numbered as stat(5) numbers them (after the name in
/// parentheses the state is field 3); NaN where it is missing.
pub fn stat_field(stat: &str, field: usize) -> f64 {
    stat.rfind(')')
        .and_then(|close| stat[close + 1..].split_whitespace().nth(field - 3))
        .and_then(|f| f.parse().ok())
        .unwrap_or(f64::NAN)
}

/// CPU seconds of a `stat(5)` line: utime (field 14) and stime (15).
pub fn stat_cpu(stat: &str) -> f64 {
    (stat_field(stat, 14) + stat_field(stat, 15)) / TICKS
}

/// Each live thread of this process, from `/proc/self/task`: its id, its name and its CPU
/// seconds (user + system). A thread that ends while they are read is left out.
pub fn threads() -> std::io::Result<Vec<(u32, String, f64)>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?;
        let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        threads.push((tid, stat[open + 1..close].to_owned(), stat_cpu(&stat)));
    }
    Ok(threads)
}
