//! Logging and tracing. Logs are JSON lines by default, text on request, filtered by
//! `IDGATE_LOG`. Tracing (SPEC §10) exports OpenTelemetry spans as OTLP/HTTP protobuf,
//! and only when `[telemetry].otlp_endpoint` is set.
//!
//! Off (the default) must cost the proxied path nothing measurable, so spans are built in
//! layers of "no":
//! - every span is made through [`span!`], which checks one process-wide flag
//!   ([`enabled`]) and otherwise yields [`tracing::Span::none`] (no subscriber call, no
//!   allocation), and instrumenting with such a span ([`traced`]) is a branch, not a
//!   wrapper;
//! - sampling is decided before any span exists ([`request_span`], [`root_span`]): a
//!   request that is not sampled makes no span at all, only a `traceparent` for the app,
//!   and [`span!`] makes a span only inside a sampled one. So at `sample_ratio = 0.01`
//!   ninety-nine requests in a hundred cost about what they cost with tracing off, where
//!   building spans only to drop them at export would cost all of them alike;
//! - the spans use their own target ([`TARGET`]) that the log's filter always turns off,
//!   so a span never reaches a log line (nor its fields: they may name a tenant or a
//!   path), whatever `IDGATE_LOG` says, and the log's events never become span events.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::Either;
use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::TelemetryConfig;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    Json,
    /// Human-readable text.
    Text,
}

/// The filter used when `IDGATE_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info";

/// The target of every span idgate exports: only the OpenTelemetry layer takes it.
pub const TARGET: &str = "idgate::otel";

/// Spans waiting for export; beyond this many, new ones are dropped (a slow or absent
/// collector never holds up a request).
const QUEUE: usize = 4096;
/// Spans per OTLP request.
const BATCH: usize = 512;
/// How long one export may take, retries included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for the last spans to go out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

