//! `evaluate = true`, written once for every route that yields a per-feature attribution
//! (`/explain/lime`, `/shap`, `/occlusion`, `/gradients`, `/attention`) and for
//! `/explain/compare`: ERASER comprehensiveness and sufficiency of each target's attribution
//! (METHODS.md, "Faithfulness"), its rows run through the request's evaluator (the engine,
//! under the request's deadline and usage), and the errors in the API's statuses.
//!
//! A request without `evaluate` never reaches this module, so it costs nothing.

use super::error::ApiError;
use crate::explain::faithfulness::{faithfulness, Faithfulness, FaithfulnessError};
use crate::explain::features::{FeatureError, FeatureSet, Removal};
use crate::explain::Evaluator;
use crate::model::TextEncoder;

/// ERASER scores of `(target, one score per feature of features)` attributions, all their
/// rows in one evaluator call. `removal` and `truncate` must be the request's (the same
/// strategy the method used, the same treatment of an over-long text).
pub async fn score<E: Evaluator<Error = ApiError>>(
    features: &FeatureSet,
    encoder: &TextEncoder,
    removal: Removal,
    truncate: bool,
    attributions: &[(usize, Vec<f64>)],
    evaluator: &E,
) -> Result<Vec<Faithfulness>, ApiError> {
    let perturber = features
        .perturber(encoder, removal, truncate)
        .map_err(feature_error)?;
    faithfulness(&perturber, attributions, evaluator)
        .await
        .map_err(faithfulness_error)
}

/// [`score`] when the request asked for `evaluate`, else `None`; the attributions are built
/// only when asked.
pub async fn score_if_asked<E: Evaluator<Error = ApiError>>(
    asked: bool,
    attributions: impl FnOnce() -> Result<Vec<(usize, Vec<f64>)>, ApiError>,
    features: &FeatureSet,
    encoder: &TextEncoder,
    removal: Removal,
    truncate: bool,
    evaluator: &E,
) -> Result<Option<Vec<Faithfulness>>, ApiError> {
    if !asked {
        return Ok(None);
    }
    let attributions = attributions()?;
    score(
        features,
        encoder,
        removal,
        truncate,
        &attributions,
        evaluator,
    )
    .await
    .map(Some)
}

/// Faithfulness errors in the API's statuses; the evaluator's own errors keep theirs.
pub fn faithfulness_error(error: FaithfulnessError<ApiError>) -> ApiError {
    match error {
        FaithfulnessError::NoFeatures => ApiError::validation(
            "evaluate",
            "the text has no words (runs of letters, digits or _) to remove, so faithfulness \
             is undefined; drop \"evaluate\"",
        ),
        FaithfulnessError::Eval(e) => e,
        FaithfulnessError::Feature(e) => feature_error(e),
        other @ FaithfulnessError::ScoreCount { .. } => ApiError::Internal(other.to_string()),
    }
}

/// A removal the tokenizer cannot do is the client's to fix; a text that grows too long when
/// edited too; anything else is a bug.
pub fn feature_error(error: FeatureError) -> ApiError {
    match error {
        FeatureError::NoMaskToken | FeatureError::NoUnkToken => {
            ApiError::validation("mask", error.to_string())
        }
        FeatureError::Tokenize(e @ crate::model::tokenizer::TokenizeError::TooLong { .. }) => {
            ApiError::validation("text", format!("a perturbed text is too long: {e}"))
        }
        other => ApiError::Internal(other.to_string()),
    }
}
