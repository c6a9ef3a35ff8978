//! Attention matrices as METHODS.md ("Attention") defines them: post-softmax attention of the
//! real tokens, selected layers and heads, aggregated over heads (`none`, `mean`, `max`) or
//! rolled out through every layer (Abnar & Zuidema 2020), at token or word granularity,
//! rounded to a requested precision.
//!
//! The life of one request:
//!
//! 1. [`AttentionParams::resolve`] checks the selection against the model (422s name the
//!    field) and [`axis`] lays out the entries that label the rows and columns (tokens, or
//!    words with their pieces merged).
//! 2. [`AttentionSelection::value_count`] says how many numbers the answer would hold, so a
//!    request over the configured cap is refused before any model work.
//! 3. [`attention_rows`] builds the one row that asks the model for attentions (plus the plain
//!    original when heads are masked), and [`compute`] turns the model's [`RowAttentions`] into
//!    the answer.
//!
//! Nothing here knows about HTTP or the engine.

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::features::FeatureSet;
use super::heads::parse_pairs;
use crate::model::{Encoding, HeadMask, ModelInfo, Row, RowAttentions};

/// Decimal places of the returned numbers when the request does not say.
pub const DEFAULT_PRECISION: u32 = 4;
/// Most decimal places a request may ask for (f32 carries about seven significant digits).
pub const MAX_PRECISION: u32 = 8;

/// How the heads of a layer are combined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Every selected head on its own.
    None,
    /// The mean over the selected heads (rows still sum to 1).
    #[default]
    Mean,
    /// The element-wise maximum over the selected heads. Not renormalised: a value is what
    /// the strongest head gave, so rows sum to 1 or more.
    Max,
    /// Attention rollout over every layer and head (Abnar & Zuidema 2020), with its pooled row.
    Rollout,
}

impl Aggregation {
    const NAMES: &'static str = "\"none\", \"mean\", \"max\" or \"rollout\"";

    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "none" => Self::None,
            "mean" => Self::Mean,
            "max" => Self::Max,
            "rollout" => Self::Rollout,
            _ => return None,
        })
    }
}

/// What one row and column of a matrix stands for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One entry per model token, special tokens included.
    #[default]
    Tokens,
    /// One entry per word (its pieces merged: attention *to* a word is the sum over its
    /// pieces, attention *from* a word the mean over them); special tokens and tokens outside
    /// any word (punctuation) stay as their own entries.
    Words,
}

impl Granularity {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "tokens" => Self::Tokens,
            "words" => Self::Words,
            _ => return None,
        })
    }
}

/// Which row rollout's attribution is read from: the one the classifier head reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The first token's row (`[CLS]`, `<s>`): BERT pooler, DistilBERT and RoBERTa heads.
    Cls,
    /// The mean of every real token's row: the mean-pooling zero-shot head.
    Mean,
}

impl Pooling {
    /// The pooling of a model's head: zero-shot heads mean-pool, checkpoint heads read `[CLS]`.
    pub fn of(info: &ModelInfo) -> Self {
        if info.head.starts_with("zero-shot") {
            Self::Mean
        } else {
            Self::Cls
        }
    }
}

/// Parameters of `POST /explain/attention` (METHODS.md, Attention). Every field is optional.
///
/// An unknown name or an index that does not exist is a 422 naming the field, like any other
/// out-of-range parameter (they are checked against the model, not by the JSON parser).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, ToSchema)]
#[serde(default)]
#[schema(examples(
    json!({"layers": [0, 5], "aggregation": "mean", "granularity": "words"}),
    json!({"layers": [5], "heads": [0, 3], "aggregation": "none", "precision": 6}),
    json!({"aggregation": "rollout", "granularity": "words"})
))]
pub struct AttentionParams {
    /// Layers to return (0-based); default: every layer. Not allowed with `rollout`, which
    /// always runs through every layer.
    #[schema(value_type = Option<Vec<usize>>)]
    pub layers: Option<Vec<i64>>,
    /// Heads to return or aggregate (0-based); default: every head. Not allowed with
    /// `rollout`, which always averages every head.
    #[schema(value_type = Option<Vec<usize>>)]
    pub heads: Option<Vec<i64>>,
    /// `none`, `mean` (default), `max` or `rollout`.
    #[schema(value_type = Option<Aggregation>)]
    pub aggregation: Option<String>,
    /// `tokens` (default) or `words`.
    #[schema(value_type = Option<Granularity>)]
    pub granularity: Option<String>,
    /// Decimal places of every returned number, 0 to 8 (default 4).
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 8)]
    pub precision: Option<i64>,
    /// Heads to switch off while recording, as `[layer, head]` pairs: their attention is
    /// then all zero, and every later layer sees the change. Default: none.
    #[schema(value_type = Option<Vec<[usize; 2]>>)]
    pub mask: Option<Vec<[i64; 2]>>,
}

