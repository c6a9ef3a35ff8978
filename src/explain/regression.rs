//! Weighted ridge regression and feature selection, exactly as Python `lime` 0.2 runs them on
//! top of scikit-learn (METHODS.md, LIME steps 5 and 6).
//!
//! scikit-learn's `Ridge(alpha, fit_intercept=True).fit(Z, y, sample_weight=w)` centres `Z`
//! and `y` by their `w`-weighted means, scales every row by `sqrt(w)`, solves
//! `(Zs' Zs + alpha I) beta = Zs' ys` and recovers the intercept as `mean(y) - mean(Z) . beta`.
//! The centring does not depend on which columns are kept, so [`WeightedDesign`] centres and
//! scales the whole design matrix once and computes its Gram matrix once: every fit after that
//! (one per candidate of forward selection, one per target label) only picks a sub-block.
//!
//! `lasso_path` (lime's LARS path) is not offered: no maintained Rust crate implements LARS,
//! and it is never lime's default.

use nalgebra::{Cholesky, DMatrix, DVector, SVD};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Two-sided 95% quantile of the normal distribution, for the confidence intervals.
pub const Z_95: f64 = 1.96;

/// Ridge penalty of lime's surrogate (`Ridge(alpha=1)`).
pub const SURROGATE_ALPHA: f64 = 1.0;
/// Ridge penalty lime uses to rank features for `highest_weights`.
pub const HIGHEST_WEIGHTS_ALPHA: f64 = 0.01;

/// How the features of the surrogate are chosen when fewer than all are wanted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeatureSelection {
    /// `forward_selection` for at most 6 features, `highest_weights` above (lime's rule).
    #[default]
    Auto,
    /// Ridge (alpha 0.01) on all features; keep the largest `|coef|`.
    HighestWeights,
    /// Greedily add the feature that most raises the weighted R^2 of a least-squares fit.
    ForwardSelection,
    /// Keep every feature.
    None,
}

impl FeatureSelection {
    /// The method `auto` stands for when `num_features` are to be kept; other methods are
    /// returned unchanged.
    pub fn resolve(self, num_features: usize) -> Self {
        match self {
            Self::Auto if num_features <= 6 => Self::ForwardSelection,
            Self::Auto => Self::HighestWeights,
            other => other,
        }
    }
}

/// One weighted ridge fit on a subset of the features.
#[derive(Clone, Debug, PartialEq)]
pub struct RidgeFit {
    /// Coefficients, in the order of the feature subset that was fitted.
    pub coef: Vec<f64>,
    pub intercept: f64,
    /// Weighted R^2 on the fitted rows (scikit-learn's `score` with `sample_weight`).
    pub score: f64,
    /// Half-width of each coefficient's 95% interval (`1.96 * sqrt(diag Cov)`), when asked
    /// for and defined (the residual degrees of freedom `sum w - p - 1` must be positive).
    pub half_width: Option<Vec<f64>>,
}

/// The fitted local surrogate of one label: what LIME reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Surrogate {
    /// The selected features, sorted by `|weight|` descending (ties keep selection order,
    /// as Python's stable sort does).
    pub features: Vec<usize>,
    /// The weight of each entry of `features`.
    pub weights: Vec<f64>,
    /// `(low, high)` 95% interval of each weight, when asked for and defined.
    pub intervals: Option<Vec<(f64, f64)>>,
    pub intercept: f64,
    /// Weighted R^2 of the surrogate on the neighbourhood.
    pub score: f64,
    /// The surrogate at row 0 (every feature present).
    pub local_pred: f64,
    /// The selection method actually applied (`auto` resolved).
    pub selection: FeatureSelection,
}

/// The neighbourhood's design matrix, centred by the weighted column means and scaled by
/// `sqrt(w)`, with its Gram matrix: shared by every fit on the same samples and weights.
#[derive(Clone, Debug)]
pub struct WeightedDesign {
    /// `sqrt(w_i) * (z_ij - mean_j)`, `N x d`.
    zs: DMatrix<f64>,
    sqrt_w: DVector<f64>,
    /// Weighted column means of the binary design.
    mean: DVector<f64>,
    /// `zs' zs`, `d x d`.
    gram: DMatrix<f64>,
    sum_w: f64,
}

