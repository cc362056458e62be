//! Sessions watched by the connections that outlive their requests (SPEC §7): an open
//! tunnel or a streaming response registers here with the session it was opened under,
//! and is told to close when that session ends.
//!
//! Nothing is polled per connection and nothing touches the store per frame. The events
//! that already evict cached sessions (user, group, session, resync; tenant changes)
//! pick out the watched sessions they concern, and each of those is checked once
//! against the store itself (not the caches, which could predate the event): still
//! valid, or revoked, or expired. Expiry is one timer per watched session, re-armed
//! when the session was renewed in the meantime.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Live, Sessions, blocked};
use crate::config::FailMode;
use crate::directory::now;
use crate::proxy::tunnel::{ClosedBy, Closing, StreamGuard};
use crate::store::{DirectoryStore, Event, SessionStore, StoreError};

/// Watched sessions by key; weak, so a watch ends with its last connection.
pub(super) type WatchMap = Mutex<HashMap<[u8; 32], Weak<SessionWatch>>>;

/// Backoff between checks that found the store unavailable.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// With `fail_mode = "closed"`, how long a watched session may go unconfirmed (the store
/// not answering a check an event or its expiry called for) before its connections
/// are closed: the same bound as for a request that waits on the store.
pub(super) const UNCONFIRMED_LIMIT: Duration = Duration::from_secs(2);

/// One session as watched by its open connections on this replica.
pub struct SessionWatch {
    key: [u8; 32],
    hash: String,
    tenant: String,
    user_id: String,
    group_id: String,
    expires_at: i64,
    /// Unix seconds of the last renewal known here; with the idle timeout, when the
    /// session expires unless renewed again.
    last_seen: AtomicI64,
    token: CancellationToken,
    verdict: OnceLock<ClosedBy>,
    map: Weak<WatchMap>,
}

impl SessionWatch {
    /// Ends every connection watching this session, for `by`. The first reason stays.
    fn close(&self, by: ClosedBy) {
        let _ = self.verdict.set(by);
        self.token.cancel();
    }

    fn concerns(&self, event: &Event) -> bool {
        match event {
            Event::User { tenant, id } => *tenant == self.tenant && *id == self.user_id,
            Event::Group { tenant, id } => *tenant == self.tenant && *id == self.group_id,
            Event::Session { hash } => *hash == self.hash,
            // Revocations can no longer arrive: each watched session must be confirmed
            // by the store itself (or, fail mode "closed", be closed when it cannot).
            Event::Resync | Event::Lost => true,
        }
    }
}

impl Drop for SessionWatch {
    fn drop(&mut self) {
        // Stops the session's expiry timer (see `Sessions::expire`).
        self.token.cancel();
        let Some(map) = self.map.upgrade() else {
            return;
        };
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        // A newer watch of the same session may have taken the slot meanwhile.
        if map.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
            map.remove(&self.key);
        }
    }
}

/// What the gate hands the forwarder for one valid session on one worker thread: the
/// identity headers to add, and the session to watch should the connection outlive the
/// request. Copied per thread (see `Front`), so passing it along never touches a
/// reference count that another worker shares.
pub struct Pass {
    /// The identity headers, with values copied for this thread.
    pub headers: Box<[(http::HeaderName, http::HeaderValue)]>,
    /// Who the session is, for the access rules. Only read through the `Pass`, never
    /// cloned on the request path, so its reference count stays put.
    pub auth: Arc<super::Authenticated>,
    /// What ends a connection that outlives the request.
    pub(super) watched: Watched,
}

/// What an identity that a connection was opened under depends on.
pub(super) enum Watched {
    /// A browser session.
    Session {
        live: Arc<Live>,
        sessions: Arc<Sessions>,
        /// The invalidation generation the session was last found valid at.
        generation: u64,
    },
    /// A machine client's token (see [`super::bearer`]).
    Bearer(Arc<super::bearer::Watch>),
}

impl StreamGuard for Pass {
    fn closing(&self) -> Closing {
        let (live, sessions, generation) = match &self.watched {
            Watched::Session {
                live,
                sessions,
                generation,
            } => (live, sessions, *generation),
            Watched::Bearer(w) => return Box::pin(w.clone().closed()),
        };
        let watch = sessions.watch(live);
        // Something was invalidated since the session was last found valid, and the
        // event may have been handled before this connection registered: look again.
        if sessions.generation.load(Ordering::Acquire) != generation {
            sessions.check_later(vec![watch.clone()]);
        }
        Box::pin(async move {
            watch.token.cancelled().await;
            watch.verdict.get().copied().unwrap_or(ClosedBy::Revoked)
        })
    }
}

impl Sessions {
    /// The watch of `live`'s session, registered (with its expiry timer) on first use.
    fn watch(self: &Arc<Self>, live: &Arc<Live>) -> Arc<SessionWatch> {
        let key = live.key;
        let w = {
            let mut map = self.watches.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(w) = map.get(&key).and_then(Weak::upgrade) {
                return w;
            }
            let rec = &live.stored.record;
            let w = Arc::new(SessionWatch {
                key,
                hash: live.hash.clone(),
                tenant: rec.tenant.clone(),
                user_id: rec.user_id.clone(),
                group_id: rec.group_id.clone(),
                expires_at: rec.expires_at,
                last_seen: AtomicI64::new(live.last_touch.load(Ordering::Relaxed)),
                token: CancellationToken::new(),
                verdict: OnceLock::new(),
                map: Arc::downgrade(&self.watches),
            });
            map.insert(key, Arc::downgrade(&w));
            w
        };
        let this = self.clone();
        let weak = Arc::downgrade(&w);
        let token = w.token.clone();
        self.spawn(async move { this.expire(weak, token).await });
        w
    }

