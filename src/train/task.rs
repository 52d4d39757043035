//! Tasks: where batches come from, how a model's output is scored, and what validation
//! reports. The loop calls [`Task::train_batch`], [`Task::loss`] and, every
//! `eval_every` steps, [`Task::evaluate`]; nothing else in it knows which task runs.
//!
//! All data derive from the job's seed, through separate streams for training batches,
//! the fixed validation set and the task's own constants (cluster centres), so the same
//! spec and seed see the same data on the same kind of device. (The classification
//! task's noise is drawn by LibTorch on the job's device, whose CPU and CUDA generators
//! give different numbers for one seed.)

use anyhow::Context;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Reduction, Tensor};

use super::EvalReport;
use super::data::{Batch, CharCorpus};
use super::model::{Input, Io, Model, with_seed};
use crate::spec::{ClassificationTask, DatasetTask, Loss, TaskSpec};

/// Samples in the validation set of the generated tasks, and most windows of a corpus's.
pub const VALID_SAMPLES: usize = 256;
/// The adding problem counts an answer right within this distance (Hochreiter & Schmidhuber).
pub const ADDING_TOLERANCE: f64 = 0.04;
const VALID_STREAM: u64 = 0x5eed_0001;
const CONSTANT_STREAM: u64 = 0x5eed_0002;

#[derive(Debug)]
enum Source {
    CharLm {
        corpus: CharCorpus,
        seq_len: i64,
    },
    Adding {
        seq_len: i64,
    },
    Copy {
        seq_len: i64,
        symbols: i64,
        length: i64,
    },
    Classification {
        /// `[classes × clusters, features]`, on the task's device.
        centres: Tensor,
        features: i64,
        classes: i64,
        clusters: i64,
        noise: f64,
    },
    /// An uploaded data set, on the device, drawn in shuffled epochs.
    Dataset {
        x: Tensor,
        y: Tensor,
        loss: Loss,
        epoch: Vec<i64>,
        next: usize,
    },
}

/// A task ready to produce batches on `device`.
#[derive(Debug)]
pub struct Task {
    kind: Source,
    rng: StdRng,
    valid: Option<Batch>,
    eval_every: u64,
    device: Device,
}

impl Task {
    /// `corpus` is the text of a `char_lm` task (ignored by the others).
    pub fn new(spec: &TaskSpec, corpus: &str, seed: u64, device: Device) -> anyhow::Result<Self> {
        let mut constants = StdRng::seed_from_u64(seed ^ CONSTANT_STREAM);
        let kind = match spec {
            TaskSpec::CharLm(t) => Source::CharLm { corpus: CharCorpus::new(corpus, t.seq_len)?, seq_len: t.seq_len },
            TaskSpec::Adding(t) => Source::Adding { seq_len: t.seq_len },
            TaskSpec::Copy(t) => Source::Copy { seq_len: t.seq_len, symbols: t.symbols, length: t.length },
            &TaskSpec::Classification(ClassificationTask { features, classes, clusters, noise, .. }) => {
                let centres: Vec<f32> =
                    (0..classes * clusters * features).map(|_| normal(&mut constants) as f32).collect();
                let centres = Tensor::from_slice(&centres).f_view([classes * clusters, features])?.f_to(device)?;
                Source::Classification { centres, features, classes, clusters, noise }
            }
            TaskSpec::Dataset(_) => anyhow::bail!("a dataset task is opened from its file with Task::dataset"),
        };
        let mut task =
            Self { kind, rng: StdRng::seed_from_u64(seed), valid: None, eval_every: spec.eval_every(), device };
        if task.eval_every > 0 {
            task.valid = task.validation_set(&mut StdRng::seed_from_u64(seed ^ VALID_STREAM))?;
        }
        Ok(task)
    }

