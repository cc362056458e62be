//! The front door. Every request on the public listener passes through, in this order:
//! request id → strip spoofable headers → path sanity → reserved path? → public path? →
//! session gate → forward. Nothing reaches the upstream without crossing all of them.
//!
//! The reserved endpoints belong to their modules (`saml::routes`, `maestrano::routes`,
//! `scim`, `demo::routes`, `session::routes` for session, logout and logged-out, and
//! `identity` for the JWKS); the gateway only dispatches to them, lending its shared
//! services through [`RouteCtx`].

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::access::Rule;
use crate::config::Config;
use crate::demo::idp::DevIdp;
use crate::directory::Directory;
use crate::limits::Failures;
use crate::metrics::{Metrics, RouteClass};
use crate::page::{Href, Page, Step};
use crate::proxy::Upstream;
use crate::proxy::headers::{self as hh, IdentityHeaderPolicy};
use crate::proxy::tunnel::{self, GuardedBody, StreamGuard, Tunnels};
use crate::response::{self, Body};
use crate::response::{forbidden, store_unavailable};
use crate::saml::routes::SamlRoutes;
use crate::server::Handler;
use crate::session::bearer::BearerGate;
use crate::session::{Gate, Sessions, ThreadHeaders};
use crate::snapshot::{Snapshot, Snapshots, Tenancy};

mod forward_auth;

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
    /// The running configuration's derived state (tenants, access rules, identity
    /// keys): a request loads it once in [`GatewayWorker::call`] and uses that copy to
    /// its end.
    snapshots: Arc<Snapshots>,
    trusted_proxies: Vec<ipnet::IpNet>,
    metrics: Arc<Metrics>,
    sessions: Arc<Sessions>,
    public_scheme: String,
    /// `X-Forwarded-Proto` for untrusted peers: the scheme users reach the app by
    /// (TLS usually ends at an ingress in front of idgate).
    public_proto: &'static str,
    directory: Directory,
    dev_idp: Option<Arc<DevIdp>>,
    /// The SAML endpoints' own state (login-start limiter, login cookie).
    saml: SamlRoutes,
    /// Failed machine authentications per client (SCIM and Maestrano share it).
    failures: Arc<Failures>,
    /// Open tunnels, so that shutdown waits for them and then closes them.
    tunnels: Arc<Tunnels>,
    /// `/_idgate/auth` for an ingress that asks instead of forwarding (SPEC §9).
    forward_auth: forward_auth::ForwardAuth,
}

/// What a reserved route may use of the gateway, lent for one request. Protocol modules
/// take this rather than the [`Gateway`], so the gateway's fields stay private and a
/// route reaches the shared services only, never the proxied path's state.
pub struct RouteCtx<'a> {
    /// The tenant set the request was dispatched under (its snapshot's), loaded once so
    /// that a change of the set mid-request cannot mix two of them.
    pub tenancy: &'a Tenancy,
    /// The snapshot the request was dispatched under.
    pub snapshot: &'a Snapshot,
    /// Provisioning, and the store behind it.
    pub directory: &'a Directory,
    /// Where a login creates its session.
    pub sessions: &'a Sessions,
    /// Login and SAML-rejection counters.
    pub metrics: &'a Metrics,
    /// Failed machine authentications per client, shared with SCIM.
    pub failures: &'a Failures,
    /// The request's id, for log lines and error pages.
    pub request_id: &'a str,
    /// Whether this is `idgate demo` (a development IdP is built in): its pages may
    /// name technical reasons that production pages keep to the log.
    pub demo: bool,
    gateway: &'a Gateway,
    peer: IpAddr,
}

impl RouteCtx<'_> {
    /// The client's address, resolved through the trusted proxies exactly as the
    /// gateway resolves it for everything else.
    pub fn client_ip(&self, headers: &http::HeaderMap) -> IpAddr {
        self.gateway.client_ip(headers, self.peer)
    }

    /// The host the request addressed (`Host`, or HTTP/2's `:authority`).
    pub fn host<'r, B>(&self, req: &'r Request<B>) -> Option<&'r str> {
        host_of(req)
    }

    /// Whether a session of `tenant` counts on a request to `host`, by the gate's rule
    /// (SPEC §7).
    pub fn serves(&self, host: Option<&str>, tenant: &str) -> bool {
        self.tenancy.serves(host, tenant)
    }

    /// The tenant whose pages (login, logged-out) a request to `host` gets.
    pub fn tenant_for(&self, host: Option<&str>) -> Option<String> {
        self.tenancy.tenant_for(host)
    }

    /// Whether the request provably comes from a page of the host it addresses
    /// (`Sec-Fetch-Site`, else `Referer`).
    pub fn same_origin<B>(&self, req: &Request<B>) -> bool {
        self.gateway.same_origin(req)
    }

    /// 401 JSON naming the host's tenant's login URL.
    pub fn unauthenticated_json<B>(&self, req: &Request<B>) -> Response<Body> {
        self.gateway
            .unauthenticated_json(self.tenancy, req, self.request_id)
    }
}

/// The gateway as one worker thread runs it: the shared gateway plus that thread's own
/// upstream pool, so connections made on a thread are only ever used there.
pub struct GatewayWorker {
    gateway: Arc<Gateway>,
    upstream: Upstream,
    stats: Arc<crate::metrics::WorkerStats>,
}

impl GatewayWorker {
    /// A worker's handler; `upstream` is built on the worker's thread.
    pub fn new(gateway: Arc<Gateway>, upstream: Upstream) -> GatewayWorker {
        let stats = gateway.metrics.worker();
        GatewayWorker {
            gateway,
            upstream,
            stats,
        }
    }
}

