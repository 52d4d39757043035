//! Checks of uploaded models and data sets, and the dry run that decides whether a model
//! and a data set fit together. Synchronous LibTorch work: callers run it off the async
//! workers.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use tch::{CModule, Device, Kind, Tensor, nn};

use super::model::archive;
use super::model::torchscript::{TorchScript, reason};
use super::model::{Input, Io, Model, Params};
use super::task::dataset_loss;
use crate::spec::{Loss, ModelSpec};
use crate::store::{DatasetDetail, ModelDetail, TensorInfo};

/// Why an upload or a dry run was refused: the field (or tensor) at fault and the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub field: String,
    pub message: String,
}

pub fn refuse(field: &str, message: impl Into<String>) -> Refusal {
    Refusal { field: field.to_owned(), message: message.into() }
}

/// A check that runs a user's module in LibTorch: the service runs it in a worker process
/// of its own (a module that makes LibTorch abort ends that process, not the service), or
/// in process when jobs train there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Check {
    /// [`inspect_model`] on an uploaded file.
    Model { file: PathBuf },
    /// [`dry_run`] of a model and a data set.
    DryRun { model: PathBuf, dataset: PathBuf, loss: Loss },
    /// The layer names of a built-in model (for `monitor.layers`; its `ModelSpec` as JSON,
    /// which the worker pipe's compact encoding cannot carry): a narrow twin of it is
    /// built, since names depend on the kind, the depth and whether inputs are tokens, not
    /// on the widths.
    LayerNames { model: String, tokens: bool },
}

/// What a [`Check`] found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Checked {
    Model(ModelDetail),
    DryRun(DryRun),
    LayerNames(Vec<String>),
}

impl Check {
    /// The field a refusal of this check names: the upload's `body`, or the job's `model`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Model { .. } => "body",
            Self::DryRun { .. } => "model",
            Self::LayerNames { .. } => "monitor.layers",
        }
    }

    /// What the check is, for messages and the test-only fault hook: `model` or `dry_run`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Model { .. } => "model",
            Self::DryRun { .. } => "dry_run",
            Self::LayerNames { .. } => "layer_names",
        }
    }

    /// Runs the check here.
    pub fn run(&self) -> Result<Checked, Refusal> {
        match self {
            Self::Model { file } => inspect_model(file).map(Checked::Model),
            Self::DryRun { model, dataset, loss } => dry_run(model, dataset, *loss).map(Checked::DryRun),
            Self::LayerNames { model, tokens } => layer_names(model, *tokens).map(Checked::LayerNames),
        }
    }
}

/// The layer names of the built-in `model`, from a narrow twin built on the CPU.
fn layer_names(model: &str, tokens: bool) -> Result<Vec<String>, Refusal> {
    let mut twin: ModelSpec =
        serde_json::from_str(model).map_err(|e| refuse("model", format!("not a model spec: {e}")))?;
    twin.hidden = 2 * twin.heads.max(1);
    let input = if tokens { Input::Tokens(4) } else { Input::Features(2) };
    let io = Io { input, output: 2, max_len: 4 };
    let vs = nn::VarStore::new(Device::Cpu);
    let (_, params) = super::model::build(&twin, &vs, io, 0)
        .map_err(|e| refuse("model", format!("the model cannot be built: {e:#}")))?;
    Ok(params.layers().into_iter().map(|l| l.name).collect())
}

