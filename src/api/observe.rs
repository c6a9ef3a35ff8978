//! The per-request middleware: request id, one tracing span, metrics by route and status, and
//! the `x-request-id` and `x-total-time` headers on every response.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, histogram};
use tracing::Instrument;

use super::scope::{millis, round_ms};
use crate::telemetry::metric;

/// The id of the current request, in request extensions for handlers that want it.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// A client's id is echoed only if it is short printable ASCII: it goes into logs and headers.
fn acceptable_id(value: &HeaderValue) -> Option<String> {
    let id = value.to_str().ok()?;
    let printable = id.bytes().all(|b| b.is_ascii_graphic());
    (!id.is_empty() && id.len() <= 128 && printable).then(|| id.to_string())
}

pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(acceptable_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // The route pattern, not the path: metrics must not grow a series per URL a client invents.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = request.method().clone();
    request.extensions_mut().insert(RequestId(id.clone()));

    let span = tracing::info_span!("request", id = %id, method = %method, route = %route);
    let mut response = next.run(request).instrument(span.clone()).await;

    let elapsed = started.elapsed();
    let status = response.status();
    let labels = [("route", route), ("status", status.as_u16().to_string())];
    counter!(metric::HTTP_REQUESTS, &labels).increment(1);
    histogram!(metric::HTTP_SECONDS, &labels).record(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            ms = round_ms(elapsed.as_secs_f64() * 1e3),
            "request finished"
        )
    });

    let headers = response.headers_mut();
    headers.insert(
        "x-request-id",
        HeaderValue::from_str(&id).expect("checked printable ASCII"),
    );
    headers.insert("x-total-time", millis(elapsed.as_secs_f64() * 1e3));
    response
}
