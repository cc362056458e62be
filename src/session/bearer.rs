//! Machine clients (SPEC §9): `Authorization: Bearer <JWT>` from an issuer a tenant
//! configures (`[[tenants.bearer]]`), admitted like a session.
//!
//! A token is checked once (signature against the issuer's JWKS, `iss`, `aud`, `exp`,
//! `nbf` with 60 s of skew), then its verdict is cached by the token itself until the
//! token expires or an invalidation arrives, so a client repeating its token costs one
//! cache lookup and no store round trip. Users and groups come from the sessions' own
//! caches, which every replica's invalidations clear: a deactivation reaches bearer
//! clients as fast as it reaches browsers.
//!
//! The JWKS of a `jwks_url` issuer is fetched at startup, refreshed every
//! [`REFRESH_EVERY`], and refetched when a token names a `kid` it does not hold, at
//! most once per [`KID_MISS_REFETCH`]: a client sending made-up `kid`s cannot make
//! idgate hammer the issuer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::model::{RevokeReason, SessionRecord};
use super::watch::{Pass, Watched};
use super::{Authenticated, Sessions, blocked};
use crate::config::{BearerConfig, Config, FailMode, JwksSource};
use crate::directory::model::{Group, User};
use crate::directory::now;
use crate::identity::{Identity, Via};
use crate::proxy::tunnel::ClosedBy;
use crate::snapshot::Snapshot;

/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 60;
/// How often a `jwks_url` issuer's keys are refetched anyway, so that a key the issuer
/// withdrew stops working.
pub const REFRESH_EVERY: Duration = Duration::from_secs(15 * 60);
/// At most one refetch per issuer in this time for tokens naming an unknown `kid`.
pub const KID_MISS_REFETCH: Duration = Duration::from_secs(60);
/// Retry delay after a failed fetch when there are no keys yet.
const RETRY_EMPTY: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Keys tried for a token that names no `kid`.
const MAX_KEYS_WITHOUT_KID: usize = 4;
/// Longer tokens are refused before any parsing (real ones are 1–3 KB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Cached verdicts kept at most.
const VERDICT_CAPACITY: u64 = 50_000;

/// Why a token was refused with 401 (the log's `reason`; never the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not a JWT, or larger than [`MAX_TOKEN_BYTES`].
    Malformed,
    /// Its `iss` names no issuer of a tenant this host serves.
    UnknownIssuer,
    /// Its `alg` is not on the issuer's allow-list.
    Algorithm,
    /// No key of the issuer matches (after a refetch, if one was allowed).
    UnknownKey,
    /// The signature, `aud`, `exp`, `nbf` or a required claim failed.
    Rejected,
    /// The user claim is missing or not a string.
    NoSubject,
}

impl Invalid {
    /// The log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::Malformed => "malformed",
            Invalid::UnknownIssuer => "unknown_issuer",
            Invalid::Algorithm => "algorithm_not_allowed",
            Invalid::UnknownKey => "unknown_key",
            Invalid::Rejected => "rejected",
            Invalid::NoSubject => "no_subject",
        }
    }
}

