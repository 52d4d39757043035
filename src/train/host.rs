//! The flat buffers in host memory, read and written in place: every per-layer gradient
//! statistic in one pass per layer, and the optimizer's update in one pass that also
//! measures each layer's change.
//!
//! LibTorch's CPU operations each read the buffer once and each dispatch, allocate and
//! wake their thread pool; a dozen of them per step cost several times the arithmetic
//! they do (the README's performance section). Here a layer is read in blocks that fit the
//! L1 cache: a first sweep of a block takes its Σx (for the mean, in float64) and its Σx²
//! (the layer's part of the global norm, summed as [`sum_squares`] sums it on the steps
//! that record no statistics), a second its deviations from that mean (corrected two-pass:
//! Σd and Σd² both, so the rounding of the block's mean cancels), the largest |g| and the
//! zero count from the float's bits (NaN/±Inf counted only in a block whose largest bits
//! say it holds some); a separate sweep counts exponents for the histogram.
//! Blocks are combined in float64 by Chan, Golub and LeVeque's pairwise update. The update
//! rules compute what the same rules written as LibTorch operations compute, element by
//! element in float32.
//!
//! Where the CPU has AVX-512 the sweeps are written with its instructions ([`avx512`]:
//! float32 sums of four values at a time carried into float64, the counts from the
//! smallest |x|); elsewhere, and for a block whose values lie outside the range those
//! sums hold exactly, the loops are written for the compiler to vectorise and compiled
//! for the widest vector unit the CPU has (`multiversion`). Which way a block is swept
//! depends on the CPU and on the block's Σx² alone, so both passes sum a block's squares
//! the same way.
//!
//! With `fused.rs` (CUDA's kernels), this module holds the crate's `unsafe` code: views of
//! a CPU tensor's memory as slices, taken and dropped within each function while no
//! LibTorch operation runs (everything here runs on the training thread, between
//! operations), and the AVX-512 intrinsics.
#![allow(unsafe_code)]

use std::ops::Range;

use multiversion::multiversion;
use tch::{Device, Kind, Tensor};

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Elements per block: 16 KiB, well inside the L1 data cache.
const BLOCK: usize = 4096;
/// Independent accumulators per sweep: one or several vector registers' worth.
const LANES: usize = 16;
/// The bits of |x| (the sign cleared).
const ABS_BITS: u32 = 0x7fff_ffff;
/// |x| at or above these bits is ±Inf or NaN.
const INF_BITS: u32 = 0x7f80_0000;

/// One layer's gradient, summarised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradSummary {
    pub numel: u64,
    pub mean: f64,
    /// Σ(g − mean)².
    pub m2: f64,
    /// max |g|: NaN where g holds a NaN, +Inf where it holds infinities but no NaN.
    pub max_abs: f64,
    /// Elements exactly ±0.
    pub zeros: u64,
    /// Elements NaN or ±Inf.
    pub nonfinite: u64,
    /// Elements whose |g| is below the threshold [`grad_summaries`] was given (zeros
    /// included, NaN not).
    pub below: u64,
    /// Σg², a block at a time ([`square_lanes`]): the layer's part of the global norm.
    pub squares: f64,
}

/// One layer's weights against a snapshot taken before the update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightSummary {
    /// Σw².
    pub after: f64,
    /// Σ(w − w_before)².
    pub change: f64,
    /// Σw_before².
    pub before: f64,
}

/// The memory of `t` as a slice, when it is a contiguous float32 tensor on the CPU.
///
/// Safety: the slice is only read, and only while the caller runs no LibTorch operation,
/// so nothing writes the storage while it is borrowed; `t` outlives the borrow.
fn host_values(t: &Tensor) -> Option<&[f32]> {
    if t.device() != Device::Cpu || t.kind() != Kind::Float || !t.is_contiguous() || !t.defined() {
        return None;
    }
    let n = t.numel();
    if n == 0 {
        return Some(&[]);
    }
    let ptr = t.data_ptr() as *const f32;
    if ptr.is_null() || !(ptr as usize).is_multiple_of(std::mem::align_of::<f32>()) {
        return None;
    }
    // SAFETY: a defined, contiguous float32 CPU tensor of `n` elements owns at least
    // `n * 4` readable bytes at `data_ptr()`, aligned for f32 (checked above); the borrow
    // is tied to `t` and read while no operation writes the tensor (see above).
    Some(unsafe { std::slice::from_raw_parts(ptr, n) })
}

/// The summary of each layer of `grads` (layer `i` is `ranges[i]`) that `measured` names
/// (indices, ascending; `None` for every layer), counting the entries whose |g| is below
/// `tiny`; with Σg² over every layer, the sum [`sum_squares`] gives, bit for bit. `None`
/// when `grads` is not host memory.
pub fn grad_summaries(
    grads: &Tensor,
    ranges: &[Range<usize>],
    measured: Option<&[usize]>,
    tiny: f64,
) -> Option<(Vec<GradSummary>, f64)> {
    let values = host_values(grads)?;
    let below = below_bits(tiny);
    let mut chosen = measured.map(|m| m.iter().copied().peekable());
    let mut summaries = Vec::with_capacity(measured.map_or(ranges.len(), <[usize]>::len));
    let mut squares = 0.0;
    for (i, range) in ranges.iter().enumerate() {
        let layer = &values[range.clone()];
        let wanted = match &mut chosen {
            Some(chosen) => chosen.next_if_eq(&i).is_some(),
            None => true,
        };
        if wanted {
            let s = summarise_layer(layer, below);
            squares += s.squares;
            summaries.push(s);
        } else {
            squares += layer_squares(layer);
        }
    }
    Some((summaries, squares))
}

