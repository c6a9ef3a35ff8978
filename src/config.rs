//! One typed configuration for the whole service.
//!
//! Sources, later ones winning: built-in defaults < a TOML file (`--config FILE`) <
//! environment variables < command-line flags. Environment variables are named
//! `GLASSBOX_<SECTION>__<SETTING>` with a double underscore between section and setting, e.g.
//! `GLASSBOX_ENGINE__MAX_BATCH_TOKENS=4096` or `GLASSBOX_SERVER__PORT=9000`. Only names with
//! a double underscore are read, so helper variables such as `GLASSBOX_MODEL_DIR` (used by the
//! scripts) never collide with settings.
//!
//! `config/default.toml` lists every setting with its default; the doc comment of each field
//! below is the explanation shown there. [`Config::validate`] runs at start and names the
//! setting and the fix for anything that cannot work.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::engine::EngineConfig;
use crate::model::config::ZeroShotConfig;
use crate::model::loader::Precision;
use crate::model::ModelInfo;
use crate::telemetry::{log_filter, LogFormat};

/// Every setting of the service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub model: ModelConfig,
    pub engine: EngineConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub jobs: JobsConfig,
}

/// The HTTP side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. The default answers only this machine; use `0.0.0.0` in a
    /// container or behind a gateway.
    pub host: String,
    /// TCP port (0 picks a free one, which the start-up log reports).
    pub port: u16,
    /// Deadline of one request in milliseconds. Past it the client gets 504 and the request's
    /// queued model work is dropped, so a slow request cannot hold the queue.
    pub request_timeout_ms: u64,
    /// On SIGTERM or Ctrl-C, how long in-flight requests may take to finish (milliseconds)
    /// before the process exits anyway.
    pub shutdown_grace_ms: u64,
    /// Largest request body accepted, in bytes; larger bodies get 413 before being read whole.
    pub max_body_bytes: usize,
    /// Browser origins allowed to call the API from another site (CORS), e.g.
    /// `["https://dashboards.example.com"]`. Empty: no CORS headers, so browsers only allow
    /// same-origin pages such as the built-in playground.
    pub cors_allowed_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            request_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
            max_body_bytes: 1024 * 1024,
            cors_allowed_origins: Vec::new(),
        }
    }
}

/// Which model to serve and how to run it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A local Hugging Face folder (`config.json`, `tokenizer.json`, `model.safetensors`) or a
    /// hub id. `make model` fetches the default.
    pub source: String,
    /// Threads used inside one matrix product. 0 means all cores, the right choice with one
    /// model thread; with several model threads, divide the cores between them.
    pub intra_op_threads: usize,
    /// The zero-shot head for sentence-embedding checkpoints that have no classification head
    /// (ignored for checkpoints that have one).
    pub zero_shot: ZeroShotConfig,
    /// How the dense layers of inference multiply f32 matrices, as PyTorch's
    /// `set_float32_matmul_precision`: `highest` (f32 products), `high` (default: each f32 as
    /// two bf16 terms on Intel AMX tiles) or `medium` (bf16). Without AMX, `high` and
    /// `medium` run as `highest`. Gradient methods use `high` products under `high`, f32 otherwise.
    pub matmul_precision: Precision,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            source: "models/all-MiniLM-L6-v2".into(),
            intra_op_threads: 0,
            zero_shot: ZeroShotConfig::default(),
            matmul_precision: Precision::High,
        }
    }
}

/// Caps on what one request may ask for, reported by `/info`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest input in tokens, special tokens included. 0 means the model's maximum (512 for
    /// BERT); longer texts get 422 unless the request sets `truncate`. Every text the model
    /// sees meets it, including the perturbed and edited texts of LIME, SHAP, occlusion and
    /// counterfactuals.
    pub max_input_tokens: usize,
    /// Most perturbed samples one explanation may ask for (LIME, SHAP): each is a model row.
    pub max_num_samples: usize,
    /// Most attention numbers one response may carry (`layers x heads x tokens x tokens` before
    /// selection), so a response cannot grow to gigabytes.
    pub max_attention_values: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_input_tokens: 0,
            max_num_samples: 20_000,
            max_attention_values: 2_000_000,
        }
    }
}