/// The verdict on one bearer request.
pub enum BearerGate {
    /// No tenant served on this host accepts bearer tokens: the header is the app's
    /// business, and the request is judged as if it had none.
    NotAccepted,
    /// Forward with these headers; `forward_authorization` says whether the client's
    /// `Authorization` goes along.
    Forward(super::ThreadHeaders, bool),
    /// 401 `invalid_token`.
    Invalid(Invalid),
    /// 403, as for a session: the user is deactivated or the group cancelled.
    Revoked(RevokeReason),
    /// The store cannot vouch for the user.
    Unavailable,
    /// The identity cannot be sent as headers (the field named).
    Unusable(&'static str),
}

/// One issuer of one tenant.
struct Issuer {
    tenant: String,
    config: BearerConfig,
    keys: arc_swap::ArcSwap<Keys>,
    /// When the keys were last fetched (or a fetch last failed): bounds refetches.
    last_fetch: Mutex<Option<Instant>>,
    /// One fetch at a time per issuer.
    fetching: tokio::sync::Mutex<()>,
    http: Option<crate::maestrano::worker::Client>,
    /// Its refresh task runs (an issuer kept across a reload keeps its task).
    started: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Keys {
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
}

impl Keys {
    fn from_set(set: &JwkSet) -> (Keys, usize) {
        let mut skipped = 0;
        let keys = set
            .keys
            .iter()
            .filter_map(|jwk| match DecodingKey::from_jwk(jwk) {
                // A symmetric key in a public JWKS is a mistake that would make a secret
                // of something published: never used.
                Ok(_) if family(jwk) == Algorithm::HS256 => {
                    skipped += 1;
                    None
                }
                Ok(k) => Some((jwk.common.key_id.clone(), family(jwk), k)),
                Err(_) => {
                    skipped += 1;
                    None
                }
            })
            .collect();
        (Keys { keys }, skipped)
    }

    /// Keys that may have signed a token with `kid` and `alg`: the one with that
    /// `kid`, or, for a token without one, every key of the algorithm's family.
    fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        self.keys
            .iter()
            .filter(move |(k, fam, _)| match kid {
                Some(kid) => k.as_deref() == Some(kid),
                None => same_family(*fam, alg),
            })
            // A token without a `kid` costs at most this many signature checks, however
            // many keys the issuer publishes.
            .take(MAX_KEYS_WITHOUT_KID)
            .map(|(_, _, key)| key)
    }
}

/// A representative algorithm for a JWK's key type, to match tokens without a `kid`.
fn family(jwk: &jsonwebtoken::jwk::Jwk) -> Algorithm {
    use jsonwebtoken::jwk::AlgorithmParameters as P;
    match &jwk.algorithm {
        P::RSA(_) => Algorithm::RS256,
        P::EllipticCurve(ec) => match ec.curve {
            jsonwebtoken::jwk::EllipticCurve::P384 => Algorithm::ES384,
            _ => Algorithm::ES256,
        },
        P::OctetKeyPair(_) => Algorithm::EdDSA,
        // Symmetric keys (and kinds added later) match no accepted algorithm.
        _ => Algorithm::HS256,
    }
}

fn same_family(key: Algorithm, alg: Algorithm) -> bool {
    use Algorithm::*;
    match key {
        RS256 => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
        other => other == alg,
    }
}

/// The bearer issuers of every tenant, and the verdicts already reached.
pub struct Issuers {
    by_tenant: HashMap<String, Vec<Arc<Issuer>>>,
    /// By SHA-256 of the token: bounded memory whatever the tokens' size, and no live
    /// credential kept in memory.
    verdicts: moka::sync::Cache<[u8; 32], Arc<Verdict>>,
    /// What they were built from, so that a reload that leaves them as they were keeps
    /// them (and their fetched keys).
    fingerprint: Vec<String>,
}

/// A token's cached verdict, valid while nothing was invalidated since `generation`.
struct Verdict {
    tenant: String,
    generation: u64,
    /// The token's `exp` (plus skew): the verdict ends with it.
    until: i64,
    pass: super::ThreadHeaders,
    forward_authorization: bool,
}

impl Issuers {
    /// The issuers `config` names, with their static keys loaded; fetched keys arrive
    /// once [`Issuers::start`] runs.
    pub fn new(config: &Config, cache_ttl: Duration) -> Issuers {
        Issuers::renewed(config, cache_ttl, None)
    }