/// A label's values prepared against one design: centred, scaled and projected once.
struct Target {
    /// `sqrt(w_i) * (y_i - mean(y))`.
    ys: DVector<f64>,
    mean: f64,
    /// `zs' ys` over all features.
    cross: DVector<f64>,
    /// `|ys|^2`, the weighted total sum of squares.
    tss: f64,
}

impl WeightedDesign {
    /// Builds the design from binary rows (`masks[i][j]`: feature `j` present in row `i`)
    /// and their kernel weights.
    ///
    /// # Panics
    /// When the rows have different lengths or `weights` does not match `masks`; callers
    /// build both from the same samples, so a mismatch is a bug.
    pub fn new(masks: &[Vec<bool>], weights: &[f64]) -> Self {
        assert_eq!(masks.len(), weights.len(), "one kernel weight per row");
        let n = masks.len();
        let d = masks.first().map_or(0, Vec::len);
        assert!(
            masks.iter().all(|m| m.len() == d),
            "every row has d features"
        );
        let sum_w: f64 = weights.iter().sum();
        let mut mean = DVector::zeros(d);
        for (m, &w) in masks.iter().zip(weights) {
            for (j, _) in m.iter().enumerate().filter(|(_, &on)| on) {
                mean[j] += w;
            }
        }
        if sum_w > 0.0 {
            mean /= sum_w;
        }
        let sqrt_w = DVector::from_iterator(n, weights.iter().map(|w| w.max(0.0).sqrt()));
        let zs = DMatrix::from_fn(n, d, |i, j| {
            let z = if masks[i][j] { 1.0 } else { 0.0 };
            sqrt_w[i] * (z - mean[j])
        });
        let gram = gram_matrix(&zs);
        Self {
            zs,
            sqrt_w,
            mean,
            gram,
            sum_w,
        }
    }

    pub fn num_rows(&self) -> usize {
        self.zs.nrows()
    }
    pub fn num_features(&self) -> usize {
        self.zs.ncols()
    }

    fn target(&self, y: &[f64]) -> Target {
        assert_eq!(y.len(), self.num_rows(), "one target value per row");
        let mean = if self.sum_w > 0.0 {
            y.iter()
                .zip(self.sqrt_w.iter())
                .map(|(y, s)| y * s * s)
                .sum::<f64>()
                / self.sum_w
        } else {
            0.0
        };
        let ys = DVector::from_iterator(
            y.len(),
            y.iter()
                .zip(self.sqrt_w.iter())
                .map(|(y, s)| s * (y - mean)),
        );
        let cross = self.zs.tr_mul(&ys);
        let tss = ys.norm_squared();
        Target {
            ys,
            mean,
            cross,
            tss,
        }
    }

    /// Weighted ridge with an unpenalised intercept on the features `subset`, as
    /// scikit-learn's `Ridge(alpha, fit_intercept=True)` with `sample_weight`.
    pub fn ridge(&self, y: &[f64], subset: &[usize], alpha: f64, intervals: bool) -> RidgeFit {
        self.ridge_on(&self.target(y), subset, alpha, intervals)
    }

    fn ridge_on(&self, t: &Target, subset: &[usize], alpha: f64, intervals: bool) -> RidgeFit {
        let (a, beta) = self.solve(t, subset, alpha);
        // Weighted residuals from the predictions, as scikit-learn's `score` computes them.
        let mut rs = t.ys.clone();
        for (k, &j) in subset.iter().enumerate() {
            rs.axpy(-beta[k], &self.zs.column(j), 1.0);
        }
        let rss = rs.norm_squared();
        let intercept = t.mean
            - subset
                .iter()
                .zip(beta.iter())
                .map(|(&j, b)| self.mean[j] * b)
                .sum::<f64>();
        let half_width = if intervals {
            self.half_widths(&a, subset, rss)
        } else {
            None
        };
        RidgeFit {
            coef: beta.iter().copied().collect(),
            intercept,
            score: r2(rss, t.tss),
            half_width,
        }
    }

