//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and the operators' API under
//! `/admin/` (see [`api`]). It binds to loopback by default because metrics and
//! readiness are for the kubelet and Prometheus only.

pub mod api;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::metrics::Metrics;
use crate::response::{self, Body};
use crate::server::Handler;
use crate::snapshot::Snapshots;
use crate::store::Store;

/// How long `/readyz` waits for the store's answer.
pub const READY_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// The admin handler.
pub struct Admin {
    store: Store,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
    snapshots: Arc<Snapshots>,
    api: Option<api::Api>,
}

impl Admin {
    /// `draining` turns `/readyz` red during shutdown, so the Service stops sending
    /// traffic while in-flight requests finish.
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        draining: Arc<AtomicBool>,
        snapshots: Arc<Snapshots>,
        api: Option<api::Api>,
    ) -> Admin {
        Admin {
            store,
            metrics,
            draining,
            snapshots,
            api,
        }
    }

    async fn ready(&self) -> Response<Body> {
        if self.draining.load(Ordering::Relaxed) {
            return response::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        match tokio::time::timeout(READY_PING_TIMEOUT, self.store.ping()).await {
            // A replica that cannot hear revocations from the others must not take
            // traffic either.
            Ok(Ok(())) if !self.store.bus_connected() => response::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "store events not connected\n",
            ),
            Ok(Ok(())) => response::text(StatusCode::OK, "ready\n"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "not ready: store did not answer");
                response::text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
            }
            Err(_) => {
                tracing::warn!(timeout = ?READY_PING_TIMEOUT, "not ready: store ping timed out");
                response::text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
            }
        }
    }
}

impl Handler for Admin {
    async fn call(self: Arc<Self>, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        let path = req.uri().path();
        if path == "/admin" || path.starts_with("/admin/") {
            // Without a token the API does not exist, whatever the method.
            return match &self.api {
                Some(api) => api.handle(req).await,
                None => response::text(StatusCode::NOT_FOUND, "not found\n"),
            };
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return response::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        match req.uri().path() {
            "/healthz" => response::text(StatusCode::OK, "ok\n"),
            "/.well-known/jwks.json" => {
                crate::identity::jwks_response(&self.snapshots.load().identity)
            }
            "/readyz" => self.ready().await,
            "/metrics" => {
                let mut resp = response::text(StatusCode::OK, self.metrics.encode());
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            _ => response::text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}
