//! The plumbing every model-backed route shares, written once: refuse until ready, validate
//! and encode texts under the configured limits, run rows through the engine under the
//! request's deadline, and account for what it cost (the `usage` block and timing headers).
//!
//! A route handler reads:
//! ```ignore
//! let mut scope = RequestScope::begin(&state)?;
//! let encoding = scope.encode("text", &request.text, request.truncate)?;
//! let outputs = scope.evaluate(vec![row_of(&encoding)]).await?;
//! let body = MyResponse { usage: scope.usage(), ... };
//! Ok(scope.respond(&body))
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::dto::Usage;
use super::error::ApiError;
use super::AppState;
use crate::engine::{JobOptions, RowProgress};
use crate::explain::{Evaluator, Usage as ExplainUsage};
use crate::model::gradients::{GradientRow, OutputKind, RowGradient};
use crate::model::tokenizer::TokenizeError;
use crate::model::{Encoding, Row, RowOutput};

/// How a request runs when it is more than a plain synchronous request: as an asynchronous
/// job, or streamed as server-sent events. Set around the handler's future with
/// [`RunContext::scope`]; [`RequestScope::begin`] picks it up (and keeps it, because methods
/// then run on blocking threads where task-locals do not reach).
#[derive(Clone, Debug)]
pub struct RunContext {
    /// Where the request's engine work reports rows submitted and done.
    pub progress: Arc<RowProgress>,
    /// The deadline in milliseconds; `None` keeps `server.request_timeout_ms`.
    pub timeout_ms: Option<u64>,
}

tokio::task_local! {
    static RUN_CONTEXT: RunContext;
}

impl RunContext {
    /// Runs `work` (a route handler's future) with this context.
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        RUN_CONTEXT.scope(self, work).await
    }
}

/// One request's view of the service: its deadline and what it has cost so far.
pub struct RequestScope {
    state: AppState,
    started: Instant,
    deadline: Instant,
    /// The deadline's length, for the 504's message.
    timeout_ms: u64,
    progress: Option<Arc<RowProgress>>,
    /// Behind a lock so explanation methods can share the scope as an [`Evaluator`].
    usage: Mutex<Usage>,
}