    /// `A = G_S + alpha I` and the solution of `A beta = (Zs' ys)_S`.
    ///
    /// Cholesky first; a singular `A` (only possible with `alpha = 0`, e.g. a feature never
    /// removed) falls back to the minimum-norm least-squares solution, as scikit-learn falls
    /// back from `cholesky` to `svd`. The fitted values, and so R^2, are the same for every
    /// least-squares solution.
    fn solve(&self, t: &Target, subset: &[usize], alpha: f64) -> (DMatrix<f64>, DVector<f64>) {
        let p = subset.len();
        let a = DMatrix::from_fn(p, p, |r, c| {
            self.gram[(subset[r], subset[c])] + if r == c { alpha } else { 0.0 }
        });
        let g = DVector::from_fn(p, |r, _| t.cross[subset[r]]);
        let beta = match Cholesky::new(a.clone()) {
            Some(ch) => ch.solve(&g),
            None => {
                let svd = SVD::new(a.clone(), true, true);
                let eps = svd.singular_values.max() * (p.max(1) as f64) * f64::EPSILON;
                svd.solve(&g, eps).expect("SVD computed with U and V")
            }
        };
        (a, beta)
    }

    /// `1.96 * sqrt(diag(sigma^2 A^-1 G_S A^-1))` with `sigma^2 = rss / (sum w - p - 1)`
    /// (METHODS.md, confidence intervals). `None` when the degrees of freedom are not
    /// positive or `A` cannot be inverted: an interval we cannot compute is not reported
    /// rather than reported as zero or infinite.
    fn half_widths(&self, a: &DMatrix<f64>, subset: &[usize], rss: f64) -> Option<Vec<f64>> {
        let p = subset.len();
        let dof = self.sum_w - p as f64 - 1.0;
        if dof <= 0.0 || dof.is_nan() || !rss.is_finite() {
            return None;
        }
        let sigma2 = rss / dof;
        let a_inv = Cholesky::new(a.clone())?.inverse();
        let g = DMatrix::from_fn(p, p, |r, c| self.gram[(subset[r], subset[c])]);
        let cov = &a_inv * g * &a_inv * sigma2;
        Some((0..p).map(|k| Z_95 * cov[(k, k)].max(0.0).sqrt()).collect())
    }

    /// Weighted R^2 of the least-squares fit (`alpha = 0`) on `subset`, from the Gram matrix
    /// alone: at a least-squares solution `RSS = TSS - g_S . beta`, so forward selection
    /// never touches the `N` rows.
    fn least_squares_score(&self, t: &Target, subset: &[usize]) -> f64 {
        let (_, beta) = self.solve(t, subset, 0.0);
        let explained: f64 = subset
            .iter()
            .zip(beta.iter())
            .map(|(&j, b)| t.cross[j] * b)
            .sum();
        r2((t.tss - explained).max(0.0), t.tss)
    }

    /// The features lime keeps for this label (METHODS.md, LIME step 5). `num_features`
    /// at or above `d` keeps every feature in index order, whatever the method.
    pub fn select(
        &self,
        y: &[f64],
        selection: FeatureSelection,
        num_features: usize,
    ) -> Vec<usize> {
        self.select_on(&self.target(y), selection, num_features)
    }

    fn select_on(
        &self,
        t: &Target,
        selection: FeatureSelection,
        num_features: usize,
    ) -> Vec<usize> {
        let d = self.num_features();
        if num_features >= d {
            return (0..d).collect();
        }
        match selection.resolve(num_features) {
            FeatureSelection::None | FeatureSelection::Auto => (0..d).collect(),
            FeatureSelection::HighestWeights => {
                let all: Vec<usize> = (0..d).collect();
                let fit = self.ridge_on(t, &all, HIGHEST_WEIGHTS_ALPHA, false);
                // lime ranks `coef * data[0]`; row 0 is all ones, so this is `|coef|`.
                let mut order = all;
                order.sort_by(|&a, &b| fit.coef[b].abs().total_cmp(&fit.coef[a].abs()));
                order.truncate(num_features);
                order
            }
            FeatureSelection::ForwardSelection => {
                let mut used: Vec<usize> = Vec::with_capacity(num_features);
                let mut taken = vec![false; d];
                for _ in 0..num_features {
                    // lime starts from -1e8 and keeps the first candidate on ties (`>`).
                    let mut best = (None, -1e8);
                    for (f, _) in taken.iter().enumerate().filter(|(_, &t)| !t) {
                        used.push(f);
                        let score = self.least_squares_score(t, &used);
                        used.pop();
                        if score > best.1 {
                            best = (Some(f), score);
                        }
                    }
                    // Only NaN scores leave no best; lime would then take feature 0 again,
                    // a duplicate, where we take the first unused one.
                    let f = best.0.unwrap_or_else(|| {
                        taken.iter().position(|t| !t).expect("fewer used than d")
                    });
                    taken[f] = true;
                    used.push(f);
                }
                used
            }
        }
    }

