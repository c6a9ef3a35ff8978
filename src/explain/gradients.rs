//! Gradient attributions at the word-embedding lookup (METHODS.md, "Gradients"), with Captum's
//! definitions:
//!
//! * `saliency`: `|| dF/dx_t ||_2` per token;
//! * `grad_x_input`: `sum_d x_td dF/dx_td`;
//! * `integrated_gradients`: `IG_t = sum_d (x_td - x'_td) sum_k w_k dF/dx_td(x' + a_k (x - x'))`
//!   with the baseline `x'` = the `[PAD]` embedding at every non-special position (special
//!   tokens kept), nodes `a_k` and weights `w_k` of Gauss-Legendre on [0, 1] (default) or of the
//!   trapezoid rule, and the completeness residual `delta = sum_t IG_t - (F(x) - F(x'))`.
//!
//! `F` is the target label's probability or logit. Every gradient row of a request (all
//! targets, all steps, plus `x` and `x'` themselves for `F(x)` and `F(x')`) goes to the engine
//! as one job, which runs it in batches on the model threads.
//!
//! Trapezoid and Captum: Captum's `riemann_trapezoid` gives every node the step `1/n` (halved
//! at both ends) where the trapezoid rule on `n` nodes spaced `1/(n-1)` needs `1/(n-1)`, so its
//! weights sum to `(n-1)/n`: its attributions are exactly `(n-1)/n` times the rule's, which is
//! where its ~2e-2 completeness residual comes from. Ours is the rule (weights sum to 1).

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::features::FeatureSet;
use crate::model::gradients::{GradientModel, GradientRow, OutputKind, RowGradient};
use crate::model::{ModelError, Row};

/// Which gradient attribution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GradientMethod {
    Saliency,
    GradXInput,
    #[default]
    IntegratedGradients,
}

/// How integrated gradients approximates its path integral.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Quadrature {
    /// Gauss-Legendre nodes and weights on [0, 1] (as Captum's default).
    #[default]
    GaussLegendre,
    /// The trapezoid rule on `steps` equally spaced nodes including both ends.
    Trapezoid,
}

/// Parameters of a gradient attribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradientParams {
    pub method: GradientMethod,
    pub output: OutputKind,
    /// Integrated gradients' number of nodes (default 50).
    pub steps: usize,
    pub quadrature: Quadrature,
}

impl Default for GradientParams {
    fn default() -> Self {
        Self {
            method: GradientMethod::IntegratedGradients,
            output: OutputKind::Probability,
            steps: 50,
            quadrature: Quadrature::GaussLegendre,
        }
    }
}

/// What gradient methods need from the model: word embeddings and gradient rows.
/// The service passes an adapter over the engine; tests pass [`DirectGradients`].
pub trait GradientEvaluator: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;
    /// `[ids.len(), hidden]` row-major.
    fn word_embeddings(&self, ids: &[u32]) -> Result<Vec<f32>, Self::Error>;
    fn gradients(
        &self,
        rows: Vec<GradientRow>,
        output: OutputKind,
    ) -> impl Future<Output = Result<Vec<RowGradient>, Self::Error>> + Send;
}

/// Runs gradient rows straight through a model on the calling thread (tests, CLI).
pub struct DirectGradients {
    pub model: Arc<dyn GradientModel>,
}

impl DirectGradients {
    pub fn new(model: Arc<dyn GradientModel>) -> Self {
        Self { model }
    }
}

impl GradientEvaluator for DirectGradients {
    type Error = ModelError;
    fn word_embeddings(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        self.model.word_embeddings(ids)
    }
    fn gradients(
        &self,
        rows: Vec<GradientRow>,
        output: OutputKind,
    ) -> impl Future<Output = Result<Vec<RowGradient>, ModelError>> + Send {
        std::future::ready(self.model.gradients(&rows, output))
    }
}

/// Integrated gradients' summary for one target.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct IgSummary {
    /// `F(x')`, the output at the baseline.
    pub baseline_output: f64,
    /// `sum_t IG_t`.
    pub sum: f64,
    /// Completeness residual `sum_t IG_t - (F(x) - F(x'))`.
    pub delta: f64,
    pub steps: usize,
    pub quadrature: Quadrature,
}

/// One target's attribution over the model's tokens (special tokens included, in order).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenAttribution {
    pub target: usize,
    /// `F(x)`, the differentiated output at the input.
    pub output: f64,
    /// One score per token of the row.
    pub scores: Vec<f64>,
    /// Present for integrated gradients.
    pub ig: Option<IgSummary>,
}

