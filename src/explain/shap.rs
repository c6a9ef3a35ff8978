//! Kernel SHAP (Lundberg & Lee 2017) as METHODS.md defines it.
//!
//! The value of a coalition `S` (the features kept) is `v(S) = f_j(x_S)`. The Shapley values
//! are the solution of a weighted least-squares problem over coalitions with the Shapley
//! kernel `(d - 1) / (C(d, s) s (d - s))` as weights, where the empty and the full coalition
//! are constraints: `phi_0 = v(empty)` and `sum phi = v(full) - v(empty)`.
//!
//! * `2^d <= max_evals`: every coalition is evaluated with its exact kernel weight, and the
//!   solution is exactly the Shapley value (tested against the brute-force formula).
//! * Otherwise [`plan_coalitions`] follows `shap`'s `KernelExplainer`: subset sizes in
//!   complementary pairs `(s, d - s)` from the ends inwards are enumerated, with their exact
//!   kernel weights, while a pair's coalitions fit in what is left of the budget at its share
//!   of the kernel mass; the rest of the budget is spent on coalitions of the remaining sizes
//!   drawn in proportion to their kernel mass, each with its complement, repeats merged by
//!   counting; the counts are then scaled so that the sampled part carries exactly the kernel
//!   mass of the sizes it stands for. (Sampling proportionally to the kernel *and* weighting by
//!   it would count the kernel twice.)
//!
//! The constraints are enforced by elimination, as `shap` does: with `z_d` the last feature's
//! indicator, `y = v(S) - v(empty) - z_d (v(full) - v(empty))` is regressed (weighted, no
//! intercept) on `z_k - z_d` for `k < d`, and `phi_d` is what the sum constraint leaves.
//! Every target label shares one design, so the normal matrix is factorised once.

use nalgebra::{Cholesky, DMatrix, DVector, SVD};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::features::{FeatureKind, FeatureSet, Removal};
use super::perturbation::{binomial, check_targets, combinations, invalid, no_features};
use super::perturbation::{MaskRunner, PerturbError};
use super::regression::gram_matrix;
use super::Evaluator;
use crate::model::{Encoding, TextEncoder};

/// Default `max_evals`: exact up to 11 features.
pub const DEFAULT_MAX_EVALS: usize = 2048;
/// Seeds are drawn below 2^53 so that they survive a round trip through a JavaScript number.
const MAX_DRAWN_SEED: u64 = 1 << 53;

/// Parameters of `POST /explain/shap` (METHODS.md, Kernel SHAP). Every field is optional.
#[derive(Clone, Debug, PartialEq, Deserialize, ToSchema)]
#[serde(default)]
#[schema(examples(
    json!({"max_evals": 2048, "seed": 7}),
    json!({"max_evals": 500, "bow": false, "mask": "mask_token"})
))]
pub struct ShapParams {
    /// Coalitions evaluated at most, the empty and the full one included (at most the
    /// server's `max_num_samples`, at least the number of features + 1). When
    /// `2^features <= max_evals` every coalition is evaluated and the values are exact.
    #[schema(default = 2048, minimum = 2, example = 2048)]
    pub max_evals: usize,
    /// Seed of the coalition sampler (used only when the values are not exact); absent: one
    /// is drawn and echoed in `params.seed`.
    #[schema(example = 7)]
    pub seed: Option<u64>,
    /// One feature per distinct word, removing every occurrence, instead of one per
    /// occurrence. Ignored for token features.
    #[schema(default = true)]
    pub bow: bool,
    /// How a removed feature is hidden from the model.
    #[schema(default = "remove")]
    pub mask: Removal,
    /// Words or model tokens.
    #[schema(default = "words")]
    pub features: FeatureKind,
}

impl Default for ShapParams {
    fn default() -> Self {
        Self {
            max_evals: DEFAULT_MAX_EVALS,
            seed: None,
            bow: true,
            mask: Removal::Remove,
            features: FeatureKind::Words,
        }
    }
}

impl ShapParams {
    /// Checks the parameters that do not depend on the text; `max_num_samples` is the
    /// server's cap on `max_evals`.
    pub fn validate(&self, max_num_samples: usize) -> Result<(), PerturbError> {
        if !(2..=max_num_samples).contains(&self.max_evals) {
            return Err(invalid(
                "max_evals",
                format!(
                    "max_evals must be between 2 and {max_num_samples} (got {})",
                    self.max_evals
                ),
            ));
        }
        Ok(())
    }

