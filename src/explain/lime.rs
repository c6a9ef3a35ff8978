//! LIME (Ribeiro et al. 2016) with parity to Python `lime` 0.2 `LimeTextExplainer`, as
//! METHODS.md defines it, plus per-weight confidence intervals and adaptive sampling.
//!
//! The life of one explanation:
//!
//! 1. [`sample_masks`]: row 0 keeps every feature; each other row removes `k` distinct
//!    features, `k` uniform in `1..=d`. A seeded ChaCha8 stream drives it and nothing else
//!    does, so a request and its seed always give the same neighbourhood, whatever the server
//!    is doing, and the first `n` rows of a longer run are exactly the rows of a run of `n`.
//! 2. Identical masks (and masks that happen to give the same model input) are perturbed and
//!    evaluated once: at 10 words about half of lime's 1000 rows are repeats.
//! 3. [`cosine_distances`] and [`kernel_weights`] weight each row by its closeness to row 0.
//! 4. [`super::regression`] selects features and fits the weighted ridge surrogate for every
//!    target label from the same samples.
//!
//! Nothing here knows about HTTP or the engine: rows go through an [`Evaluator`].

use std::collections::HashMap;
use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use super::features::{FeatureError, FeatureKind, FeatureSet, Removal, Span};
use super::regression::{FeatureSelection, Surrogate, WeightedDesign};
use super::Evaluator;
use crate::model::{Encoding, Row, TextEncoder};

pub use super::regression::fit_surrogate;

/// Rows of the first round of `num_samples = "auto"`; each later round doubles the total.
pub const ADAPTIVE_START: usize = 250;
/// Default `tolerance` of `num_samples = "auto"`.
pub const DEFAULT_TOLERANCE: f64 = 0.05;
/// Seeds are drawn below 2^53 so that they survive a round trip through a JavaScript
/// number (a larger echoed seed would come back changed and reproduce nothing).
const MAX_DRAWN_SEED: u64 = 1 << 53;

/// How many rows the neighbourhood has: a number, or `"auto"` (adaptive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumSamples {
    /// Exactly this many rows, row 0 (the original text) included, as lime counts them.
    Fixed(usize),
    /// Rounds of rows until the top weights' ranking is settled, or the cap.
    Auto,
}

impl Default for NumSamples {
    fn default() -> Self {
        Self::Fixed(1000)
    }
}

/// How many features the surrogate keeps: a number, or `"all"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumFeatures {
    Count(usize),
    All,
}

impl Default for NumFeatures {
    fn default() -> Self {
        Self::Count(10)
    }
}

/// Parameters of `POST /explain/lime` (METHODS.md, LIME). Every field is optional.
#[derive(Clone, Debug, PartialEq, Deserialize, ToSchema)]
#[serde(default)]
#[schema(examples(
    json!({"num_samples": 1000, "num_features": 10, "kernel_width": 25.0, "seed": 7}),
    json!({"num_samples": "auto", "tolerance": 0.05, "num_features": 5, "confidence_intervals": true})
))]
pub struct LimeParams {
    /// Rows of the neighbourhood, the original text included (Python lime uses 5000; the
    /// server caps it at `max_num_samples`), or `"auto"`: draw rows in rounds (250, 500,
    /// 1000, ...) and stop once the ranking of the kept weights is the same as in the
    /// previous round and their 95% intervals separate, or at the cap. The rows used are
    /// echoed in `params.num_samples`.
    #[schema(schema_with = num_samples_schema)]
    pub num_samples: NumSamples,
    /// Only with `num_samples = "auto"` (default 0.05): two neighbouring weights whose
    /// interval half-widths are both below `tolerance * |largest weight|` count as settled
    /// even if their intervals overlap, since their order is then immaterial.
    #[schema(example = 0.05, minimum = 0.0)]
    pub tolerance: Option<f64>,
    /// Features the surrogate keeps (default 10), or `"all"`.
    #[schema(schema_with = num_features_schema)]
    pub num_features: NumFeatures,
    /// Width of the exponential kernel over `100 * cosine distance` (lime's 25).
    #[schema(default = 25.0, example = 25.0, exclusive_minimum = 0.0)]
    pub kernel_width: f64,
    /// How features are chosen when fewer than all are kept.
    #[schema(default = "auto")]
    pub feature_selection: FeatureSelection,
    /// One feature per distinct word, removing every occurrence (lime's default), instead of
    /// one per occurrence. Ignored for token features.
    #[schema(default = true)]
    pub bow: bool,
    /// How a removed feature is hidden from the model.
    #[schema(default = "remove")]
    pub mask: Removal,
    /// Words (lime's features) or model tokens.
    #[schema(default = "words")]
    pub features: FeatureKind,
    /// Seed of the sampler; absent: one is drawn and echoed in `params.seed`.
    #[schema(example = 7)]
    pub seed: Option<u64>,
    /// Report a 95% interval for each weight (`ci_low`, `ci_high`), so that a reader can tell
    /// which signs the samples actually support.
    #[schema(default = false)]
    pub confidence_intervals: bool,
}

