//! Sessions, the access gate and the signed identity, with idgate running in-process on
//! the memory store in front of a real upstream on loopback.

mod support;

use std::sync::Arc;
use std::time::Duration;

use idgate::config::Config;
use idgate::directory::Directory;
use idgate::session::Sessions;
use support::*;

struct Running {
    app: Option<idgate::Running>,
    dir: Directory,
    sessions: Arc<Sessions>,
    _up: TestUpstream,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.as_ref().unwrap().public_addr())
    }
    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.as_ref().unwrap().admin_addr())
    }
    async fn login(&self, tenant: &str, user: &str, group: &str) -> String {
        provision(&self.dir, tenant, user, group).await;
        let new = self
            .sessions
            .create_session(tenant, user, group)
            .await
            .expect("create_session");
        cookie_for(&self.sessions, &new)
    }
}

async fn start(extra: &str) -> Running {
    let up = TestUpstream::start().await;
    let text = config(up.addr, "", &format!("{extra}\n{}", tenant_toml("acme")));
    let cfg = Config::from_toml(&text, std::path::Path::new("/")).expect("valid config");
    let app = idgate::App::new(cfg).expect("app");
    let dir = app.directory().clone();
    let sessions = app.sessions().clone();
    let running = app.start().await.expect("start");
    Running {
        app: Some(running),
        dir,
        sessions,
        _up: up,
    }
}

