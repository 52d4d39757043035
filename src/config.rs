//! The service's settings as plain values, with their defaults. The binary fills them from
//! its flags and `GRADSCOPE_*` variables; tests and embedders start from
//! [`ServeConfig::new`] or [`ServeConfig::default`].

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

/// Default address to listen on.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
/// Default database URL (SQLite files are created when missing).
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./data/gradscope.db";
/// Default folder for checkpoints and uploaded corpora.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default URL `gradscope healthcheck` asks.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// Default number of jobs that train at the same time.
pub const DEFAULT_MAX_JOBS: u16 = 1;
/// Default size limit of a JSON request body.
pub const DEFAULT_BODY_LIMIT: usize = 256 * 1024;
/// Default size limit of an uploaded corpus.
pub const DEFAULT_CORPUS_LIMIT: usize = 32 * 1024 * 1024;
/// Default number of jobs waiting in the queue.
pub const DEFAULT_MAX_QUEUED: i64 = 100;
/// Default most jobs one experiment may expand to (cells × seeds): a queue's worth, e.g.
/// 2 policies × 5 sequence lengths × 10 seeds.
pub const DEFAULT_MAX_EXPERIMENT_JOBS: u64 = 100;
/// Default largest model, in parameters.
pub const DEFAULT_MAX_PARAMS: u64 = 200_000_000;
/// Default largest estimated activation memory of one training step, in bytes.
pub const DEFAULT_MAX_ACTIVATION_BYTES: u64 = 8 << 30;
/// Default of the most values (layers × statistics × points, a histogram counting as its
/// buckets) one `/layer-stats` answer may hold: about 60 MB of JSON.
pub const DEFAULT_MAX_ANSWER_VALUES: u64 = 5_000_000;
/// Default of the most values one `/layer-stats` query may read before thinning: each is
/// held in memory while the extremes are found (4 bytes each, so at most 400 MB per query;
/// the benchmark's every statistic of 100 layers over 100,000 steps is 80 million).
pub const DEFAULT_MAX_SCAN_VALUES: u64 = 100_000_000;
/// Default memory budget of one job: half of a 16 GiB machine, leaving the rest to the
/// service, the operating system and a second job; GPU jobs of this size fit any card
/// with 16 GiB. Raise it on larger machines.
pub const DEFAULT_MAX_JOB_MEMORY: u64 = 8 << 30;
/// Default storage budget of one job: a 100 000-step job of a 100-layer model with every
/// statistic and histogram recorded at every 10th step stores about 0.25 GiB; ten jobs
/// at the limit fill a 20 GiB disk, which an operator notices before it is full.
pub const DEFAULT_MAX_JOB_DISK: u64 = 2 << 30;
/// Messages a subscriber of a job's live feed may fall behind before it is told it lagged
/// (the feed's broadcast channel holds as many; the job's memory budget counts them).
pub const FEED_CAPACITY: usize = 1024;
/// Default number of recent steps a late subscriber of a job's stream receives first.
pub const DEFAULT_STREAM_BACKLOG: usize = 512;
/// Default most WebSocket clients per job.
pub const DEFAULT_WS_MAX_PER_JOB: usize = 1000;
/// Default most WebSocket clients in total.
pub const DEFAULT_WS_MAX_TOTAL: usize = 4000;
/// Default seconds a WebSocket may stay silent before it is closed.
pub const DEFAULT_WS_IDLE_TIMEOUT_SECS: u64 = 60;
/// Niceness added to the threads that serve WebSocket streams (0: the service's own). At
/// 10, 500 dashboards of a job on 2 cores got their steps with a p99 latency of 89–235 ms
/// instead of 51 ms, for about 3 % of the step rate back (the README's stream benchmark).
pub const DEFAULT_STREAM_NICE: i32 = 0;
/// Default seconds before a request (other than a stream) is answered 408.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
/// Default number of uploaded corpora kept at once.
pub const DEFAULT_MAX_CORPORA: i64 = 100;
/// Seconds a worker may take to check an uploaded model, or to dry-run a job on one.
pub const DEFAULT_CHECK_TIMEOUT_SECS: u64 = 120;
/// Default largest uploaded model or data set, in bytes.
pub const DEFAULT_UPLOAD_LIMIT: usize = 256 * 1024 * 1024;
/// Default most uploaded models, and most data sets, kept at once.
pub const DEFAULT_MAX_UPLOADS: i64 = 100;
/// Default bytes all uploaded models (and, apart, all data sets) may take together.
pub const DEFAULT_UPLOAD_QUOTA: i64 = 4 << 30;

/// Default bytes all uploaded corpora may take together.
pub const DEFAULT_CORPUS_QUOTA: i64 = 1 << 30;

/// Address space a worker reserves besides its job's own memory, measured: an idle
/// worker with LibTorch loaded reserves about 1.3 GiB, one training a tiny job with 2
/// threads 3.0 GiB (its libraries, thread stacks and allocator arenas); each further
/// thread reserves up to [`WORKER_ADDRESS_PER_THREAD`] more. Reserved only: it costs no
/// memory, so the margin is generous.
pub const WORKER_ADDRESS_OVERHEAD: u64 = 4 << 30;
/// Address space each of a worker's LibTorch threads may reserve: its stack and a malloc
/// arena (64 MiB reserved, aligned to 128 MiB).
pub const WORKER_ADDRESS_PER_THREAD: u64 = 256 << 20;

