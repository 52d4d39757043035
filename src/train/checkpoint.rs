//! Checkpoints. Two files per job, each written beside its final name and renamed into
//! place, so a reader (or a crash) never sees half of one:
//! - `<id>.safetensors`: the weights under the names of `/layers`, for users;
//! - `<id>.resume.safetensors`: the weights (`model.<name>`), the optimizer's state
//!   (`optim.<name>`), the job's step (`job_step`), the optimizer's update count
//!   (`optim_steps`), and the rest of the state a step reads: batch norm's running
//!   statistics (`buffer.<name>`) and the adaptive grad policies' histories and moments
//!   (`policy.<index>.<field>`), so an interrupted job continues exactly where it was.
//!   (Dropout masks are a function of the seed and the step, and the batch stream is
//!   replayed from the seed: neither needs saving.) An older one is kept as
//!   `<id>.resume.prev.safetensors`; a TorchScript job's module lies beside each
//!   ([`module_path`]).
//!
//! A job resumes from the newest resume file at or before the last step the store
//! committed ([`resume_step`]), so its history has no hole. The store trails training (its
//! writer batches reports), by more than a checkpoint interval at times: rotating blindly
//! could leave both files ahead of it when the service dies, and a job whose checkpoints
//! exist could not resume. So [`save`] knows the store's last step as far as the service
//! has told it ([`Committed`]; the store may be further, which only helps) and, of the two
//! files already there, keeps the one a crash may need:
//! - the newest, rotated to the previous one, when it is committed or is the only one;
//! - else the previous one, the new file replacing the newest.
//!
//! Then whenever a checkpoint at or before the store's last step was ever written, a
//! resume file at or before it exists, whenever the crash comes: the previous file goes
//! only once a newer one is committed, the newest only while an older one stays, and that
//! one is committed or is the oldest the run wrote. A run first discards resume files past
//! its starting step ([`discard_after`]): an earlier run that went further left them, and
//! they are no part of this run's history.
//!
//! Training does not wait for this in the common case: the service writes the report of
//! each `checkpoint_every` step at once rather than with its batch, so the newest file is
//! committed long before the next save. Only when it is not does a save wait for the
//! commit, at most [`COMMIT_WAIT`], and then keep the previous file: a stuck store costs
//! training at most that per checkpoint, and a resume the progress the store never held.
//! Waiting for the commit at every rotation instead would make each save wait on the
//! store; a third file would only move the problem to a lag of two intervals.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

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

fn write_atomically(path: &Path, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let partial = path.with_extension("partial");
    Tensor::write_safetensors(tensors, &partial)
        .with_context(|| format!("failed to write checkpoint {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("failed to move checkpoint to {}", path.display()))
}

/// How long a save waits for the store to commit the newest resume file before it
/// replaces it rather than rotating it (see the module's header).
pub const COMMIT_WAIT: Duration = Duration::from_secs(1);

/// The last step the store is known to have committed, as the training side learns it:
/// the service advances it after each write, and [`save`] reads it, or waits on it.
#[derive(Debug, Clone)]
pub struct Committed {
    last: Arc<(Mutex<u64>, Condvar)>,
    /// How long a save waits for the newest resume file to be committed.
    wait: Duration,
}

impl Default for Committed {
    fn default() -> Self {
        Self { last: Arc::default(), wait: COMMIT_WAIT }
    }
}

impl Committed {
    /// The same steps, with saves waiting `wait` for them instead of [`COMMIT_WAIT`].
    pub fn with_wait(self, wait: Duration) -> Self {
        Self { wait, ..self }
    }

    /// Known committed: `step` and every step before it.
    pub fn advance(&self, step: u64) {
        let (last, changed) = &*self.last;
        let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
        if step > *last {
            *last = step;
            changed.notify_all();
        }
    }

    /// Whether `step` is committed, waiting for it as long as a save may.
    fn reaches(&self, step: u64) -> bool {
        let (last, changed) = &*self.last;
        let last = last.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, _) =
            changed.wait_timeout_while(last, self.wait, |last| *last < step).unwrap_or_else(PoisonError::into_inner);
        *last >= step
    }
}

/// What [`save`] writes besides the weights and the optimizer.
#[derive(Default)]
pub struct Extra<'a> {
    /// The rest of what a resume restores, each name with its prefix (`buffer.`,
    /// `policy.`).
    pub state: &'a [(String, Tensor)],
    /// Writes a TorchScript job's module to the path it is given.
    pub module: Option<&'a WriteModule<'a>>,
}