impl Gateway {
    /// Builds the gateway from a validated config.
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        sessions: Arc<Sessions>,
        directory: Directory,
        snapshots: Arc<Snapshots>,
        failures: Arc<Failures>,
        dev_idp: Option<Arc<DevIdp>>,
    ) -> Gateway {
        Gateway {
            snapshots,
            policy: IdentityHeaderPolicy::new(config.identity.headers.all()),
            cookie_name: config.session.cookie_name.clone(),
            trusted_proxies: config.server.trusted_proxies.clone(),
            metrics,
            sessions,
            public_scheme: config.server.public_url.scheme().to_owned(),
            public_proto: if config.server.is_https() {
                "https"
            } else {
                "http"
            },
            directory,
            dev_idp,
            saml: SamlRoutes::new(config),
            failures,
            tunnels: Tunnels::new(),
            forward_auth: forward_auth::ForwardAuth::new(&config.server.public_url),
        }
    }

    /// The open tunnels, for the listener's shutdown.
    pub fn tunnels(&self) -> &Arc<Tunnels> {
        &self.tunnels
    }

    /// Lends the shared services to a reserved route under the snapshot `snap`.
    fn route_ctx<'a>(
        &'a self,
        snap: &'a Snapshot,
        peer: SocketAddr,
        request_id: &'a str,
    ) -> RouteCtx<'a> {
        RouteCtx {
            tenancy: &snap.tenancy,
            snapshot: snap,
            directory: &self.directory,
            sessions: &self.sessions,
            metrics: &self.metrics,
            failures: &self.failures,
            request_id,
            demo: self.dev_idp.is_some(),
            gateway: self,
            peer: peer.ip(),
        }
    }

    fn is_trusted(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }

    /// The client's address: the peer, or, behind trusted proxies, the nearest hop in
    /// `X-Forwarded-For` that is not one of them.
    fn client_ip(&self, headers: &http::HeaderMap, peer: IpAddr) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        // From the nearest hop outwards. An entry that is not an address (a proxy that
        // writes `unknown`, or garbage a client put there) ends the walk: what lies
        // beyond it cannot be vouched for, so the last trusted hop stands for the client
        // rather than anything the client could have chosen.
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            let Some(ip) = parse_hop(hop.trim()) else {
                return client;
            };
            client = ip;
            if !self.is_trusted(ip) {
                return ip;
            }
        }
        client
    }

    /// Reserved, public or proxied, and the access rule that decides a request that is
    /// not reserved. Without rules naming tenants this reads no tenancy at all; with
    /// them, the tenant is the one the host names (a session's own tenant is checked
    /// again at the gate).
    fn classify<'r>(
        &self,
        snap: &'r Snapshot,
        method: &Method,
        path: &str,
        host: Option<&str>,
    ) -> (RouteClass, Option<&'r Rule>) {
        let rules = &snap.rules;
        if has_prefix(path, "/_idgate")
            || (snap.tenancy.maestrano_reserved && has_prefix(path, "/maestrano"))
        {
            return (RouteClass::Reserved, None);
        }
        if rules.is_empty() {
            return (RouteClass::Proxied, None);
        }
        let rule = if rules.tenant_scoped() {
            let tenant = snap.tenancy.tenant_for(host);
            rules.decide(method, path, tenant.as_deref())
        } else {
            rules.decide(method, path, None)
        };
        match rule {
            Some(r) if r.public => (RouteClass::Public, rule),
            _ => (RouteClass::Proxied, rule),
        }
    }

    /// The rule's verdict on a signed-in request: `None` to forward, or the 403. A rule
    /// that names tenants is decided again for the session's own tenant when the host
    /// did not name it (a host-less tenant's session on a shared host).
    #[allow(clippy::too_many_arguments)]
    fn refused_by_rule(
        &self,
        rules: &crate::access::Rules,
        rule: Option<&Rule>,
        method: &Method,
        path: &str,
        pass: &crate::session::watch::Pass,
        html: bool,
        request_id: &str,
    ) -> Option<Response<Body>> {
        if rules.is_empty() {
            return None;
        }
        let id = &pass.auth.identity;
        let rule = if rules.tenant_scoped() {
            rules.decide(method, path, Some(&id.tenant))
        } else {
            rule
        }?;
        let subject = crate::access::Subject {
            user_id: &id.user_id,
            group_id: &id.group_id,
            role: &id.role,
            groups: &id.groups,
        };
        if rule.admits(&subject) {
            return None;
        }
        tracing::info!(
            request_id,
            reason = "forbidden",
            rule = &*rule.name,
            tenant = id.tenant,
            user_id = id.user_id,
            "refused by access rule"
        );
        Some(forbidden_by_rule(&rule.name, html, request_id))
    }

    // The request and what `call` already worked out about it (its route, its routing
    // path, the URI as sent), passed on rather than worked out twice.
    #[allow(clippy::too_many_arguments)]
    // Not `async fn`: see the async block below.
    #[allow(clippy::manual_async_fn)]
    fn handle(
        &self,
        upstream: &Upstream,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        request_id: &str,
        (snap, route, rule): (&Snapshot, RouteClass, Option<&Rule>),
        path: &str,
        uri: &http::Uri,
    ) -> impl std::future::Future<Output = Response<Body>> {
        // An async block, not an `async fn`: that would move its arguments into locals
        // and hold the request twice in a future this size.
        async move {
            let rules = &snap.rules;
            let tn = &snap.tenancy;
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

            // 2. Reserved paths: idgate's own endpoints. Never forwarded.
            // 3. Public paths go through without identity.
            match route {
                // Boxed: the reserved endpoints' state (SAML, SCIM, Maestrano) is far larger
                // than the proxied path's, and hyper moves the request future as a whole.
                RouteClass::Reserved => {
                    return Box::pin(self.reserved(snap, req, peer, html, path, request_id)).await;
                }
                RouteClass::Public | RouteClass::Proxied => {}
            }

            // Where bearer tokens are idgate's to judge, `Authorization` is a single field
            // (two could be read differently by idgate and the app), and a token reaches the
            // app only through an issuer that forwards it: not even on a public path.
            if self.sessions.any_bearer(snap) && req.headers().contains_key(header::AUTHORIZATION) {
                let host = host_of(&req);
                if let Some(forwards) = self.sessions.bearer_host(snap, |t| tn.serves(host, t)) {
                    if req.headers().get_all(header::AUTHORIZATION).iter().count() > 1 {
                        tracing::warn!(request_id, "refused: more than one Authorization header");
                        return response::error(
                            StatusCode::BAD_REQUEST,
                            html,
                            "bad_request",
                            "The request carries more than one Authorization header.",
                            request_id,
                        );
                    }
                    if route == RouteClass::Public
                        && !forwards
                        && crate::session::bearer::bearer_token(req.headers()).is_some()
                    {
                        req.headers_mut().remove(header::AUTHORIZATION);
                    }
                }
            }
            if route == RouteClass::Public {
                return self
                    .forward(upstream, req, peer, request_id, html.then_some(uri), None)
                    .await;
            }

            // 4. A machine client's bearer token, where a tenant this host serves accepts
            // them (else `Authorization` is the app's own business).
            if self.sessions.any_bearer(snap)
                && let Some(token) = crate::session::bearer::bearer_token(req.headers())
            {
                let host = host_of(&req);
                let gate_span = gate_span("bearer");
                // Boxed: checking a token holds kilobytes of state, which every request's
                // future would otherwise carry (and copy) for this one path.
                let verdict = Box::pin(crate::telemetry::traced(
                    self.sessions
                        .gate_bearer(snap, token, |tenant| tn.serves(host, tenant)),
                    &gate_span,
                ))
                .await;
                if !gate_span.is_none() {
                    trace_bearer_gate(&gate_span, &verdict);
                }
                if !matches!(verdict, BearerGate::NotAccepted) {
                    // Boxed, as the reserved paths are: its state is larger than the
                    // session path's, which every request's future would otherwise carry.
                    return Box::pin(self.bearer(
                        upstream,
                        req,
                        peer,
                        request_id,
                        (rules, rule, path),
                        verdict,
                    ))
                    .await;
                }
            }

            // 5–6. Everything else needs a live session of an active user in an active group,
            // made for the tenant this request is addressed to.
            let host = host_of(&req);
            let gate_span = gate_span("session");
            let gate = crate::telemetry::traced_await!(
                gate_span,
                self.sessions.gate(
                    snap,
                    req.headers(),
                    host.map_or(&b""[..], str::as_bytes),
                    |tenant| tn.serves(host, tenant),
                )
            );
            if !gate_span.is_none() {
                trace_gate(&gate_span, &gate);
            }
            match gate {
                Gate::Forward(identity) => {
                    if let Some(refusal) = self.refused_by_rule(
                        rules,
                        rule,
                        req.method(),
                        path,
                        &identity,
                        html,
                        request_id,
                    ) {
                        return refusal;
                    }
                    self.forward(
                        upstream,
                        req,
                        peer,
                        request_id,
                        html.then_some(uri),
                        Some(identity),
                    )
                    .await
                }
                Gate::Missing => {
                    let api = rule.is_some_and(|r| r.api);
                    self.unauthenticated(snap, &req, html, path, api, request_id)
                }
                Gate::Revoked(reason) => {
                    tracing::info!(
                        request_id,
                        reason = reason.code(),
                        "refused: session revoked"
                    );
                    if html {
                        self.sign_in_page(
                            tn,
                            &req,
                            StatusCode::FORBIDDEN,
                            reason.code(),
                            request_id,
                        )
                    } else {
                        forbidden(reason, false, request_id)
                    }
                }
                Gate::Unavailable if html => {
                    let again = if req.method() == Method::GET || req.method() == Method::HEAD {
                        Step::link("Try again", Href::path(path_and_query(req.uri())))
                    } else {
                        Step::home()
                    };
                    let mut resp = Page::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
                        .step(again)
                        .reference(request_id)
                        .into_response();
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
                    resp
                }
                Gate::Unavailable => store_unavailable(false, request_id),
                Gate::Unusable(attribute) if html => {
                    log_unusable(attribute, request_id);
                    self.sign_in_page(
                        tn,
                        &req,
                        StatusCode::FORBIDDEN,
                        "malformed_attribute",
                        request_id,
                    )
                }
                Gate::Unusable(attribute) => unusable_identity(attribute, false, request_id),
            }
        }
    }

    /// Answers a machine client from its token's verdict: forwarded under the token's
    /// identity (the access rules applying as for a session), or refused in JSON.
    async fn bearer(
        &self,
        upstream: &Upstream,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        request_id: &str,
        (rules, rule, path): (&crate::access::Rules, Option<&Rule>, &str),
        verdict: BearerGate,
    ) -> Response<Body> {
        match verdict {
            BearerGate::Forward(pass, forward_authorization) => {
                if let Some(refusal) =
                    self.refused_by_rule(rules, rule, req.method(), path, &pass, false, request_id)
                {
                    return refusal;
                }
                if !forward_authorization {
                    req.headers_mut().remove(header::AUTHORIZATION);
                }
                self.forward(upstream, req, peer, request_id, None, Some(pass))
                    .await
            }
            BearerGate::Invalid(why) => invalid_token(why, request_id),
            BearerGate::Revoked(reason) => {
                tracing::info!(
                    request_id,
                    reason = reason.code(),
                    "refused: bearer token of a blocked user or group"
                );
                forbidden(reason, false, request_id)
            }
            BearerGate::Unavailable => store_unavailable(false, request_id),
            BearerGate::Unusable(attribute) => unusable_identity(attribute, false, request_id),
            BearerGate::NotAccepted => response::error(
                StatusCode::UNAUTHORIZED,
                false,
                "invalid_token",
                "Bearer tokens are not accepted here.",
                request_id,
            ),
        }
    }

    /// `/_idgate/…`, and `/maestrano/…` when a tenant is a Maestrano one. Each protocol
    /// prefix goes to the module that owns it; the session endpoints (`session`,
    /// `logout`, `logged-out`) to `session::routes`.
    async fn reserved(
        &self,
        snap: &Snapshot,
        req: Request<Incoming>,
        peer: SocketAddr,
        html: bool,
        path: &str,
        request_id: &str,
    ) -> Response<Body> {
        let not_found = || {
            response::error(
                StatusCode::NOT_FOUND,
                html,
                "not_found",
                "No such idgate endpoint.",
                request_id,
            )
        };
        let method = req.method();
        match path {
            "/_idgate/jwks.json" if method == Method::GET || method == Method::HEAD => {
                crate::identity::jwks_response(&snap.identity)
            }
            "/_idgate/session" | "/_idgate/logout" | "/_idgate/logged-out" => {
                let ctx = self.route_ctx(snap, peer, request_id);
                crate::session::routes::handle(&ctx, req, html, path)
                    .await
                    .unwrap_or_else(not_found)
            }
            "/_idgate/auth" => forward_auth::answer(self, req.headers(), peer, request_id).await,
            p if p.starts_with("/_idgate/saml/") => {
                let ctx = self.route_ctx(snap, peer, request_id);
                self.saml.handle(&ctx, req, p).await
            }
            p if p.starts_with("/maestrano/") && snap.tenancy.maestrano().any() => {
                let ctx = self.route_ctx(snap, peer, request_id);
                crate::maestrano::routes::handle(&ctx, &self.saml, req, p).await
            }
            p if p.starts_with("/_idgate/scim/") => {
                let client = self.client_ip(req.headers(), peer.ip());
                snap.tenancy
                    .scim
                    .handle(req, &p["/_idgate/scim/".len()..], client, request_id)
                    .await
            }
            "/_idgate/dev-idp/sso" => match &self.dev_idp {
                Some(idp) => idp.sso(req, request_id).await,
                None => not_found(),
            },
            _ => not_found(),
        }
    }

    /// A refusal page whose next step is this host's tenant's login, coming back to the
    /// path the request was for.
    fn sign_in_page(
        &self,
        tn: &Tenancy,
        req: &Request<Incoming>,
        status: StatusCode,
        code: &str,
        request_id: &str,
    ) -> Response<Body> {
        let tenant = tn.tenant_for(host_of(req));
        let target = path_and_query(req.uri());
        Page::new(status, code)
            .step(Step::sign_in(tenant.as_deref(), target))
            .reference(request_id)
            .into_response()
    }

    /// `Sec-Fetch-Site: same-origin`, or a `Referer` on the host the request addressed.
    fn same_origin<B>(&self, req: &Request<B>) -> bool {
        let h = req.headers();
        if let Some(site) = h.get("sec-fetch-site") {
            return site.as_bytes() == b"same-origin";
        }
        let (Some(referer), Some(host)) = (
            h.get(header::REFERER).and_then(|v| v.to_str().ok()),
            host_of(req),
        ) else {
            return false;
        };
        url::Url::parse(referer).is_ok_and(|r| {
            let origin_host = match r.port() {
                Some(p) => format!("{}:{p}", r.host_str().unwrap_or_default()),
                None => r.host_str().unwrap_or_default().to_owned(),
            };
            r.scheme() == self.public_scheme && origin_host.eq_ignore_ascii_case(host)
        })
    }

    fn login_url<B>(&self, tn: &Tenancy, req: &Request<B>) -> Option<String> {
        let tenant = tn.tenant_for(host_of(req))?;
        let target = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        Some(format!(
            "/_idgate/saml/{tenant}/login?return_to={}",
            utf8_percent_encode(target, QUERY_VALUE)
        ))
    }

    fn unauthenticated_json<B>(
        &self,
        tn: &Tenancy,
        req: &Request<B>,
        request_id: &str,
    ) -> Response<Body> {
        match self.login_url(tn, req) {
            Some(url) => response::json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"error": "unauthenticated", "login_url": url}),
            ),
            None => response::error(
                StatusCode::UNAUTHORIZED,
                false,
                "unauthenticated",
                "No signed-in user, and no tenant serves this host.",
                request_id,
            ),
        }
    }

    /// SPEC §5.6: a browser navigation is sent to its tenant's login; anything else
    /// gets 401 JSON naming the login URL.
    fn unauthenticated(
        &self,
        snap: &Snapshot,
        req: &Request<Incoming>,
        html: bool,
        path: &str,
        api_rule: bool,
        request_id: &str,
    ) -> Response<Body> {
        let login_url = self.login_url(&snap.tenancy, req);
        let navigation =
            self.is_navigation(snap, req.method(), req.headers(), html, path, api_rule);
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

    /// Whether a request without a session is a browser navigation (sent to the login)
    /// rather than an API call (401 JSON): a GET or HEAD that wants HTML or says it
    /// navigates, on a path no `api` rule or `api_paths` entry claims.
    fn is_navigation(
        &self,
        snap: &Snapshot,
        method: &Method,
        headers: &http::HeaderMap,
        html: bool,
        path: &str,
        api_rule: bool,
    ) -> bool {
        let is_api = api_rule || snap.api_paths.iter().any(|p| has_prefix(path, p));
        !is_api
            && (method == Method::GET || method == Method::HEAD)
            && (html
                || headers
                    .get("sec-fetch-mode")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"navigate")))
    }

    /// Sends the request upstream with `identity` (none on a public path). `page_for` is
    /// the request's URI when the client takes HTML: a failure is then a page whose
    /// "Try again" goes back to it.
    // Not `async fn`: see the async block below.
    #[allow(clippy::manual_async_fn)]
    fn forward(
        &self,
        upstream: &Upstream,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        request_id: &str,
        page_for: Option<&http::Uri>,
        identity: Option<ThreadHeaders>,
    ) -> impl std::future::Future<Output = Response<Body>> {
        // An async block, not an `async fn`: that would move its arguments into locals
        // and hold the request twice in a future this size.
        async move {
            let is_get = req.method() == Method::GET || req.method() == Method::HEAD;
            // After the session was read: the app never sees idgate's cookie.
            hh::strip_cookie(req.headers_mut(), &self.cookie_name);
            // The client's own `Host` value is reused as is (no copy); HTTP/2 requests carry
            // it in :authority instead.
            let host = req.headers().get(header::HOST).cloned().or_else(|| {
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });
            let upgrade = hh::upgrade_request(req.headers());
            let is_upgrade = upgrade.is_some();
            let headers = req.headers_mut();
            hh::remove_hop_by_hop(headers, upgrade);
            if let Some(h) = &host {
                // HTTP/2 carries the host in :authority; the HTTP/1.1 upstream needs `Host`.
                headers.entry(header::HOST).or_insert_with(|| h.clone());
            }
            let forwarded = hh::set_forwarded(
                headers,
                peer.ip(),
                self.is_trusted(peer.ip()),
                self.public_proto,
                host,
            );
            // The identity headers are handed over separately rather than inserted here:
            // the direct path writes them straight onto the wire (the client's copies are
            // gone, stripped by the policy, and config keeps their names off every header
            // idgate sets), which saves seven hashed inserts per request.
            let headers: [&[(HeaderName, HeaderValue)]; 2] = [
                forwarded.fields(),
                identity.as_ref().map_or(&[], |p| &p.headers),
            ];
            let path = is_upgrade.then(|| req.uri().path().to_owned());
            let upstream_span = crate::telemetry::span!(
                "idgate.upstream",
                otel.kind = "client",
                http.request.method = req.method().as_str(),
                url.path = req.uri().path(),
                idgate.upgrade = is_upgrade,
                http.response.status_code = tracing::field::Empty,
                error.type = tracing::field::Empty,
            );
            if !upstream_span.is_none() {
                // idgate's span, not the client's, is the app's parent.
                crate::telemetry::inject(req.headers_mut(), &upstream_span);
            }
            let forwarded = crate::telemetry::traced_await!(
                upstream_span,
                upstream.forward(req, is_upgrade, &headers)
            );
            if !upstream_span.is_none() {
                match &forwarded {
                    Ok((resp, _)) => {
                        upstream_span.record("http.response.status_code", resp.status().as_u16());
                    }
                    Err(e) => {
                        upstream_span.record("error.type", e.kind().as_str());
                    }
                }
            }
            match forwarded {
                Ok((resp, upgraded)) => {
                    // The session goes along with whatever outlives this request: the
                    // response body while it streams, or the tunnel.
                    let guard = identity.map(|p| p as Arc<dyn StreamGuard>);
                    if let Some(up) = upgraded {
                        self.spawn_tunnel(up, guard, peer, request_id, path.unwrap_or_default());
                        return resp
                            .map(|b| http_body_util::Either::Left(GuardedBody::new(b, None)));
                    }
                    let clock = upstream.clock();
                    resp.map(|b| {
                        http_body_util::Either::Left(GuardedBody::new(b, guard.map(|g| (g, clock))))
                    })
                }
                Err(e @ crate::proxy::ProxyError::ClientStalled(_)) => {
                    tracing::warn!(request_id, error = %e, "refused: request body stalled");
                    if page_for.is_some() {
                        return Page::new(e.status(), "request_timeout")
                            .step(Step::home())
                            .reference(request_id)
                            .into_response();
                    }
                    response::error(
                        e.status(),
                        false,
                        "request_timeout",
                        "The upload stopped arriving. Please try again.",
                        request_id,
                    )
                }
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
                    if let Some(uri) = page_for {
                        // Trying again is the way forward; for anything but a GET, the
                        // start page rather than a link that would turn it into one.
                        let again = if is_get {
                            Step::link("Try again", Href::path(path_and_query(uri)))
                        } else {
                            Step::home()
                        };
                        return Page::new(e.status(), code)
                            .step(again)
                            .reference(request_id)
                            .into_response();
                    }
                    response::error(e.status(), false, code, message, request_id)
                }
            }
        }
    }
}

