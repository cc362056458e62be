//! Connections that outlive their request: upgraded (WebSocket) tunnels and response
//! bodies that are still streaming (Server-Sent Events, long downloads).
//!
//! Both follow the session they were opened with (SPEC §7): when it is revoked, expires
//! or its tenant goes away, they are cut. The proxy does not know sessions; it is handed
//! a [`StreamGuard`] and waits on it only once a connection actually outlives its
//! request (a tunnel always, a body once it has to wait for the upstream), so the common
//! short response pays nothing but carrying the guard along.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{FusedFuture, FutureExt};
use http_body::{Body, Frame, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::deadline::{Deadline, Deadlines};
use super::pool::{BodyError, PooledBody};

/// Why a long-lived connection ended; the `closed_by` field of its access-log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    /// The client closed it (or broke it).
    Client,
    /// The upstream closed it (or broke it).
    Upstream,
    /// Its session was revoked or ended (logout included), or its tenant removed.
    Revoked,
    /// Its session reached its idle or absolute lifetime.
    Expired,
    /// idgate is shutting down and `shutdown_grace` has passed.
    Shutdown,
}

impl ClosedBy {
    /// The log value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Client => "client",
            ClosedBy::Upstream => "upstream",
            ClosedBy::Revoked => "revoked",
            ClosedBy::Expired => "expired",
            ClosedBy::Shutdown => "shutdown",
        }
    }
}

/// A future that resolves when a long-lived connection must be cut, and why.
pub type Closing = Pin<Box<dyn Future<Output = ClosedBy> + Send>>;

/// What a long-lived connection waits on: the session it was opened with.
pub trait StreamGuard: Send + Sync {
    /// Starts watching; resolves when the connection must end. Called once per
    /// connection, and only when it outlives its request.
    fn closing(&self) -> Closing;
}

/// Every open tunnel of the process, so that shutdown can wait for them and close them
/// when the grace period ends.
#[derive(Default)]
pub struct Tunnels {
    open: AtomicUsize,
    idle: Notify,
    shutdown: CancellationToken,
}

/// One open tunnel's place in [`Tunnels`]; given back on drop.
pub struct TunnelSlot(Arc<Tunnels>);

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tunnels {
    /// An empty set.
    pub fn new() -> Arc<Tunnels> {
        Arc::new(Tunnels::default())
    }

    /// Counts a tunnel in until the slot is dropped.
    pub fn enter(self: &Arc<Self>) -> TunnelSlot {
        self.open.fetch_add(1, Ordering::AcqRel);
        TunnelSlot(self.clone())
    }

    /// Tunnels open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves once no tunnel is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The grace period is over: every tunnel closes now.
    pub fn close_all(&self) {
        self.shutdown.cancel();
    }
}

/// How a tunnel ended: the access-log fields.
#[derive(Debug, Clone, Copy)]
pub struct TunnelEnd {
    /// Who or what ended it.
    pub closed_by: ClosedBy,
    /// Bytes from the client to the upstream.
    pub bytes_in: u64,
    /// Bytes from the upstream to the client.
    pub bytes_out: u64,
    /// How long it was open.
    pub duration: Duration,
}

/// WebSocket close code 1008, "policy violation": the session behind the tunnel ended.
const CLOSE_POLICY: [u8; 2] = 1008u16.to_be_bytes();
const CLOSE_REASON: &[u8] = b"session ended";

