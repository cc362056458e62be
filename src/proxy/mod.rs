//! Forwarding to the upstream: a pooled keep-alive HTTP/1.1 client, streaming bodies in
//! both directions without buffering, timeouts, and WebSocket (Upgrade) tunnelling.

pub mod deadline;
pub mod h1;
pub mod headers;
pub mod pool;
pub mod tunnel;

use std::borrow::Cow;
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use std::sync::Arc;

use deadline::Deadlines;
use headers::StripList;
use pool::{NoTrailers, Pool, PoolError, PooledBody};

use crate::config::ServerConfig;
use crate::metrics::UpstreamErrorKind;

/// Why forwarding failed. The message is for the log; the client sees only the status.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream refused or did not accept the connection in time.
    #[error("upstream connect failed: {0}")]
    Connect(String),
    /// No response headers within `upstream_timeout`.
    #[error("upstream sent no response headers within {0:?}")]
    Timeout(Duration),
    /// The connection broke, or the upstream's answer was not valid HTTP.
    #[error("upstream request failed: {0}")]
    Protocol(String),
    /// The client stopped sending its request body for longer than `upstream_timeout`
    /// (a slow upload is fine; one that stalls would hold the app's connection forever).
    #[error("the client sent no request body bytes for {0:?}")]
    ClientStalled(Duration),
}

impl ProxyError {
    /// Metric label.
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            ProxyError::Connect(_) => UpstreamErrorKind::Connect,
            ProxyError::Timeout(_) => UpstreamErrorKind::Timeout,
            ProxyError::Protocol(_) | ProxyError::ClientStalled(_) => UpstreamErrorKind::Protocol,
        }
    }

    /// What the client gets: 504 for a slow upstream, 408 for a stalled upload, 502
    /// otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientStalled(_) => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Both sides of a protocol switch the upstream accepted, each resolving once hyper
/// hands over the connection.
pub struct Upgraded {
    /// The client's connection.
    pub client: hyper::upgrade::OnUpgrade,
    /// The upstream's connection.
    pub upstream: hyper::upgrade::OnUpgrade,
}

/// The upstream app and the pooled client that reaches it.
pub struct Upstream {
    pool: Arc<Pool>,
    authority: Authority,
    response_timeout: Duration,
    deadlines: Arc<Deadlines>,
    strip: Arc<StripList>,
}