    /// A `dataset` task over the tensors of its safetensors file (`x`, `y`, and optionally
    /// `x_val`, `y_val`, as the upload checked them). Training batches walk through the
    /// samples in shuffled epochs: each epoch is a permutation of all of them drawn from
    /// the job's seed, and a batch takes the next `batch_size` of it (running on into the
    /// next epoch). A batch of the whole set is therefore always every sample once.
    pub fn dataset(spec: &DatasetTask, file: &std::path::Path, seed: u64, device: Device) -> anyhow::Result<Self> {
        let mut tensors = Tensor::read_safetensors(file)?;
        let mut take = |name: &str| -> Option<Tensor> {
            let at = tensors.iter().position(|(n, _)| n == name)?;
            Some(tensors.swap_remove(at).1)
        };
        let (x, y) = (take("x").context("the data set has no x")?, take("y").context("the data set has no y")?);
        let valid = match (take("x_val"), take("y_val")) {
            (Some(xs), Some(ys)) if spec.eval_every > 0 => {
                let n = xs.size()[0].min(VALID_SAMPLES as i64);
                Some(Batch { xs: xs.f_narrow(0, 0, n)?.f_to(device)?, ys: ys.f_narrow(0, 0, n)?.f_to(device)? })
            }
            _ => None,
        };
        let kind =
            Source::Dataset { x: x.f_to(device)?, y: y.f_to(device)?, loss: spec.loss, epoch: Vec::new(), next: 0 };
        Ok(Self { kind, rng: StdRng::seed_from_u64(seed), valid, eval_every: spec.eval_every, device })
    }

    /// What the model must take and give.
    pub fn io(&self) -> Io {
        match &self.kind {
            Source::CharLm { corpus, seq_len } => {
                let vocab = corpus.vocab_size();
                Io { input: Input::Tokens(vocab), output: vocab, max_len: *seq_len }
            }
            Source::Adding { seq_len } => Io { input: Input::Features(2), output: 1, max_len: *seq_len },
            Source::Copy { seq_len, symbols, .. } => {
                Io { input: Input::Tokens(symbols + 2), output: *symbols, max_len: *seq_len }
            }
            Source::Classification { features, classes, .. } => {
                Io { input: Input::Features(*features), output: *classes, max_len: 1 }
            }
            // The module is what it is: nothing is built to fit.
            Source::Dataset { x, .. } => {
                Io { input: Input::Features(x.size().last().copied().unwrap_or(1)), output: 0, max_len: 0 }
            }
        }
    }

