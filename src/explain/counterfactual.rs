//! Counterfactuals (METHODS.md): "modify parts of the input and observe the prediction".
//!
//! * **Edits**: alternative texts from the user, evaluated as they are.
//! * **Substitutions**: a feature (every occurrence, with `bow`) or a span of the text,
//!   replaced by each of a list of strings; singly and, on request, in combinations (at most one
//!   replacement per substitution, two or more substitutions at once), smallest combinations
//!   first, up to a cap. Spans are **UTF-8 byte offsets** into the text (`start` inclusive,
//!   `end` exclusive), the `start`/`end` that every feature span in a response carries; both must
//!   fall on character boundaries, and `start == end` inserts.
//! * **Flip search**: a small set of features whose removal changes the predicted label.
//!   *Exact*: sets in order of size (all sets of one word, then of two, ...), so the first set
//!   found is a smallest one; used (`strategy = "auto"`) when there are at most 12 features and
//!   the whole lattice, `2^d - 1` sets, fits in `max_evals`. *Greedy*: remove features in
//!   decreasing order of their leave-one-out occlusion score for the predicted label (or of
//!   an attribution the request supplies) until the label flips, then prune: return any
//!   feature whose return keeps the flip, repeated until no single feature can be returned.
//!   Either way the response says which strategy ran and, when nothing was found, whether
//!   the search was complete or the cap stopped it, so a too-small cap is never mistaken for
//!   "no flip exists".

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::features::{FeatureKind, FeatureSet, Removal};
use super::occlusion::leave_one_out_scores;
use super::perturbation::{
    binomial, check_targets, combinations, invalid, predicted_label, MaskRunner, Outcome,
    PerturbError,
};
use super::Evaluator;
use crate::model::tokenizer::TokenizeError;
use crate::model::{Encoding, Row, TextEncoder};

/// Default cap on evaluated combinations of substitutions.
pub const DEFAULT_MAX_COMBINATIONS: usize = 256;
/// Default cap on the flip search's evaluations: the exact search of 12 features needs up to
/// `2^12 - 1 = 4095`.
pub const DEFAULT_FLIP_MAX_EVALS: usize = 4096;
/// The exact flip search is chosen automatically up to this many features.
pub const EXACT_FLIP_MAX_FEATURES: usize = 12;

/// A byte range of the text: `start` inclusive, `end` exclusive, UTF-8 byte offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct ByteSpan {
    /// UTF-8 byte offset of the first replaced byte (a character boundary).
    pub start: usize,
    /// UTF-8 byte offset one past the last replaced byte; equal to `start` to insert.
    pub end: usize,
}

/// One place of the text and what to put there instead. Give `feature` or `span`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(
    json!({"feature": 3, "replacements": ["good", "dull"]}),
    json!({"span": {"start": 4, "end": 8}, "replacements": ["story"]})
))]
pub struct Substitution {
    /// Index into the response's `features` (the same features with the same `bow`); every
    /// occurrence of the feature is replaced.
    #[serde(default)]
    pub feature: Option<usize>,
    /// A byte range of the text (UTF-8 offsets, as feature spans give them).
    #[serde(default)]
    pub span: Option<ByteSpan>,
    /// Texts to put there, each evaluated (`""` deletes).
    pub replacements: Vec<String>,
}

/// How the flip search looks for a set of words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlipStrategy {
    /// `exact` with at most 12 features when `2^features - 1 <= max_evals`, else `greedy`.
    #[default]
    Auto,
    /// Sets in order of size: the first flip found is a smallest set.
    Exact,
    /// Greedy removal in order of the scores, then pruning.
    Greedy,
}

/// Parameters of the flip search. `{}` runs it with the defaults.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FlipSearchParams {
    #[schema(default = "auto")]
    pub strategy: FlipStrategy,
    /// Perturbed inputs the search may evaluate (the original text not counted), at most
    /// the server's `max_num_samples`.
    #[schema(default = 4096, minimum = 1)]
    pub max_evals: usize,
    /// Greedy order: one score per feature, higher meaning more support for the predicted
    /// label (e.g. LIME or SHAP values of that label). Absent: leave-one-out occlusion scores
    /// (`d` more evaluations).
    pub attribution: Option<Vec<f64>>,
}

impl Default for FlipSearchParams {
    fn default() -> Self {
        Self {
            strategy: FlipStrategy::Auto,
            max_evals: DEFAULT_FLIP_MAX_EVALS,
            attribution: None,
        }
    }
}

