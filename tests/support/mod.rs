//! Test support: real processes and real servers on loopback.
//!
//! - [`Idgate`] runs the real `idgate` binary on port 0 and reads its bound addresses from
//!   its JSON log.
//! - [`TestUpstream`] is an app on loopback that echoes what it received and can stream,
//!   stall and speak WebSocket.
//! - [`RedisServer`] starts a private `redis-server` on a free port; it panics, never
//!   skips, when Redis cannot be had.
#![allow(dead_code)]

pub mod demo;
pub mod jwt_tool;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestBody = BoxBody<Bytes, BoxError>;

fn full_body(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

// ---------------------------------------------------------------------------------------
// The upstream app.

/// An app on 127.0.0.1 that answers:
/// - `/bytes/{n}`: `n` bytes, streamed in 64 KiB chunks;
/// - `/sleep/{ms}`: waits, then answers 200 `slept`;
/// - `/ws`: a WebSocket echo;
/// - `/stream`: Server-Sent Events, a tick every 100 ms for a minute;
/// - `/hop`: a response carrying hop-by-hop headers;
/// - `/conn`: the client port of the connection that carried the request;
/// - `/close`: a response that closes its connection;
/// - anything else: JSON describing the request as received (method, uri, headers, body
///   size), from idgate's own echo app.
pub struct TestUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestUpstream {
    /// Starts it on a free port.
    pub async fn start() -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = service_fn(move |req| upstream_route(req, peer));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TestUpstream { addr, task }
    }
}

async fn upstream_route(
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<TestBody>, BoxError> {
    let path = req.uri().path().to_owned();
    if path == "/conn" {
        // Which connection carried this request: shows keep-alive reuse.
        return Ok(Response::new(full_body(peer.port().to_string())));
    }
    if path == "/close" {
        let mut resp = Response::new(full_body("closing"));
        resp.headers_mut().insert("connection", "close".parse()?);
        return Ok(resp);
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let total: u64 = n.parse()?;
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(total, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let n = left.min(chunk.len() as u64) as usize;
                Some((
                    Ok::<_, BoxError>(Frame::data(chunk.slice(..n))),
                    left - n as u64,
                ))
            }
        });
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))));
    }
    if path == "/stream" {
        // Server-Sent Events: a tick every 100 ms, for at most a minute.
        let stream = futures_util::stream::unfold(0u32, |n| async move {
            if n >= 600 {
                return None;
            }
            if n > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from(format!("data: tick {n}\n\n")))),
                n + 1,
            ))
        });
        let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        resp.headers_mut()
            .insert("content-type", "text/event-stream".parse()?);
        return Ok(resp);
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse()?)).await;
        return Ok(Response::new(full_body("slept")));
    }
    if path == "/hop" {
        let mut resp = Response::new(full_body("hop"));
        let h = resp.headers_mut();
        h.insert("connection", "x-upstream-private".parse()?);
        h.insert("x-upstream-private", "1".parse()?);
        h.insert("keep-alive", "timeout=5".parse()?);
        h.insert("x-upstream-public", "1".parse()?);
        return Ok(resp);
    }
    if path == "/ws" {
        let key = req
            .headers()
            .get("sec-websocket-key")
            .ok_or("no websocket key")?
            .clone();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(full_body(""))?;
        return Ok(resp);
    }
    let described = idgate::demo::echo::describe(req).await?;
    let mut resp = Response::new(full_body(serde_json::to_vec(&described)?));
    resp.headers_mut()
        .insert("content-type", "application/json".parse()?);
    Ok(resp)
}

// ---------------------------------------------------------------------------------------
// The idgate process.

/// A running `idgate serve`, killed (by its PID) on drop.
pub struct Idgate {
    child: Child,
    /// Public listener.
    pub public: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// A config with both listeners on free loopback ports and the given upstream; `server`
/// adds lines to `[server]`, `rest` adds sections after it.
pub fn config(upstream: SocketAddr, server: &str, rest: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         upstream = \"http://{upstream}\"\npublic_url = \"http://127.0.0.1\"\n{server}\n{rest}\n"
    )
}

impl Idgate {
    /// Starts idgate with `config` and debug logging.
    pub fn start(config: &str) -> Idgate {
        Idgate::start_with_env(config, &[])
    }

