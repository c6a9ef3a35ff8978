//! glassbox: an HTTP service that explains what a BERT text classifier does.
pub mod api;
pub mod cli;
pub mod config;
pub mod engine;
pub mod explain;
pub mod model;
pub mod telemetry;
