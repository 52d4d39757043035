//! The one device→host copy a step makes. Its blocks (the step's scalars, the gradient
//! statistics, the held step's weight statistics, the histogram counts) travel end to end
//! in one float64 buffer; a [`HostLayout`] knows which blocks a copy holds and where each
//! lies for L layers, and both the packing ([`DeviceParts::copy_to_host`]) and the reading
//! ([`HostCopy`]) go through it, so their offsets cannot drift apart.

use std::ops::Range;

use tch::{Device, Kind, Tensor};

use super::stats::{HIST_BINS, LayerStats};
use crate::vocab::Statistic;

/// The parts of a copy, in the order they travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// [`Scalars::COUNT`] numbers: the loss, the global norm before and after the grad
    /// policies, the policies' skip and forced flags, and the loss scaler's overflow flag.
    Scalars,
    /// `Statistic::GRAD` rows of one value per layer.
    GradStats,
    /// `Statistic::WEIGHT` rows of one value per layer.
    WeightStats,
    /// [`HIST_BINS`] counts per layer, layer after layer.
    Hist,
    /// The largest singular value of each measured matrix (`spectral` of them).
    Spectral,
    /// The gradient's norm at each input position (`time` of them).
    Time,
    /// Each block output's mean, then each one's RMS (`signal` blocks).
    Signal,
}

impl Block {
    const ORDER: [Self; 7] =
        [Self::Scalars, Self::GradStats, Self::WeightStats, Self::Hist, Self::Spectral, Self::Time, Self::Signal];
}

/// Which blocks a copy holds, for how many layers: the offsets of everything in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostLayout {
    pub layers: usize,
    pub scalars: bool,
    pub grad_stats: bool,
    pub weight_stats: bool,
    pub hist: bool,
    /// Matrices whose spectral radius the copy holds (0: none).
    pub spectral: usize,
    /// Input positions whose gradient norm the copy holds (0: none).
    pub time: usize,
    /// Blocks whose output's mean and RMS the copy holds (0: none).
    pub signal: usize,
}

impl HostLayout {
    fn holds(&self, block: Block) -> bool {
        match block {
            Block::Scalars => self.scalars,
            Block::GradStats => self.grad_stats,
            Block::WeightStats => self.weight_stats,
            Block::Hist => self.hist,
            Block::Spectral => self.spectral > 0,
            Block::Time => self.time > 0,
            Block::Signal => self.signal > 0,
        }
    }

    /// The length of `block`, whether or not the copy holds it.
    pub fn len(&self, block: Block) -> usize {
        match block {
            Block::Scalars => Scalars::COUNT,
            Block::GradStats => Statistic::GRAD.len() * self.layers,
            Block::WeightStats => Statistic::WEIGHT.len() * self.layers,
            Block::Hist => HIST_BINS * self.layers,
            Block::Spectral => self.spectral,
            Block::Time => self.time,
            Block::Signal => 2 * self.signal,
        }
    }

    /// Where `block` lies in the copy, if it holds it.
    pub fn range(&self, block: Block) -> Option<Range<usize>> {
        let start: usize =
            Block::ORDER.iter().take_while(|&&b| b != block).filter(|&&b| self.holds(b)).map(|&b| self.len(b)).sum();
        self.holds(block).then(|| start..start + self.len(block))
    }

    /// Numbers in the whole copy.
    pub fn total(&self) -> usize {
        Block::ORDER.iter().filter(|&&b| self.holds(b)).map(|&b| self.len(b)).sum()
    }
}

/// A step's scalars on the device, each one element.
#[derive(Debug)]
pub struct DeviceScalars<'a> {
    pub loss: &'a Tensor,
    pub grad_norm: &'a Tensor,
    pub grad_norm_clipped: &'a Tensor,
    /// Nonzero when a grad policy dropped the update.
    pub skip: &'a Tensor,
    /// Nonzero when `skip_spike` took an update after its maximum of skips.
    pub forced: &'a Tensor,
    /// Nonzero when the loss-scaled gradients held an infinity or a NaN; `None` (0)
    /// without loss scaling.
    pub overflow: Option<&'a Tensor>,
}

/// A step's scalars on the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scalars {
    pub loss: f64,
    pub grad_norm: f64,
    pub grad_norm_clipped: f64,
    pub skip: bool,
    pub forced: bool,
    pub overflow: bool,
}

impl Scalars {
    pub const COUNT: usize = 6;
}

/// What one copy carries from the device; each block is optional.
#[derive(Debug, Default)]
pub struct DeviceParts<'a> {
    pub scalars: Option<DeviceScalars<'a>>,
    /// `[Statistic::GRAD.len(), layers]`, from `FlatParams::grad_stats`.
    pub grad_stats: Option<&'a Tensor>,
    /// `[Statistic::WEIGHT.len(), layers]`, from `FlatParams::weight_stats`.
    pub weight_stats: Option<&'a Tensor>,
    /// `[layers * HIST_BINS]` int64 counts, from `FlatParams::grad_histogram`.
    pub hist: Option<&'a Tensor>,
    /// `[matrices]`, from `Spectral::measure`.
    pub spectral: Option<&'a Tensor>,
    /// `[positions]`, from `time_profile`.
    pub time: Option<&'a Tensor>,
    /// `[2, blocks]`: means, then RMS, from `signal_stats`.
    pub signal: Option<&'a Tensor>,
}