/// The parameters actually used, defaults filled in (echoed as `params`).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct AttentionSelection {
    /// Layers returned, in the order asked (for `rollout`: every layer, all folded into one).
    pub layers: Vec<usize>,
    /// Heads returned or aggregated, in the order asked.
    pub heads: Vec<usize>,
    pub aggregation: Aggregation,
    pub granularity: Granularity,
    pub precision: u32,
    /// Heads switched off while recording, `[layer, head]`, sorted.
    pub mask: Vec<[usize; 2]>,
}

/// Why attention could not be explained: a request the client must fix.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AttentionError {
    /// The request field at fault (422 `details.field`).
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: String) -> AttentionError {
    AttentionError { field, message }
}

impl AttentionParams {
    /// Checks every parameter against the model and fills in the defaults. Call it before any
    /// model work so that a bad request costs nothing.
    pub fn resolve(&self, info: &ModelInfo) -> Result<AttentionSelection, AttentionError> {
        let aggregation = match &self.aggregation {
            None => Aggregation::default(),
            Some(name) => Aggregation::parse(name).ok_or_else(|| {
                invalid(
                    "aggregation",
                    format!("unknown aggregation \"{name}\"; use {}", Aggregation::NAMES),
                )
            })?,
        };
        let granularity = match &self.granularity {
            None => Granularity::default(),
            Some(name) => Granularity::parse(name).ok_or_else(|| {
                invalid(
                    "granularity",
                    format!("unknown granularity \"{name}\"; use \"tokens\" or \"words\""),
                )
            })?,
        };
        let precision = match self.precision {
            None => DEFAULT_PRECISION,
            Some(p) if (0..=MAX_PRECISION as i64).contains(&p) => p as u32,
            Some(p) => {
                return Err(invalid(
                    "precision",
                    format!(
                        "precision must be between 0 and {MAX_PRECISION} decimal places (got {p})"
                    ),
                ))
            }
        };
        if aggregation == Aggregation::Rollout {
            for (field, given) in [("layers", &self.layers), ("heads", &self.heads)] {
                if given.is_some() {
                    return Err(invalid(
                        field,
                        format!("rollout runs through every head of every layer; drop \"{field}\" or choose another aggregation"),
                    ));
                }
            }
        }
        let layers = indices("layers", "layer", &self.layers, info.num_layers)?;
        let heads = indices("heads", "head", &self.heads, info.num_heads)?;
        let mask = match &self.mask {
            None => HeadMask::default(),
            Some(pairs) => parse_pairs("mask", pairs, info)?,
        };
        Ok(AttentionSelection {
            layers,
            heads,
            aggregation,
            granularity,
            precision,
            mask: mask.pairs().iter().map(|&(l, h)| [l, h]).collect(),
        })
    }
}

/// A list of layer or head indices: all of `0..count` by default; duplicates dropped, the
/// first occurrence's order kept.
fn indices(
    field: &'static str,
    what: &str,
    given: &Option<Vec<i64>>,
    count: usize,
) -> Result<Vec<usize>, AttentionError> {
    let Some(given) = given else {
        return Ok((0..count).collect());
    };
    if given.is_empty() {
        return Err(invalid(
            field,
            format!("{field} is empty; give at least one {what} index, or leave it out for all"),
        ));
    }
    let mut out: Vec<usize> = Vec::with_capacity(given.len());
    for &i in given {
        if i < 0 || i as u64 >= count as u64 {
            return Err(invalid(
                field,
                format!(
                    "{what} {i} does not exist; the model has {count} {what}s, numbered 0 to {}",
                    count - 1
                ),
            ));
        }
        if !out.contains(&(i as usize)) {
            out.push(i as usize);
        }
    }
    Ok(out)
}

impl AttentionSelection {
    /// The heads switched off while recording.
    pub fn head_mask(&self) -> HeadMask {
        HeadMask::new(self.mask.iter().map(|&[l, h]| (l, h)).collect())
    }

    /// How many numbers the answer holds for an axis of `n` entries: what the configured cap
    /// (`max_attention_values`) bounds.
    pub fn value_count(&self, n: usize) -> usize {
        let matrix = n.saturating_mul(n);
        match self.aggregation {
            Aggregation::None => self
                .layers
                .len()
                .saturating_mul(self.heads.len())
                .saturating_mul(matrix),
            Aggregation::Mean | Aggregation::Max => self.layers.len().saturating_mul(matrix),
            Aggregation::Rollout => matrix.saturating_add(n),
        }
    }

