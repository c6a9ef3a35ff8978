//! `POST /explain/compare`: several attribution methods on one text, each scored for
//! faithfulness (ERASER comprehensiveness and sufficiency, METHODS.md) and ranked.
//!
//! Every method attributes the *same* word features (one per distinct word with `bow`, else
//! one per occurrence) and they are removed the same way (`mask`), so the scores compare like
//! with like. The handler validates everything before any model work, runs the text once
//! ([`Explained::begin`]), then the methods one after another (so each method's `usage` is its
//! own) and finally every method's faithfulness rows in one call. All forward rows go through
//! a [`MemoEvaluator`] over the request's scope: a row that an earlier method (or faithfulness)
//! already evaluated, such as the original text or a removal two methods' rankings share, is
//! run once per request even with the row cache off (`shared_rows`).

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::error::{ApiError, BodyErrors, ErrorBody};
use super::evaluate;
use super::explain::{ExplainBase, ExplainCommon, Explained};
use super::extract::ApiJson;
use super::gradients::MAX_STEPS;
use super::perturbation::{example_with, off_runtime, parse_request, perturb_error, require_words};
use super::scope::{round_ms, row_of, RequestScope};
use super::AppState;
use crate::explain::attention::{rollout_attribution, Pooling};
use crate::explain::compare::{
    lime_scores, occlusion_scores, random_scores, rank_methods, shap_scores, CompareMethod,
    MemoEvaluator, RankedMethod,
};
use crate::explain::faithfulness::Faithfulness;
use crate::explain::features::{Feature, FeatureKind, FeatureSet, Removal};
use crate::explain::gradients::{
    per_feature, token_attributions, GradientError, GradientMethod, GradientParams, Quadrature,
};
use crate::explain::lime::{explain_lime, LimeError, LimeParams, NumFeatures};
use crate::explain::occlusion::{explain_occlusion, OcclusionParams};
use crate::explain::shap::{explain_shap, ShapParams};
use crate::explain::{Evaluator, Usage as ExplainUsage};
use crate::model::gradients::OutputKind;
use crate::model::Row;

/// Seeds are drawn below 2^53 so that they survive a round trip through a JavaScript number.
const MAX_DRAWN_SEED: u64 = 1 << 53;

/// The common explanation fields, the methods to compare, the shared feature options and
/// optional parameters per method, in one flat object.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(examples(
    json!({"text": "The plot was thin but the acting was wonderful.", "seed": 7}),
    json!({"text": "The plot was thin but the acting was wonderful.",
           "methods": ["lime", "occlusion", "random"], "lime": {"num_samples": 500}})
))]
pub struct CompareRequest {
    #[serde(flatten)]
    pub common: ExplainCommon,
    /// Methods to run, each at most once, in the order given (ties in the ranking go to the
    /// one listed first): `lime`, `shap`, `occlusion`, `integrated_gradients`, `saliency`,
    /// `grad_x_input`, `attention_rollout`, `random`. Default: `lime`, `shap`, `occlusion`,
    /// `integrated_gradients`, `attention_rollout`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<CompareMethod>>)]
    pub methods: Option<Vec<String>>,
    /// Seed of every random method (LIME's sampler, SHAP's coalition sampler when not exact,
    /// `random`); absent: one is drawn and echoed in `params.seed`.
    #[serde(default)]
    #[schema(example = 7)]
    pub seed: Option<u64>,
    /// One feature per distinct word, removing every occurrence (default, as LIME), instead
    /// of one per occurrence. The same features for every method.
    #[serde(default = "default_true")]
    #[schema(default = true)]
    pub bow: bool,
    /// How every method and faithfulness remove a word: `remove` (default), `mask_token` or
    /// `unk_token`.
    #[serde(default)]
    pub mask: Removal,
    /// LIME's parameters: `num_samples`, `tolerance`, `num_features` (default here `"all"`:
    /// a word LIME does not keep scores 0), `kernel_width`, `feature_selection`,
    /// `confidence_intervals`.
    #[serde(default)]
    #[schema(value_type = Option<Object>, example = json!({"num_samples": 500}))]
    pub lime: Option<Value>,
    /// Kernel SHAP's parameters: `max_evals`.
    #[serde(default)]
    #[schema(value_type = Option<Object>, example = json!({"max_evals": 2048}))]
    pub shap: Option<Value>,
    /// Occlusion takes no parameters here (leave-one-out: one score per word); `{}` only.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub occlusion: Option<Value>,
    /// Integrated gradients' parameters: `steps` (default 50), `quadrature`, `output`.
    #[serde(default)]
    #[schema(value_type = Option<Object>, example = json!({"steps": 50}))]
    pub integrated_gradients: Option<Value>,
    /// Saliency's parameters: `output`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub saliency: Option<Value>,
    /// Gradient x input's parameters: `output`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub grad_x_input: Option<Value>,
    /// Attention rollout takes no parameters; `{}` only.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub attention_rollout: Option<Value>,
    /// The random baseline takes no parameters (it uses `seed`); `{}` only.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub random: Option<Value>,
    /// Anything else is refused (400) rather than silently ignored.
    #[serde(flatten)]
    #[schema(ignore)]
    unknown: BTreeMap<String, Value>,
}

