//! Attention-head ablation as METHODS.md ("Head ablation") defines it: switch chosen
//! `(layer, head)` pairs off (their attention probabilities multiplied by 0, Hugging Face
//! `head_mask` semantics) and watch the prediction.
//!
//! * `mask`: one set of pairs -> the probabilities with and without them.
//! * `sweep = "heads"`: one row per head -> the target probability's drop
//!   `f_j(x) - f_j(x | head masked)` as a `[layers][heads]` grid.
//! * `sweep = "layers"`: one row per layer with all its heads masked.
//!
//! Every row of a request goes to the [`Evaluator`] in one call, so rows with different masks
//! share batches (the model applies a mask per row). Nothing here knows about HTTP or the
//! engine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Evaluator;
use crate::model::{HeadMask, ModelInfo, Row, RowOutput};

/// Which components a sweep switches off, one row each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sweep {
    /// One row per `(layer, head)`.
    Heads,
    /// One row per layer, with every head of that layer masked.
    Layers,
}

/// Parameters of `POST /explain/heads`: exactly one of `mask` and `sweep`.
///
/// A pair naming a layer or head that does not exist, or an unknown sweep, is a 422 naming
/// the field (they are checked against the model, not by the JSON parser).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, ToSchema)]
#[serde(default)]
#[schema(examples(
    json!({"mask": [[0, 1], [5, 3]]}),
    json!({"sweep": "heads"}),
    json!({"sweep": "layers"})
))]
pub struct HeadsParams {
    /// Heads to switch off together, as `[layer, head]` pairs (0-based). An empty list
    /// masks nothing (the result is the original prediction).
    #[schema(value_type = Option<Vec<[usize; 2]>>)]
    pub mask: Option<Vec<[i64; 2]>>,
    /// `heads` (one row per head) or `layers` (one row per layer, all its heads masked).
    #[schema(value_type = Option<Sweep>)]
    pub sweep: Option<String>,
}

/// What a request asks for, checked against the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadsQuery {
    Mask(HeadMask),
    Sweep(Sweep),
}

