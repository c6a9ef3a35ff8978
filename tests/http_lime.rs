//! `POST /explain/lime` over HTTP.
//!
//! With the real default model (`models/all-MiniLM-L6-v2`): the documented shape,
//! reproducibility (same seed, same weights with the row cache on and off and while other
//! requests run; a drawn seed is echoed and reproduces), usage and cache hits, `top_labels`,
//! and every validation error. With the toy model and the tiny tokenizer (fast, and able to
//! fail on demand): every documented status is a real one, bad requests cost no model work,
//! and a client that goes away drops its queued rows.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use glassbox::api::{self, app, AppState};
use glassbox::config::Config;
use glassbox::model::config::ZeroShotConfig;
use glassbox::model::loader::{load_model, LoadOptions};
use glassbox::model::toy::{ToyClassifier, ToyOutput};
use glassbox::model::{
    Classifier, LoadedModel, ModelError, ModelInfo, Row, RowOutput, TextEncoder,
};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use support::{wait_until, Gate, TestModel};
use tower::ServiceExt;

const TEXT: &str = "The plot was thin but the acting was wonderful.";
/// Samples per request: enough for a stable fit, few enough for a debug build.
const SAMPLES: usize = 200;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn minilm() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = root().join("models/all-MiniLM-L6-v2");
        load_model(
            dir.to_str().unwrap(),
            &ZeroShotConfig::default(),
            &LoadOptions::default(),
        )
        .expect("the default model loads (run `make model`)")
    })
}

/// An app over the real model (one copy of the weights shared by every app of this binary),
/// warmed up. `cache_rows = 0` switches the row cache off.
async fn minilm_app(cache_rows: usize) -> TestApp {
    let mut config = Config::default();
    config.engine.cache_rows = cache_rows;
    minilm_app_with(config).await
}

async fn minilm_app_with(config: Config) -> TestApp {
    config.validate().expect("test configuration is valid");
    let m = minilm();
    let state = AppState::new(config, m.classifier.clone(), m.encoder.clone()).expect("state");
    state.warm_up().await.expect("warm-up succeeds");
    TestApp {
        router: app(state.clone()),
        state,
        model: None,
    }
}

struct TestApp {
    state: AppState,
    router: Router,
    /// The toy model, for tests that gate or poison it.
    model: Option<Arc<TestModel>>,
}

impl TestApp {
    async fn send(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        send(self.router.clone(), request).await
    }

    async fn lime(&self, body: Value) -> (StatusCode, HeaderMap, Value) {
        self.send(json_request("/explain/lime", &body.to_string()))
            .await
    }

    /// A 200 explanation, or a panic with the body.
    async fn lime_ok(&self, body: Value) -> Value {
        let (status, _, response) = self.lime(body).await;
        assert_eq!(status, StatusCode::OK, "{response}");
        response
    }

    fn spawn_lime(&self, body: Value) -> tokio::task::JoinHandle<(StatusCode, HeaderMap, Value)> {
        let router = self.router.clone();
        tokio::spawn(
            async move { send(router, json_request("/explain/lime", &body.to_string())).await },
        )
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

/// Asserts the API's one error shape and returns `(code, details.field)`.
fn error_of(body: &Value) -> (String, Option<String>) {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a message in {body}"
    );
    assert!(
        error["details"].is_object(),
        "details is an object in {body}"
    );
    let code = error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("an error code in {body}"));
    let field = error["details"]["field"].as_str().map(str::to_string);
    (code.to_string(), field)
}

fn f64_of(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("a number, got {v}"))
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().unwrap_or_else(|| panic!("an integer, got {v}")) as usize
}

/// Per label: feature index -> weight, with intercept, score and local_pred.
fn fits(body: &Value) -> Vec<(HashMap<usize, f64>, [f64; 3])> {
    body["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|label| {
            let weights = label["weights"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| (usize_of(&w["feature"]), f64_of(&w["weight"])))
                .collect();
            let rest = [
                f64_of(&label["intercept"]),
                f64_of(&label["score"]),
                f64_of(&label["local_pred"]),
            ];
            (weights, rest)
        })
        .collect()
}

