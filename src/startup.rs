//! Start-up that tests can drive: [`Application::build`] opens the store, applies the
//! migrations, recovers from a crash, starts the scheduler and binds the listener (port 0
//! picks a free one); [`Application::run_until`] serves until a shutdown future resolves.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::stream::{StreamRuntime, WsLimits};
use crate::api::{self, AppState, ReadLimits};
use crate::config::{self, ServeConfig};
use crate::jobs::relay::{Relay, RelaySettings};
use crate::jobs::{CorpusLimits, DataDir, Execution, JobLimits, Jobs, NodeSettings, Scheduler, WorkerSettings};
use crate::metrics::Metrics;
use crate::notify::{Notifier, NotifySettings};
use crate::spec::notify::check_url;
use crate::store::Store;

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    store: Store,
    scheduler: Scheduler,
    /// Cancelled on shutdown: stops the scheduler and every running job.
    shutdown: CancellationToken,
    /// The API token made up at start-up for a service listening beyond loopback with
    /// none configured.
    generated_token: Option<String>,
    /// Serves the WebSocket streams; stops when the application is dropped.
    streams: StreamRuntime,
}

impl Application {
    pub async fn build(mut config: ServeConfig) -> anyhow::Result<Self> {
        let max_jobs = usize::from(config.max_jobs);
        if let Some(dir) = &config.static_dir {
            anyhow::ensure!(dir.is_dir(), "--static-dir {}: not a folder", dir.display());
        }
        let execution = execution(&config)?;
        let node_id = config.node_id.clone().unwrap_or_else(crate::store::default_node_id);
        let store = Store::connect(&config.database_url).await?.for_node(&node_id, config.lease);
        store.migrate().await?;
        // This node's own jobs only: on PostgreSQL other nodes' are theirs, or taken over
        // from them when their lease expires.
        let interrupted = store.take_over_own().await?.len();
        if interrupted > 0 {
            tracing::warn!("{interrupted} job(s) were running when the service last stopped: marked interrupted");
        }
        let data = DataDir::new(&config.data_dir);
        data.create()?;

        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::new()?);
        let notify = NotifySettings {
            url: config
                .notify_url
                .as_deref()
                .map(check_url)
                .transpose()
                .map_err(|message| anyhow::anyhow!("--notify-url: {message}"))?,
            public_url: config.public_url.clone(),
            timeout: config.notify_timeout,
            retry_base: config.notify_retry_base,
        };
        let notifier = Notifier::start(notify, metrics.clone())?;
        let scheduler = Scheduler::start(
            store.clone(),
            data.clone(),
            (max_jobs, execution),
            config.stream_backlog,
            (metrics.clone(), notifier),
            shutdown.clone(),
        );
        let listener =
            TcpListener::bind(config.addr).await.with_context(|| format!("failed to listen on {}", config.addr))?;
        let node = NodeSettings {
            addr: listener.local_addr().ok().map(|a| a.to_string()),
            max_attempts: i64::from(config.max_attempts),
        };
        store.heartbeat(node.addr.as_deref()).await?;
        crate::jobs::nodes::start(&scheduler, node);
        if let Some(url) = &config.nats_url {
            let settings =
                RelaySettings { url: url.clone(), prefix: config.nats_prefix.clone(), backlog: config.stream_backlog };
            scheduler.relay_to(Relay::start(settings, metrics.clone(), shutdown.clone()).await?);
        }
        let streams = StreamRuntime::start(config.stream_nice)?;
        let ws = Arc::new(WsLimits {
            max_total: config.ws_max_total,
            max_per_job: config.ws_max_per_job,
            idle_timeout: Duration::from_secs(config.ws_idle_timeout_secs),
            clients: AtomicUsize::new(0),
            runtime: streams.handle(),
        });
        let limits = JobLimits {
            max_queued: config.max_queued,
            max_params: config.max_params,
            max_activation_bytes: config.max_activation_bytes,
            max_job_memory: config.max_job_memory,
            max_job_disk: config.max_job_disk,
            max_experiment_jobs: config.max_experiment_jobs,
        };
        let corpora = CorpusLimits { max_count: config.max_corpora, quota_bytes: config.corpus_quota };
        let uploads = CorpusLimits { max_count: config.max_uploads, quota_bytes: config.upload_quota };
        let jobs = Jobs::new(store.clone(), scheduler.clone(), data, metrics.clone(), limits, corpora)
            .with_upload_limits(uploads, uploads);
        let reads = ReadLimits { max_answer_values: config.max_answer_values, max_scan_values: config.max_scan_values };
        let state = AppState {
            store: store.clone(),
            scheduler: scheduler.clone(),
            jobs,
            ws,
            metrics,
            reads,
            heavy_reads: Arc::new(tokio::sync::Semaphore::new(api::HEAVY_READS)),
            uploads: Arc::new(tokio::sync::Semaphore::new(api::UPLOADS)),
        };
        config.api_token.retain(|t| !t.trim().is_empty());
        // Beyond loopback, an open API would let anyone who can reach the port train on
        // this machine: a container's 0.0.0.0 would do that by default.
        let generated_token = if config.api_token.is_empty() && !config.addr.ip().is_loopback() {
            let token = random_token()?;
            announce_token(config.addr, &token);
            config.api_token.push(token.clone());
            Some(token)
        } else {
            None
        };
        if generated_token.is_none() {
            if config.api_token.is_empty() {
                tracing::info!("no API token set: the API is open to this machine only (loopback, Host checked)");
            } else {
                tracing::info!("API tokens required on /api");
            }
        }
        let router = api::router(state, &config);
        tracing::info!(
            addr = %listener.local_addr()?,
            database = %crate::store::describe_url(&config.database_url),
            node = %node_id,
            cuda = tch::Cuda::is_available(),
            "gradscope listening"
        );
        Ok(Self { listener, router, store, scheduler, shutdown, generated_token, streams })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The API token made up at start-up, if the service listens beyond loopback and none
    /// was configured.
    pub fn generated_token(&self) -> Option<&str> {
        self.generated_token.as_deref()
    }