/// Asynchronous jobs (`POST /jobs`): long explanations run in the background, with progress.
/// Jobs and their results live in this process's memory only: a restart loses them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// Jobs queued or running at once; beyond it `POST /jobs` answers 503 with Retry-After.
    pub max_live_jobs: usize,
    /// Jobs running at once (the rest wait in state `queued`), so background work cannot
    /// crowd synchronous requests out of the model queue.
    pub max_running_jobs: usize,
    /// Jobs kept in memory, live or finished with their results; beyond it `POST /jobs`
    /// answers 503 with Retry-After until a result expires. Results are held as JSON, so size
    /// this to the memory a result may take (an attention response can be megabytes).
    pub max_stored_results: usize,
    /// Seconds a finished job (result, error or cancellation) is kept, then forgotten (404).
    pub result_ttl_s: u64,
    /// Deadline of one job in milliseconds, counted from when it starts running; meant to be
    /// longer than `server.request_timeout_ms`. Past it the job fails with `timeout` and its
    /// queued model work is dropped.
    pub timeout_ms: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_live_jobs: 64,
            max_running_jobs: 2,
            max_stored_results: 256,
            result_ttl_s: 600,
            timeout_ms: 600_000,
        }
    }
}

/// Logging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
    /// A tracing filter: a level (`info`) or per-module levels (`info,glassbox=debug`).
    /// Submitted text is only ever logged at `debug` or below.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Who may call the service, and how often.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A file with one API key per line (`#` starts a comment). When it or `api_keys` gives any
    /// key, every route except `exempt_paths` needs `Authorization: Bearer <key>`, else 401.
    /// Keys are compared in constant time and never logged or reported.
    pub api_keys_file: String,
    /// API keys given directly, separated by commas; meant for the environment
    /// (`GLASSBOX_AUTH__API_KEYS`, e.g. from a Kubernetes Secret), not for files in git.
    pub api_keys: String,
    /// Routes that never need a key: probes, the scraper, and the static pages (the playground
    /// and the API reference; their API calls still need a key). An entry ending in `/*` is a
    /// prefix.
    pub exempt_paths: Vec<String>,
    /// Requests per second allowed per API key (per client address when no keys are
    /// configured); beyond it 429 with Retry-After. 0 switches rate limiting off.
    pub rate_limit_per_second: f64,
    /// Requests a key may make at once above the steady rate.
    pub rate_limit_burst: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            api_keys_file: String::new(),
            api_keys: String::new(),
            exempt_paths: [
                "/health",
                "/ready",
                "/metrics",
                "/",
                "/ui",
                "/ui/*",
                "/docs",
                "/docs/*",
                "/openapi.json",
            ]
            .map(String::from)
            .to_vec(),
            rate_limit_per_second: 0.0,
            rate_limit_burst: 20,
        }
    }
}

/// Never prints the keys.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("api_keys_file", &self.api_keys_file)
            .field(
                "api_keys",
                &if self.api_keys.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("exempt_paths", &self.exempt_paths)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .finish()
    }
}

/// Settings given on the command line; `None` leaves the value from the other sources.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub model: Option<String>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub workers: Option<usize>,
    pub max_batch_tokens: Option<usize>,
    pub max_batch_rows: Option<usize>,
    pub max_queued_rows: Option<usize>,
    pub cache_rows: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub intra_op_threads: Option<usize>,
    pub matmul_precision: Option<Precision>,
}

