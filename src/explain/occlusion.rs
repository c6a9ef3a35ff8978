//! Occlusion (METHODS.md): remove one feature at a time (leave-one-out), or sliding windows of
//! consecutive word occurrences, and report what the model says without them.
//!
//! For a removal `i`, `delta_j = f_j(x) - f_j(x without i)`: positive when the removed words
//! supported label `j`. On an additive model the leave-one-out deltas are exactly the
//! features' contributions, which is what the tests check.
//!
//! Windows always count positions (each word occurrence, as with `bow = false`), so that
//! "three consecutive words" means what it says even when a word repeats; a window is given
//! by the occurrences it covers, and its `text` is the stretch of the original text they span.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::features::{FeatureKind, FeatureSet, Removal, Span};
use super::perturbation::{check_targets, invalid, no_features, MaskRunner, Outcome, PerturbError};
use super::Evaluator;
use crate::model::{Encoding, TextEncoder};

/// Parameters of `POST /explain/occlusion` (METHODS.md, Occlusion). Every field is optional.
#[derive(Clone, Debug, PartialEq, Deserialize, ToSchema)]
#[serde(default)]
#[schema(examples(
    json!({}),
    json!({"window": 3, "stride": 1, "mask": "mask_token"})
))]
pub struct OcclusionParams {
    /// Absent: leave-one-out, one perturbation per feature (a distinct word with `bow`, all
    /// its occurrences removed together). A number `w`: sliding windows of `w` consecutive
    /// word occurrences (token features: tokens) instead; `bow` is then ignored.
    #[schema(minimum = 1, example = 3)]
    pub window: Option<usize>,
    /// Only with `window`: positions between the starts of neighbouring windows (default 1).
    /// Windows start at 0, `stride`, `2 * stride`, ... and the last one is the first that
    /// reaches the end of the text (it may be shorter than `window`).
    #[schema(minimum = 1, example = 1)]
    pub stride: Option<usize>,
    /// One feature per distinct word, removing every occurrence, instead of one per
    /// occurrence (leave-one-out only).
    #[schema(default = true)]
    pub bow: bool,
    /// How a removed feature is hidden from the model.
    #[schema(default = "remove")]
    pub mask: Removal,
    /// Words or model tokens.
    #[schema(default = "words")]
    pub features: FeatureKind,
}

impl Default for OcclusionParams {
    fn default() -> Self {
        Self {
            window: None,
            stride: None,
            bow: true,
            mask: Removal::Remove,
            features: FeatureKind::Words,
        }
    }
}

impl OcclusionParams {
    /// Checks every parameter against its range before any model work.
    pub fn validate(&self) -> Result<(), PerturbError> {
        if self.window == Some(0) {
            return Err(invalid("window", "window must be at least 1 (got 0)"));
        }
        match (self.window, self.stride) {
            (None, Some(_)) => Err(invalid(
                "stride",
                "stride only applies with window (sliding windows)",
            )),
            (_, Some(0)) => Err(invalid("stride", "stride must be at least 1 (got 0)")),
            _ => Ok(()),
        }
    }

    /// The features these parameters ask for: positional (`bow = false`) for windows.
    pub fn feature_set(&self, text: &str, encoding: &Encoding) -> FeatureSet {
        let bow = self.bow && self.window.is_none();
        FeatureSet::new(self.features, text, encoding, bow)
    }
}

/// Leave-one-out or sliding windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OcclusionMode {
    LeaveOneOut,
    Windows,
}

/// Every parameter as actually used.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct OcclusionParamsUsed {
    pub mode: OcclusionMode,
    /// Occurrences per window (1 for leave-one-out).
    pub window: usize,
    /// Positions between window starts (1 for leave-one-out).
    pub stride: usize,
    pub bow: bool,
    pub mask: Removal,
    pub features: FeatureKind,
}

