//! The HTTP surface: axum routers, one module per resource, handlers named by verb.
//!
//! - [`jobs`] — `/api/v1/jobs` and everything under a job.
//! - [`experiments`] — `/api/v1/experiments`: grids of specs × seeds and their results.
//! - [`stats`] — per-layer statistics and events of a job.
//! - [`probes`] — what a job measured besides the per-layer statistics (spectral radius,
//!   temporal gradient profile, forward signal).
//! - [`stream`] — the WebSocket feed of a job.
//! - [`protocol`] — the stream's messages as types, and their JSON Schema.
//! - [`corpora`] — `/api/v1/corpora`.
//! - [`uploads`] — `/api/v1/models` and `/api/v1/datasets`.
//! - [`presets`] — `/api/v1/presets`.
//! - [`dashboard`] — the dashboard's files, built into the binary.
//! - [`health`] — `/healthz`, `/readyz`, `/metrics`.
//! - [`openapi`] — the generated OpenAPI document.
//! - [`auth`] — optional bearer tokens for `/api` and `/metrics`.
//! - [`guard`] — the `Host` check (DNS rebinding) and the cross-site request check.
//! - [`extract`] — extractors that reject bad input with [`ApiError`].

pub mod auth;
pub mod corpora;
mod dashboard;
mod error;
pub mod experiments;
pub mod extract;
pub mod guard;
pub mod health;
pub mod jobs;
pub mod openapi;
pub mod presets;
pub mod probes;
pub mod protocol;
pub mod stats;
pub mod stream;
pub mod uploads;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::routing::{delete, get, post};
use axum::{Router, middleware};
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ErrorBody, ErrorDetail};

use self::auth::Tokens;
use self::guard::Guard;
use self::stream::WsLimits;
use crate::config::ServeConfig;
use crate::jobs::{Jobs, Scheduler};
use crate::metrics::{Metrics, track_http};
use crate::store::Store;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    /// Reads: jobs, their histories, corpora.
    pub(crate) store: Store,
    /// The live feeds of running jobs.
    pub(crate) scheduler: Scheduler,
    /// Every request that changes jobs or corpora.
    pub(crate) jobs: Jobs,
    /// WebSocket limits and client count.
    pub(crate) ws: Arc<WsLimits>,
    pub(crate) metrics: Arc<Metrics>,
    /// How much one `/layer-stats` query may read and answer.
    pub(crate) reads: ReadLimits,
    /// Held by each long-history read (`/steps`, `/layer-stats`) while it runs, so a burst
    /// of them queues instead of holding many large answers in memory at once.
    pub(crate) heavy_reads: Arc<tokio::sync::Semaphore>,
    /// Held by each corpus upload while its body is buffered and checked, so a burst of
    /// uploads holds at most [`UPLOADS`] bodies in memory.
    pub(crate) uploads: Arc<tokio::sync::Semaphore>,
}

/// Corpus uploads whose bodies may be in memory at once (each up to `--corpus-limit`).
pub(crate) const UPLOADS: usize = 4;

/// Long-history reads that may run at once; more wait their turn.
pub(crate) const HEAVY_READS: usize = 2;

/// Bounds on one `/layer-stats` query.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadLimits {
    /// Most values one answer may hold.
    pub(crate) max_answer_values: u64,
    /// Most values one query may read before thinning.
    pub(crate) max_scan_values: u64,
}

/// The whole application router: API, probes, and the dashboard's static files at `/`.
pub(crate) fn router(state: AppState, config: &ServeConfig) -> Router {
    let api_tokens = Tokens::new(&config.api_token);
    let api = Router::new()
        .route("/jobs", post(jobs::create).get(jobs::list))
        .route("/jobs/{id}", get(jobs::get).delete(jobs::delete))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/resume", post(jobs::resume))
        .route("/jobs/{id}/layers", get(jobs::layers))
        .route("/jobs/{id}/steps", get(jobs::steps))
        .route("/jobs/{id}/layer-stats", get(stats::layers))
        .route("/jobs/{id}/events", get(stats::events))
        .route("/jobs/{id}/spectral", get(probes::spectral))
        .route("/jobs/{id}/time-profile", get(probes::time_profile))
        .route("/jobs/{id}/signal", get(probes::signal))
        .route("/jobs/{id}/stream", get(stream::subscribe))
        .route("/jobs/{id}/checkpoint", get(jobs::checkpoint))
        .route("/experiments", post(experiments::create).get(experiments::list))
        .route("/experiments/{id}", get(experiments::get).delete(experiments::delete))
        .route("/experiments/{id}/cancel", post(experiments::cancel))
        .route("/experiments/{id}/results", get(experiments::results))
        .route("/experiments/{id}/results.csv", get(experiments::results_csv))
        .route("/corpora", post(corpora::create).layer(DefaultBodyLimit::max(config.corpus_limit)).get(corpora::list))
        .route("/corpora/{id}", delete(corpora::delete))
        .route(
            "/models",
            post(uploads::create_model).layer(DefaultBodyLimit::max(config.upload_limit)).get(uploads::list_models),
        )
        .route("/models/{id}", get(uploads::get_model).delete(uploads::delete_model))
        .route(
            "/datasets",
            post(uploads::create_dataset).layer(DefaultBodyLimit::max(config.upload_limit)).get(uploads::list_datasets),
        )
        .route("/datasets/{id}", get(uploads::get_dataset).delete(uploads::delete_dataset))
        .route("/presets", get(presets::list))
        .route("/openapi.json", get(openapi::document))
        .route("/stream-schema.json", get(protocol::document))
        .route_layer(middleware::from_fn_with_state(state.metrics.clone(), track_http))
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(middleware::from_fn_with_state(api_tokens.clone(), auth::require))
        .layer(DefaultBodyLimit::max(config.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(config.request_timeout_secs),
        ));
    let router = Router::new()
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route(
            "/metrics",
            get(health::metrics)
                .layer(middleware::from_fn_with_state(Tokens::new(&config.metrics_token), auth::require)),
        )
        .route_layer(middleware::from_fn_with_state(state.metrics.clone(), track_http))
        .nest("/api/v1", api);
    // The dashboard: from a folder while developing it, else the copy built in.
    let router = match &config.static_dir {
        Some(dir) => router.fallback_service(ServeDir::new(dir)),
        None => router.fallback(dashboard::serve),
    };
    router
        .layer(middleware::from_fn(no_store_for_api))
        .layer(CompressionLayer::new())
        .layer(middleware::from_fn_with_state(
            Guard::new(api_tokens.is_open(), &config.allowed_hosts, &config.cors_origins),
            guard::check,
        ))
        .layer(cors(&config.cors_origins))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::extract::Request| {
            // As tower-http's default span, with any token in the query blanked out.
            tracing::debug_span!(
                "request",
                method = %req.method(),
                uri = %auth::loggable_uri(req.uri()),
                version = ?req.version(),
            )
        }))
        .with_state(state)
}

/// API answers change from one moment to the next; browsers must not cache them.
async fn no_store_for_api(req: axum::extract::Request, next: middleware::Next) -> axum::response::Response {
    let is_api = req.uri().path().starts_with("/api/");
    let mut response = next.run(req).await;
    if is_api {
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
}
