//! `cargo bench --bench steps -- [ARGS]`: what monitoring costs per training step.
//!
//! Each variant trains its own copy of the model on one fixed batch; variants run in
//! interleaved rounds and the table reports the median step time, so drift on a shared
//! machine hits all of them alike. The job variants call the job's own step
//! (`gradscope::train::step::step`), monitoring on or off, histograms on or off, with or
//! without `clip_norm`, with the spectral radius, the temporal gradient profile or the
//! forward signal; two LibTorch loops without it are the reference. Run without
//! `--bench` (as `cargo test --all-targets` does), it trains each variant once at toy
//! sizes, to show that it works.

use std::time::Instant;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use gradscope::spec::{
    DeviceChoice, GradPolicy, ModelSpec, MonitorSpec, NormType, OptimizerSpec, PolicySpec, parse_device,
};
use gradscope::train::LayerInfo;
use gradscope::train::model::{self, Input, Io, Model, Trace, Traced};
use gradscope::train::optim::FlatOptimizer;
use gradscope::train::policy::GradPolicies;
use gradscope::train::spectral::Spectral;
use gradscope::train::stats::FlatParams;
use gradscope::train::step::{self, Monitoring, Trainer};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Reduction, Tensor};

#[derive(Debug, Clone, Parser)]
#[command(name = "steps", about = "Step time bare, with full per-layer statistics, and with clipping")]
struct StepsArgs {
    /// Which models to time.
    #[arg(long, value_enum, default_value = "all")]
    pub model: BenchModel,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// The large MLP (2048 wide, 24 blocks, batch 1024); default on CUDA.
    #[arg(long)]
    pub large: bool,
    /// Timed steps per variant per round.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Rounds; each runs every variant once, in turn.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Untimed steps per variant first.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// LibTorch CPU threads (default: LibTorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Also time a TorchScript module (`torch.jit.script(model).save(FILE)`), as a
    /// `torchscript` job loads it, on the first `--module-batch` samples of `--data`.
    #[arg(long, requires = "data")]
    pub module: Option<std::path::PathBuf>,
    /// A safetensors data set with `x` and `y` (int64 classes) for `--module`.
    #[arg(long, requires = "module")]
    pub data: Option<std::path::PathBuf>,
    /// Samples per step for `--module`.
    #[arg(long, default_value_t = 32)]
    pub module_batch: i64,
    /// Given by `cargo bench`; without it the benchmark only shows that it runs.
    #[arg(long, hide = true)]
    pub bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchModel {
    Mlp,
    Lstm,
    All,
}

/// What a timed step does besides forward, backward and the optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// LibTorch's per-tensor AdamW and nothing else but the loss to the host, as any
    /// training loop logs it: the step PyTorch eager users know.
    Bare,
    /// A job's step with statistics off (`monitor.every: 0`): the flat AdamW, and the
    /// loss and global norm in one host copy.
    Flat,
    /// `clip_norm` as a job applies it, with no per-layer statistics.
    Clip,
    /// Every per-layer statistic (no histogram) and `clip_norm`, one host copy.
    StatsClipNoHist,
    /// Every per-layer statistic and histogram, one host copy.
    Stats,
    /// Every per-layer statistic and histogram, then `clip_norm`, one host copy.
    StatsClip,
    /// LibTorch's AdamW with four statistics per layer, each read with its own host sync.
    ItemPerLayer,
    /// Statistics off, the spectral radius of the recurrent and square weights on every
    /// step (`monitor.spectral_every: 1`).
    Spectral,
    /// Statistics off, the temporal gradient profile on every step (`monitor.time_every: 1`).
    Time,
    /// `StatsClipNoHist` with the forward signal (each block's output mean and RMS).
    StatsClipNoHistSignal,
}

