//! A per-worker pool of keep-alive HTTP/1.1 connections to the upstream.
//!
//! hyper-util's pooled client spawns a task per request to learn when a connection is
//! free again; on the proxy's hot path that task was measurable. Here the response body
//! itself hands the connection back when it ends, and a checkout waits for readiness
//! only in the rare case the connection has not caught up yet. A worker's pool is only
//! ever touched from that worker's thread, so its lock is never contended.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::h1::{BodyReader, Conn, H1Error};

/// Why a connection could not be had or used.
#[derive(Debug)]
pub enum PoolError {
    /// TCP connect refused, failed, or timed out.
    Connect(String),
    /// The HTTP exchange failed.
    Http(hyper::Error),
    /// A bodiless exchange (see `h1`) failed.
    Exchange(H1Error),
}

/// Idle connections, most recently used last (so reuse is LIFO and the oldest ones
/// age out).
pub struct Pool {
    target: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<(SendRequest<NoTrailers>, Instant)>>,
    /// Connections for bodiless requests, spoken to directly (see `h1`).
    direct: Mutex<Vec<(Conn, Instant)>>,
}

impl Pool {
    /// A pool for `target` (`host:port`).
    pub fn new(target: String, connect_timeout: Duration, idle_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            target,
            connect_timeout,
            idle_timeout,
            max_idle: 512,
            idle: Mutex::new(Vec::new()),
            direct: Mutex::new(Vec::new()),
        })
    }

    fn pop(&self) -> Option<(SendRequest<NoTrailers>, Instant)> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn checkin(&self, sender: SendRequest<NoTrailers>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push((sender, Instant::now()));
        }
    }

    async fn checkout(&self) -> Result<SendRequest<NoTrailers>, PoolError> {
        while let Some((mut sender, since)) = self.pop() {
            if sender.is_closed() || since.elapsed() > self.idle_timeout {
                continue;
            }
            if sender.is_ready() {
                return Ok(sender);
            }
            // The connection task has not yet noticed the last response ended; it runs
            // on this same thread, so this resolves at once unless the connection died.
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), sender.ready()).await {
                return Ok(sender);
            }
        }
        // Boxed: connecting is rare on a warm pool, and its state would otherwise sit in
        // every request's future.
        Box::pin(self.connect()).await
    }

    async fn connect_tcp(&self) -> Result<TcpStream, PoolError> {
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.target.as_str()),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(PoolError::Connect(format!("{}: {e}", self.target))),
            Err(_) => {
                return Err(PoolError::Connect(format!(
                    "{}: no connection within {:?}",
                    self.target, self.connect_timeout
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect(&self) -> Result<SendRequest<NoTrailers>, PoolError> {
        let stream = self.connect_tcp().await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(PoolError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `req` on a pooled (or new) connection. A request that a stale pooled
    /// connection refused before any byte was written is retried once on another.
    /// With `keep` false (protocol upgrades) the connection is not returned to the pool.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<NoTrailers>,
        keep: bool,
    ) -> Result<Response<PooledBody>, PoolError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut sender = self.checkout().await?;
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let (parts, inner) = resp.into_parts();
                    let mut body = PooledBody::Hyper {
                        inner: Some(inner),
                        slot: keep.then(|| (sender, self.clone())),
                    };
                    // An empty body (204, 304, Content-Length: 0) frees the connection now.
                    body.release_if_done();
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if attempts < 2 => req = unsent,
                    _ => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
    }
    /// Sends a request without a body (`GET`, `HEAD`) over a directly driven
    /// connection (see `h1`). A pooled connection that turns out closed before any
    /// response byte is replaced once and the request sent again: these methods are
    /// idempotent (RFC 9110 §9.2.2), though an app that read the first copy and then
    /// dropped the connection will see it twice.
    pub async fn send_bodiless(
        self: &Arc<Self>,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        extra: &[&[(HeaderName, HeaderValue)]],
    ) -> Result<Response<PooledBody>, PoolError> {
        let mut retried = false;
        loop {
            let (mut conn, reused) = match self.pop_direct() {
                Some(conn) => (conn, true),
                None => (Conn::new(Box::pin(self.connect_tcp()).await?), false),
            };
            match conn.exchange(method, target, headers, extra).await {
                Ok(head) => {
                    let reader = BodyReader::new(conn, &head);
                    let mut resp = Response::new(());
                    *resp.status_mut() = head.status;
                    *resp.headers_mut() = head.headers;
                    let mut body = PooledBody::Direct {
                        reader,
                        pool: self.clone(),
                    };
                    body.release_if_done();
                    return Ok(resp.map(|()| body));
                }
                // The keep-alive race: the app closed an idle connection just as the
                // request went out. nginx sends idempotent requests again in this case
                // too (`proxy_next_upstream error`); a fresh connection is not retried.
                Err(H1Error::ClosedBeforeResponse) if reused && !retried => {
                    tracing::debug!(
                        "pooled upstream connection closed under a request; sending it again"
                    );
                    retried = true;
                }
                Err(e) => return Err(PoolError::Exchange(e)),
            }
        }
    }

    fn pop_direct(&self) -> Option<Conn> {
        let mut direct = self.direct.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((conn, since)) = direct.pop() {
            if since.elapsed() <= self.idle_timeout && !conn.stirred_while_idle() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin_direct(&self, conn: Conn) {
        let now = Instant::now();
        let mut direct = self.direct.lock().unwrap_or_else(|p| p.into_inner());
        // Reuse is LIFO, so the oldest sit at the front: close the expired ones there,
        // or a pool that stays warm would hold sockets the app has long closed.
        let expired = direct
            .iter()
            .take_while(|(_, since)| now.duration_since(*since) > self.idle_timeout)
            .count();
        direct.drain(..expired);
        if direct.len() < self.max_idle {
            direct.push((conn, now));
        }
    }
}

/// A client's request body with its trailers dropped: a trailer can carry any header
/// name, identity headers included, and some frameworks merge trailers into headers, so
/// none is forwarded (the `Trailer` announcement is removed with the hop-by-hop set).
/// It says when it has been read to the end (see [`Sent`]).
pub struct NoTrailers(pub Incoming, pub Option<Arc<Sent>>);

/// Set once a request body has been handed over whole, so the upstream's time to
/// answer is counted from then: a slow upload is the client's time, not the app's.
#[derive(Default)]
pub struct Sent {
    done: std::sync::atomic::AtomicBool,
    /// Frames read so far: shows an upload that is slow from one that stalled.
    progress: std::sync::atomic::AtomicU64,
    waker: futures_util::task::AtomicWaker,
}

impl Sent {
    fn set(&self) {
        self.done.store(true, std::sync::atomic::Ordering::Release);
        self.waker.wake();
    }

    /// How many frames of the body have been read.
    pub fn progress(&self) -> u64 {
        self.progress.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves once the body has been read to its end (or failed).
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.done.load(std::sync::atomic::Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

impl NoTrailers {
    /// Wraps `body`; the returned [`Sent`] fires when it has been read whole.
    pub fn watched(body: Incoming) -> (NoTrailers, Arc<Sent>) {
        let sent = Arc::new(Sent::default());
        if body.is_end_stream() {
            sent.set();
        }
        (NoTrailers(body, Some(sent.clone())), sent)
    }

    fn ended(&mut self) {
        if let Some(sent) = self.1.take() {
            sent.set();
        }
    }
}

impl Body for NoTrailers {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            let polled = std::pin::Pin::new(&mut self.0).poll_frame(cx);
            match polled {
                Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                    tracing::debug!("dropped request trailers");
                    continue;
                }
                Poll::Ready(Some(Ok(_))) => {
                    if let Some(sent) = &self.1 {
                        sent.progress
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    if self.0.is_end_stream() {
                        self.ended();
                    }
                }
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.ended(),
                _ => {}
            }
            return polled;
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// An upstream response body that returns its connection to the pool once it has been
/// read to the end. Dropped early, it takes the connection with it (a half-read
/// response cannot be reused).
pub enum PooledBody {
    /// A response read by hyper's client.
    Hyper {
        /// The body, until it ends.
        inner: Option<Incoming>,
        /// The connection and its pool, while it may still be returned.
        slot: Option<(SendRequest<NoTrailers>, Arc<Pool>)>,
    },
    /// A response to a bodiless request, read off the connection directly.
    Direct {
        /// The body and its connection.
        reader: BodyReader,
        /// Where the connection goes back.
        pool: Arc<Pool>,
    },
}

/// What a response body's error carries to hyper: it ends the client's response early.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl PooledBody {
    fn release_if_done(&mut self) {
        match self {
            PooledBody::Hyper { inner, slot } => {
                if inner.as_ref().is_some_and(|b| b.is_end_stream())
                    && let Some((sender, pool)) = slot.take()
                {
                    pool.checkin(sender);
                }
            }
            PooledBody::Direct { reader, pool } => {
                if let Some(conn) = reader.take_reusable() {
                    pool.checkin_direct(conn);
                }
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut *self {
            PooledBody::Hyper { inner, slot } => {
                let Some(inner) = inner.as_mut() else {
                    return Poll::Ready(None);
                };
                let polled = std::pin::Pin::new(inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => {
                        if let Some((sender, pool)) = slot.take() {
                            pool.checkin(sender);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => *slot = None,
                    Poll::Ready(Some(Ok(_))) => self.release_if_done(),
                    Poll::Pending => {}
                }
                polled.map_err(Into::into)
            }
            PooledBody::Direct { reader, .. } => {
                let polled = reader.poll_data(cx);
                match &polled {
                    Poll::Ready(Some(Ok(_))) | Poll::Ready(None) => self.release_if_done(),
                    Poll::Ready(Some(Err(e))) => {
                        tracing::warn!(error = %e, "upstream response body failed");
                    }
                    Poll::Pending => {}
                }
                polled.map(|o| o.map(|r| r.map(Frame::data).map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            PooledBody::Hyper { inner, .. } => inner.as_ref().is_none_or(|b| b.is_end_stream()),
            PooledBody::Direct { reader, .. } => reader.is_end(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            PooledBody::Hyper { inner, .. } => inner
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint()),
            PooledBody::Direct { reader, .. } => match reader.remaining() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A listening "app" on loopback and a pool aimed at it.
    async fn app_and_pool(idle: Duration) -> (TcpListener, std::net::SocketAddr, Arc<Pool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::new(addr.to_string(), Duration::from_secs(1), idle);
        (listener, addr, pool)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn idle_sockets_that_stirred_are_never_handed_out_however_many() {
        let (listener, addr, pool) = app_and_pool(Duration::from_secs(60)).await;
        // More than tokio's cooperative budget (128) per task poll.
        let mut app_side = Vec::new();
        for _ in 0..300 {
            let conn = Conn::new(TcpStream::connect(addr).await.unwrap());
            app_side.push(listener.accept().await.unwrap().0);
            pool.checkin_direct(conn);
        }
        // The app closes half and writes stray bytes on the others while they idle.
        let mut kept = Vec::new();
        for (i, mut s) in app_side.into_iter().enumerate() {
            if i % 2 == 0 {
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen")
                    .await
                    .unwrap();
                kept.push(s);
            }
        }
        // Idle, the runtime's I/O driver sees the events.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            pool.pop_direct().is_none(),
            "a stirred socket was handed out"
        );

        // A quiet one is.
        let quiet = Conn::new(TcpStream::connect(addr).await.unwrap());
        let _app = listener.accept().await.unwrap();
        pool.checkin_direct(quiet);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.pop_direct().is_some());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn expired_idle_sockets_are_closed_at_the_next_checkin() {
        let (_listener, addr, pool) = app_and_pool(Duration::from_millis(100)).await;
        for _ in 0..3 {
            pool.checkin_direct(Conn::new(TcpStream::connect(addr).await.unwrap()));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        pool.checkin_direct(Conn::new(TcpStream::connect(addr).await.unwrap()));
        assert_eq!(pool.direct.lock().unwrap().len(), 1);
    }
}
