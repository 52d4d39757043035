//! The largest singular value of the weight matrices that a signal crosses again and
//! again: each recurrent `weight_hh` and each square hidden weight of an MLP. By Pascanu,
//! Mikolov & Bengio (2013), with a recurrence `h_t = W σ(h_{t-1}) + …` whose σ' is at most
//! γ, a largest singular value of W below 1/γ makes the gradient through time vanish, and
//! one above it is needed for it to explode; for tanh γ = 1, so 1.0 is the line to watch.
//!
//! For an LSTM or a GRU, `weight_hh` stacks one square `[hidden, hidden]` block per gate
//! (PyTorch's order: i, f, g, o and r, z, n). Each block is measured on its own: the block
//! of the candidate (`g`, `n`) is the one that plays the vanilla RNN's W, and the gates'
//! blocks say how strongly the state drives each gate. The largest singular value of the
//! whole stacked matrix is not a spectral radius of anything in the recurrence (the matrix
//! is not square), and it only bounds the blocks from above: it would hide which one grew.
//!
//! Power (subspace) iteration on `WᵀW` with [`SUBSPACE`] vectors, for every matrix of one
//! size at once (`bmm` over a stack), on the device; σ_max is read from the span of the
//! vectors (Rayleigh–Ritz). The vectors are kept between measurements, so after the first
//! (cold, [`COLD_ITERATIONS`]) a few iterations ([`WARM_ITERATIONS`]) follow the slowly
//! changing weights. The start vectors are a fixed function of the size, not a random
//! draw: a measurement must never move the job's random number generator.

use tch::{Kind, Tensor};

use super::LayerInfo;

/// Iterations of the first measurement, from the fixed start vector.
pub const COLD_ITERATIONS: i64 = 64;
/// Iterations of each later measurement, from the last one's vector.
pub const WARM_ITERATIONS: i64 = 8;
/// The largest matrix side measured: the stack of one size is copied once per measurement.
pub const MAX_SIDE: i64 = 16_384;

/// One measured matrix: a layer, or one gate's block of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    /// The layer (in the job's layer order) the matrix is, or is a block of.
    pub layer: usize,
    /// `lstm.weight_hh_l0[f]` for a gate's block, the layer's name for a whole matrix.
    pub name: String,
    /// The block's place among the layer's row blocks (0 for a whole matrix).
    pub block: i64,
    /// Rows and columns.
    pub side: i64,
}

/// The gate names of a `weight_hh` of `gates` stacked blocks, in PyTorch's order.
fn gate_names(gates: i64) -> Option<&'static [&'static str]> {
    match gates {
        1 => Some(&[]),
        3 => Some(&["r", "z", "n"]),
        4 => Some(&["i", "f", "g", "o"]),
        _ => None,
    }
}

