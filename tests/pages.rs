//! The pages idgate shows people (SPEC §10): every refusal and error a browser meets says
//! what happened in plain words, offers the next step as a same-origin link or button,
//! keeps the reference id, loads nothing from anywhere, and escapes what it shows. A
//! `GET /_idgate/logout` typed in the address bar asks before logging out.
//!
//! Every scenario runs a real `idgate serve` process on a private `redis-server`; the test
//! provisions users and makes sessions through the library on the same Redis, as a login
//! would, and logs in through the ACS with responses signed by `xmlsec1`.

mod support;

#[path = "support/saml.rs"]
mod saml_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use idgate::config::Config;
use idgate::directory::Directory;
use idgate::session::Sessions;
use idgate::store::Store;
use support::*;

const IDP: &str = "https://idp.example.com/metadata";
const ACS: &str = "http://127.0.0.1/_idgate/saml/acme/acs";
const SP: &str = "http://127.0.0.1/_idgate/saml/acme/metadata";
const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");

/// One deployment: an idgate process, its Redis and upstream, and the library side of
/// the same config for provisioning and sessions.
struct Site {
    idgate: Idgate,
    idp: saml_support::TestIdp,
    dir: Directory,
    sessions: Arc<Sessions>,
    redis: RedisServer,
    _up: TestUpstream,
    _keys: tempfile::TempDir,
}

/// `server` adds lines to `[server]`, `rest` goes before the tenant, `saml` into its
/// `[tenants.saml]`.
async fn site(server: &str, rest: &str, saml: &str) -> Site {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let key = signing_key_file(keys.path(), "EdDSA");
    let idp = saml_support::TestIdp::new("pages-idp");
    let text = config(
        up.addr,
        server,
        &format!(
            "[store]\nurl = \"{}\"\n{rest}\n[identity]\nsigning_key = \"file:{}\"\n\
             [[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_entity_id = \"{IDP}\"\n\
             idp_sso_url = \"https://idp.example.com/sso\"\nidp_certificate = \"file:{}\"\n\
             allow_idp_initiated = true\n{saml}\n",
            redis.url(),
            key.display(),
            idp.cert.display()
        ),
    );
    let cfg = Config::from_toml(&text, std::path::Path::new("/")).expect("valid config");
    let store = Store::open(&cfg.store).expect("store");
    let idgate = Idgate::start(&text);
    idgate.wait_ready().await;
    Site {
        idgate,
        idp,
        dir: Directory::new(store.clone()),
        sessions: Arc::new(Sessions::standalone(&cfg, store).expect("sessions")),
        redis,
        _up: up,
        _keys: keys,
    }
}

impl Site {
    fn url(&self, path: &str) -> String {
        self.idgate.url(path)
    }

    /// A session for `user` of `group`, made as a login makes it.
    async fn login(&self, user: &str, group: &str) -> String {
        provision(&self.dir, "acme", user, group).await;
        let new = self
            .sessions
            .create_session("acme", user, group)
            .await
            .expect("session");
        cookie_for(&self.sessions, &new)
    }

    /// Posts a signed IdP-initiated response for `spec` to the ACS, as a browser would.
    async fn post_acs(&self, xml: &str) -> Reply {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("SAMLResponse", &saml_support::b64(xml))
            .finish();
        send(
            "POST",
            &self.url("/_idgate/saml/acme/acs"),
            &[("content-type", "application/x-www-form-urlencoded"), HTML],
            body,
        )
        .await
    }

    async fn session_status(&self, cookie: &str) -> u16 {
        get(&self.url("/_idgate/session"), &[("cookie", cookie)])
            .await
            .status
            .as_u16()
    }
}

/// The confirmation page's form, as (method, action).
fn form_of(page: &str) -> Option<(String, String)> {
    let start = page.find("<form")?;
    let tag = &page[start..start + page[start..].find('>')?];
    let attr = |name: &str| {
        let marker = format!("{name}=\"");
        let s = tag.find(&marker)? + marker.len();
        Some(tag[s..s + tag[s..].find('"')?].to_owned())
    };
    Some((attr("method")?, attr("action")?))
}

