//! `POST /explain/lime`: LIME word weights per target label (METHODS.md, LIME).
//!
//! The handler only translates: it validates the parameters before any model work, runs the
//! text once ([`Explained::begin`]), hands the features to [`explain_lime`] with the request's
//! scope as the evaluator, and maps [`LimeError`] to the API's statuses. The explanation runs
//! on a blocking thread (tokenizing thousands of perturbed texts and the regression are CPU
//! work that must not stall the async workers), and is dropped, with its queued rows, when
//! the client goes away.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody, ModelErrors};
use super::evaluate;
use super::explain::{ExplainBase, ExplainCommon, Explained};
use super::extract::ApiJson;
use super::perturbation::{off_runtime, parse_request};
use super::AppState;
use crate::explain::compare::lime_scores;
use crate::explain::faithfulness::Faithfulness;
use crate::explain::features::{split_words, Feature, FeatureError, FeatureKind};
use crate::explain::lime::{explain_lime, LimeError, LimeExplanation, LimeParams};
use crate::model::tokenizer::TokenizeError;

/// The common explanation fields plus LIME's parameters, all in one flat object. A field not
/// listed here is refused (400): a misspelt parameter never silently becomes its default.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(examples(
    json!({"text": "The plot was thin but the acting was wonderful.", "target": "positive",
           "num_samples": 1000, "num_features": 3, "seed": 7}),
    json!({"text": "The plot was thin but the acting was wonderful.", "top_labels": 2,
           "num_samples": "auto", "tolerance": 0.05, "num_features": "all",
           "confidence_intervals": true})
))]
pub struct LimeRequest {
    #[serde(flatten)]
    pub common: ExplainCommon,
    #[serde(flatten)]
    pub params: LimeParams,
    /// Add ERASER faithfulness scores of each target's attribution (`faithfulness`), the
    /// features removed with this request's `mask`: up to 10 extra model rows per target.
    #[serde(default)]
    pub evaluate: bool,
    /// Whatever the two parts above did not take: a misspelt parameter is refused rather than
    /// silently replaced by its default.
    #[serde(flatten)]
    #[schema(ignore)]
    unknown: BTreeMap<String, Value>,
}

/// A LIME explanation: the common blocks, the features of the text and, per target label, the
/// surrogate's sorted weights.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimeResponse {
    #[serde(flatten)]
    pub base: ExplainBase,
    /// The features LIME removed and weighed (distinct words with `bow`, else occurrences or
    /// tokens); `weights[].feature` indexes this list.
    pub features: Vec<Feature>,
    #[serde(flatten)]
    pub explanation: LimeExplanation,
    /// With `evaluate = true`: per target label (in the order of `targets`), ERASER
    /// comprehensiveness and sufficiency of its attribution at 1, 5, 10, 20 and 50% of the
    /// features and their AOPC. Absent without `evaluate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faithfulness: Option<Vec<Faithfulness>>,
}

