//! SCIM 2.0 provisioning (RFC 7643/7644) at `/_idgate/scim/{tenant}/v2/…`: Users and
//! Groups with list, filter, create, replace, patch and delete, plus the discovery
//! endpoints. Every change goes through [`Directory`], which owns the lifecycle rules:
//! a deactivated or deleted user is blocked on every replica at once, and a DELETE only
//! ever deprovisions (the record is kept and a later create restores it).
//!
//! Errors are SCIM Error documents; the detail names what the client got wrong, and
//! anything internal goes to the log under the request id instead.

pub mod filter;
pub mod patch;
pub(crate) mod resource;
pub mod token;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::config::{Config, ProvisioningConfig};
use crate::directory::model::{Group, User};
use crate::directory::{Directory, DirectoryError};
use crate::response::{Body, full};
use crate::store::{DirectoryStore, Index, Listing, StoreError};
use hyper::body::Incoming;
use resource::case_exact;

/// Largest request body accepted; a bigger one gets 413.
pub const MAX_BODY: usize = 1 << 20;
/// Most resources in one list page (`ServiceProviderConfig.filter.maxResults`).
pub const MAX_RESULTS: usize = 1000;
/// Page size when the client gives no `count`.
pub const DEFAULT_COUNT: usize = 100;
/// Failed authentications allowed per client address per [`AUTH_FAILURE_WINDOW`]
/// (counted together with Maestrano's, see [`crate::limits`]); beyond it, requests
/// with a wrong token get 429.
pub const AUTH_FAILURES_PER_WINDOW: u32 = crate::limits::FAILURES_PER_WINDOW;
/// See [`AUTH_FAILURES_PER_WINDOW`].
pub const AUTH_FAILURE_WINDOW: Duration = crate::limits::FAILURE_WINDOW;
/// Most matches a sorted query may have (sorting needs them all in memory).
pub const MAX_SORTED: usize = 50_000;
/// Longest filter expression accepted.
pub const MAX_FILTER: usize = 8 * 1024;
/// Most members one request may name.
pub const MAX_MEMBERS: usize = 10_000;
/// Most operations in one PATCH request (each may scan the resource once).
pub const MAX_PATCH_OPS: usize = 1_000;
/// Records read per store round trip while scanning a listing.
const SCAN_BATCH: usize = 500;
/// Attempts at a read-modify-write before reporting contention.
const ATTEMPTS: usize = 8;
const SCIM_JSON: &str = "application/scim+json";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// A SCIM error response: status, `scimType` where RFC 7644 §3.12 has one, and a
/// detail for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimError {
    status: StatusCode,
    scim_type: Option<&'static str>,
    detail: String,
}

impl ScimError {
    fn new(status: StatusCode, scim_type: Option<&'static str>, detail: impl Into<String>) -> Self {
        ScimError {
            status,
            scim_type,
            detail: detail.into(),
        }
    }
    fn bad(scim_type: &'static str, detail: impl Into<String>) -> Self {
        ScimError::new(StatusCode::BAD_REQUEST, Some(scim_type), detail)
    }
    /// 400 `invalidValue`.
    pub fn invalid_value(detail: impl Into<String>) -> Self {
        ScimError::bad("invalidValue", detail)
    }
    /// 400 `invalidSyntax`.
    pub fn invalid_syntax(detail: impl Into<String>) -> Self {
        ScimError::bad("invalidSyntax", detail)
    }
    fn not_found(what: &str) -> Self {
        ScimError::new(StatusCode::NOT_FOUND, None, format!("{what} not found"))
    }
    fn precondition() -> Self {
        ScimError::new(
            StatusCode::PRECONDITION_FAILED,
            None,
            "the resource changed: its version does not match If-Match",
        )
    }
    fn internal(request_id: &str) -> Self {
        ScimError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            format!("the directory is unavailable; try again (reference {request_id})"),
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    fn response(&self) -> Response<Body> {
        let mut doc = json!({
            "schemas": [ERROR_SCHEMA],
            "status": self.status.as_str(),
            "detail": self.detail,
        });
        if let Some(t) = self.scim_type {
            doc["scimType"] = json!(t);
        }
        let mut resp = scim_response(self.status, &doc);
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"idgate-scim\""),
            );
        }
        resp
    }
}

fn scim_response(status: StatusCode, doc: &Value) -> Response<Body> {
    crate::response::json_as(status, SCIM_JSON, doc)
}

/// A resource response, with its ETag (and Location when created).
fn resource_response(status: StatusCode, doc: &Value) -> Response<Body> {
    let mut resp = scim_response(status, doc);
    let meta = &doc["meta"];
    if let Some(v) = meta["version"]
        .as_str()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        resp.headers_mut().insert(header::ETAG, v);
    }
    if status == StatusCode::CREATED
        && let Some(l) = meta["location"]
            .as_str()
            .and_then(|l| HeaderValue::from_str(l).ok())
    {
        resp.headers_mut().insert(header::LOCATION, l);
    }
    resp
}

struct Tenant {
    token_sha256: [u8; 32],
    previous_token_sha256: Vec<[u8; 32]>,
    /// Whether a previous token has been used since start (logged once, so that the
    /// operator learns when the IdP has moved on without a line per request).
    previous_seen: std::sync::atomic::AtomicBool,
    provisioning: ProvisioningConfig,
    base: String,
    /// Whether [`Directory::list_every_user`] has run for the tenant (since this
    /// endpoint was built): until it has, users stored by an earlier version may be
    /// missing from the list and the userName index.
    every_user_listed: std::sync::atomic::AtomicBool,
}

/// The SCIM endpoint of every tenant that has `[tenants.scim]`.
pub struct Scim {
    tenants: HashMap<String, Tenant>,
    directory: Directory,
    failures: Arc<crate::limits::Failures>,
}

