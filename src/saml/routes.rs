//! The SAML endpoints under `/_idgate/saml/{tenant}/`: metadata, SP-initiated login and
//! the Assertion Consumer Service. Maestrano's SSO paths reach the same login and ACS
//! (see `maestrano::routes`), so a Maestrano login is validated exactly as any other.
//!
//! An accepted assertion is turned into directory terms here and provisioned through
//! [`crate::directory::Directory::login`]; the session is made by
//! [`crate::session::Sessions`]. Nothing here writes to the store directly.

use std::collections::HashMap;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{AcsError, SamlTenant, SpState};
use crate::audit::{self, Actor, Origin};
use crate::config::Config;
use crate::directory::LoginError;
use crate::gateway::RouteCtx;
use crate::limits::LoginStarts;
use crate::page::{Href, Page, Step};
use crate::response::{self, Body};
use crate::session::SessionError;

/// A SAML response is a few KiB; 1 MiB is far beyond any real one.
const MAX_ACS_BODY: usize = 1 << 20;

/// How long a started login may take to come back to the ACS, in seconds.
const LOGIN_COOKIE_MAX_AGE: u32 = 600;

/// The answer for a tenant whose IdP metadata (from `idp_metadata_url`) has never been
/// had: nothing can be started or checked without the IdP's certificates, and a retry
/// later may succeed, so 503 rather than an error the user cannot act on.
pub fn metadata_pending(ctx: &RouteCtx<'_>, tenant: &str, html: bool) -> Response<Body> {
    let request_id = ctx.request_id;
    tracing::warn!(
        request_id,
        tenant,
        "SAML endpoint unavailable: the IdP metadata has not been fetched yet (see the idp_metadata_url log lines)"
    );
    response::error(
        StatusCode::SERVICE_UNAVAILABLE,
        html,
        "idp_metadata_unavailable",
        "Sign-in is not available yet: the identity provider's settings could not be loaded. Please try again in a minute.",
        request_id,
    )
}

/// Where the browser goes once idgate has ended the session `ended`: with Single
/// Logout (an SP key and the IdP's SLO endpoint) to the IdP with a signed
/// LogoutRequest, whose answer lands on `land_on` (see [`SamlRoutes::handle`]'s `slo`);
/// otherwise straight to `land_on`. The session here is over already, so a failure to
/// start only skips the IdP's part.
pub async fn single_logout_location(
    ctx: &RouteCtx<'_>,
    ended: &crate::session::model::SessionRecord,
    land_on: &str,
) -> String {
    let (Some(subject), Some(SpState::Ready(sp))) = (&ended.saml, ctx.tenancy.sp(&ended.tenant))
    else {
        return land_on.to_owned();
    };
    if !sp.slo_enabled() {
        return land_on.to_owned();
    }
    match sp
        .logout_request_redirect(
            ctx.directory.store(),
            &subject.name_id,
            subject.session_index.as_deref(),
            land_on,
        )
        .await
    {
        Ok(url) => url,
        Err(e) => {
            tracing::error!(request_id = ctx.request_id, tenant = ended.tenant, error = %e, "cannot start SAML Single Logout; logged out here only");
            land_on.to_owned()
        }
    }
}

/// What the SAML endpoints keep between requests: the login-start limiter and how to
/// write the login cookie. Tenant-independent, so it outlives tenant-set changes.
pub struct SamlRoutes {
    login_starts: LoginStarts,
    login_cookie_name: String,
    /// Whether users reach the app over https: the login cookie's attributes follow.
    https: bool,
}

impl SamlRoutes {
    /// Built once from a validated config.
    pub fn new(config: &Config) -> SamlRoutes {
        SamlRoutes {
            login_starts: LoginStarts::new(config.access.login_starts_per_minute),
            login_cookie_name: format!("{}_login", crate::session::cookie_name(config)),
            https: config.server.public_url.scheme() == "https",
        }
    }