    /// Selection, then lime's surrogate (`Ridge(alpha=1)`) on the selected features.
    pub fn surrogate(
        &self,
        y: &[f64],
        selection: FeatureSelection,
        num_features: usize,
        intervals: bool,
    ) -> Surrogate {
        let t = self.target(y);
        let used = self.select_on(&t, selection, num_features);
        let fit = self.ridge_on(&t, &used, SURROGATE_ALPHA, intervals);
        let local_pred = fit.intercept + fit.coef.iter().sum::<f64>();
        let mut order: Vec<usize> = (0..used.len()).collect();
        order.sort_by(|&a, &b| fit.coef[b].abs().total_cmp(&fit.coef[a].abs()));
        let intervals = fit.half_width.as_ref().map(|h| {
            order
                .iter()
                .map(|&k| (fit.coef[k] - h[k], fit.coef[k] + h[k]))
                .collect()
        });
        Surrogate {
            features: order.iter().map(|&k| used[k]).collect(),
            weights: order.iter().map(|&k| fit.coef[k]).collect(),
            intervals,
            intercept: fit.intercept,
            score: fit.score,
            local_pred,
            selection: selection.resolve(num_features.min(self.num_features())),
        }
    }
}

/// Selection and surrogate for one label in one call: the pure core of LIME, fed either by
/// the service's own neighbourhood or by a stored one (the parity tests).
pub fn fit_surrogate(
    masks: &[Vec<bool>],
    y: &[f64],
    weights: &[f64],
    selection: FeatureSelection,
    num_features: usize,
    intervals: bool,
) -> Surrogate {
    WeightedDesign::new(masks, weights).surrogate(y, selection, num_features, intervals)
}

/// scikit-learn's `r2_score` given the weighted residual and total sums of squares,
/// including its convention for a constant target (1 if perfectly fitted, else 0).
fn r2(rss: f64, tss: f64) -> f64 {
    if tss == 0.0 {
        if rss == 0.0 {
            1.0
        } else {
            0.0
        }
    } else {
        1.0 - rss / tss
    }
}

/// Rows per block when the Gram matrix is accumulated in parallel.
const GRAM_BLOCK: usize = 2048;