/// What a request asks for, after the tenant prefix.
enum Route<'a> {
    Base,
    ServiceProviderConfig,
    ResourceTypes(Option<&'a str>),
    Schemas(Option<&'a str>),
    Collection(Kind),
    Resource(Kind, &'a str),
    Search,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    User,
    Group,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::User => "User",
            Kind::Group => "Group",
        }
    }
}

fn route(rest: &str) -> Route<'_> {
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut parts = rest.splitn(3, '/').skip(1);
    match (parts.next(), parts.next()) {
        (None, _) => Route::Base,
        (Some("ServiceProviderConfig"), None) => Route::ServiceProviderConfig,
        (Some("ResourceTypes"), id) => Route::ResourceTypes(id),
        (Some("Schemas"), id) => Route::Schemas(id),
        (Some(".search"), None) | (Some("Users" | "Groups"), Some(".search")) => Route::Search,
        (Some("Users"), None) => Route::Collection(Kind::User),
        (Some("Groups"), None) => Route::Collection(Kind::Group),
        (Some("Users"), Some(id)) if !id.contains('/') => Route::Resource(Kind::User, id),
        (Some("Groups"), Some(id)) if !id.contains('/') => Route::Resource(Kind::Group, id),
        _ => Route::Unknown,
    }
}

/// `startIndex`, `count`, `filter`, `attributes`, `excludedAttributes`, `sortBy`,
/// `sortOrder`.
#[derive(Default)]
struct Query {
    filter: Option<String>,
    start: usize,
    count: usize,
    attributes: Vec<String>,
    excluded: Vec<String>,
    sort_by: Option<String>,
    descending: bool,
}

fn parse_query(raw: Option<&str>) -> Result<Query, ScimError> {
    let mut q = Query {
        start: 1,
        count: DEFAULT_COUNT,
        ..Query::default()
    };
    let list = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.to_ascii_lowercase().as_str() {
            "filter" => q.filter = Some(v.into_owned()),
            // RFC 7644 §3.4.2.4: below 1 means 1, a negative count means 0.
            "startindex" => {
                q.start = v
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| ScimError::invalid_value("startIndex must be an integer"))?
                    .max(1) as usize;
            }
            "count" => {
                q.count = v
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| ScimError::invalid_value("count must be an integer"))?
                    .clamp(0, MAX_RESULTS as i64) as usize;
            }
            "attributes" => q.attributes = list(&v),
            "excludedattributes" => q.excluded = list(&v),
            "sortby" => q.sort_by = Some(v.trim().to_owned()).filter(|s| !s.is_empty()),
            "sortorder" => match v.to_ascii_lowercase().as_str() {
                "ascending" => q.descending = false,
                "descending" => q.descending = true,
                _ => {
                    return Err(ScimError::invalid_value(
                        "sortOrder must be ascending or descending",
                    ));
                }
            },
            // Unknown parameters (Entra's feature flags, for one) are not errors.
            _ => {}
        }
    }
    Ok(q)
}

/// `If-Match`: None when absent; Err(412) when it names no version of `version`.
fn check_if_match(header: Option<&str>, version: u64) -> Result<(), ScimError> {
    let Some(h) = header else { return Ok(()) };
    let current = version.to_string();
    let ok = h.split(',').map(str::trim).any(|tag| {
        tag == "*"
            || tag
                .trim_start_matches("W/")
                .trim_matches('"')
                .eq(current.as_str())
    });
    if ok {
        Ok(())
    } else {
        Err(ScimError::precondition())
    }
}

fn directory_error(e: DirectoryError, request_id: &str) -> ScimError {
    match e {
        DirectoryError::NotFound => ScimError::not_found("resource"),
        DirectoryError::Taken { field, .. } => ScimError::new(
            StatusCode::CONFLICT,
            Some("uniqueness"),
            format!("{field} is already in use"),
        ),
        DirectoryError::VersionMismatch => ScimError::precondition(),
        DirectoryError::UnknownMember(id) => {
            ScimError::invalid_value(format!("no such user to add as a member: {id}"))
        }
        DirectoryError::Contended => ScimError::new(
            StatusCode::CONFLICT,
            None,
            "the resource is being changed concurrently; try again",
        ),
        DirectoryError::Store(e) => {
            tracing::error!(request_id, error = %e, "SCIM request failed in the store");
            ScimError::internal(request_id)
        }
    }
}

/// A SCIM client acting on request `request_id`, for the audit lines of what it changes.
fn by(request_id: &str) -> crate::audit::Origin<'_> {
    crate::audit::Origin::new(crate::audit::Actor::Scim, request_id)
}

fn store_error(e: StoreError, request_id: &str) -> ScimError {
    directory_error(DirectoryError::Store(e), request_id)
}

impl Scim {
    /// The endpoints of every tenant with `[tenants.scim]`.
    /// `failures` outlives this (it is rebuilt with the tenant set) and is shared with
    /// the other machine credentials.
    pub fn new(
        config: &Config,
        directory: Directory,
        failures: Arc<crate::limits::Failures>,
    ) -> Scim {
        let root = config.server.public_url.as_str().trim_end_matches('/');
        let tenants = config
            .tenants
            .iter()
            .filter_map(|t| {
                let s = t.scim.as_ref()?;
                Some((
                    t.id.clone(),
                    Tenant {
                        token_sha256: s.token_sha256,
                        previous_token_sha256: s.previous_token_sha256.clone(),
                        previous_seen: std::sync::atomic::AtomicBool::new(false),
                        provisioning: t.provisioning.clone(),
                        base: format!("{root}/_idgate/scim/{}/v2", t.id),
                        every_user_listed: std::sync::atomic::AtomicBool::new(false),
                    },
                ))
            })
            .collect();
        Scim {
            tenants,
            directory,
            failures,
        }
    }