    /// The 422 message for a request over the cap, saying how to narrow it.
    pub fn over_cap_message(&self, n: usize, cap: usize) -> String {
        let mut ways = Vec::new();
        if self.aggregation != Aggregation::Rollout && self.layers.len() > 1 {
            ways.push("fewer \"layers\" (e.g. [0, 5])".to_string());
        }
        if self.aggregation == Aggregation::None {
            ways.push("fewer \"heads\"".to_string());
            ways.push("\"aggregation\": \"mean\"".to_string());
        }
        if self.granularity == Granularity::Tokens {
            ways.push("\"granularity\": \"words\"".to_string());
        }
        ways.push("a shorter text".to_string());
        format!(
            "this request would return {} attention values ({n} x {n} per matrix), over the limit of {cap} (limits.max_attention_values); narrow it with {}",
            self.value_count(n),
            ways.join(", or ")
        )
    }
}

/// One row and column of the returned matrices: a token, or a word with its pieces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct AxisEntry {
    /// The original text it covers (the token's name for special tokens).
    pub text: String,
    /// Indices of the model tokens (into `tokens`) merged into this entry, ascending.
    pub tokens: Vec<usize>,
    /// UTF-8 byte offsets into the text; `0, 0` for special tokens.
    pub start: usize,
    pub end: usize,
    /// UTF-16 code-unit offsets (JavaScript string indices).
    pub utf16_start: usize,
    pub utf16_end: usize,
    /// A special token (`[CLS]`, `[SEP]`, `<s>`, `</s>`).
    pub special: bool,
    /// Whether this entry is a word (always false at token granularity; false for special
    /// tokens and for tokens outside every word, such as punctuation).
    pub word: bool,
}

/// The entries labelling the matrices' rows and columns. They partition the encoding's
/// tokens: every token belongs to exactly one entry, so merged rows still sum to 1.
///
/// Words are lime's (METHODS.md, Features), one per occurrence. Two words that share a token
/// (BERT reads `cafe\u{301}s`, two lime words, as the one token `cafes`) become one entry.
pub fn axis(text: &str, encoding: &Encoding, granularity: Granularity) -> Vec<AxisEntry> {
    let tokens = FeatureSet::tokens(text, encoding);
    let mut token_entry: Vec<Option<AxisEntry>> = vec![None; encoding.len()];
    for feature in tokens.features() {
        let span = feature.spans[0];
        token_entry[feature.tokens[0]] = Some(AxisEntry {
            text: feature.text.clone(),
            tokens: feature.tokens.clone(),
            start: span.start,
            end: span.end,
            utf16_start: span.utf16_start,
            utf16_end: span.utf16_end,
            special: false,
            word: false,
        });
    }
    let single = |t: usize| {
        token_entry[t].clone().unwrap_or_else(|| AxisEntry {
            text: encoding.tokens[t].clone(),
            tokens: vec![t],
            start: 0,
            end: 0,
            utf16_start: 0,
            utf16_end: 0,
            special: encoding.special[t],
            word: false,
        })
    };
    if granularity == Granularity::Tokens {
        return (0..encoding.len()).map(single).collect();
    }

    let words = FeatureSet::words(text, encoding, false);
    let mut owner: Vec<Option<usize>> = vec![None; encoding.len()];
    let mut entries: Vec<AxisEntry> = Vec::new();
    for word in words.features().iter().filter(|w| !w.tokens.is_empty()) {
        let span = word.spans[0];
        let shared = word.tokens.iter().find_map(|&t| owner[t]);
        let e = match shared {
            Some(e) => {
                let entry = &mut entries[e];
                entry.end = span.end;
                entry.utf16_end = span.utf16_end;
                entry.text = text[entry.start..entry.end].to_string();
                e
            }
            None => {
                entries.push(AxisEntry {
                    text: word.text.clone(),
                    tokens: Vec::new(),
                    start: span.start,
                    end: span.end,
                    utf16_start: span.utf16_start,
                    utf16_end: span.utf16_end,
                    special: false,
                    word: true,
                });
                entries.len() - 1
            }
        };
        for &t in &word.tokens {
            if owner[t].is_none() {
                owner[t] = Some(e);
                entries[e].tokens.push(t);
            }
        }
    }
    for (t, o) in owner.iter().enumerate() {
        if o.is_none() {
            entries.push(single(t));
        }
    }
    for entry in &mut entries {
        entry.tokens.sort_unstable();
    }
    entries.sort_by_key(|e| e.tokens[0]);
    entries
}

/// One returned matrix.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct AttentionMatrix {
    pub layer: usize,
    /// The head, or absent for an aggregate over the selected heads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<usize>,
    /// `values[i][j]`: attention from entry `i` to entry `j` of `axis`.
    pub values: Vec<Vec<f32>>,
}

