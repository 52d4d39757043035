//! Per-layer statistics at almost no cost.
//!
//! Every trainable parameter's data, and its gradient, is a view into one contiguous
//! buffer ([`FlatParams`]): clipping multiplies that one buffer by an on-device
//! coefficient, the optimizer updates it whole, and the results of a step reach the host
//! in one copy. On the CPU the statistics read each layer once, in place ([`host`]); on
//! CUDA, kernels of the service's own read each buffer once for every statistic
//! ([`super::fused`]). Where neither applies (and in the tests that hold every way to the
//! same definitions) they are LibTorch's row reductions (a mean, then the sum of squared
//! deviations from it, a min/max, a non-zero count) over the layers grouped by length,
//! each group read as one `[layers, numel]` tensor (a strided view where its layers are
//! evenly spaced, as a model's repeated blocks are): a handful of kernels per group rather
//! than a dozen per layer, since on a model of many small layers the launches, not the
//! arithmetic, are the cost. Measured on CPU, `segment_reduce`, `frexp` and a float
//! histogram over the whole buffer are an order of magnitude slower. The histogram reads each float's exponent bits and
//! counts them with one `bincount`; every count stays an integer. Definitions follow
//! DESIGN.md §3.

use std::ops::Range;

use tch::{Device, Kind, Tensor};

use super::fused::Fused;
use super::host;
use crate::vocab::{Statistic, statistic_field};

/// Histogram buckets: index 0 counts exact zeros, 1..=49 count |g| in [2^e, 2^(e+1)) for
/// e = -40..=8 (smaller non-zero values fall in the first, larger finite ones in the last),
/// 50 counts NaN and ±Inf.
pub const HIST_BINS: usize = 51;
pub const HIST_MIN_EXP: i64 = -40;
pub const HIST_MAX_EXP: i64 = 8;

/// The lower edge of each power-of-two bucket, 2^-40 … 2^8: bucket `i + 1` counts |g| in
/// [edges[i], edges[i + 1]) (the first also the smaller non-zero values, the last every
/// larger finite one). Bucket 0 (exact zeros) and the last bucket (NaN/±Inf) have no edge.
pub fn histogram_edges() -> Vec<f64> {
    (HIST_MIN_EXP..=HIST_MAX_EXP).map(|e| 2f64.powi(e as i32)).collect()
}
const HIST_NONFINITE: i64 = HIST_BINS as i64 - 1;

/// Layers whose histograms one `bincount` counts at once, through LibTorch: their
/// counts (int64) then fit in a CUDA block's 48 KiB of shared memory, where `bincount`
/// counts per block. Past that it counts in global memory: 38 ms for the 100M gradients
/// of a 98-layer MLP on an H200, twice the training step.
const HIST_CHUNK_LAYERS: usize = 100;

/// The shortest chunk [`FlatParams::grad_norm`] reduces at once: below it, a chunk per
/// element would make the second reduction the long one.
const MIN_NORM_CHUNK: i64 = 1024;

/// Every trainable parameter and its gradient as views into two contiguous buffers.
#[derive(Debug)]
pub struct FlatParams {
    params: Vec<Tensor>,
    /// The weights, all layers end to end; each parameter's data is a view into it.
    weights: Tensor,
    /// The gradients, same layout. Each parameter's `.grad` becomes a view into it after
    /// the first backward, and from then on backward accumulates into it in place.
    grads: Tensor,
    /// Whether the gradients are views into `grads` yet.
    grads_adopted: bool,
    /// Each layer's gradient as a 1-D view into `grads`.
    grad_views: Vec<Tensor>,
    /// The layers grouped by length, for reductions over whole groups.
    groups: Vec<Group>,
    /// Each layer's column in the groups' order.
    restore: Tensor,
    /// Elements per layer, on the device.
    lengths: Tensor,
    /// Elements per layer as floats, for means.
    counts: Tensor,
    /// Exact zeros per layer (int64) at the last [`Self::grad_stats`], for the histogram.
    zeros: Option<Tensor>,
    /// For every element, its layer's place in its chunk of [`HIST_CHUNK_LAYERS`] layers
    /// × [`HIST_BINS`], so one `bincount` a chunk counts the buckets of all its layers;
    /// and each of the 256 exponents' bucket (int32). Built on first use.
    hist: Option<(Tensor, Tensor)>,
    /// The weights before the last recorded step, for `update_ratio` (their change once
    /// [`Self::weight_stats`] has read them).
    before: Option<Tensor>,
    /// Each layer's elements in the flat buffers.
    ranges: Vec<Range<usize>>,
    /// The layers that get per-layer statistics (`monitor.layers`), by index, and their
    /// elements; `None` for every layer. Statistics come in this order.
    chosen: Option<(Vec<usize>, Tensor, Vec<Range<usize>>)>,
    /// Whether the statistics read the buffers in place, one pass per layer ([`host`]),
    /// rather than through LibTorch's reductions: on the CPU, where those would each read
    /// the buffer again.
    in_place: bool,
    /// Whether LibTorch's gradient reductions take the forms fastest on CUDA (one Welford
    /// read for the mean and the variance, `aminmax`) rather than the CPU's.
    cuda_forms: bool,
    /// On CUDA, the kernels that take every statistic in one read ([`Fused`]); `None`
    /// elsewhere, or where they could not be loaded (LibTorch's reductions then).
    fused: Option<Fused>,
}