/// Parameters of `POST /explain/counterfactual`. Give at least one of `edits`,
/// `substitutions` and `flip_search`.
#[derive(Clone, Debug, PartialEq, Deserialize, ToSchema)]
#[serde(default)]
#[schema(examples(
    json!({"edits": ["The plot was thin and the acting was dull."]}),
    json!({"substitutions": [{"feature": 7, "replacements": ["dull", "fine"]},
                             {"span": {"start": 9, "end": 12}, "replacements": ["is"]}],
           "combinations": true}),
    json!({"flip_search": {"strategy": "auto", "max_evals": 4096}})
))]
pub struct CounterfactualParams {
    /// Alternative texts, each evaluated as it is.
    pub edits: Vec<String>,
    /// Places of the text with replacement strings, each evaluated singly.
    pub substitutions: Vec<Substitution>,
    /// Also evaluate combinations of substitutions (one replacement per substitution, two or
    /// more substitutions at once), smallest first, up to `max_combinations`.
    #[schema(default = false)]
    pub combinations: bool,
    /// Cap on evaluated combinations (at most the server's `max_num_samples`).
    #[schema(default = 256, minimum = 1)]
    pub max_combinations: usize,
    /// Search a small set of words whose removal flips the predicted label.
    pub flip_search: Option<FlipSearchParams>,
    /// One feature per distinct word (substitutions and the flip search), removing or
    /// replacing every occurrence, instead of one per occurrence.
    #[schema(default = true)]
    pub bow: bool,
    /// How the flip search hides a removed feature.
    #[schema(default = "remove")]
    pub mask: Removal,
    /// Words or model tokens (flip search and `substitutions[].feature`).
    #[schema(default = "words")]
    pub features: FeatureKind,
}

impl Default for CounterfactualParams {
    fn default() -> Self {
        Self {
            edits: Vec::new(),
            substitutions: Vec::new(),
            combinations: false,
            max_combinations: DEFAULT_MAX_COMBINATIONS,
            flip_search: None,
            bow: true,
            mask: Removal::Remove,
            features: FeatureKind::Words,
        }
    }
}

