//! Maestrano marketplaces end to end, on a real Redis: SSO under Maestrano's paths with
//! its legacy signatures (RSA-1024, SHA-1), the virtual user mode, the metadata endpoint
//! and the account webhooks, each behind the tenant's `api_id:api_key`.

mod support;

fn cookie_of(r: &Reply) -> String {
    r.cookie()
}

#[path = "support/saml.rs"]
mod saml_support;

use std::io::Read;

use base64::Engine;
use idgate::config::Config;
use idgate::store::SessionStore;
use saml_support::*;
use serde_json::json;
use support::*;

const MNO_IDP: &str = "https://maestrano.example.com";
const CONSUME: &str = "http://127.0.0.1/maestrano/auth/saml/consume/mno";
const CONSUME_VIRT: &str = "http://127.0.0.1/maestrano/auth/saml/consume/virt";

struct Market {
    base: String,
    app: Option<idgate::Running>,
    dir: idgate::directory::Directory,
    idp: TestIdp,
    text: String,
    _up: Option<TestUpstream>,
    _redis: RedisServer,
    _keys: tempfile::TempDir,
}

async fn market() -> Market {
    let up = TestUpstream::start().await;
    let addr = up.addr;
    market_with(addr, "", Some(up)).await
}

/// As [`market_with`], with `virt_extra` added to the second tenant's section too.
async fn market_with(
    upstream: std::net::SocketAddr,
    mno_extra: &str,
    up: Option<TestUpstream>,
) -> Market {
    market_with_both(upstream, mno_extra, "", up).await
}

/// A marketplace whose app is at `upstream`, with `mno_extra` added to the default
/// tenant's `[tenants.maestrano]` section (and `virt_extra` to the virtual one's).
async fn market_with_both(
    upstream: std::net::SocketAddr,
    mno_extra: &str,
    virt_extra: &str,
    up: Option<TestUpstream>,
) -> Market {
    let redis = RedisServer::start();
    let keys = tempfile::tempdir().unwrap();
    let idp = TestIdp::with_bits("maestrano-idp", 1024);
    let tenant = |id: &str, api_id: &str, key: &str, extra: &str| {
        format!(
            "[[tenants]]\nid = \"{id}\"\n{extra}\n[tenants.saml]\nidp_entity_id = \"{MNO_IDP}\"\n\
             idp_sso_url = \"{MNO_IDP}/api/v1/auth/saml\"\nidp_certificate = \"file:{}\"\n\
             allow_sha1 = true\n[tenants.maestrano]\napi_id = \"{api_id}\"\napi_key = \"{key}\"\n",
            idp.cert.display()
        )
    };
    let text = config(
        upstream,
        "",
        &format!(
            "[store]\nurl = \"{}\"\n[identity]\nsigning_key = \"file:{}\"\n{}{mno_extra}\n{}user_mode = \"virtual\"\n{virt_extra}\n",
            redis.url(),
            signing_key_file(keys.path(), "EdDSA").display(),
            tenant("mno", "app-123", "key-123", "default = true"),
            tenant("virt", "app-456", "key-456", ""),
        ),
    );
    let cfg = Config::from_toml(&text, std::path::Path::new("/")).unwrap();
    let app = idgate::App::new(cfg).expect("app");
    let dir = app.directory().clone();
    let app = app.start().await.unwrap();
    Market {
        base: format!("http://{}", app.public_addr()),
        app: Some(app),
        dir,
        idp,
        text,
        _up: up,
        _redis: redis,
        _keys: keys,
    }
}

fn basic(id: &str, key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{key}"))
    )
}

impl Market {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Serves through a separate idgate process instead (same config and store), one
    /// that a test can stop and restart.
    async fn switch_to_process(&mut self) -> Idgate {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
        let p = Idgate::start(&self.text);
        p.wait_ready().await;
        self.base = p.url("");
        p
    }

    /// Starts a login at Maestrano's init path; returns (request id, login cookie, the
    /// decoded AuthnRequest).
    async fn init(&self, path: &str) -> (String, String, String) {
        let r = get(&self.url(path), &[]).await;
        assert_eq!(r.status, 302, "{}", r.text());
        let location = url::Url::parse(r.headers["location"].to_str().unwrap()).unwrap();
        assert!(
            location
                .as_str()
                .starts_with(&format!("{MNO_IDP}/api/v1/auth/saml?"))
        );
        let q: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
        let deflated = base64::engine::general_purpose::STANDARD
            .decode(&q["SAMLRequest"])
            .unwrap();
        let mut xml = String::new();
        flate2::read::DeflateDecoder::new(&deflated[..])
            .read_to_string(&mut xml)
            .unwrap();
        (q["RelayState"].clone(), r.cookie(), xml)
    }

    /// A full SP-initiated login through Maestrano's paths, signed as Maestrano signs.
    async fn login(&self, tenant: &str, spec: ResponseSpec) -> Reply {
        let suffix = if tenant == "mno" {
            String::new()
        } else {
            format!("/{tenant}")
        };
        let (id, cookie, _) = self
            .init(&format!("/maestrano/auth/saml/init{suffix}"))
            .await;
        let mut spec = spec;
        spec.in_response_to = Some(id.clone());
        let xml = sha1_signed_assertion_response(&spec, &self.idp);
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("SAMLResponse", &b64(&xml))
            .append_pair("RelayState", &id)
            .finish();
        send(
            "POST",
            &self.url(&format!("/maestrano/auth/saml/consume{suffix}")),
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("cookie", &cookie),
            ],
            form,
        )
        .await
    }

    async fn app_status(&self, cookie: &str) -> (u16, serde_json::Value) {
        let r = get(
            &self.url("/app"),
            &[("cookie", cookie), ("accept", "application/json")],
        )
        .await;
        (r.status.as_u16(), r.json())
    }

    async fn webhook(&self, path: &str, auth: &str) -> Reply {
        send("DELETE", &self.url(path), &[("authorization", auth)], "").await
    }
}

