//! The embedded in-process store, the default for a single instance and the demo. It
//! keeps the same contract as Redis (atomic operations, unique indexes, TTLs, events),
//! so the conformance suite holds for both.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::index::{Entries, IndexOp};
use super::{
    CreateGroup, CreateUser, DirectoryStore, EphemeralStore, Event, EventBus, Index, Job, JobQueue,
    Listing, QueueStats, Records, ReplaceGroup, ReplaceUser, SessionStore, StoreResult,
    StoredSession, UserKey,
};
use crate::directory::model::{Group, User};
use crate::session::model::{RevokeReason, SessionRecord};

/// A job's body, and its holder with when it last touched the job.
type QueuedJob = (String, Option<(String, Instant)>);

#[derive(Default)]
struct Inner {
    groups: HashMap<(String, String), Group>,
    users: HashMap<(String, String), User>,
    /// (tenant, logical key) → id, for unique indexes
    unique: HashMap<(String, String), String>,
    /// (tenant, logical key) → ids, for the other indexes
    sets: HashMap<(String, String), BTreeSet<String>>,
    /// (tenant, listing) → ids, in id order as on Redis
    lists: HashMap<(String, &'static str), BTreeSet<String>>,
    sessions: HashMap<String, (StoredSession, Instant)>,
    user_sessions: HashMap<(String, String), HashSet<String>>,
    /// (tenant, SAML NameID) → session hashes, for Single Logout.
    name_id_sessions: HashMap<(String, String), HashSet<String>>,
    ephemeral: HashMap<String, (String, Instant)>,
    puts: u64,
    /// queue → sequence → job
    queues: HashMap<String, BTreeMap<u64, QueuedJob>>,
    next_job: u64,
    /// job sequence → when it was enqueued, until it is acknowledged
    enqueued_at: HashMap<u64, std::time::SystemTime>,
    records: HashMap<String, String>,
}

/// In-process store; cheap to clone (shared state).
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<Event>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
        MemoryStore {
            inner: Arc::new(Mutex::new(Inner::default())),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters more than refusing all service, so recover the guard.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Applies index ops for record `id`, as the Redis script does: every claim is
    /// checked before anything changes. Err((key, holder)) when a claim is taken.
    fn apply(&mut self, tenant: &str, id: &str, ops: &[IndexOp]) -> Result<(), (String, String)> {
        for op in ops {
            if let IndexOp::Claim(k) = op
                && let Some(holder) = self.unique.get(&(tenant.to_owned(), k.clone()))
                && holder != id
            {
                return Err((k.clone(), holder.clone()));
            }
        }
        for op in ops {
            let k = (tenant.to_owned(), op.key().to_owned());
            match op {
                IndexOp::Claim(_) => {
                    self.unique.insert(k, id.to_owned());
                }
                IndexOp::Release(_) => {
                    if self.unique.get(&k).is_some_and(|h| h == id) {
                        self.unique.remove(&k);
                    }
                }
                IndexOp::Add(_) => {
                    self.sets.entry(k).or_default().insert(id.to_owned());
                }
                IndexOp::Remove(_) => {
                    if let Some(set) = self.sets.get_mut(&k) {
                        set.remove(id);
                        if set.is_empty() {
                            self.sets.remove(&k);
                        }
                    }
                }
                IndexOp::List(l) => {
                    self.lists
                        .entry((tenant.to_owned(), l))
                        .or_default()
                        .insert(id.to_owned());
                }
                IndexOp::Unlist(l) => {
                    if let Some(set) = self.lists.get_mut(&(tenant.to_owned(), *l)) {
                        set.remove(id);
                    }
                }
            }
        }
        Ok(())
    }

    fn sweep(&mut self, now: Instant) {
        self.sessions.retain(|_, (_, until)| *until > now);
        self.ephemeral.retain(|_, (_, until)| *until > now);
        let live = &self.sessions;
        self.user_sessions.retain(|_, set| {
            set.retain(|h| live.contains_key(h));
            !set.is_empty()
        });
        self.name_id_sessions.retain(|_, set| {
            set.retain(|h| live.contains_key(h));
            !set.is_empty()
        });
    }
}

impl DirectoryStore for MemoryStore {
    async fn create_group(&self, tenant: &str, group: &Group) -> StoreResult<CreateGroup> {
        let mut g = self.lock();
        let k = (tenant.to_owned(), group.id.clone());
        if let Some(existing) = g.groups.get(&k) {
            return Ok(CreateGroup::Exists(existing.clone()));
        }
        let ops = Entries::of_group(group).plan_from(None);
        if let Err((_, holder)) = g.apply(tenant, &group.id, &ops) {
            return Ok(CreateGroup::ExternalIdTaken(holder));
        }
        g.groups.insert(k, group.clone());
        Ok(CreateGroup::Created)
    }

