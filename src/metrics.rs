//! Prometheus metrics. Request counts and latencies are kept per worker thread (see
//! [`WorkerStats`]) and summed at scrape time, so the hot path writes only memory its own
//! core owns; the rarer counters use the prometheus crate.
//!
//! Where the operator-facing families are counted, so that a new code path cannot
//! forget them:
//! - logins, refused logins and ended sessions: in [`crate::audit::record`], from the
//!   audit event every such change writes already;
//! - store calls: in [`crate::store::Store`]'s delegation to its backend, which every
//!   call passes through;
//! - open tunnels: read at scrape time from the gateway's [`Tunnels`] registry;
//! - job queues: by the job loop ([`crate::jobs::spawn`]), never by a scrape, so that a
//!   scrape never waits on the store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

use crate::proxy::tunnel::Tunnels;
use crate::session::model::RevokeReason;

/// Which part of idgate answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// A protected path: needs a session, forwarded with identity.
    Proxied,
    /// Under `/_idgate/` (or `/maestrano/`): handled by idgate.
    Reserved,
    /// A `public_paths` prefix: forwarded without identity.
    Public,
}

impl RouteClass {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Proxied => "proxied",
            RouteClass::Reserved => "reserved",
            RouteClass::Public => "public",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Why a request to the upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// TCP connect refused or timed out.
    Connect,
    /// No response headers within `upstream_timeout`.
    Timeout,
    /// The connection broke or the upstream spoke bad HTTP.
    Protocol,
}

impl UpstreamErrorKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}

/// Why a session ended before its time: the `cause` label of
/// `idgate_session_revocations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// The user was deactivated or deprovisioned.
    AccountDeactivated,
    /// The user's company was cancelled.
    CompanyCancelled,
    /// The user left the company the session was for.
    RemovedFromCompany,
    /// An operator ended it through the admin API.
    Admin,
    /// The person logged out.
    Logout,
    /// The IdP ended it through SAML Single Logout.
    SingleLogout,
}

impl EndCause {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            EndCause::AccountDeactivated => "account_deactivated",
            EndCause::CompanyCancelled => "company_cancelled",
            EndCause::RemovedFromCompany => "removed_from_company",
            EndCause::Admin => "admin",
            EndCause::Logout => "logout",
            EndCause::SingleLogout => "single_logout",
        }
    }
}

impl From<RevokeReason> for EndCause {
    fn from(r: RevokeReason) -> EndCause {
        match r {
            RevokeReason::AccountDeactivated => EndCause::AccountDeactivated,
            RevokeReason::CompanyCancelled => EndCause::CompanyCancelled,
            RevokeReason::RemovedFromCompany => EndCause::RemovedFromCompany,
        }
    }
}

const END_CAUSES: [EndCause; 6] = [
    EndCause::AccountDeactivated,
    EndCause::CompanyCancelled,
    EndCause::RemovedFromCompany,
    EndCause::Admin,
    EndCause::Logout,
    EndCause::SingleLogout,
];

/// Which kind of store call (the `op` label of the store families): one per store
/// trait, plus the readiness probe's `PING`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// Users, groups and their indexes.
    Directory,
    /// Sessions.
    Session,
    /// Short-lived one-shot values (SAML request ids, replay cache).
    Ephemeral,
    /// The durable job queue.
    Queue,
    /// Small durable records (bills, Connec! ids, IdP metadata).
    Records,
    /// Publishing an invalidation to every replica.
    Publish,
    /// The readiness probe's round trip.
    Ping,
}

impl StoreOp {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Directory => "directory",
            StoreOp::Session => "session",
            StoreOp::Ephemeral => "ephemeral",
            StoreOp::Queue => "queue",
            StoreOp::Records => "records",
            StoreOp::Publish => "publish",
            StoreOp::Ping => "ping",
        }
    }
}

const STORE_OPS: [StoreOp; 7] = [
    StoreOp::Directory,
    StoreOp::Session,
    StoreOp::Ephemeral,
    StoreOp::Queue,
    StoreOp::Records,
    StoreOp::Publish,
    StoreOp::Ping,
];