    /// The features these parameters ask for.
    pub fn feature_set(&self, text: &str, encoding: &Encoding) -> FeatureSet {
        FeatureSet::new(self.features, text, encoding, self.bow)
    }
}

/// The coalitions of the regression (besides the empty and the full one) and their weights.
#[derive(Clone, Debug, PartialEq)]
pub struct CoalitionPlan {
    /// `masks[i][k]`: feature `k` is in coalition `i` (kept). Distinct.
    pub masks: Vec<Vec<bool>>,
    /// Regression weight of each coalition (any common scale).
    pub weights: Vec<f64>,
    /// Every coalition enumerated with its exact kernel weight.
    pub exact: bool,
    /// Coalition sizes enumerated completely (with their complements).
    pub enumerated_sizes: Vec<usize>,
    /// Distinct coalitions drawn at random (complements included).
    pub sampled: usize,
    /// Random draws made (repeats included).
    pub draws: usize,
}

/// The Shapley kernel weight of one coalition of size `s` out of `d`, `0 < s < d`.
pub fn kernel_weight(d: usize, s: usize) -> f64 {
    (d as f64 - 1.0) / (binomial(d, s) * s as f64 * (d - s) as f64)
}

/// Whether `max_evals` covers every one of the `2^d` coalitions.
pub fn is_exact(d: usize, max_evals: usize) -> bool {
    d < usize::BITS as usize - 1 && (1usize << d) <= max_evals
}

/// The coalitions for `d` features under a budget of `max_evals` evaluations (the empty and
/// the full coalition included), as the module documentation describes. Needs `d >= 2`.
pub fn plan_coalitions(d: usize, max_evals: usize, seed: u64) -> CoalitionPlan {
    assert!(d >= 2, "a regression needs at least two features");
    let mut plan = CoalitionPlan {
        masks: Vec::new(),
        weights: Vec::new(),
        exact: false,
        enumerated_sizes: Vec::new(),
        sampled: 0,
        draws: 0,
    };
    let subset = |members: &[usize], complement: bool| {
        let mut m = vec![complement; d];
        for &k in members {
            m[k] = !complement;
        }
        m
    };

    if is_exact(d, max_evals) {
        plan.exact = true;
        for s in 1..d {
            let w = kernel_weight(d, s);
            for c in combinations(d, s) {
                plan.masks.push(subset(&c, false));
                plan.weights.push(w);
            }
        }
        plan.enumerated_sizes = (1..d).collect();
        return plan;
    }

    // shap's KernelExplainer, with sizes counted on the smaller side of each pair.
    let num_subset_sizes = d / 2; // ceil((d - 1) / 2)
    let num_paired = (d - 1) / 2; // floor((d - 1) / 2)
    let paired = |s: usize| s <= num_paired;
    let mut weight_vector: Vec<f64> = (1..=num_subset_sizes)
        .map(|s| {
            let w = (d as f64 - 1.0) / (s as f64 * (d - s) as f64);
            if paired(s) {
                2.0 * w
            } else {
                w
            }
        })
        .collect();
    let total: f64 = weight_vector.iter().sum();
    weight_vector.iter_mut().for_each(|w| *w /= total);

    let budget = max_evals - 2;
    let mut left = budget as f64;
    let mut remaining = weight_vector.clone();
    let mut num_full = 0;
    for s in 1..=num_subset_sizes {
        let mut nsubsets = binomial(d, s);
        if paired(s) {
            nsubsets *= 2.0;
        }
        if left * remaining[s - 1] / nsubsets < 1.0 - 1e-8 {
            break;
        }
        num_full += 1;
        left -= nsubsets;
        if remaining[s - 1] < 1.0 {
            let scale = 1.0 - remaining[s - 1];
            remaining.iter_mut().for_each(|w| *w /= scale);
        }
        let mut w = weight_vector[s - 1] / binomial(d, s);
        if paired(s) {
            w /= 2.0;
        }
        for c in combinations(d, s) {
            plan.masks.push(subset(&c, false));
            plan.weights.push(w);
            if paired(s) {
                plan.masks.push(subset(&c, true));
                plan.weights.push(w);
            }
        }
        plan.enumerated_sizes.push(s);
        if paired(s) {
            plan.enumerated_sizes.push(d - s);
        }
    }
    plan.enumerated_sizes.sort_unstable();

    let fixed = plan.masks.len();
    let mut samples_left = budget.saturating_sub(fixed);
    if num_full == num_subset_sizes || samples_left == 0 {
        return plan;
    }
    // Sizes num_full+1 ..= num_subset_sizes, in proportion to their kernel mass; a paired size
    // yields two coalitions per draw, hence the halving.
    let mut draw_weights: Vec<f64> = (num_full + 1..=num_subset_sizes)
        .map(|s| {
            let w = weight_vector[s - 1];
            if paired(s) {
                w / 2.0
            } else {
                w
            }
        })
        .collect();
    let sum: f64 = draw_weights.iter().sum();
    draw_weights.iter_mut().for_each(|w| *w /= sum);

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut index: std::collections::HashMap<Vec<bool>, usize> = Default::default();
    let max_draws = 4 * samples_left;
    while samples_left > 0 && plan.draws < max_draws {
        plan.draws += 1;
        let s = num_full + 1 + draw_size(&draw_weights, &mut rng);
        let mut mask = vec![false; d];
        for k in rand::seq::index::sample(&mut rng, d, s) {
            mask[k] = true;
        }
        let new = match index.get(&mask) {
            Some(&at) => {
                plan.weights[at] += 1.0;
                if paired(s) {
                    // The complement was added right after its coalition.
                    plan.weights[at + 1] += 1.0;
                }
                false
            }
            None => {
                index.insert(mask.clone(), plan.masks.len());
                plan.masks.push(mask.clone());
                plan.weights.push(1.0);
                samples_left -= 1;
                true
            }
        };
        if new && samples_left > 0 && paired(s) {
            plan.masks.push(mask.iter().map(|k| !k).collect());
            plan.weights.push(1.0);
            samples_left -= 1;
        }
    }
    plan.sampled = plan.masks.len() - fixed;
    // The sampled coalitions stand for the kernel mass of the sizes not enumerated.
    let weight_left: f64 = weight_vector[num_full..].iter().sum();
    let counted: f64 = plan.weights[fixed..].iter().sum();
    if counted > 0.0 {
        let scale = weight_left / counted;
        plan.weights[fixed..].iter_mut().for_each(|w| *w *= scale);
    }
    plan
}