impl CounterfactualParams {
    /// Checks what does not depend on the text; `max_num_samples` is the server's cap.
    pub fn validate(&self, max_num_samples: usize) -> Result<(), PerturbError> {
        if self.edits.is_empty() && self.substitutions.is_empty() && self.flip_search.is_none() {
            return Err(invalid(
                "edits",
                "give at least one of edits, substitutions and flip_search",
            ));
        }
        if self.combinations && !(1..=max_num_samples).contains(&self.max_combinations) {
            return Err(invalid(
                "max_combinations",
                format!(
                    "max_combinations must be between 1 and {max_num_samples} (got {})",
                    self.max_combinations
                ),
            ));
        }
        let singles: usize = self
            .substitutions
            .iter()
            .map(|s| s.replacements.len())
            .sum();
        let texts = self.edits.len().saturating_add(singles);
        if texts > max_num_samples {
            return Err(invalid(
                "substitutions",
                format!(
                    "edits and substitutions ask for {texts} texts, over the limit of {max_num_samples} (max_num_samples)"
                ),
            ));
        }
        for (i, s) in self.substitutions.iter().enumerate() {
            if s.replacements.is_empty() {
                return Err(invalid(
                    format!("substitutions[{i}].replacements"),
                    format!("substitutions[{i}] has no replacements; give at least one string"),
                ));
            }
            if s.feature.is_some() == s.span.is_some() {
                return Err(invalid(
                    format!("substitutions[{i}]"),
                    format!("substitutions[{i}] needs exactly one of feature and span"),
                ));
            }
        }
        if let Some(f) = &self.flip_search {
            if !(1..=max_num_samples).contains(&f.max_evals) {
                return Err(invalid(
                    "flip_search.max_evals",
                    format!(
                        "flip_search.max_evals must be between 1 and {max_num_samples} (got {})",
                        f.max_evals
                    ),
                ));
            }
            if let Some(a) = &f.attribution {
                if a.iter().any(|x| !x.is_finite()) {
                    return Err(invalid(
                        "flip_search.attribution",
                        "flip_search.attribution must hold finite numbers",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The features these parameters ask for.
    pub fn feature_set(&self, text: &str, encoding: &Encoding) -> FeatureSet {
        FeatureSet::new(self.features, text, encoding, self.bow)
    }
}

/// Which of the request's inputs a counterfactual came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CounterfactualKind {
    Edit,
    Substitution,
    Combination,
}

/// One replacement applied: `substitutions[substitution].replacements[replacement]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Applied {
    pub substitution: usize,
    pub replacement: usize,
}

/// One evaluated alternative text.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Counterfactual {
    pub kind: CounterfactualKind,
    /// For an edit: its index in `edits`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edit: Option<usize>,
    /// For a substitution or combination: the replacements applied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub applied: Vec<Applied>,
    /// The text evaluated, its probabilities, predicted label, flip and deltas.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// How many combinations there were and how many the cap let through.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct CombinationsUsed {
    pub evaluated: usize,
    /// All combinations of two or more substitutions (saturates at 2^64 - 1).
    pub total: u64,
    pub max_combinations: usize,
    /// Whether the cap left some out (the largest ones: smallest combinations come first).
    pub truncated: bool,
}

/// What the flip search found.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct FlipResult {
    /// The strategy that ran (`auto` resolved).
    pub strategy: FlipStrategy,
    /// Greedy only: where the order came from, `occlusion` or `attribution`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// Whether a set whose removal flips the label was found.
    pub found: bool,
    /// The set (indices into `features`), in the order they were removed (greedy) or
    /// ascending (exact); empty when nothing was found.
    pub features: Vec<usize>,
    /// The set's words.
    pub words: Vec<String>,
    /// The input without the set: its text (for `remove`), probabilities and new label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Outcome>,
    /// Exact: the set is a smallest one, and `alternatives` other sets of its size flip too.
    /// Greedy: no single feature of the set can be returned without losing the flip (when
    /// `minimal` is true; false when the cap stopped the pruning).
    pub minimal: bool,
    /// Exact only: other sets of the same (smallest) size that flip as well.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alternatives: Option<usize>,
    /// Exact only: every set of at most this many features was tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub searched_size: Option<usize>,
    /// Whether the search ran to its end. `found = false` with `complete = true` means no
    /// flip exists (exact) or the greedy path never flips; with `complete = false` the cap
    /// stopped it.
    pub complete: bool,
    /// Perturbed inputs evaluated by the search (distinct keep-masks).
    pub evaluations: usize,
    pub max_evals: usize,
    /// The outcome in words.
    pub message: String,
}

/// Every parameter as actually used.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct CounterfactualParamsUsed {
    pub combinations: bool,
    pub max_combinations: usize,
    pub bow: bool,
    pub mask: Removal,
    pub features: FeatureKind,
}

/// What `POST /explain/counterfactual` computes (the API layer adds model, prediction, tokens,
/// features and usage).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(examples(json!({
    "counterfactuals": [{
        "kind": "substitution",
        "applied": [{"substitution": 0, "replacement": 0}],
        "text": "The plot was thin but the acting was dull.",
        "probabilities": [0.71, 0.29],
        "label": 0,
        "flipped": true,
        "deltas": [0.63]
    }],
    "flip_search": {
        "strategy": "exact", "found": true, "features": [7], "words": ["wonderful"],
        "result": {"text": "The plot was thin but the acting was .", "probabilities": [0.64, 0.36],
                   "label": 0, "flipped": true, "deltas": [0.56]},
        "minimal": true, "alternatives": 0, "searched_size": 1, "complete": true,
        "evaluations": 9, "max_evals": 4096,
        "message": "removing 1 word flips the label; no smaller set does"
    },
    "params": {"combinations": false, "max_combinations": 256, "bow": true, "mask": "remove",
               "features": "words"},
    "distinct_rows": 11
})))]
pub struct CounterfactualExplanation {
    /// Edits, then single substitutions, then combinations, in request order.
    pub counterfactuals: Vec<Counterfactual>,
    /// Present when `combinations` was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub combinations: Option<CombinationsUsed>,
    /// Present when `flip_search` was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flip_search: Option<FlipResult>,
    pub params: CounterfactualParamsUsed,
    /// Distinct model inputs evaluated, the original included.
    pub distinct_rows: usize,
}

/// An encoder for user texts without the server's extra limits: the model maximum only, a
/// too-long text a 422 naming its field. The service passes its request scope's encoder
/// instead (configured token limit, same errors as `/predict`).
pub fn plain_encoder(
    encoder: &TextEncoder,
    truncate: bool,
) -> impl Fn(&str, &str) -> Result<Encoding, PerturbError> + Sync + '_ {
    move |field: &str, text: &str| {
        if text.trim().is_empty() {
            return Err(invalid(field, format!("{field} is empty")));
        }
        encoder.encode(text, truncate).map_err(|e| match e {
            TokenizeError::TooLong { tokens, .. } => invalid(
                field,
                format!(
                    "{field} is {tokens} tokens long, over the maximum of {}; shorten it or set \"truncate\": true",
                    encoder.max_len()
                ),
            ),
            other => PerturbError::Evaluate(Box::new(other)),
        })
    }
}

