//! What every `/explain/*` route shares, written once: the common request fields (`text`,
//! `target`, `top_labels`, `truncate`), the first step of every explanation (encode the text,
//! run it once, resolve which labels to explain), and the common response blocks (`model`,
//! `prediction`, `tokens`, `usage`).
//!
//! A route handler reads:
//! ```ignore
//! let explained = Explained::begin(&state, &request.common).await?;
//! let features = FeatureSet::words(&request.common.text, &explained.encoding, bow);
//! let result = explain_something(&features, ..., &explained.targets, &explained.scope).await?;
//! Ok(explained.respond(MyResponse { base: explained.base(), result, ... }))
//! ```

use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::dto::{ModelRef, Prediction, Usage};
use super::error::ApiError;
use super::scope::{row_of, RequestScope};
use super::AppState;
use crate::model::{Encoding, ModelInfo, RowOutput};

/// A label named by its name (`"positive"`) or its index (`1`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum LabelRef {
    Index(usize),
    Name(String),
}

/// Fields every explanation request has (flattened into each route's request).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ExplainCommon {
    /// The text to explain.
    pub text: String,
    /// The label to explain (name or index); default: the predicted label.
    #[serde(default)]
    pub target: Option<LabelRef>,
    /// Explain the `k` most probable labels instead of one `target`.
    #[serde(default)]
    pub top_labels: Option<usize>,
    /// Over-long text: 422 unless true, then cut to the model's maximum length.
    #[serde(default)]
    pub truncate: bool,
}

/// One model token of the explained text, so a client can label axes and highlight spans.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TokenInfo {
    pub id: u32,
    pub text: String,
    /// UTF-8 byte offsets into the text; `0, 0` for special tokens.
    pub start: usize,
    pub end: usize,
    pub special: bool,
}

/// The response blocks every explanation has.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ExplainBase {
    pub model: ModelRef,
    /// The model's prediction for the original text.
    pub prediction: Prediction,
    /// Indices of the labels explained, in the order of the results.
    pub targets: Vec<usize>,
    pub tokens: Vec<TokenInfo>,
    /// What the request cost (measured when the response is built).
    pub usage: Usage,
}

/// The state of an explanation request after its first step.
pub struct Explained {
    pub scope: RequestScope,
    pub encoding: Encoding,
    /// The model's output for the original text.
    pub original: RowOutput,
    /// Label indices to explain, resolved from `target` / `top_labels`.
    pub targets: Vec<usize>,
}

impl Explained {
    /// Encodes the text (422 when empty or too long), runs it once through the engine and
    /// resolves the target labels (422 when unknown).
    pub async fn begin(state: &AppState, common: &ExplainCommon) -> Result<Self, ApiError> {
        let scope = RequestScope::begin(state)?;
        let encoding = scope.encode("text", &common.text, common.truncate)?;
        let original = scope
            .evaluate(vec![row_of(&encoding)])
            .await?
            .pop()
            .ok_or_else(|| ApiError::Internal("the engine returned no output".into()))?;
        let targets = resolve_targets(&state.model, common, &original.probabilities)?;
        Ok(Self {
            scope,
            encoding,
            original,
            targets,
        })
    }

    pub fn model(&self) -> &ModelInfo {
        &self.scope.state().model
    }

    /// The common response blocks, with usage measured now.
    pub fn base(&self) -> ExplainBase {
        let info = self.model();
        ExplainBase {
            model: ModelRef::of(info),
            prediction: Prediction::new(
                &info.labels,
                &self.original,
                self.encoding.len(),
                self.encoding.truncated,
            ),
            targets: self.targets.clone(),
            tokens: token_infos(&self.encoding),
            usage: self.scope.usage(),
        }
    }

    /// A 200 JSON response with the timing headers.
    pub fn respond<T: Serialize>(&self, body: &T) -> Response {
        self.scope.respond(body)
    }
}

