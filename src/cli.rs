//! The command line. Every setting is a flag or a `GRADSCOPE_*` environment variable; each
//! command's arguments become the library's plain settings.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use gradscope::config::{self, ServeConfig};
use gradscope::local::RunOptions;
use gradscope::worker::WorkerOptions;

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
    Serve(ServeArgs),
    /// Apply the database migrations and exit (serve also applies them at start-up).
    Migrate(DatabaseArgs),
    /// Ask a running service whether it is ready; exit 0 if it is.
    Healthcheck(HealthcheckArgs),
    /// Train one job from a spec file, here, with a progress bar and a per-layer report.
    Run(RunArgs),
    /// Train the one job the service sends on stdin, reporting on stdout (started by
    /// `serve` for each job; not for people).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database URL: `sqlite://PATH` or a plain file path (created when missing), or
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (an existing database, which several
    /// nodes may share); other schemes are refused.
    #[arg(long, env = "GRADSCOPE_DATABASE_URL", default_value = config::DEFAULT_DATABASE_URL)]
    pub database_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on. Port 0 picks a free port.
    #[arg(long, env = "GRADSCOPE_ADDR", default_value_t = config::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Folder for checkpoints and uploaded corpora.
    #[arg(long, env = "GRADSCOPE_DATA_DIR", default_value = config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// How many jobs may train at the same time. 0: none; the node serves the API, the
    /// dashboard and the streams and never claims a job (with several nodes on one
    /// PostgreSQL database, the others train).
    #[arg(long, env = "GRADSCOPE_MAX_JOBS", default_value_t = config::DEFAULT_MAX_JOBS)]
    pub max_jobs: u16,
    /// Threads LibTorch uses for CPU work in each job (default: the cores ÷ --max-jobs, at
    /// least 1).
    #[arg(long, env = "GRADSCOPE_TORCH_THREADS", value_parser = clap::value_parser!(i32).range(1..))]
    pub torch_threads: Option<i32>,
    /// GPUs jobs may use, one job per GPU, as CUDA_VISIBLE_DEVICES entries (comma-separated;
    /// default: every visible GPU). Jobs that need a GPU wait while all are busy.
    #[arg(long, env = "GRADSCOPE_GPUS", value_delimiter = ',')]
    pub gpus: Option<Vec<String>>,
    /// Address-space limit of each job's worker process, in bytes; a job that exceeds it
    /// fails alone (default: the machine's memory ÷ --max-jobs, at least --max-job-memory,
    /// plus 4 GiB and 256 MiB per torch thread that LibTorch reserves without using; 0: no
    /// limit). Not applied to CUDA jobs.
    #[arg(long, env = "GRADSCOPE_JOB_MEMORY")]
    pub job_memory: Option<u64>,
    /// Train jobs on threads of this process instead of one worker process each: no
    /// isolation (a LibTorch abort ends the service); for comparison.
    #[arg(long, env = "GRADSCOPE_IN_PROCESS")]
    pub in_process: bool,
    /// Seconds a worker process may take to load and check an uploaded TorchScript model,
    /// or to dry-run a job on one, before it is killed and the upload or job refused.
    #[arg(long, env = "GRADSCOPE_CHECK_TIMEOUT", default_value_t = config::DEFAULT_CHECK_TIMEOUT_SECS,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub check_timeout: u64,
    /// Serve the dashboard from this folder (e.g. the checkout's `static`) instead of the
    /// copy built into the binary: for developing the dashboard, whose edits then show on
    /// reload without a rebuild.
    #[arg(long, env = "GRADSCOPE_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,
    /// Origins allowed to call the API from a browser (comma-separated; `*` for any).
    /// None by default: the dashboard is served from the same origin.
    #[arg(long, env = "GRADSCOPE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Largest JSON request body, in bytes.
    #[arg(long, env = "GRADSCOPE_BODY_LIMIT", default_value_t = config::DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// Largest uploaded corpus, in bytes.
    #[arg(long, env = "GRADSCOPE_CORPUS_LIMIT", default_value_t = config::DEFAULT_CORPUS_LIMIT)]
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
    #[arg(long, env = "GRADSCOPE_MAX_QUEUED", default_value_t = config::DEFAULT_MAX_QUEUED)]
    pub max_queued: i64,
    /// Most jobs one experiment may expand to (cells × seeds); a larger grid gets 422.
    #[arg(long, env = "GRADSCOPE_MAX_EXPERIMENT_JOBS", default_value_t = config::DEFAULT_MAX_EXPERIMENT_JOBS,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub max_experiment_jobs: u64,
    /// Largest model a job may train, in parameters.
    #[arg(long, env = "GRADSCOPE_MAX_PARAMS", default_value_t = config::DEFAULT_MAX_PARAMS)]
    pub max_params: u64,
    /// Largest estimated activation memory of one training step, in bytes.
    #[arg(long, env = "GRADSCOPE_MAX_ACTIVATION_BYTES", default_value_t = config::DEFAULT_MAX_ACTIVATION_BYTES)]
    pub max_activation_bytes: u64,
    /// Most values one `/layer-stats` answer may hold (layers × statistics × points, a
    /// histogram counting as its 51 buckets).
    #[arg(long, env = "GRADSCOPE_MAX_ANSWER_VALUES", default_value_t = config::DEFAULT_MAX_ANSWER_VALUES)]
    pub max_answer_values: u64,
    /// Most values one `/layer-stats` query may read before thinning (held in memory
    /// while the extremes are found, 4 bytes each).
    #[arg(long, env = "GRADSCOPE_MAX_SCAN_VALUES", default_value_t = config::DEFAULT_MAX_SCAN_VALUES)]
    pub max_scan_values: u64,
    /// Largest estimated peak memory of one job, in bytes: weights, gradients, optimizer
    /// state, monitoring buffers, the task's data and the larger of a training step's and
    /// a validation pass's activations.
    #[arg(long, env = "GRADSCOPE_MAX_JOB_MEMORY", default_value_t = config::DEFAULT_MAX_JOB_MEMORY)]
    pub max_job_memory: u64,
    /// Largest estimated storage of one job, in bytes: its per-step records, per-layer
    /// statistics and histograms, and events (checkpoints follow from the model's size,
    /// which `--max-params` bounds).
    #[arg(long, env = "GRADSCOPE_MAX_JOB_DISK", default_value_t = config::DEFAULT_MAX_JOB_DISK)]
    pub max_job_disk: u64,
    /// Recent steps a client joining a running job's stream receives first.
    #[arg(long, env = "GRADSCOPE_STREAM_BACKLOG", default_value_t = config::DEFAULT_STREAM_BACKLOG)]
    pub stream_backlog: usize,
    /// Most WebSocket clients per job.
    #[arg(long, env = "GRADSCOPE_WS_MAX_PER_JOB", default_value_t = config::DEFAULT_WS_MAX_PER_JOB)]
    pub ws_max_per_job: usize,
    /// Most WebSocket clients in total.
    #[arg(long, env = "GRADSCOPE_WS_MAX_TOTAL", default_value_t = config::DEFAULT_WS_MAX_TOTAL)]
    pub ws_max_total: usize,
    /// Seconds a WebSocket may stay silent (no pong, no message) before it is closed.
    #[arg(long, env = "GRADSCOPE_WS_IDLE_TIMEOUT", default_value_t = config::DEFAULT_WS_IDLE_TIMEOUT_SECS)]
    pub ws_idle_timeout_secs: u64,
    /// How much lower the CPU priority of the threads that serve WebSocket streams is than
    /// the rest of the service's and the training's (a niceness, 0–19; 0, the default,
    /// serves them at the service's own priority). Above 0, dashboards take the cores the
    /// training leaves, and wait for them: later steps, for a little more training speed.
    #[arg(long, env = "GRADSCOPE_STREAM_NICE", default_value_t = config::DEFAULT_STREAM_NICE,
        value_parser = clap::value_parser!(i32).range(0..=19))]
    pub stream_nice: i32,
    /// Seconds before a request (other than a stream) is answered 408.
    #[arg(long, env = "GRADSCOPE_REQUEST_TIMEOUT", default_value_t = config::DEFAULT_REQUEST_TIMEOUT_SECS)]
    pub request_timeout_secs: u64,
    /// Host names (besides IP addresses and `localhost`) the service answers to when no
    /// API token is set (comma-separated); other `Host` headers get 403, which stops DNS
    /// rebinding.
    #[arg(long, env = "GRADSCOPE_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Most uploaded corpora kept at once; more uploads get 429 until some are deleted.
    #[arg(long, env = "GRADSCOPE_MAX_CORPORA", default_value_t = config::DEFAULT_MAX_CORPORA,
        value_parser = clap::value_parser!(i64).range(0..))]
    pub max_corpora: i64,
    /// Most bytes all uploaded corpora may take together; more uploads get 429.
    #[arg(long, env = "GRADSCOPE_CORPUS_QUOTA", default_value_t = config::DEFAULT_CORPUS_QUOTA,
        value_parser = clap::value_parser!(i64).range(0..))]
    pub corpus_quota: i64,
    /// Largest uploaded TorchScript model or safetensors data set, in bytes.
    #[arg(long, env = "GRADSCOPE_UPLOAD_LIMIT", default_value_t = config::DEFAULT_UPLOAD_LIMIT)]
    pub upload_limit: usize,
    /// Most uploaded models kept at once, and most data sets; more uploads get 429.
    #[arg(long, env = "GRADSCOPE_MAX_UPLOADS", default_value_t = config::DEFAULT_MAX_UPLOADS,
        value_parser = clap::value_parser!(i64).range(0..))]
    pub max_uploads: i64,
    /// Most bytes all uploaded models may take together, and all data sets; more get 429.
    #[arg(long, env = "GRADSCOPE_UPLOAD_QUOTA", default_value_t = config::DEFAULT_UPLOAD_QUOTA,
        value_parser = clap::value_parser!(i64).range(0..))]
    pub upload_quota: i64,
    /// A webhook (`http` or `https` URL, no credentials) that receives a JSON POST,
    /// Slack-compatible, when any job ends and when its diagnosis status changes.
    #[arg(long, env = "GRADSCOPE_NOTIFY_URL", value_parser = parse_notify_url, hide_env_values = true)]
    pub notify_url: Option<String>,
    /// Seconds one try of a notification may take; a failed one is tried again after 1,
    /// 2 and 4 seconds.
    #[arg(long, env = "GRADSCOPE_NOTIFY_TIMEOUT", default_value_t = gradscope::notify::DEFAULT_TIMEOUT.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=300))]
    pub notify_timeout: u64,
    /// The dashboard's address as people reach it (`https://gradscope.example.com`):
    /// notifications link to the job's page there. Unset, the links are paths.
    #[arg(long, env = "GRADSCOPE_PUBLIC_URL", value_parser = parse_notify_url)]
    pub public_url: Option<String>,
    /// This node's id among several sharing one PostgreSQL database: letters, digits,
    /// `-`, `.`, `_` (default: the host's name and a random suffix, new for each start).
    #[arg(long, env = "GRADSCOPE_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,
    /// Seconds a node holds a running job without renewing its lease (it renews every
    /// third of it); when a node dies, another takes its jobs over after this long.
    #[arg(long, env = "GRADSCOPE_LEASE_SECS", default_value_t = gradscope::store::DEFAULT_LEASE.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_secs: u64,
    /// How many times a job may start: a job whose node was lost is resumed on another
    /// node while it has started fewer times (1: never; it stays interrupted).
    #[arg(long, env = "GRADSCOPE_MAX_ATTEMPTS", default_value_t = config::DEFAULT_MAX_ATTEMPTS,
        value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// NATS server with JetStream (`nats://host:4222`) that carries live streams between
    /// nodes: this node publishes its jobs' steps, events and statuses there, and a client
    /// asking it for a job that runs on another node follows them from there. Unset: each
    /// node streams only its own jobs. The service starts while NATS is down and keeps
    /// trying; meanwhile the messages for other nodes are dropped and counted.
    #[arg(long, env = "GRADSCOPE_NATS_URL")]
    pub nats_url: Option<String>,
    /// First token of the NATS subjects (`<prefix>.live.<job>.<run>`); the stream is
    /// `<prefix>-live`. Nodes that share a database must share it.
    #[arg(long, env = "GRADSCOPE_NATS_PREFIX", default_value = config::DEFAULT_NATS_PREFIX,
        value_parser = parse_nats_prefix)]
    pub nats_prefix: String,
}

