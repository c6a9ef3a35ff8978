//! `POST /explain/occlusion`, `/explain/counterfactual` and `/explain/shap` over HTTP, with the
//! linear toy classifier (known answers) and the tiny model's real BERT tokenizer: the
//! documented 200 shapes, reproducibility, and the documented 400s and 422s naming the field,
//! refused before any model work where the request alone shows the error.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use glassbox::api::{app, AppState};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

mod support;
use support::additive::{additive, coef, config, encoder, TEXT};

struct TestApp {
    state: AppState,
    router: Router,
}

impl TestApp {
    async fn new() -> TestApp {
        let config = config();
        config.validate().expect("test configuration is valid");
        let state = AppState::new(config, Arc::new(additive()), encoder()).expect("state builds");
        state.warm_up().await.expect("warm-up succeeds");
        TestApp {
            router: app(state.clone()),
            state,
        }
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).expect("a JSON body");
        (status, headers, body)
    }

    async fn ok(&self, path: &str, body: Value) -> Value {
        let (status, headers, response) = self.post(path, body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {response}");
        assert!(headers.contains_key("x-request-id"));
        assert!(headers.contains_key("x-inference-time"));
        response
    }

    fn rows_evaluated(&self) -> u64 {
        self.state.engine.counters().rows_evaluated
    }
}

fn f64_of(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("a number, got {v}"))
}

#[track_caller]
fn close(what: &str, got: f64, want: f64) {
    assert!((got - want).abs() <= 1e-5, "{what}: got {got}, want {want}");
}