static ENABLED: AtomicBool = AtomicBool::new(false);
/// `sample_ratio` as a bound on a random `u64` (see [`sample_root`]).
static SAMPLE_BELOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether spans are being made and exported in this process. Read on every request, so
/// it is one relaxed load.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A child span on [`TARGET`] inside the sampled span the code runs in, or
/// [`tracing::Span::none`] when tracing is off or the request is not sampled (the fields
/// are then not even evaluated). Field names follow OpenTelemetry's semantic conventions
/// (`http.request.method`, `url.path`, …); `otel.kind` sets the span kind.
#[macro_export]
macro_rules! otel_span {
    ($name:literal $(, $($fields:tt)*)?) => {
        if $crate::telemetry::in_trace() {
            ::tracing::info_span!(target: "idgate::otel", $name $(, $($fields)*)?)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// Like [`span!`], but a span that may start a trace of its own (work that no request
/// asked for, such as a background call to Maestrano): outside a trace it is made when
/// [`sample_root`] says so.
#[macro_export]
macro_rules! otel_root_span {
    ($name:literal $(, $($fields:tt)*)?) => {
        if $crate::telemetry::enabled()
            && ($crate::telemetry::in_trace() || $crate::telemetry::sample_root())
        {
            ::tracing::info_span!(target: "idgate::otel", $name $(, $($fields)*)?)
        } else {
            ::tracing::Span::none()
        }
    };
}
/// `$fut.await`, inside `$span` when it is not none. For the request path: a future
/// handed to [`traced`] is moved into its wrapper and then into the caller's state, and
/// each move is a copy of the whole future (kilobytes on the proxied path, measured as
/// most of the path's `memcpy`) with storage reserved for every copy. Here the untraced
/// case awaits the call in place, and only a sampled request pays for a boxed wrapper.
#[macro_export]
macro_rules! otel_traced_await {
    ($span:expr, $fut:expr) => {
        if $span.is_none() {
            $fut.await
        } else {
            ::std::boxed::Box::pin(::tracing::Instrument::instrument($fut, $span.clone())).await
        }
    };
}
pub use crate::otel_root_span as root_span;
pub use crate::otel_span as span;
pub use crate::otel_traced_await as traced_await;

/// `fut` inside `span`, or `fut` alone when the span is none (tracing off): no wrapper
/// then, only the branch.
pub fn traced<F: Future>(
    fut: F,
    span: &tracing::Span,
) -> Either<tracing::instrument::Instrumented<F>, F> {
    if span.is_none() {
        Either::Right(fut)
    } else {
        Either::Left(fut.instrument(span.clone()))
    }
}

/// Whether the code runs inside one of idgate's spans, which exist only in sampled
/// traces: [`span!`] makes child spans only there.
pub fn in_trace() -> bool {
    enabled()
        && tracing::Span::current()
            .metadata()
            .is_some_and(|m| m.target() == TARGET)
}

/// Whether a trace that nobody else started is recorded: true for a share
/// `sample_ratio` of calls.
pub fn sample_root() -> bool {
    rand::random::<u64>() < SAMPLE_BELOW.load(Ordering::Relaxed)
}

/// The span of a request on the public listener, when it is sampled: it continues the
/// trace of the client's W3C `traceparent` (and `tracestate`) when it sends a valid one,
/// and follows that trace's sampling decision; a new trace is sampled at
/// `sample_ratio`. A request that is not sampled gets no span: its `traceparent` (the
/// client's trace, or a new one) is rewritten here to name a span of idgate's, not
/// sampled, so the app still joins the trace. `path` is the path alone: a query string
/// can carry tokens.
pub fn request_span(
    method: &http::Method,
    path: &str,
    headers: &mut HeaderMap,
) -> Option<tracing::Span> {
    use opentelemetry::trace::TraceContextExt as _;
    let propagator = TraceContextPropagator::new();
    let parent = headers
        .contains_key("traceparent")
        .then(|| propagator.extract(&HeaderExtractor(headers)))
        .filter(|cx| cx.span().span_context().is_valid());
    let sampled = match &parent {
        Some(cx) => cx.span().span_context().is_sampled(),
        None => sample_root(),
    };
    if !sampled {
        let trace_id = parent.as_ref().map_or_else(
            || opentelemetry::trace::TraceId::from(rand::random::<u128>().max(1)),
            |cx| cx.span().span_context().trace_id(),
        );
        let ours = opentelemetry::trace::SpanContext::new(
            trace_id,
            opentelemetry::trace::SpanId::from(rand::random::<u64>().max(1)),
            opentelemetry::trace::TraceFlags::default(),
            false,
            parent
                .as_ref()
                .map(|cx| cx.span().span_context().trace_state().clone())
                .unwrap_or_default(),
        );
        headers.remove("traceparent");
        headers.remove("tracestate");
        propagator.inject_context(
            &opentelemetry::Context::new().with_remote_span_context(ours),
            &mut HeaderInjector(headers),
        );
        return None;
    }
    let span = tracing::info_span!(
        target: "idgate::otel",
        "idgate.request",
        otel.kind = "server",
        http.request.method = method.as_str(),
        url.path = path,
        http.response.status_code = tracing::field::Empty,
        idgate.route = tracing::field::Empty,
        idgate.tenant = tracing::field::Empty,
    );
    if let Some(parent) = parent {
        // Only fails without the OpenTelemetry layer, when there is no span either.
        let _ = span.set_parent(parent);
    }
    Some(span)
}

/// Replaces the client's `traceparent` and `tracestate` with `span`'s own: the upstream
/// sees the same trace id, with idgate's span as the parent.
pub fn inject(headers: &mut HeaderMap, span: &tracing::Span) {
    headers.remove("traceparent");
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// Notes the tenant on the span the code runs in (the request's, or a protocol's).
pub fn record_tenant(tenant: &str) {
    if enabled() {
        tracing::Span::current().record("idgate.tenant", tenant);
    }
}

/// What shuts tracing down: flushes the spans still queued.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still queued (waiting up to a few seconds) and stops exporting.
    /// Call it after the server has stopped, outside the async runtime.
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            ENABLED.store(false, Ordering::Relaxed);
            if let Err(e) = p.shutdown_with_timeout(FLUSH_TIMEOUT) {
                tracing::warn!(error = %e, "tracing: the last spans may not have been exported");
            }
        }
    }
}

/// Installs the global subscriber: logs to stdout, as containers expect, and spans to
/// the OTLP collector when `telemetry` names one.
pub fn init(format: LogFormat, telemetry: Option<&TelemetryConfig>) -> Telemetry {
    let filter = log_filter();
    let exporter = telemetry.and_then(|t| Some((t, t.traces_url()?)));
    let Some((config, url)) = exporter else {
        // Exactly the subscriber idgate had before tracing: no per-layer filtering, which
        // would cost every log event a little.
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stdout)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
        // A second init (tests that start several apps in one process) is harmless.
        let _ = match format {
            LogFormat::Json => builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .try_init(),
            LogFormat::Text => builder.try_init(),
        };
        return Telemetry { provider: None };
    };
    let provider = match provider(config, url) {
        Ok(p) => p,
        Err(e) => {
            let t = init(format, None);
            tracing::error!(error = %e, "tracing is off: cannot set up the OTLP exporter");
            return t;
        }
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stdout)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let fmt = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("idgate"))
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        // Only idgate's spans; log events stay in the log (they are not span events).
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE),
        );
    let installed = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .is_ok();
    if installed {
        // The ratio as a share of u64's range; 1.0 is every value.
        let below = if config.sample_ratio >= 1.0 {
            u64::MAX
        } else {
            (config.sample_ratio * u64::MAX as f64) as u64
        };
        SAMPLE_BELOW.store(below, Ordering::Relaxed);
        ENABLED.store(true, Ordering::Relaxed);
        tracing::info!(
            endpoint = %config.otlp_endpoint.as_ref().map_or("", |u| u.as_str()),
            sample_ratio = config.sample_ratio,
            service_name = %config.service_name,
            "tracing: exporting spans over OTLP/HTTP"
        );
    }
    Telemetry {
        provider: Some(provider),
    }
}

