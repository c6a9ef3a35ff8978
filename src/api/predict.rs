//! `POST /predict`: label probabilities for one text or a list of texts.

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::dto::{ModelRef, Prediction, Usage};
use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use super::scope::{row_of, RequestScope};
use super::AppState;

/// Give exactly one of `text` and `texts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"text": "The plot was thin but the acting was wonderful."}))]
pub struct PredictRequest {
    /// One text; the response then has `prediction`.
    pub text: Option<String>,
    /// Several texts, batched together; the response then has `predictions`, in order.
    pub texts: Option<Vec<String>>,
    /// Over-long text: 422 unless true, then cut to the maximum length.
    #[serde(default)]
    pub truncate: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PredictResponse {
    pub model: ModelRef,
    /// Present when the request gave `text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<Prediction>,
    /// Present when the request gave `texts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictions: Option<Vec<Prediction>>,
    pub usage: Usage,
}

/// Classify one text or a list of texts.
#[utoipa::path(
    post,
    path = "/predict",
    tag = "predict",
    request_body = PredictRequest,
    responses(
        (status = 200, description = "Probabilities per text", body = PredictResponse,
            headers(
                ("x-request-id" = String, description = "Echoed if sent, generated otherwise"),
                ("x-queue-time" = String, description = "Milliseconds waiting for the model"),
                ("x-inference-time" = String, description = "Milliseconds in model batches"),
                ("x-total-time" = String, description = "Milliseconds in the service"),
            )),
        (status = 400, description = "`invalid_json`: not JSON, or not the expected shape", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over `server.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`", body = ErrorBody),
        (status = 422, description = "`validation_error`: empty text, text too long without `truncate`, \
            neither or both of `text` and `texts`", body = ErrorBody),
        (status = 500, description = "`internal`: a bug, logged with the request id", body = ErrorBody),
        (status = 503, description = "`overloaded` (with `Retry-After`) or `not_ready`", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait (when overloaded)"))),
        (status = 504, description = "`timeout`: past `server.request_timeout_ms`; queued work dropped", body = ErrorBody),
    )
)]
pub async fn predict(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<PredictRequest>,
) -> Result<Response, ApiError> {
    let scope = RequestScope::begin(&state)?;
    let (texts, single) = match (request.text, request.texts) {
        (Some(text), None) => (vec![text], true),
        (None, Some(texts)) if !texts.is_empty() => (texts, false),
        (None, Some(_)) => {
            return Err(ApiError::validation(
                "texts",
                "texts is empty; give at least one text",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(
                "texts",
                "give either text or texts, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::validation(
                "text",
                "text is required (or texts, a list)",
            ))
        }
    };
    let max_texts = state.engine.config().max_queued_rows;
    if texts.len() > max_texts {
        let message = format!(
            "texts has {} entries, over the limit of {max_texts}; send fewer per request",
            texts.len()
        );
        return Err(ApiError::validation("texts", message));
    }

    let field = |i: usize| {
        if single {
            "text".to_string()
        } else {
            format!("texts[{i}]")
        }
    };
    let encodings = texts
        .iter()
        .enumerate()
        .map(|(i, text)| scope.encode(&field(i), text, request.truncate))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = scope
        .evaluate(encodings.iter().map(row_of).collect())
        .await?;

    let labels = &state.model.labels;
    let mut predictions: Vec<Prediction> = encodings
        .iter()
        .zip(&outputs)
        .map(|(encoding, output)| {
            Prediction::new(labels, output, encoding.len(), encoding.truncated)
        })
        .collect();
    let (prediction, predictions) = if single {
        (predictions.pop(), None)
    } else {
        (None, Some(predictions))
    };
    let body = PredictResponse {
        model: ModelRef::of(&state.model),
        prediction,
        predictions,
        usage: scope.usage(),
    };
    Ok(scope.respond(&body))
}
