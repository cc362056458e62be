//! The HTML pages idgate shows people on the public listener (SPEC §10): refusals,
//! errors, the deactivated page, the logout confirmation and the logged-out page. They
//! all come from one small template, so that every one of them says what happened in
//! plain words, offers the next step, keeps the reference id, loads nothing from
//! anywhere, and reads well on a phone.
//!
//! # Using it
//! ```ignore
//! use crate::page::{Href, Page, Step};
//! // A refusal whose words come from the reason table, with a way back in:
//! Page::new(StatusCode::FORBIDDEN, "account_deactivated")
//!     .step(Step::link("Sign in again", Href::login(tenant, "/reports")))
//!     .reference(request_id)
//!     .into_response();
//! // An extra sentence after the table's, and a button that POSTs:
//! Page::new(StatusCode::OK, "confirm_logout")
//!     .step(Step::post("Log out", Href::logout()))
//!     .into_response();
//! ```
//! - The title and the first sentence come from [`REASONS`], looked up by the same code
//!   the JSON form of the answer carries; add a row there for a new code (a unit test
//!   checks that every code the source passes to `response::error` has one).
//! - Links and form targets are [`Href`]s, which only idgate builds and which are always
//!   same-origin relative URLs; a client's value only ever reaches one through
//!   [`Href::login`] / [`Href::path`], which validate it first.
//! - Everything shown is escaped. The only inline code is the stylesheet, allowed by
//!   its hash in the page's `Content-Security-Policy` (`default-src 'none'` otherwise).
//! - [`Page::technical`] shows a reason code: for the demo only, never in production.
//! - `response::error` renders its HTML form with this template (a link to `/` as the
//!   next step); callers that know the tenant or the path build a [`Page`] themselves.

use std::sync::LazyLock;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::response::{Body, escape_html, full};

/// What a person is told for one reason code: a title and a sentence in plain words.
#[derive(Debug, PartialEq, Eq)]
pub struct Reason {
    /// The code, as logs, metrics and JSON answers name it.
    pub code: &'static str,
    /// The page's title and heading.
    pub title: &'static str,
    /// What happened, in a sentence or two that need no knowledge of SAML or HTTP.
    pub says: &'static str,
}

const fn r(code: &'static str, title: &'static str, says: &'static str) -> Reason {
    Reason { code, title, says }
}

const SIGN_IN_FAILED: &str = "Sign-in did not work";

