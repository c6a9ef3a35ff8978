//! `POST /explain/shap`: Kernel SHAP values per feature (METHODS.md, Kernel SHAP). The
//! handler validates before any model work, runs the text once ([`Explained::begin`]) and
//! hands the features to [`explain_shap`] with the request's scope as the evaluator, off the
//! async workers (the coalitions' tokenization and the regression are CPU work).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{ApiError, BodyErrors, ErrorBody, ModelErrors};
use super::evaluate;
use super::explain::{ExplainBase, ExplainCommon, Explained};
use super::extract::ApiJson;
use super::perturbation::{example_with, off_runtime, parse_request, perturb_error, require_words};
use super::AppState;
use crate::explain::compare::shap_scores;
use crate::explain::faithfulness::Faithfulness;
use crate::explain::features::Feature;
use crate::explain::shap::{explain_shap, ShapExplanation, ShapParams};

const TEXT: &str = "The acting was wonderful.";

/// The common explanation fields plus Kernel SHAP's parameters, all in one flat object.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(examples(
    json!({"text": "The acting was wonderful.", "seed": 7}),
    json!({"text": "The acting was wonderful.", "top_labels": 2, "max_evals": 500, "mask": "mask_token"})
))]
pub struct ShapRequest {
    #[serde(flatten)]
    pub common: ExplainCommon,
    #[serde(flatten)]
    pub params: ShapParams,
    /// Add ERASER faithfulness scores of each target's attribution (`faithfulness`), the
    /// features removed with this request's `mask`: up to 10 extra model rows per target.
    #[serde(default)]
    pub evaluate: bool,
    /// Whatever the two parts above did not take: refused rather than ignored.
    #[serde(flatten)]
    #[schema(ignore)]
    unknown: BTreeMap<String, Value>,
}

/// A Kernel SHAP explanation: the common blocks, the features and, per target label, one
/// value per feature with the base value.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShapResponse {
    #[serde(flatten)]
    pub base: ExplainBase,
    /// The features (distinct words with `bow`, else occurrences or tokens);
    /// `labels[].values[].feature` indexes this list.
    pub features: Vec<Feature>,
    #[serde(flatten)]
    pub explanation: ShapExplanation,
    /// With `evaluate = true`: per target label (in the order of `targets`), ERASER
    /// comprehensiveness and sufficiency of its attribution at 1, 5, 10, 20 and 50% of the
    /// features and their AOPC. Absent without `evaluate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faithfulness: Option<Vec<Faithfulness>>,
}

/// Explain a prediction with Kernel SHAP: each feature's Shapley value for the target
/// label(s), with `base_value` (every feature removed) and the additivity residual.
///
/// Exact (every coalition of features evaluated) when `2^features <= max_evals` (default
/// 2048: up to 11 features); above, `shap`'s KernelExplainer scheme: the smallest and
/// largest coalition sizes enumerated, the rest sampled in complementary pairs, reproducible
/// from `seed` (drawn and echoed in `params.seed` when absent).
///
/// With `evaluate = true`, `faithfulness` scores each target's values with ERASER
/// comprehensiveness and sufficiency at 1, 5, 10, 20 and 50% of the features and their AOPC,
/// removing the top-ranked features with the request's `mask`: up to 10 extra model rows per
/// target (most are coalitions already evaluated). Without it nothing extra is computed.
#[utoipa::path(
    post,
    path = "/explain/shap",
    tag = "explain",
    request_body(content = ShapRequest, examples(
        ("exact" = (summary = "A short text: exact Shapley values",
            value = json!({"text": TEXT, "seed": 7}))),
        ("sampled" = (summary = "Two labels, 500 coalitions, words masked",
            value = json!({"text": "The plot was thin, the dialogue clumsy, and the ending \
                predictable, but the acting was wonderful.", "top_labels": 2,
                "max_evals": 500, "mask": "mask_token", "seed": 7}))),
    )),
    responses(
        (status = 200, description = "Values per target label, the parameters used (with the \
            seed) and what it cost", body = ShapResponse,
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
                "the body does not have the expected shape: max_evals: invalid type: string \"many\", expected usize",
                "details": {}}})),
        (status = 422, description = "`validation_error` naming the field: empty text or a text \
            without words, text too long without `truncate`, unknown `target`, `max_evals` \
            outside 2..=`limits.max_num_samples` or below the number of features + 1 (when \
            not exact), an unknown `mask` or `features`, a `mask` the tokenizer cannot do",
            body = ErrorBody,
            example = json!({"error": {"code": "validation_error", "message":
                "max_evals must be between 2 and 20000 (got 50000)",
                "details": {"field": "max_evals"}}})),
        BodyErrors, ModelErrors,
    )
)]
pub async fn explain_shap_route(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request: ShapRequest = parse_request(
        body,
        "/explain/shap",
        "text, target, top_labels, truncate, max_evals, seed, bow, mask, features, evaluate",
        |r: &ShapRequest| r.unknown.keys().next().cloned(),
    )?;
    let ShapRequest {
        common,
        params,
        evaluate,
        ..
    } = request;
    let mask = params.mask;
    let max = state.limits.max_num_samples;
    params.validate(max).map_err(perturb_error)?;
    require_words(
        &common.text,
        params.features,
        "Kernel SHAP has no feature to attribute",
    )?;

    let explained = Explained::begin(&state, &common).await?;
    let features = params.feature_set(&common.text, &explained.encoding);
    let encoder = state.encoder.clone();
    let truncate = common.truncate;
    let (explained, features, result) = off_runtime(async move {
        let result = async {
            let explanation = explain_shap(
                &features,
                &encoder,
                truncate,
                &params,
                max,
                &explained.targets,
                &explained.scope,
            )
            .await
            .map_err(perturb_error)?;
            let faithfulness = evaluate::score_if_asked(
                evaluate,
                || {
                    Ok(explanation
                        .labels
                        .iter()
                        .map(|l| (l.label, shap_scores(l, features.len())))
                        .collect())
                },
                &features,
                &encoder,
                mask,
                truncate,
                &explained.scope,
            )
            .await?;
            Ok::<_, ApiError>((explanation, faithfulness))
        }
        .await;
        (explained, features, result)
    })
    .await?;
    let (explanation, faithfulness) = result?;
    let body = ShapResponse {
        base: explained.base(),
        features: features.features().to_vec(),
        explanation,
        faithfulness,
    };
    Ok(explained.respond(&body))
}

/// The documented 200 example.
fn response_example() -> Value {
    example_with(json!({
        "labels": [{
            "label": 1,
            "probability": 0.92,
            "base_value": 0.47,
            "values": [
                {"feature": 0, "text": "The", "value": 0.01},
                {"feature": 1, "text": "acting", "value": 0.05},
                {"feature": 2, "text": "was", "value": -0.01},
                {"feature": 3, "text": "wonderful", "value": 0.4}
            ],
            "additivity_residual": 5.6e-17
        }],
        "exact": true,
        "params": {"max_evals": 2048, "seed": 7, "bow": true, "mask": "remove",
                   "features": "words"},
        "coalitions": 16,
        "distinct_rows": 16
    }))
}
