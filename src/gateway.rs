//! The front door. Every request on the public listener passes through, in this order:
//! request id → strip spoofable headers → path sanity → reserved path? → public path? →
//! session gate → forward. Nothing reaches the upstream without crossing all of them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::config::Config;
use crate::metrics::{Metrics, RouteClass};
use crate::proxy::Upstream;
use crate::proxy::headers::{self as hh, IdentityHeaderPolicy};
use crate::response::{self, Body};
use crate::server::Handler;

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Characters kept literally in a `return_to` query value.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The public-listener handler.
pub struct Gateway {
    policy: IdentityHeaderPolicy,
    cookie_name: String,
    public_paths: Vec<String>,
    api_paths: Vec<String>,
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Lower-cased host (no port) → tenant id.
    hosts: HashMap<String, String>,
    default_tenant: Option<String>,
    /// `/maestrano/` is reserved only when some tenant is a Maestrano tenant, so apps that
    /// own such a path keep it otherwise.
    maestrano_reserved: bool,
    metrics: Arc<Metrics>,
}

/// The gateway as one worker thread runs it: the shared gateway plus that thread's own
/// upstream pool, so connections made on a thread are only ever used there.
pub struct GatewayWorker {
    gateway: Arc<Gateway>,
    upstream: Upstream,
}

impl GatewayWorker {
    /// A worker's handler; `upstream` is built on the worker's thread.
    pub fn new(gateway: Arc<Gateway>, upstream: Upstream) -> GatewayWorker {
        GatewayWorker { gateway, upstream }
    }
}

