//! One client connection, from its first byte to its close.
//!
//! hyper keeps an HTTP/1 connection's read and write buffers (8 KiB each) and its
//! parser state for the connection's whole life, idle or not: 10,000 idle keep-alive
//! connections held about 20 KB each, where nginx, which frees a keep-alive
//! connection's buffers as soon as it is idle, holds 1.6 KB. This module *parks* an
//! idle HTTP/1 connection instead: once it has waited [`Settings::park_after`] for its
//! next request with nothing buffered in either direction, its hyper connection is
//! ended without touching the socket (hyper's idle close, with the IO's shutdown made a
//! no-op), and the task waits for the socket to become readable with nothing else held.
//! The next request starts a new hyper connection on the same socket, with whatever
//! hyper had read ahead handed back first.
//!
//! What stays exactly as hyper does it: the header-read timeout (it keeps running
//! across a park, so a keep-alive connection still closes [`Settings::header_read_timeout`]
//! after its last response, and a slowloris head is never reset by one), pipelining,
//! upgrades, and graceful shutdown. HTTP/2 connections carry state from request to
//! request (HPACK tables, settings, streams) and keep one hyper connection for life;
//! hyper gives them no idle timeout, so [`Served::serve_h2`] closes one that has had no
//! stream open for the header-read timeout, as an idle HTTP/1 connection closes.
//!
//! A busy connection never parks: hyper drops the header-read timer as soon as a head
//! has arrived, and the park check rides on that timer, so a keep-alive connection
//! with requests less than `park_after` apart costs nothing more than before.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{ConnectionSlot, Handler, close_if_draining};
use crate::proxy::deadline::{CoarseSleep, Deadlines};
use crate::response::Body;

/// HTTP/2's connection preface (RFC 9113 §3.4): what a prior-knowledge client sends
/// first. No HTTP/1 request line starts with `PRI `.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How connections are served; one per listener (per worker for the public one).
pub(super) struct Settings {
    /// hyper's HTTP/1 settings, without the timer (each connection gets its own).
    pub http1: http1::Builder,
    /// hyper's HTTP/2 settings.
    pub http2: http2::Builder<TokioExecutor>,
    /// The clock behind the header-read timeout and the park check.
    pub deadlines: Arc<Deadlines>,
    /// How long a client gets to send a request head, counted from when idgate starts
    /// waiting for it (so also how long a keep-alive connection may sit idle).
    pub header_read_timeout: Duration,
    /// How long an HTTP/1 connection waits for its next request before it parks; zero
    /// never parks.
    pub park_after: Duration,
    /// Connections parked now (shared by a listener's workers).
    parked: Arc<AtomicUsize>,
}

impl Settings {
    /// The settings every listener uses, on `deadlines`.
    pub fn new(
        deadlines: Arc<Deadlines>,
        header_read_timeout: Duration,
        parked: Arc<AtomicUsize>,
    ) -> Settings {
        let mut h1 = http1::Builder::new();
        h1.header_read_timeout(header_read_timeout).keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new());
        Settings {
            http1: h1,
            http2: h2,
            deadlines,
            header_read_timeout,
            park_after: PARK_AFTER,
            parked,
        }
    }

    /// How many connections are parked now.
    #[cfg(test)]
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }
}

/// Counts a connection as parked while it lives.
struct ParkedGuard<'a>(&'a AtomicUsize);

impl<'a> ParkedGuard<'a> {
    fn new(parked: &'a AtomicUsize) -> Self {
        parked.fetch_add(1, Ordering::Relaxed);
        ParkedGuard(parked)
    }
}

impl Drop for ParkedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An HTTP/1 connection idle this long parks. Long enough that a client sending
/// request after request (a browser loading a page, an ingress's pooled connection
/// under load) never pays for a new hyper connection; short enough that a burst of
/// clients which made a request and went quiet holds memory for only a second.
pub(super) const PARK_AFTER: Duration = Duration::from_secs(1);

