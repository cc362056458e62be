//! The audit log (SPEC §10): one JSON line per event that changed who may use the app,
//! with `"target":"idgate::audit"`, so that an operator can answer "who did what, and
//! on whose request" by filtering the one log stream on its target.
//!
//! Every audit line is written by [`record`], and nowhere else. Its callers are the
//! places where the change itself happens, not the protocols that ask for it:
//! `directory` (deactivation, reactivation, a cancelled company, a removed membership,
//! and the sessions those revoke), `session` (a login, a logout, a Single Logout, a
//! revocation the gate finds), and the SAML ACS (a refused login). So a new lifecycle
//! path (the admin API, say) cannot forget to write one: it calls the same
//! `directory` function, which writes it. The caller says who acts through an
//! [`Origin`], threaded into those functions as a small argument.
//!
//! The fields are typed (ids, reason codes, an HTTP method and path), never a header,
//! body or credential, so that a secret, cookie or token cannot reach the audit log by
//! accident. A session is named by a prefix of its store hash ([`session_ref`]), which
//! cannot be turned back into the cookie.
//!
//! [`record`] also counts what it records in the app's [`Metrics`] (logins, refused
//! logins by reason, sessions ended by cause, configuration reloads), for the same
//! reason: a path that writes the audit line is counted, and no path can be counted
//! without being audited, or the other way round. The metrics are an explicit argument,
//! not a process-global set at startup: tests and benchmarks run several apps in one
//! process, each with its own `/metrics`, and a global would count every app's events
//! in whichever app set it first. The lifecycle code needs no new plumbing for it: the
//! app's [`crate::store::Store`], which `directory` and `session` already hold, carries
//! the app's metrics ([`crate::store::Store::metrics`]); the SAML routes and the admin
//! API pass the ones they serve.

use crate::metrics::{EndCause, Metrics};
use crate::session::model::RevokeReason;

/// The `target` of every audit line: operators filter the log stream on it.
pub const TARGET: &str = "idgate::audit";

/// Hex digits of a session's store hash that name it in the audit log.
const SESSION_REF_LEN: usize = 16;

/// Who made a change happen (the `actor` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The person signing in or out.
    User,
    /// A SCIM client (the tenant's IdP provisioning).
    Scim,
    /// A Maestrano webhook or session re-check.
    Maestrano,
    /// An operator through the admin API.
    Admin,
    /// The IdP, through SAML Single Logout.
    Idp,
    /// idgate itself: expiry, reloads, a revocation the gate found due.
    System,
}

impl Actor {
    /// The value of the `actor` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::User => "user",
            Actor::Scim => "scim",
            Actor::Maestrano => "maestrano",
            Actor::Admin => "admin",
            Actor::Idp => "idp",
            Actor::System => "system",
        }
    }
}

/// Who acts, and on which request: passed into every `directory` and `session`
/// function that changes who may use the app, so that the line it writes names them.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// Who acts.
    pub actor: Actor,
    /// idgate's id of the request that asked (none for idgate's own work).
    pub request_id: Option<&'a str>,
}

impl<'a> Origin<'a> {
    /// `actor` acting on request `request_id` (idgate's id for it, see the gateway).
    pub fn new(actor: Actor, request_id: &'a str) -> Origin<'a> {
        Origin {
            actor,
            request_id: Some(request_id),
        }
    }

    /// idgate itself, on no request: background work, and tools that use the library
    /// directly.
    pub const fn system() -> Origin<'static> {
        Origin {
            actor: Actor::System,
            request_id: None,
        }
    }
}

/// What a configuration reload came to (the `result` field of [`Event::ConfigReload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new configuration is in use.
    Ok,
    /// It was invalid; the running one stays.
    Error,
}

impl ReloadResult {
    /// The value of the `result` field and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Error => "error",
        }
    }
}

