//! Command-line arguments. Flags override every other configuration source; the setting each
//! one overrides is named in its help, and `config/default.toml` documents them all.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;
use crate::model::loader::Precision;
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "glassbox",
    version,
    about = "An HTTP service that explains what a BERT text classifier does"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (interactive reference at /docs once running).
    Serve(ServeArgs),
    /// Classify texts once and print one JSON object per text.
    Predict(PredictArgs),
    /// Print the OpenAPI document (what openapi/openapi.json holds).
    Openapi,
}

/// Flags every model-loading command shares.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// TOML configuration file; config/default.toml lists every setting.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Model folder or hub id [model.source].
    #[arg(long, value_name = "PATH_OR_HUB_ID")]
    pub model: Option<String>,
    /// Threads inside one matrix product, 0 for all cores [model.intra_op_threads].
    #[arg(long, value_name = "N")]
    pub intra_op_threads: Option<usize>,
    /// highest (f32 products), high (two bf16 terms per f32 on Intel AMX) or medium (bf16)
    /// [model.matmul_precision].
    #[arg(long, value_name = "highest|high|medium", value_parser = parse_precision)]
    pub matmul_precision: Option<Precision>,
    /// Log format [log.format].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter such as info or info,glassbox=debug [log.level].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

impl ConfigArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            model: self.model.clone(),
            intra_op_threads: self.intra_op_threads,
            matmul_precision: self.matmul_precision,
            log_format: self.log_format,
            log_level: self.log_level.clone(),
            ..Overrides::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    /// Address to listen on [server.host].
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on, 0 for any free port [server.port].
    #[arg(long)]
    pub port: Option<u16>,
    /// Request deadline in milliseconds [server.request_timeout_ms].
    #[arg(long, value_name = "MS")]
    pub request_timeout_ms: Option<u64>,
    /// Model threads [engine.workers].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Most rows x padded length per batch [engine.max_batch_tokens].
    #[arg(long, value_name = "N")]
    pub max_batch_tokens: Option<usize>,
    /// Most rows per batch; 1 switches batching off [engine.max_batch_rows].
    #[arg(long, value_name = "N")]
    pub max_batch_rows: Option<usize>,
    /// Most rows waiting for the model, over all requests [engine.max_queued_rows].
    #[arg(long, value_name = "N")]
    pub max_queued_rows: Option<usize>,
    /// Rows kept in the output cache, 0 for off [engine.cache_rows].
    #[arg(long, value_name = "N")]
    pub cache_rows: Option<usize>,
}

impl ServeArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            host: self.host.clone(),
            port: self.port,
            request_timeout_ms: self.request_timeout_ms,
            workers: self.workers,
            max_batch_tokens: self.max_batch_tokens,
            max_batch_rows: self.max_batch_rows,
            max_queued_rows: self.max_queued_rows,
            cache_rows: self.cache_rows,
            ..self.common.overrides()
        }
    }
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub common: ConfigArgs,
    /// Cut over-long texts to the maximum length instead of failing.
    #[arg(long)]
    pub truncate: bool,
    /// The texts to classify.
    #[arg(required = true, value_name = "TEXT")]
    pub texts: Vec<String>,
}

fn parse_precision(value: &str) -> Result<Precision, String> {
    match value {
        "highest" => Ok(Precision::Highest),
        "high" => Ok(Precision::High),
        "medium" => Ok(Precision::Medium),
        other => Err(format!(
            "{other:?} is not a matmul precision: use highest, high or medium"
        )),
    }
}