/// Attention rollout (Abnar & Zuidema 2020) and the row a classifier head reads from it.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Rollout {
    /// `R = A_L ... A_1` with `A_l = 0.5 mean_h(W_l) + 0.5 I`, rows renormalised;
    /// `values[i][j]` is how much of entry `i`'s final representation flows from input `j`.
    pub values: Vec<Vec<f32>>,
    /// Which row of `R` the model's head reads: `cls` (the first token's) or `mean` (the mean
    /// over every token, for the mean-pooling zero-shot head).
    pub pooling: Pooling,
    /// That row: rollout's attribution to each entry of `axis`; sums to 1.
    pub pooled: Vec<f32>,
}

/// The attention part of the answer.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct AttentionResult {
    /// The rows and columns of every matrix, in order.
    pub axis: Vec<AxisEntry>,
    /// One per selected layer (`mean`, `max`), or per selected layer and head in that order
    /// (`none`); empty for `rollout`.
    pub matrices: Vec<AttentionMatrix>,
    /// Present for `aggregation = "rollout"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// How many numbers the matrices and rollout hold (what `limits.max_attention_values`
    /// bounds).
    pub values: usize,
}

/// The rows to evaluate: the original text asking for attentions, with the selection's heads
/// masked; when heads are masked, the plain original comes first (its prediction is the
/// response's `prediction`), else the one row serves both.
pub fn attention_rows(encoding: &Encoding, selection: &AttentionSelection) -> Vec<Row> {
    let plain = Row {
        type_ids: encoding.type_ids.clone(),
        ..Row::new(encoding.ids.clone())
    };
    let recorded = Row {
        head_mask: selection.head_mask(),
        attentions: true,
        ..plain.clone()
    };
    if recorded.head_mask.is_empty() {
        vec![recorded]
    } else {
        vec![plain, recorded]
    }
}

/// Turns one row's attentions into the answer: aggregate, roll out, merge to the axis, round.
/// `axis` must come from [`axis`] for the same encoding.
pub fn compute(
    attentions: &RowAttentions,
    selection: &AttentionSelection,
    axis: &[AxisEntry],
    pooling: Pooling,
) -> AttentionResult {
    let len = attentions.len;
    let groups: Vec<&[usize]> = axis.iter().map(|e| e.tokens.as_slice()).collect();
    let finish = |m: &[f32]| to_rows(&merge(m, len, &groups), groups.len(), selection.precision);

    let mut matrices = Vec::new();
    let mut rollout_result = None;
    match selection.aggregation {
        Aggregation::None => {
            for &layer in &selection.layers {
                for &head in &selection.heads {
                    matrices.push(AttentionMatrix {
                        layer,
                        head: Some(head),
                        values: finish(head_slice(attentions, layer, head)),
                    });
                }
            }
        }
        Aggregation::Mean | Aggregation::Max => {
            for &layer in &selection.layers {
                let m = aggregate(attentions, layer, &selection.heads, selection.aggregation);
                matrices.push(AttentionMatrix {
                    layer,
                    head: None,
                    values: finish(&m),
                });
            }
        }
        Aggregation::Rollout => {
            let r = rollout(attentions);
            let pooled = merge_columns(&pooled_row(&r, len, pooling), &groups);
            rollout_result = Some(Rollout {
                values: finish(&r),
                pooling,
                pooled: pooled
                    .iter()
                    .map(|&v| round(v, selection.precision))
                    .collect(),
            });
        }
    }
    AttentionResult {
        values: selection.value_count(axis.len()),
        axis: axis.to_vec(),
        matrices,
        rollout: rollout_result,
    }
}

/// The `[L][L]` attention of one head of one layer, row-major.
fn head_slice(attentions: &RowAttentions, layer: usize, head: usize) -> &[f32] {
    let size = attentions.len * attentions.len;
    &attentions.layers[layer][head * size..(head + 1) * size]
}

/// The mean or element-wise maximum of `heads` in `layer`, `[L][L]` row-major.
pub fn aggregate(
    attentions: &RowAttentions,
    layer: usize,
    heads: &[usize],
    aggregation: Aggregation,
) -> Vec<f32> {
    let size = attentions.len * attentions.len;
    match aggregation {
        Aggregation::Max => {
            let mut out = vec![f32::NEG_INFINITY; size];
            for &h in heads {
                for (o, &v) in out.iter_mut().zip(head_slice(attentions, layer, h)) {
                    *o = o.max(v);
                }
            }
            out
        }
        _ => {
            let mut out = vec![0f32; size];
            for &h in heads {
                for (o, &v) in out.iter_mut().zip(head_slice(attentions, layer, h)) {
                    *o += v;
                }
            }
            let scale = 1.0 / heads.len().max(1) as f32;
            out.iter_mut().for_each(|v| *v *= scale);
            out
        }
    }
}