impl FlatParams {
    /// Moves `params` (all `Float`, on `device`) into one buffer. Call before the
    /// optimizer sees a gradient.
    pub fn new(params: &[Tensor], device: Device) -> anyhow::Result<Self> {
        let numels: Vec<i64> = params.iter().map(|p| p.numel() as i64).collect();
        let total: i64 = numels.iter().sum();
        let weights = Tensor::f_zeros([total], (Kind::Float, device))?;
        let grads = Tensor::f_zeros([total], (Kind::Float, device))?;
        let ranges = layer_ranges(&numels);
        let mut moved = Vec::with_capacity(params.len());
        for (p, segment) in params.iter().zip(split(&weights, &ranges)?) {
            anyhow::ensure!(p.kind() == Kind::Float, "parameters must be float32, found {:?}", p.kind());
            let view = segment.f_view(p.size().as_slice())?;
            tch::no_grad(|| view.shallow_clone().f_copy_(p))?;
            let mut p = p.shallow_clone();
            p.f_set_data(&view)?;
            moved.push(p);
        }
        let lengths = Tensor::from_slice(&numels).f_to(device)?;
        let counts = lengths.f_to_kind(Kind::Float)?;
        let (groups, restore) = Group::build(&numels, device)?;
        let fused = if device.is_cuda() && super::fused::enabled() { load_fused(device, &ranges) } else { None };
        Ok(Self {
            fused,
            groups,
            restore,
            params: moved,
            grad_views: split(&grads, &ranges)?,
            weights,
            grads,
            grads_adopted: false,
            lengths,
            counts,
            zeros: None,
            hist: None,
            before: None,
            ranges,
            in_place: device == Device::Cpu,
            cuda_forms: device.is_cuda(),
            chosen: None,
        })
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Takes the statistics through LibTorch's reductions even on the CPU, as on CUDA: for
    /// tests that hold both ways to the same definitions.
    #[cfg(test)]
    fn through_libtorch(mut self) -> Self {
        self.in_place = false;
        self.fused = None;
        self
    }

    /// Whether the statistics are taken by the CUDA kernels.
    #[cfg(test)]
    fn fused(&self) -> bool {
        self.fused.is_some()
    }

    /// Takes the statistics through LibTorch's reductions in the forms chosen for CUDA,
    /// on whatever device: for tests that hold those forms to the same definitions on a
    /// machine without a GPU.
    #[cfg(test)]
    fn through_cuda_forms(mut self) -> Self {
        self.in_place = false;
        self.cuda_forms = true;
        self.fused = None;
        self
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// The parameters (their data lives in the flat buffer).
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Each layer's elements in the flat buffers.
    pub fn ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }

    /// Takes per-layer statistics of `layers` (indices, ascending) only; the global norm
    /// still covers every layer.
    pub fn choose(&mut self, layers: Vec<usize>) -> anyhow::Result<()> {
        anyhow::ensure!(layers.iter().all(|&i| i < self.len()), "a chosen layer is out of range");
        anyhow::ensure!(layers.windows(2).all(|w| w[0] < w[1]), "chosen layers must be ascending");
        self.chosen = if layers.len() == self.len() {
            None
        } else {
            let index: Vec<i64> = layers.iter().map(|&i| i as i64).collect();
            let ranges = layers.iter().map(|&i| self.ranges[i].clone()).collect();
            Some((layers, Tensor::from_slice(&index).f_to_device(self.grads.device())?, ranges))
        };
        self.zeros = None;
        if self.fused.is_some() {
            // The kernels' chunks cover the measured layers; a snapshot of others is stale.
            self.fused = Some(Fused::new(self.grads.device(), self.measured_ranges())?);
            self.before = None;
        }
        Ok(())
    }

    /// The number of layers that get statistics.
    pub fn measured_len(&self) -> usize {
        self.chosen.as_ref().map_or(self.len(), |(layers, ..)| layers.len())
    }

    /// The elements of each layer that gets statistics.
    fn measured_ranges(&self) -> &[Range<usize>] {
        self.chosen.as_ref().map_or(&self.ranges, |(_, _, ranges)| ranges)
    }

    /// `t` (one column per layer along `dim`) with the chosen layers' columns only.
    fn chosen_columns(&self, t: Tensor, dim: i64) -> Result<Tensor, tch::TchError> {
        match &self.chosen {
            Some((_, index, _)) => t.f_index_select(dim, index),
            None => Ok(t),
        }
    }

    /// Whether the statistics read the buffers in place (host memory).
    pub fn in_place(&self) -> bool {
        self.in_place
    }

    /// The flat weight buffer.
    pub fn weights(&self) -> &Tensor {
        &self.weights
    }

    /// The flat gradient buffer.
    pub fn grads(&self) -> &Tensor {
        &self.grads
    }

    /// Per-layer gradient views (the `.grad` of each parameter).
    pub fn layer_grads(&self) -> Vec<Tensor> {
        self.params.iter().map(Tensor::grad).collect()
    }

    /// Zeroes the gradients before backward. Replaces the optimizer's `zero_grad`, which
    /// would drop the gradient tensors and with them the flat layout.
    pub fn zero_grads(&mut self) -> anyhow::Result<()> {
        if self.grads_adopted {
            let _ = self.grads.f_zero_()?;
        } else {
            for p in &self.params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.f_zero_()?;
                }
            }
        }
        Ok(())
    }

    /// After a backward: makes every gradient a view into the flat buffer (once; later
    /// backwards accumulate into the views in place). A parameter backward did not reach
    /// gets a zero gradient.
    pub fn adopt_grads(&mut self) -> anyhow::Result<()> {
        if self.grads_adopted {
            return Ok(());
        }
        for (p, segment) in self.params.iter().zip(&self.grad_views) {
            let view = segment.f_view(p.size().as_slice())?;
            let mut g = p.grad();
            anyhow::ensure!(g.defined(), "a parameter received no gradient; every layer must take part in the loss");
            tch::no_grad(|| view.shallow_clone().f_copy_(&g))?;
            g.f_set_data(&view)?;
        }
        self.grads_adopted = true;
        Ok(())
    }

    /// Global L2 norm of the gradients. In host memory Σg² is summed in float64 by one
    /// read in place ([`host::sum_squares`]), the same sum, bit for bit, that the
    /// statistics' pass takes on the steps that record them; elsewhere by LibTorch.
    pub fn grad_norm(&self) -> anyhow::Result<Tensor> {
        match self.in_place.then(|| host::sum_squares(&self.grads, &self.ranges)).flatten() {
            Some(squares) => Ok(norm_of_squares(squares)),
            None => self.libtorch_grad_norm(),
        }
    }

    /// The global norm through LibTorch, as the norm of the norms of about √n chunks of
    /// about √n elements each. LibTorch's CPU `norm` (and `dot`) accumulate a whole
    /// buffer in a few float32 lanes: off by 6e-5 at 3 million elements and 1e-3 at 20
    /// million. Chunked, each sum is short and the result stays within 1e-7 of float64,
    /// for the same single read of the buffer (one 2-D reduction on any device).
    fn libtorch_grad_norm(&self) -> anyhow::Result<Tensor> {
        let n = self.grads.numel() as i64;
        let chunk = ((n as f64).sqrt().ceil() as i64).max(MIN_NORM_CHUNK);
        let whole = n / chunk * chunk;
        let mut parts = Vec::with_capacity(2);
        if whole > 0 {
            parts.push(self.grads.f_narrow(0, 0, whole)?.f_view([whole / chunk, chunk])?.f_norm_scalaropt_dim(
                2.0,
                [1i64].as_slice(),
                false,
            )?);
        }
        if whole < n {
            parts.push(self.grads.f_narrow(0, whole, n - whole)?.f_norm()?.f_reshape([1])?);
        }
        // The partial norms squared and summed pairwise: `norm` would lane-accumulate again.
        Ok(Tensor::f_cat(&parts, 0)?.f_square()?.f_sum(Kind::Float)?.f_sqrt()?)
    }

    /// Gradient statistics, `[Statistic::GRAD.len(), layers]`, and the global L2 norm (the
    /// value [`Self::grad_norm`] returns, bit for bit, so the grad policies see the same
    /// input whether or not a step records statistics). The `nonfinite` row is the count
    /// where the statistics are taken in one pass (in place on the CPU, by the kernels on
    /// CUDA); through LibTorch's reductions it is 0 where a layer's norm is finite and NaN
    /// where it is not, since the count costs a pass there, and
    /// [`Self::nonfinite_counts`] takes it on those rare steps.
    ///
    /// `grad_std` is the sample standard deviation (Bessel's n − 1, as `torch.std`), so a
    /// one-element layer's is NaN. The one-pass Σg² − (Σg)²/n cancels catastrophically in
    /// float32 once |mean|/std passes about 10³, so Σ(g − mean)² is taken directly: on the
    /// CPU in two passes (the mean, then the squared deviations summed by `sum`, which is
    /// pairwise, rather than `dot`, whose kernel accumulates millions of terms in a few
    /// float32 lanes and loses about 1e-5), on CUDA by LibTorch's Welford reduction. The
    /// layer's norm comes from the same two non-negative terms,
    /// ‖g‖² = Σ(g − mean)² + n·mean², so it costs no further pass; a layer holding a NaN or
    /// an infinity has NaN norm, mean and std.
    ///
    /// `underflow` is the fraction of each layer's entries whose |g| is below `tiny` (zeros
    /// included): counted in the same pass on the host, by one comparison per group on
    /// the device.
    pub fn grad_stats(&mut self, tiny: f64) -> anyhow::Result<(Tensor, Tensor)> {
        if self.in_place {
            let chosen = self.chosen.as_ref().map(|(layers, ..)| layers.as_slice());
            if let Some((summaries, squares)) = host::grad_summaries(&self.grads, &self.ranges, chosen, tiny) {
                return Ok((self.in_place_grad_stats(&summaries)?, norm_of_squares(squares)));
            }
        }
        // The norm first, while LibTorch's threads still spin from the backward pass: after
        // the statistics' reductions they would have to be woken for it.
        let total = self.grad_norm()?;
        if let Some(fused) = &self.fused {
            self.zeros = None;
            return Ok((fused.grad_rows(&self.grads, tiny)?, total));
        }
        let cuda = self.cuda_forms;
        let (mut floats, mut nonzero) = (Vec::with_capacity(self.groups.len()), Vec::with_capacity(self.groups.len()));
        let mut below = Vec::with_capacity(self.groups.len());
        for group in &self.groups {
            let rows = group.rows(&self.grads)?;
            let (mean, deviation) = if cuda {
                // One Welford kernel, combined as a tree: as exact as two passes and
                // cheaper. (On the CPU LibTorch runs it serially, 20× slower than them.)
                // The population variance: n − 1 is applied below, without the warning
                // LibTorch prints for a one-element layer.
                let (var, mean) = rows.f_var_mean_correction([1i64].as_slice(), 0, false)?;
                (mean, var.f_mul_scalar(group.numel as f64)?)
            } else {
                let mean = rows.f_mean_dim([1i64].as_slice(), true, Kind::Float)?;
                let mut centred = rows.f_sub(&mean)?;
                let _ = centred.f_square_()?;
                (mean.f_squeeze_dim(1)?, centred.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?)
            };
            // `amin` and `amax` each vectorize along a row; `aminmax` over a dimension
            // does not, and costs 20× both on the CPU. On CUDA it is one read for both.
            // All propagate NaN.
            let (lo, hi) = if cuda {
                rows.f_aminmax(1, false)?
            } else {
                (rows.f_amin([1i64].as_slice(), false)?, rows.f_amax([1i64].as_slice(), false)?)
            };
            floats.push(Tensor::f_stack(&[mean, deviation, lo, hi], 0)?);
            // Non-zero as `bool` (NaN counts, ±0 does not, as in `count_nonzero`), summed:
            // on the CPU a third of `count_nonzero` over a dimension.
            nonzero.push(rows.f_to_kind(Kind::Bool)?.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Int64)?);
            // NaN compares false: not counted.
            below.push(rows.f_abs()?.f_lt(tiny)?.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Int64)?);
        }
        // Back from the groups' order to the layers'.
        let floats = Tensor::f_cat(&floats, 1)?.f_index_select(1, &self.restore)?;
        let nonzero = Tensor::f_cat(&nonzero, 0)?.f_index_select(0, &self.restore)?;
        let below = Tensor::f_cat(&below, 0)?.f_index_select(0, &self.restore)?;
        let (mean, deviation) = (floats.f_select(0, 0)?, floats.f_select(0, 1)?);
        let max = floats.f_select(0, 2)?.f_abs()?.f_maximum(&floats.f_select(0, 3)?.f_abs()?)?;
        // Integer counts: exact past 2^24 elements, for `zero_frac` and the histogram.
        let zeros = self.lengths.f_sub(&nonzero)?;
        // n − 1 = 0 for a one-element layer: 0/0, NaN, as `torch.std` gives.
        let var = deviation.f_div(&self.counts.f_sub_scalar(1.0)?)?;
        let norm = deviation.f_add(&mean.f_square()?.f_mul(&self.counts)?)?.f_sqrt()?;
        // 0 for a finite norm, NaN (to be counted on the host) for a non-finite one.
        let nonfinite = norm.f_mul_scalar(0.0)?;
        let zero_frac = zeros.f_to_kind(Kind::Float)?.f_div(&self.counts)?;
        let underflow = below.f_to_kind(Kind::Float)?.f_div(&self.counts)?;
        // In the order of `Statistic::GRAD`.
        let stats = Tensor::f_stack(&[norm, max, mean, var.f_sqrt()?, zero_frac, nonfinite, underflow], 0)?;
        self.zeros = Some(self.chosen_columns(zeros, 0)?);
        Ok((self.chosen_columns(stats, 1)?, total))
    }

    /// [`Self::grad_stats`] from the in-place summaries: the same definitions, float64, and
    /// the `nonfinite` row already counted.
    fn in_place_grad_stats(&mut self, summaries: &[host::GradSummary]) -> anyhow::Result<Tensor> {
        let layers = summaries.len();
        let mut rows = vec![0f64; Statistic::GRAD.len() * layers];
        for (i, s) in summaries.iter().enumerate() {
            let n = s.numel as f64;
            // In the order of `Statistic::GRAD`.
            let values = [
                (s.m2 + n * s.mean * s.mean).sqrt(),
                s.max_abs,
                s.mean,
                (s.m2 / (n - 1.0)).sqrt(),
                s.zeros as f64 / n,
                s.nonfinite as f64,
                s.below as f64 / n,
            ];
            for (row, value) in values.into_iter().enumerate() {
                rows[row * layers + i] = value;
            }
        }
        let zeros: Vec<i64> = summaries.iter().map(|s| s.zeros as i64).collect();
        self.zeros = Some(Tensor::from_slice(&zeros));
        Ok(Tensor::from_slice(&rows).f_view([Statistic::GRAD.len() as i64, layers as i64])?)
    }

    /// The NaN/Inf count of each of `layers` (positions in the statistics' order), with one
    /// host copy: for the steps whose statistics came back non-finite.
    pub fn nonfinite_counts(&self, layers: &[usize]) -> anyhow::Result<Vec<f64>> {
        let original = |i: usize| self.chosen.as_ref().map_or(i, |(chosen, ..)| chosen[i]);
        let counts: Vec<Tensor> = layers
            .iter()
            .map(|&i| self.grad_views[original(i)].f_isfinite()?.f_logical_not()?.f_sum(Kind::Int64))
            .collect::<Result<_, _>>()?;
        if counts.is_empty() {
            return Ok(Vec::new());
        }
        Ok(Vec::try_from(&Tensor::f_stack(&counts, 0)?.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?)?)
    }

    /// Counts of |g| per power-of-two bucket for every layer, `[layers * HIST_BINS]`,
    /// int64. Call after [`Self::grad_stats`] (it reuses the zero counts). Integers all the
    /// way: one `bincount` of the exponents, folded into buckets by an integer `index_add`,
    /// so a bucket of more than 2^24 elements (where float32 stops counting by one) is
    /// exact.
    pub fn grad_histogram(&mut self) -> anyhow::Result<Tensor> {
        if let Some(fused) = &self.fused {
            return fused.histogram(&self.grads);
        }
        let layers = self.params.len() as i64;
        let device = self.grads.device();
        if self.hist.is_none() {
            // Read in place, the buffer needs no index of its own.
            let base = if self.in_place {
                Tensor::new()
            } else {
                let ids = Tensor::f_arange(layers, (Kind::Int, device))?.f_remainder(HIST_CHUNK_LAYERS as i64)?;
                ids.f_repeat_interleave_self_tensor(&self.lengths, 0, self.grads.numel() as i64)?
                    .f_mul_scalar(HIST_BINS as i64)?
            };
            // Exponent field e (biased by 127) to bucket: 0 holds zeros (and subnormals,
            // moved out below), 255 holds NaN/Inf, the rest floor(log2 |g|) = e - 127.
            let buckets: Vec<i32> = (0..256)
                .map(|e| match e {
                    0 => 0,
                    255 => HIST_NONFINITE as i32,
                    e => (e - 127 - HIST_MIN_EXP as i32 + 1).clamp(1, (HIST_MAX_EXP - HIST_MIN_EXP + 1) as i32),
                })
                .collect();
            let fold = Tensor::from_slice(&buckets).f_to_device(device)?;
            self.hist = Some((base, fold));
        }
        let Some((base, fold)) = &self.hist else { unreachable!("set above") };
        let measured = self.measured_len() as i64;
        let hist = match self.in_place.then(|| host::exponent_counts(&self.grads, self.measured_ranges())).flatten() {
            Some(counts) => {
                let by_exponent = Tensor::from_slice(&counts).f_view([measured, 256])?;
                let mut hist = Tensor::f_zeros([measured, HIST_BINS as i64], (Kind::Int64, device))?;
                let _ = hist.f_index_add_(1, fold, &by_exponent)?;
                hist
            }
            None => {
                let exponent =
                    self.grads.f_view_dtype(Kind::Int)?.f_bitwise_right_shift_tensor_scalar(23)?.f_bitwise_and(255)?;
                // Each entry's bucket, offset by its layer's place in its chunk.
                let keys = fold.f_index_select(0, &exponent)?.f_add(base)?;
                let mut chunks = Vec::with_capacity(self.ranges.len().div_ceil(HIST_CHUNK_LAYERS));
                for chunk in self.ranges.chunks(HIST_CHUNK_LAYERS) {
                    let (start, end) = (chunk[0].start as i64, chunk[chunk.len() - 1].end as i64);
                    let bins = (chunk.len() * HIST_BINS) as i64;
                    chunks.push(
                        keys.f_narrow(0, start, end - start)?
                            .f_bincount::<Tensor>(None, bins)?
                            .f_view([chunk.len() as i64, HIST_BINS as i64])?,
                    );
                }
                let all = if chunks.is_empty() {
                    Tensor::f_zeros([0, HIST_BINS as i64], (Kind::Int64, device))?
                } else {
                    Tensor::f_cat(&chunks, 0)?
                };
                self.chosen_columns(all, 0)?
            }
        };
        if let Some(zeros) = &self.zeros {
            // Bucket 0 counted every zero exponent: the exact zeros stay, subnormals (below
            // 2^-126) join the smallest bucket.
            let subnormal = hist.f_select(1, 0)?.f_sub(zeros)?;
            hist.f_select(1, 0)?.f_copy_(zeros)?;
            let _ = hist.f_select(1, 1)?.f_add_(&subnormal)?;
        }
        Ok(hist.f_flatten(0, -1)?)
    }

    /// Remembers the weights before a step whose `update_ratio` will be reported.
    pub fn snapshot_weights(&mut self) -> anyhow::Result<()> {
        if let Some(fused) = &self.fused {
            if self.before.is_none() {
                self.before = Some(self.weights.f_empty_like()?);
            }
            let Some(before) = &self.before else { unreachable!("set above") };
            return fused.snapshot(&self.weights, before);
        }
        match &mut self.before {
            Some(before) => {
                before.f_copy_(&self.weights)?;
            }
            None => {
                let mut before = self.weights.f_empty_like()?;
                before.f_copy_(&self.weights)?;
                self.before = Some(before);
            }
        }
        Ok(())
    }

    /// Weight statistics after the step, `[Statistic::WEIGHT.len(), layers]`: the weight norm,
    /// and ‖w_after − w_before‖ / ‖w_before‖ against the last snapshot (0 without one).
    /// Where ‖w_before‖ = 0 (a zero-initialised bias before its first update) the ratio
    /// has no meaning and is NaN, which the store and the stream report as null; flooring
    /// the denominator instead would show a change of 1e-3 as 1e35.
    pub fn weight_stats(&self) -> anyhow::Result<Tensor> {
        if let Some(before) = self.before.as_ref().filter(|_| self.in_place)
            && let Some(summaries) = host::weight_summaries(&self.weights, before, self.measured_ranges())
        {
            return weight_rows(&summaries);
        }
        if let (Some(fused), Some(before)) = (&self.fused, &self.before) {
            return fused.weight_rows(&self.weights, before);
        }
        let norm = self.norms(&self.weights)?;
        let ratio = match &self.before {
            Some(before) => {
                let base = self.norms(before)?;
                // The change is written over the snapshot, which is taken again before
                // the next recorded step: no buffer of its own, one pass less.
                let mut change = before.shallow_clone();
                let _ = change.f_sub_(&self.weights)?;
                self.norms(&change)?.f_div(&base)?.f_where_scalarother(&base.f_gt(0.0)?, f64::NAN)?
            }
            None => norm.f_zeros_like()?,
        };
        Ok(self.chosen_columns(Tensor::f_stack(&[norm, ratio], 0)?, 1)?)
    }

    /// [`Self::weight_stats`] from what an update measured on its way
    /// ([`super::optim::FlatOptimizer::step`] in host memory): no snapshot, no further pass.
    pub fn measured_weight_stats(&self, summaries: &[host::WeightSummary]) -> anyhow::Result<Tensor> {
        match &self.chosen {
            Some((chosen, ..)) => weight_rows(&chosen.iter().map(|&i| summaries[i]).collect::<Vec<_>>()),
            None => weight_rows(summaries),
        }
    }

    /// The L2 norm of each layer's part of `buffer` (laid out as the weights), in layer
    /// order. On CUDA LibTorch's `norm` per row of each group, one read in a tree; on the
    /// CPU Σv² per row (pairwise, so accurate to float32 rounding where a whole-layer
    /// `dot` or `norm` accumulates in a few float32 lanes), then the square root.
    fn norms(&self, buffer: &Tensor) -> anyhow::Result<Tensor> {
        // The device, not `cuda_forms`: the CPU's `norm` accumulates a row in a few float32
        // lanes, off by 4e-5 over millions of elements, where CUDA's reduces in a tree.
        let cuda = buffer.device().is_cuda();
        let rows: Vec<Tensor> = self
            .groups
            .iter()
            .map(|g| {
                let rows = g.rows(buffer)?;
                Ok(if cuda {
                    rows.f_norm_scalaropt_dim(2.0, [1i64].as_slice(), false)?
                } else {
                    rows.f_square()?.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?.f_sqrt()?
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Tensor::f_cat(&rows, 0)?.f_index_select(0, &self.restore)?)
    }
}

/// The CUDA kernels for `ranges`, or `None` (with a warning, once a process) where they
/// cannot be loaded: the statistics are then LibTorch's reductions.
fn load_fused(device: Device, ranges: &[Range<usize>]) -> Option<Fused> {
    match Fused::new(device, ranges) {
        Ok(fused) => Some(fused),
        Err(e) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "statistics kernels unavailable; LibTorch's reductions take the statistics on CUDA"
                );
            });
            None
        }
    }
}