    /// [`Issuers::new`], keeping from `previous` every issuer whose tenant and settings
    /// are unchanged, with the keys it fetched: a reload or a marketplace change that does
    /// not touch an issuer must not leave its clients without keys while it refetches.
    pub fn renewed(config: &Config, cache_ttl: Duration, previous: Option<&Issuers>) -> Issuers {
        let mut by_tenant: HashMap<String, Vec<Arc<Issuer>>> = HashMap::new();
        for t in &config.tenants {
            for b in &t.bearer {
                let kept = previous
                    .and_then(|p| p.by_tenant.get(&t.id))
                    .and_then(|list| {
                        list.iter()
                            .find(|i| format!("{:?}", i.config) == format!("{b:?}"))
                    });
                if let Some(kept) = kept {
                    by_tenant
                        .entry(t.id.clone())
                        .or_default()
                        .push(kept.clone());
                    continue;
                }
                let (keys, http) = match &b.keys {
                    JwksSource::Static(set) => (Keys::from_set(set).0, None),
                    JwksSource::Url { ca_certificate, .. } => {
                        (Keys::default(), Some(client(ca_certificate.as_deref())))
                    }
                };
                by_tenant
                    .entry(t.id.clone())
                    .or_default()
                    .push(Arc::new(Issuer {
                        tenant: t.id.clone(),
                        config: b.clone(),
                        keys: arc_swap::ArcSwap::from_pointee(keys),
                        last_fetch: Mutex::new(None),
                        fetching: tokio::sync::Mutex::new(()),
                        http,
                        started: std::sync::atomic::AtomicBool::new(false),
                    }));
            }
        }
        Issuers {
            fingerprint: fingerprint(config),
            by_tenant,
            verdicts: moka::sync::Cache::builder()
                .max_capacity(VERDICT_CAPACITY)
                .time_to_live(cache_ttl)
                .build(),
        }
    }

    /// What they were built from (see [`crate::session::Settings::build`]).
    pub fn fingerprint(&self) -> &Vec<String> {
        &self.fingerprint
    }

    /// Whether any tenant accepts bearer tokens (else `Authorization` is the app's).
    pub fn any(&self) -> bool {
        !self.by_tenant.is_empty()
    }

    /// Whether `tenant` accepts bearer tokens.
    pub fn serves_tenant(&self, tenant: &str) -> bool {
        self.by_tenant.contains_key(tenant)
    }

    /// Fetches every `jwks_url` now and keeps them fresh, in the background.
    pub fn start(&self) {
        for issuer in self.by_tenant.values().flatten() {
            if !matches!(issuer.config.keys, JwksSource::Url { .. })
                || issuer
                    .started
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                continue;
            }
            // A plain-http URL off loopback was warned about with the config's warnings.
            // Weak: the task ends once a reload has replaced the issuer.
            let issuer = Arc::downgrade(issuer);
            tokio::spawn(async move {
                loop {
                    let Some(issuer) = issuer.upgrade() else {
                        return;
                    };
                    let wait = match issuer.fetch().await {
                        Ok(()) => REFRESH_EVERY,
                        Err(_) if issuer.keys.load().keys.is_empty() => RETRY_EMPTY,
                        Err(_) => KID_MISS_REFETCH,
                    };
                    drop(issuer);
                    tokio::time::sleep(wait).await;
                }
            });
        }
    }
}

impl Issuer {
    /// Fetches the JWKS and replaces the keys; on failure the last good keys stay.
    async fn fetch(&self) -> Result<(), ()> {
        let _one = self.fetching.lock().await;
        self.fetch_locked().await
    }