fn default_true() -> bool {
    true
}

/// One target's attribution by one method.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MethodAttribution {
    /// Label index.
    pub label: usize,
    /// One score per entry of `features` (higher: more support for the label).
    pub scores: Vec<f64>,
}

/// What one method cost.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct MethodUsage {
    /// Rows this method sent to the engine (gradient rows included), after deduplication.
    pub model_evaluations: usize,
    /// Real tokens of those rows.
    pub tokens_evaluated: usize,
    /// Rows of those answered by the row cache.
    pub cache_hits: usize,
    /// Rows answered from this comparison's own memory (evaluated earlier in the request by
    /// another method or by faithfulness), never sent to the engine.
    pub shared_rows: usize,
    pub queue_ms: f64,
    pub inference_ms: f64,
    /// Wall time of this method's step.
    pub total_ms: f64,
}

/// One method's result.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MethodResult {
    pub method: CompareMethod,
    /// The parameters the method actually used (seed included), as its own route echoes them.
    #[schema(value_type = Object)]
    pub params: Value,
    /// One per target label, in the order of `targets`.
    pub attributions: Vec<MethodAttribution>,
    /// ERASER scores of each target's attribution, in the order of `targets`.
    pub faithfulness: Vec<Faithfulness>,
    /// What computing the attribution cost (faithfulness rows are in `faithfulness_usage`).
    pub usage: MethodUsage,
}

/// The comparison's own parameters, defaults filled in.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CompareParamsUsed {
    pub methods: Vec<CompareMethod>,
    pub seed: u64,
    pub bow: bool,
    pub mask: Removal,
}

/// A comparison: the common blocks, the shared features, each method's attribution and
/// faithfulness, and the ranking.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompareResponse {
    #[serde(flatten)]
    pub base: ExplainBase,
    /// The word features every method attributes; `scores[i]` is about `features[i]`.
    pub features: Vec<Feature>,
    pub params: CompareParamsUsed,
    /// In the order of `params.methods`.
    pub methods: Vec<MethodResult>,
    /// What the faithfulness rows of all methods cost together (rows two methods share are
    /// run once).
    pub faithfulness_usage: MethodUsage,
    /// Most faithful first: by mean AOPC comprehensiveness over the targets, descending;
    /// ties by lower mean AOPC sufficiency, then by the order of `params.methods`.
    pub ranking: Vec<RankedMethod>,
}

/// Every method's parameters, validated.
struct Plan {
    methods: Vec<CompareMethod>,
    seed: u64,
    lime: LimeParams,
    shap: ShapParams,
    occlusion: OcclusionParams,
    gradients: BTreeMap<CompareMethod, GradientParams>,
}