impl Default for LimeParams {
    fn default() -> Self {
        Self {
            num_samples: NumSamples::default(),
            tolerance: None,
            num_features: NumFeatures::default(),
            kernel_width: 25.0,
            feature_selection: FeatureSelection::Auto,
            bow: true,
            mask: Removal::Remove,
            features: FeatureKind::Words,
            seed: None,
            confidence_intervals: false,
        }
    }
}

/// Why LIME could not explain.
#[derive(Debug, thiserror::Error)]
pub enum LimeError {
    /// The request is the client's to fix (422 `validation_error`, `details.field`).
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// Building a perturbed input failed (missing mask/unk token: the client's; too long:
    /// the client's; otherwise a bug).
    #[error(transparent)]
    Features(#[from] FeatureError),
    /// The evaluator failed; the source is the evaluator's own error type (downcast it to
    /// map engine errors such as overload or timeout to their statuses).
    #[error("model evaluation failed: {0}")]
    Evaluate(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn invalid(field: &'static str, message: String) -> LimeError {
    LimeError::Invalid { field, message }
}

impl LimeParams {
    /// Checks every parameter against its range; `max_num_samples` is the server's cap.
    /// Call it before any model work so that a bad request costs nothing.
    pub fn validate(&self, max_num_samples: usize) -> Result<(), LimeError> {
        match self.num_samples {
            NumSamples::Fixed(n) if !(2..=max_num_samples).contains(&n) => {
                return Err(invalid(
                    "num_samples",
                    format!("num_samples must be between 2 and {max_num_samples} (got {n})"),
                ));
            }
            NumSamples::Fixed(_) if self.tolerance.is_some() => {
                return Err(invalid(
                    "tolerance",
                    "tolerance only applies with num_samples = \"auto\"".into(),
                ));
            }
            NumSamples::Auto if max_num_samples < 2 => {
                return Err(invalid(
                    "num_samples",
                    format!("num_samples = \"auto\" needs a server cap of at least 2 (max_num_samples is {max_num_samples})"),
                ));
            }
            _ => {}
        }
        if let Some(t) = self.tolerance {
            if !(t.is_finite() && t > 0.0) {
                return Err(invalid(
                    "tolerance",
                    format!("tolerance must be a positive number (got {t})"),
                ));
            }
        }
        if self.num_features == NumFeatures::Count(0) {
            return Err(invalid(
                "num_features",
                "num_features must be at least 1, or \"all\" (got 0)".into(),
            ));
        }
        if !(self.kernel_width.is_finite() && self.kernel_width > 0.0) {
            return Err(invalid(
                "kernel_width",
                format!(
                    "kernel_width must be a positive number (got {})",
                    self.kernel_width
                ),
            ));
        }
        Ok(())
    }

    /// The features these parameters ask for, of a text and its encoding (the API layer uses
    /// the same set for the response's `features`).
    pub fn feature_set(&self, text: &str, encoding: &Encoding) -> FeatureSet {
        FeatureSet::new(self.features, text, encoding, self.bow)
    }
}

/// One weight of the surrogate.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct LimeWeight {
    /// Index into the response's `features`.
    pub feature: usize,
    /// The word (or token text).
    pub text: String,
    pub weight: f64,
    /// Lower end of the 95% interval (with `confidence_intervals`, when defined).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ci_low: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ci_high: Option<f64>,
    /// Every occurrence in the text (UTF-8 and UTF-16 offsets), for highlighting.
    pub spans: Vec<Span>,
    /// Indices of the feature's tokens in the response's `tokens`.
    pub tokens: Vec<usize>,
}

/// The explanation of one target label.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct LimeLabel {
    /// Label index.
    pub label: usize,
    /// The model's own probability of this label for the text, `f_j(x)`.
    pub probability: f64,
    /// Sorted by `|weight|`, largest first.
    pub weights: Vec<LimeWeight>,
    pub intercept: f64,
    /// Weighted R^2 of the surrogate on the neighbourhood: how linear the model is here.
    pub score: f64,
    /// The surrogate's prediction for the text itself; far from `probability` means the
    /// surrogate is a poor local fit.
    pub local_pred: f64,
}

/// How adaptive sampling went.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct AdaptiveUsed {
    pub tolerance: f64,
    /// The cap the rounds could not pass.
    pub max_num_samples: usize,
    /// Rounds drawn.
    pub rounds: usize,
    /// Whether the ranking settled (`false`: stopped at the cap).
    pub converged: bool,
}

