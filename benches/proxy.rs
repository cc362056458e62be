//! `make bench` (`cargo bench --bench proxy`): throughput and latency of the proxied path.
//!
//! One run measures, with the same load generator (wrk) against the same upstream:
//! - **direct**: wrk → upstream (the ceiling);
//! - **idgate**: wrk → idgate (public path, release build) → upstream;
//! - **nginx**: wrk → nginx as a plain keep-alive proxy → upstream, when nginx is installed;
//! - **nginx-hdr**: the same nginx also setting seven headers as large as idgate's
//!   identity headers, so the upstream parses the same bytes as behind idgate-auth;
//! - **idgate-auth**: wrk with a session cookie → idgate (Redis store, identity headers
//!   and signed JWT) → upstream, with Redis commands per request counted from
//!   `INFO commandstats` before and after;
//! - **idg-rules**: idgate-auth's deployment with 20 `[[access.rules]]` (prefixes,
//!   regexes, methods, allow lists) that the bench path falls through, reported as a
//!   ratio to idgate-auth;
//! - **idg-bearer**: idgate-auth's deployment with a `[[tenants.bearer]]` issuer (static
//!   JWKS, RS256 key from the `openssl` CLI, token signed by PyJWT), wrk sending the
//!   token as `Authorization: Bearer` for the same directory user, reported as a ratio to
//!   idgate-auth and counted in the Redis commands per request;
//! - **idg-trace-0.01** and **idg-trace-1**: idgate-auth's deployment with tracing on
//!   (`[telemetry]`, `sample_ratio` 0.01 and 1.0) exporting to a sink collector in this
//!   process (it answers 200 to every `POST /v1/traces`), reported as ratios to
//!   idgate-auth; tracing off against the build before it is idgate-auth against
//!   `BENCH_IDGATE_BASELINE` below;
//! - **idg-reload**: idgate-auth's deployment sent SIGHUP every 250 ms for the whole run
//!   (each reload publishes a new config snapshot and drops the session caches),
//!   reported as a ratio to idgate-auth;
//! - **revocation**: a second replica on the same Redis; the time from deactivating a user
//!   through the library to that replica answering 403, over many samples.
//!
//! The machine is shared and noisy, so targets are measured in interleaved rounds and the
//! median of each figure is reported, with ratios taken within the same run: the ratio
//! of those medians, and beside it the median of the ratios within each round. Logging is off for
//! both proxies (`IDGATE_LOG=warn`, nginx `access_log off`).
//!
//! Besides throughput and latency, each proxy's own CPU time per request (user + system,
//! from `/proc`, nginx's workers included) is printed: on a machine shared with the load
//! generator and the upstream, it says what the proxy itself costs. nginx runs as many
//! `worker_processes` as idgate has workers.
//!
//! wrk is a closed loop: a slow answer delays the next request, so queueing hides from
//! its percentiles. After the closed-loop rounds, **direct**, **nginx** and
//! **idgate-auth** are therefore driven again by an open loop, oha (`target/bench-tools`,
//! pinned by `make bench-deps`) at a constant arrival rate of half idgate-auth's
//! closed-loop maximum from this run, with latency correction, in interleaved rounds; the
//! added p99 is each proxy's p99 minus direct's, nginx's being the baseline for what the
//! machine itself adds to a second hop.
//!
//! The last lines of the output are the summary of issue 18's performance figures, one
//! greppable line each: `ratio idg-auth/nginx`, `ratio idgate/nginx` (throughput),
//! `ratio cpu/req idg-auth/nginx`, `added p99 nginx-direct` and `added p99
//! idg-auth-direct`.
//!
//! Knobs: `BENCH_SECONDS` (per round, default 8), `BENCH_ROUNDS` (default 3),
//! `BENCH_CONNECTIONS` (default 64), `BENCH_REVOCATIONS` (default 100),
//! `BENCH_OPEN_LOOP_SHARE` (the open loop's rate as a share of idgate-auth's maximum,
//! default 0.5),
//! `BENCH_TARGETS` (a comma-separated subset of the target names, for profiling),
//! `BENCH_IDGATE_WORKERS` and `BENCH_IDGATE_WRAPPER` (see `benches/common`), and
//! `BENCH_IDGATE_BASELINE`: the path of another idgate binary (say, the release build of
//! the commit before a change), run as target `idg-base` with idgate-auth's config and
//! session, so that a change is measured against its predecessor in the same run.

