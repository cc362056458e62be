//! Sessions: the cookie, the record, the in-process cache of live sessions and of user
//! and group status, and revocation.
//!
//! Hot path: a request with a live session is answered from three in-process caches
//! (session, user, group) and a cached signed JWT, with no store round trip. Caches are
//! invalidated through the store's event bus, and their TTL (`[session].cache_ttl`)
//! bounds staleness if an event is lost.

pub mod bearer;
pub mod model;
pub mod routes;
pub mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use http::header::{self, HeaderMap, HeaderValue};
use moka::sync::Cache;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::audit::{self, Origin};
use crate::config::{Config, FailMode, NameOrder, SessionConfig};
use crate::directory::model::{Group, User};
use crate::directory::now;
use crate::identity::{Identity, IdentityHeaders, Signer};
use crate::snapshot::{Snapshot, Snapshots};
use crate::store::{
    DirectoryStore, Event, EventBus, SessionStore, Store, StoreError, StoredSession,
};
use model::{RevokeReason, SessionRecord};
pub use watch::Pass;
use watch::WatchMap;

/// How often the store's health is checked in the background.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// Longest interval between sliding renewals written to the store.
const MAX_RENEW_INTERVAL: i64 = 60;
/// Live sessions kept in process (per replica).
const CACHE_CAPACITY: u64 = 200_000;

/// What a request's cookie amounts to.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A live session of an active user in an active group.
    Valid(Arc<Authenticated>),
    /// No cookie, or one that names no live session.
    Missing,
    /// The session was revoked, or the user or group is blocked.
    Revoked(RevokeReason),
    /// The store cannot be consulted (and the fail mode says not to guess).
    Unavailable,
    /// A live session whose identity cannot be sent as headers: the named field holds
    /// a control character.
    Unusable(&'static str),
}

/// A valid session with the identity to forward.
#[derive(Debug)]
pub struct Authenticated {
    /// The session.
    pub record: SessionRecord,
    /// Who it is.
    pub identity: Identity,
    /// Display name as composed for the tenant.
    pub name: String,
    /// Headers to set on the forwarded request.
    pub headers: IdentityHeaders,
}

/// A session just created by a login.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The cookie value (the only place the session id exists outside the browser).
    pub cookie_value: String,
    /// The `Set-Cookie` header to send.
    pub set_cookie: HeaderValue,
}

/// Why a session could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The user or group is blocked (or the user is not a member).
    #[error("login refused: {}", .0.code())]
    Refused(RevokeReason),
    /// No such user or group.
    #[error("unknown user or group")]
    Unknown,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

enum AuthInner {
    Valid(Arc<Authenticated>, Arc<Live>),
    Missing,
    Revoked(RevokeReason),
    Unavailable,
    Unusable(&'static str),
}

struct Live {
    /// SHA-256 of the cookie value; `hash` is its hex form, the store key.
    key: [u8; 32],
    hash: String,
    stored: StoredSession,
    /// Cache keys of the session's user and group, built once so the hot path looks
    /// them up without allocating.
    user_key: (String, String),
    group_key: (String, String),
    last_touch: AtomicI64,
    /// The signed identity, reused until the config, either record changes, or the JWT
    /// reaches half its lifetime.
    identity: Mutex<Option<Signed>>,
    /// Unix seconds of the next Maestrano re-check (`i64::MAX`: none). Shared with the
    /// re-check in flight, which moves it.
    recheck_at: Arc<AtomicI64>,
}

/// A session's signed identity and what it was made from.
struct Signed {
    /// The snapshot's epoch (keys, rules).
    epoch: u64,
    user_version: u64,
    group_version: u64,
    auth: Arc<Authenticated>,
}

#[derive(Clone)]
struct TenantRules {
    name_order: NameOrder,
    default_role: String,
}

/// What the session layer takes from a config: how each tenant's identities are
/// composed, which tenants exist, and the machine clients' issuers. Part of the
/// [`Snapshot`].
pub struct Settings {
    rules: HashMap<String, TenantRules>,
    /// The tenants that exist: a session of a tenant removed since (a marketplace the
    /// developer platform dropped) no longer works.
    known: std::collections::HashSet<String>,
    /// Machine clients' issuers and their verdicts.
    bearer: Arc<bearer::Issuers>,
}

impl Settings {
    /// From `config`; issuers that `previous` (the running settings) already has with
    /// the same settings are kept, with their fetched keys and verdicts.
    pub fn build(config: &Config, previous: Option<&Settings>) -> Settings {
        let bearer = match previous {
            Some(p) if *p.bearer.fingerprint() == bearer::fingerprint(config) => p.bearer.clone(),
            _ => Arc::new(bearer::Issuers::renewed(
                config,
                config.session.cache_ttl,
                previous.map(|p| &*p.bearer),
            )),
        };
        Settings {
            rules: tenant_rules(config),
            known: config.tenants.iter().map(|t| t.id.clone()).collect(),
            bearer,
        }
    }

