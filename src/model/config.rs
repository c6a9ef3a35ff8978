//! Model configuration: the Hugging Face `config.json` of a checkpoint, normalised across
//! architectures, and the service-side settings of the zero-shot head.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ProblemType;

/// Supported encoder families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// BERT and its relatives with the same weight names (MiniLM).
    Bert,
    DistilBert,
    /// RoBERTa and XLM-R: positions offset by `pad_token_id + 1`, one token type.
    Roberta,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Bert => "bert",
            Architecture::DistilBert => "distilbert",
            Architecture::Roberta => "roberta",
        }
    }
}

/// The encoder's shape, read from `config.json` whatever the family calls its fields.
#[derive(Clone, Debug)]
pub struct EncoderConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: u32,
    /// `gelu` (exact erf), `gelu_new`/`gelu_pytorch_tanh` (tanh approximation) or `relu`.
    pub hidden_act: String,
    /// `Some(labels)` when the checkpoint is a `*ForSequenceClassification`.
    pub classifier_labels: Option<Vec<String>>,
    pub problem_type: ProblemType,
}

impl EncoderConfig {
    /// Maximum input length in tokens (RoBERTa reserves `pad_token_id + 1` positions).
    pub fn max_len(&self) -> usize {
        match self.architecture {
            Architecture::Roberta => {
                self.max_position_embeddings - (self.pad_token_id as usize + 1)
            }
            _ => self.max_position_embeddings,
        }
    }

    /// Parses `config.json`; the error names the field that is missing or wrong.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
        let model_type = v
            .get("model_type")
            .and_then(|m| m.as_str())
            .ok_or("has no \"model_type\"")?
            .to_string();
        let architecture = match model_type.as_str() {
            "bert" => Architecture::Bert,
            "distilbert" => Architecture::DistilBert,
            "roberta" | "xlm-roberta" | "camembert" => Architecture::Roberta,
            other => {
                return Err(format!(
                    "model_type \"{other}\" is not supported (supported: bert, distilbert, roberta, xlm-roberta)"
                ))
            }
        };
        let usize_of = |names: &[&str]| -> Result<usize, String> {
            names
                .iter()
                .find_map(|n| v.get(*n).and_then(|x| x.as_u64()))
                .map(|x| x as usize)
                .ok_or_else(|| format!("is missing \"{}\"", names[0]))
        };
        let (hidden, layers, heads, inter) = if architecture == Architecture::DistilBert {
            (
                usize_of(&["dim"])?,
                usize_of(&["n_layers"])?,
                usize_of(&["n_heads"])?,
                usize_of(&["hidden_dim"])?,
            )
        } else {
            (
                usize_of(&["hidden_size"])?,
                usize_of(&["num_hidden_layers"])?,
                usize_of(&["num_attention_heads"])?,
                usize_of(&["intermediate_size"])?,
            )
        };
        if heads == 0 || hidden % heads != 0 {
            return Err(format!(
                "hidden size {hidden} is not divisible by {heads} attention heads"
            ));
        }
        let hidden_act = v
            .get(if architecture == Architecture::DistilBert {
                "activation"
            } else {
                "hidden_act"
            })
            .and_then(|x| x.as_str())
            .unwrap_or("gelu")
            .to_string();
        if !matches!(
            hidden_act.as_str(),
            "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu"
        ) {
            return Err(format!(
                "activation \"{hidden_act}\" is not supported (gelu, gelu_new, relu)"
            ));
        }
        let is_classifier = v
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter().any(|x| {
                    x.as_str()
                        .is_some_and(|s| s.ends_with("ForSequenceClassification"))
                })
            })
            .unwrap_or(false);
        let classifier_labels = if is_classifier {
            let map: BTreeMap<usize, String> = match v.get("id2label").and_then(|m| m.as_object()) {
                Some(m) => m
                    .iter()
                    .map(|(k, l)| {
                        let i = k
                            .parse::<usize>()
                            .map_err(|_| format!("id2label key \"{k}\" is not an integer"))?;
                        Ok((i, l.as_str().unwrap_or_default().to_string()))
                    })
                    .collect::<Result<_, String>>()?,
                None => {
                    let n = v.get("num_labels").and_then(|x| x.as_u64()).unwrap_or(2) as usize;
                    (0..n).map(|i| (i, format!("LABEL_{i}"))).collect()
                }
            };
            if map.keys().copied().ne(0..map.len()) {
                return Err("id2label must number labels 0..n without gaps".into());
            }
            Some(map.into_values().collect())
        } else {
            None
        };
        let problem_type = match v.get("problem_type").and_then(|x| x.as_str()) {
            None | Some("single_label_classification") => ProblemType::SingleLabel,
            Some("multi_label_classification") => ProblemType::MultiLabel,
            Some("regression") => ProblemType::Regression,
            Some(other) => return Err(format!("problem_type \"{other}\" is not supported")),
        };
        Ok(Self {
            architecture,
            vocab_size: usize_of(&["vocab_size"])?,
            hidden_size: hidden,
            num_layers: layers,
            num_heads: heads,
            intermediate_size: inter,
            max_position_embeddings: usize_of(&["max_position_embeddings"])?,
            type_vocab_size: if architecture == Architecture::DistilBert {
                0
            } else {
                usize_of(&["type_vocab_size"]).unwrap_or(2)
            },
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(|x| x.as_f64())
                .unwrap_or(1e-12),
            pad_token_id: v.get("pad_token_id").and_then(|x| x.as_u64()).unwrap_or(0) as u32,
            hidden_act,
            classifier_labels,
            problem_type,
        })
    }
}

