//! Machine clients with bearer JWTs (SPEC §9) against a real idgate in front of a real
//! upstream. Keys are made by the `openssl` CLI and tokens signed by PyJWT
//! (tests/fixtures/bearer/jwt_tool.py), so nothing here trusts idgate's own signer; the
//! JWKS over HTTPS is served by Python's `http.server` behind a private CA.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use idgate::config::Config;
use idgate::directory::Directory;
use support::*;

const ISSUER: &str = "https://login.example.com/";
const AUDIENCE: &str = "api://legacy-app";

fn python(args: &[&str]) -> String {
    support::jwt_tool::jwt_tool(args)
}

/// Keys made by the `openssl` CLI: RSA 2048, P-256 and Ed25519, and a stranger's RSA key.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let k = |name: &str| dir.path().join(name).display().to_string();
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &k("rsa.pem"),
        ]);
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &k("stranger.pem"),
        ]);
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &k("ec.pem"),
        ]);
        openssl(&["genpkey", "-algorithm", "ED25519", "-out", &k("ed.pem")]);
        Keys { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The JWKS of the issuer's three keys (kids `rsa`, `ec`, `ed`), written to a file.
    fn jwks_file(&self) -> PathBuf {
        let doc = python(&[
            "jwks",
            &format!("{}:rsa", self.path("rsa.pem")),
            &format!("{}:ec", self.path("ec.pem")),
            &format!("{}:ed", self.path("ed.pem")),
        ]);
        let path = self.dir.path().join("jwks.json");
        std::fs::write(&path, doc).unwrap();
        path
    }

    /// A token signed with key `key` (file name) as `alg`, `kid`, over `claims` (JSON;
    /// `"$now+N"` for times).
    fn sign(&self, key: &str, alg: &str, kid: &str, claims: &str) -> String {
        python(&["sign", &self.path(key), alg, kid, claims])
    }
}

/// Standard claims for `sub`, valid for 10 minutes, with `extra` JSON members.
fn claims(sub: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        r#"{{"iss": "{ISSUER}", "aud": "{AUDIENCE}", "sub": "{sub}", "iat": "$now", "exp": "$now+600"{extra}}}"#
    )
}

struct Running {
    app: idgate::Running,
    dir: Directory,
    _up: TestUpstream,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.public_addr())
    }

    async fn call(&self, path: &str, token: &str) -> Reply {
        self.call_on(path, token, None).await
    }

    async fn call_on(&self, path: &str, token: &str, host: Option<&str>) -> Reply {
        let auth = format!("Bearer {token}");
        let mut headers = vec![("accept", "application/json"), ("authorization", &*auth)];
        if let Some(h) = host {
            headers.push(("host", h));
        }
        get(&self.url(path), &headers).await
    }
}

const RULES: &str = r#"
[[access.rules]]
name = "admins only"
path = "/admin"
allow_groups = ["g-admins"]

[[access.rules]]
name = "status"
path = "/status"
public = true
"#;

/// idgate in-process, tenant `acme` (default) accepting tokens of [`ISSUER`] (static
/// JWKS file) with claims mapped, a second issuer that forwards `Authorization`, and
/// tenant `beta` (host `beta.test`) with no issuer.
async fn start(keys: &Keys) -> Running {
    let up = TestUpstream::start().await;
    let jwks = keys.jwks_file().display().to_string();
    let tenants = format!(
        "{acme}\
         [[tenants.bearer]]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n\
         jwks = \"file:{jwks}\"\nalgorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\n\
         group_claim = \"grp\"\nrole_claim = \"role\"\n\
         [[tenants.bearer]]\nissuer = \"https://forwarding.example.com/\"\n\
         audience = \"{AUDIENCE}\"\njwks = \"file:{jwks}\"\nforward_authorization = true\n\
         {beta}{gamma}\
         [[tenants.bearer]]\nissuer = \"{ISSUER}\"\naudience = \"api://gamma\"\n\
         jwks = \"file:{jwks}\"\n",
        acme = tenant_with("acme", "default = true"),
        beta = tenant_with("beta", "hosts = [\"beta.test\"]"),
        gamma = tenant_with("gamma", "hosts = [\"gamma.test\"]"),
    );
    // The test client is the ingress for forward auth.
    let server = "trusted_proxies = [\"127.0.0.1/32\"]";
    let text = config(up.addr, server, &format!("{RULES}\n{tenants}"));
    let cfg =
        Config::from_toml(&text, Path::new("/")).unwrap_or_else(|e| panic!("config: {e}\n{text}"));
    let app = idgate::App::new(cfg).expect("app");
    let dir = app.directory().clone();
    Running {
        app: app.start().await.expect("start"),
        dir,
        _up: up,
    }
}