/// Every reason idgate refuses or fails a browser request for, and the pages that are
/// no refusal (logged out, the logout confirmation). SAML rejection codes are those of
/// `saml::AcsError::code` and `saml::rejection_code`; the others are the codes of
/// `response::error` calls, of access-rule refusals and of `RevokeReason`.
pub const REASONS: &[Reason] = &[
    // SAML sign-in rejections, one per reason code.
    r(
        "malformed",
        SIGN_IN_FAILED,
        "The sign-in message from your identity provider could not be read.",
    ),
    r(
        "signature",
        SIGN_IN_FAILED,
        "The sign-in message was not signed by the identity provider this application trusts, or was signed in a way it does not accept.",
    ),
    r(
        "destination",
        SIGN_IN_FAILED,
        "The sign-in message was addressed to another application or another address.",
    ),
    r(
        "recipient",
        SIGN_IN_FAILED,
        "The sign-in message was meant for another address of this application.",
    ),
    r(
        "issuer",
        SIGN_IN_FAILED,
        "The sign-in message came from an identity provider this application does not trust.",
    ),
    r(
        "audience",
        SIGN_IN_FAILED,
        "The sign-in message was issued for another application.",
    ),
    r(
        "expired",
        SIGN_IN_FAILED,
        "The sign-in message arrived after it had expired. This happens when signing in took a long time, or when a clock is wrong.",
    ),
    r(
        "not_yet_valid",
        SIGN_IN_FAILED,
        "The sign-in message is not valid yet: a clock at your identity provider or here is probably wrong.",
    ),
    r(
        "in_response_to",
        SIGN_IN_FAILED,
        "The sign-in message does not answer the sign-in that was started here.",
    ),
    r(
        "status",
        SIGN_IN_FAILED,
        "Your identity provider did not confirm the sign-in; it may have been cancelled or refused there.",
    ),
    r(
        "subject_confirmation",
        SIGN_IN_FAILED,
        "The sign-in message does not say how it may be used, so it cannot be accepted.",
    ),
    r(
        "decryption",
        SIGN_IN_FAILED,
        "The sign-in message could not be decrypted.",
    ),
    r(
        "assertion_unsigned",
        SIGN_IN_FAILED,
        "The sign-in message was not signed the way this application requires.",
    ),
    r(
        "unencrypted",
        SIGN_IN_FAILED,
        "The sign-in message was not encrypted, and this application requires it to be.",
    ),
    r(
        "replay",
        SIGN_IN_FAILED,
        "This sign-in was already used. This happens when the browser goes back to a finished sign-in.",
    ),
    r(
        "unknown_request",
        SIGN_IN_FAILED,
        "This sign-in was not started here, or it has already been completed or has expired. This happens after going back in the browser, or when a sign-in page was left open too long.",
    ),
    r(
        "browser_mismatch",
        SIGN_IN_FAILED,
        "This sign-in was started in another browser or window, or your browser did not keep this site's cookie.",
    ),
    r(
        "missing_attribute",
        SIGN_IN_FAILED,
        "Your identity provider did not send everything this application needs, such as your user id or your company.",
    ),
    r(
        "malformed_attribute",
        "Account details cannot be used",
        "Your account details hold characters that cannot be passed on to the application. Please ask your administrator to correct them.",
    ),
    r(
        "login_failed",
        SIGN_IN_FAILED,
        "Your sign-in could not be accepted.",
    ),
    // Who may not come in.
    r(
        "account_deactivated",
        "Account deactivated",
        "Your account has been deactivated, so you cannot use this application now. If you think this is a mistake, please contact your administrator.",
    ),
    r(
        "company_cancelled",
        "Company account cancelled",
        "Your company's account has been cancelled, so you cannot use this application now. If you think this is a mistake, please contact your administrator.",
    ),
    r(
        "removed_from_company",
        "No longer a member",
        "You have been removed from this company, so you cannot use this application with it now.",
    ),
    r(
        "forbidden",
        "Access not allowed",
        "Your account may not open this page.",
    ),
    r(
        "not_provisioned",
        "Account not set up",
        "Your account has not been set up for this application. Please ask your administrator to give you access.",
    ),
    r(
        "invalid_token",
        "Access token not accepted",
        "The access token sent with this request is not valid for this application: it may have expired, or come from another issuer. Ask for a new token.",
    ),
    r(
        "unauthenticated",
        "Not signed in",
        "This page needs you to be signed in, and sign-in is not set up for this address.",
    ),
    // Come back later.
    r(
        "too_many_logins",
        "Too many sign-in attempts",
        "Too many sign-ins were started from your network in a short time.",
    ),
    r(
        "store_unavailable",
        "Temporarily unavailable",
        "Sign-in is temporarily unavailable. Please try again shortly.",
    ),
    r(
        "idp_metadata_unavailable",
        "Sign-in not available yet",
        "Sign-in is not available yet: the identity provider's settings could not be loaded. Please try again in a minute.",
    ),
    r(
        "upstream_timeout",
        "The application is slow to answer",
        "The application did not answer in time. Please try again.",
    ),
    r(
        "upstream_unavailable",
        "The application is not reachable",
        "The application could not be reached; it may be restarting. Please try again in a moment.",
    ),
    r(
        "request_timeout",
        "Upload interrupted",
        "Your upload stopped arriving before it was complete. Please try again.",
    ),
    // Requests that cannot be served.
    r(
        "not_found",
        "Page not found",
        "There is no page at this address.",
    ),
    r(
        "unknown_tenant",
        "Unknown sign-in address",
        "This sign-in address does not belong to any organisation set up here.",
    ),
    r(
        "bad_request",
        "Request not accepted",
        "Your browser sent a request in a form this server does not accept, for example an unusual address.",
    ),
    r(
        "not_implemented",
        "Request not accepted",
        "Your browser sent the request in a form this server does not support.",
    ),
    r(
        "method_not_allowed",
        "Request not accepted",
        "This address does not take this kind of request.",
    ),
    r(
        "internal",
        "Something went wrong",
        "Something went wrong on our side. Please try again; if it keeps happening, contact your administrator.",
    ),
    // Signing out.
    r(
        "confirm_logout",
        "Log out?",
        "Do you want to log out of this application?",
    ),
    r("logged_out", "Signed out", "You have been signed out."),
    r(
        "cross_site_logout",
        "Log out?",
        "Logging out needs a confirmation from this application's own pages.",
    ),
    r(
        "logout_failed",
        "Sign-out not accepted",
        "The sign-out request from your identity provider could not be accepted.",
    ),
    r(
        "slo_unavailable",
        "Sign-out not set up",
        "Signing out through your identity provider is not set up for this application.",
    ),
];