/// An index drawn with the given probabilities (summing to 1).
fn draw_size(probabilities: &[f64], rng: &mut ChaCha8Rng) -> usize {
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for (i, p) in probabilities.iter().enumerate() {
        acc += p;
        if u < acc {
            return i;
        }
    }
    probabilities.len() - 1
}

/// The constrained weighted least-squares fit of one plan, shared by every target.
pub struct ShapSolver {
    d: usize,
    /// Coalition indicators, `n x d`.
    z: DMatrix<f64>,
    /// `X' W` with `X = z_k - z_d` (`k < d`), `(d - 1) x n`.
    xt_w: DMatrix<f64>,
    factor: Factor,
}

enum Factor {
    Cholesky(Cholesky<f64, nalgebra::Dyn>),
    /// A singular normal matrix (too few distinct coalitions): minimum-norm least squares.
    Svd(SVD<f64, nalgebra::Dyn, nalgebra::Dyn>, f64),
}

impl ShapSolver {
    pub fn new(masks: &[Vec<bool>], weights: &[f64]) -> Self {
        assert_eq!(masks.len(), weights.len(), "one weight per coalition");
        let n = masks.len();
        let d = masks.first().map_or(0, Vec::len);
        assert!(d >= 2, "a regression needs at least two features");
        let ind = |b: bool| if b { 1.0 } else { 0.0 };
        let z = DMatrix::from_fn(n, d, |i, k| ind(masks[i][k]));
        // Rows scaled by sqrt(w): the Gram matrix of `xs` is X' W X.
        let xs = DMatrix::from_fn(n, d - 1, |i, k| {
            weights[i].max(0.0).sqrt() * (ind(masks[i][k]) - ind(masks[i][d - 1]))
        });
        let gram = gram_matrix(&xs);
        let xt_w = DMatrix::from_fn(d - 1, n, |k, i| {
            weights[i] * (ind(masks[i][k]) - ind(masks[i][d - 1]))
        });
        let factor = match Cholesky::new(gram.clone()) {
            Some(ch) => Factor::Cholesky(ch),
            None => {
                let svd = SVD::new(gram, true, true);
                let eps = svd.singular_values.max() * (d as f64) * f64::EPSILON;
                Factor::Svd(svd, eps)
            }
        };
        Self { d, z, xt_w, factor }
    }

