//! The development IdP's endpoint, `/_idgate/dev-idp/sso`. The gateway dispatches here
//! only when `idgate demo` built the app with a [`DevIdp`]; `serve` has no such route.

use std::collections::HashMap;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::idp::DevIdp;
use crate::response::{self, Body};

/// The form a demo login posts is a handful of fields; anything near this is not one.
const MAX_FORM: usize = 64 * 1024;

impl DevIdp {
    /// `GET` shows the form for the identity to log in as (carrying the AuthnRequest and
    /// RelayState along); `POST` signs a response for it and auto-posts it to the ACS.
    pub async fn sso(&self, req: Request<Incoming>, request_id: &str) -> Response<Body> {
        let page = |html: String| {
            let mut resp = Response::new(response::full(html));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        };
        if req.method() == Method::GET {
            let q: HashMap<String, String> = req
                .uri()
                .query()
                .map(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .into_owned()
                        .collect()
                })
                .unwrap_or_default();
            let mut resp = page(self.form(
                q.get("SAMLRequest").map(String::as_str),
                q.get("RelayState").map(String::as_str),
            ));
            // The picker runs no script and posts only to itself.
            resp.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
                     base-uri 'none'; frame-ancestors 'none'",
                ),
            );
            return resp;
        }
        let body = match http_body_util::Limited::new(req.into_body(), MAX_FORM)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return response::error(
                    StatusCode::BAD_REQUEST,
                    true,
                    "bad_request",
                    "Unreadable form.",
                    request_id,
                );
            }
        };
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
        match self.respond(&form) {
            Ok(html) => page(html),
            Err(e) => {
                tracing::warn!(request_id, error = %e, "dev IdP could not sign");
                response::error(
                    StatusCode::BAD_REQUEST,
                    true,
                    "bad_request",
                    "The dev IdP could not sign this.",
                    request_id,
                )
            }
        }
    }
}
