//! Input gradients: the derivative of one label's output with respect to the word embeddings.
//!
//! Gradient methods (saliency, gradient x input, integrated gradients) differentiate at the
//! word-embedding lookup (Hugging Face `inputs_embeds`): position and token-type embeddings and
//! the embedding LayerNorm are applied after it as usual. Rows of a batch do not interact, so
//! one backward pass over the sum of the rows' outputs gives every row's gradient at once, and
//! the weights never get a gradient. Two implementations:
//! * f32 weights (the service): [`EncoderClassifier::taped_gradients`], the encoder's forward
//!   and input-only backward pass written out by hand ([`crate::model::bert::Tape`]) over rows
//!   packed without padding, with the head and the output on candle's autograd;
//! * any dtype (f64 in the finite-difference tests): [`EncoderClassifier::autograd_gradients`],
//!   candle's autograd through the encoder's differentiable compositions
//!   ([`ForwardOptions::differentiable`]: candle's fused LayerNorm and softmax would cut the
//!   graph silently) on a padded batch; it is also the reference the hand-written path is
//!   tested against.
//!
//! The engine reaches this through [`GradientModel`], implemented by [`EncoderClassifier`] and
//! by [`LinearGradientModel`], a linear test double with closed-form answers.

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::bert::{ForwardOptions, PackedInput};
use super::heads::{BatchTensors, EncoderClassifier};
use super::{ModelError, ProblemType, Row};

/// Which output is differentiated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// The target label's probability (softmax, sigmoid for multi-label, the score for
    /// regression).
    #[default]
    Probability,
    /// The target label's raw score (logit; cosine over temperature for the zero-shot head).
    Logit,
}

/// One row of a gradient job: the token ids (for positions and token types) and the word
/// embeddings to differentiate at, which need not be the ids' own (integrated gradients walks
/// a path between a baseline and the input).
#[derive(Clone, Debug, PartialEq)]
pub struct GradientRow {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// `[ids.len(), hidden]` row-major.
    pub embeddings: Vec<f32>,
    /// The label whose output is differentiated.
    pub target: usize,
}

