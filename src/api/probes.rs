//! What a job measured on schedules of its own: the spectral radius of its recurrent and
//! square weight matrices, the temporal gradient profile of a sequence model, and the
//! forward signal's statistics per block.

use axum::extract::{Path, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{ApiQuery, large_json};
use super::jobs::{find_job, range};
use super::{ApiError, AppState};
use crate::store::{ProbeKind, ProbeRows};
use crate::train::spectral;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProbeQuery {
    /// First step (inclusive; default the first).
    from: Option<i64>,
    /// Last step (inclusive; default the last).
    to: Option<i64>,
    /// At most this many measured steps (default 5000, 10 to 100000): a longer range keeps
    /// every k-th measurement, the first included, for the smallest k that fits. An answer
    /// holds at most 5,000,000 values by default (series × points); above it is a 422.
    #[param(minimum = 10, maximum = 100000)]
    max_points: Option<usize>,
}

/// A measured matrix: a recurrent weight (per gate block for an LSTM or GRU) or a square
/// hidden weight of an MLP.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MatrixInfo {
    /// Position in `radius` and in a step message's `spectral`.
    pub index: usize,
    /// `lstm.weight_hh_l0[f]`: the layer's name, and the gate for a block of one.
    pub name: String,
    /// The layer (see `/layers`) the matrix is, or is a block of.
    pub layer: usize,
    /// Rows (= columns).
    pub side: i64,
}

/// The measured matrices among `layers`, as the API names them.
pub fn matrix_list(layers: &[crate::train::LayerInfo]) -> Vec<MatrixInfo> {
    spectral::matrices(layers)
        .into_iter()
        .enumerate()
        .map(|(index, m)| MatrixInfo { index, name: m.name, layer: m.layer, side: m.side })
        .collect()
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SpectralResponse {
    pub matrices: Vec<MatrixInfo>,
    /// The measured steps (`monitor.spectral_every` apart), thinned to `max_points`.
    pub step: Vec<i64>,
    /// Per matrix (in `matrices` order), its largest singular value at each step of
    /// `step`; null where not finite.
    pub radius: Vec<Vec<Option<f32>>>,
}

/// Checks that `rows` × `width` values fit this service's answer limit.
async fn bounded_rows(
    state: &AppState,
    id: uuid::Uuid,
    kind: ProbeKind,
    (from, to): (i64, i64),
    max_points: usize,
) -> Result<ProbeRows, ApiError> {
    let range = state.store.probe_range(id, kind, (from, to)).await?;
    let answered = range.width * range.rows.min(max_points as u64);
    let max_answer = state.reads.max_answer_values;
    if answered > max_answer {
        return Err(ApiError::invalid(
            "max_points",
            format!(
                "this query would answer {answered} values (series × points), above this service's limit of \
                 {max_answer}: ask for fewer points or a narrower step range"
            ),
        ));
    }
    let _permit = state.heavy_reads.acquire().await.map_err(anyhow::Error::from)?;
    Ok(state.store.probes(id, kind, (from, to), max_points).await?)
}

/// The largest singular value of each measured weight matrix over steps, every
/// `monitor.spectral_every` steps. Above 1.0, gradients through the matrix can grow from
/// step to step; below, with a tanh, they must shrink (Pascanu et al., 2013).
#[utoipa::path(get, operation_id = "get_spectral", path = "/api/v1/jobs/{id}/spectral", tag = "jobs",
    params(("id" = uuid::Uuid, Path), ProbeQuery),
    responses((status = 200, body = SpectralResponse), (status = 400, description = "A malformed query string, or a parameter the route does not take", body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 422, body = super::ErrorBody)))]