    /// Starts idgate with extra environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Idgate {
        Idgate::start_binary(
            std::path::Path::new(env!("CARGO_BIN_EXE_idgate")),
            config,
            env,
        )
    }

    /// Starts the idgate binary at `binary` (the soak runs the release build, not the
    /// debug one Cargo built for the tests), with extra environment variables.
    pub fn start_binary(binary: &std::path::Path, config: &str, env: &[(&str, &str)]) -> Idgate {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("idgate.toml");
        std::fs::write(&path, config).expect("write config");
        let mut cmd = Command::new(binary);
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .env("IDGATE_LOG", "debug,hyper=info,h2=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn idgate");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let logs = logs.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("idgate listening") {
                        let _ = tx.send(line.clone());
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "idgate did not start; its output:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        let addr = |k: &str| -> SocketAddr {
            v[k].as_str()
                .unwrap_or_else(|| panic!("no {k} in {line}"))
                .parse()
                .unwrap()
        };
        Idgate {
            public: addr("public"),
            admin: addr("admin"),
            child,
            logs,
            _dir: dir,
        }
    }

    /// `http://<public>` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    /// The config file it was started with (a test may rewrite it, then reload).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("idgate.toml")
    }

    /// `http://<admin>` + path.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Everything it has logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits (up to 10 s) until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if get(&self.admin_url("/readyz"), &[]).await.status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "idgate never became ready:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to 5 s) until the log contains `needle`: log lines cross a pipe and a
    /// reader thread, so they may trail the response they describe.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to this process (and only this one).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status")
    }
}

impl Drop for Idgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `idgate` with arguments and returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idgate"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run idgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------
// HTTP clients.

/// A response, fully read.
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `name=value` of the `Set-Cookie` header, as a browser sends it back.
    pub fn cookie(&self) -> String {
        let set = self.headers["set-cookie"].to_str().unwrap();
        set.split(';').next().unwrap().to_owned()
    }
}

/// The values the echo upstream received for a header name (exact, lower-case).
pub fn received(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .expect("echo headers")
        .iter()
        .filter(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap().to_owned())
        .collect()
}

/// Every header name the echo upstream received.
pub fn received_names(echo: &serde_json::Value) -> Vec<String> {
    echo["headers"]
        .as_array()
        .expect("echo headers")
        .iter()
        .map(|pair| pair[0].as_str().unwrap().to_owned())
        .collect()
}

/// An HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends a request and reads the whole answer.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client()
        .request(req.body(Full::new(body.into())).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("read body").to_bytes(),
    }
}

/// `GET` with headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send("GET", url, headers, Bytes::new()).await
}