/// The global norm from Σg² (float64), as the float32 scalar the grad policies take.
fn norm_of_squares(squares: f64) -> Tensor {
    Tensor::from(squares.sqrt() as f32)
}

/// The weight rows, `[Statistic::WEIGHT.len(), layers]`, from each layer's sums of
/// squares: the norm after the update, and ‖Δw‖ / ‖w_before‖ (NaN where ‖w_before‖ = 0).
fn weight_rows(summaries: &[host::WeightSummary]) -> anyhow::Result<Tensor> {
    let layers = summaries.len() as i64;
    let norms = summaries.iter().map(|s| s.after.sqrt());
    let ratios = summaries.iter().map(|s| if s.before > 0.0 { (s.change / s.before).sqrt() } else { f64::NAN });
    let rows: Vec<f64> = norms.chain(ratios).collect();
    Ok(Tensor::from_slice(&rows).f_view([2, layers])?)
}

/// Layers of one length, read together as the rows of one `[layers, numel]` tensor: one
/// reduction per statistic for the whole group instead of one per layer (a model's
/// blocks repeat, so a few groups hold all its layers).
#[derive(Debug)]
struct Group {
    numel: i64,
    rows: Rows,
}

#[derive(Debug)]
enum Rows {
    /// Evenly spaced in the buffer (or alone): a strided view, no copy.
    Strided { first: i64, step: i64, count: i64 },
    /// Anywhere else: gathered by these element indices.
    Gathered { index: Tensor, count: i64 },
}

