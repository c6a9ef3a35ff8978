//! Response pieces shared by every model-backed route: which model answered, the prediction
//! of a text, and what the request cost.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::model::{ModelInfo, RowOutput};

/// Which model answered: enough to trace and reproduce a stored result.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "all-MiniLM-L6-v2", "sha256": "53aa5117...", "head": "zero-shot:sentiment", "version": "0.1.0"}))]
pub struct ModelRef {
    /// Folder name or hub id the model was loaded from.
    pub id: String,
    /// sha256 of the weights file (hex).
    pub sha256: String,
    /// `classifier` or `zero-shot:<name>`.
    pub head: String,
    /// Version of this service.
    pub version: String,
}

impl ModelRef {
    pub fn of(info: &ModelInfo) -> Self {
        Self {
            id: info.id.clone(),
            sha256: info.sha256.clone(),
            head: info.head.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// One label's probability.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct LabelScore {
    pub label: String,
    pub probability: f32,
}

/// The model's answer for one text.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(example = json!({
    "label": "positive",
    "probabilities": {"negative": 0.08, "positive": 0.92},
    "ranked": [{"label": "positive", "probability": 0.92}, {"label": "negative", "probability": 0.08}],
    "tokens": 12,
    "truncated": false
}))]
pub struct Prediction {
    /// The most probable label.
    pub label: String,
    /// Label name to probability.
    pub probabilities: BTreeMap<String, f32>,
    /// The same, most probable first.
    pub ranked: Vec<LabelScore>,
    /// Tokens the model saw, special tokens included.
    pub tokens: usize,
    /// Whether the text was cut to the maximum length (only with `truncate: true`).
    pub truncated: bool,
}

impl Prediction {
    pub fn new(labels: &[String], output: &RowOutput, tokens: usize, truncated: bool) -> Self {
        let mut ranked: Vec<LabelScore> = labels
            .iter()
            .zip(&output.probabilities)
            .map(|(label, &probability)| LabelScore {
                label: label.clone(),
                probability,
            })
            .collect();
        ranked.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        let label = ranked.first().map(|s| s.label.clone()).unwrap_or_default();
        let probabilities = ranked
            .iter()
            .map(|s| (s.label.clone(), s.probability))
            .collect();
        Self {
            label,
            probabilities,
            ranked,
            tokens,
            truncated,
        }
    }
}

/// What a request cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, ToSchema)]
#[schema(example = json!({"model_evaluations": 742, "tokens_evaluated": 11031, "cache_hits": 0,
    "queue_ms": 3.1, "inference_ms": 412.0, "total_ms": 431.5}))]
pub struct Usage {
    /// Rows the model ran for this request (after removing duplicates and cache hits).
    pub model_evaluations: usize,
    /// Real (unpadded) tokens of those rows.
    pub tokens_evaluated: usize,
    /// Rows answered from the row cache.
    pub cache_hits: usize,
    /// Time spent waiting: admission, queue, other requests' batches.
    pub queue_ms: f64,
    /// Wall time of the model batches that held this request's rows.
    pub inference_ms: f64,
    /// From receiving the request to writing the response.
    pub total_ms: f64,
}