/// Why head ablation could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum HeadsError {
    /// The request is the client's to fix (422 `validation_error`, `details.field`).
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The evaluator failed; the source is the evaluator's own error type (downcast it to map
    /// engine errors such as overload or timeout to their statuses).
    #[error("model evaluation failed: {0}")]
    Evaluate(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A request field at fault and why (shared with the attention route's `mask`).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl From<FieldError> for HeadsError {
    fn from(e: FieldError) -> Self {
        HeadsError::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<FieldError> for super::attention::AttentionError {
    fn from(e: FieldError) -> Self {
        Self {
            field: e.field,
            message: e.message,
        }
    }
}

/// Checks `[layer, head]` pairs against the model; `field` names them in errors.
pub fn parse_pairs(
    field: &'static str,
    pairs: &[[i64; 2]],
    info: &ModelInfo,
) -> Result<HeadMask, FieldError> {
    let (layers, heads) = (info.num_layers as i64, info.num_heads as i64);
    let mut out = Vec::with_capacity(pairs.len());
    for (k, &[l, h]) in pairs.iter().enumerate() {
        let problem = if !(0..layers).contains(&l) {
            Some(format!(
                "layer {l} does not exist; the model has {layers} layers, numbered 0 to {}",
                layers - 1
            ))
        } else if !(0..heads).contains(&h) {
            Some(format!(
                "head {h} does not exist; the model has {heads} heads per layer, numbered 0 to {}",
                heads - 1
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(FieldError {
                field,
                message: format!("{field}[{k}] = [{l}, {h}]: {problem}"),
            });
        }
        out.push((l as usize, h as usize));
    }
    Ok(HeadMask::new(out))
}

impl HeadsParams {
    /// Checks the request against the model. Call it before any model work so that a bad
    /// request costs nothing.
    pub fn resolve(&self, info: &ModelInfo) -> Result<HeadsQuery, HeadsError> {
        let invalid = |field, message: &str| HeadsError::Invalid {
            field,
            message: message.to_string(),
        };
        match (&self.mask, &self.sweep) {
            (Some(_), Some(_)) => Err(invalid("sweep", "give either mask or sweep, not both")),
            (None, None) => Err(invalid(
                "mask",
                "give mask (a list of [layer, head] pairs) or sweep (\"heads\" or \"layers\")",
            )),
            (Some(pairs), None) => Ok(HeadsQuery::Mask(parse_pairs("mask", pairs, info)?)),
            (None, Some(name)) => match name.as_str() {
                "heads" => Ok(HeadsQuery::Sweep(Sweep::Heads)),
                "layers" => Ok(HeadsQuery::Sweep(Sweep::Layers)),
                other => Err(HeadsError::Invalid {
                    field: "sweep",
                    message: format!("unknown sweep \"{other}\"; use \"heads\" or \"layers\""),
                }),
            },
        }
    }
}

impl HeadsQuery {
    /// One head mask per row to evaluate, in the order of the result.
    pub fn masks(&self, info: &ModelInfo) -> Vec<HeadMask> {
        let (layers, heads) = (info.num_layers, info.num_heads);
        match self {
            HeadsQuery::Mask(mask) => vec![mask.clone()],
            HeadsQuery::Sweep(Sweep::Heads) => (0..layers)
                .flat_map(|l| (0..heads).map(move |h| HeadMask::new(vec![(l, h)])))
                .collect(),
            HeadsQuery::Sweep(Sweep::Layers) => (0..layers)
                .map(|l| HeadMask::new((0..heads).map(|h| (l, h)).collect()))
                .collect(),
        }
    }

    /// How many rows the query evaluates (the original's excluded).
    pub fn row_count(&self, info: &ModelInfo) -> usize {
        match self {
            HeadsQuery::Mask(_) => 1,
            HeadsQuery::Sweep(Sweep::Heads) => info.num_layers * info.num_heads,
            HeadsQuery::Sweep(Sweep::Layers) => info.num_layers,
        }
    }
}

/// The model's output for one row, by label name.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct LabelOutputs {
    /// The most probable label.
    pub label: String,
    /// Label name to raw head output (logit; cosine / T for the zero-shot head).
    pub logits: BTreeMap<String, f32>,
    /// Label name to probability.
    pub probabilities: BTreeMap<String, f32>,
}

impl LabelOutputs {
    fn new(info: &ModelInfo, output: &RowOutput) -> Self {
        let by_label = |values: &[f32]| {
            info.labels
                .iter()
                .cloned()
                .zip(values.iter().copied())
                .collect()
        };
        Self {
            label: info.labels[argmax(&output.probabilities)].clone(),
            logits: by_label(&output.logits),
            probabilities: by_label(&output.probabilities),
        }
    }
}

/// One ablated row: which heads were off and what the model said.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct MaskedRow {
    /// The heads switched off, `[layer, head]`, sorted.
    pub heads: Vec<[usize; 2]>,
    #[serde(flatten)]
    pub output: LabelOutputs,
    /// Whether the most probable label differs from the original's.
    pub flipped: bool,
}

/// How much ablation moved one target label.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct TargetDrops {
    /// Label index.
    pub index: usize,
    pub label: String,
    /// `f_j(x)`, the original probability.
    pub probability: f32,
    /// `f_j(x) - f_j(x | masked)` for each row of `masked`, in order (positive: the
    /// components helped this label).
    pub drops: Vec<f32>,
    /// For `sweep = "heads"`: the same drops as a `[layers][heads]` grid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grid: Option<Vec<Vec<f32>>>,
}

/// What was switched off, row by row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AblationKind {
    /// One row: the request's `mask`.
    Mask,
    /// One row per head.
    Heads,
    /// One row per layer, all its heads at once.
    Layers,
}

/// The result of a head-ablation request.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct HeadsExplanation {
    /// `mask`, or the sweep: `heads` or `layers`.
    pub kind: AblationKind,
    /// The unmasked model's output.
    pub original: LabelOutputs,
    /// One entry per ablated row: one for `mask`, `layers x heads` for `sweep = "heads"`
    /// (layer-major), `layers` for `sweep = "layers"`.
    pub masked: Vec<MaskedRow>,
    /// Per target label (the request's `target` or `top_labels`).
    pub importance: Vec<TargetDrops>,
}

/// Runs the query's rows (in one evaluator call, so they share batches) and reports each
/// against `original`, the model's output for `base` without a mask.
pub async fn explain_heads<E: Evaluator>(
    base: &Row,
    query: &HeadsQuery,
    info: &ModelInfo,
    targets: &[usize],
    original: &RowOutput,
    evaluator: &E,
) -> Result<HeadsExplanation, HeadsError> {
    let masks = query.masks(info);
    let rows: Vec<Row> = masks
        .iter()
        .map(|mask| Row {
            head_mask: mask.clone(),
            attentions: false,
            ..base.clone()
        })
        .collect();
    let outputs = evaluator
        .evaluate(rows)
        .await
        .map_err(|e| HeadsError::Evaluate(Box::new(e)))?;
    if outputs.len() != masks.len() {
        return Err(HeadsError::Evaluate(
            format!(
                "the evaluator returned {} outputs for {} rows",
                outputs.len(),
                masks.len()
            )
            .into(),
        ));
    }
    Ok(report(query, info, targets, original, &masks, &outputs))
}