/// [`tenant_toml`] with `top` (keys of the tenant itself) before its sub-tables.
fn tenant_with(id: &str, top: &str) -> String {
    tenant_toml(id).replacen("[tenants.saml]", &format!("{top}\n[tenants.saml]"), 1)
}

/// The claims of a JWT, read without verifying (to see which token the app got).
fn payload(jwt: &str) -> serde_json::Value {
    let part = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

fn assert_invalid_token(r: &Reply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert_eq!(r.json()["error"], "invalid_token", "{what}");
    assert_eq!(
        r.headers["www-authenticate"], "Bearer error=\"invalid_token\"",
        "{what}"
    );
    assert!(r.json().get("headers").is_none(), "{what}: reached the app");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_clients_token_reaches_the_app_as_a_fresh_idgate_identity() {
    let keys = Keys::new();
    let r = start(&keys).await;
    for (key, alg, kid) in [
        ("rsa.pem", "RS256", "rsa"),
        ("ec.pem", "ES256", "ec"),
        ("ed.pem", "EdDSA", "ed"),
    ] {
        let token = keys.sign(
            key,
            alg,
            kid,
            &claims(
                "svc-reports",
                r#""grp": "g-reporting", "role": "reader", "email": "reports@example.com", "name": "Reports job""#,
            ),
        );
        let reply = r.call("/data", &token).await;
        assert_eq!(reply.status, 200, "{alg}: {}", reply.text());
        let echo = reply.json();
        let one = |name: &str| {
            let v = received(&echo, name);
            assert_eq!(v.len(), 1, "{alg}: {name}: {v:?}");
            v[0].clone()
        };
        assert_eq!(one("x-idgate-user-id"), "svc-reports", "{alg}");
        assert_eq!(one("x-idgate-tenant"), "acme");
        assert_eq!(one("x-idgate-group-id"), "g-reporting");
        assert_eq!(one("x-idgate-groups"), "g-reporting");
        assert_eq!(one("x-idgate-role"), "reader");
        assert_eq!(one("x-idgate-email"), "reports@example.com");
        assert_eq!(one("x-idgate-name"), "Reports job");
        assert_eq!(one("x-idgate-auth"), "bearer");
        // The app gets idgate's JWT, never the client's token.
        assert!(received(&echo, "authorization").is_empty(), "{alg}");
        let jwt = one("x-idgate-assertion");
        assert_ne!(jwt, token);
        let claims = payload(&jwt);
        assert_eq!(claims["iss"], "idgate");
        assert_eq!(claims["sub"], "svc-reports");
        assert_eq!(claims["groups"], serde_json::json!(["g-reporting"]));
    }

    // The second issuer forwards the client's Authorization as it came.
    let token = keys.sign(
        "rsa.pem",
        "RS256",
        "rsa",
        &claims("svc-sync", "").replace(ISSUER, "https://forwarding.example.com/"),
    );
    let echo = r.call("/data", &token).await.json();
    assert_eq!(
        received(&echo, "authorization"),
        vec![format!("Bearer {token}")]
    );
    assert_eq!(received(&echo, "x-idgate-user-id"), vec!["svc-sync"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_token_gets_401_invalid_token_and_never_reaches_the_app() {
    let keys = Keys::new();
    let r = start(&keys).await;
    let sign = |claims: &str| keys.sign("rsa.pem", "RS256", "rsa", claims);
    let base = |extra: &str| claims("svc", extra);
    // Skew: 60 s either way is tolerated.
    let late = base(r#""exp": "$now-30""#).replace(r#", "exp": "$now+600""#, "");
    assert_eq!(r.call("/", &sign(&late)).await.status, 200, "exp 30 s ago");
    let early = base(r#""nbf": "$now+30""#);
    assert_eq!(r.call("/", &sign(&early)).await.status, 200, "nbf in 30 s");

    let no_exp =
        format!(r#"{{"iss": "{ISSUER}", "aud": "{AUDIENCE}", "sub": "svc", "iat": "$now"}}"#);
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            sign(&claims("svc", "").replace(r#""exp": "$now+600""#, r#""exp": "$now-120""#)),
        ),
        ("not yet valid", sign(&base(r#""nbf": "$now+120""#))),
        (
            "other audience",
            sign(&claims("svc", "").replace(AUDIENCE, "api://other")),
        ),
        (
            "other issuer",
            sign(&claims("svc", "").replace(ISSUER, "https://evil.example.com/")),
        ),
        ("no exp", sign(&no_exp)),
        (
            "no subject",
            sign(&claims("svc", "").replace(r#""sub": "svc", "#, "")),
        ),
        (
            "stranger's key under our kid",
            keys.sign("stranger.pem", "RS256", "rsa", &base("")),
        ),
        (
            "HS256 keyed with the public key",
            python(&["hmac-with-public", &keys.path("rsa.pem"), "rsa", &base("")]),
        ),
        ("alg none", python(&["none", &base("")])),
        (
            "PS256, not on the allow-list",
            keys.sign("rsa.pem", "PS256", "rsa", &base("")),
        ),
        (
            "EC key's kid with RS256",
            keys.sign("rsa.pem", "RS256", "ec", &base("")),
        ),
        (
            "unknown kid",
            keys.sign("rsa.pem", "RS256", "nope", &base("")),
        ),
        ("garbage", "not-a-jwt".to_owned()),
        ("three dots of nothing", "..".to_owned()),
        ("oversized", "a".repeat(20_000)),
    ];
    for (what, token) in &cases {
        let reply = r.call("/data", token).await;
        assert_invalid_token(&reply, what);
    }
    // A signature altered by one character.
    let good = sign(&base(""));
    let mut bad = good.clone().into_bytes();
    let last = bad.len() - 5;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    assert_invalid_token(
        &r.call("/data", &String::from_utf8(bad).unwrap()).await,
        "altered signature",
    );
    assert_eq!(r.call("/data", &good).await.status, 200);
}

async fn eventually(r: &Running, path: &str, token: &str, status: u16) -> Reply {
    let start = Instant::now();
    loop {
        let reply = r.call(path, token).await;
        if reply.status == status {
            return reply;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{path}: still {} after 1 s, wanted {status}: {}",
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_users_are_blocked_by_deactivation_and_cancellation_within_a_second() {
    let keys = Keys::new();
    let r = start(&keys).await;
    provision(&r.dir, "acme", "u-svc", "g-acme").await;
    let token = keys.sign("rsa.pem", "RS256", "rsa", &claims("u-svc", ""));

    // A subject that is a user: the directory's record gives the identity.
    let echo = r.call("/data", &token).await.json();
    assert_eq!(received(&echo, "x-idgate-user-id"), vec!["u-svc"]);
    assert_eq!(received(&echo, "x-idgate-email"), vec!["u-svc@example.com"]);
    assert_eq!(received(&echo, "x-idgate-name"), vec!["Ada Lovelace"]);
    assert_eq!(received(&echo, "x-idgate-group-id"), vec!["g-acme"]);
    assert_eq!(received(&echo, "x-idgate-role"), vec!["admin"]);
    for _ in 0..20 {
        assert_eq!(r.call("/data", &token).await.status, 200);
    }

    // Deactivated: the same token is refused like a session, within a second.
    r.dir
        .deactivate_user(&idgate::audit::Origin::system(), "acme", "u-svc")
        .await
        .unwrap();
    let refused = eventually(&r, "/data", &token, 403).await;
    assert_eq!(refused.json()["error"], "account_deactivated");
    r.dir
        .reactivate_user(&idgate::audit::Origin::system(), "acme", "u-svc")
        .await
        .unwrap();
    eventually(&r, "/data", &token, 200).await;

    // The company cancelled.
    r.dir
        .cancel_group(&idgate::audit::Origin::system(), "acme", "g-acme")
        .await
        .unwrap();
    let refused = eventually(&r, "/data", &token, 403).await;
    assert_eq!(refused.json()["error"], "company_cancelled");
    r.dir
        .reactivate_group(&idgate::audit::Origin::system(), "acme", "g-acme")
        .await
        .unwrap();
    eventually(&r, "/data", &token, 200).await;

    // Removed from their last company, they are placed nowhere: refused as a session is.
    provision(&r.dir, "acme", "u-solo", "g-solo").await;
    let solo = keys.sign("rsa.pem", "RS256", "rsa", &claims("u-solo", ""));
    assert_eq!(r.call("/data", &solo).await.status, 200);
    r.dir
        .remove_membership(&idgate::audit::Origin::system(), "acme", "u-solo", "g-solo")
        .await
        .unwrap();
    let refused = eventually(&r, "/data", &solo, 403).await;
    assert_eq!(refused.json()["error"], "removed_from_company");

    // A token cannot place a user in a group the directory says they are not in.
    provision(&r.dir, "acme", "u-other", "g-other").await;
    let claimed = keys.sign(
        "rsa.pem",
        "RS256",
        "rsa",
        &claims("u-svc", r#""grp": "g-other""#),
    );
    assert_eq!(r.call("/data", &claimed).await.status, 403);

    // A token identity whose group is a cancelled company of the tenant.
    let machine = keys.sign(
        "ec.pem",
        "ES256",
        "ec",
        &claims("svc-billing", r#""grp": "g-other""#),
    );
    assert_eq!(r.call("/data", &machine).await.status, 200);
    r.dir
        .cancel_group(&idgate::audit::Origin::system(), "acme", "g-other")
        .await
        .unwrap();
    let refused = eventually(&r, "/data", &machine, 403).await;
    assert_eq!(refused.json()["error"], "company_cancelled");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_rules_decide_for_bearer_identities_and_follow_membership_changes() {
    let keys = Keys::new();
    let r = start(&keys).await;
    let admin = keys.sign(
        "rsa.pem",
        "RS256",
        "rsa",
        &claims("svc-a", r#""grp": "g-admins""#),
    );
    let other = keys.sign(
        "rsa.pem",
        "RS256",
        "rsa",
        &claims("svc-b", r#""grp": "g-staff""#),
    );
    assert_eq!(r.call("/admin/users", &admin).await.status, 200);
    let refused = r.call("/admin/users", &other).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"], "forbidden");
    assert_eq!(refused.json()["rule"], "admins only");
    assert_eq!(r.call("/reports", &other).await.status, 200);

    // A directory user admitted through a SCIM-style membership loses /admin within a
    // second of being removed from g-admins.
    provision(&r.dir, "acme", "u-ops", "g-acme").await;
    provision(&r.dir, "acme", "u-ops", "g-admins").await;
    let ops = keys.sign("ed.pem", "EdDSA", "ed", &claims("u-ops", ""));
    let echo = eventually(&r, "/admin/users", &ops, 200).await.json();
    assert_eq!(received(&echo, "x-idgate-groups"), vec!["g-acme,g-admins"]);
    r.dir
        .remove_membership(
            &idgate::audit::Origin::system(),
            "acme",
            "u-ops",
            "g-admins",
        )
        .await
        .unwrap();
    let refused = eventually(&r, "/admin/users", &ops, 403).await;
    assert_eq!(refused.json()["rule"], "admins only");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_without_issuers_leaves_authorization_to_the_app() {
    let keys = Keys::new();
    let r = start(&keys).await;
    let token = keys.sign("rsa.pem", "RS256", "rsa", &claims("svc", ""));
    // On beta's host, a bearer token is not idgate's business: no session, so the
    // usual answer for a client without one, not invalid_token.
    let reply = r.call_on("/data", &token, Some("beta.test")).await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_ne!(reply.json()["error"], "invalid_token");
    assert!(reply.headers.get("www-authenticate").is_none());
    // acme's token is not valid on beta's host either way: nothing forwarded.
    assert!(reply.json().get("headers").is_none());
}

// ---------------------------------------------------------------------------------------
// The JWKS over HTTPS.

/// Python's `http.server` with TLS (a certificate from a private CA made by `openssl`),
/// serving `jwks.json` from its directory and counting the requests for it.
struct JwksServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    fetches: Arc<Mutex<usize>>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl JwksServer {
    fn start(jwks: &str) -> JwksServer {
        let dir = tempfile::tempdir().unwrap();
        make_ca(dir.path(), "ca");
        make_leaf(dir.path(), "ca");
        std::fs::write(dir.path().join("jwks.json"), jwks).unwrap();
        let port = free_port();
        let p = |n: &str| dir.path().join(n).display().to_string();
        let mut child = Command::new("python3")
            .arg(format!(
                "{}/tests/fixtures/bearer/jwks_server.py",
                env!("CARGO_MANIFEST_DIR")
            ))
            .args([&port.to_string(), &p("cert.pem"), &p("key.pem"), &p("")])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(
            lines.next().map(Result::unwrap).as_deref(),
            Some("ready"),
            "the JWKS server did not start"
        );
        let fetches = Arc::new(Mutex::new(0));
        let counter = fetches.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line == "GET /jwks.json" {
                    *counter.lock().unwrap() += 1;
                }
            }
        });
        JwksServer {
            child,
            port,
            dir,
            fetches,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/jwks.json", self.port)
    }

    fn ca(&self) -> String {
        self.dir.path().join("ca.pem").display().to_string()
    }

    fn fetches(&self) -> usize {
        *self.fetches.lock().unwrap()
    }

    fn serve(&self, jwks: &str) {
        std::fs::write(self.dir.path().join("jwks.json"), jwks).unwrap();
    }
}

fn bearer_tenant(jwks: &str) -> String {
    tenant_with("acme", "default = true")
        + &format!("[[tenants.bearer]]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n{jwks}\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_jwks_is_fetched_over_https_cached_and_refetched_for_a_new_kid_at_most_once_a_minute() {
    let keys = Keys::new();
    let jwks_a = python(&["jwks", &format!("{}:a", keys.path("rsa.pem"))]);
    let server = JwksServer::start(&jwks_a);
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&config(
        up.addr,
        "",
        &bearer_tenant(&format!(
            "jwks_url = \"{}\"\nca_certificate = \"file:{}\"",
            server.url(),
            server.ca()
        )),
    ));
    idgate.wait_ready().await;
    assert!(
        idgate.wait_for_log("bearer JWKS fetched"),
        "{}",
        idgate.logs()
    );
    let fetched_at = Instant::now();
    assert_eq!(server.fetches(), 1);
    let call = |token: String| {
        let url = idgate.url("/data");
        async move {
            get(
                &url,
                &[
                    ("accept", "application/json"),
                    ("authorization", &format!("Bearer {token}")),
                ],
            )
            .await
        }
    };
    let a = keys.sign("rsa.pem", "RS256", "a", &claims("svc", ""));
    for _ in 0..20 {
        assert_eq!(call(a.clone()).await.status, 200);
    }
    assert_eq!(
        server.fetches(),
        1,
        "keys are cached, not fetched per token"
    );

    // The issuer rotates to a new key. Within a minute of the last fetch, a token
    // naming it is refused and fetches nothing: made-up kids cannot hammer the issuer.
    let jwks_ab = python(&[
        "jwks",
        &format!("{}:a", keys.path("rsa.pem")),
        &format!("{}:b", keys.path("ec.pem")),
    ]);
    server.serve(&jwks_ab);
    let b = keys.sign("ec.pem", "ES256", "b", &claims("svc", ""));
    for _ in 0..5 {
        assert_invalid_token(&call(b.clone()).await, "kid b, within the minute");
    }
    assert_eq!(server.fetches(), 1);
    // Once the minute is over, the first unknown kid refetches, once.
    tokio::time::sleep(
        (fetched_at + Duration::from_secs(61)).saturating_duration_since(Instant::now()),
    )
    .await;
    assert_eq!(call(b.clone()).await.status, 200);
    assert_eq!(server.fetches(), 2);
    let c = keys.sign("ed.pem", "EdDSA", "c", &claims("svc", ""));
    for _ in 0..5 {
        assert_invalid_token(&call(c.clone()).await, "kid c, unknown");
    }
    assert_eq!(server.fetches(), 2);
    assert_eq!(call(a).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_behind_a_private_ca_is_not_trusted_without_its_ca() {
    let keys = Keys::new();
    let server = JwksServer::start(&python(&["jwks", &format!("{}:a", keys.path("rsa.pem"))]));
    let up = TestUpstream::start().await;
    let idgate = Idgate::start(&config(
        up.addr,
        "",
        &bearer_tenant(&format!("jwks_url = \"{}\"", server.url())),
    ));
    idgate.wait_ready().await;
    assert!(
        idgate.wait_for_log("bearer JWKS fetch failed"),
        "{}",
        idgate.logs()
    );
    let a = keys.sign("rsa.pem", "RS256", "a", &claims("svc", ""));
    let reply = get(
        &idgate.url("/data"),
        &[
            ("accept", "application/json"),
            ("authorization", &format!("Bearer {a}")),
        ],
    )
    .await;
    assert_invalid_token(&reply, "keys from an untrusted server");
    assert_eq!(
        server.fetches(),
        0,
        "the TLS handshake failed before any request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_auth_answers_machine_clients_by_their_token() {
    let keys = Keys::new();
    let r = start(&keys).await;
    let ask = |uri: &'static str, token: String| {
        let url = r.url("/_idgate/auth");
        async move {
            let auth = format!("Bearer {token}");
            get(
                &url,
                &[
                    ("x-original-uri", uri),
                    ("x-original-method", "GET"),
                    ("authorization", &auth),
                ],
            )
            .await
        }
    };
    let admin = keys.sign(
        "rsa.pem",
        "RS256",
        "rsa",
        &claims("svc-a", r#""grp": "g-admins""#),
    );
    let other = keys.sign(
        "rsa.pem",
        "RS256",
        "rsa",
        &claims("svc-b", r#""grp": "g-staff""#),
    );
    let ok = ask("/admin/users", admin.clone()).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.headers["x-idgate-user-id"], "svc-a");
    assert_eq!(ok.headers["x-idgate-auth"], "bearer");
    assert_ne!(ok.headers["x-idgate-assertion"], admin.as_str());
    let refused = ask("/admin/users", other.clone()).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["rule"], "admins only");
    assert!(refused.headers.get("x-idgate-user-id").is_none());
    assert_eq!(ask("/reports", other).await.status, 200);
    let bad = ask("/reports", "not-a-jwt".into()).await;
    assert_invalid_token(&bad, "forward auth, garbage token");
    assert!(bad.headers.get("x-idgate-user-id").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_opened_with_a_token_closes_when_its_user_is_deactivated() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let keys = Keys::new();
    let r = start(&keys).await;
    provision(&r.dir, "acme", "u-live", "g-acme").await;
    let token = keys.sign("rsa.pem", "RS256", "rsa", &claims("u-live", ""));
    let open = || async {
        let mut req = format!("ws://{}/ws", r.app.public_addr())
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("websocket handshake through idgate");
        assert_eq!(resp.status(), 101);
        ws.send(Message::text("hello")).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an echo in time")
            .expect("open")
            .expect("a message");
        assert_eq!(echo.into_text().unwrap().as_str(), "hello");
        ws
    };
    let mut ws = open().await;
    // Other users' changes leave it open.
    provision(&r.dir, "acme", "u-else", "g-acme").await;
    r.dir
        .deactivate_user(&idgate::audit::Origin::system(), "acme", "u-else")
        .await
        .unwrap();
    ws.send(Message::text("still")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an echo in time");
    assert!(matches!(got, Some(Ok(Message::Text(t))) if t.as_str() == "still"));

    let start = Instant::now();
    r.dir
        .deactivate_user(&idgate::audit::Origin::system(), "acme", "u-live")
        .await
        .unwrap();
    loop {
        let left = Duration::from_secs(1).saturating_sub(start.elapsed());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => panic!("the tunnel is still open 1 s after the deactivation"),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(_))) => continue,
        }
    }
    // And a new one is refused.
    r.dir
        .deactivate_user(&idgate::audit::Origin::system(), "acme", "u-live")
        .await
        .unwrap();
    let mut req = format!("ws://{}/ws", r.app.public_addr())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn where_tokens_are_judged_a_token_never_reaches_the_app_and_authorization_is_single() {
    let keys = Keys::new();
    let r = start(&keys).await;
    let token = keys.sign(
        "rsa.pem",
        "RS256",
        "rsa",
        &claims("svc", "").replace(AUDIENCE, "api://gamma"),
    );
    let bearer = format!("Bearer {token}");
    let ask = |host: &'static str, auth: Vec<String>| {
        let url = r.url("/status");
        async move {
            let mut headers = vec![("accept", "application/json"), ("host", host)];
            for a in &auth {
                headers.push(("authorization", a.as_str()));
            }
            get(&url, &headers).await
        }
    };
    // gamma accepts tokens and forwards none: even a public path drops it.
    let reply = ask("gamma.test", vec![bearer.clone()]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(received(&reply.json(), "authorization").is_empty());
    // beta accepts none: its Authorization is the app's.
    let reply = ask("beta.test", vec![bearer.clone()]).await;
    assert_eq!(
        received(&reply.json(), "authorization"),
        vec![bearer.clone()]
    );
    // Two Authorization fields where tokens are judged: refused, whatever the path.
    let two = vec!["Basic dXNlcjpwdw==".to_owned(), bearer.clone()];
    assert_eq!(ask("gamma.test", two.clone()).await.status, 400);
    let reply = get(
        &r.url("/data"),
        &[
            ("host", "gamma.test"),
            ("authorization", &two[0]),
            ("authorization", &two[1]),
        ],
    )
    .await;
    assert_eq!(reply.status, 400);
    // And the token itself works there.
    let reply = get(
        &r.url("/data"),
        &[("host", "gamma.test"), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(received(&reply.json(), "x-idgate-tenant"), vec!["gamma"]);
}