/// What the task, the IO and the header timer of one connection share. Atomics only
/// because hyper wants its timer `Send + Sync`: all three run on the same task.
#[derive(Default)]
struct Shared {
    /// Bytes handed to hyper so far.
    delivered: AtomicU64,
    /// hyper wrote since it last flushed. hyper flushes its IO only once its own write
    /// buffer is empty, so `false` means no response bytes are waiting in hyper.
    unflushed: AtomicBool,
    /// Heads hyper has begun to read on the current hyper connection.
    heads: AtomicU32,
    /// Set by the header timer once the connection is idle enough to park; from then the
    /// IO's shutdown is a no-op and the task ends the hyper connection.
    park: AtomicBool,
    /// The header-read deadline that keeps running across a park.
    deadline: Mutex<Option<Instant>>,
    /// HTTP/2: streams open now (a request being answered or its body being sent).
    streams: AtomicUsize,
    /// HTTP/2: streams begun so far, so that one opened and closed between two idle
    /// checks still counts as use.
    begun: AtomicU64,
}

/// An HTTP/2 stream's place in its connection's count, given back when the stream's
/// request future or response body is dropped (answered, or reset by the client).
struct OpenStream(Arc<Shared>);

impl OpenStream {
    fn new(shared: Arc<Shared>) -> OpenStream {
        shared.streams.fetch_add(1, Ordering::Relaxed);
        shared.begun.fetch_add(1, Ordering::Relaxed);
        OpenStream(shared)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that holds its HTTP/2 stream open in the count until it is sent.
pub(super) struct Counted {
    body: Body,
    _open: Option<OpenStream>,
}

impl http_body::Body for Counted {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// After an idle HTTP/2 connection was sent GOAWAY, how long its client gets to
/// acknowledge it (hyper waits for a PING round trip) before the socket is closed
/// anyway: a client that never answers must not keep its place.
const IDLE_GOAWAY_GRACE: Duration = Duration::from_secs(5);

impl Shared {
    fn deadline(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // Nothing here can leave the value half-written, so a poisoned lock is usable.
        self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves one accepted connection until it closes, `close` turns true, or (HTTP/1, while
/// idle) its header-read timeout passes.
pub(super) async fn run<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
    slot: ConnectionSlot,
    settings: Arc<Settings>,
    mut close: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + settings.header_read_timeout;
    let Some((h2, carry)) = first_bytes(&stream, &mut close, deadline, true).await else {
        return;
    };
    // The first head's time began at the accept, not at its first bytes.
    let conn = Served::new(peer, handler, slot, settings, deadline);
    if h2 {
        Box::pin(conn.serve_h2(stream, carry, &mut close)).await;
    } else {
        conn.serve(stream, carry, close).await;
    }
}

/// A parked connection's task: waits for its next bytes holding only the socket, then
/// serves on. A new task, and the socket registered anew, rather than the one that
/// served: what a parked connection keeps is allocated after the buffers it gave up
/// were freed, so it fills their place instead of pinning the allocator pages they
/// shared with the connections busy at the same time (10,000 connections opened in a
/// burst otherwise kept about 10 KB each resident).
async fn parked<H: Handler>(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
    slot: ConnectionSlot,
    settings: Arc<Settings>,
    mut close: watch::Receiver<bool>,
    deadline: Instant,
) {
    let Ok(stream) = TcpStream::from_std(stream) else {
        return;
    };
    let carry = {
        let _parked = ParkedGuard::new(&settings.parked);
        match first_bytes(&stream, &mut close, deadline, false).await {
            Some((_, bytes)) => bytes,
            None => return,
        }
    };
    // The head that follows is measured from when the wait for it began.
    Served::new(peer, handler, slot, settings, deadline)
        .serve(stream, carry, close)
        .await;
}

/// Waits for a connection's next bytes and reads the first few: `None` when the client
/// closed, the deadline passed or `close` turned true first. With `sniff`, reads until it
/// is clear whether they begin HTTP/2's preface (`true`) or not.
async fn first_bytes(
    stream: &TcpStream,
    close: &mut watch::Receiver<bool>,
    deadline: Instant,
    sniff: bool,
) -> Option<(bool, Bytes)> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    loop {
        tokio::select! {
            ready = stream.readable() => ready.ok()?,
            _ = tokio::time::sleep_until(deadline.into()) => return None,
            _ = close.wait_for(|stop| *stop) => return None,
        }
        match stream.try_read(&mut buf[n..]) {
            Ok(0) => return None,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
        let read = Bytes::copy_from_slice(&buf[..n]);
        if !sniff || buf[..n] != H2_PREFACE[..n] {
            return Some((false, read));
        }
        if n == H2_PREFACE.len() {
            return Some((true, read));
        }
    }
}

/// One connection's fixed parts.
struct Served<H> {
    peer: SocketAddr,
    handler: Arc<H>,
    slot: ConnectionSlot,
    settings: Arc<Settings>,
    shared: Arc<Shared>,
}

impl<H: Handler> Served<H> {
    /// A connection whose next request head is due by `deadline`.
    fn new(
        peer: SocketAddr,
        handler: Arc<H>,
        slot: ConnectionSlot,
        settings: Arc<Settings>,
        deadline: Instant,
    ) -> Self {
        let shared = Shared {
            deadline: Mutex::new(Some(deadline)),
            ..Shared::default()
        };
        Served {
            peer,
            handler,
            slot,
            settings,
            shared: Arc::new(shared),
        }
    }

    fn service(&self, count_streams: bool) -> Service<H> {
        Service {
            handler: self.handler.clone(),
            draining: self.slot.draining.clone(),
            peer: self.peer,
            streams: count_streams.then(|| self.shared.clone()),
        }
    }

    /// Serves HTTP/1 until the connection closes or parks (in a task of its own).
    /// Boxed as `dyn`: [`parked`] serves on through here, and the compiler cannot size
    /// (or prove `Send` for) a future that contains itself.
    fn serve(
        self,
        mut stream: TcpStream,
        mut carry: Bytes,
        mut close: watch::Receiver<bool>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            loop {
                let Some((socket, rest)) = self.serve_h1(stream, carry, &mut close).await else {
                    return;
                };
                stream = socket;
                let deadline = self.shared.deadline().take();
                let deadline =
                    deadline.unwrap_or_else(|| Instant::now() + self.settings.header_read_timeout);
                if rest.is_empty() {
                    let Ok(socket) = stream.into_std() else {
                        return;
                    };
                    let Served {
                        peer,
                        handler,
                        slot,
                        settings,
                        ..
                    } = self;
                    let next: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(parked(
                        socket, peer, handler, slot, settings, close, deadline,
                    ));
                    tokio::spawn(next);
                    return;
                }
                // hyper had read past the last request: serve on at once, the head that
                // follows measured from when the wait for it began.
                carry = rest;
                *self.shared.deadline() = Some(deadline);
            }
        })
    }

    /// Serves HTTP/1 requests until the connection closes (`None`) or parks: then the
    /// socket comes back with whatever hyper had read past the last request.
    async fn serve_h1(
        &self,
        stream: TcpStream,
        carry: Bytes,
        close: &mut watch::Receiver<bool>,
    ) -> Option<(TcpStream, Bytes)> {
        self.shared.heads.store(0, Ordering::Relaxed);
        self.shared.park.store(false, Ordering::Relaxed);
        let io = TokioIo::new(Io {
            stream,
            prefix: carry,
            shared: self.shared.clone(),
        });
        let mut builder = self.settings.http1.clone();
        builder.timer(HeadTimer {
            deadlines: self.settings.deadlines.clone(),
            shared: self.shared.clone(),
            timeout: self.settings.header_read_timeout,
            park_after: self.settings.park_after,
        });
        let mut conn = builder
            .serve_connection(io, self.service(false))
            .with_upgrades();
        let mut parking = false;
        let mut closing = false;
        let ended = loop {
            let serving = poll_fn(|cx| {
                loop {
                    let done = Pin::new(&mut conn).poll(cx);
                    if done.is_ready() {
                        return done;
                    }
                    if !parking && self.shared.park.load(Ordering::Relaxed) {
                        // Idle with nothing buffered: hyper closes it at once, and the
                        // IO's shutdown leaves the socket open.
                        parking = true;
                        Pin::new(&mut conn).graceful_shutdown();
                        continue;
                    }
                    return Poll::Pending;
                }
            });
            tokio::select! {
                ended = serving => break ended,
                _ = close.wait_for(|stop| *stop), if !closing => {
                    closing = true;
                    Pin::new(&mut conn).graceful_shutdown();
                }
            }
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, peer = %self.peer, "connection ended with an error");
            return None;
        }
        // `None`: upgraded, and the tunnel has the socket now.
        let parts = conn.into_parts()?;
        if !parking || closing {
            return None;
        }
        let Io { stream, prefix, .. } = parts.io.into_inner();
        let rest = if prefix.is_empty() {
            parts.read_buf
        } else {
            [parts.read_buf, prefix].concat().into()
        };
        Some((stream, rest))
    }

    /// Serves an HTTP/2 connection to its end; `close` sends GOAWAY, and so does a
    /// header-read timeout with no stream open (hyper has no idle timeout for HTTP/2:
    /// a client that sent the preface and nothing more would keep its place in
    /// `max_connections` for as long as it liked).
    async fn serve_h2(self, stream: TcpStream, carry: Bytes, close: &mut watch::Receiver<bool>) {
        let io = TokioIo::new(Io {
            stream,
            prefix: carry,
            shared: self.shared.clone(),
        });
        let conn = self.settings.http2.serve_connection(io, self.service(true));
        tokio::pin!(conn);
        let idle_limit = self.settings.header_read_timeout;
        // Checked four times per timeout: GOAWAY comes between one and one and a half
        // timeouts after the last stream ended.
        let mut check = tokio::time::interval((idle_limit / 4).max(Duration::from_millis(10)));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Idle from the accept: a preface dribbled out slowly buys no extra time.
        let accepted = self
            .shared
            .deadline()
            .take()
            .and_then(|d| d.checked_sub(idle_limit))
            .unwrap_or_else(Instant::now);
        let (mut begun, mut quiet_since, mut busy) = (0, accepted, false);
        let mut closing = false;
        // Armed once an idle connection was sent GOAWAY: by then its client should have
        // ended it.
        let grace = tokio::time::sleep(idle_limit);
        tokio::pin!(grace);
        let mut grace_armed = false;
        loop {
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, peer = %self.peer, "connection ended with an error");
                    }
                    return;
                }
                _ = close.wait_for(|stop| *stop), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                now = check.tick(), if !closing => {
                    let now = now.into_std();
                    let now_begun = self.shared.begun.load(Ordering::Relaxed);
                    if now_begun != begun || self.shared.streams.load(Ordering::Relaxed) > 0 {
                        (begun, quiet_since, busy) = (now_begun, now, true);
                    } else if busy {
                        // The last stream ended since the last check: idle from now, so
                        // never less than the timeout after it.
                        (quiet_since, busy) = (now, false);
                    } else if now.saturating_duration_since(quiet_since) >= idle_limit {
                        tracing::debug!(peer = %self.peer, "HTTP/2 connection idle past the header-read timeout; sending GOAWAY");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                        grace.as_mut().reset((Instant::now() + IDLE_GOAWAY_GRACE.min(idle_limit)).into());
                        grace_armed = true;
                    }
                }
                _ = &mut grace, if grace_armed => {
                    // Streams the client opened before it saw GOAWAY are served to their
                    // end (each has its own timeouts); only a connection with none left
                    // is closed under a client that does not answer.
                    if self.shared.streams.load(Ordering::Relaxed) == 0 {
                        tracing::debug!(peer = %self.peer, "idle HTTP/2 client did not end the connection after GOAWAY; closed");
                        return;
                    }
                    grace.as_mut().reset((Instant::now() + IDLE_GOAWAY_GRACE.min(idle_limit)).into());
                }
            }
        }
    }
}