/// One audit event (the `event` field is the variant's name in snake case). `user` is
/// always the local user id, `group` a company's id, `session` a [`session_ref`].
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A login created a session.
    Login {
        /// The tenant.
        tenant: &'a str,
        /// Who signed in.
        user: &'a str,
        /// The company they signed in to.
        group: &'a str,
    },
    /// A login was refused; `reason` is the code the refusal page and metrics use.
    LoginRefused {
        /// The tenant.
        tenant: &'a str,
        /// Why (for example `bad_signature`, `account_deactivated`, `not_provisioned`).
        reason: &'a str,
        /// The IdP's id for the person, when a validated response named one (no local
        /// user may exist for it).
        subject: Option<&'a str>,
    },
    /// The person ended their session.
    Logout {
        /// The tenant.
        tenant: &'a str,
        /// Whose session it was.
        user: &'a str,
        /// The session.
        session: &'a str,
    },
    /// The IdP ended a session through SAML Single Logout.
    SingleLogout {
        /// The tenant.
        tenant: &'a str,
        /// Whose session it was.
        user: &'a str,
        /// The session.
        session: &'a str,
    },
    /// A session was revoked: marked, answering 403 with `reason` from now on, or
    /// (`reason` none) ended by an operator through the admin API, gone like a logout.
    SessionRevoked {
        /// The tenant.
        tenant: &'a str,
        /// Whose session it is.
        user: &'a str,
        /// The session.
        session: &'a str,
        /// Why; none when an operator ended it (logged as `ended_by_admin`).
        reason: Option<RevokeReason>,
    },
    /// A user lost their account (deactivated or deprovisioned).
    UserDeactivated {
        /// The tenant.
        tenant: &'a str,
        /// Who.
        user: &'a str,
    },
    /// A deactivated or deprovisioned user is active again.
    UserActivated {
        /// The tenant.
        tenant: &'a str,
        /// Who.
        user: &'a str,
    },
    /// A company was cancelled: its members are blocked.
    CompanyCancelled {
        /// The tenant.
        tenant: &'a str,
        /// The company.
        group: &'a str,
    },
    /// A user left a company.
    MembershipRemoved {
        /// The tenant.
        tenant: &'a str,
        /// Who.
        user: &'a str,
        /// The company they left.
        group: &'a str,
    },
    /// A call to the admin API. To be written by the admin API's handler for every
    /// authenticated call (SPEC §10: an admin deactivation writes this and, through
    /// `directory`, `user_deactivated`), with [`Actor::Admin`].
    AdminCall {
        /// The tenant the path names, if any.
        tenant: Option<&'a str>,
        /// The HTTP method.
        method: &'a http::Method,
        /// The path; a query string is cut off here (it may carry cursors or emails).
        path: &'a str,
    },
    /// A configuration reload was tried. To be written by the reload (SIGHUP or
    /// `[server].watch_config`), with [`Origin::system`].
    ConfigReload {
        /// Whether the new configuration is in use.
        result: ReloadResult,
    },
}

impl Event<'_> {
    /// The value of the `event` field.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Login { .. } => "login",
            Event::LoginRefused { .. } => "login_refused",
            Event::Logout { .. } => "logout",
            Event::SingleLogout { .. } => "single_logout",
            Event::SessionRevoked { .. } => "session_revoked",
            Event::UserDeactivated { .. } => "user_deactivated",
            Event::UserActivated { .. } => "user_activated",
            Event::CompanyCancelled { .. } => "company_cancelled",
            Event::MembershipRemoved { .. } => "membership_removed",
            Event::AdminCall { .. } => "admin_call",
            Event::ConfigReload { .. } => "config_reload",
        }
    }
}

/// How a session is named in the audit log (and should be wherever an operator sees
/// one, such as the admin API's session listing): the first hex digits of its store
/// hash, the SHA-256 of the cookie. Enough to tell sessions apart; no way back to the
/// cookie.
pub fn session_ref(hash: &str) -> &str {
    hash.get(..SESSION_REF_LEN).unwrap_or(hash)
}

tokio::task_local! {
    /// The `X-Request-Id` an untrusted client sent, for the request being handled
    /// (set by the gateway only when there is one). It is not threaded through every
    /// protocol's functions like idgate's own id: it is only ever logged, as
    /// `client_request_id`, and a request without one pays nothing for it.
    pub static CLIENT_REQUEST_ID: Box<str>;
}

/// Writes one audit line, and counts the event in `metrics` (see the module comment).
/// The only place that does either.
pub fn record(metrics: &Metrics, origin: &Origin<'_>, event: Event<'_>) {
    count(metrics, &event);
    let mut tenant = None;
    let mut user = None;
    let mut group = None;
    let mut session = None;
    let mut reason = None;
    let mut subject = None;
    let mut method = None;
    let mut path = None;
    let mut result = None;
    match event {
        Event::Login {
            tenant: t,
            user: u,
            group: g,
        } => (tenant, user, group) = (Some(t), Some(u), Some(g)),
        Event::LoginRefused {
            tenant: t,
            reason: r,
            subject: s,
        } => (tenant, reason, subject) = (Some(t), Some(r), s),
        Event::Logout {
            tenant: t,
            user: u,
            session: s,
        }
        | Event::SingleLogout {
            tenant: t,
            user: u,
            session: s,
        } => (tenant, user, session) = (Some(t), Some(u), Some(session_ref(s))),
        Event::SessionRevoked {
            tenant: t,
            user: u,
            session: s,
            reason: r,
        } => {
            (tenant, user, session, reason) = (
                Some(t),
                Some(u),
                Some(session_ref(s)),
                Some(r.map_or("ended_by_admin", RevokeReason::code)),
            );
        }
        Event::UserDeactivated { tenant: t, user: u }
        | Event::UserActivated { tenant: t, user: u } => {
            (tenant, user) = (Some(t), Some(u));
        }
        Event::CompanyCancelled {
            tenant: t,
            group: g,
        } => (tenant, group) = (Some(t), Some(g)),
        Event::MembershipRemoved {
            tenant: t,
            user: u,
            group: g,
        } => (tenant, user, group) = (Some(t), Some(u), Some(g)),
        Event::AdminCall {
            tenant: t,
            method: m,
            path: p,
        } => {
            tenant = t;
            method = Some(m.as_str());
            path = Some(p.split_once('?').map_or(p, |(p, _)| p));
        }
        Event::ConfigReload { result: r } => result = Some(r.as_str()),
    }
    let client = CLIENT_REQUEST_ID.try_with(|c| c.clone()).ok();
    tracing::info!(
        target: TARGET,
        event = event.name(),
        tenant,
        user,
        group,
        session,
        reason,
        subject,
        method,
        path,
        result,
        actor = origin.actor.as_str(),
        request_id = origin.request_id,
        client_request_id = client.as_deref(),
    );
}