/// Runs several attribution methods on one text over the same word features, scores each for
/// faithfulness and ranks them.
///
/// Each method gives one score per word per target label; ERASER comprehensiveness and
/// sufficiency (1, 5, 10, 20, 50% of the words) and their AOPC say how faithful each ranking
/// is, and `ranking` orders the methods by mean AOPC comprehensiveness (ties: lower
/// sufficiency, then request order). Rows are shared within the request: the original text
/// runs once, and a row two methods (or their faithfulness removals) both need runs once
/// (`usage.shared_rows`). Attention rollout scores its pooled row (the `[CLS]` row, or the
/// mean row for mean-pooling heads), the same for every target. With the same `seed` and
/// parameters each method's attribution equals its own route's (`/explain/lime` with
/// `num_features = "all"`, `/explain/shap`, `/explain/occlusion`, `/explain/gradients` with
/// `granularity = "words"` summed per feature, `/explain/attention`'s `rollout.pooled`).
#[utoipa::path(
    post,
    path = "/explain/compare",
    tag = "explain",
    request_body(content = CompareRequest, examples(
        ("default" = (summary = "The five default methods, fixed seed",
            value = json!({"text": "The acting was wonderful.", "seed": 7}))),
        ("chosen" = (summary = "Three methods, fewer LIME samples, words masked",
            value = json!({"text": "The plot was thin but the acting was wonderful.",
                "methods": ["lime", "occlusion", "random"], "lime": {"num_samples": 500},
                "mask": "mask_token", "seed": 7}))),
    )),
    responses(
        (status = 200, description = "Per method: attribution, faithfulness and usage; the \
            ranking; the parameters used (with the seed) and what it cost",
            body = CompareResponse,
            headers(
                ("x-request-id" = String, description = "Echoed if sent, generated otherwise"),
                ("x-queue-time" = String, description = "Milliseconds waiting for the model"),
                ("x-inference-time" = String, description = "Milliseconds in model batches"),
                ("x-total-time" = String, description = "Milliseconds in the service"),
            ),
            example = json!(response_example())),
        (status = 400, description = "`invalid_json`: not JSON, a field of the wrong type \
            (also inside a method's parameters, e.g. `lime.num_samples`), or an unknown field \
            (top level or inside a method's parameters)", body = ErrorBody,
            example = json!({"error": {"code": "invalid_json", "message":
                "the body does not have the expected shape: unknown field `lime.bow`; the \
                parameters of lime are num_samples, tolerance, num_features, kernel_width, \
                feature_selection, confidence_intervals", "details": {}}})),
        (status = 422, description = "`validation_error` naming the field: `methods` empty, \
            with an unknown or a repeated method, or with a gradient method \
            (`integrated_gradients`, `saliency`, `grad_x_input`) on a model loaded without \
            gradient support, or `attention_rollout` on a model that reports no attentions; \
            parameters for a method not in `methods`; a method parameter out of range \
            (`lime.num_samples`, `shap.max_evals`, `integrated_gradients.steps`, ...); empty \
            text or a text without words, text too long without `truncate`, unknown \
            `target`, an unknown `mask`, a `mask` the tokenizer cannot do", body = ErrorBody,
            example = json!({"error": {"code": "validation_error", "message":
                "unknown method \"gradients\" in methods; the methods are lime, shap, \
                occlusion, integrated_gradients, saliency, grad_x_input, attention_rollout, \
                random", "details": {"field": "methods"}}})),
        (status = 500, description = "`internal`: a bug, logged with the request id",
            body = ErrorBody,
            example = json!({"error": {"code": "internal", "message":
                "internal error; the request id in x-request-id identifies it in the logs",
                "details": {}}})),
        (status = 503, description = "`overloaded` (with `Retry-After`) or `not_ready`",
            body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait (when overloaded)")),
            example = json!({"error": {"code": "not_ready", "message":
                "the model is not ready yet; retry shortly (GET /ready)", "details": {}}})),
        (status = 504, description = "`timeout`: past `server.request_timeout_ms`; queued work \
            dropped", body = ErrorBody,
            example = json!({"error": {"code": "timeout", "message":
                "the request ran past its deadline of 30000 ms; its queued work was dropped",
                "details": {"timeout_ms": 30000}}})),
        BodyErrors,
    )
)]
pub async fn explain_compare_route(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request: CompareRequest = parse_request(
        body,
        "/explain/compare",
        "text, target, top_labels, truncate, methods, seed, bow, mask, lime, shap, occlusion, \
         integrated_gradients, saliency, grad_x_input, attention_rollout, random",
        |r: &CompareRequest| r.unknown.keys().next().cloned(),
    )?;
    let plan = plan(&state, &request)?;
    let CompareRequest {
        common, bow, mask, ..
    } = request;
    require_words(
        &common.text,
        FeatureKind::Words,
        "there is nothing to compare",
    )?;

    let explained = Explained::begin(&state, &common).await?;
    let features = FeatureSet::words(&common.text, &explained.encoding, bow);
    if features.is_empty() {
        return Err(ApiError::validation(
            "text",
            "the text has no words (runs of letters, digits or _) within the model's window, \
             so there is nothing to compare",
        ));
    }
    let state2 = state.clone();
    let (explained, features, plan, result) = off_runtime(async move {
        let result = run(&state2, &explained, &features, &plan, mask, common.truncate).await;
        (explained, features, plan, result)
    })
    .await?;
    let (methods, faithfulness_usage) = result?;
    let runs: Vec<(CompareMethod, &[Faithfulness])> = methods
        .iter()
        .map(|m| (m.method, m.faithfulness.as_slice()))
        .collect();
    let ranking = rank_methods(&runs);
    let body = CompareResponse {
        base: explained.base(),
        features: features.features().to_vec(),
        params: CompareParamsUsed {
            methods: plan.methods.clone(),
            seed: plan.seed,
            bow,
            mask,
        },
        methods,
        faithfulness_usage,
        ranking,
    };
    Ok(explained.respond(&body))
}