impl GradientRow {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The output of one gradient row.
#[derive(Clone, Debug, PartialEq)]
pub struct RowGradient {
    /// The differentiated output at the row's embeddings.
    pub output: f64,
    /// `[len, hidden]` row-major: d output / d embeddings.
    pub gradient: Vec<f32>,
}

/// What the engine needs from a model to run gradient jobs.
pub trait GradientModel: Send + Sync + 'static {
    /// Width of one word embedding.
    fn hidden_size(&self) -> usize;
    fn num_labels(&self) -> usize;
    /// The word embeddings of `ids`: `[ids.len(), hidden]` row-major.
    fn word_embeddings(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError>;
    /// Output and input gradient of each row (rows may differ in length).
    fn gradients(
        &self,
        rows: &[GradientRow],
        output: OutputKind,
    ) -> Result<Vec<RowGradient>, ModelError>;
}

/// `output` of each row's target label and d output / d `embeddings`, for a padded batch.
///
/// `embeddings` is `[B, L, H]` in the encoder's dtype; returns the outputs `[B]` and the
/// gradient `[B, L, H]` (zero at padded positions, up to `exp(-1e4)`).
pub fn input_gradients(
    model: &EncoderClassifier,
    batch: &BatchTensors,
    embeddings: &Tensor,
    targets: &[usize],
    output: OutputKind,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (b, _, _) = embeddings.dims3()?;
    let labels = model.info_labels();
    if targets.len() != b || targets.iter().any(|&t| t >= labels) {
        candle_core::bail!(
            "input_gradients: {} targets for {b} rows, each must be below {labels}",
            targets.len()
        );
    }
    let var = Var::from_tensor(embeddings)?;
    let mut input = batch.input();
    input.embeddings = Some(var.as_tensor());
    let out = model.encoder().forward(
        &input,
        ForwardOptions {
            differentiable: true,
            ..Default::default()
        },
    )?;
    let picked = picked_outputs(model, &out.last_hidden_state, &batch.mask, targets, output)?;
    let grads = picked.sum_all()?.backward()?;
    let gradient = grads.get(var.as_tensor()).cloned().ok_or_else(|| {
        candle_core::Error::Msg(
            "no gradient reached the input embeddings (a fused kernel cut the graph)".into(),
        )
    })?;
    Ok((picked.detach(), gradient))
}

/// Each row's differentiated output `[B]` from the last hidden states `[B, L, H]`: the head,
/// then (for [`OutputKind::Probability`]) the probabilities, then the target's entry.
fn picked_outputs(
    model: &EncoderClassifier,
    hidden: &Tensor,
    mask: &Tensor,
    targets: &[usize],
    output: OutputKind,
) -> candle_core::Result<Tensor> {
    let b = targets.len();
    let labels = model.info_labels();
    let logits = model.head().forward(hidden, mask)?;
    let scores = match output {
        OutputKind::Logit => logits,
        OutputKind::Probability => differentiable_probabilities(model.problem_type(), &logits)?,
    };
    let mut onehot = vec![0f32; b * labels];
    for (i, &t) in targets.iter().enumerate() {
        onehot[i * labels + t] = 1.0;
    }
    let onehot =
        Tensor::from_vec(onehot, (b, labels), scores.device())?.to_dtype(scores.dtype())?;
    (scores * onehot)?.sum(1)
}

/// Probabilities from scores with operations that all have a backward pass.
fn differentiable_probabilities(
    problem: ProblemType,
    logits: &Tensor,
) -> candle_core::Result<Tensor> {
    match problem {
        ProblemType::SingleLabel => candle_nn::ops::softmax(logits, candle_core::D::Minus1),
        ProblemType::MultiLabel => (logits.neg()?.exp()? + 1.0)?.recip(),
        ProblemType::Regression => Ok(logits.clone()),
    }
}

impl EncoderClassifier {
    fn info_labels(&self) -> usize {
        super::Classifier::info(self).labels.len()
    }
    fn problem_type(&self) -> ProblemType {
        super::Classifier::info(self).problem_type
    }
}

impl GradientModel for EncoderClassifier {
    fn hidden_size(&self) -> usize {
        self.encoder().config.hidden_size
    }

    fn num_labels(&self) -> usize {
        self.info_labels()
    }

    fn word_embeddings(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        let ids = Tensor::new(ids, self.encoder().device())?.unsqueeze(0)?;
        Ok(self
            .encoder()
            .word_embeddings(&ids)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    fn gradients(
        &self,
        rows: &[GradientRow],
        output: OutputKind,
    ) -> Result<Vec<RowGradient>, ModelError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let h = self.hidden_size();
        for r in rows {
            if r.embeddings.len() != r.ids.len() * h || r.type_ids.len() != r.ids.len() {
                return Err(ModelError::InvalidRow(format!(
                    "a gradient row has {} ids, {} type ids and {} embedding values (hidden size {h})",
                    r.ids.len(),
                    r.type_ids.len(),
                    r.embeddings.len()
                )));
            }
        }
        if self.encoder().dtype() == DType::F32 {
            self.taped_gradients(rows, output)
        } else {
            self.autograd_gradients(rows, output)
        }
    }
}

impl EncoderClassifier {
    fn plain_batch(&self, rows: &[GradientRow]) -> Result<BatchTensors, ModelError> {
        let plain: Vec<Row> = rows
            .iter()
            .map(|r| Row {
                type_ids: r.type_ids.clone(),
                ..Row::new(r.ids.clone())
            })
            .collect();
        self.batch(&plain)
    }

