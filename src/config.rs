//! The command line. Every setting is a flag or a `GRADSCOPE_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Default size limit of a JSON request body.
pub const DEFAULT_BODY_LIMIT: usize = 256 * 1024;
/// Default size limit of an uploaded corpus.
pub const DEFAULT_CORPUS_LIMIT: usize = 32 * 1024 * 1024;
/// Default number of uploaded corpora kept at once.
pub const DEFAULT_MAX_CORPORA: i64 = 100;
/// Default bytes all uploaded corpora may take together.
pub const DEFAULT_CORPUS_QUOTA: i64 = 1 << 30;
/// Default memory budget of one job: half of a 16 GiB machine, leaving the rest to the
/// service, the operating system and a second job; GPU jobs of this size fit any card
/// with 16 GiB. Raise it on larger machines.
pub const DEFAULT_MAX_JOB_MEMORY: u64 = 8 << 30;
/// Default storage budget of one job: a 100 000-step job of a 100-layer model with every
/// statistic and histogram recorded at every 10th step stores about 0.25 GiB; ten jobs
/// at the limit fill a 20 GiB disk, which an operator notices before it is full.
pub const DEFAULT_MAX_JOB_DISK: u64 = 2 << 30;

#[derive(Debug, Parser)]
#[command(name = "gradscope", version, about = "Training monitor: per-layer gradient statistics for LibTorch jobs")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter, e.g. `info` or `gradscope=debug,tower_http=debug` (default: `info` for
    /// serve, `warn` for the other commands).
    #[arg(long, global = true, env = "GRADSCOPE_LOG")]
    pub log: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "GRADSCOPE_LOG_JSON")]
    pub log_json: bool,
}