/// Checks the methods and their parameters before any model work.
fn plan(state: &AppState, request: &CompareRequest) -> Result<Plan, ApiError> {
    let methods: Vec<CompareMethod> = match &request.methods {
        None => CompareMethod::DEFAULT.to_vec(),
        Some(names) => {
            if names.is_empty() {
                return Err(ApiError::validation(
                    "methods",
                    format!(
                        "methods is empty; name at least one of {}",
                        CompareMethod::names()
                    ),
                ));
            }
            let mut seen = HashSet::new();
            let mut methods = Vec::with_capacity(names.len());
            for name in names {
                let method = CompareMethod::parse(name).ok_or_else(|| {
                    ApiError::validation(
                        "methods",
                        format!(
                            "unknown method \"{name}\" in methods; the methods are {}",
                            CompareMethod::names()
                        ),
                    )
                })?;
                if !seen.insert(method) {
                    return Err(ApiError::validation(
                        "methods",
                        format!("method \"{name}\" is listed twice in methods"),
                    ));
                }
                methods.push(method);
            }
            methods
        }
    };
    if !state.engine.supports_gradients() {
        if let Some(m) = methods.iter().find(|m| m.needs_gradients()) {
            return Err(ApiError::validation(
                "methods",
                format!(
                    "{} needs input gradients and this model was loaded without gradient \
                     support; list \"methods\" without integrated_gradients, saliency and \
                     grad_x_input",
                    m.name()
                ),
            ));
        }
    }
    let given: [(CompareMethod, &Option<Value>); 8] = [
        (CompareMethod::Lime, &request.lime),
        (CompareMethod::Shap, &request.shap),
        (CompareMethod::Occlusion, &request.occlusion),
        (
            CompareMethod::IntegratedGradients,
            &request.integrated_gradients,
        ),
        (CompareMethod::Saliency, &request.saliency),
        (CompareMethod::GradXInput, &request.grad_x_input),
        (CompareMethod::AttentionRollout, &request.attention_rollout),
        (CompareMethod::Random, &request.random),
    ];
    for (method, value) in &given {
        if value.is_some() && !methods.contains(method) {
            return Err(ApiError::validation(
                method.name(),
                format!(
                    "parameters for {0} were given but {0} is not in methods",
                    method.name()
                ),
            ));
        }
    }
    let seed = request
        .seed
        .unwrap_or_else(|| rand::rng().random_range(0..MAX_DRAWN_SEED));
    let max = state.limits.max_num_samples;

    let mut lime: LimeParams = method_params(
        CompareMethod::Lime,
        &request.lime,
        &[
            "num_samples",
            "tolerance",
            "num_features",
            "kernel_width",
            "feature_selection",
            "confidence_intervals",
        ],
    )?;
    if request
        .lime
        .as_ref()
        .and_then(|v| v.get("num_features"))
        .is_none()
    {
        lime.num_features = NumFeatures::All;
    }
    lime.bow = request.bow;
    lime.mask = request.mask;
    lime.features = FeatureKind::Words;
    lime.seed = Some(seed);
    if methods.contains(&CompareMethod::Lime) {
        lime.validate(max)
            .map_err(|e| method_error(CompareMethod::Lime, lime_error(e)))?;
    }

    let mut shap: ShapParams = method_params(CompareMethod::Shap, &request.shap, &["max_evals"])?;
    shap.bow = request.bow;
    shap.mask = request.mask;
    shap.features = FeatureKind::Words;
    shap.seed = Some(seed);
    if methods.contains(&CompareMethod::Shap) {
        shap.validate(max)
            .map_err(|e| method_error(CompareMethod::Shap, perturb_error(e)))?;
    }

    let _: Map<String, Value> = method_params(CompareMethod::Occlusion, &request.occlusion, &[])?;
    let occlusion = OcclusionParams {
        bow: request.bow,
        mask: request.mask,
        ..OcclusionParams::default()
    };
    let _: Map<String, Value> = method_params(
        CompareMethod::AttentionRollout,
        &request.attention_rollout,
        &[],
    )?;
    let _: Map<String, Value> = method_params(CompareMethod::Random, &request.random, &[])?;

    let mut gradients = BTreeMap::new();
    for (method, value) in [
        (
            CompareMethod::IntegratedGradients,
            &request.integrated_gradients,
        ),
        (CompareMethod::Saliency, &request.saliency),
        (CompareMethod::GradXInput, &request.grad_x_input),
    ] {
        if !methods.contains(&method) {
            continue;
        }
        let (kind, allowed): (GradientMethod, &[&str]) = match method {
            CompareMethod::IntegratedGradients => (
                GradientMethod::IntegratedGradients,
                &["steps", "quadrature", "output"],
            ),
            CompareMethod::Saliency => (GradientMethod::Saliency, &["output"]),
            _ => (GradientMethod::GradXInput, &["output"]),
        };
        let p: GradientOptions = method_params(method, value, allowed)?;
        let min = match p.quadrature {
            Quadrature::GaussLegendre => 1,
            Quadrature::Trapezoid => 2,
        };
        if kind == GradientMethod::IntegratedGradients && !(min..=MAX_STEPS).contains(&p.steps) {
            return Err(ApiError::validation(
                format!("{}.steps", method.name()),
                format!(
                    "steps must be between {min} and {MAX_STEPS} for this quadrature (got {})",
                    p.steps
                ),
            ));
        }
        gradients.insert(
            method,
            GradientParams {
                method: kind,
                output: p.output,
                steps: p.steps,
                quadrature: p.quadrature,
            },
        );
    }
    Ok(Plan {
        methods,
        seed,
        lime,
        shap,
        occlusion,
        gradients,
    })
}

