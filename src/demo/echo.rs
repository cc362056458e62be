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

/// What the guided tour adds to the echo page in `idgate demo`: the demo tenant's SCIM
/// endpoint and the token made for this run, so the page can offer a `curl` that
/// deactivates the person reading it.
#[derive(Debug, Clone)]
pub struct Tour {
    /// The tenant's SCIM base URL, `…/_idgate/scim/{tenant}/v2`.
    pub scim_base: String,
    /// The plain SCIM bearer token. Shown on the page: it exists only for this demo run.
    pub scim_token: String,
}

/// The identity JWT as the echo app saw it.
struct Jwt {
    /// One line: verified against which key, or why not.
    status: String,
    /// The raw token, if one arrived.
    raw: Option<String>,
    /// Its claims, only once its signature verified.
    claims: Option<serde_json::Value>,
}

/// Headers whose value idgate sets on every forwarded request (anything the browser
/// sent under these names was removed first); the page highlights them.
fn set_by_idgate(name: &str) -> bool {
    name.starts_with("x-idgate-")
        || matches!(
            name,
            "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "x-request-id"
        )
}

/// The page's only script: "Sign in as someone else" ends the session with a POST (as
/// idgate's logout requires) before going to the login, and "Copy" buttons (which select
/// the text instead where the clipboard API is missing: a demo opened over plain HTTP on a
/// non-loopback address is not a secure context). Allowed by
/// its hash in the CSP, so nothing else can run. Without JavaScript the link is a plain
/// same-origin GET logout, which lands on the signed-out page.
const SCRIPT: &str = "\
document.getElementById('switch-user')?.addEventListener('click', function (e) {
  e.preventDefault();
  var link = this;
  fetch('/_idgate/logout', {method: 'POST', credentials: 'same-origin', redirect: 'manual'})
    .then(function () { location.href = link.dataset.login; },
          function () { location.href = link.href; });
});
document.querySelectorAll('button[data-copy]').forEach(function (b) {
  b.addEventListener('click', function () {
    var pre = document.getElementById(b.dataset.copy);
    var selectIt = function () { getSelection().selectAllChildren(pre); };
    if (!navigator.clipboard) { selectIt(); return; }
    navigator.clipboard.writeText(pre.textContent).then(function () {
      b.textContent = 'Copied';
      setTimeout(function () { b.textContent = 'Copy'; }, 1500);
    }, selectIt);
  });
});
";

