//! The browser playground (`GET /`, `GET /ui`): type a text, pick a method, see the explanation
//! drawn. Plain HTML, CSS and JavaScript embedded in the binary, so the page works on an
//! air-gapped machine: no CDN, no build step, no request leaves the service's origin (the
//! Content-Security-Policy below makes the browser enforce that).
//!
//! The page only talks to the public JSON API (`/info`, `/openapi.json`, `/predict`,
//! `/explain/*`, `/jobs`), as any client would; it reads `/openapi.json` to learn which routes
//! and parameters this server has, so methods still being added show as unavailable rather than
//! failing. Long methods (LIME, SHAP, head sweeps, comparisons) run as jobs: the page follows
//! `GET /jobs/{id}/events` with `fetch` (same origin, so `connect-src 'self'` allows it, and the
//! API key goes in a header, which `EventSource` cannot send) and cancels with `DELETE`.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("static/index.html");
const APP_JS: &str = include_str!("static/app.js");
const STYLE_CSS: &str = include_str!("static/style.css");
const FAVICON_SVG: &str = include_str!("static/favicon.svg");

/// Everything from this origin, nothing from anywhere else; no inline script or style
/// attributes (the scripts set styles through the CSSOM, which the policy allows).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The playground's routes; merged into [`crate::api::app`].
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/app.js", get(app_js))
        .route("/ui/style.css", get(style_css))
        .route("/ui/favicon.svg", get(favicon))
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON_SVG)
}

/// A static asset with its type and the page's security headers. `no-cache`: the browser
/// revalidates, so a new binary's page is never mixed with an old script.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_another_origin() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("style.css", STYLE_CSS),
        ] {
            for needle in ["http://", "https://", "//cdn", "@import"] {
                // The SVG namespace is an identifier, never fetched.
                let hits = text
                    .match_indices(needle)
                    .filter(|(i, _)| !text[*i..].starts_with("http://www.w3.org/"))
                    .count();
                assert_eq!(hits, 0, "{name} mentions {needle}");
            }
        }
    }

    #[test]
    fn the_policy_lets_the_page_follow_job_events_on_its_own_origin_only() {
        // The job event stream and DELETE /jobs/{id} are fetches: connect-src governs them.
        let connect = CONTENT_SECURITY_POLICY
            .split(';')
            .map(str::trim)
            .find(|d| d.starts_with("connect-src"))
            .expect("a connect-src directive");
        assert_eq!(connect, "connect-src 'self'");
        for path in ["\"/jobs\"", "/events`", "method: \"DELETE\""] {
            assert!(APP_JS.contains(path), "app.js uses {path}");
        }
    }

    #[test]
    fn the_page_references_only_its_embedded_assets() {
        for path in ["/ui/app.js", "/ui/style.css", "/ui/favicon.svg"] {
            assert!(INDEX_HTML.contains(path), "index.html links {path}");
        }
    }
}
