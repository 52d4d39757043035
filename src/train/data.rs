//! Batches, corpora and batch sampling for the character language model.

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use rand::Rng;
use rand::rngs::StdRng;
use tch::{Device, Tensor};

/// Inputs and targets, on the training device.
#[derive(Debug)]
pub struct Batch {
    pub xs: Tensor,
    pub ys: Tensor,
}

/// The corpora shipped with the binary, by the name after `builtin:`.
pub const BUILTIN_CORPORA: &[(&str, &str)] = &[("tiny", include_str!("../../corpora/tiny.txt"))];

/// The text of `builtin:<name>`, if there is such a corpus.
pub fn builtin_corpus(spec: &str) -> Option<&'static str> {
    let name = spec.strip_prefix("builtin:")?;
    BUILTIN_CORPORA.iter().find(|(n, _)| *n == name).map(|(_, text)| *text)
}

/// Number of distinct characters in `text`.
pub fn vocab_size(text: &str) -> usize {
    text.chars().collect::<BTreeSet<_>>().len()
}

/// A text turned into character ids, split into training and validation parts.
#[derive(Debug)]
pub struct CharCorpus {
    pub vocab: Vec<char>,
    train: Vec<i64>,
    valid: Vec<i64>,
}

impl CharCorpus {
    /// The last tenth of the text is held out for validation.
    pub fn new(text: &str, seq_len: i64) -> anyhow::Result<Self> {
        let vocab: Vec<char> = text.chars().collect::<BTreeSet<_>>().into_iter().collect();
        let ids: Vec<i64> = text
            .chars()
            .map(|c| vocab.binary_search(&c).map(|i| i as i64))
            .collect::<Result<_, _>>()
            .ok()
            .context("vocabulary lookup failed")?;
        let window = usize::try_from(seq_len)? + 1;
        let split = ids.len() * 9 / 10;
        if vocab.len() < 2 || split <= window {
            bail!("the corpus is too short for seq_len {seq_len}: {} characters, {} distinct", ids.len(), vocab.len());
        }
        let (train, valid) = ids.split_at(split);
        Ok(Self { vocab, train: train.to_vec(), valid: valid.to_vec() })
    }

    pub fn vocab_size(&self) -> i64 {
        self.vocab.len() as i64
    }

    /// A random batch of `(inputs, targets)`, each `[batch, seq_len]`, targets shifted by one.
    pub fn train_batch(&self, rng: &mut StdRng, batch: i64, seq_len: i64, device: Device) -> anyhow::Result<Batch> {
        let len = seq_len as usize;
        let max_start = self.train.len() - len - 1;
        let mut xs = Vec::with_capacity(batch as usize * len);
        let mut ys = Vec::with_capacity(batch as usize * len);
        for _ in 0..batch {
            let start = rng.random_range(0..=max_start);
            xs.extend_from_slice(&self.train[start..start + len]);
            ys.extend_from_slice(&self.train[start + 1..start + len + 1]);
        }
        let shape = [batch, seq_len];
        Ok(Batch {
            xs: Tensor::from_slice(&xs).f_view(shape)?.f_to(device)?,
            ys: Tensor::from_slice(&ys).f_view(shape)?.f_to(device)?,
        })
    }

    pub fn valid_len(&self) -> usize {
        self.valid.len()
    }

    /// Up to `max` non-overlapping windows of the held-out text, as one `(inputs, targets)`
    /// batch; windows shorter than `seq_len` when the held-out text is short; `None` when
    /// it cannot hold even two characters.
    pub fn valid_windows(&self, seq_len: i64, max: usize, device: Device) -> anyhow::Result<Option<Batch>> {
        let len = (seq_len as usize).min(self.valid.len().saturating_sub(1));
        if len == 0 {
            return Ok(None);
        }
        let count = ((self.valid.len() - 1) / len).min(max);
        let mut xs = Vec::with_capacity(count * len);
        let mut ys = Vec::with_capacity(count * len);
        for w in 0..count {
            let start = w * len;
            xs.extend_from_slice(&self.valid[start..start + len]);
            ys.extend_from_slice(&self.valid[start + 1..start + len + 1]);
        }
        let shape = [count as i64, len as i64];
        Ok(Some(Batch {
            xs: Tensor::from_slice(&xs).f_view(shape)?.f_to(device)?,
            ys: Tensor::from_slice(&ys).f_view(shape)?.f_to(device)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn batches_are_shifted_windows_of_the_text() {
        let text = "abcdefghij".repeat(20);
        let corpus = CharCorpus::new(&text, 5).expect("corpus");
        assert_eq!(corpus.vocab_size(), 10);
        let mut rng = StdRng::seed_from_u64(1);
        let Batch { xs: x, ys: y } = corpus.train_batch(&mut rng, 3, 5, Device::Cpu).expect("batch");
        assert_eq!(x.size(), vec![3, 5]);
        // Each target is the next character: id + 1 modulo the 10-letter cycle.
        let expected = (&x + 1).remainder(10);
        assert!(y.equal(&expected));
        let valid = corpus.valid_windows(5, 100, Device::Cpu).expect("windows").expect("some");
        // 20 held-out characters hold 3 whole windows of 5 plus their shifted targets.
        assert_eq!(valid.xs.size(), vec![3, 5]);
        assert!(valid.ys.equal(&(&valid.xs + 1).remainder(10)));
    }

    #[test]
    fn short_corpora_are_refused() {
        assert!(CharCorpus::new("abc", 16).is_err());
        assert!(builtin_corpus("builtin:tiny").is_some());
        assert!(builtin_corpus("builtin:nope").is_none());
    }
}