fn verify(token: &str, jwks: &serde_json::Value) -> (jsonwebtoken::Header, serde_json::Value) {
    let header = jsonwebtoken::decode_header(token).expect("JWT header");
    let kid = header.kid.clone().expect("kid in header");
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).expect("JWKS");
    let jwk = set.find(&kid).expect("kid published in the JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("usable JWK");
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.set_audience(&["legacy-app"]);
    v.set_issuer(&["idgate"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).expect("valid signature");
    (data.header, data.claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_forwards_identity_headers_and_a_verifiable_jwt() {
    let app = start("").await;
    let cookie = app.login("acme", "u-1", "g-1").await;
    let r = get(
        &app.url("/dashboard"),
        &[
            ("cookie", &format!("theme=dark; {cookie}")),
            ("x-idgate-user-id", "admin"),
            ("X_Idgate_Role", "owner"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(
        received(&echo, "x-idgate-user-id"),
        ["u-1"],
        "exactly the real identity"
    );
    assert_eq!(received(&echo, "x-idgate-group-id"), ["g-1"]);
    assert_eq!(received(&echo, "x-idgate-tenant"), ["acme"]);
    assert_eq!(received(&echo, "x-idgate-email"), ["u-1@example.com"]);
    assert_eq!(received(&echo, "x-idgate-name"), ["Ada Lovelace"]);
    assert_eq!(received(&echo, "x-idgate-role"), ["admin"]);
    assert!(received(&echo, "x_idgate_role").is_empty());
    assert_eq!(
        received(&echo, "cookie"),
        ["theme=dark"],
        "idgate's cookie is not forwarded"
    );

    let token = received(&echo, "x-idgate-assertion")
        .pop()
        .expect("JWT header");
    for jwks_url in [
        app.url("/_idgate/jwks.json"),
        app.admin_url("/.well-known/jwks.json"),
    ] {
        let jwks = get(&jwks_url, &[]).await.json();
        let (header, claims) = verify(&token, &jwks);
        assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
        assert_eq!(claims["sub"], "u-1");
        assert_eq!(claims["group_id"], "g-1");
        assert_eq!(claims["tenant"], "acme");
        assert_eq!(claims["email"], "u-1@example.com");
        assert_eq!(claims["name"], "Ada Lovelace");
        assert_eq!(claims["given_name"], "Ada");
        assert_eq!(claims["family_name"], "Lovelace");
        assert_eq!(claims["role"], "admin");
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            60
        );
        assert!(claims["jti"].as_str().unwrap().len() >= 16);
    }
    // The signed token is cached per session, not made per request.
    let again = get(&app.url("/dashboard"), &[("cookie", &cookie)])
        .await
        .json();
    assert_eq!(
        received(&again, "x-idgate-assertion"),
        std::slice::from_ref(&token)
    );

    // A request with a body takes the other upstream path (hyper's client): the same
    // identity, exactly once, and the client's copy gone.
    let posted = send(
        "POST",
        &app.url("/dashboard"),
        &[("cookie", &cookie), ("x-idgate-user-id", "admin")],
        "form=1",
    )
    .await;
    assert_eq!(posted.status, 200, "{}", posted.text());
    let posted = posted.json();
    assert_eq!(posted["method"], "POST");
    assert_eq!(received(&posted, "x-idgate-user-id"), ["u-1"]);
    assert_eq!(received(&posted, "x-idgate-role"), ["admin"]);
    assert_eq!(received(&posted, "x-idgate-assertion"), [token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_es256_and_rs256_keys_sign_and_previous_keys_stay_published() {
    let tmp = tempfile::tempdir().unwrap();
    let es = signing_key_file(tmp.path(), "ES256");
    let rs = signing_key_file(tmp.path(), "RS256");
    // Rotating from RS256 to ES256: the old key stays in the JWKS.
    let app = start(&format!(
        "[identity]\nsigning_key = \"file:{}\"\nprevious_keys = [\"file:{}\"]\nttl = \"90s\"\n",
        es.display(),
        rs.display()
    ))
    .await;
    let cookie = app.login("acme", "u-2", "g-2").await;
    let echo = get(&app.url("/x"), &[("cookie", &cookie)]).await.json();
    let token = received(&echo, "x-idgate-assertion").pop().unwrap();
    let jwks = get(&app.url("/_idgate/jwks.json"), &[]).await.json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
    let (header, claims) = verify(&token, &jwks);
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        90
    );
    let kinds: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kty"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["EC", "RSA"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_endpoint_and_logout() {
    let app = start("").await;
    let cookie = app.login("acme", "u-3", "g-3").await;
    let me = get(&app.url("/_idgate/session"), &[("cookie", &cookie)]).await;
    assert_eq!(me.status, 200);
    let me = me.json();
    assert_eq!(me["user_id"], "u-3");
    assert_eq!(me["name"], "Ada Lovelace");
    let none = get(&app.url("/_idgate/session"), &[]).await;
    assert_eq!(none.status, 401);
    assert!(
        none.json()["login_url"]
            .as_str()
            .unwrap()
            .starts_with("/_idgate/saml/acme/login")
    );

    // A cross-site GET cannot log anyone out: it gets the page that asks (its button
    // POSTs; see tests/pages.rs), and the session lives on.
    let cross = get(
        &app.url("/_idgate/logout"),
        &[("cookie", &cookie), ("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(cross.status, 200);
    assert!(
        cross
            .text()
            .contains("<form method=\"post\" action=\"/_idgate/logout\">"),
        "{}",
        cross.text()
    );
    assert!(cross.headers.get("set-cookie").is_none());
    assert_eq!(
        get(&app.url("/_idgate/session"), &[("cookie", &cookie)])
            .await
            .status,
        200
    );
    let evil_referer = get(
        &app.url("/_idgate/logout"),
        &[("cookie", &cookie), ("referer", "http://evil.example/page")],
    )
    .await;
    assert_eq!(evil_referer.status, 200);
    assert!(evil_referer.headers.get("set-cookie").is_none());
    assert_eq!(
        get(&app.url("/_idgate/session"), &[("cookie", &cookie)])
            .await
            .status,
        200
    );

    let out = send(
        "POST",
        &app.url("/_idgate/logout"),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(out.status, 302);
    assert_eq!(out.headers["location"], "/_idgate/logged-out");
    let cleared = out.headers["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with("idgate_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let after = get(
        &app.url("/x"),
        &[("cookie", &cookie), ("accept", "text/html")],
    )
    .await;
    assert_eq!(after.status, 302, "the old cookie no longer works");
    assert!(
        after.headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/_idgate/saml/acme/login")
    );

    // A same-origin GET (a plain link in the app) works.
    let cookie = app.login("acme", "u-3", "g-3").await;
    let port = app.app.as_ref().unwrap().public_addr().port();
    let same = get(
        &app.url("/_idgate/logout"),
        &[
            ("cookie", &cookie),
            ("referer", &format!("http://127.0.0.1:{port}/settings")),
        ],
    )
    .await;
    assert_eq!(same.status, 302);
    assert_eq!(
        get(&app.url("/_idgate/session"), &[("cookie", &cookie)])
            .await
            .status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivation_and_cancellation_give_403_with_the_reason_and_forward_nothing() {
    let app = start("").await;
    let cookie = app.login("acme", "u-4", "g-4").await;
    assert_eq!(
        get(&app.url("/x"), &[("cookie", &cookie)]).await.status,
        200
    );

    app.dir
        .deactivate_user(&idgate::audit::Origin::system(), "acme", "u-4")
        .await
        .unwrap();
    let r = get(
        &app.url("/x"),
        &[("cookie", &cookie), ("accept", "application/json")],
    )
    .await;
    assert_eq!(r.status, 403);
    let body = r.json();
    assert_eq!(body["error"], "account_deactivated", "{body}");
    assert!(
        body.get("headers").is_none(),
        "the upstream answered nothing"
    );
    let page = get(
        &app.url("/x"),
        &[("cookie", &cookie), ("accept", "text/html")],
    )
    .await;
    assert_eq!(
        page.status, 403,
        "a browser sees the reason, not a login loop"
    );
    assert!(page.text().contains("deactivated"), "{}", page.text());
    // Logging in again is refused while the user stays inactive.
    let refused = app.sessions.create_session("acme", "u-4", "g-4").await;
    assert!(refused.is_err());

    // Reactivated: the old session has ended (the login, not the 403, SPEC §10); a
    // new login works.
    app.dir
        .reactivate_user(&idgate::audit::Origin::system(), "acme", "u-4")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        get(&app.url("/x"), &[("cookie", &cookie)]).await.status,
        401
    );
    let fresh = app
        .sessions
        .create_session("acme", "u-4", "g-4")
        .await
        .unwrap();
    let fresh = cookie_for(&app.sessions, &fresh);
    assert_eq!(get(&app.url("/x"), &[("cookie", &fresh)]).await.status, 200);

    // The company is cancelled: every member is blocked, with that reason.
    app.dir
        .cancel_group(&idgate::audit::Origin::system(), "acme", "g-4")
        .await
        .unwrap();
    let r = get(
        &app.url("/x"),
        &[("cookie", &fresh), ("accept", "application/json")],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "company_cancelled");
    assert!(
        app.sessions
            .create_session("acme", "u-4", "g-4")
            .await
            .is_err()
    );

    // Removal from a company blocks that membership.
    let other = app.login("acme", "u-5", "g-5").await;
    app.dir
        .remove_membership(&idgate::audit::Origin::system(), "acme", "u-5", "g-5")
        .await
        .unwrap();
    let r = get(
        &app.url("/x"),
        &[("cookie", &other), ("accept", "application/json")],
    )
    .await;
    assert_eq!(r.json()["error"], "removed_from_company");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_slides_and_max_lifetime_is_absolute() {
    let app =
        start("[session]\nidle_timeout = \"2s\"\nmax_lifetime = \"6s\"\ncache_ttl = \"1s\"\n")
            .await;
    let cookie = app.login("acme", "u-6", "g-6").await;
    // Active use keeps it alive past the idle timeout…
    for _ in 0..4 {
        assert_eq!(
            get(&app.url("/x"), &[("cookie", &cookie)]).await.status,
            200
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(
        get(&app.url("/x"), &[("cookie", &cookie)]).await.status,
        200,
        "slid past 2 s"
    );
    // …but not past the absolute lifetime.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        get(&app.url("/x"), &[("cookie", &cookie)]).await;
    }
    assert_eq!(
        get(&app.url("/x"), &[("cookie", &cookie)]).await.status,
        401,
        "lifetime over"
    );

    let idle = app.login("acme", "u-7", "g-7").await;
    assert_eq!(get(&app.url("/x"), &[("cookie", &idle)]).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(
        get(&app.url("/x"), &[("cookie", &idle)]).await.status,
        401,
        "idle expiry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_deployments_get_host_prefixed_secure_cookies_and_new_ids_per_login() {
    let up = TestUpstream::start().await;
    let text = config(up.addr, "", &tenant_toml("acme")).replace(
        "public_url = \"http://127.0.0.1\"",
        "public_url = \"https://app.example.com\"",
    );
    let cfg = Config::from_toml(&text, std::path::Path::new("/")).unwrap();
    let app = idgate::App::new(cfg).unwrap();
    provision(app.directory(), "acme", "u-8", "g-8").await;
    let a = app
        .sessions()
        .create_session("acme", "u-8", "g-8")
        .await
        .unwrap();
    let b = app
        .sessions()
        .create_session("acme", "u-8", "g-8")
        .await
        .unwrap();
    assert_ne!(a.cookie_value, b.cookie_value, "a new id at every login");
    assert_eq!(a.cookie_value.len(), 43, "256 random bits, base64url");
    let c = a.set_cookie.to_str().unwrap();
    assert!(c.starts_with("__Host-idgate_session="), "{c}");
    for attr in ["; Path=/", "; HttpOnly", "; SameSite=Lax", "; Secure"] {
        assert!(c.contains(attr), "{attr} missing in {c}");
    }
    assert!(!c.contains("Domain="), "__Host- cookies carry no Domain");
}

/// A `[[tenants]]` block for `id` served on `host`.
fn hosted_tenant(id: &str, host: &str, default: bool) -> String {
    tenant_toml(id).replacen(
        "[tenants.saml]",
        &format!("hosts = [\"{host}\"]\ndefault = {default}\n[tenants.saml]"),
        1,
    )
}

/// A session belongs to its tenant (SPEC §7): on another tenant's host it is no session
/// at all, whether the request is proxied, asks `/_idgate/session`, or logs out. The
/// first request on the session's own host fills this thread's fast path, which must
/// not let the next request on the other host through either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_honoured_only_on_its_own_tenants_hosts() {
    let up = TestUpstream::start().await;
    let text = config(
        up.addr,
        "",
        &format!(
            "{}{}",
            hosted_tenant("acme", "acme.test", true),
            hosted_tenant("beta", "beta.test", false)
        ),
    );
    let cfg = Config::from_toml(&text, std::path::Path::new("/")).expect("valid config");
    let app = idgate::App::new(cfg).expect("app");
    let (dir, sessions) = (app.directory().clone(), app.sessions().clone());
    let running = app.start().await.expect("start");
    let url = |p: &str| format!("http://{}{p}", running.public_addr());
    provision(&dir, "acme", "u-a", "g-a").await;
    let new = sessions.create_session("acme", "u-a", "g-a").await.unwrap();
    let cookie = cookie_for(&sessions, &new);

    for round in 0..3 {
        // Its own host (and a host no tenant claims, which the default tenant serves).
        for host in ["acme.test", "ACME.test:8080", "unclaimed.test"] {
            let r = get(&url("/x"), &[("cookie", &cookie), ("host", host)]).await;
            assert_eq!(r.status, 200, "round {round}, {host}: {}", r.text());
            assert_eq!(received(&r.json(), "x-idgate-tenant"), ["acme"]);
        }
        // Another tenant's host: no session. An API call gets 401 naming beta's login,
        // a browser goes to beta's login, and nothing is forwarded.
        let r = get(
            &url("/x"),
            &[
                ("cookie", &cookie),
                ("host", "beta.test"),
                ("accept", "application/json"),
            ],
        )
        .await;
        assert_eq!(r.status, 401, "round {round}: {}", r.text());
        assert!(
            r.json()["login_url"]
                .as_str()
                .unwrap()
                .starts_with("/_idgate/saml/beta/login"),
            "{}",
            r.text()
        );
        let r = get(
            &url("/x"),
            &[
                ("cookie", &cookie),
                ("host", "beta.test"),
                ("accept", "text/html"),
            ],
        )
        .await;
        assert_eq!(r.status, 302);
        assert!(
            r.headers["location"]
                .to_str()
                .unwrap()
                .starts_with("/_idgate/saml/beta/login"),
            "{:?}",
            r.headers
        );
        let r = get(
            &url("/_idgate/session"),
            &[("cookie", &cookie), ("host", "beta.test")],
        )
        .await;
        assert_eq!(r.status, 401, "{}", r.text());
    }
    let r = get(
        &url("/_idgate/session"),
        &[("cookie", &cookie), ("host", "acme.test")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["tenant"], "acme");

    // beta claims a host and is not the default: its sessions count only there.
    provision(&dir, "beta", "u-b", "g-b").await;
    let new = sessions.create_session("beta", "u-b", "g-b").await.unwrap();
    let beta = cookie_for(&sessions, &new);
    for (host, want) in [
        ("beta.test", 200),
        ("unclaimed.test", 401),
        ("acme.test", 401),
    ] {
        let r = get(
            &url("/x"),
            &[
                ("cookie", &beta),
                ("host", host),
                ("accept", "application/json"),
            ],
        )
        .await;
        assert_eq!(r.status, want, "beta's session on {host}");
    }

    // A logout on beta's host does not end acme's session.
    let r = send(
        "POST",
        &url("/_idgate/logout"),
        &[("cookie", &cookie), ("host", "beta.test")],
        "",
    )
    .await;
    assert_eq!(r.status, 302);
    let r = get(&url("/x"), &[("cookie", &cookie), ("host", "acme.test")]).await;
    assert_eq!(
        r.status, 200,
        "the session survived a logout on another tenant's host"
    );
}
