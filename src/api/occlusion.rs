//! `POST /explain/occlusion`: leave-one-out and sliding-window perturbations (METHODS.md,
//! Occlusion). The handler validates before any model work, runs the text once
//! ([`Explained::begin`]) and hands the features to [`explain_occlusion`] with the request's
//! scope as the evaluator, off the async workers.

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
use crate::explain::compare::occlusion_scores;
use crate::explain::faithfulness::Faithfulness;
use crate::explain::features::Feature;
use crate::explain::occlusion::{explain_occlusion, OcclusionExplanation, OcclusionParams};

const TEXT: &str = "The acting was wonderful.";

/// The common explanation fields plus occlusion's parameters, all in one flat object.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(examples(
    json!({"text": "The acting was wonderful."}),
    json!({"text": "The acting was wonderful.", "window": 2, "stride": 1, "mask": "mask_token"})
))]
pub struct OcclusionRequest {
    #[serde(flatten)]
    pub common: ExplainCommon,
    #[serde(flatten)]
    pub params: OcclusionParams,
    /// Add ERASER faithfulness scores of each target's attribution (`faithfulness`), the
    /// features removed with this request's `mask`: up to 10 extra model rows per target.
    #[serde(default)]
    pub evaluate: bool,
    /// Whatever the two parts above did not take: refused rather than ignored.
    #[serde(flatten)]
    #[schema(ignore)]
    unknown: BTreeMap<String, Value>,
}

/// An occlusion explanation: the common blocks, the features and one entry per removal.
#[derive(Debug, Serialize, ToSchema)]
pub struct OcclusionResponse {
    #[serde(flatten)]
    pub base: ExplainBase,
    /// The features (distinct words with `bow`, occurrences for windows or without `bow`,
    /// or tokens); `occlusions[].features` indexes this list.
    pub features: Vec<Feature>,
    #[serde(flatten)]
    pub explanation: OcclusionExplanation,
    /// With `evaluate = true`: per target label (in the order of `targets`), ERASER
    /// comprehensiveness and sufficiency of its attribution at 1, 5, 10, 20 and 50% of the
    /// features and their AOPC. Absent without `evaluate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faithfulness: Option<Vec<Faithfulness>>,
}

/// Remove each word (or each window of consecutive words) and report how the prediction
/// changes.
///
/// Per removal: the edited text (with `mask = "remove"`), every label's probability, the
/// drop `f_j(x) - f_j(x')` of each target label, the new predicted label and whether it
/// flipped. Deterministic: no seed.
///
/// With `evaluate = true` (leave-one-out only), `faithfulness` scores each target's drops as
/// an attribution with ERASER comprehensiveness and sufficiency at 1, 5, 10, 20 and 50% of
/// the features and their AOPC, removing the top-ranked features with the request's `mask`:
/// up to 10 extra model rows per target. Without it nothing extra is computed.
#[utoipa::path(
    post,
    path = "/explain/occlusion",
    tag = "explain",
    request_body(content = OcclusionRequest, examples(
        ("leave_one_out" = (summary = "Each word removed in turn",
            value = json!({"text": TEXT}))),
        ("windows" = (summary = "Windows of two words, masked",
            value = json!({"text": TEXT, "window": 2, "stride": 1, "mask": "mask_token"}))),
    )),
    responses(
        (status = 200, description = "One entry per removal, the parameters used and what it cost",
            body = OcclusionResponse,
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
                "the body does not have the expected shape: window: invalid type: string \"3\", expected usize",
                "details": {}}})),
        (status = 422, description = "`validation_error` naming the field: empty text or a text \
            without words, text too long without `truncate`, unknown `target`, `window` or \
            `stride` of 0, `stride` without `window`, more removals than \
            `limits.max_num_samples`, an unknown `mask` or `features`, a `mask` the tokenizer \
            cannot do, `evaluate` with `window`", body = ErrorBody,
            example = json!({"error": {"code": "validation_error", "message":
                "window must be at least 1 (got 0)", "details": {"field": "window"}}})),
        BodyErrors, ModelErrors,
    )
)]
pub async fn explain_occlusion_route(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request: OcclusionRequest = parse_request(
        body,
        "/explain/occlusion",
        "text, target, top_labels, truncate, window, stride, bow, mask, features, \
         evaluate",
        |r: &OcclusionRequest| r.unknown.keys().next().cloned(),
    )?;
    let OcclusionRequest {
        common,
        params,
        evaluate,
        ..
    } = request;
    params.validate().map_err(perturb_error)?;
    if evaluate && params.window.is_some() {
        return Err(ApiError::validation(
            "evaluate",
            "evaluate scores one attribution per feature, which only leave-one-out gives; \
             drop \"window\" (sliding windows) or \"evaluate\"",
        ));
    }
    let mask = params.mask;
    require_words(&common.text, params.features, "there is nothing to occlude")?;

    let explained = Explained::begin(&state, &common).await?;
    let features = params.feature_set(&common.text, &explained.encoding);
    let encoder = state.encoder.clone();
    let truncate = common.truncate;
    let max = state.limits.max_num_samples;
    let (explained, features, result) = off_runtime(async move {
        let result = async {
            let explanation = explain_occlusion(
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
                    let d = features.len();
                    explained
                        .targets
                        .iter()
                        .enumerate()
                        .map(|(i, &t)| occlusion_scores(&explanation, i, d).map(|s| (t, s)))
                        .collect::<Option<Vec<(usize, Vec<f64>)>>>()
                        .ok_or_else(|| {
                            ApiError::Internal("leave-one-out gave no score per feature".into())
                        })
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
    let body = OcclusionResponse {
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
        "occlusions": [
            {"features": [1], "removed": "acting",
             "spans": [{"start": 4, "end": 10, "utf16_start": 4, "utf16_end": 10}],
             "text": "The  was wonderful.", "probabilities": [0.1, 0.9], "label": 1,
             "flipped": false, "deltas": [0.02]},
            {"features": [3], "removed": "wonderful",
             "spans": [{"start": 15, "end": 24, "utf16_start": 15, "utf16_end": 24}],
             "text": "The acting was .", "probabilities": [0.58, 0.42], "label": 0,
             "flipped": true, "deltas": [0.5]}
        ],
        "params": {"mode": "leave_one_out", "window": 1, "stride": 1, "bow": true,
                   "mask": "remove", "features": "words"},
        "flips": 1,
        "distinct_rows": 5
    }))
}