impl Group {
    /// Groups the layers of `numels` by length, in order of first appearance, and the
    /// position of each layer in the groups' order (to restore the layers' order).
    fn build(numels: &[i64], device: Device) -> anyhow::Result<(Vec<Self>, Tensor)> {
        let offsets: Vec<i64> = layer_ranges(numels).iter().map(|r| r.start as i64).collect();
        let mut lengths: Vec<i64> = Vec::new();
        for &n in numels {
            if !lengths.contains(&n) {
                lengths.push(n);
            }
        }
        let (mut groups, mut order) = (Vec::with_capacity(lengths.len()), Vec::with_capacity(numels.len()));
        for numel in lengths {
            let members: Vec<usize> = (0..numels.len()).filter(|&i| numels[i] == numel).collect();
            let starts: Vec<i64> = members.iter().map(|&i| offsets[i]).collect();
            let step = if starts.len() > 1 { starts[1] - starts[0] } else { numel };
            let even = starts.windows(2).all(|w| w[1] - w[0] == step);
            let count = starts.len() as i64;
            let rows = if even {
                Rows::Strided { first: starts[0], step, count }
            } else {
                let index: Vec<i64> = starts.iter().flat_map(|&s| s..s + numel).collect();
                Rows::Gathered { index: Tensor::from_slice(&index).f_to_device(device)?, count }
            };
            groups.push(Self { numel, rows });
            order.extend(members);
        }
        let mut restore = vec![0i64; numels.len()];
        for (position, &layer) in order.iter().enumerate() {
            restore[layer] = position as i64;
        }
        Ok((groups, Tensor::from_slice(&restore).f_to_device(device)?))
    }