/// One perturbation: what was removed and what the model then said.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Occluded {
    /// Indices into the response's `features` of what was removed.
    pub features: Vec<usize>,
    /// What was removed: the word (leave-one-out) or the stretch of text the window covers.
    pub removed: String,
    /// Every removed occurrence (UTF-8 and UTF-16 offsets), for highlighting.
    pub spans: Vec<Span>,
    /// The model on the text without them.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What `POST /explain/occlusion` computes (the API layer adds model, prediction, tokens,
/// features and usage).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[schema(examples(json!({
    "occlusions": [{
        "features": [7],
        "removed": "wonderful",
        "spans": [{"start": 37, "end": 46, "utf16_start": 37, "utf16_end": 46}],
        "text": "The plot was thin but the acting was .",
        "probabilities": [0.61, 0.39],
        "label": 0,
        "flipped": true,
        "deltas": [0.53]
    }],
    "params": {"mode": "leave_one_out", "window": 1, "stride": 1, "bow": true,
               "mask": "remove", "features": "words"},
    "flips": 1,
    "distinct_rows": 10
})))]
pub struct OcclusionExplanation {
    /// One entry per feature (leave-one-out) or window, in text order.
    pub occlusions: Vec<Occluded>,
    pub params: OcclusionParamsUsed,
    /// How many perturbations changed the predicted label.
    pub flips: usize,
    /// Distinct model inputs evaluated, the original included.
    pub distinct_rows: usize,
}

/// The windows over `n` positions: starts `0, s, 2s, ...`, each `w` long (the last one cut at
/// `n`), stopping after the first window that reaches the end.
pub fn windows(n: usize, w: usize, s: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    if n == 0 || w == 0 || s == 0 {
        return out;
    }
    let mut start = 0;
    loop {
        let end = (start + w).min(n);
        out.push(start..end);
        if end == n {
            return out;
        }
        start += s;
        if start >= n {
            return out;
        }
    }
}

/// Explains `targets` of the text behind `features` by occlusion.
///
/// `features` must come from [`OcclusionParams::feature_set`]; `encoder` and `truncate` are
/// those that encoded the text. `max_perturbations` caps the number of perturbed inputs
/// (the server's `max_num_samples`).
pub async fn explain_occlusion<E: Evaluator>(
    features: &FeatureSet,
    encoder: &TextEncoder,
    truncate: bool,
    params: &OcclusionParams,
    max_perturbations: usize,
    targets: &[usize],
    evaluator: &E,
) -> Result<OcclusionExplanation, PerturbError> {
    params.validate()?;
    let d = features.len();
    if d == 0 {
        return Err(no_features(features, "there is nothing to occlude"));
    }
    let (mode, window, stride) = match params.window {
        None => (OcclusionMode::LeaveOneOut, 1, 1),
        Some(w) => (OcclusionMode::Windows, w, params.stride.unwrap_or(1)),
    };
    let groups: Vec<Vec<usize>> = match mode {
        OcclusionMode::LeaveOneOut => (0..d).map(|i| vec![i]).collect(),
        OcclusionMode::Windows => windows(d, window, stride)
            .into_iter()
            .map(|r| r.collect())
            .collect(),
    };
    if groups.len() > max_perturbations {
        let field = if params.window.is_some() {
            "stride"
        } else {
            "text"
        };
        return Err(invalid(
            field,
            format!(
                "occlusion would evaluate {} perturbations, over the limit of {max_perturbations} (max_num_samples)",
                groups.len()
            ),
        ));
    }

    let mut runner = MaskRunner::new(features, encoder, params.mask, truncate, evaluator)?;
    let mut masks = vec![vec![true; d]];
    for g in &groups {
        let mut keep = vec![true; d];
        for &i in g {
            keep[i] = false;
        }
        masks.push(keep);
    }
    let slots = runner.run(&masks).await?;
    let original = runner.output(slots[0]).to_vec();
    check_targets(targets, original.len())?;

    let text = features.text();
    let mut occlusions = Vec::with_capacity(groups.len());
    for (g, (keep, &slot)) in groups.iter().zip(masks.iter().zip(&slots).skip(1)) {
        let spans: Vec<Span> = g
            .iter()
            .flat_map(|&i| features.features()[i].spans.iter().copied())
            .collect();
        let removed = match mode {
            OcclusionMode::LeaveOneOut => features.features()[g[0]].text.clone(),
            OcclusionMode::Windows => {
                let start = spans.iter().map(|s| s.start).min().unwrap_or(0);
                let end = spans.iter().map(|s| s.end).max().unwrap_or(0);
                text[start..end].to_string()
            }
        };
        let outcome = Outcome::new(
            runner.text_of(keep)?,
            runner.output(slot),
            &original,
            targets,
        );
        occlusions.push(Occluded {
            features: g.clone(),
            removed,
            spans,
            outcome,
        });
    }
    let flips = occlusions.iter().filter(|o| o.outcome.flipped).count();
    Ok(OcclusionExplanation {
        occlusions,
        params: OcclusionParamsUsed {
            mode,
            window,
            stride,
            bow: features.bow(),
            mask: params.mask,
            features: features.kind(),
        },
        flips,
        distinct_rows: runner.distinct_rows(),
    })
}

