//! Forward auth (SPEC §9): `/_idgate/auth` tells an ingress that already carries the
//! traffic (nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`) whether the
//! request it holds may pass, and with which identity.
//!
//! The request is judged exactly as the proxied pipeline judges its own: the same path
//! checks, access rules, session gate and tenant binding, all borrowed from the gateway
//! (this is its child module for that reason) rather than copied. Only the description
//! of the request differs: it arrives in headers that only a trusted proxy may set.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use percent_encoding::utf8_percent_encode;

use super::{Gateway, QUERY_VALUE, host_name, is_host_port, routing_path, unusable_identity};
use crate::metrics::RouteClass;
use crate::response::{self, Body, forbidden, store_unavailable};
use crate::session::Gate;
use crate::session::bearer::BearerGate;
use crate::snapshot::{Snapshot, Tenancy};

const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Where nginx finds the login when it turns the 401 into a redirect (`auth_request`
/// only understands 2xx, 401 and 403, so idgate cannot answer it with a 302).
pub const LOGIN_URL_HEADER: HeaderName = HeaderName::from_static("x-idgate-login-url");

/// What forward auth needs beyond the gateway's own state: idgate's public origin, the
/// only place a login may be sent when the forwarded host is not one idgate serves.
pub(super) struct ForwardAuth {
    /// `public_url`'s scheme.
    scheme: String,
    /// `public_url`'s `host[:port]`.
    authority: String,
    /// `public_url`'s host name, lower-cased, without port.
    host: String,
}

impl ForwardAuth {
    /// From `[server].public_url`.
    pub(super) fn new(public_url: &url::Url) -> ForwardAuth {
        let host = public_url
            .host_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let authority = match public_url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        ForwardAuth {
            scheme: public_url.scheme().to_owned(),
            authority,
            host,
        }
    }
}

/// The original request, as the ingress describes it.
struct Original<'h> {
    method: Method,
    /// Path and query, as the client sent them.
    uri: &'h str,
    /// `X-Forwarded-Host`, else the auth request's own `Host`.
    host: Option<&'h str>,
    /// `X-Forwarded-Proto`, when given.
    proto: Option<&'static str>,
    /// nginx `auth_request` (an `X-Original-URI` was sent): it cannot relay a redirect.
    nginx: bool,
}

/// Why the ingress's description of the request cannot be used: a misconfigured ingress
/// (a header missing) or one passing on garbage. Logged; answered 400.
fn original(headers: &HeaderMap) -> Result<Original<'_>, &'static str> {
    let text = |name: &HeaderName| -> Result<Option<&str>, &'static str> {
        let mut all = headers.get_all(name).iter();
        let Some(v) = all.next() else {
            return Ok(None);
        };
        if all.next().is_some() {
            return Err("a forwarded request header appears twice");
        }
        v.to_str()
            .map(Some)
            .map_err(|_| "a forwarded request header is not ASCII")
    };
    let (uri, nginx) = match text(&X_ORIGINAL_URI)? {
        Some(u) => (u, true),
        None => (
            text(&X_FORWARDED_URI)?.ok_or("neither X-Original-URI nor X-Forwarded-Uri was sent")?,
            false,
        ),
    };
    let method = match text(&X_ORIGINAL_METHOD)? {
        Some(m) => m,
        None => text(&X_FORWARDED_METHOD)?
            .ok_or("neither X-Original-Method nor X-Forwarded-Method was sent")?,
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| "the forwarded method is not an HTTP method")?;
    let host = match text(&X_FORWARDED_HOST)? {
        Some(h) if is_host_port(h.as_bytes()) => Some(h),
        Some(_) => return Err("X-Forwarded-Host is not one host[:port]"),
        None => headers.get(header::HOST).and_then(|h| h.to_str().ok()),
    };
    let proto = match text(&X_FORWARDED_PROTO)? {
        None => None,
        Some(p) if p.eq_ignore_ascii_case("https") => Some("https"),
        Some(p) if p.eq_ignore_ascii_case("http") => Some("http"),
        Some(_) => return Err("X-Forwarded-Proto is neither http nor https"),
    };
    Ok(Original {
        method,
        uri,
        host,
        proto,
        nginx,
    })
}