/// Joins the two upgraded connections until either side ends, `guard` (the session)
/// says to stop, or the process's tunnels are closed at the end of shutdown. When idgate
/// ends it, the client gets a WebSocket close frame (1008) if the upstream's stream of
/// frames is at a frame boundary, and both sides are then closed.
pub async fn run(
    client: OnUpgrade,
    upstream: OnUpgrade,
    guard: Option<Arc<dyn StreamGuard>>,
    tunnels: &Tunnels,
) -> Result<TunnelEnd, hyper::Error> {
    let (client, upstream) = tokio::try_join!(client, upstream)?;
    let start = Instant::now();
    let closing: Closing = match guard {
        Some(g) => g.closing(),
        None => Box::pin(std::future::pending()),
    };
    let (client, upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    let (closed_by, bytes_in, bytes_out) =
        join(client, upstream, closing, tunnels.shutdown.clone()).await;
    Ok(TunnelEnd {
        closed_by,
        bytes_in,
        bytes_out,
        duration: start.elapsed(),
    })
}

/// The copy loop of [`run`], over any pair of streams (tests drive it with in-memory
/// pipes).
async fn join<C, U>(
    client: C,
    upstream: U,
    closing: Closing,
    shutdown: CancellationToken,
) -> (ClosedBy, u64, u64)
where
    C: AsyncRead + AsyncWrite + Send,
    U: AsyncRead + AsyncWrite + Send,
{
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut upstream_rx, mut upstream_tx) = tokio::io::split(upstream);
    let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
    let mut frames = FrameTracker::default();
    let stopped = {
        let inbound = pump(&mut client_rx, &mut upstream_tx, &mut bytes_in, None);
        let outbound = pump(
            &mut upstream_rx,
            &mut client_tx,
            &mut bytes_out,
            Some(&mut frames),
        );
        let both = async {
            // The first side to finish names the closer; the other direction still
            // drains (a half-close is legal), as `copy_bidirectional` does, but a peer
            // that keeps its half open is not waited for long.
            let inbound = inbound.fuse();
            let outbound = outbound.fuse();
            tokio::pin!(inbound, outbound);
            let first = tokio::select! {
                end = &mut inbound => match end {
                    Ended::Reading => ClosedBy::Client,
                    Ended::Writing => ClosedBy::Upstream,
                },
                end = &mut outbound => match end {
                    Ended::Reading => ClosedBy::Upstream,
                    Ended::Writing => ClosedBy::Client,
                },
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                if !inbound.is_terminated() {
                    (&mut inbound).await;
                }
                if !outbound.is_terminated() {
                    (&mut outbound).await;
                }
            })
            .await;
            first
        };
        tokio::select! {
            by = both => Ok(by),
            by = closing => Err(by),
            _ = shutdown.cancelled() => Err(ClosedBy::Shutdown),
        }
    };
    match stopped {
        Ok(by) => (by, bytes_in, bytes_out),
        Err(by) => {
            if frames.at_boundary() {
                let mut frame = Vec::with_capacity(4 + CLOSE_REASON.len());
                frame.push(0x88);
                frame.push((CLOSE_POLICY.len() + CLOSE_REASON.len()) as u8);
                frame.extend_from_slice(&CLOSE_POLICY);
                frame.extend_from_slice(CLOSE_REASON);
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    client_tx.write_all(&frame).await?;
                    client_tx.flush().await
                })
                .await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = client_tx.shutdown().await;
                let _ = upstream_tx.shutdown().await;
            })
            .await;
            (by, bytes_in, bytes_out)
        }
    }
}

/// Which end of a one-way copy stopped it.
enum Ended {
    /// The source ended (EOF) or broke.
    Reading,
    /// The destination broke.
    Writing,
}

/// Copies `from` to `to` until either fails or `from` ends (then `to` is shut down, so
/// the half-close reaches the other peer).
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    counted: &mut u64,
    mut frames: Option<&mut FrameTracker>,
) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return Ended::Reading;
            }
            Ok(n) => n,
            Err(_) => return Ended::Reading,
        };
        // While a write is under way, part of it may have reached the peer: no close
        // frame may be slipped in until it completes.
        if let Some(f) = frames.as_deref_mut() {
            f.writing = true;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return Ended::Writing;
        }
        *counted += n as u64;
        if let Some(f) = frames.as_deref_mut() {
            f.feed(&buf[..n]);
            f.writing = false;
        }
    }
}

/// Follows WebSocket framing (RFC 6455 §5.2) in one direction, to know whether a close
/// frame written now would land between two frames rather than inside one.
#[derive(Debug, Default)]
pub struct FrameTracker {
    head: [u8; 14],
    have: usize,
    payload_left: u64,
    /// A write of the stream's bytes was started and has not completed.
    writing: bool,
}

impl FrameTracker {
    /// Whether the bytes seen so far end exactly at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        !self.writing && self.have == 0 && self.payload_left == 0
    }

    /// The length of a frame header whose first two bytes are `b0 b1`.
    fn head_len(b1: u8) -> usize {
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
    }

    /// Takes the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = (bytes.len() as u64).min(self.payload_left);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            self.head[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have < 2 || self.have < Self::head_len(self.head[1]) {
                continue;
            }
            let len7 = self.head[1] & 0x7f;
            self.payload_left = match len7 {
                126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                127 => u64::from_be_bytes(self.head[2..10].try_into().unwrap_or([0; 8])),
                n => u64::from(n),
            };
            self.have = 0;
        }
    }
}

/// How long a body may wait for the upstream before it counts as a stream and starts
/// watching its session. Ordinary responses finish well within it and never register.
const STREAM_AFTER: Duration = Duration::from_millis(250);
/// How much a body may deliver before it counts as a stream (a long download whose
/// upstream is always ready never waits, so time alone would not catch it).
const STREAM_BYTES: u64 = 256 * 1024;

/// An upstream response body that stops when the session it was served under ends.
/// Without a guard (public paths) it is the upstream body as is.
pub struct GuardedBody {
    inner: PooledBody,
    guard: Option<Guard>,
    /// Set once cut: nothing more is read.
    cut: bool,
}

struct Guard {
    session: Arc<dyn StreamGuard>,
    /// Fires [`STREAM_AFTER`] after the body first had to wait (on the worker's coarse
    /// clock: no timer of its own per response).
    waited: Deadline<std::future::Pending<()>>,
    delivered: u64,
    closing: Option<Closing>,
}

