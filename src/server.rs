//! Accepting and serving connections: HTTP/1.1 and HTTP/2 (prior knowledge) on one port,
//! upgrades allowed, and a graceful drain on shutdown.
//!
//! Two shapes share the per-connection code:
//! - [`serve`]: one listener on the ambient (multi-thread) runtime, for the admin
//!   listener and the demo's echo app;
//! - [`serve_workers`]: the public listener. An acceptor hands each connection to one of
//!   N worker threads, each running its own single-threaded runtime with its own upstream
//!   connection pool. A request then never leaves the thread that read it: no cross-thread
//!   wake-ups, no work stealing, no contended pool lock (the nginx worker model). Measured
//!   on the 2-core reference machine, this is what brings the proxied path near nginx.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::proxy::deadline::Deadlines;
use crate::proxy::tunnel::Tunnels;
use crate::response::Body;

mod conn;

/// Something that answers requests. Errors are already responses by the time they leave
/// a handler, so the connection layer never sees one.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request from `peer`.
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// Slowloris bound: a client gets this long to send a request's headers. hyper starts
/// this clock as soon as a keep-alive connection waits for its next request, so it is
/// also how long an idle HTTP/1.1 connection stays open. Ingresses and load balancers
/// keep idle upstream connections for 60 s (nginx ingress, AWS ALB) and expect the
/// backend to keep them longer, or they race a close with their next request and
/// answer 502: 75 s, as nginx's own `keepalive_timeout`.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(75);

/// How long a worker keeps serving its open HTTP/1 connections after shutdown begins,
/// answering each request with `Connection: close`, before it closes the idle ones. An
/// HTTP/1 client cannot tell "closed while idle" from "closed while my request was on
/// the wire": without this pause a request sent just before SIGTERM could be lost.
/// HTTP/2 needs none (GOAWAY says which streams were taken).
const DRAIN_LINGER: Duration = Duration::from_millis(1000);

/// What a connection task holds besides the connection: its slot under
/// `max_connections` (released when the task ends) and the worker's draining flag.
struct ConnectionSlot {
    _permit: Option<OwnedSemaphorePermit>,
    draining: Arc<AtomicBool>,
}

/// The open connections of one listener (or worker): how many, and the signal that
/// closes them (idle HTTP/1 ones at once, HTTP/2 ones with GOAWAY, busy ones after
/// their response).
struct Connections {
    settings: Arc<conn::Settings>,
    close: watch::Sender<bool>,
}

impl Connections {
    fn new(
        deadlines: Arc<Deadlines>,
        header_read_timeout: Duration,
        parked: Arc<AtomicUsize>,
    ) -> Connections {
        Connections {
            settings: Arc::new(conn::Settings::new(deadlines, header_read_timeout, parked)),
            close: watch::Sender::new(false),
        }
    }

    fn spawn<H: Handler>(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        handler: &Arc<H>,
        slot: ConnectionSlot,
    ) {
        tokio::spawn(conn::run(
            stream,
            peer,
            handler.clone(),
            slot,
            self.settings.clone(),
            self.close.subscribe(),
        ));
    }

    /// Connections still open.
    fn count(&self) -> usize {
        self.close.receiver_count()
    }

    /// Closes the idle connections, lets the busy ones finish, and resolves when all
    /// are closed.
    async fn shutdown(&self) {
        self.close.send_replace(true);
        self.close.closed().await;
    }
}

