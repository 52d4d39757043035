//! What a job recorded beyond its steps: per-layer statistics and events.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{ApiQuery, large_json, query_list};
use super::jobs::{find_job, range};
use super::{ApiError, AppState};
use crate::store::{LayerSeries, StatSelection, StoredEvent};
use crate::train::stats::HIST_BINS;
use crate::vocab::{EventKind, Statistic};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LayerStatsQuery {
    /// First step (inclusive; default the first).
    from: Option<i64>,
    /// Last step (inclusive; default the last).
    to: Option<i64>,
    /// Comma-separated layer indices (default all; repeats count once; at most 4096 items).
    layers: Option<String>,
    /// Comma-separated statistics (the `Statistic` schema lists them: grad_norm,
    /// grad_max, grad_mean, grad_std, zero_frac, nonfinite, underflow, weight_norm,
    /// update_ratio) or
    /// hist (default all but hist; repeats count once). Asking for fewer reads less: on long jobs, ask for what you plot. An answer
    /// holds at most 5,000,000 values by default (layers × statistics × points, `hist`
    /// counting 51) and a query reads at most 100,000,000 before thinning; above either
    /// it is a 422. A thinned range of statistics reads pre-aggregated blocks of 16^k
    /// steps, about `max_points` × 16 × log₁₆(steps) rows at most; with `hist`, the points
    /// are chosen among the steps that have a histogram, and all of those are read.
    stat: Option<String>,
    /// At most this many points per layer (default 5000, 10 to 100000), keeping each
    /// bucket's extremes: a longer range is cut into `max_points / (2 × statistics + 1)`
    /// buckets of consecutive recorded steps, each keeping the steps of each statistic's
    /// smallest and largest finite value and its first step with a null.
    #[param(minimum = 10, maximum = 100000)]
    max_points: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LayerStatsResponse {
    pub layers: Vec<LayerSeries>,
}

/// Per-layer statistics over steps, columnar per layer.
#[utoipa::path(get, operation_id = "get_layer_stats", path = "/api/v1/jobs/{id}/layer-stats", tag = "jobs",
    params(("id" = uuid::Uuid, Path), LayerStatsQuery),
    responses((status = 200, body = LayerStatsResponse), (status = 400, description = "A malformed query string, or a parameter the route does not take", body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 422, body = super::ErrorBody)))]
pub async fn layers(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<LayerStatsQuery>,
) -> Result<Response, ApiError> {
    let job = find_job(&state, &id).await?;
    let (from, to, max_points) = range(q.from, q.to, q.max_points)?;
    let selection = match q.stat.as_deref() {
        None => StatSelection::default(),
        Some(list) => parse_stats(list)?,
    };
    let all = state.store.layers(job.id).await?;
    let layers = match q.layers.as_deref() {
        None => all,
        Some(list) => query_list(list, "layers")?
            .into_iter()
            .map(|s| {
                s.parse::<usize>().ok().and_then(|i| all.get(i).cloned()).ok_or_else(|| {
                    ApiError::invalid(
                        "layers",
                        format!("{s:?} is not a layer index (0 to {})", all.len().saturating_sub(1)),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let _permit = state.heavy_reads.acquire().await.map_err(anyhow::Error::from)?;
    let range = state.store.layer_stat_rows(job.id, (from, to)).await?;
    let width = layers.len() as u64 * selection.width();
    let answered = width * range.rows.min(max_points as u64);
    let rows_read = selection.rows_read(range, max_points);
    let read = width * rows_read;
    let (max_answer, max_scan) = (state.reads.max_answer_values, state.reads.max_scan_values);
    if answered > max_answer {
        return Err(ApiError::invalid(
            "max_points",
            format!(
                "this query would answer {answered} values (layers × statistics × points; hist counts {HIST_BINS}), \
                 above this service's limit of {max_answer}: ask for fewer layers, fewer statistics or fewer points"
            ),
        ));
    }
    if read > max_scan {
        return Err(ApiError::invalid(
            "from",
            format!(
                "this query would read {read} values before thinning, above this service's limit of {max_scan}: \
                 narrow the step range or ask for fewer layers or statistics"
            ),
        ));
    }
    let series = state.store.layer_stats(job.id, &layers, &selection, (from, to), max_points, rows_read).await?;
    large_json(LayerStatsResponse { layers: series }).await
}

/// The `stat` list: statistics by name, and `hist`.
fn parse_stats(list: &str) -> Result<StatSelection, ApiError> {
    let mut selection = StatSelection { statistics: Vec::new(), hist: false };
    for name in query_list(list, "stat")? {
        if name == "hist" {
            selection.hist = true;
        } else {
            let stat: Statistic = name.parse().map_err(|err| ApiError::invalid("stat", format!("{err}, hist")))?;
            selection.statistics.push(stat);
        }
    }
    Ok(selection)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events of this kind.
    #[param(value_type = Option<EventKind>)]
    kind: Option<String>,
    /// At most this many, oldest first (default 1000, at most 10000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub events: Vec<StoredEvent>,
}

pub const DEFAULT_EVENTS_LIMIT: i64 = 1000;
pub const MAX_EVENTS_LIMIT: i64 = 10_000;

/// Diagnoses (`nonfinite`, `exploding`, `vanishing`, `dead`), policy summaries
/// (`clipped`, `skipped`) and policy actions (`spike_accepted`), in order.
#[utoipa::path(get, operation_id = "list_events", path = "/api/v1/jobs/{id}/events", tag = "jobs", params(("id" = uuid::Uuid, Path), EventsQuery),
    responses((status = 200, body = EventList), (status = 400, description = "A malformed query string, or a parameter the route does not take", body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 422, body = super::ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<EventList>, ApiError> {
    let job = find_job(&state, &id).await?;
    let limit = q.limit.unwrap_or(DEFAULT_EVENTS_LIMIT);
    if !(1..=MAX_EVENTS_LIMIT).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("must be 1 to {MAX_EVENTS_LIMIT}")));
    }
    let kind = q
        .kind
        .as_deref()
        .map(str::parse::<EventKind>)
        .transpose()
        .map_err(|err| ApiError::invalid("kind", err.to_string()))?;
    Ok(Json(EventList { events: state.store.events(job.id, kind, limit).await? }))
}
