//! idgate's own session endpoints: `/_idgate/session` (who is signed in, as JSON),
//! `/_idgate/logout` and `/_idgate/logged-out`. They judge a session by the gate's own
//! rules (which tenant a host serves, lent through [`RouteCtx`]) and answer with the
//! gate's refusals; what Single Logout adds to a logout is `saml::routes`' part.

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::gateway::RouteCtx;
use crate::page::{Href, Page, Step};
use crate::response::{self, Body, forbidden, store_unavailable};
use crate::saml::SpState;
use crate::session::{Auth, Authenticated};

/// Where a logout lands when the tenant sets no `after_logout_url`.
pub const LOGGED_OUT: &str = "/_idgate/logged-out";

/// `/_idgate/session`, `/_idgate/logout` and `/_idgate/logged-out`; `None` for any
/// other path or a method the path does not take (the gateway's 404).
pub async fn handle(
    ctx: &RouteCtx<'_>,
    req: Request<Incoming>,
    html: bool,
    path: &str,
) -> Option<Response<Body>> {
    let read = req.method() == Method::GET || req.method() == Method::HEAD;
    match path {
        "/_idgate/session" if read => Some(session(ctx, &req).await),
        "/_idgate/logout" => Some(logout(ctx, req, html).await),
        "/_idgate/logged-out" if read => Some(logged_out(ctx, &req)),
        _ => None,
    }
}

async fn session(ctx: &RouteCtx<'_>, req: &Request<Incoming>) -> Response<Body> {
    let request_id = ctx.request_id;
    let host = ctx.host(req);
    match ctx
        .sessions
        .authenticate(ctx.snapshot, req.headers(), &|t| ctx.serves(host, t))
        .await
    {
        Auth::Valid(a) => session_json(&a),
        Auth::Missing => ctx.unauthenticated_json(req),
        Auth::Revoked(reason) => forbidden(reason, false, request_id),
        Auth::Unavailable => store_unavailable(false, request_id),
        Auth::Unusable(attribute) => {
            crate::gateway::unusable_identity(attribute, false, request_id)
        }
    }
}

fn session_json(a: &Authenticated) -> Response<Body> {
    let id = &a.identity;
    response::json(
        StatusCode::OK,
        &serde_json::json!({
            "user_id": id.user_id,
            "group_id": id.group_id,
            "tenant": id.tenant,
            "email": id.email,
            "name": a.name,
            "given_name": id.given_name,
            "family_name": id.family_name,
            "role": id.role,
            "created_at": a.record.created_at,
            "expires_at": a.record.expires_at,
        }),
    )
}

/// Ends the session and redirects through SAML Single Logout, or to
/// `after_logout_url` / `/_idgate/logged-out`. A GET must come from one of our own
/// pages, so that a cross-site link or image cannot log people out; any other GET
/// (typed in the address bar, a link from elsewhere) gets a page that asks, whose
/// button POSTs. The POST needs no other check: the session cookie is
/// `SameSite=Lax`, so a cross-site form arrives without it and ends nothing.
async fn logout(ctx: &RouteCtx<'_>, req: Request<Incoming>, html: bool) -> Response<Body> {
    let request_id = ctx.request_id;
    let method = req.method().clone();
    let direct = method == Method::POST || (method == Method::GET && ctx.same_origin(&req));
    if !direct {
        if method != Method::GET && method != Method::HEAD {
            tracing::warn!(request_id, %method, "refused: logout is GET or POST");
            let mut resp = response::error(
                StatusCode::METHOD_NOT_ALLOWED,
                html,
                "method_not_allowed",
                "Log out with POST (or a GET from a page of this application).",
                request_id,
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
            return resp;
        }
        if wants_json_only(req.headers()) {
            tracing::info!(
                request_id,
                "logout GET is not same-origin: refused, not confirmed (JSON client)"
            );
            return response::error(
                StatusCode::FORBIDDEN,
                false,
                "cross_site_logout",
                "Log out with POST, or with a GET from a page of this application (same origin).",
                request_id,
            );
        }
        tracing::info!(
            request_id,
            "logout GET is not same-origin: asking for confirmation"
        );
        return confirm_logout(ctx, &req);
    }
    let host = ctx.host(&req);
    let ended = match ctx
        .sessions
        .logout(
            &crate::audit::Origin::new(crate::audit::Actor::User, request_id),
            req.headers(),
            &|t| ctx.serves(host, t),
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(request_id, error = %e, "logout failed: store unavailable");
            if html {
                return Page::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
                    .step(Step::post("Try to log out again", Href::logout()))
                    .reference(request_id)
                    .into_response();
            }
            return store_unavailable(false, request_id);
        }
    };
    let land_on = ended
        .as_ref()
        .and_then(|r| ctx.tenancy.after_logout.get(&r.tenant).cloned())
        .unwrap_or_else(|| LOGGED_OUT.to_owned());
    let location = match &ended {
        Some(r) => {
            tracing::info!(
                request_id,
                tenant = r.tenant,
                user_id = r.user_id,
                "logged out"
            );
            crate::saml::routes::single_logout_location(ctx, r, &land_on).await
        }
        None => land_on,
    };
    let mut resp = response::redirect(&location);
    resp.headers_mut()
        .insert(header::SET_COOKIE, ctx.sessions.clear_cookie());
    resp
}

/// `/_idgate/logged-out`: where a logout lands without `after_logout_url`, with a
/// way back in (the login of the tenant this host serves).
fn logged_out(ctx: &RouteCtx<'_>, req: &Request<Incoming>) -> Response<Body> {
    let tenant = ctx.tenant_for(ctx.host(req));
    Page::new(StatusCode::OK, "logged_out")
        .step(Step::sign_in(tenant.as_deref(), "/"))
        .into_response()
}

/// The page a logout GET that is not provably same-origin gets: a "Log out" button
/// that POSTs here, and a way back to the app. The button's POST may be redirected
/// on to the IdP (Single Logout) or an absolute `after_logout_url`; browsers hold
/// every redirect of a form submission to `form-action`, so those origins are named.
fn confirm_logout(ctx: &RouteCtx<'_>, req: &Request<Incoming>) -> Response<Body> {
    let mut page = Page::new(StatusCode::OK, "confirm_logout")
        .step(Step::post("Log out", Href::logout()))
        .step(Step::link("Stay signed in", Href::home()));
    if let Some(tenant) = ctx.tenant_for(ctx.host(req)) {
        let tn = ctx.tenancy;
        let origins = [
            tn.after_logout.get(&tenant).cloned(),
            match tn.sp(&tenant) {
                Some(SpState::Ready(sp)) if sp.slo_enabled() => sp.idp_slo_url().map(str::to_owned),
                _ => None,
            },
        ];
        for url in origins.into_iter().flatten() {
            if let Ok(u) = url::Url::parse(&url)
                && u.origin().is_tuple()
            {
                page = page.allow_form_target(u.origin().ascii_serialization());
            }
        }
    }
    page.into_response()
}

/// Whether the client asks for JSON and not HTML (an API client rather than a browser
/// or a tool that takes anything).
fn wants_json_only(headers: &http::HeaderMap) -> bool {
    !response::accepts_html(headers)
        && headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("json"))
}