/// Σg² over every layer of `grads` (layer `i` is `ranges[i]`), a block at a time in the
/// same order and arithmetic as [`grad_summaries`], so both give the same bits: a step's
/// global norm does not depend on whether it records statistics. `None` when `grads` is
/// not host memory.
pub fn sum_squares(grads: &Tensor, ranges: &[Range<usize>]) -> Option<f64> {
    let values = host_values(grads)?;
    Some(ranges.iter().map(|range| layer_squares(&values[range.clone()])).fold(0.0, |total, s| total + s))
}

/// Each of `blocks`' mean and mean square, from float64 sums of its values and of their
/// squares, a block of [`BLOCK`] at a time (NaN for both where a block holds a NaN or an
/// infinity, or no element); `None` unless every block is host memory.
pub fn signal_moments(blocks: &[Tensor]) -> Option<Vec<(f64, f64)>> {
    blocks
        .iter()
        .map(|block| {
            let values = host_values(block)?;
            let (sum, squares) = values.chunks(BLOCK).fold((0.0, 0.0), |(sum, squares), b| {
                let (s, q) = block_sum_and_squares(b);
                (sum + s, squares + q)
            });
            let n = values.len() as f64;
            let (mean, square) = (sum / n, squares / n);
            Some(if mean.is_finite() && square.is_finite() { (mean, square) } else { (f64::NAN, f64::NAN) })
        })
        .collect()
}

/// The bits of `tiny` rounded to float32, as LibTorch compares a float32 tensor with it:
/// for |x| as bits, |x| < tiny exactly when its bits are below these (NaN's lie above
/// every finite float's).
pub fn below_bits(tiny: f64) -> u32 {
    if tiny.is_nan() || tiny <= 0.0 {
        return 0;
    }
    (tiny as f32).to_bits().min(INF_BITS)
}

/// Every layer's count of each float32 exponent field (256 per layer, layer after layer;
/// field 0 holds the zeros and the subnormals, 255 the NaNs and infinities). `None` when
/// `grads` is not host memory.
pub fn exponent_counts(grads: &Tensor, ranges: &[Range<usize>]) -> Option<Vec<i64>> {
    let values = host_values(grads)?;
    let mut counts = vec![0i64; 256 * ranges.len()];
    for (range, layer) in ranges.iter().zip(counts.chunks_exact_mut(256)) {
        for block in values[range.clone()].chunks(BLOCK) {
            count_exponents(block, layer);
        }
    }
    Some(counts)
}

/// Σw², Σ(w − b)² and Σb² of each layer of `weights` against `before` (laid out alike).
/// `None` when either is not host memory.
pub fn weight_summaries(weights: &Tensor, before: &Tensor, ranges: &[Range<usize>]) -> Option<Vec<WeightSummary>> {
    let (w, b) = (host_values(weights)?, host_values(before)?);
    if w.len() != b.len() {
        return None;
    }
    Some(ranges.iter().map(|r| compare_layer(&w[r.clone()], &b[r.clone()])).collect())
}

/// The memory of `t` as a mutable slice, on the conditions of [`host_values`].
///
/// Safety: as for [`host_values`], and the caller holds no other slice of the same
/// storage while this one lives ([`update`] checks that its buffers are disjoint).
fn host_values_mut(t: &mut Tensor) -> Option<&mut [f32]> {
    let n = host_values(t)?.len();
    if n == 0 {
        return Some(&mut []);
    }
    // SAFETY: the conditions checked by `host_values` hold; every mutable slice `update`
    // takes is of a different, non-overlapping storage (checked there), and LibTorch does
    // not touch the storage while the slice lives.
    Some(unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) })
}

/// Multiplies `values` by `factor` in place, each element rounded to float32 as LibTorch's
/// `mul_` by a float32 scalar rounds it (a factor of exactly 1 changes nothing and is
/// skipped). False, with nothing done, when `values` is not host memory.
pub fn scale(values: &mut Tensor, factor: f32) -> bool {
    let Some(values) = host_values_mut(values) else { return false };
    if factor != 1.0 {
        scale_values(values, factor);
    }
    true
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn scale_values(values: &mut [f32], factor: f32) {
    for v in values {
        *v *= factor;
    }
}

/// One optimizer update, with its constants in the precision LibTorch's scalar operations
/// on a float32 tensor use (float32), so that it computes what the same rule written as
/// LibTorch operations computes, in one pass instead of one per operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    Sgd(Sgd),
    Adam(Adam),
}

/// `torch.optim.SGD` without dampening: d = g + wd·w; buf = momentum·buf + d (buf = d on
/// the first update); d = d + momentum·buf (Nesterov) or buf; w ← w − lr·d.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sgd {
    pub lr: f32,
    pub wd: f32,
    pub momentum: f32,
    pub nesterov: bool,
    /// The momentum buffer is new: it takes d.
    pub initial: bool,
}

/// `torch.optim.Adam` (L2: g + wd·w) or `AdamW` (w ← w·decay first): m and v move toward
/// g and g² by `lerp`; w ← w − (m / (√v / √(1 − β₂ᵗ) + ε)) · lr / (1 − β₁ᵗ).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adam {
    pub wd: f32,
    pub decay: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub bias2_sqrt: f32,
    pub eps: f32,
    pub step_size: f32,
}

