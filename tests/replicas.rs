//! Several idgate processes on one Redis (standalone or Cluster) behave as one service:
//! sessions work on every replica, revocation reaches every replica within a second,
//! state survives restarts, and Redis outages follow `[store].fail_mode`.

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

/// The library side of a deployment: the same config as the replicas, used by the test
/// to provision users and create sessions as a login would.
struct Control {
    idp: saml_support::TestIdp,
    dir: Directory,
    sessions: Arc<Sessions>,
    text: String,
    _keys: tempfile::TempDir,
}

fn deployment(upstream: std::net::SocketAddr, store_url: &str, extra: &str) -> Control {
    let keys = tempfile::tempdir().unwrap();
    let key = signing_key_file(keys.path(), "EdDSA");
    let idp = saml_support::TestIdp::new("replica-idp");
    let text = config(
        upstream,
        "",
        &format!(
            "[store]\nurl = \"{store_url}\"\n{extra}\n[identity]\nsigning_key = \"file:{}\"\n\
             [[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_entity_id = \"{IDP}\"\n\
             idp_sso_url = \"https://idp.example.com/sso\"\nidp_certificate = \"file:{}\"\n\
             allow_idp_initiated = true\n",
            key.display(),
            idp.cert.display()
        ),
    );
    let cfg = Config::from_toml(&text, std::path::Path::new("/")).expect("valid config");
    let store = Store::open(&cfg.store).expect("store");
    Control {
        idp,
        dir: Directory::new(store.clone()),
        sessions: Arc::new(Sessions::standalone(&cfg, store).expect("sessions")),
        text,
        _keys: keys,
    }
}

const IDP: &str = "https://idp.example.com/metadata";
const ACS: &str = "http://127.0.0.1/_idgate/saml/acme/acs";
const SP: &str = "http://127.0.0.1/_idgate/saml/acme/metadata";

impl Control {
    /// Logs `user` of `group` in through `replica`'s ACS, with a response signed by the
    /// test IdP (xmlsec1), as a browser coming from the IdP would.
    async fn saml_login(&self, replica: &Idgate, user: &str, group: &str) -> String {
        let spec = saml_support::ResponseSpec::new(IDP, ACS, SP, None)
            .attr("uid", user)
            .attr("email", &format!("{user}@example.com"))
            .attr("group_uid", group);
        let xml = saml_support::signed_assertion_response(&spec, &self.idp);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("SAMLResponse", &saml_support::b64(&xml))
            .finish();
        let r = send(
            "POST",
            &replica.url("/_idgate/saml/acme/acs"),
            &[("content-type", "application/x-www-form-urlencoded")],
            body,
        )
        .await;
        assert_eq!(r.status, 303, "{}", r.text());
        r.cookie()
    }