/// Every parameter as actually used: sending these back (with `num_samples` as a number)
/// reproduces the explanation.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct LimeParamsUsed {
    /// Rows of the neighbourhood, row 0 included (the rows adaptive sampling settled on).
    pub num_samples: usize,
    /// Present when `num_samples` was `"auto"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveUsed>,
    /// Features kept (`"all"` and counts above the number of features resolved).
    pub num_features: usize,
    pub kernel_width: f64,
    /// The method applied (`auto` resolved by lime's rule).
    pub feature_selection: FeatureSelection,
    pub bow: bool,
    pub mask: Removal,
    pub features: FeatureKind,
    pub seed: u64,
    pub confidence_intervals: bool,
}

/// What `POST /explain/lime` computes (the API layer adds model, prediction, tokens, usage).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(examples(json!({
    "labels": [{
        "label": 1,
        "probability": 0.92,
        "weights": [
            {"feature": 7, "text": "wonderful", "weight": 0.31, "ci_low": 0.29, "ci_high": 0.33,
             "spans": [{"start": 37, "end": 46, "utf16_start": 37, "utf16_end": 46}], "tokens": [9]},
            {"feature": 2, "text": "thin", "weight": -0.12, "ci_low": -0.14, "ci_high": -0.10,
             "spans": [{"start": 13, "end": 17, "utf16_start": 13, "utf16_end": 17}], "tokens": [4]}
        ],
        "intercept": 0.58,
        "score": 0.71,
        "local_pred": 0.90
    }],
    "params": {
        "num_samples": 1000,
        "adaptive": {"tolerance": 0.05, "max_num_samples": 20000, "rounds": 3, "converged": true},
        "num_features": 2, "kernel_width": 25.0, "feature_selection": "forward_selection",
        "bow": true, "mask": "remove", "features": "words", "seed": 7, "confidence_intervals": true
    },
    "distinct_rows": 402
})))]
pub struct LimeExplanation {
    /// One entry per target label, in the order asked.
    pub labels: Vec<LimeLabel>,
    pub params: LimeParamsUsed,
    /// Distinct model inputs evaluated (METHODS.md's `model_evaluations`): repeats of a mask
    /// are run once.
    pub distinct_rows: usize,
}

