//! `POST /explain/attention`: attention matrices of the text (METHODS.md, Attention).
//!
//! The handler checks the selection and the size of the answer against
//! `limits.max_attention_values` before any model work, runs the text once as a row that asks
//! the model for its attentions (batched with other requests' rows; rows that do not ask do
//! not pay for them), and hands them to [`crate::explain::attention::compute`] on a blocking
//! thread (rollout multiplies `L x L` matrices).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, BodyErrors, ErrorBody, ModelErrors};
use super::evaluate;
use super::explain::{resolve_targets, ExplainBase, ExplainCommon, Explained};
use super::extract::ApiJson;
use super::scope::RequestScope;
use super::AppState;
use crate::explain::attention::{
    attention_rows, axis, compute, rollout_attribution, Aggregation, AttentionError,
    AttentionParams, AttentionResult, AttentionSelection, Pooling,
};
use crate::explain::faithfulness::Faithfulness;
use crate::explain::features::{split_words, Feature, FeatureSet, Removal};
use crate::explain::gradients::per_feature;

/// The common explanation fields plus the attention parameters, in one flat object.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(examples(
    json!({"text": "The plot was thin but the acting was wonderful.", "granularity": "words"}),
    json!({"text": "The plot was thin but the acting was wonderful.", "layers": [0, 5],
           "aggregation": "none", "precision": 6})
))]
pub struct AttentionRequest {
    #[serde(flatten)]
    pub common: ExplainCommon,
    #[serde(flatten)]
    pub params: AttentionParams,
    /// Add ERASER faithfulness scores (`faithfulness`) of attention rollout's pooled row (the
    /// row the classifier head reads; METHODS.md), summed over each word occurrence's tokens,
    /// whatever `aggregation` returns: words are removed from the text (`remove`) and the
    /// unmasked model is scored, so it cannot be combined with `mask`. Up to 10 extra model
    /// rows per target.
    #[serde(default)]
    pub evaluate: bool,
    /// Whatever the two parts above did not take: a misspelt parameter is refused (400)
    /// rather than silently replaced by its default.
    #[serde(flatten)]
    #[schema(ignore)]
    unknown: BTreeMap<String, Value>,
}

/// Attention matrices with the axis that labels them.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttentionResponse {
    #[serde(flatten)]
    pub base: ExplainBase,
    #[serde(flatten)]
    pub attention: AttentionResult,
    /// The parameters used, defaults filled in.
    pub params: AttentionSelection,
    /// With `evaluate = true`: the word occurrences rollout's attribution was summed over
    /// (`faithfulness` ranks these).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<Feature>>,
    /// With `evaluate = true`: per target label (in the order of `targets`), ERASER
    /// comprehensiveness and sufficiency of rollout's pooled row at 1, 5, 10, 20 and 50% of
    /// the words and their AOPC. Absent without `evaluate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faithfulness: Option<Vec<Faithfulness>>,
}