/// Default first token of the NATS subjects of the live feeds (`--nats-prefix`).
pub const DEFAULT_NATS_PREFIX: &str = "gradscope";

/// Checks a NATS subject prefix: 1 to 64 letters, digits, `_` and `-` (it names the
/// stream too, where `.`, `*` and `>` may not appear).
pub fn check_nats_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 64 {
        return Err("must be 1 to 64 characters".to_owned());
    }
    if !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("{prefix:?}: only letters, digits, '_' and '-'"));
    }
    Ok(())
}

/// LibTorch's CPU threads per job by default: the cores shared by the jobs that may run
/// at once, at least one each.
pub fn default_torch_threads(max_jobs: u16) -> i32 {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    i32::try_from(cores / usize::from(max_jobs.max(1))).unwrap_or(i32::MAX).max(1)
}

/// Each worker's address-space limit by default: the machine's memory shared by the jobs
/// that may run at once (never less than the job memory budget admits,
/// `max_job_memory`), plus what the worker reserves without using
/// ([`WORKER_ADDRESS_OVERHEAD`] and [`WORKER_ADDRESS_PER_THREAD`] per thread). `None`
/// where the machine's memory is unknown.
pub fn default_job_memory(max_jobs: u16, torch_threads: i32, max_job_memory: u64) -> Option<u64> {
    let info = nix::sys::sysinfo::sysinfo().ok()?;
    let share = (info.ram_total() / u64::from(max_jobs.max(1))).max(max_job_memory);
    let threads = u64::try_from(torch_threads.max(1)).unwrap_or(1);
    Some(share.saturating_add(WORKER_ADDRESS_OVERHEAD).saturating_add(threads * WORKER_ADDRESS_PER_THREAD))
}

/// Everything `gradscope serve` is configured with. The binary documents each setting
/// as its flag (`gradscope serve --help`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Address to listen on; port 0 picks a free port.
    pub addr: SocketAddr,
    pub database_url: String,
    /// Folder for checkpoints and uploaded corpora.
    pub data_dir: PathBuf,
    /// How many jobs may train at the same time; 0: none (a node that serves the API and
    /// never claims a job).
    pub max_jobs: u16,
    /// Threads LibTorch uses for CPU work in each job (`None`: [`default_torch_threads`]).
    pub torch_threads: Option<i32>,
    /// The GPUs jobs may use, one job per GPU, as `CUDA_VISIBLE_DEVICES` entries (`None`:
    /// every visible one).
    pub gpus: Option<Vec<String>>,
    /// Each worker's address-space limit, in bytes (`None`: [`default_job_memory`]; 0: no
    /// limit). Not applied to CUDA jobs.
    pub job_memory: Option<u64>,
    /// Train jobs on threads of the service's process instead of worker processes (no
    /// isolation: a LibTorch abort ends the service).
    pub in_process: bool,
    /// The executable whose `worker` command trains a job (`None`: this process's own).
    pub worker_binary: Option<PathBuf>,
    /// Extra environment variables for every worker.
    pub worker_env: Vec<(String, String)>,
    /// How long a worker may take to check an uploaded model or dry-run a job on one,
    /// before it is killed and the upload or job refused.
    pub check_timeout: std::time::Duration,
    /// Folder of the dashboard's files, served at `/` instead of the copy built into the
    /// binary (`None`: the built-in copy).
    pub static_dir: Option<PathBuf>,
    /// Origins allowed to call the API from a browser (`*` for any).
    pub cors_origins: Vec<String>,
    /// Largest JSON request body, in bytes.
    pub body_limit: usize,
    /// Largest uploaded corpus, in bytes.
    pub corpus_limit: usize,
    /// Tokens that grant access to `/api`; none: open on loopback, made up beyond it.
    pub api_token: Vec<String>,
    /// Tokens that grant access to `/metrics`; none: open.
    pub metrics_token: Vec<String>,
    /// Most jobs waiting in the queue.
    pub max_queued: i64,
    /// Most jobs one experiment may expand to (cells × seeds).
    pub max_experiment_jobs: u64,
    /// Largest model a job may train, in parameters.
    pub max_params: u64,
    /// Largest estimated activation memory of one training step, in bytes.
    pub max_activation_bytes: u64,
    /// Most values one `/layer-stats` answer may hold.
    pub max_answer_values: u64,
    /// Most values one `/layer-stats` query may read before thinning.
    pub max_scan_values: u64,
    /// Largest estimated peak memory of one job, in bytes.
    pub max_job_memory: u64,
    /// Largest estimated storage of one job, in bytes.
    pub max_job_disk: u64,
    /// Recent steps a client joining a running job's stream receives first.
    pub stream_backlog: usize,
    /// Most WebSocket clients per job.
    pub ws_max_per_job: usize,
    /// Most WebSocket clients in total.
    pub ws_max_total: usize,
    /// Seconds a WebSocket may stay silent before it is closed.
    pub ws_idle_timeout_secs: u64,
    /// Niceness added to the threads that serve WebSocket streams, 0–19.
    pub stream_nice: i32,
    /// Seconds before a request (other than a stream) is answered 408.
    pub request_timeout_secs: u64,
    /// Host names (besides IP addresses and `localhost`) answered when no API token is set.
    pub allowed_hosts: Vec<String>,
    /// Most uploaded corpora kept at once.
    pub max_corpora: i64,
    /// Most bytes all uploaded corpora may take together.
    pub corpus_quota: i64,
    /// Largest uploaded TorchScript model or safetensors data set, in bytes.
    pub upload_limit: usize,
    /// Most uploaded models kept at once, and most data sets.
    pub max_uploads: i64,
    /// Most bytes all uploaded models may take together, and all data sets.
    pub upload_quota: i64,
    /// A webhook that receives every job's notifications (`http` or `https`).
    pub notify_url: Option<String>,
    /// How long one try of a notification may take.
    pub notify_timeout: std::time::Duration,
    /// The wait before a notification's first retry, doubled for each further one.
    pub notify_retry_base: std::time::Duration,
    /// The dashboard's address as people reach it (`https://gradscope.example.com`), for
    /// the links in notifications; none: the links are paths.
    pub public_url: Option<String>,
    /// This node's id among the nodes sharing a PostgreSQL database (`None`: the host's
    /// name and a random suffix, new for each start).
    pub node_id: Option<String>,
    /// How long this node holds a running job without renewing its lease; it renews every
    /// third of it. Another node takes over a job whose lease expired.
    pub lease: std::time::Duration,
    /// How many times a job may start before one lost with its node stays `interrupted`
    /// (1: never resumed by another node).
    pub max_attempts: u32,
    /// NATS (with JetStream) through which the live feeds of this node's jobs reach
    /// clients on other nodes, and theirs reach this node's (`None`: feeds stay local).
    pub nats_url: Option<String>,
    /// First token of the NATS subjects; the stream is `<prefix>-live`.
    pub nats_prefix: String,
}