/// The neighbourhood of [`METHODS.md`]: row 0 keeps all `d` features; every other row removes
/// `k` distinct features chosen uniformly, `k` uniform in `1..=d`. `n` rows in all.
pub fn sample_masks(d: usize, n: usize, seed: u64) -> Vec<Vec<bool>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut masks = Vec::with_capacity(n);
    if n > 0 {
        masks.push(vec![true; d]);
    }
    masks.extend((1..n).map(|_| draw_row(d, &mut rng)));
    masks
}

/// One non-original row. Uses the stream only through these two calls, so the rows depend on
/// `d` and the seed alone.
fn draw_row(d: usize, rng: &mut ChaCha8Rng) -> Vec<bool> {
    let mut keep = vec![true; d];
    if d == 0 {
        return keep;
    }
    let k = rng.random_range(1..=d);
    for i in rand::seq::index::sample(rng, d, k) {
        keep[i] = false;
    }
    keep
}

/// `100 * cosine distance` of each binary row to the all-ones row 0: with `m` features kept
/// out of `d`, `100 * (1 - sqrt(m / d))`; a row with nothing kept is at 100 (as scikit-learn
/// treats a zero vector).
pub fn cosine_distances(masks: &[Vec<bool>]) -> Vec<f64> {
    masks
        .iter()
        .map(|m| {
            let d = m.len();
            let kept = m.iter().filter(|&&k| k).count();
            if kept == 0 || d == 0 {
                100.0
            } else {
                100.0 * (1.0 - kept as f64 / ((kept as f64).sqrt() * (d as f64).sqrt()))
            }
        })
        .collect()
}

/// lime's kernel, `sqrt(exp(-dist^2 / width^2))`, written as lime writes it.
///
/// A distance of 0 (the text itself) weighs exactly 1 whatever the width: written as lime
/// writes it, a width whose square underflows to 0 (below about 1e-154) would give it
/// `0 / 0 = NaN`, and every number of the fit would be NaN (sent as JSON `null`). For any
/// other width the result is bit for bit lime's (`exp(-0) = 1`).
pub fn kernel_weights(distances: &[f64], kernel_width: f64) -> Vec<f64> {
    distances
        .iter()
        .map(|&d| {
            if d == 0.0 {
                1.0
            } else {
                (-(d * d) / (kernel_width * kernel_width)).exp().sqrt()
            }
        })
        .collect()
}

/// The samples drawn so far and the model's answers, each distinct input evaluated once.
struct Neighbourhood {
    rng: ChaCha8Rng,
    masks: Vec<Vec<bool>>,
    /// Per row, index into `outputs`.
    output_of: Vec<usize>,
    by_mask: HashMap<Vec<bool>, usize>,
    by_row: HashMap<Row, usize>,
    /// Probabilities of each distinct model input.
    outputs: Vec<Vec<f32>>,
}

