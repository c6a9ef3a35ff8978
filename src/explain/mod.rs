//! The explanation layer: what a feature is, how it is removed, and the methods built on that.
//! Nothing here knows about HTTP; models are reached through `crate::model`.
//!
//! Every method is written against [`Evaluator`] ("evaluate these rows, give me one output
//! per row"): the service passes an adapter over the batching engine, tests pass a
//! [`DirectEvaluator`] over a toy linear classifier with known answers.

pub mod attention;
pub mod compare;
pub mod counterfactual;
pub mod faithfulness;
pub mod features;
pub mod gradients;
pub mod heads;
pub mod lime;
pub mod occlusion;
pub mod perturbation;
pub mod regression;
pub mod shap;
pub mod word_chars;

use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::model::{Classifier, ModelError, Row, RowOutput};

/// Counters of the model work one explanation caused, reported as `usage`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    /// Distinct rows evaluated (after in-job deduplication), including cache hits.
    pub model_evaluations: usize,
    /// Real tokens of the rows the model actually ran.
    pub tokens_evaluated: usize,
    /// Rows answered by the row cache.
    pub cache_hits: usize,
    pub queue_ms: f64,
    pub inference_ms: f64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.model_evaluations += other.model_evaluations;
        self.tokens_evaluated += other.tokens_evaluated;
        self.cache_hits += other.cache_hits;
        self.queue_ms += other.queue_ms;
        self.inference_ms += other.inference_ms;
    }
}

/// Why an evaluation failed. The engine adapter maps its own errors into `Engine`, keeping the
/// original for the API layer's status mapping.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Engine(String),
}

/// What explanation methods need from the model: evaluate rows, one output per row, in order.
/// Implementations accumulate [`Usage`] across calls.
pub trait Evaluator: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;
    fn evaluate(
        &self,
        rows: Vec<Row>,
    ) -> impl Future<Output = Result<Vec<RowOutput>, Self::Error>> + Send;
    /// What the calls so far cost.
    fn usage(&self) -> Usage;
}

/// Runs rows straight through a classifier on the calling thread, in chunks: for tests and the
/// one-shot CLI (the service uses the engine instead).
pub struct DirectEvaluator {
    classifier: Arc<dyn Classifier>,
    chunk: usize,
    usage: Mutex<Usage>,
}

impl DirectEvaluator {
    pub fn new(classifier: Arc<dyn Classifier>) -> Self {
        Self {
            classifier,
            chunk: 32,
            usage: Mutex::new(Usage::default()),
        }
    }
}

impl Evaluator for DirectEvaluator {
    type Error = EvalError;

    fn evaluate(
        &self,
        rows: Vec<Row>,
    ) -> impl Future<Output = Result<Vec<RowOutput>, EvalError>> + Send {
        let result = (|| {
            let mut out = Vec::with_capacity(rows.len());
            for chunk in rows.chunks(self.chunk.max(1)) {
                out.extend(self.classifier.forward(chunk)?);
            }
            let mut u = self.usage.lock().expect("usage lock");
            u.model_evaluations += rows.len();
            u.tokens_evaluated += rows.iter().map(Row::len).sum::<usize>();
            Ok(out)
        })();
        std::future::ready(result)
    }

    fn usage(&self) -> Usage {
        self.usage.lock().expect("usage lock").clone()
    }
}
