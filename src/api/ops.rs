//! Operations endpoints: liveness, readiness, what is being served, metrics, the API document.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::openapi;
use super::AppState;
use crate::model::loader::Precision;

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct StatusResponse {
    /// `ok` (health) or `ready` (readiness).
    pub status: String,
}

/// Liveness: the process answers. Cheap, never touches the model.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The process is alive", body = StatusResponse)))]
pub async fn health() -> Json<StatusResponse> {
    Json(StatusResponse {
        status: "ok".into(),
    })
}

/// Readiness: model loaded, warm-up done, a model thread alive, not shutting down.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = StatusResponse),
        (status = 503, description = "`not_ready`: loading, warming up or shutting down", body = ErrorBody),
    ))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<StatusResponse>, ApiError> {
    if state.is_ready() {
        Ok(Json(StatusResponse {
            status: "ready".into(),
        }))
    } else {
        Err(ApiError::NotReady(
            "the model is loading or warming up, or the service is shutting down".into(),
        ))
    }
}

/// The model being served.
#[derive(Serialize, ToSchema)]
pub struct ModelDescription {
    pub id: String,
    /// `bert`, `distilbert` or `roberta`.
    pub architecture: String,
    pub sha256: String,
    /// `classifier` or `zero-shot:<name>`.
    pub head: String,
    pub labels: Vec<String>,
    /// `single_label`, `multi_label` or `regression`.
    pub problem_type: String,
    pub num_layers: usize,
    pub num_heads: usize,
    pub hidden_size: usize,
    /// The model's own maximum input length in tokens.
    pub max_len: usize,
    /// How inference multiplies the dense layers, in force (`model.matmul_precision`:
    /// `highest`, `high` or `medium`; gradient methods use `high` products under `high`, f32 otherwise).
    pub matmul_precision: Precision,
}

/// The limits in force (every one configurable).
#[derive(Serialize, ToSchema)]
pub struct Limits {
    pub max_input_tokens: usize,
    pub max_num_samples: usize,
    pub max_body_bytes: usize,
    pub max_attention_values: usize,
    pub max_queued_rows: usize,
    pub request_timeout_ms: u64,
    pub max_batch_tokens: usize,
    pub max_batch_rows: usize,
    pub cache_rows: usize,
    pub workers: usize,
    /// Jobs queued or running at once (`jobs.max_live_jobs`).
    pub max_live_jobs: usize,
    /// Jobs running at once (`jobs.max_running_jobs`).
    pub max_running_jobs: usize,
    /// Jobs stored, live or finished (`jobs.max_stored_results`).
    pub max_stored_results: usize,
    /// Seconds a finished job is kept (`jobs.result_ttl_s`).
    pub job_result_ttl_s: u64,
    /// Deadline of one job (`jobs.timeout_ms`).
    pub job_timeout_ms: u64,
}

#[derive(Serialize, ToSchema)]
pub struct BuildInfo {
    /// Cargo features compiled in.
    pub features: Vec<String>,
    /// `release` or `debug`.
    pub profile: String,
}

#[derive(Serialize, ToSchema)]
pub struct InfoResponse {
    pub model: ModelDescription,
    pub limits: Limits,
    /// Version of this service.
    pub version: String,
    pub build: BuildInfo,
}

/// What is being served and under which limits (never secrets).
#[utoipa::path(get, path = "/info", tag = "operations",
    responses((status = 200, description = "Model, limits, version and build", body = InfoResponse)))]
pub async fn info(State(state): State<AppState>) -> Json<InfoResponse> {
    let (model, config) = (&state.model, &state.config);
    let problem_type = serde_json::to_value(model.problem_type)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    Json(InfoResponse {
        model: ModelDescription {
            id: model.id.clone(),
            architecture: model.architecture.clone(),
            sha256: model.sha256.clone(),
            head: model.head.clone(),
            labels: model.labels.clone(),
            problem_type,
            num_layers: model.num_layers,
            num_heads: model.num_heads,
            hidden_size: model.hidden_size,
            max_len: model.max_len,
            matmul_precision: config.model.matmul_precision,
        },
        limits: Limits {
            max_input_tokens: state.limits.max_input_tokens,
            max_num_samples: state.limits.max_num_samples,
            max_body_bytes: config.server.max_body_bytes,
            max_attention_values: state.limits.max_attention_values,
            max_queued_rows: config.engine.max_queued_rows,
            request_timeout_ms: config.server.request_timeout_ms,
            max_batch_tokens: config.engine.max_batch_tokens,
            max_batch_rows: config.engine.max_batch_rows,
            cache_rows: config.engine.cache_rows,
            workers: config.engine.workers,
            max_live_jobs: config.jobs.max_live_jobs,
            max_running_jobs: config.jobs.max_running_jobs,
            max_stored_results: config.jobs.max_stored_results,
            job_result_ttl_s: config.jobs.result_ttl_s,
            job_timeout_ms: config.jobs.timeout_ms,
        },
        version: env!("CARGO_PKG_VERSION").into(),
        build: BuildInfo {
            features: Vec::new(),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .into(),
        },
    })
}

/// Prometheus metrics: requests by route and status, queue depth, batch sizes, inference time,
/// cache hits, dropped rows.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// This API's OpenAPI document (the interactive reference is at `/docs`).
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document_json(),
    )
}
