//! The OpenAPI document, generated from the handlers' annotations. `glassbox openapi` prints
//! it, `openapi/openapi.json` is that output, and a test fails when the two differ.

use std::sync::OnceLock;

use utoipa::OpenApi;

use super::{dto, error, ops, predict};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "glassbox",
        description = "Explains what a BERT text classifier does. Every error has the shape \
            `{\"error\": {\"code\", \"message\", \"details\"}}`; every response carries `x-request-id` \
            and `x-total-time`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(predict::predict, ops::health, ops::ready, ops::info, ops::metrics, ops::openapi_json,
        crate::api::lime::explain_lime_route,
        crate::api::gradients::explain_gradients_route,
        crate::api::attention::explain_attention,
        crate::api::heads::explain_heads_route,
        crate::api::occlusion::explain_occlusion_route,
        crate::api::counterfactual::explain_counterfactual_route,
        crate::api::shap::explain_shap_route,
        crate::api::jobs::create_job,
        crate::api::jobs::get_job,
        crate::api::jobs::delete_job,
        crate::api::jobs::job_events,
        crate::api::compare::explain_compare_route,
    ),
    components(schemas(
        error::ErrorBody,
        error::ErrorDetail,
        dto::ModelRef,
        dto::Prediction,
        dto::LabelScore,
        dto::Usage,
        crate::api::lime::LimeRequest,
        crate::api::gradients::GradientsRequest,
        crate::api::gradients::GradientsResponse,
        crate::api::lime::LimeResponse,
        crate::api::attention::AttentionRequest,
        crate::api::attention::AttentionResponse,
        crate::api::heads::HeadsRequest,
        crate::api::heads::HeadsResponse,
        crate::api::occlusion::OcclusionRequest,
        crate::api::occlusion::OcclusionResponse,
        crate::api::counterfactual::CounterfactualRequest,
        crate::api::counterfactual::CounterfactualResponse,
        crate::api::shap::ShapRequest,
        crate::api::shap::ShapResponse,
        crate::api::jobs::JobRequest,
        crate::api::jobs::JobView,
        crate::api::jobs::JobProgress,
        crate::api::jobs::StreamEvent,
        crate::jobs::JobState,
        crate::api::compare::CompareRequest,
        crate::api::compare::CompareResponse,
    )),
    tags(
        (name = "predict", description = "Classification"),
        (name = "operations", description = "Health, readiness, metadata, metrics"),
        (name = "explain", description = "Explanations: which parts of the text drive the prediction"),
        (name = "jobs", description = "Long work run asynchronously: any `/explain/*` route or \
            `/predict` as a job with progress (server-sent events), cancellation and a stored \
            result. The synchronous routes stream the same progress events when asked with \
            `Accept: text/event-stream`. Jobs live in memory: they survive the client going \
            away, not a restart."),
    )
)]
pub struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as pretty JSON with a final newline (the form committed to the repository).
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut json = document()
            .to_pretty_json()
            .expect("the OpenAPI document serializes");
        json.push('\n');
        json
    })
}
