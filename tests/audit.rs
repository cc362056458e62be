//! The audit log (SPEC §10), read from real idgate processes: every event that has a
//! caller today is provoked the way it happens in production (a signed SAML login, a
//! refused one, a logout, SCIM deactivation and reactivation, a Single Logout from the
//! IdP, Maestrano webhooks, a revocation the gate finds), and each writes one JSON line
//! with `"target":"idgate::audit"`, the actor and the id of the request that caused it.
//! A client's own `X-Request-Id` never becomes that id. No secret, cookie, token or SAML
//! message appears in any line either process logged, at debug level.

mod support;

#[path = "support/saml.rs"]
mod saml_support;

use idgate::config::Config;
use idgate::store::{DirectoryStore, Event, EventBus, ReplaceUser, Store};
use saml_support::*;
use serde_json::{Value, json};
use support::*;

const IDP: &str = "https://idp.example.com/metadata";
const ACS: &str = "http://127.0.0.1/_idgate/saml/acme/acs";
const SP: &str = "http://127.0.0.1/_idgate/saml/acme/metadata";
const SLO: &str = "http://127.0.0.1/_idgate/saml/acme/slo";
const MNO_ACS: &str = "http://127.0.0.1/maestrano/auth/saml/consume/mno";
const SCIM_JSON: &str = "application/scim+json";

/// The user the IdP's responses name by default (see `ResponseSpec::new`), whose local
/// id a login makes the same.
const ADA: &str = "idp-user-1";

/// Everything a process must never log, gathered as the test goes.
#[derive(Default)]
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, what: &str, value: &str) {
        assert!(
            value.len() >= 12,
            "{what} is too short to look for: {value}"
        );
        self.0.push((what.to_owned(), value.to_owned()));
    }

    /// A SAML message as posted: the start of its base64 form, and its signature value.
    fn add_saml(&mut self, what: &str, xml: &str) {
        self.add(what, &b64(xml)[..48]);
        if let Some((_, rest)) = xml.split_once("SignatureValue>")
            && let Some((value, _)) = rest.split_once('<')
        {
            let value: String = value.split_whitespace().collect();
            self.add(&format!("{what} signature"), &value[..40]);
        }
    }

    /// The PEM body of a key file (its first line of base64).
    fn add_key(&mut self, what: &str, path: &std::path::Path) {
        let pem = std::fs::read_to_string(path).unwrap();
        let line = pem
            .lines()
            .find(|l| !l.starts_with("-----") && l.len() >= 40)
            .expect("a base64 line");
        self.add(what, line);
    }

    fn check(&self, name: &str, logs: &str) {
        for line in logs.lines() {
            for (what, value) in &self.0 {
                assert!(
                    !line.contains(value.as_str()),
                    "{name} logged the {what}: {line}"
                );
            }
        }
    }
}

/// The audit lines a process wrote, parsed.
fn audit_lines(idgate: &Idgate) -> Vec<Value> {
    idgate
        .logs()
        .lines()
        .filter(|l| l.contains("idgate::audit"))
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .filter(|v| v["target"] == "idgate::audit")
        .collect()
}