    /// Serves `/_idgate/scim/{rest}` (`rest` = `{tenant}/v2/…`, already percent-decoded).
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        rest: &str,
        client: IpAddr,
        request_id: &str,
    ) -> Response<Body> {
        let (tenant_id, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let Some(tail) = tail
            .strip_prefix("v2")
            .filter(|t| t.is_empty() || t.starts_with('/'))
        else {
            return ScimError::not_found("endpoint").response();
        };
        let Some(tenant) = self.tenants.get(tenant_id) else {
            return ScimError::not_found("SCIM tenant").response();
        };
        if let Err(e) = self.authenticate(&req, tenant, tenant_id, client, request_id) {
            return e.response();
        }
        self.list_every_user(tenant, tenant_id, request_id).await;
        let method = req.method().clone();
        let span = crate::telemetry::span!(
            "idgate.scim",
            http.request.method = method.as_str(),
            scim.resource = scim_resource(tail),
            idgate.tenant = tenant_id,
            http.response.status_code = tracing::field::Empty,
        );
        let outcome = crate::telemetry::traced(
            self.dispatch(req, tenant, tenant_id, tail, request_id),
            &span,
        )
        .await;
        if !span.is_none() {
            let status = match &outcome {
                Ok(r) => r.status(),
                Err(e) => e.status,
            };
            span.record("http.response.status_code", status.as_u16());
        }
        match outcome {
            Ok(r) => r,
            Err(e) => {
                // The detail may echo the request (a filter naming an email): it goes
                // to the debug log only.
                let scim_type = e.scim_type.unwrap_or("-");
                if e.status.is_server_error() {
                    tracing::warn!(request_id, tenant = tenant_id, %method, status = e.status.as_u16(), scim_type, "SCIM request failed");
                } else {
                    tracing::info!(request_id, tenant = tenant_id, %method, status = e.status.as_u16(), scim_type, "SCIM request refused");
                }
                tracing::debug!(request_id, detail = %e.detail, "SCIM refusal detail");
                e.response()
            }
        }
    }

    /// Before the first request of a tenant is answered, users stored before every
    /// user was listed are listed (once per store; afterwards one read per endpoint
    /// build). A failure is logged and retried at the next request: the request itself
    /// goes on, and meets the store's state as it is.
    async fn list_every_user(&self, tenant: &Tenant, tenant_id: &str, request_id: &str) {
        use std::sync::atomic::Ordering;
        if tenant.every_user_listed.load(Ordering::Acquire) {
            return;
        }
        match self.directory.list_every_user(tenant_id).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(
                        request_id,
                        tenant = tenant_id,
                        users = n,
                        "listed users that SCIM did not list before"
                    );
                }
                tenant.every_user_listed.store(true, Ordering::Release);
            }
            Err(e) => {
                tracing::warn!(request_id, tenant = tenant_id, error = %e, "cannot list users stored before every user was listed; retrying at the next request");
            }
        }
    }

    fn authenticate(
        &self,
        req: &Request<Incoming>,
        tenant: &Tenant,
        tenant_id: &str,
        client: IpAddr,
        request_id: &str,
    ) -> Result<(), ScimError> {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        // Comparing digests of equal length, in constant time: the time taken says
        // nothing about how much of a guess was right. Every configured token is
        // compared, so the time does not say which one matched either.
        let digest = token.map(token::digest);
        let current = digest.is_some_and(|d| bool::from(d.ct_eq(&tenant.token_sha256)));
        let previous = digest.is_some_and(|d| {
            tenant
                .previous_token_sha256
                .iter()
                .fold(subtle::Choice::from(0), |any, p| any | d.ct_eq(p))
                .into()
        });
        if previous && !current && !tenant.previous_seen.swap(true, Ordering::Relaxed) {
            tracing::info!(
                request_id,
                tenant = tenant_id,
                "SCIM request with a token from previous_tokens: the IdP has not moved to the new token yet"
            );
        }
        if current || previous {
            // A valid token always passes: IdPs call from shared addresses, and one
            // tenant's stale token must not lock out the others behind the same egress.
            return Ok(());
        }
        if let crate::limits::Failure::Limited { first } = self.failures.fail(client) {
            if first {
                tracing::warn!(request_id, tenant = tenant_id, %client, "SCIM authentication failures over the limit: answering 429 until the window ends");
            }
            return Err(ScimError::new(
                StatusCode::TOO_MANY_REQUESTS,
                None,
                "too many failed authentications; try again later",
            ));
        }
        tracing::warn!(
            request_id,
            tenant = tenant_id,
            %client,
            reason = if token.is_some() { "wrong token" } else { "no bearer token" },
            "SCIM authentication failed"
        );
        Err(ScimError::new(
            StatusCode::UNAUTHORIZED,
            None,
            "a valid bearer token for this tenant is required",
        ))
    }

    async fn dispatch(
        &self,
        req: Request<Incoming>,
        t: &Tenant,
        tenant: &str,
        tail: &str,
        request_id: &str,
    ) -> Result<Response<Body>, ScimError> {
        let method = req.method().clone();
        let if_match = req
            .headers()
            .get(header::IF_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let if_none_match = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let query = req.uri().query().map(str::to_owned);
        let get = method == Method::GET || method == Method::HEAD;
        let not_allowed = || {
            Err(ScimError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                None,
                format!("{method} is not allowed here"),
            ))
        };
        match route(tail) {
            Route::Base if get => Ok(scim_response(
                StatusCode::OK,
                &json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
                    "endpoints": ["/Users", "/Groups", "/ServiceProviderConfig", "/ResourceTypes", "/Schemas"],
                    "location": t.base,
                }),
            )),
            Route::ServiceProviderConfig if get => Ok(scim_response(
                StatusCode::OK,
                &resource::service_provider_config(&t.base, MAX_RESULTS),
            )),
            Route::ResourceTypes(id) if get => {
                discovery(resource::resource_types(&t.base), id, "ResourceType")
            }
            Route::Schemas(id) if get => discovery(resource::schemas(&t.base), id, "Schema"),
            Route::Search => Err(ScimError::new(
                StatusCode::NOT_IMPLEMENTED,
                None,
                "POST .search is not supported; use GET with filter",
            )),
            Route::Unknown => Err(ScimError::not_found("endpoint")),
            Route::Base
            | Route::ServiceProviderConfig
            | Route::ResourceTypes(_)
            | Route::Schemas(_) => not_allowed(),
            Route::Collection(kind) => {
                let q = parse_query(query.as_deref())?;
                if get {
                    let doc = self.list(t, tenant, kind, &q, request_id).await?;
                    Ok(scim_response(StatusCode::OK, &doc))
                } else if method == Method::POST {
                    let body = read_json(req).await?;
                    let mut doc = match kind {
                        Kind::User => self.create_user(t, tenant, &body, request_id).await?,
                        Kind::Group => self.create_group(t, tenant, &body, request_id).await?,
                    };
                    let resp_doc = doc.clone();
                    resource::project(&mut doc, &q.attributes, &q.excluded);
                    let mut resp = resource_response(StatusCode::CREATED, &resp_doc);
                    *resp.body_mut() = full(doc.to_string());
                    Ok(resp)
                } else {
                    not_allowed()
                }
            }
            Route::Resource(kind, id) => {
                let q = parse_query(query.as_deref())?;
                let doc = if get {
                    let doc = self.read(t, tenant, kind, id, &q, request_id).await?;
                    if let Some(inm) = &if_none_match
                        && let Some(v) = doc["meta"]["version"].as_str()
                        && inm
                            .split(',')
                            .any(|tag| tag.trim() == v || tag.trim() == "*")
                    {
                        let mut resp = scim_response(StatusCode::NOT_MODIFIED, &json!({}));
                        *resp.body_mut() = full(Bytes::new());
                        return Ok(resp);
                    }
                    doc
                } else if method == Method::PUT || method == Method::PATCH {
                    let body = read_json(req).await?;
                    let patch = method == Method::PATCH;
                    match kind {
                        Kind::User => {
                            self.modify_user(
                                t,
                                tenant,
                                id,
                                if_match.as_deref(),
                                &body,
                                patch,
                                request_id,
                            )
                            .await?
                        }
                        Kind::Group => {
                            self.modify_group(
                                t,
                                tenant,
                                id,
                                if_match.as_deref(),
                                &body,
                                patch,
                                request_id,
                            )
                            .await?
                        }
                    }
                } else if method == Method::DELETE {
                    self.delete(tenant, kind, id, if_match.as_deref(), request_id)
                        .await?;
                    let mut resp = scim_response(StatusCode::NO_CONTENT, &json!({}));
                    *resp.body_mut() = full(Bytes::new());
                    resp.headers_mut().remove(header::CONTENT_TYPE);
                    return Ok(resp);
                } else {
                    return not_allowed();
                };
                let mut resp = resource_response(StatusCode::OK, &doc);
                let mut shown = doc;
                resource::project(&mut shown, &q.attributes, &q.excluded);
                *resp.body_mut() = full(shown.to_string());
                Ok(resp)
            }
        }
    }

    /// A user that SCIM may see: not deprovisioned.
    async fn visible_user(&self, tenant: &str, id: &str, rid: &str) -> Result<User, ScimError> {
        match self.directory.user(tenant, id).await {
            Ok(Some(u)) if !u.deprovisioned => Ok(u),
            Ok(_) => Err(ScimError::not_found("User")),
            Err(e) => Err(directory_error(e, rid)),
        }
    }

    async fn visible_group(&self, tenant: &str, id: &str, rid: &str) -> Result<Group, ScimError> {
        match self.directory.group(tenant, id).await {
            Ok(Some(g)) if !g.deprovisioned => Ok(g),
            Ok(_) => Err(ScimError::not_found("Group")),
            Err(e) => Err(directory_error(e, rid)),
        }
    }

    /// Users in SCIM form; their groups are read in one round trip.
    async fn render_users(
        &self,
        t: &Tenant,
        tenant: &str,
        users: &[User],
        rid: &str,
    ) -> Result<Vec<Value>, ScimError> {
        let mut ids: Vec<String> = users
            .iter()
            .flat_map(|u| u.memberships.iter().map(|m| m.group_id.clone()))
            .collect();
        ids.sort();
        ids.dedup();
        let groups = self
            .directory
            .store()
            .get_groups(tenant, &ids)
            .await
            .map_err(|e| store_error(e, rid))?;
        let groups: HashMap<&str, &Group> = groups
            .iter()
            .filter(|g| !g.deprovisioned)
            .map(|g| (g.id.as_str(), g))
            .collect();
        Ok(users
            .iter()
            .map(|u| {
                let mine: Vec<&Group> = u
                    .memberships
                    .iter()
                    .filter_map(|m| groups.get(m.group_id.as_str()).copied())
                    .collect();
                resource::user_json(u, &mine, &t.base)
            })
            .collect())
    }

    async fn render_groups(
        &self,
        t: &Tenant,
        tenant: &str,
        groups: &[Group],
        with_members: bool,
        rid: &str,
    ) -> Result<Vec<Value>, ScimError> {
        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            let members = if with_members {
                Some(
                    self.directory
                        .members(tenant, &g.id)
                        .await
                        .map_err(|e| directory_error(e, rid))?,
                )
            } else {
                None
            };
            out.push(resource::group_json(g, members.as_deref(), &t.base));
        }
        Ok(out)
    }

    async fn read(
        &self,
        t: &Tenant,
        tenant: &str,
        kind: Kind,
        id: &str,
        q: &Query,
        rid: &str,
    ) -> Result<Value, ScimError> {
        match kind {
            Kind::User => {
                let u = self.visible_user(tenant, id, rid).await?;
                let mut docs = self.render_users(t, tenant, &[u], rid).await?;
                docs.pop().ok_or_else(|| ScimError::not_found("User"))
            }
            Kind::Group => {
                let g = self.visible_group(tenant, id, rid).await?;
                let members = wants_members(q);
                let mut docs = self.render_groups(t, tenant, &[g], members, rid).await?;
                docs.pop().ok_or_else(|| ScimError::not_found("Group"))
            }
        }
    }

    /// The ids an indexed eq clause allows, or None when the filter needs a scan.
    async fn candidates(
        &self,
        tenant: &str,
        kind: Kind,
        filter: &filter::Filter,
        rid: &str,
    ) -> Result<Option<Vec<String>>, ScimError> {
        let indexed = |key: &str| match (kind, key) {
            (_, "id") => true,
            (Kind::User, k) => matches!(
                k,
                "username" | "externalid" | "emails" | "emails.value" | "displayname"
            ),
            (Kind::Group, k) => {
                matches!(
                    k,
                    "displayname" | "externalid" | "members" | "members.value"
                )
            }
        };
        let Some((key, value)) = filter.required_eqs().into_iter().find(|(k, _)| indexed(k)) else {
            return Ok(None);
        };
        let index = match (kind, key.as_str()) {
            (_, "id") => return Ok(Some(vec![value.to_owned()])),
            (Kind::User, "username") => Index::UserName,
            (Kind::User, "externalid") => Index::ExternalId,
            (Kind::User, "emails" | "emails.value") => Index::Email,
            (Kind::User, "displayname") => Index::UserDisplayName,
            (Kind::Group, "displayname") => Index::GroupName,
            (Kind::Group, "externalid") => Index::GroupExternalId,
            (Kind::Group, "members" | "members.value") => {
                // The groups holding a member are that user's memberships.
                let user = self
                    .directory
                    .user(tenant, value)
                    .await
                    .map_err(|e| directory_error(e, rid))?;
                return Ok(Some(user.map_or_else(Vec::new, |u| {
                    let mut ids: Vec<String> =
                        u.memberships.into_iter().map(|m| m.group_id).collect();
                    ids.sort();
                    ids
                })));
            }
            _ => return Ok(None),
        };
        self.directory
            .store()
            .find(tenant, index, value)
            .await
            .map(Some)
            .map_err(|e| store_error(e, rid))
    }

    /// Records of `ids` in SCIM form, dropping deprovisioned ones.
    async fn load(
        &self,
        t: &Tenant,
        tenant: &str,
        kind: Kind,
        ids: &[String],
        members: bool,
        rid: &str,
    ) -> Result<Vec<Value>, ScimError> {
        let store = self.directory.store();
        match kind {
            Kind::User => {
                let users: Vec<User> = store
                    .get_users(tenant, ids)
                    .await
                    .map_err(|e| store_error(e, rid))?
                    .into_iter()
                    .filter(|u| !u.deprovisioned)
                    .collect();
                self.render_users(t, tenant, &users, rid).await
            }
            Kind::Group => {
                let groups: Vec<Group> = store
                    .get_groups(tenant, ids)
                    .await
                    .map_err(|e| store_error(e, rid))?
                    .into_iter()
                    .filter(|g| !g.deprovisioned)
                    .collect();
                self.render_groups(t, tenant, &groups, members, rid).await
            }
        }
    }

    async fn list(
        &self,
        t: &Tenant,
        tenant: &str,
        kind: Kind,
        q: &Query,
        rid: &str,
    ) -> Result<Value, ScimError> {
        let listing = match kind {
            Kind::User => Listing::Users,
            Kind::Group => Listing::Groups,
        };
        if q.filter.as_ref().is_some_and(|f| f.len() > MAX_FILTER) {
            return Err(ScimError::bad(
                "invalidFilter",
                format!("the filter is longer than {MAX_FILTER} bytes"),
            ));
        }
        let parsed = match &q.filter {
            Some(text) => Some(
                filter::parse(text).map_err(|e| ScimError::bad("invalidFilter", e.to_string()))?,
            ),
            None => None,
        };
        // Members are read only when shown or filtered on: a group's member list can
        // be long, and Entra asks with excludedAttributes=members for that reason.
        let members = kind == Kind::Group
            && (wants_members(q)
                || q.filter
                    .as_deref()
                    .is_some_and(|f| f.to_ascii_lowercase().contains("members")));
        let finish = |mut docs: Vec<Value>, total: usize| {
            docs.iter_mut()
                .for_each(|d| resource::project(d, &q.attributes, &q.excluded));
            resource::list_json(total, q.start, docs)
        };

        // No filter, no sort: one page straight from the listing.
        if parsed.is_none() && q.sort_by.is_none() {
            let (ids, total) = self
                .directory
                .list(tenant, listing, q.start - 1, q.count)
                .await
                .map_err(|e| directory_error(e, rid))?;
            let docs = self.load(t, tenant, kind, &ids, members, rid).await?;
            return Ok(finish(docs, total));
        }

        let matches = |doc: &Value| parsed.as_ref().is_none_or(|f| f.matches(doc, &case_exact));
        // Without sorting, only the requested page is kept (the rest is only counted);
        // sorting needs every match, up to a bound.
        let sorting = q.sort_by.is_some();
        let (skip, take) = (q.start - 1, q.count);
        let mut found = Vec::new();
        let mut total = 0usize;
        let mut keep = |docs: Vec<Value>| -> Result<(), ScimError> {
            for d in docs.into_iter().filter(|d| matches(d)) {
                if sorting || (total >= skip && total < skip + take) {
                    found.push(d);
                }
                total += 1;
                if sorting && total > MAX_SORTED {
                    return Err(ScimError::bad(
                        "tooMany",
                        format!("more than {MAX_SORTED} matches to sort; narrow the filter"),
                    ));
                }
            }
            Ok(())
        };
        match match &parsed {
            Some(f) => self.candidates(tenant, kind, f, rid).await?,
            None => None,
        } {
            Some(ids) => {
                for chunk in ids.chunks(SCAN_BATCH) {
                    keep(self.load(t, tenant, kind, chunk, members, rid).await?)?;
                }
            }
            None => {
                // No index serves this filter: walk the listing in batches. Correct
                // for any filter, linear in the tenant's size.
                let mut start = 0;
                loop {
                    let (ids, size) = self
                        .directory
                        .list(tenant, listing, start, SCAN_BATCH)
                        .await
                        .map_err(|e| directory_error(e, rid))?;
                    let done = ids.is_empty();
                    keep(self.load(t, tenant, kind, &ids, members, rid).await?)?;
                    start += SCAN_BATCH;
                    if done || start >= size {
                        break;
                    }
                }
            }
        }
        if let Some(by) = &q.sort_by {
            let path = filter::AttrPath::parse(by)
                .map_err(|e| ScimError::bad("invalidPath", e.to_string()))?;
            sort_docs(&mut found, &path, q.descending);
            found = found.into_iter().skip(skip).take(take).collect();
        }
        Ok(finish(found, total))
    }

    async fn create_user(
        &self,
        t: &Tenant,
        tenant: &str,
        body: &Value,
        rid: &str,
    ) -> Result<Value, ScimError> {
        let desired = resource::user_from_json(body, &User::new("", crate::directory::now()))?;
        let user = self
            .directory
            .provision_user(&by(rid), tenant, &t.provisioning, &desired)
            .await
            .map_err(|e| directory_error(e, rid))?;
        tracing::info!(request_id = rid, tenant, user = %user.id, "SCIM user provisioned");
        let mut docs = self.render_users(t, tenant, &[user], rid).await?;
        docs.pop().ok_or_else(|| ScimError::internal(rid))
    }

    async fn create_group(
        &self,
        t: &Tenant,
        tenant: &str,
        body: &Value,
        rid: &str,
    ) -> Result<Value, ScimError> {
        let (desired, members) =
            resource::group_from_json(body, &Group::new("", "", crate::directory::now()))?;
        let members = members.unwrap_or_default();
        if desired
            .external_id
            .as_deref()
            .is_some_and(|x| x.contains(['/', '?', '#']) || x.chars().any(char::is_control))
        {
            // It becomes the group's id, which must fit in a URL path segment.
            return Err(ScimError::invalid_value(
                "a group externalId may not contain '/', '?', '#' or control characters",
            ));
        }
        self.directory
            .check_members(tenant, &members)
            .await
            .map_err(|e| directory_error(e, rid))?;
        let (group, existed) = self
            .directory
            .provision_group(&by(rid), tenant, &desired)
            .await
            .map_err(|e| directory_error(e, rid))?;
        // A restored or adopted group has exactly the members asked for: former members
        // do not get their access back with it.
        let remove: Vec<String> = if existed {
            let wanted: HashSet<&String> = members.iter().collect();
            self.directory
                .members(tenant, &group.id)
                .await
                .map_err(|e| directory_error(e, rid))?
                .into_iter()
                .filter(|m| !wanted.contains(m))
                .collect()
        } else {
            Vec::new()
        };
        self.directory
            .change_members(
                &by(rid),
                tenant,
                &group.id,
                &members,
                &remove,
                &t.provisioning.default_role,
            )
            .await
            .map_err(|e| directory_error(e, rid))?;
        tracing::info!(request_id = rid, tenant, group = %group.id, members = members.len(), "SCIM group provisioned");
        let mut docs = self.render_groups(t, tenant, &[group], true, rid).await?;
        docs.pop().ok_or_else(|| ScimError::internal(rid))
    }

    /// PUT (`patch` false: the body is the whole resource) or PATCH (the body is a
    /// PatchOp, applied to the resource as SCIM shows it).
    #[allow(clippy::too_many_arguments)]
    async fn modify_user(
        &self,
        t: &Tenant,
        tenant: &str,
        id: &str,
        if_match: Option<&str>,
        body: &Value,
        patch: bool,
        rid: &str,
    ) -> Result<Value, ScimError> {
        let ops = if patch {
            parse_patch(body)?
        } else {
            Vec::new()
        };
        for _ in 0..ATTEMPTS {
            let old = self.visible_user(tenant, id, rid).await?;
            check_if_match(if_match, old.version)?;
            let new = if patch {
                let mut doc = self
                    .render_users(t, tenant, std::slice::from_ref(&old), rid)
                    .await?
                    .pop()
                    .ok_or_else(|| ScimError::internal(rid))?;
                patch::apply(
                    &mut doc,
                    &ops,
                    &["id", "meta", "groups", "schemas"],
                    &case_exact,
                )
                .map_err(patch_error)?;
                resource::user_from_json(&doc, &old)?
            } else {
                resource::user_from_json(body, &old)?
            };
            if new == old {
                self.directory
                    .enforce_block(&by(rid), tenant, &old)
                    .await
                    .map_err(|e| directory_error(e, rid))?;
                let mut docs = self.render_users(t, tenant, &[old], rid).await?;
                return docs.pop().ok_or_else(|| ScimError::internal(rid));
            }
            match self
                .directory
                .replace_user(&by(rid), tenant, &old, new)
                .await
            {
                Ok(user) => {
                    tracing::info!(
                        request_id = rid,
                        tenant,
                        user = %user.id,
                        active = user.active,
                        op = if patch { "patch" } else { "put" },
                        "SCIM user updated"
                    );
                    let mut docs = self.render_users(t, tenant, &[user], rid).await?;
                    return docs.pop().ok_or_else(|| ScimError::internal(rid));
                }
                // Someone else wrote in between: without If-Match, apply the change to
                // the new version; with it, the client asked not to.
                Err(DirectoryError::VersionMismatch) if if_match.is_none() => continue,
                Err(e) => return Err(directory_error(e, rid)),
            }
        }
        Err(directory_error(DirectoryError::Contended, rid))
    }

    #[allow(clippy::too_many_arguments)]
    async fn modify_group(
        &self,
        t: &Tenant,
        tenant: &str,
        id: &str,
        if_match: Option<&str>,
        body: &Value,
        patch: bool,
        rid: &str,
    ) -> Result<Value, ScimError> {
        let ops = if patch {
            parse_patch(body)?
        } else {
            Vec::new()
        };
        for _ in 0..ATTEMPTS {
            let old = self.visible_group(tenant, id, rid).await?;
            check_if_match(if_match, old.version)?;
            let members = self
                .directory
                .members(tenant, id)
                .await
                .map_err(|e| directory_error(e, rid))?;
            let (new, new_members) = if patch {
                let mut doc = resource::group_json(&old, Some(&members), &t.base);
                patch::apply(&mut doc, &ops, &["id", "meta", "schemas"], &case_exact)
                    .map_err(patch_error)?;
                let (g, m) = resource::group_from_json(&doc, &old)?;
                (g, Some(m.unwrap_or_default()))
            } else {
                resource::group_from_json(body, &old)?
            };
            // PUT without members leaves them alone rather than removing everyone.
            let new_members = new_members.unwrap_or_else(|| members.clone());
            let (before, after): (HashSet<&String>, HashSet<&String>) =
                (members.iter().collect(), new_members.iter().collect());
            let add: Vec<String> = new_members
                .iter()
                .filter(|m| !before.contains(m))
                .cloned()
                .collect();
            let remove: Vec<String> = members
                .iter()
                .filter(|m| !after.contains(m))
                .cloned()
                .collect();
            self.directory
                .check_members(tenant, &add)
                .await
                .map_err(|e| directory_error(e, rid))?;
            // A change of members is a change of the group: its version moves (so ETags
            // and If-Match cover the member list), and the compare-and-set on it orders
            // concurrent member changes.
            let stored = if new == old && add.is_empty() && remove.is_empty() {
                old
            } else {
                match self
                    .directory
                    .replace_group(&by(rid), tenant, &old, new)
                    .await
                {
                    Ok(g) => g,
                    Err(DirectoryError::VersionMismatch) if if_match.is_none() => continue,
                    Err(e) => return Err(directory_error(e, rid)),
                }
            };
            self.directory
                .change_members(
                    &by(rid),
                    tenant,
                    id,
                    &add,
                    &remove,
                    &t.provisioning.default_role,
                )
                .await
                .map_err(|e| directory_error(e, rid))?;
            tracing::info!(
                request_id = rid,
                tenant,
                group = id,
                added = add.len(),
                removed = remove.len(),
                op = if patch { "patch" } else { "put" },
                "SCIM group updated"
            );
            let mut docs = self.render_groups(t, tenant, &[stored], true, rid).await?;
            return docs.pop().ok_or_else(|| ScimError::internal(rid));
        }
        Err(directory_error(DirectoryError::Contended, rid))
    }

    /// DELETE: deprovisions. The record stays (blocked, hidden from SCIM); a later
    /// create with the same userName or externalId restores it.
    async fn delete(
        &self,
        tenant: &str,
        kind: Kind,
        id: &str,
        if_match: Option<&str>,
        rid: &str,
    ) -> Result<(), ScimError> {
        for _ in 0..ATTEMPTS {
            let outcome = match kind {
                Kind::User => {
                    let old = self.visible_user(tenant, id, rid).await?;
                    check_if_match(if_match, old.version)?;
                    let mut new = old.clone();
                    new.active = false;
                    new.deprovisioned = true;
                    self.directory
                        .replace_user(&by(rid), tenant, &old, new)
                        .await
                        .map(|_| ())
                }
                Kind::Group => {
                    let old = self.visible_group(tenant, id, rid).await?;
                    check_if_match(if_match, old.version)?;
                    let mut new = old.clone();
                    new.active = false;
                    new.deprovisioned = true;
                    self.directory
                        .replace_group(&by(rid), tenant, &old, new)
                        .await
                        .map(|_| ())
                }
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(
                        request_id = rid,
                        tenant,
                        kind = kind.name(),
                        id,
                        "SCIM deprovisioned"
                    );
                    return Ok(());
                }
                Err(DirectoryError::VersionMismatch) if if_match.is_none() => continue,
                Err(e) => return Err(directory_error(e, rid)),
            }
        }
        Err(directory_error(DirectoryError::Contended, rid))
    }
}