impl Gateway {
    /// Joins an upgraded connection to the upstream's, under the request's session, and
    /// logs its end on the access log.
    fn spawn_tunnel(
        &self,
        up: crate::proxy::Upgraded,
        guard: Option<Arc<dyn StreamGuard>>,
        peer: SocketAddr,
        request_id: &str,
        path: String,
    ) {
        let tunnels = self.tunnels.clone();
        let request_id = request_id.to_owned();
        // Counted from the 101, before the upgrade completes, so that a shutdown that
        // starts meanwhile still waits for it.
        let slot = tunnels.enter();
        tokio::spawn(async move {
            let _slot = slot;
            match tunnel::run(up.client, up.upstream, guard, &tunnels).await {
                Ok(end) => tracing::info!(
                    target: "idgate::access",
                    request_id,
                    path,
                    route = "tunnel",
                    duration_ms = end.duration.as_secs_f64() * 1000.0,
                    bytes_in = end.bytes_in,
                    bytes_out = end.bytes_out,
                    closed_by = end.closed_by.as_str(),
                    peer = %peer.ip(),
                ),
                Err(e) => tracing::warn!(request_id, error = %e, "protocol upgrade failed"),
            }
        });
    }
}

impl Handler for GatewayWorker {
    // Not `async fn`: see the async block below.
    #[allow(clippy::manual_async_fn)]
    fn call(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        // An async block, not an `async fn`: that would move its arguments into locals
        // and hold the request twice in a future this size.
        async move {
            let gw = &*self.gateway;
            let start = Instant::now();
            let _in_flight = self.stats.in_flight();
            // Room for what idgate adds to the map (request id, X-Forwarded-*, Host) up
            // front: growing it later rehashes it. Identity headers do not go into the map
            // on the common path (see `forward`).
            req.headers_mut().reserve(6);
            let (request_id, client_request_id) =
                ensure_request_id(req.headers_mut(), || gw.is_trusted(peer.ip()));
            let rid = request_id.to_str().unwrap_or("-");
            let method = req.method().clone();
            // A cheap (reference-counted) copy, so the routing path can borrow from it while
            // the request itself moves on.
            let uri = req.uri().clone();
            // None when tracing is off (the request then costs one flag load more) and when
            // the request is not sampled.
            let trace = if crate::telemetry::enabled() {
                crate::telemetry::request_span(&method, uri.path(), req.headers_mut())
            } else {
                None
            };

            let checked = match check_request_head(&req) {
                Ok(()) => routing_path(uri.path()).map_err(|reason| {
                    tracing::warn!(request_id = rid, reason, "refused: ambiguous request path");
                    StatusCode::BAD_REQUEST
                }),
                Err((status, reason)) => {
                    tracing::warn!(request_id = rid, reason, "refused: ambiguous request");
                    Err(status)
                }
            };
            let (route, mut resp, log_path) = match checked {
                Ok(path) => {
                    // One load of the configuration for the whole request, whatever a
                    // reload does meanwhile.
                    let snap = gw.snapshots.load();
                    let (route, rule) = gw.classify(&snap, &method, &path, host_of(&req));
                    let handled = |req| {
                        gw.handle(
                            &self.upstream,
                            req,
                            peer,
                            rid,
                            (&snap, route, rule),
                            &path,
                            &uri,
                        )
                    };
                    // The common case awaits the handler in place; wrapping it (a span, a
                    // task-local) moves it, and each move copies kilobytes, so only the
                    // requests that need a wrapper get one, boxed.
                    let resp = if trace.is_none() && client_request_id.is_none() {
                        handled(req).await
                    } else {
                        wrapped(handled(req), trace.as_ref(), client_request_id.clone()).await
                    };
                    (route, resp, path)
                }
                Err(status) => {
                    let html = response::accepts_html(req.headers());
                    let resp = if status == StatusCode::NOT_IMPLEMENTED {
                        response::error(
                            status,
                            html,
                            "not_implemented",
                            "This gateway accepts no transfer coding but chunked.",
                            rid,
                        )
                    } else {
                        response::error(
                            status,
                            html,
                            "bad_request",
                            "The request is not in a form this gateway accepts.",
                            rid,
                        )
                    };
                    (RouteClass::Proxied, resp, Cow::Borrowed(""))
                }
            };
            let elapsed = start.elapsed();
            self.stats.record(route, resp.status(), elapsed);
            if let Some(span) = &trace {
                span.record("http.response.status_code", resp.status().as_u16());
                span.record("idgate.route", route.as_str());
            }
            // The query string is left out: it can carry tokens.
            tracing::info!(
                target: "idgate::access",
                request_id = rid,
                client_request_id = client_request_id.as_deref(),
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
}

/// A request's handling inside its trace span and with the client's own request id,
/// boxed: only requests that carry either pay for the wrappers (see `call`). A client's
/// own id reaches the audit lines of the request (as `client_request_id`) without being
/// threaded through every protocol.
fn wrapped<'a>(
    handled: impl Future<Output = Response<Body>> + Send + 'a,
    trace: Option<&tracing::Span>,
    client_request_id: Option<Box<str>>,
) -> std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>> {
    let handled = match trace {
        Some(span) => crate::telemetry::traced(handled, span),
        None => futures_util::future::Either::Right(handled),
    };
    match client_request_id {
        None => Box::pin(handled),
        Some(c) => Box::pin(crate::audit::CLIENT_REQUEST_ID.scope(c, handled)),
    }
}

/// The span of a gate decision (`auth`: session or bearer), filled in by
/// [`trace_gate`] or [`trace_bearer_gate`]; none when the request is not traced.
fn gate_span(auth: &'static str) -> tracing::Span {
    crate::telemetry::span!(
        "idgate.gate",
        idgate.auth = auth,
        idgate.gate.result = tracing::field::Empty,
        idgate.tenant = tracing::field::Empty,
    )
}

/// Notes the session gate's verdict (and the tenant, once known) on its span and the
/// request's. Tracing only.
fn trace_gate(span: &tracing::Span, gate: &Gate) {
    let result = match gate {
        Gate::Forward(pass) => {
            span.record("idgate.tenant", pass.auth.identity.tenant.as_str());
            crate::telemetry::record_tenant(&pass.auth.identity.tenant);
            "forward"
        }
        Gate::Missing => "missing",
        Gate::Revoked(_) => "revoked",
        Gate::Unavailable => "unavailable",
        Gate::Unusable(_) => "unusable",
    };
    span.record("idgate.gate.result", result);
}

/// [`trace_gate`] for a bearer token's verdict.
fn trace_bearer_gate(span: &tracing::Span, verdict: &BearerGate) {
    let result = match verdict {
        BearerGate::Forward(pass, _) => {
            span.record("idgate.tenant", pass.auth.identity.tenant.as_str());
            crate::telemetry::record_tenant(&pass.auth.identity.tenant);
            "forward"
        }
        BearerGate::Invalid(_) => "invalid",
        BearerGate::Revoked(_) => "revoked",
        BearerGate::Unavailable => "unavailable",
        BearerGate::Unusable(_) => "unusable",
        BearerGate::NotAccepted => "not_accepted",
    };
    span.record("idgate.gate.result", result);
}

/// 403 naming the access rule that refused (SPEC §9): `{"error":"forbidden","rule":…}`,
/// or a page naming it, so that a person can tell an administrator what stopped them.
/// 401 for a bearer token that does not hold (RFC 6750 §3.1), logged with why.
fn invalid_token(why: crate::session::bearer::Invalid, request_id: &str) -> Response<Body> {
    tracing::info!(
        request_id,
        reason = "invalid_token",
        detail = why.as_str(),
        "refused: bearer token"
    );
    let mut resp = response::error(
        StatusCode::UNAUTHORIZED,
        false,
        "invalid_token",
        "The bearer token is not valid for this application.",
        request_id,
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    resp
}

fn forbidden_by_rule(rule: &str, html: bool, request_id: &str) -> Response<Body> {
    if html {
        Page::new(StatusCode::FORBIDDEN, "forbidden")
            .say(format!(
                "The access rule that stopped you is \u{201c}{rule}\u{201d}. If you need this page, ask your administrator for access."
            ))
            .step(Step::home())
            .reference(request_id)
            .into_response()
    } else {
        response::json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": "forbidden", "rule": rule, "request_id": request_id}),
        )
    }
}

/// 403 for a session whose identity cannot travel as headers (a stored value holds a
/// control character): refused and logged, never forwarded under a stand-in value that
/// other users could share.
pub(crate) fn unusable_identity(
    attribute: &'static str,
    html: bool,
    request_id: &str,
) -> Response<Body> {
    log_unusable(attribute, request_id);
    response::error(
        StatusCode::FORBIDDEN,
        html,
        "malformed_attribute",
        "Your account details cannot be passed on to the application. Please ask your administrator to correct them.",
        request_id,
    )
}

fn log_unusable(attribute: &'static str, request_id: &str) {
    tracing::warn!(
        request_id,
        reason = "malformed_attribute",
        attribute,
        "refused: the session's identity holds a control character and cannot be sent as a header"
    );
}

/// The path and query as the client sent them (still percent-encoded).
fn path_and_query(uri: &http::Uri) -> &str {
    uri.path_and_query().map_or("/", |pq| pq.as_str())
}

/// The request's id, for the logs, the pages, the upstream and the response, and the
/// client's own `X-Request-Id` when it is not that. A well-formed `X-Request-Id` from a
/// trusted proxy is kept (so a trace crosses hops); from anyone else idgate sets its
/// own, so that a client cannot choose what the audit log says (SPEC §10), and the
/// client's well-formed one is returned to be logged as `client_request_id` only.
fn ensure_request_id(
    headers: &mut http::HeaderMap,
    trusted: impl FnOnce() -> bool,
) -> (HeaderValue, Option<Box<str>>) {
    // One hashed lookup: an entry, not a get and then an insert.
    let mut entry = match headers.entry(X_REQUEST_ID) {
        http::header::Entry::Vacant(v) => {
            let id = new_request_id();
            v.insert(id.clone());
            return (id, None);
        }
        http::header::Entry::Occupied(o) => o,
    };
    let sent = Some(entry.get()).and_then(|v| {
        let s = v.to_str().ok()?;
        let sane = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        sane.then_some(s)
    });
    // A second `X-Request-Id` is not the client's id; it goes with the first.
    let single = entry.iter().nth(1).is_none();
    if sent.is_some() && single && trusted() {
        return (entry.get().clone(), None);
    }
    let client = sent.map(Box::from);
    let id = new_request_id();
    entry.insert(id.clone());
    (id, client)
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
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&base.to_be_bytes());
    raw[8..].copy_from_slice(&n.to_be_bytes());
    let mut buf = [0u8; 32];
    hex::encode_to_slice(raw, &mut buf).expect("32 digits for 16 bytes");
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

/// An `X-Forwarded-For` entry's address: `ip`, `ip:port` or `[ipv6]:port` (some proxies
/// add the port).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    hop.rsplit_once(':')?
        .0
        .parse::<std::net::Ipv4Addr>()
        .ok()
        .map(IpAddr::V4)
}

/// The host the client addressed: `Host`, or the HTTP/2 `:authority`.
fn host_of<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// The host name a `Host` value names, as tenants list it: no port, and no trailing dot
/// (`acme.example.com.` is the same host to DNS and to most apps).
pub(crate) fn host_name(host: &str) -> &str {
    let h = strip_port(host);
    h.strip_suffix('.').unwrap_or(h)
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
/// depends on who normalises them are refused, because the app could resolve
/// `/public/../admin` to a protected page that idgate had matched as public:
/// - dot segments, also as `..;x` (a dot segment to Tomcat, Jetty and Spring) and padded
///   with whitespace or control characters (`..%20`, `.%09.`), which some servers and
///   file systems trim;
/// - backslashes and percent-encoded control characters;
/// - double-encoded dots, slashes and backslashes (`%252e`), which an app that decodes
///   twice turns into the dot segments refused above;
/// - percent-encoded bytes that are not UTF-8 (overlong `%C0%AE` is `.` to a lenient
///   decoder), rather than decoding them lossily into something the app reads otherwise.
pub fn routing_path(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    if !raw.starts_with('/') {
        return Err("path is not absolute");
    }
    let decoded = if raw.contains('%') {
        if encodes_control(raw.as_bytes()) {
            return Err("path contains a percent-encoded control character");
        }
        let decoded = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| "path is not UTF-8 once percent-decoded (overlong or stray bytes)")?;
        if decoded.contains('%') && encodes_separator(decoded.as_bytes()) {
            return Err("path contains a double-encoded dot, slash or backslash");
        }
        decoded
    } else {
        Cow::Borrowed(raw)
    };
    if decoded.contains(['\\', '\0']) {
        return Err("path contains a backslash or NUL");
    }
    // Most paths have no `/.` and nothing beyond printable ASCII: they skip the walk over
    // the segments.
    if decoded.contains("/.") || decoded.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        if decoded.contains(LOOKALIKE_SEPARATORS) {
            return Err("path contains a character that some servers map to a dot or slash");
        }
        for seg in decoded.split('/') {
            // The part before any `;` is what counts (path parameters).
            let seg = seg.split(';').next().unwrap_or(seg);
            if seg == "." || seg == ".." {
                return Err("path contains a dot segment");
            }
            let padding = |c: char| c.is_whitespace() || c.is_control();
            if seg.contains('.')
                && seg.contains(padding)
                && seg.chars().all(|c| c == '.' || padding(c))
            {
                return Err(
                    "path contains a dot segment padded with whitespace or control characters",
                );
            }
        }
    }
    Ok(decoded)
}