/// Applies `rule` to `weights` (and its state: `first` is SGD's momentum buffer or Adam's
/// first moment, `second` Adam's second moment) from `grads`, layer by layer: `layers`
/// gives each layer's elements and whether weight decay applies to it. Returns each
/// layer's [`WeightSummary`] of the change, measured on the way. `None`, with nothing
/// changed, when a buffer is not host memory or two of them share memory.
pub fn update(
    weights: &Tensor,
    grads: &Tensor,
    first: Option<&Tensor>,
    second: Option<&Tensor>,
    layers: &[(Range<usize>, bool)],
    rule: Rule,
) -> Option<Vec<WeightSummary>> {
    let buffers: Vec<&Tensor> = [Some(weights), Some(grads), first, second].into_iter().flatten().collect();
    let n = host_values(weights)?.len();
    for (i, a) in buffers.iter().enumerate() {
        if host_values(a)?.len() != n {
            return None;
        }
        let start = a.data_ptr() as usize;
        for b in &buffers[i + 1..] {
            let other = b.data_ptr() as usize;
            if start < other + 4 * n && other < start + 4 * n {
                return None;
            }
        }
    }
    if layers.iter().any(|(r, _)| r.end > n) {
        return None;
    }
    // Handles of their own, each lent out once, mutably.
    let (mut weights, mut first, mut second) =
        (weights.shallow_clone(), first.map(Tensor::shallow_clone), second.map(Tensor::shallow_clone));
    let g = host_values(grads)?;
    let w = host_values_mut(&mut weights)?;
    let mut first = match first.as_mut() {
        Some(t) => Some(host_values_mut(t)?),
        None => None,
    };
    let second = match second.as_mut() {
        Some(t) => Some(host_values_mut(t)?),
        None => None,
    };
    let mut summaries = Vec::with_capacity(layers.len());
    match rule {
        Rule::Sgd(sgd) => {
            for (range, decayed) in layers {
                let sgd = Sgd { wd: if *decayed { sgd.wd } else { 0.0 }, ..sgd };
                let (w, g) = (&mut w[range.clone()], &g[range.clone()]);
                let mut total = WeightSummary { after: 0.0, change: 0.0, before: 0.0 };
                match first.as_deref_mut() {
                    Some(buf) => {
                        let blocks = w.chunks_mut(BLOCK).zip(g.chunks(BLOCK)).zip(buf[range.clone()].chunks_mut(BLOCK));
                        for ((w, g), b) in blocks {
                            total.add(sgd_momentum_block(w, g, b, sgd));
                        }
                    }
                    None => {
                        for (w, g) in w.chunks_mut(BLOCK).zip(g.chunks(BLOCK)) {
                            total.add(sgd_block(w, g, sgd));
                        }
                    }
                }
                summaries.push(total);
            }
        }
        Rule::Adam(adam) => {
            let (m, v) = (first?, second?);
            for (range, decayed) in layers {
                let adam = if *decayed { adam } else { Adam { wd: 0.0, decay: 1.0, ..adam } };
                let mut total = WeightSummary { after: 0.0, change: 0.0, before: 0.0 };
                let blocks = w[range.clone()]
                    .chunks_mut(BLOCK)
                    .zip(g[range.clone()].chunks(BLOCK))
                    .zip(m[range.clone()].chunks_mut(BLOCK))
                    .zip(v[range.clone()].chunks_mut(BLOCK));
                for (((w, g), m), v) in blocks {
                    total.add(adam_block(w, g, m, v, adam));
                }
                summaries.push(total);
            }
        }
    }
    Some(summaries)
}

impl WeightSummary {
    fn add(&mut self, other: Self) {
        self.after += other.after;
        self.change += other.change;
        self.before += other.before;
    }
}

/// LibTorch's `lerp` on the CPU: `a + t·(b − a)` for |t| < 0.5, else `b − (b − a)·(1 − t)`.
#[inline(always)]
fn lerp(a: f32, b: f32, t: f32) -> f32 {
    if t.abs() < 0.5 { a + t * (b - a) } else { b - (b - a) * (1.0 - t) }
}

/// One block's Σw², Σ(w − w_before)² and Σw_before², in float32 lanes.
struct Sums {
    after: [f32; LANES],
    change: [f32; LANES],
    before: [f32; LANES],
}

impl Sums {
    fn new() -> Self {
        Self { after: [0.0; LANES], change: [0.0; LANES], before: [0.0; LANES] }
    }

    #[inline(always)]
    fn add(&mut self, lane: usize, old: f32, new: f32) {
        let d = new - old;
        self.after[lane] += new * new;
        self.change[lane] += d * d;
        self.before[lane] += old * old;
    }

    fn total(&self) -> WeightSummary {
        let sum = |a: &[f32; LANES]| f64::from(a.iter().sum::<f32>());
        WeightSummary { after: sum(&self.after), change: sum(&self.change), before: sum(&self.before) }
    }
}

#[inline(always)]
fn sgd_element(w: &mut f32, g: f32, sgd: Sgd) -> (f32, f32) {
    let old = *w;
    let d = if sgd.wd != 0.0 { g + old * sgd.wd } else { g };
    *w = old - d * sgd.lr;
    (old, *w)
}

#[inline(always)]
fn sgd_momentum_element(w: &mut f32, g: f32, b: &mut f32, sgd: Sgd) -> (f32, f32) {
    let old = *w;
    let d = if sgd.wd != 0.0 { g + old * sgd.wd } else { g };
    *b = if sgd.initial { d } else { *b * sgd.momentum + d };
    let d = if sgd.nesterov { d + *b * sgd.momentum } else { *b };
    *w = old - d * sgd.lr;
    (old, *w)
}

#[inline(always)]
fn adam_element(w: &mut f32, g: f32, m: &mut f32, v: &mut f32, adam: Adam) -> (f32, f32) {
    let old = *w;
    let grad = if adam.wd != 0.0 { g + old * adam.wd } else { g };
    let p = if adam.decay != 1.0 { old * adam.decay } else { old };
    *m = lerp(*m, grad, adam.one_minus_beta1);
    *v = lerp(*v, grad * grad, adam.one_minus_beta2);
    let denom = v.sqrt() / adam.bias2_sqrt + adam.eps;
    *w = p - (*m / denom) * adam.step_size;
    (old, *w)
}