    /// `tenant`'s rules, or the defaults for a tenant the config does not name.
    fn rules(&self, tenant: &str) -> TenantRules {
        self.rules.get(tenant).cloned().unwrap_or(TenantRules {
            name_order: NameOrder::GivenFamily,
            default_role: crate::config::defaults::DEFAULT_ROLE.into(),
        })
    }
}

/// Sessions of one deployment.
pub struct Sessions {
    store: Store,
    config: SessionConfig,
    cookie_name: String,
    secure: bool,
    fail_mode: FailMode,
    signer: Arc<Signer>,
    /// The running configuration: per-tenant rules, known tenants and bearer issuers
    /// are its [`Settings`]. A request is handed the snapshot its gateway loaded.
    snapshots: Arc<Snapshots>,
    live: Cache<[u8; 32], Arc<Live>>,
    users: Cache<(String, String), Arc<User>>,
    groups: Cache<(String, String), Arc<Group>>,
    healthy: AtomicBool,
    /// Bumped by every invalidation; per-thread front entries from an older generation
    /// are not used.
    generation: AtomicU64,
    /// Tells this instance's front entries from another's on the same thread (tests run
    /// several apps in one process).
    instance: u64,
    /// Maestrano's session re-check, for tenants that ask for it.
    recheck: std::sync::OnceLock<Arc<dyn RecheckHook>>,
    /// Sessions with connections that outlived their request (see [`watch`]).
    watches: Arc<WatchMap>,
    /// The runtime that [`Sessions::start`] ran on, for the watches' background work.
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
    /// Woken by every invalidation, for the bearer connections that watch a user.
    changed: tokio::sync::Notify,
}

/// How long a re-check may take before another one may start for the same session.
const RECHECK_IN_FLIGHT: i64 = 60;

/// Re-checks a session with the IdP that vouched for it (Maestrano), in the background:
/// the request that finds a re-check due is never held up by it.
pub trait RecheckHook: Send + Sync {
    /// A re-check of this session is due. `next` holds the session's next re-check
    /// time; the hook sets it from the answer (or ends the session).
    fn due(&self, hash: &str, record: &SessionRecord, next: Arc<AtomicI64>);
}

/// The identity headers for one session, as copied for one worker thread, with the
/// session to watch should the connection outlive its request.
pub type ThreadHeaders = Arc<Pass>;

/// What the gate needs to forward a request: the identity headers, copied for this
/// thread.
pub enum Gate {
    /// Forward with these headers.
    Forward(ThreadHeaders),
    /// No usable session.
    Missing,
    /// Revoked or blocked, with the reason.
    Revoked(RevokeReason),
    /// The store cannot vouch for the session.
    Unavailable,
    /// The identity cannot be sent as headers (the field named holds a control
    /// character): the request is refused, never forwarded under a stand-in.
    Unusable(&'static str),
}

/// A thread's copy of a valid session's outcome. The header values are copied per
/// thread so that forwarding never touches a reference count shared with another
/// worker (one session used from many connections would otherwise bounce that cache
/// line between cores on every request).
struct Front {
    instance: u64,
    generation: u64,
    until: std::time::Instant,
    live: Arc<Live>,
    jwt_expires_at: i64,
    /// The `Host` the session was last found to belong to (its tenant's host).
    host: Box<[u8]>,
    pass: ThreadHeaders,
}

thread_local! {
    /// Keyed by the cookie value itself, so the hot path does not hash it with SHA-256
    /// (only the store key needs that). The map's keyed SipHash leaves no useful timing
    /// signal about other cookies.
    static FRONT: std::cell::RefCell<FrontMap<Front>> =
        std::cell::RefCell::new(FrontMap::default());
}

/// Per-thread front entries kept at most.
const FRONT_CAPACITY: usize = 10_000;

/// Inserts between two sweeps of a thread's front map.
const FRONT_SWEEP_EVERY: u32 = 256;

/// A worker's front entries. Entries of sessions that ended, expired or were
/// invalidated are never looked up again, so without a sweep they would stay until the
/// map filled: a steady stream of logins grew every worker by megabytes a minute (the
/// soak's mixed traffic). Sweeping every [`FRONT_SWEEP_EVERY`] inserts keeps the map
/// near the sessions seen within one `cache_ttl`, at an amortised cost per insert.
struct FrontMap<V> {
    map: HashMap<Box<str>, V>,
    inserts: u32,
}

impl<V> Default for FrontMap<V> {
    fn default() -> Self {
        FrontMap {
            map: HashMap::new(),
            inserts: 0,
        }
    }
}

impl<V> FrontMap<V> {
    fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key)
    }

