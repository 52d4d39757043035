//! The block sweeps of [`super`] in AVX-512, where the CPU has it.
//!
//! Compiled from portable loops, the float64 sums convert every element to float64 and
//! keep one or two vector accumulators busy; the sweep of a block in the L1 cache then
//! costs more than reading it from memory, and the statistics' pass took 2.5× as long as
//! one read of the gradients. Here a block is read in groups of 64 elements (four vectors
//! of 16): each lane sums its four values, and their squares, in float32 as a two-level
//! tree, and only those sums are converted to float64 and added to float64 lanes. A group's
//! sum carries at most three roundings of float32 (about 2e-7 of it) and the sums across
//! groups none that float64 would not, so Σx² stays within 1e-7 of float64 after the square
//! root, and the mean within float32's rounding of each value.
//!
//! Float32 holds x² only within its range, so a block is taken here only where its Σx²
//! lies between 2⁻¹⁰⁰ and 2¹²⁴: then every |x| is below 2⁶², so that no square or sum of
//! four overflows, and a square below float32's normal range, off by at most 2⁻¹⁵⁰, puts
//! less than 2⁻³⁸ of error into the block's sum. Outside it (a block of gradients whose
//! RMS is below about 1e-17 or above 1e16, or one that holds a NaN or an infinity) the
//! caller sweeps the block by the portable loops. The rule depends on Σx² alone, which
//! every sweep here takes the same way, so the global norm has the same bits whether a
//! step records statistics or not.
//!
//! Each sweep is compiled for AVX-512F and called through an [`Avx512`] token, which
//! exists only where the CPU runs it.

use std::arch::x86_64::{
    __m512, __m512d, __m512i, _mm256_castpd_ps, _mm512_add_pd, _mm512_add_ps, _mm512_and_si512, _mm512_castps_pd,
    _mm512_castps_si512, _mm512_castps512_ps256, _mm512_cvtps_pd, _mm512_extractf64x4_pd, _mm512_fmadd_ps,
    _mm512_loadu_ps, _mm512_max_epu32, _mm512_min_epu32, _mm512_mul_ps, _mm512_reduce_add_pd, _mm512_reduce_max_epu32,
    _mm512_reduce_min_epu32, _mm512_set1_epi32, _mm512_set1_ps, _mm512_setzero_pd, _mm512_setzero_ps,
    _mm512_setzero_si512, _mm512_storeu_ps,
};

use super::ABS_BITS;

/// Elements per group: four vectors of 16 float32.
const GROUP: usize = 64;
/// The range of a block's Σx² in which its sweep here is exact to the bounds above.
const SQUARES_FROM: f64 = 1.0 / (1u128 << 100) as f64;
const SQUARES_TO: f64 = (1u128 << 124) as f64;

/// Proof that the CPU runs AVX-512F: the sweeps are methods of this token, which only
/// [`Avx512::detect`] makes.
#[derive(Debug, Clone, Copy)]
pub struct Avx512(());

/// What one sweep of a block gives: Σx and Σx² (both when in range, see the module), and
/// the largest and smallest |x| as bits.
pub struct Sums {
    pub sum: f64,
    pub squares: f64,
    pub max_bits: u32,
    pub min_bits: u32,
}

impl Avx512 {
    /// The token where the CPU runs AVX-512F (the answer is cached by the standard
    /// library).
    pub fn detect() -> Option<Self> {
        std::arch::is_x86_feature_detected!("avx512f").then_some(Self(()))
    }

    /// A block's Σx², or `None` outside the range this module takes.
    pub fn squares(self, block: &[f32]) -> Option<f64> {
        // SAFETY: the token exists, so the CPU runs AVX-512F.
        let sums = unsafe { sweep::<false, false>(block) };
        in_range(sums.squares).then_some(sums.squares)
    }

    /// A block's Σx and Σx², or `None` outside the range this module takes.
    pub fn sum_and_squares(self, block: &[f32]) -> Option<(f64, f64)> {
        // SAFETY: as in `squares`.
        let sums = unsafe { sweep::<true, false>(block) };
        in_range(sums.squares).then_some((sums.sum, sums.squares))
    }

    /// Σx, Σx² and the bits of the largest and smallest |x|, or `None` outside the range.
    pub fn sums(self, block: &[f32]) -> Option<Sums> {
        // SAFETY: as in `squares`.
        let sums = unsafe { sweep::<true, true>(block) };
        in_range(sums.squares).then_some(sums)
    }

    /// Σd and Σd² for d = x·scale − shift, in float32 over 64 lanes (a 4096-element block
    /// puts 64 values in each), the lanes then summed in float64.
    pub fn deviations(self, block: &[f32], scale: f32, shift: f32) -> (f64, f64) {
        // SAFETY: as in `squares`.
        unsafe { deviation_sweep(block, scale, shift) }
    }
}

fn in_range(squares: f64) -> bool {
    (SQUARES_FROM..=SQUARES_TO).contains(&squares)
}

