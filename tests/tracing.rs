//! OpenTelemetry tracing (SPEC §10), against real idgate processes and a small OTLP/HTTP
//! receiver in this process that decodes what idgate exports (`ExportTraceServiceRequest`,
//! protobuf). Checked: a proxied request is one trace of request, gate and upstream
//! spans (with the store calls under the gate); an ACS login and a SCIM call have their
//! spans; a client's `traceparent` is continued, and the app gets one with the same trace
//! id whose parent is idgate's upstream span; sampling follows `sample_ratio` except
//! where a sampled parent says otherwise; without `[telemetry]` the client's
//! `traceparent` reaches the app as sent; a collector that is down, or that never
//! answers, neither slows nor fails requests. No span carries a cookie, token, email or
//! SAML message.

mod support;

#[path = "support/saml.rs"]
mod saml_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use saml_support::*;
use support::*;
use tokio::net::TcpListener;

/// Exports every 100 ms instead of every 5 s, so that the tests wait little.
const FAST_EXPORT: &[(&str, &str)] = &[("OTEL_BSP_SCHEDULE_DELAY", "100")];

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    kind: i32,
    attributes: Vec<(String, String)>,
}

impl Exported {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// An OTLP/HTTP receiver on loopback: `POST /v1/traces` with protobuf bodies.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Exported>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let store = spans.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| receive(req, store.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector { addr, spans, task }
    }

    /// The base URL for `[telemetry].otlp_endpoint`.
    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until some span satisfies `pred`, then returns them all.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Exported) -> bool) -> Vec<Exported> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans = self.spans();
            if spans.iter().any(&pred) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "no exported span is {what}; exported: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the trace `trace_id` holds spans named as in `names`, then returns them.
    async fn trace(&self, trace_id: &str, names: &[&str]) -> Vec<Exported> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let trace: Vec<Exported> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if names.iter().all(|n| trace.iter().any(|s| s.name == *n)) {
                return trace;
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id} lacks some of {names:?}: {trace:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(
    req: Request<Incoming>,
    store: Arc<Mutex<Vec<Exported>>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    assert_eq!(req.method(), "POST");
    assert_eq!(req.uri().path(), "/v1/traces");
    assert_eq!(req.headers()["content-type"], "application/x-protobuf");
    let body = req.into_body().collect().await?.to_bytes();
    let export = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
    let mut out = Vec::new();
    for rs in export.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| value_text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Exported {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex::encode(s.trace_id),
                    span_id: hex::encode(s.span_id),
                    parent: hex::encode(s.parent_span_id),
                    kind: s.kind,
                    attributes: s
                        .attributes
                        .into_iter()
                        .map(|kv| {
                            let v = value_text(kv.value.as_ref().and_then(|v| v.value.as_ref()));
                            (kv.key, v)
                        })
                        .collect(),
                });
            }
        }
    }
    store.lock().unwrap().extend(out);
    let mut resp = Response::new(Full::new(Bytes::new()));
    resp.headers_mut()
        .insert("content-type", "application/x-protobuf".parse().unwrap());
    Ok(resp)
}

fn value_text(v: Option<&Any>) -> String {
    match v {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// `[telemetry]` exporting to `endpoint`.
fn telemetry(endpoint: &str, ratio: f64) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"idgate-test\"\n\
         sample_ratio = {ratio:?}\n"
    )
}

/// A W3C `traceparent`'s trace id and parent id.
fn traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn one<'a>(spans: &'a [Exported], name: &str) -> &'a Exported {
    let found: Vec<&Exported> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} expected: {spans:#?}");
    found[0]
}

/// No attribute of any span holds one of `secrets`, or anything like an email.
fn no_secrets(spans: &[Exported], secrets: &[&str]) {
    for s in spans {
        for (k, v) in &s.attributes {
            assert!(!v.contains('@'), "{} has {k} = {v}", s.name);
            for secret in secrets {
                assert!(!v.contains(secret), "{} has {k} = {v}", s.name);
            }
        }
    }
}