impl Upstream {
    /// Builds the client from `[server]`; `strip` names the request headers that must
    /// never reach the app (shared by every worker's `Upstream`).
    pub fn new(server: &ServerConfig, strip: Arc<StripList>) -> Upstream {
        let upstream = &server.upstream;
        let authority = upstream
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("127.0.0.1:3000"));
        let target = match authority.port_u16() {
            Some(_) => authority.as_str().to_owned(),
            None => format!("{}:80", authority.host()),
        };
        Upstream {
            // Below the idle timeouts of common app servers (Node's 5 s is the shortest
            // widespread one), so idgate drops an idle connection before the app does
            // and rarely races a request against a closing socket.
            pool: Pool::new(target, server.connect_timeout, Duration::from_secs(4)),
            authority,
            response_timeout: server.upstream_timeout,
            deadlines: Deadlines::new(),
            strip,
        }
    }

    /// This worker's coarse clock (see [`deadline`]).
    pub fn clock(&self) -> &Arc<Deadlines> {
        &self.deadlines
    }

    /// Sends a request, already cleaned by the gateway, to the upstream, with the `added`
    /// fields after its own (`X-Forwarded-*`, the identity headers: their names never
    /// occur in the cleaned request).
    /// `upgrade` is set when the client asked for a protocol switch; on a `101` the two
    /// sides of the switch come back with the response, for the caller to join (see
    /// [`tunnel::run`]) under the session the request was made with.
    // Not `async fn`: see the async block below.
    #[allow(clippy::manual_async_fn)]
    pub fn forward(
        &self,
        mut req: Request<Incoming>,
        upgrade: bool,
        added: &[&[(HeaderName, HeaderValue)]],
    ) -> impl std::future::Future<Output = Result<(Response<PooledBody>, Option<Upgraded>), ProxyError>>
    {
        // An async block, not an `async fn`: that would move its arguments into locals
        // and hold the request twice in a future this size.
        async move {
            // Here, where both paths to the app begin, so neither can miss it; before the
            // identity is added, so a configured name can never remove idgate's own.
            self.strip.strip(req.headers_mut());
            // Origin-form on the wire (`GET /path?q HTTP/1.1`), as every app server expects;
            // the host travels in `Host`, which the gateway has set.
            let path_and_query = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            if !req.headers().contains_key(http::header::HOST)
                && let Ok(v) = http::HeaderValue::from_str(self.authority.as_str())
            {
                req.headers_mut().insert(http::header::HOST, v);
            }
            // Most requests carry no body: those skip hyper's client (see `h1`).
            if !upgrade
                && (req.method() == Method::GET || req.method() == Method::HEAD)
                && req.body().is_end_stream()
            {
                // `PathAndQuery` may lack the leading `/` (an HTTP/2 `:path` of `?q`). The
                // gateway refuses such a target; should one get here anyway, the app gets
                // the path `/` that routing would have seen.
                let target = match path_and_query.as_str() {
                    t if t.starts_with('/') => Cow::Borrowed(t),
                    _ => Cow::Owned(match path_and_query.query() {
                        Some(q) => format!("{}?{q}", path_and_query.path()),
                        None => path_and_query.path().to_owned(),
                    }),
                };
                let sent = self
                    .deadlines
                    .run(
                        self.response_timeout,
                        self.pool
                            .send_bodiless(req.method(), &target, req.headers(), added),
                    )
                    .await;
                let mut resp = Self::settle(sent, self.response_timeout)?;
                headers::remove_hop_by_hop(resp.headers_mut(), None);
                return Ok((resp, None));
            }
            // Boxed: its state (the upload's watch, hyper's client) is twice the bodiless
            // path's, and every request's future would otherwise be sized for it.
            Box::pin(self.forward_streaming(req, path_and_query, upgrade, added)).await
        }
    }

    /// [`Upstream::forward`] for a request with a body or an upgrade: through hyper's
    /// client, the upload watched so that `upstream_timeout` counts from its end.
    async fn forward_streaming(
        &self,
        mut req: Request<Incoming>,
        path_and_query: http::uri::PathAndQuery,
        upgrade: bool,
        added: &[&[(HeaderName, HeaderValue)]],
    ) -> Result<(Response<PooledBody>, Option<Upgraded>), ProxyError> {
        *req.uri_mut() = Uri::from(path_and_query);
        for (name, value) in added.iter().copied().flatten() {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        *req.version_mut() = Version::HTTP_11;
        let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));

        // `upstream_timeout` counts from the end of the upload (SPEC §7): until the body
        // is through, the upstream cannot be expected to answer. An answer that comes
        // earlier (a 413, a redirect) is taken as it comes.
        let (parts, body) = req.into_parts();
        let (body, body_sent) = NoTrailers::watched(body);
        let send = self.pool.send(Request::from_parts(parts, body), !upgrade);
        tokio::pin!(send);
        // The upload itself may take as long as it keeps moving: each `upstream_timeout`
        // without a new frame of it ends the request.
        let early = loop {
            let progress = body_sent.progress();
            let waited = tokio::select! {
                biased;
                r = &mut send => break Some(r),
                w = self.deadlines.run(self.response_timeout, body_sent.wait()) => w,
            };
            match waited {
                Ok(()) => break None,
                Err(_) if body_sent.progress() == progress => {
                    return Err(ProxyError::ClientStalled(self.response_timeout));
                }
                Err(_) => {}
            }
        };
        let sent = match early {
            Some(r) => Ok(r),
            None => self.deadlines.run(self.response_timeout, send).await,
        };
        let mut resp = Self::settle(sent, self.response_timeout)?;

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_side) = client_side
        {
            let upstream = hyper::upgrade::on(&mut resp);
            let up = headers::upgrade_request(resp.headers());
            headers::remove_hop_by_hop(resp.headers_mut(), up);
            return Ok((
                resp,
                Some(Upgraded {
                    client: client_side,
                    upstream,
                }),
            ));
        }
        headers::remove_hop_by_hop(resp.headers_mut(), None);
        Ok((resp, None))
    }
}

impl Upstream {
    fn settle<T, E>(
        sent: Result<Result<T, PoolError>, E>,
        timeout: Duration,
    ) -> Result<T, ProxyError> {
        match sent {
            Err(_) => Err(ProxyError::Timeout(timeout)),
            Ok(Err(PoolError::Connect(e))) => Err(ProxyError::Connect(e)),
            Ok(Err(PoolError::Http(e))) => Err(ProxyError::Protocol(error_chain(&e))),
            Ok(Err(PoolError::Exchange(e))) => Err(ProxyError::Protocol(e.to_string())),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

/// The error with its causes, for the log ("client error (Connect): tcp connect error:
/// Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