/// Whether `name` is a recurrent weight in PyTorch's naming (`…weight_hh_l<k>`).
fn is_recurrent(name: &str) -> bool {
    name.rsplit('.')
        .next()
        .and_then(|leaf| leaf.strip_prefix("weight_hh_l"))
        .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `name` is a hidden block's weight of the built-in MLP (`blocks.<i>.linear.weight`).
fn is_mlp_block(name: &str) -> bool {
    name.strip_prefix("blocks.")
        .and_then(|rest| rest.strip_suffix(".linear.weight"))
        .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
}

/// The matrices measured among `layers`, by name and shape alone (so the service can name
/// them from the stored layers): each `weight_hh` of 1, 3 or 4 square blocks, whole or per
/// gate, and each square `blocks.<i>.linear.weight`.
pub fn matrices(layers: &[LayerInfo]) -> Vec<Matrix> {
    let mut out = Vec::new();
    for (layer, info) in layers.iter().enumerate() {
        let &[rows, side] = info.shape.as_slice() else { continue };
        if side <= 0 || side > MAX_SIDE || rows % side != 0 {
            continue;
        }
        if is_recurrent(&info.name) {
            let Some(gates) = gate_names(rows / side) else { continue };
            if gates.is_empty() {
                out.push(Matrix { layer, name: info.name.clone(), block: 0, side });
            }
            for (block, gate) in gates.iter().enumerate() {
                out.push(Matrix { layer, name: format!("{}[{gate}]", info.name), block: block as i64, side });
            }
        } else if is_mlp_block(&info.name) && rows == side {
            out.push(Matrix { layer, name: info.name.clone(), block: 0, side });
        }
    }
    out
}

/// The matrices of one side, measured together.
#[derive(Debug)]
struct Group {
    side: i64,
    /// Positions in [`Spectral::matrices`] of this group's matrices, in stack order.
    members: Vec<usize>,
    /// The current estimates of the top right singular vectors, `[members, side, k]`.
    vectors: Option<Tensor>,
}

/// The measured matrices, their weights and the power iteration's vectors.
#[derive(Debug)]
pub struct Spectral {
    matrices: Vec<Matrix>,
    /// Each matrix's parameter (its data a view into the flat weights).
    weights: Vec<Tensor>,
    groups: Vec<Group>,
    /// Where each group's values go in the result: the inverse of the groups' order.
    restore: Option<Tensor>,
}

impl Spectral {
    /// Measures the matrices [`matrices`] finds among `layers`; `weight(i)` is layer `i`'s
    /// parameter. `None` when there is none.
    pub fn new(layers: &[LayerInfo], weight: impl Fn(usize) -> Tensor) -> anyhow::Result<Option<Self>> {
        let matrices = matrices(layers);
        if matrices.is_empty() {
            return Ok(None);
        }
        let weights: Vec<Tensor> = matrices.iter().map(|m| weight(m.layer)).collect();
        let mut groups: Vec<Group> = Vec::new();
        for (i, m) in matrices.iter().enumerate() {
            match groups.iter_mut().find(|g| g.side == m.side) {
                Some(group) => group.members.push(i),
                None => groups.push(Group { side: m.side, members: vec![i], vectors: None }),
            }
        }
        let order: Vec<i64> = groups.iter().flat_map(|g| g.members.iter().map(|&i| i as i64)).collect();
        let mut inverse = vec![0i64; order.len()];
        for (at, &i) in order.iter().enumerate() {
            inverse[i as usize] = at as i64;
        }
        let device = weights[0].device();
        let identity = inverse.iter().enumerate().all(|(i, &j)| i as i64 == j);
        let restore = if identity { None } else { Some(Tensor::from_slice(&inverse).f_to(device)?) };
        Ok(Some(Self { matrices, weights, groups, restore }))
    }

    pub fn matrices(&self) -> &[Matrix] {
        &self.matrices
    }

    /// The largest singular value of every matrix, `[matrices]` float32 on the device, in
    /// the order of [`Self::matrices`]; no host synchronisation. Moves the kept vectors on.
    pub fn measure(&mut self) -> anyhow::Result<Tensor> {
        tch::no_grad(|| {
            let mut parts = Vec::with_capacity(self.groups.len());
            for group in &mut self.groups {
                let blocks: Vec<Tensor> = group
                    .members
                    .iter()
                    .map(|&i| {
                        let m = &self.matrices[i];
                        self.weights[i].f_narrow(0, m.block * m.side, m.side)
                    })
                    .collect::<Result<_, _>>()?;
                let stack = Tensor::f_stack(&blocks, 0)?;
                let (vectors, sigma) = power_iteration(&stack, group.vectors.as_ref())?;
                group.vectors = Some(vectors);
                parts.push(sigma);
            }
            let all = Tensor::f_cat(&parts, 0)?;
            Ok(match &self.restore {
                Some(index) => all.f_index_select(0, index)?,
                None => all,
            })
        })
    }
}

/// Vectors iterated together: the largest singular value comes out of the subspace they
/// span (Rayleigh–Ritz), which converges at the rate of σ_{k+1}/σ_1 rather than σ_2/σ_1, so
/// matrices whose top singular values lie close together still converge in few steps.
pub const SUBSPACE: i64 = 4;

/// `k` fixed start vectors of `side` entries (`[side, k]`), not orthogonal to any
/// particular direction a trained matrix prefers: the fractional parts of multiples of
/// the golden ratio, a different multiple per vector, centred.
fn start_vectors(side: i64, k: i64) -> Vec<f32> {
    let phi = 0.618_033_988_749_894_9_f64;
    let mut out = Vec::with_capacity((side * k) as usize);
    for i in 0..side {
        for j in 0..k {
            out.push(((i as f64 + 1.0) * (j as f64 + 1.0) * phi).fract() as f32 - 0.5);
        }
    }
    out
}

/// Subspace iteration on `WᵀW` for a stack `[m, n, n]`, from `start` (`[m, n, k]`) or
/// the fixed start vectors; returns the new orthonormal vectors and, for each matrix, the
/// largest singular value of W restricted to their span (a lower bound that converges to
/// σ_max). A zero matrix measures 0.
pub fn power_iteration(stack: &Tensor, start: Option<&Tensor>) -> anyhow::Result<(Tensor, Tensor)> {
    let (m, n, _) = stack.size3()?;
    let (mut v, iterations) = match start {
        Some(v) => (v.shallow_clone(), WARM_ITERATIONS),
        None => {
            let k = SUBSPACE.min(n);
            let v = Tensor::from_slice(&start_vectors(n, k)).f_to(stack.device())?.f_view([1, n, k])?;
            (v.f_expand([m, n, k], false)?.f_contiguous()?, COLD_ITERATIONS)
        }
    };
    v = orthonormal(&v)?;
    let transposed = stack.f_transpose(1, 2)?;
    for _ in 0..iterations {
        v = orthonormal(&transposed.f_bmm(&stack.f_bmm(&v)?)?)?;
    }
    // The k × k Gram matrix of W V: its largest eigenvalue is the largest σ² in the span.
    let image = stack.f_bmm(&v)?;
    let gram = image.f_transpose(1, 2)?.f_bmm(&image)?;
    let sigma = gram.f_linalg_eigvalsh("L")?.f_select(1, -1)?.f_clamp_min(0.0)?.f_sqrt()?.f_to_kind(Kind::Float)?;
    Ok((v, sigma))
}

/// An orthonormal basis of each matrix's columns (`[m, n, k]`), by reduced QR.
fn orthonormal(v: &Tensor) -> anyhow::Result<Tensor> {
    Ok(Tensor::f_linalg_qr(v, "reduced")?.0)
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;
    use crate::train::model::with_seed;

    fn layer(name: &str, shape: &[i64]) -> LayerInfo {
        LayerInfo { index: 0, name: name.to_owned(), shape: shape.to_vec(), numel: shape.iter().product() }
    }

    #[test]
    fn recurrent_and_square_mlp_weights_are_found_by_name_and_shape() {
        let layers = [
            layer("embed.weight", &[10, 8]),
            layer("lstm.weight_ih_l0", &[32, 8]),
            layer("lstm.weight_hh_l0", &[32, 8]),
            layer("gru.weight_hh_l1", &[24, 8]),
            layer("rnn.weight_hh_l0", &[8, 8]),
            layer("rnn.bias_hh_l0", &[8]),
            layer("blocks.0.linear.weight", &[8, 4]),
            layer("blocks.1.linear.weight", &[8, 8]),
            layer("blocks.1.linear.bias", &[8]),
            layer("head.weight", &[8, 8]),
            layer("odd.weight_hh_l0", &[16, 8]),
        ];
        let names: Vec<(usize, String)> = matrices(&layers).into_iter().map(|m| (m.layer, m.name)).collect();
        let expected = [
            (2, "lstm.weight_hh_l0[i]"),
            (2, "lstm.weight_hh_l0[f]"),
            (2, "lstm.weight_hh_l0[g]"),
            (2, "lstm.weight_hh_l0[o]"),
            (3, "gru.weight_hh_l1[r]"),
            (3, "gru.weight_hh_l1[z]"),
            (3, "gru.weight_hh_l1[n]"),
            (4, "rnn.weight_hh_l0"),
            (7, "blocks.1.linear.weight"),
        ];
        assert_eq!(names, expected.map(|(l, n)| (l, n.to_owned())));
    }

    /// Against the singular values LibTorch's SVD gives, for matrices of two sizes whose
    /// order in the result differs from their order by size.
    #[test]
    fn the_measure_is_the_largest_singular_value() {
        let layers = [
            layer("rnn.weight_hh_l0", &[6, 6]),
            layer("gru.weight_hh_l0", &[12, 4]),
            layer("rnn.weight_hh_l1", &[6, 6]),
        ];
        let weights: Vec<Tensor> = with_seed(7, || {
            layers.iter().map(|l| Tensor::randn(l.shape.as_slice(), (Kind::Float, Device::Cpu))).collect()
        });
        let mut spectral = Spectral::new(&layers, |i| weights[i].shallow_clone()).expect("new").expect("some");
        let expected: Vec<f64> = spectral
            .matrices()
            .iter()
            .map(|m| {
                let block = weights[m.layer].narrow(0, m.block * m.side, m.side);
                block.to_kind(Kind::Double).linalg_norm(2, [0i64, 1].as_slice(), false, None::<Kind>).double_value(&[])
            })
            .collect();
        for round in 0..3 {
            let got = Vec::<f64>::try_from(spectral.measure().expect("measure")).expect("values");
            for (g, e) in got.iter().zip(&expected) {
                assert!((g - e).abs() < 1e-3 * e, "round {round}: {got:?} vs {expected:?}");
            }
        }
        let zero = Tensor::zeros([1, 3, 3], (Kind::Float, Device::Cpu));
        let (v, sigma) = power_iteration(&zero, None).expect("zeros");
        assert_eq!(v.size(), [1, 3, 3]);
        assert_eq!(sigma.double_value(&[0]), 0.0);
        assert!(v.isfinite().all().int64_value(&[]) == 1);
    }
}
