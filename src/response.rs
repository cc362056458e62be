//! Responses that idgate makes itself, in the form the client expects: a short HTML page
//! for a browser, JSON for everything else. Internal details never go here; they go to
//! the log under the same request id.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use crate::proxy::tunnel::GuardedBody;
use crate::session::model::RevokeReason;

/// The body of every response idgate sends: a streamed upstream body, or one it made.
pub type Body = Either<GuardedBody, Full<Bytes>>;

/// A body idgate made itself.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Either::Right(Full::new(bytes.into()))
}

/// Whether the client prefers HTML: its `Accept` lists `text/html` with a non-zero q.
pub fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("text/html")
                && !parts.any(|p| {
                    let p = p.trim();
                    p.strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q == 0.0)
                })
        })
}

fn base(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Error and identity responses are per-user and per-moment; no cache may keep them.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    json_as(status, "application/json", value)
}

/// A JSON response under another JSON media type (SCIM's `application/scim+json`).
pub fn json_as(
    status: StatusCode,
    content_type: &'static str,
    value: &serde_json::Value,
) -> Response<Body> {
    base(status, content_type, full(value.to_string()))
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    base(status, "text/plain; charset=utf-8", full(body))
}

/// An error as an HTML page (`html` true; see [`crate::page`], with a link to the start
/// page as the next step) or as `{"error": code, "message": …, "request_id": …}`.
pub fn error(
    status: StatusCode,
    html: bool,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response<Body> {
    if html {
        crate::page::Page::for_error(status, code, message)
            .step(crate::page::Step::home())
            .reference(request_id)
            .into_response()
    } else {
        json(
            status,
            &serde_json::json!({"error": code, "message": message, "request_id": request_id}),
        )
    }
}

/// 403 naming why the session no longer works: the same answer whether the gate, the
/// session endpoint or a login found it.
pub fn forbidden(reason: RevokeReason, html: bool, request_id: &str) -> Response<Body> {
    error(
        StatusCode::FORBIDDEN,
        html,
        reason.code(),
        reason.message(),
        request_id,
    )
}

/// 503 while the store cannot vouch for sessions; clients may retry shortly.
pub fn store_unavailable(html: bool, request_id: &str) -> Response<Body> {
    let mut resp = error(
        StatusCode::SERVICE_UNAVAILABLE,
        html,
        "store_unavailable",
        "Sign-in is temporarily unavailable. Please try again shortly.",
        request_id,
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    resp
}

/// A 302 to a same-origin location (callers build the location; never from raw input).
pub fn redirect(location: &str) -> Response<Body> {
    let mut resp = base(StatusCode::FOUND, "text/plain; charset=utf-8", full(""));
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Escapes text for an HTML element body or attribute.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn html_is_preferred_only_when_listed() {
        assert!(accepts_html(&accept(
            "text/html,application/xhtml+xml,*/*;q=0.8"
        )));
        assert!(accepts_html(&accept("application/json, TEXT/HTML;q=0.5")));
        assert!(!accepts_html(&accept("*/*")));
        assert!(!accepts_html(&accept("application/json")));
        assert!(!accepts_html(&accept("text/html;q=0")));
        assert!(!accepts_html(&HeaderMap::new()));
    }

    #[test]
    fn html_errors_escape_their_text() {
        assert_eq!(
            escape_html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