/// The contract's name of a LibTorch element type.
pub fn kind_name(kind: Kind) -> String {
    match kind {
        Kind::Float => "float32".to_owned(),
        Kind::Double => "float64".to_owned(),
        Kind::Half => "float16".to_owned(),
        Kind::BFloat16 => "bfloat16".to_owned(),
        Kind::Int64 => "int64".to_owned(),
        Kind::Int => "int32".to_owned(),
        Kind::Uint8 => "uint8".to_owned(),
        Kind::Bool => "bool".to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Loads the TorchScript module in `file` and lists its parameters (those that require
/// gradients are trained, the others are frozen) and its buffers (read from the archive,
/// [`archive::buffers`]). Refused when the file is not TorchScript, when nothing is
/// trainable, or when a trainable parameter is not float32.
pub fn inspect_model(file: &Path) -> Result<ModelDetail, Refusal> {
    let module = CModule::load_on_device(file, Device::Cpu)
        .map_err(|err| refuse("body", format!("not a TorchScript module: {}", reason(&err))))?;
    let named = module.named_parameters().map_err(|err| refuse("body", reason(&err)))?;
    let buffers = archive::buffers(file)
        .inspect_err(|err| tracing::warn!("could not list an uploaded module's buffers: {err:#}"))
        .ok();
    let mut detail = ModelDetail { params: 0, parameters: Vec::new(), frozen: Vec::new(), buffers };
    for (name, tensor) in named {
        let info = TensorInfo {
            dtype: kind_name(tensor.kind()),
            shape: tensor.size(),
            numel: tensor.numel() as i64,
            name: name.clone(),
        };
        if !tensor.requires_grad() {
            detail.frozen.push(info);
            continue;
        }
        if tensor.kind() != Kind::Float {
            return Err(refuse("body", format!("parameter {name} is {}: only float32 parameters train", info.dtype)));
        }
        detail.params += info.numel;
        detail.parameters.push(info);
    }
    if detail.parameters.is_empty() {
        return Err(refuse("body", "the module has no trainable parameters"));
    }
    Ok(detail)
}

/// Tensors a data set may hold.
const DATASET_TENSORS: [&str; 4] = ["x", "y", "x_val", "y_val"];

fn dtype_name(dtype: Dtype) -> Option<&'static str> {
    Some(match dtype {
        Dtype::F32 => "float32",
        Dtype::F64 => "float64",
        Dtype::I64 => "int64",
        Dtype::I32 => "int32",
        Dtype::U8 => "uint8",
        _ => return None,
    })
}

/// Checks a safetensors data set: `x` and `y`, optionally `x_val` and `y_val` (both or
/// neither), nothing else; each float32, float64, int64, int32 or uint8, at least one
/// dimension and one sample; `x` and `y` (and `x_val` and `y_val`) with the same number
/// of samples; the validation tensors shaped and typed as the training ones but for their
/// first dimension; every float finite. A refusal names the tensor.
pub fn inspect_dataset(bytes: &[u8]) -> Result<DatasetDetail, Refusal> {
    let file =
        SafeTensors::deserialize(bytes).map_err(|err| refuse("body", format!("not a safetensors file: {err}")))?;
    let mut tensors = Vec::new();
    for name in file.names() {
        if !DATASET_TENSORS.contains(&name.as_str()) {
            return Err(refuse(name, "unexpected tensor: a data set holds x, y and optionally x_val, y_val"));
        }
    }
    for name in DATASET_TENSORS {
        let view = match file.tensor(name) {
            Ok(view) => view,
            Err(_) if name.ends_with("_val") => continue,
            Err(_) => return Err(refuse(name, format!("the data set has no tensor {name}"))),
        };
        let dtype = dtype_name(view.dtype()).ok_or_else(|| {
            refuse(name, format!("{:?} is not supported: use float32, float64, int64, int32 or uint8", view.dtype()))
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if shape.first().is_none_or(|&n| n < 1) {
            return Err(refuse(name, format!("needs at least one dimension and one sample, has shape {shape:?}")));
        }
        let finite = match view.dtype() {
            Dtype::F32 => view.data().chunks_exact(4).all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
            Dtype::F64 => {
                view.data().chunks_exact(8).all(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])).is_finite())
            }
            _ => true,
        };
        if !finite {
            return Err(refuse(name, "holds NaN or infinite values"));
        }
        tensors.push(TensorInfo {
            name: name.to_owned(),
            dtype: dtype.to_owned(),
            numel: shape.iter().product(),
            shape,
        });
    }
    let get = |name: &str| tensors.iter().find(|t| t.name == name);
    let (x, y) = (get("x").cloned(), get("y").cloned());
    let (Some(x), Some(y)) = (x, y) else { return Err(refuse("x", "the data set needs x and y")) };
    if x.shape[0] != y.shape[0] {
        return Err(refuse("y", format!("has {} samples but x has {}", y.shape[0], x.shape[0])));
    }
    let mut val_samples = 0;
    match (get("x_val"), get("y_val")) {
        (None, None) => {}
        (Some(xv), Some(yv)) => {
            for (val, train) in [(xv, &x), (yv, &y)] {
                if val.shape[1..] != train.shape[1..] || val.dtype != train.dtype {
                    return Err(refuse(
                        &val.name,
                        format!(
                            "must be {} of shape [n, {:?}] like {}, is {} {:?}",
                            train.dtype,
                            &train.shape[1..],
                            train.name,
                            val.dtype,
                            val.shape
                        ),
                    ));
                }
            }
            if xv.shape[0] != yv.shape[0] {
                return Err(refuse("y_val", format!("has {} samples but x_val has {}", yv.shape[0], xv.shape[0])));
            }
            val_samples = xv.shape[0];
        }
        (Some(_), None) => return Err(refuse("y_val", "x_val needs y_val")),
        (None, Some(_)) => return Err(refuse("x_val", "y_val needs x_val")),
    }
    Ok(DatasetDetail { samples: x.shape[0], val_samples, tensors })
}

/// What a dry run measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DryRun {
    /// Trainable parameters, and their tensors.
    pub params: u64,
    pub tensors: u64,
    /// Bytes of one sample of `x`, and of the module's output for one sample.
    pub input_bytes: f64,
    pub output_bytes: f64,
}

/// Loads the module at `model`, feeds it the first two samples of the data set at
/// `dataset` in training mode, scores its output with `loss` and runs backward, on the
/// CPU. A failure is refused with the module's own message: field `model` when the
/// module cannot take `x` (or cannot load, or backward fails), `task` when its output
/// does not fit `y` under `loss`.
pub fn dry_run(model: &Path, dataset: &Path, loss: Loss) -> Result<DryRun, Refusal> {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut params = Params::default();
    let module = TorchScript::load(model, &vs, &mut params, 0).map_err(|err| refuse("model", format!("{err:#}")))?;
    let tensors = Tensor::read_safetensors(dataset).map_err(|err| refuse("task", format!("{err}")))?;
    let get = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t);
    let (Some(x), Some(y)) = (get("x"), get("y")) else { return Err(refuse("task", "the data set has no x or y")) };
    let n = x.size()[0].min(2);
    let (xs, ys) = match (x.f_narrow(0, 0, n), y.f_narrow(0, 0, n)) {
        (Ok(xs), Ok(ys)) => (xs, ys),
        _ => return Err(refuse("task", "the data set's tensors cannot be sliced")),
    };
    module.rng().start_step(1);
    let out = module.forward(&xs, true).map_err(|err| {
        refuse("model", format!("the module failed on x of shape {:?} ({}): {err:#}", xs.size(), kind_name(xs.kind())))
    })?;
    let score = dataset_loss(loss, &out, &ys).map_err(|err| refuse("task", format!("{err:#}")))?;
    score.f_backward().map_err(|err| refuse("model", format!("backward failed: {}", reason(&err))))?;
    let per_sample = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as f64 / n as f64;
    Ok(DryRun {
        params: params.tensors().map(|t| t.numel() as u64).sum(),
        tensors: params.len() as u64,
        input_bytes: per_sample(&xs),
        output_bytes: per_sample(&out),
    })
}
