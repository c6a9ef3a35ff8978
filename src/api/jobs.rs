//! `POST /jobs`, `GET /jobs/{id}`, `GET /jobs/{id}/events`, `DELETE /jobs/{id}`: long
//! explanations run asynchronously, with progress, cancellation and a stored result; and the
//! same progress stream for a synchronous route asked with `Accept: text/event-stream`.
//!
//! A job runs its method's synchronous route itself: the job's `request` is sent to the route's
//! handler as the body of an in-process `POST`, so a job validates, computes and answers exactly
//! as the route does, and its result is the route's body byte for byte. Only the deadline
//! differs (`jobs.timeout_ms`), and progress is reported through a [`RunContext`] that the
//! handler's [`RequestScope`](super::scope::RequestScope) picks up: rows submitted to the engine
//! and rows done. Cancelling aborts the job's task; dropping the handler's future drops its
//! queued engine rows, so a cancelled job stops using the model at once.
//!
//! The bookkeeping (states, caps, expiry, idempotency keys) is [`crate::jobs`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use axum::{Json, Router};
use futures_util::stream::Stream;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::task::AbortHandle;
use tower::ServiceExt;
use tracing::Instrument;
use utoipa::ToSchema;

use super::error::{ApiError, BodyErrors, ErrorBody};
use super::extract::ApiJson;
use super::scope::RunContext;
use super::{
    attention, compare, counterfactual, gradients, heads, lime, occlusion, predict, shap, AppState,
};
use crate::engine::RowCounts;
use crate::jobs::{Admission, AdmitError, Job, JobState, Outcome, Status};
use crate::telemetry::metric;

/// A method a job can run: the synchronous route it stands for.
pub struct JobMethod {
    /// What `POST /jobs` calls it (`"method": "lime"`).
    pub name: &'static str,
    /// The synchronous route; a job's `request` is that route's body.
    pub path: &'static str,
    route: fn() -> MethodRouter<AppState>,
}

/// One entry of [`METHODS`]: `job_method!(name, path, handler)`.
macro_rules! job_method {
    ($name:literal, $path:literal, $handler:path) => {
        JobMethod {
            name: $name,
            path: $path,
            route: || post($handler),
        }
    };
}

/// Every method a job can run, and every route that streams progress when asked; one line
/// adds one (and its case in `tests/http_jobs.rs`, which compares every method's job with its
/// synchronous answer).
#[rustfmt::skip]
pub static METHODS: &[JobMethod] = &[
    job_method!("predict", "/predict", predict::predict),
    job_method!("lime", "/explain/lime", lime::explain_lime_route),
    job_method!("shap", "/explain/shap", shap::explain_shap_route),
    job_method!("occlusion", "/explain/occlusion", occlusion::explain_occlusion_route),
    job_method!("counterfactual", "/explain/counterfactual", counterfactual::explain_counterfactual_route),
    job_method!("heads", "/explain/heads", heads::explain_heads_route),
    job_method!("attention", "/explain/attention", attention::explain_attention),
    job_method!("gradients", "/explain/gradients", gradients::explain_gradients_route),
    job_method!("compare", "/explain/compare", compare::explain_compare_route),
];

fn method_named(name: &str) -> Result<&'static JobMethod, ApiError> {
    METHODS.iter().find(|m| m.name == name).ok_or_else(|| {
        let names: Vec<&str> = METHODS.iter().map(|m| m.name).collect();
        ApiError::validation(
            "method",
            format!(
                "unknown method \"{name}\"; jobs run one of: {}",
                names.join(", ")
            ),
        )
    })
}

/// A job to run: a method and the body its synchronous route takes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"method": "lime", "request": {"text": "The plot was thin but the \
    acting was wonderful.", "num_samples": 5000, "seed": 7}}))]
pub struct JobRequest {
    /// `predict`, `lime`, `shap`, `occlusion`, `counterfactual`, `heads`, `attention`,
    /// `gradients` or `compare`: the route `POST /predict` or `POST /explain/{method}`.
    pub method: String,
    /// The body the synchronous route takes, as is. It is validated when the job runs: a bad
    /// body makes the job `failed` with the route's own error (status and body).
    #[schema(value_type = Object)]
    pub request: Value,
}

