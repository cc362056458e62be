//! Redis backend: standalone (`redis://`, `rediss://`) through a self-reconnecting
//! `ConnectionManager`, or Cluster through `ClusterClient`.
//!
//! Key layout (`P` = `key_prefix`):
//! - `P:{tenant}:group:<id>`, `P:{tenant}:user:<id>`: JSON records;
//! - `P:{tenant}:idx:<e|n|x>:<value>`: unique indexes (email, userName, externalId) →
//!   user id, `!` for an email claimed by several users;
//! - `P:{tenant}:usess:<user id>`: set of that user's session hashes;
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

use super::{
    CreateUser, DirectoryStore, EphemeralStore, Event, EventBus, ReplaceUser, SessionStore,
    StoreError, StoreResult, StoredSession, UserKey,
};
use crate::directory::model::{Group, User, index_key};
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
    events: broadcast::Sender<Event>,
    subscriber: Arc<OnceLock<()>>,
    bus_up: Arc<AtomicBool>,
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

fn flag(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

const CREATE_GROUP: &str = r"
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
redis.call('SET', KEYS[1], ARGV[1])
return false
";

const REPLACE_IF_VERSION: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
if tostring(cjson.decode(cur)['version']) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
";

// KEYS: user, userName idx, externalId idx, email idx
// ARGV: json, id, has userName, has externalId, has email
const CREATE_USER: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {'id'} end
if ARGV[3] == '1' then
  local o = redis.call('GET', KEYS[2])
  if o and o ~= ARGV[2] then return {'name', o} end
end
if ARGV[4] == '1' then
  local o = redis.call('GET', KEYS[3])
  if o and o ~= ARGV[2] then return {'ext', o} end
end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[3] == '1' then redis.call('SET', KEYS[2], ARGV[2]) end
if ARGV[4] == '1' then redis.call('SET', KEYS[3], ARGV[2]) end
if ARGV[5] == '1' then
  local o = redis.call('GET', KEYS[4])
  if not o then redis.call('SET', KEYS[4], ARGV[2])
  elseif o ~= ARGV[2] then redis.call('SET', KEYS[4], '!') end
end
return {'ok'}
";

// KEYS: user, new name, new ext, new email, old name, old ext, old email
// ARGV: expected version, json, id, then six presence flags for KEYS[2..7]
const REPLACE_USER: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return {'conflict'} end
if tostring(cjson.decode(cur)['version']) ~= ARGV[1] then return {'conflict'} end
local id = ARGV[3]
if ARGV[4] == '1' then
  local o = redis.call('GET', KEYS[2])
  if o and o ~= id then return {'name', o} end
end
if ARGV[5] == '1' then
  local o = redis.call('GET', KEYS[3])
  if o and o ~= id then return {'ext', o} end
end
for i = 5, 7 do
  if ARGV[i + 2] == '1' and (ARGV[i - 1] ~= '1' or KEYS[i] ~= KEYS[i - 3]) then
    if redis.call('GET', KEYS[i]) == id then redis.call('DEL', KEYS[i]) end
  end
end
if ARGV[4] == '1' then redis.call('SET', KEYS[2], id) end
if ARGV[5] == '1' then redis.call('SET', KEYS[3], id) end
if ARGV[6] == '1' then
  local o = redis.call('GET', KEYS[4])
  if not o then redis.call('SET', KEYS[4], id)
  elseif o ~= id then redis.call('SET', KEYS[4], '!') end
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

const REVOKE_SESSION: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'x', ARGV[1])
return 1
";