    /// Inserts `value`, first dropping every entry for which `usable` is false when a
    /// sweep is due or the map is full. Should the map still be full, it starts over:
    /// the entries are only a copy of the caches behind them.
    fn insert(&mut self, key: Box<str>, value: V, usable: impl Fn(&V) -> bool) {
        self.inserts = self.inserts.wrapping_add(1);
        if self.inserts.is_multiple_of(FRONT_SWEEP_EVERY) || self.map.len() >= FRONT_CAPACITY {
            self.map.retain(|_, v| usable(v));
            if self.map.len() >= FRONT_CAPACITY {
                self.map.clear();
            }
            if self.map.capacity() > 4 * self.map.len().max(64) {
                self.map.shrink_to_fit();
            }
        }
        self.map.insert(key, value);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// The cookie's name on the wire: `__Host-` prefixed when the public URL is https, so
/// that no subdomain or plain-http page can set or shadow it.
pub fn cookie_name(config: &Config) -> String {
    if config.server.is_https() {
        format!("__Host-{}", config.session.cookie_name)
    } else {
        config.session.cookie_name.clone()
    }
}

fn hash_cookie(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// The store key of the session a cookie value names (hex SHA-256): what
/// [`crate::store::SessionStore`] is keyed by, for tools and tests that inspect it.
pub fn store_key(cookie_value: &str) -> String {
    hex::encode(hash_cookie(cookie_value))
}

/// The value of cookie `name` in the request's `Cookie` header(s).
pub fn find_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    // Bytes, not `str`: this runs on every proxied request, and a cookie pair is
    // ASCII by definition (RFC 6265 §4.1.1), so only the value found needs checking.
    let name = name.as_bytes();
    headers.get_all(header::COOKIE).iter().find_map(|field| {
        field.as_bytes().split(|&b| b == b';').find_map(|pair| {
            let rest = pair.trim_ascii_start().strip_prefix(name)?;
            let value = rest.trim_ascii_start().strip_prefix(b"=")?;
            std::str::from_utf8(value.trim_ascii()).ok()
        })
    })
}

impl Sessions {
    /// Builds the session layer; call [`Sessions::start`] inside the runtime to begin
    /// listening for invalidations.
    pub fn new(
        config: &Config,
        store: Store,
        signer: Arc<Signer>,
        snapshots: Arc<Snapshots>,
    ) -> Sessions {
        let ttl = config.session.cache_ttl;
        fn cache<K, V>(cap: u64, ttl: Duration) -> Cache<K, V>
        where
            K: std::hash::Hash + Eq + Send + Sync + 'static,
            V: Clone + Send + Sync + 'static,
        {
            Cache::builder().max_capacity(cap).time_to_live(ttl).build()
        }
        Sessions {
            store,
            config: config.session.clone(),
            cookie_name: cookie_name(config),
            secure: config.server.is_https(),
            fail_mode: config.store.fail_mode,
            signer,
            snapshots,
            recheck: std::sync::OnceLock::new(),
            watches: Arc::default(),
            runtime: std::sync::OnceLock::new(),
            changed: tokio::sync::Notify::new(),
            live: cache(CACHE_CAPACITY, ttl),
            users: cache(CACHE_CAPACITY, ttl),
            groups: cache(CACHE_CAPACITY / 4, ttl),
            healthy: AtomicBool::new(true),
            generation: AtomicU64::new(0),
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The running snapshot, for a caller outside a request (a tool, a test) that asks
    /// [`Sessions::authenticate`] directly.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshots.load()
    }

    /// A session layer outside a running app, under `config`'s own snapshot: for tools
    /// and tests that create or end sessions in a shared store as another replica would.
    pub fn standalone(
        config: &Config,
        store: Store,
    ) -> Result<Sessions, crate::snapshot::BuildError> {
        let builder = crate::snapshot::Builder {
            directory: crate::directory::Directory::new(store.clone()),
            failures: crate::limits::Failures::new(),
            slots: crate::saml::metadata::Slots::new(config),
            ephemeral_key_ok: store.is_memory(),
        };
        let snapshots = Snapshots::new(builder.build(config, None)?);
        Ok(Sessions::new(
            config,
            store,
            Arc::new(Signer::new(&config.identity)),
            snapshots,
        ))
    }

    /// Starts the invalidation listener and the store health monitor.
    pub fn start(self: &Arc<Self>) {
        let _ = self.runtime.set(tokio::runtime::Handle::current());
        self.snapshots.load().sessions.bearer.start();
        let mut events = self.store.subscribe();
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let event = events.recv().await;
                let Some(this) = weak.upgrade() else { return };
                match event {
                    Ok(Event::Lost) => {
                        // Caches stay (fail mode "cached" serves from them); the flag
                        // is what the gate reads first, so "closed" answers 503 from
                        // now on rather than from the next failed health ping.
                        if this.healthy.swap(false, Ordering::Relaxed) {
                            tracing::warn!(fail_mode = ?this.fail_mode, "store unavailable: its event bus connection broke");
                        }
                        this.check_later(this.watched(Some(&Event::Lost)));
                    }
                    Ok(e) => {
                        this.invalidate(&e);
                        this.check_later(this.watched(Some(&e)));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "invalidations lagged; dropping all cached state"
                        );
                        this.invalidate(&Event::Resync);
                        this.check_later(this.watched(None));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        if self.store.is_memory() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEALTH_INTERVAL);
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                let ok = tokio::time::timeout(Duration::from_secs(1), this.store.ping())
                    .await
                    .is_ok_and(|r| r.is_ok())
                    && this.store.bus_connected();
                let was = this.healthy.swap(ok, Ordering::Relaxed);
                if was != ok {
                    if ok {
                        tracing::info!("store is back");
                    } else {
                        tracing::warn!(fail_mode = ?this.fail_mode, "store unavailable");
                    }
                }
            }
        });
    }

