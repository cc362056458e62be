//! `/maestrano/…` for Maestrano tenants: SSO under Maestrano's paths, metadata, account
//! webhooks and Connec! notifications. Answers are JSON in the SDKs' shapes
//! (`{"success": true}`, `{"error": …}`), which Maestrano's side reads.
//!
//! The SSO paths are the tenant's ordinary SAML login and ACS
//! ([`crate::saml::routes::SamlRoutes`]); the webhooks go through the same directory
//! functions as SCIM, by way of [`super::Maestrano`].

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{CONNEC_MAX_BODY, Refusal, Route};
use crate::gateway::RouteCtx;
use crate::limits::Failure;
use crate::response::{self, Body, json as answer};
use crate::saml::SpState;
use crate::saml::routes::SamlRoutes;

/// Dispatches a path under `/maestrano/`. The gateway sends only what it reserved for
/// Maestrano here, so every other answer is this module's own 404 in Maestrano's shape.
/// Traced as `idgate.maestrano`.
pub async fn handle(
    ctx: &RouteCtx<'_>,
    saml: &SamlRoutes,
    req: Request<Incoming>,
    path: &str,
) -> Response<Body> {
    let span = crate::telemetry::span!(
        "idgate.maestrano",
        idgate.tenant = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let resp = crate::telemetry::traced(dispatch(ctx, saml, req, path), &span).await;
    span.record("http.response.status_code", resp.status().as_u16());
    resp
}

async fn dispatch(
    ctx: &RouteCtx<'_>,
    saml: &SamlRoutes,
    req: Request<Incoming>,
    path: &str,
) -> Response<Body> {
    let request_id = ctx.request_id;
    // What a webhook changes is written to the audit log as Maestrano's doing.
    let by = crate::audit::Origin::new(crate::audit::Actor::Maestrano, request_id);
    let mno = ctx.tenancy.maestrano();
    let not_found = |what: &str| {
        answer(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": format!("{what} not found") }),
        )
    };
    let Some((route, named)) = super::route(path) else {
        return not_found("Endpoint");
    };
    let Some(tenant) = mno.tenant_id(named).map(str::to_owned) else {
        return not_found("Tenant");
    };
    crate::telemetry::record_tenant(&tenant);
    let method = req.method().clone();
    let html = response::accepts_html(req.headers());
    let api = matches!(
        route,
        Route::Metadata
            | Route::GroupCancelled { .. }
            | Route::UserRemoved { .. }
            | Route::ConnecNotifications
    );
    if api {
        match mno.authenticate(&tenant, req.headers()) {
            Ok(()) => {}
            Err(Refusal::BadCredentials) => {
                let client = ctx.client_ip(req.headers());
                if let Failure::Limited { first } = ctx.failures.fail(client) {
                    if first {
                        tracing::warn!(request_id, tenant, %client, "Maestrano authentication failures over the limit: answering 429 until the window ends");
                    }
                    let mut resp = answer(
                        StatusCode::TOO_MANY_REQUESTS,
                        &serde_json::json!({"error": "Too many failed authentications, retry later"}),
                    );
                    resp.headers_mut().insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(ctx.failures.retry_after()),
                    );
                    return resp;
                }
                tracing::warn!(request_id, tenant, %client, "Maestrano request refused: invalid credentials");
                return answer(
                    StatusCode::UNAUTHORIZED,
                    &serde_json::json!({"error": "Invalid credentials"}),
                );
            }
            Err(Refusal::UnknownTenant) => return not_found("Tenant"),
        }
    }
    let done = |r: Result<(), crate::directory::DirectoryError>, what: &str| match r {
        Ok(()) => {
            tracing::info!(request_id, tenant, what, "Maestrano webhook applied");
            answer(StatusCode::OK, &serde_json::json!({"success": true}))
        }
        Err(e) => {
            tracing::error!(request_id, tenant, what, error = %e, "Maestrano webhook failed");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": "Temporarily unavailable, retry later"}),
            )
        }
    };
    match (&method, route) {
        (&Method::GET, Route::Metadata) => match mno.metadata(&tenant) {
            Some(doc) => answer(StatusCode::OK, &doc),
            None => not_found("Tenant"),
        },
        (&Method::GET, Route::Init) => match ctx.tenancy.sp(&tenant) {
            Some(SpState::Ready(sp)) => saml.login(ctx, &sp, req, html).await,
            Some(SpState::Pending) => crate::saml::routes::metadata_pending(ctx, &tenant, html),
            None => not_found("Tenant"),
        },
        (&Method::POST, Route::Consume) => match ctx.tenancy.sp(&tenant) {
            Some(SpState::Ready(sp)) => saml.acs(ctx, &sp, req).await,
            Some(SpState::Pending) => crate::saml::routes::metadata_pending(ctx, &tenant, html),
            None => not_found("Tenant"),
        },
        (&Method::DELETE, Route::GroupCancelled { group }) => done(
            mno.group_cancelled(&by, &tenant, group).await,
            "group cancelled",
        ),
        (&Method::DELETE, Route::UserRemoved { group, user }) => done(
            mno.user_removed(&by, &tenant, group, user).await,
            "user removed from group",
        ),
        (&Method::POST, Route::ConnecNotifications) => {
            let body = match http_body_util::Limited::new(req.into_body(), CONNEC_MAX_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    tracing::warn!(request_id, tenant, error = %e, "Connec! notification refused: unreadable or too large");
                    return answer(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &serde_json::json!({"error": "The notification could not be read"}),
                    );
                }
            };
            match mno.connec_notification(&tenant, &body).await {
                Ok(n) => {
                    tracing::info!(
                        request_id,
                        tenant,
                        entities = n,
                        "Connec! notification queued for the app"
                    );
                    answer(StatusCode::OK, &serde_json::json!({"success": true}))
                }
                Err(reason) if reason.starts_with("store:") => {
                    tracing::error!(
                        request_id,
                        tenant,
                        reason,
                        "Connec! notification not queued"
                    );
                    answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({"error": "Temporarily unavailable, retry later"}),
                    )
                }
                Err(reason) => {
                    tracing::warn!(request_id, tenant, reason, "Connec! notification refused");
                    answer(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": reason}),
                    )
                }
            }
        }
        _ => answer(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": format!("{method} is not allowed here")}),
        ),
    }
}
