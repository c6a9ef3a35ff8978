//! Classification heads on top of the encoder, and [`EncoderClassifier`], the
//! [`Classifier`] the engine runs.
//!
//! * BERT: pooler (`tanh(dense(h_CLS))`) + `classifier`.
//! * DistilBERT: `pre_classifier` + ReLU + `classifier` on `h_CLS`.
//! * RoBERTa: `classifier.dense` + tanh + `classifier.out_proj` on `h_<s>`.
//! * Zero-shot prototypes (METHODS.md, last section) for sentence-embedding checkpoints: the
//!   mean of the last hidden states over real tokens, L2-normalised, compared by cosine with one
//!   prototype per label, divided by a temperature.

use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::VarBuilder;

use super::bert::{load_dense, Dense, Encoder, EncoderInput, ForwardOptions};
use super::config::{Architecture, EncoderConfig, ZeroShotConfig};
use super::{Classifier, ModelError, ModelInfo, ProblemType, Row, RowAttentions, RowOutput};

/// The layer(s) that turn the encoder's output into one score per label.
#[derive(Clone, Debug)]
pub enum Head {
    /// BERT's pooler + classifier.
    Bert { pooler: Dense, classifier: Dense },
    /// DistilBERT's pre_classifier + ReLU + classifier.
    DistilBert {
        pre_classifier: Dense,
        classifier: Dense,
    },
    /// RoBERTa's dense + tanh + out_proj.
    Roberta { dense: Dense, out_proj: Dense },
    /// Cosine similarity to `[labels, hidden]` unit prototypes over a temperature.
    ZeroShot {
        prototypes: Tensor,
        temperature: f64,
    },
}

impl Head {
    /// Loads the classification head of a `*ForSequenceClassification` checkpoint.
    pub fn load_classifier(
        vb: &VarBuilder,
        cfg: &EncoderConfig,
        num_labels: usize,
    ) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        Ok(match cfg.architecture {
            Architecture::Bert => Head::Bert {
                pooler: load_dense(&vb.pp("bert").pp("pooler").pp("dense"), h, h)?,
                classifier: load_dense(&vb.pp("classifier"), h, num_labels)?,
            },
            Architecture::DistilBert => Head::DistilBert {
                pre_classifier: load_dense(&vb.pp("pre_classifier"), h, h)?,
                classifier: load_dense(&vb.pp("classifier"), h, num_labels)?,
            },
            Architecture::Roberta => Head::Roberta {
                dense: load_dense(&vb.pp("classifier").pp("dense"), h, h)?,
                out_proj: load_dense(&vb.pp("classifier").pp("out_proj"), h, num_labels)?,
            },
        })
    }

    /// Scores `[B, labels]` from the last hidden state `[B, L, H]` and the mask `[B, L]`.
    pub fn forward(&self, hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let cls = || hidden.i((.., 0, ..));
        match self {
            Head::Bert { pooler, classifier } => {
                classifier.forward(&pooler.forward(&cls()?)?.tanh()?)
            }
            Head::DistilBert {
                pre_classifier,
                classifier,
            } => classifier.forward(&pre_classifier.forward(&cls()?)?.relu()?),
            Head::Roberta { dense, out_proj } => out_proj.forward(&dense.forward(&cls()?)?.tanh()?),
            Head::ZeroShot {
                prototypes,
                temperature,
            } => {
                let e = mean_pool_normalised(hidden, mask)?;
                e.matmul(&prototypes.t()?)? / *temperature
            }
        }
    }
}

/// Mean of `hidden` over real tokens (mask 1), L2-normalised: `[B, L, H]` -> `[B, H]`.
pub fn mean_pool_normalised(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    if hidden.dtype() == DType::F32 && !hidden.track_op() {
        // Inference: one parallel pass (candle's reduction over the middle dimension runs on
        // one thread while the others wait).
        let (b, l, h) = hidden.dims3()?;
        let mask = mask.to_dtype(DType::F32)?.contiguous()?;
        let hidden = hidden.contiguous()?;
        let out = super::kernels::with_f32(&hidden, "hidden states", |x| {
            super::kernels::with_f32(&mask, "attention mask", |m| {
                super::kernels::mean_pool_normalised_rows(x, m, (b, l, h))
            })
        })??;
        return Tensor::from_vec(out, (b, h), hidden.device());
    }
    let mask = &mask.to_dtype(hidden.dtype())?;
    let m = mask.unsqueeze(2)?; // [B, L, 1]
    let summed = hidden.broadcast_mul(&m)?.sum(1)?; // [B, H]
    let counts = mask.sum_keepdim(1)?; // [B, 1]
    let mean = summed.broadcast_div(&counts)?;
    l2_normalise(&mean)
}

