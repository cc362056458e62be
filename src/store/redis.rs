//! Redis backend: standalone (`redis://`, `rediss://`) through a self-reconnecting
//! `ConnectionManager`, or Cluster through `ClusterClient`.
//!
//! Key layout (`P` = `key_prefix`):
//! - `P:{tenant}:group:<id>`, `P:{tenant}:user:<id>`: JSON records;
//! - `P:{tenant}:idx:<logical key>`: indexes (see `store::index`): a string holding
//!   the id for unique ones (userName, externalId), a set of ids for the others (emails,
//!   display names, a group's members);
//! - `P:{tenant}:list:<users|groups>`: sorted sets (score 0, so in id order) of what
//!   SCIM lists;
//! - `P:{tenant}:usess:<user id>`: set of that user's session hashes;
//! - `P:{tenant}:nsess:<SAML NameID>`: set of the hashes of sessions made from
//!   assertions about that NameID (Single Logout finds them here);
//! - `P:sess:<sha256 hex>`: a session hash (`r` record, `t` last seen, `x` revoked);
//! - channel `P:events`: invalidations.
//!
//! Everything of one tenant shares the hash tag `{tenant}`, so the multi-key Lua scripts
//! are single-slot and run unchanged on a Cluster. No request path uses KEYS or SCAN.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use tokio::sync::{OnceCell, broadcast};

use super::index::{Entries, IndexOp};
use super::{
    CreateGroup, CreateUser, DirectoryStore, EphemeralStore, Event, EventBus, Index, Job, JobQueue,
    Listing, QueueStats, Records, ReplaceGroup, ReplaceUser, SessionStore, StoreError, StoreResult,
    StoredSession, UserKey,
};
use crate::directory::model::{Group, User};
use crate::session::model::{RevokeReason, SessionRecord};

/// Bound on any single Redis round trip, so a hung server fails fast instead of
/// stacking up requests.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between attempts to re-subscribe after the event connection drops.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(200);

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    // The cluster client has no lazy constructor; the cell connects on first use and
    // stays empty after a failure, so the next call retries.
    Cluster(Arc<(ClusterClient, OnceCell<ClusterConnection>)>),
}

/// A connection ready for one command.
enum Active {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Active {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Active::Standalone(c) => c.req_packed_command(cmd),
            Active::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Active::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Active::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Active::Standalone(c) => c.get_db(),
            Active::Cluster(c) => c.get_db(),
        }
    }
}

/// A Redis store handle; cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: Arc<str>,
    /// Where the event subscriber connects: the server, or each Cluster node in turn
    /// (a PUBLISH reaches every node of a Cluster).
    pubsub_urls: Arc<Vec<String>>,
    /// The private CA for `rediss://`, which the subscriber's connections need too.
    ca: Option<Arc<[u8]>>,
    events: broadcast::Sender<Event>,
    subscriber: Arc<OnceLock<()>>,
    bus_up: Arc<AtomicBool>,
}

/// Trust exactly `pem` (no client certificate), instead of the web PKI roots.
fn private_ca(pem: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    }
}

/// A client for `url`, verifying TLS against `ca` when one is given.
fn client(url: &str, ca: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    match ca {
        Some(pem) => redis::Client::build_with_tls(url, private_ca(pem)),
        None => redis::Client::open(url),
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, json: &str) -> StoreResult<T> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("records serialize")
}

// The one write path for users and groups: check the record's version (or its absence),
// check the unique keys, then store the record and apply every index op, atomically.
// KEYS: record, then one key per op. ARGV: expected version ('' = create), json, id,
// then one op code per index key (see `IndexOp::code`).
const WRITE_RECORD: &str = r"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if cur then return {'exists', cur} end
else
  if not cur then return {'conflict'} end
  if tostring(cjson.decode(cur)['version']) ~= ARGV[1] then return {'conflict'} end
end
local id = ARGV[3]
for i = 2, #KEYS do
  if ARGV[i + 2] == 'c' then
    local o = redis.call('GET', KEYS[i])
    if o and o ~= id then return {'taken', tostring(i - 1), o} end
  end
