//! `POST /explain/heads`: switch attention heads off and watch the prediction (METHODS.md,
//! Head ablation).
//!
//! The handler checks the pairs or the sweep against the model before any model work, runs
//! the text once ([`Explained::begin`]), then every ablated row in one engine job
//! ([`explain_heads`]), so rows with different head masks share batches with each other and
//! with other requests' rows.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, BodyErrors, ErrorBody, ModelErrors};
use super::explain::{ExplainBase, ExplainCommon, Explained};
use super::extract::ApiJson;
use super::scope::row_of;
use super::AppState;
use crate::explain::heads::{explain_heads, HeadsError, HeadsExplanation, HeadsParams};

/// The common explanation fields plus `mask` or `sweep`, in one flat object.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(examples(
    json!({"text": "The plot was thin but the acting was wonderful.", "mask": [[0, 1], [5, 3]]}),
    json!({"text": "The plot was thin but the acting was wonderful.", "sweep": "heads"})
))]
pub struct HeadsRequest {
    #[serde(flatten)]
    pub common: ExplainCommon,
    #[serde(flatten)]
    pub params: HeadsParams,
    /// Whatever the two parts above did not take: a misspelt parameter is refused (400).
    #[serde(flatten)]
    #[schema(ignore)]
    unknown: BTreeMap<String, Value>,
}

/// The prediction with heads switched off, next to the original.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeadsResponse {
    #[serde(flatten)]
    pub base: ExplainBase,
    #[serde(flatten)]
    pub explanation: HeadsExplanation,
}

/// Mask attention heads: the prediction with given `(layer, head)` pairs switched off
/// (`mask`), or the importance of every head (`sweep = "heads"`) or layer
/// (`sweep = "layers"`) as the drop of the target's probability when it is switched off.
///
/// A masked head's attention probabilities are multiplied by 0 (Hugging Face `head_mask`).
/// `importance[].drops[k]` is `f_j(x) - f_j(x | masked[k])`; for the heads sweep `grid` holds
/// the same numbers as `[layers][heads]`. A full heads sweep of the default model is 72 rows,
/// run as one batched job.
#[utoipa::path(
    post,
    path = "/explain/heads",
    tag = "explain",
    request_body(content = HeadsRequest, examples(
        ("mask" = (summary = "Two heads switched off together",
            value = json!({"text": "The plot was thin but the acting was wonderful.",
                "mask": [[0, 1], [5, 3]]}))),
        ("heads" = (summary = "Importance of every head for the predicted label",
            value = json!({"text": "The plot was thin but the acting was wonderful.",
                "sweep": "heads"}))),
        ("layers" = (summary = "Importance of every layer for the label \"positive\"",
            value = json!({"text": "The plot was thin but the acting was wonderful.",
                "sweep": "layers", "target": "positive"}))),
    )),
    responses(
        (status = 200, description = "The original and ablated outputs, and the drops of each \
            target's probability", body = HeadsResponse,
            headers(
                ("x-request-id" = String, description = "Echoed if sent, generated otherwise"),
                ("x-queue-time" = String, description = "Milliseconds waiting for the model"),
                ("x-inference-time" = String, description = "Milliseconds in model batches"),
                ("x-total-time" = String, description = "Milliseconds in the service"),
            ),
            example = json!(response_example())),
        (status = 400, description = "`invalid_json`: not JSON, a field of the wrong type, or \
            an unknown field", body = ErrorBody,
            example = json!({"error": {"code": "invalid_json", "message":
                "the body does not have the expected shape: invalid length 3, expected an array of length 2",
                "details": {}}})),
        (status = 422, description = "`validation_error` naming the field: empty text, text \
            too long without `truncate`, unknown `target`, a `mask` pair naming a layer or head \
            that does not exist, an unknown `sweep`, neither or both of `mask` and `sweep`",
            body = ErrorBody,
            example = json!({"error": {"code": "validation_error", "message":
                "mask[1] = [6, 0]: layer 6 does not exist; the model has 6 layers, numbered 0 to 5",
                "details": {"field": "mask"}}})),
        BodyErrors, ModelErrors,
    )
)]
pub async fn explain_heads_route(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<HeadsRequest>,
) -> Result<Response, ApiError> {
    if let Some(field) = request.unknown.keys().next() {
        return Err(ApiError::InvalidJson(format!(
            "the body does not have the expected shape: unknown field `{field}`; \
             POST /explain/heads takes text, target, top_labels, truncate, mask, sweep"
        )));
    }
    let query = request.params.resolve(&state.model).map_err(heads_error)?;
    let explained = Explained::begin(&state, &request.common).await?;
    let explanation = explain_heads(
        &row_of(&explained.encoding),
        &query,
        explained.model(),
        &explained.targets,
        &explained.original,
        &explained.scope,
    )
    .await
    .map_err(heads_error)?;
    let body = HeadsResponse {
        base: explained.base(),
        explanation,
    };
    Ok(explained.respond(&body))
}

/// Head ablation's errors in the API's statuses; engine failures keep theirs (503, 504).
fn heads_error(error: HeadsError) -> ApiError {
    match error {
        HeadsError::Invalid { field, message } => ApiError::validation(field, message),
        HeadsError::Evaluate(source) => match source.downcast::<ApiError>() {
            Ok(api) => *api,
            Err(other) => ApiError::Internal(format!("head ablation: {other}")),
        },
    }
}

/// The documented 200 example: a real response of the default model, shortened.
fn response_example() -> Value {
    serde_json::json!({
        "model": {"id": "all-MiniLM-L6-v2", "sha256": "53aa5117...", "head": "zero-shot:sentiment",
                  "version": "0.1.0"},
        "prediction": {"label": "positive",
                       "probabilities": {"negative": 0.27662525, "positive": 0.7233747},
                       "ranked": [{"label": "positive", "probability": 0.7233747},
                                  {"label": "negative", "probability": 0.27662525}],
                       "tokens": 12, "truncated": false},
        "targets": [1],
        "tokens": [{"id": 101, "text": "[CLS]", "start": 0, "end": 0, "special": true},
                   {"id": 1996, "text": "the", "start": 0, "end": 3, "special": false}],
        "usage": {"model_evaluations": 2, "tokens_evaluated": 24, "cache_hits": 0,
                  "queue_ms": 2.208, "inference_ms": 82.858, "total_ms": 85.417},
        "kind": "mask",
        "original": {"label": "positive",
                     "logits": {"negative": 16.72704, "positive": 17.688303},
                     "probabilities": {"negative": 0.27662525, "positive": 0.7233747}},
        "masked": [{"heads": [[0, 1], [5, 3]], "label": "positive",
                    "logits": {"negative": 17.310068, "positive": 17.872215},
                    "probabilities": {"negative": 0.3630508, "positive": 0.6369492},
                    "flipped": false}],
        "importance": [{"index": 1, "label": "positive", "probability": 0.7233747,
                        "drops": [0.08642554]}]
    })
}