/// The tokens of an encoding as the API shows them.
pub fn token_infos(encoding: &Encoding) -> Vec<TokenInfo> {
    (0..encoding.len())
        .map(|i| TokenInfo {
            id: encoding.ids[i],
            text: encoding.tokens[i].clone(),
            start: encoding.offsets[i].0,
            end: encoding.offsets[i].1,
            special: encoding.special[i],
        })
        .collect()
}

/// Which labels to explain: `top_labels` (the k most probable), else `target` (by name or
/// index), else the predicted label.
pub fn resolve_targets(
    info: &ModelInfo,
    common: &ExplainCommon,
    probabilities: &[f32],
) -> Result<Vec<usize>, ApiError> {
    let n = info.labels.len();
    match (&common.top_labels, &common.target) {
        (Some(_), Some(_)) => Err(ApiError::validation(
            "top_labels",
            "give either target or top_labels, not both",
        )),
        (Some(k), None) => {
            if *k == 0 || *k > n {
                return Err(ApiError::validation(
                    "top_labels",
                    format!(
                        "top_labels must be between 1 and {n} (the model has {n} labels; got {k})"
                    ),
                ));
            }
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
            order.truncate(*k);
            Ok(order)
        }
        (None, Some(LabelRef::Index(i))) => {
            if *i >= n {
                return Err(ApiError::validation(
                    "target",
                    format!(
                        "target index {i} is out of range; the model's labels are 0..{} ({})",
                        n - 1,
                        info.labels.join(", ")
                    ),
                ));
            }
            Ok(vec![*i])
        }
        (None, Some(LabelRef::Name(name))) => match info.labels.iter().position(|l| l == name) {
            Some(i) => Ok(vec![i]),
            None => Err(ApiError::validation(
                "target",
                format!(
                    "unknown label \"{name}\"; the model's labels are: {}",
                    info.labels.join(", ")
                ),
            )),
        },
        (None, None) => {
            let best = (0..n)
                .max_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b]))
                .unwrap_or(0);
            Ok(vec![best])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProblemType;

    fn info() -> ModelInfo {
        ModelInfo {
            id: "m".into(),
            architecture: "toy".into(),
            sha256: String::new(),
            head: "classifier".into(),
            labels: vec!["negative".into(), "neutral".into(), "positive".into()],
            problem_type: ProblemType::SingleLabel,
            num_layers: 1,
            num_heads: 1,
            hidden_size: 1,
            max_len: 8,
        }
    }

    fn common(target: Option<LabelRef>, top_labels: Option<usize>) -> ExplainCommon {
        ExplainCommon {
            text: "x".into(),
            target,
            top_labels,
            truncate: false,
        }
    }

    #[test]
    fn targets_resolve_by_default_name_index_and_top_k() {
        let p = [0.2, 0.1, 0.7];
        assert_eq!(
            resolve_targets(&info(), &common(None, None), &p).unwrap(),
            vec![2]
        );
        assert_eq!(
            resolve_targets(
                &info(),
                &common(Some(LabelRef::Name("neutral".into())), None),
                &p
            )
            .unwrap(),
            vec![1]
        );
        assert_eq!(
            resolve_targets(&info(), &common(Some(LabelRef::Index(0)), None), &p).unwrap(),
            vec![0]
        );
        assert_eq!(
            resolve_targets(&info(), &common(None, Some(2)), &p).unwrap(),
            vec![2, 0]
        );
    }

    #[test]
    fn bad_targets_are_422_naming_the_field() {
        let p = [0.2, 0.1, 0.7];
        for (c, field) in [
            (common(Some(LabelRef::Name("happy".into())), None), "target"),
            (common(Some(LabelRef::Index(3)), None), "target"),
            (common(None, Some(0)), "top_labels"),
            (common(None, Some(4)), "top_labels"),
            (common(Some(LabelRef::Index(0)), Some(1)), "top_labels"),
        ] {
            match resolve_targets(&info(), &c, &p) {
                Err(ApiError::Validation { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected a validation error, got {other:?}"),
            }
        }
    }
}