    /// The gradient path through candle's autograd on a padded batch: the reference
    /// implementation, and what non-f32 weights (the f64 finite-difference tests) take.
    pub fn autograd_gradients(
        &self,
        rows: &[GradientRow],
        output: OutputKind,
    ) -> Result<Vec<RowGradient>, ModelError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let h = self.hidden_size();
        let batch = self.plain_batch(rows)?;
        let l = batch.lengths.iter().copied().max().unwrap_or(0);
        let flat = pad_rows(
            rows.iter().map(|r| r.embeddings.as_slice()),
            rows.len(),
            l,
            h,
        );
        let device = self.encoder().device();
        let embeddings =
            Tensor::from_vec(flat, (rows.len(), l, h), device)?.to_dtype(self.encoder().dtype())?;
        let targets: Vec<usize> = rows.iter().map(|r| r.target).collect();
        let (outputs, gradient) = input_gradients(self, &batch, &embeddings, &targets, output)?;
        let outputs = outputs.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let gradient = gradient
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let lens: Vec<usize> = rows.iter().map(GradientRow::len).collect();
        Ok(unpad_rows(&gradient, &lens, l, h)
            .zip(outputs)
            .map(|(g, output)| RowGradient {
                output,
                gradient: g.to_vec(),
            })
            .collect())
    }

    /// The gradient path written out by hand ([`crate::model::bert::Tape`]): the encoder's
    /// forward pass over the rows packed without padding, the head and the output on candle's
    /// autograd (from a variable holding the last hidden states), then the encoder's backward
    /// pass for the input only.
    pub fn taped_gradients(
        &self,
        rows: &[GradientRow],
        output: OutputKind,
    ) -> Result<Vec<RowGradient>, ModelError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let h = self.hidden_size();
        let batch = self.plain_batch(rows)?;
        let lens: Vec<usize> = rows.iter().map(GradientRow::len).collect();
        let type_ids: Vec<u32> = rows
            .iter()
            .flat_map(|r| r.type_ids.iter().copied())
            .collect();
        let embeddings: Vec<f32> = rows
            .iter()
            .flat_map(|r| r.embeddings.iter().copied())
            .collect();
        let (hidden, tape) = self.encoder().forward_taped(&PackedInput {
            lens: &lens,
            type_ids: &type_ids,
            embeddings: &embeddings,
        })?;
        // The head on autograd, from the hidden states padded to a batch.
        let l = lens.iter().copied().max().unwrap_or(0);
        let padded = pad_rows(packed_rows(&hidden, &lens, h), rows.len(), l, h);
        let device = self.encoder().device();
        let var = Var::from_tensor(&Tensor::from_vec(padded, (rows.len(), l, h), device)?)?;
        let targets: Vec<usize> = rows.iter().map(|r| r.target).collect();
        let picked = picked_outputs(self, var.as_tensor(), &batch.mask, &targets, output)?;
        let grads = picked.sum_all()?.backward()?;
        let d_hidden = grads
            .get(var.as_tensor())
            .ok_or_else(|| {
                ModelError::InvalidRow("the head's output does not depend on its input".into())
            })?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let packed: Vec<f32> = unpad_rows(&d_hidden, &lens, l, h)
            .flatten()
            .copied()
            .collect();
        let gradient = tape.backward(packed)?;
        let outputs = picked.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        Ok(packed_rows(&gradient, &lens, h)
            .zip(outputs)
            .map(|(g, output)| RowGradient {
                output,
                gradient: g.to_vec(),
            })
            .collect())
    }
}

/// Rows of `h`-wide vectors (one slice per row, at most `l` vectors each) zero-padded into a
/// `[rows, l, h]` buffer.
fn pad_rows<'a>(
    parts: impl Iterator<Item = &'a [f32]>,
    rows: usize,
    l: usize,
    h: usize,
) -> Vec<f32> {
    let mut padded = vec![0f32; rows * l * h];
    for (dst, part) in padded.chunks_exact_mut(l * h).zip(parts) {
        dst[..part.len()].copy_from_slice(part);
    }
    padded
}

/// The first `lens[i]` vectors of each row of a `[rows, l, h]` buffer.
fn unpad_rows<'a>(
    padded: &'a [f32],
    lens: &'a [usize],
    l: usize,
    h: usize,
) -> impl Iterator<Item = &'a [f32]> {
    padded
        .chunks_exact(l * h)
        .zip(lens)
        .map(move |(row, &len)| &row[..len * h])
}