/// A float64 accumulator of 16 lanes, fed float32 vectors.
#[derive(Clone, Copy)]
struct Wide([__m512d; 2]);

impl Wide {
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn new() -> Self {
        Self([_mm512_setzero_pd(); 2])
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn add(&mut self, v: __m512) {
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        self.0[0] = _mm512_add_pd(self.0[0], _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        self.0[1] = _mm512_add_pd(self.0[1], _mm512_cvtps_pd(high));
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn total(self) -> f64 {
        _mm512_reduce_add_pd(_mm512_add_pd(self.0[0], self.0[1]))
    }
}

/// One sweep of a block: Σx² always, Σx where `SUM`, the extreme |x| bits where `BITS`.
/// Every caller takes Σx² through the same operations, in the same order.
///
/// Safety: the CPU must run AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn sweep<const SUM: bool, const BITS: bool>(block: &[f32]) -> Sums {
    let groups = block.chunks_exact(GROUP);
    let tail = groups.remainder();
    let (mut sum, mut squares) = (Wide::new(), Wide::new());
    let abs = _mm512_set1_epi32(ABS_BITS as i32);
    let (mut max, mut min): (__m512i, __m512i) = (_mm512_setzero_si512(), _mm512_set1_epi32(-1));
    for g in groups {
        let p = g.as_ptr();
        // SAFETY: `g` holds GROUP = 4 × 16 float32; unaligned loads.
        let x: [__m512; 4] = unsafe {
            [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)), _mm512_loadu_ps(p.add(32)), _mm512_loadu_ps(p.add(48))]
        };
        squares.add(_mm512_add_ps(
            _mm512_fmadd_ps(x[0], x[0], _mm512_mul_ps(x[1], x[1])),
            _mm512_fmadd_ps(x[2], x[2], _mm512_mul_ps(x[3], x[3])),
        ));
        if SUM {
            sum.add(_mm512_add_ps(_mm512_add_ps(x[0], x[1]), _mm512_add_ps(x[2], x[3])));
        }
        if BITS {
            let b = [
                _mm512_and_si512(_mm512_castps_si512(x[0]), abs),
                _mm512_and_si512(_mm512_castps_si512(x[1]), abs),
                _mm512_and_si512(_mm512_castps_si512(x[2]), abs),
                _mm512_and_si512(_mm512_castps_si512(x[3]), abs),
            ];
            let (high, low) = (_mm512_max_epu32(b[0], b[1]), _mm512_max_epu32(b[2], b[3]));
            max = _mm512_max_epu32(max, _mm512_max_epu32(high, low));
            let (high, low) = (_mm512_min_epu32(b[0], b[1]), _mm512_min_epu32(b[2], b[3]));
            min = _mm512_min_epu32(min, _mm512_min_epu32(high, low));
        }
    }
    let (mut sum, mut squares) = (sum.total(), squares.total());
    let (mut max_bits, mut min_bits) = (_mm512_reduce_max_epu32(max), _mm512_reduce_min_epu32(min));
    for &x in tail {
        let wide = f64::from(x);
        squares += wide * wide;
        if SUM {
            sum += wide;
        }
        if BITS {
            let bits = x.to_bits() & ABS_BITS;
            (max_bits, min_bits) = (max_bits.max(bits), min_bits.min(bits));
        }
    }
    Sums { sum, squares, max_bits, min_bits }
}

/// Safety: the CPU must run AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn deviation_sweep(block: &[f32], scale: f32, shift: f32) -> (f64, f64) {
    // x·scale is exact (a power of two), so the fused d is x·scale − shift rounded once,
    // as the portable loops' two operations give it.
    let (scales, shifts) = (_mm512_set1_ps(scale), _mm512_set1_ps(-shift));
    let (mut d1, mut d2) = ([_mm512_setzero_ps(); 4], [_mm512_setzero_ps(); 4]);
    let groups = block.chunks_exact(GROUP);
    let tail = groups.remainder();
    for g in groups {
        let p = g.as_ptr();
        for k in 0..4 {
            // SAFETY: `g` holds GROUP = 4 × 16 float32; unaligned loads.
            let d = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(p.add(16 * k)) }, scales, shifts);
            d1[k] = _mm512_add_ps(d1[k], d);
            d2[k] = _mm512_fmadd_ps(d, d, d2[k]);
        }
    }
    let (mut s1, mut s2) = (0.0, 0.0);
    let mut lanes = [0f32; 16];
    for k in 0..4 {
        // SAFETY: `lanes` holds 16 float32; unaligned store.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), d1[k]) };
        s1 += lanes.iter().map(|&x| f64::from(x)).sum::<f64>();
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), d2[k]) };
        s2 += lanes.iter().map(|&x| f64::from(x)).sum::<f64>();
    }
    for &x in tail {
        let d = f64::from(x * scale - shift);
        s1 += d;
        s2 += d * d;
    }
    (s1, s2)
}
