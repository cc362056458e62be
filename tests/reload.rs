//! Configuration reload without a restart (SPEC §10), on real idgate processes and a
//! real Redis: SIGHUP and `watch_config` apply tenants and access rules within 2 s,
//! sessions and open tunnels survive, a removed tenant's sessions end, an invalid config
//! keeps the running one, and restart-only keys are reported and ignored.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ADMINS_ONLY: &str =
    "[[access.rules]]\nname = \"admins only\"\npath = \"/admin\"\nallow_groups = [\"g-admins\"]\n";

/// `beta`, on host `beta.test`.
fn beta() -> String {
    tenant_toml("beta").replacen(
        "[tenants.saml]",
        "hosts = [\"beta.test\"]\n[tenants.saml]",
        1,
    )
}

async fn status(idgate: &Idgate, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut h = vec![("accept", "application/json")];
    h.extend_from_slice(headers);
    get(&idgate.url(path), &h).await.status.as_u16()
}

/// Polls until `path` answers `want`; fails after `limit`.
async fn eventually(
    idgate: &Idgate,
    path: &str,
    headers: &[(&str, &str)],
    want: u16,
    limit: Duration,
) {
    let start = Instant::now();
    loop {
        let got = status(idgate, path, headers).await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{path}: still {got} after {limit:?}, wanted {want}\n{}",
            idgate.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric(idgate_metrics: &str, line_start: &str) -> u64 {
    idgate_metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{idgate_metrics}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_tenants_and_rules_and_keeps_sessions_and_tunnels() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let d = deployment(up.addr, &redis.url(), "", "");
    let a = Idgate::start(&d.text);
    a.wait_ready().await;
    let cookie = d.login("u-1", "g-1").await;
    let with_cookie = [("cookie", cookie.as_str())];
    assert_eq!(status(&a, "/admin", &with_cookie).await, 200);
    assert_eq!(status(&a, "/_idgate/saml/beta/metadata", &[]).await, 404);
    let mut req = format!("ws://{}/ws", a.public)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket");

    // Tenant beta and an access rule arrive; so does a restart-only change.
    let text = format!("{ADMINS_ONLY}{}{}", d.text, beta()).replace(
        "public_url = \"http://127.0.0.1\"",
        "public_url = \"http://moved.example\"\nshutdown_grace = \"7s\"",
    );
    std::fs::write(a.config_path(), &text).unwrap();
    let signalled = Instant::now();
    a.signal("HUP");
    eventually(
        &a,
        "/_idgate/saml/beta/metadata",
        &[],
        200,
        Duration::from_secs(2),
    )
    .await;
    eventually(&a, "/admin", &with_cookie, 403, Duration::from_secs(2)).await;
    assert!(signalled.elapsed() < Duration::from_secs(2));
    // The session and its tunnel outlived the reload.
    assert_eq!(status(&a, "/data", &with_cookie).await, 200);
    ws.send(Message::text("after reload")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an echo")
        .expect("open")
        .expect("a message");
    assert_eq!(echo.into_text().unwrap().as_str(), "after reload");
    assert!(
        a.wait_for_log("\"key\":\"server.shutdown_grace\""),
        "the restart-only key is reported:\n{}",
        a.logs()
    );
    // public_url needs a restart: nothing derived from it moved either.
    assert!(a.logs().contains("\"key\":\"server.public_url\""));
    let md = get(&a.url("/_idgate/saml/beta/metadata"), &[]).await.text();
    assert!(
        md.contains("http://127.0.0.1/_idgate/saml/beta/acs"),
        "{md}"
    );
    assert!(!md.contains("moved.example"), "{md}");
    let m = get(&a.admin_url("/metrics"), &[]).await.text();
    assert_eq!(metric(&m, "idgate_config_reloads_total{result=\"ok\"}"), 1);
    assert_eq!(
        metric(&m, "idgate_config_reloads_total{result=\"error\"}"),
        0
    );
    assert!(a.logs().contains("\"event\":\"config_reload\""));

    // An invalid config: every error logged with its key path, the running one stays.
    let broken = text.replace("path = \"/admin\"", "path_regex = \"(unclosed\"");
    std::fs::write(a.config_path(), &broken).unwrap();
    a.signal("HUP");
    assert!(
        a.wait_for_log("access.rules[0].path_regex"),
        "the bad key is named:\n{}",
        a.logs()
    );
    assert_eq!(status(&a, "/admin", &with_cookie).await, 403);
    assert_eq!(status(&a, "/_idgate/saml/beta/metadata", &[]).await, 200);
    let m = get(&a.admin_url("/metrics"), &[]).await.text();
    assert_eq!(
        metric(&m, "idgate_config_reloads_total{result=\"error\"}"),
        1
    );

    // A session of beta ends when beta goes away; acme's stays.
    provision(&d.dir, "beta", "u-b", "g-b").await;
    let new = d
        .sessions
        .create_session("beta", "u-b", "g-b")
        .await
        .unwrap();
    let beta_cookie = cookie_for(&d.sessions, &new);
    let beta_headers = [("cookie", beta_cookie.as_str()), ("host", "beta.test")];
    assert_eq!(status(&a, "/data", &beta_headers).await, 200);
    std::fs::write(a.config_path(), &d.text).unwrap();
    a.signal("HUP");
    eventually(
        &a,
        "/_idgate/saml/beta/metadata",
        &[],
        404,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(status(&a, "/data", &beta_headers).await, 401);
    assert_eq!(status(&a, "/admin", &with_cookie).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_config_applies_a_changed_file_without_a_signal() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let d = deployment(up.addr, &redis.url(), "watch_config = true", "");
    let a = Idgate::start(&d.text);
    a.wait_ready().await;
    assert_eq!(status(&a, "/_idgate/saml/beta/metadata", &[]).await, 404);
    std::fs::write(a.config_path(), format!("{}{}", d.text, beta())).unwrap();
    // Checked every 5 s: applied within one period plus the 2 s of a reload.
    eventually(
        &a,
        "/_idgate/saml/beta/metadata",
        &[],
        200,
        Duration::from_secs(8),
    )
    .await;
    assert!(
        a.logs().contains("\"trigger\":\"watch_config\""),
        "{}",
        a.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_rotates_the_identity_signing_key_and_audience() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let d = deployment(up.addr, &redis.url(), "", "");
    let a = Idgate::start(&d.text);
    a.wait_ready().await;
    let cookie = d.login("u-1", "g-1").await;
    let claims = |echo: &serde_json::Value| {
        use base64::Engine;
        let jwt = received(echo, "x-idgate-assertion").pop().expect("a JWT");
        let part = |i: usize| {
            serde_json::from_slice::<serde_json::Value>(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(jwt.split('.').nth(i).unwrap())
                    .unwrap(),
            )
            .unwrap()
        };
        (part(0)["kid"].clone(), part(1)["aud"].clone())
    };
    let echo = get(&a.url("/data"), &[("cookie", cookie.as_str())])
        .await
        .json();
    let (old_kid, aud) = claims(&echo);
    assert_eq!(aud, "legacy-app");

    // A new key, the old one kept for verification, and a new audience; a header name
    // change needs a restart and is ignored.
    let keys = tempfile::tempdir().unwrap();
    let new_key = signing_key_file(keys.path(), "ES256");
    let old_key_line = d
        .text
        .lines()
        .find(|l| l.starts_with("signing_key = "))
        .unwrap()
        .to_owned();
    let old_ref = old_key_line.trim_start_matches("signing_key = ").to_owned();
    let text = d.text.replace(
        &old_key_line,
        &format!(
            "signing_key = \"file:{}\"\nprevious_keys = [{old_ref}]\naudience = \"app-2\"\n[identity.headers]\nuser_id = \"X-Who\"",
            new_key.display()
        ),
    );
    std::fs::write(a.config_path(), &text).unwrap();
    a.signal("HUP");
    let start = Instant::now();
    let (kid, aud) = loop {
        let echo = get(&a.url("/data"), &[("cookie", cookie.as_str())])
            .await
            .json();
        let (kid, aud) = claims(&echo);
        if aud == "app-2" {
            assert!(
                received(&echo, "x-who").is_empty(),
                "header names are not reloaded"
            );
            break (kid, aud);
        }
        assert!(start.elapsed() < Duration::from_secs(2), "{}", a.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(aud, "app-2");
    assert_ne!(kid, old_kid, "signed with the new key");
    let jwks = get(&a.url("/_idgate/jwks.json"), &[]).await.json();
    let kids: Vec<&serde_json::Value> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["kid"])
        .collect();
    assert!(kids.contains(&&kid) && kids.contains(&&old_kid), "{jwks}");
    assert!(
        a.wait_for_log("\"key\":\"identity.headers\""),
        "{}",
        a.logs()
    );
}

/// Issue 17's opening: per-tenant session rules were read once at startup. A reload
/// (and the developer platform, through the same `apply`) now changes them.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_changes_how_a_tenants_names_are_composed() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let d = deployment(up.addr, &redis.url(), "", "");
    let a = Idgate::start(&d.text);
    a.wait_ready().await;
    let cookie = d.login("u-1", "g-1").await;
    let name = || async {
        let echo = get(&a.url("/data"), &[("cookie", cookie.as_str())])
            .await
            .json();
        received(&echo, "x-idgate-name").pop().unwrap_or_default()
    };
    assert_eq!(name().await, "Ada Lovelace");
    let text = d.text.replace(
        "[tenants.scim]\n",
        "[tenants.scim]\nname_order = \"family_given\"\n",
    );
    assert_ne!(text, d.text, "the deployment has a [tenants.scim] table");
    std::fs::write(a.config_path(), text).unwrap();
    a.signal("HUP");
    let start = Instant::now();
    while name().await != "Lovelace Ada" {
        assert!(start.elapsed() < Duration::from_secs(2), "{}", a.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
