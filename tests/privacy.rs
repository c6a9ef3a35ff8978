//! Submitted text is private (API.md): it never appears in the logs at `info` or above.
//!
//! The service's own log subscriber ([`glassbox::telemetry::init_logging_to`], the one `main`
//! installs, at the default `info` level) writes into a buffer while requests carrying a unique
//! marker go through the router: successful predictions and explanations, and the error paths
//! that are most tempted to quote the input (a 400 whose message echoes a wrong-typed value, an
//! over-long text, a body over the size limit, a model panic logged as an internal error, a
//! timeout). The buffer must hold the requests' log lines, and not the marker.
//!
//! One test in its own binary: the subscriber is global (the model threads log too) and can be
//! installed once per process.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use glassbox::api::{app, AppState};
use glassbox::config::Config;
use glassbox::model::toy::{ToyClassifier, ToyOutput};
use glassbox::model::TextEncoder;
use glassbox::telemetry::{init_logging_to, LogFormat};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use support::TestModel;
use tower::ServiceExt;

/// Unlikely to appear anywhere by chance; mixed case so that a lower-cased copy (as the
/// uncased tokenizer would produce) is caught as well.
const MARKER: &str = "Qx7SecretMarkerZv";

/// Token ids of the tiny model's (real BERT uncased) vocabulary.
const GOOD: u32 = 2204;
const BAD: u32 = 2919;
const POISON: u32 = 9947;

/// Everything the subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn router(config: Config) -> Router {
    let weights = HashMap::from([(GOOD, vec![-1.0, 1.5]), (BAD, vec![1.5, -1.0])]);
    let toy = ToyClassifier::new(
        vec!["negative".into(), "positive".into()],
        weights,
        vec![0.0, 0.0],
        ToyOutput::Softmax,
    );
    let model = TestModel::new(toy, true, Duration::ZERO, POISON);
    let encoder = TextEncoder::from_file(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny/tiny-bert-cls/tokenizer.json"),
        128,
    )
    .expect("the tiny tokenizer loads");
    let state = AppState::new(config, model, encoder).expect("state builds");
    state.warm_up().await.expect("warm-up succeeds");
    app(state)
}

async fn post(router: &Router, path: &str, body: String) -> (StatusCode, Value) {
    let request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn submitted_text_never_reaches_the_logs_at_info() {
    let capture = Capture::default();
    let writer = capture.clone();
    init_logging_to(LogFormat::Text, "info", move || writer.clone(), false)
        .expect("the only subscriber in this binary");

    let mut config = Config::default();
    config.engine.cache_rows = 0;
    config.limits.max_input_tokens = 32;
    config.server.max_body_bytes = 4096;
    let app = router(config.clone()).await;
    let text = format!("a good film, {MARKER} said, not a bad one");
    let long = format!("{MARKER} {}", "good ".repeat(60));

    let cases: Vec<(&str, String, StatusCode)> = vec![
        (
            "/predict",
            json!({"text": text}).to_string(),
            StatusCode::OK,
        ),
        (
            "/predict",
            json!({"texts": ["good", text]}).to_string(),
            StatusCode::OK,
        ),
        (
            "/explain/lime",
            json!({"text": text, "num_samples": 30, "seed": 1}).to_string(),
            StatusCode::OK,
        ),
        (
            "/explain/occlusion",
            json!({"text": text}).to_string(),
            StatusCode::OK,
        ),
        (
            "/explain/counterfactual",
            json!({"text": text, "edits": [format!("{MARKER} was bad")]}).to_string(),
            StatusCode::OK,
        ),
        // Errors.
        (
            "/predict",
            json!({"text": long}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/explain/lime",
            json!({"text": long, "num_samples": 30}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/explain/counterfactual",
            json!({"text": "good", "edits": [long]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/predict",
            json!({"texts": MARKER}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/predict",
            format!("{{\"text\": \"{MARKER}\""),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/predict",
            json!({"text": MARKER.repeat(300)}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "/predict",
            json!({"text": format!("poison {MARKER}")}).to_string(),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    ];
    for (path, body, want) in &cases {
        let (status, response) = post(&app, path, body.clone()).await;
        assert_eq!(status, *want, "{path} {body}: {response}");
    }
    // The 400 with a wrong-typed value quotes it back to the client (its own text), which is
    // fine; it must not go further.
    let (_, echoed) = post(&app, "/predict", json!({"texts": MARKER}).to_string()).await;
    assert!(
        echoed.to_string().contains(MARKER),
        "the case really carries the marker into an error message: {echoed}"
    );

    // A request past its deadline.
    config.server.request_timeout_ms = 1;
    let slow = router(config).await;
    let (status, _) = post(
        &slow,
        "/explain/lime",
        json!({"text": text, "num_samples": 5000}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);

    let logs = capture.text();
    let finished = logs.matches("request finished").count();
    assert!(
        finished > cases.len(),
        "the capture holds the requests' log lines ({finished}):\n{logs}"
    );
    assert!(
        logs.contains("internal error") && logs.contains("poison token in batch"),
        "the model panic was logged with its details:\n{logs}"
    );
    let lower = logs.to_lowercase();
    assert!(
        !lower.contains(&MARKER.to_lowercase()),
        "submitted text leaked into the logs:\n{logs}"
    );
}