/// The byte ranges a substitution replaces (sorted), after checking them against the text.
fn substitution_spans(
    features: &FeatureSet,
    s: &Substitution,
    i: usize,
) -> Result<Vec<(usize, usize)>, PerturbError> {
    let text = features.text();
    if let Some(f) = s.feature {
        let d = features.len();
        let Some(feature) = features.features().get(f) else {
            return Err(invalid(
                format!("substitutions[{i}].feature"),
                format!(
                    "substitutions[{i}].feature is {f}, but the text has {d} features (0..{d})"
                ),
            ));
        };
        let mut spans: Vec<(usize, usize)> =
            feature.spans.iter().map(|sp| (sp.start, sp.end)).collect();
        spans.sort_unstable();
        spans.dedup();
        return Ok(spans);
    }
    let span = s.span.expect("validated: feature or span");
    let field = format!("substitutions[{i}].span");
    if span.start > span.end || span.end > text.len() {
        return Err(invalid(
            field,
            format!(
                "substitutions[{i}].span {}..{} is not a range of the text's {} bytes",
                span.start,
                span.end,
                text.len()
            ),
        ));
    }
    if !text.is_char_boundary(span.start) || !text.is_char_boundary(span.end) {
        return Err(invalid(
            field,
            format!(
                "substitutions[{i}].span {}..{} splits a character: offsets are UTF-8 bytes",
                span.start, span.end
            ),
        ));
    }
    Ok(vec![(span.start, span.end)])
}

/// Whether two sorted span lists touch the same bytes (an insertion strictly inside a
/// replaced range counts; an insertion at its edge does not).
fn overlaps(a: &[(usize, usize)], b: &[(usize, usize)]) -> bool {
    a.iter().any(|&(s1, e1)| {
        b.iter().any(|&(s2, e2)| {
            if s1 == e1 && s2 == e2 {
                s1 == s2
            } else {
                // Also right for one insertion: it conflicts only strictly inside the range.
                s1 < e2 && s2 < e1
            }
        })
    })
}

/// The text with each range replaced by its string (ranges disjoint).
fn apply(text: &str, mut edits: Vec<(usize, usize, &str)>) -> String {
    edits.sort_by_key(|&(s, e, _)| (s, e));
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (s, e, r) in edits {
        out.push_str(&text[at..s]);
        out.push_str(r);
        at = e;
    }
    out.push_str(&text[at..]);
    out
}

/// One alternative text to evaluate, with where it came from.
struct Alternative {
    kind: CounterfactualKind,
    edit: Option<usize>,
    applied: Vec<Applied>,
    text: String,
    /// The request field an encoding error names.
    field: String,
}

/// Combinations of substitutions (two or more, one replacement each), smallest first, in
/// lexicographic order of substitutions and then of replacements, at most `cap`.
fn combinations_of(replacements: &[usize], cap: usize) -> Vec<Vec<Applied>> {
    let n = replacements.len();
    let mut out = Vec::new();
    for k in 2..=n {
        let mut idx: Vec<usize> = (0..k).collect();
        loop {
            // Every choice of replacements for the substitutions in `idx`.
            let mut choice = vec![0usize; k];
            loop {
                if out.len() == cap {
                    return out;
                }
                out.push(
                    idx.iter()
                        .zip(&choice)
                        .map(|(&s, &r)| Applied {
                            substitution: s,
                            replacement: r,
                        })
                        .collect(),
                );
                let Some(p) = (0..k).rev().find(|&p| choice[p] + 1 < replacements[idx[p]]) else {
                    break;
                };
                choice[p] += 1;
                choice[p + 1..].iter_mut().for_each(|c| *c = 0);
            }
            let Some(i) = (0..k).rev().find(|&i| idx[i] < n - k + i) else {
                break;
            };
            idx[i] += 1;
            for j in i + 1..k {
                idx[j] = idx[j - 1] + 1;
            }
        }
    }
    out
}

/// How many combinations of two or more substitutions exist: `prod(1 + r_i) - 1 - sum r_i`.
fn count_combinations(replacements: &[usize]) -> u64 {
    let mut all: u128 = 1;
    for &r in replacements {
        all = all
            .saturating_mul(1 + r as u128)
            .min(u128::from(u64::MAX) * 4);
    }
    let singles: u128 = replacements.iter().map(|&r| r as u128).sum();
    u64::try_from(all.saturating_sub(1 + singles)).unwrap_or(u64::MAX)
}

