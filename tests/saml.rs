//! SAML SSO end to end: SP-initiated and IdP-initiated logins with responses signed by
//! the `xmlsec1` CLI, every rejection, and just-in-time provisioning.

mod support;

#[path = "support/saml.rs"]
mod saml_support;

use std::io::Read;

use idgate::config::Config;
use saml_support::*;
use support::*;

const IDP: &str = "https://idp.example.com/metadata";
const ACS: &str = "http://127.0.0.1/_idgate/saml/acme/acs";
const SP: &str = "http://127.0.0.1/_idgate/saml/acme/metadata";

struct Sso {
    app: idgate::Running,
    /// Login cookie per pending request id, as the browser that began it holds it.
    cookies: std::sync::Mutex<std::collections::HashMap<String, String>>,
    dir: idgate::directory::Directory,
    idp: TestIdp,
    _up: TestUpstream,
}

async fn start(saml_extra: &str, extra: &str) -> Sso {
    let idp = TestIdp::new("test-idp");
    let up = TestUpstream::start().await;
    let text = config(
        up.addr,
        "",
        &format!("{extra}\n{}", acme_tenant(IDP, &idp.cert, saml_extra)),
    );
    let app = idgate::App::new(Config::from_toml(&text, std::path::Path::new("/")).unwrap())
        .expect("app");
    let dir = app.directory().clone();
    Sso {
        app: app.start().await.unwrap(),
        cookies: Default::default(),
        dir,
        idp,
        _up: up,
    }
}

impl Sso {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.public_addr())
    }

    /// Starts an SP-initiated login; returns the AuthnRequest's id (also the RelayState).
    async fn begin(&self, return_to: &str) -> String {
        let r = get(
            &self.url(&format!("/_idgate/saml/acme/login?return_to={return_to}")),
            &[],
        )
        .await;
        assert_eq!(r.status, 302);
        let location = url::Url::parse(r.headers["location"].to_str().unwrap()).unwrap();
        assert!(
            location
                .host_str()
                .is_some_and(|h| h.ends_with("idp.example.com"))
        );
        let q: std::collections::HashMap<_, _> = location.query_pairs().into_owned().collect();
        let deflated = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            &q["SAMLRequest"],
        )
        .unwrap();
        let mut xml = String::new();
        flate2::read::DeflateDecoder::new(&deflated[..])
            .read_to_string(&mut xml)
            .unwrap();
        let relay = q["RelayState"].clone();
        let cookie = r.headers["set-cookie"].to_str().unwrap();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("Max-Age=600"),
            "{cookie}"
        );
        let cookie = cookie.split(';').next().unwrap().to_owned();
        self.cookies.lock().unwrap().insert(relay.clone(), cookie);
        assert!(xml.contains(&format!("ID=\"{relay}\"")), "{xml}");
        assert!(
            relay.len() >= 33,
            "request ids carry 128 random bits: {relay}"
        );
        assert!(xml.contains(ACS) && xml.contains(SP), "{xml}");
        // The request names where and how the answer must come, so the IdP need not
        // fall back to whatever it has registered.
        assert!(
            xml.contains(&format!("AssertionConsumerServiceURL=\"{ACS}\""))
                && xml
                    .contains("ProtocolBinding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\""),
            "{xml}"
        );
        relay
    }

    async fn post(&self, xml: &str, relay: Option<&str>) -> Reply {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("SAMLResponse", &b64(xml));
        if let Some(r) = relay {
            form.append_pair("RelayState", r);
        }
        let cookie = relay.and_then(|r| self.cookies.lock().unwrap().get(r).cloned());
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(c) = &cookie {
            headers.push(("cookie", c));
        }
        send(
            "POST",
            &self.url("/_idgate/saml/acme/acs"),
            &headers,
            form.finish(),
        )
        .await
    }
}

fn session_cookie(r: &Reply) -> String {
    r.cookie()
}

/// What the app received on the session a login made, or None when the login was
/// refused with 403, the only other answer allowed.
async fn echo_if_logged_in(sso: &Sso, r: &Reply) -> Option<serde_json::Value> {
    if r.status != 303 {
        assert_eq!(r.status, 403, "{}", r.text());
        return None;
    }
    Some(
        get(&sso.url("/x"), &[("cookie", &session_cookie(r))])
            .await
            .json(),
    )
}