// ---------------------------------------------------------------------------------------
// Logout from the address bar.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_or_cross_site_logout_link_asks_first_and_keeps_the_session() {
    let s = site("", "", "").await;
    let cookie = s.login("u-1", "g-1").await;
    for (what, extra) in [
        ("typed, no Sec-Fetch-Site", None),
        (
            "typed, Sec-Fetch-Site: none",
            Some(("sec-fetch-site", "none")),
        ),
        ("a cross-site link", Some(("sec-fetch-site", "cross-site"))),
        ("a same-site link", Some(("sec-fetch-site", "same-site"))),
        (
            "a foreign Referer",
            Some(("referer", "http://evil.example/page")),
        ),
    ] {
        let mut headers = vec![("cookie", cookie.as_str()), HTML];
        headers.extend(extra);
        let r = get(&s.url("/_idgate/logout"), &headers).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        let page = r.text();
        assert_eq!(
            form_of(&page),
            Some(("post".to_owned(), "/_idgate/logout".to_owned())),
            "{what}: {page}"
        );
        assert!(page.contains("Log out</button>"), "{what}: {page}");
        assert!(
            r.headers.get("set-cookie").is_none(),
            "{what}: the cookie is kept"
        );
        assert_eq!(
            s.session_status(&cookie).await,
            200,
            "{what}: the session still works"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_confirmation_logs_out_and_lands_on_the_logged_out_page() {
    let s = site("", "", "").await;
    let cookie = s.login("u-2", "g-2").await;
    let ask = get(&s.url("/_idgate/logout"), &[("cookie", &cookie), HTML]).await;
    let page = check_page("confirm-logout", &ask, 200, None);
    assert!(page.contains("<h1>Log out?</h1>"), "{page}");
    assert!(
        page.contains("<a href=\"/\">Stay signed in</a>"),
        "a way back to the app: {page}"
    );
    let csp = ask.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("form-action 'self';"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    // HEAD is answered like GET and ends nothing.
    let head = send(
        "HEAD",
        &s.url("/_idgate/logout"),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(s.session_status(&cookie).await, 200);

    // The button: a same-origin form POST, as the browser sends it.
    let (method, action) = form_of(&page).unwrap();
    let port = s.idgate.public.port();
    let out = send(
        &method.to_uppercase(),
        &s.url(&action),
        &[
            ("cookie", &cookie),
            ("origin", &format!("http://127.0.0.1:{port}")),
            ("sec-fetch-site", "same-origin"),
            ("content-type", "application/x-www-form-urlencoded"),
            HTML,
        ],
        "",
    )
    .await;
    assert_eq!(out.status, 302, "{}", out.text());
    assert_eq!(out.headers["location"], "/_idgate/logged-out");
    let cleared = out.headers["set-cookie"].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(s.session_status(&cookie).await, 401, "the session is over");

    let landed = get(&s.url("/_idgate/logged-out"), &[HTML]).await;
    let page = check_page(
        "logged-out",
        &landed,
        200,
        Some(("Sign in again", "/_idgate/saml/acme/login?return_to=/")),
    );
    assert!(page.contains("<h1>Signed out</h1>"), "{page}");

    // Any other method is not a logout.
    let put = send("PUT", &s.url("/_idgate/logout"), &[("cookie", &cookie)], "").await;
    assert_eq!(put.status, 405);
    assert_eq!(put.json()["error"], "method_not_allowed");
    // An API client asking for JSON keeps its JSON refusal.
    let json = get(&s.url("/_idgate/logout"), &[("accept", "application/json")]).await;
    assert_eq!(json.status, 403);
    assert_eq!(json.json()["error"], "cross_site_logout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_origin_get_still_logs_out_directly() {
    let s = site("", "", "").await;
    let port = s.idgate.public.port();
    for (what, header) in [
        (
            "Sec-Fetch-Site: same-origin",
            ("sec-fetch-site", "same-origin"),
        ),
        (
            "a same-origin Referer",
            ("referer", &*format!("http://127.0.0.1:{port}/settings")),
        ),
    ] {
        let cookie = s.login("u-3", "g-3").await;
        let r = get(
            &s.url("/_idgate/logout"),
            &[("cookie", &cookie), HTML, header],
        )
        .await;
        assert_eq!(r.status, 302, "{what}: {}", r.text());
        assert_eq!(r.headers["location"], "/_idgate/logged-out", "{what}");
        assert_eq!(s.session_status(&cookie).await, 401, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_logout_url_is_where_the_confirmed_logout_lands() {
    let s = site(
        "",
        "",
        "after_logout_url = \"https://www.example.com/goodbye\"",
    )
    .await;
    let cookie = s.login("u-4", "g-4").await;
    let ask = get(
        &s.url("/_idgate/logout"),
        &[("cookie", &cookie), ("sec-fetch-site", "none"), HTML],
    )
    .await;
    check_page("confirm-logout-after-url", &ask, 200, None);
    // The form's POST is redirected to another origin: the page lets it go there.
    let csp = ask.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("form-action 'self' https://www.example.com;"),
        "{csp}"
    );
    let out = send(
        "POST",
        &s.url("/_idgate/logout"),
        &[("cookie", &cookie), ("sec-fetch-site", "same-origin")],
        "",
    )
    .await;
    assert_eq!(out.status, 302);
    assert_eq!(out.headers["location"], "https://www.example.com/goodbye");
    assert_eq!(s.session_status(&cookie).await, 401);

    let s = site("", "", "after_logout_url = \"/bye\"").await;
    let cookie = s.login("u-4", "g-4").await;
    let ask = get(&s.url("/_idgate/logout"), &[("cookie", &cookie), HTML]).await;
    let csp = ask.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("form-action 'self';"), "{csp}");
    let out = send(
        "POST",
        &s.url("/_idgate/logout"),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(out.headers["location"], "/bye");

    // With SAML Single Logout the POST goes on to the IdP first: its origin is allowed too.
    let sp = saml_support::TestIdp::new("pages-sp");
    let s = site(
        "",
        "",
        &format!(
            "sp_key = \"file:{}\"\nsp_certificate = \"file:{}\"\n\
             idp_slo_url = \"https://slo.idp.example.net/saml/slo\"\n\
             after_logout_url = \"https://www.example.com/goodbye\"",
            sp.key.display(),
            sp.cert.display()
        ),
    )
    .await;
    let spec = saml_support::ResponseSpec::new(IDP, ACS, SP, None);
    let login = s
        .post_acs(&saml_support::signed_assertion_response(&spec, &s.idp))
        .await;
    assert_eq!(login.status, 303, "{}", login.text());
    let cookie = login.cookie();
    let ask = get(&s.url("/_idgate/logout"), &[("cookie", &cookie), HTML]).await;
    check_page("confirm-logout-slo", &ask, 200, None);
    let csp = ask.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("form-action 'self' https://www.example.com https://slo.idp.example.net;"),
        "{csp}"
    );
    let out = send(
        "POST",
        &s.url("/_idgate/logout"),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(out.status, 302);
    let location = out.headers["location"].to_str().unwrap();
    assert!(
        location.starts_with("https://slo.idp.example.net/saml/slo?SAMLRequest="),
        "{location}"
    );
}

// ---------------------------------------------------------------------------------------
// Pages with a way forward.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivated_cancelled_and_removed_users_get_a_page_with_a_way_back_in() {
    let s = site("", "", "").await;
    for (code, user, group) in [
        ("account_deactivated", "u-5", "g-5"),
        ("company_cancelled", "u-6", "g-6"),
        ("removed_from_company", "u-7", "g-7"),
    ] {
        let cookie = s.login(user, group).await;
        let path = "/reports/q3?view=full";
        assert_eq!(
            get(&s.url(path), &[("cookie", &cookie)]).await.status,
            200,
            "{code}: works before"
        );
        match code {
            "account_deactivated" => s
                .dir
                .deactivate_user(&idgate::audit::Origin::system(), "acme", user)
                .await
                .unwrap(),
            "company_cancelled" => s
                .dir
                .cancel_group(&idgate::audit::Origin::system(), "acme", group)
                .await
                .unwrap(),
            _ => s
                .dir
                .remove_membership(&idgate::audit::Origin::system(), "acme", user, group)
                .await
                .unwrap(),
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        let r = loop {
            let r = get(&s.url(path), &[("cookie", &cookie), HTML]).await;
            if r.status != 200 || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let page = check_page(
            code,
            &r,
            403,
            Some((
                "Sign in again",
                "/_idgate/saml/acme/login?return_to=/reports/q3%3Fview%3Dfull",
            )),
        );
        let reason = idgate::page::reason(code).unwrap();
        assert!(
            page.contains(&format!("<h1>{}</h1>", reason.title)),
            "{page}"
        );
        assert!(page.contains(&escape(reason.says)), "{code}: {page}");
        assert!(
            !page.contains("Technical reason"),
            "production pages name no check"
        );
        // JSON answers stay as they were.
        let json = get(&s.url(path), &[("cookie", &cookie)]).await;
        assert_eq!(json.status, 403);
        assert_eq!(json.json()["error"], code);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_by_an_access_rule_names_the_rule() {
    let s = site(
        "",
        "[[access.rules]]\nname = \"admins <only>\"\npath = \"/admin\"\nallow_roles = [\"owner\"]\n",
        "",
    )
    .await;
    let cookie = s.login("u-9", "g-9").await;
    let r = get(&s.url("/admin/users"), &[("cookie", &cookie), HTML]).await;
    let page = check_page(
        "forbidden-by-rule",
        &r,
        403,
        Some(("Go to the start page", "/")),
    );
    assert!(page.contains("<h1>Access not allowed</h1>"), "{page}");
    assert!(
        page.contains("\u{201c}admins &lt;only&gt;\u{201d}"),
        "the rule, escaped: {page}"
    );
    let json = get(&s.url("/admin/users"), &[("cookie", &cookie)]).await;
    assert_eq!(json.json()["rule"], "admins <only>");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_saml_rejection_says_why_in_plain_words_and_offers_to_sign_in_again() {
    let s = site("", "", "").await;
    let spec = saml_support::ResponseSpec::new(IDP, ACS, SP, None);
    let good = saml_support::signed_assertion_response(&spec, &s.idp);
    let first = s.post_acs(&good).await;
    assert_eq!(first.status, 303, "{}", first.text());
    let other = saml_support::TestIdp::new("someone-else");
    let mut expired = spec.clone().fresh();
    expired.not_before = -600;
    expired.not_on_or_after = -300;
    let mut wrong_audience = spec.clone().fresh();
    wrong_audience.audience = "https://other.example/sp".into();
    let mut no_group = spec.clone().fresh();
    no_group.attributes.retain(|(n, _)| n != "group_uid");
    let cases = [
        ("replay", good.clone()),
        (
            "signature",
            saml_support::signed_assertion_response(&spec.clone().fresh(), &other),
        ),
        (
            "expired",
            saml_support::signed_assertion_response(&expired, &s.idp),
        ),
        (
            "audience",
            saml_support::signed_assertion_response(&wrong_audience, &s.idp),
        ),
        (
            "missing_attribute",
            saml_support::signed_assertion_response(&no_group, &s.idp),
        ),
        ("malformed", "<not-saml/>".to_owned()),
    ];
    for (code, xml) in cases {
        let r = s.post_acs(&xml).await;
        let page = check_page(
            &format!("saml-{code}"),
            &r,
            403,
            Some(("Sign in again", "/_idgate/saml/acme/login?return_to=/")),
        );
        let reason = idgate::page::reason(code).unwrap();
        assert!(page.contains(&escape(reason.says)), "{code}: {page}");
        assert!(
            page.contains("<h1>Sign-in did not work</h1>"),
            "{code}: {page}"
        );
        assert!(
            !page.contains("Technical reason") && !page.contains(&format!("<code>{code}</code>")),
            "{code}: production pages keep the check to the log: {page}"
        );
        // Log lines cross a pipe and a reader thread: they may trail the page.
        assert!(
            s.idgate.wait_for_log(&format!("\"reason\":\"{code}\"")),
            "{code}: the log names it"
        );
    }
    // An unreadable post (no SAMLResponse at all) is a page too.
    let r = send(
        "POST",
        &s.url("/_idgate/saml/acme/acs"),
        &[("content-type", "application/x-www-form-urlencoded"), HTML],
        "nothing=here",
    )
    .await;
    check_page(
        "saml-no-response",
        &r,
        403,
        Some(("Sign in again", "/_idgate/saml/acme/login?return_to=/")),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_login_starts_get_a_page_that_says_how_long_to_wait() {
    let s = site("", "[access]\nlogin_starts_per_minute = 1\n", "").await;
    let login = s.url("/_idgate/saml/acme/login?return_to=/reports");
    assert_eq!(get(&login, &[HTML]).await.status, 302);
    let r = get(&login, &[HTML]).await;
    let page = check_page(
        "rate-limited",
        &r,
        429,
        Some(("Try again", "/_idgate/saml/acme/login?return_to=/reports")),
    );
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        page.contains(&format!("try again in {wait} second")),
        "{page}"
    );
    // A client that does not take HTML keeps its JSON.
    let json = get(&login, &[("accept", "application/json")]).await;
    assert_eq!(json.status, 429);
    assert_eq!(json.json()["error"], "too_many_logins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_page_offers_to_try_the_same_page_again() {
    let mut s = site("", "", "").await;
    let cookie = s.login("u-8", "g-8").await;
    assert_eq!(get(&s.url("/a"), &[("cookie", &cookie)]).await.status, 200);
    s.redis.stop();
    let deadline = Instant::now() + Duration::from_secs(4);
    let r = loop {
        let r = get(&s.url("/a/b?c=d%20e"), &[("cookie", &cookie), HTML]).await;
        if r.status == 503 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    check_page(
        "store-unavailable",
        &r,
        503,
        Some(("Try again", "/a/b?c=d%20e")),
    );
    assert_eq!(r.headers["retry-after"], "2");
    let login = get(&s.url("/_idgate/saml/acme/login?return_to=/a"), &[HTML]).await;
    check_page(
        "store-unavailable-login",
        &login,
        503,
        Some(("Try again", "/_idgate/saml/acme/login?return_to=/a")),
    );
    let json = get(&s.url("/a"), &[("cookie", &cookie)]).await;
    assert_eq!(json.status, 503);
    assert_eq!(json.json()["error"], "store_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_and_unknown_endpoints_get_a_page_when_the_client_takes_html() {
    // The test client stands for an ingress (a trusted proxy): the request ids it sends
    // are the references the pages show.
    let s = site("trusted_proxies = [\"127.0.0.1/32\"]", "", "").await;
    // 400: an ambiguous path, as a browser would send it.
    let raw_reply = raw(
        s.idgate.public,
        "GET /a%00b HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/html\r\nX-Request-Id: rid-400\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(raw_reply.starts_with("HTTP/1.1 400"), "{raw_reply}");
    let (head, body) = raw_reply.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'; style-src 'sha256-"),
        "{head}"
    );
    assert!(
        body.contains("<a href=\"/\">Go to the start page</a>"),
        "{body}"
    );
    assert!(body.contains("Reference: <code>rid-400</code>"), "{body}");
    assert!(body.contains(&escape(idgate::page::reason("bad_request").unwrap().says)));
    save("bad-request", body, head);

    let nf = get(&s.url("/_idgate/nope"), &[HTML]).await;
    check_page("not-found", &nf, 404, Some(("Go to the start page", "/")));
    assert_eq!(
        get(&s.url("/_idgate/nope"), &[]).await.json()["error"],
        "not_found"
    );

    // What a client sends and a page shows is escaped: the request id is one such value.
    let evil = "<img/src=//evil.example/x>&'";
    let r = get(&s.url("/_idgate/nope"), &[HTML, ("x-request-id", evil)]).await;
    let page = check_page("escaped", &r, 404, Some(("Go to the start page", "/")));
    assert!(
        page.contains("Reference: <code>&lt;img/src=//evil.example/x&gt;&amp;&#39;</code>"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_app_gets_a_page_that_offers_to_try_again() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let idgate = Idgate::start(&config(addr, "", "[access]\npublic_paths = [\"/\"]\n"));
    let r = get(&idgate.url("/dash?tab=2"), &[HTML]).await;
    check_page(
        "upstream-unavailable",
        &r,
        502,
        Some(("Try again", "/dash?tab=2")),
    );
    let r = send("POST", &idgate.url("/dash"), &[HTML], "x").await;
    check_page(
        "upstream-unavailable-post",
        &r,
        502,
        Some(("Go to the start page", "/")),
    );
    let json = get(&idgate.url("/dash"), &[]).await;
    assert_eq!(json.json()["error"], "upstream_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_names_the_technical_reason_of_a_rejected_login() {
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .env("IDGATE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn idgate demo");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the demo did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let login = get(
        &format!("{base}/_idgate/saml/demo/login?return_to=/"),
        &[HTML],
    )
    .await;
    assert_eq!(login.status, 302);
    let login_cookie = login.cookie();
    let form_page = get(login.headers["location"].to_str().unwrap(), &[HTML])
        .await
        .text();
    let input = |html: &str, name: &str| {
        let marker = format!("name=\"{name}\" value=\"");
        let start = html.find(&marker).unwrap() + marker.len();
        html[start..start + html[start..].find('"').unwrap()].replace("&amp;", "&")
    };
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("request_id", &input(&form_page, "request_id"))
        .append_pair("relay_state", &input(&form_page, "relay_state"))
        .append_pair("uid", "grace")
        .append_pair("email", "grace@example.com")
        .append_pair("group_uid", "navy")
        .finish();
    let ct = ("content-type", "application/x-www-form-urlencoded");
    let autopost = send("POST", &format!("{base}/_idgate/dev-idp/sso"), &[ct], body)
        .await
        .text();
    let acs_body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("SAMLResponse", &input(&autopost, "SAMLResponse"))
        .append_pair("RelayState", &input(&autopost, "RelayState"))
        .finish();
    let acs = format!("{base}/_idgate/saml/demo/acs");
    let headers = [ct, ("cookie", login_cookie.as_str()), HTML];
    let first = send("POST", &acs, &headers, acs_body.clone()).await;
    assert_eq!(first.status, 303, "{}", first.text());

    // Back, then the same sign-in again: refused, and the demo says which check.
    let again = send("POST", &acs, &headers, acs_body).await;
    let bad = send(
        "POST",
        &format!("{base}/_idgate/dev-idp/sso"),
        &[ct, HTML],
        "request_id=%3Cnot-an-id%3E",
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let page = check_page(
        "demo-rejected",
        &again,
        403,
        Some(("Sign in again", "/_idgate/saml/demo/login?return_to=/")),
    );
    let tech = page
        .split("Technical reason (shown in the demo only): <code>")
        .nth(1)
        .and_then(|rest| rest.split("</code>").next())
        .unwrap_or_else(|| panic!("the demo names the reason: {page}"));
    assert!(["replay", "unknown_request"].contains(&tech), "{tech}");
    let reason = idgate::page::reason(tech).unwrap();
    assert!(page.contains(&escape(reason.says)), "{page}");
    // The dev IdP's own refusals are pages too.
    check_page(
        "demo-idp-refused",
        &bad,
        400,
        Some(("Go to the start page", "/")),
    );
}

// ---------------------------------------------------------------------------------------
// What every page must be.

/// Checks what every page must be and returns its text: `status`, HTML, the strict CSP
/// whose only allowance is the page's own stylesheet (by hash), nothing loaded from
/// anywhere, readable on a phone, the reference id shown, and the next step (`label`,
/// `href`) as a same-origin link. The page is saved under `target/tmp/pages/` for a
/// person (or a screenshot) to look at.
#[track_caller]
fn check_page(kind: &str, r: &Reply, status: u16, next: Option<(&str, &str)>) -> String {
    let page = r.text();
    assert_eq!(r.status, status, "{kind}: {page}");
    assert_eq!(
        r.headers["content-type"], "text/html; charset=utf-8",
        "{kind}"
    );
    assert_eq!(r.headers["cache-control"], "no-store", "{kind}");
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    // The stylesheet's hash is the only thing the policy allows beyond 'none'.
    let style = {
        let start = page.find("<style>").expect("an inline stylesheet") + "<style>".len();
        &page[start..start + page[start..].find("</style>").unwrap()]
    };
    let hash = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        <sha2::Sha256 as sha2::Digest>::digest(style.as_bytes()),
    );
    assert!(
        csp.starts_with(&format!(
            "default-src 'none'; style-src 'sha256-{hash}'; form-action 'self'"
        )),
        "{kind}: {csp}"
    );
    assert!(
        !csp.contains("script-src") && !csp.contains("unsafe"),
        "{kind}: {csp}"
    );
    // Nothing from elsewhere: only these elements and attributes (none loads anything
    // but an href or a form action), and every href and action same-origin relative.
    assert!(
        !style.contains("url(") && !style.contains("@import"),
        "{kind}"
    );
    let body = page.replacen(style, "", 1);
    for tag in body.split('<').skip(1) {
        let tag = &tag[..tag
            .find('>')
            .unwrap_or_else(|| panic!("{kind}: unclosed <{tag}"))];
        let tag = tag.trim_start_matches('/');
        let mut parts = tag.split_whitespace();
        let name = parts.next().unwrap_or_default().to_ascii_lowercase();
        assert!(
            [
                "!doctype", "html", "head", "meta", "title", "style", "body", "main", "h1", "p",
                "div", "a", "form", "button", "code", "br"
            ]
            .contains(&name.as_str()),
            "{kind}: element <{tag}>"
        );
        for attr in parts {
            let attr = attr.split('=').next().unwrap();
            assert!(
                [
                    "html",
                    "lang",
                    "charset",
                    "name",
                    "content",
                    "class",
                    "href",
                    "method",
                    "action",
                    "type",
                    "initial-scale"
                ]
                .contains(&attr),
                "{kind}: attribute {attr} in <{tag}>"
            );
        }
    }
    for (at, _) in page.match_indices("href=\"") {
        let href = &page[at + 6..];
        assert!(
            href.starts_with('/') && !href.starts_with("//") && !href.starts_with("/\\"),
            "{kind}: {}",
            &href[..href.find('"').unwrap()]
        );
    }
    for (at, _) in page.match_indices("action=\"") {
        assert!(page[at + 8..].starts_with("/_idgate/"), "{kind}: {page}");
    }
    assert!(
        page.contains("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"),
        "{kind}"
    );
    assert!(
        page.contains("max-width:"),
        "{kind}: a readable line length"
    );
    assert!(
        page.contains("overflow-wrap:anywhere"),
        "{kind}: long tokens wrap"
    );
    if status >= 400 {
        let id = r.headers["x-request-id"].to_str().unwrap();
        assert!(
            page.contains(&format!("Reference: <code>{}</code>", escape(id))),
            "{kind}: the reference id: {page}"
        );
    }
    if let Some((label, href)) = next {
        let link = format!("<a href=\"{}\">{label}</a>", href.replace('&', "&amp;"));
        assert!(page.contains(&link), "{kind}: wanted {link} in {page}");
    }
    save(kind, &page, csp);
    page
}

/// Text as a page shows it.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Keeps a page (and its CSP) under `target/tmp/pages/` for a person to look at.
fn save(kind: &str, page: &str, csp: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pages");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{kind}.html")), page).unwrap();
    std::fs::write(dir.join(format!("{kind}.csp")), csp).unwrap();
}