struct Scripts {
    create_group: Script,
    replace_if_version: Script,
    create_user: Script,
    replace_user: Script,
    touch_session: Script,
    revoke_session: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        create_group: Script::new(CREATE_GROUP),
        replace_if_version: Script::new(REPLACE_IF_VERSION),
        create_user: Script::new(CREATE_USER),
        replace_user: Script::new(REPLACE_USER),
        touch_session: Script::new(TOUCH_SESSION),
        revoke_session: Script::new(REVOKE_SESSION),
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
    fn new(conn: Conn, prefix: &str, pubsub_urls: Vec<String>) -> RedisStore {
        let (events, _) = broadcast::channel(4096);
        RedisStore {
            conn,
            prefix: prefix.into(),
            pubsub_urls: Arc::new(pubsub_urls),
            events,
            subscriber: Arc::new(OnceLock::new()),
            bus_up: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A standalone server.
    pub fn standalone(url: &str, prefix: &str) -> StoreResult<RedisStore> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(Duration::from_millis(500));
        let manager =
            ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
        Ok(RedisStore::new(
            Conn::Standalone(manager),
            prefix,
            vec![url.to_owned()],
        ))
    }

    /// A Cluster, from its seed nodes.
    pub fn cluster(nodes: &[String], prefix: &str) -> StoreResult<RedisStore> {
        let client = ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .build()
            .map_err(unavailable)?;
        Ok(RedisStore::new(
            Conn::Cluster(Arc::new((client, OnceCell::new()))),
            prefix,
            nodes.to_vec(),
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

    fn index_key(&self, tenant: &str, key: UserKey, value: &str) -> String {
        let (tag, folded) = match key {
            UserKey::Email => ("e", index_key(value)),
            UserKey::UserName => ("n", index_key(value)),
            UserKey::ExternalId => ("x", value.to_owned()),
        };
        self.tkey(tenant, "idx", &format!("{tag}:{folded}"))
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

    /// Index keys of a user, with presence flags; absent ones get a same-slot stand-in so
    /// the script's key list stays single-slot.
    fn user_index_keys(&self, tenant: &str, user: &User) -> [(String, bool); 3] {
        let k = |key: UserKey, v: &Option<String>| match v {
            Some(v) => (self.index_key(tenant, key, v), true),
            None => (self.tkey(tenant, "idx", "-"), false),
        };
        [
            k(UserKey::UserName, &user.user_name),
            k(UserKey::ExternalId, &user.external_id),
            k(UserKey::Email, &user.email),
        ]
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
                    let client = redis::Client::open(url.as_str())?;
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                match tokio::time::timeout(CONNECT_TIMEOUT * 2, connected).await {
                    Ok(Ok(pubsub)) => {
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
    async fn create_group(&self, tenant: &str, group: &Group) -> StoreResult<Option<Group>> {
        let key = self.tkey(tenant, "group", &group.id);
        let existing: Option<String> = scripts()
            .create_group
            .key(&key)
            .arg(encode(group))
            .invoke_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        existing.map(|j| decode(&key, &j)).transpose()
    }

    async fn get_group(&self, tenant: &str, id: &str) -> StoreResult<Option<Group>> {
        self.get_json(&self.tkey(tenant, "group", id)).await
    }

    async fn replace_group(&self, tenant: &str, group: &Group, expected: u64) -> StoreResult<bool> {
        let done: i64 = scripts()
            .replace_if_version
            .key(self.tkey(tenant, "group", &group.id))
            .arg(expected.to_string())
            .arg(encode(group))
            .invoke_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        Ok(done == 1)
    }

    async fn create_user(&self, tenant: &str, user: &User) -> StoreResult<CreateUser> {
        let [(name, has_name), (ext, has_ext), (email, has_email)] =
            self.user_index_keys(tenant, user);
        let reply: Vec<String> = scripts()
            .create_user
            .key(self.tkey(tenant, "user", &user.id))
            .key(name)
            .key(ext)
            .key(email)
            .arg(encode(user))
            .arg(&user.id)
            .arg(flag(has_name))
            .arg(flag(has_ext))
            .arg(flag(has_email))
            .invoke_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        Ok(match reply.as_slice() {
            [ok] if ok == "ok" => CreateUser::Created,
            [id] if id == "id" => CreateUser::IdTaken,
            [k, other] if k == "name" => CreateUser::UserNameTaken(other.clone()),
            [k, other] if k == "ext" => CreateUser::ExternalIdTaken(other.clone()),
            other => return Err(unavailable(format!("unexpected script reply {other:?}"))),
        })
    }

    async fn get_user(&self, tenant: &str, id: &str) -> StoreResult<Option<User>> {
        self.get_json(&self.tkey(tenant, "user", id)).await
    }

    async fn replace_user(&self, tenant: &str, old: &User, new: &User) -> StoreResult<ReplaceUser> {
        let [(nn, hnn), (ne, hne), (nm, hnm)] = self.user_index_keys(tenant, new);
        let [(on, hon), (oe, hoe), (om, hom)] = self.user_index_keys(tenant, old);
        let reply: Vec<String> = scripts()
            .replace_user
            .key(self.tkey(tenant, "user", &old.id))
            .key(nn)
            .key(ne)
            .key(nm)
            .key(on)
            .key(oe)
            .key(om)
            .arg(old.version.to_string())
            .arg(encode(new))
            .arg(&new.id)
            .arg(flag(hnn))
            .arg(flag(hne))
            .arg(flag(hnm))
            .arg(flag(hon))
            .arg(flag(hoe))
            .arg(flag(hom))
            .invoke_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        Ok(match reply.as_slice() {
            [ok] if ok == "ok" => ReplaceUser::Replaced,
            [c] if c == "conflict" => ReplaceUser::Conflict,
            [k, other] if k == "name" => ReplaceUser::UserNameTaken(other.clone()),
            [k, other] if k == "ext" => ReplaceUser::ExternalIdTaken(other.clone()),
            other => return Err(unavailable(format!("unexpected script reply {other:?}"))),
        })
    }

    async fn find_user(
        &self,
        tenant: &str,
        key: UserKey,
        value: &str,
    ) -> StoreResult<Option<String>> {
        let id: Option<String> = redis::cmd("GET")
            .arg(self.index_key(tenant, key, value))
            .query_async(&mut self.active().await?)
            .await
            .map_err(unavailable)?;
        Ok(id.filter(|id| id != "!"))
    }
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
        let index = self.tkey(&s.record.tenant, "usess", &s.record.user_id);
        let lifetime = (s.record.expires_at - s.record.created_at).max(1);
        let mut pipe = redis::pipe();
        pipe.sadd(&index, hash)
            .ignore()
            .cmd("EXPIRE")
            .arg(&index)
            .arg(lifetime)
            .arg("GT")
            .ignore()
            .cmd("EXPIRE")
            .arg(&index)
            .arg(lifetime)
            .arg("NX")
            .ignore();
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
        let _: () = redis::cmd("SREM")
            .arg(self.tkey(&record.tenant, "usess", &record.user_id))
            .arg(hash)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
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
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if done == 1 {
                revoked.push(h);
            } else {
                gone.push(h);
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
