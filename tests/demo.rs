//! `idgate demo`: from one command to a page showing your identity, through the built-in
//! development IdP and the real SAML validation path.

mod support;

fn input_value(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no input {name} in {html}"))
        + marker.len();
    html[start..start + html[start..].find('"').unwrap()]
        .replace("&amp;", "&")
        .replace("&quot;", "\"")
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut f = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        f.append_pair(k, v);
    }
    f.finish()
}

#[tokio::test]
async fn a_person_logs_in_through_the_dev_idp_and_sees_their_identity() {
    let demo = support::demo::Demo::start();
    let base = demo.base.clone();
    let html = [("accept", "text/html")];

    // 1. The app needs a login: to the tenant's login, then to the dev IdP.
    let r = support::get(&format!("{base}/"), &html).await;
    assert_eq!(r.status, 302);
    let login = r.headers["location"].to_str().unwrap().to_owned();
    assert!(login.starts_with("/_idgate/saml/demo/login"), "{login}");
    let r = support::get(&format!("{base}{login}"), &html).await;
    assert_eq!(r.status, 302);
    let idp = r.headers["location"].to_str().unwrap().to_owned();
    // The browser keeps the login cookie that ties the response to this login.
    let login_cookie = r.cookie();
    assert!(
        idp.starts_with(&format!("{base}/_idgate/dev-idp/sso?SAMLRequest=")),
        "{idp}"
    );

    // 2. The dev IdP's form, filled in as a person would.
    let page = support::get(&idp, &html).await.text();
    let request_id = input_value(&page, "request_id");
    assert!(request_id.starts_with('_'), "{page}");
    let relay = input_value(&page, "relay_state");
    let body = form(&[
        ("request_id", &request_id),
        ("relay_state", &relay),
        ("uid", "grace"),
        ("name", "Grace"),
        ("surname", "Hopper"),
        ("email", "grace@example.com"),
        ("group_uid", "navy"),
        ("group_name", "US Navy"),
        ("group_role", "Admin"),
    ]);
    let ct = [("content-type", "application/x-www-form-urlencoded")];
    let autopost = support::send("POST", &format!("{base}/_idgate/dev-idp/sso"), &ct, body).await;
    assert_eq!(autopost.status, 200);
    let autopost = autopost.text();

    // 3. The browser posts the signed response to the ACS and is sent back, logged in.
    let acs = {
        let start = autopost.find("action=\"").unwrap() + 8;
        autopost[start..start + autopost[start..].find('"').unwrap()].to_owned()
    };
    assert_eq!(acs, format!("{base}/_idgate/saml/demo/acs"));
    let body = form(&[
        ("SAMLResponse", &input_value(&autopost, "SAMLResponse")),
        ("RelayState", &input_value(&autopost, "RelayState")),
    ]);
    let r = support::send("POST", &acs, &[ct[0], ("cookie", &login_cookie)], body).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.headers["location"], "/");
    let cookie = r.cookie();

    // 4. The echo page shows the identity the app received, and that the JWT verified.
    let page = support::get(
        &format!("{base}/"),
        &[("accept", "text/html"), ("cookie", &cookie)],
    )
    .await;
    assert_eq!(page.status, 200);
    let page = page.text();
    assert!(page.contains("Request as the app received it"), "{page}");
    assert!(page.contains("<b id=\"who-user\">grace</b>"), "{page}");
    assert!(page.contains("<b id=\"who-role\">Admin</b>"), "{page}");
    assert!(page.contains("<code>grace</code>"), "{page}");
    assert!(page.contains("<code>Grace Hopper</code>"), "{page}");
    assert!(page.contains("<code>navy</code>"), "{page}");
    assert!(page.contains("verified (EdDSA"), "{page}");
}

#[tokio::test]
async fn the_demo_prints_a_scim_token_that_opens_its_tenants_scim_and_nothing_else() {
    let demo = support::demo::Demo::start();
    assert_eq!(
        demo.scim_base,
        format!("{}/_idgate/scim/demo/v2", demo.base),
        "{}",
        demo.printed
    );
    // 256 bits, base64url: the token `idgate token` makes.
    assert_eq!(demo.scim_token.len(), 43, "{}", demo.printed);
    let users = format!("{}/Users", demo.scim_base);
    let bearer = format!("Bearer {}", demo.scim_token);
    let r = support::get(&users, &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:ListResponse"
    );
    let r = support::get(&users, &[("authorization", "Bearer not-the-token")]).await;
    assert_eq!(r.status, 401, "{}", r.text());

    // Every run makes its own token: one printed earlier opens nothing now.
    let other = support::demo::Demo::start();
    assert_ne!(other.scim_token, demo.scim_token);
    let r = support::get(
        &format!("{}/Users", other.scim_base),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
}
