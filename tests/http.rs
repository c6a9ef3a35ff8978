//! The HTTP API end to end with the toy classifier and the tiny model's real tokenizer: every
//! documented status, the error shape, timing headers, batching of concurrent calls, overload,
//! deadlines, cancellation, panics, operations routes, the OpenAPI contract and shutdown.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use glassbox::api::{self, app, scope::row_of, AppState};
use glassbox::config::Config;
use glassbox::model::toy::{ToyClassifier, ToyOutput};
use glassbox::model::{Classifier, TextEncoder};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use support::{wait_until, TestModel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn encoder() -> TextEncoder {
    TextEncoder::from_file(&fixture("tiny/tiny-bert-cls/tokenizer.json"), 128)
        .expect("the tiny tokenizer loads")
}

/// Token ids of the tiny model's (real BERT uncased) vocabulary.
const GOOD: u32 = 2204;
const BAD: u32 = 2919;
const POISON: u32 = 9947;

fn toy() -> ToyClassifier {
    let weights = HashMap::from([(GOOD, vec![-1.0, 0.0, 1.5]), (BAD, vec![1.5, 0.0, -1.0])]);
    let labels = vec!["negative".into(), "neutral".into(), "positive".into()];
    ToyClassifier::new(labels, weights, vec![0.0, 0.2, 0.0], ToyOutput::Softmax)
}

fn config() -> Config {
    let mut config = Config::default();
    config.engine.cache_rows = 0;
    config.limits.max_input_tokens = 32;
    config.server.max_body_bytes = 4096;
    config
}

struct TestApp {
    state: AppState,
    model: Arc<TestModel>,
    router: Router,
}

impl TestApp {
    /// An app over the toy model, warmed up (unless `warm` is false), its gate left open.
    async fn start(config: Config, warm: bool, per_batch_delay: Duration) -> TestApp {
        config.validate().expect("test configuration is valid");
        let model = TestModel::new(toy(), true, per_batch_delay, POISON);
        let state = AppState::new(config, model.clone(), encoder()).expect("state builds");
        if warm {
            state.warm_up().await.expect("warm-up succeeds");
        }
        TestApp {
            router: app(state.clone()),
            state,
            model,
        }
    }

    async fn ready(config: Config) -> TestApp {
        Self::start(config, true, Duration::ZERO).await
    }

    /// Blocks the model thread with one request, so later requests queue behind it.
    async fn block_model(&self) -> tokio::task::JoinHandle<(StatusCode, HeaderMap, Value)> {
        self.model.gate.close();
        let before = self.model.started();
        let blocker = self.spawn_predict(json!({"text": "the blocker"}));
        let model = self.model.clone();
        wait_until("the blocking request is at the gate", || {
            model.started() == before + 1
        })
        .await;
        blocker
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        send(self.router.clone(), request).await
    }

    async fn predict(&self, body: Value) -> (StatusCode, HeaderMap, Value) {
        self.send(json_request("/predict", &body.to_string())).await
    }

    fn spawn_predict(
        &self,
        body: Value,
    ) -> tokio::task::JoinHandle<(StatusCode, HeaderMap, Value)> {
        let router = self.router.clone();
        tokio::spawn(async move { send(router, json_request("/predict", &body.to_string())).await })
    }

    async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Value) {
        self.send(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }
}

fn json_request(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn send(router: Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = router.oneshot(request).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON body")
    };
    (status, headers, body)
}

/// Asserts the API's one error shape and returns the error's `code`.
fn error_code(body: &Value) -> &str {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a message in {body}"
    );
    assert!(
        error["details"].is_object(),
        "details is an object in {body}"
    );
    error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("an error code in {body}"))
}

/// What the toy model gives `text` alone, label name -> probability.
fn expected_probabilities(text: &str) -> HashMap<String, f32> {
    let encoding = encoder().encode(text, false).unwrap();
    let toy = toy();
    let output = toy.forward(&[row_of(&encoding)]).unwrap().remove(0);
    toy.info()
        .labels
        .iter()
        .cloned()
        .zip(output.probabilities)
        .collect()
}

fn probabilities_of(prediction: &Value) -> HashMap<String, f32> {
    let map = prediction["probabilities"]
        .as_object()
        .expect("a probabilities map");
    map.iter()
        .map(|(label, p)| (label.clone(), p.as_f64().unwrap() as f32))
        .collect()
}