fn l2_normalise(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    x.broadcast_div(&norm)
}

/// A padded batch as tensors.
pub struct BatchTensors {
    pub ids: Tensor,
    pub type_ids: Tensor,
    pub mask: Tensor,
    pub head_mask: Option<Tensor>,
    /// Real length of each row.
    pub lengths: Vec<usize>,
}

/// The encoder plus a head: what the engine's workers run.
pub struct EncoderClassifier {
    encoder: Encoder,
    head: Head,
    info: ModelInfo,
    pad_id: u32,
}

impl EncoderClassifier {
    pub fn new(encoder: Encoder, head: Head, info: ModelInfo, pad_id: u32) -> Self {
        Self {
            encoder,
            head,
            info,
            pad_id,
        }
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Builds the zero-shot head: each prompt is embedded alone, a label's prototype is the
    /// re-normalised mean of its prompts' unit embeddings.
    pub fn zero_shot_head(
        encoder: &Encoder,
        cfg: &ZeroShotConfig,
        encode: impl Fn(&str) -> Result<Vec<u32>, String>,
        pad_id: u32,
    ) -> Result<Head, String> {
        let mut protos = Vec::with_capacity(cfg.labels.len());
        for label in &cfg.labels {
            let mut embs = Vec::new();
            for p in &label.prompts {
                let ids = encode(p)?;
                let batch = batch_tensors(
                    &[Row::new(ids)],
                    encoder.config.num_layers,
                    encoder.config.num_heads,
                    pad_id,
                    encoder.device(),
                )
                .map_err(|e| e.to_string())?;
                let out = encoder
                    .forward(&batch.input(), ForwardOptions::default())
                    .map_err(|e| e.to_string())?;
                embs.push(
                    mean_pool_normalised(&out.last_hidden_state, &batch.mask)
                        .map_err(|e| e.to_string())?,
                );
            }
            let stacked = Tensor::cat(&embs, 0).map_err(|e| e.to_string())?; // [P, H]
            let mean = stacked.mean_keepdim(0).map_err(|e| e.to_string())?;
            protos.push(l2_normalise(&mean).map_err(|e| e.to_string())?);
        }
        let prototypes = Tensor::cat(&protos, 0).map_err(|e| e.to_string())?;
        Ok(Head::ZeroShot {
            prototypes,
            temperature: cfg.temperature as f64,
        })
    }

    /// Tensors for a batch of rows (right-padded).
    pub fn batch(&self, rows: &[Row]) -> Result<BatchTensors, ModelError> {
        for r in rows {
            if r.ids.is_empty() {
                return Err(ModelError::InvalidRow("a row has no tokens".into()));
            }
            if r.ids.len() > self.info.max_len {
                return Err(ModelError::InvalidRow(format!(
                    "a row has {} tokens, over the model's maximum of {}",
                    r.ids.len(),
                    self.info.max_len
                )));
            }
            if let Some(&(l, h)) = r
                .head_mask
                .pairs()
                .iter()
                .find(|(l, h)| *l >= self.info.num_layers || *h >= self.info.num_heads)
            {
                return Err(ModelError::InvalidRow(format!(
                    "head ({l}, {h}) does not exist"
                )));
            }
        }
        Ok(batch_tensors(
            rows,
            self.info.num_layers,
            self.info.num_heads,
            self.pad_id,
            self.encoder.device(),
        )?)
    }

    /// Scores `[B, labels]` for a batch (raw logits / cosines over temperature).
    pub fn logits(
        &self,
        batch: &BatchTensors,
        embeddings: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let mut input = batch.input();
        input.embeddings = embeddings;
        let out = self.encoder.forward(&input, ForwardOptions::default())?;
        self.head.forward(&out.last_hidden_state, &batch.mask)
    }

    /// Turns scores into what this model calls probabilities (softmax, sigmoid, or the score).
    pub fn probabilities(&self, logits: &Tensor) -> candle_core::Result<Tensor> {
        match self.info.problem_type {
            ProblemType::SingleLabel => {
                if self.encoder.differentiable() {
                    candle_nn::ops::softmax(logits, D::Minus1)
                } else {
                    candle_nn::ops::softmax_last_dim(logits)
                }
            }
            ProblemType::MultiLabel => candle_nn::ops::sigmoid(logits),
            ProblemType::Regression => Ok(logits.clone()),
        }
    }
}

impl BatchTensors {
    pub fn input(&self) -> EncoderInput<'_> {
        EncoderInput {
            ids: &self.ids,
            type_ids: &self.type_ids,
            mask: &self.mask,
            head_mask: self.head_mask.as_ref(),
            embeddings: None,
        }
    }
}

