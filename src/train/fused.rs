//! The flat buffers on CUDA, read once for every per-layer statistic.
//!
//! LibTorch's reductions each read the whole gradient buffer again: a mean and variance,
//! a min/max, a non-zero count, a threshold count, and for the weights a snapshot, a
//! subtraction and three norms — about 64 bytes of memory traffic a parameter where the
//! gradient is 4, which on a 100M-parameter model is a quarter of the training step (the
//! README's "On a GPU"). The kernels in `fused.cu`, compiled at run time by NVRTC (the
//! library PyTorch's CUDA builds ship beside LibTorch), read the gradients once for every
//! gradient statistic, copy the weights into the snapshot while summing their squares,
//! and read weights and snapshot once after the update: 20 bytes a parameter in all, and
//! the histogram, on the steps that take one, 4 more.
//!
//! The buffers are cut into chunks inside one layer each; a block reduces a chunk, and a
//! second kernel combines each layer's chunks in a fixed order, so a statistic is the same
//! on every run. The kernels run on the CUDA device's legacy default stream, the one
//! LibTorch's operations use, so they are ordered with them; their inputs and outputs
//! are LibTorch tensors, kept alive by the caller until their results are read.
//!
//! Where NVRTC or the driver cannot be loaded, [`Fused::new`] fails and the statistics are
//! taken by LibTorch's reductions, with the same definitions (`stats.rs`).
//!
//! With `host.rs`, this module holds the crate's `unsafe` code: launching a kernel on raw
//! device pointers, and loading NVRTC by path.
#![allow(unsafe_code)]

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchArgs, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{CompileError, Ptx};
use tch::{Device, Kind, Tensor};

use super::host;
use super::stats::{HIST_BINS, HIST_MAX_EXP, HIST_MIN_EXP};
use crate::vocab::Statistic;

/// Threads a block.
const THREADS: u32 = 256;
/// Elements a thread holds in registers: its two-pass moments need no second read.
const PER_THREAD: usize = 16;
/// Elements a chunk (one block's work): 16 KiB of float32.
const CHUNK: usize = THREADS as usize * PER_THREAD;

const SOURCE: &str = include_str!("fused.cu");

/// Whether this process's next CUDA jobs take their statistics by the kernels.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Takes the statistics of the CUDA jobs this process starts from now on by the kernels
/// (`true`, the default) or by LibTorch's reductions: for benchmarks that compare the two
/// ways through real jobs (`cargo bench --bench jobs -- --variants default,default-libtorch`).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether [`enable`] left the kernels on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The kernels `fused.cu` defines.
const ENTRIES: [&str; 6] =
    ["grad_chunks", "grad_layers", "hist_chunks", "snapshot_chunks", "change_chunks", "weight_layers"];

/// `fused.cu` with the sizes it is compiled for.
fn source() -> String {
    format!(
        "#define THREADS {THREADS}\n#define PER_THREAD {PER_THREAD}\n#define HIST_BINS {HIST_BINS}\n\
         #define HIST_MIN_EXP ({HIST_MIN_EXP})\n#define HIST_MAX_EXP ({HIST_MAX_EXP})\n{SOURCE}"
    )
}

/// The kernels as PTX, compiled once a process (for the oldest architecture NVRTC
/// targets; the driver compiles the PTX for the device when a module is loaded).
pub fn ptx() -> Result<&'static str, String> {
    static PTX: OnceLock<Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        load_nvrtc()?;
        cudarc::nvrtc::compile_ptx(source()).map(|ptx| ptx.to_src()).map_err(|e| match e {
            CompileError::CompileError { log, .. } => {
                format!("NVRTC could not compile the statistics kernels:\n{}", log.to_string_lossy())
            }
            other => format!("NVRTC could not compile the statistics kernels: {other}"),
        })
    })
    .as_deref()
    .map_err(Clone::clone)
}

