//! Access control over HTTP: API keys (401), exempt probes, per-key rate limits (429 with
//! Retry-After) and CORS for configured origins only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use glassbox::api::{app, AppState};
use glassbox::config::Config;
use glassbox::model::toy::{ToyClassifier, ToyOutput};
use glassbox::model::TextEncoder;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

fn encoder() -> TextEncoder {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny/tiny-bert-cls/tokenizer.json");
    TextEncoder::from_file(&path, 128).expect("the tiny tokenizer loads")
}

async fn router(config: Config) -> Router {
    config.validate().expect("valid test configuration");
    let labels = vec!["negative".into(), "positive".into()];
    let toy = ToyClassifier::new(
        labels,
        HashMap::from([(2204, vec![0.0, 1.0])]),
        vec![0.0, 0.0],
        ToyOutput::Softmax,
    );
    let state = AppState::new(config, Arc::new(toy), encoder()).expect("state builds");
    state.warm_up().await.expect("warm-up");
    app(state)
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

fn predict(key: Option<&str>) -> Request<Body> {
    let mut r = Request::post("/predict").header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        r = r.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    r.body(Body::from(r#"{"text": "good"}"#)).unwrap()
}

#[tokio::test]
async fn api_keys_gate_every_route_but_the_probes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, "# dashboards\nfile-key\n").unwrap();
    let mut config = Config::default();
    config.auth.api_keys = "env-key-1, env-key-2".into();
    config.auth.api_keys_file = file.to_string_lossy().into();
    let router = router(config).await;

    for key in ["env-key-1", "env-key-2", "file-key"] {
        let (status, _, body) = send(&router, predict(Some(key))).await;
        assert_eq!(status, StatusCode::OK, "{key}: {body}");
    }
    for key in [None, Some("wrong"), Some("env-key-1 ")] {
        let (status, _, body) = send(&router, predict(key)).await;
        if key == Some("env-key-1 ") {
            // Surrounding whitespace is trimmed from the presented token.
            assert_eq!(status, StatusCode::OK);
            continue;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
        let text = body.to_string();
        assert!(
            !text.contains("env-key") && !text.contains("file-key"),
            "keys never leak: {text}"
        );
    }
    for path in ["/health", "/ready", "/metrics"] {
        let (status, _, _) = send(&router, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{path} is exempt");
    }
    let (status, _, _) = send(&router, Request::get("/info").body(Body::empty()).unwrap()).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "/info is not exempt by default"
    );
}

#[tokio::test]
async fn each_key_is_rate_limited_with_retry_after() {
    let mut config = Config::default();
    config.auth.api_keys = "a,b".into();
    config.auth.rate_limit_per_second = 0.2;
    config.auth.rate_limit_burst = 3;
    let router = router(config).await;
    for _ in 0..3 {
        assert_eq!(send(&router, predict(Some("a"))).await.0, StatusCode::OK);
    }
    let (status, headers, body) = send(&router, predict(Some("a"))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    // Another key has its own bucket.
    assert_eq!(send(&router, predict(Some("b"))).await.0, StatusCode::OK);
}

#[tokio::test]
async fn cors_answers_only_configured_origins() {
    let mut config = Config::default();
    config.server.cors_allowed_origins = vec!["https://dash.example.com".into()];
    let router = router(config).await;
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/predict")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
            .body(Body::empty())
            .unwrap()
    };
    let (_, headers, _) = send(&router, preflight("https://dash.example.com")).await;
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://dash.example.com"
    );
    let (_, headers, _) = send(&router, preflight("https://evil.example.com")).await;
    assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
}

#[test]
fn auth_settings_are_validated() {
    let mut config = Config::default();
    config.auth.rate_limit_per_second = -1.0;
    assert!(config
        .validate()
        .unwrap_err()
        .to_string()
        .contains("auth.rate_limit_per_second"));
    let mut config = Config::default();
    config.auth.api_keys_file = "/nonexistent/keys".into();
    assert!(config
        .validate()
        .unwrap_err()
        .to_string()
        .contains("auth.api_keys_file"));
    let mut config = Config::default();
    config.server.cors_allowed_origins = vec!["dash.example.com".into()];
    assert!(config
        .validate()
        .unwrap_err()
        .to_string()
        .contains("cors_allowed_origins"));
    // Debug output never shows keys.
    let mut config = Config::default();
    config.auth.api_keys = "secret-key".into();
    assert!(!format!("{config:?}").contains("secret-key"));
}