/// The metrics an event moves. A session revoked without a reason was ended by an
/// operator (the admin API); one revoked with a reason is counted by that reason, once,
/// whoever found it due (`directory` at the change, or the gate repairing a revocation
/// that did not happen then).
fn count(metrics: &Metrics, event: &Event<'_>) {
    match *event {
        Event::Login { .. } => metrics.login(),
        Event::LoginRefused { reason, .. } => metrics.login_refused(reason),
        Event::Logout { .. } => metrics.session_ended(EndCause::Logout),
        Event::SingleLogout { .. } => metrics.session_ended(EndCause::SingleLogout),
        Event::SessionRevoked { reason, .. } => {
            metrics.session_ended(reason.map_or(EndCause::Admin, EndCause::from))
        }
        Event::ConfigReload { result } => metrics.config_reloaded(result),
        Event::UserDeactivated { .. }
        | Event::UserActivated { .. }
        | Event::CompanyCancelled { .. }
        | Event::MembershipRemoved { .. }
        | Event::AdminCall { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Captures what the JSON formatter (as `telemetry::init` configures it) writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn admin_calls_are_one_json_line_without_the_query() {
        let got = lines(|| {
            record(
                &Metrics::new(),
                &Origin::new(Actor::Admin, "rid-1"),
                Event::AdminCall {
                    tenant: Some("acme"),
                    method: &http::Method::POST,
                    path: "/admin/v1/tenants/acme/users/u-1/deactivate?cursor=c2VjcmV0",
                },
            )
        });
        assert_eq!(got.len(), 1, "{got:?}");
        let l = &got[0];
        assert_eq!(l["target"], TARGET);
        assert_eq!(l["event"], "admin_call");
        assert_eq!(l["actor"], "admin");
        assert_eq!(l["request_id"], "rid-1");
        assert_eq!(l["tenant"], "acme");
        assert_eq!(l["method"], "POST");
        assert_eq!(l["path"], "/admin/v1/tenants/acme/users/u-1/deactivate");
        assert!(!l.to_string().contains("c2VjcmV0"), "{l}");
        // Fields an event does not have are left out, not written empty.
        assert!(l.get("user").is_none() && l.get("client_request_id").is_none());
    }

    #[test]
    fn config_reloads_are_the_system_acting() {
        let got = lines(|| {
            record(
                &Metrics::new(),
                &Origin::system(),
                Event::ConfigReload {
                    result: ReloadResult::Ok,
                },
            );
            record(
                &Metrics::new(),
                &Origin::system(),
                Event::ConfigReload {
                    result: ReloadResult::Error,
                },
            );
        });
        assert_eq!(got.len(), 2, "{got:?}");
        for (l, result) in got.iter().zip(["ok", "error"]) {
            assert_eq!(l["target"], TARGET);
            assert_eq!(l["event"], "config_reload");
            assert_eq!(l["actor"], "system");
            assert_eq!(l["result"], result);
            assert!(l.get("request_id").is_none(), "{l}");
        }
    }

    #[test]
    fn a_client_request_id_is_its_own_field() {
        let got = lines(|| {
            CLIENT_REQUEST_ID.sync_scope("chosen-by-client".into(), || {
                record(
                    &Metrics::new(),
                    &Origin::new(Actor::Scim, "idgate-own"),
                    Event::UserDeactivated {
                        tenant: "acme",
                        user: "u-1",
                    },
                )
            })
        });
        assert_eq!(got[0]["request_id"], "idgate-own");
        assert_eq!(got[0]["client_request_id"], "chosen-by-client");
        assert_eq!(got[0]["user"], "u-1");
        assert_eq!(got[0]["actor"], "scim");
    }

    #[test]
    fn sessions_are_named_by_a_hash_prefix() {
        let hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let got = lines(|| {
            record(
                &Metrics::new(),
                &Origin::system(),
                Event::SessionRevoked {
                    tenant: "acme",
                    user: "u-1",
                    session: hash,
                    reason: Some(RevokeReason::CompanyCancelled),
                },
            )
        });
        assert_eq!(got[0]["session"], "0123456789abcdef");
        assert_eq!(got[0]["reason"], "company_cancelled");
        assert_eq!(session_ref("short"), "short");
    }
}