/// The explanation from the rows' outputs (pure, for tests).
pub fn report(
    query: &HeadsQuery,
    info: &ModelInfo,
    targets: &[usize],
    original: &RowOutput,
    masks: &[HeadMask],
    outputs: &[RowOutput],
) -> HeadsExplanation {
    let predicted = argmax(&original.probabilities);
    let masked = masks
        .iter()
        .zip(outputs)
        .map(|(mask, output)| MaskedRow {
            heads: mask.pairs().iter().map(|&(l, h)| [l, h]).collect(),
            output: LabelOutputs::new(info, output),
            flipped: argmax(&output.probabilities) != predicted,
        })
        .collect();
    let importance = targets
        .iter()
        .map(|&j| {
            let p = original.probabilities[j];
            let drops: Vec<f32> = outputs.iter().map(|o| p - o.probabilities[j]).collect();
            let grid = matches!(query, HeadsQuery::Sweep(Sweep::Heads)).then(|| {
                drops
                    .chunks(info.num_heads.max(1))
                    .map(<[f32]>::to_vec)
                    .collect()
            });
            TargetDrops {
                index: j,
                label: info.labels[j].clone(),
                probability: p,
                drops,
                grid,
            }
        })
        .collect();
    let kind = match query {
        HeadsQuery::Mask(_) => AblationKind::Mask,
        HeadsQuery::Sweep(Sweep::Heads) => AblationKind::Heads,
        HeadsQuery::Sweep(Sweep::Layers) => AblationKind::Layers,
    };
    HeadsExplanation {
        kind,
        original: LabelOutputs::new(info, original),
        masked,
        importance,
    }
}