/// Upper bounds (seconds) of the store round-trip histogram: a Redis round trip on a
/// healthy network is well under a millisecond; a second is an outage.
const STORE_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// Refusal reasons whose series exist from the start (at 0), so that an alert on
/// `increase()` sees the first one: a series that appears at 1 shows no increase. Any
/// other reason is counted too, from its first occurrence.
const LOGIN_FAILURE_REASONS: [&str; 11] = [
    "signature",
    "replay",
    "expired",
    "unknown_request",
    "malformed",
    "not_provisioned",
    "account_deactivated",
    "company_cancelled",
    "removed_from_company",
    "store_unavailable",
    "internal",
];

/// One durable queue's backlog, as the job loop last read it from the store (see
/// [`crate::jobs::spawn`]). Plain atomics: written every few seconds by one task, read
/// by a scrape.
#[derive(Default)]
pub struct QueueGauges {
    depth: AtomicI64,
    /// Unix milliseconds at which the oldest job not yet done was enqueued; 0 when none.
    oldest_ms: AtomicI64,
}

impl QueueGauges {
    /// Records what the store said: `depth` jobs not yet done, the oldest enqueued at
    /// `oldest` (none when the queue is empty).
    pub fn set(&self, depth: u64, oldest: Option<SystemTime>) {
        self.depth
            .store(i64::try_from(depth).unwrap_or(i64::MAX), Ordering::Relaxed);
        let ms = oldest
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| {
                i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
            });
        self.oldest_ms.store(ms, Ordering::Relaxed);
    }

    /// Seconds since the oldest job was enqueued, as of `now`: it keeps growing between
    /// two reads of the store, as a stuck job's age does.
    fn oldest_age(&self, now: SystemTime) -> f64 {
        let ms = self.oldest_ms.load(Ordering::Relaxed);
        if ms == 0 {
            return 0.0;
        }
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        (now_ms - ms).max(0) as f64 / 1000.0
    }
}

