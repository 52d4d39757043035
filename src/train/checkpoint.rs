//! Checkpoints. Two files per job, each written beside its final name and renamed into
//! place, so a reader (or a crash) never sees half of one:
//! - `<id>.safetensors`: the weights under the names of `/layers`, for users;
//! - `<id>.resume.safetensors`: the weights (`model.<name>`), the optimizer's state
//!   (`optim.<name>`), the job's step (`job_step`), the optimizer's update count
//!   (`optim_steps`), and the rest of the state a step reads: batch norm's running
//!   statistics (`buffer.<name>`) and the adaptive grad policies' histories and moments
//!   (`policy.<index>.<field>`), so an interrupted job continues exactly where it was.
//!   (Dropout masks are a function of the seed and the step, and the batch stream is
//!   replayed from the seed: neither needs saving.) The one before it is
//!   kept as `<id>.resume.prev.safetensors`. After a crash the newest resume file can be
//!   ahead of the steps the store had committed (the writer trails training a little);
//!   resuming then starts from the previous one, so the history has no hole.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::Context;
use tch::{Kind, Tensor};

use super::optim::FlatOptimizer;

/// The resume file that belongs with a checkpoint.
pub fn resume_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_extension("resume.safetensors")
}

/// The resume file before the newest.
pub fn previous_resume_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_extension("resume.prev.safetensors")
}

/// Where a TorchScript job keeps its whole module (parameters and buffers) beside resume
/// file `resume`: LibTorch lists a module's parameters but not its buffers, so the module
/// is saved as it is.
pub fn module_path(resume: &Path) -> PathBuf {
    resume.with_extension("module.pt")
}

/// The module saved with the resume file written at `job_step`, if there is one.
pub fn module_snapshot(path: &Path, job_step: u64) -> Option<PathBuf> {
    [resume_path(path), previous_resume_path(path)]
        .into_iter()
        .find(|f| step_of(f) == Some(job_step))
        .map(|f| module_path(&f))
        .filter(|m| m.exists())
}

/// Before [`save`] rotates the resume files: moves the newest module snapshot beside the
/// resume file that becomes the previous one.
pub fn rotate_module(path: &Path) -> anyhow::Result<()> {
    let newest = module_path(&resume_path(path));
    if newest.exists() && resume_path(path).exists() {
        std::fs::rename(&newest, module_path(&previous_resume_path(path)))
            .context("failed to keep the previous module")?;
    }
    Ok(())
}