/// `/_idgate/auth`, any method. Only the trusted proxies may ask: the answer carries a
/// signed identity, and the headers that describe the request are theirs to set.
pub(super) async fn answer(
    gw: &Gateway,
    headers: &HeaderMap,
    peer: SocketAddr,
    request_id: &str,
) -> Response<Body> {
    if !gw.is_trusted(peer.ip()) {
        tracing::warn!(
            request_id,
            peer = %peer.ip(),
            reason = "untrusted_peer",
            "refused: forward auth asked by a peer outside trusted_proxies"
        );
        return response::error(
            StatusCode::FORBIDDEN,
            false,
            "forbidden",
            "Forward auth answers only the proxies listed in trusted_proxies.",
            request_id,
        );
    }
    let html = response::accepts_html(headers);
    let orig = match original(headers) {
        Ok(o) => o,
        Err(reason) => {
            tracing::warn!(
                request_id,
                reason,
                "refused: forward auth request does not describe the original request"
            );
            return response::error(
                StatusCode::BAD_REQUEST,
                false,
                "bad_request",
                "The ingress must send the original request's method and URI (see docs/forward-auth.md).",
                request_id,
            );
        }
    };
    // The same checks as the pipeline's, on the target the app will get. A refusal is
    // 403 rather than the pipeline's 400: nginx relays only 401 and 403 from here.
    let raw_path = orig.uri.split_once('?').map_or(orig.uri, |(p, _)| p);
    let checked = if orig.uri.bytes().all(|b| b.is_ascii_graphic()) {
        routing_path(raw_path)
    } else {
        Err("request target is not ASCII origin-form")
    };
    let path = match checked {
        Ok(p) => p,
        Err(reason) => {
            tracing::warn!(
                request_id,
                reason,
                "refused: ambiguous forwarded request path"
            );
            return response::error(
                StatusCode::FORBIDDEN,
                html,
                "bad_request",
                "The request is not in a form this gateway accepts.",
                request_id,
            );
        }
    };

    // One load of the configuration for the whole question, as for a proxied request.
    let snap = gw.snapshots.load();
    let rules = &snap.rules;
    let tn = &snap.tenancy;
    let (route, rule) = gw.classify(&snap, &orig.method, &path, orig.host);
    match route {
        // idgate's own endpoints guard themselves (the ingress routes `/_idgate/` to
        // idgate); public paths pass without identity. Either way no identity headers,
        // so the ingress's copies of them stay empty.
        RouteClass::Reserved | RouteClass::Public => {
            tracing::debug!(request_id, method = %orig.method, path = &*path, route = route.as_str(), "forward auth: passes without identity");
            return allowed(&[]);
        }
        RouteClass::Proxied => {}
    }
    let host = orig.host;
    // A machine client's token, as on the proxied path. The ingress decides what reaches
    // the app: `forward_authorization` cannot strip the client's header from here (see
    // docs/forward-auth.md).
    if gw.sessions.any_bearer(&snap)
        && let Some(token) = crate::session::bearer::bearer_token(headers)
    {
        match gw
            .sessions
            .gate_bearer(&snap, token, |tenant| tn.serves(host, tenant))
            .await
        {
            BearerGate::NotAccepted => {}
            BearerGate::Forward(pass, _) => {
                if let Some(refusal) =
                    gw.refused_by_rule(rules, rule, &orig.method, &path, &pass, false, request_id)
                {
                    return refusal;
                }
                tracing::debug!(request_id, method = %orig.method, path = &*path, user_id = pass.auth.identity.user_id, "forward auth: allowed (bearer)");
                return allowed(&pass.headers);
            }
            BearerGate::Invalid(why) => return super::invalid_token(why, request_id),
            BearerGate::Revoked(reason) => {
                tracing::info!(
                    request_id,
                    reason = reason.code(),
                    "refused: bearer token of a blocked user or group"
                );
                return forbidden(reason, false, request_id);
            }
            BearerGate::Unavailable => return store_unavailable(false, request_id),
            BearerGate::Unusable(attribute) => {
                return unusable_identity(attribute, false, request_id);
            }
        }
    }
    let gate = gw
        .sessions
        .gate(
            &snap,
            headers,
            host.map_or(&b""[..], str::as_bytes),
            |tenant| tn.serves(host, tenant),
        )
        .await;
    match gate {
        Gate::Forward(pass) => {
            if let Some(refusal) =
                gw.refused_by_rule(rules, rule, &orig.method, &path, &pass, html, request_id)
            {
                return refusal;
            }
            tracing::debug!(request_id, method = %orig.method, path = &*path, user_id = pass.auth.identity.user_id, "forward auth: allowed");
            allowed(&pass.headers)
        }
        Gate::Missing => {
            let api = rule.is_some_and(|r| r.api);
            unauthenticated(gw, &snap, headers, &orig, &path, html, api, request_id)
        }
        Gate::Revoked(reason) => {
            tracing::info!(
                request_id,
                reason = reason.code(),
                "refused: session revoked"
            );
            forbidden(reason, html, request_id)
        }
        Gate::Unavailable => store_unavailable(html, request_id),
        Gate::Unusable(attribute) => unusable_identity(attribute, html, request_id),
    }
}

