//! `POST /explain/gradients`: saliency, gradient x input and integrated gradients at the
//! word-embedding layer (METHODS.md, "Gradients"), optionally with ERASER faithfulness scores.
//!
//! Every gradient row of the request (all targets, all integrated-gradients steps) goes to the
//! engine as one gradient job under the request's deadline, run in batches on the model
//! threads next to other requests' forward rows; `evaluate = true` adds the faithfulness rows
//! as one forward job.

use std::collections::BTreeMap;
use std::future::Future;

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::evaluate;
use super::explain::{ExplainBase, ExplainCommon, Explained};
use super::extract::ApiJson;
use super::scope::{row_of, RequestScope};
use super::AppState;
use crate::explain::faithfulness::Faithfulness;
use crate::explain::features::{Feature, FeatureSet, Removal};
use crate::explain::gradients::{
    per_feature, token_attributions, GradientError, GradientEvaluator, GradientMethod,
    GradientParams, IgSummary, Quadrature,
};
use crate::model::gradients::{GradientRow, OutputKind, RowGradient};

/// Most integrated-gradients steps a request may ask for.
pub const MAX_STEPS: usize = 1024;

/// Scores per model token or per word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One score per model token, special tokens included (they score 0 with IG).
    #[default]
    Tokens,
    /// One score per word occurrence: the sum of its tokens' scores.
    Words,
}

fn default_steps() -> usize {
    50
}

/// The common explanation fields plus the gradient method's parameters, in one flat object.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"text": "The food was cold and the service painfully slow tonight.",
    "method": "integrated_gradients", "steps": 50, "quadrature": "gauss_legendre",
    "output": "probability", "granularity": "words", "evaluate": true}))]
pub struct GradientsRequest {
    #[serde(flatten)]
    pub common: ExplainCommon,
    /// `saliency` (`||dF/dx_t||`), `grad_x_input` (`x_t . dF/dx_t`) or
    /// `integrated_gradients` (default).
    #[serde(default)]
    pub method: GradientMethod,
    /// Integrated gradients' nodes (default 50, at most 1024; trapezoid needs 2).
    #[serde(default = "default_steps")]
    #[schema(default = 50, minimum = 1, maximum = 1024)]
    pub steps: usize,
    /// Integrated gradients' rule: `gauss_legendre` (default, as Captum) or `trapezoid`.
    #[serde(default)]
    pub quadrature: Quadrature,
    /// Differentiate the target's `probability` (default) or its `logit`.
    #[serde(default)]
    pub output: OutputKind,
    /// `tokens` (default) or `words` (sum over each word's tokens).
    #[serde(default)]
    pub granularity: Granularity,
    /// Add ERASER comprehensiveness and sufficiency per bin and their AOPC, over words.
    #[serde(default)]
    pub evaluate: bool,
    /// How `evaluate` removes words: `remove` (default), `mask_token` or `unk_token`.
    #[serde(default)]
    pub mask: Removal,
    /// Anything else is refused (400) rather than silently ignored.
    #[serde(flatten)]
    #[schema(ignore)]
    unknown: BTreeMap<String, Value>,
}

/// One target label's attribution.
#[derive(Debug, Serialize, ToSchema)]
pub struct GradientExplanation {
    /// Label index.
    pub label: usize,
    pub label_name: String,
    /// `F(x)`: the differentiated output (probability or logit) on the text.
    pub output: f64,
    /// One score per token (`tokens`) or per entry of `features` (`words`).
    pub scores: Vec<f64>,
    /// Integrated gradients only: `F(x')`, the sum of the scores and the completeness
    /// residual `delta = sum - (F(x) - F(x'))`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrated_gradients: Option<IgSummary>,
    /// With `evaluate`: ERASER scores of this attribution's word ranking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faithfulness: Option<Faithfulness>,
}

/// A gradient explanation: the common blocks and one attribution per target label.
#[derive(Debug, Serialize, ToSchema)]
pub struct GradientsResponse {
    #[serde(flatten)]
    pub base: ExplainBase,
    pub method: GradientMethod,
    pub output: OutputKind,
    pub granularity: Granularity,
    /// Integrated gradients only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quadrature: Option<Quadrature>,
    /// The words (one per occurrence), with `granularity = words` or `evaluate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<Feature>>,
    pub explanations: Vec<GradientExplanation>,
}

/// The request's scope runs gradient rows through the engine (same deadline, same usage).
impl GradientEvaluator for RequestScope {
    type Error = ApiError;

