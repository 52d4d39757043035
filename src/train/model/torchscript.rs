//! A user's TorchScript module as a [`Model`]. Its trainable parameters are registered in
//! the job's `VarStore` and in [`Params`] under the module's own names, in the module's
//! order, so they move into the flat buffer exactly as the built-ins' do; its buffers
//! (batch norm's running statistics) stay inside the module, which a checkpoint saves
//! whole.

use std::cell::{Cell, RefCell};
use std::path::Path;

use anyhow::Context;
use tch::{CModule, Kind, Tensor, nn};

use super::Params;
use super::layers::StepRng;

/// The part of a LibTorch error a person needs: the interpreter's own `…Error: message`
/// line when there is one (TorchScript wraps it in a traceback), else the first line (the
/// rest is a C++ backtrace).
pub fn reason(err: &tch::TchError) -> String {
    let text = err.to_string();
    let text = text.strip_prefix("Torch(\"").unwrap_or(&text);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let raised = lines
        .iter()
        .rev()
        .find(|l| l.split_once(": ").is_some_and(|(head, _)| head.ends_with("Error") && !head.contains(' ')));
    let line = raised.or(lines.first()).copied().unwrap_or_default();
    line.trim_end_matches("\")").to_owned()
}

/// A loaded TorchScript module and the mode it was last switched to.
pub struct TorchScript {
    module: RefCell<CModule>,
    training: Cell<Option<bool>>,
    rng: StepRng,
}

impl std::fmt::Debug for TorchScript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchScript").field("training", &self.training.get()).finish_non_exhaustive()
    }
}

impl TorchScript {
    /// Loads the module at `file` onto `vs`'s device and registers its trainable
    /// parameters in `vs` (as `tch::TrainableCModule::load` does) and in `params` under
    /// their own dotted names: `TrainableCModule` keeps its module to itself and renames
    /// the variables with `_` for `.`, while the layers a job reports must be the module's
    /// names. Parameters that do not require gradients stay frozen in the module.
    pub fn load(file: &Path, vs: &nn::VarStore, params: &mut Params, seed: u64) -> anyhow::Result<Self> {
        let module = CModule::load_on_device(file, vs.device())
            .map_err(|err| anyhow::anyhow!("not a TorchScript module: {}", reason(&err)))?;
        let root = vs.root();
        for (name, tensor) in module.named_parameters()? {
            if !tensor.requires_grad() {
                continue;
            }
            anyhow::ensure!(
                tensor.kind() == Kind::Float,
                "parameter {name} is {:?}: gradscope trains float32 parameters",
                tensor.kind()
            );
            let tensor = root.add(&name.replace('.', "_"), tensor, true);
            params.named.push((name, tensor));
            params.is_norm.push(false);
            params.redundant.push(false);
        }
        anyhow::ensure!(!params.is_empty(), "the module has no trainable parameters");
        Ok(Self { module: RefCell::new(module), training: Cell::new(None), rng: StepRng::new(seed) })
    }

    /// Saves the whole module (parameters and buffers) as TorchScript.
    pub fn save(&self, file: &Path) -> anyhow::Result<()> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
        }
        let partial = file.with_extension("partial");
        self.module
            .borrow()
            .save(&partial)
            .map_err(|err| anyhow::anyhow!("failed to save the module: {}", reason(&err)))?;
        std::fs::rename(&partial, file).with_context(|| format!("failed to move the module to {}", file.display()))
    }

    /// Switches dropout and batch norm between training and evaluation, when they are not
    /// there already.
    fn set_mode(&self, train: bool) -> anyhow::Result<()> {
        if self.training.get() != Some(train) {
            let mut module = self.module.borrow_mut();
            if train {
                module.f_set_train()?;
            } else {
                module.f_set_eval()?;
            }
            self.training.set(Some(train));
        }
        Ok(())
    }

    /// The module's device copy of `xs` fed through `forward`.
    fn run(&self, xs: &Tensor) -> anyhow::Result<Tensor> {
        self.module.borrow().forward_ts(&[xs]).map_err(|err| anyhow::anyhow!("{}", reason(&err)))
    }
}

impl super::Model for TorchScript {
    fn trace(&self, xs: &Tensor, train: bool, _: super::Trace) -> anyhow::Result<super::Traced> {
        self.set_mode(train)?;
        // Dropout draws from LibTorch's generator: seeded per step, as the built-ins' masks.
        let out = if train { self.rng.seeded(|| self.run(xs)) } else { self.run(xs) }?;
        Ok(super::Traced::plain(out))
    }

    fn rng(&self) -> &StepRng {
        &self.rng
    }
}

/// The loop keeps the module to checkpoint it whole, and hands the model on as a trait
/// object.
impl super::Model for std::rc::Rc<TorchScript> {
    fn trace(&self, xs: &Tensor, train: bool, trace: super::Trace) -> anyhow::Result<super::Traced> {
        self.as_ref().trace(xs, train, trace)
    }

    fn rng(&self) -> &StepRng {
        self.as_ref().rng()
    }
}