/// The two explanations agree: same labels, same features, every number within 1e-6.
#[track_caller]
fn assert_same_fit(what: &str, a: &Value, b: &Value) {
    let (fa, fb) = (fits(a), fits(b));
    assert_eq!(fa.len(), fb.len(), "{what}: number of labels");
    for (k, ((wa, ra), (wb, rb))) in fa.iter().zip(&fb).enumerate() {
        let keys_a: BTreeSet<_> = wa.keys().collect();
        let keys_b: BTreeSet<_> = wb.keys().collect();
        assert_eq!(keys_a, keys_b, "{what}: label {k} keeps the same features");
        for (f, x) in wa {
            let y = wb[f];
            assert!(
                (x - y).abs() <= 1e-6,
                "{what}: label {k} feature {f}: {x} vs {y}"
            );
        }
        for (x, y) in ra.iter().zip(rb) {
            assert!(
                (x - y).abs() <= 1e-6,
                "{what}: label {k} intercept/score/local_pred {x} vs {y}"
            );
        }
    }
    assert_eq!(a["distinct_rows"], b["distinct_rows"], "{what}");
    assert_eq!(a["params"], b["params"], "{what}");
}

// ---------------------------------------------------------------------------------------------
// The real default model.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn lime_answers_with_the_documented_shape() {
    let app = minilm_app(0).await;
    let (status, headers, body) = app
        .lime(json!({"text": TEXT, "num_samples": SAMPLES, "seed": 7}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for name in [
        "x-request-id",
        "x-queue-time",
        "x-inference-time",
        "x-total-time",
    ] {
        assert!(headers.contains_key(name), "{name} in {headers:?}");
    }

    // The common blocks.
    assert_eq!(body["model"]["id"], "all-MiniLM-L6-v2");
    assert_eq!(body["model"]["head"], "zero-shot:sentiment");
    let prediction = &body["prediction"];
    let predicted = prediction["label"].as_str().unwrap();
    let labels = &app.state.model.labels;
    let predicted_index = labels.iter().position(|l| l == predicted).unwrap();
    assert_eq!(body["targets"], json!([predicted_index]), "default target");
    let tokens = body["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), usize_of(&prediction["tokens"]));
    assert_eq!(tokens[0]["text"], "[CLS]");
    assert_eq!(tokens[0]["special"], true);

    // The features: lime's words, each with its spans and tokens.
    let features = body["features"].as_array().unwrap();
    let words: Vec<&str> = features
        .iter()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        words,
        [
            "The",
            "plot",
            "was",
            "thin",
            "but",
            "the",
            "acting",
            "wonderful"
        ],
        "distinct words (bow), case-sensitive, in order of first appearance"
    );
    let was = &features[2];
    assert_eq!(was["spans"].as_array().unwrap().len(), 2, "both `was`");
    for f in features {
        for span in f["spans"].as_array().unwrap() {
            let (start, end) = (usize_of(&span["start"]), usize_of(&span["end"]));
            assert_eq!(&TEXT[start..end], f["text"].as_str().unwrap());
            assert_eq!(span["utf16_start"], span["start"], "ASCII text");
        }
        for t in f["tokens"].as_array().unwrap() {
            assert_eq!(tokens[usize_of(t)]["special"], false);
        }
    }

    // The explanation.
    let params = &body["params"];
    assert_eq!(
        *params,
        json!({"num_samples": SAMPLES, "num_features": 8, "kernel_width": 25.0,
               "feature_selection": "highest_weights", "bow": true, "mask": "remove",
               "features": "words", "seed": 7, "confidence_intervals": false}),
        "every parameter as used: 10 features capped at the 8 words, auto -> highest_weights"
    );
    let distinct = usize_of(&body["distinct_rows"]);
    assert!(
        (2..=SAMPLES).contains(&distinct),
        "distinct rows {distinct}"
    );
    let explained = body["labels"].as_array().unwrap();
    assert_eq!(explained.len(), 1);
    let label = &explained[0];
    assert_eq!(usize_of(&label["label"]), predicted_index);
    let p = f64_of(&label["probability"]);
    let reported = f64_of(&prediction["probabilities"][predicted]);
    assert!((p - reported).abs() < 1e-6, "{p} vs {reported}");
    let weights = label["weights"].as_array().unwrap();
    assert_eq!(weights.len(), 8);
    for pair in weights.windows(2) {
        assert!(
            f64_of(&pair[0]["weight"]).abs() >= f64_of(&pair[1]["weight"]).abs(),
            "sorted by |weight|: {pair:?}"
        );
    }
    for w in weights {
        let f = &features[usize_of(&w["feature"])];
        assert_eq!(w["text"], f["text"]);
        assert_eq!(w["spans"], f["spans"]);
        assert_eq!(w["tokens"], f["tokens"]);
        assert!(w.get("ci_low").is_none(), "no intervals unless asked");
    }
    let top: Vec<&str> = weights[..2]
        .iter()
        .map(|w| w["text"].as_str().unwrap())
        .collect();
    assert!(
        top.contains(&"wonderful"),
        "`wonderful` drives a positive prediction: {top:?} of {body}"
    );
    for key in ["intercept", "score", "local_pred"] {
        assert!(f64_of(&label[key]).is_finite(), "{key}");
    }
    assert!(f64_of(&label["score"]) <= 1.0);

    // What it cost: the original, then each distinct perturbation once (the cache is off).
    let usage = &body["usage"];
    assert_eq!(usize_of(&usage["cache_hits"]), 0);
    assert_eq!(usize_of(&usage["model_evaluations"]), distinct + 1);
    assert!(usize_of(&usage["tokens_evaluated"]) > distinct);
    assert!(f64_of(&usage["total_ms"]) >= f64_of(&usage["inference_ms"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_seed_same_weights_with_cache_on_off_and_under_concurrent_load() {
    let request = json!({"text": TEXT, "num_samples": SAMPLES, "seed": 11,
                         "num_features": "all", "top_labels": 2});
    let cold = minilm_app(0).await;
    let reference = cold.lime_ok(request.clone()).await;

    let cached = minilm_app(10_000).await;
    let first = cached.lime_ok(request.clone()).await;
    assert_same_fit("cache on vs off", &reference, &first);
    let second = cached.lime_ok(request.clone()).await;
    assert_same_fit("answered from the cache", &reference, &second);
    assert_eq!(usize_of(&second["usage"]["model_evaluations"]), 0);

    // The same request while other explanations and predictions share the batches (and pad
    // the rows to other lengths).
    for app in [&cold, &cached] {
        let others = [
            json!({"text": "I returned it immediately, what a waste of money.", "num_samples": 150, "seed": 1}),
            json!({"text": "An average movie with some good moments and some dull ones in between them.",
                   "num_samples": 150, "seed": 2, "num_features": 3}),
            json!({"text": TEXT, "num_samples": 150, "seed": 12}),
        ];
        let mut handles: Vec<_> = others.into_iter().map(|o| app.spawn_lime(o)).collect();
        handles.push(app.spawn_lime(request.clone()));
        let router = app.router.clone();
        let predict = tokio::spawn(async move {
            send(
                router,
                json_request(
                    "/predict",
                    r#"{"texts": ["Terrible.", "Great fun, loved it."]}"#,
                ),
            )
            .await
        });
        let mut results = Vec::new();
        for h in handles {
            let (status, _, body) = h.await.unwrap();
            assert_eq!(status, StatusCode::OK, "{body}");
            results.push(body);
        }
        assert_eq!(predict.await.unwrap().0, StatusCode::OK);
        assert_same_fit("under concurrent load", &reference, results.last().unwrap());
    }
}

#[tokio::test]
async fn a_drawn_seed_is_echoed_and_reproduces_the_explanation() {
    let app = minilm_app(0).await;
    let drawn = app
        .lime_ok(json!({"text": TEXT, "num_samples": SAMPLES}))
        .await;
    let seed = drawn["params"]["seed"]
        .as_u64()
        .unwrap_or_else(|| panic!("a drawn seed in {drawn}"));
    assert!(seed < 1 << 53, "survives a JavaScript number: {seed}");
    let again = app
        .lime_ok(json!({"text": TEXT, "num_samples": SAMPLES, "seed": seed}))
        .await;
    assert_same_fit("replayed with the echoed seed", &drawn, &again);
    // Sending back the echoed parameters reproduces it as well.
    let mut echoed = drawn["params"].clone();
    echoed["text"] = json!(TEXT);
    let replay = app.lime_ok(echoed).await;
    assert_same_fit("replayed with every echoed parameter", &drawn, &replay);
}

#[tokio::test]
async fn usage_counts_model_evaluations_and_cache_hits() {
    let app = minilm_app(10_000).await;
    let request = json!({"text": TEXT, "num_samples": SAMPLES, "seed": 3});
    let first = app.lime_ok(request.clone()).await;
    let distinct = usize_of(&first["distinct_rows"]);
    let usage = &first["usage"];
    // The original was run by the first step; LIME's row 0 is that same input.
    assert_eq!(usize_of(&usage["model_evaluations"]), distinct);
    assert_eq!(usize_of(&usage["cache_hits"]), 1);
    assert!(usize_of(&usage["tokens_evaluated"]) > 0);

    let second = app.lime_ok(request).await;
    let usage = &second["usage"];
    assert_eq!(usize_of(&usage["model_evaluations"]), 0, "{usage}");
    assert_eq!(usize_of(&usage["cache_hits"]), distinct + 1, "{usage}");
    assert_eq!(usize_of(&usage["tokens_evaluated"]), 0);
    assert_same_fit("second, cached", &first, &second);
}

#[tokio::test]
async fn top_labels_explains_the_most_probable_labels_in_order() {
    let app = minilm_app(0).await;
    let body = app
        .lime_ok(json!({"text": TEXT, "num_samples": SAMPLES, "seed": 5,
                        "top_labels": 2, "num_features": "all"}))
        .await;
    let labels = body["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 2);
    let targets: Vec<usize> = body["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(usize_of)
        .collect();
    assert_eq!(
        targets,
        labels
            .iter()
            .map(|l| usize_of(&l["label"]))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        targets.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([0, 1])
    );
    assert!(f64_of(&labels[0]["probability"]) >= f64_of(&labels[1]["probability"]));
    // Two labels of a softmax sum to one, and the ridge fit is linear in its targets: the
    // second label's weights are the first's negated, its intercept one minus the first's.
    let fit = fits(&body);
    let ((w0, r0), (w1, r1)) = (&fit[0], &fit[1]);
    assert_eq!(w0.len(), 8);
    for (f, x) in w0 {
        assert!((x + w1[f]).abs() < 1e-5, "feature {f}: {x} vs {}", w1[f]);
    }
    assert!(
        (r0[0] + r1[0] - 1.0).abs() < 1e-5,
        "intercepts {r0:?} {r1:?}"
    );
}

#[tokio::test]
async fn lime_options_are_applied_and_echoed() {
    let app = minilm_app(0).await;
    let body = app
        .lime_ok(
            json!({"text": "good good bad", "num_samples": 60, "seed": 1,
                        "bow": false, "mask": "mask_token", "num_features": 2,
                        "feature_selection": "forward_selection", "kernel_width": 10,
                        "confidence_intervals": true}),
        )
        .await;
    let features = body["features"].as_array().unwrap();
    assert_eq!(features.len(), 3, "one feature per occurrence without bow");
    let params = &body["params"];
    assert_eq!(params["bow"], false);
    assert_eq!(params["mask"], "mask_token");
    assert_eq!(params["kernel_width"], 10.0);
    assert_eq!(params["feature_selection"], "forward_selection");
    let weights = body["labels"][0]["weights"].as_array().unwrap();
    assert_eq!(weights.len(), 2);
    for w in weights {
        let (low, high) = (f64_of(&w["ci_low"]), f64_of(&w["ci_high"]));
        let weight = f64_of(&w["weight"]);
        assert!(low <= weight && weight <= high, "{w}");
    }

    let tokens = app
        .lime_ok(json!({"text": "!!!", "features": "tokens", "num_samples": 20, "seed": 1}))
        .await;
    assert_eq!(tokens["params"]["features"], "tokens");
    assert!(!tokens["features"].as_array().unwrap().is_empty());

    let adaptive = app
        .lime_ok(json!({"text": "good bad", "num_samples": "auto", "seed": 1}))
        .await;
    let used = &adaptive["params"];
    assert!(used["num_samples"].as_u64().unwrap() >= 250, "{used}");
    assert!(used["adaptive"]["rounds"].as_u64().unwrap() >= 1, "{used}");
}

#[tokio::test]
async fn bad_lime_requests_are_refused_naming_the_field() {
    let mut config = Config::default();
    config.limits.max_num_samples = 300;
    let app = minilm_app_with(config).await;
    let cases = [
        (
            json!({"text": TEXT, "num_samples": 301}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("num_samples"),
        ),
        (
            json!({"text": TEXT, "num_samples": 50_000}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("num_samples"),
        ),
        (
            json!({"text": TEXT, "target": "happy", "num_samples": 20}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("target"),
        ),
        (
            json!({"text": TEXT, "target": 7, "num_samples": 20}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("target"),
        ),
        (
            json!({"text": TEXT, "feature_selection": "lasso_path", "num_samples": 20}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("feature_selection"),
        ),
        (
            json!({"text": TEXT, "mask": "blur", "num_samples": 20}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("mask"),
        ),
        (
            json!({"text": "!!!", "num_samples": 20}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("text"),
        ),
        (
            json!({"text": "", "num_samples": 20}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("text"),
        ),
        (
            json!({"text": TEXT, "num_features": 0, "num_samples": 20}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("num_features"),
        ),
        (
            json!({"text": TEXT, "kernel_width": -1, "num_samples": 20}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("kernel_width"),
        ),
        (
            json!({"text": TEXT, "tolerance": 0.1, "num_samples": 20}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("tolerance"),
        ),
        (
            json!({"text": TEXT, "target": 0, "top_labels": 1, "num_samples": 20}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("top_labels"),
        ),
        (
            json!({"text": TEXT, "kernel_width": "wide"}),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            json!({"text": TEXT, "num_samples": "many"}),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (json!({"text": 5}), StatusCode::BAD_REQUEST, None),
        (json!({"num_samples": 20}), StatusCode::BAD_REQUEST, None),
        (json!([TEXT]), StatusCode::BAD_REQUEST, None),
        (
            json!({"text": TEXT, "num_sample": 20}),
            StatusCode::BAD_REQUEST,
            None,
        ),
    ];
    for (request, status, field) in cases {
        let (got, _, body) = app.lime(request.clone()).await;
        assert_eq!(got, status, "{request} -> {body}");
        let (code, got_field) = error_of(&body);
        let want_code = if status == StatusCode::BAD_REQUEST {
            "invalid_json"
        } else {
            "validation_error"
        };
        assert_eq!(code, want_code, "{request} -> {body}");
        if let Some(field) = field {
            assert_eq!(got_field.as_deref(), Some(field), "{request} -> {body}");
        }
    }
    let (_, _, body) = app
        .lime(json!({"text": TEXT, "kernel_width": "wide"}))
        .await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("kernel_width"),
        "names the field: {message}"
    );
    let (_, _, body) = app.lime(json!({"text": TEXT, "num_sample": 20})).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("num_sample"), "names the field: {message}");
}

// ---------------------------------------------------------------------------------------------
// The toy model: statuses on demand.
// ---------------------------------------------------------------------------------------------

fn fixture(path: &str) -> PathBuf {
    root().join("tests/fixtures").join(path)
}

fn tiny_encoder() -> TextEncoder {
    TextEncoder::from_file(&fixture("tiny/tiny-bert-cls/tokenizer.json"), 128)
        .expect("the tiny tokenizer loads")
}

/// Token ids of the tiny model's (real BERT uncased) vocabulary.
const GOOD: u32 = 2204;
const BAD: u32 = 2919;
const POISON: u32 = 9947;

fn toy() -> ToyClassifier {
    let weights = HashMap::from([(GOOD, vec![-1.0, 1.5]), (BAD, vec![1.5, -1.0])]);
    let labels = vec!["negative".into(), "positive".into()];
    ToyClassifier::new(labels, weights, vec![0.0, 0.0], ToyOutput::Softmax)
}

fn toy_config() -> Config {
    let mut config = Config::default();
    config.engine.cache_rows = 0;
    config.limits.max_input_tokens = 64;
    config.server.max_body_bytes = 4096;
    config
}

async fn toy_app(config: Config, warm: bool, per_batch_delay: Duration) -> TestApp {
    config.validate().expect("test configuration is valid");
    let model = TestModel::new(toy(), true, per_batch_delay, POISON);
    let state = AppState::new(config, model.clone(), tiny_encoder()).expect("state builds");
    if warm {
        state.warm_up().await.expect("warm-up succeeds");
    }
    TestApp {
        router: app(state.clone()),
        state,
        model: Some(model),
    }
}

/// The toy model, except that batches of more than one row (LIME's neighbourhood, never the
/// single original text) wait at a gate: the request is then past its first step and its
/// perturbations are stuck in the engine, deterministically.
struct HoldsNeighbourhoods {
    toy: ToyClassifier,
    gate: Gate,
}

impl Classifier for HoldsNeighbourhoods {
    fn info(&self) -> &ModelInfo {
        self.toy.info()
    }
    fn forward(&self, rows: &[Row]) -> Result<Vec<RowOutput>, ModelError> {
        if rows.len() > 1 {
            self.gate.wait();
        }
        self.toy.forward(rows)
    }
}

#[tokio::test]
async fn documented_lime_statuses_are_the_real_ones() {
    let document = serde_json::to_value(api::openapi::document()).unwrap();
    let operation = &document["paths"]["/explain/lime"]["post"];
    let responses = operation["responses"].as_object().unwrap();
    let documented: BTreeSet<u16> = responses.keys().map(|k| k.parse().unwrap()).collect();
    for (status, response) in responses {
        assert!(
            response["content"]["application/json"]["example"].is_object(),
            "status {status} has an example"
        );
    }
    let examples = operation["requestBody"]["content"]["application/json"]["examples"]
        .as_object()
        .expect("request examples");
    assert!(examples.len() >= 2);

    let mut seen = BTreeSet::new();
    let app = toy_app(toy_config(), true, Duration::ZERO).await;
    let big = json!({"text": "good ".repeat(1000)}).to_string();
    let requests = [
        json_request(
            "/explain/lime",
            r#"{"text": "a good film", "num_samples": 30}"#,
        ),
        json_request("/explain/lime", "{"),
        json_request("/explain/lime", &big),
        Request::post("/explain/lime")
            .body(Body::from(r#"{"text": "good"}"#))
            .unwrap(),
        json_request("/explain/lime", r#"{"text": "good", "num_samples": 1}"#),
        json_request(
            "/explain/lime",
            r#"{"text": "good poison", "num_samples": 30}"#,
        ),
    ];
    for request in requests {
        seen.insert(app.send(request).await.0.as_u16());
    }
    let cold = toy_app(toy_config(), false, Duration::ZERO).await;
    seen.insert(cold.lime(json!({"text": "good"})).await.0.as_u16());
    // A deadline that passes while LIME's rows wait for the model: 504 from inside LIME.
    let mut slow = toy_config();
    slow.server.request_timeout_ms = 300;
    let held = Arc::new(HoldsNeighbourhoods {
        toy: toy(),
        gate: Gate::default(),
    });
    let state = AppState::new(slow, held.clone(), tiny_encoder()).expect("state builds");
    state.warm_up().await.expect("warm-up succeeds");
    let (status, _, body) = send(
        api::app(state),
        json_request(
            "/explain/lime",
            r#"{"text": "one two three four five six", "num_samples": 50}"#,
        ),
    )
    .await;
    held.gate.open();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(error_of(&body).0, "timeout");
    seen.insert(status.as_u16());

    assert_eq!(
        documented, seen,
        "documented statuses of POST /explain/lime versus statuses it really returns"
    );
}

#[tokio::test]
async fn refused_requests_cost_no_model_work() {
    let app = toy_app(toy_config(), true, Duration::ZERO).await;
    let before = app.state.engine.counters().rows_evaluated;
    for request in [
        json!({"text": "good", "num_samples": 50_000}),
        json!({"text": "good", "feature_selection": "lasso_path"}),
        json!({"text": "!!!"}),
        json!({"text": "good", "kernel_width": 0}),
    ] {
        let (status, _, body) = app.lime(request).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    assert_eq!(app.state.engine.counters().rows_evaluated, before);
    // Parameters are checked before readiness: a cold server still says what is wrong.
    let cold = toy_app(toy_config(), false, Duration::ZERO).await;
    let (status, _, body) = cold
        .lime(json!({"text": "good", "num_samples": 50_000}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test]
async fn a_client_that_goes_away_drops_its_queued_rows() {
    let mut config = toy_config();
    config.engine.max_batch_rows = 4;
    let app = toy_app(config, true, Duration::from_millis(20)).await;
    let request = app.spawn_lime(json!({
        "text": "one two three four five six seven eight nine ten eleven twelve good bad",
        "num_samples": 400, "seed": 1
    }));
    let state = app.state.clone();
    wait_until("LIME's rows are queued", || {
        state.engine.counters().queued_rows > 20
    })
    .await;
    request.abort();
    let state = app.state.clone();
    wait_until("the queued rows are dropped", || {
        let c = state.engine.counters();
        c.queued_rows == 0 && c.dropped_rows > 0
    })
    .await;
    let evaluated = app.state.engine.counters().rows_evaluated;
    assert!(evaluated < 300, "most rows never ran: {evaluated}");
    assert!(app.model.is_some());
}