/// Rows of model work submitted and done so far.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobProgress {
    /// Distinct model rows answered so far (by a batch or by the row cache).
    pub rows_done: u64,
    /// Distinct model rows submitted so far. Methods submit work in steps (the original text
    /// first, adaptive LIME and counterfactual searches in rounds), so this can grow while
    /// the job runs.
    pub rows_total: u64,
}

impl From<RowCounts> for JobProgress {
    fn from(c: RowCounts) -> Self {
        Self {
            rows_done: c.rows_done,
            rows_total: c.rows_total,
        }
    }
}

/// A job as `GET /jobs/{id}` shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// The job's id (a random UUID): keep it, it is the only way to the result.
    pub id: String,
    pub method: String,
    pub state: JobState,
    pub progress: JobProgress,
    /// Milliseconds since the job was created; once finished, how long it lived.
    pub elapsed_ms: f64,
    /// Seconds until a finished job is forgotten (`jobs.result_ttl_s`); absent while live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<u64>,
    /// `done` or `failed`: the HTTP status the synchronous route answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `done`: the synchronous route's 200 body, byte for byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Box<RawValue>>,
    /// `failed`: the error as the synchronous route answered it (`code`, `message`,
    /// `details`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<Box<RawValue>>,
}

impl JobView {
    fn of(job: &Job, state: &AppState) -> Self {
        let status = job.status();
        let now = Instant::now();
        let end = status.finished.unwrap_or(now);
        let expires_in_s = status.finished.map(|finished| {
            let left = (finished + state.jobs.limits().result_ttl).saturating_duration_since(now);
            left.as_secs_f64().ceil() as u64
        });
        let outcome = status.outcome.as_deref();
        let (result, error) = match (status.state, outcome) {
            (JobState::Done, Some(outcome)) => (Some(outcome.body.clone()), None),
            (JobState::Failed, Some(outcome)) => (None, Some(error_member(&outcome.body))),
            _ => (None, None),
        };
        Self {
            id: job.id.clone(),
            method: job.method.clone(),
            state: status.state,
            progress: job.progress.counts().into(),
            elapsed_ms: super::scope::round_ms(
                end.saturating_duration_since(job.created).as_secs_f64() * 1e3,
            ),
            expires_in_s,
            status: outcome.map(|o| o.status),
            result,
            error,
        }
    }
}

/// The `error` member of an error body (the whole body if it has none).
fn error_member(body: &RawValue) -> Box<RawValue> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        error: &'a RawValue,
    }
    match serde_json::from_str::<Envelope>(body.get()) {
        Ok(envelope) => envelope.error.to_owned(),
        Err(_) => body.to_owned(),
    }
}

fn view_response(status: StatusCode, job: &Job, state: &AppState) -> Response {
    let mut response = (status, Json(JobView::of(job, state))).into_response();
    let location = HeaderValue::from_str(&format!("/jobs/{}", job.id))
        .expect("a UUID is a valid header value");
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// The `Idempotency-Key`, scoped to the caller's credentials (hashed, never stored) so that two
/// API keys never share a job through it.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().ok().filter(|k| {
        !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (b' '..=b'~').contains(&b))
    });
    let Some(key) = key else {
        return Err(ApiError::validation(
            "Idempotency-Key",
            "the Idempotency-Key header must be 1 to 255 printable ASCII characters (a UUID is a \
             good choice)",
        ));
    };
    let caller = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let caller: String = Sha256::digest(caller)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Some(format!("{caller}:{key}")))
}