/// Makes NVRTC loadable by the names the driver bindings look for: from the library path
/// if it is there, else from beside the LibTorch this process runs (PyTorch's wheels keep
/// it in `site-packages/nvidia/<part>/lib`, with the builtins library it opens by name).
/// A library loaded by path answers later loads by its soname, so both are loaded and kept
/// for the process's life.
fn load_nvrtc() -> Result<(), String> {
    // SAFETY: loading NVRTC runs no code of ours; it is a library whose initialisers are
    // safe to run, as PyTorch itself loads it.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Ok(());
    }
    let candidates = nvrtc_beside_libtorch();
    for path in &candidates {
        // SAFETY: as above.
        if let Ok(library) = unsafe { libloading::Library::new(path) } {
            std::mem::forget(library);
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libnvrtc-builtins")) {
                continue;
            }
            // SAFETY: as above.
            if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                return Ok(());
            }
        }
    }
    Err(format!("NVRTC (libnvrtc.so) is neither on the library path nor beside LibTorch (looked at {candidates:?})"))
}

/// `libnvrtc-builtins.so.<version>` and `libnvrtc.so.<major>` files (in that order, the
/// first opened by the second) in the `nvidia/*/lib` folders beside the `torch` package
/// whose libraries this process has mapped.
fn nvrtc_beside_libtorch() -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return Vec::new() };
    let Some(torch_lib) = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(PathBuf::from)
        .find(|path| path.file_name().is_some_and(|name| name == "libtorch_cpu.so" || name == "libc10.so"))
        .and_then(|path| path.parent().map(PathBuf::from))
    else {
        return Vec::new();
    };
    let Some(site) = torch_lib.parent().and_then(|torch| torch.parent()) else { return Vec::new() };
    let Ok(parts) = std::fs::read_dir(site.join("nvidia")) else { return Vec::new() };
    let mut found: Vec<PathBuf> = parts
        .flatten()
        .filter_map(|part| std::fs::read_dir(part.path().join("lib")).ok())
        .flatten()
        .flatten()
        .map(|file| file.path())
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let version = |prefix: &str| {
                name.strip_prefix(prefix)
                    .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
            };
            version("libnvrtc-builtins.so.") || version("libnvrtc.so.")
        })
        .collect();
    // The builtins first; "libnvrtc-" sorts before "libnvrtc.".
    found.sort();
    found
}

/// The kernels loaded on one device, with the stream LibTorch's operations run on.
struct Kernels {
    stream: Arc<CudaStream>,
    grad_chunks: CudaFunction,
    grad_layers: CudaFunction,
    hist_chunks: CudaFunction,
    snapshot_chunks: CudaFunction,
    change_chunks: CudaFunction,
    weight_layers: CudaFunction,
}

impl Kernels {
    /// The kernels on CUDA device `ordinal`, loaded once a process.
    fn on(ordinal: usize) -> anyhow::Result<Arc<Self>> {
        static LOADED: Mutex<Vec<(usize, Arc<Kernels>)>> = Mutex::new(Vec::new());
        let mut loaded = LOADED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, kernels)) = loaded.iter().find(|(o, _)| *o == ordinal) {
            return Ok(Arc::clone(kernels));
        }
        let ptx = ptx().map_err(anyhow::Error::msg)?;
        // SAFETY: loading the driver library runs no code of ours.
        anyhow::ensure!(unsafe { cudarc::driver::sys::is_culib_present() }, "the CUDA driver library is not loadable");
        // The device's primary context: the one LibTorch's runtime calls use.
        let context = CudaContext::new(ordinal).context("the CUDA context")?;
        let module = context.load_module(Ptx::from_src(ptx)).context("loading the statistics kernels")?;
        let function = |name: &str| module.load_function(name).with_context(|| format!("kernel {name}"));
        let kernels = Arc::new(Self {
            // The null stream: the legacy default stream LibTorch runs its operations on.
            stream: context.default_stream(),
            grad_chunks: function(ENTRIES[0])?,
            grad_layers: function(ENTRIES[1])?,
            hist_chunks: function(ENTRIES[2])?,
            snapshot_chunks: function(ENTRIES[3])?,
            change_chunks: function(ENTRIES[4])?,
            weight_layers: function(ENTRIES[5])?,
        });
        loaded.push((ordinal, Arc::clone(&kernels)));
        Ok(kernels)
    }
}