// Each block below runs whole groups of `LANES` elements (each lane its own sums, so the
// compiler can keep them in vector registers), then the tail.

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn sgd_block(w: &mut [f32], g: &[f32], sgd: Sgd) -> WeightSummary {
    let mut sums = Sums::new();
    let full = w.len() / LANES * LANES;
    let (w, tail) = w.split_at_mut(full);
    let (g, g_tail) = g.split_at(full);
    for (w, g) in w.chunks_exact_mut(LANES).zip(g.chunks_exact(LANES)) {
        for l in 0..LANES {
            let (old, new) = sgd_element(&mut w[l], g[l], sgd);
            sums.add(l, old, new);
        }
    }
    for (w, &g) in tail.iter_mut().zip(g_tail) {
        let (old, new) = sgd_element(w, g, sgd);
        sums.add(0, old, new);
    }
    sums.total()
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn sgd_momentum_block(w: &mut [f32], g: &[f32], buf: &mut [f32], sgd: Sgd) -> WeightSummary {
    let mut sums = Sums::new();
    let full = w.len() / LANES * LANES;
    let (w, tail) = w.split_at_mut(full);
    let (g, g_tail) = g.split_at(full);
    let (buf, b_tail) = buf.split_at_mut(full);
    for ((w, g), b) in w.chunks_exact_mut(LANES).zip(g.chunks_exact(LANES)).zip(buf.chunks_exact_mut(LANES)) {
        for l in 0..LANES {
            let (old, new) = sgd_momentum_element(&mut w[l], g[l], &mut b[l], sgd);
            sums.add(l, old, new);
        }
    }
    for ((w, &g), b) in tail.iter_mut().zip(g_tail).zip(b_tail) {
        let (old, new) = sgd_momentum_element(w, g, b, sgd);
        sums.add(0, old, new);
    }
    sums.total()
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn adam_block(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], adam: Adam) -> WeightSummary {
    let mut sums = Sums::new();
    let full = w.len() / LANES * LANES;
    let (w, tail) = w.split_at_mut(full);
    let (g, g_tail) = g.split_at(full);
    let (m, m_tail) = m.split_at_mut(full);
    let (v, v_tail) = v.split_at_mut(full);
    let groups = w
        .chunks_exact_mut(LANES)
        .zip(g.chunks_exact(LANES))
        .zip(m.chunks_exact_mut(LANES))
        .zip(v.chunks_exact_mut(LANES));
    for (((w, g), m), v) in groups {
        for l in 0..LANES {
            let (old, new) = adam_element(&mut w[l], g[l], &mut m[l], &mut v[l], adam);
            sums.add(l, old, new);
        }
    }
    for (((w, &g), m), v) in tail.iter_mut().zip(g_tail).zip(m_tail).zip(v_tail) {
        let (old, new) = adam_element(w, g, m, v, adam);
        sums.add(0, old, new);
    }
    sums.total()
}

/// Blocks combined by Chan, Golub and LeVeque's update: exact in exact arithmetic, and
/// each block's float32 sums stay short.
#[derive(Debug, Clone, Copy, Default)]
struct Moments {
    n: f64,
    mean: f64,
    m2: f64,
}

impl Moments {
    fn merge(self, other: Self) -> Self {
        if other.n == 0.0 {
            return self;
        }
        if self.n == 0.0 {
            return other;
        }
        let n = self.n + other.n;
        let delta = other.mean - self.mean;
        Self { n, mean: self.mean + delta * other.n / n, m2: self.m2 + other.m2 + delta * delta * self.n * other.n / n }
    }
}

/// A block's Σ term(x), in float64 lanes, then the lanes and the tail in a fixed order:
/// Σx with `|x| x` ([`sum_lanes`]), Σx² with `|x| x * x` ([`square_lanes`]). Where a block
/// is swept by the portable loops, the norm's own pass and the statistics' pass both sum
/// its squares through this, so the sum has the same bits whichever pass takes it (Rust
/// neither reorders nor contracts float operations). In [`portable_summarise_block`] Σx²
/// is a sweep of its own: added to the sweep that sums the mean, it kept the compiler from
/// vectorising that loop, and the pass took 3× as long. Inlined into each vectorised
/// caller.
#[inline(always)]
fn lane_sum(block: &[f32], term: impl Fn(f64) -> f64) -> f64 {
    let chunks = block.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut lanes = [0f64; LANES];
    for c in chunks {
        for (lane, &x) in lanes.iter_mut().zip(c) {
            *lane += term(f64::from(x));
        }
    }
    lanes.iter().fold(0.0, |s, &lane| s + lane) + tail.iter().fold(0.0, |s, &x| s + term(f64::from(x)))
}

/// A block's Σx², as [`lane_sum`] takes it.
#[inline(always)]
fn square_lanes(block: &[f32]) -> f64 {
    lane_sum(block, |x| x * x)
}

/// A block's Σx, as [`lane_sum`] takes it.
#[inline(always)]
fn sum_lanes(block: &[f32]) -> f64 {
    lane_sum(block, |x| x)
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn portable_squares(block: &[f32]) -> f64 {
    square_lanes(block)
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn portable_sum(block: &[f32]) -> f64 {
    sum_lanes(block)
}

/// The AVX-512 sweeps, where the CPU runs them (and, in tests, unless [`PortableSweeps`]
/// holds them back).
#[cfg(target_arch = "x86_64")]
fn wide_sweeps() -> Option<avx512::Avx512> {
    #[cfg(test)]
    if PORTABLE.get() {
        return None;
    }
    avx512::Avx512::detect()
}

#[cfg(all(test, target_arch = "x86_64"))]
thread_local! {
    static PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Holds this thread's sweeps to the portable loops while it lives, so that tests cover
/// both ways on a CPU that has AVX-512.
#[cfg(test)]
pub(crate) struct PortableSweeps(());

#[cfg(test)]
impl PortableSweeps {
    pub(crate) fn hold() -> Self {
        #[cfg(target_arch = "x86_64")]
        PORTABLE.set(true);
        Self(())
    }
}

#[cfg(test)]
impl Drop for PortableSweeps {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        PORTABLE.set(false);
    }
}

/// A block's Σx², as both passes sum it: by [`avx512`] where it is used and the block is
/// in its range, else by the portable loop ([`square_lanes`]).
fn block_squares(block: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if let Some(wide) = wide_sweeps()
        && let Some(squares) = wide.squares(block)
    {
        return squares;
    }
    portable_squares(block)
}

/// A block's Σx and Σx² in float64, the same ways as [`block_squares`].
fn block_sum_and_squares(block: &[f32]) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if let Some(wide) = wide_sweeps()
        && let Some(sums) = wide.sum_and_squares(block)
    {
        return sums;
    }
    (portable_sum(block), portable_squares(block))
}

/// A layer's Σx², block by block in order, as [`summarise_layer`] sums it.
fn layer_squares(values: &[f32]) -> f64 {
    values.chunks(BLOCK).fold(0.0, |total, block| total + block_squares(block))
}

fn summarise_layer(values: &[f32], below_bits: u32) -> GradSummary {
    let (mut moments, mut max_bits, mut zeros, mut nonfinite) = (Moments::default(), 0u32, 0u64, 0u64);
    let (mut below, mut squares) = (0u64, 0.0);
    for block in values.chunks(BLOCK) {
        let b = summarise_block(block, below_bits);
        squares += b.squares;
        below += u64::from(b.below);
        moments = moments.merge(b.moments);
        max_bits = max_bits.max(b.max_bits);
        zeros += u64::from(b.zeros);
        nonfinite += u64::from(b.nonfinite);
    }
    let broken = nonfinite > 0;
    GradSummary {
        numel: values.len() as u64,
        mean: if broken { f64::NAN } else { moments.mean },
        m2: if broken { f64::NAN } else { moments.m2 },
        max_abs: f64::from(f32::from_bits(max_bits)),
        zeros,
        nonfinite,
        below,
        squares,
    }
}

struct BlockSummary {
    moments: Moments,
    squares: f64,
    max_bits: u32,
    zeros: u32,
    nonfinite: u32,
    below: u32,
}

/// A block's summary: by [`avx512`] where it is used and the block is in its range, else
/// by the portable loops.
fn summarise_block(block: &[f32], below_bits: u32) -> BlockSummary {
    #[cfg(target_arch = "x86_64")]
    if let Some(wide) = wide_sweeps()
        && let Some(sums) = wide.sums(block)
    {
        let n = block.len();
        // In range, every value is finite, and so is the mean.
        let mean = sums.sum / n as f64;
        let scale = Scale::of(sums.squares, n);
        let (s1, s2) = wide.deviations(block, scale.0, scale.shift(mean));
        // The counts only where the smallest |x| says the block holds some.
        let (zeros, below) = if sums.min_bits < below_bits.max(1) { count_small(block, below_bits) } else { (0, 0) };
        return BlockSummary {
            moments: Moments { n: n as f64, mean, m2: scale.m2(s1, s2, n) },
            squares: sums.squares,
            max_bits: sums.max_bits,
            zeros,
            nonfinite: 0,
            below,
        };
    }
    portable_summarise_block(block, below_bits)
}

/// A block's count of exact zeros and of |x| below `below_bits`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn count_small(block: &[f32], below_bits: u32) -> (u32, u32) {
    let bits = || block.iter().map(|x| x.to_bits() & ABS_BITS);
    (bits().map(|b| u32::from(b == 0)).sum(), bits().map(|b| u32::from(b < below_bits)).sum())
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn portable_summarise_block(block: &[f32], below_bits: u32) -> BlockSummary {
    let n = block.len();
    let chunks = block.chunks_exact(LANES);
    let tail = chunks.remainder();
    // The mean from float64 sums: a layer's mean is often a small difference of large
    // terms (a bias whose gradient sums to about zero), which float32 sums would lose.
    let total = sum_lanes(block);
    let squares = square_lanes(block);
    let mean = total / n as f64;
    // The deviations in float32: each is small against the values, and their squares
    // are summed over at most a block per lane; scaled by a power of two, so that they
    // square within float32's range.
    let scale = Scale::of(squares, n);
    let shift = scale.shift(mean);
    let (mut d1, mut d2, mut max, mut zeros) = ([0f32; LANES], [0f32; LANES], [0u32; LANES], [0u32; LANES]);
    let mut below = [0u32; LANES];
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] * scale.0 - shift;
            d1[i] += d;
            d2[i] += d * d;
            let bits = c[i].to_bits() & ABS_BITS;
            max[i] = max[i].max(bits);
            zeros[i] += u32::from(bits == 0);
            below[i] += u32::from(bits < below_bits);
        }
    }
    let wide = |a: [f32; LANES]| a.iter().map(|&x| f64::from(x)).sum::<f64>();
    let (mut s1, mut s2) = (wide(d1), wide(d2));
    let (mut max_bits, mut zero_count) = (max.into_iter().max().unwrap_or(0), zeros.iter().sum::<u32>());
    let mut below_count = below.iter().sum::<u32>();
    for &x in tail {
        let d = f64::from(x * scale.0 - shift);
        s1 += d;
        s2 += d * d;
        let bits = x.to_bits() & ABS_BITS;
        max_bits = max_bits.max(bits);
        zero_count += u32::from(bits == 0);
        below_count += u32::from(bits < below_bits);
    }
    // NaN and ±Inf sort above every finite |x| by their bits: counted only where present.
    let nonfinite = if max_bits >= INF_BITS {
        block.iter().map(|x| u32::from(x.to_bits() & ABS_BITS >= INF_BITS)).sum()
    } else {
        0
    };
    let moments = Moments { n: n as f64, mean, m2: scale.m2(s1, s2, n) };
    BlockSummary { moments, squares, max_bits, zeros: zero_count, nonfinite, below: below_count }
}