/// A client's trace: (traceparent, trace id, parent span id).
fn client_trace(flags: &str) -> (String, String, String) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (format!("00-{trace}-{span}-{flags}"), trace, span)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_requests_and_scim_calls_are_traces_that_reach_the_upstream() {
    let collector = Collector::start().await;
    let up = TestUpstream::start().await;
    let redis = RedisServer::start();
    let d = deployment(
        up.addr,
        &redis.url(),
        "",
        &telemetry(&collector.endpoint(), 1.0),
    );
    let idgate = Idgate::start_with_env(&d.text, FAST_EXPORT);
    idgate.wait_ready().await;
    let cookie = d.login("u1", "g1").await;

    // A request without a trace of its own starts one: request → gate (→ store) and
    // request → upstream, and the app's traceparent names the upstream span.
    let r = get(
        &idgate.url("/app?token=query-secret-value"),
        &[("cookie", &cookie), ("accept", "application/json")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = received(&r.json(), "traceparent");
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (trace, parent, flags) = traceparent(&sent[0]);
    assert_eq!(flags, "01", "sampled at ratio 1.0");
    let spans = collector
        .trace(
            &trace,
            &[
                "idgate.request",
                "idgate.gate",
                "idgate.upstream",
                "idgate.store",
            ],
        )
        .await;
    let request = one(&spans, "idgate.request");
    let gate = one(&spans, "idgate.gate");
    let upstream = one(&spans, "idgate.upstream");
    assert_eq!(request.parent, "", "a root: {request:?}");
    assert_eq!(request.kind, SERVER);
    assert_eq!(request.service, "idgate-test");
    assert_eq!(request.attr("http.request.method"), Some("GET"));
    assert_eq!(request.attr("url.path"), Some("/app"), "no query string");
    assert_eq!(request.attr("http.response.status_code"), Some("200"));
    assert_eq!(request.attr("idgate.tenant"), Some("acme"));
    assert_eq!(request.attr("idgate.route"), Some("proxied"));
    assert_eq!(gate.parent, request.span_id);
    assert_eq!(gate.attr("idgate.gate.result"), Some("forward"));
    assert_eq!(gate.attr("idgate.tenant"), Some("acme"));
    assert_eq!(upstream.parent, request.span_id);
    assert_eq!(upstream.kind, CLIENT);
    assert_eq!(upstream.attr("http.response.status_code"), Some("200"));
    assert_eq!(
        parent, upstream.span_id,
        "the app's parent is idgate's span"
    );
    let store: Vec<&Exported> = spans.iter().filter(|s| s.name == "idgate.store").collect();
    assert!(
        store
            .iter()
            .any(|s| s.attr("db.operation.name") == Some("get_session")
                && s.attr("db.system.name") == Some("redis")),
        "{store:#?}"
    );
    for s in &store {
        assert_eq!(s.parent, gate.span_id, "store calls are the gate's: {s:?}");
    }

    // A client's trace is continued: same trace id, its span the request's parent, its
    // tracestate kept; the app gets idgate's upstream span as the parent.
    let (tp, client_trace_id, client_span) = client_trace("01");
    let r = get(
        &idgate.url("/app"),
        &[
            ("cookie", &cookie),
            ("accept", "application/json"),
            ("traceparent", &tp),
            ("tracestate", "vendor=opaque"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let echo = r.json();
    let sent = received(&echo, "traceparent");
    assert_eq!(
        sent.len(),
        1,
        "the client's traceparent is replaced: {sent:?}"
    );
    let (trace, parent, flags) = traceparent(&sent[0]);
    assert_eq!(trace, client_trace_id);
    assert_ne!(parent, client_span);
    assert_eq!(flags, "01");
    assert_eq!(received(&echo, "tracestate"), ["vendor=opaque"]);
    let spans = collector
        .trace(
            &trace,
            &["idgate.request", "idgate.gate", "idgate.upstream"],
        )
        .await;
    let request = one(&spans, "idgate.request");
    assert_eq!(request.parent, client_span);
    assert_eq!(one(&spans, "idgate.upstream").span_id, parent);

    // A SCIM operation: its span under the request's, with the store calls under it.
    let r = get(
        &idgate.url("/_idgate/scim/acme/v2/Users?filter=userName%20eq%20%22u1%22"),
        &[("authorization", &format!("Bearer {SCIM_TOKEN}"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let spans = collector
        .wait_for("idgate.scim", |s| s.name == "idgate.scim")
        .await;
    let scim = one(&spans, "idgate.scim");
    assert_eq!(scim.attr("scim.resource"), Some("Users"));
    assert_eq!(scim.attr("http.request.method"), Some("GET"));
    assert_eq!(scim.attr("idgate.tenant"), Some("acme"));
    assert_eq!(scim.attr("http.response.status_code"), Some("200"));
    let request = spans
        .iter()
        .find(|s| s.span_id == scim.parent)
        .expect("the SCIM span's parent is exported");
    assert_eq!(request.name, "idgate.request");
    assert_eq!(request.attr("idgate.route"), Some("reserved"));
    assert!(
        spans
            .iter()
            .any(|s| s.name == "idgate.store" && s.parent == scim.span_id),
        "{spans:#?}"
    );

    let cookie_value = cookie.split_once('=').unwrap().1;
    no_secrets(
        &collector.spans(),
        &[cookie_value, SCIM_TOKEN, "query-secret-value"],
    );
    // Spans stay out of the log, whatever its level (these processes log at debug).
    for line in idgate.logs().lines() {
        assert!(!line.contains("idgate.upstream"), "{line}");
        assert!(!line.contains("\"span\""), "{line}");
    }
}

const IDP: &str = "https://idp.example.com/metadata";
const ACS: &str = "http://127.0.0.1/_idgate/saml/acme/acs";
const SP: &str = "http://127.0.0.1/_idgate/saml/acme/metadata";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acs_login_is_traced_with_its_store_calls_and_nothing_of_the_assertion() {
    let collector = Collector::start().await;
    let idp = TestIdp::new("trace-idp");
    let up = TestUpstream::start().await;
    let text = config(
        up.addr,
        "",
        &format!(
            "{}[[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_entity_id = \"{IDP}\"\n\
             idp_sso_url = \"https://idp.example.com/sso\"\nidp_certificate = \"file:{}\"\n\
             allow_idp_initiated = true\n",
            telemetry(&collector.endpoint(), 1.0),
            idp.cert.display(),
        ),
    );
    let idgate = Idgate::start_with_env(&text, FAST_EXPORT);
    idgate.wait_ready().await;
    let xml = signed_assertion_response(&ResponseSpec::new(IDP, ACS, SP, None), &idp);
    let b64_xml = b64(&xml);
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("SAMLResponse", &b64_xml)
        .finish();
    let r = send(
        "POST",
        &idgate.url("/_idgate/saml/acme/acs"),
        &[("content-type", "application/x-www-form-urlencoded")],
        body,
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let cookie = r.cookie();

    let spans = collector
        .wait_for("idgate.saml.acs", |s| s.name == "idgate.saml.acs")
        .await;
    let acs = one(&spans, "idgate.saml.acs");
    assert_eq!(acs.attr("idgate.tenant"), Some("acme"));
    assert_eq!(acs.attr("http.response.status_code"), Some("303"));
    let spans = collector
        .trace(&acs.trace_id, &["idgate.request", "idgate.store"])
        .await;
    let request = one(&spans, "idgate.request");
    assert_eq!(acs.parent, request.span_id);
    assert_eq!(request.attr("idgate.tenant"), Some("acme"));
    assert_eq!(request.attr("http.request.method"), Some("POST"));
    let ops: Vec<&str> = spans
        .iter()
        .filter(|s| s.name == "idgate.store" && s.parent == acs.span_id)
        .filter_map(|s| s.attr("db.operation.name"))
        .collect();
    assert!(ops.contains(&"put_session"), "{ops:?}");
    assert!(
        spans
            .iter()
            .filter(|s| s.name == "idgate.store")
            .all(|s| s.attr("db.system.name") == Some("memory"))
    );
    let cookie_value = cookie.split_once('=').unwrap().1;
    no_secrets(&collector.spans(), &[cookie_value, &b64_xml[..40]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_ratio_unless_the_client_trace_is_sampled() {
    let collector = Collector::start().await;
    let up = TestUpstream::start().await;
    let text = config(
        up.addr,
        "",
        &format!(
            "[access]\npublic_paths = [\"/pub\"]\n{}",
            telemetry(&collector.endpoint(), 0.0)
        ),
    );
    let idgate = Idgate::start_with_env(&text, FAST_EXPORT);
    idgate.wait_ready().await;
    let upstream_trace = |r: &Reply| {
        let sent = received(&r.json(), "traceparent");
        assert_eq!(sent.len(), 1, "{sent:?}");
        traceparent(&sent[0])
    };

    // Not sampled: nothing exported, yet the app still gets a traceparent (not sampled).
    let r = get(&idgate.url("/pub/a"), &[]).await;
    assert_eq!(r.status, 200);
    let (new_trace, _, flags) = upstream_trace(&r);
    assert_eq!(flags, "00");
    let (tp, unsampled_trace, unsampled_parent) = client_trace("00");
    let r = get(&idgate.url("/pub/b"), &[("traceparent", &tp)]).await;
    let (trace, parent, flags) = upstream_trace(&r);
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        (unsampled_trace.as_str(), "00")
    );
    assert_ne!(parent, unsampled_parent);

    // A sampled client trace is followed whatever the ratio.
    let (tp, sampled_trace, sampled_parent) = client_trace("01");
    let r = get(&idgate.url("/pub/c"), &[("traceparent", &tp)]).await;
    let (trace, parent, flags) = upstream_trace(&r);
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        (sampled_trace.as_str(), "01")
    );
    let spans = collector
        .trace(&sampled_trace, &["idgate.request", "idgate.upstream"])
        .await;
    assert_eq!(one(&spans, "idgate.request").parent, sampled_parent);
    assert_eq!(one(&spans, "idgate.upstream").span_id, parent);
    // The spans of the earlier requests would have gone out in the same or an earlier
    // batch; give a late one a little longer still.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let traces: Vec<String> = collector.spans().into_iter().map(|s| s.trace_id).collect();
    assert!(!traces.contains(&new_trace), "{traces:?}");
    assert!(!traces.contains(&unsampled_trace), "{traces:?}");
    assert!(traces.iter().all(|t| *t == sampled_trace), "{traces:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_telemetry_the_clients_traceparent_reaches_the_upstream_as_sent() {
    let up = TestUpstream::start().await;
    let text = config(up.addr, "", "[access]\npublic_paths = [\"/pub\"]\n");
    let idgate = Idgate::start(&text);
    idgate.wait_ready().await;
    let (tp, _, _) = client_trace("01");
    let r = get(
        &idgate.url("/pub/a"),
        &[("traceparent", &tp), ("tracestate", "vendor=opaque")],
    )
    .await;
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(received(&echo, "traceparent"), [tp]);
    assert_eq!(received(&echo, "tracestate"), ["vendor=opaque"]);
    let r = get(&idgate.url("/pub/b"), &[]).await;
    assert!(received(&r.json(), "traceparent").is_empty());
    assert!(!idgate.logs().contains("tracing: exporting spans"));
}

/// Sends `n` requests, 8 at a time, and returns the slowest.
async fn slowest_of(idgate: &Idgate, n: usize) -> Duration {
    let url = idgate.url("/pub/x");
    let mut slowest = Duration::ZERO;
    for _ in 0..n / 8 {
        let batch = (0..8).map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let r = get(&url, &[]).await;
                assert_eq!(r.status, StatusCode::OK);
                started.elapsed()
            })
        });
        for t in futures_util::future::join_all(batch).await {
            slowest = slowest.max(t.unwrap());
        }
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_or_never_answers_neither_slows_nor_fails_requests() {
    let up = TestUpstream::start().await;
    // Nothing listens on `down`; `stuck` accepts connections and never answers.
    let down = format!("http://127.0.0.1:{}", free_port());
    let stuck = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_url = format!("http://{}", stuck.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = held.clone();
    let stuck_task = tokio::spawn(async move {
        while let Ok((s, _)) = stuck.accept().await {
            holder.lock().unwrap().push(s);
        }
    });
    for endpoint in [down, stuck_url] {
        let text = config(
            up.addr,
            "",
            &format!(
                "[access]\npublic_paths = [\"/pub\"]\n{}",
                telemetry(&endpoint, 1.0)
            ),
        );
        let idgate = Idgate::start_with_env(&text, FAST_EXPORT);
        idgate.wait_ready().await;
        let started = Instant::now();
        let slowest = slowest_of(&idgate, 400).await;
        assert!(
            slowest < Duration::from_millis(500),
            "{endpoint}: a request took {slowest:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{endpoint}: 400 requests took {:?}",
            started.elapsed()
        );
    }
    stuck_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_is_logged_once() {
    let up = TestUpstream::start().await;
    let text = config(
        up.addr,
        "",
        &format!(
            "[access]\npublic_paths = [\"/pub\"]\n{}",
            telemetry(&format!("http://127.0.0.1:{}", free_port()), 1.0)
        ),
    );
    let idgate = Idgate::start_with_env(&text, FAST_EXPORT);
    idgate.wait_ready().await;
    for _ in 0..3 {
        assert_eq!(get(&idgate.url("/pub/x"), &[]).await.status, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        idgate.wait_for_log("tracing: cannot export spans"),
        "{}",
        idgate.logs()
    );
    let n = idgate.logs().matches("cannot export spans").count();
    assert_eq!(n, 1, "{}", idgate.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_upgrades_carry_idgates_traceparent_as_bodiless_requests_do() {
    // GET without a body takes the direct HTTP/1.1 path (`proxy::h1`); a POST with a body
    // and a WebSocket upgrade take hyper's client. The app is a recorder of raw heads.
    let collector = Collector::start().await;
    let rec = HeadRecorder::start().await;
    let text = config(
        rec.addr,
        "",
        &format!(
            "[access]\npublic_paths = [\"/pub\"]\n{}",
            telemetry(&collector.endpoint(), 1.0)
        ),
    );
    let idgate = Idgate::start_with_env(&text, FAST_EXPORT);
    idgate.wait_ready().await;
    let upgrade = [
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    for (method, body, extra, is_upgrade) in [
        ("GET", "", &[][..], "false"),
        ("POST", "a body", &[][..], "false"),
        ("GET", "", &upgrade[..], "true"),
    ] {
        rec.clear();
        let (tp, trace, client_span) = client_trace("01");
        let mut headers = vec![("traceparent", tp.as_str()), ("tracestate", "k=v")];
        headers.extend_from_slice(extra);
        let r = send(method, &idgate.url("/pub/x"), &headers, body.to_owned()).await;
        assert_eq!(r.status, 200, "{method} {is_upgrade}");
        let heads = rec.heads();
        assert_eq!(heads.len(), 1, "{heads:?}");
        let fields = head_fields(&heads[0]);
        let sent: Vec<&str> = fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("traceparent"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(sent.len(), 1, "{}", heads[0]);
        let (sent_trace, parent, _) = traceparent(sent[0]);
        assert_eq!(sent_trace, trace, "{method} upgrade {is_upgrade}");
        assert!(
            fields
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case("tracestate") && v == "k=v"),
            "{}",
            heads[0]
        );
        let spans = collector
            .trace(&trace, &["idgate.request", "idgate.upstream"])
            .await;
        let up = one(&spans, "idgate.upstream");
        assert_eq!(up.span_id, parent, "{method} upgrade {is_upgrade}");
        assert_eq!(up.attr("http.request.method"), Some(method));
        assert_eq!(up.attr("idgate.upgrade"), Some(is_upgrade));
        assert_eq!(one(&spans, "idgate.request").parent, client_span);
    }
}