end
for i = 2, #KEYS do
  local op = ARGV[i + 2]
  if op == 'c' then redis.call('SET', KEYS[i], id)
  elseif op == 'r' then
    if redis.call('GET', KEYS[i]) == id then redis.call('DEL', KEYS[i]) end
  elseif op == 'a' then redis.call('SADD', KEYS[i], id)
  elseif op == 'd' then redis.call('SREM', KEYS[i], id)
  elseif op == 'z' then redis.call('ZADD', KEYS[i], 0, id)
  elseif op == 'y' then redis.call('ZREM', KEYS[i], id)
  end
end
redis.call('SET', KEYS[1], ARGV[2])
return {'ok'}
";

const TOUCH_SESSION: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 't', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

// ARGV: reason, and a group id ('' = any): a session made in another group is left
// alone (2), so leaving one company does not end the user's sessions in another. A
// session revoked already keeps its first reason (3): that is what happened to it.
const REVOKE_SESSION: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'x') == 1 then return 3 end
if ARGV[2] and ARGV[2] ~= '' then
  local r = redis.call('HGET', KEYS[1], 'r')
  if not r or cjson.decode(r)['group_id'] ~= ARGV[2] then return 2 end
end
redis.call('HSET', KEYS[1], 'x', ARGV[1])
return 1
";

// A lease is renewed or released only by the holder whose token it still holds.
// KEYS: the lease. ARGV: token, and a TTL in ms (renew) or nothing (release).
const LEASE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
";

// A session's record changes only while the session lives (never recreated by it).
const SET_IF_EXISTS: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'r', ARGV[1])
return 1
";

// Touches only the jobs this consumer still holds (a plain XCLAIM would take a job back
// from whoever took it over); returns the others.
// KEYS: stream. ARGV: group, consumer, ids…
const KEEP_JOBS: &str = r"
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 0 or p[1][2] ~= ARGV[2] then
    table.insert(lost, ARGV[i])
  else
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
return lost
";

struct Scripts {
    keep_jobs: Script,
    set_if_exists: Script,
    write_record: Script,
    touch_session: Script,
    revoke_session: Script,
    lease: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        keep_jobs: Script::new(KEEP_JOBS),
        set_if_exists: Script::new(SET_IF_EXISTS),
        write_record: Script::new(WRITE_RECORD),
        touch_session: Script::new(TOUCH_SESSION),
        revoke_session: Script::new(REVOKE_SESSION),
        lease: Script::new(LEASE),
    })
}

fn reason_from_code(code: &str) -> Option<RevokeReason> {
    [
        RevokeReason::AccountDeactivated,
        RevokeReason::CompanyCancelled,
        RevokeReason::RemovedFromCompany,
    ]
    .into_iter()
    .find(|r| r.code() == code)
}

