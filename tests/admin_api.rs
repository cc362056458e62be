//! The admin API (SPEC §10) on two real idgate replicas sharing a real Redis: listing
//! users a page at a time, listing and ending sessions, deactivating and activating —
//! each seen by the other replica within a second, open tunnels included.

#[path = "support/saml.rs"]
mod saml_support;
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use sha2::Digest;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ADMIN_TOKEN: &str = "admin-api-test-token";

fn admin_server() -> String {
    format!(
        "admin_token = \"sha256:{}\"",
        hex::encode(sha2::Sha256::digest(ADMIN_TOKEN.as_bytes()))
    )
}

async fn admin(idgate: &Idgate, method: &str, path: &str) -> Reply {
    send(
        method,
        &idgate.admin_url(path),
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        "",
    )
    .await
}

/// GET `path` on the public listener with `cookie`, as an API client.
async fn as_user(idgate: &Idgate, cookie: &str) -> u16 {
    get(
        &idgate.url("/data"),
        &[("cookie", cookie), ("accept", "application/json")],
    )
    .await
    .status
    .as_u16()
}

/// Polls until `cookie` gets `status` on `idgate`; fails after a second.
async fn within_a_second(idgate: &Idgate, cookie: &str, status: u16) {
    let start = Instant::now();
    loop {
        let got = as_user(idgate, cookie).await;
        if got == status {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "still {got} after 1 s, wanted {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_the_api_does_not_exist_and_with_one_it_needs_it() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let off = deployment(up.addr, &redis.url(), "", "");
    let a = Idgate::start(&off.text);
    a.wait_ready().await;
    for method in ["GET", "POST", "DELETE", "PUT"] {
        for path in [
            "/admin/v1/tenants",
            "/admin/",
            "/admin/v1/tenants/acme/users",
        ] {
            let r = admin(&a, method, path).await;
            assert_eq!(r.status, 404, "{method} {path} without admin_token");
        }
    }
    assert_eq!(get(&a.admin_url("/healthz"), &[]).await.status, 200);

    let on = deployment(up.addr, &redis.url(), &admin_server(), "");
    let b = Idgate::start(&on.text);
    b.wait_ready().await;
    for auth in [None, Some("Bearer wrong"), Some("Basic YWRtaW46eA==")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let r = get(&b.admin_url("/admin/v1/tenants"), &headers).await;
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.json()["error"], "unauthorized");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }
    let r = admin(&b, "GET", "/admin/v1/tenants").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["tenants"],
        serde_json::json!([{"id": "acme", "source": "config", "scim": true,
            "saml": {"metadata": "ok", "refreshed_at": null}}])
    );
    for path in [
        "/admin/v1/tenants/nope/users",
        "/admin/v1/tenants/acme/users/nobody",
        "/admin/v1/tenants/acme/users/nobody/sessions",
        "/admin/v1/nothing",
    ] {
        let r = admin(&b, "GET", path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"], "not_found", "{path}");
    }
    let r = admin(
        &b,
        "DELETE",
        &format!("/admin/v1/tenants/acme/sessions/{}", "0".repeat(64)),
    )
    .await;
    assert_eq!(r.status, 404);
    // Every call is audited, with the admin as the actor, and the token is in no line.
    assert!(b.wait_for_log("\"event\":\"admin_call\""), "{}", b.logs());
    assert!(!b.logs().contains(ADMIN_TOKEN));
}

#[tokio::test(flavor = "multi_thread")]
async fn users_are_listed_a_page_at_a_time_with_filters() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let d = deployment(up.addr, &redis.url(), &admin_server(), "");
    let a = Idgate::start(&d.text);
    a.wait_ready().await;
    let ids: Vec<String> = (0..7).map(|i| format!("u-{i:02}")).collect();
    for id in &ids {
        provision(&d.dir, "acme", id, "g-acme").await;
    }
    d.dir
        .deactivate_user(&idgate::audit::Origin::system(), "acme", "u-03")
        .await
        .unwrap();
    let cookie = d.login("u-05", "g-acme").await;

    // Pages of 3 cover every user once, in id order, and the last has no cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let path = match &cursor {
            Some(c) => format!("/admin/v1/tenants/acme/users?limit=3&cursor={c}"),
            None => "/admin/v1/tenants/acme/users?limit=3".to_owned(),
        };
        let page = admin(&a, "GET", &path).await.json();
        for u in page["users"].as_array().unwrap() {
            seen.push(u["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    let one = admin(&a, "GET", "/admin/v1/tenants/acme/users/u-05")
        .await
        .json();
    assert_eq!(one["email"], "u-05@example.com");
    assert_eq!(one["given_name"], "Ada");
    assert_eq!(one["active"], true);
    assert_eq!(one["groups"], serde_json::json!(["g-acme"]));
    assert_eq!(
        one["companies"],
        serde_json::json!([{"group_id": "g-acme", "role": "admin", "active": true}])
    );
    assert_eq!(one["sessions"], 1);
    assert_eq!(as_user(&a, &cookie).await, 200);

    let inactive = admin(&a, "GET", "/admin/v1/tenants/acme/users?active=false")
        .await
        .json();
    let inactive: Vec<&str> = inactive["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(inactive, vec!["u-03"]);
    let by_email = admin(
        &a,
        "GET",
        "/admin/v1/tenants/acme/users?email=U-04%40Example.com",
    )
    .await
    .json();
    assert_eq!(by_email["users"][0]["id"], "u-04");
    assert_eq!(by_email["users"].as_array().unwrap().len(), 1);
    for bad in ["limit=0", "limit=1001", "limit=x", "active=maybe"] {
        let r = admin(&a, "GET", &format!("/admin/v1/tenants/acme/users?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_ends_sessions_and_deactivates_users_on_every_replica_within_a_second() {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let d = deployment(up.addr, &redis.url(), &admin_server(), "");
    let a = Idgate::start(&d.text);
    let b = Idgate::start(&d.text);
    a.wait_ready().await;
    b.wait_ready().await;
    let first = d.login("u-1", "g-1").await;
    let second = d.login("u-1", "g-1").await;
    let bystander = d.login("u-2", "g-1").await;
    for c in [&first, &second, &bystander] {
        assert_eq!(as_user(&b, c).await, 200);
    }

    // The listing names sessions by store key, never by cookie.
    let listed = admin(&a, "GET", "/admin/v1/tenants/acme/users/u-1/sessions").await;
    assert_eq!(listed.status, 200);
    let sessions = listed.json()["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 2);
    let text = listed.text();
    for c in [&first, &second] {
        let value = c.split_once('=').unwrap().1;
        assert!(!text.contains(value), "a cookie value in the listing");
    }
    let ids: BTreeSet<String> = sessions
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    let first_id = idgate::session::store_key(first.split_once('=').unwrap().1);
    assert!(ids.contains(&first_id));
    assert_eq!(sessions[0]["auth"], "session");

    // One session, through replica A: B forgets it within a second (no session: 401,
    // not a 403), the other stays.
    let r = admin(
        &a,
        "DELETE",
        &format!("/admin/v1/tenants/acme/sessions/{first_id}"),
    )
    .await;
    assert_eq!(r.json(), serde_json::json!({"revoked": 1}));
    within_a_second(&b, &first, 401).await;
    assert_eq!(as_user(&b, &second).await, 200);
    // Gone: a second DELETE finds nothing.
    let r = admin(
        &a,
        "DELETE",
        &format!("/admin/v1/tenants/acme/sessions/{first_id}"),
    )
    .await;
    assert_eq!(r.status, 404);

    // Every session of the user, with a WebSocket open on B: it closes too.
    let mut req = format!("ws://{}/ws", b.public)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("cookie", second.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket");
    ws.send(Message::text("hi")).await.unwrap();
    assert!(ws.next().await.unwrap().is_ok());
    let r = admin(&a, "DELETE", "/admin/v1/tenants/acme/users/u-1/sessions").await;
    assert_eq!(r.json(), serde_json::json!({"revoked": 1}));
    let ended = Instant::now();
    within_a_second(&b, &second, 401).await;
    loop {
        let left = Duration::from_secs(1).saturating_sub(ended.elapsed());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => panic!("the tunnel is still open 1 s after the admin ended the sessions"),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(_))) => continue,
        }
    }
    assert_eq!(as_user(&b, &bystander).await, 200);

    // Deactivate through A: B refuses the bystander's session within a second (403,
    // the user is blocked), and the answer is the user.
    let r = admin(&a, "POST", "/admin/v1/tenants/acme/users/u-2/deactivate").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["active"], false);
    within_a_second(&b, &bystander, 403).await;
    let r = admin(&a, "POST", "/admin/v1/tenants/acme/users/u-2/activate").await;
    assert_eq!(r.json()["active"], true);
    // Reactivated, the revoked session counts as ended: no session.
    within_a_second(&b, &bystander, 401).await;
    let r = admin(&a, "POST", "/admin/v1/tenants/acme/users/nobody/deactivate").await;
    assert_eq!(r.status, 404);
    let r = admin(&a, "GET", "/admin/v1/tenants/acme/users/u-2/deactivate").await;
    assert_eq!(r.status, 405);

    // The audit log has the admin's call and the deactivation, joined by one id.
    let logs = a.logs();
    let audit: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.contains("\"target\":\"idgate::audit\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let field = |v: &serde_json::Value, k: &str| {
        v.get(k)
            .or_else(|| v["fields"].get(k))
            .cloned()
            .unwrap_or_default()
    };
    let deactivated = audit
        .iter()
        .find(|v| field(v, "event") == "user_deactivated")
        .unwrap_or_else(|| panic!("no user_deactivated line:\n{logs}"));
    assert_eq!(field(deactivated, "actor"), "admin");
    let rid = field(deactivated, "request_id");
    assert!(
        audit
            .iter()
            .any(|v| field(v, "event") == "admin_call" && field(v, "request_id") == rid),
        "no admin_call with the deactivation's request id"
    );
    assert!(
        audit
            .iter()
            .any(|v| field(v, "event") == "session_revoked" && field(v, "actor") == "admin"),
        "no session_revoked by the admin"
    );
}

/// A session made by a SAML login is listed with the client's address and browser
/// (cut to 256 printable bytes), so that an operator can tell a user's sessions apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_session_is_listed_with_its_client_and_browser() {
    const IDP: &str = "https://idp.example.com/metadata";
    const ACS: &str = "http://127.0.0.1/_idgate/saml/acme/acs";
    const SP: &str = "http://127.0.0.1/_idgate/saml/acme/metadata";
    let up = TestUpstream::start().await;
    let idp = saml_support::TestIdp::new("admin-api-idp");
    let text = config(
        up.addr,
        &admin_server(),
        &format!(
            "[[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_entity_id = \"{IDP}\"\n\
             idp_sso_url = \"https://idp.example.com/sso\"\nidp_certificate = \"file:{}\"\n\
             allow_idp_initiated = true\n",
            idp.cert.display()
        ),
    );
    let idgate = Idgate::start(&text);
    idgate.wait_ready().await;
    let spec = saml_support::ResponseSpec::new(IDP, ACS, SP, None)
        .attr("uid", "u-ua")
        .attr("email", "ua@example.com")
        .attr("group_uid", "g-ua");
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair(
            "SAMLResponse",
            &saml_support::b64(&saml_support::signed_assertion_response(&spec, &idp)),
        )
        .finish();
    let agent = format!("Mozilla/5.0 (Test) {}", "x".repeat(400));
    let r = send(
        "POST",
        &idgate.url("/_idgate/saml/acme/acs"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("user-agent", &agent),
        ],
        body,
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());

    let listed = admin(&idgate, "GET", "/admin/v1/tenants/acme/users/u-ua/sessions").await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let sessions = listed.json()["sessions"].as_array().unwrap().clone();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let s = &sessions[0];
    assert_eq!(s["auth"], "saml");
    assert_eq!(s["client"], "127.0.0.1");
    assert_eq!(s["user_agent"].as_str().unwrap(), &agent[..256]);
}