fn argmax(values: &[f32]) -> usize {
    (0..values.len())
        .max_by(|&a, &b| values[a].total_cmp(&values[b]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::explain::DirectEvaluator;
    use crate::model::{Classifier, ModelError, ProblemType};

    /// A classifier whose logit for label 1 is the sum of the weights of the heads left on
    /// (head `(l, h)` weighs `1 + 3l + h` tenths), so every ablation has a known answer.
    struct HeadWeighted {
        info: ModelInfo,
        batches: std::sync::atomic::AtomicUsize,
    }

    impl HeadWeighted {
        fn new() -> Self {
            Self {
                info: info(),
                batches: Default::default(),
            }
        }
        fn weight(l: usize, h: usize) -> f32 {
            (1 + 3 * l + h) as f32 / 10.0
        }
        fn expected(mask: &[(usize, usize)]) -> Vec<f32> {
            let mut z = 0.0;
            for l in 0..2 {
                for h in 0..3 {
                    if !mask.contains(&(l, h)) {
                        z += Self::weight(l, h);
                    }
                }
            }
            crate::model::toy::softmax(&[0.0, z - 1.5])
        }
    }

    impl Classifier for HeadWeighted {
        fn info(&self) -> &ModelInfo {
            &self.info
        }
        fn forward(&self, rows: &[Row]) -> Result<Vec<RowOutput>, ModelError> {
            self.batches
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(rows
                .iter()
                .map(|r| {
                    let p = Self::expected(r.head_mask.pairs());
                    RowOutput {
                        logits: p.iter().map(|v| v.ln()).collect(),
                        probabilities: p,
                        attentions: None,
                    }
                })
                .collect())
        }
    }

    fn info() -> ModelInfo {
        ModelInfo {
            id: "m".into(),
            architecture: "bert".into(),
            sha256: String::new(),
            head: "classifier".into(),
            labels: vec!["negative".into(), "positive".into()],
            problem_type: ProblemType::SingleLabel,
            num_layers: 2,
            num_heads: 3,
            hidden_size: 8,
            max_len: 16,
        }
    }

    fn params(json: serde_json::Value) -> HeadsParams {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn requests_resolve_or_name_the_field() {
        let m = info();
        assert_eq!(
            params(serde_json::json!({"mask": [[1, 2], [0, 0], [1, 2]]}))
                .resolve(&m)
                .unwrap(),
            HeadsQuery::Mask(HeadMask::new(vec![(0, 0), (1, 2)]))
        );
        assert_eq!(
            params(serde_json::json!({"sweep": "layers"}))
                .resolve(&m)
                .unwrap(),
            HeadsQuery::Sweep(Sweep::Layers)
        );
        for (json, field) in [
            (serde_json::json!({}), "mask"),
            (serde_json::json!({"mask": [], "sweep": "heads"}), "sweep"),
            (serde_json::json!({"sweep": "neurons"}), "sweep"),
            (serde_json::json!({"mask": [[2, 0]]}), "mask"),
            (serde_json::json!({"mask": [[0, 3]]}), "mask"),
            (serde_json::json!({"mask": [[0, -1]]}), "mask"),
        ] {
            match params(json.clone()).resolve(&m) {
                Err(HeadsError::Invalid { field: f, message }) => {
                    assert_eq!(f, field, "{json}: {message}")
                }
                other => panic!("{json}: expected a validation error, got {other:?}"),
            }
        }
        let e = parse_pairs("mask", &[[0, 0], [0, 7]], &m).unwrap_err();
        assert!(
            e.message.contains("mask[1]") && e.message.contains("0 to 2"),
            "{e}"
        );
    }

    #[test]
    fn sweeps_have_one_row_per_head_or_layer() {
        let m = info();
        let heads = HeadsQuery::Sweep(Sweep::Heads).masks(&m);
        assert_eq!(heads.len(), 6);
        assert_eq!(heads[4].pairs(), [(1, 1)]);
        let layers = HeadsQuery::Sweep(Sweep::Layers).masks(&m);
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[1].pairs(), [(1, 0), (1, 1), (1, 2)]);
        assert_eq!(HeadsQuery::Sweep(Sweep::Heads).row_count(&m), 6);
    }

    fn run(query: &HeadsQuery, model: &Arc<HeadWeighted>) -> HeadsExplanation {
        let evaluator = DirectEvaluator::new(model.clone());
        let base = Row::new(vec![1, 2, 3]);
        let original = model
            .forward(std::slice::from_ref(&base))
            .unwrap()
            .remove(0);
        futures_ready(explain_heads(
            &base,
            query,
            &info(),
            &[1, 0],
            &original,
            &evaluator,
        ))
        .unwrap()
    }

    /// Drives a future that is ready at once (the direct evaluator never waits).
    fn futures_ready<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn drops_match_the_known_answers_and_sweeps_equal_single_masks() {
        let model = Arc::new(HeadWeighted::new());
        let p = HeadWeighted::expected(&[])[1];

        let sweep = run(&HeadsQuery::Sweep(Sweep::Heads), &model);
        assert_eq!(sweep.kind, AblationKind::Heads);
        let grid = sweep.importance[0].grid.as_ref().unwrap();
        assert_eq!((grid.len(), grid[0].len()), (2, 3));
        for (l, row) in grid.iter().enumerate() {
            for (h, &drop) in row.iter().enumerate() {
                let want = p - HeadWeighted::expected(&[(l, h)])[1];
                assert!((drop - want).abs() < 1e-6);
                // Equal to masking that head alone.
                let single = run(&HeadsQuery::Mask(HeadMask::new(vec![(l, h)])), &model);
                assert_eq!(single.masked[0], sweep.masked[l * 3 + h]);
                assert_eq!(single.importance[0].drops[0], drop);
            }
        }
        // Later heads weigh more: the grid increases along both axes.
        assert!(grid[1][2] > grid[1][0] && grid[1][0] > grid[0][2]);
        // The second target is the other label: its drops are the negatives.
        assert_eq!(sweep.importance[1].index, 0);
        for (a, b) in sweep.importance[0]
            .drops
            .iter()
            .zip(&sweep.importance[1].drops)
        {
            assert!((a + b).abs() < 1e-6);
        }

        let layers = run(&HeadsQuery::Sweep(Sweep::Layers), &model);
        assert!(layers.importance[0].grid.is_none());
        let want = p - HeadWeighted::expected(&[(1, 0), (1, 1), (1, 2)])[1];
        assert!((layers.importance[0].drops[1] - want).abs() < 1e-6);
        assert_eq!(layers.masked[1].heads, [[1, 0], [1, 1], [1, 2]]);

        // Masking nothing changes nothing.
        let none = run(&HeadsQuery::Mask(HeadMask::default()), &model);
        assert_eq!(none.importance[0].drops, [0.0]);
        assert_eq!(none.masked[0].output, none.original);
        assert!(!none.masked[0].flipped);
    }

    #[test]
    fn a_sweep_is_one_evaluator_call() {
        let model = Arc::new(HeadWeighted::new());
        let before = model.batches.load(std::sync::atomic::Ordering::SeqCst);
        run(&HeadsQuery::Sweep(Sweep::Heads), &model);
        // One forward for the original, one for all six ablated rows (chunk of 32).
        assert_eq!(
            model.batches.load(std::sync::atomic::Ordering::SeqCst) - before,
            2
        );
    }

    #[test]
    fn masking_the_whole_model_flips_the_prediction() {
        let model = Arc::new(HeadWeighted::new());
        let all: Vec<(usize, usize)> = (0..2).flat_map(|l| (0..3).map(move |h| (l, h))).collect();
        let r = run(&HeadsQuery::Mask(HeadMask::new(all)), &model);
        assert_eq!(r.original.label, "positive");
        assert_eq!(r.masked[0].output.label, "negative");
        assert!(r.masked[0].flipped);
    }
}
