//! Access control: optional API keys (bearer tokens) and per-key rate limiting.
//!
//! Keys come from `auth.api_keys_file` and `auth.api_keys`; each presented token is compared
//! with every configured key in constant time (on their sha256 digests, so lengths do not leak
//! either), and neither keys nor tokens are ever logged. Probes and scrapers
//! (`auth.exempt_paths`) pass without a key. Rate limiting is a token bucket per key (per
//! client address when no keys are configured) from the `governor` crate; over it the answer is
//! 429 `rate_limited` with `Retry-After`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::{AuthConfig, ConfigError};

/// The access rules in force, built once at start.
pub struct Access {
    /// sha256 digests of the configured keys.
    keys: Vec<[u8; 32]>,
    exempt_paths: Vec<String>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Access {
    /// Reads the keys (file and setting) and sets up the rate limiter.
    pub fn from_config(config: &AuthConfig) -> Result<Self, ConfigError> {
        let mut keys: Vec<String> = config
            .api_keys
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(String::from)
            .collect();
        if !config.api_keys_file.is_empty() {
            let text = std::fs::read_to_string(&config.api_keys_file).map_err(|e| {
                ConfigError::Invalid(format!(
                    "auth.api_keys_file {} cannot be read: {e}",
                    config.api_keys_file
                ))
            })?;
            keys.extend(
                text.lines()
                    .map(|l| l.split('#').next().unwrap_or("").trim())
                    .filter(|k| !k.is_empty())
                    .map(String::from),
            );
        }
        let limiter = (config.rate_limit_per_second > 0.0).then(|| {
            // governor counts whole cells per period: one request every 1/rate seconds.
            let period = std::time::Duration::from_secs_f64(1.0 / config.rate_limit_per_second);
            let burst = NonZeroU32::new(config.rate_limit_burst.max(1)).expect("at least 1");
            let quota = Quota::with_period(period)
                .expect("a positive rate gives a positive period")
                .allow_burst(burst);
            RateLimiter::keyed(quota)
        });
        Ok(Self {
            keys: keys.iter().map(|k| digest(k)).collect(),
            exempt_paths: config.exempt_paths.clone(),
            limiter,
        })
    }

    /// Whether any key is configured (reported by `/info`, without the keys).
    pub fn keys_required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The index of the key `token` matches, comparing with every key in constant time.
    fn key_index(&self, token: &str) -> Option<usize> {
        let presented = digest(token);
        let mut found = None;
        for (i, key) in self.keys.iter().enumerate() {
            if bool::from(key.ct_eq(&presented)) && found.is_none() {
                found = Some(i);
            }
        }
        found
    }

    /// Checks one request: `Ok(rate-limit key)` or the error to answer with.
    fn check(
        &self,
        path: &str,
        authorization: Option<&str>,
        client: Option<SocketAddr>,
    ) -> Result<(), ApiError> {
        if self.exempt_paths.iter().any(|p| exempt_matches(p, path)) {
            return Ok(());
        }
        let bucket = if self.keys_required() {
            let token = authorization
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim)
                .ok_or_else(|| {
                    ApiError::Unauthorized(
                        "an API key is required: send Authorization: Bearer <key>".into(),
                    )
                })?;
            match self.key_index(token) {
                Some(i) => format!("key:{i}"),
                None => return Err(ApiError::Unauthorized("the API key is not valid".into())),
            }
        } else {
            client
                .map(|c| format!("ip:{}", c.ip()))
                .unwrap_or_else(|| "anonymous".into())
        };
        if let Some(limiter) = &self.limiter {
            if let Err(not_until) = limiter.check_key(&bucket) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(ApiError::RateLimited {
                    retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
                });
            }
        }
        Ok(())
    }
}

/// An exempt entry is an exact path, or a prefix ending in `/*` (`/ui/*` covers `/ui/app.js`).
fn exempt_matches(entry: &str, path: &str) -> bool {
    match entry.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('/') => path.starts_with(prefix),
        _ => entry == path,
    }
}

/// The middleware: refuses requests without a valid key (401) or over their rate (429).
pub async fn guard(State(access): State<Arc<Access>>, request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    match access.check(request.uri().path(), authorization, client) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(keys: &str, rate: f64, burst: u32) -> Access {
        Access::from_config(&AuthConfig {
            api_keys: keys.into(),
            rate_limit_per_second: rate,
            rate_limit_burst: burst,
            ..AuthConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn keys_are_required_except_on_exempt_paths() {
        let a = access("alpha, beta", 0.0, 1);
        assert!(a.check("/predict", Some("Bearer alpha"), None).is_ok());
        assert!(a.check("/predict", Some("Bearer beta"), None).is_ok());
        assert!(matches!(
            a.check("/predict", Some("Bearer gamma"), None),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            a.check("/predict", Some("alpha"), None),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            a.check("/predict", None, None),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(a.check("/health", None, None).is_ok());
        assert!(a.check("/metrics", None, None).is_ok());
        // The playground and the API reference load without a key (their API calls need one).
        for page in [
            "/",
            "/ui",
            "/ui/app.js",
            "/docs/",
            "/docs/index.css",
            "/openapi.json",
        ] {
            assert!(a.check(page, None, None).is_ok(), "{page}");
        }
        assert!(a.check("/uix", None, None).is_err());
        assert!(a.check("/info", None, None).is_err());
    }

    #[test]
    fn no_keys_means_open_access() {
        let a = access("", 0.0, 1);
        assert!(!a.keys_required());
        assert!(a.check("/predict", None, None).is_ok());
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let a = access("alpha,beta", 0.5, 2);
        assert!(a.check("/predict", Some("Bearer alpha"), None).is_ok());
        assert!(a.check("/predict", Some("Bearer alpha"), None).is_ok());
        match a.check("/predict", Some("Bearer alpha"), None) {
            Err(ApiError::RateLimited { retry_after_s }) => {
                assert!((1..=2).contains(&retry_after_s))
            }
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(a.check("/predict", Some("Bearer beta"), None).is_ok());
    }

    #[test]
    fn keys_file_with_comments_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# operators\nalpha\n\n  beta  # dashboards\n").unwrap();
        let a = Access::from_config(&AuthConfig {
            api_keys_file: path.to_string_lossy().into(),
            ..AuthConfig::default()
        })
        .unwrap();
        assert!(a.check("/predict", Some("Bearer beta"), None).is_ok());
        assert!(a
            .check("/predict", Some("Bearer # operators"), None)
            .is_err());
    }
}
