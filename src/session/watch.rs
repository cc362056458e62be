//! Sessions watched by the connections that outlive their requests (SPEC §7): an open
//! tunnel or a streaming response registers here with the session it was opened under,
//! and is told to close when that session ends.
//!
//! Nothing is polled per connection and nothing touches the store per frame. The events
//! that already evict cached sessions (user, group, session, resync; tenant changes)
//! pick out the watched sessions they concern, and each of those is checked once
//! against the store: still valid, or revoked, or expired. Expiry is a timer per
//! watching connection, re-armed when the session was renewed in the meantime.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{AuthInner, Live, Sessions};
use crate::directory::now;
use crate::proxy::tunnel::{ClosedBy, Closing, StreamGuard};
use crate::store::Event;

/// Watched sessions by key; weak, so a watch ends with its last connection.
pub(super) type WatchMap = Mutex<HashMap<[u8; 32], Weak<SessionWatch>>>;

/// How often a check that found the store unavailable is retried before the next
/// resync (sent when the store is back) takes over.
const CHECK_RETRIES: u32 = 10;
const CHECK_RETRY_DELAY: Duration = Duration::from_millis(500);

/// One session as watched by its open connections on this replica.
pub struct SessionWatch {
    key: [u8; 32],
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
            Event::Session { hash } => {
                let mut key = [0u8; 32];
                hex::decode_to_slice(hash, &mut key).is_ok() && key == self.key
            }
            Event::Resync => true,
        }
    }
}

impl Drop for SessionWatch {
    fn drop(&mut self) {
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
    pub(super) live: Arc<Live>,
    pub(super) sessions: Arc<Sessions>,
    /// The invalidation generation the session was last found valid at.
    pub(super) generation: u64,
}

impl StreamGuard for Pass {
    fn closing(&self) -> Closing {
        let watch = self.sessions.watch(&self.live);
        // Something changed since the session was last found valid (and the event may
        // have been handled before this connection registered): look again.
        if self.sessions.generation.load(Ordering::Acquire) != self.generation {
            self.sessions.check_later(vec![watch.clone()]);
        }
        let sessions = self.sessions.clone();
        Box::pin(async move {
            loop {
                let wait = sessions.time_left(&watch);
                tokio::select! {
                    _ = watch.token.cancelled() => {
                        return watch.verdict.get().copied().unwrap_or(ClosedBy::Revoked);
                    }
                    _ = tokio::time::sleep(wait) => {
                        // The session's time is up unless it was renewed meanwhile
                        // (by requests on this or another replica).
                        sessions.check(&watch).await;
                    }
                }
            }
        })
    }
}

impl Sessions {
    /// The watch of `live`'s session, registered on first use.
    fn watch(&self, live: &Arc<Live>) -> Arc<SessionWatch> {
        let key = live.key;
        let mut map = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = map.get(&key).and_then(Weak::upgrade) {
            return w;
        }
        let rec = &live.stored.record;
        let w = Arc::new(SessionWatch {
            key,
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

    /// Checks a watched session against the store and closes its connections if it
    /// is no longer valid. False when the store could not answer.
    async fn check(&self, watch: &SessionWatch) -> bool {
        if watch.token.is_cancelled() {
            return true;
        }
        match self.authenticate_hashed(watch.key, &|_| true, false).await {
            AuthInner::Valid(_, live) => {
                watch
                    .last_seen
                    .fetch_max(live.last_touch.load(Ordering::Relaxed), Ordering::Relaxed);
                true
            }
            // An identity that can no longer be forwarded (see `AuthInner::Unusable`)
            // ends the connection as a revocation does.
            AuthInner::Revoked(_) | AuthInner::Unusable(_) => {
                watch.close(ClosedBy::Revoked);
                true
            }
            AuthInner::Missing => {
                let now = now();
                let idle = self.config.idle_timeout.as_secs() as i64;
                let expired =
                    now > watch.expires_at || now > watch.last_seen.load(Ordering::Relaxed) + idle;
                watch.close(if expired {
                    ClosedBy::Expired
                } else {
                    ClosedBy::Revoked
                });
                true
            }
            AuthInner::Unavailable => false,
        }
    }

    /// Checks `watches` in the background, retrying while the store cannot answer.
    pub(super) fn check_later(self: &Arc<Self>, watches: Vec<Arc<SessionWatch>>) {
        if watches.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut pending = watches;
            for _ in 0..CHECK_RETRIES {
                let mut left = Vec::new();
                for w in pending {
                    if !this.check(&w).await {
                        left.push(w);
                    }
                }
                if left.is_empty() {
                    return;
                }
                pending = left;
                tokio::time::sleep(CHECK_RETRY_DELAY).await;
            }
            tracing::warn!(
                sessions = pending.len(),
                "cannot check sessions with open connections: the store does not answer; the next resync will"
            );
        });
    }

    /// The watched sessions an invalidation concerns (all of them for `None`: the set of
    /// tenants changed), to be checked.
    pub(super) fn watched(&self, event: Option<&Event>) -> Vec<Arc<SessionWatch>> {
        let map = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
            .filter_map(Weak::upgrade)
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
