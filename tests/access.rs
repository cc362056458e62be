//! Access rules (SPEC §9) against a real idgate in front of a real upstream: which paths
//! are public, which answer 401 instead of a login redirect, and who may open what.

mod support;

use std::sync::Arc;

use idgate::config::Config;
use idgate::directory::Directory;
use idgate::session::Sessions;
use support::*;

struct Running {
    app: idgate::Running,
    dir: Directory,
    sessions: Arc<Sessions>,
    _up: TestUpstream,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.public_addr())
    }

    /// A session for `user` in `group` with `role`.
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
}

const RULES: &str = r#"
[access]
public_paths = ["/health"]
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
allow_users = ["u-ops"]
api = true

[[access.rules]]
name = "status page"
path = "/status"
public = true
"#;

async fn start() -> Running {
    let up = TestUpstream::start().await;
    let text = config(up.addr, "", &format!("{RULES}\n{}", tenant_toml("acme")));
    let cfg = Config::from_toml(&text, std::path::Path::new("/")).expect("valid config");
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

async fn status(r: &Running, method: &str, path: &str, cookie: Option<&str>) -> Reply {
    let mut headers = vec![("accept", "application/json")];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    send(method, &r.url(path), &headers, bytes::Bytes::new()).await
}

#[tokio::test]
async fn the_first_matching_rule_decides_who_gets_in() {
    let r = start().await;
    let admin = r.login("u-admin", "g-admins", "member").await;
    let viewer = r.login("u-viewer", "g-acme", "viewer").await;
    let editor = r.login("u-editor", "g-acme", "editor").await;
    let ops = r.login("u-ops", "g-acme", "viewer").await;

    // Group rule: the session's group decides, by whole segments.
    assert_eq!(
        status(&r, "GET", "/admin/users", Some(&admin)).await.status,
        200
    );
    let refused = status(&r, "GET", "/admin/users", Some(&viewer)).await;
    assert_eq!(refused.status, 403);
    let body = refused.json();
    assert_eq!(body["error"], "forbidden");
    assert_eq!(body["rule"], "admins only");
    assert_eq!(
        status(&r, "GET", "/administrator", Some(&viewer))
            .await
            .status,
        200
    );

    // Method rule: viewers read, editors write.
    assert_eq!(
        status(&r, "GET", "/reports/q3", Some(&viewer)).await.status,
        200
    );
    let post = status(&r, "POST", "/reports/q3", Some(&viewer)).await;
    assert_eq!(
        (post.status.as_u16(), post.json()["rule"].clone()),
        (403, "read-only for viewers".into())
    );
    assert_eq!(
        status(&r, "POST", "/reports/q3", Some(&editor))
            .await
            .status,
        200
    );
    assert_eq!(
        status(&r, "POST", "/reportsx", Some(&viewer)).await.status,
        200
    );

    // User rule.
    assert_eq!(status(&r, "GET", "/ops/run", Some(&ops)).await.status, 200);
    assert_eq!(
        status(&r, "GET", "/ops/run", Some(&admin)).await.status,
        403
    );
}

#[tokio::test]
async fn public_and_api_rules_answer_without_a_session() {
    let r = start().await;
    // public_paths and a public rule: forwarded, no identity.
    for path in ["/health", "/status/x"] {
        let reply = status(&r, "GET", path, None).await;
        assert_eq!(reply.status, 200, "{path}");
        assert!(
            received(&reply.json(), "x-idgate-user-id").is_empty(),
            "{path}"
        );
    }
    // An api rule answers a browser navigation with 401, not a redirect.
    let nav = send(
        "GET",
        &r.url("/ops/run"),
        &[("accept", "text/html")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(nav.status, 401);
    let nav = send(
        "GET",
        &r.url("/dashboard"),
        &[("accept", "text/html")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(nav.status, 302, "no rule: the login redirect as before");
    // A refusal page for a browser names the rule too.
    let viewer = r.login("u-viewer", "g-acme", "viewer").await;
    let page = send(
        "GET",
        &r.url("/admin"),
        &[("accept", "text/html"), ("cookie", &viewer)],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(page.status, 403);
    assert!(page.text().contains("admins only"), "{}", page.text());
}

#[tokio::test]
async fn a_role_change_reaches_the_rules() {
    let r = start().await;
    let user = r.login("u-1", "g-acme", "viewer").await;
    assert_eq!(
        status(&r, "PUT", "/reports/a", Some(&user)).await.status,
        403
    );
    r.dir
        .set_membership(
            &idgate::audit::Origin::system(),
            "acme",
            "u-1",
            "g-acme",
            "editor",
        )
        .await
        .unwrap();
    // Within one second on every replica (SPEC §9), through the invalidation events.
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    loop {
        let s = status(&r, "PUT", "/reports/a", Some(&user)).await.status;
        if s == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {s}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_users_other_groups_count_and_travel_as_headers_and_claims() {
    let r = start().await;
    let user = r.login("u-1", "g-acme", "member").await;
    r.dir
        .ensure_group("acme", "g-admins", "Admins")
        .await
        .unwrap();
    assert_eq!(status(&r, "GET", "/admin", Some(&user)).await.status, 403);
    r.dir
        .set_membership(
            &idgate::audit::Origin::system(),
            "acme",
            "u-1",
            "g-admins",
            "member",
        )
        .await
        .unwrap();
    let within = |want: u16, path: &'static str| {
        let (r, user) = (&r, user.clone());
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
            loop {
                let reply = status(r, "GET", path, Some(&user)).await;
                if reply.status == want {
                    return reply;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{path}: still {}",
                    reply.status
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    // Admitted through the membership, with every group in the header and the claim;
    // the client's own copies of the identity headers never arrive.
    let reply = within(200, "/admin").await;
    let echo = reply.json();
    assert_eq!(received(&echo, "x-idgate-groups"), ["g-acme,g-admins"]);
    assert_eq!(received(&echo, "x-idgate-auth"), ["session"]);
    assert!(received(&echo, "x-idgate-groups-truncated").is_empty());
    let forged = send(
        "GET",
        &r.url("/admin"),
        &[
            ("accept", "application/json"),
            ("cookie", &user),
            ("x-idgate-groups", "g-root"),
            ("x-idgate-groups-truncated", "true"),
            ("x-idgate-auth", "bearer"),
        ],
        bytes::Bytes::new(),
    )
    .await
    .json();
    assert_eq!(received(&forged, "x-idgate-groups"), ["g-acme,g-admins"]);
    assert_eq!(received(&forged, "x-idgate-auth"), ["session"]);
    assert!(received(&forged, "x-idgate-groups-truncated").is_empty());
    let jwt = received(&echo, "x-idgate-assertion").remove(0);
    let payload = jwt.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["groups"], serde_json::json!(["g-acme", "g-admins"]));

    // Removed from g-admins: /admin is gone within a second.
    r.dir
        .remove_membership(&idgate::audit::Origin::system(), "acme", "u-1", "g-admins")
        .await
        .unwrap();
    within(403, "/admin").await;
}