#[tokio::test]
async fn predict_answers_one_text_with_model_usage_and_timing_headers() {
    let app = TestApp::ready(config()).await;
    let (status, headers, body) = app.predict(json!({"text": "a good, good film"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let prediction = &body["prediction"];
    assert_eq!(prediction["label"], "positive");
    assert_eq!(
        probabilities_of(prediction),
        expected_probabilities("a good, good film")
    );
    let ranked = prediction["ranked"].as_array().unwrap();
    assert_eq!(ranked[0]["label"], "positive");
    assert!(ranked
        .windows(2)
        .all(|w| w[0]["probability"].as_f64() >= w[1]["probability"].as_f64()));
    assert_eq!(prediction["truncated"], false);
    assert!(body.get("predictions").is_none());
    assert_eq!(
        body["model"],
        json!({"id": "toy-linear", "sha256": "0".repeat(64), "head": "toy-linear", "version": env!("CARGO_PKG_VERSION")})
    );
    let usage = &body["usage"];
    assert_eq!(usage["model_evaluations"], 1);
    assert_eq!(usage["tokens_evaluated"], prediction["tokens"]);
    assert_eq!(usage["cache_hits"], 0);
    assert!(usage["total_ms"].as_f64().unwrap() >= usage["inference_ms"].as_f64().unwrap());
    for name in [
        "x-request-id",
        "x-queue-time",
        "x-inference-time",
        "x-total-time",
    ] {
        let value = headers.get(name).unwrap_or_else(|| panic!("{name} is set"));
        if name != "x-request-id" {
            assert!(
                value.to_str().unwrap().parse::<f64>().is_ok(),
                "{name} is milliseconds"
            );
        }
    }
}

#[tokio::test]
async fn predict_answers_a_list_in_order_and_runs_duplicates_once() {
    let app = TestApp::ready(config()).await;
    let texts = ["bad", "good", "bad", "nothing much"];
    let (status, _, body) = app.predict(json!({"texts": texts})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let predictions = body["predictions"].as_array().unwrap();
    let labels: Vec<&str> = predictions
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["negative", "positive", "negative", "neutral"]);
    for (text, prediction) in texts.iter().zip(predictions) {
        assert_eq!(probabilities_of(prediction), expected_probabilities(text));
    }
    assert_eq!(
        body["usage"]["model_evaluations"], 3,
        "the repeated text ran once"
    );
    assert!(body.get("prediction").is_none());
}

#[tokio::test]
async fn a_client_request_id_is_echoed_and_one_is_generated_otherwise() {
    let app = TestApp::ready(config()).await;
    let request = Request::get("/health")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = app.send(request).await;
    assert_eq!(headers["x-request-id"], "abc-123");
    let (_, first, _) = app.get("/health").await;
    let (_, second, _) = app.get("/health").await;
    assert_ne!(
        first["x-request-id"], second["x-request-id"],
        "generated ids are unique"
    );
    let (_, headers, _) = app
        .send(
            Request::get("/health")
                .header("x-request-id", "a b")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_ne!(
        headers["x-request-id"], "a b",
        "an id unsafe for logs is replaced"
    );
}

#[tokio::test]
async fn malformed_or_misshapen_json_is_400() {
    let app = TestApp::ready(config()).await;
    for body in [
        "{\"text\": ",
        "not json",
        "{\"text\": 5}",
        "{\"txt\": \"typo\"}",
        "[1, 2]",
    ] {
        let (status, _, response) = app.send(json_request("/predict", body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?} gave {response}");
        assert_eq!(error_code(&response), "invalid_json");
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = TestApp::ready(config()).await;
    let plain = Request::post("/predict")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("hello"))
        .unwrap();
    let missing = Request::post("/predict")
        .body(Body::from("{\"text\": \"hello\"}"))
        .unwrap();
    for request in [plain, missing] {
        let (status, _, body) = app.send(request).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(error_code(&body), "unsupported_media_type");
    }
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let app = TestApp::ready(config()).await;
    let body = json!({"text": "good ".repeat(2000)}).to_string();
    let (status, _, response) = app.send(json_request("/predict", &body)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&response), "payload_too_large");
    assert_eq!(response["error"]["details"]["limit_bytes"], 4096);
}

#[tokio::test]
async fn empty_or_missing_text_is_422_naming_the_field() {
    let app = TestApp::ready(config()).await;
    let cases = [
        (json!({"text": ""}), "text"),
        (json!({"text": "   "}), "text"),
        (json!({"texts": ["fine", ""]}), "texts[1]"),
        (json!({"texts": []}), "texts"),
        (json!({"text": "a", "texts": ["b"]}), "texts"),
        (json!({"truncate": true}), "text"),
    ];
    for (body, field) in cases {
        let (status, _, response) = app.predict(body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(error_code(&response), "validation_error");
        assert_eq!(response["error"]["details"]["field"], field, "{body}");
    }
}

#[tokio::test]
async fn too_long_text_is_422_unless_truncated() {
    let app = TestApp::ready(config()).await;
    let long = "good ".repeat(40);
    let (status, _, body) = app.predict(json!({"text": long})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(&body), "validation_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("42 tokens") && message.contains("maximum of 32"),
        "{message}"
    );

    let (status, _, body) = app.predict(json!({"text": long, "truncate": true})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["prediction"]["truncated"], true);
    assert_eq!(body["prediction"]["tokens"], 32);

    // Over the model's own maximum (128) as well.
    let (status, _, _) = app.predict(json!({"text": "good ".repeat(200)})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let app = TestApp::ready(config()).await;
    let (status, _, body) = app.get("/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");

    let (status, headers, body) = app.get("/predict").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&body), "method_not_allowed");
    assert_eq!(headers[header::ALLOW], "POST");
    let (status, _, body) = app
        .send(
            Request::builder()
                .method(Method::DELETE)
                .uri("/health")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&body), "method_not_allowed");
}

#[tokio::test]
async fn not_ready_until_warm_up() {
    let app = TestApp::start(config(), false, Duration::ZERO).await;
    let (status, _, _) = app.get("/health").await;
    assert_eq!(status, StatusCode::OK, "alive while warming up");
    let (status, _, body) = app.get("/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&body), "not_ready");
    let (status, _, body) = app.predict(json!({"text": "good"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&body), "not_ready");

    app.state.warm_up().await.unwrap();
    let (status, _, body) = app.get("/ready").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ready"})));
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_loses_no_request() {
    let mut config = config();
    config.engine.max_queued_rows = 64;
    config.limits.max_num_samples = 64;
    let app = TestApp::ready(config).await;
    let blocker = app.block_model().await;
    let requests: Vec<_> = (0..20)
        .map(|i| {
            app.spawn_predict(
                json!({"texts": (0..10).map(|j| format!("good {i} {j}")).collect::<Vec<_>>()}),
            )
        })
        .collect();
    // Six requests of ten rows fit in 64; the other fourteen are refused at once.
    let engine = app.state.engine.clone();
    wait_until("every request is admitted or refused", || {
        engine.counters().queued_rows == 60
            && requests.iter().filter(|r| r.is_finished()).count() == 14
    })
    .await;
    app.model.gate.open();
    let (mut ok, mut overloaded) = (0, 0);
    for request in requests {
        let (status, headers, body) = request.await.unwrap();
        match status {
            StatusCode::OK => {
                ok += 1;
                assert_eq!(body["predictions"].as_array().unwrap().len(), 10);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                overloaded += 1;
                assert_eq!(error_code(&body), "overloaded");
                let retry_after: u64 = headers[header::RETRY_AFTER]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry_after >= 1);
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(
        (ok, overloaded),
        (6, 14),
        "every request answered exactly once"
    );
    assert_eq!(blocker.await.unwrap().0, StatusCode::OK);
}

#[tokio::test]
async fn a_request_past_its_deadline_gets_504_and_its_rows_are_dropped() {
    let mut config = config();
    config.server.request_timeout_ms = 150;
    let app = TestApp::ready(config).await;
    let blocker = app.block_model().await;
    let started = Instant::now();
    let (status, _, body) = app
        .predict(json!({"texts": ["good one", "good two", "good three"]}))
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_code(&body), "timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at the deadline, not later"
    );
    assert_eq!(
        app.state.engine.counters().dropped_rows,
        3,
        "its queued rows were dropped"
    );
    assert_eq!(
        blocker.await.unwrap().0,
        StatusCode::GATEWAY_TIMEOUT,
        "the blocked request timed out as well"
    );
    app.model.gate.open();
    let (status, _, _) = app.predict(json!({"text": "good"})).await;
    assert_eq!(status, StatusCode::OK, "the service recovers");
}

#[tokio::test]
async fn a_disconnected_client_frees_its_queued_rows() {
    let app = TestApp::ready(config()).await;
    let blocker = app.block_model().await;
    let gone = app.spawn_predict(json!({"texts": ["a", "b", "c", "d", "e"]}));
    let engine = app.state.engine.clone();
    wait_until("five rows are queued", || {
        engine.counters().queued_rows == 5
    })
    .await;
    gone.abort();
    wait_until("the rows are dropped", || {
        engine.counters().dropped_rows == 5
    })
    .await;
    app.model.gate.open();
    assert_eq!(blocker.await.unwrap().0, StatusCode::OK);
    assert_eq!(engine.counters().queued_rows, 0);
}

#[tokio::test]
async fn a_model_panic_is_a_500_without_details_and_the_service_keeps_serving() {
    let app = TestApp::ready(config()).await;
    let (status, headers, body) = app.predict(json!({"text": "poison"})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_code(&body), "internal");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("panic") && !message.contains("poison"),
        "no internals sent: {message}"
    );
    assert!(
        headers.contains_key("x-request-id"),
        "the id ties the answer to the logged details"
    );
    let (status, _, _) = app.predict(json!({"text": "good"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = app.get("/ready").await;
    assert_eq!(status, StatusCode::OK);
}

/// One request that makes the model panic, batched together with many others: only it fails
/// (500 `internal`), every neighbour gets its own correct answer, and afterwards the service
/// is still ready and answering.
#[tokio::test]
async fn a_panicking_request_among_concurrent_ones_fails_alone() {
    let app = TestApp::ready(config()).await;
    let blocker = app.block_model().await;
    let batches_before = app.model.toy.batches_seen();
    let texts: Vec<String> = (0..12)
        .map(|i| format!("{} neighbour {i}", ["good", "bad"][i % 2]))
        .collect();
    let calls: Vec<_> = texts
        .iter()
        .map(|text| app.spawn_predict(json!({"text": text})))
        .collect();
    let poisoned = app.spawn_predict(json!({"text": "a poison pill"}));
    let engine = app.state.engine.clone();
    wait_until("all 13 calls are queued", || {
        engine.counters().queued_rows == 13
    })
    .await;
    app.model.gate.open();
    assert_eq!(blocker.await.unwrap().0, StatusCode::OK);

    let (status, _, body) = poisoned.await.unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(error_code(&body), "internal");
    for (text, call) in texts.iter().zip(calls) {
        let (status, _, body) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{text}: {body}");
        let got = probabilities_of(&body["prediction"]);
        for (label, p) in expected_probabilities(text) {
            assert!(
                (got[&label] - p).abs() < 1e-6,
                "{text}: its own answer despite sharing a batch with the panic"
            );
        }
    }
    assert!(
        app.model.toy.batches_seen() > batches_before,
        "the neighbours really ran"
    );

    let (status, _, _) = app.get("/ready").await;
    assert_eq!(status, StatusCode::OK, "still ready after the panic");
    let (status, _, body) = app
        .predict(json!({"texts": ["good after", "bad after"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn thirty_two_concurrent_calls_share_batches_and_match_their_lone_answers() {
    let app = TestApp::ready(config()).await;
    let blocker = app.block_model().await;
    let batches_before = app.model.toy.batches_seen();
    let texts: Vec<String> = (0..32)
        .map(|i| format!("{} review number {i}", ["good", "bad"][i % 2]))
        .collect();
    let calls: Vec<_> = texts
        .iter()
        .map(|text| app.spawn_predict(json!({"text": text})))
        .collect();
    let engine = app.state.engine.clone();
    wait_until("all 32 calls are queued", || {
        engine.counters().queued_rows == 32
    })
    .await;
    app.model.gate.open();
    let mut together = Vec::new();
    for call in calls {
        let (status, _, body) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        together.push(body["prediction"].clone());
    }
    blocker.await.unwrap();
    let batches = app.model.toy.batches_seen() - batches_before;
    assert_eq!(
        batches, 2,
        "the blocker's batch, then one batch for all 32 calls"
    );

    let (_, metrics) = app.get_text("/metrics").await;
    assert!(
        metrics.contains("glassbox_batches_total"),
        "batches are visible in metrics"
    );
    assert!(
        metrics.contains("glassbox_batch_rows_bucket"),
        "batch sizes are visible in metrics"
    );

    for (text, batched) in texts.iter().zip(&together) {
        let (_, _, alone) = app.predict(json!({"text": text})).await;
        assert_eq!(
            &alone["prediction"], batched,
            "{text}: batched answer equals the lone answer"
        );
    }
}

#[tokio::test]
async fn info_reports_the_model_and_effective_limits() {
    let app = TestApp::ready(config()).await;
    let (status, _, body) = app.get("/info").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["model"]["labels"],
        json!(["negative", "neutral", "positive"])
    );
    assert_eq!(body["model"]["architecture"], "toy");
    assert_eq!(body["model"]["problem_type"], "single_label");
    assert_eq!(body["limits"]["max_input_tokens"], 32);
    assert_eq!(body["limits"]["max_body_bytes"], 4096);
    assert_eq!(body["limits"]["max_queued_rows"], 50_000);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["build"]["features"].is_array());
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = TestApp::ready(config()).await;
    app.predict(json!({"text": "good"})).await;
    app.predict(json!({"text": ""})).await;
    app.get("/no/such/route").await;
    let (status, metrics) = app.get_text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for expected in [
        "glassbox_http_requests_total{route=\"/predict\",status=\"200\"}",
        "glassbox_http_requests_total{route=\"/predict\",status=\"422\"}",
        "glassbox_http_requests_total{route=\"unmatched\",status=\"404\"}",
        "glassbox_http_request_duration_seconds_bucket{route=\"/predict\",status=\"200\"",
        "glassbox_inference_seconds_bucket",
        "glassbox_batch_tokens_bucket",
        "glassbox_queue_rows",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn docs_and_the_openapi_document_are_served() {
    let app = TestApp::ready(config()).await;
    let (status, body) = app.get_text("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, api::openapi::document_json());
    let (status, page) = app.get_text("/docs/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("swagger-ui"), "the vendored Swagger UI page");
    let (status, config) = app.get_text("/docs/swagger-initializer.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        config.contains("/openapi.json"),
        "the page reads our document: {config}"
    );
    let (status, script) = app.get_text("/docs/swagger-ui-bundle.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        script.len() > 10_000,
        "the UI is served from the binary, no CDN"
    );
}

#[test]
fn the_committed_openapi_document_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == api::openapi::document_json(),
        "openapi/openapi.json is stale: regenerate it with `make openapi` (cargo run -- openapi > openapi/openapi.json)"
    );
}

#[tokio::test]
async fn documented_predict_statuses_are_the_real_ones() {
    let document = serde_json::to_value(api::openapi::document()).unwrap();
    let responses = document["paths"]["/predict"]["post"]["responses"]
        .as_object()
        .unwrap();
    let documented: BTreeSet<u16> = responses.keys().map(|k| k.parse().unwrap()).collect();

    let mut seen = BTreeSet::new();
    let app = TestApp::ready(config()).await;
    let big = json!({"text": "x".repeat(5000)}).to_string();
    let requests = [
        json_request("/predict", "{\"text\": \"good\"}"),
        json_request("/predict", "{"),
        json_request("/predict", &big),
        Request::post("/predict").body(Body::from("{}")).unwrap(),
        json_request("/predict", "{\"text\": \"\"}"),
        json_request("/predict", "{\"text\": \"poison\"}"),
    ];
    for request in requests {
        seen.insert(app.send(request).await.0.as_u16());
    }
    let cold = TestApp::start(config(), false, Duration::ZERO).await;
    seen.insert(cold.predict(json!({"text": "good"})).await.0.as_u16());
    let mut slow = config();
    slow.server.request_timeout_ms = 50;
    let slow = TestApp::ready(slow).await;
    let blocker = slow.block_model().await;
    seen.insert(slow.predict(json!({"text": "good"})).await.0.as_u16());
    slow.model.gate.open();
    blocker.await.unwrap();

    assert_eq!(
        documented, seen,
        "documented statuses of POST /predict versus statuses it really returns"
    );
}

/// A bare HTTP/1.1 client: enough to talk to a real listener without another dependency.
async fn raw_post(address: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_then_stops() {
    let app = TestApp::start(config(), true, Duration::from_millis(300)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(
        listener,
        app.router.clone(),
        async move { stopped.await.unwrap_or(()) },
        Duration::from_secs(5),
    ));

    let before = app.model.started();
    let in_flight =
        tokio::spawn(async move { raw_post(address, "/predict", "{\"text\": \"good\"}").await });
    let model = app.model.clone();
    wait_until("the request reached the model", || {
        model.started() == before + 1
    })
    .await;
    stop.send(()).unwrap();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the in-flight request finished: {body}");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stopped")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn shutdown_gives_up_on_stuck_requests_after_the_grace_period() {
    let app = TestApp::ready(config()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(
        listener,
        app.router.clone(),
        async move { stopped.await.unwrap_or(()) },
        Duration::from_millis(100),
    ));
    app.model.gate.close();
    let before = app.model.started();
    let _stuck =
        tokio::spawn(async move { raw_post(address, "/predict", "{\"text\": \"good\"}").await });
    let model = app.model.clone();
    wait_until("the request is stuck at the model", || {
        model.started() == before + 1
    })
    .await;
    let asked = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stopped")
        .unwrap()
        .unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "stopped after the grace period, not when the request ended"
    );
    app.model.gate.open();
}
