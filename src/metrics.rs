//! Prometheus metrics. Every label combination is resolved once at start-up, so the hot
//! path only touches atomics: no map lookups, no locks.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

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

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    requests: [[IntCounter; 5]; 3],
    duration: [Histogram; 3],
    upstream_errors: [IntCounter; 3],
    in_flight: IntGauge,
    saml_rejections: IntCounterVec,
    logins: IntCounter,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("idgate".into()), None).expect("static prefix is valid");
        let requests_vec = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Requests answered, by route class and status class.",
            ),
            &["route", "status"],
        )
        .expect("static metric definition");
        let duration_vec = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from request received to response headers sent, by route class.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ]),
            &["route"],
        )
        .expect("static metric definition");
        let upstream_vec = IntCounterVec::new(
            Opts::new(
                "upstream_errors_total",
                "Failed upstream requests, by kind.",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        let in_flight = IntGauge::new("in_flight_requests", "Requests being handled now.")
            .expect("static metric definition");
        let saml_rejections = IntCounterVec::new(
            Opts::new(
                "saml_rejections_total",
                "SAML responses refused, by reason.",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let logins = IntCounter::new("logins_total", "Sessions created by logins.")
            .expect("static metric definition");
        for c in [
            Box::new(requests_vec.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration_vec.clone()),
            Box::new(upstream_vec.clone()),
            Box::new(in_flight.clone()),
            Box::new(saml_rejections.clone()),
            Box::new(logins.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        let requests = ROUTES
            .map(|r| STATUS_CLASSES.map(|s| requests_vec.with_label_values(&[r.as_str(), s])));
        let duration = ROUTES.map(|r| duration_vec.with_label_values(&[r.as_str()]));
        let upstream_errors = UPSTREAM_KINDS.map(|k| upstream_vec.with_label_values(&[k.as_str()]));
        Metrics {
            registry,
            requests,
            duration,
            upstream_errors,
            in_flight,
            saml_rejections,
            logins,
        }
    }

    /// Counts a refused SAML response.
    pub fn saml_rejected(&self, reason: &str) {
        self.saml_rejections.with_label_values(&[reason]).inc();
    }

    /// Counts a successful login.
    pub fn login(&self) {
        self.logins.inc();
    }

    /// Counts one answered request.
    pub fn record(&self, route: RouteClass, status: http::StatusCode, elapsed: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[route.index()][class].inc();
        self.duration[route.index()].observe(elapsed.as_secs_f64());
    }

    /// Counts one upstream failure.
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].inc();
    }

    /// Marks a request in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a failure would be a metric bug.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Decrements the in-flight gauge on drop, whichever way the request ends.
pub struct InFlight<'a>(&'a IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