impl RedisStore {
    fn new(conn: Conn, prefix: &str, pubsub_urls: Vec<String>, ca: Option<&[u8]>) -> RedisStore {
        let (events, _) = broadcast::channel(4096);
        RedisStore {
            conn,
            prefix: prefix.into(),
            pubsub_urls: Arc::new(pubsub_urls),
            ca: ca.map(Arc::from),
            events,
            subscriber: Arc::new(OnceLock::new()),
            bus_up: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A standalone server.
    pub fn standalone(url: &str, prefix: &str, ca: Option<&[u8]>) -> StoreResult<RedisStore> {
        let client = client(url, ca).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(Duration::from_millis(500))
            // A command that arrives while the connection is down waits for the
            // reconnection: with the default six retries that wait was 2.4 s. One quick
            // retry, and the health monitor's ping (every 500 ms) keeps trying after it.
            .set_number_of_retries(1);
        let manager =
            ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
        Ok(RedisStore::new(
            Conn::Standalone(manager),
            prefix,
            vec![url.to_owned()],
            ca,
        ))
    }

    /// A Cluster, from its seed nodes.
    pub fn cluster(nodes: &[String], prefix: &str, ca: Option<&[u8]>) -> StoreResult<RedisStore> {
        let mut builder = ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT);
        if let Some(pem) = ca {
            builder = builder.certs(private_ca(pem));
        }
        let client = builder.build().map_err(unavailable)?;
        Ok(RedisStore::new(
            Conn::Cluster(Arc::new((client, OnceCell::new()))),
            prefix,
            nodes.to_vec(),
            ca,
        ))
    }

    async fn active(&self) -> StoreResult<Active> {
        match &self.conn {
            Conn::Standalone(m) => Ok(Active::Standalone(m.clone())),
            Conn::Cluster(cell) => {
                let (client, conn) = &**cell;
                let conn = conn
                    .get_or_try_init(|| client.get_async_connection())
                    .await
                    .map_err(unavailable)?;
                Ok(Active::Cluster(conn.clone()))
            }
        }
    }

    /// Whether the event subscription is connected: while it is not, invalidations from
    /// other replicas may be missed.
    pub fn bus_connected(&self) -> bool {
        self.bus_up.load(Ordering::Relaxed)
    }

    /// `PING`.
    pub async fn ping(&self) -> StoreResult<()> {
        let reply: String = redis::cmd("PING")
            .query_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "unexpected PING reply {reply:?}"
            )))
        }
    }

    fn tkey(&self, tenant: &str, kind: &str, id: &str) -> String {
        format!("{}:{{{tenant}}}:{kind}:{id}", self.prefix)
    }

    fn idx_key(&self, tenant: &str, logical: &str) -> String {
        self.tkey(tenant, "idx", logical)
    }

    fn list_key(&self, tenant: &str, listing: Listing) -> String {
        self.tkey(tenant, "list", listing.key())
    }

    fn session_key(&self, hash: &str) -> String {
        format!("{}:sess:{hash}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> StoreResult<Option<T>> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        raw.map(|j| decode(key, &j)).transpose()
    }

    /// Runs [`WRITE_RECORD`]: `expected` None creates, Some(v) replaces version v.
    async fn write(
        &self,
        tenant: &str,
        record_key: String,
        expected: Option<u64>,
        json: String,
        id: &str,
        ops: &[IndexOp],
    ) -> StoreResult<Written> {
        let mut inv = scripts().write_record.key(record_key);
        for op in ops {
            inv.key(match op {
                IndexOp::List(l) | IndexOp::Unlist(l) => self.tkey(tenant, "list", l),
                other => self.idx_key(tenant, other.key()),
            });
        }
        inv.arg(expected.map(|v| v.to_string()).unwrap_or_default())
            .arg(json)
            .arg(id);
        for op in ops {
            inv.arg(op.code());
        }
        let reply: Vec<String> = inv
            .invoke_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        Ok(match reply.as_slice() {
            [ok] if ok == "ok" => Written::Ok,
            [c] if c == "conflict" => Written::Conflict,
            [e, cur] if e == "exists" => Written::Exists(cur.clone()),
            [t, at, holder] if t == "taken" => {
                let key = at
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| ops.get(i.wrapping_sub(1)))
                    .map(|op| op.key().to_owned())
                    .unwrap_or_default();
                Written::Taken(key, holder.clone())
            }
            other => return Err(unavailable(format!("unexpected script reply {other:?}"))),
        })
    }

    async fn mget<T: serde::de::DeserializeOwned>(
        &self,
        tenant: &str,
        kind: &str,
        ids: &[String],
    ) -> StoreResult<Vec<T>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.tkey(tenant, kind, id)).collect();
        // One slot (the tenant's hash tag), so MGET works on a Cluster too.
        let raw: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        keys.iter()
            .zip(raw)
            .filter_map(|(k, j)| j.map(|j| decode(k, &j)))
            .collect()
    }

    /// Whether a PING over the command connection answers within a second, trying a
    /// few times: the connection manager reconnects on demand.
    async fn commands_answer(&self) -> bool {
        for _ in 0..5 {
            if let Ok(Ok(())) = tokio::time::timeout(RESPONSE_TIMEOUT, self.ping()).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn spawn_subscriber(&self) {
        let store = self.clone();
        tokio::spawn(async move {
            let channel = store.channel();
            let mut attempt = 0usize;
            loop {
                let url = &store.pubsub_urls[attempt % store.pubsub_urls.len()];
                attempt += 1;
                let connected = async {
                    let client = client(url, store.ca.as_deref())?;
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                match tokio::time::timeout(CONNECT_TIMEOUT * 2, connected).await {
                    Ok(Ok(pubsub)) => {
                        // Resync drops every cache, to be refilled over the command
                        // connection: when that one has not reconnected yet, the
                        // refills fail, and under fail mode "cached" the very sessions
                        // that carried the outage would be refused as it ends.
                        if !store.commands_answer().await {
                            tracing::debug!("subscribed, but commands do not answer yet");
                            tokio::time::sleep(RESUBSCRIBE_DELAY).await;
                            continue;
                        }
                        store.bus_up.store(true, Ordering::Relaxed);
                        // Anything published while we were away is lost: start clean.
                        let _ = store.events.send(Event::Resync);
                        tracing::info!("subscribed to store events");
                        let mut messages = pubsub.into_on_message();
                        while let Some(msg) = messages.next().await {
                            let Ok(text) = msg.get_payload::<String>() else {
                                continue;
                            };
                            match Event::decode(&text) {
                                Some(e) => {
                                    let _ = store.events.send(e);
                                }
                                None => tracing::warn!("ignoring unknown store event"),
                            }
                        }
                        store.bus_up.store(false, Ordering::Relaxed);
                        let _ = store.events.send(Event::Lost);
                        tracing::warn!("store event subscription lost; reconnecting");
                    }
                    Ok(Err(e)) => {
                        store.bus_up.store(false, Ordering::Relaxed);
                        tracing::debug!(error = %e, "cannot subscribe to store events yet");
                    }
                    Err(_) => {
                        store.bus_up.store(false, Ordering::Relaxed);
                        tracing::debug!("subscribing to store events timed out");
                    }
                }
                if store.events.receiver_count() == 0 && Arc::strong_count(&store.bus_up) <= 1 {
                    return; // every handle is gone
                }
                tokio::time::sleep(RESUBSCRIBE_DELAY).await;
            }
        });
    }
}

impl DirectoryStore for RedisStore {
    async fn create_group(&self, tenant: &str, group: &Group) -> StoreResult<CreateGroup> {
        let key = self.tkey(tenant, "group", &group.id);
        let ops = Entries::of_group(group).plan_from(None);
        Ok(
            match self
                .write(tenant, key.clone(), None, encode(group), &group.id, &ops)
                .await?
            {
                Written::Ok => CreateGroup::Created,
                Written::Exists(cur) => CreateGroup::Exists(decode(&key, &cur)?),
                Written::Taken(_, holder) => CreateGroup::ExternalIdTaken(holder),
                Written::Conflict => return Err(unavailable("create reported a conflict")),
            },
        )
    }

    async fn get_group(&self, tenant: &str, id: &str) -> StoreResult<Option<Group>> {
        self.get_json(&self.tkey(tenant, "group", id)).await
    }

    async fn replace_group(
        &self,
        tenant: &str,
        old: &Group,
        new: &Group,
    ) -> StoreResult<ReplaceGroup> {
        let ops = Entries::of_group(new).plan_from(Some(&Entries::of_group(old)));
        let key = self.tkey(tenant, "group", &old.id);
        Ok(
            match self
                .write(tenant, key, Some(old.version), encode(new), &new.id, &ops)
                .await?
            {
                Written::Ok => ReplaceGroup::Replaced,
                Written::Conflict | Written::Exists(_) => ReplaceGroup::Conflict,
                Written::Taken(_, holder) => ReplaceGroup::ExternalIdTaken(holder),
            },
        )
    }

    async fn create_user(&self, tenant: &str, user: &User) -> StoreResult<CreateUser> {
        let ops = Entries::of_user(user).plan_from(None);
        let key = self.tkey(tenant, "user", &user.id);
        Ok(
            match self
                .write(tenant, key, None, encode(user), &user.id, &ops)
                .await?
            {
                Written::Ok => CreateUser::Created,
                Written::Exists(_) => CreateUser::IdTaken,
                Written::Taken(k, holder) if k.starts_with("n:") => {
                    CreateUser::UserNameTaken(holder)
                }
                Written::Taken(k, holder) if k.starts_with("sub:") => {
                    CreateUser::SubjectTaken(holder)
                }
                Written::Taken(_, holder) => CreateUser::ExternalIdTaken(holder),
                Written::Conflict => return Err(unavailable("create reported a conflict")),
            },
        )
    }

    async fn get_user(&self, tenant: &str, id: &str) -> StoreResult<Option<User>> {
        self.get_json(&self.tkey(tenant, "user", id)).await
    }

    async fn replace_user(&self, tenant: &str, old: &User, new: &User) -> StoreResult<ReplaceUser> {
        let ops = Entries::of_user(new).plan_from(Some(&Entries::of_user(old)));
        let key = self.tkey(tenant, "user", &old.id);
        Ok(
            match self
                .write(tenant, key, Some(old.version), encode(new), &new.id, &ops)
                .await?
            {
                Written::Ok => ReplaceUser::Replaced,
                Written::Conflict | Written::Exists(_) => ReplaceUser::Conflict,
                Written::Taken(k, holder) if k.starts_with("n:") => {
                    ReplaceUser::UserNameTaken(holder)
                }
                Written::Taken(k, holder) if k.starts_with("sub:") => {
                    ReplaceUser::SubjectTaken(holder)
                }
                Written::Taken(_, holder) => ReplaceUser::ExternalIdTaken(holder),
            },
        )
    }

    async fn find_user(
        &self,
        tenant: &str,
        key: UserKey,
        value: &str,
    ) -> StoreResult<Option<String>> {
        let found = self.find(tenant, key.index(), value).await?;
        // An email answers only while exactly one user holds it.
        Ok(match found.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        })
    }

    async fn find(&self, tenant: &str, index: Index, value: &str) -> StoreResult<Vec<String>> {
        let key = self.idx_key(tenant, &index.key(value));
        let mut conn = self.active().await?;
        if index.unique() {
            let id: Option<String> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(id.into_iter().collect())
        } else {
            let mut ids: Vec<String> = redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            ids.sort();
            Ok(ids)
        }
    }

    async fn list(
        &self,
        tenant: &str,
        listing: Listing,
        start: usize,
        count: usize,
    ) -> StoreResult<(Vec<String>, usize)> {
        let key = self.list_key(tenant, listing);
        let mut conn = self.active().await?;
        let total: usize = redis::cmd("ZCARD")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if count == 0 || start >= total {
            return Ok((Vec::new(), total));
        }
        // Every member has score 0, so the order is the members' byte order: stable,
        // and independent of when each was added.
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(start)
            .arg(start + count - 1)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok((ids, total))
    }

    async fn list_after(
        &self,
        tenant: &str,
        listing: Listing,
        after: Option<&str>,
        count: usize,
    ) -> StoreResult<Vec<String>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        // Every member has score 0, so a lexical range continues exactly after the
        // cursor: O(log n + count) on one key (one slot on a Cluster, by the tenant's
        // hash tag), however large the listing.
        let from = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        redis::cmd("ZRANGEBYLEX")
            .arg(self.list_key(tenant, listing))
            .arg(from)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(count)
            .query_async(&mut self.active().await?)
            .await
            .map_err(unavailable)
    }

    async fn get_users(&self, tenant: &str, ids: &[String]) -> StoreResult<Vec<User>> {
        self.mget(tenant, "user", ids).await
    }

    async fn get_groups(&self, tenant: &str, ids: &[String]) -> StoreResult<Vec<Group>> {
        self.mget(tenant, "group", ids).await
    }

    async fn user_ids(&self, tenant: &str) -> StoreResult<Vec<String>> {
        let prefix = self.tkey(tenant, "user", "");
        let pattern = format!("{}*", glob_escape(&prefix));
        let mut conn = self.active().await?;
        let mut ids = Vec::new();
        let mut cursor = "0".to_owned();
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(&cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (String, Vec<String>) = match &mut conn {
                Active::Standalone(c) => scan.query_async(c).await.map_err(unavailable)?,
                // A tenant's keys share its hash tag, so they all live on the node
                // that serves that slot: the scan goes there, not to a random node.
                Active::Cluster(c) => {
                    use redis::cluster_routing::{
                        Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
                    };
                    let route = Route::with_key(prefix.as_bytes(), SlotAddr::Master);
                    let value = c
                        .route_command(
                            scan,
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                        )
                        .await
                        .map_err(unavailable)?;
                    redis::from_redis_value(value).map_err(unavailable)?
                }
            };
            ids.extend(
                keys.iter()
                    .filter_map(|k| k.strip_prefix(&prefix))
                    .map(str::to_owned),
            );
            if next == "0" {
                return Ok(ids);
            }
            cursor = next;
        }
    }
}