impl Gateway {
    /// Builds the gateway from a validated config.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Gateway {
        let mut hosts = HashMap::new();
        for t in &config.tenants {
            for h in &t.hosts {
                hosts.insert(h.clone(), t.id.clone());
            }
        }
        Gateway {
            policy: IdentityHeaderPolicy::new(config.identity.headers.all()),
            cookie_name: config.session.cookie_name.clone(),
            public_paths: config.access.public_paths.clone(),
            api_paths: config.access.api_paths.clone(),
            trusted_proxies: config.server.trusted_proxies.clone(),
            hosts,
            default_tenant: config.default_tenant().map(|t| t.id.clone()),
            maestrano_reserved: config.tenants.iter().any(|t| t.maestrano.is_some()),
            metrics,
        }
    }

    fn is_trusted(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }

    fn classify(&self, path: &str) -> RouteClass {
        if has_prefix(path, "/_idgate")
            || (self.maestrano_reserved && has_prefix(path, "/maestrano"))
        {
            RouteClass::Reserved
        } else if self.public_paths.iter().any(|p| has_prefix(path, p)) {
            RouteClass::Public
        } else {
            RouteClass::Proxied
        }
    }

    fn tenant_for(&self, host: Option<&str>) -> Option<&str> {
        host.map(strip_port)
            .and_then(|h| {
                if h.bytes().any(|b| b.is_ascii_uppercase()) {
                    self.hosts.get(&h.to_ascii_lowercase())
                } else {
                    self.hosts.get(h)
                }
            })
            .or(self.default_tenant.as_ref())
            .map(String::as_str)
    }

    async fn handle(
        &self,
        upstream: &Upstream,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        request_id: &str,
        route: RouteClass,
        path: &str,
    ) -> Response<Body> {
        let html = response::accepts_html(req.headers());

        // 1. Header hygiene, before anything looks at the request's identity.
        if let Some(name) = self.policy.connection_names_protected(req.headers()) {
            tracing::warn!(
                request_id,
                header = name,
                "refused: Connection header names an identity header"
            );
            return response::error(
                StatusCode::BAD_REQUEST,
                html,
                "bad_request",
                "The Connection header names a header that this gateway sets.",
                request_id,
            );
        }
        let removed = self.policy.strip(req.headers_mut());
        for name in &removed {
            tracing::debug!(request_id, header = %name, "stripped client-sent identity header");
        }
        hh::strip_cookie(req.headers_mut(), &self.cookie_name);

        // 2. Reserved paths: idgate's own endpoints. Never forwarded.
        if route == RouteClass::Reserved {
            return response::error(
                StatusCode::NOT_FOUND,
                html,
                "not_found",
                "No such idgate endpoint.",
                request_id,
            );
        }

        // 3. Public paths go through without identity; 4–6. everything else needs a
        // session, which no request has yet: until sessions exist every protected path
        // is unauthenticated.
        if route == RouteClass::Proxied {
            return self.unauthenticated(&req, html, path, request_id);
        }
        self.forward(upstream, req, peer, request_id, html).await
    }

    /// SPEC §5.6: a browser navigation is sent to its tenant's login; anything else
    /// gets 401 JSON naming the login URL.
    fn unauthenticated(
        &self,
        req: &Request<Incoming>,
        html: bool,
        path: &str,
        request_id: &str,
    ) -> Response<Body> {
        let tenant = self.tenant_for(host_of(req));
        let login_url = tenant.map(|t| {
            let target = req
                .uri()
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/");
            format!(
                "/_idgate/saml/{t}/login?return_to={}",
                utf8_percent_encode(target, QUERY_VALUE)
            )
        });
        let is_api = self.api_paths.iter().any(|p| has_prefix(path, p));
        let navigation = !is_api
            && (req.method() == Method::GET || req.method() == Method::HEAD)
            && (html
                || req
                    .headers()
                    .get("sec-fetch-mode")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"navigate")));
        match (navigation, login_url) {
            (true, Some(url)) => response::redirect(&url),
            (false, Some(url)) => response::json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"error": "unauthenticated", "login_url": url}),
            ),
            (_, None) => response::error(
                StatusCode::UNAUTHORIZED,
                navigation,
                "unauthenticated",
                "This path needs a signed-in user, and no tenant serves this host.",
                request_id,
            ),
        }
    }

    async fn forward(
        &self,
        upstream: &Upstream,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        request_id: &str,
        html: bool,
    ) -> Response<Body> {
        let host = host_of(&req).and_then(|h| HeaderValue::from_str(h).ok());
        let upgrade = hh::upgrade_request(req.headers());
        let is_upgrade = upgrade.is_some();
        let headers = req.headers_mut();
        hh::remove_hop_by_hop(headers, upgrade);
        if let Some(h) = &host {
            // HTTP/2 carries the host in :authority; the HTTP/1.1 upstream needs `Host`.
            headers.entry(header::HOST).or_insert_with(|| h.clone());
        }
        hh::set_forwarded(headers, peer.ip(), self.is_trusted(peer.ip()), "http", host);
        match upstream.forward(req, is_upgrade).await {
            Ok(resp) => resp.map(http_body_util::Either::Left),
            Err(e) => {
                self.metrics.upstream_error(e.kind());
                tracing::error!(request_id, kind = e.kind().as_str(), error = %e, "upstream request failed");
                let (code, message) = if e.status() == StatusCode::GATEWAY_TIMEOUT {
                    (
                        "upstream_timeout",
                        "The application did not answer in time.",
                    )
                } else {
                    (
                        "upstream_unavailable",
                        "The application is not reachable right now.",
                    )
                };
                response::error(e.status(), html, code, message, request_id)
            }
        }
    }
}

impl Handler for GatewayWorker {
    async fn call(self: Arc<Self>, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let gw = &*self.gateway;
        let start = Instant::now();
        let _in_flight = gw.metrics.in_flight();
        let request_id = ensure_request_id(req.headers_mut());
        let rid = request_id.to_str().unwrap_or("-");
        let method = req.method().clone();
        // A cheap (reference-counted) copy, so the routing path can borrow from it while
        // the request itself moves on.
        let uri = req.uri().clone();

        let (route, mut resp, log_path) = match routing_path(uri.path()) {
            Ok(path) => {
                let route = gw.classify(&path);
                let resp = gw
                    .handle(&self.upstream, req, peer, rid, route, &path)
                    .await;
                (route, resp, path)
            }
            Err(reason) => {
                tracing::warn!(request_id = rid, reason, "refused: ambiguous request path");
                let html = response::accepts_html(req.headers());
                let resp = response::error(
                    StatusCode::BAD_REQUEST,
                    html,
                    "bad_request",
                    "The request path is not in a form this gateway accepts.",
                    rid,
                );
                (RouteClass::Proxied, resp, Cow::Borrowed(""))
            }
        };
        let elapsed = start.elapsed();
        gw.metrics.record(route, resp.status(), elapsed);
        // The query string is left out: it can carry tokens.
        tracing::info!(
            target: "idgate::access",
            request_id = rid,
            method = %method,
            path = &*log_path,
            route = route.as_str(),
            status = resp.status().as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            peer = %peer.ip(),
        );
        resp.headers_mut().insert(X_REQUEST_ID, request_id);
        resp
    }
}