fn wants_members(q: &Query) -> bool {
    let named = |list: &[String]| {
        list.iter().any(|a| {
            let a = a.rsplit_once(':').map_or(a.as_str(), |(_, a)| a);
            a.eq_ignore_ascii_case("members") || a.to_ascii_lowercase().starts_with("members.")
        })
    };
    !named(&q.excluded) && (q.attributes.is_empty() || named(&q.attributes))
}

/// Parses a PatchOp body, refusing more operations than [`MAX_PATCH_OPS`].
pub(crate) fn parse_patch(body: &Value) -> Result<Vec<patch::PatchOp>, ScimError> {
    let ops = patch::parse(body).map_err(patch_error)?;
    if ops.len() > MAX_PATCH_OPS {
        return Err(ScimError::invalid_value(format!(
            "more than {MAX_PATCH_OPS} operations in one request"
        )));
    }
    Ok(ops)
}

fn patch_error(e: patch::PatchError) -> ScimError {
    ScimError::bad(e.scim_type(), e.to_string())
}

fn discovery(items: Vec<Value>, id: Option<&str>, what: &str) -> Result<Response<Body>, ScimError> {
    match id {
        None => Ok(scim_response(
            StatusCode::OK,
            &resource::list_json(items.len(), 1, items),
        )),
        Some(id) => items
            .into_iter()
            .find(|i| i["id"].as_str() == Some(id))
            .map(|i| scim_response(StatusCode::OK, &i))
            .ok_or_else(|| ScimError::not_found(what)),
    }
}

