//! The model layer: our own transformer encoder on candle, the tokenizer, the classification
//! heads and the loader. Nothing here knows about HTTP or the engine.
//!
//! Everything above this layer reaches a model through [`Classifier`]: "evaluate these rows,
//! give me probabilities (and attentions when asked)". Explanation methods are tested against a
//! toy linear classifier implementing the same trait.

pub mod amx;
pub mod bert;
pub mod config;
pub mod gradients;
pub mod heads;
pub mod kernels;
pub mod loader;
pub mod tokenizer;
pub mod toy;

use std::sync::Arc;

pub use loader::{load_model, LoadedModel};
pub use tokenizer::{Encoding, TextEncoder};

/// A set of attention heads switched off for one row, as `(layer, head)` pairs.
///
/// Kept sorted and deduplicated so that two masks with the same heads compare and hash equal
/// (the row cache and in-job deduplication key on it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeadMask(Vec<(usize, usize)>);

impl HeadMask {
    /// Builds a mask from pairs in any order; duplicates are merged.
    pub fn new(mut pairs: Vec<(usize, usize)>) -> Self {
        pairs.sort_unstable();
        pairs.dedup();
        Self(pairs)
    }
    /// The masked `(layer, head)` pairs, sorted.
    pub fn pairs(&self) -> &[(usize, usize)] {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One sequence to run through the model: token ids with the special tokens already in place.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Row {
    /// Token ids including `[CLS]`/`[SEP]` (or `<s>`/`</s>`).
    pub ids: Vec<u32>,
    /// Token type (segment) ids, same length as `ids`; all zero for single sentences.
    pub type_ids: Vec<u32>,
    /// Heads to switch off for this row only (empty: none).
    pub head_mask: HeadMask,
    /// Whether this row's attention probabilities are wanted (rows that do not ask do not pay).
    pub attentions: bool,
}

impl Row {
    /// A plain row: ids, zero token types, no head mask, no attentions.
    pub fn new(ids: Vec<u32>) -> Self {
        let n = ids.len();
        Self {
            ids,
            type_ids: vec![0; n],
            head_mask: HeadMask::default(),
            attentions: false,
        }
    }
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Attention probabilities of one row: `layers[l]` is `[heads][L][L]` flattened row-major
/// over the row's real tokens only (no padding).
#[derive(Clone, Debug, PartialEq)]
pub struct RowAttentions {
    pub heads: usize,
    pub len: usize,
    pub layers: Vec<Vec<f32>>,
}

impl RowAttentions {
    /// Attention of `head` in `layer` from token `i` to token `j`.
    pub fn get(&self, layer: usize, head: usize, i: usize, j: usize) -> f32 {
        self.layers[layer][(head * self.len + i) * self.len + j]
    }
}

/// What the model returns for one row.
#[derive(Clone, Debug, PartialEq)]
pub struct RowOutput {
    /// Raw head outputs (logits, cosine/T for the zero-shot head, a score for regression).
    pub logits: Vec<f32>,
    /// Per-label probabilities (softmax, sigmoid for multi-label, the raw score for regression).
    pub probabilities: Vec<f32>,
    /// Present only when the row asked for them.
    pub attentions: Option<Arc<RowAttentions>>,
}

/// How a label's output is produced, which decides what "probability" means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    SingleLabel,
    MultiLabel,
    Regression,
}

/// Static facts about a loaded classifier, reported by `/info` and in every response.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelInfo {
    /// Folder name or hub id the model was loaded from.
    pub id: String,
    /// `bert`, `distilbert` or `roberta`.
    pub architecture: String,
    /// sha256 of `model.safetensors` (hex), so stored explanations can be traced.
    pub sha256: String,
    /// `classifier` or `zero-shot:<name>`.
    pub head: String,
    pub labels: Vec<String>,
    pub problem_type: ProblemType,
    pub num_layers: usize,
    pub num_heads: usize,
    pub hidden_size: usize,
    /// Maximum sequence length in tokens, special tokens included.
    pub max_len: usize,
}

/// Errors from running the model. Messages are for logs; the API maps them to 500 or 422.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid row: {0}")]
    InvalidRow(String),
    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

/// The small trait every explanation method and the engine see: evaluate rows.
///
/// Implementations must give each row the same output whatever batch it is in (to float
/// tolerance), so batching never changes anyone's answer.
pub trait Classifier: Send + Sync + 'static {
    fn info(&self) -> &ModelInfo;
    /// Runs a batch; `rows` may have different lengths (the implementation pads).
    fn forward(&self, rows: &[Row]) -> Result<Vec<RowOutput>, ModelError>;
}