/// The gradient methods' parameters inside `/explain/compare` (the same as the route's).
#[derive(Debug, Deserialize)]
#[serde(default)]
struct GradientOptions {
    steps: usize,
    quadrature: Quadrature,
    output: OutputKind,
}

impl Default for GradientOptions {
    fn default() -> Self {
        Self {
            steps: 50,
            quadrature: Quadrature::default(),
            output: OutputKind::default(),
        }
    }
}

/// Reads one method's parameter object (absent: the defaults). A key not in `allowed` or of
/// the wrong type is 400 naming `method.key`; an unknown keyword value (`"quadrature":
/// "simpson"`) is 422 naming it, as at the top level.
fn method_params<T: DeserializeOwned + Default>(
    method: CompareMethod,
    value: &Option<Value>,
    allowed: &[&str],
) -> Result<T, ApiError> {
    let name = method.name();
    let Some(value) = value else {
        return Ok(T::default());
    };
    let Some(object) = value.as_object() else {
        return Err(ApiError::InvalidJson(format!(
            "the body does not have the expected shape: {name} must be an object of its \
             parameters"
        )));
    };
    let listing = if allowed.is_empty() {
        format!("{name} takes no parameters here")
    } else {
        format!("the parameters of {name} are {}", allowed.join(", "))
    };
    for key in object.keys() {
        if !allowed.contains(&key.as_str()) {
            let why = match key.as_str() {
                "bow" | "mask" | "features" | "seed" => {
                    " (set at the top level: every method uses the same features, removal and \
                     seed)"
                }
                _ => "",
            };
            return Err(ApiError::InvalidJson(format!(
                "the body does not have the expected shape: unknown field `{name}.{key}`{why}; \
                 {listing}"
            )));
        }
    }
    for (key, v) in object {
        let probe = Value::Object(Map::from_iter([(key.clone(), v.clone())]));
        if let Err(e) = serde_json::from_value::<T>(probe) {
            let message = e.to_string();
            if message.starts_with("unknown variant") {
                return Err(ApiError::validation(
                    format!("{name}.{key}"),
                    format!("{name}.{key}: {message}"),
                ));
            }
            return Err(ApiError::InvalidJson(format!(
                "the body does not have the expected shape: {name}.{key}: {message}"
            )));
        }
    }
    serde_json::from_value(value.clone()).map_err(|e| {
        ApiError::InvalidJson(format!(
            "the body does not have the expected shape: {name}: {e}"
        ))
    })
}