/// Orders documents by one attribute (RFC 7644 §3.4.2.3): strings case-insensitively,
/// resources without the attribute last whatever the order.
fn sort_docs(docs: &mut [Value], path: &filter::AttrPath, descending: bool) {
    let key = |d: &Value| -> Option<String> {
        let top = d
            .as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&path.attr))?
            .1;
        let v = match &path.sub {
            None => top,
            Some(sub) => {
                let holder = match top {
                    Value::Array(items) => items
                        .iter()
                        .find(|i| i["primary"] == json!(true))
                        .or(items.first())?,
                    other => other,
                };
                holder
                    .as_object()?
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(sub))?
                    .1
            }
        };
        match v {
            Value::String(s) => Some(s.to_lowercase()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    };
    docs.sort_by(|a, b| match (key(a), key(b)) {
        (Some(x), Some(y)) if descending => y.cmp(&x),
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
}

/// Reads a request body as JSON: at most [`MAX_BODY`] bytes (413 beyond), of a JSON
/// media type (415 otherwise; no Content-Type is taken as JSON).
async fn read_json(req: Request<Incoming>) -> Result<Value, ScimError> {
    let too_large = || {
        ScimError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            format!("the request body exceeds {MAX_BODY} bytes"),
        )
    };
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let media = ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media != SCIM_JSON && media != "application/json" {
            return Err(ScimError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
                "send application/scim+json or application/json",
            ));
        }
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let bytes = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                ScimError::invalid_syntax("the request body could not be read")
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| ScimError::invalid_syntax(format!("the body is not valid JSON: {e}")))
}

