//! Persistence behind `[store].url`: the directory (groups, users, their indexes), the
//! sessions, and the event bus that carries invalidations to every replica.
//!
//! [`DirectoryStore`], [`SessionStore`] and [`EventBus`] are the contract; `tests/store.rs`
//! runs one conformance suite against every implementation. [`Store`] is the configured
//! backend, an enum inside rather than a trait object: there are exactly two backends
//! and static dispatch keeps the hot path free of boxing.

mod index;
mod memory;
mod redis;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast;

pub use self::index::{Index, Listing};
pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

use crate::config::{StoreConfig, StoreUrl};
use crate::directory::model::{Group, User};
use crate::metrics::{Metrics, StoreOp};
use crate::session::model::{RevokeReason, SessionRecord};

/// Errors from a store backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or answered with an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded (a bug or foreign data under our prefix).
    #[error("corrupt record {key}: {reason}")]
    Corrupt {
        /// The key (never a session id: those are hashes already).
        key: String,
        /// Decoder message.
        reason: String,
    },
}

/// Shorthand.
pub type StoreResult<T> = Result<T, StoreError>;

/// Outcome of [`DirectoryStore::create_user`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateUser {
    /// Stored, with its indexes.
    Created,
    /// A user with this id exists already.
    IdTaken,
    /// Another user (the id given) holds this userName.
    UserNameTaken(String),
    /// Another user (the id given) holds this externalId.
    ExternalIdTaken(String),
    /// Another user (the id given) logs in with this SAML user id.
    SubjectTaken(String),
}

/// Outcome of [`DirectoryStore::create_group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateGroup {
    /// Stored, with its indexes.
    Created,
    /// A group with this id exists already: here it is.
    Exists(Group),
    /// Another group (the id given) holds this externalId.
    ExternalIdTaken(String),
}

/// Outcome of [`DirectoryStore::replace_group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaceGroup {
    /// Stored, indexes moved.
    Replaced,
    /// The stored version is not the expected one (or the group is gone).
    Conflict,
    /// Another group (the id given) holds the new externalId.
    ExternalIdTaken(String),
}

/// Outcome of [`DirectoryStore::replace_user`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaceUser {
    /// Stored, indexes moved.
    Replaced,
    /// The stored version is not the expected one (or the user is gone): re-read, retry.
    Conflict,
    /// Another user (the id given) holds the new userName.
    UserNameTaken(String),
    /// Another user (the id given) holds the new externalId.
    ExternalIdTaken(String),
    /// Another user (the id given) logs in with the new SAML user id.
    SubjectTaken(String),
}

/// A unique index over users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKey {
    /// Email, case-insensitive. Answers only while exactly one user has claimed it.
    Email,
    /// SCIM userName, case-insensitive.
    UserName,
    /// SCIM externalId, exact.
    ExternalId,
    /// The SAML user id a user logs in as, exact.
    IdpSubject,
}

impl UserKey {
    /// The index that serves this key.
    pub fn index(self) -> Index {
        match self {
            UserKey::Email => Index::Email,
            UserKey::UserName => Index::UserName,
            UserKey::ExternalId => Index::ExternalId,
            UserKey::IdpSubject => Index::IdpSubject,
        }
    }
}

/// A session as stored: the immutable record plus the two fields that change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Who, where, until when.
    pub record: SessionRecord,
    /// Unix seconds of the last renewal (idle timeout counts from here).
    pub last_seen: i64,
    /// Set when the session was revoked, kept until it would have expired.
    pub revoked: Option<RevokeReason>,
}

/// A change every replica must hear about, to drop what it cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A user changed (deactivated, renamed, memberships…).
    User {
        /// Tenant id.
        tenant: String,
        /// User id.
        id: String,
    },
    /// A group changed (cancelled, renamed…).
    Group {
        /// Tenant id.
        tenant: String,
        /// Group id.
        id: String,
    },
    /// A session ended or was revoked (its store hash).
    Session {
        /// SHA-256 hex of the cookie value.
        hash: String,
    },
    /// Events may have been missed (the bus reconnected): drop everything cached.
    Resync,
    /// The bus connection broke. Revocations from other replicas can no longer arrive,
    /// and the store itself is most likely gone too: this is the earliest sign of an
    /// outage, well before a health ping would time out.
    Lost,
}

