//! The built-in echo app: answers every request with a description of the request as it
//! arrived, so anyone can see exactly what idgate forwards (the identity headers, the
//! stripped cookie, `X-Forwarded-*`). HTML for browsers, JSON otherwise.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;

use crate::response::{self, Body, escape_html};
use crate::server::Handler;

/// How much of a request body the description quotes; the rest is only counted, so an
/// upload of any size passes through without being held in memory.
const QUOTED_BODY: usize = 2048;

/// What the echo app saw.
#[derive(Debug, Serialize)]
pub struct Described {
    /// Method.
    pub method: String,
    /// Path and query, as received.
    pub uri: String,
    /// HTTP version, as received.
    pub version: String,
    /// Every header, in order, repeated names included.
    pub headers: Vec<(String, String)>,
    /// Body length in bytes.
    pub body_bytes: u64,
    /// The first bytes of the body, lossily decoded.
    pub body_start: String,
    /// Request trailers, if any arrived.
    pub trailers: Vec<(String, String)>,
}

/// Reads (and counts) a request, keeping at most [`QUOTED_BODY`] bytes of its body.
pub async fn describe(req: Request<Incoming>) -> Result<Described, hyper::Error> {
    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0u64;
    let mut quoted = Vec::new();
    let mut trailers = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => {
                body_bytes += data.len() as u64;
                let room = QUOTED_BODY.saturating_sub(quoted.len());
                quoted.extend_from_slice(&data[..room.min(data.len())]);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.extend(t.iter().map(|(k, v)| {
                        (
                            k.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    }));
                }
            }
        }
    }
    Ok(Described {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_bytes,
        body_start: String::from_utf8_lossy(&quoted).into_owned(),
        trailers,
    })
}

fn html_page(d: &Described, jwt: &str) -> String {
    let mut rows = String::new();
    for (k, v) in &d.headers {
        let style = if k.starts_with("x-idgate-") || k.starts_with("x-forwarded-") {
            " style=\"background:#eef6ff\""
        } else {
            ""
        };
        rows.push_str(&format!(
            "<tr{style}><th align=left>{}</th><td><code>{}</code></td></tr>",
            escape_html(k),
            escape_html(v)
        ));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>idgate echo</title></head>\
         <body style=\"font-family:sans-serif\"><h1>Request as the app received it</h1>\
         <p><code>{} {} {}</code></p><p><b>Identity JWT:</b> {}</p>\
         <table border=1 cellpadding=4 cellspacing=0>{rows}</table>\
         <p>Body: {} bytes</p></body></html>\n",
        escape_html(&d.method),
        escape_html(&d.uri),
        escape_html(&d.version),
        escape_html(jwt),
        d.body_bytes
    )
}

/// The echo app as a [`Handler`]. With a JWKS URL it also verifies the identity JWT it
/// receives, as an app would, and says whether it verified.
pub struct Echo {
    jwks_url: Option<String>,
    jwks: tokio::sync::Mutex<Option<jsonwebtoken::jwk::JwkSet>>,
}

impl Echo {
    /// Echoes only.
    pub fn plain() -> Echo {
        Echo {
            jwks_url: None,
            jwks: tokio::sync::Mutex::new(None),
        }
    }

    /// Echoes and verifies `X-Idgate-Assertion` against the JWKS at `jwks_url`.
    pub fn verifying(jwks_url: String) -> Echo {
        Echo {
            jwks_url: Some(jwks_url),
            jwks: tokio::sync::Mutex::new(None),
        }
    }

    async fn fetch_jwks(url: &str) -> Result<jsonwebtoken::jwk::JwkSet, String> {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<Bytes>>();
        let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
        let resp = client.get(uri).await.map_err(|e| e.to_string())?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }

    async fn verify(&self, d: &Described) -> String {
        let Some(url) = &self.jwks_url else {
            return "not checked".into();
        };
        let Some((_, token)) = d.headers.iter().find(|(k, _)| k == "x-idgate-assertion") else {
            return "none (this path is public, or no one is logged in)".into();
        };
        let mut cached = self.jwks.lock().await;
        if cached.is_none() {
            match Echo::fetch_jwks(url).await {
                Ok(set) => *cached = Some(set),
                Err(e) => return format!("NOT verified: cannot fetch {url}: {e}"),
            }
        }
        let set = cached.as_ref().expect("filled above");
        let result = (|| {
            let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
            let kid = header.kid.clone().ok_or("no kid")?;
            let jwk = set.find(&kid).ok_or("unknown kid")?;
            let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
            let mut v = jsonwebtoken::Validation::new(header.alg);
            v.set_issuer(&["idgate"]);
            v.validate_aud = false;
            jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(format!(
                "verified ({:?}, kid {kid}) against {url}",
                header.alg
            ))
        })();
        result.unwrap_or_else(|e| format!("NOT verified: {e}"))
    }
}

impl Handler for Echo {
    async fn call(self: Arc<Self>, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        let html = response::accepts_html(req.headers());
        match describe(req).await {
            Ok(d) if html => {
                let jwt = self.verify(&d).await;
                let mut resp = Response::new(response::full(Bytes::from(html_page(&d, &jwt))));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/html; charset=utf-8"),
                );
                resp
            }
            Ok(d) => response::json(
                StatusCode::OK,
                &serde_json::to_value(&d).unwrap_or_default(),
            ),
            Err(e) => response::text(
                StatusCode::BAD_REQUEST,
                format!("cannot read request: {e}\n"),
            ),
        }
    }
}
