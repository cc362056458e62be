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
}

/// Reads (and counts) a request, keeping at most [`QUOTED_BODY`] bytes of its body.
pub async fn describe(req: Request<Incoming>) -> Result<Described, hyper::Error> {
    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0u64;
    let mut quoted = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            body_bytes += data.len() as u64;
            let room = QUOTED_BODY.saturating_sub(quoted.len());
            quoted.extend_from_slice(&data[..room.min(data.len())]);
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
    })
}

fn html_page(d: &Described) -> String {
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
         <p><code>{} {} {}</code></p><table border=1 cellpadding=4 cellspacing=0>{rows}</table>\
         <p>Body: {} bytes</p></body></html>\n",
        escape_html(&d.method),
        escape_html(&d.uri),
        escape_html(&d.version),
        d.body_bytes
    )
}

/// The echo app as a [`Handler`].
pub struct Echo;

impl Handler for Echo {
    async fn call(self: Arc<Self>, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        let html = response::accepts_html(req.headers());
        match describe(req).await {
            Ok(d) if html => {
                let mut resp = Response::new(response::full(Bytes::from(html_page(&d))));
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