/// A power of two near 1 / (a block's root mean square). Scaled by it, the block's RMS
/// lies in [1, 2), so no value exceeds 128 (|x| ≤ √n · RMS, n ≤ 4096) nor any deviation
/// 256, and their squares stay within float32's range: the standard deviation holds for
/// gradients that vanish (1e-25) or explode (1e25) alike, where unscaled squares would
/// underflow to 0 or overflow to infinity. Being a power of two it loses no bits, but for
/// values 2¹²⁶ times below the block's RMS, which weigh nothing in its Σd².
#[derive(Debug, Clone, Copy)]
struct Scale(f32);

impl Scale {
    /// From a block's Σx² and length: 1 where the block is all zeros or not finite.
    fn of(squares: f64, n: usize) -> Self {
        let rms = (squares / n as f64).sqrt();
        if !(rms.is_finite() && rms > 0.0) {
            return Self(1.0);
        }
        // 2^-e for rms in [2^e, 2^(e+1)), within float32's normal powers of two.
        let e = ((rms.to_bits() >> 52) as i32 - 1023).clamp(-127, 126);
        Self(f32::from_bits(((127 - e) as u32) << 23))
    }

    /// The scaled shift the deviations are taken from (0 where the mean is not finite:
    /// the layer's moments are NaN anyway, and 0 keeps the sweep finite where it can be).
    fn shift(self, mean: f64) -> f32 {
        if mean.is_finite() { mean as f32 * self.0 } else { 0.0 }
    }