    /// The group's layers of `buffer` (laid out as the flat buffers), one per row.
    fn rows(&self, buffer: &Tensor) -> Result<Tensor, tch::TchError> {
        match &self.rows {
            Rows::Strided { first, step, count } => buffer
                .f_narrow(0, *first, (count - 1) * step + self.numel)?
                .f_as_strided([*count, self.numel].as_slice(), [*step, 1].as_slice(), None),
            Rows::Gathered { index, count } => buffer.f_index_select(0, index)?.f_view([*count, self.numel]),
        }
    }
}

/// Each layer's elements in the flat buffers, laid end to end in the order of `numels`:
/// the one place the flat buffers' per-layer offsets are counted.
fn layer_ranges(numels: &[i64]) -> Vec<Range<usize>> {
    numels
        .iter()
        .scan(0usize, |start, &n| {
            let range = *start..*start + n as usize;
            *start = range.end;
            Some(range)
        })
        .collect()
}

/// `buffer` cut into the 1-D views `ranges` give, one per layer.
fn split(buffer: &Tensor, ranges: &[Range<usize>]) -> anyhow::Result<Vec<Tensor>> {
    ranges.iter().map(|r| Ok(buffer.f_narrow(0, r.start as i64, r.len() as i64)?)).collect()
}

/// Every statistic of every layer at one step, by layer index.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerStats {
    pub grad_norm: Vec<f64>,
    pub grad_max: Vec<f64>,
    pub grad_mean: Vec<f64>,
    pub grad_std: Vec<f64>,
    pub zero_frac: Vec<f64>,
    pub nonfinite: Vec<f64>,
    pub underflow: Vec<f64>,
    pub weight_norm: Vec<f64>,
    pub update_ratio: Vec<f64>,
    /// `HIST_BINS` counts per layer, layer after layer, when histograms are recorded.
    pub hist: Option<Vec<u64>>,
}

impl LayerStats {
    /// Reads the gradient rows (`Statistic::GRAD` × `layers`) from a host copy.
    pub fn from_grad_rows(rows: &[f64], layers: usize) -> Self {
        let mut stats = Self::default();
        stats.set_rows(&Statistic::GRAD, rows, layers);
        stats
    }

    /// Fills the weight rows (`Statistic::WEIGHT` × `layers`) from a host copy.
    pub fn set_weight_rows(&mut self, rows: &[f64], layers: usize) {
        self.set_rows(&Statistic::WEIGHT, rows, layers);
    }

    /// Fills the statistics `stats` from `stats.len()` rows of `layers` values each.
    fn set_rows(&mut self, stats: &[Statistic], rows: &[f64], layers: usize) {
        for (row, &stat) in rows.chunks_exact(layers.max(1)).zip(stats) {
            *self.column_mut(stat) = row.to_vec();
        }
    }

    /// One statistic of every layer.
    pub fn get(&self, stat: Statistic) -> &[f64] {
        statistic_field!(stat, &self)
    }