/// Explain a prediction with LIME: perturb the text by removing words, fit a weighted linear
/// surrogate, report its weights.
///
/// Same request with the same `seed`, same weights (within 1e-6), whatever else the server
/// is doing and whether the row cache is on or off; without a `seed` one is drawn and echoed
/// in `params.seed`. Repeated perturbations are evaluated once (`distinct_rows`), and rows
/// seen recently by any request are answered from the row cache (`usage.cache_hits`).
///
/// With `evaluate = true`, `faithfulness` scores each target's weights (a word the surrogate
/// did not keep scores 0) with ERASER comprehensiveness and sufficiency at 1, 5, 10, 20 and
/// 50% of the features and their AOPC, removing the top-ranked features with the request's
/// `mask`: up to 10 extra model rows per target. Without it nothing extra is computed.
#[utoipa::path(
    post,
    path = "/explain/lime",
    tag = "explain",
    request_body(content = LimeRequest, examples(
        ("fixed" = (summary = "1000 samples, 3 features, fixed seed",
            value = json!({"text": "The plot was thin but the acting was wonderful.",
                "target": "positive", "num_samples": 1000, "num_features": 3, "seed": 7}))),
        ("adaptive" = (summary = "Adaptive sampling with 95% intervals, the two top labels",
            value = json!({"text": "The plot was thin but the acting was wonderful.",
                "top_labels": 2, "num_samples": "auto", "tolerance": 0.05,
                "num_features": "all", "confidence_intervals": true}))),
    )),
    responses(
        (status = 200, description = "Weights per target label, the parameters used (with the \
            seed) and what it cost", body = LimeResponse,
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
                "the body does not have the expected shape: kernel_width: invalid type: \
                string \"wide\", expected f64",
                "details": {}}})),
        (status = 413, description = "`payload_too_large`: body over `server.max_body_bytes`",
            body = ErrorBody,
            example = json!({"error": {"code": "payload_too_large", "message":
                "the request body is larger than the limit of 1048576 bytes \
                (server.max_body_bytes)",
                "details": {"limit_bytes": 1048576}}})),
        (status = 415, description = "`unsupported_media_type`: not `application/json`",
            body = ErrorBody,
            example = json!({"error": {"code": "unsupported_media_type", "message":
                "the request body must be JSON with the header Content-Type: application/json",
                "details": {}}})),
        (status = 422, description = "`validation_error` naming the field: empty text or a text \
            without words, text too long without `truncate`, unknown `target`, `num_samples` \
            over `limits.max_num_samples`, a parameter out of range, an unknown \
            `feature_selection`, `mask` or `features`, `evaluate` on a text whose perturbed \
            form grows too long", body = ErrorBody,
            example = json!({"error": {"code": "validation_error", "message":
                "num_samples must be between 2 and 20000 (got 50000)",
                "details": {"field": "num_samples"}}})),
        ModelErrors,
    )
)]
pub async fn explain_lime_route(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request: LimeRequest = parse_request(
        body,
        "/explain/lime",
        "text, target, top_labels, truncate, num_samples, tolerance, num_features, \
         kernel_width, feature_selection, bow, mask, features, seed, confidence_intervals, \
         evaluate",
        |r: &LimeRequest| r.unknown.keys().next().cloned(),
    )?;
    let LimeRequest {
        common,
        params,
        evaluate,
        ..
    } = request;
    let max_num_samples = state.limits.max_num_samples;
    params.validate(max_num_samples).map_err(lime_error)?;
    // `explain_lime` refuses a text without words as well; checked here so that it costs no
    // model run. (Empty text is left to `Explained::begin`, which says so.)
    let no_words = params.features == FeatureKind::Words
        && !common.text.trim().is_empty()
        && split_words(&common.text).is_empty();
    if no_words {
        return Err(ApiError::validation(
            "text",
            "the text has no words (runs of letters, digits or _), so LIME has no feature to \
             weigh; use \"features\": \"tokens\" to weigh its tokens",
        ));
    }

    let explained = Explained::begin(&state, &common).await?;
    let features = params.feature_set(&common.text, &explained.encoding);
    let encoder = state.encoder.clone();
    let truncate = common.truncate;
    let (explained, features, result) = off_runtime(async move {
        let result = async {
            let explanation = explain_lime(
                &features,
                &encoder,
                truncate,
                &params,
                max_num_samples,
                &explained.targets,
                &explained.scope,
            )
            .await
            .map_err(lime_error)?;
            let faithfulness = evaluate::score_if_asked(
                evaluate,
                || {
                    Ok(explanation
                        .labels
                        .iter()
                        .map(|l| (l.label, lime_scores(l, features.len())))
                        .collect())
                },
                &features,
                &encoder,
                params.mask,
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
    let body = LimeResponse {
        base: explained.base(),
        features: features.features().to_vec(),
        explanation,
        faithfulness,
    };
    Ok(explained.respond(&body))
}

/// LIME's errors in the API's statuses; engine failures keep theirs (503, 504).
fn lime_error(error: LimeError) -> ApiError {
    match error {
        LimeError::Invalid { field, message } => ApiError::validation(field, message),
        LimeError::Features(e @ (FeatureError::NoMaskToken | FeatureError::NoUnkToken)) => {
            ApiError::validation("mask", e.to_string())
        }
        LimeError::Features(FeatureError::Tokenize(e @ TokenizeError::TooLong { .. })) => {
            ApiError::validation("text", format!("a perturbed text is too long: {e}"))
        }
        LimeError::Features(e) => ApiError::Internal(format!("LIME features: {e}")),
        LimeError::Evaluate(source) => match source.downcast::<ApiError>() {
            Ok(api) => *api,
            Err(other) => ApiError::Internal(format!("LIME evaluation: {other}")),
        },
    }
}

/// The documented 200 example: a real response of the default model to the request example
/// "fixed", numbers rounded.
fn response_example() -> Value {
    // Every word is ASCII, so UTF-16 offsets equal byte offsets.
    fn span(start: usize, end: usize) -> Value {
        json!({"start": start, "end": end, "utf16_start": start, "utf16_end": end})
    }
    let words = [
        ("The", vec![(0, 3)], vec![1]),
        ("plot", vec![(4, 8)], vec![2]),
        ("was", vec![(9, 12), (33, 36)], vec![3, 8]),
        ("thin", vec![(13, 17)], vec![4]),
        ("but", vec![(18, 21)], vec![5]),
        ("the", vec![(22, 25)], vec![6]),
        ("acting", vec![(26, 32)], vec![7]),
        ("wonderful", vec![(37, 46)], vec![9]),
    ];
    let features: Vec<Value> = words
        .iter()
        .map(|(text, spans, tokens)| {
            let spans: Vec<Value> = spans.iter().map(|&(s, e)| span(s, e)).collect();
            json!({"text": text, "spans": spans, "tokens": tokens})
        })
        .collect();
    let weight = |feature: usize, weight: f64| {
        let mut w = json!({"feature": feature, "weight": weight});
        w["text"] = features[feature]["text"].clone();
        w["spans"] = features[feature]["spans"].clone();
        w["tokens"] = features[feature]["tokens"].clone();
        w
    };
    fn token(id: u32, text: &str, start: usize, end: usize, special: bool) -> Value {
        json!({"id": id, "text": text, "start": start, "end": end, "special": special})
    }
    json!({
        "model": {"id": "all-MiniLM-L6-v2", "sha256": "53aa5117...",
                  "head": "zero-shot:sentiment", "version": "0.1.0"},
        "prediction": {
            "label": "positive",
            "probabilities": {"negative": 0.2766, "positive": 0.7234},
            "ranked": [{"label": "positive", "probability": 0.7234},
                       {"label": "negative", "probability": 0.2766}],
            "tokens": 12,
            "truncated": false
        },
        "targets": [1],
        "tokens": [
            token(101, "[CLS]", 0, 0, true), token(1996, "the", 0, 3, false),
            token(5436, "plot", 4, 8, false), token(2001, "was", 9, 12, false),
            token(4857, "thin", 13, 17, false), token(2021, "but", 18, 21, false),
            token(1996, "the", 22, 25, false), token(3772, "acting", 26, 32, false),
            token(2001, "was", 33, 36, false), token(6919, "wonderful", 37, 46, false),
            token(1012, ".", 46, 47, false), token(102, "[SEP]", 0, 0, true)
        ],
        "usage": {"model_evaluations": 234, "tokens_evaluated": 1771, "cache_hits": 0,
                  "queue_ms": 0.7, "inference_ms": 409.4, "total_ms": 413.8},
        "features": features,
        "labels": [{
            "label": 1,
            "probability": 0.7234,
            "weights": [weight(7, 0.666), weight(3, -0.1295), weight(4, -0.0904)],
            "intercept": 0.3922,
            "score": 0.8994,
            "local_pred": 0.8382
        }],
        "params": {"num_samples": 1000, "num_features": 3, "kernel_width": 25.0,
                   "feature_selection": "forward_selection", "bow": true, "mask": "remove",
                   "features": "words", "seed": 7, "confidence_intervals": false},
        "distinct_rows": 233
    })
}