/// `value` as a SCAN pattern that matches exactly it.
fn glob_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What [`WRITE_RECORD`] did.
enum Written {
    Ok,
    Conflict,
    /// Create found a record; its JSON.
    Exists(String),
    /// The unique key (logical) is held by the id given.
    Taken(String, String),
}

fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

impl SessionStore for RedisStore {
    async fn put_session(&self, hash: &str, s: &StoredSession, ttl: Duration) -> StoreResult<()> {
        let key = self.session_key(hash);
        let mut conn = self.active().await?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &key,
                &[("r", encode(&s.record)), ("t", s.last_seen.to_string())],
            )
            .ignore();
        if let Some(reason) = s.revoked {
            pipe.hset(&key, "x", reason.code()).ignore();
        }
        pipe.pexpire(&key, ttl_ms(ttl) as i64).ignore();
        let _: () = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        // The user's index lives in the tenant's slot, so it is a second call. A crash in
        // between leaves an index entry for a session that never existed: harmless, and
        // it expires with the index.
        // The NameID index shares the tenant's hash tag, so both go in one pipeline to
        // one slot. Each index lives as long as its longest-lived session (GT extends,
        // NX sets the first time), so it never outlives what it points at by more than a
        // session's lifetime.
        let lifetime = (s.record.expires_at - s.record.created_at).max(1);
        let mut indexes = vec![self.tkey(&s.record.tenant, "usess", &s.record.user_id)];
        if let Some(saml) = &s.record.saml {
            indexes.push(self.tkey(&s.record.tenant, "nsess", &saml.name_id));
        }
        let mut pipe = redis::pipe();
        for index in &indexes {
            pipe.sadd(index, hash)
                .ignore()
                .cmd("EXPIRE")
                .arg(index)
                .arg(lifetime)
                .arg("GT")
                .ignore()
                .cmd("EXPIRE")
                .arg(index)
                .arg(lifetime)
                .arg("NX")
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(())
    }