/// Store settings for running a scenario against a private `redis-server`.
fn redis_extra(redis: &RedisServer, keys: &std::path::Path) -> String {
    format!(
        "[store]\nurl = \"{}\"\n[identity]\nsigning_key = \"file:{}\"\n",
        redis.url(),
        signing_key_file(keys, "EdDSA").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sp_initiated_login_provisions_and_forwards_the_identity() {
    sp_initiated(&start("", "").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sp_initiated_login_on_redis() {
    let redis = RedisServer::start();
    let keys = tempfile::tempdir().unwrap();
    sp_initiated(&start("", &redis_extra(&redis, keys.path())).await).await;
}

async fn sp_initiated(sso: &Sso) {
    let meta = get(&sso.url("/_idgate/saml/acme/metadata"), &[]).await;
    assert_eq!(meta.status, 200);
    let meta = meta.text();
    assert!(meta.contains(&format!("entityID=\"{SP}\"")), "{meta}");
    assert!(meta.contains(ACS), "{meta}");
    assert!(meta.contains("nameid-format:persistent"), "{meta}");
    assert!(meta.contains("WantAssertionsSigned=\"false\""), "{meta}");

    // A response to a login that this browser did not start is refused (login CSRF):
    // the attacker's own signed response, posted without the victim's login cookie.
    let other = sso.begin("/").await;
    let stolen =
        signed_assertion_response(&ResponseSpec::new(IDP, ACS, SP, Some(&other)), &sso.idp);
    sso.cookies.lock().unwrap().remove(&other);
    let r = sso.post(&stolen, Some(&other)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.headers.get("set-cookie").is_none());

    let id = sso.begin("/reports%3Fy%3D1").await;
    let spec = ResponseSpec::new(IDP, ACS, SP, Some(&id));
    let r = sso
        .post(&signed_assertion_response(&spec, &sso.idp), Some(&id))
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.headers["location"], "/reports?y=1");
    let cookie = session_cookie(&r);

    let echo = get(&sso.url("/reports"), &[("cookie", &cookie)])
        .await
        .json();
    assert_eq!(received(&echo, "x-idgate-user-id"), ["idp-user-1"]);
    assert_eq!(received(&echo, "x-idgate-group-id"), ["grp-1"]);
    assert_eq!(received(&echo, "x-idgate-email"), ["ada@example.com"]);
    assert_eq!(received(&echo, "x-idgate-name"), ["Ada Lovelace"]);
    assert_eq!(received(&echo, "x-idgate-role"), ["Admin"]);
    let group = sso
        .dir
        .group("acme", "grp-1")
        .await
        .unwrap()
        .expect("company created");
    assert_eq!(group.name, "Analytical Engines");

    // The same response again is a replay; the request id is used up too.
    let again = sso
        .post(&signed_assertion_response(&spec, &sso.idp), Some(&id))
        .await;
    assert_eq!(
        again.status, 403,
        "a second response to one request is refused"
    );
    let replay = sso
        .post(
            &signed_assertion_response(
                &ResponseSpec {
                    in_response_to: None,
                    ..spec.clone()
                },
                &sso.idp,
            ),
            None,
        )
        .await;
    assert_eq!(replay.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_and_misaddressed_responses_are_refused() {
    let sso = start("want_assertions_signed = true", "").await;
    let other = TestIdp::new("evil-idp");

    let mut cases: Vec<(&str, String, Option<String>)> = Vec::new();

    // Each case gets its own request id.
    let id = sso.begin("/").await;
    cases.push((
        "unsigned",
        unsigned_response(&ResponseSpec::new(IDP, ACS, SP, Some(&id))),
        Some(id),
    ));
    let id = sso.begin("/").await;
    let signed = signed_assertion_response(&ResponseSpec::new(IDP, ACS, SP, Some(&id)), &sso.idp);
    cases.push((
        "tampered",
        signed.replace("ada@example.com", "root@example.com"),
        Some(id),
    ));
    let id = sso.begin("/").await;
    cases.push((
        "wrong key, its certificate in KeyInfo",
        signed_assertion_response(&ResponseSpec::new(IDP, ACS, SP, Some(&id)), &other),
        Some(id),
    ));
    let id = sso.begin("/").await;
    cases.push((
        "wrong audience",
        signed_assertion_response(
            &ResponseSpec::new(IDP, ACS, "https://other-sp", Some(&id)),
            &sso.idp,
        ),
        Some(id),
    ));
    let id = sso.begin("/").await;
    cases.push((
        "no audience restriction",
        signed_assertion_response(&ResponseSpec::new(IDP, ACS, "", Some(&id)), &sso.idp),
        Some(id),
    ));
    let id = sso.begin("/").await;
    cases.push((
        "wrong issuer",
        signed_assertion_response(
            &ResponseSpec::new("https://evil-idp", ACS, SP, Some(&id)),
            &sso.idp,
        ),
        Some(id),
    ));
    let id = sso.begin("/").await;
    let mut s = ResponseSpec::new(IDP, ACS, SP, Some(&id));
    s.recipient = "https://elsewhere/acs".into();
    cases.push((
        "wrong recipient",
        signed_assertion_response(&s, &sso.idp),
        Some(id),
    ));
    let id = sso.begin("/").await;
    let mut s = ResponseSpec::new(IDP, ACS, SP, Some(&id));
    s.destination = "https://elsewhere/acs".into();
    cases.push(("wrong destination", signed_response(&s, &sso.idp), Some(id)));
    let id = sso.begin("/").await;
    let mut s = ResponseSpec::new(IDP, ACS, SP, Some(&id));
    s.not_before = -600;
    s.not_on_or_after = -120;
    cases.push(("expired", signed_assertion_response(&s, &sso.idp), Some(id)));
    let id = sso.begin("/").await;
    let mut s = ResponseSpec::new(IDP, ACS, SP, Some(&id));
    s.not_before = 120;
    s.not_on_or_after = 600;
    cases.push((
        "not yet valid",
        signed_assertion_response(&s, &sso.idp),
        Some(id),
    ));
    let id = sso.begin("/").await;
    let mut s = ResponseSpec::new(IDP, ACS, SP, Some(&id));
    s.status = "urn:oasis:names:tc:SAML:2.0:status:Requester".into();
    cases.push(("failed status", signed_response(&s, &sso.idp), Some(id)));
    cases.push((
        "unknown InResponseTo",
        signed_assertion_response(
            &ResponseSpec::new(IDP, ACS, SP, Some("_never-issued")),
            &sso.idp,
        ),
        None,
    ));
    cases.push((
        "unsolicited while allow_idp_initiated is off",
        signed_assertion_response(&ResponseSpec::new(IDP, ACS, SP, None), &sso.idp),
        None,
    ));
    let id = sso.begin("/").await;
    cases.push((
        "response signed, assertion unsigned, want_assertions_signed",
        signed_response(&ResponseSpec::new(IDP, ACS, SP, Some(&id)), &sso.idp),
        Some(id),
    ));

    let expected = [
        "signature",
        "signature",
        "signature",
        "audience",
        "audience",
        "issuer",
        "recipient",
        "destination",
        "expired",
        "not_yet_valid",
        "status",
        "unknown_request",
        "in_response_to",
        "assertion_unsigned",
    ];
    assert_eq!(cases.len(), expected.len());
    let metrics_url = format!("http://{}/metrics", sso.app.admin_addr());
    let count = |text: &str, reason: &str| -> u64 {
        let prefix = format!("idgate_saml_rejections_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    for ((name, xml, relay), reason) in cases.into_iter().zip(expected) {
        let before = count(&get(&metrics_url, &[]).await.text(), reason);
        let r = sso.post(&xml, relay.as_deref()).await;
        assert_eq!(r.status, 403, "{name}: {}", r.text());
        assert!(
            r.headers.get("set-cookie").is_none(),
            "{name}: got a session"
        );
        assert!(
            r.text().contains("Reference:"),
            "{name}: page names its reference"
        );
        let after = count(&get(&metrics_url, &[]).await.text(), reason);
        assert_eq!(after, before + 1, "{name}: not counted as {reason}");
    }
    let metrics = get(&metrics_url, &[]).await.text();
    assert!(metrics.contains("idgate_logins_total 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_wrapping_and_comment_injection_cannot_change_the_identity() {
    let sso = start("allow_idp_initiated = true", "").await;
    let forged = |uid: &str| {
        assertion_xml(
            &ResponseSpec::new(IDP, ACS, SP, None)
                .attr("uid", uid)
                .attr("group_uid", "grp-evil"),
            "",
        )
    };
    let spec = ResponseSpec::new(IDP, ACS, SP, None).attr("uid", "honest-user");
    let signed = signed_assertion_response(&spec, &sso.idp);
    // XSW: a forged, unsigned assertion before, and after, the signed one.
    let cut = signed.find("<saml:Assertion").unwrap();
    let before = format!("{}{}{}", &signed[..cut], forged("admin"), &signed[cut..]);
    let end = signed.rfind("</samlp:Response>").unwrap();
    let after = format!("{}{}{}", &signed[..end], forged("admin"), &signed[end..]);
    // The signed assertion moved inside an extension of a forged one.
    for (name, xml) in [("forged before", before), ("forged after", after)] {
        let r = sso.post(&xml, None).await;
        if let Some(echo) = echo_if_logged_in(&sso, &r).await {
            assert_eq!(
                received(&echo, "x-idgate-user-id"),
                ["honest-user"],
                "{name}"
            );
            assert_eq!(received(&echo, "x-idgate-group-id"), ["grp-1"], "{name}");
        }
    }

    // A second IdP-signed Response (another user's) hidden in a ds:Object of the
    // honest Assertion's signature: outside what that signature covers, so it still
    // verifies, and the hidden Response verifies on its own. The login must be the
    // honest Assertion's, which is the one the Response around it holds, or nobody's.
    let victim = ResponseSpec::new(IDP, ACS, SP, None)
        .attr("uid", "victim")
        .attr("group_uid", "grp-victim");
    let hidden = signed_response(&victim, &sso.idp);
    let hidden = &hidden[hidden.find("<samlp:Response").unwrap()..];
    let honest = ResponseSpec::new(IDP, ACS, SP, None).attr("uid", "honest-user");
    let assertion = signed_assertion(&honest, &sso.idp);
    let close = assertion.find("</ds:Signature>").expect("a signature");
    let assertion = format!(
        "{}<ds:Object>{hidden}</ds:Object>{}",
        &assertion[..close],
        &assertion[close..]
    );
    let nested = response_xml(&honest, "_r-outer", "", &assertion);
    let r = sso.post(&nested, None).await;
    if let Some(echo) = echo_if_logged_in(&sso, &r).await {
        assert_eq!(
            received(&echo, "x-idgate-user-id"),
            ["honest-user"],
            "a Response hidden inside the Assertion's signature became the identity"
        );
    }

    // A solicited assertion, captured, in a Response that drops its InResponseTo to
    // pass as unsolicited (this tenant allows IdP-initiated logins).
    let solicited = ResponseSpec::new(IDP, ACS, SP, Some("_req-of-someone-else"));
    let unsolicited = ResponseSpec::new(IDP, ACS, SP, None);
    let rewrapped = response_xml(
        &unsolicited,
        "_r-rewrapped",
        "",
        &signed_assertion(&solicited, &sso.idp),
    );
    let r = sso.post(&rewrapped, None).await;
    assert_eq!(r.status, 403, "{}", r.text());

    // Comment injection: the IdP signed "victim@example.com.evil.test"; a comment
    // splits the text node without breaking the (comment-free C14N) signature.
    let spec = ResponseSpec::new(IDP, ACS, SP, None).attr("uid", "victim@example.com.evil.test");
    let signed = signed_assertion_response(&spec, &sso.idp);
    let injected = signed.replace(
        ">victim@example.com.evil.test<",
        ">victim@example.com<!---->.evil.test<",
    );
    assert_ne!(injected, signed);
    let r = sso.post(&injected, None).await;
    if let Some(echo) = echo_if_logged_in(&sso, &r).await {
        assert_eq!(
            received(&echo, "x-idgate-user-id"),
            ["victim@example.com.evil.test"],
            "the whole signed value, never the part before the comment"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha1_is_refused_unless_the_tenant_allows_it_and_certificates_can_roll_over() {
    let strict = start("allow_idp_initiated = true", "").await;
    let spec = ResponseSpec::new(IDP, ACS, SP, None);
    let r = strict
        .post(&sha1_signed_assertion_response(&spec, &strict.idp), None)
        .await;
    assert_eq!(r.status, 403, "SHA-1 refused by default: {}", r.text());

    let legacy = start("allow_idp_initiated = true\nallow_sha1 = true", "").await;
    let r = legacy
        .post(
            &sha1_signed_assertion_response(&spec.clone().fresh(), &legacy.idp),
            None,
        )
        .await;
    assert_eq!(r.status, 303, "allow_sha1 accepts SHA-1: {}", r.text());

    // Rollover: the configured file holds the old and the new certificate.
    let old = TestIdp::new("old-idp");
    let new = TestIdp::new("new-idp");
    let both = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        both.path(),
        format!(
            "{}{}",
            std::fs::read_to_string(&old.cert).unwrap(),
            std::fs::read_to_string(&new.cert).unwrap()
        ),
    )
    .unwrap();
    let up = TestUpstream::start().await;
    let text = config(
        up.addr,
        "",
        &acme_tenant(IDP, both.path(), "allow_idp_initiated = true"),
    );
    let app = idgate::App::new(Config::from_toml(&text, std::path::Path::new("/")).unwrap())
        .unwrap()
        .start()
        .await
        .unwrap();
    for idp in [&old, &new] {
        let xml = signed_assertion_response(&spec.clone().fresh(), idp);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("SAMLResponse", &b64(&xml))
            .finish();
        let r = send(
            "POST",
            &format!("http://{}/_idgate/saml/acme/acs", app.public_addr()),
            &[("content-type", "application/x-www-form-urlencoded")],
            body,
        )
        .await;
        assert_eq!(r.status, 303, "{}", r.text());
    }
}

/// Values typed with a prefix declared only on the Response (`xs` of `xsi:type`), which
/// the exclusive C14N the signature covers leaves undeclared: the login still reads
/// every value exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_with_prefixes_declared_on_the_response_log_in() {
    let sso = start("allow_idp_initiated = true", "").await;
    let spec = ResponseSpec::new(IDP, ACS, SP, None)
        .attr("uid", "typed-user")
        .attr("name", "Ada & <Co>");
    let xml = typed_signed_assertion_response(&spec, &sso.idp);
    assert!(xml.contains(r#"xsi:type="xs:string""#), "{xml}");
    let r = sso.post(&xml, None).await;
    assert_eq!(r.status, 303, "{}", r.text());
    let echo = get(&sso.url("/x"), &[("cookie", &session_cookie(&r))])
        .await
        .json();
    assert_eq!(received(&echo, "x-idgate-user-id"), ["typed-user"]);
    assert_eq!(received(&echo, "x-idgate-group-id"), ["grp-1"]);
    assert_eq!(received(&echo, "x-idgate-email"), ["ada@example.com"]);
    assert_eq!(received(&echo, "x-idgate-name"), ["Ada & <Co> Lovelace"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_initiated_logins_follow_safe_relay_states_only() {
    let sso = start("allow_idp_initiated = true", "").await;
    let r = sso
        .post(
            &signed_assertion_response(&ResponseSpec::new(IDP, ACS, SP, None), &sso.idp),
            Some("/inbox"),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.headers["location"], "/inbox");
    for evil in [
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
    ] {
        let r = sso
            .post(
                &signed_assertion_response(&ResponseSpec::new(IDP, ACS, SP, None), &sso.idp),
                Some(evil),
            )
            .await;
        assert_eq!(r.status, 303);
        assert_eq!(r.headers["location"], "/", "{evil} must not be followed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_creates_one_company_links_by_email_and_blocks_the_inactive() {
    provisioning(&start("allow_idp_initiated = true", "").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_rules_hold_on_redis() {
    let redis = RedisServer::start();
    let keys = tempfile::tempdir().unwrap();
    provisioning(
        &start(
            "allow_idp_initiated = true",
            &redis_extra(&redis, keys.path()),
        )
        .await,
    )
    .await;
}

async fn provisioning(sso: &Sso) {
    // 50 concurrent first logins from one new group: exactly one company.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let spec = ResponseSpec::new(IDP, ACS, SP, None)
            .attr("uid", &format!("racer-{i}"))
            .attr("email", &format!("racer-{i}@example.com"))
            .attr("group_uid", "grp-race")
            .attr("group_name", &format!("Race {i}"));
        let xml = signed_assertion_response(&spec, &sso.idp);
        let url = sso.url("/_idgate/saml/acme/acs");
        tasks.push(tokio::spawn(async move {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("SAMLResponse", &b64(&xml))
                .finish();
            send(
                "POST",
                &url,
                &[("content-type", "application/x-www-form-urlencoded")],
                body,
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 303);
    }
    let group = sso.dir.group("acme", "grp-race").await.unwrap().unwrap();
    assert!(group.name.starts_with("Race "));
    for i in 0..50 {
        let u = sso
            .dir
            .user("acme", &format!("racer-{i}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(u.role_in("grp-race"), Some("Admin"));
    }

    // User migration: an existing user with that email gets the new IdP id linked.
    let mut legacy = idgate::directory::model::User::new("legacy-42", idgate::directory::now());
    legacy.email = Some("grace@example.com".into());
    sso.dir.create_user("acme", &legacy).await.unwrap();
    let spec = ResponseSpec::new(IDP, ACS, SP, None)
        .attr("uid", "new-idp-id-7")
        .attr("email", "Grace@Example.com");
    let r = sso
        .post(&signed_assertion_response(&spec, &sso.idp), None)
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let echo = get(&sso.url("/x"), &[("cookie", &session_cookie(&r))])
        .await
        .json();
    assert_eq!(
        received(&echo, "x-idgate-user-id"),
        ["legacy-42"],
        "linked, not duplicated"
    );
    assert!(
        sso.dir
            .user("acme", "new-idp-id-7")
            .await
            .unwrap()
            .is_none()
    );
    // Later logins find the user by the linked id.
    let r = sso
        .post(
            &signed_assertion_response(&spec.clone().attr("email", "g2@example.com"), &sso.idp),
            None,
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let echo = get(&sso.url("/x"), &[("cookie", &session_cookie(&r))])
        .await
        .json();
    assert_eq!(received(&echo, "x-idgate-user-id"), ["legacy-42"]);
    assert_eq!(
        received(&echo, "x-idgate-email"),
        ["g2@example.com"],
        "email refreshed"
    );

    // A deactivated user, or a cancelled company, gets no session but a 403 saying so.
    sso.dir
        .deactivate_user(&idgate::audit::Origin::system(), "acme", "legacy-42")
        .await
        .unwrap();
    let r = sso
        .post(
            &signed_assertion_response(&spec.clone().fresh(), &sso.idp),
            None,
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("deactivated"));
    assert!(r.headers.get("set-cookie").is_none());
    sso.dir
        .cancel_group(&idgate::audit::Origin::system(), "acme", "grp-race")
        .await
        .unwrap();
    let r = sso
        .post(
            &signed_assertion_response(
                &ResponseSpec::new(IDP, ACS, SP, None)
                    .attr("uid", "racer-1")
                    .attr("group_uid", "grp-race"),
                &sso.idp,
            ),
            None,
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_metadata_scim_usernames_default_roles_and_slo() {
    let idp = TestIdp::new("metadata-idp");
    let cert: String = std::fs::read_to_string(&idp.cert)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let metadata = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        metadata.path(),
        format!(
            r#"<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="{IDP}"><md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol"><md:KeyDescriptor use="signing"><ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:X509Data><ds:X509Certificate>{cert}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor><md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="https://md-idp.example.com/sso"/></md:IDPSSODescriptor></md:EntityDescriptor>"#
        ),
    )
    .unwrap();
    let up = TestUpstream::start().await;
    let text = config(
        up.addr,
        "",
        &format!(
            "[[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_metadata = \"file:{}\"\n\
             idp_slo_url = \"https://md-idp.example.com/slo\"\n\
             [tenants.provisioning]\ndefault_role = \"viewer\"\n",
            metadata.path().display()
        ),
    );
    let app =
        idgate::App::new(Config::from_toml(&text, std::path::Path::new("/")).unwrap()).unwrap();
    let dir = app.directory().clone();
    let sso = Sso {
        app: app.start().await.unwrap(),
        cookies: Default::default(),
        dir,
        idp,
        _up: up,
    };

    // The login redirect goes to the SSO URL from the metadata.
    let r = get(&sso.url("/_idgate/saml/acme/login"), &[]).await;
    assert!(
        r.headers["location"]
            .to_str()
            .unwrap()
            .starts_with("https://md-idp.example.com/sso?")
    );
    let id = sso.begin("/").await;

    // A user SCIM created earlier is found by userName = NameID, case-insensitively.
    let mut scim_user = idgate::directory::model::User::new("scim-123", idgate::directory::now());
    scim_user.user_name = Some("Ada.L@Example.com".into());
    sso.dir.create_user("acme", &scim_user).await.unwrap();
    let mut spec = ResponseSpec::new(IDP, ACS, SP, Some(&id));
    spec.name_id = "ada.l@example.COM".into();
    spec.attributes
        .retain(|(n, _)| n != "group_role" && n != "email");
    let r = sso
        .post(&signed_assertion_response(&spec, &sso.idp), Some(&id))
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let cookie = session_cookie(&r);
    let echo = get(&sso.url("/x"), &[("cookie", &cookie)]).await.json();
    assert_eq!(
        received(&echo, "x-idgate-user-id"),
        ["scim-123"],
        "the SCIM id is kept"
    );
    assert_eq!(
        received(&echo, "x-idgate-role"),
        ["viewer"],
        "default_role without a role attribute"
    );

    // Without sp_key there is no SAML Single Logout, whatever the IdP offers: the
    // session ends here and the browser lands on the logged-out page, which leads back
    // to this tenant's login.
    let out = send(
        "POST",
        &sso.url("/_idgate/logout"),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(out.status, 302);
    assert_eq!(out.headers["location"], "/_idgate/logged-out");
    assert_eq!(
        get(&sso.url("/x"), &[("cookie", &cookie)]).await.status,
        401
    );
    let page = get(&sso.url("/_idgate/logged-out"), &[]).await;
    assert_eq!(page.status, 200);
    assert!(
        page.text()
            .contains("<a href=\"/_idgate/saml/acme/login?return_to=/\">Sign in again</a>"),
        "{}",
        page.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_can_be_turned_off() {
    let sso = start(
        "allow_idp_initiated = true\n[tenants.provisioning]\ncreate_groups = false\ncreate_users = false\nlink_by_email = false",
        "",
    )
    .await;
    let spec = ResponseSpec::new(IDP, ACS, SP, None);
    let r = sso
        .post(&signed_assertion_response(&spec, &sso.idp), None)
        .await;
    assert_eq!(r.status, 403, "unknown group, create_groups off");
    assert!(r.text().contains("not been set up"), "{}", r.text());
    sso.dir
        .ensure_group("acme", "grp-1", "Known")
        .await
        .unwrap();
    let r = sso
        .post(
            &signed_assertion_response(&spec.clone().fresh(), &sso.idp),
            None,
        )
        .await;
    assert_eq!(r.status, 403, "unknown user, create_users off");
    // An existing user with that email is not linked when link_by_email is off.
    let mut u = idgate::directory::model::User::new("someone", idgate::directory::now());
    u.email = Some("ada@example.com".into());
    sso.dir.create_user("acme", &u).await.unwrap();
    let r = sso
        .post(
            &signed_assertion_response(&spec.clone().fresh(), &sso.idp),
            None,
        )
        .await;
    assert_eq!(r.status, 403);
    // A user provisioned beforehand (as SCIM would) logs in.
    let mut known = idgate::directory::model::User::new("idp-user-1", idgate::directory::now());
    known.email = Some("other@example.com".into());
    sso.dir.create_user("acme", &known).await.unwrap();
    let r = sso
        .post(
            &signed_assertion_response(&spec.clone().fresh(), &sso.idp),
            None,
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(sso.dir.group("acme", "grp-1").await.unwrap().unwrap().name == "Known");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_starts_are_limited_per_client_and_refill_within_seconds() {
    let sso = start("", "").await;
    let url = sso.url("/_idgate/saml/acme/login?return_to=/");
    for i in 0..idgate::config::defaults::LOGIN_STARTS_PER_MINUTE {
        assert_eq!(get(&url, &[]).await.status, 302, "start {i}");
    }
    let r = get(&url, &[("accept", "application/json")]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "too_many_logins");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    let page = get(&url, &[("accept", "text/html")]).await;
    assert_eq!(page.status, 429);
    assert!(page.text().contains("try again in"), "{}", page.text());
    // The bucket refills at the configured rate: no ten-minute lockout.
    tokio::time::sleep(std::time::Duration::from_secs(wait + 1)).await;
    assert_eq!(get(&url, &[]).await.status, 302);
}

/// idgate as its own process, for scenarios that read its log: one tenant that accepts
/// IdP-initiated logins (the checks here do not depend on InResponseTo).
struct Logged {
    idgate: Idgate,
    idp: TestIdp,
    _up: TestUpstream,
}

async fn start_logged(saml_extra: &str) -> Logged {
    let idp = TestIdp::new("test-idp");
    let up = TestUpstream::start().await;
    // The test client stands for an ingress (a trusted proxy), so that the request ids
    // it chooses are idgate's too and find the log lines.
    let idgate = Idgate::start(&config(
        up.addr,
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &format!(
            "[[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_entity_id = \"{IDP}\"\n\
             idp_sso_url = \"https://idp.example.com/sso\"\nidp_certificate = \"file:{}\"\n\
             allow_idp_initiated = true\n{saml_extra}\n",
            idp.cert.display()
        ),
    ));
    idgate.wait_ready().await;
    Logged {
        idgate,
        idp,
        _up: up,
    }
}

impl Logged {
    /// Posts `xml` to the ACS under a request id of our choosing, so that its log line
    /// can be found.
    async fn post(&self, xml: &str, request_id: &str) -> Reply {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("SAMLResponse", &b64(xml))
            .finish();
        send(
            "POST",
            &self.idgate.url("/_idgate/saml/acme/acs"),
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-request-id", request_id),
            ],
            body,
        )
        .await
    }

    async fn rejections(&self, reason: &str) -> u64 {
        let prefix = format!("idgate_saml_rejections_total{{reason=\"{reason}\"}} ");
        get(&self.idgate.admin_url("/metrics"), &[])
            .await
            .text()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |n| n.trim().parse().unwrap())
    }

    /// The JSON log line of the refusal of request `request_id`.
    fn refusal_line(&self, request_id: &str) -> serde_json::Value {
        let needle = format!("\"request_id\":\"{request_id}\"");
        assert!(
            self.idgate.wait_for_log(&needle),
            "no log line for {request_id}:\n{}",
            self.idgate.logs()
        );
        let logs = self.idgate.logs();
        let line = logs
            .lines()
            .find(|l| l.contains(&needle) && l.contains("rejected"))
            .unwrap_or_else(|| panic!("no refusal logged for {request_id}:\n{logs}"));
        serde_json::from_str(line).unwrap()
    }

    /// Posts `xml` and checks that it is refused for `reason`: a 403 page without a
    /// session, a log line with the reason, one more in the metric. Returns the line.
    async fn refused(&self, case: &str, xml: &str, reason: &str) -> serde_json::Value {
        let before = self.rejections(reason).await;
        let request_id = format!("t-{}", hex::encode(rand::random::<[u8; 8]>()));
        let r = self.post(xml, &request_id).await;
        assert_eq!(r.status, 403, "{case}: {}", r.text());
        assert!(
            r.headers.get("set-cookie").is_none(),
            "{case}: got a session"
        );
        let line = self.refusal_line(&request_id);
        assert_eq!(line["reason"], reason, "{case}: {line}");
        assert_eq!(
            self.rejections(reason).await,
            before + 1,
            "{case}: not counted as {reason}"
        );
        line
    }

    async fn accepted(&self, case: &str, xml: &str) {
        let r = self.post(xml, "t-accepted").await;
        assert_eq!(r.status, 303, "{case}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unsigned_response_around_a_signed_assertion_is_checked() {
    let sso = start_logged("").await;
    // Only the Assertion is signed; each case rewrites the Response around it.
    let case = |edit: &dyn Fn(&mut Shell)| {
        let spec = ResponseSpec::new(IDP, ACS, SP, None);
        let mut shell = Shell::of(&spec);
        edit(&mut shell);
        shell_response(&spec, &shell, &signed_assertion(&spec, &sso.idp))
    };
    let forged = || {
        assertion_xml(
            &ResponseSpec::new(IDP, ACS, SP, None)
                .attr("uid", "admin")
                .attr("group_uid", "grp-evil"),
            "",
        )
    };

    // What an honest IdP may send passes: Destination and the Response Issuer are
    // optional, and comments or whitespace in the shell change nothing.
    sso.accepted("as sent", &case(&|_| {})).await;
    sso.accepted("no Destination", &case(&|s| s.destination = None))
        .await;
    sso.accepted("no Response Issuer", &case(&|s| s.issuer = None))
        .await;
    sso.accepted(
        "an assertion in a comment, whitespace around",
        &case(&|s| {
            s.before = "\n  <!-- <saml:Assertion ID=\"_x\"></saml:Assertion> -->\n  ".into();
            s.after = "\n".into();
        }),
    )
    .await;

    let refusals: Vec<(&str, String, &str)> = vec![
        (
            "wrong Destination",
            case(&|s| s.destination = Some("https://elsewhere/acs".into())),
            "destination",
        ),
        (
            "wrong Response Issuer",
            case(&|s| s.issuer = Some("https://evil-idp".into())),
            "issuer",
        ),
        (
            "top-level status Responder",
            case(&|s| {
                s.status = r#"<samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Responder"/></samlp:Status>"#.into()
            }),
            "status",
        ),
        (
            "Responder with a nested Success",
            case(&|s| {
                s.status = r#"<samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Responder"><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:StatusCode></samlp:Status>"#.into()
            }),
            "status",
        ),
        ("no Status", case(&|s| s.status = String::new()), "status"),
        (
            "an unsigned forged Assertion before the signed one",
            case(&|s| s.before = forged()),
            "malformed",
        ),
        (
            "an unsigned forged Assertion after the signed one, another prefix",
            case(&|s| {
                s.after = forged()
                    .replace("saml:", "a:")
                    .replace("xmlns:saml=", "xmlns:a=")
            }),
            "malformed",
        ),
        (
            "an EncryptedAssertion next to the signed one",
            case(&|s| {
                s.after =
                    "<saml:EncryptedAssertion><!-- anything --></saml:EncryptedAssertion>".into()
            }),
            "malformed",
        ),
        (
            "a forged Assertion hidden in Extensions",
            case(&|s| s.before = format!("<samlp:Extensions>{}</samlp:Extensions>", forged())),
            "malformed",
        ),
    ];
    for (name, xml, reason) in refusals {
        sso.refused(name, &xml, reason).await;
    }
    // No Assertion at all.
    let spec = ResponseSpec::new(IDP, ACS, SP, None);
    sso.refused(
        "no Assertion",
        &shell_response(&spec, &Shell::of(&spec), ""),
        "malformed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_signature_algorithm_is_named_in_the_log() {
    let sso = start_logged("").await;
    let spec = ResponseSpec::new(IDP, ACS, SP, None);
    let line = sso
        .refused(
            "RSA-SHA1 without allow_sha1",
            &sha1_signed_assertion_response(&spec, &sso.idp),
            "signature",
        )
        .await;
    let error = line["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("http://www.w3.org/2000/09/xmldsig#rsa-sha1")
            && error.contains("allow_sha1"),
        "the log names the algorithm and the setting: {line}"
    );
    assert!(
        !error.contains("must be signed"),
        "not a missing signature: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_values_with_control_characters_are_refused() {
    let sso = start_logged("").await;
    let mapped = [
        "uid",
        "group_uid",
        "email",
        "name",
        "surname",
        "group_name",
        "group_role",
    ];
    let before = sso.rejections("malformed_attribute").await;
    let mut refused = 0;
    for attribute in mapped {
        for (control, label) in [('\r', "CR"), ('\n', "LF"), ('\u{7f}', "DEL")] {
            for (value, place) in [
                (format!("value{control}tail"), "in the middle"),
                (format!("value-tail{control}"), "at the end"),
                (format!("{control}value-tail"), "at the start"),
            ] {
                let case = format!("{label} {place} of {attribute}");
                let spec = ResponseSpec::new(IDP, ACS, SP, None).attr(attribute, &value);
                let line = sso
                    .refused(
                        &case,
                        &signed_assertion_response(&spec, &sso.idp),
                        "malformed_attribute",
                    )
                    .await;
                refused += 1;
                let text = line.to_string();
                assert!(
                    text.contains(attribute),
                    "{case}: names the attribute: {line}"
                );
                assert!(!text.contains("value"), "{case}: never the value: {line}");
            }
        }
    }
    assert_eq!(
        sso.rejections("malformed_attribute").await,
        before + refused
    );
    // The NameID stands in for a missing user id attribute: it is held to the same rule.
    let mut spec = ResponseSpec::new(IDP, ACS, SP, None);
    spec.attributes.retain(|(n, _)| n != "uid");
    spec.name_id = "ada@example.com\n".into();
    sso.refused(
        "LF at the end of the NameID",
        &signed_assertion_response(&spec, &sso.idp),
        "malformed_attribute",
    )
    .await;
    // A tab is not a control character here, and the login goes through.
    sso.accepted(
        "a tab in a name",
        &signed_assertion_response(
            &ResponseSpec::new(IDP, ACS, SP, None).attr("name", "Ada\tB"),
            &sso.idp,
        ),
    )
    .await;
}

/// A tenant with an SP key (and whatever `extra` adds), run as its own process so that
/// refusals can be read in its log. Returns the tenant and its SP key pair.
async fn start_encrypted(extra: &str) -> (Logged, TestIdp) {
    let sp = TestIdp::new("test-sp");
    let logged = start_logged(&format!(
        "sp_key = \"file:{}\"\nsp_certificate = \"file:{}\"\n{extra}",
        sp.key.display(),
        sp.cert.display()
    ))
    .await;
    (logged, sp)
}

impl Logged {
    /// Posts `xml`, expects a login, and checks the session carries the identity.
    async fn logs_in(&self, case: &str, xml: &str) {
        let r = self.post(xml, "t-accepted").await;
        assert_eq!(r.status, 303, "{case}: {}", r.text());
        let echo = get(&self.idgate.url("/x"), &[("cookie", &r.cookie())])
            .await
            .json();
        assert_eq!(
            received(&echo, "x-idgate-user-id"),
            ["idp-user-1"],
            "{case}"
        );
    }
}

fn spec() -> ResponseSpec {
    ResponseSpec::new(IDP, ACS, SP, None)
}

/// The Assertion of `s`, signed by the IdP, encrypted to `sp` with `e`, in an unsigned
/// Response.
fn encrypted_signed(idp: &TestIdp, sp: &TestIdp, e: &Encryption) -> String {
    let s = spec();
    response_around(
        &s,
        &encrypt_assertion(&signed_assertion(&s, idp), &sp.cert, e),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_transport_and_content_cipher_logs_in() {
    let (sso, sp) = start_encrypted("").await;
    let contents = [
        AES128_GCM, AES192_GCM, AES256_GCM, AES128_CBC, AES192_CBC, AES256_CBC,
    ];
    let digests = ["sha1", "sha256", "sha384", "sha512"];
    let mut cases = Vec::new();
    for content in contents {
        cases.push(Encryption::mgf1p(content));
        for d in digests {
            cases.push(Encryption::oaep(content, d, d));
        }
    }
    // Digest and MGF digest chosen independently.
    for d in digests {
        for m in digests.into_iter().filter(|m| *m != d) {
            cases.push(Encryption::oaep(AES256_GCM, d, m));
        }
    }
    // rsa-oaep with no DigestMethod or MGF: SHA-1 and MGF1-SHA1 by default.
    cases.push(Encryption {
        content: AES128_GCM,
        transport: RSA_OAEP,
        digest: None,
        mgf: None,
    });
    // rsa-oaep-mgf1p with a SHA-256 digest (MGF1 stays SHA-1).
    cases.push(Encryption {
        digest: Some(digest_uri("sha256")),
        ..Encryption::mgf1p(AES128_GCM)
    });
    assert_eq!(cases.len(), 6 * 5 + 12 + 2);
    for e in &cases {
        sso.logs_in(&format!("{e:?}"), &encrypted_signed(&sso.idp, &sp, e))
            .await;
    }

    // A signed Response around the ciphertext also covers it: the Assertion inside
    // need not be signed, with GCM or CBC content.
    for content in [AES256_GCM, AES128_CBC] {
        let s = spec();
        let ea = encrypt_assertion(
            &assertion_xml(&s, ""),
            &sp.cert,
            &Encryption::mgf1p(content),
        );
        sso.logs_in(
            &format!("signed Response, unsigned Assertion, {content}"),
            &signed_response_around(&s, &sso.idp, &ea),
        )
        .await;
    }
    // Both signed.
    let s = spec();
    let ea = encrypt_assertion(
        &signed_assertion(&s, &sso.idp),
        &sp.cert,
        &Encryption::mgf1p(AES128_GCM),
    );
    sso.logs_in(
        "signed Response and signed Assertion",
        &signed_response_around(&s, &sso.idp, &ea),
    )
    .await;

    // The metadata publishes the certificate for both uses, GCM first.
    let meta = get(&sso.idgate.url("/_idgate/saml/acme/metadata"), &[])
        .await
        .text();
    let cert = std::fs::read_to_string(&sp.cert).unwrap();
    let body: String = cert.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(meta.contains(&body), "{meta}");
    assert!(meta.contains(r#"use="signing""#), "{meta}");
    assert!(meta.contains(r#"use="encryption""#), "{meta}");
    let order: Vec<usize> = [
        AES128_GCM,
        AES256_GCM,
        AES192_GCM,
        AES128_CBC,
        RSA_OAEP,
        RSA_OAEP_MGF1P,
    ]
    .iter()
    .map(|a| {
        meta.find(&format!("Algorithm=\"{a}\""))
            .unwrap_or_else(|| panic!("{a} not in {meta}"))
    })
    .collect();
    assert!(order.is_sorted(), "{meta}");
    assert!(!meta.contains(RSA_1_5), "{meta}");
}

/// Replaces the EncryptedData's CipherValue (the last one in the document).
fn edit_ciphertext(xml: &str, edit: impl Fn(Vec<u8>) -> Vec<u8>) -> String {
    let open = "<xenc:CipherValue>";
    let start = xml.rfind(open).unwrap() + open.len();
    let end = start + xml[start..].find("</xenc:CipherValue>").unwrap();
    let compact: String = xml[start..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let data = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, compact).unwrap();
    format!(
        "{}{}{}",
        &xml[..start],
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, edit(data)),
        &xml[end..]
    )
}

/// POSTs a form body over a raw connection and returns the status the server answers
/// with, even when it answers (and closes) before the body is fully sent; None when the
/// close (a reset, as the server discards unread bytes) beats the answer to the client.
async fn post_unread(
    addr: std::net::SocketAddr,
    path: &str,
    request_id: &str,
    body: String,
) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         X-Request-Id: {request_id}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(body.as_bytes()).await;
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    writer.abort();
    let text = String::from_utf8_lossy(&answer);
    text.split(' ').nth(1).and_then(|c| c.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_assertions_without_a_signature_or_the_right_key_are_refused() {
    let (sso, sp) = start_encrypted("").await;
    let unsigned = |content: &'static str| {
        let s = spec();
        response_around(
            &s,
            &encrypt_assertion(
                &assertion_xml(&s, ""),
                &sp.cert,
                &Encryption::mgf1p(content),
            ),
        )
    };
    let line = sso
        .refused(
            "no signature anywhere (GCM)",
            &unsigned(AES128_GCM),
            "decryption",
        )
        .await;
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("neither signed itself nor inside a signed Response")),
        "{line}"
    );
    let line = sso
        .refused(
            "CBC without a covering signature",
            &unsigned(AES256_CBC),
            "decryption",
        )
        .await;
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("AES-CBC")),
        "{line}"
    );

    let rsa15 = Encryption {
        transport: RSA_1_5,
        ..Encryption::mgf1p(AES128_GCM)
    };
    let line = sso
        .refused(
            "rsa-1_5 without allow_rsa1_5",
            &encrypted_signed(&sso.idp, &sp, &rsa15),
            "decryption",
        )
        .await;
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("allow_rsa1_5")),
        "{line}"
    );

    let stranger = TestIdp::new("another-sp");
    sso.refused(
        "encrypted to another key",
        &encrypted_signed(&sso.idp, &stranger, &Encryption::mgf1p(AES128_GCM)),
        "decryption",
    )
    .await;

    let good = encrypted_signed(&sso.idp, &sp, &Encryption::mgf1p(AES128_GCM));
    let cbc = encrypted_signed(&sso.idp, &sp, &Encryption::mgf1p(AES128_CBC));
    let bad: Vec<(&str, String)> = vec![
        (
            "GCM truncated",
            edit_ciphertext(&good, |d| d[..d.len() / 2].to_vec()),
        ),
        (
            "GCM shorter than IV and tag",
            edit_ciphertext(&good, |d| d[..20].to_vec()),
        ),
        (
            "GCM tag tampered",
            edit_ciphertext(&good, |mut d| {
                *d.last_mut().unwrap() ^= 1;
                d
            }),
        ),
        (
            "GCM ciphertext tampered",
            edit_ciphertext(&good, |mut d| {
                d[20] ^= 0x80;
                d
            }),
        ),
        (
            "CBC truncated mid-block",
            edit_ciphertext(&cbc, |d| d[..d.len() - 5].to_vec()),
        ),
        (
            "CBC without its last block",
            edit_ciphertext(&cbc, |d| d[..d.len() - 16].to_vec()),
        ),
        (
            "garbage base64",
            good.replacen("<xenc:CipherValue>", "<xenc:CipherValue>%%garbage%%", 2),
        ),
        ("empty CipherValue", edit_ciphertext(&good, |_| Vec::new())),
    ];
    for (name, xml) in bad {
        sso.refused(name, &xml, "decryption").await;
    }

    // Anyone can encrypt to the SP's certificate: an Assertion signed by another key
    // decrypts fine and then fails its signature.
    let forger = TestIdp::new("forger");
    sso.refused(
        "encrypted Assertion signed by another key",
        &encrypted_signed(&forger, &sp, &Encryption::mgf1p(AES128_GCM)),
        "signature",
    )
    .await;

    // A signed Response whose ciphertext was altered fails its signature first.
    let s = spec();
    let ea = encrypt_assertion(
        &assertion_xml(&s, ""),
        &sp.cert,
        &Encryption::mgf1p(AES128_GCM),
    );
    let signed = signed_response_around(&s, &sso.idp, &ea);
    sso.refused(
        "signed Response, ciphertext altered",
        &edit_ciphertext(&signed, |mut d| {
            d[20] ^= 1;
            d
        }),
        "signature",
    )
    .await;

    // A 10 MB CipherValue never reaches the decryption: the ACS reads at most 1 MiB,
    // answers 400 and closes, possibly while the client is still sending (so the
    // request is written by hand, ignoring a write cut short).
    let huge = good.replacen(
        "<xenc:CipherValue>",
        &format!("<xenc:CipherValue>{}", "A".repeat(10 << 20)),
        1,
    );
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("SAMLResponse", &b64(&huge))
        .finish();
    let before = sso.rejections("malformed").await;
    let status = post_unread(sso.idgate.public, "/_idgate/saml/acme/acs", "t-huge", body).await;
    assert!(status.is_none_or(|s| s == 400), "{status:?}");
    let line = sso.refusal_line("t-huge");
    assert_eq!(line["reason"], "malformed", "{line}");
    assert_eq!(sso.rejections("malformed").await, before + 1);

    // Still serving after all of it.
    sso.logs_in("a good one afterwards", &good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypted_assertions_refuses_plaintext() {
    let (sso, sp) = start_encrypted("require_encrypted_assertions = true").await;
    let s = spec();
    sso.refused(
        "a plaintext signed assertion",
        &signed_assertion_response(&s, &sso.idp),
        "unencrypted",
    )
    .await;
    sso.logs_in(
        "an encrypted one",
        &encrypted_signed(&sso.idp, &sp, &Encryption::mgf1p(AES128_GCM)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sp_key_rollover_keeps_decrypting_for_the_previous_key() {
    let old = TestIdp::new("old-sp");
    let (sso, sp) = start_encrypted(&format!(
        "sp_previous_keys = [\"file:{}\"]\nallow_rsa1_5 = true",
        old.key.display()
    ))
    .await;
    // An IdP that has not fetched the new metadata yet still encrypts to the old key.
    sso.logs_in(
        "encrypted to the previous key",
        &encrypted_signed(&sso.idp, &old, &Encryption::mgf1p(AES256_GCM)),
    )
    .await;
    assert!(
        sso.idgate.wait_for_log("sp_previous_keys[0]"),
        "{}",
        sso.idgate.logs()
    );
    sso.logs_in(
        "encrypted to the current key",
        &encrypted_signed(&sso.idp, &sp, &Encryption::mgf1p(AES256_GCM)),
    )
    .await;
    // allow_rsa1_5 lets PKCS#1 v1.5 key transport through.
    let rsa15 = Encryption {
        transport: RSA_1_5,
        ..Encryption::mgf1p(AES128_CBC)
    };
    sso.logs_in("rsa-1_5 allowed", &encrypted_signed(&sso.idp, &sp, &rsa15))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sp_initiated_logins_with_encrypted_assertions_answer_their_request() {
    let sp = TestIdp::new("test-sp");
    let sso = start(
        &format!(
            "sp_key = \"file:{}\"\nsp_certificate = \"file:{}\"",
            sp.key.display(),
            sp.cert.display()
        ),
        "",
    )
    .await;
    let gcm = Encryption::mgf1p(AES128_GCM);
    // Signed Assertion inside, unsigned Response: samael checks the Assertion's
    // InResponseTo.
    let id = sso.begin("/a").await;
    let s = ResponseSpec::new(IDP, ACS, SP, Some(&id));
    let xml = response_around(
        &s,
        &encrypt_assertion(&signed_assertion(&s, &sso.idp), &sp.cert, &gcm),
    );
    let r = sso.post(&xml, Some(&id)).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.headers["location"], "/a");
    // Signed Response around an unsigned Assertion: the Response's InResponseTo counts.
    let id = sso.begin("/b").await;
    let s = ResponseSpec::new(IDP, ACS, SP, Some(&id));
    let ea = encrypt_assertion(&assertion_xml(&s, ""), &sp.cert, &gcm);
    let r = sso
        .post(&signed_response_around(&s, &sso.idp, &ea), Some(&id))
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.headers["location"], "/b");
    // The same encrypted response again is a replay.
    let again = sso
        .post(&signed_response_around(&s, &sso.idp, &ea), Some(&id))
        .await;
    assert_eq!(again.status, 403);
    // A response to a request that was never made is refused, encrypted or not.
    let s = ResponseSpec::new(IDP, ACS, SP, Some("_never-issued"));
    let ea = encrypt_assertion(&assertion_xml(&s, ""), &sp.cert, &gcm);
    let r = sso
        .post(
            &signed_response_around(&s, &sso.idp, &ea),
            Some("_never-issued"),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
}

/// With an SP key, AuthnRequests go out signed on the HTTP-Redirect binding (SAML
/// bindings §3.4.4.1): `SigAlg` and `Signature` over the exact query octets, checked
/// here with the `openssl` CLI against the SP certificate; the metadata says so, and the
/// NameIDPolicy asks for the configured format. `sign_requests = false` turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authn_requests_are_signed_over_the_query_octets_with_the_sp_key() {
    let (logged, sp) = start_encrypted("name_id_format = \"emailAddress\"").await;
    let r = get(
        &logged.idgate.url("/_idgate/saml/acme/login?return_to=/x"),
        &[],
    )
    .await;
    assert_eq!(r.status, 302);
    let location = r.headers["location"].to_str().unwrap().to_owned();
    let query = location.split_once('?').unwrap().1;
    let (signed, signature) = query.split_once("&Signature=").expect("a Signature");
    assert!(signed.starts_with("SAMLRequest="), "{signed}");
    assert!(signed.contains("&RelayState=_"), "{signed}");
    assert!(
        signed.ends_with("&SigAlg=http%3A%2F%2Fwww.w3.org%2F2001%2F04%2Fxmldsig-more%23rsa-sha256"),
        "{signed}"
    );
    let signature: String = url::form_urlencoded::parse(format!("s={signature}").as_bytes())
        .next()
        .unwrap()
        .1
        .into_owned();
    let dir = tempfile::tempdir().unwrap();
    let (data, sig, public) = (
        dir.path().join("data"),
        dir.path().join("sig"),
        dir.path().join("public.pem"),
    );
    std::fs::write(&data, signed).unwrap();
    std::fs::write(
        &sig,
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, signature).unwrap(),
    )
    .unwrap();
    let p = |x: &std::path::Path| x.display().to_string();
    support::openssl(&[
        "x509",
        "-in",
        &p(&sp.cert),
        "-pubkey",
        "-noout",
        "-out",
        &p(&public),
    ]);
    let verified = std::process::Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-verify",
            &p(&public),
            "-signature",
            &p(&sig),
            &p(&data),
        ])
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "openssl refuses the signature: {}",
        String::from_utf8_lossy(&verified.stdout)
    );
    // The request asks for the configured NameID format.
    let q: std::collections::HashMap<_, _> = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let deflated = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        &q["SAMLRequest"],
    )
    .unwrap();
    let mut xml = String::new();
    flate2::read::DeflateDecoder::new(&deflated[..])
        .read_to_string(&mut xml)
        .unwrap();
    assert!(
        xml.contains("Format=\"urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress\""),
        "{xml}"
    );
    let md = get(&logged.idgate.url("/_idgate/saml/acme/metadata"), &[]).await;
    assert!(
        md.text().contains("AuthnRequestsSigned=\"true\""),
        "{}",
        md.text()
    );

    // Turned off: no signature, and the metadata does not promise one.
    let (plain, _) = start_encrypted("sign_requests = false").await;
    let r = get(
        &plain.idgate.url("/_idgate/saml/acme/login?return_to=/x"),
        &[],
    )
    .await;
    let location = r.headers["location"].to_str().unwrap();
    assert!(
        !location.contains("Signature=") && !location.contains("SigAlg="),
        "{location}"
    );
    let md = get(&plain.idgate.url("/_idgate/saml/acme/metadata"), &[]).await;
    assert!(
        md.text().contains("AuthnRequestsSigned=\"false\""),
        "{}",
        md.text()
    );
}
