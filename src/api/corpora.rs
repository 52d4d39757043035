//! `/api/v1/corpora`: upload a text corpus for `char_lm` jobs.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use uuid::Uuid;

use super::{ApiError, AppState};
use crate::store::Corpus;
use crate::train::data::vocab_size;

/// Fewest characters a corpus may have: a char LM needs room for a few sequences.
pub const MIN_CORPUS_CHARS: usize = 64;

/// Upload a UTF-8 text corpus (the body is the text). Use the returned `id` as `task.corpus`.
#[utoipa::path(post, operation_id = "upload_corpus", path = "/api/v1/corpora", tag = "corpora",
    request_body(content = String, content_type = "text/plain"),
    responses(
        (status = 201, body = Corpus),
        (status = 413, description = "Larger than the corpus limit", body = super::ErrorBody),
        (status = 422, description = "Not UTF-8, or too short", body = super::ErrorBody),
    ))]
pub async fn create(State(state): State<AppState>, body: Bytes) -> Result<(StatusCode, Json<Corpus>), ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|err| ApiError::invalid("body", format!("the corpus must be UTF-8 text: {err}")))?;
    let chars = text.chars().count();
    if chars < MIN_CORPUS_CHARS {
        return Err(ApiError::invalid("body", format!("at least {MIN_CORPUS_CHARS} characters, got {chars}")));
    }
    let corpus = Corpus {
        id: Uuid::now_v7().to_string(),
        bytes: body.len() as i64,
        vocab_size: vocab_size(text) as i64,
        created_at: Utc::now(),
    };
    let path = state.scheduler.corpus_path(&corpus.id);
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(anyhow::Error::from)?;
    }
    tokio::fs::write(&path, &body).await.map_err(anyhow::Error::from)?;
    state.store.insert_corpus(&corpus).await?;
    tracing::info!(corpus = %corpus.id, bytes = corpus.bytes, "corpus uploaded");
    Ok((StatusCode::CREATED, Json(corpus)))
}