/// Start a job: run an explanation (or a prediction) in the background.
///
/// Answers at once with the job's id (also in `Location`); follow it with `GET /jobs/{id}` or
/// `GET /jobs/{id}/events`. The `request` is checked when the job runs, exactly as its route
/// checks it: a bad body makes the job `failed` with the route's own error. Jobs run under
/// `jobs.timeout_ms` rather than `server.request_timeout_ms`, at most `jobs.max_running_jobs`
/// at once (the others wait `queued`), and live in memory only: they survive the client going
/// away, not a restart of the service.
///
/// With an `Idempotency-Key` header, retrying the same request returns the job already created
/// (200) instead of starting another, for as long as that job is stored; the same key with a
/// different method or request is a 422.
#[utoipa::path(
    post,
    path = "/jobs",
    tag = "jobs",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: \
        the same key and body return the same job (1 to 255 printable ASCII characters, kept as \
        long as the job)")),
    request_body(content = JobRequest, examples(
        ("lime" = (summary = "LIME with 5000 samples",
            value = json!({"method": "lime", "request": {"text": "The plot was thin but the \
                acting was wonderful.", "num_samples": 5000, "seed": 7}}))),
        ("heads" = (summary = "Importance of every attention head",
            value = json!({"method": "heads", "request": {"text": "The plot was thin but the \
                acting was wonderful.", "sweep": "heads"}}))),
    )),
    responses(
        (status = 202, description = "Created; the job is `queued` or already `running`",
            body = JobView,
            headers(("location" = String, description = "`/jobs/{id}`")),
            example = json!({"id": "4f9c2a0e-5b1d-4c8e-9a57-2d0f3b6e1c84", "method": "lime",
                "state": "queued", "progress": {"rows_done": 0, "rows_total": 0},
                "elapsed_ms": 0.05})),
        (status = 200, description = "The job created earlier with the same `Idempotency-Key` \
            and body, in its current state", body = JobView,
            headers(("location" = String, description = "`/jobs/{id}`")),
            example = json!({"id": "4f9c2a0e-5b1d-4c8e-9a57-2d0f3b6e1c84", "method": "lime",
                "state": "running", "progress": {"rows_done": 1280, "rows_total": 4731},
                "elapsed_ms": 2113.4})),
        (status = 400, description = "`invalid_json`: not JSON, not `{\"method\", \"request\"}`, \
            or `request` is not an object", body = ErrorBody,
            example = json!({"error": {"code": "invalid_json", "message":
                "the body does not have the expected shape: missing field `request`; POST /jobs \
                takes {\"method\": \"lime\", \"request\": {...the body of POST /explain/lime...}}",
                "details": {}}})),
        (status = 422, description = "`validation_error`: an unknown `method`, a malformed \
            `Idempotency-Key`, or a key already used for a different request", body = ErrorBody,
            example = json!({"error": {"code": "validation_error", "message":
                "unknown method \"lasso\"; jobs run one of: predict, lime, shap, occlusion, \
                counterfactual, heads, attention, gradients", "details": {"field": "method"}}})),
        (status = 503, description = "`overloaded` (with `Retry-After`): `jobs.max_live_jobs` \
            jobs are queued or running, or `jobs.max_stored_results` jobs are stored; or \
            `not_ready`", body = ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait (when overloaded)")),
            example = json!({"error": {"code": "overloaded", "message":
                "64 jobs are queued or running, the limit (jobs.max_live_jobs); retry after 1 s",
                "details": {"retry_after_s": 1}}})),
        BodyErrors,
    )
)]
pub async fn create_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let JobRequest { method, request } = serde_json::from_value(body).map_err(|e| {
        ApiError::InvalidJson(format!(
            "the body does not have the expected shape: {e}; POST /jobs takes {{\"method\": \
             \"lime\", \"request\": {{...the body of POST /explain/lime...}}}}"
        ))
    })?;
    let method = method_named(&method)?;
    if !request.is_object() {
        return Err(ApiError::InvalidJson(format!(
            "request must be a JSON object: the body of POST {}",
            method.path
        )));
    }
    let key = idempotency_key(&headers)?;
    if !state.is_ready() {
        return Err(ApiError::NotReady(
            "the model is not ready yet; retry shortly (GET /ready)".into(),
        ));
    }
    match state.jobs.admit(method.name, &request, key) {
        Ok(Admission::Existing(job)) => Ok(view_response(StatusCode::OK, &job, &state)),
        Ok(Admission::Created(job)) => {
            spawn_job(state.clone(), job.clone(), method, request);
            count_live(&state);
            Ok(view_response(StatusCode::ACCEPTED, &job, &state))
        }
        Err(error @ AdmitError::Full { retry_after, .. }) => Err(ApiError::JobsFull {
            message: error.to_string(),
            retry_after_s: retry_after.as_secs().max(1),
        }),
        Err(error @ AdmitError::KeyReused) => {
            Err(ApiError::validation("Idempotency-Key", error.to_string()))
        }
    }
}