impl Event {
    /// Wire form: `u|tenant|id`, `g|tenant|id`, `s|hash`. The id goes last because it
    /// is the only part that may itself contain `|`.
    pub fn encode(&self) -> String {
        match self {
            Event::User { tenant, id } => format!("u|{tenant}|{id}"),
            Event::Group { tenant, id } => format!("g|{tenant}|{id}"),
            Event::Session { hash } => format!("s|{hash}"),
            Event::Resync => "r".into(),
            Event::Lost => "l".into(),
        }
    }

    /// Parses the wire form; unknown messages are ignored by the caller.
    pub fn decode(text: &str) -> Option<Event> {
        let mut parts = text.splitn(3, '|');
        match (parts.next()?, parts.next(), parts.next()) {
            ("u", Some(tenant), Some(id)) => Some(Event::User {
                tenant: tenant.into(),
                id: id.into(),
            }),
            ("g", Some(tenant), Some(id)) => Some(Event::Group {
                tenant: tenant.into(),
                id: id.into(),
            }),
            ("s", Some(hash), None) => Some(Event::Session { hash: hash.into() }),
            ("r", None, None) => Some(Event::Resync),
            ("l", None, None) => Some(Event::Lost),
            _ => None,
        }
    }
}

/// Groups, users and their unique indexes, per tenant. Every method is atomic.
pub trait DirectoryStore: Send + Sync {
    /// Creates the group unless one with its id exists; returns the existing one then.
    /// Of concurrent creates of one id, exactly one stores its record.
    fn create_group(
        &self,
        tenant: &str,
        group: &Group,
    ) -> impl Future<Output = StoreResult<CreateGroup>> + Send;
    /// Reads a group.
    fn get_group(
        &self,
        tenant: &str,
        id: &str,
    ) -> impl Future<Output = StoreResult<Option<Group>>> + Send;
    /// Replaces `old` by `new` (same id) if `old.version` is still stored, moving the
    /// indexes whose values changed.
    fn replace_group(
        &self,
        tenant: &str,
        old: &Group,
        new: &Group,
    ) -> impl Future<Output = StoreResult<ReplaceGroup>> + Send;
    /// Creates a user and claims its indexes (userName, externalId, email).
    fn create_user(
        &self,
        tenant: &str,
        user: &User,
    ) -> impl Future<Output = StoreResult<CreateUser>> + Send;
    /// Reads a user.
    fn get_user(
        &self,
        tenant: &str,
        id: &str,
    ) -> impl Future<Output = StoreResult<Option<User>>> + Send;
    /// Replaces `old` by `new` (same id) if `old.version` is still stored, moving the
    /// indexes whose values changed.
    fn replace_user(
        &self,
        tenant: &str,
        old: &User,
        new: &User,
    ) -> impl Future<Output = StoreResult<ReplaceUser>> + Send;
    /// Looks a user id up by a unique index.
    fn find_user(
        &self,
        tenant: &str,
        key: UserKey,
        value: &str,
    ) -> impl Future<Output = StoreResult<Option<String>>> + Send;
    /// Every id that `index` holds under `value`, in id order.
    fn find(
        &self,
        tenant: &str,
        index: Index,
        value: &str,
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;
    /// A page of a listing, in id order: ids `start..start + count` (0-based) and the
    /// listing's size.
    fn list(
        &self,
        tenant: &str,
        listing: Listing,
        start: usize,
        count: usize,
    ) -> impl Future<Output = StoreResult<(Vec<String>, usize)>> + Send;
    /// Up to `count` ids of a listing that sort after `after` (from the start when
    /// `None`), in id order: a page that a cursor (the last id seen) continues, read in
    /// one bounded range query whatever the listing's size.
    fn list_after(
        &self,
        tenant: &str,
        listing: Listing,
        after: Option<&str>,
        count: usize,
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;
    /// Reads several users in one round trip; missing ones are left out.
    fn get_users(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> impl Future<Output = StoreResult<Vec<User>>> + Send;
    /// Reads several groups in one round trip; missing ones are left out.
    fn get_groups(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> impl Future<Output = StoreResult<Vec<Group>>> + Send;
    /// The id of every user record of the tenant, deprovisioned ones included, in no
    /// particular order. Walks the whole store (SCAN on Redis): for maintenance that
    /// runs once, such as listing users stored before every user was listed, never for
    /// a request.
    fn user_ids(&self, tenant: &str) -> impl Future<Output = StoreResult<Vec<String>>> + Send;
}

/// Sessions, keyed by the SHA-256 hex of the cookie value.
pub trait SessionStore: Send + Sync {
    /// Stores a new session for `ttl` and adds it to its user's index.
    fn put_session(
        &self,
        hash: &str,
        session: &StoredSession,
        ttl: Duration,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Reads a session (None once expired or deleted).
    fn get_session(
        &self,
        hash: &str,
    ) -> impl Future<Output = StoreResult<Option<StoredSession>>> + Send;
    /// Sliding renewal: sets `last_seen` and a new TTL. False if the session is gone.
    fn touch_session(
        &self,
        hash: &str,
        last_seen: i64,
        ttl: Duration,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Replaces a live session's record (its Maestrano re-check time moved). False if
    /// the session is gone.
    fn set_session_record(
        &self,
        hash: &str,
        record: &SessionRecord,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Ends a session (logout).
    fn delete_session(
        &self,
        hash: &str,
        record: &SessionRecord,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Marks one session revoked with `reason`, keeping its TTL. False if it is gone
    /// or revoked already (it keeps its first reason).
    fn revoke_session(
        &self,
        hash: &str,
        reason: RevokeReason,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Marks every live session of a user revoked with `reason` (keeping each one's
    /// TTL), or only those made in `group` when one is given; returns their hashes.
    /// Sessions revoked already keep their first reason and are not returned.
    fn revoke_user_sessions(
        &self,
        tenant: &str,
        user_id: &str,
        reason: RevokeReason,
        group: Option<&str>,
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;
    /// The live sessions of a user, with their hashes, from the user's session index
    /// (entries whose session expired are dropped from it on the way).
    fn user_sessions(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> impl Future<Output = StoreResult<Vec<(String, StoredSession)>>> + Send;
    /// The live sessions made from assertions about this SAML NameID, with their hashes:
    /// what a Single Logout naming it must end. Sessions put with a `saml` subject are
    /// indexed by it until they expire or are deleted.
    fn saml_sessions(
        &self,
        tenant: &str,
        name_id: &str,
    ) -> impl Future<Output = StoreResult<Vec<(String, StoredSession)>>> + Send;
}

/// Short-lived values shared by every replica: pending login requests, the assertion
/// replay cache, leases (locks whose holder renews them, so that one that crashed holds
/// them only until they lapse).
pub trait EphemeralStore: Send + Sync {
    /// Stores `value` under `key` for `ttl` unless the key exists. True if stored: of
    /// concurrent calls with one key, exactly one wins (the replay check relies on it).
    fn put_once(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Reads and deletes `key` in one step: a value can be taken once.
    fn take(&self, key: &str) -> impl Future<Output = StoreResult<Option<String>>> + Send;
    /// Gives `key` a new `ttl` if it still holds `value` (a lease's holder token). False
    /// if it lapsed or is another's: a holder must not extend a lease it lost.
    fn renew(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Deletes `key` if it still holds `value`. False if it lapsed or is another's, which
    /// is then left alone.
    fn release(&self, key: &str, value: &str) -> impl Future<Output = StoreResult<bool>> + Send;
}

/// A job taken from a [`JobQueue`], to be acknowledged once done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Queue-assigned id (ordered by enqueue time).
    pub id: String,
    /// What to do, as the producer wrote it.
    pub body: String,
}

/// Durable work shared by every replica (a Redis Stream with one consumer group; in
/// process for `memory://`). A job is handed to one consumer at a time; a consumer that
/// stops touching its jobs (it died) loses them to the next claim after `stale_after`,
/// so nothing is lost and nothing runs twice at once.
pub trait JobQueue: Send + Sync {
    /// Appends a job; durable when this returns.
    fn enqueue(&self, queue: &str, body: &str) -> impl Future<Output = StoreResult<String>> + Send;
    /// Up to `max` jobs for `consumer`: first those left idle by others for longer than
    /// `stale_after`, then new ones.
    fn claim(
        &self,
        queue: &str,
        consumer: &str,
        max: usize,
        stale_after: Duration,
    ) -> impl Future<Output = StoreResult<Vec<Job>>> + Send;
    /// Marks jobs as still being worked on by `consumer` (resets their idle time), for
    /// those it still holds; returns the ids it no longer holds (another consumer took
    /// them over), which it must stop working on.
    fn keep(
        &self,
        queue: &str,
        consumer: &str,
        ids: &[String],
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;
    /// Completes a job: it is gone for good.
    fn ack(&self, queue: &str, id: &str) -> impl Future<Output = StoreResult<()>> + Send;
    /// The queue's backlog, for its metrics: bounded work whatever the queue's length
    /// (a length and the first entry, never a scan).
    fn stats(&self, queue: &str) -> impl Future<Output = StoreResult<QueueStats>> + Send;
}

/// What [`JobQueue::stats`] says of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Jobs not yet acknowledged: waiting, or held by a replica.
    pub depth: u64,
    /// When the oldest of them was enqueued (on Redis, by the Redis server's clock);
    /// none when there is none.
    pub oldest: Option<SystemTime>,
}

/// Small durable records that outlive sessions: recurring bill ids per company, Connec!
/// id mappings.
pub trait Records: Send + Sync {
    /// Reads a record.
    fn get_record(&self, key: &str) -> impl Future<Output = StoreResult<Option<String>>> + Send;
    /// Writes a record.
    fn set_record(&self, key: &str, value: &str) -> impl Future<Output = StoreResult<()>> + Send;
    /// Deletes a record.
    fn delete_record(&self, key: &str) -> impl Future<Output = StoreResult<()>> + Send;
}

/// Carries [`Event`]s to every replica.
pub trait EventBus: Send + Sync {
    /// Sends an event to every replica, this one included.
    fn publish(&self, event: &Event) -> impl Future<Output = StoreResult<()>> + Send;
    /// Receives events from now on.
    fn subscribe(&self) -> broadcast::Receiver<Event>;
}

/// The configured backend, and the metrics its calls are counted in: every call to
/// the backend goes through [`delegate!`] here, which times it and counts its failure,
/// so no caller can make an uncounted round trip.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    metrics: Arc<Metrics>,
}

#[derive(Clone)]
enum Backend {
    /// In-process store (one replica only).
    Memory(MemoryStore),
    /// Redis, standalone or Cluster.
    Redis(RedisStore),
}

impl Store {
    /// Creates the backend. Redis connects lazily, so idgate starts (and reports "not
    /// ready") while Redis is still coming up, rather than crash-looping.
    ///
    /// Its calls are counted in metrics of its own that nobody reads, until
    /// [`Store::with_metrics`] gives it the app's.
    pub fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let backend = match &config.url {
            StoreUrl::Memory => {
                tracing::warn!(
                    "store is memory://: state lives in this process only; run exactly one replica"
                );
                Backend::Memory(MemoryStore::new())
            }
            StoreUrl::Redis(url) => {
                if url.ends_with("#insecure") {
                    tracing::warn!(
                        "store TLS certificate is not verified (#insecure): use only on a network you trust"
                    );
                }
                Backend::Redis(RedisStore::standalone(
                    url,
                    &config.key_prefix,
                    config.ca_certificate.as_deref(),
                )?)
            }
            StoreUrl::Cluster(nodes) => Backend::Redis(RedisStore::cluster(
                nodes,
                &config.key_prefix,
                config.ca_certificate.as_deref(),
            )?),
        };
        Ok(Store {
            backend,
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// The same store, counting its calls in `metrics` (the app's, which `/metrics`
    /// serves). Set before the store is cloned into the components that use it: the
    /// clones keep the metrics they were made with.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Store {
        Store { metrics, ..self }
    }

    /// The metrics this store's calls are counted in: the app's, once
    /// [`Store::with_metrics`] has set them. `audit::record` counts lifecycle events
    /// in them too, so the code that changes who may use the app, which holds the store
    /// already, needs no other handle.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The span of one store call (`operation` is the method's name), or none outside a
    /// sampled request: background loops (a queue polled every second) do not each start
    /// a trace.
    fn span(&self, operation: &'static str) -> tracing::Span {
        crate::telemetry::span!(
            "idgate.store",
            otel.kind = "client",
            db.system.name = match self.backend {
                Backend::Memory(_) => "memory",
                Backend::Redis(_) => "redis",
            },
            db.operation.name = operation,
            error.type = tracing::field::Empty,
        )
    }

    fn counted<T>(&self, op: StoreOp, started: Instant, result: StoreResult<T>) -> StoreResult<T> {
        self.metrics
            .store_call(op, started.elapsed(), result.is_err());
        result
    }

    /// Whether the backend answers right now.
    pub async fn ping(&self) -> StoreResult<()> {
        let started = Instant::now();
        let result = match &self.backend {
            Backend::Memory(_) => Ok(()),
            Backend::Redis(r) => r.ping().await,
        };
        self.counted(StoreOp::Ping, started, result)
    }

    /// Whether invalidations from other replicas are being received (always true for the
    /// in-process store, which has no other replicas).
    pub fn bus_connected(&self) -> bool {
        match &self.backend {
            Backend::Memory(_) => true,
            Backend::Redis(r) => r.bus_connected(),
        }
    }

    /// True for the in-process store.
    pub fn is_memory(&self) -> bool {
        matches!(self.backend, Backend::Memory(_))
    }
}

/// The longest any one store call may take, reconnection included, before it counts
/// as a failure: SPEC §6 promises that no request waits longer than 2 s for a store that
/// does not answer, and a call that races a reconnect would otherwise wait for the
/// connection attempt and then for its own response timeout.
pub const CALL_DEADLINE: Duration = Duration::from_millis(1500);

/// Calls the backend, timed and counted as a call of kind `$op`, and traced as an
/// `idgate.store` span named after the method when it runs inside a traced request.
/// Timing costs two clock reads and a histogram update, against a round trip of a
/// hundred microseconds or more; the hot path makes no store call in the steady state
/// anyway.
macro_rules! delegate {
    ($self:ident, $op:ident, $s:ident => $recv:ident . $method:ident ( $($arg:expr),* $(,)? )) => {
        delegate!($self, $op, Some(CALL_DEADLINE), $s => $recv.$method($($arg),*))
    };
    ($self:ident, $op:ident, $deadline:expr, $s:ident => $recv:ident . $method:ident ( $($arg:expr),* $(,)? )) => {{
        let started = Instant::now();
        let span = $self.span(stringify!($method));
        let result = crate::telemetry::traced(
            async {
                match &$self.backend {
                    Backend::Memory($s) => $recv.$method($($arg),*).await,
                    Backend::Redis($s) => match $deadline {
                        Some(limit) => tokio::time::timeout(limit, $recv.$method($($arg),*))
                            .await
                            .unwrap_or_else(|_| Err(StoreError::Unavailable(format!(
                                "{} did not answer within {limit:?}",
                                stringify!($method)
                            )))),
                        None => $recv.$method($($arg),*).await,
                    },
                }
            },
            &span,
        )
        .await;
        if result.is_err() && !span.is_none() {
            span.record("error.type", "store_error");
        }
        $self.counted(StoreOp::$op, started, result)
    }};
}

impl DirectoryStore for Store {
    async fn create_group(&self, tenant: &str, group: &Group) -> StoreResult<CreateGroup> {
        delegate!(self, Directory, s => s.create_group(tenant, group))
    }
    async fn get_group(&self, tenant: &str, id: &str) -> StoreResult<Option<Group>> {
        delegate!(self, Directory, s => s.get_group(tenant, id))
    }
    async fn replace_group(
        &self,
        tenant: &str,
        old: &Group,
        new: &Group,
    ) -> StoreResult<ReplaceGroup> {
        delegate!(self, Directory, s => s.replace_group(tenant, old, new))
    }
    async fn create_user(&self, tenant: &str, user: &User) -> StoreResult<CreateUser> {
        delegate!(self, Directory, s => s.create_user(tenant, user))
    }
    async fn get_user(&self, tenant: &str, id: &str) -> StoreResult<Option<User>> {
        delegate!(self, Directory, s => s.get_user(tenant, id))
    }
    async fn replace_user(&self, tenant: &str, old: &User, new: &User) -> StoreResult<ReplaceUser> {
        delegate!(self, Directory, s => s.replace_user(tenant, old, new))
    }
    async fn find_user(
        &self,
        tenant: &str,
        key: UserKey,
        value: &str,
    ) -> StoreResult<Option<String>> {
        delegate!(self, Directory, s => s.find_user(tenant, key, value))
    }
    async fn find(&self, tenant: &str, index: Index, value: &str) -> StoreResult<Vec<String>> {
        delegate!(self, Directory, s => s.find(tenant, index, value))
    }
    async fn list(
        &self,
        tenant: &str,
        listing: Listing,
        start: usize,
        count: usize,
    ) -> StoreResult<(Vec<String>, usize)> {
        delegate!(self, Directory, s => s.list(tenant, listing, start, count))
    }
    async fn list_after(
        &self,
        tenant: &str,
        listing: Listing,
        after: Option<&str>,
        count: usize,
    ) -> StoreResult<Vec<String>> {
        delegate!(self, Directory, s => s.list_after(tenant, listing, after, count))
    }
    async fn get_users(&self, tenant: &str, ids: &[String]) -> StoreResult<Vec<User>> {
        delegate!(self, Directory, s => s.get_users(tenant, ids))
    }
    async fn get_groups(&self, tenant: &str, ids: &[String]) -> StoreResult<Vec<Group>> {
        delegate!(self, Directory, s => s.get_groups(tenant, ids))
    }
    async fn user_ids(&self, tenant: &str) -> StoreResult<Vec<String>> {
        // A listing walks the whole tenant with SCAN: each command has its own timeout,
        // the walk as a whole has none.
        delegate!(self, Directory, None::<Duration>, s => s.user_ids(tenant))
    }
}

impl SessionStore for Store {
    async fn put_session(
        &self,
        hash: &str,
        session: &StoredSession,
        ttl: Duration,
    ) -> StoreResult<()> {
        delegate!(self, Session, s => s.put_session(hash, session, ttl))
    }
    async fn get_session(&self, hash: &str) -> StoreResult<Option<StoredSession>> {
        delegate!(self, Session, s => s.get_session(hash))
    }
    async fn touch_session(&self, hash: &str, last_seen: i64, ttl: Duration) -> StoreResult<bool> {
        delegate!(self, Session, s => s.touch_session(hash, last_seen, ttl))
    }
    async fn delete_session(&self, hash: &str, record: &SessionRecord) -> StoreResult<()> {
        delegate!(self, Session, s => s.delete_session(hash, record))
    }
    async fn set_session_record(&self, hash: &str, record: &SessionRecord) -> StoreResult<bool> {
        delegate!(self, Session, s => s.set_session_record(hash, record))
    }
    async fn revoke_session(&self, hash: &str, reason: RevokeReason) -> StoreResult<bool> {
        delegate!(self, Session, s => s.revoke_session(hash, reason))
    }
    async fn revoke_user_sessions(
        &self,
        tenant: &str,
        user_id: &str,
        reason: RevokeReason,
        group: Option<&str>,
    ) -> StoreResult<Vec<String>> {
        delegate!(self, Session, s => s.revoke_user_sessions(tenant, user_id, reason, group))
    }
    async fn user_sessions(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> StoreResult<Vec<(String, StoredSession)>> {
        delegate!(self, Session, s => s.user_sessions(tenant, user_id))
    }
    async fn saml_sessions(
        &self,
        tenant: &str,
        name_id: &str,
    ) -> StoreResult<Vec<(String, StoredSession)>> {
        delegate!(self, Session, s => s.saml_sessions(tenant, name_id))
    }
}

impl EphemeralStore for Store {
    async fn put_once(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<bool> {
        delegate!(self, Ephemeral, s => s.put_once(key, value, ttl))
    }
    async fn take(&self, key: &str) -> StoreResult<Option<String>> {
        delegate!(self, Ephemeral, s => s.take(key))
    }
    async fn renew(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<bool> {
        delegate!(self, Ephemeral, s => s.renew(key, value, ttl))
    }
    async fn release(&self, key: &str, value: &str) -> StoreResult<bool> {
        delegate!(self, Ephemeral, s => s.release(key, value))
    }
}

impl JobQueue for Store {
    async fn enqueue(&self, queue: &str, body: &str) -> StoreResult<String> {
        delegate!(self, Queue, s => s.enqueue(queue, body))
    }
    async fn claim(
        &self,
        queue: &str,
        consumer: &str,
        max: usize,
        stale_after: Duration,
    ) -> StoreResult<Vec<Job>> {
        delegate!(self, Queue, s => s.claim(queue, consumer, max, stale_after))
    }
    async fn keep(&self, queue: &str, consumer: &str, ids: &[String]) -> StoreResult<Vec<String>> {
        delegate!(self, Queue, s => s.keep(queue, consumer, ids))
    }
    async fn ack(&self, queue: &str, id: &str) -> StoreResult<()> {
        delegate!(self, Queue, s => s.ack(queue, id))
    }
    async fn stats(&self, queue: &str) -> StoreResult<QueueStats> {
        delegate!(self, Queue, s => s.stats(queue))
    }
}

impl Records for Store {
    async fn get_record(&self, key: &str) -> StoreResult<Option<String>> {
        delegate!(self, Records, s => s.get_record(key))
    }
    async fn set_record(&self, key: &str, value: &str) -> StoreResult<()> {
        delegate!(self, Records, s => s.set_record(key, value))
    }
    async fn delete_record(&self, key: &str) -> StoreResult<()> {
        delegate!(self, Records, s => s.delete_record(key))
    }
}

impl EventBus for Store {
    async fn publish(&self, event: &Event) -> StoreResult<()> {
        delegate!(self, Publish, s => s.publish(event))
    }
    fn subscribe(&self) -> broadcast::Receiver<Event> {
        match &self.backend {
            Backend::Memory(s) => s.subscribe(),
            Backend::Redis(s) => s.subscribe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_ids_may_contain_the_separator() {
        for e in [
            Event::User {
                tenant: "acme".into(),
                id: "a|b".into(),
            },
            Event::Group {
                tenant: "acme".into(),
                id: "g-1".into(),
            },
            Event::Session {
                hash: "ab12".into(),
            },
            Event::Resync,
            Event::Lost,
        ] {
            assert_eq!(Event::decode(&e.encode()), Some(e));
        }
        assert_eq!(Event::decode("x|y"), None);
    }
}
