//! Comparing attribution methods on one text (METHODS.md, "Faithfulness": "a compare endpoint
//! runs several methods on one text and ranks them by these scores").
//!
//! What is not HTTP-specific lives here:
//!
//! * [`CompareMethod`]: the methods a comparison can run, by their API names.
//! * [`MemoEvaluator`]: an [`Evaluator`] that remembers every row it evaluated during one
//!   comparison, so the original text is run once and rows that several methods (or their
//!   faithfulness removals) share are run once per request, whatever the row cache does.
//! * The per-feature score of each method's result ([`lime_scores`], [`shap_scores`],
//!   [`occlusion_scores`], [`random_scores`]): one number per feature, the attribution that
//!   faithfulness ranks.
//! * [`rank_methods`]: the ranking by AOPC comprehensiveness, with its tie-break.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::faithfulness::Faithfulness;
use super::lime::LimeLabel;
use super::occlusion::{OcclusionExplanation, OcclusionMode};
use super::shap::ShapLabel;
use super::{Evaluator, Usage};
use crate::model::{Row, RowOutput};

/// A method a comparison can run. Every one yields one score per word feature and target.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CompareMethod {
    /// LIME's surrogate weights (features the surrogate did not keep score 0).
    Lime,
    /// Kernel SHAP values.
    Shap,
    /// Leave-one-out drops `f_j(x) - f_j(x without the word)`.
    Occlusion,
    /// Integrated gradients, summed over each word's tokens.
    IntegratedGradients,
    /// Saliency `||dF/dx_t||`, summed over each word's tokens.
    Saliency,
    /// Gradient x input, summed over each word's tokens.
    GradXInput,
    /// Attention rollout's pooled row (the row the head reads), summed over each word's tokens.
    /// The same for every target: rollout does not depend on the label.
    AttentionRollout,
    /// A seeded random ranking: the floor a useful method should clear.
    Random,
}

impl CompareMethod {
    /// Every method, in the order the API documents them.
    pub const ALL: [CompareMethod; 8] = [
        Self::Lime,
        Self::Shap,
        Self::Occlusion,
        Self::IntegratedGradients,
        Self::Saliency,
        Self::GradXInput,
        Self::AttentionRollout,
        Self::Random,
    ];

    /// What a comparison runs when the request does not say.
    pub const DEFAULT: [CompareMethod; 5] = [
        Self::Lime,
        Self::Shap,
        Self::Occlusion,
        Self::IntegratedGradients,
        Self::AttentionRollout,
    ];

    /// The API name (`integrated_gradients`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Lime => "lime",
            Self::Shap => "shap",
            Self::Occlusion => "occlusion",
            Self::IntegratedGradients => "integrated_gradients",
            Self::Saliency => "saliency",
            Self::GradXInput => "grad_x_input",
            Self::AttentionRollout => "attention_rollout",
            Self::Random => "random",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether the method needs the model's input gradients.
    pub fn needs_gradients(self) -> bool {
        matches!(
            self,
            Self::IntegratedGradients | Self::Saliency | Self::GradXInput
        )
    }

    /// Every API name, for error messages.
    pub fn names() -> String {
        Self::ALL
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Remembers the output of every row evaluated through it, for the length of one comparison:
/// a row seen before (by an earlier method, or by faithfulness) is answered from memory and
/// counted in [`MemoEvaluator::shared_rows`]; only the rest goes to the inner evaluator, in
/// one call. Unbounded on purpose: it lives for one request, whose rows are already bounded
/// by the methods' own limits.
pub struct MemoEvaluator<'a, E> {
    inner: &'a E,
    memo: Mutex<HashMap<Row, RowOutput>>,
    shared: AtomicUsize,
}

impl<'a, E: Evaluator> MemoEvaluator<'a, E> {
    pub fn new(inner: &'a E) -> Self {
        Self {
            inner,
            memo: Mutex::new(HashMap::new()),
            shared: AtomicUsize::new(0),
        }
    }

    /// Remembers a row evaluated elsewhere (the original text, run before the comparison).
    pub fn remember(&self, row: Row, output: RowOutput) {
        self.memo.lock().expect("memo lock").insert(row, output);
    }

    /// Distinct rows answered from memory so far (each counted once per call that asked).
    pub fn shared_rows(&self) -> usize {
        self.shared.load(Ordering::SeqCst)
    }

