//! Asynchronous jobs over HTTP (`/jobs`) and progress streams on the synchronous routes.
//!
//! With the tiny BERT fixture (every method runs): a job's result equals the synchronous
//! route's answer for the same request and seed, and so does the `result` event of its stream.
//! With the toy classifier behind a gate that holds every batch but the first row (the
//! original text), so a request is deterministically stuck mid-way: every state transition,
//! cancellation freeing the engine, the job deadline, the caps with Retry-After, expiry,
//! idempotency keys, and every documented status.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use glassbox::api::{self, app, AppState};
use glassbox::config::Config;
use glassbox::model::config::ZeroShotConfig;
use glassbox::model::loader::{load_model, LoadOptions};
use glassbox::model::toy::{ToyClassifier, ToyOutput};
use glassbox::model::{Classifier, ModelError, ModelInfo, Row, RowOutput, TextEncoder};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use support::{wait_until, Gate};
use tower::ServiceExt;

const TEXT: &str = "the plot was thin but the acting was good";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct TestApp {
    state: AppState,
    router: Router,
}

impl TestApp {
    fn of(state: AppState) -> Self {
        Self {
            router: app(state.clone()),
            state,
        }
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("a JSON body ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, headers, body)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
        self.send(json_request(path, &body.to_string())).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self
            .send(Request::get(path).body(Body::empty()).unwrap())
            .await;
        (status, body)
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self
            .send(Request::delete(path).body(Body::empty()).unwrap())
            .await;
        (status, body)
    }

    /// Creates a job and returns its id (202 expected).
    async fn submit(&self, method: &str, request: Value) -> String {
        let (status, headers, body) = self
            .post("/jobs", json!({"method": method, "request": request}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let id = body["id"].as_str().expect("an id").to_string();
        assert_eq!(headers[header::LOCATION], format!("/jobs/{id}"));
        assert_eq!(body["method"], method);
        id
    }

    async fn job(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Polls the job until it is in `state` (fails after five seconds).
    async fn wait_for(&self, id: &str, state: &str) -> Value {
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let job = self.job(id).await;
            if job["state"] == state {
                return job;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "job {id} never reached {state}: {job}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The whole event stream of a request (it ends after its final event).
    async fn stream(
        &self,
        request: Request<Body>,
    ) -> (StatusCode, HeaderMap, Vec<(String, Value)>) {
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            self.router.clone().oneshot(request),
        )
        .await
        .expect("the stream starts")
        .unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let bytes = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
            .await
            .expect("the stream ends")
            .unwrap()
            .to_bytes();
        (
            status,
            headers,
            parse_events(std::str::from_utf8(&bytes).unwrap()),
        )
    }

    fn counters(&self) -> glassbox::engine::EngineCounters {
        self.state.engine.counters()
    }
}

fn json_request(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn event_request(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "text/event-stream")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// `(event, data as JSON)` of each event; comments (keep-alives) are skipped.
fn parse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            let data = data.join("\n");
            name.map(|n| {
                let value = serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("event {n}: data is not JSON ({e}): {data}"));
                (n, value)
            })
        })
        .collect()
}

/// The body without its timing-dependent `usage` block.
fn without_usage(body: &Value) -> Value {
    /// Timings differ from run to run: every nested usage block goes too (compare has one per
    /// method and one for its faithfulness rows).
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.remove("usage");
                map.remove("faithfulness_usage");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut body = body.clone();
    assert!(body.get("usage").is_some(), "a usage block in {body}");
    strip(&mut body);
    body
}

/// Asserts the one error shape; returns `(code, details.field)`.
fn error_of(error: &Value) -> (String, Option<String>) {
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a message in {error}"
    );
    assert!(error["details"].is_object(), "details in {error}");
    (
        error["code"].as_str().expect("a code").to_string(),
        error["details"]["field"].as_str().map(str::to_string),
    )
}

/// Checks that the progress events are consistent and end with `last_state`, then returns the
/// final event.
#[track_caller]
fn final_of(events: &[(String, Value)], last_state: &str) -> (String, Value) {
    let (last, progress) = events.split_last().expect("some events");
    assert!(!progress.is_empty(), "progress before the final event");
    let mut done = 0;
    for (name, data) in progress {
        assert_eq!(name, "progress", "{events:?}");
        let (d, t) = (
            data["rows_done"].as_u64().unwrap(),
            data["rows_total"].as_u64().unwrap(),
        );
        assert!(d <= t, "{data}");
        assert!(d >= done, "rows_done never decreases: {events:?}");
        done = d;
    }
    assert_eq!(
        progress.last().unwrap().1["state"],
        last_state,
        "{events:?}"
    );
    last.clone()
}

// ---------------------------------------------------------------------------------------------
// The tiny BERT: every method, job versus synchronous.
// ---------------------------------------------------------------------------------------------

async fn tiny_app() -> TestApp {
    let loaded = load_model(
        root()
            .join("tests/fixtures/tiny/tiny-bert-cls")
            .to_str()
            .unwrap(),
        &ZeroShotConfig::default(),
        &LoadOptions::default(),
    )
    .expect("the tiny model loads");
    let mut config = Config::default();
    config.engine.cache_rows = 0;
    config.validate().unwrap();
    let state = AppState::with_gradients(
        config,
        loaded.classifier,
        Some(loaded.encoder_classifier),
        loaded.encoder,
    )
    .unwrap();
    state.warm_up().await.unwrap();
    TestApp::of(state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_result_is_the_synchronous_answer_for_every_method() {
    let app = tiny_app().await;
    let cases = [
        (
            "predict",
            "/predict",
            json!({"texts": [TEXT, "a dull film"]}),
        ),
        (
            "lime",
            "/explain/lime",
            json!({"text": TEXT, "num_samples": 60, "seed": 3}),
        ),
        ("shap", "/explain/shap", json!({"text": TEXT, "seed": 3})),
        ("occlusion", "/explain/occlusion", json!({"text": TEXT})),
        (
            "counterfactual",
            "/explain/counterfactual",
            json!({"text": TEXT, "edits": ["the plot was dull"]}),
        ),
        (
            "heads",
            "/explain/heads",
            json!({"text": TEXT, "sweep": "heads"}),
        ),
        ("attention", "/explain/attention", json!({"text": TEXT})),
        ("gradients", "/explain/gradients", json!({"text": TEXT})),
        (
            "compare",
            "/explain/compare",
            json!({"text": TEXT, "methods": ["lime", "occlusion", "integrated_gradients"],
                   "seed": 3, "lime": {"num_samples": 60}}),
        ),
    ];
    let methods: BTreeSet<&str> = cases.iter().map(|c| c.0).collect();
    let listed: BTreeSet<&str> = api::jobs::METHODS.iter().map(|m| m.name).collect();
    assert_eq!(methods, listed, "every job method is compared");
    for (method, path, request) in cases {
        let (status, _, sync) = app.post(path, request.clone()).await;
        assert_eq!(status, StatusCode::OK, "{method}: {sync}");

        let id = app.submit(method, request.clone()).await;
        let job = app.wait_for(&id, "done").await;
        assert_eq!(job["status"], 200);
        assert!(job.get("error").is_none());
        assert_eq!(
            without_usage(&job["result"]),
            without_usage(&sync),
            "{method}: the job's result is the synchronous answer"
        );
        let progress = &job["progress"];
        assert!(
            progress["rows_total"].as_u64().unwrap() >= 1,
            "{method}: {job}"
        );
        assert_eq!(
            progress["rows_done"], progress["rows_total"],
            "{method}: {job}"
        );
        assert!(job["expires_in_s"].as_u64().unwrap() > 0);

        // A finished job's stream: its last progress, then the result, at once.
        let (status, headers, events) = app
            .stream(
                Request::get(format!("/jobs/{id}/events"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let (name, data) = final_of(&events, "done");
        assert_eq!(name, "result", "{method}");
        assert_eq!(
            data, job["result"],
            "{method}: the event carries the stored result"
        );

        // The synchronous route asked for a stream: progress, then the same answer.
        let (status, _, events) = app.stream(event_request(path, request)).await;
        assert_eq!(status, StatusCode::OK);
        let (name, data) = final_of(&events, "done");
        assert_eq!(name, "result", "{method}");
        assert_eq!(
            without_usage(&data),
            without_usage(&sync),
            "{method}: streamed answer"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The toy classifier behind a gate.
// ---------------------------------------------------------------------------------------------

fn tiny_encoder() -> TextEncoder {
    TextEncoder::from_file(
        &root().join("tests/fixtures/tiny/tiny-bert-cls/tokenizer.json"),
        128,
    )
    .expect("the tiny tokenizer loads")
}

/// Token ids of the tiny model's (real BERT uncased) vocabulary.
const GOOD: u32 = 2204;
const BAD: u32 = 2919;

fn toy() -> ToyClassifier {
    let weights = HashMap::from([(GOOD, vec![-1.0, 1.5]), (BAD, vec![1.5, -1.0])]);
    ToyClassifier::new(
        vec!["negative".into(), "positive".into()],
        weights,
        vec![0.0, 0.0],
        ToyOutput::Softmax,
    )
}

/// The toy model, except that while `hold` is set, batches of more than one row (a method's
/// perturbations, never the single original text) wait at the gate: a request is then past
/// its first step with its rows stuck in the engine, deterministically.
struct Held {
    toy: ToyClassifier,
    gate: Gate,
    /// Batches that reached the gate: once one has, the request's rows were admitted.
    held: AtomicUsize,
}

impl Classifier for Held {
    fn info(&self) -> &ModelInfo {
        self.toy.info()
    }
    fn forward(&self, rows: &[Row]) -> Result<Vec<RowOutput>, ModelError> {
        if rows.len() > 1 {
            self.held.fetch_add(1, Ordering::SeqCst);
            self.gate.wait();
        }
        self.toy.forward(rows)
    }
}

/// Small batches, so that most of a held request's rows wait in the queue.
fn toy_config() -> Config {
    let mut config = Config::default();
    config.engine.cache_rows = 0;
    config.engine.max_batch_rows = 4;
    config.limits.max_input_tokens = 64;
    config.server.max_body_bytes = 4096;
    config
}

/// A warm app over the held toy model; the gate starts closed.
async fn held_app(config: Config) -> (TestApp, Arc<Held>) {
    config.validate().expect("test configuration is valid");
    let model = Arc::new(Held {
        toy: toy(),
        gate: Gate::default(),
        held: AtomicUsize::new(0),
    });
    let state = AppState::new(config, model.clone(), tiny_encoder()).expect("state builds");
    state.warm_up().await.expect("warm-up succeeds");
    (TestApp::of(state), model)
}

/// A LIME request of many perturbations.
fn long_lime() -> Value {
    json!({"text": "one two three four five six seven eight nine ten good bad", "num_samples": 200,
           "seed": 5})
}

/// Waits until the job runs with its perturbations submitted and a batch of them held at the
/// gate (`model.held` was `held_before`).
async fn wait_until_held(app: &TestApp, model: &Held, held_before: usize, id: &str) -> Value {
    let give_up = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let job = app.job(id).await;
        if job["state"] == "running"
            && job["progress"]["rows_total"].as_u64().unwrap() > 1
            && model.held.load(Ordering::SeqCst) > held_before
        {
            return job;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "job {id} never got held: {job}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_transition() {
    let mut config = toy_config();
    config.jobs.max_running_jobs = 1;
    let (app, model) = held_app(config).await;

    // queued -> running: the first job takes the only run slot and is held mid-way.
    let first = app.submit("lime", long_lime()).await;
    let held = wait_until_held(&app, &model, 0, &first).await;
    assert_eq!(
        held["progress"]["rows_done"], 1,
        "the original text only: {held}"
    );
    assert!(held.get("result").is_none() && held.get("expires_in_s").is_none());

    // A second job waits for the slot: queued, with no model work.
    let second = app
        .submit(
            "lime",
            json!({"text": "good", "num_samples": 20, "seed": 1}),
        )
        .await;
    let queued = app.job(&second).await;
    assert_eq!(queued["state"], "queued", "{queued}");
    assert_eq!(queued["progress"], json!({"rows_done": 0, "rows_total": 0}));

    // queued -> cancelled: it never runs.
    let (status, cancelled) = app.delete(&format!("/jobs/{second}")).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");

    // A third job, with a body its route refuses: it waits its turn, then fails with the
    // route's own error, the same as the synchronous answer.
    let bad = json!({"text": "good", "num_samples": 1});
    let third = app.submit("lime", bad.clone()).await;
    assert_eq!(app.job(&third).await["state"], "queued");

    // running -> done once the gate opens; then the third runs and fails.
    model.gate.open();
    let done = app.wait_for(&first, "done").await;
    assert_eq!(done["status"], 200);
    assert!(done["result"]["labels"].is_array(), "{done}");
    let failed = app.wait_for(&third, "failed").await;
    let (status, _, sync) = app.post("/explain/lime", bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(failed["status"], 422);
    assert_eq!(failed["error"], sync["error"], "the route's own error");
    assert_eq!(error_of(&failed["error"]).1.as_deref(), Some("num_samples"));
    assert!(failed.get("result").is_none());
    // Streamed, the same request ends with the same error as an `error` event.
    let (status, _, events) = app
        .stream(event_request(
            "/explain/lime",
            json!({"text": "good", "num_samples": 1}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (name, data) = final_of(&events, "failed");
    assert_eq!(name, "error");
    assert_eq!(data, sync, "the route's error body");

    let never_ran = app.job(&second).await;
    assert_eq!(
        never_ran["state"], "cancelled",
        "a late slot does not revive it"
    );
    assert_eq!(never_ran["progress"]["rows_total"], 0);

    // running -> cancelled (below, with the engine's counters); finished jobs stay as they are
    // until deleted: DELETE then discards them.
    let (status, view) = app.delete(&format!("/jobs/{first}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        view["state"], "done",
        "a finished job is discarded, not cancelled"
    );
    let (status, body) = app.get(&format!("/jobs/{first}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body["error"]).0, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_drops_its_rows_and_frees_the_model() {
    let (app, model) = held_app(toy_config()).await;
    let id = app.submit("lime", long_lime()).await;
    let held = wait_until_held(&app, &model, 0, &id).await;
    let total = held["progress"]["rows_total"].as_u64().unwrap();
    let before = app.counters();
    assert!(
        before.queued_rows > 20,
        "most rows wait in the queue: {before:?}"
    );

    // Watch the job's events while it is cancelled.
    let watcher = {
        let router = app.router.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let request = Request::get(format!("/jobs/{id}/events"))
                .body(Body::empty())
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            parse_events(std::str::from_utf8(&bytes).unwrap())
        })
    };

    let (status, view) = app.delete(&format!("/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["state"], "cancelled");
    let state = app.state.clone();
    wait_until("the cancelled job's queued rows are dropped", || {
        let c = state.engine.counters();
        c.queued_rows == 0 && c.dropped_rows > before.dropped_rows
    })
    .await;
    // The batch already at the gate finishes; nothing of the job runs after it.
    model.gate.open();
    let state = app.state.clone();
    wait_until("the batch in flight finishes", || {
        state.engine.counters().rows_evaluated > before.rows_evaluated
    })
    .await;
    let after_cancel = app.counters();
    let (status, _, _) = app.post("/predict", json!({"text": "good"})).await;
    assert_eq!(status, StatusCode::OK);
    let after_predict = app.counters();
    assert_eq!(
        after_predict.rows_evaluated,
        after_cancel.rows_evaluated + 1,
        "only the new request's row ran: the job uses the model no more"
    );
    assert!(
        after_cancel.rows_evaluated <= before.rows_evaluated + 4,
        "at most the one batch in flight (4 rows) ran after the cancellation: \
         {before:?} -> {after_cancel:?}"
    );
    assert_eq!(after_predict.queued_rows, 0);

    let job = app.job(&id).await;
    assert_eq!(job["state"], "cancelled");
    assert!(job.get("result").is_none() && job.get("status").is_none());
    assert!(
        job["progress"]["rows_done"].as_u64().unwrap() < total,
        "{job}"
    );

    let events = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the stream ends")
        .unwrap();
    let (name, data) = final_of(&events, "cancelled");
    assert_eq!(name, "cancelled");
    assert_eq!(data["state"], "cancelled");

    let response = app
        .router
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let metrics = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(
        metrics.contains("glassbox_jobs_finished_total{state=\"cancelled\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("glassbox_jobs_live"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_request_whose_client_goes_away_drops_its_rows() {
    let (app, model) = held_app(toy_config()).await;
    let response = app
        .router
        .clone()
        .oneshot(event_request("/explain/lime", long_lime()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // Read events until the perturbations are submitted.
    let mut text = String::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("an event")
            .expect("the stream is open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
        let events = parse_events(&text);
        if events
            .iter()
            .any(|(_, d)| d["rows_total"].as_u64().unwrap_or(0) > 1)
        {
            assert!(events
                .iter()
                .all(|(n, d)| n == "progress" && d["state"] == "running"));
            break;
        }
    }
    let held = model.clone();
    wait_until("a batch of the perturbations is held", || {
        held.held.load(Ordering::SeqCst) > 0
    })
    .await;
    let before = app.counters();
    assert!(before.queued_rows > 0, "{before:?}");
    drop(body);
    let state = app.state.clone();
    wait_until("the streamed request's queued rows are dropped", || {
        let c = state.engine.counters();
        c.queued_rows == 0 && c.dropped_rows > before.dropped_rows
    })
    .await;
    model.gate.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_under_their_own_deadline() {
    let mut config = toy_config();
    config.server.request_timeout_ms = 200;
    config.jobs.timeout_ms = 60_000;
    let (app, model) = held_app(config).await;
    let id = app.submit("lime", long_lime()).await;
    wait_until_held(&app, &model, 0, &id).await;
    // A synchronous request for the same work times out meanwhile ...
    let (status, _, body) = app.post("/explain/lime", long_lime()).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["details"]["timeout_ms"], 200);
    // ... while the job, running for longer than that, finishes.
    assert_eq!(app.job(&id).await["state"], "running");
    model.gate.open();
    app.wait_for(&id, "done").await;

    // A job past jobs.timeout_ms fails with `timeout` and drops its rows.
    let mut config = toy_config();
    config.jobs.timeout_ms = 300;
    let (app, model) = held_app(config).await;
    let id = app.submit("lime", long_lime()).await;
    let failed = app.wait_for(&id, "failed").await;
    assert_eq!(failed["status"], 504);
    assert_eq!(error_of(&failed["error"]).0, "timeout");
    assert_eq!(failed["error"]["details"]["timeout_ms"], 300);
    let state = app.state.clone();
    wait_until("the timed-out job's rows are dropped", || {
        let c = state.engine.counters();
        c.queued_rows == 0 && c.dropped_rows > 0
    })
    .await;
    model.gate.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_on_live_and_stored_jobs_answer_503_with_retry_after() {
    let mut config = toy_config();
    config.jobs.max_live_jobs = 1;
    config.jobs.max_stored_results = 2;
    let (app, model) = held_app(config).await;
    let first = app.submit("lime", long_lime()).await;
    wait_until_held(&app, &model, 0, &first).await;
    let (status, headers, body) = app
        .post(
            "/jobs",
            json!({"method": "predict", "request": {"text": "good"}}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error_of(&body["error"]).0, "overloaded");
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(body["error"]["details"]["retry_after_s"], 1);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("jobs.max_live_jobs"));

    model.gate.open();
    app.wait_for(&first, "done").await;
    let second = app.submit("predict", json!({"text": "good"})).await;
    app.wait_for(&second, "done").await;
    // Two stored results: the next job waits until one expires (600 s) or is deleted.
    let (status, headers, body) = app
        .post(
            "/jobs",
            json!({"method": "predict", "request": {"text": "bad"}}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("jobs.max_stored_results"));
    let retry: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (590..=600).contains(&retry),
        "until the first result expires: {retry}"
    );
    let (status, _) = app.delete(&format!("/jobs/{first}")).await;
    assert_eq!(status, StatusCode::OK);
    app.submit("predict", json!({"text": "bad"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_expire() {
    let mut config = toy_config();
    config.jobs.result_ttl_s = 1;
    let (app, _model) = held_app(config).await;
    let id = app.submit("predict", json!({"text": "good"})).await;
    let done = app.wait_for(&id, "done").await;
    assert!(done["expires_in_s"].as_u64().unwrap() <= 1, "{done}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (status, body) in [
        app.get(&format!("/jobs/{id}")).await,
        app.get(&format!("/jobs/{id}/events")).await,
        app.delete(&format!("/jobs/{id}")).await,
    ] {
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(error_of(&body["error"]).0, "not_found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_make_retries_safe() {
    let (app, model) = held_app(toy_config()).await;
    let create = |key: &str, auth: Option<&str>, body: Value| {
        let mut request = Request::post("/jobs")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key);
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        request.body(Body::from(body.to_string())).unwrap()
    };
    let body = json!({"method": "lime", "request": long_lime()});
    let (status, headers, first) = app.send(create("k-1", None, body.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let id = first["id"].as_str().unwrap().to_string();

    // The same key and body (keys in another order): the same job, 200.
    let reordered = json!({"request": long_lime(), "method": "lime"});
    let (status, again_headers, again) = app.send(create("k-1", None, reordered)).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again_headers[header::LOCATION], headers[header::LOCATION]);
    assert_eq!(app.state.jobs.counts(), (1, 1), "no second job");

    // The same key with another body or method: 422 naming the header.
    for other in [
        json!({"method": "lime", "request": {"text": "good", "num_samples": 20}}),
        json!({"method": "shap", "request": long_lime()}),
    ] {
        let (status, _, body) = app.send(create("k-1", None, other)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(
            error_of(&body["error"]).1.as_deref(),
            Some("Idempotency-Key")
        );
    }
    // Another caller's key of the same name is another key.
    let (status, _, other) = app
        .send(create("k-1", Some("Bearer other"), body.clone()))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{other}");
    assert_ne!(other["id"], first["id"]);
    // A malformed key.
    for key in ["", &"x".repeat(256)] {
        let (status, _, body) = app.send(create(key, None, body.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(
            error_of(&body["error"]).1.as_deref(),
            Some("Idempotency-Key")
        );
    }
    model.gate.open();
    app.wait_for(&id, "done").await;
    // Kept as long as the job: discarding the job frees the key.
    app.delete(&format!("/jobs/{id}")).await;
    let (status, _, fresh) = app.send(create("k-1", None, body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{fresh}");
    assert_ne!(fresh["id"], first["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_job_statuses_are_the_real_ones() {
    let document = serde_json::to_value(api::openapi::document()).unwrap();
    let mut documented = BTreeSet::new();
    for (path, method) in [
        ("/jobs", "post"),
        ("/jobs/{id}", "get"),
        ("/jobs/{id}", "delete"),
        ("/jobs/{id}/events", "get"),
    ] {
        let responses = document["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} is documented"));
        for (status, response) in responses {
            let content = response["content"].as_object().unwrap();
            assert!(
                content.values().all(|c| !c["example"].is_null()),
                "{method} {path} {status} has an example"
            );
            documented.insert((path, method, status.parse::<u16>().unwrap()));
        }
    }

    let config = toy_config();
    let state = AppState::new(config.clone(), Arc::new(toy()), tiny_encoder()).unwrap();
    let cold = TestApp::of(state.clone());
    let mut seen = BTreeSet::new();
    let (status, _, body) = cold
        .post(
            "/jobs",
            json!({"method": "predict", "request": {"text": "good"}}),
        )
        .await;
    assert_eq!(error_of(&body["error"]).0, "not_ready");
    seen.insert(("/jobs", "post", status.as_u16()));
    state.warm_up().await.unwrap();
    let app = cold;
    let evaluated = app.counters().rows_evaluated;

    let big = json!({"method": "lime", "request": {"text": "good ".repeat(1000)}}).to_string();
    let cases: Vec<(Request<Body>, StatusCode, &str, Option<&str>)> = vec![
        (
            json_request("/jobs", "{"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            None,
        ),
        (
            json_request("/jobs", r#"{"method": "lime"}"#),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            None,
        ),
        (
            json_request("/jobs", r#"{"method": "lime", "request": "good"}"#),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            None,
        ),
        (
            json_request(
                "/jobs",
                r#"{"method": "lime", "request": {}, "priority": 1}"#,
            ),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            None,
        ),
        (
            json_request("/jobs", &big),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
        ),
        (
            Request::post("/jobs")
                .body(Body::from(r#"{"method": "lime", "request": {}}"#))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
        ),
        (
            json_request(
                "/jobs",
                r#"{"method": "lasso", "request": {"text": "good"}}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            Some("method"),
        ),
    ];
    for (request, want, code, field) in cases {
        let (status, _, body) = app.send(request).await;
        assert_eq!(status, want, "{body}");
        assert_eq!(
            error_of(&body["error"]),
            (code.to_string(), field.map(String::from))
        );
        seen.insert(("/jobs", "post", status.as_u16()));
    }
    let unknown = "/jobs/00000000-0000-0000-0000-000000000000";
    for (path, method, (status, body)) in [
        ("/jobs/{id}", "get", app.get(unknown).await),
        ("/jobs/{id}", "delete", app.delete(unknown).await),
        (
            "/jobs/{id}/events",
            "get",
            app.get(&format!("{unknown}/events")).await,
        ),
    ] {
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(error_of(&body["error"]).0, "not_found");
        seen.insert((path, method, status.as_u16()));
    }
    assert_eq!(
        app.counters().rows_evaluated,
        evaluated,
        "refused requests cost no model work"
    );
    assert_eq!(app.state.jobs.counts(), (0, 0), "and create no job");

    // The successes, the caps and an idempotent replay.
    let mut full = config;
    full.jobs.max_live_jobs = 1;
    full.jobs.max_stored_results = 1;
    let (capped, held) = held_app(full).await;
    let id = capped.submit("lime", long_lime()).await;
    wait_until_held(&capped, &held, 0, &id).await;
    seen.insert(("/jobs", "post", 202));
    let (status, _, _) = capped
        .post(
            "/jobs",
            json!({"method": "predict", "request": {"text": "good"}}),
        )
        .await;
    seen.insert(("/jobs", "post", status.as_u16()));
    let keyed = Request::post("/jobs")
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", "again");
    held.gate.open();
    capped.wait_for(&id, "done").await;
    capped.delete(&format!("/jobs/{id}")).await;
    let body = json!({"method": "predict", "request": {"text": "good"}}).to_string();
    let (status, _, _) = capped
        .send(keyed.body(Body::from(body.clone())).unwrap())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, view) = capped
        .send(
            Request::post("/jobs")
                .header(header::CONTENT_TYPE, "application/json")
                .header("idempotency-key", "again")
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    seen.insert(("/jobs", "post", status.as_u16()));
    let id = view["id"].as_str().unwrap();
    capped.wait_for(id, "done").await;
    seen.insert(("/jobs/{id}", "get", 200));
    let (status, _, _) = capped
        .stream(
            Request::get(format!("/jobs/{id}/events"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    seen.insert(("/jobs/{id}/events", "get", status.as_u16()));
    let (status, _) = capped.delete(&format!("/jobs/{id}")).await;
    seen.insert(("/jobs/{id}", "delete", status.as_u16()));

    assert_eq!(
        documented, seen,
        "documented statuses of the job routes versus statuses they really return"
    );
}

#[tokio::test]
async fn info_reports_the_job_limits() {
    let mut config = toy_config();
    config.jobs.max_live_jobs = 7;
    config.jobs.result_ttl_s = 42;
    let (app, _model) = held_app(config).await;
    let (status, body) = app.get("/info").await;
    assert_eq!(status, StatusCode::OK);
    let limits = &body["limits"];
    assert_eq!(limits["max_live_jobs"], 7);
    assert_eq!(limits["max_running_jobs"], 2);
    assert_eq!(limits["max_stored_results"], 256);
    assert_eq!(limits["job_result_ttl_s"], 42);
    assert_eq!(limits["job_timeout_ms"], 600_000);
}