/// Waits until `idgate` has written `n` audit lines (they cross a pipe and a thread).
fn wait_for_audit(idgate: &Idgate, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let lines = audit_lines(idgate);
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Checks `line` against the fields expected (`null` means absent) and the rules every
/// audit line keeps.
fn expect(line: &Value, fields: Value) {
    assert_eq!(line["target"], "idgate::audit", "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    for (k, v) in fields.as_object().unwrap() {
        assert_eq!(&line[k], v, "field {k} of {line}");
    }
}

/// idgate's id for the request a reply answers.
fn rid(r: &Reply) -> String {
    r.headers["x-request-id"].to_str().unwrap().to_owned()
}

/// POSTs a SAML message as a browser does (the HTTP-POST binding).
async fn post_saml(url: &str, field: &str, xml: &str, headers: &[(&str, &str)]) -> Reply {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair(field, &b64(xml))
        .finish();
    let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    send("POST", url, &all, body).await
}

/// The SAML + SCIM tenant: one process on a real Redis, which the test also opens to
/// play a replica whose write blocked a user without revoking their sessions.
struct Acme {
    idgate: Idgate,
    idp: TestIdp,
    sp: TestIdp,
    token: String,
    store: Store,
    secrets: Secrets,
    _up: TestUpstream,
    _redis: RedisServer,
    _keys: tempfile::TempDir,
}

async fn acme() -> Acme {
    let idp = TestIdp::new("audit-idp");
    let sp = TestIdp::new("audit-sp");
    let up = TestUpstream::start().await;
    let redis = RedisServer::start();
    let keys = tempfile::tempdir().unwrap();
    let signing = signing_key_file(keys.path(), "EdDSA");
    let (token, hash) = idgate::scim::token::generate();
    let text = config(
        up.addr,
        "",
        &format!(
            "[store]\nurl = \"{}\"\n[identity]\nsigning_key = \"file:{}\"\n\
             [[tenants]]\nid = \"acme\"\n[tenants.saml]\nidp_entity_id = \"{IDP}\"\n\
             idp_sso_url = \"https://idp.example.com/sso\"\nidp_certificate = \"file:{}\"\n\
             allow_idp_initiated = true\nsp_key = \"file:{}\"\nsp_certificate = \"file:{}\"\n\
             idp_slo_url = \"https://idp.example.com/slo\"\n\
             [tenants.scim]\ntoken = \"{hash}\"\n",
            redis.url(),
            signing.display(),
            idp.cert.display(),
            sp.key.display(),
            sp.cert.display(),
        ),
    );
    let cfg = Config::from_toml(&text, std::path::Path::new("/")).expect("valid config");
    let store = Store::open(&cfg.store).expect("store");
    let idgate = Idgate::start(&text);
    idgate.wait_ready().await;
    let mut secrets = Secrets::default();
    secrets.add("SCIM token", &token);
    secrets.add_key("SP key", &sp.key);
    secrets.add_key("IdP key", &idp.key);
    secrets.add_key("signing key", &signing);
    Acme {
        idgate,
        idp,
        sp,
        token,
        store,
        secrets,
        _up: up,
        _redis: redis,
        _keys: keys,
    }
}

impl Acme {
    /// An IdP-initiated login of Ada; returns the reply (a session cookie on success)
    /// and the assertion's id (the SessionIndex of the session it makes).
    async fn login(&mut self, headers: &[(&str, &str)]) -> (Reply, String) {
        let spec = ResponseSpec::new(IDP, ACS, SP, None);
        let xml = signed_assertion_response(&spec, &self.idp);
        self.secrets.add_saml("SAML Response", &xml);
        let r = post_saml(
            &self.idgate.url("/_idgate/saml/acme/acs"),
            "SAMLResponse",
            &xml,
            headers,
        )
        .await;
        if r.status == 303 {
            let cookie = r.cookie();
            let value = cookie.split_once('=').unwrap().1.to_owned();
            self.secrets.add("session cookie", &value);
        }
        (r, spec.assertion_id)
    }

    /// A successful login: (cookie, request id, session index).
    async fn signed_in(&mut self) -> (String, String, String) {
        let (r, index) = self.login(&[]).await;
        assert_eq!(r.status, 303, "{}", r.text());
        (r.cookie(), rid(&r), index)
    }

    /// `PATCH /Users/{ADA}` setting `active`.
    async fn set_active(&self, active: bool) -> Reply {
        let body = json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "path": "active", "value": active}],
        });
        let r = send(
            "PATCH",
            &self
                .idgate
                .url(&format!("/_idgate/scim/acme/v2/Users/{ADA}")),
            &[
                ("authorization", &format!("Bearer {}", self.token)),
                ("content-type", SCIM_JSON),
            ],
            body.to_string(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["active"], active);
        r
    }

    async fn app(&self, cookie: &str) -> u16 {
        get(
            &self.idgate.url("/app"),
            &[("cookie", cookie), ("accept", "application/json")],
        )
        .await
        .status
        .as_u16()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saml_scim_and_single_logout_events_name_who_acted_and_no_secret() {
    let mut a = acme().await;
    let mut expected: Vec<Value> = Vec::new();

    // A login, from a client that chose its own request id: the audit line carries
    // idgate's id, and the client's only as `client_request_id`.
    let chosen = "client-chosen-4f1d2a";
    let (r, _) = a.login(&[("x-request-id", chosen)]).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_ne!(rid(&r), chosen);
    let cookie = r.cookie();
    expected.push(
        json!({"event": "login", "tenant": "acme", "user": ADA, "group": "grp-1",
        "actor": "user", "request_id": rid(&r), "client_request_id": chosen}),
    );

    // A refused login: a response whose signature does not hold.
    let forged = signed_assertion_response(&ResponseSpec::new(IDP, ACS, SP, None), &a.sp);
    a.secrets.add_saml("forged SAML Response", &forged);
    let r = post_saml(
        &a.idgate.url("/_idgate/saml/acme/acs"),
        "SAMLResponse",
        &forged,
        &[],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let refused_at = expected.len();
    expected.push(
        json!({"event": "login_refused", "tenant": "acme", "user": null,
        "subject": null, "actor": "user", "request_id": rid(&r), "client_request_id": null}),
    );

    // That session's logout.
    let r = send(
        "POST",
        &a.idgate.url("/_idgate/logout"),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert!(r.status.is_redirection(), "{}", r.text());
    expected.push(
        json!({"event": "logout", "tenant": "acme", "user": ADA, "actor": "user",
        "request_id": rid(&r)}),
    );
    assert_eq!(a.app(&cookie).await, 401);

    // Another replica blocked Ada, and its revocation of her sessions never happened
    // (the store went away in between): the gate finds her session and revokes it,
    // idgate acting on its own.
    let (cookie, login, _) = a.signed_in().await;
    expected.push(json!({"event": "login", "user": ADA, "request_id": login}));
    let old = a.store.get_user("acme", ADA).await.unwrap().unwrap();
    let mut blocked = old.clone();
    blocked.active = false;
    blocked.version += 1;
    assert!(matches!(
        a.store.replace_user("acme", &old, &blocked).await.unwrap(),
        ReplaceUser::Replaced
    ));
    a.store
        .publish(&Event::User {
            tenant: "acme".into(),
            id: ADA.into(),
        })
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while a.app(&cookie).await != 403 {
        assert!(std::time::Instant::now() < deadline, "never blocked");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    expected.push(
        json!({"event": "session_revoked", "tenant": "acme", "user": ADA,
        "reason": "account_deactivated", "actor": "system", "request_id": null}),
    );

    // SCIM reactivates her, deactivates her (her live session is revoked with it),
    // she cannot sign in meanwhile, and SCIM reactivates her again.
    let r = a.set_active(true).await;
    expected.push(
        json!({"event": "user_activated", "tenant": "acme", "user": ADA,
        "actor": "scim", "request_id": rid(&r)}),
    );
    let (cookie, login, _) = a.signed_in().await;
    expected.push(json!({"event": "login", "user": ADA, "request_id": login}));
    let r = a.set_active(false).await;
    expected.push(
        json!({"event": "user_deactivated", "tenant": "acme", "user": ADA,
        "actor": "scim", "request_id": rid(&r)}),
    );
    expected.push(
        json!({"event": "session_revoked", "tenant": "acme", "user": ADA,
        "reason": "account_deactivated", "actor": "scim", "request_id": rid(&r)}),
    );
    assert_eq!(a.app(&cookie).await, 403);
    let (r, _) = a.login(&[]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    expected.push(json!({"event": "login_refused", "tenant": "acme",
        "reason": "account_deactivated", "subject": ADA, "actor": "user",
        "request_id": rid(&r)}));
    let r = a.set_active(true).await;
    expected.push(
        json!({"event": "user_activated", "user": ADA, "actor": "scim",
        "request_id": rid(&r)}),
    );

    // The IdP ends her session through Single Logout (that one session: its index).
    let (cookie, login, index) = a.signed_in().await;
    expected.push(json!({"event": "login", "user": ADA, "request_id": login}));
    let id = format!("_lr{}", hex::encode(rand::random::<[u8; 12]>()));
    let now = chrono::Utc::now();
    let at = |s: i64| {
        (now + chrono::Duration::seconds(s)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let request = xmlsec_sign(
        &logout_request_at(
            SLO,
            &id,
            &at(0),
            Some(&at(300)),
            IDP,
            "ada@example.com",
            Some(&index),
            &signature_template(&id),
        ),
        &a.idp.key,
        &a.idp.cert,
        "urn:oasis:names:tc:SAML:2.0:protocol:LogoutRequest",
    );
    a.secrets.add_saml("LogoutRequest", &request);
    let r = post_saml(
        &a.idgate.url("/_idgate/saml/acme/slo"),
        "SAMLRequest",
        &request,
        &[],
    )
    .await;
    assert!(r.status.is_redirection() || r.status == 200, "{}", r.text());
    expected.push(
        json!({"event": "single_logout", "tenant": "acme", "user": ADA,
        "actor": "idp", "request_id": rid(&r)}),
    );
    assert_eq!(a.app(&cookie).await, 401);

    let lines = wait_for_audit(&a.idgate, expected.len());
    assert_eq!(
        lines.len(),
        expected.len(),
        "audit lines:\n{}",
        lines
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (line, fields) in lines.iter().zip(&expected) {
        expect(line, fields.clone());
    }
    // The refusal names its reason (the signature check), never the unverified subject.
    assert!(
        lines[refused_at]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{}",
        lines[refused_at]
    );
    // Sessions are named by a hash prefix, the same for its login's revocation and end.
    for l in lines
        .iter()
        .filter(|l| l["event"] == "logout" || l["event"] == "session_revoked")
    {
        assert!(
            l["session"]
                .as_str()
                .is_some_and(|s| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())),
            "{l}"
        );
    }

    // The client's id is never idgate's, anywhere in the log.
    let logs = a.idgate.logs();
    assert!(
        !logs.contains(&format!("\"request_id\":\"{chosen}\"")),
        "{logs}"
    );
    a.secrets.check("the SAML/SCIM process", &logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maestrano_webhooks_write_membership_and_cancellation_events() {
    let idp = TestIdp::new("audit-maestrano");
    let up = TestUpstream::start().await;
    let api_key = format!("mk-{}", hex::encode(rand::random::<[u8; 16]>()));
    let text = config(
        up.addr,
        "",
        &format!(
            "[[tenants]]\nid = \"mno\"\ndefault = true\n[tenants.saml]\n\
             idp_entity_id = \"https://maestrano.example.com\"\n\
             idp_sso_url = \"https://maestrano.example.com/api/v1/auth/saml\"\n\
             idp_certificate = \"file:{}\"\nallow_idp_initiated = true\n\
             [tenants.maestrano]\napi_id = \"app-123\"\napi_key = \"{api_key}\"\n",
            idp.cert.display()
        ),
    );
    let idgate = Idgate::start(&text);
    idgate.wait_ready().await;
    let mut secrets = Secrets::default();
    secrets.add("Maestrano API key", &api_key);
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("app-123:{api_key}")
        )
    );
    secrets.add("Maestrano Basic credentials", &basic["Basic ".len()..]);

    // Three memberships sign in through Maestrano's consume path.
    let mut cookies = Vec::new();
    for (uid, group) in [("ann", "cld-1"), ("bob", "cld-1"), ("bob", "cld-2")] {
        let mno_session = format!("sess-{}", hex::encode(rand::random::<[u8; 16]>()));
        secrets.add("Maestrano session", &mno_session);
        let mut spec = ResponseSpec::new("https://maestrano.example.com", MNO_ACS, "app-123", None)
            .attr("uid", uid)
            .attr("email", &format!("{uid}@example.com"))
            .attr("group_uid", group)
            .attr("group_name", &format!("Company {group}"))
            .attr("mno_session", &mno_session)
            .attr("mno_session_recheck", "2030-01-01T00:00:00Z");
        spec.name_id = uid.into();
        let xml = signed_assertion_response(&spec, &idp);
        secrets.add_saml("Maestrano SAML Response", &xml);
        let r = post_saml(
            &idgate.url("/maestrano/auth/saml/consume/mno"),
            "SAMLResponse",
            &xml,
            &[],
        )
        .await;
        assert_eq!(r.status, 303, "{}", r.text());
        let cookie = r.cookie();
        secrets.add("session cookie", cookie.split_once('=').unwrap().1);
        cookies.push(cookie);
    }

    // Bob leaves company 2, then company 1 cancels.
    let auth = [("authorization", basic.as_str())];
    let removed = send(
        "DELETE",
        &idgate.url("/maestrano/account/groups/cld-2/users/bob"),
        &auth,
        "",
    )
    .await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    let cancelled = send(
        "DELETE",
        &idgate.url("/maestrano/account/groups/cld-1/mno"),
        &auth,
        "",
    )
    .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    for cookie in &cookies {
        let r = get(
            &idgate.url("/app"),
            &[("cookie", cookie), ("accept", "application/json")],
        )
        .await;
        assert_eq!(r.status, 403, "{}", r.text());
    }

    let lines = wait_for_audit(&idgate, 8);
    let dump = lines
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(lines.len(), 8, "{dump}");
    for (line, (user, group)) in
        lines[..3]
            .iter()
            .zip([("ann", "cld-1"), ("bob", "cld-1"), ("bob", "cld-2")])
    {
        expect(
            line,
            json!({"event": "login", "tenant": "mno", "user": user, "group": group,
                "actor": "user"}),
        );
    }
    let (rm, cancel) = (rid(&removed), rid(&cancelled));
    expect(
        &lines[3],
        json!({"event": "membership_removed", "tenant": "mno", "user": "bob", "group": "cld-2",
            "actor": "maestrano", "request_id": rm}),
    );
    expect(
        &lines[4],
        json!({"event": "session_revoked", "user": "bob", "reason": "removed_from_company",
            "actor": "maestrano", "request_id": rm}),
    );
    expect(
        &lines[5],
        json!({"event": "company_cancelled", "tenant": "mno", "group": "cld-1", "user": null,
            "actor": "maestrano", "request_id": cancel}),
    );
    let mut revoked: Vec<&str> = lines[6..8]
        .iter()
        .map(|l| {
            expect(
                l,
                json!({"event": "session_revoked", "tenant": "mno",
                    "reason": "company_cancelled", "actor": "maestrano", "request_id": cancel}),
            );
            l["user"].as_str().unwrap()
        })
        .collect();
    revoked.sort_unstable();
    assert_eq!(revoked, ["ann", "bob"], "{dump}");

    secrets.check("the Maestrano process", &idgate.logs());
}