/// Pads `rows` to the longest one and builds the id, type, mask and head-mask tensors.
pub fn batch_tensors(
    rows: &[Row],
    layers: usize,
    heads: usize,
    pad_id: u32,
    device: &Device,
) -> candle_core::Result<BatchTensors> {
    let b = rows.len();
    let l = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
    let mut ids = vec![pad_id; b * l];
    let mut types = vec![0u32; b * l];
    let mut mask = vec![0f32; b * l];
    for (i, r) in rows.iter().enumerate() {
        ids[i * l..i * l + r.ids.len()].copy_from_slice(&r.ids);
        for (j, t) in r.type_ids.iter().take(r.ids.len()).enumerate() {
            types[i * l + j] = *t;
        }
        mask[i * l..i * l + r.ids.len()].fill(1.0);
    }
    let head_mask = if rows.iter().any(|r| !r.head_mask.is_empty()) {
        let mut hm = vec![1f32; b * layers * heads];
        for (i, r) in rows.iter().enumerate() {
            for &(layer, head) in r.head_mask.pairs() {
                hm[(i * layers + layer) * heads + head] = 0.0;
            }
        }
        Some(Tensor::from_vec(hm, (b, layers, heads), device)?)
    } else {
        None
    };
    Ok(BatchTensors {
        ids: Tensor::from_vec(ids, (b, l), device)?,
        type_ids: Tensor::from_vec(types, (b, l), device)?,
        mask: Tensor::from_vec(mask, (b, l), device)?,
        head_mask,
        lengths: rows.iter().map(|r| r.ids.len()).collect(),
    })
}

impl Classifier for EncoderClassifier {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn forward(&self, rows: &[Row]) -> Result<Vec<RowOutput>, ModelError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.batch(rows)?;
        let want_attn = rows.iter().any(|r| r.attentions);
        let out = self.encoder.forward(
            &batch.input(),
            ForwardOptions {
                attentions: want_attn,
                ..Default::default()
            },
        )?;
        let logits = self.head.forward(&out.last_hidden_state, &batch.mask)?;
        let probs = self
            .probabilities(&logits)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let logits = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let nh = self.info.num_heads;
        let mut outputs = Vec::with_capacity(rows.len());
        for (i, (row, (lg, pr))) in rows.iter().zip(logits.into_iter().zip(probs)).enumerate() {
            let attentions = match (&out.attentions, row.attentions) {
                (Some(layers), true) => {
                    let len = batch.lengths[i];
                    let per_layer = layers
                        .iter()
                        .map(|a| {
                            a.i(i)?
                                .narrow(1, 0, len)?
                                .narrow(2, 0, len)?
                                .flatten_all()?
                                .to_vec1::<f32>()
                        })
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    Some(Arc::new(RowAttentions {
                        heads: nh,
                        len,
                        layers: per_layer,
                    }))
                }
                _ => None,
            };
            outputs.push(RowOutput {
                logits: lg,
                probabilities: pr,
                attentions,
            });
        }
        Ok(outputs)
    }
}