/// Explains the text behind `features` by the request's counterfactuals.
///
/// `features` must come from [`CounterfactualParams::feature_set`]; `encoder` and `truncate`
/// are those that encoded the text; `encode(field, text)` tokenizes user and substituted
/// texts under the server's limits ([`plain_encoder`] in tests); `max_num_samples` is the
/// server's cap.
#[allow(clippy::too_many_arguments)]
pub async fn explain_counterfactual<E, F>(
    features: &FeatureSet,
    encoder: &TextEncoder,
    truncate: bool,
    params: &CounterfactualParams,
    max_num_samples: usize,
    targets: &[usize],
    evaluator: &E,
    encode: F,
) -> Result<CounterfactualExplanation, PerturbError>
where
    E: Evaluator,
    F: Fn(&str, &str) -> Result<Encoding, PerturbError> + Sync,
{
    params.validate(max_num_samples)?;
    let text = features.text();

    // Every text first, so that a bad substitution costs no model work.
    let spans: Vec<Vec<(usize, usize)>> = params
        .substitutions
        .iter()
        .enumerate()
        .map(|(i, s)| substitution_spans(features, s, i))
        .collect::<Result<_, _>>()?;
    if params.combinations {
        for i in 0..spans.len() {
            for j in 0..i {
                if overlaps(&spans[i], &spans[j]) {
                    return Err(invalid(
                        format!("substitutions[{i}]"),
                        format!(
                            "substitutions[{i}] overlaps substitutions[{j}], so they cannot be combined"
                        ),
                    ));
                }
            }
        }
    }
    let mut items: Vec<Alternative> = Vec::new();
    for (i, edit) in params.edits.iter().enumerate() {
        items.push(Alternative {
            kind: CounterfactualKind::Edit,
            edit: Some(i),
            applied: Vec::new(),
            text: edit.clone(),
            field: format!("edits[{i}]"),
        });
    }
    let substituted = |applied: &[Applied]| {
        let edits = applied
            .iter()
            .flat_map(|a| {
                let r = params.substitutions[a.substitution].replacements[a.replacement].as_str();
                spans[a.substitution].iter().map(move |&(s, e)| (s, e, r))
            })
            .collect();
        apply(text, edits)
    };
    for (i, s) in params.substitutions.iter().enumerate() {
        for r in 0..s.replacements.len() {
            let applied = vec![Applied {
                substitution: i,
                replacement: r,
            }];
            items.push(Alternative {
                kind: CounterfactualKind::Substitution,
                edit: None,
                text: substituted(&applied),
                applied,
                field: format!("substitutions[{i}].replacements[{r}]"),
            });
        }
    }
    let combinations = if params.combinations {
        let counts: Vec<usize> = params
            .substitutions
            .iter()
            .map(|s| s.replacements.len())
            .collect();
        let combos = combinations_of(&counts, params.max_combinations);
        let total = count_combinations(&counts);
        let used = CombinationsUsed {
            evaluated: combos.len(),
            total,
            max_combinations: params.max_combinations,
            truncated: (combos.len() as u64) < total,
        };
        for applied in combos {
            items.push(Alternative {
                kind: CounterfactualKind::Combination,
                edit: None,
                text: substituted(&applied),
                applied,
                field: "substitutions".into(),
            });
        }
        Some(used)
    } else {
        None
    };
    let rows: Vec<Row> = items
        .iter()
        .map(|a| {
            encode(&a.field, &a.text).map(|e| Row {
                type_ids: e.type_ids,
                ..Row::new(e.ids)
            })
        })
        .collect::<Result<_, _>>()?;

    let mut runner = MaskRunner::new(features, encoder, params.mask, truncate, evaluator)?;
    let d = features.len();
    let original_slot = runner.run(&[vec![true; d]]).await?[0];
    let original = runner.output(original_slot).to_vec();
    check_targets(targets, original.len())?;
    let slots = runner.run_rows(rows).await?;
    let counterfactuals = items
        .into_iter()
        .zip(slots)
        .map(|(a, slot)| Counterfactual {
            kind: a.kind,
            edit: a.edit,
            applied: a.applied,
            outcome: Outcome::new(Some(a.text), runner.output(slot), &original, targets),
        })
        .collect();

    let flip_search = match &params.flip_search {
        Some(f) => Some(flip_search(&mut runner, f, &original, targets).await?),
        None => None,
    };
    Ok(CounterfactualExplanation {
        counterfactuals,
        combinations,
        flip_search,
        params: CounterfactualParamsUsed {
            combinations: params.combinations,
            max_combinations: params.max_combinations,
            bow: features.bow(),
            mask: params.mask,
            features: features.kind(),
        },
        distinct_rows: runner.distinct_rows(),
    })
}