    /// Serves until `signal` resolves, then stops the running jobs (they end
    /// `interrupted`), finishes the requests in flight and closes the store.
    pub async fn run_until(self, signal: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let token = self.shutdown.clone();
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move {
                signal.await;
                token.cancel();
            })
            .await;
        self.shutdown.cancel();
        self.scheduler.wait().await;
        if let Some(relay) = self.scheduler.relay() {
            relay.flush(Duration::from_secs(2)).await;
        }
        self.store.close().await;
        // Last: the sockets closed when the shutdown was signalled.
        drop(self.streams);
        tracing::info!("gradscope stopped");
        served.context("server error")
    }
}

/// Where jobs train: worker processes with their threads, memory limit and GPUs, or
/// threads of this process (`in_process`).
fn execution(config: &ServeConfig) -> anyhow::Result<Execution> {
    if config.in_process {
        if let Some(threads) = config.torch_threads {
            tch::set_num_threads(threads);
        }
        tracing::info!("jobs train in this process");
        return Ok(Execution::InProcess);
    }
    let binary = match &config.worker_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("failed to find this executable, which trains the jobs")?,
    };
    let torch_threads = config.torch_threads.unwrap_or_else(|| config::default_torch_threads(config.max_jobs));
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let threads_at_once =
        usize::try_from(torch_threads).unwrap_or(usize::MAX).saturating_mul(usize::from(config.max_jobs.max(1)));
    let settings = WorkerSettings {
        binary,
        torch_threads,
        passive_wait: threads_at_once > cores,
        memory: match config.job_memory {
            Some(0) => None,
            Some(bytes) => Some(bytes),
            None => config::default_job_memory(config.max_jobs, torch_threads, config.max_job_memory),
        },
        gpus: config.gpus.clone().unwrap_or_else(visible_gpus),
        env: config.worker_env.clone(),
        check_timeout: config.check_timeout,
    };
    tracing::info!(
        torch_threads = settings.torch_threads,
        passive_wait = settings.passive_wait,
        memory = settings.memory,
        gpus = ?settings.gpus,
        "jobs train in worker processes"
    );
    Ok(Execution::Workers(settings))
}

/// Every GPU this process may use, as `CUDA_VISIBLE_DEVICES` entries: the variable's own
/// entries when it is set, else each device CUDA counts.
fn visible_gpus() -> Vec<String> {
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(list) => list.split(',').map(str::trim).filter(|g| !g.is_empty()).map(str::to_owned).collect(),
        Err(_) => (0..tch::Cuda::device_count()).map(|i| i.to_string()).collect(),
    }
}

/// Bytes of randomness in a generated API token (256 bits, as hex).
const GENERATED_TOKEN_BYTES: usize = 32;

/// A fresh API token from the operating system's random source.
fn random_token() -> anyhow::Result<String> {
    use rand::TryRngCore;
    let mut bytes = [0u8; GENERATED_TOKEN_BYTES];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).context("failed to read the operating system's random source")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Tells the operator the generated token, once, on stderr: not through the log, whose
/// lines may be shipped and kept elsewhere.
fn announce_token(addr: std::net::SocketAddr, token: &str) {
    eprintln!(
        "gradscope: listening on {addr} beyond loopback with no API token, so this run requires a generated one:\n\
         \n    {token}\n\n\
         Send it as `Authorization: Bearer <token>` (the dashboard asks for it). Set GRADSCOPE_API_TOKEN \
         (or --api-token) to choose one that survives restarts."
    );
}
