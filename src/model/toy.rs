//! A linear bag-of-tokens classifier with known coefficients.
//!
//! It stands in for BERT in tests of the engine and of every explanation method: its logits
//! are `bias_k + sum_t weight(t, k)` over the row's tokens, so the true attribution of each
//! token is known in closed form (LIME must recover the coefficients, SHAP of an additive model
//! equals each feature's contribution, occlusion deltas equal the coefficients).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Classifier, ModelError, ModelInfo, ProblemType, Row, RowOutput};

/// Output of the toy model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToyOutput {
    /// Softmax over the logits (a normal classifier).
    Softmax,
    /// The first label's logit returned as is (an additive "probability" for exact known
    /// answers: SHAP values and occlusion deltas equal the coefficients).
    Identity,
}

pub struct ToyClassifier {
    info: ModelInfo,
    /// Per token id: one weight per label. Tokens not listed weigh zero.
    weights: HashMap<u32, Vec<f32>>,
    bias: Vec<f32>,
    output: ToyOutput,
    /// Number of `forward` calls (batches) seen, for tests of batching.
    batches: AtomicUsize,
    /// Number of rows seen.
    rows: AtomicUsize,
}

impl ToyClassifier {
    pub fn new(
        labels: Vec<String>,
        weights: HashMap<u32, Vec<f32>>,
        bias: Vec<f32>,
        output: ToyOutput,
    ) -> Self {
        assert_eq!(labels.len(), bias.len(), "one bias per label");
        let info = ModelInfo {
            id: "toy-linear".into(),
            architecture: "toy".into(),
            sha256: "0".repeat(64),
            head: "toy-linear".into(),
            labels,
            problem_type: ProblemType::SingleLabel,
            num_layers: 2,
            num_heads: 2,
            hidden_size: 4,
            max_len: 512,
        };
        Self {
            info,
            weights,
            bias,
            output,
            batches: AtomicUsize::new(0),
            rows: AtomicUsize::new(0),
        }
    }

    /// Logits of one row.
    pub fn logits(&self, ids: &[u32]) -> Vec<f32> {
        let mut z = self.bias.clone();
        for id in ids {
            if let Some(w) = self.weights.get(id) {
                for (zk, wk) in z.iter_mut().zip(w) {
                    *zk += wk;
                }
            }
        }
        z
    }

    pub fn batches_seen(&self) -> usize {
        self.batches.load(Ordering::SeqCst)
    }
    pub fn rows_seen(&self) -> usize {
        self.rows.load(Ordering::SeqCst)
    }
}

/// Numerically stable softmax.
pub fn softmax(z: &[f32]) -> Vec<f32> {
    let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

impl Classifier for ToyClassifier {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn forward(&self, rows: &[Row]) -> Result<Vec<RowOutput>, ModelError> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.rows.fetch_add(rows.len(), Ordering::SeqCst);
        rows.iter()
            .map(|row| {
                if row.ids.is_empty() {
                    return Err(ModelError::InvalidRow("empty row".into()));
                }
                let logits = self.logits(&row.ids);
                let probabilities = match self.output {
                    ToyOutput::Softmax => softmax(&logits),
                    ToyOutput::Identity => logits.clone(),
                };
                Ok(RowOutput {
                    logits,
                    probabilities,
                    attentions: None,
                })
            })
            .collect()
    }
}
