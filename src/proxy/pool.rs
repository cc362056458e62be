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
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a connection could not be had or used.
#[derive(Debug)]
pub enum PoolError {
    /// TCP connect refused, failed, or timed out.
    Connect(String),
    /// The HTTP exchange failed.
    Http(hyper::Error),
}

/// Idle connections, most recently used last (so reuse is LIFO and the oldest ones
/// age out).
pub struct Pool {
    target: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<(SendRequest<NoTrailers>, Instant)>>,
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

    async fn connect(&self) -> Result<SendRequest<NoTrailers>, PoolError> {
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
                    let mut body = PooledBody {
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
}

/// A client's request body with its trailers dropped: a trailer can carry any header
/// name, identity headers included, and some frameworks merge trailers into headers, so
/// none is forwarded (the `Trailer` announcement is removed with the hop-by-hop set).
pub struct NoTrailers(pub Incoming);

impl Body for NoTrailers {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            match std::pin::Pin::new(&mut self.0).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                    tracing::debug!("dropped request trailers");
                    continue;
                }
                other => return other,
            }
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
pub struct PooledBody {
    inner: Option<Incoming>,
    slot: Option<(SendRequest<NoTrailers>, Arc<Pool>)>,
}

impl PooledBody {
    fn release_if_done(&mut self) {
        if self.inner.as_ref().is_some_and(|b| b.is_end_stream())
            && let Some((sender, pool)) = self.slot.take()
        {
            pool.checkin(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = std::pin::Pin::new(inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some((sender, pool)) = self.slot.take() {
                    pool.checkin(sender);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                self.slot = None;
            }
            Poll::Ready(Some(Ok(_))) => self.release_if_done(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}