pub async fn spectral(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ProbeQuery>,
) -> Result<Response, ApiError> {
    let job = find_job(&state, &id).await?;
    let (from, to, max_points) = range(q.from, q.to, q.max_points)?;
    let matrices = matrix_list(&state.store.layers(job.id).await?);
    let rows = bounded_rows(&state, job.id, ProbeKind::Spectral, (from, to), max_points).await?;
    let radius = rows.columns(matrices.len());
    large_json(SpectralResponse { matrices, step: rows.step, radius }).await
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TimeProfileResponse {
    /// Input positions (the task's sequence length); 0 before the first profile.
    pub positions: usize,
    /// The profiled steps (`monitor.time_every` apart), thinned to `max_points`.
    pub step: Vec<i64>,
    /// Per step of `step`, ‖∂L/∂x_t‖ for each position t, 0 first: the norm of the
    /// gradient reaching the embedded input there, averaged over the batch; null where not
    /// finite.
    pub grad: Vec<Vec<Option<f32>>>,
    /// Per step, the first position's gradient norm over the last's: far below 1, the
    /// gradient from the loss fades out before it reaches the start of the sequence.
    pub first_last_ratio: Vec<Option<f64>>,
}

/// The temporal gradient profile of a sequence model over steps: how far back in the
/// input the gradient reaches, every `monitor.time_every` steps. Empty for a model whose
/// input is no sequence (an MLP) or a job that does not record it.
#[utoipa::path(get, operation_id = "get_time_profile", path = "/api/v1/jobs/{id}/time-profile", tag = "jobs",
    params(("id" = uuid::Uuid, Path), ProbeQuery),
    responses((status = 200, body = TimeProfileResponse), (status = 400, description = "A malformed query string, or a parameter the route does not take", body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 422, body = super::ErrorBody)))]
pub async fn time_profile(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ProbeQuery>,
) -> Result<Response, ApiError> {
    let job = find_job(&state, &id).await?;
    let (from, to, max_points) = range(q.from, q.to, q.max_points)?;
    let rows = bounded_rows(&state, job.id, ProbeKind::Time, (from, to), max_points).await?;
    let positions = rows.values.iter().map(Vec::len).max().unwrap_or(0);
    let first_last_ratio = rows.values.iter().map(|row| first_last_ratio(row)).collect();
    large_json(TimeProfileResponse { positions, step: rows.step, grad: rows.values, first_last_ratio }).await
}

/// The first value over the last, where both are finite and the last is not zero.
pub fn first_last_ratio(row: &[Option<f32>]) -> Option<f64> {
    match (row.first().copied().flatten(), row.last().copied().flatten()) {
        (Some(first), Some(last)) if last != 0.0 => Some(f64::from(first) / f64::from(last)),
        _ => None,
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignalResponse {
    /// The blocks, by name (`blocks.3`, `encoder.layers.1`, `lstm.l0`), in the order of the
    /// columns.
    pub blocks: Vec<String>,
    /// The recorded steps (`monitor.every` apart), thinned to `max_points`.
    pub step: Vec<i64>,
    /// Per block, the mean of its output over every entry at each step of `step`; null
    /// where not finite.
    pub mean: Vec<Vec<Option<f32>>>,
    /// Per block, the root mean square of its output at each step of `step`.
    pub rms: Vec<Vec<Option<f32>>>,
}

/// The forward signal through depth: each block's output mean and root mean square on the
/// recorded steps (`monitor.every`). An MLP block's output is after its activation (and
/// residual), a transformer block's after both residual additions, a recurrent layer's is
/// its hidden state at the last position.
#[utoipa::path(get, operation_id = "get_signal", path = "/api/v1/jobs/{id}/signal", tag = "jobs",
    params(("id" = uuid::Uuid, Path), ProbeQuery),
    responses((status = 200, body = SignalResponse), (status = 400, description = "A malformed query string, or a parameter the route does not take", body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 422, body = super::ErrorBody)))]
pub async fn signal(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ProbeQuery>,
) -> Result<Response, ApiError> {
    let job = find_job(&state, &id).await?;
    let (from, to, max_points) = range(q.from, q.to, q.max_points)?;
    let blocks = crate::train::model::block_names(&job.spec.model);
    let rows = bounded_rows(&state, job.id, ProbeKind::Signal, (from, to), max_points).await?;
    let mut columns = rows.columns(2 * blocks.len());
    let rms = columns.split_off(blocks.len());
    large_json(SignalResponse { blocks, step: rows.step, mean: columns, rms }).await
}