// Parsed once at start-up: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service and the job scheduler.
    Serve(ServeConfig),
    /// Apply the database migrations and exit (serve also applies them at start-up).
    Migrate(DatabaseArgs),
    /// Ask a running service whether it is ready; exit 0 if it is.
    Healthcheck(HealthcheckArgs),
    /// Train one job from a spec file, here, with a progress bar and a per-layer report.
    Run(crate::local::RunArgs),
    /// Benchmarks: step-time cost of monitoring, and streaming to many subscribers.
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database URL. SQLite files are created when missing.
    #[arg(long, env = "GRADSCOPE_DATABASE_URL", default_value = "sqlite://./data/gradscope.db")]
    pub database_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on. Port 0 picks a free port.
    #[arg(long, env = "GRADSCOPE_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Folder for checkpoints and uploaded corpora.
    #[arg(long, env = "GRADSCOPE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// How many jobs may train at the same time.
    #[arg(long, env = "GRADSCOPE_MAX_JOBS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_jobs: u16,
    /// Threads LibTorch uses for CPU work (default: LibTorch's own choice, one per core).
    #[arg(long, env = "GRADSCOPE_TORCH_THREADS", value_parser = clap::value_parser!(i32).range(1..))]
    pub torch_threads: Option<i32>,
    /// Folder of the dashboard's static files, served at `/`.
    #[arg(long, env = "GRADSCOPE_STATIC_DIR", default_value = "static")]
    pub static_dir: PathBuf,
    /// Origins allowed to call the API from a browser (comma-separated; `*` for any).
    /// None by default: the dashboard is served from the same origin.
    #[arg(long, env = "GRADSCOPE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Largest JSON request body, in bytes.
    #[arg(long, env = "GRADSCOPE_BODY_LIMIT", default_value_t = DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// Largest uploaded corpus, in bytes.
    #[arg(long, env = "GRADSCOPE_CORPUS_LIMIT", default_value_t = DEFAULT_CORPUS_LIMIT)]
    pub corpus_limit: usize,
    /// Tokens that grant access to `/api` (comma-separated). None: on loopback the API is
    /// open (to requests naming an IP address, `localhost` or `--allowed-hosts`); beyond
    /// loopback a token is made up at start-up and printed on stderr.
    #[arg(long, env = "GRADSCOPE_API_TOKEN", value_delimiter = ',', hide_env_values = true)]
    pub api_token: Vec<String>,
    /// Tokens that grant access to `/metrics` (comma-separated). None: open.
    #[arg(long, env = "GRADSCOPE_METRICS_TOKEN", value_delimiter = ',', hide_env_values = true)]
    pub metrics_token: Vec<String>,
    /// Most jobs waiting in the queue; more submissions get 429.
    #[arg(long, env = "GRADSCOPE_MAX_QUEUED", default_value_t = 100)]
    pub max_queued: i64,
    /// Largest model a job may train, in parameters.
    #[arg(long, env = "GRADSCOPE_MAX_PARAMS", default_value_t = 200_000_000)]
    pub max_params: u64,
    /// Largest estimated activation memory of one training step, in bytes.
    #[arg(long, env = "GRADSCOPE_MAX_ACTIVATION_BYTES", default_value_t = 8 << 30)]
    pub max_activation_bytes: u64,
    /// Most values one `/layer-stats` answer may hold (layers × statistics × points, a
    /// histogram counting as its 51 buckets).
    #[arg(long, env = "GRADSCOPE_MAX_ANSWER_VALUES", default_value_t = crate::api::stats::MAX_RESPONSE_VALUES)]
    pub max_answer_values: u64,
    /// Most values one `/layer-stats` query may read before thinning (held in memory
    /// while the extremes are found, 4 bytes each).
    #[arg(long, env = "GRADSCOPE_MAX_SCAN_VALUES", default_value_t = crate::api::stats::MAX_SCANNED_VALUES)]
    pub max_scan_values: u64,
    /// Largest estimated peak memory of one job, in bytes: weights, gradients, optimizer
    /// state, monitoring buffers, the task's data and the larger of a training step's and
    /// a validation pass's activations.
    #[arg(long, env = "GRADSCOPE_MAX_JOB_MEMORY", default_value_t = DEFAULT_MAX_JOB_MEMORY)]
    pub max_job_memory: u64,
    /// Largest estimated storage of one job, in bytes: its per-step records, per-layer
    /// statistics and histograms, and events (checkpoints follow from the model's size,
    /// which `--max-params` bounds).
    #[arg(long, env = "GRADSCOPE_MAX_JOB_DISK", default_value_t = DEFAULT_MAX_JOB_DISK)]
    pub max_job_disk: u64,
    /// Recent steps a client joining a running job's stream receives first.
    #[arg(long, env = "GRADSCOPE_STREAM_BACKLOG", default_value_t = crate::jobs::live::DEFAULT_RING)]
    pub stream_backlog: usize,
    /// Most WebSocket clients per job.
    #[arg(long, env = "GRADSCOPE_WS_MAX_PER_JOB", default_value_t = 1000)]
    pub ws_max_per_job: usize,
    /// Most WebSocket clients in total.
    #[arg(long, env = "GRADSCOPE_WS_MAX_TOTAL", default_value_t = 4000)]
    pub ws_max_total: usize,
    /// Seconds a WebSocket may stay silent (no pong, no message) before it is closed.
    #[arg(long, env = "GRADSCOPE_WS_IDLE_TIMEOUT", default_value_t = 60)]
    pub ws_idle_timeout_secs: u64,
    /// Seconds before a request (other than a stream) is answered 408.
    #[arg(long, env = "GRADSCOPE_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Host names (besides IP addresses and `localhost`) the service answers to when no
    /// API token is set (comma-separated); other `Host` headers get 403, which stops DNS
    /// rebinding.
    #[arg(long, env = "GRADSCOPE_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Most uploaded corpora kept at once; more uploads get 429 until some are deleted.
    #[arg(long, env = "GRADSCOPE_MAX_CORPORA", default_value_t = DEFAULT_MAX_CORPORA,
        value_parser = clap::value_parser!(i64).range(0..))]
    pub max_corpora: i64,
    /// Most bytes all uploaded corpora may take together; more uploads get 429.
    #[arg(long, env = "GRADSCOPE_CORPUS_QUOTA", default_value_t = DEFAULT_CORPUS_QUOTA,
        value_parser = clap::value_parser!(i64).range(0..))]
    pub corpus_quota: i64,
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// Base URL of the service.
    #[arg(long, env = "GRADSCOPE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
}

impl ServeConfig {
    /// Settings for a service on `addr` with its database at `database_url` and everything
    /// else as the command line would default it (tests and embedders start here).
    pub fn new(addr: SocketAddr, database_url: &str, data_dir: PathBuf) -> Self {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            config: ServeConfig,
        }
        let mut config = Defaults::try_parse_from(["serve"]).expect("the defaults parse").config;
        config.addr = addr;
        config.database.database_url = database_url.to_owned();
        config.data_dir = data_dir;
        config
    }
}