/// Attention rollout over every layer and head, `[L][L]` row-major: per layer
/// `A_l = 0.5 mean_h(W_l) + 0.5 I` with rows renormalised to sum 1, and
/// `R = A_L * ... * A_1` (last layer on the left).
pub fn rollout(attentions: &RowAttentions) -> Vec<f32> {
    let len = attentions.len;
    let all_heads: Vec<usize> = (0..attentions.heads).collect();
    let mut product: Option<DMatrix<f32>> = None;
    for layer in 0..attentions.layers.len() {
        let mut a = aggregate(attentions, layer, &all_heads, Aggregation::Mean);
        for i in 0..len {
            let row = &mut a[i * len..(i + 1) * len];
            row.iter_mut().for_each(|v| *v *= 0.5);
            row[i] += 0.5;
            // A masked head's zero rows leave less than 1 to renormalise.
            let sum: f32 = row.iter().sum();
            if sum > 0.0 {
                row.iter_mut().for_each(|v| *v /= sum);
            }
        }
        let a = DMatrix::from_row_slice(len, len, &a);
        product = Some(match product {
            None => a,
            Some(r) => a * r,
        });
    }
    match product {
        None => identity(len),
        Some(r) => {
            // nalgebra is column-major; hand back row-major.
            let mut out = vec![0f32; len * len];
            for i in 0..len {
                for j in 0..len {
                    out[i * len + j] = r[(i, j)];
                }
            }
            out
        }
    }
}

fn identity(len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len * len];
    for i in 0..len {
        out[i * len + i] = 1.0;
    }
    out
}

/// The row of a `[L][L]` rollout the head reads: the first token's, or the mean of all rows.
pub fn pooled_row(rollout: &[f32], len: usize, pooling: Pooling) -> Vec<f32> {
    match pooling {
        Pooling::Cls => rollout[..len].to_vec(),
        Pooling::Mean => {
            let mut out = vec![0f32; len];
            for row in rollout.chunks_exact(len) {
                for (o, &v) in out.iter_mut().zip(row) {
                    *o += v;
                }
            }
            out.iter_mut().for_each(|v| *v /= len.max(1) as f32);
            out
        }
    }
}

/// Rollout's attribution over the tokens of one row: the pooled row of METHODS.md, what
/// faithfulness and `compare` use (sum it per word for word features).
pub fn rollout_attribution(attentions: &RowAttentions, pooling: Pooling) -> Vec<f32> {
    pooled_row(&rollout(attentions), attentions.len, pooling)
}

/// A `[L][L]` matrix merged to `groups`: columns summed over each group's tokens (attention
/// *to* a word), then rows averaged over them (attention *from* a word). Row sums are kept.
pub fn merge(m: &[f32], len: usize, groups: &[&[usize]]) -> Vec<f32> {
    let n = groups.len();
    if n == len && groups.iter().enumerate().all(|(i, g)| g == &[i]) {
        return m.to_vec();
    }
    let mut cols = vec![0f32; len * n];
    for i in 0..len {
        let row = &m[i * len..(i + 1) * len];
        let out = &mut cols[i * n..(i + 1) * n];
        for (b, g) in groups.iter().enumerate() {
            out[b] = g.iter().map(|&j| row[j]).sum();
        }
    }
    let mut merged = vec![0f32; n * n];
    for (a, g) in groups.iter().enumerate() {
        let out = &mut merged[a * n..(a + 1) * n];
        for &i in g.iter() {
            for (o, &v) in out.iter_mut().zip(&cols[i * n..(i + 1) * n]) {
                *o += v;
            }
        }
        let scale = 1.0 / g.len().max(1) as f32;
        out.iter_mut().for_each(|v| *v *= scale);
    }
    merged
}

/// A token-level row merged to `groups` (each group's tokens summed).
pub fn merge_columns(row: &[f32], groups: &[&[usize]]) -> Vec<f32> {
    groups
        .iter()
        .map(|g| g.iter().map(|&j| row[j]).sum())
        .collect()
}

/// Rounds to `places` decimals (in f64, so `0.1235` does not become `0.1234`).
pub fn round(value: f32, places: u32) -> f32 {
    let scale = 10f64.powi(places as i32);
    ((value as f64 * scale).round() / scale) as f32
}