fn spec(consume: &str, audience: &str, uid: &str, group: &str) -> ResponseSpec {
    let mut s = ResponseSpec::new(MNO_IDP, consume, audience, None)
        .attr("uid", uid)
        .attr("virtual_uid", &format!("{uid}.{group}"))
        .attr("email", &format!("{uid}@example.com"))
        .attr("virtual_email", &format!("{uid}.{group}@maestrano.example"))
        .attr("group_uid", group)
        .attr("group_name", &format!("Company {group}"))
        .attr("group_role", "Admin")
        .attr("mno_session", &format!("sess-{uid}"))
        .attr("mno_session_recheck", "2030-01-01T00:00:00Z");
    s.name_id = uid.into();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_is_served_behind_basic_auth_without_secrets() {
    let m = market().await;
    let r = get(
        &m.url("/maestrano/metadata"),
        &[("authorization", &basic("app-123", "key-123"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let md = r.json();
    assert_eq!(md["api"]["id"], "app-123");
    assert_eq!(md["app"]["host"], "http://127.0.0.1");
    assert_eq!(md["sso"]["enabled"], true);
    assert_eq!(md["sso"]["init_path"], "/maestrano/auth/saml/init/mno");
    assert_eq!(
        md["sso"]["consume_path"],
        "/maestrano/auth/saml/consume/mno"
    );
    assert_eq!(md["sso"]["idp"], format!("{MNO_IDP}/api/v1/auth/saml"));
    assert_eq!(
        md["sso"]["name_id_format"],
        "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
    );
    let fp = md["sso"]["x509_fingerprint"].as_str().unwrap();
    assert_eq!(fp.len(), 59, "SHA-1 in colon hex: {fp}");
    assert!(
        md["sso"]["x509_certificate"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert_eq!(
        md["webhook"]["account"]["groups_path"],
        "/maestrano/account/groups/:id/mno"
    );
    assert_eq!(
        md["webhook"]["account"]["group_users_path"],
        "/maestrano/account/groups/:group_id/users/:id/mno"
    );
    assert_eq!(
        md["webhook"]["connec"]["notifications_path"],
        "/maestrano/connec/notifications/mno"
    );
    assert!(!r.text().contains("key-123"), "the api key is never served");

    let virt = get(
        &m.url("/maestrano/metadata/virt"),
        &[("authorization", &basic("app-456", "key-456"))],
    )
    .await;
    assert_eq!(virt.json()["sso"]["creation_mode"], "virtual");
    // Wrong, missing, or another tenant's credentials.
    for auth in [
        basic("app-123", "nope"),
        basic("app-123", "key-456"),
        "Bearer key-123".into(),
    ] {
        let r = get(&m.url("/maestrano/metadata"), &[("authorization", &auth)]).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.json(), json!({"error": "Invalid credentials"}));
    }
    let r = get(
        &m.url("/maestrano/metadata/virt"),
        &[("authorization", &basic("app-123", "key-123"))],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(get(&m.url("/maestrano/metadata"), &[]).await.status, 401);
    assert_eq!(
        get(&m.url("/maestrano/metadata/nobody"), &[]).await.status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_through_maestrano_paths_provisions_and_keeps_the_maestrano_session() {
    let m = market().await;
    let (_, _, authn) = m.init("/maestrano/auth/saml/init").await;
    assert!(
        authn.contains(">app-123</"),
        "Issuer is the api_id: {authn}"
    );
    assert!(
        authn.contains("urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"),
        "{authn}"
    );
    assert!(authn.contains(CONSUME), "{authn}");

    let r = m
        .login("mno", spec(CONSUME, "app-123", "usr-1", "cld-1"))
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let cookie = cookie_of(&r);
    let (status, echo) = m.app_status(&cookie).await;
    assert_eq!(status, 200);
    assert_eq!(received(&echo, "x-idgate-user-id"), ["usr-1"]);
    assert_eq!(received(&echo, "x-idgate-group-id"), ["cld-1"]);
    assert_eq!(received(&echo, "x-idgate-role"), ["Admin"]);
    let company = m
        .dir
        .group("mno", "cld-1")
        .await
        .unwrap()
        .expect("company created");
    assert_eq!(company.name, "Company cld-1");
    // The Maestrano session travels with idgate's.
    let value = cookie.split_once('=').unwrap().1;
    let stored = m
        .dir
        .store()
        .get_session(&idgate::session::store_key(value))
        .await
        .unwrap()
        .unwrap();
    let mno = stored.record.mno.expect("mno_session kept");
    assert_eq!(mno.session, "sess-usr-1");
    assert_eq!(mno.recheck, 1_893_456_000);

    // User migration: an unknown uid whose email an existing user holds is linked.
    let mut legacy = idgate::directory::model::User::new("legacy-7", idgate::directory::now());
    legacy.email = Some("usr-9@example.com".into());
    m.dir.create_user("mno", &legacy).await.unwrap();
    let r = m
        .login("mno", spec(CONSUME, "app-123", "usr-9", "cld-1"))
        .await;
    let (_, echo) = m.app_status(&cookie_of(&r)).await;
    assert_eq!(received(&echo, "x-idgate-user-id"), ["legacy-7"]);
    // A later login logs the same user in.
    let r = m
        .login("mno", spec(CONSUME, "app-123", "usr-1", "cld-1"))
        .await;
    let (_, echo) = m.app_status(&cookie_of(&r)).await;
    assert_eq!(received(&echo, "x-idgate-user-id"), ["usr-1"]);

    // A response signed by another key is refused.
    let stranger = TestIdp::with_bits("stranger", 1024);
    let (id, login_cookie, _) = m.init("/maestrano/auth/saml/init").await;
    let mut forged = spec(CONSUME, "app-123", "usr-1", "cld-1");
    forged.in_response_to = Some(id.clone());
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair(
            "SAMLResponse",
            &b64(&sha1_signed_assertion_response(&forged, &stranger)),
        )
        .append_pair("RelayState", &id)
        .finish();
    let r = send(
        "POST",
        &m.url("/maestrano/auth/saml/consume"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("cookie", &login_cookie),
        ],
        form,
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.headers.get("set-cookie").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_mode_makes_one_user_per_company() {
    let m = market().await;
    let a = m
        .login("virt", spec(CONSUME_VIRT, "app-456", "usr-1", "cld-A"))
        .await;
    assert_eq!(a.status, 303, "{}", a.text());
    let b = m
        .login("virt", spec(CONSUME_VIRT, "app-456", "usr-1", "cld-B"))
        .await;
    assert_eq!(b.status, 303, "{}", b.text());
    let (_, echo_a) = m.app_status(&cookie_of(&a)).await;
    let (_, echo_b) = m.app_status(&cookie_of(&b)).await;
    assert_eq!(received(&echo_a, "x-idgate-user-id"), ["usr-1.cld-A"]);
    assert_eq!(received(&echo_b, "x-idgate-user-id"), ["usr-1.cld-B"]);
    assert_eq!(
        received(&echo_b, "x-idgate-email"),
        ["usr-1.cld-B@maestrano.example"]
    );

    // The webhook names the real uid; the virtual user of that company is the one removed.
    let auth = basic("app-456", "key-456");
    let r = m
        .webhook("/maestrano/account/groups/cld-A/users/usr-1/virt", &auth)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (status, body) = m.app_status(&cookie_of(&a)).await;
    assert_eq!(
        (status, body["error"].clone()),
        (403, json!("removed_from_company"))
    );
    assert!(
        !m.dir
            .user("virt", "usr-1.cld-A")
            .await
            .unwrap()
            .unwrap()
            .active
    );
    assert_eq!(
        m.app_status(&cookie_of(&b)).await.0,
        200,
        "the other company's user is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_webhooks_cancel_companies_and_remove_users_idempotently() {
    let m = market().await;
    let auth = basic("app-123", "key-123");
    let ann_1 = cookie_of(
        &m.login("mno", spec(CONSUME, "app-123", "ann", "cld-1"))
            .await,
    );
    let bob_1 = cookie_of(
        &m.login("mno", spec(CONSUME, "app-123", "bob", "cld-1"))
            .await,
    );
    let bob_2 = cookie_of(
        &m.login("mno", spec(CONSUME, "app-123", "bob", "cld-2"))
            .await,
    );
    for c in [&ann_1, &bob_1, &bob_2] {
        assert_eq!(m.app_status(c).await.0, 200);
    }

    // Bad credentials change nothing.
    let r = m
        .webhook(
            "/maestrano/account/groups/cld-1",
            &basic("app-123", "wrong"),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), json!({"error": "Invalid credentials"}));
    assert_eq!(m.app_status(&ann_1).await.0, 200);

    // Bob leaves company 2: his session there ends; he stays active (company 1).
    let r = m
        .webhook("/maestrano/account/groups/cld-2/users/bob", &auth)
        .await;
    assert_eq!(
        (r.status.as_u16(), r.json()),
        (200, json!({"success": true}))
    );
    let (status, body) = m.app_status(&bob_2).await;
    assert_eq!(
        (status, body["error"].clone()),
        (403, json!("removed_from_company"))
    );
    assert_eq!(m.app_status(&bob_1).await.0, 200);
    assert!(m.dir.user("mno", "bob").await.unwrap().unwrap().active);

    // Company 1 cancels: every member is blocked at once, with the reason.
    let r = m
        .webhook("/maestrano/account/groups/cld-1/mno", &auth)
        .await;
    assert_eq!(
        (r.status.as_u16(), r.json()),
        (200, json!({"success": true}))
    );
    for c in [&ann_1, &bob_1] {
        let (status, body) = m.app_status(c).await;
        assert_eq!(
            (status, body["error"].clone()),
            (403, json!("company_cancelled"))
        );
    }
    // Logging in again is refused while it stays cancelled.
    let r = m
        .login("mno", spec(CONSUME, "app-123", "ann", "cld-1"))
        .await;
    assert_eq!(r.status, 403);

    // Repeats and unknown ids are fine.
    for path in [
        "/maestrano/account/groups/cld-1",
        "/maestrano/account/groups/cld-404",
        "/maestrano/account/groups/cld-2/users/bob",
        "/maestrano/account/groups/cld-1/users/nobody/mno",
    ] {
        let r = m.webhook(path, &auth).await;
        assert_eq!(
            (r.status.as_u16(), r.json()),
            (200, json!({"success": true})),
            "{path}"
        );
    }
    // Only DELETE means anything there.
    let r = send(
        "POST",
        &m.url("/maestrano/account/groups/cld-1"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(r.status, 405);
}

/// Polls `check` every 50 ms until it holds, for at most `limit`.
async fn eventually(what: &str, limit: std::time::Duration, check: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn bill_calls(api: &Recorder) -> (Vec<Recorded>, Vec<String>) {
    let calls = api.calls();
    let created: Vec<Recorded> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path == "/api/v1/account/recurring_bills")
        .cloned()
        .collect();
    let cancelled = calls
        .iter()
        .filter(|c| c.method == "DELETE")
        .map(|c| c.path.rsplit('/').next().unwrap().to_owned())
        .collect();
    (created, cancelled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_follows_the_company_and_survives_a_restart_mid_retry() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let failing = Arc::new(AtomicBool::new(true));
    let made = Arc::new(AtomicUsize::new(0));
    let (f, n) = (failing.clone(), made.clone());
    let api = Recorder::start(move |r| {
        let json = vec![("content-type".to_owned(), "application/json".to_owned())];
        match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/api/v1/account/recurring_bills") if f.load(Ordering::SeqCst) => {
                (503, json, "{\"error\":\"down\"}".into())
            }
            ("POST", "/api/v1/account/recurring_bills") => {
                let i = n.fetch_add(1, Ordering::SeqCst) + 1;
                (
                    200,
                    json,
                    format!("{{\"success\":true,\"data\":{{\"id\":\"rbill-{i}\"}}}}"),
                )
            }
            ("DELETE", _) => (200, json, "{\"success\":true}".into()),
            _ => (404, json, "{}".into()),
        }
    })
    .await;
    let up = TestUpstream::start().await;
    let extra = format!(
        "api_host = \"{}\"\n[tenants.maestrano.billing]\nmode = \"per_user\"\nprice_cents = 1500\n\
         currency = \"AUD\"\nperiod = \"Month\"\ndescription = \"Seat\"\n",
        api.url()
    );
    let mut m = market_with(up.addr, &extra, Some(up)).await;
    let mut a = m.switch_to_process().await;

    // A new company: its bill is attempted, and Maestrano is down.
    let r = m
        .login("mno", spec(CONSUME, "app-123", "ann", "cld-1"))
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    eventually(
        "retries against a failing Maestrano",
        std::time::Duration::from_secs(10),
        || bill_calls(&api).0.len() >= 2,
    )
    .await;
    // idgate dies in the middle of those retries (no chance to hand anything over);
    // Maestrano comes back.
    a.signal("KILL");
    assert!(
        tokio::task::block_in_place(|| a.wait_exit(std::time::Duration::from_secs(10))).is_some()
    );
    let attempts_before = bill_calls(&api).0.len();
    failing.store(false, Ordering::SeqCst);
    let _b = m.switch_to_process().await;
    eventually(
        "the restarted idgate takes the pending bill over",
        idgate::jobs::STALE_AFTER + std::time::Duration::from_secs(15),
        || made.load(Ordering::SeqCst) >= 1,
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let (created, _) = bill_calls(&api);
    assert_eq!(made.load(Ordering::SeqCst), 1, "no duplicate bill");
    let ok = &created[attempts_before..];
    assert_eq!(ok.len(), 1, "one create after the restart");
    let form = ok[0].form();
    assert_eq!(form["group_id"], "cld-1");
    assert_eq!(form["units"], "1");
    assert_eq!(form["price_cents"], "1500");
    assert_eq!(form["currency"], "AUD");
    assert_eq!(form["period"], "Month");
    assert_eq!(
        ok[0].headers["authorization"],
        basic("app-123", "key-123").as_str()
    );

    // Per user: a second member replaces the bill; the first is cancelled after.
    let r = m
        .login("mno", spec(CONSUME, "app-123", "bob", "cld-1"))
        .await;
    assert_eq!(r.status, 303);
    eventually(
        "the bill follows the user count",
        std::time::Duration::from_secs(10),
        || bill_calls(&api).1.contains(&"rbill-1".to_owned()),
    )
    .await;
    let (created, _) = bill_calls(&api);
    assert_eq!(created.last().unwrap().form()["units"], "2");
    assert_eq!(created.last().unwrap().form()["price_cents"], "3000");
    // A repeat login of a member changes nothing.
    m.login("mno", spec(CONSUME, "app-123", "bob", "cld-1"))
        .await;
    // Bob leaves: back to one seat.
    let auth = basic("app-123", "key-123");
    assert_eq!(
        m.webhook("/maestrano/account/groups/cld-1/users/bob", &auth)
            .await
            .status,
        200
    );
    eventually(
        "the bill shrinks",
        std::time::Duration::from_secs(10),
        || bill_calls(&api).1.contains(&"rbill-2".to_owned()),
    )
    .await;
    assert_eq!(made.load(Ordering::SeqCst), 3);
    // The company cancels: its bill is cancelled, and no new one is made.
    assert_eq!(
        m.webhook("/maestrano/account/groups/cld-1", &auth)
            .await
            .status,
        200
    );
    eventually(
        "the bill is cancelled",
        std::time::Duration::from_secs(10),
        || bill_calls(&api).1.contains(&"rbill-3".to_owned()),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(made.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connec_notifications_reach_the_app_once_each_even_while_it_is_down() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // The app is down at first: nothing listens on its port.
    let app_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let m = market_with(app_addr, "", None).await;
    let auth = basic("app-123", "key-123");
    let notify = |body: serde_json::Value, auth: String| {
        let url = m.url("/maestrano/connec/notifications");
        async move {
            send(
                "POST",
                &url,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body.to_string(),
            )
            .await
        }
    };
    let body = json!({
        "organizations": [{"id": "org-1", "group_id": "cld-1", "name": "Acme"}],
        "people": [
            {"id": "per-1", "group_id": "cld-1", "first_name": "Ann"},
            {"id": "per-2", "group_id": "cld-2", "first_name": "Bob"},
        ],
    });
    let r = notify(body.clone(), basic("app-123", "bad")).await;
    assert_eq!(
        (r.status.as_u16(), r.json()),
        (401, json!({"error": "Invalid credentials"}))
    );
    let r = notify(json!({"people": [{"id": "x"}]}), auth.clone()).await;
    assert_eq!(
        r.status, 400,
        "an entity without group_id refuses the notification"
    );
    let r = notify(body, auth.clone()).await;
    assert_eq!(
        (r.status.as_u16(), r.json()),
        (200, json!({"success": true}))
    );

    // Down for a while (connections refused), then up but failing twice, then well.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let app = Recorder::start_on(app_addr, move |r| {
        if s.fetch_add(1, Ordering::SeqCst) < 2 {
            return (503, vec![], "busy".into());
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let id = v["id"].as_str().unwrap_or("?");
        (
            201,
            vec![("content-type".into(), "application/json".into())],
            json!({"id": format!("local-{id}")}).to_string(),
        )
    })
    .await;
    let delivered = |app: &Recorder| -> Vec<Recorded> { app.calls().into_iter().skip(2).collect() };
    eventually(
        "every entity reaches the app",
        std::time::Duration::from_secs(40),
        || delivered(&app).len() >= 3,
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let got = delivered(&app);
    let mut ids: Vec<String> = got
        .iter()
        .map(|c| {
            serde_json::from_slice::<serde_json::Value>(&c.body).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["org-1", "per-1", "per-2"],
        "each entity accepted exactly once"
    );
    for c in &got {
        assert_eq!(c.path, "/connec/notifications");
        assert_eq!(c.headers["x-idgate-tenant"], "mno");
        let entity = c.headers["x-idgate-connec-entity"].to_str().unwrap();
        assert!(entity == "organizations" || entity == "people");
        let group = c.headers["x-idgate-group-id"].to_str().unwrap();
        let jwt = c.headers["x-idgate-assertion"].to_str().unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwt.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["tenant"], "mno");
        assert_eq!(claims["group_id"], group);
        assert!(
            claims.get("sub").is_none(),
            "signed for the company, with no user"
        );
        assert!(
            c.headers.get("x-idgate-local-id").is_none(),
            "no local id known yet"
        );
    }
    // The app's ids are remembered and sent with later notifications of the entity.
    let r = notify(
        json!({"organizations": [{"id": "org-1", "group_id": "cld-1", "name": "Acme Ltd"}]}),
        auth,
    )
    .await;
    assert_eq!(r.status, 200);
    eventually(
        "the update arrives",
        std::time::Duration::from_secs(10),
        || delivered(&app).len() >= 4,
    )
    .await;
    let last = delivered(&app).pop().unwrap();
    assert_eq!(last.headers["x-idgate-local-id"], "local-org-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_rechecked_with_maestrano_in_the_background() {
    use std::sync::atomic::Ordering;
    let api = Recorder::start(|r| {
        let json = vec![("content-type".to_owned(), "application/json".to_owned())];
        let session = r.form_query("session");
        match session.as_deref() {
            Some(s) if s.starts_with("valid") => (
                200,
                json,
                json!({"valid": "true", "recheck": "2031-01-01T00:00:00Z"}).to_string(),
            ),
            Some(s) if s.starts_with("invalid") => (200, json, json!({"valid": false}).to_string()),
            _ => (503, json, "{}".into()),
        }
    })
    .await;
    let extra = format!("api_host = \"{}\"\nsession_recheck = true\n", api.url());
    let virt = format!("{extra}recheck_fail_mode = \"logout\"\n");
    let up = TestUpstream::start().await;
    let m = market_with_both(up.addr, &extra, &virt, Some(up)).await;
    let due = |uid: &str, group: &str, session: &str, consume: &str, audience: &str| {
        spec(consume, audience, uid, group)
            .attr("mno_session", session)
            .attr("mno_session_recheck", "2001-01-01T00:00:00Z")
    };
    let calls_for = |session: &str| {
        api.calls()
            .iter()
            .filter(|c| c.form_query("session").as_deref() == Some(session))
            .count()
    };

    // Valid: asked once, in the background; the next re-check time is Maestrano's.
    let ann = cookie_of(
        &m.login("mno", due("ann", "cld-1", "valid-ann", CONSUME, "app-123"))
            .await,
    );
    assert_eq!(m.app_status(&ann).await.0, 200);
    eventually(
        "the re-check is made",
        std::time::Duration::from_secs(10),
        || calls_for("valid-ann") == 1,
    )
    .await;
    let call = api
        .calls()
        .into_iter()
        .find(|c| c.form_query("session").as_deref() == Some("valid-ann"))
        .unwrap();
    assert_eq!(call.path, "/api/v1/auth/saml/ann");
    assert_eq!(
        call.headers["authorization"],
        basic("app-123", "key-123").as_str()
    );
    let key = idgate::session::store_key(ann.split_once('=').unwrap().1);
    let mut stored_at = 0;
    for _ in 0..100 {
        stored_at = m
            .dir
            .store()
            .get_session(&key)
            .await
            .unwrap()
            .unwrap()
            .record
            .mno
            .unwrap()
            .recheck;
        if stored_at != 978_307_200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(stored_at, 1_924_992_000, "kept for every replica");
    for _ in 0..5 {
        assert_eq!(m.app_status(&ann).await.0, 200);
    }
    assert_eq!(
        calls_for("valid-ann"),
        1,
        "not asked again before the new time"
    );

    // Invalid: the request that found the re-check due was not held up by it (it got
    // through, although the answer is "invalid"); then the session is over.
    let bob = cookie_of(
        &m.login(
            "mno",
            due("bob", "cld-1", "invalid-bob", CONSUME, "app-123"),
        )
        .await,
    );
    assert_eq!(m.app_status(&bob).await.0, 200);
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for _ in 0..200 {
        let (status, body) = m.app_status(&bob).await;
        if status == 401 {
            assert_eq!(body["error"], "unauthenticated");
            ended.store(true, Ordering::SeqCst);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        ended.load(Ordering::SeqCst),
        "an invalid Maestrano session ends idgate's"
    );

    // Maestrano unreachable, recheck_fail_mode = keep: the session goes on, and the
    // re-check is retried later rather than on every request.
    let carl = cookie_of(
        &m.login("mno", due("carl", "cld-1", "down-carl", CONSUME, "app-123"))
            .await,
    );
    assert_eq!(m.app_status(&carl).await.0, 200);
    eventually(
        "the re-check is tried",
        std::time::Duration::from_secs(10),
        || calls_for("down-carl") == 1,
    )
    .await;
    for _ in 0..5 {
        assert_eq!(m.app_status(&carl).await.0, 200);
    }
    assert_eq!(calls_for("down-carl"), 1, "backing off");

    // Unreachable with recheck_fail_mode = logout: the session ends.
    let dave = cookie_of(
        &m.login(
            "virt",
            due("dave", "cld-D", "down-dave", CONSUME_VIRT, "app-456"),
        )
        .await,
    );
    assert_eq!(m.app_status(&dave).await.0, 200);
    let mut gone = false;
    for _ in 0..200 {
        if m.app_status(&dave).await.0 == 401 {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        gone,
        "logout mode ends the session when Maestrano cannot be asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn developer_platform_marketplaces_become_tenants_and_a_failed_refresh_keeps_them() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let idp = TestIdp::with_bits("devpl-idp", 1024);
    let cert = std::fs::read_to_string(&idp.cert).unwrap();
    let market = |name: &str, api_id: &str, hooks_key: &str| {
        json!({
            "marketplace": name,
            "api": {"id": api_id, "key": format!("key-{api_id}"), "host": "https://api-hub.example"},
            "sso": {"idm": "http://127.0.0.1", "init_path": "/maestrano/auth/saml/init", "consume_path": "/maestrano/auth/saml/consume",
                    "idp": format!("https://idp.{name}.example"), "x509_fingerprint": "AA", "x509_certificate": cert},
            "connec": {"host": "https://connec.example"},
            hooks_key: {"account": {"group_path": "/mno/groups/:id", "group_user_path": "/mno/groups/:group_id/users/:id"},
                        "connec": {"notification_path": "/mno/connec"}},
        })
    };
    let listed = Arc::new(Mutex::new(
        json!({"marketplaces": [market("maestrano", "app-a", "webhooks")]}),
    ));
    let down = Arc::new(AtomicBool::new(false));
    let (l, d) = (listed.clone(), down.clone());
    let devpl = Recorder::start(move |r| {
        let ok_auth = r.headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(basic("env-key", "env-secret").as_str());
        if !ok_auth || r.path != "/api/config/v1/marketplaces" {
            return (401, vec![], "{}".into());
        }
        if d.load(Ordering::SeqCst) {
            return (500, vec![], "oops".into());
        }
        (
            200,
            vec![("content-type".into(), "application/json".into())],
            l.lock().unwrap().to_string(),
        )
    })
    .await;
    let up = TestUpstream::start().await;
    let text = config(
        up.addr,
        "",
        &format!(
            "[maestrano_devpl]\nhost = \"{}\"\nenv_key = \"env-key\"\nenv_secret = \"env-secret\"\nrefresh = \"1s\"\n",
            devpl.url()
        ),
    );
    let app = idgate::App::new(Config::from_toml(&text, std::path::Path::new("/")).unwrap())
        .unwrap()
        .start()
        .await
        .unwrap();
    let url = |p: &str| format!("http://{}{p}", app.public_addr());
    let metadata = |tenant: &str, api_id: &str| {
        let (u, auth) = (
            url(&format!("/maestrano/metadata/{tenant}")),
            basic(api_id, &format!("key-{api_id}")),
        );
        async move { get(&u, &[("authorization", &auth)]).await }
    };
    let mut ok = false;
    for _ in 0..100 {
        if metadata("maestrano", "app-a").await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "the marketplace became a tenant");
    let md = metadata("maestrano", "app-a").await.json();
    assert_eq!(
        md["sso"]["idp"],
        "https://idp.maestrano.example/api/v1/auth/saml"
    );
    assert_eq!(
        md["sso"]["init_path"],
        "/maestrano/auth/saml/init/maestrano"
    );

    // Its SSO works end to end, with the marketplace's IdP certificate.
    let r = get(&url("/maestrano/auth/saml/init/maestrano"), &[]).await;
    assert_eq!(r.status, 302);
    let location = url::Url::parse(r.headers["location"].to_str().unwrap()).unwrap();
    assert_eq!(location.host_str(), Some("idp.maestrano.example"));
    let q: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
    let login_cookie = r.cookie();
    let consume = "http://127.0.0.1/maestrano/auth/saml/consume/maestrano";
    let mut s = ResponseSpec::new(
        "https://idp.maestrano.example",
        consume,
        "app-a",
        Some(&q["RelayState"]),
    )
    .attr("uid", "usr-d")
    .attr("group_uid", "cld-d");
    s.name_id = "usr-d".into();
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair(
            "SAMLResponse",
            &b64(&sha1_signed_assertion_response(&s, &idp)),
        )
        .append_pair("RelayState", &q["RelayState"])
        .finish();
    let r = send(
        "POST",
        &url("/maestrano/auth/saml/consume/maestrano"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("cookie", &login_cookie),
        ],
        form,
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());

    // A new marketplace (spelled `webhook`) comes in with the next refresh, and one that
    // is not a valid tenant is left out without keeping the others out.
    let mut broken = market("broken", "app-x", "webhooks");
    broken["sso"]["x509_certificate"] = json!("not a certificate");
    *listed.lock().unwrap() = json!({"marketplaces": [
        market("maestrano", "app-a", "webhooks"), market("uat", "app-b", "webhook"), broken,
    ]});
    let mut ok = false;
    for _ in 0..100 {
        if metadata("uat", "app-b").await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "the new marketplace became a tenant");
    assert_eq!(metadata("broken", "app-x").await.status, 404);

    // The platform fails: the last good set stays.
    down.store(true, Ordering::SeqCst);
    let before = devpl.calls().len();
    for _ in 0..100 {
        if devpl.calls().len() >= before + 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(devpl.calls().len() >= before + 2, "refreshes went on");
    assert_eq!(metadata("maestrano", "app-a").await.status, 200);
    assert_eq!(metadata("uat", "app-b").await.status, 200);

    // A marketplace dropped from the platform takes its tenant and its sessions along.
    let session = r.cookie();
    let app_status = |cookie: String| {
        let u = url("/app");
        async move {
            get(&u, &[("cookie", &cookie), ("accept", "application/json")])
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(app_status(session.clone()).await, 200);
    *listed.lock().unwrap() = json!({"marketplaces": [market("uat", "app-b", "webhook")]});
    down.store(false, Ordering::SeqCst);
    let mut gone = false;
    for _ in 0..100 {
        if metadata("maestrano", "app-a").await.status == 404
            && app_status(session.clone()).await == 401
        {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "the removed marketplace's tenant and sessions are gone"
    );
    assert_eq!(metadata("uat", "app-b").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_webhook_on_one_replica_blocks_members_on_another_within_a_second() {
    let api = Recorder::start(|_| {
        (
            200,
            vec![],
            json!({"success": true, "data": {"id": "rbill-flat"}}).to_string(),
        )
    })
    .await;
    let up = TestUpstream::start().await;
    let extra = format!(
        "api_host = \"{}\"\n[tenants.maestrano.billing]\nmode = \"flat\"\nprice_cents = 9900\n",
        api.url()
    );
    let mut m = market_with(up.addr, &extra, Some(up)).await;
    let _a = m.switch_to_process().await;
    let b = Idgate::start(&m.text);
    b.wait_ready().await;
    let ann = cookie_of(
        &m.login("mno", spec(CONSUME, "app-123", "ann", "cld-9"))
            .await,
    );
    let bob = cookie_of(
        &m.login("mno", spec(CONSUME, "app-123", "bob", "cld-9"))
            .await,
    );
    let on_b = |cookie: String| {
        let u = b.url("/app");
        async move {
            get(&u, &[("cookie", &cookie), ("accept", "application/json")])
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(on_b(ann.clone()).await, 200);
    assert_eq!(on_b(bob.clone()).await, 200);
    // Flat billing: one bill for the company, however many members log in.
    eventually(
        "the company's bill",
        std::time::Duration::from_secs(10),
        || bill_calls(&api).0.len() == 1,
    )
    .await;
    assert_eq!(bill_calls(&api).0[0].form()["units"], "1");
    assert_eq!(bill_calls(&api).0[0].form()["price_cents"], "9900");

    let auth = basic("app-123", "key-123");
    let r = m.webhook("/maestrano/account/groups/cld-9", &auth).await;
    assert_eq!(r.status, 200);
    let start = std::time::Instant::now();
    for cookie in [ann, bob] {
        loop {
            if on_b(cookie.clone()).await == 403 {
                break;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(1),
                "replica B still lets members in"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    eventually(
        "the flat bill is cancelled",
        std::time::Duration::from_secs(10),
        || bill_calls(&api).1 == ["rbill-flat"],
    )
    .await;
    assert_eq!(bill_calls(&api).0.len(), 1, "no second bill");
}

/// SPEC §10 "Reactivation" through the Maestrano webhooks. Maestrano has no webhook
/// that brings a user or a company back; what brings a user back into a company is
/// their next SSO into it. A session revoked by the group-user webhook then counts as
/// ended (the login, not the 403) on every replica within a second. A company cancelled
/// by the webhook stays cancelled (its sessions keep the 403, logins are refused) until
/// the library reopens it; a user deactivated for having no company left stays refused
/// by SSO, and reactivating them does not lift the 403 of a company they left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_revoked_by_webhooks_end_once_the_user_is_back_on_every_replica() {
    let m = market().await;
    let b = Idgate::start(&m.text);
    b.wait_ready().await;
    let auth = basic("app-123", "key-123");
    let on_b = |cookie: &str, accept: &'static str| {
        let u = b.url("/app/home");
        let cookie = cookie.to_owned();
        async move { get(&u, &[("cookie", &cookie), ("accept", accept)]).await }
    };
    let json = "application/json";
    // Waits until replica B answers `cookie` with `status`; before that, only with 403.
    let until_b = |cookie: String, status: u16| {
        let on_b = &on_b;
        async move {
            let start = std::time::Instant::now();
            loop {
                let r = on_b(&cookie, json).await;
                if r.status == status {
                    return r;
                }
                assert_eq!(r.status, 403, "never let in meanwhile: {}", r.text());
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(1),
                    "replica B still answers {} {}",
                    r.status,
                    r.text()
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };
    let login = |uid: &'static str, group: &'static str| {
        let m = &m;
        async move { m.login("mno", spec(CONSUME, "app-123", uid, group)).await }
    };
    let bob_1 = cookie_of(&login("bob", "cld-1").await);
    let bob_2 = cookie_of(&login("bob", "cld-2").await);
    let ann_3 = cookie_of(&login("ann", "cld-3").await);
    for c in [&bob_1, &bob_2, &ann_3] {
        assert_eq!(on_b(c, json).await.status, 200);
    }

    // Bob leaves company 2, then comes back to it through SSO.
    let r = m
        .webhook("/maestrano/account/groups/cld-2/users/bob", &auth)
        .await;
    assert_eq!(r.status, 200);
    let r = until_b(bob_2.clone(), 403).await;
    assert_eq!(r.json()["error"], "removed_from_company");
    let back = login("bob", "cld-2").await;
    assert_eq!(back.status, 303, "{}", back.text());
    let r = until_b(bob_2.clone(), 401).await;
    assert_eq!(r.json()["error"], "unauthenticated");
    let page = on_b(&bob_2, "text/html").await;
    assert_eq!(page.status, 302);
    let to = page.headers["location"].to_str().unwrap();
    assert!(
        to.contains("/login") && to.contains("return_to=/app/home"),
        "to the tenant's login: {to}"
    );
    assert_eq!(on_b(&cookie_of(&back), json).await.status, 200);

    // Company 3 cancels: Maestrano never reopens it, so its sessions keep the 403 and
    // SSO into it is refused. Reopened through the library, the session has ended.
    let r = m.webhook("/maestrano/account/groups/cld-3", &auth).await;
    assert_eq!(r.status, 200);
    let r = until_b(ann_3.clone(), 403).await;
    assert_eq!(r.json()["error"], "company_cancelled");
    assert_eq!(login("ann", "cld-3").await.status, 403);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = on_b(&ann_3, json).await;
    assert_eq!(r.status, 403, "still cancelled: still the 403");
    m.dir
        .reactivate_group(&idgate::audit::Origin::system(), "mno", "cld-3")
        .await
        .unwrap();
    until_b(ann_3.clone(), 401).await;

    // Bob leaves every company: deactivated. SSO is refused while he is inactive, and
    // reactivating him does not lift the 403 of the company he left.
    for path in [
        "/maestrano/account/groups/cld-1/users/bob",
        "/maestrano/account/groups/cld-2/users/bob",
    ] {
        assert_eq!(m.webhook(path, &auth).await.status, 200);
    }
    assert!(!m.dir.user("mno", "bob").await.unwrap().unwrap().active);
    until_b(bob_1.clone(), 403).await;
    assert_eq!(login("bob", "cld-1").await.status, 403);
    m.dir
        .reactivate_user(&idgate::audit::Origin::system(), "mno", "bob")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = on_b(&bob_1, json).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (403, json!("removed_from_company"))
    );
    // Back in the company through SSO: the old session has ended.
    let again = login("bob", "cld-1").await;
    assert_eq!(again.status, 303, "{}", again.text());
    until_b(bob_1.clone(), 401).await;
}

/// Maestrano's Basic credentials get the same failure limit as SCIM tokens: past it,
/// wrong credentials from that address get 429 with `Retry-After`, while the right
/// ones still work (Maestrano calls from shared addresses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_failures_are_limited_per_client() {
    let m = market().await;
    let metadata = |auth: String| {
        let u = m.url("/maestrano/metadata");
        async move { get(&u, &[("authorization", &auth)]).await }
    };
    for i in 0..idgate::limits::FAILURES_PER_WINDOW {
        let r = metadata(basic("app-123", "guess")).await;
        assert_eq!(r.status, 401, "failure {i}");
    }
    let r = metadata(basic("app-123", "guess")).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(metadata(basic("app-123", "key-123")).await.status, 200);
    // The limit covers the webhooks as well: they share the credentials.
    let r = send(
        "DELETE",
        &m.url("/maestrano/account/groups/cld-1"),
        &[("authorization", &basic("app-123", "guess"))],
        "",
    )
    .await;
    assert_eq!(r.status, 429);
}

/// SIGKILL in the middle of delivering billing calls and Connec! notifications, then a
/// restart: every bill and every entity is delivered at least once, and more than once
/// only within the at-least-once window. Jobs of a queue run one at a time, so at the
/// kill at most one per queue can have reached the other side without being
/// acknowledged: per queue, at most one job is delivered twice.
///
/// The kill lands while a billing call is in flight, so the dead replica holds that
/// company's billing lock: the restarted one must bill the company once the lock lapses
/// (it once held billing up for two minutes, and CI failed on it when the kill happened
/// to land there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_and_connec_jobs_survive_sigkill_mid_delivery() {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Both ends answer slowly enough for the kill to land mid-delivery.
    let slow = std::time::Duration::from_millis(40);
    // The companies billed, in the order Maestrano created their bills.
    let made: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let m2 = made.clone();
    // The third bill call is held until idgate is dead, and then fails: the dead replica
    // took the company's billing lock and billed nothing.
    let arrived = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (a, k) = (arrived.clone(), killed.clone());
    let api = Recorder::start(move |r| {
        let json = vec![("content-type".to_owned(), "application/json".to_owned())];
        if r.method == "POST" && a.fetch_add(1, Ordering::SeqCst) == 2 {
            // Off the runtime's worker: a blocked worker may hold its timer.
            tokio::task::block_in_place(|| {
                while !k.load(Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            });
            return (503, json, "{\"success\":false}".into());
        }
        std::thread::sleep(slow * 6);
        if r.method == "POST" {
            let mut made = m2.lock().unwrap();
            made.push(r.form()["group_id"].clone());
            return (
                200,
                json,
                format!(
                    "{{\"success\":true,\"data\":{{\"id\":\"rbill-{}\"}}}}",
                    made.len()
                ),
            );
        }
        (200, json, "{\"success\":true}".into())
    })
    .await;
    let app = Recorder::start(move |r| {
        std::thread::sleep(slow);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let id = v["id"].as_str().unwrap_or("?");
        (
            201,
            vec![("content-type".into(), "application/json".into())],
            json!({"id": format!("local-{id}")}).to_string(),
        )
    })
    .await;
    let extra = format!(
        "api_host = \"{}\"\n[tenants.maestrano.billing]\nmode = \"per_user\"\nprice_cents = 1500\n\
         currency = \"AUD\"\nperiod = \"Month\"\ndescription = \"Seat\"\n",
        api.url()
    );
    let mut m = market_with(app.addr, &extra, None).await;
    let mut first = m.switch_to_process().await;

    let companies: Vec<String> = (0..6).map(|i| format!("cld-{i}")).collect();
    for (i, group) in companies.iter().enumerate() {
        let r = m
            .login("mno", spec(CONSUME, "app-123", &format!("u{i}"), group))
            .await;
        assert_eq!(r.status, 303, "{}", r.text());
    }
    let people: Vec<serde_json::Value> = (0..40)
        .map(|i| json!({"id": format!("per-{i}"), "group_id": "cld-0", "first_name": "P"}))
        .collect();
    let r = send(
        "POST",
        &m.url("/maestrano/connec/notifications"),
        &[
            ("authorization", &basic("app-123", "key-123")),
            ("content-type", "application/json"),
        ],
        json!({ "people": people }).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(
        "deliveries under way",
        std::time::Duration::from_secs(20),
        || app.calls().len() >= 5 && arrived.load(Ordering::SeqCst) >= 3,
    )
    .await;
    first.signal("KILL");
    assert!(
        tokio::task::block_in_place(|| first.wait_exit(std::time::Duration::from_secs(10)))
            .is_some()
    );
    let at_kill = (app.calls().len(), made.lock().unwrap().len());
    assert_eq!(at_kill.1, 2, "the third bill was in flight at the kill");
    killed.store(true, Ordering::SeqCst);
    assert!(
        at_kill.0 < 40 && at_kill.1 < companies.len(),
        "the kill came mid-delivery ({} of 40 entities, {} bills)",
        at_kill.0,
        at_kill.1
    );

    let _second = m.switch_to_process().await;
    let limit = idgate::jobs::STALE_AFTER + std::time::Duration::from_secs(30);
    eventually("every entity reaches the app", limit, || {
        let ids: std::collections::HashSet<String> = app
            .calls()
            .iter()
            .filter_map(|c| {
                serde_json::from_slice::<serde_json::Value>(&c.body).ok()?["id"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        ids.len() == 40
    })
    .await;
    // The company whose bill was in flight waits for the dead replica's billing lock to
    // lapse, then for the job's next retry.
    let bill_limit = idgate::maestrano::worker::BILL_LOCK + idgate::jobs::MAX_BACKOFF;
    eventually("every company is billed", bill_limit, || {
        let made = made.lock().unwrap();
        let billed: std::collections::HashSet<&String> = made.iter().collect();
        billed.len() == companies.len()
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;

    let mut per_entity: HashMap<String, usize> = HashMap::new();
    for c in app.calls() {
        let v: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
        *per_entity
            .entry(v["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let mut per_company: HashMap<String, usize> = HashMap::new();
    for group in made.lock().unwrap().iter() {
        *per_company.entry(group.clone()).or_default() += 1;
    }
    let twice = |counts: &HashMap<String, usize>| -> usize {
        assert!(counts.values().all(|n| *n <= 2), "{counts:?}");
        counts.values().filter(|n| **n == 2).count()
    };
    let (dup_entities, dup_bills) = (twice(&per_entity), twice(&per_company));
    assert!(dup_entities <= 1, "Connec! duplicates: {per_entity:?}");
    assert!(dup_bills <= 1, "billing duplicates: {per_company:?}");
    println!(
        "killed after {} of 40 entities and {} of {} bills; after the restart all \
         delivered; duplicates: {dup_entities} entity, {dup_bills} bill",
        at_kill.0,
        at_kill.1,
        companies.len()
    );
}