/// The rows of `h`-wide vectors packed back to back, `lens[i]` vectors for row `i`.
fn packed_rows<'a>(
    packed: &'a [f32],
    lens: &'a [usize],
    h: usize,
) -> impl Iterator<Item = &'a [f32]> {
    lens.iter().scan(0, move |at, &len| {
        let row = &packed[*at * h..(*at + len) * h];
        *at += len;
        Some(row)
    })
}

/// A linear model over word embeddings, for tests of the gradient methods and the engine:
/// `logit_k = b_k + sum_t sum_d W[k][d] x_td`, with a deterministic embedding per id. Its
/// gradients are known in closed form: `d logit_k / d x_td = W[k][d]`, and integrated
/// gradients of a logit equal `sum_d (x_td - x'_td) W[k][d]` exactly.
pub struct LinearGradientModel {
    /// `[labels][hidden]`.
    pub weights: Vec<Vec<f32>>,
    pub bias: Vec<f32>,
    /// Softmax over the logits for [`OutputKind::Probability`] (else the logit itself).
    pub softmax: bool,
}

impl LinearGradientModel {
    /// The embedding of token `id`: `sin(0.7 (id + 1) (d + 1))`, distinct per id, `[PAD]` = 0
    /// included (so a baseline differs from the input).
    pub fn embedding(&self, id: u32) -> Vec<f32> {
        (0..self.hidden())
            .map(|d| (0.7 * (id as f64 + 1.0) * (d as f64 + 1.0)).sin() as f32)
            .collect()
    }

    fn hidden(&self) -> usize {
        self.weights.first().map_or(0, Vec::len)
    }

    /// Logits of one row given its embeddings.
    pub fn logits(&self, embeddings: &[f32]) -> Vec<f64> {
        let h = self.hidden();
        self.weights
            .iter()
            .zip(&self.bias)
            .map(|(w, &b)| {
                b as f64
                    + embeddings
                        .chunks(h)
                        .flat_map(|x| x.iter().zip(w).map(|(&x, &w)| x as f64 * w as f64))
                        .sum::<f64>()
            })
            .collect()
    }
}

impl GradientModel for LinearGradientModel {
    fn hidden_size(&self) -> usize {
        self.hidden()
    }
    fn num_labels(&self) -> usize {
        self.weights.len()
    }
    fn word_embeddings(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        Ok(ids.iter().flat_map(|&id| self.embedding(id)).collect())
    }
    fn gradients(
        &self,
        rows: &[GradientRow],
        output: OutputKind,
    ) -> Result<Vec<RowGradient>, ModelError> {
        let h = self.hidden();
        rows.iter()
            .map(|r| {
                if r.embeddings.len() != r.ids.len() * h || r.target >= self.weights.len() {
                    return Err(ModelError::InvalidRow("bad gradient row".into()));
                }
                let z = self.logits(&r.embeddings);
                let j = r.target;
                // d out / d x_td = sum_k c_k W[k][d], with c the derivative of out by the logits.
                let (out, c): (f64, Vec<f64>) = if output == OutputKind::Logit || !self.softmax {
                    let mut c = vec![0.0; z.len()];
                    c[j] = 1.0;
                    (z[j], c)
                } else {
                    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
                    let s: f64 = e.iter().sum();
                    let p: Vec<f64> = e.iter().map(|v| v / s).collect();
                    let c = (0..z.len())
                        .map(|k| p[j] * (if k == j { 1.0 } else { 0.0 } - p[k]))
                        .collect();
                    (p[j], c)
                };
                let per_dim: Vec<f32> = (0..h)
                    .map(|d| {
                        c.iter()
                            .zip(&self.weights)
                            .map(|(c, w)| c * w[d] as f64)
                            .sum::<f64>() as f32
                    })
                    .collect();
                let gradient = (0..r.len()).flat_map(|_| per_dim.iter().copied()).collect();
                Ok(RowGradient {
                    output: out,
                    gradient,
                })
            })
            .collect()
    }
}