/// Starts the job's task: wait for a run slot, then run the route.
fn spawn_job(state: AppState, job: Arc<Job>, method: &'static JobMethod, request: Value) {
    let span = tracing::info_span!("job", id = %job.id, method = method.name);
    let task = tokio::spawn(run_job(state, job.clone(), method, request).instrument(span));
    job.attach(task.abort_handle());
}

async fn run_job(state: AppState, job: Arc<Job>, method: &'static JobMethod, request: Value) {
    let Ok(_slot) = state.jobs.run_slots().acquire_owned().await else {
        return;
    };
    if !job.start() {
        return;
    }
    tracing::info!("job started");
    let timeout = state.jobs.limits().timeout;
    let timeout_ms = timeout.as_millis() as u64;
    let context = RunContext {
        progress: job.progress.clone(),
        timeout_ms: Some(timeout_ms),
    };
    let work = context.scope(call_route(method, state.clone(), request));
    let response = match tokio::time::timeout(timeout, work).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout { timeout_ms }.into_response(),
    };
    let outcome = outcome_of(response).await;
    tracing::info!(status = outcome.status, "job finished");
    if job.finish(outcome) {
        count_finished(&state, job.state());
    }
}

/// The job metrics after a job was created or finished.
fn count_live(state: &AppState) {
    metrics::gauge!(metric::JOBS_LIVE).set(state.jobs.counts().0 as f64);
}

fn count_finished(state: &AppState, final_state: JobState) {
    let label = serde_json::to_value(final_state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    metrics::counter!(metric::JOBS_FINISHED, "state" => label).increment(1);
    count_live(state);
}

/// Sends `request` to the method's route in-process, as the body of a `POST`.
async fn call_route(method: &JobMethod, state: AppState, request: Value) -> Response {
    let limit = state.config.server.max_body_bytes;
    let router = Router::new()
        .route(method.path, (method.route)())
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state);
    let http = Request::post(method.path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(request.to_string()))
        .expect("a path and a JSON body make a valid request");
    match router.oneshot(http).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// A route's answer as a job's outcome: its status and its JSON body, kept verbatim.
async fn outcome_of(response: Response) -> Outcome {
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .map_err(|e| e.to_string())
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string()))
        .and_then(|text| RawValue::from_string(text).map_err(|e| e.to_string()));
    match body {
        Ok(body) => Outcome { status, body },
        Err(detail) => {
            tracing::error!(status, error = %detail, "a route's answer is not JSON");
            let body = json!({"error": {"code": "internal", "message":
                "internal error; the job id identifies it in the logs", "details": {}}});
            Outcome {
                status: StatusCode::INTERNAL_SERVER_ERROR.as_u16(),
                body: RawValue::from_string(body.to_string()).expect("valid JSON"),
            }
        }
    }
}

/// A job's state, progress and, once finished, its result or error.
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id, from `POST /jobs`")),
    responses(
        (status = 200, description = "The job. `result` when `done` (the route's 200 body); \
            `status` and `error` when `failed` (the route's error)", body = JobView,
            example = json!({"id": "4f9c2a0e-5b1d-4c8e-9a57-2d0f3b6e1c84", "method": "shap",
                "state": "failed", "progress": {"rows_done": 0, "rows_total": 0},
                "elapsed_ms": 0.8, "expires_in_s": 600, "status": 422,
                "error": {"code": "validation_error", "message":
                    "max_evals must be between 2 and 20000 (got 50000)",
                    "details": {"field": "max_evals"}}})),
        (status = 404, description = "`not_found`: no such job, or it expired or was deleted",
            body = ErrorBody,
            example = json!({"error": {"code": "not_found", "message":
                "no job 4f9c2a0e-5b1d-4c8e-9a57-2d0f3b6e1c84: it never existed, was deleted, or \
                finished longer ago than jobs.result_ttl_s", "details": {}}})),
    )
)]
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = state.jobs.get(&id).ok_or(ApiError::JobNotFound(id))?;
    Ok(Json(JobView::of(&job, &state)).into_response())
}