    /// `/_idgate/saml/{tenant}/{metadata|login|acs}`
    pub async fn handle(
        &self,
        ctx: &RouteCtx<'_>,
        req: Request<Incoming>,
        path: &str,
    ) -> Response<Body> {
        let request_id = ctx.request_id;
        let html = response::accepts_html(req.headers());
        let rest = &path["/_idgate/saml/".len()..];
        let (tenant, action) = rest.split_once('/').unwrap_or((rest, ""));
        if (req.method(), action) == (&Method::GET, "metadata")
            && let Some(xml) = ctx.tenancy.sp_metadata(tenant)
        {
            let mut resp = Response::new(response::full(xml));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/samlmetadata+xml"),
            );
            return resp;
        }
        let sp = match ctx.tenancy.sp(tenant) {
            Some(SpState::Ready(sp)) => sp,
            Some(SpState::Pending) => return metadata_pending(ctx, tenant, html),
            None => {
                return response::error(
                    StatusCode::NOT_FOUND,
                    html,
                    "unknown_tenant",
                    "No such tenant.",
                    request_id,
                );
            }
        };
        let sp = &*sp;
        match (req.method(), action) {
            (&Method::GET, "login") => self.login(ctx, sp, req, html).await,
            (&Method::POST, "acs") => self.acs(ctx, sp, req).await,
            (&Method::GET | &Method::POST, "slo") => self.slo(ctx, sp, req, html).await,
            (&Method::POST, "slo/soap") => self.slo_soap(ctx, sp, req).await,
            _ => response::error(
                StatusCode::NOT_FOUND,
                html,
                "not_found",
                "No such idgate endpoint.",
                request_id,
            ),
        }
    }

    /// The cookie that ties a pending SP-initiated login to the browser that started it.
    /// The IdP posts to the ACS cross-site, so over https it must be `SameSite=None`.
    fn login_cookie(&self, value: &str, max_age: u32) -> String {
        let attrs = if self.https {
            "; Secure; SameSite=None"
        } else {
            "; SameSite=Lax"
        };
        format!(
            "{}={value}; Path=/; HttpOnly; Max-Age={max_age}{attrs}",
            self.login_cookie_name
        )
    }

    /// SP-initiated login: a redirect to the IdP with an AuthnRequest, the request
    /// remembered for the ACS, and the login cookie binding it to this browser.
    pub async fn login(
        &self,
        ctx: &RouteCtx<'_>,
        sp: &SamlTenant,
        req: Request<Incoming>,
        html: bool,
    ) -> Response<Body> {
        let request_id = ctx.request_id;
        let tenant = sp.tenant();
        let client = ctx.client_ip(req.headers());
        let return_to = req
            .uri()
            .query()
            .and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "return_to")
                    .map(|(_, v)| v.into_owned())
            })
            .and_then(|r| super::safe_return_to(&r))
            .unwrap_or_else(|| "/".to_owned());
        if let Err(wait) = self.login_starts.take(client, tenant) {
            tracing::warn!(request_id, tenant, %client, retry_after = wait, "refused: too many login starts");
            let wait_words = format!(
                "Please try again in {wait} second{}.",
                if wait == 1 { "" } else { "s" }
            );
            let mut resp = if html {
                Page::new(StatusCode::TOO_MANY_REQUESTS, "too_many_logins")
                    .say(wait_words)
                    .step(Step::link("Try again", Href::login(tenant, &return_to)))
                    .reference(request_id)
                    .into_response()
            } else {
                response::error(
                    StatusCode::TOO_MANY_REQUESTS,
                    false,
                    "too_many_logins",
                    &format!("Too many sign-in attempts from your address. {wait_words}"),
                    request_id,
                )
            };
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            return resp;
        }
        match sp.login_redirect(ctx.directory.store(), &return_to).await {
            Ok((location, nonce)) => {
                let mut resp = response::redirect(&location);
                resp.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                if let Ok(v) =
                    HeaderValue::from_str(&self.login_cookie(&nonce, LOGIN_COOKIE_MAX_AGE))
                {
                    resp.headers_mut().insert(header::SET_COOKIE, v);
                }
                resp
            }
            Err(e) => {
                tracing::error!(request_id, tenant, error = %e, "cannot start SAML login");
                if !html {
                    return response::store_unavailable(false, request_id);
                }
                let mut resp = Page::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
                    .step(Step::link("Try again", Href::login(tenant, &return_to)))
                    .reference(request_id)
                    .into_response();
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
                resp
            }
        }
    }

    /// The SLO endpoint: the IdP's LogoutRequest (HTTP-Redirect or HTTP-POST) ends
    /// every session of its NameID on every replica and is answered with a signed
    /// LogoutResponse; the IdP's LogoutResponse to a logout started here lands the
    /// browser where that logout said. Nothing unsigned is honoured.
    pub async fn slo(
        &self,
        ctx: &RouteCtx<'_>,
        sp: &SamlTenant,
        req: Request<Incoming>,
        html: bool,
    ) -> Response<Body> {
        use super::slo::{Binding, Incoming as Message};
        let request_id = ctx.request_id;
        let tenant = sp.tenant();
        if !sp.slo_enabled() {
            tracing::warn!(
                request_id,
                tenant,
                "SAML logout message refused: Single Logout needs sp_key and the IdP's SLO endpoint (idp_slo_url or its metadata)"
            );
            return response::error(
                StatusCode::NOT_FOUND,
                html,
                "slo_unavailable",
                "Single Logout is not set up for this application.",
                request_id,
            );
        }
        let refuse = |reason: &str, status: StatusCode| {
            ctx.metrics.saml_rejected(reason);
            response::error(
                status,
                html,
                "logout_failed",
                "The sign-out request could not be accepted.",
                request_id,
            )
        };
        let query = req.uri().query().unwrap_or_default().to_owned();
        let form: HashMap<String, String>;
        let binding = if req.method() == Method::GET {
            Binding::Redirect(&query)
        } else {
            let body = match http_body_util::Limited::new(req.into_body(), MAX_ACS_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    tracing::warn!(request_id, tenant, reason = "malformed", error = %e, "SAML logout rejected: unreadable body");
                    return refuse("malformed", StatusCode::BAD_REQUEST);
                }
            };
            form = url::form_urlencoded::parse(&body).into_owned().collect();
            let message = form
                .get("SAMLRequest")
                .or_else(|| form.get("SAMLResponse"))
                .map(String::as_str)
                .unwrap_or_default();
            Binding::Post {
                message,
                relay_state: form.get("RelayState").map(String::as_str),
            }
        };
        let message = match sp.receive_logout(ctx.directory.store(), binding).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(request_id, tenant, reason = e.code(), error = %e, "SAML logout rejected");
                let status = if matches!(e, super::slo::SloError::Store(_)) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::FORBIDDEN
                };
                return refuse(e.code(), status);
            }
        };
        match message {
            Message::Request(request) => {
                if end_subject(ctx, tenant, &request).await.is_err() {
                    return response::store_unavailable(html, request_id);
                }
                match sp.logout_response_redirect(&request) {
                    Ok(location) => {
                        let mut resp = response::redirect(&location);
                        resp.headers_mut()
                            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                        resp
                    }
                    Err(e) => {
                        tracing::error!(request_id, tenant, error = %e, "cannot answer the LogoutRequest");
                        response::error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            html,
                            "internal",
                            "Sign-out could not be completed.",
                            request_id,
                        )
                    }
                }
            }
            Message::Response(answer) => {
                if !answer.success() {
                    // The session here has ended already; the IdP's own may live on.
                    tracing::warn!(
                        request_id,
                        tenant,
                        status = answer.status,
                        "the IdP did not confirm the Single Logout"
                    );
                }
                let mut resp = response::redirect(&answer.land_on);
                *resp.status_mut() = StatusCode::SEE_OTHER;
                resp.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                resp
            }
        }
    }

    /// The SOAP back channel (SAML bindings §3.2): a LogoutRequest with an enveloped
    /// signature in a SOAP envelope, answered in the same call with a SOAP envelope
    /// holding a LogoutResponse XML-signed by the SP key. Refusals are SOAP Faults.
    pub async fn slo_soap(
        &self,
        ctx: &RouteCtx<'_>,
        sp: &SamlTenant,
        req: Request<Incoming>,
    ) -> Response<Body> {
        use super::slo::{Binding, Incoming as Message, SloError};
        let request_id = ctx.request_id;
        let tenant = sp.tenant();
        let fault = |status: StatusCode, code: &str, text: &str| {
            let body = format!(
                r#"<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault><faultcode>soap:{code}</faultcode><faultstring>{} (reference {})</faultstring></soap:Fault></soap:Body></soap:Envelope>"#,
                response::escape_html(text),
                response::escape_html(request_id)
            );
            let mut resp = Response::new(response::full(body));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/xml; charset=utf-8"),
            );
            resp
        };
        if !sp.soap_slo_enabled() {
            tracing::warn!(
                request_id,
                tenant,
                "SAML SOAP logout refused: Single Logout needs sp_key"
            );
            return fault(
                StatusCode::NOT_FOUND,
                "Client",
                "Single Logout is not set up",
            );
        }
        let body = match http_body_util::Limited::new(req.into_body(), MAX_ACS_BODY)
            .collect()
            .await
            .ok()
            .and_then(|b| String::from_utf8(b.to_bytes().to_vec()).ok())
        {
            Some(b) => b,
            None => {
                ctx.metrics.saml_rejected("malformed");
                tracing::warn!(
                    request_id,
                    tenant,
                    reason = "malformed",
                    "SAML logout rejected: unreadable SOAP body"
                );
                return fault(StatusCode::BAD_REQUEST, "Client", "unreadable request");
            }
        };
        let request = match sp
            .receive_logout(ctx.directory.store(), Binding::Soap(&body))
            .await
        {
            Ok(Message::Request(r)) => r,
            Ok(Message::Response(_)) => {
                ctx.metrics.saml_rejected("malformed");
                tracing::warn!(
                    request_id,
                    tenant,
                    reason = "malformed",
                    "SAML logout rejected: a LogoutResponse on the SOAP back channel"
                );
                return fault(StatusCode::BAD_REQUEST, "Client", "not a LogoutRequest");
            }
            Err(e) => {
                ctx.metrics.saml_rejected(e.code());
                tracing::warn!(request_id, tenant, reason = e.code(), error = %e, "SAML logout rejected");
                return if matches!(e, SloError::Store(_)) {
                    fault(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Server",
                        "try again shortly",
                    )
                } else {
                    fault(StatusCode::FORBIDDEN, "Client", "logout request refused")
                };
            }
        };
        if end_subject(ctx, tenant, &request).await.is_err() {
            return fault(
                StatusCode::SERVICE_UNAVAILABLE,
                "Server",
                "try again shortly",
            );
        }
        match sp.soap_logout_response(&request) {
            Ok(envelope) => {
                let mut resp = Response::new(response::full(envelope));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/xml; charset=utf-8"),
                );
                resp
            }
            Err(e) => {
                tracing::error!(request_id, tenant, error = %e, "cannot answer the SOAP LogoutRequest");
                fault(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Server",
                    "internal error",
                )
            }
        }
    }

    /// The Assertion Consumer Service: validate, provision, create the session, go back
    /// to where the user was. Every refusal is a short page with a reference and a log
    /// line (same reference) naming the precise reason. Traced as `idgate.saml.acs`
    /// (the tenant and the status only: nothing of the assertion).
    pub async fn acs(
        &self,
        ctx: &RouteCtx<'_>,
        sp: &SamlTenant,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let span = crate::telemetry::span!(
            "idgate.saml.acs",
            idgate.tenant = sp.tenant(),
            http.response.status_code = tracing::field::Empty,
        );
        crate::telemetry::record_tenant(sp.tenant());
        let resp = crate::telemetry::traced(self.consume(ctx, sp, req), &span).await;
        span.record("http.response.status_code", resp.status().as_u16());
        resp
    }

    async fn consume(
        &self,
        ctx: &RouteCtx<'_>,
        sp: &SamlTenant,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let request_id = ctx.request_id;
        let tn = ctx.tenancy;
        let tenant = sp.tenant();
        // Every refusal here is a page (the ACS is a browser's form post) whose way on
        // is signing in again; the demo also names the check that failed.
        let refuse_page = |status: StatusCode, reason: &str, return_to: &str| {
            let page = Page::new(status, reason)
                .step(Step::sign_in(Some(tenant), return_to))
                .reference(request_id);
            if ctx.demo {
                page.technical(reason)
            } else {
                page
            }
            .into_response()
        };
        let refuse = |status: StatusCode, reason: &str| refuse_page(status, reason, "/");
        // The person signing in acts; a refusal is audited with its reason, and with
        // the IdP's id for the person once a validated response has named one.
        let by = Origin::new(Actor::User, request_id);
        let refused = |reason: &str, subject: Option<&str>| {
            audit::record(
                ctx.metrics,
                &by,
                audit::Event::LoginRefused {
                    tenant,
                    reason,
                    subject,
                },
            );
        };
        let login_nonce =
            crate::session::find_cookie(req.headers(), &self.login_cookie_name).map(str::to_owned);
        let client = ctx.client_ip(req.headers());
        let user_agent = req
            .headers()
            .get(header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = match http_body_util::Limited::new(req.into_body(), MAX_ACS_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                ctx.metrics.saml_rejected("malformed");
                tracing::warn!(request_id, tenant, reason = "malformed", error = %e, "SAML login rejected: unreadable body");
                refused("malformed", None);
                return refuse(StatusCode::BAD_REQUEST, "malformed");
            }
        };
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(&body).into_owned().collect();
        let claims = match form.get("SAMLResponse") {
            None => Err(AcsError::Malformed("no SAMLResponse field".into())),
            Some(r) => {
                sp.consume(
                    ctx.directory.store(),
                    r,
                    form.get("RelayState").map(String::as_str),
                    login_nonce.as_deref(),
                )
                .await
            }
        };
        let claims = match claims {
            Ok(c) => c,
            Err(e) => {
                ctx.metrics.saml_rejected(e.code());
                tracing::warn!(request_id, tenant, reason = e.code(), error = %e, "SAML login rejected");
                refused(e.code(), None);
                let status = if matches!(e, AcsError::Store(_)) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::FORBIDDEN
                };
                return refuse(status, e.code());
            }
        };
        let mut identity = claims.identity.clone();
        // The SAML layer refused control characters in what it mapped; the Maestrano
        // mapping, and the whole identity after it, are held to the same rule, because
        // every one of these values reaches the app as a header or a JWT claim.
        let malformed = tn
            .maestrano()
            .map_login(tenant, &mut identity, &claims.attributes)
            .and_then(|mno| match identity.control_character_field() {
                Some(field) => Err(field),
                None => Ok(mno),
            });
        let mno = match malformed {
            Ok(mno) => mno,
            Err(attribute) => {
                ctx.metrics.saml_rejected("malformed_attribute");
                tracing::warn!(
                    request_id,
                    tenant,
                    reason = "malformed_attribute",
                    attribute,
                    "SAML login rejected: an identity value holds a control character"
                );
                refused("malformed_attribute", None);
                return refuse(StatusCode::FORBIDDEN, "malformed_attribute");
            }
        };
        // The NameID as the IdP sent it, before any protocol mapping: the IdP's Single
        // Logout names the subject the same way.
        let saml_subject =
            claims
                .identity
                .name_id
                .clone()
                .map(|name_id| crate::session::model::SamlSubject {
                    name_id,
                    session_index: claims.session_index.clone(),
                });
        let who = &identity;
        // Every SAML tenant comes from a tenant config, so its rules exist.
        let Some(rules) = tn.provisioning(tenant) else {
            tracing::error!(
                request_id,
                tenant,
                "no provisioning rules for a SAML tenant"
            );
            refused("internal", Some(&who.user_id));
            return refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal");
        };
        let user_id = match ctx.directory.login(&by, tenant, rules, who).await {
            Ok(id) => id,
            Err(LoginError::Blocked(reason)) => {
                tracing::info!(
                    request_id,
                    tenant,
                    reason = reason.code(),
                    user = who.user_id,
                    "login refused: blocked"
                );
                refused(reason.code(), Some(&who.user_id));
                return refuse_page(StatusCode::FORBIDDEN, reason.code(), &claims.return_to);
            }
            Err(e @ (LoginError::UnknownGroup | LoginError::UnknownUser)) => {
                tracing::warn!(request_id, tenant, error = %e, user = who.user_id, "login refused: not provisioned");
                refused("not_provisioned", Some(&who.user_id));
                return refuse_page(StatusCode::FORBIDDEN, "not_provisioned", &claims.return_to);
            }
            Err(LoginError::Directory(e)) => {
                tracing::error!(request_id, tenant, error = %e, "login failed: directory unavailable");
                refused("store_unavailable", Some(&who.user_id));
                return refuse_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    &claims.return_to,
                );
            }
        };
        match ctx
            .sessions
            .create_session_with(
                &by,
                tenant,
                &user_id,
                &who.group_id,
                crate::session::model::LoginDetails {
                    mno,
                    saml: saml_subject,
                    client: Some(client),
                    user_agent,
                },
            )
            .await
        {
            Ok(new) => {
                if tn.maestrano().is_maestrano(tenant) {
                    // A new company gets its bill, and a per-user bill follows a new
                    // member; the job finds out which (and does nothing otherwise).
                    if let Err(e) = tn.maestrano().billing_changed(tenant, &who.group_id).await {
                        tracing::error!(request_id, tenant, error = %e, "cannot queue a billing update; the company's next login or webhook queues it again");
                    }
                }
                tracing::info!(
                    request_id,
                    tenant,
                    user_id,
                    group_id = who.group_id,
                    "logged in"
                );
                let mut resp = response::redirect(&claims.return_to);
                *resp.status_mut() = StatusCode::SEE_OTHER;
                resp.headers_mut()
                    .insert(header::SET_COOKIE, new.set_cookie);
                resp
            }
            Err(SessionError::Refused(reason)) => {
                refused(reason.code(), Some(&who.user_id));
                refuse_page(StatusCode::FORBIDDEN, reason.code(), &claims.return_to)
            }
            Err(e) => {
                tracing::error!(request_id, tenant, error = %e, "cannot create session");
                refused("store_unavailable", Some(&who.user_id));
                refuse_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    &claims.return_to,
                )
            }
        }
    }
}