/// The usage between two snapshots of the scope's counters, plus the memo's shared rows.
fn usage_between(
    before: &ExplainUsage,
    after: &ExplainUsage,
    shared_rows: usize,
    started: Instant,
) -> MethodUsage {
    MethodUsage {
        model_evaluations: after.model_evaluations - before.model_evaluations,
        tokens_evaluated: after.tokens_evaluated - before.tokens_evaluated,
        cache_hits: after.cache_hits - before.cache_hits,
        shared_rows,
        queue_ms: round_ms(after.queue_ms - before.queue_ms),
        inference_ms: round_ms(after.inference_ms - before.inference_ms),
        total_ms: round_ms(started.elapsed().as_secs_f64() * 1e3),
    }
}

/// Runs every method in order, then every method's faithfulness rows in one call.
async fn run(
    state: &AppState,
    explained: &Explained,
    features: &FeatureSet,
    plan: &Plan,
    mask: Removal,
    truncate: bool,
) -> Result<(Vec<MethodResult>, MethodUsage), ApiError> {
    let scope = &explained.scope;
    let memo = MemoEvaluator::new(scope);
    // The original text has been evaluated already: remember its output.
    memo.remember(row_of(&explained.encoding), explained.original.clone());
    let d = features.len();
    let targets = &explained.targets;
    let mut results = Vec::with_capacity(plan.methods.len());
    for &method in &plan.methods {
        let started = Instant::now();
        let before = Evaluator::usage(scope);
        let shared_before = memo.shared_rows();
        let (params, scores) =
            attribute(state, explained, features, plan, method, &memo, truncate).await?;
        if scores.len() != targets.len() || scores.iter().any(|s| s.len() != d) {
            return Err(ApiError::Internal(format!(
                "{} gave scores of the wrong shape",
                method.name()
            )));
        }
        let usage = usage_between(
            &before,
            &Evaluator::usage(scope),
            memo.shared_rows() - shared_before,
            started,
        );
        results.push(MethodResult {
            method,
            params,
            attributions: targets
                .iter()
                .zip(scores)
                .map(|(&label, scores)| MethodAttribution { label, scores })
                .collect(),
            faithfulness: Vec::new(),
            usage,
        });
    }

    let started = Instant::now();
    let before = Evaluator::usage(scope);
    let shared_before = memo.shared_rows();
    let attributions: Vec<(usize, Vec<f64>)> = results
        .iter()
        .flat_map(|r| r.attributions.iter().map(|a| (a.label, a.scores.clone())))
        .collect();
    let scores = evaluate::score(
        features,
        &state.encoder,
        mask,
        truncate,
        &attributions,
        &memo,
    )
    .await?;
    let faithfulness_usage = usage_between(
        &before,
        &Evaluator::usage(scope),
        memo.shared_rows() - shared_before,
        started,
    );
    let mut scores = scores.into_iter();
    for r in &mut results {
        r.faithfulness = scores.by_ref().take(r.attributions.len()).collect();
    }
    Ok((results, faithfulness_usage))
}