/// The row for codes that have none: the caller's own message is shown instead.
const UNKNOWN: Reason = r("error", "Something went wrong", "");

/// The table's row for `code`, if it has one.
pub fn reason(code: &str) -> Option<&'static Reason> {
    REASONS.iter().find(|r| r.code == code)
}

/// Characters percent-encoded in a query value idgate writes (`return_to`).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Characters percent-encoded in a path segment idgate writes (a tenant id).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Characters that cannot stand in a URL as sent, encoded in a path idgate links back
/// to; `%` stays, as the path is taken as it was sent (already encoded).
const RAW_PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'\'')
    .add(b'{')
    .add(b'}')
    .add(b'|')
    .add(b'^')
    .add(b'#');

/// A same-origin relative URL for a link or a form: the only kind a page points to.
/// Only the constructors here make one, so nothing a client sent becomes a link unless
/// it passed `saml::safe_return_to` (a path on this origin, never `//host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Href(String);

impl Href {
    /// The app's start page, `/`.
    pub fn home() -> Href {
        Href("/".to_owned())
    }

    /// The tenant's SP-initiated login, coming back to `return_to` (a path and query as
    /// sent; anything not a same-origin path becomes `/`).
    pub fn login(tenant: &str, return_to: &str) -> Href {
        let back = crate::saml::safe_return_to(return_to).unwrap_or_else(|| "/".to_owned());
        Href(format!(
            "/_idgate/saml/{}/login?return_to={}",
            utf8_percent_encode(tenant, SEGMENT),
            utf8_percent_encode(&back, QUERY_VALUE)
        ))
    }

    /// A path and query on this origin, as sent by the client (for "Try again"); `/`
    /// when it is not a same-origin path.
    pub fn path(path_and_query: &str) -> Href {
        match crate::saml::safe_return_to(path_and_query) {
            Some(p) => Href(utf8_percent_encode(&p, RAW_PATH).to_string()),
            None => Href::home(),
        }
    }

    /// `/_idgate/logout`, which a confirmation posts to.
    pub fn logout() -> Href {
        Href("/_idgate/logout".to_owned())
    }

    /// The URL, for a `Location` or a test.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A next step: a link, or a button that POSTs (a form with no fields).
#[derive(Debug, Clone)]
pub enum Step {
    /// `<a href>`.
    Link {
        /// What it says.
        label: &'static str,
        /// Where it goes.
        href: Href,
    },
    /// `<form method="post"><button>`.
    Post {
        /// What the button says.
        label: &'static str,
        /// Where the form posts.
        action: Href,
    },
}

impl Step {
    /// A link.
    pub fn link(label: &'static str, href: Href) -> Step {
        Step::Link { label, href }
    }

    /// A button that POSTs an empty form.
    pub fn post(label: &'static str, action: Href) -> Step {
        Step::Post { label, action }
    }

    /// "Sign in again" to `tenant`'s login coming back to `return_to`, or, with no
    /// tenant, "Go to the start page".
    pub fn sign_in(tenant: Option<&str>, return_to: &str) -> Step {
        match tenant {
            Some(t) => Step::link("Sign in again", Href::login(t, return_to)),
            None => Step::home(),
        }
    }