const VARIANTS: [Variant; 10] = [
    Variant::Bare,
    Variant::Flat,
    Variant::Clip,
    Variant::StatsClipNoHist,
    Variant::Stats,
    Variant::StatsClip,
    Variant::ItemPerLayer,
    Variant::Spectral,
    Variant::Time,
    Variant::StatsClipNoHistSignal,
];

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Self::Bare => "LibTorch AdamW step, no stats",
            Self::Flat => "job step, stats off",
            Self::Clip => "job step + clip_norm",
            Self::StatsClipNoHist => "+ full stats, no hist, + clip",
            Self::Stats => "+ full stats + hist",
            Self::StatsClip => "+ full stats + hist + clip_norm",
            Self::ItemPerLayer => "LibTorch + 4 stats/layer, sync each",
            Self::Spectral => "job step + spectral radius",
            Self::Time => "job step + temporal profile",
            Self::StatsClipNoHistSignal => "+ full stats, no hist, + clip + signal",
        }
    }

    /// What the forward keeps for the step's measurements.
    fn trace(self) -> Trace {
        Trace { input: self == Self::Time, blocks: self == Self::StatsClipNoHistSignal }
    }

    /// What a job step of this variant monitors and which grad policies it applies;
    /// `None` for the LibTorch references.
    fn job_step(self) -> Option<(Monitoring, Vec<GradPolicy>)> {
        let clip = || vec![GradPolicy::ClipNorm { max_norm: 1.0, norm_type: NormType::Two }];
        let (stats, histogram, grad) = match self {
            Self::Bare | Self::ItemPerLayer => return None,
            Self::Flat | Self::Spectral | Self::Time => (false, false, Vec::new()),
            Self::Clip => (false, false, clip()),
            Self::StatsClipNoHist | Self::StatsClipNoHistSignal => (true, false, clip()),
            Self::Stats => (true, true, Vec::new()),
            Self::StatsClip => (true, true, clip()),
        };
        let (spectral, time) = (self == Self::Spectral, self == Self::Time);
        Some((Monitoring { stats, histogram, spectral, time }, grad))
    }
}

/// A model's forward pass on a fixed input, to logits `[samples, classes]`, keeping what
/// the trace asks for.
type Forward = Box<dyn Fn(&Tensor, Trace) -> anyhow::Result<Traced>>;

/// A model, a fixed batch and how to score it.
struct Workload {
    name: String,
    vs: nn::VarStore,
    forward: Forward,
    xs: Tensor,
    ys: Tensor,
    params: Vec<Tensor>,
    /// The parameters' names and shapes, for the measured matrices.
    layers: Vec<LayerInfo>,
}

/// The built-in MLP of Linear → LayerNorm → GELU blocks, as a job builds it.
fn mlp(device: Device, width: i64, blocks: i64, batch: i64) -> anyhow::Result<Workload> {
    let spec: ModelSpec = serde_json::from_value(
        serde_json::json!({"kind": "mlp", "layers": blocks, "hidden": width, "norm": "layer", "activation": "gelu"}),
    )?;
    let vs = nn::VarStore::new(device);
    let io = Io { input: Input::Features(width), output: 10, max_len: 1 };
    let (net, params) = model::build(&spec, &vs, io, 0)?;
    let xs = Tensor::f_randn([batch, width], (Kind::Float, device))?;
    let ys = Tensor::f_randint(10, [batch], (Kind::Int64, device))?;
    let layers = params.layers();
    let params: Vec<Tensor> = params.tensors().map(Tensor::shallow_clone).collect();
    Ok(Workload {
        name: format!("MLP {width} wide × {blocks} blocks, batch {batch}, {} tensors", params.len()),
        vs,
        forward: Box::new(move |x, trace| net.trace(x, true, trace)),
        xs,
        ys,
        params,
        layers,
    })
}

fn lstm(device: Device) -> anyhow::Result<Workload> {
    let (layers, hidden, vocab, seq, batch) = (2, 256, 65, 128, 32);
    let spec: ModelSpec =
        serde_json::from_value(serde_json::json!({"kind": "lstm", "layers": layers, "hidden": hidden}))?;
    let vs = nn::VarStore::new(device);
    let io = Io { input: Input::Tokens(vocab), output: vocab, max_len: seq };
    let (net, params) = model::build(&spec, &vs, io, 0)?;
    let xs = Tensor::f_randint(vocab, [batch, seq], (Kind::Int64, device))?;
    let ys = Tensor::f_randint(vocab, [batch * seq], (Kind::Int64, device))?;
    let infos = params.layers();
    let params: Vec<Tensor> = params.tensors().map(Tensor::shallow_clone).collect();
    Ok(Workload {
        name: format!("LSTM char LM, {layers} layers × {hidden}, seq {seq}, batch {batch}, {} tensors", params.len()),
        vs,
        forward: Box::new(move |x, trace| {
            let traced = net.trace(x, true, trace)?;
            Ok(Traced { out: traced.out.f_view([-1, vocab])?, ..traced })
        }),
        xs,
        ys,
        params,
        layers: infos,
    })
}