/// Keeps a well-formed client `X-Request-Id` (so a trace crosses hops) or sets a new one,
/// and returns it for the log and the response.
fn ensure_request_id(headers: &mut http::HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && let Ok(s) = v.to_str()
        && !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return v.clone();
    }
    let id = new_request_id();
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

thread_local! {
    /// (random per-thread base, counter): unique across threads and replicas with
    /// overwhelming probability, and far cheaper than a UUID per request.
    static REQUEST_IDS: std::cell::Cell<(u64, u64)> =
        std::cell::Cell::new((rand::random(), 0));
}

/// 32 lowercase hex digits.
fn new_request_id() -> HeaderValue {
    let (base, n) = REQUEST_IDS.with(|c| {
        let (base, n) = c.get();
        c.set((base, n.wrapping_add(1)));
        (base, n)
    });
    let value = (u128::from(base) << 64) | u128::from(n);
    let mut buf = [0u8; 32];
    for (i, b) in buf.iter_mut().enumerate() {
        let nibble = (value >> (124 - 4 * i)) & 0xf;
        *b = b"0123456789abcdef"[nibble as usize];
    }
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

/// The host the client addressed: `Host`, or the HTTP/2 `:authority`.
fn host_of<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Whether `path` is `prefix` or lies below it, segment-wise: `/api` covers `/api` and
/// `/api/x` but not `/apiary`.
pub fn has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// The path that routing decisions use: percent-decoded, so that `/%5Fidgate/` and
/// `/_idgate/` are the same route, as they are to most apps. Paths whose meaning
/// depends on who normalises them (dot segments, backslashes, NUL) are refused, because
/// the app could resolve `/public/../admin` to a protected page that idgate had matched
/// as public.
pub fn routing_path(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    if !raw.starts_with('/') {
        return Err("path is not absolute");
    }
    let decoded = if raw.contains('%') {
        percent_decode_str(raw).decode_utf8_lossy()
    } else {
        Cow::Borrowed(raw)
    };
    if decoded.contains(['\\', '\0']) {
        return Err("path contains a backslash or NUL");
    }
    if decoded.contains("/.") && decoded.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("path contains a dot segment");
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(has_prefix("/api", "/api"));
        assert!(has_prefix("/api/x", "/api"));
        assert!(!has_prefix("/apiary", "/api"));
        assert!(has_prefix("/static/x", "/static/"));
        assert!(has_prefix("/anything", "/"));
    }

    #[test]
    fn routing_path_decodes_and_refuses_ambiguity() {
        assert_eq!(routing_path("/%5Fidgate/x").unwrap(), "/_idgate/x");
        assert_eq!(routing_path("/a/b.c/..d").unwrap(), "/a/b.c/..d");
        for bad in [
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/%2E%2E%2Fadmin",
            "/public/./x",
            "/public/..",
            "/a\\b",
            "/a%5Cb",
            "/a%00",
            "*",
        ] {
            assert!(routing_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_replaced_otherwise() {
        let mut h = http::HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(ensure_request_id(&mut h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 32);
        assert!(id.to_str().unwrap().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(h["x-request-id"], id);
        assert_ne!(
            ensure_request_id(&mut http::HeaderMap::new()),
            id,
            "ids differ"
        );
    }
}