/// A contiguous tensor of `kind` on CUDA, as a device pointer for a kernel's argument of
/// that type.
fn device_ptr(t: &Tensor, kind: Kind) -> anyhow::Result<u64> {
    anyhow::ensure!(
        t.device().is_cuda() && t.is_contiguous() && t.kind() == kind,
        "a kernel's buffer must be contiguous {kind:?} on CUDA, not {:?} on {:?}",
        t.kind(),
        t.device()
    );
    Ok(t.data_ptr() as u64)
}

/// The chunks of the measured layers, as the kernels read them.
#[derive(Debug, PartialEq)]
struct ChunkTable {
    /// Each chunk's first element in the flat buffers.
    starts: Vec<i64>,
    /// Each chunk's length, 1 to [`CHUNK`].
    lens: Vec<i32>,
    /// Each chunk's layer, by position in `ranges`.
    layer_of: Vec<i32>,
    /// Layer `l`'s chunks are `first[l] .. first[l + 1]`.
    first: Vec<i32>,
}

impl ChunkTable {
    /// Each layer of `ranges` cut into chunks of [`CHUNK`] elements, the last shorter.
    fn new(ranges: &[Range<usize>]) -> anyhow::Result<Self> {
        let mut table = Self { starts: Vec::new(), lens: Vec::new(), layer_of: Vec::new(), first: vec![0] };
        for (layer, range) in ranges.iter().enumerate() {
            for start in range.clone().step_by(CHUNK) {
                table.starts.push(i64::try_from(start)?);
                table.lens.push(CHUNK.min(range.end - start) as i32);
                table.layer_of.push(i32::try_from(layer)?);
            }
            table.first.push(i32::try_from(table.starts.len()).context("too many chunks")?);
        }
        Ok(table)
    }
}

/// One job's statistics kernels, and the chunks of its measured layers.
pub struct Fused {
    kernels: Arc<Kernels>,
    device: Device,
    layers: usize,
    chunks: usize,
    /// Each chunk's first element in the flat buffers (int64).
    starts: Tensor,
    /// Each chunk's length (int32, at most [`CHUNK`]).
    lens: Tensor,
    /// Each chunk's layer, by position among the measured layers (int32).
    layer_of: Tensor,
    /// Layer `l`'s chunks are `first[l] .. first[l + 1]` (int32, `layers + 1`).
    first: Tensor,
    /// The chunks' parts of the gradient statistics: (n, mean, m2) float64 and (max
    /// bits, zeros, below, nonfinite) int32, rewritten each step.
    moments: Tensor,
    counts: Tensor,
    /// Σw² of each chunk at the last snapshot, and (Σw², Σ(w − before)²) after the
    /// update (float64).
    snapshot: Tensor,
    sums: Tensor,
}

impl std::fmt::Debug for Fused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fused").field("layers", &self.layers).field("chunks", &self.chunks).finish_non_exhaustive()
    }
}

impl Fused {
    /// The kernels on `device` (CUDA), for the layers whose elements are `ranges`.
    pub fn new(device: Device, ranges: &[Range<usize>]) -> anyhow::Result<Self> {
        let Device::Cuda(ordinal) = device else { anyhow::bail!("the statistics kernels run on CUDA") };
        let kernels = Kernels::on(ordinal)?;
        let ChunkTable { starts, lens, layer_of, first } = ChunkTable::new(ranges)?;
        let chunks = starts.len();
        let on = |t: Tensor| t.f_to_device(device);
        let zeros = |n: usize, kind: Kind| Tensor::f_zeros([n.max(1) as i64], (kind, device));
        Ok(Self {
            kernels,
            device,
            layers: ranges.len(),
            chunks,
            starts: on(Tensor::from_slice(&starts))?,
            lens: on(Tensor::from_slice(&lens))?,
            layer_of: on(Tensor::from_slice(&layer_of))?,
            first: on(Tensor::from_slice(&first))?,
            moments: zeros(3 * chunks, Kind::Double)?,
            counts: zeros(4 * chunks, Kind::Int)?,
            snapshot: zeros(chunks, Kind::Double)?,
            sums: zeros(2 * chunks, Kind::Double)?,
        })
    }

