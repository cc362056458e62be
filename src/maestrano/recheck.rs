//! Maestrano's session re-check (`session_recheck = true`): once a session passes the
//! `mno_session_recheck` time Maestrano gave, idgate asks Maestrano whether the session
//! is still valid, in the background, while the user's requests go on.
//!
//! - Valid: the next re-check time is Maestrano's answer, kept in the store for every
//!   replica.
//! - Invalid: the session ends on every replica; the next request goes to login.
//! - Maestrano unreachable: `recheck_fail_mode` decides. `"keep"` logs a warning and
//!   retries with backoff; `"logout"` ends the session, as the Ruby SDK did.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use http::Method;
use http::header::{self, HeaderValue};
use serde_json::Value;

use crate::config::{Config, MaestranoConfig, RecheckFailMode};
use crate::session::RecheckHook;
use crate::session::model::SessionRecord;
use crate::snapshot::Snapshots;
use crate::store::{Event, EventBus, SessionStore, Store};

/// First wait after Maestrano could not be reached ("keep" mode); it doubles.
const FIRST_RETRY: i64 = 15;
/// Longest wait between attempts while Maestrano stays unreachable.
const MAX_RETRY: i64 = 600;
/// Next re-check when a valid answer names no time.
const DEFAULT_INTERVAL: i64 = 300;
/// Soonest next re-check, whatever Maestrano answers (a past time would mean asking on
/// every request).
const MIN_INTERVAL: i64 = 10;

/// The re-check for every tenant that asks for it.
pub struct Recheck {
    /// The running configuration, whose Maestrano tenants with `session_recheck` are
    /// re-checked.
    snapshots: Arc<Snapshots>,
    caller: Caller,
}

/// What a re-check in flight needs (cheap to clone into its task).
#[derive(Clone)]
struct Caller {
    store: Store,
    http: super::worker::Client,
    /// Consecutive unreachable answers per session (for the backoff).
    failures: moka::sync::Cache<String, u32>,
    /// Sessions with a re-check in flight on this replica: one at a time, however often
    /// the session's cached state is rebuilt meanwhile.
    in_flight: moka::sync::Cache<String, ()>,
}

/// What Maestrano said.
enum Verdict {
    Valid(i64),
    Invalid,
    Unreachable(String),
}

impl Recheck {
    /// None when no tenant re-checks (and the developer platform cannot add one).
    pub fn new(config: &Config, store: Store, snapshots: Arc<Snapshots>) -> Option<Arc<Recheck>> {
        let none = !config
            .tenants
            .iter()
            .any(|t| t.maestrano.as_ref().is_some_and(|m| m.session_recheck));
        if none && config.maestrano_devpl.is_none() {
            return None;
        }
        Some(Arc::new(Recheck {
            snapshots,
            caller: Caller {
                store,
                http: super::worker::client(),
                failures: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(std::time::Duration::from_secs(3600))
                    .build(),
                in_flight: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(std::time::Duration::from_secs(60))
                    .build(),
            },
        }))
    }
}

