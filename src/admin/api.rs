//! The admin API (SPEC §10) under `/admin/v1/` on the admin listener, for operators: who
//! is signed in, and how to throw a user out now.
//!
//! Enabled by `[server].admin_token`; without it every `/admin/` path is 404, whatever
//! the method, so a probe cannot tell the API exists. Every answer is JSON, errors as
//! `{"error": code}`. User lists are pages of one bounded range query on the tenant's
//! sorted listing (the cursor is the last id of the page), never a scan. Revocation and
//! (de)activation go through the same functions as logout, SCIM and the webhooks, so
//! every replica follows within a second and open tunnels close.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::audit;
use crate::directory::model::{Group, User};
use crate::directory::{Directory, DirectoryError};
use crate::response::{self, Body};
use crate::session::Sessions;
use crate::snapshot::Snapshots;
use crate::store::{DirectoryStore, Index, Listing, StoredSession};

/// Users per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest page.
pub const MAX_LIMIT: usize = 1000;

/// The admin API's state.
pub struct Api {
    token_sha256: [u8; 32],
    snapshots: Arc<Snapshots>,
    sessions: Arc<Sessions>,
    directory: Directory,
}

fn error(status: StatusCode, code: &str) -> Response<Body> {
    response::json(status, &json!({ "error": code }))
}

fn not_found() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "not_found")
}

fn unavailable(e: impl std::fmt::Display) -> Response<Body> {
    tracing::error!(error = %e, "admin API: store unavailable");
    error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
}

/// One path segment, percent-decoded (user ids may hold any character).
fn segment(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
        .filter(|s| !s.is_empty())
}