/// One method's parameters used and its scores per target (in the order of the targets), one
/// per feature.
async fn attribute(
    state: &AppState,
    explained: &Explained,
    features: &FeatureSet,
    plan: &Plan,
    method: CompareMethod,
    memo: &MemoEvaluator<'_, RequestScope>,
    truncate: bool,
) -> Result<(Value, Vec<Vec<f64>>), ApiError> {
    let d = features.len();
    let targets = &explained.targets;
    let max = state.limits.max_num_samples;
    let encoder = &state.encoder;
    match method {
        CompareMethod::Lime => {
            let e = explain_lime(features, encoder, truncate, &plan.lime, max, targets, memo)
                .await
                .map_err(|e| method_error(method, lime_error(e)))?;
            let scores = e.labels.iter().map(|l| lime_scores(l, d)).collect();
            Ok((echo(&e.params), scores))
        }
        CompareMethod::Shap => {
            let e = explain_shap(features, encoder, truncate, &plan.shap, max, targets, memo)
                .await
                .map_err(|e| method_error(method, perturb_error(e)))?;
            let scores = e.labels.iter().map(|l| shap_scores(l, d)).collect();
            Ok((echo(&e.params), scores))
        }
        CompareMethod::Occlusion => {
            let e = explain_occlusion(
                features,
                encoder,
                truncate,
                &plan.occlusion,
                max,
                targets,
                memo,
            )
            .await
            .map_err(perturb_error)?;
            let scores = (0..targets.len())
                .map(|i| occlusion_scores(&e, i, d))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::Internal("occlusion gave no score per word".into()))?;
            Ok((echo(&e.params), scores))
        }
        CompareMethod::IntegratedGradients
        | CompareMethod::Saliency
        | CompareMethod::GradXInput => {
            let params =
                plan.gradients.get(&method).copied().ok_or_else(|| {
                    ApiError::Internal(format!("{} was not planned", method.name()))
                })?;
            let attributions = token_attributions(
                &explained.scope,
                &row_of(&explained.encoding),
                &explained.encoding.special,
                state.encoder.pad_id(),
                targets,
                params,
            )
            .await
            .map_err(|e| match e {
                GradientError::Invalid(message) => {
                    ApiError::validation(format!("{}.steps", method.name()), message)
                }
                GradientError::Eval(e) => e,
            })?;
            let mut used = json!({"output": params.output});
            if method == CompareMethod::IntegratedGradients {
                used["steps"] = json!(params.steps);
                used["quadrature"] = json!(params.quadrature);
            }
            let scores = attributions
                .iter()
                .map(|a| per_feature(features, &a.scores))
                .collect();
            Ok((used, scores))
        }
        CompareMethod::AttentionRollout => {
            let row = Row {
                attentions: true,
                ..row_of(&explained.encoding)
            };
            let output = memo
                .evaluate(vec![row])
                .await?
                .pop()
                .ok_or_else(|| ApiError::Internal("the engine returned no output".into()))?;
            let Some(attentions) = output.attentions else {
                return Err(ApiError::validation(
                    "methods",
                    "attention_rollout needs the model's attention probabilities and this \
                     model reports none; list \"methods\" without attention_rollout",
                ));
            };
            let pooling = Pooling::of(&state.model);
            let tokens: Vec<f64> = rollout_attribution(&attentions, pooling)
                .into_iter()
                .map(f64::from)
                .collect();
            let scores = per_feature(features, &tokens);
            Ok((
                json!({"pooling": pooling}),
                targets.iter().map(|_| scores.clone()).collect(),
            ))
        }
        CompareMethod::Random => {
            let scores = random_scores(d, plan.seed);
            Ok((
                json!({"seed": plan.seed}),
                targets.iter().map(|_| scores.clone()).collect(),
            ))
        }
    }
}