    /// Σ(x − m)² from the scaled deviations' Σd and Σd²: Σd² − (Σd)²/n (the rounding of
    /// the shift cancels), scaled back.
    fn m2(self, s1: f64, s2: f64, n: usize) -> f64 {
        let inverse = 1.0 / f64::from(self.0);
        (s2 - s1 * s1 / n as f64).max(0.0) * inverse * inverse
    }
}

/// Adds each element's exponent field to `counts` (256 of them). Four tables in turn, so
/// that consecutive elements of one exponent do not wait on each other's increment.
fn count_exponents(block: &[f32], counts: &mut [i64]) {
    let mut tables = [[0u32; 256]; 4];
    let chunks = block.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        for (table, &x) in tables.iter_mut().zip(c) {
            table[((x.to_bits() >> 23) & 0xff) as usize] += 1;
        }
    }
    for &x in tail {
        tables[0][((x.to_bits() >> 23) & 0xff) as usize] += 1;
    }
    for (e, count) in counts.iter_mut().enumerate() {
        *count += tables.iter().map(|t| i64::from(t[e])).sum::<i64>();
    }
}

fn compare_layer(w: &[f32], b: &[f32]) -> WeightSummary {
    let mut total = WeightSummary { after: 0.0, change: 0.0, before: 0.0 };
    for (wb, bb) in w.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let s = compare_block(wb, bb);
        total.after += s.after;
        total.change += s.change;
        total.before += s.before;
    }
    total
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn compare_block(w: &[f32], b: &[f32]) -> WeightSummary {
    let (mut after, mut change, mut before) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
    let (wc, bc) = (w.chunks_exact(LANES), b.chunks_exact(LANES));
    let (wt, bt) = (wc.remainder(), bc.remainder());
    for (x, y) in wc.zip(bc) {
        for i in 0..LANES {
            let d = x[i] - y[i];
            after[i] += x[i] * x[i];
            change[i] += d * d;
            before[i] += y[i] * y[i];
        }
    }
    let sum = |a: [f32; LANES]| f64::from(a.iter().sum::<f32>());
    let mut s = WeightSummary { after: sum(after), change: sum(change), before: sum(before) };
    for (&x, &y) in wt.iter().zip(bt) {
        let (x, y) = (f64::from(x), f64::from(y));
        s.after += x * x;
        s.change += (x - y) * (x - y);
        s.before += y * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Float64 reference for one layer.
    fn reference(values: &[f32]) -> (f64, f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let m2 = values.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>();
        let max = values.iter().map(|x| f64::from(x.abs())).fold(0.0, f64::max);
        (mean, m2, max)
    }

    /// Runs `check` with the sweeps this CPU takes, then with the portable loops alone.
    fn both_ways(check: impl Fn(&str)) {
        check("the CPU's sweeps");
        let _portable = PortableSweeps::hold();
        check("the portable sweeps");
    }

    /// Block outputs' mean and mean square against float64 sums of their values; a block
    /// that is not contiguous host memory leaves the whole list to LibTorch.
    #[test]
    fn signal_moments_are_each_blocks_mean_and_mean_square() {
        both_ways(signal_moments_check);
    }

    fn signal_moments_check(way: &str) {
        let mut rng = StdRng::seed_from_u64(3);
        let blocks: Vec<Vec<f32>> =
            [5000usize, 1, 37].iter().map(|&n| (0..n).map(|_| rng.random_range(-2.0f32..6.0)).collect()).collect();
        let tensors: Vec<Tensor> = blocks.iter().map(|b| Tensor::from_slice(b)).collect();
        let moments = signal_moments(&tensors).expect("host memory");
        for (values, (mean, square)) in blocks.iter().zip(moments) {
            let n = values.len() as f64;
            let want_mean = values.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
            let want_square = values.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / n;
            // Within float32's rounding: the result is reported in float32.
            assert!((mean - want_mean).abs() <= 1e-7 * want_mean.abs().max(1.0), "{way}: {mean} vs {want_mean}");
            assert!((square - want_square).abs() <= 1e-7 * want_square, "{way}: {square} vs {want_square}");
        }
        let broken = [vec![1.0f32, f32::INFINITY], vec![f32::NAN; 3], Vec::new()];
        let broken: Vec<Tensor> = broken.iter().map(|b| Tensor::from_slice(b)).collect();
        for (mean, square) in signal_moments(&broken).expect("host memory") {
            assert!(mean.is_nan() && square.is_nan(), "an infinity, a NaN or no element: NaN, not {mean}, {square}");
        }
        let strided = Tensor::from_slice(&blocks[0]).view([50, 100]).transpose(0, 1);
        assert!(signal_moments(&[tensors[1].shallow_clone(), strided]).is_none());
    }

    #[test]
    fn summaries_match_float64_across_blocks_and_tails() {
        both_ways(summaries_check);
    }

    fn summaries_check(way: &str) {
        // Lengths around the block and lane sizes, and a large mean over a small spread
        // (drawn here, not from LibTorch's process-wide generator that other tests seed).
        let lengths = [1usize, 15, 16, 17, BLOCK - 1, BLOCK, BLOCK + 5, 3 * BLOCK + 7];
        let total: usize = lengths.iter().sum();
        let mut rng = StdRng::seed_from_u64(3);
        let values: Vec<f32> = (0..total).map(|_| (7.0 + 1e-3 * (rng.random::<f64>() - 0.5)) as f32).collect();
        let t = Tensor::from_slice(&values);
        let mut ranges = Vec::new();
        let mut start = 0;
        for &n in &lengths {
            ranges.push(start..start + n);
            start += n;
        }
        let summaries = grad_summaries(&t, &ranges, None, 0.0).expect("host memory").0;
        let hist = exponent_counts(&t, &ranges).expect("histogram");
        for (layer, (range, s)) in ranges.iter().zip(&summaries).enumerate() {
            let (mean, m2, max) = reference(&values[range.clone()]);
            assert_eq!(s.numel, range.len() as u64);
            assert!(((s.mean - mean) / mean).abs() < 1e-7, "{way}, layer {layer}: mean {} vs {mean}", s.mean);
            assert!((s.m2 - m2).abs() <= 1e-4 * m2 + 1e-12, "{way}, layer {layer}: m2 {} vs {m2}", s.m2);
            assert_eq!(s.max_abs, max, "{way}, layer {layer}");
            assert_eq!((s.zeros, s.nonfinite), (0, 0));
            // 7 ± a little is in [4, 8): exponent field 129.
            let counts = &hist[layer * 256..(layer + 1) * 256];
            assert_eq!(counts[129], range.len() as i64, "layer {layer}");
        }
    }

    #[test]
    fn bits_give_exact_zero_and_nonfinite_counts() {
        both_ways(bits_check);
    }

    fn bits_check(way: &str) {
        let values = [0.0f32, -0.0, 1.0, f32::NAN, f32::INFINITY, -2.0, f32::from_bits(1)];
        let t = Tensor::from_slice(&values);
        let s = grad_summaries(&t, &[0..7, 5..7], None, 0.0).expect("host memory").0;
        assert_eq!((s[0].zeros, s[0].nonfinite), (2, 2), "{way}");
        assert!(s[0].max_abs.is_nan() && s[0].mean.is_nan() && s[0].m2.is_nan(), "{way}: a NaN spoils the moments");
        assert_eq!((s[1].zeros, s[1].nonfinite, s[1].max_abs), (0, 0, 2.0), "{way}: a subnormal is not zero");
        let hist = exponent_counts(&t, std::slice::from_ref(&(0..7))).expect("histogram");
        assert_eq!((hist[0], hist[255], hist[127], hist[128]), (3, 2, 1, 1));
        let inf = Tensor::from_slice(&[1.0f32, f32::NEG_INFINITY]);
        let s = grad_summaries(&inf, std::slice::from_ref(&(0..2)), None, 0.0).expect("host memory").0;
        assert_eq!(s[0].max_abs, f64::INFINITY, "{way}: only infinities: +Inf");
    }

    /// Layers from 1e-30 to 1e30, blocks mixing one huge value into ordinary ones, and
    /// zeros and values below the threshold among ordinary ones, against float64 sums of
    /// the values: Σg² within float32's rounding (the norm is reported in float32), the
    /// mean within it of the mean |g|, the deviations' Σ(g − mean)² within 1e-4, max |g|
    /// and the counts exact; the global Σg² the same bits from either pass. Both ways, so
    /// blocks inside and outside the AVX-512 sweeps' range are covered on such a CPU.
    #[test]
    fn values_of_every_magnitude_are_summarised_alike() {
        let mut rng = StdRng::seed_from_u64(8);
        let (mut values, mut ranges) = (Vec::<f32>::new(), Vec::new());
        let mut layer = |values: &mut Vec<f32>, draw: &mut dyn FnMut(usize) -> f32, n: usize| {
            let start = values.len();
            values.extend((0..n).map(&mut *draw));
            ranges.push(start..values.len());
        };
        for scale in [1e-30f64, 1e-20, 1e-9, 1.0, 1e9, 1e20, 1e30] {
            for n in [100, BLOCK + 77] {
                // A mean of about a tenth of the spread.
                layer(&mut values, &mut |_| (scale * (rng.random::<f64>() - 0.45)) as f32, n);
            }
        }
        layer(&mut values, &mut |i| if i == 1234 { 3e25 } else { rng.random::<f32>() - 0.5 }, 3000);
        let tiny = 1e-10;
        layer(
            &mut values,
            &mut |i| match i % 7 {
                0 => 0.0,
                1 => 1e-12 * (rng.random::<f32>() - 0.5),
                _ => rng.random::<f32>() - 0.5,
            },
            BLOCK + 3000,
        );
        let t = Tensor::from_slice(&values);
        both_ways(|way| {
            let (summaries, total) = grad_summaries(&t, &ranges, None, tiny).expect("host memory");
            let alone = sum_squares(&t, &ranges).expect("host memory");
            assert_eq!(total.to_bits(), alone.to_bits(), "{way}: Σg² {total} with statistics, {alone} without");
            for (layer, (range, s)) in ranges.iter().zip(&summaries).enumerate() {
                let v = &values[range.clone()];
                let (mean, m2, max) = reference(v);
                let squares = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>();
                let mean_abs = v.iter().map(|&x| f64::from(x).abs()).sum::<f64>() / v.len() as f64;
                assert!(
                    (s.squares - squares).abs() <= 2e-7 * squares,
                    "{way}, layer {layer}: Σg² {} vs {squares}",
                    s.squares
                );
                assert!((s.mean - mean).abs() <= 1e-7 * mean_abs, "{way}, layer {layer}: mean {} vs {mean}", s.mean);
                assert!((s.m2 - m2).abs() <= 1e-4 * m2, "{way}, layer {layer}: Σ(g − mean)² {} vs {m2}", s.m2);
                assert_eq!(s.max_abs, max, "{way}, layer {layer}");
                let zeros = v.iter().filter(|&&x| x == 0.0).count() as u64;
                let below = v.iter().filter(|&&x| f64::from(x.abs()) < tiny).count() as u64;
                assert_eq!((s.zeros, s.below, s.nonfinite), (zeros, below, 0), "{way}, layer {layer}");
            }
        });
    }

    /// The AVX-512 sweeps take a block only inside their range (where the CPU has them).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_wide_sweeps_take_only_blocks_in_their_range() {
        let Some(wide) = avx512::Avx512::detect() else {
            eprintln!("no AVX-512 on this CPU: the portable sweeps are the only ones");
            return;
        };
        let block = |scale: f32| -> Vec<f32> { (0..BLOCK).map(|i| scale * ((i % 17) as f32 - 8.0)).collect() };
        for scale in [1e-17f32, 1e-3, 1.0, 1e3, 1e15] {
            assert!(wide.squares(&block(scale)).is_some(), "{scale} is in range");
        }
        for scale in [1e-19f32, 1e-25, 1e17, 1e30, 0.0] {
            assert!(wide.squares(&block(scale)).is_none(), "{scale} is out of range");
        }
        let mut broken = block(1.0);
        broken[100] = f32::NAN;
        assert!(wide.sums(&broken).is_none(), "a NaN");
        broken[100] = f32::INFINITY;
        assert!(wide.sum_and_squares(&broken).is_none(), "an infinity");
    }

    #[test]
    fn weights_compare_with_their_snapshot() {
        let w = Tensor::from_slice(&[3.0f32, 4.0, 1.0]);
        let b = Tensor::from_slice(&[3.0f32, 2.0, 0.0]);
        let s = weight_summaries(&w, &b, &[0..2, 2..3]).expect("host memory");
        assert_eq!(s[0], WeightSummary { after: 25.0, change: 4.0, before: 13.0 });
        assert_eq!(s[1], WeightSummary { after: 1.0, change: 1.0, before: 0.0 });
    }

    /// Scaling in place gives LibTorch's `mul_` by the same float32 scalar tensor, bit for
    /// bit, over lengths around the vector widths, with NaN, infinities and subnormals.
    #[test]
    fn scaling_in_place_is_libtorchs_multiplication() {
        let mut rng = StdRng::seed_from_u64(5);
        for len in [0usize, 1, 15, 16, 17, 4095, 4097, 100_003] {
            let mut values: Vec<f32> =
                (0..len).map(|_| rng.random_range(-1e3f32..1e3) * 10f32.powi(rng.random_range(-40..4))).collect();
            if len > 4 {
                values[1..4].copy_from_slice(&[f32::NAN, f32::NEG_INFINITY, f32::from_bits(3)]);
            }
            for factor in [0.37f32, 1.0, 1e-30, 0.0] {
                let ours = Tensor::from_slice(&values);
                assert!(scale(&mut ours.shallow_clone(), factor), "host memory");
                let theirs = Tensor::from_slice(&values);
                let _ = theirs.shallow_clone().f_mul_(&Tensor::from(factor)).expect("mul_");
                let (a, b) = (Vec::<f32>::try_from(&ours).expect("vec"), Vec::<f32>::try_from(&theirs).expect("vec"));
                assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "len {len}, factor {factor}");
            }
        }
        assert!(!scale(&mut Tensor::from_slice(&[1.0f64]), 0.5), "float64 is left to LibTorch");
    }

    #[test]
    fn other_memory_is_not_read() {
        assert!(host_values(&Tensor::from_slice(&[1.0f64])).is_none(), "float64");
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]).tr();
        assert!(host_values(&t).is_none(), "not contiguous");
    }
}