/// Attention matrices: selected layers and heads, aggregated over heads (`none`, `mean`,
/// `max`) or rolled out through every layer (`rollout`, with the row the classifier head
/// reads), at token or word granularity.
///
/// `axis` labels the rows and columns (`values[i][j]` is the attention from entry `i` to
/// entry `j`). At word granularity, attention to a word is the sum over its pieces and from a
/// word the mean over them, so rows still sum to 1; special tokens and punctuation stay as
/// their own entries. Numbers are rounded to `precision` decimals, and a request whose answer
/// would hold more than `limits.max_attention_values` numbers is refused before any model
/// work (the default, every layer with heads averaged, fits a 512-token text).
///
/// With `evaluate = true`, `faithfulness` scores attention rollout's pooled row (the row the
/// classifier head reads: `[CLS]`, or the mean row for mean-pooling heads), summed over each
/// word occurrence's tokens (`features`), whatever `aggregation` returns, with ERASER
/// comprehensiveness and sufficiency at 1, 5, 10, 20 and 50% of the words and their AOPC
/// (words removed from the text): up to 10 extra model rows per target. Without it nothing
/// extra is computed.
#[utoipa::path(
    post,
    path = "/explain/attention",
    tag = "explain",
    request_body(content = AttentionRequest, examples(
        ("default" = (summary = "Every layer, heads averaged, per token",
            value = json!({"text": "The movie was great."}))),
        ("words" = (summary = "Two layers, heads averaged, per word",
            value = json!({"text": "Unbelievably good acting.", "layers": [0, 5],
                "granularity": "words"}))),
        ("heads" = (summary = "Every head of the last layer, six decimals",
            value = json!({"text": "The movie was great.", "layers": [5], "aggregation": "none",
                "precision": 6}))),
        ("rollout" = (summary = "Attention rollout and its pooled row, per word",
            value = json!({"text": "The movie was great.", "aggregation": "rollout",
                "granularity": "words"}))),
    )),
    responses(
        (status = 200, description = "The matrices, their axis, the parameters used and what \
            it cost", body = AttentionResponse,
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
                "the body does not have the expected shape: invalid type: string \"all\", expected a sequence",
                "details": {}}})),
        (status = 422, description = "`validation_error` naming the field: empty text, text \
            too long without `truncate`, unknown `target`, a layer or head that does not exist \
            (`layers`, `heads`, `mask`), an unknown `aggregation` or `granularity`, `precision` \
            out of 0..8, `layers`/`heads` with `rollout`, an answer larger than \
            `limits.max_attention_values` (the message says how to narrow it), or `evaluate` \
            with `mask` or on a text without words", body = ErrorBody,
            example = json!({"error": {"code": "validation_error", "message":
                "this request would return 18874368 attention values (512 x 512 per matrix), over the limit of 2000000 (limits.max_attention_values); narrow it with fewer \"layers\" (e.g. [0, 5]), or fewer \"heads\", or \"aggregation\": \"mean\", or \"granularity\": \"words\", or a shorter text",
                "details": {"field": "aggregation"}}})),
        BodyErrors, ModelErrors,
    )
)]
pub async fn explain_attention(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<AttentionRequest>,
) -> Result<Response, ApiError> {
    reject_unknown(&request.unknown)?;
    let AttentionRequest {
        common,
        params,
        evaluate,
        ..
    } = request;
    let selection = params.resolve(&state.model).map_err(attention_error)?;
    if evaluate && !selection.mask.is_empty() {
        return Err(ApiError::validation(
            "evaluate",
            "evaluate scores rollout of the unmasked model, so it cannot be combined with \
             \"mask\"; drop one of them",
        ));
    }
    if evaluate && !common.text.trim().is_empty() && split_words(&common.text).is_empty() {
        return Err(ApiError::validation(
            "evaluate",
            "the text has no words (runs of letters, digits or _) to remove, so faithfulness \
             is undefined; drop \"evaluate\"",
        ));
    }

    let scope = RequestScope::begin(&state)?;
    let encoding = scope.encode("text", &common.text, common.truncate)?;
    let entries = axis(&common.text, &encoding, selection.granularity);
    let cap = state.limits.max_attention_values;
    if selection.value_count(entries.len()) > cap {
        let field = match selection.aggregation {
            Aggregation::None => "aggregation",
            _ => "layers",
        };
        return Err(ApiError::validation(
            field,
            selection.over_cap_message(entries.len(), cap),
        ));
    }

    let mut outputs = scope
        .evaluate(attention_rows(&encoding, &selection))
        .await?;
    let recorded = outputs
        .pop()
        .ok_or_else(|| ApiError::Internal("the engine returned no output".into()))?;
    // With heads masked the plain original came first; otherwise the recorded row is it.
    let original = outputs.pop().unwrap_or_else(|| recorded.clone());
    let attentions = recorded
        .attentions
        .clone()
        .ok_or_else(|| ApiError::Internal("the model returned no attentions".into()))?;
    let targets = resolve_targets(&state.model, &common, &original.probabilities)?;
    let explained = Explained {
        scope,
        encoding,
        original,
        targets,
    };

    let pooling = Pooling::of(&state.model);
    let used = selection.clone();
    let (attention, attentions) = tokio::task::spawn_blocking(move || {
        let result = compute(&attentions, &used, &entries, pooling);
        (result, attentions)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the attention task failed: {e}")))?;
    let (features, faithfulness) = if evaluate {
        let words = FeatureSet::words(&common.text, &explained.encoding, false);
        let rollout: Vec<f64> = rollout_attribution(&attentions, pooling)
            .into_iter()
            .map(f64::from)
            .collect();
        let scores = per_feature(&words, &rollout);
        let attributions: Vec<(usize, Vec<f64>)> = explained
            .targets
            .iter()
            .map(|&t| (t, scores.clone()))
            .collect();
        let faithfulness = evaluate::score(
            &words,
            &state.encoder,
            Removal::Remove,
            common.truncate,
            &attributions,
            &explained.scope,
        )
        .await?;
        (Some(words.features().to_vec()), Some(faithfulness))
    } else {
        (None, None)
    };
    let body = AttentionResponse {
        base: explained.base(),
        attention,
        params: selection,
        features,
        faithfulness,
    };
    Ok(explained.respond(&body))
}

fn attention_error(error: AttentionError) -> ApiError {
    ApiError::validation(error.field, error.message)
}

fn reject_unknown(unknown: &BTreeMap<String, Value>) -> Result<(), ApiError> {
    match unknown.keys().next() {
        None => Ok(()),
        Some(field) => Err(ApiError::InvalidJson(format!(
            "the body does not have the expected shape: unknown field `{field}`; \
             POST /explain/attention takes text, target, top_labels, truncate, layers, heads, \
             aggregation, granularity, precision, mask, evaluate"
        ))),
    }
}

/// The documented 200 example: a real response of the default model, shortened.
fn response_example() -> Value {
    serde_json::json!({
        "model": {"id": "all-MiniLM-L6-v2", "sha256": "53aa5117...", "head": "zero-shot:sentiment",
                  "version": "0.1.0"},
        "prediction": {"label": "positive",
                       "probabilities": {"negative": 2.9778014e-06, "positive": 0.999997},
                       "ranked": [{"label": "positive", "probability": 0.999997},
                                  {"label": "negative", "probability": 2.9778014e-06}],
                       "tokens": 4, "truncated": false},
        "targets": [1],
        "tokens": [{"id": 101, "text": "[CLS]", "start": 0, "end": 0, "special": true},
                   {"id": 2307, "text": "great", "start": 0, "end": 5, "special": false},
                   {"id": 999, "text": "!", "start": 5, "end": 6, "special": false},
                   {"id": 102, "text": "[SEP]", "start": 0, "end": 0, "special": true}],
        "usage": {"model_evaluations": 1, "tokens_evaluated": 4, "cache_hits": 0,
                  "queue_ms": 0.47, "inference_ms": 19.465, "total_ms": 20.849},
        "axis": [
            {"text": "[CLS]", "tokens": [0], "start": 0, "end": 0, "utf16_start": 0,
             "utf16_end": 0, "special": true, "word": false},
            {"text": "Great", "tokens": [1], "start": 0, "end": 5, "utf16_start": 0,
             "utf16_end": 5, "special": false, "word": true},
            {"text": "!", "tokens": [2], "start": 5, "end": 6, "utf16_start": 5,
             "utf16_end": 6, "special": false, "word": false},
            {"text": "[SEP]", "tokens": [3], "start": 0, "end": 0, "utf16_start": 0,
             "utf16_end": 0, "special": true, "word": false}
        ],
        "matrices": [{"layer": 5, "values": [
            [0.8259, 0.1125, 0.0283, 0.0333],
            [0.8594, 0.1111, 0.0124, 0.0172],
            [0.958, 0.0256, 0.0092, 0.0072],
            [0.9467, 0.0281, 0.0196, 0.0055]
        ]}],
        "values": 16,
        "params": {"layers": [5], "heads": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
                   "aggregation": "mean", "granularity": "words", "precision": 4, "mask": []}
    })
}
