//! Faithfulness of an attribution (ERASER, DeYoung et al. 2020; METHODS.md, "Faithfulness").
//!
//! With the features ranked by score (descending; ties keep feature order):
//! * `comprehensiveness(k) = f_j(x) - f_j(x without the top k% features)`
//! * `sufficiency(k) = f_j(x) - f_j(only the top k% features)`
//!
//! for `k` in {1, 5, 10, 20, 50} percent, each rounded up to at least one feature, and
//! `aopc_* = (sum over the five bins) / 6` as ERASER defines it. Removal uses the request's
//! strategy through the [`Perturber`]; token-level attributions are summed per word first
//! ([`super::gradients::per_feature`]). All rows of all targets go to the evaluator in one
//! call: the original row is a cache hit, and rows shared between targets (or between methods,
//! in a comparison) run once.

use serde::Serialize;
use utoipa::ToSchema;

use super::features::{FeatureError, Perturber};
use super::Evaluator;
use crate::model::Row;

/// The ERASER bins, in percent of the features.
pub const BINS_PERCENT: [u32; 5] = [1, 5, 10, 20, 50];

/// One bin's scores.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct FaithfulnessBin {
    /// `k`, in percent.
    pub percent: u32,
    /// Features removed (comprehensiveness) or kept (sufficiency): `ceil(k% of d)`, at least 1.
    pub features: usize,
    pub comprehensiveness: f64,
    pub sufficiency: f64,
}

/// ERASER scores of one attribution for one target.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Faithfulness {
    pub target: usize,
    /// `f_j(x)`, the target's probability on the original text.
    pub original: f64,
    pub bins: Vec<FaithfulnessBin>,
    /// Sum of the bins' comprehensiveness over 6 (higher: more faithful).
    pub aopc_comprehensiveness: f64,
    /// Sum of the bins' sufficiency over 6 (lower: more faithful).
    pub aopc_sufficiency: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum FaithfulnessError<E: std::error::Error + 'static> {
    #[error("faithfulness needs at least one feature (word); the text has none")]
    NoFeatures,
    #[error("{got} scores for {expected} features")]
    ScoreCount { expected: usize, got: usize },
    #[error(transparent)]
    Feature(#[from] FeatureError),
    #[error(transparent)]
    Eval(E),
}

/// Number of features of each bin for `d` features.
pub fn bin_sizes(d: usize) -> Vec<usize> {
    BINS_PERCENT
        .iter()
        .map(|&p| ((p as usize * d).div_ceil(100)).clamp(1, d.max(1)))
        .collect()
}

/// Feature indices by descending score; ties (and NaN) keep feature order.
pub fn ranking(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    order
}

/// ERASER scores for several `(target, scores per feature)` attributions over the features of
/// `perturber`, evaluated in one call.
pub async fn faithfulness<E: Evaluator>(
    perturber: &Perturber<'_>,
    attributions: &[(usize, Vec<f64>)],
    evaluator: &E,
) -> Result<Vec<Faithfulness>, FaithfulnessError<E::Error>> {
    let d = perturber.features().len();
    if d == 0 {
        return Err(FaithfulnessError::NoFeatures);
    }
    let sizes = bin_sizes(d);
    // Row 0: the original; then per attribution, per bin: without top k, only top k.
    let mut rows: Vec<Row> = vec![perturber.perturb(&vec![true; d])?.row];
    for (_, scores) in attributions {
        if scores.len() != d {
            return Err(FaithfulnessError::ScoreCount {
                expected: d,
                got: scores.len(),
            });
        }
        let order = ranking(scores);
        for &k in &sizes {
            let mut without = vec![true; d];
            let mut only = vec![false; d];
            for &f in &order[..k] {
                without[f] = false;
                only[f] = true;
            }
            rows.push(perturber.perturb(&without)?.row);
            rows.push(perturber.perturb(&only)?.row);
        }
    }
    let outputs = evaluator
        .evaluate(rows)
        .await
        .map_err(FaithfulnessError::Eval)?;
    let per_attribution = 2 * sizes.len();
    Ok(attributions
        .iter()
        .enumerate()
        .map(|(i, &(target, _))| {
            let p = |row: usize| outputs[row].probabilities[target] as f64;
            let original = p(0);
            let bins: Vec<FaithfulnessBin> = BINS_PERCENT
                .iter()
                .zip(&sizes)
                .enumerate()
                .map(|(b, (&percent, &features))| {
                    let at = 1 + i * per_attribution + 2 * b;
                    FaithfulnessBin {
                        percent,
                        features,
                        comprehensiveness: original - p(at),
                        sufficiency: original - p(at + 1),
                    }
                })
                .collect();
            let norm = (BINS_PERCENT.len() + 1) as f64;
            Faithfulness {
                target,
                original,
                aopc_comprehensiveness: bins.iter().map(|b| b.comprehensiveness).sum::<f64>()
                    / norm,
                aopc_sufficiency: bins.iter().map(|b| b.sufficiency).sum::<f64>() / norm,
                bins,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_round_up_to_at_least_one_feature() {
        assert_eq!(bin_sizes(1), vec![1, 1, 1, 1, 1]);
        assert_eq!(bin_sizes(7), vec![1, 1, 1, 2, 4]);
        assert_eq!(bin_sizes(20), vec![1, 1, 2, 4, 10]);
        assert_eq!(bin_sizes(101), vec![2, 6, 11, 21, 51]);
    }

    #[test]
    fn ranking_is_descending_and_stable() {
        assert_eq!(ranking(&[0.1, 0.5, -1.0, 0.5]), vec![1, 3, 0, 2]);
    }
}