    /// The name of the metric [`Task::evaluate`] reports besides the loss, if any.
    pub fn metric_name(&self) -> Option<&'static str> {
        match self.kind {
            Source::CharLm { .. } => None,
            Source::Adding { .. } | Source::Copy { .. } | Source::Classification { .. } => Some("accuracy"),
            Source::Dataset { loss, .. } => match loss {
                Loss::CrossEntropy | Loss::BceWithLogits => Some("accuracy"),
                Loss::Mse => None,
            },
        }
    }

    /// A fresh training batch of `batch` samples.
    pub fn train_batch(&mut self, batch: i64) -> anyhow::Result<Batch> {
        if let Source::Dataset { x, y, epoch, next, .. } = &mut self.kind {
            let n = usize::try_from(x.size()[0])?;
            let mut picked = Vec::with_capacity(usize::try_from(batch)?);
            while picked.len() < picked.capacity() {
                if *next == epoch.len() {
                    *epoch = (0..n as i64).collect();
                    epoch.shuffle(&mut self.rng);
                    *next = 0;
                }
                let count = (picked.capacity() - picked.len()).min(epoch.len() - *next);
                picked.extend_from_slice(&epoch[*next..*next + count]);
                *next += count;
            }
            let index = Tensor::from_slice(&picked).f_to(self.device)?;
            return Ok(Batch { xs: x.f_index_select(0, &index)?, ys: y.f_index_select(0, &index)? });
        }
        let mut rng = std::mem::replace(&mut self.rng, StdRng::seed_from_u64(0));
        let result = self.generate(&mut rng, batch as usize);
        self.rng = rng;
        result
    }

    /// The mean loss of `out` (the model's output for a batch) against its targets `ys`.
    pub fn loss(&self, out: &Tensor, ys: &Tensor) -> anyhow::Result<Tensor> {
        let loss = match &self.kind {
            Source::CharLm { .. } | Source::Classification { .. } | Source::Copy { .. } => {
                let logits = self.scored(out)?;
                let width = logits.size()[logits.dim() - 1];
                logits.f_reshape([-1, width])?.f_cross_entropy_loss::<Tensor>(
                    &ys.f_reshape([-1])?,
                    None,
                    Reduction::Mean,
                    -100,
                    0.0,
                )?
            }
            Source::Adding { .. } => self.scored(out)?.f_mse_loss(ys, Reduction::Mean)?,
            Source::Dataset { loss, .. } => return dataset_loss(*loss, out, ys),
        };
        Ok(loss)
    }

    /// Whether validation runs after 1-based `step` of `total`: every `eval_every` steps
    /// and after the last one.
    pub fn eval_due(&self, step: u64, total: u64) -> bool {
        self.valid.is_some() && (step.is_multiple_of(self.eval_every) || step == total)
    }

    /// Loss (and metric) of `model` in evaluation mode on the fixed validation set, with
    /// one host copy.
    pub fn evaluate(&self, model: &dyn Model, step: u64) -> anyhow::Result<Option<EvalReport>> {
        let Some(valid) = &self.valid else { return Ok(None) };
        tch::no_grad(|| {
            let out = model.forward(&valid.xs, false)?;
            let loss = self.loss(&out, &valid.ys)?.f_to_kind(Kind::Float)?.f_reshape([1])?;
            let packed = match self.correct(&out, &valid.ys)? {
                Some(acc) => Tensor::f_cat(&[loss, acc.f_reshape([1])?], 0)?,
                None => loss,
            };
            let values = Vec::<f32>::try_from(&packed.f_to_device(Device::Cpu)?)?;
            Ok(Some(EvalReport {
                step,
                loss: f64::from(values[0]),
                metric: self.metric_name().zip(values.get(1).map(|&v| f64::from(v))),
            }))
        })
    }

    /// The part of a model's output the loss looks at.
    fn scored(&self, out: &Tensor) -> anyhow::Result<Tensor> {
        Ok(match &self.kind {
            Source::CharLm { .. } | Source::Classification { .. } | Source::Dataset { .. } => out.shallow_clone(),
            Source::Adding { .. } => out.f_select(1, -1)?,
            Source::Copy { length, .. } => {
                let t = out.size()[1];
                out.f_narrow(1, t - length, *length)?
            }
        })
    }

    /// The fraction of right answers, as a 0-dim float tensor.
    fn correct(&self, out: &Tensor, ys: &Tensor) -> anyhow::Result<Option<Tensor>> {
        let scored = self.scored(out)?;
        let right = match &self.kind {
            Source::CharLm { .. } => return Ok(None),
            Source::Adding { .. } => scored.f_sub(ys)?.f_abs()?.f_lt(ADDING_TOLERANCE)?,
            Source::Copy { .. } | Source::Classification { .. } => scored.f_argmax(-1, false)?.f_eq_tensor(ys)?,
            Source::Dataset { loss, .. } => match loss {
                Loss::CrossEntropy => scored.f_argmax(-1, false)?.f_reshape([-1])?.f_eq_tensor(&ys.f_reshape([-1])?)?,
                Loss::BceWithLogits => {
                    scored.f_reshape(ys.size().as_slice())?.f_gt(0.0)?.f_eq_tensor(&ys.f_gt(0.5)?)?
                }
                Loss::Mse => return Ok(None),
            },
        };
        Ok(Some(right.f_to_kind(Kind::Float)?.f_mean(Kind::Float)?))
    }

    fn validation_set(&self, rng: &mut StdRng) -> anyhow::Result<Option<Batch>> {
        match &self.kind {
            Source::CharLm { corpus, seq_len } => corpus.valid_windows(*seq_len, VALID_SAMPLES, self.device),
            Source::Dataset { .. } => Ok(None),
            _ => self.generate(rng, VALID_SAMPLES).map(Some),
        }
    }

    fn generate(&self, rng: &mut StdRng, n: usize) -> anyhow::Result<Batch> {
        let (xs, ys) = match &self.kind {
            Source::CharLm { corpus, seq_len } => return corpus.train_batch(rng, n as i64, *seq_len, self.device),
            Source::Adding { seq_len } => adding(rng, n, *seq_len)?,
            Source::Copy { seq_len, symbols, length } => copy(rng, n, *seq_len, *symbols, *length)?,
            Source::Classification { centres, classes, clusters, noise, .. } => {
                classification(rng, n, centres, *classes, *clusters, *noise)?
            }
            Source::Dataset { .. } => anyhow::bail!("a data set's batches are drawn by train_batch"),
        };
        Ok(Batch { xs: xs.f_to(self.device)?, ys: ys.f_to(self.device)? })
    }
}