impl Caller {
    async fn ask(&self, m: &MaestranoConfig, uid: &str, session: &str) -> Verdict {
        let path = percent_encoding::utf8_percent_encode(uid, percent_encoding::NON_ALPHANUMERIC);
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("session", session)
            .finish();
        let url = format!(
            "{}/api/v1/auth/saml/{path}?{query}",
            m.api_host.as_str().trim_end_matches('/')
        );
        let headers = vec![
            (
                header::AUTHORIZATION,
                super::worker::basic_auth(&m.api_id, m.api_key.expose()),
            ),
            (header::ACCEPT, HeaderValue::from_static("application/json")),
        ];
        let (status, _, body) = match super::worker::call(
            &self.http,
            Method::GET,
            &url,
            headers,
            Bytes::new(),
            super::worker::MAX_ANSWER,
        )
        .await
        {
            Ok(answer) => answer,
            Err(e) => return Verdict::Unreachable(e.0),
        };
        // Maestrano no longer knowing the session (or the user) is an answer, not an
        // outage.
        if status == http::StatusCode::NOT_FOUND || status == http::StatusCode::GONE {
            return Verdict::Invalid;
        }
        if !status.is_success() {
            return Verdict::Unreachable(format!("HTTP {status}"));
        }
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            return Verdict::Unreachable("the answer is not JSON".into());
        };
        // The SDKs accepted both `true` and `"true"`.
        let valid = v["valid"] == Value::Bool(true) || v["valid"] == "true";
        if !valid {
            return Verdict::Invalid;
        }
        let next = v["recheck"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp())
            .unwrap_or_else(|| crate::directory::now() + DEFAULT_INTERVAL);
        Verdict::Valid(next)
    }

    async fn end(&self, hash: &str, record: &SessionRecord) {
        if let Err(e) = self.store.delete_session(hash, record).await {
            tracing::error!(tenant = %record.tenant, error = %e, "cannot end a session Maestrano no longer vouches for");
            return;
        }
        if let Err(e) = self
            .store
            .publish(&Event::Session {
                hash: hash.to_owned(),
            })
            .await
        {
            tracing::warn!(error = %e, "cannot publish a session end; replicas catch up within cache_ttl");
        }
        // The IdP (Maestrano) no longer vouches for the session: its Single Logout, in
        // effect.
        crate::audit::record(
            self.store.metrics(),
            &crate::audit::Origin {
                actor: crate::audit::Actor::Maestrano,
                request_id: None,
            },
            crate::audit::Event::SingleLogout {
                tenant: &record.tenant,
                user: &record.user_id,
                session: hash,
            },
        );
    }
}

impl RecheckHook for Recheck {
    fn due(&self, hash: &str, record: &SessionRecord, next: Arc<AtomicI64>) {
        let Some(m) = self
            .snapshots
            .load()
            .maestrano
            .get(&record.tenant)
            .filter(|m| m.session_recheck)
            .cloned()
        else {
            next.store(i64::MAX, Ordering::Relaxed);
            return;
        };
        let Some(mno) = record.mno.clone() else {
            next.store(i64::MAX, Ordering::Relaxed);
            return;
        };
        if self.caller.in_flight.contains_key(hash) {
            return;
        }
        self.caller.in_flight.insert(hash.to_owned(), ());
        let (hash, record) = (hash.to_owned(), record.clone());
        let this = self.caller.clone();
        tokio::spawn(async move {
            let now = crate::directory::now();
            match this.ask(&m, &mno.uid, &mno.session).await {
                Verdict::Valid(at) => {
                    this.failures.invalidate(&hash);
                    let at = at.max(now + MIN_INTERVAL);
                    next.store(at, Ordering::Relaxed);
                    let mut updated = record.clone();
                    if let Some(x) = updated.mno.as_mut() {
                        x.recheck = at;
                    }
                    if let Err(e) = this.store.set_session_record(&hash, &updated).await {
                        tracing::warn!(error = %e, "cannot store the next re-check time; other replicas re-check sooner");
                    }
                    tracing::debug!(tenant = %record.tenant, user = %record.user_id, "Maestrano session still valid");
                }
                Verdict::Invalid => {
                    tracing::info!(tenant = %record.tenant, user = %record.user_id, "Maestrano session no longer valid: session ended");
                    this.end(&hash, &record).await;
                }
                Verdict::Unreachable(why) => match m.recheck_fail_mode {
                    RecheckFailMode::Keep => {
                        let n = this.failures.get(&hash).unwrap_or(0) + 1;
                        this.failures.insert(hash.clone(), n);
                        let wait = (FIRST_RETRY << n.min(10).saturating_sub(1)).min(MAX_RETRY);
                        next.store(now + wait, Ordering::Relaxed);
                        // Kept in the store too, so the backoff outlives this replica's
                        // cached copy of the session (rebuilt every cache_ttl).
                        let mut updated = record.clone();
                        if let Some(x) = updated.mno.as_mut() {
                            x.recheck = now + wait;
                        }
                        let _ = this.store.set_session_record(&hash, &updated).await;
                        tracing::warn!(tenant = %record.tenant, user = %record.user_id, reason = %why, retry_in_s = wait, "Maestrano session re-check failed; the session is kept (recheck_fail_mode = keep)");
                    }
                    RecheckFailMode::Logout => {
                        tracing::warn!(tenant = %record.tenant, user = %record.user_id, reason = %why, "Maestrano session re-check failed: session ended (recheck_fail_mode = logout)");
                        this.end(&hash, &record).await;
                    }
                },
            }
            this.in_flight.invalidate(&hash);
        });
    }
}