fn to_rows(m: &[f32], n: usize, precision: u32) -> Vec<Vec<f32>> {
    m.chunks_exact(n.max(1))
        .map(|row| row.iter().map(|&v| round(v, precision)).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProblemType;

    fn info(head: &str) -> ModelInfo {
        ModelInfo {
            id: "m".into(),
            architecture: "bert".into(),
            sha256: String::new(),
            head: head.into(),
            labels: vec!["negative".into(), "positive".into()],
            problem_type: ProblemType::SingleLabel,
            num_layers: 3,
            num_heads: 2,
            hidden_size: 8,
            max_len: 16,
        }
    }

    /// A row-stochastic `[len][len]` matrix with a distinct pattern per seed.
    fn stochastic(len: usize, seed: usize) -> Vec<f32> {
        let mut m = vec![0f32; len * len];
        for i in 0..len {
            let row = &mut m[i * len..(i + 1) * len];
            for (j, v) in row.iter_mut().enumerate() {
                *v = 1.0 + ((i * 7 + j * 3 + seed * 5) % 11) as f32;
            }
            let s: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s);
        }
        m
    }

    fn attentions(layers: usize, heads: usize, len: usize) -> RowAttentions {
        RowAttentions {
            heads,
            len,
            layers: (0..layers)
                .map(|l| {
                    (0..heads)
                        .flat_map(|h| stochastic(len, l * heads + h))
                        .collect()
                })
                .collect(),
        }
    }

    fn matmul(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
        let mut c = vec![0f32; n * n];
        for i in 0..n {
            for k in 0..n {
                for j in 0..n {
                    c[i * n + j] += a[i * n + k] * b[k * n + j];
                }
            }
        }
        c
    }

    fn encoding(tokens: &[(&str, usize, usize, bool)]) -> Encoding {
        Encoding {
            ids: (0..tokens.len() as u32).collect(),
            type_ids: vec![0; tokens.len()],
            tokens: tokens.iter().map(|t| t.0.to_string()).collect(),
            offsets: tokens.iter().map(|t| (t.1, t.2)).collect(),
            special: tokens.iter().map(|t| t.3).collect(),
            truncated: false,
        }
    }

    /// `"Unbelievably good, cafe\u{301}s!"` as a BERT-like tokenizer would cut it.
    fn sample() -> (&'static str, Encoding) {
        let text = "Unbelievably good, cafe\u{301}s!";
        let enc = encoding(&[
            ("[CLS]", 0, 0, true),
            ("un", 0, 2, false),
            ("##believ", 2, 8, false),
            ("##ably", 8, 12, false),
            ("good", 13, 17, false),
            (",", 17, 18, false),
            ("cafes", 19, 26, false),
            ("!", 26, 27, false),
            ("[SEP]", 0, 0, true),
        ]);
        (text, enc)
    }

    fn params(json: serde_json::Value) -> AttentionParams {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn defaults_are_every_layer_head_mean_tokens_four_places() {
        let s = params(serde_json::json!({}))
            .resolve(&info("classifier"))
            .unwrap();
        assert_eq!(s.layers, [0, 1, 2]);
        assert_eq!(s.heads, [0, 1]);
        assert_eq!(s.aggregation, Aggregation::Mean);
        assert_eq!(s.granularity, Granularity::Tokens);
        assert_eq!(s.precision, 4);
        assert!(s.mask.is_empty());
    }

    #[test]
    fn bad_parameters_name_their_field() {
        let m = info("classifier");
        for (json, field) in [
            (serde_json::json!({"aggregation": "median"}), "aggregation"),
            (serde_json::json!({"granularity": "chars"}), "granularity"),
            (serde_json::json!({"layers": [3]}), "layers"),
            (serde_json::json!({"layers": [-1]}), "layers"),
            (serde_json::json!({"layers": []}), "layers"),
            (serde_json::json!({"heads": [2]}), "heads"),
            (serde_json::json!({"precision": 9}), "precision"),
            (serde_json::json!({"precision": -1}), "precision"),
            (
                serde_json::json!({"aggregation": "rollout", "layers": [0]}),
                "layers",
            ),
            (
                serde_json::json!({"aggregation": "rollout", "heads": [0]}),
                "heads",
            ),
            (serde_json::json!({"mask": [[0, 2]]}), "mask"),
        ] {
            let e = params(json.clone()).resolve(&m).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }

    #[test]
    fn value_count_and_cap_message() {
        let m = info("classifier");
        let count = |json| params(json).resolve(&m).unwrap().value_count(10);
        assert_eq!(count(serde_json::json!({})), 300);
        assert_eq!(count(serde_json::json!({"aggregation": "none"})), 600);
        assert_eq!(
            count(serde_json::json!({"aggregation": "none", "layers": [1], "heads": [0]})),
            100
        );
        assert_eq!(count(serde_json::json!({"aggregation": "rollout"})), 110);
        let s = params(serde_json::json!({"aggregation": "none"}))
            .resolve(&m)
            .unwrap();
        let msg = s.over_cap_message(10, 100);
        for hint in ["600", "100", "layers", "heads", "mean", "words"] {
            assert!(msg.contains(hint), "{msg}");
        }
    }

    #[test]
    fn default_request_fits_the_default_cap_at_512_tokens_for_minilm() {
        let mut m = info("zero-shot:sentiment");
        m.num_layers = 6;
        m.num_heads = 12;
        let s = params(serde_json::json!({})).resolve(&m).unwrap();
        let cap = crate::config::Config::default().limits.max_attention_values;
        assert!(s.value_count(512) <= cap, "{} > {cap}", s.value_count(512));
        let r = params(serde_json::json!({"aggregation": "rollout"}))
            .resolve(&m)
            .unwrap();
        assert!(r.value_count(512) <= cap);
    }

    #[test]
    fn word_axis_merges_pieces_and_keeps_specials_and_punctuation() {
        let (text, enc) = sample();
        let words = axis(text, &enc, Granularity::Words);
        let got: Vec<(&str, Vec<usize>, bool, bool)> = words
            .iter()
            .map(|e| (e.text.as_str(), e.tokens.clone(), e.special, e.word))
            .collect();
        assert_eq!(
            got,
            vec![
                ("[CLS]", vec![0], true, false),
                ("Unbelievably", vec![1, 2, 3], false, true),
                ("good", vec![4], false, true),
                (",", vec![5], false, false),
                // Two lime words ("cafe", "s") sharing the one token "cafes".
                ("cafe\u{301}s", vec![6], false, true),
                ("!", vec![7], false, false),
                ("[SEP]", vec![8], true, false),
            ]
        );
        assert_eq!((words[4].start, words[4].end), (19, 26));
        assert_eq!((words[4].utf16_start, words[4].utf16_end), (19, 25));
        let tokens = axis(text, &enc, Granularity::Tokens);
        assert_eq!(tokens.len(), enc.len());
        assert_eq!(tokens[2].text, "believ");
        assert_eq!(tokens[0].text, "[CLS]");
        assert!(tokens.iter().all(|e| !e.word));
    }

    #[test]
    fn merging_sums_columns_averages_rows_and_keeps_row_sums() {
        let len = 4;
        #[rustfmt::skip]
        let m = vec![
            0.1, 0.2, 0.3, 0.4,
            0.4, 0.3, 0.2, 0.1,
            0.25, 0.25, 0.25, 0.25,
            1.0, 0.0, 0.0, 0.0,
        ];
        let groups: Vec<&[usize]> = vec![&[0], &[1, 2], &[3]];
        let got = merge(&m, len, &groups);
        #[rustfmt::skip]
        let want = [
            0.1, 0.5, 0.4,
            (0.4 + 0.25) / 2.0, (0.5 + 0.5) / 2.0, (0.1 + 0.25) / 2.0,
            1.0, 0.0, 0.0,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        for row in got.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert_eq!(merge_columns(&m[..4], &groups), vec![0.1, 0.5, 0.4]);
    }

    #[test]
    fn mean_and_max_over_selected_heads() {
        let att = attentions(2, 3, 4);
        let mean = aggregate(&att, 1, &[0, 2], Aggregation::Mean);
        let max = aggregate(&att, 1, &[0, 2], Aggregation::Max);
        for i in 0..4 {
            for j in 0..4 {
                let (a, b) = (att.get(1, 0, i, j), att.get(1, 2, i, j));
                assert!((mean[i * 4 + j] - (a + b) / 2.0).abs() < 1e-7);
                assert_eq!(max[i * 4 + j], a.max(b));
            }
            let sum: f32 = mean[i * 4..(i + 1) * 4].iter().sum();
            assert!((sum - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn rollout_is_the_product_of_residual_averaged_layers_last_on_the_left() {
        let (layers, heads, len) = (3, 2, 5);
        let att = attentions(layers, heads, len);
        let a: Vec<Vec<f32>> = (0..layers)
            .map(|l| {
                let mean = aggregate(&att, l, &[0, 1], Aggregation::Mean);
                let mut a: Vec<f32> = mean.iter().map(|v| 0.5 * v).collect();
                for i in 0..len {
                    a[i * len + i] += 0.5;
                }
                a
            })
            .collect();
        let want = matmul(&a[2], &matmul(&a[1], &a[0], len), len);
        let got = rollout(&att);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6);
        }
        // Order matters: the reversed product differs.
        let reversed = matmul(&a[0], &matmul(&a[1], &a[2], len), len);
        assert!(got.iter().zip(&reversed).any(|(g, r)| (g - r).abs() > 1e-4));
        for row in got.chunks(len) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        // Pooled rows: the first row, or the mean of all rows; both sum to 1.
        let cls = pooled_row(&got, len, Pooling::Cls);
        assert_eq!(cls, got[..len].to_vec());
        let mean = pooled_row(&got, len, Pooling::Mean);
        for j in 0..len {
            let m: f32 = (0..len).map(|i| got[i * len + j]).sum::<f32>() / len as f32;
            assert!((mean[j] - m).abs() < 1e-6);
        }
        assert!((mean.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn pooling_follows_the_head() {
        assert_eq!(Pooling::of(&info("zero-shot:sentiment")), Pooling::Mean);
        assert_eq!(Pooling::of(&info("classifier")), Pooling::Cls);
    }

    #[test]
    fn compute_returns_selected_matrices_rounded_with_rows_summing_to_one() {
        let (text, enc) = sample();
        let att = attentions(3, 2, enc.len());
        let m = info("classifier");
        for granularity in ["tokens", "words"] {
            let ax = axis(text, &enc, Granularity::parse(granularity).unwrap());
            for aggregation in ["none", "mean", "max", "rollout"] {
                let mut json = serde_json::json!({
                    "aggregation": aggregation, "granularity": granularity, "precision": 6
                });
                if aggregation != "rollout" {
                    json["layers"] = serde_json::json!([2, 0]);
                }
                let s = params(json).resolve(&m).unwrap();
                let r = compute(&att, &s, &ax, Pooling::of(&m));
                let n = ax.len();
                let mut count = 0;
                let rows: Vec<&Vec<f32>> = r
                    .matrices
                    .iter()
                    .flat_map(|m| &m.values)
                    .chain(r.rollout.iter().flat_map(|r| &r.values))
                    .collect();
                for row in &rows {
                    assert_eq!(row.len(), n);
                    count += n;
                    let sum: f32 = row.iter().sum();
                    if aggregation == "max" {
                        assert!(sum >= 1.0 - 1e-5, "{granularity} max row sums to {sum}");
                    } else {
                        assert!(
                            (sum - 1.0).abs() < 1e-5,
                            "{granularity} {aggregation}: {sum}"
                        );
                    }
                }
                if let Some(rollout) = &r.rollout {
                    count += rollout.pooled.len();
                    assert!((rollout.pooled.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                    assert_eq!(rollout.pooled, rollout.values[0], "the [CLS] row");
                } else {
                    let layers: Vec<usize> = r.matrices.iter().map(|m| m.layer).collect();
                    match aggregation {
                        "none" => assert_eq!(layers, [2, 2, 0, 0]),
                        _ => assert_eq!(layers, [2, 0]),
                    }
                }
                assert_eq!(count, r.values);
                assert_eq!(r.values, s.value_count(n));
            }
        }
        // At token granularity, `none` returns the model's numbers, rounded.
        let ax = axis(text, &enc, Granularity::Tokens);
        let s = params(
            serde_json::json!({"aggregation": "none", "layers": [1], "heads": [1], "precision": 3}),
        )
        .resolve(&m)
        .unwrap();
        let r = compute(&att, &s, &ax, Pooling::Cls);
        assert_eq!(r.matrices.len(), 1);
        assert_eq!(r.matrices[0].head, Some(1));
        for i in 0..enc.len() {
            for j in 0..enc.len() {
                let want = (att.get(1, 1, i, j) as f64 * 1e3).round() / 1e3;
                assert_eq!(r.matrices[0].values[i][j], want as f32);
            }
        }
    }

    #[test]
    fn rounding_is_to_decimal_places() {
        assert_eq!(round(0.123_456, 4), 0.1235);
        assert_eq!(round(0.123_456, 0), 0.0);
        assert_eq!(round(0.987_654_3, 6), 0.987_654);
    }

    #[test]
    fn masked_heads_add_a_plain_row_first() {
        let (_, enc) = sample();
        let m = info("classifier");
        let s = params(serde_json::json!({})).resolve(&m).unwrap();
        let rows = attention_rows(&enc, &s);
        assert_eq!(rows.len(), 1);
        assert!(rows[0].attentions && rows[0].head_mask.is_empty());
        let s = params(serde_json::json!({"mask": [[1, 0], [0, 1], [1, 0]]}))
            .resolve(&m)
            .unwrap();
        assert_eq!(s.mask, [[0, 1], [1, 0]]);
        let rows = attention_rows(&enc, &s);
        assert_eq!(rows.len(), 2);
        assert!(!rows[0].attentions && rows[0].head_mask.is_empty());
        assert!(rows[1].attentions);
        assert_eq!(rows[1].head_mask.pairs(), [(0, 1), (1, 0)]);
    }
}
