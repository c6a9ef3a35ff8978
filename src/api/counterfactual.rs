//! `POST /explain/counterfactual`: user edits and substitutions evaluated, and a flip search
//! (METHODS.md, Counterfactuals). The handler validates before any model work, runs the text
//! once ([`Explained::begin`]) and hands the features to [`explain_counterfactual`] with the
//! request's scope as the evaluator and as the encoder of edited texts (so they meet the same
//! limits and errors as `/predict`), off the async workers.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{ApiError, BodyErrors, ErrorBody, ModelErrors};
use super::explain::{ExplainBase, ExplainCommon, Explained};
use super::extract::ApiJson;
use super::perturbation::{example_with, off_runtime, parse_request, perturb_error};
use super::AppState;
use crate::explain::counterfactual::{
    explain_counterfactual, CounterfactualExplanation, CounterfactualParams,
};
use crate::explain::features::Feature;
use crate::explain::perturbation::PerturbError;

const TEXT: &str = "The acting was wonderful.";

/// The common explanation fields plus the counterfactuals to evaluate, all in one flat
/// object. Give at least one of `edits`, `substitutions` and `flip_search`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(examples(
    json!({"text": "The acting was wonderful.", "edits": ["The acting was dreadful."]}),
    json!({"text": "The acting was wonderful.",
           "substitutions": [{"feature": 3, "replacements": ["fine", "dreadful"]},
                             {"span": {"start": 4, "end": 10}, "replacements": ["plot"]}],
           "combinations": true, "flip_search": {}})
))]
pub struct CounterfactualRequest {
    #[serde(flatten)]
    pub common: ExplainCommon,
    #[serde(flatten)]
    pub params: CounterfactualParams,
    /// Whatever the two parts above did not take: refused rather than ignored.
    #[serde(flatten)]
    #[schema(ignore)]
    unknown: BTreeMap<String, Value>,
}

/// Counterfactuals: the common blocks, the features, every evaluated text and the flip
/// search's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CounterfactualResponse {
    #[serde(flatten)]
    pub base: ExplainBase,
    /// The features (distinct words with `bow`, else occurrences or tokens):
    /// `substitutions[].feature` and `flip_search.features` index this list.
    pub features: Vec<Feature>,
    #[serde(flatten)]
    pub explanation: CounterfactualExplanation,
}

/// Modify the text and observe the prediction: alternative texts, substitutions (singly and
/// in combination) and a search for a small set of words whose removal flips the label.
///
/// `substitutions[].span` offsets are UTF-8 bytes (the `start`/`end` of feature spans).
/// The flip search is exact (a smallest set) with at most 12 features when `2^features - 1`
/// fits in `flip_search.max_evals`, else greedy in order of occlusion scores (or the given
/// `attribution`) and pruned; the answer says which, and says when the cap stopped it.
/// Deterministic: no seed.
#[utoipa::path(
    post,
    path = "/explain/counterfactual",
    tag = "explain",
    request_body(content = CounterfactualRequest, examples(
        ("edits" = (summary = "Alternative texts",
            value = json!({"text": TEXT, "edits": ["The acting was dreadful.", "The acting was fine."]}))),
        ("substitutions" = (summary = "A word and a byte span replaced, singly and combined",
            value = json!({"text": TEXT,
                "substitutions": [{"feature": 3, "replacements": ["fine", "dreadful"]},
                                  {"span": {"start": 4, "end": 10}, "replacements": ["plot"]}],
                "combinations": true}))),
        ("flip_search" = (summary = "The smallest set of words whose removal flips the label",
            value = json!({"text": TEXT, "flip_search": {"strategy": "auto", "max_evals": 4096}}))),
    )),
    responses(
        (status = 200, description = "Every evaluated text, the flip search's answer, the \
            parameters used and what it cost", body = CounterfactualResponse,
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
                "the body does not have the expected shape: edits: invalid type: string \"x\", expected a sequence",
                "details": {}}})),
        (status = 422, description = "`validation_error` naming the field: empty text or a text \
            without words, text too long without `truncate`, unknown `target`, none of `edits`, \
            `substitutions` and `flip_search`, an empty or too long edit (`edits[i]`), a \
            substitution without replacements, with both or neither of `feature` and `span`, \
            a feature index out of range or a span off the text or inside a character \
            (`substitutions[i].feature`, `substitutions[i].span`), overlapping substitutions \
            with `combinations`, more texts than `limits.max_num_samples`, \
            `flip_search.max_evals` out of range, an `attribution` of the wrong length, an \
            unknown `mask`, `features` or `strategy`", body = ErrorBody,
            example = json!({"error": {"code": "validation_error", "message":
                "substitutions[0].feature is 9, but the text has 4 features (0..4)",
                "details": {"field": "substitutions[0].feature"}}})),
        BodyErrors, ModelErrors,
    )
)]
pub async fn explain_counterfactual_route(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request: CounterfactualRequest = parse_request(
        body,
        "/explain/counterfactual",
        "text, target, top_labels, truncate, edits, substitutions, combinations, \
         max_combinations, flip_search, bow, mask, features",
        |r: &CounterfactualRequest| r.unknown.keys().next().cloned(),
    )?;
    let CounterfactualRequest { common, params, .. } = request;
    let max = state.limits.max_num_samples;
    params.validate(max).map_err(perturb_error)?;

    let explained = Explained::begin(&state, &common).await?;
    let features = params.feature_set(&common.text, &explained.encoding);
    let encoder = state.encoder.clone();
    let truncate = common.truncate;
    let (explained, features, result) = off_runtime(async move {
        // Edited texts meet the same limits and errors as the request's own text.
        let encode = |field: &str, text: &str| {
            explained
                .scope
                .encode(field, text, truncate)
                .map_err(|e| PerturbError::Evaluate(Box::new(e)))
        };
        let result = explain_counterfactual(
            &features,
            &encoder,
            truncate,
            &params,
            max,
            &explained.targets,
            &explained.scope,
            encode,
        )
        .await;
        (explained, features, result)
    })
    .await?;
    let explanation = result.map_err(perturb_error)?;
    let body = CounterfactualResponse {
        base: explained.base(),
        features: features.features().to_vec(),
        explanation,
    };
    Ok(explained.respond(&body))
}

/// The documented 200 example.
fn response_example() -> Value {
    example_with(json!({
        "counterfactuals": [
            {"kind": "edit", "edit": 0, "text": "The acting was dreadful.",
             "probabilities": [0.81, 0.19], "label": 0, "flipped": true, "deltas": [0.73]},
            {"kind": "substitution", "applied": [{"substitution": 0, "replacement": 0}],
             "text": "The acting was fine.", "probabilities": [0.3, 0.7], "label": 1,
             "flipped": false, "deltas": [0.22]}
        ],
        "flip_search": {
            "strategy": "exact", "found": true, "features": [3], "words": ["wonderful"],
            "result": {"text": "The acting was .", "probabilities": [0.58, 0.42], "label": 0,
                       "flipped": true, "deltas": [0.5]},
            "minimal": true, "alternatives": 0, "searched_size": 1, "complete": true,
            "evaluations": 4, "max_evals": 4096,
            "message": "removing 1 feature flips the label; no smaller set does (0 other sets of 1 flip as well)"
        },
        "params": {"combinations": false, "max_combinations": 256, "bow": true,
                   "mask": "remove", "features": "words"},
        "distinct_rows": 7
    }))
}
