//! Liveness and readiness probes.

use axum::Json;
use axum::extract::State;
use std::sync::atomic::Ordering;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState};
use crate::store::Backend;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` when not ready.
    pub status: &'static str,
}

/// Prometheus text exposition of every `gradscope_` series and the process metrics.
#[utoipa::path(get, operation_id = "metrics", path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    // What the database holds is exported by one node: the live node with the smallest id
    // (on SQLite, the only one).
    let (exporter, nodes) = match state.store.backend() {
        Backend::Sqlite => (true, 1),
        Backend::Postgres => {
            let nodes = state.store.live_nodes().await?;
            let first = nodes.first().is_none_or(|node| node.id == state.store.node_id());
            (first, i64::try_from(nodes.len()).unwrap_or(i64::MAX).max(1))
        }
    };
    let counts = if exporter { Some(state.store.count_jobs().await?) } else { None };
    let cluster = counts.as_deref().map(|counts| (counts, nodes));
    let body = state.metrics.render_node(cluster, state.ws.clients.load(Ordering::Relaxed));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body))
}

/// The process is up.
#[utoipa::path(get, operation_id = "healthz", path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn live() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The store answers and its migrations are applied.
#[utoipa::path(get, operation_id = "readyz", path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    if state.store.is_ready().await {
        (StatusCode::OK, Json(Health { status: "ok" }))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: "unavailable" }))
    }
}