/// `IDGATE_LOG` (or [`DEFAULT_FILTER`]), with idgate's spans always off for the log.
fn log_filter() -> EnvFilter {
    let filter =
        EnvFilter::try_from_env("IDGATE_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    filter.add_directive(format!("{TARGET}=off").parse().expect("a valid directive"))
}

/// The exporting pipeline: a batch processor on its own thread with a bounded queue
/// (full means dropped), sending through [`otlp::Client`].
fn provider(config: &TelemetryConfig, url: String) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(otlp::Client::start().map_err(|e| e.to_string())?)
        .with_endpoint(url)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(QUEUE)
        .with_max_export_batch_size(BATCH)
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        // The ratio is applied before a span is made (`request_span`, `root_span`): every
        // span that reaches the SDK belongs to a trace already chosen. ParentBased keeps a
        // client's decision either way.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build())
}

/// The exporter's HTTP client: idgate's own hyper client (no second HTTP stack), on a
/// one-thread runtime of its own, so that exporting neither depends on nor competes with
/// the request workers, and still runs while the main runtime shuts down.
mod otlp {
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt as _, Full};
    use opentelemetry_http::HttpError;

    /// Largest collector answer read (an OTLP response is a few bytes).
    const MAX_ANSWER: usize = 64 * 1024;

    /// Sends OTLP requests on the export runtime.
    #[derive(Debug)]
    pub struct Client {
        handle: tokio::runtime::Handle,
        http: crate::maestrano::worker::Client,
        /// Whether the last export failed, so that a collector that is down is logged
        /// once, not on every batch.
        failing: AtomicBool,
    }

    impl Client {
        /// Starts the export runtime's thread.
        pub fn start() -> std::io::Result<Client> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name("idgate-otlp".into())
                .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
            Ok(Client {
                handle,
                http: crate::maestrano::worker::client(),
                failing: AtomicBool::new(false),
            })
        }

        fn outcome(&self, ok: bool, error: impl FnOnce() -> String) {
            let was_failing = self.failing.swap(!ok, Ordering::Relaxed);
            if !ok && !was_failing {
                tracing::warn!(error = %error(), "tracing: cannot export spans; dropping them until the collector answers");
            } else if ok && was_failing {
                tracing::info!("tracing: the collector answers again");
            }
        }
    }

    #[async_trait::async_trait]
    impl opentelemetry_http::HttpClient for Client {
        async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            let http = self.http.clone();
            let task = self.handle.spawn(async move {
                let resp = tokio::time::timeout(
                    super::EXPORT_TIMEOUT,
                    http.request(request.map(Full::new)),
                )
                .await
                .map_err(|_| "timed out")??;
                let (parts, body) = resp.into_parts();
                let body = tokio::time::timeout(
                    super::EXPORT_TIMEOUT,
                    http_body_util::Limited::new(body, MAX_ANSWER).collect(),
                )
                .await
                .map_err(|_| "timed out")??
                .to_bytes();
                Ok::<_, HttpError>(Response::from_parts(parts, body))
            });
            let result = match task.await {
                Ok(r) => r,
                Err(e) => Err(e.into()),
            };
            match &result {
                Ok(r) if r.status().is_success() => self.outcome(true, String::new),
                Ok(r) => self.outcome(false, || format!("the collector answered {}", r.status())),
                Err(e) => self.outcome(false, || e.to_string()),
            }
            result
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::future::Either;

    #[test]
    fn with_tracing_off_spans_are_none_and_futures_go_unwrapped() {
        assert!(
            !super::enabled(),
            "nothing in the unit tests turns tracing on"
        );
        let mut evaluated = false;
        let span = crate::telemetry::span!(
            "idgate.test",
            field = {
                evaluated = true;
                1
            }
        );
        assert!(span.is_none());
        assert!(!evaluated, "fields are not computed when tracing is off");
        assert!(matches!(super::traced(async {}, &span), Either::Right(_)));
        assert!(!super::in_trace());
    }
}
