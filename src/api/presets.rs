//! `/api/v1/presets`: the seed experiments as ready-made job specs.

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::train::presets::{self, Preset};

#[derive(Debug, Serialize, ToSchema)]
pub struct PresetList {
    /// Grouped by experiment; in each group the failing run comes first.
    pub presets: Vec<Preset>,
}

/// The seed experiments: each failing run beside its remedied twin(s). Submit a preset's
/// `spec` to `POST /api/v1/jobs` to run it.
#[utoipa::path(get, operation_id = "list_presets", path = "/api/v1/presets", tag = "jobs",
    responses((status = 200, body = PresetList)))]
pub async fn list() -> Json<PresetList> {
    Json(PresetList { presets: presets::all() })
}