    /// "Go to the start page" (`/`).
    pub fn home() -> Step {
        Step::link("Go to the start page", Href::home())
    }
}

/// One page, built up and then turned into a response by [`Page::into_response`].
#[derive(Debug)]
pub struct Page {
    status: StatusCode,
    title: &'static str,
    says: Vec<String>,
    steps: Vec<Step>,
    reference: Option<String>,
    technical: Option<String>,
    form_targets: Vec<String>,
}

impl Page {
    /// A page for `code`: its title and sentence from [`REASONS`]. A code without a row
    /// gets a generic title and nothing said; use [`Page::for_error`] to fall back to a
    /// message instead.
    pub fn new(status: StatusCode, code: &str) -> Page {
        let reason = reason(code).unwrap_or(&UNKNOWN);
        Page {
            status,
            title: reason.title,
            says: if reason.says.is_empty() {
                Vec::new()
            } else {
                vec![reason.says.to_owned()]
            },
            steps: Vec::new(),
            reference: None,
            technical: None,
            form_targets: Vec::new(),
        }
    }

    /// A page for `code`, or, for a code with no row in [`REASONS`], the status's
    /// reason phrase and `message` (escaped like everything else).
    pub fn for_error(status: StatusCode, code: &str, message: &str) -> Page {
        let mut page = Page::new(status, code);
        if reason(code).is_none() {
            page.title = status.canonical_reason().unwrap_or("Error");
            page.says.push(message.to_owned());
        }
        page
    }

    /// Adds a sentence after the table's (for what only the caller knows, like how
    /// long to wait).
    pub fn say(mut self, sentence: impl Into<String>) -> Page {
        self.says.push(sentence.into());
        self
    }

    /// Adds a next step; the first one is shown as the main button.
    pub fn step(mut self, step: Step) -> Page {
        self.steps.push(step);
        self
    }

    /// The request id, shown so that a person can quote it and an operator find the
    /// log line that says more.
    pub fn reference(mut self, request_id: &str) -> Page {
        self.reference = Some(request_id.to_owned());
        self
    }

    /// Shows a technical reason code. The demo only: production pages never name the
    /// check that failed (the log line under the reference does).
    pub fn technical(mut self, code: &str) -> Page {
        self.technical = Some(code.to_owned());
        self
    }

    /// Lets this page's form lead, through redirects, to `origin` (an `https://host`):
    /// browsers check every redirect of a form submission against `form-action`, so a
    /// logout that goes on to the IdP or to an absolute `after_logout_url` needs it.
    pub fn allow_form_target(mut self, origin: String) -> Page {
        if !self.form_targets.contains(&origin) {
            self.form_targets.push(origin);
        }
        self
    }

    /// The page as HTML text.
    pub fn html(&self) -> String {
        use std::fmt::Write;
        let title = escape_html(self.title);
        let mut out = String::with_capacity(2048 + STYLE.len());
        let _ = write!(
            out,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <meta name=\"robots\" content=\"noindex\">\
             <title>{title}</title><style>{STYLE}</style></head>\n\
             <body><main><h1>{title}</h1>\n"
        );
        for s in &self.says {
            let _ = writeln!(out, "<p>{}</p>", escape_html(s));
        }
        if !self.steps.is_empty() {
            out.push_str("<div class=\"next\">");
            for step in &self.steps {
                match step {
                    Step::Link { label, href } => {
                        let _ = write!(
                            out,
                            "<a href=\"{}\">{}</a>",
                            escape_html(href.as_str()),
                            escape_html(label)
                        );
                    }
                    Step::Post { label, action } => {
                        let _ = write!(
                            out,
                            "<form method=\"post\" action=\"{}\"><button type=\"submit\">{}</button></form>",
                            escape_html(action.as_str()),
                            escape_html(label)
                        );
                    }
                }
            }
            out.push_str("</div>\n");
        }
        if let Some(code) = &self.technical {
            let _ = writeln!(
                out,
                "<p class=\"tech\">Technical reason (shown in the demo only): <code>{}</code></p>",
                escape_html(code)
            );
        }
        if let Some(id) = &self.reference {
            let _ = writeln!(
                out,
                "<p class=\"ref\">Reference: <code>{}</code><br>If you ask for help, mention this reference.</p>",
                escape_html(id)
            );
        }
        out.push_str("</main></body></html>\n");
        out
    }