    async fn login(&self, user: &str, group: &str) -> String {
        // Right after a Redis restart the first command on an old connection fails
        // while it reconnects, as it would for any client: retry briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let attempt = async {
                self.dir.ensure_group("acme", group, "Group").await.ok()?;
                provision(&self.dir, "acme", user, group).await;
                self.sessions.create_session("acme", user, group).await.ok()
            };
            if let Some(new) = attempt.await {
                return cookie_for(&self.sessions, &new);
            }
            assert!(Instant::now() < deadline, "cannot log in through the store");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn status(url: &str, cookie: &str) -> u16 {
    get(url, &[("cookie", cookie), ("accept", "application/json")])
        .await
        .status
        .as_u16()
}

/// Polls until `url` answers `want`, returning how long that took.
async fn until_status(url: &str, cookie: &str, want: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = status(url, cookie).await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{url} still answers {got}, not {want}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn revocation_reaches_the_other_replica(store_url: &str) {
    let up = TestUpstream::start().await;
    let ctl = deployment(up.addr, store_url, "");
    let a = Idgate::start(&ctl.text);
    let b = Idgate::start(&ctl.text);
    a.wait_ready().await;
    b.wait_ready().await;
    // The user logs in through replica A (SAML, just-in-time provisioning).
    let cookie = ctl.saml_login(&a, "u-1", "g-1").await;
    let bystander = ctl.saml_login(&b, "u-2", "g-1").await;

    // A session made through A works on every replica, and B now has it cached.
    assert_eq!(status(&a.url("/x"), &cookie).await, 200);
    for _ in 0..3 {
        assert_eq!(status(&b.url("/x"), &cookie).await, 200);
    }
    let echo = get(&b.url("/x"), &[("cookie", &cookie)]).await.json();
    assert_eq!(received(&echo, "x-idgate-user-id"), ["u-1"]);

    ctl.dir
        .deactivate_user(&idgate::audit::Origin::system(), "acme", "u-1")
        .await
        .unwrap();
    let took = until_status(&b.url("/x"), &cookie, 403, Duration::from_secs(1)).await;
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");
    let r = get(
        &a.url("/x"),
        &[("cookie", &cookie), ("accept", "application/json")],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "account_deactivated");
    assert_eq!(
        status(&b.url("/x"), &bystander).await,
        200,
        "others are unaffected"
    );

    // A cancelled company is blocked everywhere too.
    ctl.dir
        .cancel_group(&idgate::audit::Origin::system(), "acme", "g-1")
        .await
        .unwrap();
    until_status(&a.url("/x"), &bystander, 403, Duration::from_secs(1)).await;
    until_status(&b.url("/x"), &bystander, 403, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_share_sessions_and_revocation() {
    let redis = RedisServer::start();
    revocation_reaches_the_other_replica(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_redis_cluster_share_sessions_and_revocation() {
    let cluster = RedisCluster::start();
    revocation_reaches_the_other_replica(&cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart_of_every_replica() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let ctl = deployment(up.addr, &redis.url(), "");
    let cookie = ctl.login("u-3", "g-3").await;
    {
        let mut a = Idgate::start(&ctl.text);
        let mut b = Idgate::start(&ctl.text);
        a.wait_ready().await;
        b.wait_ready().await;
        assert_eq!(status(&a.url("/x"), &cookie).await, 200);
        assert_eq!(status(&b.url("/x"), &cookie).await, 200);
        for p in [&mut a, &mut b] {
            p.signal("TERM");
            let exit = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10)));
            assert!(exit.expect("exits").success());
        }
    }
    let a = Idgate::start(&ctl.text);
    let b = Idgate::start(&ctl.text);
    a.wait_ready().await;
    b.wait_ready().await;
    assert_eq!(status(&a.url("/x"), &cookie).await, 200);
    assert_eq!(status(&b.url("/x"), &cookie).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_with_503_while_redis_is_down_and_recovers() {
    let mut redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let ctl = deployment(up.addr, &redis.url(), "fail_mode = \"closed\"");
    let idgate = Idgate::start(&ctl.text);
    idgate.wait_ready().await;
    let cookie = ctl.login("u-4", "g-4").await;
    assert_eq!(status(&idgate.url("/x"), &cookie).await, 200);

    redis.stop();
    // Even the cached session is refused: with Redis gone, revocations cannot arrive.
    until_status(&idgate.url("/x"), &cookie, 503, Duration::from_secs(3)).await;
    assert_eq!(get(&idgate.admin_url("/readyz"), &[]).await.status, 503);
    let page = get(
        &idgate.url("/x"),
        &[("cookie", &cookie), ("accept", "text/html")],
    )
    .await;
    assert_eq!(page.status, 503);
    assert!(page.text().contains("temporarily unavailable"));
    // Public paths and health do not need the store.
    assert_eq!(get(&idgate.admin_url("/healthz"), &[]).await.status, 200);

    redis.restart();
    // The session is gone with Redis's memory (it keeps nothing on disk here), so
    // recovery shows as a login again working end to end.
    let took = until_status(
        &idgate.admin_url("/readyz"),
        "",
        200,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        took < Duration::from_secs(2),
        "readiness recovered in {took:?}"
    );
    let fresh = ctl.login("u-4", "g-4").await;
    until_status(&idgate.url("/x"), &fresh, 200, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_cached_keeps_serving_cached_sessions_only() {
    let mut redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let ctl = deployment(
        up.addr,
        &redis.url(),
        "fail_mode = \"cached\"\n[session]\ncache_ttl = \"30s\"",
    );
    let idgate = Idgate::start(&ctl.text);
    idgate.wait_ready().await;
    let cached = ctl.login("u-5", "g-5").await;
    let unseen = ctl.login("u-6", "g-5").await;
    assert_eq!(status(&idgate.url("/x"), &cached).await, 200);

    redis.stop();
    until_status(
        &idgate.admin_url("/readyz"),
        "",
        503,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(
        status(&idgate.url("/x"), &cached).await,
        200,
        "cached session still served"
    );
    assert_eq!(
        status(&idgate.url("/x"), &unseen).await,
        503,
        "nothing new without the store"
    );

    redis.restart();
    let took = until_status(
        &idgate.admin_url("/readyz"),
        "",
        200,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        took < Duration::from_secs(2),
        "readiness recovered in {took:?}"
    );
}

/// A session revoked by a deactivation keeps its 403 while Redis is down, under
/// `fail_mode = "cached"` as under "closed" (503): the reactivation rule (SPEC §10)
/// reads the user's status, and a status it cannot read is never taken for "active".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_keeps_its_403_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let ctl = deployment(
        up.addr,
        &redis.url(),
        "fail_mode = \"cached\"\n[session]\ncache_ttl = \"30s\"",
    );
    let idgate = Idgate::start(&ctl.text);
    idgate.wait_ready().await;
    let cookie = ctl.login("u-r", "g-r").await;
    assert_eq!(status(&idgate.url("/x"), &cookie).await, 200);
    ctl.dir
        .deactivate_user(&idgate::audit::Origin::system(), "acme", "u-r")
        .await
        .unwrap();
    until_status(&idgate.url("/x"), &cookie, 403, Duration::from_secs(1)).await;

    redis.stop();
    until_status(
        &idgate.admin_url("/readyz"),
        "",
        503,
        Duration::from_secs(3),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(status(&idgate.url("/x"), &cookie).await, 403);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.restart();
    until_status(
        &idgate.admin_url("/readyz"),
        "",
        200,
        Duration::from_secs(5),
    )
    .await;
    // Redis kept nothing on disk: the session and the user are gone with it, which
    // leaves no session to speak of.
    until_status(&idgate.url("/x"), &cookie, 401, Duration::from_secs(2)).await;
}