impl RequestScope {
    /// Starts a model-backed request; 503 `not_ready` until the model has warmed up.
    pub fn begin(state: &AppState) -> Result<Self, ApiError> {
        if !state.is_ready() {
            return Err(ApiError::NotReady(
                "the model is not ready yet; retry shortly (GET /ready)".into(),
            ));
        }
        let context = RUN_CONTEXT.try_with(RunContext::clone).ok();
        let timeout_ms = context
            .as_ref()
            .and_then(|c| c.timeout_ms)
            .unwrap_or(state.config.server.request_timeout_ms);
        let started = Instant::now();
        let deadline = started + Duration::from_millis(timeout_ms);
        Ok(Self {
            state: state.clone(),
            started,
            deadline,
            timeout_ms,
            progress: context.map(|c| c.progress),
            usage: Mutex::new(Usage::default()),
        })
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// When the request must be answered; long computations outside the engine should check it.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Tokenizes one text of the request; `field` names it in errors (`text`, `texts[2]`).
    /// Empty text and text over `limits.max_input_tokens` (without `truncate`) are 422.
    pub fn encode(&self, field: &str, text: &str, truncate: bool) -> Result<Encoding, ApiError> {
        if text.trim().is_empty() {
            return Err(ApiError::validation(
                field,
                format!("{field} is empty; give some text to classify"),
            ));
        }
        let max = self.state.limits.max_input_tokens;
        let too_long = |tokens: usize| {
            ApiError::validation(
                field,
                format!("{field} is {tokens} tokens long, over the maximum of {max}; shorten it or set \"truncate\": true"),
            )
        };
        let mut encoding = match self.state.encoder.encode(text, truncate) {
            Ok(encoding) => encoding,
            Err(TokenizeError::TooLong { tokens, .. }) => return Err(too_long(tokens)),
            Err(TokenizeError::Tokenizer(detail)) => {
                return Err(ApiError::Internal(format!("tokenizer failed: {detail}")))
            }
        };
        // The configured limit may be below the model's own maximum, which the encoder enforces.
        if encoding.len() > max {
            if !truncate {
                return Err(too_long(encoding.len()));
            }
            truncate_to(&mut encoding, max);
        }
        tracing::debug!(
            field,
            tokens = encoding.len(),
            truncated = encoding.truncated,
            "encoded"
        );
        Ok(encoding)
    }

    /// Runs rows through the engine under this request's deadline; one output per row, in order.
    pub async fn evaluate(&self, rows: Vec<Row>) -> Result<Vec<RowOutput>, ApiError> {
        let options = self.job_options();
        let timeout_ms = self.timeout_ms;
        let result = self
            .state
            .engine
            .evaluate(rows, options)
            .await
            .map_err(|e| ApiError::from_engine(e, timeout_ms))?;
        let stats = &result.stats;
        let mut usage = self.usage.lock().expect("usage lock");
        usage.model_evaluations += stats.model_evaluations();
        usage.tokens_evaluated += stats.tokens_evaluated;
        usage.cache_hits += stats.cache_hits;
        usage.queue_ms += stats.queue_ms;
        usage.inference_ms += stats.inference_ms;
        Ok(result.outputs)
    }

    /// Runs gradient rows through the engine under this request's deadline, counted in the
    /// same usage; one output per row, in order.
    pub async fn gradients(
        &self,
        rows: Vec<GradientRow>,
        output: OutputKind,
    ) -> Result<Vec<RowGradient>, ApiError> {
        let options = self.job_options();
        let timeout_ms = self.timeout_ms;
        let result = self
            .state
            .engine
            .gradients(rows, output, options)
            .await
            .map_err(|e| ApiError::from_engine(e, timeout_ms))?;
        let stats = &result.stats;
        let mut usage = self.usage.lock().expect("usage lock");
        usage.model_evaluations += stats.model_evaluations();
        usage.tokens_evaluated += stats.tokens_evaluated;
        usage.queue_ms += stats.queue_ms;
        usage.inference_ms += stats.inference_ms;
        Ok(result.outputs)
    }

    fn job_options(&self) -> JobOptions {
        JobOptions {
            deadline: Some(self.deadline),
            bypass_cache: false,
            progress: self.progress.clone(),
        }
    }

    /// What the request has cost so far, `total_ms` measured now.
    pub fn usage(&self) -> Usage {
        let usage = self.usage.lock().expect("usage lock");
        Usage {
            queue_ms: round_ms(usage.queue_ms),
            inference_ms: round_ms(usage.inference_ms),
            total_ms: round_ms(self.started.elapsed().as_secs_f64() * 1e3),
            ..usage.clone()
        }
    }

    /// A 200 JSON response with the `x-queue-time` and `x-inference-time` headers
    /// (milliseconds); `x-total-time` and `x-request-id` are added for every route by the
    /// request middleware.
    pub fn respond<T: Serialize>(&self, body: &T) -> Response {
        let usage = self.usage();
        let mut response = Json(body).into_response();
        let headers = response.headers_mut();
        headers.insert("x-queue-time", millis(usage.queue_ms));
        headers.insert("x-inference-time", millis(usage.inference_ms));
        response
    }
}

/// Explanation methods run their rows through the request's scope: same deadline, same usage.
impl Evaluator for RequestScope {
    type Error = ApiError;

    fn evaluate(
        &self,
        rows: Vec<Row>,
    ) -> impl Future<Output = Result<Vec<RowOutput>, ApiError>> + Send {
        RequestScope::evaluate(self, rows)
    }

    fn usage(&self) -> ExplainUsage {
        let usage = self.usage.lock().expect("usage lock");
        ExplainUsage {
            model_evaluations: usage.model_evaluations,
            tokens_evaluated: usage.tokens_evaluated,
            cache_hits: usage.cache_hits,
            queue_ms: usage.queue_ms,
            inference_ms: usage.inference_ms,
        }
    }
}

/// Milliseconds to the microsecond: finer digits are noise, not information.
pub(crate) fn round_ms(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

/// A header value of milliseconds with three decimals.
pub(crate) fn millis(ms: f64) -> HeaderValue {
    HeaderValue::from_str(&format!("{ms:.3}")).expect("a number is a valid header value")
}

/// The model row of an encoded text: its ids and token types, no head mask, no attentions.
pub fn row_of(encoding: &Encoding) -> Row {
    Row {
        type_ids: encoding.type_ids.clone(),
        ..Row::new(encoding.ids.clone())
    }
}

/// Cuts an encoding to `max` tokens, keeping the trailing special tokens (`[SEP]`), as the
/// encoder does for the model's own maximum.
fn truncate_to(encoding: &mut Encoding, max: usize) {
    let tail = encoding
        .special
        .iter()
        .rev()
        .take_while(|s| **s)
        .count()
        .min(max);
    let head = max - tail;
    fn keep_ends<T>(v: &mut Vec<T>, head: usize, tail: usize) {
        let end: Vec<T> = v.drain(v.len() - tail..).collect();
        v.truncate(head);
        v.extend(end);
    }
    keep_ends(&mut encoding.ids, head, tail);
    keep_ends(&mut encoding.type_ids, head, tail);
    keep_ends(&mut encoding.tokens, head, tail);
    keep_ends(&mut encoding.offsets, head, tail);
    keep_ends(&mut encoding.special, head, tail);
    encoding.truncated = true;
}