    fn column_mut(&mut self, stat: Statistic) -> &mut Vec<f64> {
        statistic_field!(stat, &mut self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::model::with_seed;

    /// The `underflow` threshold here: float16's smallest normal.
    const TINY: f64 = 1.0 / 16384.0;

    fn params() -> Vec<Tensor> {
        vec![
            Tensor::from_slice(&[1.0f32, -2.0, 0.0, 4.0]).set_requires_grad(true),
            Tensor::from_slice(&[0.5f32, 0.25, -8.0]).view([3, 1]).set_requires_grad(true),
        ]
    }

    /// A loss whose gradient is `coef` elementwise, so the expected statistics are plain.
    fn backward(flat: &mut FlatParams, coefs: &[Tensor]) {
        flat.zero_grads().expect("zero");
        let loss = flat
            .params()
            .iter()
            .zip(coefs)
            .map(|(p, c)| (p * c.to_device(p.device())).sum(Kind::Float))
            .fold(Tensor::from(0.0f32).to_device(flat.grads().device()), |acc, t| acc + t);
        loss.backward();
        flat.adopt_grads().expect("adopt");
    }

    #[test]
    fn statistics_match_per_tensor_computations() {
        for way in Way::all() {
            let _sweeps = way.sweeps();
            statistics_match_per_tensor_computations_read(way);
        }
    }

    fn statistics_match_per_tensor_computations_read(way: Way) {
        let mut flat = way.flat(&params());
        let coefs =
            [Tensor::from_slice(&[3.0f32, 0.0, -4.0, 0.0]), Tensor::from_slice(&[1e-12f32, 600.0, 0.5]).view([3, 1])];
        // Twice: the second backward goes through the adopted views and must not accumulate.
        backward(&mut flat, &coefs);
        backward(&mut flat, &coefs);
        let (stats, total) = flat.grad_stats(TINY).expect("stats");
        let rows: Vec<f64> = Vec::<f64>::try_from(stats.flatten(0, -1).to_device(Device::Cpu)).expect("rows");
        let s = LayerStats::from_grad_rows(&rows, 2);
        for (layer, g) in coefs.iter().enumerate() {
            let g = g.flatten(0, -1);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-6);
            assert!(close(s.grad_norm[layer], g.norm().double_value(&[])));
            assert!(close(s.grad_max[layer], g.abs().max().double_value(&[])));
            assert!(close(s.grad_mean[layer], g.mean(Kind::Float).double_value(&[])));
            assert!(
                close(s.grad_std[layer], g.std(true).double_value(&[])),
                "{} vs {}",
                s.grad_std[layer],
                g.std(true)
            );
            assert!(close(s.zero_frac[layer], g.eq(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[])));
            assert_eq!(s.nonfinite[layer], 0.0);
        }
        let sum_sq: f64 = s.grad_norm.iter().map(|n| n * n).sum();
        assert!((sum_sq.sqrt() - total.double_value(&[])).abs() < 1e-5 * total.double_value(&[]));
        assert_eq!(s.zero_frac[0], 0.5);
    }

    #[test]
    fn grouped_layers_keep_their_own_statistics_and_order() {
        // Lengths 3, 5, 3, 2, 3, 5: the 3s lie unevenly (gathered), the 5s evenly
        // (a strided view), the 2 alone; each layer's numbers must be its own.
        let numels = [3i64, 5, 3, 2, 3, 5];
        let params: Vec<Tensor> = with_seed(5, || {
            numels.iter().map(|&n| Tensor::randn([n], (Kind::Float, Device::Cpu)).set_requires_grad(true)).collect()
        });
        for way in Way::all() {
            let _sweeps = way.sweeps();
            grouped_layers_read(way, &numels, &params);
        }
    }

    fn grouped_layers_read(way: Way, numels: &[i64], params: &[Tensor]) {
        let mut flat = way.flat(params);
        let coefs: Vec<Tensor> = with_seed(6, || {
            numels
                .iter()
                .enumerate()
                .map(|(i, &n)| Tensor::randn([n], (Kind::Float, Device::Cpu)) * (i as f64 + 1.0) + i as f64)
                .collect()
        });
        backward(&mut flat, &coefs);
        let s = grad_rows(&mut flat);
        let weights: Vec<f32> =
            Vec::try_from(flat.weight_stats().expect("weights").flatten(0, -1).to_device(Device::Cpu)).expect("rows");
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-6);
        for (layer, g) in coefs.iter().enumerate() {
            assert!(close(s.grad_norm[layer], g.norm().double_value(&[])), "layer {layer} norm");
            assert!(close(s.grad_max[layer], g.abs().max().double_value(&[])), "layer {layer} max");
            assert!(close(s.grad_mean[layer], g.mean(Kind::Float).double_value(&[])), "layer {layer} mean");
            assert!(close(s.grad_std[layer], g.std(true).double_value(&[])), "layer {layer} std");
            assert!(close(f64::from(weights[layer]), params[layer].norm().double_value(&[])), "layer {layer} weights");
        }
    }

    #[test]
    fn histogram_buckets_are_powers_of_two() {
        for way in Way::all() {
            let _sweeps = way.sweeps();
            histogram_buckets_read(way);
        }
    }

    fn histogram_buckets_read(way: Way) {
        let mut flat = way.flat(&params());
        let coefs = [
            Tensor::from_slice(&[1.0f32, 1.5, 0.0, f32::NAN]),
            Tensor::from_slice(&[1e-30f32, 3000.0, 0.3]).view([3, 1]),
        ];
        backward(&mut flat, &coefs);
        let _ = flat.grad_stats(TINY).expect("stats");
        let hist = Vec::<i64>::try_from(flat.grad_histogram().expect("hist").to_device(Device::Cpu)).expect("counts");
        assert_eq!(hist.len(), 2 * HIST_BINS);
        let bin = |e: i64| (e - HIST_MIN_EXP + 1) as usize;
        let (first, second) = hist.split_at(HIST_BINS);
        assert_eq!(first[0], 1, "one exact zero");
        assert_eq!(first[bin(0)], 2, "1.0 and 1.5 are in [1, 2)");
        assert_eq!(first[HIST_BINS - 1], 1, "one NaN");
        assert_eq!(second[bin(HIST_MIN_EXP)], 1, "1e-30 clamps into the smallest bucket");
        assert_eq!(second[bin(HIST_MAX_EXP)], 1, "3000 clamps into the largest bucket");
        assert_eq!(second[bin(-2)], 1, "0.3 is in [0.25, 0.5)");
        assert_eq!(hist.iter().sum::<i64>(), 7);
    }

    #[test]
    fn histograms_of_more_layers_than_one_count_holds() {
        // Layer i's gradient: 1.5 · 2^e(i) (in bucket e(i)), an exact zero, and for every
        // seventh layer a NaN; more layers than one `bincount` counts, of two lengths.
        let layers = HIST_CHUNK_LAYERS * 2 + 17;
        let exponent = |i: usize| (i as i64 % (HIST_MAX_EXP - HIST_MIN_EXP + 1)) + HIST_MIN_EXP;
        let grads: Vec<Tensor> = (0..layers)
            .map(|i| {
                let mut g = vec![1.5 * 2f32.powi(exponent(i) as i32), 0.0];
                if i % 7 == 0 {
                    g.push(f32::NAN);
                }
                Tensor::from_slice(&g)
            })
            .collect();
        for way in Way::all() {
            let _sweeps = way.sweeps();
            let params: Vec<Tensor> = grads.iter().map(|g| g.zeros_like().set_requires_grad(true)).collect();
            let mut flat = way.flat(&params);
            backward(&mut flat, &grads);
            let _ = flat.grad_stats(TINY).expect("stats");
            let hist =
                Vec::<i64>::try_from(flat.grad_histogram().expect("hist").to_device(Device::Cpu)).expect("counts");
            assert_eq!(hist.len(), layers * HIST_BINS, "{way:?}");
            for (i, counts) in hist.chunks(HIST_BINS).enumerate() {
                let mut expected = vec![0i64; HIST_BINS];
                expected[0] = 1;
                expected[(exponent(i) - HIST_MIN_EXP + 1) as usize] += 1;
                if i % 7 == 0 {
                    expected[HIST_BINS - 1] = 1;
                }
                assert_eq!(counts, expected.as_slice(), "{way:?}: layer {i}");
            }
        }
    }