    /// [`Issuer::fetch`], the caller holding `fetching`.
    async fn fetch_locked(&self) -> Result<(), ()> {
        let JwksSource::Url { url, .. } = &self.config.keys else {
            return Ok(());
        };
        let Some(http) = &self.http else {
            return Ok(());
        };
        // For the log: a URL's password never is.
        let shown = crate::config::redact_url(url.as_str());
        *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let result = async {
            let req = http::Request::get(url.as_str())
                .header(http::header::ACCEPT, "application/json")
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            let resp = tokio::time::timeout(FETCH_TIMEOUT, http.request(req))
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("answered {}", resp.status()));
            }
            let body = tokio::time::timeout(
                FETCH_TIMEOUT,
                http_body_util::Limited::new(resp.into_body(), MAX_JWKS_BYTES).collect(),
            )
            .await
            .map_err(|_| "body timed out".to_owned())?
            .map_err(|e| e.to_string())?
            .to_bytes();
            let set: JwkSet =
                serde_json::from_slice(&body).map_err(|e| format!("not a JWKS document: {e}"))?;
            Ok(set)
        }
        .await;
        match result {
            Ok(set) => {
                let (keys, skipped) = Keys::from_set(&set);
                if keys.keys.is_empty() {
                    tracing::error!(tenant = self.tenant, url = %shown, skipped, "bearer JWKS holds no usable key; keeping the last good keys");
                    return Err(());
                }
                tracing::info!(tenant = self.tenant, url = %shown, keys = keys.keys.len(), skipped, "bearer JWKS fetched");
                self.keys.store(Arc::new(keys));
                Ok(())
            }
            Err(error) => {
                tracing::warn!(tenant = self.tenant, url = %shown, error, "bearer JWKS fetch failed; keeping the last good keys");
                Err(())
            }
        }
    }

    /// Refetches for an unknown `kid`, unless a fetch happened within
    /// [`KID_MISS_REFETCH`]. Whether new keys may have arrived.
    async fn refetch_for_miss(&self) -> bool {
        if self.http.is_none() {
            return false;
        }
        // Checked under the fetch lock: misses that queued behind a fetch find it done.
        let _one = self.fetching.lock().await;
        {
            let last = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < KID_MISS_REFETCH) {
                return false;
            }
        }
        self.fetch_locked().await.is_ok()
    }

    /// Checks the token's signature and registered claims; its claims if it holds.
    async fn verify(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
    ) -> Result<Map<String, Value>, Invalid> {
        if !self.config.algorithms.contains(&header.alg) {
            return Err(Invalid::Algorithm);
        }
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = LEEWAY_SECS;
        v.validate_nbf = true;
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(&[&self.config.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let kid = header.kid.as_deref();
        for attempt in 0..2 {
            let keys = self.keys.load();
            let mut tried = false;
            for key in keys.candidates(kid, header.alg) {
                tried = true;
                if let Ok(data) = jsonwebtoken::decode::<Map<String, Value>>(token, key, &v) {
                    return Ok(data.claims);
                }
            }
            if tried {
                return Err(Invalid::Rejected);
            }
            if attempt == 0 && !self.refetch_for_miss().await {
                break;
            }
        }
        Err(Invalid::UnknownKey)
    }
}

/// An HTTPS client that trusts the public roots, or only `ca` (PEM) when given.
fn client(ca: Option<&[u8]>) -> crate::maestrano::worker::Client {
    let Some(ca) = ca else {
        return crate::maestrano::worker::client();
    };
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca).flatten() {
        if let Err(e) = roots.add(cert) {
            tracing::error!(error = %e, "bearer ca_certificate: a certificate is not usable");
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let tls = match tls {
        Ok(t) => t,
        Err(e) => {
            // Only a build without TLS 1.2/1.3 support gets here; the public roots
            // would trust more than configured, so trust nothing instead.
            tracing::error!(error = %e, "cannot build a TLS client for the bearer JWKS");
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        }
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https)
}

/// What the issuers of `config` are built from, comparable between two configs.
pub fn fingerprint(config: &Config) -> Vec<String> {
    config
        .tenants
        .iter()
        .map(|t| format!("{}:{:?}", t.id, t.bearer))
        .collect()
}

/// The `iss` of a token not yet verified: only to pick the issuer that verifies it.
fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok()?.iss
}

/// A claim's string value, if it is a non-empty string.
fn claim<'a>(claims: &'a Map<String, Value>, name: Option<&str>) -> Option<&'a str> {
    claims
        .get(name?)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The bearer token of an `Authorization` header, if it holds one.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl Sessions {
    /// Whether bearer tokens are accepted on requests for `tenant`.
    pub fn accepts_bearer(&self, snap: &Snapshot, tenant: &str) -> bool {
        snap.sessions.bearer.serves_tenant(tenant)
    }

    /// For a request to a host that serves a tenant accepting bearer tokens: whether a
    /// client's token may reach the app (one of those issuers sets
    /// `forward_authorization`). `None`: no such tenant, `Authorization` is the app's.
    pub fn bearer_host(&self, snap: &Snapshot, serves: impl Fn(&str) -> bool) -> Option<bool> {
        let issuers = &snap.sessions.bearer;
        let mut served = issuers
            .by_tenant
            .iter()
            .filter(|(t, _)| serves(t))
            .peekable();
        served.peek()?;
        Some(served.any(|(_, list)| list.iter().any(|i| i.config.forward_authorization)))
    }

    /// Whether any tenant accepts bearer tokens.
    pub fn any_bearer(&self, snap: &Snapshot) -> bool {
        snap.sessions.bearer.any()
    }

    /// The gate for a machine client: the token's verdict, from the cache while nothing
    /// has been invalidated since it was reached. `serves(tenant)` says whether the
    /// request's host belongs to `tenant`, as for sessions.
    pub async fn gate_bearer(
        self: &Arc<Self>,
        snap: &Snapshot,
        token: &str,
        serves: impl Fn(&str) -> bool + Sync,
    ) -> BearerGate {
        if token.len() > MAX_TOKEN_BYTES {
            return BearerGate::Invalid(Invalid::Malformed);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let now = now();
        let issuers = &snap.sessions.bearer;
        let token_key: [u8; 32] = sha2::Digest::finalize(
            <sha2::Sha256 as sha2::Digest>::new_with_prefix(token.as_bytes()),
        )
        .into();
        if let Some(v) = issuers.verdicts.get(&token_key)
            && v.generation == generation
            && now <= v.until
            && v.pass.auth.headers.expires_at - now > snap.identity.ttl().as_secs() as i64 / 2
            && serves(&v.tenant)
        {
            return BearerGate::Forward(v.pass.clone(), v.forward_authorization);
        }
        if !issuers.by_tenant.keys().any(|t| serves(t)) {
            return BearerGate::NotAccepted;
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return BearerGate::Invalid(Invalid::Malformed);
        };
        let Some(iss) = unverified_issuer(token) else {
            return BearerGate::Invalid(Invalid::Malformed);
        };
        // Every issuer of a tenant this host serves with this `iss`, in tenant order
        // (several tenants may share a host and an issuer, each with its own audience:
        // the one whose audience the token holds verifies it).
        let mut candidates: Vec<&Arc<Issuer>> = issuers
            .by_tenant
            .iter()
            .filter(|(tenant, _)| serves(tenant) && snap.sessions.known.contains(*tenant))
            .flat_map(|(_, list)| list.iter())
            .filter(|i| i.config.issuer == iss)
            .collect();
        if candidates.is_empty() {
            return BearerGate::Invalid(Invalid::UnknownIssuer);
        }
        candidates.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        let mut verified = None;
        let mut first_error = None;
        for candidate in candidates {
            match candidate.verify(token, &header).await {
                Ok(c) => {
                    verified = Some((candidate.clone(), c));
                    break;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some((issuer, claims)) = verified else {
            return BearerGate::Invalid(first_error.unwrap_or(Invalid::Rejected));
        };
        let c = &issuer.config;
        let Some(subject) = claim(&claims, Some(&c.user_claim)) else {
            return BearerGate::Invalid(Invalid::NoSubject);
        };
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
        let until = exp.saturating_add(LEEWAY_SECS as i64);
        if !self.store_healthy() && self.fail_mode == FailMode::Closed {
            return BearerGate::Unavailable;
        }
        let tenant = &issuer.tenant;
        let rules = snap.sessions.rules(tenant);
        let may_fetch = self.store_healthy();
        let user_key = (tenant.clone(), subject.to_owned());
        let user = match self.user(&user_key, may_fetch, generation).await {
            Ok(u) => u,
            Err(()) => return BearerGate::Unavailable,
        };
        let claimed_group = claim(&claims, c.group_claim.as_deref());
        let group_id = match (&user, claimed_group) {
            (_, Some(g)) => Some(g.to_owned()),
            (Some(u), None) => u.memberships.first().map(|m| m.group_id.clone()),
            (None, None) => None,
        };
        let group = match &group_id {
            Some(g) => match self
                .group(&(tenant.clone(), g.clone()), may_fetch, generation)
                .await
            {
                Ok(g) => g,
                Err(()) => return BearerGate::Unavailable,
            },
            None => None,
        };
        if let Some(reason) = refusal(user.as_deref(), group.as_deref()) {
            return BearerGate::Revoked(reason);
        }
        let identity = match &user {
            Some(u) => Identity {
                user_id: u.id.clone(),
                group_id: group_id.clone().unwrap_or_default(),
                tenant: tenant.clone(),
                email: u.email.clone().unwrap_or_default(),
                given_name: u.given_name.clone().unwrap_or_default(),
                family_name: u.family_name.clone().unwrap_or_default(),
                display_name: u.display_name.clone().unwrap_or_default(),
                role: group_id
                    .as_deref()
                    .and_then(|g| u.role_in(g))
                    .map_or_else(|| rules.default_role.clone(), str::to_owned),
                groups: match &group_id {
                    Some(g) => {
                        Identity::group_list(g, u.memberships.iter().map(|m| m.group_id.as_str()))
                    }
                    None => {
                        let mut all: Vec<String> =
                            u.memberships.iter().map(|m| m.group_id.clone()).collect();
                        all.sort_unstable();
                        all.dedup();
                        all
                    }
                },
            },
            None => {
                let group = group_id.clone().unwrap_or_default();
                Identity {
                    user_id: subject.to_owned(),
                    tenant: tenant.clone(),
                    email: claim(&claims, Some(&c.email_claim))
                        .unwrap_or_default()
                        .to_owned(),
                    given_name: String::new(),
                    family_name: String::new(),
                    display_name: claim(&claims, Some(&c.name_claim))
                        .unwrap_or_default()
                        .to_owned(),
                    role: claim(&claims, c.role_claim.as_deref())
                        .map_or_else(|| rules.default_role.clone(), str::to_owned),
                    groups: if group.is_empty() {
                        Vec::new()
                    } else {
                        vec![group.clone()]
                    },
                    group_id: group,
                }
            }
        };
        let headers = match self.signer.headers_via(
            &snap.identity,
            &identity,
            rules.name_order,
            now,
            Via::Bearer,
        ) {
            Ok(h) => h,
            Err(crate::identity::HeadersError::NotAHeaderValue(field)) => {
                return BearerGate::Unusable(field);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot sign identity");
                return BearerGate::Unavailable;
            }
        };
        let watch = Arc::new(Watch {
            sessions: self.clone(),
            user: user.as_ref().map(|_| user_key.clone()),
            group: group_id.map(|g| (tenant.clone(), g)),
            until,
        });
        let auth = Arc::new(Authenticated {
            record: SessionRecord {
                tenant: tenant.clone(),
                user_id: identity.user_id.clone(),
                group_id: identity.group_id.clone(),
                created_at: claims.get("iat").and_then(Value::as_i64).unwrap_or(now),
                expires_at: exp,
                mno: None,
                saml: None,
                client: None,
                user_agent: None,
            },
            name: identity.display_name(rules.name_order),
            identity,
            headers,
        });
        let pass = Arc::new(Pass {
            headers: auth.headers.headers.clone().into_boxed_slice(),
            auth,
            watched: Watched::Bearer(watch),
        });
        if self.generation.load(Ordering::Acquire) == generation {
            issuers.verdicts.insert(
                token_key,
                Arc::new(Verdict {
                    tenant: tenant.clone(),
                    generation,
                    until,
                    pass: pass.clone(),
                    forward_authorization: c.forward_authorization,
                }),
            );
        }
        BearerGate::Forward(pass, c.forward_authorization)
    }

    /// Whether what a bearer connection was opened under still holds: `None` if so.
    async fn bearer_verdict(&self, w: &Watch) -> Option<ClosedBy> {
        if now() > w.until {
            return Some(ClosedBy::Expired);
        }
        let start = Instant::now();
        loop {
            let generation = self.generation.load(Ordering::Acquire);
            let may_fetch = self.store_healthy();
            let user = match &w.user {
                Some(k) => self.user(k, may_fetch, generation).await.map(|u| (u, true)),
                None => Ok((None, false)),
            };
            let group = match &w.group {
                Some(k) => self.group(k, may_fetch, generation).await,
                None => Ok(None),
            };
            match (user, group) {
                (Ok((user, known)), Ok(group)) => {
                    if known && user.is_none() {
                        return Some(ClosedBy::Revoked);
                    }
                    return refusal(user.as_deref(), group.as_deref()).map(|_| ClosedBy::Revoked);
                }
                _ if self.fail_mode == FailMode::Closed
                    && start.elapsed() >= super::watch::UNCONFIRMED_LIMIT =>
                {
                    tracing::warn!(
                        "closing a bearer connection: the store cannot confirm its user (fail_mode closed)"
                    );
                    return Some(ClosedBy::Revoked);
                }
                _ if self.fail_mode == FailMode::Cached => return None,
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

/// What refuses a bearer identity: a deactivated user, a cancelled group, or a user
/// placed by the token in a group the directory says they are not in.
fn refusal(user: Option<&User>, group: Option<&Group>) -> Option<RevokeReason> {
    match (user, group) {
        (Some(u), Some(g)) => blocked(u, g),
        (Some(u), None) if !u.active || u.deprovisioned => Some(RevokeReason::AccountDeactivated),
        // Named a group that does not exist, or in no company at all (removed from their
        // last one): the directory places them nowhere, as for a session.
        (Some(_), None) => Some(RevokeReason::RemovedFromCompany),
        (None, Some(g)) if !g.active => Some(RevokeReason::CompanyCancelled),
        (None, _) => None,
    }
}

/// What an open connection made with a bearer token watches: the token's lifetime, and
/// (for a directory user or a known group) their status.
pub struct Watch {
    sessions: Arc<Sessions>,
    user: Option<(String, String)>,
    group: Option<(String, String)>,
    until: i64,
}

impl Watch {
    /// Resolves when the connection must close, and why.
    pub(super) async fn closed(self: Arc<Self>) -> ClosedBy {
        let left = (self.until - now()).max(0) as u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(left + 1);
        loop {
            let changed = self.sessions.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(by) = self.sessions.bearer_verdict(&self).await {
                return by;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return ClosedBy::Expired,
                _ = changed => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_nothing_else() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(http::header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer_token(&h), Some("abc"));
        for other in ["Basic abc", "Bearer", "Bearer ", "Bearerabc"] {
            h.insert(http::header::AUTHORIZATION, other.parse().unwrap());
            assert_eq!(bearer_token(&h), None, "{other}");
        }
    }

    #[test]
    fn the_issuer_is_read_from_the_payload_without_trusting_it() {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let t = format!("{}.{}.sig", enc("{}"), enc(r#"{"iss":"https://i/"}"#));
        assert_eq!(unverified_issuer(&t).as_deref(), Some("https://i/"));
        assert_eq!(unverified_issuer("a"), None);
        assert_eq!(unverified_issuer(&format!("x.{}.y", enc("[]"))), None);
    }

    #[test]
    fn rsa_keys_serve_every_rsa_algorithm_and_nothing_crosses_families() {
        use Algorithm::*;
        assert!(same_family(RS256, PS512));
        assert!(!same_family(RS256, ES256));
        assert!(!same_family(ES256, ES384));
        assert!(!same_family(EdDSA, ES256));
        assert!(!same_family(HS256, RS256));
    }
}