    fn invalidate(&self, event: &Event) {
        match event {
            Event::User { tenant, id } => self.users.invalidate(&(tenant.clone(), id.clone())),
            Event::Group { tenant, id } => self.groups.invalidate(&(tenant.clone(), id.clone())),
            Event::Session { hash } => {
                let mut key = [0u8; 32];
                if hex::decode_to_slice(hash, &mut key).is_ok() {
                    self.live.invalidate(&key);
                }
            }
            // Handled by the listener before it gets here: nothing cached is wrong.
            Event::Lost => return,
            Event::Resync => {
                // Sent when the bus (re)connects: the store is reachable again.
                self.healthy.store(true, Ordering::Relaxed);
                self.live.invalidate_all();
                self.users.invalidate_all();
                self.groups.invalidate_all();
            }
        }
        // Bumped after the shared caches are cleared, so a thread that sees the new
        // generation can only have read fresh entries.
        self.generation.fetch_add(1, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Whether the store is answering (and invalidations are arriving).
    pub fn store_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The cookie name on the wire.
    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    fn unhealthy(&self, e: &StoreError) {
        tracing::warn!(error = %e, "store request failed");
        self.healthy.store(false, Ordering::Relaxed);
    }

    /// Caches `value` only if no invalidation arrived since `generation` was read: a
    /// record fetched before an invalidation must not outlive it.
    fn cache_if_current<K, V>(&self, cache: &Cache<K, V>, generation: u64, key: K, value: V)
    where
        K: std::hash::Hash + Eq + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        if self.generation.load(Ordering::Acquire) == generation {
            cache.insert(key, value);
        }
    }

    async fn user(
        &self,
        key: &(String, String),
        may_fetch: bool,
        generation: u64,
    ) -> Result<Option<Arc<User>>, ()> {
        if let Some(u) = self.users.get(key) {
            return Ok(Some(u));
        }
        if !may_fetch {
            return Err(());
        }
        match self.store.get_user(&key.0, &key.1).await {
            Ok(Some(u)) => {
                let u = Arc::new(u);
                self.cache_if_current(&self.users, generation, key.clone(), u.clone());
                Ok(Some(u))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.unhealthy(&e);
                Err(())
            }
        }
    }

    async fn group(
        &self,
        key: &(String, String),
        may_fetch: bool,
        generation: u64,
    ) -> Result<Option<Arc<Group>>, ()> {
        if let Some(g) = self.groups.get(key) {
            return Ok(Some(g));
        }
        if !may_fetch {
            return Err(());
        }
        match self.store.get_group(&key.0, &key.1).await {
            Ok(Some(g)) => {
                let g = Arc::new(g);
                self.cache_if_current(&self.groups, generation, key.clone(), g.clone());
                Ok(Some(g))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.unhealthy(&e);
                Err(())
            }
        }
    }

    /// The access gate's question: may this request be forwarded, and with which
    /// identity headers? Answered from this thread's front entry when nothing has been
    /// invalidated since, else through [`Sessions::authenticate`]. `host` is the
    /// request's `Host` (or `:authority`), and `serves(host, tenant)` says whether that
    /// host resolves to the session's tenant: a session counts only on its own tenant.
    pub async fn gate(
        self: &Arc<Self>,
        snap: &Snapshot,
        headers: &HeaderMap,
        host: &[u8],
        serves: impl Fn(&str) -> bool + Sync,
    ) -> Gate {
        let Some(value) = find_cookie(headers, &self.cookie_name) else {
            return Gate::Missing;
        };
        if !self.store_healthy() && self.fail_mode == FailMode::Closed {
            return Gate::Unavailable;
        }
        let generation = self.generation.load(Ordering::Acquire);
        let fast = FRONT.with(|front| {
            let front = front.borrow();
            let entry = front.get(value)?;
            if entry.instance != self.instance
                || entry.generation != generation
                || entry.until <= std::time::Instant::now()
            {
                return None;
            }
            let now = now();
            if self.expired(&entry.live, now)
                || entry.jwt_expires_at - now <= snap.identity.ttl().as_secs() as i64 / 2
            {
                return None;
            }
            if *entry.host != *host && !serves(&entry.live.stored.record.tenant) {
                return Some(None);
            }
            self.renew(&entry.live, now);
            self.poke_recheck(&entry.live, now);
            Some(Some(entry.pass.clone()))
        });
        match fast {
            Some(Some(pass)) => return Gate::Forward(pass),
            Some(None) => return Gate::Missing,
            None => {}
        }
        // Boxed: the store round trips make this future large, and it is only taken
        // when this thread has no usable copy; unboxed, every request's future would
        // carry (and copy) its size.
        match Box::pin(self.authenticate_hashed(snap, hash_cookie(value), &serves)).await {
            AuthInner::Valid(auth, live) => {
                self.poke_recheck(&live, now());
                let copied: Box<[(http::HeaderName, HeaderValue)]> = auth
                    .headers
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        let v = HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone());
                        (n.clone(), v)
                    })
                    .collect();
                let pass = Arc::new(Pass {
                    headers: copied,
                    auth: auth.clone(),
                    watched: watch::Watched::Session {
                        live: live.clone(),
                        sessions: self.clone(),
                        generation,
                    },
                });
                FRONT.with(|front| {
                    let at = std::time::Instant::now();
                    let current = self.generation.load(Ordering::Acquire);
                    front.borrow_mut().insert(
                        value.into(),
                        Front {
                            instance: self.instance,
                            generation,
                            until: at + self.config.cache_ttl,
                            live,
                            jwt_expires_at: auth.headers.expires_at,
                            host: host.into(),
                            pass: pass.clone(),
                        },
                        // Another instance's entries (a test's second app) are judged
                        // by their time alone.
                        |e| {
                            e.until > at && (e.instance != self.instance || e.generation == current)
                        },
                    );
                });
                Gate::Forward(pass)
            }
            AuthInner::Missing => Gate::Missing,
            AuthInner::Revoked(r) => Gate::Revoked(r),
            AuthInner::Unavailable => Gate::Unavailable,
            AuthInner::Unusable(field) => Gate::Unusable(field),
        }
    }

    /// Lifetime or idle timeout passed. Times are whole seconds, so idle expiry is
    /// "more than idle_timeout since the last renewal": at most a second lenient, never
    /// early.
    fn expired(&self, live: &Live, now: i64) -> bool {
        let last_seen = live.last_touch.load(Ordering::Relaxed);
        now > live.stored.record.expires_at
            || now > last_seen + self.config.idle_timeout.as_secs() as i64
    }

    /// Resolves the request's session cookie. A session of a tenant for which `serves`
    /// is false counts as missing.
    pub async fn authenticate(
        &self,
        snap: &Snapshot,
        headers: &HeaderMap,
        serves: &(dyn Fn(&str) -> bool + Sync),
    ) -> Auth {
        let Some(value) = find_cookie(headers, &self.cookie_name) else {
            return Auth::Missing;
        };
        if !self.store_healthy() && self.fail_mode == FailMode::Closed {
            return Auth::Unavailable;
        }
        match self
            .authenticate_hashed(snap, hash_cookie(value), serves)
            .await
        {
            AuthInner::Valid(a, _) => Auth::Valid(a),
            AuthInner::Missing => Auth::Missing,
            AuthInner::Revoked(r) => Auth::Revoked(r),
            AuthInner::Unavailable => Auth::Unavailable,
            AuthInner::Unusable(field) => Auth::Unusable(field),
        }
    }

    async fn authenticate_hashed(
        &self,
        snap: &Snapshot,
        key: [u8; 32],
        serves: &(dyn Fn(&str) -> bool + Sync),
    ) -> AuthInner {
        let generation = self.generation.load(Ordering::Acquire);
        let healthy = self.store_healthy();
        // Only fetch from the store when it is believed up; otherwise (fail mode
        // "cached") serve what is cached and refuse the rest.
        let may_fetch = healthy;
        let live = match self.live.get(&key) {
            Some(l) => l,
            None => {
                if !may_fetch {
                    return AuthInner::Unavailable;
                }
                let hash = hex::encode(key);
                match self.store.get_session(&hash).await {
                    Ok(Some(stored)) => {
                        let rec = &stored.record;
                        let live = Arc::new(Live {
                            recheck_at: Arc::new(AtomicI64::new(
                                stored.record.mno.as_ref().map_or(i64::MAX, |m| m.recheck),
                            )),
                            last_touch: AtomicI64::new(stored.last_seen),
                            user_key: (rec.tenant.clone(), rec.user_id.clone()),
                            group_key: (rec.tenant.clone(), rec.group_id.clone()),
                            key,
                            hash,
                            stored,
                            identity: Mutex::new(None),
                        });
                        self.cache_if_current(&self.live, generation, key, live.clone());
                        live
                    }
                    Ok(None) => return AuthInner::Missing,
                    Err(e) => {
                        self.unhealthy(&e);
                        return AuthInner::Unavailable;
                    }
                }
            }
        };
        if !serves(&live.stored.record.tenant) {
            return AuthInner::Missing;
        }
        let now = now();
        let rec = &live.stored.record;
        if let Some(reason) = live.stored.revoked {
            return self
                .still_revoked(snap, &live, reason, now, may_fetch, generation)
                .await;
        }
        if self.expired(&live, now) || !snap.sessions.known.contains(&rec.tenant) {
            return AuthInner::Missing;
        }
        let user = match self.user(&live.user_key, may_fetch, generation).await {
            Ok(Some(u)) => u,
            Ok(None) => return AuthInner::Missing,
            Err(()) => return AuthInner::Unavailable,
        };
        let group = match self.group(&live.group_key, may_fetch, generation).await {
            Ok(Some(g)) => g,
            Ok(None) => return AuthInner::Missing,
            Err(()) => return AuthInner::Unavailable,
        };
        if let Some(reason) = blocked(&user, &group) {
            self.revoke(&live, reason);
            return AuthInner::Revoked(reason);
        }
        self.renew(&live, now);
        let cached = live
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|m| {
                m.epoch == snap.epoch
                    && m.user_version == user.version
                    && m.group_version == group.version
                    && m.auth.headers.expires_at - now > snap.identity.ttl().as_secs() as i64 / 2
            })
            .map(|m| m.auth.clone());
        if let Some(a) = cached {
            return AuthInner::Valid(a, live.clone());
        }
        let rules = snap.sessions.rules(&rec.tenant);
        let identity = Identity {
            user_id: user.id.clone(),
            group_id: group.id.clone(),
            tenant: rec.tenant.clone(),
            email: user.email.clone().unwrap_or_default(),
            given_name: user.given_name.clone().unwrap_or_default(),
            family_name: user.family_name.clone().unwrap_or_default(),
            display_name: user.display_name.clone().unwrap_or_default(),
            role: user
                .role_in(&group.id)
                .map_or_else(|| rules.default_role.clone(), str::to_owned),
            groups: Identity::group_list(
                &group.id,
                user.memberships.iter().map(|m| m.group_id.as_str()),
            ),
        };
        let headers = match self
            .signer
            .headers(&snap.identity, &identity, rules.name_order, now)
        {
            Ok(h) => h,
            Err(crate::identity::HeadersError::NotAHeaderValue(field)) => {
                return AuthInner::Unusable(field);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot sign identity");
                return AuthInner::Unavailable;
            }
        };
        let auth = Arc::new(Authenticated {
            record: rec.clone(),
            name: identity.display_name(rules.name_order),
            identity,
            headers,
        });
        *live.identity.lock().unwrap_or_else(|p| p.into_inner()) = Some(Signed {
            epoch: snap.epoch,
            user_version: user.version,
            group_version: group.version,
            auth: auth.clone(),
        });
        AuthInner::Valid(auth, live)
    }

    /// What a session revoked for `reason` amounts to now. While its user or group is
    /// blocked it answers 403, with the reason that holds now. Once both are active
    /// again (the user reactivated, the company restored, the membership back) it
    /// counts as ended, like a session that is gone: the browser goes to the login, not
    /// to a 403 that no longer holds (SPEC §10). Nothing is forwarded either way. The
    /// user and group come from the caches that every replica's invalidations clear,
    /// so a reactivation reaches every replica as fast as the deactivation did. When
    /// their status cannot be read, the 403 stands: never a guess that lets anyone in.
    async fn still_revoked(
        &self,
        snap: &Snapshot,
        live: &Live,
        reason: RevokeReason,
        now: i64,
        may_fetch: bool,
        generation: u64,
    ) -> AuthInner {
        if self.expired(live, now) || !snap.sessions.known.contains(&live.user_key.0) {
            return AuthInner::Missing;
        }
        let user = match self.user(&live.user_key, may_fetch, generation).await {
            Ok(Some(u)) => u,
            Ok(None) => return AuthInner::Missing,
            Err(()) => return AuthInner::Revoked(reason),
        };
        let group = match self.group(&live.group_key, may_fetch, generation).await {
            Ok(Some(g)) => g,
            Ok(None) => return AuthInner::Missing,
            Err(()) => return AuthInner::Revoked(reason),
        };
        // The reason the session was revoked for, while it holds: that is what
        // happened to it. Else whatever blocks the user now.
        if still_holds(reason, &user, &group) {
            return AuthInner::Revoked(reason);
        }
        match blocked(&user, &group) {
            Some(now_blocked) => AuthInner::Revoked(now_blocked),
            None => AuthInner::Missing,
        }
    }

    /// Marks a blocked session revoked in the store (once), so that it keeps answering
    /// 403 with its reason while the user or group stays blocked, until it would have
    /// expired (see [`Sessions::still_revoked`] for what it amounts to after that).
    fn revoke(&self, live: &Arc<Live>, reason: RevokeReason) {
        // idgate's own repair of a revocation that did not happen when the user or
        // group was blocked (so no request to name).
        let rec = &live.stored.record;
        audit::record(
            self.store.metrics(),
            &Origin::system(),
            audit::Event::SessionRevoked {
                tenant: &rec.tenant,
                user: &rec.user_id,
                session: &live.hash,
                reason: Some(reason),
            },
        );
        let hash = live.hash.clone();
        let store = self.store.clone();
        let mut key = [0u8; 32];
        let _ = hex::decode_to_slice(&hash, &mut key);
        self.live.invalidate(&key);
        self.generation.fetch_add(1, Ordering::Release);
        tokio::spawn(async move {
            if let Err(e) = store.revoke_session(&hash, reason).await {
                tracing::warn!(error = %e, "cannot mark session revoked");
            }
        });
    }

    /// A new snapshot replaced `old` (a reload, or Maestrano's developer platform):
    /// starts its new bearer issuers' key fetches, and makes every session and token be
    /// judged again under the new tenants, rules and keys at its next request. The
    /// caches of store records (sessions, users, groups) stay: a reload costs each
    /// session one re-signed identity per worker, not a store round trip. Sessions of
    /// tenants no longer in it stop working at their next request on this replica, and
    /// their open connections close.
    pub fn config_changed(self: &Arc<Self>, old: &Snapshot) {
        let new = self.snapshots.load();
        if self.runtime.get().is_some() {
            new.sessions.bearer.start();
        }
        // Per-thread passes and bearer verdicts were made under the old snapshot.
        self.generation.fetch_add(1, Ordering::Release);
        if new.sessions.known != old.sessions.known {
            self.check_later(self.watched(None));
        }
    }

    /// Installs the re-check (once, at startup).
    pub fn set_recheck(&self, hook: Arc<dyn RecheckHook>) {
        let _ = self.recheck.set(hook);
    }

    /// Starts the session's re-check when it is due: one atomic read on the hot path,
    /// and at most one re-check in flight per session on this replica.
    fn poke_recheck(&self, live: &Arc<Live>, now: i64) {
        let at = live.recheck_at.load(Ordering::Relaxed);
        if now < at {
            return;
        }
        let Some(hook) = self.recheck.get() else {
            return;
        };
        if live
            .recheck_at
            .compare_exchange(
                at,
                now + RECHECK_IN_FLIGHT,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            hook.due(&live.hash, &live.stored.record, live.recheck_at.clone());
        }
    }

    /// Sliding idle renewal, written to the store at most once per renewal interval per
    /// session and replica, off the request path.
    fn renew(&self, live: &Arc<Live>, now: i64) {
        let idle = self.config.idle_timeout.as_secs() as i64;
        let interval = (idle / 4).clamp(1, MAX_RENEW_INTERVAL);
        let last = live.last_touch.load(Ordering::Relaxed);
        if now - last < interval
            || live
                .last_touch
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let ttl = Duration::from_secs(idle.min(live.stored.record.expires_at - now).max(1) as u64);
        let store = self.store.clone();
        let hash = live.hash.clone();
        tokio::spawn(async move {
            if let Err(e) = store.touch_session(&hash, now, ttl).await {
                tracing::warn!(error = %e, "cannot renew session");
            }
        });
    }

    /// Creates a session for a login (a new id every time: no fixation). Refused with
    /// the reason while the user or group is blocked. Its audit line names no request:
    /// logins over HTTP go through [`Sessions::create_session_with`].
    pub async fn create_session(
        &self,
        tenant: &str,
        user_id: &str,
        group_id: &str,
    ) -> Result<NewSession, SessionError> {
        let by = Origin {
            actor: audit::Actor::User,
            request_id: None,
        };
        self.create_session_with(&by, tenant, user_id, group_id, Default::default())
            .await
    }

    /// [`Sessions::create_session`], keeping what the login knew besides the user (the
    /// Maestrano session, the SAML subject, the client). `by` is the login's request,
    /// for the audit line.
    pub async fn create_session_with(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        user_id: &str,
        group_id: &str,
        details: model::LoginDetails,
    ) -> Result<NewSession, SessionError> {
        let user = self
            .store
            .get_user(tenant, user_id)
            .await?
            .ok_or(SessionError::Unknown)?;
        let group = self
            .store
            .get_group(tenant, group_id)
            .await?
            .ok_or(SessionError::Unknown)?;
        if let Some(reason) = blocked(&user, &group) {
            return Err(SessionError::Refused(reason));
        }
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let now = now();
        let lifetime = self.config.max_lifetime.as_secs() as i64;
        let stored = StoredSession {
            record: SessionRecord {
                tenant: tenant.to_owned(),
                user_id: user_id.to_owned(),
                group_id: group_id.to_owned(),
                created_at: now,
                expires_at: now + lifetime,
                mno: details.mno,
                saml: details.saml,
                client: details.client.map(|ip| ip.to_canonical().to_string()),
                user_agent: details.user_agent.as_deref().map(model::stored_user_agent),
            },
            last_seen: now,
            revoked: None,
        };
        let ttl = self.config.idle_timeout.min(self.config.max_lifetime);
        self.store
            .put_session(&hex::encode(hash_cookie(&value)), &stored, ttl)
            .await?;
        audit::record(
            self.store.metrics(),
            by,
            audit::Event::Login {
                tenant,
                user: user_id,
                group: group_id,
            },
        );
        let set_cookie = self.cookie_header(&value, lifetime);
        Ok(NewSession {
            cookie_value: value,
            set_cookie,
        })
    }

    fn cookie_header(&self, value: &str, max_age: i64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
            self.cookie_name
        ))
        .expect("cookie names and base64url values are valid header text")
    }

    /// A `Set-Cookie` that removes the session cookie.
    pub fn clear_cookie(&self) -> HeaderValue {
        self.cookie_header("", 0)
    }

    /// Ends the request's session, if any, on every replica. Returns its record. A
    /// session of a tenant for which `serves` is false is not this request's to end.
    pub async fn logout(
        &self,
        by: &Origin<'_>,
        headers: &HeaderMap,
        serves: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Option<SessionRecord>, StoreError> {
        let Some(value) = find_cookie(headers, &self.cookie_name) else {
            return Ok(None);
        };
        let hash = hex::encode(hash_cookie(value));
        let Some(stored) = self.store.get_session(&hash).await? else {
            return Ok(None);
        };
        if !serves(&stored.record.tenant) {
            return Ok(None);
        }
        self.end(&hash, &stored.record).await?;
        audit::record(
            self.store.metrics(),
            by,
            audit::Event::Logout {
                tenant: &stored.record.tenant,
                user: &stored.record.user_id,
                session: &hash,
            },
        );
        Ok(Some(stored.record))
    }

    /// SAML Single Logout: ends, on every replica, every session of `tenant` made from
    /// an assertion about `name_id`, or only the one(s) with `session_index` when the
    /// IdP names one. Returns the records of the sessions ended (none: the IdP asked
    /// about a session this SP does not know, or no longer has).
    pub async fn end_saml_sessions(
        &self,
        by: &Origin<'_>,
        tenant: &str,
        name_id: &str,
        session_index: Option<&str>,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut ended = Vec::new();
        for (hash, stored) in self.store.saml_sessions(tenant, name_id).await? {
            let matches = stored.record.tenant == tenant
                && stored.record.saml.as_ref().is_some_and(|s| {
                    s.name_id == name_id
                        && session_index.is_none_or(|i| s.session_index.as_deref() == Some(i))
                });
            if matches {
                self.end(&hash, &stored.record).await?;
                audit::record(
                    self.store.metrics(),
                    by,
                    audit::Event::SingleLogout {
                        tenant,
                        user: &stored.record.user_id,
                        session: &hash,
                    },
                );
                ended.push(stored.record);
            }
        }
        Ok(ended)
    }

    /// The live sessions of a user, with their store keys (the admin API's session ids).
    pub async fn user_sessions(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Vec<(String, StoredSession)>, StoreError> {
        let mut live = self.store.user_sessions(tenant, user_id).await?;
        live.retain(|(_, s)| s.record.tenant == tenant && s.record.user_id == user_id);
        Ok(live)
    }

    /// Ends every session of a user on every replica, as a logout would (they are gone,
    /// not blocked: their cookies count as no session). Returns how many were ended.
    pub async fn end_user_sessions(
        &self,
        by: &audit::Origin<'_>,
        tenant: &str,
        user_id: &str,
    ) -> Result<usize, StoreError> {
        let live = self.user_sessions(tenant, user_id).await?;
        let n = live.len();
        for (hash, stored) in live {
            self.end(&hash, &stored.record).await?;
            audit::record(
                self.store.metrics(),
                by,
                audit::Event::SessionRevoked {
                    tenant,
                    user: user_id,
                    session: &hash,
                    reason: None,
                },
            );
        }
        Ok(n)
    }

    /// Ends the session stored under `hash` if it is one of `tenant`'s; false if there is
    /// no such session.
    pub async fn end_session(
        &self,
        by: &audit::Origin<'_>,
        tenant: &str,
        hash: &str,
    ) -> Result<bool, StoreError> {
        let is_key =
            hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !is_key {
            return Ok(false);
        }
        match self.store.get_session(hash).await? {
            Some(stored) if stored.record.tenant == tenant => {
                self.end(hash, &stored.record).await?;
                audit::record(
                    self.store.metrics(),
                    by,
                    audit::Event::SessionRevoked {
                        tenant,
                        user: &stored.record.user_id,
                        session: hash,
                        reason: None,
                    },
                );
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Deletes a session and tells every replica, through the same event that closes
    /// its open tunnels and streams: logout and Single Logout end a session alike.
    async fn end(&self, hash: &str, record: &SessionRecord) -> Result<(), StoreError> {
        self.store.delete_session(hash, record).await?;
        let mut key = [0u8; 32];
        if hex::decode_to_slice(hash, &mut key).is_ok() {
            self.live.invalidate(&key);
        }
        // This replica's per-thread entries stop at once, not when the event echoes back.
        self.generation.fetch_add(1, Ordering::Release);
        let event = Event::Session {
            hash: hash.to_owned(),
        };
        if let Err(e) = self.store.publish(&event).await {
            tracing::warn!(error = %e, "cannot publish logout; replicas catch up within cache_ttl");
        }
        Ok(())
    }
}

/// How each tenant's identities are composed.
fn tenant_rules(config: &Config) -> HashMap<String, TenantRules> {
    config
        .tenants
        .iter()
        .map(|t| {
            (
                t.id.clone(),
                TenantRules {
                    name_order: t
                        .scim
                        .as_ref()
                        .map_or(NameOrder::GivenFamily, |s| s.name_order),
                    default_role: t.provisioning.default_role.clone(),
                },
            )
        })
        .collect()
}

/// Whether `reason` still keeps this user out of this group.
fn still_holds(reason: RevokeReason, user: &User, group: &Group) -> bool {
    match reason {
        RevokeReason::AccountDeactivated => !user.active || user.deprovisioned,
        RevokeReason::CompanyCancelled => !group.active,
        RevokeReason::RemovedFromCompany => user.role_in(&group.id).is_none(),
    }
}

/// Why this user may not use this group, if they may not.
fn blocked(user: &User, group: &Group) -> Option<RevokeReason> {
    if !user.active || user.deprovisioned {
        Some(RevokeReason::AccountDeactivated)
    } else if !group.active {
        Some(RevokeReason::CompanyCancelled)
    } else if user.role_in(&group.id).is_none() {
        Some(RevokeReason::RemovedFromCompany)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_map_sweeps_entries_that_can_no_longer_be_used() {
        // (expires at, generation): what `Front` is judged by.
        let mut front = FrontMap::<(u32, u32)>::default();
        let mut clock = 0u32;
        let usable = |clock: u32| move |e: &(u32, u32)| e.0 > clock && e.1 == 0;
        // A steady stream of short-lived sessions, each seen once: the map holds
        // about the live ones, not every one ever seen.
        for i in 0..50_000u32 {
            clock = i;
            front.insert(i.to_string().into(), (clock + 100, 0), usable(clock));
            assert!(
                front.len() <= 100 + FRONT_SWEEP_EVERY as usize,
                "{}",
                front.len()
            );
        }
        assert!(front.get("49999").is_some());
        // Entries of an older generation are swept as well.
        for i in 0..FRONT_SWEEP_EVERY {
            front.insert(format!("g{i}").into(), (u32::MAX, 1), usable(clock));
        }
        assert!(front.len() < FRONT_SWEEP_EVERY as usize, "{}", front.len());
        // Live entries stay until the map is full, then it starts over.
        let mut front = FrontMap::<(u32, u32)>::default();
        for i in 0..FRONT_CAPACITY as u32 {
            front.insert(i.to_string().into(), (u32::MAX, 0), usable(0));
        }
        assert_eq!(front.len(), FRONT_CAPACITY);
        front.insert("last".into(), (u32::MAX, 0), usable(0));
        assert_eq!(front.len(), 1);
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; idgate_session_x=2"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("idgate_session=abc"),
        );
        assert_eq!(find_cookie(&h, "idgate_session"), Some("abc"));
        assert_eq!(find_cookie(&h, "b"), None);
    }

    #[test]
    fn blocking_reasons_are_checked_in_order() {
        let g = Group::new("g", "G", 0);
        let mut u = User::new("u", 0);
        assert_eq!(blocked(&u, &g), Some(RevokeReason::RemovedFromCompany));
        u.memberships.push(crate::directory::model::Membership {
            group_id: "g".into(),
            role: "member".into(),
        });
        assert_eq!(blocked(&u, &g), None);
        let mut cancelled = g.clone();
        cancelled.active = false;
        assert_eq!(
            blocked(&u, &cancelled),
            Some(RevokeReason::CompanyCancelled)
        );
        u.active = false;
        assert_eq!(
            blocked(&u, &cancelled),
            Some(RevokeReason::AccountDeactivated)
        );
        for reason in [
            RevokeReason::AccountDeactivated,
            RevokeReason::CompanyCancelled,
        ] {
            assert!(still_holds(reason, &u, &cancelled));
            assert!(!still_holds(
                reason,
                &{
                    let mut back = u.clone();
                    back.active = true;
                    back
                },
                &g
            ));
        }
        assert!(!still_holds(RevokeReason::RemovedFromCompany, &u, &g));
        assert!(still_holds(
            RevokeReason::RemovedFromCompany,
            &User::new("x", 0),
            &g
        ));
    }
}