    /// Distinct rows remembered.
    pub fn remembered(&self) -> usize {
        self.memo.lock().expect("memo lock").len()
    }
}

impl<E: Evaluator> Evaluator for MemoEvaluator<'_, E> {
    type Error = E::Error;

    async fn evaluate(&self, rows: Vec<Row>) -> Result<Vec<RowOutput>, E::Error> {
        let missing: Vec<Row> = {
            let memo = self.memo.lock().expect("memo lock");
            let mut asked: HashSet<&Row> = HashSet::new();
            let mut missing = Vec::new();
            for row in &rows {
                if !asked.insert(row) {
                    continue;
                }
                if memo.contains_key(row) {
                    self.shared.fetch_add(1, Ordering::SeqCst);
                } else {
                    missing.push(row.clone());
                }
            }
            missing
        };
        if !missing.is_empty() {
            let outputs = self.inner.evaluate(missing.clone()).await?;
            let mut memo = self.memo.lock().expect("memo lock");
            memo.extend(missing.into_iter().zip(outputs));
        }
        let memo = self.memo.lock().expect("memo lock");
        Ok(rows
            .iter()
            .map(|row| {
                memo.get(row)
                    .cloned()
                    // The inner evaluator answers one output per row (the trait's contract).
                    .expect("every row was evaluated or remembered")
            })
            .collect())
    }

    fn usage(&self) -> Usage {
        self.inner.usage()
    }
}

/// LIME's weights as one score per feature; features the surrogate did not keep score 0.
pub fn lime_scores(label: &LimeLabel, features: usize) -> Vec<f64> {
    let mut scores = vec![0.0; features];
    for w in &label.weights {
        if let Some(s) = scores.get_mut(w.feature) {
            *s = w.weight;
        }
    }
    scores
}

/// Kernel SHAP's values as one score per feature.
pub fn shap_scores(label: &ShapLabel, features: usize) -> Vec<f64> {
    let mut scores = vec![0.0; features];
    for v in &label.values {
        if let Some(s) = scores.get_mut(v.feature) {
            *s = v.value;
        }
    }
    scores
}

/// Leave-one-out occlusion's drops for the `target_position`-th target (its index in the
/// explanation's `targets`), one per feature; `None` for sliding windows, whose entries are
/// windows, not features.
pub fn occlusion_scores(
    explanation: &OcclusionExplanation,
    target_position: usize,
    features: usize,
) -> Option<Vec<f64>> {
    if explanation.params.mode != OcclusionMode::LeaveOneOut {
        return None;
    }
    let mut scores = vec![0.0; features];
    for o in &explanation.occlusions {
        let (&[f], Some(&delta)) = (o.features.as_slice(), o.outcome.deltas.get(target_position))
        else {
            return None;
        };
        *scores.get_mut(f)? = delta;
    }
    Some(scores)
}

/// A random ranking of `features`, reproducible from `seed`: a permutation of
/// `features, ..., 1` (distinct scores, so no ties).
pub fn random_scores(features: usize, seed: u64) -> Vec<f64> {
    let mut scores: Vec<f64> = (1..=features).map(|v| v as f64).collect();
    scores.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    scores
}

/// One method's place in the ranking.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct RankedMethod {
    /// 1 for the most faithful.
    pub rank: usize,
    pub method: CompareMethod,
    /// Mean over the targets of the AOPC comprehensiveness (higher: more faithful).
    pub aopc_comprehensiveness: f64,
    /// Mean over the targets of the AOPC sufficiency (lower: more faithful).
    pub aopc_sufficiency: f64,
}