/// What writes a module to a path.
pub type WriteModule<'a> = dyn Fn(&Path) -> anyhow::Result<()> + 'a;

/// Writes both files for `params` (name, tensor) after `job_step` steps, keeping the
/// older resume file a crash may need, as the module's header says. `committed` is the
/// store's last step as the service told it; `None` when no store records the run (every
/// step counts as committed).
pub fn save(
    path: &Path,
    params: &[(String, Tensor)],
    optimizer: &FlatOptimizer,
    extra: &Extra<'_>,
    job_step: u64,
    committed: Option<&Committed>,
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
    for (name, tensor) in extra.state {
        resume.push((name.clone(), cpu(tensor)?));
    }
    resume.push(("job_step".to_owned(), Tensor::from_slice(&[i64::try_from(job_step)?])));
    resume.push(("optim_steps".to_owned(), Tensor::from_slice(&[i64::try_from(optim_steps)?])));
    make_room(path, job_step, committed)?;
    let newest = resume_path(path);
    if let Some(module) = extra.module {
        module(&module_path(&newest))?;
    }
    write_atomically(&newest, &resume)?;
    write_atomically(path, &weights)
}

/// Frees the newest resume file's place for the one at `job_step`: rotates it to the
/// previous one, or removes it. At every point in between, each resume file on disk
/// has its own module beside it, or none.
fn make_room(path: &Path, job_step: u64, committed: Option<&Committed>) -> anyhow::Result<()> {
    let (newest, previous) = (resume_path(path), previous_resume_path(path));
    let Some(newest_step) = step_of(&newest) else { return Ok(()) };
    let rotate =
        newest_step < job_step && (step_of(&previous).is_none() || committed.is_none_or(|c| c.reaches(newest_step)));
    if !rotate {
        return remove(&newest);
    }
    remove(&previous)?;
    let (module, previous_module) = (module_path(&newest), module_path(&previous));
    remove(&previous_module)?;
    if module.exists() {
        // A second name, not a move: the newest resume file keeps its module until it is
        // itself renamed.
        std::fs::hard_link(&module, &previous_module)
            .or_else(|_| std::fs::copy(&module, &previous_module).map(drop))
            .context("failed to keep the previous module")?;
    }
    std::fs::rename(&newest, &previous).context("failed to keep the previous resume file")?;
    remove(&module)
}

/// Removes resume files written after `step` (a run before this one went further than
/// this one starts), with their modules: they are no part of this run's history, and a
/// resume must never pick one up.
pub fn discard_after(path: &Path, step: u64) -> anyhow::Result<()> {
    for file in [resume_path(path), previous_resume_path(path)] {
        if step_of(&file).is_some_and(|s| s > step) {
            remove(&file)?;
            remove(&module_path(&file))?;
        }
    }
    Ok(())
}

/// Removes `file` if it is there.
fn remove(file: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(file) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("failed to remove {}", file.display()))
        }
        _ => Ok(()),
    }
}

