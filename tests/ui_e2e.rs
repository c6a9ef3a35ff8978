//! The browser playground end to end, in a real headless Chromium driven over WebDriver.
//!
//! The test serves the real app (the tiny BERT fixture, so a debug build answers in
//! milliseconds; `GLASSBOX_UI_E2E_MODEL` picks another model folder) on a loopback port,
//! starts Debian's `chromedriver` with `chromium`, and talks WebDriver's JSON over HTTP with
//! the small blocking client below (plain `std::net`, no extra crate to compile). It types a
//! sentence, runs LIME (as a job, with its progress bar) and checks the highlighted words and
//! the bars, cancels a long LIME job from the page and checks the server cancelled it, opens the
//! attention view and checks the heatmap's cells for a chosen layer and head, compares methods
//! (one ranked row per method, with its scores and highlighted words), checks that the browser
//! logged no error and fetched nothing from another origin, and loads `/docs` and checks the
//! routes are listed.
//!
//! `scripts/install-browser.sh` (run by `make test`) installs the browser. Without it the test
//! is skipped with a message, unless `CI` or `GLASSBOX_REQUIRE_BROWSER` is set, when it fails.
//! `GLASSBOX_SCREENSHOTS=<folder>` also saves a PNG of each main view there
//! (`make screenshots`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use glassbox::api::{self, AppState};
use glassbox::config::Config;
use glassbox::explain::features::split_words;
use glassbox::model::config::ZeroShotConfig;
use glassbox::model::loader::{load_model, LoadOptions};
use serde_json::{json, Value};

/// Distinct words, so that LIME's bag-of-words features are one per word; "Unbelievably" is
/// several word pieces, so the word granularity has fewer entries than tokens.
const TEXT: &str = "Unbelievably wonderful acting rescued this thin plot.";
/// Samples for LIME: a handful is enough to draw the view.
const LIME_SAMPLES: usize = 60;
/// A text of many distinct words: LIME's samples are then (nearly) all distinct model rows, so
/// a job with many samples runs long enough to be watched and cancelled.
const LONG_TEXT: &str = "Unbelievably wonderful acting rescued this thin plot, although the \
    soundtrack felt loud, the pacing dragged near its middle, several jokes landed flat, some \
    costumes looked cheap, every villain seemed bored, yet brave camera work, sharp editing and \
    one remarkable final scene kept viewers quietly hopeful until credits rolled.";