/// The mean `loss` of a module's output `out` against `ys`: cross-entropy over the last
/// dimension of `out` (`[B, C]` against `[B]`, `[B, T, C]` against `[B, T]`), or MSE and
/// BCE-with-logits between `out` and `ys` element by element (shapes that differ only by
/// unit dimensions, `[B, 1]` against `[B]`, are matched).
pub fn dataset_loss(loss: Loss, out: &Tensor, ys: &Tensor) -> anyhow::Result<Tensor> {
    let fits = |what: &str| format!("the module's output {:?} does not fit y {:?} for {what}", out.size(), ys.size());
    Ok(match loss {
        Loss::CrossEntropy => {
            let width = out.size().last().copied().unwrap_or(0);
            anyhow::ensure!(out.dim() >= 2 && out.numel() == ys.numel() * width as usize, fits("cross_entropy"));
            anyhow::ensure!(
                ys.kind() == Kind::Int64,
                "cross_entropy needs int64 class ids in y, found {:?}",
                ys.kind()
            );
            out.f_reshape([-1, width])?.f_cross_entropy_loss::<Tensor>(
                &ys.f_reshape([-1])?,
                None,
                Reduction::Mean,
                -100,
                0.0,
            )?
        }
        Loss::Mse | Loss::BceWithLogits => {
            anyhow::ensure!(out.numel() == ys.numel(), fits(loss.as_str()));
            let ys = ys.f_to_kind(out.kind())?;
            let out = out.f_reshape(ys.size().as_slice())?;
            if loss == Loss::Mse {
                out.f_mse_loss(&ys, Reduction::Mean)?
            } else {
                out.f_binary_cross_entropy_with_logits::<Tensor>(&ys, None, None, Reduction::Mean)?
            }
        }
    })
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// `[n, len, 2]` of (value in [0, 1), marker), one marker in each half; target the marked sum.
fn adding(rng: &mut StdRng, n: usize, len: i64) -> anyhow::Result<(Tensor, Tensor)> {
    let t = len as usize;
    let half = t / 2;
    let mut xs = vec![0f32; n * t * 2];
    let mut ys = Vec::with_capacity(n);
    for sample in xs.chunks_mut(t * 2) {
        for step in sample.chunks_mut(2) {
            step[0] = rng.random();
        }
        let first = rng.random_range(0..half);
        let second = rng.random_range(half..t);
        sample[first * 2 + 1] = 1.0;
        sample[second * 2 + 1] = 1.0;
        ys.push(sample[first * 2] + sample[second * 2]);
    }
    Ok((Tensor::from_slice(&xs).f_view([n as i64, len, 2])?, Tensor::from_slice(&ys).f_view([n as i64, 1])?))
}

/// `[n, len]` ids: `length` symbols below `symbols`, blanks (`symbols`), a delimiter
/// (`symbols + 1`) `length + 1` steps from the end, blanks; targets `[n, length]`.
fn copy(rng: &mut StdRng, n: usize, len: i64, symbols: i64, length: i64) -> anyhow::Result<(Tensor, Tensor)> {
    let (t, l) = (len as usize, length as usize);
    let mut xs = vec![symbols; n * t];
    let mut ys = Vec::with_capacity(n * l);
    for sample in xs.chunks_mut(t) {
        for x in &mut sample[..l] {
            *x = rng.random_range(0..symbols);
        }
        ys.extend_from_slice(&sample[..l]);
        sample[t - l - 1] = symbols + 1;
    }
    Ok((Tensor::from_slice(&xs).f_view([n as i64, len])?, Tensor::from_slice(&ys).f_view([n as i64, length])?))
}

/// `n` points around the class centres `[classes × clusters, features]` and their classes.
/// The class and the cluster of each are drawn from `rng`; the noise, a standard normal
/// per entry, by LibTorch on the centres' device, seeded from `rng`. One by one on the
/// host, the 2M draws of a batch of 1024 × 2048 features took longer than a GPU's step
/// on them.
fn classification(
    rng: &mut StdRng,
    n: usize,
    centres: &Tensor,
    classes: i64,
    clusters: i64,
    noise: f64,
) -> anyhow::Result<(Tensor, Tensor)> {
    let mut picked = Vec::with_capacity(n);
    let mut ys = Vec::with_capacity(n);
    for _ in 0..n {
        let class = rng.random_range(0..classes);
        picked.push(class * clusters + rng.random_range(0..clusters));
        ys.push(class);
    }
    let (device, features) = (centres.device(), centres.size()[1]);
    let draws = with_seed(rng.random(), || Tensor::f_randn([n as i64, features], (Kind::Float, device)))?;
    let index = Tensor::from_slice(&picked).f_to(device)?;
    Ok((centres.f_index_select(0, &index)?.f_add(&draws.f_mul_scalar(noise)?)?, Tensor::from_slice(&ys)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(json: &str) -> Task {
        let spec: TaskSpec = serde_json::from_str(json).expect("task spec");
        Task::new(&spec, "", 3, Device::Cpu).expect("task")
    }

    #[test]
    fn adding_targets_are_the_marked_sums() {
        let mut t = task(r#"{"kind":"adding","seq_len":10}"#);
        let b = t.train_batch(4).expect("batch");
        assert_eq!(b.xs.size(), vec![4, 10, 2]);
        let marked = (b.xs.select(2, 0) * b.xs.select(2, 1)).sum_dim_intlist(1, false, Kind::Float);
        assert!(marked.allclose(&b.ys.view([-1]), 1e-6, 1e-6, false));
        assert_eq!(b.xs.select(2, 1).sum(Kind::Float).double_value(&[]), 8.0);
    }

    #[test]
    fn copy_targets_are_the_leading_symbols() {
        let mut t = task(r#"{"kind":"copy","seq_len":12,"symbols":4,"length":3}"#);
        assert_eq!(t.io(), Io { input: Input::Tokens(6), output: 4, max_len: 12 });
        let b = t.train_batch(5).expect("batch");
        assert!(b.xs.narrow(1, 0, 3).equal(&b.ys));
        assert!(b.xs.select(1, 8).eq(5).all().int64_value(&[]) == 1, "delimiter before the replay");
        // A model that outputs the right symbols scores a perfect metric and a low loss.
        let perfect = b.ys.one_hot(4).to_kind(Kind::Float) * 20.0;
        let out = Tensor::cat(&[Tensor::zeros([5, 9, 4], (Kind::Float, Device::Cpu)), perfect], 1);
        assert_eq!(t.correct(&out, &b.ys).expect("metric").expect("some").double_value(&[]), 1.0);
        assert!(t.loss(&out, &b.ys).expect("loss").double_value(&[]) < 1e-6);
    }

    #[test]
    fn classification_is_seeded_and_learnable_in_principle() {
        let mut a = task(r#"{"kind":"classification","features":4,"classes":3}"#);
        let mut b = task(r#"{"kind":"classification","features":4,"classes":3}"#);
        let (x, y) = (a.train_batch(6).expect("batch"), b.train_batch(6).expect("batch"));
        assert!(x.xs.equal(&y.xs) && x.ys.equal(&y.ys));
        assert_eq!(x.xs.size(), vec![6, 4]);
        assert!(a.valid.is_some());
        assert!(a.eval_due(100, 1000) && a.eval_due(7, 7) && !a.eval_due(7, 1000));
    }
}
