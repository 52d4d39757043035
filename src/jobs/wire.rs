//! What the scheduler and a worker process say to each other over the worker's stdin and
//! stdout: length-delimited frames (tokio-util's [`LengthDelimitedCodec`]: a 4-byte
//! big-endian length, then the payload), each payload one message in postcard.
//!
//! Postcard is compact (varints, no field names), keeps every `f64` bit for bit (NaN and
//! infinities included) and is a serde format, so the training reports derive their
//! encoding rather than having one written by hand. It is not self-describing: a type
//! that skips fields when serialising ([`Diagnosis`]) travels as JSON inside a frame.

use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use crate::train::diagnose::Diagnosis;
use crate::train::user::{Check, Checked, Refusal};
use crate::train::{Event, LayerInfo, Outcome, StepReport, StopReason};

/// Largest frame either side accepts: a step report of the largest model the limits
/// allow is far smaller; anything bigger is a broken stream.
pub const MAX_FRAME: usize = 256 << 20;

/// The framing both sides use.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME).new_codec()
}

/// From the scheduler to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// The first message: the job to train.
    Start(Box<StartJob>),
    /// Stop before the next step, write the checkpoint and end.
    Stop(StopReason),
    /// Instead of a job, the first message may be a check of an uploaded module: the
    /// worker answers [`FromWorker::Checked`] and ends.
    Check(Check),
    /// The store has committed the job's reports up to this step: checkpoints may drop
    /// resume files older than it (see [`crate::train::checkpoint`]).
    Committed(u64),
}

/// A job as a worker receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartJob {
    /// The job's name (the test-only fault hook matches it).
    pub name: String,
    /// The stored spec as JSON: the worker parses and checks it again.
    pub spec: String,
    /// The `char_lm` corpus's text (empty for generated tasks).
    pub corpus: String,
    /// Where the checkpoint and its resume file are written.
    pub checkpoint: Option<PathBuf>,
    /// Continue after this step, from the resume file beside `checkpoint`.
    pub resume: Option<u64>,
    /// The TorchScript file of a `torchscript` model.
    pub model: Option<PathBuf>,
    /// The safetensors file of a `dataset` task.
    pub dataset: Option<PathBuf>,
    /// The GPU the worker was given (its `CUDA_VISIBLE_DEVICES` entry): the spec's CUDA
    /// device is the worker's only one, and the device it reports is this one.
    pub gpu: Option<String>,
}

/// From a worker to the scheduler, in the order the training loop produced them.
// Steps are nearly every message, as in `TrainEvent`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromWorker {
    /// The model is built: where it trains and what its layers are.
    Started {
        device: String,
        layers: Vec<LayerInfo>,
    },
    Step(StepReport),
    /// An event (validation results arrive as events).
    Event(Event),
    /// The run's diagnosis changed: [`Diagnosis`] as JSON.
    Diagnosis(String),
    /// Step reports the worker dropped since its last such message, because the pipe was
    /// behind.
    Dropped(u64),
    /// The last message: how training ended, or why it failed.
    Ended(Result<Outcome, String>),
    /// The only message of a check: what it found, or why the module was refused.
    Checked(Result<Checked, Refusal>),
}

impl FromWorker {
    /// The diagnosis message for `diagnosis`.
    pub fn diagnosis(diagnosis: &Diagnosis) -> anyhow::Result<Self> {
        Ok(Self::Diagnosis(serde_json::to_string(diagnosis)?))
    }
}

/// One message as a frame's payload.
pub fn encode<T: Serialize>(message: &T) -> anyhow::Result<Bytes> {
    Ok(Bytes::from(postcard::to_stdvec(message).context("failed to encode a message")?))
}

