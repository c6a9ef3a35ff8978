//! The `glassbox` binary: parse arguments and configuration, set up telemetry, load the model,
//! then serve (or answer once). Everything else lives in the library.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use glassbox::api::{self, dto::Prediction, scope::row_of, AppState};
use glassbox::cli::{Cli, Command, PredictArgs, ServeArgs};
use glassbox::config::Config;
use glassbox::model::loader::LoadOptions;
use glassbox::model::{load_model, LoadedModel};
use glassbox::telemetry;

/// mimalloc keeps freed pages for reuse: with the system allocator every large tensor of a
/// forward pass was a fresh mmap, and page faults took about a tenth of inference time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    fn mi_option_get(option: std::os::raw::c_int) -> std::os::raw::c_long;
    fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
}

/// `mi_option_purge_delay` in the `mi_option_t` of the mimalloc that `libmimalloc-sys` builds
/// (index 15 in v2, default 10 ms, and in v3, default 1000 ms).
const MI_OPTION_PURGE_DELAY: std::os::raw::c_int = 15;

/// By default mimalloc gives freed pages back to the OS soon after they are freed. The
/// gradient path (integrated gradients' backward pass over a batch of 52 rows) frees and
/// reallocates hundreds of megabytes of activations and gradients, op after op: each reuse
/// then faulted in and zeroed fresh pages, a third of the CPU time
/// of an IG request (measured with perf: `clear_page_erms`). Keep freed pages instead (the
/// peak is bounded by the batch caps). `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn keep_freed_pages() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: plain option accessors of the linked allocator, called before any other thread
    // exists. The default is checked first, so a different option layout is left alone.
    unsafe {
        if matches!(mi_option_get(MI_OPTION_PURGE_DELAY), 10 | 1000) {
            mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        }
    }
}

fn main() -> ExitCode {
    keep_freed_pages();
    let result = match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Predict(args) => predict(args),
        Command::Openapi => {
            print!("{}", api::openapi::document_json());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads and validates the configuration, installs logging and the intra-op thread count.
/// Runs before any thread exists, because the thread count is read from the environment.
fn configure(
    file: Option<&std::path::Path>,
    overrides: &glassbox::config::Overrides,
) -> anyhow::Result<Config> {
    let config = Config::load(file, overrides)?;
    telemetry::init_logging(config.log.format, &config.log.level).map_err(anyhow::Error::msg)?;
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // candle's own element-wise ops split every tensor over a pool whose caller spins
        // until the others finish. The gradient path runs hundreds of them per request, so
        // that spinning doubled integrated gradients' CPU time (more on a busy machine).
        // Run them on the calling thread; matrix products and our kernels (the whole
        // inference path) still use `intra_op_threads`.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if config.model.intra_op_threads > 0 {
        // candle sizes its thread pool from the variable rayon reads.
        std::env::set_var(
            "RAYON_NUM_THREADS",
            config.model.intra_op_threads.to_string(),
        );
    }
    Ok(config)
}

fn load(config: &Config) -> anyhow::Result<LoadedModel> {
    tracing::info!(source = %config.model.source, "loading model");
    let loaded = load_model(
        &config.model.source,
        &config.model.zero_shot,
        &LoadOptions {
            precision: config.model.matmul_precision,
            ..LoadOptions::default()
        },
    )
    .with_context(|| {
        format!(
            "cannot load model \"{}\" (model.source, --model)",
            config.model.source
        )
    })?;
    let info = loaded.info();
    tracing::info!(id = %info.id, architecture = %info.architecture, head = %info.head, labels = ?info.labels, matmul_precision = loaded.precision.name(), "model loaded");
    Ok(loaded)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = configure(args.common.config.as_deref(), &args.overrides())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let loaded = load(&config)?;
        // /info reports the precision in force (`high` falls back to `highest` without AMX).
        let mut config = config;
        config.model.matmul_precision = loaded.precision;
        let (host, port) = (config.server.host.clone(), config.server.port);
        let grace = Duration::from_millis(config.server.shutdown_grace_ms);
        let state = AppState::with_gradients(
            config,
            loaded.classifier,
            Some(loaded.encoder_classifier),
            loaded.encoder,
        )?;
        let listener = tokio::net::TcpListener::bind((host.as_str(), port))
            .await
            .with_context(|| {
                format!("cannot listen on {host}:{port} (server.host, server.port)")
            })?;
        tracing::info!(address = %listener.local_addr()?, "listening; ready once warm-up finishes");

        // Serve /health while warming up; /ready turns 200 when done.
        let warming = state.clone();
        tokio::spawn(async move {
            match warming.warm_up().await {
                Ok(took) => tracing::info!(warm_up_ms = took.as_millis() as u64, "ready"),
                Err(error) => tracing::error!(%error, "warm-up failed; /ready stays 503"),
            }
        });
        api::serve(
            listener,
            api::app(state.clone()),
            api::termination_signal(),
            grace,
        )
        .await?;
        state.engine.shutdown();
        tracing::info!("stopped");
        Ok(())
    })
}

/// One line of `glassbox predict` output.
#[derive(serde::Serialize)]
struct PredictLine<'a> {
    text: &'a str,
    label: &'a str,
    probabilities: &'a std::collections::BTreeMap<String, f32>,
}

fn predict(args: PredictArgs) -> anyhow::Result<()> {
    let config = configure(args.common.config.as_deref(), &args.common.overrides())?;
    let loaded = load(&config)?;
    // The service's limits.max_input_tokens guards a shared server; here the model's own
    // maximum (enforced by the encoder) is the only limit.
    let encodings = args
        .texts
        .iter()
        .map(|text| loaded.encoder.encode(text, args.truncate))
        .collect::<Result<Vec<_>, _>>()?;
    let rows: Vec<_> = encodings.iter().map(row_of).collect();
    let labels = &loaded.info().labels;
    let mut texts = args.texts.iter().zip(&encodings);
    for chunk in rows.chunks(config.engine.max_batch_rows) {
        for output in loaded.classifier.forward(chunk)? {
            let (text, encoding) = texts.next().expect("one output per row");
            let prediction = Prediction::new(labels, &output, encoding.len(), encoding.truncated);
            let line = PredictLine {
                text,
                label: &prediction.label,
                probabilities: &prediction.probabilities,
            };
            let line = serde_json::to_string(&line)?;
            println!("{line}");
        }
    }
    Ok(())
}