/// The query's value for `name`, decoded.
fn query_value(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

impl Api {
    /// The API, answering requests that carry the token whose SHA-256 is `token_sha256`.
    pub fn new(
        token_sha256: [u8; 32],
        snapshots: Arc<Snapshots>,
        sessions: Arc<Sessions>,
        directory: Directory,
    ) -> Api {
        Api {
            token_sha256,
            snapshots,
            sessions,
            directory,
        }
    }

    /// Whether the request carries the admin token (compared as a SHA-256 digest, in
    /// constant time).
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = crate::session::bearer::bearer_token(req.headers()) else {
            return false;
        };
        let digest = crate::scim::token::digest(token);
        bool::from(digest.ct_eq(&self.token_sha256))
    }

    /// Answers `/admin/…` (any method).
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if !self.authorized(&req) {
            tracing::warn!(path = req.uri().path(), "admin API: missing or wrong token");
            let mut resp = error(StatusCode::UNAUTHORIZED, "unauthorized");
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        // The admin listener has no request ids of its own: each call gets one, so the
        // audit lines of one call (admin_call, user_deactivated, …) can be joined.
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let Some(rest) = path.strip_prefix("/admin/v1/") else {
            return not_found();
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let named_tenant = match parts.as_slice() {
            ["tenants", t, ..] => segment(t),
            _ => None,
        };
        let by = audit::Origin::new(audit::Actor::Admin, &request_id);
        audit::record(
            self.directory.store().metrics(),
            &by,
            audit::Event::AdminCall {
                tenant: named_tenant.as_deref(),
                method: &method,
                path: &path,
            },
        );
        let snap = self.snapshots.load();
        let tenancy = &snap.tenancy;
        match (method, parts.as_slice()) {
            (Method::GET, ["tenants"]) => {
                let tenants: Vec<Value> = tenancy
                    .summaries()
                    .into_iter()
                    .map(|t| {
                        json!({
                            "id": t.id,
                            "source": t.source,
                            "saml": { "metadata": t.saml_metadata, "refreshed_at": t.saml_refreshed_at },
                            "scim": t.scim,
                        })
                    })
                    .collect();
                response::json(StatusCode::OK, &json!({ "tenants": tenants }))
            }
            (m, ["tenants", t, tail @ ..]) => {
                let Some(tenant) = segment(t).filter(|t| tenancy.has(t)) else {
                    return not_found();
                };
                self.tenant_route(&by, m, &tenant, tail, &query).await
            }
            (_, ["tenants"]) => error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            _ => not_found(),
        }
    }

    async fn tenant_route(
        &self,
        by: &audit::Origin<'_>,
        method: Method,
        tenant: &str,
        tail: &[&str],
        query: &str,
    ) -> Response<Body> {
        match (method, tail) {
            (Method::GET, ["users"]) => self.list_users(tenant, query).await,
            (Method::GET, ["users", id]) => match segment(id) {
                Some(id) => self.one_user(tenant, &id).await,
                None => not_found(),
            },
            (Method::GET, ["users", id, "sessions"]) => {
                let id = match self.existing_user(tenant, id).await {
                    Ok(id) => id,
                    Err(resp) => return resp,
                };
                match self.sessions.user_sessions(tenant, &id).await {
                    Ok(live) => {
                        let list: Vec<Value> = live.iter().map(session_json).collect();
                        response::json(StatusCode::OK, &json!({ "sessions": list }))
                    }
                    Err(e) => unavailable(e),
                }
            }
            (Method::DELETE, ["users", id, "sessions"]) => {
                let id = match self.existing_user(tenant, id).await {
                    Ok(id) => id,
                    Err(resp) => return resp,
                };
                match self.sessions.end_user_sessions(by, tenant, &id).await {
                    Ok(n) => {
                        tracing::info!(
                            tenant,
                            user_id = id,
                            revoked = n,
                            "admin API: sessions ended"
                        );
                        response::json(StatusCode::OK, &json!({ "revoked": n }))
                    }
                    Err(e) => unavailable(e),
                }
            }
            (Method::DELETE, ["sessions", sid]) => {
                match self.sessions.end_session(by, tenant, sid).await {
                    Ok(true) => {
                        tracing::info!(tenant, "admin API: session ended");
                        response::json(StatusCode::OK, &json!({ "revoked": 1 }))
                    }
                    Ok(false) => not_found(),
                    Err(e) => unavailable(e),
                }
            }
            (Method::POST, ["users", id, action @ ("deactivate" | "activate")]) => {
                let Some(id) = segment(id) else {
                    return not_found();
                };
                let done = if *action == "deactivate" {
                    self.directory.deactivate_user(by, tenant, &id).await
                } else {
                    self.directory.reactivate_user(by, tenant, &id).await
                };
                match done {
                    Ok(()) => {
                        tracing::info!(tenant, user_id = id, action, "admin API: user changed");
                        self.one_user(tenant, &id).await
                    }
                    Err(DirectoryError::NotFound) => not_found(),
                    Err(e) => unavailable(e),
                }
            }
            (_, ["users"] | ["users", _] | ["users", _, "sessions"] | ["sessions", _])
            | (_, ["users", _, "deactivate" | "activate"]) => {
                error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            _ => not_found(),
        }
    }

    /// The decoded id of a user of `tenant` named by a path segment, or the answer
    /// (404, 503) when there is none.
    async fn existing_user(&self, tenant: &str, raw: &str) -> Result<String, Response<Body>> {
        let id = segment(raw).ok_or_else(not_found)?;
        match self.directory.user(tenant, &id).await {
            Ok(Some(_)) => Ok(id),
            Ok(None) => Err(not_found()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn one_user(&self, tenant: &str, id: &str) -> Response<Body> {
        match self.directory.user(tenant, id).await {
            Ok(Some(u)) => match self.users_json(tenant, vec![u]).await {
                Ok(mut list) => response::json(StatusCode::OK, &list.remove(0)),
                Err(e) => unavailable(e),
            },
            Ok(None) => not_found(),
            Err(e) => unavailable(e),
        }
    }

    /// A page of users: ids after `cursor` from the tenant's listing (or the email
    /// index), `limit` of them, filtered by `active`. `next_cursor` continues after the
    /// last id looked at, so a filter that drops users never makes a page scan further.
    async fn list_users(&self, tenant: &str, query: &str) -> Response<Body> {
        let limit = match query_value(query, "limit") {
            None => DEFAULT_LIMIT,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => return error(StatusCode::BAD_REQUEST, "invalid_limit"),
            },
        };
        let active = match query_value(query, "active").as_deref() {
            None | Some("") => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(_) => return error(StatusCode::BAD_REQUEST, "invalid_active"),
        };
        let cursor = query_value(query, "cursor").filter(|c| !c.is_empty());
        let email = query_value(query, "email").filter(|e| !e.is_empty());
        if let Err(e) = self.directory.list_every_user(tenant).await {
            return unavailable(e);
        }
        let store = self.directory.store();
        let ids = match &email {
            // An email names a handful of users at most: the index's set, paged here.
            Some(email) => store
                .find(tenant, Index::Email, email)
                .await
                .map(|mut ids| {
                    ids.sort();
                    ids.into_iter()
                        .filter(|id| cursor.as_deref().is_none_or(|c| id.as_str() > c))
                        .take(limit)
                        .collect::<Vec<_>>()
                }),
            None => {
                store
                    .list_after(tenant, Listing::Users, cursor.as_deref(), limit)
                    .await
            }
        };
        let ids = match ids {
            Ok(ids) => ids,
            Err(e) => return unavailable(e),
        };
        let next_cursor = (ids.len() == limit).then(|| ids.last().cloned()).flatten();
        let users = match store.get_users(tenant, &ids).await {
            Ok(u) => u,
            Err(e) => return unavailable(e),
        };
        let users: Vec<User> = users
            .into_iter()
            .filter(|u| !u.deprovisioned)
            .filter(|u| active.is_none_or(|a| u.active == a))
            .collect();
        match self.users_json(tenant, users).await {
            Ok(list) => response::json(
                StatusCode::OK,
                &json!({ "users": list, "next_cursor": next_cursor }),
            ),
            Err(e) => unavailable(e),
        }
    }

    /// Users as the API shows them, their companies read in one round trip.
    async fn users_json(
        &self,
        tenant: &str,
        users: Vec<User>,
    ) -> Result<Vec<Value>, crate::store::StoreError> {
        let mut group_ids: Vec<String> = users
            .iter()
            .flat_map(|u| u.memberships.iter().map(|m| m.group_id.clone()))
            .collect();
        group_ids.sort();
        group_ids.dedup();
        let groups: Vec<Group> = self
            .directory
            .store()
            .get_groups(tenant, &group_ids)
            .await?;
        let mut out = Vec::with_capacity(users.len());
        for u in users {
            let sessions = self.sessions.user_sessions(tenant, &u.id).await?.len();
            let companies: Vec<Value> = u
                .memberships
                .iter()
                .map(|m| {
                    json!({
                        "group_id": m.group_id,
                        "role": m.role,
                        "active": groups.iter().find(|g| g.id == m.group_id).is_some_and(|g| g.active),
                    })
                })
                .collect();
            let mut ids: Vec<&str> = u.memberships.iter().map(|m| m.group_id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            out.push(json!({
                "id": u.id,
                "email": u.email,
                "given_name": u.given_name,
                "family_name": u.family_name,
                "active": u.active && !u.deprovisioned,
                "companies": companies,
                "groups": ids,
                "sessions": sessions,
            }));
        }
        Ok(out)
    }
}

/// A session as the API shows it: its id is its store key (the SHA-256 of the cookie,
/// from which the cookie cannot be recovered), never the cookie.
fn session_json((hash, s): &(String, StoredSession)) -> Value {
    let auth = if s.record.saml.is_some() {
        "saml"
    } else if s.record.mno.is_some() {
        "maestrano"
    } else {
        "session"
    };
    json!({
        "id": hash,
        "group_id": s.record.group_id,
        "created": s.record.created_at,
        "last_seen": s.last_seen,
        "expires": s.record.expires_at,
        "client": s.record.client,
        "user_agent": s.record.user_agent,
        "auth": auth,
        "revoked": s.revoked.map(|r| r.code()),
    })
}