/// A frame's payload as one message.
pub fn decode<'a, T: Deserialize<'a>>(frame: &'a [u8]) -> anyhow::Result<T> {
    postcard::from_bytes(frame).context("failed to decode a message")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::LayerStats;
    use crate::vocab::EventKind;

    #[test]
    fn non_finite_values_and_every_field_survive_a_round_trip() {
        let report = StepReport {
            step: 7,
            loss: f64::NAN,
            grad_norm: f64::INFINITY,
            grad_norm_clipped: f64::NEG_INFINITY,
            clip_coef: 0.1 + 0.2,
            lr: 1e-300,
            skipped: true,
            loss_scale: None,
            overflow: false,
            layers: Some(LayerStats {
                grad_norm: vec![f64::NAN, -0.0, f64::MIN_POSITIVE],
                hist: Some(vec![0, u64::MAX]),
                ..LayerStats::default()
            }),
            probes: Default::default(),
            seconds: 0.25,
        };
        let back: FromWorker = decode(&encode(&FromWorker::Step(report.clone())).expect("encode")).expect("decode");
        let FromWorker::Step(back) = back else { panic!("not a step: {back:?}") };
        assert_eq!(back.step, 7);
        assert!(back.loss.is_nan());
        assert_eq!(back.loss.to_bits(), report.loss.to_bits());
        assert_eq!(back.grad_norm, f64::INFINITY);
        assert_eq!(back.grad_norm_clipped, f64::NEG_INFINITY);
        assert_eq!(back.clip_coef.to_bits(), (0.1f64 + 0.2).to_bits());
        assert_eq!(back.lr, 1e-300);
        assert!(back.skipped);
        let (layers, sent) = (back.layers.expect("layers"), report.layers.expect("layers"));
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&layers.grad_norm), bits(&sent.grad_norm));
        assert_eq!(layers.hist, sent.hist);
        assert_eq!(back.seconds, 0.25);
    }

    #[test]
    fn control_messages_and_endings_round_trip() {
        let start = ToWorker::Start(Box::new(StartJob {
            name: "j".to_owned(),
            spec: "{}".to_owned(),
            corpus: "abc".to_owned(),
            checkpoint: Some(PathBuf::from("/tmp/x.safetensors")),
            resume: Some(3),
            model: Some(PathBuf::from("/tmp/m.pt")),
            dataset: None,
            gpu: Some("1".to_owned()),
        }));
        assert_eq!(decode::<ToWorker>(&encode(&start).expect("encode")).expect("decode"), start);
        let stop = ToWorker::Stop(StopReason::Shutdown);
        assert_eq!(decode::<ToWorker>(&encode(&stop).expect("encode")).expect("decode"), stop);
        let committed = ToWorker::Committed(u64::MAX);
        assert_eq!(decode::<ToWorker>(&encode(&committed).expect("encode")).expect("decode"), committed);
        let event =
            Event { step: 2, kind: EventKind::Validation, layer: Some(1), value: None, message: "m".to_owned() };
        let back: FromWorker = decode(&encode(&FromWorker::Event(event.clone())).expect("encode")).expect("decode");
        assert!(matches!(back, FromWorker::Event(e) if e == event));
        let ended = FromWorker::Ended(Ok(Outcome::Diverged("x".to_owned())));
        let back: FromWorker = decode(&encode(&ended).expect("encode")).expect("decode");
        assert!(matches!(back, FromWorker::Ended(Ok(Outcome::Diverged(m))) if m == "x"));
    }

    #[test]
    fn checks_and_their_answers_round_trip() {
        let check = ToWorker::Check(Check::DryRun {
            model: PathBuf::from("/tmp/m.pt"),
            dataset: PathBuf::from("/tmp/d.safetensors"),
            loss: crate::spec::Loss::BceWithLogits,
        });
        assert_eq!(decode::<ToWorker>(&encode(&check).expect("encode")).expect("decode"), check);
        let detail = crate::store::ModelDetail {
            params: 12,
            parameters: vec![crate::store::TensorInfo {
                name: "0.weight".to_owned(),
                dtype: "float32".to_owned(),
                shape: vec![3, 4],
                numel: 12,
            }],
            frozen: Vec::new(),
            buffers: Some(Vec::new()),
        };
        for answer in [
            Ok(Checked::Model(detail)),
            Err(Refusal { field: "body".to_owned(), message: "not a TorchScript module".to_owned() }),
        ] {
            let back: FromWorker =
                decode(&encode(&FromWorker::Checked(answer.clone())).expect("encode")).expect("decode");
            assert!(matches!(back, FromWorker::Checked(a) if a == answer));
        }
    }

    #[test]
    fn a_truncated_frame_is_an_error_not_a_panic() {
        let frame = encode(&FromWorker::Dropped(u64::MAX)).expect("encode");
        assert!(decode::<FromWorker>(&frame[..frame.len() - 1]).is_err());
    }
}