/// What a resume file holds.
pub struct Resume {
    pub job_step: u64,
    pub optim_steps: u64,
    pub weights: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, Tensor)>,
    /// Everything else by its full name (`buffer.…`, `policy.…`): what `save` got as `extra.state`.
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
        let extra = Extra { state: std::slice::from_ref(&running), module: None };
        save(&path, &[("layer.weight".to_owned(), w.shallow_clone())], &opt, &extra, 42, None).expect("save");
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
        save(&path, &[("layer.weight".to_owned(), w.shallow_clone())], &opt, &Extra::default(), 50, None)
            .expect("save");
        assert_eq!(resume_step(&path, 49), Some(42));
        assert_eq!(resume_step(&path, 50), Some(50));
        assert_eq!(resume_step(&path, 41), None);
        assert_eq!(load(&path, 42).expect("previous").job_step, 42);
    }

    /// Saves a one-weight checkpoint at `step` whose weight is `step`, with a module file
    /// that holds `step` too.
    fn save_at(path: &Path, step: u64, committed: &Committed) {
        let w = Tensor::from_slice(&[step as f32]);
        let opt = FlatOptimizer::new(&OptimizerSpec::default());
        let module = |file: &Path| Ok(std::fs::write(file, step.to_string())?);
        let extra = Extra { state: &[], module: Some(&module) };
        save(path, &[("w".to_owned(), w)], &opt, &extra, step, Some(committed)).expect("save");
    }

    /// The step of resume file `at`'s weight and module, read back whole.
    fn written_at(path: &Path, at: u64) -> (f64, String) {
        let resume = load(path, at).expect("load");
        let module = std::fs::read_to_string(module_snapshot(path, at).expect("module")).expect("read");
        (resume.weights[0].1.double_value(&[0]), module)
    }

    #[test]
    fn a_store_behind_by_more_than_an_interval_still_finds_a_resume_file() {
        let dir = tempfile::TempDir::new().expect("dir");
        let path = dir.path().join("job.safetensors");
        let committed = Committed::default().with_wait(Duration::from_millis(20));
        // The store has committed nothing yet: the first file is kept, whatever follows.
        save_at(&path, 50, &committed);
        save_at(&path, 100, &committed);
        save_at(&path, 150, &committed);
        assert_eq!(resume_step(&path, 0), None);
        for store in [50, 99, 149] {
            assert_eq!(resume_step(&path, store), Some(50), "store at {store}");
        }
        assert_eq!(resume_step(&path, 150), Some(150));
        assert_eq!(written_at(&path, 50), (50.0, "50".to_owned()));
        assert_eq!(written_at(&path, 150), (150.0, "150".to_owned()));

        // Rotation as before once the newest is committed: 150 → previous, 200 newest.
        committed.advance(150);
        save_at(&path, 200, &committed);
        assert_eq!(resume_step(&path, 149), None, "50 went only once 150 was committed");
        assert_eq!(resume_step(&path, 199), Some(150));
        assert_eq!(resume_step(&path, 200), Some(200));
        assert_eq!(written_at(&path, 150), (150.0, "150".to_owned()), "the module moved with its file");

        // The store stays behind 200 (at 245): 250 takes 200's place, 150 stays.
        committed.advance(199);
        save_at(&path, 250, &committed);
        assert_eq!(resume_step(&path, 245), Some(150));
        assert_eq!(written_at(&path, 250), (250.0, "250".to_owned()));

        // The store catches up while the save waits for it: rotation again.
        let late = committed.clone();
        let store = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            late.advance(260);
        });
        save_at(&path, 300, &committed.clone().with_wait(Duration::from_secs(60)));
        store.join().expect("store");
        assert_eq!(resume_step(&path, 299), Some(250));
        assert_eq!(written_at(&path, 300), (300.0, "300".to_owned()));

        // Saving again at the newest's step (stopped right after a checkpoint) replaces it.
        save_at(&path, 300, &committed);
        assert_eq!((resume_step(&path, 299), resume_step(&path, 300)), (Some(250), Some(300)));

        // A run that starts over from 250 drops what went further.
        discard_after(&path, 250).expect("discard");
        assert_eq!(resume_step(&path, 1000), Some(250));
        assert!(!module_path(&resume_path(&path)).exists());
    }

    #[test]
    fn whatever_the_lag_a_crash_after_any_save_finds_a_file_at_or_before_the_store() {
        let dir = tempfile::TempDir::new().expect("dir");
        for lag in [0u64, 5, 10, 15, 25, 45, 95] {
            let path = dir.path().join(format!("lag{lag}.safetensors"));
            let committed = Committed::default().with_wait(Duration::ZERO);
            for step in (10..=100u64).step_by(10) {
                committed.advance(step.saturating_sub(lag));
                save_at(&path, step, &committed);
                // The store may have gone further than the training side was told.
                for store in step.saturating_sub(lag)..=step {
                    let found = resume_step(&path, store);
                    if store < 10 {
                        assert_eq!(found, None, "lag {lag}, saved {step}, store at {store}");
                        continue;
                    }
                    let found = found.unwrap_or_else(|| panic!("lag {lag}, saved {step}, store at {store}: none"));
                    assert!(found <= store && found.is_multiple_of(10));
                    // Within an interval, nothing more than an interval is lost.
                    if lag <= 10 {
                        assert!(store - found < 10, "lag {lag}, saved {step}, store at {store}: {found}");
                    }
                }
            }
        }
    }
}