/// How many times a job may start, by default: two more runs after the first.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            addr: DEFAULT_ADDR,
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            max_jobs: DEFAULT_MAX_JOBS,
            torch_threads: None,
            gpus: None,
            job_memory: None,
            in_process: false,
            worker_binary: None,
            worker_env: Vec::new(),
            check_timeout: std::time::Duration::from_secs(DEFAULT_CHECK_TIMEOUT_SECS),
            static_dir: None,
            cors_origins: Vec::new(),
            body_limit: DEFAULT_BODY_LIMIT,
            corpus_limit: DEFAULT_CORPUS_LIMIT,
            api_token: Vec::new(),
            metrics_token: Vec::new(),
            max_queued: DEFAULT_MAX_QUEUED,
            max_experiment_jobs: DEFAULT_MAX_EXPERIMENT_JOBS,
            max_params: DEFAULT_MAX_PARAMS,
            max_activation_bytes: DEFAULT_MAX_ACTIVATION_BYTES,
            max_answer_values: DEFAULT_MAX_ANSWER_VALUES,
            max_scan_values: DEFAULT_MAX_SCAN_VALUES,
            max_job_memory: DEFAULT_MAX_JOB_MEMORY,
            max_job_disk: DEFAULT_MAX_JOB_DISK,
            stream_backlog: DEFAULT_STREAM_BACKLOG,
            ws_max_per_job: DEFAULT_WS_MAX_PER_JOB,
            ws_max_total: DEFAULT_WS_MAX_TOTAL,
            ws_idle_timeout_secs: DEFAULT_WS_IDLE_TIMEOUT_SECS,
            stream_nice: DEFAULT_STREAM_NICE,
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS,
            allowed_hosts: Vec::new(),
            max_corpora: DEFAULT_MAX_CORPORA,
            corpus_quota: DEFAULT_CORPUS_QUOTA,
            upload_limit: DEFAULT_UPLOAD_LIMIT,
            max_uploads: DEFAULT_MAX_UPLOADS,
            upload_quota: DEFAULT_UPLOAD_QUOTA,
            notify_url: None,
            notify_timeout: crate::notify::DEFAULT_TIMEOUT,
            notify_retry_base: crate::notify::DEFAULT_RETRY_BASE,
            public_url: None,
            node_id: None,
            lease: crate::store::DEFAULT_LEASE,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            nats_url: None,
            nats_prefix: DEFAULT_NATS_PREFIX.to_owned(),
        }
    }
}

impl ServeConfig {
    /// Settings for a service on `addr` with its database at `database_url`, its files in
    /// `data_dir` and everything else at its default.
    pub fn new(addr: SocketAddr, database_url: &str, data_dir: PathBuf) -> Self {
        Self { addr, database_url: database_url.to_owned(), data_dir, ..Self::default() }
    }
}