    /// Launches `function` (named `name`) on `grid` blocks of [`THREADS`] threads, on the
    /// stream LibTorch's operations run on, with the arguments `push` gives it; nothing
    /// when `grid` is 0.
    ///
    /// # Safety
    /// The arguments must be what `fused.cu` declares for `function`, in its order: device
    /// pointers of live contiguous CUDA tensors of the kinds ([`device_ptr`] checks them)
    /// and sizes the kernel reads and writes for `grid` blocks.
    unsafe fn launch<'a>(
        &'a self,
        function: &'a CudaFunction,
        name: &str,
        grid: usize,
        push: impl FnOnce(&mut LaunchArgs<'a>),
    ) -> anyhow::Result<()> {
        if grid == 0 {
            return Ok(());
        }
        let blocks = LaunchConfig {
            grid_dim: (u32::try_from(grid).context("too many blocks for one launch")?, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.kernels.stream.launch_builder(function);
        push(&mut launch);
        // SAFETY: the caller's; the launch is ordered with LibTorch's operations on the
        // same stream.
        unsafe { launch.launch(blocks) }.with_context(|| format!("launching {name}"))?;
        Ok(())
    }

    /// The chunk table's starts and lengths, as the kernels' first arguments after the
    /// buffers.
    fn table(&self) -> anyhow::Result<(u64, u64)> {
        Ok((device_ptr(&self.starts, Kind::Int64)?, device_ptr(&self.lens, Kind::Int)?))
    }

    /// The gradient statistics of the measured layers, `[Statistic::GRAD.len(), layers]`
    /// float64, NaN/Inf counted; `|g| < tiny` counts as underflow.
    pub fn grad_rows(&self, grads: &Tensor, tiny: f64) -> anyhow::Result<Tensor> {
        let rows = Statistic::GRAD.len();
        let out = Tensor::f_empty([rows as i64, self.layers as i64], (Kind::Double, self.device))?;
        let (g, (starts, lens)) = (device_ptr(grads, Kind::Float)?, self.table()?);
        let (moments, counts, first, out_ptr) = (
            device_ptr(&self.moments, Kind::Double)?,
            device_ptr(&self.counts, Kind::Int)?,
            device_ptr(&self.first, Kind::Int)?,
            device_ptr(&out, Kind::Double)?,
        );
        let below = host::below_bits(tiny);
        let layers = self.layers as i32;
        let k = &self.kernels;
        // SAFETY: `grad_chunks(grads, starts, lens, below_bits, moments, counts)`; `grads`
        // covers every chunk's elements, `moments` and `counts` hold 3 and 4 a chunk.
        unsafe {
            self.launch(&k.grad_chunks, "grad_chunks", self.chunks, |l| {
                l.arg(&g).arg(&starts).arg(&lens).arg(&below).arg(&moments).arg(&counts);
            })?;
        }
        // SAFETY: `grad_layers(moments, counts, first, layers, out)`; `out` holds
        // `rows × layers` float64.
        unsafe {
            self.launch(&k.grad_layers, "grad_layers", self.layers, |l| {
                l.arg(&moments).arg(&counts).arg(&first).arg(&layers).arg(&out_ptr);
            })?;
        }
        Ok(out)
    }

    /// Each measured layer's gradient histogram, `[layers * HIST_BINS]` int64.
    pub fn histogram(&self, grads: &Tensor) -> anyhow::Result<Tensor> {
        let out = Tensor::f_zeros([(self.layers * HIST_BINS) as i64], (Kind::Int64, self.device))?;
        let (g, (starts, lens)) = (device_ptr(grads, Kind::Float)?, self.table()?);
        let (layer_of, out_ptr) = (device_ptr(&self.layer_of, Kind::Int)?, device_ptr(&out, Kind::Int64)?);
        // SAFETY: `hist_chunks(grads, starts, lens, layer_of, out)`; `out` holds
        // `layers × HIST_BINS` int64, zeroed.
        unsafe {
            self.launch(&self.kernels.hist_chunks, "hist_chunks", self.chunks, |l| {
                l.arg(&g).arg(&starts).arg(&lens).arg(&layer_of).arg(&out_ptr);
            })?;
        }
        Ok(out)
    }

    /// Copies the measured layers of `weights` into `before` (laid out as the weights),
    /// keeping each chunk's Σw² for [`Self::weight_rows`].
    pub fn snapshot(&self, weights: &Tensor, before: &Tensor) -> anyhow::Result<()> {
        anyhow::ensure!(before.size() == weights.size(), "the snapshot is laid out as the weights");
        let (w, b, (starts, lens)) =
            (device_ptr(weights, Kind::Float)?, device_ptr(before, Kind::Float)?, self.table()?);
        let sums = device_ptr(&self.snapshot, Kind::Double)?;
        // SAFETY: `snapshot_chunks(weights, before, starts, lens, sums)`; `before` has the
        // weights' length, `sums` one a chunk.
        unsafe {
            self.launch(&self.kernels.snapshot_chunks, "snapshot_chunks", self.chunks, |l| {
                l.arg(&w).arg(&b).arg(&starts).arg(&lens).arg(&sums);
            })
        }
    }

    /// The weight statistics of the measured layers against the last [`Self::snapshot`]
    /// into `before`, `[Statistic::WEIGHT.len(), layers]` float64.
    pub fn weight_rows(&self, weights: &Tensor, before: &Tensor) -> anyhow::Result<Tensor> {
        let out = Tensor::f_empty([Statistic::WEIGHT.len() as i64, self.layers as i64], (Kind::Double, self.device))?;
        let (w, b, (starts, lens)) =
            (device_ptr(weights, Kind::Float)?, device_ptr(before, Kind::Float)?, self.table()?);
        let (snapshot, sums, first, out_ptr) = (
            device_ptr(&self.snapshot, Kind::Double)?,
            device_ptr(&self.sums, Kind::Double)?,
            device_ptr(&self.first, Kind::Int)?,
            device_ptr(&out, Kind::Double)?,
        );
        let layers = self.layers as i32;
        let k = &self.kernels;
        // SAFETY: `change_chunks(weights, before, starts, lens, sums)`; `sums` holds 2 a chunk.
        unsafe {
            self.launch(&k.change_chunks, "change_chunks", self.chunks, |l| {
                l.arg(&w).arg(&b).arg(&starts).arg(&lens).arg(&sums);
            })?;
        }
        // SAFETY: `weight_layers(snapshot, sums, first, layers, out)`; `out` holds
        // `2 × layers` float64.
        unsafe {
            self.launch(&k.weight_layers, "weight_layers", self.layers, |l| {
                l.arg(&snapshot).arg(&sums).arg(&first).arg(&layers).arg(&out_ptr);
            })?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::model::with_seed;
    use crate::train::stats::FlatParams;

    /// `fused.cu` run on the CPU by `fused_emulated.cpp` (threads for CUDA's threads,
    /// barriers for its synchronisation), on `grads` and on the weights `before` and
    /// `after` an update, laid out as `ranges`: the gradient rows, histogram and weight
    /// rows the kernels write.
    fn emulate(
        ranges: &[Range<usize>],
        grads: &[f32],
        before: &[f32],
        after: &[f32],
        tiny: f64,
    ) -> (Vec<f64>, Vec<u64>, Vec<f64>) {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("gradscope-kernels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("kernels.cu"), source()).expect("source");
        std::fs::write(dir.join("fused_emulated.cpp"), include_str!("fused_emulated.cpp")).expect("emulator");
        let exe = dir.join("fused_emulated");
        let built = std::process::Command::new("c++")
            .args(["-std=c++20", "-O1", "-pthread", "-o"])
            .arg(&exe)
            .arg(dir.join("fused_emulated.cpp"))
            .output()
            .expect("a C++ compiler (c++) on the PATH");
        assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
        let table = ChunkTable::new(ranges).expect("table");
        let mut input = Vec::new();
        for size in [grads.len(), ranges.len(), table.starts.len()] {
            input.write_all(&(size as u64).to_le_bytes()).expect("write");
        }
        input.write_all(&host::below_bits(tiny).to_le_bytes()).expect("write");
        for values in [grads, before, after] {
            values.iter().for_each(|v| input.extend(v.to_le_bytes()));
        }
        table.starts.iter().for_each(|v| input.extend(v.to_le_bytes()));
        for ints in [&table.lens, &table.layer_of, &table.first] {
            ints.iter().for_each(|v| input.extend(v.to_le_bytes()));
        }
        std::fs::write(dir.join("input"), input).expect("input");
        let ran =
            std::process::Command::new(&exe).arg(dir.join("input")).arg(dir.join("output")).output().expect("run");
        assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
        let output = std::fs::read(dir.join("output")).expect("output");
        let _ = std::fs::remove_dir_all(&dir);
        let layers = ranges.len();
        let words: Vec<[u8; 8]> = output.chunks_exact(8).map(|w| w.try_into().expect("8 bytes")).collect();
        assert_eq!(words.len(), (7 + HIST_BINS + 2) * layers);
        let (grad_rows, rest) = words.split_at(7 * layers);
        let (hist, weight_rows) = rest.split_at(HIST_BINS * layers);
        (
            grad_rows.iter().map(|w| f64::from_le_bytes(*w)).collect(),
            hist.iter().map(|w| u64::from_le_bytes(*w)).collect(),
            weight_rows.iter().map(|w| f64::from_le_bytes(*w)).collect(),
        )
    }

    /// The kernels' arithmetic, run on the CPU, against the in-place statistics of the same
    /// buffers (themselves held to per-tensor LibTorch computations in `stats.rs`): layers
    /// of one element, shorter than a warp, across chunk boundaries, a large mean, values
    /// below the underflow threshold, subnormals, zeros, NaN and infinities, a weight
    /// tensor at zero before its update.
    #[test]
    fn kernels_on_the_cpu_take_the_in_place_statistics() {
        let tiny = 1.0 / 16384.0;
        let lengths = [1, 3, 7, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 37, 5000];
        let randn = |n: usize, seed: u64| -> Vec<f32> {
            let t = with_seed(seed, || Tensor::randn([n as i64], (Kind::Float, Device::Cpu)));
            Vec::try_from(&t).expect("values")
        };
        let grads: Vec<Vec<f32>> = lengths
            .iter()
            .enumerate()
            .map(|(layer, &n)| {
                let mut g = randn(n, 100 + layer as u64);
                match layer {
                    0 => g[0] = -3.0,
                    1 => g.copy_from_slice(&[0.0, -0.0, 1e-40]),
                    2 => (g[1], g[4]) = (f32::NAN, f32::INFINITY),
                    3 => g.iter_mut().for_each(|x| *x = 1.0 + 1e-4 * *x),
                    5 => g.iter_mut().for_each(|x| *x *= 1e-6),
                    6 => {
                        g.iter_mut().step_by(5).for_each(|x| *x = 0.0);
                        g[CHUNK + 3] = f32::NEG_INFINITY;
                    }
                    7 => g.iter_mut().for_each(|x| *x *= 1e3),
                    _ => {}
                }
                g
            })
            .collect();
        let params: Vec<Tensor> = lengths
            .iter()
            .enumerate()
            .map(|(layer, &n)| {
                let w = if layer == 1 { vec![0.0; n] } else { randn(n, 200 + layer as u64) };
                Tensor::from_slice(&w).set_requires_grad(true)
            })
            .collect();
        let mut flat = FlatParams::new(&params, Device::Cpu).expect("flat");
        assert!(flat.in_place(), "the reference is the in-place way");
        flat.zero_grads().expect("zero");
        let loss = flat
            .params()
            .iter()
            .zip(&grads)
            .map(|(p, g)| (p * Tensor::from_slice(g)).sum(Kind::Float))
            .fold(Tensor::from(0.0f32), |acc, t| acc + t);
        loss.backward();
        flat.adopt_grads().expect("adopt");
        let flat_grads: Vec<f32> = Vec::try_from(flat.grads()).expect("grads");
        let before: Vec<f32> = Vec::try_from(flat.weights()).expect("weights");
        let (stats, _) = flat.grad_stats(tiny).expect("stats");
        let expected_rows: Vec<f64> = Vec::try_from(stats.flatten(0, -1)).expect("rows");
        let expected_hist: Vec<i64> = Vec::try_from(flat.grad_histogram().expect("hist")).expect("hist");
        flat.snapshot_weights().expect("snapshot");
        let after: Vec<f32> = before.iter().zip(randn(before.len(), 300)).map(|(w, d)| w + 1e-3 * d).collect();
        tch::no_grad(|| flat.weights().shallow_clone().f_copy_(&Tensor::from_slice(&after))).expect("update");
        let expected_weights: Vec<f64> =
            Vec::try_from(flat.weight_stats().expect("weights").flatten(0, -1)).expect("rows");

        let (rows, hist, weights) = emulate(flat.ranges(), &flat_grads, &before, &after, tiny);
        let close = |a: f64, b: f64| a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-6 * b.abs() + 1e-12;
        let layers = lengths.len();
        for (i, (&got, &want)) in rows.iter().zip(&expected_rows).enumerate() {
            let (stat, layer) = (Statistic::GRAD[i / layers], i % layers);
            assert!(
                close(got, want),
                "{stat:?} of layer {layer} (of {}): kernels {got}, in place {want}",
                lengths[layer]
            );
        }
        let expected_hist: Vec<u64> = expected_hist.into_iter().map(|c| c as u64).collect();
        for layer in 0..layers {
            let range = layer * HIST_BINS..(layer + 1) * HIST_BINS;
            assert_eq!(hist[range.clone()], expected_hist[range], "histogram of layer {layer}");
        }
        for (i, (&got, &want)) in weights.iter().zip(&expected_weights).enumerate() {
            let (stat, layer) = (Statistic::WEIGHT[i / layers], i % layers);
            assert!(close(got, want), "{stat:?} of layer {layer}: kernels {got}, in place {want}");
        }
        // What the cases are there for.
        assert!(rows[3 * layers].is_nan(), "one element: no sample standard deviation");
        assert_eq!(rows[5 * layers + 2], 2.0, "a NaN and an infinity, counted");
        assert!(rows[2 * layers + 6].is_nan() && rows[layers + 6].is_infinite(), "an infinity: NaN mean, max +Inf");
        assert!(weights[layers + 1].is_nan(), "a zero tensor's update ratio is undefined");
        assert_eq!(hist[HIST_BINS + 1], 1, "a subnormal in the smallest bucket");
    }

    /// The kernels compile with the NVRTC beside the project's LibTorch, on any machine:
    /// a GPU runs them (the statistics' tests in `stats.rs` take them on CUDA).
    #[test]
    fn the_statistics_kernels_compile() {
        let ptx = ptx().unwrap_or_else(|e| panic!("{e}"));
        for entry in ENTRIES {
            assert!(ptx.contains(&format!(".entry {entry}(")), "{entry} is in the PTX");
        }
        assert_eq!(CHUNK % 32, 0, "a chunk is whole warps");
    }

    #[test]
    fn chunks_cover_each_layer_once_inside_it() {
        // Lengths around the chunk size, an empty layer, and a gap (a layer not measured).
        let ranges = [0..1, 1..CHUNK + 1, CHUNK + 1..CHUNK + 1, CHUNK + 1..4 * CHUNK + 3, 5 * CHUNK..6 * CHUNK];
        let table = ChunkTable::new(&ranges).expect("table");
        assert_eq!(table.first, vec![0, 1, 2, 2, 6, 7]);
        for (layer, range) in ranges.iter().enumerate() {
            let chunks = table.first[layer] as usize..table.first[layer + 1] as usize;
            let mut next = range.start as i64;
            for c in chunks {
                assert_eq!(table.layer_of[c], layer as i32);
                assert_eq!(table.starts[c], next, "layer {layer}: chunk {c} follows the last");
                assert!((1..=CHUNK as i32).contains(&table.lens[c]));
                next += i64::from(table.lens[c]);
            }
            assert_eq!(next, range.end as i64, "layer {layer} is covered to its end");
        }
    }

    #[test]
    fn nvrtc_is_found_beside_libtorch() {
        let found = nvrtc_beside_libtorch();
        assert!(
            found.iter().any(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libnvrtc.so."))),
            "{found:?}"
        );
    }
}
