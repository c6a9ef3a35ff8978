//! The one place that turns errors into HTTP: a status, a stable `code`, a message for people
//! and machine-readable `details`, always in the shape
//! `{"error": {"code": ..., "message": ..., "details": {...}}}`.
//!
//! Internal errors are logged (inside the request's span, so with its id) and answered with a
//! generic message: details of a bug are for operators, not clients.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON, or not the expected shape.
    #[error("{0}")]
    InvalidJson(String),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error(
        "the request body is larger than the limit of {limit_bytes} bytes (server.max_body_bytes)"
    )]
    PayloadTooLarge { limit_bytes: usize },
    #[error("the request body must be JSON with the header Content-Type: application/json")]
    UnsupportedMediaType,
    /// A well-formed request asking for something impossible; `field` names the culprit.
    #[error("{message}")]
    Validation { field: String, message: String },
    /// API keys are configured and the request has none or a wrong one.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller's key is over its rate limit.
    #[error("rate limit exceeded; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("the model queue is full; retry after {retry_after_s} s")]
    Overloaded { retry_after_s: u64 },
    /// `POST /jobs` over a cap of the job store (`overloaded`, with Retry-After).
    #[error("{message}")]
    JobsFull { message: String, retry_after_s: u64 },
    /// No job with this id: never created, deleted, or expired.
    #[error(
        "no job {0}: it never existed, was deleted, or finished longer ago than jobs.result_ttl_s"
    )]
    JobNotFound(String),
    #[error("{0}")]
    NotReady(String),
    #[error("the request ran past its deadline of {timeout_ms} ms; its queued work was dropped")]
    Timeout { timeout_ms: u64 },
    /// A bug. The text is logged, never sent.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::JobNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded { .. } | ApiError::JobsFull { .. } | ApiError::NotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code clients branch on (API.md's table).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::NotFound(_) | ApiError::JobNotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Validation { .. } => "validation_error",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Overloaded { .. } | ApiError::JobsFull { .. } => "overloaded",
            ApiError::NotReady(_) => "not_ready",
            ApiError::Timeout { .. } => "timeout",
            ApiError::Internal(_) => "internal",
        }
    }

    fn details(&self) -> Value {
        match self {
            ApiError::Validation { field, .. } => json!({ "field": field }),
            ApiError::PayloadTooLarge { limit_bytes } => json!({ "limit_bytes": limit_bytes }),
            ApiError::Overloaded { retry_after_s }
            | ApiError::RateLimited { retry_after_s }
            | ApiError::JobsFull { retry_after_s, .. } => json!({ "retry_after_s": retry_after_s }),
            ApiError::Timeout { timeout_ms } => json!({ "timeout_ms": timeout_ms }),
            _ => json!({}),
        }
    }

    /// Maps an engine failure; `timeout_ms` is the deadline the request ran under.
    pub fn from_engine(error: EngineError, timeout_ms: u64) -> Self {
        match error {
            EngineError::JobTooLarge { .. } => ApiError::validation("request", error.to_string()),
            EngineError::Overloaded { retry_after } => ApiError::Overloaded {
                retry_after_s: retry_after.as_secs().max(1),
            },
            EngineError::Timeout => ApiError::Timeout { timeout_ms },
            EngineError::ShuttingDown => ApiError::NotReady(error.to_string()),
            EngineError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

/// The error body, for the OpenAPI document.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "validation_error", "message": "text is empty", "details": {"field": "text"}}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_json`, `not_found`, `method_not_allowed`,
    /// `payload_too_large`, `unsupported_media_type`, `validation_error`, `unauthorized`,
    /// `rate_limited`, `overloaded`,
    /// `not_ready`, `timeout`, `internal`.
    pub code: String,
    /// For people; wording may change.
    pub message: String,
    /// Machine-readable context, e.g. `{"field": "text"}`; an empty object when there is none.
    #[schema(value_type = Object)]
    pub details: Value,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error; the request id in x-request-id identifies it in the logs"
                    .to_string()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().into(),
                message,
                details: self.details(),
            },
        };
        let mut response = (self.status(), Json(body)).into_response();
        if let ApiError::Overloaded { retry_after_s }
        | ApiError::RateLimited { retry_after_s }
        | ApiError::JobsFull { retry_after_s, .. } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
        }
        response
    }
}

/// The body-level errors every JSON route documents alike (413, 415), listed once: a route's
/// `responses(...)` names this type instead of repeating them.
#[derive(utoipa::IntoResponses)]
pub enum BodyErrors {
    #[response(status = 413, description = "`payload_too_large`: body over `server.max_body_bytes`",
        example = json!({"error": {"code": "payload_too_large", "message":
            "the request body is larger than the limit of 1048576 bytes (server.max_body_bytes)",
            "details": {"limit_bytes": 1048576}}}))]
    PayloadTooLarge(ErrorBody),
    #[response(status = 415, description = "`unsupported_media_type`: not `application/json`",
        example = json!({"error": {"code": "unsupported_media_type", "message":
            "the request body must be JSON with the header Content-Type: application/json",
            "details": {}}}))]
    UnsupportedMediaType(ErrorBody),
}

/// The errors of a route that runs rows through the model (500, 503, 504), documented alike
/// everywhere and listed once.
#[derive(utoipa::IntoResponses)]
pub enum ModelErrors {
    #[response(status = 500, description = "`internal`: a bug, logged with the request id",
        example = json!({"error": {"code": "internal", "message":
            "internal error; the request id in x-request-id identifies it in the logs",
            "details": {}}}))]
    Internal(ErrorBody),
    #[response(status = 503, description = "`overloaded` (with `Retry-After`) or `not_ready`",
        headers(("retry-after" = u64, description = "Seconds to wait (when overloaded)")),
        example = json!({"error": {"code": "overloaded", "message":
            "the model queue is full; retry after 1 s", "details": {"retry_after_s": 1}}}))]
    Unavailable(ErrorBody),
    #[response(status = 504, description = "`timeout`: past `server.request_timeout_ms`; queued work \
        dropped",
        example = json!({"error": {"code": "timeout", "message":
            "the request ran past its deadline of 30000 ms; its queued work was dropped",
            "details": {"timeout_ms": 30000}}}))]
    Timeout(ErrorBody),
}
