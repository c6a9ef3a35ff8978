//! The HTTP edge: the router, shared state, errors, DTOs and the OpenAPI document. The only
//! layer that knows about axum; below it everything speaks domain types.
//!
//! [`app`] builds the whole router from an [`AppState`] and is kept apart from `main`, so tests
//! drive it with `tower::ServiceExt::oneshot` or serve it on port 0 with [`serve`].

pub mod attention;
pub mod auth;
pub mod compare;
pub mod counterfactual;
pub mod dto;
pub mod error;
pub mod evaluate;
pub mod explain;
pub mod extract;
pub mod gradients;
pub mod heads;
pub mod jobs;
pub mod lime;
pub mod observe;
pub mod occlusion;
pub mod openapi;
pub mod ops;
mod perturbation;
pub mod predict;
pub mod scope;
mod serve;
pub mod shap;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::routing::{get, post};
use axum::{middleware, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::{Config, ConfigError, EffectiveLimits};
use crate::engine::{Engine, EngineError};
use crate::jobs::{JobLimits, JobStore};
use crate::model::{Classifier, ModelInfo, TextEncoder};
use crate::telemetry;
use error::ApiError;
use scope::row_of;

pub use serve::{serve, termination_signal};

/// Everything a handler needs, cheap to clone (handles and `Arc`s).
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub engine: Engine,
    pub encoder: Arc<TextEncoder>,
    pub model: Arc<ModelInfo>,
    /// Limits resolved against the model (`max_input_tokens = 0` means the model's maximum).
    pub limits: Arc<EffectiveLimits>,
    pub metrics: PrometheusHandle,
    /// API keys and rate limits.
    pub access: Arc<auth::Access>,
    /// Asynchronous jobs (`/jobs`), in memory.
    pub jobs: JobStore,
}

/// A short text run through the model before readiness, so the first user request does not pay
/// the one-off costs of the first forward pass.
const WARM_UP_TEXT: &str = "Warming up: the quick brown fox jumps over the lazy dog.";

impl AppState {
    /// Checks the configuration against the model and starts the engine (not yet warm).
    pub fn new(
        config: Config,
        classifier: Arc<dyn Classifier>,
        encoder: TextEncoder,
    ) -> Result<Self, ConfigError> {
        Self::with_gradients(config, classifier, None, encoder)
    }

    /// As [`AppState::new`], with a model for the gradient routes (normally the same weights as
    /// `classifier`: [`crate::model::heads::EncoderClassifier`] implements both).
    pub fn with_gradients(
        config: Config,
        classifier: Arc<dyn Classifier>,
        gradient_model: Option<Arc<dyn crate::model::gradients::GradientModel>>,
        encoder: TextEncoder,
    ) -> Result<Self, ConfigError> {
        let model = Arc::new(classifier.info().clone());
        let limits = Arc::new(config.effective_limits(&model)?);
        // Every text the service encodes meets the configured limit, not only the request's
        // own: the texts LIME, SHAP, occlusion and the flip search re-tokenize are cut (with
        // `truncate`) or refused at the same length as the original.
        let encoder = encoder.with_max_len(limits.max_input_tokens);
        let access = Arc::new(auth::Access::from_config(&config.auth)?);
        let engine =
            Engine::start_with_gradients(classifier, gradient_model, config.engine.clone());
        let jobs = JobStore::new(JobLimits::from(&config.jobs));
        jobs.start_sweeper();
        Ok(Self {
            config: Arc::new(config),
            engine,
            encoder: Arc::new(encoder),
            model,
            limits,
            metrics: telemetry::metrics_handle(),
            access,
            jobs,
        })
    }

    /// Runs one forward pass; afterwards `/ready` answers 200.
    pub async fn warm_up(&self) -> Result<Duration, EngineError> {
        let encoding = self
            .encoder
            .encode(WARM_UP_TEXT, true)
            .map_err(|e| EngineError::Internal(format!("cannot encode the warm-up text: {e}")))?;
        self.engine.warm_up(vec![row_of(&encoding)]).await
    }

    pub fn is_ready(&self) -> bool {
        self.engine.is_ready()
    }
}

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    let docs = SwaggerUi::new("/docs").config(
        // No validator: Swagger UI would otherwise call validator.swagger.io, which fails
        // offline and leaks the document's address.
        utoipa_swagger_ui::Config::from("/openapi.json").validator_url("none"),
    );
    Router::new()
        .route("/predict", post(predict::predict))
        .route("/explain/attention", post(attention::explain_attention))
        .route("/explain/heads", post(heads::explain_heads_route))
        .route("/explain/lime", post(lime::explain_lime_route))
        .route(
            "/explain/gradients",
            post(gradients::explain_gradients_route),
        )
        .route(
            "/explain/occlusion",
            post(occlusion::explain_occlusion_route),
        )
        .route(
            "/explain/counterfactual",
            post(counterfactual::explain_counterfactual_route),
        )
        .route("/explain/shap", post(shap::explain_shap_route))
        .route("/jobs", post(jobs::create_job))
        .route("/jobs/{id}", get(jobs::get_job).delete(jobs::delete_job))
        .route("/jobs/{id}/events", get(jobs::job_events))
        .route("/explain/compare", post(compare::explain_compare_route))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/info", get(ops::info))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi_json))
        .merge(docs)
        .merge(crate::ui::router())
        // After every route, so that it applies to all of them.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        // Inside the body limit and the access guard: a streamed request passes both first.
        .layer(middleware::from_fn(jobs::stream_if_asked))
        .layer(DefaultBodyLimit::max(state.config.server.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.access.clone(),
            auth::guard,
        ))
        .layer(middleware::from_fn(observe::observe))
        .layer(cors(&state.config.server.cors_allowed_origins))
        .with_state(state)
}

/// CORS for the configured origins only (none: browsers keep the same-origin policy).
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("idempotency-key"),
            header::ACCEPT,
        ])
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-queue-time"),
            HeaderName::from_static("x-inference-time"),
            HeaderName::from_static("x-total-time"),
            header::RETRY_AFTER,
            header::LOCATION,
        ])
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(request.uri().path().to_string())
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::MethodNotAllowed {
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
    }
}