impl Neighbourhood {
    fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            masks: Vec::new(),
            output_of: Vec::new(),
            by_mask: HashMap::new(),
            by_row: HashMap::new(),
            outputs: Vec::new(),
        }
    }

    /// Draws rows up to `total` (the same rows as [`sample_masks`]) and evaluates the new
    /// distinct inputs in one call, so the engine can batch them together.
    async fn grow<E: Evaluator>(
        &mut self,
        total: usize,
        perturber: &super::features::Perturber<'_>,
        evaluator: &E,
    ) -> Result<(), LimeError> {
        let d = perturber.features().len();
        let first = self.masks.len();
        while self.masks.len() < total {
            let mask = if self.masks.is_empty() {
                vec![true; d]
            } else {
                draw_row(d, &mut self.rng)
            };
            self.masks.push(mask);
        }
        // New distinct masks, in order of first appearance (keeps the batch deterministic).
        let mut fresh: Vec<usize> = Vec::new();
        {
            let mut seen: std::collections::HashSet<&[bool]> = Default::default();
            for (r, mask) in self.masks.iter().enumerate().skip(first) {
                if !self.by_mask.contains_key(mask) && seen.insert(mask) {
                    fresh.push(r);
                }
            }
        }
        // Tokenizing is the CPU part of a perturbation (~0.1 ms a row): spread it.
        let perturbed: Vec<Row> = fresh
            .par_iter()
            .map(|&r| perturber.perturb(&self.masks[r]).map(|p| p.row))
            .collect::<Result<_, _>>()?;
        // Different masks can give one input (a word beyond a truncated window has no tokens).
        let mut to_run: Vec<Row> = Vec::new();
        for (row, &r) in perturbed.into_iter().zip(&fresh) {
            let slot = match self.by_row.get(&row) {
                Some(&s) => s,
                None => {
                    let s = self.outputs.len() + to_run.len();
                    self.by_row.insert(row.clone(), s);
                    to_run.push(row);
                    s
                }
            };
            self.by_mask.insert(self.masks[r].clone(), slot);
        }
        if !to_run.is_empty() {
            let expected = to_run.len();
            let outs = evaluator
                .evaluate(to_run)
                .await
                .map_err(|e| LimeError::Evaluate(Box::new(e)))?;
            if outs.len() != expected {
                return Err(LimeError::Evaluate(
                    format!(
                        "the evaluator returned {} outputs for {expected} rows",
                        outs.len()
                    )
                    .into(),
                ));
            }
            self.outputs
                .extend(outs.into_iter().map(|o| o.probabilities));
        }
        for r in first..self.masks.len() {
            self.output_of.push(self.by_mask[&self.masks[r]]);
        }
        Ok(())
    }

    fn target_values(&self, label: usize) -> Vec<f64> {
        self.output_of
            .iter()
            .map(|&s| self.outputs[s][label] as f64)
            .collect()
    }
}