/// A user's TorchScript module, loaded as a `torchscript` job loads it, on the first
/// `batch` samples of a data set; its output is scored by cross-entropy over the last
/// dimension, as a `dataset` task with `loss: cross_entropy` does.
fn torchscript(device: Device, file: &std::path::Path, data: &std::path::Path, batch: i64) -> anyhow::Result<Workload> {
    let vs = nn::VarStore::new(device);
    let (module, params) = model::load_torchscript(file, &vs, 0)?;
    let tensors: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(data)?.into_iter().collect();
    let x = tensors.get("x").context("the data set has no x")?;
    let y = tensors.get("y").context("the data set has no y")?;
    let n = batch.min(x.size()[0]);
    let xs = x.f_narrow(0, 0, n)?.f_to(device)?;
    let ys = y.f_narrow(0, 0, n)?.f_reshape([-1])?.f_to(device)?;
    let layers = params.layers();
    let params: Vec<Tensor> = params.tensors().map(Tensor::shallow_clone).collect();
    Ok(Workload {
        name: format!("TorchScript {}, batch {n}, {} tensors", file.display(), params.len()),
        vs,
        forward: Box::new(move |x, _| {
            let out = module.forward(x, true)?;
            let width = out.size().last().copied().unwrap_or(1);
            Ok(Traced::plain(out.f_reshape([-1, width])?))
        }),
        xs,
        ys,
        params,
        layers,
    })
}

/// One variant's model, and its optimizer: LibTorch's, or a job's [`Trainer`].
struct Runner {
    variant: Variant,
    work: Workload,
    opt: nn::Optimizer,
    /// A job variant's step state and what it monitors.
    job: Option<(Trainer, Monitoring)>,
    /// Steps taken.
    steps: u64,
}

/// The learning rate of every variant.
const LR: f64 = 1e-4;

impl Runner {
    fn new(variant: Variant, work: Workload) -> anyhow::Result<Self> {
        let device = work.vs.device();
        let job = match variant.job_step() {
            None => None,
            Some((monitoring, grad)) => {
                let flat = FlatParams::new(&work.params, device)?;
                let optimizer = FlatOptimizer::new(&OptimizerSpec { lr: LR, ..OptimizerSpec::default() });
                let policy = PolicySpec { grad, ..PolicySpec::default() };
                let grad_policies = GradPolicies::new(&policy.grad, device)?;
                let names: Vec<String> = (0..work.params.len()).map(|i| format!("param{i}")).collect();
                let redundant = vec![false; names.len()];
                let monitor = MonitorSpec::default();
                let spectral = if monitoring.spectral {
                    Spectral::new(&work.layers, |i| flat.params()[i].shallow_clone())?
                } else {
                    None
                };
                let trainer = Trainer::new(flat, optimizer, grad_policies, &policy, &monitor, names, &redundant)
                    .with_spectral(spectral);
                Some((trainer, monitoring))
            }
        };
        let opt = nn::AdamW::default().build(&work.vs, LR)?;
        Ok(Self { variant, work, opt, job, steps: 0 })
    }

    fn step(&mut self) -> anyhow::Result<()> {
        self.steps += 1;
        let work = &self.work;
        let trace = self.variant.trace();
        let forward = || -> anyhow::Result<step::Forward> {
            let traced = (work.forward)(&work.xs, trace)?;
            let loss = traced.out.f_cross_entropy_loss::<Tensor>(&work.ys, None, Reduction::Mean, -100, 0.0)?;
            Ok(step::Forward { loss, input: traced.input, blocks: traced.blocks })
        };
        if let Some((trainer, monitoring)) = &mut self.job {
            // The job's step, whole: its reports and events are dropped here.
            step::step(trainer, self.steps, LR, *monitoring, forward, &mut |_| {})?;
            return Ok(());
        }
        self.opt.zero_grad();
        let loss = forward()?.loss;
        loss.f_backward()?;
        tch::no_grad(|| self.reference_update(&loss))
    }

