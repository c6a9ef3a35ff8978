//! Configuration: the documented defaults file, the precedence of sources, and validation
//! messages that name the setting and the fix.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use clap::Parser;
use figment::providers::{Format, Toml};
use figment::Figment;
use glassbox::cli::{Cli, Command};
use glassbox::config::{Config, ConfigError, Overrides};
use glassbox::model::toy::{ToyClassifier, ToyOutput};
use glassbox::model::Classifier;

/// Environment variables are process-wide: tests that read or write them take turns.
fn env_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sets variables for one test and removes them afterwards, even if it fails.
struct EnvVars(Vec<&'static str>);

impl EnvVars {
    fn set(pairs: &[(&'static str, &str)]) -> Self {
        for (key, value) in pairs {
            std::env::set_var(key, value);
        }
        Self(pairs.iter().map(|(key, _)| *key).collect())
    }
}

impl Drop for EnvVars {
    fn drop(&mut self) {
        for key in &self.0 {
            std::env::remove_var(key);
        }
    }
}

fn toml_file(content: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(content.as_bytes()).unwrap();
    file
}

fn invalid_message(result: Result<Config, ConfigError>) -> String {
    match result {
        Err(ConfigError::Invalid(message)) => message,
        other => panic!("expected an invalid configuration, got {other:?}"),
    }
}

#[test]
fn default_toml_lists_every_setting_with_its_default() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    // No defaults layered underneath: a setting missing from the file fails extraction.
    let from_file: Config = Figment::from(Toml::file_exact(&path))
        .extract()
        .expect("default.toml is complete");
    assert_eq!(from_file, Config::default());
    Config::default()
        .validate()
        .expect("the defaults are valid");
}

#[test]
fn flags_beat_environment_beats_file_beats_defaults() {
    let _lock = env_lock();
    let file = toml_file("[server]\nport = 9000\n[engine]\nworkers = 2\nmax_batch_rows = 32\n");
    let _env = EnvVars::set(&[
        ("GLASSBOX_SERVER__PORT", "9100"),
        ("GLASSBOX_ENGINE__MAX_BATCH_ROWS", "16"),
        // Script variables without a double underscore are not settings and must be ignored.
        ("GLASSBOX_MODEL_DIR", "/somewhere"),
    ]);
    let overrides = Overrides {
        port: Some(9200),
        ..Overrides::default()
    };
    let config = Config::load(Some(file.path()), &overrides).unwrap();
    assert_eq!(config.server.port, 9200, "flag");
    assert_eq!(config.engine.max_batch_rows, 16, "environment");
    assert_eq!(config.engine.workers, 2, "file");
    assert_eq!(config.server.host, "127.0.0.1", "default");
    assert_eq!(config.engine.max_batch_tokens, 8192, "default");
}

#[test]
fn nested_environment_variables_reach_deep_settings() {
    let _lock = env_lock();
    let _env = EnvVars::set(&[
        ("GLASSBOX_MODEL__ZERO_SHOT__TEMPERATURE", "0.05"),
        ("GLASSBOX_LOG__FORMAT", "json"),
        ("GLASSBOX_MODEL__SOURCE", "/models/other"),
    ]);
    let config = Config::load(None, &Overrides::default()).unwrap();
    assert_eq!(config.model.zero_shot.temperature, 0.05);
    assert_eq!(
        config.model.zero_shot.labels.len(),
        2,
        "the rest of the head keeps its defaults"
    );
    assert_eq!(config.log.format, glassbox::telemetry::LogFormat::Json);
    assert_eq!(config.model.source, "/models/other");
}

#[test]
fn unknown_settings_and_missing_files_are_errors() {
    let _lock = env_lock();
    let typo = toml_file("[engine]\nmax_batch_token = 10\n");
    let error = Config::load(Some(typo.path()), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(error.contains("max_batch_token"), "{error}");

    let error = Config::load(
        Some(Path::new("/nonexistent/glassbox.toml")),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(error.to_string().contains("glassbox.toml"), "{error}");

    let _env = EnvVars::set(&[("GLASSBOX_ENGINE__WORKERS", "many")]);
    let error = Config::load(None, &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(error.to_lowercase().contains("engine.workers"), "{error}");
}

#[test]
fn invalid_settings_name_the_setting_and_the_fix() {
    let _lock = env_lock();
    let load = |toml: &str| Config::load(Some(toml_file(toml).path()), &Overrides::default());
    let cases = [
        ("[engine]\nworkers = 0\n", "engine.workers"),
        ("[engine]\nmax_batch_rows = 0\n", "engine.max_batch_rows"),
        (
            "[engine]\nmax_queued_rows = 100\n",
            "raise engine.max_queued_rows",
        ),
        (
            "[engine]\nmax_batch_tokens = 100\n[limits]\nmax_input_tokens = 512\n",
            "raise engine.max_batch_tokens",
        ),
        (
            "[server]\nrequest_timeout_ms = 0\n",
            "server.request_timeout_ms",
        ),
        ("[server]\nmax_body_bytes = 10\n", "server.max_body_bytes"),
        ("[server]\nhost = \" \"\n", "server.host"),
        ("[model]\nsource = \"\"\n", "--model"),
        (
            "[model.zero_shot]\ntemperature = 0.0\n",
            "model.zero_shot.temperature",
        ),
        ("[limits]\nmax_num_samples = 1\n", "limits.max_num_samples"),
        ("[log]\nlevel = \"info,glassbox=loud\"\n", "log.level"),
        ("[jobs]\nmax_running_jobs = 0\n", "jobs.max_running_jobs"),
        (
            "[jobs]\nmax_live_jobs = 10\nmax_stored_results = 5\n",
            "raise jobs.max_stored_results",
        ),
        ("[jobs]\nresult_ttl_s = 0\n", "jobs.result_ttl_s"),
        ("[jobs]\ntimeout_ms = 0\n", "jobs.timeout_ms"),
    ];
    for (toml, expected) in cases {
        let message = invalid_message(load(toml));
        assert!(
            message.contains(expected),
            "{toml:?} gave {message:?}, which does not mention {expected:?}"
        );
    }
}

#[test]
fn limits_resolve_against_the_model() {
    let toy = ToyClassifier::new(
        vec!["a".into(), "b".into()],
        Default::default(),
        vec![0.0, 0.0],
        ToyOutput::Softmax,
    );
    let model = toy.info();
    let mut config = Config::default();
    assert_eq!(
        config.effective_limits(model).unwrap().max_input_tokens,
        model.max_len,
        "0 means the model's maximum"
    );
    config.limits.max_input_tokens = 64;
    assert_eq!(config.effective_limits(model).unwrap().max_input_tokens, 64);
    config.limits.max_input_tokens = model.max_len + 1;
    let error = config.effective_limits(model).unwrap_err().to_string();
    assert!(error.contains("limits.max_input_tokens"), "{error}");
    config.limits.max_input_tokens = 0;
    config.engine.max_batch_tokens = model.max_len - 1;
    let error = config.effective_limits(model).unwrap_err().to_string();
    assert!(error.contains("engine.max_batch_tokens"), "{error}");
}

#[test]
fn command_line_flags_become_overrides() {
    let _lock = env_lock();
    let cli = Cli::try_parse_from([
        "glassbox",
        "serve",
        "--model",
        "tests/fixtures/tiny/tiny-bert-cls",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--max-batch-rows",
        "1",
        "--log-format",
        "json",
    ])
    .unwrap();
    let Command::Serve(args) = cli.command else {
        panic!("parsed as serve")
    };
    let config = Config::load(args.common.config.as_deref(), &args.overrides()).unwrap();
    assert_eq!(config.model.source, "tests/fixtures/tiny/tiny-bert-cls");
    assert_eq!(
        (config.server.host.as_str(), config.server.port),
        ("0.0.0.0", 0)
    );
    assert_eq!(config.engine.max_batch_rows, 1);
    assert_eq!(config.log.format, glassbox::telemetry::LogFormat::Json);
    assert!(
        Cli::try_parse_from(["glassbox", "serve", "--port", "70000"]).is_err(),
        "ports are u16"
    );
    assert!(
        Cli::try_parse_from(["glassbox", "predict", "--model", "m"]).is_err(),
        "predict needs texts"
    );
}

#[test]
fn matmul_precision_comes_from_environment_or_flag_and_bad_values_are_refused() {
    use glassbox::model::loader::Precision;
    let _lock = env_lock();
    let defaults = Config::load(None, &Overrides::default()).unwrap();
    assert_eq!(defaults.model.matmul_precision, Precision::High);
    {
        let _env = EnvVars::set(&[("GLASSBOX_MODEL__MATMUL_PRECISION", "medium")]);
        let config = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(config.model.matmul_precision, Precision::Medium);
    }
    {
        let _env = EnvVars::set(&[("GLASSBOX_MODEL__MATMUL_PRECISION", "fp8")]);
        assert!(Config::load(None, &Overrides::default()).is_err());
    }
    let cli = Cli::try_parse_from(["glassbox", "serve", "--matmul-precision", "highest"]).unwrap();
    let Command::Serve(args) = cli.command else {
        panic!("parsed as serve")
    };
    let config = Config::load(None, &args.overrides()).unwrap();
    assert_eq!(config.model.matmul_precision, Precision::Highest);
    let Err(error) = Cli::try_parse_from(["glassbox", "serve", "--matmul-precision", "f16"]) else {
        panic!("f16 is not a matmul precision")
    };
    let error = error.to_string();
    assert!(error.contains("use highest, high or medium"), "{error}");
}