/// LIME's errors in the API's statuses (as `/explain/lime` maps them).
fn lime_error(error: LimeError) -> ApiError {
    match error {
        LimeError::Invalid { field, message } => ApiError::validation(field, message),
        LimeError::Features(e) => evaluate::feature_error(e),
        LimeError::Evaluate(source) => match source.downcast::<ApiError>() {
            Ok(api) => *api,
            Err(other) => ApiError::Internal(format!("LIME evaluation: {other}")),
        },
    }
}

/// A method's echoed parameters as JSON (plain structs: serializing them cannot fail).
fn echo<T: Serialize>(params: &T) -> Value {
    serde_json::to_value(params).unwrap_or(Value::Null)
}

/// A method's validation error about one of its own parameters, named `method.field`
/// (`shap.max_evals`); errors about the request's shared fields keep their names.
fn method_error(method: CompareMethod, error: ApiError) -> ApiError {
    match error {
        ApiError::Validation { field, message }
            if !matches!(field.as_str(), "text" | "target" | "mask" | "methods") =>
        {
            ApiError::validation(format!("{}.{field}", method.name()), message)
        }
        other => other,
    }
}

/// The documented 200 example (shortened: two methods).
fn response_example() -> Value {
    let faith = |comp: f64, suff: f64| {
        json!({"target": 1, "original": 0.92,
               "bins": [{"percent": 1, "features": 1, "comprehensiveness": 0.5, "sufficiency": 0.1},
                        {"percent": 5, "features": 1, "comprehensiveness": 0.5, "sufficiency": 0.1},
                        {"percent": 10, "features": 1, "comprehensiveness": 0.5, "sufficiency": 0.1},
                        {"percent": 20, "features": 1, "comprehensiveness": 0.5, "sufficiency": 0.1},
                        {"percent": 50, "features": 2, "comprehensiveness": 0.6, "sufficiency": 0.05}],
               "aopc_comprehensiveness": comp, "aopc_sufficiency": suff})
    };
    let usage = |rows: usize, shared: usize| {
        json!({"model_evaluations": rows, "tokens_evaluated": rows * 7, "cache_hits": 0,
               "shared_rows": shared, "queue_ms": 0.2, "inference_ms": 9.5, "total_ms": 11.0})
    };
    example_with(json!({
        "params": {"methods": ["occlusion", "random"], "seed": 7, "bow": true, "mask": "remove"},
        "methods": [
            {"method": "occlusion",
             "params": {"mode": "leave_one_out", "window": 1, "stride": 1, "bow": true,
                        "mask": "remove", "features": "words"},
             "attributions": [{"label": 1, "scores": [0.01, 0.05, -0.01, 0.4]}],
             "faithfulness": [faith(0.43, 0.09)],
             "usage": usage(4, 1)},
            {"method": "random", "params": {"seed": 7},
             "attributions": [{"label": 1, "scores": [2.0, 4.0, 1.0, 3.0]}],
             "faithfulness": [faith(0.06, 0.31)],
             "usage": usage(0, 0)}
        ],
        "faithfulness_usage": usage(9, 11),
        "ranking": [
            {"rank": 1, "method": "occlusion", "aopc_comprehensiveness": 0.43,
             "aopc_sufficiency": 0.09},
            {"rank": 2, "method": "random", "aopc_comprehensiveness": 0.06,
             "aopc_sufficiency": 0.31}
        ]
    }))
}