/// Writes raw bytes to `addr` and reads until the server closes (requests should carry
/// `Connection: close`). Exact header spelling survives, unlike with an HTTP library.
pub async fn raw(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON body of a raw HTTP/1.1 response (Content-Length framed).
pub fn raw_json(response: &str) -> serde_json::Value {
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_else(|| panic!("no body in {response}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response}"))
}

// ---------------------------------------------------------------------------------------
// Redis.

/// A private `redis-server` on a free port, stopped (by PID) on drop.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Its TLS port and certificate directory, when started with TLS.
    tls: Option<(u16, tempfile::TempDir)>,
    /// Where it keeps its append-only file, when started persistent.
    persist: Option<tempfile::TempDir>,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts one. Panics, with the reason, if `redis-server` is missing or does not
    /// answer: a test that needs Redis must never pass without it.
    pub fn start() -> RedisServer {
        RedisServer::start_from(None)
    }

    /// Starts one that writes every command to an append-only file (fsync always) in a
    /// private directory, so that it comes back from a SIGKILL with its data, as a
    /// production Redis with persistence does.
    pub fn start_persistent() -> RedisServer {
        RedisServer::start_from(Some(tempfile::tempdir().expect("tempdir")))
    }

    fn start_from(persist: Option<tempfile::TempDir>) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            tls: None,
            persist,
        };
        // `free_port` can race with another test binding the same port: a server that
        // exits at once (its bind failed) is tried again on another port.
        for _ in 0..4 {
            if server.try_start(&[]) {
                return server;
            }
            server.port = free_port();
        }
        server.restart();
        server
    }

    /// Starts one that also serves TLS, with a certificate for 127.0.0.1 issued by a
    /// private CA, both made with `openssl` (see [`RedisServer::tls_ca`]).
    pub fn start_tls() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        make_ca(dir.path(), "ca");
        make_leaf(dir.path(), "ca");
        let port = free_port();
        let tls_port = free_port();
        let mut server = RedisServer {
            child: None,
            port,
            tls: Some((tls_port, dir)),
            persist: None,
        };
        server.restart();
        server
    }

    /// `rediss://…/#insecure` for a TLS server (its CA is not in the web PKI).
    pub fn tls_url(&self) -> String {
        format!("{}#insecure", self.tls_verified_url())
    }

    /// `rediss://…/`, to be verified against [`RedisServer::tls_ca`].
    pub fn tls_verified_url(&self) -> String {
        let (port, _) = self.tls.as_ref().expect("started with start_tls");
        format!("rediss://127.0.0.1:{port}/")
    }

    /// The PEM of the CA that issued the TLS server's certificate.
    pub fn tls_ca(&self) -> Vec<u8> {
        let (_, dir) = self.tls.as_ref().expect("started with start_tls");
        std::fs::read(dir.path().join("ca.pem")).unwrap()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL, as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        match &self.tls {
            Some((port, dir)) => {
                let port = port.to_string();
                let key = dir.path().join("key.pem").display().to_string();
                let cert = dir.path().join("cert.pem").display().to_string();
                self.start_with(&[
                    "--tls-port",
                    &port,
                    "--tls-cert-file",
                    &cert,
                    "--tls-key-file",
                    &key,
                    "--tls-ca-cert-file",
                    &dir.path().join("ca.pem").display().to_string(),
                    "--tls-auth-clients",
                    "no",
                ]);
            }
            None => self.start_with(&[]),
        }
    }

    fn start_with(&mut self, extra: &[&str]) {
        if !self.try_start(extra) {
            panic!(
                "redis-server on port {} exited at start (is the port taken?)",
                self.port
            );
        }
    }

    /// Starts the server and waits for PING; false if it exited instead.
    fn try_start(&mut self, extra: &[&str]) -> bool {
        self.stop();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()]);
        match &self.persist {
            Some(dir) => cmd
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
                .args(["--appendfsync", "always", "--dir"])
                .arg(dir.path()),
            None => cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]),
        };
        let child = cmd
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server (run `make test`, which installs it): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                // Whatever else holds the port must not hang the test.
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 7];
                if s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                    return true;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A 3-master Redis Cluster of private `redis-server`s, stopped on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three nodes on free ports and joins them with `redis-cli --cluster create`.
    /// Panics when that cannot be done: cluster tests never pass without a cluster.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(0)
    }

    /// Three masters with `replicas` replicas each (`cluster-node-timeout` 2000 ms), so
    /// that a master can fail over.
    pub fn start_with(replicas: usize) -> RedisCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            let port = free_port();
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let mut server = RedisServer {
                child: None,
                port,
                tls: None,
                persist: None,
            };
            // The bus port defaults to port + 10000, which can be taken or past 65535.
            let bus_port = free_port().to_string();
            server.start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                "--cluster-port",
                &bus_port,
                // A replica that has never synced cannot be promoted: sync at once
                // rather than after the default 5 s wait for more replicas.
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                node_dir.to_str().unwrap(),
            ]);
            nodes.push(server);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli is installed by `make test`");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster did not reach state ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for n in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "info", "replication"])
                    .output()
                    .expect("redis-cli");
                let info = String::from_utf8_lossy(&info.stdout);
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < deadline, "a replica never synced: {info}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        RedisCluster { nodes, _dir: dir }
    }

    /// `redis-cli -p <a live node's port> <args>`, its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let node = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a live node");
        let out = Command::new("redis-cli")
            .args(["-p", &node.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The port of the master that serves `key`'s slot now.
    pub fn master_for(&self, key: &str) -> u16 {
        let slot: u16 = self
            .cli(&["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answer");
        // CLUSTER NODES: `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch>
        // <state> <slot ranges…>`.
        let nodes = self.cli(&["cluster", "nodes"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let mut ends = range
                    .split('-')
                    .map(|n| n.parse::<u16>().unwrap_or(u16::MAX));
                let lo = ends.next().unwrap_or(u16::MAX);
                let hi = ends.next().unwrap_or(lo);
                (lo..=hi).contains(&slot)
            });
            if serves {
                let addr = fields[1].split('@').next().unwrap();
                return addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        }
        panic!("no master serves slot {slot}:\n{nodes}")
    }

    /// Kills (SIGKILL) the node on `port`.
    pub fn kill(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
            .stop();
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

// ---------------------------------------------------------------------------------------
// Tenants, users and sessions.

/// A `[[tenants]]` block for tenant `id` with the example IdP certificate.
pub fn tenant_toml(id: &str) -> String {
    format!(
        "[[tenants]]\nid = \"{id}\"\n[tenants.saml]\nidp_entity_id = \"https://idp.example.com\"\n\
         idp_sso_url = \"https://idp.example.com/sso\"\n\
         idp_certificate = \"file:{}/config/examples/example-idp.crt\"\n",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Writes a fresh signing key (`idgate keygen --alg ALG`) into `dir` and returns its path.
pub fn signing_key_file(dir: &std::path::Path, alg: &str) -> std::path::PathBuf {
    let (code, pem, err) = run_cli(&["keygen", "--alg", alg], &[]);
    assert_eq!(code, 0, "{err}");
    let path = dir.join(format!("signing-{alg}.pem"));
    std::fs::write(&path, pem).unwrap();
    path
}

/// Creates group `group` and user `user` (member, role `admin`, with names and email)
/// in `tenant` through the library's directory.
pub async fn provision(dir: &idgate::directory::Directory, tenant: &str, user: &str, group: &str) {
    dir.ensure_group(tenant, group, &format!("{group} Inc."))
        .await
        .expect("ensure_group");
    let mut u = idgate::directory::model::User::new(user, idgate::directory::now());
    u.email = Some(format!("{user}@example.com"));
    u.given_name = Some("Ada".into());
    u.family_name = Some("Lovelace".into());
    match dir.create_user(tenant, &u).await {
        Ok(()) | Err(idgate::directory::DirectoryError::Taken { field: "id", .. }) => {}
        Err(e) => panic!("create_user: {e}"),
    }
    dir.set_membership(
        &idgate::audit::Origin::system(),
        tenant,
        user,
        group,
        "admin",
    )
    .await
    .expect("set_membership");
}

/// The SCIM token of a [`Deployment`]'s tenant `acme`.
pub const SCIM_TOKEN: &str = "tunnel-test-scim-token";

/// The library side of a deployment on one Redis: provisions users and makes sessions
/// as a login would; the replicas run the same config.
pub struct Deployment {
    /// The directory on the deployment's store.
    pub dir: idgate::directory::Directory,
    /// Sessions on the deployment's store.
    pub sessions: Arc<idgate::session::Sessions>,
    /// The replicas' config.
    pub text: String,
    _keys: tempfile::TempDir,
}

/// A deployment of tenant `acme` (with SCIM, [`SCIM_TOKEN`]) on the Redis at `redis`:
/// `server` adds `[server]` keys, `extra` top-level tables.
pub fn deployment(
    upstream: std::net::SocketAddr,
    redis: &str,
    server: &str,
    extra: &str,
) -> Deployment {
    let keys = tempfile::tempdir().unwrap();
    let key = signing_key_file(keys.path(), "EdDSA");
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        SCIM_TOKEN.as_bytes(),
    ));
    let text = config(
        upstream,
        server,
        &format!(
            "[store]\nurl = \"{redis}\"\n{extra}\n[identity]\nsigning_key = \"file:{}\"\n\
             {}[tenants.scim]\ntoken = \"sha256:{hash}\"\n",
            key.display(),
            tenant_toml("acme"),
        ),
    );
    let cfg =
        idgate::config::Config::from_toml(&text, std::path::Path::new("/")).expect("valid config");
    let store = idgate::store::Store::open(&cfg.store).expect("store");
    Deployment {
        dir: idgate::directory::Directory::new(store.clone()),
        sessions: Arc::new(idgate::session::Sessions::standalone(&cfg, store).expect("sessions")),
        text,
        _keys: keys,
    }
}

impl Deployment {
    /// A session for `user` in `group` (both provisioned), as a `Cookie` value.
    pub async fn login(&self, user: &str, group: &str) -> String {
        provision(&self.dir, "acme", user, group).await;
        let new = self
            .sessions
            .create_session("acme", user, group)
            .await
            .expect("create_session");
        cookie_for(&self.sessions, &new)
    }
}

/// A `Cookie` header value for a new session.
pub fn cookie_for(
    sessions: &idgate::session::Sessions,
    new: &idgate::session::NewSession,
) -> String {
    format!("{}={}", sessions.cookie_name(), new.cookie_value)
}

// ---------------------------------------------------------------------------------------
// A recording server: fake third parties (Maestrano's API) and apps that answer as told.

/// One request a [`Recorder`] received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path (no query).
    pub path: String,
    /// Query string, or empty.
    pub query: String,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Recorded {
    /// A query parameter.
    pub fn form_query(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The body as form fields.
    pub fn form(&self) -> std::collections::HashMap<String, String> {
        url::form_urlencoded::parse(&self.body)
            .into_owned()
            .collect()
    }
}

/// What a [`Recorder`] answers: status, headers, body.
pub type Answer = (u16, Vec<(String, String)>, String);

/// An HTTP server on 127.0.0.1 that records every request and answers through `respond`.
pub struct Recorder {
    /// Where it listens.
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    /// Starts on a free port.
    pub async fn start<F>(respond: F) -> Recorder
    where
        F: Fn(&Recorded) -> Answer + Send + Sync + 'static,
    {
        Recorder::start_on("127.0.0.1:0".parse().unwrap(), respond).await
    }

    /// Starts on `addr` (to bring an app back on the port it had).
    pub async fn start_on<F>(addr: SocketAddr, respond: F) -> Recorder
    where
        F: Fn(&Recorded) -> Answer + Send + Sync + 'static,
    {
        let listener = TcpListener::bind(addr).await.expect("bind recorder");
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let respond = Arc::new(respond);
        let c = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let calls = c.clone();
                let respond = respond.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let calls = calls.clone();
                        let respond = respond.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let rec = Recorded {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_owned(),
                                query: parts.uri.query().unwrap_or("").to_owned(),
                                headers: parts.headers,
                                body,
                            };
                            let (status, headers, text) = respond(&rec);
                            calls.lock().unwrap().push(rec);
                            let mut resp = Response::new(full_body(text));
                            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                            for (k, v) in headers {
                                resp.headers_mut().insert(
                                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    http::HeaderValue::from_str(&v).unwrap(),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Recorder { addr, calls, task }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<Recorded> {
        self.calls.lock().unwrap().clone()
    }
}

/// Runs `openssl` with `args`, failing the test with its error output.
pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed by `make test`");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA in `dir`: `<name>.pem` and `<name>.key`.
pub fn make_ca(dir: &std::path::Path, name: &str) {
    let p = |ext: &str| dir.join(format!("{name}.{ext}")).display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        &format!("/CN=idgate test {name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        &p("key"),
        "-out",
        &p("pem"),
    ]);
}

/// A server certificate for `127.0.0.1` issued by the CA `<ca>` that [`make_ca`] made in
/// `dir`: `key.pem` and `cert.pem`.
pub fn make_leaf(dir: &std::path::Path, ca: &str) {
    let p = |name: &str| dir.join(name).display().to_string();
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p("key.pem"),
        "-out",
        &p("leaf.csr"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("leaf.csr"),
        "-CA",
        &p(&format!("{ca}.pem")),
        "-CAkey",
        &p(&format!("{ca}.key")),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p("leaf.ext"),
        "-out",
        &p("cert.pem"),
    ]);
}

// ---------------------------------------------------------------------------------------
// A raw recording upstream: the exact bytes of each request head that reached the app.

/// An upstream on 127.0.0.1 that records the raw head (request line and fields, as sent)
/// of every request, reads its body by `Content-Length` or chunked framing, and answers
/// `200 ok` with `Connection: close`. No HTTP library stands between idgate's bytes and
/// the record, so a field that a library would fold or reject is still seen.
pub struct HeadRecorder {
    /// Where it listens.
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HeadRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HeadRecorder {
    /// Starts on a free port.
    pub async fn start() -> HeadRecorder {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let heads = h.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    heads.lock().unwrap().push(head.clone());
                    let lower = head.to_ascii_lowercase();
                    let length = lower
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    let chunked = lower
                        .lines()
                        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
                    let mut body = buf[end..].to_vec();
                    loop {
                        let done = match length {
                            Some(n) => body.len() >= n,
                            None if chunked => body.windows(5).any(|w| w == b"0\r\n\r\n"),
                            None => true,
                        };
                        if done {
                            break;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => body.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = s.shutdown().await;
                });
            }
        });
        HeadRecorder { addr, heads, task }
    }

    /// Every head so far, in arrival order.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.heads.lock().unwrap().clear();
    }
}

/// The fields of a raw request head as (name exactly as sent, value).
pub fn head_fields(head: &str) -> Vec<(String, String)> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
        .collect()
}

/// A header name lower-cased with `_` read as `-`, as CGI-style apps see it.
pub fn folded(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// An HTTP/2 (prior knowledge) client.
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}
