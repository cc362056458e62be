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

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::proxy::deadline::{CoarseTimer, Deadlines};
use crate::proxy::tunnel::Tunnels;
use crate::response::Body;

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

/// Slowloris bound: a client gets this long to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The connection builder. `coarse` gives HTTP/1's header-read timeout, which hyper arms
/// for every request, a worker's coarse clock instead of a tokio timer.
fn builder(
    coarse: Option<Arc<Deadlines>>,
    header_read_timeout: Duration,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    match coarse {
        Some(deadlines) => http1.timer(CoarseTimer(deadlines)),
        None => http1.timer(TokioTimer::new()),
    };
    http1
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    builder
}

fn spawn_connection<H: Handler>(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    peer: SocketAddr,
    handler: &Arc<H>,
) {
    let _ = stream.set_nodelay(true);
    let handler = handler.clone();
    let service = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.call(req, peer).await) }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    });
}

/// Waits up to `grace` for in-flight requests and open tunnels to finish, then closes
/// the tunnels that are left (each logs its end) and gives them a moment to do so.
async fn drain(graceful: GracefulShutdown, grace: Duration, tunnels: Option<&Tunnels>) {
    let all = async {
        graceful.shutdown().await;
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
    let builder = builder(None, HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            (stream, peer) = accept_next(&listener) => {
                spawn_connection(&builder, &graceful, stream, peer, &handler);
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    drain(graceful, grace, None).await;
}

/// The public listener on `workers` threads (see the module docs). `make_handler` runs
/// once on each worker thread, inside its runtime, so that whatever the handler creates
/// there (the upstream pool) belongs to that thread. Returns when every worker has
/// drained; `tunnels` are waited for (and closed when `grace` ends) as requests are.
pub async fn serve_workers<H, F>(
    listener: TcpListener,
    workers: usize,
    make_handler: F,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    tunnels: Arc<Tunnels>,
) where
    H: Handler,
    F: Fn(usize) -> Arc<H> + Send + Sync + 'static,
{
    let make_handler = Arc::new(make_handler);
    let mut senders = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for index in 0..workers.max(1) {
        let (tx, rx) = mpsc::unbounded_channel::<(std::net::TcpStream, SocketAddr)>();
        senders.push(tx);
        let make_handler = make_handler.clone();
        let shutdown = shutdown.clone();
        let tunnels = tunnels.clone();
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
                runtime.block_on(worker(rx, make_handler(index), shutdown, grace, tunnels));
            });
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => tracing::error!(error = %e, index, "cannot start worker thread"),
        }
    }

    let mut next = 0usize;
    loop {
        tokio::select! {
            (stream, peer) = accept_next(&listener) => {
                // Round-robin by connection keeps workers balanced even with few
                // long-lived connections (an ingress's keep-alive pool), which
                // SO_REUSEPORT's hashing would not.
                let std_stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot hand over connection");
                        continue;
                    }
                };
                if senders[next % senders.len()].send((std_stream, peer)).is_err() {
                    tracing::error!(worker = next % senders.len(), "worker is gone; connection dropped");
                }
                next = next.wrapping_add(1);
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    drop(senders);
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
}

async fn worker<H: Handler>(
    mut connections: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    tunnels: Arc<Tunnels>,
) {
    let builder = builder(Some(Deadlines::new()), HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            next = connections.recv() => {
                let Some((std_stream, peer)) = next else { break };
                match TcpStream::from_std(std_stream) {
                    Ok(stream) => spawn_connection(&builder, &graceful, stream, peer, &handler),
                    Err(e) => tracing::warn!(error = %e, "cannot adopt connection"),
                }
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    // Tunnels run on the workers' runtimes: a worker that returned would drop them
    // unlogged, so each waits until all are gone.
    drain(graceful, grace, Some(&tunnels)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Hello;

    impl Handler for Hello {
        async fn call(
            self: Arc<Self>,
            _req: Request<Incoming>,
            _peer: SocketAddr,
        ) -> Response<Body> {
            crate::response::text(http::StatusCode::OK, "hello")
        }
    }

    /// Slowloris: a client that never finishes its request head is cut off once the
    /// header-read timeout passes, on the workers' coarse clock, while requests sent in
    /// time on the same kind of connection are served.
    #[tokio::test(flavor = "current_thread")]
    async fn a_request_head_that_never_ends_is_cut_off() {
        let timeout = Duration::from_millis(300);
        let builder = builder(Some(Deadlines::new()), timeout);
        let graceful = GracefulShutdown::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = Arc::new(Hello);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                spawn_connection(&builder, &graceful, stream, peer, &handler);
            }
        });

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
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest))
            .await
            .expect("the server closes the connection")
            .ok();
        let waited = start.elapsed();
        assert!(waited >= timeout, "closed after {waited:?}");
        assert!(
            !String::from_utf8_lossy(&rest).contains(" 200 "),
            "{rest:?}"
        );
    }
}