    async fn get_session(&self, hash: &str) -> StoreResult<Option<StoredSession>> {
        let key = self.session_key(hash);
        let (record, last_seen, revoked): (Option<String>, Option<i64>, Option<String>) =
            redis::cmd("HMGET")
                .arg(&key)
                .arg("r")
                .arg("t")
                .arg("x")
                .query_async(&mut self.active().await?)
                .await
                .map_err(unavailable)?;
        let Some(record) = record else {
            return Ok(None);
        };
        Ok(Some(StoredSession {
            record: decode(&format!("{}:sess:<hash>", self.prefix), &record)?,
            last_seen: last_seen.unwrap_or(0),
            revoked: revoked.as_deref().and_then(reason_from_code),
        }))
    }

    async fn touch_session(&self, hash: &str, last_seen: i64, ttl: Duration) -> StoreResult<bool> {
        let done: i64 = scripts()
            .touch_session
            .key(self.session_key(hash))
            .arg(last_seen)
            .arg(ttl_ms(ttl))
            .invoke_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        Ok(done == 1)
    }

    async fn delete_session(&self, hash: &str, record: &SessionRecord) -> StoreResult<()> {
        let mut conn = self.active().await?;
        let _: () = redis::cmd("DEL")
            .arg(self.session_key(hash))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut pipe = redis::pipe();
        pipe.srem(self.tkey(&record.tenant, "usess", &record.user_id), hash)
            .ignore();
        if let Some(saml) = &record.saml {
            pipe.srem(self.tkey(&record.tenant, "nsess", &saml.name_id), hash)
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(())
    }

    async fn set_session_record(&self, hash: &str, record: &SessionRecord) -> StoreResult<bool> {
        let done: i64 = scripts()
            .set_if_exists
            .key(self.session_key(hash))
            .arg(encode(record))
            .invoke_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        Ok(done == 1)
    }

    async fn revoke_session(&self, hash: &str, reason: RevokeReason) -> StoreResult<bool> {
        let done: i64 = scripts()
            .revoke_session
            .key(self.session_key(hash))
            .arg(reason.code())
            .invoke_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        Ok(done == 1)
    }

    async fn revoke_user_sessions(
        &self,
        tenant: &str,
        user_id: &str,
        reason: RevokeReason,
        group: Option<&str>,
    ) -> StoreResult<Vec<String>> {
        let mut conn = self.active().await?;
        let index = self.tkey(tenant, "usess", user_id);
        let hashes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&index)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut revoked = Vec::new();
        let mut gone = Vec::new();
        for h in hashes {
            let done: i64 = scripts()
                .revoke_session
                .key(self.session_key(&h))
                .arg(reason.code())
                .arg(group.unwrap_or(""))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            match done {
                1 => revoked.push(h),
                0 => gone.push(h),
                _ => {}
            }
        }
        if !gone.is_empty() {
            let _: () = redis::cmd("SREM")
                .arg(&index)
                .arg(&gone)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        Ok(revoked)
    }

    async fn user_sessions(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> StoreResult<Vec<(String, StoredSession)>> {
        self.indexed_sessions(self.tkey(tenant, "usess", user_id))
            .await
    }

    async fn saml_sessions(
        &self,
        tenant: &str,
        name_id: &str,
    ) -> StoreResult<Vec<(String, StoredSession)>> {
        self.indexed_sessions(self.tkey(tenant, "nsess", name_id))
            .await
    }
}

impl RedisStore {
    /// The live sessions a session index (a user's, a NameID's) names, in hash order;
    /// the entries of sessions that expired are dropped from it on the way.
    async fn indexed_sessions(&self, index: String) -> StoreResult<Vec<(String, StoredSession)>> {
        let mut hashes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&index)
            .query_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        hashes.sort();
        let mut live = Vec::new();
        let mut gone = Vec::new();
        // Sessions live in their own slots (keyed by hash alone), so each is read on
        // its own; an index holds a handful of sessions at most.
        for h in hashes {
            match self.get_session(&h).await? {
                Some(s) => live.push((h, s)),
                None => gone.push(h),
            }
        }
        if !gone.is_empty() {
            let _: () = redis::cmd("SREM")
                .arg(&index)
                .arg(&gone)
                .query_async(&mut self.active().await?)
                .await
                .map_err(unavailable)?;
        }
        Ok(live)
    }
}

impl EphemeralStore for RedisStore {
    async fn put_once(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<bool> {
        let stored: Option<String> = redis::cmd("SET")
            .arg(format!("{}:eph:{key}", self.prefix))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl))
            .query_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        Ok(stored.is_some())
    }

