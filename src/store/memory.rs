//! The embedded in-process store, the default for a single instance and the demo. It
//! keeps the same contract as Redis (atomic operations, unique indexes, TTLs, events),
//! so the conformance suite holds for both.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::{
    CreateUser, DirectoryStore, EphemeralStore, Event, EventBus, ReplaceUser, SessionStore,
    StoreResult, StoredSession, UserKey,
};
use crate::directory::model::{Group, User, index_key};
use crate::session::model::{RevokeReason, SessionRecord};

/// An email index entry claimed by more than one user: never answers.
const AMBIGUOUS: &str = "!";

#[derive(Default)]
struct Inner {
    groups: HashMap<(String, String), Group>,
    users: HashMap<(String, String), User>,
    /// (tenant, index, folded value) → user id
    index: HashMap<(String, u8, String), String>,
    sessions: HashMap<String, (StoredSession, Instant)>,
    user_sessions: HashMap<(String, String), HashSet<String>>,
    ephemeral: HashMap<String, (String, Instant)>,
    puts: u64,
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

fn idx(key: UserKey) -> u8 {
    match key {
        UserKey::Email => 0,
        UserKey::UserName => 1,
        UserKey::ExternalId => 2,
    }
}

fn index_values(user: &User) -> [(UserKey, Option<String>); 3] {
    [
        (UserKey::UserName, user.user_name.as_deref().map(index_key)),
        (UserKey::ExternalId, user.external_id.clone()),
        (UserKey::Email, user.email.as_deref().map(index_key)),
    ]
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
    /// The holder of a unique index other than `id`, if any.
    fn taken(
        &self,
        tenant: &str,
        key: UserKey,
        value: &Option<String>,
        id: &str,
    ) -> Option<String> {
        let value = value.as_ref()?;
        self.index
            .get(&(tenant.to_owned(), idx(key), value.clone()))
            .filter(|holder| *holder != id)
            .cloned()
    }

    fn claim_email(&mut self, tenant: &str, email: &str, id: &str) {
        let k = (tenant.to_owned(), idx(UserKey::Email), email.to_owned());
        match self.index.get(&k) {
            None => {
                self.index.insert(k, id.to_owned());
            }
            Some(holder) if holder == id => {}
            Some(_) => {
                self.index.insert(k, AMBIGUOUS.to_owned());
            }
        }
    }

    fn release(&mut self, tenant: &str, key: UserKey, value: &str, id: &str) {
        let k = (tenant.to_owned(), idx(key), value.to_owned());
        if self.index.get(&k).is_some_and(|holder| holder == id) {
            self.index.remove(&k);
        }
    }

    fn sweep(&mut self, now: Instant) {
        self.sessions.retain(|_, (_, until)| *until > now);
        self.ephemeral.retain(|_, (_, until)| *until > now);
        let live = &self.sessions;
        self.user_sessions.retain(|_, set| {
            set.retain(|h| live.contains_key(h));
            !set.is_empty()
        });
    }
}

impl DirectoryStore for MemoryStore {
    async fn create_group(&self, tenant: &str, group: &Group) -> StoreResult<Option<Group>> {
        let mut g = self.lock();
        let k = (tenant.to_owned(), group.id.clone());
        if let Some(existing) = g.groups.get(&k) {
            return Ok(Some(existing.clone()));
        }
        g.groups.insert(k, group.clone());
        Ok(None)
    }

    async fn get_group(&self, tenant: &str, id: &str) -> StoreResult<Option<Group>> {
        Ok(self
            .lock()
            .groups
            .get(&(tenant.to_owned(), id.to_owned()))
            .cloned())
    }

    async fn replace_group(&self, tenant: &str, group: &Group, expected: u64) -> StoreResult<bool> {
        let mut g = self.lock();
        match g.groups.get_mut(&(tenant.to_owned(), group.id.clone())) {
            Some(cur) if cur.version == expected => {
                *cur = group.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn create_user(&self, tenant: &str, user: &User) -> StoreResult<CreateUser> {
        let mut g = self.lock();
        let k = (tenant.to_owned(), user.id.clone());
        if g.users.contains_key(&k) {
            return Ok(CreateUser::IdTaken);
        }
        let [(_, uname), (_, ext), (_, email)] = index_values(user);
        if let Some(other) = g.taken(tenant, UserKey::UserName, &uname, &user.id) {
            return Ok(CreateUser::UserNameTaken(other));
        }
        if let Some(other) = g.taken(tenant, UserKey::ExternalId, &ext, &user.id) {
            return Ok(CreateUser::ExternalIdTaken(other));
        }
        g.users.insert(k, user.clone());
        for (key, value) in [(UserKey::UserName, uname), (UserKey::ExternalId, ext)] {
            if let Some(v) = value {
                g.index
                    .insert((tenant.to_owned(), idx(key), v), user.id.clone());
            }
        }
        if let Some(e) = email {
            g.claim_email(tenant, &e, &user.id);
        }
        Ok(CreateUser::Created)
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
        let [(_, new_uname), (_, new_ext), (_, new_email)] = index_values(new);
        if let Some(other) = g.taken(tenant, UserKey::UserName, &new_uname, &new.id) {
            return Ok(ReplaceUser::UserNameTaken(other));
        }
        if let Some(other) = g.taken(tenant, UserKey::ExternalId, &new_ext, &new.id) {
            return Ok(ReplaceUser::ExternalIdTaken(other));
        }
        let old_values = index_values(old);
        for ((key, old_v), new_v) in old_values.iter().zip([&new_uname, &new_ext, &new_email]) {
            if let Some(ov) = old_v
                && Some(ov) != new_v.as_ref()
            {
                g.release(tenant, *key, ov, &old.id);
            }
        }
        for (key, value) in [
            (UserKey::UserName, new_uname),
            (UserKey::ExternalId, new_ext),
        ] {
            if let Some(v) = value {
                g.index
                    .insert((tenant.to_owned(), idx(key), v), new.id.clone());
            }
        }
        if let Some(e) = new_email {
            g.claim_email(tenant, &e, &new.id);
        }
        g.users.insert(k, new.clone());
        Ok(ReplaceUser::Replaced)
    }

    async fn find_user(
        &self,
        tenant: &str,
        key: UserKey,
        value: &str,
    ) -> StoreResult<Option<String>> {
        let folded = match key {
            UserKey::ExternalId => value.to_owned(),
            _ => index_key(value),
        };
        Ok(self
            .lock()
            .index
            .get(&(tenant.to_owned(), idx(key), folded))
            .filter(|id| *id != AMBIGUOUS)
            .cloned())
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
        Ok(())
    }

    async fn revoke_session(&self, hash: &str, reason: RevokeReason) -> StoreResult<bool> {
        let mut g = self.lock();
        match g.sessions.get_mut(hash) {
            Some((s, until)) if *until > Instant::now() => {
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
            {
                s.revoked = Some(reason);
                revoked.push(h);
            }
        }
        Ok(revoked)
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