    fn word_embeddings(&self, ids: &[u32]) -> Result<Vec<f32>, ApiError> {
        self.state()
            .engine
            .word_embeddings(ids)
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    fn gradients(
        &self,
        rows: Vec<GradientRow>,
        output: OutputKind,
    ) -> impl Future<Output = Result<Vec<RowGradient>, ApiError>> + Send {
        RequestScope::gradients(self, rows, output)
    }
}

/// Explain a prediction with input gradients (Captum's saliency, input x gradient and layer
/// integrated gradients at the word embeddings).
///
/// Integrated gradients' baseline is the `[PAD]` embedding at every non-special position; its
/// completeness residual `delta` is reported (about 1e-5 of `F(x) - F(x')` at 50
/// Gauss-Legendre steps). With `evaluate = true` each target also gets ERASER
/// comprehensiveness and sufficiency at 1, 5, 10, 20 and 50% of the words and their AOPC.
#[utoipa::path(
    post,
    path = "/explain/gradients",
    tag = "explain",
    request_body = GradientsRequest,
    responses(
        (status = 200, description = "Scores per target label (and faithfulness with \
            `evaluate`)", body = GradientsResponse,
            headers(
                ("x-request-id" = String, description = "Echoed if sent, generated otherwise"),
                ("x-queue-time" = String, description = "Milliseconds waiting for the model"),
                ("x-inference-time" = String, description = "Milliseconds in model batches"),
                ("x-total-time" = String, description = "Milliseconds in the service"),
            )),
        (status = 400, description = "`invalid_json`: not JSON, a field of the wrong type, an \
            unknown `method`/`quadrature`/`output`/`granularity`/`mask`, or an unknown field",
            body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over `server.max_body_bytes`",
            body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: not `application/json`",
            body = ErrorBody),
        (status = 422, description = "`validation_error` naming the field: empty text, text \
            too long without `truncate`, unknown `target`, `steps` out of range, `evaluate` on \
            a text without words, a `mask` the tokenizer cannot do, a model without gradient \
            support", body = ErrorBody),
        (status = 500, description = "`internal`: a bug, logged with the request id",
            body = ErrorBody),
        (status = 503, description = "`overloaded` (with `Retry-After`) or `not_ready`",
            body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait (when overloaded)"))),
        (status = 504, description = "`timeout`: past `server.request_timeout_ms`; queued work \
            dropped", body = ErrorBody),
    )
)]
pub async fn explain_gradients_route(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<GradientsRequest>,
) -> Result<Response, ApiError> {
    if let Some(field) = request.unknown.keys().next() {
        return Err(ApiError::InvalidJson(format!(
            "the body does not have the expected shape: unknown field `{field}`"
        )));
    }
    let is_ig = request.method == GradientMethod::IntegratedGradients;
    if is_ig {
        let min = match request.quadrature {
            Quadrature::GaussLegendre => 1,
            Quadrature::Trapezoid => 2,
        };
        if !(min..=MAX_STEPS).contains(&request.steps) {
            return Err(ApiError::validation(
                "steps",
                format!(
                    "steps must be between {min} and {MAX_STEPS} for this quadrature (got {})",
                    request.steps
                ),
            ));
        }
    }
    if !state.engine.supports_gradients() {
        return Err(ApiError::validation(
            "method",
            "this model was loaded without gradient support",
        ));
    }

    let explained = Explained::begin(&state, &request.common).await?;
    let params = GradientParams {
        method: request.method,
        output: request.output,
        steps: request.steps,
        quadrature: request.quadrature,
    };
    let attributions = token_attributions(
        &explained.scope,
        &row_of(&explained.encoding),
        &explained.encoding.special,
        state.encoder.pad_id(),
        &explained.targets,
        params,
    )
    .await
    .map_err(|e| match e {
        GradientError::Invalid(message) => ApiError::validation("steps", message),
        GradientError::Eval(e) => e,
    })?;

    let words = (request.granularity == Granularity::Words || request.evaluate)
        .then(|| FeatureSet::words(&request.common.text, &explained.encoding, false));
    let word_scores: Vec<Vec<f64>> = match &words {
        Some(w) => attributions
            .iter()
            .map(|a| per_feature(w, &a.scores))
            .collect(),
        None => Vec::new(),
    };
    let mut faith: Vec<Option<Faithfulness>> = vec![None; attributions.len()];
    if let (true, Some(w)) = (request.evaluate, &words) {
        let pairs: Vec<(usize, Vec<f64>)> = attributions
            .iter()
            .map(|a| a.target)
            .zip(word_scores.iter().cloned())
            .collect();
        let scores = evaluate::score(
            w,
            &state.encoder,
            request.mask,
            request.common.truncate,
            &pairs,
            &explained.scope,
        )
        .await?;
        faith = scores.into_iter().map(Some).collect();
    }

    let labels = &state.model.labels;
    let explanations = attributions
        .into_iter()
        .enumerate()
        .zip(faith)
        .map(|((i, a), faithfulness)| GradientExplanation {
            label: a.target,
            label_name: labels[a.target].clone(),
            output: a.output,
            scores: match request.granularity {
                Granularity::Tokens => a.scores,
                Granularity::Words => word_scores[i].clone(),
            },
            integrated_gradients: a.ig,
            faithfulness,
        })
        .collect();
    let body = GradientsResponse {
        base: explained.base(),
        method: request.method,
        output: request.output,
        granularity: request.granularity,
        steps: is_ig.then_some(request.steps),
        quadrature: is_ig.then_some(request.quadrature),
        features: words.map(|w| w.features().to_vec()),
        explanations,
    };
    Ok(explained.respond(&body))
}