/// Ends every session a LogoutRequest names (its NameID, narrowed to its SessionIndexes
/// when it gives any), logging each, or `slo_unknown_session` when there is none. Err
/// when the store failed (logged here).
async fn end_subject(
    ctx: &RouteCtx<'_>,
    tenant: &str,
    request: &super::slo::LogoutRequest,
) -> Result<(), ()> {
    let request_id = ctx.request_id;
    let indexes: Vec<Option<&str>> = if request.session_indexes.is_empty() {
        vec![None]
    } else {
        request
            .session_indexes
            .iter()
            .map(|i| Some(i.as_str()))
            .collect()
    };
    let mut ended = Vec::new();
    for index in indexes {
        match ctx
            .sessions
            .end_saml_sessions(
                &Origin::new(Actor::Idp, request_id),
                tenant,
                &request.name_id,
                index,
            )
            .await
        {
            Ok(records) => ended.extend(records),
            Err(e) => {
                tracing::error!(request_id, tenant, error = %e, "Single Logout failed: store unavailable");
                return Err(());
            }
        }
    }
    if ended.is_empty() {
        ctx.metrics.saml_rejected("slo_unknown_session");
        tracing::warn!(
            request_id,
            tenant,
            reason = "slo_unknown_session",
            logout_request = request.id,
            "SAML LogoutRequest names no session of this SP; answering it anyway"
        );
    }
    for r in &ended {
        tracing::info!(
            request_id,
            tenant,
            user_id = r.user_id,
            actor = "idp",
            "single logout"
        );
    }
    Ok(())
}
