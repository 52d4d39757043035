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

use crate::api::stream::WsLimits;
use crate::api::{self, AppState, Limits};
use crate::config::ServeConfig;
use crate::jobs::Scheduler;
use crate::metrics::Metrics;
use crate::store::Store;

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    store: Store,
    scheduler: Scheduler,
    /// Cancelled on shutdown: stops the scheduler and every running job.
    shutdown: CancellationToken,
}

impl Application {
    pub async fn build(config: ServeConfig) -> anyhow::Result<Self> {
        if let Some(threads) = config.torch_threads {
            tch::set_num_threads(threads);
        }
        let store = Store::connect(&config.database.database_url).await?;
        store.migrate().await?;
        let interrupted = store.interrupt_running_jobs().await?;
        if interrupted > 0 {
            tracing::warn!("{interrupted} job(s) were running when the service last stopped: marked interrupted");
        }
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("failed to create data folder {}", config.data_dir.display()))?;

        let shutdown = CancellationToken::new();
        let max_jobs = usize::from(config.max_jobs);
        let metrics = Arc::new(Metrics::new()?);
        let scheduler = Scheduler::start(
            store.clone(),
            config.data_dir.clone(),
            max_jobs,
            config.stream_backlog,
            metrics.clone(),
            shutdown.clone(),
        );
        let ws = Arc::new(WsLimits {
            max_total: config.ws_max_total,
            max_per_job: config.ws_max_per_job,
            idle_timeout: Duration::from_secs(config.ws_idle_timeout_secs),
            clients: AtomicUsize::new(0),
        });
        let limits = Limits {
            max_queued: config.max_queued,
            max_params: config.max_params,
            max_activation_bytes: config.max_activation_bytes,
            max_job_memory: config.max_job_memory,
            max_job_disk: config.max_job_disk,
        };
        let state = AppState { store: store.clone(), scheduler: scheduler.clone(), ws, metrics, limits };
        let router = api::router(state, &config);
        let listener =
            TcpListener::bind(config.addr).await.with_context(|| format!("failed to listen on {}", config.addr))?;
        match (config.api_token.is_empty(), config.addr.ip().is_loopback()) {
            (true, false) => tracing::warn!(
                "listening on {} with no API token: anyone who can reach it can submit jobs (set GRADSCOPE_API_TOKEN)",
                config.addr
            ),
            (true, true) => tracing::info!("no API token set: the API is open to this machine only (loopback)"),
            (false, _) => tracing::info!("API tokens required on /api"),
        }
        tracing::info!(
            addr = %listener.local_addr()?,
            database = %config.database.database_url,
            cuda = tch::Cuda::is_available(),
            "gradscope listening"
        );
        Ok(Self { listener, router, store, scheduler, shutdown })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
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
        self.store.close().await;
        tracing::info!("gradscope stopped");
        served.context("server error")
    }
}