fn write_atomically(path: &Path, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let partial = path.with_extension("partial");
    Tensor::write_safetensors(tensors, &partial)
        .with_context(|| format!("failed to write checkpoint {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("failed to move checkpoint to {}", path.display()))
}

/// Writes both files for `params` (name, tensor) after `job_step` steps.
/// `extra` is the rest of what a resume restores, each name with its prefix (`buffer.`,
/// `policy.`).
pub fn save(
    path: &Path,
    params: &[(String, Tensor)],
    optimizer: &FlatOptimizer,
    extra: &[(String, Tensor)],
    job_step: u64,
) -> anyhow::Result<()> {
    let cpu = |t: &Tensor| t.f_detach().and_then(|t| t.f_to_device(tch::Device::Cpu));
    let weights: Vec<(String, Tensor)> =
        params.iter().map(|(n, t)| Ok((n.clone(), cpu(t)?))).collect::<anyhow::Result<_>>()?;
    let (state, optim_steps) = optimizer.state();
    let mut resume: Vec<(String, Tensor)> =
        weights.iter().map(|(n, t)| (format!("model.{n}"), t.shallow_clone())).collect();
    for (name, tensor) in state {
        resume.push((format!("optim.{name}"), cpu(tensor)?));
    }
    for (name, tensor) in extra {
        resume.push((name.clone(), cpu(tensor)?));
    }
    resume.push(("job_step".to_owned(), Tensor::from_slice(&[i64::try_from(job_step)?])));
    resume.push(("optim_steps".to_owned(), Tensor::from_slice(&[i64::try_from(optim_steps)?])));
    let newest = resume_path(path);
    if newest.exists() {
        std::fs::rename(&newest, previous_resume_path(path)).context("failed to keep the previous resume file")?;
    }
    write_atomically(&newest, &resume)?;
    write_atomically(path, &weights)
}

/// What a resume file holds.
pub struct Resume {
    pub job_step: u64,
    pub optim_steps: u64,
    pub weights: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, Tensor)>,
    /// Everything else by its full name (`buffer.…`, `policy.…`): what `save` got as `extra`.
    pub state: Vec<(String, Tensor)>,
}

/// Loads the resume file written at `job_step` (the newest or the previous one).
pub fn load(path: &Path, job_step: u64) -> anyhow::Result<Resume> {
    let file = [resume_path(path), previous_resume_path(path)]
        .into_iter()
        .find(|f| step_of(f) == Some(job_step))
        .with_context(|| format!("no resume file at step {job_step}"))?;
    let tensors = Tensor::read_safetensors(&file).with_context(|| format!("failed to read {}", file.display()))?;
    let mut resume =
        Resume { job_step: 0, optim_steps: 0, weights: Vec::new(), optimizer: Vec::new(), state: Vec::new() };
    for (name, tensor) in tensors {
        if let Some(param) = name.strip_prefix("model.") {
            resume.weights.push((param.to_owned(), tensor));
        } else if let Some(state) = name.strip_prefix("optim.") {
            resume.optimizer.push((state.to_owned(), tensor));
        } else if name == "job_step" {
            resume.job_step = u64::try_from(tensor.f_to_kind(Kind::Int64)?.f_int64_value(&[0])?)?;
        } else if name == "optim_steps" {
            resume.optim_steps = u64::try_from(tensor.f_to_kind(Kind::Int64)?.f_int64_value(&[0])?)?;
        } else {
            resume.state.push((name, tensor));
        }
    }
    Ok(resume)
}

/// The newest resume step at or before `committed` (the last step the store holds), so a
/// resumed history has no hole. `None` when there is no such resume file.
pub fn resume_step(path: &Path, committed: u64) -> Option<u64> {
    [resume_path(path), previous_resume_path(path)].iter().filter_map(|f| step_of(f)).filter(|&s| s <= committed).max()
}

/// The step a resume file was written at, read from the file's header and one value,
/// without loading the weights. `None` when there is no complete file.
fn step_of(file: &Path) -> Option<u64> {
    let mut file_handle = std::fs::File::open(file).ok()?;
    let mut len = [0u8; 8];
    file_handle.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    // A damaged or foreign file must not make us allocate what its first bytes claim.
    if len > MAX_HEADER_BYTES {
        return None;
    }
    let mut header = vec![0u8; usize::try_from(len).ok()?];
    file_handle.read_exact(&mut header).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let offsets = header.get("job_step")?.get("data_offsets")?.as_array()?;
    let start = offsets.first()?.as_u64()?;
    file_handle.seek(SeekFrom::Start(8u64.checked_add(len)?.checked_add(start)?)).ok()?;
    let mut value = [0u8; 8];
    file_handle.read_exact(&mut value).ok()?;
    u64::try_from(i64::from_le_bytes(value)).ok()
}

/// The largest safetensors header read (the format's own readers refuse above 100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::OptimizerSpec;

    #[test]
    fn a_checkpoint_round_trips_weights_state_and_step() {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = dir.path().join("job.safetensors");
        let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let mut opt = FlatOptimizer::new(&OptimizerSpec::default());
        tch::no_grad(|| opt.step(&w, &Tensor::from_slice(&[0.1f32, 0.2, 0.3]), 0.01, std::slice::from_ref(&(0..3))))
            .expect("step");
        let running = ("buffer.norm.running_mean".to_owned(), Tensor::from_slice(&[0.5f32, -0.5]));
        save(&path, &[("layer.weight".to_owned(), w.shallow_clone())], &opt, std::slice::from_ref(&running), 42)
            .expect("save");
        assert_eq!(resume_step(&path, 100), Some(42));
        let back = load(&path, 42).expect("load");
        assert_eq!((back.job_step, back.optim_steps), (42, 1));
        assert_eq!(back.weights[0].0, "layer.weight");
        assert!(back.weights[0].1.equal(&w));
        assert_eq!(back.optimizer.len(), 2, "AdamW keeps two moments");
        assert_eq!(back.state.len(), 1);
        assert_eq!(back.state[0].0, running.0);
        assert!(back.state[0].1.equal(&running.1));
        let public = Tensor::read_safetensors(&path).expect("public");
        assert_eq!(public.len(), 1, "the user's checkpoint holds only the weights");

        // A newer checkpoint ahead of what the store committed: resume from the previous.
        save(&path, &[("layer.weight".to_owned(), w.shallow_clone())], &opt, &[], 50).expect("save");
        assert_eq!(resume_step(&path, 49), Some(42));
        assert_eq!(resume_step(&path, 50), Some(50));
        assert_eq!(resume_step(&path, 41), None);
        assert_eq!(load(&path, 42).expect("previous").job_step, 42);
    }
}