/// Characters that Windows' best-fit mapping (IIS, .NET) and some Unicode normalisations
/// turn into `.`, `/` or `\\`: `/app/．．/admin` is `/app/../admin` to such an app.
const LOOKALIKE_SEPARATORS: [char; 9] = [
    '\u{FF0E}', // fullwidth full stop
    '\u{FE52}', // small full stop
    '\u{2024}', // one dot leader
    '\u{FF0F}', // fullwidth solidus
    '\u{2215}', // division slash
    '\u{2044}', // fraction slash
    '\u{FF3C}', // fullwidth reverse solidus
    '\u{FE68}', // small reverse solidus
    '\u{2216}', // set minus
];

/// Whether some `%XY` in `raw` encodes a control character (below 0x20, or 0x7F).
fn encodes_control(raw: &[u8]) -> bool {
    raw.windows(3).any(|w| {
        w[0] == b'%'
            && match (hex_value(w[1]), hex_value(w[2])) {
                (Some(hi), Some(lo)) => {
                    let b = hi << 4 | lo;
                    b < 0x20 || b == 0x7f
                }
                _ => false,
            }
    })
}

/// Whether once-decoded text still holds `%2e`, `%2f` or `%5c` (any case): the path was
/// encoded twice over a dot, slash or backslash.
fn encodes_separator(decoded: &[u8]) -> bool {
    decoded.windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (hex_value(w[1]), hex_value(w[2])),
                (Some(2), Some(0xe | 0xf)) | (Some(5), Some(0xc))
            )
    })
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// SPEC §7: a request that two readers could take for different requests is refused
/// before routing, with the status and the reason for the log: an HTTP/1.1 request
/// without `Host`, two `Host` fields, a host that is not `host[:port]`, an `:authority`
/// (or absolute-form target) that a `Host` field contradicts, a target that is not ASCII
/// origin-form, and any transfer coding but `chunked`. hyper's parser already refuses a coding list that does not end in `chunked`
/// and `Transfer-Encoding` on HTTP/1.0, but it takes `gzip, chunked` (and `chunked,
/// chunked`) as plain chunked: forwarded de-chunked, the app would get a body whose
/// coding was dropped.
fn check_request_head<B>(req: &Request<B>) -> Result<(), (StatusCode, &'static str)> {
    const BAD: StatusCode = StatusCode::BAD_REQUEST;
    let headers = req.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err((BAD, "two Host headers"));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400; which site it
    // meant would otherwise be the app's guess.
    if host.is_none() && req.version() == http::Version::HTTP_11 && req.uri().authority().is_none()
    {
        return Err((BAD, "HTTP/1.1 request without Host"));
    }
    if let Some(h) = host
        && !is_host_port(h.as_bytes())
    {
        return Err((BAD, "Host is not a valid host[:port]"));
    }
    if let Some(authority) = req.uri().authority() {
        if !is_host_port(authority.as_str().as_bytes()) {
            return Err((BAD, "the request's authority is not a valid host[:port]"));
        }
        if let Some(h) = host
            && !h
                .as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes())
        {
            return Err((BAD, "the request's authority disagrees with Host"));
        }
    }
    if let Some(pq) = req.uri().path_and_query() {
        let target = pq.as_str().as_bytes();
        if target.first() != Some(&b'/') || !target.iter().all(u8::is_ascii_graphic) {
            return Err((BAD, "request target is not ASCII origin-form"));
        }
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next()
        && (codings.next().is_some()
            || !first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked"))
    {
        return Err((
            StatusCode::NOT_IMPLEMENTED,
            "Transfer-Encoding other than exactly chunked",
        ));
    }
    Ok(())
}

/// The bytes of a DNS name or IPv4 address in `Host`: letters, digits, `-`, `.`, `_`. A
/// table, since every request's `Host` is checked byte by byte.
const HOST_NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_';
        b += 1;
    }
    table
};

