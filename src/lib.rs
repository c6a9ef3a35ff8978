//! glassbox: an HTTP service that explains what a BERT text classifier does.
//!
//! # Module map
//!
//! Four layers that depend one way only, plus leaves everyone may use:
//!
//! ```text
//! api  ->  explain  ->  engine  ->  model
//! (axum, utoipa,   (features, LIME, SHAP,   (queue, batcher,     (encoder on candle,
//!  DTOs, errors)    occlusion, attention…)   worker threads)      tokenizer, heads)
//! config, telemetry, cli: leaves
//! ```
//!
//! * [`model`]: our own BERT / DistilBERT / RoBERTa encoder ([`model::bert`]) with attentions,
//!   per-row head masks, embeddings input and a differentiable variant; fused CPU kernels
//!   ([`model::kernels`]); classification and zero-shot heads ([`model::heads`]); the loader
//!   with errors that name the file ([`model::loader`]); the [`model::Classifier`] trait the
//!   rest of the crate sees, and a linear toy classifier ([`model::toy`]) for known-answer tests.
//! * [`engine`]: one shared model behind dedicated threads; rows of all concurrent requests are
//!   admitted against a row budget, deduplicated, cached, and batched by a token budget.
//! * [`explain`]: word features and removal strategies ([`explain::features`]) and the
//!   explanation methods, each written against [`explain::Evaluator`] so it can be tested
//!   without the engine or BERT.
//! * [`api`]: the router ([`api::app`]), shared request plumbing ([`api::scope`],
//!   [`api::explain`]), the one error shape ([`api::error`]), the OpenAPI document.
//! * [`jobs`]: asynchronous jobs' bookkeeping (states, caps, expiry, idempotency keys); the
//!   routes that run them are [`api::jobs`].
//! * [`ui`]: the browser playground, static files embedded in the binary.
//! * [`config`]: one typed configuration (defaults < file < `GLASSBOX_*` < flags).
//! * [`telemetry`]: logs and Prometheus metrics.
//!
//! # The life of one request
//!
//! 1. `POST /explain/lime` arrives; the observe middleware opens a span with the request id and
//!    starts the timers; [`api::extract::ApiJson`] parses the body (errors in the one shape).
//! 2. [`api::explain::Explained::begin`] checks readiness, tokenizes the text under the
//!    configured limits and runs it once through the engine to get the prediction and resolve
//!    the target labels.
//! 3. The method builds its perturbed rows ([`explain::features`]) and hands them to the
//!    request's [`api::scope::RequestScope`], which submits them to the [`engine::Engine`] as
//!    one job under the request's deadline.
//! 4. The engine admits the job (503 when the queue is full), drops duplicate rows, answers
//!    cached ones, and interleaves the rest with other jobs' rows into batches of similar
//!    length; a model thread runs each batch through the encoder.
//! 5. The method turns the outputs into its result (a weighted ridge fit for LIME); the handler
//!    adds `model`, `prediction`, `tokens` and `usage`, and the response carries the timing
//!    headers. A client that goes away drops its queued rows.
//!
//! Long work takes the same path asynchronously: `POST /jobs` admits a job into the
//! [`jobs::JobStore`] and [`api::jobs`] sends its request to the same route in-process, inside
//! an [`api::scope::RunContext`] that gives the request the job's deadline and a progress
//! report the engine updates batch by batch (watched through `GET /jobs/{id}/events`). A
//! synchronous route asked with `Accept: text/event-stream` runs the same way, unstored.
pub mod api;
pub mod cli;
pub mod config;
pub mod engine;
pub mod explain;
pub mod jobs;
pub mod model;
pub mod telemetry;
pub mod ui;