    /// The `Content-Security-Policy` this page is served with.
    pub fn csp(&self) -> HeaderValue {
        if self.form_targets.is_empty() {
            return CSP.clone();
        }
        let mut targets = String::new();
        for t in &self.form_targets {
            // Origins come from validated config; anything that could break out of the
            // directive is left out rather than trusted.
            if t.bytes()
                .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
            {
                targets.push(' ');
                targets.push_str(t);
            }
        }
        HeaderValue::from_str(&csp_with(&targets)).unwrap_or_else(|_| CSP.clone())
    }

    /// The response: the page, `no-store`, `nosniff`, and its CSP.
    pub fn into_response(self) -> Response<Body> {
        let csp = self.csp();
        let mut resp = Response::new(full(self.html()));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
        h.insert("x-frame-options", HeaderValue::from_static("DENY"));
        h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
        resp
    }
}

/// The one stylesheet, inline (a page loads nothing) and allowed by its hash.
const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1f2328;--muted:#59636e;--bg:#f6f8fa;--card:#fff;--line:#d1d9e0;--accent:#0969da;--on-accent:#fff}\
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#9198a1;--bg:#0d1117;--card:#151b23;--line:#3d444d;--accent:#4493f8;--on-accent:#0d1117}}\
*{box-sizing:border-box}\
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}\
body{margin:0;padding:12vh 1rem 2rem;background:var(--bg);color:var(--fg);font:16px/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,\"Helvetica Neue\",Arial,sans-serif}\
main{max-width:34rem;margin:0 auto;padding:2rem 1.75rem;background:var(--card);border:1px solid var(--line);border-radius:12px;overflow-wrap:anywhere;word-break:break-word}\
h1{margin:0 0 1rem;font-size:1.5rem;line-height:1.25}\
p{margin:0 0 1rem}\
.next{display:flex;flex-wrap:wrap;gap:.75rem 1.25rem;align-items:center;margin:1.5rem 0}\
.next form{margin:0}\
.next a,.next button{font:inherit;font-weight:600;color:var(--accent);text-decoration:none}\
.next a:hover,.next button:hover{text-decoration:underline}\
.next button{background:none;border:0;padding:0;cursor:pointer}\
.next>a:first-child,.next>form:first-child button{display:inline-block;padding:.6rem 1.2rem;border:0;border-radius:8px;background:var(--accent);color:var(--on-accent);cursor:pointer}\
.next>a:first-child:hover,.next>form:first-child button:hover{text-decoration:none;filter:brightness(1.1)}\
main>:last-child{margin-bottom:0}\
code{font:.875em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}\
.tech{padding:.5rem .75rem;border-left:3px solid var(--accent);background:var(--bg)}\
.ref{margin:1.5rem 0 0;padding-top:1rem;border-top:1px solid var(--line);color:var(--muted);font-size:.875rem}\
@media (max-width:30rem){body{padding:0}main{min-height:100vh;border:0;border-radius:0;padding:2rem 1.25rem}}";

/// `default-src 'none'` and nothing else but the stylesheet's hash; forms go only to
/// this origin (and to `extra_form_targets`); nobody may frame a page.
fn csp_with(extra_form_targets: &str) -> String {
    static HASH: LazyLock<String> = LazyLock::new(|| {
        use base64::Engine;
        use sha2::Digest;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(STYLE.as_bytes()))
    });
    format!(
        "default-src 'none'; style-src 'sha256-{}'; form-action 'self'{extra_form_targets}; \
         base-uri 'none'; frame-ancestors 'none'",
        &*HASH
    )
}

static CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    HeaderValue::from_str(&csp_with("")).expect("the CSP is ASCII without control characters")
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_the_source_answers_with_has_plain_words() {
        // Codes passed to `response::error` (and the ACS's `refuse`), and the SAML
        // rejection codes, as written in the source: a new one without a row fails here.
        let sources = [
            include_str!("gateway.rs"),
            include_str!("response.rs"),
            include_str!("saml/routes.rs"),
            include_str!("saml/mod.rs"),
            include_str!("demo/routes.rs"),
            include_str!("maestrano/routes.rs"),
            include_str!("session/model.rs"),
        ];
        let mut codes = Vec::new();
        for src in sources {
            for call in ["response::error(", "refuse(", "refuse_page(", "Page::new("] {
                for (at, _) in src.match_indices(call) {
                    let rest = &src[at + call.len()..];
                    let rest = &rest[..rest.find(';').unwrap_or(rest.len()).min(400)];
                    if let Some(code) = first_literal(rest) {
                        codes.push(code);
                    }
                }
            }
            let arms = src.contains("fn rejection_code") || src.contains("enum RevokeReason");
            for (at, _) in src.match_indices("=> \"").filter(|_| arms) {
                let rest = &src[at + 4..];
                let code = &rest[..rest.find('"').unwrap()];
                codes.push(code.to_owned());
            }
        }
        codes.sort();
        codes.dedup();
        // Not reason codes: format names and literals of other `=>` arms.
        let not_codes = ["https", "http", "localhost"];
        let missing: Vec<&String> = codes
            .iter()
            .filter(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .filter(|c| !not_codes.contains(&c.as_str()))
            .filter(|c| reason(c).is_none())
            .collect();
        assert!(missing.is_empty(), "codes without plain words: {missing:?}");
        assert!(codes.iter().any(|c| c == "replay") && codes.iter().any(|c| c == "recipient"));
    }

    fn first_literal(s: &str) -> Option<String> {
        let start = s.find('"')? + 1;
        let end = start + s[start..].find('"')?;
        let lit = &s[start..end];
        (!lit.is_empty() && lit.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .then(|| lit.to_owned())
    }

    #[test]
    fn every_reason_is_written_once_in_sentences() {
        for (i, r) in REASONS.iter().enumerate() {
            assert!(
                REASONS[..i].iter().all(|o| o.code != r.code),
                "{} twice",
                r.code
            );
            assert!(r.says.ends_with('.') || r.says.ends_with('?'), "{}", r.code);
            assert!(!r.title.is_empty() && !r.title.contains('_'), "{}", r.code);
        }
    }

    #[test]
    fn hrefs_stay_on_this_origin() {
        assert_eq!(
            Href::login("acme", "/reports?y=1&z=a b").as_str(),
            "/_idgate/saml/acme/login?return_to=/reports%3Fy%3D1%26z%3Da%20b"
        );
        assert_eq!(
            Href::login("acme", "//evil.example/x").as_str(),
            "/_idgate/saml/acme/login?return_to=/"
        );
        assert_eq!(
            Href::login("a/b", "https://evil.example").as_str(),
            "/_idgate/saml/a%2Fb/login?return_to=/"
        );
        assert_eq!(
            Href::path("/a b\"<x>?q=%22").as_str(),
            "/a%20b%22%3Cx%3E?q=%22"
        );
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "x",
        ] {
            assert_eq!(Href::path(bad), Href::home(), "{bad}");
        }
    }

    #[test]
    fn pages_escape_and_allow_only_their_own_style() {
        let page = Page::for_error(StatusCode::IM_A_TEAPOT, "no_such_code", "<b>&\"'")
            .step(Step::link(
                "Sign in again",
                Href::login("acme", "/\"><script>"),
            ))
            .reference("<rid>")
            .technical("<tech>");
        let html = page.html();
        assert!(!html.contains("<b>") && !html.contains("<script>") && !html.contains("<rid>"));
        assert!(html.contains("&lt;b&gt;&amp;&quot;&#39;"), "{html}");
        assert!(html.contains("<title>I&#39;m a teapot</title>"), "{html}");
        let csp = page.csp();
        let csp = csp.to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'none'; style-src 'sha256-"),
            "{csp}"
        );
        assert!(csp.contains("form-action 'self';"), "{csp}");
        let with = Page::new(StatusCode::OK, "confirm_logout")
            .allow_form_target("https://idp.example.com".into())
            .allow_form_target("https://x; script-src *".into());
        let csp = with.csp();
        assert!(
            csp.to_str()
                .unwrap()
                .contains("form-action 'self' https://idp.example.com;"),
            "{csp:?}"
        );
    }
}