/// Explains `targets` (label indices, resolved by the caller) of the text behind `features`.
///
/// `features` must have been built with `params.features` and `params.bow`
/// ([`LimeParams::feature_set`]); `encoder` and `truncate` are those that encoded the text, so
/// perturbed texts get the same treatment. The echo reports the feature kind and `bow` of
/// `features` itself, so it is always the truth.
pub async fn explain_lime<E: Evaluator>(
    features: &FeatureSet,
    encoder: &TextEncoder,
    truncate: bool,
    params: &LimeParams,
    max_num_samples: usize,
    targets: &[usize],
    evaluator: &E,
) -> Result<LimeExplanation, LimeError> {
    params.validate(max_num_samples)?;
    let d = features.len();
    if d == 0 {
        let what = match features.kind() {
            FeatureKind::Words => "words (runs of letters, digits or _)",
            FeatureKind::Tokens => "tokens besides the special ones",
        };
        return Err(invalid(
            "text",
            format!("the text has no {what}, so LIME has no feature to weigh"),
        ));
    }
    if targets.is_empty() {
        return Err(invalid(
            "target",
            "at least one target label is needed".into(),
        ));
    }
    let perturber = features.perturber(encoder, params.mask, truncate)?;
    let seed = params
        .seed
        .unwrap_or_else(|| rand::rng().random_range(0..MAX_DRAWN_SEED));
    let num_features = match params.num_features {
        NumFeatures::All => d,
        NumFeatures::Count(k) => k.min(d),
    };
    let selection = params.feature_selection;

    let mut hood = Neighbourhood::new(seed);
    let (surrogates, adaptive) = match params.num_samples {
        NumSamples::Fixed(n) => {
            hood.grow(n, &perturber, evaluator).await?;
            check_targets(targets, &hood)?;
            let s = fit_all(
                &hood,
                targets,
                selection,
                num_features,
                params.kernel_width,
                params.confidence_intervals,
            );
            (s, None)
        }
        NumSamples::Auto => {
            let tolerance = params.tolerance.unwrap_or(DEFAULT_TOLERANCE);
            let mut total = ADAPTIVE_START.min(max_num_samples);
            let mut previous: Option<Vec<Vec<usize>>> = None;
            let mut rounds = 0;
            loop {
                hood.grow(total, &perturber, evaluator).await?;
                rounds += 1;
                check_targets(targets, &hood)?;
                let s = fit_all(
                    &hood,
                    targets,
                    selection,
                    num_features,
                    params.kernel_width,
                    true,
                );
                let ranking: Vec<Vec<usize>> = s.iter().map(|s| s.features.clone()).collect();
                let settled = previous.as_ref() == Some(&ranking)
                    && s.iter().all(|s| separated(s, tolerance));
                if settled || total >= max_num_samples {
                    let used = AdaptiveUsed {
                        tolerance,
                        max_num_samples,
                        rounds,
                        converged: settled,
                    };
                    break (s, Some(used));
                }
                previous = Some(ranking);
                total = total.saturating_mul(2).min(max_num_samples);
            }
        }
    };

    let labels = targets
        .iter()
        .zip(surrogates.iter())
        .map(|(&label, s)| {
            label_explanation(
                features,
                label,
                hood.outputs[hood.output_of[0]][label] as f64,
                s,
                params.confidence_intervals,
            )
        })
        .collect();
    let feature_selection = surrogates.first().map_or(selection, |s| s.selection);
    Ok(LimeExplanation {
        labels,
        params: LimeParamsUsed {
            num_samples: hood.masks.len(),
            adaptive,
            num_features,
            kernel_width: params.kernel_width,
            feature_selection,
            bow: features.bow(),
            mask: params.mask,
            features: features.kind(),
            seed,
            confidence_intervals: params.confidence_intervals,
        },
        distinct_rows: hood.outputs.len(),
    })
}

fn check_targets(targets: &[usize], hood: &Neighbourhood) -> Result<(), LimeError> {
    let labels = hood.outputs[hood.output_of[0]].len();
    match targets.iter().find(|&&t| t >= labels) {
        Some(t) => Err(invalid(
            "target",
            format!("target label index {t} is out of range (the model has {labels} labels)"),
        )),
        None => Ok(()),
    }
}

/// One design (distances, kernel, Gram) shared by the surrogates of every target.
fn fit_all(
    hood: &Neighbourhood,
    targets: &[usize],
    selection: FeatureSelection,
    num_features: usize,
    kernel_width: f64,
    intervals: bool,
) -> Vec<Surrogate> {
    let weights = kernel_weights(&cosine_distances(&hood.masks), kernel_width);
    let design = WeightedDesign::new(&hood.masks, &weights);
    targets
        .iter()
        .map(|&t| design.surrogate(&hood.target_values(t), selection, num_features, intervals))
        .collect()
}

/// Whether every neighbouring pair of the ranked weights is told apart: the 95% intervals of
/// their magnitudes do not overlap, or both are narrower than `tolerance * |largest weight|`
/// (a genuine tie, whose order does not matter). Without intervals nothing is settled.
fn separated(s: &Surrogate, tolerance: f64) -> bool {
    let Some(iv) = &s.intervals else {
        return false;
    };
    let top = s.weights.first().map_or(0.0, |w| w.abs());
    let tie = tolerance * top;
    let half = |k: usize| (iv[k].1 - iv[k].0) / 2.0;
    (1..s.weights.len()).all(|k| {
        let (upper, lower) = (k - 1, k);
        let apart = s.weights[upper].abs() - half(upper) > s.weights[lower].abs() + half(lower);
        apart || (half(upper) <= tie && half(lower) <= tie)
    })
}