/// `host[:port]` (RFC 9110 §7.2): a DNS name or IPv4 address, or an IPv6 literal in
/// brackets, then an optional decimal port up to 65535. No user info, path, list or
/// percent-encoding: whatever the app or a log reads in `Host` must be one host.
fn is_host_port(v: &[u8]) -> bool {
    let (host_ok, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|t| t.parse::<std::net::Ipv6Addr>().ok());
        (literal.is_some(), &rest[end + 1..])
    } else {
        let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
        let name = &v[..end];
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.iter().all(|&b| HOST_NAME_BYTES[usize::from(b)]);
        (ok, &v[end..])
    };
    host_ok
        && match port {
            [] => true,
            [b':', digits @ ..] => {
                (1..=5).contains(&digits.len())
                    && digits.iter().all(u8::is_ascii_digit)
                    && std::str::from_utf8(digits)
                        .ok()
                        .and_then(|d| d.parse::<u16>().ok())
                        .is_some()
            }
            _ => false,
        }
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
            "/public/%EF%BC%8E%EF%BC%8E/admin",
            "/public/\u{FF0E}\u{FF0E}/admin",
            "/public/..%EF%BC%8Fadmin",
            "/public%E2%88%95admin",
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/%2E%2E%2Fadmin",
            "/public/./x",
            "/public/..",
            "/public/..;/admin",
            "/public/.;x/admin",
            "/a\\b",
            "/a%5Cb",
            "/a%00",
            "*",
            // Percent-encoded control characters.
            "/a%01",
            "/a%1f",
            "/a%1F",
            "/a%7f",
            "/a%0d%0aX-Injected:%201",
            // Double-encoded dots, slashes and backslashes, in any case and form.
            "/public/%252e%252e/admin",
            "/public/%252E%252E/admin",
            "/public/..%252fadmin",
            "/public/..%252Fadmin",
            "/public/..%255cadmin",
            "/public/%25%32%65%25%32%65/admin",
            // Not UTF-8 once decoded: overlong forms of `.` and stray bytes.
            "/public/%C0%AE%C0%AE/admin",
            "/public/%E0%80%AE/admin",
            "/public/%F0%80%80%AE/admin",
            "/public/%ff",
            "/public/%C0",
            // Dot segments padded with whitespace or control characters.
            "/public/..%20/admin",
            "/public/%20../admin",
            "/public/.%20/admin",
            "/public/.%09./admin",
            "/public/..%0B/admin",
            "/public/..%C2%A0/admin",
            "/public/..%E3%80%80/admin",
            "/public/.. /admin",
            "/public/ ..;x/admin",
        ] {
            assert!(routing_path(bad).is_err(), "{bad}");
        }
        for good in [
            "/public/a%20b",
            "/public/caf%C3%A9",
            "/public/...",
            "/public/.well-known/x",
            "/public/%2541",
            "/public/100%25",
            "/public/%zz",
            "/public/a.%20b",
        ] {
            assert!(routing_path(good).is_ok(), "{good}");
        }
    }

    fn head(version: http::Version, uri: &str, fields: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::get(uri).version(version).body(()).unwrap();
        for (name, value) in fields {
            req.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        req
    }

    #[test]
    fn request_heads_that_two_readers_could_read_differently_are_refused() {
        use http::Version;
        let h1 = |fields: &[(&str, &str)]| head(Version::HTTP_11, "/x", fields);
        let refused = |req: Request<()>| check_request_head(&req).map_err(|(s, _)| s.as_u16());
        assert_eq!(refused(h1(&[("host", "a.example")])), Ok(()));
        // RFC 9112 §3.2; HTTP/1.0 has no Host to require, and an absolute-form target
        // names its host itself.
        assert_eq!(refused(h1(&[])), Err(400));
        assert_eq!(refused(head(Version::HTTP_10, "/x", &[])), Ok(()));
        assert_eq!(
            refused(head(Version::HTTP_11, "http://a.example/x", &[])),
            Ok(())
        );
        assert_eq!(
            refused(h1(&[("host", "a.example"), ("host", "b.example")])),
            Err(400)
        );
        for good in [
            "a.example",
            "A.Example:8080",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "svc_name.ns",
            "localhost:65535",
        ] {
            assert_eq!(refused(h1(&[("host", good)])), Ok(()), "{good}");
        }
        for bad in [
            "",
            "a.example/x",
            "user@a.example",
            "a.example:",
            "a.example:port",
            "a.example:65536",
            "a.example:123456",
            "a.example, b.example",
            "a.example:80:80",
            "::1",
            "[::1",
            "[::1]x",
            "[not-v6]",
            "a%2eexample",
        ] {
            assert_eq!(refused(h1(&[("host", bad)])), Err(400), "{bad:?}");
        }
        // An authority (HTTP/2, or HTTP/1.1 absolute-form) that Host contradicts.
        let h2 = |uri: &str, fields: &[(&str, &str)]| head(Version::HTTP_2, uri, fields);
        assert_eq!(refused(h2("http://a.example/x", &[])), Ok(()));
        assert_eq!(
            refused(h2("http://a.example/x", &[("host", "A.EXAMPLE")])),
            Ok(())
        );
        assert_eq!(
            refused(h2("http://a.example/x", &[("host", "b.example")])),
            Err(400)
        );
        assert_eq!(refused(h2("http://u@a.example/x", &[])), Err(400));
        // Targets that are not ASCII origin-form.
        assert_eq!(refused(h2("http://a.example/caf\u{e9}", &[])), Err(400));
        assert_eq!(refused(h2("http://a.example?q=1", &[])), Err(400));
        assert_eq!(refused(h2("*", &[])), Err(400));
        // Transfer codings: only exactly `chunked`.
        let hosted = |fields: &[(&str, &str)]| {
            let mut all = vec![("host", "a.example")];
            all.extend_from_slice(fields);
            head(Version::HTTP_11, "/x", &all)
        };
        assert_eq!(refused(hosted(&[("transfer-encoding", "chunked")])), Ok(()));
        assert_eq!(
            refused(hosted(&[("transfer-encoding", " Chunked ")])),
            Ok(())
        );
        for bad in [
            &[("transfer-encoding", "gzip, chunked")][..],
            &[("transfer-encoding", "chunked, chunked")],
            &[("transfer-encoding", "identity")],
            &[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ],
        ] {
            assert_eq!(refused(hosted(bad)), Err(501), "{bad:?}");
        }
    }

    #[test]
    fn forwarded_hops_parse_with_or_without_ports_and_nothing_else() {
        assert_eq!(parse_hop("192.0.2.1"), "192.0.2.1".parse().ok());
        assert_eq!(parse_hop("192.0.2.1:4711"), "192.0.2.1".parse().ok());
        assert_eq!(parse_hop("2001:db8::1"), "2001:db8::1".parse().ok());
        assert_eq!(parse_hop("[2001:db8::1]:443"), "2001:db8::1".parse().ok());
        for bad in ["unknown", "", "_hidden", "192.0.2.1:x:y", "[::1"] {
            assert_eq!(parse_hop(bad), None, "{bad}");
        }
    }

    #[test]
    fn trailing_dots_and_ports_are_not_part_of_the_host_name() {
        assert_eq!(host_name("acme.example.com."), "acme.example.com");
        assert_eq!(host_name("acme.example.com.:8080"), "acme.example.com");
        assert_eq!(host_name("[::1]:80"), "[::1]");
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
        assert_eq!(
            ensure_request_id(&mut h, || true),
            (HeaderValue::from_static("abc-123"), None)
        );
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        let (id, client) = ensure_request_id(&mut h, || true);
        assert_eq!(client, None, "an ill-formed id is not logged at all");
        assert_eq!(id.len(), 32);
        assert!(id.to_str().unwrap().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(h["x-request-id"], id);
        assert_ne!(
            ensure_request_id(&mut http::HeaderMap::new(), || true).0,
            id,
            "ids differ"
        );
    }

    #[test]
    fn an_untrusted_clients_request_id_is_only_the_client_request_id() {
        let mut h = http::HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("chosen-123"));
        let (id, client) = ensure_request_id(&mut h, || false);
        assert_eq!(client.as_deref(), Some("chosen-123"));
        assert_ne!(id, "chosen-123");
        assert_eq!(id.len(), 32);
        assert_eq!(h["x-request-id"], id, "the upstream gets idgate's id");
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
    }

    #[test]
    fn two_request_ids_are_replaced_even_from_a_trusted_proxy() {
        let mut h = http::HeaderMap::new();
        h.append("x-request-id", HeaderValue::from_static("first-1"));
        h.append("x-request-id", HeaderValue::from_static("second-2"));
        let (id, client) = ensure_request_id(&mut h, || true);
        assert_ne!(id, "first-1", "which of two is meant is anyone's guess");
        assert_eq!(client.as_deref(), Some("first-1"));
        assert_eq!(h.get_all("x-request-id").iter().collect::<Vec<_>>(), [&id]);
    }
}