    /// One timer per watched session, however many connections watch it: at the
    /// session's idle or absolute end, ask the store whether it was renewed meanwhile
    /// (by requests on any replica); if not, its connections close. Holds the watch
    /// only weakly, and stops when it is closed or dropped.
    async fn expire(self: Arc<Self>, weak: Weak<SessionWatch>, token: CancellationToken) {
        loop {
            let wait = match weak.upgrade() {
                Some(w) => self.time_left(&w),
                None => return,
            };
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match weak.upgrade() {
                Some(w) => self.settle(&w).await,
                None => return,
            }
        }
    }

    /// How long until the watched session expires, as far as this replica knows.
    fn time_left(&self, watch: &SessionWatch) -> Duration {
        if let Some(live) = self.live.get(&watch.key) {
            watch
                .last_seen
                .fetch_max(live.last_touch.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let idle_end =
            watch.last_seen.load(Ordering::Relaxed) + self.config.idle_timeout.as_secs() as i64;
        // Expiry is "more than" the limit, in whole seconds: one second past it.
        let end = idle_end.min(watch.expires_at) + 1;
        let left = end - now();
        Duration::from_millis((left.max(0) as u64) * 1000 + 50)
    }

    /// Whether the watched session still holds, read from the store itself: a cached
    /// copy could predate the very event that asked. `Ok(None)`: it holds.
    async fn verdict(&self, watch: &SessionWatch) -> Result<Option<ClosedBy>, StoreError> {
        let now = now();
        if now > watch.expires_at {
            return Ok(Some(ClosedBy::Expired));
        }
        if !self.snapshots.load().sessions.known.contains(&watch.tenant) {
            return Ok(Some(ClosedBy::Revoked));
        }
        let idle = self.config.idle_timeout.as_secs() as i64;
        let Some(stored) = self.store.get_session(&watch.hash).await? else {
            // Gone: ended (logout) or timed out in the store.
            let timed_out = now > watch.last_seen.load(Ordering::Relaxed) + idle;
            return Ok(Some(if timed_out {
                ClosedBy::Expired
            } else {
                ClosedBy::Revoked
            }));
        };
        if stored.revoked.is_some() {
            return Ok(Some(ClosedBy::Revoked));
        }
        let last_seen = watch
            .last_seen
            .fetch_max(stored.last_seen, Ordering::Relaxed)
            .max(stored.last_seen);
        if now > last_seen + idle {
            return Ok(Some(ClosedBy::Expired));
        }
        let user = self.store.get_user(&watch.tenant, &watch.user_id).await?;
        let group = self.store.get_group(&watch.tenant, &watch.group_id).await?;
        Ok(match (user, group) {
            (Some(u), Some(g)) if blocked(&u, &g).is_none() => None,
            _ => Some(ClosedBy::Revoked),
        })
    }

    /// Checks a watched session until the store answers, and closes its connections
    /// if it no longer holds. While the store does not answer, an absolutely expired
    /// session still closes, and with `fail_mode = "closed"` so does one left
    /// unconfirmed for [`UNCONFIRMED_LIMIT`].
    async fn settle(&self, watch: &SessionWatch) {
        let start = std::time::Instant::now();
        let mut delay = RETRY_FIRST;
        while !watch.token.is_cancelled() {
            match self.verdict(watch).await {
                Ok(None) => return,
                Ok(Some(by)) => {
                    watch.close(by);
                    return;
                }
                Err(e) => {
                    if now() > watch.expires_at {
                        watch.close(ClosedBy::Expired);
                        return;
                    }
                    if self.fail_mode == FailMode::Closed && start.elapsed() >= UNCONFIRMED_LIMIT {
                        tracing::warn!(tenant = watch.tenant, error = %e, "closing a session's open connections: the store cannot confirm it (fail_mode closed)");
                        watch.close(ClosedBy::Revoked);
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Settles `watches` in the background.
    pub(super) fn check_later(self: &Arc<Self>, watches: Vec<Arc<SessionWatch>>) {
        if watches.is_empty() {
            return;
        }
        let this = self.clone();
        self.spawn(async move {
            futures_util::future::join_all(watches.iter().map(|w| this.settle(w))).await;
        });
    }

    /// On the runtime [`Sessions::start`] ran on: a worker thread's runtime ends at
    /// shutdown, and these checks belong to the whole process.
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        match self.runtime.get() {
            Some(rt) => {
                rt.spawn(task);
            }
            None => {
                tokio::spawn(task);
            }
        }
    }

    /// The watched sessions an invalidation concerns (all of them for `None`: the set of
    /// tenants changed), to be checked.
    pub(super) fn watched(&self, event: Option<&Event>) -> Vec<Arc<SessionWatch>> {
        // Upgraded under the lock, filtered after it: dropping the last reference to a
        // watch takes the same lock (see `Drop`).
        let all: Vec<Arc<SessionWatch>> = {
            let map = self.watches.lock().unwrap_or_else(|p| p.into_inner());
            map.values().filter_map(Weak::upgrade).collect()
        };
        all.into_iter()
            .filter(|w| event.is_none_or(|e| w.concerns(e)))
            .collect()
    }

    /// Sessions with open connections on this replica (for tests and metrics).
    pub fn watched_sessions(&self) -> usize {
        self.watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}