/// The keep-mask removing exactly `set`.
fn without(d: usize, set: &[usize]) -> Vec<bool> {
    let mut keep = vec![true; d];
    for &i in set {
        keep[i] = false;
    }
    keep
}

/// The flip search over the runner's features; `original` is the text's output.
pub async fn flip_search<E: Evaluator>(
    runner: &mut MaskRunner<'_, E>,
    params: &FlipSearchParams,
    original: &[f32],
    targets: &[usize],
) -> Result<FlipResult, PerturbError> {
    let features = runner.features();
    let d = features.len();
    if let Some(a) = &params.attribution {
        if a.len() != d {
            return Err(invalid(
                "flip_search.attribution",
                format!(
                    "flip_search.attribution has {} scores but the text has {d} features",
                    a.len()
                ),
            ));
        }
    }
    let strategy = match params.strategy {
        FlipStrategy::Auto => {
            let lattice = if d < 63 { (1u64 << d) - 1 } else { u64::MAX };
            if d <= EXACT_FLIP_MAX_FEATURES && lattice <= params.max_evals as u64 {
                FlipStrategy::Exact
            } else {
                FlipStrategy::Greedy
            }
        }
        other => other,
    };
    let start = runner.distinct_masks();
    let mut search = Search {
        runner,
        d,
        label: predicted_label(original),
        budget: params.max_evals,
        start,
    };
    if d == 0 {
        let message = "the text has no features to remove".to_string();
        return Ok(search.not_found(strategy, true, message));
    }
    let mut result = match strategy {
        FlipStrategy::Exact => search.exact().await?,
        _ => search.greedy(params.attribution.as_deref()).await?,
    };
    result.evaluations = search.used();
    if result.found {
        // Evaluated during the search: answered from the runner.
        let keep = without(d, &result.features);
        let slot = search.runner.run(std::slice::from_ref(&keep)).await?[0];
        result.words = result
            .features
            .iter()
            .map(|&i| features.features()[i].text.clone())
            .collect();
        result.result = Some(Outcome::new(
            search.runner.text_of(&keep)?,
            search.runner.output(slot),
            original,
            targets,
        ));
    }
    Ok(result)
}

struct Search<'r, 'a, E> {
    runner: &'r mut MaskRunner<'a, E>,
    d: usize,
    /// The original predicted label: a flip is any other.
    label: usize,
    budget: usize,
    /// Distinct masks the runner knew before the search (the original among them).
    start: usize,
}

impl<E: Evaluator> Search<'_, '_, E> {
    fn used(&self) -> usize {
        self.runner.distinct_masks() - self.start
    }

    /// Masks of `sets` the runner has not evaluated yet (what evaluating them would cost).
    fn cost(&self, masks: &[Vec<bool>]) -> usize {
        let mut seen = std::collections::HashSet::new();
        masks
            .iter()
            .filter(|m| !self.runner.knows(m) && seen.insert(*m))
            .count()
    }

    fn fits(&self, masks: &[Vec<bool>]) -> bool {
        self.used() + self.cost(masks) <= self.budget
    }

    /// For each set, whether removing it flips the label, and the original label's
    /// probability without it.
    async fn evaluate(&mut self, sets: &[Vec<usize>]) -> Result<Vec<(bool, f32)>, PerturbError> {
        let masks: Vec<Vec<bool>> = sets.iter().map(|s| without(self.d, s)).collect();
        let slots = self.runner.run(&masks).await?;
        Ok(slots
            .into_iter()
            .map(|s| {
                let p = self.runner.output(s);
                (predicted_label(p) != self.label, p[self.label])
            })
            .collect())
    }

    fn found(&self, strategy: FlipStrategy, set: Vec<usize>, message: String) -> FlipResult {
        FlipResult {
            strategy,
            order: None,
            found: true,
            features: set,
            words: Vec::new(),
            result: None,
            minimal: true,
            alternatives: None,
            searched_size: None,
            complete: true,
            evaluations: 0,
            max_evals: self.budget,
            message,
        }
    }

    fn not_found(&self, strategy: FlipStrategy, complete: bool, message: String) -> FlipResult {
        FlipResult {
            found: false,
            features: Vec::new(),
            minimal: false,
            complete,
            message,
            ..self.found(strategy, Vec::new(), String::new())
        }
    }