mod common;
#[path = "../tests/support/jwt_tool.rs"]
mod jwt_tool;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use common::*;

/// The upstream's answer: 20 bytes, as in the engine comparison in STYLE.md.
const BODY: &[u8] = b"hello from upstream\n";

/// How often the `idg-reload` target is sent SIGHUP.
const RELOAD_EVERY: Duration = Duration::from_millis(250);

/// A minimal keep-alive HTTP/1.1 upstream on its own runtime thread.
fn start_upstream() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = service_fn(|_req| async {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            BODY,
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    wait_for_port(addr, "upstream");
    addr
}

/// A collector that takes every OTLP export and answers 200 with an empty body (what an
/// `ExportTraceServiceResponse` without partial failures is), reading nothing into it.
fn start_sink() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async {
                        use http_body_util::BodyExt;
                        let _ = req.into_body().collect().await;
                        let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                        resp.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static("application/x-protobuf"),
                        );
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    wait_for_port(addr, "trace sink");
    addr
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<Bytes>,
>;

async fn status(client: &Client, url: &str, cookie: &str) -> u16 {
    status_with(client, url, "cookie", cookie).await
}

/// The status of a GET carrying one credential header.
async fn status_with(client: &Client, url: &str, name: &str, value: &str) -> u16 {
    let req = hyper::Request::get(url)
        .header(name, value)
        .header("accept", "application/json")
        .body(http_body_util::Empty::new())
        .unwrap();
    match client.request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            status
        }
        Err(_) => 0,
    }
}

/// nginx as a plain proxy; `extra` adds directives inside `location /` (the
/// "nginx+headers" baseline sets headers as large as idgate's identity headers, to
/// separate what those headers cost the upstream from what idgate itself costs).
fn start_nginx(
    upstream: SocketAddr,
    dir: &std::path::Path,
    name: &str,
    extra: &str,
) -> Option<(Proc, SocketAddr)> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let port = free_port();
    let d = dir.display();
    // As many workers as idgate has, so that both get the same share of the machine.
    let workers = idgate_workers();
    let conf = format!(
        "{user}worker_processes {workers};\ndaemon off;\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream app {{ server {upstream}; keepalive 128; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://app;\n\
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n{extra}    }}\n  }}\n}}\n",
        user = if is_root() { "user root;\n" } else { "" },
    );
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // SIGTERM to the master, which ends its workers; SIGKILL would orphan them.
    let proc = Proc::gentle(child);
    wait_for_port(addr, "nginx");
    Some((proc, addr))
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// The proxy's own CPU microseconds per request; NaN for the direct target.
    cpu_us: f64,
}

fn parse_latency(text: &str) -> Option<f64> {
    let text = text.trim();
    let (num, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    num.trim().parse::<f64>().ok().map(|v| v * factor)
}

/// `header` is a whole header line (`Cookie: …`, `Authorization: Bearer …`) sent on every
/// request.
fn wrk(addr: SocketAddr, seconds: u64, connections: u64, header: Option<&str>) -> Sample {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(h) = header {
        cmd.arg("-H").arg(h);
    }
    let out = cmd
        .arg(format!("http://{addr}/bench"))
        .output()
        .expect("wrk is installed by `make bench`");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    let field = |prefix: &str| -> Option<String> {
        BufReader::new(text.as_bytes())
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
    };
    for bad in ["Non-2xx or 3xx responses", "Socket errors"] {
        if let Some(v) = field(bad) {
            eprintln!("warning: {addr}: {bad}: {v}");
        }
    }
    let requests = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.trim().parse().ok())
        })
        .flatten()
        .unwrap_or_else(|| panic!("no request count in wrk output:\n{text}"));
    Sample {
        requests,
        rps: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}")),
        p50_us: field("50%")
            .and_then(|v| parse_latency(&v))
            .unwrap_or_else(|| panic!("no p50 in wrk output:\n{text}")),
        p99_us: field("99%")
            .and_then(|v| parse_latency(&v))
            .unwrap_or_else(|| panic!("no p99 in wrk output:\n{text}")),
        cpu_us: f64::NAN,
    }
}