/// Everything is inline (no external assets), sized for a phone up to a wide screen;
/// long values (cookies, the JWT) wrap instead of widening the page.
const STYLE: &str = "\
*{box-sizing:border-box}
body{margin:0;background:#f6f8fa;color:#1f2328;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}
main{max-width:60rem;margin:0 auto;padding:1rem;overflow-wrap:anywhere}
h1{font-size:1.5rem;margin:.5rem 0}
h2{font-size:1.15rem;margin:0 0 .5rem}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:1rem 1.25rem;margin:1rem 0}
p{margin:.5rem 0}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85rem}
pre{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.6rem .75rem;margin:.5rem 0;white-space:pre-wrap;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%;table-layout:fixed}
th,td{text-align:left;vertical-align:top;padding:.3rem .5rem;border-bottom:1px solid #d0d7de;overflow-wrap:anywhere}
th{width:32%;font-weight:600;overflow-wrap:break-word}
@media (max-width:40rem){tr{display:block;border-bottom:1px solid #d0d7de}th,td{display:block;width:auto;border:0}th{padding-bottom:0}}
tr.idgate{background:#ddf4ff}
.who{display:grid;grid-template-columns:repeat(auto-fit,minmax(11rem,1fr));gap:.5rem;margin:.5rem 0}
.who div{border:1px solid #d0d7de;border-radius:6px;padding:.4rem .6rem;overflow-wrap:anywhere}
.who span{display:block;font-size:.8rem;color:#59636e}
.actions{display:flex;flex-wrap:wrap;gap:.75rem;align-items:center;margin-top:.75rem}
.actions form{margin:0}
button{font:inherit;font-size:.95rem;padding:.4rem .9rem;border-radius:6px;border:1px solid #0969da;background:#0969da;color:#fff;cursor:pointer}
button.small{font-size:.8rem;padding:.1rem .6rem;background:#fff;color:#0969da}
a{color:#0969da}
.ok{color:#1a7f37;font-weight:600}
.bad{color:#cf222e;font-weight:600}
.legend{list-style:none;padding:0;margin:.5rem 0}
.legend li{margin:.35rem 0;padding-left:1.6rem;position:relative}
.key{position:absolute;left:0;top:.2rem;width:1.1rem;height:1.1rem;border:1px solid #d0d7de;border-radius:3px;background:#fff}
.key.idgate{background:#ddf4ff;border-color:#54aeff}
.step{display:flex;justify-content:space-between;align-items:baseline;gap:.5rem;margin-top:.75rem}
";

/// The `Content-Security-Policy` of the echo page: nothing but its own style and script.
fn csp() -> String {
    use base64::Engine;
    use sha2::Digest;
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(SCRIPT));
    format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{hash}'; \
         connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
}

/// Single-quotes `s` for a POSIX shell, so the printed `curl` runs as shown whatever a
/// value holds.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A `curl` that sets the user's `active` through SCIM PATCH (RFC 7644 §3.5.2).
fn scim_curl(tour: &Tour, user_id: &str, active: bool) -> String {
    let url = format!(
        "{}/Users/{}",
        tour.scim_base.trim_end_matches('/'),
        utf8_segment(user_id)
    );
    let body = format!(
        "{{\"schemas\":[\"urn:ietf:params:scim:api:messages:2.0:PatchOp\"],\
         \"Operations\":[{{\"op\":\"replace\",\"path\":\"active\",\"value\":{active}}}]}}"
    );
    format!(
        "curl -sS -X PATCH {} \\\n  -H {} \\\n  -H 'Content-Type: application/scim+json' \\\n  -d {}",
        shell_quote(&url),
        shell_quote(&format!("Authorization: Bearer {}", tour.scim_token)),
        shell_quote(&body),
    )
}

fn received<'a>(d: &'a Described, name: &str) -> Option<&'a str> {
    d.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `iat` / `exp` as readable UTC times.
fn claim_time(claims: &serde_json::Value, name: &str) -> Option<String> {
    let secs = claims.get(name)?.as_i64()?;
    let t = chrono::DateTime::from_timestamp(secs, 0)?;
    Some(t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

fn who_section(d: &Described, tour: Option<&Tour>) -> String {
    let Some(user) = received(d, "x-idgate-user-id") else {
        return "<section><h2>No one is signed in on this request</h2>\
                <p>This path is public: idgate forwarded it without identity (and removed any \
                identity headers the browser sent). <a href=\"/\">Go to the app's start page</a> \
                to sign in.</p></section>"
            .to_owned();
    };
    let x = |name: &str| escape_html(received(d, name).unwrap_or("—"));
    let tenant = received(d, "x-idgate-tenant").unwrap_or_default();
    let login = format!("/_idgate/saml/{}/login?return_to=/", utf8_segment(tenant));
    let mut out = format!(
        "<section id=\"who\"><h2>Who is signed in</h2>\
         <p>As the app reads it from the identity headers idgate added to this request \
         (listed below).</p>\
         <div class=\"who\">\
         <div><span>User</span><b id=\"who-user\">{}</b><br>{}<br><small>{}</small></div>\
         <div><span>Tenant</span><b id=\"who-tenant\">{}</b></div>\
         <div><span>Group (company)</span><b id=\"who-group\">{}</b></div>\
         <div><span>Role</span><b id=\"who-role\">{}</b></div></div>\
         <div class=\"actions\">\
         <form method=\"post\" action=\"/_idgate/logout\"><button type=\"submit\" id=\"logout\">Log out</button></form>\
         <a id=\"switch-user\" href=\"/_idgate/logout\" data-login=\"{}\">Sign in as someone else</a>\
         </div></section>",
        escape_html(user),
        x("x-idgate-name"),
        x("x-idgate-email"),
        x("x-idgate-tenant"),
        x("x-idgate-group-id"),
        x("x-idgate-role"),
        escape_html(&login),
    );
    if let Some(tour) = tour {
        out.push_str(&format!(
            "<section id=\"scim\"><h2>Deactivate this user through SCIM</h2>\
             <p>An identity provider (Okta, Entra ID, …) deprovisions people through SCIM. \
             Paste this into a terminal: it marks <b>{user}</b> inactive, and idgate ends \
             their sessions at once. Then reload this page.</p>\
             <div class=\"step\"><b>Deactivate</b><button class=\"small\" type=\"button\" data-copy=\"curl-deactivate\">Copy</button></div>\
             <pre id=\"curl-deactivate\">{}</pre>\
             <div class=\"step\"><b>Reactivate</b><button class=\"small\" type=\"button\" data-copy=\"curl-reactivate\">Copy</button></div>\
             <pre id=\"curl-reactivate\">{}</pre>\
             <p>SCIM base URL <code>{}</code>; the token was made for this demo run \
             (<code>idgate demo</code> printed it at start).</p></section>",
            escape_html(&scim_curl(tour, user, false)),
            escape_html(&scim_curl(tour, user, true)),
            escape_html(&tour.scim_base),
            user = escape_html(user),
        ));
    }
    out
}

/// Bytes left as they are in a URL path segment (RFC 3986 unreserved).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A URL path segment, percent-encoded.
fn utf8_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

fn jwt_section(jwt: &Jwt) -> String {
    let Some(raw) = &jwt.raw else {
        return String::new();
    };
    let class = if jwt.claims.is_some() { "ok" } else { "bad" };
    let claims = match &jwt.claims {
        Some(c) => {
            let times = match (claim_time(c, "iat"), claim_time(c, "exp")) {
                (Some(iat), Some(exp)) => {
                    format!(
                        "<p>Issued {iat}, expires {exp}: idgate signs a fresh one before then.</p>"
                    )
                }
                _ => String::new(),
            };
            format!(
                "<p>Decoded claims (<code>sub</code> is the user id, <code>group_id</code> the \
                 company; <code>iss</code>, <code>aud</code>, <code>exp</code> are what an app \
                 checks besides the signature):</p><pre id=\"jwt-claims\">{}</pre>{times}",
                escape_html(&serde_json::to_string_pretty(c).unwrap_or_default())
            )
        }
        None => String::new(),
    };
    format!(
        "<section id=\"jwt\"><h2>The identity JWT</h2>\
         <p>The same identity, signed by idgate, in <code>X-Idgate-Assertion</code>. An app \
         that must not trust the network verifies it with idgate's public keys \
         (<code>/_idgate/jwks.json</code>), as this echo app just did:</p>\
         <p class=\"{class}\" id=\"jwt-status\">{}</p>{claims}\
         <p>Raw token:</p><pre id=\"jwt-raw\">{}</pre></section>",
        escape_html(&jwt.status),
        escape_html(raw),
    )
}

fn html_page(d: &Described, jwt: &Jwt, tour: Option<&Tour>) -> String {
    let mut rows = String::new();
    for (k, v) in &d.headers {
        let class = if set_by_idgate(k) {
            " class=\"idgate\""
        } else {
            ""
        };
        rows.push_str(&format!(
            "<tr{class}><th>{}</th><td><code>{}</code></td></tr>",
            escape_html(k),
            escape_html(v)
        ));
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>idgate demo: what the app receives</title><style>{STYLE}</style></head>\
         <body><main><h1>What the app behind idgate receives</h1>\
         <p>This page is the demo's echo app, an app with no login code of its own. idgate \
         sits in front of it: it signs people in through SAML and adds who they are to every \
         request it forwards.</p>\
         {}{}\
         <section id=\"request\"><h2>Request as the app received it</h2>\
         <p><code>{} {} {}</code></p>\
         <ul class=\"legend\" id=\"legend\">\
         <li><span class=\"key idgate\"></span><b>Highlighted rows were set by idgate</b>: \
         the identity headers (<code>X-Idgate-*</code>), <code>X-Forwarded-*</code> and \
         <code>X-Request-Id</code>. Any the browser sent under these names were removed \
         first, so no client can claim to be someone else.</li>\
         <li><span class=\"key\"></span><b>The other rows are what the browser sent</b>, \
         passed through as they came, except that idgate took its own session cookie out of \
         <code>Cookie</code>: the app never sees it.</li></ul>\
         <table>{rows}</table>\
         <p>Body: {} bytes</p></section></main><script>{SCRIPT}</script></body></html>\n",
        who_section(d, tour),
        jwt_section(jwt),
        escape_html(&d.method),
        escape_html(&d.uri),
        escape_html(&d.version),
        d.body_bytes
    )
}

/// The echo app as a [`Handler`]. With a JWKS URL it also verifies the identity JWT it
/// receives, as an app would, and says whether it verified.
pub struct Echo {
    jwks_url: Option<String>,
    jwks: tokio::sync::Mutex<Option<jsonwebtoken::jwk::JwkSet>>,
    tour: Option<Tour>,
}

impl Echo {
    /// Echoes only.
    pub fn plain() -> Echo {
        Echo {
            jwks_url: None,
            jwks: tokio::sync::Mutex::new(None),
            tour: None,
        }
    }

    /// Echoes and verifies `X-Idgate-Assertion` against the JWKS at `jwks_url`.
    pub fn verifying(jwks_url: String) -> Echo {
        Echo {
            jwks_url: Some(jwks_url),
            ..Echo::plain()
        }
    }

    /// As [`Echo::verifying`], and the page also offers the demo's SCIM steps.
    pub fn guided(jwks_url: String, tour: Tour) -> Echo {
        Echo {
            tour: Some(tour),
            ..Echo::verifying(jwks_url)
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

    async fn verify(&self, d: &Described) -> Jwt {
        let raw = received(d, "x-idgate-assertion").map(str::to_owned);
        let unverified = |status: String| Jwt {
            status,
            raw: raw.clone(),
            claims: None,
        };
        let Some(url) = &self.jwks_url else {
            return unverified("not checked".into());
        };
        let Some(token) = raw.as_deref() else {
            return unverified("none (this path is public, or no one is logged in)".into());
        };
        let mut cached = self.jwks.lock().await;
        if cached.is_none() {
            match Echo::fetch_jwks(url).await {
                Ok(set) => *cached = Some(set),
                Err(e) => return unverified(format!("NOT verified: cannot fetch {url}: {e}")),
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
            let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(Jwt {
                status: format!("verified ({:?}, kid {kid}) against {url}", header.alg),
                raw: raw.clone(),
                claims: Some(data.claims),
            })
        })();
        result.unwrap_or_else(|e| unverified(format!("NOT verified: {e}")))
    }
}

impl Handler for Echo {
    async fn call(self: Arc<Self>, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        let html = response::accepts_html(req.headers());
        match describe(req).await {
            Ok(d) if html => {
                let jwt = self.verify(&d).await;
                let page = html_page(&d, &jwt, self.tour.as_ref());
                let mut resp = Response::new(response::full(Bytes::from(page)));
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/html; charset=utf-8"),
                );
                if let Ok(csp) = header::HeaderValue::from_str(&csp()) {
                    h.insert(header::CONTENT_SECURITY_POLICY, csp);
                }
                // The page shows a live SCIM token and the user's identity.
                h.insert(
                    header::CACHE_CONTROL,
                    header::HeaderValue::from_static("no-store"),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The printed command runs in a real shell exactly as shown, whatever the user id
    /// and base URL hold.
    #[test]
    fn scim_curl_survives_a_shell_and_hostile_values() {
        let tour = Tour {
            scim_base: "http://h:1/it's/v2".into(),
            scim_token: "tok".into(),
        };
        let cmd = scim_curl(&tour, "o'brien $(id) `x`", false);
        // Swap curl for a printer of its arguments, one per line.
        let printer = cmd.replacen("curl", "printf '%s\\n'", 1);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&printer)
            .output()
            .expect("sh");
        assert!(out.status.success(), "{printer}");
        let args: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(
            args,
            [
                "-sS",
                "-X",
                "PATCH",
                "http://h:1/it's/v2/Users/o%27brien%20%24%28id%29%20%60x%60",
                "-H",
                "Authorization: Bearer tok",
                "-H",
                "Content-Type: application/scim+json",
                "-d",
                r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"replace","path":"active","value":false}]}"#,
            ]
        );
    }

    #[test]
    fn only_headers_idgate_sets_are_highlighted() {
        for name in [
            "x-idgate-user-id",
            "x-idgate-assertion",
            "x-forwarded-for",
            "x-request-id",
        ] {
            assert!(set_by_idgate(name), "{name}");
        }
        for name in ["cookie", "x-forwarded-port", "user-agent", "x-real-ip"] {
            assert!(!set_by_idgate(name), "{name}");
        }
    }
}
