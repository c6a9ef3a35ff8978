//! What the sampling and perturbation routes (`/explain/lime`, `/explain/occlusion`,
//! `/explain/counterfactual`, `/explain/shap`) share: reading the flat request (unknown fields refused, the failing field
//! named), running the method off the async workers, and mapping [`PerturbError`] to the API's
//! statuses.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;
use crate::explain::features::{split_words, FeatureError, FeatureKind};
use crate::explain::perturbation::PerturbError;
use crate::model::tokenizer::TokenizeError;

/// Reads a request from parsed JSON. A field of the wrong type is 400 naming the field; a
/// keyword field (`mask`, `features`, `strategy`) with a value it does not know is 422 naming
/// the field; a field the route does not take is 400 listing those it does (`unknown` returns
/// the first field the request's catch-all collected).
pub(super) fn parse_request<T: DeserializeOwned>(
    body: Value,
    route: &str,
    fields: &str,
    unknown: impl Fn(&T) -> Option<String>,
) -> Result<T, ApiError> {
    let shape = |message: String| {
        ApiError::InvalidJson(format!(
            "the body does not have the expected shape: {message}"
        ))
    };
    let request = match serde_json::from_value::<T>(body.clone()) {
        Ok(request) => request,
        Err(error) => {
            let Some(object) = body.as_object() else {
                return Err(shape(error.to_string()));
            };
            // serde's error does not say which field failed: find it by trying each alone.
            for (key, value) in object {
                let mut probe = serde_json::Map::new();
                if key != "text" {
                    probe.insert("text".into(), Value::String("x".into()));
                }
                probe.insert(key.clone(), value.clone());
                if let Err(e) = serde_json::from_value::<T>(Value::Object(probe)) {
                    let message = e.to_string();
                    if message.starts_with("unknown variant") {
                        return Err(ApiError::validation(
                            key.as_str(),
                            format!("{key}: {message}"),
                        ));
                    }
                    return Err(shape(format!("{key}: {message}")));
                }
            }
            return Err(shape(error.to_string()));
        }
    };
    if let Some(field) = unknown(&request) {
        return Err(shape(format!(
            "unknown field `{field}`; POST {route} takes {fields}"
        )));
    }
    Ok(request)
}

/// A text without words is refused before any model work (the method would refuse it too).
pub(super) fn require_words(text: &str, kind: FeatureKind, method: &str) -> Result<(), ApiError> {
    if kind == FeatureKind::Words && !text.trim().is_empty() && split_words(text).is_empty() {
        return Err(ApiError::validation(
            "text",
            format!(
                "the text has no words (runs of letters, digits or _), so {method}; use \
                 \"features\": \"tokens\" to work on its tokens"
            ),
        ));
    }
    Ok(())
}

/// Runs `work` on a blocking thread, driven by the current runtime, and waits for it: the
/// perturbation methods tokenize thousands of texts and solve regressions, CPU work that must
/// not stall the async workers. If the waiting future is dropped (the client went away),
/// `work` is dropped at its next await, which takes its queued rows out of the engine.
pub(super) async fn off_runtime<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, ApiError> {
    let handle = tokio::runtime::Handle::current();
    let (alive, gone) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::task::spawn_blocking(move || {
        handle.block_on(async move {
            tokio::select! {
                out = work => Some(out),
                _ = gone => None,
            }
        })
    });
    let joined = task.await;
    drop(alive);
    match joined {
        Ok(Some(out)) => Ok(out),
        Ok(None) => Err(ApiError::Internal(
            "the explanation was cancelled while its request was still waiting".into(),
        )),
        Err(error) => Err(ApiError::Internal(format!(
            "the explanation task failed: {error}"
        ))),
    }
}

/// The methods' errors in the API's statuses; engine failures keep theirs (503, 504), and so
/// do the request scope's own validation errors for edited texts.
pub(super) fn perturb_error(error: PerturbError) -> ApiError {
    match error {
        PerturbError::Invalid { field, message } => ApiError::validation(field, message),
        PerturbError::Features(e @ (FeatureError::NoMaskToken | FeatureError::NoUnkToken)) => {
            ApiError::validation("mask", e.to_string())
        }
        PerturbError::Features(FeatureError::Tokenize(e @ TokenizeError::TooLong { .. })) => {
            ApiError::validation("text", format!("a perturbed text is too long: {e}"))
        }
        PerturbError::Features(e) => ApiError::Internal(format!("perturbation features: {e}")),
        PerturbError::Evaluate(source) => match source.downcast::<ApiError>() {
            Ok(api) => *api,
            Err(other) => ApiError::Internal(format!("perturbation evaluation: {other}")),
        },
    }
}

/// A 200 response's common blocks, shortened, for the documented examples.
pub(super) fn base_example() -> serde_json::Map<String, Value> {
    let v = serde_json::json!({
        "model": {"id": "all-MiniLM-L6-v2", "sha256": "53aa5117...", "head": "zero-shot:sentiment",
                  "version": "0.1.0"},
        "prediction": {"label": "positive", "probabilities": {"negative": 0.08, "positive": 0.92},
                       "ranked": [{"label": "positive", "probability": 0.92},
                                  {"label": "negative", "probability": 0.08}],
                       "tokens": 8, "truncated": false},
        "targets": [1],
        "tokens": [{"id": 101, "text": "[CLS]", "start": 0, "end": 0, "special": true},
                   {"id": 1996, "text": "the", "start": 0, "end": 3, "special": false}],
        "usage": {"model_evaluations": 16, "tokens_evaluated": 101, "cache_hits": 1,
                  "queue_ms": 0.4, "inference_ms": 21.0, "total_ms": 24.5},
        "features": [
            {"text": "The", "spans": [{"start": 0, "end": 3, "utf16_start": 0, "utf16_end": 3}],
             "tokens": [1]},
            {"text": "acting", "spans": [{"start": 4, "end": 10, "utf16_start": 4, "utf16_end": 10}],
             "tokens": [2]},
            {"text": "was", "spans": [{"start": 11, "end": 14, "utf16_start": 11, "utf16_end": 14}],
             "tokens": [3]},
            {"text": "wonderful", "spans": [{"start": 15, "end": 24, "utf16_start": 15, "utf16_end": 24}],
             "tokens": [4]}
        ]
    });
    match v {
        Value::Object(map) => map,
        _ => unreachable!("an object literal"),
    }
}

/// `base_example()` with the method's own fields added.
pub(super) fn example_with(fields: Value) -> Value {
    let mut map = base_example();
    if let Value::Object(extra) = fields {
        map.extend(extra);
    }
    Value::Object(map)
}