/// The handler as hyper's service.
struct Service<H> {
    handler: Arc<H>,
    draining: Arc<AtomicBool>,
    peer: SocketAddr,
    /// HTTP/2: the connection whose open streams are counted.
    streams: Option<Arc<Shared>>,
}

impl<H: Handler> hyper::service::Service<Request<Incoming>> for Service<H> {
    type Response = Response<Counted>;
    type Error = Infallible;
    // Boxed: the handler's future has no name to give hyper.
    type Future = Pin<Box<dyn Future<Output = Result<Response<Counted>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let (handler, peer, draining) = (self.handler.clone(), self.peer, self.draining.clone());
        let open = self.streams.clone().map(OpenStream::new);
        // The handler's future (kilobytes) is made inside the box, at its first poll:
        // made here, it would be copied whole into each wrapper on its way there.
        Box::pin(async move {
            let version = req.version();
            let resp = handler.call(req, peer).await;
            Ok(close_if_draining(version, resp, &draining)
                .map(|body| Counted { body, _open: open }))
        })
    }
}

/// The socket as hyper sees it: bytes read ahead of hyper first, then the socket;
/// counts what it delivers and whether a flush is owed, and does not shut the socket
/// down when the connection parks.
struct Io {
    stream: TcpStream,
    prefix: Bytes,
    shared: Arc<Shared>,
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // An emptied slice still holds its whole buffer (a previous hyper
                // connection's read buffer, up to hyper's maximum): let it go.
                this.prefix = Bytes::new();
            }
        } else {
            std::task::ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        }
        let n = (buf.filled().len() - before) as u64;
        // One writer (this IO): a plain store, not a locked add, on every read.
        let delivered = &this.shared.delivered;
        delivered.store(delivered.load(Ordering::Relaxed) + n, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.shared.unflushed.store(true, Ordering::Relaxed);
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.shared.unflushed.store(true, Ordering::Relaxed);
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
        this.shared.unflushed.store(false, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shared.park.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// hyper's timer for one HTTP/1 connection. hyper's server uses its timer for one thing,
/// the header-read timeout, which it arms each time it begins to read a request head
/// and drops once the head has arrived; so a live sleep from here means hyper is waiting
/// for a head, and the park check rides on it.
struct HeadTimer {
    deadlines: Arc<Deadlines>,
    shared: Arc<Shared>,
    timeout: Duration,
    park_after: Duration,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        // hyper's deadline is its clock's now plus the timeout: when the wait began.
        let began = deadline.checked_sub(self.timeout).unwrap_or(deadline);
        let heads = self.shared.heads.load(Ordering::Relaxed);
        self.shared
            .heads
            .store(heads.saturating_add(1), Ordering::Relaxed);
        let first = heads == 0;
        // Only a new hyper connection's first head can have a deadline carried over.
        let deadline = match first.then(|| self.shared.deadline().take()).flatten() {
            Some(carried) => carried.min(deadline),
            None => deadline,
        };
        // A new hyper connection is not idle in hyper's sense until its first request is
        // done (hyper would answer that request before closing): only later heads park.
        // One sleep serves both: first until the park check, then reset to the deadline.
        let park = !first && !self.park_after.is_zero();
        let first_due = if park {
            (began + self.park_after).min(deadline)
        } else {
            deadline
        };
        Box::pin(HeadSleep {
            park: park.then(|| self.shared.delivered.load(Ordering::Relaxed)),
            sleep: self.deadlines.sleep_until(first_due),
            deadline,
            shared: self.shared.clone(),
        })
    }
}

/// The header-read timeout, with the park check before it.
struct HeadSleep {
    /// While the park check is pending: what the IO had delivered when hyper began
    /// waiting for the head.
    park: Option<u64>,
    sleep: CoarseSleep,
    deadline: Instant,
    shared: Arc<Shared>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some(delivered) = this.park {
            if Pin::new(&mut this.sleep).poll(cx).is_pending() {
                return Poll::Pending;
            }
            // hyper polls this only after a read found nothing to complete the head; with
            // no byte of it received and no response bytes waiting, hyper holds nothing
            // the connection needs.
            let idle = this.shared.delivered.load(Ordering::Relaxed) == delivered
                && !this.shared.unflushed.load(Ordering::Relaxed);
            this.park = None;
            if idle {
                *this.shared.deadline() = Some(this.deadline);
                this.shared.park.store(true, Ordering::Relaxed);
                // The task, polling hyper's connection, ends it now.
                return Poll::Pending;
            }
            this.sleep.reset(this.deadline);
        }
        Pin::new(&mut this.sleep).poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}