impl DeviceParts<'_> {
    /// The layout these parts make for `layers` layers.
    pub fn layout(&self, layers: usize) -> HostLayout {
        HostLayout {
            layers,
            scalars: self.scalars.is_some(),
            grad_stats: self.grad_stats.is_some(),
            weight_stats: self.weight_stats.is_some(),
            hist: self.hist.is_some(),
            spectral: self.spectral.map_or(0, Tensor::numel),
            time: self.time.map_or(0, Tensor::numel),
            signal: self.signal.map_or(0, |t| t.numel() / 2),
        }
    }

    /// Copies every part to the host at once: each flattened and converted to float64 on
    /// the device (histogram counts exactly, never through float32), then concatenated.
    pub fn copy_to_host(&self, layers: usize) -> anyhow::Result<HostCopy> {
        let layout = self.layout(layers);
        let mut parts: Vec<Tensor> = Vec::with_capacity(Scalars::COUNT + 6);
        for block in Block::ORDER {
            let before = parts.len();
            match block {
                Block::Scalars => {
                    if let Some(s) = &self.scalars {
                        let overflow = match s.overflow {
                            Some(t) => t.shallow_clone(),
                            None => s.skip.f_zeros_like()?,
                        };
                        for t in [s.loss, s.grad_norm, s.grad_norm_clipped, s.skip, s.forced, &overflow] {
                            parts.push(t.f_detach()?.f_reshape([1])?);
                        }
                    }
                }
                Block::GradStats => parts.extend(self.grad_stats.map(|t| t.f_flatten(0, -1)).transpose()?),
                Block::WeightStats => parts.extend(self.weight_stats.map(|t| t.f_flatten(0, -1)).transpose()?),
                Block::Hist => parts.extend(self.hist.map(|t| t.f_flatten(0, -1)).transpose()?),
                Block::Spectral => parts.extend(self.spectral.map(|t| t.f_flatten(0, -1)).transpose()?),
                Block::Time => parts.extend(self.time.map(|t| t.f_flatten(0, -1)).transpose()?),
                Block::Signal => parts.extend(self.signal.map(|t| t.f_flatten(0, -1)).transpose()?),
            }
            let numel: usize = parts[before..].iter().map(Tensor::numel).sum();
            let expected = if layout.holds(block) { layout.len(block) } else { 0 };
            anyhow::ensure!(numel == expected, "{block:?} holds {numel} numbers, its layout {expected}");
        }
        if parts.is_empty() {
            return Ok(HostCopy { layout, values: Vec::new() });
        }
        let parts: Vec<Tensor> = parts.iter().map(|p| p.f_to_kind(Kind::Double)).collect::<Result<_, _>>()?;
        let values: Vec<f64> = Vec::try_from(&Tensor::f_cat(&parts, 0)?.f_to_device(Device::Cpu)?)?;
        Ok(HostCopy { layout, values })
    }
}

/// A copy on the host, read by block.
#[derive(Debug, Clone, PartialEq)]
pub struct HostCopy {
    layout: HostLayout,
    values: Vec<f64>,
}

impl HostCopy {
    pub fn layout(&self) -> HostLayout {
        self.layout
    }

    /// The numbers of `block`, if the copy holds it.
    pub fn block(&self, block: Block) -> Option<&[f64]> {
        self.layout.range(block).and_then(|r| self.values.get(r))
    }

    pub fn scalars(&self) -> Option<Scalars> {
        let &[loss, grad_norm, grad_norm_clipped, skip, forced, overflow] = self.block(Block::Scalars)? else {
            return None;
        };
        Some(Scalars {
            loss,
            grad_norm,
            grad_norm_clipped,
            skip: skip != 0.0,
            forced: forced != 0.0,
            overflow: overflow != 0.0,
        })
    }

    /// The gradient statistics, as a [`LayerStats`] whose other statistics are empty.
    pub fn grad_stats(&self) -> Option<LayerStats> {
        self.block(Block::GradStats).map(|rows| LayerStats::from_grad_rows(rows, self.layout.layers))
    }

    /// The weight rows, for [`LayerStats::set_weight_rows`].
    pub fn weight_rows(&self) -> Option<&[f64]> {
        self.block(Block::WeightStats)
    }

    /// The spectral radius of each measured matrix.
    pub fn spectral(&self) -> Option<Vec<f64>> {
        self.block(Block::Spectral).map(<[f64]>::to_vec)
    }

