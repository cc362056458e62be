//! Prometheus metrics. Request counts and latencies are kept per worker thread (see
//! [`WorkerStats`]) and summed at scrape time, so the hot path writes only memory its own
//! core owns; the rarer counters use the prometheus crate.

use std::time::Duration;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{Encoder, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

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
    config_reloads: IntCounterVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("idgate".into()), None).expect("static prefix is valid");
        let upstream_vec = IntCounterVec::new(
            Opts::new(
                "upstream_errors_total",
                "Failed upstream requests, by kind.",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        let saml_rejections = IntCounterVec::new(
            Opts::new(
                "saml_rejections_total",
                "SAML responses refused, by reason.",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let saml_metadata_refreshes = IntCounterVec::new(
            Opts::new(
                "saml_metadata_refreshes_total",
                "IdP metadata fetches from idp_metadata_url, by tenant and result.",
            ),
            &["tenant", "result"],
        )
        .expect("static metric definition");
        let logins = IntCounter::new("logins_total", "Sessions created by logins.")
            .expect("static metric definition");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "config_reloads_total",
                "Configuration reloads (SIGHUP, watch_config), by result.",
            ),
            &["result"],
        )
        .expect("static metric definition");
        // Both series exist from the start, so an alert on errors sees 0, not nothing.
        for r in ["ok", "error"] {
            config_reloads.with_label_values(&[r]);
        }
        for c in [
            Box::new(upstream_vec.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(saml_rejections.clone()),
            Box::new(saml_metadata_refreshes.clone()),
            Box::new(logins.clone()),
            Box::new(config_reloads.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        let upstream_errors = UPSTREAM_KINDS.map(|k| upstream_vec.with_label_values(&[k.as_str()]));
        Metrics {
            registry,
            workers: Mutex::new(Vec::new()),
            upstream_errors,
            saml_rejections,
            saml_metadata_refreshes,
            logins,
            config_reloads,
        }
    }

    /// Counts a configuration reload, applied (`ok`) or refused.
    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
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

    /// Counts a successful login.
    pub fn login(&self) {
        self.logins.inc();
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
        out
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