/// One label of a zero-shot head and the prompts that define its prototype.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ZeroShotLabel {
    pub name: String,
    pub prompts: Vec<String>,
}

/// The zero-shot prototype head used for checkpoints without a classification head
/// (METHODS.md, last section). Lives in configuration, not code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZeroShotConfig {
    /// A short name reported as `zero-shot:<name>`.
    pub name: String,
    /// Softmax temperature applied to the cosine similarities.
    pub temperature: f32,
    /// Labels in order, each with its prompts.
    pub labels: Vec<ZeroShotLabel>,
}

impl Default for ZeroShotConfig {
    /// The sentiment head of DEFAULT_MODEL.md.
    fn default() -> Self {
        let l = |name: &str, prompts: &[&str]| ZeroShotLabel {
            name: name.into(),
            prompts: prompts.iter().map(|s| s.to_string()).collect(),
        };
        Self {
            name: "sentiment".into(),
            temperature: 0.02,
            labels: vec![
                l(
                    "negative",
                    &[
                        "This is negative.",
                        "a terrible, awful experience",
                        "I hated it.",
                        "It was bad.",
                        "Very disappointing, would not recommend.",
                        "The worst.",
                    ],
                ),
                l(
                    "positive",
                    &[
                        "This is positive.",
                        "a great, wonderful experience",
                        "I loved it.",
                        "It was good.",
                        "Excellent, highly recommended.",
                        "The best.",
                    ],
                ),
            ],
        }
    }
}

impl ZeroShotConfig {
    /// Checks the head makes sense; the message names the field and the fix.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!(
                "model.zero_shot.temperature must be a positive number (got {})",
                self.temperature
            ));
        }
        if self.labels.len() < 2 {
            return Err("model.zero_shot.labels needs at least two labels".into());
        }
        for l in &self.labels {
            if l.name.trim().is_empty() {
                return Err("model.zero_shot.labels: every label needs a non-empty name".into());
            }
            if l.prompts.is_empty() || l.prompts.iter().any(|p| p.trim().is_empty()) {
                return Err(format!(
                    "model.zero_shot.labels: label \"{}\" needs at least one non-empty prompt",
                    l.name
                ));
            }
        }
        let mut names: Vec<_> = self.labels.iter().map(|l| &l.name).collect();
        names.sort();
        names.dedup();
        if names.len() != self.labels.len() {
            return Err("model.zero_shot.labels: label names must be unique".into());
        }
        Ok(())
    }
}