fn label_explanation(
    features: &FeatureSet,
    label: usize,
    probability: f64,
    s: &Surrogate,
    intervals: bool,
) -> LimeLabel {
    let weights = s
        .features
        .iter()
        .zip(&s.weights)
        .enumerate()
        .map(|(k, (&f, &weight))| {
            let ci = if intervals {
                s.intervals.as_ref().map(|iv| iv[k])
            } else {
                None
            };
            let feature = &features.features()[f];
            LimeWeight {
                feature: f,
                text: feature.text.clone(),
                weight,
                ci_low: ci.map(|c| c.0),
                ci_high: ci.map(|c| c.1),
                spans: feature.spans.clone(),
                tokens: feature.tokens.clone(),
            }
        })
        .collect();
    LimeLabel {
        label,
        probability,
        weights,
        intercept: s.intercept,
        score: s.score,
        local_pred: s.local_pred,
    }
}

// ---- JSON forms of `num_samples` and `num_features`: a number or one keyword. ----

impl Serialize for NumSamples {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Fixed(n) => s.serialize_u64(*n as u64),
            Self::Auto => s.serialize_str("auto"),
        }
    }
}

impl Serialize for NumFeatures {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Count(n) => s.serialize_u64(*n as u64),
            Self::All => s.serialize_str("all"),
        }
    }
}

/// Accepts a non-negative integer or exactly `keyword`, with a message naming both forms
/// (serde's untagged enums would only say "did not match any variant").
struct CountOrKeyword {
    field: &'static str,
    keyword: &'static str,
}

impl Visitor<'_> for CountOrKeyword {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{} as a non-negative integer or \"{}\"",
            self.field, self.keyword
        )
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        usize::try_from(v)
            .map(Some)
            .map_err(|_| E::custom(format!("{} is too large (got {v})", self.field)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        match u64::try_from(v) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        if v.fract() == 0.0 && v >= 0.0 && v < u64::MAX as f64 {
            self.visit_u64(v as u64)
        } else {
            Err(E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if v == self.keyword {
            Ok(None)
        } else {
            Err(E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
}

impl<'de> Deserialize<'de> for NumSamples {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = d.deserialize_any(CountOrKeyword {
            field: "num_samples",
            keyword: "auto",
        })?;
        Ok(v.map_or(Self::Auto, Self::Fixed))
    }
}

impl<'de> Deserialize<'de> for NumFeatures {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = d.deserialize_any(CountOrKeyword {
            field: "num_features",
            keyword: "all",
        })?;
        Ok(v.map_or(Self::All, Self::Count))
    }
}

fn count_or_keyword_schema(
    keyword: &str,
    minimum: u64,
    default: serde_json::Value,
    description: &str,
    examples: [serde_json::Value; 2],
) -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(minimum)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([keyword])),
        )
        .description(Some(description))
        .default(Some(default))
        .examples(examples)
        .into()
}

fn num_samples_schema() -> RefOr<Schema> {
    count_or_keyword_schema(
        "auto",
        2,
        serde_json::json!(1000),
        "Rows of the neighbourhood (row 0 included), at most the server's max_num_samples, or \"auto\" for adaptive sampling.",
        [serde_json::json!(1000), serde_json::json!("auto")],
    )
}

fn num_features_schema() -> RefOr<Schema> {
    count_or_keyword_schema(
        "all",
        1,
        serde_json::json!(10),
        "Features the surrogate keeps, or \"all\".",
        [serde_json::json!(10), serde_json::json!("all")],
    )
}

impl PartialSchema for NumSamples {
    fn schema() -> RefOr<Schema> {
        num_samples_schema()
    }
}
impl ToSchema for NumSamples {}