/// Ranks methods by mean AOPC comprehensiveness, descending. Ties (equal comprehensiveness,
/// as two methods that rank the words alike get) go to the lower mean AOPC sufficiency, then
/// to the method listed first in the request. `runs` is in request order.
pub fn rank_methods(runs: &[(CompareMethod, &[Faithfulness])]) -> Vec<RankedMethod> {
    let mean = |scores: &[Faithfulness], f: fn(&Faithfulness) -> f64| {
        if scores.is_empty() {
            f64::NAN
        } else {
            scores.iter().map(f).sum::<f64>() / scores.len() as f64
        }
    };
    let mut ranked: Vec<(usize, RankedMethod)> = runs
        .iter()
        .enumerate()
        .map(|(i, (method, scores))| {
            (
                i,
                RankedMethod {
                    rank: 0,
                    method: *method,
                    aopc_comprehensiveness: mean(scores, |f| f.aopc_comprehensiveness),
                    aopc_sufficiency: mean(scores, |f| f.aopc_sufficiency),
                },
            )
        })
        .collect();
    ranked.sort_by(|(ia, a), (ib, b)| {
        b.aopc_comprehensiveness
            .total_cmp(&a.aopc_comprehensiveness)
            .then(a.aopc_sufficiency.total_cmp(&b.aopc_sufficiency))
            .then(ia.cmp(ib))
    });
    ranked
        .into_iter()
        .enumerate()
        .map(|(position, (_, mut r))| {
            r.rank = position + 1;
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::DirectEvaluator;
    use crate::model::toy::{ToyClassifier, ToyOutput};
    use std::sync::Arc;

    fn faith(comp: f64, suff: f64) -> Faithfulness {
        Faithfulness {
            target: 0,
            original: 1.0,
            bins: Vec::new(),
            aopc_comprehensiveness: comp,
            aopc_sufficiency: suff,
        }
    }

    #[test]
    fn ranking_is_by_comprehensiveness_then_sufficiency_then_request_order() {
        let a = [faith(0.2, 0.1)];
        let b = [faith(0.5, 0.3)];
        let c = [faith(0.5, 0.2)];
        let d = [faith(0.2, 0.1)];
        let ranked = rank_methods(&[
            (CompareMethod::Random, &a),
            (CompareMethod::Lime, &b),
            (CompareMethod::Shap, &c),
            (CompareMethod::Occlusion, &d),
        ]);
        let order: Vec<(usize, CompareMethod)> =
            ranked.iter().map(|r| (r.rank, r.method)).collect();
        assert_eq!(
            order,
            vec![
                (1, CompareMethod::Shap),
                (2, CompareMethod::Lime),
                (3, CompareMethod::Random),
                (4, CompareMethod::Occlusion),
            ]
        );
        // Means over targets.
        let two = [faith(0.1, 0.4), faith(0.3, 0.0)];
        let r = rank_methods(&[(CompareMethod::Lime, &two)]);
        assert!((r[0].aopc_comprehensiveness - 0.2).abs() < 1e-12);
        assert!((r[0].aopc_sufficiency - 0.2).abs() < 1e-12);
    }

    #[test]
    fn names_round_trip_and_random_scores_are_a_seeded_permutation() {
        for m in CompareMethod::ALL {
            assert_eq!(CompareMethod::parse(m.name()), Some(m));
            let json = serde_json::to_value(m).unwrap();
            assert_eq!(json, m.name());
        }
        assert_eq!(CompareMethod::parse("gradients"), None);
        let a = random_scores(9, 3);
        assert_eq!(a, random_scores(9, 3));
        let mut sorted = a.clone();
        sorted.sort_by(f64::total_cmp);
        assert_eq!(sorted, (1..=9).map(f64::from).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn memo_runs_each_distinct_row_once_and_counts_what_it_shared() {
        let toy = Arc::new(ToyClassifier::new(
            vec!["a".into(), "b".into()],
            HashMap::from([(5, vec![1.0, 0.0])]),
            vec![0.0, 0.0],
            ToyOutput::Softmax,
        ));
        let direct = DirectEvaluator::new(toy.clone());
        let memo = MemoEvaluator::new(&direct);
        let (x, y, z) = (
            Row::new(vec![1, 5, 2]),
            Row::new(vec![1, 2]),
            Row::new(vec![1, 5, 5, 2]),
        );
        let first = memo
            .evaluate(vec![x.clone(), y.clone(), x.clone()])
            .await
            .unwrap();
        assert_eq!(first[0], first[2]);
        assert_eq!(toy.rows_seen(), 2);
        assert_eq!(memo.shared_rows(), 0);
        let second = memo.evaluate(vec![y.clone(), z, x]).await.unwrap();
        assert_eq!(second[0], first[1]);
        assert_eq!(second[2], first[0]);
        assert_eq!(toy.rows_seen(), 3, "only the new row ran");
        assert_eq!(memo.shared_rows(), 2);
        assert_eq!(memo.remembered(), 3);
        assert_eq!(memo.usage().model_evaluations, 3);
    }
}