/// Why a gradient attribution failed: the request (`Invalid`, the client's to fix) or the
/// model/engine.
#[derive(Debug, thiserror::Error)]
pub enum GradientError<E: std::error::Error + 'static> {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Eval(E),
}

/// Nodes and weights of a quadrature on [0, 1] with `steps` nodes.
pub fn quadrature(rule: Quadrature, steps: usize) -> Vec<(f64, f64)> {
    match rule {
        Quadrature::GaussLegendre => gauss_legendre(steps),
        Quadrature::Trapezoid => {
            if steps < 2 {
                // One node: the midpoint rule (the API asks for at least two).
                return if steps == 1 {
                    vec![(0.5, 1.0)]
                } else {
                    Vec::new()
                };
            }
            let h = 1.0 / (steps - 1) as f64;
            (0..steps)
                .map(|k| {
                    let w = if k == 0 || k == steps - 1 { h / 2.0 } else { h };
                    (k as f64 * h, w)
                })
                .collect()
        }
    }
}

/// Gauss-Legendre nodes and weights mapped to [0, 1], ascending: the roots of the Legendre
/// polynomial `P_n` by Newton's method from Chebyshev-like starting points, weights
/// `2 / ((1 - x^2) P_n'(x)^2)` (halved by the map to [0, 1]). Exact for polynomials of degree
/// up to `2n - 1`.
pub fn gauss_legendre(n: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(n);
    for i in 1..=n {
        let mut x = (std::f64::consts::PI * (i as f64 - 0.25) / (n as f64 + 0.5)).cos();
        let mut dp = 1.0;
        for _ in 0..100 {
            let (p, d) = legendre(n, x);
            dp = d;
            let dx = p / d;
            x -= dx;
            if dx.abs() < 1e-15 {
                break;
            }
        }
        let (_, d) = legendre(n, x);
        if d.is_finite() {
            dp = d;
        }
        let w = 2.0 / ((1.0 - x * x) * dp * dp);
        out.push(((1.0 + x) / 2.0, w / 2.0));
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// `P_n(x)` and `P_n'(x)` by the three-term recurrence.
fn legendre(n: usize, x: f64) -> (f64, f64) {
    let (mut p0, mut p1) = (1.0, x);
    if n == 0 {
        return (1.0, 0.0);
    }
    for k in 2..=n {
        let k = k as f64;
        let p2 = ((2.0 * k - 1.0) * x * p1 - (k - 1.0) * p0) / k;
        p0 = p1;
        p1 = p2;
    }
    let dp = n as f64 * (x * p1 - p0) / (x * x - 1.0);
    (p1, dp)
}

/// Token attributions of `row` for each target. `special` flags the tokens that stay in the
/// integrated-gradients baseline; `pad_id` is the token whose embedding replaces the others.
pub async fn token_attributions<G: GradientEvaluator>(
    gradients: &G,
    row: &Row,
    special: &[bool],
    pad_id: u32,
    targets: &[usize],
    params: GradientParams,
) -> Result<Vec<TokenAttribution>, GradientError<G::Error>> {
    let len = row.ids.len();
    if special.len() != len {
        return Err(GradientError::Invalid(format!(
            "{} special flags for {len} tokens",
            special.len()
        )));
    }
    let x = gradients
        .word_embeddings(&row.ids)
        .map_err(GradientError::Eval)?;
    if len == 0 || x.len() % len != 0 {
        return Err(GradientError::Invalid("empty row".into()));
    }
    let h = x.len() / len;
    let grad_row = |embeddings: Vec<f32>, target: usize| GradientRow {
        ids: row.ids.clone(),
        type_ids: row.type_ids.clone(),
        embeddings,
        target,
    };

    match params.method {
        GradientMethod::Saliency | GradientMethod::GradXInput => {
            let rows = targets.iter().map(|&t| grad_row(x.clone(), t)).collect();
            let outs = gradients
                .gradients(rows, params.output)
                .await
                .map_err(GradientError::Eval)?;
            Ok(targets
                .iter()
                .zip(outs)
                .map(|(&target, out)| {
                    let scores = (0..len)
                        .map(|t| {
                            let g = &out.gradient[t * h..(t + 1) * h];
                            match params.method {
                                GradientMethod::Saliency => {
                                    g.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt()
                                }
                                _ => g
                                    .iter()
                                    .zip(&x[t * h..(t + 1) * h])
                                    .map(|(&g, &x)| g as f64 * x as f64)
                                    .sum(),
                            }
                        })
                        .collect();
                    TokenAttribution {
                        target,
                        output: out.output,
                        scores,
                        ig: None,
                    }
                })
                .collect())
        }
        GradientMethod::IntegratedGradients => {
            let min_steps = match params.quadrature {
                Quadrature::GaussLegendre => 1,
                Quadrature::Trapezoid => 2,
            };
            if params.steps < min_steps {
                return Err(GradientError::Invalid(format!(
                    "steps must be at least {min_steps} for this quadrature (got {})",
                    params.steps
                )));
            }
            let pad = gradients
                .word_embeddings(&[pad_id])
                .map_err(GradientError::Eval)?;
            let mut baseline = x.clone();
            for t in (0..len).filter(|&t| !special[t]) {
                baseline[t * h..(t + 1) * h].copy_from_slice(&pad);
            }
            let nodes = quadrature(params.quadrature, params.steps);
            // Per target: the path nodes, then x (alpha = 1) and x' (alpha = 0).
            let alphas: Vec<f64> = nodes.iter().map(|&(a, _)| a).chain([1.0, 0.0]).collect();
            let point = |alpha: f64| -> Vec<f32> {
                if alpha == 1.0 {
                    return x.clone();
                }
                if alpha == 0.0 {
                    return baseline.clone();
                }
                x.iter()
                    .zip(&baseline)
                    .map(|(&xv, &bv)| (bv as f64 + alpha * (xv as f64 - bv as f64)) as f32)
                    .collect()
            };
            let points: Vec<Vec<f32>> = alphas.iter().map(|&a| point(a)).collect();
            let rows: Vec<GradientRow> = targets
                .iter()
                .flat_map(|&t| points.iter().map(move |p| (p.clone(), t)))
                .map(|(p, t)| grad_row(p, t))
                .collect();
            let outs = gradients
                .gradients(rows, params.output)
                .await
                .map_err(GradientError::Eval)?;
            let per_target = alphas.len();
            Ok(targets
                .iter()
                .enumerate()
                .map(|(i, &target)| {
                    let outs = &outs[i * per_target..(i + 1) * per_target];
                    // sum_k w_k g_k, per embedding value.
                    let mut avg = vec![0f64; len * h];
                    for (&(_, w), out) in nodes.iter().zip(outs) {
                        for (a, &g) in avg.iter_mut().zip(&out.gradient) {
                            *a += w * g as f64;
                        }
                    }
                    let scores: Vec<f64> = (0..len)
                        .map(|t| {
                            (t * h..(t + 1) * h)
                                .map(|j| (x[j] as f64 - baseline[j] as f64) * avg[j])
                                .sum()
                        })
                        .collect();
                    let f_x = outs[per_target - 2].output;
                    let f_base = outs[per_target - 1].output;
                    let sum: f64 = scores.iter().sum();
                    TokenAttribution {
                        target,
                        output: f_x,
                        scores,
                        ig: Some(IgSummary {
                            baseline_output: f_base,
                            sum,
                            delta: sum - (f_x - f_base),
                            steps: params.steps,
                            quadrature: params.quadrature,
                        }),
                    }
                })
                .collect())
        }
    }
}

/// Token scores summed per feature (word): a token shared by two words counts for both.
pub fn per_feature(features: &FeatureSet, token_scores: &[f64]) -> Vec<f64> {
    features
        .features()
        .iter()
        .map(|f| f.tokens.iter().map(|&t| token_scores[t]).sum())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_legendre_matches_known_nodes_and_integrates_polynomials_exactly() {
        let two = gauss_legendre(2);
        let r = 1.0 / 3f64.sqrt();
        assert!((two[0].0 - (1.0 - r) / 2.0).abs() < 1e-15);
        assert!((two[1].1 - 0.5).abs() < 1e-15);
        for n in [1, 5, 50, 64] {
            let q = gauss_legendre(n);
            assert_eq!(q.len(), n);
            assert!(q.windows(2).all(|w| w[0].0 < w[1].0));
            // Exact up to degree 2n - 1: integral of x^p on [0, 1] is 1 / (p + 1).
            for p in 0..(2 * n).min(40) {
                let got: f64 = q.iter().map(|&(x, w)| w * x.powi(p as i32)).sum();
                assert!(
                    (got - 1.0 / (p as f64 + 1.0)).abs() < 1e-12,
                    "n={n} p={p} got {got}"
                );
            }
        }
    }

    #[test]
    fn trapezoid_weights_sum_to_one_with_halved_ends() {
        let q = quadrature(Quadrature::Trapezoid, 5);
        assert_eq!(
            q,
            vec![
                (0.0, 0.125),
                (0.25, 0.25),
                (0.5, 0.25),
                (0.75, 0.25),
                (1.0, 0.125)
            ]
        );
    }
}