/// 200 with the identity headers for the ingress to copy onto the upstream request.
fn allowed(identity: &[(HeaderName, HeaderValue)]) -> Response<Body> {
    let mut resp = response::text(StatusCode::OK, "");
    let h = resp.headers_mut();
    for (name, value) in identity {
        h.insert(name.clone(), value.clone());
    }
    resp
}

/// No session. nginx gets 401 with the login URL in [`LOGIN_URL_HEADER`]; Traefik and
/// Caddy relay idgate's answer to the client, so a browser navigation gets the 302 and
/// anything else 401 JSON, as on the proxied path.
#[allow(clippy::too_many_arguments)]
fn unauthenticated(
    gw: &Gateway,
    snap: &Snapshot,
    headers: &HeaderMap,
    orig: &Original<'_>,
    path: &str,
    html: bool,
    api_rule: bool,
    request_id: &str,
) -> Response<Body> {
    let login_url = login_url(gw, &snap.tenancy, orig, request_id);
    let navigation = gw.is_navigation(snap, &orig.method, headers, html, path, api_rule);
    let Some(url) = login_url else {
        return response::error(
            StatusCode::UNAUTHORIZED,
            navigation && !orig.nginx,
            "unauthenticated",
            "This path needs a signed-in user, and no tenant serves this host.",
            request_id,
        );
    };
    if navigation && !orig.nginx {
        return response::redirect(&url);
    }
    let mut resp = response::json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({"error": "unauthenticated", "login_url": url}),
    );
    if orig.nginx
        && let Ok(v) = HeaderValue::from_str(&url)
    {
        resp.headers_mut().insert(LOGIN_URL_HEADER, v);
    }
    resp
}

/// The tenant's login as an absolute URL on the forwarded host and scheme, returning to
/// the original URI. The host comes from a header a client may have chosen (the ingress
/// passes its `Host` on), so it is used only when a tenant claims it or it is
/// `public_url`'s; otherwise the login goes to `public_url`, never elsewhere.
fn login_url(gw: &Gateway, tn: &Tenancy, orig: &Original<'_>, request_id: &str) -> Option<String> {
    let fa = &gw.forward_auth;
    let known = orig.host.is_some_and(|h| {
        let name = host_name(h).to_ascii_lowercase();
        name == fa.host || tn.hosts.contains_key(&name)
    });
    let (scheme, authority) = match orig.host {
        Some(h) if known => (orig.proto.unwrap_or(&fa.scheme), h),
        _ => {
            if let Some(h) = orig.host {
                tracing::warn!(
                    request_id,
                    host = h,
                    "forward auth: the forwarded host is not one idgate serves; the login goes to public_url"
                );
            }
            (fa.scheme.as_str(), fa.authority.as_str())
        }
    };
    let tenant = tn.tenant_for(Some(authority))?;
    Some(format!(
        "{scheme}://{authority}/_idgate/saml/{tenant}/login?return_to={}",
        utf8_percent_encode(orig.uri, QUERY_VALUE)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_original_request_comes_from_either_convention() {
        let h = headers(&[
            ("x-original-uri", "/a?b=1"),
            ("x-original-method", "POST"),
            ("host", "idgate:8080"),
        ]);
        let o = original(&h).unwrap();
        assert_eq!(
            (o.method, o.uri, o.host, o.proto, o.nginx),
            (Method::POST, "/a?b=1", Some("idgate:8080"), None, true)
        );
        let h = headers(&[
            ("x-forwarded-uri", "/x"),
            ("x-forwarded-method", "DELETE"),
            ("x-forwarded-host", "app.example.com"),
            ("x-forwarded-proto", "HTTPS"),
            ("host", "idgate:8080"),
        ]);
        let o = original(&h).unwrap();
        assert_eq!(
            (o.method, o.uri, o.host, o.proto, o.nginx),
            (
                Method::DELETE,
                "/x",
                Some("app.example.com"),
                Some("https"),
                false
            )
        );
    }

    #[test]
    fn an_incomplete_or_garbled_description_is_refused() {
        for bad in [
            &[("x-original-method", "GET")][..],
            &[("x-original-uri", "/")],
            &[("x-forwarded-uri", "/"), ("x-forwarded-method", "G E T")],
            &[
                ("x-forwarded-uri", "/"),
                ("x-forwarded-method", "GET"),
                ("x-forwarded-host", "a.example, b.example"),
            ],
            &[
                ("x-forwarded-uri", "/"),
                ("x-forwarded-method", "GET"),
                ("x-forwarded-proto", "gopher"),
            ],
            &[
                ("x-forwarded-uri", "/"),
                ("x-forwarded-uri", "/admin"),
                ("x-forwarded-method", "GET"),
            ],
        ] {
            assert!(original(&headers(bad)).is_err(), "{bad:?}");
        }
    }
}