    async fn take(&self, key: &str) -> StoreResult<Option<String>> {
        redis::cmd("GETDEL")
            .arg(format!("{}:eph:{key}", self.prefix))
            .query_async(&mut self.active().await?)
            .await
            .map_err(unavailable)
    }

    async fn renew(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<bool> {
        self.lease(key, value, Some(ttl)).await
    }

    async fn release(&self, key: &str, value: &str) -> StoreResult<bool> {
        self.lease(key, value, None).await
    }
}

impl RedisStore {
    /// The lease script on `key` held with `value`: renewed for `ttl`, or released
    /// without one. True when `value` still held it.
    async fn lease(&self, key: &str, value: &str, ttl: Option<Duration>) -> StoreResult<bool> {
        let script = &scripts().lease;
        let mut call = script.key(format!("{}:eph:{key}", self.prefix));
        call.arg(value);
        if let Some(ttl) = ttl {
            call.arg(ttl_ms(ttl));
        }
        let n: i64 = call
            .invoke_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        Ok(n == 1)
    }
}

/// The consumer group every replica reads job streams through.
const JOB_GROUP: &str = "idgate";

/// Stream entries (`[[id, [field, value, …]], …]`) as jobs; entries whose data are gone
/// (deleted meanwhile) are skipped.
fn stream_entries(v: &Value) -> Vec<Job> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let id: String = redis::from_redis_value(parts.first()?.clone()).ok()?;
            let Value::Array(fields) = parts.get(1)? else {
                return None;
            };
            let body: String = redis::from_redis_value(fields.get(1)?.clone()).ok()?;
            Some(Job { id, body })
        })
        .collect()
}