/// Leave-one-out scores of one label for every feature, `f_j(x) - f_j(x without i)`, with the
/// runner's cache: the flip search orders words by them.
pub(crate) async fn leave_one_out_scores<E: Evaluator>(
    runner: &mut MaskRunner<'_, E>,
    label: usize,
) -> Result<Vec<f64>, PerturbError> {
    let d = runner.features().len();
    let mut masks = vec![vec![true; d]];
    masks.extend((0..d).map(|i| {
        let mut keep = vec![true; d];
        keep[i] = false;
        keep
    }));
    let slots = runner.run(&masks).await?;
    let full = runner.output(slots[0])[label] as f64;
    Ok(slots[1..]
        .iter()
        .map(|&s| full - runner.output(s)[label] as f64)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_text_and_stop_at_the_end() {
        let r = |v: Vec<std::ops::Range<usize>>| -> Vec<(usize, usize)> {
            v.into_iter().map(|r| (r.start, r.end)).collect()
        };
        assert_eq!(r(windows(5, 2, 2)), vec![(0, 2), (2, 4), (4, 5)]);
        assert_eq!(r(windows(5, 2, 1)), vec![(0, 2), (1, 3), (2, 4), (3, 5)]);
        assert_eq!(r(windows(1, 3, 1)), vec![(0, 1)]);
        assert_eq!(r(windows(6, 2, 3)), vec![(0, 2), (3, 5)]);
        assert_eq!(r(windows(7, 2, 3)), vec![(0, 2), (3, 5), (6, 7)]);
        assert_eq!(r(windows(4, 1, 1)), vec![(0, 1), (1, 2), (2, 3), (3, 4)]);
        assert!(windows(0, 2, 1).is_empty());
    }

    #[test]
    fn validation_names_the_field() {
        let bad = [
            (
                OcclusionParams {
                    window: Some(0),
                    ..Default::default()
                },
                "window",
            ),
            (
                OcclusionParams {
                    stride: Some(2),
                    ..Default::default()
                },
                "stride",
            ),
            (
                OcclusionParams {
                    window: Some(2),
                    stride: Some(0),
                    ..Default::default()
                },
                "stride",
            ),
        ];
        for (p, want) in bad {
            match p.validate() {
                Err(PerturbError::Invalid { field, .. }) => assert_eq!(field, want),
                other => panic!("{p:?}: {other:?}"),
            }
        }
        assert!(OcclusionParams::default().validate().is_ok());
        let p: OcclusionParams = serde_json::from_str(r#"{"window": 3}"#).unwrap();
        assert_eq!(p.window, Some(3));
        assert!(p.bow);
    }
}