    #[test]
    fn nonfinite_layers_are_flagged_then_counted() {
        for way in Way::all() {
            let _sweeps = way.sweeps();
            let mut flat = way.flat(&params());
            let coefs = [
                Tensor::from_slice(&[1.0f32, f32::NAN, f32::INFINITY, 0.0]),
                Tensor::from_slice(&[1.0f32, 2.0, 3.0]).view([3, 1]),
            ];
            backward(&mut flat, &coefs);
            let (stats, _) = flat.grad_stats(TINY).expect("stats");
            let nonfinite: Vec<f64> = Vec::try_from(stats.get(5).to_device(Device::Cpu)).expect("row");
            match way {
                Way::InPlace | Way::InPlacePortable | Way::Cuda => {
                    assert_eq!(nonfinite[0], 2.0, "{way:?}: counted in the same pass");
                }
                _ => assert!(nonfinite[0].is_nan(), "the broken layer is flagged"),
            }
            assert_eq!(nonfinite[1], 0.0);
            assert_eq!(flat.nonfinite_counts(&[0]).expect("counts"), vec![2.0]);
        }
    }

    /// Each way statistics are taken: in place on the CPU, LibTorch's reductions on the CPU
    /// (pairwise sums), the same in the forms chosen for CUDA (Welford, `aminmax`) on the
    /// CPU, and on the first CUDA device where there is one: by the kernels of `fused.rs`
    /// and by LibTorch's reductions (tree reductions), the way taken where the kernels
    /// cannot be loaded.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Way {
        InPlace,
        /// In place, by the portable loops alone (where the CPU would use AVX-512).
        InPlacePortable,
        LibTorchCpu,
        /// LibTorch's reductions in the forms chosen for CUDA, on the CPU.
        CudaFormsCpu,
        Cuda,
        CudaLibTorch,
    }

    impl Way {
        const CPU: [Self; 4] = [Self::InPlace, Self::InPlacePortable, Self::LibTorchCpu, Self::CudaFormsCpu];

        fn all() -> Vec<Self> {
            let mut all = Self::CPU.to_vec();
            if tch::Cuda::is_available() {
                all.extend([Self::Cuda, Self::CudaLibTorch]);
            }
            all
        }

        /// Holds the host sweeps to the portable loops, for [`Self::InPlacePortable`].
        fn sweeps(self) -> Option<host::PortableSweeps> {
            (self == Self::InPlacePortable).then(host::PortableSweeps::hold)
        }

        fn device(self) -> Device {
            if matches!(self, Self::Cuda | Self::CudaLibTorch) { Device::Cuda(0) } else { Device::Cpu }
        }

        /// `params` (on [`Self::device`]) in flat buffers read this way.
        fn flat(self, params: &[Tensor]) -> FlatParams {
            let flat = FlatParams::new(params, self.device()).expect("flat");
            match self {
                Self::LibTorchCpu => flat.through_libtorch(),
                Self::CudaFormsCpu => flat.through_cuda_forms(),
                Self::CudaLibTorch => flat.through_libtorch(),
                Self::Cuda => {
                    assert!(flat.fused(), "the statistics kernels load on a CUDA machine");
                    flat
                }
                Self::InPlace | Self::InPlacePortable => flat,
            }
        }
    }

    /// One layer whose gradient is `g`, read `way`.
    fn single(g: &Tensor, way: Way) -> FlatParams {
        let g = g.to_device(way.device());
        let mut flat = way.flat(&[g.zeros_like().set_requires_grad(true)]);
        backward(&mut flat, std::slice::from_ref(&g));
        flat
    }

    fn grad_rows(flat: &mut FlatParams) -> LayerStats {
        let (stats, _) = flat.grad_stats(TINY).expect("stats");
        let rows: Vec<f64> =
            Vec::try_from(stats.flatten(0, -1).to_kind(Kind::Double).to_device(Device::Cpu)).expect("rows");
        LayerStats::from_grad_rows(&rows, flat.len())
    }

    #[test]
    fn grad_std_holds_at_a_large_mean() {
        // |mean|/std = 1e4 over 2^20 elements: Σg² − (Σg)²/n in float32 is wrong by 4×.
        let g =
            (with_seed(11, || Tensor::randn([1 << 20], (Kind::Double, Device::Cpu))) * 1e-4 + 1.0).to_kind(Kind::Float);
        let host: Vec<f64> = Vec::<f32>::try_from(&g).expect("values").into_iter().map(f64::from).collect();
        let n = host.len() as f64;
        let mean = host.iter().sum::<f64>() / n;
        let std = (host.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let norm = host.iter().map(|x| x * x).sum::<f64>().sqrt();
        for way in Way::all() {
            let _sweeps = way.sweeps();
            let s = grad_rows(&mut single(&g, way));
            let rel = |a: f64, b: f64| ((a - b) / b).abs();
            assert!(rel(s.grad_std[0], std) < 1e-5, "{way:?}: grad_std {:e} vs float64 {std:e}", s.grad_std[0]);
            assert!(rel(s.grad_mean[0], mean) < 1e-6, "{way:?}: grad_mean {} vs {mean}", s.grad_mean[0]);
            assert!(rel(s.grad_norm[0], norm) < 1e-6, "{way:?}: grad_norm {} vs {norm}", s.grad_norm[0]);
        }
    }

    #[test]
    fn global_and_weight_norms_hold_over_millions_of_elements() {
        // Float32 `norm` over the whole buffer loses about 6e-5 here.
        let numels = [(1 << 21) + 3, (1 << 20) - 1];
        let data: Vec<Tensor> = with_seed(12, || {
            numels
                .iter()
                .map(|&n| {
                    Tensor::randn([n], (Kind::Float, Device::Cpu))
                        * (Tensor::rand([n], (Kind::Float, Device::Cpu)) + 1.0)
                })
                .collect()
        });
        let f64_norm = |ts: &[Tensor]| -> f64 {
            ts.iter()
                .flat_map(|t| Vec::<f32>::try_from(t).expect("values"))
                .map(|x| f64::from(x) * f64::from(x))
                .sum::<f64>()
                .sqrt()
        };
        let (all, first) = (f64_norm(&data), f64_norm(&data[..1]));
        for way in Way::all() {
            let _sweeps = way.sweeps();
            let device = way.device();
            let on: Vec<Tensor> = data.iter().map(|t| t.to_device(device)).collect();
            let params: Vec<Tensor> = on.iter().map(|t| t.copy().set_requires_grad(true)).collect();
            let mut flat = way.flat(&params);
            // A snapshot of the same weights: the in-place weight pass needs one.
            flat.snapshot_weights().expect("snapshot");
            backward(&mut flat, &on);
            let total = flat.grad_norm().expect("norm").double_value(&[]);
            assert!(((total - all) / all).abs() < 1e-6, "{way:?}: global norm {total} vs float64 {all}");
            let s = grad_rows(&mut flat);
            assert!(
                ((s.grad_norm[0] - first) / first).abs() < 1e-6,
                "{way:?}: layer norm {} vs {first}",
                s.grad_norm[0]
            );
            let weights = Vec::<f64>::try_from(
                flat.weight_stats().expect("weights").to_kind(Kind::Double).flatten(0, -1).to_device(Device::Cpu),
            )
            .expect("rows");
            assert!(((weights[0] - first) / first).abs() < 1e-6, "{way:?}: weight norm {} vs {first}", weights[0]);
        }
    }

    /// The grad policies take `grad_norm()` on steps that record no statistics and the
    /// statistics' own total on steps that do: the two must be the same bits, whichever
    /// layers are chosen, or recording would change what clipping does. In place, both
    /// are within float32's rounding of a float64 sum.
    #[test]
    fn the_global_norm_is_the_same_with_or_without_statistics() {
        // Lengths around the block (4096) and lane (16) sizes, and values over many orders
        // of magnitude. (Reordering the float64 sums would not show in the float32 norm;
        // a Σg² taken another way, e.g. from the mean and the deviations, does.)
        // The last layer's values are too small for float32 squares: the in-place sweeps
        // take it by their float64 loops, on both passes.
        let numels = [1i64, 17, 4095, 4096, 4097, 100_003, 3, 5000];
        let data: Vec<Tensor> = with_seed(11, || {
            numels
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let scale = (Tensor::randn([n], (Kind::Float, Device::Cpu)) * 4.0).exp();
                    let tiny = if i == numels.len() - 1 { 1e-25 } else { 1.0 };
                    Tensor::randn([n], (Kind::Float, Device::Cpu)) * scale * tiny
                })
                .collect()
        });
        let float64 = data
            .iter()
            .flat_map(|t| Vec::<f32>::try_from(t).expect("values"))
            .map(|x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        for way in Way::all() {
            let _sweeps = way.sweeps();
            for chosen in [None, Some(vec![1, 4]), Some(vec![6])] {
                let on: Vec<Tensor> = data.iter().map(|t| t.to_device(way.device())).collect();
                let params: Vec<Tensor> = on.iter().map(|t| t.zeros_like().set_requires_grad(true)).collect();
                let mut flat = way.flat(&params);
                if let Some(layers) = chosen.clone() {
                    flat.choose(layers).expect("choose");
                }
                backward(&mut flat, &on);
                let alone = flat.grad_norm().expect("norm").double_value(&[]);
                let (_, total) = flat.grad_stats(TINY).expect("stats");
                let with_stats = total.double_value(&[]);
                assert_eq!(alone.to_bits(), with_stats.to_bits(), "{way:?}, {chosen:?}: {alone} vs {with_stats}");
                let bound = if matches!(way, Way::InPlace | Way::InPlacePortable) { 1e-7 } else { 1e-6 };
                assert!(((alone - float64) / float64).abs() < bound, "{way:?}: {alone} vs float64 {float64}");
            }
        }
        // A NaN anywhere makes the norm NaN, an infinity (and no NaN) +Inf, either way.
        for (bad, nan) in [(f32::NAN, true), (f32::NEG_INFINITY, false)] {
            let mut values = vec![1.0f32; 5000];
            values[4321] = bad;
            let mut flat = single(&Tensor::from_slice(&values), Way::InPlace);
            let alone = flat.grad_norm().expect("norm").double_value(&[]);
            let with_stats = flat.grad_stats(TINY).expect("stats").1.double_value(&[]);
            for norm in [alone, with_stats] {
                assert!(if nan { norm.is_nan() } else { norm == f64::INFINITY }, "{bad}: {norm}");
            }
        }
    }

    #[test]
    fn a_one_element_layer_has_no_standard_deviation() {
        for way in Way::all() {
            let _sweeps = way.sweeps();
            let s = grad_rows(&mut single(&Tensor::from_slice(&[-3.0f32]), way));
            assert!(s.grad_std[0].is_nan(), "{way:?}: the sample std of one value is NaN, as torch.std([x])");
            assert_eq!((s.grad_norm[0], s.grad_mean[0], s.grad_max[0]), (3.0, -3.0, 3.0));
            assert_eq!(s.nonfinite[0], 0.0, "{way:?}: a NaN std does not flag the layer as broken");
        }
    }

    #[test]
    fn update_ratio_of_a_zero_tensor_is_nan() {
        for way in Way::all() {
            let _sweeps = way.sweeps();
            let device = way.device();
            let params = [Tensor::zeros([5], (Kind::Float, device)), Tensor::ones([2], (Kind::Float, device))];
            let mut flat = way.flat(&params);
            flat.snapshot_weights().expect("snapshot");
            tch::no_grad(|| {
                let _ = flat.weights().shallow_clone().f_add_scalar_(1e-3).expect("step");
            });
            let stats = flat.weight_stats().expect("stats").flatten(0, -1).to_device(Device::Cpu);
            let rows: Vec<f32> = Vec::try_from(stats).expect("rows");
            assert!((rows[0] - 1e-3 * 5f32.sqrt()).abs() < 1e-9, "the zero tensor moved: weight_norm {}", rows[0]);
            assert!(rows[2].is_nan(), "{way:?}: ‖Δw‖/‖w‖ with ‖w‖ = 0 is undefined, not {}", rows[2]);
            assert!((rows[3] - 1e-3).abs() < 1e-7, "the other layer's ratio is {}", rows[3]);
        }
    }

    #[test]
    fn counts_stay_exact_past_two_to_the_24() {
        // 2^24 + 1 NaNs, and as many values in [1, 2) beside 3 zeros: float32 rounds both
        // counts to 2^24.
        let n = (1 << 24) + 1;
        for way in Way::all() {
            let _sweeps = way.sweeps();
            let device = way.device();
            let nan = Tensor::full([n], f64::NAN, (Kind::Float, device));
            let ones = Tensor::cat(
                &[Tensor::full([n], 1.5, (Kind::Float, device)), Tensor::zeros([3], (Kind::Float, device))],
                0,
            );
            let params = [nan.zeros_like().set_requires_grad(true), ones.zeros_like().set_requires_grad(true)];
            let mut flat = way.flat(&params);
            backward(&mut flat, &[nan, ones]);
            let s = grad_rows(&mut flat);
            match way {
                Way::InPlace | Way::InPlacePortable | Way::Cuda => {
                    assert_eq!(s.nonfinite[0], n as f64, "{way:?}: counted exactly in the same pass");
                }
                _ => assert!(s.nonfinite[0].is_nan(), "{way:?}: flagged"),
            }
            assert_eq!(s.nonfinite[1], 0.0, "{way:?}");
            assert_eq!(flat.nonfinite_counts(&[0]).expect("counts"), vec![n as f64], "{way:?}");
            let hist =
                Vec::<i64>::try_from(flat.grad_histogram().expect("hist").to_device(Device::Cpu)).expect("counts");
            let (first, second) = hist.split_at(HIST_BINS);
            assert_eq!(first[HIST_BINS - 1], n, "{way:?}: the non-finite bucket");
            assert_eq!(first.iter().sum::<i64>(), n);
            assert_eq!((second[0], second[(1 - HIST_MIN_EXP) as usize]), (3, n), "{way:?}: zeros and [1, 2)");
            assert!((s.zero_frac[1] - 3.0 / (n + 3) as f64).abs() < 1e-12, "zero_frac {}", s.zero_frac[1]);
        }
    }

    #[test]
    fn weight_stats_measure_the_update() {
        for way in Way::all() {
            let _sweeps = way.sweeps();
            weight_stats_read(way);
        }
    }

    fn weight_stats_read(way: Way) {
        let mut flat = way.flat(&params());
        flat.snapshot_weights().expect("snapshot");
        tch::no_grad(|| {
            let mut first = flat.params()[0].shallow_clone();
            let _ = first.f_mul_scalar_(2.0).expect("scale");
        });
        let rows: Vec<f32> =
            Vec::try_from(flat.weight_stats().expect("stats").flatten(0, -1).to_device(Device::Cpu)).expect("rows");
        let first_norm = (1.0f32 + 4.0 + 16.0).sqrt();
        assert!((rows[0] - 2.0 * first_norm).abs() < 1e-5);
        assert!((rows[2] - 1.0).abs() < 1e-6, "doubling changes the weights by their own norm");
        assert_eq!(rows[3], 0.0, "the second layer did not move");
    }
}