    /// Shapley values of one target from the coalitions' values `v`, `v(empty)` and `v(full)`.
    pub fn solve(&self, v: &[f64], v_empty: f64, v_full: f64) -> Vec<f64> {
        let d = self.d;
        let total = v_full - v_empty;
        let y = DVector::from_fn(v.len(), |i, _| v[i] - v_empty - self.z[(i, d - 1)] * total);
        let rhs = &self.xt_w * y;
        let beta = match &self.factor {
            Factor::Cholesky(ch) => ch.solve(&rhs),
            Factor::Svd(svd, eps) => svd.solve(&rhs, *eps).expect("SVD computed with U and V"),
        };
        let mut phi: Vec<f64> = beta.iter().copied().collect();
        phi.push(total - phi.iter().sum::<f64>());
        phi
    }
}

/// One feature's Shapley value.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ShapValue {
    /// Index into the response's `features`.
    pub feature: usize,
    /// The word (or token text).
    pub text: String,
    pub value: f64,
}

/// The explanation of one target label.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ShapLabel {
    /// Label index.
    pub label: usize,
    /// The model's probability of this label for the text, `f_j(x) = v(full)`.
    pub probability: f64,
    /// `phi_0 = v(empty)`: the probability with every feature removed.
    pub base_value: f64,
    /// One value per feature, in feature order; they sum to `probability - base_value`.
    pub values: Vec<ShapValue>,
    /// `|base_value + sum of values - probability|`: zero up to rounding.
    pub additivity_residual: f64,
}

/// How the coalitions were chosen when the values are not exact.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ShapSampling {
    /// Coalition sizes enumerated completely, with exact kernel weights.
    pub enumerated_sizes: Vec<usize>,
    /// Distinct coalitions drawn at random (complements included).
    pub sampled_coalitions: usize,
    /// Random draws made, repeats included (repeats add weight, not evaluations).
    pub draws: usize,
}

/// Every parameter as actually used: sending them back reproduces the explanation.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ShapParamsUsed {
    pub max_evals: usize,
    pub seed: u64,
    pub bow: bool,
    pub mask: Removal,
    pub features: FeatureKind,
}

/// What `POST /explain/shap` computes (the API layer adds model, prediction, tokens,
/// features and usage).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(examples(json!({
    "labels": [{
        "label": 1,
        "probability": 0.92,
        "base_value": 0.48,
        "values": [
            {"feature": 0, "text": "The", "value": 0.01},
            {"feature": 1, "text": "acting", "value": 0.05},
            {"feature": 2, "text": "was", "value": -0.02},
            {"feature": 3, "text": "wonderful", "value": 0.40}
        ],
        "additivity_residual": 1.1e-16
    }],
    "exact": true,
    "params": {"max_evals": 2048, "seed": 7, "bow": true, "mask": "remove", "features": "words"},
    "coalitions": 16,
    "distinct_rows": 16
})))]
pub struct ShapExplanation {
    /// One entry per target label, in the order asked.
    pub labels: Vec<ShapLabel>,
    /// Whether every coalition was evaluated (`2^features <= max_evals`): the values are then
    /// the exact Shapley values.
    pub exact: bool,
    /// Present when not exact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<ShapSampling>,
    pub params: ShapParamsUsed,
    /// Distinct coalitions evaluated, the empty and the full one included.
    pub coalitions: usize,
    /// Distinct model inputs evaluated (different coalitions can give one input).
    pub distinct_rows: usize,
}