impl GuardedBody {
    /// Wraps `inner`; `guard` is the request's session, if it had one, and the worker's
    /// coarse clock.
    pub fn new(
        inner: PooledBody,
        guard: Option<(Arc<dyn StreamGuard>, &Arc<Deadlines>)>,
    ) -> GuardedBody {
        GuardedBody {
            inner,
            cut: false,
            guard: guard.map(|(session, clock)| Guard {
                session,
                waited: clock.run(STREAM_AFTER, std::future::pending()),
                delivered: 0,
                closing: None,
            }),
        }
    }
}

/// The error that cuts a streamed response whose session ended.
#[derive(Debug, thiserror::Error)]
#[error("streamed response cut: {}", .0.as_str())]
pub struct Cut(pub ClosedBy);

impl Guard {
    /// Starts watching the session (once); `Some` if it has already ended.
    fn arm(&mut self, cx: &mut Context<'_>) -> Option<ClosedBy> {
        let closing = self.closing.get_or_insert_with(|| self.session.closing());
        match closing.as_mut().poll(cx) {
            Poll::Ready(by) => Some(by),
            Poll::Pending => None,
        }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.cut {
            return Poll::Ready(None);
        }
        let Some(guard) = this.guard.as_mut() else {
            return Pin::new(&mut this.inner).poll_frame(cx);
        };
        if guard.closing.is_some()
            && let Some(by) = guard.arm(cx)
        {
            return this.cut(by);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if guard.closing.is_none() {
            let stream = match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    guard.delivered += frame.data_ref().map_or(0, |d| d.len() as u64);
                    guard.delivered > STREAM_BYTES
                }
                Poll::Pending => Pin::new(&mut guard.waited).poll(cx).is_ready(),
                _ => false,
            };
            if stream && let Some(by) = guard.arm(cx) {
                return this.cut(by);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl GuardedBody {
    fn cut(&mut self, by: ClosedBy) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        tracing::info!(
            target: "idgate::access",
            route = "stream",
            closed_by = by.as_str(),
            "streamed response cut: its session ended"
        );
        self.guard = None;
        self.cut = true;
        Poll::Ready(Some(Err(Box::new(Cut(by)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload_len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let mask_bit = if masked { 0x80 } else { 0 };
        if payload_len < 126 {
            f.push(mask_bit | payload_len as u8);
        } else if payload_len <= u16::MAX as usize {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(payload_len as u16).to_be_bytes());
        } else {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(payload_len as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', payload_len));
        f
    }

    #[test]
    fn frame_boundaries_are_followed_at_every_split() {
        let mut stream = Vec::new();
        let mut boundaries = vec![0];
        for (len, masked) in [
            (0, false),
            (5, false),
            (125, true),
            (126, false),
            (70_000, false),
        ] {
            stream.extend(frame(len, masked));
            boundaries.push(stream.len());
        }
        for step in [1, 2, 3, 7, 1000, stream.len()] {
            let mut t = FrameTracker::default();
            let mut fed = 0;
            for chunk in stream.chunks(step) {
                t.feed(chunk);
                fed += chunk.len();
                assert_eq!(
                    t.at_boundary(),
                    boundaries.contains(&fed),
                    "step {step}, after {fed} bytes"
                );
            }
        }
    }

    /// A session that ends mid-frame gets no close frame (it would corrupt the frame
    /// the client is reading); between frames it does.
    #[tokio::test]
    async fn the_close_frame_is_written_only_between_frames() {
        for (partial, expect_close) in [(false, true), (true, false)] {
            let (client, mut client_peer) = tokio::io::duplex(1 << 16);
            let (upstream, mut upstream_peer) = tokio::io::duplex(1 << 16);
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let closing: Closing = Box::pin(async move {
                let _ = rx.await;
                ClosedBy::Revoked
            });
            let task = tokio::spawn(join(client, upstream, closing, CancellationToken::new()));
            let mut sent = frame(10, false);
            if partial {
                sent.truncate(6);
            }
            upstream_peer.write_all(&sent).await.unwrap();
            let mut got = vec![0u8; sent.len()];
            client_peer.read_exact(&mut got).await.unwrap();
            assert_eq!(got, sent);
            tx.send(()).unwrap();
            let (by, _, bytes_out) = task.await.unwrap();
            assert_eq!(by, ClosedBy::Revoked);
            assert_eq!(bytes_out, sent.len() as u64);
            let mut rest = Vec::new();
            client_peer.read_to_end(&mut rest).await.unwrap();
            if expect_close {
                assert_eq!(&rest[..4], &[0x88, 15, 0x03, 0xF0], "{rest:?}");
            } else {
                assert!(rest.is_empty(), "{rest:?}");
            }
            // The upstream side is closed too.
            let mut up_rest = Vec::new();
            upstream_peer.read_to_end(&mut up_rest).await.unwrap();
        }
    }
}