    /// Sets in order of size; the first size with a flip gives the answer (the flipping set
    /// that lowers the original label's probability most, the first of equals).
    async fn exact(&mut self) -> Result<FlipResult, PerturbError> {
        let d = self.d;
        for k in 1..=d {
            let level = binomial(d, k);
            if self.used() as f64 + level > self.budget as f64 {
                let msg = format!(
                    "no set of at most {} feature(s) flips the label; the {} sets of {k} did not fit in the remaining budget of max_evals = {}",
                    k - 1,
                    level,
                    self.budget
                );
                let mut r = self.not_found(FlipStrategy::Exact, false, msg);
                r.searched_size = Some(k - 1);
                return Ok(r);
            }
            let sets = combinations(d, k);
            let results = self.evaluate(&sets).await?;
            let mut best: Option<(usize, f32)> = None;
            let mut count = 0;
            for (i, &(flipped, p)) in results.iter().enumerate() {
                if flipped {
                    count += 1;
                    if best.is_none_or(|(_, bp)| p < bp) {
                        best = Some((i, p));
                    }
                }
            }
            if let Some((i, _)) = best {
                let plural = if k == 1 { "" } else { "s" };
                let msg = format!(
                    "removing {k} feature{plural} flips the label; no smaller set does ({} other set{} of {k} flip as well)",
                    count - 1,
                    if count - 1 == 1 { "" } else { "s" }
                );
                let mut r = self.found(FlipStrategy::Exact, sets[i].clone(), msg);
                r.alternatives = Some(count - 1);
                r.searched_size = Some(k);
                return Ok(r);
            }
        }
        let mut r = self.not_found(
            FlipStrategy::Exact,
            true,
            "no set of features flips the label, not even removing all of them".into(),
        );
        r.searched_size = Some(d);
        Ok(r)
    }