/// The median of each figure across rounds, taken separately: a round that was slow for
/// reasons outside the target (the machine is shared) moves none of them much.
fn median(v: Vec<Sample>) -> Sample {
    let mid = |f: fn(&Sample) -> f64| {
        let mut xs: Vec<f64> = v.iter().map(f).collect();
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    Sample {
        requests: v.iter().map(|s| s.requests).sum(),
        rps: mid(|s| s.rps),
        p50_us: mid(|s| s.p50_us),
        p99_us: mid(|s| s.p99_us),
        cpu_us: mid(|s| s.cpu_us),
    }
}

/// Where `make bench-deps` installs oha (pinned), the open-loop load generator.
const OHA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-tools/bin/oha");

/// The share of idgate-auth's closed-loop maximum at which the open-loop latency is
/// measured, unless `BENCH_OPEN_LOOP_SHARE` says otherwise.
const OPEN_LOOP_SHARE: f64 = 0.5;

/// One open-loop run: what oha achieved, its corrected p99 and its slowest request (a
/// pause shows there first).
#[derive(Debug, Clone, Copy)]
struct OpenLoop {
    rps: f64,
    p99_us: f64,
    max_us: f64,
}

/// `rate` requests per second at fixed intervals for `seconds`, whatever the answers
/// take (oha `-q` with `--latency-correction`: a request's latency runs from when it was
/// due, not from when a free connection sent it, so queueing is counted rather than
/// hidden as wrk's closed loop hides it).
fn oha(
    addr: SocketAddr,
    seconds: u64,
    rate: u64,
    connections: u64,
    header: Option<&str>,
) -> OpenLoop {
    assert!(
        std::path::Path::new(OHA).exists(),
        "{OHA} is missing: `make bench-deps` installs it"
    );
    let mut cmd = Command::new(OHA);
    cmd.args([
        "--no-tui",
        "--output-format",
        "json",
        "--latency-correction",
    ])
    .args(["-z", &format!("{seconds}s"), "-q", &rate.to_string()])
    .args(["-c", &connections.to_string()]);
    if let Some(h) = header {
        cmd.arg("-H").arg(h);
    }
    let out = cmd
        .arg(format!("http://{addr}/bench"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run oha");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "oha failed: {text}");
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("oha's JSON: {e}\n{text}"));
    // Every answer must be the upstream's 200: a refused session would measure the gate's
    // refusal instead.
    let codes = &json["statusCodeDistribution"];
    let other: u64 = codes
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(code, _)| *code != "200")
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    assert!(other == 0, "{addr}: answers other than 200: {codes}");
    // The requests still in flight when the duration ends are counted as aborted; any
    // other error is worth a look.
    let errors = &json["errorDistribution"];
    if errors
        .as_object()
        .is_some_and(|e| e.keys().any(|k| k != "aborted due to deadline"))
    {
        eprintln!("warning: {addr}: oha errors: {errors}");
    }
    let number = |v: &serde_json::Value, what: &str| {
        v.as_f64()
            .unwrap_or_else(|| panic!("no {what} in oha's JSON:\n{text}"))
    };
    OpenLoop {
        rps: number(&json["summary"]["requestsPerSec"], "requestsPerSec"),
        p99_us: number(&json["latencyPercentiles"]["p99"], "p99") * 1e6,
        max_us: number(&json["summary"]["slowest"], "slowest") * 1e6,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other invocation (such as `cargo test
    // --benches`) only checks that the bench builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let seconds = env_or("BENCH_SECONDS", 8);
    let rounds = env_or("BENCH_ROUNDS", 3).max(1);
    let connections = env_or("BENCH_CONNECTIONS", 64);
    let revocations = env_or("BENCH_REVOCATIONS", 100).max(1);
    let dir = tempfile::tempdir().unwrap();
    let upstream = start_upstream();
    let (idgate_proc, idgate, _) = start_idgate(
        upstream,
        dir.path(),
        "public",
        "[access]\npublic_paths = [\"/\"]\n",
    );
    let nginx = start_nginx(upstream, dir.path(), "nginx", "");
    // The same header bytes idgate adds on the authenticated path: six short values and
    // a JWT-sized one.
    let jwt_like = "x".repeat(520);
    let header_block: String = [
        ("X-Idgate-User-Id", "bench-user"),
        ("X-Idgate-Group-Id", "g"),
        ("X-Idgate-Tenant", "bench"),
        ("X-Idgate-Email", "bench-user@example.com"),
        ("X-Idgate-Name", "bench-user@example.com"),
        ("X-Idgate-Role", "member"),
        ("X-Idgate-Assertion", jwt_like.as_str()),
    ]
    .iter()
    .map(|(k, v)| format!("      proxy_set_header {k} \"{v}\";\n"))
    .collect();
    let nginx_hdr = start_nginx(upstream, dir.path(), "nginx-hdr", &header_block);
    if nginx.is_none() {
        eprintln!("nginx is not installed: measuring direct and idgate only");
    }

    // The authenticated deployment: Redis store, a signing key, one tenant.
    let (_redis, redis_port) = start_redis(dir.path());
    let key = Command::new(env!("CARGO_BIN_EXE_idgate"))
        .arg("keygen")
        .output()
        .unwrap();
    std::fs::write(dir.path().join("signing.pem"), &key.stdout).unwrap();
    let auth_rest = format!(
        "[store]\nurl = \"redis://127.0.0.1:{redis_port}\"\n\
         [identity]\nsigning_key = \"file:{}/signing.pem\"\n\
         [[tenants]]\nid = \"bench\"\n[tenants.saml]\nidp_entity_id = \"https://idp.example.com\"\n\
         idp_sso_url = \"https://idp.example.com/sso\"\n\
         idp_certificate = \"file:{}/config/examples/example-idp.crt\"\n",
        dir.path().display(),
        env!("CARGO_MANIFEST_DIR")
    );
    let (auth_a_proc, auth_a, admin_a) = start_idgate(upstream, dir.path(), "auth-a", &auth_rest);
    let (_auth_b, auth_b, admin_b) = start_idgate(upstream, dir.path(), "auth-b", &auth_rest);
    // idg-rules: the same deployment with 20 access rules (prefixes, regexes, methods,
    // allow lists) that the bench path falls through, the dearest case for the matcher.
    let rules: String = (0..20)
        .map(|i| match i % 4 {
            0 => format!("[[access.rules]]\nname = \"r{i}\"\npath = \"/admin{i}\"\nallow_groups = [\"g-admins\"]\n"),
            1 => format!("[[access.rules]]\nname = \"r{i}\"\npath_regex = \"^/api/v[0-9]+/r{i}$\"\nallow_roles = [\"editor\"]\n"),
            2 => format!("[[access.rules]]\nname = \"r{i}\"\npath = \"/reports{i}\"\nmethods = [\"POST\", \"PUT\"]\nallow_users = [\"u-{i}\"]\n"),
            _ => format!("[[access.rules]]\nname = \"r{i}\"\npath = \"/static{i}\"\npublic = true\n"),
        })
        .collect();
    let (auth_rules_proc, auth_rules, admin_rules) = start_idgate(
        upstream,
        dir.path(),
        "auth-rules",
        &format!("{auth_rest}{rules}"),
    );
    // idg-bearer: the same deployment accepting the bench user's bearer token.
    let rsa = dir.path().join("issuer.pem");
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&rsa)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl genpkey failed");
    let py = jwt_tool::jwt_tool;
    let rsa_path = rsa.display().to_string();
    std::fs::write(
        dir.path().join("issuer-jwks.json"),
        py(&["jwks", &format!("{rsa_path}:k1")]),
    )
    .unwrap();
    let bearer_token = py(&[
        "sign",
        &rsa_path,
        "RS256",
        "k1",
        r#"{"iss": "https://issuer.bench/", "aud": "api://bench", "sub": "bench-user", "exp": "$now+7200"}"#,
    ]);
    let (auth_bearer_proc, auth_bearer, admin_bearer) = start_idgate(
        upstream,
        dir.path(),
        "auth-bearer",
        &format!(
            "{auth_rest}[[tenants.bearer]]\nissuer = \"https://issuer.bench/\"\n\
             audience = \"api://bench\"\njwks = \"file:{}/issuer-jwks.json\"\n",
            dir.path().display()
        ),
    );
    // idg-trace-*: the same deployment tracing every request, or one in a hundred.
    let sink = start_sink();
    let traced = |name: &str, ratio: &str| {
        start_idgate(
            upstream,
            dir.path(),
            name,
            &format!(
                "{auth_rest}[telemetry]\notlp_endpoint = \"http://{sink}\"\n\
                 sample_ratio = {ratio}\n"
            ),
        )
    };
    let (trace_low_proc, trace_low, admin_trace_low) = traced("auth-trace-low", "0.01");
    let (trace_all_proc, trace_all, admin_trace_all) = traced("auth-trace-all", "1.0");
    // The authenticated deployment reloading its config (SIGHUP) every RELOAD_EVERY
    // while it is measured: each reload publishes a new snapshot and drops the session
    // caches, so this is what an operator's reloads cost the traffic.
    let (reload_proc, reload_addr, admin_reload) =
        start_idgate(upstream, dir.path(), "auth-reload", &auth_rest);
    let reloading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reloads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reloader = {
        let (pid, on, n) = (reload_proc.pid(), reloading.clone(), reloads.clone());
        std::thread::spawn(move || {
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(RELOAD_EVERY);
                let sent = std::process::Command::new("kill")
                    .args(["-HUP", &pid.to_string()])
                    .status()
                    .is_ok_and(|s| s.success());
                if sent {
                    n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    let baseline = std::env::var("BENCH_IDGATE_BASELINE")
        .ok()
        .map(|bin| common::start_idgate_bin(&bin, upstream, dir.path(), "auth-base", &auth_rest));
    let cfg_text = std::fs::read_to_string(dir.path().join("auth-a.toml")).unwrap();
    let cfg = idgate::config::Config::from_toml(&cfg_text, dir.path()).expect("bench config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(async { idgate::store::Store::open(&cfg.store).unwrap() });
    let directory = idgate::directory::Directory::new(store.clone());
    let sessions = idgate::session::Sessions::standalone(&cfg, store).unwrap();
    let client: Client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let login = |user: String| {
        rt.block_on(async {
            directory
                .ensure_group("bench", "g", "Bench Inc.")
                .await
                .unwrap();
            let mut u = idgate::directory::model::User::new(&user, idgate::directory::now());
            u.email = Some(format!("{user}@example.com"));
            directory.create_user("bench", &u).await.unwrap();
            directory
                .set_membership(
                    &idgate::audit::Origin::system(),
                    "bench",
                    &user,
                    "g",
                    "member",
                )
                .await
                .unwrap();
            let s = sessions.create_session("bench", &user, "g").await.unwrap();
            format!("{}={}", sessions.cookie_name(), s.cookie_value)
        })
    };
    rt.block_on(async {
        for admin in [
            admin_a,
            admin_b,
            admin_rules,
            admin_bearer,
            admin_trace_low,
            admin_trace_all,
            admin_reload,
        ]
        .into_iter()
        .chain(baseline.as_ref().map(|(_, _, admin)| *admin))
        {
            let url = format!("http://{admin}/readyz");
            let deadline = Instant::now() + Duration::from_secs(20);
            while status(&client, &url, "").await != 200 {
                assert!(Instant::now() < deadline, "{url} never became ready");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let cookie = login("bench-user".into());
    assert_eq!(
        rt.block_on(status(&client, &format!("http://{auth_a}/bench"), &cookie)),
        200,
        "the bench session works"
    );
    let with_cookie = format!("Cookie: {cookie}");
    let with_token = format!("Authorization: Bearer {bearer_token}");
    assert_eq!(
        rt.block_on(status_with(
            &client,
            &format!("http://{auth_bearer}/bench"),
            "authorization",
            &format!("Bearer {bearer_token}"),
        )),
        200,
        "the bench bearer token works"
    );

    // (name, address, credential header line, the proxy's PID)
    let mut targets: Vec<(&str, SocketAddr, Option<&str>, Option<u32>)> = vec![
        ("direct", upstream, None, None),
        ("idgate", idgate, None, Some(idgate_proc.pid())),
        (
            "idg-auth",
            auth_a,
            Some(&with_cookie),
            Some(auth_a_proc.pid()),
        ),
        (
            "idg-rules",
            auth_rules,
            Some(&with_cookie),
            Some(auth_rules_proc.pid()),
        ),
        (
            "idg-bearer",
            auth_bearer,
            Some(&with_token),
            Some(auth_bearer_proc.pid()),
        ),
        (
            "idg-trace-0.01",
            trace_low,
            Some(&with_cookie),
            Some(trace_low_proc.pid()),
        ),
        (
            "idg-trace-1",
            trace_all,
            Some(&with_cookie),
            Some(trace_all_proc.pid()),
        ),
        (
            "idg-reload",
            reload_addr,
            Some(&with_cookie),
            Some(reload_proc.pid()),
        ),
    ];
    if let Some((proc, addr, _)) = &baseline {
        targets.push(("idg-base", *addr, Some(&with_cookie), Some(proc.pid())));
    }
    if let Some((proc, addr)) = &nginx {
        targets.push(("nginx", *addr, None, Some(proc.pid())));
    }
    if let Some((proc, addr)) = &nginx_hdr {
        targets.push(("nginx-hdr", *addr, None, Some(proc.pid())));
    }
    if let Ok(only) = std::env::var("BENCH_TARGETS") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        targets.retain(|(name, ..)| only.contains(name));
        assert!(
            !targets.is_empty(),
            "BENCH_TARGETS names none of the targets"
        );
    }
    // Warm-up: fill connection pools and caches.
    let mut sent: Vec<u64> = targets
        .iter()
        .map(|(_, addr, cookie, _)| wrk(*addr, 2, connections, *cookie).requests)
        .collect();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); targets.len()];
    let (mut auth_requests, mut auth_calls) = (0u64, 0u64);
    for round in 0..rounds {
        for (i, (name, addr, cookie, pid)) in targets.iter().enumerate() {
            let before = cookie.map(|_| redis_calls(redis_port));
            let cpu_before = pid.and_then(cpu_micros);
            let mut s = wrk(*addr, seconds, connections, *cookie);
            if let (Some(before), Some(after)) = (cpu_before, pid.and_then(cpu_micros)) {
                s.cpu_us = after.saturating_sub(before) as f64 / s.requests.max(1) as f64;
            }
            if let Some(before) = before {
                // INFO itself is one call; the difference counts idgate's commands.
                auth_calls += redis_calls(redis_port).saturating_sub(before + 1);
                auth_requests += s.requests;
            }
            eprintln!(
                "round {}: {name:<9} {:>9.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us  cpu {:>5.1} us/req",
                round + 1,
                s.rps,
                s.p50_us,
                s.p99_us,
                s.cpu_us
            );
            sent[i] += s.requests;
            samples[i].push(s);
        }
    }

    // Open loop: direct, nginx (when installed) and idgate-auth at a constant arrival
    // rate of OPEN_LOOP_SHARE of idgate-auth's closed-loop maximum just measured, in
    // interleaved rounds. nginx at the same rate says how much of the added tail is
    // the machine's (a second process on two shared cores) rather than idgate's.
    let position = |n: &str| targets.iter().position(|(name, ..)| *name == n);
    let share = std::env::var("BENCH_OPEN_LOOP_SHARE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(OPEN_LOOP_SHARE);
    let open_loop = position("direct").zip(position("idg-auth")).map(|(d, a)| {
        let max = median(samples[a].clone()).rps;
        let rate = (max * share).round().max(1.0) as u64;
        let order: Vec<usize> = [Some(d), position("nginx"), Some(a)]
            .into_iter()
            .flatten()
            .collect();
        let mut runs: Vec<(&str, Vec<OpenLoop>)> =
            order.iter().map(|&i| (targets[i].0, Vec::new())).collect();
        for round in 0..rounds {
            for (k, &i) in order.iter().enumerate() {
                let (name, addr, header, _) = targets[i];
                let r = oha(addr, seconds, rate, connections, header);
                eprintln!(
                    "open loop {}: {name:<9} {rate} req/s asked, {:>9.0} req/s done  p99 {:>7.0} us  max {:>7.0} us",
                    round + 1,
                    r.rps,
                    r.p99_us,
                    r.max_us
                );
                if r.rps < rate as f64 * 0.95 {
                    eprintln!("warning: {name}: oha fell short of the asked rate");
                }
                // A p99 close to the slowest request, and long, is a queue that grew
                // for the whole run: the machine did not keep up with this rate (on a
                // shared machine, other work took the CPU), so the round measures
                // overload rather than added latency.
                if r.max_us > 20_000.0 && r.p99_us > 0.8 * r.max_us {
                    eprintln!(
                        "warning: {name}: saturated at {rate} req/s (p99 {:.0} ms, slowest {:.0} ms)",
                        r.p99_us / 1000.0,
                        r.max_us / 1000.0
                    );
                }
                runs[k].1.push(r);
            }
        }
        (max, rate, runs)
    });

    // Revocation: B has the session cached; deactivate through the library (as SCIM or
    // a webhook would, on another replica) and time until B refuses it.
    let mut revocation_ms = Vec::new();
    for i in 0..revocations {
        let user = format!("revoked-{i}");
        let cookie = login(user.clone());
        let url = format!("http://{auth_b}/bench");
        rt.block_on(async {
            assert_eq!(status(&client, &url, &cookie).await, 200);
            let start = Instant::now();
            directory
                .deactivate_user(&idgate::audit::Origin::system(), "bench", &user)
                .await
                .unwrap();
            loop {
                if status(&client, &url, &cookie).await == 403 {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "revocation never arrived"
                );
            }
            revocation_ms.push(start.elapsed().as_secs_f64() * 1000.0);
        });
    }
    revocation_ms.sort_by(f64::total_cmp);

    if std::env::var_os("BENCH_IDGATE_WRAPPER").is_some() {
        // To divide a profile's totals by (the revocation phase is not included).
        for ((name, ..), n) in targets.iter().zip(&sent) {
            println!("profiling: {n} load requests sent to {name}, warm-up included");
        }
    }
    let per_round: Vec<(&str, Vec<Sample>)> = targets
        .iter()
        .zip(&samples)
        .map(|((name, ..), s)| (*name, s.clone()))
        .collect();
    let results: Vec<(&str, Sample)> = targets
        .iter()
        .zip(samples)
        .map(|((name, ..), s)| (*name, median(s)))
        .collect();
    println!();
    println!(
        "proxy benchmark: wrk -t2 -c{connections}, {seconds}s x {rounds} interleaved rounds, median of each figure, 20-byte body"
    );
    println!(
        "{:<9} {:>12} {:>10} {:>10} {:>14}",
        "target", "req/s", "p50 us", "p99 us", "proxy cpu us"
    );
    for (name, s) in &results {
        println!(
            "{name:<9} {:>12.0} {:>10.0} {:>10.0} {:>14.1}",
            s.rps, s.p50_us, s.p99_us, s.cpu_us
        );
    }
    let get = |n: &str| results.iter().find(|(name, _)| *name == n).map(|(_, s)| *s);
    println!();
    // A line per pair measured in this run (BENCH_TARGETS may leave some out).
    // The median of the ratios within each round pairs measurements taken close
    // together, so it moves less with the machine's load than the ratio of medians.
    let paired = |a: &str, b: &str| -> Option<f64> {
        let xs = &per_round.iter().find(|(n, _)| *n == a)?.1;
        let ys = &per_round.iter().find(|(n, _)| *n == b)?.1;
        let mut r: Vec<f64> = xs.iter().zip(ys).map(|(x, y)| x.rps / y.rps).collect();
        r.sort_by(f64::total_cmp);
        Some(r[r.len() / 2])
    };
    let ratio = |label: &str, a: &str, b: &str, note: &str| {
        if let (Some(x), Some(y), Some(p)) = (get(a), get(b), paired(a, b)) {
            let cpu = if x.cpu_us.is_nan() || y.cpu_us.is_nan() {
                String::new()
            } else {
                format!("  cpu/req {:.2}x", x.cpu_us / y.cpu_us)
            };
            println!(
                "{label:<22} throughput {:.2}x (per round {p:.2}x)  p99 {:.2}x{cpu}{note}",
                x.rps / y.rps,
                x.p99_us / y.p99_us
            );
        }
    };
    ratio("idgate/direct", "idgate", "direct", "");
    ratio(
        "idgate/nginx",
        "idgate",
        "nginx",
        "   (target: throughput >= 1.00x, p99 <= 1.00x)",
    );
    ratio(
        "idgate-auth/nginx",
        "idg-auth",
        "nginx",
        "   (target: throughput >= 1.00x)",
    );
    ratio("nginx/direct", "nginx", "direct", "");
    ratio(
        "idgate-auth/baseline",
        "idg-auth",
        "idg-base",
        "   (this build against BENCH_IDGATE_BASELINE)",
    );
    ratio("baseline/nginx", "idg-base", "nginx", "");
    ratio(
        "rules-20/idgate-auth",
        "idg-rules",
        "idg-auth",
        "   (20 access rules, none matching; target: within noise of 1.00x)",
    );
    ratio(
        "bearer/idgate-auth",
        "idg-bearer",
        "idg-auth",
        "   (the same user by bearer token instead of a session cookie)",
    );
    ratio(
        "trace-0.01/idgate-auth",
        "idg-trace-0.01",
        "idg-auth",
        "   (tracing on, 1% of traces sampled and exported)",
    );
    ratio(
        "trace-1/idgate-auth",
        "idg-trace-1",
        "idg-auth",
        "   (tracing on, every trace sampled and exported)",
    );
    reloading.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = reloader.join();
    ratio(
        "reload/idgate-auth",
        "idg-reload",
        "idg-auth",
        &format!(
            "   (config reloaded every {} ms while measured: {} reloads in all)",
            RELOAD_EVERY.as_millis(),
            reloads.load(std::sync::atomic::Ordering::Relaxed)
        ),
    );
    ratio(
        "idgate-auth/nginx-hdr",
        "idg-auth",
        "nginx-hdr",
        "   (nginx adding headers of the same size)",
    );
    println!(
        "redis commands/request {:.5}   ({auth_calls} commands over {auth_requests} authenticated requests; target < 0.01)",
        auth_calls as f64 / auth_requests.max(1) as f64
    );
    println!(
        "revocation on replica B: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms over {} users   (target: p99 <= 100 ms)",
        percentile(&revocation_ms, 0.5),
        percentile(&revocation_ms, 0.99),
        revocation_ms.last().copied().unwrap_or_default(),
        revocation_ms.len()
    );

    // The figures of issue 18 item 4 from this run, one greppable line each.
    let workers = idgate_workers();
    println!();
    println!("summary: idgate workers {workers}, nginx worker_processes {workers}");
    let throughput = |label: &str, a: &str, b: &str, note: &str| {
        if let (Some(x), Some(y), Some(p)) = (get(a), get(b), paired(a, b)) {
            println!(
                "ratio {label} {:.2}x  (per round {p:.2}x; {:.0} vs {:.0} req/s){note}",
                x.rps / y.rps,
                x.rps,
                y.rps
            );
        }
    };
    throughput(
        "idg-auth/nginx",
        "idg-auth",
        "nginx",
        "   (authenticated path; target >= 1.00x)",
    );
    throughput(
        "idgate/nginx",
        "idgate",
        "nginx",
        "   (public path; target >= 1.00x)",
    );
    if let (Some(x), Some(y)) = (get("idg-auth"), get("nginx")) {
        println!(
            "ratio cpu/req idg-auth/nginx {:.2}x  ({:.1} vs {:.1} us of the proxy's own CPU per request, from /proc)",
            x.cpu_us / y.cpu_us,
            x.cpu_us,
            y.cpu_us
        );
    }
    if let Some((max, rate, runs)) = &open_loop {
        let mid = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let p99 = |name: &str| {
            runs.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, r)| r.iter().map(|r| r.p99_us).collect::<Vec<_>>())
        };
        // Within a round the runs are seconds apart: the median of the differences moves
        // less with the machine's load than the difference of the medians.
        let added = |name: &str| {
            let (proxy, direct) = (p99(name)?, p99("direct")?);
            let per_round = mid(proxy.iter().zip(&direct).map(|(p, d)| p - d).collect());
            Some((
                (mid(proxy.clone()) - mid(direct)) / 1000.0,
                per_round / 1000.0,
                mid(proxy) / 1000.0,
            ))
        };
        let direct = p99("direct").map(mid).unwrap_or_default() / 1000.0;
        if let Some((ms, per_round, p)) = added("nginx") {
            println!(
                "added p99 nginx-direct {ms:.3} ms  (per round {per_round:.3} ms; the same open loop: p99 direct {direct:.3} ms, nginx {p:.3} ms)"
            );
        }
        if let Some((ms, per_round, p)) = added("idg-auth") {
            println!(
                "added p99 idg-auth-direct {ms:.3} ms  (per round {per_round:.3} ms; open loop at {rate} req/s, {:.0}% of idg-auth's {max:.0}: p99 direct {direct:.3} ms, idg-auth {p:.3} ms; target <= 0.300 ms)",
                share * 100.0,
            );
        }
    }
}