    async fn get_group(&self, tenant: &str, id: &str) -> StoreResult<Option<Group>> {
        Ok(self
            .lock()
            .groups
            .get(&(tenant.to_owned(), id.to_owned()))
            .cloned())
    }

    async fn replace_group(
        &self,
        tenant: &str,
        old: &Group,
        new: &Group,
    ) -> StoreResult<ReplaceGroup> {
        let mut g = self.lock();
        let k = (tenant.to_owned(), old.id.clone());
        if g.groups.get(&k).map(|cur| cur.version) != Some(old.version) {
            return Ok(ReplaceGroup::Conflict);
        }
        let ops = Entries::of_group(new).plan_from(Some(&Entries::of_group(old)));
        if let Err((_, holder)) = g.apply(tenant, &new.id, &ops) {
            return Ok(ReplaceGroup::ExternalIdTaken(holder));
        }
        g.groups.insert(k, new.clone());
        Ok(ReplaceGroup::Replaced)
    }

    async fn create_user(&self, tenant: &str, user: &User) -> StoreResult<CreateUser> {
        let mut g = self.lock();
        let k = (tenant.to_owned(), user.id.clone());
        if g.users.contains_key(&k) {
            return Ok(CreateUser::IdTaken);
        }
        let ops = Entries::of_user(user).plan_from(None);
        match g.apply(tenant, &user.id, &ops) {
            Ok(()) => {
                g.users.insert(k, user.clone());
                Ok(CreateUser::Created)
            }
            Err((key, holder)) if key.starts_with("n:") => Ok(CreateUser::UserNameTaken(holder)),
            Err((key, holder)) if key.starts_with("sub:") => Ok(CreateUser::SubjectTaken(holder)),
            Err((_, holder)) => Ok(CreateUser::ExternalIdTaken(holder)),
        }
    }

    async fn get_user(&self, tenant: &str, id: &str) -> StoreResult<Option<User>> {
        Ok(self
            .lock()
            .users
            .get(&(tenant.to_owned(), id.to_owned()))
            .cloned())
    }

    async fn replace_user(&self, tenant: &str, old: &User, new: &User) -> StoreResult<ReplaceUser> {
        let mut g = self.lock();
        let k = (tenant.to_owned(), old.id.clone());
        if g.users.get(&k).map(|u| u.version) != Some(old.version) {
            return Ok(ReplaceUser::Conflict);
        }
        let ops = Entries::of_user(new).plan_from(Some(&Entries::of_user(old)));
        match g.apply(tenant, &new.id, &ops) {
            Ok(()) => {
                g.users.insert(k, new.clone());
                Ok(ReplaceUser::Replaced)
            }
            Err((key, holder)) if key.starts_with("n:") => Ok(ReplaceUser::UserNameTaken(holder)),
            Err((key, holder)) if key.starts_with("sub:") => Ok(ReplaceUser::SubjectTaken(holder)),
            Err((_, holder)) => Ok(ReplaceUser::ExternalIdTaken(holder)),
        }
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
        let g = self.lock();
        let k = (tenant.to_owned(), index.key(value));
        Ok(if index.unique() {
            g.unique.get(&k).cloned().into_iter().collect()
        } else {
            g.sets
                .get(&k)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default()
        })
    }

    async fn list(
        &self,
        tenant: &str,
        listing: Listing,
        start: usize,
        count: usize,
    ) -> StoreResult<(Vec<String>, usize)> {
        let g = self.lock();
        let Some(set) = g.lists.get(&(tenant.to_owned(), listing.key())) else {
            return Ok((Vec::new(), 0));
        };
        let page = set.iter().skip(start).take(count).cloned().collect();
        Ok((page, set.len()))
    }

    async fn list_after(
        &self,
        tenant: &str,
        listing: Listing,
        after: Option<&str>,
        count: usize,
    ) -> StoreResult<Vec<String>> {
        use std::ops::Bound;
        let g = self.lock();
        let Some(set) = g.lists.get(&(tenant.to_owned(), listing.key())) else {
            return Ok(Vec::new());
        };
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_owned()));
        Ok(set
            .range((from, Bound::Unbounded))
            .take(count)
            .cloned()
            .collect())
    }

    async fn get_users(&self, tenant: &str, ids: &[String]) -> StoreResult<Vec<User>> {
        let g = self.lock();
        Ok(ids
            .iter()
            .filter_map(|id| g.users.get(&(tenant.to_owned(), id.clone())).cloned())
            .collect())
    }

    async fn get_groups(&self, tenant: &str, ids: &[String]) -> StoreResult<Vec<Group>> {
        let g = self.lock();
        Ok(ids
            .iter()
            .filter_map(|id| g.groups.get(&(tenant.to_owned(), id.clone())).cloned())
            .collect())
    }

    async fn user_ids(&self, tenant: &str) -> StoreResult<Vec<String>> {
        let g = self.lock();
        Ok(g.users
            .keys()
            .filter(|(t, _)| t == tenant)
            .map(|(_, id)| id.clone())
            .collect())
    }
}