/// `zs' zs`. Large designs (token features of a long text at the sample cap reach 10 GFLOP)
/// are summed block by block in parallel; the blocks are always the same and are added in
/// order, so the result does not depend on the number of threads.
pub(crate) fn gram_matrix(zs: &DMatrix<f64>) -> DMatrix<f64> {
    let (n, d) = zs.shape();
    if n <= GRAM_BLOCK || n * d * d < 50_000_000 {
        return zs.tr_mul(zs);
    }
    let starts: Vec<usize> = (0..n).step_by(GRAM_BLOCK).collect();
    let parts: Vec<DMatrix<f64>> = starts
        .par_iter()
        .map(|&s| {
            let block = zs.rows(s, GRAM_BLOCK.min(n - s));
            block.tr_mul(&block)
        })
        .collect();
    parts
        .into_iter()
        .fold(DMatrix::zeros(d, d), |acc, p| acc + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense reference: weighted normal equations with an explicit intercept column.
    fn reference_ridge(z: &[Vec<bool>], y: &[f64], w: &[f64], alpha: f64) -> (Vec<f64>, f64) {
        let n = z.len();
        let d = z[0].len();
        // Unknowns: [b, beta_1..beta_d]; the intercept is not penalised.
        let x = DMatrix::from_fn(
            n,
            d + 1,
            |i, j| {
                if j == 0 || z[i][j - 1] {
                    1.0
                } else {
                    0.0
                }
            },
        );
        let wm = DMatrix::from_diagonal(&DVector::from_column_slice(w));
        let mut a = x.transpose() * &wm * &x;
        for j in 1..=d {
            a[(j, j)] += alpha;
        }
        let rhs = x.transpose() * &wm * DVector::from_column_slice(y);
        let sol = a.lu().solve(&rhs).unwrap();
        (sol.iter().skip(1).copied().collect(), sol[0])
    }

    fn small_problem() -> (Vec<Vec<bool>>, Vec<f64>, Vec<f64>) {
        let masks: Vec<Vec<bool>> = (0..40u32)
            .map(|i| (0..4).map(|j| (i * 7 + j * 3) % 5 != 0 || i == 0).collect())
            .collect();
        let y: Vec<f64> = masks
            .iter()
            .enumerate()
            .map(|(i, m)| {
                0.2 + 0.5 * m[0] as u8 as f64 - 0.3 * m[2] as u8 as f64
                    + 0.01 * ((i * 37 % 11) as f64)
            })
            .collect();
        let w: Vec<f64> = (0..40).map(|i| 0.2 + (i % 7) as f64 / 7.0).collect();
        (masks, y, w)
    }

    #[test]
    fn ridge_matches_normal_equations_with_unpenalised_intercept() {
        let (masks, y, w) = small_problem();
        let design = WeightedDesign::new(&masks, &w);
        for alpha in [0.0, 0.01, 1.0, 10.0] {
            let fit = design.ridge(&y, &[0, 1, 2, 3], alpha, false);
            let (beta, b) = reference_ridge(&masks, &y, &w, alpha);
            for (g, e) in fit.coef.iter().zip(&beta) {
                assert!((g - e).abs() < 1e-10, "alpha {alpha}: {g} vs {e}");
            }
            assert!((fit.intercept - b).abs() < 1e-10);
        }
    }

    #[test]
    fn gram_score_equals_residual_score_for_least_squares() {
        let (masks, y, w) = small_problem();
        let design = WeightedDesign::new(&masks, &w);
        let t = design.target(&y);
        for subset in [vec![0], vec![2, 0], vec![0, 1, 2, 3]] {
            let direct = design.ridge(&y, &subset, 0.0, false).score;
            let gram = design.least_squares_score(&t, &subset);
            assert!(
                (direct - gram).abs() < 1e-12,
                "{subset:?}: {direct} vs {gram}"
            );
        }
    }

    #[test]
    fn r2_follows_scikit_learn_for_constant_targets() {
        assert_eq!(r2(0.0, 0.0), 1.0);
        assert_eq!(r2(1e-3, 0.0), 0.0);
        assert!((r2(1.0, 4.0) - 0.75).abs() < 1e-15);
    }

    #[test]
    fn auto_resolves_like_lime() {
        assert_eq!(
            FeatureSelection::Auto.resolve(6),
            FeatureSelection::ForwardSelection
        );
        assert_eq!(
            FeatureSelection::Auto.resolve(7),
            FeatureSelection::HighestWeights
        );
        assert_eq!(FeatureSelection::None.resolve(2), FeatureSelection::None);
    }

    #[test]
    fn singular_least_squares_falls_back_to_minimum_norm() {
        // Feature 1 is never removed: its centred column is zero and `G` is singular.
        let masks: Vec<Vec<bool>> = (0..10).map(|i| vec![i % 2 == 0, true]).collect();
        let y: Vec<f64> = masks.iter().map(|m| if m[0] { 1.0 } else { 0.0 }).collect();
        let w = vec![1.0; 10];
        let fit = WeightedDesign::new(&masks, &w).ridge(&y, &[0, 1], 0.0, false);
        assert!(
            (fit.coef[0] - 1.0).abs() < 1e-12 && fit.coef[1].abs() < 1e-12,
            "{:?}",
            fit.coef
        );
        assert!((fit.score - 1.0).abs() < 1e-12);
    }

    #[test]
    fn parallel_gram_equals_direct_product() {
        let zs = DMatrix::from_fn(5000, 110, |i, j| {
            ((i * 31 + j * 17) % 13) as f64 / 13.0 - 0.5
        });
        let direct = zs.tr_mul(&zs);
        let blocked = gram_matrix(&zs);
        assert!((direct - blocked).abs().max() < 1e-9);
    }
}