    /// Remove features in decreasing order of score until the label flips, then prune.
    async fn greedy(&mut self, attribution: Option<&[f64]>) -> Result<FlipResult, PerturbError> {
        let d = self.d;
        let (scores, order_name) = match attribution {
            Some(a) => (a.to_vec(), "attribution"),
            None => {
                let singles: Vec<Vec<bool>> = (0..d).map(|i| without(d, &[i])).collect();
                if !self.fits(&singles) {
                    let msg = format!(
                        "the occlusion scores that order the greedy search need {d} evaluations, over max_evals = {}; raise it or give flip_search.attribution",
                        self.budget
                    );
                    return Ok(self.not_found(FlipStrategy::Greedy, false, msg));
                }
                let scores = leave_one_out_scores(self.runner, self.label).await?;
                (scores, "occlusion")
            }
        };
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));

        // Prefixes in batches of 1, 2, 4, ...: at most twice the evaluations a one-by-one
        // search needs, in a logarithmic number of round trips.
        let prefixes: Vec<Vec<usize>> = (1..=d).map(|m| order[..m].to_vec()).collect();
        let mut tried = 0;
        let mut batch = 1;
        let mut flipped_at = None;
        while tried < d && flipped_at.is_none() {
            let end = (tried + batch).min(d);
            let mut affordable = tried;
            let mut masks = Vec::new();
            for p in &prefixes[tried..end] {
                masks.push(without(d, p));
                if !self.fits(&masks) {
                    break;
                }
                affordable += 1;
            }
            if affordable == tried {
                break;
            }
            let results = self.evaluate(&prefixes[tried..affordable]).await?;
            flipped_at = results
                .iter()
                .position(|&(flipped, _)| flipped)
                .map(|k| tried + k);
            tried = affordable;
            batch *= 2;
        }
        let Some(m) = flipped_at else {
            let affordable = tried;
            let mut r = if affordable == d {
                self.not_found(
                    FlipStrategy::Greedy,
                    true,
                    "removing the features in greedy order never flips the label, not even removing all of them".into(),
                )
            } else {
                let msg = format!(
                    "removing the {affordable} highest-scoring features does not flip the label, and max_evals = {} allows no more",
                    self.budget
                );
                self.not_found(FlipStrategy::Greedy, false, msg)
            };
            r.order = Some(order_name.into());
            return Ok(r);
        };
        let mut set = prefixes[m].clone();
        let greedy_size = set.len();

        // Prune until no single feature can be returned: least important first.
        let mut minimal = true;
        'passes: loop {
            let mut changed = false;
            for &f in order[..greedy_size].iter().rev() {
                if set.len() <= 1 || !set.contains(&f) {
                    continue;
                }
                let smaller: Vec<usize> = set.iter().copied().filter(|&x| x != f).collect();
                if !self.fits(&[without(d, &smaller)]) {
                    minimal = false;
                    break 'passes;
                }
                if self.evaluate(std::slice::from_ref(&smaller)).await?[0].0 {
                    set = smaller;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let msg = if minimal {
            format!(
                "removing these {} feature(s) flips the label; greedy removal needed {greedy_size}, and none of the set can be returned without losing the flip (a smaller set may exist)",
                set.len()
            )
        } else {
            format!(
                "removing these {} feature(s) flips the label; max_evals = {} stopped the pruning, so some may be unnecessary",
                set.len(),
                self.budget
            )
        };
        let mut r = self.found(FlipStrategy::Greedy, set, msg);
        r.order = Some(order_name.into());
        r.minimal = minimal;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_are_smallest_first_and_capped() {
        let c = combinations_of(&[2, 1, 1], 100);
        let pairs: Vec<Vec<(usize, usize)>> = c
            .iter()
            .map(|a| a.iter().map(|x| (x.substitution, x.replacement)).collect())
            .collect();
        assert_eq!(
            pairs,
            vec![
                vec![(0, 0), (1, 0)],
                vec![(0, 1), (1, 0)],
                vec![(0, 0), (2, 0)],
                vec![(0, 1), (2, 0)],
                vec![(1, 0), (2, 0)],
                vec![(0, 0), (1, 0), (2, 0)],
                vec![(0, 1), (1, 0), (2, 0)],
            ]
        );
        assert_eq!(count_combinations(&[2, 1, 1]), 7);
        assert_eq!(combinations_of(&[2, 1, 1], 3).len(), 3);
        assert!(combinations_of(&[3], 10).is_empty());
        assert_eq!(count_combinations(&[3]), 0);
        assert_eq!(count_combinations(&[1000; 40]), u64::MAX);
    }

    #[test]
    fn spans_overlap_and_apply() {
        assert!(overlaps(&[(0, 3)], &[(2, 5)]));
        assert!(!overlaps(&[(0, 3)], &[(3, 5)]));
        assert!(overlaps(&[(0, 3)], &[(1, 1)]));
        assert!(!overlaps(&[(0, 3)], &[(3, 3)]));
        assert!(overlaps(&[(2, 2)], &[(2, 2)]));
        assert_eq!(
            apply("the cat sat", vec![(8, 11, "slept"), (4, 7, "dog")]),
            "the dog slept"
        );
        assert_eq!(apply("ab", vec![(1, 1, "-")]), "a-b");
    }

    #[test]
    fn validation_names_the_field() {
        let sub = |feature, span, replacements: Vec<&str>| Substitution {
            feature,
            span,
            replacements: replacements.into_iter().map(String::from).collect(),
        };
        let cases = [
            (CounterfactualParams::default(), "edits"),
            (
                CounterfactualParams {
                    substitutions: vec![sub(Some(0), None, vec![])],
                    ..Default::default()
                },
                "substitutions[0].replacements",
            ),
            (
                CounterfactualParams {
                    substitutions: vec![sub(
                        Some(0),
                        Some(ByteSpan { start: 0, end: 1 }),
                        vec!["x"],
                    )],
                    ..Default::default()
                },
                "substitutions[0]",
            ),
            (
                CounterfactualParams {
                    flip_search: Some(FlipSearchParams {
                        max_evals: 0,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "flip_search.max_evals",
            ),
            (
                CounterfactualParams {
                    edits: vec!["x".into()],
                    combinations: true,
                    max_combinations: 0,
                    ..Default::default()
                },
                "max_combinations",
            ),
            (
                CounterfactualParams {
                    edits: vec!["x".into(); 30],
                    ..Default::default()
                },
                "substitutions",
            ),
        ];
        for (p, want) in cases {
            match p.validate(20) {
                Err(PerturbError::Invalid { field, .. }) => assert_eq!(field, want, "{p:?}"),
                other => panic!("{p:?}: {other:?}"),
            }
        }
        let ok = CounterfactualParams {
            flip_search: Some(FlipSearchParams::default()),
            ..Default::default()
        };
        assert!(ok.validate(20_000).is_ok());
        let p: CounterfactualParams =
            serde_json::from_str(r#"{"flip_search": {}, "substitutions": [{"span": {"start": 0, "end": 2}, "replacements": ["x"]}]}"#)
                .unwrap();
        assert_eq!(p.flip_search, Some(FlipSearchParams::default()));
        assert_eq!(p.substitutions[0].span, Some(ByteSpan { start: 0, end: 2 }));
    }
}