/// The resource type a SCIM path addresses (`/Users/{id}` → `Users`), for the span:
/// never the id, which the request's own path already carries.
fn scim_resource(tail: &str) -> &'static str {
    match tail.trim_start_matches('/').split('/').next().unwrap_or("") {
        "" => "Base",
        "Users" => "Users",
        "Groups" => "Groups",
        "ServiceProviderConfig" => "ServiceProviderConfig",
        "ResourceTypes" => "ResourceTypes",
        "Schemas" => "Schemas",
        "Bulk" => "Bulk",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(route(""), Route::Base));
        assert!(matches!(route("/"), Route::Base));
        assert!(matches!(route("/Users"), Route::Collection(Kind::User)));
        assert!(matches!(route("/Users/"), Route::Collection(Kind::User)));
        assert!(matches!(
            route("/Groups/g1"),
            Route::Resource(Kind::Group, "g1")
        ));
        assert!(matches!(route("/Users/a/b"), Route::Unknown));
        assert!(matches!(
            route("/Schemas/urn:x"),
            Route::Schemas(Some("urn:x"))
        ));
        assert!(matches!(route("/Users/.search"), Route::Search));
        assert!(matches!(route("/Nope"), Route::Unknown));
    }

    #[test]
    fn if_match_accepts_weak_strong_and_star() {
        assert!(check_if_match(None, 3).is_ok());
        assert!(check_if_match(Some("W/\"3\""), 3).is_ok());
        assert!(check_if_match(Some("\"3\""), 3).is_ok());
        assert!(check_if_match(Some("W/\"2\", W/\"3\""), 3).is_ok());
        assert!(check_if_match(Some("*"), 3).is_ok());
        assert_eq!(
            check_if_match(Some("W/\"2\""), 3).unwrap_err().status(),
            StatusCode::PRECONDITION_FAILED
        );
    }

    #[test]
    fn query_bounds_follow_rfc_7644() {
        let q = parse_query(Some("startIndex=0&count=-5&attributes=userName,%20emails")).unwrap();
        assert_eq!((q.start, q.count), (1, 0));
        assert_eq!(q.attributes, ["userName", "emails"]);
        let q = parse_query(Some("count=100000&aadOptscim062020")).unwrap();
        assert_eq!(q.count, MAX_RESULTS);
        assert!(parse_query(Some("count=abc")).is_err());
        assert!(parse_query(Some("sortOrder=sideways")).is_err());
    }

    #[test]
    fn sorting_puts_missing_values_last() {
        let mut docs = vec![
            json!({"id": "1", "userName": "b"}),
            json!({"id": "2"}),
            json!({"id": "3", "userName": "A"}),
        ];
        let path = filter::AttrPath::parse("userName").unwrap();
        sort_docs(&mut docs, &path, false);
        let ids: Vec<&str> = docs.iter().map(|d| d["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["3", "1", "2"]);
        sort_docs(&mut docs, &path, true);
        let ids: Vec<&str> = docs.iter().map(|d| d["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["1", "3", "2"]);
    }
}