    /// The gradient's norm at each input position.
    pub fn time(&self) -> Option<Vec<f64>> {
        self.block(Block::Time).map(<[f64]>::to_vec)
    }

    /// Each block output's mean, then each one's RMS.
    pub fn signal(&self) -> Option<Vec<f64>> {
        self.block(Block::Signal).map(<[f64]>::to_vec)
    }

    /// The histogram counts, layer after layer.
    pub fn hist(&self) -> Option<Vec<u64>> {
        self.block(Block::Hist).map(|counts| counts.iter().map(|&c| c as u64).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_lie_end_to_end_in_their_order() {
        let all = HostLayout {
            layers: 3,
            scalars: true,
            grad_stats: true,
            weight_stats: true,
            hist: true,
            spectral: 0,
            time: 0,
            signal: 0,
        };
        assert_eq!(all.range(Block::Scalars), Some(0..6));
        assert_eq!(all.range(Block::GradStats), Some(6..27));
        assert_eq!(all.range(Block::WeightStats), Some(27..33));
        assert_eq!(all.range(Block::Hist), Some(33..33 + 153));
        assert_eq!(all.total(), 6 + 21 + 6 + 153);
        let some = HostLayout { weight_stats: false, ..all };
        assert_eq!(some.range(Block::WeightStats), None);
        assert_eq!(some.range(Block::Hist), Some(27..27 + 153));
    }

    #[test]
    fn a_copy_reads_back_what_was_packed() {
        let layers = 2;
        let one = |v: f64| Tensor::from_slice(&[v as f32]);
        let (loss, norm, clipped, skip, forced) = (one(2.5), one(4.0), one(1.0), one(0.0), one(1.0));
        let overflow = one(1.0);
        let grad = Tensor::arange(14, (Kind::Float, Device::Cpu)).view([7, 2]);
        let weight = Tensor::from_slice(&[10.0f32, 20.0, 0.5, f32::NAN]).view([2, 2]);
        let counts: Vec<i64> = (0..(HIST_BINS * layers) as i64).map(|i| i + (1 << 40)).collect();
        let hist = Tensor::from_slice(&counts);
        let spectral = Tensor::from_slice(&[0.5f32, 1.25, 3.0]);
        let time = Tensor::from_slice(&[1e-9f32, 0.5]);
        let signal = Tensor::from_slice(&[-0.25f32, 0.5, 2.0, 4.0]).view([2, 2]);
        let parts = DeviceParts {
            scalars: Some(DeviceScalars {
                loss: &loss,
                grad_norm: &norm,
                grad_norm_clipped: &clipped,
                skip: &skip,
                forced: &forced,
                overflow: Some(&overflow),
            }),
            grad_stats: Some(&grad),
            weight_stats: Some(&weight),
            hist: Some(&hist),
            spectral: Some(&spectral),
            time: Some(&time),
            signal: Some(&signal),
        };
        let copy = parts.copy_to_host(layers).expect("copy");
        assert_eq!(
            copy.scalars(),
            Some(Scalars {
                loss: 2.5,
                grad_norm: 4.0,
                grad_norm_clipped: 1.0,
                skip: false,
                forced: true,
                overflow: true
            })
        );
        let mut stats = copy.grad_stats().expect("grad stats");
        // Row r of the stacked statistics is Statistic::GRAD[r]; layer l its column.
        for (r, &stat) in Statistic::GRAD.iter().enumerate() {
            assert_eq!(stats.get(stat), [2.0 * r as f64, 2.0 * r as f64 + 1.0], "{stat}");
        }
        stats.set_weight_rows(copy.weight_rows().expect("weights"), layers);
        assert_eq!(stats.weight_norm, [10.0, 20.0]);
        assert!(stats.update_ratio[0] == 0.5 && stats.update_ratio[1].is_nan());
        assert_eq!(copy.hist().expect("hist"), counts.iter().map(|&c| c as u64).collect::<Vec<_>>());
        assert_eq!(copy.spectral(), Some(vec![0.5, 1.25, 3.0]));
        assert_eq!(copy.time(), Some(vec![f64::from(1e-9f32), 0.5]));
        assert_eq!(copy.signal(), Some(vec![-0.25, 0.5, 2.0, 4.0]));

        let weights_only = DeviceParts { weight_stats: Some(&weight), ..DeviceParts::default() };
        let copy = weights_only.copy_to_host(layers).expect("copy");
        assert_eq!((copy.scalars(), copy.grad_stats(), copy.hist()), (None, None, None));
        assert_eq!(copy.weight_rows().map(<[f64]>::len), Some(4));
    }

    #[test]
    fn a_part_of_the_wrong_size_is_an_error() {
        let grad = Tensor::zeros([6, 3], (Kind::Float, Device::Cpu));
        let parts = DeviceParts { grad_stats: Some(&grad), ..DeviceParts::default() };
        assert!(parts.copy_to_host(2).is_err());
    }
}