impl RedisStore {
    fn queue_key(&self, queue: &str) -> String {
        format!("{}:q:{queue}", self.prefix)
    }

    /// Runs `cmd`; when the stream or its group does not exist yet, makes both (from the
    /// stream's start, so jobs enqueued before any consumer are not skipped) and retries.
    async fn with_group(&self, key: &str, cmd: &Cmd) -> StoreResult<Value> {
        let mut conn = self.active().await?;
        match cmd.query_async::<Value>(&mut conn).await {
            Err(e) if e.to_string().contains("NOGROUP") => {
                let made: redis::RedisResult<()> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(key)
                    .arg(JOB_GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = made
                    && !e.to_string().contains("BUSYGROUP")
                {
                    return Err(unavailable(e));
                }
                cmd.query_async(&mut conn).await.map_err(unavailable)
            }
            other => other.map_err(unavailable),
        }
    }
}

impl JobQueue for RedisStore {
    async fn enqueue(&self, queue: &str, body: &str) -> StoreResult<String> {
        redis::cmd("XADD")
            .arg(self.queue_key(queue))
            .arg("*")
            .arg("b")
            .arg(body)
            .query_async(&mut self.active().await?)
            .await
            .map_err(unavailable)
    }

    async fn claim(
        &self,
        queue: &str,
        consumer: &str,
        max: usize,
        stale_after: Duration,
    ) -> StoreResult<Vec<Job>> {
        let key = self.queue_key(queue);
        let mut auto = redis::cmd("XAUTOCLAIM");
        auto.arg(&key)
            .arg(JOB_GROUP)
            .arg(consumer)
            .arg(stale_after.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(max.max(1));
        let reply = self.with_group(&key, &auto).await?;
        let mut jobs = match &reply {
            Value::Array(parts) => parts.get(1).map(stream_entries).unwrap_or_default(),
            _ => Vec::new(),
        };
        if jobs.len() < max {
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(JOB_GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(max - jobs.len())
                .arg("STREAMS")
                .arg(&key)
                .arg(">");
            if let Value::Array(streams) = self.with_group(&key, &read).await? {
                for stream in streams {
                    if let Value::Array(kv) = stream
                        && let Some(entries) = kv.get(1)
                    {
                        jobs.extend(stream_entries(entries));
                    }
                }
            }
        }
        Ok(jobs)
    }

    async fn keep(&self, queue: &str, consumer: &str, ids: &[String]) -> StoreResult<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = scripts().keep_jobs.key(self.queue_key(queue));
        inv.arg(JOB_GROUP).arg(consumer);
        for id in ids {
            inv.arg(id);
        }
        inv.invoke_async(&mut self.active().await?)
            .await
            .map_err(unavailable)
    }

    async fn ack(&self, queue: &str, id: &str) -> StoreResult<()> {
        let key = self.queue_key(queue);
        let mut conn = self.active().await?;
        let _: () = redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(&key)
            .arg(JOB_GROUP)
            .arg(id)
            .ignore()
            .cmd("XDEL")
            .arg(&key)
            .arg(id)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn stats(&self, queue: &str) -> StoreResult<QueueStats> {
        // Acknowledged jobs are deleted from the stream, so its length is the backlog
        // and its first entry the oldest job; the entry id starts with the Redis
        // server's clock at XADD, in milliseconds. Both keys are one, so this pipeline
        // goes to one node on a Cluster.
        let key = self.queue_key(queue);
        let (depth, first): (u64, Value) = redis::pipe()
            .cmd("XLEN")
            .arg(&key)
            .cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        let oldest = stream_entries(&first).first().and_then(|job| {
            let ms: u64 = job.id.split_once('-')?.0.parse().ok()?;
            Some(std::time::UNIX_EPOCH + Duration::from_millis(ms))
        });
        Ok(QueueStats { depth, oldest })
    }
}

impl Records for RedisStore {
    async fn get_record(&self, key: &str) -> StoreResult<Option<String>> {
        redis::cmd("GET")
            .arg(format!("{}:rec:{key}", self.prefix))
            .query_async(&mut self.active().await?)
            .await
            .map_err(unavailable)
    }
    async fn set_record(&self, key: &str, value: &str) -> StoreResult<()> {
        redis::cmd("SET")
            .arg(format!("{}:rec:{key}", self.prefix))
            .arg(value)
            .query_async(&mut self.active().await?)
            .await
            .map_err(unavailable)
    }
    async fn delete_record(&self, key: &str) -> StoreResult<()> {
        redis::cmd("DEL")
            .arg(format!("{}:rec:{key}", self.prefix))
            .query_async::<i64>(&mut self.active().await?)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

impl EventBus for RedisStore {
    async fn publish(&self, event: &Event) -> StoreResult<()> {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.channel())
            .arg(event.encode())
            .query_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        let receiver = self.events.subscribe();
        if self.subscriber.set(()).is_ok() {
            self.spawn_subscriber();
        }
        receiver
    }
}
