//! `idgate demo`: from one command to a page showing your identity, through the built-in
//! development IdP and the real SAML validation path.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

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
    let port = support::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args([
            "--log-format",
            "text",
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("IDGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn idgate demo");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let base = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("demo prints the URL to open");
        if let Some(rest) = line.trim().strip_prefix("Open ") {
            break rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches([':', '/'])
                .to_owned();
        }
    };
    assert_eq!(base, format!("http://127.0.0.1:{port}"));
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
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(page.status, 200);
    let page = page.text();
    assert!(page.contains("Request as the app received it"), "{page}");
    assert!(page.contains("<code>grace</code>"), "{page}");
    assert!(page.contains("<code>Grace Hopper</code>"), "{page}");
    assert!(page.contains("<code>navy</code>"), "{page}");
    assert!(page.contains("verified (EdDSA"), "{page}");
}