impl Overrides {
    /// The overrides as a nested document shaped like [`Config`], only where set.
    fn to_document(&self) -> serde_json::Value {
        let mut doc = serde_json::json!({});
        put(&mut doc, "server", "host", &self.host);
        put(&mut doc, "server", "port", &self.port);
        put(
            &mut doc,
            "server",
            "request_timeout_ms",
            &self.request_timeout_ms,
        );
        put(&mut doc, "model", "source", &self.model);
        put(
            &mut doc,
            "model",
            "intra_op_threads",
            &self.intra_op_threads,
        );
        put(
            &mut doc,
            "model",
            "matmul_precision",
            &self.matmul_precision,
        );
        put(&mut doc, "log", "format", &self.log_format);
        put(&mut doc, "log", "level", &self.log_level);
        put(&mut doc, "engine", "workers", &self.workers);
        put(
            &mut doc,
            "engine",
            "max_batch_tokens",
            &self.max_batch_tokens,
        );
        put(&mut doc, "engine", "max_batch_rows", &self.max_batch_rows);
        put(&mut doc, "engine", "max_queued_rows", &self.max_queued_rows);
        put(&mut doc, "engine", "cache_rows", &self.cache_rows);
        doc
    }
}

fn put<T: Serialize>(doc: &mut serde_json::Value, section: &str, key: &str, value: &Option<T>) {
    if let Some(value) = value {
        doc[section][key] = serde_json::to_value(value).expect("plain values serialize");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Limits in force once the model is known (what `/info` reports and handlers enforce).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveLimits {
    pub max_input_tokens: usize,
    pub max_num_samples: usize,
    pub max_attention_values: usize,
}

impl Config {
    /// Reads defaults, then `file` (if given; it must exist), then `GLASSBOX_*` environment
    /// variables, then `overrides`; validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        if let Some(file) = file.filter(|f| !f.is_file()) {
            return Err(ConfigError::Invalid(format!(
                "the configuration file {} (--config) does not exist; check the path",
                file.display()
            )));
        }
        let config: Config = Self::figment(file, overrides).extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// The layered sources, exposed so tests can inspect where a value came from.
    pub fn figment(file: Option<&Path>, overrides: &Overrides) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(
                Env::prefixed("GLASSBOX_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__"),
            )
            .merge(Serialized::defaults(overrides.to_document()))
    }

    /// Checks settings that cannot work; the message names the setting and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        let (server, engine, limits) = (&self.server, &self.engine, &self.limits);
        if server.host.trim().is_empty() {
            return invalid(
                "server.host is empty; set an address such as 127.0.0.1 or 0.0.0.0".into(),
            );
        }
        if server.request_timeout_ms == 0 {
            return invalid(
                "server.request_timeout_ms must be above 0; 30000 (30 s) is a sensible value"
                    .into(),
            );
        }
        if server.max_body_bytes < 1024 {
            return invalid(format!(
                "server.max_body_bytes is {} bytes, too small for any request; use at least 1024 (default 1048576)",
                server.max_body_bytes
            ));
        }
        if self.model.source.trim().is_empty() {
            return invalid(
                "model.source is empty; give a model folder or hub id (--model PATH_OR_HUB_ID)"
                    .into(),
            );
        }
        self.model
            .zero_shot
            .validate()
            .map_err(ConfigError::Invalid)?;
        if engine.workers == 0 {
            return invalid(
                "engine.workers must be at least 1 (one model thread is the right choice on CPU)"
                    .into(),
            );
        }
        if engine.max_batch_rows == 0 {
            return invalid("engine.max_batch_rows must be at least 1 (default 64)".into());
        }
        if engine.max_queued_rows < engine.max_batch_rows {
            return invalid(format!(
                "engine.max_queued_rows ({}) is below engine.max_batch_rows ({}): batches could never fill; raise max_queued_rows",
                engine.max_queued_rows, engine.max_batch_rows
            ));
        }
        if engine.max_queued_rows < limits.max_num_samples {
            return invalid(format!(
                "engine.max_queued_rows ({}) is below limits.max_num_samples ({}): a request at the sample limit could \
                 never be admitted; raise engine.max_queued_rows or lower limits.max_num_samples",
                engine.max_queued_rows, limits.max_num_samples
            ));
        }
        if limits.max_input_tokens != 0 && engine.max_batch_tokens < limits.max_input_tokens {
            return invalid(format!(
                "engine.max_batch_tokens ({}) is below limits.max_input_tokens ({}): the longest input would not fit \
                 in a batch; raise engine.max_batch_tokens",
                engine.max_batch_tokens, limits.max_input_tokens
            ));
        }
        let auth = &self.auth;
        if !(auth.rate_limit_per_second.is_finite() && auth.rate_limit_per_second >= 0.0) {
            return invalid(format!(
                "auth.rate_limit_per_second must be 0 (off) or a positive number of requests per second (got {})",
                auth.rate_limit_per_second
            ));
        }
        if auth.rate_limit_per_second > 0.0 && auth.rate_limit_burst == 0 {
            return invalid(
                "auth.rate_limit_burst must be at least 1 when rate limiting is on (default 20)"
                    .into(),
            );
        }
        if !auth.api_keys_file.is_empty() && !Path::new(&auth.api_keys_file).is_file() {
            return invalid(format!(
                "auth.api_keys_file {} does not exist; create it (one key per line) or leave the setting empty",
                auth.api_keys_file
            ));
        }
        if let Some(origin) = server
            .cors_allowed_origins
            .iter()
            .find(|o| axum::http::HeaderValue::from_str(o).is_err() || !o.contains("://"))
        {
            return invalid(format!(
                "server.cors_allowed_origins: \"{origin}\" is not an origin; use the form https://host[:port]"
            ));
        }
        if limits.max_num_samples < 2 {
            return invalid("limits.max_num_samples must be at least 2 (default 20000)".into());
        }
        if limits.max_attention_values == 0 {
            return invalid("limits.max_attention_values must be above 0 (default 2000000)".into());
        }
        let jobs = &self.jobs;
        if jobs.max_live_jobs == 0 || jobs.max_running_jobs == 0 {
            return invalid(
                "jobs.max_live_jobs and jobs.max_running_jobs must be at least 1 (defaults 64 and 2)"
                    .into(),
            );
        }
        if jobs.max_stored_results < jobs.max_live_jobs {
            return invalid(format!(
                "jobs.max_stored_results ({}) is below jobs.max_live_jobs ({}): every live job keeps its result when it \
                 finishes; raise jobs.max_stored_results",
                jobs.max_stored_results, jobs.max_live_jobs
            ));
        }
        if jobs.result_ttl_s == 0 || jobs.timeout_ms == 0 {
            return invalid(
                "jobs.result_ttl_s and jobs.timeout_ms must be above 0 (defaults 600 and 600000)"
                    .into(),
            );
        }
        if let Err(e) = log_filter(&self.log.level) {
            return invalid(format!(
                "log.level \"{}\" is not a valid filter ({e}); use a level such as info or a list such as info,glassbox=debug",
                self.log.level
            ));
        }
        Ok(())
    }

    /// Resolves limits that depend on the model (0 = the model's maximum) and checks they fit it.
    pub fn effective_limits(&self, model: &ModelInfo) -> Result<EffectiveLimits, ConfigError> {
        let max_input_tokens = match self.limits.max_input_tokens {
            0 => model.max_len,
            n if n > model.max_len => {
                return Err(ConfigError::Invalid(format!(
                    "limits.max_input_tokens ({n}) exceeds the model's maximum of {} tokens; lower it or set 0 for the \
                     model's maximum",
                    model.max_len
                )))
            }
            n => n,
        };
        if self.engine.max_batch_tokens < max_input_tokens {
            return Err(ConfigError::Invalid(format!(
                "engine.max_batch_tokens ({}) is below the longest input ({max_input_tokens} tokens): it would not fit in \
                 a batch; raise engine.max_batch_tokens or lower limits.max_input_tokens",
                self.engine.max_batch_tokens
            )));
        }
        Ok(EffectiveLimits {
            max_input_tokens,
            max_num_samples: self.limits.max_num_samples,
            max_attention_values: self.limits.max_attention_values,
        })
    }
}