/// LIME samples of the job that is cancelled (about 12 s of work on the tiny model in a debug
/// build; it is cancelled within the first second of its rows).
const LONG_SAMPLES: usize = 5_000;
/// How long any one wait may take before the test fails with what it was waiting for.
const WAIT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(env) {
        return Some(PathBuf::from(path));
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&paths).chain(["/usr/bin".into(), "/usr/lib/chromium".into()])
    {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// The app over a real model, served on `address` from a runtime of its own.
struct Server {
    address: SocketAddr,
    base: String,
    /// Taken on drop, to shut down without waiting for work a failed test left running.
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    words: usize,
    tokens: usize,
    layers: usize,
    heads: usize,
}

impl Server {
    fn start(model: &Path, ip: [u8; 4]) -> Server {
        let loaded = load_model(
            model.to_str().expect("a UTF-8 model path"),
            &ZeroShotConfig::default(),
            &LoadOptions::default(),
        )
        .unwrap_or_else(|e| panic!("the model {} loads: {e}", model.display()));
        let tokens = loaded
            .encoder
            .encode(TEXT, false)
            .expect("the test text encodes")
            .len();
        let (layers, heads) = (loaded.info().num_layers, loaded.info().num_heads);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let address = runtime.block_on(async {
            let mut config = Config::default();
            config.server.request_timeout_ms = 120_000;
            // As `glassbox serve` builds it: the same weights behind the gradient routes.
            let state = AppState::with_gradients(
                config,
                loaded.classifier.clone(),
                Some(loaded.encoder_classifier.clone()),
                loaded.encoder.clone(),
            )
            .expect("the app state builds");
            state.warm_up().await.expect("warm-up succeeds");
            let listener = tokio::net::TcpListener::bind(SocketAddr::from((ip, 0)))
                .await
                .expect("a loopback port");
            let address = listener.local_addr().unwrap();
            tokio::spawn(api::serve(
                listener,
                api::app(state),
                async {
                    let _ = stopped.await;
                },
                Duration::from_secs(1),
            ));
            address
        });
        Server {
            address,
            base: format!("http://{address}"),
            runtime: Some(runtime),
            stop: Some(stop),
            words: split_words(TEXT).len(),
            tokens,
            layers,
            heads,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// One HTTP/1.1 exchange with chromedriver: `Connection: close`, body by `Content-Length` or
/// read to the end.
fn http(address: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let payload = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to chromedriver at {address}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line from chromedriver, got {status_line:?}"));
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let mut bytes = Vec::new();
    match length {
        Some(n) => {
            bytes.resize(n, 0);
            reader.read_exact(&mut bytes).unwrap();
        }
        None => {
            reader.read_to_end(&mut bytes).unwrap();
        }
    }
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "chromedriver answered {status} with a body that is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (status, value)
}

/// chromedriver and one browser session; both end when dropped.
struct Browser {
    driver: Child,
    address: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::env::temp_dir().join(format!("glassbox-chromedriver-{port}.log"));
        let mut driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
        let started = Instant::now();
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                let (status, body) = http(address, "GET", "/status", None);
                if status == 200 && body["value"]["ready"] == json!(true) {
                    break;
                }
            }
            if let Ok(Some(exit)) = driver.try_wait() {
                panic!(
                    "chromedriver exited at start ({exit}); see {}",
                    log.display()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not answer within 30 s; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }

        let profile = tempfile::tempdir().expect("a profile folder");
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
            "timeouts": {"script": 60_000, "pageLoad": 60_000},
        }}});
        let (status, body) = http(address, "POST", "/session", Some(&capabilities));
        if status != 200 {
            let _ = driver.kill();
            let _ = driver.wait();
            panic!(
                "chromedriver could not start {}: {body}; see {}",
                chromium.display(),
                log.display()
            );
        }
        let session = body["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        Browser {
            driver,
            address,
            session,
            _profile: profile,
        }
    }

    /// A WebDriver command of this session; panics with the driver's message on an error.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let (status, answer) = http(self.address, method, &path, body.as_ref());
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })));
    }

    fn execute(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    fn element(&self, css: &str) -> String {
        let found = self.command(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element id for {css}: {found}"))
            .to_string()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.command("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Clears a field and types into it with real key events.
    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.command("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Chooses an option of a `<select>` the way a user's change would (a `change` event).
    fn select(&self, css: &str, value: &str) {
        self.execute(
            "const s = document.querySelector(arguments[0]); s.value = arguments[1]; \
             s.dispatchEvent(new Event('change', {bubbles: true})); return s.value;",
            json!([css, value]),
        );
    }

    /// Polls `predicate` (a script body returning a truthy value) until it holds; on time-out
    /// fails with `what` and the page's error box and status line.
    fn wait_for(&self, what: &str, predicate: &str, args: Value) -> Value {
        let started = Instant::now();
        loop {
            let value = self.execute(predicate, args.clone());
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if started.elapsed() > WAIT {
                let page = self.execute(
                    "const e = document.getElementById('error'); \
                     const s = document.getElementById('status'); \
                     return {error: e && !e.hidden ? e.textContent : null, \
                             status: s ? s.textContent : null, \
                             state: document.body ? document.body.dataset.state : null};",
                    json!([]),
                );
                panic!("timed out after {WAIT:?} waiting for {what}; page: {page}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn count(&self, css: &str) -> usize {
        self.execute(
            "return document.querySelectorAll(arguments[0]).length;",
            json!([css]),
        )
        .as_u64()
        .unwrap_or(0) as usize
    }

    /// Presses a key `times` times on whatever has the focus (WebDriver key actions).
    fn press(&self, key: &str, times: usize) {
        let actions: Vec<Value> = (0..times)
            .flat_map(|_| {
                [
                    json!({"type": "keyDown", "value": key}),
                    json!({"type": "keyUp", "value": key}),
                ]
            })
            .collect();
        self.command(
            "POST",
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        );
    }

    /// Browser log entries since the last call (chromedriver's `goog:loggingPrefs`).
    fn log(&self) -> Vec<Value> {
        match self.command("POST", "/se/log", Some(json!({"type": "browser"}))) {
            Value::Array(entries) => entries,
            other => panic!("a log array, got {other}"),
        }
    }

    /// URLs the page fetched that are not on `origin` (Resource Timing sees every request).
    fn foreign_requests(&self, origin: &str) -> Vec<String> {
        let urls = self.execute(
            "return performance.getEntriesByType('resource').map(e => e.name);",
            json!([]),
        );
        urls.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|url| !url.starts_with(origin) && !url.starts_with("data:"))
            .map(str::to_string)
            .collect()
    }

    /// Saves a PNG of the whole page (the window grown to the page's height for the shot).
    fn screenshot(&self, folder: Option<&Path>, name: &str) {
        let Some(folder) = folder else { return };
        self.execute("window.scrollTo(0, 0);", json!([]));
        let rect = self.command("GET", "/window/rect", None);
        let height = self
            .execute(
                "return Math.ceil(document.documentElement.scrollHeight);",
                json!([]),
            )
            .as_u64()
            .unwrap_or(900)
            .clamp(400, 4000);
        self.command(
            "POST",
            "/window/rect",
            Some(json!({"width": rect["width"], "height": height})),
        );
        let data = self.command("GET", "/screenshot", None);
        self.command(
            "POST",
            "/window/rect",
            Some(json!({"width": rect["width"], "height": rect["height"]})),
        );
        let png = base64_decode(data.as_str().expect("base64 PNG"));
        std::fs::create_dir_all(folder).expect("the screenshot folder");
        let path = folder.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = std::panic::catch_unwind(|| http(self.address, "DELETE", &path, None));
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// The job progress bar's state, as the page left it.
fn progress(browser: &Browser) -> Value {
    browser.execute(
        "const p = document.getElementById('progress'); \
         return {role: p.getAttribute('role'), hidden: document.getElementById('progress-wrap').hidden, \
                 job: p.dataset.job || null, state: p.dataset.state || null, \
                 events: Number(p.dataset.events || 0), now: p.getAttribute('aria-valuenow'), \
                 max: p.getAttribute('aria-valuemax')};",
        json!([]),
    )
}

/// Errors in the browser log, leaving out the ones a test provokes on purpose.
fn errors(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e["level"] == json!("SEVERE"))
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn playground_draws_lime_and_attention_and_docs_list_the_routes() {
    let browser_tools = (
        find_program("GLASSBOX_CHROMIUM", &["chromium", "chromium-browser"]),
        find_program("GLASSBOX_CHROMEDRIVER", &["chromedriver"]),
    );
    let (Some(chromium), Some(chromedriver)) = browser_tools else {
        let required = std::env::var_os("CI").is_some()
            || std::env::var_os("GLASSBOX_REQUIRE_BROWSER").is_some();
        assert!(
            !required,
            "chromium and chromedriver are required here (CI or GLASSBOX_REQUIRE_BROWSER is \
             set); run scripts/install-browser.sh"
        );
        eprintln!(
            "SKIPPED: chromium or chromedriver not found; run scripts/install-browser.sh \
             (make test does)"
        );
        return;
    };
    let model = std::env::var_os("GLASSBOX_UI_E2E_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("tests/fixtures/tiny/tiny-bert-cls"));
    let shots = std::env::var_os("GLASSBOX_SCREENSHOTS").map(PathBuf::from);

    // Not 127.0.0.1 nor "localhost": pages that treat those specially (Swagger UI skips its
    // online validator there) must behave as on a real host.
    let server = Server::start(&model, [127, 0, 0, 2]);
    let base = server.base.clone();
    let browser = Browser::start(&chromium, &chromedriver);
    let (status, spec) = http(server.address, "GET", "/openapi.json", None);
    assert_eq!(status, 200, "/openapi.json");
    let has_route = |route: &str| spec["paths"][route]["post"].is_object();

    // The page loads and reads /info and /openapi.json.
    browser.goto(&format!("{base}/"));
    browser.wait_for(
        "the page to read /info",
        "return document.body.dataset.ready === '1';",
        json!([]),
    );
    let title = browser.execute("return document.title;", json!([]));
    assert_eq!(title, json!("glassbox playground"));

    // LIME: type the sentence, run, wait for the view.
    browser.type_into("#text", TEXT);
    browser.click("input[name=method][value=lime]");
    browser.type_into("#num_samples", &LIME_SAMPLES.to_string());
    browser.click("#run");
    browser.wait_for(
        "the LIME view",
        "return document.body.dataset.state === 'done' && document.body.dataset.method === 'lime' \
         && !document.getElementById('view-attribution').hidden;",
        json!([]),
    );
    let words = server.words.min(10); // LIME keeps 10 features by default
    assert_eq!(
        browser.count("#highlight .w"),
        words,
        "one highlighted word per LIME feature"
    );
    assert_eq!(
        browser.count("#bars rect.bar"),
        words,
        "one bar per LIME feature"
    );
    assert_eq!(browser.count("#legend svg"), 1, "a colour legend");
    let hover = browser.execute(
        "return Array.from(document.querySelectorAll('#highlight .w')).map(w => w.dataset.tip);",
        json!([]),
    );
    for tip in hover.as_array().unwrap() {
        let tip = tip.as_str().unwrap_or_default();
        assert!(
            tip.contains(": +") || tip.contains(": -") || tip.contains(": 0"),
            "each word's value is on hover: {tip:?}"
        );
    }
    let labels = browser.count("#prediction-body .prob");
    assert!(
        labels >= 2,
        "the prediction shows every label's probability"
    );
    browser.screenshot(shots.as_deref(), "lime");

    let jobs = spec["paths"]["/jobs"]["post"].is_object();
    if jobs {
        // LIME ran as a job: the progress bar ended at its final value, and the job the page
        // created is the one the server ran.
        let bar = progress(&browser);
        assert_eq!(bar["role"], json!("progressbar"), "{bar}");
        assert_eq!(
            bar["hidden"],
            json!(false),
            "the bar stays with the result: {bar}"
        );
        assert_eq!(bar["state"], json!("done"), "{bar}");
        assert!(
            bar["events"].as_u64().unwrap_or(0) >= 1,
            "progress events: {bar}"
        );
        let (now, max) = (bar["now"].as_str(), bar["max"].as_str());
        assert!(
            now.is_some() && now == max && max != Some("0"),
            "the bar reached its final value: {bar}"
        );
        let id = bar["job"].as_str().expect("the job's id on the bar");
        let (status, job) = http(server.address, "GET", &format!("/jobs/{id}"), None);
        assert_eq!(status, 200, "{job}");
        assert_eq!(job["method"], json!("lime"));
        assert_eq!(job["state"], json!("done"));
        assert_eq!(
            job["result"]["params"]["num_samples"],
            json!(LIME_SAMPLES),
            "the page's request ran as the job: {job}"
        );
        assert_eq!(
            job["progress"]["rows_done"].to_string(),
            max.unwrap(),
            "the bar shows the job's rows"
        );

        // A long job: watched while it runs (until 5% of its rows are done), then cancelled
        // from the page (DELETE /jobs/{id}).
        browser.type_into("#text", LONG_TEXT);
        browser.type_into("#num_samples", &LONG_SAMPLES.to_string());
        let started = Instant::now();
        browser.click("#run");
        let running = browser.wait_for(
            "the long job's progress",
            "const p = document.getElementById('progress'); \
             const now = Number(p.getAttribute('aria-valuenow')), max = Number(p.getAttribute('aria-valuemax')); \
             return document.body.dataset.state === 'busy' && p.dataset.state === 'running' \
               && now * 20 >= max && max > now ? p.dataset.job : null;",
            json!([]),
        );
        browser.screenshot(shots.as_deref(), "progress");
        // From the keyboard: Enter on the focused Cancel button; the focus then returns to
        // the run button.
        browser.execute("document.getElementById('cancel').focus();", json!([]));
        browser.press("\u{E007}", 1); // Enter
        browser.wait_for(
            "the page to show the cancellation",
            "return document.body.dataset.state === 'error' \
               && document.getElementById('status').textContent === 'Cancelled.' \
               && document.getElementById('cancel').hidden \
               && document.activeElement === document.getElementById('run');",
            json!([]),
        );
        eprintln!("long job cancelled after {:?}", started.elapsed());
        let id = running.as_str().unwrap();
        let (status, job) = http(server.address, "GET", &format!("/jobs/{id}"), None);
        assert_eq!(status, 200, "{job}");
        assert_eq!(
            job["state"],
            json!("cancelled"),
            "the server cancelled it: {job}"
        );
        let (done, total) = (
            job["progress"]["rows_done"].as_u64().unwrap(),
            job["progress"]["rows_total"].as_u64().unwrap(),
        );
        assert!(done < total, "cancelled before its rows were done: {job}");
        assert_eq!(
            browser.execute("return document.getElementById('error').hidden;", json!([])),
            json!(true),
            "a cancellation is not an error"
        );
        browser.type_into("#text", TEXT);
        browser.type_into("#num_samples", &LIME_SAMPLES.to_string());
    } else {
        eprintln!("jobs: not on this server yet; progress not checked");
    }

    // Attention: one head of the last layer, token granularity: an L x L heatmap.
    browser.click("input[name=method][value=attention]");
    browser.click("#run");
    browser.wait_for(
        "the attention view",
        "return document.body.dataset.state === 'done' && document.body.dataset.method === 'attention' \
         && document.querySelector('#heatmap svg') !== null;",
        json!([]),
    );
    let (layer, head) = (server.layers - 1, server.heads.min(3) - 1);
    browser.select("#att-view", "head");
    browser.select("#att-layer", &layer.to_string());
    browser.select("#att-head", &head.to_string());
    browser.wait_for(
        "the heatmap of the chosen layer and head",
        "const s = document.querySelector('#heatmap svg'); \
         return s !== null && document.body.dataset.state === 'done' && s.dataset.view === 'head' \
           && s.dataset.layer === String(arguments[0]) && s.dataset.head === String(arguments[1]);",
        json!([layer, head]),
    );
    let n = server.tokens;
    assert_eq!(
        browser.count("#heatmap rect.cell"),
        n * n,
        "an L x L heatmap for L = {n} tokens"
    );
    browser.screenshot(shots.as_deref(), "attention");

    // Rollout at word granularity: fewer entries, and the pooled row drawn over the text.
    browser.select("#att-granularity", "words");
    browser.select("#att-view", "rollout");
    browser.wait_for(
        "the rollout view",
        "const s = document.querySelector('#heatmap svg'); \
         return s !== null && document.body.dataset.state === 'done' && s.dataset.view === 'rollout' \
           && document.querySelector('#rollout-highlight') !== null;",
        json!([]),
    );
    let entries = browser.count("#heatmap rect.cell");
    let side = (entries as f64).sqrt() as usize;
    assert_eq!(side * side, entries, "a square rollout heatmap");
    assert!(
        side < n,
        "word granularity merges pieces ({side} entries for {n} tokens)"
    );

    // Head importance: one cell per (layer, head).
    browser.click("input[name=method][value=heads]");
    browser.click("#run");
    browser.wait_for(
        "the head-importance grid",
        "return document.body.dataset.state === 'done' && document.body.dataset.method === 'heads' \
         && document.querySelector('#heads-grid svg') !== null;",
        json!([]),
    );
    assert_eq!(
        browser.count("#heads-grid rect.cell"),
        server.layers * server.heads,
        "a layers x heads grid"
    );
    browser.screenshot(shots.as_deref(), "heads");

    // Counterfactuals: variants seeded from the text, evaluated, edited, evaluated again.
    browser.click("input[name=method][value=counterfactual]");
    browser.click("#run");
    let variants = browser.wait_for(
        "the evaluated variants",
        "const n = document.querySelectorAll('#cf-list li').length; \
         return document.body.dataset.state === 'done' && n > 0 \
           && document.querySelectorAll('#cf-list .cf-outcome[data-flipped]').length === n ? n : 0;",
        json!([]),
    );
    if has_route("/explain/counterfactual") {
        assert_eq!(
            browser.count("#cf-search h3"),
            1,
            "the flip search result is shown"
        );
    }
    browser.click("#cf-add");
    browser.type_into("#cf-list li:last-child textarea", "A dull, lifeless plot.");
    browser.click("#cf-eval");
    browser.wait_for(
        "the edited variant's prediction",
        "const n = document.querySelectorAll('#cf-list li').length; \
         return document.body.dataset.state === 'done' && n === arguments[0] + 1 \
           && document.querySelectorAll('#cf-list .cf-outcome[data-flipped]').length === n;",
        json!([variants]),
    );
    browser.screenshot(shots.as_deref(), "counterfactual");

    // Methods whose routes are still being added are checked once the server has them.
    for method in ["shap", "occlusion", "gradients"] {
        if !has_route(&format!("/explain/{method}")) {
            eprintln!("{method}: not on this server yet; not checked");
            continue;
        }
        browser.type_into("#text", TEXT);
        browser.click(&format!("input[name=method][value={method}]"));
        // Where the route takes `evaluate`, score faithfulness too.
        let evaluate = browser.execute(
            "const w = document.getElementById('evaluate-wrap'), c = document.getElementById('evaluate'); \
             if (w.hidden) return false; if (!c.checked) c.click(); return c.checked;",
            json!([]),
        ) == json!(true);
        browser.click("#run");
        browser.wait_for(
            &format!("the {method} view"),
            "return document.body.dataset.state !== 'busy' && document.body.dataset.method === arguments[0] \
             && (document.body.dataset.state === 'error' || !document.getElementById('view-attribution').hidden);",
            json!([method]),
        );
        let error = browser.execute(
            "const e = document.getElementById('error'); return e.hidden ? null : e.textContent;",
            json!([]),
        );
        assert_eq!(error, Value::Null, "{method} failed in the page");
        assert!(
            browser.count("#highlight .w") > 0 && browser.count("#bars rect.bar") > 0,
            "{method} draws highlighted words and bars"
        );
        if evaluate {
            let line = browser.execute(
                "const l = document.getElementById('attribution-faith'); \
                 return l.hidden ? null : [l.querySelector('.aopc-comp').textContent, \
                   l.querySelector('.aopc-suff').textContent, \
                   document.querySelectorAll('#faithfulness table').length];",
                json!([]),
            );
            let parsed: Vec<f64> = line
                .as_array()
                .unwrap_or_else(|| panic!("{method}: AOPC under the highlight"))
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.parse().unwrap_or(f64::NAN),
                    other => other.as_f64().unwrap_or(f64::NAN),
                })
                .collect();
            assert!(
                parsed[..2].iter().all(|v| v.is_finite()) && parsed[2] >= 1.0,
                "{method}: AOPC numbers and the faithfulness table: {line}"
            );
        } else {
            eprintln!("{method}: evaluate not on this route yet; faithfulness not checked");
        }
        browser.screenshot(shots.as_deref(), method);
    }
    browser.execute(
        "const c = document.getElementById('evaluate'); if (c.checked) c.click();",
        json!([]),
    );

    // Compare: one ranked row per method, each with its two scores and the words coloured.
    if has_route("/explain/compare") {
        browser.type_into("#text", TEXT);
        browser.click("input[name=method][value=compare]");
        let methods = browser.count("input[name=compare-method]:checked");
        assert!(methods >= 2, "several methods are compared by default");
        browser.click("#run");
        browser.wait_for(
            "the comparison",
            "return document.body.dataset.state !== 'busy' && document.body.dataset.method === 'compare' \
             && (document.body.dataset.state === 'error' || !document.getElementById('view-compare').hidden);",
            json!([]),
        );
        let error = browser.execute(
            "const e = document.getElementById('error'); return e.hidden ? null : e.textContent;",
            json!([]),
        );
        assert_eq!(error, Value::Null, "compare failed in the page");
        let rows = browser.execute(
            "return Array.from(document.querySelectorAll('#compare-table tbody tr')).map(tr => ({ \
               method: tr.dataset.method, rank: tr.querySelector('.rank').textContent, \
               comp: tr.querySelector('.comp').textContent, suff: tr.querySelector('.suff').textContent, \
               words: tr.querySelectorAll('.highlight .w').length }));",
            json!([]),
        );
        let rows = rows.as_array().expect("rows");
        assert_eq!(rows.len(), methods, "one row per method: {rows:?}");
        let mut last = f64::INFINITY;
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(
                row["rank"],
                json!(format!("#{}", i + 1)),
                "ranked rows: {row}"
            );
            let comp: f64 = row["comp"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .unwrap_or(f64::NAN);
            let suff: f64 = row["suff"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .unwrap_or(f64::NAN);
            assert!(
                comp.is_finite() && suff.is_finite(),
                "numbers in every row: {row}"
            );
            assert!(
                comp <= last + 1e-9,
                "ordered by comprehensiveness: {rows:?}"
            );
            last = comp;
            assert_eq!(
                row["words"],
                json!(server.words),
                "every word highlighted for each method: {row}"
            );
        }
        if jobs {
            let bar = progress(&browser);
            assert_eq!(bar["state"], json!("done"), "compare ran as a job: {bar}");
        }
        browser.screenshot(shots.as_deref(), "compare");
    } else {
        eprintln!("compare: not on this server yet; not checked");
    }

    let log = browser.log();
    let logged = errors(&log);
    assert!(
        logged.is_empty(),
        "the playground logged errors: {logged:#?}"
    );
    let foreign = browser.foreign_requests(&base);
    assert!(
        foreign.is_empty(),
        "the playground fetched from another origin: {foreign:?}"
    );

    // A refused request shows the API's own message; the browser's network line about the
    // 422 is the only log entry it leaves.
    browser.type_into("#text", TEXT);
    browser.click("input[name=method][value=lime]");
    browser.type_into("#num_samples", "1");
    browser.click("#run");
    let shown = browser.wait_for(
        "the API's error message",
        "const e = document.getElementById('error'); \
         return document.body.dataset.state === 'error' && !e.hidden && e.textContent;",
        json!([]),
    );
    let shown = shown.as_str().unwrap_or_default();
    assert!(
        shown.contains("num_samples") && shown.contains("validation_error"),
        "the error box shows the API's message and code: {shown:?}"
    );
    let unexpected: Vec<String> = errors(&browser.log())
        .into_iter()
        .filter(|m| !m.contains("422"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "errors other than the provoked 422: {unexpected:#?}"
    );

    // Phone width: nothing wider than the screen.
    browser.command(
        "POST",
        "/window/rect",
        Some(json!({"width": 390, "height": 844})),
    );
    browser.goto(&format!("{base}/ui"));
    browser.wait_for(
        "the page at phone width",
        "return document.body.dataset.ready === '1';",
        json!([]),
    );
    let overflow = browser.execute(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
        json!([]),
    );
    assert!(
        overflow.as_i64().unwrap_or(0) <= 0,
        "the page scrolls sideways at phone width by {overflow} px"
    );
    browser.screenshot(shots.as_deref(), "phone");
    if has_route("/explain/compare") {
        // The comparison at phone width, picked and run from the keyboard.
        browser.type_into("#text", TEXT);
        browser.click("input[name=method][value=lime]");
        // Arrow keys move through the radio group, from LIME to the last method (compare).
        let steps = browser.execute(
            "const r = Array.from(document.querySelectorAll('input[name=method]')); \
             return r.findIndex(i => i.value === 'compare') - r.findIndex(i => i.value === 'lime');",
            json!([]),
        );
        browser.press(
            "\u{E015}",
            steps.as_u64().expect("compare after lime") as usize,
        ); // ArrowDown
        browser.wait_for(
            "the compare method picked with the arrow keys",
            "return document.querySelector('input[name=method]:checked').value === 'compare' \
               && !document.querySelector('.compare-methods').hidden;",
            json!([]),
        );
        let text = browser.element("#text");
        browser.command(
            "POST",
            &format!("/element/{text}/value"),
            Some(json!({"text": "\u{E009}\u{E007}"})), // Ctrl+Enter runs
        );
        browser.wait_for(
            "the comparison at phone width",
            "return document.body.dataset.state === 'done' && document.body.dataset.method === 'compare' \
               && document.querySelectorAll('#compare-table tbody tr').length > 0;",
            json!([]),
        );
        let overflow = browser.execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            json!([]),
        );
        assert!(
            overflow.as_i64().unwrap_or(0) <= 0,
            "the comparison scrolls the page sideways at phone width by {overflow} px"
        );
        browser.screenshot(shots.as_deref(), "compare-phone");
    }
    browser.command(
        "POST",
        "/window/rect",
        Some(json!({"width": 1280, "height": 900})),
    );

    // The API reference renders offline and lists the routes.
    browser.goto(&format!("{base}/docs/"));
    let listed = browser.wait_for(
        "Swagger UI to list the routes",
        "const paths = Array.from(document.querySelectorAll('.opblock-summary-path')) \
           .map(p => p.textContent.replace(/\\u200b/g, '').trim()); \
         return paths.includes('/predict') && paths.includes('/explain/lime') ? paths : null;",
        json!([]),
    );
    for route in ["/predict", "/explain/lime", "/explain/attention", "/info"] {
        assert!(
            listed
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p.as_str() == Some(route)),
            "/docs lists {route}: {listed}"
        );
    }
    browser.screenshot(shots.as_deref(), "docs");
    let log = browser.log();
    let logged = errors(&log);
    let foreign = browser.foreign_requests(&base);
    assert!(
        logged.is_empty() && foreign.is_empty(),
        "/docs must render offline (Swagger UI's online validator badge is switched off with \
         validator_url(\"none\")); errors: {logged:#?}; requests to other origins: {foreign:?}"
    );
}
