//! What the perturbation family (occlusion, counterfactuals, Kernel SHAP) shares: the error
//! type, a runner that evaluates keep-masks and texts with each distinct model input run once,
//! and the per-perturbation outcome (probabilities, deltas, predicted label, flipped or not).
//!
//! Nothing here knows about HTTP or the engine: rows go through an [`Evaluator`].

use std::collections::HashMap;

use rayon::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::features::{FeatureError, FeatureKind, FeatureSet, Perturber, Removal};
use super::Evaluator;
use crate::model::{Row, TextEncoder};

/// Why a perturbation method could not explain.
#[derive(Debug, thiserror::Error)]
pub enum PerturbError {
    /// The request is the client's to fix (422 `validation_error`, `details.field`).
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// Building a perturbed input failed (missing mask/unk token: the client's; too long:
    /// the client's; a mask of the wrong length: a bug).
    #[error(transparent)]
    Features(#[from] FeatureError),
    /// The evaluator (or the text encoder the caller supplied) failed; the source is its own
    /// error type, so the API layer can downcast it and keep its status (overload, timeout).
    #[error("model evaluation failed: {0}")]
    Evaluate(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A validation error naming `field`.
pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> PerturbError {
    PerturbError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The 422 for a text without features, worded for the method.
pub(crate) fn no_features(features: &FeatureSet, method: &str) -> PerturbError {
    let what = match features.kind() {
        FeatureKind::Words => "words (runs of letters, digits or _)",
        FeatureKind::Tokens => "tokens besides the special ones",
    };
    invalid("text", format!("the text has no {what}, so {method}"))
}

/// Checks that every target is a label index of an output with `labels` labels.
pub(crate) fn check_targets(targets: &[usize], labels: usize) -> Result<(), PerturbError> {
    if targets.is_empty() {
        return Err(invalid("target", "at least one target label is needed"));
    }
    match targets.iter().find(|&&t| t >= labels) {
        Some(t) => Err(invalid(
            "target",
            format!("target label index {t} is out of range (the model has {labels} labels)"),
        )),
        None => Ok(()),
    }
}

/// The predicted label: the most probable, the first of equals (as the API's `prediction`
/// ranks them).
pub fn predicted_label(probabilities: &[f32]) -> usize {
    let mut best = 0;
    for (i, p) in probabilities.iter().enumerate() {
        if *p > probabilities[best] {
            best = i;
        }
    }
    best
}

/// What the model said about one perturbed (or edited) input, compared with the original.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Outcome {
    /// The text the model saw. Absent when the model input is not the tokenization of a text
    /// (`mask_token`, `unk_token`, token features): then the tokens changed, not the text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Probability of every label, in the model's label order (`/info`'s `labels`).
    pub probabilities: Vec<f32>,
    /// Index of the predicted label of this input.
    pub label: usize,
    /// Whether `label` differs from the original text's predicted label.
    pub flipped: bool,
    /// `f_j(x) - f_j(x')` for each target label `j`, in the order of `targets`: positive
    /// when the change lowered the label's probability.
    pub deltas: Vec<f64>,
}

impl Outcome {
    pub fn new(
        text: Option<String>,
        probabilities: &[f32],
        original: &[f32],
        targets: &[usize],
    ) -> Self {
        let label = predicted_label(probabilities);
        Outcome {
            text,
            probabilities: probabilities.to_vec(),
            label,
            flipped: label != predicted_label(original),
            deltas: targets
                .iter()
                .map(|&j| original[j] as f64 - probabilities[j] as f64)
                .collect(),
        }
    }
}

/// Evaluates keep-masks over one feature set (and arbitrary rows), remembering every answer:
/// a mask or model input seen before, in this call or an earlier one, is not run again.
pub struct MaskRunner<'a, E> {
    perturber: Perturber<'a>,
    evaluator: &'a E,
    by_mask: HashMap<Vec<bool>, usize>,
    by_row: HashMap<Row, usize>,
    /// Probabilities of each distinct model input, in order of first evaluation.
    outputs: Vec<Vec<f32>>,
}

impl<'a, E: Evaluator> MaskRunner<'a, E> {
    /// Fails up front when the removal strategy needs a token the tokenizer lacks.
    pub fn new(
        features: &'a FeatureSet,
        encoder: &'a TextEncoder,
        removal: Removal,
        truncate: bool,
        evaluator: &'a E,
    ) -> Result<Self, PerturbError> {
        Ok(Self {
            perturber: features.perturber(encoder, removal, truncate)?,
            evaluator,
            by_mask: HashMap::new(),
            by_row: HashMap::new(),
            outputs: Vec::new(),
        })
    }

    pub fn features(&self) -> &'a FeatureSet {
        self.perturber.features()
    }

    /// Distinct model inputs evaluated so far.
    pub fn distinct_rows(&self) -> usize {
        self.outputs.len()
    }

    /// Distinct masks seen so far (each at most one model evaluation).
    pub fn distinct_masks(&self) -> usize {
        self.by_mask.len()
    }

    /// Whether `mask` has been evaluated already.
    pub fn knows(&self, mask: &[bool]) -> bool {
        self.by_mask.contains_key(mask)
    }

    /// Probabilities of an evaluated slot.
    pub fn output(&self, slot: usize) -> &[f32] {
        &self.outputs[slot]
    }

    /// Evaluates the masks (`true`: feature kept) not seen before, in one evaluator call so the
    /// engine can batch them; returns the output slot of every mask, in order.
    pub async fn run(&mut self, masks: &[Vec<bool>]) -> Result<Vec<usize>, PerturbError> {
        let mut fresh: Vec<&Vec<bool>> = Vec::new();
        {
            let mut seen: std::collections::HashSet<&[bool]> = Default::default();
            for mask in masks {
                if !self.by_mask.contains_key(mask) && seen.insert(mask) {
                    fresh.push(mask);
                }
            }
        }
        // Tokenizing is the CPU part of a perturbation (~0.1 ms a row): spread it.
        let perturber = self.perturber;
        let rows: Vec<Row> = fresh
            .par_iter()
            .map(|m| perturber.perturb(m).map(|p| p.row))
            .collect::<Result<_, _>>()?;
        let slots = self.run_rows(rows).await?;
        for (mask, slot) in fresh.into_iter().zip(slots) {
            self.by_mask.insert(mask.clone(), slot);
        }
        Ok(masks.iter().map(|m| self.by_mask[m]).collect())
    }

    /// Evaluates model inputs not seen before (in one call); returns the slot of each row.
    pub async fn run_rows(&mut self, rows: Vec<Row>) -> Result<Vec<usize>, PerturbError> {
        let mut slots = Vec::with_capacity(rows.len());
        let mut to_run: Vec<Row> = Vec::new();
        for row in rows {
            let slot = match self.by_row.get(&row) {
                Some(&s) => s,
                None => {
                    let s = self.outputs.len() + to_run.len();
                    self.by_row.insert(row.clone(), s);
                    to_run.push(row);
                    s
                }
            };
            slots.push(slot);
        }
        if !to_run.is_empty() {
            let expected = to_run.len();
            let outs = match self.evaluator.evaluate(to_run).await {
                Ok(outs) => outs,
                Err(e) => {
                    // Forget the rows that were never answered, so the runner stays consistent.
                    let first = self.outputs.len();
                    self.by_row.retain(|_, s| *s < first);
                    return Err(PerturbError::Evaluate(Box::new(e)));
                }
            };
            if outs.len() != expected {
                return Err(PerturbError::Evaluate(
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
        Ok(slots)
    }

    /// The text the model sees for `keep`, when its input is exactly that text's tokenization
    /// (word features removed by deletion); `None` otherwise.
    pub fn text_of(&self, keep: &[bool]) -> Result<Option<String>, PerturbError> {
        let features = self.perturber.features();
        if features.kind() == FeatureKind::Words && self.perturber.removal() == Removal::Remove {
            Ok(Some(features.text_without(keep)?))
        } else {
            Ok(None)
        }
    }
}

/// `n` choose `k` as a float (exact for every `n` this module meets).
pub fn binomial(n: usize, k: usize) -> f64 {
    if k > n {
        return 0.0;
    }
    let k = k.min(n - k);
    let mut c = 1.0f64;
    for i in 0..k {
        c = c * (n - i) as f64 / (i + 1) as f64;
    }
    c.round()
}

/// Every `k`-subset of `0..n` in lexicographic order, as index lists.
pub fn combinations(n: usize, k: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    if k > n {
        return out;
    }
    let mut idx: Vec<usize> = (0..k).collect();
    loop {
        out.push(idx.clone());
        // The rightmost index that can still move right.
        let Some(i) = (0..k).rev().find(|&i| idx[i] < n - k + i) else {
            return out;
        };
        idx[i] += 1;
        for j in i + 1..k {
            idx[j] = idx[j - 1] + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_are_lexicographic_and_counted() {
        assert_eq!(
            combinations(4, 2),
            vec![
                vec![0, 1],
                vec![0, 2],
                vec![0, 3],
                vec![1, 2],
                vec![1, 3],
                vec![2, 3]
            ]
        );
        assert_eq!(combinations(3, 0), vec![Vec::<usize>::new()]);
        assert_eq!(combinations(3, 3), vec![vec![0, 1, 2]]);
        assert!(combinations(2, 3).is_empty());
        for n in 0..10 {
            for k in 0..=n {
                assert_eq!(combinations(n, k).len() as f64, binomial(n, k));
            }
        }
        assert_eq!(binomial(14, 7), 3432.0);
    }

    #[test]
    fn outcome_deltas_and_flip() {
        let o = Outcome::new(None, &[0.7, 0.3], &[0.2, 0.8], &[1, 0]);
        assert_eq!(o.label, 0);
        assert!(o.flipped);
        assert!((o.deltas[0] - 0.5).abs() < 1e-6);
        assert!((o.deltas[1] + 0.5).abs() < 1e-6);
        // Ties go to the first label, as the API's ranking does.
        assert_eq!(predicted_label(&[0.5, 0.5]), 0);
    }
}