/// During the drain linger, an HTTP/1 response asks the client to close: it is the
/// connection's last. A `101 Switching Protocols` keeps its own `Connection: upgrade`.
fn close_if_draining(
    version: http::Version,
    mut resp: Response<Body>,
    draining: &AtomicBool,
) -> Response<Body> {
    if draining.load(Ordering::Relaxed)
        && version < http::Version::HTTP_2
        && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
    {
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// Waits up to `grace` for in-flight requests and open tunnels to finish, then closes
/// the tunnels that are left (each logs its end) and gives them a moment to do so.
async fn drain(connections: &Connections, grace: Duration, tunnels: Option<&Tunnels>) {
    let all = async {
        connections.shutdown().await;
        if let Some(t) = tunnels {
            t.wait_idle().await;
        }
    };
    if tokio::time::timeout(grace, all).await.is_err() {
        tracing::warn!(grace = ?grace, open_tunnels = tunnels.map_or(0, Tunnels::open), "shutdown grace expired with requests or tunnels still open");
        if let Some(t) = tunnels {
            t.close_all();
            let _ = tokio::time::timeout(Duration::from_secs(2), t.wait_idle()).await;
        }
    }
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn accept_next(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(pair) => return pair,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning on the error.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves `listener` until `shutdown` flips to true, then stops accepting and gives
/// in-flight requests up to `grace` to finish. Returns when the drain is over.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let connections = Connections::new(Deadlines::new(), HEADER_READ_TIMEOUT, Arc::default());
    let draining = Arc::new(AtomicBool::new(false));
    loop {
        tokio::select! {
            (stream, peer) = accept_next(&listener) => {
                let slot = ConnectionSlot { _permit: None, draining: draining.clone() };
                connections.spawn(stream, peer, &handler, slot);
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    drain(&connections, grace, None).await;
}

/// The public listener's bound on open connections (`[server].max_connections`). At
/// the bound idgate stops accepting: new connections wait in the kernel's listen
/// backlog, as with nginx's `worker_connections`, rather than being accepted only to be
/// closed, and every open connection keeps being served.
pub struct ConnectionLimit {
    max: usize,
    permits: Arc<Semaphore>,
    reached: AtomicU64,
    parked: Arc<AtomicUsize>,
}

/// How often, at most, reaching the connection limit is logged.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(10);

impl ConnectionLimit {
    /// A limit of `max` open connections (at least one).
    pub fn new(max: usize) -> Arc<ConnectionLimit> {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(ConnectionLimit {
            max,
            permits: Arc::new(Semaphore::new(max)),
            reached: AtomicU64::new(0),
            parked: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Open connections that are parked (idle, holding no buffers; see `server/conn.rs`).
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    /// The configured bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// How many times a connection had to wait because the bound was reached.
    pub fn times_reached(&self) -> u64 {
        self.reached.load(Ordering::Relaxed)
    }

    /// A slot for the next connection, waiting for one to close when all are taken.
    async fn acquire(&self, last_log: &mut Option<Instant>) -> OwnedSemaphorePermit {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return permit;
        }
        let times = self.reached.fetch_add(1, Ordering::Relaxed) + 1;
        if last_log.is_none_or(|t| t.elapsed() >= LIMIT_LOG_EVERY) {
            *last_log = Some(Instant::now());
            tracing::warn!(
                max_connections = self.max,
                times_reached = times,
                "connection limit reached: new connections wait in the listen backlog until one closes (raise [server].max_connections, or add replicas)"
            );
        }
        // The semaphore is never closed, so this only waits.
        match self.permits.clone().acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => unreachable!("the connection semaphore is never closed"),
        }
    }
}

type Handoff = (std::net::TcpStream, SocketAddr, OwnedSemaphorePermit);

/// The public listener on `workers` threads (see the module docs). `make_handler` runs
/// once on each worker thread, inside its runtime, so that whatever the handler creates
/// there (the upstream pool) belongs to that thread. Returns when every worker has
/// drained; `tunnels` are waited for (and closed when `grace` ends) as requests are.
///
/// Shutdown: accepting stops at once (and connections already in the listen backlog
/// are still taken and served), HTTP/2 connections get GOAWAY after [`DRAIN_LINGER`],
/// HTTP/1 connections answer what they receive meanwhile with `Connection: close` and
/// idle ones are closed when it ends, and in-flight requests get the rest of `grace`.
pub async fn serve_workers<H, F>(
    listener: TcpListener,
    workers: usize,
    make_handler: F,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    tunnels: Arc<Tunnels>,
    limit: Arc<ConnectionLimit>,
) where
    H: Handler,
    F: Fn(usize) -> Arc<H> + Send + Sync + 'static,
{
    let make_handler = Arc::new(make_handler);
    let mut senders = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    let started = Instant::now();
    let (drain_tx, drain_rx) = watch::channel(None::<Instant>);
    for index in 0..workers.max(1) {
        let (tx, rx) = mpsc::unbounded_channel::<Handoff>();
        senders.push(tx);
        let make_handler = make_handler.clone();
        let drain_rx = drain_rx.clone();
        let tunnels = tunnels.clone();
        let parked = limit.parked.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("idgate-worker-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, index, "cannot start worker runtime");
                        return;
                    }
                };
                runtime.block_on(worker(
                    rx,
                    make_handler(index),
                    drain_rx,
                    grace,
                    tunnels,
                    parked,
                ));
            });
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => tracing::error!(error = %e, index, "cannot start worker thread"),
        }
    }

    let mut next = 0usize;
    let mut last_log = None;
    let mut hand_over = |stream: std::net::TcpStream, peer, permit| {
        // Round-robin by connection keeps workers balanced even with few long-lived
        // connections (an ingress's keep-alive pool), which SO_REUSEPORT's hashing
        // would not.
        if senders[next % senders.len()]
            .send((stream, peer, permit))
            .is_err()
        {
            tracing::error!(
                worker = next % senders.len(),
                "worker is gone; connection dropped"
            );
        }
        next = next.wrapping_add(1);
    };
    'accepting: loop {
        let permit = tokio::select! {
            permit = limit.acquire(&mut last_log) => permit,
            _ = stopped(&mut shutdown) => break 'accepting,
        };
        tokio::select! {
            (stream, peer) = accept_next(&listener) => match stream.into_std() {
                Ok(s) => hand_over(s, peer, permit),
                Err(e) => tracing::warn!(error = %e, "cannot hand over connection"),
            },
            _ = stopped(&mut shutdown) => break 'accepting,
        }
    }
    // Connections the kernel completed before the listener closes were made by clients
    // that sent their request before shutdown: serve them rather than reset them.
    let drain_started = Instant::now();
    let _ = drain_tx.send(Some(drain_started));
    match listener.into_std() {
        Ok(std_listener) => {
            let _ = std_listener.set_nonblocking(true);
            while let Ok((stream, peer)) = std_listener.accept() {
                let Ok(permit) = limit.permits.clone().try_acquire_owned() else {
                    break;
                };
                hand_over(stream, peer, permit);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot take the listen backlog at shutdown"),
    }
    tracing::debug!(uptime = ?started.elapsed(), "stopped accepting connections");
    drop(senders);
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
}

async fn worker<H: Handler>(
    mut handoffs: mpsc::UnboundedReceiver<Handoff>,
    handler: Arc<H>,
    mut drain_signal: watch::Receiver<Option<Instant>>,
    grace: Duration,
    tunnels: Arc<Tunnels>,
    parked: Arc<AtomicUsize>,
) {
    let connections = Connections::new(Deadlines::new(), HEADER_READ_TIMEOUT, parked);
    let draining = Arc::new(AtomicBool::new(false));
    let adopt = |(std_stream, peer, permit): Handoff| match TcpStream::from_std(std_stream) {
        Ok(stream) => {
            let slot = ConnectionSlot {
                _permit: Some(permit),
                draining: draining.clone(),
            };
            connections.spawn(stream, peer, &handler, slot);
        }
        Err(e) => tracing::warn!(error = %e, "cannot adopt connection"),
    };
    loop {
        tokio::select! {
            next = handoffs.recv() => match next {
                Some(handoff) => adopt(handoff),
                None => break,
            },
            _ = drain_signal.wait_for(Option::is_some) => break,
        }
    }
    let began = (*drain_signal.borrow()).unwrap_or_else(Instant::now);
    draining.store(true, Ordering::Relaxed);
    // The linger: keep reading requests on open connections (answered with
    // `Connection: close`) and take the connections the acceptor still hands over
    // from the listen backlog, until the channel closes and the linger is over.
    let linger_end = began + DRAIN_LINGER.min(grace / 2);
    let mut open = true;
    loop {
        let past = Instant::now() >= linger_end;
        if !open && (past || connections.count() == 0) {
            break;
        }
        tokio::select! {
            next = handoffs.recv(), if open => match next {
                Some(handoff) => adopt(handoff),
                None => open = false,
            },
            _ = tokio::time::sleep_until(linger_end.into()), if !past => {}
        }
    }
    // Tunnels run on the workers' runtimes: a worker that returned would drop them
    // unlogged, so each waits until all are gone.
    drain(
        &connections,
        grace.saturating_sub(began.elapsed()),
        Some(&tunnels),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Hello;

    /// How long `Hello` takes to answer `/slow`.
    const SLOW: Duration = Duration::from_millis(2500);

    impl Handler for Hello {
        async fn call(
            self: Arc<Self>,
            req: Request<Incoming>,
            _peer: SocketAddr,
        ) -> Response<Body> {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(SLOW).await;
            }
            crate::response::text(http::StatusCode::OK, "hello")
        }
    }

    /// A listener on 127.0.0.1 served by [`Connections`] with these timings.
    async fn listen(timeout: Duration, park_after: Duration) -> (SocketAddr, Arc<Connections>) {
        let mut settings = conn::Settings::new(Deadlines::new(), timeout, Arc::default());
        settings.park_after = park_after;
        let connections = Arc::new(Connections {
            settings: Arc::new(settings),
            close: watch::Sender::new(false),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = Arc::new(Hello);
        let serving = connections.clone();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                let slot = ConnectionSlot {
                    _permit: None,
                    draining: Arc::new(AtomicBool::new(false)),
                };
                serving.spawn(stream, peer, &handler, slot);
            }
        });
        (addr, connections)
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    /// Reads one `Hello` response (its length is known) from a keep-alive connection.
    async fn read_hello(stream: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"hello") {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    /// A connection that made one request and has parked since.
    async fn parked_client(
        addr: SocketAddr,
        connections: &Connections,
        park_after: Duration,
    ) -> TcpStream {
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(GET).await.unwrap();
        read_hello(&mut client).await;
        tokio::time::sleep(park_after * 4).await;
        assert_eq!(connections.settings.parked(), 1);
        client
    }

    /// Resolves when the server closes `stream`; returns what it sent meanwhile.
    async fn closed(stream: &mut TcpStream) -> String {
        String::from_utf8_lossy(&closed_bytes(stream).await).into_owned()
    }

    /// [`closed`], the bytes as sent.
    async fn closed_bytes(stream: &mut TcpStream) -> Vec<u8> {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
            .await
            .expect("the server closes the connection")
            .ok();
        rest
    }

    /// Slowloris: a client that never finishes its request head is cut off once the
    /// header-read timeout passes, on the workers' coarse clock, while requests sent in
    /// time on the same kind of connection are served.
    #[tokio::test(flavor = "current_thread")]
    async fn a_request_head_that_never_ends_is_cut_off() {
        let timeout = Duration::from_millis(300);
        let (addr, _connections) = listen(timeout, conn::PARK_AFTER).await;

        let mut ok = TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        ok.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        let mut slow = TcpStream::connect(addr).await.unwrap();
        let start = std::time::Instant::now();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let rest = closed(&mut slow).await;
        let waited = start.elapsed();
        assert!(waited >= timeout, "closed after {waited:?}");
        assert!(!rest.contains(" 200 "), "{rest:?}");
    }

    /// An idle keep-alive connection parks (hyper's buffers are freed) and its next
    /// request is answered on the same socket; a busy one never parks.
    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_keep_alive_connection_parks_and_answers_its_next_request() {
        let park_after = Duration::from_millis(200);
        let (addr, connections) = listen(Duration::from_secs(30), park_after).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        for _ in 0..20 {
            client.write_all(GET).await.unwrap();
            assert!(read_hello(&mut client).await.starts_with("HTTP/1.1 200"));
        }
        assert_eq!(connections.settings.parked(), 0, "parked while busy");
        tokio::time::sleep(park_after * 4).await;
        assert_eq!(connections.settings.parked(), 1, "idle but not parked");
        client.write_all(GET).await.unwrap();
        assert!(read_hello(&mut client).await.starts_with("HTTP/1.1 200"));
        assert_eq!(connections.settings.parked(), 0);
        // Parked again, the client's close ends the connection's task.
        tokio::time::sleep(park_after * 4).await;
        assert_eq!(connections.settings.parked(), 1);
        drop(client);
        let end = Instant::now() + Duration::from_secs(5);
        while connections.count() > 0 {
            assert!(
                Instant::now() < end,
                "the connection's task outlived its socket"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Bytes hyper had read past a request (pipelining) are handed back across a park:
    /// two requests in one write get two answers, and a head that has begun never
    /// parks.
    #[tokio::test(flavor = "current_thread")]
    async fn pipelined_and_partial_requests_survive_parking() {
        let park_after = Duration::from_millis(200);
        let (addr, connections) = listen(Duration::from_secs(30), park_after).await;
        let mut client = parked_client(addr, &connections, park_after).await;
        // Two requests and a third's beginning, in one write, to a parked connection.
        client
            .write_all(
                b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HT",
            )
            .await
            .unwrap();
        let mut got = read_hello(&mut client).await;
        if got.matches("hello").count() < 2 {
            got += &read_hello(&mut client).await;
        }
        assert_eq!(got.matches("HTTP/1.1 200").count(), 2, "{got}");
        tokio::time::sleep(park_after * 4).await;
        assert_eq!(
            connections.settings.parked(),
            0,
            "parked with half a head read"
        );
        client
            .write_all(b"TP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(read_hello(&mut client).await.starts_with("HTTP/1.1 200"));
    }

    /// The header-read timeout keeps running across a park: a keep-alive connection
    /// closes that long after its last response, and a head begun after a park gets
    /// only what is left of it.
    #[tokio::test(flavor = "current_thread")]
    async fn the_idle_timeout_runs_across_a_park() {
        let timeout = Duration::from_millis(1200);
        let park_after = Duration::from_millis(200);
        let (addr, connections) = listen(timeout, park_after).await;

        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(GET).await.unwrap();
        read_hello(&mut idle).await;
        let answered = Instant::now();
        let rest = closed(&mut idle).await;
        let waited = answered.elapsed();
        assert!(rest.is_empty(), "{rest:?}");
        assert!(
            waited >= timeout && waited < timeout * 2,
            "closed after {waited:?}"
        );

        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(GET).await.unwrap();
        read_hello(&mut slow).await;
        let answered = Instant::now();
        tokio::time::sleep(park_after * 3).await;
        assert_eq!(connections.settings.parked(), 1);
        slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let rest = closed(&mut slow).await;
        let waited = answered.elapsed();
        assert!(!rest.contains(" 200 "), "{rest:?}");
        assert!(
            waited >= timeout && waited < timeout * 2,
            "closed after {waited:?}"
        );
    }

    /// A new connection's first head has the timeout from the accept: bytes sent late
    /// do not start a fresh one.
    #[tokio::test(flavor = "current_thread")]
    async fn a_first_head_begun_late_gets_only_what_is_left_of_the_timeout() {
        let timeout = Duration::from_millis(1200);
        let (addr, _connections) = listen(timeout, conn::PARK_AFTER).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        let connected = Instant::now();
        tokio::time::sleep(Duration::from_millis(800)).await;
        slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let rest = closed(&mut slow).await;
        let waited = connected.elapsed();
        assert!(!rest.contains(" 200 "), "{rest:?}");
        // At most two coarse ticks late; a fresh timeout would close at 2 s.
        assert!(
            waited >= timeout && waited < timeout + Duration::from_millis(500),
            "closed after {waited:?}"
        );
    }

    /// An HTTP/2 client that opens no stream is sent GOAWAY once the header-read timeout
    /// passes, and closed shortly after even if it never answers (hyper's graceful close
    /// waits for a PING round trip that such a client never completes).
    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_http2_connection_is_closed_even_if_its_client_never_answers() {
        let timeout = Duration::from_millis(600);
        let (addr, connections) = listen(timeout, conn::PARK_AFTER).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let connected = Instant::now();
        // The preface and an empty SETTINGS frame, then nothing: no ACK, no PING answer.
        silent
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let sent = closed_bytes(&mut silent).await;
        let waited = connected.elapsed();
        assert!(
            waited >= timeout && waited < timeout * 3 + Duration::from_millis(500),
            "closed after {waited:?}"
        );
        // Frames: 3-byte length, then type (7 = GOAWAY).
        let mut types = Vec::new();
        let mut rest = &sent[..];
        while rest.len() >= 9 {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            types.push(rest[3]);
            rest = &rest[(9 + len).min(rest.len())..];
        }
        assert!(types.contains(&7), "no GOAWAY among frame types {types:?}");
        assert_eq!(connections.count(), 0);
    }

    /// An HTTP/2 connection is idle only with no stream open: a request that takes
    /// longer than the timeout is answered, and the connection closes a timeout after.
    #[tokio::test(flavor = "current_thread")]
    async fn an_http2_connection_with_a_stream_open_is_not_idle() {
        let timeout = Duration::from_millis(600);
        assert!(SLOW >= timeout * 4);
        let (addr, _connections) = listen(timeout, conn::PARK_AFTER).await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        let conn = tokio::spawn(conn);
        let req = Request::get("http://x/slow")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send
            .send_request(req)
            .await
            .expect("answered after the timeout");
        assert_eq!(resp.status(), 200);
        // No GOAWAY came while the stream was open: the connection takes a new one.
        let again = Request::get("http://x/")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send
            .send_request(again)
            .await
            .expect("the connection still takes requests");
        assert_eq!(resp.status(), 200);
        let answered = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), conn)
            .await
            .expect("closed once idle")
            .unwrap()
            .ok();
        let waited = answered.elapsed();
        // The client sees the answer a moment after its stream ended on the server.
        assert!(
            waited + Duration::from_millis(50) >= timeout && waited < timeout * 3,
            "closed {waited:?} after the answer"
        );
    }

    /// Shutdown closes parked connections at once, like hyper's idle ones.
    #[tokio::test(flavor = "current_thread")]
    async fn shutdown_closes_parked_connections() {
        let park_after = Duration::from_millis(200);
        let (addr, connections) = listen(Duration::from_secs(30), park_after).await;
        let mut client = parked_client(addr, &connections, park_after).await;
        tokio::time::timeout(Duration::from_secs(5), connections.shutdown())
            .await
            .expect("shutdown waits for nothing but the parked connection");
        assert_eq!(closed(&mut client).await, "");
    }
}