impl SessionStore for MemoryStore {
    async fn put_session(
        &self,
        hash: &str,
        session: &StoredSession,
        ttl: Duration,
    ) -> StoreResult<()> {
        let mut g = self.lock();
        let now = Instant::now();
        g.puts += 1;
        if g.puts.is_multiple_of(256) {
            g.sweep(now);
        }
        g.sessions
            .insert(hash.to_owned(), (session.clone(), now + ttl));
        g.user_sessions
            .entry((
                session.record.tenant.clone(),
                session.record.user_id.clone(),
            ))
            .or_default()
            .insert(hash.to_owned());
        if let Some(saml) = &session.record.saml {
            g.name_id_sessions
                .entry((session.record.tenant.clone(), saml.name_id.clone()))
                .or_default()
                .insert(hash.to_owned());
        }
        Ok(())
    }

    async fn get_session(&self, hash: &str) -> StoreResult<Option<StoredSession>> {
        let g = self.lock();
        Ok(g.sessions
            .get(hash)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(s, _)| s.clone()))
    }

    async fn touch_session(&self, hash: &str, last_seen: i64, ttl: Duration) -> StoreResult<bool> {
        let mut g = self.lock();
        let now = Instant::now();
        match g.sessions.get_mut(hash) {
            Some((s, until)) if *until > now => {
                s.last_seen = last_seen;
                *until = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete_session(&self, hash: &str, record: &SessionRecord) -> StoreResult<()> {
        let mut g = self.lock();
        g.sessions.remove(hash);
        if let Some(set) = g
            .user_sessions
            .get_mut(&(record.tenant.clone(), record.user_id.clone()))
        {
            set.remove(hash);
        }
        if let Some(saml) = &record.saml
            && let Some(set) = g
                .name_id_sessions
                .get_mut(&(record.tenant.clone(), saml.name_id.clone()))
        {
            set.remove(hash);
        }
        Ok(())
    }

    async fn set_session_record(&self, hash: &str, record: &SessionRecord) -> StoreResult<bool> {
        let mut g = self.lock();
        match g.sessions.get_mut(hash) {
            Some((s, until)) if *until > Instant::now() => {
                s.record = record.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn revoke_session(&self, hash: &str, reason: RevokeReason) -> StoreResult<bool> {
        let mut g = self.lock();
        match g.sessions.get_mut(hash) {
            Some((s, until)) if *until > Instant::now() && s.revoked.is_none() => {
                s.revoked = Some(reason);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn revoke_user_sessions(
        &self,
        tenant: &str,
        user_id: &str,
        reason: RevokeReason,
        group: Option<&str>,
    ) -> StoreResult<Vec<String>> {
        let mut g = self.lock();
        let now = Instant::now();
        let hashes: Vec<String> = g
            .user_sessions
            .get(&(tenant.to_owned(), user_id.to_owned()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let mut revoked = Vec::new();
        for h in hashes {
            if let Some((s, until)) = g.sessions.get_mut(&h)
                && *until > now
                && group.is_none_or(|gid| s.record.group_id == gid)
                && s.revoked.is_none()
            {
                s.revoked = Some(reason);
                revoked.push(h);
            }
        }
        Ok(revoked)
    }

    async fn user_sessions(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> StoreResult<Vec<(String, StoredSession)>> {
        let g = self.lock();
        let now = Instant::now();
        let mut live: Vec<(String, StoredSession)> = g
            .user_sessions
            .get(&(tenant.to_owned(), user_id.to_owned()))
            .into_iter()
            .flatten()
            .filter_map(|h| match g.sessions.get(h) {
                Some((s, until)) if *until > now => Some((h.clone(), s.clone())),
                _ => None,
            })
            .collect();
        live.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(live)
    }

    async fn saml_sessions(
        &self,
        tenant: &str,
        name_id: &str,
    ) -> StoreResult<Vec<(String, StoredSession)>> {
        let g = self.lock();
        let now = Instant::now();
        Ok(g.name_id_sessions
            .get(&(tenant.to_owned(), name_id.to_owned()))
            .into_iter()
            .flatten()
            .filter_map(|h| match g.sessions.get(h) {
                Some((s, until)) if *until > now => Some((h.clone(), s.clone())),
                _ => None,
            })
            .collect())
    }
}

impl EphemeralStore for MemoryStore {
    async fn put_once(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<bool> {
        let mut g = self.lock();
        let now = Instant::now();
        g.puts += 1;
        if g.puts.is_multiple_of(256) {
            g.sweep(now);
        }
        if g.ephemeral.get(key).is_some_and(|(_, until)| *until > now) {
            return Ok(false);
        }
        g.ephemeral
            .insert(key.to_owned(), (value.to_owned(), now + ttl));
        Ok(true)
    }

    async fn take(&self, key: &str) -> StoreResult<Option<String>> {
        let mut g = self.lock();
        Ok(g.ephemeral
            .remove(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(v, _)| v))
    }

    async fn renew(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<bool> {
        let mut g = self.lock();
        let now = Instant::now();
        match g.ephemeral.get_mut(key) {
            Some((v, until)) if *until > now && v == value => {
                *until = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, key: &str, value: &str) -> StoreResult<bool> {
        let mut g = self.lock();
        let held = g
            .ephemeral
            .get(key)
            .is_some_and(|(v, until)| *until > Instant::now() && v == value);
        if held {
            g.ephemeral.remove(key);
        }
        Ok(held)
    }
}

impl JobQueue for MemoryStore {
    async fn enqueue(&self, queue: &str, body: &str) -> StoreResult<String> {
        let mut g = self.lock();
        g.next_job += 1;
        let n = g.next_job;
        g.enqueued_at.insert(n, std::time::SystemTime::now());
        g.queues
            .entry(queue.to_owned())
            .or_default()
            .insert(n, (body.to_owned(), None));
        Ok(n.to_string())
    }

    async fn claim(
        &self,
        queue: &str,
        consumer: &str,
        max: usize,
        stale_after: Duration,
    ) -> StoreResult<Vec<Job>> {
        let mut g = self.lock();
        let now = Instant::now();
        let Some(q) = g.queues.get_mut(queue) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        // Stale ones first, then new ones, as the Redis backend does.
        for stale_pass in [true, false] {
            for (n, (body, holder)) in q.iter_mut() {
                if out.len() >= max {
                    break;
                }
                let take = match holder {
                    Some((_, at)) => stale_pass && now.duration_since(*at) > stale_after,
                    None => !stale_pass,
                };
                if take {
                    *holder = Some((consumer.to_owned(), now));
                    out.push(Job {
                        id: n.to_string(),
                        body: body.clone(),
                    });
                }
            }
        }
        Ok(out)
    }

    async fn keep(&self, queue: &str, consumer: &str, ids: &[String]) -> StoreResult<Vec<String>> {
        let mut g = self.lock();
        let now = Instant::now();
        let mut lost = Vec::new();
        let q = g.queues.get_mut(queue);
        let mut q = q;
        for id in ids {
            let entry = q
                .as_deref_mut()
                .and_then(|q| id.parse().ok().and_then(|n: u64| q.get_mut(&n)));
            match entry {
                Some((_, Some((who, at)))) if who == consumer => *at = now,
                _ => lost.push(id.clone()),
            }
        }
        Ok(lost)
    }

    async fn ack(&self, queue: &str, id: &str) -> StoreResult<()> {
        let mut g = self.lock();
        if let (Some(q), Ok(n)) = (g.queues.get_mut(queue), id.parse::<u64>())
            && q.remove(&n).is_some()
        {
            g.enqueued_at.remove(&n);
        }
        Ok(())
    }

    async fn stats(&self, queue: &str) -> StoreResult<QueueStats> {
        let g = self.lock();
        let Some(q) = g.queues.get(queue) else {
            return Ok(QueueStats::default());
        };
        Ok(QueueStats {
            depth: q.len() as u64,
            oldest: q.keys().next().and_then(|n| g.enqueued_at.get(n).copied()),
        })
    }
}

impl Records for MemoryStore {
    async fn get_record(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(self.lock().records.get(key).cloned())
    }
    async fn set_record(&self, key: &str, value: &str) -> StoreResult<()> {
        self.lock().records.insert(key.to_owned(), value.to_owned());
        Ok(())
    }
    async fn delete_record(&self, key: &str) -> StoreResult<()> {
        self.lock().records.remove(key);
        Ok(())
    }
}

impl EventBus for MemoryStore {
    async fn publish(&self, event: &Event) -> StoreResult<()> {
        // No receivers is fine: nothing is cached yet.
        let _ = self.events.send(event.clone());
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}
