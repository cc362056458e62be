//! SCIM 2.0 against a real idgate on a real Redis: discovery, authentication, users and
//! groups, filters, PATCH in the forms Okta and Entra send, ETags, and the lifecycle
//! (deactivate, delete, restore) as the access gate enforces it on every replica.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use idgate::config::Config;
use idgate::directory::Directory;
use idgate::session::Sessions;
use idgate::store::Store;
use serde_json::{Value, json};
use support::*;

const SCIM_JSON: &str = "application/scim+json";

/// One deployment: Redis, an upstream, idgate, and the library side on the same store
/// (to make sessions as a login would).
struct Env {
    idgate: Idgate,
    token: String,
    other_token: String,
    dir: Directory,
    sessions: Arc<Sessions>,
    text: String,
    _up: TestUpstream,
    _redis: RedisServer,
    _keys: tempfile::TempDir,
}

async fn env(extra: &str) -> Env {
    let redis = RedisServer::start();
    let up = TestUpstream::start().await;
    let keys = tempfile::tempdir().unwrap();
    let key = signing_key_file(keys.path(), "EdDSA");
    let (token, hash) = idgate::scim::token::generate();
    let (other_token, other_hash) = idgate::scim::token::generate();
    let cert = format!(
        "{}/config/examples/example-idp.crt",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = config(
        up.addr,
        "",
        &format!(
            "[store]\nurl = \"{}\"\n[session]\ncache_ttl = \"5s\"\n\
             [identity]\nsigning_key = \"file:{}\"\n\
             [[tenants]]\nid = \"acme\"\ndefault = true\n[tenants.saml]\n\
             idp_entity_id = \"https://idp.example.com\"\nidp_sso_url = \"https://idp.example.com/sso\"\n\
             idp_certificate = \"file:{cert}\"\n[tenants.scim]\ntoken = \"{hash}\"\n{extra}\n\
             [[tenants]]\nid = \"beta\"\n[tenants.saml]\n\
             idp_entity_id = \"https://idp.example.com\"\nidp_sso_url = \"https://idp.example.com/sso\"\n\
             idp_certificate = \"file:{cert}\"\n[tenants.scim]\ntoken = \"{other_hash}\"\n",
            redis.url(),
            key.display(),
        ),
    );
    let cfg = Config::from_toml(&text, std::path::Path::new("/")).expect("valid config");
    let store = Store::open(&cfg.store).expect("store");
    let idgate = Idgate::start(&text);
    idgate.wait_ready().await;
    Env {
        idgate,
        token,
        other_token,
        dir: Directory::new(store.clone()),
        sessions: Arc::new(Sessions::standalone(&cfg, store).expect("sessions")),
        text,
        _up: up,
        _redis: redis,
        _keys: keys,
    }
}

impl Env {
    fn url(&self, path: &str) -> String {
        self.idgate.url(&format!("/_idgate/scim/acme/v2{path}"))
    }

    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        self.call_with(method, path, body, &[]).await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let auth = format!("Bearer {}", self.token);
        let mut headers = vec![("authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("content-type", SCIM_JSON));
        }
        headers.extend_from_slice(extra);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let r = send(method, &self.url(path), &headers, body).await;
        if r.status != 204 && r.status != 304 {
            assert_eq!(
                r.headers["content-type"],
                SCIM_JSON,
                "{method} {path}: {}",
                r.text()
            );
        }
        r
    }

    async fn create_user(&self, user_name: &str, extra: Value) -> Value {
        let mut body = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": user_name,
            "name": {"givenName": "Ann", "familyName": "Lee"},
            "emails": [{"value": user_name, "type": "work", "primary": true}],
            "active": true,
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = self.call("POST", "/Users", Some(&body)).await;
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()
    }

    async fn find(&self, filter: &str) -> Value {
        let r = self
            .call("GET", &format!("/Users?{}", q(filter)), None)
            .await;
        assert_eq!(r.status, 200, "{filter}: {}", r.text());
        r.json()
    }

    /// A session for `user` in `group` (made through the library, as a login would).
    async fn session(&self, user: &str, group: &str) -> String {
        self.dir
            .ensure_group("acme", group, "Acme Inc.")
            .await
            .unwrap();
        self.dir
            .set_membership(
                &idgate::audit::Origin::system(),
                "acme",
                user,
                group,
                "member",
            )
            .await
            .unwrap();
        let new = self
            .sessions
            .create_session("acme", user, group)
            .await
            .unwrap();
        cookie_for(&self.sessions, &new)
    }

    async fn app(&self, cookie: &str) -> Reply {
        get(
            &self.idgate.url("/app"),
            &[("cookie", cookie), ("accept", "application/json")],
        )
        .await
    }
}

fn scim_error(r: &Reply, status: u16, scim_type: Option<&str>) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text());
    let e = r.json();
    assert_eq!(
        e["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error",
        "{e}"
    );
    assert_eq!(e["status"], status.to_string(), "{e}");
    match scim_type {
        Some(t) => assert_eq!(e["scimType"], t, "{e}"),
        None => assert!(e.get("scimType").is_none(), "{e}"),
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["Resources"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn q(filter: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("filter", filter)
        .finish()
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_describes_what_is_implemented() {
    let e = env("").await;
    let r = e.call("GET", "", None).await;
    assert_eq!(r.status, 200);
    let spc = e.call("GET", "/ServiceProviderConfig", None).await.json();
    assert_eq!(spc["patch"]["supported"], true);
    assert_eq!(spc["filter"]["supported"], true);
    assert_eq!(spc["etag"]["supported"], true);
    assert_eq!(spc["sort"]["supported"], true);
    assert_eq!(spc["bulk"]["supported"], false);
    assert_eq!(spc["changePassword"]["supported"], false);
    assert_eq!(spc["authenticationSchemes"][0]["type"], "oauthbearertoken");

    let types = e.call("GET", "/ResourceTypes", None).await.json();
    assert_eq!(types["totalResults"], 2);
    let user_type = e.call("GET", "/ResourceTypes/User", None).await.json();
    assert_eq!(user_type["endpoint"], "/Users");

    let schemas = e.call("GET", "/Schemas", None).await.json();
    assert_eq!(schemas["totalResults"], 2);
    let user = e
        .call(
            "GET",
            "/Schemas/urn:ietf:params:scim:schemas:core:2.0:User",
            None,
        )
        .await
        .json();
    let names: Vec<&str> = user["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "userName",
            "name",
            "displayName",
            "active",
            "emails",
            "groups"
        ]
    );
    let group = e
        .call(
            "GET",
            "/Schemas/urn:ietf:params:scim:schemas:core:2.0:Group",
            None,
        )
        .await
        .json();
    assert_eq!(group["attributes"][1]["name"], "members");
    scim_error(&e.call("GET", "/Schemas/urn:nope", None).await, 404, None);
    scim_error(&e.call("GET", "/Elsewhere", None).await, 404, None);
    scim_error(
        &e.call("POST", "/ServiceProviderConfig", Some(&json!({})))
            .await,
        405,
        None,
    );
    // A tenant without SCIM, or none at all: 404 in SCIM form.
    let r = send(
        "GET",
        &e.idgate.url("/_idgate/scim/nobody/v2/Users"),
        &[],
        "",
    )
    .await;
    scim_error(&r, 404, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_per_tenant_and_failures_are_rate_limited_and_not_logged() {
    let e = env("").await;
    let users = e.url("/Users");
    let r = get(&users, &[]).await;
    scim_error(&r, 401, None);
    assert!(
        r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    // The other tenant's (valid) token does not open this tenant.
    let other = format!("Bearer {}", e.other_token);
    scim_error(&get(&users, &[("authorization", &other)]).await, 401, None);
    let beta = e.idgate.url("/_idgate/scim/beta/v2/Users");
    assert_eq!(get(&beta, &[("authorization", &other)]).await.status, 200);
    // A token differing in its last character only.
    let mut near = e.token.clone();
    let last = near.pop().unwrap();
    near.push(if last == 'A' { 'B' } else { 'A' });
    let near = format!("Bearer {near}");
    scim_error(&get(&users, &[("authorization", &near)]).await, 401, None);
    assert_eq!(e.call("GET", "/Users", None).await.status, 200);

    // Past the limit, failures from this address get 429 (and one log line, not one
    // each); a valid token still works, as IdPs share egress addresses.
    for _ in 0..idgate::scim::AUTH_FAILURES_PER_WINDOW {
        get(&users, &[("authorization", "Bearer wrong")]).await;
    }
    scim_error(
        &get(&users, &[("authorization", "Bearer wrong")]).await,
        429,
        None,
    );
    scim_error(&get(&users, &[]).await, 429, None);
    assert_eq!(e.call("GET", "/Users", None).await.status, 200);
    assert!(e.idgate.wait_for_log("SCIM authentication failed"));
    let logs = e.idgate.logs();
    assert!(!logs.contains(&e.token), "the token was logged");
    assert!(!logs.contains(&e.other_token), "a token was logged");
    assert!(!logs.contains("Bearer wrong"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_previous_token_keeps_working_during_a_rotation() {
    let (old, old_hash) = idgate::scim::token::generate();
    let e = env(&format!("previous_tokens = [\"{old_hash}\"]")).await;
    let users = e.url("/Users");
    assert_eq!(
        e.call("GET", "/Users", None).await.status,
        200,
        "the new token"
    );
    let old_auth = format!("Bearer {old}");
    assert_eq!(
        get(&users, &[("authorization", &old_auth)]).await.status,
        200
    );
    assert!(
        e.idgate.wait_for_log("token from previous_tokens"),
        "{}",
        e.idgate.logs()
    );
    // It opens its own tenant only.
    let beta = e.idgate.url("/_idgate/scim/beta/v2/Users");
    scim_error(
        &get(&beta, &[("authorization", &old_auth)]).await,
        401,
        None,
    );
    assert!(!e.idgate.logs().contains(&old), "the token was logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn users_are_created_read_replaced_and_unique_by_user_name() {
    let e = env("").await;
    let okta: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/tests/fixtures/scim/okta/02-post-user.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let r = e.call("POST", "/Users", Some(&okta["body"])).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["userName"], "test.user@okta.local");
    assert_eq!(created["externalId"], "00ujl29u0le5T6Aj10h7");
    assert_eq!(created["name"]["givenName"], "Test");
    assert_eq!(created["emails"][0]["value"], "test.user@okta.local");
    assert_eq!(created["active"], true);
    assert_eq!(created["groups"], json!([]));
    assert!(created.get("password").is_none(), "passwords are not kept");
    assert_eq!(created["meta"]["resourceType"], "User");
    let location = created["meta"]["location"].as_str().unwrap();
    assert!(location.ends_with(&format!("/_idgate/scim/acme/v2/Users/{id}")));
    assert_eq!(r.headers["location"], location);
    assert_eq!(
        r.headers["etag"],
        created["meta"]["version"].as_str().unwrap()
    );

    let got = e.call("GET", &format!("/Users/{id}"), None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json(), created);

    // userName is unique per tenant, compared case-insensitively.
    let mut again = okta["body"].clone();
    again["userName"] = json!("TEST.USER@okta.local");
    again["externalId"] = json!("other");
    scim_error(
        &e.call("POST", "/Users", Some(&again)).await,
        409,
        Some("uniqueness"),
    );
    // …but only per tenant.
    let beta = send(
        "POST",
        &e.idgate.url("/_idgate/scim/beta/v2/Users"),
        &[
            ("authorization", &format!("Bearer {}", e.other_token)),
            ("content-type", "application/json"),
        ],
        okta["body"].to_string(),
    )
    .await;
    assert_eq!(beta.status, 201, "{}", beta.text());

    // PUT replaces what the client may write; what it leaves out is cleared.
    let put = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "id": id,
        "userName": "Test.User@okta.local",
        "name": {"givenName": "Tess"},
        "active": true,
    });
    let r = e.call("PUT", &format!("/Users/{id}"), Some(&put)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let u = r.json();
    assert_eq!(u["userName"], "Test.User@okta.local", "case preserved");
    assert_eq!(u["name"], json!({"givenName": "Tess"}));
    assert!(u.get("emails").is_none());
    assert!(u.get("externalId").is_none());
    assert_eq!(u["meta"]["version"], "W/\"2\"");

    scim_error(&e.call("GET", "/Users/nope", None).await, 404, None);
    scim_error(
        &e.call("POST", "/Users", Some(&json!({"name": {}}))).await,
        400,
        Some("invalidValue"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_pages_projections_and_sorting() {
    let e = env("").await;
    let mut made = Vec::new();
    for (i, name) in ["carol@x.com", "alice@x.com", "bob@y.com", "dave@x.com"]
        .iter()
        .enumerate()
    {
        let u = e
            .create_user(
                name,
                json!({
                    "externalId": format!("ext-{i}"),
                    "displayName": format!("User {i}"),
                    "emails": [
                        {"value": name, "type": "work", "primary": true},
                        {"value": format!("home{i}@home.org"), "type": "home"},
                    ],
                }),
            )
            .await;
        made.push(u["id"].as_str().unwrap().to_owned());
    }
    let one = |list: Value, want: &str| {
        assert_eq!(list["totalResults"], 1, "{list}");
        assert_eq!(list["Resources"][0]["id"], want);
    };
    one(e.find("userName eq \"ALICE@x.com\"").await, &made[1]);
    one(e.find("externalId eq \"ext-2\"").await, &made[2]);
    one(e.find(&format!("id eq \"{}\"", made[3])).await, &made[3]);
    one(e.find("emails.value eq \"home0@home.org\"").await, &made[0]);
    one(
        e.find("emails[type eq \"work\"].value eq \"dave@x.com\"")
            .await,
        &made[3],
    );
    one(e.find("displayName eq \"user 2\"").await, &made[2]);
    assert_eq!(
        e.find("externalId eq \"EXT-2\"").await["totalResults"],
        0,
        "externalId is case-exact"
    );
    assert_eq!(e.find("userName co \"@x.com\"").await["totalResults"], 3);
    assert_eq!(e.find("userName sw \"b\"").await["totalResults"], 1);
    assert_eq!(e.find("userName ew \"y.com\"").await["totalResults"], 1);
    assert_eq!(e.find("externalId pr").await["totalResults"], 4);
    assert_eq!(e.find("userName gt \"bob\"").await["totalResults"], 3);
    assert_eq!(
        e.find("(userName sw \"a\" or userName sw \"b\") and not (emails co \"y.com\")")
            .await["totalResults"],
        1
    );
    assert_eq!(e.find("userName eq \"nobody\"").await["totalResults"], 0);
    assert_eq!(
        e.find("meta.resourceType eq \"User\"").await["totalResults"],
        4
    );
    scim_error(
        &e.call("GET", &format!("/Users?{}", q("userName eq")), None)
            .await,
        400,
        Some("invalidFilter"),
    );
    scim_error(
        &e.call("GET", &format!("/Users?{}", q("userName zz \"x\"")), None)
            .await,
        400,
        Some("invalidFilter"),
    );

    // Pages: 1-based startIndex, stable order, totalResults of the whole set.
    let all = e.call("GET", "/Users", None).await.json();
    assert_eq!(all["totalResults"], 4);
    let order = ids(&all);
    let mut sorted = made.clone();
    sorted.sort();
    assert_eq!(order, sorted, "listed in a stable (id) order");
    let p2 = e
        .call("GET", "/Users?startIndex=2&count=2", None)
        .await
        .json();
    assert_eq!(p2["startIndex"], 2);
    assert_eq!(p2["itemsPerPage"], 2);
    assert_eq!(p2["totalResults"], 4);
    assert_eq!(ids(&p2), order[1..3]);
    let counted = e.call("GET", "/Users?count=0", None).await.json();
    assert_eq!(
        (counted["totalResults"].as_u64(), ids(&counted).len()),
        (Some(4), 0)
    );
    let filtered_page = e
        .call(
            "GET",
            &format!(
                "/Users?{}&startIndex=2&count=1",
                q("userName co \"@x.com\"")
            ),
            None,
        )
        .await
        .json();
    assert_eq!(filtered_page["totalResults"], 3);
    assert_eq!(ids(&filtered_page).len(), 1);

    // Projections.
    let slim = e
        .call("GET", "/Users?attributes=userName,name.givenName", None)
        .await
        .json();
    let first = &slim["Resources"][0];
    let mut keys: Vec<&String> = first.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["id", "name", "schemas", "userName"]);
    assert_eq!(first["name"], json!({"givenName": "Ann"}));
    let without = e
        .call(
            "GET",
            &format!("/Users/{}?excludedAttributes=emails,meta", made[0]),
            None,
        )
        .await
        .json();
    assert!(without.get("emails").is_none() && without.get("meta").is_none());
    assert_eq!(without["id"], made[0]);

    // Sorting.
    let by_name = e
        .call("GET", "/Users?sortBy=userName&sortOrder=descending", None)
        .await
        .json();
    let names: Vec<&str> = by_name["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["userName"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["dave@x.com", "carol@x.com", "bob@y.com", "alice@x.com"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_in_okta_and_entra_forms() {
    let e = env("").await;
    let u = e.create_user("pat@x.com", json!({})).await;
    let id = u["id"].as_str().unwrap().to_owned();
    let path = format!("/Users/{id}");
    let patch = |ops: Value| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops});

    // Entra (default): capitalised ops, a string boolean, a value-filter path.
    let r = e
        .call(
            "PATCH",
            &path,
            Some(&patch(json!([
                {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "pat@new.com"},
                {"op": "Add", "path": "name.familyName", "value": "Payne"},
                {"op": "Replace", "path": "active", "value": "False"},
            ]))),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["emails"][0]["value"], "pat@new.com");
    assert_eq!(v["emails"][0]["type"], "work");
    assert_eq!(v["name"]["familyName"], "Payne");
    assert_eq!(v["active"], false, "PATCH answers with the whole resource");
    assert_eq!(v["userName"], "pat@x.com");

    // aadOptscim062020 / Okta: lowercase, real booleans, path-less with dotted keys.
    let r = e
        .call(
            "PATCH",
            &path,
            Some(&patch(json!([
                {"op": "replace", "value": {"active": true, "name.givenName": "Patricia", "displayName": "Pat"}},
            ]))),
        )
        .await;
    let v = r.json();
    assert_eq!(
        (v["active"].clone(), v["name"]["givenName"].clone()),
        (json!(true), json!("Patricia"))
    );
    assert_eq!(v["displayName"], "Pat");
    // Okta sends the id back in path-less replaces: the same id is fine…
    let r = e
        .call(
            "PATCH",
            &path,
            Some(&patch(
                json!([{"op": "replace", "value": {"id": id, "active": true}}]),
            )),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // …another is not.
    scim_error(
        &e.call(
            "PATCH",
            &path,
            Some(&patch(
                json!([{"op": "replace", "path": "id", "value": "x"}]),
            )),
        )
        .await,
        400,
        Some("mutability"),
    );
    scim_error(
        &e.call(
            "PATCH",
            &path,
            Some(&patch(json!([{"op": "jump", "path": "active"}]))),
        )
        .await,
        400,
        Some("invalidSyntax"),
    );
    scim_error(
        &e.call("PATCH", &path, Some(&patch(json!([{"op": "remove"}]))))
            .await,
        400,
        Some("noTarget"),
    );
    scim_error(
        &e.call(
            "PATCH",
            &path,
            Some(&patch(
                json!([{"op": "replace", "path": "active", "value": "perhaps"}]),
            )),
        )
        .await,
        400,
        Some("invalidValue"),
    );
    // A failed PATCH changed nothing.
    let now = e.call("GET", &path, None).await.json();
    assert_eq!(now["name"]["givenName"], "Patricia");
    assert_eq!(now["active"], true);
    // Removing an attribute.
    let v = e
        .call(
            "PATCH",
            &path,
            Some(&patch(json!([{"op": "remove", "path": "displayName"}]))),
        )
        .await
        .json();
    assert!(v.get("displayName").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_and_members_both_ways() {
    let e = env("").await;
    let a = e.create_user("a@x.com", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = e.create_user("b@x.com", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = e.create_user("c@x.com", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = e
        .call(
            "POST",
            "/Groups",
            Some(&json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "displayName": "Sales",
                "externalId": "ext-sales",
                "members": [{"value": a}],
            })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let g = r.json();
    let gid = g["id"].as_str().unwrap().to_owned();
    assert_eq!(
        gid, "ext-sales",
        "the externalId is the group id a SAML login names"
    );
    assert_eq!(g["members"][0]["value"], a);
    let gpath = format!("/Groups/{gid}");
    let patch = |ops: Value| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops});
    let members = |v: &Value| -> Vec<String> {
        let mut m: Vec<String> = v["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| m["value"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        m.sort();
        m
    };
    let mut want = vec![a.clone(), b.clone(), c.clone()];
    want.sort();
    // Entra adds.
    let v = e
        .call(
            "PATCH",
            &gpath,
            Some(&patch(
                json!([{"op": "Add", "path": "members", "value": [{"value": b}, {"value": c}]}]),
            )),
        )
        .await
        .json();
    assert_eq!(members(&v), want);
    // The user side shows the group.
    let ub = e.call("GET", &format!("/Users/{b}"), None).await.json();
    assert_eq!(ub["groups"][0]["value"], gid);
    assert_eq!(ub["groups"][0]["display"], "Sales");
    // Entra's default removal form removes only the listed member.
    let v = e
        .call(
            "PATCH",
            &gpath,
            Some(&patch(
                json!([{"op": "Remove", "path": "members", "value": [{"value": b}]}]),
            )),
        )
        .await
        .json();
    want.retain(|m| *m != b);
    assert_eq!(members(&v), want);
    // The RFC form (Okta, aadOptscim062020).
    let v = e
        .call(
            "PATCH",
            &gpath,
            Some(&patch(
                json!([{"op": "remove", "path": format!("members[value eq \"{c}\"]")}]),
            )),
        )
        .await
        .json();
    assert_eq!(members(&v), [a.as_str()]);
    // Rename, as Okta sends it.
    let v = e
        .call(
            "PATCH",
            &gpath,
            Some(&patch(
                json!([{"op": "replace", "value": {"id": gid, "displayName": "Sales EMEA"}}]),
            )),
        )
        .await
        .json();
    assert_eq!(v["displayName"], "Sales EMEA");
    // Unknown members are refused, and nothing changes.
    scim_error(
        &e.call(
            "PATCH",
            &gpath,
            Some(&patch(
                json!([{"op": "add", "path": "members", "value": [{"value": "ghost"}]}]),
            )),
        )
        .await,
        400,
        Some("invalidValue"),
    );
    // Queries.
    let found = e
        .call(
            "GET",
            &format!(
                "/Groups?{}&excludedAttributes=members",
                q("displayName eq \"sales emea\"")
            ),
            None,
        )
        .await
        .json();
    assert_eq!(ids(&found), [gid.as_str()]);
    assert!(found["Resources"][0].get("members").is_none());
    let by_member = e
        .call(
            "GET",
            &format!("/Groups?{}", q(&format!("members[value eq \"{a}\"]"))),
            None,
        )
        .await
        .json();
    assert_eq!(ids(&by_member), [gid.as_str()]);
    // PUT replaces the member list.
    let v = e
        .call("PUT", &gpath, Some(&json!({"displayName": "Sales", "externalId": "ext-sales", "members": [{"value": b}]})))
        .await
        .json();
    assert_eq!(members(&v), [b.as_str()]);
    // A group made by a SAML login is the same directory's group.
    e.dir
        .ensure_group("acme", "saml-group", "From SAML")
        .await
        .unwrap();
    let listed = e.call("GET", "/Groups", None).await.json();
    assert_eq!(listed["totalResults"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn etags_guard_writes() {
    let e = env("").await;
    let u = e.create_user("etag@x.com", json!({})).await;
    let id = u["id"].as_str().unwrap().to_owned();
    let path = format!("/Users/{id}");
    let v1 = u["meta"]["version"].as_str().unwrap().to_owned();
    let r = e
        .call_with("GET", &path, None, &[("if-none-match", &v1)])
        .await;
    assert_eq!(r.status, 304);
    let body = json!({"userName": "etag@x.com", "displayName": "E"});
    let r = e
        .call_with("PUT", &path, Some(&body), &[("if-match", &v1)])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v2 = r.headers["etag"].to_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    // Writes based on the old version are refused, whatever the method.
    scim_error(
        &e.call_with("PUT", &path, Some(&body), &[("if-match", &v1)])
            .await,
        412,
        None,
    );
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "active", "value": false}]});
    scim_error(
        &e.call_with("PATCH", &path, Some(&patch), &[("if-match", &v1)])
            .await,
        412,
        None,
    );
    scim_error(
        &e.call_with("DELETE", &path, None, &[("if-match", &v1)])
            .await,
        412,
        None,
    );
    assert_eq!(e.call("GET", &path, None).await.json()["active"], true);
    let r = e
        .call_with("DELETE", &path, None, &[("if-match", &v2)])
        .await;
    assert_eq!(r.status, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn deactivation_deletion_and_restoration_reach_the_gate() {
    let e = env("").await;
    let u = e
        .create_user("life@x.com", json!({"externalId": "ext-life"}))
        .await;
    let id = u["id"].as_str().unwrap().to_owned();
    let path = format!("/Users/{id}");
    let cookie = e.session(&id, "g-life").await;
    assert_eq!(e.app(&cookie).await.status, 200);
    let patch = |active: Value| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "value": {"active": active}}]});

    // Deactivated: blocked with the reason, still listed as inactive.
    let r = e.call("PATCH", &path, Some(&patch(json!(false)))).await;
    assert_eq!(r.json()["active"], false);
    let r = e.app(&cookie).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "account_deactivated");
    let listed = e
        .call(
            "GET",
            &format!("/Users?{}", q("userName eq \"life@x.com\"")),
            None,
        )
        .await
        .json();
    assert_eq!(listed["Resources"][0]["active"], false);
    // Reactivated: the revoked session counts as ended (the login, not the 403), and
    // a new login works.
    e.call("PATCH", &path, Some(&patch(json!(true)))).await;
    assert_eq!(e.app(&cookie).await.status, 401);
    let fresh = e.session(&id, "g-life").await;
    assert_eq!(e.app(&fresh).await.status, 200);

    // Deleted: deprovisioned, 404 to SCIM, blocked at the gate, never erased.
    let r = e.call("DELETE", &path, None).await;
    assert_eq!(r.status, 204);
    scim_error(&e.call("GET", &path, None).await, 404, None);
    scim_error(&e.call("DELETE", &path, None).await, 404, None);
    assert_eq!(
        e.call("GET", "/Users", None).await.json()["totalResults"],
        0
    );
    let r = e.app(&fresh).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "account_deactivated");
    let kept = e
        .dir
        .user("acme", &id)
        .await
        .unwrap()
        .expect("the record is kept");
    assert!(kept.deprovisioned && !kept.active);

    // A later create with the same userName restores that same user, active.
    let r = e
        .call(
            "POST",
            "/Users",
            Some(&json!({"userName": "LIFE@x.com", "externalId": "ext-life"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["id"], id);
    assert_eq!(r.json()["active"], true);
    let again = e.session(&id, "g-life").await;
    assert_eq!(e.app(&again).await.status, 200);
    // And re-posting an active userName is a conflict.
    scim_error(
        &e.call("POST", "/Users", Some(&json!({"userName": "life@x.com"})))
            .await,
        409,
        Some("uniqueness"),
    );

    // Deleting a group cancels it: its members lose access.
    let g = e
        .call(
            "POST",
            "/Groups",
            Some(&json!({"displayName": "Doomed", "members": [{"value": id}]})),
        )
        .await
        .json();
    let gid = g["id"].as_str().unwrap().to_owned();
    let member = e.session(&id, &gid).await;
    assert_eq!(e.app(&member).await.status, 200);
    assert_eq!(
        e.call("DELETE", &format!("/Groups/{gid}"), None)
            .await
            .status,
        204
    );
    let r = e.app(&member).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "company_cancelled");
    scim_error(
        &e.call("GET", &format!("/Groups/{gid}"), None).await,
        404,
        None,
    );
    assert_eq!(
        e.app(&again).await.status,
        200,
        "other groups are unaffected"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_made_by_saml_is_adopted_not_duplicated() {
    let e = env("").await;
    // A SAML login made this user: linked to its uid, an email, no userName.
    let mut u = idgate::directory::model::User::new("okta-00u1", idgate::directory::now());
    u.idp_subject = Some("okta-00u1".into());
    u.email = Some("sam@x.com".into());
    e.dir.create_user("acme", &u).await.unwrap();
    assert_eq!(
        e.call("GET", "/Users", None).await.json()["totalResults"],
        1,
        "SCIM lists every user of the tenant"
    );
    let created = e
        .create_user("sam@x.com", json!({"externalId": "okta-00u1"}))
        .await;
    assert_eq!(created["id"], "okta-00u1");
    assert_eq!(
        e.call("GET", "/Users", None).await.json()["totalResults"],
        1
    );
    // Deprovisioning it now cuts off the person who logs in through SAML.
    let cookie = e.session("okta-00u1", "g").await;
    e.call("DELETE", "/Users/okta-00u1", None).await;
    assert_eq!(e.app(&cookie).await.status, 403);

    // Adoption by the one user holding the email, when the client's id is another.
    let mut v = idgate::directory::model::User::new("saml-vic", idgate::directory::now());
    v.idp_subject = Some("vic.saml".into());
    v.email = Some("vic@x.com".into());
    e.dir.create_user("acme", &v).await.unwrap();
    let adopted = e
        .create_user("vic@x.com", json!({"externalId": "00u-vic"}))
        .await;
    assert_eq!(adopted["id"], "saml-vic");
}

/// SPEC §10 "SCIM sees every user of its tenant the same way": a user that a SAML login
/// (or Maestrano's SSO, the same path) made is returned by GET by id, by the list and by
/// every filter that matches it, like a user SCIM made. Its userName is the email of
/// its first login (else the NameID, else its id), so that Okta's and Entra's
/// `userName eq` lookup finds it, and a POST naming it adopts it instead of making a
/// second user, even without `link_by_email`.
#[tokio::test(flavor = "multi_thread")]
async fn users_made_by_saml_are_seen_like_any_other_and_adopted_by_user_name() {
    let e = env("[tenants.provisioning]\nlink_by_email = false").await;
    let no_link = idgate::config::ProvisioningConfig {
        link_by_email: false,
        ..rules()
    };
    let scim_made = e.create_user("zed@x.com", json!({})).await;
    let sam = e
        .dir
        .login(
            &idgate::audit::Origin::system(),
            "acme",
            &no_link,
            &saml_identity("sam.saml", "Sam@X.com", "g1"),
        )
        .await
        .unwrap();
    let mut opaque = saml_identity("nid.saml", "", "g1");
    opaque.email = None;
    opaque.name_id = Some("nid-7f3a".into());
    let nid = e
        .dir
        .login(&idgate::audit::Origin::system(), "acme", &no_link, &opaque)
        .await
        .unwrap();
    let mut bare = saml_identity("bare.saml", "", "g1");
    bare.email = None;
    bare.name_id = None;
    let bare = e
        .dir
        .login(&idgate::audit::Origin::system(), "acme", &no_link, &bare)
        .await
        .unwrap();

    let list = e.call("GET", "/Users", None).await.json();
    assert_eq!(list["totalResults"], 4, "{list}");
    let by_id = |id: String| {
        let e = &e;
        async move {
            let r = e.call("GET", &format!("/Users/{id}"), None).await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()
        }
    };
    for (id, user_name) in [
        (&sam, "Sam@X.com"),
        (&nid, "nid-7f3a"),
        (&bare, "bare.saml"),
        (&scim_made["id"].as_str().unwrap().to_owned(), "zed@x.com"),
    ] {
        let doc = by_id(id.clone()).await;
        assert_eq!(doc["userName"], user_name, "{doc}");
        assert!(
            list["Resources"].as_array().unwrap().contains(&doc),
            "the list shows {id} as GET by id does: {list}"
        );
        for filter in [
            format!("userName eq \"{}\"", user_name.to_uppercase()),
            format!("id eq \"{id}\""),
            format!("userName sw \"{}\"", &user_name[..2]),
            "active eq true".to_owned(),
            format!("active eq true and userName eq \"{user_name}\""),
            "userName pr".to_owned(),
        ] {
            assert!(
                ids(&e.find(&filter).await).contains(id),
                "{filter} finds {id}"
            );
        }
    }
    assert_eq!(
        ids(&e.find("emails.value eq \"sam@x.com\"").await),
        [sam.as_str()]
    );
    assert_eq!(
        ids(&e.find("emails eq \"sam@x.com\"").await),
        [sam.as_str()]
    );
    // Deactivated, it stays visible everywhere, as inactive.
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "active", "value": false}]});
    let r = e
        .call("PATCH", &format!("/Users/{nid}"), Some(&patch))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ids(&e.find("active eq false").await), [nid.as_str()]);
    assert_eq!(
        ids(&e.find("userName eq \"nid-7f3a\"").await),
        [nid.as_str()]
    );

    // Okta's and Entra's matching: look up by userName, then POST if not found. A POST
    // naming the SAML user (its userName) adopts it: one person, one user.
    let r = e
        .call(
            "POST",
            "/Users",
            Some(&json!({"userName": "sam@x.com", "externalId": "00u-sam",
                         "emails": [{"value": "sam@x.com", "primary": true}]})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["id"], sam, "adopted, not duplicated");
    assert_eq!(r.json()["userName"], "sam@x.com", "now the client's");
    assert_eq!(
        e.call("GET", "/Users", None).await.json()["totalResults"],
        4
    );
    // The person still logs in as that user.
    assert_eq!(
        e.dir
            .login(
                &idgate::audit::Origin::system(),
                "acme",
                &no_link,
                &saml_identity("sam.saml", "Sam@X.com", "g1")
            )
            .await
            .unwrap(),
        sam
    );
    // A second POST of that userName is the conflict it always was.
    scim_error(
        &e.call("POST", "/Users", Some(&json!({"userName": "SAM@x.com"})))
            .await,
        409,
        Some("uniqueness"),
    );
}

/// A SAML login whose email is already another person's userName (a user linked to
/// another IdP identity) still makes its own user, never logs in as the holder, and
/// gets a userName of its own that every SCIM read agrees on.
#[tokio::test(flavor = "multi_thread")]
async fn a_saml_user_whose_email_is_taken_gets_a_user_name_of_its_own() {
    let e = env("").await;
    let first = e
        .dir
        .login(
            &idgate::audit::Origin::system(),
            "acme",
            &rules(),
            &saml_identity("one.saml", "dup@x.com", "g1"),
        )
        .await
        .unwrap();
    let mut second = saml_identity("two.saml", "dup@x.com", "g1");
    second.name_id = Some("two-nameid".into());
    let second = e
        .dir
        .login(&idgate::audit::Origin::system(), "acme", &rules(), &second)
        .await
        .unwrap();
    assert_ne!(
        first, second,
        "a different IdP identity is a different user"
    );
    let doc = e
        .call("GET", &format!("/Users/{second}"), None)
        .await
        .json();
    assert_eq!(doc["userName"], "two-nameid");
    assert_eq!(
        ids(&e.find("userName eq \"two-nameid\"").await),
        [second.as_str()]
    );
    assert_eq!(ids(&e.find("userName eq \"dup@x.com\"").await), [first]);
    assert_eq!(
        e.call("GET", "/Users", None).await.json()["totalResults"],
        2
    );
}

/// Users that a SAML login made before SCIM listed them (stored without the list entry
/// or a userName) show up in the list and in userName lookups on the first SCIM
/// request, with the userName rule of new ones.
#[tokio::test(flavor = "multi_thread")]
async fn users_stored_before_every_user_was_listed_are_listed_on_first_use() {
    let e = env("").await;
    let url = {
        let cfg = Config::from_toml(&e.text, std::path::Path::new("/")).unwrap();
        match cfg.store.url {
            idgate::config::StoreUrl::Redis(u) => u,
            _ => unreachable!("these tests run on Redis"),
        }
    };
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // A SAML user as the previous version stored it: a record without a userName,
    // neither listed nor in the userName index (its other index entries do not matter
    // here and are left out).
    let legacy = json!({"id": "old.saml", "user_name": null, "external_id": null,
        "idp_subject": "old.saml", "email": "Old@X.com", "given_name": "Old",
        "family_name": null, "active": true, "deprovisioned": false,
        "memberships": [{"group_id": "g1", "role": "member"}],
        "created_at": 1, "updated_at": 1, "version": 3});
    let mut gone = legacy.clone();
    gone["id"] = json!("gone.saml");
    gone["idp_subject"] = json!("gone.saml");
    gone["email"] = json!("gone@x.com");
    gone["deprovisioned"] = json!(true);
    for (id, doc) in [("old.saml", &legacy), ("gone.saml", &gone)] {
        let _: () = redis::cmd("SET")
            .arg(format!("idgate:{{acme}}:user:{id}"))
            .arg(doc.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let list = e.call("GET", "/Users", None).await.json();
    assert_eq!(ids(&list), ["old.saml"], "{list}");
    assert_eq!(list["Resources"][0]["userName"], "Old@X.com");
    assert_eq!(
        ids(&e.find("userName eq \"old@x.com\"").await),
        ["old.saml"]
    );
    // Done once: a restarted replica, or another one, finds nothing left to do.
    let b = Idgate::start(&e.text);
    b.wait_ready().await;
    let r = send(
        "GET",
        &b.url("/_idgate/scim/acme/v2/Users"),
        &[("authorization", &format!("Bearer {}", e.token))],
        "",
    )
    .await;
    assert_eq!(ids(&r.json()), ["old.saml"]);
    let user = e.dir.user("acme", "old.saml").await.unwrap().unwrap();
    assert_eq!(user.version, 4, "written once");
}

fn rules() -> idgate::config::ProvisioningConfig {
    idgate::config::ProvisioningConfig {
        create_groups: true,
        create_users: true,
        link_by_email: true,
        default_role: "member".into(),
    }
}

fn saml_identity(uid: &str, email: &str, group: &str) -> idgate::directory::LoginIdentity {
    idgate::directory::LoginIdentity {
        user_id: uid.into(),
        name_id: Some(email.into()),
        email: Some(email.into()),
        group_id: group.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scim_user_logging_in_through_saml_is_one_person() {
    let e = env("").await;
    // Okta's externalId is its own id; the SAML uid is another id for the same person.
    let created = e
        .create_user("ann@x.com", json!({"externalId": "00u-okta-ann"}))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let who = saml_identity("ann.saml", "ann@x.com", "g1");
    let logged_in = e
        .dir
        .login(&idgate::audit::Origin::system(), "acme", &rules(), &who)
        .await
        .unwrap();
    assert_eq!(logged_in, id, "found by userName = NameID, not duplicated");
    // The link is the uid from now on, whatever the client does to its externalId.
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "externalId", "value": "00u-new"}]});
    assert_eq!(
        e.call("PATCH", &format!("/Users/{id}"), Some(&patch))
            .await
            .status,
        200
    );
    let mut renamed = who.clone();
    renamed.name_id = Some("someone-else@x.com".into());
    assert_eq!(
        e.dir
            .login(&idgate::audit::Origin::system(), "acme", &rules(), &renamed)
            .await
            .unwrap(),
        id
    );
    assert_eq!(
        e.call("GET", "/Users", None).await.json()["totalResults"],
        1
    );
    // Deactivating that SCIM user blocks the person's SAML logins.
    let off = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "active", "value": false}]});
    e.call("PATCH", &format!("/Users/{id}"), Some(&off)).await;
    match e
        .dir
        .login(&idgate::audit::Origin::system(), "acme", &rules(), &who)
        .await
    {
        Err(idgate::directory::LoginError::Blocked(_)) => {}
        other => panic!("a deactivated user logged in: {other:?}"),
    }
    // Another IdP identity with the same email is not logged in as Ann.
    let intruder = saml_identity("mallory", "ann@x.com", "g1");
    let other = e
        .dir
        .login(
            &idgate::audit::Origin::system(),
            "acme",
            &rules(),
            &intruder,
        )
        .await
        .unwrap();
    assert_ne!(other, id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recycled_email_does_not_inherit_a_deprovisioned_user() {
    let e = env("").await;
    let old = e
        .create_user(
            "old.hire@x.com",
            json!({"externalId": "ext-old", "emails": [{"value": "sales@x.com", "primary": true}]}),
        )
        .await;
    let old_id = old["id"].as_str().unwrap().to_owned();
    assert_eq!(
        e.call("DELETE", &format!("/Users/{old_id}"), None)
            .await
            .status,
        204
    );
    let new = e
        .create_user(
            "new.hire@x.com",
            json!({"externalId": "ext-new", "emails": [{"value": "sales@x.com", "primary": true}]}),
        )
        .await;
    assert_ne!(new["id"], old_id.as_str(), "a new person, a new user");
    assert_eq!(new["groups"], json!([]));
    // The departed user stays deprovisioned.
    scim_error(
        &e.call("GET", &format!("/Users/{old_id}"), None).await,
        404,
        None,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn group_membership_changes_revoke_only_what_they_should() {
    let e = env("").await;
    let a = e.create_user("ga@x.com", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = e.create_user("gb@x.com", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let g = e
        .call("POST", "/Groups", Some(&json!({"displayName": "G", "externalId": "ext-g", "members": [{"value": a}, {"value": b}]})))
        .await;
    assert_eq!(g.status, 201, "{}", g.text());
    let v1 = g.headers["etag"].to_str().unwrap().to_owned();
    let a_in_g = e.session(&a, "ext-g").await;
    let a_in_h = e.session(&a, "H").await;
    let b_in_g = e.session(&b, "ext-g").await;
    for c in [&a_in_g, &a_in_h, &b_in_g] {
        assert_eq!(e.app(c).await.status, 200);
    }
    // Removing a from G ends a's session in G only.
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "remove", "path": format!("members[value eq \"{a}\"]")}]});
    let r = e.call("PATCH", "/Groups/ext-g", Some(&patch)).await;
    assert_eq!(r.status, 200);
    assert_ne!(
        r.headers["etag"].to_str().unwrap(),
        v1,
        "a member change moves the version"
    );
    let r = e.app(&a_in_g).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (403, json!("removed_from_company"))
    );
    assert_eq!(
        e.app(&a_in_h).await.status,
        200,
        "other companies are unaffected"
    );
    // Deleting G cancels it: b's session is marked, and stays so after a restore.
    assert_eq!(e.call("DELETE", "/Groups/ext-g", None).await.status, 204);
    let r = e.app(&b_in_g).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["error"].clone()),
        (403, json!("company_cancelled"))
    );
    let restored = e
        .call("POST", "/Groups", Some(&json!({"displayName": "G again", "externalId": "ext-g", "members": [{"value": a}]})))
        .await;
    assert_eq!(restored.status, 201, "{}", restored.text());
    let restored = restored.json();
    assert_eq!(restored["id"], "ext-g");
    let members: Vec<&str> = restored["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        members,
        [a.as_str()],
        "former members do not come back with the group"
    );
    assert_eq!(
        e.app(&b_in_g).await.status,
        403,
        "a revoked session stays revoked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn name_updates_reach_the_headers_without_a_new_login() {
    let e = env("name_order = \"family_given\"").await;
    let u = e.create_user("nina@x.com", json!({})).await;
    let id = u["id"].as_str().unwrap().to_owned();
    let cookie = e.session(&id, "g-n").await;
    let name = |r: Reply| received(&r.json(), "x-idgate-name");
    assert_eq!(name(e.app(&cookie).await), ["Lee Ann"]);
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "name.familyName", "value": "Zhou"}]});
    e.call("PATCH", &format!("/Users/{id}"), Some(&patch)).await;
    let start = Instant::now();
    loop {
        if name(e.app(&cookie).await) == ["Zhou Ann"] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the name never changed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_are_capped_and_typed() {
    let e = env("").await;
    let auth = format!("Bearer {}", e.token);
    let big = format!(
        "{{\"userName\":\"{}\"}}",
        "x".repeat(idgate::scim::MAX_BODY)
    );
    let r = send(
        "POST",
        &e.url("/Users"),
        &[("authorization", &auth), ("content-type", SCIM_JSON)],
        big,
    )
    .await;
    scim_error(&r, 413, None);
    let r = send(
        "POST",
        &e.url("/Users"),
        &[("authorization", &auth), ("content-type", "text/plain")],
        "{}",
    )
    .await;
    scim_error(&r, 415, None);
    let r = send(
        "POST",
        &e.url("/Users"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json; charset=utf-8"),
        ],
        json!({"userName": "typed@x.com"}).to_string(),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.headers["content-type"], SCIM_JSON);
    let r = send(
        "POST",
        &e.url("/Users"),
        &[
            ("authorization", &auth),
            ("content-type", "application/scim+json; charset=utf-8"),
        ],
        "{not json",
    )
    .await;
    scim_error(&r, 400, Some("invalidSyntax"));
    assert!(e.idgate.wait_for_log("SCIM request refused"));
}

#[tokio::test(flavor = "multi_thread")]
async fn deactivation_over_scim_blocks_the_other_replica_within_a_second() {
    let e = env("").await;
    let b = Idgate::start(&e.text);
    b.wait_ready().await;
    let u = e.create_user("rep@x.com", json!({})).await;
    let id = u["id"].as_str().unwrap().to_owned();
    let cookie = e.session(&id, "g-r").await;
    let url = b.url("/app");
    let headers = [("cookie", cookie.as_str()), ("accept", "application/json")];
    let on_b = || get(&url, &headers);
    for _ in 0..3 {
        assert_eq!(on_b().await.status, 200);
    }
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "active", "value": false}]});
    let r = e.call("PATCH", &format!("/Users/{id}"), Some(&patch)).await;
    assert_eq!(r.status, 200);
    let start = Instant::now();
    loop {
        let r = on_b().await;
        if r.status == 403 {
            assert_eq!(r.json()["error"], "account_deactivated");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "replica B still lets the user in"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SPEC §10 "Reactivation": a session revoked because its user was deactivated counts
/// as ended once the user is active again, on every replica within a second: the
/// browser goes to the login, an API client gets the 401 of no session, never the 403
/// that no longer holds. Sessions ended for another reason stay ended, and a user who
/// is still blocked another way keeps the 403.
#[tokio::test(flavor = "multi_thread")]
async fn reactivation_sends_a_revoked_session_to_the_login_on_every_replica_within_a_second() {
    let e = env("").await;
    let b = Idgate::start(&e.text);
    b.wait_ready().await;
    let u = e.create_user("back@x.com", json!({})).await;
    let id = u["id"].as_str().unwrap().to_owned();
    let path = format!("/Users/{id}");
    let cookie = e.session(&id, "g-back").await;
    let logged_out = e.session(&id, "g-back").await;
    let patch = |active: bool| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "active", "value": active}]});
    let json_on = |replica: &Idgate, cookie: &str| {
        let url = replica.url("/app");
        let cookie = cookie.to_owned();
        async move {
            get(
                &url,
                &[("cookie", cookie.as_str()), ("accept", "application/json")],
            )
            .await
        }
    };
    let html_on = |replica: &Idgate, cookie: &str| {
        let url = replica.url("/app/page?x=1");
        let cookie = cookie.to_owned();
        async move {
            get(
                &url,
                &[("cookie", cookie.as_str()), ("accept", "text/html")],
            )
            .await
        }
    };
    // Both replicas have the session cached as valid, so each must hear of every change.
    for replica in [&e.idgate, &b] {
        assert_eq!(json_on(replica, &cookie).await.status, 200);
        assert_eq!(html_on(replica, &cookie).await.status, 200);
    }
    let cookie_header = |c: &str| -> http::HeaderMap {
        [(
            http::header::COOKIE,
            http::HeaderValue::from_str(c).unwrap(),
        )]
        .into_iter()
        .collect()
    };
    let ended = e
        .sessions
        .logout(
            &idgate::audit::Origin::system(),
            &cookie_header(&logged_out),
            &|_| true,
        )
        .await
        .unwrap();
    assert!(ended.is_some(), "logged out");

    assert_eq!(
        e.call("PATCH", &path, Some(&patch(false))).await.status,
        200
    );
    for replica in [&e.idgate, &b] {
        let start = Instant::now();
        loop {
            let r = json_on(replica, &cookie).await;
            if r.status == 403 {
                assert_eq!(r.json()["error"], "account_deactivated");
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(1), "still let in");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(html_on(replica, &cookie).await.status, 403);
    }

    assert_eq!(e.call("PATCH", &path, Some(&patch(true))).await.status, 200);
    let reactivated = Instant::now();
    for replica in [&b, &e.idgate] {
        loop {
            let r = json_on(replica, &cookie).await;
            if r.status == 401 {
                assert_eq!(r.json()["error"], "unauthenticated", "as with no session");
                break;
            }
            assert_eq!(r.status, 403, "{}", r.text());
            assert!(
                reactivated.elapsed() < Duration::from_secs(1),
                "a reactivated user still gets the 403 on {}",
                replica.url("")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = html_on(replica, &cookie).await;
        assert_eq!(r.status, 302, "{}", r.text());
        let to = r.headers["location"].to_str().unwrap();
        assert!(to.contains("/_idgate/saml/acme/login"), "{to}");
        assert!(
            to.contains("return_to=/app/page"),
            "with the original path: {to}"
        );
        // A session ended by logout stays ended: no session, like before.
        assert_eq!(json_on(replica, &logged_out).await.status, 401);
    }
    assert!(
        matches!(
            e.sessions
                .authenticate(&e.sessions.snapshot(), &cookie_header(&cookie), &|_| true)
                .await,
            idgate::session::Auth::Missing
        ),
        "the library agrees: no session"
    );

    // Still blocked another way (removed from the company the session was made in):
    // reactivating the account alone does not lift that 403.
    let other = e.session(&id, "g-back").await;
    e.dir
        .remove_membership(&idgate::audit::Origin::system(), "acme", &id, "g-back")
        .await
        .unwrap();
    e.call("PATCH", &path, Some(&patch(false))).await;
    e.call("PATCH", &path, Some(&patch(true))).await;
    let start = Instant::now();
    loop {
        let r = json_on(&b, &other).await;
        assert_eq!(r.status, 403, "never let in, never sent to the login");
        if r.json()["error"] == "removed_from_company" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(1), "{}", r.text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every documented Okta and Entra request, replayed in order against a fresh tenant.
#[tokio::test(flavor = "multi_thread")]
async fn vendor_requests_replay() {
    for vendor in ["okta", "entra", "entra-aadOptscim062020"] {
        let e = env("").await;
        // `{id}` is the seed user until a fixture creates one: later requests are about
        // the user the vendor just created.
        let mut user = e.create_user("seed-user@x.com", json!({})).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let second = e.create_user("seed-2@x.com", json!({})).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let third = e.create_user("seed-3@x.com", json!({})).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let group = e
            .call(
                "POST",
                "/Groups",
                Some(&json!({"displayName": "Seed", "members": [{"value": second}]})),
            )
            .await
            .json()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let dir = format!(
            "{}/tests/fixtures/scim/{vendor}",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|f| f.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty());
        for file in files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let raw = std::fs::read_to_string(&file).unwrap();
            let text = raw
                .replace("{id}", &user)
                .replace("{groupId}", &group)
                .replace("{userId}", &second)
                .replace("{userId2}", &third);
            let fx: Value = serde_json::from_str(&text).unwrap();
            let method = fx["method"].as_str().unwrap();
            let mut path = fx["path"].as_str().unwrap().to_owned();
            if let Some(query) = fx["query"].as_str() {
                path = format!("{path}?{query}");
            }
            let body = fx["body"].as_object().map(|_| fx["body"].clone());
            let r = e.call(method, &path, body.as_ref()).await;
            let want: u16 = match (vendor, name.as_str(), method) {
                // Okta's two documented creates are of the same person.
                ("okta", n, _) if n.starts_with("03-") => 409,
                // The doc's unquoted `externalId eq jyoung` is not RFC 7644 grammar (the
                // service itself quotes values): refused, not guessed at.
                ("entra", n, _) if n.starts_with("03-") => 400,
                (_, _, "POST") => 201,
                (_, _, "DELETE") => 204,
                _ => 200,
            };
            assert_eq!(r.status.as_u16(), want, "{vendor}/{name}: {}", r.text());
            if method == "POST" && path == "/Users" && want == 201 {
                user = r.json()["id"].as_str().unwrap().to_owned();
            }
            if name.contains("remove-member") {
                let g = e
                    .call("GET", &format!("/Groups/{group}"), None)
                    .await
                    .json();
                let members = g["members"].as_array().cloned().unwrap_or_default();
                assert!(
                    !members.iter().any(|m| m["value"] == second),
                    "{vendor}/{name} left the member in: {g}"
                );
            }
            if name.contains("disable") || name.contains("deactivate") {
                let u = e.dir.user("acme", &user).await.unwrap().unwrap();
                assert!(!u.active, "{vendor}/{name} did not deactivate");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_never_become_identity() {
    let e = env("").await;
    let user = |user_name: &str, given: &str, display: &str, email: &str, external: &str| {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": user_name,
            "externalId": external,
            "displayName": display,
            "name": {"givenName": given, "familyName": "Lee"},
            "emails": [{"value": email, "primary": true}],
        })
    };
    let ok = |n: &str| format!("{n}@x.com");
    for control in ['\r', '\n', '\u{0}', '\u{1b}', '\u{7f}'] {
        let bad = |s: &str| format!("{s}{control}x");
        for (what, body) in [
            ("userName", user(&bad("cc"), "Ann", "Ann", &ok("a"), "e1")),
            (
                "givenName",
                user(&ok("b"), &bad("Ann"), "Ann", &ok("b"), "e2"),
            ),
            (
                "displayName",
                user(&ok("c"), "Ann", &bad("Ann"), &ok("c"), "e3"),
            ),
            (
                "emails",
                user(&ok("d"), "Ann", "Ann", &bad("d@x.com"), "e4"),
            ),
            (
                "externalId",
                user(&ok("e"), "Ann", "Ann", &ok("e"), &bad("e5")),
            ),
            (
                "a trailing control character",
                user(&format!("f@x.com{control}"), "Ann", "Ann", &ok("f"), "e6"),
            ),
        ] {
            let r = e.call("POST", "/Users", Some(&body)).await;
            scim_error(&r, 400, Some("invalidValue"));
            assert!(
                !r.text().contains(control),
                "{what} {control:?}: the value is not echoed"
            );
        }
    }
    // PUT and PATCH are held to the same rule, and the user stays as it was.
    let u = e.create_user("ok@x.com", json!({})).await;
    let id = u["id"].as_str().unwrap();
    let r = e
        .call(
            "PUT",
            &format!("/Users/{id}"),
            Some(&user("ok@x.com", "Ann\nB", "Ann", "ok@x.com", "e7")),
        )
        .await;
    scim_error(&r, 400, Some("invalidValue"));
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "path": "name.familyName", "value": "Lee\r"}]});
    let r = e.call("PATCH", &format!("/Users/{id}"), Some(&patch)).await;
    scim_error(&r, 400, Some("invalidValue"));
    let shown = e.call("GET", &format!("/Users/{id}"), None).await.json();
    assert_eq!(shown["name"]["familyName"], "Lee");
    // Group names too.
    let r = e
        .call(
            "POST",
            "/Groups",
            Some(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Acme\nInc."})),
        )
        .await;
    scim_error(&r, 400, Some("invalidValue"));
    // A tab is fine.
    e.create_user("tab@x.com", json!({"displayName": "Ann\tLee"}))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identity_that_cannot_be_a_header_is_refused_not_replaced() {
    let e = env("").await;
    // Written behind SCIM's back (an older idgate, or a store edited by hand): two
    // users whose names cannot travel as header values.
    let mut cookies = Vec::new();
    for (id, given) in [("broken-1", "Ann\nEve"), ("broken-2", "Bob\rEve")] {
        let mut u = idgate::directory::model::User::new(id, idgate::directory::now());
        u.given_name = Some(given.into());
        e.dir.create_user("acme", &u).await.unwrap();
        cookies.push(e.session(id, "g-broken").await);
    }
    for cookie in &cookies {
        let r = e.app(cookie).await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.json()["error"], "malformed_attribute", "{}", r.text());
        assert!(
            r.json().get("headers").is_none(),
            "never forwarded: {}",
            r.text()
        );
    }
    assert!(
        e.idgate.wait_for_log("\"attribute\":\"given_name\""),
        "{}",
        e.idgate.logs()
    );
    assert!(
        !e.idgate.logs().contains("Eve"),
        "the value stays out of the log"
    );
    // Once the name is corrected the session works.
    e.dir
        .update_user(&idgate::audit::Origin::system(), "acme", "broken-1", |u| {
            u.given_name = Some("Ann".into())
        })
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let r = e.app(&cookies[0]).await;
        if r.status == 200 {
            assert_eq!(received(&r.json(), "x-idgate-user-id"), ["broken-1"]);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(6), "{}", r.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
