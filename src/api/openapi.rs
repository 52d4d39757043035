//! The OpenAPI document, generated from the handlers and types, at `/api/v1/openapi.json`.

use axum::Json;
use utoipa::OpenApi;

use super::{corpora, experiments, health, jobs, presets, probes, protocol, stats, stream, uploads};
use crate::vocab::{DiagnosisStatus, EventKind, Statistic};

#[derive(OpenApi)]
#[openapi(
    info(title = "gradscope", description = "Training jobs with per-layer gradient statistics."),
    paths(
        jobs::create, jobs::list, jobs::get, jobs::cancel, jobs::delete, jobs::layers, jobs::steps,
        jobs::checkpoint, jobs::resume, experiments::create, experiments::list, experiments::get,
        experiments::cancel, experiments::delete, experiments::results, experiments::results_csv, stats::layers, stats::events, probes::spectral, probes::time_profile, probes::signal, stream::subscribe, presets::list, corpora::create, corpora::list, corpora::delete,
        uploads::create_model, uploads::list_models, uploads::get_model, uploads::delete_model,
        uploads::create_dataset, uploads::list_datasets, uploads::get_dataset, uploads::delete_dataset,
        health::live, health::ready, health::metrics, document, protocol::document,
    ),
    components(schemas(Statistic, EventKind, DiagnosisStatus)),
    tags(
        (name = "jobs", description = "Submit, watch and manage training jobs"),
        (name = "experiments", description = "Grids of job specs × seeds, with results per cell"),
        (name = "corpora", description = "Text corpora for char_lm jobs"),
        (name = "models", description = "TorchScript models for torchscript jobs"),
        (name = "datasets", description = "Safetensors data sets for dataset tasks"),
        (name = "health", description = "Probes"),
    )
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, operation_id = "openapi", path = "/api/v1/openapi.json", tag = "health",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(full())
}

/// The document with the spec's ranges written in (utoipa's attributes take only literal
/// bounds; these come from the constants validation checks).
pub fn full() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    crate::spec::schema::publish_ranges(&mut doc);
    doc
}