const ROUTES: [RouteClass; 3] = [
    RouteClass::Proxied,
    RouteClass::Reserved,
    RouteClass::Public,
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const UPSTREAM_KINDS: [UpstreamErrorKind; 3] = [
    UpstreamErrorKind::Connect,
    UpstreamErrorKind::Timeout,
    UpstreamErrorKind::Protocol,
];

/// Upper bounds (seconds) of the request-duration histogram buckets.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// One worker thread's request counters. Only that worker writes them (plain load and
/// store, no locked read-modify-write), so the hot path never bounces a cache line
/// between cores; a scrape sums every worker's shard. Aligned so two shards never
/// share a cache line.
#[repr(align(128))]
#[derive(Default)]
pub struct WorkerStats {
    requests: [[AtomicU64; 5]; 3],
    /// Per route: one count per bucket, plus one for "over the last bound".
    buckets: [[AtomicU64; BUCKETS.len() + 1]; 3],
    sum_micros: [AtomicU64; 3],
    in_flight: AtomicI64,
}

#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    // Single writer: a plain load and store is enough and needs no bus lock.
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

impl WorkerStats {
    /// Counts one answered request.
    pub fn record(&self, route: RouteClass, status: http::StatusCode, elapsed: Duration) {
        let r = route.index();
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        bump(&self.requests[r][class], 1);
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        bump(&self.buckets[r][bucket], 1);
        bump(&self.sum_micros[r], elapsed.as_micros() as u64);
    }

    /// Marks a request in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight<'_> {
        let v = &self.in_flight;
        v.store(v.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        InFlight(v)
    }
}

/// Decrements the in-flight count on drop, whichever way the request ends.
pub struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .store(self.0.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
    }
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    workers: Mutex<Vec<Arc<WorkerStats>>>,
    upstream_errors: [IntCounter; 3],
    saml_rejections: IntCounterVec,
    saml_metadata_refreshes: IntCounterVec,
    logins: IntCounter,
    login_failures: IntCounterVec,
    revocations: [IntCounter; 6],
    config_reloads: [IntCounter; 2],
    store_durations: [Histogram; 7],
    store_errors: [IntCounter; 7],
    /// The gateway's tunnels, read at scrape time (set once the gateway exists).
    tunnels: OnceLock<Arc<Tunnels>>,
    /// The public listener's connection bound, read at scrape time.
    connections: OnceLock<Arc<crate::server::ConnectionLimit>>,
    /// Durable queues by name, in registration order.
    queues: Mutex<Vec<(&'static str, Arc<QueueGauges>)>>,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("idgate".into()), None).expect("static prefix is valid");
        let upstream_vec = counter_vec(
            "upstream_errors_total",
            "Failed upstream requests, by kind.",
            &["kind"],
        );
        let saml_rejections = counter_vec(
            "saml_rejections_total",
            "SAML responses refused, by reason.",
            &["reason"],
        );
        let saml_metadata_refreshes = counter_vec(
            "saml_metadata_refreshes_total",
            "IdP metadata fetches from idp_metadata_url, by tenant and result.",
            &["tenant", "result"],
        );
        let logins = IntCounter::new("logins_total", "Sessions created by logins.")
            .expect("static metric definition");
        let login_failures = counter_vec(
            "login_failures_total",
            "Logins refused, by reason (every protocol: SAML, Maestrano).",
            &["reason"],
        );
        let revocations_vec = counter_vec(
            "session_revocations_total",
            "Sessions ended or revoked before their time, by cause.",
            &["cause"],
        );
        let reloads_vec = counter_vec(
            "config_reloads_total",
            "Configuration reloads tried, by result.",
            &["result"],
        );
        let store_duration_vec = HistogramVec::new(
            HistogramOpts::new(
                "store_duration_seconds",
                "Time of one store call (a Redis round trip), by kind of call.",
            )
            .buckets(STORE_BUCKETS.to_vec()),
            &["op"],
        )
        .expect("static metric definition");
        let store_errors_vec = counter_vec(
            "store_errors_total",
            "Store calls that failed (unreachable, or a record it could not read), by kind of call.",
            &["op"],
        );
        for c in [
            Box::new(upstream_vec.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(saml_rejections.clone()),
            Box::new(saml_metadata_refreshes.clone()),
            Box::new(logins.clone()),
            Box::new(login_failures.clone()),
            Box::new(revocations_vec.clone()),
            Box::new(reloads_vec.clone()),
            Box::new(store_duration_vec.clone()),
            Box::new(store_errors_vec.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        // Resolved once, so that counting is an index, not a label hash; and every
        // series exists from the start, at 0, for `increase()` to see its first event.
        let upstream_errors = UPSTREAM_KINDS.map(|k| upstream_vec.with_label_values(&[k.as_str()]));
        for reason in LOGIN_FAILURE_REASONS {
            login_failures.with_label_values(&[reason]);
        }
        let revocations = END_CAUSES.map(|c| revocations_vec.with_label_values(&[c.as_str()]));
        let config_reloads = ["ok", "error"].map(|r| reloads_vec.with_label_values(&[r]));
        let store_durations =
            STORE_OPS.map(|o| store_duration_vec.with_label_values(&[o.as_str()]));
        let store_errors = STORE_OPS.map(|o| store_errors_vec.with_label_values(&[o.as_str()]));
        let metrics = Metrics {
            registry,
            workers: Mutex::new(Vec::new()),
            upstream_errors,
            saml_rejections,
            saml_metadata_refreshes,
            logins,
            login_failures,
            revocations,
            config_reloads,
            store_durations,
            store_errors,
            tunnels: OnceLock::new(),
            connections: OnceLock::new(),
            queues: Mutex::new(Vec::new()),
        };
        // The Maestrano queues exist whether or not a Maestrano tenant does, so that
        // dashboards and alerts see 0 rather than nothing.
        metrics.queue(crate::maestrano::worker::BILLING_QUEUE);
        metrics.queue(crate::maestrano::worker::CONNEC_QUEUE);
        metrics
    }

    /// A new shard for one worker thread.
    pub fn worker(&self) -> Arc<WorkerStats> {
        let stats = Arc::new(WorkerStats::default());
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stats.clone());
        stats
    }

    /// Counts one upstream failure.
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].inc();
    }

    /// Counts a refused SAML response.
    pub fn saml_rejected(&self, reason: &str) {
        self.saml_rejections.with_label_values(&[reason]).inc();
    }

    /// Counts one fetch of a tenant's IdP metadata; `result` is `ok` or why the
    /// document was not taken (see `saml::metadata::MetadataError::result`).
    pub fn saml_metadata_refresh(&self, tenant: &str, result: &str) {
        self.saml_metadata_refreshes
            .with_label_values(&[tenant, result])
            .inc();
    }

    /// Makes tenant `tenant`'s refresh series exist at 0 for every result, so that an
    /// alert on `increase()` sees its first failure. Called when its refresher starts.
    pub fn saml_metadata_tenant(&self, tenant: &str) {
        for result in ["ok", "error", "invalid", "signature", "expired"] {
            self.saml_metadata_refreshes
                .with_label_values(&[tenant, result]);
        }
    }

    /// Counts a successful login. Called by [`crate::audit::record`] for every
    /// `login` event, so login code does not call it itself.
    pub fn login(&self) {
        self.logins.inc();
    }

    /// Counts a refused login; `reason` is the code the audit line and the refusal page
    /// carry. Called by [`crate::audit::record`] for every `login_refused` event.
    pub fn login_refused(&self, reason: &str) {
        self.login_failures.with_label_values(&[reason]).inc();
    }

    /// Counts a session ended or revoked before its time. Called by
    /// [`crate::audit::record`] for every `logout`, `single_logout` and
    /// `session_revoked` event.
    pub fn session_ended(&self, cause: EndCause) {
        self.revocations[cause as usize].inc();
    }

    /// Counts a configuration reload (`idgate_config_reloads_total`, SPEC §10). Called
    /// by [`crate::audit::record`] for every `config_reload` event: the reload writes
    /// that event (with [`crate::audit::Origin::system`]) and is counted by it, so it
    /// must not call this as well.
    pub fn config_reloaded(&self, result: crate::audit::ReloadResult) {
        let i = match result {
            crate::audit::ReloadResult::Ok => 0,
            crate::audit::ReloadResult::Error => 1,
        };
        self.config_reloads[i].inc();
    }

    /// Counts one store call that took `elapsed` and failed or not. Called by
    /// [`crate::store::Store`] around every call to its backend.
    #[inline]
    pub fn store_call(&self, op: StoreOp, elapsed: Duration, failed: bool) {
        self.store_durations[op as usize].observe(elapsed.as_secs_f64());
        if failed {
            self.store_errors[op as usize].inc();
        }
    }

    /// Reports `tunnels` as `idgate_tunnels_open` from now on. The first call wins: one
    /// process serves one gateway.
    pub fn watch_tunnels(&self, tunnels: Arc<Tunnels>) {
        let _ = self.tunnels.set(tunnels);
    }

    /// Reports the public listener's open connections and its limit from now on. The
    /// first call wins.
    pub fn watch_connections(&self, limit: Arc<crate::server::ConnectionLimit>) {
        let _ = self.connections.set(limit);
    }

    /// The gauges of durable queue `name`, created on first use; the job loop of that
    /// queue keeps them up to date.
    pub fn queue(&self, name: &'static str) -> Arc<QueueGauges> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, g)) = queues.iter().find(|(n, _)| *n == name) {
            return g.clone();
        }
        let g = Arc::new(QueueGauges::default());
        queues.push((name, g.clone()));
        g
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a failure would be a metric bug.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        let mut out = String::from_utf8(buf).unwrap_or_default();
        self.encode_requests(&mut out);
        self.encode_gauges(&mut out);
        out
    }

    /// The gauges read from elsewhere at scrape time: open tunnels, queue backlogs.
    fn encode_gauges(&self, out: &mut String) {
        use std::fmt::Write;
        if let Some(limit) = self.connections.get() {
            let _ = writeln!(
                out,
                "# HELP idgate_connections_open Client connections open on the public listener.\n\
                 # TYPE idgate_connections_open gauge\n\
                 idgate_connections_open {}\n\
                 # HELP idgate_connections_max The public listener's max_connections.\n\
                 # TYPE idgate_connections_max gauge\n\
                 idgate_connections_max {}\n\
                 # HELP idgate_connection_limit_reached_total Times a new connection had to wait because max_connections were open.\n\
                 # TYPE idgate_connection_limit_reached_total counter\n\
                 idgate_connection_limit_reached_total {}\n\
                 # HELP idgate_connections_parked Idle HTTP/1 keep-alive connections holding no buffers (a subset of the open ones).\n\
                 # TYPE idgate_connections_parked gauge\n\
                 idgate_connections_parked {}",
                limit.open(),
                limit.max(),
                limit.times_reached(),
                limit.parked()
            );
        }
        let open = self.tunnels.get().map_or(0, |t| t.open());
        let _ = writeln!(
            out,
            "# HELP idgate_tunnels_open Upgraded connections (WebSocket) open through this replica.\n\
             # TYPE idgate_tunnels_open gauge\n\
             idgate_tunnels_open {open}"
        );
        let queues = self
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let _ = writeln!(
            out,
            "# HELP idgate_job_queue_depth Jobs not yet done in a durable queue (waiting or being worked on), as the job loop last read it; the same on every replica.\n\
             # TYPE idgate_job_queue_depth gauge"
        );
        for (name, g) in &queues {
            let depth = g.depth.load(Ordering::Relaxed);
            let _ = writeln!(out, "idgate_job_queue_depth{{queue=\"{name}\"}} {depth}");
        }
        let _ = writeln!(
            out,
            "# HELP idgate_job_queue_oldest_age_seconds Age of the oldest job not yet done in a durable queue; 0 when it is empty.\n\
             # TYPE idgate_job_queue_oldest_age_seconds gauge"
        );
        let now = SystemTime::now();
        for (name, g) in &queues {
            let age = g.oldest_age(now);
            let _ = writeln!(
                out,
                "idgate_job_queue_oldest_age_seconds{{queue=\"{name}\"}} {age}"
            );
        }
    }

    /// The per-worker families, summed across workers.
    fn encode_requests(&self, out: &mut String) {
        use std::fmt::Write;
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let sum = |f: &dyn Fn(&WorkerStats) -> u64| workers.iter().map(|w| f(w)).sum::<u64>();
        let _ = writeln!(
            out,
            "# HELP idgate_in_flight_requests Requests being handled now."
        );
        let _ = writeln!(out, "# TYPE idgate_in_flight_requests gauge");
        let in_flight: i64 = workers
            .iter()
            .map(|w| w.in_flight.load(Ordering::Relaxed))
            .sum();
        let _ = writeln!(out, "idgate_in_flight_requests {in_flight}");
        let _ = writeln!(
            out,
            "# HELP idgate_request_duration_seconds Time from request received to response headers sent, by route class."
        );
        let _ = writeln!(out, "# TYPE idgate_request_duration_seconds histogram");
        for route in ROUTES {
            let r = route.index();
            let mut cumulative = 0u64;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += sum(&|w| w.buckets[r][i].load(Ordering::Relaxed));
                let _ = writeln!(
                    out,
                    "idgate_request_duration_seconds_bucket{{route=\"{}\",le=\"{bound}\"}} {cumulative}",
                    route.as_str()
                );
            }
            cumulative += sum(&|w| w.buckets[r][BUCKETS.len()].load(Ordering::Relaxed));
            let micros = sum(&|w| w.sum_micros[r].load(Ordering::Relaxed));
            let _ = writeln!(
                out,
                "idgate_request_duration_seconds_bucket{{route=\"{0}\",le=\"+Inf\"}} {cumulative}\n\
                 idgate_request_duration_seconds_sum{{route=\"{0}\"}} {1}\n\
                 idgate_request_duration_seconds_count{{route=\"{0}\"}} {cumulative}",
                route.as_str(),
                micros as f64 / 1e6
            );
        }
        let _ = writeln!(
            out,
            "# HELP idgate_requests_total Requests answered, by route class and status class."
        );
        let _ = writeln!(out, "# TYPE idgate_requests_total counter");
        for route in ROUTES {
            for (c, class) in STATUS_CLASSES.iter().enumerate() {
                let n = sum(&|w| w.requests[route.index()][c].load(Ordering::Relaxed));
                let _ = writeln!(
                    out,
                    "idgate_requests_total{{route=\"{}\",status=\"{class}\"}} {n}",
                    route.as_str()
                );
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{self, Event, Origin, ReloadResult};

    /// The value of one series (its name with labels, as exposed), or None if absent.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.trim().parse().expect("a number"))
    }

    #[test]
    fn every_operator_family_is_exposed_before_anything_happens() {
        let text = Metrics::new().encode();
        let mut series = vec![
            "idgate_logins_total".to_owned(),
            "idgate_login_failures_total{reason=\"signature\"}".into(),
            "idgate_login_failures_total{reason=\"account_deactivated\"}".into(),
            "idgate_config_reloads_total{result=\"ok\"}".into(),
            "idgate_config_reloads_total{result=\"error\"}".into(),
            "idgate_tunnels_open".into(),
        ];
        for c in END_CAUSES {
            series.push(format!(
                "idgate_session_revocations_total{{cause=\"{}\"}}",
                c.as_str()
            ));
        }
        for o in STORE_OPS {
            series.push(format!(
                "idgate_store_errors_total{{op=\"{}\"}}",
                o.as_str()
            ));
            series.push(format!(
                "idgate_store_duration_seconds_count{{op=\"{}\"}}",
                o.as_str()
            ));
        }
        for q in ["maestrano-billing", "maestrano-connec"] {
            series.push(format!("idgate_job_queue_depth{{queue=\"{q}\"}}"));
            series.push(format!(
                "idgate_job_queue_oldest_age_seconds{{queue=\"{q}\"}}"
            ));
        }
        for s in &series {
            assert_eq!(value(&text, s), Some(0.0), "{s} missing or not 0:\n{text}");
        }
        for family in [
            "idgate_tunnels_open gauge",
            "idgate_job_queue_depth gauge",
            "idgate_job_queue_oldest_age_seconds gauge",
            "idgate_store_duration_seconds histogram",
        ] {
            assert!(text.contains(&format!("# TYPE {family}")), "{family}");
        }
    }

    #[test]
    fn metrics_move_with_the_audit_events_that_count_them() {
        let m = Metrics::new();
        let by = Origin::system();
        let session = "0123456789abcdef0123456789abcdef";
        for event in [
            Event::Login {
                tenant: "acme",
                user: "u",
                group: "g",
            },
            Event::LoginRefused {
                tenant: "acme",
                reason: "not_provisioned",
                subject: None,
            },
            Event::LoginRefused {
                tenant: "acme",
                reason: "some_new_reason",
                subject: None,
            },
            Event::Logout {
                tenant: "acme",
                user: "u",
                session,
            },
            Event::SingleLogout {
                tenant: "acme",
                user: "u",
                session,
            },
            Event::SessionRevoked {
                tenant: "acme",
                user: "u",
                session,
                reason: None,
            },
            Event::SessionRevoked {
                tenant: "acme",
                user: "u",
                session,
                reason: Some(RevokeReason::RemovedFromCompany),
            },
            Event::SessionRevoked {
                tenant: "acme",
                user: "u",
                session,
                reason: Some(RevokeReason::RemovedFromCompany),
            },
            Event::ConfigReload {
                result: ReloadResult::Error,
            },
            // Not a session ending: counts nothing by itself.
            Event::UserDeactivated {
                tenant: "acme",
                user: "u",
            },
        ] {
            audit::record(&m, &by, event);
        }
        let text = m.encode();
        for (series, want) in [
            ("idgate_logins_total", 1.0),
            (
                "idgate_login_failures_total{reason=\"not_provisioned\"}",
                1.0,
            ),
            (
                "idgate_login_failures_total{reason=\"some_new_reason\"}",
                1.0,
            ),
            ("idgate_login_failures_total{reason=\"signature\"}", 0.0),
            ("idgate_session_revocations_total{cause=\"logout\"}", 1.0),
            (
                "idgate_session_revocations_total{cause=\"single_logout\"}",
                1.0,
            ),
            ("idgate_session_revocations_total{cause=\"admin\"}", 1.0),
            (
                "idgate_session_revocations_total{cause=\"removed_from_company\"}",
                2.0,
            ),
            (
                "idgate_session_revocations_total{cause=\"account_deactivated\"}",
                0.0,
            ),
            ("idgate_config_reloads_total{result=\"error\"}", 1.0),
            ("idgate_config_reloads_total{result=\"ok\"}", 0.0),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series}:\n{text}");
        }
    }

    #[test]
    fn store_metrics_count_calls_and_failures_by_kind() {
        let m = Metrics::new();
        m.store_call(StoreOp::Session, Duration::from_micros(300), false);
        m.store_call(StoreOp::Session, Duration::from_millis(2), true);
        m.store_call(StoreOp::Ping, Duration::from_secs(3), true);
        let text = m.encode();
        for (series, want) in [
            ("idgate_store_duration_seconds_count{op=\"session\"}", 2.0),
            (
                "idgate_store_duration_seconds_bucket{op=\"session\",le=\"0.0005\"}",
                1.0,
            ),
            (
                "idgate_store_duration_seconds_bucket{op=\"session\",le=\"+Inf\"}",
                2.0,
            ),
            ("idgate_store_errors_total{op=\"session\"}", 1.0),
            ("idgate_store_errors_total{op=\"ping\"}", 1.0),
            ("idgate_store_errors_total{op=\"directory\"}", 0.0),
            (
                "idgate_store_duration_seconds_bucket{op=\"ping\",le=\"1\"}",
                0.0,
            ),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series}:\n{text}");
        }
    }

    #[test]
    fn queue_metrics_age_from_the_oldest_job_and_zero_when_empty() {
        let m = Metrics::new();
        let g = m.queue("maestrano-connec");
        assert!(Arc::ptr_eq(&g, &m.queue("maestrano-connec")));
        let enqueued = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        g.set(3, Some(enqueued));
        assert_eq!(g.oldest_age(enqueued + Duration::from_millis(90_500)), 90.5);
        // A clock behind the store's never makes a negative age.
        assert_eq!(g.oldest_age(enqueued - Duration::from_secs(5)), 0.0);
        let text = m.encode();
        assert_eq!(
            value(&text, "idgate_job_queue_depth{queue=\"maestrano-connec\"}"),
            Some(3.0)
        );
        g.set(0, None);
        assert_eq!(g.oldest_age(SystemTime::now()), 0.0);
        let text = m.encode();
        assert_eq!(
            value(&text, "idgate_job_queue_depth{queue=\"maestrano-connec\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn the_tunnels_gauge_reads_the_registry_at_scrape_time() {
        let m = Metrics::new();
        let tunnels = Tunnels::new();
        m.watch_tunnels(tunnels.clone());
        let slot = tunnels.enter();
        let _other = tunnels.enter();
        assert_eq!(value(&m.encode(), "idgate_tunnels_open"), Some(2.0));
        drop(slot);
        assert_eq!(value(&m.encode(), "idgate_tunnels_open"), Some(1.0));
    }
}