    /// The LibTorch references' update: AdamW, the loss to the host, and for
    /// `ItemPerLayer` four statistics per layer, each with its own host sync.
    fn reference_update(&mut self, loss: &Tensor) -> anyhow::Result<()> {
        let loss = loss.f_detach()?.f_reshape([1])?.f_to_kind(Kind::Double)?;
        if self.variant == Variant::ItemPerLayer {
            for p in &self.work.params {
                let g = p.grad();
                for stat in [g.f_norm()?, g.f_abs()?.f_max()?, g.f_mean(Kind::Float)?, g.f_std(true)?] {
                    let _ = stat.f_double_value(&[])?;
                }
            }
        }
        self.opt.step();
        let _ = loss.f_double_value(&[0])?;
        Ok(())
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn time_workload(args: &StepsArgs, make: &dyn Fn() -> anyhow::Result<Workload>) -> anyhow::Result<()> {
    let mut runners: Vec<Runner> = VARIANTS.iter().map(|&v| Runner::new(v, make()?)).collect::<anyhow::Result<_>>()?;
    println!("\n{} on {:?}", runners[0].work.name, runners[0].work.vs.device());
    for runner in &mut runners {
        for _ in 0..args.warmup {
            runner.step()?;
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); runners.len()];
    for round in 0..args.rounds {
        // Alternate the order so no variant always runs first.
        let order: Vec<usize> =
            if round % 2 == 0 { (0..runners.len()).collect() } else { (0..runners.len()).rev().collect() };
        for i in order {
            let runner = &mut runners[i];
            let start = Instant::now();
            for _ in 0..args.steps {
                runner.step()?;
            }
            if runner.work.vs.device().is_cuda() {
                tch::Cuda::synchronize(device_index(runner.work.vs.device()) as i64);
            }
            samples[i].push(start.elapsed().as_secs_f64() * 1e3 / args.steps as f64);
        }
    }
    let medians: Vec<f64> = samples.into_iter().map(median).collect();
    println!("{:<36} {:>10} {:>12} {:>14}", "variant", "ms/step", "vs LibTorch", "vs stats off");
    for (runner, ms) in runners.iter().zip(&medians) {
        println!(
            "{:<36} {:>10.2} {:>+11.1}% {:>+13.1}%",
            runner.variant.label(),
            ms,
            100.0 * (ms / medians[0] - 1.0),
            100.0 * (ms / medians[1] - 1.0)
        );
    }
    Ok(())
}

fn device_index(device: Device) -> usize {
    match device {
        Device::Cuda(n) => n,
        _ => 0,
    }
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test` passes nothing, and gets one step of
    // each variant at the default CPU sizes.
    let args = if std::env::args().any(|a| a == "--bench") {
        StepsArgs::parse()
    } else {
        StepsArgs::parse_from(["steps", "--device", "cpu", "--steps", "1", "--rounds", "1", "--warmup", "0"])
    };
    run(&args)
}

fn run(args: &StepsArgs) -> anyhow::Result<()> {
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    let choice = parse_device(&args.device).context("--device must be auto, cpu, cuda or cuda:N")?;
    let device = model::resolve_device(choice)?;
    let large = args.large || (device.is_cuda() && choice != DeviceChoice::Cpu);
    println!(
        "bench steps: median of {} interleaved rounds × {} steps, {} torch threads",
        args.rounds,
        args.steps,
        tch::get_num_threads()
    );
    if let (Some(file), Some(data)) = (&args.module, &args.data) {
        time_workload(args, &|| torchscript(device, file, data, args.module_batch))?;
        return Ok(());
    }
    if matches!(args.model, BenchModel::Mlp | BenchModel::All) {
        let (width, blocks, batch) = if large { (2048, 24, 1024) } else { (256, 12, 128) };
        time_workload(args, &|| mlp(device, width, blocks, batch))?;
    }
    if matches!(args.model, BenchModel::Lstm | BenchModel::All) {
        time_workload(args, &|| lstm(device))?;
    }
    Ok(())
}