/// The blocks every explanation response has.
#[track_caller]
fn assert_common(body: &Value) {
    for key in [
        "model",
        "prediction",
        "targets",
        "tokens",
        "usage",
        "features",
        "params",
        "distinct_rows",
    ] {
        assert!(body.get(key).is_some(), "{key} in {body}");
    }
    assert_eq!(body["model"]["id"], "toy-linear");
    assert!(body["usage"]["model_evaluations"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn occlusion_answers_the_coefficients() {
    let app = TestApp::new().await;
    // negative = 0.1 + 0.5 - 0.05 - 0.9 = -0.35 < positive 0.65: predicted positive.
    let body = app
        .ok(
            "/explain/occlusion",
            json!({"text": TEXT, "target": "negative"}),
        )
        .await;
    assert_common(&body);
    assert_eq!(body["targets"], json!([0]));
    assert_eq!(body["prediction"]["label"], "positive");
    let features = body["features"].as_array().unwrap();
    let occlusions = body["occlusions"].as_array().unwrap();
    assert_eq!(occlusions.len(), features.len());
    for (o, f) in occlusions.iter().zip(features) {
        let word = f["text"].as_str().unwrap();
        let n = f["spans"].as_array().unwrap().len() as f64;
        close(word, f64_of(&o["deltas"][0]), coef(word) * n);
        assert_eq!(o["removed"], word);
        assert!(o["text"].as_str().is_some());
        assert_eq!(o["probabilities"].as_array().unwrap().len(), 2);
    }
    // Removing "wonderful" makes negative (0.55) beat positive (-0.25): a flip.
    let w = occlusions
        .iter()
        .find(|o| o["removed"] == "wonderful")
        .unwrap();
    assert_eq!(w["flipped"], true);
    assert_eq!(w["label"], 0);
    assert_eq!(w["text"], "The plot was thin but the acting was ");
    assert_eq!(body["flips"], 1);
    assert_eq!(body["params"]["mode"], "leave_one_out");

    // Windows of three occurrences.
    let body = app
        .ok(
            "/explain/occlusion",
            json!({"text": TEXT, "target": 0, "window": 3, "stride": 2, "mask": "mask_token"}),
        )
        .await;
    assert_eq!(body["params"]["mode"], "windows");
    assert_eq!(body["params"]["bow"], false);
    assert_eq!(body["features"].as_array().unwrap().len(), 9);
    let windows = body["occlusions"].as_array().unwrap();
    assert_eq!(windows.len(), 4);
    assert_eq!(windows[0]["removed"], "The plot was");
    assert_eq!(windows[3]["removed"], "acting was wonderful");
    close("window", f64_of(&windows[1]["deltas"][0]), 0.5);
    assert!(windows[0].get("text").is_none(), "masked: no text");
}

#[tokio::test]
async fn shap_answers_the_coefficients_and_reproduces() {
    let app = TestApp::new().await;
    let body = app
        .ok(
            "/explain/shap",
            json!({"text": TEXT, "top_labels": 2, "seed": 3}),
        )
        .await;
    assert_common(&body);
    assert_eq!(body["exact"], true);
    assert!(body.get("sampling").is_none());
    assert_eq!(body["params"]["seed"], 3);
    assert_eq!(body["params"]["max_evals"], 2048);
    let features = body["features"].as_array().unwrap();
    assert_eq!(
        features.len(),
        8,
        "The plot was thin but the acting wonderful"
    );
    assert_eq!(body["coalitions"], 256);
    let labels = body["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 2);
    for label in labels {
        let sign = if label["label"] == 0 { 1.0 } else { -1.0 };
        close(
            "base",
            f64_of(&label["base_value"]),
            if sign > 0.0 { 0.0 } else { 0.3 },
        );
        assert!(f64_of(&label["additivity_residual"]) < 1e-9);
        for v in label["values"].as_array().unwrap() {
            let word = v["text"].as_str().unwrap();
            close(word, f64_of(&v["value"]), sign * coef(word));
        }
    }

    // Sampled, with a drawn seed that reproduces.
    let request = json!({"text": TEXT, "max_evals": 40});
    let a = app.ok("/explain/shap", request.clone()).await;
    assert_eq!(a["exact"], false);
    assert!(a["sampling"]["enumerated_sizes"].is_array());
    let seed = a["params"]["seed"].as_u64().unwrap();
    assert!(seed < 1 << 53);
    let mut again = request;
    again["seed"] = json!(seed);
    let b = app.ok("/explain/shap", again).await;
    assert_eq!(a["labels"], b["labels"]);
    // An additive model is fitted exactly from any full-rank design.
    for v in a["labels"][0]["values"].as_array().unwrap() {
        let word = v["text"].as_str().unwrap();
        close(word, f64_of(&v["value"]), -coef(word));
    }
}

#[tokio::test]
async fn counterfactuals_answer_and_flip() {
    let app = TestApp::new().await;
    let body = app
        .ok(
            "/explain/counterfactual",
            json!({
                "text": TEXT,
                "target": "positive",
                "edits": ["The plot was dull"],
                "substitutions": [
                    {"feature": 7, "replacements": ["dull", "fine"]},
                    {"span": {"start": 4, "end": 8}, "replacements": ["acting"]}
                ],
                "combinations": true,
                "flip_search": {}
            }),
        )
        .await;
    assert_common(&body);
    let features = body["features"].as_array().unwrap();
    assert_eq!(features[7]["text"], "wonderful");
    let cf = body["counterfactuals"].as_array().unwrap();
    // 1 edit, 3 single substitutions, 2 combinations.
    assert_eq!(cf.len(), 6);
    assert_eq!(cf[0]["kind"], "edit");
    assert_eq!(cf[0]["edit"], 0);
    // positive of "The plot was dull" = 0.3 - 0.1 - 1.2 = -1.0; of the text 0.65.
    close("edit", f64_of(&cf[0]["deltas"][0]), 0.65 + 1.0);
    assert_eq!(cf[0]["flipped"], true);
    assert_eq!(cf[1]["kind"], "substitution");
    assert_eq!(cf[1]["text"], "The plot was thin but the acting was dull");
    assert_eq!(
        cf[1]["applied"],
        json!([{"substitution": 0, "replacement": 0}])
    );
    assert_eq!(
        cf[3]["text"],
        "The acting was thin but the acting was wonderful"
    );
    assert_eq!(cf[4]["kind"], "combination");
    assert_eq!(cf[4]["text"], "The acting was thin but the acting was dull");
    assert_eq!(body["combinations"]["total"], 2);

    let flip = &body["flip_search"];
    assert_eq!(flip["strategy"], "exact");
    assert_eq!(flip["found"], true);
    assert_eq!(flip["words"], json!(["wonderful"]));
    assert_eq!(flip["features"], json!([7]));
    assert_eq!(flip["result"]["label"], 0);
    assert_eq!(flip["searched_size"], 1);

    // Greedy on request, from a given attribution.
    let body = app
        .ok(
            "/explain/counterfactual",
            json!({"text": TEXT, "flip_search": {"strategy": "greedy",
                   "attribution": [0, 0, 0, 0, 0, 0, 0, 1]}}),
        )
        .await;
    assert_eq!(body["flip_search"]["strategy"], "greedy");
    assert_eq!(body["flip_search"]["order"], "attribution");
    assert_eq!(body["flip_search"]["words"], json!(["wonderful"]));
    assert_eq!(body["flip_search"]["evaluations"], 1);
}

/// `(status, code, details.field)` of an error response.
fn error_of(status: StatusCode, body: &Value) -> (StatusCode, String, Option<String>) {
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (
        status,
        error["code"].as_str().unwrap().to_string(),
        error["details"]["field"].as_str().map(String::from),
    )
}

#[tokio::test]
async fn bad_requests_get_their_documented_status_and_field() {
    let app = TestApp::new().await;
    let long = "word ".repeat(40);
    // (route, body, status, field, costs no model work)
    let cases: Vec<(&str, Value, StatusCode, Option<&str>, bool)> = vec![
        (
            "/explain/occlusion",
            json!({"text": TEXT, "window": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("window"),
            true,
        ),
        (
            "/explain/occlusion",
            json!({"text": TEXT, "stride": 2}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("stride"),
            true,
        ),
        (
            "/explain/occlusion",
            json!({"text": TEXT, "mask": "blank"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("mask"),
            true,
        ),
        (
            "/explain/occlusion",
            json!({"text": "!!! ???"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("text"),
            true,
        ),
        (
            "/explain/occlusion",
            json!({"text": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("text"),
            true,
        ),
        (
            "/explain/occlusion",
            json!({"text": TEXT, "target": "happy"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("target"),
            false,
        ),
        (
            "/explain/occlusion",
            json!({"text": TEXT, "windw": 2}),
            StatusCode::BAD_REQUEST,
            None,
            true,
        ),
        (
            "/explain/occlusion",
            json!({"text": TEXT, "window": "two"}),
            StatusCode::BAD_REQUEST,
            None,
            true,
        ),
        (
            "/explain/shap",
            json!({"text": TEXT, "max_evals": 6000}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("max_evals"),
            true,
        ),
        (
            "/explain/shap",
            json!({"text": TEXT, "max_evals": 5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("max_evals"),
            false,
        ),
        (
            "/explain/shap",
            json!({"text": TEXT, "features": "letters"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("features"),
            true,
        ),
        (
            "/explain/shap",
            json!({"text": long, "max_evals": 100}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("text"),
            true,
        ),
        (
            "/explain/shap",
            json!({"text": TEXT, "num_samples": 100}),
            StatusCode::BAD_REQUEST,
            None,
            true,
        ),
        (
            "/explain/counterfactual",
            json!({"text": TEXT}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("edits"),
            true,
        ),
        (
            "/explain/counterfactual",
            json!({"text": TEXT, "edits": [long]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("edits[0]"),
            false,
        ),
        (
            "/explain/counterfactual",
            json!({"text": TEXT, "edits": ["ok", " "]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("edits[1]"),
            false,
        ),
        (
            "/explain/counterfactual",
            json!({"text": TEXT, "substitutions": [{"feature": 8, "replacements": ["x"]}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("substitutions[0].feature"),
            false,
        ),
        (
            "/explain/counterfactual",
            json!({"text": TEXT, "substitutions": [{"span": {"start": 3, "end": 99}, "replacements": ["x"]}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("substitutions[0].span"),
            false,
        ),
        (
            "/explain/counterfactual",
            json!({"text": TEXT, "substitutions": [{"feature": 1, "replacements": []}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("substitutions[0].replacements"),
            true,
        ),
        (
            "/explain/counterfactual",
            json!({"text": TEXT, "flip_search": {"max_evals": 0}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("flip_search.max_evals"),
            true,
        ),
        (
            "/explain/counterfactual",
            json!({"text": TEXT, "flip_search": {"strategy": "lucky"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("flip_search"),
            true,
        ),
        (
            "/explain/counterfactual",
            json!({"text": TEXT, "flip_search": {"attribution": [1, 2]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("flip_search.attribution"),
            false,
        ),
        (
            "/explain/counterfactual",
            json!({"text": TEXT, "substitutions": [{"feature": 1, "replacements": ["x"], "with": 2}]}),
            StatusCode::BAD_REQUEST,
            None,
            true,
        ),
    ];
    for (route, body, status, field, free) in cases {
        let before = app.rows_evaluated();
        let (got, _, response) = app.post(route, body.clone()).await;
        let (got, code, got_field) = error_of(got, &response);
        assert_eq!(got, status, "{route} {body}: {response}");
        let want_code = if status == StatusCode::BAD_REQUEST {
            "invalid_json"
        } else {
            "validation_error"
        };
        assert_eq!(code, want_code, "{route} {body}");
        assert_eq!(got_field.as_deref(), field, "{route} {body}: {response}");
        if free {
            assert_eq!(app.rows_evaluated(), before, "{route} {body} ran the model");
        }
    }
}

#[tokio::test]
async fn the_openapi_document_describes_the_three_routes() {
    let doc = serde_json::to_value(glassbox::api::openapi::document()).unwrap();
    for path in [
        "/explain/occlusion",
        "/explain/counterfactual",
        "/explain/shap",
    ] {
        let op = &doc["paths"][path]["post"];
        assert!(op.is_object(), "{path} documented");
        for status in ["200", "400", "413", "415", "422", "500", "503", "504"] {
            assert!(
                op["responses"][status].is_object(),
                "{path} documents {status}"
            );
        }
        assert!(op["requestBody"]["content"]["application/json"]["examples"].is_object());
    }
}

/// Perturbed texts meet `limits.max_input_tokens` (32 here) like the request's own text.
/// With `truncate` the original is cut to 32 tokens, and so must be every text a method
/// re-tokenizes (LIME, SHAP and occlusion samples, the flip search, edits and substitutions):
/// run at the tokenizer's own maximum (128 for the tiny model) they would cost more than the
/// limit allows and explain a different window than the one predicted. Without `truncate` an
/// over-long substitution is refused with a 422 naming it.
#[tokio::test]
async fn perturbed_texts_honour_max_input_tokens() {
    let app = TestApp::new().await;
    let max = 32;
    let long = [TEXT; 8].join(". ");
    assert!(
        encoder().encode(&long, false).unwrap().len() > 2 * max,
        "the text is far over the limit"
    );
    let requests = [
        (
            "/explain/lime",
            json!({"text": long, "truncate": true, "num_samples": 60, "seed": 1}),
        ),
        (
            "/explain/shap",
            json!({"text": long, "truncate": true, "max_evals": 60, "seed": 1}),
        ),
        (
            "/explain/occlusion",
            json!({"text": long, "truncate": true}),
        ),
        (
            "/explain/occlusion",
            json!({"text": long, "truncate": true, "bow": false, "window": 3}),
        ),
        (
            "/explain/counterfactual",
            json!({"text": long, "truncate": true, "edits": [format!("{long} {long}")],
                   "substitutions": [{"feature": 0, "replacements": [long.clone()]}],
                   "flip_search": {"max_evals": 50}}),
        ),
    ];
    for (route, request) in requests {
        let body = app.ok(route, request).await;
        assert_eq!(body["prediction"]["truncated"], true, "{route}");
        assert_eq!(body["prediction"]["tokens"], max, "{route}");
        let usage = &body["usage"];
        let rows = usage["model_evaluations"].as_u64().unwrap();
        let tokens = usage["tokens_evaluated"].as_u64().unwrap();
        assert!(rows > 1, "{route}: perturbed rows ran");
        assert!(
            tokens <= rows * max as u64,
            "{route}: {rows} rows of {tokens} tokens; every row must be at most {max} tokens"
        );
    }

    let (status, _, body) = app
        .post(
            "/explain/counterfactual",
            json!({"text": TEXT,
                   "substitutions": [{"feature": 1, "replacements": ["fine", long.clone()]}]}),
        )
        .await;
    assert_eq!(
        error_of(status, &body),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error".to_string(),
            Some("substitutions[0].replacements[1]".to_string())
        )
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("32"), "names the limit: {message}");
}
