//! `POST /explain/gradients` end to end on the tiny BERT checkpoint (one copy of the weights
//! serves forward rows and gradients), and its errors.

use std::collections::HashMap;
use std::path::PathBuf;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use glassbox::api::{app, AppState};
use glassbox::config::Config;
use glassbox::model::config::ZeroShotConfig;
use glassbox::model::loader::{load_model, LoadOptions};
use glassbox::model::toy::{ToyClassifier, ToyOutput};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

fn tiny_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/tiny-bert-cls")
}

async fn tiny_app() -> Router {
    let loaded = load_model(
        tiny_dir().to_str().unwrap(),
        &ZeroShotConfig::default(),
        &LoadOptions::default(),
    )
    .unwrap();
    let state = AppState::with_gradients(
        Config::default(),
        loaded.classifier,
        Some(loaded.encoder_classifier),
        loaded.encoder,
    )
    .unwrap();
    state.warm_up().await.unwrap();
    app(state)
}

async fn post(router: &Router, body: Value) -> (StatusCode, Value) {
    let request = Request::post("/explain/gradients")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

const TEXT: &str = "The food was cold and the service painfully slow tonight.";

#[tokio::test]
async fn integrated_gradients_per_token_with_completeness() {
    let router = tiny_app().await;
    let (status, body) = post(&router, json!({"text": TEXT, "target": "positive"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["method"], "integrated_gradients");
    assert_eq!(body["steps"], 50);
    assert_eq!(body["quadrature"], "gauss_legendre");
    let tokens = body["tokens"].as_array().unwrap();
    let e = &body["explanations"][0];
    assert_eq!(e["label_name"], "positive");
    let scores = floats(&e["scores"]);
    assert_eq!(scores.len(), tokens.len());
    assert_eq!(scores[0], 0.0, "[CLS] is kept in the baseline");
    assert_eq!(
        *scores.last().unwrap(),
        0.0,
        "[SEP] is kept in the baseline"
    );
    assert!(scores.iter().any(|s| s.abs() > 1e-6));
    let ig = &e["integrated_gradients"];
    let change = e["output"].as_f64().unwrap() - ig["baseline_output"].as_f64().unwrap();
    let delta = ig["delta"].as_f64().unwrap();
    assert!(
        delta.abs() < 1e-3 * change.abs(),
        "delta {delta} change {change}"
    );
    let sum: f64 = scores.iter().sum();
    assert!((sum - ig["sum"].as_f64().unwrap()).abs() < 1e-9);
    // The text once, then 52 gradient rows (50 nodes, x and x').
    assert_eq!(body["usage"]["model_evaluations"], 53);
    assert!(body.get("features").is_none());
}

#[tokio::test]
async fn words_with_faithfulness_and_other_methods() {
    let router = tiny_app().await;
    let (status, body) = post(
        &router,
        json!({"text": TEXT, "top_labels": 2, "granularity": "words", "evaluate": true,
               "quadrature": "trapezoid", "steps": 20, "output": "logit"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let words = body["features"].as_array().unwrap();
    assert_eq!(words.len(), 10);
    assert_eq!(body["explanations"].as_array().unwrap().len(), 2);
    for e in body["explanations"].as_array().unwrap() {
        assert_eq!(floats(&e["scores"]).len(), 10);
        let f = &e["faithfulness"];
        let bins = f["bins"].as_array().unwrap();
        let sizes: Vec<u64> = bins
            .iter()
            .map(|b| b["features"].as_u64().unwrap())
            .collect();
        assert_eq!(sizes, vec![1, 1, 1, 2, 5]);
        let comp: f64 = bins
            .iter()
            .map(|b| b["comprehensiveness"].as_f64().unwrap())
            .sum();
        assert!((f["aopc_comprehensiveness"].as_f64().unwrap() - comp / 6.0).abs() < 1e-9);
    }

    let (status, body) = post(&router, json!({"text": TEXT, "method": "saliency"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("steps").is_none());
    let scores = floats(&body["explanations"][0]["scores"]);
    assert!(scores.iter().all(|s| *s >= 0.0) && scores.iter().any(|s| *s > 0.0));
    // The text (a cache hit after the first request) and one gradient row.
    let usage = &body["usage"];
    assert_eq!(
        usage["model_evaluations"].as_u64().unwrap() + usage["cache_hits"].as_u64().unwrap(),
        2
    );

    let (status, body) = post(
        &router,
        json!({"text": TEXT, "method": "grad_x_input", "evaluate": true, "mask": "mask_token"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["explanations"][0]["faithfulness"]["bins"].is_array());
}

#[tokio::test]
async fn bad_requests_name_the_problem() {
    let router = tiny_app().await;
    for (request, status, field) in [
        (json!({"text": TEXT, "steps": 0}), 422, Some("steps")),
        (json!({"text": TEXT, "steps": 5000}), 422, Some("steps")),
        (
            json!({"text": TEXT, "steps": 1, "quadrature": "trapezoid"}),
            422,
            Some("steps"),
        ),
        (json!({"text": ""}), 422, Some("text")),
        (
            json!({"text": TEXT, "target": "happy"}),
            422,
            Some("target"),
        ),
        (
            json!({"text": "!!!", "evaluate": true}),
            422,
            Some("evaluate"),
        ),
        (json!({"text": TEXT, "method": "deeplift"}), 400, None),
        (json!({"text": TEXT, "stepz": 3}), 400, None),
    ] {
        let (got, body) = post(&router, request.clone()).await;
        assert_eq!(got.as_u16(), status, "{request}: {body}");
        if let Some(field) = field {
            assert_eq!(
                body["error"]["details"]["field"], field,
                "{request}: {body}"
            );
        }
    }
}

#[tokio::test]
async fn a_model_without_gradients_is_refused() {
    let toy = ToyClassifier::new(
        vec!["a".into(), "b".into()],
        HashMap::new(),
        vec![0.0, 0.0],
        ToyOutput::Softmax,
    );
    let loaded = load_model(
        tiny_dir().to_str().unwrap(),
        &ZeroShotConfig::default(),
        &LoadOptions::default(),
    )
    .unwrap();
    let state = AppState::new(Config::default(), std::sync::Arc::new(toy), loaded.encoder).unwrap();
    state.warm_up().await.unwrap();
    let (status, body) = post(&app(state), json!({"text": TEXT})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["details"]["field"], "method");
}

#[test]
fn the_route_is_documented_with_every_status() {
    let doc: Value = serde_json::from_str(glassbox::api::openapi::document_json()).unwrap();
    let responses = &doc["paths"]["/explain/gradients"]["post"]["responses"];
    for status in ["200", "400", "413", "415", "422", "500", "503", "504"] {
        assert!(responses.get(status).is_some(), "missing {status}");
    }
}