/// Cancel a live job, or discard a finished one.
///
/// A `queued` or `running` job becomes `cancelled` at once: its task stops and its model rows
/// still queued are dropped; it is kept (without result) until it expires, so watchers see the
/// cancellation. A finished job (`done`, `failed`, `cancelled`) is forgotten now, result and
/// idempotency key with it; later requests for it get 404. The answer is the job as it was
/// left.
#[utoipa::path(
    delete,
    path = "/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id, from `POST /jobs`")),
    responses(
        (status = 200, description = "Cancelled (was live) or discarded (was finished)",
            body = JobView,
            example = json!({"id": "4f9c2a0e-5b1d-4c8e-9a57-2d0f3b6e1c84", "method": "lime",
                "state": "cancelled", "progress": {"rows_done": 640, "rows_total": 4731},
                "elapsed_ms": 912.7, "expires_in_s": 600})),
        (status = 404, description = "`not_found`: no such job, or it expired or was deleted",
            body = ErrorBody,
            example = json!({"error": {"code": "not_found", "message":
                "no job 4f9c2a0e-5b1d-4c8e-9a57-2d0f3b6e1c84: it never existed, was deleted, or \
                finished longer ago than jobs.result_ttl_s", "details": {}}})),
    )
)]
pub async fn delete_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = state
        .jobs
        .get(&id)
        .ok_or_else(|| ApiError::JobNotFound(id.clone()))?;
    if job.cancel() {
        tracing::info!(job = %id, "job cancelled");
        count_finished(&state, JobState::Cancelled);
    } else {
        state.jobs.remove(&id);
    }
    Ok(Json(JobView::of(&job, &state)).into_response())
}

/// One server-sent event of a job's stream (the schema of each event, not of the whole body).
#[derive(Serialize, ToSchema)]
pub struct StreamEvent {
    /// `progress`, `result`, `error` or `cancelled`.
    pub event: String,
    /// The event's JSON document as text (see the route's description for each event).
    pub data: String,
}

/// Follow a job as server-sent events: `progress` events, then one final event, then the
/// stream ends.
///
/// * `progress`: `{"state", "rows_done", "rows_total"}`, on every change of state or progress
///   (the first one at once, with the current state).
/// * `result` (when `done`): the synchronous route's 200 body, byte for byte.
/// * `error` (when `failed`): the synchronous route's error body, `{"error": {...}}`.
/// * `cancelled`: `{"state": "cancelled", "rows_done", "rows_total"}`.
///
/// A finished job answers with its last progress and final event at once. Comments keep an
/// idle stream alive through proxies. Closing the stream does not cancel the job (use
/// `DELETE`). The synchronous routes stream the same events when asked with
/// `Accept: text/event-stream`; there, closing the stream does cancel the work.
#[utoipa::path(
    get,
    path = "/jobs/{id}/events",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id, from `POST /jobs`")),
    responses(
        (status = 200, description = "An event stream: each event as described by the schema \
            (`event` names it, `data` is its JSON text)", content_type = "text/event-stream",
            body = StreamEvent,
            example = json!({"event": "progress",
                "data": "{\"state\":\"running\",\"rows_done\":640,\"rows_total\":4731}"})),
        (status = 404, description = "`not_found`: no such job, or it expired or was deleted",
            body = ErrorBody,
            example = json!({"error": {"code": "not_found", "message":
                "no job 4f9c2a0e-5b1d-4c8e-9a57-2d0f3b6e1c84: it never existed, was deleted, or \
                finished longer ago than jobs.result_ttl_s", "details": {}}})),
    )
)]
pub async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = state.jobs.get(&id).ok_or(ApiError::JobNotFound(id))?;
    Ok(events(job, None).into_response())
}