impl PartialSchema for NumFeatures {
    fn schema() -> RefOr<Schema> {
        num_features_schema()
    }
}
impl ToSchema for NumFeatures {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_numbers_and_keywords() {
        let p: LimeParams = serde_json::from_str(
            r#"{"num_samples": "auto", "num_features": "all", "tolerance": 0.1}"#,
        )
        .unwrap();
        assert_eq!(p.num_samples, NumSamples::Auto);
        assert_eq!(p.num_features, NumFeatures::All);
        let p: LimeParams =
            serde_json::from_str(r#"{"num_samples": 500, "num_features": 3}"#).unwrap();
        assert_eq!(p.num_samples, NumSamples::Fixed(500));
        assert_eq!(p.num_features, NumFeatures::Count(3));
        assert_eq!(p.kernel_width, 25.0);
        assert!(p.bow);
        let p: LimeParams = serde_json::from_str("{}").unwrap();
        assert_eq!(p, LimeParams::default());
    }

    #[test]
    fn bad_forms_name_the_field() {
        let e = serde_json::from_str::<LimeParams>(r#"{"num_samples": "many"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("num_samples as a non-negative integer or \"auto\""),
            "{e}"
        );
        let e = serde_json::from_str::<LimeParams>(r#"{"num_features": -1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_features"), "{e}");
        let e = serde_json::from_str::<LimeParams>(r#"{"feature_selection": "lasso_path"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("forward_selection"), "{e}");
    }

    #[test]
    fn validation_messages_say_how_to_fix() {
        let p = LimeParams {
            num_samples: NumSamples::Fixed(50_000),
            ..Default::default()
        };
        match p.validate(20_000) {
            Err(LimeError::Invalid { field, message }) => {
                assert_eq!(field, "num_samples");
                assert_eq!(
                    message,
                    "num_samples must be between 2 and 20000 (got 50000)"
                );
            }
            other => panic!("{other:?}"),
        }
        let bad = [
            (
                LimeParams {
                    num_samples: NumSamples::Fixed(1),
                    ..Default::default()
                },
                "num_samples",
            ),
            (
                LimeParams {
                    num_features: NumFeatures::Count(0),
                    ..Default::default()
                },
                "num_features",
            ),
            (
                LimeParams {
                    kernel_width: 0.0,
                    ..Default::default()
                },
                "kernel_width",
            ),
            (
                LimeParams {
                    kernel_width: f64::NAN,
                    ..Default::default()
                },
                "kernel_width",
            ),
            (
                LimeParams {
                    tolerance: Some(0.1),
                    ..Default::default()
                },
                "tolerance",
            ),
            (
                LimeParams {
                    num_samples: NumSamples::Auto,
                    tolerance: Some(-1.0),
                    ..Default::default()
                },
                "tolerance",
            ),
        ];
        for (p, want) in bad {
            match p.validate(20_000) {
                Err(LimeError::Invalid { field, .. }) => assert_eq!(field, want),
                other => panic!("{p:?}: {other:?}"),
            }
        }
        assert!(LimeParams::default().validate(20_000).is_ok());
    }

    #[test]
    fn kernel_and_distance_closed_forms() {
        let masks = vec![
            vec![true; 4],
            vec![true, false, false, false],
            vec![false; 4],
        ];
        let d = cosine_distances(&masks);
        assert_eq!(d[0], 0.0);
        assert!((d[1] - 50.0).abs() < 1e-12); // 1 - 1/sqrt(4) = 0.5
        assert_eq!(d[2], 100.0);
        let w = kernel_weights(&d, 25.0);
        assert_eq!(w[0], 1.0);
        assert!((w[1] - (-2.0f64).exp()).abs() < 1e-15); // sqrt(exp(-4))
        assert!((w[2] - (-8.0f64).exp()).abs() < 1e-15);
    }

    #[test]
    fn schema_lists_both_forms() {
        let s = serde_json::to_value(NumSamples::schema()).unwrap();
        assert_eq!(s["oneOf"][1]["enum"][0], "auto");
        let s = serde_json::to_value(NumFeatures::schema()).unwrap();
        assert_eq!(s["oneOf"][1]["enum"][0], "all");
    }
}
