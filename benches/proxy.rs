//! `make bench` (`cargo bench --bench proxy`): throughput and latency of the proxied path.
//!
//! One run measures, with the same load generator (wrk) against the same upstream:
//! - **direct**: wrk → upstream (the ceiling);
//! - **idgate**: wrk → idgate (public path, release build) → upstream;
//! - **nginx**: wrk → nginx as a plain keep-alive proxy → upstream, when nginx is installed.
//!
//! The machine is shared and noisy, so targets are measured in interleaved rounds and the
//! median round is reported, with ratios taken within the same run. Logging is off for
//! both proxies (`IDGATE_LOG=warn`, nginx `access_log off`).
//!
//! Knobs: `BENCH_SECONDS` (per round, default 8), `BENCH_ROUNDS` (default 3),
//! `BENCH_CONNECTIONS` (default 64).

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// The upstream's answer: 20 bytes, as in the engine comparison in STYLE.md.
const BODY: &[u8] = b"hello from upstream\n";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

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

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // Only the process this bench started, by its PID.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_idgate(upstream: SocketAddr, dir: &std::path::Path) -> (Proc, SocketAddr) {
    let port = free_port();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\n\
         upstream = \"http://{upstream}\"\n[access]\npublic_paths = [\"/\"]\n"
    );
    let path = dir.join("idgate.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("IDGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start idgate");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proc = Proc(child);
    wait_for_port(addr, "idgate");
    (proc, addr)
}

fn start_nginx(upstream: SocketAddr, dir: &std::path::Path) -> Option<(Proc, SocketAddr)> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let port = free_port();
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let d = dir.display();
    let conf = format!(
        "{user}worker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream app {{ server {upstream}; keepalive 128; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://app;\n\
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        user = if is_root { "user root;\n" } else { "" },
    );
    let path = dir.join("nginx.conf");
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
    let proc = Proc(child);
    wait_for_port(addr, "nginx");
    Some((proc, addr))
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
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

fn wrk(addr: SocketAddr, seconds: u64, connections: u64) -> Sample {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
        ])
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
    Sample {
        rps: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}")),
        p50_us: field("50%")
            .and_then(|v| parse_latency(&v))
            .unwrap_or_else(|| panic!("no p50 in wrk output:\n{text}")),
        p99_us: field("99%")
            .and_then(|v| parse_latency(&v))
            .unwrap_or_else(|| panic!("no p99 in wrk output:\n{text}")),
    }
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    v[v.len() / 2]
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
    let dir = tempfile::tempdir().unwrap();
    let upstream = start_upstream();
    let (_idgate, idgate) = start_idgate(upstream, dir.path());
    let nginx = start_nginx(upstream, dir.path());
    if nginx.is_none() {
        eprintln!("nginx is not installed: measuring direct and idgate only");
    }

    let mut targets: Vec<(&str, SocketAddr)> = vec![("direct", upstream), ("idgate", idgate)];
    if let Some((_, addr)) = &nginx {
        targets.push(("nginx", *addr));
    }
    // Warm-up: fill connection pools and caches.
    for (_, addr) in &targets {
        wrk(*addr, 2, connections);
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (i, (name, addr)) in targets.iter().enumerate() {
            let s = wrk(*addr, seconds, connections);
            eprintln!(
                "round {}: {name:<7} {:>9.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us",
                round + 1,
                s.rps,
                s.p50_us,
                s.p99_us
            );
            samples[i].push(s);
        }
    }
    let results: Vec<(&str, Sample)> = targets
        .iter()
        .zip(samples)
        .map(|((name, _), s)| (*name, median(s)))
        .collect();
    println!();
    println!(
        "proxy benchmark: wrk -t2 -c{connections}, {seconds}s x {rounds} interleaved rounds, median round, 20-byte body"
    );
    println!(
        "{:<8} {:>12} {:>10} {:>10}",
        "target", "req/s", "p50 us", "p99 us"
    );
    for (name, s) in &results {
        println!(
            "{name:<8} {:>12.0} {:>10.0} {:>10.0}",
            s.rps, s.p50_us, s.p99_us
        );
    }
    let get = |n: &str| results.iter().find(|(name, _)| *name == n).map(|(_, s)| *s);
    let idg = get("idgate").expect("idgate measured");
    let direct = get("direct").expect("direct measured");
    println!();
    println!(
        "idgate/direct  throughput {:.2}x  p99 {:.2}x",
        idg.rps / direct.rps,
        idg.p99_us / direct.p99_us
    );
    if let Some(ng) = get("nginx") {
        println!(
            "idgate/nginx   throughput {:.2}x  p99 {:.2}x   (target: throughput >= 0.90x, p99 <= 1.00x)",
            idg.rps / ng.rps,
            idg.p99_us / ng.p99_us
        );
        println!("nginx/direct   throughput {:.2}x", ng.rps / direct.rps);
    }
}