fn parse_node_id(id: &str) -> Result<String, String> {
    gradscope::store::check_node_id(id).map(|()| id.to_owned())
}

fn parse_nats_prefix(prefix: &str) -> Result<String, String> {
    config::check_nats_prefix(prefix).map(|()| prefix.to_owned())
}

/// An `http` or `https` URL without credentials.
fn parse_notify_url(url: &str) -> Result<String, String> {
    gradscope::spec::notify::check_url(url).map(|_| url.to_owned())
}

impl From<ServeArgs> for ServeConfig {
    fn from(args: ServeArgs) -> Self {
        Self {
            addr: args.addr,
            database_url: args.database.database_url,
            data_dir: args.data_dir,
            max_jobs: args.max_jobs,
            torch_threads: args.torch_threads,
            gpus: args.gpus,
            job_memory: args.job_memory,
            in_process: args.in_process,
            worker_binary: None,
            worker_env: Vec::new(),
            check_timeout: std::time::Duration::from_secs(args.check_timeout),
            static_dir: args.static_dir,
            cors_origins: args.cors_origins,
            body_limit: args.body_limit,
            corpus_limit: args.corpus_limit,
            api_token: args.api_token,
            metrics_token: args.metrics_token,
            max_queued: args.max_queued,
            max_experiment_jobs: args.max_experiment_jobs,
            max_params: args.max_params,
            max_activation_bytes: args.max_activation_bytes,
            max_answer_values: args.max_answer_values,
            max_scan_values: args.max_scan_values,
            max_job_memory: args.max_job_memory,
            max_job_disk: args.max_job_disk,
            stream_backlog: args.stream_backlog,
            ws_max_per_job: args.ws_max_per_job,
            ws_max_total: args.ws_max_total,
            ws_idle_timeout_secs: args.ws_idle_timeout_secs,
            stream_nice: args.stream_nice,
            request_timeout_secs: args.request_timeout_secs,
            allowed_hosts: args.allowed_hosts,
            max_corpora: args.max_corpora,
            corpus_quota: args.corpus_quota,
            upload_limit: args.upload_limit,
            max_uploads: args.max_uploads,
            upload_quota: args.upload_quota,
            notify_url: args.notify_url,
            notify_timeout: std::time::Duration::from_secs(args.notify_timeout),
            notify_retry_base: gradscope::notify::DEFAULT_RETRY_BASE,
            public_url: args.public_url,
            node_id: args.node_id,
            lease: std::time::Duration::from_secs(args.lease_secs),
            max_attempts: args.max_attempts,
            nats_url: args.nats_url,
            nats_prefix: args.nats_prefix,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// Base URL of the service.
    #[arg(long, env = "GRADSCOPE_URL", default_value = config::DEFAULT_URL)]
    pub url: String,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The job spec, as JSON (the body `POST /api/v1/jobs` takes).
    pub spec: PathBuf,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Folder for checkpoints and uploaded corpora.
    #[arg(long, env = "GRADSCOPE_DATA_DIR", default_value = config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Threads LibTorch uses for CPU work.
    #[arg(long, env = "GRADSCOPE_TORCH_THREADS", value_parser = clap::value_parser!(i32).range(1..))]
    pub torch_threads: Option<i32>,
    /// No progress bar (for logs and CI).
    #[arg(long)]
    pub quiet: bool,
}

impl From<RunArgs> for RunOptions {
    fn from(args: RunArgs) -> Self {
        Self {
            spec: args.spec,
            database_url: args.database.database_url,
            data_dir: args.data_dir,
            torch_threads: args.torch_threads,
            quiet: args.quiet,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Threads LibTorch uses for CPU work.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub torch_threads: Option<i32>,
    /// Address-space limit, in bytes.
    #[arg(long)]
    pub memory: Option<u64>,
}

impl From<WorkerArgs> for WorkerOptions {
    fn from(args: WorkerArgs) -> Self {
        Self { torch_threads: args.torch_threads, memory: args.memory }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags' defaults are the library's: `serve` with no flags (and no `GRADSCOPE_*`
    /// variables) configures exactly [`ServeConfig::default`].
    #[test]
    fn serve_defaults_are_the_library_defaults() {
        #[derive(Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        let parsed = Serve::try_parse_from(["serve"]).expect("the defaults parse").args;
        assert_eq!(ServeConfig::from(parsed), ServeConfig::default());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