/// Aborts a task when dropped: a streamed synchronous request stops when its client goes.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the event stream holds between events.
struct Watcher {
    job: Arc<Job>,
    status: tokio::sync::watch::Receiver<Status>,
    progress: tokio::sync::watch::Receiver<RowCounts>,
    /// The state and counts of the last `progress` event sent.
    last: Option<(JobState, RowCounts)>,
    ended: bool,
    _task: Option<AbortOnDrop>,
}

fn events(
    job: Arc<Job>,
    task: Option<AbortOnDrop>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let watcher = Watcher {
        status: job.subscribe(),
        progress: job.progress.subscribe(),
        job,
        last: None,
        ended: false,
        _task: task,
    };
    let stream = futures_util::stream::unfold(watcher, |mut w| async move {
        if w.ended {
            return None;
        }
        loop {
            let status = w.status.borrow_and_update().clone();
            let counts = *w.progress.borrow_and_update();
            if status.state.is_finished() {
                // One last progress event with the final state, then the final event.
                if w.last.map(|(state, _)| state) != Some(status.state) {
                    w.last = Some((status.state, counts));
                    return Some((Ok(progress_event(status.state, counts)), w));
                }
                w.ended = true;
                let event = final_event(&w.job, &status, counts);
                return Some((Ok(event), w));
            }
            if w.last != Some((status.state, counts)) {
                w.last = Some((status.state, counts));
                return Some((Ok(progress_event(status.state, counts)), w));
            }
            // Both senders live in the job, which the watcher holds: `changed` cannot fail.
            tokio::select! {
                _ = w.status.changed() => {}
                _ = w.progress.changed() => {}
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn progress_data(state: JobState, counts: RowCounts) -> String {
    json!({"state": state, "rows_done": counts.rows_done, "rows_total": counts.rows_total})
        .to_string()
}

fn progress_event(state: JobState, counts: RowCounts) -> Event {
    Event::default()
        .event("progress")
        .data(progress_data(state, counts))
}

fn final_event(job: &Job, status: &Status, counts: RowCounts) -> Event {
    match (status.state, status.outcome.as_deref()) {
        (JobState::Done, Some(outcome)) => {
            Event::default().event("result").data(outcome.body.get())
        }
        (JobState::Failed, Some(outcome)) => {
            Event::default().event("error").data(outcome.body.get())
        }
        (state, _) => {
            if state != JobState::Cancelled {
                tracing::error!(job = %job.id, ?state, "a finished job without an outcome");
            }
            Event::default()
                .event("cancelled")
                .data(progress_data(JobState::Cancelled, counts))
        }
    }
}

/// Whether the client asked for server-sent events.
fn wants_events(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// Middleware: a `POST` to a job method's route with `Accept: text/event-stream` runs as an
/// unstored job and answers with its event stream (200, `text/event-stream`; the route's own
/// status is in the final event: `result` or `error`). The request keeps its usual deadline;
/// its work is cancelled when the client closes the stream. Every other request passes.
pub async fn stream_if_asked(request: Request, next: Next) -> Response {
    let method = (request.method() == Method::POST)
        .then(|| METHODS.iter().find(|m| m.path == request.uri().path()))
        .flatten()
        .filter(|_| wants_events(request.headers()));
    let Some(method) = method else {
        return next.run(request).await;
    };
    let job = Job::unstored(method.name);
    job.start();
    let context = RunContext {
        progress: job.progress.clone(),
        timeout_ms: None,
    };
    let runner = job.clone();
    let task = tokio::spawn(
        async move {
            let response = context.scope(next.run(request)).await;
            runner.finish(outcome_of(response).await);
        }
        .instrument(tracing::Span::current()),
    );
    events(job, Some(AbortOnDrop(task.abort_handle()))).into_response()
}