/// Explains `targets` (label indices) of the text behind `features` with Kernel SHAP.
///
/// `features` must come from [`ShapParams::feature_set`]; `encoder` and `truncate` are those
/// that encoded the text; `max_num_samples` is the server's cap on `max_evals`.
pub async fn explain_shap<E: Evaluator>(
    features: &FeatureSet,
    encoder: &TextEncoder,
    truncate: bool,
    params: &ShapParams,
    max_num_samples: usize,
    targets: &[usize],
    evaluator: &E,
) -> Result<ShapExplanation, PerturbError> {
    params.validate(max_num_samples)?;
    let d = features.len();
    if d == 0 {
        return Err(no_features(
            features,
            "Kernel SHAP has no feature to attribute",
        ));
    }
    if params.max_evals < d + 1 && !is_exact(d, params.max_evals) {
        return Err(invalid(
            "max_evals",
            format!(
                "max_evals must be at least {} for a text with {d} features (got {}): the \
                 regression has {d} unknowns",
                d + 1,
                params.max_evals
            ),
        ));
    }
    let seed = params
        .seed
        .unwrap_or_else(|| rand::rng().random_range(0..MAX_DRAWN_SEED));
    let mut runner = MaskRunner::new(features, encoder, params.mask, truncate, evaluator)?;

    let plan = (d >= 2).then(|| plan_coalitions(d, params.max_evals, seed));
    let mut masks = vec![vec![true; d], vec![false; d]];
    if let Some(p) = &plan {
        masks.extend(p.masks.iter().cloned());
    }
    let slots = runner.run(&masks).await?;
    let full = runner.output(slots[0]);
    check_targets(targets, full.len())?;
    let solver = plan.as_ref().map(|p| ShapSolver::new(&p.masks, &p.weights));

    let labels = targets
        .iter()
        .map(|&j| {
            let value = |slot: usize| runner.output(slot)[j] as f64;
            let (v_full, v_empty) = (value(slots[0]), value(slots[1]));
            let phi = match &solver {
                Some(solver) => {
                    let v: Vec<f64> = slots[2..].iter().map(|&s| value(s)).collect();
                    solver.solve(&v, v_empty, v_full)
                }
                None => vec![v_full - v_empty],
            };
            let residual = (v_empty + phi.iter().sum::<f64>() - v_full).abs();
            ShapLabel {
                label: j,
                probability: v_full,
                base_value: v_empty,
                values: phi
                    .into_iter()
                    .enumerate()
                    .map(|(k, value)| ShapValue {
                        feature: k,
                        text: features.features()[k].text.clone(),
                        value,
                    })
                    .collect(),
                additivity_residual: residual,
            }
        })
        .collect();

    let exact = plan.as_ref().is_none_or(|p| p.exact);
    let sampling = plan.as_ref().filter(|p| !p.exact).map(|p| ShapSampling {
        enumerated_sizes: p.enumerated_sizes.clone(),
        sampled_coalitions: p.sampled,
        draws: p.draws,
    });
    Ok(ShapExplanation {
        labels,
        exact,
        sampling,
        params: ShapParamsUsed {
            max_evals: params.max_evals,
            seed,
            bow: features.bow(),
            mask: params.mask,
            features: features.kind(),
        },
        coalitions: runner.distinct_masks(),
        distinct_rows: runner.distinct_rows(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute-force Shapley values of a set function over `d` players.
    fn shapley(d: usize, v: impl Fn(&[bool]) -> f64) -> Vec<f64> {
        let fact = |n: usize| (1..=n).map(|k| k as f64).product::<f64>();
        (0..d)
            .map(|i| {
                let mut phi = 0.0;
                for bits in 0..(1usize << d) {
                    if bits & (1 << i) != 0 {
                        continue;
                    }
                    let s: Vec<bool> = (0..d).map(|k| bits & (1 << k) != 0).collect();
                    let mut with = s.clone();
                    with[i] = true;
                    let size = s.iter().filter(|&&b| b).count();
                    phi += fact(size) * fact(d - size - 1) / fact(d) * (v(&with) - v(&s));
                }
                phi
            })
            .collect()
    }

    /// A set function with interactions: products and a max.
    fn game(m: &[bool]) -> f64 {
        let x: Vec<f64> = m.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect();
        0.3 + 0.5 * x[0] - 0.2 * x[1] + 0.7 * x[0] * x[2] - 0.4 * x[1] * x[3] * x[4]
            + 0.25 * x[5].max(x[6])
            + x.iter()
                .skip(7)
                .enumerate()
                .map(|(k, v)| 0.05 * k as f64 * v)
                .sum::<f64>()
    }

    fn solve_plan(plan: &CoalitionPlan, d: usize) -> Vec<f64> {
        let solver = ShapSolver::new(&plan.masks, &plan.weights);
        let v: Vec<f64> = plan.masks.iter().map(|m| game(m)).collect();
        solver.solve(&v, game(&vec![false; d]), game(&vec![true; d]))
    }

    #[test]
    fn exact_plan_gives_the_shapley_values() {
        for d in [7, 8, 11] {
            let plan = plan_coalitions(d, 1 << d, 0);
            assert!(plan.exact);
            assert_eq!(plan.masks.len(), (1 << d) - 2);
            let phi = solve_plan(&plan, d);
            let want = shapley(d, game);
            for (a, b) in phi.iter().zip(&want) {
                assert!((a - b).abs() < 1e-10, "{phi:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn budget_just_below_exact_enumerates_all_but_samples_the_middle() {
        // d = 10: 1022 middle coalitions; a budget of 1000 cannot hold them all.
        let d = 10;
        let plan = plan_coalitions(d, 1000, 3);
        assert!(!plan.exact);
        assert!(plan.masks.len() <= 998);
        assert!(plan.enumerated_sizes.contains(&1) && plan.enumerated_sizes.contains(&9));
        assert!(!plan.enumerated_sizes.contains(&5));
        // Distinct coalitions, never empty or full.
        let set: std::collections::HashSet<&Vec<bool>> = plan.masks.iter().collect();
        assert_eq!(set.len(), plan.masks.len());
        assert!(plan
            .masks
            .iter()
            .all(|m| m.iter().any(|&b| b) && m.iter().any(|&b| !b)));
        // The weights carry exactly the kernel mass of every size (normalised to sum 1).
        let total: f64 = plan.weights.iter().sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
    }

    #[test]
    fn sampled_estimate_approaches_the_truth() {
        let d = 14;
        let want = shapley(d, game);
        let err = |max_evals: usize, seed: u64| {
            let plan = plan_coalitions(d, max_evals, seed);
            let phi = solve_plan(&plan, d);
            phi.iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max)
        };
        let small: f64 = (0..5).map(|s| err(200, s)).sum::<f64>() / 5.0;
        let large: f64 = (0..5).map(|s| err(4000, s)).sum::<f64>() / 5.0;
        assert!(large < small, "error {large} at 4000 vs {small} at 200");
        assert!(large < 0.02, "{large}");
    }

    /// The sampled part must carry the kernel through its draws only: averaged over many
    /// seeds the estimate converges on the Shapley values. Weighting the draws by the kernel
    /// as well (counting it twice) leaves a bias that averaging does not remove.
    #[test]
    fn sampled_estimate_is_centred_on_the_truth() {
        let d = 14;
        let want = shapley(d, game);
        let runs = 64;
        let mut mean = vec![0.0; d];
        for seed in 0..runs {
            let phi = solve_plan(&plan_coalitions(d, 300, seed), d);
            for (m, p) in mean.iter_mut().zip(&phi) {
                *m += p / runs as f64;
            }
        }
        let bias = mean
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        eprintln!("largest bias over {runs} seeds: {bias}");
        assert!(bias < 0.01, "{bias}");
    }

    #[test]
    fn same_seed_same_plan() {
        assert_eq!(plan_coalitions(14, 500, 9), plan_coalitions(14, 500, 9));
        assert_ne!(
            plan_coalitions(14, 500, 9).masks,
            plan_coalitions(14, 500, 10).masks
        );
    }

    #[test]
    fn validation_names_the_field() {
        let p = ShapParams {
            max_evals: 1,
            ..Default::default()
        };
        assert!(matches!(
            p.validate(20_000),
            Err(PerturbError::Invalid { field, .. }) if field == "max_evals"
        ));
        let p = ShapParams {
            max_evals: 30_000,
            ..Default::default()
        };
        assert!(p.validate(20_000).is_err());
        assert!(ShapParams::default().validate(20_000).is_ok());
    }
}
